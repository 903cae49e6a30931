//! `FakeRuntime`: an in-memory, recording `ContainerRuntime` for unit tests of the layers above.
//!
//! It keeps pods, containers and each container's files (a path → bytes map that the archive
//! calls read and write as real tar), records every call, and lets a test script exec results
//! (per command prefix, or with a handler), make the next calls of a kind fail, take the whole
//! runtime away (`set_reachable(false)`), and kill containers (which shows on the event stream).
//! Pod addresses are handed out as 10.88.0.N.
//!
//! It follows the Docker runtime's semantics where tests can observe them: `PodNotFound` when
//! neither container exists, exec only in running containers, start emits `Started`, stop and
//! kill emit `Died`, removal emits `Destroyed`.

use super::{
    ArchiveStream, ContainerInfo, ContainerRuntime, ExecOutput, ExecRequest, PodInfo, PodSpec,
    RuntimeError, RuntimeEvent, RuntimeEventKind, LABEL_NODE, LABEL_POD, LABEL_ROLE,
};
use async_trait::async_trait;
use bytes::Bytes;
use clonepool_common::ids::{NodeName, PodId};
use clonepool_common::pod::ContainerRole;
use futures_util::stream::{BoxStream, StreamExt};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::broadcast;

/// The kinds of calls of the runtime trait, to pick which ones fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallKind {
    Ping,
    ImagePresent,
    CreatePod,
    StartPod,
    StopPod,
    RemovePod,
    StartContainer,
    StopContainer,
    RecreateContainer,
    Exec,
    PutArchive,
    GetArchive,
    InspectPod,
    ListPods,
    Events,
}

/// Bytes a test passed that may be secret (exec stdin): kept for assertions, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted(pub Bytes);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

/// One call made to the fake, with its arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordedCall {
    Ping,
    ImagePresent {
        image: String,
    },
    CreatePod {
        pod: PodId,
        node: NodeName,
        image: String,
        network: String,
    },
    StartPod {
        pod: PodId,
    },
    StopPod {
        pod: PodId,
        grace: Duration,
    },
    RemovePod {
        pod: PodId,
    },
    StartContainer {
        pod: PodId,
        role: ContainerRole,
    },
    StopContainer {
        pod: PodId,
        role: ContainerRole,
        grace: Duration,
    },
    RecreateContainer {
        pod: PodId,
        role: ContainerRole,
    },
    Exec {
        pod: PodId,
        role: ContainerRole,
        cmd: Vec<String>,
        env: Vec<String>,
        user: Option<String>,
        stdin: Option<Redacted>,
        timeout: Duration,
    },
    PutArchive {
        pod: PodId,
        role: ContainerRole,
        dest: String,
    },
    GetArchive {
        pod: PodId,
        role: ContainerRole,
        path: String,
    },
    InspectPod {
        pod: PodId,
    },
    ListPods {
        node: NodeName,
    },
    Events {
        node: NodeName,
    },
}

impl RecordedCall {
    pub fn kind(&self) -> CallKind {
        match self {
            RecordedCall::Ping => CallKind::Ping,
            RecordedCall::ImagePresent { .. } => CallKind::ImagePresent,
            RecordedCall::CreatePod { .. } => CallKind::CreatePod,
            RecordedCall::StartPod { .. } => CallKind::StartPod,
            RecordedCall::StopPod { .. } => CallKind::StopPod,
            RecordedCall::RemovePod { .. } => CallKind::RemovePod,
            RecordedCall::StartContainer { .. } => CallKind::StartContainer,
            RecordedCall::StopContainer { .. } => CallKind::StopContainer,
            RecordedCall::RecreateContainer { .. } => CallKind::RecreateContainer,
            RecordedCall::Exec { .. } => CallKind::Exec,
            RecordedCall::PutArchive { .. } => CallKind::PutArchive,
            RecordedCall::GetArchive { .. } => CallKind::GetArchive,
            RecordedCall::InspectPod { .. } => CallKind::InspectPod,
            RecordedCall::ListPods { .. } => CallKind::ListPods,
            RecordedCall::Events { .. } => CallKind::Events,
        }
    }
}

/// A failure a test makes the fake return (cloneable, unlike `RuntimeError`).
#[derive(Debug, Clone, PartialEq)]
pub enum FakeFailure {
    Unreachable,
    Engine(String),
    /// For exec: the command did not finish in time.
    Timeout,
}

impl FakeFailure {
    fn into_error(self, call: &RecordedCall) -> RuntimeError {
        match (self, call) {
            (FakeFailure::Unreachable, _) => {
                RuntimeError::Unreachable("fake runtime made unreachable".to_string())
            }
            (
                FakeFailure::Timeout,
                RecordedCall::Exec {
                    pod, role, timeout, ..
                },
            ) => RuntimeError::ExecTimeout {
                pod: pod.clone(),
                role: *role,
                timeout: *timeout,
            },
            (FakeFailure::Timeout, _) => {
                RuntimeError::Unreachable("the engine did not answer in time".to_string())
            }
            (FakeFailure::Engine(message), _) => RuntimeError::Engine(message),
        }
    }
}

/// What a scripted exec returns.
type ScriptedExec = Result<ExecOutput, FakeFailure>;

