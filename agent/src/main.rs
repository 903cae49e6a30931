//! `clonepool-agent`: parses the configuration, starts the agent over the configured backend
//! (the Docker Engine, or a Kubernetes API server plus the node's Docker Engine; connected when
//! it answers), runs it until SIGTERM/SIGINT, then shuts down gracefully.

use anyhow::Context;
use clonepool_agent::app;
use clonepool_agent::config::{AgentConfig, Backend};
use clonepool_agent::connecting_runtime::ConnectingRuntime;
use clonepool_agent::node_lease::node_lease;
use clonepool_agent::provision::HttpSiteProbe;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> anyhow::Result<()> {
    let config = match AgentConfig::from_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("clonepool-agent: {e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLONEPOOL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(config))
}

async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // Kubernetes mode: one agent per node at a time, through the node Lease.
    let lease = match &config.kube_lease_namespace {
        Some(namespace) if config.backend == Backend::Kubernetes => {
            let client = kube::Client::try_default()
                .await
                .context("Kubernetes API server configuration for the node Lease")?;
            let lease = node_lease(
                client,
                namespace,
                config.node.as_str(),
                &config.kube_pod_name,
            );
            tokio::select! {
                acquired = lease.acquire() => acquired.context("taking the node Lease")?,
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
            }
            Some(lease)
        }
        _ => None,
    };
    // Connected when first used: the admin port and API come up even while the engine (or the
    // API server) is down.
    let runtime = match config.backend {
        Backend::Docker => ConnectingRuntime::docker(config.docker_socket.clone()),
        Backend::Kubernetes => ConnectingRuntime::kube(config.kube_settings()),
    };
    let agent = app::start(config, Arc::new(runtime), Arc::new(HttpSiteProbe::new())).await?;
    let kept = async {
        match &lease {
            Some(lease) => lease.keep().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
        lost = kept => tracing::error!(error = %lost, "stopping: this agent no longer holds its node"),
    }
    agent.shutdown(app::SHUTDOWN_GRACE).await;
    if let Some(lease) = lease {
        lease.release().await;
    }
    Ok(())
}
