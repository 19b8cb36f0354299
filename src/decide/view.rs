//! One cluster's objects at one moment, in a fixed order, and the planner's view of them.

use std::sync::Arc;

use crate::api::{DatabaseCluster, DatabaseNode, Plan, Shard, Table};
use crate::plan::Topology;

use super::Object;
use super::domain::{domain_node, domain_shard};

/// Everything the operator knows about one cluster at one moment.
pub struct ClusterView {
    /// The cluster.
    pub cluster: Arc<DatabaseCluster>,
    /// Its nodes.
    pub nodes: Vec<Arc<DatabaseNode>>,
    /// Its tables.
    pub tables: Vec<Arc<Table>>,
    /// The shards of its tables.
    pub shards: Vec<Arc<Shard>>,
    /// Its plans.
    pub plans: Vec<Arc<Plan>>,
}

impl ClusterView {
    /// `cluster`'s objects among the given ones, each kind sorted by name: a watch cache (or
    /// a list) has no order the planner may depend on, and its answer (and so its hash) must
    /// not depend on one. `shardplane plan` builds the same view from the desired state of a
    /// pull request, so both ask the planner the same question.
    pub fn of(
        cluster: Arc<DatabaseCluster>,
        nodes: Vec<Arc<DatabaseNode>>,
        tables: Vec<Arc<Table>>,
        shards: Vec<Arc<Shard>>,
        plans: Vec<Arc<Plan>>,
    ) -> Self {
        let namespace = cluster.namespace().map(str::to_owned);
        let name = cluster.name().to_owned();
        let here = |ns: Option<&str>| ns == namespace.as_deref();
        let tables = by_name(tables, |t| here(t.namespace()) && t.spec.cluster == name);
        let names: std::collections::HashSet<&str> = tables.iter().map(|t| t.name()).collect();
        let shards = by_name(shards, |s| {
            here(s.namespace()) && names.contains(s.spec.table.as_str())
        });
        ClusterView {
            nodes: by_name(nodes, |n| here(n.namespace()) && n.spec.cluster == name),
            plans: by_name(plans, |p| here(p.namespace()) && p.spec.cluster == name),
            tables,
            shards,
            cluster,
        }
    }

    /// This view with `created` (plans just made by this look, not yet in a watch cache)
    /// among its plans.
    pub fn with_plans(&self, created: &[Arc<Plan>]) -> ClusterView {
        ClusterView {
            cluster: self.cluster.clone(),
            nodes: self.nodes.clone(),
            tables: self.tables.clone(),
            shards: self.shards.clone(),
            plans: self.plans.iter().chain(created).cloned().collect(),
        }
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        self.cluster.name()
    }

    /// The planner's view: nodes, and shards with the replica set the operator wants,
    /// marked in sync where the agents report so. Shards with an invalid range are left out
    /// and named in the second value.
    pub fn topology(&self) -> (Topology, Vec<String>) {
        let mut invalid = Vec::new();
        let shards = self
            .shards
            .iter()
            .filter_map(|shard| match domain_shard(shard) {
                Ok(shard) => Some(shard),
                Err(error) => {
                    invalid.push(format!("{}: {error}", shard.name()));
                    None
                }
            })
            .collect();
        let topology = Topology {
            replication_factor: self.cluster.spec.replication_factor.max(0) as u32,
            nodes: self.nodes.iter().map(|n| domain_node(n)).collect(),
            shards,
        };
        (topology, invalid)
    }
}

/// The objects that pass `keep`, sorted by name.
fn by_name<K: Object>(objects: Vec<Arc<K>>, keep: impl Fn(&K) -> bool) -> Vec<Arc<K>> {
    let mut kept: Vec<Arc<K>> = objects.into_iter().filter(|o| keep(o)).collect();
    kept.sort_by(|a, b| a.name().cmp(b.name()));
    kept
}
