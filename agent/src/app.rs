//! Wiring: builds the agent from its configuration (state file, token, metrics, pool, API, admin
//! port, debug socket, capacity push), runs it, and shuts it down gracefully.

use crate::config::AgentConfig;
use crate::debug_socket::{self, AgentInfo, DebugSocketError};
use crate::metrics::AgentMetrics;
use crate::pod_commands::PodCommands;
use crate::pool::{PoolConfig, WarmPool};
use crate::provision::{PodHealth, PodTemplate, Provisioner, SiteProbe};
use crate::reset::{ResetVerifier, Resetter};
use crate::runtime::{ContainerLimits, ContainerRuntime};
use crate::secrets::{Secret, TOKEN_LEN};
use crate::store::{ensure_private_dir, Store, StoreError};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a shutdown waits for resets and other operations in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("token file {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {0} is empty; remove it to have a new token generated")]
    EmptyToken(PathBuf),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    DebugSocket(#[from] DebugSocketError),
}

/// Reads the API token from `path`, or generates one there (mode 0600) when the file is absent.
/// The token is never logged.
pub fn load_or_create_token(path: &Path) -> Result<Secret, AppError> {
    let err = |source| AppError::Token {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim();
            if token.is_empty() {
                return Err(AppError::EmptyToken(path.to_path_buf()));
            }
            let mode = std::fs::metadata(path).map_err(err)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "token file is readable by others; chmod 600 it");
            }
            Ok(Secret::new(token))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(dir) = dir {
                ensure_private_dir(dir)?;
            }
            let token = Secret::generate(TOKEN_LEN);
            // Written aside (0600) and linked into place only when complete: an agent killed
            // mid-write must not leave an empty token file that stops the next start.
            let mut file =
                tempfile::NamedTempFile::new_in(dir.unwrap_or(Path::new("."))).map_err(err)?;
            file.write_all(format!("{}\n", token.expose()).as_bytes())
                .map_err(err)?;
            file.as_file().sync_all().map_err(err)?;
            file.persist_noclobber(path).map_err(|e| err(e.error))?;
            tracing::info!(path = %path.display(), "generated a new API token");
            Ok(token)
        }
        Err(e) => Err(err(e)),
    }
}

/// A running agent.
pub struct RunningAgent {
    pub pool: WarmPool,
    pub api_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub socket_path: PathBuf,
    pub token: Secret,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningAgent")
            .field("api_addr", &self.api_addr)
            .field("admin_addr", &self.admin_addr)
            .finish()
    }
}

impl RunningAgent {
    /// Graceful shutdown: stop taking claims, finish resets in flight (up to `grace`), stop
    /// serving. Pods stay running, to be adopted by the next start.
    pub async fn shutdown(self, grace: Duration) {
        tracing::info!("shutting down: no new claims; finishing operations in flight");
        self.pool.shutdown(grace).await;
        self.cancel.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        tracing::info!("agent stopped");
    }
}

async fn listen(what: &'static str, addr: SocketAddr) -> Result<tokio::net::TcpListener, AppError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Listen { what, addr, source })
}

fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    cancel: CancellationToken,
    what: &'static str,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let shutdown = async move { cancel.cancelled().await };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, server = what, "server stopped");
        }
    })
}

/// Removes the import spool directories (`import-*`, see [`crate::import::spool_archive`]) an
/// agent killed mid-import left in its data directory: an interrupted import is never resumed
/// (the coordinator fails the job and releases the pod), so they would only fill the disk.
fn remove_stale_import_spools(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && name.to_string_lossy().starts_with("import-") {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    tracing::info!(dir = %entry.path().display(), "removed the spool of an interrupted import")
                }
                Err(e) => {
                    tracing::warn!(dir = %entry.path().display(), error = %e, "cannot remove the spool of an interrupted import")
                }
            }
        }
    }
}

