//! The operator against a real API server, with test agents that follow the agents'
//! protocol (heartbeat the operator over HTTP; act on `Shard.status.desiredReplicas`;
//! report their replicas in `Shard.status.replicas` under their own field manager) but run
//! no PostgreSQL: placement across zones, failover of a dead node, approval by annotation.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use shardplane::api::plan::PlanPhase;
use shardplane::api::shard::ReplicaRole;
use shardplane::api::{DatabaseCluster, DatabaseNode, NodePhase, Plan, Shard, Table};
use shardplane::controller::{self, HEARTBEAT_PATH, Heartbeat, OperatorConfig};
use support::{TestEnv, eventually, test_env};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

async fn env_with_crds() -> TestEnv {
    static INSTALLED: OnceCell<()> = OnceCell::const_new();
    let env = test_env().await;
    INSTALLED
        .get_or_init(|| async {
            let crds_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");
            let out = env
                .kubectl(["apply", "--server-side", "-f", crds_dir])
                .await;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let out = env
                .kubectl([
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    "crd",
                    "--all",
                ])
                .await;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let _: Api<CustomResourceDefinition> = Api::all(env.client.clone());
        })
        .await;
    env
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Runs an operator in this process, scoped to one namespace; aborting the task is a crash.
fn start_operator(env: &TestEnv, identity: &str) -> (JoinHandle<()>, SocketAddr) {
    let addr = free_addr();
    let mut config = OperatorConfig::new(identity, env.namespace.clone());
    config.namespace = Some(env.namespace.clone());
    config.listen = addr;
    config.lease_duration = Duration::from_secs(3);
    config.step_poll = Duration::from_millis(100);
    let client = env.client.clone();
    let task = tokio::spawn(async move {
        controller::run(client, config).await.unwrap();
    });
    (task, addr)
}

/// A stand-in for a node's agent: heartbeats, and reports every replica the operator wants
/// on its node as in sync, in the role and at the epoch it is asked for.
struct TestAgent {
    task: JoinHandle<()>,
}

impl TestAgent {
    fn start(client: Client, namespace: &str, node: &str, operators: Vec<SocketAddr>) -> Self {
        let namespace = namespace.to_string();
        let node = node.to_string();
        let task = tokio::spawn(async move {
            let shards: Api<Shard> = Api::namespaced(client, &namespace);
            let manager = format!("shardplane-agent-{node}");
            let beat = Heartbeat {
                namespace: namespace.clone(),
                node: node.clone(),
                agent_epoch: 1,
            };
            loop {
                for operator in &operators {
                    let _ = post_heartbeat(*operator, &beat).await;
                }
                if let Ok(list) = shards.list(&Default::default()).await {
                    for shard in list {
                        let status = shard.status.clone().unwrap_or_default();
                        let desired = status.desired_replicas.iter().find(|d| d.node == node);
                        let reported = status.replicas.iter().find(|r| r.node == node);
                        let epoch = status.primary.as_ref().map_or(0, |p| p.epoch);
                        let entry = desired.map(|d| {
                            json!({"node": node, "role": d.role, "state": "InSync", "lagBytes": 0,
                                   "epoch": epoch, "endpoint": format!("127.0.0.1:{}", 20000 + epoch)})
                        });
                        let same = match (reported, desired) {
                            (Some(r), Some(d)) => r.role == d.role && r.epoch == Some(epoch),
                            (None, None) => true,
                            _ => false,
                        };
                        if same {
                            continue;
                        }
                        let replicas: Vec<_> = entry.into_iter().collect();
                        let patch = json!({"apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
                                           "metadata": {"name": shard.name_any()},
                                           "status": {"replicas": replicas}});
                        let _ = shards
                            .patch_status(
                                &shard.name_any(),
                                &PatchParams::apply(&manager).force(),
                                &Patch::Apply(patch),
                            )
                            .await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        TestAgent { task }
    }

    /// The node dies: no more heartbeats, no more reports.
    fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A minimal HTTP/1.1 POST of a heartbeat, as an agent sends it.
async fn post_heartbeat(operator: SocketAddr, beat: &Heartbeat) -> std::io::Result<String> {
    let body = serde_json::to_string(beat)?;
    let mut stream = tokio::net::TcpStream::connect(operator).await?;
    let request = format!(
        "POST {HEARTBEAT_PATH} HTTP/1.1\r\nHost: {operator}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

/// Five nodes in five zones of three regions.
const NODES: [(&str, &str, &str); 5] = [
    ("n1", "r1", "r1-a"),
    ("n2", "r1", "r1-b"),
    ("n3", "r2", "r2-a"),
    ("n4", "r2", "r2-b"),
    ("n5", "r3", "r3-a"),
];

async fn create_cluster(env: &TestEnv, approval: &str) {
    let cluster: DatabaseCluster = serde_json::from_value(json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseCluster",
        "metadata": {"name": "main"},
        "spec": {
            "regions": [
                {"name": "r1", "zones": ["r1-a", "r1-b"]},
                {"name": "r2", "zones": ["r2-a", "r2-b"]},
                {"name": "r3", "zones": ["r3-a"]}
            ],
            "replicationFactor": 3,
            "approval": {"safe": approval, "disruptive": approval, "destructive": "Manual"},
            "rebalancing": {"enabled": false},
            "failureDetection": {"heartbeatIntervalMs": 200, "suspectAfterMs": 600, "deadAfterMs": 1200, "replaceReplicasAfterSeconds": 1}
        }
    }))
    .unwrap();
    env.api::<DatabaseCluster>()
        .create(&PostParams::default(), &cluster)
        .await
        .unwrap();
    for (name, region, zone) in NODES {
        let node: DatabaseNode = serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseNode",
            "metadata": {"name": name},
            "spec": {"cluster": "main", "region": region, "zone": zone, "address": "127.0.0.1",
                     "ports": {"first": 20000, "last": 20099}, "capacity": {"storageBytes": 100_000_000_000i64}}
        }))
        .unwrap();
        env.api::<DatabaseNode>()
            .create(&PostParams::default(), &node)
            .await
            .unwrap();
    }
    let table: Table = serde_json::from_value(json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "Table",
        "metadata": {"name": "orders"},
        "spec": {"cluster": "main", "shardKey": "id", "columns": [{"name": "id", "type": "bigint", "nullable": false}], "primaryKey": ["id"]}
    }))
    .unwrap();
    env.api::<Table>()
        .create(&PostParams::default(), &table)
        .await
        .unwrap();
    // Eight shards tiling the key space.
    let step = 1i128 << 61;
    for i in 0..8i128 {
        let start = (i128::from(i64::MIN) + i * step) as i64;
        let end = (i128::from(i64::MIN) + (i + 1) * step) as i64;
        let mut range = json!({});
        if i > 0 {
            range["start"] = json!(start);
        }
        if i < 7 {
            range["end"] = json!(end);
        }
        let shard: Shard = serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
            "metadata": {"name": format!("orders-{i}")},
            "spec": {"table": "orders", "range": range}
        }))
        .unwrap();
        env.api::<Shard>()
            .create(&PostParams::default(), &shard)
            .await
            .unwrap();
    }
}

