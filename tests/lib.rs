//! Shared helpers for clonepool's end-to-end tests (real Docker Engine, real workload image).

pub mod stats;
