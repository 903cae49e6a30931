//! The HTTP API v2 (see `clonepool_common::api` for the table): handlers, the JSON body
//! extractor (size limit → 413, bad JSON / unknown fields → 400), idempotency keys,
//! authentication of `/api/` (API tokens) and `/internal/` (agent token), and JSON 404/405.

use crate::agent_client::AgentToken;
use crate::api_error::ApiError;
use crate::auth::{self, ApiTokens};
use crate::edge::EdgeRoutes;
use crate::jobs::JobEngine;
use crate::reaper::{Reaper, ReleaseOutcome};
use crate::registry::AgentRegistry;
use crate::store::{
    CancelOutcome, Created, EndOutcome, ExtendOutcome, IdempotencyKey, NewClone, NewJob, Store,
    StoreError,
};
use crate::timestamps::now_ms;
use crate::url_guard::{Lookup, UrlPolicy};
use crate::validation::{
    check_clone_fields, check_restore_fields, check_rollback_fields, check_url, field_problems,
};
use axum::extract::{FromRequest, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use clonepool_common::agent_api::Capacity;
use clonepool_common::api::{
    CloneInfo, CloneList, CloneRequest, CloneStatus, DeleteResponse, ExtendRequest, JobAccepted,
    JobState, JobStatus, JobType, PoolStatus, RestoreRequest, RestoreSource, RollbackRequest,
    IDEMPOTENCY_KEY_HEADER, MAX_IDEMPOTENCY_KEY_LEN, MAX_TTL_MINUTES, MIN_TTL_MINUTES,
};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

/// Limits the API enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_queued_jobs: u32,
    pub default_ttl_minutes: u32,
    pub dns_timeout: Duration,
}

/// How clone URLs are formed: `{scheme}://{clone}.{domain}[:{port}]` (standalone: the edge
/// proxy's `http://{clone}.localhost:{port}`; Kubernetes: the Ingress's `{clone}.{base_domain}`).
#[derive(Debug, Clone)]
pub struct CloneUrls {
    pub scheme: &'static str,
    pub domain: String,
    pub port: Option<u16>,
}

impl CloneUrls {
    pub fn host(&self, clone_id: &str) -> String {
        match self.port {
            Some(port) => format!("{clone_id}.{}:{port}", self.domain),
            None => format!("{clone_id}.{}", self.domain),
        }
    }

    pub fn url(&self, clone_id: &str) -> String {
        format!("{}://{}", self.scheme, self.host(clone_id))
    }
}

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub engine: Arc<JobEngine>,
    pub reaper: Arc<Reaper>,
    pub registry: Arc<AgentRegistry>,
    pub edge: EdgeRoutes,
    pub policy: Arc<UrlPolicy>,
    pub lookup: Arc<dyn Lookup>,
    pub api_tokens: ApiTokens,
    pub agent_token: AgentToken,
    pub limits: Limits,
    pub clone_urls: CloneUrls,
    pub openapi: Arc<serde_json::Value>,
}

/// The API router (HTTPS listener).
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/v2/clone", post(post_clone))
        .route(
            "/api/v2/job-status/{job_id}",
            get(get_job_status).delete(cancel_job_by_delete),
        )
        .route("/api/v2/job-status/{job_id}/cancel", post(cancel_job))
        .route("/api/v2/restore", post(post_restore))
        .route("/api/v2/rollback", post(post_rollback))
        .route("/api/v2/delete/{clone_id}", delete(delete_clone))
        .route("/api/v2/clones", get(list_clones))
        .route("/api/v2/clones/{clone_id}", get(get_clone))
        .route("/api/v2/clones/{clone_id}/extend", post(extend_clone))
        .route("/api/v2/pool", get(get_pool))
        .route("/api/v2/openapi.json", get(get_openapi))
        .route("/internal/v1/capacity", post(push_capacity))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    api.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        authenticate,
    ))
    .with_state(state)
}

