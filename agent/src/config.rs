//! The agent's typed configuration: command-line flags and `CLONEPOOL_*` environment variables,
//! validated together so every bad value is reported at once.

use crate::runtime::ExecPath;
use clap::Parser;
use clonepool_common::ids::NodeName;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// How a released pod is turned back into a clean WARM pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetMethod {
    /// In place: kill stray processes, restore wp-content from the pod's pristine copy, clean
    /// /tmp, sessions and crontabs; drop every non-system database and user and load the pod's
    /// pristine SQL dump; fresh DB password and salts.
    Sql,
    /// Like `sql`, but WordPress is installed again (`clonepool-wp-install`) instead of loading
    /// the pristine dump.
    Reinstall,
    /// Recreate the web container from the image; the database is reset like `sql`.
    RecreateWeb,
}

impl ResetMethod {
    pub const ALL: [ResetMethod; 3] = [
        ResetMethod::Sql,
        ResetMethod::Reinstall,
        ResetMethod::RecreateWeb,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResetMethod::Sql => "sql",
            ResetMethod::Reinstall => "reinstall",
            ResetMethod::RecreateWeb => "recreate-web",
        }
    }
}

impl fmt::Display for ResetMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ResetMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ResetMethod::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = ResetMethod::ALL.iter().map(|m| m.as_str()).collect();
                format!("unknown reset method {s:?} (one of: {})", names.join(", "))
            })
    }
}

/// What runs the pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Container pairs created through the Docker Engine (standalone mode).
    Docker,
    /// Pods created through the Kubernetes API server, pinned to this node; their containers
    /// reached through the node's Docker Engine.
    Kubernetes,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Docker => "docker",
            Backend::Kubernetes => "kubernetes",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "docker" => Ok(Backend::Docker),
            "kubernetes" => Ok(Backend::Kubernetes),
            _ => Err(format!(
                "unknown backend {s:?} (one of: docker, kubernetes)"
            )),
        }
    }
}

/// Pod container labels the agent (and its runtime) set themselves; `--pod-label` may not.
pub const RESERVED_LABELS: [&str; 5] = [
    crate::runtime::LABEL_POD,
    crate::runtime::LABEL_NODE,
    crate::runtime::LABEL_ROLE,
    crate::runtime::docker::LABEL_NETWORK,
    crate::runtime::docker::LABEL_MANAGED,
];

/// The fastest method that passes verification (see docs/benchmarks.md).
pub const DEFAULT_RESET_METHOD: ResetMethod = ResetMethod::Sql;

