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
//! - `POST /v1/import?clone_id=…` with the migrator export archive (tar) as the body → 200
//!   [`ImportResponse`]; the clone's pod is then READY. A refused or failed import releases the pod.
//! - `POST /v1/export` [`ExportRequest`] → 200, the READY clone's site as a migrator import
//!   archive (tar: `manifest.json`, `database.sql` rewritten to `target_url`, `wp-content/…`),
//!   with `Content-Length`. Read through the container runtime, never through the clone's HTTP.

use crate::ids::{CloneId, NodeName, PodId};
use crate::pod::PodState;
use serde::{Deserialize, Serialize};

/// Ask for a warm pod for one clone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    pub clone_id: CloneId,
    /// The host name the clone will be reached under (e.g. `shop.localhost:8080`); WordPress's
    /// siteurl/home are set to `{clone_scheme}://{clone_host}`.
    pub clone_host: String,
    /// `https` when the clone is reached through a proxy that terminates TLS (a Kubernetes
    /// Ingress with a certificate); the pod itself always speaks plain HTTP.
    #[serde(default, skip_serializing_if = "CloneScheme::is_http")]
    pub clone_scheme: CloneScheme,
    /// When true and no warm pod is free, the agent creates one (the cold path) instead of
    /// answering `no_warm_pod`.
    #[serde(default)]
    pub allow_cold: bool,
}

/// The scheme of a clone's URL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloneScheme {
    #[default]
    Http,
    Https,
}

impl CloneScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            CloneScheme::Http => "http",
            CloneScheme::Https => "https",
        }
    }

    pub fn is_http(&self) -> bool {
        *self == CloneScheme::Http
    }

    /// The scheme of `url` (`https://…` → Https; anything else Http).
    pub fn of_url(url: &str) -> Self {
        if url.starts_with("https://") {
            CloneScheme::Https
        } else {
            CloneScheme::Http
        }
    }

    /// `{scheme}://{host}`.
    pub fn site_url(self, host: &str) -> String {
        format!("{}://{host}", self.as_str())
    }
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
    /// The WordPress version the pod runs (the image's), when the agent knows it: a source on
    /// another version is exported with its core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wordpress_version: Option<String>,
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

/// Body of `POST /v1/export`: a READY clone's site, as an archive for another site's migrator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    pub clone_id: CloneId,
    /// The site the archive is for: the clone's URL is rewritten to it (serialized-safe; posts'
    /// `guid` stays as it is).
    pub target_url: String,
    /// Include the database (default true).
    #[serde(default = "yes")]
    pub database: bool,
    /// Include wp-content (default true).
    #[serde(default = "yes")]
    pub files: bool,
}

fn yes() -> bool {
    true
}

/// Header of an export answer: the clone's own URL (what was rewritten to `target_url`).
pub const EXPORT_SOURCE_URL_HEADER: &str = "x-clonepool-source-url";

/// Query of `POST /v1/import?clone_id=…`: the body is the migrator plugin's export archive (tar),
/// streamed. The site goes into the pod ASSIGNED to the clone, which is then READY.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    pub clone_id: CloneId,
}

/// What `POST /v1/import` answers: how to log in to the clone, and what was imported.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportResponse {
    pub pod_id: PodId,
    pub clone_id: CloneId,
    /// The site's URL in the clone (`http://{clone_host}`).
    pub site_url: String,
    /// The source's URL the archive was rewritten from.
    pub source_url: String,
    /// One-time login link (expires after 15 minutes, bound to the clone's host).
    pub magic_login_url: String,
    /// The source's first administrator, with a fresh password.
    pub admin_username: String,
    pub admin_password: String,
    pub sql_bytes: u64,
    pub files: u64,
    pub archive_bytes: u64,
    /// The WordPress version the clone runs (the source's when its core was installed).
    #[serde(default)]
    pub wordpress_version: String,
    /// What the clone could not copy exactly (e.g. a core it could not run).
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for ImportResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportResponse")
            .field("pod_id", &self.pod_id)
            .field("clone_id", &self.clone_id)
            .field("site_url", &self.site_url)
            .field("source_url", &self.source_url)
            .field("magic_login_url", &"<redacted>")
            .field("admin_username", &self.admin_username)
            .field("admin_password", &"<redacted>")
            .field("sql_bytes", &self.sql_bytes)
            .field("files", &self.files)
            .field("archive_bytes", &self.archive_bytes)
            .field("wordpress_version", &self.wordpress_version)
            .field("warnings", &self.warnings)
            .finish()
    }
}
