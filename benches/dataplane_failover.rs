//! Failover of the real data plane: `cargo bench --bench dataplane_failover`. Three
//! `shardplane agent` processes with real PostgreSQL, the operator in this process, two
//! declared shards (RF 3, `ANY 1` quorum, failure detection 200/600/1200 ms). Each run
//! SIGKILLs the agent (and so the PostgreSQL) of the node leading `orders-0` and measures
//! the time until every shard it led accepts a write at epoch + 1 on its new primary, with
//! the routing map pointing there; then restarts the agent (its old primaries come back as
//! standbys) and waits until all replicas serve again before the next run.

#[path = "../tests/agent/harness.rs"]
mod harness;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::Api;
use shardplane::api::Table;

use harness::{insert, keys_in, serving_primary};

const SHARDS: usize = 2;
const RUNS: usize = 12;

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let namespace = "bench-dataplane";
    let (_cp, mut plane) = harness::bench_plane(namespace, SHARDS).await;
    plane.wait_serving(SHARDS, Duration::from_secs(120)).await;
    let tables: Api<Table> = Api::namespaced(plane.client.clone(), namespace);
    let mut samples = Vec::new();
    for run in 0..RUNS {
        let shards = plane.shard_list().await;
        let victim = shards[0].status.clone().unwrap().primary.unwrap().node;
        let led: Vec<(String, i64)> = shards
            .iter()
            .filter_map(|s| s.status.clone()?.primary.map(|p| (s, p)))
            .filter(|(_, p)| p.node == victim)
            .map(|(s, p)| (s.name_any(), p.epoch))
            .collect();
        let killed = Instant::now();
        plane.agents.get_mut(&victim).expect("agent").kill();
        for (name, epoch) in &led {
            let deadline = killed + Duration::from_secs(30);
            loop {
                if let Some((_, endpoint, shard)) =
                    serving_primary(&plane, &tables, name, epoch + 1).await
                    && insert(&endpoint, &keys_in(&shard, 1_000_000 * (run as i64 + 1), 1))
                        .await
                        .is_ok()
                {
                    break;
                }
                if Instant::now() > deadline {
                    panic!("run {run}: {name} did not fail over from {victim} within 30 s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let took = killed.elapsed().as_secs_f64();
        println!(
            "run {run}: kill of {victim} ({} primaries) -> writable at epoch + 1 in {took:.3} s",
            led.len()
        );
        samples.push(took);
        plane.start_agent(&victim);
        plane.wait_serving(SHARDS, Duration::from_secs(90)).await;
    }
    samples.sort_by(f64::total_cmp);
    let quantile =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    println!(
        "dataplane_failover_s: runs {} p50 {:.3} p99 {:.3} min {:.3} max {:.3}",
        samples.len(),
        quantile(0.5),
        quantile(0.99),
        samples[0],
        samples[samples.len() - 1]
    );
}
