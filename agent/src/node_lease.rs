//! The node Lease (Kubernetes mode): the Lease `clonepool-agent-<node>` that makes sure one agent
//! at a time manages a node's Pods (two agents would share the node's state file and remove each
//! other's Pods as orphans). The agent holds it before its pool starts and keeps it while it runs
//! ([`clonepool_common::lease::HeldLease`]); the coordinator may read the Leases to see which
//! nodes have a live agent.

use clonepool_common::lease::HeldLease;

/// The Lease name of `node`.
pub fn lease_name(node: &str) -> String {
    format!("clonepool-agent-{node}")
}

/// The node Lease of `node` in `namespace`, for the agent Pod `holder`.
pub fn node_lease(client: kube::Client, namespace: &str, node: &str, holder: &str) -> HeldLease {
    HeldLease::new(client, namespace, &lease_name(node), holder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_has_its_own_lease() {
        assert_eq!(lease_name("vm"), "clonepool-agent-vm");
        assert_ne!(lease_name("a"), lease_name("b"));
    }
}