/// `/api/…` needs an API token, `/internal/…` the agent token; everything else is public
/// (and unknown).
async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path == "/api" || path.starts_with("/api/") {
        if let Err(err) = auth::check(&state.api_tokens, request.headers()) {
            return err.into_response();
        }
    } else if path.starts_with("/internal/") {
        let ok = auth::bearer_token(request.headers())
            .is_some_and(|token| state.agent_token.accepts(token));
        if !ok {
            return ApiError::unauthorized("this route needs the agent token").into_response();
        }
    }
    next.run(request).await
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route (see /api/v2/openapi.json)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// A JSON body: at most `max_body_bytes` (413), valid JSON (400), matching `T` with no unknown
/// fields (400). Keeps the canonical form for idempotency hashing.
pub struct JsonBody<T> {
    pub value: T,
    pub canonical: String,
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.limits.max_body_bytes;
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(ApiError::payload_too_large(limit));
        }
        let bytes = axum::body::to_bytes(request.into_body(), limit)
            .await
            .map_err(|err| {
                let too_large = std::error::Error::source(&err)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                    || err.to_string().contains("length limit");
                if too_large {
                    ApiError::payload_too_large(limit)
                } else {
                    ApiError::bad_request(format!("could not read the request body: {err}"))
                }
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request("a JSON body is required"));
        }
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|err| ApiError::bad_request(format!("the body is not valid JSON: {err}")))?;
        if !json.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        let canonical = canonical_json(&json);
        let value = serde_json::from_value::<T>(json).map_err(|err| {
            let text = err.to_string();
            let text = if text.contains("did not match any variant") {
                "source must be {\"url\", \"username\", \"password\"} or {\"clone_id\"}".to_string()
            } else {
                text
            };
            ApiError::bad_request(format!(
                "the body does not match the request schema: {text}"
            ))
        })?;
        Ok(JsonBody { value, canonical })
    }
}

/// JSON with object keys sorted, so equal bodies hash equal whatever their key order or spacing.
pub fn canonical_json(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        serde_json::Value::String(k.clone()),
                        canonical_json(&map[k])
                    )
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        serde_json::Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", parts.join(","))
        }
        other => other.to_string(),
    }
}

fn idempotency_key(
    store: &Store,
    headers: &HeaderMap,
    route: &'static str,
    canonical: &str,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY_LEN
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
            ))
        })?;
    let request_hash = store.idempotency_hash(route, canonical);
    Ok(Some(IdempotencyKey {
        route,
        key: key.to_string(),
        request_hash,
    }))
}

fn store_error(err: StoreError) -> ApiError {
    match err {
        StoreError::CloneNameTaken { clone_id } => ApiError::conflict(format!(
            "a live clone named {clone_id:?} already exists; choose another customer_id or delete that clone first"
        )),
        StoreError::QueueFull { limit } => ApiError::queue_full(limit),
        StoreError::IdempotencyMismatch => ApiError::idempotency_key_reused(),
        other => {
            tracing::error!(error = %other, "store error while answering a request");
            ApiError::internal("the coordinator could not read or write its database")
        }
    }
}

/// A job id: `job-` and lower-case hex/letters/digits, at most 64 characters.
fn check_job_id(job_id: &str) -> Result<(), ApiError> {
    let ok = job_id.len() <= 64
        && job_id.strip_prefix("job-").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{:?} is not a job id (job ids look like job-4f1c2a9b0d3e5f6a7b8c9d0e)",
            job_id.chars().take(80).collect::<String>()
        )))
    }
}

fn check_clone_id(clone_id: &str) -> Result<clonepool_common::ids::CloneId, ApiError> {
    clone_id
        .parse()
        .map_err(|err| ApiError::bad_request(format!("clone_id: {err}")))
}

fn new_job_id() -> String {
    format!("job-{}", hex::encode(rand::random::<[u8; 12]>()))
}

fn generated_clone_id() -> String {
    format!("clone-{}", hex::encode(rand::random::<[u8; 4]>()))
}

