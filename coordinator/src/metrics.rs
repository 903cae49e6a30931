//! The coordinator's Prometheus metrics (prometheus-client, one registry passed down, no
//! per-clone labels): jobs by status, queue depth, clone duration by path, agents up/down,
//! finished jobs, retries, clone releases and whether this replica leads.

use clonepool_common::api::{ClonePath, JobState, JobType};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    pub path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishedLabels {
    pub r#type: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub jobs: Family<StatusLabel, Gauge>,
    pub queue_depth: Gauge,
    pub clone_duration: Family<PathLabel, Histogram>,
    pub agents: Family<StateLabel, Gauge>,
    pub jobs_finished: Family<FinishedLabels, Counter>,
    pub job_retries: Counter,
    pub clones_released: Family<ReasonLabel, Counter>,
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("clonepool_coordinator");
        let jobs = Family::<StatusLabel, Gauge>::default();
        registry.register("jobs", "Jobs in the store by status", jobs.clone());
        let queue_depth = Gauge::default();
        registry.register(
            "job_queue_depth",
            "Jobs waiting to start (pending)",
            queue_depth.clone(),
        );
        let clone_duration = Family::<PathLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0,
            ])
        });
        registry.register(
            "clone_duration_seconds",
            "Time from clone request to clone ready, by path (warm or cold)",
            clone_duration.clone(),
        );
        let agents = Family::<StateLabel, Gauge>::default();
        registry.register("agents", "Agents by state (up or down)", agents.clone());
        let jobs_finished = Family::<FinishedLabels, Counter>::default();
        registry.register(
            "jobs_finished",
            "Jobs that reached a final status, by type and status",
            jobs_finished.clone(),
        );
        let job_retries = Counter::default();
        registry.register(
            "job_retries",
            "Job attempts that failed transiently and were scheduled again",
            job_retries.clone(),
        );
        let clones_released = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "clones_released",
            "Clones whose pod was handed back, by why they ended",
            clones_released.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 when this replica serves (it holds the leader Lease, or runs without leader \
             election); 0 while it waits as a standby",
            leader.clone(),
        );
        Self {
            registry: Arc::new(registry),
            jobs,
            queue_depth,
            clone_duration,
            agents,
            jobs_finished,
            job_retries,
            clones_released,
            leader,
        }
    }

    pub fn set_job_counts(&self, counts: &[(JobState, u64)]) {
        for (state, count) in counts {
            self.jobs
                .get_or_create(&StatusLabel {
                    status: state.as_str().to_string(),
                })
                .set(*count as i64);
            if *state == JobState::Pending {
                self.queue_depth.set(*count as i64);
            }
        }
    }

    pub fn set_agents(&self, up: usize, down: usize) {
        for (state, count) in [("up", up), ("down", down)] {
            self.agents
                .get_or_create(&StateLabel {
                    state: state.to_string(),
                })
                .set(count as i64);
        }
    }

    pub fn observe_clone(&self, path: ClonePath, seconds: f64) {
        self.clone_duration
            .get_or_create(&PathLabel {
                path: path.as_str().to_string(),
            })
            .observe(seconds);
    }

    pub fn job_finished(&self, job_type: JobType, state: JobState) {
        self.jobs_finished
            .get_or_create(&FinishedLabels {
                r#type: job_type.as_str().to_string(),
                status: state.as_str().to_string(),
            })
            .inc();
    }

    pub fn clone_released(&self, reason: &str) {
        let reason = match reason {
            "expired" | "deleted" | "cancelled" | "job_failed" => reason,
            _ => "other",
        };
        self.clones_released
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric() {
        let metrics = Metrics::new();
        metrics.set_job_counts(&[(JobState::Pending, 3), (JobState::Completed, 2)]);
        metrics.set_agents(1, 0);
        metrics.observe_clone(ClonePath::Warm, 0.4);
        metrics.job_finished(JobType::Clone, JobState::Completed);
        metrics.clone_released("expired");
        let text = metrics.encode();
        for needle in [
            "clonepool_coordinator_jobs{status=\"pending\"} 3",
            "clonepool_coordinator_job_queue_depth 3",
            "clonepool_coordinator_agents{state=\"up\"} 1",
            "clonepool_coordinator_clone_duration_seconds_count{path=\"warm\"} 1",
            "clonepool_coordinator_jobs_finished_total{type=\"clone\",status=\"completed\"} 1",
            "clonepool_coordinator_clones_released_total{reason=\"expired\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
