//! The agent's Prometheus metrics, registered into a registry passed in by the caller. No per-pod
//! or per-clone labels.

use clonepool_common::pod::PodState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    pub path: String,
}

/// Every `result` of `clonepool_agent_claims_total`: `warm`/`cold` (a new claim served that
/// way), `repeat` (asked again by the same clone), `no_warm_pod`, `no_capacity`, `draining`,
/// `unavailable` (runtime unreachable or state not loaded; nothing was taken) and `failed`
/// (409 conflicts and 500s).
pub const CLAIM_RESULTS: [&str; 8] = [
    "warm",
    "cold",
    "repeat",
    "no_warm_pod",
    "no_capacity",
    "draining",
    "unavailable",
    "failed",
];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 10 ms … ~41 s
    Histogram::new(exponential_buckets(0.01, 2.0, 13))
}

/// Handles to every agent metric (cheap to clone; all clones update the same series).
#[derive(Clone)]
pub struct AgentMetrics {
    pub pods: Family<StateLabels, Gauge>,
    pub lost_pods: Gauge,
    pub reset_duration: HistogramFamily<MethodLabels>,
    pub resets: Family<ResultLabels, Counter>,
    pub claim_latency: HistogramFamily<PathLabels>,
    pub claims: Family<ResultLabels, Counter>,
    pub provision_duration: Histogram,
    pub runtime_errors: Counter,
    pub container_deaths: Counter,
    pub pods_lost: Counter,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentMetrics")
    }
}

impl AgentMetrics {
    /// Creates the metrics and registers them (prefix `clonepool_agent_`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = AgentMetrics {
            pods: Family::default(),
            lost_pods: Gauge::default(),
            reset_duration: Family::new_with_constructor(seconds_histogram),
            resets: Family::default(),
            claim_latency: Family::new_with_constructor(seconds_histogram),
            claims: Family::default(),
            provision_duration: seconds_histogram(),
            runtime_errors: Counter::default(),
            container_deaths: Counter::default(),
            pods_lost: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("clonepool_agent");
        r.register("pods", "Pods of this node by state", m.pods.clone());
        r.register(
            "lost_pods",
            "QUARANTINED pods whose clone lost them (a container died while serving)",
            m.lost_pods.clone(),
        );
        r.register(
            "reset_duration_seconds",
            "Time to reset a used pod back to WARM, verification included, by method",
            m.reset_duration.clone(),
        );
        r.register(
            "resets",
            "Resets by result (ok, verify_failed, failed)",
            m.resets.clone(),
        );
        r.register(
            "claim_latency_seconds",
            "Time to answer a claim, by path (warm, cold)",
            m.claim_latency.clone(),
        );
        r.register(
            "claims",
            format!("Claims by result ({})", CLAIM_RESULTS.join(", ")),
            m.claims.clone(),
        );
        r.register(
            "provision_duration_seconds",
            "Time to create a pod until it is really ready (pool and cold-path pods)",
            m.provision_duration.clone(),
        );
        r.register(
            "runtime_errors",
            "Errors from the container runtime",
            m.runtime_errors.clone(),
        );
        r.register(
            "container_deaths",
            "Pod containers that died without the agent asking",
            m.container_deaths.clone(),
        );
        r.register(
            "pods_lost",
            "Pods lost by their clone (container died while ASSIGNED or READY, or vanished)",
            m.pods_lost.clone(),
        );
        // Series that exist before anything happened, so dashboards see zeros, not gaps.
        for method in crate::config::ResetMethod::ALL {
            drop(m.reset_duration.get_or_create(&MethodLabels {
                method: method.as_str().into(),
            }));
        }
        for result in ["ok", "verify_failed", "failed"] {
            drop(m.resets.get_or_create(&ResultLabels {
                result: result.into(),
            }));
        }
        for result in CLAIM_RESULTS {
            drop(m.claims.get_or_create(&ResultLabels {
                result: result.into(),
            }));
        }
        for path in ["warm", "cold"] {
            drop(
                m.claim_latency
                    .get_or_create(&PathLabels { path: path.into() }),
            );
        }
        m
    }

    /// Sets the per-state gauges from a full count.
    pub fn set_pod_counts(&self, counts: &BTreeMap<&'static str, u32>, lost: u32) {
        for state in PodState::ALL {
            let n = counts.get(state.as_str()).copied().unwrap_or(0);
            self.pods
                .get_or_create(&StateLabels {
                    state: state.as_str().to_ascii_lowercase(),
                })
                .set(n as i64);
        }
        self.lost_pods.set(lost as i64);
    }

    pub fn observe_reset(&self, method: &str, seconds: f64, result: &str) {
        self.reset_duration
            .get_or_create(&MethodLabels {
                method: method.to_string(),
            })
            .observe(seconds);
        self.resets
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn observe_claim(&self, path: &str, seconds: f64) {
        self.claim_latency
            .get_or_create(&PathLabels {
                path: path.to_string(),
            })
            .observe(seconds);
    }

    pub fn count_claim(&self, result: &str) {
        self.claims
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }
}

/// The registry in Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_without_per_pod_labels() {
        let mut registry = Registry::default();
        let m = AgentMetrics::register(&mut registry);
        let mut counts = BTreeMap::new();
        counts.insert("WARM", 2);
        m.set_pod_counts(&counts, 0);
        m.observe_reset("sql", 0.5, "ok");
        m.observe_claim("warm", 0.1);
        m.runtime_errors.inc();
        let text = encode(&registry);
        assert!(
            text.contains("clonepool_agent_pods{state=\"warm\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "clonepool_agent_reset_duration_seconds_bucket{le=\"0.64\",method=\"sql\"} 1"
            ) || text.contains("method=\"sql\""),
            "{text}"
        );
        assert!(
            text.contains("clonepool_agent_resets_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("clonepool_agent_runtime_errors_total 1"),
            "{text}"
        );
        assert!(!text.contains("cp-"), "{text}");
    }
}
