//! The Table reconciler: from the table's Shards it derives the authoritative routing map
//! (key range → shard → primary, epoch, endpoint) and writes it to `Table.status` in one
//! write conditional on the resourceVersion it read — one object, one atomic switch. It
//! also reports each shard's readiness (in-sync replicas, phase) and refuses, in the Table's
//! `Ready` condition, a set of shards that does not tile the key space.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::api::plan::{PlanPhase, PlanPurpose, PlanTarget, TargetKind};
use crate::api::shard::{ReplicaRole, ReplicaState, ShardPhase};
use crate::api::table::{RouteEntry, RoutingMap, TableStatus};
use crate::api::{Plan, Shard, Table};
use crate::plan::{self, KeyRange, Operation, PlanKind, Step, StepAction, check_tiling};
use crate::protocol::{
    APPROVE_ANNOTATION, CLUSTER_LABEL, PURPOSE_LABEL, SHARD_STATUS_MANAGER, TABLE_FINALIZER,
};

use super::cluster::change_cause;
use super::conditions::{self, Observation};
use super::context::Context;
use super::leader::NotLeader;
use super::observe::observed_on;
use super::plan_wire::{self, PlanContext};

/// Why a table reconcile failed; retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// This replica must not act.
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    /// The API server refused or failed a request (a 409: the table changed meanwhile).
    #[error("API request failed: {0}")]
    Api(#[from] kube::Error),
    /// A drop plan could not be serialized.
    #[error("cannot encode the drop plan: {0}")]
    Encode(String),
}

/// Runs the reconciler while this replica leads.
pub async fn run(ctx: Arc<Context>) {
    let controller = Controller::new(ctx.watched::<Table>(), watcher::Config::default());
    ctx.metrics.queue.track("Table", controller.store());
    controller
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
        TableError::Encode(_) => "encode",
    };
    ctx.retry("Table", table.as_ref(), result, error)
}

async fn reconcile(table: Arc<Table>, ctx: Arc<Context>) -> Result<Action, TableError> {
    let started = Instant::now();
    ctx.reconcile_started("Table", table.as_ref());
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
    let (deletion, action) = if table.metadata.deletion_timestamp.is_some() {
        let (observation, gone) = guard_deletion(&ctx, &table, &shards_of_table).await?;
        if gone {
            ctx.metrics.reconciled("Table", "ok", started);
            return Ok(ctx.next("Table", table.as_ref(), None));
        }
        // The plan's approval is not watched here: look again shortly.
        (observation, Duration::from_secs(1))
    } else {
        ensure_finalizer(&ctx, &table).await?;
        (None, Duration::from_secs(60))
    };
    write_routing(&ctx, &table, &shards_of_table, deletion).await?;
    ctx.metrics.reconciled("Table", "ok", started);
    ctx.reconciled("Table", table.as_ref());
    Ok(ctx.next("Table", table.as_ref(), Some(action)))
}

