//! The next version of a table's schema: from the newest version (or none) and the declared
//! schema, whether a version is due, its number, its changes and its class — or the refusal.
//! One function for the operator's SchemaVersion controller and for `shardplane plan`, so a
//! preview and the version the operator then creates cannot disagree.

use super::{ChangeClass, Diff, Shape, create, diff};

/// What the declared schema needs, compared with the current one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing changes.
    Unchanged,
    /// A new version: its changes, in the order their DDL runs, and the class of the whole.
    Change {
        /// The changes and their DDL.
        diff: Diff,
        /// The most disruptive change's class (never `Refused`).
        class: ChangeClass,
    },
    /// The declared schema cannot be reached from the current one: no version is made.
    Refused {
        /// Every change, refused ones first.
        diff: Diff,
        /// Every refusal, separated by `; `, as the Table's `SchemaAccepted` condition says.
        message: String,
    },
}

/// Compares the declared schema `desired` of `table` with `current` (`None`: the table has no
/// version yet, so version 1 is its `CREATE TABLE`).
pub fn outcome(table: &str, current: Option<Shape<'_>>, desired: Shape<'_>) -> Outcome {
    let diff = match current {
        None => create(table, desired),
        Some(current) => diff(table, current, desired),
    };
    if let Some(message) = diff.refusal_message() {
        return Outcome::Refused { diff, message };
    }
    match diff.class() {
        None => Outcome::Unchanged,
        Some(class) => Outcome::Change { diff, class },
    }
}

/// A table's newest schema version, as the differ reads it.
#[derive(Clone, Copy, Debug)]
pub struct Newest<'a> {
    /// Its number.
    pub version: i64,
    /// The table's shard key and the version's schema.
    pub shape: Shape<'a>,
}

/// The next version of a table: [`outcome`] against its newest version, and the numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextVersion {
    /// The number a new version gets: the newest one's plus one, or 1.
    pub version: i64,
    /// The newest version's number, `None` when the table has none.
    pub previous: Option<i64>,
    /// Whether a version is due, and what it holds.
    pub outcome: Outcome,
}

/// The next version of `table`, declared as `desired`, after `newest`.
pub fn next_version(table: &str, desired: Shape<'_>, newest: Option<Newest<'_>>) -> NextVersion {
    let previous = newest.map(|n| n.version);
    NextVersion {
        version: previous.map_or(1, |n| n + 1),
        previous,
        outcome: outcome(table, newest.map(|n| n.shape), desired),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::table::TableSchema;

    fn schema(columns: serde_json::Value) -> TableSchema {
        serde_json::from_value(json!({"columns": columns, "primaryKey": ["id"]})).unwrap()
    }

    fn shape(schema: &TableSchema) -> Shape<'_> {
        Shape {
            shard_key: "id",
            schema,
        }
    }

    #[test]
    fn a_table_without_versions_gets_version_one_creating_it() {
        let t = schema(json!([{"name": "id", "type": "bigint", "nullable": false}]));
        let next = next_version("t", shape(&t), None);
        assert_eq!((next.version, next.previous), (1, None));
        let Outcome::Change { diff, class } = next.outcome else {
            panic!("{next:?}");
        };
        assert_eq!(class, ChangeClass::Online);
        assert!(diff.ddl()[0].starts_with("CREATE TABLE \"t\""));
    }

    #[test]
    fn the_number_follows_the_newest_and_an_equal_schema_needs_none() {
        let v3 = schema(json!([{"name": "id", "type": "bigint", "nullable": false}]));
        let newest = Newest {
            version: 3,
            shape: shape(&v3),
        };
        let same = next_version("t", shape(&v3), Some(newest));
        assert_eq!(same.outcome, Outcome::Unchanged);
        let wider = schema(json!([
            {"name": "id", "type": "bigint", "nullable": false},
            {"name": "x", "type": "text"}
        ]));
        let next = next_version("t", shape(&wider), Some(newest));
        assert_eq!((next.version, next.previous), (4, Some(3)));
        assert!(matches!(
            next.outcome,
            Outcome::Change {
                class: ChangeClass::Online,
                ..
            }
        ));
        // Back again: dropping x, which was never deprecated, is refused with its message.
        let back = next_version(
            "t",
            shape(&v3),
            Some(Newest {
                version: 4,
                shape: shape(&wider),
            }),
        );
        let Outcome::Refused { message, diff } = back.outcome else {
            panic!("{back:?}");
        };
        assert!(message.starts_with("spec.columns[x]: dropping column x is refused"));
        assert_eq!(diff.class(), Some(ChangeClass::Refused));
    }
}
