//! Routing a clone to a pod: ask agents with a warm pod first (most warm first when spreading,
//! fewest when packing), move on when one has none or refuses, and when no warm pod is free
//! anywhere ask an agent with room to create one (the cold path). The agent decides; the router
//! only asks, and tells its observer before every claim so the ask is durable. In Kubernetes
//! mode the cold path is not an agent but the coordinator's own provisioner (a Deployment per
//! clone, `kubernetes::cold`), registered like an agent under its own URL
//! ([`Router::with_cold_provisioner`]): agents are then only asked for warm pods.

use crate::agent_client::AgentError;
use crate::config::Placement;
use crate::registry::{AgentRegistry, AgentView};
use async_trait::async_trait;
use clonepool_common::agent_api::{ClaimRequest, ClaimResponse, CloneScheme};
use clonepool_common::ids::CloneId;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no agent is reachable (none answered a heartbeat recently)")]
    NoAgentUp,
    #[error("no warm pod is free and no agent has room for a new pod ({0})")]
    NoCapacity(String),
    /// The claim's outcome is unknown; the retry must ask this agent again first.
    #[error("agent {agent} did not answer the claim properly: {error}")]
    Ambiguous { agent: String, error: String },
    #[error("every agent refused the coordinator's token; check the agent token file")]
    TokenRefused,
    #[error("cannot record the claim: {0}")]
    Observer(String),
}

impl RouteError {
    /// Worth retrying later (capacity frees up, agents come back).
    pub fn is_transient(&self) -> bool {
        !matches!(self, RouteError::TokenRefused)
    }

    /// A stable code for the job's `error_code`.
    pub fn code(&self) -> &'static str {
        match self {
            RouteError::NoAgentUp => "no_agent",
            RouteError::NoCapacity(_) => clonepool_common::error::codes::NO_CAPACITY,
            RouteError::Ambiguous { .. } => "agent_unavailable",
            RouteError::TokenRefused => "agent_auth",
            RouteError::Observer(_) => clonepool_common::error::codes::INTERNAL,
        }
    }
}

/// Told about each claim before it is sent (so it can be made durable) and about agents that
/// definitely hold nothing for the clone.
#[async_trait]
pub trait ClaimObserver: Send {
    async fn before_claim(&mut self, agent: &AgentView, cold: bool) -> Result<(), RouteError>;
    async fn refused(&mut self, agent: &str);
}

/// A successful claim.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub agent: String,
    pub response: ClaimResponse,
}

pub struct Router {
    registry: Arc<AgentRegistry>,
    placement: Placement,
    /// The registry URL of the cold provisioner (Kubernetes mode), which alone serves cold
    /// claims; `None`: agents with room create cold pods.
    cold_provisioner: Option<String>,
}

enum Attempt {
    Won(Claimed),
    Refused(AgentError),
    Ambiguous(RouteError),
}

impl Router {
    pub fn new(registry: Arc<AgentRegistry>, placement: Placement) -> Self {
        Self {
            registry,
            placement,
            cold_provisioner: None,
        }
    }

    /// Cold claims go to the registry entry at `url` only (never to agents), and it is never
    /// asked for a warm pod.
    pub fn with_cold_provisioner(mut self, url: &str) -> Self {
        self.cold_provisioner = Some(url.to_string());
        self
    }

    fn is_provisioner(&self, agent: &AgentView) -> bool {
        self.cold_provisioner.as_deref() == Some(agent.url.as_str())
    }

    pub fn registry(&self) -> &Arc<AgentRegistry> {
        &self.registry
    }

    /// Agents to ask for a warm pod, best first.
    pub fn warm_candidates(&self, agents: &[AgentView]) -> Vec<AgentView> {
        let mut candidates: Vec<AgentView> = agents
            .iter()
            .filter(|a| a.accepts_claims() && a.warm() > 0 && !self.is_provisioner(a))
            .cloned()
            .collect();
        match self.placement {
            Placement::Spread => {
                candidates.sort_by(|a, b| b.warm().cmp(&a.warm()).then(a.url.cmp(&b.url)))
            }
            Placement::Pack => {
                candidates.sort_by(|a, b| a.warm().cmp(&b.warm()).then(a.url.cmp(&b.url)))
            }
        }
        candidates
    }

    /// Agents to ask for a cold pod, best first: those with room (most room first when
    /// spreading, least when packing), then the rest (their report may be stale).
    pub fn cold_candidates(&self, agents: &[AgentView]) -> Vec<AgentView> {
        if self.cold_provisioner.is_some() {
            return agents
                .iter()
                .filter(|a| self.is_provisioner(a) && a.accepts_claims())
                .cloned()
                .collect();
        }
        let mut candidates: Vec<AgentView> = agents
            .iter()
            .filter(|a| a.accepts_claims())
            .cloned()
            .collect();
        let placement = self.placement;
        candidates.sort_by(|a, b| {
            let has_room = |v: &AgentView| v.room() > 0;
            has_room(b)
                .cmp(&has_room(a))
                .then(match placement {
                    Placement::Spread => b.room().cmp(&a.room()),
                    Placement::Pack => a.room().cmp(&b.room()),
                })
                .then(a.url.cmp(&b.url))
        });
        candidates
    }

