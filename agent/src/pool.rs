//! `WarmPool`: the pool manager. It keeps `warm_target` pods WARM on top of the assigned and
//! serving ones (within `max_pods`), adopts what it finds at start, claims and releases pods for
//! clones, runs resets and quarantines, reacts to dead containers, and drains on shutdown.
//!
//! Every state change goes through the [`Store`] first (one transaction each); operations on a
//! pod hold it in the *busy* set so the reconcile loop and the event watcher leave it alone.

use crate::config::ResetMethod;
use crate::fingerprint::Fingerprint;
use crate::metrics::AgentMetrics;
use crate::pod_commands::{PodCommands, ADMIN_USER};
use crate::provision::{new_pod_id, Provisioner};
use crate::reset::{ResetOutcome, Resetter};
use crate::runtime::{ContainerRuntime, PodInfo, RuntimeError, RuntimeEvent, RuntimeEventKind};
use crate::secrets::{Secret, PASSWORD_LEN};
use crate::store::{Assignment, ClaimOutcome, Event, PodRecord, Store, StoreError};
use clonepool_common::agent_api::{
    Capacity, ClaimPath, ClaimRequest, ClaimResponse, CloneScheme, PodCredentials, PodSummary,
    ReleaseResponse,
};
use clonepool_common::ids::{CloneId, NodeName, PodId};
use clonepool_common::pod::{ContainerRole, PodState};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// Resets of one pod tried before it is quarantined.
pub const MAX_RESET_ATTEMPTS: u32 = 3;

/// Meta key of the persisted drain flag.
const META_DRAINING: &str = "draining";

/// What the pool needs to know from the configuration.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub node: NodeName,
    pub warm_target: u32,
    pub max_pods: u32,
    pub create_parallelism: u32,
    pub reconcile_interval: Duration,
    /// How long a lost pod stays (visible to its clone) before it is removed unreleased.
    pub lost_pod_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("container runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("no WARM pod is free on node {0}")]
    NoWarmPod(NodeName),
    #[error("node {node} is at its limit of {max} pods")]
    NoCapacity { node: NodeName, max: u32 },
    #[error("node {0} is draining and takes no claims")]
    Draining(NodeName),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
}

/// Counts operations in flight so shutdown can wait for them.
#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

struct InFlightGuard(Arc<Inner>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.inflight.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.inflight.idle.notify_waiters();
        }
    }
}

/// Marks a pod busy until dropped.
struct BusyGuard {
    inner: Arc<Inner>,
    pod: PodId,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut busy = self.inner.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = busy.get_mut(&self.pod) {
            *n -= 1;
            if *n == 0 {
                busy.remove(&self.pod);
            }
        }
    }
}

struct Inner {
    cfg: PoolConfig,
    store: Arc<Store>,
    runtime: Arc<dyn ContainerRuntime>,
    commands: PodCommands,
    provisioner: Provisioner,
    resetter: Resetter,
    metrics: AgentMetrics,
    /// Pods an operation works on, with how many hold them.
    busy: Mutex<HashMap<PodId, u32>>,
    create_slots: Arc<Semaphore>,
    /// Cold claims waiting for a creation slot; pool creations let them go first.
    cold_waiting: AtomicUsize,
    cold_done: Notify,
    clone_locks: Mutex<HashMap<CloneId, Arc<tokio::sync::Mutex<()>>>>,
    draining: AtomicBool,
    stopping: AtomicBool,
    /// The first reconcile pass (adoption) and the check of adopted WARM pods are done.
    loaded: AtomicBool,
    /// The runtime answered the last time anyone asked (cached for claims and capacity;
    /// maintained by the reconcile loop, the event watcher, `/readyz` and failed calls).
    runtime_ok: AtomicBool,
    kick: Notify,
    /// The WordPress version of the image's core, read from the first pod claimed.
    wordpress_version: std::sync::OnceLock<String>,
    inflight: InFlight,
    cancel: CancellationToken,
}

/// The pool manager of one node. Cheap to clone (all clones share one pool).
#[derive(Clone)]
pub struct WarmPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WarmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPool")
            .field("node", &self.inner.cfg.node)
            .finish()
    }
}

/// Whether a clone host name is acceptable: `host[:port]` with lowercase letters, digits, dots
/// and dashes (it ends up in WordPress's siteurl).
pub fn valid_clone_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    name_ok && port_ok
}

/// The `result` label of `clonepool_agent_claims_total` for a claim's outcome (one of
/// [`crate::metrics::CLAIM_RESULTS`]).
fn claim_result(result: &Result<(ClaimResponse, bool), PoolError>) -> &'static str {
    match result {
        Ok((_, true)) => "repeat",
        Ok((r, false)) if r.path == ClaimPath::Cold => "cold",
        Ok(_) => "warm",
        Err(PoolError::NoWarmPod(_)) => "no_warm_pod",
        Err(PoolError::NoCapacity { .. }) => "no_capacity",
        Err(PoolError::Draining(_)) => "draining",
        Err(PoolError::Unavailable(_)) | Err(PoolError::Runtime(RuntimeError::Unreachable(_))) => {
            "unavailable"
        }
        Err(_) => "failed",
    }
}

/// Says which of a pod's containers do not run (for reasons and events).
fn describe_down(info: Option<&PodInfo>) -> String {
    let Some(info) = info else {
        return "its containers are gone".into();
    };
    let mut parts = Vec::new();
    for role in [ContainerRole::Db, ContainerRole::Web] {
        match info.container(role) {
            None => parts.push(format!("{role} container is gone")),
            Some(c) if !c.running => parts.push(format!(
                "{role} container is not running (exit {})",
                c.exit_code.map_or("unknown".into(), |e| e.to_string())
            )),
            Some(_) => {}
        }
    }
    if parts.is_empty() {
        "its containers run".into()
    } else {
        parts.join(", ")
    }
}

impl WarmPool {
    pub fn new(
        cfg: PoolConfig,
        store: Arc<Store>,
        provisioner: Provisioner,
        resetter: Resetter,
        metrics: AgentMetrics,
    ) -> Self {
        let commands = provisioner.health.commands.clone();
        let runtime = commands.runtime().clone();
        let draining = matches!(store.meta(META_DRAINING), Ok(Some(v)) if v == "1");
        let parallelism = cfg.create_parallelism.max(1) as usize;
        WarmPool {
            inner: Arc::new(Inner {
                cfg,
                store,
                runtime,
                commands,
                provisioner,
                resetter,
                metrics,
                busy: Mutex::new(HashMap::new()),
                create_slots: Arc::new(Semaphore::new(parallelism)),
                cold_waiting: AtomicUsize::new(0),
                cold_done: Notify::new(),
                clone_locks: Mutex::new(HashMap::new()),
                draining: AtomicBool::new(draining),
                stopping: AtomicBool::new(false),
                loaded: AtomicBool::new(false),
                runtime_ok: AtomicBool::new(false),
                kick: Notify::new(),
                wordpress_version: std::sync::OnceLock::new(),
                inflight: InFlight::default(),
                cancel: CancellationToken::new(),
            }),
        }
    }

