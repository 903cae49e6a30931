//! The coordinator's one typed configuration: command-line flags and `CLONEPOOL_*` environment
//! variables (clap), with every bad value reported at once by [`Config::validate`].

use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Environment variable holding API tokens (comma-separated) instead of, or besides, the token file.
pub const API_TOKEN_ENV: &str = "CLONEPOOL_API_TOKEN";

/// How the coordinator runs (see coordinator/README.md, "Kubernetes mode").
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Agents from `--agent-url`; clones reached through the edge proxy; cold pods made by agents.
    Standalone,
    /// Agents found through the API server; a Service + Ingress per clone; cold clones are
    /// Deployments the coordinator creates.
    Kubernetes,
}

/// How the router chooses among agents that have a warm pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Placement {
    /// The agent with the most warm pods first (spreads clones over nodes).
    Spread,
    /// The agent with the fewest (but some) warm pods first (fills one node before the next).
    Pack,
}

#[derive(Clone, Parser)]
#[command(
    name = "clonepool-coordinator",
    version,
    about = "The clonepool coordinator: HTTPS API, durable jobs, routing to warm pods, TTL, edge proxy"
)]
pub struct Config {
    /// Where the coordinator keeps its state (SQLite), generated TLS files and API token.
    #[arg(
        long,
        env = "CLONEPOOL_DATA_DIR",
        default_value = ".clonepool/coordinator"
    )]
    pub data_dir: PathBuf,

    /// HTTPS API listen address.
    #[arg(long, env = "CLONEPOOL_LISTEN", default_value = "127.0.0.1:7401")]
    pub listen: SocketAddr,

    /// Plain-HTTP admin listen address (/healthz, /livez, /readyz, /metrics).
    #[arg(long, env = "CLONEPOOL_ADMIN_LISTEN", default_value = "127.0.0.1:7402")]
    pub admin_listen: SocketAddr,

    /// Plain-HTTP edge proxy listen address (standalone clone URLs).
    #[arg(long, env = "CLONEPOOL_EDGE_LISTEN", default_value = "127.0.0.1:8080")]
    pub edge_listen: SocketAddr,

    /// Domain under which clones are reached: `http://{clone}.{edge_domain}:{edge port}`.
    #[arg(long, env = "CLONEPOOL_EDGE_DOMAIN", default_value = "localhost")]
    pub edge_domain: String,

    /// Port written into clone URLs (default: the edge listener's port).
    #[arg(long, env = "CLONEPOOL_EDGE_PUBLIC_PORT")]
    pub edge_public_port: Option<u16>,

    /// PEM certificate chain for the API (default: generated under the data dir with a local CA).
    #[arg(long, env = "CLONEPOOL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "CLONEPOOL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// File of API bearer tokens, one per line (default: `{data_dir}/api-token`, generated 0600
    /// on first start when no token is configured). `CLONEPOOL_API_TOKEN` adds tokens.
    #[arg(long, env = "CLONEPOOL_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,

    /// API tokens from `CLONEPOOL_API_TOKEN` (never from argv: read in [`Config::from_env_and_args`]).
    #[arg(skip)]
    pub api_tokens_from_env: Vec<String>,

    /// Agent base URLs (comma-separated or repeated).
    #[arg(
        long = "agent-url",
        env = "CLONEPOOL_AGENT_URLS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7411"
    )]
    pub agent_urls: Vec<String>,

    /// File holding the bearer token the agents accept (and push capacity with).
    #[arg(
        long,
        env = "CLONEPOOL_AGENT_TOKEN_FILE",
        default_value = ".clonepool/agent/token"
    )]
    pub agent_token_file: PathBuf,

    /// How a clone picks among agents with warm pods.
    #[arg(long, env = "CLONEPOOL_PLACEMENT", value_enum, default_value_t = Placement::Spread)]
    pub placement: Placement,

    /// Jobs run at the same time.
    #[arg(long, env = "CLONEPOOL_MAX_CONCURRENT_JOBS", default_value_t = 8)]
    pub max_concurrent_jobs: usize,

    /// Pending jobs accepted before new ones are refused with 429.
    #[arg(long, env = "CLONEPOOL_MAX_QUEUED_JOBS", default_value_t = 1000)]
    pub max_queued_jobs: u32,

    /// Attempts per job for transient failures (agent unreachable, no capacity yet).
    #[arg(long, env = "CLONEPOOL_JOB_MAX_ATTEMPTS", default_value_t = 3)]
    pub job_max_attempts: u32,

    /// First retry delay in milliseconds; doubles with each attempt.
    #[arg(long, env = "CLONEPOOL_RETRY_BACKOFF_MS", default_value_t = 1000)]
    pub retry_backoff_ms: u64,

    /// How often each agent's capacity is polled (heartbeat), in milliseconds.
    #[arg(long, env = "CLONEPOOL_CAPACITY_POLL_MS", default_value_t = 1000)]
    pub capacity_poll_ms: u64,

    /// An agent not heard from for this long (milliseconds) is marked down.
    #[arg(long, env = "CLONEPOOL_AGENT_STALE_MS", default_value_t = 5000)]
    pub agent_stale_ms: u64,

    /// Timeout of one agent call (a cold claim creates a pod), in seconds.
    #[arg(long, env = "CLONEPOOL_AGENT_TIMEOUT_SECS", default_value_t = 120)]
    pub agent_timeout_secs: u64,

    /// How often the TTL reaper looks for expired clones, in milliseconds.
    #[arg(long, env = "CLONEPOOL_REAPER_INTERVAL_MS", default_value_t = 1000)]
    pub reaper_interval_ms: u64,

    /// Clone lifetime when a request names none, in minutes.
    #[arg(long, env = "CLONEPOOL_DEFAULT_TTL_MINUTES", default_value_t = clonepool_common::api::DEFAULT_TTL_MINUTES)]
    pub default_ttl_minutes: u32,

    /// Length of one TTL minute in milliseconds: 60000. Only tests and compressed soak runs
    /// change it.
    #[arg(
        long,
        env = "CLONEPOOL_TTL_MINUTE_MS",
        default_value_t = 60_000,
        hide = true
    )]
    pub ttl_minute_ms: u64,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "CLONEPOOL_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Hosts that source/target URLs may name even when they resolve to internal addresses
    /// (exact names, IP literals, or `*.suffix`), comma-separated.
    #[arg(
        long = "url-allow-host",
        env = "CLONEPOOL_URL_ALLOW_HOSTS",
        value_delimiter = ','
    )]
    pub url_allow_hosts: Vec<String>,

    /// Refuse source/target URLs whose host does not resolve when the request arrives
    /// (default: accept them; every fetch is checked again).
    #[arg(long, env = "CLONEPOOL_URL_REJECT_UNRESOLVABLE")]
    pub url_reject_unresolvable: bool,

    /// Clone jobs copy their source site: log in to it, export it through the clonepool migrator
    /// plugin and import it into the claimed pod. `false`: a clone is the pod's fresh WordPress
    /// (for measuring the pool itself).
    #[arg(long, env = "CLONEPOOL_SOURCE_IMPORT", default_value_t = true, action = clap::ArgAction::Set)]
    pub source_import: bool,

    /// How long a URL's host may take to resolve during request validation, in milliseconds.
    #[arg(long, env = "CLONEPOOL_DNS_TIMEOUT_MS", default_value_t = 2000)]
    pub dns_timeout_ms: u64,

    /// Extra host names or IPs for the generated server certificate (comma-separated).
    #[arg(
        long = "tls-extra-name",
        env = "CLONEPOOL_TLS_EXTRA_NAMES",
        value_delimiter = ','
    )]
    pub tls_extra_names: Vec<String>,

    /// Log format.
    #[arg(long, env = "CLONEPOOL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Standalone (agents from `--agent-url`, the edge proxy) or kubernetes (agents discovered
    /// through the API server, a Service + Ingress per clone, cold clones as Deployments).
    #[arg(long, env = "CLONEPOOL_MODE", value_enum, default_value_t = Mode::Standalone)]
    pub mode: Mode,

    #[command(flatten)]
    pub kube: KubeConfig,
}

