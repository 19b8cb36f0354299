//! Moving one key range of a table between instances, for splits, merges and moves: the
//! range predicate (PostgreSQL's own hash of the shard key, so PostgreSQL filters the rows),
//! a binary `COPY` piped from source to target, a verifier that compares a count and an
//! order-independent checksum on both sides, and the `CHECK` constraint and row-filtered
//! publication built from the same predicate. Works on connections; owns no instance.
//!
//! The checksum is `sum(hashtextextended(row::text, 0))` over the range: exact (PostgreSQL
//! sums `int8` into a `numeric` without overflow or rounding), independent of row order,
//! sensitive to a missing, extra, duplicated or changed row (unlike an XOR, under which
//! duplicates cancel), and one sequential scan per side. A row's text form depends on
//! output settings (`DateStyle`, `extra_float_digits`, `IntervalStyle`, time zone), which
//! the verifier pins for both sessions.

use futures::{SinkExt, StreamExt, pin_mut};
use tokio_postgres::Client;

use super::PostgresError;
use super::digest::RangeDigest;
use super::sql::quote_ident;
use crate::plan::{KEYSPACE_END, KEYSPACE_START, KeyRange};

/// The family of a shard key's type, which picks PostgreSQL's hash function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// `smallint`, `integer` or `bigint`: `hashint8extended(key, 0)`.
    Integer,
    /// `text` or `varchar` with a deterministic collation: `hashtextextended(key, 0)`.
    Text,
}

/// A table sharded by one key column. The name is resolved by the session's `search_path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardedTable {
    /// The table's name.
    pub name: String,
    /// The shard key column.
    pub key_column: String,
    /// The shard key's type family.
    pub key_kind: KeyKind,
}

/// What a copy moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyStats {
    /// Rows written to the target.
    pub rows: u64,
    /// Bytes of binary COPY data moved.
    pub bytes: u64,
}

/// Session settings that fix every type's text form, so both sides of a verification print
/// equal rows equally.
pub(super) const STABLE_OUTPUT: &str = "SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
     SET extra_float_digits = 3; SET TimeZone = 'UTC'; SET bytea_output = 'hex'";

impl ShardedTable {
    /// The keyspace id of a row as SQL: `hashint8extended("key", 0)` or
    /// `hashtextextended("key", 0)`.
    pub fn keyspace_expression(&self) -> String {
        let function = match self.key_kind {
            KeyKind::Integer => "hashint8extended",
            KeyKind::Text => "hashtextextended",
        };
        format!("{function}({}, 0)", quote_ident(&self.key_column))
    }

    /// A predicate true exactly for the rows whose keyspace id is in `range`; a bound at an
    /// edge of the key space is omitted (the whole key space is `true`).
    pub fn range_predicate(&self, range: KeyRange) -> String {
        let key = self.keyspace_expression();
        let mut bounds = Vec::new();
        if range.start() > KEYSPACE_START {
            bounds.push(format!("{key} >= {}", range.start()));
        }
        if range.end() < KEYSPACE_END {
            bounds.push(format!("{key} < {}", range.end()));
        }
        if bounds.is_empty() {
            "true".to_owned()
        } else {
            bounds.join(" AND ")
        }
    }

    /// `ALTER TABLE … ADD CONSTRAINT … CHECK (…)`: the shard refuses rows outside `range`.
    pub fn range_check_constraint(&self, constraint: &str, range: KeyRange) -> String {
        format!(
            "ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})",
            quote_ident(&self.name),
            quote_ident(constraint),
            self.range_predicate(range)
        )
    }

    /// `CREATE PUBLICATION … FOR TABLE … WHERE (…)`: logical replication of the rows in
    /// `range` only, for catching a new shard up after its copy (needs `wal_level=logical`;
    /// for UPDATE and DELETE the key must be in the replica identity, i.e. the primary key).
    pub fn range_publication(&self, publication: &str, range: KeyRange) -> String {
        format!(
            "CREATE PUBLICATION {} FOR TABLE {} WHERE ({})",
            quote_ident(publication),
            quote_ident(&self.name),
            self.range_predicate(range)
        )
    }

    /// `SELECT` of the rows in `range`, in column order.
    fn select_range(&self, range: KeyRange) -> String {
        format!(
            "SELECT * FROM {} WHERE {}",
            quote_ident(&self.name),
            self.range_predicate(range)
        )
    }
}

