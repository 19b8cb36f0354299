//! The plan vocabulary: steps, operations, risk classes, placement rejections and blockers.
//! Planners decide *what* to do; this module only names it (`schedule.rs` orders it into
//! waves and seals it into a `Plan`).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::keyspace::KeyRange;

/// How much a step (or a whole plan) can hurt; approval policy keys off it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum RiskClass {
    /// No client sees any effect.
    #[default]
    Safe,
    /// Clients may see brief unavailability (a primary switch, a write fence, a restart).
    Disruptive,
    /// Data is dropped or a node leaves for good; never run without approval.
    Destructive,
}

/// What the plan is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PlanKind {
    /// Bring under-replicated shards up to the replication factor.
    Placement,
    /// Even out bytes, replica counts and primaries across nodes.
    Rebalance,
    /// Replace the primaries lost with a dead node, then re-replicate.
    Failover,
    /// Move every replica and primary off a node.
    Drain,
    /// Drain a node, then remove it from the cluster.
    Decommission,
    /// Replace shards by others covering the same keys (split or merge).
    Reshard,
    /// Upgrade or restart nodes in waves.
    NodeRollout,
    /// Apply a schema version to shards in waves.
    SchemaRollout,
}

/// A new shard a split or merge creates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetShard {
    /// The new shard's name.
    pub name: String,
    /// The table it belongs to.
    pub table: String,
    /// The keys it will own.
    pub range: KeyRange,
    /// The nodes of its replica set; the first holds the primary.
    pub nodes: Vec<String>,
}

/// One action the executor performs. Every action is idempotent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepAction {
    /// Create a replica of `shard` on `node` by base backup from the primary.
    AddReplica {
        /// The shard.
        shard: String,
        /// The node receiving the replica.
        node: String,
    },
    /// Wait until the replica on `node` streams in sync with the primary.
    CatchUp {
        /// The shard.
        shard: String,
        /// The node holding the new replica.
        node: String,
    },
    /// Hand the primary role from one in-sync replica to another at a new epoch.
    TransferPrimary {
        /// The shard.
        shard: String,
        /// The current primary's node.
        from: String,
        /// The node taking over.
        to: String,
        /// The epoch the new primary serves at.
        epoch: u64,
    },
    /// Promote a secondary because the primary is gone (failover), at a new epoch.
    Promote {
        /// The shard.
        shard: String,
        /// The node whose replica becomes primary.
        node: String,
        /// The epoch the new primary serves at.
        epoch: u64,
    },
    /// Remove the replica of `shard` on `node` (after the replacement caught up).
    RemoveReplica {
        /// The shard.
        shard: String,
        /// The node losing the replica.
        node: String,
    },
    /// Do not start the next step before this time.
    WaitUntil {
        /// Milliseconds since the Unix epoch.
        not_before_ms: u64,
    },
    /// Create the empty replica sets of the shards a split or merge produces.
    PrepareTargets {
        /// The shards to create.
        targets: Vec<TargetShard>,
    },
    /// Copy the rows of `range` from a source shard's primary into a target shard.
    CopyRows {
        /// The shard copied from.
        source: String,
        /// The shard copied into.
        target: String,
        /// The keys copied.
        range: KeyRange,
    },
    /// Wait until logical replication from the sources into `target` has caught up.
    CatchUpTarget {
        /// The shard catching up.
        target: String,
    },
    /// Make the source shards refuse writes so the targets can finish catching up.
    FenceWrites {
        /// The shards fenced.
        shards: Vec<String>,
    },
    /// Compare row counts and checksums per range between sources and targets.
    VerifyRanges {
        /// The shards copied from.
        sources: Vec<String>,
        /// The shards copied into.
        targets: Vec<String>,
    },
    /// Replace sources by targets in the table's routing map, in one write.
    SwitchRouting {
        /// The table whose routing map changes.
        table: String,
        /// Shards that stop serving.
        retire: Vec<String>,
        /// Shards that start serving.
        serve: Vec<String>,
    },
    /// Drop retired shards' replicas, not before the grace period ends.
    DropShards {
        /// The shards dropped.
        shards: Vec<String>,
        /// Milliseconds since the Unix epoch before which nothing is dropped.
        not_before_ms: u64,
    },
    /// Restart the PostgreSQL instances on a node.
    RestartNode {
        /// The node.
        node: String,
        /// What the restart answers (parameters of a cluster generation waiting for it, or
        /// an on-demand request): two rolling restarts for different reasons are different
        /// plans.
        #[serde(default)]
        request: String,
    },
    /// Upgrade a node's software, restarting its instances.
    UpgradeNode {
        /// The node.
        node: String,
        /// The version to run.
        version: String,
    },
    /// Wait until every replica on the node is back in sync.
    AwaitNodeHealthy {
        /// The node.
        node: String,
    },
    /// Apply a schema version on a shard's primary (replicas follow by streaming).
    ApplySchema {
        /// The shard.
        shard: String,
        /// The schema version applied.
        version: u64,
    },
    /// Remove an empty node from the cluster for good.
    RemoveNode {
        /// The node.
        node: String,
    },
}

