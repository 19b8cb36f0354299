//! The custom resources of `shardplane.io/v1alpha1`, one file per kind, plus the few wire
//! types every kind shares. Only types and their schema live here: decisions are in
//! `crate::plan`, side effects in the processes that read and write these objects.

// kube's derive repeats keys such as `type_` across `printcolumn(...)` entries, which clippy
// mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod condition;
pub mod database_cluster;
pub mod database_node;
pub mod git_sync;
pub mod plan;
pub mod schema_version;
pub mod shard;
pub mod table;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use condition::{Condition, ConditionStatus};
pub use database_cluster::{DatabaseCluster, DatabaseClusterSpec, DatabaseClusterStatus};
pub use database_node::{DatabaseNode, DatabaseNodeSpec, DatabaseNodeStatus, NodePhase};
pub use git_sync::{GitSync, GitSyncSpec, GitSyncStatus};
pub use plan::{Plan, PlanSpec, PlanStatus};
pub use schema_version::{SchemaVersion, SchemaVersionSpec, SchemaVersionStatus};
pub use shard::{Shard, ShardSpec, ShardStatus};
pub use table::{Table, TableSpec, TableStatus};

/// A Kubernetes object name of one DNS label (RFC 1123): lower-case letters, digits and
/// `-`, starting and ending with a letter or digit. Regions and zones use it too.
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A Kubernetes object name (an RFC 1123 DNS subdomain): DNS labels joined by `.`. Every
/// reference to another object (a cluster, a table, a node, a Secret) has this form.
pub const OBJECT_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A lower-case SQL identifier: what column, index and constraint names must be.
pub const SQL_IDENTIFIER_PATTERN: &str = r"^[a-z_][a-z0-9_]*$";

/// The CEL rules of a repository URL that keep credentials out of it: no `user:password@`,
/// no user (a token) in an `https://` URL, no query string or fragment (`?access_token=`),
/// no spaces or control characters. `ssh://git@host/...` names a user and no secret, and
/// stays allowed. Credentials belong in the Secret of a GitSync's `credentialsSecretRef`.
pub(crate) fn repository_url_rules() -> serde_json::Value {
    serde_json::json!([
        {
            "rule": "!self.matches('^[a-z]+://[^/@]*:[^/@]*@')",
            "message": "must not carry a password or token (user:password@host): put it in the Secret of the GitSync's spec.credentialsSecretRef"
        },
        {
            "rule": "!self.startsWith('https://') || !self.matches('^https://[^/]*@')",
            "message": "must not carry a user name or token in an https URL (https://token@host/...): put `token` (and `username`) in the Secret of the GitSync's spec.credentialsSecretRef"
        },
        {
            "rule": "self.startsWith('file://') || !(self.contains('?') || self.contains('#'))",
            "message": "must not have a query string or fragment (such as ?access_token=...): a git remote needs neither; put a token in the Secret of the GitSync's spec.credentialsSecretRef"
        },
        {
            "rule": r"!self.matches('[\x00-\x20\x7f]')",
            "message": "must not contain spaces or control characters: percent-encode them (%20)"
        }
    ])
}

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
        GitSync::crd(),
    ]
}

/// The CRDs as one multi-document YAML stream, as `shardplane crds` prints it.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    Ok(crd_files()?
        .into_iter()
        .map(|(_, yaml)| format!("---\n{yaml}"))
        .collect())
}

/// The CRDs as files: `(file name, YAML)`, the file named after the CRD
/// (`shardplane.io_shards.yaml`), as `crds/` holds them.
pub fn crd_files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    crds()
        .into_iter()
        .map(|crd| {
            let file = format!("{GROUP}_{}.yaml", crd.spec.names.plural);
            Ok((file, serde_yaml::to_string(&crd)?))
        })
        .collect()
}

