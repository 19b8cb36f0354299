//! The cluster reconciler against a mock API server: each request it makes, in order.

use std::sync::Arc;

use serde_json::json;

use super::super::fixtures::{self, Expect};
use super::*;
use crate::api::{DatabaseNode, Plan, Shard, Table};
use crate::protocol::NODE_FINALIZER;

const NS: &str = "db";

fn cluster() -> Arc<DatabaseCluster> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseCluster",
            "metadata": {"name": "main", "namespace": NS, "uid": "c1", "generation": 1,
                         "resourceVersion": "3"},
            "spec": {"replicationFactor": 3, "regions": [
                {"name": "r1", "zones": ["r1-a"]}, {"name": "r2", "zones": ["r2-a"]},
                {"name": "r3", "zones": ["r3-a"]}]},
        }))
        .unwrap(),
    )
}

fn node(name: &str, region: &str, phase: &str, replicas: i32, primaries: i32) -> Arc<DatabaseNode> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseNode",
            "metadata": {"name": name, "namespace": NS, "finalizers": [NODE_FINALIZER],
                         "resourceVersion": "4"},
            "spec": {"cluster": "main", "region": region, "zone": format!("{region}-a"),
                     "address": "127.0.0.1", "ports": {"first": 20000, "last": 20100},
                     "capacity": {"storageBytes": 1_000_000_000}},
            "status": {"phase": phase, "replicas": replicas, "primaries": primaries},
        }))
        .unwrap(),
    )
}

fn nodes(first_phase: &str, replicas: i32, primaries: i32) -> Vec<Arc<DatabaseNode>> {
    vec![
        node("n1", "r1", first_phase, replicas, primaries),
        node("n2", "r2", "Online", replicas, 0),
        node("n3", "r3", "Online", replicas, 0),
    ]
}

fn table() -> Arc<Table> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Table",
            "metadata": {"name": "orders", "namespace": NS},
            "spec": {"cluster": "main", "shardKey": "id",
                     "columns": [{"name": "id", "type": "bigint"}], "primaryKey": ["id"]},
        }))
        .unwrap(),
    )
}

/// Shard `orders-0` over every key; with replicas on n1 (primary), n2 and n3 when `placed`.
fn shard(placed: bool) -> Arc<Shard> {
    let status = if placed {
        let replica = |node: &str, role: &str| {
            json!({"node": node, "role": role, "state": "InSync", "endpoint": "127.0.0.1:20000",
                   "lagBytes": 0, "epoch": 1})
        };
        json!({
            "primary": {"node": "n1", "epoch": 1},
            "desiredReplicas": [{"node": "n1", "role": "Primary"},
                                {"node": "n2", "role": "Secondary"},
                                {"node": "n3", "role": "Secondary"}],
            "replicas": [replica("n1", "Primary"), replica("n2", "Secondary"),
                         replica("n3", "Secondary")],
        })
    } else {
        json!({})
    };
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
            "metadata": {"name": "orders-0", "namespace": NS, "resourceVersion": "6"},
            "spec": {"table": "orders", "range": {}},
            "status": status,
        }))
        .unwrap(),
    )
}

/// A running placement plan of `main` adding a replica of `shard` on `node`.
fn running_placement(shard: &str, node: &str) -> Arc<Plan> {
    let step = json!({"id": 0, "wave": 0, "action": "AddReplica", "shard": shard, "node": node,
                      "detail": json!({"AddReplica": {"shard": shard, "node": node}}).to_string(),
                      "reason": "x"});
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Plan",
            "metadata": {"name": "main-placement-0123456789", "namespace": NS,
                         "resourceVersion": "9"},
            "spec": {"cluster": "main", "target": {"kind": "DatabaseCluster", "name": "main"},
                     "purpose": "Placement", "cause": {"kind": "Policy", "detail": "x"},
                     "risk": "Safe", "hash": "0123456789abcdef", "summary": "x",
                     "steps": [step]},
            "status": {"phase": "Running"},
        }))
        .unwrap(),
    )
}

