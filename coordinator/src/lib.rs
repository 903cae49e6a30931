//! The clonepool coordinator: the HTTPS API users call, the durable job engine, the agent
//! registry and router, the cold fallback, the TTL reaper and the edge proxy — and in
//! Kubernetes mode ([`kubernetes`]) agent discovery, a Service + Ingress per clone, cold
//! clones as Deployments through the API server, and leader election between replicas
//! ([`leadership`]).
//!
//! [`start`] brings every piece up (in-process, for tests and embedding) and returns a handle
//! with the bound addresses; [`run`] is what the binary calls.

pub mod admin;
pub mod agent_client;
pub mod api_error;
pub mod auth;
pub mod client;
pub mod config;
pub mod edge;
pub mod exposure;
pub mod http_api;
pub mod jobs;
pub mod kubernetes;
pub mod leadership;
pub mod metrics;
pub mod openapi;
pub mod private_files;
pub mod reaper;
pub mod registry;
pub mod router;
pub mod server;
pub mod store;
pub mod timestamps;
pub mod tls;
pub mod url_guard;
pub mod validation;
pub mod wp_site;

#[cfg(test)]
mod api_tests;

use crate::agent_client::{AgentClient, AgentToken, HttpAgentClient};
use crate::auth::{ApiTokens, TokenSource};
use crate::config::{Config, ConfigError, Mode};
use crate::edge::{EdgeProxy, EdgeRoutes};
use crate::exposure::{CloneExposure, ExposeRequest};
use crate::jobs::{EngineSettings, JobEngine};
use crate::metrics::Metrics;
use crate::reaper::Reaper;
use crate::registry::AgentRegistry;
use crate::router::Router;
use crate::store::{Store, StoreError};
use crate::tls::{TlsError, TlsFiles};
use crate::url_guard::{SystemLookup, UrlPolicy};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long running jobs get to finish at shutdown before they are left to the next start.
const JOB_DRAIN: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Files(#[from] private_files::PrivateFileError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kube(#[from] kubernetes::KubeError),
    #[error(transparent)]
    Leadership(#[from] leadership::LeadershipError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running coordinator.
pub struct Coordinator {
    pub api_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub edge_addr: SocketAddr,
    pub tls: TlsFiles,
    pub tokens: TokenSource,
    pub data_dir: PathBuf,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

fn url_host(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() || addr.ip().is_loopback() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    }
}

impl Coordinator {
    /// `https://localhost:{port}` (or the bound address when it is not local).
    pub fn api_url(&self) -> String {
        format!("https://{}", url_host(self.api_addr))
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// `http://{clone}.localhost:{port}` pattern of clone URLs.
    pub fn edge_port(&self) -> u16 {
        self.edge_addr.port()
    }

    /// Stops accepting work, lets running jobs finish (up to a limit), and stops every task.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Stops every task at once, running jobs included (they stay `running` in the store and
    /// are recovered by whoever opens it next): for a leader that lost its Lease and must not
    /// write one more row.
    pub async fn abort(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, CoordinatorError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| CoordinatorError::Bind { what, addr, source })
}

/// Starts the coordinator: state, TLS, token, listeners, recovery of interrupted jobs, and the
/// background loops. Returns once it is ready to serve.
pub async fn start(config: Config) -> Result<Coordinator, CoordinatorError> {
    config.validate()?;
    let agent_token = AgentToken::from_file(config.agent_token_file.clone());
    if config.mode == Mode::Kubernetes {
        let client = kubernetes::client(&config.kube).await?;
        let settings = kubernetes::KubeSettings::from_config(&config.kube, &client);
        return start_inner(
            config,
            Vec::new(),
            agent_token,
            Some(KubeParts { client, settings }),
        )
        .await;
    }
    let clients: Vec<Arc<dyn AgentClient>> = config
        .agent_urls
        .iter()
        .map(|url| {
            Arc::new(HttpAgentClient::new(
                url,
                agent_token.clone(),
                config.agent_timeout(),
            )) as Arc<dyn AgentClient>
        })
        .collect();
    start_with_agents(config, clients, agent_token).await
}

/// [`start`] with the given agent clients (the seam tests use) and the agent token that
/// authenticates capacity pushes.
pub async fn start_with_agents(
    config: Config,
    clients: Vec<Arc<dyn AgentClient>>,
    agent_token: AgentToken,
) -> Result<Coordinator, CoordinatorError> {
    start_inner(config, clients, agent_token, None).await
}

/// What Kubernetes mode runs on.
struct KubeParts {
    client: ::kube::Client,
    settings: kubernetes::KubeSettings,
}

/// How long start-up waits for the first list of agent Pods.
const DISCOVERY_SYNC: Duration = Duration::from_secs(5);

async fn start_inner(
    config: Config,
    mut clients: Vec<Arc<dyn AgentClient>>,
    agent_token: AgentToken,
    kube: Option<KubeParts>,
) -> Result<Coordinator, CoordinatorError> {
    config.validate()?;
    private_files::ensure_private_dir(&config.data_dir)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    // A cold Deployment cannot take a source site's import yet: with source import on, a job
    // routed there would make a Deployment only to fail. Jobs wait for a warm pod instead (or
    // fail `no_capacity` saying why).
    if kube.is_some() && config.source_import {
        tracing::warn!(
            "cold clones (Deployments) are off: they cannot import a source site yet; \
             with --source-import=false clones are fresh sites and go cold when no warm pod is free"
        );
    }
    let cold = kube.as_ref().filter(|_| !config.source_import).map(|k| {
        Arc::new(kubernetes::cold::ColdProvisioner::new(
            k.client.clone(),
            k.settings.clone(),
        ))
    });
    if let Some(cold) = &cold {
        clients.push(cold.clone() as Arc<dyn AgentClient>);
    }
    let (api_tokens, tokens) =
        ApiTokens::load_or_generate(&config.api_token_path(), &config.api_tokens_from_env)?;
    let operator_tls = config.tls_cert.as_deref().zip(config.tls_key.as_deref());
    let (tls_config, tls) =
        tls::server_config(operator_tls, &config.data_dir, &config.tls_extra_names)?;
    let store = Store::open(&config.db_path())?.with_minute_ms(config.ttl_minute_ms as i64);
    let metrics = Metrics::new();
    let registry = Arc::new(AgentRegistry::new(clients, config.agent_stale()));
    if let Some(k) = &kube {
        let discovery = kubernetes::discovery::AgentDiscovery::new(
            k.client.clone(),
            &k.settings.namespace,
            &k.settings.agent_selector,
            k.settings.agent_port,
            agent_token.clone(),
            config.agent_timeout(),
            registry.clone(),
        );
        let (synced_tx, mut synced_rx) = watch::channel(false);
        tasks.push(tokio::spawn(discovery.run(synced_tx, shutdown_rx.clone())));
        if tokio::time::timeout(DISCOVERY_SYNC, synced_rx.wait_for(|synced| *synced))
            .await
            .is_err()
        {
            tracing::warn!(namespace = %k.settings.namespace, selector = %k.settings.agent_selector,
                "agent Pods not listed yet; continuing (discovery keeps trying)");
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), registry.poll_all()).await;
    let exposure: Option<Arc<dyn CloneExposure>> = kube.as_ref().map(|k| {
        let routes = kubernetes::routes::KubeRoutes::new(k.client.clone(), k.settings.clone());
        // Cold clones' Deployments come with their own Service and Ingress.
        let routes = match &cold {
            Some(cold) => routes.skipping(cold.url()),
            None => routes,
        };
        Arc::new(routes) as Arc<dyn CloneExposure>
    });

    let api_listener = bind("API", config.listen).await?;
    let admin_listener = bind("admin", config.admin_listen).await?;
    let edge_listener = bind("edge proxy", config.edge_listen).await?;
    let api_addr = api_listener
        .local_addr()
        .expect("a bound socket has an address");
    let admin_addr = admin_listener
        .local_addr()
        .expect("a bound socket has an address");
    let edge_addr = edge_listener
        .local_addr()
        .expect("a bound socket has an address");

    let edge_routes = EdgeRoutes::default();
    for clone in store.ready_clones().await? {
        edge_routes.insert(&clone);
    }
    let mut reaper = Reaper::new(
        store.clone(),
        registry.clone(),
        edge_routes.clone(),
        metrics.clone(),
    );
    let mut router = Router::new(registry.clone(), config.placement);
    if let Some(exposure) = &exposure {
        reaper = reaper.with_exposure(exposure.clone());
    }
    if let Some(cold) = &cold {
        router = router.with_cold_provisioner(cold.url());
    }
    let reaper = Arc::new(reaper);
    let router = Arc::new(router);
    let policy = Arc::new(
        UrlPolicy::new(&config.url_allow_hosts)
            .rejecting_unresolvable(config.url_reject_unresolvable),
    );
    let lookup: Arc<dyn crate::url_guard::Lookup> = Arc::new(SystemLookup);
    let mut engine = JobEngine::new(
        store.clone(),
        router,
        reaper.clone(),
        edge_routes.clone(),
        metrics.clone(),
        EngineSettings {
            max_concurrent: config.max_concurrent_jobs,
            max_attempts: config.job_max_attempts,
            backoff_base: Duration::from_millis(config.retry_backoff_ms),
        },
    );
    if let Some(exposure) = &exposure {
        engine = engine.with_exposure(exposure.clone());
        // Ready clones get their Service + Ingress again (idempotent), in the background.
        let ready = store.ready_clones().await?;
        tasks.push(tokio::spawn(reexpose(exposure.clone(), ready)));
    }
    let engine = Arc::new(if config.source_import {
        engine.with_sites(Arc::new(
            wp_site::HttpSiteClient::new(policy.clone(), lookup.clone())
                .with_memory(Arc::new(store.clone())),
        ))
    } else {
        engine
    });
    engine.recover().await?;

    let state = http_api::AppState {
        store: store.clone(),
        engine: engine.clone(),
        reaper: reaper.clone(),
        registry: registry.clone(),
        edge: edge_routes.clone(),
        policy,
        lookup,
        api_tokens,
        agent_token,
        limits: http_api::Limits {
            max_body_bytes: config.max_body_bytes,
            max_queued_jobs: config.max_queued_jobs,
            default_ttl_minutes: config.default_ttl_minutes,
            dns_timeout: Duration::from_millis(config.dns_timeout_ms),
        },
        clone_urls: match &kube {
            Some(k) => http_api::CloneUrls {
                scheme: k.settings.scheme,
                domain: k.settings.domain.clone(),
                port: None,
            },
            None => http_api::CloneUrls {
                scheme: "http",
                domain: config.edge_domain.trim_matches('.').to_string(),
                port: Some(config.edge_public_port.unwrap_or(edge_addr.port())),
            },
        },
        openapi: Arc::new(openapi::document()),
    };
    let ready = Arc::new(AtomicBool::new(false));
    let admin_state = admin::AdminState {
        store: store.clone(),
        registry: registry.clone(),
        metrics: metrics.clone(),
        ready: ready.clone(),
    };

    tasks.extend([
        tokio::spawn(server::serve_tls(
            api_listener,
            tls_config,
            http_api::router(state),
            shutdown_rx.clone(),
        )),
        tokio::spawn(serve_plain(
            admin_listener,
            admin::router(admin_state),
            shutdown_rx.clone(),
        )),
        tokio::spawn(serve_plain(
            edge_listener,
            EdgeProxy::new(edge_routes, &config.edge_domain).router(),
            shutdown_rx.clone(),
        )),
        tokio::spawn(
            registry
                .clone()
                .run_heartbeats(config.capacity_poll(), shutdown_rx.clone()),
        ),
        tokio::spawn(reaper.run(config.reaper_interval(), shutdown_rx.clone())),
        tokio::spawn(engine.run(shutdown_rx, JOB_DRAIN)),
    ]);
    metrics.leader.set(1);
    ready.store(true, Ordering::Release);

    let coordinator = Coordinator {
        api_addr,
        admin_addr,
        edge_addr,
        tls,
        tokens,
        data_dir: config.data_dir.clone(),
        shutdown: shutdown_tx,
        tasks,
    };
    tracing::info!(
        api = %coordinator.api_url(),
        admin = %coordinator.admin_url(),
        edge = %format!("http://{{clone}}.{}:{}", config.edge_domain, edge_addr.port()),
        token_file = %coordinator.tokens.path.display(),
        token_generated = coordinator.tokens.generated,
        ca = %coordinator.tls.ca.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(operator certificate)".into()),
        mode = ?config.mode,
        agents = ?registry.snapshot().iter().map(|a| a.url.clone()).collect::<Vec<_>>(),
        "coordinator ready"
    );
    Ok(coordinator)
}

/// Applies the Service + Ingress of clones that were ready before a restart.
async fn reexpose(exposure: Arc<dyn CloneExposure>, ready: Vec<store::CloneRow>) {
    for clone in ready {
        let (Some(pod_id), Some(agent)) = (clone.pod_id.clone(), clone.agent.clone()) else {
            continue;
        };
        let request = ExposeRequest {
            clone_id: clone.clone_id.clone(),
            pod_id,
            agent,
        };
        if let Err(err) = exposure.expose(&request).await {
            tracing::warn!(clone = %clone.clone_id, error = %err, "re-applying a ready clone's Service and Ingress failed");
        }
    }
}

async fn serve_plain(
    listener: TcpListener,
    app: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = shutdown.changed().await;
    })
    .await;
    if let Err(err) = served {
        tracing::error!(error = %err, "a plain-HTTP listener stopped");
    }
}

/// This replica's part in leader election, when `--kube-leader-lease` is set.
async fn leadership(config: &Config) -> Result<Option<leadership::Leadership>, CoordinatorError> {
    let Some(lease) = config
        .kube
        .leader_lease
        .as_deref()
        .filter(|_| config.mode == Mode::Kubernetes)
    else {
        return Ok(None);
    };
    let client = kubernetes::client(&config.kube).await?;
    let namespace = config
        .kube
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let identity = config
        .kube
        .leader_identity
        .clone()
        .unwrap_or_else(leadership::default_identity);
    Ok(Some(leadership::Leadership::new(
        client, &namespace, lease, &identity,
    )))
}

/// Runs the coordinator until `shutdown` completes, then shuts it down gracefully. With leader
/// election it first stands by until it holds the leader Lease, and stops with an error (at once,
/// without draining) if it loses it.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), CoordinatorError> {
    config.validate()?;
    tokio::pin!(shutdown);
    let leadership = leadership(&config).await?;
    if let Some(leadership) = &leadership {
        tokio::select! {
            held = leadership.wait_as_standby(config.admin_listen) => held?,
            _ = &mut shutdown => {
                tracing::info!("stopped while standing by");
                return Ok(());
            }
        }
    }
    let coordinator = match start(config).await {
        Ok(coordinator) => coordinator,
        Err(err) => {
            if let Some(leadership) = &leadership {
                leadership.release().await;
            }
            return Err(err);
        }
    };
    let lost = async {
        match &leadership {
            Some(leadership) => leadership.keep().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = &mut shutdown => {}
        lost = lost => {
            tracing::error!(error = %lost, "stopping at once: another replica may lead now; it recovers the running jobs");
            coordinator.abort().await;
            return Err(lost.into());
        }
    }
    tracing::info!("shutting down: no new work; running jobs get {JOB_DRAIN:?} to finish");
    coordinator.shutdown().await;
    if let Some(leadership) = &leadership {
        leadership.release().await;
    }
    tracing::info!("stopped");
    Ok(())
}
