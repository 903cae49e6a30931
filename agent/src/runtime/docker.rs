//! `DockerRuntime`: the `ContainerRuntime` over a Docker Engine, through bollard.
//!
//! A pod is two containers of the workload image, `clonepool-<pod>-db` (command `clonepool-db`)
//! and `clonepool-<pod>-web` (command `clonepool-web`). The db container owns the pod's network
//! namespace and joins the node's shared pod network (by id; its name is kept in label
//! `clonepool.network`); the web container runs with network mode
//! `container:<db id>`, so WordPress reaches MariaDB at 127.0.0.1:3306 and the pod answers HTTP
//! at the db container's address, port 80. Nothing is published on the host.
//!
//! The shared pod network is a bridge created on demand (label `clonepool.managed=true`) with
//! inter-container communication disabled, so one clone cannot reach another. It is never
//! removed with a pod.
//!
//! Containers get no restart policy (the agent decides what a dead container means) and no
//! named volumes; removal is forced and takes anonymous volumes along.
//!
//! Exec and archive calls are the shared ones of [`super::docker_calls`] (also used by the
//! Kubernetes backend, whose Pods' containers are Docker containers too); see there for how exec
//! timeouts kill the command.
//!
//! Recreating the db container recreates the web container too (see `recreate_container`).
//! The event stream ends or fails when the engine restarts; subscribe again.

use super::docker_calls::{self, engine_error, is_no_such_container, CallError};
use super::{
    ArchiveStream, ContainerInfo, ContainerLimits, ContainerRuntime, ExecCounter, ExecOutput,
    ExecPath, ExecRequest, PodInfo, PodSpec, RuntimeError, RuntimeEvent, RuntimeEventKind,
    LABEL_NODE, LABEL_POD, LABEL_ROLE,
};
use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary,
    ContainerSummaryStateEnum, EventMessage, EventMessageTypeEnum, HostConfig,
    NetworkCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, ListContainersOptions, ListNetworksOptions,
    RemoveContainerOptions, StopContainerOptions,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use clonepool_common::ids::{NodeName, PodId};
