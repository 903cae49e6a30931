//! Cold clones through the API server: when no agent has a warm pod, the coordinator itself
//! makes the clone a Deployment of the workload image ([`ColdProvisioner`]). It is registered
//! in the agent registry like an agent (URL `kubernetes://{namespace}/cold`) and implements the
//! agent protocol, so claims, durable claim records, retries and releases go through the same
//! code as warm clones; the router sends it cold claims only (`Router::with_cold_provisioner`).
//!
//! One clone is four objects named `clone-{clone}`, all applied server-side as `clonepool`:
//!
//! * **Deployment** (the owner): one replica of a Pod with the agent pods' two containers, `db`
//!   (`clonepool-db`) and `web` (`clonepool-web`). Kubernetes starts a Pod's containers in
//!   order and waits for each one's postStart hook before starting the next, so the `db` hook
//!   (`clonepool-db-setup`) has made the database user before the `web` hook writes
//!   `wp-config` and installs WordPress for `{scheme}://{clone}.{base_domain}` — what the agent
//!   does by exec for its pods. Secrets reach the scripts on stdin from the mounted Secret,
//!   never through argv or the environment. The web container is Ready when WordPress answers
//!   `GET /` for the clone's host name.
//! * **Secret**: the database and admin passwords and the scripts' stdin.
//! * **Service** + **Ingress**: as for warm clones (`routes.rs`), selecting the Pod by its
//!   `clonepool.pod=cold-…` label. The claim answers once the Pod is Ready and the Service
//!   lists it as a ready endpoint.
//!
//! The Secret, Service and Ingress carry an ownerReference to the Deployment (blocking its
//! deletion), so releasing the clone is one foreground delete of the Deployment: the garbage
//! collector removes the ReplicaSet, the Pod and the three others first. A claim for a name
//! whose earlier Deployment is still being deleted waits for it to go. A claim is idempotent
//! per clone (a resumed claim reuses the stored passwords). Importing a source site into a
//! cold clone is not supported yet (no agent holds its containers): such jobs fail clearly.

use super::routes::{
    apply_route, ingress_manifest, service_manifest, wait_for_endpoint, ENDPOINT_TIMEOUT,
};
use super::{
    apply_params, clone_labels, is_not_found, object_name, owner_reference, KubeSettings,
    LABEL_CLONE, LABEL_POD, WEB_PORT,
};
use crate::agent_client::{AgentClient, AgentError, ClonedSiteArchive};
use async_trait::async_trait;
use clonepool_common::agent_api::{
    Capacity, ClaimPath, ClaimRequest, ClaimResponse, ExportRequest, ImportResponse,
    PodCredentials, PodSummary, ReadyRequest, ReleaseRequest, ReleaseResponse,
};
use clonepool_common::ids::{CloneId, NodeName, PodId};
use clonepool_common::pod::PodState;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ExecAction, HTTPGetAction, HTTPHeader, KeyToPath, Lifecycle,
    LifecycleHandler, Pod, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret,
    SecretVolumeSource, Service, Volume, VolumeMount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ListParams, Patch};
use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// `app.kubernetes.io/component` of a cold clone's objects.
pub const COMPONENT_COLD: &str = "cold-clone";
/// The WordPress administrator of a cold clone (the agent's pods use the same).
pub const ADMIN_USER: &str = "admin";
const ADMIN_EMAIL: &str = "admin@clonepool.invalid";
const SITE_TITLE: &str = "clonepool";
/// Where the Secret's setup files are mounted (root-only).
const SETUP_DIR: &str = "/run/clonepool-setup";
const PASSWORD_LEN: usize = 24;
/// How long a claim waits for an earlier Deployment of the same name to be deleted.
const GONE_TIMEOUT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(500);
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

/// `db` container's postStart: the database user with the stored password.
const DB_SETUP: &str = "exec clonepool-db-setup < /run/clonepool-setup/db-setup";
/// `web` container's postStart: wp-config, then WordPress installed (3: already installed,
/// after a restart of the web container).
const WEB_SETUP: &str = "set -e\n\
clonepool-wp-config < /run/clonepool-setup/wp-config\n\
rc=0\n\
clonepool-wp-install < /run/clonepool-setup/wp-install || rc=$?\n\
[ \"$rc\" -eq 0 ] || [ \"$rc\" -eq 3 ]\n";

