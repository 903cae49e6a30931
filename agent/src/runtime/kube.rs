//! `KubeRuntime`: the `ContainerRuntime` over Kubernetes. Pods are real Pods, created, listed,
//! watched and deleted through the API server; their containers are reached straight through
//! the node's container runtime (the Docker Engine behind cri-dockerd), never through the API
//! server, unless [`ExecPath::ApiServer`] is chosen to measure the difference. With
//! [`ExecPath::Cri`] commands go through the kubelet's CRI runtime socket instead (containerd's,
//! or cri-dockerd's; see [`super::cri`]), still node-local.
//!
//! A pod is one Pod named after the pod id in the clones namespace, pinned to the agent's node
//! with `spec.nodeName` (no scheduler involved), with two containers of the workload image, `db`
//! (args `clonepool-db`) and `web` (args `clonepool-web`). They share the Pod's network namespace
//! natively, so WordPress reaches MariaDB at 127.0.0.1:3306 and the pod answers HTTP at the Pod
//! IP, port 80. `imagePullPolicy: Never` (the image is loaded into the node's runtime, there is no
//! registry), `restartPolicy: Always`, no service account token, no service links. The Pod has
//! no ownerReference: it outlives the agent's own Pod and is adopted again by the next agent
//! through a list by label (`clonepool.node=<node>` and `spec.nodeName=<node>`).
//!
//! **Own node only.** RBAC cannot restrict an agent to the Pods of its node, so this runtime
//! does: it creates Pods only with its own `nodeName`, and every list, watch, inspect and delete
//! only sees Pods whose `spec.nodeName` and `clonepool.node` label are its node.
//!
//! **Containers in Docker.** The kubelet names a Pod's containers `k8s_<container>_<pod>_…` and
//! labels them `io.kubernetes.pod.namespace`, `io.kubernetes.pod.name` and
//! `io.kubernetes.container.name`; exec, archives, stop and start find the container by those
//! labels (the id is cached until the container is replaced) and use the shared Docker calls of
//! [`super::docker_calls`], exactly as Docker mode does.
//!
//! **Restarts.** With `restartPolicy: Always` the kubelet restarts a dead container from the
//! image, which loses the pod's setup. So the Pod records the Docker id of each container the
//! agent expects (annotations `clonepool.container.db` / `.web`, written when the Pod has started
//! and after every `recreate_container`), and a container running under any other id counts as
//! not running (and shows as `Died` on the event stream), just like a dead container in Docker
//! mode. `recreate_container` removes the Docker container and waits until the kubelet has
//! started a fresh one from the image and the API server shows it.
//!
//! `stop_pod`, `stop_container` and `start_container` act on the Docker containers directly;
//! the kubelet restarts a stopped container (it then runs under a new id: see above).
//!
//! **No Docker Engine with [`ExecPath::Cri`].** On that path the runtime has no Docker client
//! at all (a containerd node has no Docker socket): everything the other paths do through the
//! Docker Engine goes through the kubelet's CRI runtime socket instead. The health check asks
//! the CRI `Version`, `image_present` the CRI `ImageStatus`; containers are found with CRI
//! `ListContainers` (by the same `io.kubernetes.*` labels, which the kubelet gives the CRI) and
//! stopped, started and removed with `StopContainer`, `StartContainer` and `RemoveContainer`.
//! Archives go through the runtime's streaming `Exec` running the container's own GNU `tar` as
//! root (`--numeric-owner`: ownership and modes from the archive, as the Docker Engine unpacks
//! them): `put_archive` runs `tar -x -C <dest>` fed with the archive in length-prefixed frames
//! (see [`CRI_PUT_SCRIPT`]: nothing is staged, whatever the archive's size), `get_archive` runs
//! `tar -c -C <dir> <name>` and streams its output (the archive's top entry is the path's last
//! component, as with the Docker Engine). The workload image must have GNU `tar`, `head` and
//! `sh`.

use super::cri::{self, CriClient, CriError};
use super::docker_calls::{self, engine_error, is_no_such_container, is_not_running, CallError};
use super::{
    ArchiveStream, ContainerInfo, ContainerLimits, ContainerRuntime, DockerRuntime, ExecCounter,
    ExecOutput, ExecPath, ExecRequest, PodInfo, PodSpec, RuntimeError, RuntimeEvent,
    RuntimeEventKind, LABEL_NODE, LABEL_POD, LABEL_ROLE,
};
use async_trait::async_trait;
use bollard::query_parameters::{
    ListContainersOptions, RemoveContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use clonepool_common::ids::{NodeName, PodId};
use clonepool_common::pod::ContainerRole;
use futures_util::stream::{self, BoxStream, StreamExt};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ContainerStatus, Pod, PodSpec as KubePodSpec, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Status as MetaStatus};
use kube::api::{Api, AttachParams, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Annotation prefix: `clonepool.container.<role>` holds the Docker id the agent expects.
pub const ANNOTATION_CONTAINER: &str = "clonepool.container.";
/// `app.kubernetes.io/name` of every clone Pod the agent creates.
pub const APP_NAME: &str = "clonepool-pod";
/// `app.kubernetes.io/managed-by` of every clone Pod the agent creates.
pub const MANAGED_BY: &str = "clonepool-agent";

/// Docker labels the kubelet (through cri-dockerd) puts on a Pod's containers.
const DOCKER_LABEL_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const DOCKER_LABEL_POD: &str = "io.kubernetes.pod.name";
const DOCKER_LABEL_CONTAINER: &str = "io.kubernetes.container.name";

/// Seconds a Pod's containers get to exit when the Pod is deleted.
const TERMINATION_GRACE_SECS: i64 = 5;
/// How long a Pod may take from creation until both containers run and it has an address.
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the kubelet may take to replace a removed container.
const RECREATE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a deleted Pod may take to disappear from the API server.
const DELETE_TIMEOUT: Duration = Duration::from_secs(90);

/// Container waiting reasons that mean the Pod will not start without help.
const FATAL_WAITING: [&str; 7] = [
    "ErrImageNeverPull",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
];

/// What the Kubernetes backend needs besides the API server's address and credentials (which
/// come from the usual places: `KUBECONFIG`, `~/.kube/config`, or the Pod's service account).
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// Namespace of the clone Pods.
    pub namespace: String,
    /// The node this agent owns; its Pods get `spec.nodeName` = this.
    pub node: NodeName,
    /// How commands reach the containers.
    pub exec_path: ExecPath,
    /// Container resource requests, as a percentage of the limits (1–100). Limits are the
    /// agent's per-container limits, as in Docker mode; requests at 100 % would let a small
    /// node hold only a few pods (the kubelet admits Pods by their requests).
    pub requests_percent: u32,
    /// The node's Docker Engine socket (unix path or URL); default: the usual socket. Not used
    /// with [`ExecPath::Cri`].
    pub docker_socket: Option<String>,
    /// The kubelet's CRI runtime socket, for [`ExecPath::Cri`]; default: containerd's.
    pub cri_socket: Option<PathBuf>,
}

/// The CRI runtime socket [`ExecPath::Cri`] uses when none is configured: containerd's.
pub const DEFAULT_CRI_SOCKET: &str = "/run/containerd/containerd.sock";

/// The `ContainerRuntime` over a Kubernetes API server and the node's Docker Engine (or, with
/// [`ExecPath::Cri`], the kubelet's CRI runtime socket and no Docker Engine).
pub struct KubeRuntime {
    pods: Api<Pod>,
    client: kube::Client,
    /// The node's Docker Engine; never used (and `None` from [`Self::connect`]) with
    /// [`ExecPath::Cri`].
    docker: Option<Docker>,
    /// The kubelet's CRI runtime, when commands go that way ([`ExecPath::Cri`]).
    cri: Option<CriClient>,
    settings: KubeSettings,
    execs: ExecCounter,
    /// Docker id of each (pod, role) container last found, until it is replaced.
    ids: std::sync::Mutex<HashMap<(PodId, ContainerRole), String>>,
}

impl std::fmt::Debug for KubeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeRuntime")
            .field("namespace", &self.settings.namespace)
            .field("node", &self.settings.node)
            .field("exec_path", &self.settings.exec_path)
            .finish()
    }
}

impl KubeRuntime {
    /// Connects to the API server (inferred configuration) and to the node's Docker Engine (API
    /// version negotiated), or, for [`ExecPath::Cri`], to the CRI runtime socket (which must
    /// exist and answer `Version`) and to no Docker Engine.
    pub async fn connect(settings: KubeSettings) -> Result<Self, RuntimeError> {
        let client = kube::Client::try_default().await.map_err(|e| {
            RuntimeError::Unreachable(format!("no Kubernetes API server configuration: {e}"))
        })?;
        Self::connect_with(client, settings).await
    }

