//! A table's routing map (key range → shard → primary, epoch, endpoint), computed from its
//! Shards: the one place a `RouteEntry` is built. The table reconciler publishes it, and a
//! split's or merge's switch asks for it with the sources retired — one computation, one
//! writer (`controller::table`), one atomic switch.

use crate::api::Shard;
use crate::api::shard::ShardPhase;
use crate::api::table::{RouteEntry, RoutingMap};

use super::Object;
use super::domain::observed_on;
use super::reshard::range_of;

/// Where `shard`'s keys are routed: its range, its primary's node and epoch, and the
/// endpoint that node's agent reports for it.
pub fn route_entry(shard: &Shard) -> RouteEntry {
    let status = shard.status.clone().unwrap_or_default();
    let primary = status.primary.clone();
    let endpoint = primary
        .as_ref()
        .and_then(|p| observed_on(&status.replicas, &p.node))
        .and_then(|o| o.endpoint.clone());
    RouteEntry {
        start: shard.spec.range.start,
        end: shard.spec.range.end,
        shard: shard.name().to_owned(),
        primary: primary.as_ref().map(|p| p.node.clone()),
        endpoint,
        epoch: primary.map_or(0, |p| p.epoch),
    }
}

/// The routing entries the shards describe, ordered by start. Left out: retiring shards and
/// those named in `retire` (a split's or merge's sources at its switch), and a shard whose
/// range overlaps a shard the map already routes (`routed`): the target of a declared split
/// or merge enters the map only at its switch, which retires its sources in the same write.
pub fn routing_entries(
    shards: &[Shard],
    routed: &[RouteEntry],
    retire: &[String],
) -> Vec<RouteEntry> {
    let serving: Vec<&Shard> = shards
        .iter()
        .filter(|s| s.status.as_ref().and_then(|st| st.phase) != Some(ShardPhase::Retiring))
        .filter(|s| !retire.iter().any(|r| r == s.name()))
        .collect();
    let is_routed = |s: &Shard| routed.iter().any(|e| e.shard == s.name());
    let routed_ranges: Vec<_> = serving
        .iter()
        .filter(|s| is_routed(s))
        .filter_map(|s| range_of(s))
        .collect();
    let mut entries: Vec<RouteEntry> = serving
        .into_iter()
        .filter(|s| {
            is_routed(s)
                || range_of(s).is_some_and(|r| !routed_ranges.iter().any(|o| o.overlaps(r)))
        })
        .map(route_entry)
        .collect();
    entries.sort_by_key(|e| (e.start.map_or(i128::MIN, i128::from), e.shard.clone()));
    entries
}

/// The map after `old` with `entries`: the same map when nothing changed, else the entries
/// one version on.
pub fn next_map(old: &RoutingMap, entries: Vec<RouteEntry>) -> RoutingMap {
    if old.ranges == entries {
        old.clone()
    } else {
        RoutingMap {
            version: old.version + 1,
            ranges: entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::shard::{ObservedReplica, PrimaryRef, ReplicaRole, ReplicaState};
    use crate::api::{ShardSpec, ShardStatus};

    fn shard(name: &str, start: Option<i64>, end: Option<i64>) -> Shard {
        let spec: ShardSpec = serde_json::from_value(serde_json::json!({
            "table": "t", "range": {"start": start, "end": end}
        }))
        .unwrap();
        let mut shard = Shard::new(name, spec);
        shard.status = Some(ShardStatus {
            primary: Some(PrimaryRef {
                node: "n1".to_owned(),
                epoch: 1,
            }),
            replicas: vec![ObservedReplica {
                node: "n1".to_owned(),
                role: ReplicaRole::Primary,
                state: ReplicaState::InSync,
                endpoint: Some("127.0.0.1:1".to_owned()),
                lag_bytes: Some(0),
                epoch: Some(1),
                received_lsn: None,
                last_seen_time: None,
            }],
            ..Default::default()
        });
        shard
    }

    #[test]
    fn the_switch_replaces_the_sources_in_one_new_version_and_is_idempotent() {
        let shards = [
            shard("a", None, Some(0)),
            shard("b", Some(0), None),
            shard("b0", Some(0), Some(100)),
            shard("b1", Some(100), None),
        ];
        let old = RoutingMap {
            version: 7,
            ranges: vec![route_entry(&shards[0]), route_entry(&shards[1])],
        };
        // Before the switch the targets overlap a routed source: they stay out.
        let before = routing_entries(&shards, &old.ranges, &[]);
        assert_eq!(next_map(&old, before), old);
        let retire = ["b".to_owned()];
        let new = next_map(&old, routing_entries(&shards, &old.ranges, &retire));
        assert_eq!(new.version, 8);
        let names: Vec<&str> = new.ranges.iter().map(|e| e.shard.as_str()).collect();
        assert_eq!(names, ["a", "b0", "b1"]);
        assert_eq!(new.ranges[1].endpoint.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(
            next_map(&new, routing_entries(&shards, &new.ranges, &retire)),
            new
        );
        // Once switched, the sources no longer come back, named or not.
        assert_eq!(
            next_map(&new, routing_entries(&shards, &new.ranges, &[])),
            new
        );
    }
}
