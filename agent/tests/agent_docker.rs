//! The agent against a real Docker Engine and the real workload image: the pool fills with really
//! ready pods, claim/release cycles return to target, no residue survives a reset, dead
//! containers are noticed within seconds. Ignored unless run through scripts/test.

mod agent_docker_support;

use agent_docker_support::*;
use clonepool_common::agent_api::ClaimRequest;
use clonepool_common::ids::{CloneId, PodId};
use clonepool_common::pod::{ContainerRole, PodState};
use std::time::{Duration, Instant};

const FILL: Duration = Duration::from_secs(90);

fn claim_req(clone: &str) -> ClaimRequest {
    ClaimRequest {
        clone_id: clone.parse().unwrap(),
        clone_host: format!("{clone}.localhost:8080"),
        clone_scheme: Default::default(),
        allow_cold: false,
    }
}

fn clone(c: &str) -> CloneId {
    c.parse().unwrap()
}

async fn http_status(url: &str, host: Option<&str>) -> u16 {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut req = client.get(url);
    if let Some(h) = host {
        req = req.header("host", h);
    }
    req.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn the_pool_fills_to_target_with_pods_that_really_answer() {
    let node = test_node("fill");
    let _cleanup = PodCleanup::new(&node);
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let agent = start_agent(dir.path(), &node, &[]).await;
    wait_for("2 WARM pods", FILL, || {
        agent.pool.capacity().unwrap().warm == 2
    })
    .await;
    eprintln!("pool of 2 filled in {:?}", started.elapsed());
    let pods = agent.pool.pods().unwrap();
    assert_eq!(pods.len(), 2);
    assert_eq!(
        pod_labels_of_node(&node).len(),
        4,
        "two containers per pod, no more"
    );
    for pod in &pods {
        let endpoint = pod.endpoint.clone().unwrap();
        assert_eq!(
            http_status(&format!("{endpoint}/"), None).await,
            200,
            "{endpoint}"
        );
        assert_eq!(
            sql(&pod.pod_id, "SELECT COUNT(*) FROM wordpress.wp_users"),
            "1"
        );
    }
    agent.shutdown(Duration::from_secs(30)).await;
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn many_claim_release_cycles_return_the_pool_to_target() {
    let node = test_node("cycles");
    let _cleanup = PodCleanup::new(&node);
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(dir.path(), &node, &[]).await;
    wait_for("2 WARM pods", FILL, || {
        agent.pool.capacity().unwrap().warm == 2
    })
    .await;
    let cycles = 12;
    for i in 0..cycles {
        let name = format!("cycle-{i}");
        wait_for("a WARM pod", FILL, || {
            agent.pool.capacity().unwrap().warm >= 1
        })
        .await;
        let resp = agent.pool.claim(&claim_req(&name)).await.unwrap();
        // The clone's URL and the fresh password are in place.
        let site = sql(
            &resp.pod_id,
            "SELECT option_value FROM wordpress.wp_options WHERE option_name = 'siteurl'",
        );
        assert_eq!(site, format!("http://{name}.localhost:8080"));
        agent.pool.release(&clone(&name)).await.unwrap();
    }
    wait_for("pool back to 2 WARM, nothing resetting", FILL, || {
        let c = agent.pool.capacity().unwrap();
        c.warm == 2 && c.resetting == 0 && c.starting == 0 && c.quarantined == 0
    })
    .await;
    let ok_resets = agent
        .pool
        .events(1000)
        .unwrap()
        .iter()
        .filter(|e| e.kind == "warm" && e.message.starts_with("reset"))
        .count();
    assert_eq!(ok_resets, cycles, "every reset passed verification");
    assert_eq!(pod_labels_of_node(&node).len(), 4, "no pod left behind");
    agent.shutdown(Duration::from_secs(30)).await;
}

/// Plants a canary in every place a clone can leave something behind.
fn plant_canaries(pod: &PodId, endpoint: &str) {
    sql(
        pod,
        "CREATE DATABASE canary_db; CREATE USER 'canary'@'%' IDENTIFIED BY 'canary-pw';
         GRANT ALL ON canary_db.* TO 'canary'@'%';
         INSERT INTO wordpress.wp_options (option_name, option_value) VALUES ('canary_option', 'clone A');
         INSERT INTO wordpress.wp_posts (post_author, post_date, post_date_gmt, post_content, post_title, post_excerpt, post_status, post_name, to_ping, pinged, post_modified, post_modified_gmt, post_content_filtered, guid, post_type)
           VALUES (1, NOW(), NOW(), 'secret of clone A', 'canary post', '', 'publish', 'canary-post', '', '', NOW(), NOW(), '', 'x', 'post');
         CREATE TABLE wordpress.canary_table (x INT); INSERT INTO wordpress.canary_table VALUES (1);",
    );
    let (code, out) = sh(
        pod,
        ContainerRole::Web,
        r#"set -e
        W=/var/lib/wordpress/wp-content
        mkdir -p $W/uploads/2026/11 $W/plugins/canary-plugin $W/themes/canary-theme $W/mu-plugins
        echo 'clone A upload' > $W/uploads/2026/11/canary.jpg
        echo '<?php /* Plugin Name: Canary */' > $W/plugins/canary-plugin/canary.php
        echo '/* Theme Name: Canary */' > $W/themes/canary-theme/style.css
        echo '<?php /* canary mu-plugin */' > $W/mu-plugins/canary.php
        cat > $W/canary-session.php <<'PHP'
<?php
session_start();
$_SESSION['canary'] = 'clone A';
file_put_contents('/tmp/canary-from-php', 'clone A');
exec('nohup sleep 8888 > /dev/null 2>&1 &');
echo 'ok';
PHP
        cat > $W/canary-slow.php <<'PHP'
<?php
ignore_user_abort(true);
sleep(4);
file_put_contents('/tmp/late-canary', 'clone A, after the reset');
PHP
        chown -R www-data:www-data $W
        echo 'clone A tmp' > /tmp/canary.txt
        echo 'clone A var tmp' > /var/tmp/canary.txt
        echo 'clone A shm' > /dev/shm/canary
        mkdir -p /var/spool/cron/crontabs
        echo '* * * * * curl http://attacker.invalid/' > /var/spool/cron/crontabs/www-data
        setpriv --reuid=www-data --regid=www-data --init-groups sh -c 'nohup sleep 9999 > /dev/null 2>&1 &'
        setpriv --reuid=www-data --regid=www-data --init-groups php -r '
            msg_send(msg_get_queue(4242), 1, "clone A message");
            shm_put_var(shm_attach(4243, 4096), 1, "clone A shared memory");
            sem_get(4244);'
        "#,
    );
    assert_eq!(code, 0, "planting canaries: {out}");
    // The PHP canary runs inside Apache: a real session file and a process started by PHP.
    let url = format!("{endpoint}/wp-content/canary-session.php");
    let body = std::process::Command::new("curl")
        .args(["-s", "--max-time", "10", &url])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert_eq!(body, "ok", "the PHP canary ran");
    let (_, sessions) = sh(pod, ContainerRole::Web, "ls /var/lib/php/sessions");
    assert!(
        sessions.contains("sess_"),
        "a PHP session file exists: {sessions}"
    );
    let (_, ipc) = sh(
        pod,
        ContainerRole::Web,
        "cat /proc/sysvipc/msg /proc/sysvipc/shm /proc/sysvipc/sem",
    );
    for key in ["4242", "4243", "4244"] {
        assert!(
            ipc.contains(key),
            "the System V IPC canary {key} exists: {ipc}"
        );
    }
    let (_, ps) = sh(pod, ContainerRole::Web, "ps -eo args");
    assert!(
        ps.contains("sleep 9999") && ps.contains("sleep 8888"),
        "{ps}"
    );
}

/// Every canary is gone from the pod; returns what survived.
fn surviving_canaries(pod: &PodId) -> Vec<String> {
    let mut found = Vec::new();
    if !sql(pod, "SHOW DATABASES LIKE 'canary_db'").is_empty() {
        found.push("database canary_db".to_string());
    }
    if sql(pod, "SELECT COUNT(*) FROM mysql.user WHERE user = 'canary'") != "0" {
        found.push("DB user canary".into());
    }
    if sql(
        pod,
        "SELECT COUNT(*) FROM wordpress.wp_options WHERE option_name = 'canary_option'",
    ) != "0"
    {
        found.push("option row".into());
    }
    if sql(
        pod,
        "SELECT COUNT(*) FROM wordpress.wp_posts WHERE post_content LIKE '%clone A%'",
    ) != "0"
    {
        found.push("post row".into());
    }
    if !sql(pod, "SHOW TABLES FROM wordpress LIKE 'canary_table'").is_empty() {
        found.push("table canary_table".into());
    }
    let (_, out) = sh(
        pod,
        ContainerRole::Web,
        r#"W=/var/lib/wordpress/wp-content
        for f in $W/uploads/2026 $W/plugins/canary-plugin $W/themes/canary-theme $W/mu-plugins $W/canary-session.php \
                 $W/canary-slow.php /tmp/late-canary /tmp/canary.txt /tmp/canary-from-php /var/tmp/canary.txt /dev/shm/canary /var/spool/cron/crontabs/www-data; do
            [ -e "$f" ] && echo "file $f"
        done
        ls /var/lib/php/sessions | sed 's/^/session /'
        ps -eo args | grep -E 'sleep (8888|9999)' | grep -v grep | sed 's/^/process /'
        for kind in msg shm sem; do awk -v kind=$kind 'NR > 1 && $1 >= 4242 && $1 <= 4244 { print "System V IPC " kind " key " $1 }' /proc/sysvipc/$kind; done
        true"#,
    );
    found.extend(
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string),
    );
    found
}

fn config_value(pod: &PodId, name: &str) -> String {
    let (_, out) = sh(
        pod,
        ContainerRole::Web,
        &format!("grep \"'{name}'\" /etc/wordpress/config-default.php"),
    );
    out.trim().to_string()
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn nothing_of_a_clone_survives_a_reset_and_every_secret_is_fresh() {
    let node = test_node("residue");
    let _cleanup = PodCleanup::new(&node);
    let dir = tempfile::tempdir().unwrap();
    // One pod only, so the next clone gets the very pod the first one used.
    let agent = start_agent(
        dir.path(),
        &node,
        &["--warm-target", "1", "--max-pods", "1"],
    )
    .await;
    wait_for("1 WARM pod", FILL, || {
        agent.pool.capacity().unwrap().warm == 1
    })
    .await;

    let a = agent.pool.claim(&claim_req("clone-a")).await.unwrap();
    let pod = a.pod_id.clone();
    let db_password_a = config_value(&pod, "DB_PASSWORD");
    let auth_key_a = config_value(&pod, "AUTH_KEY");
    let pass_hash_a = sql(
        &pod,
        "SELECT user_pass FROM wordpress.wp_users WHERE user_login = 'admin'",
    );
    plant_canaries(&pod, &a.endpoint);
    let before = surviving_canaries(&pod);
    assert!(before.len() >= 15, "the canaries are in place: {before:?}");

    // A request of clone A still runs when the release comes (the client gave up on it).
    let slow = std::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "1",
            &format!("{}/wp-content/canary-slow.php", a.endpoint),
        ])
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.pool.release(&clone("clone-a")).await.unwrap();
    wait_for("the pod WARM again", FILL, || {
        agent
            .pool
            .pod(&pod)
            .is_ok_and(|p| p.state == PodState::Warm)
    })
    .await;
    let _ = slow.wait_with_output();
    // Long enough for the slow request to have finished had it survived.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let survived = surviving_canaries(&pod);
    assert!(
        survived.is_empty(),
        "residue of clone A after reset: {survived:?}"
    );

    let b = agent.pool.claim(&claim_req("clone-b")).await.unwrap();
    assert_eq!(b.pod_id, pod, "clone B got the same pod");
    assert_ne!(b.credentials.admin_password, a.credentials.admin_password);
    assert_ne!(
        config_value(&pod, "DB_PASSWORD"),
        db_password_a,
        "fresh DB password"
    );
    assert_ne!(config_value(&pod, "AUTH_KEY"), auth_key_a, "fresh salts");
    assert_ne!(
        sql(
            &pod,
            "SELECT user_pass FROM wordpress.wp_users WHERE user_login = 'admin'"
        ),
        pass_hash_a
    );
    // Clone B's site works under its own URL.
    let status = http_status(&format!("{}/", b.endpoint), Some("clone-b.localhost:8080")).await;
    assert_eq!(status, 200);
    agent.shutdown(Duration::from_secs(30)).await;
}