impl StepAction {
    /// The risk of the action when nothing else is known about it.
    pub fn default_risk(&self) -> RiskClass {
        match self {
            StepAction::AddReplica { .. }
            | StepAction::CatchUp { .. }
            | StepAction::RemoveReplica { .. }
            | StepAction::WaitUntil { .. }
            | StepAction::PrepareTargets { .. }
            | StepAction::CopyRows { .. }
            | StepAction::CatchUpTarget { .. }
            | StepAction::VerifyRanges { .. }
            | StepAction::AwaitNodeHealthy { .. }
            | StepAction::ApplySchema { .. } => RiskClass::Safe,
            StepAction::TransferPrimary { .. }
            | StepAction::Promote { .. }
            | StepAction::FenceWrites { .. }
            | StepAction::SwitchRouting { .. }
            | StepAction::RestartNode { .. }
            | StepAction::UpgradeNode { .. } => RiskClass::Disruptive,
            StepAction::DropShards { .. } | StepAction::RemoveNode { .. } => RiskClass::Destructive,
        }
    }

    /// Whether the executor may record the step with its outcome instead of also before it
    /// acts: the action only looks (its effect is another step's or the agents'), or it is
    /// the routing switch, which a second run finds done (one write less while a split's
    /// fence is up; a restarted operator runs the step again either way).
    pub fn recorded_with_outcome(&self) -> bool {
        matches!(
            self,
            StepAction::CatchUpTarget { .. }
                | StepAction::VerifyRanges { .. }
                | StepAction::SwitchRouting { .. }
        )
    }

    /// Every shard the action acts on: its subject, the shards a split or merge copies from,
    /// fences, verifies, switches, creates or drops.
    pub fn shards(&self) -> Vec<&str> {
        match self {
            StepAction::AddReplica { shard, .. }
            | StepAction::CatchUp { shard, .. }
            | StepAction::TransferPrimary { shard, .. }
            | StepAction::Promote { shard, .. }
            | StepAction::RemoveReplica { shard, .. }
            | StepAction::ApplySchema { shard, .. } => vec![shard],
            StepAction::PrepareTargets { targets } => {
                targets.iter().map(|t| t.name.as_str()).collect()
            }
            StepAction::CopyRows { source, target, .. } => vec![source, target],
            StepAction::CatchUpTarget { target } => vec![target],
            StepAction::FenceWrites { shards } | StepAction::DropShards { shards, .. } => {
                shards.iter().map(String::as_str).collect()
            }
            StepAction::VerifyRanges { sources, targets } => {
                sources.iter().chain(targets).map(String::as_str).collect()
            }
            StepAction::SwitchRouting { retire, serve, .. } => {
                retire.iter().chain(serve).map(String::as_str).collect()
            }
            StepAction::WaitUntil { .. }
            | StepAction::RestartNode { .. }
            | StepAction::UpgradeNode { .. }
            | StepAction::AwaitNodeHealthy { .. }
            | StepAction::RemoveNode { .. } => Vec::new(),
        }
    }

    /// Adds the nodes whose concurrency budget the action uses to `out`.
    pub(super) fn add_nodes<'s>(&'s self, out: &mut Vec<&'s str>) {
        match self {
            StepAction::AddReplica { node, .. }
            | StepAction::CatchUp { node, .. }
            | StepAction::Promote { node, .. }
            | StepAction::RemoveReplica { node, .. }
            | StepAction::RestartNode { node, .. }
            | StepAction::UpgradeNode { node, .. }
            | StepAction::AwaitNodeHealthy { node }
            | StepAction::RemoveNode { node } => out.push(node),
            StepAction::TransferPrimary { from, to, .. } => out.extend([from.as_str(), to]),
            StepAction::PrepareTargets { targets } => {
                out.extend(
                    targets
                        .iter()
                        .flat_map(|t| t.nodes.iter().map(String::as_str)),
                );
            }
            StepAction::WaitUntil { .. }
            | StepAction::CopyRows { .. }
            | StepAction::CatchUpTarget { .. }
            | StepAction::FenceWrites { .. }
            | StepAction::VerifyRanges { .. }
            | StepAction::SwitchRouting { .. }
            | StepAction::DropShards { .. }
            | StepAction::ApplySchema { .. } => {}
        }
    }
}

/// One step of a plan: an action, its risk, and why the planner chose it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// What to do.
    pub action: StepAction,
    /// How much it can hurt.
    pub risk: RiskClass,
    /// Why, for humans reading `kubectl get plan -o yaml`.
    pub reason: String,
}

