//! The operator against a real API server, with stand-in agents that follow the agents'
//! protocol (heartbeat the operator over HTTP, renew a node Lease, act on
//! `Shard.status.desiredReplicas`, report their replicas in `Shard.status.replicas` under
//! their own field manager) but run no PostgreSQL: placement across zones, failover of a
//! dead node, approval by annotation, a drain whose operator is SIGKILLed at every step,
//! decommissioning, rebalancing onto new nodes, and leader takeover; the operator process's
//! log lines (as `RUST_LOG` asks) and decision latencies.

mod fixtures;
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fixtures::{free_addr, start_operator};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use shardplane::api::plan::{PlanPhase, PlanPurpose};
use shardplane::api::shard::ReplicaRole;
use shardplane::api::{DatabaseCluster, DatabaseNode, NodePhase, Plan, Shard, Table};
use shardplane::controller::{self, OperatorConfig};
use shardplane::protocol::OPERATOR_LEASE;
use shardplane::sandbox::stand_in_agent::StandInAgent;
use support::operator::{
    OperatorProcess, assert_no_step_repeated, finish_plan_killing_operator, leader_gauge,
    lease_holder, newest_plan, scrape,
};
use support::{TestEnv, env_with_crds, eventually};
use tokio::task::JoinHandle;

/// Five nodes in five zones of three regions.
const NODES: [(&str, &str, &str); 5] = [
    ("n1", "r1", "r1-a"),
    ("n2", "r1", "r1-b"),
    ("n3", "r2", "r2-a"),
    ("n4", "r2", "r2-b"),
    ("n5", "r3", "r3-a"),
];

async fn create_node(env: &TestEnv, name: &str, region: &str, zone: &str) {
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

/// The `main` cluster and the [`NODES`].
async fn create_cluster_and_nodes(env: &TestEnv, approval: &str) {
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
        create_node(env, name, region, zone).await;
    }
}

/// Whether every one of the [`NODES`] is Online.
async fn all_online(nodes: &Api<DatabaseNode>) -> bool {
    nodes.list(&Default::default()).await.is_ok_and(|list| {
        list.items.len() == NODES.len()
            && list
                .items
                .iter()
                .all(|n| n.status.as_ref().and_then(|s| s.phase) == Some(NodePhase::Online))
    })
}

/// [`create_cluster_and_nodes`], then the `orders` table of eight shards.
async fn create_cluster(env: &TestEnv, approval: &str) {
    create_cluster_and_nodes(env, approval).await;
    create_orders(env).await;
}

/// A Table `name` of cluster `main`, keyed by a bigint `id`.
fn table(name: &str) -> Table {
    serde_json::from_value(json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "Table",
        "metadata": {"name": name},
        "spec": {"cluster": "main", "shardKey": "id", "columns": [{"name": "id", "type": "bigint", "nullable": false}], "primaryKey": ["id"]}
    }))
    .unwrap()
}