    /// [`Self::connect`] with an existing API server client.
    pub async fn connect_with(
        client: kube::Client,
        settings: KubeSettings,
    ) -> Result<Self, RuntimeError> {
        let docker = match settings.exec_path {
            ExecPath::Cri => None,
            _ => Some(
                DockerRuntime::connect(settings.docker_socket.as_deref())
                    .await?
                    .client()
                    .clone(),
            ),
        };
        let cri = match settings.exec_path {
            ExecPath::Cri => {
                let socket = settings
                    .cri_socket
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_CRI_SOCKET));
                Some(CriClient::connect(&socket).await.map_err(cri_error)?)
            }
            _ => None,
        };
        let runtime = Self::new(client, docker, settings);
        Ok(match cri {
            Some(cri) => runtime.with_cri(cri),
            None => runtime,
        })
    }

    /// A runtime over an existing client and engine (`None` with [`ExecPath::Cri`], which
    /// needs a CRI client instead: [`Self::with_cri`]).
    pub fn new(client: kube::Client, docker: Option<Docker>, settings: KubeSettings) -> Self {
        Self {
            pods: Api::namespaced(client.clone(), &settings.namespace),
            client,
            docker,
            cri: None,
            settings,
            execs: ExecCounter::default(),
            ids: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Runs [`ExecPath::Cri`] commands through `cri`.
    pub fn with_cri(mut self, cri: CriClient) -> Self {
        self.cri = Some(cri);
        self
    }

    /// Counts execs into `execs` (registered by whoever owns the metrics registry).
    pub fn with_exec_counter(mut self, execs: ExecCounter) -> Self {
        self.execs = execs;
        self
    }

    pub fn settings(&self) -> &KubeSettings {
        &self.settings
    }

    /// The node's runtime the container calls go to: the kubelet's CRI runtime with
    /// [`ExecPath::Cri`], else the Docker Engine.
    fn node_runtime(&self) -> Result<NodeRuntime<'_>, RuntimeError> {
        match (self.settings.exec_path, &self.cri, &self.docker) {
            (ExecPath::Cri, Some(cri), _) => Ok(NodeRuntime::Cri(cri)),
            (ExecPath::Cri, None, _) => Err(RuntimeError::Engine(
                "exec path cri without a CRI runtime connection".to_string(),
            )),
            (_, _, Some(docker)) => Ok(NodeRuntime::Docker(docker)),
            (path, _, None) => Err(RuntimeError::Engine(format!(
                "exec path {path} without a Docker Engine connection"
            ))),
        }
    }

    fn docker(&self) -> Result<&Docker, RuntimeError> {
        match self.node_runtime()? {
            NodeRuntime::Docker(docker) => Ok(docker),
            NodeRuntime::Cri(_) => Err(RuntimeError::Engine(
                "exec path cri uses no Docker Engine".to_string(),
            )),
        }
    }

    /// The Pod of `pod` when it exists and belongs to this node.
    async fn own_pod(&self, pod: &PodId) -> Result<Option<Pod>, RuntimeError> {
        let found = self.pods.get_opt(pod.as_str()).await.map_err(api_error)?;
        Ok(found.filter(|p| is_own(p, &self.settings.node)))
    }

    async fn own_pod_or_not_found(&self, pod: &PodId) -> Result<Pod, RuntimeError> {
        self.own_pod(pod)
            .await?
            .ok_or_else(|| RuntimeError::PodNotFound(pod.clone()))
    }

    /// The typed error for "no container `role` of `pod` in the node's runtime".
    async fn not_found(&self, pod: &PodId, role: ContainerRole) -> RuntimeError {
        match self.own_pod(pod).await {
            Ok(Some(_)) => RuntimeError::ContainerNotFound {
                pod: pod.clone(),
                role,
            },
            Ok(None) => RuntimeError::PodNotFound(pod.clone()),
            Err(err) => err,
        }
    }

    /// Containers of `role` of `pod` in the node's runtime (Docker's or, with
    /// [`ExecPath::Cri`], the CRI's), as `(id, running, created)`.
    async fn docker_containers(
        &self,
        pod: &PodId,
        role: ContainerRole,
    ) -> Result<Vec<(String, bool, i64)>, RuntimeError> {
        let docker = match self.node_runtime()? {
            NodeRuntime::Docker(docker) => docker,
            NodeRuntime::Cri(cri) => {
                let labels = HashMap::from([
                    (
                        DOCKER_LABEL_NAMESPACE.to_string(),
                        self.settings.namespace.clone(),
                    ),
                    (DOCKER_LABEL_POD.to_string(), pod.to_string()),
                    (DOCKER_LABEL_CONTAINER.to_string(), role.to_string()),
                ]);
                let found = cri.list_containers(labels).await.map_err(cri_error)?;
                return Ok(found
                    .into_iter()
                    .map(|c| (c.id, c.state == cri::CONTAINER_RUNNING, c.created_at))
                    .collect());
            }
        };
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![
                    format!("{DOCKER_LABEL_NAMESPACE}={}", self.settings.namespace),
                    format!("{DOCKER_LABEL_POD}={pod}"),
                    format!("{DOCKER_LABEL_CONTAINER}={role}"),
                ],
            )])),
            ..Default::default()
        };
        let found = docker
            .list_containers(Some(options))
            .await
            .map_err(engine_error)?;
        Ok(found
            .into_iter()
            .filter_map(|c| {
                let running = c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING);
                Some((c.id?, running, c.created.unwrap_or(0)))
            })
            .collect())
    }

    /// The Docker id of the container of `role` of `pod`: the running one, else the newest.
    async fn resolve(&self, pod: &PodId, role: ContainerRole) -> Result<String, RuntimeError> {
        let key = (pod.clone(), role);
        if let Some(id) = self.ids.lock().ok().and_then(|ids| ids.get(&key).cloned()) {
            return Ok(id);
        }
        let found = self.docker_containers(pod, role).await?;
        let Some(id) = pick_container(&found) else {
            return Err(self.not_found(pod, role).await);
        };
        if found.iter().any(|(i, running, _)| *running && *i == id) {
            if let Ok(mut ids) = self.ids.lock() {
                ids.insert(key, id.clone());
            }
        }
        Ok(id)
    }

    fn forget(&self, pod: &PodId, role: ContainerRole) {
        if let Ok(mut ids) = self.ids.lock() {
            ids.remove(&(pod.clone(), role));
        }
    }

    fn forget_pod(&self, pod: &PodId) {
        for role in [ContainerRole::Db, ContainerRole::Web] {
            self.forget(pod, role);
        }
    }

    /// Maps a failed Docker call on `role` of `pod` to the runtime's typed errors.
    async fn call_error(
        &self,
        err: CallError,
        pod: &PodId,
        role: ContainerRole,
        path: Option<&str>,
        timeout: Duration,
    ) -> RuntimeError {
        match err {
            CallError::Create(err) | CallError::Engine(err) => {
                if is_no_such_container(&err) {
                    self.forget(pod, role);
                    return self.not_found(pod, role).await;
                }
                if let (
                    Some(path),
                    bollard::errors::Error::DockerResponseServerError {
                        status_code: 404, ..
                    },
                ) = (path, &err)
                {
                    return RuntimeError::PathNotFound {
                        pod: pod.clone(),
                        role,
                        path: path.to_string(),
                    };
                }
                engine_error(err)
            }
            CallError::TimedOut => RuntimeError::ExecTimeout {
                pod: pod.clone(),
                role,
                timeout,
            },
            CallError::Source(message) | CallError::Invalid(message) => {
                RuntimeError::Engine(message)
            }
        }
    }

    /// Whether a failed call may be tried once more on a freshly resolved container: the cached
    /// one was replaced, and nothing ran.
    fn stale(&self, err: &CallError, pod: &PodId, role: ContainerRole) -> bool {
        let stale = match err {
            CallError::Create(e) => is_no_such_container(e) || is_not_running(e),
            CallError::Engine(e) => is_no_such_container(e),
            _ => false,
        };
        if stale {
            self.forget(pod, role);
        }
        stale
    }

    /// Exec straight through the node's Docker Engine.
    async fn exec_direct(
        &self,
        pod: &PodId,
        role: ContainerRole,
        request: &ExecRequest,
    ) -> Result<ExecOutput, RuntimeError> {
        let mut retried = false;
        loop {
            let id = self.resolve(pod, role).await?;
            match docker_calls::exec(self.docker()?, &id, request).await {
                Ok(output) => return Ok(output),
                // Only a refused create: nothing ran, so running it again is safe.
                Err(err @ CallError::Create(_)) if !retried && self.stale(&err, pod, role) => {
                    retried = true;
                }
                Err(err) => {
                    return Err(self.call_error(err, pod, role, None, request.timeout).await)
                }
            }
        }
    }

    /// Exec through the API server's `pods/exec` (API server → kubelet → runtime).
    async fn exec_via_apiserver(
        &self,
        pod: &PodId,
        role: ContainerRole,
        request: &ExecRequest,
    ) -> Result<ExecOutput, RuntimeError> {
        let cmd = wrapped_command(request, "API server")?;
        let params = attach_params(Some(role.to_string()), request.stdin.is_some());
        let started = Instant::now();
        let run = async {
            let attached = match self.pods.exec(pod.as_str(), cmd, &params).await {
                Ok(attached) => attached,
                Err(kube::Error::Api(status)) if status.is_not_found() => {
                    return Err(self.not_found(pod, role).await)
                }
                Err(err) => return Err(api_error(err)),
            };
            // The API server speaks v5.channel.k8s.io: closing stdin reaches the command.
            run_attached(attached, request.stdin.clone(), true).await
        };
        self.bounded(pod, role, request, started, run).await
    }

    /// Exec through the kubelet's CRI runtime socket, on the node: `ExecSync` for commands
    /// without standard input; for commands with it, `Exec` and the runtime's streaming server.
    ///
    /// Standard input carries secrets (passwords, SQL with password hashes) and `ExecSync` has
    /// none, so it is never folded into the command line (argv is visible to every process in
    /// the container and may be logged by the runtime). Falling back to the API server's exec
    /// would take resets, which nearly all feed stdin, through the API server, which the CRI
    /// path exists to avoid; so such commands use the CRI's own streaming `Exec`, which hands
    /// back a one-time URL on the runtime's streaming server (node loopback) spoken to with the
    /// remote-command WebSocket protocol. Runtimes that only speak its v4 (cri-dockerd, for one)
    /// cannot signal the end of stdin, so the command first takes exactly the input's length
    /// (no secret) of bytes, see [`CRI_STDIN_SCRIPT`]. Every such command counts as `cri`: it
    /// never leaves the node.
    async fn exec_cri(
        &self,
        pod: &PodId,
        role: ContainerRole,
        request: &ExecRequest,
    ) -> Result<ExecOutput, RuntimeError> {
        let Some(cri) = &self.cri else {
            return Err(RuntimeError::Engine(
                "exec path cri without a CRI runtime connection".to_string(),
            ));
        };
        let cmd = match &request.stdin {
            None => wrapped_command(request, "CRI")?,
            Some(input) => cri_stdin_command(request, input.len())?,
        };
        let mut retried = false;
        loop {
            let id = self.resolve_cri(pod, role).await?;
            let started = Instant::now();
            let result = match &request.stdin {
                None => {
                    let deadline = request
                        .timeout
                        .saturating_add(docker_calls::EXEC_CLIENT_GRACE);
                    cri.exec_sync(&id, cmd.clone(), deadline)
                        .await
                        .map(|answer| ExecOutput {
                            exit_code: i64::from(answer.exit_code),
                            stdout: answer.stdout,
                            stderr: answer.stderr,
                        })
                }
                Some(input) => match cri.exec_url(&id, cmd.clone()).await {
                    Ok(url) => {
                        let run = async {
                            let client = cri::streaming_client(&url).map_err(cri_error)?;
                            let api: Api<Pod> = Api::namespaced(client, &self.settings.namespace);
                            // The name and options are the URL's already: the streaming
                            // server ignores what kube puts in the request line.
                            let attached = api
                                .exec(pod.as_str(), cmd.clone(), &attach_params(None, true))
                                .await
                                .map_err(|e| {
                                    RuntimeError::Engine(format!("CRI streaming exec: {e}"))
                                })?;
                            run_attached(attached, Some(input.clone()), false).await
                        };
                        return self.bounded(pod, role, request, started, run).await;
                    }
                    Err(err) => Err(err),
                },
            };
            match result {
                Ok(output)
                    if docker_calls::was_cut_off(
                        output.exit_code,
                        started.elapsed(),
                        request.timeout,
                    ) =>
                {
                    return Err(self.timed_out(pod, role, request))
                }
                Ok(output) => return Ok(output),
                Err(CriError::Deadline { .. }) => return Err(self.timed_out(pod, role, request)),
                // The runtime refused to start it (a replaced container): nothing ran.
                Err(err) if !retried && (err.is_no_such_container() || err.is_not_running()) => {
                    self.forget(pod, role);
                    retried = true;
                }
                Err(err) if err.is_no_such_container() => {
                    self.forget(pod, role);
                    return Err(self.not_found(pod, role).await);
                }
                Err(err) => return Err(cri_error(err)),
            }
        }
    }

    /// The CRI id (bare, without `containerd://`) of the running container of `role` of `pod`,
    /// from the Pod's status (cached until the container is replaced): the CRI path needs no
    /// Docker Engine.
    async fn resolve_cri(&self, pod: &PodId, role: ContainerRole) -> Result<String, RuntimeError> {
        let key = (pod.clone(), role);
        if let Some(id) = self.ids.lock().ok().and_then(|ids| ids.get(&key).cloned()) {
            return Ok(id);
        }
        let found = self.own_pod_or_not_found(pod).await?;
        let container = PodView::of(&found).and_then(|v| v.container(role).cloned());
        let Some(ContainerView {
            id: Some(id),
            running: true,
            ..
        }) = container
        else {
            return Err(RuntimeError::ContainerNotFound {
                pod: pod.clone(),
                role,
            });
        };
        if let Ok(mut ids) = self.ids.lock() {
            ids.insert(key, id.clone());
        }
        Ok(id)
    }

    /// Maps a failed CRI call on `role` of `pod`: a container the runtime does not have is
    /// `ContainerNotFound` (or `PodNotFound`).
    async fn cri_call_error(
        &self,
        err: CriError,
        pod: &PodId,
        role: ContainerRole,
    ) -> RuntimeError {
        if err.is_no_such_container() {
            self.forget(pod, role);
            return self.not_found(pod, role).await;
        }
        cri_error(err)
    }

    /// An attached CRI streaming exec of `cmd` in container `id` (see [`Self::exec_cri`]).
    async fn cri_attach(
        &self,
        cri: &CriClient,
        pod: &PodId,
        id: &str,
        cmd: Vec<String>,
        stdin: bool,
    ) -> Result<kube::api::AttachedProcess, CriAttachError> {
        let url = cri
            .exec_url_with(id, cmd.clone(), stdin)
            .await
            .map_err(CriAttachError::Url)?;
        let client =
            cri::streaming_client(&url).map_err(|e| CriAttachError::Stream(cri_error(e)))?;
        let api: Api<Pod> = Api::namespaced(client, &self.settings.namespace);
        // The name and options are the URL's already: the streaming server ignores what kube
        // puts in the request line.
        api.exec(pod.as_str(), cmd, &attach_params(None, stdin))
            .await
            .map_err(|e| {
                CriAttachError::Stream(RuntimeError::Engine(format!("CRI streaming exec: {e}")))
            })
    }

    /// `put_archive` through the CRI: the container's `tar -x`, fed through a streaming exec
    /// (see [`CRI_PUT_SCRIPT`]).
    async fn put_archive_cri(
        &self,
        cri: &CriClient,
        pod: &PodId,
        role: ContainerRole,
        id: &str,
        dest: &str,
        tar: ArchiveStream,
    ) -> Result<(), RuntimeError> {
        let request = ExecRequest::new(["sh", "-c", CRI_PUT_SCRIPT, dest])
            .timeout(docker_calls::UPLOAD_TIMEOUT);
        let cmd = wrapped_command(&request, "CRI")?;
        let started = Instant::now();
        let attached = match self.cri_attach(cri, pod, id, cmd, true).await {
            Ok(attached) => attached,
            Err(CriAttachError::Url(err)) => return Err(self.cri_call_error(err, pod, role).await),
            Err(CriAttachError::Stream(err)) => return Err(err),
        };
        let source_error: std::sync::Arc<std::sync::Mutex<Option<String>>> = Default::default();
        let run = run_framed(attached, tar, source_error.clone());
        let output = self.bounded(pod, role, &request, started, run).await;
        if let Some(message) = source_error.lock().ok().and_then(|mut s| s.take()) {
            return Err(RuntimeError::Engine(format!(
                "reading the archive to put into {dest}: {message}"
            )));
        }
        let output = output?;
        match output.exit_code {
            0 => Ok(()),
            CRI_ARCHIVE_NO_PATH => Err(RuntimeError::PathNotFound {
                pod: pod.clone(),
                role,
                path: dest.to_string(),
            }),
            code => Err(RuntimeError::Engine(format!(
                "unpacking the archive into {dest}: tar exited {code}: {}",
                output.stderr_str().trim()
            ))),
        }
    }

    /// `get_archive` through the CRI: the container's `tar -c`, its output streamed (see
    /// [`CRI_GET_SCRIPT`]). The verdict on the path comes before the stream is handed out.
    async fn get_archive_cri(
        &self,
        cri: &CriClient,
        pod: &PodId,
        id: &str,
        path: &str,
    ) -> Result<ArchiveStream, GetFailure> {
        let request = ExecRequest::new(["sh", "-c", CRI_GET_SCRIPT, path])
            .timeout(docker_calls::UPLOAD_TIMEOUT);
        let cmd = wrapped_command(&request, "CRI").map_err(GetFailure::Failed)?;
        let mut attached = match self.cri_attach(cri, pod, id, cmd, false).await {
            Ok(attached) => attached,
            Err(CriAttachError::Url(err)) if err.is_no_such_container() || err.is_not_running() => {
                return Err(GetFailure::Stale)
            }
            Err(CriAttachError::Url(err)) => return Err(GetFailure::Failed(cri_error(err))),
            Err(CriAttachError::Stream(err)) => return Err(GetFailure::Failed(err)),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, GetFailure>>(4);
        let stdout = attached.stdout();
        let stderr = attached.stderr();
        let status = attached.take_status();
        tokio::spawn(async move {
            let (Some(stdout), Some(status)) = (stdout, status) else {
                let _ = tx
                    .send(Err(GetFailure::Failed(RuntimeError::Engine(
                        "CRI streaming exec without output".to_string(),
                    ))))
                    .await;
                return;
            };
            let forward = async {
                let mut chunks = tokio_util::io::ReaderStream::with_capacity(stdout, 64 << 10);
                while let Some(chunk) = chunks.next().await {
                    match chunk {
                        Ok(bytes) => {
                            if tx.send(Ok(bytes)).await.is_err() {
                                return None;
                            }
                        }
                        Err(err) => return Some(format!("reading tar's output: {err}")),
                    }
                }
                None
            };
            let errors = async {
                let mut out = Vec::new();
                if let Some(mut stderr) = stderr {
                    let _ = stderr.read_to_end(&mut out).await;
                }
                out
            };
            let ended = async { tokio::join!(forward, errors, status) };
            let (broken, errors, status) = tokio::select! {
                ended = ended => ended,
                // Nobody reads any more: end the exec (dropping `attached`).
                () = tx.closed() => return,
            };
            let failure = match (broken, exit_code_of(status.as_ref())) {
                (Some(message), _) => Some(GetFailure::Failed(RuntimeError::Engine(message))),
                // 1: some file changed while it was read; the archive is whole.
                (None, Ok(0 | 1)) => None,
                (None, Ok(CRI_ARCHIVE_NO_PATH)) => Some(GetFailure::PathMissing),
                (None, Ok(code)) => Some(GetFailure::Failed(RuntimeError::Engine(format!(
                    "archiving: tar exited {code}: {}",
                    String::from_utf8_lossy(&errors).trim()
                )))),
                (None, Err(err)) => Some(GetFailure::Failed(err)),
            };
            if let Some(failure) = failure {
                let _ = tx.send(Err(failure)).await;
            }
            drop(attached);
        });
        let first = match rx.recv().await {
            None => return Ok(Box::pin(stream::empty())),
            Some(Ok(bytes)) => bytes,
            Some(Err(failure)) => return Err(failure),
        };
        let rest = stream::unfold(rx, |mut rx| async move {
            let item = rx.recv().await?;
            Some((item.map_err(|f| std::io::Error::other(f.to_string())), rx))
        });
        Ok(Box::pin(stream::once(async move { Ok(first) }).chain(rest)))
    }

    fn timed_out(&self, pod: &PodId, role: ContainerRole, request: &ExecRequest) -> RuntimeError {
        RuntimeError::ExecTimeout {
            pod: pod.clone(),
            role,
            timeout: request.timeout,
        }
    }

    /// Runs an attached exec to its end within the request's timeout (plus the client grace),
    /// a command cut off by its in-container `timeout` counting as timed out too.
    async fn bounded<F>(
        &self,
        pod: &PodId,
        role: ContainerRole,
        request: &ExecRequest,
        started: Instant,
        run: F,
    ) -> Result<ExecOutput, RuntimeError>
    where
        F: std::future::Future<Output = Result<ExecOutput, RuntimeError>>,
    {
        match tokio::time::timeout(
            request
                .timeout
                .saturating_add(docker_calls::EXEC_CLIENT_GRACE),
            run,
        )
        .await
        {
            Ok(Ok(output))
                if docker_calls::was_cut_off(
                    output.exit_code,
                    started.elapsed(),
                    request.timeout,
                ) =>
            {
                Err(self.timed_out(pod, role, request))
            }
            Ok(result) => result,
            Err(_elapsed) => Err(self.timed_out(pod, role, request)),
        }
    }

    /// Records `ids` as the containers the agent expects to run in `pod`.
    async fn expect_containers(
        &self,
        pod: &PodId,
        ids: &[(ContainerRole, String)],
    ) -> Result<(), RuntimeError> {
        let annotations: serde_json::Map<String, serde_json::Value> = ids
            .iter()
            .map(|(role, id)| (format!("{ANNOTATION_CONTAINER}{role}"), id.clone().into()))
            .collect();
        let patch = serde_json::json!({ "metadata": { "annotations": annotations } });
        self.pods
            .patch(pod.as_str(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_error)?;
        Ok(())
    }

    /// Polls the Pod until `ready` says it is, failing on fatal container states.
    async fn wait_pod<F>(
        &self,
        pod: &PodId,
        timeout: Duration,
        what: &str,
        mut ready: F,
    ) -> Result<Pod, RuntimeError>
    where
        F: FnMut(&Pod) -> bool,
    {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(50);
        loop {
            let current = self.own_pod_or_not_found(pod).await?;
            if ready(&current) {
                return Ok(current);
            }
            if let Some(err) = fatal_state(&current) {
                return Err(err);
            }
            if Instant::now() + delay >= deadline {
                return Err(RuntimeError::Engine(format!(
                    "pod {pod}: {what} did not happen within {timeout:?} ({})",
                    describe(&current)
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    }
}

#[async_trait]
impl ContainerRuntime for KubeRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        let node = async {
            match self.node_runtime()? {
                NodeRuntime::Cri(cri) => cri.version().await.map(|_| ()).map_err(cri_error),
                NodeRuntime::Docker(docker) => {
                    docker.ping().await.map(|_| ()).map_err(engine_error)
                }
            }
        };
        let (api, node) = tokio::join!(self.client.apiserver_version(), node);
        api.map_err(api_error)?;
        node
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.execs.register(registry);
    }

    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        // The node's runtime holds the images (imagePullPolicy: Never).
        let docker = match self.node_runtime()? {
            NodeRuntime::Docker(docker) => docker,
            NodeRuntime::Cri(cri) => {
                return cri
                    .image_id(image)
                    .await
                    .map(|id| id.is_some())
                    .map_err(cri_error)
            }
        };
        match docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(err) => Err(engine_error(err)),
        }
    }

    async fn create_pod(&self, spec: &PodSpec) -> Result<PodInfo, RuntimeError> {
        if spec.node != self.settings.node {
            return Err(RuntimeError::Engine(format!(
                "this agent creates Pods on its own node {} only (asked for {})",
                self.settings.node, spec.node
            )));
        }
        if !self.image_present(&spec.image).await? {
            return Err(RuntimeError::ImageMissing(spec.image.clone()));
        }
        let manifest = pod_manifest(spec, &self.settings);
        match self.pods.create(&PostParams::default(), &manifest).await {
            Ok(created) => {
                self.forget_pod(&spec.pod_id);
                pod_info(&created).ok_or_else(|| {
                    RuntimeError::Engine(format!("created Pod {} reads back wrong", spec.pod_id))
                })
            }
            Err(kube::Error::Api(status)) if status.is_already_exists() || status.code == 409 => {
                Err(RuntimeError::PodExists(spec.pod_id.clone()))
            }
            Err(err) => Err(api_error(err)),
        }
    }

    /// The kubelet starts a Pod by itself: this waits until both containers run and the Pod has
    /// an address, then records the containers the agent expects.
    async fn start_pod(&self, pod: &PodId) -> Result<PodInfo, RuntimeError> {
        let started = self
            .wait_pod(pod, START_TIMEOUT, "start", |p| {
                let view = PodView::of(p);
                view.is_some_and(|v| v.ip.is_some() && v.both_running_any_id())
            })
            .await?;
        let view = PodView::of(&started)
            .ok_or_else(|| RuntimeError::Engine(format!("Pod {pod} reads back wrong")))?;
        let ids: Vec<(ContainerRole, String)> = view
            .containers
            .iter()
            .filter_map(|c| Some((c.role, c.id.clone()?)))
            .collect();
        self.expect_containers(pod, &ids).await?;
        self.inspect_pod(pod).await
    }

    async fn stop_pod(&self, pod: &PodId, grace: Duration) -> Result<(), RuntimeError> {
        self.own_pod_or_not_found(pod).await?;
        for role in [ContainerRole::Web, ContainerRole::Db] {
            match self.stop_container(pod, role, grace).await {
                Ok(()) | Err(RuntimeError::ContainerNotFound { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Deletes the Pod and waits until the API server no longer has it (the kubelet killed
    /// its containers).
    async fn remove_pod(&self, pod: &PodId) -> Result<(), RuntimeError> {
        let Some(found) = self.own_pod(pod).await? else {
            return Err(RuntimeError::PodNotFound(pod.clone()));
        };
        let uid = found.metadata.uid.clone();
        let params = DeleteParams {
            grace_period_seconds: Some(1),
            ..Default::default()
        };
        match self.pods.delete(pod.as_str(), &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(err) => return Err(api_error(err)),
        }
        self.forget_pod(pod);
        let deadline = Instant::now() + DELETE_TIMEOUT;
        loop {
            match self.pods.get_opt(pod.as_str()).await.map_err(api_error)? {
                None => return Ok(()),
                // A new Pod of the same name is not ours to wait for.
                Some(p) if p.metadata.uid != uid => return Ok(()),
                Some(_) if Instant::now() >= deadline => {
                    return Err(RuntimeError::Engine(format!(
                        "Pod {pod} still exists {DELETE_TIMEOUT:?} after its deletion"
                    )))
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn start_container(&self, pod: &PodId, role: ContainerRole) -> Result<(), RuntimeError> {
        let id = self.resolve(pod, role).await?;
        let docker = match self.node_runtime()? {
            NodeRuntime::Docker(docker) => docker,
            NodeRuntime::Cri(cri) => {
                return match cri.start_container(&id).await {
                    Ok(()) => Ok(()),
                    Err(err) => Err(self.cri_call_error(err, pod, role).await),
                }
            }
        };
        match docker
            .start_container(
                &id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(err) => Err(self
                .call_error(CallError::Engine(err), pod, role, None, Duration::ZERO)
                .await),
        }
    }

    async fn stop_container(
        &self,
        pod: &PodId,
        role: ContainerRole,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let id = self.resolve(pod, role).await?;
        if let NodeRuntime::Cri(cri) = self.node_runtime()? {
            self.forget(pod, role);
            return match cri.stop_container(&id, grace).await {
                Ok(()) => Ok(()),
                Err(err) => Err(self.cri_call_error(err, pod, role).await),
            };
        }
        let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let options = StopContainerOptions {
            t: Some(i32::try_from(secs).unwrap_or(i32::MAX)),
            signal: None,
        };
        let docker = self
            .docker()?
            .clone()
            .with_timeout(Duration::from_secs(120 + secs));
        self.forget(pod, role);
        match docker.stop_container(&id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(err) => Err(self
                .call_error(CallError::Engine(err), pod, role, None, Duration::ZERO)
                .await),
        }
    }

    /// Removes the container (and its exited predecessors) from the node's runtime (Docker's,
    /// or the CRI's with [`ExecPath::Cri`]); the kubelet starts a fresh one from the
    /// image (`restartPolicy: Always`). Waits until the new container runs and the API server
    /// shows it, then records it as expected. Only `role` is replaced: the Pod's sandbox keeps
    /// the network namespace, so the other container is untouched.
    async fn recreate_container(
        &self,
        pod: &PodId,
        role: ContainerRole,
    ) -> Result<(), RuntimeError> {
        self.own_pod_or_not_found(pod).await?;
        self.forget(pod, role);
        let old: Vec<String> = self
            .docker_containers(pod, role)
            .await?
            .into_iter()
            .map(|(id, _, _)| id)
            .collect();
        if old.is_empty() {
            return Err(RuntimeError::ContainerNotFound {
                pod: pod.clone(),
                role,
            });
        }
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        let node = self.node_runtime()?;
        for id in &old {
            match node {
                NodeRuntime::Cri(cri) => match cri.remove_container(id).await {
                    Ok(()) => {}
                    Err(err) if err.is_no_such_container() => {}
                    Err(err) => return Err(cri_error(err)),
                },
                NodeRuntime::Docker(docker) => {
                    match docker.remove_container(id, Some(options.clone())).await {
                        Ok(()) => {}
                        Err(err) if is_no_such_container(&err) => {}
                        Err(err) => return Err(engine_error(err)),
                    }
                }
            }
        }
        let deadline = Instant::now() + RECREATE_TIMEOUT;
        let new_id = loop {
            let found = self.docker_containers(pod, role).await?;
            if let Some((id, _, _)) = found
                .iter()
                .find(|(id, running, _)| *running && !old.contains(id))
            {
                break id.clone();
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::Engine(format!(
                    "pod {pod}: the kubelet did not start a new {role} container within {RECREATE_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.wait_pod(pod, remaining, "the new container showing", |p| {
            PodView::of(p)
                .and_then(|v| v.container(role).cloned())
                .is_some_and(|c| c.running && c.id.as_deref() == Some(new_id.as_str()))
        })
        .await?;
        self.expect_containers(pod, &[(role, new_id.clone())])
            .await?;
        if let Ok(mut ids) = self.ids.lock() {
            ids.insert((pod.clone(), role), new_id);
        }
        Ok(())
    }

    async fn exec(
        &self,
        pod: &PodId,
        role: ContainerRole,
        request: ExecRequest,
    ) -> Result<ExecOutput, RuntimeError> {
        if request.cmd.is_empty() {
            return Err(RuntimeError::Engine("exec needs a command".to_string()));
        }
        self.execs.count(self.settings.exec_path);
        match self.settings.exec_path {
            ExecPath::Runtime => self.exec_direct(pod, role, &request).await,
            ExecPath::ApiServer => self.exec_via_apiserver(pod, role, &request).await,
            ExecPath::Cri => self.exec_cri(pod, role, &request).await,
        }
    }

    async fn put_archive(
        &self,
        pod: &PodId,
        role: ContainerRole,
        dest: &str,
        tar: ArchiveStream,
    ) -> Result<(), RuntimeError> {
        let id = self.resolve(pod, role).await?;
        let docker = match self.node_runtime()? {
            NodeRuntime::Docker(docker) => docker,
            NodeRuntime::Cri(cri) => {
                return self.put_archive_cri(cri, pod, role, &id, dest, tar).await
            }
        };
        match docker_calls::put_archive(docker, &id, dest, tar).await {
            Ok(()) => Ok(()),
            Err(err) => Err(self
                .call_error(err, pod, role, Some(dest), Duration::ZERO)
                .await),
        }
    }

    async fn get_archive(
        &self,
        pod: &PodId,
        role: ContainerRole,
        path: &str,
    ) -> Result<ArchiveStream, RuntimeError> {
        let mut retried = false;
        loop {
            let id = self.resolve(pod, role).await?;
            let docker = match self.node_runtime()? {
                NodeRuntime::Docker(docker) => docker,
                NodeRuntime::Cri(cri) => match self.get_archive_cri(cri, pod, &id, path).await {
                    Err(GetFailure::Stale) if !retried => {
                        self.forget(pod, role);
                        retried = true;
                        continue;
                    }
                    Err(GetFailure::Stale) => {
                        self.forget(pod, role);
                        return Err(self.not_found(pod, role).await);
                    }
                    Err(GetFailure::PathMissing) => {
                        return Err(RuntimeError::PathNotFound {
                            pod: pod.clone(),
                            role,
                            path: path.to_string(),
                        })
                    }
                    Err(GetFailure::Failed(err)) => return Err(err),
                    Ok(stream) => return Ok(stream),
                },
            };
            match docker_calls::get_archive(docker, &id, path).await {
                Ok(stream) => return Ok(stream),
                Err(err) if !retried && self.stale(&err, pod, role) => retried = true,
                Err(err) => {
                    return Err(self
                        .call_error(err, pod, role, Some(path), Duration::ZERO)
                        .await)
                }
            }
        }
    }

    async fn inspect_pod(&self, pod: &PodId) -> Result<PodInfo, RuntimeError> {
        let found = self.own_pod_or_not_found(pod).await?;
        pod_info(&found).ok_or_else(|| RuntimeError::PodNotFound(pod.clone()))
    }

    async fn list_pods(&self, node: &NodeName) -> Result<Vec<PodInfo>, RuntimeError> {
        if *node != self.settings.node {
            return Ok(Vec::new());
        }
        let params = ListParams::default()
            .labels(&format!("{LABEL_NODE}={node}"))
            .fields(&format!("spec.nodeName={node}"));
        let list = self.pods.list(&params).await.map_err(api_error)?;
        Ok(list
            .items
            .iter()
            .filter(|p| is_own(p, node))
            .filter_map(pod_info)
            .collect())
    }

    /// Watches this node's Pods through the API server and turns status changes into events:
    /// a container that terminated or runs under an id the agent did not expect `Died` (or ran
    /// `OutOfMemory`), a Pod being deleted `Destroyed`, a new container `Started`. The stream
    /// fails when the watch fails (subscribe again).
    async fn events(
        &self,
        node: &NodeName,
    ) -> Result<BoxStream<'static, Result<RuntimeEvent, RuntimeError>>, RuntimeError> {
        // Fail now, not on the first poll, when the API server is away.
        self.client.apiserver_version().await.map_err(api_error)?;
        let config = watcher::Config::default()
            .labels(&format!("{LABEL_NODE}={node}"))
            .fields(&format!("spec.nodeName={node}"));
        let node = node.clone();
        let mut known: HashMap<String, PodView> = HashMap::new();
        let mut listed = false;
        let events = watcher::watcher(self.pods.clone(), config).flat_map(move |item| {
            let out: Vec<Result<RuntimeEvent, RuntimeError>> = match item {
                Err(err) => vec![Err(RuntimeError::Unreachable(format!(
                    "watching Pods: {err}"
                )))],
                Ok(watcher::Event::Init) => Vec::new(),
                Ok(watcher::Event::InitDone) => {
                    listed = true;
                    Vec::new()
                }
                Ok(watcher::Event::InitApply(pod)) | Ok(watcher::Event::Apply(pod)) => {
                    match PodView::of(&pod).filter(|_| is_own(&pod, &node)) {
                        Some(view) => {
                            let name = view.pod_id.to_string();
                            let out = if listed {
                                transitions(known.get(&name), &view)
                            } else {
                                Vec::new()
                            };
                            known.insert(name, view);
                            out.into_iter().map(Ok).collect()
                        }
                        None => Vec::new(),
                    }
                }
                Ok(watcher::Event::Delete(pod)) => {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    known.remove(&name);
                    match name.parse::<PodId>() {
                        Ok(pod_id) if is_own(&pod, &node) => destroyed(&pod_id),
                        _ => Vec::new(),
                    }
                    .into_iter()
                    .map(Ok)
                    .collect()
                }
            };
            stream::iter(out)
        });
        Ok(Box::pin(events))
    }
}

/// The command an exec without the engine's options runs (the API server's, the CRI's): env and
/// working directory through `env`, the timeout like the direct path. (`via` has no user
/// option.)
fn wrapped_command(request: &ExecRequest, via: &str) -> Result<Vec<String>, RuntimeError> {
    if request.user.is_some() {
        return Err(RuntimeError::Engine(format!(
            "the {via}'s exec cannot run a command as another user"
        )));
    }
    let mut cmd = Vec::new();
    if request.workdir.is_some() || !request.env.is_empty() {
        cmd.push("env".to_string());
        if let Some(dir) = &request.workdir {
            cmd.extend(["-C".to_string(), dir.clone()]);
        }
        cmd.extend(request.env.iter().cloned());
    }
    cmd.extend(docker_calls::timeout_wrapped(request));
    Ok(cmd)
}

/// What a CRI streaming exec with input runs before the command (`$0` the input's length,
/// `"$@"` the command): the input is read up to exactly its length (`head -c`: the streaming
/// protocol may have no way to say where it ends) into a private temporary file, which is
/// opened and removed at once, then the shell replaces itself with the command reading it. So
/// the command runs with the same process tree as on the other paths (its parent is `timeout`:
/// the reset scripts kill every process they do not expect, and the fingerprint lists them).
/// The file goes to the container's own `/run`: not `/dev/shm`, which a Pod's containers share
/// (the other container's fingerprint would see it), nor any directory the fingerprint lists.
/// Exit status 125 when the input could not be staged.
const CRI_STDIN_SCRIPT: &str = r#"d=/run
[ -d "$d" ] && [ -w "$d" ] || d=${TMPDIR:-/tmp}
f=$(umask 077 && mktemp "$d/.clonepool-stdin.XXXXXX") || exit 125
head -c "$0" > "$f" || { rm -f "$f"; exit 125; }
exec 3< "$f" || { rm -f "$f"; exit 125; }
rm -f "$f"
exec "$@" <&3 3<&-"#;

/// Exit status of the CRI archive scripts when the path is missing (so Docker's 404 has its
/// counterpart, `PathNotFound`).
const CRI_ARCHIVE_NO_PATH: i64 = 44;

/// What `put_archive` runs through the CRI (`$0` the destination directory): `tar -x` as root,
/// ownership and modes from the archive, fed by a loop that passes on length-prefixed frames
/// (`<length>\n<bytes>`, `0\n` ends the archive, anything else aborts it) with `head -c`. The
/// streaming protocol of some runtimes (cri-dockerd's v4) cannot close standard input, and
/// GNU `tar` reads its input to the end, so the end has to be said in band; nothing is staged,
/// so an archive of any size passes. Exit status 44 when the destination is not a directory.
const CRI_PUT_SCRIPT: &str = r#"[ -d "$0" ] || exit 44
while IFS= read -r n; do
case $n in 0) exit 0 ;; ''|*[!0-9]*) exit 125 ;; esac
head -c "$n" || exit 125
done | tar -x --numeric-owner -f - -C "$0""#;

/// What `get_archive` runs through the CRI (`$0` the path): `tar -c` of the path's last
/// component in its parent directory, so the archive's top entry is that name, as in the
/// Docker Engine's archives. Exit status 44 when the path does not exist.
const CRI_GET_SCRIPT: &str = r#"[ -e "$0" ] || [ -L "$0" ] || exit 44
exec tar -c --numeric-owner -f - -C "$(dirname -- "$0")" -- "$(basename -- "$0")""#;

/// The largest frame [`run_framed`] sends (each costs the container one `head`).
const CRI_FRAME_MAX: usize = 1 << 20;

/// Feeds `tar` to an attached [`CRI_PUT_SCRIPT`] in frames of up to [`CRI_FRAME_MAX`] bytes
/// and collects the command's output and exit code. A failing source aborts the archive (the
/// command then fails) and its message goes to `source_error`. Standard input stays open until
/// the command ended (see [`run_attached`]).
async fn run_framed(
    attached: kube::api::AttachedProcess,
    mut tar: ArchiveStream,
    source_error: std::sync::Arc<std::sync::Mutex<Option<String>>>,
) -> Result<ExecOutput, RuntimeError> {
    drive_attached(attached, |stdin| async move {
        let mut writer = stdin?;
        let mut pending = bytes::BytesMut::new();
        let framed = |frame: bytes::Bytes| {
            let mut out = Vec::with_capacity(frame.len() + 12);
            out.extend_from_slice(format!("{}\n", frame.len()).as_bytes());
            out.extend_from_slice(&frame);
            out
        };
        loop {
            let item = tar.next().await;
            let done = !matches!(item, Some(Ok(_)));
            match item {
                Some(Ok(bytes)) => pending.extend_from_slice(&bytes),
                Some(Err(err)) => {
                    if let Ok(mut seen) = source_error.lock() {
                        seen.get_or_insert_with(|| err.to_string());
                    }
                    // The command may have ended already; that is its business.
                    let _ = writer.write_all(b"abort\n").await;
                    return Some(writer);
                }
                None => {}
            }
            while pending.len() >= CRI_FRAME_MAX || (done && !pending.is_empty()) {
                let take = pending.len().min(CRI_FRAME_MAX);
                let frame = framed(pending.split_to(take).freeze());
                if writer.write_all(&frame).await.is_err() {
                    return Some(writer);
                }
            }
            if done {
                let _ = writer.write_all(b"0\n").await;
                return Some(writer);
            }
        }
    })
    .await
}

/// The node's runtime of the container calls (see [`KubeRuntime::node_runtime`]).
#[derive(Clone, Copy)]
enum NodeRuntime<'a> {
    Docker(&'a Docker),
    Cri(&'a CriClient),
}

/// Why attaching a CRI streaming exec failed: the runtime refused the `Exec` (nothing ran), or
/// the stream could not be opened.
enum CriAttachError {
    Url(CriError),
    Stream(RuntimeError),
}

/// Why a CRI `get_archive` failed.
#[derive(Debug)]
enum GetFailure {
    /// The container is gone or not running (nothing ran: try a freshly found one).
    Stale,
    PathMissing,
    Failed(RuntimeError),
}

impl std::fmt::Display for GetFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GetFailure::Stale => f.write_str("the container is gone"),
            GetFailure::PathMissing => f.write_str("no such path"),
            GetFailure::Failed(err) => write!(f, "{err}"),
        }
    }
}

/// The command of a CRI streaming exec with `len` bytes of standard input (see
/// [`CRI_STDIN_SCRIPT`]), inside the timeout like every other command.
fn cri_stdin_command(request: &ExecRequest, len: usize) -> Result<Vec<String>, RuntimeError> {
    let mut inner = request.clone();
    inner.cmd = [
        "sh".to_string(),
        "-c".to_string(),
        CRI_STDIN_SCRIPT.to_string(),
    ]
    .into_iter()
    .chain([len.to_string()])
    .chain(request.cmd.iter().cloned())
    .collect();
    wrapped_command(&inner, "CRI")
}

/// Exec options: stdout and stderr, stdin when there is input, no TTY; `container` by name
/// (the API server's exec) or none (a CRI streaming URL names it already).
fn attach_params(container: Option<String>, stdin: bool) -> AttachParams {
    AttachParams {
        container,
        stdin,
        stdout: true,
        stderr: true,
        tty: false,
        max_stdin_buf_size: Some(64 << 10),
        max_stdout_buf_size: Some(64 << 10),
        max_stderr_buf_size: Some(64 << 10),
    }
}

/// Feeds `input` to an attached exec, collects its output and its exit code. With
/// `close_stdin` the input is closed after the last byte (v5 of the protocol says so to the
/// command); without, it stays open until the command ended (closing it on v4 closes the whole
/// stream, and output not yet read would be lost).
async fn run_attached(
    attached: kube::api::AttachedProcess,
    input: Option<bytes::Bytes>,
    close_stdin: bool,
) -> Result<ExecOutput, RuntimeError> {
    drive_attached(attached, |stdin| async move {
        let mut writer = stdin?;
        if let Some(bytes) = input {
            // The command may exit without reading all of it; that is its business.
            let _ = writer.write_all(&bytes).await;
            if close_stdin {
                let _ = writer.shutdown().await;
                return None;
            }
        }
        Some(writer)
    })
    .await
}

/// Maps a CRI failure: a runtime that does not answer is `Unreachable`.
fn cri_error(err: CriError) -> RuntimeError {
    match err {
        err @ CriError::Unreachable { .. } => RuntimeError::Unreachable(err.to_string()),
        err => RuntimeError::Engine(err.to_string()),
    }
}

/// Runs an attached exec to its end: `feed` writes its standard input (and hands the writer
/// back while the input must stay open), stdout and stderr are read to their ends at the same
/// time, and the exit code comes from the status.
async fn drive_attached<F, Fut>(
    mut attached: kube::api::AttachedProcess,
    feed: F,
) -> Result<ExecOutput, RuntimeError>
where
    F: FnOnce(Option<tokio::io::WriteHalf<tokio::io::SimplexStream>>) -> Fut,
    Fut: std::future::Future<Output = Option<tokio::io::WriteHalf<tokio::io::SimplexStream>>>,
{
    let stdin = attached.stdin();
    let stdout = attached.stdout();
    let stderr = attached.stderr();
    let status = attached
        .take_status()
        .ok_or_else(|| RuntimeError::Engine("exec status taken twice".into()))?;
    let read = |reader: Option<tokio::io::ReadHalf<tokio::io::SimplexStream>>| async move {
        let mut out = Vec::new();
        if let Some(mut reader) = reader {
            reader.read_to_end(&mut out).await?;
        }
        Ok::<_, std::io::Error>(out)
    };
    let (held, out, err, status) = tokio::join!(feed(stdin), read(stdout), read(stderr), status);
    drop(held);
    let io = |e: std::io::Error| RuntimeError::Engine(format!("exec stream: {e}"));
    let exit_code = exit_code_of(status.as_ref())?;
    Ok(ExecOutput {
        exit_code,
        stdout: out.map_err(io)?,
        stderr: err.map_err(io)?,
    })
}

/// The exit code an exec's final status stands for.
fn exit_code_of(status: Option<&MetaStatus>) -> Result<i64, RuntimeError> {
    let Some(status) = status else {
        return Err(RuntimeError::Engine(
            "the exec ended without a status from the API server".to_string(),
        ));
    };
    if status.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    let code = status.details.as_ref().and_then(|d| {
        d.causes
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|c| c.reason.as_deref() == Some("ExitCode"))
            .and_then(|c| c.message.as_deref()?.trim().parse::<i64>().ok())
    });
    code.ok_or_else(|| {
        RuntimeError::Engine(format!(
            "exec through the API server failed: {} ({})",
            status.message.as_deref().unwrap_or_default(),
            status.reason.as_deref().unwrap_or_default()
        ))
    })
}

/// Maps an API server error: connection trouble is `Unreachable`.
fn api_error(err: kube::Error) -> RuntimeError {
    match err {
        kube::Error::Api(status) => RuntimeError::Engine(format!(
            "API server: {} ({} {})",
            status.message, status.code, status.reason
        )),
        err @ (kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::Auth(_)
        | kube::Error::RustlsTls(_)) => RuntimeError::Unreachable(format!("API server: {err}")),
        err => RuntimeError::Engine(format!("API server: {err}")),
    }
}

/// Whether the Pod runs on `node` and says so in its label (both are checked: RBAC cannot
/// keep an agent away from other nodes' Pods).
fn is_own(pod: &Pod, node: &NodeName) -> bool {
    let on_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str());
    let labelled = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_NODE))
        .map(String::as_str)
        == Some(node.as_str());
    on_node && labelled
}

/// Among `(id, running, created)`: the running container, else the newest.
fn pick_container(found: &[(String, bool, i64)]) -> Option<String> {
    found
        .iter()
        .max_by_key(|(_, running, created)| (*running, *created))
        .map(|(id, _, _)| id.clone())
}

fn cpu_quantity(millis: u64) -> Quantity {
    Quantity(format!("{millis}m"))
}

fn memory_quantity(bytes: u64) -> Quantity {
    if bytes > 0 && bytes % (1 << 20) == 0 {
        Quantity(format!("{}Mi", bytes >> 20))
    } else {
        Quantity(bytes.to_string())
    }
}

fn resources(limits: &ContainerLimits, percent: u32) -> ResourceRequirements {
    let percent = u64::from(percent.clamp(1, 100));
    let request_cpu = (limits.cpu_millis * percent / 100).max(1);
    let request_memory = (limits.memory_bytes * percent / 100).max(1 << 20);
    ResourceRequirements {
        limits: Some(BTreeMap::from([
            ("cpu".to_string(), cpu_quantity(limits.cpu_millis)),
            ("memory".to_string(), memory_quantity(limits.memory_bytes)),
        ])),
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), cpu_quantity(request_cpu)),
            ("memory".to_string(), memory_quantity(request_memory)),
        ])),
        ..Default::default()
    }
}

