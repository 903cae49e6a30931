//! `clonepool-coordinator`: parses the configuration, sets up logging, and runs the coordinator
//! until SIGINT/SIGTERM.
use anyhow::Context;
use clonepool_coordinator::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let config = Config::from_env_and_args();
    let filter =
        EnvFilter::try_from_env("CLONEPOOL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: scripts/up sends the log to a file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime
        .block_on(clonepool_coordinator::run(config, shutdown_signal()))
        .context("clonepool-coordinator failed")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
