//! `Table`: a sharded table's schema (columns, primary key, indexes, checks), its shard key
//! and sharding mode, and in status the authoritative routing map (key range → shard →
//! primary, epoch), switched in one optimistic-concurrency write.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, OBJECT_NAME_PATTERN, SQL_IDENTIFIER_PATTERN};

/// The SQL types a column may have. Anything else is refused at `kubectl apply`.
pub const COLUMN_TYPE_PATTERN: &str = r"^(smallint|integer|bigint|real|double precision|numeric|numeric\([1-9][0-9]{0,2}(,[0-9]{1,3})?\)|boolean|text|varchar\([1-9][0-9]{0,6}\)|char\([1-9][0-9]{0,6}\)|bytea|date|time|timestamp|timestamptz|interval|uuid|json|jsonb|inet)$";

/// A sharded table of a DatabaseCluster.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "shardplane.io",
    version = "v1alpha1",
    kind = "Table",
    namespaced,
    status = "TableStatus",
    shortname = "tbl",
    category = "shardplane",
    doc = "A sharded table: its schema, its shard key and how it is split into shards; status holds the routing map.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Shard Key", type_ = "string", json_path = ".spec.shardKey"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.sharding.mode"),
    printcolumn(name = "Shards", type_ = "integer", json_path = ".status.shards"),
    printcolumn(
        name = "Schema",
        type_ = "integer",
        json_path = ".status.schemaVersion",
        description = "Schema version fully rolled out"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    validation = Rule::new("size(self.metadata.name) <= 63").message(
        "metadata.name must be at most 63 characters: a Table's name is its PostgreSQL table name (PostgreSQL truncates identifiers longer than 63 bytes) and a label value on its SchemaVersions; choose a shorter name"
    ),
    validation = Rule::new(
        "!has(self.spec.indexes) || self.spec.indexes.all(i, i.name != self.metadata.name && !(i.name.endsWith('_pkey') && i.name.substring(0, size(i.name) - 5) == self.metadata.name))"
    ).message(
        "spec.indexes: an index may not be named like its table or <table>_pkey, names PostgreSQL gives the table and its primary key: choose another index name"
    ),
    validation = Rule::new(
        "!has(self.spec.checks) || self.spec.checks.all(c, !(c.name.endsWith('_pkey') && c.name.substring(0, size(c.name) - 5) == self.metadata.name))"
    ).message(
        "spec.checks: a constraint may not be named <table>_pkey, the name PostgreSQL gives the primary key: choose another constraint name"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.columns.exists(c, c.name == self.shardKey)",
        "message": "spec.shardKey must name one of spec.columns",
        "fieldPath": ".shardKey"
    },
    {
        "rule": "self.shardKey in self.primaryKey",
        "message": "spec.shardKey must be part of spec.primaryKey, so every row's shard follows from its key",
        "fieldPath": ".shardKey"
    },
    {
        "rule": "self.columns.exists(c, c.name == self.shardKey && (c.type in ['smallint', 'integer', 'bigint', 'text'] || c.type.startsWith('varchar')))",
        "message": "spec.shardKey must name a column of type smallint, integer, bigint, text or varchar",
        "fieldPath": ".shardKey"
    },
    {
        "rule": "self.primaryKey.all(k, self.columns.exists(c, c.name == k))",
        "message": "spec.primaryKey must list only columns of spec.columns",
        "fieldPath": ".primaryKey"
    },
    {
        "rule": "self.columns.all(c, !(c.name in self.primaryKey) || !has(c.nullable) || !c.nullable)",
        "message": "spec.columns: a primary-key column cannot be nullable",
        "fieldPath": ".columns"
    },
    {
        "rule": "!has(self.indexes) || self.indexes.all(i, i.columns.all(k, self.columns.exists(c, c.name == k)))",
        "message": "spec.indexes must index only columns of spec.columns",
        "fieldPath": ".indexes"
    },
    {
        "rule": "!has(self.indexes) || self.indexes.all(i, !has(i.unique) || !i.unique || self.shardKey in i.columns)",
        "message": "spec.indexes: a unique index must include spec.shardKey, since uniqueness can only be enforced within a shard: add the shard key to its columns",
        "fieldPath": ".indexes"
    },
    {
        "rule": "self.columns.all(c, !has(c.deprecated) || !c.deprecated || !(c.name in self.primaryKey))",
        "message": "spec.columns: a primary-key column cannot be deprecated, as it can never be dropped: create a new table instead",
        "fieldPath": ".columns"
    }
]))]
pub struct TableSpec {
    /// The DatabaseCluster (in this namespace) that stores the table; immutable.
    #[schemars(length(min = 1, max = 63), regex(pattern = OBJECT_NAME_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "spec.cluster is immutable: a table cannot move to another cluster"}
    ]))]
    pub cluster: String,
    /// The column whose value decides a row's shard; part of the primary key; immutable.
    #[schemars(length(min = 1, max = 63), regex(pattern = SQL_IDENTIFIER_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "spec.shardKey is immutable: changing it would move every row; create a new table instead"}
    ]))]
    pub shard_key: String,
    /// How the table is split into shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharding: Option<Sharding>,
    /// The table's schema.
    #[serde(flatten)]
    pub schema: TableSchema,
}

