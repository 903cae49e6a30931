//! Turning a pod id into a WARM pod: create and start it through the runtime, set up the database
//! and WordPress with fresh secrets, snapshot the pristine state, wait until it is *really* ready
//! (MariaDB answers a query, WordPress answers HTTP 200) and take its pristine fingerprint.
//! Also owns the readiness check itself ([`SiteProbe`], [`PodHealth`]).

use crate::fingerprint::Fingerprint;
use crate::pod_commands::{PodCommandError, PodCommands};
use crate::runtime::{ContainerLimits, PodSpec, RuntimeError};
use crate::secrets::{Secret, PASSWORD_LEN};
use async_trait::async_trait;
use clonepool_common::ids::{NodeName, PodId};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Asks a pod's WordPress over HTTP whether it answers. A trait so unit tests (whose fake pods
/// have no network) can stand in for it.
#[async_trait]
pub trait SiteProbe: Send + Sync + 'static {
    /// `Ok` when `GET {endpoint}/` answers 200 (redirects do not count).
    async fn check(&self, endpoint: &str) -> Result<(), String>;
}

/// The real probe: reqwest, no redirects, short timeouts.
#[derive(Debug, Clone)]
pub struct HttpSiteProbe {
    client: reqwest::Client,
}

impl HttpSiteProbe {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()
            .expect("a reqwest client with static settings");
        Self { client }
    }
}

impl Default for HttpSiteProbe {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl SiteProbe for HttpSiteProbe {
    async fn check(&self, endpoint: &str) -> Result<(), String> {
        let url = format!("{}/", endpoint.trim_end_matches('/'));
        match self.client.get(&url).send().await {
            Ok(resp) if resp.status() == reqwest::StatusCode::OK => Ok(()),
            Ok(resp) => Err(format!("GET {url} answered {}", resp.status())),
            Err(e) => Err(format!("GET {url}: {e}")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Command(#[from] PodCommandError),
    #[error("pod {0} has no address after start")]
    NoAddress(PodId),
    #[error("pod not ready within {timeout:?}: {last}")]
    NotReady { timeout: Duration, last: String },
}

impl ProvisionError {
    pub fn is_runtime_unreachable(&self) -> bool {
        match self {
            ProvisionError::Runtime(RuntimeError::Unreachable(_)) => true,
            ProvisionError::Command(c) => c.is_runtime_unreachable(),
            _ => false,
        }
    }
}

/// The readiness check: MariaDB answers a query and WordPress answers HTTP 200.
#[derive(Clone)]
pub struct PodHealth {
    pub commands: PodCommands,
    pub probe: Arc<dyn SiteProbe>,
}

impl std::fmt::Debug for PodHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PodHealth")
    }
}

impl PodHealth {
    /// One check of both.
    pub async fn check(&self, pod: &PodId, endpoint: &str) -> Result<(), String> {
        let (db, web) = tokio::join!(self.commands.db_answers(pod), self.probe.check(endpoint));
        db.map_err(|e| e.to_string())?;
        web
    }

    /// Checks until both answer or `timeout` passes. WordPress only: `db_checked` skips the
    /// database when the caller just saw it answer.
    pub async fn wait_ready(
        &self,
        pod: &PodId,
        endpoint: &str,
        timeout: Duration,
        db_checked: bool,
    ) -> Result<(), ProvisionError> {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(25);
        loop {
            let result = if db_checked {
                self.probe.check(endpoint).await
            } else {
                self.check(pod, endpoint).await
            };
            match result {
                Ok(()) => return Ok(()),
                Err(last) if Instant::now() + delay >= deadline => {
                    return Err(ProvisionError::NotReady { timeout, last })
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(250));
                }
            }
        }
    }
}

/// What a pod is created from.
#[derive(Debug, Clone)]
pub struct PodTemplate {
    pub node: NodeName,
    pub image: String,
    pub network: String,
    pub db_limits: ContainerLimits,
    pub web_limits: ContainerLimits,
    pub labels: BTreeMap<String, String>,
}

/// A provisioned pod: where it answers and its pristine fingerprint.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub endpoint: String,
    pub fingerprint: Fingerprint,
}

/// Creates pods up to WARM.
#[derive(Debug, Clone)]
pub struct Provisioner {
    pub template: PodTemplate,
    pub health: PodHealth,
    pub ready_timeout: Duration,
}

/// A fresh pod id: `cp-` and 12 random hex digits.
pub fn new_pod_id() -> PodId {
    let bytes: [u8; 6] = rand::random();
    format!("cp-{}", hex::encode(bytes))
        .parse()
        .expect("cp-<hex> is a DNS label")
}

/// `http://{ip}:80` for an address (IPv6 in brackets).
pub fn endpoint_for(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => format!("http://{v4}:80"),
        std::net::IpAddr::V6(v6) => format!("http://[{v6}]:80"),
    }
}

/// The site URL of a pristine pod: its own address (so WordPress answers GET / with 200).
pub fn pristine_site_url(endpoint: &str) -> String {
    endpoint.trim_end_matches(":80").to_string()
}

impl Provisioner {
    fn commands(&self) -> &PodCommands {
        &self.health.commands
    }

    /// Creates, starts and sets up pod `pod_id`. The caller removes the pod on error.
    pub async fn provision(&self, pod_id: &PodId) -> Result<Provisioned, ProvisionError> {
        let started = Instant::now();
        let runtime = self.commands().runtime().clone();
        let spec = PodSpec {
            pod_id: pod_id.clone(),
            node: self.template.node.clone(),
            image: self.template.image.clone(),
            network: self.template.network.clone(),
            db_limits: self.template.db_limits.clone(),
            web_limits: self.template.web_limits.clone(),
            labels: self.template.labels.clone(),
        };
        runtime.create_pod(&spec).await?;
        let info = runtime.start_pod(pod_id).await?;
        let ip = info
            .ip
            .ok_or_else(|| ProvisionError::NoAddress(pod_id.clone()))?;
        let endpoint = endpoint_for(ip);
        let site_url = pristine_site_url(&endpoint);

        let db_password = Secret::generate(PASSWORD_LEN);
        let admin_password = Secret::generate(PASSWORD_LEN);
        let (db, web) = tokio::join!(
            self.commands().db_setup(pod_id, &db_password),
            self.commands().wp_config(pod_id, &db_password, &site_url)
        );
        db?;
        web?;
        self.commands()
            .wp_install(pod_id, &site_url, &admin_password)
            .await?;
        // Ready first: WordPress adds a few options on its first request; the pristine copies
        // must hold them, or every reset would differ from the fingerprint.
        self.health
            .wait_ready(pod_id, &endpoint, self.ready_timeout, false)
            .await?;
        self.commands().snapshot_pristine(pod_id).await?;
        let fingerprint = self.commands().fingerprint(pod_id).await?;
        tracing::debug!(pod = %pod_id, elapsed_ms = started.elapsed().as_millis() as u64, "pod provisioned");
        Ok(Provisioned {
            endpoint,
            fingerprint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ids_are_fresh_labels() {
        let a = new_pod_id();
        assert!(a.as_str().starts_with("cp-") && a.as_str().len() == 15);
        assert_ne!(a, new_pod_id());
    }

    #[test]
    fn endpoints_and_site_urls() {
        let e = endpoint_for("172.18.0.5".parse().unwrap());
        assert_eq!(e, "http://172.18.0.5:80");
        assert_eq!(pristine_site_url(&e), "http://172.18.0.5");
    }
}
