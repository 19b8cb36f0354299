//! `SchemaVersion`: an immutable, numbered schema of one table, with the DDL from the
//! previous version and its compatibility class; status tracks the rolling rollout per shard
//! and replica. Created by the operator from Table changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::table::TableSchema;
use super::{Condition, OBJECT_NAME_PATTERN};

/// One immutable version of a table's schema.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "shardplane.io",
    version = "v1alpha1",
    kind = "SchemaVersion",
    namespaced,
    status = "SchemaVersionStatus",
    shortname = "sv",
    category = "shardplane",
    doc = "An immutable, numbered version of a table's schema and the DDL that reaches it from the previous version.",
    printcolumn(name = "Table", type_ = "string", json_path = ".spec.table"),
    printcolumn(name = "Version", type_ = "integer", json_path = ".spec.version"),
    printcolumn(name = "Class", type_ = "string", json_path = ".spec.compatibility"),
    printcolumn(name = "Commit", type_ = "string", json_path = ".spec.source.commit"),
    printcolumn(name = "Rollout", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self == oldSelf", "message": "spec is immutable: a schema change creates the next SchemaVersion"},
    {
        "rule": "!has(self.previousVersion) || self.previousVersion < self.version",
        "message": "spec.previousVersion must be less than spec.version",
        "fieldPath": ".previousVersion"
    }
]))]
pub struct SchemaVersionSpec {
    /// The Table this is a version of.
    #[schemars(length(min = 1, max = 63), regex(pattern = OBJECT_NAME_PATTERN))]
    pub table: String,
    /// The version number, starting at 1 and growing by one per change.
    #[schemars(range(min = 1))]
    pub version: i64,
    /// The version this one changes; absent for the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub previous_version: Option<i64>,
    /// The whole schema at this version.
    pub schema: TableSchema,
    /// The statements that take a shard from the previous version to this one, in order.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 65536)))]
    pub ddl: Vec<String>,
    /// `Online`: no rewrite, no long lock. `Rewrite`: needs an online copy or approval.
    /// `Destructive`: drops data; never runs without approval.
    pub compatibility: Compatibility,
    /// Where the change came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ChangeSource>,
    /// Each change from the previous version, with its class and how it is carried out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub changes: Vec<SchemaChange>,
    /// The Table's `metadata.generation` this version was made from: the operator makes at
    /// most one version per generation, also across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub table_generation: Option<i64>,
}

/// One change of a schema version, as the differ classified it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct SchemaChange {
    /// The Table field that changed, e.g. `spec.columns[amount].type`.
    #[schemars(length(min = 1, max = 512))]
    pub field: String,
    /// This change's class.
    pub compatibility: Compatibility,
    /// What changes and, for a rewrite or a drop, how it is carried out.
    #[schemars(length(min = 1, max = 4096))]
    pub summary: String,
}

/// How a schema change affects a running table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
pub enum Compatibility {
    /// Applied online: no table rewrite and only brief locks.
    Online,
    /// Rewrites the table: done by an online copy, or in place after approval.
    Rewrite,
    /// Destroys data: runs only after approval.
    Destructive,
}

/// Where a change came from, for the audit trail.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct ChangeSource {
    /// The git commit that carried the change, when git-sync applied it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub commit: Option<String>,
    /// The repository URL (with no credentials) the commit came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = super::repository_url_rules()))]
    pub repository: Option<String>,
    /// The file in the repository that declared the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub path: Option<String>,
    /// The user who applied the change, when it did not come from git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub user: Option<String>,
}

/// The phase of a schema rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
pub enum RolloutPhase {
    /// Waiting for its plan to be approved or to start.
    Pending,
    /// Being applied wave by wave.
    RollingOut,
    /// Applied and verified on every replica of every shard.
    Complete,
    /// A shard failed; the rollout stopped and changed shards were rolled back.
    RolledBack,
    /// A shard failed and the change could not be rolled back; see conditions.
    Failed,
}

/// The rollout state of one shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct ShardRollout {
    /// The Shard.
    pub shard: String,
    /// The wave the shard belongs to (0 is the canary).
    pub wave: i32,
    /// `Pending`, `Applied`, `Verified`, `Failed` or `RolledBack`.
    pub state: String,
    /// The node where it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The error, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the shard's state last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

/// The rollout of a schema version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchemaVersionStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`; a failure names the shard, its node and the error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The rollout's phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RolloutPhase>,
    /// The Plan carrying out the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Per-shard rollout state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["shard"]))]
    pub shards: Vec<ShardRollout>,
}
