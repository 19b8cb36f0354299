//! Tests of the differ: each kind of change with its DDL and class, every refusal with its
//! message, and properties over generated schemas.

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::api::table::{Column, TableSchema};

/// One edit of a schema, in a table of cases.
type Edit = Box<dyn FnOnce(&mut TableSchema)>;

fn schema(value: serde_json::Value) -> TableSchema {
    serde_json::from_value(value).unwrap()
}

/// The `orders` table of the examples: sharded by customer.
fn orders() -> TableSchema {
    schema(json!({
        "columns": [
            {"name": "customer_id", "type": "bigint", "nullable": false},
            {"name": "id", "type": "bigint", "nullable": false},
            {"name": "amount", "type": "numeric(12,2)", "default": "0"},
            {"name": "quantity", "type": "integer"},
            {"name": "note", "type": "varchar(20)"},
            {"name": "legacy", "type": "text", "deprecated": true},
        ],
        "primaryKey": ["customer_id", "id"],
        "indexes": [{"name": "by_note", "columns": ["note"]}],
        "checks": [{"name": "positive", "expression": "amount >= 0"}],
    }))
}

fn shape(schema: &TableSchema) -> Shape<'_> {
    Shape {
        shard_key: "customer_id",
        schema,
    }
}

fn changed(edit: impl FnOnce(&mut TableSchema)) -> Diff {
    let old = orders();
    let mut new = old.clone();
    edit(&mut new);
    diff("orders", shape(&old), shape(&new))
}

fn column<'a>(schema: &'a mut TableSchema, name: &str) -> &'a mut Column {
    schema.columns.iter_mut().find(|c| c.name == name).unwrap()
}

fn new_column(name: &str, type_: &str) -> Column {
    Column {
        name: name.into(),
        type_: type_.into(),
        nullable: None,
        default: None,
        renamed_from: None,
        deprecated: None,
    }
}

#[test]
fn version_one_is_a_create_table_with_its_primary_key_and_indexes() {
    let created = create("orders", shape(&orders()));
    assert_eq!(created.class(), Some(ChangeClass::Online));
    assert_eq!(
        created.ddl(),
        [
            "CREATE TABLE \"orders\" (\"customer_id\" bigint NOT NULL, \"id\" bigint NOT NULL, \
             \"amount\" numeric(12,2) DEFAULT 0, \"quantity\" integer, \"note\" varchar(20), \
             \"legacy\" text, CONSTRAINT \"positive\" CHECK (amount >= 0), \
             PRIMARY KEY (\"customer_id\", \"id\"))",
            "CREATE INDEX \"by_note\" ON \"orders\" (\"note\")",
        ]
    );
}

#[test]
fn the_same_schema_changes_nothing() {
    assert!(changed(|_| {}).is_empty());
    assert_eq!(changed(|_| {}).class(), None);
}

