//! A Table's schema versions: what its declared schema needs next (a new numbered
//! `SchemaVersion` with its DDL and compatibility class, nothing, or a refusal naming the
//! field), and which version it is diffed against. The SchemaVersion reconciler creates what
//! this decides; `shardplane plan` previews it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::api::schema_version::{ChangeSource, Compatibility, SchemaChange, SchemaVersionSpec};
use crate::api::{SchemaVersion, Table};
use crate::protocol::{SOURCE_COMMIT_ANNOTATION, TABLE_LABEL};
use crate::schema::{self, ChangeClass, Diff, Shape};

use super::Object;

/// What the table's schema needs.
#[derive(Debug)]
pub enum Outcome {
    /// The newest version already holds the declared schema.
    Current {
        /// Its number.
        version: i64,
    },
    /// The next version to create.
    Create(Box<SchemaVersion>),
    /// The declared schema cannot be reached; nothing is created.
    Refused {
        /// Every refusal, naming the field and the change.
        message: String,
    },
}

/// The Table's declared shard key and schema, as the differ reads them.
pub fn shape(table: &Table) -> Shape<'_> {
    Shape {
        shard_key: &table.spec.shard_key,
        schema: &table.spec.schema,
    }
}

/// What the Table's declared schema needs given its newest version
/// (`schema::next_version`, which `shardplane plan` previews with too).
pub fn next_version(table: &Table, newest: Option<&SchemaVersion>) -> Outcome {
    let name = table.name().to_owned();
    let generation = table.metadata.generation;
    let desired = shape(table);
    if let Some(newest) = newest
        && newest.spec.table_generation >= generation
    {
        return Outcome::Current {
            version: newest.spec.version,
        };
    }
    let next = schema::next_version(
        &name,
        desired,
        newest.map(|n| schema::Newest {
            version: n.spec.version,
            shape: Shape {
                shard_key: &table.spec.shard_key,
                schema: &n.spec.schema,
            },
        }),
    );
    match next.outcome {
        schema::Outcome::Refused { message, .. } => Outcome::Refused { message },
        schema::Outcome::Unchanged => Outcome::Current {
            version: next.previous.unwrap_or(0),
        },
        schema::Outcome::Change { diff, class } => Outcome::Create(Box::new(version_object(
            table,
            next.version,
            next.previous,
            &diff,
            class,
        ))),
    }
}

/// The newest of `versions` that `table` owns: the one its next version is diffed against
/// (a version left by an earlier table of the same name is not).
pub fn newest_owned<'a>(
    table: &Table,
    versions: impl IntoIterator<Item = &'a SchemaVersion>,
) -> Option<&'a SchemaVersion> {
    versions
        .into_iter()
        .filter(|v| {
            v.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| Some(&o.uid) == table.metadata.uid.as_ref())
        })
        .max_by_key(|v| v.spec.version)
}

fn version_object(
    table: &Table,
    version: i64,
    previous: Option<i64>,
    diff: &Diff,
    class: ChangeClass,
) -> SchemaVersion {
    let name = table.name().to_owned();
    let commit = table
        .annotation(SOURCE_COMMIT_ANNOTATION)
        .map(str::to_owned);
    let compatibility = |class: ChangeClass| match class {
        ChangeClass::Online | ChangeClass::Refused => Compatibility::Online,
        ChangeClass::Rewrite => Compatibility::Rewrite,
        ChangeClass::Destructive => Compatibility::Destructive,
    };
    SchemaVersion {
        metadata: ObjectMeta {
            name: Some(format!("{name}-v{version}")),
            namespace: table.namespace().map(str::to_owned),
            labels: Some([(TABLE_LABEL.to_owned(), name.clone())].into()),
            owner_references: owner(table).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: SchemaVersionSpec {
            table: name,
            version,
            previous_version: previous,
            schema: table.spec.schema.clone(),
            ddl: diff.ddl(),
            compatibility: compatibility(class),
            source: commit.map(|commit| ChangeSource {
                commit: Some(commit),
                ..ChangeSource::default()
            }),
            changes: diff
                .changes
                .iter()
                .map(|change| SchemaChange {
                    field: change.field.clone(),
                    compatibility: compatibility(change.class),
                    summary: if change.reason.is_empty() {
                        change.summary.clone()
                    } else {
                        format!("{} ({})", change.summary, change.reason)
                    },
                })
                .collect(),
            table_generation: table.metadata.generation,
        },
        status: None,
    }
}

/// The Table as the controlling owner of its versions (what kube's `controller_owner_ref`
/// gives), so they are collected with it; `None` before the Table has a uid.
fn owner(table: &Table) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: format!("{}/{}", crate::api::GROUP, crate::api::VERSION),
        kind: "Table".to_owned(),
        name: table.metadata.name.clone()?,
        uid: table.metadata.uid.clone()?,
        controller: Some(true),
        ..OwnerReference::default()
    })
}
