//! Kubernetes mode (`--mode kubernetes`): the API server client and settings, and the three
//! things the coordinator does through the API server — finding agents
//! ([`discovery`]), a Service + Ingress per clone ([`routes`]) and cold clones as Deployments
//! ([`cold`]). Every write is a server-side apply with field manager [`FIELD_MANAGER`]; the RBAC
//! this needs is `charts/clonepool/files/coordinator-rbac-rules.yaml`.

pub mod cold;
pub mod discovery;
pub mod routes;

use crate::config::KubeConfig;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::PatchParams;
use std::collections::BTreeMap;
use std::time::Duration;

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "clonepool";
/// `app.kubernetes.io/managed-by` of every object the coordinator makes.
pub const MANAGED_BY: &str = "clonepool-coordinator";
/// `app.kubernetes.io/name` of the clone objects (the agent's pods carry the same).
pub const APP_NAME: &str = "clonepool-pod";
/// The clone an object belongs to.
pub const LABEL_CLONE: &str = "clonepool.clone";
/// The pod id a Pod serves under (set by the agent on its Pods, by the coordinator on cold
/// Deployments' Pods); clone Services select on it.
pub const LABEL_POD: &str = "clonepool.pod";
/// Port of WordPress in a clone Pod (the web container; both share the Pod's network).
pub const WEB_PORT: i32 = 80;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot read the kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error(
        "cannot find the Kubernetes API server (no kubeconfig, no in-cluster service account): {0}"
    )]
    Infer(String),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(String),
    #[error("Service {service} listed no ready endpoint within {waited:?} (is its Pod Ready?)")]
    NoEndpoint { service: String, waited: Duration },
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

impl KubeError {
    pub fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeError {
        let what = what.into();
        move |source| KubeError::Api { what, source }
    }
}

/// Whether the API server answered 404.
pub fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

/// What the Kubernetes pieces need, resolved from [`KubeConfig`] and the client.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// Where the agents run (discovery).
    pub namespace: String,
    /// Where clone Pods, their Services and Ingresses, and cold Deployments live.
    pub clones_namespace: String,
    pub agent_selector: String,
    pub agent_port: u16,
    /// Clones are `{clone}.{domain}`.
    pub domain: String,
    /// `http` or `https` (when the Ingresses carry a TLS secret).
    pub scheme: &'static str,
    pub ingress_class: Option<String>,
    pub ingress_tls_secret: Option<String>,
    pub image: String,
    pub image_pull_policy: String,
    pub cold_max: u32,
    pub cold_ready_timeout: Duration,
    pub cold_cpu_millis: u32,
    pub cold_memory_mb: u32,
}

impl KubeSettings {
    /// Settings from the configuration; namespaces default to the client's namespace (the
    /// service account's in a cluster, the kubeconfig context's otherwise).
    pub fn from_config(config: &KubeConfig, client: &kube::Client) -> Self {
        let namespace = config
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        Self {
            clones_namespace: config
                .clones_namespace
                .clone()
                .unwrap_or_else(|| namespace.clone()),
            namespace,
            agent_selector: config.agent_selector.clone(),
            agent_port: config.agent_port,
            domain: config.domain(),
            scheme: config.clone_scheme(),
            ingress_class: config.ingress_class.clone(),
            ingress_tls_secret: config.ingress_tls_secret.clone(),
            image: config.image.clone().unwrap_or_default(),
            image_pull_policy: config.image_pull_policy.clone(),
            cold_max: config.cold_max,
            cold_ready_timeout: Duration::from_secs(config.cold_ready_timeout_secs),
            cold_cpu_millis: config.cold_cpu_millis,
            cold_memory_mb: config.cold_memory_mb,
        }
    }

    /// `{clone}.{domain}`: the clone's host name (and its WordPress's).
    pub fn clone_host(&self, clone_id: &str) -> String {
        format!("{clone_id}.{}", self.domain)
    }
}

/// A client for the API server: from `--kubeconfig` when given, else inferred (`KUBECONFIG`,
/// `~/.kube/config`, the Pod's service account).
pub async fn client(config: &KubeConfig) -> Result<kube::Client, KubeError> {
    let client_config = match &config.kubeconfig {
        Some(path) => {
            let kubeconfig =
                kube::config::Kubeconfig::read_from(path).map_err(|err| KubeError::Kubeconfig {
                    path: path.display().to_string(),
                    message: err.to_string(),
                })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|err| KubeError::Kubeconfig {
                    path: path.display().to_string(),
                    message: err.to_string(),
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|err| KubeError::Infer(err.to_string()))?,
    };
    kube::Client::try_from(client_config).map_err(|err| KubeError::Client(err.to_string()))
}

/// Server-side apply as [`FIELD_MANAGER`], taking over fields another manager changed (the
/// coordinator owns these objects).
pub fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Name of every object made for `clone_id` (a clone id is a DNS label of at most 40
/// characters, so this is a valid Service name).
pub fn object_name(clone_id: &str) -> String {
    format!("clone-{clone_id}")
}

/// Labels of an object made for `clone_id`.
pub fn clone_labels(clone_id: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGED_BY.to_string(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            component.to_string(),
        ),
        (LABEL_CLONE.to_string(), clone_id.to_string()),
    ])
}

/// An ownerReference to `owner` that holds back a foreground deletion of the owner until the
/// dependent is gone.
pub fn owner_reference(api_version: &str, kind: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: name.to_string(),
        uid: uid.to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}