use clonepool_common::pod::ContainerRole;
use futures_util::stream::{BoxStream, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Label on the shared pod network, marking it as created by clonepool.
pub const LABEL_MANAGED: &str = "clonepool.managed";
/// Label on db containers: the name of the pod network they joined (they join it by id).
pub const LABEL_NETWORK: &str = "clonepool.network";

/// Docker's own networks, used as they are.
const PREDEFINED_NETWORKS: [&str; 4] = ["bridge", "host", "none", "default"];

/// Seconds the engine gets to answer a request (stops get their grace period on top).
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// The container name of one role of a pod: `clonepool-<pod>-<role>`.
pub fn container_name(pod: &PodId, role: ContainerRole) -> String {
    format!("clonepool-{pod}-{role}")
}

/// The `ContainerRuntime` over a Docker Engine.
#[derive(Debug)]
pub struct DockerRuntime {
    docker: Docker,
    /// Serializes the check-then-create of the shared pod network (Docker API 1.41 happily
    /// creates two networks with the same name).
    network_lock: tokio::sync::Mutex<()>,
    /// Counts execs (`path="runtime"`: they all go straight to the engine).
    execs: ExecCounter,
}

impl DockerRuntime {
    /// Connects to the engine at `socket` (a Unix socket path, `unix://…`, or `tcp://…`/`http://…`),
    /// or, when `None`, at `DOCKER_HOST` or `/var/run/docker.sock`, and negotiates the API
    /// version down to what the engine speaks.
    pub async fn connect(socket: Option<&str>) -> Result<Self, RuntimeError> {
        let docker = match socket {
            Some(addr) if addr.starts_with("tcp://") || addr.starts_with("http://") => {
                Docker::connect_with_http(addr, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
            }
            Some(path) => {
                Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
            }
            None => Docker::connect_with_defaults(),
        }
        .map_err(engine_error)?;
        let docker = docker.negotiate_version().await.map_err(engine_error)?;
        Ok(Self {
            docker,
            network_lock: tokio::sync::Mutex::new(()),
            execs: ExecCounter::default(),
        })
    }

    /// Counts execs into `execs` (registered by whoever owns the metrics registry).
    pub fn with_exec_counter(mut self, execs: ExecCounter) -> Self {
        self.execs = execs;
        self
    }

    /// The underlying bollard client (its API version already negotiated).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// The id of the network called `name`, creating it as the clonepool pod network when
    /// missing. Containers join it by id, so a duplicate created by a concurrent caller (Docker
    /// API 1.41 creates networks with equal names) can never make a name ambiguous to them; the
    /// duplicates are removed and every caller settles on the oldest network.
    async fn ensure_network(&self, name: &str) -> Result<String, RuntimeError> {
        if PREDEFINED_NETWORKS.contains(&name) {
            return Ok(name.to_string());
        }
        let _guard = self.network_lock.lock().await;
        if let Some((_, id)) = self.networks_named(name).await?.into_iter().min() {
            return Ok(id);
        }
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".to_string()),
            labels: Some(HashMap::from([(
                LABEL_MANAGED.to_string(),
                "true".to_string(),
            )])),
            options: Some(HashMap::from([(
                "com.docker.network.bridge.enable_icc".to_string(),
                "false".to_string(),
            )])),
            ..Default::default()
        };
        self.docker
            .create_network(request)
            .await
            .map_err(engine_error)?;
        tracing::info!(network = name, "created the pod network");
        let mut found = self.networks_named(name).await?;
        found.sort();
        let mut found = found.into_iter();
        let (_, keeper) = found.next().ok_or_else(|| {
            RuntimeError::Engine(format!("network {name} vanished right after its creation"))
        })?;
        for (_, duplicate) in found {
            match self.docker.remove_network(&duplicate).await {
                Ok(())
                | Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(err) => return Err(engine_error(err)),
            }
        }
        Ok(keeper)
    }

    /// `(created, id)` of every network whose name is exactly `name`.
    async fn networks_named(&self, name: &str) -> Result<Vec<(String, String)>, RuntimeError> {
        let options = ListNetworksOptions {
            filters: Some(HashMap::from([(
                "name".to_string(),
                vec![name.to_string()],
            )])),
        };
        let networks = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(engine_error)?;
        Ok(networks
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .map(|n| {
                (
                    n.created.map(|c| c.to_string()).unwrap_or_default(),
                    n.id.unwrap_or_default(),
                )
            })
            .collect())
    }

    /// Inspects one container of a pod; `None` when it does not exist.
    async fn inspect_role(
        &self,
        pod: &PodId,
        role: ContainerRole,
    ) -> Result<Option<ContainerInspectResponse>, RuntimeError> {
        match self
            .docker
            .inspect_container(
                &container_name(pod, role),
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(info) => Ok(Some(info)),
            Err(err) if is_no_such_container(&err) => Ok(None),
            Err(err) => Err(engine_error(err)),
        }
    }

    /// The typed error for "container `role` of `pod` does not exist": `PodNotFound` when the
    /// other container is missing too, `ContainerNotFound` otherwise.
    async fn not_found(&self, pod: &PodId, role: ContainerRole) -> RuntimeError {
        match self.inspect_role(pod, other_role(role)).await {
            Ok(Some(_)) => RuntimeError::ContainerNotFound {
                pod: pod.clone(),
                role,
            },
            Ok(None) => RuntimeError::PodNotFound(pod.clone()),
            Err(err) => err,
        }
    }

    /// Maps an error from a call on one container: a missing container becomes
    /// `PodNotFound`/`ContainerNotFound`, any other 404 about `path` becomes `PathNotFound`.
    async fn container_error(
        &self,
        err: BollardError,
        pod: &PodId,
        role: ContainerRole,
        path: Option<&str>,
    ) -> RuntimeError {
        if is_no_such_container(&err) {
            return self.not_found(pod, role).await;
        }
        if let (
            Some(path),
            BollardError::DockerResponseServerError {
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

    /// Creates one container from `template`, mapping name conflicts and missing images.
    async fn create_from(
        &self,
        pod: &PodId,
        role: ContainerRole,
        template: &ContainerTemplate,
    ) -> Result<String, RuntimeError> {
        let options = CreateContainerOptions {
            name: Some(container_name(pod, role)),
            ..Default::default()
        };
        match self
            .docker
            .create_container(Some(options), template.body())
            .await
        {
            Ok(created) => Ok(created.id),
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Err(RuntimeError::PodExists(pod.clone())),
            Err(BollardError::DockerResponseServerError {
                status_code: 404,
                message,
            }) if message.to_ascii_lowercase().contains("no such image") => {
                Err(RuntimeError::ImageMissing(template.image.clone()))
            }
            Err(err) => Err(engine_error(err)),
        }
    }

    /// Removes one container (force, with its anonymous volumes); `false` when it did not exist.
    async fn remove_role(&self, pod: &PodId, role: ContainerRole) -> Result<bool, RuntimeError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self
            .docker
            .remove_container(&container_name(pod, role), Some(options))
            .await
        {
            Ok(()) => Ok(true),
            Err(err) if is_no_such_container(&err) => Ok(false),
            Err(err) => Err(engine_error(err)),
        }
    }

    /// Stops one container; `false` when it did not exist.
    async fn stop_role(
        &self,
        pod: &PodId,
        role: ContainerRole,
        grace: Duration,
    ) -> Result<bool, RuntimeError> {
        let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let options = StopContainerOptions {
            t: Some(i32::try_from(secs).unwrap_or(i32::MAX)),
            signal: None,
        };
        // The engine answers only once the container stopped: give the request the grace too.
        let docker = self.docker.clone().with_timeout(Duration::from_secs(
            REQUEST_TIMEOUT_SECS.saturating_add(secs),
        ));
        match docker
            .stop_container(&container_name(pod, role), Some(options))
            .await
        {
            Ok(()) => Ok(true),
            Err(err) if is_no_such_container(&err) => Ok(false),
            Err(err) => Err(engine_error(err)),
        }
    }

    async fn start_role(&self, pod: &PodId, role: ContainerRole) -> Result<(), RuntimeError> {
        match self
            .docker
            .start_container(
                &container_name(pod, role),
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(err) => Err(self.container_error(err, pod, role, None).await),
        }
    }

    /// Maps a failed container call on `role` of `pod` to the runtime's typed errors.
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
                self.container_error(err, pod, role, path).await
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
}

#[async_trait]
impl ContainerRuntime for DockerRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.docker.ping().await.map(|_| ()).map_err(engine_error)
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.execs.register(registry);
    }

    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(err) => Err(engine_error(err)),
        }
    }

    async fn create_pod(&self, spec: &PodSpec) -> Result<PodInfo, RuntimeError> {
        let pod = &spec.pod_id;
        for role in [ContainerRole::Db, ContainerRole::Web] {
            if self.inspect_role(pod, role).await?.is_some() {
                return Err(RuntimeError::PodExists(pod.clone()));
            }
        }
        if !self.image_present(&spec.image).await? {
            return Err(RuntimeError::ImageMissing(spec.image.clone()));
        }
        let network_id = self.ensure_network(&spec.network).await?;

        let mut db = ContainerTemplate::for_spec(spec, ContainerRole::Db, network_id);
        db.labels
            .insert(LABEL_NETWORK.to_string(), spec.network.clone());
        let db_id = self.create_from(pod, ContainerRole::Db, &db).await?;
        let web =
            ContainerTemplate::for_spec(spec, ContainerRole::Web, format!("container:{db_id}"));
        if let Err(err) = self.create_from(pod, ContainerRole::Web, &web).await {
            if let Err(cleanup) = self.remove_role(pod, ContainerRole::Db).await {
                tracing::warn!(%pod, error = %cleanup, "could not remove the db container of a half-created pod");
            }
            return Err(err);
        }
        self.inspect_pod(pod).await
    }

    async fn start_pod(&self, pod: &PodId) -> Result<PodInfo, RuntimeError> {
        self.start_role(pod, ContainerRole::Db).await?;
        self.start_role(pod, ContainerRole::Web).await?;
        self.inspect_pod(pod).await
    }

    async fn stop_pod(&self, pod: &PodId, grace: Duration) -> Result<(), RuntimeError> {
        // Web first: it lives in the db container's network namespace.
        let web = self.stop_role(pod, ContainerRole::Web, grace).await?;
        let db = self.stop_role(pod, ContainerRole::Db, grace).await?;
        if !web && !db {
            return Err(RuntimeError::PodNotFound(pod.clone()));
        }
        Ok(())
    }

    async fn remove_pod(&self, pod: &PodId) -> Result<(), RuntimeError> {
        let web = self.remove_role(pod, ContainerRole::Web).await?;
        let db = self.remove_role(pod, ContainerRole::Db).await?;
        if !web && !db {
            return Err(RuntimeError::PodNotFound(pod.clone()));
        }
        Ok(())
    }

    async fn start_container(&self, pod: &PodId, role: ContainerRole) -> Result<(), RuntimeError> {
        self.start_role(pod, role).await
    }

    async fn stop_container(
        &self,
        pod: &PodId,
        role: ContainerRole,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        if self.stop_role(pod, role, grace).await? {
            Ok(())
        } else {
            Err(self.not_found(pod, role).await)
        }
    }

    /// Recreating `web` replaces just the web container (joined to the running db's namespace).
    /// Recreating `db` replaces the namespace owner, and a web container cannot rejoin a
    /// namespace that is gone, so it replaces *both* containers: web is removed, db recreated
    /// and started, then web recreated and started in the new db's namespace. Either way the
    /// new containers use the exact image (by id) and configuration of the old ones.
    async fn recreate_container(
        &self,
        pod: &PodId,
        role: ContainerRole,
    ) -> Result<(), RuntimeError> {
        let (db, web) = tokio::try_join!(
            self.inspect_role(pod, ContainerRole::Db),
            self.inspect_role(pod, ContainerRole::Web)
        )?;
        match role {
            ContainerRole::Web => {
                let Some(web) = web else {
                    return Err(self.not_found(pod, ContainerRole::Web).await);
                };
                let Some(db_id) = db.and_then(|db| db.id) else {
                    return Err(RuntimeError::ContainerNotFound {
                        pod: pod.clone(),
                        role: ContainerRole::Db,
                    });
                };
                let mut template = ContainerTemplate::from_inspect(&web)?;
                template.network_mode = format!("container:{db_id}");
                self.remove_role(pod, ContainerRole::Web).await?;
                self.create_from(pod, ContainerRole::Web, &template).await?;
                self.start_role(pod, ContainerRole::Web).await
            }
            ContainerRole::Db => {
                let Some(db) = db else {
                    return Err(self.not_found(pod, ContainerRole::Db).await);
                };
                let mut db_template = ContainerTemplate::from_inspect(&db)?;
                let web_template = web
                    .as_ref()
                    .map(ContainerTemplate::from_inspect)
                    .transpose()?;
                self.remove_role(pod, ContainerRole::Web).await?;
                self.remove_role(pod, ContainerRole::Db).await?;
                // The network may have been removed meanwhile: find (or create) it again.
                if let Some(network) = db_template.labels.get(LABEL_NETWORK).cloned() {
                    db_template.network_mode = self.ensure_network(&network).await?;
                }
                let db_id = self
                    .create_from(pod, ContainerRole::Db, &db_template)
                    .await?;
                self.start_role(pod, ContainerRole::Db).await?;
                if let Some(mut web_template) = web_template {
                    web_template.network_mode = format!("container:{db_id}");
                    self.create_from(pod, ContainerRole::Web, &web_template)
                        .await?;
                    self.start_role(pod, ContainerRole::Web).await?;
                }
                Ok(())
            }
        }
    }

    async fn exec(
        &self,
        pod: &PodId,
        role: ContainerRole,
        request: ExecRequest,
    ) -> Result<ExecOutput, RuntimeError> {
        self.execs.count(ExecPath::Runtime);
        match docker_calls::exec(&self.docker, &container_name(pod, role), &request).await {
            Ok(output) => Ok(output),
            Err(err) => Err(self.call_error(err, pod, role, None, request.timeout).await),
        }
    }

    async fn put_archive(
        &self,
        pod: &PodId,
        role: ContainerRole,
        dest: &str,
        tar: ArchiveStream,
    ) -> Result<(), RuntimeError> {
        match docker_calls::put_archive(&self.docker, &container_name(pod, role), dest, tar).await {
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
        match docker_calls::get_archive(&self.docker, &container_name(pod, role), path).await {
            Ok(stream) => Ok(stream),
            Err(err) => Err(self
                .call_error(err, pod, role, Some(path), Duration::ZERO)
                .await),
        }
    }

    async fn inspect_pod(&self, pod: &PodId) -> Result<PodInfo, RuntimeError> {
        let (db, web) = tokio::try_join!(
            self.inspect_role(pod, ContainerRole::Db),
            self.inspect_role(pod, ContainerRole::Web)
        )?;
        if db.is_none() && web.is_none() {
            return Err(RuntimeError::PodNotFound(pod.clone()));
        }
        let mut node = None;
        let mut ip = None;
        let mut containers = Vec::new();
        for (role, inspect) in [(ContainerRole::Db, db), (ContainerRole::Web, web)] {
            let Some(inspect) = inspect else { continue };
            let info = container_info_from_inspect(role, &inspect);
            if node.is_none() {
                node = info.labels.get(LABEL_NODE).cloned();
            }
            if role == ContainerRole::Db && info.running {
                ip = inspect
                    .network_settings
                    .as_ref()
                    .and_then(|settings| settings.networks.as_ref())
                    .and_then(first_ip);
            }
            containers.push(info);
        }
        let node = node.unwrap_or_default();
        let node = node.parse::<NodeName>().map_err(|err| {
            RuntimeError::Engine(format!("pod {pod} carries a bad {LABEL_NODE} label: {err}"))
        })?;
        Ok(PodInfo {
            pod_id: pod.clone(),
            node,
            ip,
            containers,
        })
    }

    async fn list_pods(&self, node: &NodeName) -> Result<Vec<PodInfo>, RuntimeError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![format!("{LABEL_NODE}={node}")],
            )])),
            ..Default::default()
        };
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(engine_error)?;
        let mut pods: BTreeMap<PodId, PodInfo> = BTreeMap::new();
        for summary in summaries {
            let Some((pod_id, info, ip)) = container_info_from_summary(&summary) else {
                tracing::warn!(container = ?summary.names, "a container of this node has bad clonepool labels; ignored");
                continue;
            };
            let pod = pods.entry(pod_id.clone()).or_insert_with(|| PodInfo {
                pod_id,
                node: node.clone(),
                ip: None,
                containers: Vec::new(),
            });
            if info.role == ContainerRole::Db && info.running {
                pod.ip = ip;
            }
            pod.containers.push(info);
        }
        Ok(pods
            .into_values()
            .map(|mut pod| {
                pod.containers.sort_by_key(|c| c.role == ContainerRole::Web);
                pod
            })
            .collect())
    }

    async fn events(
        &self,
        node: &NodeName,
    ) -> Result<BoxStream<'static, Result<RuntimeEvent, RuntimeError>>, RuntimeError> {
        // Fail now, not on the first poll, when the engine is away.
        self.ping().await?;
        // The request goes out on the first poll; `since` makes sure nothing in between is lost.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let options = EventsOptions {
            since: Some(format!("{}.{:09}", now.as_secs(), now.subsec_nanos())),
            until: None,
            filters: Some(HashMap::from([
                ("type".to_string(), vec!["container".to_string()]),
                ("label".to_string(), vec![format!("{LABEL_NODE}={node}")]),
            ])),
        };
        let events = self
            .docker
            .events(Some(options))
            .filter_map(|item| async move {
                match item {
                    Ok(message) => runtime_event(&message).map(Ok),
                    Err(err) => Some(Err(engine_error(err))),
                }
            });
        Ok(Box::pin(events))
    }
}

