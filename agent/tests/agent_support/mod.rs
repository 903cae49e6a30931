//! Test support for the agent's FakeRuntime tests: a small emulation of the workload image's
//! commands (fingerprints reflect planted residue; resets clean it unless told not to), a site
//! probe stand-in, and an in-process agent on random ports with a temp data dir.
#![allow(dead_code)]

use async_trait::async_trait;
use clap::Parser;
use clonepool_agent::app::{self, RunningAgent};
use clonepool_agent::config::{AgentConfig, RawConfig};
use clonepool_agent::provision::SiteProbe;
use clonepool_agent::runtime::fake::FakeFailure;
use clonepool_agent::runtime::{ExecOutput, ExecRequest, FakeRuntime};
use clonepool_common::ids::PodId;
use clonepool_common::pod::ContainerRole;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the emulated pods look like.
#[derive(Default)]
pub struct PodWorld {
    /// Extra lines in each pod's web fingerprint (planted canaries).
    pub residue: Mutex<HashMap<PodId, Vec<String>>>,
    /// When set, resets leave residue in place (a broken reset).
    pub resets_leave_residue: AtomicBool,
    /// When set, every reset command fails.
    pub resets_fail: AtomicBool,
    /// Pods whose MariaDB does not answer queries.
    pub db_down: Mutex<std::collections::HashSet<PodId>>,
    /// When set, the next claim's settings fail to apply.
    pub claims_fail: AtomicBool,
    /// When set, the next claim's settings fail as if the engine had gone away.
    pub claims_unreachable: AtomicBool,
}

impl PodWorld {
    pub fn plant(&self, pod: &PodId, line: &str) {
        self.residue
            .lock()
            .unwrap()
            .entry(pod.clone())
            .or_default()
            .push(line.to_string());
    }
}

fn ok(stdout: &str) -> ExecOutput {
    ExecOutput {
        exit_code: 0,
        stdout: stdout.as_bytes().to_vec(),
        stderr: Vec::new(),
    }
}

fn script_of(req: &ExecRequest) -> String {
    req.cmd.join(" ")
}

/// Installs the emulation into `fake`.
pub fn emulate_image(fake: &FakeRuntime, world: Arc<PodWorld>) {
    fake.set_exec_handler(move |pod, role, req| {
        let script = script_of(req);
        let stdin = req
            .stdin
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        let is_reset = (role == ContainerRole::Web && script.contains("exec clonepool-wp-config") && script.contains("sh -c"))
            || (role == ContainerRole::Db && stdin.contains("DROP DATABASE"));
        if is_reset {
            if world.resets_fail.load(Ordering::SeqCst) {
                return Some(Ok(ExecOutput {
                    exit_code: 1,
                    stdout: Vec::new(),
                    stderr: b"emulated reset failure".to_vec(),
                }));
            }
            if !world.resets_leave_residue.load(Ordering::SeqCst) && role == ContainerRole::Web {
                world.residue.lock().unwrap().remove(pod);
            }
            return Some(Ok(ok("")));
        }
        if req.cmd.iter().any(|a| a == "SELECT 1") && world.db_down.lock().unwrap().contains(pod) {
            return Some(Ok(ExecOutput {
                exit_code: 1,
                stdout: Vec::new(),
                stderr: b"ERROR 2002 (HY000): Can't connect to local server (emulated)".to_vec(),
            }));
        }
        if stdin.contains("SELECT ROW_COUNT()")
            && world.claims_unreachable.swap(false, Ordering::SeqCst)
        {
            return Some(Err(FakeFailure::Unreachable));
        }
        if stdin.contains("SELECT ROW_COUNT()") && world.claims_fail.swap(false, Ordering::SeqCst) {
            return Some(Ok(ExecOutput {
                exit_code: 1,
                stdout: Vec::new(),
                stderr: b"ERROR 1146 (42S02): Table 'wordpress.wp_options' doesn't exist (emulated)".to_vec(),
            }));
        }
        if stdin.contains("clonepool_magic_login") {
            // An import's clone settings: the first administrator's login name.
            return Some(Ok(ok("siteadmin\n")));
        }
        if stdin.contains("SELECT ROW_COUNT()") {
            // The claim's SQL: one admin user updated.
            return Some(Ok(ok("1\n")));
        }
        if script.contains("list_strays db-processes") {
            return Some(Ok(ok(
                "@@databases\nmysql\nwordpress\n@@db-users\nroot@localhost role=N\nwordpress@127.0.0.1 role=N\n@@db-processes\nmariadbd\n",
            )));
        }
        if script.contains("list_strays web-processes") {
            let mut out = String::from("@@web-processes\n@@wp-content-tree\nf 644 33:33 ./index.php\n@@web-files\n");
            if let Some(lines) = world.residue.lock().unwrap().get(pod) {
                for l in lines {
                    out.push_str(l);
                    out.push('\n');
                }
            }
            return Some(Ok(ok(&out)));
        }
        None
    });
}

