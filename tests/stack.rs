//! A clonepool system made of real processes on this machine: one `clonepool-agent` over the real
//! Docker Engine and one `clonepool-coordinator` in front of it (HTTPS API, edge proxy), each
//! startable, killable (`kill -9`) and restartable on the same ports and data, with clients for
//! both APIs, pool and job polling that survive restarts, and the coordinator's job table read
//! straight from its SQLite file (to prove that no job was lost or left `running`).

use crate::procs::{free_port, Launcher, Proc, Role};
use clonepool_common::agent_api::{Capacity, PodSummary};
use clonepool_common::api::{CloneRequest, JobState, JobStatus};
use clonepool_coordinator::client::ApiClient;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a [`ProcStack`] is made of.
#[derive(Clone, Debug)]
pub struct StackOptions {
    pub launcher: Launcher,
    /// Data directories, logs and the processes' TMPDIR go under here.
    pub root: PathBuf,
    /// The agent's node name (its pods carry it as the label `clonepool.node`).
    pub node: String,
    pub image: String,
    /// Extra `key=value` labels on every pod container (tests: `clonepool.test=true`).
    pub pod_labels: Vec<String>,
    /// Fast loops for tests (capacity poll 200 ms, reaper 200 ms, retry backoff 500 ms,
    /// reconcile 2 s); `false`: the binaries' defaults.
    pub fast_loops: bool,
}

/// The ports a stack listens on (kept across restarts).
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub agent_api: u16,
    pub agent_admin: u16,
    pub api: u16,
    pub admin: u16,
    pub edge: u16,
}

pub struct ProcStack {
    pub opts: StackOptions,
    pub ports: Ports,
    /// The coordinator's API token.
    pub token: String,
    pub agent: Option<Proc>,
    pub coordinator: Option<Proc>,
    agent_settings: Vec<(String, String)>,
    coordinator_settings: Vec<(String, String)>,
    http: reqwest::Client,
}

