//! The SQL that gives a new primary its shard's table: the table's schema (its current
//! SchemaVersion, or the Table's spec before the first one exists) and a `CHECK` constraint
//! that refuses rows whose key lies outside the shard's range. Pure: statements from values.

use crate::api::shard::KeyRangeSpec;
use crate::api::table::{KeySpace, TableSchema};
use crate::plan::KeyRange;

use super::postgres::{KeyKind, ShardedTable, quote_ident};

/// The name of the constraint that keeps a shard's rows inside its range.
pub const RANGE_CONSTRAINT: &str = "shardplane_shard_range";

/// The statements that create `table` with `schema` on a shard owning `range`, in order.
/// `key_space` `Range` shards get no range constraint (the predicate is PostgreSQL's hash).
pub fn create_table_statements(
    table: &str,
    shard_key: &str,
    key_space: KeySpace,
    schema: &TableSchema,
    range: &KeyRangeSpec,
) -> Result<Vec<String>, String> {
    let mut columns: Vec<String> = schema
        .columns
        .iter()
        .map(|column| {
            let mut text = format!("{} {}", quote_ident(&column.name), column.type_);
            if column.nullable == Some(false) || schema.primary_key.contains(&column.name) {
                text.push_str(" NOT NULL");
            }
            if let Some(default) = &column.default {
                text.push_str(&format!(" DEFAULT {default}"));
            }
            text
        })
        .collect();
    let key: Vec<String> = schema.primary_key.iter().map(|c| quote_ident(c)).collect();
    columns.push(format!("PRIMARY KEY ({})", key.join(", ")));
    for check in &schema.checks {
        columns.push(format!(
            "CONSTRAINT {} CHECK ({})",
            quote_ident(&check.name),
            check.expression
        ));
    }
    let mut statements = vec![format!(
        "CREATE TABLE {} ({})",
        quote_ident(table),
        columns.join(", ")
    )];
    for index in &schema.indexes {
        let columns: Vec<String> = index.columns.iter().map(|c| quote_ident(c)).collect();
        statements.push(format!(
            "CREATE {}INDEX {} ON {} ({})",
            if index.unique == Some(true) {
                "UNIQUE "
            } else {
                ""
            },
            quote_ident(&index.name),
            quote_ident(table),
            columns.join(", ")
        ));
    }
    if key_space == KeySpace::Hash {
        let sharded = sharded_table(table, shard_key, schema)?;
        let range = KeyRange::from_wire(range.start, range.end).map_err(|e| e.to_string())?;
        statements.push(sharded.range_check_constraint(RANGE_CONSTRAINT, range));
    }
    Ok(statements)
}

/// `table` sharded by `shard_key`, whose type in `schema` picks PostgreSQL's hash function.
pub fn sharded_table(
    table: &str,
    shard_key: &str,
    schema: &TableSchema,
) -> Result<ShardedTable, String> {
    let key_type = schema
        .columns
        .iter()
        .find(|c| c.name == shard_key)
        .map(|c| c.type_.as_str())
        .ok_or_else(|| format!("the shard key {shard_key} is not a column"))?;
    let key_kind = match key_type {
        "smallint" | "integer" | "bigint" => KeyKind::Integer,
        "text" => KeyKind::Text,
        other if other.starts_with("varchar") => KeyKind::Text,
        other => return Err(format!("a shard key of type {other} cannot be hashed")),
    };
    Ok(ShardedTable {
        name: table.to_owned(),
        key_column: shard_key.to_owned(),
        key_kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> TableSchema {
        serde_json::from_value(serde_json::json!({
            "columns": [
                {"name": "id", "type": "bigint", "nullable": false},
                {"name": "note", "type": "text", "default": "''"}
            ],
            "primaryKey": ["id"],
            "indexes": [{"name": "by_note", "columns": ["note"]}],
            "checks": [{"name": "short", "expression": "length(note) < 100"}]
        }))
        .unwrap()
    }

    #[test]
    fn statements_create_the_table_its_indexes_and_the_range_check() {
        let range = KeyRangeSpec {
            start: Some(0),
            end: None,
        };
        let statements =
            create_table_statements("orders", "id", KeySpace::Hash, &schema(), &range).unwrap();
        assert_eq!(
            statements[0],
            "CREATE TABLE \"orders\" (\"id\" bigint NOT NULL, \"note\" text DEFAULT '', \
             PRIMARY KEY (\"id\"), CONSTRAINT \"short\" CHECK (length(note) < 100))"
        );
        assert_eq!(
            statements[1],
            "CREATE INDEX \"by_note\" ON \"orders\" (\"note\")"
        );
        assert_eq!(
            statements[2],
            "ALTER TABLE \"orders\" ADD CONSTRAINT \"shardplane_shard_range\" CHECK \
             (hashint8extended(\"id\", 0) >= 0)"
        );
        let ranged =
            create_table_statements("orders", "id", KeySpace::Range, &schema(), &range).unwrap();
        assert_eq!(ranged.len(), 2);
    }
}
