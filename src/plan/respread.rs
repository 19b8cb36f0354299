//! Restoring a shard's shape once the nodes it waited for are back: a replica beyond the
//! replication factor (made while a node was away, which then returned) removed, and a
//! replica moved out of a zone or region holding more than the spread rule allows (a lost
//! region's replicas replaced in the other regions, then the region returned). Only shards
//! whose every replica is on a live node and in sync are touched; only secondaries leave
//! (never a pinned one); a move adds before it removes, so no shard drops below the
//! replication factor.

use super::cluster::{ClusterState, Slot};
use super::error::PlanError;
use super::moves::move_replica;
use super::schedule::{ConcurrencyLimits, Plan, PlanBuilder};
use super::steps::{PlanKind, Step, StepAction};
use super::topology::{ReplicaRole, Topology};

/// A plan removing every settled shard's surplus replicas and moving one replica of every
/// settled shard that crowds a zone or region to a node within the spread rule. Empty when
/// every shard has its shape (or nothing can take a crowded shard's replica yet).
pub fn plan_respread(topology: &Topology, limits: ConcurrencyLimits) -> Result<Plan, PlanError> {
    let mut state = ClusterState::new(topology)?;
    let mut plan = PlanBuilder::new(PlanKind::Rebalance, limits);
    let rf = topology.replication_factor as usize;
    for shard in 0..topology.shards.len() {
        if !settled(&state, shard) {
            continue;
        }
        let mut steps = Vec::new();
        while state.slots[shard].len() > rf {
            let Some(node) = leaving(&state, shard, |_| true) else {
                break;
            };
            state.remove_replica(shard, node);
            steps.push(Step::new(
                StepAction::RemoveReplica {
                    shard: state.shard_name(shard).to_owned(),
                    node: state.node_name(node).to_owned(),
                },
                format!(
                    "the shard holds more than {rf} replicas since {} returned; this one adds \
                     the least",
                    state.node_name(node)
                ),
            ));
        }
        if let Some(from) = leaving(&state, shard, |slot| crowds(&state, shard, slot.node))
            && let Ok(to) = state.choose_host(shard, Some(from))
        {
            let why = format!(
                "{} crowds its zone or region beyond the spread rule (a lost region's replica \
                 was replaced there); {} is the least-loaded node keeping the shard spread \
                 across zones and regions",
                state.node_name(from),
                state.node_name(to)
            );
            steps.extend(move_replica(&mut state, shard, from, to, &why));
        }
        if !steps.is_empty() {
            plan.schedule(state.shard_name(shard), steps, None);
        }
    }
    Ok(plan.finish())
}

/// Whether `shard` has a primary and every replica on a live node, every secondary in sync.
fn settled(state: &ClusterState<'_>, shard: usize) -> bool {
    state.primary_of(shard).is_some()
        && state.slots[shard]
            .iter()
            .all(|s| state.node(s.node).is_live() && (s.role == ReplicaRole::Primary || s.in_sync))
}

/// Whether the replica of `shard` on `node` shares its zone or region with more replicas
/// than the spread rule allows.
fn crowds(state: &ClusterState<'_>, shard: usize, node: usize) -> bool {
    let slots = &state.slots[shard];
    let in_zone = slots
        .iter()
        .filter(|s| state.zone_of[s.node] == state.zone_of[node])
        .count() as u32;
    let in_region = slots
        .iter()
        .filter(|s| state.region_of[s.node] == state.region_of[node])
        .count() as u32;
    in_zone > state.spread.per_zone || in_region > state.spread.per_region
}

