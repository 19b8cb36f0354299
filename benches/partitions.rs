//! Network faults of the real data plane on a test network (`tests/agent/network.rs`):
//! `cargo bench --bench partitions` (needs root, like the partition tests). Three hosts —
//! network namespaces, each with its agent and its PostgreSQL instances — two shards, RF 3,
//! `ANY 1`, failure detection 200 / 600 / 1200 ms, the routed workload (4 writers,
//! 200 writes/s) throughout. Each round runs three trials on the node leading `orders-0`:
//!
//! - `kill` (the same-run baseline, as `dataplane_failover`): its agent SIGKILLed, PostgreSQL
//!   with it; restarted afterwards;
//! - `isolated` (issue #14, case a): its host cut off from everything, not killed; healed;
//! - `standbys` (case c): its host cut from the other nodes only; healed.
//!
//! Each trial's figure is the time from the fault to the first routed write of an affected
//! shard acknowledged after it (by the new primary: the old one can acknowledge none), with a
//! prober inside every host counting instants with two writable primaries, and every
//! acknowledged write checked afterwards. The next trial starts only once the node is back as a
//! standby that streams again (not merely in sync and holding all it received). Then the control plane is taken from every
//! component for `SHARDPLANE_OUTAGE_S` seconds (default 120; case g) and the share of the
//! primaries' probes that took a write is reported. Last, a slow WAN (case e): single-row
//! routed commits one after another for 30 s on the plain links (the baseline), then for
//! `SHARDPLANE_WAN_S` seconds (default 300) with every packet between two regions held
//! 100 ± 20 ms and 1 % dropped, the workload running: failovers planned and node phase
//! changes counted (both must be 0), commit latency reported, then a node killed while the
//! WAN is still slow (its detection and failover reported). `SHARDPLANE_BENCH_RUNS` rounds
//! (default 5).

#[path = "support/mod.rs"]
mod bench_support;
#[path = "../tests/agent/harness.rs"]
mod harness;
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use kube::ResourceExt;

use bench_support::percentile;
use harness::faults::{Fault, node_fault};
use harness::network::LinkShape;
use harness::network::TestNetwork;
use harness::probes::{
    control_plane_outage, probe_every_replica, stop_probers, two_writable_primaries, writable_share,
};
use harness::wan::{slow_wan, watch_commits};
use harness::{DataPlane, Ledger, NODES};