impl Step {
    /// A step with the action's default risk.
    pub fn new(action: StepAction, reason: impl Into<String>) -> Self {
        Step {
            risk: action.default_risk(),
            action,
            reason: reason.into(),
        }
    }
}

/// A sequence of steps about one subject (a shard or a node), run in order.
/// Operations in the same wave may run concurrently; wave `n + 1` starts after wave `n`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// The wave the operation belongs to.
    pub wave: u32,
    /// The shard or node the operation is about.
    pub subject: String,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// Why a placement candidate node was turned down.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PlacementRejection {
    /// The node is not online (pending, suspect, offline, draining, in maintenance or gone).
    NotOnline,
    /// A user cordoned the node.
    Cordoned,
    /// The node's weight is 0.
    ZeroWeight,
    /// The node already holds a replica of the shard.
    HoldsReplica,
    /// The node lacks free capacity for the shard.
    NoCapacity,
    /// The zone already holds as many replicas of the shard as losing one zone allows.
    ZoneFull,
    /// The region already holds as many replicas of the shard as losing one region allows.
    RegionFull,
}

impl fmt::Display for PlacementRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PlacementRejection::NotOnline => "not online",
            PlacementRejection::Cordoned => "cordoned",
            PlacementRejection::ZeroWeight => "weight 0",
            PlacementRejection::HoldsReplica => "already hold a replica",
            PlacementRejection::NoCapacity => "lack free capacity",
            PlacementRejection::ZoneFull => {
                "are in a zone already holding as many replicas as losing one zone allows"
            }
            PlacementRejection::RegionFull => {
                "are in a region already holding as many replicas as losing one region allows"
            }
        })
    }
}

/// Why part of a plan cannot be made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockReason {
    /// No node can take a replica the shard needs: how many nodes were turned down, and why.
    NoPlacement {
        /// Replicas the shard still lacks.
        missing: u32,
        /// Nodes turned down, counted by reason.
        rejected: Vec<(PlacementRejection, u32)>,
    },
    /// The shard's replica on the node is pinned there by the user.
    Pinned {
        /// The node the replica is pinned to.
        node: String,
    },
    /// No secondary is in sync, so promoting any would lose acknowledged writes.
    NoInSyncReplica,
    /// Taking the node down would leave a shard with more than one replica unavailable.
    WouldLoseQuorum {
        /// The shard that would lose its quorum.
        shard: String,
    },
    /// The requested resharding is malformed.
    InvalidReshard {
        /// What is wrong, in words.
        detail: String,
    },
    /// Balance within the target could not be reached for this node.
    Unbalanceable,
    /// The node is not serving, so it cannot be restarted or upgraded in a wave.
    NodeNotLive,
    /// The shard has no live primary to apply the change on.
    NoLivePrimary,
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockReason::NoPlacement { missing, rejected } => {
                write!(f, "no node can take {missing} more replica(s):")?;
                for (i, (why, n)) in rejected.iter().enumerate() {
                    let sep = if i == 0 { " " } else { ", " };
                    write!(f, "{sep}{n} node(s) {why}")?;
                }
                write!(f, "; add nodes in other zones/regions or free capacity")
            }
            BlockReason::Pinned { node } => write!(
                f,
                "the replica is pinned to {node}; remove it from placement.pinnedNodes first"
            ),
            BlockReason::NoInSyncReplica => write!(
                f,
                "no in-sync secondary is live; promoting a lagging one would lose acknowledged \
                 writes, so this needs a manual decision"
            ),
            BlockReason::WouldLoseQuorum { shard } => write!(
                f,
                "shard {shard} already has a replica unavailable; wait until it is back"
            ),
            BlockReason::InvalidReshard { detail } => write!(f, "invalid split/merge: {detail}"),
            BlockReason::NodeNotLive => write!(
                f,
                "the node is not serving; bring it back (or decommission it) before rolling it"
            ),
            BlockReason::NoLivePrimary => write!(
                f,
                "the shard has no live primary; resolve its failover first"
            ),
            BlockReason::Unbalanceable => write!(
                f,
                "no move keeps every node inside the balance band; shard sizes are too coarse \
                 for the configured imbalance"
            ),
        }
    }
}

/// A shard or node the plan could not handle, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocker {
    /// The shard or node.
    pub subject: String,
    /// Why.
    pub reason: BlockReason,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blockers_read_as_instructions() {
        let reason = BlockReason::NoPlacement {
            missing: 1,
            rejected: vec![
                (PlacementRejection::NotOnline, 2),
                (PlacementRejection::RegionFull, 3),
            ],
        };
        assert_eq!(
            reason.to_string(),
            "no node can take 1 more replica(s): 2 node(s) not online, 3 node(s) are in a region \
             already holding as many replicas as losing one region allows; add nodes in other \
             zones/regions or free capacity"
        );
    }
}
