//! Calling one agent's API (claim, release, capacity; see `clonepool_common::agent_api`): the
//! [`AgentClient`] seam, its HTTP implementation over reqwest with the agent bearer token read
//! from the agent's token file, and the error classification the router acts on.

use crate::auth::parse_token_file;
use async_trait::async_trait;
use clonepool_common::agent_api::{
    Capacity, ClaimRequest, ClaimResponse, ExportRequest, ImportResponse, PodSummary, ReadyRequest,
    ReleaseRequest, ReleaseResponse, EXPORT_SOURCE_URL_HEADER,
};
use clonepool_common::error::{codes, ErrorBody};
use clonepool_common::ids::CloneId;
use reqwest::StatusCode;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How an agent call went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// Definite: no WARM pod is free there (nothing was claimed).
    #[error("no warm pod is free on this agent")]
    NoWarmPod,
    /// Definite: the agent is at its pod limit and cannot create one (nothing was claimed).
    #[error("the agent has no room for another pod (pods being reset count against its limit until they are WARM again)")]
    NoCapacity,
    /// Definite: the agent is draining and takes no claims.
    #[error("the agent is draining")]
    Draining,
    /// The agent knows no such clone/pod.
    #[error("not found: {0}")]
    NotFound(String),
    /// The agent refused the request for good (4xx other than the above).
    #[error("the agent refused the request ({status} {code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// The agent refused our token.
    #[error("the agent refused the coordinator's token; check the agent token file")]
    Unauthorized,
    /// No answer, a timeout, or a 5xx: the outcome is unknown and the call may be retried.
    #[error("the agent did not answer properly: {0}")]
    Unavailable(String),
}

impl AgentError {
    /// A definite "nothing happened" answer to a claim: safe to try the next agent.
    pub fn is_definite_refusal(&self) -> bool {
        matches!(
            self,
            AgentError::NoWarmPod
                | AgentError::NoCapacity
                | AgentError::Draining
                | AgentError::NotFound(_)
                | AgentError::Refused { .. }
                | AgentError::Unauthorized
        )
    }
}

/// One agent, as the coordinator sees it.
#[async_trait]
pub trait AgentClient: Send + Sync + 'static {
    /// The agent's base URL; also its identity in the registry and the clones table.
    fn url(&self) -> &str;
    async fn claim(&self, request: &ClaimRequest) -> Result<ClaimResponse, AgentError>;
    /// The clone's pod serves its site (ASSIGNED → READY). Idempotent.
    async fn mark_ready(&self, request: &ReadyRequest) -> Result<PodSummary, AgentError>;
    async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseResponse, AgentError>;
    async fn capacity(&self) -> Result<Capacity, AgentError>;
    /// Streams a source site's export archive into the clone's (ASSIGNED) pod; the pod is READY
    /// afterwards. A refused or failed import makes the agent release the pod.
    async fn import(
        &self,
        clone_id: &CloneId,
        archive: crate::wp_site::ExportStream,
    ) -> Result<ImportResponse, AgentError>;
    /// Opens a READY clone's site as an import archive for another site (see
    /// `clonepool_common::agent_api::ExportRequest`).
    async fn export(&self, request: &ExportRequest) -> Result<ClonedSiteArchive, AgentError>;
}

/// A clone's site, as the agent exports it.
pub struct ClonedSiteArchive {
    pub stream: crate::wp_site::ExportStream,
    /// Bytes of the archive (the agent spools it first).
    pub len: Option<u64>,
    /// The clone's URL, rewritten to the target's in the archive.
    pub source_url: String,
}

/// The agent bearer token, read from the agent's token file when first needed and again
/// after the agent refuses it (the agent may have generated or rotated it).
#[derive(Clone)]
pub struct AgentToken {
    path: PathBuf,
    cached: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for AgentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgentToken({})", self.path.display())
    }
}

impl AgentToken {
    pub fn from_file(path: PathBuf) -> Self {
        Self {
            path,
            cached: Arc::new(Mutex::new(None)),
        }
    }

