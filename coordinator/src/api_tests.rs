//! Tests of the whole coordinator over real HTTPS, in-process, with fake agents at the
//! [`crate::agent_client::AgentClient`] seam (the end-to-end tests in `tests/` use a real agent
//! and Docker).

use crate::agent_client::fake::FakeAgent;
use crate::agent_client::{AgentClient, AgentToken};
use crate::client::ApiClient;
use crate::config::Config;
use crate::{start_with_agents, Coordinator};
use clonepool_common::api::{ClonePath, CloneRequest, CloneStatus, JobResult, JobState, JobStatus};
use reqwest::StatusCode;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "test-api-token-0123456789";
const AGENT_TOKEN: &str = "test-agent-token";

struct Harness {
    _dir: tempfile::TempDir,
    coordinator: Coordinator,
    api: ApiClient,
    raw: reqwest::Client,
    agent: Arc<FakeAgent>,
}

impl Harness {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.coordinator.api_url(), path)
    }

    async fn wait(&self, job_id: &str) -> JobStatus {
        self.api
            .wait_job(
                job_id,
                Duration::from_millis(20),
                Duration::from_secs(10),
                |_| {},
            )
            .await
            .unwrap()
    }
}

async fn echo_upstream() -> SocketAddr {
    use axum::extract::Request;
    let app = axum::Router::new().fallback(|request: Request| async move {
        let host = request
            .headers()
            .get("host")
            .map(|h| h.to_str().unwrap().to_string())
            .unwrap_or_default();
        format!("pod says hello to {host} at {}", request.uri())
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn harness_with(warm: u32, max: u32, tune: impl FnOnce(&mut Config)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(dir.path().join("coordinator"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.edge_listen = "127.0.0.1:0".parse().unwrap();
    config.api_tokens_from_env = vec![TOKEN.into()];
    config.capacity_poll_ms = 50;
    config.agent_stale_ms = 5000;
    config.retry_backoff_ms = 20;
    config.reaper_interval_ms = 50;
    config.url_allow_hosts = vec!["source.test".into()];
    // These tests are about jobs, routing and the API over fake agents: no source site to copy.
    config.source_import = false;
    tune(&mut config);
    let agent = FakeAgent::new("http://fake-agent", "node-a", warm, max);
    let upstream = echo_upstream().await;
    agent.with(|s| s.endpoint = format!("http://{upstream}"));
    let coordinator = start_with_agents(
        config,
        vec![agent.clone() as Arc<dyn AgentClient>],
        AgentToken::fixed(AGENT_TOKEN),
    )
    .await
    .unwrap();
    let ca = std::fs::read(coordinator.tls.ca.as_ref().unwrap()).unwrap();
    let api = ApiClient::new(&coordinator.api_url(), TOKEN, Some(&ca)).unwrap();
    let raw = reqwest::Client::builder()
        .use_preconfigured_tls(crate::tls::client_config_trusting(&ca).unwrap())
        .build()
        .unwrap();
    Harness {
        _dir: dir,
        coordinator,
        api,
        raw,
        agent,
    }
}

async fn harness(warm: u32, max: u32) -> Harness {
    harness_with(warm, max, |_| {}).await
}

fn clone_request(customer_id: Option<&str>) -> CloneRequest {
    CloneRequest {
        source_url: "https://source.test".into(),
        source_username: "admin".into(),
        source_password: "secret".into(),
        customer_id: customer_id.map(str::to_string),
        ttl_minutes: Some(30),
    }
}

#[tokio::test]
async fn a_clone_completes_warm_serves_through_the_edge_and_delete_returns_its_pod() {
    let h = harness(2, 4).await;
    let accepted = h
        .api
        .clone_site(&clone_request(Some("shop")), None)
        .await
        .unwrap();
    assert_eq!(accepted.job.status, JobState::Pending);
    assert_eq!(
        accepted.job.status_url,
        format!("/api/v2/job-status/{}", accepted.job.job_id)
    );
    let done = h.wait(&accepted.job.job_id).await;
    assert_eq!(done.status, JobState::Completed, "{:?}", done.error);
    assert_eq!(done.progress, 100);
    let Some(JobResult::Clone(result)) = done.result else {
        panic!("no result")
    };
    let edge_port = h.coordinator.edge_port();
    assert_eq!(
        result.clone_url,
        format!("http://shop.localhost:{edge_port}")
    );
    assert_eq!(result.path, ClonePath::Warm);
    assert_eq!(result.node, "node-a");
    assert_eq!(result.username, "admin");
    assert!(!result.password.is_empty());

    // The clone URL reaches the pod with its Host kept.
    let page = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{edge_port}/wp-admin/"))
        .header("host", format!("shop.localhost:{edge_port}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        page,
        format!("pod says hello to shop.localhost:{edge_port} at /wp-admin/")
    );

    let info = h.api.clone_info("shop").await.unwrap();
    assert_eq!(info.status, CloneStatus::Ready);
    assert!(info.pod_id.is_some());
    let list = h.api.clones(false).await.unwrap();
    assert_eq!(list.clones.len(), 1);
    let extended = h.api.extend("shop", 60).await.unwrap();
    assert_eq!(extended.ttl_minutes, 90);

    assert_eq!(h.agent.with(|s| s.warm), 1);
    let deleted = h.api.delete("shop").await.unwrap();
    assert_eq!(deleted.status, CloneStatus::Released);
    assert_eq!(h.agent.with(|s| s.warm), 2, "the pod went back to the pool");
    assert_eq!(h.agent.with(|s| s.release_calls["shop"]), 1);
    let gone = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{edge_port}/"))
        .header("host", format!("shop.localhost:{edge_port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let err = h.api.delete("shop").await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    // The name is free again.
    h.api
        .clone_site(&clone_request(Some("shop")), None)
        .await
        .unwrap();
    h.coordinator.shutdown().await;
}

#[tokio::test]
async fn with_the_pool_exhausted_the_next_clone_goes_cold_and_a_full_node_fails_clearly() {
    let h = harness_with(1, 2, |c| c.job_max_attempts = 2).await;
    let mut paths = Vec::new();
    for name in ["one", "two", "three"] {
        let job = h
            .api
            .clone_site(&clone_request(Some(name)), None)
            .await
            .unwrap();
        let done = h.wait(&job.job.job_id).await;
        paths.push((
            done.status,
            done.result.and_then(|result| match result {
                JobResult::Clone(r) => Some(r.path),
                _ => None,
            }),
            done.error_code,
        ));
    }
    assert_eq!(paths[0], (JobState::Completed, Some(ClonePath::Warm), None));
    assert_eq!(paths[1], (JobState::Completed, Some(ClonePath::Cold), None));
    assert_eq!(paths[2].0, JobState::Failed);
    assert_eq!(paths[2].2.as_deref(), Some("no_capacity"));
    h.coordinator.shutdown().await;
}

#[tokio::test]
async fn ttl_expiry_releases_the_clone_once_and_returns_its_pod() {
    // A TTL minute of 400 ms: a 5-minute clone lives two seconds, long enough that the
    // claimed pod is still out when the test reads the job as completed.
    let h = harness_with(1, 1, |c| c.ttl_minute_ms = 400).await;
    let mut request = clone_request(Some("brief"));
    request.ttl_minutes = Some(5);
    let job = h.api.clone_site(&request, None).await.unwrap();
    assert_eq!(h.wait(&job.job.job_id).await.status, JobState::Completed);
    assert_eq!(h.agent.with(|s| s.warm), 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = h.api.clone_info("brief").await.unwrap();
        if info.status == CloneStatus::Released {
            assert_eq!(info.end_reason.as_deref(), Some("expired"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never expired: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.agent.with(|s| s.release_calls["brief"]), 1);
    assert_eq!(h.agent.with(|s| s.warm), 1);
    h.coordinator.shutdown().await;
}

#[tokio::test]
async fn an_idempotency_key_answers_the_same_job_and_refuses_another_body() {
    let h = harness(2, 2).await;
    let first = h
        .api
        .clone_site(&clone_request(Some("idem")), Some("key-1"))
        .await
        .unwrap();
    assert!(!first.replayed);
    let again = h
        .api
        .clone_site(&clone_request(Some("idem")), Some("key-1"))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.job.job_id, first.job.job_id);
    let err = h
        .api
        .clone_site(&clone_request(Some("other")), Some("key-1"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(422));
    assert_eq!(err.code(), Some("idempotency_key_reused"));
    h.coordinator.shutdown().await;
}

#[tokio::test]
async fn a_live_customer_id_cannot_be_taken_twice() {
    let h = harness(2, 2).await;
    h.api
        .clone_site(&clone_request(Some("dup")), None)
        .await
        .unwrap();
    let err = h
        .api
        .clone_site(&clone_request(Some("dup")), None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(409));
    assert_eq!(err.code(), Some("conflict"));
    h.coordinator.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_answers_429_and_pending_jobs_can_be_cancelled() {
    let h = harness_with(5, 5, |c| {
        c.max_queued_jobs = 2;
        c.max_concurrent_jobs = 1;
    })
    .await;
    // Slow enough that the queue is still full after five requests on a loaded machine.
    h.agent
        .with(|s| s.claim_delay = Some(Duration::from_secs(5)));
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..5 {
        let response = h
            .raw
            .post(h.url("/api/v2/clone"))
            .bearer_auth(TOKEN)
            .json(&clone_request(Some(&format!("q{i}"))))
            .send()
            .await
            .unwrap();
        match response.status() {
            StatusCode::ACCEPTED => accepted.push(
                response.json::<serde_json::Value>().await.unwrap()["job_id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            ),
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(response.headers().contains_key("retry-after"));
                let body: serde_json::Value = response.json().await.unwrap();
                assert_eq!(body["error"]["code"], "queue_full");
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused >= 2, "{refused} refused");
    assert!(accepted.len() >= 2);
    // The last accepted job is still pending behind the slow one: cancel it, twice.
    let last = accepted.last().unwrap();
    let cancelled = h.api.cancel_job(last).await.unwrap();
    assert_eq!(cancelled.status, JobState::Cancelled);
    let again = h
        .raw
        .delete(h.url(&format!("/api/v2/job-status/{last}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
    // The running one cannot be cancelled.
    let running = h.api.job(&accepted[0]).await.unwrap();
    if running.status == JobState::Running {
        assert_eq!(
            h.api.cancel_job(&accepted[0]).await.unwrap_err().status(),
            Some(409)
        );
    }
    h.coordinator.shutdown().await;
}

#[tokio::test]
async fn restores_and_rollbacks_fail_clearly_when_the_coordinator_talks_to_no_sites() {
    let h = harness(1, 1).await;
    let accepted = h
        .api
        .clone_site(&clone_request(Some("shop")), None)
        .await
        .unwrap();
    let done = h.wait(&accepted.job.job_id).await;
    assert_eq!(done.status, JobState::Completed, "{done:?}");
    for (path, body) in [
        (
            "/api/v2/restore",
            json!({"source": {"clone_id": "shop"},
                   "target": {"url": "https://source.test", "username": "a", "password": "q"}}),
        ),
        (
            "/api/v2/rollback",
            json!({"target": {"url": "https://source.test", "username": "a", "password": "q"},
                   "backup_id": "20261125T094617Z-2738fe086624f1cf"}),
        ),
    ] {
        let response = h
            .raw
            .post(h.url(path))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{path}");
        let job_id = response.json::<serde_json::Value>().await.unwrap()["job_id"]
            .as_str()
            .unwrap()
            .to_string();
        let done = h.wait(&job_id).await;
        assert_eq!(done.status, JobState::Failed, "{path}");
        assert_eq!(done.attempts, 1, "not retried");
        assert!(
            done.error.unwrap().contains("talk to WordPress sites"),
            "{path}"
        );
    }
    h.coordinator.shutdown().await;
}

/// (method, path, token, body, expected status, expected error code)
type BadInput = (
    &'static str,
    String,
    Option<&'static str>,
    Option<String>,
    u16,
    &'static str,
);

/// Every bad input gets its documented status and code.
#[tokio::test]
async fn bad_inputs_get_their_documented_errors() {
    let h = harness(1, 1).await;
    let good = serde_json::to_value(clone_request(None)).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut body = good.clone();
        body[key] = value;
        body.to_string()
    };
    let huge = with("source_password", json!("x".repeat(100 * 1024)));
    let restore_to = |url: &str| {
        json!({"source": {"clone_id": "nope"}, "target": {"url": url, "username": "a", "password": "p"}})
            .to_string()
    };
    // (method, path, token, body, status, code)
    let table: Vec<BadInput> = vec![
        ("POST", "/api/v2/clone".into(), None, Some(good.to_string()), 401, "unauthorized"),
        ("POST", "/api/v2/clone".into(), Some("wrong"), Some(good.to_string()), 401, "unauthorized"),
        ("GET", "/api/v2/pool".into(), None, None, 401, "unauthorized"),
        ("GET", "/api/v2/openapi.json".into(), None, None, 401, "unauthorized"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some("{not json".into()), 400, "bad_request"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(String::new()), 400, "bad_request"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some("[1,2]".into()), 400, "bad_request"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("colour", json!("red"))), 400, "bad_request"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("ttl_minutes", json!("ten"))), 400, "bad_request"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("ttl_minutes", json!(-1))), 400, "bad_request"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("ttl_minutes", json!(4))), 400, "bad_request"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("ttl_minutes", json!(1441))), 400, "bad_request"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("customer_id", json!("Bad_Id"))), 400, "bad_request"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("customer_id", json!("a".repeat(41)))), 400, "bad_request"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("customer_id", json!("-x"))), 400, "bad_request"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("source_password", json!(""))), 400, "bad_request"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(huge), 413, "payload_too_large"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("source_url", json!("ftp://source.test/"))), 400, "invalid_url"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("source_url", json!("file:///etc/passwd"))), 400, "invalid_url"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("source_url", json!("https://u:p@source.test/"))), 400, "invalid_url"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("source_url", json!("http://127.0.0.1/"))), 400, "forbidden_url"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("source_url", json!("http://localhost:8080/"))), 400, "forbidden_url"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("source_url", json!("http://169.254.169.254/latest/meta-data/"))), 400, "forbidden_url"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("source_url", json!("http://10.0.0.8/"))), 400, "forbidden_url"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("source_url", json!("http://192.168.1.1/"))), 400, "forbidden_url"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("source_url", json!("http://100.64.0.1/"))), 400, "forbidden_url"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("source_url", json!("http://[::1]/"))), 400, "forbidden_url"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("source_url", json!("http://[::ffff:127.0.0.1]/"))), 400, "forbidden_url"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("source_url", json!("http://[fd00::1]/"))), 400, "forbidden_url"),
        ("POST", "/api/v2/clone".into(), Some(TOKEN), Some(with("source_url", json!("http://0x7f000001/"))), 400, "forbidden_url"),
        ("POST", "/api/v2/restore".into(), Some(TOKEN), Some(restore_to("http://169.254.169.254/")), 400, "forbidden_url"),
        ("POST", "/api/v2/restore".into(), Some(TOKEN), Some(restore_to("https://source.test")), 404, "not_found"),
        ("POST", "/api/v2/restore".into(), Some(TOKEN), Some(json!({"source": {"url": "http://127.0.0.1/", "username": "a", "password": "p"}, "target": {"url": "https://source.test", "username": "a", "password": "p"}}).to_string()), 404, "not_found"),
        ("POST", "/api/v2/restore".into(), Some(TOKEN), Some(json!({"source": {"clone_id": "shop"}, "target": {"url": "https://source.test", "username": "a", "password": "p"}, "database": false, "files": false}).to_string()), 400, "bad_request"),
        ("POST", "/api/v2/restore".into(), Some(TOKEN), Some(json!({"source": {"clone_id": "shop"}, "target": {"url": "https://source.test", "username": "a", "password": "p"}, "tables": ["wp_posts; DROP TABLE x"]}).to_string()), 400, "bad_request"),
        ("POST", "/api/v2/restore".into(), Some(TOKEN), Some(json!({"source": {"clone_id": "shop"}, "target": {"url": "https://source.test", "username": "a", "password": "p"}, "tables": []}).to_string()), 400, "bad_request"),
        ("POST", "/api/v2/rollback".into(), None, Some(json!({"target": {"url": "https://source.test", "username": "a", "password": "p"}, "backup_id": "20261125T094617Z-2738fe086624f1cf"}).to_string()), 401, "unauthorized"),
        ("POST", "/api/v2/rollback".into(), Some(TOKEN), Some(json!({"target": {"url": "https://source.test", "username": "a", "password": "p"}, "backup_id": "../../etc/passwd"}).to_string()), 400, "bad_request"),
        ("POST", "/api/v2/rollback".into(), Some(TOKEN), Some(json!({"target": {"url": "https://source.test", "username": "a", "password": "p"}}).to_string()), 400, "bad_request"),
        ("POST", "/api/v2/rollback".into(), Some(TOKEN), Some(json!({"target": {"url": "http://10.1.1.1/", "username": "a", "password": "p"}, "backup_id": "20261125T094617Z-2738fe086624f1cf"}).to_string()), 400, "forbidden_url"),
        ("POST", "/api/v2/rollback".into(), Some(TOKEN), Some(json!({"target": {"url": "https://source.test", "username": "a", "password": ""}, "backup_id": "20261125T094617Z-2738fe086624f1cf"}).to_string()), 400, "bad_request"),
        ("POST", "/api/v2/restore".into(), Some(TOKEN), Some(json!({"source": {"url": "https://source.test", "username": "a", "password": "p"}, "target": {"url": "http://10.1.1.1/", "username": "a", "password": "p"}}).to_string()), 400, "forbidden_url"),
        ("POST", "/api/v2/restore".into(), Some(TOKEN), Some(json!({"source": {"bogus": 1}, "target": {"url": "https://source.test", "username": "a", "password": "p"}}).to_string()), 400, "bad_request"),
        ("GET", "/api/v2/job-status/NOT-A-JOB".into(), Some(TOKEN), None, 400, "bad_request"),
        ("GET", "/api/v2/job-status/job-%2e%2e%2fetc".into(), Some(TOKEN), None, 400, "bad_request"),
        ("GET", "/api/v2/job-status/job-0123456789abcdef01234567".into(), Some(TOKEN), None, 404, "not_found"),
        ("DELETE", "/api/v2/job-status/job-0123456789abcdef01234567".into(), Some(TOKEN), None, 404, "not_found"),
        ("DELETE", "/api/v2/delete/Bad_Id".into(), Some(TOKEN), None, 400, "bad_request"),
        ("DELETE", "/api/v2/delete/no-such-clone".into(), Some(TOKEN), None, 404, "not_found"),
        ("GET", "/api/v2/clones/no-such-clone".into(), Some(TOKEN), None, 404, "not_found"),
        ("GET", "/api/v2/clones?all=maybe".into(), Some(TOKEN), None, 400, "bad_request"),
        ("POST", "/api/v2/clones/no-such-clone/extend".into(), Some(TOKEN), Some(r#"{"ttl_minutes": 10}"#.into()), 404, "not_found"),
        ("POST", "/api/v2/clones/no-such-clone/extend".into(), Some(TOKEN), Some(r#"{"ttl_minutes": 2}"#.into()), 400, "bad_request"),
        ("POST", "/api/v2/clones/no-such-clone/extend".into(), Some(TOKEN), Some(r#"{"ttl_minutes": 10, "x": 1}"#.into()), 400, "bad_request"),
        ("GET", "/api/v2/nope".into(), Some(TOKEN), None, 404, "not_found"),
        ("GET", "/api/v2/clone".into(), Some(TOKEN), None, 405, "method_not_allowed"),
        ("POST", "/internal/v1/capacity".into(), Some(TOKEN), Some(r#"{"node":"node-a","starting":0,"warm":1,"assigned":0,"ready":0,"resetting":0,"quarantined":0,"max":1}"#.into()), 401, "unauthorized"),
    ];
    for (method, path, token, body, status, code) in table {
        let mut request = h
            .raw
            .request(method.parse().unwrap(), h.url(&path))
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        let got = response.status().as_u16();
        let text = response.text().await.unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        assert_eq!(
            (got, parsed["error"]["code"].as_str().unwrap_or("")),
            (status, code),
            "{method} {path}: {text}"
        );
        assert!(
            !parsed["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{method} {path} has no message"
        );
    }
    // A bad Idempotency-Key is refused too.
    let response = h
        .raw
        .post(h.url("/api/v2/clone"))
        .bearer_auth(TOKEN)
        .header("idempotency-key", "has space")
        .json(&clone_request(None))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // No job was created by any of these.
    assert_eq!(h.api.clones(true).await.unwrap().clones.len(), 0);
    h.coordinator.shutdown().await;
}

#[tokio::test]
async fn agents_can_push_capacity_with_the_agent_token() {
    let h = harness(1, 3).await;
    let push = json!({"node":"node-a","starting":0,"warm":3,"assigned":0,"ready":0,"resetting":0,"quarantined":0,"max":3});
    let response = h
        .raw
        .post(h.url("/internal/v1/capacity"))
        .bearer_auth(AGENT_TOKEN)
        .json(&push)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let unknown = h
        .raw
        .post(h.url("/internal/v1/capacity"))
        .bearer_auth(AGENT_TOKEN)
        .json(&json!({"node":"node-z","starting":0,"warm":3,"assigned":0,"ready":0,"resetting":0,"quarantined":0,"max":3}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    h.coordinator.shutdown().await;
}

#[tokio::test]
async fn the_admin_port_answers_health_readiness_and_metrics() {
    let h = harness(2, 2).await;
    let job = h
        .api
        .clone_site(&clone_request(Some("m")), None)
        .await
        .unwrap();
    h.wait(&job.job.job_id).await;
    let admin = h.coordinator.admin_url();
    let client = reqwest::Client::new();
    for path in ["/healthz", "/livez", "/readyz"] {
        let response = client.get(format!("{admin}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let metrics = client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "clonepool_coordinator_jobs{status=\"completed\"} 1",
        "clonepool_coordinator_job_queue_depth 0",
        "clonepool_coordinator_agents{state=\"up\"} 1",
        "clonepool_coordinator_clone_duration_seconds_count{path=\"warm\"} 1",
    ] {
        assert!(metrics.contains(needle), "missing {needle}:\n{metrics}");
    }
    let pool = h.api.pool().await.unwrap();
    assert_eq!(pool.agents.len(), 1);
    assert!(pool.agents[0].up);
    assert_eq!(pool.agents[0].node.as_deref(), Some("node-a"));
    let doc = h.api.openapi().await.unwrap();
    assert!(doc["paths"]["/api/v2/clone"].is_object());
    h.coordinator.shutdown().await;
}

#[tokio::test]
async fn a_restart_resumes_a_job_left_running() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coordinator");
    // Leave a running job behind, as a killed coordinator would.
    {
        let store = crate::store::Store::open(&{
            std::fs::create_dir_all(&data).unwrap();
            data.join("coordinator.sqlite")
        })
        .unwrap();
        store
            .create_job(crate::store::tests::clone_job("job-left", "left", 1))
            .await
            .unwrap();
        store.start_next_job(1).await.unwrap().unwrap();
    }
    let mut config = Config::with_data_dir(&data);
    config.source_import = false;
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.edge_listen = "127.0.0.1:0".parse().unwrap();
    config.api_tokens_from_env = vec![TOKEN.into()];
    let agent = FakeAgent::new("http://fake-agent", "node-a", 1, 1);
    let coordinator = start_with_agents(
        config,
        vec![agent.clone() as Arc<dyn AgentClient>],
        AgentToken::fixed(AGENT_TOKEN),
    )
    .await
    .unwrap();
    let ca = std::fs::read(coordinator.tls.ca.as_ref().unwrap()).unwrap();
    let api = ApiClient::new(&coordinator.api_url(), TOKEN, Some(&ca)).unwrap();
    let done = api
        .wait_job(
            "job-left",
            Duration::from_millis(20),
            Duration::from_secs(10),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(done.status, JobState::Completed, "{:?}", done.error);
    assert_eq!(done.attempts, 2);
    coordinator.shutdown().await;
}
