//! `KubeRuntime` against the real single-node cluster of `scripts/kube-up` (admin kubeconfig at
//! /var/lib/clonepool-kube/admin.kubeconfig, or `CLONEPOOL_KUBECONFIG`) and the real workload
//! image (env `CLONEPOOL_IMAGE`, loaded into the node's Docker Engine). Each test works in its own
//! namespace, deleted at the end also when it fails. Without a cluster the tests say so and pass,
//! unless `CLONEPOOL_KUBE_REQUIRED` is set.
//!
//! The CRI exec path talks to the kubelet's runtime socket: the cluster's dockershim at
//! /var/lib/clonepool-kube/run/dockershim.sock, or `CLONEPOOL_CRI_SOCKET`. A runtime on that
//! path is built without any Docker client, so whatever it does cannot go through the Docker
//! Engine (the Pods' containers are Docker containers underneath, behind the dockershim).

use bollard::query_parameters::{KillContainerOptions, ListContainersOptions};
use bollard::Docker;
use clap::Parser;
use clonepool_agent::app;
use clonepool_agent::config::{AgentConfig, RawConfig};
use clonepool_agent::provision::HttpSiteProbe;
use clonepool_agent::runtime::cri::CriClient;
use clonepool_agent::runtime::kube::{KubeRuntime, KubeSettings, ANNOTATION_CONTAINER};
use clonepool_agent::runtime::{
    archive_from_bytes, collect_archive, ContainerLimits, ContainerRuntime, ExecCounter,
    ExecOutput, ExecPath, ExecRequest, PodInfo, PodSpec, RuntimeError, RuntimeEventKind,
};
use clonepool_common::agent_api::ClaimRequest;
use clonepool_common::ids::{NodeName, PodId};
use clonepool_common::pod::{ContainerRole, PodState};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEFAULT_KUBECONFIG: &str = "/var/lib/clonepool-kube/admin.kubeconfig";
/// The kubelet's CRI runtime socket of `scripts/kube-up`'s cluster.
const DEFAULT_CRI_SOCKET: &str = "/var/lib/clonepool-kube/run/dockershim.sock";

fn cri_socket() -> PathBuf {
    std::env::var_os("CLONEPOOL_CRI_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CRI_SOCKET))
}

fn image() -> String {
    std::env::var("CLONEPOOL_IMAGE").unwrap_or_else(|_| {
        panic!(
            "CLONEPOOL_IMAGE is not set: build the workload image with images/wordpress/build \
             and export its reference (scripts/test does both)"
        )
    })
}

fn kubeconfig() -> PathBuf {
    std::env::var_os("CLONEPOOL_KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBECONFIG))
}

fn random_hex(len: usize) -> String {
    (0..len)
        .map(|_| char::from_digit(rand::random_range(0..16), 16).unwrap())
        .collect()
}

fn new_pod_id() -> PodId {
    format!("cp-{}", random_hex(12)).parse().unwrap()
}

async fn client_from(path: &std::path::Path) -> Result<kube::Client, String> {
    let config = kube::config::Kubeconfig::read_from(path).map_err(|e| e.to_string())?;
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// The cluster under test: a client and its (single) node; `None` (the test passes, saying
/// why) when no cluster answers and none is required.
async fn cluster() -> Option<(kube::Client, NodeName)> {
    let path = kubeconfig();
    let found = async {
        let client = client_from(&path).await?;
        let nodes = Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let node = nodes
            .items
            .first()
            .and_then(|n| n.metadata.name.clone())
            .ok_or("the cluster has no node")?;
        Ok::<_, String>((client, node.parse().map_err(|e| format!("{e}"))?))
    };
    match tokio::time::timeout(Duration::from_secs(10), found).await {
        Ok(Ok(found)) => Some(found),
        Ok(Err(why)) => skip(&path, &why),
        Err(_) => skip(&path, "the API server did not answer within 10 s"),
    }
}

fn skip<T>(path: &std::path::Path, why: &str) -> Option<T> {
    if std::env::var_os("CLONEPOOL_KUBE_REQUIRED").is_some() {
        panic!(
            "no Kubernetes cluster at {} ({why}) but CLONEPOOL_KUBE_REQUIRED is set: run scripts/kube-up",
            path.display()
        );
    }
    eprintln!(
        "SKIPPED: no Kubernetes cluster at {} ({why}); scripts/kube-up brings one up",
        path.display()
    );
    None
}

/// A namespace of its own, deleted (with its Pods) when dropped.
struct TestNamespace {
    name: String,
}

impl TestNamespace {
    async fn create(client: &kube::Client) -> Self {
        let name = format!("clonepool-test-{}", random_hex(8));
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(
                    "clonepool.test".to_string(),
                    "true".to_string(),
                )])),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create the test namespace");
        // The namespace's default service account appears shortly after; Pods need it.
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &name);
        let deadline = Instant::now() + Duration::from_secs(30);
        while accounts.get_opt("default").await.unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "no default service account in {name}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let Ok(client) = client_from(&kubeconfig()).await else {
                    return;
                };
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                };
                if let Err(err) = Api::<Namespace>::all(client).delete(&name, &params).await {
                    eprintln!("cleanup of namespace {name} failed: {err}");
                }
            })
        });
        let _ = cleanup.join();
    }
}

