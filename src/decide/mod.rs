//! The decision layer: everything the operator decides, as pure functions of the objects it
//! observed — which plan a cluster needs next, which split or merge was declared, which plans
//! to supersede or prune, whether a plan is approved, a table's routing map, every status the
//! operator writes. `shardplane plan` asks the same functions on a pull request's desired
//! state, so the preview shows (and hashes) exactly the plan the operator will make.
//!
//! No kube client, no tokio, no clock: time is an argument. The reconcilers in
//! `crate::controller` read state, call these functions and carry out what they return; the
//! planner proper (`crate::plan`) works on plain domain values that `domain` converts to.

pub mod approval;
pub mod cluster;
pub mod conditions;
pub mod domain;
pub mod plan_wire;
pub mod reshard;
pub mod roles;
pub mod rollout;
pub mod routing;
pub mod schema;
pub mod table;
mod view;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::{DatabaseCluster, DatabaseNode, Plan, SchemaVersion, Shard, Table};

pub use view::ClusterView;

/// The metadata the decision layer reads of an object.
pub trait Object {
    /// The object's metadata.
    fn meta(&self) -> &ObjectMeta;

    /// Its name (empty while it has none).
    fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    /// Its namespace, if it has one.
    fn namespace(&self) -> Option<&str> {
        self.meta().namespace.as_deref()
    }

    /// Whether it is being deleted.
    fn deleting(&self) -> bool {
        self.meta().deletion_timestamp.is_some()
    }

    /// One of its annotations.
    fn annotation(&self, key: &str) -> Option<&str> {
        self.meta()
            .annotations
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    /// Its finalizers.
    fn finalizers(&self) -> &[String] {
        self.meta().finalizers.as_deref().unwrap_or_default()
    }
}

macro_rules! object {
    ($($kind:ty),*) => {$(
        impl Object for $kind {
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
        }
    )*};
}

object!(
    DatabaseCluster,
    DatabaseNode,
    Table,
    Shard,
    Plan,
    SchemaVersion
);

/// Objects the decision layer's unit tests share.
#[cfg(test)]
pub(crate) mod testkit {
    use std::sync::Arc;

    use crate::api::Table;

    /// Table `t` of cluster `main` in namespace `db`, keyed by a bigint `id`.
    pub fn table() -> Arc<Table> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "shardplane.io/v1alpha1", "kind": "Table",
                "metadata": {"name": "t", "namespace": "db"},
                "spec": {"cluster": "main", "shardKey": "id",
                         "columns": [{"name": "id", "type": "bigint"}], "primaryKey": ["id"]},
            }))
            .unwrap(),
        )
    }
}
