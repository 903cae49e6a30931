//! The debug socket's protocol: one JSON request per line, one JSON response per line. Shared by
//! the agent's socket server (`debug_socket`) and `clonepoolctl`.

use crate::store::Event;
use clonepool_common::agent_api::{Capacity, PodSummary};
use clonepool_common::error::ErrorDetail;
use clonepool_common::ids::PodId;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The largest request or response line accepted.
pub const MAX_LINE: usize = 4 << 20;

fn default_limit() -> u32 {
    50
}

fn yes() -> bool {
    true
}

/// A request to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum CtlRequest {
    Status,
    Pods,
    Pod {
        pod_id: PodId,
    },
    /// Reset one pod now (a pod serving a clone only with `force`).
    Reset {
        pod_id: PodId,
        #[serde(default)]
        force: bool,
    },
    /// Stop (`on`) or resume taking claims and creating pods.
    Drain {
        #[serde(default = "yes")]
        on: bool,
    },
    Events {
        #[serde(default = "default_limit")]
        limit: u32,
    },
}

/// The agent's answer: `data` on success, `error` otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CtlResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

impl CtlResponse {
    pub fn ok(data: impl Serialize) -> Self {
        match serde_json::to_value(data) {
            Ok(v) => CtlResponse {
                ok: true,
                data: Some(v),
                error: None,
            },
            Err(e) => Self::err("internal", format!("cannot encode the answer: {e}")),
        }
    }

    pub fn err(code: &str, message: impl Into<String>) -> Self {
        CtlResponse {
            ok: false,
            data: None,
            error: Some(ErrorDetail {
                code: code.to_string(),
                message: message.into(),
            }),
        }
    }
}

/// `status`: the node at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub draining: bool,
    pub runtime_reachable: bool,
    pub image: String,
    pub reset_method: String,
    pub warm_target: u32,
    pub capacity: Capacity,
    pub lost: u32,
    pub api_listen: String,
    pub admin_listen: String,
    pub data_dir: String,
}

/// `pod <id>`: a pod with the agent's bookkeeping (never its secrets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodDetail {
    #[serde(flatten)]
    pub summary: PodSummary,
    pub clone_host: Option<String>,
    pub claim_path: Option<String>,
    pub lost: bool,
    pub reset_attempts: u32,
    pub created_at: String,
    /// sha256 over the pristine fingerprint's sections.
    pub pristine_fingerprint: Option<String>,
    pub busy: bool,
}

/// `events`.
pub type EventList = Vec<Event>;

#[derive(Debug, thiserror::Error)]
pub enum CtlClientError {
    #[error("cannot reach the agent's debug socket {path}: {source} (is clonepool-agent running with this data dir? set --data-dir or CLONEPOOL_DATA_DIR)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to the agent at {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the agent's answer is not valid: {0}")]
    BadAnswer(String),
    #[error("{}: {}", .0.code, .0.message)]
    Agent(ErrorDetail),
}

/// Sends one request to the socket at `path` and returns the answer's data.
pub fn call(path: &Path, request: &CtlRequest) -> Result<serde_json::Value, CtlClientError> {
    let shown = path.display().to_string();
    let io = |source| CtlClientError::Io {
        path: shown.clone(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(|source| CtlClientError::Connect {
        path: shown.clone(),
        source,
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io)?;
    let mut line =
        serde_json::to_vec(request).map_err(|e| CtlClientError::BadAnswer(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reader = BufReader::new(stream).take(MAX_LINE as u64);
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(io)?;
    if answer.trim().is_empty() {
        return Err(CtlClientError::BadAnswer("empty answer".into()));
    }
    let resp: CtlResponse =
        serde_json::from_str(&answer).map_err(|e| CtlClientError::BadAnswer(e.to_string()))?;
    if resp.ok {
        Ok(resp.data.unwrap_or(serde_json::Value::Null))
    } else {
        Err(CtlClientError::Agent(resp.error.unwrap_or(ErrorDetail {
            code: "internal".into(),
            message: "the agent failed without saying why".into(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json_lines() {
        let r: CtlRequest = serde_json::from_str(r#"{"cmd":"reset","pod_id":"cp-1"}"#).unwrap();
        assert_eq!(
            r,
            CtlRequest::Reset {
                pod_id: "cp-1".parse().unwrap(),
                force: false
            }
        );
        let r: CtlRequest = serde_json::from_str(r#"{"cmd":"drain"}"#).unwrap();
        assert_eq!(r, CtlRequest::Drain { on: true });
        assert!(serde_json::from_str::<CtlRequest>(r#"{"cmd":"format_disk"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&CtlRequest::Events { limit: 5 }).unwrap(),
            r#"{"cmd":"events","limit":5}"#
        );
    }
}