fn view(
    nodes: Vec<Arc<DatabaseNode>>,
    shards: Vec<Arc<Shard>>,
    plans: Vec<Arc<Plan>>,
) -> ClusterView {
    ClusterView::of(cluster(), nodes, vec![table()], shards, plans)
}

/// The cluster's status written with its counts.
fn cluster_status() -> Expect {
    Expect::patch_status::<DatabaseCluster>(NS, "main")
        .field("/status/nodes", 3)
        .field("/status/shards", 1)
        .field("/status/tables", 1)
        .present("/status/conditions")
        .answer(cluster().as_ref())
}

#[tokio::test]
async fn a_decision_is_persisted_as_a_plan_owned_by_the_cluster() {
    let (ctx, server) = fixtures::context(true);
    let view = view(nodes("Online", 0, 0), vec![shard(false)], Vec::new());
    let script = vec![
        Expect::create::<Plan>(NS)
            .field("/spec/purpose", "Placement")
            .field("/spec/cluster", "main")
            .field("/spec/target/kind", "DatabaseCluster")
            .field("/spec/cause/kind", "Policy")
            .field("/metadata/labels/shardplane.io~1cluster", "main")
            .field("/metadata/labels/shardplane.io~1purpose", "Placement")
            .field("/metadata/ownerReferences/0/uid", "c1")
            .present("/spec/steps/0"),
        Expect::event(NS, "PlanCreated"),
        cluster_status(),
    ];
    let active = server
        .run(script, converge(&ctx, &view, &Counts::default(), 0))
        .await
        .unwrap();
    assert_eq!(active, 0);
}

#[tokio::test]
async fn a_failover_supersedes_a_running_plan_on_its_node_before_it_is_created() {
    let (ctx, server) = fixtures::context(true);
    // The placement adds a replica of orders-0, which the dead n1 leads.
    let placement = running_placement("orders-0", "n2");
    let view = view(
        nodes("Offline", 1, 1),
        vec![shard(true)],
        vec![placement.clone()],
    );
    let script = vec![
        Expect::patch_status::<Plan>(NS, "main-placement-0123456789")
            .field("/metadata/resourceVersion", "9")
            .field("/status/phase", "Superseded")
            .field("/status/conditions/0/reason", "Superseded")
            .answer(placement.as_ref()),
        Expect::event(NS, "PlanSuperseded"),
        Expect::create::<Plan>(NS)
            .field("/spec/purpose", "Failover")
            .field("/spec/target/name", "n1")
            .field("/spec/cause/kind", "Failure")
            .field("/spec/steps/0/action", "Promote"),
        Expect::event(NS, "PlanCreated"),
        cluster_status(),
    ];
    let active = server
        .run(script, converge(&ctx, &view, &Counts::default(), 0))
        .await
        .unwrap();
    assert_eq!(
        active, 1,
        "the superseded plan was still active in this view"
    );
}

