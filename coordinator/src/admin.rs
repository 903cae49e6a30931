//! The admin port (plain HTTP, loopback by default): `/healthz` and `/livez` (the process
//! answers), `/readyz` (start-up finished and the database answers), `/metrics` (Prometheus).

use crate::metrics::Metrics;
use crate::registry::AgentRegistry;
use crate::store::Store;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Router;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone)]
pub struct AdminState {
    pub store: Store,
    pub registry: Arc<AgentRegistry>,
    pub metrics: Metrics,
    /// Set once recovery ran and every listener is up.
    pub ready: Arc<AtomicBool>,
}

pub fn router(state: AdminState) -> Router {
    routes(get(live), get(ready), get(metrics)).with_state(state)
}

/// The admin port's paths, with the handlers of whoever serves it (the coordinator, or a
/// standby replica waiting for the leader Lease): one set of paths for probes and scrapes.
pub fn routes<S: Clone + Send + Sync + 'static>(
    live: MethodRouter<S>,
    ready: MethodRouter<S>,
    metrics: MethodRouter<S>,
) -> Router<S> {
    Router::new()
        .route("/healthz", live.clone())
        .route("/livez", live)
        .route("/readyz", ready)
        .route("/metrics", metrics)
}

/// `metrics` encoded as an OpenMetrics response.
pub fn metrics_response(metrics: &Metrics) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
        .into_response()
}

async fn live() -> &'static str {
    "ok\n"
}

async fn ready(State(state): State<AdminState>) -> Response {
    if !state.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response();
    }
    if !state.store.ping().await {
        return (StatusCode::SERVICE_UNAVAILABLE, "database not answering\n").into_response();
    }
    let agents = state.registry.snapshot();
    let up = agents.iter().filter(|a| a.up).count();
    (
        StatusCode::OK,
        format!("ready ({up} of {} agents up)\n", agents.len()),
    )
        .into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    if let Ok(counts) = state.store.job_counts().await {
        state.metrics.set_job_counts(&counts);
    }
    let agents = state.registry.snapshot();
    let up = agents.iter().filter(|a| a.up).count();
    state.metrics.set_agents(up, agents.len() - up);
    metrics_response(&state.metrics)
}
