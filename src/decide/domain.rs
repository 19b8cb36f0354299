//! The planner's plain domain values from the wire objects: nodes, shards (the replica set
//! the operator wants, marked in sync where the agents report so), roles. Invalid objects are
//! reported by the caller and left out, never crashed on.

use crate::api::NodePhase as WireNodePhase;
use crate::api::database_node::NodeDesiredState;
use crate::api::shard::ReplicaRole as WireRole;
use crate::api::shard::{ObservedReplica, ReplicaState};
use crate::api::{DatabaseCluster, DatabaseNode, Shard};
use crate::plan::{self, KeyRange};
use crate::protocol::RESTART_ANNOTATION;

use super::Object;

/// What the user wants of a node: a deleted node is to be decommissioned first.
pub fn desired_state(node: &DatabaseNode) -> Option<NodeDesiredState> {
    if node.deleting() {
        Some(NodeDesiredState::Decommissioned)
    } else {
        node.spec.desired_state
    }
}

/// The on-demand restart the `shardplane.io/restart-requested` annotations of `cluster` and
/// `node` ask of the node (`cluster=V,node=W`), if either has one. A node has answered it
/// once its `status.restart.onDemand` says the same.
pub fn restart_on_demand(cluster: &DatabaseCluster, node: &DatabaseNode) -> Option<String> {
    let parts: Vec<String> = [
        ("cluster", cluster.annotation(RESTART_ANNOTATION)),
        ("node", node.annotation(RESTART_ANNOTATION)),
    ]
    .into_iter()
    .filter_map(|(scope, value)| {
        value
            .filter(|value| !value.is_empty())
            .map(|value| format!("{scope}={value}"))
    })
    .collect();
    (!parts.is_empty()).then(|| parts.join(","))
}

/// A DatabaseNode as the planner sees it.
pub fn domain_node(node: &DatabaseNode) -> plan::Node {
    let phase = node
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(WireNodePhase::Pending);
    plan::Node {
        name: node.name().to_owned(),
        region: node.spec.region.clone(),
        zone: node.spec.zone.clone(),
        capacity_bytes: node.spec.capacity.storage_bytes.max(0) as u64,
        weight: node.spec.weight.unwrap_or(100).max(0) as u32,
        phase: domain_phase(phase),
        cordoned: node.spec.desired_state == Some(NodeDesiredState::Cordoned),
    }
}

fn domain_phase(phase: WireNodePhase) -> plan::NodePhase {
    match phase {
        WireNodePhase::Pending => plan::NodePhase::Pending,
        WireNodePhase::Online => plan::NodePhase::Online,
        WireNodePhase::Suspect => plan::NodePhase::Suspect,
        WireNodePhase::Offline => plan::NodePhase::Offline,
        WireNodePhase::Draining => plan::NodePhase::Draining,
        WireNodePhase::Maintenance => plan::NodePhase::Maintenance,
        WireNodePhase::Decommissioned => plan::NodePhase::Decommissioned,
    }
}

/// The role of a replica in the planner's words.
pub fn domain_role(role: WireRole) -> plan::ReplicaRole {
    match role {
        WireRole::Primary => plan::ReplicaRole::Primary,
        WireRole::Secondary => plan::ReplicaRole::Secondary,
        WireRole::Witness => plan::ReplicaRole::Witness,
    }
}

/// The WAL positions the in-sync secondaries hold once their streams have broken (the
/// primary is gone): `None` while none has reported one (they stream; their own lag counts),
/// `Some(None)` while some have and others not yet, `Some(Some(most))` once all have.
fn held_positions(replicas: &[ObservedReplica]) -> Option<Option<i64>> {
    let in_sync: Vec<_> = in_sync_secondaries(replicas).collect();
    if in_sync.iter().all(|o| o.received_lsn.is_none()) {
        return None;
    }
    if in_sync.iter().any(|o| o.received_lsn.is_none()) {
        return Some(None);
    }
    Some(in_sync.iter().filter_map(|o| o.received_lsn).max())
}

