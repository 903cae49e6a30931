//! The agent API (axum, JSON, bearer token): claim, release, ready, capacity, pods. Errors are
//! `common::error::ErrorBody` with stable codes. The import route streams a site archive into a
//! claimed pod ([`crate::import`]). Also the optional periodic capacity push to a
//! coordinator.

use crate::export::{ExportConfig, ExportError};
use crate::import::{ImportConfig, ImportError};
use crate::pool::{PoolError, WarmPool};
use crate::secrets::{constant_time_eq, Secret};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clonepool_common::agent_api::{
    ClaimRequest, ExportRequest, ImportQuery, ReadyRequest, ReleaseRequest,
    EXPORT_SOURCE_URL_HEADER,
};
use clonepool_common::error::{codes, ErrorBody};
use clonepool_common::ids::PodId;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Clone)]
struct ApiState {
    pool: WarmPool,
    token: Arc<Secret>,
    import: Arc<ImportConfig>,
    export: Arc<ExportConfig>,
}

/// An error answer: status and `ErrorBody`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody::new(code, message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        let (status, code) = match &e {
            PoolError::NotFound(_) => (StatusCode::NOT_FOUND, codes::NOT_FOUND),
            PoolError::Conflict(_) => (StatusCode::CONFLICT, codes::CONFLICT),
            PoolError::BadRequest(_) => (StatusCode::BAD_REQUEST, codes::BAD_REQUEST),
            PoolError::NoWarmPod(_) => (StatusCode::SERVICE_UNAVAILABLE, codes::NO_WARM_POD),
            PoolError::NoCapacity { .. } => (StatusCode::SERVICE_UNAVAILABLE, codes::NO_CAPACITY),
            PoolError::Draining(_) => (StatusCode::SERVICE_UNAVAILABLE, codes::DRAINING),
            PoolError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, codes::UNAVAILABLE),
            PoolError::Runtime(crate::runtime::RuntimeError::Unreachable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, codes::UNAVAILABLE)
            }
            PoolError::Store(_) | PoolError::Runtime(_) | PoolError::Failed(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, codes::INTERNAL)
            }
        };
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %e, "agent API request failed");
        }
        ApiError::new(status, code, e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        };
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            codes::PAYLOAD_TOO_LARGE
        } else {
            codes::BAD_REQUEST
        };
        ApiError::new(status, code, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, r.body_text())
    }
}

impl From<ImportError> for ApiError {
    fn from(e: ImportError) -> Self {
        let e = match e {
            ImportError::Pool(p) => return p.into(),
            other => other,
        };
        let (status, code) = match &e {
            ImportError::Pool(_) => (StatusCode::INTERNAL_SERVER_ERROR, codes::INTERNAL),
            ImportError::Hostile(_) | ImportError::BadArchive(_) | ImportError::ExportFailed(_) => {
                (StatusCode::BAD_REQUEST, codes::BAD_REQUEST)
            }
            ImportError::TooLarge(_) | ImportError::TooManyEntries(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, codes::PAYLOAD_TOO_LARGE)
            }
            ImportError::Runtime(crate::runtime::RuntimeError::Unreachable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, codes::UNAVAILABLE)
            }
            ImportError::Pod { .. } | ImportError::Runtime(_) | ImportError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, codes::INTERNAL)
            }
        };
        let message = format!("{e} (the clone's pod was released and is being reset)");
        ApiError::new(status, code, message)
    }
}

impl From<ExportError> for ApiError {
    fn from(e: ExportError) -> Self {
        let (status, code) = match &e {
            ExportError::Pool(_) => {
                let ExportError::Pool(p) = e else {
                    unreachable!()
                };
                return p.into();
            }
            ExportError::BadRequest(_) => (StatusCode::BAD_REQUEST, codes::BAD_REQUEST),
            ExportError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, codes::PAYLOAD_TOO_LARGE),
            ExportError::Runtime(crate::runtime::RuntimeError::Unreachable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, codes::UNAVAILABLE)
            }
            ExportError::Pod { .. } | ExportError::Runtime(_) | ExportError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, codes::INTERNAL)
            }
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "export failed");
        }
        ApiError::new(status, code, e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn require_token(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(t) if constant_time_eq(t.as_bytes(), state.token.expose().as_bytes()) => {
            next.run(req).await
        }
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED, "bad token")
            .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            codes::UNAUTHORIZED,
            "missing Authorization: Bearer <agent token>",
        )
        .into_response(),
    }
}