#[tokio::test]
async fn a_failover_runs_beside_a_plan_that_does_not_touch_its_node() {
    let (ctx, server) = fixtures::context(true);
    // The running plan adds a replica of another table's shard on n2: n1's death changes
    // nothing it does, so it is not superseded (it was, and a split superseded after its
    // routing switch left its source Retiring for good).
    let unrelated = running_placement("other-7", "n2");
    let view = view(nodes("Offline", 1, 1), vec![shard(true)], vec![unrelated]);
    let script = vec![
        Expect::create::<Plan>(NS)
            .field("/spec/purpose", "Failover")
            .field("/spec/target/name", "n1"),
        Expect::event(NS, "PlanCreated"),
        cluster_status(),
    ];
    server
        .run(script, converge(&ctx, &view, &Counts::default(), 0))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_settled_cluster_with_a_current_status_writes_nothing() {
    let (ctx, server) = fixtures::context(true);
    let settled = view(nodes("Online", 1, 0), vec![shard(true)], Vec::new());
    // The first look writes the status (and n1's primary count); a second look at the
    // world as then written writes nothing at all.
    let mut cluster = (*settled.cluster).clone();
    cluster.status = decide::cluster::status(
        &settled,
        &settled.topology().0,
        &[],
        &[],
        k8s_openapi::jiff::Timestamp::now(),
    );
    let mut nodes = nodes("Online", 1, 0);
    let mut n1 = (*nodes[0]).clone();
    n1.status.as_mut().unwrap().primaries = Some(1);
    nodes[0] = Arc::new(n1);
    let view = ClusterView::of(
        Arc::new(cluster),
        nodes,
        vec![table()],
        vec![shard(true)],
        Vec::new(),
    );
    server
        .run(Vec::new(), converge(&ctx, &view, &Counts::default(), 0))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_replica_that_does_not_lead_writes_nothing() {
    let (ctx, server) = fixtures::context(false);
    let view = view(nodes("Online", 0, 0), vec![shard(false)], Vec::new());
    let result = server
        .run(Vec::new(), converge(&ctx, &view, &Counts::default(), 0))
        .await;
    assert!(
        matches!(result, Err(ClusterError::NotLeader(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_plan_already_made_is_not_made_twice() {
    let (ctx, server) = fixtures::context(true);
    let first = view(nodes("Online", 0, 0), vec![shard(false)], Vec::new());
    let (topology, _) = first.topology();
    let decision = decide::cluster::decide(&first, &topology, 0)
        .unwrap()
        .unwrap();
    let mut made = decide::cluster::plan_of(&first, decision).unwrap();
    made.metadata.namespace = Some(NS.to_owned());
    let again = view(
        nodes("Online", 0, 0),
        vec![shard(false)],
        vec![Arc::new(made)],
    );
    // Only the status: the pending plan with the same hash is the decision.
    server
        .run(
            vec![cluster_status()],
            converge(&ctx, &again, &Counts::default(), 0),
        )
        .await
        .unwrap();
}

/// n1, deleted while it still holds its finalizer.
fn deleted_n1() -> Vec<Arc<DatabaseNode>> {
    let mut nodes = nodes("Online", 0, 0);
    let mut n1 = (*nodes[0]).clone();
    n1.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    nodes[0] = Arc::new(n1);
    nodes
}

/// The Shards of the namespace as the API server lists them.
fn shard_list(shard: Arc<Shard>) -> Expect {
    Expect::new(axum::http::Method::GET, fixtures::collection::<Shard>(NS)).answer(json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "ShardList",
        "metadata": {"resourceVersion": "10"}, "items": [shard.as_ref()],
    }))
}

/// A deleted node whose replicas the caches no longer show is released only if the API
/// server, read now, agrees: a cache behind the executor's last write once released a node
/// that still held replicas.
#[tokio::test]
async fn a_deleted_node_is_released_only_when_the_api_server_shows_it_empty() {
    let (ctx, server) = fixtures::context(true);
    // The caches show the shard unplaced; the API server already has a replica on n1.
    let stale = view(deleted_n1(), vec![shard(false)], Vec::new());
    let topology = stale.topology().0;
    server
        .run(
            vec![shard_list(shard(true))],
            act::guard_node_deletion(&ctx, &stale, &topology),
        )
        .await
        .unwrap();

    // Read now, nothing is on n1 either: its finalizer is lifted, with an Event.
    server
        .run(
            vec![
                shard_list(shard(false)),
                Expect::patch::<DatabaseNode>(NS, "n1")
                    .field("/metadata/finalizers", json!([]))
                    .answer(deleted_n1()[0].as_ref()),
                Expect::event(NS, "NodeRemoved").echo(),
            ],
            act::guard_node_deletion(&ctx, &stale, &topology),
        )
        .await
        .unwrap();
}
