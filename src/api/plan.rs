//! `Plan`: the ordered steps the operator will take for one change, their risk class, a
//! stable hash, who or what caused it, its approval and, in status, each step's progress.
//! The steps come from `crate::plan`; this file only gives them a wire form.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, OBJECT_NAME_PATTERN};

/// The steps the operator will take for one change, shown before they are taken.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "shardplane.io",
    version = "v1alpha1",
    kind = "Plan",
    namespaced,
    status = "PlanStatus",
    shortname = "pl",
    category = "shardplane",
    doc = "An explicit, ordered plan for one change: its steps, risk class, hash, cause, approval and progress.",
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.target.name"),
    printcolumn(name = "Kind", type_ = "string", json_path = ".spec.target.kind"),
    printcolumn(name = "Purpose", type_ = "string", json_path = ".spec.purpose"),
    printcolumn(name = "Risk", type_ = "string", json_path = ".spec.risk"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Done",
        type_ = "integer",
        json_path = ".status.completedSteps",
        description = "Steps finished"
    ),
    printcolumn(name = "Steps", type_ = "integer", json_path = ".status.totalSteps"),
    printcolumn(name = "Cause", type_ = "string", json_path = ".spec.cause.kind"),
    printcolumn(
        name = "Commit",
        type_ = "string",
        json_path = ".spec.cause.commit",
        description = "The git commit that caused the plan, when git-sync applied the change"
    ),
    printcolumn(
        name = "Hash",
        type_ = "string",
        json_path = ".spec.hash",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.approval) || self.approval.planHash == self.hash",
        "message": "spec.approval.planHash must equal spec.hash: an approval names exactly the plan it approves",
        "fieldPath": ".approval.planHash"
    },
    {
        "rule": "self.cluster == oldSelf.cluster && self.purpose == oldSelf.purpose && self.cause == oldSelf.cause && self.summary == oldSelf.summary && has(self.blocked) == has(oldSelf.blocked) && (!has(self.blocked) || self.blocked == oldSelf.blocked) && has(self.facts) == has(oldSelf.facts) && (!has(self.facts) || self.facts == oldSelf.facts)",
        "message": "a Plan is a record: only spec.approval and spec.paused may change once it is made (spec.cluster, purpose, cause, summary, blocked and facts are immutable; a different change is a new Plan)"
    }
]))]
pub struct PlanSpec {
    /// The DatabaseCluster (in this namespace) the plan acts on.
    #[schemars(length(min = 1, max = 63), regex(pattern = OBJECT_NAME_PATTERN))]
    pub cluster: String,
    /// The object whose change the plan carries out.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "spec.target is immutable"}
    ]))]
    pub target: PlanTarget,
    /// What the plan is for.
    pub purpose: PlanPurpose,
    /// Why the plan exists, for the audit trail.
    pub cause: PlanCause,
    /// What the plan risks: `Safe`, `Disruptive` or `Destructive`; decides whether it needs
    /// approval.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "spec.risk is immutable"}
    ]))]
    pub risk: RiskClass,
    /// The plan's stable content hash (hex SHA-256 of its steps and inputs): the same inputs
    /// always give the same hash. Approvals name it.
    #[schemars(length(min = 64, max = 64), regex(pattern = r"^[0-9a-f]{64}$"))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "spec.hash is immutable: a changed plan is a new Plan"}
    ]))]
    pub hash: String,
    /// A one-line summary of the change.
    #[schemars(length(max = 1024))]
    pub summary: String,
    /// The steps, in execution order; immutable.
    #[schemars(length(min = 1, max = 4096))]
    #[schemars(extend(
        "x-kubernetes-list-type" = "atomic",
        "x-kubernetes-validations" = [
            {"rule": "self == oldSelf", "message": "spec.steps is immutable: a changed plan is a new Plan"}
        ]
    ))]
    pub steps: Vec<PlanStep>,
    /// What the planner could not handle, and why (for example a shard with nowhere to go).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub blocked: Vec<PlanBlocker>,
    /// What else the plan reports beside its steps (for example bytes to copy, the lower
    /// bound on bytes that must move, blocked shards and why).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub facts: BTreeMap<String, String>,
    /// The approval, when a human gave it by patching the Plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<PlanApproval>,
    /// `true` pauses the plan: the executor starts no further step (a step already running
    /// keeps the effect it wrote) until it is set back to `false` or removed, and the plan
    /// holds the cluster's next decisions back meanwhile (a failover still runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

/// What a plan is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
pub enum PlanPurpose {
    /// Bring under-replicated shards up to the replication factor.
    Placement,
    /// Even out bytes, replica counts and primaries across nodes.
    Rebalance,
    /// Replace the primaries lost with a dead node, then re-replicate.
    Failover,
    /// Move every replica and primary off a node.
    Drain,
    /// Drain a node, then remove it from the cluster.
    Decommission,
    /// Replace shards by others covering the same keys (split or merge).
    Reshard,
    /// Upgrade or restart nodes in waves.
    NodeRollout,
    /// Apply a schema version to shards in waves.
    SchemaRollout,
    /// Drop the data of a deleted Table's shards, then let the Table go.
    DropTable,
}