    /// A fixed token (tests, embedding).
    pub fn fixed(token: &str) -> Self {
        Self {
            path: PathBuf::from("<fixed>"),
            cached: Arc::new(Mutex::new(Some(token.to_string()))),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The token, reading the file if needed.
    pub fn get(&self) -> Result<String, AgentError> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(token) = cached.as_ref() {
            return Ok(token.clone());
        }
        let contents = std::fs::read_to_string(&self.path).map_err(|err| {
            AgentError::Unavailable(format!(
                "cannot read the agent token file {}: {err}",
                self.path.display()
            ))
        })?;
        let token = parse_token_file(&contents)
            .into_iter()
            .next()
            .ok_or_else(|| {
                AgentError::Unavailable(format!(
                    "the agent token file {} is empty",
                    self.path.display()
                ))
            })?;
        *cached = Some(token.clone());
        Ok(token)
    }

    /// Forgets a cached token read from the file, so the next call reads it again.
    pub fn invalidate(&self) {
        if self.path.as_os_str() != "<fixed>" {
            *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// True when `presented` is the agent token (constant time).
    pub fn accepts(&self, presented: &str) -> bool {
        match self.get() {
            Ok(token) => crate::auth::ApiTokens::from_tokens(&[token]).accepts(presented),
            Err(_) => false,
        }
    }
}

/// [`AgentClient`] over HTTP(S).
pub struct HttpAgentClient {
    base: String,
    http: reqwest::Client,
    token: AgentToken,
    /// Timeout of claims (cold claims create a pod).
    claim_timeout: Duration,
}

impl HttpAgentClient {
    pub fn new(base: &str, token: AgentToken, claim_timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a reqwest client with static settings builds");
        Self {
            base: base.trim_end_matches('/').to_string(),
            http,
            token,
            claim_timeout,
        }
    }

    async fn call<B: serde::Serialize + Sync, T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, AgentError> {
        for attempt in 0..2 {
            let token = self.token.get()?;
            let mut request = self
                .http
                .request(method.clone(), format!("{}{}", self.base, path))
                .bearer_auth(token)
                .timeout(timeout);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request
                .send()
                .await
                .map_err(|err| AgentError::Unavailable(describe(&err)))?;
            let status = response.status();
            if status.is_success() {
                return response
                    .json::<T>()
                    .await
                    .map_err(|err| AgentError::Unavailable(format!("unreadable answer: {err}")));
            }
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                // The agent may have rotated its token: read the file again once.
                self.token.invalidate();
                continue;
            }
            let body = response.text().await.unwrap_or_default();
            return Err(classify(status, &body));
        }
        Err(AgentError::Unauthorized)
    }
}

fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timed out".to_string()
    } else if err.is_connect() {
        "connection refused or unreachable".to_string()
    } else {
        crate::client::describe(err)
    }
}

/// Maps an agent's error answer to an [`AgentError`].
pub fn classify(status: StatusCode, body: &str) -> AgentError {
    let parsed = serde_json::from_str::<ErrorBody>(body).ok();
    let code = parsed.as_ref().map(|b| b.error.code.as_str()).unwrap_or("");
    let message = parsed
        .as_ref()
        .map(|b| b.error.message.clone())
        .unwrap_or_else(|| body.chars().take(200).collect());
    match code {
        codes::NO_WARM_POD => return AgentError::NoWarmPod,
        codes::NO_CAPACITY => return AgentError::NoCapacity,
        codes::DRAINING => return AgentError::Draining,
        _ => {}
    }
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => AgentError::Unauthorized,
        StatusCode::NOT_FOUND => AgentError::NotFound(message),
        s if s.is_client_error() => AgentError::Refused {
            status: s.as_u16(),
            code: code.to_string(),
            message,
        },
        s => AgentError::Unavailable(format!("{} {code}: {message}", s.as_u16())),
    }
}