fn accepted(job: &crate::store::JobRow, replayed: bool) -> Response {
    let status_url = format!("/api/v2/job-status/{}", job.id);
    let body = JobAccepted {
        job_id: job.id.clone(),
        status: job.state,
        status_url: status_url.clone(),
        clone_id: job.clone_id.clone(),
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&status_url) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// Start cloning a site.
#[utoipa::path(
    post,
    path = "/api/v2/clone",
    request_body = CloneRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key + same body → same job; same key + different body → 422")),
    responses(
        (status = 202, description = "Job queued (or replayed for a repeated Idempotency-Key)", body = JobAccepted),
        (status = 400, description = "Bad JSON, unknown field, bad customer_id/ttl, or a refused URL (codes bad_request, invalid_url, forbidden_url)", body = crate::openapi::ErrorBodyDoc),
        (status = 401, description = "Missing or wrong bearer token", body = crate::openapi::ErrorBodyDoc),
        (status = 409, description = "A live clone already has this customer_id", body = crate::openapi::ErrorBodyDoc),
        (status = 413, description = "Body too large", body = crate::openapi::ErrorBodyDoc),
        (status = 422, description = "Idempotency-Key reused with a different body", body = crate::openapi::ErrorBodyDoc),
        (status = 429, description = "Too many jobs waiting (Retry-After)", body = crate::openapi::ErrorBodyDoc),
    ),
    security(("bearer" = [])),
    tag = "clones"
)]
pub async fn post_clone(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: JsonBody<CloneRequest>,
) -> Result<Response, ApiError> {
    let valid = check_clone_fields(&body.value, state.limits.default_ttl_minutes)
        .map_err(field_problems)?;
    let source_url = check_url(
        &state.policy,
        state.lookup.as_ref(),
        state.limits.dns_timeout,
        "source_url",
        &valid.source_url,
    )
    .await?;
    let idempotency = idempotency_key(&state.store, &headers, "clone", &body.canonical)?;
    let generated = valid.clone_id.is_none();
    for _ in 0..3 {
        let clone_id = valid
            .clone_id
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_else(generated_clone_id);
        let stored = CloneRequest {
            source_url: source_url.clone(),
            source_username: valid.source_username.clone(),
            source_password: valid.source_password.clone(),
            customer_id: Some(clone_id.clone()),
            ttl_minutes: Some(valid.ttl_minutes),
        };
        let job = NewJob {
            job_id: new_job_id(),
            job_type: JobType::Clone,
            request_json: serde_json::to_string(&stored)
                .map_err(|err| ApiError::internal(err.to_string()))?,
            clone: Some(NewClone {
                clone_id: clone_id.clone(),
                source_url: source_url.clone(),
                clone_url: state.clone_urls.url(&clone_id),
                clone_host: state.clone_urls.host(&clone_id),
                ttl_minutes: valid.ttl_minutes,
            }),
            idempotency: idempotency.clone(),
            max_queued: state.limits.max_queued_jobs,
            now: now_ms(),
        };
        match state.store.create_job(job).await {
            Ok(Created::New(job)) => {
                state.engine.wake();
                tracing::info!(job = %job.id, clone = %clone_id, "clone job queued");
                return Ok(accepted(&job, false));
            }
            Ok(Created::Replayed(job)) => return Ok(accepted(&job, true)),
            Err(StoreError::CloneNameTaken { .. }) if generated => continue,
            Err(err) => return Err(store_error(err)),
        }
    }
    Err(ApiError::internal("could not generate a free clone name"))
}

/// A job's status, progress and result.
#[utoipa::path(
    get,
    path = "/api/v2/job-status/{job_id}",
    params(("job_id" = String, Path, description = "The job id from the 202 answer")),
    responses(
        (status = 200, description = "The job", body = JobStatus),
        (status = 400, description = "Malformed job id", body = crate::openapi::ErrorBodyDoc),
        (status = 404, description = "No such job", body = crate::openapi::ErrorBodyDoc),
    ),
    security(("bearer" = [])),
    tag = "jobs"
)]
pub async fn get_job_status(
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    check_job_id(&job_id)?;
    match state.store.job(&job_id).await.map_err(store_error)? {
        Some(job) => Ok(Json(job.to_status())),
        None => Err(ApiError::not_found(format!("no job {job_id}"))),
    }
}