/// Drops a nested type's own description from its schema, so every field that uses the type
/// keeps its field-specific description: kube's schema rewriting otherwise replaces the doc
/// of an `Option<T>` field with `T`'s doc, and `kubectl explain` would show the type's words
/// where the field's belong.
pub(crate) fn describe_by_field(schema: &mut schemars::Schema) {
    schema.remove("description");
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// Collects the JSON paths of schema properties that have no description.
    fn undocumented(schema: &Value, path: &str, out: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                let here = format!("{path}.{name}");
                let top_level =
                    path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&name.as_str());
                if prop.get("description").is_none() && !top_level {
                    out.push(here.clone());
                }
                undocumented(prop, &here, out);
            }
        }
        if let Some(items) = schema.get("items") {
            undocumented(items, &format!("{path}[]"), out);
        }
        if let Some(values) = schema.get("additionalProperties") {
            undocumented(values, &format!("{path}{{}}"), out);
        }
    }

    #[test]
    fn the_crd_refuses_exactly_the_managed_parameters() {
        let schema = serde_json::to_value(schemars::schema_for!(DatabaseClusterSpec)).unwrap();
        let rules = schema["properties"]["postgresParameters"]["x-kubernetes-validations"]
            .as_array()
            .expect("postgresParameters has validation rules");
        let rule = rules[0]["rule"].as_str().unwrap();
        let listed: Vec<&str> = rule
            .split('[')
            .nth(1)
            .and_then(|list| list.split(']').next())
            .unwrap()
            .split(", ")
            .map(|name| name.trim_matches('\''))
            .collect();
        assert_eq!(listed, database_cluster::MANAGED_PARAMETERS);
        let message = rules[0]["message"].as_str().unwrap();
        assert!(message.contains(&database_cluster::MANAGED_PARAMETERS.join(", ")));
        assert!(database_cluster::is_managed_parameter(
            "recovery_target_time"
        ));
        assert!(!database_cluster::is_managed_parameter("work_mem"));
    }

    /// Automatic sharding was never built: the CRD refuses it, yet a Table stored before its
    /// removal still deserializes (a watch that cannot read one object reads none).
    #[test]
    fn automatic_sharding_is_refused_but_still_read() {
        let crd = serde_json::to_value(Table::crd()).unwrap();
        let mode = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["sharding"]["properties"]["mode"];
        assert_eq!(mode["enum"], serde_json::json!(["Declared"]));
        let stored: table::Sharding =
            serde_json::from_value(serde_json::json!({"mode": "Automatic", "initialShards": 8}))
                .unwrap();
        assert_eq!(stored.mode, Some(table::ShardingMode::Automatic));
    }

    #[test]
    fn every_field_of_every_kind_has_a_description() {
        for crd in crds() {
            let version = &crd.spec.versions[0];
            let schema = serde_json::to_value(&version.schema).unwrap();
            let mut missing = Vec::new();
            undocumented(&schema["openAPIV3Schema"], "", &mut missing);
            assert!(
                missing.is_empty(),
                "{}: fields without a description: {missing:?}",
                crd.spec.names.kind
            );
        }
    }

    #[test]
    fn every_kind_has_status_short_name_category_and_printer_columns() {
        for crd in crds() {
            let names = &crd.spec.names;
            let version = &crd.spec.versions[0];
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(version.name, VERSION);
            assert!(
                version
                    .subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
                "{}: no status subresource",
                names.kind
            );
            assert!(
                names.short_names.as_ref().is_some_and(|s| !s.is_empty()),
                "{}: no short name",
                names.kind
            );
            assert_eq!(
                names.categories.as_deref(),
                Some(&[CATEGORY.to_string()][..]),
                "{}",
                names.kind
            );
            let columns = version
                .additional_printer_columns
                .as_deref()
                .unwrap_or_default();
            assert!(
                columns.len() >= 4,
                "{}: only {} printer columns",
                names.kind,
                columns.len()
            );
            assert!(
                columns.iter().any(|c| c.name == "Age"),
                "{}: no Age column",
                names.kind
            );
        }
    }
}
