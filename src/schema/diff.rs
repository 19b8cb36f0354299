//! The differ: the changes between a table's current schema and the desired one, each with
//! its class and DDL, and the refusals a single schema shows on its own.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::table::{Column, Index, TableSchema};

use super::ddl::{self, quote_ident};
use super::sql_type::{Conversion, SqlType, conversion};
use super::{Change, ChangeClass, Diff, Shape};

/// How a rewrite is carried out.
const REWRITE: &str =
    "rewrites the table and its indexes: carried out by an online copy, or in place after approval";
/// How a destructive change is carried out.
const DESTRUCTIVE: &str = "destroys data: carried out only after approval";

/// Functions whose value differs row by row: as a new column's default they make PostgreSQL
/// fill every existing row, rewriting the table.
const VOLATILE_FUNCTIONS: [&str; 7] = [
    "random(",
    "clock_timestamp(",
    "gen_random_uuid(",
    "uuid_generate_v",
    "nextval(",
    "timeofday(",
    "txid_current(",
];

/// When in a version's DDL a change runs: renames first, so later statements use the new
/// names; relaxing before expanding; contracting (drops) last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Refusal,
    Rename,
    Relax,
    Expand,
    Contract,
}

/// Collects changes by phase.
struct Changes {
    table: String,
    list: Vec<(Phase, Change)>,
}

impl Changes {
    fn new(table: &str) -> Self {
        Changes {
            table: table.to_owned(),
            list: Vec::new(),
        }
    }

    fn refuse(&mut self, field: String, summary: String, reason: impl Into<String>) {
        self.list.push((
            Phase::Refusal,
            Change {
                field,
                summary,
                class: ChangeClass::Refused,
                reason: reason.into(),
                ddl: Vec::new(),
            },
        ));
    }

    fn push(
        &mut self,
        phase: Phase,
        class: ChangeClass,
        field: String,
        summary: String,
        ddl: Vec<String>,
    ) {
        let reason = match class {
            ChangeClass::Rewrite => REWRITE,
            ChangeClass::Destructive => DESTRUCTIVE,
            ChangeClass::Online | ChangeClass::Refused => "",
        };
        self.list.push((
            phase,
            Change {
                field,
                summary,
                class,
                reason: reason.to_owned(),
                ddl,
            },
        ));
    }

    fn online(&mut self, phase: Phase, field: String, summary: String, ddl: Vec<String>) {
        self.push(phase, ChangeClass::Online, field, summary, ddl);
    }

    fn finish(mut self) -> Diff {
        self.list.sort_by_key(|(phase, _)| *phase);
        Diff {
            changes: self.list.into_iter().map(|(_, change)| change).collect(),
        }
    }
}

fn column_field(name: &str) -> String {
    format!("spec.columns[{name}]")
}

fn index_field(name: &str) -> String {
    format!("spec.indexes[{name}]")
}

fn check_field(name: &str) -> String {
    format!("spec.checks[{name}]")
}

/// The refusals one schema shows on its own, whatever it changes from: what the CRD's CEL
/// rules cannot express. Checked on creation and on every change.
pub fn validate(shape: Shape<'_>) -> Diff {
    let mut changes = Changes::new("");
    check_schema(&mut changes, shape);
    changes.finish()
}

fn check_schema(changes: &mut Changes, shape: Shape<'_>) {
    let schema = shape.schema;
    for index in &schema.indexes {
        if index.unique == Some(true) && !index.columns.iter().any(|c| c == shape.shard_key) {
            changes.refuse(
                format!("{}.unique", index_field(&index.name)),
                format!("a unique index {} without the shard key", index.name),
                format!(
                    "uniqueness can only be enforced within a shard; add {} to its columns",
                    shape.shard_key
                ),
            );
        }
    }
    for column in &schema.columns {
        if let Some(default) = &column.default {
            check_expression(
                changes,
                format!("{}.default", column_field(&column.name)),
                default,
            );
        }
        if column.deprecated == Some(true) && schema.primary_key.contains(&column.name) {
            changes.refuse(
                format!("{}.deprecated", column_field(&column.name)),
                format!("deprecating primary-key column {}", column.name),
                "a primary-key column can never be dropped; create a new table instead",
            );
        }
    }
    for check in &schema.checks {
        check_expression(
            changes,
            format!("{}.expression", check_field(&check.name)),
            &check.expression,
        );
    }
}

/// Refuses an expression that could end its statement and start another one.
fn check_expression(changes: &mut Changes, field: String, expression: &str) {
    if expression.contains(';') || expression.contains("--") || expression.contains("/*") {
        changes.refuse(
            field,
            format!("the expression `{expression}` with a `;` or a comment"),
            "an expression must be one SQL expression; remove the `;` and comments",
        );
    }
}