#[test]
fn online_changes_and_their_ddl() {
    let cases: Vec<(Edit, Vec<&str>)> = vec![
        (
            Box::new(|s| s.columns.push(new_column("shipped_at", "timestamptz"))),
            vec!["ALTER TABLE \"orders\" ADD COLUMN \"shipped_at\" timestamptz"],
        ),
        (
            Box::new(|s| {
                let mut c = new_column("status", "text");
                c.nullable = Some(false);
                c.default = Some("'new'".into());
                s.columns.push(c);
            }),
            vec!["ALTER TABLE \"orders\" ADD COLUMN \"status\" text NOT NULL DEFAULT 'new'"],
        ),
        (
            Box::new(|s| {
                s.indexes.push(serde_json::from_value(json!({"name": "by_amount", "columns": ["customer_id", "amount"], "unique": true})).unwrap())
            }),
            vec![
                "CREATE UNIQUE INDEX CONCURRENTLY \"by_amount\" ON \"orders\" (\"customer_id\", \"amount\")",
            ],
        ),
        (
            Box::new(|s| column(s, "note").type_ = "varchar(40)".into()),
            vec!["ALTER TABLE \"orders\" ALTER COLUMN \"note\" TYPE varchar(40)"],
        ),
        (
            Box::new(|s| column(s, "amount").type_ = "numeric(14,2)".into()),
            vec!["ALTER TABLE \"orders\" ALTER COLUMN \"amount\" TYPE numeric(14,2)"],
        ),
        (
            Box::new(|s| {
                s.checks.push(
                    serde_json::from_value(json!({"name": "some", "expression": "quantity > 0"}))
                        .unwrap(),
                )
            }),
            vec![
                "ALTER TABLE \"orders\" ADD CONSTRAINT \"some\" CHECK (quantity > 0) NOT VALID",
                "ALTER TABLE \"orders\" VALIDATE CONSTRAINT \"some\"",
            ],
        ),
        (
            Box::new(|s| column(s, "quantity").nullable = Some(false)),
            vec![
                "ALTER TABLE \"orders\" ADD CONSTRAINT \"shardplane_nn_quantity\" CHECK (\"quantity\" IS NOT NULL) NOT VALID",
                "ALTER TABLE \"orders\" VALIDATE CONSTRAINT \"shardplane_nn_quantity\"",
                "ALTER TABLE \"orders\" ALTER COLUMN \"quantity\" SET NOT NULL",
                "ALTER TABLE \"orders\" DROP CONSTRAINT \"shardplane_nn_quantity\"",
            ],
        ),
        (
            Box::new(|s| column(s, "amount").default = None),
            vec!["ALTER TABLE \"orders\" ALTER COLUMN \"amount\" DROP DEFAULT"],
        ),
        (
            Box::new(|s| s.checks.clear()),
            vec!["ALTER TABLE \"orders\" DROP CONSTRAINT \"positive\""],
        ),
        (
            Box::new(|s| column(s, "note").deprecated = Some(true)),
            vec![],
        ),
    ];
    for (edit, ddl) in cases {
        let diff = changed(edit);
        assert_eq!(diff.class(), Some(ChangeClass::Online), "{diff:?}");
        assert_eq!(diff.ddl(), ddl);
    }
}

#[test]
fn integer_to_bigint_is_a_rewrite_that_says_how_it_runs() {
    let diff = changed(|s| column(s, "quantity").type_ = "bigint".into());
    assert_eq!(diff.class(), Some(ChangeClass::Rewrite));
    assert_eq!(
        diff.ddl(),
        ["ALTER TABLE \"orders\" ALTER COLUMN \"quantity\" TYPE bigint"]
    );
    assert_eq!(
        diff.changes[0].to_string(),
        "spec.columns[quantity].type: changing the type from integer to bigint (rewrites the \
         table and its indexes: carried out by an online copy, or in place after approval)"
    );
}

#[test]
fn a_deprecated_column_is_dropped_destructively_and_last() {
    let diff = changed(|s| {
        s.columns.retain(|c| c.name != "legacy");
        s.columns.push(new_column("replacement", "text"));
    });
    assert_eq!(diff.class(), Some(ChangeClass::Destructive));
    assert_eq!(
        diff.ddl(),
        [
            "ALTER TABLE \"orders\" ADD COLUMN \"replacement\" text",
            "ALTER TABLE \"orders\" DROP COLUMN \"legacy\"",
        ]
    );
    let dropped_index = changed(|s| s.indexes.clear());
    assert_eq!(dropped_index.class(), Some(ChangeClass::Destructive));
    assert_eq!(dropped_index.ddl(), ["DROP INDEX CONCURRENTLY \"by_note\""]);
}

#[test]
fn a_rename_is_one_rename_column_never_a_drop_and_an_add() {
    let old = orders();
    let mut new = old.clone();
    let note = column(&mut new, "note");
    note.name = "comment".into();
    note.renamed_from = Some("note".into());
    new.indexes[0].columns = vec!["comment".into()];
    let diff = diff("orders", shape(&old), shape(&new));
    assert_eq!(diff.class(), Some(ChangeClass::Online));
    assert_eq!(
        diff.ddl(),
        ["ALTER TABLE \"orders\" RENAME COLUMN \"note\" TO \"comment\""]
    );
    // The next version still says renamedFrom: it is history now, not a change.
    assert!(super::diff("orders", shape(&new), shape(&new)).is_empty());
    // A rename with a widening runs the rename first, under the new name after.
    let mut wider = new.clone();
    column(&mut wider, "comment").type_ = "text".into();
    let both = super::diff("orders", shape(&old), shape(&wider));
    assert_eq!(
        both.ddl(),
        [
            "ALTER TABLE \"orders\" RENAME COLUMN \"note\" TO \"comment\"",
            "ALTER TABLE \"orders\" ALTER COLUMN \"comment\" TYPE text",
        ]
    );
}

