//! Split and merge of a 1,000,000-row shard through the real operator and agents:
//! `cargo bench --bench split`. Three `shardplane agent` processes with real PostgreSQL (RF 3,
//! `ANY 1` quorum), the operator in this process, one declared shard loaded with 1,000,000
//! rows. Each cycle splits the table's one shard in two and merges the halves back into one
//! new shard, each through a declared, approved reshard plan. Measured per change: the
//! write-fence window (the source's `switchedAtMs − fencedAtMs`), and the copy time (first
//! subscription created on a target → every subscription's table ready, polled on the
//! target primaries every 10 ms). Per split, in the same run and between the same two
//! servers (the source primary and the first target's primary, while the source is kept for
//! its grace period): a plain `COPY orders TO STDOUT | COPY … FROM STDIN` (binary) of the
//! same 1,000,000 rows into a scratch table with the same primary key. A routed workload
//! (4 writers, 200 writes/s in all) writes unique ids through every change; at the end the
//! checker finds each acknowledged one exactly once.

#[path = "../tests/agent/harness.rs"]
mod harness;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use kube::api::Api;
use shardplane::agent::postgres::pipe_copy;
use shardplane::api::Shard;
use shardplane::api::shard::ReplicaRole;

use harness::{
    TABLE, assert_nothing_lost, assert_succeeded, bench_plane, connect, declare, reshard,
    router_and_checker, set_retire_grace,
};
use shardplane::workload::{Workload, WorkloadConfig};

const ROWS: i64 = 1_000_000;
/// The routed workload writing through every change: writers and their rate in all.
const WRITERS: usize = 4;
const WRITES_PER_SECOND: f64 = 200.0;
const CYCLES: usize = 3;
/// Long enough for the plain COPY baseline to run while the source still exists.
const GRACE_SECONDS: u64 = 20;

/// `host:port` of the shard's primary, once its agent reports it.
async fn primary_of(shards: &Api<Shard>, name: &str) -> Option<String> {
    let shard = shards.get_opt(name).await.ok()??;
    let primary = shard.status.clone()?.primary?;
    harness::report(&shard, &primary.node)
        .filter(|r| r.role == ReplicaRole::Primary)?
        .endpoint
        .clone()
}