type ExecHandler = dyn Fn(&PodId, ContainerRole, &ExecRequest) -> Option<Result<ExecOutput, FakeFailure>>
    + Send
    + Sync;

#[derive(Debug)]
struct FakeContainer {
    id: String,
    running: bool,
    exit_code: Option<i64>,
    labels: BTreeMap<String, String>,
    files: BTreeMap<String, Vec<u8>>,
    dirs: BTreeSet<String>,
}

#[derive(Debug)]
struct FakePod {
    node: NodeName,
    ip: IpAddr,
    containers: BTreeMap<RoleKey, FakeContainer>,
}

/// `ContainerRole` in a stable order (db, web) for map keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum RoleKey {
    Db,
    Web,
}

impl From<ContainerRole> for RoleKey {
    fn from(role: ContainerRole) -> Self {
        match role {
            ContainerRole::Db => RoleKey::Db,
            ContainerRole::Web => RoleKey::Web,
        }
    }
}

impl From<RoleKey> for ContainerRole {
    fn from(key: RoleKey) -> Self {
        match key {
            RoleKey::Db => ContainerRole::Db,
            RoleKey::Web => ContainerRole::Web,
        }
    }
}

#[derive(Default)]
struct State {
    reachable: bool,
    calls: Vec<RecordedCall>,
    pods: BTreeMap<PodId, FakePod>,
    missing_images: BTreeSet<String>,
    failures: HashMap<CallKind, VecDeque<FakeFailure>>,
    /// Scripted exec results: (command prefix, results in the order they are handed out).
    scripted_exec: Vec<(Vec<String>, VecDeque<ScriptedExec>)>,
    exec_handler: Option<Arc<ExecHandler>>,
    /// Directories every new container starts with, as if the image had them.
    image_dirs: BTreeSet<String>,
    next_ip: u32,
    next_container: u64,
}

/// An in-memory `ContainerRuntime`. Clones share the same state, so a test can keep one handle
/// while the code under test owns another.
#[derive(Clone)]
pub struct FakeRuntime {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<(NodeName, RuntimeEvent)>,
}