#[test]
fn every_refusal_names_the_field_and_the_change() {
    let index = |v: serde_json::Value| serde_json::from_value(v).unwrap();
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|s| column(s, "amount").type_ = "integer".into()),
            "spec.columns[amount].type: narrowing numeric(12,2) to integer is refused: values that do not fit would be lost or fail on some shards; add a new column of type integer, backfill it, and deprecate amount",
        ),
        (
            Box::new(|s| column(s, "note").type_ = "varchar(10)".into()),
            "spec.columns[note].type: narrowing varchar(20) to varchar(10) is refused: values that do not fit would be lost or fail on some shards; add a new column of type varchar(10), backfill it, and deprecate note",
        ),
        (
            Box::new(|s| column(s, "legacy").type_ = "uuid".into()),
            "spec.columns[legacy].type: converting text to uuid is refused: PostgreSQL has no conversion that keeps every value; add a new column of type uuid, backfill it, and deprecate legacy",
        ),
        (
            Box::new(|s| column(s, "customer_id").type_ = "integer".into()),
            "spec.columns[customer_id].type: changing the type of shard key column customer_id from bigint to integer is refused: each row's shard is the hash of its key in the key's type; create a new table instead",
        ),
        (
            Box::new(|s| s.primary_key = vec!["customer_id".into()]),
            "spec.primaryKey: changing the primary key from (customer_id, id) to (customer_id) is refused: every shard's unique index and each row's routing depend on it; create a new table and copy the rows",
        ),
        (
            Box::new(|s| s.columns.retain(|c| c.name != "quantity")),
            "spec.columns[quantity]: dropping column quantity is refused: it is not deprecated; deprecate it first (`deprecated: true`), move applications off it, then remove it",
        ),
        (
            Box::new(|s| {
                let mut c = new_column("region", "text");
                c.nullable = Some(false);
                s.columns.push(c);
            }),
            "spec.columns[region].nullable: adding column region as NOT NULL without a default is refused: existing rows have no value for it; give it a default or make it nullable",
        ),
        (
            Box::new(|s| {
                let mut c = new_column("remark", "text");
                c.renamed_from = Some("nope".into());
                s.columns.push(c);
            }),
            "spec.columns[remark].renamedFrom: renaming column nope to remark is refused: the current version has no column nope; check the spelling",
        ),
        (
            Box::new(|s| {
                let mut c = new_column("remark", "varchar(20)");
                c.renamed_from = Some("note".into());
                s.columns.push(c);
            }),
            "spec.columns[remark].renamedFrom: renaming column note to remark is refused: column note is still declared; remove it, or remove renamedFrom",
        ),
        (
            Box::new(|s| s.indexes[0].columns.push("amount".into())),
            "spec.indexes[by_note]: changing index by_note in place is refused: declare the new index under a new name, then remove this one",
        ),
        (
            Box::new(move |s| {
                s.indexes.push(index(
                    json!({"name": "one_note", "columns": ["note"], "unique": true}),
                ))
            }),
            "spec.indexes[one_note].unique: a unique index one_note without the shard key is refused: uniqueness can only be enforced within a shard; add customer_id to its columns",
        ),
        (
            Box::new(|s| s.columns.swap(2, 3)),
            "spec.columns: moving column quantity before column amount is refused: PostgreSQL cannot reorder columns; keep the existing columns in their order",
        ),
        (
            Box::new(|s| s.columns.insert(2, new_column("early", "text"))),
            "spec.columns[early]: adding column early before column legacy is refused: PostgreSQL appends new columns; declare it after the last existing column",
        ),
        (
            Box::new(|s| column(s, "amount").default = Some("0; DROP TABLE orders".into())),
            "spec.columns[amount].default: the expression `0; DROP TABLE orders` with a `;` or a comment is refused: an expression must be one SQL expression; remove the `;` and comments",
        ),
        (
            Box::new(|s| column(s, "id").deprecated = Some(true)),
            "spec.columns[id].deprecated: deprecating primary-key column id is refused: a primary-key column can never be dropped; create a new table instead",
        ),
    ];
    assert!(cases.len() >= 10);
    for (edit, message) in cases {
        let diff = changed(edit);
        assert_eq!(diff.class(), Some(ChangeClass::Refused), "{message}");
        assert_eq!(diff.refusal_message().as_deref(), Some(message));
    }
    let old = orders();
    let rekeyed = diff(
        "orders",
        shape(&old),
        Shape {
            shard_key: "id",
            schema: &old,
        },
    );
    assert_eq!(
        rekeyed.refusal_message().unwrap(),
        "spec.shardKey: changing the shard key from customer_id to id is refused: every row would move to another shard; create a new table and copy the rows"
    );
}

