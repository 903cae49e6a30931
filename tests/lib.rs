//! Shared helpers for clonepool's end-to-end tests and its bench (real Docker Engine, real
//! workload image, real agent and coordinator processes).

pub mod docker;
pub mod fixture;
pub mod kube_support;
pub mod procs;
pub mod stack;
pub mod standin;
pub mod stats;
