//! A Service + Ingress per clone, so `{clone}.{base_domain}` reaches the clone's Pod through
//! the cluster's Ingress ([`KubeRoutes`], the [`CloneExposure`] of Kubernetes mode).
//!
//! The Service **selects the Pod by its `clonepool.pod=<pod id>` label** rather than pointing an
//! EndpointSlice at the Pod's IP: the endpoints controller then follows the Pod wherever its IP
//! goes (the agent may replace a Pod under the same id), only sends traffic while the Pod is
//! Ready, and the coordinator needs no write access to EndpointSlices nor to keep them current.
//! A pod id belongs to one clone at a time, and the Service is deleted before the pod is handed
//! back (see `reaper.rs`), so a reused pod never answers under an old clone's name.
//!
//! A clone is exposed once its Service has a ready endpoint (an EndpointSlice lists the Pod as
//! ready): what ingress controllers route by, so the clone URL answers when its job completes.
//!
//! Cold clones get the same two objects from the cold provisioner (owned by their Deployment,
//! see [`super::cold`]); [`KubeRoutes::skipping`] leaves them to it.

use super::{
    apply_params, clone_labels, is_not_found, object_name, KubeError, KubeSettings, LABEL_POD,
    WEB_PORT,
};
use crate::exposure::{CloneExposure, ExposeRequest, ExposureError};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a clone's Service may take to list its Pod as a ready endpoint.
pub const ENDPOINT_TIMEOUT: Duration = Duration::from_secs(60);

/// `app.kubernetes.io/component` of a warm clone's Service and Ingress.
pub const COMPONENT_ROUTE: &str = "clone-route";

