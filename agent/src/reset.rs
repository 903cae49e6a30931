//! Resetting a used pod back to pristine (the methods behind [`ResetMethod`]) and verifying the
//! result against the pod's pristine fingerprint ([`ResetVerifier`]).

use crate::config::ResetMethod;
use crate::fingerprint::{Fingerprint, Mismatch};
use crate::pod_commands::PodCommandError;
use crate::provision::{pristine_site_url, PodHealth, ProvisionError};
use crate::runtime::RuntimeError;
use crate::secrets::{Secret, PASSWORD_LEN};
use clonepool_common::ids::PodId;
use clonepool_common::pod::ContainerRole;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Command(#[from] PodCommandError),
    #[error(transparent)]
    NotReady(#[from] ProvisionError),
}

impl ResetError {
    /// The runtime could not be reached: the reset may be tried again later.
    pub fn is_runtime_unreachable(&self) -> bool {
        match self {
            ResetError::Runtime(RuntimeError::Unreachable(_)) => true,
            ResetError::Command(c) => c.is_runtime_unreachable(),
            ResetError::NotReady(p) => p.is_runtime_unreachable(),
            _ => false,
        }
    }
}

/// How a reset ended when it ran through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetOutcome {
    /// The pod matches its pristine fingerprint and answers: it may be WARM again.
    Clean,
    /// Something differs from the pristine pod: quarantine it.
    Dirty(Mismatch),
}

/// Compares a pod with its pristine fingerprint, checking it answers at the same time.
#[derive(Debug, Clone)]
pub struct ResetVerifier {
    pub health: PodHealth,
    pub ready_timeout: Duration,
}

impl ResetVerifier {
    /// Waits for WordPress to answer HTTP 200, then takes the pod's fingerprint (whose queries
    /// prove MariaDB answers) and compares. In that order: WordPress creates a few options
    /// (widgets, theme mods) lazily around its first request, and the fingerprint must not race
    /// with it.
    pub async fn verify(
        &self,
        pod: &PodId,
        endpoint: &str,
        pristine: &Fingerprint,
    ) -> Result<ResetOutcome, ResetError> {
        self.health
            .wait_ready(pod, endpoint, self.ready_timeout, true)
            .await?;
        let current = self.health.commands.fingerprint(pod).await?;
        Ok(match pristine.compare(&current) {
            None => ResetOutcome::Clean,
            Some(m) => ResetOutcome::Dirty(m),
        })
    }
}

/// Resets pods with one method and verifies each result.
#[derive(Debug, Clone)]
pub struct Resetter {
    pub method: ResetMethod,
    pub verifier: ResetVerifier,
}

impl Resetter {
    /// Resets `pod` (answering at `endpoint`) and verifies it against `pristine`. Fresh DB
    /// password and salts every time; the admin password becomes unusable until the next claim
    /// sets a fresh one (`reinstall` sets a fresh random one).
    pub async fn reset(
        &self,
        pod: &PodId,
        endpoint: &str,
        pristine: &Fingerprint,
    ) -> Result<ResetOutcome, ResetError> {
        let commands = &self.verifier.health.commands;
        let site_url = pristine_site_url(endpoint);
        let db_password = Secret::generate(PASSWORD_LEN);
        let started = std::time::Instant::now();
        let phase = |name: &str| {
            tracing::debug!(pod = %pod, method = %self.method, phase = name, ms = started.elapsed().as_millis() as u64, "reset phase done");
        };
        let recreate_web = || async {
            let web = async {
                commands
                    .runtime()
                    .recreate_container(pod, ContainerRole::Web)
                    .await?;
                commands.wp_config(pod, &db_password, &site_url).await?;
                Ok::<(), ResetError>(())
            };
            let (db, web) = tokio::join!(commands.reset_database(pod, &db_password, true), web);
            db?;
            web?;
            self.verifier.verify(pod, endpoint, pristine).await
        };
        match self.method {
            ResetMethod::Sql | ResetMethod::Reinstall => {
                let load_pristine = self.method == ResetMethod::Sql;
                let (db, web) = tokio::join!(
                    commands.reset_database(pod, &db_password, load_pristine),
                    commands.reset_web_in_place(pod, &db_password, &site_url)
                );
                db?;
                if let Err(e) = web {
                    if e.is_core_replaced() {
                        // An import replaced WordPress's own files: only a fresh container
                        // from the image undoes that.
                        tracing::info!(pod = %pod, "the clone ran another WordPress core; recreating the web container");
                        return recreate_web().await;
                    }
                    return Err(e.into());
                }
                phase("clean");
                if self.method == ResetMethod::Reinstall {
                    let admin_password = Secret::generate(PASSWORD_LEN);
                    commands.wp_install(pod, &site_url, &admin_password).await?;
                }
                let outcome = self.verifier.verify(pod, endpoint, pristine).await;
                phase("verify");
                outcome
            }
            ResetMethod::RecreateWeb => recreate_web().await,
        }
    }
}
