//! The operator at scale: the real `shardplane operator` process against the local control
//! plane, loaded by a fleet of simulated agents (`shardplane::sandbox::fleet`: the real
//! heartbeat, Lease and report protocol, no PostgreSQL) — `cargo bench --bench scale`.
//!
//! Sized by `SCALE_NODES` (default 100, spread over 10 regions × 3 zones), `SCALE_SHARDS`
//! (default 1000, at replication factor 3), `SCALE_TABLES` (default: one per shard),
//! `SCALE_TIMEOUT_S` (default 900: how long placement may take before the partial figure is
//! printed), `SCALE_FAILOVER_RUNS` (default 3), `SCALE_LEASE_S` (the operator's leader Lease, default 4) and `SCALE_LAG_MS` (default 0: replicas in
//! sync at once; else new replicas catch up for that long). Prints `| key | value |` rows:
//! the API server's write ceiling on this machine (measured first, in the same run), time
//! until every shard is Serving with 3 in-sync replicas, the operator's RSS and CPU (from
//! /proc), API requests by verb, liveness writes per node per second once settled, a node
//! failover and the loss of a region. A figure not reached in time is printed as such.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use shardplane::api::shard::{ReplicaRole, ReplicaState};
use shardplane::api::{DatabaseNode, NodePhase, Shard};
use shardplane::sandbox::ControlPlane;
use shardplane::sandbox::fleet::{Fleet, FleetConfig, ReplicaModel};
use shardplane::sandbox::fleet_cluster::{FleetCluster, fully_serving};
use support::{
    free_addr, install_crds, is_write, label, liveness_write_count, machine, percentile,
    request_counters, request_seconds, summary, wait_for,
};

mod support;

const NAMESPACE: &str = "bench-scale";
/// Heartbeat interval, suspect after, dead after (ms): the defaults doubled, so a thousand
/// nodes' heartbeats on two cores do not make healthy nodes suspect.
const FAILURE_DETECTION_MS: (u64, u64, u64) = (1000, 2000, 3000);
const CEILING_WINDOW: Duration = Duration::from_secs(10);
const CEILING_WRITERS: usize = 64;
const SETTLED_WINDOW: Duration = Duration::from_secs(30);
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(300);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The rows printed at the end, in order.
#[derive(Default)]
struct Report(Vec<(String, String)>);

impl Report {
    fn row(&mut self, key: &str, value: impl std::fmt::Display) {
        eprintln!("{key}: {value}");
        self.0.push((key.to_owned(), value.to_string()));
    }

    fn print(&self) {
        println!("| key | value |");
        println!("|---|---|");
        for (key, value) in &self.0 {
            println!("| {key} | {value} |");
        }
    }
}

