//! Ending clones: the TTL reaper moves each expired clone to `releasing` exactly once (a
//! guarded update), and the releaser hands the pod back to its agent (which resets it to
//! WARM) — retried only when the agent did not confirm, never sent twice in one process
//! (an in-flight set guards against the reaper and a DELETE racing). Also prunes old rows.

use crate::agent_client::AgentError;
use crate::edge::EdgeRoutes;
use crate::exposure::CloneExposure;
use crate::metrics::Metrics;
use crate::registry::AgentRegistry;
use crate::store::{CloneRow, Store, StoreError};
use crate::timestamps::now_ms;
use clonepool_common::agent_api::ReleaseRequest;
use clonepool_common::api::CloneStatus;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// How long idempotency keys are kept.
const IDEMPOTENCY_RETENTION_MS: i64 = 24 * 3600 * 1000;
/// How long finished jobs (and their ended clones) are kept.
const JOB_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// Every agent that may hold a pod for the clone confirmed; the clone is `released`.
    Released,
    /// Another task is releasing it right now.
    InFlight,
    /// Some agent did not confirm; the reaper retries.
    Pending(String),
}

pub struct Reaper {
    store: Store,
    registry: Arc<AgentRegistry>,
    edge: EdgeRoutes,
    metrics: Metrics,
    in_flight: Mutex<HashSet<i64>>,
    /// Clones whose last release was not confirmed: when to try again, and how often it failed.
    backoff: Mutex<HashMap<i64, (Instant, u32)>>,
    wake: Notify,
    exposure: Option<Arc<dyn CloneExposure>>,
}

