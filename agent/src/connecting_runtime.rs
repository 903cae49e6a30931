//! `ConnectingRuntime`: a [`ContainerRuntime`] that connects to its engine on first use and
//! answers `Unreachable` until the engine answers, so the agent can start (admin port, API,
//! debug socket) while the Docker Engine is still down. Connection attempts back off from 0.5 s
//! to 5 s; once connected, every call goes straight to the connected runtime. The same for the
//! Kubernetes backend, which needs both the API server and the node's Docker Engine.

use crate::runtime::kube::KubeSettings;
use crate::runtime::{
    ArchiveStream, ContainerRuntime, DockerRuntime, ExecCounter, ExecOutput, ExecRequest,
    KubeRuntime, PodInfo, PodSpec, RuntimeError, RuntimeEvent,
};
use async_trait::async_trait;
use clonepool_common::ids::{NodeName, PodId};
use clonepool_common::pod::ContainerRole;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// First pause after a failed connection attempt; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest pause between connection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Makes one connection attempt.
pub type Connector = Box<
    dyn Fn() -> BoxFuture<'static, Result<Arc<dyn ContainerRuntime>, RuntimeError>> + Send + Sync,
>;

struct Attempts {
    /// No attempt before this instant.
    next: Option<Instant>,
    delay: Duration,
    last_error: String,
    failures: u64,
}

/// A runtime that is connected lazily (see the module doc).
pub struct ConnectingRuntime {
    connector: Connector,
    connected: tokio::sync::OnceCell<Arc<dyn ContainerRuntime>>,
    attempts: tokio::sync::Mutex<Attempts>,
    /// The exec counter the connected runtime counts into, registered before it connects.
    execs: Option<ExecCounter>,
}

impl std::fmt::Debug for ConnectingRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectingRuntime")
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl ConnectingRuntime {
    /// A runtime connected by `connector` when first needed.
    pub fn new(connector: Connector) -> Self {
        Self {
            connector,
            connected: tokio::sync::OnceCell::new(),
            attempts: tokio::sync::Mutex::new(Attempts {
                next: None,
                delay: FIRST_BACKOFF,
                last_error: String::new(),
                failures: 0,
            }),
            execs: None,
        }
    }

    /// Registers `execs` as this runtime's metric (the connector must hand it to the runtime).
    pub fn with_exec_counter(mut self, execs: ExecCounter) -> Self {
        self.execs = Some(execs);
        self
    }

    /// The Docker Engine at `socket` (see [`DockerRuntime::connect`]), connected when first
    /// needed (the API version is negotiated then).
    pub fn docker(socket: Option<String>) -> Self {
        let execs = ExecCounter::default();
        let counter = execs.clone();
        Self::new(Box::new(move || {
            let socket = socket.clone();
            let execs = counter.clone();
            Box::pin(async move {
                let runtime = DockerRuntime::connect(socket.as_deref()).await?;
                Ok(Arc::new(runtime.with_exec_counter(execs)) as Arc<dyn ContainerRuntime>)
            })
        }))
        .with_exec_counter(execs)
    }

    /// The Kubernetes API server and the node's Docker Engine, or its CRI runtime socket (see
    /// [`KubeRuntime::connect`]), connected when first needed.
    pub fn kube(settings: KubeSettings) -> Self {
        let execs = ExecCounter::default();
        let counter = execs.clone();
        Self::new(Box::new(move || {
            let settings = settings.clone();
            let execs = counter.clone();
            Box::pin(async move {
                let runtime = KubeRuntime::connect(settings).await?;
                Ok(Arc::new(runtime.with_exec_counter(execs)) as Arc<dyn ContainerRuntime>)
            })
        }))
        .with_exec_counter(execs)
    }

    pub fn is_connected(&self) -> bool {
        self.connected.initialized()
    }

    /// The connected runtime, connecting now if the back-off allows. Never waits for another
    /// caller's attempt: while one runs, the others get `Unreachable` at once.
    async fn get(&self) -> Result<&Arc<dyn ContainerRuntime>, RuntimeError> {
        if let Some(runtime) = self.connected.get() {
            return Ok(runtime);
        }
        let Ok(mut attempts) = self.attempts.try_lock() else {
            return Err(RuntimeError::Unreachable(
                "not connected yet (a connection attempt is running)".into(),
            ));
        };
        if let Some(runtime) = self.connected.get() {
            return Ok(runtime);
        }
        if attempts.next.is_some_and(|next| Instant::now() < next) {
            return Err(RuntimeError::Unreachable(format!(
                "not connected yet: {}",
                attempts.last_error
            )));
        }
        match (self.connector)().await {
            Ok(runtime) => {
                if attempts.failures > 0 {
                    tracing::info!(
                        failed_attempts = attempts.failures,
                        "connected to the container runtime"
                    );
                }
                Ok(self.connected.get_or_init(|| async { runtime }).await)
            }
            Err(e) => {
                attempts.last_error = e.to_string();
                attempts.failures += 1;
                attempts.next = Some(Instant::now() + attempts.delay);
                if attempts.failures == 1 {
                    tracing::warn!(error = %e, "cannot reach the container runtime yet; the agent serves /livez and retries");
                } else {
                    tracing::debug!(error = %e, "still cannot reach the container runtime");
                }
                attempts.delay = (attempts.delay * 2).min(MAX_BACKOFF);
                Err(match e {
                    RuntimeError::Unreachable(m) => RuntimeError::Unreachable(m),
                    other => RuntimeError::Unreachable(other.to_string()),
                })
            }
        }
    }
}