/// Whether `shard`'s primary lost its quorum: it reports itself serving at the shard's epoch
/// on a node `online` says is live, while every in-sync secondary (one at least) has
/// reported a broken stream — the end of the WAL it holds — at least `after_ms` before
/// `now_ms` (report times are whole seconds, so up to a second less in truth). Then the
/// primary is cut off from its standbys and its commits wait for ever;
/// the standbys' positions are final (no commit can be acknowledged without one of them), so
/// the most advanced one holds every acknowledged write.
pub fn quorum_lost(
    shard: &Shard,
    online: impl Fn(&str) -> bool,
    now_ms: u64,
    after_ms: u64,
) -> bool {
    let Some(status) = shard.status.as_ref() else {
        return false;
    };
    let Some(primary) = status.primary.as_ref() else {
        return false;
    };
    // Evidence about *this* primary only: a standby still reporting the stream it lost from
    // the primary before (an older epoch: it has not reported since it was told to follow
    // this one) says nothing about whether this one reaches it.
    let broken_long = |r: &ObservedReplica| {
        r.received_lsn.is_some()
            && r.epoch == Some(primary.epoch)
            && r.last_seen_time.as_ref().is_some_and(|seen| {
                u64::try_from(seen.0.as_millisecond()).is_ok_and(|at| at + after_ms <= now_ms)
            })
    };
    // Cheapest and rarest first: this is asked of every shard at every look.
    let mut in_sync = in_sync_secondaries(&status.replicas).peekable();
    if in_sync.peek().is_none() || !in_sync.all(broken_long) {
        return false;
    }
    // A secondary still catching up streams (it reports no position while it does): the
    // primary reaches it.
    let one_streams = status.replicas.iter().any(|r| {
        r.role == WireRole::Secondary
            && r.state == ReplicaState::CatchingUp
            && r.received_lsn.is_none()
    });
    let serving = observed_on(&status.replicas, &primary.node).is_some_and(|r| {
        r.role == WireRole::Primary
            && r.epoch == Some(primary.epoch)
            && r.state == ReplicaState::InSync
    });
    !one_streams && serving && online(&primary.node)
}

/// The secondaries of `replicas` that report themselves in sync (streaming, or holding all
/// they received once their stream broke).
fn in_sync_secondaries(replicas: &[ObservedReplica]) -> impl Iterator<Item = &ObservedReplica> {
    replicas
        .iter()
        .filter(|o| o.role == WireRole::Secondary && o.state == ReplicaState::InSync)
}

/// How long every in-sync standby's stream must have been reported broken before a live
/// primary counts as having lost its quorum: the cluster's `deadAfterMs`, at least
/// [`QUORUM_LOSS_AFTER_MS`], and a second more for the whole seconds of the report times. A
/// standby's stream also breaks for a moment when it is made or its primary restarts (seen
/// for about a second right after a standby's creation); a partition is noticed only after
/// the instances' `wal_receiver_timeout` (3 s) and lasts.
pub fn quorum_loss_after_ms(dead_after_ms: i64) -> u64 {
    u64::try_from(dead_after_ms)
        .unwrap_or(0)
        .max(QUORUM_LOSS_AFTER_MS)
        + 1_000
}

/// The least time of [`quorum_loss_after_ms`].
pub const QUORUM_LOSS_AFTER_MS: u64 = 5_000;

/// How far a replica is behind. Once a standby's stream has broken it reports the end of
/// the WAL it holds; then the lag that counts is against the in-sync standby holding the
/// most, so failover (which promotes only the least lagging) never picks one missing a
/// commit another acknowledged. Until every in-sync secondary has reported, all of them
/// count as lagging without bound: failover waits the second or so that takes rather than
/// choose among some of them.
fn lag_bytes(observed: Option<&ObservedReplica>, held: Option<Option<i64>>) -> u64 {
    let reported = observed.and_then(|o| o.lag_bytes).unwrap_or(0).max(0) as u64;
    match (observed, held) {
        (Some(o), Some(most)) if o.role == WireRole::Secondary => match (most, o.received_lsn) {
            (Some(most), Some(own)) => reported.max((most - own).max(0) as u64),
            _ => u64::MAX,
        },
        _ => reported,
    }
}

/// A Shard as the planner sees it: the desired replica set, with what agents observe.
pub fn domain_shard(shard: &Shard) -> Result<plan::Shard, plan::KeyRangeError> {
    let range = KeyRange::from_wire(shard.spec.range.start, shard.spec.range.end)?;
    let status = shard.status.clone().unwrap_or_default();
    let epoch = status.primary.as_ref().map_or(0, |p| p.epoch.max(0) as u64);
    let held = held_positions(&status.replicas);
    let replicas = status
        .desired_replicas
        .iter()
        .map(|desired| {
            let observed = observed_on(&status.replicas, &desired.node);
            plan::Replica {
                node: desired.node.clone(),
                role: domain_role(desired.role),
                in_sync: observed.is_some_and(|o| o.state == ReplicaState::InSync),
                lag_bytes: lag_bytes(observed, held),
            }
        })
        .collect();
    let placement = shard.spec.placement.clone().unwrap_or_default();
    Ok(plan::Shard {
        name: shard.name().to_owned(),
        table: shard.spec.table.clone(),
        range,
        size_bytes: status.size_bytes.unwrap_or(0).max(0) as u64,
        epoch,
        replicas,
        placement: plan::ShardPlacement {
            pinned_nodes: placement.pinned_nodes,
            preferred_primary_region: placement.preferred_primary_region,
        },
    })
}

