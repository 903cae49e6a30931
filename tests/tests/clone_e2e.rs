//! Clones of the demo site end to end: `POST /api/v2/clone` over real HTTPS to a real
//! coordinator, which logs in to the demo site (scripts/demo-site, with the migrator plugin),
//! streams its export into a real agent's import route on the real Docker Engine; the clone then
//! serves the demo's content through the edge. Also: wrong credentials and a URL that is not
//! WordPress end in failed jobs with clear messages and the pod back in the pool. Prints the warm
//! clone time (request → clone serving its content), p50/p95.

mod coordinator_support;
mod migrator_support;

use clonepool_common::api::{CloneRequest, JobResult, JobState, JobStatus};
use clonepool_common::pod::PodState;
use coordinator_support::*;
use migrator_support::{Site, SiteKind, SITES};
use std::time::{Duration, Instant};

fn request(site: &Site, clone: &str, password: &str) -> CloneRequest {
    CloneRequest {
        source_url: site.url.clone(),
        source_username: site.user.clone(),
        source_password: password.into(),
        customer_id: Some(clone.into()),
        ttl_minutes: Some(30),
    }
}

/// Runs one clone job to its end; answers the final status and every progress message seen.
async fn run_clone(stack: &Stack, req: &CloneRequest) -> (JobStatus, Vec<String>) {
    let accepted = stack.api.clone_site(req, None).await.unwrap();
    let mut messages: Vec<String> = Vec::new();
    let done = stack
        .api
        .wait_job(
            &accepted.job.job_id,
            Duration::from_millis(20),
            Duration::from_secs(180),
            |s| {
                if messages.last() != Some(&s.message) {
                    messages.push(s.message.clone());
                }
            },
        )
        .await
        .unwrap();
    (done, messages)
}

