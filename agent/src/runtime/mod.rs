//! The container runtime seam: what the agent needs from a runtime to run *pods* (a db and a web
//! container sharing one network namespace), independent of the engine behind it.
//!
//! `DockerRuntime` talks to a Docker Engine through bollard; `KubeRuntime` creates Pods through
//! a Kubernetes API server and reaches their containers through the node's Docker Engine (both
//! share `docker_calls`) or the kubelet's CRI runtime socket (`cri`); `FakeRuntime` records calls
//! for unit tests of the layers above.

use async_trait::async_trait;
use bytes::Bytes;
use clonepool_common::ids::{NodeName, PodId};
use clonepool_common::pod::ContainerRole;
use futures_util::stream::BoxStream;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

pub mod cri;
pub mod docker;
pub mod docker_calls;
pub mod fake;
pub mod kube;

pub use docker::DockerRuntime;
pub use fake::FakeRuntime;
pub use kube::KubeRuntime;

/// Label keys every pod container carries, so the agent can find its pods again after a restart.
pub const LABEL_POD: &str = "clonepool.pod";
pub const LABEL_NODE: &str = "clonepool.node";
pub const LABEL_ROLE: &str = "clonepool.role";

/// The way a command reaches a pod's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecPath {
    /// Straight to the node's container runtime (the Docker Engine API): the fast path, and the
    /// only one in Docker mode.
    Runtime,
    /// Through the Kubernetes API server's `pods/exec` (API server → kubelet → runtime), kept to
    /// measure what the direct path saves.
    ApiServer,
    /// Through the kubelet's CRI runtime socket (`RuntimeService/ExecSync`, and `Exec` with the
    /// runtime's streaming server for commands with standard input): the node-local path where
    /// the node runs containerd (Kubernetes backend only).
    Cri,
}

impl ExecPath {
    pub const ALL: [ExecPath; 3] = [ExecPath::Runtime, ExecPath::ApiServer, ExecPath::Cri];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecPath::Runtime => "runtime",
            ExecPath::ApiServer => "apiserver",
            ExecPath::Cri => "cri",
        }
    }
}

impl fmt::Display for ExecPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExecPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ExecPath::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown exec path {s:?} (one of: runtime, apiserver, cri)"))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExecPathLabels {
    path: &'static str,
}

/// `clonepool_agent_execs_total{path="runtime"|"apiserver"|"cri"}`: every command run in a pod
/// container (provisioning, claims, resets and their verification), by the way it went. Cheap
/// to clone; clones count into the same series.
#[derive(Clone, Debug, Default)]
pub struct ExecCounter {
    family: Family<ExecPathLabels, Counter>,
}

impl ExecCounter {
    pub fn count(&self, path: ExecPath) {
        self.family
            .get_or_create(&ExecPathLabels {
                path: path.as_str(),
            })
            .inc();
    }

    /// Commands counted so far on `path`.
    pub fn get(&self, path: ExecPath) -> u64 {
        self.family
            .get_or_create(&ExecPathLabels {
                path: path.as_str(),
            })
            .get()
    }

    /// Registers the counter (as `clonepool_agent_execs_total`), every path shown from zero.
    pub fn register(&self, registry: &mut Registry) {
        for path in ExecPath::ALL {
            let _ = self.get(path);
        }
        registry.sub_registry_with_prefix("clonepool_agent").register(
            "execs",
            "Commands run in pod containers, by path: runtime (the node's Docker Engine, directly), apiserver (the API server's pods/exec) or cri (the kubelet's CRI runtime socket)",
            self.family.clone(),
        );
    }
}

/// A stream of tar bytes, as taken and given by the archive calls.
pub type ArchiveStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// Errors from the runtime layer.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("pod {0} does not exist")]
    PodNotFound(PodId),
    #[error("pod {pod} has no {role} container")]
    ContainerNotFound { pod: PodId, role: ContainerRole },
    #[error("pod {0} already exists")]
    PodExists(PodId),
    #[error("exec in {role} container of pod {pod} did not finish within {timeout:?}")]
    ExecTimeout {
        pod: PodId,
        role: ContainerRole,
        timeout: Duration,
    },
    #[error("path {path:?} not found in {role} container of pod {pod}")]
    PathNotFound {
        pod: PodId,
        role: ContainerRole,
        path: String,
    },
    #[error("image {0} is not present; build it with images/wordpress/build")]
    ImageMissing(String),
    #[error("container runtime unreachable: {0}")]
    Unreachable(String),
    #[error("container runtime error: {0}")]
    Engine(String),
}

/// Resource limits applied to each container of a pod.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerLimits {
    /// CPU limit in units of 1/1000 of a core.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// What to create: one pod of the workload image on this node.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub pod_id: PodId,
    pub node: NodeName,
    pub image: String,
    /// Docker network the pod's namespace joins (created on demand when missing).
    pub network: String,
    pub db_limits: ContainerLimits,
    pub web_limits: ContainerLimits,
    /// Extra labels on both containers (the three `clonepool.*` labels are always set).
    pub labels: BTreeMap<String, String>,
}

