//! The coordinator's Kubernetes mode against the real API server of `scripts/kube-up` (never a
//! mock): each test gets its own namespace with a ServiceAccount bound to a Role holding exactly
//! the rules of `charts/clonepool/files/coordinator-rbac-rules.yaml`, and the coordinator's code runs under that
//! ServiceAccount's token (a kubeconfig written for it), so a missing rule fails a test.
//!
//! Skipped with a message when the cluster's admin kubeconfig is absent, unless
//! `CLONEPOOL_KUBE_REQUIRED` is set (then a missing cluster fails). The cluster has no ingress
//! controller: the tests check the Ingress objects and reach the clones through their Services
//! and Pod IPs (this machine reaches both).

use clonepool_common::api::{ClonePath, CloneRequest, CloneStatus, JobResult, JobState};
use clonepool_coordinator::client::ApiClient;
use clonepool_coordinator::config::{Config, KubeConfig, Mode};
use clonepool_coordinator::exposure::{CloneExposure, ExposeRequest};
use clonepool_coordinator::kubernetes::{self, routes::KubeRoutes, KubeSettings};
use clonepool_coordinator::Coordinator;
use clonepool_e2e::kube_support::{client_to, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    Container, Namespace, Node, Pod, PodSpec, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Resource;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One test at a time: a cold clone's WordPress saturates a small machine.
static KUBE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SERVICE_ACCOUNT: &str = "clonepool-coordinator";
const BASE_DOMAIN: &str = "clones.test";

fn image() -> String {
    std::env::var("CLONEPOOL_IMAGE").unwrap_or_else(|_| {
        panic!("CLONEPOOL_IMAGE is not set: run these tests through scripts/test (it builds the image and sets it)")
    })
}

fn admin_kubeconfig() -> PathBuf {
    let dir =
        std::env::var("CLONEPOOL_KUBE_DIR").unwrap_or_else(|_| "/var/lib/clonepool-kube".into());
    Path::new(&dir).join("admin.kubeconfig")
}

fn rbac_rules() -> Vec<PolicyRule> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/clonepool/files/coordinator-rbac-rules.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path} is not a list of rules: {e}"))
}

async fn client_from(path: &Path) -> kube::Client {
    kubernetes::client(&KubeConfig {
        kubeconfig: Some(path.to_path_buf()),
        ..kube_config_defaults()
    })
    .await
    .unwrap_or_else(|e| panic!("a client from {}: {e}", path.display()))
}

fn kube_config_defaults() -> KubeConfig {
    Config::with_data_dir("/nonexistent").kube
}

/// A namespace with the coordinator's ServiceAccount and Role, and a kubeconfig that
/// authenticates as that ServiceAccount. The namespace is deleted on drop.
struct KubeEnv {
    admin: kube::Client,
    namespace: String,
    /// Kubeconfig of the ServiceAccount (its token, the cluster's CA and address).
    sa_kubeconfig: PathBuf,
    dir: tempfile::TempDir,
    _lock: tokio::sync::MutexGuard<'static, ()>,
}

impl Drop for KubeEnv {
    fn drop(&mut self) {
        // A client of its own on a runtime of its own: the test's client needs the test's
        // runtime, which this drop blocks.
        let namespace = self.namespace.clone();
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let admin = client_from(&admin_kubeconfig()).await;
                let _ = Api::<Namespace>::all(admin)
                    .delete(&namespace, &DeleteParams::background())
                    .await;
            });
        });
        let _ = done.join();
    }
}

