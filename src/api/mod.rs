//! The custom resources of `shardplane.io/v1alpha1`, one file per kind, plus the few wire
//! types every kind shares. Only types and their schema live here: decisions are in
//! `crate::plan`, side effects in the processes that read and write these objects.

pub mod condition;
pub mod database_cluster;
pub mod database_node;
pub mod plan;
pub mod schema_version;
pub mod shard;
pub mod table;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use condition::{Condition, ConditionStatus};
pub use database_cluster::{DatabaseCluster, DatabaseClusterSpec, DatabaseClusterStatus};
pub use database_node::{DatabaseNode, DatabaseNodeSpec, DatabaseNodeStatus, NodePhase};
pub use plan::{Plan, PlanSpec, PlanStatus};
pub use schema_version::{SchemaVersion, SchemaVersionSpec, SchemaVersionStatus};
pub use shard::{Shard, ShardSpec, ShardStatus};
pub use table::{Table, TableSpec, TableStatus};

/// The API group of every Shardplane resource.
pub const GROUP: &str = "shardplane.io";
/// The API version served and stored.
pub const VERSION: &str = "v1alpha1";
/// The `kubectl get` category that lists every Shardplane resource.
pub const CATEGORY: &str = "shardplane";

/// Every Shardplane CustomResourceDefinition, in a stable order (the order of `crds/`).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        DatabaseCluster::crd(),
        DatabaseNode::crd(),
        Table::crd(),
        Shard::crd(),
        SchemaVersion::crd(),
        Plan::crd(),
    ]
}

/// The CRDs as one multi-document YAML stream, as `shardplane crds` prints it.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

/// Drops a nested type's own description from its schema, so every field that uses the type
/// keeps its field-specific description: kube's schema rewriting otherwise replaces the doc
/// of an `Option<T>` field with `T`'s doc, and `kubectl explain` would show the type's words
/// where the field's belong.
pub(crate) fn describe_by_field(schema: &mut schemars::Schema) {
    schema.remove("description");
}
