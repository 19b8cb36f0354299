//! `Shard`: one half-open key range of one table and its placement wishes (spec), and what
//! is: the replicas the operator wants and the agents report, the primary and its epoch, the
//! phase (status).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, DNS_LABEL_PATTERN, OBJECT_NAME_PATTERN};

/// One key range of one table, served by a replica set of PostgreSQL instances.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "shardplane.io",
    version = "v1alpha1",
    kind = "Shard",
    namespaced,
    status = "ShardStatus",
    shortname = "sh",
    category = "shardplane",
    selectable = ".spec.table",
    doc = "One key range of one table and its replicas. Absent range ends mean the edges of the key space.",
    printcolumn(name = "Table", type_ = "string", json_path = ".spec.table"),
    printcolumn(
        name = "Start",
        type_ = "string",
        json_path = ".spec.range.start",
        description = "First key (inclusive); none = start of key space"
    ),
    printcolumn(
        name = "End",
        type_ = "string",
        json_path = ".spec.range.end",
        description = "Key after the range (exclusive); none = end of key space"
    ),
    printcolumn(name = "Primary", type_ = "string", json_path = ".status.primary.node"),
    printcolumn(
        name = "Epoch",
        type_ = "integer",
        json_path = ".status.primary.epoch",
        priority = 1
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Replicas in sync"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicaCount",
        description = "Replicas wanted"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ShardSpec {
    /// The Table (in this namespace) whose rows the shard holds; immutable.
    #[schemars(length(min = 1, max = 63), regex(pattern = OBJECT_NAME_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "spec.table is immutable"}
    ]))]
    pub table: String,
    /// The half-open key range `[start, end)` the shard owns; immutable — a split or merge
    /// replaces Shards instead of changing one.
    pub range: KeyRangeSpec,
    /// Placement wishes for this shard's replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<ShardPlacement>,
}

/// A half-open range `[start, end)` of the signed 64-bit key space.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.start) || !has(self.end) || self.start < self.end",
        "message": "spec.range.start must be less than spec.range.end (the range is [start, end))",
        "fieldPath": ".start"
    },
    {
        "rule": "has(self.start) == has(oldSelf.start) && (!has(self.start) || self.start == oldSelf.start) && has(self.end) == has(oldSelf.end) && (!has(self.end) || self.end == oldSelf.end)",
        "message": "spec.range is immutable: split or merge by replacing Shards in one change"
    }
]))]
pub struct KeyRangeSpec {
    /// The first key of the range (inclusive); absent means the start of the key space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<i64>,
    /// The key after the range (exclusive); absent means the end of the key space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
}

/// Placement wishes for one shard.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct ShardPlacement {
    /// DatabaseNodes that must hold a replica of this shard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 7),
        inner(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub pinned_nodes: Vec<String>,
    /// The region the primary should be in, when it can be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub preferred_primary_region: Option<String>,
}

/// The role of a replica in its shard's replica set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
pub enum ReplicaRole {
    /// Accepts writes; secondaries stream from it.
    Primary,
    /// Streams from the primary; a failover candidate when in sync.
    Secondary,
    /// Holds no data; counts towards quorum only.
    Witness,
}

/// The state of one replica as its agent reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
pub enum ReplicaState {
    /// Being created (initdb or base backup).
    Creating,
    /// Catching up with the primary.
    CatchingUp,
    /// Streaming and within the lag bound.
    InSync,
    /// Refusing writes (self-fenced, or fenced for a split/merge switch).
    Fenced,
    /// Not running or unreachable.
    Down,
    /// Being removed.
    Removing,
}

/// The lifecycle phase of a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
pub enum ShardPhase {
    /// Replicas are being created.
    Provisioning,
    /// Serving reads and writes.
    Serving,
    /// Being split into narrower shards.
    Splitting,
    /// Being merged with a neighbour.
    Merging,
    /// A replica is moving to another node.
    Migrating,
    /// Replaced by a split or merge; held by a finalizer until data moved and routing switched.
    Retiring,
    /// No primary can serve: needs attention.
    Failed,
}

/// A replica the operator wants on a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct DesiredReplica {
    /// The DatabaseNode that should hold the replica.
    pub node: String,
    /// The role it should have.
    pub role: ReplicaRole,
}

/// A replica as its node's agent observes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct ObservedReplica {
    /// The DatabaseNode holding the replica.
    pub node: String,
    /// The role the replica has now.
    pub role: ReplicaRole,
    /// The replica's state.
    pub state: ReplicaState,
    /// `host:port` of the replica's PostgreSQL instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// How far behind the primary it is, in bytes of WAL (0 for the primary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<i64>,
    /// The epoch the replica last acted under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// For a standby whose stream from its primary has broken: the WAL position (in bytes
    /// from `0/0`) up to which it holds the primary's WAL. Failover promotes the standby
    /// holding the most, so a commit a synchronous quorum acknowledged survives; absent while
    /// the standby streams, so a busy shard does not rewrite its status on every commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_lsn: Option<i64>,
    /// When the agent last reported this replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_time: Option<Time>,
}

/// The shard's current primary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct PrimaryRef {
    /// The DatabaseNode holding the primary.
    pub node: String,
    /// The epoch the primary holds; every promotion bumps it, fencing older primaries.
    pub epoch: i64,
}