fn pairs(settings: &[(&str, &str)]) -> Vec<(String, String)> {
    settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// True when the pool holds exactly `warm` WARM pods and nothing else is going on.
pub fn settled_at(c: &Capacity, warm: u32) -> bool {
    c.warm == warm
        && c.starting == 0
        && c.resetting == 0
        && c.assigned == 0
        && c.ready == 0
        && c.quarantined == 0
        && c.runtime_reachable
}

impl ProcStack {
    pub fn new(opts: StackOptions) -> ProcStack {
        for dir in ["agent", "coordinator", "tmp", "logs"] {
            std::fs::create_dir_all(opts.root.join(dir)).expect("stack directories");
        }
        ProcStack {
            ports: Ports {
                agent_api: free_port(),
                agent_admin: free_port(),
                api: free_port(),
                admin: free_port(),
                edge: free_port(),
            },
            token: format!("stack-{:032x}", rand::random::<u128>()),
            agent: None,
            coordinator: None,
            agent_settings: Vec::new(),
            coordinator_settings: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .no_proxy()
                .build()
                .expect("an HTTP client"),
            opts,
        }
    }

    pub fn agent_dir(&self) -> PathBuf {
        self.opts.root.join("agent")
    }

    pub fn coordinator_dir(&self) -> PathBuf {
        self.opts.root.join("coordinator")
    }

    /// TMPDIR of both processes (a leak check looks here).
    pub fn tmp_dir(&self) -> PathBuf {
        self.opts.root.join("tmp")
    }

    pub fn coordinator_db(&self) -> PathBuf {
        self.coordinator_dir().join("coordinator.sqlite")
    }

    pub fn agent_db(&self) -> PathBuf {
        self.agent_dir().join("agent.sqlite")
    }

    fn log(&self, role: Role) -> PathBuf {
        self.opts
            .root
            .join("logs")
            .join(format!("{}.log", role.as_str()))
    }

    fn agent_env(&self) -> Vec<(String, String)> {
        let mut env = pairs(&[
            (
                "CLONEPOOL_DATA_DIR",
                &self.agent_dir().display().to_string(),
            ),
            ("CLONEPOOL_NODE", &self.opts.node),
            ("CLONEPOOL_IMAGE", &self.opts.image),
            (
                "CLONEPOOL_API_LISTEN",
                &format!("127.0.0.1:{}", self.ports.agent_api),
            ),
            (
                "CLONEPOOL_ADMIN_LISTEN",
                &format!("127.0.0.1:{}", self.ports.agent_admin),
            ),
            ("TMPDIR", &self.tmp_dir().display().to_string()),
        ]);
        if !self.opts.pod_labels.is_empty() {
            env.push((
                "CLONEPOOL_POD_LABELS".into(),
                self.opts.pod_labels.join(","),
            ));
        }
        if self.opts.fast_loops {
            env.push(("CLONEPOOL_RECONCILE_INTERVAL_SECS".into(), "2".into()));
        }
        env.extend(self.agent_settings.iter().cloned());
        env
    }

    fn coordinator_env(&self) -> Vec<(String, String)> {
        let mut env = pairs(&[
            (
                "CLONEPOOL_DATA_DIR",
                &self.coordinator_dir().display().to_string(),
            ),
            ("CLONEPOOL_LISTEN", &format!("127.0.0.1:{}", self.ports.api)),
            (
                "CLONEPOOL_ADMIN_LISTEN",
                &format!("127.0.0.1:{}", self.ports.admin),
            ),
            (
                "CLONEPOOL_EDGE_LISTEN",
                &format!("127.0.0.1:{}", self.ports.edge),
            ),
            (
                "CLONEPOOL_AGENT_URLS",
                &format!("http://127.0.0.1:{}", self.ports.agent_api),
            ),
            (
                "CLONEPOOL_AGENT_TOKEN_FILE",
                &self.agent_dir().join("token").display().to_string(),
            ),
            ("CLONEPOOL_API_TOKEN", &self.token),
            // The stand-in and demo sources listen on loopback.
            ("CLONEPOOL_URL_ALLOW_HOSTS", "127.0.0.1"),
            ("TMPDIR", &self.tmp_dir().display().to_string()),
        ]);
        if self.opts.fast_loops {
            env.extend(pairs(&[
                ("CLONEPOOL_CAPACITY_POLL_MS", "200"),
                ("CLONEPOOL_AGENT_STALE_MS", "3000"),
                ("CLONEPOOL_REAPER_INTERVAL_MS", "200"),
                ("CLONEPOOL_RETRY_BACKOFF_MS", "500"),
            ]));
        }
        env.extend(self.coordinator_settings.iter().cloned());
        env
    }

    /// Starts the agent with `settings` (`CLONEPOOL_*` variables such as
    /// `CLONEPOOL_WARM_TARGET`) on top of the stack's; waits until its ports answer.
    pub async fn start_agent(&mut self, settings: &[(&str, &str)]) {
        self.agent_settings = pairs(settings);
        self.restart_agent().await;
    }

    /// Starts the agent again with the settings of the last [`ProcStack::start_agent`].
    pub async fn restart_agent(&mut self) {
        assert!(
            self.agent.as_mut().is_none_or(|a| !a.running()),
            "the agent still runs"
        );
        let proc = Proc::spawn(
            &self.opts.launcher,
            Role::Agent,
            &self.agent_env(),
            &self.log(Role::Agent),
        );
        self.agent = Some(proc);
        let url = format!("http://127.0.0.1:{}/livez", self.ports.agent_admin);
        let token = self.agent_dir().join("token");
        let http = self.http.clone();
        self.wait_until(
            "the agent answers /livez",
            Duration::from_secs(60),
            Role::Agent,
            || {
                let (url, token, http) = (url.clone(), token.clone(), http.clone());
                async move {
                    token.exists()
                        && http
                            .get(&url)
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success())
                }
            },
        )
        .await;
    }

    /// Starts the coordinator with `settings` on top of the stack's; waits until it is ready.
    pub async fn start_coordinator(&mut self, settings: &[(&str, &str)]) {
        self.coordinator_settings = pairs(settings);
        self.restart_coordinator().await;
    }

    pub async fn restart_coordinator(&mut self) {
        assert!(
            self.coordinator.as_mut().is_none_or(|c| !c.running()),
            "the coordinator still runs"
        );
        let proc = Proc::spawn(
            &self.opts.launcher,
            Role::Coordinator,
            &self.coordinator_env(),
            &self.log(Role::Coordinator),
        );
        self.coordinator = Some(proc);
        let url = format!("http://127.0.0.1:{}/readyz", self.ports.admin);
        let http = self.http.clone();
        self.wait_until(
            "the coordinator answers /readyz",
            Duration::from_secs(60),
            Role::Coordinator,
            || {
                let (url, http) = (url.clone(), http.clone());
                async move {
                    http.get(&url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            },
        )
        .await;
    }

    async fn wait_until<F, Fut>(&mut self, what: &str, timeout: Duration, role: Role, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if f().await {
                return;
            }
            let proc = match role {
                Role::Agent => self.agent.as_mut(),
                Role::Coordinator => self.coordinator.as_mut(),
            }
            .expect("started");
            if !proc.running() || Instant::now() > deadline {
                panic!(
                    "waiting for {what}: {}; its log ends with:\n{}",
                    if proc.running() {
                        "timed out"
                    } else {
                        "the process exited"
                    },
                    proc.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9` of the agent.
    pub fn kill9_agent(&mut self) {
        if let Some(mut p) = self.agent.take() {
            p.kill9();
        }
    }

    /// `kill -9` of the coordinator.
    pub fn kill9_coordinator(&mut self) {
        if let Some(mut p) = self.coordinator.take() {
            p.kill9();
        }
    }

    /// SIGTERM to the agent; true when it exited cleanly within `grace`.
    pub fn stop_agent(&mut self, grace: Duration) -> bool {
        self.agent
            .take()
            .and_then(|mut p| p.terminate(grace))
            .is_some_and(|s| s.success())
    }

    /// SIGTERM to the coordinator; true when it exited cleanly within `grace`.
    pub fn stop_coordinator(&mut self, grace: Duration) -> bool {
        self.coordinator
            .take()
            .and_then(|mut p| p.terminate(grace))
            .is_some_and(|s| s.success())
    }

    pub fn api_url(&self) -> String {
        format!("https://localhost:{}", self.ports.api)
    }

    /// The coordinator's CA certificate (PEM).
    pub fn ca(&self) -> Vec<u8> {
        std::fs::read(self.coordinator_dir().join("ca.pem")).expect("the coordinator's ca.pem")
    }

    /// A fresh API client (new connections: safe across coordinator restarts).
    pub fn api(&self) -> ApiClient {
        ApiClient::new(&self.api_url(), &self.token, Some(&self.ca())).expect("an API client")
    }

    /// A raw HTTPS client trusting the coordinator's CA (one connection pool per client).
    pub fn https_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_preconfigured_tls(
                clonepool_coordinator::tls::client_config_trusting(&self.ca()).expect("a CA"),
            )
            .pool_max_idle_per_host(200)
            .timeout(Duration::from_secs(60))
            .no_proxy()
            .build()
            .expect("an HTTPS client")
    }

    /// A plain-HTTP client that reaches the edge proxy for `http://{clone}.localhost:{edge}`.
    pub fn edge_client(&self, clone_id: &str) -> reqwest::Client {
        reqwest::Client::builder()
            .resolve(
                &format!("{clone_id}.localhost"),
                std::net::SocketAddr::from(([127, 0, 0, 1], self.ports.edge)),
            )
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .no_proxy()
            .build()
            .expect("an edge client")
    }

    fn agent_token(&self) -> String {
        std::fs::read_to_string(self.agent_dir().join("token"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    async fn agent_get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Option<T> {
        let response = self
            .http
            .get(format!("http://127.0.0.1:{}{path}", self.ports.agent_api))
            .bearer_auth(self.agent_token())
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// The agent's capacity (None while it does not answer).
    pub async fn capacity(&self) -> Option<Capacity> {
        self.agent_get("/v1/capacity").await
    }

    /// The agent's pods (None while it does not answer).
    pub async fn pods(&self) -> Option<Vec<PodSummary>> {
        self.agent_get("/v1/pods").await
    }

    /// Polls the agent's capacity until `ok` holds; panics after `timeout` saying `what`, with
    /// the last capacity and pods seen.
    pub async fn wait_capacity(
        &self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&Capacity) -> bool,
    ) -> Capacity {
        let deadline = Instant::now() + timeout;
        loop {
            let capacity = self.capacity().await;
            if let Some(c) = &capacity {
                if ok(c) {
                    return c.clone();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; capacity {capacity:?}, pods {:#?}",
                    self.pods().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the pool holds exactly `warm` WARM pods and nothing else.
    pub async fn wait_settled(&self, warm: u32, timeout: Duration) -> Capacity {
        self.wait_capacity(
            &format!("the pool settled at {warm} WARM pods"),
            timeout,
            |c| settled_at(c, warm),
        )
        .await
    }

    /// Waits until the coordinator reports at least `n` warm pods (its routing view).
    pub async fn wait_coordinator_sees_warm(&self, n: u32, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let api = self.api();
        loop {
            if let Ok(pool) = api.pool().await {
                if pool.warm_total >= n {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the coordinator never saw {n} warm pods"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `POST /api/v2/clone`; answers the job id.
    pub async fn submit(&self, req: &CloneRequest) -> String {
        self.api()
            .clone_site(req, None)
            .await
            .unwrap_or_else(|e| panic!("POST /api/v2/clone: {e}"))
            .job
            .job_id
    }

    /// Polls a job until it is final, riding out coordinator restarts (errors are retried).
    pub async fn wait_job(&self, job_id: &str, timeout: Duration) -> JobStatus {
        let deadline = Instant::now() + timeout;
        let mut api = self.api();
        let mut last: String;
        loop {
            match api.job(job_id).await {
                Ok(status) if status.status.is_terminal() => return status,
                Ok(status) => {
                    last = format!("{} {}% {}", status.status, status.progress, status.message)
                }
                Err(e) => {
                    last = e.to_string();
                    api = self.api();
                }
            }
            assert!(
                Instant::now() < deadline,
                "job {job_id} did not finish within {timeout:?}; last: {last}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every job in the coordinator's database, by state (read from the SQLite file).
    pub fn job_counts(&self) -> BTreeMap<String, i64> {
        job_counts(&self.coordinator_db())
    }
}

impl Drop for ProcStack {
    fn drop(&mut self) {
        // Coordinator first: it would otherwise retry releases against a dead agent.
        self.kill9_coordinator();
        self.kill9_agent();
    }
}

/// Jobs by state in a coordinator database file.
pub fn job_counts(db: &Path) -> BTreeMap<String, i64> {
    let conn = rusqlite::Connection::open(db)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", db.display()));
    conn.busy_timeout(Duration::from_secs(10)).ok();
    let mut stmt = conn
        .prepare("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        .expect("the jobs table");
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .expect("a query over jobs");
    rows.map(|r| r.expect("a row")).collect()
}

/// True when no job is pending or running.
pub fn no_job_unfinished(counts: &BTreeMap<String, i64>) -> bool {
    [JobState::Pending, JobState::Running]
        .iter()
        .all(|s| counts.get(s.as_str()).copied().unwrap_or(0) == 0)
}
