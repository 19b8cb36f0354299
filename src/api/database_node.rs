//! `DatabaseNode`: one storage node. Its agent registers it and reports liveness, version,
//! capacity use and replica counts in status; users may cordon, put into maintenance or
//! decommission it through its spec.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, DNS_LABEL_PATTERN, OBJECT_NAME_PATTERN};

/// One storage node running the PostgreSQL instances of the shard replicas placed on it.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "shardplane.io",
    version = "v1alpha1",
    kind = "DatabaseNode",
    namespaced,
    status = "DatabaseNodeStatus",
    shortname = "dbn",
    category = "shardplane",
    doc = "A storage node of a DatabaseCluster: where it is, how much it holds, and what its agent observes.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region"),
    printcolumn(name = "Zone", type_ = "string", json_path = ".spec.zone"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.replicas",
        description = "Shard replicas on the node"
    ),
    printcolumn(
        name = "Primaries",
        type_ = "integer",
        json_path = ".status.primaries",
        description = "Shard primaries on the node"
    ),
    printcolumn(name = "Version", type_ = "string", json_path = ".status.version"),
    printcolumn(
        name = "Heartbeat",
        type_ = "date",
        json_path = ".status.lastHeartbeatTime",
        description = "Last durable liveness record"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseNodeSpec {
    /// The DatabaseCluster (in this namespace) the node belongs to; immutable.
    #[schemars(length(min = 1, max = 63), regex(pattern = OBJECT_NAME_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "spec.cluster is immutable: a node cannot move to another cluster"}
    ]))]
    pub cluster: String,
    /// The region the node is in; one of the cluster's regions; immutable.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "spec.region is immutable: decommission the node and register a new one"}
    ]))]
    pub region: String,
    /// The zone (failure domain) inside the region; immutable.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "spec.zone is immutable: decommission the node and register a new one"}
    ]))]
    pub zone: String,
    /// The host name or IP address other nodes and clients reach the node's PostgreSQL
    /// instances at; its instances listen on it, and admit replication from the cluster's
    /// nodes' addresses only.
    #[schemars(length(min = 1, max = 253))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "isIP(self) || self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",
            "message": "spec.address must be an IP address (10.0.0.7, fd00::7) or a DNS host name (lower-case letters, digits, '-' and '.')"
        }
    ]))]
    pub address: String,
    /// The TCP ports the node's PostgreSQL instances may listen on, one per replica.
    pub ports: PortRange,
    /// What the node can hold.
    pub capacity: NodeCapacity,
    /// The node's share of load relative to others (default 100): a node of weight 200
    /// receives twice the bytes and replicas of one of weight 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub weight: Option<i32>,
    /// What the operator should do with the node: `Active` (default) receives replicas;
    /// `Cordoned` keeps its replicas but receives no new ones; `Drained` moves every replica
    /// and primary away; `Maintenance` moves primaries away and tolerates the node's absence
    /// without re-replicating; `Decommissioned` drains the node and then removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_state: Option<NodeDesiredState>,
}

/// A range of TCP ports, both ends included.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.first <= self.last", "message": "spec.ports.first must not be greater than spec.ports.last"}
]))]
pub struct PortRange {
    /// The first port of the range.
    #[schemars(range(min = 1024, max = 65535))]
    pub first: i32,
    /// The last port of the range.
    #[schemars(range(min = 1024, max = 65535))]
    pub last: i32,
}

/// What a node can hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct NodeCapacity {
    /// Usable storage for replicas, in bytes.
    #[schemars(range(min = 1))]
    pub storage_bytes: i64,
    /// The most replicas the node may hold (default: the size of its port range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_replicas: Option<i32>,
}

/// What the operator should do with a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
pub enum NodeDesiredState {
    /// The node holds replicas and receives new ones.
    Active,
    /// The node keeps its replicas but receives no new ones.
    Cordoned,
    /// Every replica and primary moves off the node.
    Drained,
    /// Primaries move off; the node may go away briefly without its replicas being replaced.
    Maintenance,
    /// The node is drained and then leaves the cluster.
    Decommissioned,
}