#[tokio::main]
async fn main() {
    let shards = env_or("SCALE_SHARDS", 1000) as usize;
    let layout = FleetCluster {
        regions: 10,
        zones_per_region: 3,
        nodes: env_or("SCALE_NODES", 100) as usize,
        tables: env_or("SCALE_TABLES", shards as u64).max(1) as usize,
        shards,
        failure_detection_ms: FAILURE_DETECTION_MS,
    };
    let timeout = Duration::from_secs(env_or("SCALE_TIMEOUT_S", 900));
    let failover_runs = env_or("SCALE_FAILOVER_RUNS", 3) as usize;
    let model = match env_or("SCALE_LAG_MS", 0) {
        0 => ReplicaModel::InSync,
        ms => ReplicaModel::Lagging {
            delay: Duration::from_millis(ms),
        },
    };
    let mut report = Report::default();
    report.row("machine", machine());
    report.row(
        "size",
        format!(
            "{} nodes in 10 regions x 3 zones, {} tables, {} shards at RF 3, {model:?}",
            layout.nodes, layout.tables, layout.shards
        ),
    );
    report.row(
        "failure_detection_ms",
        format!(
            "heartbeat {}, suspect {}, dead {}",
            FAILURE_DETECTION_MS.0, FAILURE_DETECTION_MS.1, FAILURE_DETECTION_MS.2
        ),
    );

    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client().await.unwrap();
    install_crds(&cp).await.expect("CRDs installed");
    let ceiling = write_ceiling(&client).await;
    report.row("api_write_ceiling_per_s", format!("{ceiling:.0}"));

    create_namespace(&client, NAMESPACE).await;
    layout.create_nodes(&client, NAMESPACE).await.unwrap();
    let addr = free_addr();
    let log = cp.work_dir().join("operator-scale.log");
    let mut operator = spawn_operator(&cp, addr, &log);
    let sampler = Sampler::start(operator.id());
    eprintln!("operator pid {}, log {}", operator.id(), log.display());
    let config = FleetConfig {
        model,
        heartbeat_interval: Duration::from_millis(FAILURE_DETECTION_MS.0),
        max_in_flight: 48,
    };
    let fleet = Fleet::start(
        client.clone(),
        NAMESPACE,
        layout.node_names(),
        vec![addr],
        config,
    );
    let nodes: Api<DatabaseNode> = Api::namespaced(client.clone(), NAMESPACE);
    let online = wait_for(Duration::from_secs(120), || async {
        count_online(&nodes).await == layout.nodes
    })
    .await;
    report.row("nodes_online_before_shards", online);

    let store = watch_shards(&client);
    let requests_before = api_requests(&cp).await;
    let seconds_before = api_request_seconds(&cp).await;
    let cpu_before = sampler.cpu_s();
    let started = Instant::now();
    layout.create_tables(&client, NAMESPACE).await.unwrap();
    report.row(
        "create_tables_and_shards_s",
        format!("{:.1}", started.elapsed().as_secs_f64()),
    );
    let mut last_progress = Instant::now();
    let all_serving = loop {
        let serving = store.state().iter().filter(|s| fully_serving(s)).count();
        if serving == layout.shards {
            break true;
        }
        if started.elapsed() > timeout {
            report.row(
                "scale_all_serving_s",
                format!(
                    "not reached: {serving} of {} shards serving after {:.0} s",
                    layout.shards,
                    started.elapsed().as_secs_f64()
                ),
            );
            break false;
        }
        if last_progress.elapsed() > Duration::from_secs(30) {
            last_progress = Instant::now();
            eprintln!(
                "{:.0} s: {serving} of {} serving; operator RSS {:.0} MiB, {} leadership losses; fleet {:?}",
                started.elapsed().as_secs_f64(),
                layout.shards,
                sampler.rss_mib(),
                leadership_losses(&log),
                fleet.stats()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let placement = started.elapsed().as_secs_f64();
    if all_serving {
        report.row("scale_all_serving_s", format!("{placement:.1}"));
    }
    report.row(
        "operator_cpu_s_placement",
        format!("{:.1}", sampler.cpu_s() - cpu_before),
    );
    let requests = difference(&requests_before, &api_requests(&cp).await);
    let by_verb = per_verb(&requests);
    let writes: f64 = by_verb
        .iter()
        .filter(|(verb, _)| is_write(verb))
        .map(|(_, n)| n)
        .sum();
    report.row(
        "api_requests_placement",
        by_verb
            .iter()
            .filter(|(_, n)| **n > 0.0)
            .map(|(verb, n)| format!("{verb} {n:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    report.row(
        "api_requests_placement_busiest",
        largest(&requests, 8)
            .map(|((verb, resource), n)| format!("{verb} {resource} {n:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    // Where the API server's time went: requests by the seconds they took in all (the
    // server's CPU is what limits placement at the seed's size).
    let seconds = difference(&seconds_before, &api_request_seconds(&cp).await);
    report.row(
        "api_request_seconds_placement_busiest",
        largest(&seconds, 8)
            .map(|(key @ (verb, resource), s)| {
                let n = requests.get(key).copied().unwrap_or(0.0);
                format!(
                    "{verb} {resource} {s:.0} s ({n:.0}, {:.0} ms each)",
                    1000.0 * s / n.max(1.0)
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
    );
    report.row(
        "api_writes_per_s_placement",
        format!(
            "{:.0} ({:.0}% of the ceiling)",
            writes / placement,
            100.0 * writes / placement / ceiling
        ),
    );
    report.row("fleet_writes_placement", format!("{:?}", fleet.stats()));

    // The settled cluster: no plan runs, only liveness (unless placement timed out).
    let unsettled = if all_serving {
        ""
    } else {
        " (placement still running)"
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let liveness_before = liveness_write_count(&cp).await;
    let all_before = api_requests(&cp).await;
    let cpu_before = sampler.cpu_s();
    let window_start = Instant::now();
    tokio::time::sleep(SETTLED_WINDOW).await;
    let window = window_start.elapsed().as_secs_f64();
    let liveness = (liveness_write_count(&cp).await - liveness_before) / window;
    let settled_writes: f64 = per_verb(&difference(&all_before, &api_requests(&cp).await))
        .iter()
        .filter(|(verb, _)| is_write(verb))
        .map(|(_, n)| n)
        .sum::<f64>()
        / window;
    report.row(
        "liveness_api_writes_per_node_per_s",
        format!("{:.3}{unsettled}", liveness / layout.nodes as f64),
    );
    report.row(
        "api_writes_per_s_settled",
        format!(
            "{settled_writes:.0} ({:.1}% of the ceiling){unsettled}",
            100.0 * settled_writes / ceiling
        ),
    );
    report.row(
        "operator_cpu_s_per_s_settled",
        format!("{:.3}{unsettled}", (sampler.cpu_s() - cpu_before) / window),
    );
    report.row(
        "operator_rss_mib_steady",
        format!("{:.0}{unsettled}", sampler.rss_mib()),
    );
    report.row("operator_rss_mib_peak", format!("{:.0}", sampler.hwm_mib()));

    if all_serving {
        node_failovers(&mut report, &fleet, &store, &nodes, failover_runs).await;
        region_loss(&mut report, &layout, &fleet, &store).await;
    } else {
        report.row(
            "scale_node_failover_s_p99",
            "skipped: placement did not finish",
        );
        report.row(
            "region_loss_primaries_restored_s",
            "skipped: placement did not finish",
        );
    }
    report.row(
        "operator_rss_mib_peak_end",
        format!("{:.0}", sampler.hwm_mib()),
    );
    report.row("operator_cpu_s_total", format!("{:.1}", sampler.cpu_s()));
    report.row("operator_leadership_losses", leadership_losses(&log));
    if let Some(fleet_process) = read_proc(std::process::id()) {
        report.row(
            "fleet_process_cpu_s_total",
            format!(
                "{:.1} (this process: the fleet and the bench's watch)",
                fleet_process.cpu_s
            ),
        );
    }
    report.row("fleet_writes_total", format!("{:?}", fleet.stats()));
    for (name, pid) in cp.pids() {
        if let Some(sample) = read_proc(pid) {
            report.row(
                &format!("{name}_cpu_s_total"),
                format!(
                    "{:.1} (RSS {:.0} MiB)",
                    sample.cpu_s,
                    sample.rss_kib as f64 / 1024.0
                ),
            );
        }
    }
    let _ = operator.kill();
    let _ = operator.wait();
    report.print();
}

/// Kills the live node holding the most primaries, times it to Offline and until every
/// primary it held serves elsewhere at a higher epoch; revives it and waits for the cluster
/// to serve fully again before the next run.
async fn node_failovers(
    report: &mut Report,
    fleet: &Fleet,
    store: &Store<Shard>,
    nodes: &Api<DatabaseNode>,
    runs: usize,
) {
    let (mut detect, mut moved) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let shards = store.state();
        let mut led: BTreeMap<String, usize> = BTreeMap::new();
        for shard in &shards {
            if let Some(p) = shard.status.as_ref().and_then(|s| s.primary.as_ref()) {
                *led.entry(p.node.clone()).or_default() += 1;
            }
        }
        let Some((victim, _)) = led.into_iter().max_by_key(|(n, count)| (*count, n.clone())) else {
            break;
        };
        let affected = primaries_on(&shards, |node| node == victim);
        let killed = Instant::now();
        fleet.kill(&victim);
        let offline = wait_for(FAILOVER_TIMEOUT, || async {
            nodes.get(&victim).await.ok().and_then(|n| n.status?.phase) == Some(NodePhase::Offline)
        })
        .await;
        if offline {
            detect.push(killed.elapsed().as_secs_f64());
        }
        let done = wait_for(FAILOVER_TIMEOUT, || async {
            restored(&store.state(), &affected, |node| node != victim)
        })
        .await;
        if done {
            moved.push(killed.elapsed().as_secs_f64());
        }
        eprintln!(
            "failover run {run}: {victim} ({} primaries) offline {offline} {:?}, moved {done} {:.1} s",
            affected.len(),
            detect.last(),
            killed.elapsed().as_secs_f64()
        );
        fleet.revive(&victim);
        let healed = wait_for(FAILOVER_TIMEOUT, || async {
            store.state().iter().all(|s| fully_serving(s))
        })
        .await;
        if !done || !healed {
            report.row(
                "scale_node_failover_note",
                format!("run {run}: moved {done}, fully serving again {healed}; stopped"),
            );
            break;
        }
    }
    report.row("scale_node_detect_s", summary(&detect));
    report.row("scale_node_failover_s", summary(&moved));
    report.row(
        "scale_node_failover_s_p99",
        if moved.len() == runs {
            format!("{:.2}", percentile(&moved, 0.99))
        } else {
            format!("not reached in {} of {runs} runs", runs - moved.len())
        },
    );
}

/// Kills every node of region `r0`; the time until every shard whose primary was there has
/// an in-sync primary outside it.
async fn region_loss(
    report: &mut Report,
    layout: &FleetCluster,
    fleet: &Fleet,
    store: &Store<Shard>,
) {
    let region: BTreeSet<String> = layout
        .node_names()
        .into_iter()
        .filter(|n| layout.region_of(n).as_deref() == Some("r0"))
        .collect();
    let affected = primaries_on(&store.state(), |node| region.contains(node));
    let killed = Instant::now();
    fleet.kill_many(region.iter().map(String::as_str));
    let done = wait_for(Duration::from_secs(600), || async {
        restored(&store.state(), &affected, |node| !region.contains(node))
    })
    .await;
    let elapsed = killed.elapsed().as_secs_f64();
    let state = store.state();
    let restored_count = affected
        .iter()
        .filter(|(name, epoch)| {
            restored(&state, &[(name.clone(), *epoch)], |node| {
                !region.contains(node)
            })
        })
        .count();
    report.row(
        "region_loss_primaries_restored_s",
        if done {
            format!(
                "{elapsed:.1} ({} nodes, {} primaries)",
                region.len(),
                affected.len()
            )
        } else {
            format!(
                "not reached: {restored_count} of {} primaries restored after {elapsed:.0} s",
                affected.len()
            )
        },
    );
}

/// The shards whose primary is on a node `on` accepts, with the primary's epoch.
fn primaries_on(shards: &[Arc<Shard>], on: impl Fn(&str) -> bool) -> Vec<(String, i64)> {
    shards
        .iter()
        .filter_map(|s| {
            let p = s.status.as_ref()?.primary.as_ref()?;
            on(&p.node).then(|| (s.name_any(), p.epoch))
        })
        .collect()
}

/// Whether every shard of `affected` has a primary at a higher epoch on a node `elsewhere`
/// accepts, reporting in sync as primary at that epoch.
fn restored(
    shards: &[Arc<Shard>],
    affected: &[(String, i64)],
    elsewhere: impl Fn(&str) -> bool,
) -> bool {
    let by_name: BTreeMap<String, &Shard> =
        shards.iter().map(|s| (s.name_any(), s.as_ref())).collect();
    affected.iter().all(|(name, epoch)| {
        by_name
            .get(name)
            .and_then(|s| s.status.as_ref())
            .is_some_and(|status| {
                status.primary.as_ref().is_some_and(|p| {
                    p.epoch > *epoch
                        && elsewhere(&p.node)
                        && status.replicas.iter().any(|r| {
                            r.node == p.node
                                && r.role == ReplicaRole::Primary
                                && r.state == ReplicaState::InSync
                                && r.epoch == Some(p.epoch)
                        })
                })
            })
    })
}

/// A watch-fed cache of the bench namespace's Shards (a LIST of thousands every poll would
/// itself load the API server).
fn watch_shards(client: &Client) -> Store<Shard> {
    let (store, writer) = reflector::store();
    let api: Api<Shard> = Api::namespaced(client.clone(), NAMESPACE);
    let events = reflector::reflector(
        writer,
        watcher::watcher(api, watcher::Config::default()).default_backoff(),
    );
    tokio::spawn(events.for_each(|_| async {}));
    store
}

async fn count_online(nodes: &Api<DatabaseNode>) -> usize {
    nodes.list(&Default::default()).await.map_or(0, |list| {
        list.items
            .iter()
            .filter(|n| n.status.as_ref().and_then(|s| s.phase) == Some(NodePhase::Online))
            .count()
    })
}

async fn create_namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

/// Writes per second the API server sustains on this machine: `CEILING_WRITERS` tasks each
/// patching its own ConfigMap in a loop for `CEILING_WINDOW`.
async fn write_ceiling(client: &Client) -> f64 {
    let ns = "bench-ceiling";
    create_namespace(client, ns).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for i in 0..CEILING_WRITERS {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": format!("w-{i}")}, "data": {"n": "0"}}),
        )
        .unwrap();
        api.create(&PostParams::default(), &cm).await.unwrap();
    }
    let deadline = Instant::now() + CEILING_WINDOW;
    let started = Instant::now();
    let writers = (0..CEILING_WRITERS).map(|i| {
        let api = api.clone();
        tokio::spawn(async move {
            let mut written = 0u64;
            while Instant::now() < deadline {
                let patch = json!({"data": {"n": written.to_string()}});
                if api
                    .patch(
                        &format!("w-{i}"),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await
                    .is_ok()
                {
                    written += 1;
                }
            }
            written
        })
    });
    let total: u64 = futures::future::join_all(writers)
        .await
        .into_iter()
        .map(|w| w.unwrap_or(0))
        .sum();
    total as f64 / started.elapsed().as_secs_f64()
}

fn spawn_operator(
    cp: &ControlPlane,
    addr: SocketAddr,
    log: &std::path::Path,
) -> std::process::Child {
    let out = std::fs::File::create(log).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_shardplane"))
        .args([
            "operator",
            "--namespace",
            NAMESPACE,
            "--identity",
            "scale-op",
        ])
        .args(["--listen", &addr.to_string()])
        .args([
            "--lease-duration-seconds",
            &env_or("SCALE_LEASE_S", 4).to_string(),
        ])
        .env("KUBECONFIG", cp.kubeconfig_path())
        .env(
            "RUST_LOG",
            std::env::var("SCALE_OPERATOR_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap()
}

/// How often the operator lost (or could no longer prove) leadership and stopped every
/// reconciler, from its log: a sole replica never should, so each one is time lost to load.
fn leadership_losses(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("lost leadership"))
        .count()
}

/// `apiserver_request_total` summed by verb and resource.
async fn api_requests(cp: &ControlPlane) -> BTreeMap<(String, String), f64> {
    by_verb_and_resource(request_counters(cp).await)
}

/// The seconds requests took (`apiserver_request_duration_seconds_sum`) by verb and
/// resource (with its subresource: `plans/status`); watches excluded (they last).
async fn api_request_seconds(cp: &ControlPlane) -> BTreeMap<(String, String), f64> {
    let lines = request_seconds(cp).await.into_iter();
    by_verb_and_resource(lines.filter(|(labels, _)| label(labels, "verb") != Some("WATCH")))
}

/// Series summed by their verb and resource (and subresource, where one is named).
fn by_verb_and_resource(
    series: impl IntoIterator<Item = (String, f64)>,
) -> BTreeMap<(String, String), f64> {
    let mut sums = BTreeMap::new();
    for (labels, value) in series {
        if let Some(verb) = label(&labels, "verb") {
            let mut resource = label(&labels, "resource").unwrap_or("").to_owned();
            if let Some(sub) = label(&labels, "subresource").filter(|s| !s.is_empty()) {
                resource = format!("{resource}/{sub}");
            }
            *sums.entry((verb.to_owned(), resource)).or_default() += value;
        }
    }
    sums
}

/// The `n` largest positive values of `sums`, largest first, with their keys.
fn largest<K>(sums: &BTreeMap<K, f64>, n: usize) -> impl Iterator<Item = (&K, f64)> {
    let mut positive: Vec<(&K, f64)> = sums
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| (k, *v))
        .collect();
    positive.sort_by(|a, b| b.1.total_cmp(&a.1));
    positive.into_iter().take(n)
}

fn per_verb(counts: &BTreeMap<(String, String), f64>) -> BTreeMap<String, f64> {
    let mut by_verb = BTreeMap::new();
    for ((verb, _), n) in counts {
        *by_verb.entry(verb.clone()).or_default() += n;
    }
    by_verb
}

fn difference<K: Ord + Clone>(
    before: &BTreeMap<K, f64>,
    after: &BTreeMap<K, f64>,
) -> BTreeMap<K, f64> {
    after
        .iter()
        .map(|(key, n)| (key.clone(), n - before.get(key).copied().unwrap_or(0.0)))
        .collect()
}

/// The operator's RSS and CPU, read from /proc every second.
struct Sampler {
    last: Arc<Mutex<Option<ProcSample>>>,
}

#[derive(Clone, Copy)]
struct ProcSample {
    rss_kib: u64,
    hwm_kib: u64,
    cpu_s: f64,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let last = Arc::new(Mutex::new(read_proc(pid)));
        let writer = last.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match read_proc(pid) {
                    Some(sample) => *writer.lock().unwrap() = Some(sample),
                    None => return,
                }
            }
        });
        Sampler { last }
    }

    fn get(&self) -> ProcSample {
        self.last.lock().unwrap().unwrap_or(ProcSample {
            rss_kib: 0,
            hwm_kib: 0,
            cpu_s: 0.0,
        })
    }

    fn rss_mib(&self) -> f64 {
        self.get().rss_kib as f64 / 1024.0
    }

    fn hwm_mib(&self) -> f64 {
        self.get().hwm_kib as f64 / 1024.0
    }

    fn cpu_s(&self) -> f64 {
        self.get().cpu_s
    }
}

/// VmRSS and VmHWM from /proc/PID/status, utime + stime from /proc/PID/stat.
fn read_proc(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ProcSample {
        rss_kib: kib("VmRSS:")?,
        hwm_kib: kib("VmHWM:")?,
        cpu_s: ticks / per_s,
    })
}