/// The `orders` table and eight shards tiling its key space.
async fn create_orders(env: &TestEnv) {
    env.api::<Table>()
        .create(&PostParams::default(), &table("orders"))
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

fn start_agents(env: &TestEnv, operators: Vec<SocketAddr>) -> Vec<(String, StandInAgent)> {
    NODES
        .iter()
        .map(|(name, _, _)| {
            (
                name.to_string(),
                StandInAgent::start(env.client.clone(), &env.namespace, name, operators.clone()),
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

/// The cluster of [`NODES`] with eight shards, an in-process operator and stand-in agents,
/// once every shard serves. The shards are created once every node is Online, so that each
/// is placed on the whole cluster (placed while some agents have not reported yet, they would
/// go to the first nodes heard from, leaving others empty — the tests kill or delete nodes
/// they expect to hold replicas).
async fn serving_cluster(
    env: &TestEnv,
) -> (JoinHandle<()>, SocketAddr, Vec<(String, StandInAgent)>) {
    create_cluster_and_nodes(env, "Automatic").await;
    let (operator, addr) = start_operator(env, "op-a");
    let agents = start_agents(env, vec![addr]);
    let nodes: Api<DatabaseNode> = env.api();
    let online = eventually(Duration::from_secs(30), || all_online(&nodes)).await;
    assert!(online, "the nodes never all came Online");
    create_orders(env).await;
    let shards: Api<Shard> = env.api();
    assert!(
        eventually(Duration::from_secs(60), || all_serving(&shards)).await,
        "shards never all served"
    );
    (operator, addr, agents)
}

#[tokio::test]
async fn placement_honours_zones_and_regions_and_routing_follows() {
    let env = env_with_crds().await;
    let (operator, _, _agents) = serving_cluster(&env).await;
    let shards: Api<Shard> = env.api();

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

/// How many forged heartbeats the operator refused, and what it did with the others.
type Forged = std::sync::Arc<std::sync::Mutex<(u32, Vec<String>)>>;

/// Posts heartbeats for `node` to `operator` every 100 ms until aborted, none of them
/// genuine — unsigned, signed with a key that is not the node's, and a correctly signed one
/// whose sequence number was overtaken (a replay of a captured heartbeat) — and counts
/// those the operator refused (the rest are the errors the forger saw).
fn forge_heartbeats(env: &TestEnv, node: &str, operator: SocketAddr) -> (JoinHandle<()>, Forged) {
    use shardplane::agent::protocol::{HeartbeatClient, HeartbeatError};
    use shardplane::protocol::{Heartbeat, SignedHeartbeat};
    let seen: Forged = Default::default();
    let (counts, secrets) = (
        seen.clone(),
        env.api::<k8s_openapi::api::core::v1::Secret>(),
    );
    let beat = Heartbeat {
        namespace: env.namespace.clone(),
        node: node.to_owned(),
        agent_epoch: 99,
    };
    let forger = tokio::spawn(async move {
        let secret = secrets
            .get(&shardplane::tls::node_secret_name(&beat.node))
            .await
            .unwrap();
        let key = secret.data.unwrap()[shardplane::tls::HEARTBEAT_KEY]
            .0
            .clone();
        let captured_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let client = HeartbeatClient::new();
        loop {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            let forged = [
                SignedHeartbeat {
                    mac: String::new(),
                    ..SignedHeartbeat::sign(beat.clone(), now, &key)
                },
                SignedHeartbeat::sign(beat.clone(), now, b"not the node's key"),
                SignedHeartbeat::sign(beat.clone(), captured_at - 1_000, &key),
            ];
            for heartbeat in &forged {
                let answer = client
                    .post(operator, heartbeat, &key, Duration::from_secs(1))
                    .await;
                let mut seen = counts.lock().unwrap();
                match answer {
                    Err(HeartbeatError::Refused { .. }) => seen.0 += 1,
                    other => seen.1.push(format!("{other:?}")),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (forger, seen)
}

/// A node that dies is declared Offline and its primaries fail over, while a forger posts
/// heartbeats in its name: every forged one is refused, and detection takes no longer.
#[tokio::test]
async fn a_dead_node_fails_over_with_bumped_epochs() {
    let env = env_with_crds().await;
    let (operator, addr, agents) = serving_cluster(&env).await;
    let shards: Api<Shard> = env.api();

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
    let (forger, forged) = forge_heartbeats(&env, &victim, addr);
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
    forger.abort();
    let (refused, answered) = forged.lock().unwrap().clone();
    assert!(
        refused >= 9 && answered.is_empty(),
        "forged heartbeats for {victim}: {refused} refused, others answered: {answered:?}"
    );

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

/// The TLS Secret `name` of the test's namespace, as text by key; `None` while it does not
/// exist.
async fn tls_secret(
    env: &TestEnv,
    name: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    let secret = env
        .api::<k8s_openapi::api::core::v1::Secret>()
        .get_opt(name)
        .await
        .unwrap()?;
    Some(
        secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, String::from_utf8(value.0).unwrap()))
            .collect(),
    )
}

/// Whether `certificate_pem` was signed by the authority `authority_pem`.
fn signed_by(certificate_pem: &str, authority_pem: &str) -> bool {
    let der = |pem: &str| {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        pem.contents
    };
    let (certificate, authority) = (der(certificate_pem), der(authority_pem));
    let (_, certificate) = x509_parser::parse_x509_certificate(&certificate).unwrap();
    let (_, authority) = x509_parser::parse_x509_certificate(&authority).unwrap();
    certificate
        .verify_signature(Some(authority.public_key()))
        .is_ok()
}

/// The operator generates the cluster's authority and a certificate for every node; when
/// the cluster is pointed at an authority the user supplies (as cert-manager would keep
/// one), every node's certificate is issued again by it, each node keeps its heartbeat key,
/// and so the nodes' heartbeats keep counting: no node leaves Online, no failover.
#[tokio::test]
async fn a_supplied_authority_reissues_every_node_certificate_and_heartbeats_keep_counting() {
    let env = env_with_crds().await;
    create_cluster_and_nodes(&env, "Automatic").await;
    let (operator, addr) = start_operator(&env, "op-a");
    let _agents = start_agents(&env, vec![addr]);
    let nodes: Api<DatabaseNode> = env.api();
    assert!(
        eventually(Duration::from_secs(30), || all_online(&nodes)).await,
        "the nodes never all came Online (their heartbeats need their keys)"
    );
    let generated = tls_secret(&env, "main-ca")
        .await
        .expect("a generated authority");
    let mut keys = std::collections::BTreeMap::new();
    for (node, _, _) in NODES {
        let issued = tls_secret(&env, &format!("{node}-tls")).await.unwrap();
        assert_eq!(issued["ca.crt"], generated["tls.crt"]);
        assert!(signed_by(&issued["tls.crt"], &generated["tls.crt"]));
        keys.insert(node, issued["heartbeat.key"].clone());
    }

    let now = SystemTime::now();
    let supplied = shardplane::tls::Authority::generate("users", "their-ca", now).unwrap();
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "company-ca"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": supplied.certificate_pem(), "tls.key": supplied.key_pem()},
    }))
    .unwrap();
    env.api::<k8s_openapi::api::core::v1::Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    env.api::<DatabaseCluster>()
        .patch(
            "main",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"tls": {"caSecret": "company-ca"}}})),
        )
        .await
        .unwrap();
    let reissued = eventually(Duration::from_secs(60), || async {
        let mut all = true;
        for (node, _, _) in NODES {
            let issued = tls_secret(&env, &format!("{node}-tls")).await.unwrap();
            all &= issued["ca.crt"].trim() == supplied.certificate_pem().trim()
                && signed_by(&issued["tls.crt"], supplied.certificate_pem());
        }
        all
    })
    .await;
    assert!(
        reissued,
        "the nodes' certificates were not issued again by the supplied authority"
    );
    for (node, _, _) in NODES {
        let issued = tls_secret(&env, &format!("{node}-tls")).await.unwrap();
        assert_eq!(
            issued["heartbeat.key"], keys[node],
            "{node}'s heartbeat key changed"
        );
        assert!(!issued["tls.crt"].contains("PRIVATE KEY"));
    }
    // The supplied Secret is only read, never written.
    let kept = tls_secret(&env, "company-ca").await.unwrap();
    assert_eq!(kept["tls.key"], supplied.key_pem());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        all_online(&nodes).await,
        "a node left Online while its certificate was replaced"
    );
    let plans: Api<Plan> = env.api();
    assert!(
        !plans
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|p| p.spec.purpose == PlanPurpose::Failover),
        "a failover happened while the certificates were replaced"
    );
    operator.abort();
}

#[tokio::test]
async fn a_new_table_is_placed_while_a_failover_waits_to_replace_a_dead_nodes_replicas() {
    let env = env_with_crds().await;
    let (operator, _, agents) = serving_cluster(&env).await;
    // The failover waits five minutes before replacing the dead node's replicas.
    let clusters: Api<DatabaseCluster> = env.api();
    let patch = json!({"spec": {"failureDetection": {"heartbeatIntervalMs": 200,
        "suspectAfterMs": 600, "deadAfterMs": 1200, "replaceReplicasAfterSeconds": 300}}});
    clusters
        .patch("main", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    agents.iter().find(|(n, _)| n == "n1").unwrap().1.kill();
    let plans: Api<Plan> = env.api();
    let waiting = eventually(Duration::from_secs(20), || async {
        plan_of(&plans, "Failover").await.is_some_and(|p| {
            let status = p.status.unwrap_or_default();
            status.phase == Some(PlanPhase::Running)
                && status
                    .steps
                    .iter()
                    .any(|s| s.message.as_deref().is_some_and(|m| m.contains("s more")))
        })
    })
    .await;
    assert!(waiting, "n1's failover never reached its wait");

    // A new table of two shards, applied while the failover waits.
    let applied = Instant::now();
    env.api::<Table>()
        .create(&PostParams::default(), &table("events"))
        .await
        .unwrap();
    let shards: Api<Shard> = env.api();
    for (name, range) in [
        ("events-0", json!({"end": 0})),
        ("events-1", json!({"start": 0})),
    ] {
        let shard: Shard = serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
            "metadata": {"name": name},
            "spec": {"table": "events", "range": range}
        }))
        .unwrap();
        shards.create(&PostParams::default(), &shard).await.unwrap();
    }
    let served = eventually(Duration::from_secs(30), || async {
        let Ok(list) = shards.list(&Default::default()).await else {
            return false;
        };
        let events: Vec<&Shard> = list
            .items
            .iter()
            .filter(|s| s.spec.table == "events")
            .collect();
        events.len() == 2
            && events.iter().all(|s| {
                let st = s.status.clone().unwrap_or_default();
                st.ready_replicas == Some(3)
                    && format!("{:?}", st.phase) == "Some(Serving)"
                    && st.desired_replicas.iter().all(|r| r.node != "n1")
            })
    })
    .await;
    let latency = applied.elapsed();
    assert!(
        served,
        "the new table's shards were not placed beside the failover"
    );
    let failover = plan_of(&plans, "Failover").await.unwrap();
    assert_eq!(
        failover.status.and_then(|s| s.phase),
        Some(PlanPhase::Running),
        "the failover must still be waiting: the table did not wait for it"
    );
    eprintln!(
        "new table Serving {:.2}s after it was applied, beside a waiting failover",
        latency.as_secs_f64()
    );
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
        async move { approve(&clusters, "main", &hash).await }
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