/// Pipes the output of `copy_out` (a `COPY … TO STDOUT`) on `source` into `copy_in` (a
/// `COPY … FROM STDIN`) on `target`, without buffering more than the driver's chunks.
pub async fn pipe_copy(
    source: &Client,
    copy_out: &str,
    target: &Client,
    copy_in: &str,
) -> Result<CopyStats, PostgresError> {
    let sql_error = |instance: &str, what, source| PostgresError::Sql {
        instance: instance.to_owned(),
        what,
        source,
    };
    let rows_out = source
        .copy_out(copy_out)
        .await
        .map_err(|error| sql_error("the source", "starting COPY TO", error))?;
    let rows_in = target
        .copy_in(copy_in)
        .await
        .map_err(|error| sql_error("the target", "starting COPY FROM", error))?;
    pin_mut!(rows_out, rows_in);
    let mut bytes = 0u64;
    let mut chunks = rows_out.inspect(|chunk| {
        if let Ok(chunk) = chunk {
            bytes += chunk.len() as u64;
        }
    });
    rows_in
        .send_all(&mut chunks)
        .await
        .map_err(|error| sql_error("the source or target", "copying rows", error))?;
    let rows = rows_in
        .finish()
        .await
        .map_err(|error| sql_error("the target", "finishing COPY FROM", error))?;
    Ok(CopyStats { rows, bytes })
}

/// Copies the rows of `range` of `table` from `source` to the table of the same name and
/// columns on `target`, in PostgreSQL's binary COPY format.
pub async fn copy_range(
    source: &Client,
    target: &Client,
    table: &ShardedTable,
    range: KeyRange,
) -> Result<CopyStats, PostgresError> {
    pipe_copy(
        source,
        &format!(
            "COPY ({}) TO STDOUT (FORMAT binary)",
            table.select_range(range)
        ),
        target,
        &format!(
            "COPY {} FROM STDIN (FORMAT binary)",
            quote_ident(&table.name)
        ),
    )
    .await
}

/// The row count and checksum of `range` of `table` on one instance (`side` names it in
/// errors). Leaves the session's output settings pinned (`DateStyle`, `TimeZone`, …).
pub async fn range_digest(
    client: &Client,
    side: &str,
    table: &ShardedTable,
    range: KeyRange,
) -> Result<RangeDigest, PostgresError> {
    digest_where(client, side, table, &table.range_predicate(range), &[]).await
}

/// The row count and checksum of the rows of `table` (as `r`) for which `condition` holds,
/// with `params` bound to it; pins the session's output settings first.
pub(super) async fn digest_where(
    client: &Client,
    side: &str,
    table: &ShardedTable,
    condition: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<RangeDigest, PostgresError> {
    let error = |source| PostgresError::Sql {
        instance: side.to_owned(),
        what: "computing a range checksum",
        source,
    };
    client.batch_execute(STABLE_OUTPUT).await.map_err(error)?;
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(sum(hashtextextended(r::text, 0)), 0)::text \
                 FROM {} AS r WHERE {condition}",
                quote_ident(&table.name),
            ),
            params,
        )
        .await
        .map_err(error)?;
    Ok(RangeDigest {
        rows: row.get(0),
        checksum: row.get(1),
    })
}

/// Checks that `range` of `table` holds the same rows on `source` and `target` (same count
/// and checksum); returns the common digest, or [`PostgresError::RangeMismatch`]. Both sides
/// must be quiet (fenced) for the answer to mean anything.
pub async fn verify_range(
    source: &Client,
    target: &Client,
    table: &ShardedTable,
    range: KeyRange,
) -> Result<RangeDigest, PostgresError> {
    let (on_source, on_target) = tokio::try_join!(
        range_digest(source, "the source", table, range),
        range_digest(target, "the target", table, range),
    )?;
    same_digest(table, range, on_source, on_target)
}

/// The common digest of both sides, or [`PostgresError::RangeMismatch`].
pub(super) fn same_digest(
    table: &ShardedTable,
    range: KeyRange,
    on_source: RangeDigest,
    on_target: RangeDigest,
) -> Result<RangeDigest, PostgresError> {
    if on_source == on_target {
        Ok(on_source)
    } else {
        Err(PostgresError::RangeMismatch {
            table: table.name.clone(),
            range,
            on_source,
            on_target,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(kind: KeyKind) -> ShardedTable {
        ShardedTable {
            name: "orders".to_owned(),
            key_column: "customer_id".to_owned(),
            key_kind: kind,
        }
    }

    #[test]
    fn predicates_omit_the_key_space_edges() {
        let integer = table(KeyKind::Integer);
        assert_eq!(integer.range_predicate(KeyRange::FULL), "true");
        let (low, high) = KeyRange::FULL.split_at(0).unwrap();
        assert_eq!(
            integer.range_predicate(low),
            "hashint8extended(\"customer_id\", 0) < 0"
        );
        assert_eq!(
            table(KeyKind::Text).range_predicate(high),
            "hashtextextended(\"customer_id\", 0) >= 0"
        );
        let middle = KeyRange::new(-10, 10).unwrap();
        assert_eq!(
            integer.range_check_constraint("in_range", middle),
            "ALTER TABLE \"orders\" ADD CONSTRAINT \"in_range\" CHECK \
             (hashint8extended(\"customer_id\", 0) >= -10 AND \
             hashint8extended(\"customer_id\", 0) < 10)"
        );
    }
}