#[async_trait]
impl ContainerRuntime for ConnectingRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.get().await?.ping().await
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        if let Some(execs) = &self.execs {
            execs.register(registry);
        }
    }

    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        self.get().await?.image_present(image).await
    }

    async fn create_pod(&self, spec: &PodSpec) -> Result<PodInfo, RuntimeError> {
        self.get().await?.create_pod(spec).await
    }

    async fn start_pod(&self, pod: &PodId) -> Result<PodInfo, RuntimeError> {
        self.get().await?.start_pod(pod).await
    }

    async fn stop_pod(&self, pod: &PodId, grace: Duration) -> Result<(), RuntimeError> {
        self.get().await?.stop_pod(pod, grace).await
    }

    async fn remove_pod(&self, pod: &PodId) -> Result<(), RuntimeError> {
        self.get().await?.remove_pod(pod).await
    }

    async fn start_container(&self, pod: &PodId, role: ContainerRole) -> Result<(), RuntimeError> {
        self.get().await?.start_container(pod, role).await
    }

    async fn stop_container(
        &self,
        pod: &PodId,
        role: ContainerRole,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        self.get().await?.stop_container(pod, role, grace).await
    }

    async fn recreate_container(
        &self,
        pod: &PodId,
        role: ContainerRole,
    ) -> Result<(), RuntimeError> {
        self.get().await?.recreate_container(pod, role).await
    }

    async fn exec(
        &self,
        pod: &PodId,
        role: ContainerRole,
        request: ExecRequest,
    ) -> Result<ExecOutput, RuntimeError> {
        self.get().await?.exec(pod, role, request).await
    }

    async fn put_archive(
        &self,
        pod: &PodId,
        role: ContainerRole,
        dest: &str,
        tar: ArchiveStream,
    ) -> Result<(), RuntimeError> {
        self.get().await?.put_archive(pod, role, dest, tar).await
    }

    async fn get_archive(
        &self,
        pod: &PodId,
        role: ContainerRole,
        path: &str,
    ) -> Result<ArchiveStream, RuntimeError> {
        self.get().await?.get_archive(pod, role, path).await
    }

    async fn inspect_pod(&self, pod: &PodId) -> Result<PodInfo, RuntimeError> {
        self.get().await?.inspect_pod(pod).await
    }

    async fn list_pods(&self, node: &NodeName) -> Result<Vec<PodInfo>, RuntimeError> {
        self.get().await?.list_pods(node).await
    }

    async fn events(
        &self,
        node: &NodeName,
    ) -> Result<BoxStream<'static, Result<RuntimeEvent, RuntimeError>>, RuntimeError> {
        self.get().await?.events(node).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::FakeRuntime;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    fn connecting(
        fake: &FakeRuntime,
        up: Arc<AtomicBool>,
        attempts: Arc<AtomicUsize>,
    ) -> ConnectingRuntime {
        let fake = fake.clone();
        ConnectingRuntime::new(Box::new(move || {
            let fake = fake.clone();
            let up = up.clone();
            attempts.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if up.load(Ordering::SeqCst) {
                    Ok(Arc::new(fake) as Arc<dyn ContainerRuntime>)
                } else {
                    Err(RuntimeError::Engine("connection refused".into()))
                }
            })
        }))
    }

    #[tokio::test]
    async fn calls_answer_unreachable_until_the_engine_answers_then_go_through() {
        let fake = FakeRuntime::new();
        let up = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicUsize::new(0));
        let runtime = connecting(&fake, up.clone(), attempts.clone());
        for _ in 0..5 {
            match runtime.ping().await {
                Err(RuntimeError::Unreachable(m)) => assert!(m.contains("refused"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            1,
            "calls within the back-off make no new attempt"
        );
        assert!(!runtime.is_connected());
        up.store(true, Ordering::SeqCst);
        tokio::time::sleep(FIRST_BACKOFF + Duration::from_millis(50)).await;
        runtime.ping().await.unwrap();
        assert!(runtime.is_connected());
        assert!(runtime
            .list_pods(&"n".parse().unwrap())
            .await
            .unwrap()
            .is_empty());
        assert_eq!(attempts.load(Ordering::SeqCst), 2, "connected once, kept");
    }

    #[tokio::test]
    async fn a_socket_where_no_engine_listens_is_unreachable_not_an_error_at_construction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nothing.sock");
        let runtime = ConnectingRuntime::docker(Some(path.display().to_string()));
        assert!(matches!(
            runtime.ping().await,
            Err(RuntimeError::Unreachable(_))
        ));
    }
}