async fn claim(
    State(state): State<ApiState>,
    body: Result<Json<ClaimRequest>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let Json(req) = body?;
    Ok(Json(state.pool.claim(&req).await?))
}

async fn release(
    State(state): State<ApiState>,
    body: Result<Json<ReleaseRequest>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let Json(req) = body?;
    Ok((
        StatusCode::ACCEPTED,
        Json(state.pool.release(&req.clone_id).await?),
    ))
}

async fn ready(
    State(state): State<ApiState>,
    body: Result<Json<ReadyRequest>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let Json(req) = body?;
    Ok(Json(state.pool.mark_ready(&req.clone_id).await?))
}

async fn import_site(
    State(state): State<ApiState>,
    query: Result<Query<ImportQuery>, QueryRejection>,
    body: axum::body::Body,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = query?;
    Ok(Json(
        crate::import::import_clone(&state.pool, &q.clone_id, body, &state.import).await?,
    ))
}

async fn export_site(
    State(state): State<ApiState>,
    body: Result<Json<ExportRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) = body?;
    let archive = crate::export::export_clone(&state.pool, &req, &state.export).await?;
    let len = archive.len;
    let source_url = archive.source_url.clone();
    let stream = crate::export::into_stream(archive).await?;
    let mut resp = axum::body::Body::from_stream(stream).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&source_url) {
        headers.insert(EXPORT_SOURCE_URL_HEADER, v);
    }
    Ok(resp)
}

async fn capacity(State(state): State<ApiState>) -> ApiResult<impl IntoResponse> {
    Ok(Json(state.pool.capacity()?))
}

async fn pods(State(state): State<ApiState>) -> ApiResult<impl IntoResponse> {
    Ok(Json(state.pool.pods()?))
}

async fn pod(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let unknown = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            codes::NOT_FOUND,
            format!("no pod {id:?} on node {}", state.pool.node()),
        )
    };
    let id: PodId = id.parse().map_err(|_| unknown())?;
    Ok(Json(state.pool.pod(&id)?))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        codes::BAD_REQUEST,
        "method not allowed on this route",
    )
}

/// The agent API router. Every route needs the bearer `token`.
pub fn router(pool: WarmPool, token: Secret, import: ImportConfig) -> Router {
    let export = ExportConfig {
        max_bytes: import.max_bytes,
        spool_dir: import.spool_dir.clone(),
    };
    let state = ApiState {
        pool,
        token: Arc::new(token),
        import: Arc::new(import),
        export: Arc::new(export),
    };
    Router::new()
        .route("/v1/claim", post(claim))
        .route("/v1/release", post(release))
        .route("/v1/ready", post(ready))
        // The archive is streamed and counted by the import itself (`ImportConfig::max_bytes`).
        .route(
            "/v1/import",
            post(import_site).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/export", post(export_site))
        .route("/v1/capacity", get(capacity))
        .route("/v1/pods", get(pods))
        .route("/v1/pods/{id}", get(pod))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// POSTs the node's capacity to `url` every `interval` (with the agent token) until `cancel`.
pub async fn push_capacity(
    pool: WarmPool,
    url: String,
    ca_pem: Option<Vec<u8>>,
    token: Secret,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(5));
    if let Some(cert) = ca_pem.and_then(|pem| reqwest::Certificate::from_pem(&pem).ok()) {
        builder = builder.add_root_certificate(cert);
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the capacity push client");
            return;
        }
    };
    let mut failing = false;
    loop {
        if let Ok(capacity) = pool.capacity() {
            let sent = client
                .post(&url)
                .bearer_auth(token.expose())
                .json(&capacity)
                .send()
                .await
                .and_then(|r| r.error_for_status());
            match sent {
                Ok(_) if failing => {
                    tracing::info!(url, "capacity push works again");
                    failing = false;
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    tracing::warn!(url, error = %e, "capacity push failed (retrying quietly)");
                    failing = true;
                }
                Err(e) => tracing::debug!(url, error = %e, "capacity push failed"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