/// The pod id of a cold clone: `cold-` and 12 hex digits of a hash of the clone id (a pod id
/// has at most 40 characters, a clone id too).
pub fn cold_pod_id(clone_id: &str) -> PodId {
    let digest = Sha256::digest(clone_id.as_bytes());
    format!("cold-{}", &hex::encode(digest)[..12])
        .parse()
        .expect("cold-<hex> is a DNS label")
}

/// The node name cold clones report when the real one is unknown or not a DNS label.
fn cluster_node() -> NodeName {
    "kubernetes".parse().expect("a DNS label")
}

/// A cold clone's passwords.
#[derive(Clone)]
pub struct Passwords {
    pub db: String,
    pub admin: String,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passwords(<redacted>)")
    }
}

impl Passwords {
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        Self {
            db: Alphanumeric.sample_string(&mut rng, PASSWORD_LEN),
            admin: Alphanumeric.sample_string(&mut rng, PASSWORD_LEN),
        }
    }

    fn from_secret(secret: &Secret) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let get = |key: &str| {
            data.get(key)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .filter(|v| !v.is_empty())
        };
        Some(Self {
            db: get("db-password")?,
            admin: get("admin-password")?,
        })
    }
}

fn resources(settings: &KubeSettings) -> ResourceRequirements {
    let quantity = |s: String| Quantity(s);
    ResourceRequirements {
        limits: Some(BTreeMap::from([
            (
                "cpu".to_string(),
                quantity(format!("{}m", settings.cold_cpu_millis)),
            ),
            (
                "memory".to_string(),
                quantity(format!("{}Mi", settings.cold_memory_mb)),
            ),
        ])),
        requests: Some(BTreeMap::from([
            (
                "cpu".to_string(),
                quantity(format!("{}m", (settings.cold_cpu_millis / 4).max(10))),
            ),
            (
                "memory".to_string(),
                quantity(format!("{}Mi", (settings.cold_memory_mb / 4).max(32))),
            ),
        ])),
        ..Default::default()
    }
}

fn setup_volume(name: &str, secret: &str, keys: &[&str]) -> Volume {
    Volume {
        name: name.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_string()),
            items: Some(
                keys.iter()
                    .map(|key| KeyToPath {
                        key: key.to_string(),
                        path: key.to_string(),
                        mode: None,
                    })
                    .collect(),
            ),
            default_mode: Some(0o400),
            optional: None,
        }),
        ..Default::default()
    }
}