#[async_trait]
impl AgentClient for HttpAgentClient {
    fn url(&self) -> &str {
        &self.base
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<ClaimResponse, AgentError> {
        self.call(
            reqwest::Method::POST,
            "/v1/claim",
            Some(request),
            self.claim_timeout,
        )
        .await
    }

    async fn mark_ready(&self, request: &ReadyRequest) -> Result<PodSummary, AgentError> {
        self.call(
            reqwest::Method::POST,
            "/v1/ready",
            Some(request),
            Duration::from_secs(30),
        )
        .await
    }

    async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseResponse, AgentError> {
        self.call(
            reqwest::Method::POST,
            "/v1/release",
            Some(request),
            Duration::from_secs(30),
        )
        .await
    }

    async fn capacity(&self) -> Result<Capacity, AgentError> {
        self.call::<(), _>(
            reqwest::Method::GET,
            "/v1/capacity",
            None,
            Duration::from_secs(3),
        )
        .await
    }

    async fn import(
        &self,
        clone_id: &CloneId,
        archive: crate::wp_site::ExportStream,
    ) -> Result<ImportResponse, AgentError> {
        // One attempt: the body is a stream that cannot be sent twice.
        let token = self.token.get()?;
        let response = self
            .http
            .post(format!("{}/v1/import?clone_id={clone_id}", self.base))
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
            .timeout(IMPORT_TIMEOUT)
            .body(reqwest::Body::wrap_stream(archive))
            .send()
            .await
            .map_err(|err| AgentError::Unavailable(describe(&err)))?;
        let status = response.status();
        if status.is_success() {
            return response
                .json::<ImportResponse>()
                .await
                .map_err(|err| AgentError::Unavailable(format!("unreadable answer: {err}")));
        }
        if status == StatusCode::UNAUTHORIZED {
            self.token.invalidate();
        }
        let body = response.text().await.unwrap_or_default();
        Err(classify(status, &body))
    }

    async fn export(&self, request: &ExportRequest) -> Result<ClonedSiteArchive, AgentError> {
        self.export_archive(request).await
    }
}

impl HttpAgentClient {
    async fn export_archive(
        &self,
        request: &ExportRequest,
    ) -> Result<ClonedSiteArchive, AgentError> {
        for attempt in 0..2 {
            let token = self.token.get()?;
            let response = self
                .http
                .post(format!("{}/v1/export", self.base))
                .bearer_auth(token)
                .json(request)
                // The agent dumps and spools the whole site before it answers.
                .timeout(IMPORT_TIMEOUT)
                .send()
                .await
                .map_err(|err| AgentError::Unavailable(describe(&err)))?;
            let status = response.status();
            if status.is_success() {
                let source_url = response
                    .headers()
                    .get(EXPORT_SOURCE_URL_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let len = response.content_length();
                let base = self.base.clone();
                let stream =
                    futures_util::TryStreamExt::map_err(response.bytes_stream(), move |e| {
                        std::io::Error::other(format!(
                            "the export from the agent {base} broke off: {}",
                            describe(&e)
                        ))
                    });
                return Ok(ClonedSiteArchive {
                    stream: Box::pin(stream),
                    len,
                    source_url,
                });
            }
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                self.token.invalidate();
                continue;
            }
            let body = response.text().await.unwrap_or_default();
            return Err(classify(status, &body));
        }
        Err(AgentError::Unauthorized)
    }
}

/// Longest time an import (export streamed through, database loaded) may take.
pub const IMPORT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[cfg(test)]
pub mod fake {
    //! An in-memory agent for unit tests: warm pods, a pod limit, idempotent claims per clone
    //! id, and switchable faults.

    use super::*;
    use clonepool_common::agent_api::{ClaimPath, PodCredentials};
    use clonepool_common::pod::PodState;
    use std::collections::HashMap;

    #[derive(Default)]
    pub struct FakeState {
        pub node: String,
        pub warm: u32,
        pub max: u32,
        /// clone id → (pod id, path)
        pub claims: HashMap<String, (String, ClaimPath)>,
        pub next_pod: u32,
        pub release_calls: HashMap<String, u32>,
        pub claim_calls: u32,
        pub capacity_calls: u32,
        pub down: bool,
        /// The next N claims fail with Unavailable *after* taking effect (lost answer).
        pub lose_claim_answers: u32,
        pub draining: bool,
        /// What capacity reports as `runtime_reachable` is the negation of this.
        pub runtime_unreachable: bool,
        /// Claims panic (a stand-in for a bug in the code under test).
        pub panic_on_claim: bool,
        pub claim_delay: Option<Duration>,
        /// Clones whose pod was marked ready.
        pub ready: std::collections::HashSet<String>,
        /// What claims answer as the pod endpoint.
        pub endpoint: String,
        /// Claims being answered right now, and the most at once.
        pub in_flight: u32,
        pub max_in_flight: u32,
        /// When set, imports fail with this error (and the pod is released, as a real agent does).
        pub import_error: Option<AgentError>,
        /// clone id → bytes of each archive imported.
        pub imported: Vec<(String, usize)>,
        /// Export requests answered.
        pub exports: Vec<ExportRequest>,
        /// What capacity reports as pods being reset.
        pub resetting: u32,
        /// Every claim request received, in order.
        pub claim_requests: Vec<ClaimRequest>,
    }

    pub struct FakeAgent {
        pub url: String,
        pub state: Mutex<FakeState>,
    }

