//! Failover for a dead node: a new primary for each shard it led, chosen among live in-sync
//! secondaries (lowest lag, preferred region) at a bumped epoch, with every candidate's
//! verdict explained; then re-replication of everything it held, after a delay.

use serde::{Deserialize, Serialize};

use super::cluster::ClusterState;
use super::error::PlanError;
use super::moves::add_replica;
use super::schedule::{ConcurrencyLimits, Plan, PlanBuilder};
use super::steps::{BlockReason, PlanKind, Step, StepAction};
use super::topology::{NodePhase, ReplicaRole, Topology};

/// How failover chooses and when it re-replicates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverPolicy {
    /// A secondary lagging more than this many bytes is not promoted.
    pub max_lag_bytes: u64,
    /// How long to wait for a dead node to come back before re-creating its replicas.
    pub re_replication_delay_ms: u64,
    /// Concurrency limits for re-replication.
    pub limits: ConcurrencyLimits,
}

impl Default for FailoverPolicy {
    fn default() -> Self {
        FailoverPolicy {
            max_lag_bytes: 0,
            re_replication_delay_ms: 5 * 60 * 1000,
            limits: ConcurrencyLimits::default(),
        }
    }
}

/// Why a replica was not promoted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// Its node is not serving.
    NodeDown,
    /// It is a witness and holds no data.
    Witness,
    /// It is not streaming in sync: promoting it could lose acknowledged writes.
    NotInSync,
    /// It lags more than the policy allows.
    LagTooHigh {
        /// The policy's bound.
        max_lag_bytes: u64,
    },
    /// Another in-sync candidate is in the shard's preferred primary region.
    OutsidePreferredRegion,
    /// Its node is draining, and a candidate on a node that stays exists.
    NodeDraining,
    /// Another eligible candidate is further caught up (or equal and first by name).
    BehindChosen {
        /// The node chosen instead.
        chosen: String,
    },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::NodeDown => write!(f, "its node is not serving"),
            Rejection::Witness => write!(f, "a witness holds no data"),
            Rejection::NotInSync => write!(f, "not in sync; it could miss acknowledged writes"),
            Rejection::LagTooHigh { max_lag_bytes } => {
                write!(f, "lags more than the allowed {max_lag_bytes} bytes")
            }
            Rejection::OutsidePreferredRegion => write!(
                f,
                "outside the preferred primary region, where an in-sync candidate exists"
            ),
            Rejection::NodeDraining => write!(f, "its node is draining"),
            Rejection::BehindChosen { chosen } => write!(f, "less caught up than {chosen}"),
        }
    }
}

/// The verdict on one replica considered for promotion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The replica's node.
    pub node: String,
    /// How far behind the old primary it was.
    pub lag_bytes: u64,
    /// Whether it was streaming in sync.
    pub in_sync: bool,
    /// `None` if chosen, otherwise why not.
    pub rejected: Option<Rejection>,
}

/// The failover decision for one shard the dead node led.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverDecision {
    /// The shard.
    pub shard: String,
    /// The node chosen to become primary, if any could be.
    pub new_primary: Option<String>,
    /// The epoch it serves at.
    pub new_epoch: Option<u64>,
    /// Every other replica, with the verdict on it.
    pub candidates: Vec<Candidate>,
}

/// A failover plan and the explained choice for every shard that lost its primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverPlan {
    /// Promotions (wave 0, all at once), then delayed re-replication.
    pub plan: Plan,
    /// One decision per shard whose primary was on the dead node.
    pub decisions: Vec<FailoverDecision>,
}

