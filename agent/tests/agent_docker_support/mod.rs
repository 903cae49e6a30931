//! Support for the agent's tests against a real Docker Engine and the workload image: the image
//! reference (CLONEPOOL_IMAGE), unique test node names, a guard that removes every container of
//! the test's node at the end (even on failure), and `docker exec` helpers.
#![allow(dead_code)]

use clap::Parser;
use clonepool_agent::app::{self, RunningAgent};
use clonepool_agent::config::{AgentConfig, RawConfig};
use clonepool_agent::provision::HttpSiteProbe;
use clonepool_agent::runtime::docker::container_name;
use clonepool_agent::runtime::DockerRuntime;
use clonepool_common::ids::PodId;
use clonepool_common::pod::ContainerRole;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const IGNORE_REASON: &str = "needs Docker and the workload image: run scripts/test";

/// The workload image under test.
pub fn image() -> String {
    std::env::var("CLONEPOOL_IMAGE").unwrap_or_else(|_| {
        panic!("CLONEPOOL_IMAGE is not set: run these tests through scripts/test (it builds the image and sets it)")
    })
}

/// A fresh node name starting with `test-` (scripts/cleanup-test-pods knows the prefix).
pub fn test_node(what: &str) -> String {
    let r: u32 = rand::random();
    format!("test-{what}-{r:08x}")
}

/// Removes every container of `node` when dropped.
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
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=clonepool.node={}", self.node))
            .output();
        if let Ok(out) = ids {
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

/// Container ids of `node`'s pod containers (running or not).
pub fn containers_of_node(node: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=clonepool.node={node}"))
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The pod ids `node` has in Docker, one entry per container.
pub fn pod_labels_of_node(node: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--format",
            "{{.Label \"clonepool.pod\"}}",
            "--filter",
        ])
        .arg(format!("label=clonepool.node={node}"))
        .output()
        .expect("docker ps");
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// Runs `sh -c script` in one container of a pod as root; returns (exit code, stdout).
pub fn sh(pod: &PodId, role: ContainerRole, script: &str) -> (i32, String) {
    let out = Command::new("docker")
        .args(["exec", &container_name(pod, role), "sh", "-c", script])
        .output()
        .expect("docker exec");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Runs SQL as MariaDB's root in the pod's db container; returns the batch output.
pub fn sql(pod: &PodId, query: &str) -> String {
    let out = Command::new("docker")
        .args([
            "exec",
            &container_name(pod, ContainerRole::Db),
            "mariadb",
            "--batch",
            "--skip-column-names",
            "-e",
            query,
        ])
        .output()
        .expect("docker exec mariadb");
    assert!(
        out.status.success(),
        "SQL failed: {query}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn config(data_dir: &Path, node: &str, extra: &[&str]) -> AgentConfig {
    let image = image();
    let dir = data_dir.to_str().unwrap();
    let defaults = [
        ("--node", node),
        ("--data-dir", dir),
        ("--image", image.as_str()),
        ("--api-listen", "127.0.0.1:0"),
        ("--admin-listen", "127.0.0.1:0"),
        ("--reconcile-interval-secs", "2"),
        ("--warm-target", "2"),
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
    AgentConfig::from_raw(RawConfig::try_parse_from(args).unwrap()).unwrap()
}

/// An in-process agent over the real Docker Engine.
pub async fn start_agent(data_dir: &Path, node: &str, extra: &[&str]) -> RunningAgent {
    let runtime = DockerRuntime::connect(None)
        .await
        .expect("Docker Engine reachable");
    app::start(
        config(data_dir, node, extra),
        Arc::new(runtime),
        Arc::new(HttpSiteProbe::new()),
    )
    .await
    .expect("agent starts")
}

/// Polls `cond` until it holds or `timeout` passes (then panics with `what`).
pub async fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut cond: F) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// p-quantile (0..=1) of durations in milliseconds, nearest-rank.
pub fn quantile_ms(samples: &[f64], q: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}
