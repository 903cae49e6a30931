//! The clonepool node agent: owns the pods of one node (warm pool, claims, resets) and the
//! container runtime layer underneath them.

pub mod runtime;

// The agent layer above the runtime.
pub mod admin;
pub mod api;
pub mod app;
pub mod config;
pub mod connecting_runtime;
pub mod ctl;
pub mod debug_socket;
pub mod export;
pub mod fingerprint;
pub mod import;
pub mod metrics;
pub mod node_lease;
pub mod pod_commands;
pub mod pool;
pub mod provision;
pub mod reset;
pub mod secrets;
pub mod store;