fn post_start(script: &str) -> Lifecycle {
    Lifecycle {
        post_start: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec![
                    "/bin/sh".to_string(),
                    "-c".to_string(),
                    script.to_string(),
                ]),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The cold clone's Deployment (see the module doc).
pub fn deployment_manifest(
    settings: &KubeSettings,
    clone_id: &str,
    pod_id: &PodId,
    clone_host: &str,
) -> Deployment {
    let name = object_name(clone_id);
    let selector = BTreeMap::from([
        (LABEL_POD.to_string(), pod_id.to_string()),
        (LABEL_CLONE.to_string(), clone_id.to_string()),
    ]);
    let mut pod_labels = clone_labels(clone_id, COMPONENT_COLD);
    pod_labels.extend(selector.clone());
    let mount = |volume: &str| VolumeMount {
        name: volume.to_string(),
        mount_path: SETUP_DIR.to_string(),
        read_only: Some(true),
        ..Default::default()
    };
    let container = |role: &str| Container {
        name: role.to_string(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        args: Some(vec![format!("clonepool-{role}")]),
        resources: Some(resources(settings)),
        ..Default::default()
    };
    let db = Container {
        volume_mounts: Some(vec![mount("setup-db")]),
        lifecycle: Some(post_start(DB_SETUP)),
        ..container("db")
    };
    let web = Container {
        volume_mounts: Some(vec![mount("setup-web")]),
        lifecycle: Some(post_start(WEB_SETUP)),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_string()),
            container_port: WEB_PORT,
            protocol: Some("TCP".to_string()),
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/".to_string()),
                port: IntOrString::Int(WEB_PORT),
                http_headers: Some(vec![HTTPHeader {
                    name: "Host".to_string(),
                    value: clone_host.to_string(),
                }]),
                ..Default::default()
            }),
            period_seconds: Some(2),
            timeout_seconds: Some(5),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        ..container("web")
    };
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(settings.clones_namespace.clone()),
            labels: Some(clone_labels(clone_id, COMPONENT_COLD)),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            revision_history_limit: Some(0),
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".to_string()),
                rolling_update: None,
            }),
            selector: LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(5),
                    containers: vec![db, web],
                    volumes: Some(vec![
                        setup_volume("setup-db", &name, &["db-setup"]),
                        setup_volume("setup-web", &name, &["wp-config", "wp-install"]),
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The cold clone's Secret: the passwords (to resume a claim) and the setup scripts' stdin.
pub fn secret_manifest(
    settings: &KubeSettings,
    clone_id: &str,
    site_url: &str,
    passwords: &Passwords,
    owner: OwnerReference,
) -> Secret {
    let entry = |key: &str, value: String| (key.to_string(), ByteString(value.into_bytes()));
    Secret {
        metadata: ObjectMeta {
            name: Some(object_name(clone_id)),
            namespace: Some(settings.clones_namespace.clone()),
            labels: Some(clone_labels(clone_id, COMPONENT_COLD)),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([
            entry("db-password", passwords.db.clone()),
            entry("admin-password", passwords.admin.clone()),
            entry("db-setup", format!("{}\n", passwords.db)),
            entry(
                "wp-config",
                format!("db_password={}\nsite_url={site_url}\n", passwords.db),
            ),
            entry(
                "wp-install",
                format!(
                    "site_url={site_url}\ntitle={SITE_TITLE}\nadmin_user={ADMIN_USER}\nadmin_password={}\nadmin_email={ADMIN_EMAIL}\n",
                    passwords.admin
                ),
            ),
        ])),
        ..Default::default()
    }
}

fn unavailable(what: &str) -> impl FnOnce(kube::Error) -> AgentError + '_ {
    move |err| AgentError::Unavailable(format!("{what}: {err}"))
}

/// The reason a cold Pod will not start, if it is stuck for good.
fn fatal_reason(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    status.container_statuses.iter().flatten().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        FATAL_WAITING.contains(&reason).then(|| {
            format!(
                "container {} of Pod {}: {reason}: {}",
                c.name,
                pod.metadata.name.as_deref().unwrap_or("?"),
                waiting.message.as_deref().unwrap_or("")
            )
        })
    })
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
}

/// Cold clones as Deployments (see the module doc); an [`AgentClient`] for the registry.
pub struct ColdProvisioner {
    url: String,
    settings: KubeSettings,
    deployments: Api<Deployment>,
    secrets: Api<Secret>,
    services: Api<Service>,
    ingresses: Api<Ingress>,
    slices: Api<EndpointSlice>,
    pods: Api<Pod>,
}

impl ColdProvisioner {
    pub fn new(client: kube::Client, settings: KubeSettings) -> Self {
        let ns = settings.clones_namespace.clone();
        Self {
            url: format!("kubernetes://{ns}/cold"),
            deployments: Api::namespaced(client.clone(), &ns),
            secrets: Api::namespaced(client.clone(), &ns),
            services: Api::namespaced(client.clone(), &ns),
            ingresses: Api::namespaced(client.clone(), &ns),
            slices: Api::namespaced(client.clone(), &ns),
            pods: Api::namespaced(client, &ns),
            settings,
        }
    }

    /// Label selector of every cold clone's objects.
    pub fn selector() -> String {
        format!(
            "app.kubernetes.io/managed-by={},app.kubernetes.io/component={COMPONENT_COLD}",
            super::MANAGED_BY
        )
    }

    async fn deployment(&self, name: &str) -> Result<Option<Deployment>, AgentError> {
        self.deployments
            .get_opt(name)
            .await
            .map_err(unavailable("reading the cold clone's Deployment"))
    }