struct Setup {
    client: kube::Client,
    node: NodeName,
    ns: TestNamespace,
    docker: Docker,
}

impl Setup {
    async fn new() -> Option<Self> {
        let (client, node) = cluster().await?;
        let ns = TestNamespace::create(&client).await;
        let docker = Docker::connect_with_defaults()
            .unwrap()
            .negotiate_version()
            .await
            .expect("the node's Docker Engine answers");
        Some(Self {
            client,
            node,
            ns,
            docker,
        })
    }

    fn runtime(&self, exec_path: ExecPath) -> KubeRuntime {
        self.runtime_in(&self.ns.name, exec_path)
    }

    /// A runtime on `exec_path`; on [`ExecPath::Cri`] without any Docker client (and without
    /// its CRI client: see [`Self::connected_in`]).
    fn runtime_in(&self, namespace: &str, exec_path: ExecPath) -> KubeRuntime {
        KubeRuntime::new(
            self.client.clone(),
            (exec_path != ExecPath::Cri).then(|| self.docker.clone()),
            KubeSettings {
                namespace: namespace.to_string(),
                node: self.node.clone(),
                exec_path,
                requests_percent: 10,
                docker_socket: None,
                cri_socket: Some(cri_socket()),
            },
        )
    }

    /// A runtime on `exec_path`, connected to the CRI runtime socket (and to no Docker Engine)
    /// when that is the path.
    async fn connected(&self, exec_path: ExecPath) -> KubeRuntime {
        self.connected_in(&self.ns.name, exec_path).await
    }

    async fn connected_in(&self, namespace: &str, exec_path: ExecPath) -> KubeRuntime {
        let rt = self.runtime_in(namespace, exec_path);
        if exec_path != ExecPath::Cri {
            return rt;
        }
        let cri = CriClient::connect(&cri_socket())
            .await
            .unwrap_or_else(|e| panic!("the kubelet's CRI runtime socket answers: {e}"));
        rt.with_cri(cri)
    }

    fn spec(&self, pod: &PodId) -> PodSpec {
        let limits = ContainerLimits {
            cpu_millis: 1000,
            memory_bytes: 512 << 20,
        };
        PodSpec {
            pod_id: pod.clone(),
            node: self.node.clone(),
            image: image(),
            network: "unused".to_string(),
            db_limits: limits.clone(),
            web_limits: limits,
            labels: BTreeMap::from([("clonepool.test".to_string(), "true".to_string())]),
        }
    }

    async fn running_pod(&self, rt: &KubeRuntime) -> PodInfo {
        let pod = new_pod_id();
        rt.create_pod(&self.spec(&pod)).await.expect("create pod");
        rt.start_pod(&pod).await.expect("start pod")
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    /// Docker ids of the pod's containers (any state), by container name.
    async fn docker_ids(&self, pod: &PodId) -> Vec<(String, String, bool)> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![
                    format!("io.kubernetes.pod.namespace={}", self.ns.name),
                    format!("io.kubernetes.pod.name={pod}"),
                ],
            )])),
            ..Default::default()
        };
        self.docker
            .list_containers(Some(options))
            .await
            .unwrap()
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                let name = labels.get("io.kubernetes.container.name")?.clone();
                let running = c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING);
                Some((name, c.id?, running))
            })
            .filter(|(name, _, _)| name != "POD")
            .collect()
    }
}