const SHARDS: usize = 2;
/// The slow WAN of issue #14, case e: each way between two regions.
const WAN: LinkShape = LinkShape {
    delay: Duration::from_millis(100),
    jitter: Duration::from_millis(20),
    loss: 0.01,
};

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let namespace = "bench-partitions";
    let (_cp, mut plane) =
        harness::bench_plane_on_network(namespace, SHARDS, &NODES, TestNetwork::new()).await;
    plane.wait_serving(SHARDS, Duration::from_secs(120)).await;
    let runs = std::env::var("SHARDPLANE_BENCH_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let outage = Duration::from_secs(
        std::env::var("SHARDPLANE_OUTAGE_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(120),
    );
    let wan_hold = Duration::from_secs(
        std::env::var("SHARDPLANE_WAN_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300),
    );
    let mut ledger = Ledger::new(&plane.client, namespace, 4, 200.0).await;
    let faults = [Fault::Kill, Fault::Isolated, Fault::Standbys];
    let mut samples: Vec<(Fault, f64)> = Vec::new();
    let mut two_writable = 0;
    for run in 0..runs {
        for fault in faults {
            let (took, both) = node_fault(&mut plane, &mut ledger, fault).await;
            println!(
                "run {run}: {fault:?}: first acknowledged write {took:.3} s after the fault, two writable primaries {both}"
            );
            samples.push((fault, took));
            two_writable += both;
        }
    }
    let (pct, acked_during) = outage_trial(&plane, &mut ledger, outage).await;
    // The slow WAN, after a baseline of the same commits on the plain links.
    let (baseline, _) = watch_commits(&plane, &mut ledger, Duration::from_secs(30)).await;
    let wan = slow_wan(&mut plane, &mut ledger, WAN, wan_hold).await;
    ledger.summary();

    println!("\n| key | value |\n|---|---|");
    for (fault, key) in [
        (Fault::Kill, "kill_failover_s"),
        (Fault::Isolated, "partition_failover_s"),
        (Fault::Standbys, "quorum_loss_failover_s"),
    ] {
        let of: Vec<f64> = samples
            .iter()
            .filter(|(f, _)| *f == fault)
            .map(|(_, s)| *s)
            .collect();
        println!("| {key}_p50 | {:.3} |", percentile(&of, 0.50));
        println!("| {key}_p99 | {:.3} |", percentile(&of, 0.99));
    }
    println!("| partition_trials | {runs} per fault |");
    println!("| two_writable_primaries_observed | {two_writable} |");
    println!(
        "| acked_writes_lost | 0 (of {} acknowledged; checked after every trial) |",
        ledger.acked.len()
    );
    println!("| control_plane_outage_s | {} |", outage.as_secs());
    println!("| control_plane_outage_write_success_pct | {pct:.1} |");
    println!("| control_plane_outage_routed_writes_acked | {acked_during} |");
    let ms = |latencies: &[Duration]| -> Vec<f64> {
        latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect()
    };
    println!(
        "| wan_shape | {} ms ± {} ms one way, {:.0} % loss, between every two regions, {} s |",
        WAN.delay.as_millis(),
        WAN.jitter.as_millis(),
        WAN.loss * 100.0,
        wan_hold.as_secs()
    );
    println!(
        "| false_failovers_under_wan_faults | {} |",
        wan.false_failovers
    );
    println!(
        "| node_phase_changes_under_wan_faults | {} |",
        wan.flaps.len()
    );
    for (key, latencies) in [
        ("commit_latency_ms_plain", ms(&baseline)),
        ("commit_latency_ms_under_wan", ms(&wan.commit_latencies)),
    ] {
        println!("| {key}_p50 | {:.1} |", percentile(&latencies, 0.50));
        println!("| {key}_p99 | {:.1} |", percentile(&latencies, 0.99));
    }
    println!(
        "| wan_packets_sent_dropped | {} / {} |",
        wan.links.sent, wan.links.dropped
    );
    println!(
        "| wan_kill_detected_s | {:.3} |",
        wan.kill_detected.as_secs_f64()
    );
    println!(
        "| wan_kill_failover_s | {} |",
        wan.kill_failover
            .map_or("none within 120 s".to_owned(), |d| format!(
                "{:.3}",
                d.as_secs_f64()
            ))
    );
    println!("| wan_kill_failed_writes | {} |", wan.failed_writes);
}

/// The control plane out of reach of every component for `outage`: the share of the
/// primaries' probes that took a write meanwhile, and the routed writes acknowledged.
async fn outage_trial(plane: &DataPlane, ledger: &mut Ledger, outage: Duration) -> (f64, u64) {
    let shards = plane.shard_list().await;
    let primaries: Vec<(String, String)> = shards
        .iter()
        .map(|s| {
            (
                s.name_any(),
                s.status.clone().unwrap().primary.unwrap().node,
            )
        })
        .collect();
    let workload = ledger.start(20).await;
    let stop = Arc::new(AtomicBool::new(false));
    let probers = probe_every_replica(plane, &shards, &stop);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cut, restored, acked_during) = control_plane_outage(plane, &workload, outage).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    ledger
        .finish("control plane out of reach", workload, 20)
        .await;
    let probes = stop_probers(&stop, probers).await;
    let (writable, probed) = writable_share(
        &probes,
        |shard, node| primaries.iter().any(|(s, n)| s == shard && n == node),
        cut,
        restored,
    );
    println!(
        "outage {:.0?}: {writable} of {} probes of the primaries took a write; {acked_during} routed writes acknowledged; two writable primaries {}",
        restored - cut,
        probed,
        two_writable_primaries(&probes).len()
    );
    (100.0 * writable as f64 / probed.max(1) as f64, acked_during)
}