    async fn attempt(
        &self,
        agent: &AgentView,
        request: &ClaimRequest,
        observer: &mut dyn ClaimObserver,
    ) -> Result<Attempt, RouteError> {
        let Some(client) = self.registry.client(&agent.url) else {
            return Ok(Attempt::Refused(AgentError::NotFound(agent.url.clone())));
        };
        observer.before_claim(agent, request.allow_cold).await?;
        match client.claim(request).await {
            Ok(response) => {
                if response.path == clonepool_common::agent_api::ClaimPath::Warm {
                    self.registry.note_claimed_warm(&agent.url);
                }
                Ok(Attempt::Won(Claimed {
                    agent: agent.url.clone(),
                    response,
                }))
            }
            Err(err) if err.is_definite_refusal() => {
                match err {
                    AgentError::NoWarmPod => self.registry.note_no_warm(&agent.url),
                    AgentError::Draining => self.registry.note_draining(&agent.url),
                    _ => {}
                }
                observer.refused(&agent.url).await;
                Ok(Attempt::Refused(err))
            }
            Err(err) => Ok(Attempt::Ambiguous(RouteError::Ambiguous {
                agent: agent.url.clone(),
                error: err.to_string(),
            })),
        }
    }

    /// Finds a pod for `clone_id`. `resume` is the agent (and cold flag) of an earlier claim
    /// whose outcome is unknown: it is asked again first (claims are idempotent per clone id).
    pub async fn claim(
        &self,
        clone_id: &CloneId,
        clone_host: &str,
        clone_scheme: CloneScheme,
        resume: Option<(&str, bool)>,
        observer: &mut dyn ClaimObserver,
    ) -> Result<Claimed, RouteError> {
        let agents = self.registry.snapshot();
        let mut refusals: Vec<String> = Vec::new();
        let mut token_refusals = 0usize;
        let mut asked: Vec<String> = Vec::new();
        let mut note = |url: &str, err: &AgentError, refusals: &mut Vec<String>| {
            if *err == AgentError::Unauthorized {
                token_refusals += 1;
            }
            refusals.push(format!("{url}: {err}"));
        };
        let request = |allow_cold| ClaimRequest {
            clone_id: clone_id.clone(),
            clone_host: clone_host.to_string(),
            clone_scheme,
            allow_cold,
        };

        if let Some((url, cold)) = resume {
            if let Some(view) = agents.iter().find(|a| a.url == url) {
                asked.push(url.to_string());
                match self.attempt(view, &request(cold), observer).await? {
                    Attempt::Won(claimed) => return Ok(claimed),
                    Attempt::Refused(err) => note(url, &err, &mut refusals),
                    // Still unknown: ask it again later unless it is down (then others may serve
                    // the clone; the stray claim is released when the clone ends).
                    Attempt::Ambiguous(err) if view.up => return Err(err),
                    Attempt::Ambiguous(_) => {}
                }
            }
        }

        for agent in self.warm_candidates(&agents) {
            if asked.contains(&agent.url) {
                continue;
            }
            asked.push(agent.url.clone());
            match self.attempt(&agent, &request(false), observer).await? {
                Attempt::Won(claimed) => return Ok(claimed),
                Attempt::Refused(err) => note(&agent.url, &err, &mut refusals),
                Attempt::Ambiguous(err) => return Err(err),
            }
        }

        let cold = self.cold_candidates(&agents);
        if cold.is_empty() && !agents.iter().any(|a| a.up) {
            return Err(RouteError::NoAgentUp);
        }
        for agent in cold {
            match self.attempt(&agent, &request(true), observer).await? {
                Attempt::Won(claimed) => return Ok(claimed),
                Attempt::Refused(err) => note(&agent.url, &err, &mut refusals),
                Attempt::Ambiguous(err) => return Err(err),
            }
        }
        if token_refusals > 0 && token_refusals == refusals.len() {
            return Err(RouteError::TokenRefused);
        }
        if refusals.is_empty() {
            // No agent took claims at all: say why for each.
            let why: Vec<String> = agents
                .iter()
                .map(|a| {
                    let state = if !a.up {
                        "does not answer"
                    } else if a.draining() {
                        "is draining"
                    } else if a.capacity.as_ref().is_some_and(|c| !c.runtime_reachable) {
                        "cannot reach its container runtime"
                    } else {
                        "takes no claims"
                    };
                    format!("{} {state}", a.node().unwrap_or(&a.url))
                })
                .collect();
            return Err(RouteError::NoCapacity(format!(
                "no agent takes claims now: {}",
                why.join("; ")
            )));
        }
        Err(RouteError::NoCapacity(refusals.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_client::fake::FakeAgent;
    use crate::agent_client::AgentClient;
    use clonepool_common::agent_api::ClaimPath;
    use std::time::Duration;

    #[derive(Default)]
    struct Recorder {
        asked: Vec<(String, bool)>,
        refused: Vec<String>,
    }

    #[async_trait]
    impl ClaimObserver for Recorder {
        async fn before_claim(&mut self, agent: &AgentView, cold: bool) -> Result<(), RouteError> {
            self.asked.push((agent.url.clone(), cold));
            Ok(())
        }
        async fn refused(&mut self, agent: &str) {
            self.refused.push(agent.to_string());
        }
    }

    async fn router(agents: &[Arc<FakeAgent>], placement: Placement) -> Router {
        let clients: Vec<Arc<dyn AgentClient>> = agents
            .iter()
            .map(|a| a.clone() as Arc<dyn AgentClient>)
            .collect();
        let registry = Arc::new(AgentRegistry::new(clients, Duration::from_secs(60)));
        registry.poll_all().await;
        Router::new(registry, placement)
    }

    fn id(s: &str) -> CloneId {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn the_clone_urls_scheme_reaches_the_agent_with_the_host() {
        let agent = FakeAgent::new("http://a", "node-a", 1, 2);
        let router = router(std::slice::from_ref(&agent), Placement::Spread).await;
        router
            .claim(
                &id("c1"),
                "c1.clones.test",
                CloneScheme::Https,
                None,
                &mut Recorder::default(),
            )
            .await
            .unwrap();
        let sent = agent.with(|s| s.claim_requests.clone());
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].clone_host, "c1.clones.test");
        assert_eq!(sent[0].clone_scheme, CloneScheme::Https);
    }

    #[tokio::test]
    async fn spread_picks_the_agent_with_the_most_warm_pods() {
        let a = FakeAgent::new("http://a", "node-a", 1, 4);
        let b = FakeAgent::new("http://b", "node-b", 3, 4);
        let router = router(&[a.clone(), b.clone()], Placement::Spread).await;
        let mut rec = Recorder::default();
        let claimed = router
            .claim(
                &id("c1"),
                "c1.localhost:8080",
                CloneScheme::Http,
                None,
                &mut rec,
            )
            .await
            .unwrap();
        assert_eq!(claimed.agent, "http://b");
        assert_eq!(claimed.response.path, ClaimPath::Warm);
        // b now counts 2 warm, still more than a: spread keeps going to b, then evens out.
        let second = router
            .claim(&id("c2"), "h", CloneScheme::Http, None, &mut rec)
            .await
            .unwrap();
        assert_eq!(second.agent, "http://b");
        let third = router
            .claim(&id("c3"), "h", CloneScheme::Http, None, &mut rec)
            .await
            .unwrap();
        assert_eq!(
            third.agent, "http://a",
            "a (1 warm) ties with b (1 warm) and sorts first"
        );
    }

    #[tokio::test]
    async fn pack_picks_the_agent_with_the_fewest_warm_pods() {
        let a = FakeAgent::new("http://a", "node-a", 1, 4);
        let b = FakeAgent::new("http://b", "node-b", 3, 4);
        let router = router(&[a, b], Placement::Pack).await;
        let mut rec = Recorder::default();
        let claimed = router
            .claim(&id("c1"), "h", CloneScheme::Http, None, &mut rec)
            .await
            .unwrap();
        assert_eq!(claimed.agent, "http://a");
    }

    #[tokio::test]
    async fn an_agent_without_a_warm_pod_after_all_is_skipped_for_the_next() {
        let a = FakeAgent::new("http://a", "node-a", 3, 4);
        let b = FakeAgent::new("http://b", "node-b", 1, 4);
        let router = router(&[a.clone(), b.clone()], Placement::Spread).await;
        // a's report says 3 warm, but they are gone by the time we ask.
        a.with(|s| s.warm = 0);
        let mut rec = Recorder::default();
        let claimed = router
            .claim(&id("c1"), "h", CloneScheme::Http, None, &mut rec)
            .await
            .unwrap();
        assert_eq!(claimed.agent, "http://b");
        assert_eq!(claimed.response.path, ClaimPath::Warm);
        assert_eq!(rec.refused, vec!["http://a".to_string()]);
    }

    #[tokio::test]
    async fn an_agent_whose_runtime_is_unreachable_is_not_asked() {
        let a = FakeAgent::new("http://a", "node-a", 3, 4);
        let b = FakeAgent::new("http://b", "node-b", 1, 4);
        a.with(|s| s.runtime_unreachable = true);
        let router = router(&[a.clone(), b.clone()], Placement::Spread).await;
        let mut rec = Recorder::default();
        let claimed = router
            .claim(&id("c1"), "h", CloneScheme::Http, None, &mut rec)
            .await
            .unwrap();
        assert_eq!(claimed.agent, "http://b");
        assert_eq!(rec.asked, vec![("http://b".to_string(), false)]);
    }

    #[tokio::test]
    async fn with_no_warm_pod_anywhere_the_clone_goes_cold_where_there_is_room() {
        let a = FakeAgent::new("http://a", "node-a", 0, 1);
        let b = FakeAgent::new("http://b", "node-b", 0, 3);
        let router = router(&[a.clone(), b.clone()], Placement::Spread).await;
        let mut rec = Recorder::default();
        let claimed = router
            .claim(&id("c1"), "h", CloneScheme::Http, None, &mut rec)
            .await
            .unwrap();
        assert_eq!(claimed.agent, "http://b", "b has the most room");
        assert_eq!(claimed.response.path, ClaimPath::Cold);
        assert_eq!(rec.asked, vec![("http://b".to_string(), true)]);
    }

    #[tokio::test]
    async fn with_no_room_anywhere_the_answer_is_no_capacity() {
        let a = FakeAgent::new("http://a", "node-a", 0, 0);
        let router = router(&[a], Placement::Spread).await;
        let err = router
            .claim(
                &id("c1"),
                "h",
                CloneScheme::Http,
                None,
                &mut Recorder::default(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, RouteError::NoCapacity(_)), "{err}");
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn down_agents_are_not_asked() {
        let a = FakeAgent::new("http://a", "node-a", 2, 4);
        let router = router(std::slice::from_ref(&a), Placement::Spread).await;
        let registry = router.registry().clone();
        a.with(|s| s.down = true);
        let stale = Router::new(
            Arc::new(AgentRegistry::new(vec![a.clone()], Duration::from_secs(60))),
            Placement::Spread,
        );
        let err = stale
            .claim(
                &id("c1"),
                "h",
                CloneScheme::Http,
                None,
                &mut Recorder::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(err, RouteError::NoAgentUp);
        assert_eq!(a.with(|s| s.claim_calls), 0);
        drop(registry);
    }

    #[tokio::test]
    async fn a_lost_claim_answer_is_ambiguous_and_the_retry_gets_the_same_pod() {
        let a = FakeAgent::new("http://a", "node-a", 2, 4);
        let router = router(std::slice::from_ref(&a), Placement::Spread).await;
        a.with(|s| s.lose_claim_answers = 1);
        let mut rec = Recorder::default();
        let err = router
            .claim(&id("c1"), "h", CloneScheme::Http, None, &mut rec)
            .await
            .unwrap_err();
        assert!(matches!(err, RouteError::Ambiguous { .. }), "{err}");
        let claimed = router
            .claim(
                &id("c1"),
                "h",
                CloneScheme::Http,
                Some(("http://a", false)),
                &mut rec,
            )
            .await
            .unwrap();
        assert_eq!(a.with(|s| s.claims.len()), 1, "one pod, not two");
        assert_eq!(
            claimed.response.pod_id.as_str(),
            a.with(|s| s.claims["c1"].0.clone())
        );
    }

    #[tokio::test]
    async fn with_a_cold_provisioner_agents_serve_warm_claims_only_and_it_serves_the_cold_ones() {
        let a = FakeAgent::new("http://a", "node-a", 1, 4);
        let cold = FakeAgent::new("kubernetes://clones/cold", "kubernetes", 0, 10);
        let clients: Vec<Arc<dyn AgentClient>> = vec![a.clone(), cold.clone()];
        let registry = Arc::new(AgentRegistry::new(clients, Duration::from_secs(60)));
        registry.poll_all().await;
        let router = Router::new(registry, Placement::Spread)
            .with_cold_provisioner("kubernetes://clones/cold");
        let mut rec = Recorder::default();
        let first = router
            .claim(&id("c1"), "h", CloneScheme::Http, None, &mut rec)
            .await
            .unwrap();
        assert_eq!(first.agent, "http://a");
        assert_eq!(first.response.path, ClaimPath::Warm);
        let second = router
            .claim(&id("c2"), "h", CloneScheme::Http, None, &mut rec)
            .await
            .unwrap();
        assert_eq!(second.agent, "kubernetes://clones/cold");
        assert_eq!(second.response.path, ClaimPath::Cold);
        assert_eq!(
            rec.asked,
            vec![
                ("http://a".to_string(), false),
                ("kubernetes://clones/cold".to_string(), true),
            ],
            "the agent (room for 3 more pods) is never asked for a cold pod"
        );
        assert_eq!(a.with(|s| s.claims.len()), 1);
    }
}
