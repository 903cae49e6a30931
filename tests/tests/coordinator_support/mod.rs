//! Support for the coordinator's end-to-end tests: a real in-process agent over the real Docker
//! Engine (test node name, pods labelled clonepool.test=true and removed at the end), a real
//! in-process coordinator over HTTPS in front of it, API clients that trust its local CA, and
//! polling helpers.
#![allow(dead_code)]

use clap::Parser;
use clonepool_agent::app::{self, RunningAgent};
use clonepool_agent::config::{AgentConfig, RawConfig};
use clonepool_agent::provision::HttpSiteProbe;
use clonepool_agent::runtime::DockerRuntime;
use clonepool_common::agent_api::PodSummary;
use clonepool_common::api::{JobState, JobStatus};
use clonepool_coordinator::client::ApiClient;
use clonepool_coordinator::config::Config;
use clonepool_coordinator::Coordinator;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The workload image under test.
pub fn image() -> String {
    std::env::var("CLONEPOOL_IMAGE").unwrap_or_else(|_| {
        panic!("CLONEPOOL_IMAGE is not set: run these tests through scripts/test (it builds the image and sets it)")
    })
}

/// One Docker test at a time in this binary: pod creation saturates a small machine. (An
/// async mutex: the guard is held across awaits, and each test has its own runtime.)
pub static DOCKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn docker_lock() -> tokio::sync::MutexGuard<'static, ()> {
    DOCKER.lock().await
}

/// A fresh node name starting with `test-` (scripts/cleanup-test-pods knows the prefix).
pub fn test_node(what: &str) -> String {
    let r: u32 = rand::random();
    format!("test-{what}-{r:08x}")
}

/// Removes every container of `node` when created and when dropped.
pub struct PodCleanup {
    pub node: String,
}

impl PodCleanup {
    pub fn new(node: &str) -> Self {
        let guard = PodCleanup {
            node: node.to_string(),
        };
        guard.remove_all();
        guard
    }

    pub fn remove_all(&self) {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=clonepool.node={}", self.node))
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

impl Drop for PodCleanup {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// Starts a real agent in-process over the real Docker Engine.
pub async fn start_agent(data_dir: &Path, node: &str, extra: &[&str]) -> RunningAgent {
    let image = image();
    let dir = data_dir.to_str().unwrap();
    let defaults = [
        ("--node", node),
        ("--data-dir", dir),
        ("--image", image.as_str()),
        ("--api-listen", "127.0.0.1:0"),
        ("--admin-listen", "127.0.0.1:0"),
        ("--reconcile-interval-secs", "2"),
        ("--warm-target", "1"),
        ("--max-pods", "3"),
        ("--pod-label", "clonepool.test=true"),
    ];
    let mut args = vec!["clonepool-agent"];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    let config = AgentConfig::from_raw(RawConfig::try_parse_from(args).unwrap()).unwrap();
    let runtime = DockerRuntime::connect(None)
        .await
        .expect("the Docker Engine answers");
    app::start(config, Arc::new(runtime), Arc::new(HttpSiteProbe::new()))
        .await
        .expect("the agent starts")
}

/// The agent's bearer token file (in its data dir).
pub fn agent_token_file(agent_dir: &Path) -> PathBuf {
    agent_dir.join("token")
}

pub const SOURCE_URL: &str = "https://source.test/";

/// A coordinator configuration for tests: ephemeral ports, fast loops, `source.test`
/// allow-listed, no source import (the clone is the pod's fresh WordPress: these tests measure the
/// pool, routing and the API; `tests/clone_e2e.rs` turns the import on).
pub fn coordinator_config(
    data_dir: &Path,
    agent_url: &str,
    agent_token: &Path,
    token: &str,
) -> Config {
    let mut config = Config::with_data_dir(data_dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.edge_listen = "127.0.0.1:0".parse().unwrap();
    config.agent_urls = vec![agent_url.to_string()];
    config.agent_token_file = agent_token.to_path_buf();
    config.api_tokens_from_env = vec![token.to_string()];
    config.capacity_poll_ms = 200;
    config.agent_stale_ms = 3000;
    config.reaper_interval_ms = 200;
    config.retry_backoff_ms = 500;
    config.url_allow_hosts = vec!["source.test".into()];
    config.source_import = false;
    config
}

/// A real agent and a real coordinator in front of it.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub agent: RunningAgent,
    pub coordinator: Coordinator,
    pub api: ApiClient,
    /// HTTPS client trusting the coordinator's CA (for raw requests).
    pub raw: reqwest::Client,
    pub token: String,
    pub cleanup: PodCleanup,
}

pub fn https_client(ca_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(
            clonepool_coordinator::tls::client_config_trusting(ca_pem).expect("a CA"),
        )
        .pool_max_idle_per_host(200)
        .build()
        .unwrap()
}

pub async fn stack(what: &str, agent_args: &[&str], tune: impl FnOnce(&mut Config)) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let node = test_node(what);
    let cleanup = PodCleanup::new(&node);
    let agent_dir = dir.path().join("agent");
    let agent = start_agent(&agent_dir, &node, agent_args).await;
    let token = format!("e2e-{:016x}", rand::random::<u64>());
    let mut config = coordinator_config(
        &dir.path().join("coordinator"),
        &format!("http://{}", agent.api_addr),
        &agent_token_file(&agent_dir),
        &token,
    );
    tune(&mut config);
    let coordinator = clonepool_coordinator::start(config)
        .await
        .expect("the coordinator starts");
    let ca = std::fs::read(coordinator.tls.ca.as_ref().unwrap()).unwrap();
    let api = ApiClient::new(&coordinator.api_url(), &token, Some(&ca)).unwrap();
    Stack {
        raw: https_client(&ca),
        dir,
        agent,
        coordinator,
        api,
        token,
        cleanup,
    }
}

impl Stack {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.coordinator.api_url(), path)
    }

    /// Waits until the pool reports at least `n` WARM pods.
    pub async fn wait_warm(&self, n: u32, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let pool = self.api.pool().await.unwrap();
            if pool.warm_total >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the pool never had {n} warm pods: {pool:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn wait_job(&self, job_id: &str, timeout: Duration) -> JobStatus {
        self.api
            .wait_job(job_id, Duration::from_millis(50), timeout, |_| {})
            .await
            .unwrap()
    }

    /// A plain-HTTP client that sends `{clone}.localhost` to the edge proxy.
    pub fn edge_client(&self, clone_id: &str) -> reqwest::Client {
        edge_client(clone_id, self.coordinator.edge_addr)
    }

    pub fn agent_pods(&self) -> Vec<PodSummary> {
        self.agent.pool.pods().expect("the agent lists its pods")
    }

    pub async fn shutdown(self) {
        self.coordinator.shutdown().await;
        self.agent.shutdown(Duration::from_secs(20)).await;
        drop(self.cleanup);
    }
}

/// A client for `http://{clone}.localhost:{port}` that reaches `edge` with that Host.
pub fn edge_client(clone_id: &str, edge: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .resolve(&format!("{clone_id}.localhost"), edge)
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// True when a job status is final and, if failed, says why.
pub fn finished_clearly(status: &JobStatus) -> bool {
    match status.status {
        JobState::Completed => status.result.is_some(),
        JobState::Failed | JobState::Cancelled => status
            .error
            .as_deref()
            .is_some_and(|e| !e.trim().is_empty()),
        _ => false,
    }
}

/// Nearest-rank quantile (0..=1) of samples.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}