async fn no_pod_held(stack: &Stack) {
    eventually(
        "the pod back in the pool",
        Duration::from_secs(120),
        || async {
            let pods = stack.agent_pods();
            let busy = pods.iter().any(|p| {
                matches!(
                    p.state,
                    PodState::Assigned | PodState::Ready | PodState::Resetting
                )
            });
            (!busy && pods.iter().any(|p| p.state == PodState::Warm)).then_some(())
        },
    )
    .await;
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn clones_of_the_demo_site_serve_its_content_and_bad_sources_fail_clearly() {
    let _sites = SITES.lock().await;
    let _docker = docker_lock().await;
    let demo = Site::start(SiteKind::Demo);
    let stack = stack(
        "clone-e2e",
        &["--warm-target", "1", "--max-pods", "3"],
        |c| {
            c.source_import = true;
            // The demo site listens on loopback, which the SSRF guard refuses unless allow-listed.
            c.url_allow_hosts = vec!["127.0.0.1".into()];
        },
    )
    .await;

    // Warm clones: request → the clone serves the demo's content through the edge.
    let mut samples = Vec::new();
    for i in 0..5 {
        stack.wait_warm(1, Duration::from_secs(180)).await;
        let clone = format!("demo-{i}");
        let started = Instant::now();
        let (done, messages) = run_clone(&stack, &request(&demo, &clone, &demo.password)).await;
        assert_eq!(done.status, JobState::Completed, "{done:?}");
        let Some(JobResult::Clone(result)) = &done.result else {
            panic!("no result: {done:?}");
        };
        let home = stack
            .edge_client(&clone)
            .get(&result.clone_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let took = started.elapsed().as_secs_f64() * 1000.0;
        assert!(home.contains("Welcome to the demo shop"), "{home}");
        assert!(home.contains(&format!(
            "href=\"{}/about/\">About the demo shop",
            result.clone_url
        )));
        assert!(
            !home.contains(&demo.url),
            "no link points back to the source"
        );
        samples.push(took);
        if i == 0 {
            for step in [
                "logging in to",
                "checking the clonepool migrator plugin",
                "Exporting",
            ] {
                assert!(
                    messages.iter().any(|m| m.contains(step)),
                    "no progress message names {step:?}: {messages:?}"
                );
            }
            assert_eq!(result.username, demo.user);
            let magic = result
                .magic_login_url
                .as_deref()
                .expect("a magic login link");
            assert!(magic.starts_with(&format!("{}/?clonepool_login=", result.clone_url)));
            // The magic link logs in once, through the edge.
            let browser = stack.edge_client(&clone);
            let first = browser.get(magic).send().await.unwrap();
            assert_eq!(first.status(), 302);
            let dash = browser
                .get(format!("{}/wp-admin/", result.clone_url))
                .send()
                .await
                .unwrap();
            assert_eq!(dash.status(), 200);
            let again = stack.edge_client(&clone).get(magic).send().await.unwrap();
            assert_eq!(again.status(), 403);
        }
        stack.api.delete(&clone).await.unwrap();
    }
    let p50 = quantile(&samples, 0.5);
    let p95 = quantile(&samples, 0.95);
    eprintln!("warm clone of the demo site, request → serving its content: p50 {p50:.0} ms, p95 {p95:.0} ms over {} runs ({samples:.0?})", samples.len());

    // Wrong password: a failed job that says so, and the pod back in the pool.
    stack.wait_warm(1, Duration::from_secs(180)).await;
    let (done, _) = run_clone(&stack, &request(&demo, "wrong-pw", "not-the-password")).await;
    assert_eq!(done.status, JobState::Failed);
    let error = done.error.clone().unwrap_or_default();
    assert!(
        error.contains("refused the username or password"),
        "{done:?}"
    );
    no_pod_held(&stack).await;

    // A URL that is not WordPress (the coordinator's own admin port).
    let not_wp = CloneRequest {
        source_url: format!("http://127.0.0.1:{}/", stack.coordinator.admin_addr.port()),
        ..request(&demo, "not-wp", &demo.password)
    };
    let (done, _) = run_clone(&stack, &not_wp).await;
    assert_eq!(done.status, JobState::Failed);
    let error = done.error.clone().unwrap_or_default();
    assert!(error.contains("is not a WordPress site"), "{done:?}");
    no_pod_held(&stack).await;
    stack.shutdown().await;
}

/// A stand-in "WordPress" on loopback whose login and plugin answer, but whose export breaks off
/// midway (chunked body, connection closed without the last chunk).
async fn broken_export_site() -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut partial = tar::Builder::new(Vec::new());
    let manifest = br#"{"format":"clonepool-migrator-archive","format_version":1,"table_prefix":"wp_","siteurl":"http://x","home":"http://x"}"#;
    let mut h = tar::Header::new_gnu();
    h.set_size(manifest.len() as u64);
    h.set_mode(0o644);
    partial
        .append_data(&mut h, "manifest.json", &manifest[..])
        .unwrap();
    let sql = vec![b'-'; 100_000];
    let mut h = tar::Header::new_gnu();
    h.set_size(sql.len() as u64);
    h.set_mode(0o644);
    partial
        .append_data(&mut h, "database/000001.sql", &sql[..])
        .unwrap();
    let mut partial = partial.into_inner().unwrap();
    partial.truncate(40_000); // midway through the SQL part
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let partial = partial.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let Ok(n) = conn.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    let Ok(n) = conn.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let line = head.lines().next().unwrap_or("").to_string();
                let reply = |status: &str, extra: &str, body: &str| {
                    format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n{extra}\r\n{body}", body.len())
                };
                let out = if line.starts_with("GET /wp-login.php") {
                    reply(
                        "200 OK",
                        "Set-Cookie: wordpress_test_cookie=WP; path=/\r\n",
                        "<form><input name=\"log\"></form>",
                    )
                } else if line.starts_with("POST /wp-login.php") {
                    reply(
                        "302 Found",
                        "Location: /wp-admin/\r\nSet-Cookie: wordpress_logged_in=x; path=/\r\n",
                        "",
                    )
                } else if line.starts_with("GET /wp-admin/admin-ajax.php") {
                    reply("200 OK", "", "0123456789")
                } else if line.starts_with("GET /wp-admin/") {
                    reply("200 OK", "", "Dashboard")
                } else if line.contains("clonepool%2Fv1%2Fstatus")
                    || line.contains("clonepool/v1/status")
                {
                    reply(
                        "200 OK",
                        "Content-Type: application/json\r\n",
                        "{\"plugin\":\"clonepool-migrator\"}",
                    )
                } else if line.contains("v1/export") || line.contains("v1%2Fexport") {
                    let mut head = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                    head.extend_from_slice(format!("{:x}\r\n", partial.len()).as_bytes());
                    head.extend_from_slice(&partial);
                    head.extend_from_slice(b"\r\n");
                    let _ = conn.write_all(&head).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return; // the connection closes without the last chunk
                } else {
                    reply("404 Not Found", "", "")
                };
                let _ = conn.write_all(out.as_bytes()).await;
            });
        }
    });
    (base, task)
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn an_export_that_dies_midway_fails_the_clone_and_returns_the_pod_clean() {
    let _docker = docker_lock().await;
    let (base, server) = broken_export_site().await;
    let stack = stack(
        "clone-midway",
        &["--warm-target", "1", "--max-pods", "2"],
        |c| {
            c.source_import = true;
            c.url_allow_hosts = vec!["127.0.0.1".into()];
        },
    )
    .await;
    stack.wait_warm(1, Duration::from_secs(180)).await;
    let req = CloneRequest {
        source_url: format!("{base}/"),
        source_username: "admin".into(),
        source_password: "pw".into(),
        customer_id: Some("midway".into()),
        ttl_minutes: Some(30),
    };
    let (done, messages) = run_clone(&stack, &req).await;
    assert_eq!(done.status, JobState::Failed, "{done:?}");
    let error = done.error.clone().unwrap_or_default();
    assert!(
        error.contains("importing") && error.contains("into the clone failed"),
        "{error} ({messages:?})"
    );
    assert_eq!(done.error_code.as_deref(), Some("import_failed"));
    no_pod_held(&stack).await;
    server.abort();
    stack.shutdown().await;
}
