//! A region lost and returned on the real data plane (issue #14, case d):
//! `cargo bench --bench region_loss` (needs root, like the partition tests). Six hosts —
//! network namespaces, each with its agent and its PostgreSQL instances — in three regions of
//! two zones, two shards, RF 3 with one replica per region, `ANY 1`, failure detection
//! 200 / 600 / 1200 ms, `replaceReplicasAfterSeconds` 8, the routed workload (4 writers,
//! 200 writes/s) throughout. Each round runs two trials on the region leading `orders-0`:
//!
//! - `kill` (the same-run baseline): the agent of the node leading `orders-0` SIGKILLed,
//!   PostgreSQL with it; restarted once its primaries moved, back as a streaming standby;
//! - `region`: every host of that region cut off at once (packets dropped, nothing killed);
//!   the lost replicas replaced in the other two regions; the region healed, its nodes back,
//!   one replica per region again.
//!
//! `region_loss_rto_s` is the time from the cut to the first routed write acknowledged after
//! it for the last shard the region led (each shard's measured from the cut); the kill's is
//! the same for one shard. Every acknowledged write is checked after every trial, and a
//! prober inside every host counts instants with two writable primaries.
//! `SHARDPLANE_BENCH_RUNS` rounds (default 5).

#[path = "support/mod.rs"]
mod bench_support;
#[path = "../tests/agent/harness.rs"]
mod harness;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use bench_support::percentile;
use harness::Ledger;
use harness::faults::{Fault, node_fault};
use harness::network::TestNetwork;
use harness::regions::{REGION_NODES, lose_region, region_leading_first_shard};

const SHARDS: usize = 2;
const REPLACE_AFTER: Duration = Duration::from_secs(8);

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let namespace = "bench-region-loss";
    let (_cp, mut plane) =
        harness::bench_plane_on_network(namespace, SHARDS, &REGION_NODES, TestNetwork::new()).await;
    plane.wait_serving(SHARDS, Duration::from_secs(120)).await;
    let runs = std::env::var("SHARDPLANE_BENCH_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let mut ledger = Ledger::new(&plane.client, namespace, 4, 200.0).await;
    let (mut kills, mut rtos, mut replaced, mut respread) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut two_writable = 0;
    for run in 0..runs {
        let (took, both) = node_fault(&mut plane, &mut ledger, Fault::Kill).await;
        println!(
            "run {run}: kill: first acknowledged write {took:.3} s after the kill, two writable primaries {both}"
        );
        kills.push(took);
        two_writable += both;
        let region = region_leading_first_shard(&plane).await;
        let lost = lose_region(&plane, &mut ledger, &region, REPLACE_AFTER).await;
        println!(
            "run {run}: region {region}: first acknowledged write {:.3} s after the cut, replaced {:.1} s after it, one replica per region {:.1} s after the heal, two writable primaries {}",
            lost.rto.as_secs_f64(),
            lost.replaced.as_secs_f64(),
            lost.respread.as_secs_f64(),
            lost.two_writable.len()
        );
        for line in &lost.two_writable {
            println!("region {region}: two writable primaries: {line}");
        }
        rtos.push(lost.rto.as_secs_f64());
        replaced.push(lost.replaced.as_secs_f64());
        respread.push(lost.respread.as_secs_f64());
        two_writable += lost.two_writable.len();
    }
    ledger.summary();

    println!("\n| key | value |\n|---|---|");
    for (key, of) in [
        ("region_loss_kill_baseline_s", kills),
        ("region_loss_rto_s", rtos),
        ("region_loss_replaced_s", replaced),
        ("region_loss_respread_after_heal_s", respread),
    ] {
        println!("| {key}_p50 | {:.3} |", percentile(&of, 0.50));
        println!("| {key}_p99 | {:.3} |", percentile(&of, 0.99));
    }
    println!("| region_loss_trials | {runs} |");
    println!(
        "| region_loss_replace_replicas_after_s | {} |",
        REPLACE_AFTER.as_secs()
    );
    println!("| two_writable_primaries_observed | {two_writable} |");
    println!(
        "| acked_writes_lost | 0 (of {} acknowledged; checked after every trial) |",
        ledger.acked.len()
    );
}