/// The clone's Service: port 80 to port 80 of the Pod labelled `clonepool.pod=<pod_id>`.
pub fn service_manifest(
    namespace: &str,
    clone_id: &str,
    pod_id: &str,
    component: &str,
    owner: Option<OwnerReference>,
) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(object_name(clone_id)),
            namespace: Some(namespace.to_string()),
            labels: Some(clone_labels(clone_id, component)),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(BTreeMap::from([(
                LABEL_POD.to_string(),
                pod_id.to_string(),
            )])),
            ports: Some(vec![ServicePort {
                name: Some("http".to_string()),
                port: WEB_PORT,
                target_port: Some(IntOrString::Int(WEB_PORT)),
                protocol: Some("TCP".to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// The clone's Ingress: `{clone}.{domain}`, every path, to the clone's Service (TLS with the
/// configured secret when there is one).
pub fn ingress_manifest(
    settings: &KubeSettings,
    clone_id: &str,
    component: &str,
    owner: Option<OwnerReference>,
) -> Ingress {
    let host = settings.clone_host(clone_id);
    Ingress {
        metadata: ObjectMeta {
            name: Some(object_name(clone_id)),
            namespace: Some(settings.clones_namespace.clone()),
            labels: Some(clone_labels(clone_id, component)),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(IngressSpec {
            ingress_class_name: settings.ingress_class.clone(),
            tls: settings.ingress_tls_secret.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(host),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".to_string()),
                        path_type: "Prefix".to_string(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: object_name(clone_id),
                                port: Some(ServiceBackendPort {
                                    number: Some(WEB_PORT),
                                    name: None,
                                }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            default_backend: None,
        }),
        status: None,
    }
}

/// Applies the clone's Service and Ingress (server-side apply; idempotent). Returns the
/// Service as the API server answered (with its ClusterIP).
pub async fn apply_route(
    services: &Api<Service>,
    ingresses: &Api<Ingress>,
    service: &Service,
    ingress: &Ingress,
) -> Result<Service, KubeError> {
    let name = service.metadata.name.clone().unwrap_or_default();
    let applied = services
        .patch(&name, &apply_params(), &Patch::Apply(service))
        .await
        .map_err(KubeError::api(format!("applying Service {name}")))?;
    ingresses
        .patch(&name, &apply_params(), &Patch::Apply(ingress))
        .await
        .map_err(KubeError::api(format!("applying Ingress {name}")))?;
    Ok(applied)
}

/// Waits until an EndpointSlice of the clone's Service lists a ready endpoint; returns its
/// first address.
pub async fn wait_for_endpoint(
    slices: &Api<EndpointSlice>,
    clone_id: &str,
    timeout: Duration,
) -> Result<String, KubeError> {
    let name = object_name(clone_id);
    let params = ListParams::default().labels(&format!("kubernetes.io/service-name={name}"));
    let deadline = Instant::now() + timeout;
    loop {
        let listed = slices.list(&params).await.map_err(KubeError::api(format!(
            "listing the EndpointSlices of Service {name}"
        )))?;
        let ready = listed
            .items
            .iter()
            .flat_map(|slice| slice.endpoints.iter())
            .find(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
            .and_then(|e| e.addresses.first().cloned());
        if let Some(address) = ready {
            return Ok(address);
        }
        if Instant::now() > deadline {
            return Err(KubeError::NoEndpoint {
                service: name,
                waited: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes the clone's Ingress, then its Service; already gone is fine.
pub async fn delete_route(
    services: &Api<Service>,
    ingresses: &Api<Ingress>,
    clone_id: &str,
) -> Result<(), KubeError> {
    let name = object_name(clone_id);
    match ingresses.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(err) if is_not_found(&err) => {}
        Err(err) => return Err(KubeError::api(format!("deleting Ingress {name}"))(err)),
    }
    match services.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(err) if is_not_found(&err) => {}
        Err(err) => return Err(KubeError::api(format!("deleting Service {name}"))(err)),
    }
    Ok(())
}

/// The Service + Ingress of each warm clone, in the clones namespace.
pub struct KubeRoutes {
    services: Api<Service>,
    ingresses: Api<Ingress>,
    slices: Api<EndpointSlice>,
    settings: KubeSettings,
    /// Clones claimed from this registry URL (the cold provisioner) already have theirs.
    skip_agent: Option<String>,
}

impl KubeRoutes {
    pub fn new(client: kube::Client, settings: KubeSettings) -> Self {
        Self {
            services: Api::namespaced(client.clone(), &settings.clones_namespace),
            ingresses: Api::namespaced(client.clone(), &settings.clones_namespace),
            slices: Api::namespaced(client, &settings.clones_namespace),
            settings,
            skip_agent: None,
        }
    }

    /// Clones claimed from `agent_url` are left alone on expose (their provisioner made and
    /// owns their Service and Ingress); withdrawing them still deletes both.
    pub fn skipping(mut self, agent_url: &str) -> Self {
        self.skip_agent = Some(agent_url.to_string());
        self
    }
}

#[async_trait]
impl CloneExposure for KubeRoutes {
    async fn expose(&self, request: &ExposeRequest) -> Result<(), ExposureError> {
        if self.skip_agent.as_deref() == Some(request.agent.as_str()) {
            return Ok(());
        }
        let service = service_manifest(
            &self.settings.clones_namespace,
            &request.clone_id,
            &request.pod_id,
            COMPONENT_ROUTE,
            None,
        );
        let ingress = ingress_manifest(&self.settings, &request.clone_id, COMPONENT_ROUTE, None);
        apply_route(&self.services, &self.ingresses, &service, &ingress)
            .await
            .map_err(|err| ExposureError(err.to_string()))?;
        let address = wait_for_endpoint(&self.slices, &request.clone_id, ENDPOINT_TIMEOUT)
            .await
            .map_err(|err| ExposureError(err.to_string()))?;
        tracing::info!(clone = %request.clone_id, pod = %request.pod_id, endpoint = %address,
            host = %self.settings.clone_host(&request.clone_id), "clone Service and Ingress applied");
        Ok(())
    }

    async fn withdraw(&self, clone_id: &str) -> Result<(), ExposureError> {
        delete_route(&self.services, &self.ingresses, clone_id)
            .await
            .map_err(|err| ExposureError(err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    pub(crate) fn settings() -> KubeSettings {
        KubeSettings {
            namespace: "clonepool".into(),
            clones_namespace: "clones".into(),
            agent_selector: "app=agent".into(),
            agent_port: 7411,
            domain: "clones.example.test".into(),
            scheme: "https",
            ingress_class: Some("nginx".into()),
            ingress_tls_secret: Some("wildcard".into()),
            image: "clonepool/wordpress:abc".into(),
            image_pull_policy: "Never".into(),
            cold_max: 3,
            cold_ready_timeout: Duration::from_secs(60),
            cold_cpu_millis: 1000,
            cold_memory_mb: 384,
        }
    }

    #[test]
    fn a_clones_service_selects_its_pod_by_the_agents_pod_label_only() {
        let service = service_manifest("clones", "shop", "cp-0123456789ab", COMPONENT_ROUTE, None);
        assert_eq!(service.metadata.name.as_deref(), Some("clone-shop"));
        let spec = service.spec.unwrap();
        assert_eq!(
            spec.selector.unwrap(),
            BTreeMap::from([("clonepool.pod".to_string(), "cp-0123456789ab".to_string())])
        );
        let port = &spec.ports.unwrap()[0];
        assert_eq!(
            (port.port, port.target_port.clone()),
            (80, Some(IntOrString::Int(80)))
        );
        let labels = service.metadata.labels.unwrap();
        assert_eq!(labels["clonepool.clone"], "shop");
        assert_eq!(
            labels["app.kubernetes.io/managed-by"],
            "clonepool-coordinator"
        );
    }

    #[test]
    fn a_clones_ingress_routes_its_host_with_the_configured_class_and_tls_secret() {
        let ingress = ingress_manifest(&settings(), "shop", COMPONENT_ROUTE, None);
        let spec = ingress.spec.unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        let tls = &spec.tls.unwrap()[0];
        assert_eq!(tls.secret_name.as_deref(), Some("wildcard"));
        assert_eq!(
            tls.hosts.as_deref(),
            Some(&["shop.clones.example.test".to_string()][..])
        );
        let rule = &spec.rules.unwrap()[0];
        assert_eq!(rule.host.as_deref(), Some("shop.clones.example.test"));
        let path = &rule.http.as_ref().unwrap().paths[0];
        assert_eq!(path.path_type, "Prefix");
        let backend = path.backend.service.as_ref().unwrap();
        assert_eq!(backend.name, "clone-shop");
        assert_eq!(backend.port.as_ref().unwrap().number, Some(80));

        let mut plain = settings();
        plain.ingress_class = None;
        plain.ingress_tls_secret = None;
        let spec = ingress_manifest(&plain, "shop", COMPONENT_ROUTE, None)
            .spec
            .unwrap();
        assert!(spec.tls.is_none() && spec.ingress_class_name.is_none());
    }

    #[test]
    fn manifests_carry_their_kind_for_server_side_apply() {
        let service = serde_json::to_value(service_manifest("n", "a", "p", "x", None)).unwrap();
        assert_eq!(service["apiVersion"], "v1");
        assert_eq!(service["kind"], "Service");
        let ingress =
            serde_json::to_value(ingress_manifest(&settings(), "a", COMPONENT_ROUTE, None))
                .unwrap();
        assert_eq!(ingress["apiVersion"], "networking.k8s.io/v1");
        assert_eq!(ingress["kind"], "Ingress");
    }
}
