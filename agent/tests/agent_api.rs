//! The agent's HTTP API, admin port, debug socket and clonepoolctl, against an in-process agent
//! over FakeRuntime.

mod agent_support;

use agent_support::*;
use clonepool_agent::ctl::protocol::{call, CtlClientError, CtlRequest, NodeStatus};
use clonepool_agent::runtime::FakeRuntime;
use clonepool_common::agent_api::{Capacity, ClaimResponse, PodSummary, ReleaseResponse};
use clonepool_common::error::ErrorBody;
use clonepool_common::pod::PodState;
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