async fn ensure_finalizer(ctx: &Context, table: &Table) -> Result<(), TableError> {
    if table.finalizers().iter().any(|f| f == TABLE_FINALIZER) {
        return Ok(());
    }
    let mut finalizers = table.finalizers().to_vec();
    finalizers.push(TABLE_FINALIZER.to_string());
    ctx.set_finalizers(table, finalizers).await
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

/// A deleted table: once its shards are gone, lift the finalizer (`true`: the table goes);
/// until then make sure a drop plan exists and say, in the returned condition, which plan
/// and hash the drop waits for.
async fn guard_deletion(
    ctx: &Context,
    table: &Table,
    shards: &[Shard],
) -> Result<(Option<Observation<'static>>, bool), TableError> {
    let name = table.name_any();
    if !table.finalizers().iter().any(|f| f == TABLE_FINALIZER) {
        return Ok((None, false));
    }
    if shards.is_empty() {
        let finalizers = table
            .finalizers()
            .iter()
            .filter(|f| *f != TABLE_FINALIZER)
            .cloned()
            .collect();
        ctx.set_finalizers::<_, TableError>(table, finalizers)
            .await?;
        ctx.event(
            table,
            false,
            "TableDropped",
            format!("table {name} holds no shard any more; it goes"),
        )
        .await;
        return Ok((None, true));
    }
    let namespace = table.namespace().unwrap_or_default();
    let plans: Api<Plan> = Api::namespaced(ctx.client.clone(), &namespace);
    let deleted_ms = table
        .metadata
        .deletion_timestamp
        .as_ref()
        .map_or(0, |t| u64::try_from(t.0.as_millisecond()).unwrap_or(0));
    let planned = drop_plan(
        &name,
        shards.iter().map(ResourceExt::name_any).collect(),
        deleted_ms,
    );
    let plan_name =
        plan_wire::plan_name(&table.spec.cluster, PlanPurpose::DropTable, &planned.hash);
    let existing = plans.get_opt(&plan_name).await?;
    let plan = match existing {
        Some(plan) => plan,
        None => {
            let context = PlanContext {
                cluster: table.spec.cluster.clone(),
                target: PlanTarget {
                    kind: TargetKind::Table,
                    name: name.clone(),
                },
                cause: change_cause(table, format!("table {name} was deleted")),
                summary: format!(
                    "drop the data of deleted table {name}: {} shard(s)",
                    shards.len()
                ),
                facts: Default::default(),
            };
            let mut spec = plan_wire::to_spec(&planned, context)
                .map_err(|e| TableError::Encode(e.to_string()))?;
            spec.purpose = PlanPurpose::DropTable;
            let mut object = Plan::new(&plan_name, spec);
            object.metadata.namespace = Some(namespace.clone());
            object.metadata.labels = Some(
                [
                    (CLUSTER_LABEL.to_string(), table.spec.cluster.clone()),
                    (PURPOSE_LABEL.to_string(), "DropTable".to_string()),
                ]
                .into(),
            );
            ctx.leader.ensure()?;
            match plans.create(&PostParams::default(), &object).await {
                Ok(created) => {
                    ctx.event(
                        table,
                        false,
                        "PlanCreated",
                        format!(
                            "plan {plan_name} (DropTable, Destructive, hash {}): its shards' data is dropped once it is approved",
                            planned.hash
                        ),
                    )
                    .await;
                    created
                }
                Err(kube::Error::Api(e)) if e.code == 409 => return Ok((None, false)),
                Err(e) => return Err(e.into()),
            }
        }
    };
    let phase = plan.status.as_ref().and_then(|s| s.phase);
    let (reason, message) = match phase {
        None | Some(PlanPhase::Pending | PlanPhase::AwaitingApproval) => (
            "AwaitingDropApproval",
            format!(
                "table deleted: its data is dropped once plan {plan_name}/{} is approved (annotate Table {name} with {APPROVE_ANNOTATION}={} or set the plan's spec.approval)",
                planned.hash, planned.hash
            ),
        ),
        Some(PlanPhase::Running | PlanPhase::Succeeded) => (
            "DroppingData",
            format!(
                "table deleted: plan {plan_name}/{} is dropping its shards",
                planned.hash
            ),
        ),
        Some(PlanPhase::Failed | PlanPhase::Superseded) => (
            "DropPlanStopped",
            format!(
                "table deleted, but plan {plan_name}/{} stopped ({phase:?}); see the plan",
                planned.hash
            ),
        ),
    };
    Ok((
        Some(Observation {
            type_: "Ready",
            holds: false,
            reason,
            message,
        }),
        false,
    ))
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
    // Conditional on the version read: a phase computed from a cached shard must not
    // overwrite a newer one (a split's switch marks its source Retiring meanwhile).
    let patch = json!({
        "apiVersion": "shardplane.io/v1alpha1",
        "kind": "Shard",
        "metadata": {"name": shard.name_any(), "resourceVersion": shard.resource_version()},
        "status": {"readyReplicas": ready, "phase": phase, "observedGeneration": shard.meta().generation},
    });
    let params = PatchParams::apply(SHARD_STATUS_MANAGER).force();
    match shards
        .patch_status(&shard.name_any(), &params, &Patch::Apply(patch))
        .await
    {
        // The shard changed since it was read: its change brings this reconciler back.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
        Ok(_) => Ok(()),
    }
}

/// The routing map the shards describe, ordered by start; retiring shards are left out, and
/// so is a shard whose range overlaps a shard the map already routes (`routed`): the target
/// of a declared split or merge enters the map only by the plan's switch, which replaces
/// its sources in one write (src/controller/reshard.rs).
fn routing_entries(shards: &[Shard], routed: &[RouteEntry]) -> Vec<RouteEntry> {
    let serving: Vec<&Shard> = shards
        .iter()
        .filter(|s| s.status.as_ref().and_then(|st| st.phase) != Some(ShardPhase::Retiring))
        .collect();
    let routed_ranges: Vec<KeyRange> = serving
        .iter()
        .filter(|s| routed.iter().any(|e| e.shard == s.name_any()))
        .filter_map(|s| KeyRange::from_wire(s.spec.range.start, s.spec.range.end).ok())
        .collect();
    let mut entries: Vec<RouteEntry> = serving
        .into_iter()
        .filter(|s| {
            routed.iter().any(|e| e.shard == s.name_any())
                || KeyRange::from_wire(s.spec.range.start, s.spec.range.end).is_ok_and(|r| {
                    !routed_ranges
                        .iter()
                        .any(|o| o.start() < r.end() && r.start() < o.end())
                })
        })
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

/// Writes the routing map and the `Ready` condition; `deletion` (a deleted table's state)
/// takes the place of the routing's own readiness.
async fn write_routing(
    ctx: &Context,
    table: &Table,
    shards: &[Shard],
    deletion: Option<Observation<'_>>,
) -> Result<(), TableError> {
    let generation = table.meta().generation;
    let old = table.status.clone().unwrap_or_default();
    let entries = routing_entries(
        shards,
        old.routing
            .as_ref()
            .map_or(&[][..], |routing| routing.ranges.as_slice()),
    );
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
    let observation = deletion.unwrap_or(Observation {
        type_: "Ready",
        holds: ready,
        reason,
        message,
    });
    conditions::set(&mut status.conditions, generation, observation);
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
