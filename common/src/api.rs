//! The coordinator's public HTTP API v2 (compatible with the old service's JSON shapes): request
//! and response bodies, job and clone states, and the limits the coordinator enforces.
//!
//! Every `/api/` route needs `Authorization: Bearer <api token>`. Errors are
//! [`crate::error::ErrorBody`] (`{"error": {"code", "message"}}`) with codes from
//! [`crate::error::codes`] and [`codes`].
//!
//! | method | path | body → answer |
//! |---|---|---|
//! | POST | `/api/v2/clone` | [`CloneRequest`] → 202 [`JobAccepted`] |
//! | GET | `/api/v2/job-status/{job_id}` | → [`JobStatus`] |
//! | DELETE | `/api/v2/job-status/{job_id}` (or POST `…/cancel`) | cancel a pending job → [`JobStatus`] |
//! | POST | `/api/v2/restore` | [`RestoreRequest`] → 202 [`JobAccepted`] |
//! | POST | `/api/v2/rollback` | [`RollbackRequest`] → 202 [`JobAccepted`] |
//! | DELETE | `/api/v2/delete/{clone_id}` | → [`DeleteResponse`] |
//! | GET | `/api/v2/clones`, `/api/v2/clones/{clone_id}` | → [`CloneList`], [`CloneInfo`] |
//! | POST | `/api/v2/clones/{clone_id}/extend` | [`ExtendRequest`] → [`CloneInfo`] |
//! | GET | `/api/v2/pool` | → [`PoolStatus`] |
//! | GET | `/api/v2/openapi.json` | the OpenAPI document |
//!
//! POSTs that create jobs accept an `Idempotency-Key` header: the same key with the same body
//! answers the same job; the same key with a different body is refused (422,
//! [`codes::IDEMPOTENCY_KEY_REUSED`]).

use crate::agent_api::ClaimPath;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Clone lifetime when the request names none.
pub const DEFAULT_TTL_MINUTES: u32 = 30;
/// Shortest accepted `ttl_minutes` (and shortest extension).
pub const MIN_TTL_MINUTES: u32 = 5;
/// Longest accepted `ttl_minutes`; an extension may not push the remaining life past it either.
pub const MAX_TTL_MINUTES: u32 = 1440;
/// Header that makes a job-creating POST safe to retry.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

/// Error codes of the coordinator API in addition to [`crate::error::codes`].
pub mod codes {
    /// A URL is malformed, not http(s), or its host does not resolve.
    pub const INVALID_URL: &str = "invalid_url";
    /// A URL points at loopback, link-local/metadata, private or another internal range.
    pub const FORBIDDEN_URL: &str = "forbidden_url";
    /// The `Idempotency-Key` was already used with a different request body.
    pub const IDEMPOTENCY_KEY_REUSED: &str = "idempotency_key_reused";
    /// The method is not supported on this path.
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
}

/// `POST /api/v2/clone`: copy a site into a short-lived clone.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CloneRequest {
    /// The site to clone (http or https; internal addresses are refused).
    #[cfg_attr(feature = "openapi", schema(example = "https://mysite.com"))]
    pub source_url: String,
    /// An administrator login on the source site.
    pub source_username: String,
    /// That administrator's password. Never logged.
    pub source_password: String,
    /// The clone's name: a DNS label of at most 40 characters, unique among live clones.
    /// Generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(example = "test-clone-001"))]
    pub customer_id: Option<String>,
    /// Minutes the clone lives once ready (default 30, 5..=1440).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_minutes: Option<u32>,
}

impl fmt::Debug for CloneRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloneRequest")
            .field("source_url", &self.source_url)
            .field("source_username", &self.source_username)
            .field("source_password", &"<redacted>")
            .field("customer_id", &self.customer_id)
            .field("ttl_minutes", &self.ttl_minutes)
            .finish()
    }
}

/// A site and an administrator login on it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SiteLogin {
    pub url: String,
    pub username: String,
    /// Never logged.
    pub password: String,
}

impl fmt::Debug for SiteLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SiteLogin")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where a restore reads from: a site login (old clients) or a live clone by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum RestoreSource {
    Site(SiteLogin),
    Clone(CloneRef),
}

