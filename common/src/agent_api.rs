//! The agent protocol: what the coordinator (and `clonepoolctl`) send to an agent's HTTP API and
//! what comes back. Every route needs `Authorization: Bearer <agent token>`.
//!
//! Routes (all JSON):
//! - `POST /v1/claim` [`ClaimRequest`] → 200 [`ClaimResponse`]; 503 `no_warm_pod` when none is WARM.
//!   Idempotent per `clone_id`: asking again returns the same pod and credentials.
//! - `POST /v1/release` [`ReleaseRequest`] → 202 [`ReleaseResponse`]; the pod is reset and returns to WARM.
//! - `POST /v1/ready` [`ReadyRequest`] → 200 [`PodSummary`]; the clone's import is done (ASSIGNED → READY).
//! - `GET /v1/capacity` → [`Capacity`].
//! - `GET /v1/pods`, `GET /v1/pods/{pod_id}` → [`PodSummary`].

use crate::ids::{CloneId, NodeName, PodId};
use crate::pod::PodState;
use serde::{Deserialize, Serialize};

/// Ask for a warm pod for one clone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    pub clone_id: CloneId,
    /// The host name the clone will be reached under (e.g. `shop.localhost:8080`); WordPress's
    /// siteurl/home are set to `http://{clone_host}`.
    pub clone_host: String,
    /// When true and no warm pod is free, the agent creates one (the cold path) instead of
    /// answering `no_warm_pod`.
    #[serde(default)]
    pub allow_cold: bool,
}

/// Credentials of a claimed pod's WordPress. Fresh for every claim.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct PodCredentials {
    pub admin_username: String,
    pub admin_password: String,
}

impl std::fmt::Debug for PodCredentials {
    // Secrets never reach logs, even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodCredentials")
            .field("admin_username", &self.admin_username)
            .field("admin_password", &"<redacted>")
            .finish()
    }
}

/// How a claim was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClaimPath {
    Warm,
    Cold,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimResponse {
    pub pod_id: PodId,
    pub node: NodeName,
    pub clone_id: CloneId,
    /// Where the pod's WordPress answers HTTP, e.g. `http://172.18.0.5:80`.
    pub endpoint: String,
    pub credentials: PodCredentials,
    pub path: ClaimPath,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    pub clone_id: CloneId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseResponse {
    pub pod_id: PodId,
    pub state: PodState,
}

/// The clone's pod has its site imported and serves it: ASSIGNED → READY.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadyRequest {
    pub clone_id: CloneId,
}

/// Pods of one node by state, and the most it may hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub node: String,
    pub starting: u32,
    pub warm: u32,
    pub assigned: u32,
    pub ready: u32,
    pub resetting: u32,
    pub quarantined: u32,
    pub max: u32,
    /// The agent takes no new claims (draining or shutting down).
    #[serde(default)]
    pub draining: bool,
    /// The agent's container runtime answers and its state is loaded. While false, claims are
    /// answered `503 unavailable` without taking a pod: skip the agent. Absent (an older agent)
    /// counts as true.
    #[serde(default = "reachable_by_default")]
    pub runtime_reachable: bool,
}

fn reachable_by_default() -> bool {
    true
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            node: String::new(),
            starting: 0,
            warm: 0,
            assigned: 0,
            ready: 0,
            resetting: 0,
            quarantined: 0,
            max: 0,
            draining: false,
            runtime_reachable: reachable_by_default(),
        }
    }
}

/// One pod as the agent reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodSummary {
    pub pod_id: PodId,
    pub node: NodeName,
    pub state: PodState,
    pub clone_id: Option<CloneId>,
    pub endpoint: Option<String>,
    /// RFC 3339 time of the last state change.
    pub since: String,
    /// Why the pod is QUARANTINED or was reported lost, when it is.
    pub reason: Option<String>,
}