/// A table's schema: what a SchemaVersion freezes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct TableSchema {
    /// The columns, in order; names are unique; at most 1000 (CEL rules that cross-check
    /// columns and indexes must fit the API server's cost budget).
    #[schemars(length(min = 1, max = 1000))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub columns: Vec<Column>,
    /// The columns of the primary key, in order; must include the shard key.
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 63)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub primary_key: Vec<String>,
    /// Secondary indexes; names are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub indexes: Vec<Index>,
    /// CHECK constraints; names are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub checks: Vec<Check>,
}

/// One column of a table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.renamedFrom) || self.renamedFrom != self.name",
        "message": "renamedFrom must be the column's previous name, not its name: remove renamedFrom once the rename is applied",
        "fieldPath": ".renamedFrom"
    }
]))]
pub struct Column {
    /// The column's name: a lower-case SQL identifier of at most 63 bytes, not one of
    /// PostgreSQL's system columns. (The 63 is a CEL rule, whose message says why; the schema's
    /// looser `maxLength` only bounds the API server's cost estimate.)
    #[schemars(length(min = 1, max = 128), regex(pattern = SQL_IDENTIFIER_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "!(self in ['tableoid', 'xmin', 'cmin', 'xmax', 'cmax', 'ctid'])",
         "message": "is a PostgreSQL system column name (tableoid, xmin, cmin, xmax, cmax, ctid), which every table already has: rename the column"},
        {"rule": "size(self) <= 63", "message": "must be at most 63 bytes (PostgreSQL truncates longer identifiers): choose a shorter name"}
    ]))]
    pub name: String,
    /// The SQL type: smallint, integer, bigint, real, double precision, numeric,
    /// numeric(p[,s]), boolean, text, varchar(n), char(n), bytea, date, time, timestamp,
    /// timestamptz, interval, uuid, json, jsonb or inet.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 32), regex(pattern = COLUMN_TYPE_PATTERN))]
    pub type_: String,
    /// Whether the column accepts NULL (default true; primary-key columns must say false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nullable: Option<bool>,
    /// A SQL expression for the column's default value (for example `now()` or `0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = [{
            "rule": "!self.contains(';') && !self.contains('--') && !self.contains('/*')",
            "message": "must be one SQL expression, without ';' or comments ('--', '/*'): remove them"
        }]))]
    pub default: Option<String>,
    /// The column's previous name, when this change renames it. A rename is only ever done
    /// this way, never as a drop plus an add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = SQL_IDENTIFIER_PATTERN))]
    pub renamed_from: Option<String>,
    /// Marks the column as on its way out (expand/contract): applications stop using it, and
    /// a later change that removes it drops it after approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<bool>,
}

