//! A slow WAN between regions (issue #14, case e), shared by the partition tests and the
//! `partitions` benchmark: every host's packets to the hosts of other regions held for a
//! delay with jitter, some dropped (`TestNetwork::slow_link`), under the routed workload.
//! Nothing may fail over or flap meanwhile; quorum commits go on (their latency measured);
//! and a node killed during it is still detected and failed over.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::Api;
use shardplane::api::DatabaseNode;
use shardplane::api::database_node::NodePhase;
use shardplane::routing::ShardKeyValue;

use super::network::{LinkShape, LinkStats};
use super::probes::first_acknowledged_within;
use super::{DataPlane, Ledger, TABLE, keys_in};
use crate::support::eventually;

/// What a slow WAN did to the cluster.
pub struct SlowWan {
    /// Failover plans created while it lasted, before the kill.
    pub false_failovers: usize,
    /// Node phase changes seen while it lasted, before the kill (`node: from → to`).
    pub flaps: Vec<String>,
    /// Routed single-row commits, one after another, while it lasted: their latencies.
    pub commit_latencies: Vec<Duration>,
    /// Routed writes the workload had acknowledged by the kill.
    pub acked_before_kill: u64,
    /// From the kill to the node's `Offline`.
    pub kill_detected: Duration,
    /// From the kill to the first routed write of the shard it led acknowledged after it;
    /// `None` if none was within 120 s.
    pub kill_failover: Option<Duration>,
    /// Routed writes of the workload that failed (their outcome unknown: a commit still
    /// waiting for a standby at the client's 10 s deadline, while the killed node's shard
    /// failed over across the slow WAN).
    pub failed_writes: usize,
    /// What the links did, summed.
    pub links: LinkStats,
}

/// Routed single-row commits to the first shard, one after another (10 a second at most),
/// and every node's phase, for `hold`: the commits' latencies, and the phase changes seen
/// (`node: from → to`).
pub async fn watch_commits(
    plane: &DataPlane,
    ledger: &mut Ledger,
    hold: Duration,
) -> (Vec<Duration>, Vec<String>) {
    let nodes: Api<DatabaseNode> = Api::namespaced(plane.client.clone(), &plane.namespace);
    let shard = plane.shard_list().await.remove(0);
    let phases = |list: Vec<DatabaseNode>| -> BTreeMap<String, Option<NodePhase>> {
        list.into_iter()
            .map(|n| (n.name_any(), n.status.and_then(|s| s.phase)))
            .collect()
    };
    let mut last = phases(nodes.list(&Default::default()).await.unwrap().items);
    let mut flaps = Vec::new();
    let mut latencies = Vec::new();
    let statement =
        format!("INSERT INTO {TABLE} (id, note) VALUES ($1, 'wan') ON CONFLICT DO NOTHING");
    static CALLS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let from =
        7_000_000_000 + 100_000_000 * CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    for key in keys_in(&shard, from, 20_000) {
        if started.elapsed() >= hold {
            break;
        }
        let sent = Instant::now();
        if ledger
            .router
            .execute(&ShardKeyValue::Int(key), &statement, &[&key])
            .await
            .is_ok()
        {
            latencies.push(sent.elapsed());
            ledger.acked.insert(key);
        }
        let now = phases(nodes.list(&Default::default()).await.unwrap().items);
        for (node, phase) in &now {
            if last.get(node) != Some(phase) {
                flaps.push(format!("{node}: {:?} → {phase:?}", last.get(node)));
            }
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (latencies, flaps)
}

/// Makes every link between hosts of different regions slow as `shape` says for `hold`, under
/// the routed workload; then kills the agent of the node leading the first shard, the links
/// still slow; then restores them and the node and checks every acknowledged write (a write
/// may fail during that failover: counted, not refused).
pub async fn slow_wan(
    plane: &mut DataPlane,
    ledger: &mut Ledger,
    shape: LinkShape,
    hold: Duration,
) -> SlowWan {
    let nodes: Api<DatabaseNode> = Api::namespaced(plane.client.clone(), &plane.namespace);
    let failovers = || async {
        super::plans(plane)
            .await
            .iter()
            .filter(|p| p.spec.purpose == shardplane::api::plan::PlanPurpose::Failover)
            .count()
    };
    let failovers_before = failovers().await;
    let workload = ledger.start(20).await;
    let links: Vec<_> = plane
        .nodes()
        .iter()
        .map(|(node, region, ..)| {
            let others: Vec<_> = plane
                .nodes()
                .iter()
                .filter(|n| n.1 != *region)
                .map(|n| plane.network().address(n.0))
                .collect();
            plane.network().slow_link(node, &others, shape)
        })
        .collect();

    let shard = plane.shard_list().await.remove(0);
    let (commit_latencies, flaps) = watch_commits(plane, ledger, hold).await;
    let false_failovers = failovers().await - failovers_before;
    let acked_before_kill = workload.acked_so_far();

    // A real death during it: detected and failed over all the same.
    let primary = shard.status.clone().unwrap().primary.unwrap();
    plane.agents.get_mut(&primary.node).unwrap().kill();
    let killed = Instant::now();
    let detected = eventually(Duration::from_secs(30), || async {
        nodes
            .get(&primary.node)
            .await
            .unwrap()
            .status
            .and_then(|s| s.phase)
            == Some(NodePhase::Offline)
    })
    .await;
    assert!(
        detected,
        "{} killed during the slow WAN was never declared Offline",
        primary.node
    );
    let kill_detected = killed.elapsed();
    let kill_failover =
        first_acknowledged_within(ledger, &shard, killed, Duration::from_secs(120)).await;

    let mut stats = LinkStats::default();
    for link in links {
        let link = link.stop();
        stats.sent += link.sent;
        stats.dropped += link.dropped;
    }
    plane.start_agent(&primary.node);
    let rejoined = eventually(Duration::from_secs(120), || async {
        plane.shard_list().await.iter().all(|s| {
            super::report(s, &primary.node).is_some_and(|r| {
                r.role == shardplane::api::shard::ReplicaRole::Secondary
                    && r.state == shardplane::api::shard::ReplicaState::InSync
            })
        })
    })
    .await;
    assert!(
        rejoined,
        "{} did not rejoin after the slow WAN",
        primary.node
    );
    let (_, failed_writes) = ledger
        .finish_counting_failures("slow WAN", workload, 20)
        .await;
    SlowWan {
        false_failovers,
        flaps,
        commit_latencies,
        acked_before_kill,
        kill_detected,
        kill_failover,
        failed_writes,
        links: stats,
    }
}