/// Settings of `--mode kubernetes` (ignored in standalone mode).
#[derive(Debug, Clone, clap::Args)]
pub struct KubeConfig {
    /// Kubeconfig file to reach the API server (default: `KUBECONFIG`, `~/.kube/config`, or the
    /// Pod's service account when running in a cluster).
    #[arg(long = "kubeconfig", env = "CLONEPOOL_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Namespace the agents run in (default: the service account's or kubeconfig's namespace).
    #[arg(long = "kube-namespace", env = "CLONEPOOL_KUBE_NAMESPACE")]
    pub namespace: Option<String>,

    /// Namespace of the clone Pods, their Services and Ingresses, and the cold Deployments
    /// (default: `--kube-namespace`).
    #[arg(
        long = "kube-clones-namespace",
        env = "CLONEPOOL_KUBE_CLONES_NAMESPACE"
    )]
    pub clones_namespace: Option<String>,

    /// Label selector of the agent Pods.
    #[arg(
        long = "kube-agent-selector",
        env = "CLONEPOOL_KUBE_AGENT_SELECTOR",
        default_value = "app.kubernetes.io/name=clonepool,app.kubernetes.io/component=agent"
    )]
    pub agent_selector: String,

    /// Port of the agent API on each agent Pod's IP.
    #[arg(
        long = "kube-agent-port",
        env = "CLONEPOOL_KUBE_AGENT_PORT",
        default_value_t = 7411
    )]
    pub agent_port: u16,

    /// Clones are reached at `{clone}.{base_domain}` through the cluster's Ingress.
    #[arg(long = "base-domain", env = "CLONEPOOL_BASE_DOMAIN")]
    pub base_domain: Option<String>,

    /// `ingressClassName` of the clones' Ingresses (default: the cluster's default class).
    #[arg(long = "ingress-class", env = "CLONEPOOL_INGRESS_CLASS")]
    pub ingress_class: Option<String>,

    /// TLS secret (in the clones namespace) for the clones' Ingresses, e.g. a wildcard
    /// certificate for `*.{base_domain}`. Set: clone URLs are `https://`; unset: `http://`.
    #[arg(long = "ingress-tls-secret", env = "CLONEPOOL_INGRESS_TLS_SECRET")]
    pub ingress_tls_secret: Option<String>,

    /// Workload image of cold clones (the agents' pod image).
    #[arg(long = "kube-image", env = "CLONEPOOL_IMAGE")]
    pub image: Option<String>,

    /// `imagePullPolicy` of the cold clones' containers.
    #[arg(
        long = "kube-image-pull-policy",
        env = "CLONEPOOL_KUBE_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub image_pull_policy: String,

    /// Cold clones (Deployments) alive at the same time, at most.
    #[arg(
        long = "kube-cold-max",
        env = "CLONEPOOL_KUBE_COLD_MAX",
        default_value_t = 10
    )]
    pub cold_max: u32,

    /// How long a cold clone's Pod may take to become Ready, in seconds.
    #[arg(
        long = "kube-cold-ready-timeout-secs",
        env = "CLONEPOOL_KUBE_COLD_READY_TIMEOUT_SECS",
        default_value_t = 300
    )]
    pub cold_ready_timeout_secs: u64,

    /// CPU limit of each cold container (db and web), in thousandths of a core; requests are a
    /// quarter of the limits.
    #[arg(
        long = "kube-cold-cpu-millis",
        env = "CLONEPOOL_KUBE_COLD_CPU_MILLIS",
        default_value_t = 1000
    )]
    pub cold_cpu_millis: u32,

    /// Memory limit of each cold container (db and web), in MiB.
    #[arg(
        long = "kube-cold-memory-mb",
        env = "CLONEPOOL_KUBE_COLD_MEMORY_MB",
        default_value_t = 384
    )]
    pub cold_memory_mb: u32,

    /// Leader election between replicas: the Lease (in `--kube-namespace`) that only the serving
    /// replica holds. The others wait as standbys (`/livez` ok, `/readyz` 503 naming the
    /// leader) and never open the state. Unset: no election (run exactly one replica).
    #[arg(long = "kube-leader-lease", env = "CLONEPOOL_KUBE_LEADER_LEASE")]
    pub leader_lease: Option<String>,

    /// This replica's identity as the leader Lease's holder (the chart passes its Pod's name;
    /// default: the host name, which is the Pod's name in a cluster).
    #[arg(long = "kube-leader-identity", env = "CLONEPOOL_KUBE_LEADER_IDENTITY")]
    pub leader_identity: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl std::fmt::Debug for Config {
    // Tokens never reach logs: only their count is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("edge_listen", &self.edge_listen)
            .field("edge_domain", &self.edge_domain)
            .field("api_token_file", &self.api_token_file)
            .field("api_tokens_from_env", &self.api_tokens_from_env.len())
            .field("agent_urls", &self.agent_urls)
            .field("agent_token_file", &self.agent_token_file)
            .field("placement", &self.placement)
            .field("max_concurrent_jobs", &self.max_concurrent_jobs)
            .field("max_queued_jobs", &self.max_queued_jobs)
            .field("mode", &self.mode)
            .field("kube", &self.kube)
            .finish_non_exhaustive()
    }
}

