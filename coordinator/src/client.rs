//! A typed client of the coordinator's v2 API (for `clonepoolctl`, the bench and tests):
//! HTTPS trusting a given CA (the standalone local CA) or the built-in roots, bearer token,
//! JSON errors turned into [`ClientError::Api`], and a `wait_job` poller.
//!
//! [`ApiClient::from_env`] reads what `scripts/up` writes to `.clonepool/env`:
//! `CLONEPOOL_URL`, `CLONEPOOL_TOKEN` (the token file's path, or the token itself) and
//! `CLONEPOOL_CA` (the CA file's path; optional).

use clonepool_common::api::{
    CloneInfo, CloneList, CloneRequest, DeleteResponse, ExtendRequest, JobAccepted, JobStatus,
    PoolStatus, RestoreRequest, RollbackRequest, IDEMPOTENCY_KEY_HEADER,
};
use clonepool_common::error::ErrorBody;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("client set-up: {0}")]
    Setup(String),
    #[error("cannot reach the coordinator at {url}: {reason}")]
    Transport { url: String, reason: String },
    /// The API answered with an error body.
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unreadable answer from the coordinator: {0}")]
    Decode(String),
    #[error("job {job_id} did not finish within {waited:?} (last status: {last})")]
    WaitTimeout {
        job_id: String,
        waited: Duration,
        last: String,
    },
}

impl ClientError {
    /// The API error code, when the API answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A 202 answer plus whether it replayed an earlier request with the same Idempotency-Key.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub job: JobAccepted,
    pub replayed: bool,
}