impl fmt::Debug for FakeRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("FakeRuntime")
            .field("reachable", &state.reachable)
            .field("pods", &state.pods.len())
            .field("calls", &state.calls.len())
            .finish()
    }
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeRuntime {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            state: Arc::new(Mutex::new(State {
                reachable: true,
                image_dirs: BTreeSet::from(["/tmp".to_string()]),
                next_ip: 2,
                ..State::default()
            })),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock must not hide the real failure.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every call made so far, in order.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.lock().calls.clone()
    }

    /// The calls of one kind made so far, in order.
    pub fn calls_of(&self, kind: CallKind) -> Vec<RecordedCall> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.kind() == kind)
            .cloned()
            .collect()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// When `false`, every call fails with `Unreachable` (and is still recorded).
    pub fn set_reachable(&self, reachable: bool) {
        self.lock().reachable = reachable;
    }

    /// Every container created from now on has directory `path` (and its parents), as if the
    /// image had it: archive PUTs need an existing destination directory. Only `/tmp` by default.
    pub fn add_image_dir(&self, path: &str) {
        self.lock().image_dirs.insert(normalize(path));
    }

    /// Creates directory `path` (and its parents) in an existing container.
    /// Returns `false` when there is no such container.
    pub fn make_dir(&self, pod: &PodId, role: ContainerRole, path: &str) -> bool {
        let mut state = self.lock();
        let Some(container) = state
            .pods
            .get_mut(pod)
            .and_then(|p| p.containers.get_mut(&role.into()))
        else {
            return false;
        };
        add_dir(container, &normalize(path));
        true
    }

    /// Makes `image` absent (`image_present` says no, `create_pod` fails with `ImageMissing`).
    pub fn set_image_missing(&self, image: &str, missing: bool) {
        let mut state = self.lock();
        if missing {
            state.missing_images.insert(image.to_string());
        } else {
            state.missing_images.remove(image);
        }
    }

    /// The next `n` calls of `kind` fail with an engine error.
    pub fn fail_next(&self, kind: CallKind, n: usize) {
        self.fail_next_with(
            kind,
            n,
            FakeFailure::Engine(format!("injected {kind:?} failure")),
        );
    }

    /// The next `n` calls of `kind` fail with `failure`.
    pub fn fail_next_with(&self, kind: CallKind, n: usize, failure: FakeFailure) {
        let mut state = self.lock();
        let queue = state.failures.entry(kind).or_default();
        queue.extend(std::iter::repeat_n(failure, n));
    }

    /// The next exec whose command starts with `prefix` returns `output` (one use; several
    /// scripted results for the same prefix are returned in order; the longest prefix wins).
    pub fn push_exec<I, S>(&self, prefix: I, output: ExecOutput)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.push_exec_result(prefix, Ok(output));
    }

    /// Like `push_exec`, with a failure (e.g. `FakeFailure::Timeout`) as the result.
    pub fn push_exec_result<I, S>(&self, prefix: I, result: Result<ExecOutput, FakeFailure>)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let prefix: Vec<String> = prefix.into_iter().map(Into::into).collect();
        let mut state = self.lock();
        if let Some((_, queue)) = state.scripted_exec.iter_mut().find(|(p, _)| *p == prefix) {
            queue.push_back(result);
        } else {
            state.scripted_exec.push((prefix, VecDeque::from([result])));
        }
    }

    /// Answers every exec that no scripted result matched; `None` from the handler falls back
    /// to the default (exit 0, no output).
    pub fn set_exec_handler<F>(&self, handler: F)
    where
        F: Fn(&PodId, ContainerRole, &ExecRequest) -> Option<Result<ExecOutput, FakeFailure>>
            + Send
            + Sync
            + 'static,
    {
        self.lock().exec_handler = Some(Arc::new(handler));
    }

    /// Kills a running container as the kernel would: it stops with `exit_code` and a `Died`
    /// event goes out. Returns `false` when there is no such running container.
    pub fn kill_container(&self, pod: &PodId, role: ContainerRole, exit_code: i64) -> bool {
        let mut state = self.lock();
        let Some(fake_pod) = state.pods.get_mut(pod) else {
            return false;
        };
        let node = fake_pod.node.clone();
        let Some(container) = fake_pod.containers.get_mut(&role.into()) else {
            return false;
        };
        if !container.running {
            return false;
        }
        container.running = false;
        container.exit_code = Some(exit_code);
        drop(state);
        self.emit(
            &node,
            pod,
            role,
            RuntimeEventKind::Died {
                exit_code: Some(exit_code),
            },
        );
        true
    }

    /// Like `kill_container`, as the OOM killer: an `OutOfMemory` event, then `Died` with 137.
    pub fn oom_kill_container(&self, pod: &PodId, role: ContainerRole) -> bool {
        let node = match self.lock().pods.get(pod) {
            Some(p) => p.node.clone(),
            None => return false,
        };
        if !self.is_running(pod, role) {
            return false;
        }
        self.emit(&node, pod, role, RuntimeEventKind::OutOfMemory);
        self.kill_container(pod, role, 137)
    }

    /// Whether that container exists and runs.
    pub fn is_running(&self, pod: &PodId, role: ContainerRole) -> bool {
        self.lock()
            .pods
            .get(pod)
            .and_then(|p| p.containers.get(&role.into()))
            .is_some_and(|c| c.running)
    }

    /// The pod as `inspect_pod` would show it, without recording a call.
    pub fn pod(&self, pod: &PodId) -> Option<PodInfo> {
        let state = self.lock();
        state.pods.get(pod).map(|p| pod_info(pod, p))
    }

    /// Ids of every pod the fake holds.
    pub fn pod_ids(&self) -> Vec<PodId> {
        self.lock().pods.keys().cloned().collect()
    }

    /// A file's content in a container, e.g. after `put_archive`.
    pub fn file(&self, pod: &PodId, role: ContainerRole, path: &str) -> Option<Vec<u8>> {
        let path = normalize(path);
        self.lock()
            .pods
            .get(pod)
            .and_then(|p| p.containers.get(&role.into()))
            .and_then(|c| c.files.get(&path).cloned())
    }

    /// Puts a file into a container (as the image or an earlier import would have).
    /// Returns `false` when there is no such container.
    pub fn set_file(
        &self,
        pod: &PodId,
        role: ContainerRole,
        path: &str,
        content: impl Into<Vec<u8>>,
    ) -> bool {
        let mut state = self.lock();
        let Some(container) = state
            .pods
            .get_mut(pod)
            .and_then(|p| p.containers.get_mut(&role.into()))
        else {
            return false;
        };
        write_file(container, &normalize(path), content.into());
        true
    }

    fn emit(&self, node: &NodeName, pod: &PodId, role: ContainerRole, kind: RuntimeEventKind) {
        // No subscriber is fine: events are only for whoever listens.
        let _ = self.events.send((
            node.clone(),
            RuntimeEvent {
                pod_id: pod.clone(),
                role,
                kind,
            },
        ));
    }

    /// Records `call` and returns the failure a test arranged for it, if any.
    fn enter(&self, call: RecordedCall) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        state.calls.push(call.clone());
        if !state.reachable {
            return Err(FakeFailure::Unreachable.into_error(&call));
        }
        if let Some(failure) = state
            .failures
            .get_mut(&call.kind())
            .and_then(|queue| queue.pop_front())
        {
            return Err(failure.into_error(&call));
        }
        Ok(())
    }

    fn start_in(
        &self,
        state: &mut State,
        pod: &PodId,
        role: ContainerRole,
    ) -> Result<(), RuntimeError> {
        let fake_pod = state
            .pods
            .get_mut(pod)
            .ok_or_else(|| RuntimeError::PodNotFound(pod.clone()))?;
        if role == ContainerRole::Web
            && !fake_pod
                .containers
                .get(&RoleKey::Db)
                .is_some_and(|db| db.running)
        {
            return Err(RuntimeError::Engine(format!(
                "cannot start the web container of pod {pod}: its db container does not run"
            )));
        }
        let node = fake_pod.node.clone();
        let container = fake_pod.containers.get_mut(&role.into()).ok_or_else(|| {
            RuntimeError::ContainerNotFound {
                pod: pod.clone(),
                role,
            }
        })?;
        if !container.running {
            container.running = true;
            container.exit_code = None;
            self.emit(&node, pod, role, RuntimeEventKind::Started);
        }
        Ok(())
    }

    fn stop_in(
        &self,
        state: &mut State,
        pod: &PodId,
        role: ContainerRole,
    ) -> Result<(), RuntimeError> {
        let fake_pod = state
            .pods
            .get_mut(pod)
            .ok_or_else(|| RuntimeError::PodNotFound(pod.clone()))?;
        let node = fake_pod.node.clone();
        let container = fake_pod.containers.get_mut(&role.into()).ok_or_else(|| {
            RuntimeError::ContainerNotFound {
                pod: pod.clone(),
                role,
            }
        })?;
        if container.running {
            container.running = false;
            container.exit_code = Some(0);
            self.emit(
                &node,
                pod,
                role,
                RuntimeEventKind::Died { exit_code: Some(0) },
            );
        }
        Ok(())
    }

    fn new_container(
        state: &mut State,
        pod: &PodId,
        node: &NodeName,
        role: ContainerRole,
        extra: &BTreeMap<String, String>,
    ) -> FakeContainer {
        state.next_container += 1;
        let mut labels = extra.clone();
        labels.insert(LABEL_POD.to_string(), pod.to_string());
        labels.insert(LABEL_NODE.to_string(), node.to_string());
        labels.insert(LABEL_ROLE.to_string(), role.to_string());
        let mut container = FakeContainer {
            id: format!("{:064x}", state.next_container),
            running: false,
            exit_code: None,
            labels,
            files: BTreeMap::new(),
            dirs: BTreeSet::new(),
        };
        for dir in &state.image_dirs {
            add_dir(&mut container, dir);
        }
        container
    }
}

