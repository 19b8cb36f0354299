//! The plan's stable content hash: SHA-256 over a canonical JSON serialization of what the
//! plan does (kind, waves, subjects, actions, risks, blockers) — never of `Debug` output.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::steps::{Blocker, Operation, PlanKind, RiskClass, StepAction};

#[derive(Serialize)]
struct HashedStep<'a> {
    action: &'a StepAction,
    risk: RiskClass,
}

#[derive(Serialize)]
struct HashedOperation<'a> {
    wave: u32,
    subject: &'a str,
    steps: Vec<HashedStep<'a>>,
}

#[derive(Serialize)]
struct HashedPlan<'a> {
    kind: PlanKind,
    operations: Vec<HashedOperation<'a>>,
    blocked: &'a [Blocker],
}

/// Hex SHA-256 of the plan's content. Step reasons are left out on purpose: they explain,
/// they do not change what runs, so rewording them must not invalidate an approval.
pub(crate) fn content_hash(
    kind: PlanKind,
    operations: &[Operation],
    blocked: &[Blocker],
) -> String {
    let hashed = HashedPlan {
        kind,
        operations: operations
            .iter()
            .map(|op| HashedOperation {
                wave: op.wave,
                subject: &op.subject,
                steps: op
                    .steps
                    .iter()
                    .map(|s| HashedStep {
                        action: &s.action,
                        risk: s.risk,
                    })
                    .collect(),
            })
            .collect(),
        blocked,
    };
    let mut hasher = Sha256::new();
    // Serializing plain structs, enums, strings and integers into a hasher cannot fail.
    let _ = serde_json::to_writer(&mut hasher, &hashed);
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
