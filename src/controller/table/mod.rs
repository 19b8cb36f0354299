//! The Table reconciler. One reconcile: observe the table's Shards; report each shard's
//! readiness; keep the drop-after-approval finalizer, or, for a deleted table, its drop plan
//! (`drop.rs`); and write the table's status — the routing map (key range → shard → primary,
//! epoch, endpoint), in one write conditional on the resourceVersion read (`status.rs`, the
//! one writer of `Table.status.routing`; a split's switch asks it too).

mod drop;
mod status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use crate::api::{Shard, Table};

use super::caches::{Cache, Caches};
use super::context::{self, Context};
use super::error::ApiError;
use super::fence::NotLeader;

/// How soon a table is looked at again while it is quiet (every change wakes it anyway).
const QUIET_LOOK: Duration = Duration::from_secs(60);
/// How soon a table is looked at again when its cached shards proved stale.
const STALE_LOOK: Duration = Duration::from_secs(5);

pub use status::switch_routing;

/// Why a table reconcile failed; retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// This replica must not act.
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    /// The API server refused or failed a request (a 409: the table changed meanwhile).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A split's or merge's routing switch cannot be made.
    #[error("the routing switch cannot be made: {0}")]
    Switch(String),
    /// A drop plan could not be serialized.
    #[error("cannot encode the drop plan of table {table}: {source}")]
    Encode {
        /// The table.
        table: String,
        /// Why.
        source: serde_json::Error,
    },
}

/// What the table reconciles share: the operator's context, and a watch cache of the
/// Shards each Table's status is computed from (a LIST per reconcile — one per agent report —
/// made the API server filter every Shard of the namespace each time).
pub struct Tables {
    ctx: Arc<Context>,
    shards: Cache<Shard>,
}

/// Runs the reconciler while this replica leads.
pub async fn run(ctx: Arc<Context>, caches: Caches) {
    let tables = Arc::new(Tables {
        ctx: ctx.clone(),
        shards: caches.shards.clone(),
    });
    let controller = Controller::for_shared_stream(caches.tables.changes(), caches.tables.store())
        .with_config(context::per_table_controller());
    ctx.metrics.queue.track("Table", caches.tables.store());
    // A shard's change wakes its table once the Shard cache the reconcile reads holds it.
    controller
        .watches_shared_stream(caches.shards.changes(), |shard: Arc<Shard>| {
            let table = ObjectRef::<Table>::new(&shard.spec.table);
            Some(match shard.namespace() {
                Some(ns) => table.within(&ns),
                None => table,
            })
        })
        .run(reconcile, error_policy, tables)
        .for_each(|_| async {})
        .await;
}

fn error_policy(table: Arc<Table>, error: &TableError, tables: Arc<Tables>) -> Action {
    let ctx = &tables.ctx;
    let result = match error {
        TableError::NotLeader(_) => "not_leader",
        TableError::Api(_) => "api",
        TableError::Switch(_) => "switch",
        TableError::Encode { .. } => "encode",
    };
    ctx.retry("Table", table.as_ref(), result, error)
}

async fn reconcile(table: Arc<Table>, tables: Arc<Tables>) -> Result<Action, TableError> {
    let ctx = &tables.ctx;
    let started = Instant::now();
    ctx.reconcile_started("Table", table.as_ref());
    ctx.leader.ensure()?;

    // Observe (a Shard's change, seen by the cache, brings its table back here).
    let namespace = table.namespace().unwrap_or_default();
    let shards: Api<Shard> = Api::namespaced(ctx.client.clone(), &namespace);
    let shards_of_table = status::cached_shards_of(&tables.shards, &namespace, &table.name_any());

    // Act: each shard's readiness, then the finalizer or the deleted table's drop.
    let mut stale = false;
    for shard in &shards_of_table {
        stale |= status::report_readiness(ctx, &shards, shard).await?;
    }
    // A readiness write refused as stale (409): the cache's copy of a shard was older than
    // the API server's. The newer version's watch event brings the table back once the
    // cache holds it; the short look is a fallback, not the trigger.
    let (deletion, action) = if table.metadata.deletion_timestamp.is_some() {
        let (observation, gone) = drop::guard_deletion(ctx, &table, &shards_of_table).await?;
        if gone {
            ctx.metrics.reconciled("Table", "ok", started);
            return Ok(ctx.next("Table", table.as_ref(), None));
        }
        // The plan's approval is not watched here: look again shortly.
        (observation, Duration::from_secs(1))
    } else {
        drop::ensure_finalizer(ctx, &table).await?;
        let quiet = if stale { STALE_LOOK } else { QUIET_LOOK };
        (None, quiet)
    };

    // Status. Refused as stale (409: the schema rollout or a split's switch wrote the table
    // since the cached copy): the newer version's watch event brings the table back once the
    // cache holds it — a race, not a failure (no backoff, no warning).
    let action = match status::write(ctx, &table, &shards_of_table, &[], deletion).await {
        Err(TableError::Api(error)) if error.is_conflict() => action.min(STALE_LOOK),
        written => {
            written?;
            action
        }
    };
    ctx.metrics.reconciled("Table", "ok", started);
    ctx.reconciled("Table", table.as_ref());
    Ok(ctx.next("Table", table.as_ref(), Some(action)))
}

#[cfg(test)]
mod tests;