/// The test environment, or `None` (after saying why) when there is no cluster to use.
async fn kube_env(what: &str) -> Option<KubeEnv> {
    let admin_path = admin_kubeconfig();
    let required = std::env::var_os("CLONEPOOL_KUBE_REQUIRED").is_some();
    if !admin_path.is_file() {
        assert!(
            !required,
            "CLONEPOOL_KUBE_REQUIRED is set but {} does not exist: run scripts/kube-up",
            admin_path.display()
        );
        eprintln!(
            "SKIPPED: no Kubernetes cluster ({} is absent; run scripts/kube-up, or set CLONEPOOL_KUBE_REQUIRED to fail instead)",
            admin_path.display()
        );
        return None;
    }
    let lock = KUBE.lock().await;
    let admin = client_from(&admin_path).await;
    if let Err(err) = admin.apiserver_version().await {
        assert!(
            !required,
            "the API server of {} does not answer: {err}",
            admin_path.display()
        );
        eprintln!(
            "SKIPPED: the API server of {} does not answer ({err}); run scripts/kube-up",
            admin_path.display()
        );
        return None;
    }
    let namespace = format!("cp-kc-{what}-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let meta = |name: &str| ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.clone()),
        ..Default::default()
    };
    let pp = PostParams::default();
    Api::<Namespace>::all(admin.clone())
        .create(
            &pp,
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(namespace.clone()),
                    labels: Some(BTreeMap::from([(
                        "clonepool.test".to_string(),
                        "true".to_string(),
                    )])),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("a test namespace");
    let dir = tempfile::tempdir().unwrap();
    let env = KubeEnv {
        admin: admin.clone(),
        namespace: namespace.clone(),
        sa_kubeconfig: dir.path().join("coordinator.kubeconfig"),
        dir,
        _lock: lock,
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), &namespace)
        .create(
            &pp,
            &ServiceAccount {
                metadata: meta(SERVICE_ACCOUNT),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    Api::<Role>::namespaced(admin.clone(), &namespace)
        .create(
            &pp,
            &Role {
                metadata: meta(SERVICE_ACCOUNT),
                rules: Some(rbac_rules()),
            },
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), &namespace)
        .create(
            &pp,
            &RoleBinding {
                metadata: meta(SERVICE_ACCOUNT),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: SERVICE_ACCOUNT.into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: SERVICE_ACCOUNT.into(),
                    namespace: Some(namespace.clone()),
                    api_group: None,
                }]),
            },
        )
        .await
        .unwrap();
    let token: TokenRequest = Api::<ServiceAccount>::namespaced(admin.clone(), &namespace)
        .create_subresource(
            "token",
            SERVICE_ACCOUNT,
            &pp,
            &TokenRequest {
                metadata: ObjectMeta::default(),
                spec: TokenRequestSpec {
                    audiences: vec![],
                    expiration_seconds: Some(3600),
                    bound_object_ref: None,
                },
                status: None,
            },
        )
        .await
        .expect("a token for the coordinator's ServiceAccount");
    let token = token.status.expect("a token").token;
    let admin_config = kube::config::Kubeconfig::read_from(&admin_path).unwrap();
    let cluster = admin_config.clusters[0].cluster.clone().unwrap();
    let ca = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => format!("certificate-authority-data: {data}"),
        (None, Some(file)) => format!("certificate-authority: {file}"),
        (None, None) => panic!("the admin kubeconfig names no CA"),
    };
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    {ca}\nusers:\n- name: {SERVICE_ACCOUNT}\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: {SERVICE_ACCOUNT}\n    namespace: {namespace}\ncurrent-context: c\n",
        cluster.server.expect("a server")
    );
    std::fs::write(&env.sa_kubeconfig, kubeconfig).unwrap();
    // The coordinator's client really is the ServiceAccount, not the admin: it may not list
    // Secrets (no rule grants that).
    let sa = client_from(&env.sa_kubeconfig).await;
    let denied = Api::<Secret>::namespaced(sa, &namespace)
        .list(&ListParams::default())
        .await
        .expect_err("the ServiceAccount must not list Secrets");
    assert!(
        matches!(&denied, kube::Error::Api(s) if s.code == 403),
        "{denied}"
    );
    Some(env)
}