#[test]
fn a_refusal_among_online_changes_refuses_the_whole() {
    let diff = changed(|s| {
        s.columns.push(new_column("shipped_at", "timestamptz"));
        s.columns.retain(|c| c.name != "quantity");
    });
    assert_eq!(diff.class(), Some(ChangeClass::Refused));
    assert!(diff.changes[0].class == ChangeClass::Refused);
}

/// One independent change of one column.
#[derive(Clone, Copy, Debug)]
enum Mutation {
    Keep,
    Widen,
    Narrow,
    Drop,
    Deprecate,
    Rename,
    Default,
    NotNull,
}

const TYPES: [(&str, &str, &str); 4] = [
    ("varchar(20)", "varchar(40)", "varchar(10)"),
    ("integer", "bigint", "smallint"),
    ("numeric(10,2)", "numeric(12,2)", "numeric(8,2)"),
    ("timestamp", "timestamptz", "date"),
];

prop_compose! {
    fn arb_schema()(columns in prop::collection::vec((0..TYPES.len(), any::<bool>(), any::<bool>()), 1..8)) -> TableSchema {
        let mut list = vec![Column { nullable: Some(false), ..new_column("zq_key", "bigint") }];
        for (i, (t, nullable, deprecated)) in columns.into_iter().enumerate() {
            list.push(Column {
                nullable: Some(nullable),
                deprecated: Some(deprecated),
                ..new_column(&format!("zq_c{i}"), TYPES[t].0)
            });
        }
        let index = crate::api::table::Index { name: "zq_ix".into(), columns: vec!["zq_c0".into()], unique: None };
        TableSchema { columns: list, primary_key: vec!["zq_key".into()], indexes: vec![index], checks: Vec::new() }
    }
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        Just(Mutation::Keep),
        Just(Mutation::Widen),
        Just(Mutation::Narrow),
        Just(Mutation::Drop),
        Just(Mutation::Deprecate),
        Just(Mutation::Rename),
        Just(Mutation::Default),
        Just(Mutation::NotNull),
    ]
}

fn mutate(schema: &mut TableSchema, name: &str, mutation: Mutation) {
    let Some(position) = schema.columns.iter().position(|c| c.name == name) else {
        return;
    };
    let types = |c: &Column| TYPES.iter().find(|t| t.0 == c.type_).copied();
    let c = &mut schema.columns[position];
    match mutation {
        Mutation::Keep => {}
        Mutation::Widen => c.type_ = types(c).map_or(c.type_.clone(), |t| t.1.into()),
        Mutation::Narrow => c.type_ = types(c).map_or(c.type_.clone(), |t| t.2.into()),
        Mutation::Drop => {
            schema.columns.remove(position);
            schema
                .indexes
                .retain(|i| !i.columns.iter().any(|k| k == name));
        }
        Mutation::Deprecate => c.deprecated = Some(true),
        Mutation::Rename => {
            c.renamed_from = Some(c.name.clone());
            c.name = format!("{name}_new");
            for index in &mut schema.indexes {
                for k in &mut index.columns {
                    if k == name {
                        k.clone_from(&format!("{name}_new"));
                    }
                }
            }
        }
        Mutation::Default => c.default = Some("'0'".into()),
        Mutation::NotNull => c.nullable = Some(false),
    }
}