fn container_ref<'a>(
    state: &'a mut State,
    pod: &PodId,
    role: ContainerRole,
) -> Result<&'a mut FakeContainer, RuntimeError> {
    let fake_pod = state
        .pods
        .get_mut(pod)
        .ok_or_else(|| RuntimeError::PodNotFound(pod.clone()))?;
    fake_pod
        .containers
        .get_mut(&role.into())
        .ok_or_else(|| RuntimeError::ContainerNotFound {
            pod: pod.clone(),
            role,
        })
}

fn pod_info(pod: &PodId, fake_pod: &FakePod) -> PodInfo {
    let containers: Vec<ContainerInfo> = fake_pod
        .containers
        .iter()
        .map(|(key, c)| {
            let role = ContainerRole::from(*key);
            ContainerInfo {
                id: c.id.clone(),
                name: super::docker::container_name(pod, role),
                role,
                running: c.running,
                exit_code: c.exit_code,
                labels: c.labels.clone(),
            }
        })
        .collect();
    let db_running = fake_pod
        .containers
        .get(&RoleKey::Db)
        .is_some_and(|c| c.running);
    PodInfo {
        pod_id: pod.clone(),
        node: fake_pod.node.clone(),
        ip: db_running.then_some(fake_pod.ip),
        containers,
    }
}

/// An absolute path without `.`, `..`, empty components or a trailing slash ("/" for the root).
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

fn join(dir: &str, rest: &str) -> String {
    normalize(&format!("{dir}/{rest}"))
}

fn parent_dirs(path: &str) -> impl Iterator<Item = String> + '_ {
    path.match_indices('/').map(move |(i, _)| {
        if i == 0 {
            "/".to_string()
        } else {
            path[..i].to_string()
        }
    })
}

fn write_file(container: &mut FakeContainer, path: &str, content: Vec<u8>) {
    for dir in parent_dirs(path) {
        container.dirs.insert(dir);
    }
    container.files.insert(path.to_string(), content);
}

fn add_dir(container: &mut FakeContainer, path: &str) {
    for dir in parent_dirs(path) {
        container.dirs.insert(dir);
    }
    container.dirs.insert(path.to_string());
}

fn is_dir(container: &FakeContainer, path: &str) -> bool {
    path == "/" || container.dirs.contains(path)
}

fn io_error(message: impl Into<String>) -> RuntimeError {
    RuntimeError::Engine(message.into())
}

