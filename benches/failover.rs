//! Failure detection, failover and leader takeover of the operator, on the local control
//! plane with stand-in agents (protocol-exact, no PostgreSQL): `cargo bench --bench failover`.
//!
//! Prints, over repeated runs: kill of a node's agent → node declared Offline (detection),
//! kill → every primary off the node at a bumped epoch and the routing map switched
//! (failover complete), kill of the leading operator process → the standby holds the Lease
//! and says it leads (takeover), and the API writes liveness costs per node per second in a
//! quiet cluster, read from kube-apiserver's own request counters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;
use shardplane::api::{DatabaseCluster, DatabaseNode, NodePhase, Shard, Table};
use shardplane::controller::{self, OperatorConfig};
use shardplane::sandbox::ControlPlane;
use shardplane::sandbox::stand_in_agent::StandInAgent;
use support::{free_addr, install_crds, liveness_write_count, machine, summary, wait_for};

mod support;

const NODES: [(&str, &str, &str); 6] = [
    ("n1", "r1", "r1-a"),
    ("n2", "r1", "r1-b"),
    ("n3", "r2", "r2-a"),
    ("n4", "r2", "r2-b"),
    ("n5", "r3", "r3-a"),
    ("n6", "r3", "r3-b"),
];
const SHARDS: i128 = 12;
const FAILOVER_RUNS: usize = 10;
const TAKEOVER_RUNS: usize = 5;

#[tokio::main]
async fn main() {
    let cp = ControlPlane::start().await.expect("control plane");
    let client = cp.client().await.unwrap();
    install_crds(&cp).await.expect("CRDs installed");

    // First, while nothing else of Shardplane runs: the API writes liveness costs.
    let (writes, baseline) = liveness_writes(&cp, &client).await;
    let (detect, failover) = failover_runs(&cp, &client).await;
    let takeover = takeover_runs(&cp, &client).await;

    println!("machine: {}", machine());
    println!("node_failure_detect_s      {}", summary(&detect));
    println!("failover_complete_s        {}", summary(&failover));
    println!("leader_takeover_s          {}", summary(&takeover));
    println!(
        "liveness_api_writes_per_node_per_s {writes:.3}  (baseline: the bare control plane's own writes to leases and databasenodes, {baseline:.3}/s, subtracted)"
    );
}

async fn namespace(client: &Client, name: &str) {
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

async fn create_cluster(client: &Client, ns: &str) {
    let cluster: DatabaseCluster = serde_json::from_value(json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseCluster", "metadata": {"name": "main"},
        "spec": {
            "regions": [{"name": "r1", "zones": ["r1-a", "r1-b"]}, {"name": "r2", "zones": ["r2-a", "r2-b"]}, {"name": "r3", "zones": ["r3-a", "r3-b"]}],
            "replicationFactor": 3,
            "approval": {"safe": "Automatic", "disruptive": "Automatic", "destructive": "Manual"},
            "rebalancing": {"enabled": false},
            "failureDetection": {"heartbeatIntervalMs": 200, "suspectAfterMs": 700, "deadAfterMs": 1400, "replaceReplicasAfterSeconds": 600}
        }
    }))
    .unwrap();
    Api::<DatabaseCluster>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cluster)
        .await
        .unwrap();
    for (name, region, zone) in NODES {
        let node: DatabaseNode = serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseNode", "metadata": {"name": name},
            "spec": {"cluster": "main", "region": region, "zone": zone, "address": "127.0.0.1",
                     "ports": {"first": 20000, "last": 20099}, "capacity": {"storageBytes": 100_000_000_000i64}}
        }))
        .unwrap();
        Api::<DatabaseNode>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &node)
            .await
            .unwrap();
    }
    let table: Table = serde_json::from_value(json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "Table", "metadata": {"name": "t"},
        "spec": {"cluster": "main", "shardKey": "id", "columns": [{"name": "id", "type": "bigint", "nullable": false}], "primaryKey": ["id"]}
    }))
    .unwrap();
    Api::<Table>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &table)
        .await
        .unwrap();
    let span = (1i128 << 64) / SHARDS;
    for i in 0..SHARDS {
        let mut range = json!({});
        if i > 0 {
            range["start"] = json!((i128::from(i64::MIN) + i * span) as i64);
        }
        if i < SHARDS - 1 {
            range["end"] = json!((i128::from(i64::MIN) + (i + 1) * span) as i64);
        }
        let shard: Shard = serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard", "metadata": {"name": format!("t-{i}")},
            "spec": {"table": "t", "range": range}
        }))
        .unwrap();
        Api::<Shard>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &shard)
            .await
            .unwrap();
    }
}

