//! The registry of agents: each agent's last capacity report, heartbeats (periodic capacity
//! polls, plus pushes at `POST /internal/v1/capacity`), and which agents are up (heard from
//! within the staleness limit) or down. Agents are configured at start (standalone) or come
//! and go at run time (Kubernetes discovery: [`AgentRegistry::add`], [`AgentRegistry::retire`]);
//! a retired agent is down at once, and calls meant for it go to the agent that replaced it on
//! the same node (an agent adopts its node's pods after a restart, under a new Pod IP).

use crate::agent_client::{AgentClient, AgentError};
use crate::timestamps::now_ms;
use clonepool_common::agent_api::Capacity;
use clonepool_common::api::AgentPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One agent and what is known of it.
pub struct AgentEntry {
    pub client: Arc<dyn AgentClient>,
    state: Mutex<AgentState>,
    /// The node it runs on, as discovery saw it (before any capacity report names it).
    node_hint: Option<String>,
    /// Gone for good (its Pod was deleted): down, no heartbeats, not listed.
    retired: AtomicBool,
}

impl AgentEntry {
    fn new(client: Arc<dyn AgentClient>, node_hint: Option<String>) -> Self {
        Self {
            client,
            state: Mutex::new(AgentState::default()),
            node_hint,
            retired: AtomicBool::new(false),
        }
    }

    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    fn node(&self) -> Option<String> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .capacity
            .as_ref()
            .map(|c| c.node.clone())
            .or_else(|| self.node_hint.clone())
    }
}

#[derive(Default, Clone)]
struct AgentState {
    capacity: Option<Capacity>,
    last_seen: Option<Instant>,
    last_seen_ms: Option<i64>,
    last_error: Option<String>,
}

/// A point-in-time view of one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentView {
    pub url: String,
    pub up: bool,
    pub capacity: Option<Capacity>,
    pub last_seen_ms: Option<i64>,
    pub last_error: Option<String>,
}

impl AgentView {
    pub fn node(&self) -> Option<&str> {
        self.capacity.as_ref().map(|c| c.node.as_str())
    }

    pub fn warm(&self) -> u32 {
        self.capacity.as_ref().map_or(0, |c| c.warm)
    }

    pub fn draining(&self) -> bool {
        self.capacity.as_ref().is_some_and(|c| c.draining)
    }

    /// Whether the agent can take a claim now: up, not draining, and its container runtime
    /// answers (an agent whose runtime is away refuses claims without consuming a pod).
    pub fn accepts_claims(&self) -> bool {
        self.up && !self.draining() && self.capacity.as_ref().is_none_or(|c| c.runtime_reachable)
    }

    /// Pods it could still create.
    pub fn room(&self) -> u32 {
        self.capacity.as_ref().map_or(0, |c| {
            let used = c.starting + c.warm + c.assigned + c.ready + c.resetting + c.quarantined;
            c.max.saturating_sub(used)
        })
    }

    pub fn to_pool(&self) -> AgentPool {
        let c = self.capacity.clone().unwrap_or_default();
        AgentPool {
            agent: self.url.clone(),
            node: self.capacity.as_ref().map(|c| c.node.clone()),
            up: self.up,
            draining: c.draining,
            last_seen: self.last_seen_ms.map(crate::timestamps::rfc3339),
            last_error: if self.up {
                None
            } else {
                self.last_error.clone()
            },
            starting: c.starting,
            warm: c.warm,
            assigned: c.assigned,
            ready: c.ready,
            resetting: c.resetting,
            quarantined: c.quarantined,
            max: c.max,
        }
    }
}

/// Retired agents remembered (oldest forgotten first) so their clones can still be released.
const RETIRED_KEPT: usize = 256;

pub struct AgentRegistry {
    agents: RwLock<Vec<Arc<AgentEntry>>>,
    stale_after: Duration,
}

impl AgentRegistry {
    pub fn new(clients: Vec<Arc<dyn AgentClient>>, stale_after: Duration) -> Self {
        Self {
            agents: RwLock::new(
                clients
                    .into_iter()
                    .map(|client| Arc::new(AgentEntry::new(client, None)))
                    .collect(),
            ),
            stale_after,
        }
    }

