//! Wire types and pure, I/O-free helpers shared by the coordinator, the agent and `clonepoolctl`.

pub mod agent_api;
pub mod api;
pub mod error;
pub mod ids;
pub mod pod;
pub mod rewrite;
