//! A held `coordination.k8s.io/v1` Lease (feature `kube`): one holder at a time for something
//! that must not have two — an agent's node (`clonepool-agent-<node>`), or the coordinator's
//! leadership when it runs with more than one replica. The holder takes it (waiting while another
//! live holder has it), renews it every third of its duration, stops when it finds another
//! holder, and clears its holder on a graceful shutdown so a successor takes over at once.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use std::time::Duration;

/// How long a Lease stays held without a renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(30);
/// How often a held Lease is renewed.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the Lease {name} is held by {holder} now")]
    Lost { name: String, holder: String },
    #[error("Lease {name}: {source}")]
    Api { name: String, source: kube::Error },
}

/// What one attempt at the Lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// This holder has the Lease now.
    Held,
    /// Another live holder has it: its name, unless the attempt lost a race it did not see.
    Taken(Option<String>),
}

/// One Lease, held (or waited for) by one `holder` (its Pod's name).
#[derive(Clone)]
pub struct HeldLease {
    api: Api<Lease>,
    name: String,
    holder: String,
}

impl std::fmt::Debug for HeldLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldLease")
            .field("name", &self.name)
            .field("holder", &self.holder)
            .finish()
    }
}

/// Whether a Lease is free for `holder`: no holder, `holder` itself, or not renewed within its
/// duration as of `now`.
pub fn available(spec: Option<&LeaseSpec>, holder: &str, now: Timestamp) -> bool {
    let Some(spec) = spec else { return true };
    match spec.holder_identity.as_deref() {
        None | Some("") => return true,
        Some(h) if h == holder => return true,
        Some(_) => {}
    }
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0));
    let expires = renewed
        .0
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(secs))
        .unwrap_or(renewed.0);
    expires < now
}

impl HeldLease {
    /// The Lease `name` in `namespace`, for `holder`.
    pub fn new(client: kube::Client, namespace: &str, name: &str, holder: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            holder: holder.to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Who holds the Lease now, as far as the API server says (`None`: nobody, or unreadable).
    pub async fn current_holder(&self) -> Option<String> {
        self.api
            .get_opt(&self.name)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| !h.is_empty())
    }

    fn api_error(&self, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            name: self.name.clone(),
            source,
        }
    }

    fn spec(&self, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One attempt to take or renew the Lease, answering who has it afterwards (from the same
    /// read, so waiting callers learn the holder without asking again).
    pub async fn try_acquire(&self) -> Result<Attempt, LeaseError> {
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.api_error(e))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                // Someone created it meanwhile: look again next time.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Taken(None)),
                Err(e) => Err(self.api_error(e)),
            };
        };
        if !available(lease.spec.as_ref(), &self.holder, Timestamp::now()) {
            let holder = lease.spec.and_then(|spec| spec.holder_identity);
            return Ok(Attempt::Taken(holder));
        }
        let previous = lease.spec.clone().unwrap_or_default();
        let ours = previous.holder_identity.as_deref() == Some(self.holder.as_str());
        let transitions = previous.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours { previous.acquire_time } else { None };
        lease.spec = Some(self.spec(acquired, transitions));
        // The resourceVersion read above makes this a compare-and-swap.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Held),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Taken(None)),
            Err(e) => Err(self.api_error(e)),
        }
    }

    /// Waits until this holder holds the Lease (another holder's lapses after
    /// [`LEASE_DURATION`] without renewal).
    pub async fn acquire(&self) -> Result<(), LeaseError> {
        let mut logged = false;
        loop {
            match self.try_acquire().await? {
                Attempt::Held => {
                    tracing::info!(lease = %self.name, holder = %self.holder, "holding the Lease");
                    return Ok(());
                }
                Attempt::Taken(holder) if !logged => {
                    tracing::warn!(lease = %self.name, holder = ?holder,
                        "another holder has the Lease; waiting for it");
                    logged = true;
                }
                Attempt::Taken(_) => {}
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Renews the Lease; `Lost` when another holder has it now.
    pub async fn renew(&self) -> Result<(), LeaseError> {
        let holder = match self.try_acquire().await? {
            Attempt::Held => return Ok(()),
            Attempt::Taken(Some(holder)) => holder,
            // Lost a race: ask who won.
            Attempt::Taken(None) => self
                .current_holder()
                .await
                .unwrap_or_else(|| "another holder".to_string()),
        };
        Err(LeaseError::Lost {
            name: self.name.clone(),
            holder,
        })
    }

    /// Renews the Lease every [`RENEW_INTERVAL`] for as long as this holder has it; returns why
    /// it stopped: another holder, or renewals failing for so long that another may take over
    /// soon (it gives up a renewal interval before the Lease lapses, so the old holder has
    /// stopped before a new one can start).
    pub async fn keep(&self) -> LeaseError {
        let mut last_renewed = std::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_INTERVAL).await;
            match self.renew().await {
                Ok(()) => last_renewed = std::time::Instant::now(),
                Err(lost @ LeaseError::Lost { .. }) => return lost,
                Err(err) if last_renewed.elapsed() + RENEW_INTERVAL >= LEASE_DURATION => {
                    return err
                }
                Err(err) => {
                    tracing::warn!(lease = %self.name, error = %err, "renewing the Lease failed; trying again")
                }
            }
        }
    }

    /// Gives the Lease up (holder cleared), when this holder still has it.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.holder.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "released the Lease"),
            Err(e) => {
                tracing::warn!(lease = %self.name, error = %e, "could not release the Lease")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    fn held(by: &str, renewed: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.to_string()),
            lease_duration_seconds: Some(30),
            renew_time: Some(MicroTime(renewed)),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_is_free_when_unheld_ours_or_lapsed() {
        let now = Timestamp::now();
        assert!(available(None, "me", now));
        assert!(available(Some(&LeaseSpec::default()), "me", now));
        assert!(available(Some(&held("me", now)), "me", now));
        let fresh = held("other", now - SignedDuration::from_secs(5));
        assert!(!available(Some(&fresh), "me", now));
        let lapsed = held("other", now - SignedDuration::from_secs(31));
        assert!(available(Some(&lapsed), "me", now));
    }
}