/// The changes creating version 1 of `table`: its `CREATE TABLE` and indexes, unless the
/// schema shows a refusal on its own.
pub fn create(table: &str, shape: Shape<'_>) -> Diff {
    let mut changes = Changes::new(table);
    check_schema(&mut changes, shape);
    changes.online(
        Phase::Expand,
        "spec".to_owned(),
        format!("creating table {table}"),
        ddl::create_table(table, shape.schema),
    );
    changes.finish()
}

/// Which old column each desired column continues, and which old columns go.
struct ColumnMatch<'a> {
    /// (old, new) pairs, in the desired order.
    kept: Vec<(&'a Column, &'a Column)>,
    /// Desired columns with no old counterpart, in the desired order.
    added: Vec<&'a Column>,
    /// Old columns no desired column continues.
    removed: Vec<&'a Column>,
    /// Old name → new name, for renamed columns.
    renames: BTreeMap<&'a str, &'a str>,
}

/// Pairs columns by name, or by an explicit `renamedFrom` when the name is new.
fn match_columns<'a>(
    changes: &mut Changes,
    old: &'a TableSchema,
    new: &'a TableSchema,
) -> ColumnMatch<'a> {
    let by_name = |schema: &'a TableSchema, name: &str| -> Option<&'a Column> {
        schema.columns.iter().find(|c| c.name == name)
    };
    let mut matched = ColumnMatch {
        kept: Vec::new(),
        added: Vec::new(),
        removed: Vec::new(),
        renames: BTreeMap::new(),
    };
    let mut claimed: BTreeSet<&str> = BTreeSet::new();
    for column in &new.columns {
        if let Some(same) = by_name(old, &column.name) {
            claimed.insert(&same.name);
            matched.kept.push((same, column));
            continue;
        }
        let Some(from) = column.renamed_from.as_deref() else {
            matched.added.push(column);
            continue;
        };
        let field = format!("{}.renamedFrom", column_field(&column.name));
        let summary = format!("renaming column {from} to {}", column.name);
        match by_name(old, from) {
            None => changes.refuse(
                field,
                summary,
                format!("the current version has no column {from}; check the spelling"),
            ),
            Some(_) if by_name(new, from).is_some() => changes.refuse(
                field,
                summary,
                format!("column {from} is still declared; remove it, or remove renamedFrom"),
            ),
            Some(_) if matched.renames.contains_key(from) => changes.refuse(
                field,
                summary,
                format!(
                    "column {from} is already renamed to {}",
                    matched.renames[from]
                ),
            ),
            Some(original) => {
                claimed.insert(&original.name);
                matched.renames.insert(&original.name, &column.name);
                matched.kept.push((original, column));
            }
        }
    }
    matched.removed = old
        .columns
        .iter()
        .filter(|c| !claimed.contains(c.name.as_str()))
        .collect();
    matched
}

/// The changes from `old` to `new` of `table`, classified, with their DDL.
pub fn diff(table: &str, old: Shape<'_>, new: Shape<'_>) -> Diff {
    let mut changes = Changes::new(table);
    check_schema(&mut changes, new);
    if old.shard_key != new.shard_key {
        changes.refuse(
            "spec.shardKey".to_owned(),
            format!(
                "changing the shard key from {} to {}",
                old.shard_key, new.shard_key
            ),
            "every row would move to another shard; create a new table and copy the rows",
        );
    }
    let matched = match_columns(&mut changes, old.schema, new.schema);
    check_order(&mut changes, old.schema, new.schema, &matched);
    let renamed = |name: &str| -> String {
        matched
            .renames
            .get(name)
            .map_or(name, |new| *new)
            .to_owned()
    };
    let old_key: Vec<String> = old.schema.primary_key.iter().map(|k| renamed(k)).collect();
    if old_key != new.schema.primary_key {
        changes.refuse(
            "spec.primaryKey".to_owned(),
            format!(
                "changing the primary key from ({}) to ({})",
                old.schema.primary_key.join(", "),
                new.schema.primary_key.join(", ")
            ),
            "every shard's unique index and each row's routing depend on it; create a new table and copy the rows",
        );
    }
    for (from, to) in &matched.renames {
        let field = format!("{}.renamedFrom", column_field(to));
        if *from == old.shard_key {
            changes.refuse(
                field,
                format!("renaming shard key column {from} to {to}"),
                "spec.shardKey is immutable; create a new table instead",
            );
            continue;
        }
        changes.online(
            Phase::Rename,
            field,
            format!("renaming column {from} to {to}"),
            vec![ddl::alter_table(
                table,
                &format!("RENAME COLUMN {} TO {}", quote_ident(from), quote_ident(to)),
            )],
        );
    }
    for column in &matched.added {
        add_column(&mut changes, column);
    }
    for (before, after) in &matched.kept {
        alter_column(&mut changes, old.shard_key, before, after);
    }
    for column in &matched.removed {
        drop_column(&mut changes, column);
    }
    diff_checks(&mut changes, old.schema, new.schema);
    diff_indexes(&mut changes, old.schema, new.schema, &renamed);
    changes.finish()
}

