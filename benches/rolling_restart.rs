//! A rolling restart of the real data plane, and what clients see of it:
//! `cargo bench --bench rolling_restart`. Three `shardplane agent` processes with real
//! PostgreSQL (RF 3, `ANY 1` quorum), the operator in this process, a table of 6 declared
//! shards (18 instances). A restart-requiring parameter (`max_connections`) is changed, which
//! the operator carries out as one `NodeRollout` plan: per node, its primaries handed over
//! (planned switchover), its instances restarted, the health gate.
//!
//! One probe per shard writes through the Router, one row at a time every 10 ms, to keys of
//! its shard only. A write pause is the gap between two consecutive acknowledgements of one
//! probe, less the pacing; each planned switchover of a shard is one of the shard's largest
//! gaps (as many as the plan switches that shard). Baseline, in the same run on the same
//! machine: the same probe against a standalone PostgreSQL instance restarted in place (fast
//! shutdown, start) — what a restart without a handover costs its clients. At the end the
//! checker finds every acknowledged probe row exactly once. `SHARDPLANE_BENCH_TRACE=1` prints
//! the operator's log and the agents' switchover lines, to see where a pause goes.

#[path = "../tests/agent/harness.rs"]
mod harness;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use shardplane::agent::postgres::{
    Credentials, Instance, InstanceSettings, InstanceSpec, StopMode, Toolchain, free_loopback_port,
};
use shardplane::api::plan::{PlanPhase, PlanPurpose};
use shardplane::api::{DatabaseCluster, Plan};
use shardplane::routing::{Router, ShardKeyValue};

use harness::{TABLE, assert_nothing_lost, bench_plane, keys_in, relax_failure_detection};

const SHARDS: usize = 6;
/// Pacing of each probe.
const PACE: Duration = Duration::from_millis(10);
/// Restarts of the standalone baseline instance.
const BASELINE_RESTARTS: usize = 5;

/// What one probe saw: the instants its writes were acknowledged, and the failed ones.
struct Probe {
    acks: Vec<Instant>,
    /// The same instants on the wall clock (for the trace's pause windows).
    wall: Vec<std::time::SystemTime>,
    acked: Vec<i64>,
    failed: usize,
}

/// Writes `keys` one after another through `router` until `stop`.
async fn probe(router: Router, keys: Vec<i64>, stop: Arc<AtomicBool>) -> Probe {
    let mut seen = Probe {
        acks: Vec::new(),
        wall: Vec::new(),
        acked: Vec::new(),
        failed: 0,
    };
    let statement =
        format!("INSERT INTO {TABLE} (id, note) VALUES ($1, 'probe') ON CONFLICT (id) DO NOTHING");
    for key in keys {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match router
            .execute(&ShardKeyValue::Int(key), &statement, &[&key])
            .await
        {
            Ok(_) => {
                seen.acks.push(Instant::now());
                seen.wall.push(std::time::SystemTime::now());
                seen.acked.push(key);
            }
            Err(error) => {
                eprintln!("probe write {key} failed: {error}");
                seen.failed += 1;
            }
        }
        tokio::time::sleep(PACE).await;
    }
    seen
}

/// The `n` largest gaps between consecutive acknowledgements, less the pacing, in ms.
fn largest_pauses(acks: &[Instant], n: usize) -> Vec<u64> {
    let mut gaps: Vec<u64> = acks
        .windows(2)
        .map(|w| (w[1] - w[0]).saturating_sub(PACE).as_millis() as u64)
        .collect();
    gaps.sort_unstable_by(|a, b| b.cmp(a));
    gaps.truncate(n);
    gaps
}

