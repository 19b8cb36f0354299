//! What the table reconciler writes: the table's status (its routing map, shard count and
//! `Ready` condition, refusing shards that do not tile the key space), each shard's
//! readiness, and the plan that drops a deleted table's data.

use k8s_openapi::jiff::Timestamp;

use crate::api::plan::PlanPhase;
use crate::api::shard::{ReplicaRole, ReplicaState, ShardPhase};
use crate::api::table::TableStatus;
use crate::api::{Shard, Table};
use crate::plan::{self, KeyRange, Operation, PlanKind, Step, StepAction, check_tiling};
use crate::protocol::APPROVE_ANNOTATION;

use super::conditions::{self, Observation};
use super::domain::observed_on;
use super::routing::{next_map, routing_entries};

/// The table's status from its `shards`, with `retire` (a split's or merge's sources at
/// its switch) no longer routed; `deletion` (a deleted table's state) takes the place of
/// the routing's own readiness. `None` when it says what the table already says.
pub fn status(
    table: &Table,
    shards: &[Shard],
    retire: &[String],
    deletion: Option<Observation<'_>>,
    now: Timestamp,
) -> Option<TableStatus> {
    let generation = table.metadata.generation;
    let old = table.status.clone().unwrap_or_default();
    let old_routing = old.routing.clone().unwrap_or_default();
    let entries = routing_entries(shards, &old_routing.ranges, retire);
    let ranges: Vec<(String, Result<KeyRange, String>)> = entries
        .iter()
        .map(|e| {
            (
                e.shard.clone(),
                KeyRange::from_wire(e.start, e.end).map_err(|err| err.to_string()),
            )
        })
        .collect();
    let invalid: Vec<String> = ranges
        .iter()
        .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}: {e}")))
        .collect();
    let tiling = check_tiling(
        ranges
            .iter()
            .filter_map(|(name, r)| r.as_ref().ok().map(|r| (name.as_str(), *r))),
    );
    let without_primary: Vec<String> = entries
        .iter()
        .filter(|e| e.primary.is_none())
        .map(|e| e.shard.clone())
        .collect();
    let mut status = TableStatus {
        observed_generation: generation,
        conditions: old.conditions.clone(),
        schema_version: old.schema_version,
        shards: Some(shards.len() as i32),
        routing: Some(next_map(&old_routing, entries)),
    };
    let (ready, reason, message) = match (&tiling, invalid.is_empty(), without_primary.is_empty()) {
        (Err(error), _, _) => (
            false,
            "ShardsDoNotTile",
            format!("refused topology: {error}; fix the Shard manifests"),
        ),
        (_, false, _) => (false, "InvalidShardRange", invalid.join("; ")),
        (Ok(()), true, false) => (
            false,
            "ShardsWithoutPrimary",
            format!("no primary yet for: {}", without_primary.join(", ")),
        ),
        (Ok(()), true, true) => (
            true,
            "Routable",
            format!(
                "{} shard(s) tile the key space, each with a primary",
                shards.len()
            ),
        ),
    };
    let observation = deletion.unwrap_or(Observation {
        type_: "Ready",
        holds: ready,
        reason,
        message,
    });
    conditions::set(&mut status.conditions, generation, observation, now);
    let unchanged = conditions::same(&status.conditions, &old.conditions)
        && TableStatus {
            conditions: Vec::new(),
            ..status.clone()
        } == TableStatus {
            conditions: Vec::new(),
            ..old
        };
    (!unchanged).then_some(status)
}

/// The shard's ready-replica count and phase, where they differ from its status: Serving
/// once its primary reports in sync at its epoch, Provisioning before it has a primary,
/// Failed when its primary does not serve; a split's, merge's or move's phase is kept.
pub fn shard_readiness(shard: &Shard) -> Option<(i32, ShardPhase)> {
    let status = shard.status.clone().unwrap_or_default();
    let ready = status
        .desired_replicas
        .iter()
        .filter(|d| {
            observed_on(&status.replicas, &d.node)
                .is_some_and(|o| o.state == ReplicaState::InSync && o.role == d.role)
        })
        .count() as i32;
    let primary_serving = status.primary.as_ref().is_some_and(|p| {
        observed_on(&status.replicas, &p.node).is_some_and(|o| {
            o.role == ReplicaRole::Primary
                && o.state == ReplicaState::InSync
                && o.epoch == Some(p.epoch)
        })
    });
    let phase = match (status.primary.is_some(), primary_serving) {
        (_, true) => ShardPhase::Serving,
        (false, false) => ShardPhase::Provisioning,
        (true, false) => ShardPhase::Failed,
    };
    let phase = match status.phase {
        Some(
            ShardPhase::Splitting
            | ShardPhase::Merging
            | ShardPhase::Migrating
            | ShardPhase::Retiring,
        ) => status.phase.unwrap_or(phase),
        _ => phase,
    };
    let unchanged = status.ready_replicas == Some(ready) && status.phase == Some(phase);
    (!unchanged).then_some((ready, phase))
}

/// The plan that drops the data of a deleted table's `shards`: one destructive step, not
/// before the deletion time (`not_before_ms`), so the same deletion always gives the same
/// plan and hash. The planner has no kind of its own for it yet: it is hashed as a
/// `Reshard` (the table's keys re-tiled by no shard) and shown with purpose `DropTable`.
pub fn drop_plan(table: &str, mut shards: Vec<String>, not_before_ms: u64) -> plan::Plan {
    shards.sort();
    let count = shards.len();
    let step = Step::new(
        StepAction::DropShards {
            shards,
            not_before_ms,
        },
        format!("table {table} was deleted; its {count} shard(s) and their rows go with it"),
    );
    let mut plan = plan::Plan {
        kind: PlanKind::Reshard,
        risk: step.risk,
        hash: String::new(),
        operations: vec![Operation {
            wave: 0,
            subject: table.to_owned(),
            steps: vec![step],
        }],
        blocked: Vec::new(),
    };
    plan.hash = plan.content_hash();
    plan
}

/// A deleted table's `Ready` condition while its drop plan (`plan_name`, `hash`) is in
/// `phase`: which plan and hash the drop waits for, and how to approve it.
pub fn drop_observation(
    table: &str,
    plan_name: &str,
    hash: &str,
    phase: Option<PlanPhase>,
) -> Observation<'static> {
    let (reason, message) = match phase {
        None | Some(PlanPhase::Pending | PlanPhase::AwaitingApproval) => (
            "AwaitingDropApproval",
            format!(
                "table deleted: its data is dropped once plan {plan_name}/{hash} is approved (annotate Table {table} with {APPROVE_ANNOTATION}={hash} or set the plan's spec.approval)"
            ),
        ),
        Some(PlanPhase::Running | PlanPhase::Succeeded) => (
            "DroppingData",
            format!("table deleted: plan {plan_name}/{hash} is dropping its shards"),
        ),
        Some(PlanPhase::Failed | PlanPhase::Superseded) => (
            "DropPlanStopped",
            format!("table deleted, but plan {plan_name}/{hash} stopped ({phase:?}); see the plan"),
        ),
    };
    Observation {
        type_: "Ready",
        holds: false,
        reason,
        message,
    }
}
