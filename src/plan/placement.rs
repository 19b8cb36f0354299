//! The placement plan that brings under-replicated shards up to the replication factor
//! within the spread rule (`spread.rs`). Node choice itself (eligibility, capacity, spread,
//! weighted load) lives on the cluster view.

use super::cluster::ClusterState;
use super::error::PlanError;
use super::moves::add_replica;
use super::schedule::{ConcurrencyLimits, Plan, PlanBuilder};
use super::steps::{BlockReason, PlanKind};
use super::topology::Topology;

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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::plan::simulate::apply_plan;
    use crate::plan::steps::{PlacementRejection, StepAction};
    use crate::plan::testkit::{mk_node, mk_nodes, mk_unplaced, spread_violations};
    use crate::plan::topology::NodePhase;

    #[test]
    fn replicas_land_one_per_region_and_the_first_is_promoted() {
        let topology = Topology {
            replication_factor: 3,
            nodes: mk_nodes(3, 1, 2),
            shards: mk_unplaced(&[100, 100]),
        };
        let plan = plan_placement(&topology, ConcurrencyLimits::default()).expect("plan");
        assert!(plan.blocked.is_empty());
        assert!(matches!(
            plan.operations[0].steps[1].action,
            StepAction::Promote { epoch: 2, .. }
        ));
        let after = apply_plan(&topology, &plan);
        assert!(spread_violations(&after).is_empty());
        assert!(
            after
                .shards
                .iter()
                .all(|s| s.replicas.len() == 3 && s.primary_node().is_some())
        );
        // The two shards use different nodes: load spreads.
        assert_ne!(
            after.shards[0].replicas[0].node,
            after.shards[1].replicas[0].node
        );
    }

    #[test]
    fn too_few_zones_block_with_the_reason() {
        let topology = Topology {
            replication_factor: 3,
            nodes: vec![
                mk_node("a", "r", "z1"),
                mk_node("b", "r", "z2"),
                mk_node("c", "r", "z2"),
            ],
            shards: mk_unplaced(&[100]),
        };
        let plan = plan_placement(&topology, ConcurrencyLimits::default()).expect("plan");
        assert_eq!(plan.blocked.len(), 1);
        let BlockReason::NoPlacement { missing, rejected } = &plan.blocked[0].reason else {
            panic!("unexpected {:?}", plan.blocked[0]);
        };
        assert_eq!(*missing, 1);
        assert!(rejected.contains(&(PlacementRejection::ZoneFull, 1)));
        let msg = plan.blocked[0].reason.to_string();
        assert!(msg.contains("no node can take 1 more replica(s)"), "{msg}");
        // The two replicas that could be placed are still planned.
        assert_eq!(apply_plan(&topology, &plan).shards[0].replicas.len(), 2);
    }

    #[test]
    fn pins_are_honoured_and_unavailable_nodes_skipped() {
        let mut nodes = mk_nodes(3, 1, 3);
        nodes[0].cordoned = true;
        nodes[3].phase = NodePhase::Draining;
        nodes[6].phase = NodePhase::Offline;
        let mut shards = mk_unplaced(&[100; 6]);
        shards[0].placement.pinned_nodes = vec!["r1z0n2".into()];
        let topology = Topology {
            replication_factor: 3,
            nodes,
            shards,
        };
        let after = apply_plan(
            &topology,
            &plan_placement(&topology, ConcurrencyLimits::default()).expect("plan"),
        );
        assert!(after.shards[0].has_replica_on("r1z0n2"));
        for s in &after.shards {
            for bad in ["r0z0n0", "r1z0n0", "r2z0n0"] {
                assert!(!s.has_replica_on(bad), "{} on {bad}", s.name);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn placement_spreads_or_says_why(
            regions in 1usize..=4, zones in 1usize..=3, per_zone in 1usize..=3,
            rf in 1u32..=5, shards in 1usize..20,
            phases in prop::collection::vec(0u8..6, 36),
        ) {
            let mut nodes = mk_nodes(regions, zones, per_zone);
            for (n, p) in nodes.iter_mut().zip(&phases) {
                match p {
                    0 => n.cordoned = true,
                    1 => n.phase = NodePhase::Offline,
                    _ => {}
                }
            }
            let topology = Topology {
                replication_factor: rf,
                nodes: nodes.clone(),
                shards: mk_unplaced(&vec![100; shards]),
            };
            let plan = plan_placement(&topology, ConcurrencyLimits::default()).expect("plan");
            let after = apply_plan(&topology, &plan);
            prop_assert!(spread_violations(&after).is_empty(), "{:?}", spread_violations(&after));
            for s in &after.shards {
                let missing: u32 = plan.blocked.iter().filter(|b| b.subject == s.name).map(|b| match b.reason {
                    BlockReason::NoPlacement { missing, .. } => missing,
                    _ => 0,
                }).sum();
                // Never silently under-replicated: placed + reported missing = RF.
                prop_assert_eq!(s.replicas.len() as u32 + missing, rf, "{}", s.name);
                for r in &s.replicas {
                    let n = nodes.iter().find(|n| n.name == r.node).expect("known node");
                    prop_assert!(n.accepts_replicas());
                }
                // With RF ≥ 3, losing any one zone leaves a quorum.
                if rf >= 3 && missing == 0 {
                    let quorum = rf / 2 + 1;
                    for n in &nodes {
                        let lost = s.replicas.iter().filter(|r| {
                            nodes.iter().any(|m| m.name == r.node && m.zone == n.zone && m.region == n.region)
                        }).count() as u32;
                        prop_assert!(rf - lost >= quorum);
                    }
                }
            }
        }
    }
}
