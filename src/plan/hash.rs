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
    // Serializing plain structs, enums, strings and integers cannot fail. Serializing into a
    // buffer and hashing it once is several times faster than feeding the hasher token by
    // token.
    let bytes = serde_json::to_vec(&hashed).unwrap_or_default();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::plan::schedule::{ConcurrencyLimits, Plan, PlanBuilder};
    use crate::plan::steps::{PlanKind, Step, StepAction};

    fn plan(reason: &str, node: &str) -> Plan {
        let mut b = PlanBuilder::new(PlanKind::Drain, ConcurrencyLimits::default());
        let action = StepAction::RemoveReplica {
            shard: "s".into(),
            node: node.into(),
        };
        b.schedule("s", vec![Step::new(action, reason)], None);
        b.finish()
    }

    #[test]
    fn the_hash_covers_actions_not_reasons() {
        let a = plan("because", "n1");
        assert_eq!(a.hash.len(), 64);
        assert!(a.hash.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a.hash, plan("because", "n1").hash);
        assert_eq!(a.hash, plan("reworded", "n1").hash);
        assert_ne!(a.hash, plan("because", "n2").hash);
        assert_eq!(a.content_hash(), a.hash);
    }
}
