//! The pure planning core: every decision as a function from observed state to a plan.
//! No I/O, no async, no clock reads; nothing here imports kube.
//!
//! Inputs are plain domain types ([`Topology`], [`Node`], [`Shard`], [`KeyRange`]); outputs
//! are hashed [`Plan`]s of ordered, explained steps. See `docs/planning.md` for the design.

mod cluster;
mod drain;
mod error;
mod failover;
mod hash;
mod keyspace;
mod leadership;
mod moves;
mod name_map;
mod placement;
mod rebalance;
mod reshard;
mod respread;
mod rollout;
mod schedule;
mod shares;
mod simulate;
mod spread;
mod steps;
mod topology;

#[cfg(test)]
mod testkit;

pub use drain::{DrainGoal, plan_drain};
pub use error::PlanError;
pub use failover::{
    Candidate, FailoverDecision, FailoverPlan, FailoverPolicy, Rejection, plan_failover,
    plan_quorum_failover,
};
pub use keyspace::{
    KEYSPACE_END, KEYSPACE_START, KeyRange, KeyRangeError, TilingError, TilingProblem,
    WireKeyRange, check_tiling, check_tiling_of,
};
pub use placement::{plan_placement, plan_placement_within};
pub use rebalance::{RebalancePlan, RebalancePolicy, RebalanceReport, plan_rebalance};
pub use reshard::{NewShard, ReshardRequest, plan_reshard};
pub use respread::plan_respread;
pub use rollout::{NodeWork, RolloutPolicy, plan_node_rollout, plan_schema_rollout};
pub use schedule::{ConcurrencyLimits, Plan};
pub use shares::{Imbalance, measure_imbalance};
pub use simulate::{apply_plan, apply_steps};
pub use spread::{SpreadLimits, regions_in_service, spread_limits};
pub use steps::{
    BlockReason, Blocker, Operation, PlacementRejection, PlanKind, RiskClass, Step, StepAction,
    TargetShard,
};
pub use topology::{Node, NodePhase, Replica, ReplicaRole, Shard, ShardPlacement, Topology};