    pub fn node(&self) -> &NodeName {
        &self.inner.cfg.node
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    pub fn reset_method(&self) -> ResetMethod {
        self.inner.resetter.method
    }

    /// Adopts what the runtime holds (a reconcile pass, then a health check of the adopted WARM
    /// pods), then starts the reconcile loop and the event watcher. When the runtime does not
    /// answer, returns at once and keeps trying in the background (0.5 s → 5 s); until then
    /// `ready()` is false and claims answer `Unavailable`.
    pub async fn start(&self) {
        match self.initial_load().await {
            Ok(()) => self.spawn_loops(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot adopt the node's pods yet; retrying until the container runtime answers");
                let pool = self.clone();
                tokio::spawn(async move {
                    let mut delay = Duration::from_millis(500);
                    loop {
                        tokio::select! {
                            _ = pool.inner.cancel.cancelled() => return,
                            _ = pool.inner.kick.notified() => {}
                            _ = tokio::time::sleep(delay) => {}
                        }
                        match pool.initial_load().await {
                            Ok(()) => break,
                            Err(e) => {
                                tracing::debug!(error = %e, "adoption still waits for the runtime")
                            }
                        }
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                    tracing::info!("pods adopted; the node takes claims");
                    pool.spawn_loops();
                });
            }
        }
    }

    fn spawn_loops(&self) {
        let pool = self.clone();
        tokio::spawn(async move { pool.reconcile_loop().await });
        let pool = self.clone();
        tokio::spawn(async move { pool.watch_loop().await });
    }

    /// The first pass over the runtime; `loaded` once it went through.
    async fn initial_load(&self) -> Result<(), PoolError> {
        if self.inner.stopping.load(Ordering::SeqCst) {
            return Err(PoolError::Unavailable("the agent is stopping".into()));
        }
        self.reconcile_once().await?;
        self.check_adopted_warm_pods().await?;
        self.inner.loaded.store(true, Ordering::SeqCst);
        let image = &self.inner.provisioner.template.image;
        match self.inner.runtime.image_present(image).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(image = %image, "workload image not found; build it with images/wordpress/build")
            }
            Err(e) => tracing::warn!(error = %e, "cannot check the workload image"),
        }
        Ok(())
    }

    /// WARM pods found at start must still be really ready: check them all (in parallel);
    /// one that does not answer is quarantined and replaced — unless the runtime itself stopped
    /// answering meanwhile, then nothing is decided and the error is returned.
    async fn check_adopted_warm_pods(&self) -> Result<(), PoolError> {
        let pods = self.inner.store.list()?;
        let checks = pods
            .into_iter()
            .filter(|p| p.state == PodState::Warm)
            .filter_map(|p| {
                let busy = self.try_busy(&p.id)?;
                let endpoint = p.endpoint.clone()?;
                let health = self.inner.provisioner.health.clone();
                Some(async move {
                    let result = health.check(&p.id, &endpoint).await;
                    (p.id, result, busy)
                })
            });
        let results = futures_util::future::join_all(checks).await;
        if results.iter().any(|(_, r, _)| r.is_err()) {
            if let Err(e) = self.inner.runtime.ping().await {
                self.runtime_error(&e);
                return Err(e.into());
            }
        }
        for (id, result, busy) in results {
            drop(busy);
            if let Err(why) = result {
                let reason = format!("adopted WARM pod does not answer: {why}");
                tracing::warn!(pod = %id, reason, "quarantining");
                if let Ok(Some(_)) =
                    self.inner
                        .store
                        .quarantine(&id, &[PodState::Warm], &reason, false)
                {
                    self.spawn_destroy(id, &reason);
                }
            }
        }
        Ok(())
    }

    /// State loaded and the runtime reachable (asks the runtime, within 2 s).
    pub async fn ready(&self) -> bool {
        let ok = matches!(
            tokio::time::timeout(Duration::from_secs(2), self.inner.runtime.ping()).await,
            Ok(Ok(()))
        );
        self.set_runtime_reachable(ok);
        ok && self.inner.loaded.load(Ordering::SeqCst)
    }

    /// Records whether the runtime answers; logs and reacts on changes.
    fn set_runtime_reachable(&self, ok: bool) {
        let was = self.inner.runtime_ok.swap(ok, Ordering::SeqCst);
        if ok && !was {
            if self.inner.loaded.load(Ordering::SeqCst) {
                tracing::info!("container runtime reachable again");
            }
            // Look at everything again now.
            self.inner.kick.notify_one();
        } else if !ok && was {
            tracing::warn!(
                "container runtime unreachable: claims answer 503 unavailable until it is back"
            );
        }
    }

    /// Counts a runtime error; an unreachable runtime also flips the cached flag.
    fn runtime_error(&self, e: &RuntimeError) {
        self.inner.metrics.runtime_errors.inc();
        if matches!(e, RuntimeError::Unreachable(_)) {
            self.set_runtime_reachable(false);
        }
    }

    /// A claim needs the state loaded and the runtime reachable (the cached flag: no call).
    fn check_available(&self) -> Result<(), PoolError> {
        let node = &self.inner.cfg.node;
        if !self.inner.loaded.load(Ordering::SeqCst) {
            return Err(PoolError::Unavailable(format!(
                "node {node} is starting: the container runtime is unreachable or its pods are not adopted yet"
            )));
        }
        if !self.inner.runtime_ok.load(Ordering::SeqCst) {
            return Err(PoolError::Unavailable(format!(
                "the container runtime of node {node} is unreachable; try another node"
            )));
        }
        Ok(())
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Stops (or resumes) taking claims and creating pods; persisted across restarts.
    pub fn set_draining(&self, draining: bool) -> Result<(), PoolError> {
        self.inner
            .store
            .set_meta(META_DRAINING, if draining { "1" } else { "0" })?;
        self.inner.draining.store(draining, Ordering::SeqCst);
        self.inner.store.add_event(
            None,
            if draining { "drain" } else { "undrain" },
            if draining {
                "node draining: no new claims, no new pods"
            } else {
                "node takes claims again"
            },
        )?;
        self.inner.kick.notify_one();
        Ok(())
    }

    /// Graceful shutdown: no new claims or pods, stop the loops, wait (up to `grace`) for resets
    /// and other operations in flight. Pods stay as they are, to be adopted on the next start.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.draining.store(true, Ordering::SeqCst);
        self.inner.cancel.cancel();
        let deadline = Instant::now() + grace;
        loop {
            let idle = self.inner.inflight.idle.notified();
            let n = self.inner.inflight.count.load(Ordering::SeqCst);
            if n == 0 {
                break;
            }
            tracing::info!(operations = n, "waiting for operations in flight");
            if tokio::time::timeout_at(deadline.into(), idle)
                .await
                .is_err()
            {
                tracing::warn!(
                    operations = self.inner.inflight.count.load(Ordering::SeqCst),
                    "shutdown grace ran out with operations in flight; they resume on restart"
                );
                break;
            }
        }
    }

    // ----- queries -------------------------------------------------------------------------

    pub fn capacity(&self) -> Result<Capacity, PoolError> {
        let counts = self.inner.store.counts()?;
        let get = |s: PodState| counts.get(s.as_str()).copied().unwrap_or(0);
        Ok(Capacity {
            node: self.inner.cfg.node.to_string(),
            starting: get(PodState::Starting),
            warm: get(PodState::Warm),
            assigned: get(PodState::Assigned),
            ready: get(PodState::Ready),
            resetting: get(PodState::Resetting),
            quarantined: get(PodState::Quarantined),
            max: self.inner.cfg.max_pods,
            draining: self.is_draining(),
            runtime_reachable: self.inner.loaded.load(Ordering::SeqCst)
                && self.inner.runtime_ok.load(Ordering::SeqCst),
        })
    }