fn quantile(values: &[u64], q: f64) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The write pauses of restarting a standalone instance in place, `BASELINE_RESTARTS` times.
async fn in_place_restart_pauses() -> Vec<u64> {
    let dir = tempfile::tempdir().expect("folder");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("permissions");
    let toolchain = Toolchain::detect().expect("PostgreSQL");
    let credentials = Credentials::new("baseline-secret".into(), "baseline-repl".into());
    let spec = InstanceSpec {
        name: "baseline".into(),
        dir: dir.path().join("baseline"),
        port: free_loopback_port().expect("port"),
        settings: InstanceSettings {
            fsync: false,
            ..InstanceSettings::default()
        },
    };
    let mut instance = Instance::create_primary(&toolchain, &spec, &credentials)
        .await
        .expect("instance");
    let client = instance.connect().await.expect("session");
    client
        .batch_execute("CREATE TABLE probe (id bigint PRIMARY KEY)")
        .await
        .expect("table");
    drop(client);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let port = spec.port;
        tokio::spawn(async move {
            let mut acks = Vec::new();
            let mut key = 0i64;
            while !stop.load(Ordering::Relaxed) {
                // A fresh session after a failure, as a client's pool would open.
                let connected = tokio_postgres::Config::new()
                    .host("127.0.0.1")
                    .port(port)
                    .user("postgres")
                    .password("baseline-secret")
                    .dbname("postgres")
                    .connect(tokio_postgres::NoTls)
                    .await;
                let Ok((session, connection)) = connected else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                tokio::spawn(connection);
                loop {
                    key += 1;
                    if session
                        .execute("INSERT INTO probe VALUES ($1)", &[&key])
                        .await
                        .is_err()
                    {
                        break;
                    }
                    acks.push(Instant::now());
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    tokio::time::sleep(PACE).await;
                }
            }
            acks
        })
    };
    for _ in 0..BASELINE_RESTARTS {
        tokio::time::sleep(Duration::from_secs(1)).await;
        instance.stop(StopMode::Fast).await;
        instance.start().await.expect("restart");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let acks = writer.await.expect("writer");
    largest_pauses(&acks, BASELINE_RESTARTS)
}

/// With `SHARDPLANE_BENCH_TRACE` set: the `n` largest pauses of a probe as wall-clock windows
/// (last acknowledgement before, first after), to lay beside the log lines.
fn print_pause_windows(shard: &str, seen: &Probe, n: usize) {
    let mut gaps: Vec<(Duration, usize)> = seen
        .acks
        .windows(2)
        .enumerate()
        .map(|(i, w)| (w[1] - w[0], i))
        .collect();
    gaps.sort_unstable_by(|a, b| b.cmp(a));
    for (gap, i) in gaps.into_iter().take(n) {
        let at = |t: std::time::SystemTime| {
            k8s_openapi::jiff::Timestamp::try_from(t)
                .map(|t| t.to_string())
                .unwrap_or_default()
        };
        println!(
            "pause: {shard} {} ms from {} to {}",
            gap.saturating_sub(PACE).as_millis(),
            at(seen.wall[i]),
            at(seen.wall[i + 1])
        );
    }
}