/// The secondary of `shard` (among those `eligible` admits, never a pinned one) that is best
/// to lose: one crowding its zone or region first, then the most lagging, then the one on
/// the most loaded node.
fn leaving(
    state: &ClusterState<'_>,
    shard: usize,
    eligible: impl Fn(&Slot) -> bool,
) -> Option<usize> {
    state.slots[shard]
        .iter()
        .filter(|s| {
            s.role == ReplicaRole::Secondary && !state.is_pinned(shard, s.node) && eligible(s)
        })
        .max_by_key(|s| {
            (
                crowds(state, shard, s.node),
                s.lag_bytes,
                state.counts[s.node],
                s.node,
            )
        })
        .map(|s| s.node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::simulate::apply_plan;
    use crate::plan::steps::RiskClass;
    use crate::plan::testkit::{fewest_replicas_during, mk_nodes, mk_shard, spread_violations};
    use crate::plan::topology::NodePhase;

    /// Three regions of two zones with one node each (`r{r}z{z}n0`), two shards whose
    /// replicas were replaced inside r1 and r2 while r0 was lost.
    fn after_a_lost_region() -> Topology {
        Topology {
            replication_factor: 3,
            nodes: mk_nodes(3, 2, 1),
            shards: vec![
                mk_shard("a", 100, &["r1z0n0", "r2z0n0", "r1z1n0"]),
                mk_shard("b", 100, &["r2z1n0", "r1z0n0", "r2z0n0"]),
            ],
        }
    }

    #[test]
    fn a_lost_region_relaxes_the_spread_and_its_return_restores_it() {
        let mut lost = after_a_lost_region();
        for node in lost.nodes.iter_mut().filter(|n| n.region == "r0") {
            node.phase = NodePhase::Offline;
        }
        // While r0 is lost, two replicas in one region are within the rule: nothing to do.
        assert!(spread_violations(&lost).is_empty());
        let plan = plan_respread(&lost, ConcurrencyLimits::default()).unwrap();
        assert!(plan.operations.is_empty(), "{plan:#?}");

        // r0 back: each shard moves one secondary from its crowded region into r0, adding
        // before removing, never touching the primary.
        let back = after_a_lost_region();
        assert_eq!(spread_violations(&back).len(), 2);
        let plan = plan_respread(&back, ConcurrencyLimits::default()).unwrap();
        assert_eq!(plan.risk, RiskClass::Safe, "{plan:#?}");
        let after = apply_plan(&back, &plan);
        assert!(spread_violations(&after).is_empty(), "{after:#?}");
        for (before, after) in back.shards.iter().zip(&after.shards) {
            assert_eq!(after.replicas.len(), 3);
            assert_eq!(after.primary_node(), before.primary_node());
            assert!(after.replicas.iter().any(|r| r.node.starts_with("r0")));
        }
        assert!(fewest_replicas_during(&back, &plan).iter().all(|&n| n == 3));
        // Done: a second look finds nothing.
        let again = plan_respread(&after, ConcurrencyLimits::default()).unwrap();
        assert!(again.operations.is_empty(), "{again:#?}");
    }

    #[test]
    fn a_surplus_replica_goes_first_where_it_crowds_but_only_once_all_are_in_sync() {
        let mut topology = Topology {
            replication_factor: 3,
            nodes: mk_nodes(3, 2, 1),
            // r1 holds two replicas: the one on r1z1n0 is the surplus to drop.
            shards: vec![mk_shard(
                "a",
                100,
                &["r0z0n0", "r1z0n0", "r2z0n0", "r1z1n0"],
            )],
        };
        topology.shards[0].replicas[1].in_sync = false;
        let waiting = plan_respread(&topology, ConcurrencyLimits::default()).unwrap();
        assert!(waiting.operations.is_empty(), "{waiting:#?}");

        topology.shards[0].replicas[1].in_sync = true;
        topology.shards[0].replicas[3].lag_bytes = 10;
        let plan = plan_respread(&topology, ConcurrencyLimits::default()).unwrap();
        let removed: Vec<&StepAction> = plan.steps().map(|s| &s.action).collect();
        assert!(
            matches!(removed.as_slice(), [StepAction::RemoveReplica { node, .. }] if node == "r1z1n0"),
            "{removed:?}"
        );
        let after = apply_plan(&topology, &plan);
        assert!(spread_violations(&after).is_empty());

        // A replica on an Offline node is the failover's business, not this plan's.
        topology.nodes[0].phase = NodePhase::Offline;
        let plan = plan_respread(&topology, ConcurrencyLimits::default()).unwrap();
        assert!(plan.operations.is_empty(), "{plan:#?}");
    }

    #[test]
    fn neither_a_pinned_replica_nor_a_primary_leaves() {
        // Each shard's crowded region holds its primary and one secondary, pinned there.
        let mut topology = after_a_lost_region();
        topology.shards[0].placement.pinned_nodes = vec!["r1z1n0".into()];
        topology.shards[1].placement.pinned_nodes = vec!["r2z0n0".into()];
        let plan = plan_respread(&topology, ConcurrencyLimits::default()).unwrap();
        assert!(plan.operations.is_empty(), "{plan:#?}");
    }
}