/// Unpacks tar bytes into `dest` of `container`, as the engine's archive PUT does.
fn unpack(container: &mut FakeContainer, dest: &str, tar_bytes: &[u8]) -> Result<(), RuntimeError> {
    let mut archive = tar::Archive::new(tar_bytes);
    let entries = archive
        .entries()
        .map_err(|e| io_error(format!("bad tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| io_error(format!("bad tar: {e}")))?;
        let name = entry
            .path()
            .map_err(|e| io_error(format!("bad tar entry name: {e}")))?
            .to_string_lossy()
            .into_owned();
        let path = join(dest, &name);
        match entry.header().entry_type() {
            tar::EntryType::Directory => add_dir(container, &path),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut content = Vec::new();
                entry
                    .read_to_end(&mut content)
                    .map_err(|e| io_error(format!("bad tar entry {name}: {e}")))?;
                write_file(container, &path, content);
            }
            // Links, devices and the like are not modelled; the engine's answer is not either.
            _ => {}
        }
    }
    Ok(())
}

/// Packs `path` of `container` as the engine's archive GET does: entries named after the
/// last path component. `None` when the path does not exist.
fn pack(container: &FakeContainer, path: &str) -> Option<Vec<u8>> {
    let base = path
        .rsplit('/')
        .next()
        .filter(|b| !b.is_empty())
        .unwrap_or(".");
    // (entry name, Some(content) for a file or None for a directory)
    let mut entries: Vec<(String, Option<&[u8]>)> = Vec::new();
    if let Some(content) = container.files.get(path) {
        entries.push((base.to_string(), Some(content)));
    } else if is_dir(container, path) {
        let prefix = if path == "/" {
            "/".to_string()
        } else {
            format!("{path}/")
        };
        entries.push((format!("{base}/"), None));
        entries.extend(
            container
                .dirs
                .iter()
                .filter(|d| d.starts_with(&prefix))
                .map(|d| (format!("{base}/{}/", &d[prefix.len()..]), None)),
        );
        entries.extend(
            container
                .files
                .iter()
                .filter(|(p, _)| p.starts_with(&prefix))
                .map(|(p, c)| (format!("{base}/{}", &p[prefix.len()..]), Some(c.as_slice()))),
        );
    } else {
        return None;
    }
    let mut builder = tar::Builder::new(Vec::new());
    for (name, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        match content {
            Some(content) => {
                header.set_size(content.len() as u64);
                header.set_mode(0o644);
                header.set_entry_type(tar::EntryType::Regular);
                header.set_cksum();
                builder.append_data(&mut header, &name, content).ok()?;
            }
            None => {
                header.set_size(0);
                header.set_mode(0o755);
                header.set_entry_type(tar::EntryType::Directory);
                header.set_cksum();
                builder
                    .append_data(&mut header, &name, std::io::empty())
                    .ok()?;
            }
        }
    }
    builder.into_inner().ok()
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.enter(RecordedCall::Ping)
    }

    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        self.enter(RecordedCall::ImagePresent {
            image: image.to_string(),
        })?;
        Ok(!self.lock().missing_images.contains(image))
    }

    async fn create_pod(&self, spec: &PodSpec) -> Result<PodInfo, RuntimeError> {
        self.enter(RecordedCall::CreatePod {
            pod: spec.pod_id.clone(),
            node: spec.node.clone(),
            image: spec.image.clone(),
            network: spec.network.clone(),
        })?;
        let mut state = self.lock();
        if state.pods.contains_key(&spec.pod_id) {
            return Err(RuntimeError::PodExists(spec.pod_id.clone()));
        }
        if state.missing_images.contains(&spec.image) {
            return Err(RuntimeError::ImageMissing(spec.image.clone()));
        }
        let ip = IpAddr::V4(Ipv4Addr::from(
            u32::from(Ipv4Addr::new(10, 88, 0, 0)) + state.next_ip,
        ));
        state.next_ip += 1;
        let mut containers = BTreeMap::new();
        for role in [ContainerRole::Db, ContainerRole::Web] {
            let container =
                Self::new_container(&mut state, &spec.pod_id, &spec.node, role, &spec.labels);
            containers.insert(RoleKey::from(role), container);
        }
        let fake_pod = FakePod {
            node: spec.node.clone(),
            ip,
            containers,
        };
        let info = pod_info(&spec.pod_id, &fake_pod);
        state.pods.insert(spec.pod_id.clone(), fake_pod);
        Ok(info)
    }

    async fn start_pod(&self, pod: &PodId) -> Result<PodInfo, RuntimeError> {
        self.enter(RecordedCall::StartPod { pod: pod.clone() })?;
        let mut state = self.lock();
        self.start_in(&mut state, pod, ContainerRole::Db)?;
        self.start_in(&mut state, pod, ContainerRole::Web)?;
        Ok(pod_info(pod, &state.pods[pod]))
    }

    async fn stop_pod(&self, pod: &PodId, grace: Duration) -> Result<(), RuntimeError> {
        self.enter(RecordedCall::StopPod {
            pod: pod.clone(),
            grace,
        })?;
        let mut state = self.lock();
        self.stop_in(&mut state, pod, ContainerRole::Web)?;
        self.stop_in(&mut state, pod, ContainerRole::Db)
    }

    async fn remove_pod(&self, pod: &PodId) -> Result<(), RuntimeError> {
        self.enter(RecordedCall::RemovePod { pod: pod.clone() })?;
        let mut state = self.lock();
        let fake_pod = state
            .pods
            .remove(pod)
            .ok_or_else(|| RuntimeError::PodNotFound(pod.clone()))?;
        drop(state);
        for (key, container) in fake_pod.containers.iter().rev() {
            let role = ContainerRole::from(*key);
            if container.running {
                self.emit(
                    &fake_pod.node,
                    pod,
                    role,
                    RuntimeEventKind::Died {
                        exit_code: Some(137),
                    },
                );
            }
            self.emit(&fake_pod.node, pod, role, RuntimeEventKind::Destroyed);
        }
        Ok(())
    }

    async fn start_container(&self, pod: &PodId, role: ContainerRole) -> Result<(), RuntimeError> {
        self.enter(RecordedCall::StartContainer {
            pod: pod.clone(),
            role,
        })?;
        let mut state = self.lock();
        self.start_in(&mut state, pod, role)
    }

    async fn stop_container(
        &self,
        pod: &PodId,
        role: ContainerRole,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        self.enter(RecordedCall::StopContainer {
            pod: pod.clone(),
            role,
            grace,
        })?;
        let mut state = self.lock();
        self.stop_in(&mut state, pod, role)
    }

    /// Like the Docker runtime: recreating db recreates web too (it lives in db's namespace).
    /// Recreated containers lose their files and get new ids.
    async fn recreate_container(
        &self,
        pod: &PodId,
        role: ContainerRole,
    ) -> Result<(), RuntimeError> {
        self.enter(RecordedCall::RecreateContainer {
            pod: pod.clone(),
            role,
        })?;
        let mut state = self.lock();
        container_ref(&mut state, pod, role)?;
        let roles: &[ContainerRole] = match role {
            ContainerRole::Db => &[ContainerRole::Db, ContainerRole::Web],
            ContainerRole::Web => &[ContainerRole::Web],
        };
        let node = state.pods[pod].node.clone();
        for role in roles.iter().rev() {
            if let Some(old) = state
                .pods
                .get_mut(pod)
                .and_then(|p| p.containers.remove(&(*role).into()))
            {
                if old.running {
                    self.emit(
                        &node,
                        pod,
                        *role,
                        RuntimeEventKind::Died {
                            exit_code: Some(137),
                        },
                    );
                }
                self.emit(&node, pod, *role, RuntimeEventKind::Destroyed);
                let extra: BTreeMap<String, String> = old.labels;
                let fresh = Self::new_container(&mut state, pod, &node, *role, &extra);
                if let Some(p) = state.pods.get_mut(pod) {
                    p.containers.insert((*role).into(), fresh);
                }
            }
        }
        for role in roles {
            self.start_in(&mut state, pod, *role)?;
        }
        Ok(())
    }

    async fn exec(
        &self,
        pod: &PodId,
        role: ContainerRole,
        request: ExecRequest,
    ) -> Result<ExecOutput, RuntimeError> {
        let call = RecordedCall::Exec {
            pod: pod.clone(),
            role,
            cmd: request.cmd.clone(),
            env: request.env.clone(),
            user: request.user.clone(),
            stdin: request.stdin.clone().map(Redacted),
            timeout: request.timeout,
        };
        self.enter(call.clone())?;
        let handler = {
            let mut state = self.lock();
            let container = container_ref(&mut state, pod, role)?;
            if !container.running {
                return Err(RuntimeError::Engine(format!(
                    "the {role} container of pod {pod} is not running"
                )));
            }
            let best = state
                .scripted_exec
                .iter_mut()
                .filter(|(prefix, queue)| !queue.is_empty() && request.cmd.starts_with(prefix))
                .max_by_key(|(prefix, _)| prefix.len());
            if let Some((_, queue)) = best {
                let scripted = queue.pop_front().expect("filtered on non-empty queues");
                return scripted.map_err(|failure| failure.into_error(&call));
            }
            state.exec_handler.clone()
        };
        // Called without the lock held, so the handler may use the fake's accessors.
        if let Some(result) = handler.and_then(|handler| handler(pod, role, &request)) {
            return result.map_err(|failure| failure.into_error(&call));
        }
        Ok(ExecOutput {
            exit_code: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
        })
    }

    async fn put_archive(
        &self,
        pod: &PodId,
        role: ContainerRole,
        dest: &str,
        tar: ArchiveStream,
    ) -> Result<(), RuntimeError> {
        self.enter(RecordedCall::PutArchive {
            pod: pod.clone(),
            role,
            dest: dest.to_string(),
        })?;
        let dest_path = normalize(dest);
        {
            let mut state = self.lock();
            let container = container_ref(&mut state, pod, role)?;
            if !is_dir(container, &dest_path) {
                return Err(RuntimeError::PathNotFound {
                    pod: pod.clone(),
                    role,
                    path: dest.to_string(),
                });
            }
        }
        let bytes = super::collect_archive(tar)
            .await
            .map_err(|e| RuntimeError::Engine(format!("reading the archive: {e}")))?;
        let mut state = self.lock();
        let container = container_ref(&mut state, pod, role)?;
        unpack(container, &dest_path, &bytes)
    }

    async fn get_archive(
        &self,
        pod: &PodId,
        role: ContainerRole,
        path: &str,
    ) -> Result<ArchiveStream, RuntimeError> {
        self.enter(RecordedCall::GetArchive {
            pod: pod.clone(),
            role,
            path: path.to_string(),
        })?;
        let mut state = self.lock();
        let container = container_ref(&mut state, pod, role)?;
        let tar = pack(container, &normalize(path)).ok_or_else(|| RuntimeError::PathNotFound {
            pod: pod.clone(),
            role,
            path: path.to_string(),
        })?;
        Ok(super::archive_from_bytes(tar))
    }

    async fn inspect_pod(&self, pod: &PodId) -> Result<PodInfo, RuntimeError> {
        self.enter(RecordedCall::InspectPod { pod: pod.clone() })?;
        self.pod(pod)
            .ok_or_else(|| RuntimeError::PodNotFound(pod.clone()))
    }

    async fn list_pods(&self, node: &NodeName) -> Result<Vec<PodInfo>, RuntimeError> {
        self.enter(RecordedCall::ListPods { node: node.clone() })?;
        let state = self.lock();
        Ok(state
            .pods
            .iter()
            .filter(|(_, p)| p.node == *node)
            .map(|(id, p)| pod_info(id, p))
            .collect())
    }

    async fn events(
        &self,
        node: &NodeName,
    ) -> Result<BoxStream<'static, Result<RuntimeEvent, RuntimeError>>, RuntimeError> {
        self.enter(RecordedCall::Events { node: node.clone() })?;
        let receiver = self.events.subscribe();
        let node = node.clone();
        let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(item) => return Some((item, receiver)),
                    // A slow test reader lost some events; keep going with the newest.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .filter_map(move |(event_node, event)| {
            let wanted = event_node == node;
            async move { wanted.then_some(Ok(event)) }
        });
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{archive_from_bytes, collect_archive, ContainerLimits};

    fn spec(pod: &str) -> PodSpec {
        PodSpec {
            pod_id: pod.parse().unwrap(),
            node: "test-node".parse().unwrap(),
            image: "clonepool/wordpress:test".to_string(),
            network: "clonepool".to_string(),
            db_limits: ContainerLimits {
                cpu_millis: 500,
                memory_bytes: 256 << 20,
            },
            web_limits: ContainerLimits {
                cpu_millis: 500,
                memory_bytes: 256 << 20,
            },
            labels: BTreeMap::new(),
        }
    }

    async fn running_pod(fake: &FakeRuntime, pod: &str) -> PodId {
        let spec = spec(pod);
        fake.create_pod(&spec).await.unwrap();
        fake.start_pod(&spec.pod_id).await.unwrap();
        spec.pod_id
    }

    fn entries(tar_bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let name = entry.path().unwrap().to_string_lossy().into_owned();
                let mut content = Vec::new();
                entry.read_to_end(&mut content).unwrap();
                (name, content)
            })
            .collect()
    }

    #[tokio::test]
    async fn pods_get_addresses_and_show_up_in_their_nodes_list() {
        let fake = FakeRuntime::new();
        let a = running_pod(&fake, "cp-a").await;
        let b = running_pod(&fake, "cp-b").await;
        let info = fake.inspect_pod(&a).await.unwrap();
        assert!(info.is_running());
        assert_eq!(info.ip, Some("10.88.0.2".parse().unwrap()));
        assert_eq!(fake.pod(&b).unwrap().ip, Some("10.88.0.3".parse().unwrap()));
        assert_eq!(
            info.container(ContainerRole::Db).unwrap().labels[LABEL_POD],
            "cp-a"
        );

        let listed = fake.list_pods(&"test-node".parse().unwrap()).await.unwrap();
        assert_eq!(
            listed.iter().map(|p| p.pod_id.as_str()).collect::<Vec<_>>(),
            ["cp-a", "cp-b"]
        );
        assert!(fake
            .list_pods(&"other".parse().unwrap())
            .await
            .unwrap()
            .is_empty());

        fake.remove_pod(&a).await.unwrap();
        assert!(matches!(
            fake.inspect_pod(&a).await,
            Err(RuntimeError::PodNotFound(_))
        ));
        assert!(matches!(
            fake.remove_pod(&a).await,
            Err(RuntimeError::PodNotFound(_))
        ));
        assert!(matches!(
            fake.create_pod(&spec("cp-b")).await,
            Err(RuntimeError::PodExists(_))
        ));
    }

    #[tokio::test]
    async fn an_archive_put_into_a_container_comes_back_out() {
        let fake = FakeRuntime::new();
        let pod = running_pod(&fake, "cp-a").await;
        fake.set_file(&pod, ContainerRole::Web, "/var/www/keep", "x");
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "site/a.txt", &b"abc"[..])
            .unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "site/sub/b.bin", &[0u8, 255][..])
            .unwrap();
        let tar_bytes = builder.into_inner().unwrap();

        fake.put_archive(
            &pod,
            ContainerRole::Web,
            "/var/www",
            archive_from_bytes(tar_bytes),
        )
        .await
        .unwrap();
        assert_eq!(
            fake.file(&pod, ContainerRole::Web, "/var/www/site/a.txt")
                .unwrap(),
            b"abc"
        );

        let out = fake
            .get_archive(&pod, ContainerRole::Web, "/var/www/site")
            .await
            .unwrap();
        let got = entries(&collect_archive(out).await.unwrap());
        assert_eq!(got["site/a.txt"], b"abc");
        assert_eq!(got["site/sub/b.bin"], [0u8, 255]);
        assert!(got.contains_key("site/sub/"));
        assert!(!got.keys().any(|k| k.contains("keep")));

        let single = fake
            .get_archive(&pod, ContainerRole::Web, "/var/www/keep")
            .await
            .unwrap();
        assert_eq!(
            entries(&collect_archive(single).await.unwrap())["keep"],
            b"x"
        );

        assert!(matches!(
            fake.get_archive(&pod, ContainerRole::Web, "/nope").await,
            Err(RuntimeError::PathNotFound { .. })
        ));
        assert!(matches!(
            fake.put_archive(
                &pod,
                ContainerRole::Db,
                "/var/www",
                archive_from_bytes(Vec::new())
            )
            .await,
            Err(RuntimeError::PathNotFound { .. })
        ));
    }

    #[tokio::test]
    async fn exec_results_can_be_scripted_and_calls_are_recorded() {
        let fake = FakeRuntime::new();
        let pod = running_pod(&fake, "cp-a").await;
        let out = |code: i64, text: &str| ExecOutput {
            exit_code: code,
            stdout: text.as_bytes().to_vec(),
            stderr: Vec::new(),
        };
        fake.push_exec(["mariadb"], out(1, "generic"));
        fake.push_exec(["mariadb", "-e"], out(0, "specific"));
        fake.push_exec_result(["sleep"], Err(FakeFailure::Timeout));
        fake.set_exec_handler(|_, role, request| {
            (request.cmd[0] == "whoami").then(|| {
                Ok(ExecOutput {
                    exit_code: 0,
                    stdout: role.to_string().into_bytes(),
                    stderr: Vec::new(),
                })
            })
        });

        let run = |cmd: &[&str]| fake.exec(&pod, ContainerRole::Db, ExecRequest::new(cmd.to_vec()));
        assert_eq!(
            run(&["mariadb", "-e", "x"]).await.unwrap().stdout_str(),
            "specific"
        );
        assert_eq!(
            run(&["mariadb", "-e", "x"]).await.unwrap().stdout_str(),
            "generic"
        );
        assert_eq!(run(&["mariadb"]).await.unwrap(), out(0, ""));
        assert!(matches!(
            run(&["sleep", "30"]).await,
            Err(RuntimeError::ExecTimeout { .. })
        ));
        assert_eq!(run(&["whoami"]).await.unwrap().stdout_str(), "db");

        let secret = ExecRequest::new(["clonepool-db-setup"]).stdin("hunter2\n");
        fake.exec(&pod, ContainerRole::Db, secret).await.unwrap();
        let execs = fake.calls_of(CallKind::Exec);
        assert_eq!(execs.len(), 6);
        let RecordedCall::Exec { cmd, stdin, .. } = &execs[5] else {
            unreachable!()
        };
        assert_eq!(cmd, &["clonepool-db-setup"]);
        assert_eq!(stdin.as_ref().unwrap().0, "hunter2\n");
        assert!(
            !format!("{:?}", execs[5]).contains("hunter2"),
            "stdin must not show in Debug"
        );
    }

    #[tokio::test]
    async fn failures_can_be_injected_and_the_runtime_taken_away() {
        let fake = FakeRuntime::new();
        let pod = running_pod(&fake, "cp-a").await;
        fake.fail_next(CallKind::InspectPod, 2);
        assert!(matches!(
            fake.inspect_pod(&pod).await,
            Err(RuntimeError::Engine(_))
        ));
        assert!(matches!(
            fake.inspect_pod(&pod).await,
            Err(RuntimeError::Engine(_))
        ));
        assert!(fake.inspect_pod(&pod).await.is_ok());

        fake.set_reachable(false);
        assert!(matches!(
            fake.ping().await,
            Err(RuntimeError::Unreachable(_))
        ));
        assert!(matches!(
            fake.exec(&pod, ContainerRole::Web, ExecRequest::new(["true"]))
                .await,
            Err(RuntimeError::Unreachable(_))
        ));
        fake.set_reachable(true);
        assert!(fake.ping().await.is_ok());
        assert_eq!(fake.calls_of(CallKind::Ping).len(), 2);
    }

    #[tokio::test]
    async fn a_killed_container_stops_and_reports_its_death() {
        let fake = FakeRuntime::new();
        let pod = running_pod(&fake, "cp-a").await;
        let mut events = fake.events(&"test-node".parse().unwrap()).await.unwrap();
        let mut others = fake.events(&"other-node".parse().unwrap()).await.unwrap();

        assert!(fake.kill_container(&pod, ContainerRole::Web, 137));
        let event = events.next().await.unwrap().unwrap();
        assert_eq!(event.pod_id, pod);
        assert_eq!(event.role, ContainerRole::Web);
        assert_eq!(
            event.kind,
            RuntimeEventKind::Died {
                exit_code: Some(137)
            }
        );
        let info = fake.inspect_pod(&pod).await.unwrap();
        assert!(!info.is_running());
        assert_eq!(
            info.container(ContainerRole::Web).unwrap().exit_code,
            Some(137)
        );
        assert!(matches!(
            fake.exec(&pod, ContainerRole::Web, ExecRequest::new(["true"]))
                .await,
            Err(RuntimeError::Engine(_))
        ));

        fake.recreate_container(&pod, ContainerRole::Web)
            .await
            .unwrap();
        assert_eq!(
            events.next().await.unwrap().unwrap().kind,
            RuntimeEventKind::Destroyed
        );
        assert_eq!(
            events.next().await.unwrap().unwrap().kind,
            RuntimeEventKind::Started
        );
        assert!(fake.inspect_pod(&pod).await.unwrap().is_running());
        let nothing = tokio::time::timeout(Duration::from_millis(50), others.next()).await;
        assert!(nothing.is_err(), "events of another node must not show up");
    }
}