/// Every problem found in a configuration, reported together.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl Config {
    /// Parses argv and the environment, including tokens from `CLONEPOOL_API_TOKEN`.
    pub fn from_env_and_args() -> Self {
        let mut config = Config::parse();
        config.api_tokens_from_env = std::env::var(API_TOKEN_ENV)
            .map(|value| split_tokens(&value))
            .unwrap_or_default();
        config
    }

    /// A configuration with every default and the given data dir, for embedding and tests.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut config = Config::parse_from(["clonepool-coordinator"]);
        config.data_dir = data_dir.into();
        config
    }

    /// The token file actually used.
    pub fn api_token_path(&self) -> PathBuf {
        self.api_token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("api-token"))
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("coordinator.sqlite")
    }

    pub fn capacity_poll(&self) -> Duration {
        Duration::from_millis(self.capacity_poll_ms)
    }

    pub fn agent_stale(&self) -> Duration {
        Duration::from_millis(self.agent_stale_ms)
    }

    pub fn agent_timeout(&self) -> Duration {
        Duration::from_secs(self.agent_timeout_secs)
    }

    pub fn reaper_interval(&self) -> Duration {
        Duration::from_millis(self.reaper_interval_ms)
    }

    /// Checks every value and reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use clonepool_common::api::{MAX_TTL_MINUTES, MIN_TTL_MINUTES};
        let mut problems = Vec::new();
        if self.mode == Mode::Standalone && self.agent_urls.is_empty() {
            problems.push("at least one --agent-url is needed".to_string());
        }
        if self.mode == Mode::Kubernetes {
            self.kube.check(&mut problems);
        } else if self.kube.leader_lease.is_some() {
            problems.push(
                "--kube-leader-lease needs --mode kubernetes (the Lease lives in the API server)"
                    .to_string(),
            );
        }
        for url in &self.agent_urls {
            match reqwest::Url::parse(url) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                Ok(_) => problems.push(format!("--agent-url {url:?} must be http(s)")),
                Err(err) => problems.push(format!("--agent-url {url:?} is not a URL: {err}")),
            }
        }
        if self.max_concurrent_jobs == 0 {
            problems.push("--max-concurrent-jobs must be at least 1".into());
        }
        if self.max_queued_jobs == 0 {
            problems.push("--max-queued-jobs must be at least 1".into());
        }
        if !(1..=10).contains(&self.job_max_attempts) {
            problems.push(format!(
                "--job-max-attempts is {}; it must be 1..=10",
                self.job_max_attempts
            ));
        }
        if self.capacity_poll_ms == 0 || self.reaper_interval_ms == 0 {
            problems.push("--capacity-poll-ms and --reaper-interval-ms must be positive".into());
        }
        if self.agent_stale_ms <= self.capacity_poll_ms {
            problems.push(format!(
                "--agent-stale-ms ({}) must be longer than --capacity-poll-ms ({})",
                self.agent_stale_ms, self.capacity_poll_ms
            ));
        }
        if self.agent_timeout_secs == 0 {
            problems.push("--agent-timeout-secs must be positive".into());
        }
        if !(MIN_TTL_MINUTES..=MAX_TTL_MINUTES).contains(&self.default_ttl_minutes) {
            problems.push(format!(
                "--default-ttl-minutes is {}; it must be {MIN_TTL_MINUTES}..={MAX_TTL_MINUTES}",
                self.default_ttl_minutes
            ));
        }
        if self.ttl_minute_ms == 0 {
            problems.push("--ttl-minute-ms must be positive".into());
        }
        if self.max_body_bytes < 1024 {
            problems.push("--max-body-bytes must be at least 1024".into());
        }
        let domain = self.edge_domain.trim_matches('.');
        if domain.is_empty()
            || !domain
                .split('.')
                .all(|label| clonepool_common::ids::validate_dns_label("domain", label, 63).is_ok())
        {
            problems.push(format!(
                "--edge-domain {:?} must be a lower-case DNS name",
                self.edge_domain
            ));
        }
        if let Some(path) = &self.tls_cert {
            if !path.is_file() {
                problems.push(format!("--tls-cert {} does not exist", path.display()));
            }
        }
        if let Some(path) = &self.tls_key {
            if !path.is_file() {
                problems.push(format!("--tls-key {} does not exist", path.display()));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

impl KubeConfig {
    /// Problems of a kubernetes-mode configuration.
    fn check(&self, problems: &mut Vec<String>) {
        let is_dns_name = |name: &str| {
            !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|label| {
                    clonepool_common::ids::validate_dns_label("name", label, 63).is_ok()
                })
        };
        match self.base_domain.as_deref().map(|d| d.trim_matches('.')) {
            None | Some("") => {
                problems.push("--base-domain is needed in kubernetes mode".to_string())
            }
            Some(domain) if !is_dns_name(domain) => problems.push(format!(
                "--base-domain {domain:?} must be a lower-case DNS name"
            )),
            Some(_) => {}
        }
        if self.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
            problems.push(
                "--kube-image (CLONEPOOL_IMAGE) is needed in kubernetes mode: cold clones run it"
                    .to_string(),
            );
        }
        for (flag, value) in [
            ("--kube-namespace", &self.namespace),
            ("--kube-clones-namespace", &self.clones_namespace),
        ] {
            if let Some(ns) = value {
                if clonepool_common::ids::validate_dns_label("namespace", ns, 63).is_err() {
                    problems.push(format!("{flag} {ns:?} is not a namespace name"));
                }
            }
        }
        for (flag, value) in [
            ("--ingress-class", &self.ingress_class),
            ("--ingress-tls-secret", &self.ingress_tls_secret),
        ] {
            if let Some(name) = value {
                if !is_dns_name(name) {
                    problems.push(format!("{flag} {name:?} is not an object name"));
                }
            }
        }
        if self.agent_selector.trim().is_empty() {
            problems.push("--kube-agent-selector must not be empty".to_string());
        }
        if self.agent_port == 0 {
            problems.push("--kube-agent-port must be positive".to_string());
        }
        if !matches!(
            self.image_pull_policy.as_str(),
            "Always" | "IfNotPresent" | "Never"
        ) {
            problems.push(format!(
                "--kube-image-pull-policy {:?} must be Always, IfNotPresent or Never",
                self.image_pull_policy
            ));
        }
        if let Some(lease) = &self.leader_lease {
            if !is_dns_name(lease) {
                problems.push(format!(
                    "--kube-leader-lease {lease:?} is not an object name"
                ));
            }
        }
        if let Some(identity) = &self.leader_identity {
            if identity.trim().is_empty() || identity.len() > 253 {
                problems.push(
                    "--kube-leader-identity must be 1 to 253 characters (a Pod name)".to_string(),
                );
            }
        }
        if self.cold_ready_timeout_secs == 0 {
            problems.push("--kube-cold-ready-timeout-secs must be positive".to_string());
        }
        if self.cold_cpu_millis < 50 || self.cold_memory_mb < 128 {
            problems.push(
                "--kube-cold-cpu-millis must be at least 50 and --kube-cold-memory-mb at least 128"
                    .to_string(),
            );
        }
    }

    /// The base domain without surrounding dots (validated: set in kubernetes mode).
    pub fn domain(&self) -> String {
        self.base_domain
            .as_deref()
            .unwrap_or("")
            .trim_matches('.')
            .to_string()
    }

    /// `https` when the Ingresses carry a TLS secret, else `http`.
    pub fn clone_scheme(&self) -> &'static str {
        if self.ingress_tls_secret.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// Splits a comma/newline separated token list, dropping blanks.
pub fn split_tokens(value: &str) -> Vec<String> {
    value
        .split([',', '\n'])
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::with_data_dir("/tmp/x").validate().unwrap();
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let mut config = Config::with_data_dir("/tmp/x");
        config.agent_urls = vec!["ftp://a".into()];
        config.max_concurrent_jobs = 0;
        config.default_ttl_minutes = 2;
        config.edge_domain = "Not A Domain".into();
        let err = config.validate().unwrap_err();
        assert_eq!(err.problems.len(), 4, "{err}");
    }

    #[test]
    fn kubernetes_mode_needs_a_base_domain_and_an_image_and_reports_both() {
        let mut config = Config::with_data_dir("/tmp/x");
        config.mode = Mode::Kubernetes;
        // scripts/test exports CLONEPOOL_IMAGE, which the config reads: this test wants none.
        config.kube.image = None;
        config.kube.base_domain = None;
        config.kube.image_pull_policy = "Sometimes".into();
        let err = config.validate().unwrap_err();
        assert_eq!(err.problems.len(), 3, "{err}");
        assert!(err.to_string().contains("--base-domain"), "{err}");
        assert!(err.to_string().contains("CLONEPOOL_IMAGE"), "{err}");
        config.kube.base_domain = Some("clones.example.test".into());
        config.kube.image = Some("clonepool/wordpress:abc".into());
        config.kube.image_pull_policy = "Never".into();
        config.validate().unwrap();
        assert_eq!(config.kube.clone_scheme(), "http");
        config.kube.ingress_tls_secret = Some("wildcard-tls".into());
        assert_eq!(config.kube.clone_scheme(), "https");
    }

    #[test]
    fn the_mode_is_a_flag_and_defaults_to_standalone() {
        assert_eq!(Config::with_data_dir("/tmp/x").mode, Mode::Standalone);
        let config = Config::parse_from(["c", "--mode", "kubernetes", "--base-domain", "d.test"]);
        assert_eq!(config.mode, Mode::Kubernetes);
        assert_eq!(config.kube.domain(), "d.test");
    }

    #[test]
    fn leader_election_needs_kubernetes_mode_and_a_lease_name() {
        let mut config = Config::with_data_dir("/tmp/x");
        config.kube.leader_lease = Some("coordinator-leader".into());
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("needs --mode kubernetes"), "{err}");
        config.mode = Mode::Kubernetes;
        config.kube.base_domain = Some("clones.example.test".into());
        config.kube.image = Some("clonepool/wordpress:abc".into());
        config.validate().unwrap();
        config.kube.leader_lease = Some("Not A Name".into());
        config.kube.leader_identity = Some(" ".into());
        let err = config.validate().unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(err.to_string().contains("--kube-leader-lease"), "{err}");
        assert!(err.to_string().contains("--kube-leader-identity"), "{err}");
    }

    #[test]
    fn debug_output_shows_no_tokens() {
        let mut config = Config::with_data_dir("/tmp/x");
        config.api_tokens_from_env = vec!["sekrit-token-value".into()];
        assert!(!format!("{config:?}").contains("sekrit"));
    }
}
