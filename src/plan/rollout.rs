//! Rollout waves: nodes for upgrades and restarts, shards for schema changes. A canary
//! first, then waves growing by a factor; in node waves no shard ever has more than one
//! replica unavailable, counting replicas already down, so no replica set loses quorum.

use serde::{Deserialize, Serialize};

use super::cluster::ClusterState;
use super::error::PlanError;
use super::moves::{leadership_heir, transfer_primary};
use super::schedule::{ConcurrencyLimits, Plan, PlanBuilder};
use super::steps::{BlockReason, PlanKind, RiskClass, Step, StepAction};
use super::topology::{NodePhase, Topology};

/// How rollout waves grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPolicy {
    /// Size of the first (canary) wave.
    pub canary: u32,
    /// Each wave is this many times the previous one.
    pub growth: u32,
    /// No wave is larger than this.
    pub max_wave: u32,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        RolloutPolicy {
            canary: 1,
            growth: 2,
            max_wave: 16,
        }
    }
}

impl RolloutPolicy {
    /// The size of wave `wave` (0 is the canary).
    pub fn wave_size(&self, wave: u32) -> usize {
        let cap = self.max_wave.max(1) as usize;
        let mut size = self.canary.max(1) as usize;
        for _ in 0..wave {
            if size >= cap {
                break;
            }
            size = size.saturating_mul(self.growth.max(1) as usize);
        }
        size.min(cap)
    }
}

/// What to do to each node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeWork {
    /// Restart its PostgreSQL instances.
    Restart {
        /// What the restart answers (`StepAction::RestartNode`).
        request: String,
    },
    /// Upgrade its software to a version.
    Upgrade {
        /// The version to run.
        version: String,
    },
}

/// Plans `work` on `nodes` (all nodes that are not decommissioned when empty) in waves that
/// never take down two replicas of one shard, and never one of a shard already missing one.
pub fn plan_node_rollout(
    topology: &Topology,
    nodes: &[String],
    work: &NodeWork,
    policy: &RolloutPolicy,
) -> Result<Plan, PlanError> {
    let mut state = ClusterState::new(topology)?;
    let mut plan = PlanBuilder::new(PlanKind::NodeRollout, ConcurrencyLimits::default());
    let requested: Vec<usize> = if nodes.is_empty() {
        (0..topology.nodes.len())
            .filter(|&i| topology.nodes[i].phase != NodePhase::Decommissioned)
            .collect()
    } else {
        nodes
            .iter()
            .map(|n| {
                state
                    .node_ix(n)
                    .ok_or_else(|| PlanError::UnknownNode { node: n.clone() })
            })
            .collect::<Result<_, _>>()?
    };
    // Shards already missing a replica can lose no other.
    let degraded: Vec<bool> = state
        .slots
        .iter()
        .map(|slots| slots.iter().any(|s| !state.node(s.node).is_live()))
        .collect();
    let mut pending = Vec::new();
    for node in requested {
        if !state.node(node).is_live() {
            plan.block(state.node_name(node), BlockReason::NodeNotLive);
        } else if let Some(&shard) = state.node_shards[node].iter().find(|&&s| degraded[s]) {
            plan.block(
                state.node_name(node),
                BlockReason::WouldLoseQuorum {
                    shard: state.shard_name(shard).to_owned(),
                },
            );
        } else {
            pending.push(node);
        }
    }
    // Greedy wave packing: a node joins the current wave if no shard it holds is already
    // touched by the wave; nodes that do not fit wait for the next one.
    let mut touched_in_wave = vec![u32::MAX; topology.shards.len()];
    let mut wave = 0u32;
    while !pending.is_empty() {
        let size = policy.wave_size(wave);
        let mut members = Vec::new();
        let mut rest = Vec::new();
        for node in pending {
            let fits = members.len() < size
                && state.node_shards[node]
                    .iter()
                    .all(|&s| touched_in_wave[s] != wave);
            if fits {
                for &s in &state.node_shards[node] {
                    touched_in_wave[s] = wave;
                }
                members.push(node);
            } else {
                rest.push(node);
            }
        }
        for node in members {
            let steps = node_steps(&mut state, node, work, wave);
            plan.schedule_in_wave(state.node_name(node), steps, wave);
        }
        pending = rest;
        wave += 1;
    }
    Ok(plan.finish())
}

