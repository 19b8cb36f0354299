//! Rolling an additive schema change out to the real data plane:
//! `cargo bench --bench schema_rollout`. Three `shardplane agent` processes with real
//! PostgreSQL, the operator in this process, a table of 8 declared shards at RF 3 (24
//! instances), a write workload of 200 inserts/s through the routing library. Each run adds a
//! nullable column and measures the time from the Table patch until the version is applied
//! and verified on every replica (`Table.status.schemaVersion` and the SchemaVersion
//! `Complete`); at the end, the writes that failed after the router's retries.

#[path = "../tests/agent/harness.rs"]
mod harness;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use serde_json::{Value, json};
use shardplane::workload::{Workload, WorkloadConfig};

use harness::{
    bench_plane, declare_schema, relax_failure_detection, table_router, wait_schema_version,
};

const SHARDS: usize = 8;
const RUNS: i64 = 8;

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let (_cp, plane) = bench_plane("bench-schema", SHARDS).await;
    plane.wait_serving(SHARDS, Duration::from_secs(300)).await;
    relax_failure_detection(&plane).await;
    wait_schema_version(&plane, 1, Duration::from_secs(60))
        .await
        .expect("version 1");
    let workload = Workload::start(
        table_router(&plane).await,
        &WorkloadConfig::new(harness::TABLE, "id", 4, 200.0),
    )
    .expect("workload");
    let mut columns = vec![
        json!({"name": "id", "type": "bigint", "nullable": false}),
        json!({"name": "note", "type": "text"}),
    ];
    let mut seconds = Vec::new();
    for run in 1..=RUNS {
        columns.push(json!({"name": format!("c{run}"), "type": "text"}));
        declare_schema(&plane, Value::Array(columns.clone()), json!([])).await;
        let took = wait_schema_version(&plane, run + 1, Duration::from_secs(180))
            .await
            .unwrap_or_else(|| panic!("version {} rolled out in time", run + 1));
        eprintln!("run {run}: {:.2} s", took.as_secs_f64());
        seconds.push(took.as_secs_f64());
    }
    let report = workload.stop().await;
    seconds.sort_by(f64::total_cmp);
    let at = |q: f64| seconds[((seconds.len() - 1) as f64 * q).round() as usize];
    println!(
        "schema_rollout_s_3_nodes p50 {:.2} p99 {:.2} min {:.2} ({RUNS} runs, one added column each, {SHARDS} shards x RF 3)",
        at(0.5),
        at(0.99),
        seconds[0]
    );
    println!(
        "schema_rollout_failed_writes {} (acked {}, retries {}, slowest write {:.3} s)",
        report.failed.len(),
        report.acked.len(),
        report.retries,
        report.slowest_write.as_secs_f64()
    );
}
