//! The one writer of `Table.status` — above all its routing map — and of each shard's
//! readiness fields. The table reconciler writes the status the table's Shards describe; a
//! split's or merge's switch asks for the same status with its sources retired
//! ([`switch_routing`]). Both compute it with `decide::table::status`, both write it in one
//! patch conditional on the resourceVersion read.

use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::api::{Shard, Table};
use crate::decide::conditions::Observation;
use crate::decide::table::{shard_readiness, status};
use crate::protocol::SHARD_STATUS_MANAGER;

use super::super::caches::Cache;
use super::super::context::Context;
use super::super::error::{ApiError, Doing};
use super::TableError;

/// How often the routing switch re-reads the Table when another writer got there first.
const SWITCH_ATTEMPTS: usize = 5;

/// The Shards of `table` in `namespace` as the watch cache `cached` holds them, by name.
pub fn cached_shards_of(cached: &Cache<Shard>, namespace: &str, table: &str) -> Vec<Shard> {
    let mut shards: Vec<Shard> = cached
        .state()
        .into_iter()
        .filter(|s| s.spec.table == table && s.namespace().as_deref() == Some(namespace))
        .map(|s| (*s).clone())
        .collect();
    shards.sort_by_key(|s| s.name_any());
    shards
}

/// The Shards of `table`, read from the API server now.
pub async fn shards_of(shards: &Api<Shard>, table: &str) -> Result<Vec<Shard>, ApiError> {
    let selector = format!("spec.table={table}");
    Ok(shards
        .list(&ListParams::default().fields(&selector))
        .await
        .doing(|| format!("list the Shards of table {table}"))?
        .items)
}

/// Writes the shard's ready-replica count and phase where they changed. Returns whether
/// the shard read was stale (the write met a newer version).
pub async fn report_readiness(
    ctx: &Context,
    shards: &Api<Shard>,
    shard: &Shard,
) -> Result<bool, TableError> {
    let Some((ready, phase)) = shard_readiness(shard) else {
        return Ok(false);
    };
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
        // The shard changed since it was read: the cache lags; the caller looks again soon.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(true),
        Err(source) => {
            let action = format!("write the readiness of Shard {}", shard.name_any());
            Err(ApiError { action, source }.into())
        }
        Ok(_) => Ok(false),
    }
}

/// Writes the status `table`'s `shards` describe, with `retire` no longer routed, where it
/// changed; `deletion` takes the place of the routing's readiness. Returns the table as
/// written (or as read, when nothing changed).
pub async fn write(
    ctx: &Context,
    table: &Table,
    shards: &[Shard],
    retire: &[String],
    deletion: Option<Observation<'_>>,
) -> Result<Option<Table>, TableError> {
    let Some(status) = status(table, shards, retire, deletion, Timestamp::now()) else {
        return Ok(None);
    };
    ctx.leader.ensure()?;
    let tables: Api<Table> =
        Api::namespaced(ctx.client.clone(), &table.namespace().unwrap_or_default());
    // One write, conditional on the version read: a concurrent write makes this one fail
    // and the writer retry on fresh state. `schemaVersion` is the schema rollout's field.
    let mut status = json!(status);
    if let Some(fields) = status.as_object_mut() {
        fields.remove("schemaVersion");
    }
    let patch =
        json!({"metadata": {"resourceVersion": table.resource_version()}, "status": status});
    let written = tables
        .patch_status(
            &table.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
        .doing(|| format!("write the routing map of Table {}", table.name_any()))?;
    tracing::debug!(
        table = %table.name_any(),
        namespace = %table.namespace().unwrap_or_default(),
        version = status.pointer("/routing/version").map(tracing::field::display),
        "table status written"
    );
    Ok(Some(written))
}

/// A split's or merge's routing switch: the map of `table` with `retire` replaced by the
/// shards that cover their keys (`serve`, each of which must have a primary), in one write.
/// Idempotent: a map already switched is left as it is. Returns the table as it now is.
pub async fn switch_routing(
    ctx: &Context,
    namespace: &str,
    table: &str,
    retire: &[String],
    serve: &[String],
) -> Result<Table, TableError> {
    let tables: Api<Table> = Api::namespaced(ctx.client.clone(), namespace);
    let shards: Api<Shard> = Api::namespaced(ctx.client.clone(), namespace);
    let mut attempt = 0;
    loop {
        attempt += 1;
        // Read together: the sources are fenced until the map's write.
        let (current, shards_of_table) = tokio::try_join!(
            async {
                tables
                    .get_opt(table)
                    .await
                    .doing(|| format!("read Table {namespace}/{table}"))
            },
            shards_of(&shards, table)
        )?;
        let Some(current) = current else {
            return Err(TableError::Switch(format!(
                "table {table} no longer exists"
            )));
        };
        for name in serve {
            let shard = shards_of_table.iter().find(|s| &s.name_any() == name);
            match shard.and_then(|s| s.status.as_ref()?.primary.as_ref()) {
                Some(_) => {}
                None if shard.is_none() => {
                    return Err(TableError::Switch(format!("shard {name} no longer exists")));
                }
                None => return Err(TableError::Switch(format!("{name} has no primary"))),
            }
        }
        match write(ctx, &current, &shards_of_table, retire, None).await {
            Ok(written) => return Ok(written.unwrap_or(current)),
            Err(TableError::Api(error)) if error.is_conflict() && attempt < SWITCH_ATTEMPTS => {}
            Err(error) => return Err(error),
        }
    }
}