async fn shard_map(shards: &Api<Shard>) -> Vec<Shard> {
    shards.list(&Default::default()).await.unwrap().items
}

/// Asserts no shard keeps a replica on `node` and each has its three replicas.
async fn assert_nothing_on(shards: &Api<Shard>, node: &str) {
    for shard in shard_map(shards).await {
        let desired = shard.status.unwrap().desired_replicas;
        assert!(desired.iter().all(|r| r.node != node), "{desired:?}");
        assert_eq!(desired.len(), 3);
    }
}

async fn plan_of(plans: &Api<Plan>, purpose: &str) -> Option<Plan> {
    plans
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|p| format!("{:?}", p.spec.purpose) == purpose)
}

#[tokio::test]
async fn a_drain_completes_when_the_operator_is_killed_at_every_step() {
    let env = env_with_crds().await;
    create_cluster(&env, "Automatic").await;
    let addr = free_addr();
    let mut operator = OperatorProcess::in_env(&env, "op", addr);
    let _agents = start_agents(&env, vec![addr]);
    let shards: Api<Shard> = env.api();
    assert!(
        eventually(Duration::from_secs(60), || all_serving(&shards)).await,
        "shards never all served"
    );

    let before = shard_map(&shards).await;
    let holds = |node: &str| {
        before
            .iter()
            .filter(|s| {
                s.status
                    .as_ref()
                    .unwrap()
                    .desired_replicas
                    .iter()
                    .any(|r| r.node == node)
            })
            .count()
    };
    let nodes: Api<DatabaseNode> = env.api();
    let drain = |node: &'static str, state: &'static str| {
        let nodes = nodes.clone();
        async move {
            let patch = json!({"spec": {"desiredState": state}});
            nodes
                .patch(node, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .unwrap();
        }
    };

    // n5 is region r3's only node: with RF 3 over 3 regions its replicas have nowhere to go,
    // and the cluster says so instead of draining it into a region already holding one.
    drain("n5", "Drained").await;
    let clusters: Api<DatabaseCluster> = env.api();
    let explained = eventually(Duration::from_secs(20), || async {
        let status = clusters
            .get("main")
            .await
            .unwrap()
            .status
            .unwrap_or_default();
        status.conditions.iter().any(|c| {
            c.type_ == "Degraded"
                && c.reason == "PlanBlocked"
                && c.message.contains("region already holding")
        })
    })
    .await;
    assert!(
        explained,
        "a drain that cannot complete must say why in the cluster's conditions"
    );
    drain("n5", "Active").await;

    let victim = ["n1", "n2", "n3", "n4"]
        .into_iter()
        .max_by_key(|n| (holds(n), *n))
        .unwrap();
    drain(victim, "Drained").await;

    let plans: Api<Plan> = env.api();
    let (plan, kills) = finish_plan_killing_operator(
        &mut operator,
        &plans,
        PlanPurpose::Drain,
        Duration::from_secs(240),
    )
    .await;
    let steps = support::operator::sequential_steps(&plan);
    eprintln!(
        "drain of {victim}: {steps} steps one after another, operator SIGKILLed {kills} times"
    );
    assert!(
        kills * 2 >= steps,
        "killed only {kills} times in {steps} steps one after another"
    );

    // No step's effect happened twice: every epoch moved by exactly the plan's transfers,
    // and every shard has exactly its replication factor of distinct replicas, one primary.
    assert_no_step_repeated(&plan, &before, &shard_map(&shards).await, victim, 3);
    let attempts: i32 = plan.status.unwrap().steps.iter().map(|s| s.attempts).sum();
    let total = plan.spec.steps.len();
    assert!(
        attempts as usize >= total,
        "attempts {attempts} < steps {total}"
    );
    assert!(eventually(Duration::from_secs(30), || all_serving(&shards)).await);
}

#[tokio::test]
async fn decommission_moves_everything_off_then_removes_the_node() {
    let env = env_with_crds().await;
    let (operator, _, _agents) = serving_cluster(&env).await;
    let shards: Api<Shard> = env.api();
    let nodes: Api<DatabaseNode> = env.api();
    let patch = json!({"spec": {"desiredState": "Decommissioned"}});
    nodes
        .patch("n2", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    // Removing a node is destructive: the plan waits for approval, here by annotating the
    // node with the plan's hash.
    let plans: Api<Plan> = env.api();
    let awaiting = eventually(Duration::from_secs(30), || async {
        plan_of(&plans, "Decommission")
            .await
            .is_some_and(|p| p.status.and_then(|s| s.phase) == Some(PlanPhase::AwaitingApproval))
    })
    .await;
    assert!(awaiting, "the decommission plan did not wait for approval");
    let plan = plan_of(&plans, "Decommission").await.unwrap();
    assert_eq!(format!("{:?}", plan.spec.risk), "Destructive");
    approve(&nodes, "n2", &plan.spec.hash).await;
    let gone = eventually(Duration::from_secs(90), || async {
        nodes.get("n2").await.unwrap().status.and_then(|s| s.phase)
            == Some(NodePhase::Decommissioned)
    })
    .await;
    assert!(gone, "n2 never reached Decommissioned");
    assert_nothing_on(&shards, "n2").await;
    let plans: Api<Plan> = env.api();
    let plan = plan_of(&plans, "Decommission")
        .await
        .expect("a decommission plan");
    assert_eq!(plan.spec.steps.last().unwrap().action, "RemoveNode");
    operator.abort();
}

#[tokio::test]
async fn new_nodes_receive_shards_through_rebalancing() {
    let env = env_with_crds().await;
    let (operator, addr, mut agents) = serving_cluster(&env).await;
    let shards: Api<Shard> = env.api();

    for (name, region, zone) in [("n6", "r2", "r2-b"), ("n7", "r3", "r3-a")] {
        create_node(&env, name, region, zone).await;
        agents.push((
            name.to_string(),
            StandInAgent::start(env.client.clone(), &env.namespace, name, vec![addr]),
        ));
    }
    // Rebalancing counts Online nodes only, and a new node is Online once its heartbeats
    // count — after the operator issued its certificate and heartbeat key, so the two new
    // nodes may come Online seconds apart: rebalancing starts once both are.
    let nodes: Api<DatabaseNode> = env.api();
    let joined = eventually(Duration::from_secs(30), || async {
        let mut online = true;
        for name in ["n6", "n7"] {
            online &= nodes.get(name).await.unwrap().status.and_then(|s| s.phase)
                == Some(NodePhase::Online);
        }
        online
    })
    .await;
    assert!(joined, "the new nodes never came Online");
    let clusters: Api<DatabaseCluster> = env.api();
    let patch = json!({"spec": {"rebalancing": {"enabled": true}}});
    clusters
        .patch("main", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();

    let plans: Api<Plan> = env.api();
    let rebalanced = eventually(Duration::from_secs(120), || async {
        let done = plan_of(&plans, "Rebalance")
            .await
            .is_some_and(|p| p.status.and_then(|s| s.phase) == Some(PlanPhase::Succeeded));
        let list = shard_map(&shards).await;
        let on = |n: &str| {
            list.iter()
                .filter(|s| {
                    s.status
                        .as_ref()
                        .unwrap()
                        .desired_replicas
                        .iter()
                        .any(|r| r.node == n)
                })
                .count()
        };
        done && on("n6") > 0 && on("n7") > 0
    })
    .await;
    assert!(rebalanced, "the new nodes received no shards");
    assert!(eventually(Duration::from_secs(30), || all_serving(&shards)).await);
    let plan = plan_of(&plans, "Rebalance").await.unwrap();
    assert!(
        plan.spec.facts.contains_key("lowerBoundBytes"),
        "{:?}",
        plan.spec.facts
    );
    operator.abort();
}

#[tokio::test]
async fn a_standby_operator_takes_over_when_the_leader_dies() {
    let env = env_with_crds().await;
    create_cluster(&env, "Automatic").await;
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let mut a = OperatorProcess::in_env(&env, "op-a", a_addr);
    assert!(
        eventually(Duration::from_secs(20), || async {
            lease_holder(&env.client, &env.namespace).await.as_deref() == Some("op-a")
        })
        .await
    );
    let mut b = OperatorProcess::in_env(&env, "op-b", b_addr);
    let mut agents = start_agents(&env, vec![a_addr, b_addr]);
    let shards: Api<Shard> = env.api();
    assert!(
        eventually(Duration::from_secs(60), || all_serving(&shards)).await,
        "shards never all served"
    );
    assert_eq!(
        lease_holder(&env.client, &env.namespace).await.as_deref(),
        Some("op-a"),
        "the standby must not have taken the lease"
    );

    let killed = Instant::now();
    a.kill();
    let took_over = eventually(Duration::from_secs(20), || async {
        lease_holder(&env.client, &env.namespace).await.as_deref() == Some("op-b")
    })
    .await;
    let takeover = killed.elapsed();
    assert!(took_over, "op-b never took over");
    eprintln!("takeover {:.2}s", takeover.as_secs_f64());
    assert!(
        takeover < Duration::from_secs(10),
        "takeover took {takeover:?}"
    );

    // The new leader acts: a node dying now fails over.
    let nodes: Api<DatabaseNode> = env.api();
    let n1 = agents.iter().position(|(n, _)| n == "n1").unwrap();
    drop(agents.remove(n1));
    let detected = eventually(Duration::from_secs(20), || async {
        nodes.get("n1").await.unwrap().status.and_then(|s| s.phase) == Some(NodePhase::Offline)
    })
    .await;
    assert!(detected, "the new leader did not detect n1's death");
    b.kill();
}

/// The election runs on a thread of its own with its own client: a leader whose reconcilers'
/// runtime does not run for two Lease durations still renews meanwhile. (Before, renewal and
/// fence shared that runtime; at the seed's size, busy reconcilers cost the leader its Lease
/// every cycle.)
#[tokio::test]
async fn a_leader_renews_its_lease_while_its_reconcilers_runtime_is_blocked() {
    let env = env_with_crds().await;
    let api = env.control_plane.kube_config().await.unwrap();
    let mut config = OperatorConfig::new("op-busy", env.namespace.clone());
    config.namespace = Some(env.namespace.clone());
    config.listen = free_addr();
    config.api = Some(api.clone());
    let lease_duration = config.lease_duration;
    let operator = tokio::spawn(controller::run(env.client.clone(), config));
    assert!(
        eventually(Duration::from_secs(20), || async {
            lease_holder(&env.client, &env.namespace).await.as_deref() == Some("op-busy")
        })
        .await,
        "op-busy never led"
    );

    // This test's runtime is the operator's too (one thread): block it, then read the Lease
    // from another thread and runtime before unblocking.
    let blocked_at = SystemTime::now();
    std::thread::sleep(lease_duration * 2);
    let namespace = env.namespace.clone();
    let lease = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let client = kube::Client::try_from(api).unwrap();
            Api::<Lease>::namespaced(client, &namespace)
                .get(OPERATOR_LEASE)
                .await
                .unwrap()
        })
    })
    .join()
    .unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("op-busy"));
    let renewed = spec.renew_time.unwrap().0.as_millisecond();
    let blocked_ms = blocked_at.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let renewed_after = renewed - blocked_ms;
    assert!(
        renewed_after > lease_duration.as_millis() as i64,
        "the Lease was last renewed {renewed_after} ms after the runtime was blocked: \
         renewals stopped with the reconcilers"
    );
    operator.abort();
}

