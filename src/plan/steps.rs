//! The plan vocabulary: steps, operations, risk classes, blockers, and the builder that
//! orders operations into waves under per-node and per-cluster concurrency limits.
//! Planners decide *what* to do; this module only records it and schedules it.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::cluster::NameMap;
use super::hash::content_hash;
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

    /// Adds the nodes whose concurrency budget the action uses to `out`.
    fn add_nodes<'s>(&'s self, out: &mut Vec<&'s str>) {
        match self {
            StepAction::AddReplica { node, .. }
            | StepAction::CatchUp { node, .. }
            | StepAction::Promote { node, .. }
            | StepAction::RemoveReplica { node, .. }
            | StepAction::RestartNode { node }
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

/// An ordered, hashed plan: what the operator will do for one change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// What the plan is for.
    pub kind: PlanKind,
    /// The highest risk of any step.
    pub risk: RiskClass,
    /// Hex SHA-256 of the plan's content (kind, operations, waves, actions, risks,
    /// blockers); reasons are excluded so rewording an explanation keeps an approval valid.
    pub hash: String,
    /// The operations, ordered by wave.
    pub operations: Vec<Operation>,
    /// What could not be planned.
    pub blocked: Vec<Blocker>,
}

impl Plan {
    /// Every step in execution order (wave by wave, operation by operation).
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.operations.iter().flat_map(|op| op.steps.iter())
    }

    /// Whether the plan does nothing and nothing is blocked.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty() && self.blocked.is_empty()
    }

    /// Recomputes the content hash (to check a stored plan was not altered).
    pub fn content_hash(&self) -> String {
        content_hash(self.kind, &self.operations, &self.blocked)
    }
}

/// How many operations may run at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConcurrencyLimits {
    /// Operations touching any one node at once.
    pub per_node: u32,
    /// Operations in the cluster at once.
    pub per_cluster: u32,
}

impl Default for ConcurrencyLimits {
    fn default() -> Self {
        ConcurrencyLimits {
            per_node: 2,
            per_cluster: 32,
        }
    }
}

/// Collects operations and blockers, assigns waves under concurrency limits, and seals the
/// result into a hashed [`Plan`].
pub(crate) struct PlanBuilder {
    kind: PlanKind,
    limits: ConcurrencyLimits,
    operations: Vec<Operation>,
    blocked: Vec<Blocker>,
    per_wave: Vec<u32>,
    per_node_wave: NameMap<String, Vec<u32>>,
    last_wave_of_subject: NameMap<String, u32>,
    first_open_wave: u32,
}

impl PlanBuilder {
    pub(crate) fn new(kind: PlanKind, limits: ConcurrencyLimits) -> Self {
        PlanBuilder {
            kind,
            limits: ConcurrencyLimits {
                per_node: limits.per_node.max(1),
                per_cluster: limits.per_cluster.max(1),
            },
            operations: Vec::new(),
            blocked: Vec::new(),
            per_wave: Vec::new(),
            per_node_wave: NameMap::default(),
            last_wave_of_subject: NameMap::default(),
            first_open_wave: 0,
        }
    }

    /// Adds an operation in the earliest wave that has room on every node it touches and
    /// comes after the subject's previous operation and `after` (if given).
    pub(crate) fn schedule(&mut self, subject: &str, steps: Vec<Step>, after: Option<u32>) -> u32 {
        let mut nodes: Vec<&str> = Vec::with_capacity(4);
        for step in &steps {
            step.action.add_nodes(&mut nodes);
        }
        nodes.sort_unstable();
        nodes.dedup();
        let mut wave = self.first_open_wave;
        if let Some(&last) = self.last_wave_of_subject.get(subject) {
            wave = wave.max(last + 1);
        }
        if let Some(a) = after {
            wave = wave.max(a + 1);
        }
        while !self.has_room(wave, &nodes) {
            wave += 1;
        }
        let nodes: Vec<String> = nodes.into_iter().map(str::to_owned).collect();
        self.place(subject, steps, wave, &nodes);
        wave
    }