fn start_agents(env: &TestEnv, operators: Vec<SocketAddr>) -> Vec<(String, TestAgent)> {
    NODES
        .iter()
        .map(|(name, _, _)| {
            (
                name.to_string(),
                TestAgent::start(env.client.clone(), &env.namespace, name, operators.clone()),
            )
        })
        .collect()
}

/// Whether every shard has 3 in-sync replicas and a serving primary.
async fn all_serving(shards: &Api<Shard>) -> bool {
    let Ok(list) = shards.list(&Default::default()).await else {
        return false;
    };
    list.items.len() == 8
        && list.items.iter().all(|s| {
            let st = s.status.clone().unwrap_or_default();
            st.ready_replicas == Some(3)
                && st.primary.is_some()
                && format!("{:?}", st.phase) == "Some(Serving)"
        })
}

fn region_of(node: &str) -> &'static str {
    NODES
        .iter()
        .find(|(n, _, _)| *n == node)
        .map(|(_, r, _)| *r)
        .unwrap()
}

fn zone_of(node: &str) -> &'static str {
    NODES
        .iter()
        .find(|(n, _, _)| *n == node)
        .map(|(_, _, z)| *z)
        .unwrap()
}

#[tokio::test]
async fn placement_honours_zones_and_regions_and_routing_follows() {
    let env = env_with_crds().await;
    create_cluster(&env, "Automatic").await;
    let (operator, addr) = start_operator(&env, "op-a");
    let _agents = start_agents(&env, vec![addr]);
    let shards: Api<Shard> = env.api();
    assert!(
        eventually(Duration::from_secs(60), || all_serving(&shards)).await,
        "shards never all served"
    );

    for shard in shards.list(&Default::default()).await.unwrap() {
        let status = shard.status.unwrap();
        let nodes: Vec<&str> = status
            .desired_replicas
            .iter()
            .map(|r| r.node.as_str())
            .collect();
        let regions: BTreeSet<&str> = nodes.iter().map(|n| region_of(n)).collect();
        let zones: BTreeSet<&str> = nodes.iter().map(|n| zone_of(n)).collect();
        assert_eq!(
            regions.len(),
            3,
            "{}: replicas {nodes:?} not spread across the 3 regions",
            shard.metadata.name.unwrap()
        );
        assert_eq!(zones.len(), 3);
        assert_eq!(
            status
                .desired_replicas
                .iter()
                .filter(|r| r.role == ReplicaRole::Primary)
                .count(),
            1
        );
    }

    let tables: Api<Table> = env.api();
    let routed = eventually(Duration::from_secs(20), || async {
        let table = tables.get("orders").await.unwrap();
        let routing = table.status.and_then(|s| s.routing).unwrap_or_default();
        routing.ranges.len() == 8
            && routing
                .ranges
                .iter()
                .all(|r| r.primary.is_some() && r.epoch == 1 && r.endpoint.is_some())
    })
    .await;
    assert!(routed, "routing map never listed 8 ranges with primaries");

    let out = env.kubectl(["get", "shards"]).await;
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains("Serving")).count(),
        8,
        "{table}"
    );
    let plans: Api<Plan> = env.api();
    let done = plans.list(&Default::default()).await.unwrap();
    assert!(
        done.items
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.phase) == Some(PlanPhase::Succeeded))
    );
    operator.abort();
}

