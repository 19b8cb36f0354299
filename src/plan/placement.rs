//! The placement plan that brings under-replicated shards up to the replication factor
//! within the spread rule (`spread.rs`). Node choice itself (eligibility, capacity, spread,
//! weighted load) lives on the cluster view.

use super::cluster::ClusterState;
use super::error::PlanError;
use super::moves::add_replica;
use super::schedule::{ConcurrencyLimits, Plan, PlanBuilder};
use super::steps::{BlockReason, Blocker, PlanKind, Step, StepAction};
use super::topology::Topology;

/// A plan that gives every shard `replication_factor` serving replicas: pinned nodes first,
/// then the best-spread, least-loaded nodes. Shards that cannot be fully placed are blocked
/// with the reason each candidate node was turned down — never silently under-replicated.
pub fn plan_placement(topology: &Topology, limits: ConcurrencyLimits) -> Result<Plan, PlanError> {
    plan_placement_within(topology, limits, usize::MAX)
}

/// [`plan_placement`] for the shards, in order, whose steps fit in `max_steps` (at least one
/// shard's, however many it needs); the shards after them are not looked at — the next plan
/// places them. A cluster of 10,000 new shards is decided in the time its first part takes,
/// not the whole (0.7 s at 1,000 nodes) before all but one plan's worth is thrown away.
///
/// A *new* shard — no replica anywhere, so nothing to copy — has its replicas added together
/// and waited for together (the first promoted before the others are added), in the plan's
/// first wave: the concurrency limits bound copies, and a new shard copies nothing. A shard
/// with data gets its missing replicas one at a time, each within the limits.
pub fn plan_placement_within(
    topology: &Topology,
    limits: ConcurrencyLimits,
    max_steps: usize,
) -> Result<Plan, PlanError> {
    let mut state = ClusterState::new(topology)?;
    let mut plan = PlanBuilder::new(PlanKind::Placement, limits);
    let mut planned = 0;
    for shard in 0..topology.shards.len() {
        let new = state.serving_replicas(shard) == 0 && state.primary_of(shard).is_none();
        let (steps, blocked) = place(&mut state, shard, topology.replication_factor);
        if !steps.is_empty() && planned > 0 && planned + steps.len() > max_steps {
            break;
        }
        for Blocker { subject, reason } in blocked {
            plan.block(&subject, reason);
        }
        if steps.is_empty() {
            continue;
        }
        planned += steps.len();
        let subject = state.shard_name(shard).to_owned();
        if new {
            plan.schedule_in_wave(&subject, together(steps), 0);
        } else {
            plan.schedule(&subject, steps, None);
        }
    }
    Ok(plan.finish())
}

/// The steps that bring `shard` to `rf` replicas on `state` (recorded there), and why any
/// replica cannot be placed.
fn place(state: &mut ClusterState<'_>, shard: usize, rf: u32) -> (Vec<Step>, Vec<Blocker>) {
    let mut steps = Vec::new();
    let mut blocked = Vec::new();
    let mut block = |state: &ClusterState<'_>, reason| {
        blocked.push(Blocker {
            subject: state.shard_name(shard).to_owned(),
            reason,
        })
    };
    let mut missing = rf.saturating_sub(state.serving_replicas(shard));
    let pins = state.pinned[shard].clone();
    for node in pins {
        if missing == 0 || state.slots[shard].iter().any(|s| s.node == node) {
            continue;
        }
        match state.check_host(shard, node, None) {
            Ok(()) => {
                steps.extend(add_replica(state, shard, node, "pinned by the user"));
                missing -= 1;
            }
            Err(why) => {
                let rejected = vec![(why, 1)];
                block(state, BlockReason::NoPlacement { missing, rejected });
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
                steps.extend(add_replica(state, shard, node, &why));
                missing -= 1;
            }
            Err(rejected) => {
                block(state, BlockReason::NoPlacement { missing, rejected });
                missing = 0;
            }
        }
    }
    (steps, blocked)
}