/// Seconds from the first split/merge subscription created on one of `targets` until each
/// target has `per_target` subscriptions whose tables are all ready.
async fn copy_time(shards: Api<Shard>, targets: Vec<String>, per_target: i64) -> f64 {
    let mut clients: Vec<Option<tokio_postgres::Client>> = targets.iter().map(|_| None).collect();
    let mut first: Option<Instant> = None;
    loop {
        let mut all_ready = true;
        for (k, target) in targets.iter().enumerate() {
            if clients[k].is_none()
                && let Some(endpoint) = primary_of(&shards, target).await
            {
                clients[k] = connect(&endpoint).await.ok();
            }
            let Some(client) = &clients[k] else {
                all_ready = false;
                continue;
            };
            let row = client
                .query_one(
                    "SELECT count(*), count(*) FILTER (WHERE ready) FROM ( \
                       SELECT coalesce(bool_and(sr.srsubstate = 'r'), false) AS ready \
                       FROM pg_subscription s \
                       LEFT JOIN pg_subscription_rel sr ON sr.srsubid = s.oid \
                       WHERE starts_with(s.subname::text, 'rs_') GROUP BY s.subname) x",
                    &[],
                )
                .await;
            let (subscriptions, ready): (i64, i64) = match row {
                Ok(row) => (row.get(0), row.get(1)),
                Err(_) => (0, 0),
            };
            if subscriptions > 0 && first.is_none() {
                first = Some(Instant::now());
            }
            all_ready &= subscriptions == per_target && ready == per_target;
        }
        if all_ready && let Some(first) = first {
            return first.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Once `source` is switched out (and kept for its grace period), a plain binary COPY of
/// the whole table from its primary into a scratch table on `target`'s primary; seconds.
async fn plain_copy(shards: Api<Shard>, source: String, target: String) -> (f64, u64) {
    loop {
        let switched = shards
            .get_opt(&source)
            .await
            .ok()
            .flatten()
            .and_then(|s| s.status?.reshard?.switched_at_ms)
            .is_some();
        if switched {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let from = connect(&primary_of(&shards, &source).await.expect("source primary"))
        .await
        .expect("source session");
    let into = connect(&primary_of(&shards, &target).await.expect("target primary"))
        .await
        .expect("target session");
    into.batch_execute("CREATE TABLE plain_copy (id bigint PRIMARY KEY, note text)")
        .await
        .expect("scratch table");
    let started = Instant::now();
    let stats = pipe_copy(
        &from,
        &format!("COPY {TABLE} TO STDOUT (FORMAT binary)"),
        &into,
        "COPY plain_copy FROM STDIN (FORMAT binary)",
    )
    .await
    .expect("plain copy");
    let took = started.elapsed().as_secs_f64();
    into.batch_execute("DROP TABLE plain_copy")
        .await
        .expect("scratch table dropped");
    (took, stats.rows)
}

fn quantile(samples: &[i64], q: f64) -> i64 {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let (_control_plane, plane) = bench_plane("bench-split", 1).await;
    plane.wait_serving(1, Duration::from_secs(180)).await;
    set_retire_grace(&plane, GRACE_SECONDS).await;
    let shards = plane.shards();
    let loaded = Instant::now();
    connect(&primary_of(&shards, "orders-0").await.expect("primary"))
        .await
        .expect("session")
        .execute(
            &format!(
                "INSERT INTO {TABLE} (id, note) SELECT g, md5(g::text) \
                 FROM generate_series(1, {ROWS}) g"
            ),
            &[],
        )
        .await
        .expect("load");
    // As autovacuum would have: hint bits set and statistics taken, so the first change's copy
    // does not pay for the load's hint bits while the plain COPY after it does not.
    connect(&primary_of(&shards, "orders-0").await.expect("primary"))
        .await
        .expect("session")
        .batch_execute(&format!("VACUUM (ANALYZE) {TABLE}"))
        .await
        .expect("vacuum");
    println!(
        "loaded {ROWS} rows in {:.1} s",
        loaded.elapsed().as_secs_f64()
    );

    // Writes through the Router all along: the fence then has writes to cut off, drain and
    // compare, as in production.
    let (router, checker) = router_and_checker(&plane.client, &plane.namespace).await;
    let mut config = WorkloadConfig::new(TABLE, "id", WRITERS, WRITES_PER_SECOND);
    config.first_id = ROWS + 1_000_000;
    let workload = Workload::start(router, &config).expect("workload");

    let mut windows = Vec::new();
    let mut ratios = Vec::new();
    let mut current = "orders-0".to_owned();
    for cycle in 0..CYCLES {
        let (low, high) = (format!("s{cycle}-a"), format!("s{cycle}-b"));
        let timer = tokio::spawn(copy_time(
            shards.clone(),
            vec![low.clone(), high.clone()],
            1,
        ));
        let baseline = tokio::spawn(plain_copy(shards.clone(), current.clone(), low.clone()));
        let (plan, window) = reshard(
            &plane,
            vec![declare(&low, None, Some(0)), declare(&high, Some(0), None)],
            &current,
        )
        .await;
        assert_succeeded(&plan);
        let copied = timer.await.expect("copy timer");
        let (plain, plain_rows) = baseline.await.expect("plain copy");
        let window = window.expect("fence window");
        println!(
            "cycle {cycle}: split {current} → {low} + {high}: fence window {window} ms, \
             copy {copied:.2} s ({:.0} rows/s); plain COPY of {plain_rows} rows {plain:.2} s \
             ({:.0} rows/s); copy vs plain {:.2}",
            ROWS as f64 / copied,
            plain_rows as f64 / plain,
            plain / copied
        );
        windows.push(window);
        ratios.push(plain / copied);

        let merged = format!("m{cycle}");
        let timer = tokio::spawn(copy_time(shards.clone(), vec![merged.clone()], 2));
        let (plan, window) = reshard(&plane, vec![declare(&merged, None, None)], &low).await;
        assert_succeeded(&plan);
        let copied = timer.await.expect("copy timer");
        let window = window.expect("fence window");
        println!(
            "cycle {cycle}: merge {low} + {high} → {merged}: fence window {window} ms, copy \
             {copied:.2} s ({:.0} rows/s)",
            ROWS as f64 / copied
        );
        windows.push(window);
        current = merged;
    }
    let report = workload.stop().await;
    println!("{report}");
    let check = checker.check(&report.acked_keys()).await.expect("check");
    println!("split bench: {check}");
    assert_nothing_lost("split bench", &check, report.acked.len());
    let mut sorted_ratios = ratios.clone();
    sorted_ratios.sort_by(f64::total_cmp);
    println!(
        "split_fence_ms: changes {} p50 {} p99 {} max {}",
        windows.len(),
        quantile(&windows, 0.5),
        quantile(&windows, 0.99),
        windows.iter().max().copied().unwrap_or_default()
    );
    println!(
        "split_copy_vs_plain_copy: splits {} min {:.2} median {:.2} max {:.2}",
        sorted_ratios.len(),
        sorted_ratios[0],
        sorted_ratios[sorted_ratios.len() / 2],
        sorted_ratios[sorted_ratios.len() - 1]
    );
}
