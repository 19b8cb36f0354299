//! The planner's plain domain types: nodes, shards and their replicas as observed.
//! The operator converts Kubernetes resources into these; nothing here knows about kube.

use serde::{Deserialize, Serialize};

use super::keyspace::KeyRange;

/// Where a storage node stands in its lifecycle, as the planner needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodePhase {
    /// Registered but not yet serving.
    Pending,
    /// Serving and heartbeating.
    Online,
    /// Missed heartbeats; not yet declared dead.
    Suspect,
    /// Declared dead: its replicas are unavailable.
    Offline,
    /// Serving, but every replica is to leave it.
    Draining,
    /// Taken out for maintenance by an operator.
    Maintenance,
    /// Removed from the cluster for good.
    Decommissioned,
}

/// One storage node (a PostgreSQL host running the agent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The `DatabaseNode` name.
    pub name: String,
    /// Region the node runs in.
    pub region: String,
    /// Zone (failure domain inside the region) the node runs in.
    pub zone: String,
    /// Bytes of shard data the node can hold.
    pub capacity_bytes: u64,
    /// Relative share of data and replicas the node should carry (100 is ordinary;
    /// 0 means the node takes no data).
    pub weight: u32,
    /// Lifecycle phase.
    pub phase: NodePhase,
    /// A user cordoned the node: it keeps what it has but receives nothing new.
    pub cordoned: bool,
}

impl Node {
    /// Whether new replicas (and leadership) may be placed on this node.
    pub fn accepts_replicas(&self) -> bool {
        self.phase == NodePhase::Online && !self.cordoned && self.weight > 0
    }

    /// Whether the replicas on this node are currently serving.
    pub fn is_live(&self) -> bool {
        matches!(self.phase, NodePhase::Online | NodePhase::Draining)
    }
}

/// The role of a replica in its shard's replica set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReplicaRole {
    /// Accepts writes; secondaries stream from it.
    Primary,
    /// Streams from the primary; a failover candidate when in sync.
    Secondary,
    /// Holds no data; counts towards quorum only.
    Witness,
}

/// One replica of a shard as observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// The node holding the replica.
    pub node: String,
    /// Its role.
    pub role: ReplicaRole,
    /// Whether the replica is streaming within the cluster's lag bound (synchronous
    /// standbys report in sync once they have caught up).
    pub in_sync: bool,
    /// How many bytes of WAL it is behind the primary.
    pub lag_bytes: u64,
}

/// A user's placement wishes for one shard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlacement {
    /// Nodes that must hold a replica of the shard; the planner never moves these replicas.
    pub pinned_nodes: Vec<String>,
    /// The region the primary should be in, when it can be.
    pub preferred_primary_region: Option<String>,
}

/// One shard: a key range of one table and its replica set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// The `Shard` name.
    pub name: String,
    /// The table whose rows the shard holds.
    pub table: String,
    /// The slice of the table's key space the shard owns.
    pub range: KeyRange,
    /// Bytes of data in one replica.
    pub size_bytes: u64,
    /// The primary's epoch; every promotion bumps it.
    pub epoch: u64,
    /// The replicas as observed.
    pub replicas: Vec<Replica>,
    /// The user's placement wishes.
    pub placement: ShardPlacement,
}

impl Shard {
    /// The node holding the primary, if any replica is primary.
    pub fn primary_node(&self) -> Option<&str> {
        self.replicas
            .iter()
            .find(|r| r.role == ReplicaRole::Primary)
            .map(|r| r.node.as_str())
    }

    /// Whether `node` holds a replica of the shard.
    pub fn has_replica_on(&self, node: &str) -> bool {
        self.replicas.iter().any(|r| r.node == node)
    }
}

/// The observed state of one database cluster: the planner's whole input about the world.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Replicas each shard should have (the cluster's replication factor).
    pub replication_factor: u32,
    /// Every storage node.
    pub nodes: Vec<Node>,
    /// Every shard of every table.
    pub shards: Vec<Shard>,
}
