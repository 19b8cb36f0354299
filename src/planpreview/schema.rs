//! The schema part of a preview: for every Table whose declared schema at head differs from
//! the schema the operator will diff it against, the SchemaVersion the operator will create —
//! its number, each change with its class and DDL, the class and risk of the whole — or the
//! refusal. Pure: it calls `schema::next_version`, the function the SchemaVersion controller
//! decides with, on the same inputs.

use std::collections::BTreeMap;

use kube::ResourceExt;
use serde::Serialize;

use super::snapshot::Snapshot;
use crate::api::{SchemaVersion, Table};
use crate::decide::schema::newest_owned;
use crate::plan::RiskClass;
use crate::schema::{self, ChangeClass, Diff, Newest, Outcome, Shape};

/// The schema change of one table.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaPreview {
    /// The table.
    pub table: String,
    /// What the declared schema was compared with, in words.
    pub compared_with: String,
    /// The number of the SchemaVersion the operator will create (`<table>-v<N>`); `None` when
    /// the change is refused, or when it is unknown (compared with a commit, not the cluster).
    pub version: Option<i64>,
    /// The version it follows, when known.
    pub previous_version: Option<i64>,
    /// The class of the whole: `online`, `rewrite`, `destructive` or `refused`.
    pub class: String,
    /// The risk the class maps to (approval policy); `None` when refused.
    pub risk: Option<RiskClass>,
    /// Every refusal, as the Table's `SchemaAccepted` condition would say it.
    pub refusal: Option<String>,
    /// Each change, in the order its DDL runs (refused ones first).
    pub changes: Vec<SchemaChangeLine>,
    /// The version's whole DDL, in order: what its `spec.ddl` will hold. Empty when refused.
    pub ddl: Vec<String>,
}

/// One change of a table's schema.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaChangeLine {
    /// The Table field that changes, e.g. `spec.columns[amount].type`.
    pub field: String,
    /// What changes.
    pub summary: String,
    /// Its class: `online`, `rewrite`, `destructive` or `refused`.
    pub class: String,
    /// Why it is refused and what to do instead, or how a rewrite or drop is carried out.
    pub reason: String,
    /// Its statements.
    pub ddl: Vec<String>,
}

/// The schema changes from `current` to `head`, by table name. With `live`, `current` is the
/// cluster: each table is compared with its newest SchemaVersion, as the operator compares it,
/// and the version number is known. Otherwise `current` is the base commit: each table is
/// compared with its base manifest, and the number of a changed table's version is not known.
pub fn previews(current: &Snapshot, head: &Snapshot, live: bool) -> Vec<SchemaPreview> {
    let now: BTreeMap<String, &Table> = current.tables.iter().map(|t| (t.name_any(), t)).collect();
    let mut tables: Vec<&Table> = head.tables.iter().collect();
    tables.sort_by_key(|t| t.name_any());
    tables
        .into_iter()
        .filter_map(|table| preview(table, now.get(&table.name_any()).copied(), current, live))
        .collect()
}

fn preview(
    table: &Table,
    current: Option<&Table>,
    snapshot: &Snapshot,
    live: bool,
) -> Option<SchemaPreview> {
    let name = table.name_any();
    let desired = Shape {
        shard_key: &table.spec.shard_key,
        schema: &table.spec.schema,
    };
    let newest: Option<&SchemaVersion> = if live {
        current.and_then(|t| newest_owned(t, &snapshot.schema_versions))
    } else {
        None
    };
    let (compared_with, version, previous, outcome) = match (current, newest) {
        (Some(current), Some(newest)) => {
            let next = schema::next_version(
                &name,
                desired,
                Some(Newest {
                    version: newest.spec.version,
                    shape: Shape {
                        shard_key: &current.spec.shard_key,
                        schema: &newest.spec.schema,
                    },
                }),
            );
            (
                format!("SchemaVersion `{}` in the cluster", newest.name_any()),
                Some(next.version),
                next.previous,
                next.outcome,
            )
        }
        (Some(current), None) if !live => (
            "the Table in the base commit".to_owned(),
            None,
            None,
            schema::outcome(
                &name,
                Some(Shape {
                    shard_key: &current.spec.shard_key,
                    schema: &current.spec.schema,
                }),
                desired,
            ),
        ),
        // No version yet: the operator creates version 1 from the declared schema.
        _ => {
            let next = schema::next_version(&name, desired, None);
            (
                "no SchemaVersion yet: version 1 creates the table".to_owned(),
                Some(next.version),
                next.previous,
                next.outcome,
            )
        }
    };
    let (diff, class, refusal) = match outcome {
        Outcome::Unchanged => return None,
        Outcome::Change { diff, class } => (diff, class, None),
        Outcome::Refused { diff, message } => (diff, ChangeClass::Refused, Some(message)),
    };
    let refused = refusal.is_some();
    Some(SchemaPreview {
        table: name,
        compared_with,
        version: if refused { None } else { version },
        previous_version: previous,
        class: class.to_string(),
        risk: class.risk(),
        refusal,
        changes: lines(&diff),
        ddl: if refused { Vec::new() } else { diff.ddl() },
    })
}