/// What a pod container is created from; rebuilt from an inspect to recreate a container.
#[derive(Debug, Clone)]
struct ContainerTemplate {
    image: String,
    cmd: Vec<String>,
    labels: HashMap<String, String>,
    limits: ContainerLimits,
    network_mode: String,
}

impl ContainerTemplate {
    fn for_spec(spec: &PodSpec, role: ContainerRole, network_mode: String) -> Self {
        let mut labels: HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(LABEL_POD.to_string(), spec.pod_id.to_string());
        labels.insert(LABEL_NODE.to_string(), spec.node.to_string());
        labels.insert(LABEL_ROLE.to_string(), role.to_string());
        let (cmd, limits) = match role {
            ContainerRole::Db => ("clonepool-db", &spec.db_limits),
            ContainerRole::Web => ("clonepool-web", &spec.web_limits),
        };
        Self {
            image: spec.image.clone(),
            cmd: vec![cmd.to_string()],
            labels,
            limits: limits.clone(),
            network_mode,
        }
    }

    fn from_inspect(inspect: &ContainerInspectResponse) -> Result<Self, RuntimeError> {
        let config = inspect.config.as_ref();
        let host = inspect.host_config.as_ref();
        let image = inspect
            .image
            .clone()
            .or_else(|| config.and_then(|c| c.image.clone()))
            .ok_or_else(|| RuntimeError::Engine("inspect shows no image".to_string()))?;
        let nano_cpus = host.and_then(|h| h.nano_cpus).unwrap_or(0);
        let memory = host.and_then(|h| h.memory).unwrap_or(0);
        Ok(Self {
            image,
            cmd: config.and_then(|c| c.cmd.clone()).unwrap_or_default(),
            labels: config.and_then(|c| c.labels.clone()).unwrap_or_default(),
            limits: ContainerLimits {
                cpu_millis: u64::try_from(nano_cpus / 1_000_000).unwrap_or(0),
                memory_bytes: u64::try_from(memory).unwrap_or(0),
            },
            network_mode: host
                .and_then(|h| h.network_mode.clone())
                .unwrap_or_default(),
        })
    }