/// The flags and variables as given, before validation. Numbers are taken as text so that every
/// bad value can be reported together instead of stopping at the first.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "clonepool-agent",
    version,
    about = "The clonepool node agent: keeps warm WordPress pods ready and resets them fast"
)]
pub struct RawConfig {
    /// Directory for the state file, the token and the debug socket.
    #[arg(long, env = "CLONEPOOL_DATA_DIR", default_value = "./.clonepool/agent")]
    pub data_dir: PathBuf,
    /// Name of this node (a DNS label); defaults to the host name, lower-cased.
    #[arg(long, env = "CLONEPOOL_NODE")]
    pub node: Option<String>,
    /// Workload image reference (built by images/wordpress/build).
    #[arg(
        long,
        env = "CLONEPOOL_IMAGE",
        default_value = "clonepool/wordpress:current"
    )]
    pub image: String,
    /// WARM pods to keep on top of the assigned and serving ones.
    #[arg(long, env = "CLONEPOOL_WARM_TARGET", default_value = "2")]
    pub warm_target: String,
    /// Most pods (in any state) this node holds.
    #[arg(long, env = "CLONEPOOL_MAX_PODS", default_value = "6")]
    pub max_pods: String,
    /// Pods created at the same time.
    #[arg(long, env = "CLONEPOOL_CREATE_PARALLELISM", default_value = "2")]
    pub create_parallelism: String,
    /// Address of the agent API (claim, release, capacity, pods).
    #[arg(long, env = "CLONEPOOL_API_LISTEN", default_value = "127.0.0.1:7411")]
    pub api_listen: String,
    /// Address of the admin port (/livez, /readyz, /metrics).
    #[arg(long, env = "CLONEPOOL_ADMIN_LISTEN", default_value = "127.0.0.1:7412")]
    pub admin_listen: String,
    /// File holding the API bearer token; generated (mode 0600) when absent. Default: <data-dir>/token.
    #[arg(long, env = "CLONEPOOL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Docker Engine socket (unix path or URL); default: the engine's usual socket. Not used
    /// with --backend kubernetes and --exec-path cri (that path needs no Docker Engine).
    #[arg(long, env = "CLONEPOOL_DOCKER_SOCKET")]
    pub docker_socket: Option<String>,
    /// Docker network the pods join.
    #[arg(long, env = "CLONEPOOL_NETWORK", default_value = "clonepool")]
    pub network: String,
    /// What runs the pods: docker (container pairs through the Docker Engine) or kubernetes
    /// (Pods through the API server, pinned to --node; credentials from KUBECONFIG or the Pod's
    /// service account).
    #[arg(long, env = "CLONEPOOL_BACKEND", default_value = "docker")]
    pub backend: String,
    /// Namespace of the clone Pods (kubernetes backend).
    #[arg(
        long,
        env = "CLONEPOOL_KUBE_NAMESPACE",
        default_value = "clonepool-clones"
    )]
    pub kube_namespace: String,
    /// How commands reach the pods' containers: runtime (the node's Docker Engine, directly),
    /// apiserver (the API server's pods/exec; kubernetes backend only, to compare) or cri (the
    /// kubelet's CRI runtime socket, --cri-socket, for everything the Docker Engine does on the
    /// other paths: kubernetes backend only, no Docker Engine needed, e.g. containerd nodes).
    #[arg(long, env = "CLONEPOOL_EXEC_PATH", default_value = "runtime")]
    pub exec_path: String,
    /// The kubelet's CRI runtime socket (exec path cri): containerd's by default, or e.g.
    /// cri-dockerd's /run/cri-dockerd.sock.
    #[arg(
        long,
        env = "CLONEPOOL_CRI_SOCKET",
        default_value = crate::runtime::kube::DEFAULT_CRI_SOCKET
    )]
    pub cri_socket: PathBuf,
    /// Namespace of the node Lease `clonepool-agent-<node>` the agent holds while it runs, so
    /// that one agent at a time manages a node (kubernetes backend); empty: no Lease.
    #[arg(long, env = "CLONEPOOL_KUBE_LEASE_NAMESPACE", default_value = "")]
    pub kube_lease_namespace: String,
    /// The agent's identity as the Lease's holder (the chart passes its Pod's name); default:
    /// the host name.
    #[arg(long, env = "CLONEPOOL_KUBE_POD_NAME")]
    pub kube_pod_name: Option<String>,
    /// Pod container resource requests as a percentage of the limits (kubernetes backend).
    #[arg(long, env = "CLONEPOOL_KUBE_REQUESTS_PERCENT", default_value = "10")]
    pub kube_requests_percent: String,
    /// CPU limit of each db container, in thousandths of a core.
    #[arg(long, env = "CLONEPOOL_DB_CPU_MILLIS", default_value = "1000")]
    pub db_cpu_millis: String,
    /// Memory limit of each db container, in MiB.
    #[arg(long, env = "CLONEPOOL_DB_MEMORY_MB", default_value = "384")]
    pub db_memory_mb: String,
    /// CPU limit of each web container, in thousandths of a core.
    #[arg(long, env = "CLONEPOOL_WEB_CPU_MILLIS", default_value = "1000")]
    pub web_cpu_millis: String,
    /// Memory limit of each web container, in MiB.
    #[arg(long, env = "CLONEPOOL_WEB_MEMORY_MB", default_value = "384")]
    pub web_memory_mb: String,
    /// How released pods are reset: sql, reinstall or recreate-web.
    #[arg(long, env = "CLONEPOOL_RESET_METHOD", default_value = DEFAULT_RESET_METHOD.as_str())]
    pub reset_method: String,
    /// Coordinator URL the agent POSTs its capacity to (with its token); none: no push.
    #[arg(long, env = "CLONEPOOL_COORDINATOR_URL")]
    pub coordinator_url: Option<String>,
    /// CA certificate (PEM) to trust for an https coordinator URL, e.g. the standalone
    /// coordinator's ca.pem; the system roots are trusted too.
    #[arg(long, env = "CLONEPOOL_COORDINATOR_CA")]
    pub coordinator_ca: Option<PathBuf>,
    /// Seconds between capacity pushes.
    #[arg(long, env = "CLONEPOOL_PUSH_INTERVAL_SECS", default_value = "10")]
    pub push_interval_secs: String,
    /// Seconds between full reconcile passes (events wake it earlier).
    #[arg(long, env = "CLONEPOOL_RECONCILE_INTERVAL_SECS", default_value = "10")]
    pub reconcile_interval_secs: String,
    /// Seconds a lost pod (a container died while it served a clone) stays visible before it
    /// is removed, released or not.
    #[arg(long, env = "CLONEPOOL_LOST_POD_GRACE_SECS", default_value = "900")]
    pub lost_pod_grace_secs: String,
    /// Most bytes of one import archive (`POST /v1/import`, uncompressed tar), in MiB.
    #[arg(long, env = "CLONEPOOL_IMPORT_MAX_MB", default_value = "2048")]
    pub import_max_mb: String,
    /// Most entries of one import archive.
    #[arg(long, env = "CLONEPOOL_IMPORT_MAX_ENTRIES", default_value = "200000")]
    pub import_max_entries: String,
    /// Extra label `key=value` put on every pod container (repeatable), e.g. clonepool.test=true.
    /// The keys the agent sets itself (clonepool.pod, .node, .role, .network, .managed) are
    /// reserved.
    #[arg(
        long = "pod-label",
        env = "CLONEPOOL_POD_LABELS",
        value_delimiter = ','
    )]
    pub pod_labels: Vec<String>,
}