/// Something a plan could not handle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct PlanBlocker {
    /// The shard or node concerned.
    pub subject: String,
    /// Why, and what a user can do about it.
    pub reason: String,
}

/// The object a plan changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct PlanTarget {
    /// Its kind: DatabaseCluster, DatabaseNode, Table, Shard or SchemaVersion.
    pub kind: TargetKind,
    /// Its name, in the plan's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
}

/// The kinds a plan can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
pub enum TargetKind {
    /// A whole cluster (rebalancing, rolling upgrade).
    DatabaseCluster,
    /// One node (drain, decommission, failover of its primaries).
    DatabaseNode,
    /// One table (split, merge, schema change).
    Table,
    /// One shard (move, failover).
    Shard,
    /// One schema version (rollout).
    SchemaVersion,
}

/// Why a plan exists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct PlanCause {
    /// `GitCommit`, `User`, `Policy` (the operator's own automatic policy) or `Failure`.
    pub kind: CauseKind,
    /// The git commit, when git-sync applied the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub commit: Option<String>,
    /// The user, when a person applied the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub user: Option<String>,
    /// What was observed or changed, in a sentence.
    #[serde(default)]
    #[schemars(length(max = 4096))]
    pub detail: String,
}

/// What caused a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
pub enum CauseKind {
    /// A commit applied by git-sync.
    GitCommit,
    /// A person, through kubectl.
    User,
    /// The operator's own policy (rebalancing, automatic splits).
    Policy,
    /// A detected failure (a dead node).
    Failure,
}

/// What a plan risks.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[schemars(transform = super::describe_by_field)]
pub enum RiskClass {
    /// Loses no availability.
    Safe,
    /// Briefly disrupts clients (primary transfer, write fence, restart).
    Disruptive,
    /// Destroys data; never runs without approval.
    Destructive,
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct PlanStep {
    /// The step's position, from 0: the order of the steps of one operation, and of the waves.
    #[schemars(range(min = 0))]
    pub id: i32,
    /// The wave the step belongs to: the operations of one wave run concurrently, a wave
    /// starts after the previous one finished.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub wave: i32,
    /// The operation the step belongs to, numbered from 0 in plan order: an operation's steps
    /// run one after another. Plans written before operations were numbered have 0 on every
    /// step, so their steps run one at a time.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub operation: i32,
    /// What the step does, in the planner's vocabulary (for example `AddReplica`,
    /// `TransferPrimary`, `SwitchRouting`); see docs/planning.md.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Z][A-Za-z]*$"))]
    pub action: String,
    /// The Shard the step acts on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// The DatabaseNode the step acts on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The whole action with all its arguments, as JSON in the planner's vocabulary; what the
    /// executor runs.
    #[schemars(length(min = 2, max = 65536))]
    pub detail: String,
    /// Why the planner chose this step, in a sentence.
    #[serde(default)]
    pub reason: String,
}

/// A human's approval of a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct PlanApproval {
    /// The hash of the plan approved; must equal spec.hash.
    #[schemars(length(min = 64, max = 64), regex(pattern = r"^[0-9a-f]{64}$"))]
    pub plan_hash: String,
    /// Who approved it.
    #[schemars(length(min = 1, max = 253))]
    pub approved_by: String,
}

/// The phase of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
pub enum PlanPhase {
    /// Made, not yet started.
    Pending,
    /// Needs approval before it runs.
    AwaitingApproval,
    /// Steps are being executed.
    Running,
    /// Every step succeeded.
    Succeeded,
    /// A step failed; data is intact and the plan can resume.
    Failed,
    /// Its inputs changed before it ran; a new plan replaces it.
    Superseded,
}

/// The phase of one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
pub enum StepPhase {
    /// Not started.
    Pending,
    /// Started; recorded before acting, so a restarted operator resumes it.
    Running,
    /// Finished.
    Succeeded,
    /// Failed; see message.
    Failed,
}

/// The progress of one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    /// The step's id.
    pub id: i32,
    /// Its phase.
    pub phase: StepPhase,
    /// How many times it was started.
    #[serde(default)]
    pub attempts: i32,
    /// When it was first started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// What happened, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl PlanStatus {
    /// How many steps have succeeded.
    pub fn succeeded_steps(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.phase == StepPhase::Succeeded)
            .count()
    }
}

impl StepStatus {
    /// Step `id`, not yet started.
    pub fn pending(id: i32) -> Self {
        StepStatus {
            id,
            phase: StepPhase::Pending,
            attempts: 0,
            started_at: None,
            finished_at: None,
            message: None,
        }
    }
}

/// A plan's progress.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, plus `Approved`; a refused approval says why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The plan's phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PlanPhase>,
    /// Who or what approved it (`policy:safe`, `user:<name>`, or
    /// `annotation:<Kind>/<name>[@<commit>]` with the git commit that carried the annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// Steps finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_steps: Option<i32>,
    /// Steps in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_steps: Option<i32>,
    /// Per-step progress, in step order. Written whole by the executor, its one writer (an
    /// atomic list: the server keeps no per-step field ownership, a third of a large plan's
    /// size otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub steps: Vec<StepStatus>,
    /// The leader epoch of the operator executing the plan; a deposed operator's writes carry
    /// an older one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor_epoch: Option<i64>,
    /// When the plan started running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}
