//! A table's routing map as a lookup structure: `Table.status.routing` checked once (ranges
//! valid, ordered, not overlapping, endpoints parseable) and turned into ranges searched by
//! keyspace id. No I/O.

use std::sync::Arc;

use crate::api::Table;
use crate::api::table::{KeySpace, RouteEntry, RoutingMap};
use crate::plan::KeyRange;
use crate::protocol::Endpoint;

use super::error::RoutingMapError;
use super::keyhash::{ShardKeyValue, keyspace_id};

/// Where one key range is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The range.
    pub range: KeyRange,
    /// The Shard serving it.
    pub shard: String,
    /// The primary's PostgreSQL instance; `None` while the shard has no primary.
    pub endpoint: Option<Endpoint>,
    /// The primary's epoch.
    pub epoch: i64,
}

/// A validated routing map of one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTable {
    table: String,
    version: i64,
    key_space: KeySpace,
    routes: Vec<Route>,
}

impl RouteTable {
    /// The routing map in `table`'s status, with the key space its spec declares; `Ok(None)`
    /// when the status has no routing map yet.
    pub fn from_table(table: &Table) -> Result<Option<Arc<RouteTable>>, RoutingMapError> {
        let name = table.metadata.name.clone().unwrap_or_default();
        let key_space = table
            .spec
            .sharding
            .as_ref()
            .and_then(|sharding| sharding.key_space)
            .unwrap_or(KeySpace::Hash);
        match table.status.as_ref().and_then(|s| s.routing.as_ref()) {
            Some(map) => RouteTable::new(&name, key_space, map).map(|t| Some(Arc::new(t))),
            None => Ok(None),
        }
    }

    /// Checks `map` (of the Table named `table`) and builds its lookup structure.
    pub fn new(
        table: &str,
        key_space: KeySpace,
        map: &RoutingMap,
    ) -> Result<RouteTable, RoutingMapError> {
        let invalid = |reason: String| RoutingMapError {
            table: table.to_owned(),
            version: map.version,
            reason,
        };
        let mut routes: Vec<Route> = Vec::with_capacity(map.ranges.len());
        for entry in &map.ranges {
            let route = route_of(entry).map_err(&invalid)?;
            if let Some(previous) = routes.last()
                && previous.range.end() > route.range.start()
            {
                return Err(invalid(format!(
                    "shard {} {} overlaps or precedes shard {} {}; ranges must be ordered by start and disjoint",
                    route.shard, route.range, previous.shard, previous.range
                )));
            }
            routes.push(route);
        }
        Ok(RouteTable {
            table: table.to_owned(),
            version: map.version,
            key_space,
            routes,
        })
    }

    /// The Table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The routing map's version.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// How keys map to keyspace ids.
    pub fn key_space(&self) -> KeySpace {
        self.key_space
    }

    /// Every route, ordered by range.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The keyspace id of a shard key value in this table's key space: PostgreSQL's hash, or
    /// the integer key itself for a `Range` key space (where a text key has no position).
    pub fn keyspace_of(&self, key: &ShardKeyValue) -> Option<i64> {
        match (self.key_space, key) {
            (KeySpace::Hash, key) => Some(keyspace_id(key)),
            (KeySpace::Range, ShardKeyValue::Int(value)) => Some(*value),
            (KeySpace::Range, ShardKeyValue::Text(_)) => None,
        }
    }

    /// The route whose range holds `keyspace_id`, if the map covers it.
    pub fn route(&self, keyspace_id: i64) -> Option<&Route> {
        let key = i128::from(keyspace_id);
        let after = self.routes.partition_point(|r| r.range.start() <= key);
        after
            .checked_sub(1)
            .map(|index| &self.routes[index])
            .filter(|route| route.range.contains(keyspace_id))
    }
}