/// PostgreSQL cannot reorder columns and appends new ones: the declared order must stay the
/// physical order, so new shards created from a later version match old ones.
fn check_order(
    changes: &mut Changes,
    old: &TableSchema,
    new: &TableSchema,
    matched: &ColumnMatch<'_>,
) {
    let position = |name: &str| old.columns.iter().position(|c| c.name == name);
    let positions: Vec<(usize, &str)> = matched
        .kept
        .iter()
        .filter_map(|(before, after)| Some((position(&before.name)?, after.name.as_str())))
        .collect();
    if let Some(pair) = positions.windows(2).find(|w| w[0].0 > w[1].0) {
        changes.refuse(
            "spec.columns".to_owned(),
            format!("moving column {} before column {}", pair[0].1, pair[1].1),
            "PostgreSQL cannot reorder columns; keep the existing columns in their order",
        );
    }
    let is_kept = |name: &str| matched.kept.iter().any(|(_, after)| after.name == name);
    let Some(last_kept) = new.columns.iter().rposition(|c| is_kept(&c.name)) else {
        return;
    };
    for column in new.columns[..last_kept]
        .iter()
        .filter(|c| !is_kept(&c.name))
    {
        if matched.added.iter().any(|a| a.name == column.name) {
            changes.refuse(
                column_field(&column.name),
                format!(
                    "adding column {} before column {}",
                    column.name, new.columns[last_kept].name
                ),
                "PostgreSQL appends new columns; declare it after the last existing column",
            );
        }
    }
}

fn add_column(changes: &mut Changes, column: &Column) {
    let field = column_field(&column.name);
    let table = changes.table.clone();
    if !ddl::nullable(column) && column.default.is_none() {
        changes.refuse(
            format!("{field}.nullable"),
            format!(
                "adding column {} as NOT NULL without a default",
                column.name
            ),
            "existing rows have no value for it; give it a default or make it nullable",
        );
        return;
    }
    let volatile = column.default.as_deref().is_some_and(|d| {
        let d = d.to_ascii_lowercase();
        VOLATILE_FUNCTIONS.iter().any(|f| d.contains(f))
    });
    let (class, summary) = if volatile {
        (
            ChangeClass::Rewrite,
            format!(
                "adding column {} with a volatile default, which fills every row",
                column.name
            ),
        )
    } else {
        (
            ChangeClass::Online,
            format!("adding column {}", column.name),
        )
    };
    changes.push(
        Phase::Expand,
        class,
        field,
        summary,
        vec![ddl::add_column(&table, column)],
    );
}

fn alter_column(changes: &mut Changes, shard_key: &str, before: &Column, after: &Column) {
    let table = changes.table.clone();
    let name = &after.name;
    let field = column_field(name);
    if before.type_ != after.type_ {
        let type_field = format!("{field}.type");
        let (from, to) = (&before.type_, &after.type_);
        let cost = match (SqlType::parse(from), SqlType::parse(to)) {
            (Some(a), Some(b)) => conversion(a, b),
            _ => Conversion::Incompatible,
        };
        let statement = vec![ddl::alter_column(&table, name, &format!("TYPE {to}"))];
        match cost {
            _ if before.name == shard_key => changes.refuse(
                type_field,
                format!("changing the type of shard key column {name} from {from} to {to}"),
                "each row's shard is the hash of its key in the key's type; create a new table instead",
            ),
            Conversion::Same => {}
            Conversion::InPlace => changes.online(
                Phase::Expand,
                type_field,
                format!("widening {from} to {to}"),
                statement,
            ),
            Conversion::Rewrite => changes.push(
                Phase::Expand,
                ChangeClass::Rewrite,
                type_field,
                format!("changing the type from {from} to {to}"),
                statement,
            ),
            Conversion::Narrowing => changes.refuse(
                type_field,
                format!("narrowing {from} to {to}"),
                format!("values that do not fit would be lost or fail on some shards; add a new column of type {to}, backfill it, and deprecate {name}"),
            ),
            Conversion::Incompatible => changes.refuse(
                type_field,
                format!("converting {from} to {to}"),
                format!("PostgreSQL has no conversion that keeps every value; add a new column of type {to}, backfill it, and deprecate {name}"),
            ),
        }
    }
    if before.default != after.default {
        let (summary, action) = match &after.default {
            Some(default) => (
                format!("setting the default of {name} to {default}"),
                format!("SET DEFAULT {default}"),
            ),
            None => (
                format!("removing the default of {name}"),
                "DROP DEFAULT".to_owned(),
            ),
        };
        changes.online(
            Phase::Expand,
            format!("{field}.default"),
            summary,
            vec![ddl::alter_column(&table, name, &action)],
        );
    }
    match (ddl::nullable(before), ddl::nullable(after)) {
        (true, false) => changes.online(
            Phase::Expand,
            format!("{field}.nullable"),
            format!("making {name} NOT NULL"),
            ddl::set_not_null(&table, name),
        ),
        (false, true) => changes.online(
            Phase::Relax,
            format!("{field}.nullable"),
            format!("allowing NULL in {name}"),
            vec![ddl::alter_column(&table, name, "DROP NOT NULL")],
        ),
        _ => {}
    }
    let deprecated = |c: &Column| c.deprecated == Some(true);
    if deprecated(before) != deprecated(after) {
        let summary = if deprecated(after) {
            format!("deprecating column {name}: applications stop using it before it is dropped")
        } else {
            format!("keeping column {name}: no longer deprecated")
        };
        changes.online(
            Phase::Expand,
            format!("{field}.deprecated"),
            summary,
            Vec::new(),
        );
    }
}

