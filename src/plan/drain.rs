//! Drain and decommission: a plan that hands every primary off a node (leadership
//! transfer first, no data moves) and moves every replica away, saying what blocks it when
//! it cannot; decommission adds the node's removal once it is empty.

use serde::{Deserialize, Serialize};

use super::cluster::ClusterState;
use super::error::PlanError;
use super::moves::{leadership_heir, move_replica, transfer_primary};
use super::schedule::{ConcurrencyLimits, Plan, PlanBuilder};
use super::steps::{BlockReason, PlanKind, Step, StepAction};
use super::topology::Topology;

/// What to do with the node once it is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DrainGoal {
    /// Leave it empty (for maintenance or to cordon it).
    Drain,
    /// Remove it from the cluster for good.
    Decommission,
}

/// Plans moving everything off `node`.
pub fn plan_drain(
    topology: &Topology,
    node: &str,
    goal: DrainGoal,
    limits: ConcurrencyLimits,
) -> Result<Plan, PlanError> {
    let mut state = ClusterState::new(topology)?;
    let leaving = state.node_ix(node).ok_or_else(|| PlanError::UnknownNode {
        node: node.to_owned(),
    })?;
    let kind = match goal {
        DrainGoal::Drain => PlanKind::Drain,
        DrainGoal::Decommission => PlanKind::Decommission,
    };
    let mut plan = PlanBuilder::new(kind, limits);
    let mut shards = state.node_shards[leaving].clone();
    shards.sort_unstable();
    let mut last_wave = None;
    for shard in shards {
        if state.is_pinned(shard, leaving) {
            plan.block(
                state.shard_name(shard),
                BlockReason::Pinned {
                    node: node.to_owned(),
                },
            );
            continue;
        }
        let leading = state.primary_of(shard) == Some(leaving);
        if leading && !state.node(leaving).is_live() {
            // A dead primary cannot hand over; that is a failover, at a new epoch.
            plan.block(state.shard_name(shard), BlockReason::NoLivePrimary);
            continue;
        }
        if leading {
            // A leadership transfer costs no data movement; do it first so the move below
            // only copies a secondary.
            if let Some(to) = leadership_heir(&state, shard, leaving) {
                let why = format!(
                    "{node} is draining; {} holds an in-sync secondary",
                    state.node_name(to)
                );
                if let Some(step) = transfer_primary(&mut state, shard, to, &why) {
                    let wave = plan.schedule(state.shard_name(shard), vec![step], None);
                    last_wave = last_wave.max(Some(wave));
                }
            }
        }
        match state.choose_host(shard, Some(leaving)) {
            Ok(to) => {
                let why = format!(
                    "{node} is draining; {} is the least-loaded node keeping the shard spread \
                     across zones and regions",
                    state.node_name(to)
                );
                let steps = move_replica(&mut state, shard, leaving, to, &why);
                let wave = plan.schedule(state.shard_name(shard), steps, None);
                last_wave = last_wave.max(Some(wave));
            }
            Err(rejected) => plan.block(
                state.shard_name(shard),
                BlockReason::NoPlacement {
                    missing: 1,
                    rejected,
                },
            ),
        }
    }
    if goal == DrainGoal::Decommission {
        let blocked = plan.has_blockers();
        if !blocked {
            let step = Step::new(
                StepAction::RemoveNode {
                    node: node.to_owned(),
                },
                "the node holds no replica any more",
            );
            plan.schedule(node, vec![step], last_wave);
        }
    }
    Ok(plan.finish())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::plan::simulate::apply_plan;
    use crate::plan::steps::{BlockReason, PlacementRejection, RiskClass, StepAction};
    use crate::plan::testkit::{
        arb_cluster, fewest_replicas_during, mk_nodes, mk_placed, mk_shard, spread_violations,
    };

    #[test]
    fn a_drain_hands_off_primaries_first_then_moves_everything() {
        let topology = mk_placed(3, mk_nodes(3, 2, 2), &[100; 12]);
        let node = "r0z0n0";
        let plan = plan_drain(
            &topology,
            node,
            DrainGoal::Drain,
            ConcurrencyLimits::default(),
        )
        .expect("plan");
        assert!(plan.blocked.is_empty());
        let led: Vec<&str> = topology
            .shards
            .iter()
            .filter(|s| s.primary_node() == Some(node))
            .map(|s| s.name.as_str())
            .collect();
        assert!(!led.is_empty());
        for shard in &led {
            let first = plan
                .operations
                .iter()
                .find(|op| op.subject == *shard)
                .expect("op");
            assert!(
                matches!(&first.steps[0].action, StepAction::TransferPrimary { from, .. } if from == node)
            );
        }
        let after = apply_plan(&topology, &plan);
        assert!(
            after
                .shards
                .iter()
                .all(|s| !s.has_replica_on(node) && s.replicas.len() == 3)
        );
        assert!(spread_violations(&after).is_empty());
        assert!(
            !plan
                .steps()
                .any(|s| matches!(s.action, StepAction::RemoveNode { .. }))
        );
    }

    #[test]
    fn decommission_removes_the_node_last_and_needs_approval() {
        let topology = mk_placed(3, mk_nodes(3, 1, 2), &[100; 4]);
        let plan = plan_drain(
            &topology,
            "r1z0n1",
            DrainGoal::Decommission,
            ConcurrencyLimits::default(),
        )
        .expect("plan");
        let last = plan.operations.last().expect("ops");
        assert_eq!(
            last.steps[0].action,
            StepAction::RemoveNode {
                node: "r1z0n1".into()
            }
        );
        assert!(
            plan.operations
                .iter()
                .all(|op| op.wave < last.wave || op.subject == "r1z0n1")
        );
        assert_eq!(plan.risk, RiskClass::Destructive);
    }

    #[test]
    fn pins_and_missing_room_block_and_say_why() {
        let mut topology = Topology {
            replication_factor: 3,
            nodes: mk_nodes(3, 1, 1),
            shards: vec![
                mk_shard("pinned", 100, &["r0z0n0", "r1z0n0", "r2z0n0"]),
                mk_shard("stuck", 100, &["r1z0n0", "r0z0n0", "r2z0n0"]),
            ],
        };
        topology.shards[0].placement.pinned_nodes = vec!["r0z0n0".into()];
        let plan = plan_drain(
            &topology,
            "r0z0n0",
            DrainGoal::Decommission,
            ConcurrencyLimits::default(),
        )
        .expect("plan");
        assert_eq!(plan.blocked[0].subject, "pinned");
        assert_eq!(
            plan.blocked[0].reason,
            BlockReason::Pinned {
                node: "r0z0n0".into()
            }
        );
        let BlockReason::NoPlacement { rejected, .. } = &plan.blocked[1].reason else {
            panic!("{:?}", plan.blocked);
        };
        assert_eq!(rejected, &vec![(PlacementRejection::HoldsReplica, 3)]);
        assert!(
            !plan
                .steps()
                .any(|s| matches!(s.action, StepAction::RemoveNode { .. }))
        );
        assert!(
            plan.blocked[0]
                .reason
                .to_string()
                .contains("placement.pinnedNodes")
        );
    }

    #[test]
    fn a_dead_node_drains_its_secondaries_but_leaves_primaries_to_failover() {
        let mut topology = Topology {
            replication_factor: 3,
            nodes: mk_nodes(3, 1, 2),
            shards: vec![
                mk_shard("led", 100, &["r0z0n0", "r1z0n0", "r2z0n0"]),
                mk_shard("followed", 100, &["r1z0n0", "r0z0n0", "r2z0n0"]),
            ],
        };
        topology.nodes[0].phase = crate::plan::topology::NodePhase::Offline;
        let plan = plan_drain(
            &topology,
            "r0z0n0",
            DrainGoal::Drain,
            ConcurrencyLimits::default(),
        )
        .expect("plan");
        assert_eq!(plan.blocked.len(), 1);
        assert_eq!(plan.blocked[0].subject, "led");
        assert_eq!(plan.blocked[0].reason, BlockReason::NoLivePrimary);
        let after = apply_plan(&topology, &plan);
        assert!(after.shards[1].has_replica_on("r0z0n1"));
        assert!(!after.shards[1].has_replica_on("r0z0n0"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn a_drained_node_ends_empty_or_the_plan_says_why(topology in arb_cluster(), pick in any::<prop::sample::Index>()) {
            let node = topology.nodes[pick.index(topology.nodes.len())].name.clone();
            let limits = ConcurrencyLimits { per_node: 1, per_cluster: 4 };
            let plan = plan_drain(&topology, &node, DrainGoal::Drain, limits).expect("plan");
            let after = apply_plan(&topology, &plan);
            for s in &after.shards {
                let blocked = plan.blocked.iter().any(|b| b.subject == s.name);
                prop_assert!(blocked || !s.has_replica_on(&node), "{} still on {node}", s.name);
                prop_assert_eq!(s.replicas.len(), 3);
                prop_assert!(s.primary_node().is_some());
            }
            prop_assert!(spread_violations(&after).is_empty());
            // A replica leaves only after its replacement exists.
            let fewest = fewest_replicas_during(&topology, &plan);
            prop_assert!(fewest.iter().all(|&n| n == 3));
            // Concurrency limits hold in every wave.
            let mut per_wave: BTreeMap<u32, usize> = BTreeMap::new();
            for op in &plan.operations {
                *per_wave.entry(op.wave).or_default() += 1;
            }
            prop_assert!(per_wave.values().all(|&n| n <= 4));
        }
    }
}