/// The Pod of a pod spec (see the module doc).
pub fn pod_manifest(spec: &PodSpec, settings: &KubeSettings) -> Pod {
    let mut labels = spec.labels.clone();
    labels.insert(LABEL_POD.to_string(), spec.pod_id.to_string());
    labels.insert(LABEL_NODE.to_string(), spec.node.to_string());
    labels.insert("app.kubernetes.io/name".to_string(), APP_NAME.to_string());
    labels.insert(
        "app.kubernetes.io/managed-by".to_string(),
        MANAGED_BY.to_string(),
    );
    let container = |role: ContainerRole, limits: &ContainerLimits| Container {
        name: role.to_string(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some("Never".to_string()),
        args: Some(vec![format!("clonepool-{role}")]),
        resources: Some(resources(limits, settings.requests_percent)),
        ports: (role == ContainerRole::Web).then(|| {
            vec![ContainerPort {
                name: Some("http".to_string()),
                container_port: 80,
                protocol: Some("TCP".to_string()),
                ..Default::default()
            }]
        }),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(spec.pod_id.to_string()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(KubePodSpec {
            node_name: Some(spec.node.to_string()),
            restart_policy: Some("Always".to_string()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECS),
            containers: vec![
                container(ContainerRole::Db, &spec.db_limits),
                container(ContainerRole::Web, &spec.web_limits),
            ],
            ..Default::default()
        }),
        status: None,
    }
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq)]
struct Ended {
    exit_code: i64,
    oom: bool,
}

/// One container of a Pod as the API server reports it.
#[derive(Debug, Clone, PartialEq)]
struct ContainerView {
    role: ContainerRole,
    /// Docker id of the current container (the `docker://` prefix removed).
    id: Option<String>,
    running: bool,
    terminated: Option<Ended>,
    last_terminated: Option<Ended>,
    /// The id the agent expects (annotation), once recorded.
    expected: Option<String>,
}

impl ContainerView {
    /// Running, and the container the agent expects (when it recorded one).
    fn healthy(&self) -> bool {
        self.running
            && self
                .expected
                .as_ref()
                .is_none_or(|e| self.id.as_ref() == Some(e))
    }
}

/// What the agent reads of a Pod.
#[derive(Debug, Clone, PartialEq)]
struct PodView {
    pod_id: PodId,
    node: Option<NodeName>,
    ip: Option<IpAddr>,
    deleting: bool,
    containers: Vec<ContainerView>,
    labels: BTreeMap<String, String>,
}

fn strip_runtime(id: &str) -> String {
    id.split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(id)
        .to_string()
}

fn ended(state: Option<&k8s_openapi::api::core::v1::ContainerState>) -> Option<Ended> {
    let t = state?.terminated.as_ref()?;
    Some(Ended {
        exit_code: i64::from(t.exit_code),
        oom: t.reason.as_deref() == Some("OOMKilled"),
    })
}

impl PodView {
    fn of(pod: &Pod) -> Option<Self> {
        let pod_id: PodId = pod.metadata.name.as_deref()?.parse().ok()?;
        let labels: BTreeMap<String, String> = pod.metadata.labels.clone().unwrap_or_default();
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let node = labels.get(LABEL_NODE).and_then(|n| n.parse().ok());
        let status = pod.status.as_ref();
        let statuses: &[ContainerStatus] = status
            .and_then(|s| s.container_statuses.as_deref())
            .unwrap_or_default();
        let mut containers = Vec::new();
        for role in [ContainerRole::Db, ContainerRole::Web] {
            let name = role.to_string();
            let declared = pod
                .spec
                .as_ref()
                .is_some_and(|s| s.containers.iter().any(|c| c.name == name));
            let found = statuses.iter().find(|s| s.name == name);
            if !declared && found.is_none() {
                continue;
            }
            let state = found.and_then(|s| s.state.as_ref());
            containers.push(ContainerView {
                role,
                id: found
                    .and_then(|s| s.container_id.as_deref())
                    .filter(|id| !id.is_empty())
                    .map(strip_runtime),
                running: state.is_some_and(|s| s.running.is_some()),
                terminated: ended(state),
                last_terminated: ended(found.and_then(|s| s.last_state.as_ref())),
                expected: annotations
                    .get(&format!("{ANNOTATION_CONTAINER}{role}"))
                    .cloned(),
            });
        }
        let ip = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        Some(PodView {
            pod_id,
            node,
            ip,
            deleting: pod.metadata.deletion_timestamp.is_some(),
            containers,
            labels,
        })
    }

    fn container(&self, role: ContainerRole) -> Option<&ContainerView> {
        self.containers.iter().find(|c| c.role == role)
    }

    /// Both containers run, whatever their ids.
    fn both_running_any_id(&self) -> bool {
        [ContainerRole::Db, ContainerRole::Web]
            .iter()
            .all(|role| self.container(*role).is_some_and(|c| c.running))
    }
}

fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let view = PodView::of(pod)?;
    let node = view.node.clone()?;
    let containers: Vec<ContainerInfo> = view
        .containers
        .iter()
        .map(|c| {
            let running = c.healthy() && !view.deleting;
            let mut labels = view.labels.clone();
            labels.insert(LABEL_ROLE.to_string(), c.role.to_string());
            ContainerInfo {
                id: c.id.clone().unwrap_or_default(),
                name: c.role.to_string(),
                role: c.role,
                running,
                exit_code: if running {
                    None
                } else {
                    c.terminated
                        .as_ref()
                        .or(c.last_terminated.as_ref())
                        .map(|e| e.exit_code)
                },
                labels,
            }
        })
        .collect();
    let db_running = containers
        .iter()
        .any(|c| c.role == ContainerRole::Db && c.running);
    Some(PodInfo {
        pod_id: view.pod_id,
        node,
        ip: if db_running { view.ip } else { None },
        containers,
    })
}

