//! Whether a plan may run: the cluster's approval policy by risk class, an approval on the
//! plan itself, or an annotation carrying the plan's hash on its target object (what a
//! reviewed pull request commits). Shared with `shardplane plan`, which says in the pull
//! request whether the plan will wait.

use crate::api::Plan;
use crate::api::database_cluster::{Approval, ApprovalPolicy};
use crate::api::plan::{PlanPurpose, RiskClass, TargetKind};
use crate::protocol::APPROVE_ANNOTATION;

/// Whether a plan may run, and who or what approved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It may run; the approver as the audit trail records it (`policy:safe`,
    /// `user:<name>`, `annotation:<Kind>/<name>[@<commit>]`).
    Approved(String),
    /// It waits, with the `Approved=False` condition's reason and message.
    Waiting {
        /// CamelCase reason.
        reason: &'static str,
        /// What to do.
        message: String,
    },
}

/// What the plan's target object carries, as far as approval goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetMarks {
    /// Its `shardplane.io/approve-plan` annotation.
    pub approve: Option<String>,
    /// The git commit git-sync stamped on it, if its manifest came from git.
    pub commit: Option<String>,
}

/// The verdict on `plan` under the cluster's `policy`, given what its target carries.
pub fn verdict(plan: &Plan, policy: Option<&ApprovalPolicy>, target: &TargetMarks) -> Verdict {
    let needed = approval_needed(plan.spec.purpose, plan.spec.risk, policy);
    if needed == Approval::Automatic {
        return Verdict::Approved(format!("policy:{:?}", plan.spec.risk).to_lowercase());
    }
    if let Some(approval) = &plan.spec.approval {
        // CEL guarantees approval.planHash == spec.hash.
        return Verdict::Approved(format!("user:{}", approval.approved_by));
    }
    let kind = kind_name(plan.spec.target.kind);
    let name = &plan.spec.target.name;
    match &target.approve {
        Some(hash) if *hash == plan.spec.hash => Verdict::Approved(format!(
            "annotation:{kind}/{name}{}",
            // The approval came from git: name the commit that carried it.
            target
                .commit
                .as_ref()
                .map(|c| format!("@{c}"))
                .unwrap_or_default()
        )),
        Some(hash) => Verdict::Waiting {
            reason: "HashMismatch",
            message: format!(
                "{kind} {name} carries {APPROVE_ANNOTATION}={hash}, which is not this plan's hash {}; \
                 the approved plan is not this one (its inputs changed?) — review this plan and \
                 approve its hash",
                plan.spec.hash
            ),
        },
        None => Verdict::Waiting {
            reason: "AwaitingApproval",
            message: format!(
                "{:?} plans need approval: annotate {kind} {name} with {APPROVE_ANNOTATION}={} or set spec.approval",
                plan.spec.risk, plan.spec.hash
            ),
        },
    }
}

/// Whether a plan of `purpose` and `risk` waits for a human under the cluster's `policy`.
pub fn approval_needed(
    purpose: PlanPurpose,
    risk: RiskClass,
    policy: Option<&ApprovalPolicy>,
) -> Approval {
    match risk {
        // A failover restores service; waiting for a human would prolong the outage.
        _ if purpose == PlanPurpose::Failover => Approval::Automatic,
        RiskClass::Safe => policy.and_then(|p| p.safe).unwrap_or(Approval::Automatic),
        RiskClass::Disruptive => policy
            .and_then(|p| p.disruptive)
            .unwrap_or(Approval::Manual),
        RiskClass::Destructive => Approval::Manual,
    }
}

/// The kind's name, as `kubectl` and the approval messages spell it.
pub fn kind_name(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::DatabaseCluster => "DatabaseCluster",
        TargetKind::DatabaseNode => "DatabaseNode",
        TargetKind::Table => "Table",
        TargetKind::Shard => "Shard",
        TargetKind::SchemaVersion => "SchemaVersion",
    }
}