/// One container's limits as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub cpu_millis: u64,
    pub memory_mb: u64,
}

/// The validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub node: NodeName,
    pub image: String,
    pub warm_target: u32,
    pub max_pods: u32,
    pub create_parallelism: u32,
    pub api_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub token_file: PathBuf,
    pub docker_socket: Option<String>,
    pub network: String,
    pub backend: Backend,
    pub kube_namespace: String,
    pub exec_path: ExecPath,
    /// The CRI runtime socket, when the exec path is cri.
    pub cri_socket: Option<PathBuf>,
    pub kube_requests_percent: u32,
    /// Namespace of the node Lease (kubernetes backend), when one is held.
    pub kube_lease_namespace: Option<String>,
    /// Holder identity for the node Lease.
    pub kube_pod_name: String,
    pub db_limits: Limits,
    pub web_limits: Limits,
    pub reset_method: ResetMethod,
    pub coordinator_url: Option<String>,
    /// The PEM bytes of `--coordinator-ca`, read at start.
    pub coordinator_ca: Option<Vec<u8>>,
    pub push_interval: Duration,
    pub reconcile_interval: Duration,
    pub lost_pod_grace: Duration,
    pub pod_labels: Vec<(String, String)>,
    /// Limits of one import archive: bytes, entries.
    pub import_max_bytes: u64,
    pub import_max_entries: u64,
}

/// Every problem found in the configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

fn number<T>(problems: &mut Vec<String>, name: &str, value: &str, min: T, max: T) -> Option<T>
where
    T: FromStr + PartialOrd + fmt::Display + Copy,
{
    match value.trim().parse::<T>() {
        Ok(v) if v >= min && v <= max => Some(v),
        Ok(_) => {
            problems.push(format!(
                "{name} must be between {min} and {max} (got {value:?})"
            ));
            None
        }
        Err(_) => {
            problems.push(format!("{name} must be a whole number (got {value:?})"));
            None
        }
    }
}

/// This machine's host name, lower-cased (from /proc, then $HOSTNAME).
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
}

impl AgentConfig {
    /// Parses flags and environment, then validates.
    pub fn from_args() -> Result<Self, ConfigError> {
        Self::from_raw(RawConfig::parse())
    }

    pub fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        let mut p = Vec::new();

