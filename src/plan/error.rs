//! Errors for inputs the planner cannot work with at all. Problems the planner can work
//! around (a shard with nowhere to go, a node that cannot drain) are blockers in the plan.

/// The observed state is inconsistent, or a request names something that does not exist.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A replica names a node the topology does not contain.
    #[error(
        "shard {shard} has a replica on node {node}, which is not a known DatabaseNode; \
         register the node or remove the replica from the shard's status"
    )]
    UnknownReplicaNode {
        /// The shard.
        shard: String,
        /// The node it names.
        node: String,
    },
    /// A request names a node the topology does not contain.
    #[error("node {node} is not a known DatabaseNode; check the name")]
    UnknownNode {
        /// The node named.
        node: String,
    },
    /// A request names a shard the topology does not contain.
    #[error("shard {shard} is not a known Shard; check the name")]
    UnknownShard {
        /// The shard named.
        shard: String,
    },
    /// Two nodes or two shards share a name.
    #[error("the name {name} is used twice; node and shard names must be unique")]
    DuplicateName {
        /// The duplicated name.
        name: String,
    },
    /// The replication factor is zero.
    #[error("replication factor is 0; set DatabaseCluster spec.replicationFactor to at least 1")]
    ZeroReplicationFactor,
}
