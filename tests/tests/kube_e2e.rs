//! Kubernetes mode end to end, on the real single-node cluster of `scripts/kube-up` (API server,
//! etcd, controller-manager, scheduler, kubelet with the dockershim CRI runtime in front of this
//! machine's Docker Engine):
//! - the chart's agents: `helm install`, the agent DaemonSet becomes ready under its own
//!   ServiceAccount (so a missing RBAC rule fails here), warm Pods appear through the API server
//!   on the node, a claim through the agent API serves WordPress from a warm Pod, a release
//!   resets it through the node's Docker Engine (metric `path="runtime"`) back to WARM; the same
//!   resets through the API server's exec and through the kubelet's CRI socket after `helm
//!   upgrade`s (the three medians printed for docs/benchmarks.md); a deleted agent Pod's
//!   successor adopts the same Pods;
//! - the chart's coordinator, in its Pod, reached with `kubectl port-forward`: warm clones,
//!   a cold Deployment when the pool is exhausted, TTL expiry removing what each clone made;
//! - the chart itself: lint, renderings validated by the API server, RBAC from the rules file.
//!
//! Needs: the cluster (admin kubeconfig /var/lib/clonepool-kube/admin.kubeconfig or
//! `CLONEPOOL_KUBECONFIG`; kubectl and helm in /var/cache/clonepool/kube/bin or
//! `CLONEPOOL_KUBE_BIN`), the workload image (`CLONEPOOL_IMAGE`) and the clonepool image
//! (`CLONEPOOL_KUBE_IMAGE`, else built here with images/clonepool/build). Without a cluster the
//! tests say so and pass, unless `CLONEPOOL_KUBE_REQUIRED` is set. The agent and the test
//! reach Pod IPs and ClusterIPs directly (this machine routes the CNI bridge; kube-proxy runs);
//! no Ingress controller runs, so clones are checked through their Service or Pod with the
//! clone's Host header. `CLONEPOOL_KUBE_RESETS` sets the resets measured per exec path
//! (default 5), `CLONEPOOL_KUBE_CLONES` the warm clones through the coordinator (default 3),
//! `CLONEPOOL_KUBE_RESET_METHOD` the agent's reset method (default the chart's, `sql`).

use clonepool_common::agent_api::{Capacity, ClaimResponse};
use clonepool_e2e::docker::docker;
use clonepool_e2e::kube_support::{client_to, eventually};
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{Api, ListParams};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const DEFAULT_KUBECONFIG: &str = "/var/lib/clonepool-kube/admin.kubeconfig";
const DEFAULT_KUBE_BIN: &str = "/var/cache/clonepool/kube/bin";
const FILL: Duration = Duration::from_secs(240);

/// One release with WordPress Pods at a time: two would fight over the 2 cores and the reset
/// figures would measure the contention.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The clones' Ingress TLS Secret in the in-cluster coordinator test (named, not served: no
/// ingress controller runs here).
const TLS_SECRET: &str = "clones-wildcard-tls";

