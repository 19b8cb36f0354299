//! How agents prove they live: the heartbeat they POST to every operator replica, and the
//! Lease each renews as the durable record.

use serde::{Deserialize, Serialize};

/// The HTTP path agents post heartbeats to.
pub const HEARTBEAT_PATH: &str = "/v1/heartbeat";

/// The Lease the operator replicas compete for.
pub const OPERATOR_LEASE: &str = "shardplane-operator";

/// The Lease a node's agent renews as its durable liveness record.
pub fn node_lease_name(node: &str) -> String {
    format!("shardplane-node-{node}")
}

/// One heartbeat of an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// The namespace of the node's DatabaseNode.
    pub namespace: String,
    /// The DatabaseNode's name.
    pub node: String,
    /// Bumped each time the agent starts.
    pub agent_epoch: i64,
}
