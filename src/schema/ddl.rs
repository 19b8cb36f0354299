//! PostgreSQL statements of schema changes. Every identifier (table, column, index,
//! constraint) is double-quoted; types come from `COLUMN_TYPE_PATTERN` and expressions
//! (defaults, checks) are the user's SQL, passed through as they were declared.

use crate::api::table::{Column, Index, TableSchema};

/// `name` as a quoted SQL identifier: `"name"`, with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `("a", "b")`
fn column_list(columns: &[String]) -> String {
    let quoted: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    format!("({})", quoted.join(", "))
}

/// Whether a column accepts NULL: the API's default is yes.
pub fn nullable(column: &Column) -> bool {
    column.nullable != Some(false)
}

/// `"name" type [NOT NULL] [DEFAULT expr]`
fn column_definition(column: &Column) -> String {
    let mut definition = format!("{} {}", quote_ident(&column.name), column.type_);
    if !nullable(column) {
        definition.push_str(" NOT NULL");
    }
    if let Some(default) = &column.default {
        definition.push_str(&format!(" DEFAULT {default}"));
    }
    definition
}

/// The statements creating version 1 of a table: `CREATE TABLE` with its columns, checks and
/// primary key, then its indexes (plain `CREATE INDEX`: the table is empty and new).
pub fn create_table(table: &str, schema: &TableSchema) -> Vec<String> {
    let mut parts: Vec<String> = schema.columns.iter().map(column_definition).collect();
    parts.extend(schema.checks.iter().map(|check| {
        format!(
            "CONSTRAINT {} CHECK ({})",
            quote_ident(&check.name),
            check.expression
        )
    }));
    parts.push(format!("PRIMARY KEY {}", column_list(&schema.primary_key)));
    let mut statements = vec![format!(
        "CREATE TABLE {} ({})",
        quote_ident(table),
        parts.join(", ")
    )];
    statements.extend(
        schema
            .indexes
            .iter()
            .map(|index| create_index(table, index, "")),
    );
    statements
}

/// `CREATE [UNIQUE] INDEX [CONCURRENTLY] "index" ON "table" ("a", "b")`; `how` is
/// `"CONCURRENTLY "` or empty.
pub fn create_index(table: &str, index: &Index, how: &str) -> String {
    let unique = if index.unique == Some(true) {
        "UNIQUE "
    } else {
        ""
    };
    format!(
        "CREATE {unique}INDEX {how}{} ON {} {}",
        quote_ident(&index.name),
        quote_ident(table),
        column_list(&index.columns)
    )
}

/// `ALTER TABLE "table" <action>`
pub fn alter_table(table: &str, action: &str) -> String {
    format!("ALTER TABLE {} {action}", quote_ident(table))
}

/// `ALTER TABLE "table" ALTER COLUMN "column" <action>`
pub fn alter_column(table: &str, column: &str, action: &str) -> String {
    alter_table(
        table,
        &format!("ALTER COLUMN {} {action}", quote_ident(column)),
    )
}

/// `ALTER TABLE "table" ADD COLUMN …`
pub fn add_column(table: &str, column: &Column) -> String {
    alter_table(table, &format!("ADD COLUMN {}", column_definition(column)))
}

/// A CHECK constraint added without scanning the table (`NOT VALID`, which only takes a brief
/// lock), then validated (which scans while allowing reads and writes).
pub fn add_check(table: &str, name: &str, expression: &str) -> Vec<String> {
    vec![
        alter_table(
            table,
            &format!(
                "ADD CONSTRAINT {} CHECK ({expression}) NOT VALID",
                quote_ident(name)
            ),
        ),
        alter_table(table, &format!("VALIDATE CONSTRAINT {}", quote_ident(name))),
    ]
}

/// `ALTER TABLE "table" DROP CONSTRAINT "name"`
pub fn drop_check(table: &str, name: &str) -> String {
    alter_table(table, &format!("DROP CONSTRAINT {}", quote_ident(name)))
}

/// Makes a column NOT NULL without holding an exclusive lock through a scan: a validated
/// `CHECK (c IS NOT NULL)` lets `SET NOT NULL` skip its own scan (PostgreSQL 12+); the helper
/// constraint is dropped afterwards.
pub fn set_not_null(table: &str, column: &str) -> Vec<String> {
    let helper = format!("shardplane_nn_{column}");
    let mut statements = add_check(
        table,
        &helper,
        &format!("{} IS NOT NULL", quote_ident(column)),
    );
    statements.push(alter_column(table, column, "SET NOT NULL"));
    statements.push(drop_check(table, &helper));
    statements
}