#[tokio::test]
async fn a_dead_node_fails_over_with_bumped_epochs() {
    let env = env_with_crds().await;
    create_cluster(&env, "Automatic").await;
    let (operator, addr) = start_operator(&env, "op-a");
    let agents = start_agents(&env, vec![addr]);
    let shards: Api<Shard> = env.api();
    assert!(
        eventually(Duration::from_secs(60), || all_serving(&shards)).await,
        "shards never all served"
    );

    // The node leading the most shards dies.
    let before = shards.list(&Default::default()).await.unwrap().items;
    let mut led: Vec<(usize, String)> = NODES
        .iter()
        .map(|(n, _, _)| {
            (
                before
                    .iter()
                    .filter(|s| s.status.as_ref().unwrap().primary.as_ref().unwrap().node == *n)
                    .count(),
                n.to_string(),
            )
        })
        .collect();
    led.sort();
    let victim = led.last().unwrap().1.clone();
    assert!(led.last().unwrap().0 > 0);
    let killed = Instant::now();
    agents.iter().find(|(n, _)| *n == victim).unwrap().1.kill();

    let nodes: Api<DatabaseNode> = env.api();
    let detected = eventually(Duration::from_secs(10), || async {
        nodes
            .get(&victim)
            .await
            .unwrap()
            .status
            .and_then(|s| s.phase)
            == Some(NodePhase::Offline)
    })
    .await;
    let detection = killed.elapsed();
    assert!(detected, "{victim} never declared Offline");

    let failed_over = eventually(Duration::from_secs(30), || async {
        let now = shards.list(&Default::default()).await.unwrap().items;
        now.iter().all(|s| {
            let st = s.status.clone().unwrap_or_default();
            let p = st.primary.clone().unwrap();
            let was = before
                .iter()
                .find(|b| b.name_any() == s.name_any())
                .unwrap()
                .status
                .clone()
                .unwrap()
                .primary
                .unwrap();
            p.node != victim
                && (was.node != victim || p.epoch == was.epoch + 1)
                && st.ready_replicas.unwrap_or(0) >= 2
        })
    })
    .await;
    let failover = killed.elapsed();
    assert!(
        failed_over,
        "primaries never left {victim} with bumped epochs"
    );
    eprintln!(
        "detection {:.2}s, failover {:.2}s",
        detection.as_secs_f64(),
        failover.as_secs_f64()
    );

    let tables: Api<Table> = env.api();
    let rerouted = eventually(Duration::from_secs(10), || async {
        let routing = tables
            .get("orders")
            .await
            .unwrap()
            .status
            .and_then(|s| s.routing)
            .unwrap_or_default();
        routing.ranges.len() == 8
            && routing
                .ranges
                .iter()
                .all(|r| r.primary.as_deref() != Some(victim.as_str()))
    })
    .await;
    assert!(rerouted, "routing map still points at {victim}");
    let plans: Api<Plan> = env.api();
    let failover_plan = plans
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|p| format!("{:?}", p.spec.purpose) == "Failover")
        .expect("a failover plan");
    assert_eq!(failover_plan.spec.target.name, victim);
    operator.abort();
}