/// The lifecycle phase of a node, as the operator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
pub enum NodePhase {
    /// Registered, not yet heard from.
    Pending,
    /// Alive and serving.
    Online,
    /// Silent for longer than the suspect timeout: no new primaries go to it.
    Suspect,
    /// Silent for longer than the dead timeout: its primaries have failed over.
    Offline,
    /// Its replicas are moving away.
    Draining,
    /// In maintenance: primaries moved away, absence tolerated.
    Maintenance,
    /// Drained and removed from the cluster.
    Decommissioned,
}

/// What the agent and the operator observe of a node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseNodeStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`; a drain that cannot finish says why here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The node's lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<NodePhase>,
    /// The node software version the agent runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The PostgreSQL server version on the node (for example `15.18`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_version: Option<String>,
    /// Shard replicas on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Shard primaries on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primaries: Option<i32>,
    /// Bytes the node's replicas use on disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<i64>,
    /// When liveness was last recorded durably in the API (the agent reports more often to
    /// the operator directly; this is the fallback record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,
    /// The agent's liveness epoch: bumped each time the agent starts, so a restarted agent is
    /// told apart from one that merely paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_epoch: Option<i64>,
    /// When the certificate the node's instances serve expires (written by the agent from
    /// the installed file); the operator issues a new one two thirds through its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_not_after: Option<Time>,
    /// The cluster's `spec.postgresParameters` as the node's instances run them (written by
    /// the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<NodeParameters>,
    /// The restart the operator last asked of the node (written by the plan executor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartRequest>,
    /// The Plan whose restart every instance of the node has carried out (written by the
    /// agent); equal to `restart.plan` once the restart is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_for: Option<String>,
    /// Instances that failed to start at their last attempt, and PostgreSQL's reason
    /// (written by the agent); a rolling restart waits at this node and says so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_instances: Vec<InstanceFailure>,
    /// Application roles of the cluster's `spec.roles` that the node could not apply, and
    /// why (written by the agent; never a password).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub role_failures: Vec<RoleFailure>,
}

/// An application role the agent could not apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct RoleFailure {
    /// The role's name (`spec.roles[].name` of the DatabaseCluster).
    pub role: String,
    /// The shard whose primary refused it; absent when the role could not be applied
    /// anywhere (its password Secret is missing or unreadable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// Why: the Secret and key that are missing, or PostgreSQL's message.
    pub reason: String,
}

/// An instance that failed to start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct InstanceFailure {
    /// The shard whose replica it is.
    pub shard: String,
    /// Why, in PostgreSQL's words (the server log's last `FATAL` line).
    pub reason: String,
}

/// The cluster's PostgreSQL parameters on one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct NodeParameters {
    /// The DatabaseCluster `metadata.generation` whose parameters every instance of the node
    /// has applied (or refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Each parameter of `spec.postgresParameters` and the value PostgreSQL runs with now
    /// (as `SHOW` prints it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub effective: BTreeMap<String, String>,
    /// Parameters whose new value takes effect only at the next restart of the instances (a
    /// rolling restart plan carries it out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub pending_restart: Vec<String>,
    /// Parameters PostgreSQL refused (unknown, or a value out of range): while any is
    /// refused, none of the change is applied and the previous parameters stay in force.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<RejectedParameter>,
}

/// A parameter PostgreSQL refused, and its words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct RejectedParameter {
    /// The parameter's name.
    pub name: String,
    /// Why it was refused (PostgreSQL's message).
    pub reason: String,
}

/// A restart the operator asked of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct RestartRequest {
    /// The Plan whose `RestartNode` step asked; a resumed step asks again with the same
    /// name, so no node restarts twice for one plan.
    pub plan: String,
    /// The `shardplane.io/restart-requested` annotations (of the cluster and the node) the
    /// restart answers, when it was asked for on demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_demand: Option<String>,
}