/// `shardplane_watch_cache_lists_total` of the operator at `addr`, by kind.
async fn cache_lists(addr: SocketAddr) -> std::collections::BTreeMap<String, u64> {
    by_kind(
        &scrape(addr).await.unwrap_or_default(),
        "shardplane_watch_cache_lists_total",
    )
}

/// The watch caches outlive a leadership term: a leader whose Lease is taken from it stops
/// reconciling, wins the Lease again once the taker lets it expire, and goes on from the caches
/// it had — listing nothing again — reconciling what changed while it did not lead (a Table
/// created meanwhile gets its SchemaVersion).
#[tokio::test]
async fn a_leader_that_loses_and_regains_its_lease_lists_nothing_again() {
    let env = env_with_crds().await;
    create_cluster(&env, "Automatic").await;
    let (operator, addr) = start_operator(&env, "op-a");
    let leading = |wanted: i64| async move {
        eventually(Duration::from_secs(30), || async {
            leader_gauge(addr).await == Some(wanted)
        })
        .await
    };
    assert!(leading(1).await, "op-a never led");
    let kinds = [
        "DatabaseCluster",
        "DatabaseNode",
        "Plan",
        "SchemaVersion",
        "Shard",
        "Table",
    ];
    let listed_once: std::collections::BTreeMap<String, u64> =
        kinds.iter().map(|k| (k.to_string(), 1)).collect();
    assert_eq!(cache_lists(addr).await, listed_once);

    // Another holder takes the Lease (and never renews it).
    let leases: Api<Lease> = env.api();
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    leases
        .patch(
            OPERATOR_LEASE,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "thief", "renewTime": now}})),
        )
        .await
        .unwrap();
    assert!(
        leading(0).await,
        "op-a kept leading under a Lease held by another"
    );
    let versions: Api<shardplane::api::SchemaVersion> = env.api();
    env.api::<Table>()
        .create(&PostParams::default(), &table("late"))
        .await
        .unwrap();

    assert!(
        leading(1).await,
        "op-a never led again after the Lease expired"
    );
    assert_eq!(
        lease_holder(&env.client, &env.namespace).await.as_deref(),
        Some("op-a")
    );
    let versioned = eventually(Duration::from_secs(20), || async {
        versions
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|v| v.spec.table == "late")
    })
    .await;
    assert!(
        versioned,
        "the Table created while op-a did not lead was never reconciled"
    );
    assert_eq!(
        cache_lists(addr).await,
        listed_once,
        "a new leadership term listed again"
    );
    operator.abort();
}