/// Whether `node` reaches `phase` within 30 s.
async fn reaches(nodes: &Api<DatabaseNode>, node: &str, phase: NodePhase) -> bool {
    wait_for(Duration::from_secs(30), || async {
        nodes.get(node).await.unwrap().status.and_then(|s| s.phase) == Some(phase)
    })
    .await
}

async fn serving(shards: &Api<Shard>, live: usize) -> bool {
    let Ok(list) = shards.list(&Default::default()).await else {
        return false;
    };
    list.items.iter().all(|s| {
        let st = s.status.clone().unwrap_or_default();
        st.primary.is_some() && st.ready_replicas.unwrap_or(0) as usize >= live.min(3) - 1
    }) && !list.items.is_empty()
}

async fn failover_runs(cp: &ControlPlane, client: &Client) -> (Vec<f64>, Vec<f64>) {
    let ns = "bench-failover";
    namespace(client, ns).await;
    create_cluster(client, ns).await;
    let addr = free_addr();
    let mut config = OperatorConfig::new("bench-op", ns);
    config.namespace = Some(ns.into());
    config.listen = addr;
    config.step_poll = Duration::from_millis(50);
    let operator_client = cp.client().await.unwrap();
    tokio::spawn(async move { controller::run(operator_client, config).await.unwrap() });
    let mut agents: BTreeMap<&str, StandInAgent> = NODES
        .iter()
        .map(|(n, _, _)| (*n, StandInAgent::start(client.clone(), ns, n, vec![addr])))
        .collect();
    let shards: Api<Shard> = Api::namespaced(client.clone(), ns);
    let nodes: Api<DatabaseNode> = Api::namespaced(client.clone(), ns);
    let tables: Api<Table> = Api::namespaced(client.clone(), ns);
    assert!(
        wait_for(Duration::from_secs(120), || serving(&shards, 6)).await,
        "never served"
    );

    let (mut detect, mut failover) = (Vec::new(), Vec::new());
    for run in 0..FAILOVER_RUNS {
        let before = shards.list(&Default::default()).await.unwrap().items;
        let leads = |n: &str| {
            before
                .iter()
                .filter(|s| {
                    s.status
                        .as_ref()
                        .and_then(|st| st.primary.as_ref())
                        .is_some_and(|p| p.node == n)
                })
                .count()
        };
        let victim = NODES
            .iter()
            .map(|(n, _, _)| *n)
            .max_by_key(|n| (leads(n), *n))
            .unwrap();
        let killed = Instant::now();
        agents.remove(victim);
        assert!(reaches(&nodes, victim, NodePhase::Offline).await);
        detect.push(killed.elapsed().as_secs_f64());
        assert!(
            wait_for(Duration::from_secs(60), || async {
                let routing = tables
                    .get("t")
                    .await
                    .unwrap()
                    .status
                    .and_then(|s| s.routing)
                    .unwrap_or_default();
                let list = shards.list(&Default::default()).await.unwrap().items;
                list.iter().all(|s| {
                    s.status
                        .as_ref()
                        .and_then(|st| st.primary.as_ref())
                        .is_some_and(|p| p.node != victim)
                }) && routing.ranges.len() == SHARDS as usize
                    && routing
                        .ranges
                        .iter()
                        .all(|r| r.primary.as_deref() != Some(victim))
            })
            .await,
            "run {run}: failover incomplete"
        );
        failover.push(killed.elapsed().as_secs_f64());
        // The node comes back (as a secondary everywhere) before the next run.
        agents.insert(
            victim,
            StandInAgent::start(client.clone(), ns, victim, vec![addr]),
        );
        assert!(reaches(&nodes, victim, NodePhase::Online).await);
        assert!(wait_for(Duration::from_secs(60), || serving(&shards, 6)).await);
        eprintln!(
            "run {run}: {victim} detected {:.2}s, failed over {:.2}s",
            detect[run], failover[run]
        );
    }
    (detect, failover)
}

