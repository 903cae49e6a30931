//! The agent's debug socket: a Unix socket (mode 0600) in the data dir answering clonepoolctl's
//! JSON-line requests (see [`crate::ctl::protocol`]).

use crate::ctl::protocol::{CtlRequest, CtlResponse, NodeStatus, PodDetail, MAX_LINE};
use crate::fingerprint::Fingerprint;
use crate::pool::{PoolError, WarmPool};
use clonepool_common::error::codes;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum DebugSocketError {
    #[error("another agent is already listening on {0}; is one running with the same data dir?")]
    InUse(PathBuf),
    #[error("cannot create the debug socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What `status` reports besides the pool's own state.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub image: String,
    pub warm_target: u32,
    pub api_listen: String,
    pub admin_listen: String,
    pub data_dir: String,
    pub started: Instant,
}

/// Binds the socket at `path` (replacing a stale one) with mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, DebugSocketError> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DebugSocketError::InUse(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    let err = |source| DebugSocketError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Answers connections until `cancel` fires, then removes the socket file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    pool: WarmPool,
    info: AgentInfo,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let pool = pool.clone();
                let info = info.clone();
                tokio::spawn(async move { handle(stream, pool, info).await });
            }
            Err(e) => {
                tracing::warn!(error = %e, "debug socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

async fn handle(stream: UnixStream, pool: WarmPool, info: AgentInfo) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let n = match (&mut lines)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await
        {
            Ok(n) => n,
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        let resp = match serde_json::from_str::<CtlRequest>(line.trim()) {
            Ok(req) => answer(req, &pool, &info).await,
            Err(e) => CtlResponse::err(codes::BAD_REQUEST, format!("bad request: {e}")),
        };
        let mut out = serde_json::to_vec(&resp).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        out.push(b'\n');
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn error_response(e: PoolError) -> CtlResponse {
    let code = match &e {
        PoolError::NotFound(_) => codes::NOT_FOUND,
        PoolError::Conflict(_) => codes::CONFLICT,
        PoolError::BadRequest(_) => codes::BAD_REQUEST,
        _ => codes::INTERNAL,
    };
    CtlResponse::err(code, e.to_string())
}

/// Answers one request.
pub async fn answer(req: CtlRequest, pool: &WarmPool, info: &AgentInfo) -> CtlResponse {
    let result: Result<CtlResponse, PoolError> = async {
        Ok(match req {
            CtlRequest::Status => {
                let capacity = pool.capacity()?;
                let lost = pool.store().list()?.iter().filter(|p| p.lost).count() as u32;
                CtlResponse::ok(NodeStatus {
                    node: pool.node().to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    pid: std::process::id(),
                    uptime_secs: info.started.elapsed().as_secs(),
                    draining: pool.is_draining(),
                    runtime_reachable: pool.ready().await,
                    image: info.image.clone(),
                    reset_method: pool.reset_method().to_string(),
                    warm_target: info.warm_target,
                    capacity,
                    lost,
                    api_listen: info.api_listen.clone(),
                    admin_listen: info.admin_listen.clone(),
                    data_dir: info.data_dir.clone(),
                })
            }
            CtlRequest::Pods => CtlResponse::ok(pool.pods()?),
            CtlRequest::Pod { pod_id } => {
                let rec = pool.pod_record(&pod_id)?;
                let pristine = rec
                    .fingerprint
                    .as_deref()
                    .and_then(|f| Fingerprint::from_json(f).ok())
                    .map(|f| f.digest());
                CtlResponse::ok(PodDetail {
                    summary: rec.summary(pool.node()),
                    clone_host: rec.clone_host.clone(),
                    claim_path: rec.claim_path.map(|p| {
                        match p {
                            clonepool_common::agent_api::ClaimPath::Warm => "warm",
                            clonepool_common::agent_api::ClaimPath::Cold => "cold",
                        }
                        .to_string()
                    }),
                    lost: rec.lost,
                    reset_attempts: rec.reset_attempts,
                    created_at: rec.created_at.clone(),
                    pristine_fingerprint: pristine,
                    busy: pool.is_pod_busy(&pod_id),
                })
            }
            CtlRequest::Reset { pod_id, force } => {
                CtlResponse::ok(pool.reset_pod(&pod_id, force).await?)
            }
            CtlRequest::Drain { on } => {
                pool.set_draining(on)?;
                CtlResponse::ok(pool.capacity()?)
            }
            CtlRequest::Events { limit } => CtlResponse::ok(pool.events(limit.min(10_000))?),
        })
    }
    .await;
    result.unwrap_or_else(error_response)
}
