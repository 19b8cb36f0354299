//! Failover of the real data plane: `cargo bench --bench dataplane_failover`. Three
//! `shardplane agent` processes with real PostgreSQL, the operator in this process, two
//! declared shards (RF 3, `ANY 1` quorum, failure detection 200/600/1200 ms). Each run
//! SIGKILLs the agent (and so the PostgreSQL) of the node leading `orders-0` and measures
//! the time until every shard it led accepts a write at epoch + 1 on its new primary, with
//! the routing map pointing there; then restarts the agent (its old primaries come back as
//! standbys) and waits until all replicas serve again before the next run.
//!
//! For finding where a slow run spends its time: `SHARDPLANE_BENCH_TRACE=1` prints every
//! change of the Shards' primaries and replica reports, of node phases and of Plans (UTC
//! times, to set beside the agents' logs), and when each shard first served and first took
//! the write; `SHARDPLANE_BENCH_KEEP=<dir>` copies the agents' logs and every instance's
//! `postgres.log` there when the bench ends; `SHARDPLANE_BENCH_RUNS=<n>` runs `n` times
//! instead of 12.

#[path = "../tests/agent/harness.rs"]
mod harness;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use shardplane::api::{DatabaseNode, Plan, Shard, Table};

use harness::{insert, keys_in, serving_primary};

const SHARDS: usize = 2;
const RUNS: usize = 12;

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let namespace = "bench-dataplane";
    let (_cp, mut plane) = harness::bench_plane(namespace, SHARDS).await;
    plane.wait_serving(SHARDS, Duration::from_secs(120)).await;
    let trace = std::env::var_os("SHARDPLANE_BENCH_TRACE").is_some();
    if trace {
        trace_changes(&plane.client, namespace);
    }
    let _keep = std::env::var_os("SHARDPLANE_BENCH_KEEP").map(|dir| KeepLogs {
        from: plane
            .agents
            .values()
            .next()
            .expect("agent")
            .log
            .parent()
            .expect("dir")
            .to_owned(),
        to: PathBuf::from(dir),
    });
    let tables: Api<Table> = Api::namespaced(plane.client.clone(), namespace);
    let runs = std::env::var("SHARDPLANE_BENCH_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(RUNS);
    let mut samples = Vec::new();
    for run in 0..runs {
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
        if trace {
            println!("{} run {run}: killed {victim}", Timestamp::now());
        }
        for (name, epoch) in &led {
            let deadline = killed + Duration::from_secs(30);
            let mut served = false;
            loop {
                if let Some((node, endpoint, shard)) =
                    serving_primary(&plane, &tables, name, epoch + 1).await
                {
                    if trace && !served {
                        println!(
                            "{} run {run}: {name} serves on {node} at epoch {} (+{:.3} s)",
                            Timestamp::now(),
                            epoch + 1,
                            killed.elapsed().as_secs_f64()
                        );
                    }
                    served = true;
                    if insert(&endpoint, &keys_in(&shard, 1_000_000 * (run as i64 + 1), 1))
                        .await
                        .is_ok()
                    {
                        if trace {
                            println!(
                                "{} run {run}: {name} took the write (+{:.3} s)",
                                Timestamp::now(),
                                killed.elapsed().as_secs_f64()
                            );
                        }
                        break;
                    }
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

/// Prints every change of the Shards' primaries and reports, of node phases and of Plans.
fn trace_changes(client: &kube::Client, namespace: &str) {
    fn shard_line(shard: &Shard) -> String {
        let status = shard.status.clone().unwrap_or_default();
        let primary = status
            .primary
            .map_or("-".into(), |p| format!("{}@{}", p.node, p.epoch));
        let replicas: Vec<String> = status
            .replicas
            .iter()
            .map(|r| {
                format!(
                    "{}:{:?}/{:?}/e{}/lag {}/rlsn {}",
                    r.node,
                    r.role,
                    r.state,
                    r.epoch.unwrap_or(-1),
                    r.lag_bytes.map_or("-".into(), |l| l.to_string()),
                    r.received_lsn.map_or("-".into(), |l| l.to_string())
                )
            })
            .collect();
        format!("primary {primary} [{}]", replicas.join(", "))
    }
    fn node_line(node: &DatabaseNode) -> String {
        format!("{:?}", node.status.as_ref().and_then(|s| s.phase))
    }
    fn plan_line(plan: &Plan) -> String {
        let status = plan.status.clone().unwrap_or_default();
        let steps: Vec<String> = status
            .steps
            .iter()
            .map(|s| format!("{}:{:?}", s.id, s.phase))
            .collect();
        format!("{:?} steps [{}]", status.phase, steps.join(" "))
    }
    fn watch<K, F>(api: Api<K>, kind: &'static str, line: F)
    where
        K: kube::Resource
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
        F: Fn(&K) -> String + Send + 'static,
    {
        tokio::spawn(async move {
            let mut seen: BTreeMap<String, String> = BTreeMap::new();
            let mut stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(event) = stream.next().await {
                let Ok(object) = event else { continue };
                let now = line(&object);
                let name = object.name_any();
                if seen.get(&name) != Some(&now) {
                    println!("{} {kind} {name}: {now}", Timestamp::now());
                    seen.insert(name, now);
                }
            }
        });
    }
    watch(
        Api::<Shard>::namespaced(client.clone(), namespace),
        "shard",
        shard_line,
    );
    watch(
        Api::<DatabaseNode>::namespaced(client.clone(), namespace),
        "node",
        node_line,
    );
    watch(
        Api::<Plan>::namespaced(client.clone(), namespace),
        "plan",
        plan_line,
    );
}

/// Copies the agents' logs and the instances' `postgres.log` files when dropped.
struct KeepLogs {
    from: PathBuf,
    to: PathBuf,
}

impl Drop for KeepLogs {
    fn drop(&mut self) {
        fn copy_logs(from: &Path, to: &Path) {
            let Ok(entries) = std::fs::read_dir(from) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let target = to.join(entry.file_name());
                if path.is_dir() {
                    copy_logs(&path, &target);
                } else if path.extension().is_some_and(|e| e == "log") {
                    let _ = std::fs::create_dir_all(to);
                    let _ = std::fs::copy(&path, &target);
                }
            }
        }
        copy_logs(&self.from, &self.to);
        println!("logs kept in {}", self.to.display());
    }
}