    pub fn pods(&self) -> Result<Vec<PodSummary>, PoolError> {
        Ok(self
            .inner
            .store
            .list()?
            .iter()
            .map(|p| p.summary(&self.inner.cfg.node))
            .collect())
    }

    pub fn pod(&self, id: &PodId) -> Result<PodSummary, PoolError> {
        self.inner
            .store
            .get(id)?
            .map(|p| p.summary(&self.inner.cfg.node))
            .ok_or_else(|| PoolError::NotFound(format!("no pod {id} on node {}", self.node())))
    }

    /// The full record (for the debug socket).
    pub fn pod_record(&self, id: &PodId) -> Result<PodRecord, PoolError> {
        self.inner
            .store
            .get(id)?
            .ok_or_else(|| PoolError::NotFound(format!("no pod {id} on node {}", self.node())))
    }

    pub fn events(&self, limit: u32) -> Result<Vec<Event>, PoolError> {
        Ok(self.inner.store.events(limit)?)
    }

    // ----- claim / release -----------------------------------------------------------------

    async fn lock_clone(&self, clone: &CloneId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self
                .inner
                .clone_locks
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            map.retain(|_, l| Arc::strong_count(l) > 1);
            map.entry(clone.clone()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// The image's WordPress version (every pod runs the same image), read once from `pod`.
    async fn image_wordpress_version(&self, pod: &PodId) -> Option<String> {
        if let Some(v) = self.inner.wordpress_version.get() {
            return Some(v.clone());
        }
        match crate::import::pod_wordpress_version(self.inner.runtime.as_ref(), pod).await {
            Ok(v) => Some(self.inner.wordpress_version.get_or_init(|| v).clone()),
            Err(e) => {
                tracing::warn!(pod = %pod, error = %e, "cannot read the pods' WordPress version");
                None
            }
        }
    }

    fn response(&self, rec: &PodRecord, path: ClaimPath) -> Result<ClaimResponse, PoolError> {
        let (Some(clone_id), Some(endpoint), Some(user), Some(password)) = (
            rec.clone_id.clone(),
            rec.endpoint.clone(),
            rec.admin_user.clone(),
            rec.admin_password.as_ref(),
        ) else {
            return Err(PoolError::Failed(format!(
                "pod {} is assigned but its record is incomplete",
                rec.id
            )));
        };
        Ok(ClaimResponse {
            pod_id: rec.id.clone(),
            node: self.inner.cfg.node.clone(),
            clone_id,
            endpoint,
            credentials: PodCredentials {
                admin_username: user,
                admin_password: password.expose().to_string(),
            },
            path: rec.claim_path.unwrap_or(path),
            wordpress_version: None,
        })
    }

    /// Claims a pod for a clone: atomic, idempotent per clone id. Sets a fresh admin password and
    /// the clone's site URL in the pod before answering.
    pub async fn claim(&self, req: &ClaimRequest) -> Result<ClaimResponse, PoolError> {
        let started = Instant::now();
        let host = req.clone_host.trim().to_ascii_lowercase();
        if !valid_clone_host(&host) {
            return Err(PoolError::BadRequest(format!(
                "clone_host {:?} must be a host name (letters, digits, dots, dashes) with an optional :port",
                req.clone_host
            )));
        }
        let _clone_guard = self.lock_clone(&req.clone_id).await;
        let result = self
            .claim_locked(&req.clone_id, &host, req.clone_scheme, req.allow_cold)
            .await;
        self.inner.metrics.count_claim(claim_result(&result));
        if let Ok((resp, false)) = &result {
            let path = match resp.path {
                ClaimPath::Warm => "warm",
                ClaimPath::Cold => "cold",
            };
            self.inner
                .metrics
                .observe_claim(path, started.elapsed().as_secs_f64());
        }
        self.refresh_gauges();
        // A refused claim while the runtime is away changed nothing: no need to look again.
        if !matches!(result, Err(PoolError::Unavailable(_))) {
            self.inner.kick.notify_one();
        }
        let mut resp = result.map(|(r, _)| r)?;
        resp.wordpress_version = self.image_wordpress_version(&resp.pod_id).await;
        Ok(resp)
    }

    /// The claim under the clone's lock; the flag says whether it was a repeat.
    ///
    /// Two phases: the claim is saved (pod ASSIGNED, `credentials_applied` false), then the
    /// clone's site URL and admin password are applied in the pod, then the flag is set. A
    /// repeat that finds the flag unset (the agent stopped in between) applies them again.
    async fn claim_locked(
        &self,
        clone: &CloneId,
        host: &str,
        scheme: CloneScheme,
        allow_cold: bool,
    ) -> Result<(ClaimResponse, bool), PoolError> {
        let inner = &self.inner;
        for _attempt in 0..3 {
            // A repeat is answered even while draining: it takes nothing new.
            let repeat = inner.store.find_by_clone(clone)?;
            if repeat.is_none() {
                if self.is_draining() {
                    return Err(PoolError::Draining(inner.cfg.node.clone()));
                }
                // Checked before a pod is taken, so an outage does not use up the pool.
                self.check_available()?;
            }
            let fresh = Secret::generate(PASSWORD_LEN);
            let assignment = Assignment {
                clone,
                clone_host: host,
                clone_scheme: scheme,
                admin_user: ADMIN_USER,
                admin_password: &fresh,
            };
            let (rec, is_repeat) = match inner.store.claim(&assignment)? {
                ClaimOutcome::Existing(rec) => match rec.state {
                    PodState::Assigned if !rec.credentials_applied => {
                        tracing::info!(pod = %rec.id, clone = %clone, "claim was saved but not applied; applying it now");
                        self.check_available()?;
                        (rec, true)
                    }
                    PodState::Assigned | PodState::Ready => {
                        return Ok((self.response(&rec, ClaimPath::Warm)?, true));
                    }
                    PodState::Resetting => {
                        return Err(PoolError::Conflict(format!(
                            "clone {clone} was released; its pod {} is being reset",
                            rec.id
                        )))
                    }
                    PodState::Quarantined => {
                        return Err(PoolError::Conflict(format!(
                            "the pod {} of clone {clone} is QUARANTINED: {}",
                            rec.id,
                            rec.reason.unwrap_or_default()
                        )))
                    }
                    PodState::Starting | PodState::Warm => {
                        return Err(PoolError::Conflict(format!(
                            "the pod {} of clone {clone} is still {}",
                            rec.id, rec.state
                        )))
                    }
                },
                ClaimOutcome::Claimed(rec) => (rec, false),
                ClaimOutcome::NoWarmPod => {
                    if !allow_cold {
                        return Err(PoolError::NoWarmPod(inner.cfg.node.clone()));
                    }
                    return self
                        .claim_cold(clone, host, scheme)
                        .await
                        .map(|r| (r, false));
                }
            };
            match self.apply_claim(&rec, clone).await? {
                Some(resp) => return Ok((resp, is_repeat)),
                // That pod refused the settings and was quarantined: try another.
                None => continue,
            }
        }
        Err(PoolError::Failed(format!(
            "three pods failed to take the settings of clone {clone}; see the events"
        )))
    }

    /// Second phase of a warm claim: the saved site URL and password go into the pod, then the
    /// claim is marked applied. `None` when the pod refused them (it is quarantined and the
    /// clone lets go of it). When the runtime is unreachable the pod is reset later instead
    /// (its settings may be half applied), the clone lets go of it, and the answer is
    /// `Unavailable`.
    async fn apply_claim(
        &self,
        rec: &PodRecord,
        clone: &CloneId,
    ) -> Result<Option<ClaimResponse>, PoolError> {
        let inner = &self.inner;
        let (Some(site), Some(password)) = (rec.site_url(), rec.admin_password.as_ref()) else {
            return Err(PoolError::Failed(format!(
                "pod {} is assigned but its record is incomplete",
                rec.id
            )));
        };
        let _busy = self.busy(&rec.id);
        match inner.commands.apply_claim(&rec.id, &site, password).await {
            Ok(()) => {
                let Some(applied) = inner.store.mark_credentials_applied(&rec.id, clone)? else {
                    return Err(PoolError::Conflict(format!(
                        "pod {} let go of clone {clone} while its claim was applied",
                        rec.id
                    )));
                };
                if !matches!(applied.state, PodState::Assigned | PodState::Ready) {
                    return Err(PoolError::Conflict(format!(
                        "the pod {} of clone {clone} is {}: {}",
                        applied.id,
                        applied.state,
                        applied.reason.clone().unwrap_or_default()
                    )));
                }
                tracing::info!(pod = %rec.id, clone = %clone, "claimed (warm)");
                Ok(Some(self.response(&applied, ClaimPath::Warm)?))
            }
            Err(e) if e.is_runtime_unreachable() => {
                if let Some(re) = e.runtime_error() {
                    self.runtime_error(re);
                }
                tracing::warn!(pod = %rec.id, clone = %clone, error = %e, "claim interrupted: container runtime unreachable; the pod is reset when it is back");
                inner.store.abort_claim(
                    &rec.id,
                    &format!(
                        "claim of clone {clone} interrupted (container runtime unreachable); reset when the runtime is back"
                    ),
                )?;
                Err(PoolError::Unavailable(format!(
                    "container runtime unreachable: {e}"
                )))
            }
            Err(e) => {
                tracing::warn!(pod = %rec.id, error = %e, "claimed pod did not take the clone's settings");
                if let Some(re) = e.runtime_error() {
                    self.runtime_error(re);
                }
                inner.store.quarantine(
                    &rec.id,
                    &[PodState::Assigned],
                    &format!("claim failed: {e}"),
                    false,
                )?;
                drop(_busy);
                self.spawn_destroy(rec.id.clone(), "quarantined at claim");
                Ok(None)
            }
        }
    }

    /// The cold path: a pod created on the spot for one clone, if the node has room. It takes a
    /// creation slot (`create_parallelism`) like the pool's creations, ahead of those waiting.
    async fn claim_cold(
        &self,
        clone: &CloneId,
        host: &str,
        scheme: CloneScheme,
    ) -> Result<ClaimResponse, PoolError> {
        let inner = &self.inner;
        let id = new_pod_id();
        let busy = self.busy(&id);
        if !inner
            .store
            .insert_reserved_if_room(&id, clone, inner.cfg.max_pods)?
        {
            return Err(PoolError::NoCapacity {
                node: inner.cfg.node.clone(),
                max: inner.cfg.max_pods,
            });
        }
        let _inflight = self.inflight();
        let Some(_slot) = self.cold_creation_slot().await else {
            let _ = inner
                .store
                .delete(&id, &[PodState::Starting], "not created: agent stopping");
            return Err(PoolError::Draining(inner.cfg.node.clone()));
        };
        let started = Instant::now();
        let provisioned = match inner.provisioner.provision(&id).await {
            Ok(p) => p,
            Err(e) => {
                let unreachable = e.is_runtime_unreachable();
                if unreachable || matches!(e, crate::provision::ProvisionError::Runtime(_)) {
                    inner.metrics.runtime_errors.inc();
                }
                if unreachable {
                    self.set_runtime_reachable(false);
                }
                inner.store.quarantine(
                    &id,
                    &[],
                    &format!("cold provisioning failed: {e}"),
                    false,
                )?;
                drop(busy);
                self.spawn_destroy(id, "cold provisioning failed");
                return Err(if unreachable {
                    PoolError::Unavailable(format!("container runtime unreachable: {e}"))
                } else {
                    PoolError::Failed(format!("creating a pod for clone {clone} failed: {e}"))
                });
            }
        };
        inner
            .metrics
            .provision_duration
            .observe(started.elapsed().as_secs_f64());
        let password = Secret::generate(PASSWORD_LEN);
        let site = scheme.site_url(host);
        if let Err(e) = inner.commands.apply_claim(&id, &site, &password).await {
            if let Some(re) = e.runtime_error() {
                self.runtime_error(re);
            }
            inner
                .store
                .quarantine(&id, &[], &format!("claim failed: {e}"), false)?;
            drop(busy);
            self.spawn_destroy(id, "quarantined at claim");
            return Err(if e.is_runtime_unreachable() {
                PoolError::Unavailable(format!("container runtime unreachable: {e}"))
            } else {
                PoolError::Failed(format!(
                    "the new pod did not take the settings of clone {clone}: {e}"
                ))
            });
        }
        // Applied before it is saved: a cold claim is stored with its settings in place.
        let assignment = Assignment {
            clone,
            clone_host: host,
            clone_scheme: scheme,
            admin_user: ADMIN_USER,
            admin_password: &password,
        };
        let rec = inner.store.assign_reserved(
            &id,
            &assignment,
            &provisioned.endpoint,
            &provisioned.fingerprint.to_json(),
        )?;
        tracing::info!(pod = %id, clone = %clone, "claimed (cold)");
        self.response(&rec, ClaimPath::Cold)
    }

    /// A creation slot for a cold claim (a client waits on it): pool creations that have not
    /// started yet let it go first. `None` when the agent stops.
    async fn cold_creation_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let inner = &self.inner;
        inner.cold_waiting.fetch_add(1, Ordering::SeqCst);
        let slot = tokio::select! {
            slot = inner.create_slots.clone().acquire_owned() => slot.ok(),
            _ = inner.cancel.cancelled() => None,
        };
        if inner.cold_waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
            inner.cold_done.notify_waiters();
        }
        slot
    }