/// `schema` with the i-th mutation applied to column `zq_c<i>`.
fn mutated(schema: &TableSchema, mutations: &[Mutation]) -> TableSchema {
    let mut new = schema.clone();
    for (i, mutation) in mutations.iter().enumerate() {
        mutate(&mut new, &format!("zq_c{i}"), *mutation);
    }
    new
}

/// Removes every double-quoted identifier (with `""` escapes) from a statement.
fn without_quoted_identifiers(statement: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    let mut chars = statement.chars().peekable();
    while let Some(ch) = chars.next() {
        match (quoted, ch) {
            (false, '"') => quoted = true,
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
            }
            (true, '"') => {
                quoted = false;
                out.push(' ');
            }
            (false, _) => out.push(ch),
            (true, _) => {}
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_schema_diffed_with_itself_is_empty(schema in arb_schema()) {
        let same = Shape { shard_key: "zq_key", schema: &schema };
        let changes = diff("t", same, same);
        prop_assert!(changes.is_empty(), "{:?}", changes);
    }

    /// Independent changes of different columns classify as the most disruptive of them, and
    /// adding a change never makes the whole less disruptive.
    #[test]
    fn the_class_of_independent_changes_is_their_maximum(
        schema in arb_schema(),
        mutations in prop::collection::vec(arb_mutation(), 8),
    ) {
        let old = Shape { shard_key: "zq_key", schema: &schema };
        let mut all = schema.clone();
        let mut classes = Vec::new();
        let mut previous = None;
        for (i, mutation) in mutations.iter().enumerate().take(schema.columns.len() - 1) {
            let name = format!("zq_c{i}");
            let mut one = schema.clone();
            mutate(&mut one, &name, *mutation);
            classes.push(diff("t", old, Shape { shard_key: "zq_key", schema: &one }).class());
            mutate(&mut all, &name, *mutation);
            let so_far = diff("t", old, Shape { shard_key: "zq_key", schema: &all }).class();
            prop_assert!(so_far >= previous, "{so_far:?} < {previous:?} after {mutation:?}");
            previous = so_far;
        }
        let whole = diff("t", old, Shape { shard_key: "zq_key", schema: &all }).class();
        prop_assert_eq!(whole, classes.into_iter().max().flatten());
    }

    #[test]
    fn every_generated_identifier_is_quoted(
        schema in arb_schema(),
        mutations in prop::collection::vec(arb_mutation(), 8),
    ) {
        let mut new = mutated(&schema, &mutations);
        new.columns.push(new_column("zq_added", "text"));
        let old_shape = Shape { shard_key: "zq_key", schema: &schema };
        let new_shape = Shape { shard_key: "zq_key", schema: &new };
        let mut statements = create("zq_table", old_shape).ddl();
        statements.extend(diff("zq_table", old_shape, new_shape).changes.iter().flat_map(|c| c.ddl.clone()));
        for statement in statements {
            let bare = without_quoted_identifiers(&statement);
            prop_assert!(!bare.contains("zq_"), "unquoted identifier in {statement}");
        }
    }

    #[test]
    fn refused_diffs_are_never_carried_out_and_others_always_have_ddl_or_a_mark(
        schema in arb_schema(),
        mutations in prop::collection::vec(arb_mutation(), 8),
    ) {
        let new = mutated(&schema, &mutations);
        let diff = diff("t", Shape { shard_key: "zq_key", schema: &schema }, Shape { shard_key: "zq_key", schema: &new });
        for change in &diff.changes {
            prop_assert_eq!(change.class == ChangeClass::Refused, change.ddl.is_empty() && !change.summary.starts_with("deprecating") && !change.summary.starts_with("keeping"));
        }
    }
}

#[test]
fn quoting_doubles_embedded_quotes() {
    assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    assert_eq!(without_quoted_identifiers("x \"a\"\"b\" y"), "x   y");
}