/// A site probe that answers for every endpoint unless told otherwise.
#[derive(Default)]
pub struct StubProbe {
    pub down: AtomicBool,
}

#[async_trait]
impl SiteProbe for StubProbe {
    async fn check(&self, endpoint: &str) -> Result<(), String> {
        if self.down.load(Ordering::SeqCst) {
            Err(format!("GET {endpoint}/: connection refused (stub)"))
        } else {
            Ok(())
        }
    }
}

/// A site probe that holds every check while its gate is closed, and records how many checks
/// ran at the same time (a stand-in for "pods being created at once").
#[derive(Default)]
pub struct GatedProbe {
    pub closed: AtomicBool,
    pub active: std::sync::atomic::AtomicUsize,
    pub max_active: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl SiteProbe for GatedProbe {
    async fn check(&self, _endpoint: &str) -> Result<(), String> {
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_active.fetch_max(now, Ordering::SeqCst);
        while self.closed.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.active.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A node name for tests (the cleanup script removes `test-*` nodes' containers).
pub const NODE: &str = "test-fake-node";

pub fn config(data_dir: &Path, extra: &[&str]) -> AgentConfig {
    let dir = data_dir.to_str().unwrap();
    let defaults = [
        ("--node", NODE),
        ("--data-dir", dir),
        ("--image", "clonepool/wordpress:test"),
        ("--api-listen", "127.0.0.1:0"),
        ("--admin-listen", "127.0.0.1:0"),
        ("--reconcile-interval-secs", "1"),
        ("--warm-target", "2"),
        ("--max-pods", "4"),
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

/// An agent over `fake` in `data_dir`.
pub async fn start_agent(fake: &FakeRuntime, data_dir: &Path, extra: &[&str]) -> RunningAgent {
    app::start(
        config(data_dir, extra),
        Arc::new(fake.clone()),
        Arc::new(StubProbe::default()),
    )
    .await
    .expect("agent starts")
}

/// An agent over `fake` in `data_dir`, probing WordPress with `probe`.
pub async fn start_agent_with_probe(
    fake: &FakeRuntime,
    data_dir: &Path,
    extra: &[&str],
    probe: Arc<dyn SiteProbe>,
) -> RunningAgent {
    app::start(config(data_dir, extra), Arc::new(fake.clone()), probe)
        .await
        .expect("agent starts")
}

/// The agent's /metrics text.
pub async fn metrics_text(agent: &RunningAgent) -> String {
    reqwest::get(format!("http://{}/metrics", agent.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Polls `cond` until it holds or `timeout` passes (then panics with `what`).
pub async fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut cond: F) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Counts of WARM and all pods as the agent sees them.
pub fn warm_count(agent: &RunningAgent) -> u32 {
    agent.pool.capacity().unwrap().warm
}