/// One container of a pod as the runtime sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub role: ContainerRole,
    pub running: bool,
    pub exit_code: Option<i64>,
    pub labels: BTreeMap<String, String>,
}

/// A pod as the runtime sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    pub pod_id: PodId,
    pub node: NodeName,
    /// Address of the pod's network namespace, once its db container runs.
    pub ip: Option<IpAddr>,
    pub containers: Vec<ContainerInfo>,
}

impl PodInfo {
    pub fn container(&self, role: ContainerRole) -> Option<&ContainerInfo> {
        self.containers.iter().find(|c| c.role == role)
    }

    /// Both containers exist and run.
    pub fn is_running(&self) -> bool {
        [ContainerRole::Db, ContainerRole::Web]
            .iter()
            .all(|role| self.container(*role).is_some_and(|c| c.running))
    }
}

/// A command to run inside one container of a pod.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    /// Bytes written to the command's standard input, which is then closed.
    pub stdin: Option<Bytes>,
    pub timeout: Duration,
}

impl ExecRequest {
    pub fn new<I, S>(cmd: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            cmd: cmd.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            user: None,
            workdir: None,
            stdin: None,
            timeout: Duration::from_secs(30),
        }
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn stdin(mut self, input: impl Into<Bytes>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    pub fn env(mut self, var: impl Into<String>) -> Self {
        self.env.push(var.into());
        self
    }
}

/// What an exec produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// What happened to a pod container, as reported by the runtime's event stream.
#[derive(Debug, Clone, PartialEq)]
pub enum RuntimeEventKind {
    Started,
    /// The container's main process exited (or was killed); `exit_code` when known.
    Died {
        exit_code: Option<i64>,
    },
    /// The kernel's OOM killer hit the container.
    OutOfMemory,
    Destroyed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeEvent {
    pub pod_id: PodId,
    pub role: ContainerRole,
    pub kind: RuntimeEventKind,
}

/// What the agent needs from a container runtime to run pods.
#[async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Answers when the runtime is reachable.
    async fn ping(&self) -> Result<(), RuntimeError>;

    /// Registers the runtime's own metrics into the agent's registry (default: none).
    fn register_metrics(&self, _registry: &mut Registry) {}

    /// Whether the image exists in the runtime.
    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError>;

    /// Creates the pod's containers (not started). Fails with `PodExists` when any of them exists.
    async fn create_pod(&self, spec: &PodSpec) -> Result<PodInfo, RuntimeError>;

    /// Starts the db container, then the web container (which joins the db's network namespace).
    async fn start_pod(&self, pod: &PodId) -> Result<PodInfo, RuntimeError>;

    /// Stops both containers, giving each `grace` to exit.
    async fn stop_pod(&self, pod: &PodId, grace: Duration) -> Result<(), RuntimeError>;

    /// Removes both containers and their anonymous volumes, running or not.
    async fn remove_pod(&self, pod: &PodId) -> Result<(), RuntimeError>;

    /// Starts one container of the pod.
    async fn start_container(&self, pod: &PodId, role: ContainerRole) -> Result<(), RuntimeError>;

    /// Stops one container of the pod.
    async fn stop_container(
        &self,
        pod: &PodId,
        role: ContainerRole,
        grace: Duration,
    ) -> Result<(), RuntimeError>;

    /// Removes one container and creates it again, fresh from the image, then starts it.
    async fn recreate_container(
        &self,
        pod: &PodId,
        role: ContainerRole,
    ) -> Result<(), RuntimeError>;

    /// Runs a command in one container and collects its output and exit code.
    async fn exec(
        &self,
        pod: &PodId,
        role: ContainerRole,
        request: ExecRequest,
    ) -> Result<ExecOutput, RuntimeError>;

    /// Unpacks a tar stream into directory `dest` of one container.
    async fn put_archive(
        &self,
        pod: &PodId,
        role: ContainerRole,
        dest: &str,
        tar: ArchiveStream,
    ) -> Result<(), RuntimeError>;

    /// Streams `path` (file or directory) of one container out as tar.
    async fn get_archive(
        &self,
        pod: &PodId,
        role: ContainerRole,
        path: &str,
    ) -> Result<ArchiveStream, RuntimeError>;

    async fn inspect_pod(&self, pod: &PodId) -> Result<PodInfo, RuntimeError>;

    /// Every pod of `node` the runtime holds, whatever state its containers are in.
    async fn list_pods(&self, node: &NodeName) -> Result<Vec<PodInfo>, RuntimeError>;

    /// Container events of `node`'s pods, from now on.
    async fn events(
        &self,
        node: &NodeName,
    ) -> Result<BoxStream<'static, Result<RuntimeEvent, RuntimeError>>, RuntimeError>;
}

/// Collects an archive stream into memory (for small archives: configs, canaries, tests).
pub async fn collect_archive(mut stream: ArchiveStream) -> Result<Vec<u8>, std::io::Error> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// Wraps in-memory tar bytes as an archive stream.
pub fn archive_from_bytes(bytes: impl Into<Bytes>) -> ArchiveStream {
    Box::pin(futures_util::stream::once(std::future::ready(Ok(
        bytes.into()
    ))))
}
