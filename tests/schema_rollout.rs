//! Rolling schema changes on the real data plane: three `shardplane agent` processes, the
//! operator, a real API server and real PostgreSQL, a table of 8 shards × RF 3 under a write
//! workload through the routing library. An added column, an added index and a widened
//! varchar each roll out canary first, wave by wave, and are verified in the catalog of every
//! replica with no write failing; a destructive drop waits for its plan's approval (by
//! annotation) and then removes the column everywhere; a conflicting lock held on one shard's
//! primary past the lock timeout stops a rollout, rolls the already-changed shards back, and
//! the Table's condition names the shard, the node and the error.
//!
//! The first change's duration is printed as `schema_rollout_s_3_nodes` (BENCHMARKS.md).

#[path = "agent/harness.rs"]
mod harness;
mod support;

use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use shardplane::api::schema_version::RolloutPhase;
use shardplane::api::{Plan, SchemaVersion, Shard, Table};
use shardplane::workload::{Workload, WorkloadConfig};
use support::eventually;

use harness::{
    DataPlane, TABLE, connect, declare_schema, relax_failure_detection, schema_version_status,
    table_router, wait_schema_version,
};

const SHARDS: usize = 8;

fn columns(extra: Value) -> Value {
    let mut columns = vec![
        json!({"name": "id", "type": "bigint", "nullable": false}),
        json!({"name": "note", "type": "text"}),
    ];
    columns.extend(extra.as_array().cloned().unwrap_or_default());
    Value::Array(columns)
}

async fn table_version(tables: &Api<Table>) -> Option<i64> {
    tables.get(TABLE).await.ok()?.status?.schema_version
}

/// Waits until the table's version `version` is rolled out; returns how long it took.
async fn wait_version(plane: &DataPlane, version: i64) -> Duration {
    match wait_schema_version(plane, version, Duration::from_secs(120)).await {
        Some(took) => took,
        None => {
            let versions: Api<SchemaVersion> =
                Api::namespaced(plane.client.clone(), &plane.namespace);
            for v in versions.list(&Default::default()).await.unwrap() {
                eprintln!("{}: {:?}", v.name_any(), v.status);
            }
            plane.print_logs();
            panic!("version {version} was not rolled out within 120 s");
        }
    }
}

/// Every replica's endpoint, with its shard and node.
async fn replicas(plane: &DataPlane) -> Vec<(String, String, String)> {
    let mut all = Vec::new();
    for shard in plane.shard_list().await {
        for replica in shard.status.clone().unwrap_or_default().replicas {
            let endpoint = replica
                .endpoint
                .clone()
                .expect("a serving replica has an endpoint");
            all.push((shard.name_any(), replica.node.clone(), endpoint));
        }
    }
    assert_eq!(all.len(), SHARDS * 3);
    all
}

