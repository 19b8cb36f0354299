//! One fault on one node under the routed workload, shared by the network benchmarks: the
//! node leading the first shard killed, cut off from everything, or cut from its peers; then
//! returned and checked back as a streaming standby of every shard it held.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use shardplane::api::shard::{ReplicaRole, ReplicaState};

use super::probes::{
    first_acknowledged, probe_every_replica, stop_probers, two_writable_primaries,
};
use super::{DataPlane, Ledger, report};
use crate::support::eventually;

/// What befalls the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Its agent SIGKILLed, PostgreSQL with it; restarted afterwards.
    Kill,
    /// Its host cut off from everything (issue #14, case a); healed.
    Isolated,
    /// Its host cut from the other nodes only (case c); healed.
    Standbys,
}

/// One fault on the node leading `orders-0`, under the workload: how long until an affected
/// shard's first routed write after it was acknowledged, and how many instants with two
/// writable primaries the probers saw. Ends with the node back as a standby of every shard
/// and every acknowledged write found (the ledger panics otherwise).
pub async fn node_fault(plane: &mut DataPlane, ledger: &mut Ledger, fault: Fault) -> (f64, usize) {
    let shards = plane.shard_list().await;
    let victim = shards[0].status.clone().unwrap().primary.unwrap().node;
    let workload = ledger.start(20).await;
    let stop = Arc::new(AtomicBool::new(false));
    let probers = probe_every_replica(plane, &shards, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at = Instant::now();
    match fault {
        Fault::Kill => plane.agents.get_mut(&victim).expect("agent").kill(),
        Fault::Isolated => plane.network().isolate(&victim),
        Fault::Standbys => {
            let peers: Vec<_> = plane
                .nodes()
                .iter()
                .filter(|n| n.0 != victim)
                .map(|n| plane.network().address(n.0))
                .collect();
            plane.network().cut(&victim, &peers);
        }
    }
    let took = first_acknowledged(ledger, &shards[0], at).await;
    // Every shard the node led moves before it returns (or a return supersedes the rest of
    // its failover, and it leads them again).
    let led: Vec<(String, i64)> = shards
        .iter()
        .filter_map(|s| {
            let primary = s.status.as_ref()?.primary.clone()?;
            (primary.node == victim).then(|| (s.name_any(), primary.epoch))
        })
        .collect();
    let moved = eventually(Duration::from_secs(60), || async {
        let now = plane.shard_list().await;
        led.iter().all(|(name, epoch)| {
            now.iter().any(|s| {
                &s.name_any() == name
                    && s.status
                        .as_ref()
                        .and_then(|st| st.primary.as_ref())
                        .is_some_and(|p| p.node != victim && p.epoch > *epoch)
            })
        })
    })
    .await;
    assert!(
        moved,
        "{fault:?}: the primaries of {victim} did not all move"
    );
    match fault {
        Fault::Kill => plane.start_agent(&victim),
        Fault::Isolated | Fault::Standbys => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            plane.network().heal(&victim);
        }
    }
    let held: Vec<String> = shards
        .iter()
        .filter(|s| report(s, &victim).is_some())
        .map(|s| s.name_any())
        .collect();
    let rejoined = eventually(Duration::from_secs(120), || async {
        plane
            .shard_list()
            .await
            .iter()
            .filter(|s| held.contains(&s.name_any()))
            .all(|shard| {
                report(shard, &victim).is_some_and(|r| {
                    r.role == ReplicaRole::Secondary
                        && r.state == ReplicaState::InSync
                        && r.received_lsn.is_none()
                })
            })
    })
    .await;
    assert!(rejoined, "{fault:?}: {victim} did not rejoin as a standby");
    plane
        .wait_serving(shards.len(), Duration::from_secs(120))
        .await;
    ledger
        .finish(&format!("{fault:?} of {victim}"), workload, 20)
        .await;
    let probes = stop_probers(&stop, probers).await;
    let both = two_writable_primaries(&probes);
    for line in &both {
        println!("{fault:?}: two writable primaries: {line}");
    }
    (took.as_secs_f64(), both.len())
}
