//! Finding agents through the API server: a watch on the Pods matching the agent label
//! selector in the coordinator's namespace. A running Pod with an IP becomes an agent at
//! `http://{pod IP}:{agent port}` in the registry (polled at once); a Pod that is deleted,
//! terminating or no longer running retires its agent (down at once; its clones are then
//! served by the agent that replaces it on the same node, see `registry.rs`). After each
//! (re)list, agents whose Pods were not listed are retired too.

use crate::agent_client::{AgentClient, AgentToken, HttpAgentClient};
use crate::registry::AgentRegistry;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The agent URL of an agent Pod, when it can serve: running, not being deleted, with an IP.
pub fn agent_url(pod: &Pod, port: u16) -> Option<String> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    Some(match ip {
        IpAddr::V4(v4) => format!("http://{v4}:{port}"),
        IpAddr::V6(v6) => format!("http://[{v6}]:{port}"),
    })
}

/// Watches agent Pods and keeps the registry's agents in step with them.
pub struct AgentDiscovery {
    pods: Api<Pod>,
    selector: String,
    port: u16,
    token: AgentToken,
    timeout: Duration,
    registry: Arc<AgentRegistry>,
    /// Pod uid → the agent URL it was added under.
    known: HashMap<String, String>,
    /// URLs listed since the last `Init` (a relist), to retire the rest at `InitDone`.
    listing: Option<HashSet<String>>,
}

impl AgentDiscovery {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        selector: &str,
        port: u16,
        token: AgentToken,
        timeout: Duration,
        registry: Arc<AgentRegistry>,
    ) -> Self {
        Self {
            pods: Api::namespaced(client, namespace),
            selector: selector.to_string(),
            port,
            token,
            timeout,
            registry,
            known: HashMap::new(),
            listing: None,
        }
    }

    fn applied(&mut self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let url = agent_url(pod, self.port);
        if let Some(old) = self.known.get(&uid) {
            if url.as_deref() != Some(old.as_str()) {
                tracing::info!(agent = %old, pod = ?pod.metadata.name, "agent Pod gone or not running: agent retired");
                self.registry.retire(old);
                self.known.remove(&uid);
            }
        }
        let Some(url) = url else {
            return;
        };
        if let Some(listing) = self.listing.as_mut() {
            listing.insert(url.clone());
        }
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let client: Arc<dyn AgentClient> =
            Arc::new(HttpAgentClient::new(&url, self.token.clone(), self.timeout));
        if self.registry.add(client, node.clone()) {
            tracing::info!(agent = %url, pod = ?pod.metadata.name, node = ?node, "agent discovered");
            let registry = self.registry.clone();
            let first = url.clone();
            tokio::spawn(async move { registry.poll(&first).await });
        }
        self.known.insert(uid, url);
    }

    fn deleted(&mut self, pod: &Pod) {
        if let Some(url) = pod
            .metadata
            .uid
            .as_ref()
            .and_then(|uid| self.known.remove(uid))
        {
            tracing::info!(agent = %url, pod = ?pod.metadata.name, "agent Pod deleted: agent retired");
            self.registry.retire(&url);
        }
    }

    fn relisted(&mut self) {
        let Some(listed) = self.listing.take() else {
            return;
        };
        let gone: Vec<(String, String)> = self
            .known
            .iter()
            .filter(|(_, url)| !listed.contains(*url))
            .map(|(uid, url)| (uid.clone(), url.clone()))
            .collect();
        for (uid, url) in gone {
            tracing::info!(agent = %url, "agent Pod no longer listed: agent retired");
            self.registry.retire(&url);
            self.known.remove(&uid);
        }
    }

    /// Watches until `shutdown`; `synced` turns true after the first complete list.
    pub async fn run(mut self, synced: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        let config = watcher::Config::default().labels(&self.selector);
        let mut events = watcher::watcher(self.pods.clone(), config)
            .default_backoff()
            .boxed();
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                _ = shutdown.changed() => return,
            };
            match event {
                None => return,
                Some(Ok(Event::Init)) => self.listing = Some(HashSet::new()),
                Some(Ok(Event::InitApply(pod))) | Some(Ok(Event::Apply(pod))) => self.applied(&pod),
                Some(Ok(Event::Delete(pod))) => self.deleted(&pod),
                Some(Ok(Event::InitDone)) => {
                    self.relisted();
                    let _ = synced.send(true);
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, selector = %self.selector,
                        "watching agent Pods failed; retrying with backoff");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(phase: &str, ip: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("agent-x".into()),
                uid: Some("uid-1".into()),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ip: ip.map(str::to_string),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn only_running_agent_pods_with_an_address_are_agents() {
        assert_eq!(
            agent_url(&pod("Running", Some("10.244.0.7")), 7411).as_deref(),
            Some("http://10.244.0.7:7411")
        );
        assert_eq!(
            agent_url(&pod("Running", Some("fd00::7")), 7411).as_deref(),
            Some("http://[fd00::7]:7411")
        );
        assert_eq!(agent_url(&pod("Pending", Some("10.244.0.7")), 7411), None);
        assert_eq!(agent_url(&pod("Running", None), 7411), None);
        let mut terminating = pod("Running", Some("10.244.0.7"));
        terminating.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert_eq!(agent_url(&terminating, 7411), None);
    }
}