/// Cancel a pending job (`DELETE /api/v2/job-status/{job_id}` does the same). Running and
/// finished jobs cannot be cancelled (409).
#[utoipa::path(
    post,
    path = "/api/v2/job-status/{job_id}/cancel",
    params(("job_id" = String, Path)),
    responses(
        (status = 200, description = "Cancelled; the job as it is now", body = JobStatus),
        (status = 404, description = "No such job", body = crate::openapi::ErrorBodyDoc),
        (status = 409, description = "The job is running or finished", body = crate::openapi::ErrorBodyDoc),
    ),
    security(("bearer" = [])),
    tag = "jobs"
)]
pub async fn cancel_job(
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    check_job_id(&job_id)?;
    match state
        .store
        .cancel_job(&job_id, now_ms())
        .await
        .map_err(store_error)?
    {
        CancelOutcome::Cancelled(job) => {
            state.engine.wake();
            state.reaper.wake();
            state.engine.metrics_cancelled(job.job_type);
            Ok(Json(job.to_status()))
        }
        CancelOutcome::NotCancellable(job) => Err(ApiError::conflict(format!(
            "job {job_id} is {}; only pending jobs can be cancelled",
            job.state
        ))),
        CancelOutcome::NotFound => Err(ApiError::not_found(format!("no job {job_id}"))),
    }
}

/// Cancel a pending job: the same as `POST /api/v2/job-status/{job_id}/cancel`.
#[utoipa::path(
    delete,
    path = "/api/v2/job-status/{job_id}",
    params(("job_id" = String, Path)),
    responses(
        (status = 200, description = "Cancelled; the job as it is now", body = JobStatus),
        (status = 404, description = "No such job", body = crate::openapi::ErrorBodyDoc),
        (status = 409, description = "The job is running or finished", body = crate::openapi::ErrorBodyDoc),
    ),
    security(("bearer" = [])),
    tag = "jobs"
)]
pub async fn cancel_job_by_delete(
    state: State<AppState>,
    job_id: Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    cancel_job(state, job_id).await
}

/// Push a clone back to a production site.
#[utoipa::path(
    post,
    path = "/api/v2/restore",
    request_body = RestoreRequest,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 202, description = "Job queued: the clone is exported through its agent, rewritten to the target's URL and pushed into the target's migrator plugin, which backs up first. The result names the backup.", body = JobAccepted),
        (status = 400, description = "Bad input or refused URL", body = crate::openapi::ErrorBodyDoc),
        (status = 404, description = "source.clone_id (or source.url) names no ready clone", body = crate::openapi::ErrorBodyDoc),
        (status = 413, description = "Body too large", body = crate::openapi::ErrorBodyDoc),
        (status = 422, description = "Idempotency-Key reused with a different body", body = crate::openapi::ErrorBodyDoc),
        (status = 429, description = "Too many jobs waiting", body = crate::openapi::ErrorBodyDoc),
    ),
    security(("bearer" = [])),
    tag = "restores"
)]
pub async fn post_restore(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: JsonBody<RestoreRequest>,
) -> Result<Response, ApiError> {
    check_restore_fields(&body.value).map_err(field_problems)?;
    let lookup = state.lookup.as_ref();
    let timeout = state.limits.dns_timeout;
    check_url(
        &state.policy,
        lookup,
        timeout,
        "target.url",
        &body.value.target.url,
    )
    .await?;
    match &body.value.source {
        RestoreSource::Site(site) => {
            // The old API named the clone by its URL and login; it is never fetched.
            let live = state
                .store
                .clone_by_url(&site.url)
                .await
                .map_err(store_error)?
                .is_some_and(|c| c.status == CloneStatus::Ready);
            if !live {
                return Err(ApiError::not_found(format!(
                    "source.url {:?} is not the URL of a ready clone of this coordinator (a restore reads from a clone)",
                    site.url
                )));
            }
        }
        RestoreSource::Clone(clone) => {
            let live = state
                .store
                .clone_by_name(&clone.clone_id)
                .await
                .map_err(store_error)?
                .is_some_and(|c| c.status == CloneStatus::Ready);
            if !live {
                return Err(ApiError::not_found(format!(
                    "no ready clone named {:?}",
                    clone.clone_id
                )));
            }
        }
    }
    queue_site_job(&state, &headers, JobType::Restore, "restore", &body).await
}