/// A clone named by its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CloneRef {
    pub clone_id: String,
}

/// `POST /api/v2/restore`: push a clone back to a production site.
///
/// The target's clonepool migrator plugin backs up what the push replaces before it changes
/// anything; the job's result names that backup, and `POST /api/v2/rollback` restores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    pub source: RestoreSource,
    pub target: SiteLogin,
    /// Push the database (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<bool>,
    /// Push wp-content files (default true). Files the clone lacks are not deleted on the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<bool>,
    /// Only these tables (with or without the table prefix); all of the site's tables when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<String>>,
    /// Also replace the target's users and usermeta (default false: production keeps its
    /// accounts, passwords and sessions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_users: Option<bool>,
}

/// Longest accepted `tables` list of a restore.
pub const MAX_RESTORE_TABLES: usize = 500;

/// `POST /api/v2/rollback`: put a target site back as it was before a restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    pub target: SiteLogin,
    /// The `backup_id` of a restore job's result.
    #[cfg_attr(
        feature = "openapi",
        schema(example = "20261125T094617Z-2738fe086624f1cf")
    )]
    pub backup_id: String,
}

/// Whether `id` has the shape of a migrator backup id: `YYYYMMDDTHHMMSSZ-` and 16 hex digits.
pub fn is_backup_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 33
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// Lifecycle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Pending,
        JobState::Running,
        JobState::Completed,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Completed, failed and cancelled jobs never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown job state {s:?}"))
    }
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobType {
    Clone,
    Restore,
    Rollback,
}

impl JobType {
    pub fn as_str(self) -> &'static str {
        match self {
            JobType::Clone => "clone",
            JobType::Restore => "restore",
            JobType::Rollback => "rollback",
        }
    }
}

impl std::str::FromStr for JobType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "clone" => Ok(JobType::Clone),
            "restore" => Ok(JobType::Restore),
            "rollback" => Ok(JobType::Rollback),
            other => Err(format!("unknown job type {other:?}")),
        }
    }
}

/// 202 answer of a job-creating POST.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobAccepted {
    #[cfg_attr(feature = "openapi", schema(example = "job-4f1c2a9b0d3e5f6a7b8c9d0e"))]
    pub job_id: String,
    pub status: JobState,
    /// Where to poll: `/api/v2/job-status/{job_id}`.
    pub status_url: String,
    /// The clone this job creates (clone jobs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_id: Option<String>,
}

/// How a clone's pod was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ClonePath {
    /// A warm pod was ready.
    Warm,
    /// No warm pod was free; an agent created one.
    Cold,
}

impl ClonePath {
    pub fn as_str(self) -> &'static str {
        match self {
            ClonePath::Warm => "warm",
            ClonePath::Cold => "cold",
        }
    }
}

impl From<ClaimPath> for ClonePath {
    fn from(path: ClaimPath) -> Self {
        match path {
            ClaimPath::Warm => ClonePath::Warm,
            ClaimPath::Cold => ClonePath::Cold,
        }
    }
}

impl std::str::FromStr for ClonePath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "warm" => Ok(ClonePath::Warm),
            "cold" => Ok(ClonePath::Cold),
            other => Err(format!("unknown clone path {other:?}")),
        }
    }
}

/// Result of a completed clone job.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CloneResult {
    pub clone_id: String,
    #[cfg_attr(
        feature = "openapi",
        schema(example = "http://test-clone-001.localhost:8080")
    )]
    pub clone_url: String,
    pub username: String,
    /// The clone's fresh administrator password.
    pub password: String,
    /// One-time login link (once the WordPress migrator lands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub magic_login_url: Option<String>,
    /// RFC 3339 time the clone expires (as of completion; `extend` moves it).
    pub expires_at: String,
    pub path: ClonePath,
    /// The node serving the clone.
    pub node: String,
}

impl fmt::Debug for CloneResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloneResult")
            .field("clone_id", &self.clone_id)
            .field("clone_url", &self.clone_url)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("path", &self.path)
            .field("node", &self.node)
            .finish()
    }
}