#[derive(Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
    token: String,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl ApiClient {
    /// `base` like `https://localhost:7401`; `ca_pem` the CA to trust (else built-in roots).
    pub fn new(base: &str, token: &str, ca_pem: Option<&[u8]>) -> Result<Self, ClientError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = ca_pem {
            let tls = crate::tls::client_config_trusting(ca)
                .map_err(|err| ClientError::Setup(err.to_string()))?;
            builder = builder.use_preconfigured_tls(tls);
        }
        let http = builder
            .build()
            .map_err(|err| ClientError::Setup(err.to_string()))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            http,
            token: token.trim().to_string(),
        })
    }

    /// From `CLONEPOOL_URL`, `CLONEPOOL_TOKEN` (a file path or the token) and `CLONEPOOL_CA`.
    pub fn from_env() -> Result<Self, ClientError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let url = var("CLONEPOOL_URL").unwrap_or_else(|| "https://localhost:7401".into());
        let token = var("CLONEPOOL_TOKEN").ok_or_else(|| {
            ClientError::Setup("CLONEPOOL_TOKEN is not set (source .clonepool/env)".into())
        })?;
        let token = if Path::new(&token).is_file() {
            let text = std::fs::read_to_string(&token)
                .map_err(|err| ClientError::Setup(format!("cannot read {token}: {err}")))?;
            crate::auth::parse_token_file(&text)
                .into_iter()
                .next()
                .ok_or_else(|| ClientError::Setup(format!("{token} holds no token")))?
        } else {
            token
        };
        let ca = match var("CLONEPOOL_CA") {
            Some(path) => Some(
                std::fs::read(&path)
                    .map_err(|err| ClientError::Setup(format!("cannot read {path}: {err}")))?,
            ),
            None => None,
        };
        Self::new(&url, &token, ca.as_deref())
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        idempotency_key: Option<&str>,
    ) -> Result<reqwest::Response, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = idempotency_key {
            request = request.header(IDEMPOTENCY_KEY_HEADER, key);
        }
        let response = request.send().await.map_err(|err| ClientError::Transport {
            url: self.base.clone(),
            reason: describe(&err),
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => ClientError::Api {
                status: status.as_u16(),
                code: body.error.code,
                message: body.error.message,
            },
            Err(_) => ClientError::Api {
                status: status.as_u16(),
                code: "unknown".into(),
                message: text.chars().take(300).collect(),
            },
        })
    }

    async fn json<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        self.send(method, path, body, None)
            .await?
            .json::<T>()
            .await
            .map_err(|err| ClientError::Decode(err.to_string()))
    }

    async fn accepted<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
        idempotency_key: Option<&str>,
    ) -> Result<Accepted, ClientError> {
        let response = self
            .send(Method::POST, path, Some(body), idempotency_key)
            .await?;
        let replayed = response.headers().contains_key("idempotent-replayed");
        if response.status() != StatusCode::ACCEPTED {
            return Err(ClientError::Decode(format!(
                "expected 202, got {}",
                response.status()
            )));
        }
        let job = response
            .json::<JobAccepted>()
            .await
            .map_err(|err| ClientError::Decode(err.to_string()))?;
        Ok(Accepted { job, replayed })
    }

    /// `POST /api/v2/clone`.
    pub async fn clone_site(
        &self,
        request: &CloneRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Accepted, ClientError> {
        self.accepted("/api/v2/clone", request, idempotency_key)
            .await
    }

    /// `POST /api/v2/restore`.
    pub async fn restore(
        &self,
        request: &RestoreRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Accepted, ClientError> {
        self.accepted("/api/v2/restore", request, idempotency_key)
            .await
    }

    /// `POST /api/v2/rollback`.
    pub async fn rollback(
        &self,
        request: &RollbackRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Accepted, ClientError> {
        self.accepted("/api/v2/rollback", request, idempotency_key)
            .await
    }

    /// `GET /api/v2/job-status/{job_id}`.
    pub async fn job(&self, job_id: &str) -> Result<JobStatus, ClientError> {
        self.json::<_, ()>(Method::GET, &format!("/api/v2/job-status/{job_id}"), None)
            .await
    }

    /// `POST /api/v2/job-status/{job_id}/cancel`.
    pub async fn cancel_job(&self, job_id: &str) -> Result<JobStatus, ClientError> {
        self.json::<_, ()>(
            Method::POST,
            &format!("/api/v2/job-status/{job_id}/cancel"),
            None,
        )
        .await
    }

    /// Polls a job every `every` until it is completed, failed or cancelled (or `timeout`),
    /// calling `on_progress` with each status seen.
    pub async fn wait_job(
        &self,
        job_id: &str,
        every: Duration,
        timeout: Duration,
        mut on_progress: impl FnMut(&JobStatus),
    ) -> Result<JobStatus, ClientError> {
        let started = Instant::now();
        loop {
            let status = self.job(job_id).await?;
            on_progress(&status);
            if status.status.is_terminal() {
                return Ok(status);
            }
            if started.elapsed() >= timeout {
                return Err(ClientError::WaitTimeout {
                    job_id: job_id.to_string(),
                    waited: started.elapsed(),
                    last: format!("{} {}% {}", status.status, status.progress, status.message),
                });
            }
            tokio::time::sleep(every).await;
        }
    }

    /// `DELETE /api/v2/delete/{clone_id}`.
    pub async fn delete(&self, clone_id: &str) -> Result<DeleteResponse, ClientError> {
        self.json::<_, ()>(Method::DELETE, &format!("/api/v2/delete/{clone_id}"), None)
            .await
    }

    /// `GET /api/v2/clones` (`all`: include ended clones).
    pub async fn clones(&self, all: bool) -> Result<CloneList, ClientError> {
        let path = if all {
            "/api/v2/clones?all=true"
        } else {
            "/api/v2/clones"
        };
        self.json::<_, ()>(Method::GET, path, None).await
    }

    /// `GET /api/v2/clones/{clone_id}`.
    pub async fn clone_info(&self, clone_id: &str) -> Result<CloneInfo, ClientError> {
        self.json::<_, ()>(Method::GET, &format!("/api/v2/clones/{clone_id}"), None)
            .await
    }

    /// `POST /api/v2/clones/{clone_id}/extend`.
    pub async fn extend(&self, clone_id: &str, ttl_minutes: u32) -> Result<CloneInfo, ClientError> {
        self.json(
            Method::POST,
            &format!("/api/v2/clones/{clone_id}/extend"),
            Some(&ExtendRequest { ttl_minutes }),
        )
        .await
    }

    /// `GET /api/v2/pool`.
    pub async fn pool(&self) -> Result<PoolStatus, ClientError> {
        self.json::<_, ()>(Method::GET, "/api/v2/pool", None).await
    }

    /// `GET /api/v2/openapi.json`.
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.json::<_, ()>(Method::GET, "/api/v2/openapi.json", None)
            .await
    }
}

/// An error and all its sources, joined with `: ` (reqwest's own message hides the cause).
pub(crate) fn describe(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