/// Aborting an in-process operator (a crash, in tests) stops its election thread too: a
/// standby takes the Lease once it expires.
#[tokio::test]
async fn a_standby_takes_over_from_an_aborted_in_process_leader() {
    let env = env_with_crds().await;
    let (a, _) = start_operator(&env, "op-a");
    assert!(
        eventually(Duration::from_secs(20), || async {
            lease_holder(&env.client, &env.namespace).await.as_deref() == Some("op-a")
        })
        .await,
        "op-a never led"
    );
    let (b, _) = start_operator(&env, "op-b");
    a.abort();
    assert!(
        eventually(Duration::from_secs(20), || async {
            lease_holder(&env.client, &env.namespace).await.as_deref() == Some("op-b")
        })
        .await,
        "op-b never took over: the aborted leader's election still renews"
    );
    b.abort();
}

#[tokio::test]
async fn a_deleted_node_is_kept_until_its_replicas_have_moved() {
    let env = env_with_crds().await;
    let (operator, _, _agents) = serving_cluster(&env).await;
    let nodes: Api<DatabaseNode> = env.api();
    assert_finalizer(&nodes, "n1", "shardplane.io/drain-before-delete").await;
    nodes.delete("n1", &Default::default()).await.unwrap();

    // The node stays (terminating) while it holds replicas: removing it is destructive, so the
    // decommission plan waits for approval, given here with the plan's hash.
    let plans: Api<Plan> = env.api();
    let awaiting = eventually(Duration::from_secs(30), || async {
        plan_of(&plans, "Decommission")
            .await
            .is_some_and(|p| p.status.and_then(|s| s.phase) == Some(PlanPhase::AwaitingApproval))
    })
    .await;
    assert!(awaiting, "deleting n1 did not plan its decommission");
    let node = nodes.get("n1").await.unwrap();
    assert!(node.metadata.deletion_timestamp.is_some());
    let shards: Api<Shard> = env.api();
    let held = shard_map(&shards)
        .await
        .iter()
        .filter(|s| {
            s.status
                .as_ref()
                .unwrap()
                .desired_replicas
                .iter()
                .any(|r| r.node == "n1")
        })
        .count();
    assert!(held > 0, "n1 held no replica, the test proves nothing");
    let hash = plan_of(&plans, "Decommission").await.unwrap().spec.hash;
    approve(&nodes, "n1", &hash).await;

    let gone = eventually(Duration::from_secs(90), || async {
        nodes.get_opt("n1").await.unwrap().is_none()
    })
    .await;
    assert!(gone, "n1 was never released");
    assert_nothing_on(&shards, "n1").await;
    operator.abort();
}

