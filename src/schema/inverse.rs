//! The inverse of a schema version: the statements that take a shard from a version back to
//! the one before it, used to roll back the shards a failed rollout already changed. Every
//! statement is idempotent where PostgreSQL allows it (`IF EXISTS`), so a rollback can run on
//! a shard that the failed change never reached. A dropped column cannot come back: a version
//! that drops one has no inverse.

use crate::api::table::{Column, TableSchema};

use super::ddl::{add_check, alter_column, alter_table, create_index, nullable, quote_ident};

/// The statements that take a shard of `table` from schema `to` back to `from` (its previous
/// version), in order: what `to` added goes first, then columns get their old type,
/// nullability and default, then what `to` removed comes back. `Err` names what cannot be
/// undone.
pub fn inverse<'a>(
    table: &str,
    from: &TableSchema,
    to: &'a TableSchema,
) -> Result<Vec<String>, String> {
    let old_column = |name: &str| from.columns.iter().find(|c| c.name == name);
    let renamed_from = |column: &'a Column| renamed(from, column);
    if let Some(lost) = from.columns.iter().find(|c| {
        !to.columns
            .iter()
            .any(|n| n.name == c.name || renamed_from(n) == Some(c.name.as_str()))
    }) {
        return Err(format!(
            "column {} was dropped: its data is gone, so the change cannot be rolled back",
            lost.name
        ));
    }
    let mut statements = Vec::new();
    for index in &to.indexes {
        if !from.indexes.iter().any(|i| i == index) {
            statements.push(format!(
                "DROP INDEX CONCURRENTLY IF EXISTS {}",
                quote_ident(&index.name)
            ));
        }
    }
    for check in &to.checks {
        if !from.checks.iter().any(|c| c == check) {
            statements.push(alter_table(
                table,
                &format!("DROP CONSTRAINT IF EXISTS {}", quote_ident(&check.name)),
            ));
        }
    }
    for column in &to.columns {
        if let Some(old) = renamed_from(column) {
            statements.push(alter_table(
                table,
                &format!(
                    "RENAME COLUMN {} TO {}",
                    quote_ident(&column.name),
                    quote_ident(old)
                ),
            ));
        } else if old_column(&column.name).is_none() {
            statements.push(alter_table(
                table,
                &format!("DROP COLUMN IF EXISTS {}", quote_ident(&column.name)),
            ));
        }
    }
    for column in &to.columns {
        let name = renamed_from(column).unwrap_or(&column.name);
        let Some(old) = old_column(name) else {
            continue;
        };
        if old.type_ != column.type_ {
            statements.push(alter_column(table, name, &format!("TYPE {}", old.type_)));
        }
        match (nullable(old), nullable(column)) {
            (true, false) => statements.push(alter_column(table, name, "DROP NOT NULL")),
            (false, true) => statements.push(alter_column(table, name, "SET NOT NULL")),
            _ => {}
        }
        if old.default != column.default {
            statements.push(match &old.default {
                Some(default) => alter_column(table, name, &format!("SET DEFAULT {default}")),
                None => alter_column(table, name, "DROP DEFAULT"),
            });
        }
    }
    for check in &from.checks {
        if !to.checks.iter().any(|c| c == check) {
            statements.extend(add_check(table, &check.name, &check.expression));
        }
    }
    for index in &from.indexes {
        if !to.indexes.iter().any(|i| i == index) {
            statements.push(create_index(table, index, "CONCURRENTLY IF NOT EXISTS "));
        }
    }
    Ok(statements)
}

/// The old name of `column` when it is a rename of a column of `from`.
fn renamed<'a>(from: &TableSchema, column: &'a Column) -> Option<&'a str> {
    let has = |name: &str| from.columns.iter().any(|c| c.name == name);
    column
        .renamed_from
        .as_deref()
        .filter(|old| !has(&column.name) && has(old))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(value: serde_json::Value) -> TableSchema {
        serde_json::from_value(value).expect("schema")
    }

    fn base() -> TableSchema {
        schema(serde_json::json!({
            "columns": [
                {"name": "id", "type": "bigint", "nullable": false},
                {"name": "note", "type": "varchar(20)"}
            ],
            "primaryKey": ["id"]
        }))
    }

    #[test]
    fn additions_are_dropped_and_a_widening_narrowed_back() {
        let next = schema(serde_json::json!({
            "columns": [
                {"name": "id", "type": "bigint", "nullable": false},
                {"name": "note", "type": "varchar(40)"},
                {"name": "region", "type": "text", "default": "'eu'"}
            ],
            "primaryKey": ["id"],
            "indexes": [{"name": "by_note", "columns": ["note"]}],
            "checks": [{"name": "short", "expression": "length(note) < 30"}]
        }));
        let statements = inverse("orders", &base(), &next).expect("reversible");
        assert_eq!(
            statements,
            vec![
                "DROP INDEX CONCURRENTLY IF EXISTS \"by_note\"",
                "ALTER TABLE \"orders\" DROP CONSTRAINT IF EXISTS \"short\"",
                "ALTER TABLE \"orders\" DROP COLUMN IF EXISTS \"region\"",
                "ALTER TABLE \"orders\" ALTER COLUMN \"note\" TYPE varchar(20)",
            ]
        );
    }

    #[test]
    fn a_rename_is_renamed_back_and_a_dropped_index_recreated() {
        let mut from = base();
        from.indexes = serde_json::from_value(
            serde_json::json!([{"name": "by_note", "columns": ["note"], "unique": false}]),
        )
        .expect("indexes");
        let to = schema(serde_json::json!({
            "columns": [
                {"name": "id", "type": "bigint", "nullable": false},
                {"name": "remark", "type": "varchar(20)", "renamedFrom": "note"}
            ],
            "primaryKey": ["id"]
        }));
        let statements = inverse("orders", &from, &to).expect("reversible");
        assert_eq!(
            statements,
            vec![
                "ALTER TABLE \"orders\" RENAME COLUMN \"remark\" TO \"note\"",
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS \"by_note\" ON \"orders\" (\"note\")",
            ]
        );
    }

    #[test]
    fn a_dropped_column_has_no_inverse() {
        let to = schema(serde_json::json!({
            "columns": [{"name": "id", "type": "bigint", "nullable": false}],
            "primaryKey": ["id"]
        }));
        let error = inverse("orders", &base(), &to).expect_err("irreversible");
        assert!(error.contains("column note was dropped"), "{error}");
    }

    #[test]
    fn the_same_schema_needs_nothing() {
        assert_eq!(inverse("orders", &base(), &base()), Ok(Vec::new()));
    }
}
