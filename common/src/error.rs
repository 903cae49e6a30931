//! The JSON error body every clonepool HTTP API answers with: `{"error": {"code", "message"}}`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable, machine-readable code (see [`codes`]).
    pub code: String,
    /// A human sentence saying what went wrong and, when it helps, what to do.
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.to_string(),
                message: message.into(),
            },
        }
    }
}

/// Stable error codes shared by the agent and coordinator APIs.
pub mod codes {
    pub const BAD_REQUEST: &str = "bad_request";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const FORBIDDEN: &str = "forbidden";
    pub const NOT_FOUND: &str = "not_found";
    pub const CONFLICT: &str = "conflict";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const QUEUE_FULL: &str = "queue_full";
    /// The agent has no WARM pod to claim; the coordinator tries another agent or goes cold.
    pub const NO_WARM_POD: &str = "no_warm_pod";
    /// The agent is at `max_pods` and cannot create another (cold path).
    pub const NO_CAPACITY: &str = "no_capacity";
    /// The agent is draining or shutting down and takes no claims.
    pub const DRAINING: &str = "draining";
    pub const INTERNAL: &str = "internal";
    pub const UNAVAILABLE: &str = "unavailable";
}
