//! A table's deletion: the finalizer that keeps a deleted Table until an approved plan has
//! dropped its shards, and that plan (`decide::table::drop_plan`).

use kube::api::PostParams;
use kube::{Api, ResourceExt};

use crate::api::Table;
use crate::api::plan::{PlanPurpose, PlanTarget, TargetKind};
use crate::api::{Plan, Shard};
use crate::decide::conditions::Observation;
use crate::decide::plan_wire::{self, PlanContext, change_cause};
use crate::decide::table::{drop_observation, drop_plan};
use crate::protocol::TABLE_FINALIZER;

use super::super::context::Context;
use super::super::error::{ApiError, Doing};
use super::TableError;

/// Puts the drop-after-approval finalizer on a live table.
pub async fn ensure_finalizer(ctx: &Context, table: &Table) -> Result<(), TableError> {
    if table.finalizers().iter().any(|f| f == TABLE_FINALIZER) {
        return Ok(());
    }
    let mut finalizers = table.finalizers().to_vec();
    finalizers.push(TABLE_FINALIZER.to_string());
    ctx.set_finalizers(table, finalizers).await
}

/// A deleted table: once its shards are gone, lift the finalizer (`true`: the table goes);
/// until then make sure a drop plan exists and say, in the returned condition, which plan
/// and hash the drop waits for.
pub async fn guard_deletion(
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
    let existing = plans
        .get_opt(&plan_name)
        .await
        .doing(|| format!("read Plan {namespace}/{plan_name}"))?;
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
            let mut spec =
                plan_wire::to_spec(&planned, context).map_err(|source| TableError::Encode {
                    table: name.clone(),
                    source,
                })?;
            spec.purpose = PlanPurpose::DropTable;
            let object = plan_wire::plan_object(&plan_name, &namespace, spec);
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
                Err(source) => {
                    let action = format!("create Plan {namespace}/{plan_name}");
                    return Err(ApiError { action, source }.into());
                }
            }
        }
    };
    let phase = plan.status.as_ref().and_then(|s| s.phase);
    let observation = drop_observation(&name, &plan_name, &planned.hash, phase);
    Ok((Some(observation), false))
}
