//! Helpers shared by the Kubernetes tests (tests/kube_e2e.rs, tests/kube_coordinator.rs):
//! waiting until the cluster reaches a state, and a client pinned to a Service's address.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Polls `check` every 250 ms until it yields a value; panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A client that sends `host` to `ip:80` (a Service's ClusterIP or a Pod IP: no Ingress
/// controller runs on the test cluster), keeping WordPress's cookies and following no
/// redirects. A new connection per request: one made before kube-proxy programmed a new Service
/// (whose ClusterIP may have led elsewhere a moment ago) keeps its old destination for as long
/// as it is kept alive.
pub fn client_to(host: &str, ip: &str) -> reqwest::Client {
    let addr: SocketAddr = format!("{ip}:80").parse().unwrap();
    reqwest::Client::builder()
        .resolve(host, addr)
        .pool_max_idle_per_host(0)
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .unwrap()
}