#[tokio::test]
async fn manual_approval_by_annotation_checks_the_hash() {
    let env = env_with_crds().await;
    create_cluster(&env, "Manual").await;
    let (operator, addr) = start_operator(&env, "op-a");
    let _agents = start_agents(&env, vec![addr]);
    let plans: Api<Plan> = env.api();
    let awaiting = eventually(Duration::from_secs(30), || async {
        plans
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.phase) == Some(PlanPhase::AwaitingApproval))
    })
    .await;
    assert!(awaiting, "the placement plan never awaited approval");
    // Give node liveness a moment to settle, so the plan awaiting approval is final.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let listed = plans.list(&Default::default()).await.unwrap().items;
    let awaiting: Vec<&Plan> = listed
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase) == Some(PlanPhase::AwaitingApproval))
        .collect();
    assert_eq!(
        awaiting.len(),
        1,
        "exactly one plan awaits approval: {:?}",
        listed
            .iter()
            .map(|p| (p.name_any(), p.status.as_ref().and_then(|s| s.phase)))
            .collect::<Vec<_>>()
    );
    let plan = awaiting[0].clone();
    let clusters: Api<DatabaseCluster> = env.api();
    let annotate = |hash: String| {
        let clusters = clusters.clone();
        async move {
            let patch = json!({"metadata": {"annotations": {"shardplane.io/approve-plan": hash}}});
            clusters
                .patch("main", &PatchParams::default(), &Patch::Merge(patch))
                .await
                .unwrap();
        }
    };
    annotate("f".repeat(64)).await;
    let refused = eventually(Duration::from_secs(10), || async {
        let p = plans.get(&plan.name_any()).await.unwrap();
        p.status.unwrap_or_default().conditions.iter().any(|c| {
            c.type_ == "Approved"
                && c.reason == "HashMismatch"
                && c.message.contains(&plan.spec.hash)
        })
    })
    .await;
    assert!(
        refused,
        "a wrong hash was not refused with a HashMismatch condition"
    );
    assert_eq!(
        plans
            .get(&plan.name_any())
            .await
            .unwrap()
            .status
            .unwrap()
            .phase,
        Some(PlanPhase::AwaitingApproval)
    );

    annotate(plan.spec.hash.clone()).await;
    let ran = eventually(Duration::from_secs(60), || async {
        let p = plans.get(&plan.name_any()).await.unwrap();
        p.status.unwrap_or_default().phase == Some(PlanPhase::Succeeded)
    })
    .await;
    assert!(ran, "the approved plan did not run to completion");
    let approved_by = plans
        .get(&plan.name_any())
        .await
        .unwrap()
        .status
        .unwrap()
        .approved_by
        .unwrap();
    assert_eq!(approved_by, "annotation:DatabaseCluster/main");
    operator.abort();
}