/// Plans failover for `dead_node` at time `now_ms`.
pub fn plan_failover(
    topology: &Topology,
    dead_node: &str,
    now_ms: u64,
    policy: &FailoverPolicy,
) -> Result<FailoverPlan, PlanError> {
    let mut state = ClusterState::new(topology)?;
    let dead = state
        .node_ix(dead_node)
        .ok_or_else(|| PlanError::UnknownNode {
            node: dead_node.to_owned(),
        })?;
    let mut plan = PlanBuilder::new(PlanKind::Failover, policy.limits);
    let mut decisions = Vec::new();
    let mut affected = state.node_shards[dead].clone();
    affected.sort_unstable();
    for &shard in &affected {
        if state.primary_of(shard) != Some(dead) {
            continue;
        }
        let (decision, chosen) = choose_primary(&state, shard, dead, policy);
        match (chosen, &decision.new_primary) {
            (Some(to), Some(node)) => {
                let epoch = state.make_primary(shard, to);
                let why = format!(
                    "primary on dead node {dead_node}; {node} is the most caught-up live \
                     in-sync secondary (lag {} bytes)",
                    decision
                        .candidates
                        .iter()
                        .find(|c| &c.node == node)
                        .map_or(0, |c| c.lag_bytes)
                );
                let step = Step::new(
                    StepAction::Promote {
                        shard: state.shard_name(shard).to_owned(),
                        node: node.clone(),
                        epoch,
                    },
                    why,
                );
                plan.schedule_in_wave(state.shard_name(shard), vec![step], 0);
                decisions.push(FailoverDecision {
                    new_epoch: Some(epoch),
                    ..decision
                });
            }
            _ => {
                plan.block(state.shard_name(shard), BlockReason::NoInSyncReplica);
                decisions.push(decision);
            }
        }
    }
    let not_before_ms = now_ms.saturating_add(policy.re_replication_delay_ms);
    for &shard in &affected {
        match state.choose_host(shard, Some(dead)) {
            Ok(node) => {
                let mut steps = vec![Step::new(
                    StepAction::WaitUntil { not_before_ms },
                    format!(
                        "give {dead_node} {} ms to come back before copying its data",
                        policy.re_replication_delay_ms
                    ),
                )];
                let why = format!(
                    "replace the replica lost with {dead_node}: {} is the least-loaded node \
                     keeping the shard spread across zones and regions",
                    state.node_name(node)
                );
                steps.extend(add_replica(&mut state, shard, node, &why));
                state.remove_replica(shard, dead);
                steps.push(Step::new(
                    StepAction::RemoveReplica {
                        shard: state.shard_name(shard).to_owned(),
                        node: dead_node.to_owned(),
                    },
                    "forget the dead replica; if the node returns it is rebuilt, never served",
                ));
                plan.schedule(state.shard_name(shard), steps, Some(0));
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
    Ok(FailoverPlan {
        plan: plan.finish(),
        decisions,
    })
}

/// Plans the failover of `shard_name`, whose primary serves on a live node but lost its
/// quorum — every in-sync standby's stream from it broke (the primary is cut off from its
/// standbys), so its commits wait forever. The most caught-up live in-sync secondary is
/// promoted at a bumped epoch, chosen as for a dead node; the old primary, alive, fences its
/// writes before that promotion and rejoins as a standby once it reaches the new one (the
/// agents' part). Nothing is re-replicated: no replica is lost.
pub fn plan_quorum_failover(
    topology: &Topology,
    shard_name: &str,
    policy: &FailoverPolicy,
) -> Result<FailoverPlan, PlanError> {
    let mut state = ClusterState::new(topology)?;
    let mut plan = PlanBuilder::new(PlanKind::Failover, policy.limits);
    let Some((shard, old)) = topology
        .shards
        .iter()
        .position(|s| s.name == shard_name)
        .and_then(|shard| Some((shard, state.primary_of(shard)?)))
    else {
        return Ok(FailoverPlan {
            plan: plan.finish(),
            decisions: Vec::new(),
        });
    };
    let (decision, chosen) = choose_primary(&state, shard, old, policy);
    let decision = match (chosen, decision.new_primary.clone()) {
        (Some(to), Some(node)) => {
            let epoch = state.make_primary(shard, to);
            let why = format!(
                "the primary on {} lost every in-sync standby's stream; {node} is the most \
                 caught-up live in-sync secondary",
                state.node_name(old)
            );
            let step = Step::new(
                StepAction::Promote {
                    shard: shard_name.to_owned(),
                    node,
                    epoch,
                },
                why,
            );
            plan.schedule_in_wave(shard_name, vec![step], 0);
            FailoverDecision {
                new_epoch: Some(epoch),
                ..decision
            }
        }
        _ => {
            plan.block(shard_name, BlockReason::NoInSyncReplica);
            decision
        }
    };
    Ok(FailoverPlan {
        plan: plan.finish(),
        decisions: vec![decision],
    })
}

/// Judges every other replica of `shard` and picks the new primary: live, in sync within the
/// lag bound, not a witness; then in the preferred region, on a node that stays, lowest lag,
/// first by name.
fn choose_primary(
    state: &ClusterState<'_>,
    shard: usize,
    dead: usize,
    policy: &FailoverPolicy,
) -> (FailoverDecision, Option<usize>) {
    let preferred = state
        .shard(shard)
        .placement
        .preferred_primary_region
        .as_deref();
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut eligible: Vec<(bool, bool, u64, String, usize)> = Vec::new();
    for slot in state.slots[shard].iter().filter(|s| s.node != dead) {
        let node = state.node(slot.node);
        let rejected = if !node.is_live() {
            Some(Rejection::NodeDown)
        } else if slot.role == ReplicaRole::Witness {
            Some(Rejection::Witness)
        } else if !slot.in_sync {
            Some(Rejection::NotInSync)
        } else if slot.lag_bytes > policy.max_lag_bytes {
            Some(Rejection::LagTooHigh {
                max_lag_bytes: policy.max_lag_bytes,
            })
        } else {
            let outside = preferred.is_some_and(|r| node.region != r);
            let draining = node.phase == NodePhase::Draining;
            eligible.push((
                outside,
                draining,
                slot.lag_bytes,
                node.name.clone(),
                slot.node,
            ));
            None
        };
        candidates.push(Candidate {
            node: node.name.clone(),
            lag_bytes: slot.lag_bytes,
            in_sync: slot.in_sync,
            rejected,
        });
    }
    eligible.sort();
    let chosen = eligible.first().cloned();
    if let Some((c_outside, c_draining, _, c_node, _)) = &chosen {
        for (outside, draining, _, node, _) in &eligible[1..] {
            let why = if *outside && !c_outside {
                Rejection::OutsidePreferredRegion
            } else if *draining && !c_draining {
                Rejection::NodeDraining
            } else {
                Rejection::BehindChosen {
                    chosen: c_node.clone(),
                }
            };
            if let Some(c) = candidates.iter_mut().find(|c| &c.node == node) {
                c.rejected = Some(why);
            }
        }
    }
    candidates.sort_by(|a, b| a.node.cmp(&b.node));
    let decision = FailoverDecision {
        shard: state.shard_name(shard).to_owned(),
        new_primary: chosen.as_ref().map(|c| c.3.clone()),
        new_epoch: None,
        candidates,
    };
    (decision, chosen.map(|c| c.4))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::plan::simulate::apply_plan;
    use crate::plan::testkit::{mk_nodes, mk_shard, spread_violations};

    /// Nine nodes in three regions; shard `s` has its primary on `r0z0n0`.
    fn cluster() -> Topology {
        let mut nodes = mk_nodes(3, 1, 3);
        nodes[0].phase = NodePhase::Offline;
        let mut shard = mk_shard("s", 100, &["r0z0n0", "r1z0n0", "r2z0n0"]);
        shard.replicas[1].lag_bytes = 40;
        shard.replicas[2].lag_bytes = 10;
        Topology {
            replication_factor: 3,
            nodes,
            shards: vec![shard],
        }
    }

    fn policy() -> FailoverPolicy {
        FailoverPolicy {
            max_lag_bytes: 64,
            re_replication_delay_ms: 1_000,
            limits: ConcurrencyLimits::default(),
        }
    }

    #[test]
    fn the_most_caught_up_in_sync_secondary_wins_at_a_new_epoch() {
        let topology = cluster();
        let out = plan_failover(&topology, "r0z0n0", 5_000, &policy()).expect("plan");
        let d = &out.decisions[0];
        assert_eq!(d.new_primary.as_deref(), Some("r2z0n0"));
        assert_eq!(d.new_epoch, Some(2));
        assert_eq!(
            d.candidates[0].rejected,
            Some(Rejection::BehindChosen {
                chosen: "r2z0n0".into()
            })
        );
        let first = &out.plan.operations[0];
        assert_eq!(first.wave, 0);
        assert!(
            matches!(&first.steps[0].action, StepAction::Promote { node, epoch: 2, .. } if node == "r2z0n0")
        );
        assert!(first.steps[0].reason.contains("lag 10 bytes"));
        // Re-replication waits for the delay, then replaces the dead replica in region r0.
        let rerep: Vec<&StepAction> = out.plan.operations[1]
            .steps
            .iter()
            .map(|s| &s.action)
            .collect();
        assert_eq!(
            rerep[0],
            &StepAction::WaitUntil {
                not_before_ms: 6_000
            }
        );
        assert!(matches!(rerep[1], StepAction::AddReplica { node, .. } if node.starts_with("r0")));
        assert!(matches!(rerep[3], StepAction::RemoveReplica { node, .. } if node == "r0z0n0"));
        let after = apply_plan(&topology, &out.plan);
        assert_eq!(after.shards[0].primary_node(), Some("r2z0n0"));
        assert_eq!(after.shards[0].epoch, 2);
        assert!(spread_violations(&after).is_empty());
        assert_eq!(out.plan.risk, crate::plan::steps::RiskClass::Disruptive);
    }

    #[test]
    fn a_lost_regions_replicas_are_replaced_in_the_other_regions_one_per_zone() {
        // Three regions of two zones; r0 silent as a whole: its first node dead, the other
        // suspect (a region's nodes are not declared dead in the same instant).
        let mut nodes = mk_nodes(3, 2, 1);
        nodes[0].phase = NodePhase::Offline;
        nodes[1].phase = NodePhase::Suspect;
        let topology = Topology {
            replication_factor: 3,
            nodes,
            shards: vec![mk_shard("s", 100, &["r0z0n0", "r1z0n0", "r2z0n0"])],
        };
        let out = plan_failover(&topology, "r0z0n0", 0, &policy()).expect("plan");
        let added: Vec<&str> = out
            .plan
            .steps()
            .filter_map(|s| match &s.action {
                StepAction::AddReplica { node, .. } => Some(node.as_str()),
                _ => None,
            })
            .collect();
        assert!(
            added == ["r1z1n0"] || added == ["r2z1n0"],
            "the replacement goes to a free zone of a region in service: {added:?}"
        );
        assert!(out.plan.blocked.is_empty(), "{:?}", out.plan.blocked);

        // With one node of r0 still online the region is in service: one replica per region
        // holds, and nothing in r0 can take the replica, so the replacement waits for one.
        let mut in_service = topology.clone();
        in_service.nodes[1].phase = NodePhase::Online;
        in_service.nodes[1].cordoned = true;
        let out = plan_failover(&in_service, "r0z0n0", 0, &policy()).expect("plan");
        assert!(
            !out.plan
                .steps()
                .any(|s| matches!(s.action, StepAction::AddReplica { .. })),
            "{:#?}",
            out.plan
        );
        assert!(matches!(
            out.plan.blocked[0].reason,
            BlockReason::NoPlacement { .. }
        ));
    }

    #[test]
    fn a_primary_that_lost_its_quorum_is_replaced_on_a_live_node_with_nothing_re_replicated() {
        // The old primary's node is live: it stays a replica (it rejoins as a standby).
        let topology = cluster();
        let out =
            plan_quorum_failover(&topology, &topology.shards[0].name, &policy()).expect("plan");
        let d = &out.decisions[0];
        assert_eq!(d.new_primary.as_deref(), Some("r2z0n0"));
        assert_eq!(d.new_epoch, Some(2));
        let actions: Vec<&StepAction> = out.plan.steps().map(|s| &s.action).collect();
        assert_eq!(actions.len(), 1, "{actions:?}");
        assert!(
            matches!(actions[0], StepAction::Promote { node, epoch: 2, .. } if node == "r2z0n0")
        );
        assert!(
            out.plan
                .steps()
                .next()
                .unwrap()
                .reason
                .contains("lost every in-sync standby")
        );
        // No in-sync candidate: blocked, nothing promoted.
        let mut topology = cluster();
        for replica in &mut topology.shards[0].replicas[1..] {
            replica.in_sync = false;
        }
        let out =
            plan_quorum_failover(&topology, &topology.shards[0].name, &policy()).expect("plan");
        assert_eq!(out.plan.blocked[0].reason, BlockReason::NoInSyncReplica);
        assert_eq!(out.plan.steps().count(), 0);
    }

    #[test]
    fn lagging_witness_and_dead_replicas_are_rejected_with_reasons() {
        let mut topology = cluster();
        topology.shards[0].replicas[1].lag_bytes = 1_000;
        topology.shards[0].replicas[2].in_sync = false;
        let out = plan_failover(&topology, "r0z0n0", 0, &policy()).expect("plan");
        let d = &out.decisions[0];
        assert_eq!(d.new_primary, None);
        assert_eq!(
            d.candidates[0].rejected,
            Some(Rejection::LagTooHigh { max_lag_bytes: 64 })
        );
        assert_eq!(d.candidates[1].rejected, Some(Rejection::NotInSync));
        assert_eq!(out.plan.blocked[0].reason, BlockReason::NoInSyncReplica);
        assert!(
            !out.plan
                .steps()
                .any(|s| matches!(s.action, StepAction::Promote { .. }))
        );

        topology.shards[0].replicas[2].in_sync = true;
        topology.shards[0].replicas[2].role = ReplicaRole::Witness;
        topology.nodes[3].phase = NodePhase::Offline;
        let out = plan_failover(&topology, "r0z0n0", 0, &policy()).expect("plan");
        let d = &out.decisions[0];
        assert_eq!(d.candidates[0].rejected, Some(Rejection::NodeDown));
        assert_eq!(d.candidates[1].rejected, Some(Rejection::Witness));
    }

    #[test]
    fn the_preferred_region_beats_lower_lag() {
        let mut topology = cluster();
        topology.shards[0].placement.preferred_primary_region = Some("r1".into());
        let out = plan_failover(&topology, "r0z0n0", 0, &policy()).expect("plan");
        assert_eq!(out.decisions[0].new_primary.as_deref(), Some("r1z0n0"));
        assert_eq!(
            out.decisions[0].candidates[1].rejected,
            Some(Rejection::OutsidePreferredRegion)
        );
    }

    #[test]
    fn rejections_read_as_reasons() {
        let why = Rejection::BehindChosen {
            chosen: "n2".into(),
        };
        assert_eq!(why.to_string(), "less caught up than n2");
        assert_eq!(
            Rejection::LagTooHigh { max_lag_bytes: 0 }.to_string(),
            "lags more than the allowed 0 bytes"
        );
    }

    #[test]
    fn an_unknown_node_is_an_error() {
        let err = plan_failover(&cluster(), "nope", 0, &policy()).expect_err("unknown");
        assert_eq!(
            err,
            PlanError::UnknownNode {
                node: "nope".into()
            }
        );
    }

    #[derive(Clone, Debug)]
    struct Other {
        region: usize,
        live: bool,
        in_sync: bool,
        lag: u64,
        witness: bool,
    }

    fn arb_other() -> impl Strategy<Value = Other> {
        (
            0usize..3,
            prop::bool::weighted(0.8),
            any::<bool>(),
            0u64..200,
            prop::bool::weighted(0.1),
        )
            .prop_map(|(region, live, in_sync, lag, witness)| Other {
                region,
                live,
                in_sync,
                lag,
                witness,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn failover_never_prefers_a_lagging_or_misplaced_replica(
            others in prop::collection::vec(arb_other(), 1..5),
            preferred in prop::option::of(0usize..3),
        ) {
            let mut nodes = mk_nodes(3, 1, 5);
            nodes[0].phase = NodePhase::Offline;
            let mut names = vec!["r0z0n0".to_owned()];
            for (k, o) in others.iter().enumerate() {
                let i = o.region * 5 + 1 + k;
                if !o.live {
                    nodes[i].phase = NodePhase::Offline;
                }
                names.push(nodes[i].name.clone());
            }
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let mut shard = mk_shard("s", 100, &refs);
            for (r, o) in shard.replicas[1..].iter_mut().zip(&others) {
                r.in_sync = o.in_sync;
                r.lag_bytes = o.lag;
                if o.witness {
                    r.role = ReplicaRole::Witness;
                }
            }
            shard.placement.preferred_primary_region = preferred.map(|p| format!("r{p}"));
            let topology = Topology { replication_factor: 3, nodes, shards: vec![shard] };
            let policy = FailoverPolicy { max_lag_bytes: 100, ..FailoverPolicy::default() };
            let out = plan_failover(&topology, "r0z0n0", 0, &policy).expect("plan");
            let eligible: Vec<(usize, &Other)> = others.iter().enumerate()
                .filter(|(_, o)| o.live && o.in_sync && !o.witness && o.lag <= 100)
                .collect();
            let chosen = out.decisions[0].new_primary.clone();
            match chosen {
                None => {
                    prop_assert!(eligible.is_empty());
                    prop_assert_eq!(&out.plan.blocked[0].reason, &BlockReason::NoInSyncReplica);
                }
                Some(node) => {
                    let k = names.iter().position(|n| *n == node).expect("a replica") - 1;
                    let c = &others[k];
                    prop_assert!(c.live && c.in_sync && !c.witness && c.lag <= 100, "{c:?}");
                    let in_pref = |o: &Other| preferred.is_none_or(|p| o.region == p);
                    if eligible.iter().any(|(_, o)| in_pref(o)) {
                        prop_assert!(in_pref(c));
                    }
                    let best_lag = eligible.iter().filter(|(_, o)| in_pref(o) == in_pref(c)).map(|(_, o)| o.lag).min();
                    prop_assert_eq!(Some(c.lag), best_lag);
                    prop_assert_eq!(out.decisions[0].new_epoch, Some(2));
                }
            }
            // Every other replica got a verdict.
            prop_assert_eq!(out.decisions[0].candidates.len(), others.len());
        }
    }
}