    /// A creation slot for a pool pod, once no cold claim waits for one. `None` when the agent
    /// stops.
    async fn pool_creation_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let inner = &self.inner;
        loop {
            while inner.cold_waiting.load(Ordering::SeqCst) > 0 {
                let done = inner.cold_done.notified();
                if inner.cold_waiting.load(Ordering::SeqCst) == 0 {
                    break;
                }
                tokio::select! {
                    _ = done => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = inner.cancel.cancelled() => return None,
                }
            }
            let slot = tokio::select! {
                slot = inner.create_slots.clone().acquire_owned() => slot.ok()?,
                _ = inner.cancel.cancelled() => return None,
            };
            if inner.cold_waiting.load(Ordering::SeqCst) == 0 {
                return Some(slot);
            }
            // A cold claim queued meanwhile: hand the slot on (the semaphore is FIFO).
            drop(slot);
        }
    }

    /// The container runtime the pool works with.
    pub fn runtime(&self) -> Arc<dyn ContainerRuntime> {
        self.inner.runtime.clone()
    }

    /// The pod ASSIGNED to `clone` with its claim applied (the one an import goes into).
    pub fn assigned_pod(&self, clone: &CloneId) -> Result<PodRecord, PoolError> {
        let rec = self
            .inner
            .store
            .find_by_clone(clone)?
            .filter(|r| r.clone_id.as_ref() == Some(clone))
            .ok_or_else(|| {
                PoolError::NotFound(format!(
                    "no pod holds clone {clone} on node {}",
                    self.node()
                ))
            })?;
        if rec.state != PodState::Assigned || !rec.credentials_applied {
            return Err(PoolError::Conflict(format!(
                "the pod {} of clone {clone} is {}{}; an import needs an ASSIGNED pod",
                rec.id,
                rec.state,
                if rec.credentials_applied {
                    ""
                } else {
                    " (claim not applied yet: claim again)"
                }
            )));
        }
        Ok(rec)
    }

    /// Runs `work` on the pod ASSIGNED to `clone`, holding the clone's lock (releases and readies
    /// wait) and the pod busy (the reconcile loop leaves it alone).
    pub async fn with_assigned_pod<T, F, Fut>(
        &self,
        clone: &CloneId,
        work: F,
    ) -> Result<T, PoolError>
    where
        F: FnOnce(PodRecord) -> Fut,
        Fut: Future<Output = T>,
    {
        let _guard = self.lock_clone(clone).await;
        let rec = self.assigned_pod(clone)?;
        let _busy = self.busy(&rec.id);
        let _inflight = self.inflight();
        Ok(work(rec).await)
    }

    /// Runs `work` on the pod serving `clone` (READY), holding the clone's lock (a release waits
    /// until the work is done) and the pod busy.
    pub async fn with_ready_pod<T, F, Fut>(&self, clone: &CloneId, work: F) -> Result<T, PoolError>
    where
        F: FnOnce(PodRecord) -> Fut,
        Fut: Future<Output = T>,
    {
        let _guard = self.lock_clone(clone).await;
        let rec = self
            .inner
            .store
            .find_by_clone(clone)?
            .filter(|r| r.clone_id.as_ref() == Some(clone))
            .ok_or_else(|| {
                PoolError::NotFound(format!(
                    "no pod holds clone {clone} on node {}",
                    self.node()
                ))
            })?;
        if rec.state != PodState::Ready {
            return Err(PoolError::Conflict(format!(
                "the pod {} of clone {clone} is {}; only a READY clone can be exported",
                rec.id, rec.state
            )));
        }
        let _busy = self.busy(&rec.id);
        let _inflight = self.inflight();
        Ok(work(rec).await)
    }

    /// The clone's import is done: ASSIGNED → READY.
    pub async fn mark_ready(&self, clone: &CloneId) -> Result<PodSummary, PoolError> {
        let _guard = self.lock_clone(clone).await;
        let rec = self
            .inner
            .store
            .mark_ready(clone)
            .map_err(|e| match e {
                StoreError::WrongState { pod, state, .. } => {
                    PoolError::Conflict(format!("pod {pod} of clone {clone} is {state}"))
                }
                e => e.into(),
            })?
            .ok_or_else(|| PoolError::NotFound(format!("no pod holds clone {clone}")))?;
        self.refresh_gauges();
        Ok(rec.summary(self.node()))
    }

    /// Releases a clone's pod: it is reset (and verified) in the background, then WARM again.
    /// Idempotent while the reset runs.
    pub async fn release(&self, clone: &CloneId) -> Result<ReleaseResponse, PoolError> {
        let _guard = self.lock_clone(clone).await;
        let rec = self
            .inner
            .store
            .find_by_clone(clone)?
            .ok_or_else(|| {
                PoolError::NotFound(format!(
                    "no pod holds clone {clone} on node {} (never claimed here, already released, or its lost pod was removed)",
                    self.node()
                ))
            })?;
        let state = match rec.state {
            PodState::Assigned | PodState::Ready => {
                let busy = self.busy(&rec.id);
                self.inner.store.begin_reset(
                    &rec.id,
                    &[PodState::Assigned, PodState::Ready],
                    &format!("released by clone {clone}"),
                )?;
                self.spawn_reset(rec.id.clone(), busy);
                PodState::Resetting
            }
            PodState::Resetting => PodState::Resetting,
            PodState::Quarantined => {
                // A lost pod: nothing to reset; remove it to make room for a new one.
                let why = format!("released by clone {clone} after it was lost");
                self.inner
                    .store
                    .quarantine(&rec.id, &[PodState::Quarantined], &why, false)?;
                self.spawn_destroy(rec.id.clone(), &why);
                PodState::Quarantined
            }
            PodState::Starting | PodState::Warm => {
                return Err(PoolError::Conflict(format!(
                    "the pod {} of clone {clone} is {}; nothing to release yet",
                    rec.id, rec.state
                )))
            }
        };
        self.refresh_gauges();
        tracing::info!(pod = %rec.id, clone = %clone, "released");
        Ok(ReleaseResponse {
            pod_id: rec.id,
            state,
        })
    }

    /// Operator reset of one pod (`clonepoolctl reset`). A pod serving a clone needs `force`.
    pub async fn reset_pod(&self, id: &PodId, force: bool) -> Result<PodSummary, PoolError> {
        let rec = self.pod_record(id)?;
        let Some(busy) = self.try_busy(id) else {
            return Err(PoolError::Conflict(format!(
                "pod {id} is busy ({}); try again when it is done",
                rec.state
            )));
        };
        let from: &[PodState] = match rec.state {
            PodState::Warm => &[PodState::Warm],
            PodState::Assigned | PodState::Ready if force => &[PodState::Assigned, PodState::Ready],
            PodState::Assigned | PodState::Ready => {
                return Err(PoolError::Conflict(format!(
                    "pod {id} serves clone {}; reset it anyway with --force",
                    rec.clone_id.map(|c| c.to_string()).unwrap_or_default()
                )))
            }
            PodState::Resetting => &[PodState::Resetting],
            PodState::Quarantined if force => {
                // Nothing to reset: remove it now (a lost one would otherwise wait for its
                // clone's release or the grace period); the pool creates a replacement.
                let why = match &rec.clone_id {
                    Some(clone) if rec.lost => format!(
                        "lost pod of clone {clone} removed by the operator (reset --force)"
                    ),
                    _ => "quarantined pod removed by the operator (reset --force)".to_string(),
                };
                tracing::info!(pod = %id, why, "removing pod");
                let summary = rec.summary(self.node());
                let pool = self.clone();
                let id = id.clone();
                self.spawn_tracked(async move {
                    pool.destroy_now(&id, &why).await;
                    drop(busy);
                });
                return Ok(summary);
            }
            PodState::Quarantined => {
                return Err(PoolError::Conflict(format!(
                    "pod {id} is QUARANTINED ({}); remove it now with --force (the pool creates a replacement)",
                    rec.reason.unwrap_or_default()
                )))
            }
            PodState::Starting => {
                return Err(PoolError::Conflict(format!(
                    "pod {id} is STARTING; only WARM, ASSIGNED, READY or RESETTING pods can be reset (QUARANTINED ones removed with --force)"
                )))
            }
        };
        self.inner
            .store
            .begin_reset(id, from, "reset requested by operator")?;
        self.spawn_reset(id.clone(), busy);
        self.refresh_gauges();
        self.pod(id)
    }

    // ----- background work -----------------------------------------------------------------

    fn inflight(&self) -> InFlightGuard {
        self.inner.inflight.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.inner.clone())
    }

    /// Marks `pod` busy (even when it already is).
    fn busy(&self, pod: &PodId) -> BusyGuard {
        *self
            .inner
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(pod.clone())
            .or_default() += 1;
        BusyGuard {
            inner: self.inner.clone(),
            pod: pod.clone(),
        }
    }

    /// Marks `pod` busy unless it already is.
    fn try_busy(&self, pod: &PodId) -> Option<BusyGuard> {
        let mut busy = self.inner.busy.lock().unwrap_or_else(|e| e.into_inner());
        if busy.contains_key(pod) {
            return None;
        }
        busy.insert(pod.clone(), 1);
        drop(busy);
        Some(BusyGuard {
            inner: self.inner.clone(),
            pod: pod.clone(),
        })
    }

    /// Whether an operation (provisioning, reset, removal, claim) works on the pod right now.
    pub fn is_pod_busy(&self, pod: &PodId) -> bool {
        self.is_busy(pod)
    }

    fn is_busy(&self, pod: &PodId) -> bool {
        self.inner
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(pod)
    }

    fn spawn_tracked<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let guard = self.inflight();
        tokio::spawn(async move {
            fut.await;
            drop(guard);
        });
    }

    fn refresh_gauges(&self) {
        if let Ok(pods) = self.inner.store.list() {
            let mut counts = std::collections::BTreeMap::new();
            for s in PodState::ALL {
                counts.insert(s.as_str(), 0u32);
            }
            let mut lost = 0;
            for p in &pods {
                *counts.entry(p.state.as_str()).or_default() += 1;
                lost += u32::from(p.lost);
            }
            self.inner.metrics.set_pod_counts(&counts, lost);
        }
    }

    /// Removes a pod's containers, then forgets it; waits (a while) for other operations on the
    /// pod to finish first.
    fn spawn_destroy(&self, id: PodId, why: &str) {
        let pool = self.clone();
        let why = why.to_string();
        self.spawn_tracked(async move {
            if let Some(_busy) = pool.wait_busy(&id).await {
                pool.destroy_now(&id, &why).await;
            }
        });
    }

    /// Marks `pod` busy as soon as nobody else holds it (gives up after 30 s).
    async fn wait_busy(&self, id: &PodId) -> Option<BusyGuard> {
        for _ in 0..1200 {
            if let Some(guard) = self.try_busy(id) {
                return Some(guard);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        tracing::warn!(pod = %id, "pod stayed busy; leaving it to the next reconcile pass");
        None
    }

    async fn destroy_now(&self, id: &PodId, why: &str) {
        match self.inner.runtime.remove_pod(id).await {
            Ok(()) | Err(RuntimeError::PodNotFound(_)) => {
                if let Err(e) = self
                    .inner
                    .store
                    .delete(id, &[], &format!("destroyed: {why}"))
                {
                    tracing::error!(pod = %id, error = %e, "cannot forget a destroyed pod");
                }
                tracing::info!(pod = %id, why, "pod destroyed");
            }
            Err(e) => {
                self.runtime_error(&e);
                tracing::warn!(pod = %id, error = %e, "removing pod failed; retrying later");
            }
        }
        self.refresh_gauges();
        self.inner.kick.notify_one();
    }

    /// Runs the reset of a RESETTING pod; `busy` is the caller's hold on the pod.
    fn spawn_reset(&self, id: PodId, busy: BusyGuard) {
        let pool = self.clone();
        self.spawn_tracked(async move {
            pool.reset_now(&id).await;
            drop(busy);
        });
    }

    async fn reset_now(&self, id: &PodId) {
        let inner = &self.inner;
        let started = Instant::now();
        let method = inner.resetter.method.as_str();
        let rec = match inner.store.get(id) {
            Ok(Some(rec)) if rec.state == PodState::Resetting => rec,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(pod = %id, error = %e, "cannot read pod for reset");
                return;
            }
        };
        let pristine = rec
            .fingerprint
            .as_deref()
            .map(Fingerprint::from_json)
            .transpose();
        let (endpoint, pristine) = match (rec.endpoint.clone(), pristine) {
            (Some(e), Ok(Some(p))) => (e, p),
            _ => {
                self.quarantine_and_destroy(id, "no pristine fingerprint or endpoint recorded");
                inner
                    .metrics
                    .observe_reset(method, started.elapsed().as_secs_f64(), "failed");
                return;
            }
        };
        let outcome = inner.resetter.reset(id, &endpoint, &pristine).await;
        let secs = started.elapsed().as_secs_f64();
        match outcome {
            Ok(ResetOutcome::Clean) => {
                let msg = format!(
                    "reset ({method}) and verified in {} ms",
                    (secs * 1000.0) as u64
                );
                match inner.store.mark_warm(id, &endpoint, None, &msg) {
                    Ok(_) => {
                        inner.metrics.observe_reset(method, secs, "ok");
                        tracing::info!(pod = %id, method, ms = (secs * 1000.0) as u64, "reset verified; WARM");
                    }
                    Err(e) => tracing::error!(pod = %id, error = %e, "cannot mark reset pod WARM"),
                }
            }
            Ok(ResetOutcome::Dirty(mismatch)) => {
                inner.metrics.observe_reset(method, secs, "verify_failed");
                tracing::warn!(pod = %id, %mismatch, "reset verification failed; quarantining");
                self.quarantine_and_destroy(id, &format!("reset verification failed: {mismatch}"));
            }
            Err(e) if e.is_runtime_unreachable() => {
                inner.metrics.runtime_errors.inc();
                self.set_runtime_reachable(false);
                inner.metrics.observe_reset(method, secs, "failed");
                tracing::warn!(pod = %id, error = %e, "reset interrupted: runtime unreachable; retrying later");
                let _ = inner
                    .store
                    .add_event(Some(id), "reset_interrupted", &format!("{e}"));
            }
            Err(e) => {
                if e.is_runtime_unreachable() || matches!(e, crate::reset::ResetError::Runtime(_)) {
                    inner.metrics.runtime_errors.inc();
                }
                inner.metrics.observe_reset(method, secs, "failed");
                tracing::warn!(pod = %id, error = %e, "reset failed; quarantining");
                self.quarantine_and_destroy(id, &format!("reset failed: {e}"));
            }
        }
        self.refresh_gauges();
        inner.kick.notify_one();
    }

    fn quarantine_and_destroy(&self, id: &PodId, reason: &str) {
        if let Err(e) = self.inner.store.quarantine(id, &[], reason, false) {
            tracing::error!(pod = %id, error = %e, "cannot quarantine pod");
        }
        self.spawn_destroy(id.clone(), reason);
    }

    /// Provisions a STARTING pod; `busy` is the caller's hold on it (taken before its row was
    /// inserted, so no reconcile pass mistakes it for an interrupted start).
    fn spawn_provision(&self, id: PodId, busy: BusyGuard) {
        let pool = self.clone();
        self.spawn_tracked(async move {
            let _busy = busy;
            let _slot = pool.pool_creation_slot().await;
            if pool.inner.stopping.load(Ordering::SeqCst) {
                // Not started: forget it (nothing exists in the runtime yet).
                let _ = pool.inner.store.delete(
                    &id,
                    &[PodState::Starting],
                    "not created: agent stopping",
                );
                return;
            }
            let started = Instant::now();
            match pool.inner.provisioner.provision(&id).await {
                Ok(p) => {
                    let secs = started.elapsed().as_secs_f64();
                    pool.inner.metrics.provision_duration.observe(secs);
                    let msg = format!("provisioned in {} ms", (secs * 1000.0) as u64);
                    match pool.inner.store.mark_warm(
                        &id,
                        &p.endpoint,
                        Some(&p.fingerprint.to_json()),
                        &msg,
                    ) {
                        Ok(_) => tracing::info!(pod = %id, ms = (secs * 1000.0) as u64, "pod WARM"),
                        Err(e) => {
                            tracing::error!(pod = %id, error = %e, "cannot mark new pod WARM")
                        }
                    }
                }
                Err(e) => {
                    if e.is_runtime_unreachable()
                        || matches!(e, crate::provision::ProvisionError::Runtime(_))
                    {
                        pool.inner.metrics.runtime_errors.inc();
                    }
                    if e.is_runtime_unreachable() {
                        pool.set_runtime_reachable(false);
                    }
                    tracing::warn!(pod = %id, error = %e, "provisioning failed");
                    let _ = pool.inner.store.quarantine(
                        &id,
                        &[],
                        &format!("provisioning failed: {e}"),
                        false,
                    );
                    pool.destroy_now(&id, &format!("provisioning failed: {e}"))
                        .await;
                    // Do not spin on a persistent failure (missing image, engine trouble).
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        _ = pool.inner.cancel.cancelled() => {}
                    }
                }
            }
            pool.refresh_gauges();
            pool.inner.kick.notify_one();
        });
    }

    // ----- reconcile -----------------------------------------------------------------------

    async fn reconcile_loop(&self) {
        loop {
            // While the runtime is away, look (ping) every second so claims resume quickly.
            let interval = if self.inner.runtime_ok.load(Ordering::SeqCst) {
                self.inner.cfg.reconcile_interval
            } else {
                self.inner
                    .cfg
                    .reconcile_interval
                    .min(Duration::from_secs(1))
            };
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                _ = self.inner.kick.notified() => {}
                _ = tokio::time::sleep(interval) => {}
            }
            if let Err(e) = self.reconcile_once().await {
                tracing::warn!(error = %e, "reconcile pass failed");
            }
        }
    }

    /// One pass: compare the store with the runtime, fix what differs, then fill or trim the
    /// WARM buffer.
    pub async fn reconcile_once(&self) -> Result<(), PoolError> {
        let inner = &self.inner;
        if inner.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        if let Err(e) = inner.runtime.ping().await {
            self.runtime_error(&e);
            return Err(e.into());
        }
        self.set_runtime_reachable(true);
        // The store first, then the runtime: a row unchanged since its snapshot is then older
        // than what the runtime shows for it.
        let rows = inner.store.list()?;
        let in_runtime: HashMap<PodId, PodInfo> =
            match inner.runtime.list_pods(&inner.cfg.node).await {
                Ok(pods) => pods.into_iter().map(|p| (p.pod_id.clone(), p)).collect(),
                Err(e) => {
                    self.runtime_error(&e);
                    return Err(e.into());
                }
            };

        for snapshot in &rows {
            let Some(busy) = self.try_busy(&snapshot.id) else {
                continue;
            };
            let rec = match inner.store.get(&snapshot.id)? {
                Some(rec) if rec.state == snapshot.state && rec.since == snapshot.since => rec,
                _ => continue,
            };
            let info = in_runtime.get(&rec.id);
            let running = info.is_some_and(|i| i.is_running());
            let what = describe_down(info);
            let what = what.as_str();
            match rec.state {
                PodState::Starting => {
                    // Nothing provisions it (not busy): left over from an interrupted start.
                    drop(busy);
                    self.quarantine_and_destroy(&rec.id, "provisioning was interrupted");
                }
                PodState::Warm if !running => {
                    inner.metrics.container_deaths.inc();
                    drop(busy);
                    self.quarantine_and_destroy(&rec.id, &format!("WARM pod died: {what}"));
                }
                PodState::Assigned | PodState::Ready if !running => {
                    self.report_lost(&rec.id, &format!("{what} (found by reconcile)"))?;
                }
                PodState::Resetting => {
                    // Nothing resets it (not busy): the agent stopped mid-reset, or the runtime
                    // was unreachable. Reset again, or give up after a few attempts.
                    if rec.reset_attempts >= MAX_RESET_ATTEMPTS {
                        drop(busy);
                        let why =
                            format!("reset did not finish after {} attempts", rec.reset_attempts);
                        self.quarantine_and_destroy(&rec.id, &why);
                    } else if !running {
                        drop(busy);
                        self.quarantine_and_destroy(
                            &rec.id,
                            &format!("reset interrupted and {what}"),
                        );
                    } else {
                        inner.store.begin_reset(
                            &rec.id,
                            &[PodState::Resetting],
                            "resetting again (the previous reset did not finish)",
                        )?;
                        self.spawn_reset(rec.id.clone(), busy);
                    }
                }
                PodState::Quarantined if !rec.lost => {
                    drop(busy);
                    let why = rec.reason.clone().unwrap_or_else(|| "quarantined".into());
                    self.spawn_destroy(rec.id.clone(), &why);
                }
                PodState::Quarantined if self.lost_grace_over(&rec) => {
                    // Nobody released it in time: stop holding a slot for it.
                    drop(busy);
                    let why = format!(
                        "lost pod of clone {} removed after the grace period ({} s) without a release",
                        rec.clone_id
                            .as_ref()
                            .map(|c| c.to_string())
                            .unwrap_or_else(|| "?".into()),
                        inner.cfg.lost_pod_grace.as_secs()
                    );
                    tracing::warn!(pod = %rec.id, why, "removing lost pod");
                    self.spawn_destroy(rec.id.clone(), &why);
                }
                _ => {}
            }
        }

        for id in in_runtime.keys() {
            // Not in the store and nobody works on it: an orphan (e.g. the state file was lost).
            let Some(busy) = self.try_busy(id) else {
                continue;
            };
            if inner.store.get(id)?.is_some() {
                continue;
            }
            let _ = inner.store.add_event(
                Some(id),
                "orphan",
                "pod found in the runtime but not in the state file; removing it",
            );
            tracing::warn!(pod = %id, "orphan pod; removing it");
            let pool = self.clone();
            let id = id.clone();
            self.spawn_tracked(async move {
                if let Err(e) = pool.inner.runtime.remove_pod(&id).await {
                    pool.runtime_error(&e);
                    tracing::warn!(pod = %id, error = %e, "removing orphan failed");
                }
                drop(busy);
            });
        }

        self.fill_and_trim()?;
        self.refresh_gauges();
        Ok(())
    }

    fn fill_and_trim(&self) -> Result<(), PoolError> {
        let inner = &self.inner;
        if inner.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let rows = inner.store.list()?;
        let count = |f: &dyn Fn(&PodRecord) -> bool| rows.iter().filter(|r| f(r)).count() as u32;
        let warm = count(&|r| r.state == PodState::Warm);
        let coming = count(&|r| {
            (r.state == PodState::Starting && r.reserved_for.is_none())
                || r.state == PodState::Resetting
        });
        let total = rows.len() as u32;
        let target = inner.cfg.warm_target;
        if !self.is_draining() {
            let need = target.saturating_sub(warm + coming);
            let room = inner.cfg.max_pods.saturating_sub(total);
            for _ in 0..need.min(room) {
                let id = new_pod_id();
                let busy = self.busy(&id);
                inner.store.insert_starting(&id)?;
                self.spawn_provision(id, busy);
            }
        }
        if warm > target {
            let surplus = rows
                .iter()
                .filter(|r| r.state == PodState::Warm && !self.is_busy(&r.id))
                .rev()
                .take((warm - target) as usize);
            for rec in surplus {
                if inner
                    .store
                    .quarantine(
                        &rec.id,
                        &[PodState::Warm],
                        "surplus WARM pod (above warm_target)",
                        false,
                    )?
                    .is_some()
                {
                    self.spawn_destroy(rec.id.clone(), "surplus WARM pod");
                }
            }
        }
        Ok(())
    }

    /// Whether a lost pod has been lost for longer than `lost_pod_grace`.
    fn lost_grace_over(&self, rec: &PodRecord) -> bool {
        use time::format_description::well_known::Rfc3339;
        match time::OffsetDateTime::parse(&rec.since, &Rfc3339) {
            Ok(since) => {
                let age = time::OffsetDateTime::now_utc() - since;
                age >= self.inner.cfg.lost_pod_grace
            }
            // Never written by this agent; do not keep it forever.
            Err(_) => true,
        }
    }

    /// A pod that served a clone lost a container: keep it visible, QUARANTINED and lost.
    fn report_lost(&self, id: &PodId, why: &str) -> Result<(), PoolError> {
        if let Some(rec) =
            self.inner
                .store
                .quarantine(id, &[PodState::Assigned, PodState::Ready], why, true)?
        {
            self.inner.metrics.pods_lost.inc();
            tracing::error!(
                pod = %id,
                clone = rec.clone_id.as_ref().map(|c| c.to_string()).unwrap_or_default(),
                reason = rec.reason.as_deref().unwrap_or_default(),
                "pod lost by its clone"
            );
        }
        self.refresh_gauges();
        Ok(())
    }

    // ----- runtime events ------------------------------------------------------------------

    async fn watch_loop(&self) {
        let mut backoff = Duration::from_millis(500);
        loop {
            if self.inner.cancel.is_cancelled() {
                return;
            }
            match self.inner.runtime.events(&self.inner.cfg.node).await {
                Ok(mut stream) => {
                    backoff = Duration::from_millis(500);
                    // Events may have been missed while not subscribed.
                    self.inner.kick.notify_one();
                    loop {
                        let next = tokio::select! {
                            _ = self.inner.cancel.cancelled() => return,
                            next = stream.next() => next,
                        };
                        match next {
                            Some(Ok(event)) => self.on_event(event),
                            Some(Err(e)) => {
                                self.runtime_error(&e);
                                tracing::warn!(error = %e, "runtime event stream failed; resubscribing");
                                break;
                            }
                            None => {
                                tracing::warn!("runtime event stream ended; resubscribing");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    self.runtime_error(&e);
                    tracing::debug!(error = %e, "cannot subscribe to runtime events");
                }
            }
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    fn on_event(&self, event: RuntimeEvent) {
        let died = match &event.kind {
            RuntimeEventKind::Died { exit_code } => Some(format!(
                "{} container died (exit {})",
                event.role,
                exit_code.map_or("unknown".into(), |c| c.to_string())
            )),
            RuntimeEventKind::OutOfMemory => {
                Some(format!("{} container ran out of memory", event.role))
            }
            RuntimeEventKind::Destroyed => Some(format!("{} container was removed", event.role)),
            RuntimeEventKind::Started => None,
        };
        let Some(why) = died else { return };
        // The agent's own operations (resets, removals) stop and remove containers on purpose.
        let Some(busy) = self.try_busy(&event.pod_id) else {
            return;
        };
        let Ok(Some(rec)) = self.inner.store.get(&event.pod_id) else {
            return;
        };
        match rec.state {
            PodState::Warm => {
                self.inner.metrics.container_deaths.inc();
                tracing::warn!(pod = %rec.id, why, "WARM pod died; replacing it");
                drop(busy);
                if let Ok(Some(_)) = self.inner.store.quarantine(
                    &rec.id,
                    &[PodState::Warm],
                    &format!("WARM pod died: {why}"),
                    false,
                ) {
                    self.spawn_destroy(rec.id.clone(), "WARM pod died; replaced");
                }
                self.refresh_gauges();
                self.inner.kick.notify_one();
            }
            PodState::Assigned | PodState::Ready => {
                self.inner.metrics.container_deaths.inc();
                if let Err(e) = self.report_lost(&rec.id, &why) {
                    tracing::error!(pod = %rec.id, error = %e, "cannot record lost pod");
                }
                self.inner.kick.notify_one();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_claim_outcome_is_counted_under_a_documented_result() {
        let node: NodeName = "n".parse().unwrap();
        let resp = |path| ClaimResponse {
            pod_id: "cp-1".parse().unwrap(),
            node: node.clone(),
            clone_id: "c".parse().unwrap(),
            endpoint: "http://x".into(),
            credentials: PodCredentials {
                admin_username: "admin".into(),
                admin_password: "pw".into(),
            },
            path,
            wordpress_version: None,
        };
        let outcomes: Vec<Result<(ClaimResponse, bool), PoolError>> = vec![
            Ok((resp(ClaimPath::Warm), false)),
            Ok((resp(ClaimPath::Cold), false)),
            Ok((resp(ClaimPath::Warm), true)),
            Err(PoolError::NoWarmPod(node.clone())),
            Err(PoolError::NoCapacity {
                node: node.clone(),
                max: 1,
            }),
            Err(PoolError::Draining(node.clone())),
            Err(PoolError::Unavailable("x".into())),
            Err(PoolError::Runtime(RuntimeError::Unreachable("x".into()))),
            Err(PoolError::Conflict("x".into())),
            Err(PoolError::Failed("x".into())),
        ];
        let labels: Vec<&str> = outcomes.iter().map(claim_result).collect();
        for label in &labels {
            assert!(crate::metrics::CLAIM_RESULTS.contains(label), "{label}");
        }
        for result in crate::metrics::CLAIM_RESULTS {
            assert!(labels.contains(&result), "{result} never produced");
        }
    }

    #[test]
    fn clone_hosts_are_checked() {
        for ok in ["shop.localhost:8080", "a", "x-1.example.test", "a.b:1"] {
            assert!(valid_clone_host(ok), "{ok}");
        }
        for bad in [
            "", "a b", "a'b", "-a", "a..b", "a:0", "a:99999", "A", "a/b", "http://a",
        ] {
            assert!(!valid_clone_host(bad), "{bad}");
        }
    }
}
