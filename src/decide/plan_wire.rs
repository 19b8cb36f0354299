//! The planner's `Plan` in its wire form (`Plan.spec`) and back: steps carry their wave, a
//! readable action name, shard and node, and the whole action as JSON, which is what the
//! executor runs. The plan's name derives from its cluster, purpose and hash, so creating
//! the same plan twice is one object. Also what the operator adds to a planner's plan: its
//! target, its cause (the audit trail), a summary.

use std::collections::BTreeMap;

use crate::api::Plan;
use crate::api::plan::{
    CauseKind, PlanBlocker, PlanCause, PlanPurpose, PlanSpec, PlanStatus, PlanStep, PlanTarget,
    RiskClass, StepPhase,
};
use crate::plan::{self, PlanKind, StepAction};
use crate::protocol::{CLUSTER_LABEL, PURPOSE_LABEL, SOURCE_COMMIT_ANNOTATION};

use super::Object;

/// The most steps one `Plan` object carries. The CRD allows 4,096, but a plan's status
/// records every step and is rewritten as each runs: at 1,000 shards a 6,000-step placement
/// was refused by the API server every tick and nothing was ever placed. A larger decision is
/// made in parts: the first operations now (`plan::Plan::first_steps`), the rest by the
/// next decision once this plan is done.
pub const MAX_PLAN_STEPS: usize = 512;

/// A plan the planner made, with what the operator adds to it.
pub struct Decision {
    /// The planner's plan.
    pub plan: plan::Plan,
    /// Target, cause, summary and facts.
    pub context: PlanContext,
}

/// Why a user-declared change of `object` happened: the git commit git-sync stamped on it
/// (`shardplane.io/source-commit`) when its spec came from git, else a user. A deletion is
/// always a user's (or a prune's) act, so it is never attributed to the stamped commit.
pub fn change_cause(object: &impl Object, detail: String) -> PlanCause {
    let commit = object
        .annotation(SOURCE_COMMIT_ANNOTATION)
        .filter(|_| !object.deleting())
        .map(str::to_owned);
    PlanCause {
        kind: if commit.is_some() {
            CauseKind::GitCommit
        } else {
            CauseKind::User
        },
        commit,
        user: None,
        detail,
    }
}

/// What the operator adds to a planner's plan to make it a `Plan` object.
pub struct PlanContext {
    /// The cluster.
    pub cluster: String,
    /// What the plan changes.
    pub target: PlanTarget,
    /// Why it exists.
    pub cause: PlanCause,
    /// One line for humans.
    pub summary: String,
    /// Figures the planner reported beside the steps.
    pub facts: BTreeMap<String, String>,
}

/// The `Plan` spec of a planner's plan.
pub fn to_spec(plan: &plan::Plan, context: PlanContext) -> Result<PlanSpec, serde_json::Error> {
    let mut steps = Vec::new();
    for (index, operation) in plan.operations.iter().enumerate() {
        for step in &operation.steps {
            let (shard, node) = subjects(&step.action);
            steps.push(PlanStep {
                id: steps.len() as i32,
                wave: operation.wave as i32,
                operation: index as i32,
                action: action_name(&step.action).to_string(),
                shard,
                node,
                detail: serde_json::to_string(&step.action)?,
                reason: step.reason.clone(),
            });
        }
    }
    Ok(PlanSpec {
        cluster: context.cluster,
        target: context.target,
        purpose: purpose(plan.kind),
        cause: context.cause,
        risk: risk(plan.risk),
        hash: plan.hash.clone(),
        summary: context.summary,
        steps,
        blocked: plan
            .blocked
            .iter()
            .map(|b| PlanBlocker {
                subject: b.subject.clone(),
                reason: b.reason.to_string(),
            })
            .collect(),
        facts: context.facts,
        approval: None,
        paused: None,
    })
}

/// The `Plan` object of `spec` named `name` in `namespace`, labelled with its cluster and
/// purpose (its owner, if any, is the caller's to set).
pub fn plan_object(name: &str, namespace: &str, spec: PlanSpec) -> Plan {
    let labels = BTreeMap::from([
        (CLUSTER_LABEL.to_owned(), spec.cluster.clone()),
        (PURPOSE_LABEL.to_owned(), format!("{:?}", spec.purpose)),
    ]);
    let mut object = Plan::new(name, spec);
    object.metadata.namespace = Some(namespace.to_owned());
    object.metadata.labels = Some(labels);
    object
}

