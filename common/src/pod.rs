//! The lifecycle states of a pod and the roles of its containers.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a pod is in its lifecycle (see DESIGN.md, "Pod lifecycle").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PodState {
    Starting,
    Warm,
    Assigned,
    Ready,
    Resetting,
    Quarantined,
}

impl PodState {
    pub const ALL: [PodState; 6] = [
        PodState::Starting,
        PodState::Warm,
        PodState::Assigned,
        PodState::Ready,
        PodState::Resetting,
        PodState::Quarantined,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PodState::Starting => "STARTING",
            PodState::Warm => "WARM",
            PodState::Assigned => "ASSIGNED",
            PodState::Ready => "READY",
            PodState::Resetting => "RESETTING",
            PodState::Quarantined => "QUARANTINED",
        }
    }
}

impl fmt::Display for PodState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown pod state {0:?}")]
pub struct UnknownPodState(pub String);

impl FromStr for PodState {
    type Err = UnknownPodState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PodState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownPodState(s.to_string()))
    }
}

/// The two containers of a pod. They share one network namespace, owned by the db container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerRole {
    Db,
    Web,
}

impl ContainerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerRole::Db => "db",
            ContainerRole::Web => "web",
        }
    }
}

impl fmt::Display for ContainerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_name() {
        for state in PodState::ALL {
            assert_eq!(state.as_str().parse::<PodState>(), Ok(state));
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        assert!("warm".parse::<PodState>().is_err());
    }
}