#[tokio::test]
async fn a_deleted_table_keeps_its_data_until_the_drop_plan_is_approved() {
    let env = env_with_crds().await;
    let (operator, _, _agents) = serving_cluster(&env).await;
    let tables: Api<Table> = env.api();
    let shards: Api<Shard> = env.api();
    let plans: Api<Plan> = env.api();
    assert_finalizer(&tables, "orders", "shardplane.io/drop-after-approval").await;

    tables.delete("orders", &Default::default()).await.unwrap();
    let waiting = eventually(Duration::from_secs(10), || async {
        let Some(plan) = plan_of(&plans, "DropTable").await else {
            return false;
        };
        let table = tables.get("orders").await.unwrap();
        table.status.unwrap_or_default().conditions.iter().any(|c| {
            c.type_ == "Ready"
                && c.reason == "AwaitingDropApproval"
                && c.message
                    .contains(&format!("{}/{}", plan.name_any(), plan.spec.hash))
        })
    })
    .await;
    assert!(
        waiting,
        "the deleted table does not say which plan it waits for\n{}",
        env.dump()
    );
    let plan = plan_of(&plans, "DropTable").await.unwrap();
    assert_eq!(format!("{:?}", plan.spec.risk), "Destructive");
    assert_eq!(plan.spec.target.name, "orders");
    assert_eq!(plan.spec.steps.len(), 1);
    assert_eq!(plan.spec.steps[0].action, "DropShards");
    // Nothing is dropped without approval.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        shards.list(&Default::default()).await.unwrap().items.len(),
        8
    );
    assert!(tables.get_opt("orders").await.unwrap().is_some());
    let status = plans.get(&plan.name_any()).await.unwrap().status.unwrap();
    assert_eq!(status.phase, Some(PlanPhase::AwaitingApproval));

    approve(&tables, "orders", &plan.spec.hash).await;
    let gone = eventually(Duration::from_secs(30), || async {
        shards
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
            && tables.get_opt("orders").await.unwrap().is_none()
    })
    .await;
    assert!(gone, "shards or table left after approval\n{}", env.dump());
    // The step sees the shards gone at its next look.
    let succeeded = eventually(Duration::from_secs(10), || async {
        plans
            .get(&plan.name_any())
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            == Some(PlanPhase::Succeeded)
    })
    .await;
    assert!(
        succeeded,
        "the drop plan never succeeded
{}",
        env.dump()
    );
    let done = plans.get(&plan.name_any()).await.unwrap().status.unwrap();
    assert_eq!(done.approved_by.as_deref(), Some("annotation:Table/orders"));
    operator.abort();
}