/// With `SHARDPLANE_BENCH_TRACE` set: the agents' log lines of the switchovers, in time order
/// (the operator's, running in this process, are printed as they happen).
fn print_switchover_lines(plane: &harness::DataPlane) {
    let mut lines: Vec<String> = plane
        .agents
        .values()
        .flat_map(|agent| {
            std::fs::read_to_string(&agent.log)
                .unwrap_or_default()
                .lines()
                .filter(|line| {
                    [
                        "fenced",
                        "Promote",
                        "promoted",
                        "Demote",
                        "rewound",
                        "Follow",
                        "restarting",
                        "report written",
                    ]
                    .iter()
                    .any(|word| line.contains(word))
                })
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    lines.sort();
    for line in lines {
        println!("agent: {line}");
    }
}

/// With `SHARDPLANE_BENCH_TRACE` set: every PostgreSQL server's log lines from the rolling
/// restart on (the agents' folders hold one `postgres.log` per instance), each prefixed with
/// its node and instance, in time order — the walreceivers' and walsenders' side of a pause.
fn print_server_logs(plane: &harness::DataPlane) {
    let mut lines = Vec::new();
    for (node, agent) in &plane.agents {
        let Some(folder) = agent.log.parent().map(|p| p.join(node).join("replicas")) else {
            continue;
        };
        let Ok(instances) = std::fs::read_dir(&folder) else {
            continue;
        };
        for instance in instances.flatten() {
            let log = instance.path().join("postgres.log");
            let name = instance.file_name().to_string_lossy().into_owned();
            for line in std::fs::read_to_string(&log).unwrap_or_default().lines() {
                let interesting = ["replication", "timeline", "WAL", "FATAL", "ERROR", "promot"]
                    .iter()
                    .any(|word| line.contains(word));
                if interesting {
                    lines.push(format!("{line}  [{node} {name}]"));
                }
            }
        }
    }
    lines.sort();
    for line in lines {
        println!("server: {line}");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let trace = std::env::var_os("SHARDPLANE_BENCH_TRACE").is_some();
    if trace {
        tracing_subscriber::fmt()
            .with_env_filter(
                "info,kube=warn,shardplane::controller::table=debug,shardplane::routing=debug",
            )
            .init();
    }
    let baseline = in_place_restart_pauses().await;
    println!("baseline: in-place restarts of a standalone instance, pauses {baseline:?} ms");

    let (_cp, plane) = bench_plane("bench-restart", SHARDS).await;
    plane.wait_serving(SHARDS, Duration::from_secs(300)).await;
    relax_failure_detection(&plane).await;
    let (router, checker) = harness::router_and_checker(&plane.client, &plane.namespace).await;
    let stop = Arc::new(AtomicBool::new(false));
    let shards = plane.shard_list().await;
    let probes: Vec<_> = shards
        .iter()
        .map(|shard| {
            let keys = keys_in(shard, 1, 100_000);
            tokio::spawn(probe(router.clone(), keys, stop.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let started = Instant::now();
    let clusters: Api<DatabaseCluster> = Api::namespaced(plane.client.clone(), &plane.namespace);
    clusters
        .patch(
            "main",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"postgresParameters": {"max_connections": "40"}}})),
        )
        .await
        .expect("parameters");
    let plans: Api<Plan> = Api::namespaced(plane.client.clone(), &plane.namespace);
    let plan = loop {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the rolling restart did not finish in time"
        );
        let rollout = support::operator::newest_plan(&plans, PlanPurpose::NodeRollout).await;
        if let Some(plan) = rollout {
            let phase = plan.status.as_ref().and_then(|s| s.phase);
            assert_ne!(phase, Some(PlanPhase::Failed), "{:?}", plan.status);
            if phase == Some(PlanPhase::Succeeded) {
                break plan;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);

    let mut pauses = Vec::new();
    let mut failed = 0;
    let mut acked = HashSet::new();
    for (shard, task) in shards.iter().zip(probes) {
        let seen = task.await.expect("probe");
        let switchovers = plan
            .spec
            .steps
            .iter()
            .filter(|s| {
                s.action == "TransferPrimary" && s.shard.as_deref() == Some(&shard.name_any())
            })
            .count();
        let shard_pauses = largest_pauses(&seen.acks, switchovers);
        println!(
            "{}: {} writes, {} failed, {switchovers} switchover(s), pauses {shard_pauses:?} ms",
            shard.name_any(),
            seen.acked.len(),
            seen.failed
        );
        if trace {
            print_pause_windows(&shard.name_any(), &seen, switchovers);
        }
        pauses.extend(shard_pauses);
        failed += seen.failed;
        acked.extend(seen.acked.into_iter().map(ShardKeyValue::Int));
    }
    if trace {
        print_switchover_lines(&plane);
        print_server_logs(&plane);
    }
    let check = checker.check(&acked).await.expect("check");
    println!("rolling restart bench: {check}");
    assert_nothing_lost("rolling restart bench", &check, acked.len());
    let nodes = plan
        .spec
        .steps
        .iter()
        .filter(|s| s.action == "RestartNode")
        .count();
    println!(
        "rolling_restart_write_pause_ms: switchovers {} p50 {} p99 {} max {}",
        pauses.len(),
        quantile(&pauses, 0.5),
        quantile(&pauses, 0.99),
        pauses.iter().max().copied().unwrap_or_default()
    );
    println!(
        "in_place_restart_write_pause_ms (baseline): restarts {} p50 {} p99 {} max {}",
        baseline.len(),
        quantile(&baseline, 0.5),
        quantile(&baseline, 0.99),
        baseline.iter().max().copied().unwrap_or_default()
    );
    println!("rolling_restart_failed_writes: {failed}");
    println!(
        "rolling_restart_s_per_node: {:.1} ({nodes} nodes in {:.1} s, from the parameter change to the plan's success)",
        took.as_secs_f64() / nodes.max(1) as f64,
        took.as_secs_f64()
    );
}