fn lines(diff: &Diff) -> Vec<SchemaChangeLine> {
    diff.changes
        .iter()
        .map(|change| SchemaChangeLine {
            field: change.field.clone(),
            summary: change.summary.clone(),
            class: change.class.to_string(),
            reason: change.reason.clone(),
            ddl: change.ddl.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn table(uid: Option<&str>, columns: serde_json::Value) -> Table {
        let mut table: Table = serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Table",
            "metadata": {"name": "t"},
            "spec": {"cluster": "c", "shardKey": "id", "columns": columns, "primaryKey": ["id"]}
        }))
        .unwrap();
        table.metadata.uid = uid.map(str::to_owned);
        table
    }

    fn id() -> serde_json::Value {
        json!({"name": "id", "type": "bigint", "nullable": false})
    }

    fn snapshot(tables: Vec<Table>, versions: Vec<SchemaVersion>) -> Snapshot {
        Snapshot {
            tables,
            schema_versions: versions,
            ..Snapshot::default()
        }
    }

    /// Version `n` of table `t` owned by `uid`, holding `columns`.
    fn version(n: i64, uid: &str, columns: serde_json::Value) -> SchemaVersion {
        serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "SchemaVersion",
            "metadata": {"name": format!("t-v{n}"), "ownerReferences": [{
                "apiVersion": "shardplane.io/v1alpha1", "kind": "Table", "name": "t", "uid": uid}]},
            "spec": {"table": "t", "version": n, "ddl": [], "compatibility": "Online",
                     "schema": {"columns": columns, "primaryKey": ["id"]}}
        }))
        .unwrap()
    }

    #[test]
    fn live_tables_are_compared_with_their_newest_owned_version_not_the_table() {
        // The live Table already declares `x` (its change was not versioned yet); version 2
        // has `y`; a version of an earlier table of the same name is not this table's.
        let live = table(Some("u1"), json!([id(), {"name": "x", "type": "text"}]));
        let current = snapshot(
            vec![live],
            vec![
                version(1, "u1", json!([id()])),
                version(2, "u1", json!([id(), {"name": "y", "type": "text"}])),
                version(9, "old", json!([id()])),
            ],
        );
        let head = snapshot(
            vec![table(
                None,
                json!([id(), {"name": "y", "type": "text"}, {"name": "z", "type": "text"}]),
            )],
            Vec::new(),
        );
        let previews = previews(&current, &head, true);
        assert_eq!(previews.len(), 1);
        let t = &previews[0];
        assert_eq!((t.version, t.previous_version), (Some(3), Some(2)));
        assert_eq!(t.ddl, ["ALTER TABLE \"t\" ADD COLUMN \"z\" text"]);
        assert_eq!(
            (t.class.as_str(), t.risk),
            ("online", Some(RiskClass::Safe))
        );
        assert!(t.compared_with.contains("`t-v2`"), "{}", t.compared_with);
    }

    #[test]
    fn offline_a_changed_table_has_no_number_and_a_new_one_is_version_one() {
        let base = snapshot(vec![table(None, json!([id()]))], Vec::new());
        let head = snapshot(
            vec![table(
                None,
                json!([id(), {"name": "x", "type": "text", "deprecated": true}]),
            )],
            Vec::new(),
        );
        let changed = &previews(&base, &head, false)[0];
        assert_eq!(changed.version, None);
        assert_eq!(changed.ddl, ["ALTER TABLE \"t\" ADD COLUMN \"x\" text"]);
        let created = &previews(&snapshot(Vec::new(), Vec::new()), &head, false)[0];
        assert_eq!(created.version, Some(1));
        assert!(created.ddl[0].starts_with("CREATE TABLE \"t\""));
        assert!(previews(&head, &head, false).is_empty());
    }

    #[test]
    fn a_refusal_has_no_version_no_ddl_and_no_risk() {
        let base = snapshot(
            vec![table(None, json!([id(), {"name": "x", "type": "text"}]))],
            Vec::new(),
        );
        let head = snapshot(vec![table(None, json!([id()]))], Vec::new());
        let refused = &previews(&base, &head, false)[0];
        assert_eq!(refused.class, "refused");
        assert_eq!((refused.version, refused.risk), (None, None));
        assert!(refused.ddl.is_empty());
        assert!(
            refused
                .refusal
                .as_deref()
                .unwrap()
                .starts_with("spec.columns[x]: dropping column x is refused")
        );
    }
}
