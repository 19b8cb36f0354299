//! The scale benchmark's setup, small enough for CI: the real `shardplane operator` process
//! against the real API server, loaded by a fleet of 30 simulated agents (one per zone of 10
//! regions × 3 zones, replicas catching up for a while before they are in sync) and 60
//! shards. Asserts correctness, not speed: every shard ends Serving with 3 in-sync replicas
//! in distinct zones, and a killed node's primaries move to live nodes. A fleet that reports
//! nothing (or wrongly), or an operator that does not place or fail over, fails it.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use kube::api::Api;
use shardplane::api::shard::{ReplicaRole, ReplicaState};
use shardplane::api::{DatabaseNode, NodePhase, Shard};
use shardplane::sandbox::fleet::{Fleet, FleetConfig, ReplicaModel};
use shardplane::sandbox::fleet_cluster::{FleetCluster, fully_serving};
use support::operator::{OperatorProcess, free_addr};
use support::{env_with_crds, eventually};

const LAYOUT: FleetCluster = FleetCluster {
    regions: 10,
    zones_per_region: 3,
    nodes: 30,
    tables: 6,
    shards: 60,
    failure_detection_ms: (500, 1000, 2000),
};

/// Whether all of `LAYOUT.shards` shards are fully served.
async fn all_serving(shards: &Api<Shard>) -> bool {
    shards
        .list(&Default::default())
        .await
        .is_ok_and(|list| list.items.len() == LAYOUT.shards && list.items.iter().all(fully_serving))
}

#[tokio::test]
async fn a_fleet_of_thirty_nodes_is_placed_across_zones_and_fails_over() {
    let env = env_with_crds().await;
    LAYOUT.create(&env.client, &env.namespace).await.unwrap();
    let addr = free_addr();
    let _operator = OperatorProcess::in_env(&env, "scale-op", addr);
    let config = FleetConfig {
        model: ReplicaModel::Lagging {
            delay: Duration::from_millis(300),
        },
        heartbeat_interval: Duration::from_millis(500),
        max_in_flight: 32,
    };
    let fleet = Fleet::start(
        env.client.clone(),
        &env.namespace,
        LAYOUT.node_names(),
        vec![addr],
        config,
    );
    let shards: Api<Shard> = env.api();
    let nodes: Api<DatabaseNode> = env.api();

    assert!(
        eventually(Duration::from_secs(600), || all_serving(&shards)).await,
        "not every shard became Serving with 3 in-sync replicas; fleet wrote {:?}",
        fleet.stats()
    );
    let placed = shards.list(&Default::default()).await.unwrap().items;
    for shard in &placed {
        let status = shard.status.as_ref().unwrap();
        let zones: BTreeSet<_> = status
            .desired_replicas
            .iter()
            .map(|d| LAYOUT.zone_of(&d.node).unwrap())
            .collect();
        assert_eq!(zones.len(), 3, "{:?}", status.desired_replicas);
    }
    let stats = fleet.stats();
    // Each replica: at least its CatchingUp report, then in sync (the first also as primary).
    assert!(stats.reports >= 2 * 3 * LAYOUT.shards as u64, "{stats:?}");

    let primary_of = |shard: &Shard| {
        shard
            .status
            .as_ref()
            .and_then(|s| s.primary.clone())
            .unwrap()
    };
    let victim = LAYOUT
        .node_names()
        .into_iter()
        .max_by_key(|node| {
            placed
                .iter()
                .filter(|s| primary_of(s).node == *node)
                .count()
        })
        .unwrap();
    let led: Vec<(String, i64)> = placed
        .iter()
        .filter(|s| primary_of(s).node == victim)
        .map(|s| (kube::ResourceExt::name_any(s), primary_of(s).epoch))
        .collect();
    assert!(!led.is_empty());
    assert!(fleet.kill(&victim));

    assert!(
        eventually(Duration::from_secs(60), || async {
            nodes.get(&victim).await.ok().and_then(|n| n.status?.phase) == Some(NodePhase::Offline)
        })
        .await,
        "{victim} was killed but not declared Offline"
    );
    let moved = eventually(Duration::from_secs(300), || async {
        let Ok(list) = shards.list(&Default::default()).await else {
            return false;
        };
        led.iter().all(|(name, epoch)| {
            list.items.iter().any(|s| {
                s.metadata.name.as_ref() == Some(name)
                    && s.status.as_ref().is_some_and(|status| {
                        status.primary.as_ref().is_some_and(|p| {
                            p.node != victim && p.epoch > *epoch && fleet.is_live(&p.node)
                        }) && status.replicas.iter().any(|r| {
                            Some(&r.node) == status.primary.as_ref().map(|p| &p.node)
                                && r.epoch == status.primary.as_ref().map(|p| p.epoch)
                                && r.role == ReplicaRole::Primary
                                && r.state == ReplicaState::InSync
                        })
                    })
            })
        })
    })
    .await;
    assert!(
        moved,
        "the primaries of {victim} ({} shards) did not move to live nodes at a higher epoch",
        led.len()
    );
}
