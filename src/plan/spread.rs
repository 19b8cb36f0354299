//! Where replicas may go: the fault-domain spread rule derived from the replication factor
//! and the number of regions the cluster spans.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::topology::{Node, NodePhase};

/// The most replicas of one shard a single zone, and a single region, may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpreadLimits {
    /// Replicas of one shard allowed in one zone.
    pub per_zone: u32,
    /// Replicas of one shard allowed in one region (`u32::MAX` when regions are not a
    /// failure domain the cluster can survive).
    pub per_region: u32,
}

/// The spread rule for replication factor `rf` in a cluster spanning `regions` regions.
///
/// A shard keeps its quorum (`rf / 2 + 1` replicas) after losing a failure domain only if that
/// domain held at most `rf - quorum` of its replicas. Zones are always such a domain; regions
/// are when `rf ≥ 3` and the cluster spans at least 3 regions. With `rf ≤ 2` no loss is
/// survivable, so the rule degrades to "one replica per zone" (still the best spread).
pub fn spread_limits(rf: u32, regions: usize) -> SpreadLimits {
    let tolerated = rf.saturating_sub(rf / 2 + 1).max(1);
    SpreadLimits {
        per_zone: tolerated,
        per_region: if rf >= 3 && regions >= 3 {
            tolerated
        } else {
            u32::MAX
        },
    }
}

/// The regions the spread rule counts: those with a node that is neither silent nor gone
/// (`Suspect`, `Offline`, `Decommissioned`). A region all of whose nodes are silent is lost
/// for now, and no failure domain the cluster can place in: with fewer than 3 regions left,
/// only zones are constrained, so a lost region's replicas are replaced in the others — and
/// once it returns, `plan_respread` moves one replica of each crowded shard back.
pub fn regions_in_service(nodes: &[Node]) -> usize {
    nodes
        .iter()
        .filter(|n| {
            !matches!(
                n.phase,
                NodePhase::Suspect | NodePhase::Offline | NodePhase::Decommissioned
            )
        })
        .map(|n| n.region.as_str())
        .collect::<BTreeSet<_>>()
        .len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_rule_follows_the_quorum() {
        assert_eq!(
            spread_limits(3, 3),
            SpreadLimits {
                per_zone: 1,
                per_region: 1
            }
        );
        assert_eq!(spread_limits(3, 2).per_region, u32::MAX);
        assert_eq!(
            spread_limits(5, 3),
            SpreadLimits {
                per_zone: 2,
                per_region: 2
            }
        );
        assert_eq!(spread_limits(1, 5).per_zone, 1);
        assert_eq!(spread_limits(2, 5).per_region, u32::MAX);
    }
}
