//! Where replicas may go: the fault-domain spread rule derived from the replication factor,
//! and the placement plan that brings under-replicated shards up to it. Node choice itself
//! (eligibility, capacity, spread, weighted load) lives on the cluster view.

use serde::{Deserialize, Serialize};

use super::cluster::ClusterState;
use super::error::PlanError;
use super::moves::add_replica;
use super::steps::{BlockReason, ConcurrencyLimits, Plan, PlanBuilder, PlanKind};
use super::topology::Topology;

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

/// A plan that gives every shard `replication_factor` serving replicas: pinned nodes first,
/// then the best-spread, least-loaded nodes. Shards that cannot be fully placed are blocked
/// with the reason each candidate node was turned down — never silently under-replicated.
pub fn plan_placement(topology: &Topology, limits: ConcurrencyLimits) -> Result<Plan, PlanError> {
    let mut state = ClusterState::new(topology)?;
    let mut plan = PlanBuilder::new(PlanKind::Placement, limits);
    let rf = topology.replication_factor;
    for shard in 0..topology.shards.len() {
        let have = state.serving_replicas(shard);
        if have >= rf {
            continue;
        }
        let mut steps = Vec::new();
        let mut missing = rf - have;
        let pins = state.pinned[shard].clone();
        for node in pins {
            if missing == 0 || state.slots[shard].iter().any(|s| s.node == node) {
                continue;
            }
            match state.check_host(shard, node, None) {
                Ok(()) => {
                    steps.extend(add_replica(&mut state, shard, node, "pinned by the user"));
                    missing -= 1;
                }
                Err(why) => {
                    plan.block(
                        state.shard_name(shard),
                        BlockReason::NoPlacement {
                            missing,
                            rejected: vec![(why, 1)],
                        },
                    );
                    missing = 0;
                }
            }
        }
        while missing > 0 {
            match state.choose_host(shard, None) {
                Ok(node) => {
                    let why = format!(
                        "shard has {} of {rf} replicas; {} is the least-loaded node in a zone and \
                         region not yet holding one",
                        state.serving_replicas(shard),
                        state.node_name(node)
                    );
                    steps.extend(add_replica(&mut state, shard, node, &why));
                    missing -= 1;
                }
                Err(rejected) => {
                    plan.block(
                        state.shard_name(shard),
                        BlockReason::NoPlacement { missing, rejected },
                    );
                    missing = 0;
                }
            }
        }
        if !steps.is_empty() {
            plan.schedule(state.shard_name(shard), steps, None);
        }
    }
    Ok(plan.finish())
}
