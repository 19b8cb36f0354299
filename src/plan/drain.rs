//! Drain and decommission: a plan that hands every primary off a node (leadership
//! transfer first, no data moves) and moves every replica away, saying what blocks it when
//! it cannot; decommission adds the node's removal once it is empty.

use serde::{Deserialize, Serialize};

use super::cluster::ClusterState;
use super::error::PlanError;
use super::moves::{leadership_heir, move_replica, transfer_primary};
use super::steps::{BlockReason, ConcurrencyLimits, Plan, PlanBuilder, PlanKind, Step, StepAction};
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
        if state.primary_of(shard) == Some(leaving) {
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