/// Hand off the node's primaries (to replicas outside the wave, by construction), do the
/// work, wait until its replicas are back in sync.
fn node_steps(state: &mut ClusterState<'_>, node: usize, work: &NodeWork, wave: u32) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut led: Vec<usize> = state.node_shards[node]
        .iter()
        .copied()
        .filter(|&s| state.primary_of(s) == Some(node))
        .collect();
    led.sort_unstable();
    for shard in led {
        if let Some(to) = leadership_heir(state, shard, node) {
            let why = format!(
                "{} is about to go down in wave {wave}; hand its primary to an in-sync replica",
                state.node_name(node)
            );
            steps.extend(transfer_primary(state, shard, to, &why));
        }
    }
    let name = state.node_name(node).to_owned();
    let (action, why) = match work {
        NodeWork::Restart { request } => (
            StepAction::RestartNode {
                node: name.clone(),
                request: request.clone(),
            },
            format!("restart in wave {wave}; no shard loses more than this replica"),
        ),
        NodeWork::Upgrade { version } => (
            StepAction::UpgradeNode {
                node: name.clone(),
                version: version.clone(),
            },
            format!("upgrade in wave {wave}; no shard loses more than this replica"),
        ),
    };
    steps.push(Step::new(action, why));
    steps.push(Step::new(
        StepAction::AwaitNodeHealthy { node: name },
        "the next wave starts only when every replica here is back in sync",
    ));
    steps
}