/// One entry of the wire map as a route.
fn route_of(entry: &RouteEntry) -> Result<Route, String> {
    let range = KeyRange::from_wire(entry.start, entry.end)
        .map_err(|error| format!("shard {}: {error}", entry.shard))?;
    let endpoint = match &entry.endpoint {
        None => None,
        Some(text) => {
            Some(Endpoint::parse(text).map_err(|error| format!("shard {}: {error}", entry.shard))?)
        }
    };
    Ok(Route {
        range,
        shard: entry.shard.clone(),
        endpoint,
        epoch: entry.epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(start: Option<i64>, end: Option<i64>, shard: &str, endpoint: &str) -> RouteEntry {
        RouteEntry {
            start,
            end,
            shard: shard.to_owned(),
            primary: Some("node".to_owned()),
            endpoint: Some(endpoint.to_owned()),
            epoch: 1,
        }
    }

    fn map(ranges: Vec<RouteEntry>) -> RoutingMap {
        RoutingMap { version: 3, ranges }
    }

    /// A hash-keyed table "t" routed by `ranges`.
    fn hashed(ranges: Vec<RouteEntry>) -> RouteTable {
        RouteTable::new("t", KeySpace::Hash, &map(ranges)).unwrap()
    }

    #[test]
    fn finds_the_range_of_every_key_including_the_edges() {
        let table = hashed(vec![
            entry(None, Some(-10), "a", "127.0.0.1:1"),
            entry(Some(-10), Some(0), "b", "127.0.0.1:2"),
            entry(Some(0), None, "c", "127.0.0.1:3"),
        ]);
        let shard = |key| table.route(key).map(|r| r.shard.as_str());
        assert_eq!(shard(i64::MIN), Some("a"));
        assert_eq!(shard(-11), Some("a"));
        assert_eq!(shard(-10), Some("b"));
        assert_eq!(shard(-1), Some("b"));
        assert_eq!(shard(0), Some("c"));
        assert_eq!(shard(i64::MAX), Some("c"));
        assert_eq!(table.version(), 3);
    }

    #[test]
    fn a_gap_is_not_covered() {
        let table = hashed(vec![
            entry(None, Some(-10), "a", "127.0.0.1:1"),
            entry(Some(5), None, "c", "127.0.0.1:3"),
        ]);
        assert_eq!(table.route(0), None);
        assert_eq!(table.route(-10), None);
        assert_eq!(table.route(5).map(|r| r.shard.as_str()), Some("c"));
    }

    #[test]
    fn overlapping_unordered_and_malformed_maps_are_refused() {
        let overlapping = map(vec![
            entry(None, Some(10), "a", "127.0.0.1:1"),
            entry(Some(5), None, "b", "127.0.0.1:2"),
        ]);
        let error = RouteTable::new("t", KeySpace::Hash, &overlapping).unwrap_err();
        assert!(error.to_string().contains("overlaps"), "{error}");
        let bad_endpoint = map(vec![entry(None, None, "a", "localhost")]);
        let error = RouteTable::new("t", KeySpace::Hash, &bad_endpoint).unwrap_err();
        assert!(error.to_string().contains("not host:port"), "{error}");
        let empty_range = map(vec![entry(Some(5), Some(5), "a", "127.0.0.1:1")]);
        assert!(RouteTable::new("t", KeySpace::Hash, &empty_range).is_err());
    }

    #[test]
    fn key_space_decides_the_position_of_a_key() {
        let whole = map(vec![entry(None, None, "a", "127.0.0.1:1")]);
        let hash = RouteTable::new("t", KeySpace::Hash, &whole).unwrap();
        let range = RouteTable::new("t", KeySpace::Range, &whole).unwrap();
        let key = ShardKeyValue::Int(42);
        assert_eq!(hash.keyspace_of(&key), Some(keyspace_id(&key)));
        assert_eq!(range.keyspace_of(&key), Some(42));
        assert_eq!(range.keyspace_of(&ShardKeyValue::Text("x".into())), None);
    }
}
