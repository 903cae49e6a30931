//! End-to-end tests of the coordinator over real HTTPS, in front of a real agent on the real
//! Docker Engine with the real workload image (CLONEPOOL_IMAGE). The kill -9 test runs the
//! coordinator as a separate process: this test binary re-executed with
//! `coordinator_child_process_for_the_kill_test` selected.

mod coordinator_support;

use clonepool_common::api::{ClonePath, CloneRequest, CloneStatus, JobResult, JobState, JobStatus};
use clonepool_common::pod::PodState;
use clonepool_coordinator::client::ApiClient;
use clonepool_e2e::procs::free_port;
use coordinator_support::*;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn clone_request(customer_id: &str, ttl_minutes: u32) -> CloneRequest {
    CloneRequest {
        source_url: SOURCE_URL.into(),
        source_username: "admin".into(),
        source_password: "source-secret".into(),
        customer_id: Some(customer_id.into()),
        ttl_minutes: Some(ttl_minutes),
    }
}

fn clone_result(status: &JobStatus) -> &clonepool_common::api::CloneResult {
    match &status.result {
        Some(JobResult::Clone(result)) => result,
        _ => panic!("job {} has no clone result: {status:?}", status.job_id),
    }
}

/// Logs in to a clone's WordPress through the edge proxy and returns the dashboard HTML.
async fn wordpress_dashboard(stack: &Stack, status: &JobStatus) -> String {
    let result = clone_result(status);
    let client = stack.edge_client(&result.clone_id);
    let base = &result.clone_url;
    let login_page = client
        .get(format!("{base}/wp-login.php"))
        .send()
        .await
        .unwrap();
    assert_eq!(login_page.status(), 200, "wp-login.php through the edge");
    let login = client
        .post(format!("{base}/wp-login.php"))
        .form(&[
            ("log", result.username.as_str()),
            ("pwd", result.password.as_str()),
            ("wp-submit", "Log In"),
            ("redirect_to", &format!("{base}/wp-admin/")),
            ("testcookie", "1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        login.status(),
        302,
        "a correct login redirects to wp-admin: {}",
        login.text().await.unwrap_or_default()
    );
    let dashboard = client
        .get(format!("{base}/wp-admin/"))
        .send()
        .await
        .unwrap();
    assert_eq!(dashboard.status(), 200);
    dashboard.text().await.unwrap()
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn a_warm_clone_completes_and_its_url_serves_wordpress_through_the_edge() {
    let _docker = docker_lock().await;
    let stack = stack(
        "coord-warm",
        &["--warm-target", "1", "--max-pods", "2"],
        |_| {},
    )
    .await;
    stack.wait_warm(1, Duration::from_secs(120)).await;

    let accepted = stack
        .api
        .clone_site(&clone_request("e2e-warm", 30), None)
        .await
        .unwrap();
    let done = stack
        .wait_job(&accepted.job.job_id, Duration::from_secs(60))
        .await;
    assert_eq!(done.status, JobState::Completed, "{done:?}");
    let result = clone_result(&done);
    assert_eq!(result.path, ClonePath::Warm);
    assert_eq!(
        result.clone_url,
        format!(
            "http://e2e-warm.localhost:{}",
            stack.coordinator.edge_addr.port()
        )
    );

    // The front page is WordPress, with links to the clone's own URL.
    let front = stack
        .edge_client("e2e-warm")
        .get(&result.clone_url)
        .send()
        .await
        .unwrap();
    assert_eq!(front.status(), 200);
    let html = front.text().await.unwrap();
    assert!(
        html.contains("wp-content") || html.contains("wp-includes"),
        "{html}"
    );
    assert!(
        html.contains(&result.clone_url),
        "links point at the clone URL"
    );
    // The credentials in the result log in.
    let dashboard = wordpress_dashboard(&stack, &done).await;
    assert!(dashboard.contains("Dashboard"), "{dashboard}");

    // The agent shows the pod READY for this clone.
    let info = stack.api.clone_info("e2e-warm").await.unwrap();
    let pod = stack
        .agent_pods()
        .into_iter()
        .find(|p| Some(p.pod_id.to_string()) == info.pod_id)
        .expect("the clone's pod is on the agent");
    assert_eq!(pod.state, PodState::Ready);
    assert_eq!(
        pod.clone_id.map(|c| c.to_string()).as_deref(),
        Some("e2e-warm")
    );
    stack.shutdown().await;
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn with_the_pool_exhausted_the_next_clone_completes_cold() {
    let _docker = docker_lock().await;
    let stack = stack(
        "coord-cold",
        &["--warm-target", "1", "--max-pods", "3"],
        |_| {},
    )
    .await;
    stack.wait_warm(1, Duration::from_secs(120)).await;

    // Two at once with one warm pod: one takes it, the other must go cold.
    let (one, two) = (clone_request("e2e-one", 30), clone_request("e2e-two", 30));
    let (a, b) = tokio::join!(
        stack.api.clone_site(&one, None),
        stack.api.clone_site(&two, None)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let (a, b) = tokio::join!(
        stack.wait_job(&a.job.job_id, Duration::from_secs(120)),
        stack.wait_job(&b.job.job_id, Duration::from_secs(120))
    );
    assert_eq!(a.status, JobState::Completed, "{a:?}");
    assert_eq!(b.status, JobState::Completed, "{b:?}");
    let paths: HashSet<ClonePath> = [clone_result(&a).path, clone_result(&b).path].into();
    assert_eq!(paths, HashSet::from([ClonePath::Warm, ClonePath::Cold]));
    // The cold clone serves WordPress too.
    let cold = if clone_result(&a).path == ClonePath::Cold {
        &a
    } else {
        &b
    };
    let dashboard = wordpress_dashboard(&stack, cold).await;
    assert!(dashboard.contains("Dashboard"));
    stack.shutdown().await;
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn ttl_expiry_and_delete_return_the_pods_to_warm() {
    let _docker = docker_lock().await;
    // A TTL minute of 400 ms: a 5-minute clone expires after 2 s.
    let stack = stack(
        "coord-ttl",
        &["--warm-target", "2", "--max-pods", "3"],
        |c| c.ttl_minute_ms = 400,
    )
    .await;
    stack.wait_warm(2, Duration::from_secs(180)).await;
    let (short_req, long_req) = (
        clone_request("e2e-short", 5),
        clone_request("e2e-long", 1440),
    );
    let (short, long) = tokio::join!(
        stack.api.clone_site(&short_req, None),
        stack.api.clone_site(&long_req, None)
    );
    let (short_id, long_id) = (short.unwrap().job.job_id, long.unwrap().job.job_id);
    let (short, long) = tokio::join!(
        stack.wait_job(&short_id, Duration::from_secs(60)),
        stack.wait_job(&long_id, Duration::from_secs(60))
    );
    assert_eq!(short.status, JobState::Completed, "{short:?}");
    assert_eq!(long.status, JobState::Completed, "{long:?}");
    let short_pod = stack
        .api
        .clone_info("e2e-short")
        .await
        .unwrap()
        .pod_id
        .unwrap();
    let long_pod = stack
        .api
        .clone_info("e2e-long")
        .await
        .unwrap()
        .pod_id
        .unwrap();

    let deleted = stack.api.delete("e2e-long").await.unwrap();
    assert_eq!(deleted.status, CloneStatus::Released);
    let expired = eventually(
        "the short clone expires",
        Duration::from_secs(30),
        || async {
            let info = stack.api.clone_info("e2e-short").await.unwrap();
            (info.status == CloneStatus::Released).then_some(info)
        },
    )
    .await;
    assert_eq!(expired.end_reason.as_deref(), Some("expired"));
    // An expired clone's URL answers the 404 page.
    let gone = stack
        .edge_client("e2e-short")
        .get(format!(
            "http://e2e-short.localhost:{}/",
            stack.coordinator.edge_addr.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);

    // Both pods are reset by the agent and WARM again, holding no clone.
    for pod_id in [short_pod, long_pod] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let pods = stack.agent_pods();
            let pod = pods.iter().find(|p| p.pod_id.to_string() == pod_id);
            if pod.is_some_and(|p| p.state == PodState::Warm && p.clone_id.is_none()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pod {pod_id} is not back to WARM: {pod:?}\nall pods: {pods:#?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let released = stack.api.clones(true).await.unwrap();
    assert!(released
        .clones
        .iter()
        .all(|c| c.status == CloneStatus::Released));
    stack.shutdown().await;
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn a_hundred_concurrent_clone_posts_all_get_jobs_none_lost_and_no_pod_assigned_twice() {
    let _docker = docker_lock().await;
    let stack = stack(
        "coord-100",
        &["--warm-target", "2", "--max-pods", "4"],
        |c| {
            c.retry_backoff_ms = 300;
            c.max_concurrent_jobs = 8;
        },
    )
    .await;
    stack.wait_warm(2, Duration::from_secs(180)).await;

    let posts = (0..100).map(|i| {
        let raw = stack.raw.clone();
        let url = stack.url("/api/v2/clone");
        let token = stack.token.clone();
        async move {
            let response = raw
                .post(url)
                .bearer_auth(token)
                .json(&clone_request(&format!("e2e-many-{i:03}"), 30))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
            let body: serde_json::Value = response.json().await.unwrap();
            body["job_id"].as_str().unwrap().to_string()
        }
    });
    let job_ids: Vec<String> = futures_util::future::join_all(posts).await;
    let unique: HashSet<&String> = job_ids.iter().collect();
    assert_eq!(unique.len(), 100, "every POST got its own job id");

    // Every job ends, completed or clearly failed (most find no room: 4 pods for 100 clones).
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut finished: HashMap<String, JobStatus> = HashMap::new();
    while finished.len() < job_ids.len() {
        for id in &job_ids {
            if finished.contains_key(id) {
                continue;
            }
            let status = stack.api.job(id).await.unwrap();
            if status.status.is_terminal() {
                assert!(finished_clearly(&status), "{status:?}");
                finished.insert(id.clone(), status);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} of 100 jobs never finished",
            100 - finished.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let completed: Vec<&JobStatus> = finished
        .values()
        .filter(|s| s.status == JobState::Completed)
        .collect();
    assert!(!completed.is_empty(), "some clones completed");
    for failed in finished.values().filter(|s| s.status == JobState::Failed) {
        assert_eq!(
            failed.error_code.as_deref(),
            Some("no_capacity"),
            "{failed:?}"
        );
    }
    // No pod was handed out twice: distinct pods on the coordinator's side ...
    let mut pods = HashSet::new();
    for status in &completed {
        let info = stack
            .api
            .clone_info(&clone_result(status).clone_id)
            .await
            .unwrap();
        assert!(
            pods.insert(info.pod_id.clone().unwrap()),
            "pod reused: {info:?}"
        );
    }
    // ... and on the agent's: each pod it holds for a clone matches the coordinator's record.
    let agent_pods = stack.agent_pods();
    for status in &completed {
        let clone_id = &clone_result(status).clone_id;
        let holders: Vec<_> = agent_pods
            .iter()
            .filter(|p| p.clone_id.as_ref().map(|c| c.as_str()) == Some(clone_id.as_str()))
            .collect();
        assert_eq!(holders.len(), 1, "clone {clone_id} held by {holders:?}");
    }
    stack.shutdown().await;
}

/// (what, path, bearer token, body, expected status, expected error code)
type BadPost = (
    &'static str,
    &'static str,
    Option<&'static str>,
    String,
    u16,
    &'static str,
);

/// Bad inputs against the real HTTPS API (no Docker needed: the agent may be absent).
#[tokio::test]
async fn bad_inputs_over_https_get_their_documented_errors() {
    let dir = tempfile::tempdir().unwrap();
    let token = "e2e-bad-inputs-token";
    let config = coordinator_config(
        &dir.path().join("coordinator"),
        "http://127.0.0.1:9",
        &dir.path().join("no-agent-token"),
        token,
    );
    let coordinator = clonepool_coordinator::start(config).await.unwrap();
    let ca = std::fs::read(coordinator.tls.ca.as_ref().unwrap()).unwrap();
    let raw = https_client(&ca);
    let base = coordinator.api_url();
    let good = serde_json::to_value(clone_request("x", 30)).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut body = good.clone();
        body[key] = value;
        body.to_string()
    };
    // (what, path, token, body, status, code)
    let table: Vec<BadPost> = vec![
        (
            "no token",
            "/api/v2/clone",
            None,
            good.to_string(),
            401,
            "unauthorized",
        ),
        (
            "wrong token",
            "/api/v2/clone",
            Some("nope"),
            good.to_string(),
            401,
            "unauthorized",
        ),
        (
            "bad JSON",
            "/api/v2/clone",
            Some(token),
            "{\"source_url\":".into(),
            400,
            "bad_request",
        ),
        (
            "unknown field",
            "/api/v2/clone",
            Some(token),
            with("surprise", json!(1)),
            400,
            "bad_request",
        ),
        (
            "bad customer_id",
            "/api/v2/clone",
            Some(token),
            with("customer_id", json!("Not A Label")),
            400,
            "bad_request",
        ),
        (
            "long customer_id",
            "/api/v2/clone",
            Some(token),
            with("customer_id", json!("a".repeat(41))),
            400,
            "bad_request",
        ),
        (
            "ttl too long",
            "/api/v2/clone",
            Some(token),
            with("ttl_minutes", json!(100000)),
            400,
            "bad_request",
        ),
        (
            "huge body",
            "/api/v2/clone",
            Some(token),
            with("source_password", json!("p".repeat(1 << 20))),
            413,
            "payload_too_large",
        ),
        (
            "not http",
            "/api/v2/clone",
            Some(token),
            with("source_url", json!("gopher://source.test/")),
            400,
            "invalid_url",
        ),
        (
            "loopback",
            "/api/v2/clone",
            Some(token),
            with("source_url", json!("http://127.0.0.1:7401/")),
            400,
            "forbidden_url",
        ),
        (
            "localhost",
            "/api/v2/clone",
            Some(token),
            with("source_url", json!("http://localhost/")),
            400,
            "forbidden_url",
        ),
        (
            "metadata",
            "/api/v2/clone",
            Some(token),
            with(
                "source_url",
                json!("http://169.254.169.254/latest/meta-data/"),
            ),
            400,
            "forbidden_url",
        ),
        (
            "private",
            "/api/v2/clone",
            Some(token),
            with("source_url", json!("http://172.17.0.1/")),
            400,
            "forbidden_url",
        ),
        (
            "CGNAT",
            "/api/v2/clone",
            Some(token),
            with("source_url", json!("http://100.100.100.200/")),
            400,
            "forbidden_url",
        ),
        (
            "IPv6 ULA",
            "/api/v2/clone",
            Some(token),
            with("source_url", json!("http://[fc00::1]/")),
            400,
            "forbidden_url",
        ),
        (
            "IPv4-mapped",
            "/api/v2/clone",
            Some(token),
            with("source_url", json!("http://[::ffff:10.0.0.1]/")),
            400,
            "forbidden_url",
        ),
        (
            "decimal IP",
            "/api/v2/clone",
            Some(token),
            with("source_url", json!("http://2130706433/")),
            400,
            "forbidden_url",
        ),
    ];
    for (what, path, bearer, body, status, code) in table {
        let mut request = raw
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        let response = request.send().await.unwrap();
        let got = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            (got, body["error"]["code"].as_str().unwrap_or("")),
            (status, code),
            "{what}: {body}"
        );
    }
    for (what, path, status, code) in [
        (
            "bad job id",
            "/api/v2/job-status/..%2F..%2Fetc",
            400,
            "bad_request",
        ),
        (
            "unknown job",
            "/api/v2/job-status/job-ffffffffffffffffffffffff",
            404,
            "not_found",
        ),
        ("bad clone id", "/api/v2/clones/UPPER", 400, "bad_request"),
        ("unknown clone", "/api/v2/clones/nobody", 404, "not_found"),
    ] {
        let response = raw
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let got = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            (got, body["error"]["code"].as_str().unwrap_or("")),
            (status, code),
            "{what}"
        );
    }
    // Plain HTTP to the HTTPS port is not served.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/api/v2/pool", coordinator.api_addr))
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    coordinator.shutdown().await;
}

/// Not a test on its own: the coordinator process that
/// `kill_9_of_the_coordinator_mid_job_then_restart_ends_every_job_completed_or_clearly_failed`
/// starts (and kills). Does nothing unless CLONEPOOL_E2E_CHILD is set.
#[tokio::test]
#[ignore = "helper process of the kill -9 test"]
async fn coordinator_child_process_for_the_kill_test() {
    if std::env::var("CLONEPOOL_E2E_CHILD").is_err() {
        return;
    }
    use clap::Parser;
    // Everything comes from CLONEPOOL_* variables the parent sets.
    let mut config =
        clonepool_coordinator::config::Config::try_parse_from(["clonepool-coordinator"]).unwrap();
    config.api_tokens_from_env = vec![std::env::var("CLONEPOOL_API_TOKEN").unwrap()];
    let coordinator = clonepool_coordinator::start(config).await.unwrap();
    println!("CHILD-READY {}", coordinator.api_addr);
    std::future::pending::<()>().await;
}

struct ChildCoordinator {
    child: Child,
}

impl Drop for ChildCoordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_coordinator(env: &[(&str, String)], log: &std::path::Path) -> ChildCoordinator {
    let exe = std::env::current_exe().unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut command = Command::new(exe);
    command
        .args([
            "--exact",
            "coordinator_child_process_for_the_kill_test",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CLONEPOOL_E2E_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(log);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("CHILD-READY") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the coordinator process starts");
    ChildCoordinator { child }
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn kill_9_of_the_coordinator_mid_job_then_restart_ends_every_job_completed_or_clearly_failed()
{
    let _docker = docker_lock().await;
    let dir = tempfile::tempdir().unwrap();
    let node = test_node("coord-kill");
    let _cleanup = PodCleanup::new(&node);
    let agent_dir = dir.path().join("agent");
    let agent = start_agent(
        &agent_dir,
        &node,
        &["--warm-target", "1", "--max-pods", "4"],
    )
    .await;
    let token = format!("e2e-{:016x}", rand::random::<u64>());
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let edge: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let data = dir.path().join("coordinator");
    let env = vec![
        ("CLONEPOOL_DATA_DIR", data.display().to_string()),
        ("CLONEPOOL_LISTEN", api.to_string()),
        ("CLONEPOOL_EDGE_LISTEN", edge.to_string()),
        ("CLONEPOOL_ADMIN_LISTEN", admin.to_string()),
        ("CLONEPOOL_AGENT_URLS", format!("http://{}", agent.api_addr)),
        (
            "CLONEPOOL_AGENT_TOKEN_FILE",
            agent_token_file(&agent_dir).display().to_string(),
        ),
        ("CLONEPOOL_API_TOKEN", token.clone()),
        ("CLONEPOOL_URL_ALLOW_HOSTS", "source.test".into()),
        ("CLONEPOOL_SOURCE_IMPORT", "false".into()),
        ("CLONEPOOL_CAPACITY_POLL_MS", "200".into()),
        ("CLONEPOOL_RETRY_BACKOFF_MS", "500".into()),
    ];
    let log = dir.path().join("coordinator.log");
    let first = spawn_coordinator(&env, &log);
    let ca = std::fs::read(data.join("ca.pem")).unwrap();
    let client = ApiClient::new(
        &format!("https://localhost:{}", api.port()),
        &token,
        Some(&ca),
    )
    .unwrap();
    eventually("a warm pod", Duration::from_secs(120), || async {
        (client.pool().await.ok()?.warm_total >= 1).then_some(())
    })
    .await;

    // Four clones at once: one warm, three cold (pods being created when the kill lands).
    let mut job_ids = Vec::new();
    for i in 0..4 {
        let accepted = client
            .clone_site(&clone_request(&format!("e2e-kill-{i}"), 30), None)
            .await
            .unwrap();
        job_ids.push(accepted.job.job_id);
    }
    eventually("a job running", Duration::from_secs(30), || async {
        for id in &job_ids {
            if client.job(id).await.ok()?.status == JobState::Running {
                return Some(());
            }
        }
        None
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: Vec<JobState> = {
        let mut v = Vec::new();
        for id in &job_ids {
            v.push(client.job(id).await.unwrap().status);
        }
        v
    };
    drop(first); // SIGKILL, then reaped.
    assert!(
        before.iter().any(|s| !s.is_terminal()),
        "the kill must land with work in flight: {before:?}"
    );

    let _second = spawn_coordinator(&env, &log);
    // A new client: the old one's pooled connections died with the first process.
    let client = ApiClient::new(
        &format!("https://localhost:{}", api.port()),
        &token,
        Some(&ca),
    )
    .unwrap();
    let mut statuses = Vec::new();
    for id in &job_ids {
        let status = client
            .wait_job(
                id,
                Duration::from_millis(200),
                Duration::from_secs(240),
                |_| {},
            )
            .await
            .unwrap();
        assert!(finished_clearly(&status), "{status:?}");
        statuses.push(status);
    }
    println!("states at the kill: {before:?}");
    for s in &statuses {
        println!(
            "after restart: {} {} attempts={} path={:?} error={:?}",
            s.job_id,
            s.status,
            s.attempts,
            s.result.as_ref().and_then(|r| match r {
                JobResult::Clone(r) => Some(r.path),
                _ => None,
            }),
            s.error
        );
    }
    let completed: Vec<&JobStatus> = statuses
        .iter()
        .filter(|s| s.status == JobState::Completed)
        .collect();
    assert!(!completed.is_empty(), "{statuses:?}");
    // Completed clones serve WordPress, each from its own pod.
    let mut pods = HashSet::new();
    for status in completed {
        let result = clone_result(status);
        let info = client.clone_info(&result.clone_id).await.unwrap();
        assert!(
            pods.insert(info.pod_id.clone().unwrap()),
            "pod reused: {info:?}"
        );
        let page = edge_client(&result.clone_id, edge)
            .get(&result.clone_url)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200, "{}", result.clone_url);
    }
    // The agent holds no pod for a clone the coordinator does not consider live.
    let live: HashSet<String> = client
        .clones(false)
        .await
        .unwrap()
        .clones
        .into_iter()
        .map(|c| c.clone_id)
        .collect();
    eventually("stray claims released", Duration::from_secs(60), || async {
        let stray: Vec<_> = agent
            .pool
            .pods()
            .unwrap()
            .into_iter()
            .filter(|p| {
                matches!(p.state, PodState::Assigned | PodState::Ready)
                    && p.clone_id
                        .as_ref()
                        .is_some_and(|c| !live.contains(c.as_str()))
            })
            .collect();
        stray.is_empty().then_some(())
    })
    .await;
    agent.shutdown(Duration::from_secs(20)).await;
}
