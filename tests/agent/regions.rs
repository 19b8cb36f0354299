//! A whole region lost and returned (issue #14, case d), shared by the partition tests and
//! the `region_loss` benchmark: three regions of two zones, one host each, RF 3 with one
//! replica per region; every host of one region cut off at once (packets dropped, nothing
//! killed), the lost replicas replaced in the other regions after
//! `replaceReplicasAfterSeconds`, then the region healed and the spread restored with no
//! step by anyone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use shardplane::api::DatabaseCluster;
use shardplane::api::shard::{ReplicaRole, ReplicaState, Shard};

use super::probes::{
    first_acknowledged, probe_every_replica, stop_probers, two_writable_primaries,
};
use super::{DataPlane, Ledger, NodeDef};
use crate::support::eventually;

/// Three regions of two zones, one node in each zone.
pub const REGION_NODES: [NodeDef; 6] = [
    ("n1", "r1", "r1-a", 25100),
    ("n2", "r2", "r2-a", 25200),
    ("n3", "r3", "r3-a", 25300),
    ("n4", "r1", "r1-b", 25400),
    ("n5", "r2", "r2-b", 25500),
    ("n6", "r3", "r3-b", 25600),
];

/// What one region's loss and return took.
pub struct RegionLoss {
    /// The region lost.
    pub region: String,
    /// From the cut to the first routed write acknowledged after it, for the last of the
    /// shards whose primary was in the region (each measured from the cut).
    pub rto: Duration,
    /// From the cut to every shard holding its replication factor of in-sync replicas
    /// outside the region.
    pub replaced: Duration,
    /// From the heal to every shard holding one in-sync replica per region again.
    pub respread: Duration,
    /// Instants with two writable primaries for one shard the probers saw.
    pub two_writable: Vec<String>,
}

/// Sets the cluster's `replaceReplicasAfterSeconds`.
async fn set_replace_after(plane: &DataPlane, after: Duration) {
    Api::<DatabaseCluster>::namespaced(plane.client.clone(), &plane.namespace)
        .patch(
            "main",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"failureDetection": {
                "replaceReplicasAfterSeconds": after.as_secs()
            }}})),
        )
        .await
        .unwrap();
}

/// The region of the node leading the first shard.
pub async fn region_leading_first_shard(plane: &DataPlane) -> String {
    let shard = plane.shard_list().await.remove(0);
    let node = shard.status.unwrap().primary.unwrap().node;
    region_of(&node).to_owned()
}

fn region_of(node: &str) -> &'static str {
    REGION_NODES
        .iter()
        .find(|n| n.0 == node)
        .map(|n| n.1)
        .unwrap_or_else(|| panic!("{node} is none of the region test's nodes"))
}

/// Every replica `shard` should have (`status.desiredReplicas`) with its region, if each
/// reports itself the primary or an in-sync standby.
fn in_sync_regions(shard: &Shard) -> Option<Vec<(&str, &'static str)>> {
    let status = shard.status.as_ref()?;
    status
        .desired_replicas
        .iter()
        .map(|d| {
            let observed = status.replicas.iter().find(|r| r.node == d.node)?;
            let serving = observed.role == ReplicaRole::Primary
                || (observed.role == ReplicaRole::Secondary
                    && observed.state == ReplicaState::InSync);
            serving.then(|| (d.node.as_str(), region_of(&d.node)))
        })
        .collect()
}

/// Every shard's desired and reported replicas, for a failure's message.
async fn replica_sets(
    plane: &DataPlane,
) -> Vec<(String, Option<shardplane::api::shard::ShardStatus>)> {
    plane
        .shard_list()
        .await
        .into_iter()
        .map(|s| (s.name_any(), s.status))
        .collect()
}

/// Cuts every host of `region` off at once under the routed workload and the probers, and
/// checks what must follow (panicking with what did not): every shard led there takes writes
/// on a new primary elsewhere; its lost replicas are replaced in the other regions, not
/// before `replace_after` (the cluster's `replaceReplicasAfterSeconds` for the trial, 300
/// again after it); after the heal the region's nodes return and every shard holds
/// one in-sync replica per region again; every acknowledged write is found exactly once.
pub async fn lose_region(
    plane: &DataPlane,
    ledger: &mut Ledger,
    region: &str,
    replace_after: Duration,
) -> RegionLoss {
    let what = format!("region {region} lost");
    let hosts: Vec<&str> = REGION_NODES
        .iter()
        .filter(|n| n.1 == region)
        .map(|n| n.0)
        .collect();
    let shards = plane.shard_list().await;
    let led: BTreeMap<String, i64> = shards
        .iter()
        .filter_map(|s| {
            let primary = s.status.as_ref()?.primary.as_ref()?;
            hosts
                .contains(&primary.node.as_str())
                .then(|| (s.name_any(), primary.epoch))
        })
        .collect();
    set_replace_after(plane, replace_after).await;
    let workload = ledger.start(20).await;
    let stop = Arc::new(AtomicBool::new(false));
    let probers = probe_every_replica(plane, &shards, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let at = Instant::now();
    for host in &hosts {
        plane.network().isolate(host);
    }
    let mut rto = Duration::ZERO;
    for shard in shards.iter().filter(|s| led.contains_key(&s.name_any())) {
        rto = rto.max(first_acknowledged(ledger, shard, at).await);
    }
    let moved = eventually(Duration::from_secs(60), || async {
        plane.shard_list().await.iter().all(|s| {
            let Some(epoch) = led.get(&s.name_any()) else {
                return true;
            };
            s.status
                .as_ref()
                .and_then(|st| st.primary.as_ref())
                .is_some_and(|p| region_of(&p.node) != region && p.epoch > *epoch)
        })
    })
    .await;
    assert!(
        moved,
        "{what}: the shards it led did not all move elsewhere"
    );

    let all_outside = || async {
        plane.shard_list().await.iter().all(|s| {
            in_sync_regions(s).is_some_and(|replicas| {
                replicas.len() == 3 && replicas.iter().all(|(_, r)| *r != region)
            })
        })
    };
    let replaced = eventually(replace_after + Duration::from_secs(90), all_outside).await;
    assert!(
        replaced,
        "{what}: its replicas were not replaced in the other regions: {:#?}",
        replica_sets(plane).await
    );
    let replaced = at.elapsed();
    assert!(
        replaced >= replace_after,
        "{what}: replaced after {replaced:?}, before replaceReplicasAfterSeconds ({replace_after:?})"
    );

    for host in &hosts {
        plane.network().heal(host);
    }
    let healed = Instant::now();
    let respread = eventually(Duration::from_secs(180), || async {
        plane.shard_list().await.iter().all(|s| {
            in_sync_regions(s).is_some_and(|replicas| {
                let mut regions: Vec<&str> = replicas.iter().map(|(_, r)| *r).collect();
                regions.sort_unstable();
                regions == ["r1", "r2", "r3"]
            })
        })
    })
    .await;
    assert!(
        respread,
        "{what}: after the heal the shards did not return to one replica per region: {:#?}",
        replica_sets(plane).await
    );
    let respread = healed.elapsed();
    // Back to the cluster's 300 s, so a node that dies and returns later keeps its replicas.
    set_replace_after(plane, Duration::from_secs(300)).await;
    ledger.finish(&what, workload, 20).await;
    let probes = stop_probers(&stop, probers).await;
    RegionLoss {
        region: region.to_owned(),
        rto,
        replaced,
        respread,
        two_writable: two_writable_primaries(&probes),
    }
}
