//! The cluster a [`super::fleet::Fleet`] is pointed at in the scale benchmark and its CI
//! test: one DatabaseCluster of N nodes spread round-robin over regions × zones, T Tables and
//! S Shards at replication factor 3, created in a namespace with bounded concurrency; and
//! the check that a shard is fully served. Only the objects a user would apply: placement,
//! primaries and status are the operator's.

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, PostParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::api::shard::{ReplicaRole, ReplicaState, ShardPhase};
use crate::api::{DatabaseCluster, DatabaseNode, Shard, Table};
use crate::decide::domain::observed_on;

/// The name of the DatabaseCluster a [`FleetCluster`] creates.
pub const CLUSTER: &str = "fleet";
/// Replicas per shard.
pub const REPLICATION_FACTOR: usize = 3;
/// Creations in flight at once.
const CREATES_IN_FLIGHT: usize = 32;

/// The shape of a simulated cluster.
#[derive(Clone, Debug)]
pub struct FleetCluster {
    /// Regions, named `r0`, `r1`, ….
    pub regions: usize,
    /// Zones per region, named `r0-a`, `r0-b`, ….
    pub zones_per_region: usize,
    /// Nodes, named `node-0000`, … and spread round-robin over every zone of every region.
    pub nodes: usize,
    /// Tables, named `t-0000`, ….
    pub tables: usize,
    /// Shards across all tables (each table gets its share, tiling its key space).
    pub shards: usize,
    /// The cluster's `failureDetection`: heartbeat interval, suspect and dead after, in ms.
    pub failure_detection_ms: (u64, u64, u64),
}

impl FleetCluster {
    /// The name of node `i`.
    pub fn node_name(i: usize) -> String {
        format!("node-{i:04}")
    }

    /// Every node's name, in order.
    pub fn node_names(&self) -> Vec<String> {
        (0..self.nodes).map(Self::node_name).collect()
    }

    /// Node `i`'s region and zone: consecutive nodes land in consecutive regions, and a
    /// region's nodes cycle through its zones.
    pub fn place(&self, i: usize) -> (String, String) {
        let region = i % self.regions;
        let zone = (i / self.regions) % self.zones_per_region;
        let letter = char::from(b'a' + zone as u8);
        (format!("r{region}"), format!("r{region}-{letter}"))
    }

    /// The region of the node named `node` (`None` for a name this layout does not make).
    pub fn region_of(&self, node: &str) -> Option<String> {
        let i: usize = node.strip_prefix("node-")?.parse().ok()?;
        (i < self.nodes).then(|| self.place(i).0)
    }

    /// The zone of the node named `node`.
    pub fn zone_of(&self, node: &str) -> Option<String> {
        let i: usize = node.strip_prefix("node-")?.parse().ok()?;
        (i < self.nodes).then(|| self.place(i).1)
    }

    /// Creates the cluster, its nodes, tables and shards in `namespace`.
    pub async fn create(&self, client: &Client, namespace: &str) -> Result<(), kube::Error> {
        self.create_nodes(client, namespace).await?;
        self.create_tables(client, namespace).await
    }

    /// Creates the DatabaseCluster and its DatabaseNodes in `namespace`.
    pub async fn create_nodes(&self, client: &Client, namespace: &str) -> Result<(), kube::Error> {
        let (heartbeat, suspect, dead) = self.failure_detection_ms;
        let regions: Vec<_> = (0..self.regions)
            .map(|r| {
                let zones: Vec<String> = (0..self.zones_per_region)
                    .map(|z| format!("r{r}-{}", char::from(b'a' + z as u8)))
                    .collect();
                json!({"name": format!("r{r}"), "zones": zones})
            })
            .collect();
        let cluster: DatabaseCluster = from_json(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseCluster",
            "metadata": {"name": CLUSTER},
            "spec": {
                "regions": regions,
                "replicationFactor": REPLICATION_FACTOR,
                "approval": {"safe": "Automatic", "disruptive": "Automatic", "destructive": "Manual"},
                "rebalancing": {"enabled": false},
                "failureDetection": {"heartbeatIntervalMs": heartbeat, "suspectAfterMs": suspect,
                                     "deadAfterMs": dead, "replaceReplicasAfterSeconds": 3600}
            }
        }))?;
        create_all(client, namespace, vec![cluster]).await?;
        let nodes: Vec<DatabaseNode> = (0..self.nodes)
            .map(|i| {
                let (region, zone) = self.place(i);
                from_json(json!({
                    "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseNode",
                    "metadata": {"name": Self::node_name(i)},
                    "spec": {"cluster": CLUSTER, "region": region, "zone": zone,
                             "address": "127.0.0.1", "ports": {"first": 20000, "last": 29999},
                             "capacity": {"storageBytes": 1_000_000_000_000i64}}
                }))
            })
            .collect::<Result<_, _>>()?;
        create_all(client, namespace, nodes).await
    }

    /// Creates the Tables and their Shards in `namespace`.
    pub async fn create_tables(&self, client: &Client, namespace: &str) -> Result<(), kube::Error> {
        let tables: Vec<Table> = (0..self.tables)
            .map(|t| {
                from_json(json!({
                    "apiVersion": "shardplane.io/v1alpha1", "kind": "Table",
                    "metadata": {"name": table_name(t)},
                    "spec": {"cluster": CLUSTER, "shardKey": "id",
                             "columns": [{"name": "id", "type": "bigint", "nullable": false}],
                             "primaryKey": ["id"]}
                }))
            })
            .collect::<Result<_, _>>()?;
        create_all(client, namespace, tables).await?;
        let mut shards = Vec::with_capacity(self.shards);
        for t in 0..self.tables {
            // The first `shards % tables` tables get one shard more.
            let count = self.shards / self.tables + usize::from(t < self.shards % self.tables);
            for (i, range) in key_ranges(count).into_iter().enumerate() {
                shards.push(from_json::<Shard>(json!({
                    "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
                    "metadata": {"name": format!("{}-{i}", table_name(t))},
                    "spec": {"table": table_name(t), "range": range}
                }))?);
            }
        }
        create_all(client, namespace, shards).await
    }
}