fn assert_ok(what: &str, output: &ExecOutput) {
    assert!(
        output.success(),
        "{what} exited {}: stdout {:?} stderr {:?}",
        output.exit_code,
        output.stdout_str(),
        output.stderr_str()
    );
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn a_pod_comes_up_through_the_api_server_on_the_node_and_wordpress_answers_at_its_pod_ip() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let rt = setup.runtime(ExecPath::Runtime);
    let info = setup.running_pod(&rt).await;
    let pod = &info.pod_id;
    assert!(info.is_running(), "{info:?}");
    assert_eq!(info.node, setup.node);

    // A real Pod, pinned to the node, no owner, expected containers recorded.
    let object = setup.pods().get(pod.as_str()).await.unwrap();
    let spec = object.spec.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some(setup.node.as_str()));
    assert!(object.metadata.owner_references.is_none());
    let annotations = object.metadata.annotations.clone().unwrap_or_default();
    for role in ["db", "web"] {
        let expected = &annotations[&format!("{ANNOTATION_CONTAINER}{role}")];
        let in_docker = setup.docker_ids(pod).await;
        assert!(
            in_docker
                .iter()
                .any(|(name, id, running)| name == role && id == expected && *running),
            "{role}: expected {expected} among {in_docker:?}"
        );
    }
    let ip = info.ip.expect("a running pod has an address");
    let pod_ip = object.status.as_ref().unwrap().pod_ip.clone().unwrap();
    assert_eq!(ip.to_string(), pod_ip);

    let site_url = format!("http://{ip}");
    let db_password = format!("Pw-{}", random_hex(20));
    let title = format!("Clonepool kube test {}", random_hex(6));
    let setup_db = rt
        .exec(
            pod,
            ContainerRole::Db,
            ExecRequest::new(["clonepool-db-setup"])
                .stdin(format!("{db_password}\n"))
                .timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_ok("clonepool-db-setup", &setup_db);
    let config = rt
        .exec(
            pod,
            ContainerRole::Web,
            ExecRequest::new(["clonepool-wp-config"])
                .stdin(format!("db_password={db_password}\nsite_url={site_url}\n")),
        )
        .await
        .unwrap();
    assert_ok("clonepool-wp-config", &config);
    let install = rt
        .exec(
            pod,
            ContainerRole::Web,
            ExecRequest::new(["clonepool-wp-install"])
                .stdin(format!(
                    "site_url={site_url}\ntitle={title}\nadmin_user=admin\n\
                     admin_password=Pw-{}\nadmin_email=admin@example.invalid\n",
                    random_hex(20)
                ))
                .timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_ok("clonepool-wp-install", &install);

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = match http.get(format!("{site_url}/")).send().await {
            Ok(r) => Some((r.status().as_u16(), r.text().await.unwrap_or_default())),
            Err(e) => Some((0, e.to_string())),
        };
        if let Some((200, body)) = &answer {
            if body.contains(&title) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "GET {site_url}/ never answered 200 with the title: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn exec_through_the_runtime_the_api_server_and_the_cri_gives_the_same_answers() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let counter = ExecCounter::default();
    let direct = setup
        .runtime(ExecPath::Runtime)
        .with_exec_counter(counter.clone());
    let via_api = setup
        .runtime(ExecPath::ApiServer)
        .with_exec_counter(counter.clone());
    let via_cri = setup
        .connected_in(&setup.ns.name, ExecPath::Cri)
        .await
        .with_exec_counter(counter.clone());
    let info = setup.running_pod(&direct).await;
    let pod = &info.pod_id;

    let script = ExecRequest::new([
        "sh",
        "-c",
        "read line; echo \"out:$line\"; echo err >&2; exit 3",
    ])
    .stdin("hello\n");
    let mut timings = Vec::new();
    for (name, rt) in [
        ("runtime", &direct),
        ("apiserver", &via_api),
        ("cri", &via_cri),
    ] {
        let output = rt
            .exec(pod, ContainerRole::Web, script.clone())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(output.exit_code, 3, "{name}");
        assert_eq!(output.stdout_str(), "out:hello\n", "{name}");
        assert_eq!(output.stderr_str(), "err\n", "{name}");

        // Without input (the CRI's ExecSync): output, a failing exit code and its stderr.
        let failing = rt
            .exec(
                pod,
                ContainerRole::Web,
                ExecRequest::new(["sh", "-c", "echo partial; ls /no/such/dir"]),
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(failing.exit_code, 2, "{name}");
        assert_eq!(failing.stdout_str(), "partial\n", "{name}");
        assert!(
            failing.stderr_str().contains("/no/such/dir"),
            "{name}: {:?}",
            failing.stderr_str()
        );
        // Working directory and environment reach the command.
        let mut in_dir =
            ExecRequest::new(["sh", "-c", "echo \"$PWD $GREETING\""]).env("GREETING=hi");
        in_dir.workdir = Some("/etc".to_string());
        let in_dir = rt.exec(pod, ContainerRole::Db, in_dir).await.unwrap();
        assert_eq!(in_dir.stdout_str(), "/etc hi\n", "{name}");

        // Bigger than the streams' buffers, both ways.
        let big = "x".repeat(300_000);
        let echoed = rt
            .exec(
                pod,
                ContainerRole::Db,
                ExecRequest::new(["cat"]).stdin(big.clone()),
            )
            .await
            .unwrap();
        assert_ok(name, &echoed);
        assert_eq!(echoed.stdout.len(), big.len(), "{name}");

        let started = Instant::now();
        let err = rt
            .exec(
                pod,
                ContainerRole::Web,
                ExecRequest::new(["sleep", "30"]).timeout(Duration::from_secs(1)),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, RuntimeError::ExecTimeout { .. }),
            "{name}: {err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{name}");
        // With input too, and the sleep is gone afterwards.
        let started = Instant::now();
        let err = rt
            .exec(
                pod,
                ContainerRole::Web,
                ExecRequest::new(["sh", "-c", "cat >/dev/null; exec sleep 31"])
                    .stdin("x")
                    .timeout(Duration::from_secs(1)),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, RuntimeError::ExecTimeout { .. }),
            "{name}: {err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{name}");
        let left = direct
            .exec(
                pod,
                ContainerRole::Web,
                ExecRequest::new(["sh", "-c", "ps -eo args | grep -c '^sleep 3[01]' || true"]),
            )
            .await
            .unwrap();
        assert_eq!(
            left.stdout_str().trim(),
            "0",
            "{name}: a sleep outlived its timeout"
        );

        let mut samples = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            assert_ok(
                name,
                &rt.exec(pod, ContainerRole::Db, ExecRequest::new(["true"]))
                    .await
                    .unwrap(),
            );
            samples.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let mut with_input = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            assert_ok(
                name,
                &rt.exec(pod, ContainerRole::Db, ExecRequest::new(["cat"]).stdin("x"))
                    .await
                    .unwrap(),
            );
            with_input.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        with_input.sort_by(|a, b| a.partial_cmp(b).unwrap());
        timings.push(format!(
            "{name}: exec `true` median {:.1} ms, `cat` with input median {:.1} ms",
            samples[5], with_input[5]
        ));
    }
    eprintln!("{}", timings.join("; "));
    // The CRI path staged its input in private files, removed before the commands ran.
    for role in [ContainerRole::Db, ContainerRole::Web] {
        let staged = direct
            .exec(
                pod,
                role,
                ExecRequest::new([
                    "sh",
                    "-c",
                    "ls -A /run /dev/shm /tmp | grep -c clonepool-stdin || true",
                ]),
            )
            .await
            .unwrap();
        assert_eq!(
            staged.stdout_str().trim(),
            "0",
            "{role}: input files left behind"
        );
    }
    // 26 commands per path; the checks for leftovers ran through the runtime.
    assert_eq!(counter.get(ExecPath::Runtime), 26 + 3 + 2);
    assert_eq!(counter.get(ExecPath::ApiServer), 26);
    assert_eq!(counter.get(ExecPath::Cri), 26);
}

fn agent_config(
    data_dir: &std::path::Path,
    node: &NodeName,
    ns: &str,
    path: ExecPath,
) -> AgentConfig {
    let image = image();
    let socket = cri_socket();
    let args = [
        "clonepool-agent",
        "--node",
        node.as_str(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--image",
        &image,
        "--backend",
        "kubernetes",
        "--kube-namespace",
        ns,
        "--exec-path",
        path.as_str(),
        "--cri-socket",
        socket.to_str().unwrap(),
        "--api-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--reconcile-interval-secs",
        "2",
        "--warm-target",
        "1",
        "--max-pods",
        "1",
        "--pod-label",
        "clonepool.test=true",
    ];
    AgentConfig::from_raw(RawConfig::try_parse_from(args).unwrap()).unwrap()
}

async fn wait_until<F: FnMut() -> bool>(what: &str, timeout: Duration, mut ready: F) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The agent's pool on one warm Pod, claimed and released `resets` times through `path`;
/// answers the release → WARM times (ms). Every command of the pod (provisioning, claims,
/// resets and their verification) must have gone through `path` and no other.
async fn claim_release_cycles(setup: &Setup, path: ExecPath, resets: usize) -> Vec<f64> {
    let ns = TestNamespace::create(&setup.client).await;
    let counter = ExecCounter::default();
    let rt = setup
        .connected_in(&ns.name, path)
        .await
        .with_exec_counter(counter.clone());
    let dir = tempfile::tempdir().unwrap();
    let agent = app::start(
        agent_config(dir.path(), &setup.node, &ns.name, path),
        Arc::new(rt),
        Arc::new(HttpSiteProbe::new()),
    )
    .await
    .expect("agent starts");
    let warm = |agent: &app::RunningAgent| agent.pool.capacity().unwrap().warm == 1;
    wait_until(
        &format!("{path}: a WARM pod"),
        Duration::from_secs(240),
        || warm(&agent),
    )
    .await;
    let mut times = Vec::new();
    for i in 0..resets {
        let clone = format!("{path}-cycle-{i}");
        let claimed = agent
            .pool
            .claim(&ClaimRequest {
                clone_id: clone.parse().unwrap(),
                clone_host: format!("{clone}.localhost:8080"),
                clone_scheme: Default::default(),
                allow_cold: false,
            })
            .await
            .unwrap_or_else(|e| panic!("{path}: claim {i}: {e}"));
        let state = agent.pool.pod(&claimed.pod_id).unwrap().state;
        assert_eq!(state, PodState::Assigned, "{path}");
        let released = Instant::now();
        agent.pool.release(&clone.parse().unwrap()).await.unwrap();
        let pod = claimed.pod_id.clone();
        let deadline = released + Duration::from_secs(120);
        while !agent
            .pool
            .pod(&pod)
            .is_ok_and(|p| p.state == PodState::Warm)
        {
            assert!(
                Instant::now() < deadline,
                "{path}: pod {pod} not WARM again within 120 s after reset {i}: {:?}; events {:?}",
                agent.pool.pod(&pod),
                agent.pool.events(20)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        times.push(released.elapsed().as_secs_f64() * 1000.0);
    }
    let events = agent.pool.events(1000).unwrap();
    let resets_ok = events
        .iter()
        .filter(|e| e.kind == "warm" && e.message.starts_with("reset"))
        .count();
    assert_eq!(
        resets_ok, resets,
        "{path}: every reset passed verification: {events:?}"
    );
    let mine = counter.get(path);
    assert!(mine > 0, "{path}: commands counted");
    for other in ExecPath::ALL.into_iter().filter(|p| *p != path) {
        assert_eq!(
            counter.get(other),
            0,
            "{path}: nothing went through {other}"
        );
    }
    eprintln!("{path}: {mine} commands, resets {times:?} ms");
    agent.shutdown(Duration::from_secs(30)).await;
    times
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn a_warm_pod_is_claimed_released_and_reset_to_warm_through_each_exec_path() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let resets: usize = std::env::var("CLONEPOOL_KUBE_RESETS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let mut medians = Vec::new();
    for path in [ExecPath::Cri, ExecPath::Runtime, ExecPath::ApiServer] {
        let times = claim_release_cycles(&setup, path, resets).await;
        medians.push(format!("{path} {:.0} ms", median(&times)));
    }
    eprintln!(
        "reset (release → WARM) medians over {resets} resets: {}",
        medians.join(", ")
    );
}

/// A tar of `entries` (path, uid, mode, content; a path ending in `/` is a directory).
fn tar_of(entries: &[(&str, u64, u32, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, uid, mode, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(*uid);
        header.set_gid(*uid);
        header.set_mode(*mode);
        header.set_mtime(1_700_000_000);
        if path.ends_with('/') {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            header.set_cksum();
            builder.append_data(&mut header, path, &[][..]).unwrap();
        } else {
            header.set_size(content.len() as u64);
            header.set_cksum();
            builder.append_data(&mut header, path, *content).unwrap();
        }
    }
    builder.into_inner().unwrap()
}

/// The entries of a tar: (path, uid, mode, content).
fn entries_of(tar_bytes: &[u8]) -> Vec<(String, u64, u32, Vec<u8>)> {
    let mut archive = tar::Archive::new(tar_bytes);
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let uid = entry.header().uid().unwrap();
            let mode = entry.header().mode().unwrap() & 0o7777;
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            (path, uid, mode, content)
        })
        .collect()
}

/// What `rt` makes of an archive put into a pod and taken out again, checked as a user would:
/// the files land with the archive's owners and modes, come back under the path's last
/// component, big archives pass whole, missing paths are `PathNotFound`. Answers the entries
/// of the directory taken back.
async fn archive_round_trip(rt: &KubeRuntime, pod: &PodId) -> Vec<(String, u64, u32, Vec<u8>)> {
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    rt.put_archive(
        pod,
        ContainerRole::Web,
        "/tmp",
        archive_from_bytes(tar_of(&[
            ("upload/", 33, 0o750, b""),
            ("upload/blob.bin", 33, 0o640, &content),
            ("upload/sub/", 0, 0o755, b""),
            ("upload/sub/note.txt", 0, 0o600, b"a note\n"),
        ])),
    )
    .await
    .unwrap();
    let listed = rt
        .exec(
            pod,
            ContainerRole::Web,
            ExecRequest::new([
                "stat",
                "-c",
                "%n %u %a %s",
                "/tmp/upload/blob.bin",
                "/tmp/upload/sub/note.txt",
            ]),
        )
        .await
        .unwrap();
    assert_ok("stat", &listed);
    let dir_mode = rt
        .exec(
            pod,
            ContainerRole::Web,
            ExecRequest::new(["stat", "-c", "%u %a", "/tmp/upload"]),
        )
        .await
        .unwrap();
    assert_eq!(
        dir_mode.stdout_str(),
        "33 750\n",
        "the directory's owner and mode"
    );
    assert_eq!(
        listed.stdout_str(),
        "/tmp/upload/blob.bin 33 640 200000\n/tmp/upload/sub/note.txt 0 600 7\n",
        "owners and modes from the archive"
    );

    // One file: the archive's only entry is its name.
    let back = collect_archive(
        rt.get_archive(pod, ContainerRole::Web, "/tmp/upload/blob.bin")
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let file = entries_of(&back);
    assert_eq!(file.len(), 1);
    assert_eq!(file[0].0, "blob.bin");
    assert_eq!((file[0].1, file[0].2), (33, 0o640));
    assert_eq!(file[0].3, content);

    // A directory: its name on top, everything under it.
    let dir = entries_of(
        &collect_archive(
            rt.get_archive(pod, ContainerRole::Web, "/tmp/upload")
                .await
                .unwrap(),
        )
        .await
        .unwrap(),
    );
    let mut names: Vec<&str> = dir.iter().map(|e| e.0.trim_end_matches('/')).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "upload",
            "upload/blob.bin",
            "upload/sub",
            "upload/sub/note.txt"
        ]
    );

    // Tens of megabytes, streamed both ways (about 24 MB of incompressible bytes).
    let mut big = vec![0u8; 24 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in big.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let big_tar = tar_of(&[("big.bin", 0, 0o644, &big)]);
    // In uneven pieces, as a file is read.
    let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = big_tar
        .chunks(100_003)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let started = Instant::now();
    rt.put_archive(
        pod,
        ContainerRole::Db,
        "/tmp",
        Box::pin(futures_util::stream::iter(pieces)),
    )
    .await
    .unwrap();
    let put = started.elapsed();
    let started = Instant::now();
    let back = collect_archive(
        rt.get_archive(pod, ContainerRole::Db, "/tmp/big.bin")
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    eprintln!(
        "{}: 24 MiB archive put in {put:?}, taken back in {:?}",
        rt.settings().exec_path,
        started.elapsed()
    );
    let big_back = entries_of(&back);
    assert_eq!(big_back.len(), 1);
    assert!(
        big_back[0].3 == big,
        "the big file comes back byte for byte"
    );

    // A source that fails midway fails the put, saying so.
    let failing: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
        Ok(bytes::Bytes::copy_from_slice(&big_tar[..50_000])),
        Err(std::io::Error::other("the spool broke")),
    ];
    let err = rt
        .put_archive(
            pod,
            ContainerRole::Web,
            "/tmp",
            Box::pin(futures_util::stream::iter(failing)),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("the spool broke"), "{err}");

    let missing = rt
        .get_archive(pod, ContainerRole::Web, "/nonexistent/path")
        .await
        .err()
        .expect("a missing path fails");
    assert!(
        matches!(missing, RuntimeError::PathNotFound { .. }),
        "{missing}"
    );
    let missing = rt
        .put_archive(
            pod,
            ContainerRole::Web,
            "/nonexistent/dir",
            archive_from_bytes(tar_of(&[("x.txt", 0, 0o644, b"x")])),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(missing, RuntimeError::PathNotFound { .. }),
        "{missing}"
    );
    dir
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn an_archive_round_trips_through_the_nodes_runtime() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let rt = setup.runtime(ExecPath::Runtime);
    let info = setup.running_pod(&rt).await;
    let through_docker = archive_round_trip(&rt, &info.pod_id).await;
    // The same through the CRI alone (the runtime has no Docker client), on a pod it made.
    let cri = setup.connected(ExecPath::Cri).await;
    let info = setup.running_pod(&cri).await;
    let through_cri = archive_round_trip(&cri, &info.pod_id).await;
    let sorted = |mut v: Vec<(String, u64, u32, Vec<u8>)>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(through_cri),
        sorted(through_docker),
        "the same archive comes back either way"
    );
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn recreating_a_container_gets_a_fresh_one_from_the_kubelet_and_no_death_is_reported() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    for path in [ExecPath::Runtime, ExecPath::Cri] {
        let rt = setup.connected(path).await;
        recreate_and_stop(&setup, &rt).await;
    }
}

/// Recreates the web container of a fresh pod through `rt`, then stops it: the kubelet
/// replaces it both times.
async fn recreate_and_stop(setup: &Setup, rt: &KubeRuntime) {
    let path = rt.settings().exec_path;
    rt.ping().await.unwrap();
    let info = setup.running_pod(rt).await;
    let pod = info.pod_id.clone();
    assert_ok(
        "marker",
        &rt.exec(
            &pod,
            ContainerRole::Web,
            ExecRequest::new(["touch", "/tmp/left-by-clone"]),
        )
        .await
        .unwrap(),
    );
    let old = info.container(ContainerRole::Web).unwrap().id.clone();
    let started = Instant::now();
    rt.recreate_container(&pod, ContainerRole::Web)
        .await
        .unwrap();
    eprintln!(
        "{path}: recreate web through the kubelet: {:?}",
        started.elapsed()
    );
    let after = rt.inspect_pod(&pod).await.unwrap();
    assert!(after.is_running(), "{after:?}");
    let new = after.container(ContainerRole::Web).unwrap().id.clone();
    assert_ne!(new, old);
    assert_eq!(
        after.container(ContainerRole::Db).unwrap().id,
        info.container(ContainerRole::Db).unwrap().id,
        "db untouched"
    );
    assert_eq!(after.ip, info.ip, "the Pod keeps its address");
    let gone = rt
        .exec(
            &pod,
            ContainerRole::Web,
            ExecRequest::new(["test", "-e", "/tmp/left-by-clone"]),
        )
        .await
        .unwrap();
    assert_eq!(gone.exit_code, 1, "the new container starts from the image");
    // Events during the replacement are the agent's own doing (its pool ignores them while it
    // resets); afterwards the pod must read as whole, also after the kubelet's later reports.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // And the pod reads as whole, now and after the kubelet's next status report.
    let whole = rt.inspect_pod(&pod).await.unwrap();
    assert!(
        whole.is_running(),
        "{path}: {whole:?}; on the node: {:?}",
        setup.docker_ids(&pod).await
    );
    let in_docker = setup.docker_ids(&pod).await;
    assert!(
        in_docker
            .iter()
            .any(|(name, id, running)| name == "web" && *id == new && *running),
        "{path}: the new web container runs on the node: {in_docker:?}"
    );
    assert!(
        !in_docker.iter().any(|(_, id, _)| *id == old),
        "{path}: the old one is removed: {in_docker:?}"
    );

    // A stopped container: gone from the pod (the kubelet starts another one, which is not
    // the one the agent expects).
    rt.stop_container(&pod, ContainerRole::Db, Duration::from_secs(2))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stopped = setup
            .docker_ids(&pod)
            .await
            .iter()
            .any(|(name, id, running)| {
                name == "db" && *id == info.container(ContainerRole::Db).unwrap().id && !*running
            });
        if stopped {
            break;
        }
        assert!(Instant::now() < deadline, "{path}: db stopped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Once the kubelet noticed (its restart runs under an id the agent did not record).
    while rt.inspect_pod(&pod).await.unwrap().is_running() {
        assert!(
            Instant::now() < deadline,
            "{path}: the pod reads as not running"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn a_container_the_kubelet_restarts_unasked_is_reported_dead_and_not_running() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let rt = setup.runtime(ExecPath::Runtime);
    let mut events = rt.events(&setup.node).await.unwrap();
    let info = setup.running_pod(&rt).await;
    let pod = info.pod_id.clone();
    let web = info.container(ContainerRole::Web).unwrap().id.clone();
    let killed_at = Instant::now();
    setup
        .docker
        .kill_container(
            &web,
            Some(KillContainerOptions {
                signal: "SIGKILL".to_string(),
            }),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let died = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = events.next().await {
            let event = event.expect("event");
            seen.push(event.clone());
            if event.pod_id == pod && event.role == ContainerRole::Web {
                if let RuntimeEventKind::Died { exit_code } = event.kind {
                    return exit_code;
                }
            }
        }
        panic!("the event stream ended");
    })
    .await
    .unwrap_or_else(|_| panic!("no Died event within 30 s; saw {seen:?}"));
    eprintln!(
        "a killed container reported through the API server after {:?}",
        killed_at.elapsed()
    );
    assert_eq!(died, Some(137));
    // Whether or not the kubelet restarted it meanwhile, the pod is not whole any more.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let after = rt.inspect_pod(&pod).await.unwrap();
        assert!(!after.is_running(), "{after:?}");
        let restarted = after
            .container(ContainerRole::Web)
            .is_some_and(|c| !c.id.is_empty() && c.id != web);
        if restarted || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let listed = rt.list_pods(&setup.node).await.unwrap();
    assert!(!listed
        .iter()
        .find(|p| p.pod_id == pod)
        .unwrap()
        .is_running());
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn only_pods_of_the_own_node_are_listed_inspected_or_removed() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let rt = setup.runtime(ExecPath::Runtime);
    let mine = setup.running_pod(&rt).await;
    // A Pod for another node (it never runs: no such node), made with the admin's rights.
    let foreign_id = new_pod_id();
    let mut foreign = clonepool_agent::runtime::kube::pod_manifest(
        &PodSpec {
            node: "elsewhere".parse().unwrap(),
            ..setup.spec(&foreign_id)
        },
        rt.settings(),
    );
    foreign.metadata.namespace = Some(setup.ns.name.clone());
    setup
        .pods()
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();

    let listed: Vec<PodId> = rt
        .list_pods(&setup.node)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.pod_id)
        .collect();
    assert_eq!(listed, std::slice::from_ref(&mine.pod_id));
    assert!(rt
        .list_pods(&"elsewhere".parse().unwrap())
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        rt.inspect_pod(&foreign_id).await,
        Err(RuntimeError::PodNotFound(_))
    ));
    assert!(matches!(
        rt.remove_pod(&foreign_id).await,
        Err(RuntimeError::PodNotFound(_))
    ));
    assert!(
        setup
            .pods()
            .get_opt(foreign_id.as_str())
            .await
            .unwrap()
            .is_some(),
        "another node's Pod is left alone"
    );
    let err = rt
        .create_pod(&PodSpec {
            node: "elsewhere".parse().unwrap(),
            ..setup.spec(&new_pod_id())
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("own node"), "{err}");

    // Removing the own Pod deletes it and the kubelet's containers.
    let started = Instant::now();
    rt.remove_pod(&mine.pod_id).await.unwrap();
    eprintln!("remove pod through the API server: {:?}", started.elapsed());
    assert!(setup
        .pods()
        .get_opt(mine.pod_id.as_str())
        .await
        .unwrap()
        .is_none());
    let deadline = Instant::now() + Duration::from_secs(30);
    while setup
        .docker_ids(&mine.pod_id)
        .await
        .iter()
        .any(|(_, _, running)| *running)
    {
        assert!(Instant::now() < deadline, "containers still run");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(matches!(
        rt.remove_pod(&mine.pod_id).await,
        Err(RuntimeError::PodNotFound(_))
    ));
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn the_cri_path_connects_and_runs_pods_with_no_docker_engine_to_reach() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let settings = |exec_path| KubeSettings {
        namespace: setup.ns.name.clone(),
        node: setup.node.clone(),
        exec_path,
        requests_percent: 10,
        // Nothing answers here: a path that used the Docker Engine would fail.
        docker_socket: Some("unix:///nonexistent/docker.sock".to_string()),
        cri_socket: Some(cri_socket()),
    };
    let err = KubeRuntime::connect_with(setup.client.clone(), settings(ExecPath::Runtime))
        .await
        .expect_err("the runtime path needs the Docker Engine");
    assert!(err.to_string().contains("nonexistent"), "{err}");
    let rt = KubeRuntime::connect_with(setup.client.clone(), settings(ExecPath::Cri))
        .await
        .unwrap_or_else(|e| panic!("the cri path connects without Docker: {e}"));
    rt.ping().await.unwrap();
    assert!(rt.image_present(&image()).await.unwrap());
    let info = setup.running_pod(&rt).await;
    let pod = &info.pod_id;
    let out = rt
        .exec(
            pod,
            ContainerRole::Db,
            ExecRequest::new(["sh", "-c", "cat; echo \" $(id -u)\""]).stdin("hello"),
        )
        .await
        .unwrap();
    assert_ok("exec with input", &out);
    assert_eq!(out.stdout_str(), "hello 0\n");
    rt.stop_pod(pod, Duration::from_secs(2)).await.unwrap();
    rt.remove_pod(pod).await.unwrap();
    assert!(setup.pods().get_opt(pod.as_str()).await.unwrap().is_none());
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn a_missing_image_is_refused_before_any_pod_is_made() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    for path in [ExecPath::Runtime, ExecPath::Cri] {
        let rt = setup.connected(path).await;
        assert!(rt.image_present(&image()).await.unwrap(), "{path}");
        let pod = new_pod_id();
        let err = rt
            .create_pod(&PodSpec {
                image: "clonepool/does-not-exist:nope".to_string(),
                ..setup.spec(&pod)
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, RuntimeError::ImageMissing(_)),
            "{path}: {err}"
        );
        assert!(setup.pods().get_opt(pod.as_str()).await.unwrap().is_none());
    }
}
