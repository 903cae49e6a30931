//! The durable job engine: takes pending jobs from the store (oldest due first) with bounded
//! concurrency, runs them (a clone job claims a pod through the router), records progress,
//! retries transient failures with exponential backoff up to the attempt limit, and fails the
//! rest with a clear error. A clone job with a source imports the source site into the claimed
//! pod: export from the source ([`crate::wp_site`]) streamed into the agent's import route. A
//! restore job exports a live clone through its agent (rewritten to the target's URL) and pushes
//! it into the target's migrator plugin, which backs up first; a rollback job asks the target's
//! plugin to restore such a backup. On start, [`JobEngine::recover`] resumes or fails every job
//! a stopped coordinator left `running`.

use crate::edge::EdgeRoutes;
use crate::exposure::{CloneExposure, ExposeRequest};
use crate::metrics::Metrics;
use crate::reaper::Reaper;
use crate::registry::AgentView;
use crate::router::{ClaimObserver, RouteError, Router};
use crate::store::{ClaimOutcome, JobRow, Recovered, Store, StoreError};
use crate::timestamps::now_ms;
use crate::wp_site::{PushOptions, SiteClient, SiteRole, WpLogin};
use async_trait::async_trait;
use clonepool_common::agent_api::{CloneScheme, ExportRequest, ReadyRequest};
use clonepool_common::api::{
    ClonePath, CloneRequest, CloneStatus, JobResult, JobState, JobType, RestoreRequest,
    RestoreResult, RestoreSource, RollbackRequest, RollbackResult,
};
use clonepool_common::ids::CloneId;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify, Semaphore};

/// Longest a clone job waits inside one attempt for a pod that is being reset or started when
/// every node is at its limit.
pub const CAPACITY_WAIT: Duration = Duration::from_secs(60);

/// Message of restore and rollback jobs when the coordinator talks to no sites.
pub const SITES_DISABLED: &str =
    "restores and rollbacks need the coordinator to talk to WordPress sites, which this coordinator was started without (--source-import=false)";

#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub max_concurrent: usize,
    pub max_attempts: u32,
    pub backoff_base: Duration,
}

/// Why one attempt of a job did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailure {
    pub transient: bool,
    pub code: String,
    pub message: String,
}

impl From<StoreError> for JobFailure {
    fn from(err: StoreError) -> Self {
        JobFailure {
            transient: true,
            code: clonepool_common::error::codes::INTERNAL.into(),
            message: format!("the coordinator could not record the job's progress: {err}"),
        }
    }
}

pub struct JobEngine {
    store: Store,
    router: Arc<Router>,
    reaper: Arc<Reaper>,
    edge: EdgeRoutes,
    metrics: Metrics,
    settings: EngineSettings,
    slots: Arc<Semaphore>,
    wake: Notify,
    /// The WordPress sites clone jobs read and restore jobs write; `None`: a clone is the pod's
    /// fresh WordPress, and restores fail.
    sites: Option<Arc<dyn SiteClient>>,
    /// Routes a ready clone's URL to its pod (Kubernetes mode); `None`: the edge proxy only.
    exposure: Option<Arc<dyn CloneExposure>>,
}