fn drop_column(changes: &mut Changes, column: &Column) {
    let field = column_field(&column.name);
    if column.deprecated != Some(true) {
        changes.refuse(
            field,
            format!("dropping column {}", column.name),
            "it is not deprecated; deprecate it first (`deprecated: true`), move applications off it, then remove it",
        );
        return;
    }
    let statement = ddl::alter_table(
        &changes.table,
        &format!("DROP COLUMN {}", quote_ident(&column.name)),
    );
    changes.push(
        Phase::Contract,
        ChangeClass::Destructive,
        field,
        format!("dropping deprecated column {}", column.name),
        vec![statement],
    );
}

fn diff_checks(changes: &mut Changes, old: &TableSchema, new: &TableSchema) {
    let table = changes.table.clone();
    for check in &old.checks {
        if !new.checks.iter().any(|c| c.name == check.name) {
            changes.online(
                Phase::Relax,
                check_field(&check.name),
                format!("dropping check {}", check.name),
                vec![ddl::drop_check(&table, &check.name)],
            );
        }
    }
    for check in &new.checks {
        let field = check_field(&check.name);
        match old.checks.iter().find(|c| c.name == check.name) {
            None => changes.online(
                Phase::Expand,
                field,
                format!("adding check {}", check.name),
                ddl::add_check(&table, &check.name, &check.expression),
            ),
            Some(previous) if previous.expression != check.expression => {
                let mut statements = vec![ddl::drop_check(&table, &check.name)];
                statements.extend(ddl::add_check(&table, &check.name, &check.expression));
                changes.online(
                    Phase::Expand,
                    format!("{field}.expression"),
                    format!("replacing check {}", check.name),
                    statements,
                );
            }
            Some(_) => {}
        }
    }
}

fn diff_indexes(
    changes: &mut Changes,
    old: &TableSchema,
    new: &TableSchema,
    renamed: &dyn Fn(&str) -> String,
) {
    let table = changes.table.clone();
    let same = |a: &Index, b: &Index| {
        a.unique.unwrap_or(false) == b.unique.unwrap_or(false)
            && a.columns
                .iter()
                .map(|c| renamed(c))
                .eq(b.columns.iter().cloned())
    };
    for index in &new.indexes {
        let field = index_field(&index.name);
        match old.indexes.iter().find(|i| i.name == index.name) {
            None => changes.online(
                Phase::Expand,
                field,
                format!("adding index {}", index.name),
                vec![ddl::create_index(&table, index, "CONCURRENTLY ")],
            ),
            Some(previous) if !same(previous, index) => changes.refuse(
                field,
                format!("changing index {} in place", index.name),
                "declare the new index under a new name, then remove this one",
            ),
            Some(_) => {}
        }
    }
    for index in &old.indexes {
        if !new.indexes.iter().any(|i| i.name == index.name) {
            changes.push(
                Phase::Contract,
                ChangeClass::Destructive,
                index_field(&index.name),
                format!("dropping index {}", index.name),
                vec![format!(
                    "DROP INDEX CONCURRENTLY {}",
                    quote_ident(&index.name)
                )],
            );
        }
    }
}
