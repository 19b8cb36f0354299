//! Failover for a dead node: a new primary for each shard it led, chosen among live in-sync
//! secondaries (lowest lag, preferred region) at a bumped epoch, with every candidate's
//! verdict explained; then re-replication of everything it held, after a delay.

use serde::{Deserialize, Serialize};

use super::cluster::ClusterState;
use super::error::PlanError;
use super::moves::add_replica;
use super::steps::{BlockReason, ConcurrencyLimits, Plan, PlanBuilder, PlanKind, Step, StepAction};
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