/// Queues a restore or rollback job (no clone) and answers 202, or the job an earlier request
/// with the same `Idempotency-Key` made.
async fn queue_site_job<T: serde::Serialize>(
    state: &AppState,
    headers: &HeaderMap,
    job_type: JobType,
    route: &'static str,
    body: &JsonBody<T>,
) -> Result<Response, ApiError> {
    let idempotency = idempotency_key(&state.store, headers, route, &body.canonical)?;
    let job = NewJob {
        job_id: new_job_id(),
        job_type,
        request_json: serde_json::to_string(&body.value)
            .map_err(|err| ApiError::internal(err.to_string()))?,
        clone: None,
        idempotency,
        max_queued: state.limits.max_queued_jobs,
        now: now_ms(),
    };
    match state.store.create_job(job).await.map_err(store_error)? {
        Created::New(job) => {
            state.engine.wake();
            Ok(accepted(&job, false))
        }
        Created::Replayed(job) => Ok(accepted(&job, true)),
    }
}

/// Put a target site back from a backup a restore made.
#[utoipa::path(
    post,
    path = "/api/v2/rollback",
    request_body = RollbackRequest,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 202, description = "Job queued: the target's migrator plugin restores the backup's tables and files and removes what the restore created.", body = JobAccepted),
        (status = 400, description = "Bad input or refused URL", body = crate::openapi::ErrorBodyDoc),
        (status = 413, description = "Body too large", body = crate::openapi::ErrorBodyDoc),
        (status = 422, description = "Idempotency-Key reused with a different body", body = crate::openapi::ErrorBodyDoc),
        (status = 429, description = "Too many jobs waiting", body = crate::openapi::ErrorBodyDoc),
    ),
    security(("bearer" = [])),
    tag = "restores"
)]
pub async fn post_rollback(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: JsonBody<RollbackRequest>,
) -> Result<Response, ApiError> {
    check_rollback_fields(&body.value).map_err(field_problems)?;
    check_url(
        &state.policy,
        state.lookup.as_ref(),
        state.limits.dns_timeout,
        "target.url",
        &body.value.target.url,
    )
    .await?;
    queue_site_job(&state, &headers, JobType::Rollback, "rollback", &body).await
}

/// End a clone early: its pod is reset and returns to the warm pool.
#[utoipa::path(
    delete,
    path = "/api/v2/delete/{clone_id}",
    params(("clone_id" = String, Path)),
    responses(
        (status = 200, description = "Ended; the agent is resetting its pod", body = DeleteResponse),
        (status = 202, description = "Ended; handing the pod back is being retried", body = DeleteResponse),
        (status = 400, description = "Malformed clone id", body = crate::openapi::ErrorBodyDoc),
        (status = 404, description = "No live clone by that name", body = crate::openapi::ErrorBodyDoc),
        (status = 409, description = "The clone's job is still running", body = crate::openapi::ErrorBodyDoc),
    ),
    security(("bearer" = [])),
    tag = "clones"
)]
pub async fn delete_clone(
    State(state): State<AppState>,
    Path(clone_id): Path<String>,
) -> Result<Response, ApiError> {
    check_clone_id(&clone_id)?;
    let outcome = state
        .store
        .end_clone(&clone_id, now_ms())
        .await
        .map_err(store_error)?;
    let answer = |status: StatusCode, clone_status: CloneStatus, message: &str| {
        (
            status,
            Json(DeleteResponse {
                clone_id: clone_id.clone(),
                status: clone_status,
                message: message.to_string(),
            }),
        )
            .into_response()
    };
    match outcome {
        EndOutcome::Releasing(row) => {
            state.edge.remove(&clone_id);
            match state.reaper.release(&row).await.map_err(store_error)? {
                ReleaseOutcome::Released => Ok(answer(
                    StatusCode::OK,
                    CloneStatus::Released,
                    "deleted; its pod is being reset and returned to the warm pool",
                )),
                ReleaseOutcome::InFlight | ReleaseOutcome::Pending(_) => Ok(answer(
                    StatusCode::ACCEPTED,
                    CloneStatus::Releasing,
                    "deleted; handing its pod back to the agent is being retried",
                )),
            }
        }
        EndOutcome::AlreadyReleasing(_) => Ok(answer(
            StatusCode::ACCEPTED,
            CloneStatus::Releasing,
            "already ending; its pod is being handed back",
        )),
        EndOutcome::CancelledJob(row) => {
            state.engine.metrics_cancelled(JobType::Clone);
            state.reaper.wake();
            Ok(answer(
                StatusCode::OK,
                row.status,
                "deleted before its job started; the job was cancelled",
            ))
        }
        EndOutcome::StillProvisioning { job_id } => Err(ApiError::conflict(format!(
            "clone {clone_id} is still being created by job {job_id}; delete it once that job has finished"
        ))),
        EndOutcome::NotFound => Err(ApiError::not_found(format!(
            "no live clone named {clone_id}"
        ))),
    }
}

