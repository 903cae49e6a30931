//! The agent's HTTP API, admin port, debug socket and clonepoolctl, against an in-process agent
//! over FakeRuntime.

mod agent_support;

use agent_support::*;
use clonepool_agent::ctl::protocol::{call, CtlClientError, CtlRequest, NodeStatus};
use clonepool_agent::runtime::FakeRuntime;
use clonepool_common::agent_api::{Capacity, ClaimResponse, PodSummary, ReleaseResponse};
use clonepool_common::error::ErrorBody;
use clonepool_common::pod::PodState;
use clonepool_e2e::procs::free_port;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn setup() -> (tempfile::TempDir, FakeRuntime) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    emulate_image(&fake, Arc::new(PodWorld::default()));
    (dir, fake)
}

async fn error_of(resp: reqwest::Response) -> (u16, ErrorBody) {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    let parsed = serde_json::from_str::<ErrorBody>(&body)
        .unwrap_or_else(|e| panic!("error body is not ErrorBody JSON ({e}): {body}"));
    (status, parsed)
}

#[tokio::test]
async fn the_api_needs_the_bearer_token_and_answers_errors_as_json() {
    let (dir, fake) = setup();
    let agent = start_agent(&fake, dir.path(), &[]).await;
    let base = format!("http://{}", agent.api_addr);
    let http = reqwest::Client::new();

    let (status, body) = error_of(
        http.get(format!("{base}/v1/capacity"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.error.code.as_str()), (401, "unauthorized"));
    let (status, body) = error_of(
        http.get(format!("{base}/v1/capacity"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.error.code.as_str()), (401, "unauthorized"));

    let token = agent.token.expose().to_string();
    let (status, body) = error_of(
        http.get(format!("{base}/v1/pods/cp-doesnotexist"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.error.code.as_str()), (404, "not_found"));
    assert!(body.error.message.contains("cp-doesnotexist"));
    let (status, _) = error_of(
        http.get(format!("{base}/v1/pods/NOT..valid"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) = error_of(
        http.post(format!("{base}/v1/claim"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body("{\"clone_id\": 5}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.error.code.as_str()), (400, "bad_request"));
    let (status, body) = error_of(
        http.post(format!("{base}/v1/release"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"clone_id": "nobody"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.error.code.as_str()), (404, "not_found"));
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn claim_release_capacity_and_pods_over_http() {
    let (dir, fake) = setup();
    let agent = start_agent(
        &fake,
        dir.path(),
        &["--warm-target", "1", "--max-pods", "1"],
    )
    .await;
    wait_for("1 WARM pod", WAIT, || warm_count(&agent) == 1).await;
    let base = format!("http://{}", agent.api_addr);
    let http = reqwest::Client::new();
    let token = agent.token.expose().to_string();

    let cap: Capacity = http
        .get(format!("{base}/v1/capacity"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((cap.node.as_str(), cap.warm, cap.max), (NODE, 1, 1));

    let claim =
        serde_json::json!({"clone_id": "api-clone", "clone_host": "api-clone.localhost:8080"});
    let resp = http
        .post(format!("{base}/v1/claim"))
        .bearer_auth(&token)
        .json(&claim)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let claimed: ClaimResponse = resp.json().await.unwrap();
    assert_eq!(claimed.clone_id.as_str(), "api-clone");

    // No WARM pod left and no room: a distinct code the coordinator can act on.
    let other = serde_json::json!({"clone_id": "other", "clone_host": "other.localhost"});
    let (status, body) = error_of(
        http.post(format!("{base}/v1/claim"))
            .bearer_auth(&token)
            .json(&other)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.error.code.as_str()), (503, "no_warm_pod"));
    let cold = serde_json::json!({"clone_id": "other", "clone_host": "other.localhost", "allow_cold": true});
    let (status, body) = error_of(
        http.post(format!("{base}/v1/claim"))
            .bearer_auth(&token)
            .json(&cold)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.error.code.as_str()), (503, "no_capacity"));

    let pods: Vec<PodSummary> = http
        .get(format!("{base}/v1/pods"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pods.len(), 1);
    let one: PodSummary = http
        .get(format!("{base}/v1/pods/{}", claimed.pod_id))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one.state, PodState::Assigned);

    let ready = http
        .post(format!("{base}/v1/ready"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"clone_id": "api-clone"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let resp = http
        .post(format!("{base}/v1/release"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"clone_id": "api-clone"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let released: ReleaseResponse = resp.json().await.unwrap();
    assert_eq!(released.state, PodState::Resetting);
    wait_for("WARM again", WAIT, || warm_count(&agent) == 1).await;
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn readyz_follows_the_runtime_and_metrics_show_pods_by_state() {
    let (dir, fake) = setup();
    let agent = start_agent(&fake, dir.path(), &[]).await;
    wait_for("2 WARM pods", WAIT, || warm_count(&agent) == 2).await;
    let admin = format!("http://{}", agent.admin_addr);
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{admin}/livez"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{admin}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    fake.set_reachable(false);
    assert_eq!(
        http.get(format!("{admin}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        http.get(format!("{admin}/livez"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    fake.set_reachable(true);
    assert_eq!(
        http.get(format!("{admin}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let text = http
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("clonepool_agent_pods{state=\"warm\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("clonepool_agent_runtime_errors_total"),
        "{text}"
    );
    assert!(
        text.contains("clonepool_agent_reset_duration_seconds"),
        "{text}"
    );
    assert!(
        text.contains("clonepool_agent_claim_latency_seconds"),
        "{text}"
    );
    for pod in fake.pod_ids() {
        assert!(!text.contains(pod.as_str()), "no per-pod labels");
    }
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_token_is_generated_private_and_reused() {
    let (dir, fake) = setup();
    let agent = start_agent(&fake, dir.path(), &["--warm-target", "0"]).await;
    let token = agent.token.clone();
    agent.shutdown(Duration::from_secs(5)).await;
    let file = dir.path().join("token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        token.expose()
    );
    let agent = start_agent(&fake, dir.path(), &["--warm-target", "0"]).await;
    assert_eq!(agent.token, token);
    assert!(!format!("{:?}", agent.token).contains(token.expose()));
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_debug_socket_is_private_and_answers_every_node_command() {
    let (dir, fake) = setup();
    let agent = start_agent(&fake, dir.path(), &[]).await;
    wait_for("2 WARM pods", WAIT, || warm_count(&agent) == 2).await;
    let sock = dir.path().join("ctl.sock");
    assert_eq!(agent.socket_path, sock);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    let s = sock.clone();
    let status = tokio::task::spawn_blocking(move || call(&s, &CtlRequest::Status))
        .await
        .unwrap()
        .unwrap();
    let status: NodeStatus = serde_json::from_value(status).unwrap();
    assert_eq!(status.node, NODE);
    assert_eq!(status.capacity.warm, 2);
    assert!(status.runtime_reachable);

    let pod = agent.pool.pods().unwrap()[0].pod_id.clone();
    let s = sock.clone();
    let p = pod.clone();
    let reset = tokio::task::spawn_blocking(move || {
        call(
            &s,
            &CtlRequest::Reset {
                pod_id: p,
                force: false,
            },
        )
    })
    .await
    .unwrap()
    .unwrap();
    let reset: PodSummary = serde_json::from_value(reset).unwrap();
    assert_eq!(reset.state, PodState::Resetting);
    wait_for("reset pod WARM", WAIT, || {
        agent
            .pool
            .pod(&pod)
            .is_ok_and(|p| p.state == PodState::Warm)
    })
    .await;

    let s = sock.clone();
    let err = tokio::task::spawn_blocking(move || {
        call(
            &s,
            &CtlRequest::Pod {
                pod_id: "cp-nope".parse().unwrap(),
            },
        )
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(&err, CtlClientError::Agent(d) if d.code == "not_found"),
        "{err}"
    );

    // The CLI itself: tables by default, JSON with --json, exit 1 with a message on errors.
    let ctl = env!("CARGO_BIN_EXE_clonepoolctl");
    let data_dir = dir.path().to_str().unwrap().to_string();
    let run = move |args: Vec<String>| {
        std::process::Command::new(ctl)
            .args(args)
            .env("CLONEPOOL_DATA_DIR", &data_dir)
            .output()
            .unwrap()
    };
    let r = run.clone();
    let out = tokio::task::spawn_blocking(move || r(vec!["pods".into()]))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with("POD") && text.contains("WARM") && text.contains(pod.as_str()),
        "{text}"
    );
    let r = run.clone();
    let out = tokio::task::spawn_blocking(move || r(vec!["events".into(), "--json".into()]))
        .await
        .unwrap();
    let events: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "warm"));
    let r = run.clone();
    let out = tokio::task::spawn_blocking(move || r(vec!["status".into()]))
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("warm 2"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r = run.clone();
    let out = tokio::task::spawn_blocking(move || r(vec!["pod".into(), "cp-nope".into()]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));
    let r = run.clone();
    let out = tokio::task::spawn_blocking(move || r(vec!["drain".into()]))
        .await
        .unwrap();
    assert!(out.status.success());
    assert!(agent.pool.is_draining());

    agent.shutdown(Duration::from_secs(5)).await;
    assert!(!sock.exists(), "the socket is removed on shutdown");
    // With no agent, the CLI says where it looked.
    let out = tokio::task::spawn_blocking(move || run(vec!["status".into()]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ctl.sock"));
}

#[tokio::test]
async fn capacity_is_pushed_to_the_coordinator_with_the_agent_token() {
    use axum::routing::post;
    let received: Arc<Mutex<Vec<(String, Capacity)>>> = Arc::default();
    let r = received.clone();
    let app = axum::Router::new().route(
        "/agents/capacity",
        post(
            move |headers: axum::http::HeaderMap, axum::Json(c): axum::Json<Capacity>| {
                let r = r.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    r.lock().unwrap().push((auth, c));
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (dir, fake) = setup();
    let url = format!("http://{addr}/agents/capacity");
    let agent = start_agent(
        &fake,
        dir.path(),
        &["--coordinator-url", &url, "--push-interval-secs", "1"],
    )
    .await;
    wait_for("a capacity push", WAIT, || {
        !received.lock().unwrap().is_empty()
    })
    .await;
    let (auth, cap) = received.lock().unwrap()[0].clone();
    assert_eq!(auth, format!("Bearer {}", agent.token.expose()));
    assert_eq!(cap.node, NODE);
    agent.shutdown(Duration::from_secs(5)).await;
}

/// Kills the agent process if a test fails before it stopped it.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_agent_binary_answers_livez_and_not_readyz_while_docker_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let (api_port, admin_port) = (free_port(), free_port());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_clonepool-agent"))
        .env("CLONEPOOL_DATA_DIR", dir.path())
        .env("CLONEPOOL_NODE", "test-no-docker")
        .env(
            "CLONEPOOL_DOCKER_SOCKET",
            dir.path().join("no-docker-here.sock"),
        )
        .env("CLONEPOOL_API_LISTEN", format!("127.0.0.1:{api_port}"))
        .env("CLONEPOOL_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
        .env("CLONEPOOL_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("clonepool-agent starts");
    let mut child = ChildGuard(child);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let admin = format!("http://127.0.0.1:{admin_port}");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Ok(r) = http.get(format!("{admin}/livez")).send().await {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/livez never answered while Docker was unreachable"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let readyz = http.get(format!("{admin}/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 503);
    // The API answers too: claims get 503 unavailable, capacity says the engine is unreachable.
    let token = std::fs::read_to_string(dir.path().join("token")).unwrap();
    let api = format!("http://127.0.0.1:{api_port}");
    let (status, body) = error_of(
        http.post(format!("{api}/v1/claim"))
            .bearer_auth(token.trim())
            .json(&serde_json::json!({"clone_id": "early", "clone_host": "early.localhost"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.error.code.as_str()), (503, "unavailable"));
    let cap: Capacity = http
        .get(format!("{api}/v1/capacity"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!cap.runtime_reachable, "{cap:?}");
    // SIGTERM still ends it cleanly.
    let pid = child.0.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || {
        let status = child.0.wait().unwrap();
        (status, child)
    })
    .await
    .unwrap()
    .0;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn the_claims_help_text_lists_every_result_the_agent_counts() {
    let (dir, fake) = setup();
    let agent = start_agent(&fake, dir.path(), &["--warm-target", "0"]).await;
    let text = reqwest::get(format!("http://{}/metrics", agent.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let help = text
        .lines()
        .find(|l| l.starts_with("# HELP clonepool_agent_claims "))
        .unwrap_or_else(|| panic!("no HELP line for claims: {text}"));
    for result in clonepool_agent::metrics::CLAIM_RESULTS {
        assert!(help.contains(result), "{result} missing from {help}");
        // Every result has a series from the start (zeros, not gaps).
        assert!(
            text.contains(&format!(
                "clonepool_agent_claims_total{{result=\"{result}\"}} 0"
            )),
            "{result}: {text}"
        );
    }
    for result in [
        "warm",
        "cold",
        "repeat",
        "no_warm_pod",
        "no_capacity",
        "draining",
        "unavailable",
        "failed",
    ] {
        assert!(help.contains(result), "{result} missing from {help}");
    }
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_debug_socket_force_reset_removes_a_lost_pod_and_its_release_answers_not_found() {
    use clonepool_common::pod::ContainerRole;
    let (dir, fake) = setup();
    let agent = start_agent(
        &fake,
        dir.path(),
        &["--warm-target", "1", "--max-pods", "2"],
    )
    .await;
    wait_for("1 WARM pod", WAIT, || warm_count(&agent) == 1).await;
    let base = format!("http://{}", agent.api_addr);
    let http = reqwest::Client::new();
    let token = agent.token.expose().to_string();
    let claimed: ClaimResponse = http
        .post(format!("{base}/v1/claim"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"clone_id": "lostone", "clone_host": "lostone.localhost"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(fake.kill_container(&claimed.pod_id, ContainerRole::Web, 137));
    wait_for("the pod lost", WAIT, || {
        agent
            .pool
            .pod(&claimed.pod_id)
            .is_ok_and(|p| p.state == PodState::Quarantined)
    })
    .await;

    // clonepoolctl reset --force, as the CLI runs it.
    let ctl = env!("CARGO_BIN_EXE_clonepoolctl");
    let data_dir = dir.path().to_path_buf();
    let pod = claimed.pod_id.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(ctl)
            .args(["reset", "--force", &pod])
            .env("CLONEPOOL_DATA_DIR", &data_dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("removed"), "{text}");
    wait_for("the lost pod gone", WAIT, || {
        agent.pool.pod(&claimed.pod_id).is_err() && !fake.pod_ids().contains(&claimed.pod_id)
    })
    .await;
    let (status, body) = error_of(
        http.post(format!("{base}/v1/release"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"clone_id": "lostone"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.error.code.as_str()), (404, "not_found"));
    agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_agent_whose_runtime_connects_late_answers_livez_at_once_and_becomes_ready_when_connected(
) {
    use clonepool_agent::connecting_runtime::ConnectingRuntime;
    use clonepool_agent::runtime::{ContainerRuntime, RuntimeError};
    use std::sync::atomic::{AtomicBool, Ordering};
    let (dir, fake) = setup();
    let up = Arc::new(AtomicBool::new(false));
    let (f, u) = (fake.clone(), up.clone());
    let runtime = ConnectingRuntime::new(Box::new(move || {
        let (f, u) = (f.clone(), u.clone());
        Box::pin(async move {
            if u.load(Ordering::SeqCst) {
                Ok(Arc::new(f) as Arc<dyn ContainerRuntime>)
            } else {
                Err(RuntimeError::Unreachable(
                    "connection refused (test)".into(),
                ))
            }
        })
    }));
    let agent = clonepool_agent::app::start(
        config(dir.path(), &[]),
        Arc::new(runtime),
        Arc::new(StubProbe::default()),
    )
    .await
    .expect("the agent starts without its runtime");
    let http = reqwest::Client::new();
    let admin = format!("http://{}", agent.admin_addr);
    let base = format!("http://{}", agent.api_addr);
    let token = agent.token.expose().to_string();
    let get = |path: &str| http.get(format!("{admin}{path}")).send();
    assert_eq!(get("/livez").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 503);
    let claim = serde_json::json!({"clone_id": "late", "clone_host": "late.localhost"});
    let (status, body) = error_of(
        http.post(format!("{base}/v1/claim"))
            .bearer_auth(&token)
            .json(&claim)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.error.code.as_str()), (503, "unavailable"));
    let cap: Capacity = http
        .get(format!("{base}/v1/capacity"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!cap.runtime_reachable);
    assert!(fake.calls().is_empty(), "nothing reached the runtime");

    up.store(true, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + WAIT;
    while get("/readyz").await.unwrap().status() != 200 {
        assert!(std::time::Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for("2 WARM pods", WAIT, || warm_count(&agent) == 2).await;
    let resp = http
        .post(format!("{base}/v1/claim"))
        .bearer_auth(&token)
        .json(&claim)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    agent.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn a_capacity_from_an_agent_without_runtime_reachable_reads_as_reachable() {
    let cap: Capacity = serde_json::from_str(
        r#"{"node":"n","starting":0,"warm":1,"assigned":0,"ready":0,"resetting":0,"quarantined":0,"max":2}"#,
    )
    .unwrap();
    assert!(cap.runtime_reachable);
    assert!(Capacity::default().runtime_reachable);
}