struct InFlightGuard<'a> {
    set: &'a Mutex<HashSet<i64>>,
    id: i64,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Reaper {
    pub fn new(
        store: Store,
        registry: Arc<AgentRegistry>,
        edge: EdgeRoutes,
        metrics: Metrics,
    ) -> Self {
        Self {
            store,
            registry,
            edge,
            metrics,
            in_flight: Mutex::new(HashSet::new()),
            backoff: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            exposure: None,
        }
    }

    /// Clones are withdrawn from `exposure` before their pods are handed back.
    pub fn with_exposure(mut self, exposure: Arc<dyn CloneExposure>) -> Self {
        self.exposure = Some(exposure);
        self
    }

    /// A release that could not go on: try again after a growing delay.
    fn back_off(&self, clone: &CloneRow, why: &str) -> ReleaseOutcome {
        let mut backoff = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let failures = backoff.get(&clone.id).map_or(0, |(_, n)| *n) + 1;
        let delay = Duration::from_secs(1 << failures.min(6)).min(Duration::from_secs(60));
        backoff.insert(clone.id, (Instant::now() + delay, failures));
        tracing::warn!(clone = %clone.clone_id, problems = %why, "release not confirmed; will retry");
        ReleaseOutcome::Pending(why.to_string())
    }

    /// Asks the loop to run now (a clone started releasing elsewhere).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Hands a `releasing` clone's pod back to every agent that may hold one for it.
    pub async fn release(&self, clone: &CloneRow) -> Result<ReleaseOutcome, StoreError> {
        let _guard = {
            let mut set = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if !set.insert(clone.id) {
                return Ok(ReleaseOutcome::InFlight);
            }
            InFlightGuard {
                set: &self.in_flight,
                id: clone.id,
            }
        };
        // Re-read under the guard: another pass may have finished this release since `clone`
        // was read.
        let clone = match self.store.clone_row(clone.id).await? {
            Some(fresh) if fresh.status == CloneStatus::Releasing => fresh,
            _ => return Ok(ReleaseOutcome::Released),
        };
        self.edge.remove(&clone.clone_id);
        if let Some(exposure) = &self.exposure {
            // The clone's name must stop reaching the pod before the pod can serve another clone.
            if let Err(err) = exposure.withdraw(&clone.clone_id).await {
                return Ok(self.back_off(
                    &clone,
                    &format!("withdrawing the clone's Service and Ingress: {err}"),
                ));
            }
        }
        // Every agent that may hold a pod for the clone (the serving one included); each is
        // forgotten once it confirms, so a retry asks only those that did not.
        let agents = clone.claim_agents.clone();
        let clone_id = match clone.clone_id.parse() {
            Ok(id) => id,
            Err(err) => {
                return Err(StoreError::Corrupt(format!(
                    "clone {:?}: {err}",
                    clone.clone_id
                )))
            }
        };
        let request = ReleaseRequest { clone_id };
        let mut problems = Vec::new();
        for url in agents {
            let Some(client) = self.registry.client(&url) else {
                tracing::warn!(clone = %clone.clone_id, agent = %url,
                    "releasing a clone on an agent that is no longer configured: skipped");
                self.store.forget_claim_agent(clone.id, &url).await?;
                continue;
            };
            match client.release(&request).await {
                Ok(response) => {
                    tracing::info!(clone = %clone.clone_id, pod = %response.pod_id, agent = %url,
                        "released; the agent resets the pod");
                    self.store.forget_claim_agent(clone.id, &url).await?;
                }
                Err(AgentError::NotFound(_)) => {
                    // The agent holds nothing for this clone (never claimed, or already released).
                    self.store.forget_claim_agent(clone.id, &url).await?;
                }
                Err(err) => problems.push(format!("{url}: {err}")),
            }
        }
        if !problems.is_empty() {
            return Ok(self.back_off(&clone, &problems.join("; ")));
        }
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&clone.id);
        if self.store.finish_release(clone.id, now_ms()).await? {
            self.metrics
                .clone_released(clone.end_reason.as_deref().unwrap_or("other"));
        }
        Ok(ReleaseOutcome::Released)
    }

    /// One pass: expire due clones, then release every `releasing` clone not already in
    /// flight. Returns how many clones expired in this pass.
    pub async fn tick(&self, now: i64) -> Result<usize, StoreError> {
        let expired = self.store.expire_due(now).await?;
        for clone in &expired {
            tracing::info!(clone = %clone.clone_id, "clone expired");
            self.edge.remove(&clone.clone_id);
            // The URL stops at expiry even while its agent is down and the pod cannot go back
            // yet (`release` withdraws again, and hands the pod back only once that worked).
            if let Some(exposure) = &self.exposure {
                if let Err(err) = exposure.withdraw(&clone.clone_id).await {
                    tracing::warn!(clone = %clone.clone_id, error = %err, "withdrawing an expired clone's Service and Ingress failed; retrying at release");
                }
            }
        }
        for clone in self.store.releasing_clones().await? {
            // Wait for agents that are down; an unknown agent is handled by `release`.
            let agents = &clone.claim_agents;
            let all_down = !agents.is_empty()
                && agents
                    .iter()
                    .all(|url| self.registry.view(url).is_some_and(|view| !view.up));
            let waiting = self
                .backoff
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&clone.id)
                .is_some_and(|(at, _)| *at > Instant::now());
            if all_down || waiting {
                continue;
            }
            // One clone that cannot be released must not hold up the others.
            if let Err(err) = self.release(&clone).await {
                tracing::warn!(clone = %clone.id, error = %err, "releasing an expired clone failed; retrying next pass");
            }
        }
        Ok(expired.len())
    }

    /// Runs [`Reaper::tick`] every `interval` (or when woken), and prunes old rows hourly,
    /// until `shutdown`.
    pub async fn run(self: Arc<Self>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut last_prune = 0i64;
        loop {
            let now = now_ms();
            if let Err(err) = self.tick(now).await {
                tracing::error!(error = %err, "reaper pass failed");
            }
            if now - last_prune > 3600 * 1000 {
                last_prune = now;
                match self
                    .store
                    .prune(now - IDEMPOTENCY_RETENTION_MS, now - JOB_RETENTION_MS)
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(jobs = n, "pruned finished jobs older than 7 days"),
                    Err(err) => tracing::error!(error = %err, "pruning old jobs failed"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_client::fake::FakeAgent;
    use crate::agent_client::AgentClient;
    use crate::store::tests::{clone_job, open_temp};
    use crate::store::{ClaimOutcome, EndOutcome};
    use clonepool_common::api::ClonePath;

    async fn ready_clone(store: &Store, agent: &Arc<FakeAgent>, name: &str, now: i64) -> CloneRow {
        let job_id = format!("job-{name}");
        store
            .create_job(clone_job(&job_id, name, now))
            .await
            .unwrap();
        let job = store.start_next_job(now).await.unwrap().unwrap();
        let clone = store.clone_for_job(&job.id).await.unwrap().unwrap();
        let claim = agent
            .claim(&clonepool_common::agent_api::ClaimRequest {
                clone_id: name.parse().unwrap(),
                clone_host: "h".into(),
                clone_scheme: Default::default(),
                allow_cold: false,
            })
            .await
            .unwrap();
        let (_, clone) = store
            .complete_clone_job(
                &job.id,
                clone.id,
                ClaimOutcome {
                    agent: agent.url.clone(),
                    node: claim.node.to_string(),
                    pod_id: claim.pod_id.to_string(),
                    endpoint: claim.endpoint,
                    path: ClonePath::Warm,
                    username: "admin".into(),
                    password: "pw".into(),
                    magic_login_url: None,
                },
                now,
                |_| {},
            )
            .await
            .unwrap()
            .unwrap();
        clone
    }

    fn reaper(store: &Store, agent: &Arc<FakeAgent>) -> (Arc<Reaper>, Arc<AgentRegistry>) {
        let registry = Arc::new(AgentRegistry::new(
            vec![agent.clone() as Arc<dyn AgentClient>],
            Duration::from_secs(60),
        ));
        let reaper = Arc::new(Reaper::new(
            store.clone(),
            registry.clone(),
            EdgeRoutes::default(),
            Metrics::new(),
        ));
        (reaper, registry)
    }

    #[tokio::test]
    async fn each_expired_clone_is_released_exactly_once_even_with_racing_passes_and_deletes() {
        let (_dir, store) = open_temp();
        let agent = FakeAgent::new("http://a", "node-a", 5, 5);
        let (reaper, registry) = reaper(&store, &agent);
        registry.poll_all().await;
        for name in ["a", "b", "c"] {
            ready_clone(&store, &agent, name, 0).await;
        }
        assert_eq!(agent.with(|s| s.warm), 2);
        let later = 31 * 60_000;
        // Three racing passes plus a racing DELETE.
        let (r1, r2, r3, deleted) = tokio::join!(
            reaper.tick(later),
            reaper.tick(later),
            reaper.tick(later),
            store.end_clone("a", later)
        );
        let expired = r1.unwrap() + r2.unwrap() + r3.unwrap();
        assert!(matches!(
            deleted.unwrap(),
            // Depending on timing the DELETE finds it expiring, ready, or already released.
            EndOutcome::AlreadyReleasing(_) | EndOutcome::Releasing(_) | EndOutcome::NotFound
        ));
        reaper.tick(later).await.unwrap();
        assert!(expired <= 3);
        for name in ["a", "b", "c"] {
            assert_eq!(
                agent.with(|s| s.release_calls.get(name).copied()),
                Some(1),
                "{name} released once"
            );
            let clone = store.clone_by_name(name).await.unwrap().unwrap();
            assert_eq!(clone.status, CloneStatus::Released);
        }
        assert_eq!(agent.with(|s| s.warm), 5, "every pod is back in the pool");
        // Later passes release nothing more.
        reaper.tick(later + 60_000).await.unwrap();
        assert_eq!(agent.with(|s| s.release_calls.values().sum::<u32>()), 3);
    }

    #[tokio::test]
    async fn a_release_the_agent_did_not_confirm_is_retried_until_it_does() {
        let (_dir, store) = open_temp();
        let agent = FakeAgent::new("http://a", "node-a", 1, 1);
        let (reaper, registry) = reaper(&store, &agent);
        registry.poll_all().await;
        let clone = ready_clone(&store, &agent, "x", 0).await;
        let EndOutcome::Releasing(row) = store.end_clone("x", 1).await.unwrap() else {
            panic!("ready clone must start releasing");
        };
        agent.with(|s| s.down = true);
        assert!(matches!(
            reaper.release(&row).await.unwrap(),
            ReleaseOutcome::Pending(_)
        ));
        assert_eq!(
            store.clone_by_name("x").await.unwrap().unwrap().status,
            CloneStatus::Releasing
        );
        agent.with(|s| s.down = false);
        registry.poll_all().await;
        // The next try waits out a short backoff (2 s after the first failure) ...
        reaper.tick(2).await.unwrap();
        assert_eq!(
            store.clone_by_name("x").await.unwrap().unwrap().status,
            CloneStatus::Releasing
        );
        // ... then succeeds.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        registry.poll_all().await;
        reaper.tick(3).await.unwrap();
        assert_eq!(
            store.clone_by_name("x").await.unwrap().unwrap().status,
            CloneStatus::Released
        );
        assert_eq!(agent.with(|s| s.release_calls["x"]), 1);
        assert_eq!(clone.clone_id, "x");
    }

    #[tokio::test]
    async fn a_clone_that_is_not_due_is_left_alone() {
        let (_dir, store) = open_temp();
        let agent = FakeAgent::new("http://a", "node-a", 1, 1);
        let (reaper, registry) = reaper(&store, &agent);
        registry.poll_all().await;
        ready_clone(&store, &agent, "y", 0).await;
        assert_eq!(reaper.tick(29 * 60_000).await.unwrap(), 0);
        assert_eq!(
            store.clone_by_name("y").await.unwrap().unwrap().status,
            CloneStatus::Ready
        );
    }

    #[tokio::test]
    async fn the_pod_goes_back_only_after_the_clones_route_is_withdrawn() {
        use crate::exposure::fake::FakeExposure;
        let (_dir, store) = open_temp();
        let agent = FakeAgent::new("http://a", "node-a", 1, 1);
        let registry = Arc::new(AgentRegistry::new(
            vec![agent.clone() as Arc<dyn AgentClient>],
            Duration::from_secs(60),
        ));
        registry.poll_all().await;
        let exposure = Arc::new(FakeExposure::default());
        let reaper = Reaper::new(
            store.clone(),
            registry.clone(),
            EdgeRoutes::default(),
            Metrics::new(),
        )
        .with_exposure(exposure.clone());
        ready_clone(&store, &agent, "z", 0).await;
        exposure.with(|s| s.exposed.insert("z".into(), "pod".into()));
        let EndOutcome::Releasing(row) = store.end_clone("z", 1).await.unwrap() else {
            panic!("ready clone must start releasing");
        };
        exposure.with(|s| s.fail_withdraw = true);
        let outcome = reaper.release(&row).await.unwrap();
        assert!(
            matches!(&outcome, ReleaseOutcome::Pending(why) if why.contains("Service and Ingress")),
            "{outcome:?}"
        );
        assert_eq!(
            agent.with(|s| s.release_calls.get("z").copied()),
            None,
            "the pod must not serve another clone while this clone's name still reaches it"
        );
        exposure.with(|s| s.fail_withdraw = false);
        assert_eq!(
            reaper.release(&row).await.unwrap(),
            ReleaseOutcome::Released
        );
        assert_eq!(agent.with(|s| s.release_calls["z"]), 1);
        assert!(exposure.with(|s| s.exposed.is_empty()));
    }

    #[tokio::test]
    async fn an_expired_clone_stops_being_routed_even_while_its_agent_is_down() {
        use crate::exposure::fake::FakeExposure;
        let (_dir, store) = open_temp();
        let agent = FakeAgent::new("http://a", "node-a", 1, 1);
        let registry = Arc::new(AgentRegistry::new(
            vec![agent.clone() as Arc<dyn AgentClient>],
            Duration::from_millis(50),
        ));
        registry.poll_all().await;
        let exposure = Arc::new(FakeExposure::default());
        let reaper = Reaper::new(
            store.clone(),
            registry.clone(),
            EdgeRoutes::default(),
            Metrics::new(),
        )
        .with_exposure(exposure.clone());
        ready_clone(&store, &agent, "e", 0).await;
        exposure.with(|s| s.exposed.insert("e".into(), "pod".into()));
        agent.with(|s| s.down = true);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(reaper.tick(31 * 60_000).await.unwrap(), 1);
        assert!(
            exposure.with(|s| s.exposed.is_empty()),
            "withdrawn at expiry"
        );
        assert_eq!(
            agent.with(|s| s.release_calls.get("e").copied()),
            None,
            "the pod waits for its agent"
        );
        assert_eq!(
            store.clone_by_name("e").await.unwrap().unwrap().status,
            CloneStatus::Releasing
        );
    }
}