    impl FakeAgent {
        pub fn new(url: &str, node: &str, warm: u32, max: u32) -> Arc<Self> {
            Arc::new(Self {
                url: url.to_string(),
                state: Mutex::new(FakeState {
                    node: node.to_string(),
                    warm,
                    max,
                    endpoint: "http://127.0.0.1:9".into(),
                    ..FakeState::default()
                }),
            })
        }

        pub fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
            f(&mut self.state.lock().unwrap())
        }

        fn assigned(state: &FakeState) -> u32 {
            state.claims.len() as u32
        }
    }

    #[async_trait]
    impl AgentClient for FakeAgent {
        fn url(&self) -> &str {
            &self.url
        }

        async fn claim(&self, request: &ClaimRequest) -> Result<ClaimResponse, AgentError> {
            let delay = self.with(|s| {
                s.in_flight += 1;
                s.max_in_flight = s.max_in_flight.max(s.in_flight);
                s.claim_delay
            });
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            self.with(|s| {
                s.in_flight -= 1;
                s.claim_calls += 1;
                s.claim_requests.push(request.clone());
                assert!(!s.panic_on_claim, "claim panics as asked");
                if s.down {
                    return Err(AgentError::Unavailable("connection refused".into()));
                }
                if s.draining {
                    return Err(AgentError::Draining);
                }
                let key = request.clone_id.to_string();
                let (pod, path) = if let Some(existing) = s.claims.get(&key) {
                    existing.clone()
                } else if s.warm > 0 {
                    s.warm -= 1;
                    s.next_pod += 1;
                    let pod = format!("cp-{}-{}", s.node, s.next_pod);
                    s.claims.insert(key.clone(), (pod.clone(), ClaimPath::Warm));
                    (pod, ClaimPath::Warm)
                } else if request.allow_cold && Self::assigned(s) < s.max {
                    s.next_pod += 1;
                    let pod = format!("cp-{}-{}", s.node, s.next_pod);
                    s.claims.insert(key.clone(), (pod.clone(), ClaimPath::Cold));
                    (pod, ClaimPath::Cold)
                } else if request.allow_cold {
                    return Err(AgentError::NoCapacity);
                } else {
                    return Err(AgentError::NoWarmPod);
                };
                if s.lose_claim_answers > 0 {
                    s.lose_claim_answers -= 1;
                    return Err(AgentError::Unavailable("timed out".into()));
                }
                Ok(ClaimResponse {
                    pod_id: pod.parse().unwrap(),
                    node: s.node.parse().unwrap(),
                    clone_id: request.clone_id.clone(),
                    endpoint: s.endpoint.clone(),
                    credentials: PodCredentials {
                        admin_username: "admin".into(),
                        admin_password: "fresh-password".into(),
                    },
                    path,
                    wordpress_version: Some("6.1.9".into()),
                })
            })
        }

        async fn mark_ready(&self, request: &ReadyRequest) -> Result<PodSummary, AgentError> {
            self.with(|s| {
                if s.down {
                    return Err(AgentError::Unavailable("connection refused".into()));
                }
                let key = request.clone_id.to_string();
                let Some((pod, _)) = s.claims.get(&key).cloned() else {
                    return Err(AgentError::NotFound(format!("no clone {key}")));
                };
                s.ready.insert(key);
                Ok(PodSummary {
                    pod_id: pod.parse().unwrap(),
                    node: s.node.parse().unwrap(),
                    state: PodState::Ready,
                    clone_id: Some(request.clone_id.clone()),
                    endpoint: Some(s.endpoint.clone()),
                    since: "2026-01-01T00:00:00Z".into(),
                    reason: None,
                })
            })
        }

        async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseResponse, AgentError> {
            self.with(|s| {
                if s.down {
                    return Err(AgentError::Unavailable("connection refused".into()));
                }
                let key = request.clone_id.to_string();
                *s.release_calls.entry(key.clone()).or_default() += 1;
                match s.claims.remove(&key) {
                    Some((pod, _)) => {
                        s.ready.remove(&key);
                        s.warm += 1;
                        Ok(ReleaseResponse {
                            pod_id: pod.parse().unwrap(),
                            state: PodState::Resetting,
                        })
                    }
                    None => Err(AgentError::NotFound(format!("no clone {key}"))),
                }
            })
        }