/// The table's columns (name → `information_schema` data type with length) and index names on
/// the instance at `endpoint`.
async fn catalog(endpoint: &str) -> (Vec<(String, String)>, Vec<String>) {
    let client = connect(endpoint).await.unwrap();
    let columns = client
        .query(
            "SELECT column_name::text, data_type::text || coalesce('(' || character_maximum_length || ')', '') \
             FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
            &[&TABLE],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let indexes = client
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE tablename = $1 ORDER BY 1",
            &[&TABLE],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    (columns, indexes)
}

/// Asserts that column `name` has `type_` (`None`: does not exist) on every replica.
async fn assert_column(plane: &DataPlane, name: &str, type_: Option<&str>) {
    for (shard, node, endpoint) in replicas(plane).await {
        let (cols, _) = catalog(&endpoint).await;
        assert_eq!(
            column(&cols, name),
            type_,
            "column {name} on {shard}, node {node}: {cols:?}"
        );
    }
}

fn column<'a>(columns: &'a [(String, String)], name: &str) -> Option<&'a str> {
    columns
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schema_changes_roll_out_in_waves_wait_for_approval_and_roll_back_on_failure() {
    let env = support::env_with_crds().await;
    let plane = DataPlane::start(
        env.client.clone(),
        &env.namespace,
        env.control_plane.kubeconfig_path(),
        SHARDS,
    )
    .await;
    plane.wait_serving(SHARDS, Duration::from_secs(180)).await;
    // This test is about schema changes, not failover.
    relax_failure_detection(&plane).await;
    let tables: Api<Table> = env.api();
    let versions: Api<SchemaVersion> = env.api();
    let plans: Api<Plan> = env.api();
    wait_version(&plane, 1).await;

    let router = table_router(&plane).await;
    let workload = Workload::start(router, &WorkloadConfig::new(TABLE, "id", 4, 200.0)).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. Add columns (online): the benchmarked change.
    let added = json!([
        {"name": "code", "type": "varchar(20)"},
        {"name": "legacy", "type": "text"}
    ]);
    declare_schema(&plane, columns(added.clone()), json!([])).await;
    let took = wait_version(&plane, 2).await;
    eprintln!(
        "schema_rollout_s_3_nodes={:.2} (add 2 columns, {SHARDS} shards x RF 3)",
        took.as_secs_f64()
    );
    let v2 = versions.get(&format!("{TABLE}-v2")).await.unwrap();
    let status = v2.status.clone().unwrap();
    assert_eq!(status.phase, Some(RolloutPhase::Complete));
    assert_eq!(status.shards.len(), SHARDS);
    assert!(
        status.shards.iter().all(|s| s.state == "Verified"),
        "{status:?}"
    );
    let canaries: Vec<_> = status.shards.iter().filter(|s| s.wave == 0).collect();
    assert_eq!(canaries.len(), 1, "one canary shard: {:?}", status.shards);
    assert!(
        status.shards.iter().any(|s| s.wave == 3),
        "waves grow 1, 2, 4, 1"
    );
    let plan = plans.get(status.plan.as_deref().unwrap()).await.unwrap();
    assert_eq!(plan.spec.steps.len(), SHARDS);
    let ran = plan.status.clone().unwrap();
    eprintln!(
        "v2: created {:?}, plan started {:?}, finished {:?}",
        v2.metadata.creation_timestamp, ran.started_at, ran.finished_at
    );

    // 2. Add an index (CREATE INDEX CONCURRENTLY, outside a transaction).
    let by_code = json!([{"name": "by_code", "columns": ["code"]}]);
    declare_schema(&plane, columns(added.clone()), by_code.clone()).await;
    let index_took = wait_version(&plane, 3).await;

    // 3. Widen a varchar (catalog-only ALTER TYPE).
    let widened = json!([
        {"name": "code", "type": "varchar(40)"},
        {"name": "legacy", "type": "text"}
    ]);
    declare_schema(&plane, columns(widened.clone()), by_code.clone()).await;
    let widen_took = wait_version(&plane, 4).await;
    eprintln!(
        "add index {:.2} s, widen varchar {:.2} s",
        index_took.as_secs_f64(),
        widen_took.as_secs_f64()
    );

    for (shard, node, endpoint) in replicas(&plane).await {
        let (cols, indexes) = catalog(&endpoint).await;
        assert_eq!(
            column(&cols, "code"),
            Some("character varying(40)"),
            "{shard} on {node}: {cols:?}"
        );
        assert_eq!(column(&cols, "legacy"), Some("text"), "{shard} on {node}");
        assert!(
            indexes.iter().any(|i| i == "by_code"),
            "{shard} on {node}: {indexes:?}"
        );
    }

    let report = workload.stop().await;
    eprintln!(
        "schema_rollout_failed_writes={} (acked {}, retries {}, slowest write {:?})",
        report.failed.len(),
        report.acked.len(),
        report.retries,
        report.slowest_write
    );
    assert!(
        report.failed.is_empty(),
        "writes failed during the rollouts: {:?} (first error {:?})",
        report.failed,
        report.first_error
    );
    assert!(
        report.acked.len() > 100,
        "the workload wrote: {}",
        report.acked.len()
    );

    // 4. A destructive drop: deprecate first, then remove; it waits for approval.
    let deprecated = json!([
        {"name": "code", "type": "varchar(40)"},
        {"name": "legacy", "type": "text", "deprecated": true}
    ]);
    declare_schema(&plane, columns(deprecated), by_code.clone()).await;
    wait_version(&plane, 5).await;
    let dropped = json!([{"name": "code", "type": "varchar(40)"}]);
    declare_schema(&plane, columns(dropped.clone()), by_code.clone()).await;
    let v6 = format!("{TABLE}-v6");
    assert!(
        eventually(Duration::from_secs(30), || async {
            schema_version_status(&plane, 6)
                .await
                .and_then(|s| s.plan)
                .is_some()
        })
        .await,
        "the drop got a plan"
    );
    let plan_name = versions
        .get(&v6)
        .await
        .unwrap()
        .status
        .unwrap()
        .plan
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = plans.get(&plan_name).await.unwrap();
    assert_eq!(
        waiting.status.as_ref().and_then(|s| s.phase),
        Some(shardplane::api::plan::PlanPhase::AwaitingApproval),
        "a destructive rollout waits for approval"
    );
    assert_eq!(
        versions.get(&v6).await.unwrap().status.unwrap().phase,
        Some(RolloutPhase::Pending)
    );
    assert_eq!(table_version(&tables).await, Some(5));
    // Not dropped before approval.
    assert_column(&plane, "legacy", Some("text")).await;
    versions
        .patch(
            &v6,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "shardplane.io/approve-plan": waiting.spec.hash
            }}})),
        )
        .await
        .unwrap();
    wait_version(&plane, 6).await;
    assert_column(&plane, "legacy", None).await;
    assert_column(&plane, "code", Some("character varying(40)")).await;

    // 5. A conflicting lock on the last wave's shard, held past the lock timeout.
    let shards: Api<Shard> = env.api();
    let victim = format!("{TABLE}-{}", SHARDS - 1);
    let victim_shard = shards.get(&victim).await.unwrap();
    let victim_status = victim_shard.status.clone().unwrap();
    let victim_node = victim_status.primary.clone().unwrap().node;
    let victim_endpoint = victim_status
        .replicas
        .iter()
        .find(|r| r.node == victim_node)
        .and_then(|r| r.endpoint.clone())
        .unwrap();
    let locker = connect(&victim_endpoint).await.unwrap();
    locker
        .batch_execute(&format!("BEGIN; LOCK TABLE {TABLE} IN ACCESS SHARE MODE"))
        .await
        .unwrap();
    let mut failing = columns(dropped.clone());
    failing
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "extra", "type": "text"}));
    declare_schema(&plane, failing, by_code.clone()).await;
    let v7 = format!("{TABLE}-v7");
    let rolled_back = eventually(Duration::from_secs(120), || async {
        schema_version_status(&plane, 7).await.and_then(|s| s.phase)
            == Some(RolloutPhase::RolledBack)
    })
    .await;
    if !rolled_back {
        eprintln!("{:?}", versions.get(&v7).await.map(|v| v.status));
        plane.print_logs();
        panic!("version 7 was not rolled back");
    }
    locker.batch_execute("ROLLBACK").await.unwrap();
    let status = versions.get(&v7).await.unwrap().status.unwrap();
    let failed: Vec<_> = status
        .shards
        .iter()
        .filter(|s| s.state == "Failed")
        .collect();
    assert_eq!(failed.len(), 1, "{:?}", status.shards);
    assert_eq!(failed[0].shard, victim);
    assert_eq!(failed[0].node.as_deref(), Some(victim_node.as_str()));
    assert!(
        failed[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("lock timeout"),
        "{:?}",
        failed[0].error
    );
    let undone = status
        .shards
        .iter()
        .filter(|s| s.state == "RolledBack")
        .count();
    assert_eq!(
        undone,
        SHARDS - 1,
        "every other shard was changed, then rolled back: {:?}",
        status.shards
    );
    let table = tables.get(TABLE).await.unwrap();
    let condition = table
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "SchemaRolledOut")
        .cloned()
        .expect("the table says how its rollout ended");
    eprintln!("SchemaRolledOut: {}", condition.message);
    assert_eq!(condition.reason, "RolledBack");
    for needle in [victim.as_str(), victim_node.as_str(), "lock timeout"] {
        assert!(
            condition.message.contains(needle),
            "{needle} in {}",
            condition.message
        );
    }
    assert_eq!(table_version(&tables).await, Some(6));
    // Rolled back on every replica of the changed shards; never added on the failed one.
    assert_column(&plane, "extra", None).await;

    // 6. The lock is gone: deleting the rolled-back version retries it (made again from the
    // Table, rolled out by a new plan).
    versions.delete(&v7, &Default::default()).await.unwrap();
    wait_version(&plane, 7).await;
    let retried = schema_version_status(&plane, 7).await.unwrap();
    assert_eq!(retried.phase, Some(RolloutPhase::Complete));
    assert_ne!(retried.plan, status.plan, "the retry ran a plan of its own");
    assert_column(&plane, "extra", Some("text")).await;
}