    fn entries(&self) -> Vec<Arc<AgentEntry>> {
        self.agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn live_entries(&self) -> Vec<Arc<AgentEntry>> {
        self.entries()
            .into_iter()
            .filter(|a| !a.is_retired())
            .collect()
    }

    /// Adds an agent found at run time on `node`. False when an agent with that URL is already
    /// known and live; a retired one with that URL is replaced.
    pub fn add(&self, client: Arc<dyn AgentClient>, node: Option<String>) -> bool {
        let mut agents = self.agents.write().unwrap_or_else(|p| p.into_inner());
        if let Some(pos) = agents.iter().position(|a| a.client.url() == client.url()) {
            if !agents[pos].is_retired() {
                return false;
            }
            agents.remove(pos);
        }
        agents.push(Arc::new(AgentEntry::new(client, node)));
        true
    }

    /// The agent at `url` is gone for good: down at once, no more heartbeats or claims. Calls
    /// for clones it served go to the live agent on the same node, once there is one.
    pub fn retire(&self, url: &str) {
        let mut agents = self.agents.write().unwrap_or_else(|p| p.into_inner());
        if let Some(agent) = agents.iter().find(|a| a.client.url() == url) {
            agent.retired.store(true, Ordering::Release);
        }
        let retired = agents.iter().filter(|a| a.is_retired()).count();
        if retired > RETIRED_KEPT {
            if let Some(pos) = agents.iter().position(|a| a.is_retired()) {
                agents.remove(pos);
            }
        }
    }

    /// The entry for `url`: the agent itself, or for a retired agent the live one that
    /// replaced it on its node.
    fn resolve(&self, url: &str) -> Option<Arc<AgentEntry>> {
        let agents = self.entries();
        let entry = agents.iter().find(|a| a.client.url() == url)?.clone();
        if !entry.is_retired() {
            return Some(entry);
        }
        let successor = entry.node().and_then(|node| {
            agents
                .iter()
                .find(|a| !a.is_retired() && a.node().as_deref() == Some(node.as_str()))
                .cloned()
        });
        Some(successor.unwrap_or(entry))
    }

    /// The client that serves `url`'s pods (see [`AgentRegistry::retire`]).
    pub fn client(&self, url: &str) -> Option<Arc<dyn AgentClient>> {
        self.resolve(url).map(|a| a.client.clone())
    }

    fn view_of(&self, agent: &AgentEntry, now: Instant) -> AgentView {
        let state = agent
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        AgentView {
            url: agent.client.url().to_string(),
            up: !agent.is_retired()
                && state
                    .last_seen
                    .is_some_and(|seen| now.duration_since(seen) <= self.stale_after),
            capacity: state.capacity,
            last_seen_ms: state.last_seen_ms,
            last_error: if agent.is_retired() {
                Some("the agent's Pod is gone".to_string())
            } else {
                state.last_error
            },
        }
    }

    /// Every live agent (retired ones are left out).
    pub fn snapshot(&self) -> Vec<AgentView> {
        let now = Instant::now();
        self.live_entries()
            .iter()
            .map(|agent| self.view_of(agent, now))
            .collect()
    }

    /// The agent serving `url`'s pods (its successor when it is retired and replaced).
    pub fn view(&self, url: &str) -> Option<AgentView> {
        self.resolve(url)
            .map(|agent| self.view_of(&agent, Instant::now()))
    }

    fn update(&self, url: &str, f: impl FnOnce(&mut AgentState)) {
        if let Some(agent) = self.live_entries().iter().find(|a| a.client.url() == url) {
            f(&mut agent.state.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// A capacity report: the agent is alive.
    pub fn heard(&self, url: &str, capacity: Capacity) {
        self.update(url, |state| {
            state.capacity = Some(capacity);
            state.last_seen = Some(Instant::now());
            state.last_seen_ms = Some(now_ms());
            state.last_error = None;
        });
    }

    /// A failed heartbeat. The agent goes down once it has not been heard for `stale_after`.
    pub fn failed(&self, url: &str, error: &AgentError) {
        self.update(url, |state| state.last_error = Some(error.to_string()));
    }

    /// A pushed capacity report, matched to an agent by the node it reported before. False
    /// when no configured agent has reported that node.
    pub fn accept_push(&self, capacity: Capacity) -> bool {
        let url = self.live_entries().iter().find_map(|agent| {
            let state = agent.state.lock().unwrap_or_else(|p| p.into_inner());
            (state.capacity.as_ref().map(|c| c.node.as_str()) == Some(capacity.node.as_str()))
                .then(|| agent.client.url().to_string())
        });
        match url {
            Some(url) => {
                self.heard(&url, capacity);
                true
            }
            None => false,
        }
    }

    /// A warm claim succeeded there: count one warm pod fewer until the next report.
    pub fn note_claimed_warm(&self, url: &str) {
        self.update(url, |state| {
            if let Some(c) = state.capacity.as_mut() {
                c.warm = c.warm.saturating_sub(1);
                c.assigned += 1;
            }
        });
    }

    /// The agent said it has no warm pod: believe it until the next report.
    pub fn note_no_warm(&self, url: &str) {
        self.update(url, |state| {
            if let Some(c) = state.capacity.as_mut() {
                c.warm = 0;
            }
        });
    }

    /// The agent said it is draining.
    pub fn note_draining(&self, url: &str) {
        self.update(url, |state| {
            if let Some(c) = state.capacity.as_mut() {
                c.draining = true;
            }
        });
    }

    /// Polls every agent's capacity once, concurrently.
    pub async fn poll_all(&self) {
        let agents = self.live_entries();
        let polls = agents.iter().map(|agent| async move {
            let url = agent.client.url().to_string();
            match agent.client.capacity().await {
                Ok(capacity) => self.heard(&url, capacity),
                Err(err) => self.failed(&url, &err),
            }
        });
        futures_util::future::join_all(polls).await;
    }

    /// Polls one agent's capacity now (a newly discovered agent is up at once).
    pub async fn poll(&self, url: &str) {
        let Some(agent) = self
            .live_entries()
            .into_iter()
            .find(|a| a.client.url() == url)
        else {
            return;
        };
        match agent.client.capacity().await {
            Ok(capacity) => self.heard(url, capacity),
            Err(err) => self.failed(url, &err),
        }
    }

    /// Heartbeats: polls every `interval` until `shutdown` turns true.
    pub async fn run_heartbeats(
        self: Arc<Self>,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.poll_all().await,
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_client::fake::FakeAgent;

    #[tokio::test]
    async fn agents_are_up_after_a_heartbeat_and_down_once_stale() {
        let agent = FakeAgent::new("http://a", "node-a", 2, 4);
        let registry = AgentRegistry::new(vec![agent.clone()], Duration::from_millis(50));
        assert!(!registry.snapshot()[0].up, "never heard: not up");
        registry.poll_all().await;
        let view = &registry.snapshot()[0];
        assert!(view.up);
        assert_eq!(view.warm(), 2);
        assert_eq!(view.room(), 2);
        agent.with(|s| s.down = true);
        registry.poll_all().await;
        tokio::time::sleep(Duration::from_millis(80)).await;
        let view = &registry.snapshot()[0];
        assert!(!view.up);
        assert!(view.last_error.as_deref().unwrap().contains("refused"));
    }

    #[tokio::test]
    async fn pushes_are_accepted_only_from_known_nodes() {
        let agent = FakeAgent::new("http://a", "node-a", 1, 4);
        let registry = AgentRegistry::new(vec![agent], Duration::from_secs(5));
        let push = Capacity {
            node: "node-a".into(),
            warm: 3,
            max: 4,
            ..Capacity::default()
        };
        assert!(!registry.accept_push(push.clone()), "node not yet known");
        registry.poll_all().await;
        assert!(registry.accept_push(push));
        assert_eq!(registry.snapshot()[0].warm(), 3);
        assert!(!registry.accept_push(Capacity {
            node: "node-z".into(),
            ..Capacity::default()
        }));
    }

    #[tokio::test]
    async fn a_retired_agent_is_down_at_once_and_its_replacement_on_the_node_serves_its_clones() {
        let old = FakeAgent::new("http://10.0.0.5:7411", "node-a", 2, 4);
        let registry = AgentRegistry::new(vec![], Duration::from_secs(60));
        assert!(registry.add(old.clone(), Some("node-a".into())));
        assert!(!registry.add(old.clone(), Some("node-a".into())), "known");
        registry.poll("http://10.0.0.5:7411").await;
        assert!(registry.view("http://10.0.0.5:7411").unwrap().up);

        registry.retire("http://10.0.0.5:7411");
        assert!(
            registry.snapshot().is_empty(),
            "retired agents are not listed"
        );
        let view = registry.view("http://10.0.0.5:7411").unwrap();
        assert!(!view.up, "down at once, not after the staleness limit");
        registry.poll_all().await;
        assert_eq!(
            old.with(|s| s.capacity_calls),
            1,
            "no heartbeats to a retired agent"
        );

        // The DaemonSet's next Pod on node-a (new IP) adopts the node's pods.
        let new = FakeAgent::new("http://10.0.0.9:7411", "node-a", 1, 4);
        registry.add(new.clone(), Some("node-a".into()));
        registry.poll_all().await;
        assert_eq!(
            registry.client("http://10.0.0.5:7411").unwrap().url(),
            "http://10.0.0.9:7411",
            "calls for the old agent's clones go to its successor"
        );
        assert!(registry.view("http://10.0.0.5:7411").unwrap().up);
        // An agent on another node is no successor.
        registry.retire("http://10.0.0.9:7411");
        let other = FakeAgent::new("http://10.0.1.1:7411", "node-b", 1, 4);
        registry.add(other, Some("node-b".into()));
        assert_eq!(
            registry.client("http://10.0.0.5:7411").unwrap().url(),
            "http://10.0.0.5:7411"
        );
    }
}