fn destroyed(pod_id: &PodId) -> Vec<RuntimeEvent> {
    [ContainerRole::Db, ContainerRole::Web]
        .into_iter()
        .map(|role| RuntimeEvent {
            pod_id: pod_id.clone(),
            role,
            kind: RuntimeEventKind::Destroyed,
        })
        .collect()
}

fn died(ended: Option<&Ended>) -> RuntimeEventKind {
    match ended {
        Some(e) if e.oom => RuntimeEventKind::OutOfMemory,
        Some(e) => RuntimeEventKind::Died {
            exit_code: Some(e.exit_code),
        },
        None => RuntimeEventKind::Died { exit_code: None },
    }
}

/// The events between two reports of one Pod (`prev` is `None` for a Pod not seen before).
fn transitions(prev: Option<&PodView>, now: &PodView) -> Vec<RuntimeEvent> {
    if now.deleting {
        return if prev.is_some_and(|p| p.deleting) {
            Vec::new()
        } else {
            destroyed(&now.pod_id)
        };
    }
    let mut out = Vec::new();
    for c in &now.containers {
        let before = prev.and_then(|p| p.container(c.role));
        let event = |kind| RuntimeEvent {
            pod_id: now.pod_id.clone(),
            role: c.role,
            kind,
        };
        if let Some(ended) = &c.terminated {
            let seen = before.is_some_and(|b| b.terminated.is_some() && b.id == c.id);
            if !seen {
                out.push(event(died(Some(ended))));
            }
        } else if c.running {
            let new_id = before.is_none_or(|b| !b.running || b.id != c.id);
            if new_id {
                // A container the agent did not ask for replaced the one it expected: the
                // kubelet restarted a dead one (its termination may never have been reported).
                let replaced = before.is_some_and(|b| b.id.is_some() && b.id != c.id)
                    && c.expected.is_some()
                    && c.expected != c.id;
                let was_reported_dead = before.is_some_and(|b| b.terminated.is_some());
                if replaced && !was_reported_dead {
                    out.push(event(died(c.last_terminated.as_ref())));
                }
                out.push(event(RuntimeEventKind::Started));
            }
        }
    }
    out
}