impl JobEngine {
    pub fn new(
        store: Store,
        router: Arc<Router>,
        reaper: Arc<Reaper>,
        edge: EdgeRoutes,
        metrics: Metrics,
        settings: EngineSettings,
    ) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(settings.max_concurrent)),
            store,
            router,
            reaper,
            edge,
            metrics,
            settings,
            wake: Notify::new(),
            sites: None,
            exposure: None,
        }
    }

    /// Each clone is exposed through `exposure` before its job completes.
    pub fn with_exposure(mut self, exposure: Arc<dyn CloneExposure>) -> Self {
        self.exposure = Some(exposure);
        self
    }

    /// Clone jobs import their source site, and restore jobs push to their target, through
    /// `sites`.
    pub fn with_sites(mut self, sites: Arc<dyn SiteClient>) -> Self {
        self.sites = Some(sites);
        self
    }

    /// Counts a job cancelled through the API.
    pub fn metrics_cancelled(&self, job_type: JobType) {
        self.metrics.job_finished(job_type, JobState::Cancelled);
    }

    /// A job was queued: look for work now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resumes or fails every job left `running` (see [`Store::recover_interrupted`]).
    pub async fn recover(&self) -> Result<Vec<Recovered>, StoreError> {
        let recovered = self
            .store
            .recover_interrupted(self.settings.max_attempts, now_ms())
            .await?;
        for outcome in &recovered {
            match outcome {
                Recovered::Resumed(id) => {
                    tracing::info!(job = %id, "resuming a job interrupted by a restart")
                }
                Recovered::Failed(id) => {
                    tracing::warn!(job = %id, "failed a job interrupted by a restart")
                }
            }
        }
        if recovered.iter().any(|r| matches!(r, Recovered::Failed(_))) {
            self.reaper.wake();
        }
        Ok(recovered)
    }

    /// The dispatcher: starts due jobs while slots are free, until `shutdown`; then waits up to
    /// `drain` for running jobs (any still running are resumed by the next start).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>, drain: Duration) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let permit = tokio::select! {
                permit = self.slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = shutdown.changed() => break,
            };
            match self.store.start_next_job(now_ms()).await {
                Ok(Some(job)) => {
                    let engine = self.clone();
                    tokio::spawn(async move {
                        engine.run_job_guarded(job).await;
                        drop(permit);
                    });
                }
                Ok(None) => {
                    drop(permit);
                    let wait = match self.store.next_due().await {
                        Ok(Some(due)) => {
                            Duration::from_millis((due - now_ms()).clamp(1, 1000) as u64)
                        }
                        _ => Duration::from_secs(1),
                    };
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => break,
                    }
                }
                Err(err) => {
                    drop(permit);
                    tracing::error!(error = %err, "cannot read the job queue");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        let all = self.settings.max_concurrent as u32;
        if tokio::time::timeout(drain, self.slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("jobs still running at shutdown; they resume on the next start");
        }
    }

    /// Runs one attempt like [`Engine::run_job`], but a panic in it fails the job with an
    /// internal error instead of leaving it `running` until the next start.
    pub async fn run_job_guarded(self: Arc<Self>, job: JobRow) {
        let (job_id, job_type) = (job.id.clone(), job.job_type);
        let engine = self.clone();
        let Err(err) = tokio::spawn(async move { engine.run_job(job).await }).await else {
            return;
        };
        tracing::error!(job = %job_id, error = %err, "job attempt panicked");
        let message = format!("internal error while running the job: {err}");
        if let Err(err) = self
            .store
            .fail_job(
                &job_id,
                clonepool_common::error::codes::INTERNAL,
                message,
                now_ms(),
            )
            .await
        {
            tracing::error!(job = %job_id, error = %err, "cannot record the job's failure");
        }
        self.metrics.job_finished(job_type, JobState::Failed);
        self.reaper.wake();
    }

    /// Runs one attempt of a job and records the outcome.
    pub async fn run_job(&self, job: JobRow) {
        tracing::info!(job = %job.id, kind = job.job_type.as_str(), attempt = job.attempts, "job started");
        let outcome = match job.job_type {
            JobType::Clone => self.run_clone(&job).await,
            JobType::Restore => self.run_restore(&job).await,
            JobType::Rollback => self.run_rollback(&job).await,
        };
        let Err(failure) = outcome else { return };
        let now = now_ms();
        if failure.transient && job.attempts < self.settings.max_attempts {
            let delay =
                self.settings.backoff_base * 2u32.saturating_pow(job.attempts.saturating_sub(1));
            self.metrics.job_retries.inc();
            tracing::warn!(job = %job.id, attempt = job.attempts, error = %failure.message,
                "job attempt failed; retrying in {delay:?}");
            let message = format!(
                "Attempt {} of {} failed ({}); retrying in {} s",
                job.attempts,
                self.settings.max_attempts,
                failure.message,
                delay.as_secs_f32().ceil()
            );
            let due = now + delay.as_millis() as i64;
            self.until_recorded(&job.id, "retry", || {
                self.store.retry_later(&job.id, due, message.clone(), now)
            })
            .await;
        } else {
            let message = if failure.transient {
                format!(
                    "{} (gave up after {} attempts)",
                    failure.message, job.attempts
                )
            } else {
                failure.message.clone()
            };
            tracing::warn!(job = %job.id, code = %failure.code, error = %message, "job failed");
            self.metrics.job_finished(job.job_type, JobState::Failed);
            self.until_recorded(&job.id, "failure", || {
                self.store
                    .fail_job(&job.id, &failure.code, message.clone(), now)
            })
            .await;
            self.reaper.wake();
        }
    }

    /// Runs a store write until it succeeds. A job's outcome must be recorded: otherwise the job
    /// would stay `running` until the next start (e.g. after the database was locked by another
    /// process or read-only for a while). Waits 1 s, doubling up to 30 s, between tries.
    async fn until_recorded<T, F, Fut>(&self, job_id: &str, what: &str, mut write: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut delay = Duration::from_secs(1);
        loop {
            match write().await {
                Ok(value) => return value,
                Err(err) => {
                    tracing::error!(job = %job_id, error = %err,
                        "cannot record the job's {what}; trying again in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn run_clone(&self, job: &JobRow) -> Result<(), JobFailure> {
        let clone = self
            .store
            .clone_for_job(&job.id)
            .await?
            .ok_or_else(|| JobFailure {
                transient: false,
                code: clonepool_common::error::codes::INTERNAL.into(),
                message: "the job's clone record is missing".into(),
            })?;
        let clone_id: CloneId = clone.clone_id.parse().map_err(|err| JobFailure {
            transient: false,
            code: clonepool_common::error::codes::INTERNAL.into(),
            message: format!("the stored clone id is invalid: {err}"),
        })?;
        let resume = clone
            .claim_agents
            .last()
            .map(|agent| (agent.as_str(), clone.last_claim_cold));
        let mut observer = StoreObserver {
            store: &self.store,
            job_id: &job.id,
            clone_row: clone.id,
        };
        // Pods being reset (or started) count against a node's limit but will serve soon: wait
        // for one instead of spending the job's attempts on refusals.
        let waiting_since = std::time::Instant::now();
        let claimed = loop {
            match self
                .router
                .claim(
                    &clone_id,
                    &clone.clone_host,
                    CloneScheme::of_url(&clone.clone_url),
                    resume,
                    &mut observer,
                )
                .await
            {
                Ok(claimed) => break claimed,
                Err(RouteError::NoCapacity(why))
                    if waiting_since.elapsed() < CAPACITY_WAIT && self.pods_on_the_way() > 0 =>
                {
                    self.store
                        .set_progress(
                            &job.id,
                            30,
                            format!(
                                "Every node is at its pod limit; waiting for one of {} pods being reset or started ({why})",
                                self.pods_on_the_way()
                            ),
                            now_ms(),
                        )
                        .await?;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    self.router.registry().poll_all().await;
                }
                Err(err) => {
                    return Err(JobFailure {
                        transient: err.is_transient(),
                        code: err.code().into(),
                        message: err.to_string(),
                    })
                }
            }
        };
        let path = ClonePath::from(claimed.response.path);
        let node = claimed.response.node.to_string();
        let (username, password, magic_login_url) = match &self.sites {
            None => {
                // No source import configured: the clone is the pod's fresh WordPress.
                self.store
                    .set_progress(
                        &job.id,
                        80,
                        format!("Pod claimed on {node}; starting the site"),
                        now_ms(),
                    )
                    .await?;
                (
                    claimed.response.credentials.admin_username.clone(),
                    claimed.response.credentials.admin_password.clone(),
                    None,
                )
            }
            Some(source) => {
                let imported = self
                    .import_source(
                        source.as_ref(),
                        job,
                        &claimed.agent,
                        &clone_id,
                        &node,
                        claimed.response.wordpress_version.as_deref(),
                    )
                    .await?;
                (
                    imported.admin_username,
                    imported.admin_password,
                    Some(imported.magic_login_url),
                )
            }
        };
        self.mark_ready(&claimed.agent, &clone_id).await?;
        if let Some(exposure) = &self.exposure {
            // Reachable at its URL before the job says so; a failure is retried with the job
            // (the claim is idempotent), and the reaper withdraws whatever was made.
            exposure
                .expose(&ExposeRequest {
                    clone_id: clone_id.to_string(),
                    pod_id: claimed.response.pod_id.to_string(),
                    agent: claimed.agent.clone(),
                })
                .await
                .map_err(|err| JobFailure {
                    transient: true,
                    code: "clone_route_failed".into(),
                    message: format!("the clone's Service and Ingress could not be made: {err}"),
                })?;
        }
        let outcome = ClaimOutcome {
            agent: claimed.agent.clone(),
            node: claimed.response.node.to_string(),
            pod_id: claimed.response.pod_id.to_string(),
            endpoint: claimed.response.endpoint.clone(),
            path,
            username,
            password,
            magic_login_url,
        };
        // The clone is ready on its agent: record that until it sticks.
        let done_at = now_ms();
        match self
            .until_recorded(&job.id, "completion", || {
                let edge = self.edge.clone();
                self.store.complete_clone_job(
                    &job.id,
                    clone.id,
                    outcome.clone(),
                    done_at,
                    move |ready| edge.insert(ready),
                )
            })
            .await
        {
            Some((done, clone)) => {
                let seconds = (done.updated_at - done.created_at).max(0) as f64 / 1000.0;
                self.metrics.observe_clone(path, seconds);
                self.metrics
                    .job_finished(JobType::Clone, JobState::Completed);
                tracing::info!(job = %job.id, clone = %clone.clone_id, node = %claimed.response.node,
                    path = path.as_str(), seconds, "clone ready");
                Ok(())
            }
            None => {
                // The job stopped being ours meanwhile; hand the pod back.
                tracing::warn!(job = %job.id, "job ended elsewhere while claiming; releasing the pod");
                self.reaper.wake();
                Ok(())
            }
        }
    }
}

impl JobEngine {
    /// Exports the job's source site and streams it into the clone's pod. Every failure is final
    /// (the job fails, the pod is released): the agent has already let go of the pod when its
    /// import failed, and a wrong password does not improve on retry.
    async fn import_source(
        &self,
        source: &dyn SiteClient,
        job: &JobRow,
        agent: &str,
        clone_id: &CloneId,
        node: &str,
        pod_wordpress_version: Option<&str>,
    ) -> Result<clonepool_common::agent_api::ImportResponse, JobFailure> {
        let fail = |code: &str, message: String| JobFailure {
            transient: false,
            code: code.into(),
            message,
        };
        let request: CloneRequest = serde_json::from_str(&job.request_json).map_err(|err| {
            fail(
                clonepool_common::error::codes::INTERNAL,
                format!("the job's stored request is unreadable: {err}"),
            )
        })?;
        let login = WpLogin {
            url: request.source_url.clone(),
            username: request.source_username.clone(),
            password: request.source_password.clone(),
        };
        self.store
            .set_progress(
                &job.id,
                60,
                format!(
                    "Pod claimed on {node}; logging in to {} and checking the clonepool migrator plugin",
                    login.url
                ),
                now_ms(),
            )
            .await?;
        let progress = self.progress_note(&job.id, 65);
        let export = source
            .open_export(&login, pod_wordpress_version, &progress)
            .await
            .map_err(|err| fail(&err.code(SiteRole::Source), err.to_string()))?;
        let with_core = export
            .core_version
            .as_deref()
            .map(|version| format!(" with its WordPress {version} core"))
            .unwrap_or_default();
        self.store
            .set_progress(
                &job.id,
                70,
                format!(
                    "Exporting {}{with_core} and importing it into the clone on {node}",
                    login.url
                ),
                now_ms(),
            )
            .await?;
        let client = self.router.registry().client(agent).ok_or_else(|| {
            fail(
                clonepool_common::error::codes::INTERNAL,
                format!("the agent {agent} is no longer configured"),
            )
        })?;
        let imported = client
            .import(clone_id, export.stream)
            .await
            .map_err(|err| {
                fail(
                    "import_failed",
                    format!("importing {} into the clone failed: {err}", login.url),
                )
            })?;
        self.store
            .set_progress(
                &job.id,
                90,
                format!(
                    "Imported {} ({} bytes, {} files); the clone is starting",
                    login.url, imported.archive_bytes, imported.files
                ),
                now_ms(),
            )
            .await?;
        Ok(imported)
    }

    /// Pods the agents report as being reset or started (they will take claims soon).
    fn pods_on_the_way(&self) -> u32 {
        self.router
            .registry()
            .snapshot()
            .iter()
            .filter(|a| a.accepts_claims())
            .filter_map(|a| a.capacity.as_ref())
            .map(|c| c.resetting + c.starting)
            .sum()
    }

    /// A progress callback for site operations: records `message` at `percent` (in the
    /// background; a lost progress note is harmless).
    fn progress_note(&self, job_id: &str, percent: u8) -> impl Fn(String) + Send + Sync {
        let store = self.store.clone();
        let job_id = job_id.to_string();
        move |message: String| {
            let store = store.clone();
            let job_id = job_id.clone();
            // Stamped now, not when the task runs: the step that follows may be written first.
            let made_at = now_ms();
            tokio::spawn(async move {
                let _ = store
                    .note_progress(&job_id, percent, message, made_at)
                    .await;
            });
        }
    }

    fn sites(&self) -> Result<&dyn SiteClient, JobFailure> {
        self.sites.as_deref().ok_or_else(|| JobFailure {
            transient: false,
            code: "not_configured".into(),
            message: SITES_DISABLED.into(),
        })
    }

    /// Finds the live clone a restore reads from: by name, or (old API) by its URL with the
    /// login its clone job answered.
    async fn restore_source(
        &self,
        source: &RestoreSource,
    ) -> Result<crate::store::CloneRow, JobFailure> {
        let fail = |code: &str, message: String| JobFailure {
            transient: false,
            code: code.into(),
            message,
        };
        let clone = match source {
            RestoreSource::Clone(c) => self.store.clone_by_name(&c.clone_id).await?,
            RestoreSource::Site(site) => {
                let clone = self.store.clone_by_url(&site.url).await?.ok_or_else(|| {
                    fail(
                        "source_not_a_clone",
                        format!(
                            "{} is not the URL of a live clone of this coordinator; a restore \
                             reads from a clone: give source.clone_id, or the clone's URL with \
                             the login its clone job answered",
                            site.url
                        ),
                    )
                })?;
                let credentials = self
                    .store
                    .job(&clone.job_id)
                    .await?
                    .and_then(|job| job.to_status().result)
                    .and_then(|result| match result {
                        JobResult::Clone(r) => Some((r.username, r.password)),
                        _ => None,
                    });
                let matches = credentials.is_some_and(|(user, password)| {
                    user == site.username
                        && crate::auth::ApiTokens::from_tokens(&[password]).accepts(&site.password)
                });
                if !matches {
                    return Err(fail(
                        "source_bad_credentials",
                        format!(
                            "the username or password given for the clone at {} is not the one \
                             its clone job answered",
                            site.url
                        ),
                    ));
                }
                Some(clone)
            }
        };
        let clone = clone.ok_or_else(|| {
            fail(
                "source_clone_not_found",
                "the clone to restore from does not exist".into(),
            )
        })?;
        if clone.status != CloneStatus::Ready {
            return Err(fail(
                "source_clone_not_ready",
                format!(
                    "the clone {} is {}, not ready: only a live, ready clone can be restored",
                    clone.clone_id,
                    clone.status.as_str()
                ),
            ));
        }
        Ok(clone)
    }

    async fn run_restore(&self, job: &JobRow) -> Result<(), JobFailure> {
        let sites = self.sites()?;
        let fail = |transient: bool, code: &str, message: String| JobFailure {
            transient,
            code: code.into(),
            message,
        };
        let request: RestoreRequest = serde_json::from_str(&job.request_json).map_err(|err| {
            fail(
                false,
                clonepool_common::error::codes::INTERNAL,
                format!("the job's stored request is unreadable: {err}"),
            )
        })?;
        let clone = self.restore_source(&request.source).await?;
        let target = WpLogin {
            url: request.target.url.clone(),
            username: request.target.username.clone(),
            password: request.target.password.clone(),
        };
        let target_err = |err: crate::wp_site::SiteError| {
            fail(
                err.is_transient(),
                &err.code(SiteRole::Target),
                err.to_string(),
            )
        };
        // The target first: a wrong password or a missing plugin fails before any export.
        self.store
            .set_progress(
                &job.id,
                10,
                format!(
                    "Logging in to {} and checking the clonepool migrator plugin",
                    target.url
                ),
                now_ms(),
            )
            .await?;
        let info = sites
            .site_info(&target, &self.progress_note(&job.id, 15))
            .await
            .map_err(target_err)?;
        let target_url = info.public_url().to_string();
        let agent = clone.agent.clone().ok_or_else(|| {
            fail(
                false,
                clonepool_common::error::codes::INTERNAL,
                format!("the clone {} has no agent on record", clone.clone_id),
            )
        })?;
        let client = self.router.registry().client(&agent).ok_or_else(|| {
            fail(
                true,
                clonepool_common::error::codes::UNAVAILABLE,
                format!(
                    "the agent {agent} of clone {} is not configured",
                    clone.clone_id
                ),
            )
        })?;
        let node = clone.node.clone().unwrap_or_else(|| agent.clone());
        self.store
            .set_progress(
                &job.id,
                30,
                format!(
                    "Exporting the clone {} on {node} (database and wp-content, URLs rewritten to {target_url})",
                    clone.clone_id
                ),
                now_ms(),
            )
            .await?;
        let clone_id: CloneId = clone.clone_id.parse().map_err(|err| {
            fail(
                false,
                clonepool_common::error::codes::INTERNAL,
                format!("the stored clone id is invalid: {err}"),
            )
        })?;
        let options = PushOptions {
            database: request.database.unwrap_or(true),
            files: request.files.unwrap_or(true),
            tables: request.tables.clone(),
            include_users: request.include_users.unwrap_or(false),
        };
        let archive = client
            .export(&ExportRequest {
                clone_id,
                target_url: target_url.clone(),
                database: options.database,
                files: options.files,
            })
            .await
            .map_err(|err| {
                // Nothing has reached the target yet: an agent that did not answer may be
                // tried again.
                fail(
                    !err.is_definite_refusal(),
                    "source_export_failed",
                    format!("exporting the clone {} failed: {err}", clone.clone_id),
                )
            })?;
        let archive_bytes = archive.len.unwrap_or(0);
        let source_url = if archive.source_url.is_empty() {
            clone.clone_url.clone()
        } else {
            archive.source_url.clone()
        };
        self.store
            .set_progress(
                &job.id,
                60,
                format!(
                    "Pushing the clone to {target_url} ({archive_bytes} bytes); its plugin backs up what it replaces first"
                ),
                now_ms(),
            )
            .await?;
        let report = sites
            .push_import(
                &target,
                archive.stream,
                archive.len,
                &options,
                &self.progress_note(&job.id, 70),
            )
            .await
            .map_err(|err| {
                // Past the login, a push is never repeated automatically.
                let transient = matches!(err, crate::wp_site::SiteError::Unreachable { .. });
                fail(transient, &err.code(SiteRole::Target), err.to_string())
            })?;
        let message = format!(
            "Restored the clone {} to {target_url}: {} tables, {} files written; backup {}",
            clone.clone_id,
            report.tables_imported.len(),
            report.files_written,
            report.backup_id
        );
        let result = JobResult::Restore(RestoreResult {
            target_url,
            source_clone_id: clone.clone_id.clone(),
            source_url,
            backup_id: report.backup_id,
            tables_imported: report.tables_imported,
            files_written: report.files_written,
            files_created: report.files_created,
            files_unchanged: report.files_unchanged,
            skipped_count: report.skipped_count,
            skipped: report.skipped,
            warnings: report.warnings,
            archive_bytes,
        });
        self.finish(job, result, message).await
    }

    async fn run_rollback(&self, job: &JobRow) -> Result<(), JobFailure> {
        let sites = self.sites()?;
        let request: RollbackRequest =
            serde_json::from_str(&job.request_json).map_err(|err| JobFailure {
                transient: false,
                code: clonepool_common::error::codes::INTERNAL.into(),
                message: format!("the job's stored request is unreadable: {err}"),
            })?;
        let target = WpLogin {
            url: request.target.url.clone(),
            username: request.target.username.clone(),
            password: request.target.password.clone(),
        };
        self.store
            .set_progress(
                &job.id,
                20,
                format!(
                    "Logging in to {} and rolling back backup {}",
                    target.url, request.backup_id
                ),
                now_ms(),
            )
            .await?;
        let report = sites
            .rollback(&target, &request.backup_id)
            .await
            .map_err(|err| JobFailure {
                transient: err.is_transient(),
                code: err.code(SiteRole::Target),
                message: err.to_string(),
            })?;
        let message = format!(
            "Rolled back backup {} on {}: {} tables and {} files restored",
            report.backup_id,
            target.url,
            report.tables_restored.len(),
            report.files_restored
        );
        let result = JobResult::Rollback(RollbackResult {
            target_url: target.url.clone(),
            backup_id: report.backup_id,
            tables_restored: report.tables_restored,
            tables_dropped: report.tables_dropped,
            files_restored: report.files_restored,
            files_removed: report.files_removed,
        });
        self.finish(job, result, message).await
    }

    /// Completes a job without a clone.
    async fn finish(
        &self,
        job: &JobRow,
        result: JobResult,
        message: String,
    ) -> Result<(), JobFailure> {
        if self
            .store
            .complete_job(&job.id, result, message.clone(), now_ms())
            .await?
            .is_some()
        {
            self.metrics.job_finished(job.job_type, JobState::Completed);
            tracing::info!(job = %job.id, kind = job.job_type.as_str(), "{message}");
        }
        Ok(())
    }

    async fn mark_ready(&self, agent: &str, clone_id: &CloneId) -> Result<(), JobFailure> {
        let client = self
            .router
            .registry()
            .client(agent)
            .ok_or_else(|| JobFailure {
                transient: false,
                code: clonepool_common::error::codes::INTERNAL.into(),
                message: format!("the agent {agent} is no longer configured"),
            })?;
        client
            .mark_ready(&ReadyRequest {
                clone_id: clone_id.clone(),
            })
            .await
            .map(|_| ())
            .map_err(|err| JobFailure {
                transient: !err.is_definite_refusal(),
                code: "agent_ready_failed".into(),
                message: format!("the agent could not mark the clone's pod ready: {err}"),
            })
    }
}

/// Makes each claim durable before it is sent, and shows it as the job's progress.
struct StoreObserver<'a> {
    store: &'a Store,
    job_id: &'a str,
    clone_row: i64,
}

#[async_trait]
impl ClaimObserver for StoreObserver<'_> {
    async fn before_claim(&mut self, agent: &AgentView, cold: bool) -> Result<(), RouteError> {
        self.store
            .record_claim_attempt(self.clone_row, &agent.url, cold)
            .await
            .map_err(|err| RouteError::Observer(err.to_string()))?;
        let node = agent.node().unwrap_or(&agent.url).to_string();
        let message = if cold {
            format!("No warm pod is free; creating a cold pod on {node}")
        } else {
            format!("Claiming a warm pod on {node}")
        };
        self.store
            .set_progress(self.job_id, if cold { 40 } else { 50 }, message, now_ms())
            .await
            .map_err(|err| RouteError::Observer(err.to_string()))
    }

    async fn refused(&mut self, agent: &str) {
        if let Err(err) = self.store.forget_claim_agent(self.clone_row, agent).await {
            tracing::warn!(error = %err, "cannot record an agent's refusal");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_client::fake::FakeAgent;
    use crate::agent_client::AgentClient;
    use crate::config::Placement;
    use crate::exposure::fake::FakeExposure;
    use crate::registry::AgentRegistry;
    use crate::store::tests::{clone_job, open_temp};
    use crate::wp_site::fake::FakeSite as FakeSource;
    use crate::wp_site::SiteError as SourceError;
    use clonepool_common::api::{CloneStatus, JobResult};

    struct Harness {
        _dir: tempfile::TempDir,
        store: Store,
        engine: Arc<JobEngine>,
        registry: Arc<AgentRegistry>,
        reaper: Arc<Reaper>,
    }

    async fn harness(agents: &[Arc<FakeAgent>], max_attempts: u32) -> Harness {
        harness_with(agents, max_attempts, None).await
    }

    async fn harness_with(
        agents: &[Arc<FakeAgent>],
        max_attempts: u32,
        source: Option<Arc<FakeSource>>,
    ) -> Harness {
        harness_full(agents, max_attempts, source, None).await
    }

    async fn harness_full(
        agents: &[Arc<FakeAgent>],
        max_attempts: u32,
        source: Option<Arc<FakeSource>>,
        exposure: Option<Arc<FakeExposure>>,
    ) -> Harness {
        let (dir, store) = open_temp();
        let clients: Vec<Arc<dyn AgentClient>> = agents
            .iter()
            .map(|a| a.clone() as Arc<dyn AgentClient>)
            .collect();
        let registry = Arc::new(AgentRegistry::new(clients, Duration::from_secs(60)));
        registry.poll_all().await;
        let router = Arc::new(Router::new(registry.clone(), Placement::Spread));
        let edge = EdgeRoutes::default();
        let metrics = Metrics::new();
        let mut reaper = Reaper::new(
            store.clone(),
            registry.clone(),
            edge.clone(),
            metrics.clone(),
        );
        if let Some(exposure) = &exposure {
            reaper = reaper.with_exposure(exposure.clone());
        }
        let reaper = Arc::new(reaper);
        let mut engine = JobEngine::new(
            store.clone(),
            router,
            reaper.clone(),
            edge,
            metrics,
            EngineSettings {
                max_concurrent: 4,
                max_attempts,
                backoff_base: Duration::from_millis(1),
            },
        );
        if let Some(exposure) = exposure {
            engine = engine.with_exposure(exposure);
        }
        let engine = Arc::new(match source {
            Some(source) => engine.with_sites(source),
            None => engine,
        });
        Harness {
            _dir: dir,
            store,
            engine,
            registry,
            reaper,
        }
    }

    #[tokio::test]
    async fn a_clone_job_with_a_source_imports_it_and_answers_the_imported_login_and_magic_link() {
        let agent = FakeAgent::new("http://a", "node-a", 1, 2);
        let source = Arc::new(FakeSource::default());
        let h = harness_with(std::slice::from_ref(&agent), 3, Some(source.clone())).await;
        h.store
            .create_job(clone_job("job-1", "shop", now_ms()))
            .await
            .unwrap();
        run_until_idle(&h).await;
        let job = h.store.job("job-1").await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Completed, "{:?}", job.error);
        let Some(JobResult::Clone(result)) = job.to_status().result else {
            panic!("no result");
        };
        assert_eq!(result.username, "siteadmin");
        assert_eq!(result.password, "imported-password");
        assert_eq!(
            result.magic_login_url.as_deref(),
            Some("http://shop.localhost:8080/?clonepool_login=fake-token")
        );
        assert_eq!(*source.opened.lock().unwrap(), ["https://a.example/"]);
        assert_eq!(
            agent.with(|s| s.imported.clone()),
            [("shop".to_string(), 7)]
        );
    }

    #[tokio::test]
    async fn a_source_that_refuses_the_login_fails_the_job_clearly_and_releases_the_pod() {
        let agent = FakeAgent::new("http://a", "node-a", 1, 2);
        let source = Arc::new(FakeSource::default());
        *source.fail.lock().unwrap() = Some(SourceError::BadCredentials("admin".into()));
        let h = harness_with(std::slice::from_ref(&agent), 3, Some(source.clone())).await;
        h.store
            .create_job(clone_job("job-1", "shop", now_ms()))
            .await
            .unwrap();
        run_until_idle(&h).await;
        let job = h.store.job("job-1").await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.error_code.as_deref(), Some("source_bad_credentials"));
        assert!(job
            .error
            .as_deref()
            .unwrap()
            .contains("refused the username or password of admin"));
        assert_eq!(
            source.opened.lock().unwrap().len(),
            1,
            "no retry with a wrong password"
        );
        let clone = h.store.clone_by_name("shop").await.unwrap().unwrap();
        h.reaper.release(&clone).await.unwrap();
        assert_eq!(
            agent.with(|s| s.release_calls.get("shop").copied()),
            Some(1)
        );
    }

    #[tokio::test]
    async fn a_missing_plugin_fails_with_how_to_install_it_by_hand() {
        let agent = FakeAgent::new("http://a", "node-a", 1, 2);
        let source = Arc::new(FakeSource::default());
        *source.fail.lock().unwrap() = Some(SourceError::PluginMissing("upload refused".into()));
        let h = harness_with(&[agent], 3, Some(source)).await;
        h.store
            .create_job(clone_job("job-1", "shop", now_ms()))
            .await
            .unwrap();
        run_until_idle(&h).await;
        let job = h.store.job("job-1").await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed);
        let error = job.error.unwrap();
        assert!(
            error.contains("installing it failed: upload refused")
                && error.contains("upload it under Plugins")
                && error.contains("docs/migrator.md"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_import_the_agent_refuses_fails_the_job_with_the_agents_reason() {
        let agent = FakeAgent::new("http://a", "node-a", 1, 2);
        agent.with(|s| {
            s.import_error = Some(crate::agent_client::AgentError::Refused {
                status: 400,
                code: "bad_request".into(),
                message: "hostile archive: entry \"/etc/passwd\" is an absolute path".into(),
            })
        });
        let h = harness_with(&[agent], 3, Some(Arc::new(FakeSource::default()))).await;
        h.store
            .create_job(clone_job("job-1", "shop", now_ms()))
            .await
            .unwrap();
        run_until_idle(&h).await;
        let job = h.store.job("job-1").await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.error_code.as_deref(), Some("import_failed"));
        assert!(job.error.unwrap().contains("is an absolute path"));
    }

    async fn run_until_idle(h: &Harness) {
        for _ in 0..50 {
            match h.store.start_next_job(now_ms() + 60_000).await.unwrap() {
                Some(job) => h.engine.run_job(job).await,
                None => return,
            }
        }
        panic!("jobs never finished");
    }

    #[tokio::test]
    async fn a_clone_job_completes_warm_with_the_pods_credentials() {
        let agent = FakeAgent::new("http://a", "node-a", 1, 2);
        let h = harness(std::slice::from_ref(&agent), 3).await;
        h.store
            .create_job(clone_job("job-1", "shop", now_ms()))
            .await
            .unwrap();
        run_until_idle(&h).await;
        let job = h.store.job("job-1").await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Completed, "{:?}", job.error);
        let Some(JobResult::Clone(result)) = job.to_status().result else {
            panic!("no result");
        };
        assert_eq!(result.path, ClonePath::Warm);
        assert_eq!(result.node, "node-a");
        assert_eq!(result.password, "fresh-password");
        assert_eq!(result.clone_url, "http://shop.localhost:8080");
        let clone = h.store.clone_by_name("shop").await.unwrap().unwrap();
        assert_eq!(clone.status, CloneStatus::Ready);
        assert_eq!(job.progress, 100);
        assert!(
            agent.with(|s| s.ready.contains("shop")),
            "the pod was marked READY"
        );
    }

    #[tokio::test]
    async fn a_clone_is_exposed_at_its_url_before_its_job_completes_and_withdrawn_when_it_ends() {
        let agent = FakeAgent::new("http://a", "node-a", 1, 2);
        let exposure = Arc::new(FakeExposure::default());
        let h = harness_full(
            std::slice::from_ref(&agent),
            3,
            None,
            Some(exposure.clone()),
        )
        .await;
        h.store
            .create_job(clone_job("job-1", "shop", now_ms()))
            .await
            .unwrap();
        run_until_idle(&h).await;
        let job = h.store.job("job-1").await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Completed, "{:?}", job.error);
        let clone = h.store.clone_by_name("shop").await.unwrap().unwrap();
        assert_eq!(
            exposure.with(|s| s.exposed.get("shop").cloned()),
            clone.pod_id,
            "routed to the claimed pod"
        );
        h.store.end_clone("shop", now_ms()).await.unwrap();
        h.reaper.tick(now_ms()).await.unwrap();
        assert!(exposure.with(|s| s.exposed.is_empty()));
        assert_eq!(agent.with(|s| s.release_calls["shop"]), 1);
    }

    #[tokio::test]
    async fn a_clone_that_cannot_be_exposed_is_retried_then_fails_and_its_pod_goes_back() {
        let agent = FakeAgent::new("http://a", "node-a", 1, 2);
        let exposure = Arc::new(FakeExposure::default());
        exposure.with(|s| s.fail_expose = true);
        let h = harness_full(
            std::slice::from_ref(&agent),
            2,
            None,
            Some(exposure.clone()),
        )
        .await;
        h.store
            .create_job(clone_job("job-1", "shop", now_ms()))
            .await
            .unwrap();
        run_until_idle(&h).await;
        let job = h.store.job("job-1").await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.error_code.as_deref(), Some("clone_route_failed"));
        assert_eq!(job.attempts, 2, "retried like any transient failure");
        assert_eq!(
            agent.with(|s| s.claims.len()),
            1,
            "the retry got the same pod"
        );
        h.reaper.tick(now_ms()).await.unwrap();
        assert_eq!(agent.with(|s| s.release_calls["shop"]), 1);
        assert_eq!(exposure.with(|s| s.withdrawn.clone()), ["shop"]);
    }

    #[tokio::test]
    async fn a_job_attempt_that_panics_fails_clearly_instead_of_staying_running() {
        let agent = FakeAgent::new("http://a", "node-a", 1, 2);
        agent.with(|s| s.panic_on_claim = true);
        let h = harness(std::slice::from_ref(&agent), 3).await;
        h.store
            .create_job(clone_job("job-1", "boom", now_ms()))
            .await
            .unwrap();
        let job = h.store.start_next_job(now_ms()).await.unwrap().unwrap();
        h.engine.clone().run_job_guarded(job).await;
        let job = h.store.job("job-1").await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed);
        let error = job.to_status().error.unwrap_or_default();
        assert!(error.contains("internal error"), "{error}");
    }

    #[tokio::test]
    async fn with_the_pool_exhausted_the_next_clone_goes_cold() {
        let agent = FakeAgent::new("http://a", "node-a", 1, 3);
        let h = harness(std::slice::from_ref(&agent), 3).await;
        h.store
            .create_job(clone_job("job-1", "one", now_ms()))
            .await
            .unwrap();
        h.store
            .create_job(clone_job("job-2", "two", now_ms() + 1))
            .await
            .unwrap();
        run_until_idle(&h).await;
        let path = |id: &'static str| {
            let store = h.store.clone();
            async move {
                match store.job(id).await.unwrap().unwrap().to_status().result {
                    Some(JobResult::Clone(r)) => r.path,
                    other => panic!("{id} has no clone result: {other:?}"),
                }
            }
        };
        assert_eq!(path("job-1").await, ClonePath::Warm);
        assert_eq!(path("job-2").await, ClonePath::Cold);
    }

    #[tokio::test]
    async fn transient_failures_are_retried_and_then_fail_clearly() {
        let agent = FakeAgent::new("http://a", "node-a", 0, 0);
        let h = harness(std::slice::from_ref(&agent), 3).await;
        h.store
            .create_job(clone_job("job-1", "x", now_ms()))
            .await
            .unwrap();
        run_until_idle(&h).await;
        let job = h.store.job("job-1").await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.attempts, 3);
        assert_eq!(job.error_code.as_deref(), Some("no_capacity"));
        assert!(job.error.unwrap().contains("gave up after 3 attempts"));
        // Nothing was claimed, so the clone ended released and its name is free again.
        let clone = h.store.clone_by_name("x").await.unwrap().unwrap();
        assert_eq!(clone.status, CloneStatus::Released);
    }

    #[tokio::test]
    async fn capacity_that_frees_up_between_attempts_is_used() {
        let agent = FakeAgent::new("http://a", "node-a", 0, 0);
        let h = harness(std::slice::from_ref(&agent), 3).await;
        h.store
            .create_job(clone_job("job-1", "x", now_ms()))
            .await
            .unwrap();
        let job = h.store.start_next_job(now_ms()).await.unwrap().unwrap();
        h.engine.run_job(job).await;
        assert_eq!(
            h.store.job("job-1").await.unwrap().unwrap().state,
            JobState::Pending
        );
        agent.with(|s| s.warm = 1);
        h.registry.poll_all().await;
        run_until_idle(&h).await;
        let job = h.store.job("job-1").await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Completed);
        assert_eq!(job.attempts, 2);
    }

    #[tokio::test]
    async fn a_job_interrupted_after_its_claim_resumes_with_the_same_pod() {
        let agent = FakeAgent::new("http://a", "node-a", 2, 2);
        let h = harness(std::slice::from_ref(&agent), 3).await;
        h.store
            .create_job(clone_job("job-1", "x", now_ms()))
            .await
            .unwrap();
        // The claim takes effect on the agent but its answer is lost (as if the coordinator
        // died right after sending it).
        agent.with(|s| s.lose_claim_answers = 1);
        let job = h.store.start_next_job(now_ms()).await.unwrap().unwrap();
        let clone = h.store.clone_for_job(&job.id).await.unwrap().unwrap();
        let mut observer = StoreObserver {
            store: &h.store,
            job_id: &job.id,
            clone_row: clone.id,
        };
        let err = h
            .engine
            .router
            .claim(
                &"x".parse().unwrap(),
                "h",
                CloneScheme::Http,
                None,
                &mut observer,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, RouteError::Ambiguous { .. }));
        // Restart: recovery resumes the job and it finishes with the pod already claimed.
        let recovered = h.engine.recover().await.unwrap();
        assert_eq!(recovered, vec![Recovered::Resumed("job-1".into())]);
        run_until_idle(&h).await;
        assert_eq!(
            h.store.job("job-1").await.unwrap().unwrap().state,
            JobState::Completed
        );
        assert_eq!(agent.with(|s| s.claims.len()), 1, "no second pod");
        assert_eq!(agent.with(|s| s.warm), 1);
    }

    #[tokio::test]
    async fn a_job_that_fails_after_an_unanswered_claim_hands_the_pod_back() {
        let agent = FakeAgent::new("http://a", "node-a", 1, 1);
        let h = harness(std::slice::from_ref(&agent), 1).await;
        h.store
            .create_job(clone_job("job-1", "x", now_ms()))
            .await
            .unwrap();
        agent.with(|s| s.lose_claim_answers = 1);
        run_until_idle(&h).await;
        let job = h.store.job("job-1").await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.error_code.as_deref(), Some("agent_unavailable"));
        let clone = h.store.clone_by_name("x").await.unwrap().unwrap();
        assert_eq!(clone.status, CloneStatus::Releasing);
        h.engine.reaper.tick(now_ms()).await.unwrap();
        assert_eq!(
            agent.with(|s| s.warm),
            1,
            "the stray pod went back to the pool"
        );
        assert_eq!(
            h.store.clone_by_name("x").await.unwrap().unwrap().status,
            CloneStatus::Released
        );
    }

    #[tokio::test]
    async fn a_clone_waits_for_a_pod_being_reset_when_every_node_is_full() {
        let agent = FakeAgent::new("http://a", "node-a", 1, 1);
        let h = harness(std::slice::from_ref(&agent), 3).await;
        h.store
            .create_job(clone_job("job-1", "first", now_ms()))
            .await
            .unwrap();
        run_until_idle(&h).await;
        // The only pod is taken; the node reports it resetting soon after.
        agent.with(|s| s.resetting = 1);
        h.registry.poll_all().await;
        h.store
            .create_job(clone_job("job-2", "second", now_ms()))
            .await
            .unwrap();
        let freer = agent.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            freer.with(|s| {
                s.claims.remove("first");
                s.resetting = 0;
                s.warm += 1;
            });
        });
        run_until_idle(&h).await;
        let job = h.store.job("job-2").await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Completed, "{:?}", job.error);
        assert_eq!(job.attempts, 1, "the wait spent no attempt");
    }

    /// A ready clone "shop" made through `h`, then a restore or rollback job `job_id` with
    /// `request` as its body.
    async fn queue_site_job(
        h: &Harness,
        job_id: &str,
        job_type: JobType,
        request: serde_json::Value,
    ) {
        let mut job = clone_job(job_id, "unused", now_ms());
        job.job_type = job_type;
        job.clone = None;
        job.request_json = request.to_string();
        h.store.create_job(job).await.unwrap();
    }

    async fn ready_clone(h: &Harness) {
        h.store
            .create_job(clone_job("job-c", "shop", now_ms()))
            .await
            .unwrap();
        run_until_idle(h).await;
        let job = h.store.job("job-c").await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Completed, "{:?}", job.error);
    }

    fn target() -> serde_json::Value {
        serde_json::json!({"url": "https://prod.example", "username": "boss", "password": "prod-pw"})
    }

    #[tokio::test]
    async fn a_restore_exports_the_clone_through_its_agent_for_the_target_and_pushes_it() {
        let agent = FakeAgent::new("http://a", "node-a", 1, 2);
        let site = Arc::new(FakeSource::default());
        let h = harness_with(std::slice::from_ref(&agent), 3, Some(site.clone())).await;
        ready_clone(&h).await;
        queue_site_job(
            &h,
            "job-r",
            JobType::Restore,
            serde_json::json!({"source": {"clone_id": "shop"}, "target": target(),
                               "tables": ["wp_posts"], "files": false}),
        )
        .await;
        run_until_idle(&h).await;
        let job = h.store.job("job-r").await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Completed, "{:?}", job.error);
        let exports = agent.with(|s| s.exports.clone());
        assert_eq!(exports.len(), 1);
        assert_eq!(exports[0].clone_id.as_str(), "shop");
        assert_eq!(exports[0].target_url, "https://prod.example");
        assert!(!exports[0].files, "files: false reaches the export");
        let pushed = site.pushed.lock().unwrap().clone();
        assert_eq!(pushed.len(), 1);
        assert_eq!(pushed[0].0, "https://prod.example");
        assert_eq!(
            String::from_utf8_lossy(&pushed[0].1),
            "archive of shop for https://prod.example",
            "the agent's archive is what reaches the target"
        );
        assert_eq!(
            pushed[0].2.tables.as_deref(),
            Some(&["wp_posts".to_string()][..])
        );
        assert!(!pushed[0].2.include_users, "users stay unless asked");
        let Some(JobResult::Restore(result)) = job.to_status().result else {
            panic!("no restore result: {:?}", job.to_status())
        };
        assert_eq!(result.backup_id, "20261125T000000Z-0123456789abcdef");
        assert_eq!(result.source_clone_id, "shop");
        assert_eq!(result.tables_imported, ["wp_posts"]);
        assert!(
            !job.request_json.contains("prod-pw"),
            "the target password is forgotten once the job ends"
        );
    }

    #[tokio::test]
    async fn a_restore_named_by_the_clone_url_needs_the_login_its_clone_job_answered() {
        let agent = FakeAgent::new("http://a", "node-a", 1, 2);
        let site = Arc::new(FakeSource::default());
        let h = harness_with(std::slice::from_ref(&agent), 3, Some(site.clone())).await;
        ready_clone(&h).await;
        let clone_url = h
            .store
            .clone_by_name("shop")
            .await
            .unwrap()
            .unwrap()
            .clone_url;
        let by_url = |password: &str| {
            serde_json::json!({"source": {"url": clone_url, "username": "siteadmin", "password": password},
                               "target": target()})
        };
        queue_site_job(&h, "job-bad", JobType::Restore, by_url("guess")).await;
        run_until_idle(&h).await;
        let bad = h.store.job("job-bad").await.unwrap().unwrap();
        assert_eq!(bad.state, JobState::Failed);
        assert_eq!(bad.error_code.as_deref(), Some("source_bad_credentials"));
        assert!(site.pushed.lock().unwrap().is_empty(), "nothing pushed");
        queue_site_job(
            &h,
            "job-good",
            JobType::Restore,
            by_url("imported-password"),
        )
        .await;
        run_until_idle(&h).await;
        let good = h.store.job("job-good").await.unwrap().unwrap();
        assert_eq!(good.state, JobState::Completed, "{:?}", good.error);
    }

    #[tokio::test]
    async fn a_target_that_refuses_fails_the_restore_once_and_an_unreachable_one_is_retried() {
        let agent = FakeAgent::new("http://a", "node-a", 1, 2);
        let site = Arc::new(FakeSource::default());
        let h = harness_with(std::slice::from_ref(&agent), 3, Some(site.clone())).await;
        ready_clone(&h).await;
        *site.fail.lock().unwrap() = Some(SourceError::ImportFailed {
            message: "clonepool_import_failed: disk full".into(),
            backup_id: Some("20261125T000000Z-00000000000000aa".into()),
            rolled_back: true,
            rollback_error: None,
        });
        let request = serde_json::json!({"source": {"clone_id": "shop"}, "target": target()});
        queue_site_job(&h, "job-1", JobType::Restore, request.clone()).await;
        run_until_idle(&h).await;
        let job = h.store.job("job-1").await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.attempts, 1, "a push is never repeated by itself");
        assert_eq!(job.error_code.as_deref(), Some("target_import_failed"));
        assert!(
            job.error
                .unwrap()
                .contains("put back as it was from its backup 20261125T000000Z-00000000000000aa"),
            "the user learns the target was rolled back"
        );
        *site.fail.lock().unwrap() = Some(SourceError::Unreachable {
            url: "https://prod.example".into(),
            detail: "connection refused".into(),
        });
        queue_site_job(&h, "job-2", JobType::Restore, request).await;
        run_until_idle(&h).await;
        let job = h.store.job("job-2").await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.attempts, 3, "nothing reached the target: tried again");
        assert_eq!(job.error_code.as_deref(), Some("target_unreachable"));
    }

    #[tokio::test]
    async fn a_rollback_job_restores_the_named_backup_on_the_target() {
        let site = Arc::new(FakeSource::default());
        let h = harness_with(&[], 3, Some(site.clone())).await;
        queue_site_job(
            &h,
            "job-rb",
            JobType::Rollback,
            serde_json::json!({"target": target(), "backup_id": "20261125T094617Z-2738fe086624f1cf"}),
        )
        .await;
        run_until_idle(&h).await;
        let job = h.store.job("job-rb").await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Completed, "{:?}", job.error);
        assert_eq!(
            site.rolled_back.lock().unwrap().clone(),
            [(
                "https://prod.example".to_string(),
                "20261125T094617Z-2738fe086624f1cf".to_string()
            )]
        );
        let Some(JobResult::Rollback(result)) = job.to_status().result else {
            panic!("no rollback result")
        };
        assert_eq!(result.tables_restored, ["wp_posts"]);
    }

    #[tokio::test]
    async fn the_dispatcher_runs_queued_jobs_concurrently_and_drains_on_shutdown() {
        let agent = FakeAgent::new("http://a", "node-a", 10, 10);
        // Claims long enough that the slots overlap even when a thread stalls for a while.
        agent.with(|s| s.claim_delay = Some(Duration::from_millis(200)));
        let h = harness(std::slice::from_ref(&agent), 3).await;
        for i in 0..8 {
            h.store
                .create_job(clone_job(&format!("job-{i}"), &format!("c{i}"), now_ms()))
                .await
                .unwrap();
        }
        let (tx, rx) = watch::channel(false);
        let started = std::time::Instant::now();
        let task = tokio::spawn(h.engine.clone().run(rx, Duration::from_secs(5)));
        h.engine.wake();
        loop {
            let counts = h.store.job_counts().await.unwrap();
            if counts.contains(&(JobState::Completed, 8)) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "{counts:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let most = agent.with(|s| s.max_in_flight);
        assert!((2..=4).contains(&most), "{most} claims at once; 4 slots");
        tx.send(true).unwrap();
        task.await.unwrap();
        let pods: std::collections::HashSet<String> =
            agent.with(|s| s.claims.values().map(|(p, _)| p.clone()).collect());
        assert_eq!(pods.len(), 8, "no pod handed out twice");
    }
}