/// What the operator asks of a shard taking part in a split or merge (written by the plan
/// executor under its own field manager; see docs/dataplane.md, "Split and merge").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct ReshardOrder {
    /// On a target: the source primaries whose rows of a range this shard's primary copies
    /// and then follows by row-filtered logical replication. Emptied once routing switched
    /// (or the change was aborted): the primary then drops its subscriptions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copy_from: Vec<RangeEndpoint>,
    /// On a source: whether its primary must refuse writes (the brief fence before the
    /// routing switch); false again when a failed verification aborts the change.
    #[serde(default)]
    pub fence: bool,
    /// On a source: the target primaries to compare with, range by range (row count and
    /// checksum), once the fence holds and the targets have applied every fenced write.
    /// Written before the fence: the primary then takes the bulk of the comparison while it
    /// still serves, so only the rows written since are compared under the fence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify: Vec<RangeEndpoint>,
    /// On a source: when (Unix milliseconds) `verify` was asked for; the fence is raised once
    /// the primary has prepared the comparison, or this long ago plus a timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_requested_at_ms: Option<i64>,
    /// On a source: when (Unix milliseconds) the routing map stopped naming it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_at_ms: Option<i64>,
    /// On a source: the earliest time (Unix milliseconds) it may be dropped; routing
    /// switched plus the table's grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_after_ms: Option<i64>,
}

/// One key range and the other shard's primary it moves from or to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct RangeEndpoint {
    /// The other shard.
    pub shard: String,
    /// `host:port` of the other shard's primary.
    pub endpoint: String,
    /// The first key concerned (inclusive); absent means the start of the key space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<i64>,
    /// The key after the keys concerned (exclusive); absent means the end of the key space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
}

/// How far a target's copy from one source is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
pub enum CopyPhase {
    /// The initial copy of the range's rows runs.
    Copying,
    /// The rows are copied; changes stream from the source as they commit.
    Streaming,
}

/// A target's copy from one source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct CopyProgress {
    /// The source shard.
    pub source: String,
    /// How far the copy is.
    pub phase: CopyPhase,
}

/// One range compared between a fenced source and a target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct RangeCheck {
    /// The target shard.
    pub target: String,
    /// Whether both sides hold the same rows (count and checksum).
    pub matches: bool,
    /// Rows in the range on the source.
    pub rows: i64,
    /// What was found, in words (both digests on a mismatch, or the error).
    pub detail: String,
}

/// What the primary's agent reports of a split or merge (under its own field manager).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct ReshardReport {
    /// On a target: each source's copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<CopyProgress>,
    /// On a source: the targets whose comparison is prepared (each side's range checksummed
    /// at a held snapshot, changed keys tracked since), before the fence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prepared: Vec<String>,
    /// On a source: when (Unix milliseconds) the primary started refusing writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_at_ms: Option<i64>,
    /// On a source: the WAL position after the fence, which every target has applied when
    /// the checks are made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_lsn: Option<String>,
    /// On a source: the range checks against each target, made after the fence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<RangeCheck>,
    /// On a source: when (Unix milliseconds) the checks were done; with `fencedAtMs` and the
    /// order's `switchedAtMs` it splits the write-fence window into the agent's part and the
    /// operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at_ms: Option<i64>,
}

/// What is: the replicas wanted and observed, the primary, the phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, with reasons a user can act on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The shard's lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ShardPhase>,
    /// The primary and its epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<PrimaryRef>,
    /// The replicas the operator wants, written by the operator; agents act on them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub desired_replicas: Vec<DesiredReplica>,
    /// The replicas as the agents report them, one entry per node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub replicas: Vec<ObservedReplica>,
    /// How many replicas are wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replica_count: Option<i32>,
    /// How many replicas are in sync (the primary included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Bytes the shard's data takes on its primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    /// Rows in the shard, as last counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<i64>,
    /// Writes per second on the primary, averaged over the last minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes_per_second: Option<i64>,
    /// The operator's side of a split or merge this shard takes part in: the ranges a target
    /// copies, the write fence and range checks asked of a source, when routing switched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reshard: Option<ReshardOrder>,
    /// The primary's agent's side of a split or merge: copy progress (on a target), the
    /// write fence and the range checks (on a source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reshard_report: Option<ReshardReport>,
    /// The SchemaVersion every replica of this shard has applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<i64>,
    /// The schema change the operator asks of this shard (written by the schema rollout):
    /// the primary's agent runs its statements, every replica's agent verifies the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_request: Option<SchemaRequest>,
    /// What each replica's agent verified of the requested schema, one entry per node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub schema_reports: Vec<ReplicaSchemaReport>,
}

/// A schema change the operator asks of one shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct SchemaRequest {
    /// The SchemaVersion the shard is to reach (lower than its current one for a rollback).
    pub version: i64,
    /// The statements the primary runs to reach it, in order; each is made idempotent, and
    /// none runs when the shard already has the version's schema.
    #[serde(default)]
    pub statements: Vec<String>,
    /// PostgreSQL `lock_timeout` of each statement, in milliseconds: a statement that waits
    /// longer for its lock fails (and is retried a few times) instead of blocking writes.
    pub lock_timeout_ms: i64,
    /// PostgreSQL `statement_timeout` of the statements run in a transaction, in
    /// milliseconds; absent for none (a rewrite may take long).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_timeout_ms: Option<i64>,
}

/// One replica's answer to a schema request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSchemaReport {
    /// The DatabaseNode holding the replica.
    pub node: String,
    /// The requested SchemaVersion this report is about.
    pub version: i64,
    /// Whether the replica's catalog (after replay, on a standby) holds that version's
    /// columns, types, indexes and checks.
    pub verified: bool,
    /// Why the version could not be applied (on the primary) or what differs, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