/// The steps to advance now, as positions in `steps`: in the first wave that has a step not
/// yet succeeded, the first such step of each of its operations (an operation's steps run one
/// after another, the operations of a wave side by side). Empty when every step succeeded.
/// A step without a status entry counts as pending.
pub fn next_steps(steps: &[PlanStep], status: &PlanStatus) -> Vec<usize> {
    let succeeded = |step: &PlanStep| {
        status
            .steps
            .iter()
            .any(|s| s.id == step.id && s.phase == StepPhase::Succeeded)
    };
    let open: Vec<usize> = (0..steps.len())
        .filter(|&i| !succeeded(&steps[i]))
        .collect();
    let Some(wave) = open.iter().map(|&i| steps[i].wave).min() else {
        return Vec::new();
    };
    let mut operations = std::collections::BTreeSet::new();
    open.into_iter()
        .filter(|&i| steps[i].wave == wave && operations.insert(steps[i].operation))
        .collect()
}

/// The action a wire step runs.
pub fn step_action(step: &PlanStep) -> Result<StepAction, serde_json::Error> {
    serde_json::from_str(&step.detail)
}

/// The deterministic name of a plan: cluster, purpose and the start of its hash.
pub fn plan_name(cluster: &str, purpose: PlanPurpose, hash: &str) -> String {
    let purpose = format!("{purpose:?}").to_lowercase();
    let prefix: String = cluster.chars().take(40).collect();
    format!("{prefix}-{purpose}-{}", &hash[..hash.len().min(10)])
}

/// The wire purpose of a planner's plan kind.
pub fn purpose(kind: PlanKind) -> PlanPurpose {
    match kind {
        PlanKind::Placement => PlanPurpose::Placement,
        PlanKind::Rebalance => PlanPurpose::Rebalance,
        PlanKind::Failover => PlanPurpose::Failover,
        PlanKind::Drain => PlanPurpose::Drain,
        PlanKind::Decommission => PlanPurpose::Decommission,
        PlanKind::Reshard => PlanPurpose::Reshard,
        PlanKind::NodeRollout => PlanPurpose::NodeRollout,
        PlanKind::SchemaRollout => PlanPurpose::SchemaRollout,
    }
}

/// The wire risk class of a planner's risk class.
pub fn risk(risk: plan::RiskClass) -> RiskClass {
    match risk {
        plan::RiskClass::Safe => RiskClass::Safe,
        plan::RiskClass::Disruptive => RiskClass::Disruptive,
        plan::RiskClass::Destructive => RiskClass::Destructive,
    }
}

/// The action's name as `kubectl get plan -o yaml` shows it.
fn action_name(action: &StepAction) -> &'static str {
    match action {
        StepAction::AddReplica { .. } => "AddReplica",
        StepAction::CatchUp { .. } => "CatchUp",
        StepAction::TransferPrimary { .. } => "TransferPrimary",
        StepAction::Promote { .. } => "Promote",
        StepAction::RemoveReplica { .. } => "RemoveReplica",
        StepAction::WaitUntil { .. } => "WaitUntil",
        StepAction::PrepareTargets { .. } => "PrepareTargets",
        StepAction::CopyRows { .. } => "CopyRows",
        StepAction::CatchUpTarget { .. } => "CatchUpTarget",
        StepAction::FenceWrites { .. } => "FenceWrites",
        StepAction::VerifyRanges { .. } => "VerifyRanges",
        StepAction::SwitchRouting { .. } => "SwitchRouting",
        StepAction::DropShards { .. } => "DropShards",
        StepAction::RestartNode { .. } => "RestartNode",
        StepAction::UpgradeNode { .. } => "UpgradeNode",
        StepAction::AwaitNodeHealthy { .. } => "AwaitNodeHealthy",
        StepAction::ApplySchema { .. } => "ApplySchema",
        StepAction::RemoveNode { .. } => "RemoveNode",
    }
}