        async fn capacity(&self) -> Result<Capacity, AgentError> {
            self.with(|s| {
                s.capacity_calls += 1;
                if s.down {
                    return Err(AgentError::Unavailable("connection refused".into()));
                }
                Ok(Capacity {
                    node: s.node.clone(),
                    warm: s.warm,
                    assigned: Self::assigned(s),
                    max: s.max,
                    draining: s.draining,
                    resetting: s.resetting,
                    runtime_reachable: !s.runtime_unreachable,
                    ..Capacity::default()
                })
            })
        }

        async fn import(
            &self,
            clone_id: &CloneId,
            mut archive: crate::wp_site::ExportStream,
        ) -> Result<ImportResponse, AgentError> {
            use futures_util::StreamExt;
            let mut bytes = 0;
            while let Some(chunk) = archive.next().await {
                match chunk {
                    Ok(c) => bytes += c.len(),
                    Err(e) => {
                        self.with(|s| s.claims.remove(clone_id.as_str()));
                        return Err(AgentError::Refused {
                            status: 400,
                            code: codes::BAD_REQUEST.into(),
                            message: format!("bad archive: {e}"),
                        });
                    }
                }
            }
            self.with(|s| {
                if let Some(err) = s.import_error.clone() {
                    s.claims.remove(clone_id.as_str());
                    return Err(err);
                }
                let Some((pod, _)) = s.claims.get(clone_id.as_str()).cloned() else {
                    return Err(AgentError::NotFound(format!(
                        "no pod holds clone {clone_id}"
                    )));
                };
                s.imported.push((clone_id.to_string(), bytes));
                s.ready.insert(clone_id.to_string());
                Ok(ImportResponse {
                    pod_id: pod.parse().unwrap(),
                    clone_id: clone_id.clone(),
                    site_url: format!("http://{clone_id}.localhost:8080"),
                    source_url: "https://source.test".into(),
                    magic_login_url: format!(
                        "http://{clone_id}.localhost:8080/?clonepool_login=fake-token"
                    ),
                    admin_username: "siteadmin".into(),
                    admin_password: "imported-password".into(),
                    sql_bytes: 0,
                    files: 0,
                    archive_bytes: bytes as u64,
                    wordpress_version: "6.1.9".into(),
                    warnings: Vec::new(),
                })
            })
        }

        async fn export(&self, request: &ExportRequest) -> Result<ClonedSiteArchive, AgentError> {
            self.with(|s| {
                if s.down {
                    return Err(AgentError::Unavailable("connection refused".into()));
                }
                if !s.ready.contains(request.clone_id.as_str()) {
                    return Err(AgentError::Refused {
                        status: 409,
                        code: codes::CONFLICT.into(),
                        message: format!("clone {} is not READY here", request.clone_id),
                    });
                }
                s.exports.push(request.clone());
                let body = format!("archive of {} for {}", request.clone_id, request.target_url);
                Ok(ClonedSiteArchive {
                    len: Some(body.len() as u64),
                    stream: Box::pin(futures_util::stream::once(async move {
                        Ok(bytes::Bytes::from(body))
                    })),
                    source_url: format!("http://{}.localhost:8080", request.clone_id),
                })
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_error_codes_map_to_what_the_router_acts_on() {
        let body = |code: &str| serde_json::to_string(&ErrorBody::new(code, "m")).unwrap();
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &body(codes::NO_WARM_POD)),
            AgentError::NoWarmPod
        );
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &body(codes::NO_CAPACITY)),
            AgentError::NoCapacity
        );
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &body(codes::DRAINING)),
            AgentError::Draining
        );
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED, &body(codes::UNAUTHORIZED)),
            AgentError::Unauthorized
        );
        assert!(matches!(
            classify(StatusCode::NOT_FOUND, &body(codes::NOT_FOUND)),
            AgentError::NotFound(_)
        ));
        let unknown = classify(StatusCode::INTERNAL_SERVER_ERROR, "boom");
        assert!(matches!(unknown, AgentError::Unavailable(_)));
        assert!(!unknown.is_definite_refusal());
    }

    #[test]
    fn the_agent_token_is_read_from_its_file_and_reread_after_invalidation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let token = AgentToken::from_file(path.clone());
        assert!(token.get().is_err());
        std::fs::write(&path, "first\n").unwrap();
        assert_eq!(token.get().unwrap(), "first");
        std::fs::write(&path, "second\n").unwrap();
        assert_eq!(token.get().unwrap(), "first");
        token.invalidate();
        assert_eq!(token.get().unwrap(), "second");
        assert!(token.accepts("second"));
        assert!(!token.accepts("first"));
    }
}