/// Plans applying schema `version` of `table` shard by shard: a canary shard, then growing
/// waves. `risk` is the change's compatibility class as the schema differ judged it.
pub fn plan_schema_rollout(
    topology: &Topology,
    table: &str,
    version: u64,
    risk: RiskClass,
    policy: &RolloutPolicy,
) -> Result<Plan, PlanError> {
    let state = ClusterState::new(topology)?;
    let mut plan = PlanBuilder::new(PlanKind::SchemaRollout, ConcurrencyLimits::default());
    let mut shards: Vec<usize> = (0..topology.shards.len())
        .filter(|&s| topology.shards[s].table == table)
        .collect();
    shards.sort_by_key(|&s| topology.shards[s].range);
    let (mut wave, mut in_wave) = (0u32, 0usize);
    for shard in shards {
        let live_primary = state
            .primary_of(shard)
            .is_some_and(|p| state.node(p).is_live());
        if !live_primary {
            plan.block(state.shard_name(shard), BlockReason::NoLivePrimary);
            continue;
        }
        if in_wave == policy.wave_size(wave) {
            wave += 1;
            in_wave = 0;
        }
        let step = Step {
            action: StepAction::ApplySchema {
                shard: state.shard_name(shard).to_owned(),
                version,
            },
            risk,
            reason: if wave == 0 {
                "canary: the first shard to take the new schema".to_owned()
            } else {
                format!("wave {wave}: the previous waves applied cleanly")
            },
        };
        plan.schedule_in_wave(state.shard_name(shard), vec![step], wave);
        in_wave += 1;
    }
    Ok(plan.finish())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::plan::testkit::{arb_cluster, mk_nodes, mk_placed};

    #[test]
    fn waves_start_with_a_canary_and_grow() {
        let policy = RolloutPolicy::default();
        let sizes: Vec<usize> = (0..7).map(|w| policy.wave_size(w)).collect();
        assert_eq!(sizes, vec![1, 2, 4, 8, 16, 16, 16]);
    }

    #[test]
    fn an_upgrade_hands_off_primaries_and_never_takes_two_replicas_of_a_shard() {
        let topology = mk_placed(3, mk_nodes(3, 2, 2), &[100; 8]);
        let work = NodeWork::Upgrade {
            version: "16.4".into(),
        };
        let plan =
            plan_node_rollout(&topology, &[], &work, &RolloutPolicy::default()).expect("plan");
        assert!(plan.blocked.is_empty());
        assert_eq!(plan.operations.len(), 12);
        assert_eq!(plan.operations.iter().filter(|op| op.wave == 0).count(), 1);
        let canary = &plan.operations[0];
        let led = topology
            .shards
            .iter()
            .filter(|s| s.primary_node() == Some(&canary.subject))
            .count();
        let transfers = canary
            .steps
            .iter()
            .filter(|s| matches!(s.action, StepAction::TransferPrimary { .. }))
            .count();
        assert_eq!(transfers, led);
        assert!(matches!(
            canary.steps[led].action,
            StepAction::UpgradeNode { .. }
        ));
        assert!(matches!(
            canary.steps[led + 1].action,
            StepAction::AwaitNodeHealthy { .. }
        ));
        assert_eq!(plan.risk, RiskClass::Disruptive);
    }

    #[test]
    fn a_shard_already_missing_a_replica_blocks_its_other_nodes() {
        let mut topology = mk_placed(3, mk_nodes(3, 1, 1), &[100; 2]);
        topology.nodes[0].phase = NodePhase::Offline;
        let plan = plan_node_rollout(
            &topology,
            &[],
            &NodeWork::Restart {
                request: "test".into(),
            },
            &RolloutPolicy::default(),
        )
        .expect("plan");
        assert!(plan.operations.is_empty());
        assert_eq!(plan.blocked[0].reason, BlockReason::NodeNotLive);
        assert!(matches!(
            plan.blocked[1].reason,
            BlockReason::WouldLoseQuorum { .. }
        ));
    }

    #[test]
    fn schema_changes_roll_shard_by_shard_with_the_given_risk() {
        let topology = mk_placed(3, mk_nodes(3, 1, 1), &[100; 7]);
        let plan = plan_schema_rollout(
            &topology,
            "t",
            4,
            RiskClass::Disruptive,
            &RolloutPolicy::default(),
        )
        .expect("plan");
        let waves: Vec<u32> = plan.operations.iter().map(|op| op.wave).collect();
        assert_eq!(waves, vec![0, 1, 1, 2, 2, 2, 2]);
        assert_eq!(plan.risk, RiskClass::Disruptive);
        assert!(plan.operations[0].steps[0].reason.contains("canary"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn no_wave_takes_down_a_quorum(topology in arb_cluster(), down in prop::option::of(any::<prop::sample::Index>()), policy_size in 1u32..6) {
            let mut topology = topology;
            if let Some(i) = down {
                let n = i.index(topology.nodes.len());
                topology.nodes[n].phase = NodePhase::Offline;
            }
            let policy = RolloutPolicy { canary: 1, growth: 2, max_wave: policy_size };
            let plan = plan_node_rollout(&topology, &[], &NodeWork::Restart { request: "test".into() }, &policy).expect("plan");
            let node_of = |name: &str| topology.nodes.iter().find(|n| n.name == name).expect("node");
            let mut waves: BTreeMap<u32, BTreeSet<&str>> = BTreeMap::new();
            for op in &plan.operations {
                waves.entry(op.wave).or_default().insert(&op.subject);
            }
            for (wave, nodes) in &waves {
                prop_assert!(nodes.len() <= policy.wave_size(*wave));
                for s in &topology.shards {
                    let already = s.replicas.iter().filter(|r| !node_of(&r.node).is_live()).count();
                    let taken = s.replicas.iter().filter(|r| nodes.contains(r.node.as_str())).count();
                    prop_assert!(already + taken <= 1, "wave {wave} takes {taken} of {} ({already} down)", s.name);
                }
            }
            // Every node is either rolled exactly once or blocked with a reason.
            let rolled: Vec<&str> = plan.operations.iter().map(|op| op.subject.as_str()).collect();
            let unique: BTreeSet<&str> = rolled.iter().copied().collect();
            prop_assert_eq!(rolled.len(), unique.len());
            prop_assert_eq!(unique.len() + plan.blocked.len(), topology.nodes.len());
        }
    }
}