/// Live clones (`?all=true` adds ended ones, newest first, at most 500).
#[utoipa::path(
    get,
    path = "/api/v2/clones",
    params(("all" = Option<bool>, Query, description = "Include ended clones")),
    responses((status = 200, body = CloneList)),
    security(("bearer" = [])),
    tag = "clones"
)]
pub async fn list_clones(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<CloneList>, ApiError> {
    let mut all = false;
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=').unwrap_or((pair, "true")) {
            ("all", "true" | "1") => all = true,
            ("all", "false" | "0") => all = false,
            ("all", other) => {
                return Err(ApiError::bad_request(format!(
                    "all must be true or false, not {other:?}"
                )))
            }
            _ => {}
        }
    }
    let rows = state.store.list_clones(all).await.map_err(store_error)?;
    Ok(Json(CloneList {
        clones: rows.iter().map(|r| r.to_info()).collect(),
    }))
}

/// One clone: the live one by that name, or else the most recent ended one.
#[utoipa::path(
    get,
    path = "/api/v2/clones/{clone_id}",
    params(("clone_id" = String, Path)),
    responses(
        (status = 200, body = CloneInfo),
        (status = 400, description = "Malformed clone id", body = crate::openapi::ErrorBodyDoc),
        (status = 404, description = "Never heard of it", body = crate::openapi::ErrorBodyDoc),
    ),
    security(("bearer" = [])),
    tag = "clones"
)]
pub async fn get_clone(
    State(state): State<AppState>,
    Path(clone_id): Path<String>,
) -> Result<Json<CloneInfo>, ApiError> {
    check_clone_id(&clone_id)?;
    match state
        .store
        .clone_by_name(&clone_id)
        .await
        .map_err(store_error)?
    {
        Some(row) => Ok(Json(row.to_info())),
        None => Err(ApiError::not_found(format!("no clone named {clone_id}"))),
    }
}

/// Add time to a live clone.
#[utoipa::path(
    post,
    path = "/api/v2/clones/{clone_id}/extend",
    params(("clone_id" = String, Path)),
    request_body = ExtendRequest,
    responses(
        (status = 200, description = "The clone with its new expiry", body = CloneInfo),
        (status = 400, description = "ttl_minutes out of range, or the clone would live longer than 1440 more minutes", body = crate::openapi::ErrorBodyDoc),
        (status = 404, description = "No live clone by that name", body = crate::openapi::ErrorBodyDoc),
    ),
    security(("bearer" = [])),
    tag = "clones"
)]
pub async fn extend_clone(
    State(state): State<AppState>,
    Path(clone_id): Path<String>,
    body: JsonBody<ExtendRequest>,
) -> Result<Json<CloneInfo>, ApiError> {
    check_clone_id(&clone_id)?;
    let minutes = body.value.ttl_minutes;
    if !(MIN_TTL_MINUTES..=MAX_TTL_MINUTES).contains(&minutes) {
        return Err(ApiError::bad_request(format!(
            "ttl_minutes is {minutes}; it must be between {MIN_TTL_MINUTES} and {MAX_TTL_MINUTES}"
        )));
    }
    match state
        .store
        .extend_clone(&clone_id, minutes, MAX_TTL_MINUTES, now_ms())
        .await
        .map_err(store_error)?
    {
        ExtendOutcome::Extended(row) => {
            if row.status == CloneStatus::Ready {
                state.edge.insert(&row);
            }
            Ok(Json(row.to_info()))
        }
        ExtendOutcome::NotLive => Err(ApiError::not_found(format!(
            "no live clone named {clone_id}"
        ))),
        ExtendOutcome::TooLong { remaining_minutes } => Err(ApiError::bad_request(format!(
            "the clone would live {remaining_minutes} more minutes; at most {MAX_TTL_MINUTES} are allowed"
        ))),
    }
}

