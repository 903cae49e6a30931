//! The clonepool node agent: owns the pods of one node (warm pool, claims, resets) and the
//! container runtime layer underneath them.

pub mod runtime;