fn spawn_operator(
    cp: &ControlPlane,
    ns: &str,
    identity: &str,
    addr: SocketAddr,
) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_shardplane"))
        .args([
            "operator",
            "--namespace",
            ns,
            "--identity",
            identity,
            "--listen",
            &addr.to_string(),
        ])
        .env("KUBECONFIG", cp.kubeconfig_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

async fn takeover_runs(cp: &ControlPlane, client: &Client) -> Vec<f64> {
    let ns = "bench-takeover";
    namespace(client, ns).await;
    create_cluster(client, ns).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let holder = || async {
        leases
            .get_opt("shardplane-operator")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
    };
    let mut samples = Vec::new();
    let mut leader = spawn_operator(cp, ns, "op-0", free_addr());
    assert!(
        wait_for(Duration::from_secs(30), || async {
            holder().await.as_deref() == Some("op-0")
        })
        .await
    );
    for run in 0..TAKEOVER_RUNS {
        let next = format!("op-{}", run + 1);
        let standby = spawn_operator(cp, ns, &next, free_addr());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let killed = Instant::now();
        leader.kill().unwrap();
        leader.wait().unwrap();
        assert!(
            wait_for(Duration::from_secs(30), || async {
                holder().await.as_deref() == Some(next.as_str())
            })
            .await
        );
        samples.push(killed.elapsed().as_secs_f64());
        eprintln!("takeover {run}: {:.2}s", samples[run]);
        leader = standby;
    }
    let _ = leader.kill();
    samples
}

/// API writes to Leases and DatabaseNodes in a quiet cluster, per node per second, less the
/// bare control plane's own rate of such writes (measured first, in the same run), and that
/// baseline in writes per second.
async fn liveness_writes(cp: &ControlPlane, client: &Client) -> (f64, f64) {
    let window = Duration::from_secs(30);
    let before = liveness_write_count(cp).await;
    tokio::time::sleep(window).await;
    let baseline = (liveness_write_count(cp).await - before) / window.as_secs_f64();

    let ns = "bench-quiet";
    namespace(client, ns).await;
    create_cluster(client, ns).await;
    let addr = free_addr();
    let mut config = OperatorConfig::new("quiet-op", ns);
    config.namespace = Some(ns.into());
    config.listen = addr;
    let operator_client = cp.client().await.unwrap();
    let operator =
        tokio::spawn(async move { controller::run(operator_client, config).await.unwrap() });
    let _agents: Vec<StandInAgent> = NODES
        .iter()
        .map(|(n, _, _)| StandInAgent::start(client.clone(), ns, n, vec![addr]))
        .collect();
    let shards: Api<Shard> = Api::namespaced(client.clone(), ns);
    assert!(wait_for(Duration::from_secs(120), || serving(&shards, 6)).await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = liveness_write_count(cp).await;
    tokio::time::sleep(window).await;
    let after = liveness_write_count(cp).await;
    operator.abort();
    let rate = (after - before) / window.as_secs_f64();
    ((rate - baseline) / NODES.len() as f64, baseline)
}
