//! A clone of the demo site through the agent's import route, on a real Docker Engine: the
//! demo site's export (migrator plugin) goes into a claimed pod, which then serves the demo's
//! posts, pages, image, menu and widgets under the clone's URL; the admin password and the
//! one-time magic link log in; after release the reset pod holds none of it.

mod migrator_support;

use clap::Parser;
use clonepool_agent::app::{self, RunningAgent};
use clonepool_agent::config::{AgentConfig, RawConfig};
use clonepool_agent::provision::HttpSiteProbe;
use clonepool_agent::runtime::DockerRuntime;
use clonepool_common::agent_api::{ClaimResponse, ImportResponse, PodSummary};
use clonepool_common::pod::PodState;
use migrator_support::*;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Removes every container of the test's node when dropped.
struct NodeCleanup(String);

impl Drop for NodeCleanup {
    fn drop(&mut self) {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=clonepool.node={}", self.0))
            .output();
        if let Ok(out) = out {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f", "-v"])
                    .args(&ids)
                    .output();
            }
        }
    }
}

async fn start_agent(dir: &std::path::Path, node: &str) -> RunningAgent {
    let image = image();
    let args = [
        "clonepool-agent",
        "--node",
        node,
        "--data-dir",
        dir.to_str().unwrap(),
        "--image",
        &image,
        "--api-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--reconcile-interval-secs",
        "2",
        "--warm-target",
        "1",
        "--max-pods",
        "2",
        "--pod-label",
        "clonepool.test=true",
    ];
    let cfg = AgentConfig::from_raw(RawConfig::try_parse_from(args).unwrap()).unwrap();
    let runtime = DockerRuntime::connect(None)
        .await
        .expect("Docker Engine reachable");
    app::start(cfg, Arc::new(runtime), Arc::new(HttpSiteProbe::new()))
        .await
        .expect("agent starts")
}

async fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut cond: F) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pod_php(web: &str, host: &str, code: &str) -> String {
    let program = format!(
        "$_SERVER['HTTP_HOST'] = '{host}'; require '/usr/share/wordpress/wp-load.php'; {code}"
    );
    let out = Command::new("docker")
        .args(["exec", "-u", "www-data", web, "php", "-r", &program])
        .stdin(Stdio::null())
        .output()
        .expect("docker exec php");
    assert!(
        out.status.success(),
        "php failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn db_query(db: &str, sql: &str) -> String {
    let out = Command::new("docker")
        .args([
            "exec",
            db,
            "mariadb",
            "--batch",
            "--skip-column-names",
            "wordpress",
            "-e",
            sql,
        ])
        .output()
        .expect("docker exec mariadb");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn a_clone_of_the_demo_site_serves_its_content_logs_in_once_by_magic_link_and_leaves_no_residue(
) {
    let _guard = SITES.lock().await;
    let demo = Site::start(SiteKind::Demo);
    let demo_wp = Wp::login(&demo.url, &demo.user, &demo.password).await;
    let r: u32 = rand::random();
    let node = format!("test-import-{r:08x}");
    let _cleanup = NodeCleanup(node.clone());
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(dir.path(), &node).await;
    wait_for("a WARM pod", Duration::from_secs(120), || {
        agent.pool.capacity().map(|c| c.warm == 1).unwrap_or(false)
    })
    .await;
    let base = format!("http://{}", agent.api_addr);
    let token = agent.token.expose().to_string();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();

    // The only WARM pod is the one the claim gets; its address is the clone's host, so the test
    // reaches the clone by its own URL.
    let warm: Vec<PodSummary> = http
        .get(format!("{base}/v1/pods"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let warm = warm
        .iter()
        .find(|p| p.state == PodState::Warm)
        .expect("a WARM pod");
    let host = warm
        .endpoint
        .as_deref()
        .unwrap()
        .trim_start_matches("http://")
        .trim_end_matches(":80")
        .to_string();
    let clone_url = format!("http://{host}");

    let started = Instant::now();
    let claim: ClaimResponse = http
        .post(format!("{base}/v1/claim"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"clone_id": "demo-clone", "clone_host": host}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(claim.pod_id, warm.pod_id);
    let (code, _, archive) = demo_wp.export("core=0").await;
    assert_eq!(code, 200);
    let resp = http
        .post(format!("{base}/v1/import?clone_id=demo-clone"))
        .bearer_auth(&token)
        .header("content-type", "application/x-tar")
        .body(archive.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let imported: ImportResponse = resp.json().await.unwrap();
    let home = reqwest::get(format!("{clone_url}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!(
        "clone of the demo site ({} archive bytes): claim → import → serving in {took:?}",
        archive.len()
    );
    assert_eq!(imported.site_url, clone_url);
    assert_eq!(imported.source_url, demo.url);

    // Content under the clone's URL, nothing pointing back at the source.
    for wanted in [
        "Welcome to the demo shop".to_string(),
        "A post with an image".to_string(),
        format!("href=\"{clone_url}/about/\">About the demo shop"),
        format!("<a href=\"{0}/contact/\">{0}/contact/</a>", clone_url),
        "class=\"demo-about-link\"".to_string(),
    ] {
        assert!(
            home.contains(&wanted),
            "the clone's home page lacks {wanted:?}"
        );
    }
    assert!(
        !home.contains(&demo.url),
        "no link points back to the source"
    );
    let about = reqwest::get(format!("{clone_url}/about/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(about.contains("We sell imaginary things"));
    let image_url = home
        .split('"')
        .find(|s| s.starts_with(&clone_url) && s.ends_with("/clonepool-demo.png"))
        .expect("the home page shows the uploaded image")
        .to_string();
    let png = reqwest::get(&image_url).await.unwrap();
    assert_eq!(png.status(), 200);
    assert!(png.bytes().await.unwrap().starts_with(b"\x89PNG"));
    let web = format!("clonepool-{}-web", claim.pod_id);
    let db = format!("clonepool-{}-db", claim.pod_id);
    let widgets: Value = serde_json::from_str(&pod_php(
        &web,
        &host,
        "echo wp_json_encode([get_option('widget_text'), get_option('widget_custom_html'), get_option('clonepool_demo_settings'), get_option('blog_public')]);",
    ))
    .unwrap();
    assert!(widgets[0]["2"]["text"]
        .as_str()
        .unwrap()
        .contains(&format!("{clone_url}/contact/")));
    assert!(widgets[1]["3"]["content"]
        .as_str()
        .unwrap()
        .contains(&format!("{clone_url}/about/")));
    assert_eq!(widgets[2]["home"], clone_url.as_str());
    assert_eq!(widgets[3], "0", "search engines are blocked in a clone");

    // The admin password logs in (and is the source's admin user).
    assert_eq!(imported.admin_username, demo.user);
    let admin = Wp::login(
        &clone_url,
        &imported.admin_username,
        &imported.admin_password,
    )
    .await;
    assert_eq!(admin.get("status").await.status, 200);

    // The magic link logs in once.
    let browser = no_redirects();
    let first = browser.get(&imported.magic_login_url).send().await.unwrap();
    assert_eq!(first.status(), 302, "{}", first.text().await.unwrap());
    assert!(first.headers()["location"]
        .to_str()
        .unwrap()
        .ends_with("/wp-admin/"));
    let dash = browser
        .get(format!("{clone_url}/wp-admin/"))
        .send()
        .await
        .unwrap();
    assert_eq!(dash.status(), 200, "the magic link's cookies open wp-admin");
    assert!(dash.text().await.unwrap().contains("Dashboard"));
    let again = no_redirects()
        .get(&imported.magic_login_url)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 403, "a magic link works once");

    // Mail is captured, not sent.
    pod_php(
        &web,
        &host,
        "wp_mail('someone@example.com', 'hello from the clone', 'body');",
    );
    let (ok, mail) = {
        let out = Command::new("docker")
            .args([
                "exec",
                &web,
                "cat",
                "/var/lib/wordpress/wp-content/clonepool-mail/mail.jsonl",
            ])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert!(ok && mail.contains("hello from the clone"), "{mail}");
    let (status, _) = (
        reqwest::get(format!("{clone_url}/wp-content/clonepool-mail/mail.jsonl"))
            .await
            .unwrap()
            .status(),
        (),
    );
    assert_eq!(status, 403, "captured mail is not served");
    assert_eq!(
        db_query(
            &db,
            "SELECT COUNT(*) FROM wp_posts WHERE post_title = 'A post with an image' AND post_type = 'post'"
        ),
        "1"
    );

    // Release: the pod is reset, verified against its pristine fingerprint and WARM again.
    http.post(format!("{base}/v1/release"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"clone_id": "demo-clone"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    wait_for(
        "the released pod verified and WARM",
        Duration::from_secs(120),
        || {
            agent
                .pool
                .pod(&claim.pod_id)
                .map(|p| p.state == PodState::Warm)
                .unwrap_or(false)
        },
    )
    .await;
    assert_eq!(
        db_query(
            &db,
            "SELECT COUNT(*) FROM wp_posts WHERE post_title = 'A post with an image' AND post_type = 'post'"
        ),
        "0"
    );
    let (status, _) = (reqwest::get(&image_url).await.unwrap().status(), ());
    assert_ne!(status, 200, "the clone's uploads are gone");
    agent.shutdown(Duration::from_secs(30)).await;
}