/// A new shard's steps reordered so that its secondaries are added together, then waited
/// for together: the first replica and its promotion, every other replica's addition, then
/// every catch-up.
fn together(steps: Vec<Step>) -> Vec<Step> {
    let catch_up = |s: &Step| matches!(s.action, StepAction::CatchUp { .. });
    let (waits, rest): (Vec<Step>, Vec<Step>) = steps.into_iter().partition(catch_up);
    rest.into_iter().chain(waits).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::plan::simulate::apply_plan;
    use crate::plan::steps::{PlacementRejection, StepAction};
    use crate::plan::testkit::{mk_node, mk_nodes, mk_placed, mk_unplaced, spread_violations};
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

    fn actions(op: &crate::plan::steps::Operation) -> Vec<&'static str> {
        op.steps
            .iter()
            .map(|s| match s.action {
                StepAction::AddReplica { .. } => "add",
                StepAction::Promote { .. } => "promote",
                StepAction::CatchUp { .. } => "catch-up",
                _ => "other",
            })
            .collect()
    }

    #[test]
    fn a_new_shards_replicas_are_added_together_in_the_first_wave() {
        let tight = ConcurrencyLimits {
            per_node: 1,
            per_cluster: 2,
        };
        let topology = Topology {
            replication_factor: 3,
            nodes: mk_nodes(3, 1, 2),
            shards: mk_unplaced(&[100; 10]),
        };
        let plan = plan_placement(&topology, tight).expect("plan");
        assert_eq!(plan.operations.len(), 10);
        for op in &plan.operations {
            // Nothing to copy: no limit holds a new shard back, and its two secondaries are
            // added before either is waited for.
            assert_eq!(op.wave, 0, "{}", op.subject);
            assert_eq!(
                actions(op),
                ["add", "promote", "add", "add", "catch-up", "catch-up"]
            );
        }
        let after = apply_plan(&topology, &plan);
        assert!(spread_violations(&after).is_empty());
        assert!(after.shards.iter().all(|s| s.replicas.len() == 3));
    }

    #[test]
    fn a_shard_with_data_gets_its_replicas_one_at_a_time_within_the_limits() {
        let tight = ConcurrencyLimits {
            per_node: 8,
            per_cluster: 2,
        };
        let mut topology = mk_placed(3, mk_nodes(3, 1, 2), &[100; 5]);
        for shard in &mut topology.shards {
            shard.replicas.truncate(1);
        }
        let plan = plan_placement(&topology, tight).expect("plan");
        let waves: Vec<u32> = plan.operations.iter().map(|op| op.wave).collect();
        assert_eq!(waves, [0, 0, 1, 1, 2]);
        for op in &plan.operations {
            assert_eq!(actions(op), ["add", "catch-up", "add", "catch-up"]);
        }
    }

    #[test]
    fn a_budget_places_the_first_shards_whole_and_looks_no_further() {
        let topology = Topology {
            replication_factor: 3,
            nodes: mk_nodes(3, 3, 4),
            shards: mk_unplaced(&[100; 50]),
        };
        let full = plan_placement(&topology, ConcurrencyLimits::default()).expect("plan");
        let part =
            plan_placement_within(&topology, ConcurrencyLimits::default(), 20).expect("plan");
        // 6 steps a shard: the first three shards fit in 20 steps, whole, as the full plan
        // places them.
        assert_eq!(part.operations, full.operations[..3]);
        assert_eq!(part.hash, part.content_hash());
        // At least one shard, however many steps it needs.
        let one = plan_placement_within(&topology, ConcurrencyLimits::default(), 1).expect("plan");
        assert_eq!(one.operations, full.operations[..1]);

        // One region of two zones: every shard's third replica is blocked (4 steps a shard).
        let blocked = Topology {
            nodes: mk_nodes(1, 2, 4),
            ..topology
        };
        let part = plan_placement_within(&blocked, ConcurrencyLimits::default(), 12).expect("plan");
        // The shards looked at are reported blocked; the ones after the budget are not looked at.
        let subjects: Vec<&str> = part.blocked.iter().map(|b| b.subject.as_str()).collect();
        assert_eq!(subjects, ["s0", "s1", "s2"]);
        assert_eq!(part.operations.len(), 3);
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