/// A secondary index, built with `CREATE INDEX CONCURRENTLY`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// The index's name: a lower-case SQL identifier of at most 63 bytes; not the table's
    /// name, `<table>_pkey` or `shardplane_*` (an index is a relation, like the table and
    /// Shardplane's own).
    #[schemars(length(min = 1, max = 128), regex(pattern = SQL_IDENTIFIER_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "size(self) <= 63", "message": "must be at most 63 bytes (PostgreSQL truncates longer identifiers): choose a shorter name"}, {"rule": "!self.startsWith('shardplane_')", "message": "names starting with shardplane_ are reserved for Shardplane's own objects (shardplane_touched, shardplane_shard_range): choose another name"}]))]
    pub name: String,
    /// The indexed columns, in order; at most 8.
    #[schemars(length(min = 1, max = 8), inner(length(min = 1, max = 63)))]
    pub columns: Vec<String>,
    /// Whether the index enforces uniqueness (a unique index must include the shard key to be
    /// enforceable per shard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique: Option<bool>,
}

/// A CHECK constraint, added `NOT VALID` and then validated, so it never blocks writes long.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// The constraint's name: a lower-case SQL identifier of at most 63 bytes; not
    /// `<table>_pkey` or `shardplane_*`.
    #[schemars(length(min = 1, max = 128), regex(pattern = SQL_IDENTIFIER_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "size(self) <= 63", "message": "must be at most 63 bytes (PostgreSQL truncates longer identifiers): choose a shorter name"}, {"rule": "!self.startsWith('shardplane_')", "message": "names starting with shardplane_ are reserved for Shardplane's own objects (shardplane_touched, shardplane_shard_range): choose another name"}]))]
    pub name: String,
    /// The SQL boolean expression every row must satisfy: one expression, without `;` or
    /// comments.
    #[schemars(length(min = 1, max = 4096))]
    #[schemars(extend("x-kubernetes-validations" = [{
            "rule": "!self.contains(';') && !self.contains('--') && !self.contains('/*')",
            "message": "must be one SQL expression, without ';' or comments ('--', '/*'): remove them"
        }]))]
    pub expression: String,
}

/// How a table is split into shards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct Sharding {
    /// `Declared` (the default and, for now, the only mode): the shards are Shard manifests,
    /// in git; a split is a pull request replacing one Shard with two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ShardingMode>,
    /// `Hash` (default): a row's key is PostgreSQL's `hashint8extended`/`hashtextextended` of
    /// the shard key with seed 0. `Range`: the shard key's own integer value. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == oldSelf", "message": "spec.sharding.keySpace is immutable: every row would change shard"}
    ]))]
    pub key_space: Option<KeySpace>,
}

/// Who decides a table's shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
pub enum ShardingMode {
    /// Shards are declared as Shard resources, by users through git.
    Declared,
    /// Automatic sharding, never built: the CRD refuses it (it is not in the schema's enum);
    /// the variant stays only so a Table stored before its removal still deserializes.
    #[schemars(skip)]
    Automatic,
}

/// How a row's position in the 64-bit key space is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
pub enum KeySpace {
    /// PostgreSQL's built-in hash of the shard key with seed 0.
    Hash,
    /// The integer shard key itself.
    Range,
}

/// What the operator observes of a table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TableStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`; a refused schema change or a topology that does
    /// not tile the key space is explained here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The SchemaVersion fully rolled out to every shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<i64>,
    /// How many shards serve the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<i32>,
    /// The authoritative routing map clients follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<RoutingMap>,
}

/// Which shard and primary serve each key range of a table. Replaced whole, in one write
/// that carries the resourceVersion it was computed from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct RoutingMap {
    /// Bumped by every switch, so clients can tell a newer map from an older one.
    pub version: i64,
    /// The ranges, ordered by start, tiling the key space.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub ranges: Vec<RouteEntry>,
}

/// One key range and where it is served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct RouteEntry {
    /// The first key of the range (inclusive); absent means the start of the key space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<i64>,
    /// The key after the range (exclusive); absent means the end of the key space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
    /// The Shard serving the range.
    pub shard: String,
    /// The DatabaseNode holding the shard's primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// `host:port` of the primary's PostgreSQL instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The primary's epoch; writes carry it so a deposed primary's are refused.
    #[serde(default)]
    pub epoch: i64,
}