    /// Waits until an earlier Deployment of this name (being deleted) is gone.
    async fn wait_gone(&self, name: &str) -> Result<(), AgentError> {
        let deadline = Instant::now() + GONE_TIMEOUT;
        while self.deployment(name).await?.is_some() {
            if Instant::now() > deadline {
                return Err(AgentError::Unavailable(format!(
                    "the previous clone's Deployment {name} is still being deleted"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    async fn count(&self) -> Result<u32, AgentError> {
        let list = self
            .deployments
            .list_metadata(&ListParams::default().labels(&Self::selector()).match_any())
            .await
            .map_err(unavailable("listing cold clone Deployments"))?;
        Ok(u32::try_from(list.items.len()).unwrap_or(u32::MAX))
    }

    /// Passwords of an earlier, unfinished claim of this clone, when its Secret holds them.
    async fn stored_passwords(&self, name: &str) -> Result<Option<Passwords>, AgentError> {
        let secret = self
            .secrets
            .get_opt(name)
            .await
            .map_err(unavailable("reading the cold clone's Secret"))?;
        Ok(secret.as_ref().and_then(Passwords::from_secret))
    }

    /// Deletes the clone's Deployment (foreground: its dependents go first).
    async fn delete(&self, name: &str) -> Result<bool, AgentError> {
        match self
            .deployments
            .delete(name, &DeleteParams::foreground())
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if is_not_found(&err) => Ok(false),
            Err(err) => Err(unavailable("deleting the cold clone's Deployment")(err)),
        }
    }

    /// Waits until the clone's Pod is Ready: its node and IP. A Pod stuck for good removes the
    /// clone's objects and refuses the claim.
    async fn wait_ready(&self, name: &str, pod_id: &PodId) -> Result<(String, String), AgentError> {
        let deadline = Instant::now() + self.settings.cold_ready_timeout;
        let pods = ListParams::default().labels(&format!("{LABEL_POD}={pod_id}"));
        loop {
            if self.deployment(name).await?.is_none() {
                return Err(AgentError::Unavailable(format!(
                    "the cold clone's Deployment {name} was deleted while it started"
                )));
            }
            let listed = self
                .pods
                .list(&pods)
                .await
                .map_err(unavailable("listing the cold clone's Pods"))?;
            if let Some(pod) = listed.items.iter().find(|p| is_ready(p)) {
                let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
                let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
                if let (Some(node), Some(ip)) = (node, ip) {
                    return Ok((node, ip));
                }
            }
            if let Some(reason) = listed.items.iter().find_map(fatal_reason) {
                tracing::warn!(deployment = %name, %reason, "cold clone Pod cannot start; removing it");
                self.delete(name).await?;
                return Err(AgentError::Refused {
                    status: 503,
                    code: "cold_pod_failed".into(),
                    message: reason,
                });
            }
            if Instant::now() > deadline {
                return Err(AgentError::Unavailable(format!(
                    "the cold clone's Pod was not Ready within {:?}",
                    self.settings.cold_ready_timeout
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[async_trait]
impl AgentClient for ColdProvisioner {
    fn url(&self) -> &str {
        &self.url
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<ClaimResponse, AgentError> {
        if !request.allow_cold {
            return Err(AgentError::NoWarmPod);
        }
        let clone_id = request.clone_id.as_str();
        let name = object_name(clone_id);
        let pod_id = cold_pod_id(clone_id);
        let mut existing = self.deployment(&name).await?;
        if existing
            .as_ref()
            .is_some_and(|d| d.metadata.deletion_timestamp.is_some())
        {
            // An earlier clone of this name is being removed: let it go first.
            self.wait_gone(&name).await?;
            existing = None;
        }
        if existing.is_none() && self.count().await? >= self.settings.cold_max {
            return Err(AgentError::NoCapacity);
        }
        let passwords = match existing {
            Some(_) => self
                .stored_passwords(&name)
                .await?
                .unwrap_or_else(Passwords::generate),
            None => Passwords::generate(),
        };
        let host = request.clone_host.as_str();
        let site_url = format!("{}://{host}", self.settings.scheme);

        let deployment = deployment_manifest(&self.settings, clone_id, &pod_id, host);
        let applied = self
            .deployments
            .patch(&name, &apply_params(), &Patch::Apply(&deployment))
            .await
            .map_err(unavailable("applying the cold clone's Deployment"))?;
        let uid = applied.metadata.uid.clone().ok_or_else(|| {
            AgentError::Unavailable("the applied Deployment has no uid".to_string())
        })?;
        let owner = owner_reference("apps/v1", "Deployment", &name, &uid);
        let secret = secret_manifest(
            &self.settings,
            clone_id,
            &site_url,
            &passwords,
            owner.clone(),
        );
        self.secrets
            .patch(&name, &apply_params(), &Patch::Apply(&secret))
            .await
            .map_err(unavailable("applying the cold clone's Secret"))?;
        let service = service_manifest(
            &self.settings.clones_namespace,
            clone_id,
            pod_id.as_str(),
            COMPONENT_COLD,
            Some(owner.clone()),
        );
        let ingress = ingress_manifest(&self.settings, clone_id, COMPONENT_COLD, Some(owner));
        let service = apply_route(&self.services, &self.ingresses, &service, &ingress)
            .await
            .map_err(|err| AgentError::Unavailable(err.to_string()))?;
        tracing::info!(clone = %clone_id, deployment = %name, "cold clone applied; waiting for its Pod");

        let (node, pod_ip) = self.wait_ready(&name, &pod_id).await?;
        // Reachable through the Ingress once the Service lists the Pod as ready.
        wait_for_endpoint(&self.slices, clone_id, ENDPOINT_TIMEOUT)
            .await
            .map_err(|err| AgentError::Unavailable(err.to_string()))?;
        let endpoint = match service
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref())
            .filter(|ip| !ip.is_empty() && *ip != "None")
        {
            Some(ip) => format!("http://{ip}:{WEB_PORT}"),
            None => format!("http://{pod_ip}:{WEB_PORT}"),
        };
        Ok(ClaimResponse {
            pod_id,
            node: node.parse().unwrap_or_else(|_| cluster_node()),
            clone_id: request.clone_id.clone(),
            endpoint,
            credentials: PodCredentials {
                admin_username: ADMIN_USER.to_string(),
                admin_password: passwords.admin,
            },
            path: ClaimPath::Cold,
            wordpress_version: None,
        })
    }

    async fn mark_ready(&self, request: &ReadyRequest) -> Result<PodSummary, AgentError> {
        let name = object_name(request.clone_id.as_str());
        match self.deployment(&name).await? {
            Some(_) => Ok(PodSummary {
                pod_id: cold_pod_id(request.clone_id.as_str()),
                node: cluster_node(),
                state: PodState::Ready,
                clone_id: Some(request.clone_id.clone()),
                endpoint: None,
                since: crate::timestamps::rfc3339(crate::timestamps::now_ms()),
                reason: None,
            }),
            None => Err(AgentError::NotFound(format!("no cold clone {name}"))),
        }
    }

    async fn release(&self, request: &ReleaseRequest) -> Result<ReleaseResponse, AgentError> {
        let name = object_name(request.clone_id.as_str());
        if self.delete(&name).await? {
            tracing::info!(deployment = %name, "cold clone deleted (its Secret, Service and Ingress go with it)");
            Ok(ReleaseResponse {
                pod_id: cold_pod_id(request.clone_id.as_str()),
                state: PodState::Resetting,
            })
        } else {
            Err(AgentError::NotFound(format!("no cold clone {name}")))
        }
    }

    async fn capacity(&self) -> Result<Capacity, AgentError> {
        let count = self.count().await?;
        Ok(Capacity {
            node: "kubernetes".to_string(),
            ready: count,
            max: self.settings.cold_max,
            ..Capacity::default()
        })
    }

    async fn import(
        &self,
        _clone_id: &CloneId,
        _archive: crate::wp_site::ExportStream,
    ) -> Result<ImportResponse, AgentError> {
        Err(AgentError::Refused {
            status: 501,
            code: "not_supported".into(),
            message: "a cold Kubernetes clone cannot import a source site yet (no agent holds its containers); add warm pods, or run with --source-import=false".into(),
        })
    }

    async fn export(&self, _request: &ExportRequest) -> Result<ClonedSiteArchive, AgentError> {
        Err(AgentError::Refused {
            status: 501,
            code: "not_supported".into(),
            message: "a cold Kubernetes clone cannot be exported yet".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings() -> KubeSettings {
        KubeSettings {
            namespace: "clonepool".into(),
            clones_namespace: "clones".into(),
            agent_selector: "app=agent".into(),
            agent_port: 7411,
            domain: "clones.example.test".into(),
            scheme: "http",
            ingress_class: None,
            ingress_tls_secret: None,
            image: "clonepool/wordpress:abc".into(),
            image_pull_policy: "Never".into(),
            cold_max: 3,
            cold_ready_timeout: Duration::from_secs(60),
            cold_cpu_millis: 1000,
            cold_memory_mb: 384,
        }
    }

    #[test]
    fn a_cold_pod_id_is_a_stable_short_label_per_clone() {
        let long = "x".repeat(40);
        let id = cold_pod_id(&long);
        assert!(id.as_str().starts_with("cold-") && id.as_str().len() == 17);
        assert_eq!(cold_pod_id("shop"), cold_pod_id("shop"));
        assert_ne!(cold_pod_id("shop"), cold_pod_id("shop2"));
    }

    #[test]
    fn the_deployment_runs_db_then_web_with_setup_from_the_secret_and_no_secret_in_its_spec() {
        let pod_id = cold_pod_id("shop");
        let d = deployment_manifest(&settings(), "shop", &pod_id, "shop.clones.example.test");
        let spec = d.spec.clone().unwrap();
        assert_eq!(spec.replicas, Some(1));
        let selector = spec.selector.match_labels.unwrap();
        assert_eq!(selector["clonepool.pod"], pod_id.as_str());
        let template = spec.template;
        let labels = template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["clonepool.pod"], pod_id.as_str());
        let pod = template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["db", "web"],
            "db's postStart must finish before web starts"
        );
        let db = &pod.containers[0];
        assert_eq!(db.args.as_deref(), Some(&["clonepool-db".to_string()][..]));
        let hook = |c: &Container| {
            c.lifecycle
                .as_ref()
                .unwrap()
                .post_start
                .as_ref()
                .unwrap()
                .exec
                .as_ref()
                .unwrap()
                .command
                .clone()
                .unwrap()
        };
        assert!(hook(db)[2].contains("clonepool-db-setup < /run/clonepool-setup/db-setup"));
        let web = &pod.containers[1];
        assert!(hook(web)[2].contains("clonepool-wp-install < /run/clonepool-setup/wp-install"));
        let probe = web
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(
            probe.http_headers.as_ref().unwrap()[0].value,
            "shop.clones.example.test"
        );
        assert_eq!(web.image_pull_policy.as_deref(), Some("Never"));
        let volumes = pod.volumes.unwrap();
        assert!(volumes
            .iter()
            .all(|v| v.secret.as_ref().unwrap().secret_name.as_deref() == Some("clone-shop")));
        // No password anywhere in the Deployment: only the Secret holds them.
        let text = serde_json::to_string(&d).unwrap();
        assert!(!text.contains("password="), "{text}");
        assert!(pod.containers.iter().all(|c| c.env.is_none()));
    }

    #[test]
    fn the_secret_holds_the_scripts_stdin_and_is_owned_by_the_deployment() {
        let passwords = Passwords {
            db: "dbpw".into(),
            admin: "adminpw".into(),
        };
        let owner = owner_reference("apps/v1", "Deployment", "clone-shop", "uid-1");
        let secret = secret_manifest(
            &settings(),
            "shop",
            "http://shop.clones.example.test",
            &passwords,
            owner,
        );
        let data = secret.data.clone().unwrap();
        let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
        assert_eq!(text("db-setup"), "dbpw\n");
        assert_eq!(
            text("wp-config"),
            "db_password=dbpw\nsite_url=http://shop.clones.example.test\n"
        );
        assert!(text("wp-install").contains("admin_user=admin\nadmin_password=adminpw\n"));
        let again = Passwords::from_secret(&secret).unwrap();
        assert_eq!(
            (again.db.as_str(), again.admin.as_str()),
            ("dbpw", "adminpw")
        );
        let refs = secret.metadata.owner_references.unwrap();
        assert_eq!(refs[0].kind, "Deployment");
        assert_eq!(refs[0].block_owner_deletion, Some(true));
        assert!(!format!("{passwords:?}").contains("dbpw"));
    }
}