/// The replica an agent reports on `node`, if any.
pub fn observed_on<'a>(replicas: &'a [ObservedReplica], node: &str) -> Option<&'a ObservedReplica> {
    replicas.iter().find(|r| r.node == node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standby(node: &str, received_lsn: Option<i64>) -> ObservedReplica {
        ObservedReplica {
            node: node.into(),
            role: WireRole::Secondary,
            state: ReplicaState::InSync,
            endpoint: None,
            lag_bytes: Some(0),
            epoch: Some(1),
            received_lsn,
            last_seen_time: None,
        }
    }

    #[test]
    fn after_the_streams_break_only_the_standby_holding_the_most_wal_has_no_lag() {
        let ahead = standby("a", Some(5_000));
        let behind = standby("b", Some(4_000));
        let held = held_positions(&[ahead.clone(), behind.clone()]);
        assert_eq!(held, Some(Some(5_000)));
        assert_eq!(lag_bytes(Some(&ahead), held), 0);
        assert_eq!(lag_bytes(Some(&behind), held), 1_000);
    }

    #[test]
    fn until_every_in_sync_standby_has_reported_none_is_a_candidate() {
        let ahead = standby("a", Some(5_000));
        let silent = standby("c", None);
        let mut catching_up = standby("d", Some(9_000));
        catching_up.state = ReplicaState::CatchingUp;
        let held = held_positions(&[ahead.clone(), silent.clone(), catching_up.clone()]);
        assert_eq!(held, Some(None));
        assert_eq!(lag_bytes(Some(&ahead), held), u64::MAX);
        assert_eq!(lag_bytes(Some(&silent), held), u64::MAX);
        // A standby still catching up neither holds the others back nor sets the mark.
        assert_eq!(
            held_positions(&[ahead.clone(), catching_up]),
            Some(Some(5_000))
        );
    }

    fn serving(primary: &str, standbys: Vec<ObservedReplica>) -> Shard {
        let mut replicas = standbys;
        let mut p = standby(primary, None);
        p.role = WireRole::Primary;
        replicas.push(p);
        serde_json::from_value(serde_json::json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
            "metadata": {"name": "s"},
            "spec": {"table": "t", "range": {}},
            "status": {"primary": {"node": primary, "epoch": 1}, "replicas": replicas}
        }))
        .unwrap()
    }

    fn broken_at(node: &str, lsn: i64, at_ms: i64) -> ObservedReplica {
        let mut r = standby(node, Some(lsn));
        r.last_seen_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_millisecond(at_ms).unwrap(),
        ));
        r
    }

    #[test]
    fn a_live_primary_whose_every_in_sync_standby_lost_its_stream_long_enough_lost_its_quorum() {
        let online = |_: &str| true;
        // Report times are whole seconds (`metav1.Time`).
        let both = serving(
            "p",
            vec![broken_at("a", 10, 1_000), broken_at("b", 9, 2_000)],
        );
        assert!(quorum_lost(&both, online, 3_500, 1_500));
        // Not yet long enough for the later report.
        assert!(!quorum_lost(&both, online, 3_400, 1_500));
        // One standby still streams: the quorum holds.
        let one = serving("p", vec![broken_at("a", 10, 1_000), standby("b", None)]);
        assert!(!quorum_lost(&one, online, 60_000, 1_500));
        // The primary's node is not live: that is a dead node's failover, not this.
        assert!(!quorum_lost(&both, |n: &str| n != "p", 60_000, 1_500));
        // A fenced primary is not serving.
        let mut fenced = both.clone();
        let status = fenced.status.as_mut().unwrap();
        status.replicas.last_mut().unwrap().state = ReplicaState::Fenced;
        assert!(!quorum_lost(&fenced, online, 60_000, 1_500));
        // A standby catching up streams from the primary.
        let mut copying = standby("c", None);
        copying.state = ReplicaState::CatchingUp;
        let mut streams = both.clone();
        streams.status.as_mut().unwrap().replicas.push(copying);
        assert!(!quorum_lost(&streams, online, 60_000, 1_500));
        // No in-sync standby at all: nothing to fail over to.
        assert!(!quorum_lost(&serving("p", vec![]), online, 60_000, 1_500));
        // A standby whose last report is about the primary before (it lost that stream when
        // that primary died, and has not reported since it was told to follow this one).
        let mut earlier = broken_at("b", 9, 2_000);
        earlier.epoch = Some(0);
        let after_a_failover = serving("p", vec![broken_at("a", 10, 1_000), earlier]);
        assert!(!quorum_lost(&after_a_failover, online, 60_000, 1_500));
    }

    #[test]
    fn while_streaming_the_reported_lag_counts() {
        let mut streaming = standby("a", None);
        streaming.lag_bytes = Some(42);
        assert_eq!(held_positions(std::slice::from_ref(&streaming)), None);
        assert_eq!(lag_bytes(Some(&streaming), None), 42);
        let mut primary = standby("p", None);
        primary.role = WireRole::Primary;
        assert_eq!(lag_bytes(Some(&primary), Some(Some(9_000))), 0);
        assert_eq!(lag_bytes(None, Some(Some(9_000))), 0);
    }
}