impl KubeEnv {
    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.admin.clone(), &self.namespace)
    }

    async fn sa_client(&self) -> kube::Client {
        client_from(&self.sa_kubeconfig).await
    }

    /// A coordinator in Kubernetes mode running as the ServiceAccount, with fast loops and no
    /// source import (a clone is the fresh WordPress of its pod).
    async fn coordinator(&self, api_token: &str) -> (Coordinator, ApiClient) {
        self.coordinator_with(api_token, |_| {}).await
    }

    async fn coordinator_with(
        &self,
        api_token: &str,
        tune: impl FnOnce(&mut Config),
    ) -> (Coordinator, ApiClient) {
        let data = self.dir.path().join("coordinator");
        let agent_token = self.dir.path().join("agent-token");
        std::fs::write(&agent_token, "kube-test-agent-token\n").unwrap();
        let mut config = Config::with_data_dir(&data);
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.admin_listen = "127.0.0.1:0".parse().unwrap();
        config.edge_listen = "127.0.0.1:0".parse().unwrap();
        config.api_tokens_from_env = vec![api_token.to_string()];
        config.agent_token_file = agent_token;
        config.capacity_poll_ms = 300;
        config.agent_stale_ms = 3000;
        config.reaper_interval_ms = 300;
        config.retry_backoff_ms = 500;
        config.source_import = false;
        config.url_allow_hosts = vec!["source.test".into()];
        config.mode = Mode::Kubernetes;
        config.kube.kubeconfig = Some(self.sa_kubeconfig.clone());
        config.kube.namespace = Some(self.namespace.clone());
        config.kube.base_domain = Some(BASE_DOMAIN.into());
        config.kube.image = Some(image());
        // No registry here: the image is in the node's Docker Engine.
        config.kube.image_pull_policy = "Never".into();
        config.kube.cold_ready_timeout_secs = 240;
        config.kube.cold_cpu_millis = 500;
        config.kube.cold_memory_mb = 384;
        tune(&mut config);
        let coordinator = clonepool_coordinator::start(config)
            .await
            .expect("the coordinator starts in Kubernetes mode");
        let ca = std::fs::read(coordinator.tls.ca.as_ref().unwrap()).unwrap();
        let api = ApiClient::new(&coordinator.api_url(), api_token, Some(&ca)).unwrap();
        (coordinator, api)
    }

    /// A Pod of the workload image serving `files` (path → content) with PHP's built-in server
    /// on `port`: a stand-in for an agent or a warm clone pod.
    async fn standin_pod(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        port: u16,
        files: &[(&str, &str)],
    ) -> Pod {
        let mut script = String::from("set -e\n");
        for (path, content) in files {
            let dir = Path::new(path).parent().unwrap().display().to_string();
            script.push_str(&format!(
                "mkdir -p /srv{dir}\nprintf '%s' '{content}' > /srv{path}\n"
            ));
        }
        script.push_str(&format!("exec php -S 0.0.0.0:{port} -t /srv\n"));
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                automount_service_account_token: Some(false),
                termination_grace_period_seconds: Some(1),
                containers: vec![Container {
                    name: "standin".into(),
                    image: Some(image()),
                    image_pull_policy: Some("Never".into()),
                    command: Some(vec!["/bin/sh".into(), "-c".into(), script]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        };
        let pods: Api<Pod> = self.api();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        eventually(
            &format!("stand-in Pod {name} running with an IP"),
            Duration::from_secs(120),
            || async {
                let pod = pods.get(name).await.ok()?;
                let status = pod.status.as_ref()?;
                (status.phase.as_deref() == Some("Running") && status.pod_ip.is_some())
                    .then_some(pod)
            },
        )
        .await
    }
}

/// Addresses of the ready endpoints of Service `name`.
async fn ready_endpoints(env: &KubeEnv, name: &str) -> Vec<String> {
    env.api::<k8s_openapi::api::discovery::v1::EndpointSlice>()
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
        .await
        .unwrap()
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
        .flat_map(|e| e.addresses.clone())
        .collect()
}

fn managed_by_clonepool_apply(meta: &ObjectMeta, what: &str) {
    let entries = meta.managed_fields.clone().unwrap_or_default();
    let apply = entries
        .iter()
        .find(|e| e.manager.as_deref() == Some("clonepool"))
        .unwrap_or_else(|| {
            panic!("{what} has no managedFields entry of manager clonepool: {entries:?}")
        });
    assert_eq!(
        apply.operation.as_deref(),
        Some("Apply"),
        "{what} was written by server-side apply"
    );
    assert!(
        entries
            .iter()
            .filter(|e| e.operation.as_deref() == Some("Update"))
            .all(|e| e.manager.as_deref() != Some("clonepool")),
        "{what}: clonepool never writes by update: {entries:?}"
    );
}

fn owned_by(meta: &ObjectMeta, deployment: &Deployment, what: &str) {
    let refs = meta.owner_references.clone().unwrap_or_default();
    assert!(
        refs.iter().any(|r| r.kind == "Deployment"
            && Some(&r.uid) == deployment.metadata.uid.as_ref()
            && r.block_owner_deletion == Some(true)),
        "{what} is owned by the clone's Deployment: {refs:?}"
    );
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn a_cold_clone_is_a_deployment_secret_service_and_ingress_that_serve_wordpress_and_go_with_it(
) {
    let Some(env) = kube_env("cold").await else {
        return;
    };
    let token = format!("kube-{:016x}", rand::random::<u64>());
    let (coordinator, api) = env.coordinator(&token).await;
    let node = Api::<Node>::all(env.admin.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items[0]
        .metadata
        .name
        .clone()
        .unwrap();

    // No agent Pod exists: the clone goes cold, through the API server.
    let started = Instant::now();
    let accepted = api
        .clone_site(
            &CloneRequest {
                source_url: "https://source.test/".into(),
                source_username: "admin".into(),
                source_password: "unused".into(),
                customer_id: None,
                ttl_minutes: Some(60),
            },
            None,
        )
        .await
        .expect("the clone is accepted");
    let status = api
        .wait_job(
            &accepted.job.job_id,
            Duration::from_millis(250),
            Duration::from_secs(300),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(status.status, JobState::Completed, "{status:?}");
    let Some(JobResult::Clone(result)) = status.result.clone() else {
        panic!("no clone result: {status:?}");
    };
    eprintln!(
        "cold clone {} ready in {:.1} s",
        result.clone_id,
        started.elapsed().as_secs_f64()
    );
    let clone_id = result.clone_id.clone();
    let host = format!("{clone_id}.{BASE_DOMAIN}");
    assert_eq!(result.path, ClonePath::Cold);
    assert_eq!(result.clone_url, format!("http://{host}"));
    assert_eq!(
        result.node, node,
        "the clone names the node its Pod runs on"
    );

    // Four objects, applied server-side by `clonepool`, the other three owned by the Deployment.
    let name = format!("clone-{clone_id}");
    let deployment = env.api::<Deployment>().get(&name).await.unwrap();
    managed_by_clonepool_apply(&deployment.metadata, "the Deployment");
    let secret = env.api::<Secret>().get(&name).await.unwrap();
    managed_by_clonepool_apply(&secret.metadata, "the Secret");
    owned_by(&secret.metadata, &deployment, "the Secret");
    let service = env.api::<Service>().get(&name).await.unwrap();
    managed_by_clonepool_apply(&service.metadata, "the Service");
    owned_by(&service.metadata, &deployment, "the Service");
    let ingress = env.api::<Ingress>().get(&name).await.unwrap();
    managed_by_clonepool_apply(&ingress.metadata, "the Ingress");
    owned_by(&ingress.metadata, &deployment, "the Ingress");
    let rule = &ingress.spec.as_ref().unwrap().rules.as_ref().unwrap()[0];
    assert_eq!(rule.host.as_deref(), Some(host.as_str()));
    assert_eq!(
        rule.http.as_ref().unwrap().paths[0]
            .backend
            .service
            .as_ref()
            .unwrap()
            .name,
        name
    );
    // The passwords are in the Secret only, never in the Deployment.
    let admin_password =
        String::from_utf8(secret.data.as_ref().unwrap()["admin-password"].0.clone()).unwrap();
    assert_eq!(admin_password, result.password);
    assert!(!serde_json::to_string(&deployment)
        .unwrap()
        .contains(&result.password));

    // Its Pod is Ready on the node, and WordPress answers on the Pod IP and through the Service.
    let selector = deployment
        .spec
        .as_ref()
        .unwrap()
        .selector
        .match_labels
        .clone()
        .unwrap();
    let pod_id = selector["clonepool.pod"].clone();
    let pods = env
        .api::<Pod>()
        .list(&ListParams::default().labels(&format!("clonepool.pod={pod_id}")))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 1);
    let pod = &pods.items[0];
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some(node.as_str())
    );
    let ready = pod
        .status
        .as_ref()
        .unwrap()
        .conditions
        .clone()
        .unwrap_or_default();
    assert!(
        ready
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "{ready:?}"
    );
    let pod_ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
    let home = client_to(&host, &pod_ip)
        .get(format!("http://{host}/"))
        .send()
        .await
        .expect("WordPress answers on the Pod IP");
    assert_eq!(home.status(), 200);
    let body = home.text().await.unwrap();
    assert!(body.contains("wp-content"), "a WordPress page: {body:.300}");
    // The Service already lists the Pod as a ready endpoint (what an ingress controller routes
    // by) when the job completes.
    assert_eq!(
        ready_endpoints(&env, &name).await,
        std::slice::from_ref(&pod_ip)
    );
    // Through the Service (kube-proxy, which may take a moment to program it), logging in with
    // the job's credentials.
    let cluster_ip = service.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
    let via_service = client_to(&host, &cluster_ip);
    eventually(
        "wp-login.php answers through the Service",
        Duration::from_secs(30),
        || async {
            let page = via_service
                .get(format!("http://{host}/wp-login.php"))
                .send()
                .await
                .ok()?;
            (page.status() == 200).then_some(())
        },
    )
    .await;
    let login = via_service
        .post(format!("http://{host}/wp-login.php"))
        .form(&[
            ("log", result.username.as_str()),
            ("pwd", result.password.as_str()),
            ("wp-submit", "Log In"),
            ("testcookie", "1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 302, "the job's admin password logs in");
    let dashboard = via_service
        .get(format!("http://{host}/wp-admin/"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        dashboard.status(),
        200,
        "the dashboard opens after the login"
    );

    // Deleting the clone removes all of it: one foreground delete of the Deployment.
    api.delete(&clone_id).await.unwrap();
    let gone_since = Instant::now();
    eventually(
        "the Deployment, Secret, Service, Ingress and Pod are gone",
        Duration::from_secs(120),
        || async {
            let gone = env
                .api::<Deployment>()
                .get_opt(&name)
                .await
                .unwrap()
                .is_none()
                && env.api::<Secret>().get_opt(&name).await.unwrap().is_none()
                && env.api::<Service>().get_opt(&name).await.unwrap().is_none()
                && env.api::<Ingress>().get_opt(&name).await.unwrap().is_none()
                && env
                    .api::<Pod>()
                    .list(&ListParams::default().labels(&format!("clonepool.pod={pod_id}")))
                    .await
                    .unwrap()
                    .items
                    .is_empty();
            gone.then_some(())
        },
    )
    .await;
    eprintln!(
        "cold clone removed in {:.1} s",
        gone_since.elapsed().as_secs_f64()
    );
    let info = api.clone_info(&clone_id).await.unwrap();
    assert_eq!(info.status, CloneStatus::Released);
    coordinator.shutdown().await;
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn a_warm_pods_clone_gets_a_service_and_ingress_to_its_pod_that_go_when_it_ends() {
    let Some(env) = kube_env("warm").await else {
        return;
    };
    // A warm pod as the agent labels it (a stand-in serving a page), and another pod.
    let pod = env
        .standin_pod(
            "cp-0123456789ab",
            &[("clonepool.pod", "cp-0123456789ab")],
            80,
            &[("/index.html", "warm-pod-0123")],
        )
        .await;
    env.standin_pod(
        "cp-other",
        &[("clonepool.pod", "cp-ffffffffffff")],
        80,
        &[("/index.html", "another-pod")],
    )
    .await;
    eprintln!("stand-in pods running");
    let client = env.sa_client().await;
    let mut kube = kube_config_defaults();
    kube.namespace = Some(env.namespace.clone());
    kube.base_domain = Some(BASE_DOMAIN.into());
    kube.ingress_class = Some("clonepool-test".into());
    let settings = KubeSettings::from_config(&kube, &client);
    let routes = KubeRoutes::new(client, settings);
    let request = ExposeRequest {
        clone_id: "shop".into(),
        pod_id: "cp-0123456789ab".into(),
        agent: "http://10.244.0.99:7411".into(),
    };
    routes
        .expose(&request)
        .await
        .expect("Service and Ingress applied");
    routes
        .expose(&request)
        .await
        .expect("applying again changes nothing");
    eprintln!("Service and Ingress applied");
    let pod_ip = pod.status.clone().unwrap().pod_ip.unwrap();
    assert_eq!(
        ready_endpoints(&env, "clone-shop").await,
        [pod_ip],
        "exposed once the Service lists the clone's pod (only) as ready"
    );

    let service = env.api::<Service>().get("clone-shop").await.unwrap();
    managed_by_clonepool_apply(&service.metadata, "the Service");
    let ingress = env.api::<Ingress>().get("clone-shop").await.unwrap();
    managed_by_clonepool_apply(&ingress.metadata, "the Ingress");
    let spec = ingress.spec.unwrap();
    assert_eq!(spec.ingress_class_name.as_deref(), Some("clonepool-test"));
    assert_eq!(
        spec.rules.unwrap()[0].host.as_deref(),
        Some("shop.clones.test")
    );
    // The Service reaches that pod, and only it, through kube-proxy (which may take a moment
    // to program a new Service: a reused ClusterIP can still lead elsewhere until then).
    let cluster_ip = service.spec.unwrap().cluster_ip.unwrap();
    let via_service = client_to("shop.clones.test", &cluster_ip);
    let get = || async {
        let response = via_service
            .get("http://shop.clones.test/")
            .send()
            .await
            .ok()?;
        let status = response.status();
        Some((status, response.text().await.ok()?))
    };
    eventually(
        "the Service leads to the pod",
        Duration::from_secs(60),
        || async { get().await.filter(|(_, body)| body == "warm-pod-0123") },
    )
    .await;
    for _ in 0..10 {
        let (status, body) = get().await.expect("the Service answers");
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (200, "warm-pod-0123"),
            "the Service selects the clone's pod only"
        );
    }
    routes.withdraw("shop").await.expect("withdrawn");
    assert!(env
        .api::<Service>()
        .get_opt("clone-shop")
        .await
        .unwrap()
        .is_none());
    assert!(env
        .api::<Ingress>()
        .get_opt("clone-shop")
        .await
        .unwrap()
        .is_none());
    routes
        .withdraw("shop")
        .await
        .expect("withdrawing what is gone is fine");
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn agent_discovery_picks_up_a_labelled_agent_pod_and_drops_it_when_the_pod_goes() {
    let Some(env) = kube_env("disco").await else {
        return;
    };
    let token = format!("kube-{:016x}", rand::random::<u64>());
    let (coordinator, api) = env.coordinator(&token).await;
    let capacity = r#"{"node":"standin-node","starting":0,"warm":0,"assigned":0,"ready":0,"resetting":0,"quarantined":0,"max":4}"#;
    // An agent Pod (as the chart labels them) answering the capacity route, and a Pod that
    // lacks the agent component label.
    let agent = env
        .standin_pod(
            "agent-standin",
            &[
                ("app.kubernetes.io/name", "clonepool"),
                ("app.kubernetes.io/component", "agent"),
            ],
            7411,
            &[("/v1/capacity", capacity)],
        )
        .await;
    env.standin_pod(
        "not-an-agent",
        &[("app.kubernetes.io/name", "clonepool")],
        7411,
        &[("/v1/capacity", capacity)],
    )
    .await;
    let url = format!(
        "http://{}:7411",
        agent.status.as_ref().unwrap().pod_ip.as_ref().unwrap()
    );
    let pool = eventually(
        "the agent Pod is discovered and up",
        Duration::from_secs(30),
        || async {
            let pool = api.pool().await.ok()?;
            pool.agents
                .iter()
                .any(|a| a.agent == url && a.up && a.node.as_deref() == Some("standin-node"))
                .then_some(pool)
        },
    )
    .await;
    let agents: Vec<&str> = pool.agents.iter().map(|a| a.agent.as_str()).collect();
    assert_eq!(
        agents.iter().filter(|a| a.starts_with("http://")).count(),
        1,
        "only the labelled Pod is an agent: {agents:?}"
    );
    assert!(
        agents.iter().any(|a| a.starts_with("kubernetes://")),
        "the cold provisioner is listed too: {agents:?}"
    );

    env.api::<Pod>()
        .delete("agent-standin", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the deleted agent is dropped",
        Duration::from_secs(60),
        || async {
            let pool = api.pool().await.ok()?;
            (!pool.agents.iter().any(|a| a.agent == url)).then_some(())
        },
    )
    .await;
    coordinator.shutdown().await;
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn a_cold_claim_is_idempotent_per_clone_bounded_by_the_limit_and_a_released_name_starts_afresh(
) {
    use clonepool_common::agent_api::{ClaimPath, ClaimRequest, ReadyRequest, ReleaseRequest};
    use clonepool_coordinator::agent_client::{AgentClient, AgentError};
    use clonepool_coordinator::kubernetes::cold::ColdProvisioner;

    let Some(env) = kube_env("claim").await else {
        return;
    };
    let client = env.sa_client().await;
    let mut kube = kube_config_defaults();
    kube.namespace = Some(env.namespace.clone());
    kube.base_domain = Some(BASE_DOMAIN.into());
    kube.image = Some(image());
    kube.image_pull_policy = "Never".into();
    kube.cold_max = 1;
    kube.cold_cpu_millis = 500;
    let cold = ColdProvisioner::new(client.clone(), KubeSettings::from_config(&kube, &client));
    let claim = |clone: &str, allow_cold: bool| ClaimRequest {
        clone_id: clone.parse().unwrap(),
        clone_host: format!("{clone}.{BASE_DOMAIN}"),
        clone_scheme: Default::default(),
        allow_cold,
    };

    let first = cold.claim(&claim("one", true)).await.expect("a cold clone");
    assert_eq!(first.path, ClaimPath::Cold);
    // Asked again (a claim whose answer was lost): the same pod, the same passwords.
    let again = cold
        .claim(&claim("one", true))
        .await
        .expect("the same clone");
    assert_eq!(again.pod_id, first.pod_id);
    assert_eq!(
        again.credentials.admin_password,
        first.credentials.admin_password
    );
    assert_eq!(again.endpoint, first.endpoint);
    assert_eq!(
        env.api::<Deployment>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    cold.mark_ready(&ReadyRequest {
        clone_id: "one".parse().unwrap(),
    })
    .await
    .unwrap();
    // At the limit, another clone is refused; a warm claim never makes a Deployment.
    assert_eq!(
        cold.claim(&claim("two", true)).await.unwrap_err(),
        AgentError::NoCapacity
    );
    assert_eq!(
        cold.claim(&claim("two", false)).await.unwrap_err(),
        AgentError::NoWarmPod
    );
    let capacity = cold.capacity().await.unwrap();
    assert_eq!((capacity.ready, capacity.max), (1, 1));

    // Released, and the name claimed again at once: the new clone waits for the old one's
    // objects to go and starts with fresh passwords.
    cold.release(&ReleaseRequest {
        clone_id: "one".parse().unwrap(),
    })
    .await
    .unwrap();
    let reborn = cold.claim(&claim("one", true)).await.expect("a new clone");
    assert_ne!(
        reborn.credentials.admin_password,
        first.credentials.admin_password
    );
    let secret = env.api::<Secret>().get("clone-one").await.unwrap();
    let stored = String::from_utf8(secret.data.unwrap()["admin-password"].0.clone()).unwrap();
    assert_eq!(stored, reborn.credentials.admin_password);
    cold.release(&ReleaseRequest {
        clone_id: "one".parse().unwrap(),
    })
    .await
    .unwrap();
    eventually(
        "the clone's Deployment is gone",
        Duration::from_secs(120),
        || async {
            env.api::<Deployment>()
                .get_opt("clone-one")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert!(matches!(
        cold.release(&ReleaseRequest {
            clone_id: "one".parse().unwrap(),
        })
        .await,
        Err(AgentError::NotFound(_))
    ));
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn a_cold_clone_whose_ttl_runs_out_leaves_nothing_behind() {
    let Some(env) = kube_env("ttl").await else {
        return;
    };
    let token = format!("kube-{:016x}", rand::random::<u64>());
    // A TTL minute of 2 s: the shortest TTL (5 minutes) runs out 10 s after the clone is ready.
    let (coordinator, api) = env
        .coordinator_with(&token, |config| config.ttl_minute_ms = 2000)
        .await;
    let accepted = api
        .clone_site(
            &CloneRequest {
                source_url: "https://source.test/".into(),
                source_username: "admin".into(),
                source_password: "unused".into(),
                customer_id: None,
                ttl_minutes: Some(clonepool_common::api::MIN_TTL_MINUTES),
            },
            None,
        )
        .await
        .unwrap();
    let status = api
        .wait_job(
            &accepted.job.job_id,
            Duration::from_millis(250),
            Duration::from_secs(300),
            |_| {},
        )
        .await
        .unwrap();
    let Some(JobResult::Clone(result)) = status.result.clone() else {
        panic!("no clone result: {status:?}");
    };
    assert_eq!(result.path, ClonePath::Cold);
    let name = format!("clone-{}", result.clone_id);
    assert!(env
        .api::<Deployment>()
        .get_opt(&name)
        .await
        .unwrap()
        .is_some());
    let info = eventually(
        "the clone expires and is released",
        Duration::from_secs(90),
        || async {
            let info = api.clone_info(&result.clone_id).await.ok()?;
            (info.status == CloneStatus::Released).then_some(info)
        },
    )
    .await;
    assert_eq!(info.end_reason.as_deref(), Some("expired"));
    eventually(
        "everything the clone made is gone",
        Duration::from_secs(120),
        || async {
            let pods = env
                .api::<Pod>()
                .list(
                    &ListParams::default().labels(&format!("clonepool.clone={}", result.clone_id)),
                )
                .await
                .unwrap();
            let gone = env
                .api::<Deployment>()
                .get_opt(&name)
                .await
                .unwrap()
                .is_none()
                && env.api::<Secret>().get_opt(&name).await.unwrap().is_none()
                && env.api::<Service>().get_opt(&name).await.unwrap().is_none()
                && env.api::<Ingress>().get_opt(&name).await.unwrap().is_none()
                && pods.items.is_empty();
            gone.then_some(())
        },
    )
    .await;
    coordinator.shutdown().await;
}
