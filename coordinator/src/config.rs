//! The coordinator's one typed configuration: command-line flags and `CLONEPOOL_*` environment
//! variables (clap), with every bad value reported at once by [`Config::validate`].

use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Environment variable holding API tokens (comma-separated) instead of, or besides, the token file.
pub const API_TOKEN_ENV: &str = "CLONEPOOL_API_TOKEN";

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
        if self.agent_urls.is_empty() {
            problems.push("at least one --agent-url is needed".to_string());
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
    fn debug_output_shows_no_tokens() {
        let mut config = Config::with_data_dir("/tmp/x");
        config.api_tokens_from_env = vec!["sekrit-token-value".into()];
        assert!(!format!("{config:?}").contains("sekrit"));
    }
}
