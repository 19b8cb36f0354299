//! The table reconciler against a mock API server: each request it makes, in order.

use std::sync::Arc;

use serde_json::json;

use super::super::fixtures::{self, Expect};
use super::*;
use crate::api::Plan;
use crate::protocol::TABLE_FINALIZER;

const NS: &str = "db";

fn table(finalizer: bool, routing: serde_json::Value) -> Arc<Table> {
    let finalizers: Vec<&str> = if finalizer {
        vec![TABLE_FINALIZER]
    } else {
        vec![]
    };
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Table",
            "metadata": {"name": "orders", "namespace": NS, "resourceVersion": "5",
                         "generation": 1, "finalizers": finalizers},
            "spec": {"cluster": "main", "shardKey": "id",
                     "columns": [{"name": "id", "type": "bigint"}], "primaryKey": ["id"]},
            "status": {"schemaVersion": 3, "routing": routing},
        }))
        .unwrap(),
    )
}

/// Shard `name` over `[start, end)`, led by n1 at epoch 2 and reported serving there; its
/// readiness fields as given.
fn shard(name: &str, start: Option<i64>, end: Option<i64>, phase: Option<&str>) -> Shard {
    serde_json::from_value(json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": "7", "generation": 1},
        "spec": {"table": "orders", "range": {"start": start, "end": end}},
        "status": {
            "primary": {"node": "n1", "epoch": 2},
            "desiredReplicas": [{"node": "n1", "role": "Primary"}],
            "replicas": [{"node": "n1", "role": "Primary", "state": "InSync",
                          "endpoint": format!("10.0.0.1:{}", if start.is_none() { 1 } else { 2 }),
                          "lagBytes": 0, "epoch": 2}],
            "readyReplicas": 1,
            "phase": phase,
        },
    }))
    .unwrap()
}

/// A table reconciler against the mock API server, its shard cache holding `shards`.
fn tables(leading: bool, shards: &[Shard]) -> (Arc<Tables>, fixtures::ApiServer) {
    let (ctx, server) = fixtures::context(leading);
    let shards = Cache::holding(shards.to_vec());
    (Arc::new(Tables { ctx, shards }), server)
}

#[tokio::test]
async fn the_routing_map_is_written_once_conditional_on_the_version_read() {
    let shards = [
        shard("orders-0", None, Some(0), Some("Serving")),
        shard("orders-1", Some(0), None, Some("Serving")),
    ];
    let (ctx, server) = tables(true, &shards);
    let script = vec![
        Expect::patch_status::<Table>(NS, "orders")
            .field("/metadata/resourceVersion", "5")
            .field("/status/routing/version", 1)
            .field("/status/routing/ranges/0/shard", "orders-0")
            .field("/status/routing/ranges/0/endpoint", "10.0.0.1:1")
            .field("/status/routing/ranges/0/epoch", 2)
            .field("/status/routing/ranges/1/shard", "orders-1")
            .field("/status/shards", 2)
            .field("/status/conditions/0/reason", "Routable")
            // The schema rollout's field is not this writer's.
            .absent("/status/schemaVersion")
            .answer(table(true, json!(null)).as_ref()),
    ];
    let action = server
        .run(script, reconcile(table(true, json!(null)), ctx))
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
}

#[tokio::test]
async fn a_readiness_computed_from_a_stale_copy_is_refused_and_looked_at_again_soon() {
    // The shard was read as Provisioning-free and not yet Serving; meanwhile a split's switch
    // marked it Retiring. The write carries the version read, so the API server refuses it
    // (409) and the newer phase stands: the reconcile goes on without overwriting it, and
    // looks again soon (the change that woke it may have come before the cache had it).
    let stale = shard("orders-0", None, None, None);
    let (ctx, server) = tables(true, std::slice::from_ref(&stale));
    let script = vec![
        Expect::patch_status::<Shard>(NS, "orders-0")
            .field("/metadata/resourceVersion", "7")
            .field("/status/phase", "Serving")
            .field("/status/readyReplicas", 1)
            .fail(409, "Conflict"),
        Expect::patch_status::<Table>(NS, "orders")
            .field("/metadata/resourceVersion", "5")
            .field("/status/routing/ranges/0/shard", "orders-0")
            .answer(table(true, json!(null)).as_ref()),
    ];
    let action = server
        .run(script, reconcile(table(true, json!(null)), ctx))
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(STALE_LOOK));
}

#[tokio::test]
async fn a_status_write_that_meets_a_newer_table_is_a_race_looked_at_again_not_a_failure() {
    // The schema rollout wrote the table since the cached copy: the routing map's write is
    // refused (409); the reconcile succeeds and looks again soon (the newer version's watch
    // event brings it back before that), with no backoff.
    let shards = [shard("orders-0", None, None, Some("Serving"))];
    let (ctx, server) = tables(true, &shards);
    let script = vec![
        Expect::patch_status::<Table>(NS, "orders")
            .field("/metadata/resourceVersion", "5")
            .fail(409, "Conflict"),
    ];
    let action = server
        .run(script, reconcile(table(true, json!(null)), ctx))
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(STALE_LOOK));
}

#[tokio::test]
async fn a_new_table_gets_its_finalizer_and_an_unchanged_map_is_not_rewritten() {
    let shards = [shard("orders-0", None, None, Some("Serving"))];
    let routed = table(true, json!(null));
    let written = crate::decide::table::status(
        &routed,
        &shards,
        &[],
        None,
        k8s_openapi::jiff::Timestamp::now(),
    )
    .unwrap();
    let mut current = (*table(false, json!(null))).clone();
    current.status = Some(written);
    let (ctx, server) = tables(true, &shards);
    let script = vec![
        Expect::patch::<Table>(NS, "orders")
            .field("/metadata/resourceVersion", "5")
            .field("/metadata/finalizers", [TABLE_FINALIZER])
            .answer(&current),
    ];
    server
        .run(script, reconcile(Arc::new(current.clone()), ctx))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_deleted_table_waits_for_its_drop_plan_to_be_approved() {
    let mut deleted = (*table(true, json!(null))).clone();
    deleted.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap(),
        ));
    let shards = [shard("orders-0", None, None, Some("Serving"))];
    let planned = crate::decide::table::drop_plan("orders", vec!["orders-0".into()], 1_000_000);
    let plan_name = crate::decide::plan_wire::plan_name(
        "main",
        crate::api::plan::PlanPurpose::DropTable,
        &planned.hash,
    );
    let (ctx, server) = tables(true, &shards);
    let script = vec![
        Expect::get::<Plan>(NS, &plan_name).not_found(),
        Expect::create::<Plan>(NS)
            .field("/metadata/name", &plan_name)
            .field("/spec/purpose", "DropTable")
            .field("/spec/risk", "Destructive")
            .field("/spec/steps/0/action", "DropShards")
            .field("/metadata/labels/shardplane.io~1purpose", "DropTable"),
        Expect::event(NS, "PlanCreated"),
        Expect::patch_status::<Table>(NS, "orders")
            .field("/status/conditions/0/reason", "AwaitingDropApproval")
            .answer(&deleted),
    ];
    let action = server
        .run(script, reconcile(Arc::new(deleted.clone()), ctx))
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
}

#[tokio::test]
async fn a_replica_that_does_not_lead_writes_nothing() {
    let (ctx, server) = tables(false, &[]);
    let result = server
        .run(Vec::new(), reconcile(table(true, json!(null)), ctx))
        .await;
    assert!(
        matches!(result, Err(TableError::NotLeader(_))),
        "{result:?}"
    );
}
