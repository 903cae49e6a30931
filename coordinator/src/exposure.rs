//! Making a ready clone reachable at its URL beyond the coordinator's own edge proxy (in
//! Kubernetes mode: a Service + Ingress per clone, see `kubernetes::routes`), and taking that
//! away again before the clone's pod goes back to the pool. The [`CloneExposure`] seam is what
//! the job engine and the reaper call; standalone mode has none.

use async_trait::async_trait;

/// What is needed to route a clone's host name to its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposeRequest {
    pub clone_id: String,
    /// The pod serving it (the agent labels its Pods `clonepool.pod=<pod id>`).
    pub pod_id: String,
    /// The agent (or provisioner) that claimed the pod, as recorded in the clones table.
    pub agent: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExposureError(pub String);

#[async_trait]
pub trait CloneExposure: Send + Sync + 'static {
    /// Routes the clone's host name to its pod. Idempotent; called before the clone's job
    /// completes (a failure is retried with the job) and again for ready clones at start.
    async fn expose(&self, request: &ExposeRequest) -> Result<(), ExposureError>;

    /// Stops routing the clone's host name anywhere. Idempotent (nothing to remove is
    /// success). Until it succeeds the clone's pod is not handed back, so a reused pod never
    /// answers under an old clone's name.
    async fn withdraw(&self, clone_id: &str) -> Result<(), ExposureError>;
}

#[cfg(test)]
pub mod fake {
    //! An in-memory exposure for unit tests, with switchable failures.

    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct FakeExposureState {
        /// clone id → pod id of every exposed clone.
        pub exposed: BTreeMap<String, String>,
        pub withdrawn: Vec<String>,
        pub fail_expose: bool,
        pub fail_withdraw: bool,
    }

    #[derive(Default)]
    pub struct FakeExposure {
        pub state: Mutex<FakeExposureState>,
    }

    impl FakeExposure {
        pub fn with<T>(&self, f: impl FnOnce(&mut FakeExposureState) -> T) -> T {
            f(&mut self.state.lock().unwrap())
        }
    }

    #[async_trait]
    impl CloneExposure for FakeExposure {
        async fn expose(&self, request: &ExposeRequest) -> Result<(), ExposureError> {
            self.with(|s| {
                if s.fail_expose {
                    return Err(ExposureError("the API server is away".into()));
                }
                s.exposed
                    .insert(request.clone_id.clone(), request.pod_id.clone());
                Ok(())
            })
        }

        async fn withdraw(&self, clone_id: &str) -> Result<(), ExposureError> {
            self.with(|s| {
                if s.fail_withdraw {
                    return Err(ExposureError("the API server is away".into()));
                }
                s.exposed.remove(clone_id);
                s.withdrawn.push(clone_id.to_string());
                Ok(())
            })
        }
    }
}