/// Capacity per agent, as last heard.
#[utoipa::path(
    get,
    path = "/api/v2/pool",
    responses((status = 200, body = PoolStatus)),
    security(("bearer" = [])),
    tag = "pool"
)]
pub async fn get_pool(State(state): State<AppState>) -> Result<Json<PoolStatus>, ApiError> {
    let agents: Vec<_> = state
        .registry
        .snapshot()
        .iter()
        .map(|view| view.to_pool())
        .collect();
    let queued = state
        .store
        .job_counts()
        .await
        .map_err(store_error)?
        .into_iter()
        .find(|(s, _)| *s == JobState::Pending)
        .map_or(0, |(_, n)| n as u32);
    Ok(Json(PoolStatus {
        warm_total: agents.iter().filter(|a| a.up).map(|a| a.warm).sum(),
        agents,
        queued_jobs: queued,
    }))
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/v2/openapi.json",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API")),
    security(("bearer" = [])),
    tag = "meta"
)]
pub async fn get_openapi(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(state.openapi.as_ref().clone())
}

/// An agent pushes its capacity (heartbeat). Authenticated with the agent token.
async fn push_capacity(
    State(state): State<AppState>,
    body: JsonBody<Capacity>,
) -> Result<StatusCode, ApiError> {
    if state.registry.accept_push(body.value.clone()) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no configured agent has reported node {:?}; the coordinator polls its configured agents first",
            body.value.node
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_ignores_key_order_and_spacing() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": null}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a":{"x":null,"y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        let c: serde_json::Value =
            serde_json::from_str(r#"{"a":{"x":null,"y":[2,1]},"b":1}"#).unwrap();
        assert_ne!(canonical_json(&a), canonical_json(&c));
    }

    #[test]
    fn job_ids_are_checked_before_any_lookup() {
        assert!(check_job_id("job-4f1c2a9b0d3e5f6a7b8c9d0e").is_ok());
        assert!(check_job_id("job-abc123").is_ok());
        for bad in [
            "",
            "job-",
            "4f1c",
            "job-ABC",
            "job-a/b",
            "job-a b",
            &format!("job-{}", "a".repeat(61)),
        ] {
            assert_eq!(
                check_job_id(bad).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }

    #[test]
    fn idempotency_keys_must_be_visible_ascii_and_hash_with_the_stored_key() {
        let (_dir, store) = crate::store::tests::open_temp();
        let mut headers = HeaderMap::new();
        assert!(idempotency_key(&store, &headers, "clone", "{}")
            .unwrap()
            .is_none());
        headers.insert(IDEMPOTENCY_KEY_HEADER, HeaderValue::from_static("abc-123"));
        let body = r#"{"source_password":"hunter2"}"#;
        let key = idempotency_key(&store, &headers, "clone", body)
            .unwrap()
            .unwrap();
        assert_eq!(key.key, "abc-123");
        let other_route = idempotency_key(&store, &headers, "restore", body)
            .unwrap()
            .unwrap();
        assert_ne!(key.request_hash, other_route.request_hash);
        let plain = {
            use sha2::{Digest, Sha256};
            hex::encode(Sha256::digest(format!("clone\n{body}").as_bytes()))
        };
        assert_ne!(
            key.request_hash, plain,
            "a keyed hash: the stored value cannot be checked against password guesses"
        );
        // The same key after a restart (read back from the database).
        let again = crate::store::Store::open(store.path()).unwrap();
        assert_eq!(again.idempotency_hash("clone", body), key.request_hash);
        headers.insert(
            IDEMPOTENCY_KEY_HEADER,
            HeaderValue::from_static("has space"),
        );
        assert!(idempotency_key(&store, &headers, "clone", "{}").is_err());
    }
}