/// How soon a killed container must be noticed: far below the 60 s reconcile interval the
/// test sets, with room for a loaded machine (it takes 0.1–0.3 s).
const NOTICED: Duration = Duration::from_secs(20);

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn a_killed_container_is_noticed_within_seconds() {
    let node = test_node("kill");
    let _cleanup = PodCleanup::new(&node);
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(dir.path(), &node, &["--reconcile-interval-secs", "60"]).await;
    wait_for("2 WARM pods", FILL, || {
        agent.pool.capacity().unwrap().warm == 2
    })
    .await;

    // A WARM pod: removed and replaced.
    let warm = agent.pool.pods().unwrap()[0].pod_id.clone();
    let killed = Instant::now();
    docker(&[
        "kill",
        &clonepool_agent::runtime::docker::container_name(&warm, ContainerRole::Web),
    ]);
    // Reconciling runs every 60 s here: well within that means the runtime's event noticed it.
    wait_for("the dead WARM pod noticed", NOTICED, || {
        agent
            .pool
            .pod(&warm)
            .map(|p| p.state != PodState::Warm)
            .unwrap_or(true)
    })
    .await;
    eprintln!("dead WARM pod noticed after {:?}", killed.elapsed());
    wait_for("a replacement WARM", FILL, || {
        agent.pool.capacity().unwrap().warm == 2 && agent.pool.pod(&warm).is_err()
    })
    .await;

    // A serving pod: reported lost, kept visible.
    let resp = agent.pool.claim(&claim_req("serving")).await.unwrap();
    agent.pool.mark_ready(&clone("serving")).await.unwrap();
    let killed = Instant::now();
    docker(&[
        "kill",
        &clonepool_agent::runtime::docker::container_name(&resp.pod_id, ContainerRole::Db),
    ]);
    wait_for("the serving pod reported lost", NOTICED, || {
        agent
            .pool
            .pod(&resp.pod_id)
            .is_ok_and(|p| p.state == PodState::Quarantined)
    })
    .await;
    eprintln!("dead serving pod noticed after {:?}", killed.elapsed());
    let pod = agent.pool.pod(&resp.pod_id).unwrap();
    assert!(pod.reason.unwrap().starts_with("lost: "));
    assert_eq!(pod.clone_id, Some(clone("serving")));
    let text = reqwest::get(format!("http://{}/metrics", agent.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("clonepool_agent_pods_lost_total 1"), "{text}");
    agent.shutdown(Duration::from_secs(30)).await;
}