    /// Adds an operation to a wave chosen by the caller (rollouts size their own waves).
    pub(crate) fn schedule_in_wave(&mut self, subject: &str, steps: Vec<Step>, wave: u32) {
        self.place(subject, steps, wave, &[]);
    }

    pub(crate) fn block(&mut self, subject: &str, reason: BlockReason) {
        self.blocked.push(Blocker {
            subject: subject.to_owned(),
            reason,
        });
    }

    pub(crate) fn has_blockers(&self) -> bool {
        !self.blocked.is_empty()
    }

    fn has_room(&self, wave: u32, nodes: &[&str]) -> bool {
        let w = wave as usize;
        if self.per_wave.get(w).copied().unwrap_or(0) >= self.limits.per_cluster {
            return false;
        }
        nodes.iter().all(|n| {
            self.per_node_wave
                .get(*n)
                .and_then(|v| v.get(w))
                .copied()
                .unwrap_or(0)
                < self.limits.per_node
        })
    }

    fn place(&mut self, subject: &str, steps: Vec<Step>, wave: u32, nodes: &[String]) {
        let w = wave as usize;
        if self.per_wave.len() <= w {
            self.per_wave.resize(w + 1, 0);
        }
        self.per_wave[w] += 1;
        for n in nodes {
            let v = match self.per_node_wave.get_mut(n.as_str()) {
                Some(v) => v,
                None => self.per_node_wave.entry(n.clone()).or_default(),
            };
            if v.len() <= w {
                v.resize(w + 1, 0);
            }
            v[w] += 1;
        }
        while self
            .per_wave
            .get(self.first_open_wave as usize)
            .is_some_and(|&c| c >= self.limits.per_cluster)
        {
            self.first_open_wave += 1;
        }
        match self.last_wave_of_subject.get_mut(subject) {
            Some(last) => *last = wave,
            None => {
                self.last_wave_of_subject.insert(subject.to_owned(), wave);
            }
        }
        self.operations.push(Operation {
            wave,
            subject: subject.to_owned(),
            steps,
        });
    }

    pub(crate) fn finish(mut self) -> Plan {
        // Stable: operations keep their decision order inside a wave.
        self.operations.sort_by_key(|op| op.wave);
        let risk = self
            .operations
            .iter()
            .flat_map(|op| op.steps.iter().map(|s| s.risk))
            .max()
            .unwrap_or_default();
        let hash = content_hash(self.kind, &self.operations, &self.blocked);
        Plan {
            kind: self.kind,
            risk,
            hash,
            operations: self.operations,
            blocked: self.blocked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(shard: &str, node: &str) -> Vec<Step> {
        vec![Step::new(
            StepAction::AddReplica {
                shard: shard.into(),
                node: node.into(),
            },
            "test",
        )]
    }

    #[test]
    fn waves_respect_node_cluster_and_subject_limits() {
        let limits = ConcurrencyLimits {
            per_node: 1,
            per_cluster: 2,
        };
        let mut b = PlanBuilder::new(PlanKind::Rebalance, limits);
        assert_eq!(b.schedule("a", add("a", "n1"), None), 0);
        assert_eq!(
            b.schedule("b", add("b", "n1"), None),
            1,
            "n1 is busy in wave 0"
        );
        assert_eq!(b.schedule("c", add("c", "n2"), None), 0);
        assert_eq!(b.schedule("d", add("d", "n3"), None), 1, "wave 0 is full");
        assert_eq!(
            b.schedule("a", add("a", "n4"), None),
            2,
            "wave 1 is full too"
        );
        assert_eq!(b.schedule("e", add("e", "n5"), Some(3)), 4);
        let plan = b.finish();
        let waves: Vec<u32> = plan.operations.iter().map(|op| op.wave).collect();
        assert_eq!(waves, [0, 0, 1, 1, 2, 4]);
        assert_eq!(plan.risk, RiskClass::Safe);
    }

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
