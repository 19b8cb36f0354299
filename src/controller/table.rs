//! The Table reconciler: from the table's Shards it derives the authoritative routing map
//! (key range → shard → primary, epoch, endpoint) and writes it to `Table.status` in one
//! write conditional on the resourceVersion it read — one object, one atomic switch. It
//! also reports each shard's readiness (in-sync replicas, phase) and refuses, in the Table's
//! `Ready` condition, a set of shards that does not tile the key space.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::api::shard::{ReplicaRole, ReplicaState, ShardPhase};
use crate::api::table::{RouteEntry, RoutingMap, TableStatus};
use crate::api::{Shard, Table};
use crate::plan::{KeyRange, check_tiling};

use super::conditions::{self, Observation};
use super::context::Context;
use super::leader::NotLeader;
use super::observe::observed_on;

/// The field manager of the shard readiness fields.
pub const SHARD_STATUS_MANAGER: &str = "shardplane-operator/shard-status";

/// Why a table reconcile failed; retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// This replica must not act.
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    /// The API server refused or failed a request (a 409: the table changed meanwhile).
    #[error("API request failed: {0}")]
    Api(#[from] kube::Error),
}

/// Runs the reconciler while this replica leads.
pub async fn run(ctx: Arc<Context>) {
    Controller::new(ctx.watched::<Table>(), watcher::Config::default())
        .watches(
            ctx.watched::<Shard>(),
            watcher::Config::default(),
            |shard: Shard| {
                let table = ObjectRef::<Table>::new(&shard.spec.table);
                Some(match shard.namespace() {
                    Some(ns) => table.within(&ns),
                    None => table,
                })
            },
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(table: Arc<Table>, error: &TableError, ctx: Arc<Context>) -> Action {
    let result = match error {
        TableError::NotLeader(_) => "not_leader",
        TableError::Api(_) => "api",
    };
    ctx.retry("Table", table.as_ref(), result, error)
}

async fn reconcile(table: Arc<Table>, ctx: Arc<Context>) -> Result<Action, TableError> {
    let started = Instant::now();
    ctx.leader.ensure()?;
    let namespace = table.namespace().unwrap_or_default();
    let shards: Api<Shard> = Api::namespaced(ctx.client.clone(), &namespace);
    let selector = format!("spec.table={}", table.name_any());
    let shards_of_table = shards
        .list(&ListParams::default().fields(&selector))
        .await?
        .items;
    for shard in &shards_of_table {
        report_readiness(&ctx, &shards, shard).await?;
    }
    write_routing(&ctx, &table, &shards_of_table).await?;
    ctx.metrics.reconciled("Table", "ok", started);
    ctx.reconciled("Table", table.as_ref());
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// Writes the shard's ready-replica count and phase where they changed.
async fn report_readiness(
    ctx: &Context,
    shards: &Api<Shard>,
    shard: &Shard,
) -> Result<(), TableError> {
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
    if status.ready_replicas == Some(ready) && status.phase == Some(phase) {
        return Ok(());
    }
    ctx.leader.ensure()?;
    let patch = json!({
        "apiVersion": "shardplane.io/v1alpha1",
        "kind": "Shard",
        "metadata": {"name": shard.name_any()},
        "status": {"readyReplicas": ready, "phase": phase, "observedGeneration": shard.meta().generation},
    });
    let params = PatchParams::apply(SHARD_STATUS_MANAGER).force();
    shards
        .patch_status(&shard.name_any(), &params, &Patch::Apply(patch))
        .await?;
    Ok(())
}

/// The routing map the shards describe, ordered by start; retiring shards are left out.
fn routing_entries(shards: &[Shard]) -> Vec<RouteEntry> {
    let mut entries: Vec<RouteEntry> = shards
        .iter()
        .filter(|s| s.status.as_ref().and_then(|st| st.phase) != Some(ShardPhase::Retiring))
        .map(|shard| {
            let status = shard.status.clone().unwrap_or_default();
            let primary = status.primary.clone();
            let endpoint = primary
                .as_ref()
                .and_then(|p| observed_on(&status.replicas, &p.node))
                .and_then(|o| o.endpoint.clone());
            RouteEntry {
                start: shard.spec.range.start,
                end: shard.spec.range.end,
                shard: shard.name_any(),
                primary: primary.as_ref().map(|p| p.node.clone()),
                endpoint,
                epoch: primary.map_or(0, |p| p.epoch),
            }
        })
        .collect();
    entries.sort_by_key(|e| (e.start.map_or(i128::MIN, i128::from), e.shard.clone()));
    entries
}

async fn write_routing(ctx: &Context, table: &Table, shards: &[Shard]) -> Result<(), TableError> {
    let generation = table.meta().generation;
    let old = table.status.clone().unwrap_or_default();
    let entries = routing_entries(shards);
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

    let old_routing = old.routing.clone().unwrap_or_default();
    let routing = if old_routing.ranges == entries {
        old_routing
    } else {
        RoutingMap {
            version: old_routing.version + 1,
            ranges: entries,
        }
    };
    let mut status = TableStatus {
        observed_generation: generation,
        conditions: old.conditions.clone(),
        schema_version: old.schema_version,
        shards: Some(shards.len() as i32),
        routing: Some(routing),
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
    conditions::set(
        &mut status.conditions,
        generation,
        Observation {
            type_: "Ready",
            holds: ready,
            reason,
            message,
        },
    );
    let unchanged = conditions::same(&status.conditions, &old.conditions)
        && TableStatus {
            conditions: Vec::new(),
            ..status.clone()
        } == TableStatus {
            conditions: Vec::new(),
            ..old
        };
    if unchanged {
        return Ok(());
    }
    ctx.leader.ensure()?;
    let tables: Api<Table> =
        Api::namespaced(ctx.client.clone(), &table.namespace().unwrap_or_default());
    // One write, conditional on the version read: a concurrent switch makes this one fail
    // and the reconcile retry on fresh state.
    let patch =
        json!({"metadata": {"resourceVersion": table.resource_version()}, "status": status});
    tables
        .patch_status(
            &table.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    Ok(())
}
