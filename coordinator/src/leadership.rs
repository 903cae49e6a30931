//! Leader election between coordinator replicas (Kubernetes mode, `--kube-leader-lease`): only
//! the holder of the leader Lease opens the SQLite state and serves the API. The others stand
//! by: their admin port answers `/livez` (alive) and `/readyz` with 503 naming the leader, so the
//! Service sends them no traffic, and `/metrics` with `clonepool_coordinator_leader 0`. A leader
//! that can no longer renew stops at once (before the Lease lapses, so two never write at the
//! same time); the next leader recovers the jobs it left running.

use crate::admin;
use crate::metrics::Metrics;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use clonepool_common::lease::{Attempt, HeldLease, LeaseError};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How often a standby tries to take the Lease.
const STANDBY_POLL: Duration = Duration::from_secs(2);
/// How soon a standby that lost a race for the Lease reads who won it.
const RACE_REREAD: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum LeadershipError {
    #[error("cannot listen on {addr} (admin, while standing by): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("this replica no longer leads: {0}")]
    Lost(#[source] LeaseError),
}

/// This replica's part in the election: the leader Lease it holds or waits for.
pub struct Leadership {
    lease: HeldLease,
}

/// What a standby's `/readyz` says about the leader.
#[derive(Clone, Default)]
struct StandbyState {
    leader: Arc<Mutex<Option<String>>>,
    metrics: Metrics,
}

impl Leadership {
    /// The Lease `lease` in `namespace`, for the replica `identity`.
    pub fn new(client: kube::Client, namespace: &str, lease: &str, identity: &str) -> Self {
        Self {
            lease: HeldLease::new(client, namespace, lease, identity),
        }
    }

    pub fn lease(&self) -> &HeldLease {
        &self.lease
    }

    /// Waits until this replica holds the Lease, answering the admin endpoints as a standby on
    /// `admin_listen` meanwhile; returns once that listener is closed again, so the coordinator
    /// can bind it.
    pub async fn wait_as_standby(&self, admin_listen: SocketAddr) -> Result<(), LeadershipError> {
        let listener =
            TcpListener::bind(admin_listen)
                .await
                .map_err(|source| LeadershipError::Bind {
                    addr: admin_listen,
                    source,
                })?;
        let state = StandbyState::default();
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let router = standby_router(state.clone());
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.changed().await;
                })
                .await;
            if let Err(err) = served {
                tracing::warn!(error = %err, "the standby admin listener stopped");
            }
        });
        loop {
            let mut next_attempt = STANDBY_POLL;
            match self.lease.try_acquire().await {
                Ok(Attempt::Held) => break,
                Ok(Attempt::Taken(Some(holder))) => {
                    let previous = state
                        .leader
                        .lock()
                        .expect("leader name lock")
                        .replace(holder.clone());
                    if previous.as_ref() != Some(&holder) {
                        tracing::info!(lease = %self.lease.name(), leader = %holder,
                            "standing by: another replica leads");
                    }
                }
                // Lost a race to another replica: the next attempt, soon, reads who won.
                Ok(Attempt::Taken(None)) => next_attempt = RACE_REREAD,
                // The API server may be restarting: keep standing by rather than exit.
                Err(err) => {
                    tracing::warn!(lease = %self.lease.name(), error = %err, "cannot read the leader Lease; trying again")
                }
            }
            tokio::time::sleep(next_attempt).await;
        }
        let _ = stop_tx.send(true);
        let _ = server.await;
        tracing::info!(lease = %self.lease.name(), holder = %self.lease.holder(), "leading: this replica holds the leader Lease");
        Ok(())
    }

    /// Renews the Lease for as long as this replica leads; returns when it no longer does.
    pub async fn keep(&self) -> LeadershipError {
        LeadershipError::Lost(self.lease.keep().await)
    }

    /// Hands the Lease on at a graceful shutdown, so a standby takes over at once.
    pub async fn release(&self) {
        self.lease.release().await;
    }
}

fn standby_router(state: StandbyState) -> Router {
    admin::routes(get(live), get(ready), get(metrics)).with_state(state)
}

async fn live() -> &'static str {
    "ok (standby)\n"
}

async fn ready(State(state): State<StandbyState>) -> Response {
    let leader = state.leader.lock().expect("leader name lock").clone();
    let message = match leader {
        Some(leader) => format!("standby: {leader} leads\n"),
        None => "standby: waiting for the leader Lease\n".to_string(),
    };
    (StatusCode::SERVICE_UNAVAILABLE, message).into_response()
}

async fn metrics(State(state): State<StandbyState>) -> Response {
    admin::metrics_response(&state.metrics)
}

/// This replica's default identity: the host name (a Pod's name inside a cluster).
pub fn default_identity() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| format!("coordinator-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(router: Router, path: &str) -> (StatusCode, String) {
        use tower::ServiceExt;
        let response = router
            .oneshot(
                axum::http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_standby_is_alive_not_ready_names_the_leader_and_reports_itself_as_no_leader() {
        let state = StandbyState::default();
        let router = standby_router(state.clone());
        assert_eq!(get(router.clone(), "/livez").await.0, StatusCode::OK);
        let (status, body) = get(router.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("waiting for the leader Lease"), "{body}");
        *state.leader.lock().unwrap() = Some("coordinator-0".into());
        let (status, body) = get(router.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("coordinator-0 leads"), "{body}");
        let (status, body) = get(router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("clonepool_coordinator_leader 0"), "{body}");
    }
}