/// The reconcile queue depth of each kind in a scrape.
fn queue_depths(metrics: &str) -> std::collections::BTreeMap<String, i64> {
    by_kind(metrics, "shardplane_reconcile_queue_depth")
}

/// The values of `metric` in a scrape, by their `kind` label.
fn by_kind<T: std::str::FromStr>(
    metrics: &str,
    metric: &str,
) -> std::collections::BTreeMap<String, T> {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(metric)?.strip_prefix("{kind=\"")?;
            let (kind, value) = rest.split_once("\"} ")?;
            Some((kind.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn metrics_show_the_reconcile_queue_filling_and_draining() {
    let env = env_with_crds().await;
    let (operator, addr, _agents) = serving_cluster(&env).await;
    let settled = eventually(Duration::from_secs(20), || async {
        let depths = queue_depths(&scrape(addr).await.unwrap());
        depths.len() == 3 && depths.values().all(|d| *d == 0)
    })
    .await;
    assert!(
        settled,
        "queue depths of a settled cluster: {:?}",
        queue_depths(&scrape(addr).await.unwrap())
    );

    // Forty tables at once: each is written by its own reconcile (finalizer, status), and
    // every write is a new version to reconcile; the Table queue must show them waiting.
    let tables: Api<Table> = env.api();
    let creations = (0..40).map(|i| {
        let tables = tables.clone();
        async move {
            let table = table(&format!("burst-{i}"));
            tables.create(&PostParams::default(), &table).await.unwrap();
        }
    });
    let watcher = async {
        let mut deepest = 0;
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until && deepest == 0 {
            deepest = queue_depths(&scrape(addr).await.unwrap())
                .get("Table")
                .copied()
                .unwrap_or(0);
        }
        deepest
    };
    let (_, deepest) = tokio::join!(futures::future::join_all(creations), watcher);
    assert!(deepest > 0, "the Table queue never showed a waiting table");
    let drained = eventually(Duration::from_secs(30), || async {
        queue_depths(&scrape(addr).await.unwrap()).get("Table") == Some(&0)
    })
    .await;
    assert!(
        drained,
        "the Table queue never drained: {:?}",
        queue_depths(&scrape(addr).await.unwrap())
    );
    operator.abort();
}

/// The placement plan of the cluster of [`NODES`] (created beforehand) once it succeeded, made
/// by the operator at `addr` with stand-in agents.
async fn placement_done(env: &TestEnv, addr: SocketAddr) -> Plan {
    let _agents = start_agents(env, vec![addr]);
    let plans: Api<Plan> = env.api();
    let done = eventually(Duration::from_secs(60), || async {
        newest_plan(&plans, PlanPurpose::Placement)
            .await
            .and_then(|p| p.status)
            .is_some_and(|s| s.phase == Some(PlanPhase::Succeeded))
    })
    .await;
    let plan = newest_plan(&plans, PlanPurpose::Placement).await;
    assert!(done, "no placement plan succeeded: {plan:?}");
    plan.unwrap()
}

/// The lines of `log` that contain each of `parts`.
fn lines_with<'a>(log: &'a str, parts: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|line| parts.iter().all(|part| line.contains(part)))
        .collect()
}

/// The value of sample `name` (with its labels) in a scrape.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test]
async fn the_operator_process_logs_each_decision_and_step_and_times_them() {
    let env = env_with_crds().await;
    create_cluster(&env, "Automatic").await;
    let addr = free_addr();
    let operator = OperatorProcess::in_env(&env, "op-logged", addr);
    let plan = placement_done(&env, addr).await;
    let name = format!("plan={}", plan.name_any());
    // The executor logs a plan's success after writing it: the line may trail the status.
    let read_log = || std::fs::read_to_string(&operator.log).unwrap();
    eventually(Duration::from_secs(10), || async {
        !lines_with(&read_log(), &["plan succeeded", &name]).is_empty()
    })
    .await;
    let log = read_log();
    let hash = format!("hash={}", plan.spec.hash);
    let decision = [
        "plan created",
        name.as_str(),
        "cluster=main",
        "purpose=Placement",
        hash.as_str(),
    ];
    assert_eq!(lines_with(&log, &decision).len(), 1, "{log}");
    let first = &plan.spec.steps[0];
    let action = format!("action={}", first.action);
    let started = [
        "step started",
        name.as_str(),
        "step=0",
        action.as_str(),
        "attempt=1",
    ];
    assert_eq!(lines_with(&log, &started).len(), 1, "{log}");
    assert!(
        !lines_with(&log, &["step succeeded", &name, &action, "duration_ms="]).is_empty(),
        "{log}"
    );
    assert_eq!(
        lines_with(&log, &["plan approved", &name]).len(),
        1,
        "{log}"
    );
    assert_eq!(
        lines_with(&log, &["plan succeeded", &name]).len(),
        1,
        "{log}"
    );
    // A waiting step is one line per reason it gives, not one per poll.
    let waits = lines_with(&log, &["step waiting"]);
    let reasons: BTreeSet<&str> = waits
        .iter()
        .filter_map(|line| line.split_once(" step waiting ").map(|(_, fields)| fields))
        .collect();
    assert_eq!(reasons.len(), waits.len(), "{waits:#?}");

    let metrics = scrape(addr).await.unwrap();
    for histogram in ["decision_latency_seconds", "first_effect_latency_seconds"] {
        let count = format!("shardplane_{histogram}_count{{purpose=\"Placement\"}}");
        assert!(
            sample(&metrics, &count).is_some_and(|n| n >= 1.0),
            "{count} in:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn an_operator_process_at_rust_log_warn_logs_no_decision() {
    /// The process, SIGKILLed when dropped.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let env = env_with_crds().await;
    create_cluster(&env, "Automatic").await;
    let addr = free_addr();
    let log = env.control_plane.work_dir().join("operator-op-quiet.log");
    let out = std::fs::File::create(&log).unwrap();
    let operator = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_shardplane"))
            .args([
                "operator",
                "--namespace",
                &env.namespace,
                "--identity",
                "op-quiet",
            ])
            .args(["--listen", &addr.to_string()])
            .env("KUBECONFIG", env.control_plane.kubeconfig_path())
            .env("RUST_LOG", "warn")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    );
    placement_done(&env, addr).await;
    drop(operator);
    // Failed reconciles (a conflict, say) are warnings and may show; no decision, no step.
    let log = std::fs::read_to_string(&log).unwrap();
    for quiet in [
        " INFO ",
        "plan created",
        "plan approved",
        "step started",
        "plan succeeded",
    ] {
        assert!(
            !log.contains(quiet),
            "{quiet} logged at RUST_LOG=warn:\n{log}"
        );
    }
}

/// Approves the plan with `hash` as a reviewed pull request does: the annotation
/// `shardplane.io/approve-plan` on the plan's target, object `name`.
async fn approve<K>(api: &Api<K>, name: &str, hash: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({"metadata": {"annotations": {"shardplane.io/approve-plan": hash}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

/// Waits (10 s at most) for the operator to put `finalizer` on object `name`.
async fn assert_finalizer<K>(api: &Api<K>, name: &str, finalizer: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let placed = eventually(Duration::from_secs(10), || async {
        api.get(name)
            .await
            .unwrap()
            .finalizers()
            .iter()
            .any(|f| f == finalizer)
    })
    .await;
    assert!(placed, "the operator did not put {finalizer} on {name}");
}