fn kubeconfig() -> PathBuf {
    std::env::var_os("CLONEPOOL_KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBECONFIG))
}

fn kube_bin(tool: &str) -> PathBuf {
    std::env::var_os("CLONEPOOL_KUBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBE_BIN))
        .join(tool)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn workload_image() -> String {
    std::env::var("CLONEPOOL_IMAGE").unwrap_or_else(|_| {
        panic!(
            "CLONEPOOL_IMAGE is not set: build the workload image with images/wordpress/build \
             and export its reference (scripts/test does both)"
        )
    })
}

/// The clonepool image (agent and coordinator): `CLONEPOOL_KUBE_IMAGE`, or built (or reused)
/// by images/clonepool/build.
fn clonepool_image() -> String {
    if let Ok(image) = std::env::var("CLONEPOOL_KUBE_IMAGE") {
        return image;
    }
    let out = Command::new(repo().join("images/clonepool/build"))
        .output()
        .expect("run images/clonepool/build");
    assert!(
        out.status.success(),
        "images/clonepool/build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("images/clonepool/build prints the image reference last")
        .trim()
        .to_string()
}

/// Runs a tool (helm, kubectl) with the cluster's kubeconfig; panics with its output on failure.
fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(kube_bin(tool))
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn client() -> Result<kube::Client, String> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig()).map_err(|e| e.to_string())?;
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// The cluster's client and node, or `None` (saying why) when no cluster answers and none is
/// required.
async fn cluster() -> Option<(kube::Client, String)> {
    let found = async {
        let client = client().await?;
        let nodes = Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let node = nodes
            .items
            .first()
            .and_then(|n| n.metadata.name.clone())
            .ok_or("the cluster has no node")?;
        Ok::<_, String>((client, node))
    };
    let why = match tokio::time::timeout(Duration::from_secs(10), found).await {
        Ok(Ok(found)) if kube_bin("helm").exists() => return Some(found),
        Ok(Ok(_)) => format!("no helm at {}", kube_bin("helm").display()),
        Ok(Err(why)) => why,
        Err(_) => "the API server did not answer within 10 s".to_string(),
    };
    if std::env::var_os("CLONEPOOL_KUBE_REQUIRED").is_some() {
        panic!(
            "no Kubernetes cluster at {} ({why}) but CLONEPOOL_KUBE_REQUIRED is set: run scripts/kube-up",
            kubeconfig().display()
        );
    }
    eprintln!(
        "SKIPPED: no Kubernetes cluster at {} ({why}); scripts/kube-up brings one up",
        kubeconfig().display()
    );
    None
}

/// The release and its namespaces, uninstalled and deleted when dropped; the agent's hostPath
/// data dir removed.
struct Release {
    name: String,
    namespace: String,
    clones: String,
    data_dir: PathBuf,
}

impl Drop for Release {
    fn drop(&mut self) {
        if std::env::var_os("CLONEPOOL_KUBE_KEEP").is_some() {
            eprintln!(
                "CLONEPOOL_KUBE_KEEP: leaving release {} in {}",
                self.name, self.namespace
            );
            return;
        }
        let kubectl = |args: &[&str]| {
            let _ = Command::new(kube_bin("kubectl"))
                .args(args)
                .env("KUBECONFIG", kubeconfig())
                .output();
        };
        let _ = Command::new(kube_bin("helm"))
            .args(["uninstall", &self.name, "-n", &self.namespace, "--wait"])
            .env("KUBECONFIG", kubeconfig())
            .output();
        // The clone Pods have no owner: they go with their namespace.
        kubectl(&[
            "delete",
            "namespace",
            &self.clones,
            &self.namespace,
            "--wait=true",
            "--timeout=120s",
        ]);
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// `helm install --wait` of the chart as `release` with `--set`s; prints how long it took.
fn helm_install(release: &Release, sets: &[String]) {
    let chart = repo().join("charts/clonepool").display().to_string();
    let mut args = vec![
        "install",
        &release.name,
        &chart,
        "--namespace",
        &release.namespace,
        "--create-namespace",
        "--wait",
        "--timeout",
        "5m",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    let started = Instant::now();
    run("helm", &args);
    eprintln!("helm install --wait: {:?}", started.elapsed());
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .unwrap()
}

/// The agent Pod (the cluster's only node runs one): its name and address, once it is Ready.
async fn ready_agent(pods: &Api<Pod>, release: &str, not: Option<&str>) -> (String, String) {
    let selector =
        format!("app.kubernetes.io/instance={release},app.kubernetes.io/component=agent");
    let deadline = Instant::now() + FILL;
    loop {
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap();
        let ready = list.items.iter().find(|p| {
            let name = p.metadata.name.as_deref().unwrap_or_default();
            let is_ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            Some(name) != not && is_ready && p.metadata.deletion_timestamp.is_none()
        });
        if let Some(p) = ready {
            let ip = p.status.as_ref().unwrap().pod_ip.clone().unwrap();
            return (p.metadata.name.clone().unwrap(), ip);
        }
        assert!(
            Instant::now() < deadline,
            "no Ready agent Pod within {FILL:?}: {:?}",
            list.items
                .iter()
                .map(|p| (p.metadata.name.clone(), p.status.clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

struct Agent {
    base: String,
    admin: String,
    token: String,
}

impl Agent {
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let response = http()
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        http()
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    async fn capacity(&self) -> Capacity {
        self.get("/v1/capacity").await
    }

    async fn wait_warm(&self, warm: u32) {
        let deadline = Instant::now() + FILL;
        loop {
            let capacity = self.capacity().await;
            if capacity.warm >= warm {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not {warm} WARM pods within {FILL:?}: {capacity:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The state of `pod` as the agent lists it.
    async fn pod_state(&self, pod: &str) -> String {
        let value: serde_json::Value = self.get(&format!("/v1/pods/{pod}")).await;
        value["state"].as_str().unwrap_or_default().to_string()
    }

    /// `clonepool_agent_execs_total{path=…}` from the admin port.
    async fn execs(&self, path: &str) -> f64 {
        let text = http()
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let key = format!("clonepool_agent_execs_total{{path=\"{path}\"}}");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in /metrics:\n{text}"))
    }

    /// Claims a warm pod for `clone` and checks its WordPress serves the clone and lets the
    /// admin log in.
    async fn claim_and_check(&self, clone: &str) -> ClaimResponse {
        let host = format!("{clone}.clones.example.test");
        let response = self
            .post(
                "/v1/claim",
                serde_json::json!({"clone_id": clone, "clone_host": host, "allow_cold": false}),
            )
            .await;
        assert_eq!(response.status().as_u16(), 200, "claim {clone}");
        let claim: ClaimResponse = response.json().await.unwrap();
        let home = http()
            .get(format!("{}/", claim.endpoint))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(home.status().as_u16(), 200, "GET / of {clone}");
        let body = home.text().await.unwrap();
        assert!(
            body.contains(&format!("http://{host}")),
            "the page links the clone's host"
        );
        let login = http()
            .post(format!("{}/wp-login.php", claim.endpoint))
            .header("host", &host)
            .header("cookie", "wordpress_test_cookie=WP%20Cookie%20check")
            .form(&[
                ("log", claim.credentials.admin_username.as_str()),
                ("pwd", claim.credentials.admin_password.as_str()),
                ("testcookie", "1"),
            ])
            .send()
            .await
            .unwrap();
        let location = login
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert_eq!(login.status().as_u16(), 302, "admin login of {clone}");
        assert!(location.contains("wp-admin"), "login went to {location:?}");
        claim
    }

    /// Releases `clone` and waits until its pod is WARM again: the reset time as the client
    /// sees it (release to WARM, verification included; 20 ms polls).
    async fn release_until_warm(&self, clone: &str, pod: &str) -> Duration {
        let started = Instant::now();
        let response = self
            .post("/v1/release", serde_json::json!({"clone_id": clone}))
            .await;
        assert!(response.status().is_success(), "release {clone}");
        loop {
            match self.pod_state(pod).await.as_str() {
                "warm" | "WARM" => return started.elapsed(),
                "resetting" | "RESETTING" | "ready" | "READY" | "assigned" | "ASSIGNED" => {}
                other => panic!("pod {pod} went {other} after the release of {clone}"),
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "reset of {pod} took over 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn agent_at(ip: &str, token: &str) -> Agent {
    Agent {
        base: format!("http://{ip}:7411"),
        admin: format!("http://{ip}:7412"),
        token: token.to_string(),
    }
}

/// Names of the clone Pods the API server holds on `node` (not being deleted).
async fn clone_pods(clones: &Api<Pod>, node: &str) -> BTreeSet<String> {
    clones
        .list(&ListParams::default().labels(&format!("clonepool.node={node}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .filter_map(|p| p.metadata.name)
        .collect()
}

fn median_ms(samples: &[Duration]) -> f64 {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    clonepool_e2e::stats::quantile(&ms, 0.5)
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn the_chart_runs_agents_whose_warm_pods_serve_clones_and_reset_through_the_node_runtime() {
    let Some((client, node)) = cluster().await else {
        return;
    };
    let _heavy = HEAVY.lock().await;
    let resets: usize = std::env::var("CLONEPOOL_KUBE_RESETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);

    let reset_method =
        std::env::var("CLONEPOOL_KUBE_RESET_METHOD").unwrap_or_else(|_| "sql".to_string());

    let release = new_release("cpe2e", "e2e");
    let chart = repo().join("charts/clonepool");
    let mut sets = release_sets(&release, 2);
    sets.extend([
        "coordinator.persistence.type=emptyDir".to_string(),
        format!("agent.resetMethod={reset_method}"),
    ]);
    helm_install(&release, &sets);

    let pods: Api<Pod> = Api::namespaced(client.clone(), &release.namespace);
    let clones: Api<Pod> = Api::namespaced(client.clone(), &release.clones);
    let token = secret_token(&client, &release, "agent-token").await;

    // The agent runs under the chart's ServiceAccount and is Ready (its runtime answers).
    let (agent_pod, agent_ip) = ready_agent(&pods, &release.name, None).await;
    let agent_object = pods.get(&agent_pod).await.unwrap();
    assert_eq!(
        agent_object
            .spec
            .as_ref()
            .unwrap()
            .service_account_name
            .as_deref(),
        Some(format!("{}-clonepool-agent", release.name).as_str())
    );
    let agent = agent_at(&agent_ip, &token).await;
    let fill_started = Instant::now();
    agent.wait_warm(2).await;
    eprintln!(
        "pool of 2 warm Pods filled {:?} after the agent was Ready",
        fill_started.elapsed()
    );
    assert_eq!(agent.capacity().await.node, node);

    // The warm pods are real Pods on the node, with no owner (they outlive the agent).
    let warm_pods = clone_pods(&clones, &node).await;
    assert_eq!(warm_pods.len(), 2, "{warm_pods:?}");
    for name in &warm_pods {
        let pod = clones.get(name).await.unwrap();
        assert!(
            pod.metadata.owner_references.is_none(),
            "{name} has an owner"
        );
        assert_eq!(
            pod.spec.as_ref().unwrap().node_name.as_deref(),
            Some(node.as_str())
        );
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        assert_eq!(phase.as_deref(), Some("Running"), "{name}");
    }

    // A claim through the agent API: WordPress serves the clone from a warm Pod.
    let claim_started = Instant::now();
    let claim = agent.claim_and_check("kube-e2e-first").await;
    eprintln!("claim + first page + login: {:?}", claim_started.elapsed());
    assert!(warm_pods.contains(claim.pod_id.as_str()));
    let pod_ip = clones
        .get(claim.pod_id.as_str())
        .await
        .unwrap()
        .status
        .unwrap()
        .pod_ip
        .unwrap();
    assert_eq!(
        claim.endpoint,
        format!("http://{pod_ip}:80"),
        "the endpoint is the Pod IP"
    );

    // Release: the reset runs through the node's Docker Engine, never the API server.
    let (direct_before, api_before) =
        (agent.execs("runtime").await, agent.execs("apiserver").await);
    let first = agent
        .release_until_warm("kube-e2e-first", claim.pod_id.as_str())
        .await;
    let (direct_after, api_after) = (agent.execs("runtime").await, agent.execs("apiserver").await);
    assert!(
        direct_after > direct_before,
        "the reset ran commands through the runtime"
    );
    assert_eq!(
        api_after, api_before,
        "no command went through the API server"
    );
    assert_eq!(api_after, 0.0);
    eprintln!(
        "first reset (runtime path): {first:?}, {} execs",
        direct_after - direct_before
    );

    // Reset times, runtime path.
    let mut direct = Vec::new();
    for i in 0..resets {
        let clone = format!("kube-e2e-rt-{i}");
        let claim = agent.claim_and_check(&clone).await;
        direct.push(
            agent
                .release_until_warm(&clone, claim.pod_id.as_str())
                .await,
        );
    }
    assert_eq!(agent.execs("apiserver").await, 0.0);

    // The same resets through the API server's exec: helm upgrade (pods/exec is granted only
    // then); the new agent adopts the same Pods.
    let before_upgrade = clone_pods(&clones, &node).await;
    let upgrade_started = Instant::now();
    run(
        "helm",
        &[
            "upgrade",
            &release.name,
            &chart.display().to_string(),
            "--namespace",
            &release.namespace,
            "--reuse-values",
            "--set",
            "agent.execPath=apiserver",
            "--wait",
            "--timeout",
            "5m",
        ],
    );
    let (upgraded_pod, upgraded_ip) = ready_agent(&pods, &release.name, Some(&agent_pod)).await;
    eprintln!(
        "helm upgrade to execPath=apiserver: {:?}",
        upgrade_started.elapsed()
    );
    let agent = agent_at(&upgraded_ip, &token).await;
    agent.wait_warm(2).await;
    assert_eq!(
        clone_pods(&clones, &node).await,
        before_upgrade,
        "the upgraded agent adopted the same Pods"
    );
    let mut via_api = Vec::new();
    for i in 0..resets {
        let clone = format!("kube-e2e-api-{i}");
        let claim = agent.claim_and_check(&clone).await;
        via_api.push(
            agent
                .release_until_warm(&clone, claim.pod_id.as_str())
                .await,
        );
    }
    assert!(agent.execs("apiserver").await > 0.0);
    assert_eq!(
        agent.execs("runtime").await,
        0.0,
        "all went through the API server"
    );

    // And through the kubelet's CRI runtime socket (the containerd-node path; here the
    // dockershim's socket of scripts/kube-up): the chart mounts the socket's directory and runs
    // the agent on the host network (the runtime's streaming server listens on the node's
    // loopback).
    let cri_socket = std::env::var("CLONEPOOL_KUBE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/var/lib/clonepool-kube"))
        .join("run/dockershim.sock");
    let upgrade_started = Instant::now();
    run(
        "helm",
        &[
            "upgrade",
            &release.name,
            &chart.display().to_string(),
            "--namespace",
            &release.namespace,
            "--reuse-values",
            "--set",
            "agent.execPath=cri",
            "--set",
            &format!("agent.criSocket={}", cri_socket.display()),
            "--wait",
            "--timeout",
            "5m",
        ],
    );
    let (cri_pod, cri_ip) = ready_agent(&pods, &release.name, Some(&upgraded_pod)).await;
    eprintln!(
        "helm upgrade to execPath=cri: {:?}",
        upgrade_started.elapsed()
    );
    let agent = agent_at(&cri_ip, &token).await;
    agent.wait_warm(2).await;
    assert_eq!(clone_pods(&clones, &node).await, before_upgrade);
    let mut via_cri = Vec::new();
    for i in 0..resets {
        let clone = format!("kube-e2e-cri-{i}");
        let claim = agent.claim_and_check(&clone).await;
        via_cri.push(
            agent
                .release_until_warm(&clone, claim.pod_id.as_str())
                .await,
        );
    }
    assert!(agent.execs("cri").await > 0.0);
    assert_eq!(
        (agent.execs("runtime").await, agent.execs("apiserver").await),
        (0.0, 0.0),
        "all went through the CRI socket"
    );

    eprintln!(
        "\n=== Kubernetes mode: reset (release to WARM, verified), {resets} each, {reset_method} method ===\n\
         runtime (Docker Engine API, direct): median {:.0} ms  samples {:?}\n\
         apiserver (pods/exec):              median {:.0} ms  samples {:?}\n\
         cri (kubelet's CRI socket, direct): median {:.0} ms  samples {:?}\n",
        median_ms(&direct),
        direct.iter().map(|d| d.as_millis()).collect::<Vec<_>>(),
        median_ms(&via_api),
        via_api.iter().map(|d| d.as_millis()).collect::<Vec<_>>(),
        median_ms(&via_cri),
        via_cri.iter().map(|d| d.as_millis()).collect::<Vec<_>>(),
    );

    // Back to the runtime path, then delete the agent Pod: its successor adopts the Pods.
    run(
        "helm",
        &[
            "upgrade",
            &release.name,
            &chart.display().to_string(),
            "--namespace",
            &release.namespace,
            "--reuse-values",
            "--set",
            "agent.execPath=runtime",
            "--wait",
            "--timeout",
            "5m",
        ],
    );
    let (current_pod, current_ip) = ready_agent(&pods, &release.name, Some(&cri_pod)).await;
    let agent = agent_at(&current_ip, &token).await;
    agent.wait_warm(2).await;
    let held = clone_pods(&clones, &node).await;
    let uids = |list: &[Pod]| -> BTreeSet<String> {
        list.iter().filter_map(|p| p.metadata.uid.clone()).collect()
    };
    let before = uids(&clones.list(&ListParams::default()).await.unwrap().items);
    let deleted_at = Instant::now();
    run(
        "kubectl",
        &[
            "delete",
            "pod",
            &current_pod,
            "-n",
            &release.namespace,
            "--wait=false",
        ],
    );
    let (_, successor_ip) = ready_agent(&pods, &release.name, Some(&current_pod)).await;
    let successor = agent_at(&successor_ip, &token).await;
    successor.wait_warm(2).await;
    eprintln!(
        "agent Pod deleted → successor Ready with 2 WARM: {:?}",
        deleted_at.elapsed()
    );
    let listed: Vec<serde_json::Value> = successor.get("/v1/pods").await;
    let adopted: BTreeSet<String> = listed
        .iter()
        .filter_map(|p| p["pod_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(adopted, held, "the new agent holds the same Pods");
    assert_eq!(clone_pods(&clones, &node).await, held);
    assert_eq!(
        uids(&clones.list(&ListParams::default()).await.unwrap().items),
        before,
        "the very same Pod objects (no Pod was recreated)"
    );
    // And they still serve.
    successor.claim_and_check("kube-e2e-after-adoption").await;
}

/// `helm template` with `--set`s, as text.
fn render(release: &str, namespace: &str, extra: &[&str]) -> String {
    let chart = repo().join("charts/clonepool");
    let chart = chart.display().to_string();
    let mut args = vec![
        "template",
        release,
        chart.as_str(),
        "--namespace",
        namespace,
    ];
    args.extend_from_slice(extra);
    run("helm", &args)
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn the_chart_lints_clean_and_every_rendering_validates_against_the_api_server() {
    let Some(_) = cluster().await else {
        return;
    };
    let chart = repo().join("charts/clonepool").display().to_string();
    let lint = run("helm", &["lint", &chart, "--strict"]);
    assert!(lint.contains("0 chart(s) failed"), "{lint}");

    let id = format!("{:08x}", rand::random::<u32>());
    let namespace = format!("clonepool-dry-{id}");
    let clones = format!("{namespace}-clones");
    // The namespaces must exist for a server-side dry run of the objects in them.
    let _namespaces = Release {
        name: format!("dry-{id}"),
        namespace: namespace.clone(),
        clones: clones.clone(),
        data_dir: PathBuf::from(format!("/var/lib/clonepool-e2e/dry-{id}")),
    };
    run("kubectl", &["create", "namespace", &namespace]);
    run("kubectl", &["create", "namespace", &clones]);
    let clones_set = format!("clones.namespace={clones}");
    for variant in [
        vec![],
        vec!["--set", "agent.execPath=apiserver"],
        vec!["--set", "agent.execPath=cri"],
        vec!["--set", "coordinator.persistence.type=pvc"],
        vec!["--set", "coordinator.persistence.type=emptyDir"],
        vec!["--set", "networkPolicy.enabled=false"],
        vec![
            "--set",
            "coordinator.tls.secretName=clonepool-api-tls",
            "--set",
            "coordinator.apiTokenSecret=clonepool-api-tokens",
        ],
        // Leader election: a Deployment sharing one state directory.
        vec![
            "--set",
            "coordinator.replicas=2",
            "--set",
            "coordinator.nodeSelector.kubernetes\\.io/hostname=vm",
        ],
        vec![
            "--set",
            "coordinator.replicas=3",
            "--set",
            "coordinator.persistence.type=pvc",
            "--set",
            "coordinator.persistence.accessMode=ReadWriteMany",
        ],
    ] {
        let mut extra = vec!["--set", clones_set.as_str()];
        extra.extend(variant.iter().copied());
        let manifests = render("dry", &namespace, &extra);
        let path = std::env::temp_dir().join(format!("clonepool-chart-{id}.yaml"));
        std::fs::write(&path, &manifests).unwrap();
        let applied = run(
            "kubectl",
            &[
                "apply",
                "--dry-run=server",
                "-f",
                &path.display().to_string(),
            ],
        );
        let _ = std::fs::remove_file(&path);
        let elected = variant
            .iter()
            .any(|v| v.starts_with("coordinator.replicas="));
        let coordinator_kind = if elected {
            "deployment.apps/dry-clonepool-coordinator"
        } else {
            "statefulset.apps/dry-clonepool-coordinator"
        };
        for kind in [
            "daemonset.apps",
            coordinator_kind,
            "role.rbac",
            "rolebinding.rbac",
        ] {
            assert!(
                applied.contains(kind),
                "{variant:?}: no {kind} in\n{applied}"
            );
        }
        // Only elected replicas get the leader Lease, and the right to hold it.
        assert_eq!(
            manifests.contains("CLONEPOOL_KUBE_LEADER_LEASE"),
            elected,
            "{variant:?}"
        );
        assert_eq!(
            applied.contains(
                "role.rbac.authorization.k8s.io/dry-clonepool-coordinator-leader-election"
            ),
            elected,
            "{variant:?}"
        );
        assert_eq!(
            applied.contains("persistentvolumeclaim/dry-clonepool-coordinator-data"),
            elected && variant.contains(&"coordinator.persistence.type=pvc"),
            "{variant:?}"
        );
        assert_eq!(
            manifests.contains("kind: NetworkPolicy"),
            !variant.contains(&"networkPolicy.enabled=false"),
            "{variant:?}"
        );
        // With the CRI path the agent needs no Docker Engine: no socket is mounted.
        assert_eq!(
            manifests.contains("docker.sock"),
            !variant.contains(&"agent.execPath=cri"),
            "{variant:?}"
        );
        // pods/exec is granted only for the API server exec path.
        assert_eq!(
            manifests.contains("pods/exec"),
            variant.contains(&"agent.execPath=apiserver"),
            "{variant:?}"
        );
    }
    // A ServiceMonitor only where the Prometheus Operator's API exists.
    let without = render("dry", &namespace, &[]);
    assert!(!without.contains("kind: ServiceMonitor"));
    let with = render(
        "dry",
        &namespace,
        &["--api-versions", "monitoring.coreos.com/v1"],
    );
    assert!(with.contains("kind: ServiceMonitor"));
    // Values that make no sense are refused by name.
    let bad = Command::new(kube_bin("helm"))
        .args(["template", "dry", &chart, "--set", "agent.execPath=ssh"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("agent.execPath"));
    // Replicas that would not share one state directory are refused, saying what is missing.
    for (sets, says) in [
        (vec!["coordinator.replicas=0"], "at least 1"),
        (
            vec![
                "coordinator.replicas=2",
                "coordinator.persistence.type=emptyDir",
            ],
            "emptyDir gives each replica its own",
        ),
        (
            vec!["coordinator.replicas=2"],
            "needs coordinator.nodeSelector",
        ),
        (
            vec!["coordinator.replicas=2", "coordinator.persistence.type=pvc"],
            "ReadWriteMany",
        ),
    ] {
        let mut args = vec!["template", "dry", chart.as_str()];
        for set in &sets {
            args.extend(["--set", set]);
        }
        let refused = Command::new(kube_bin("helm")).args(&args).output().unwrap();
        assert!(!refused.status.success(), "{sets:?} rendered");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(says), "{sets:?}: {stderr}");
    }

    // The coordinator's Roles are the rules file's: all of it in the clones namespace, its
    // pods rule in the release namespace (agent discovery).
    let rules: Vec<serde_json::Value> = serde_saphyr::from_str(
        &std::fs::read_to_string(repo().join("charts/clonepool/files/coordinator-rbac-rules.yaml"))
            .unwrap(),
    )
    .unwrap();
    let rendered = render("dry", &namespace, &["--set", clones_set.as_str()]);
    let roles: Vec<serde_json::Value> = rendered
        .split("\n---")
        .filter_map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).ok())
        .filter(|doc| doc["kind"] == "Role")
        .collect();
    let coordinator_role = |name: &str| {
        roles
            .iter()
            .find(|r| r["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no Role {name}"))
            .clone()
    };
    let clones_role = coordinator_role("dry-clonepool-coordinator");
    assert_eq!(clones_role["metadata"]["namespace"], clones.as_str());
    assert_eq!(
        clones_role["rules"],
        serde_json::Value::Array(rules.clone())
    );
    let discovery = coordinator_role("dry-clonepool-coordinator-discovery");
    assert_eq!(discovery["metadata"]["namespace"], namespace.as_str());
    let pods_rules: Vec<serde_json::Value> = rules
        .into_iter()
        .filter(|r| {
            r["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == "pods")
        })
        .collect();
    assert_eq!(discovery["rules"], serde_json::Value::Array(pods_rules));

    // Elected replicas may touch one kind of object in their own namespace: Leases.
    let elected = render(
        "dry",
        &namespace,
        &[
            "--set",
            clones_set.as_str(),
            "--set",
            "coordinator.replicas=2",
            "--set",
            "coordinator.nodeSelector.kubernetes\\.io/hostname=vm",
        ],
    );
    let election = elected
        .split("\n---")
        .filter_map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).ok())
        .find(|doc| {
            doc["kind"] == "Role"
                && doc["metadata"]["name"] == "dry-clonepool-coordinator-leader-election"
        })
        .expect("a leader-election Role");
    assert_eq!(election["metadata"]["namespace"], namespace.as_str());
    for rule in election["rules"].as_array().unwrap() {
        assert_eq!(rule["resources"], serde_json::json!(["leases"]), "{rule}");
    }
}

/// `kubectl port-forward` to a Service port on 127.0.0.1 (how an operator reaches the
/// coordinator from outside the cluster); stopped when dropped.
struct PortForward {
    child: std::process::Child,
    port: u16,
}

impl PortForward {
    fn start(namespace: &str, target: &str, port: u16) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(kube_bin("kubectl"))
            .args([
                "-n",
                namespace,
                "port-forward",
                target,
                &format!("0:{port}"),
                "--address",
                "127.0.0.1",
            ])
            .env("KUBECONFIG", kubeconfig())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("run kubectl port-forward");
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        // kubectl goes on writing a line per connection: a closed pipe would end it.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        // "Forwarding from 127.0.0.1:41234 -> 7401"
        let local = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("127.0.0.1:"))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("kubectl port-forward said {line:?}"));
        Self { child, port: local }
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `token` of the release's Secret `<release>-clonepool-{which}` (`agent-token`, `api-token`).
async fn secret_token(client: &kube::Client, release: &Release, which: &str) -> String {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &release.namespace);
    let secret = secrets
        .get(&format!("{}-clonepool-{which}", release.name))
        .await
        .unwrap_or_else(|e| panic!("the Secret {which}: {e}"));
    String::from_utf8(secret.data.unwrap()["token"].0.clone()).unwrap()
}

/// The release's (Ready) agent, with the chart's agent token.
async fn release_agent(client: &kube::Client, release: &Release) -> Agent {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &release.namespace);
    let (_, ip) = ready_agent(&pods, &release.name, None).await;
    agent_at(&ip, &secret_token(client, release, "agent-token").await).await
}

/// A release `{short}-{id}` in the namespace `clonepool-{long}-{id}`, with its clones namespace
/// and its hostPath data under /var/lib/clonepool-e2e/{id}.
fn new_release(short: &str, long: &str) -> Release {
    let id = format!("{:08x}", rand::random::<u32>());
    Release {
        name: format!("{short}-{id}"),
        namespace: format!("clonepool-{long}-{id}"),
        clones: format!("clonepool-{long}-{id}-clones"),
        data_dir: PathBuf::from(format!("/var/lib/clonepool-e2e/{id}")),
    }
}

/// The `--set`s every chart test installs with: this build's images, the release's clones
/// namespace and agent data dir, test-labelled warm Pods, `warm_pods` of them and room for no
/// other.
fn release_sets(release: &Release, warm_pods: u32) -> Vec<String> {
    let workload = workload_image();
    let image = clonepool_image();
    let (image_repo, image_tag) = image.rsplit_once(':').expect("image reference with a tag");
    let (workload_repo, workload_tag) = workload.rsplit_once(':').expect("workload tag");
    vec![
        format!("images.clonepool.repository={image_repo}"),
        format!("images.clonepool.tag={image_tag}"),
        format!("images.workload.repository={workload_repo}"),
        format!("images.workload.tag={workload_tag}"),
        format!("clones.namespace={}", release.clones),
        format!("agent.warmTarget={warm_pods}"),
        format!("agent.maxPods={warm_pods}"),
        format!("agent.dataDir={}", release.data_dir.join("agent").display()),
        "agent.podLabels[0]=clonepool.test=true".to_string(),
    ]
}

/// The `--set`s of an in-cluster coordinator test: one warm Pod and room for no other,
/// fresh-site clones (a cold Deployment cannot import a source yet) from `https://source.test/`.
fn one_warm_pod_sets(release: &Release) -> Vec<String> {
    let mut sets = release_sets(release, 1);
    sets.extend([
        "coordinator.sourceImport=false".to_string(),
        "coordinator.urlAllowHosts[0]=source.test".to_string(),
    ]);
    sets
}

/// Waits for the job `job_id` and answers its clone result; fails the test unless it completed.
async fn completed_clone(
    api: &clonepool_coordinator::client::ApiClient,
    job_id: &str,
) -> clonepool_common::api::CloneResult {
    use clonepool_common::api::{JobResult, JobState};
    let status = api
        .wait_job(
            job_id,
            Duration::from_millis(50),
            Duration::from_secs(300),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(status.status, JobState::Completed, "{status:?}");
    match status.result {
        Some(JobResult::Clone(result)) => result,
        _ => panic!("no clone result: {status:?}"),
    }
}

/// Waits until the coordinator counts a warm pod (it learns of one at its next capacity poll).
async fn coordinator_sees_warm_pod(api: &clonepool_coordinator::client::ApiClient) {
    eventually(
        "the coordinator sees a warm pod",
        Duration::from_secs(120),
        || async { (api.pool().await.ok()?.warm_total >= 1).then_some(()) },
    )
    .await;
}

/// The coordinator's generated CA (PEM), read from its `pod`.
fn coordinator_ca(namespace: &str, pod: &str) -> String {
    run(
        "kubectl",
        &[
            "-n",
            namespace,
            "exec",
            pod,
            "-c",
            "coordinator",
            "--",
            "cat",
            "/var/lib/clonepool/coordinator/state/ca.pem",
        ],
    )
}

/// The in-cluster coordinator's API as an operator reaches it: `kubectl port-forward` to its
/// Service, the token from the chart's Secret, trusting `ca`. Returns once the API answers
/// through the forward, and has checked that a wrong token gets 401.
async fn coordinator_api(
    release: &Release,
    ca: &str,
) -> (PortForward, clonepool_coordinator::client::ApiClient) {
    use clonepool_coordinator::client::{ApiClient, ClientError};
    let token = secret_token(&client().await.unwrap(), release, "api-token").await;
    let forward = PortForward::start(
        &release.namespace,
        &format!("service/{}-clonepool-coordinator", release.name),
        7401,
    );
    let url = format!("https://localhost:{}", forward.port);
    let api = ApiClient::new(&url, token.trim(), Some(ca.as_bytes())).unwrap();
    let wrong = ApiClient::new(&url, "not-the-token", Some(ca.as_bytes())).unwrap();
    // The forward may lead nowhere for a moment after the Pod turned Ready.
    let refused = eventually(
        "the coordinator answers through the port-forward",
        Duration::from_secs(60),
        || async {
            match wrong.pool().await {
                Err(ClientError::Transport { reason, .. }) => {
                    eprintln!("not yet: {reason}");
                    None
                }
                other => Some(other),
            }
        },
    )
    .await;
    assert!(
        matches!(refused, Err(ClientError::Api { status: 401, .. })),
        "a wrong token is refused: {refused:?}"
    );
    (forward, api)
}

/// The clone's WordPress through its Service (the Ingress's backend) as an ingress controller
/// that terminates TLS would ask (the clone's Host, `X-Forwarded-Proto: https`): the home page
/// names the clone's https URL and the admin logs in with the job's password.
async fn clone_serves_through_its_service(
    services: &Api<k8s_openapi::api::core::v1::Service>,
    ingresses: &Api<k8s_openapi::api::networking::v1::Ingress>,
    result: &clonepool_common::api::CloneResult,
) {
    let name = format!("clone-{}", result.clone_id);
    let host = result
        .clone_url
        .strip_prefix("https://")
        .expect("clone URLs are https:// with an Ingress TLS secret")
        .to_string();
    let ingress = ingresses.get(&name).await.expect("the clone's Ingress");
    let spec = ingress.spec.unwrap();
    let tls = &spec.tls.as_ref().expect("a TLS section")[0];
    assert_eq!(tls.secret_name.as_deref(), Some(TLS_SECRET));
    assert_eq!(tls.hosts.as_deref(), Some(&[host.clone()][..]));
    let rule = &spec.rules.unwrap()[0];
    assert_eq!(rule.host.as_deref(), Some(host.as_str()));
    let backend = rule.http.as_ref().unwrap().paths[0]
        .backend
        .service
        .clone()
        .unwrap();
    assert_eq!(
        backend.name, name,
        "the Ingress leads to the clone's Service"
    );
    let service = services.get(&name).await.expect("the clone's Service");
    let cluster_ip = service.spec.unwrap().cluster_ip.unwrap();
    let site = client_to(&host, &cluster_ip);
    // kube-proxy may take a moment to program a new Service.
    let body = eventually(
        &format!("{host} answers through its Service"),
        Duration::from_secs(60),
        || async {
            let response = match site
                .get(format!("http://{host}/"))
                .header("x-forwarded-proto", "https")
                .send()
                .await
            {
                Ok(response) => response,
                Err(err) => {
                    eprintln!("{host} through {cluster_ip}: {err}");
                    return None;
                }
            };
            if response.status().as_u16() != 200 {
                eprintln!("{host} through {cluster_ip}: {}", response.status());
                return None;
            }
            let body = response.text().await.ok()?;
            // A reused ClusterIP can lead to the site that held it until kube-proxy resyncs.
            if !body.contains(&format!("https://{host}/")) {
                eprintln!("{host} through {cluster_ip}: a page that does not link the clone's own https URL");
                return None;
            }
            Some(body)
        },
    )
    .await;
    assert!(
        !body.contains(&format!("http://{host}")),
        "no plain-http link to the clone (mixed content)"
    );
    let login = site
        .post(format!("http://{host}/wp-login.php"))
        .header("x-forwarded-proto", "https")
        .header("cookie", "wordpress_test_cookie=WP%20Cookie%20check")
        .form(&[
            ("log", result.username.as_str()),
            ("pwd", result.password.as_str()),
            ("testcookie", "1"),
        ])
        .send()
        .await
        .unwrap();
    let location = login
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(login.status().as_u16(), 302, "admin login to {host}");
    assert!(
        location.starts_with(&format!("https://{host}/wp-admin")),
        "login went to {location:?}"
    );
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn the_in_cluster_coordinator_serves_warm_clones_goes_cold_when_the_pool_is_exhausted_and_cleans_up_on_ttl(
) {
    use clonepool_common::api::{ClonePath, CloneRequest, CloneStatus};
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::networking::v1::Ingress;

    let Some((client, node)) = cluster().await else {
        return;
    };
    let _heavy = HEAVY.lock().await;
    let warm_samples: usize = std::env::var("CLONEPOOL_KUBE_CLONES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);

    let release = new_release("cpco", "co");
    // One warm Pod and room for no other: the second clone finds the pool exhausted. A TTL
    // minute of 4 s (CLONEPOOL_TTL_MINUTE_MS) lets the shortest TTLs run out within the test.
    let mut sets = one_warm_pod_sets(&release);
    sets.extend([
        "coordinator.persistence.type=emptyDir".to_string(),
        "coordinator.cold.cpuMillis=500".to_string(),
        // Clones behind a TLS-terminating Ingress: https URLs, plain HTTP to the Pods.
        format!("clones.tlsSecret={TLS_SECRET}"),
        "coordinator.extraEnv[0].name=CLONEPOOL_TTL_MINUTE_MS".to_string(),
        "coordinator.extraEnv[0].value=4000".to_string(),
    ]);
    helm_install(&release, &sets);

    let coordinator_name = format!("{}-clonepool-coordinator", release.name);
    let clone_pods_api: Api<Pod> = Api::namespaced(client.clone(), &release.clones);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &release.clones);
    let services: Api<Service> = Api::namespaced(client.clone(), &release.clones);
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &release.clones);

    // The coordinator runs in its Pod under the chart's ServiceAccount.
    let statefulset = Api::<StatefulSet>::namespaced(client.clone(), &release.namespace)
        .get(&coordinator_name)
        .await
        .unwrap();
    assert_eq!(
        statefulset
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .service_account_name,
        Some(coordinator_name.clone())
    );
    let coordinator_pod = format!("{coordinator_name}-0");
    let ca = coordinator_ca(&release.namespace, &coordinator_pod);
    let (forward, api) = coordinator_api(&release, &ca).await;
    let pool = api
        .pool()
        .await
        .expect("the API answers with the chart's token");
    eprintln!("pool as the in-cluster coordinator sees it: {pool:?}");

    // The agent's warm Pod is there before the first clone.
    let agent = release_agent(&client, &release).await;
    agent.wait_warm(1).await;

    let request = |ttl_minutes: u32| CloneRequest {
        source_url: "https://source.test/".into(),
        source_username: "admin".into(),
        source_password: "unused".into(),
        customer_id: None,
        ttl_minutes: Some(ttl_minutes),
    };
    let clone = |ttl_minutes: u32| {
        let api = &api;
        let request = request(ttl_minutes);
        async move {
            let started = Instant::now();
            let accepted = api.clone_site(&request, None).await.expect("accepted");
            let result = completed_clone(api, &accepted.job.job_id).await;
            (result, started.elapsed())
        }
    };

    // Warm clones through the in-cluster coordinator: the agent discovered through its Pod, the
    // clone served from the warm Pod through its Service. Ended by DELETE between samples
    // (the pod resets and is WARM again); the last one is kept and left to its TTL.
    let mut warm_times = Vec::new();
    let mut kept = None;
    for sample in 0..warm_samples.max(1) {
        coordinator_sees_warm_pod(&api).await;
        let last = sample + 1 == warm_samples.max(1);
        let (result, took) = clone(if last { 10 } else { 60 }).await;
        assert_eq!(result.path, ClonePath::Warm, "{result:?}");
        assert_eq!(result.node, node);
        assert_eq!(
            result.clone_url,
            format!("https://{}.clones.example.test", result.clone_id)
        );
        warm_times.push(took);
        clone_serves_through_its_service(&services, &ingresses, &result).await;
        if last {
            kept = Some(result);
        } else {
            api.delete(&result.clone_id).await.unwrap();
            let name = format!("clone-{}", result.clone_id);
            eventually(
                "a deleted clone's Service and Ingress go",
                Duration::from_secs(60),
                || async {
                    (services.get_opt(&name).await.unwrap().is_none()
                        && ingresses.get_opt(&name).await.unwrap().is_none())
                    .then_some(())
                },
            )
            .await;
        }
    }
    let warm = kept.unwrap();
    eprintln!(
        "warm clone through the in-cluster coordinator (POST → completed, via port-forward): median {:.0} ms of {} {:?}",
        median_ms(&warm_times),
        warm_times.len(),
        warm_times
    );

    // The pool is exhausted (one Pod at most, serving): the next clone goes cold, a Deployment
    // made through the API server under the coordinator's ServiceAccount.
    assert_eq!(agent.capacity().await.warm, 0);
    // 10 minutes (40 s here) as for the last warm clone: room to check it serves before it
    // expires, on a loaded machine too.
    let (cold, cold_took) = clone(10).await;
    eprintln!("cold clone (Deployment) ready: {cold_took:?}");
    assert_eq!(cold.path, ClonePath::Cold, "{cold:?}");
    let cold_name = format!("clone-{}", cold.clone_id);
    let deployment = deployments.get(&cold_name).await.expect("the Deployment");
    assert_eq!(
        deployment.metadata.labels.as_ref().unwrap()["clonepool.clone"],
        cold.clone_id
    );
    clone_serves_through_its_service(&services, &ingresses, &cold).await;

    // TTL expiry: both clones end as "expired"; everything made for them goes, and the warm
    // Pod is reset and WARM again.
    for result in [&cold, &warm] {
        let info = eventually(
            &format!("{} expires", result.clone_id),
            Duration::from_secs(180),
            || async {
                let info = api.clone_info(&result.clone_id).await.ok()?;
                (info.status == CloneStatus::Released).then_some(info)
            },
        )
        .await;
        assert_eq!(info.end_reason.as_deref(), Some("expired"));
    }
    eventually(
        "the cold clone's Deployment, Secret, Service, Ingress and Pod are gone",
        Duration::from_secs(120),
        || async {
            let secrets_clones: Api<Secret> = Api::namespaced(client.clone(), &release.clones);
            let cold_pods = clone_pods_api
                .list(&ListParams::default().labels(&format!("clonepool.clone={}", cold.clone_id)))
                .await
                .unwrap();
            (deployments.get_opt(&cold_name).await.unwrap().is_none()
                && secrets_clones.get_opt(&cold_name).await.unwrap().is_none()
                && services.get_opt(&cold_name).await.unwrap().is_none()
                && ingresses.get_opt(&cold_name).await.unwrap().is_none()
                && cold_pods.items.is_empty())
            .then_some(())
        },
    )
    .await;
    let warm_name = format!("clone-{}", warm.clone_id);
    assert!(services.get_opt(&warm_name).await.unwrap().is_none());
    assert!(ingresses.get_opt(&warm_name).await.unwrap().is_none());
    agent.wait_warm(1).await;
    let left: Vec<String> = services
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    assert!(
        left.is_empty(),
        "Services left in the clones namespace: {left:?}"
    );
    drop(forward);
}

/// Whether the API server reports `pod` Ready.
fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The coordinator Pods of `release` (in `namespace`) once exactly one of two Running ones is
/// Ready, holds the leader Lease and is not `not`: `(leader, standby)`, each as (name, IP).
async fn leader_and_standby(
    client: &kube::Client,
    namespace: &str,
    release: &str,
    not: Option<&str>,
) -> ((String, String), (String, String)) {
    use k8s_openapi::api::coordination::v1::Lease;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let lease_name = format!("{release}-clonepool-coordinator-leader");
    let selector =
        format!("app.kubernetes.io/instance={release},app.kubernetes.io/component=coordinator");
    let name_and_ip = |p: &Pod| {
        (
            p.metadata.name.clone().unwrap_or_default(),
            p.status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default(),
        )
    };
    eventually(
        "one Ready coordinator holding the leader Lease and one standby",
        Duration::from_secs(180),
        || async {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?;
            let running: Vec<&Pod> = list
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .collect();
            let (ready, waiting): (Vec<&Pod>, Vec<&Pod>) =
                running.iter().partition(|p| pod_ready(p));
            if running.len() != 2 || ready.len() != 1 {
                eprintln!(
                    "coordinators: {} running, {} Ready",
                    running.len(),
                    ready.len()
                );
                return None;
            }
            let leader = name_and_ip(ready[0]);
            let holder = leases
                .get_opt(&lease_name)
                .await
                .ok()??
                .spec?
                .holder_identity?;
            (holder == leader.0 && Some(leader.0.as_str()) != not)
                .then(|| (leader, name_and_ip(waiting[0])))
        },
    )
    .await
}

/// How often the kubelet restarted the coordinator container of `pod`.
async fn coordinator_restarts(pods: &Api<Pod>, pod: &str) -> Option<i32> {
    pods.get_opt(pod)
        .await
        .ok()??
        .status?
        .container_statuses?
        .iter()
        .find(|c| c.name == "coordinator")
        .map(|c| c.restart_count)
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn two_coordinator_replicas_elect_one_leader_and_a_standby_takes_over_with_the_state() {
    use clonepool_common::api::{CloneRequest, CloneStatus, JobState};
    use k8s_openapi::api::apps::v1::Deployment;

    let Some((client, node)) = cluster().await else {
        return;
    };
    let _heavy = HEAVY.lock().await;
    let release = new_release("cpha", "ha");
    // Two coordinators sharing one state directory on this node.
    let mut sets = one_warm_pod_sets(&release);
    sets.extend([
        "coordinator.replicas=2".to_string(),
        "coordinator.persistence.type=hostPath".to_string(),
        format!(
            "coordinator.persistence.hostPath={}",
            release.data_dir.join("coordinator").display()
        ),
        format!("coordinator.nodeSelector.kubernetes\\.io/hostname={node}"),
    ]);
    helm_install(&release, &sets);
    let coordinator_name = format!("{}-clonepool-coordinator", release.name);
    let deployment = Api::<Deployment>::namespaced(client.clone(), &release.namespace)
        .get(&coordinator_name)
        .await
        .expect("more than one replica: a Deployment");
    assert_eq!(deployment.spec.unwrap().replicas, Some(2));

    // One leads (Ready, the Lease's holder); the other stands by: alive, not Ready, naming
    // the leader, and says it does not lead.
    let ((leader, leader_ip), (standby, standby_ip)) =
        leader_and_standby(&client, &release.namespace, &release.name, None).await;
    eprintln!("leader {leader}, standby {standby}");
    let admin = |ip: &str, path: &str| format!("http://{ip}:7402{path}");
    // The standby reads the Lease every 2 s, so it may not have seen the leader's name yet;
    // it is never Ready meanwhile.
    let said = eventually(
        &format!("the standby names {leader} as the leader"),
        Duration::from_secs(20),
        || async {
            let response = http()
                .get(admin(&standby_ip, "/readyz"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 503, "the standby is not Ready");
            let said = response.text().await.unwrap();
            eprintln!("standby /readyz: {}", said.trim());
            said.contains(&format!("{leader} leads")).then_some(said)
        },
    )
    .await;
    assert!(said.starts_with("standby:"), "{said}");
    let standby_live = http()
        .get(admin(&standby_ip, "/livez"))
        .send()
        .await
        .unwrap();
    assert_eq!(standby_live.status().as_u16(), 200);
    for (ip, leads) in [(&standby_ip, 0), (&leader_ip, 1)] {
        let metrics = http()
            .get(admin(ip, "/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains(&format!("clonepool_coordinator_leader {leads}")),
            "{ip}: {metrics}"
        );
    }

    // A clone through the leader (the Service reaches only it).
    let ca = coordinator_ca(&release.namespace, &leader);
    let (forward, api) = coordinator_api(&release, &ca).await;
    let agent = release_agent(&client, &release).await;
    agent.wait_warm(1).await;
    coordinator_sees_warm_pod(&api).await;
    let request = CloneRequest {
        source_url: "https://source.test/".into(),
        source_username: "admin".into(),
        source_password: "unused".into(),
        customer_id: None,
        ttl_minutes: Some(60),
    };
    let accepted = api.clone_site(&request, None).await.expect("accepted");
    let clone = completed_clone(&api, &accepted.job.job_id).await;
    drop(forward);

    // The leader's Pod goes (as in a rollout or a drain): it hands the Lease over as it stops,
    // and another replica leads, with the same state and the same TLS identity.
    let handover = Instant::now();
    run(
        "kubectl",
        &[
            "-n",
            &release.namespace,
            "delete",
            "pod",
            &leader,
            "--wait=false",
        ],
    );
    let ((new_leader, _), _) =
        leader_and_standby(&client, &release.namespace, &release.name, Some(&leader)).await;
    eprintln!(
        "leadership moved from {leader} to {new_leader}: Ready after {:?}",
        handover.elapsed()
    );
    let (forward, api) = coordinator_api(&release, &ca).await;
    let info = api
        .clone_info(&clone.clone_id)
        .await
        .expect("the new leader knows the clone");
    assert_eq!(info.status, CloneStatus::Ready, "{info:?}");
    let job = api
        .job(&accepted.job.job_id)
        .await
        .expect("the new leader knows the job");
    assert_eq!(job.status, JobState::Completed);
    // It acts on that state: ending the clone resets the pod back to WARM.
    api.delete(&clone.clone_id).await.unwrap();
    let info = eventually(
        "the clone is released through the new leader",
        Duration::from_secs(60),
        || async {
            let info = api.clone_info(&clone.clone_id).await.ok()?;
            (info.status == CloneStatus::Released).then_some(info)
        },
    )
    .await;
    assert_eq!(info.end_reason.as_deref(), Some("deleted"));
    agent.wait_warm(1).await;
    coordinator_sees_warm_pod(&api).await;

    // The leader is killed (SIGKILL, no handover) right after accepting a clone: whichever
    // replica leads next (the restarted container under the same Pod name, or the standby once
    // the Lease lapses) recovers the job, and it completes.
    let accepted = api.clone_site(&request, None).await.expect("accepted");
    drop(forward);
    let (_, container, _) = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=io.kubernetes.pod.name={new_leader}"),
        "--filter",
        "label=io.kubernetes.container.name=coordinator",
    ]);
    let container = container.trim();
    assert!(!container.is_empty(), "no container of {new_leader}");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &release.namespace);
    let restarts_before = coordinator_restarts(&pods, &new_leader)
        .await
        .expect("the leader's container status");
    let killed = Instant::now();
    let (done, _, stderr) = docker(&["kill", container]);
    assert!(done, "docker kill {container}: {stderr}");
    // Until the kubelet has seen the death, the API server still calls the Pod Ready.
    eventually(
        "the kubelet restarts the killed container",
        Duration::from_secs(120),
        || async {
            (coordinator_restarts(&pods, &new_leader).await? > restarts_before).then_some(())
        },
    )
    .await;
    let ((after_kill, _), _) =
        leader_and_standby(&client, &release.namespace, &release.name, None).await;
    eprintln!(
        "after SIGKILL of {new_leader}: {after_kill} leads, Ready after {:?}",
        killed.elapsed()
    );
    let (forward, api) = coordinator_api(&release, &ca).await;
    let recovered = completed_clone(&api, &accepted.job.job_id).await;
    let info = api.clone_info(&recovered.clone_id).await.unwrap();
    assert_eq!(info.status, CloneStatus::Ready, "{info:?}");
    api.delete(&recovered.clone_id).await.unwrap();
    agent.wait_warm(1).await;
    drop(forward);
}