/// What a job produced; the shape depends on the job type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum JobResult {
    Clone(CloneResult),
    Restore(RestoreResult),
    Rollback(RollbackResult),
}

/// Result of a completed restore job: what was pushed to the target, and the backup the target
/// made first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RestoreResult {
    pub target_url: String,
    /// The clone that was pushed.
    pub source_clone_id: String,
    /// The clone's URL, rewritten to `target_url` in everything pushed.
    pub source_url: String,
    /// Pass it to `POST /api/v2/rollback` to undo this restore.
    #[cfg_attr(
        feature = "openapi",
        schema(example = "20261125T094617Z-2738fe086624f1cf")
    )]
    pub backup_id: String,
    pub tables_imported: Vec<String>,
    pub files_written: u64,
    pub files_created: u64,
    pub files_unchanged: u64,
    /// Tables and files left alone (users unless asked, excluded paths, …), with reasons.
    pub skipped_count: u64,
    pub skipped: Vec<SkippedItem>,
    pub warnings: Vec<String>,
    /// Bytes of the archive pushed.
    pub archive_bytes: u64,
}

/// Something a restore left alone, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SkippedItem {
    pub item: String,
    pub reason: String,
}

/// Result of a completed rollback job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RollbackResult {
    pub target_url: String,
    pub backup_id: String,
    pub tables_restored: Vec<String>,
    pub tables_dropped: Vec<String>,
    pub files_restored: u64,
    pub files_removed: u64,
}

/// `GET /api/v2/job-status/{job_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobStatus {
    pub job_id: String,
    #[serde(rename = "type")]
    pub job_type: JobType,
    pub status: JobState,
    /// 0–100.
    pub progress: u8,
    /// What the job is doing, for humans.
    #[cfg_attr(feature = "openapi", schema(example = "Claiming a warm pod on node-1"))]
    pub message: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    pub result: Option<JobResult>,
    /// Why the job failed or was cancelled, for humans (null otherwise).
    pub error: Option<String>,
    /// A stable code for `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// The clone a clone job creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_id: Option<String>,
    /// How many times the job has been started (at most the retry limit).
    #[serde(default)]
    pub attempts: u32,
}

/// Where a clone is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum CloneStatus {
    /// Its job has not finished yet.
    Provisioning,
    /// Serving at `clone_url` until `expires_at`.
    Ready,
    /// Ended (expired, deleted, cancelled or failed); its pod is being handed back.
    Releasing,
    /// Ended and its pod handed back.
    Released,
}

impl CloneStatus {
    pub const ALL: [CloneStatus; 4] = [
        CloneStatus::Provisioning,
        CloneStatus::Ready,
        CloneStatus::Releasing,
        CloneStatus::Released,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloneStatus::Provisioning => "provisioning",
            CloneStatus::Ready => "ready",
            CloneStatus::Releasing => "releasing",
            CloneStatus::Released => "released",
        }
    }

    /// A live clone holds its name: no other clone may take it.
    pub fn is_live(self) -> bool {
        !matches!(self, CloneStatus::Released)
    }
}

impl std::str::FromStr for CloneStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        CloneStatus::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown clone status {s:?}"))
    }
}

/// One clone (`GET /api/v2/clones/{clone_id}`); no secrets (those are in the job result).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CloneInfo {
    pub clone_id: String,
    pub status: CloneStatus,
    /// The job that created it.
    pub job_id: String,
    pub clone_url: String,
    pub source_url: String,
    pub node: Option<String>,
    pub pod_id: Option<String>,
    pub path: Option<ClonePath>,
    /// Lifetime granted once ready, extensions included.
    pub ttl_minutes: u32,
    /// RFC 3339 times.
    pub created_at: String,
    pub ready_at: Option<String>,
    pub expires_at: Option<String>,
    pub ended_at: Option<String>,
    /// `expired`, `deleted`, `cancelled` or `job_failed` once it ended.
    pub end_reason: Option<String>,
}

/// `GET /api/v2/clones` (live clones; `?all=true` adds ended ones, newest first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CloneList {
    pub clones: Vec<CloneInfo>,
}

