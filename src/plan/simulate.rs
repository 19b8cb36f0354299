//! The state a plan leads to: applies a plan's steps to a copy of the observed topology, as
//! if every step succeeded. Used to preview a plan's outcome and to check planners' promises.

use std::collections::HashMap;

use super::schedule::Plan;
use super::steps::StepAction;
use super::topology::{NodePhase, Replica, ReplicaRole, Shard, ShardPlacement, Topology};

/// The topology after every step of `plan` has run. Steps naming unknown shards or nodes
/// change nothing.
pub fn apply_plan(topology: &Topology, plan: &Plan) -> Topology {
    apply_steps(topology, plan.steps().map(|s| &s.action))
}

/// The topology after every one of `steps` has run, in order (the steps of plans already
/// made, read back from their wire form). Steps naming unknown shards or nodes change
/// nothing.
pub fn apply_steps<'a>(
    topology: &Topology,
    steps: impl IntoIterator<Item = &'a StepAction>,
) -> Topology {
    let mut next = topology.clone();
    let mut index: HashMap<String, usize> = next
        .shards
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), i))
        .collect();
    for action in steps {
        match action {
            StepAction::AddReplica { shard, node } => {
                if let Some(s) = index.get(shard).map(|&i| &mut next.shards[i])
                    && !s.has_replica_on(node)
                {
                    s.replicas.push(Replica {
                        node: node.clone(),
                        role: ReplicaRole::Secondary,
                        in_sync: false,
                        lag_bytes: 0,
                    });
                }
            }
            StepAction::CatchUp { shard, node } => {
                if let Some(r) = replica_mut(&mut next, &index, shard, node) {
                    r.in_sync = true;
                    r.lag_bytes = 0;
                }
            }
            StepAction::TransferPrimary {
                shard, to, epoch, ..
            }
            | StepAction::Promote {
                shard,
                node: to,
                epoch,
            } => {
                if let Some(s) = index.get(shard).map(|&i| &mut next.shards[i]) {
                    for r in &mut s.replicas {
                        if r.role == ReplicaRole::Primary {
                            r.role = ReplicaRole::Secondary;
                        }
                        if &r.node == to {
                            r.role = ReplicaRole::Primary;
                            r.in_sync = true;
                            r.lag_bytes = 0;
                        }
                    }
                    s.epoch = *epoch;
                }
            }
            StepAction::RemoveReplica { shard, node } => {
                if let Some(s) = index.get(shard).map(|&i| &mut next.shards[i]) {
                    s.replicas.retain(|r| &r.node != node);
                }
            }
            StepAction::PrepareTargets { targets } => {
                for t in targets {
                    let size = next
                        .shards
                        .iter()
                        .filter_map(|s| {
                            let both = s.range.intersection(t.range)?;
                            Some(
                                (u128::from(s.size_bytes) * both.key_count() / s.range.key_count())
                                    as u64,
                            )
                        })
                        .sum();
                    index.insert(t.name.clone(), next.shards.len());
                    next.shards.push(Shard {
                        name: t.name.clone(),
                        table: t.table.clone(),
                        range: t.range,
                        size_bytes: size,
                        epoch: 1,
                        replicas: t
                            .nodes
                            .iter()
                            .enumerate()
                            .map(|(k, n)| Replica {
                                node: n.clone(),
                                role: if k == 0 {
                                    ReplicaRole::Primary
                                } else {
                                    ReplicaRole::Secondary
                                },
                                in_sync: true,
                                lag_bytes: 0,
                            })
                            .collect(),
                        placement: ShardPlacement::default(),
                    });
                }
            }
            StepAction::DropShards { shards, .. } => {
                next.shards.retain(|s| !shards.contains(&s.name));
                index = next
                    .shards
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.name.clone(), i))
                    .collect();
            }
            StepAction::RemoveNode { node } => {
                if let Some(n) = next.nodes.iter_mut().find(|n| &n.name == node) {
                    n.phase = NodePhase::Decommissioned;
                }
            }
            StepAction::WaitUntil { .. }
            | StepAction::CopyRows { .. }
            | StepAction::CatchUpTarget { .. }
            | StepAction::FenceWrites { .. }
            | StepAction::VerifyRanges { .. }
            | StepAction::SwitchRouting { .. }
            | StepAction::RestartNode { .. }
            | StepAction::UpgradeNode { .. }
            | StepAction::AwaitNodeHealthy { .. }
            | StepAction::ApplySchema { .. } => {}
        }
    }
    next
}

fn replica_mut<'t>(
    topology: &'t mut Topology,
    index: &HashMap<String, usize>,
    shard: &str,
    node: &str,
) -> Option<&'t mut Replica> {
    let &i = index.get(shard)?;
    topology.shards[i]
        .replicas
        .iter_mut()
        .find(|r| r.node == node)
}