/// A container state the Pod will not leave by itself, as an error.
fn fatal_state(pod: &Pod) -> Option<RuntimeError> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() == Some("Failed") {
        return Some(RuntimeError::Engine(format!(
            "Pod failed: {} {}",
            status.reason.as_deref().unwrap_or_default(),
            status.message.as_deref().unwrap_or_default()
        )));
    }
    for c in status.container_statuses.as_deref().unwrap_or_default() {
        let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = waiting.reason.as_deref().unwrap_or_default();
        if !FATAL_WAITING.contains(&reason) {
            continue;
        }
        if matches!(
            reason,
            "ErrImageNeverPull" | "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName"
        ) {
            return Some(RuntimeError::ImageMissing(c.image.clone()));
        }
        return Some(RuntimeError::Engine(format!(
            "container {} is waiting: {reason}: {}",
            c.name,
            waiting.message.as_deref().unwrap_or_default()
        )));
    }
    None
}

/// A short account of a Pod's state for error messages.
fn describe(pod: &Pod) -> String {
    let status = pod.status.as_ref();
    let mut parts = vec![format!(
        "phase {}",
        status.and_then(|s| s.phase.as_deref()).unwrap_or("unknown")
    )];
    for c in status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default()
    {
        let state = c.state.as_ref();
        let what = if state.is_some_and(|s| s.running.is_some()) {
            "running".to_string()
        } else if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
            format!("waiting ({})", w.reason.as_deref().unwrap_or_default())
        } else if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            format!("terminated (exit {})", t.exit_code)
        } else {
            "unknown".to_string()
        };
        parts.push(format!("{} {what}", c.name));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        PodStatus,
    };

    fn settings() -> KubeSettings {
        KubeSettings {
            namespace: "clones".to_string(),
            node: "node-a".parse().unwrap(),
            exec_path: ExecPath::Runtime,
            requests_percent: 10,
            docker_socket: None,
            cri_socket: None,
        }
    }

    fn spec() -> PodSpec {
        PodSpec {
            pod_id: "cp-0123456789ab".parse().unwrap(),
            node: "node-a".parse().unwrap(),
            image: "clonepool/wordpress:abc".to_string(),
            network: "clonepool".to_string(),
            db_limits: ContainerLimits {
                cpu_millis: 1000,
                memory_bytes: 384 << 20,
            },
            web_limits: ContainerLimits {
                cpu_millis: 500,
                memory_bytes: 256 << 20,
            },
            labels: BTreeMap::from([("clonepool.test".to_string(), "true".to_string())]),
        }
    }

    fn running() -> ContainerState {
        ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        }
    }

    fn terminated(exit_code: i32, reason: &str) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code,
                reason: Some(reason.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn status(name: &str, id: &str, state: ContainerState) -> ContainerStatus {
        ContainerStatus {
            name: name.to_string(),
            container_id: Some(format!("docker://{id}")),
            state: Some(state),
            image: "clonepool/wordpress:abc".to_string(),
            ..Default::default()
        }
    }

    /// The manifest of `spec()` as the API server would report it with these statuses.
    fn reported(statuses: Vec<ContainerStatus>, expected: &[(&str, &str)]) -> Pod {
        let mut pod = pod_manifest(&spec(), &settings());
        pod.metadata.annotations = Some(
            expected
                .iter()
                .map(|(role, id)| (format!("{ANNOTATION_CONTAINER}{role}"), id.to_string()))
                .collect(),
        );
        pod.status = Some(PodStatus {
            phase: Some("Running".to_string()),
            pod_ip: Some("10.244.0.7".to_string()),
            container_statuses: Some(statuses),
            ..Default::default()
        });
        pod
    }

    fn kinds(events: &[RuntimeEvent]) -> Vec<(ContainerRole, RuntimeEventKind)> {
        events.iter().map(|e| (e.role, e.kind.clone())).collect()
    }

    #[test]
    fn pods_are_pinned_to_the_node_with_two_containers_of_the_workload_image() {
        let pod = pod_manifest(&spec(), &settings());
        assert_eq!(pod.metadata.name.as_deref(), Some("cp-0123456789ab"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("clones"));
        assert!(pod.metadata.owner_references.is_none());
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["clonepool.pod"], "cp-0123456789ab");
        assert_eq!(labels["clonepool.node"], "node-a");
        assert_eq!(labels["clonepool.test"], "true");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "clonepool-agent");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-a"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.enable_service_links, Some(false));
        let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["db", "web"]);
        for c in &spec.containers {
            assert_eq!(c.image.as_deref(), Some("clonepool/wordpress:abc"));
            assert_eq!(c.image_pull_policy.as_deref(), Some("Never"));
            assert_eq!(c.args, Some(vec![format!("clonepool-{}", c.name)]));
            assert!(c.command.is_none(), "the image's entrypoint stays");
        }
        let web = &spec.containers[1];
        assert_eq!(web.ports.as_ref().unwrap()[0].container_port, 80);
        assert!(spec.containers[0].ports.is_none());
    }

    #[test]
    fn limits_are_the_agents_and_requests_a_share_of_them() {
        let pod = pod_manifest(&spec(), &settings());
        let db = pod.spec.unwrap().containers[0].resources.clone().unwrap();
        let limits = db.limits.unwrap();
        let requests = db.requests.unwrap();
        assert_eq!(limits["cpu"].0, "1000m");
        assert_eq!(limits["memory"].0, "384Mi");
        assert_eq!(requests["cpu"].0, "100m");
        // 10 % of 384 MiB is not a whole MiB: given in bytes.
        assert_eq!(requests["memory"].0, ((384u64 << 20) / 10).to_string());
        let full = resources(
            &ContainerLimits {
                cpu_millis: 50,
                memory_bytes: 64 << 20,
            },
            100,
        );
        assert_eq!(full.requests.unwrap()["memory"].0, "64Mi");
    }

    #[test]
    fn a_running_pod_reads_as_running_with_its_pod_ip() {
        let pod = reported(
            vec![
                status("db", "d1", running()),
                status("web", "w1", running()),
            ],
            &[("db", "d1"), ("web", "w1")],
        );
        let info = pod_info(&pod).unwrap();
        assert!(info.is_running());
        assert_eq!(info.ip, Some("10.244.0.7".parse().unwrap()));
        assert_eq!(info.node.as_str(), "node-a");
        assert_eq!(info.container(ContainerRole::Db).unwrap().id, "d1");
        assert_eq!(
            info.container(ContainerRole::Web).unwrap().labels["clonepool.role"],
            "web"
        );
    }

    #[test]
    fn a_container_the_kubelet_restarted_behind_the_agents_back_is_not_running() {
        let mut web = status("web", "w2", running());
        web.last_state = Some(terminated(137, "Error"));
        web.restart_count = 1;
        let pod = reported(
            vec![status("db", "d1", running()), web],
            &[("db", "d1"), ("web", "w1")],
        );
        let info = pod_info(&pod).unwrap();
        assert!(!info.is_running());
        let web = info.container(ContainerRole::Web).unwrap();
        assert!(!web.running);
        assert_eq!(web.exit_code, Some(137));
        // Before the agent recorded any id, a running container is just running.
        let fresh = reported(
            vec![
                status("db", "d1", running()),
                status("web", "w2", running()),
            ],
            &[],
        );
        assert!(pod_info(&fresh).unwrap().is_running());
    }

    #[test]
    fn a_dead_db_takes_the_address_away_and_a_deleted_pod_runs_nothing() {
        let pod = reported(
            vec![
                status("db", "d1", terminated(1, "Error")),
                status("web", "w1", running()),
            ],
            &[("db", "d1"), ("web", "w1")],
        );
        let info = pod_info(&pod).unwrap();
        assert_eq!(info.ip, None);
        assert_eq!(
            info.container(ContainerRole::Db).unwrap().exit_code,
            Some(1)
        );
        let mut deleting = reported(
            vec![
                status("db", "d1", running()),
                status("web", "w1", running()),
            ],
            &[],
        );
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert!(!pod_info(&deleting).unwrap().is_running());
    }

    #[test]
    fn status_changes_become_runtime_events() {
        let view = |db: ContainerStatus, web: ContainerStatus, expected: &[(&str, &str)]| {
            PodView::of(&reported(vec![db, web], expected)).unwrap()
        };
        let both = [("db", "d1"), ("web", "w1")];
        let up = view(
            status("db", "d1", running()),
            status("web", "w1", running()),
            &both,
        );
        // Nothing changed: nothing to say.
        assert!(transitions(Some(&up), &up).is_empty());

        // The web container died.
        let web_dead = view(
            status("db", "d1", running()),
            status("web", "w1", terminated(137, "Error")),
            &both,
        );
        assert_eq!(
            kinds(&transitions(Some(&up), &web_dead)),
            [(
                ContainerRole::Web,
                RuntimeEventKind::Died {
                    exit_code: Some(137)
                }
            )]
        );
        // Reported once, not again on the next update.
        assert!(transitions(Some(&web_dead), &web_dead).is_empty());

        // The kubelet restarted it: a new id the agent did not expect. Its death was already
        // reported, so only the start shows.
        let mut restarted = status("web", "w2", running());
        restarted.last_state = Some(terminated(137, "Error"));
        let web_back = view(status("db", "d1", running()), restarted.clone(), &both);
        assert_eq!(
            kinds(&transitions(Some(&web_dead), &web_back)),
            [(ContainerRole::Web, RuntimeEventKind::Started)]
        );
        // The same restart seen without the terminated report in between is a death too.
        assert_eq!(
            kinds(&transitions(Some(&up), &web_back)),
            [
                (
                    ContainerRole::Web,
                    RuntimeEventKind::Died {
                        exit_code: Some(137)
                    }
                ),
                (ContainerRole::Web, RuntimeEventKind::Started)
            ]
        );
        // A replacement the agent asked for (recorded as expected) is no death.
        let recreated = view(
            status("db", "d1", running()),
            status("web", "w2", running()),
            &[("db", "d1"), ("web", "w2")],
        );
        assert_eq!(
            kinds(&transitions(Some(&up), &recreated)),
            [(ContainerRole::Web, RuntimeEventKind::Started)]
        );

        // The OOM killer.
        let oom = view(
            status("db", "d1", terminated(137, "OOMKilled")),
            status("web", "w1", running()),
            &both,
        );
        assert_eq!(
            kinds(&transitions(Some(&up), &oom)),
            [(ContainerRole::Db, RuntimeEventKind::OutOfMemory)]
        );

        // Deletion: both containers destroyed, once.
        let mut deleting = up.clone();
        deleting.deleting = true;
        assert_eq!(
            kinds(&transitions(Some(&up), &deleting)),
            [
                (ContainerRole::Db, RuntimeEventKind::Destroyed),
                (ContainerRole::Web, RuntimeEventKind::Destroyed)
            ]
        );
        assert!(transitions(Some(&deleting), &deleting).is_empty());
    }

    #[test]
    fn a_pod_starting_up_reports_its_containers_starting() {
        let waiting = ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ContainerCreating".to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut creating = reported(
            vec![
                status("db", "", waiting.clone()),
                status("web", "", waiting),
            ],
            &[],
        );
        for s in creating
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()
        {
            s.container_id = None;
        }
        let before = PodView::of(&creating).unwrap();
        assert!(fatal_state(&creating).is_none());
        let up = PodView::of(&reported(
            vec![
                status("db", "d1", running()),
                status("web", "w1", running()),
            ],
            &[],
        ))
        .unwrap();
        assert_eq!(
            kinds(&transitions(Some(&before), &up)),
            [
                (ContainerRole::Db, RuntimeEventKind::Started),
                (ContainerRole::Web, RuntimeEventKind::Started)
            ]
        );
    }

    #[test]
    fn a_missing_image_and_a_failed_pod_are_fatal() {
        let never = ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ErrImageNeverPull".to_string()),
                message: Some("image not present with pull policy of Never".to_string()),
            }),
            ..Default::default()
        };
        let pod = reported(
            vec![status("db", "", never.clone()), status("web", "", never)],
            &[],
        );
        assert!(
            matches!(fatal_state(&pod), Some(RuntimeError::ImageMissing(ref i)) if i == "clonepool/wordpress:abc")
        );
        let mut failed = reported(Vec::new(), &[]);
        let status = failed.status.as_mut().unwrap();
        status.phase = Some("Failed".to_string());
        status.reason = Some("OutOfcpu".to_string());
        let err = fatal_state(&failed).unwrap();
        assert!(err.to_string().contains("OutOfcpu"), "{err}");
    }

    #[test]
    fn only_pods_on_the_own_node_and_labelled_so_are_own() {
        let node: NodeName = "node-a".parse().unwrap();
        let pod = pod_manifest(&spec(), &settings());
        assert!(is_own(&pod, &node));
        assert!(!is_own(&pod, &"node-b".parse().unwrap()));
        let mut moved = pod.clone();
        moved.spec.as_mut().unwrap().node_name = Some("node-b".to_string());
        assert!(!is_own(&moved, &node));
        let mut relabelled = pod;
        relabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(LABEL_NODE.to_string(), "node-b".to_string());
        assert!(!is_own(&relabelled, &node));
    }

    #[test]
    fn the_running_container_wins_over_newer_dead_ones() {
        let found = vec![
            ("old".to_string(), false, 300),
            ("live".to_string(), true, 200),
            ("older".to_string(), false, 100),
        ];
        assert_eq!(pick_container(&found).as_deref(), Some("live"));
        let dead = vec![("a".to_string(), false, 1), ("b".to_string(), false, 2)];
        assert_eq!(pick_container(&dead).as_deref(), Some("b"));
        assert_eq!(pick_container(&[]), None);
    }

    #[test]
    fn api_server_execs_carry_env_workdir_and_the_same_timeout() {
        let mut request = ExecRequest::new(["wp", "option", "get", "home"])
            .timeout(Duration::from_secs(3))
            .env("A=1");
        request.workdir = Some("/var/www".to_string());
        assert_eq!(
            wrapped_command(&request, "API server").unwrap(),
            [
                "env", "-C", "/var/www", "A=1", "timeout", "-s", "KILL", "3.000", "wp", "option",
                "get", "home"
            ]
        );
        let plain = ExecRequest::new(["true"]).timeout(Duration::from_secs(1));
        assert_eq!(wrapped_command(&plain, "API server").unwrap()[0], "timeout");
        let as_user = ExecRequest::new(["true"]).user("www-data");
        assert!(wrapped_command(&as_user, "API server").is_err());
    }

    #[test]
    fn container_ids_lose_their_runtime_scheme_for_the_cri() {
        assert_eq!(strip_runtime("containerd://4f2a9c"), "4f2a9c");
        assert_eq!(strip_runtime("docker://0123abcd"), "0123abcd");
        assert_eq!(strip_runtime("cri-o://feed"), "feed");
        assert_eq!(strip_runtime("4f2a9c"), "4f2a9c", "a bare id stays");
        let mut pod = reported(
            vec![
                status("db", "d1", running()),
                status("web", "w1", running()),
            ],
            &[],
        );
        pod.status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[0]
            .container_id = Some("containerd://c0ffee".to_string());
        let view = PodView::of(&pod).unwrap();
        assert_eq!(
            view.container(ContainerRole::Db).unwrap().id.as_deref(),
            Some("c0ffee")
        );
    }

    #[test]
    fn cri_execs_with_input_read_exactly_its_length_inside_the_timeout() {
        let request = ExecRequest::new(["clonepool-db-setup", "--quiet"])
            .stdin("secret\n")
            .timeout(Duration::from_secs(60))
            .env("A=1");
        let cmd = cri_stdin_command(&request, 7).unwrap();
        assert_eq!(
            cmd[..8],
            ["env", "A=1", "timeout", "-s", "KILL", "60.000", "sh", "-c"]
        );
        assert!(cmd[8].contains("head -c \"$0\""), "{}", cmd[8]);
        assert!(cmd[8].ends_with("exec \"$@\" <&3 3<&-"), "{}", cmd[8]);
        assert_eq!(cmd[9..], ["7", "clonepool-db-setup", "--quiet"]);
        assert!(
            !cmd.iter().any(|arg| arg.contains("secret")),
            "the input stays out of argv"
        );
        assert!(cri_stdin_command(&request.clone().user("www-data"), 7).is_err());
    }

    #[test]
    fn exec_statuses_give_exit_codes() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{StatusCause, StatusDetails};
        let status = |state: &str, reason: &str, causes: Option<Vec<StatusCause>>| MetaStatus {
            status: Some(state.to_string()),
            reason: Some(reason.to_string()),
            details: causes.map(|causes| StatusDetails {
                causes: Some(causes),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(exit_code_of(Some(&status("Success", "", None))).unwrap(), 0);
        let failed = status(
            "Failure",
            "NonZeroExitCode",
            Some(vec![StatusCause {
                reason: Some("ExitCode".to_string()),
                message: Some("3".to_string()),
                field: None,
            }]),
        );
        assert_eq!(exit_code_of(Some(&failed)).unwrap(), 3);
        let other = status("Failure", "InternalError", None);
        assert!(exit_code_of(Some(&other)).is_err());
        assert!(exit_code_of(None).is_err());
    }
}
