//! The admin port: `/livez` (the process answers), `/readyz` (state loaded and the container
//! runtime reachable) and `/metrics` (Prometheus text). No token: bind it to a private address.

use crate::metrics::encode;
use crate::pool::WarmPool;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone)]
struct AdminState {
    pool: WarmPool,
    registry: Arc<Registry>,
}

async fn livez() -> impl IntoResponse {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.pool.ready().await {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: state not loaded or container runtime unreachable\n",
        )
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        encode(&state.registry),
    )
}

/// The admin router.
pub fn router(pool: WarmPool, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState { pool, registry })
}