        let node_text = raw
            .node
            .clone()
            .or_else(host_name)
            .unwrap_or_else(|| "localhost".into());
        let node = match node_text.parse::<NodeName>() {
            Ok(n) => Some(n),
            Err(e) => {
                p.push(format!("node: {e} (set --node / CLONEPOOL_NODE)"));
                None
            }
        };
        if raw.image.trim().is_empty() {
            p.push("image must not be empty (set --image / CLONEPOOL_IMAGE)".into());
        }
        let warm_target = number(&mut p, "warm-target", &raw.warm_target, 0u32, 1000);
        let max_pods = number(&mut p, "max-pods", &raw.max_pods, 1u32, 1000);
        if let (Some(w), Some(m)) = (warm_target, max_pods) {
            if w > m {
                p.push(format!("warm-target ({w}) must not exceed max-pods ({m})"));
            }
        }
        let create_parallelism = number(
            &mut p,
            "create-parallelism",
            &raw.create_parallelism,
            1u32,
            64,
        );
        let mut addr = |name: &str, v: &str| match v.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                p.push(format!(
                    "{name} must be an address like 127.0.0.1:7411 (got {v:?})"
                ));
                None
            }
        };
        let api_listen = addr("api-listen", &raw.api_listen);
        let admin_listen = addr("admin-listen", &raw.admin_listen);
        if let (Some(a), Some(b)) = (api_listen, admin_listen) {
            if a == b && a.port() != 0 {
                p.push(format!("api-listen and admin-listen are both {a}"));
            }
        }
        if raw.network.trim().is_empty() {
            p.push("network must not be empty".into());
        }
        let backend = match raw.backend.parse::<Backend>() {
            Ok(b) => Some(b),
            Err(e) => {
                p.push(format!("backend: {e}"));
                None
            }
        };
        let exec_path = match raw.exec_path.parse::<ExecPath>() {
            Ok(path) => Some(path),
            Err(e) => {
                p.push(format!("exec-path: {e}"));
                None
            }
        };
        if backend == Some(Backend::Docker)
            && matches!(exec_path, Some(ExecPath::ApiServer | ExecPath::Cri))
        {
            p.push(format!(
                "exec-path {} needs --backend kubernetes",
                raw.exec_path
            ));
        }
        let cri_socket = (backend == Some(Backend::Kubernetes) && exec_path == Some(ExecPath::Cri))
            .then(|| raw.cri_socket.clone());
        if let Some(socket) = &cri_socket {
            use std::os::unix::fs::FileTypeExt;
            match std::fs::metadata(socket) {
                Ok(meta) if meta.file_type().is_socket() => {}
                Ok(_) => p.push(format!("cri-socket {} is not a socket", socket.display())),
                Err(e) => p.push(format!(
                    "cri-socket {}: {e} (the kubelet's CRI runtime socket: containerd's, or cri-dockerd's)",
                    socket.display()
                )),
            }
        }
        if backend == Some(Backend::Kubernetes) && raw.kube_namespace.parse::<NodeName>().is_err() {
            p.push(format!(
                "kube-namespace must be a DNS label (got {:?})",
                raw.kube_namespace
            ));
        }
        let kube_lease_namespace = Some(raw.kube_lease_namespace.trim().to_string())
            .filter(|ns| !ns.is_empty() && backend == Some(Backend::Kubernetes));
        if let Some(ns) = &kube_lease_namespace {
            if ns.parse::<NodeName>().is_err() {
                p.push(format!(
                    "kube-lease-namespace must be a DNS label (got {ns:?})"
                ));
            }
        }
        let kube_pod_name = raw
            .kube_pod_name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .or_else(host_name)
            .unwrap_or_else(|| "clonepool-agent".into());
        let kube_requests_percent = number(
            &mut p,
            "kube-requests-percent",
            &raw.kube_requests_percent,
            1u32,
            100,
        );
        let db_cpu = number(&mut p, "db-cpu-millis", &raw.db_cpu_millis, 50u64, 64_000);
        let db_mem = number(&mut p, "db-memory-mb", &raw.db_memory_mb, 128u64, 1 << 20);
        let web_cpu = number(&mut p, "web-cpu-millis", &raw.web_cpu_millis, 50u64, 64_000);
        let web_mem = number(&mut p, "web-memory-mb", &raw.web_memory_mb, 64u64, 1 << 20);
        let reset_method = match raw.reset_method.parse::<ResetMethod>() {
            Ok(m) => Some(m),
            Err(e) => {
                p.push(format!("reset-method: {e}"));
                None
            }
        };
        if let Some(url) = &raw.coordinator_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
                p.push(format!(
                    "coordinator-url must be an http(s) URL (got {url:?})"
                ));
            }
        }
        let coordinator_ca = match &raw.coordinator_ca {
            Some(path) => match std::fs::read(path) {
                // reqwest parses lazily, so look for the PEM block before handing it over.
                Ok(pem)
                    if String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----")
                        && reqwest::Certificate::from_pem(&pem).is_ok() =>
                {
                    Some(pem)
                }
                Ok(_) => {
                    p.push(format!(
                        "coordinator-ca {} is not a PEM certificate",
                        path.display()
                    ));
                    None
                }
                Err(e) => {
                    p.push(format!("coordinator-ca {}: {e}", path.display()));
                    None
                }
            },
            None => None,
        };
        let push = number(
            &mut p,
            "push-interval-secs",
            &raw.push_interval_secs,
            1u64,
            3600,
        );
        let reconcile = number(
            &mut p,
            "reconcile-interval-secs",
            &raw.reconcile_interval_secs,
            1u64,
            3600,
        );
        let lost_grace = number(
            &mut p,
            "lost-pod-grace-secs",
            &raw.lost_pod_grace_secs,
            0u64,
            7 * 24 * 3600,
        );
        let import_mb = number(
            &mut p,
            "import-max-mb",
            &raw.import_max_mb,
            1u64,
            1024 * 1024,
        );
        let import_entries = number(
            &mut p,
            "import-max-entries",
            &raw.import_max_entries,
            10u64,
            100_000_000,
        );
        let mut pod_labels = Vec::new();
        for label in raw.pod_labels.iter().filter(|l| !l.trim().is_empty()) {
            match label.split_once('=') {
                Some((k, _)) if RESERVED_LABELS.contains(&k) => p.push(format!(
                    "pod-label key {k:?} is reserved: the agent sets {} itself (other clonepool.* keys, e.g. clonepool.test, are allowed)",
                    RESERVED_LABELS.join(", ")
                )),
                Some((k, v)) if !k.trim().is_empty() => {
                    pod_labels.push((k.to_string(), v.to_string()))
                }
                _ => p.push(format!("pod-label must be key=value (got {label:?})")),
            }
        }

        if !p.is_empty() {
            return Err(ConfigError { problems: p });
        }
        let data_dir = raw.data_dir;
        let token_file = raw.token_file.unwrap_or_else(|| data_dir.join("token"));
        // All `None`s pushed a problem above, so these unwraps cannot fail.
        Ok(AgentConfig {
            data_dir,
            node: node.expect("validated"),
            image: raw.image,
            warm_target: warm_target.expect("validated"),
            max_pods: max_pods.expect("validated"),
            create_parallelism: create_parallelism.expect("validated"),
            api_listen: api_listen.expect("validated"),
            admin_listen: admin_listen.expect("validated"),
            token_file,
            docker_socket: raw.docker_socket.filter(|s| !s.is_empty()),
            network: raw.network,
            backend: backend.expect("validated"),
            kube_namespace: raw.kube_namespace,
            exec_path: exec_path.expect("validated"),
            cri_socket,
            kube_requests_percent: kube_requests_percent.expect("validated"),
            kube_lease_namespace,
            kube_pod_name,
            db_limits: Limits {
                cpu_millis: db_cpu.expect("validated"),
                memory_mb: db_mem.expect("validated"),
            },
            web_limits: Limits {
                cpu_millis: web_cpu.expect("validated"),
                memory_mb: web_mem.expect("validated"),
            },
            reset_method: reset_method.expect("validated"),
            coordinator_url: raw.coordinator_url.filter(|s| !s.is_empty()),
            coordinator_ca,
            push_interval: Duration::from_secs(push.expect("validated")),
            reconcile_interval: Duration::from_secs(reconcile.expect("validated")),
            lost_pod_grace: Duration::from_secs(lost_grace.expect("validated")),
            pod_labels,
            import_max_bytes: import_mb.expect("validated") * 1024 * 1024,
            import_max_entries: import_entries.expect("validated"),
        })
    }

    /// The import route's limits and spool directory.
    pub fn import_config(&self) -> crate::import::ImportConfig {
        let mut cfg = crate::import::ImportConfig::new(&self.data_dir);
        cfg.max_bytes = self.import_max_bytes;
        cfg.max_entries = self.import_max_entries;
        cfg
    }

    /// The Kubernetes backend's settings.
    pub fn kube_settings(&self) -> crate::runtime::kube::KubeSettings {
        crate::runtime::kube::KubeSettings {
            namespace: self.kube_namespace.clone(),
            node: self.node.clone(),
            exec_path: self.exec_path,
            requests_percent: self.kube_requests_percent,
            docker_socket: self.docker_socket.clone(),
            cri_socket: self.cri_socket.clone(),
        }
    }

    /// The SQLite state file.
    pub fn state_file(&self) -> PathBuf {
        self.data_dir.join("agent.sqlite")
    }

    /// The debug socket `clonepoolctl` talks to.
    pub fn ctl_socket(&self) -> PathBuf {
        self.data_dir.join(crate::ctl::SOCKET_NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(args: &[&str]) -> RawConfig {
        let mut all = vec!["clonepool-agent", "--node", "test-node"];
        all.extend_from_slice(args);
        RawConfig::try_parse_from(all).expect("flags parse")
    }

    #[test]
    fn defaults_are_valid() {
        let c = AgentConfig::from_raw(raw(&[])).unwrap();
        assert_eq!(c.warm_target, 2);
        assert_eq!(c.max_pods, 6);
        assert_eq!(c.create_parallelism, 2);
        assert_eq!(c.api_listen.to_string(), "127.0.0.1:7411");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:7412");
        assert_eq!(c.token_file, c.data_dir.join("token"));
        assert_eq!(c.reset_method, DEFAULT_RESET_METHOD);
        assert_eq!(c.node.as_str(), "test-node");
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let err = AgentConfig::from_raw(raw(&[
            "--warm-target",
            "lots",
            "--max-pods",
            "0",
            "--api-listen",
            "nowhere",
            "--reset-method",
            "magic",
            "--coordinator-url",
            "ftp://x",
        ]))
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "warm-target",
            "max-pods",
            "api-listen",
            "reset-method",
            "coordinator-url",
        ] {
            assert!(text.contains(needle), "{needle} missing from: {text}");
        }
        assert_eq!(err.problems.len(), 5, "{text}");
    }

    #[test]
    fn a_coordinator_ca_that_is_missing_or_not_pem_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let missing = dir.path().join("missing.pem");
        for (path, expected) in [
            (&not_pem, "is not a PEM certificate"),
            (&missing, "No such file"),
        ] {
            let err = AgentConfig::from_raw(raw(&["--coordinator-ca", path.to_str().unwrap()]))
                .unwrap_err();
            let text = err.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains(expected), "{text}");
        }
    }

    #[test]
    fn warm_target_above_max_pods_is_refused() {
        let err =
            AgentConfig::from_raw(raw(&["--warm-target", "5", "--max-pods", "3"])).unwrap_err();
        assert!(
            err.to_string().contains("must not exceed max-pods"),
            "{err}"
        );
    }

    #[test]
    fn a_pod_label_with_a_key_the_agent_sets_is_refused_as_reserved() {
        for key in RESERVED_LABELS {
            let label = format!("{key}=x");
            let err = AgentConfig::from_raw(raw(&["--pod-label", &label])).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("reserved") && text.contains(key),
                "{key}: {text}"
            );
            assert!(!text.contains("must be key=value"), "{text}");
        }
        let err = AgentConfig::from_raw(raw(&["--pod-label", "novalue"])).unwrap_err();
        assert!(err.to_string().contains("must be key=value"), "{err}");
        let ok = AgentConfig::from_raw(raw(&[
            "--pod-label",
            "clonepool.test=true",
            "--pod-label",
            "team=web",
        ]))
        .unwrap();
        assert_eq!(
            ok.pod_labels,
            vec![
                ("clonepool.test".to_string(), "true".to_string()),
                ("team".to_string(), "web".to_string())
            ]
        );
    }

    #[test]
    fn lost_pods_are_kept_fifteen_minutes_by_default_and_the_grace_is_checked() {
        let c = AgentConfig::from_raw(raw(&[])).unwrap();
        assert_eq!(c.lost_pod_grace, Duration::from_secs(900));
        let c = AgentConfig::from_raw(raw(&["--lost-pod-grace-secs", "0"])).unwrap();
        assert_eq!(c.lost_pod_grace, Duration::ZERO);
        let err = AgentConfig::from_raw(raw(&["--lost-pod-grace-secs", "soon"])).unwrap_err();
        assert!(err.to_string().contains("lost-pod-grace-secs"), "{err}");
    }

    #[test]
    fn import_limits_default_to_2_gib_and_200000_entries_and_are_checked() {
        let c = AgentConfig::from_raw(raw(&[])).unwrap();
        assert_eq!(c.import_config().max_bytes, 2 * 1024 * 1024 * 1024);
        assert_eq!(c.import_config().max_entries, 200_000);
        let c = AgentConfig::from_raw(raw(&["--import-max-mb", "5", "--import-max-entries", "50"]))
            .unwrap();
        assert_eq!(
            (c.import_max_bytes, c.import_max_entries),
            (5 * 1024 * 1024, 50)
        );
        let err =
            AgentConfig::from_raw(raw(&["--import-max-mb", "0", "--import-max-entries", "x"]))
                .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("import-max-mb") && text.contains("import-max-entries"),
            "{text}"
        );
    }

    #[test]
    fn the_backend_is_docker_by_default_and_kubernetes_takes_a_namespace_and_exec_path() {
        let c = AgentConfig::from_raw(raw(&[])).unwrap();
        assert_eq!(c.backend, Backend::Docker);
        assert_eq!(c.exec_path, ExecPath::Runtime);
        let c = AgentConfig::from_raw(raw(&[
            "--backend",
            "kubernetes",
            "--kube-namespace",
            "clones",
            "--exec-path",
            "apiserver",
            "--kube-requests-percent",
            "25",
            "--kube-lease-namespace",
            "clonepool",
            "--kube-pod-name",
            "agent-x1",
        ]))
        .unwrap();
        assert_eq!(c.backend, Backend::Kubernetes);
        assert_eq!(c.kube_lease_namespace.as_deref(), Some("clonepool"));
        assert_eq!(c.kube_pod_name, "agent-x1");
        // Docker mode holds no Lease, whatever is set.
        let docker = AgentConfig::from_raw(raw(&["--kube-lease-namespace", "clonepool"])).unwrap();
        assert_eq!(docker.kube_lease_namespace, None);
        let kube = c.kube_settings();
        assert_eq!(kube.namespace, "clones");
        assert_eq!(kube.node.as_str(), "test-node");
        assert_eq!(kube.exec_path, ExecPath::ApiServer);
        assert_eq!(kube.requests_percent, 25);
    }

    #[test]
    fn a_bad_backend_namespace_or_exec_path_is_refused_by_name() {
        let err = AgentConfig::from_raw(raw(&["--backend", "podman"])).unwrap_err();
        assert!(err.to_string().contains("backend"), "{err}");
        let err = AgentConfig::from_raw(raw(&[
            "--backend",
            "kubernetes",
            "--kube-namespace",
            "Not_A_Label",
            "--exec-path",
            "ssh",
            "--kube-requests-percent",
            "0",
        ]))
        .unwrap_err();
        let text = err.to_string();
        for needle in ["kube-namespace", "exec-path", "kube-requests-percent"] {
            assert!(text.contains(needle), "{needle} missing from: {text}");
        }
        // The API server's exec and the CRI exist only in Kubernetes.
        for path in ["apiserver", "cri"] {
            let err = AgentConfig::from_raw(raw(&["--exec-path", path])).unwrap_err();
            assert!(
                err.to_string().contains("needs --backend kubernetes"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_cri_exec_path_takes_an_existing_runtime_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let kube = |extra: &[&str]| {
            let mut args = vec!["--backend", "kubernetes", "--exec-path", "cri"];
            args.extend_from_slice(extra);
            AgentConfig::from_raw(raw(&args))
        };
        let c = kube(&["--cri-socket", socket.to_str().unwrap()]).unwrap();
        assert_eq!(c.exec_path, ExecPath::Cri);
        assert_eq!(
            c.kube_settings().cri_socket.as_deref(),
            Some(socket.as_path())
        );
        // Other exec paths carry no socket.
        let runtime = AgentConfig::from_raw(raw(&["--backend", "kubernetes"])).unwrap();
        assert_eq!(runtime.kube_settings().cri_socket, None);

        let missing = dir.path().join("missing.sock");
        let err = kube(&["--cri-socket", missing.to_str().unwrap()]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("cri-socket") && text.contains("missing.sock"),
            "{text}"
        );
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"").unwrap();
        let err = kube(&["--cri-socket", file.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("is not a socket"), "{err}");
    }

    #[test]
    fn a_node_name_that_is_not_a_dns_label_is_refused() {
        let r = RawConfig::try_parse_from(["clonepool-agent", "--node", "Bad_Node"]).unwrap();
        let err = AgentConfig::from_raw(r).unwrap_err();
        assert!(err.to_string().contains("node"), "{err}");
    }
}