fn table_name(t: usize) -> String {
    format!("t-{t:04}")
}

/// `count` key ranges tiling the signed 64-bit key space, as `spec.range` values.
fn key_ranges(count: usize) -> Vec<serde_json::Value> {
    let span = (1i128 << 64) / count.max(1) as i128;
    (0..count as i128)
        .map(|i| {
            let mut range = json!({});
            if i > 0 {
                range["start"] = json!((i128::from(i64::MIN) + i * span) as i64);
            }
            if i < count as i128 - 1 {
                range["end"] = json!((i128::from(i64::MIN) + (i + 1) * span) as i64);
            }
            range
        })
        .collect()
}

fn from_json<K: DeserializeOwned>(value: serde_json::Value) -> Result<K, kube::Error> {
    serde_json::from_value(value).map_err(kube::Error::SerdeError)
}

async fn create_all<K>(client: &Client, namespace: &str, objects: Vec<K>) -> Result<(), kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    futures::stream::iter(objects)
        .map(|object| {
            let api = api.clone();
            async move {
                match api.create(&PostParams::default(), &object).await {
                    // kube's client resends a request answered 429, 503 or 504; an overloaded
                    // API server may answer 504 to a create it has stored, and the resent
                    // create then finds the object: it is there, as wanted. (The seed-size
                    // bench stopped on one.)
                    Err(kube::Error::Api(e)) if e.code == 409 && e.reason == "AlreadyExists" => {
                        Ok(())
                    }
                    result => result.map(drop),
                }
            }
        })
        .buffer_unordered(CREATES_IN_FLIGHT)
        .try_collect()
        .await
}

/// Whether `shard` is fully served: phase Serving, a primary reporting in sync at its epoch,
/// and [`REPLICATION_FACTOR`] desired replicas each reporting in sync in the role wanted.
pub fn fully_serving(shard: &Shard) -> bool {
    let Some(status) = shard.status.as_ref() else {
        return false;
    };
    let Some(primary) = status.primary.as_ref() else {
        return false;
    };
    let primary_in_sync = observed_on(&status.replicas, &primary.node).is_some_and(|o| {
        o.role == ReplicaRole::Primary
            && o.state == ReplicaState::InSync
            && o.epoch == Some(primary.epoch)
    });
    let in_sync = status
        .desired_replicas
        .iter()
        .filter(|d| {
            observed_on(&status.replicas, &d.node)
                .is_some_and(|o| o.role == d.role && o.state == ReplicaState::InSync)
        })
        .count();
    status.phase == Some(ShardPhase::Serving)
        && primary_in_sync
        && status.desired_replicas.len() == REPLICATION_FACTOR
        && in_sync == REPLICATION_FACTOR
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(nodes: usize) -> FleetCluster {
        FleetCluster {
            regions: 10,
            zones_per_region: 3,
            nodes,
            tables: 1,
            shards: 1,
            failure_detection_ms: (500, 1000, 1500),
        }
    }

    #[test]
    fn thirty_nodes_fill_every_zone_of_ten_regions_once() {
        let layout = layout(30);
        let zones: std::collections::BTreeSet<_> = (0..30).map(|i| layout.place(i).1).collect();
        assert_eq!(zones.len(), 30);
        assert_eq!(layout.region_of("node-0013").as_deref(), Some("r3"));
        assert_eq!(layout.zone_of("node-0013").as_deref(), Some("r3-b"));
        assert_eq!(layout.zone_of("node-0030"), None);
    }

    #[test]
    fn key_ranges_tile_the_key_space() {
        let ranges = key_ranges(3);
        assert!(ranges[0].get("start").is_none());
        assert_eq!(ranges[0]["end"], ranges[1]["start"]);
        assert_eq!(ranges[1]["end"], ranges[2]["start"]);
        assert!(ranges[2].get("end").is_none());
        assert_eq!(key_ranges(1), vec![json!({})]);
    }
}