/// `POST /api/v2/clones/{clone_id}/extend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    /// Minutes to add (5..=1440); the remaining life may not exceed 1440 minutes.
    pub ttl_minutes: u32,
}

/// `DELETE /api/v2/delete/{clone_id}`: 200 when the pod was handed back, 202 while that is
/// still being retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeleteResponse {
    pub clone_id: String,
    pub status: CloneStatus,
    pub message: String,
}

/// One agent's pods by state, as last heard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentPool {
    /// The agent's base URL as configured.
    pub agent: String,
    /// The node it reported (null until first heard).
    pub node: Option<String>,
    /// Heard from within the staleness limit.
    pub up: bool,
    pub draining: bool,
    /// RFC 3339 time of the last capacity report.
    pub last_seen: Option<String>,
    /// The last error talking to it, while down.
    pub last_error: Option<String>,
    pub starting: u32,
    pub warm: u32,
    pub assigned: u32,
    pub ready: u32,
    pub resetting: u32,
    pub quarantined: u32,
    pub max: u32,
}

/// `GET /api/v2/pool`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolStatus {
    pub agents: Vec<AgentPool>,
    /// Warm pods on agents that are up.
    pub warm_total: u32,
    /// Jobs waiting to start.
    pub queued_jobs: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_services_clone_request_still_parses() {
        let body = r#"{"source_url": "https://mysite.com", "source_username": "admin",
            "source_password": "secret", "customer_id": "test-clone-001", "ttl_minutes": 30}"#;
        let request: CloneRequest = serde_json::from_str(body).unwrap();
        assert_eq!(request.customer_id.as_deref(), Some("test-clone-001"));
        assert_eq!(request.ttl_minutes, Some(30));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let body = r#"{"source_url": "https://a.example", "source_username": "a",
            "source_password": "b", "colour": "red"}"#;
        let err = serde_json::from_str::<CloneRequest>(body).unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn restore_sources_are_a_site_login_or_a_clone_id() {
        let site: RestoreRequest = serde_json::from_str(
            r#"{"source": {"url": "https://c.example", "username": "a", "password": "p"},
                "target": {"url": "https://prod.example", "username": "a", "password": "q"}}"#,
        )
        .unwrap();
        assert!(matches!(site.source, RestoreSource::Site(_)));
        let clone: RestoreRequest = serde_json::from_str(
            r#"{"source": {"clone_id": "shop"},
                "target": {"url": "https://prod.example", "username": "a", "password": "q"}}"#,
        )
        .unwrap();
        assert_eq!(
            clone.source,
            RestoreSource::Clone(CloneRef {
                clone_id: "shop".into()
            })
        );
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let request = CloneRequest {
            source_url: "https://a.example".into(),
            source_username: "admin".into(),
            source_password: "hunter2-secret".into(),
            customer_id: None,
            ttl_minutes: None,
        };
        assert!(!format!("{request:?}").contains("hunter2"));
        let login = SiteLogin {
            url: "https://a.example".into(),
            username: "admin".into(),
            password: "hunter2-secret".into(),
        };
        assert!(!format!("{login:?}").contains("hunter2"));
    }

    #[test]
    fn job_status_keeps_the_old_field_names() {
        let status = JobStatus {
            job_id: "job-1".into(),
            job_type: JobType::Clone,
            status: JobState::Pending,
            progress: 0,
            message: "Queued".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            result: None,
            error: None,
            error_code: None,
            clone_id: None,
            attempts: 0,
        };
        let json = serde_json::to_value(&status).unwrap();
        for key in [
            "job_id",
            "type",
            "status",
            "progress",
            "message",
            "created_at",
            "updated_at",
            "result",
            "error",
        ] {
            assert!(json.get(key).is_some(), "missing {key} in {json}");
        }
        assert_eq!(json["status"], "pending");
        assert_eq!(json["type"], "clone");
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
        }
        for status in CloneStatus::ALL {
            assert_eq!(status.as_str().parse::<CloneStatus>(), Ok(status));
        }
    }
}