    fn body(&self) -> ContainerCreateBody {
        let positive = |v: u64| (v > 0).then(|| i64::try_from(v).unwrap_or(i64::MAX));
        ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(self.cmd.clone()),
            labels: Some(self.labels.clone()),
            host_config: Some(HostConfig {
                nano_cpus: positive(self.limits.cpu_millis.saturating_mul(1_000_000)),
                memory: positive(self.limits.memory_bytes),
                network_mode: Some(self.network_mode.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn other_role(role: ContainerRole) -> ContainerRole {
    match role {
        ContainerRole::Db => ContainerRole::Web,
        ContainerRole::Web => ContainerRole::Db,
    }
}

fn labels_of(map: Option<&HashMap<String, String>>) -> BTreeMap<String, String> {
    map.map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

fn first_ip(networks: &HashMap<String, bollard::models::EndpointSettings>) -> Option<IpAddr> {
    let mut names: Vec<&String> = networks.keys().collect();
    names.sort();
    names.into_iter().find_map(|name| {
        networks[name]
            .ip_address
            .as_deref()
            .and_then(|ip| ip.parse().ok())
    })
}

fn container_info_from_inspect(
    role: ContainerRole,
    inspect: &ContainerInspectResponse,
) -> ContainerInfo {
    let state = inspect.state.as_ref();
    let status = state.and_then(|s| s.status);
    let exited = matches!(
        status,
        Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD)
    );
    ContainerInfo {
        id: inspect.id.clone().unwrap_or_default(),
        name: inspect
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        role,
        running: status == Some(ContainerStateStatusEnum::RUNNING),
        exit_code: if exited {
            state.and_then(|s| s.exit_code)
        } else {
            None
        },
        labels: labels_of(inspect.config.as_ref().and_then(|c| c.labels.as_ref())),
    }
}

/// The pod, container and (db) address a container of `list_containers` stands for; `None`
/// when its clonepool labels are missing or malformed.
fn container_info_from_summary(
    summary: &ContainerSummary,
) -> Option<(PodId, ContainerInfo, Option<IpAddr>)> {
    let labels = labels_of(summary.labels.as_ref());
    let pod: PodId = labels.get(LABEL_POD)?.parse().ok()?;
    let role = match labels.get(LABEL_ROLE)?.as_str() {
        "db" => ContainerRole::Db,
        "web" => ContainerRole::Web,
        _ => return None,
    };
    let state = summary.state;
    let exited = matches!(
        state,
        Some(ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD)
    );
    let exit_code = if exited {
        summary.status.as_deref().and_then(exit_code_from_status)
    } else {
        None
    };
    let ip = summary
        .network_settings
        .as_ref()
        .and_then(|s| s.networks.as_ref())
        .and_then(first_ip);
    let info = ContainerInfo {
        id: summary.id.clone().unwrap_or_default(),
        name: summary
            .names
            .as_ref()
            .and_then(|names| names.first())
            .map(|name| name.trim_start_matches('/').to_string())
            .unwrap_or_default(),
        role,
        running: state == Some(ContainerSummaryStateEnum::RUNNING),
        exit_code,
        labels,
    };
    Some((pod, info, ip))
}

/// The exit code in a list status like `Exited (137) 5 seconds ago`.
fn exit_code_from_status(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest[..rest.find(')')?].parse().ok()
}

/// The runtime event a Docker container event stands for, if it is one the agent cares about.
fn runtime_event(message: &EventMessage) -> Option<RuntimeEvent> {
    if message.typ != Some(EventMessageTypeEnum::CONTAINER) {
        return None;
    }
    let attributes = message.actor.as_ref()?.attributes.as_ref()?;
    let pod_id = attributes.get(LABEL_POD)?.parse().ok()?;
    let role = match attributes.get(LABEL_ROLE)?.as_str() {
        "db" => ContainerRole::Db,
        "web" => ContainerRole::Web,
        _ => return None,
    };
    let kind = match message.action.as_deref()? {
        "start" => RuntimeEventKind::Started,
        "die" => RuntimeEventKind::Died {
            exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
        },
        "oom" => RuntimeEventKind::OutOfMemory,
        "destroy" => RuntimeEventKind::Destroyed,
        _ => return None,
    };
    Some(RuntimeEvent { pod_id, role, kind })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::EventActor;

    fn event(action: &str, attributes: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            typ: Some(EventMessageTypeEnum::CONTAINER),
            action: Some(action.to_string()),
            actor: Some(EventActor {
                id: Some("abc".to_string()),
                attributes: Some(
                    attributes
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }),
            ..Default::default()
        }
    }

    const POD: [(&str, &str); 3] = [
        ("clonepool.pod", "cp-1a"),
        ("clonepool.role", "web"),
        ("clonepool.node", "test-node"),
    ];

    #[test]
    fn container_events_map_to_runtime_events() {
        let mut die = POD.to_vec();
        die.push(("exitCode", "137"));
        let cases = [
            (event("start", &POD), Some(RuntimeEventKind::Started)),
            (
                event("die", &die),
                Some(RuntimeEventKind::Died {
                    exit_code: Some(137),
                }),
            ),
            (event("oom", &POD), Some(RuntimeEventKind::OutOfMemory)),
            (event("destroy", &POD), Some(RuntimeEventKind::Destroyed)),
            (event("kill", &POD), None),
            (event("exec_start: sh -c true", &POD), None),
        ];
        for (message, expected) in cases {
            let got = runtime_event(&message);
            assert_eq!(
                got.as_ref().map(|e| e.kind.clone()),
                expected,
                "{message:?}"
            );
            if let Some(got) = got {
                assert_eq!(got.pod_id.as_str(), "cp-1a");
                assert_eq!(got.role, ContainerRole::Web);
            }
        }
    }

    #[test]
    fn events_of_foreign_containers_are_ignored() {
        assert_eq!(runtime_event(&event("die", &[("name", "x")])), None);
        let bad_role = [("clonepool.pod", "cp-1a"), ("clonepool.role", "cache")];
        assert_eq!(runtime_event(&event("die", &bad_role)), None);
        let mut network = event("start", &POD);
        network.typ = Some(EventMessageTypeEnum::NETWORK);
        assert_eq!(runtime_event(&network), None);
    }

    #[tokio::test]
    async fn a_missing_engine_socket_is_unreachable() {
        let err = DockerRuntime::connect(Some("/nonexistent/clonepool-test/docker.sock"))
            .await
            .unwrap_err();
        assert!(matches!(err, RuntimeError::Unreachable(_)), "{err:?}");
    }

    #[test]
    fn exit_codes_are_read_from_list_statuses() {
        assert_eq!(
            exit_code_from_status("Exited (137) 5 seconds ago"),
            Some(137)
        );
        assert_eq!(
            exit_code_from_status("Exited (0) About a minute ago"),
            Some(0)
        );
        assert_eq!(exit_code_from_status("Up 3 minutes"), None);
        assert_eq!(exit_code_from_status("Exited (x"), None);
    }

    #[test]
    fn templates_carry_role_command_labels_and_limits() {
        let spec = PodSpec {
            pod_id: "cp-1a".parse().unwrap(),
            node: "test-node".parse().unwrap(),
            image: "clonepool/wordpress:current".to_string(),
            network: "clonepool".to_string(),
            db_limits: ContainerLimits {
                cpu_millis: 500,
                memory_bytes: 256 << 20,
            },
            web_limits: ContainerLimits {
                cpu_millis: 0,
                memory_bytes: 0,
            },
            labels: BTreeMap::from([("clonepool.test".to_string(), "true".to_string())]),
        };
        let db = ContainerTemplate::for_spec(&spec, ContainerRole::Db, "clonepool".into()).body();
        assert_eq!(db.cmd, Some(vec!["clonepool-db".to_string()]));
        let labels = db.labels.unwrap();
        assert_eq!(labels["clonepool.pod"], "cp-1a");
        assert_eq!(labels["clonepool.node"], "test-node");
        assert_eq!(labels["clonepool.role"], "db");
        assert_eq!(labels["clonepool.test"], "true");
        let host = db.host_config.unwrap();
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.memory, Some(256 << 20));
        assert_eq!(host.network_mode.as_deref(), Some("clonepool"));
        assert_eq!(host.restart_policy, None);
        assert_eq!(host.port_bindings, None);

        let web =
            ContainerTemplate::for_spec(&spec, ContainerRole::Web, "container:abc".into()).body();
        assert_eq!(web.cmd, Some(vec!["clonepool-web".to_string()]));
        let host = web.host_config.unwrap();
        assert_eq!((host.nano_cpus, host.memory), (None, None));
        assert_eq!(host.network_mode.as_deref(), Some("container:abc"));
    }
}
