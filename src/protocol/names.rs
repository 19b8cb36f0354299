//! Names on Kubernetes objects that more than one process writes or reads.

/// Annotation on a plan's target object that approves the plan whose hash it carries, so a
/// reviewed pull request can approve exactly the plan it previewed.
pub const APPROVE_ANNOTATION: &str = "shardplane.io/approve-plan";

/// Asks for a rolling restart, on a DatabaseCluster (every node) or a DatabaseNode (that
/// node): a new value (a timestamp, say) asks again, as `kubectl rollout restart` does.
pub const RESTART_ANNOTATION: &str = "shardplane.io/restart-requested";

/// The commit that last changed an object's manifest, stamped by git-sync; the operator
/// names it as the cause of the plans the object's change makes.
pub const SOURCE_COMMIT_ANNOTATION: &str = "shardplane.io/source-commit";

/// The GitSync whose repository an object comes from, stamped by git-sync: git-sync may
/// change or prune only objects carrying it, and never move one to another GitSync (the
/// chart's git-sync policy). A person adopts an existing object into a repository by setting it.
pub const GIT_SYNC_ANNOTATION: &str = "shardplane.io/git-sync";

/// The digest of the manifest git-sync last applied to an object (drift detection).
pub const SOURCE_DIGEST_ANNOTATION: &str = "shardplane.io/source-digest";

/// The Table annotation that sets how long shards replaced by a split or merge are kept
/// after the routing switch, in seconds.
pub const RETIRE_GRACE_ANNOTATION: &str = "shardplane.io/retire-grace-seconds";

/// The finalizer that keeps a deleted Table until an approved plan has dropped its shards.
pub const TABLE_FINALIZER: &str = "shardplane.io/drop-after-approval";

/// The finalizer that keeps a deleted DatabaseNode until no replica is left on it.
pub const NODE_FINALIZER: &str = "shardplane.io/drain-before-delete";

/// Label on a Plan: the DatabaseCluster it belongs to.
pub const CLUSTER_LABEL: &str = "shardplane.io/cluster";

/// Label on a Plan: its purpose.
pub const PURPOSE_LABEL: &str = "shardplane.io/purpose";

/// Label on a SchemaVersion: the Table whose schema it is.
pub const TABLE_LABEL: &str = "shardplane.io/table";

/// Field manager of the executor's writes to `Shard.status` (desired replicas, primary).
pub const EXECUTOR_MANAGER: &str = "shardplane-operator/executor";

/// Field manager of the executor's split/merge orders in `Shard.status.reshard`.
pub const RESHARD_MANAGER: &str = "shardplane-operator/reshard";

/// Field manager of the schema rollout's requests in `Shard.status.schemaRequest`.
pub const SCHEMA_ROLLOUT_MANAGER: &str = "shardplane-operator/schema-rollout";

/// Field manager of a Table's `SchemaAccepted` condition (the schema reconciler's one field).
pub const SCHEMA_MANAGER: &str = "shardplane-operator/schema";

/// Field manager of the shard readiness fields (`readyReplicas`, `phase`).
pub const SHARD_STATUS_MANAGER: &str = "shardplane-operator/shard-status";

/// Field manager of every node's split/merge report in `Shard.status.reshardReport`: one for
/// all nodes, so a new primary's report replaces the old primary's instead of leaving its
/// fields behind.
pub const RESHARD_REPORT_MANAGER: &str = "shardplane-agent/reshard";

/// Field manager of git-sync's server-side applies.
pub const GIT_SYNC_MANAGER: &str = "shardplane-git-sync";

/// The field manager of everything a node's agent writes: its Lease, its DatabaseNode's
/// agent-owned status fields, and its entries in `Shard.status.replicas`.
pub fn agent_manager(node: &str) -> String {
    format!("shardplane-agent-{node}")
}

/// The field manager of a node's agent's schema rollout reports.
pub fn agent_schema_manager(node: &str) -> String {
    format!("{}-schema", agent_manager(node))
}
