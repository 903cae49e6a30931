//! Wire types and pure, I/O-free helpers shared by the coordinator, the agent and `clonepoolctl`;
//! with the `kube` feature also the one I/O piece both binaries share, a held Lease ([`lease`]).

pub mod agent_api;
pub mod api;
pub mod error;
pub mod ids;
#[cfg(feature = "kube")]
pub mod lease;
pub mod pod;
pub mod rewrite;