/// The shard and node a step is about, for readers of the plan.
fn subjects(action: &StepAction) -> (Option<String>, Option<String>) {
    let some = |s: &String| Some(s.clone());
    match action {
        StepAction::AddReplica { shard, node }
        | StepAction::CatchUp { shard, node }
        | StepAction::Promote { shard, node, .. }
        | StepAction::RemoveReplica { shard, node } => (some(shard), some(node)),
        StepAction::TransferPrimary { shard, to, .. } => (some(shard), some(to)),
        StepAction::CopyRows { source, .. } => (some(source), None),
        StepAction::CatchUpTarget { target } => (some(target), None),
        StepAction::ApplySchema { shard, .. } => (some(shard), None),
        StepAction::RestartNode { node, .. }
        | StepAction::UpgradeNode { node, .. }
        | StepAction::AwaitNodeHealthy { node }
        | StepAction::RemoveNode { node } => (None, some(node)),
        StepAction::WaitUntil { .. }
        | StepAction::PrepareTargets { .. }
        | StepAction::FenceWrites { .. }
        | StepAction::VerifyRanges { .. }
        | StepAction::SwitchRouting { .. }
        | StepAction::DropShards { .. } => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use crate::api::plan::StepStatus;

    use super::*;

    /// A step `id` of `operation` in `wave`.
    fn step(id: i32, wave: i32, operation: i32) -> PlanStep {
        PlanStep {
            id,
            wave,
            operation,
            action: "AddReplica".into(),
            shard: None,
            node: None,
            detail: "{}".into(),
            reason: String::new(),
        }
    }

    fn status(succeeded: &[i32]) -> PlanStatus {
        PlanStatus {
            steps: succeeded
                .iter()
                .map(|&id| StepStatus {
                    phase: StepPhase::Succeeded,
                    attempts: 1,
                    ..StepStatus::pending(id)
                })
                .collect(),
            ..PlanStatus::default()
        }
    }

    #[test]
    fn the_operations_of_a_wave_advance_side_by_side_and_their_steps_in_order() {
        // Wave 0: operation 0 (steps 0, 1), operation 1 (steps 2, 3); wave 1: operation 2.
        let steps = [
            step(0, 0, 0),
            step(1, 0, 0),
            step(2, 0, 1),
            step(3, 0, 1),
            step(4, 1, 2),
        ];
        assert_eq!(next_steps(&steps, &status(&[])), vec![0, 2]);
        assert_eq!(next_steps(&steps, &status(&[0])), vec![1, 2]);
        assert_eq!(next_steps(&steps, &status(&[0, 1, 2])), vec![3]);
        // The next wave starts only when every step of this one succeeded.
        assert_eq!(next_steps(&steps, &status(&[0, 1, 2, 3])), vec![4]);
        assert!(next_steps(&steps, &status(&[0, 1, 2, 3, 4])).is_empty());
    }

    #[test]
    fn a_plan_without_numbered_operations_runs_one_step_at_a_time() {
        // Written before operations were numbered: every step says operation 0.
        let steps = [step(0, 0, 0), step(1, 0, 0), step(2, 1, 0)];
        assert_eq!(next_steps(&steps, &status(&[])), vec![0]);
        assert_eq!(next_steps(&steps, &status(&[0])), vec![1]);
        assert_eq!(next_steps(&steps, &status(&[0, 1])), vec![2]);
    }

    #[test]
    fn every_operation_of_a_planned_wave_is_numbered_apart() {
        let mut planned = plan::Plan {
            kind: PlanKind::Placement,
            risk: plan::RiskClass::Safe,
            hash: String::new(),
            operations: ["orders-0", "orders-1"]
                .iter()
                .map(|shard| plan::Operation {
                    wave: 0,
                    subject: (*shard).into(),
                    steps: vec![
                        plan::Step::new(
                            StepAction::AddReplica {
                                shard: (*shard).into(),
                                node: "n1".into(),
                            },
                            "below the replication factor",
                        ),
                        plan::Step::new(
                            StepAction::CatchUp {
                                shard: (*shard).into(),
                                node: "n1".into(),
                            },
                            "wait for it",
                        ),
                    ],
                })
                .collect(),
            blocked: Vec::new(),
        };
        planned.hash = planned.content_hash();
        let context = PlanContext {
            cluster: "main".into(),
            target: PlanTarget {
                kind: crate::api::plan::TargetKind::DatabaseCluster,
                name: "main".into(),
            },
            cause: PlanCause {
                kind: CauseKind::Policy,
                commit: None,
                user: None,
                detail: String::new(),
            },
            summary: String::new(),
            facts: BTreeMap::new(),
        };
        let spec = to_spec(&planned, context).unwrap();
        let operations: Vec<i32> = spec.steps.iter().map(|s| s.operation).collect();
        assert_eq!(operations, vec![0, 0, 1, 1]);
        assert_eq!(next_steps(&spec.steps, &status(&[])), vec![0, 2]);
    }
}