/// Builds and starts the agent over `runtime`, probing WordPress with `probe`. Needs no answer
/// from the runtime: the state file, token, ports and debug socket come up first (start-up
/// errors about them are returned), then the pool adopts the node's pods as soon as the runtime
/// answers (see [`WarmPool::start`]).
pub async fn start(
    config: AgentConfig,
    runtime: Arc<dyn ContainerRuntime>,
    probe: Arc<dyn SiteProbe>,
) -> Result<RunningAgent, AppError> {
    let started = Instant::now();
    ensure_private_dir(&config.data_dir)?;
    remove_stale_import_spools(&config.data_dir);
    let token = load_or_create_token(&config.token_file)?;
    let store = Arc::new(Store::open(&config.state_file())?);

    let mut registry = Registry::default();
    let metrics = AgentMetrics::register(&mut registry);
    runtime.register_metrics(&mut registry);
    let registry = Arc::new(registry);

    let commands = PodCommands::new(runtime.clone());
    let health = PodHealth { commands, probe };
    let labels: BTreeMap<String, String> = config.pod_labels.iter().cloned().collect();
    let template = PodTemplate {
        node: config.node.clone(),
        image: config.image.clone(),
        network: config.network.clone(),
        db_limits: ContainerLimits {
            cpu_millis: config.db_limits.cpu_millis,
            memory_bytes: config.db_limits.memory_mb << 20,
        },
        web_limits: ContainerLimits {
            cpu_millis: config.web_limits.cpu_millis,
            memory_bytes: config.web_limits.memory_mb << 20,
        },
        labels,
    };
    let provisioner = Provisioner {
        template,
        health: health.clone(),
        ready_timeout: Duration::from_secs(60),
    };
    let resetter = Resetter {
        method: config.reset_method,
        verifier: ResetVerifier {
            health,
            ready_timeout: Duration::from_secs(30),
        },
    };
    let pool = WarmPool::new(
        PoolConfig {
            node: config.node.clone(),
            warm_target: config.warm_target,
            max_pods: config.max_pods,
            create_parallelism: config.create_parallelism,
            reconcile_interval: config.reconcile_interval,
            lost_pod_grace: config.lost_pod_grace,
        },
        store,
        provisioner,
        resetter,
        metrics,
    );

    let cancel = CancellationToken::new();
    let api_listener = listen("agent API", config.api_listen).await?;
    let admin_listener = listen("admin", config.admin_listen).await?;
    let api_addr = api_listener.local_addr().unwrap_or(config.api_listen);
    let admin_addr = admin_listener.local_addr().unwrap_or(config.admin_listen);
    let socket_path = config.ctl_socket();
    let socket = debug_socket::bind(&socket_path)?;

    let mut tasks = vec![
        serve(
            admin_listener,
            crate::admin::router(pool.clone(), registry),
            cancel.clone(),
            "admin",
        ),
        serve(
            api_listener,
            crate::api::router(pool.clone(), token.clone(), config.import_config()),
            cancel.clone(),
            "agent API",
        ),
    ];
    let info = AgentInfo {
        image: config.image.clone(),
        warm_target: config.warm_target,
        api_listen: api_addr.to_string(),
        admin_listen: admin_addr.to_string(),
        data_dir: config.data_dir.display().to_string(),
        started,
    };
    tasks.push(tokio::spawn(debug_socket::serve(
        socket,
        socket_path.clone(),
        pool.clone(),
        info,
        cancel.clone(),
    )));

    // Adopt the node's pods; when the runtime does not answer yet this returns at once and
    // the pool keeps trying, while the ports above already answer (/livez 200, /readyz 503,
    // claims 503 unavailable).
    pool.start().await;

    if let Some(url) = config.coordinator_url.clone() {
        tasks.push(tokio::spawn(crate::api::push_capacity(
            pool.clone(),
            url,
            config.coordinator_ca.clone(),
            token.clone(),
            config.push_interval,
            cancel.clone(),
        )));
    }
    tracing::info!(
        node = %config.node,
        api = %api_addr,
        admin = %admin_addr,
        socket = %socket_path.display(),
        warm_target = config.warm_target,
        max_pods = config.max_pods,
        reset_method = %config.reset_method,
        "clonepool-agent started"
    );
    Ok(RunningAgent {
        pool,
        api_addr,
        admin_addr,
        socket_path,
        token,
        cancel,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_is_private_complete_and_read_back_the_next_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("token");
        let first = load_or_create_token(&path).unwrap();
        assert!(first.expose().len() >= 32, "a long random token");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim(),
            first.expose()
        );
        // Nothing left beside it from writing it aside first.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("token")]);
        let again = load_or_create_token(&path).unwrap();
        assert_eq!(again.expose(), first.expose());
    }

    #[test]
    fn an_empty_token_file_is_a_clear_error_not_an_empty_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "\n").unwrap();
        let err = load_or_create_token(&path).unwrap_err();
        assert!(matches!(err, AppError::EmptyToken(_)), "{err}");
        assert!(err.to_string().contains("remove it"), "{err}");
    }
}
