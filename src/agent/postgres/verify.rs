//! Comparing a key range between a source and a target mostly while the source still
//! serves, so that the write fence only covers the comparison of the rows written since.
//!
//! Preparing: each side logs the keys its writes touch (a row trigger appending to
//! `shardplane_touched`; on a target it is `ENABLE ALWAYS`, so it fires for logical
//! replication's apply too), then opens a read-only `REPEATABLE READ` transaction and
//! checksums the range in it: the *baseline*. Under the fence, once the target has applied
//! every fenced write, the keys touched since either side's snapshot, `K`, are read from
//! both logs, and each side's digest of the range is
//!
//! ```text
//! now = baseline − digest(rows of K at the snapshot) + digest(rows of K now)
//! ```
//!
//! which is what a full scan would give now: a row whose key is not in `K` has not changed
//! since the snapshot. That holds because the trigger exists before the snapshot is taken —
//! `CREATE TRIGGER` waits for every transaction writing the table, and every transaction
//! that takes the table's lock after it sees the trigger — and a change is "since the
//! snapshot" exactly when its transaction is not visible in it (`pg_visible_in_snapshot`).
//! `K` holds the writes of the last moments, so the fenced part is four index lookups
//! instead of two full scans. The digests are [`range_digest`]'s (count and checksum).
//! Works on connections; owns no instance.

use tokio_postgres::Client;

use super::PostgresError;
use super::copy::{KeyKind, STABLE_OUTPUT, ShardedTable, digest_where, range_digest, same_digest};
use super::digest::RangeDigest;
use super::sql::quote_ident;
use crate::plan::KeyRange;

/// The log of touched keys, its trigger function and its trigger all have this name.
const TOUCHED: &str = "shardplane_touched";

/// How long installing or removing the trigger waits for the table's writers.
const DDL_LOCK_TIMEOUT: &str = "SET lock_timeout = '2s'";

/// Makes every write to `table` on this instance log its key (old and new) with its
/// transaction id; `during_apply` also for logical replication's apply worker (a target).
/// Idempotent, and keeps what the log holds: the sources of a merge share their target, and
/// each reads the keys its own snapshot does not see.
pub async fn track_changes(
    client: &Client,
    side: &str,
    table: &ShardedTable,
    during_apply: bool,
) -> Result<(), PostgresError> {
    let key = quote_ident(&table.key_column);
    let name = quote_ident(&table.name);
    let mut sql = format!(
        "{DDL_LOCK_TIMEOUT}; \
         CREATE TABLE IF NOT EXISTS {TOUCHED} \
           (key text NOT NULL, xid xid8 NOT NULL DEFAULT pg_current_xact_id()); \
         CREATE OR REPLACE FUNCTION {TOUCHED}() RETURNS trigger LANGUAGE plpgsql \
           SET search_path FROM CURRENT AS $f$ \
         BEGIN \
           IF TG_OP <> 'INSERT' THEN INSERT INTO {TOUCHED} (key) VALUES (OLD.{key}::text); END IF; \
           IF TG_OP <> 'DELETE' THEN INSERT INTO {TOUCHED} (key) VALUES (NEW.{key}::text); END IF; \
           RETURN NULL; \
         END $f$; \
         CREATE OR REPLACE TRIGGER {TOUCHED} AFTER INSERT OR UPDATE OR DELETE ON {name} \
           FOR EACH ROW EXECUTE FUNCTION {TOUCHED}();"
    );
    if during_apply {
        sql.push_str(&format!(
            " ALTER TABLE {name} ENABLE ALWAYS TRIGGER {TOUCHED};"
        ));
    }
    sql.push_str(" RESET lock_timeout");
    client
        .batch_execute(&sql)
        .await
        .map_err(|source| PostgresError::Sql {
            instance: side.to_owned(),
            what: "installing the log of touched keys",
            source,
        })
}

/// Removes what [`track_changes`] installed. Idempotent.
pub async fn untrack_changes(
    client: &Client,
    side: &str,
    table: &ShardedTable,
) -> Result<(), PostgresError> {
    client
        .batch_execute(&format!(
            "{DDL_LOCK_TIMEOUT}; DROP TRIGGER IF EXISTS {TOUCHED} ON {}; \
             DROP FUNCTION IF EXISTS {TOUCHED}(); DROP TABLE IF EXISTS {TOUCHED}; \
             RESET lock_timeout",
            quote_ident(&table.name)
        ))
        .await
        .map_err(|source| PostgresError::Sql {
            instance: side.to_owned(),
            what: "removing the log of touched keys",
            source,
        })
}

/// A read-only `REPEATABLE READ` transaction kept open on its own session: the state of the
/// instance at one moment.
pub struct HeldSnapshot {
    client: Client,
    side: String,
    snapshot: String,
    pid: i32,
}

impl HeldSnapshot {
    /// Opens the transaction on `client` (which it keeps) and takes its snapshot.
    pub async fn take(client: Client, side: &str) -> Result<Self, PostgresError> {
        let error = |source| PostgresError::Sql {
            instance: side.to_owned(),
            what: "taking a snapshot to compare at",
            source,
        };
        client
            .batch_execute(&format!(
                "{STABLE_OUTPUT}; BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
            ))
            .await
            .map_err(error)?;
        let row = client
            .query_one("SELECT pg_current_snapshot()::text, pg_backend_pid()", &[])
            .await
            .map_err(error)?;
        Ok(HeldSnapshot {
            client,
            side: side.to_owned(),
            snapshot: row.get(0),
            pid: row.get(1),
        })
    }

    /// The server process of the session, which a fence must spare.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The digest of `range` at the snapshot.
    pub async fn digest(
        &self,
        table: &ShardedTable,
        range: KeyRange,
    ) -> Result<RangeDigest, PostgresError> {
        range_digest(&self.client, &self.side, table, range).await
    }

    /// The keys `now` (a session on the same instance) has logged as touched by
    /// transactions this snapshot does not see.
    pub async fn touched_since(&self, now: &Client) -> Result<Vec<String>, PostgresError> {
        let rows = now
            .query(
                &format!(
                    "SELECT DISTINCT key FROM {TOUCHED} \
                     WHERE NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot)"
                ),
                &[&self.snapshot],
            )
            .await
            .map_err(|source| PostgresError::Sql {
                instance: self.side.clone(),
                what: "reading the keys touched since the snapshot",
                source,
            })?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }
}

/// The digest of the rows of `range` whose key is one of `keys` (text forms).
async fn keys_digest(
    client: &Client,
    side: &str,
    table: &ShardedTable,
    range: KeyRange,
    keys: &[String],
) -> Result<RangeDigest, PostgresError> {
    let key_type = match table.key_kind {
        KeyKind::Integer => "bigint",
        KeyKind::Text => "text",
    };
    let condition = format!(
        "{} AND r.{} = ANY($1::text[]::{key_type}[])",
        table.range_predicate(range),
        quote_ident(&table.key_column),
    );
    digest_where(client, side, table, &condition, &[&keys]).await
}

/// One side of a comparison prepared by [`HeldSnapshot::take`] and its baseline digest.
pub struct Side<'a> {
    /// A session on the instance now (after the fence, for the source).
    pub now: &'a Client,
    /// The snapshot the baseline was taken at.
    pub then: &'a HeldSnapshot,
    /// The range's digest at that snapshot.
    pub baseline: &'a RangeDigest,
}

impl Side<'_> {
    /// The range's digest now: the baseline with the rows of `touched` swapped for their
    /// current state.
    async fn digest_now(
        &self,
        table: &ShardedTable,
        range: KeyRange,
        touched: &[String],
    ) -> Result<RangeDigest, PostgresError> {
        if touched.is_empty() {
            return Ok(self.baseline.clone());
        }
        let (then, now) = tokio::try_join!(
            keys_digest(&self.then.client, &self.then.side, table, range, touched),
            keys_digest(self.now, &self.then.side, table, range, touched),
        )?;
        shifted(self.baseline, &then, &now).ok_or_else(|| PostgresError::BadChecksum {
            instance: self.then.side.clone(),
            checksums: format!("{}, {}, {}", self.baseline, then, now),
        })
    }
}

/// `base − minus + plus`, or `None` if a checksum is not an integer.
fn shifted(base: &RangeDigest, minus: &RangeDigest, plus: &RangeDigest) -> Option<RangeDigest> {
    let sum = |d: &RangeDigest| d.checksum.parse::<i128>().ok();
    Some(RangeDigest {
        rows: base.rows - minus.rows + plus.rows,
        checksum: (sum(base)? - sum(minus)? + sum(plus)?).to_string(),
    })
}

/// Checks that `range` holds the same rows on both sides now, given each side's baseline
/// and the keys touched since on either side (`touched`, from [`HeldSnapshot::touched_since`]
/// of both). Both sides must be quiet (the source fenced, the target caught up). Returns the
/// common digest, or [`PostgresError::RangeMismatch`].
pub async fn verify_range_since(
    source: Side<'_>,
    target: Side<'_>,
    table: &ShardedTable,
    range: KeyRange,
    touched: &[String],
) -> Result<RangeDigest, PostgresError> {
    let (on_source, on_target) = tokio::try_join!(
        source.digest_now(table, range, touched),
        target.digest_now(table, range, touched),
    )?;
    same_digest(table, range, on_source, on_target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(rows: i64, checksum: &str) -> RangeDigest {
        RangeDigest {
            rows,
            checksum: checksum.to_owned(),
        }
    }

    #[test]
    fn a_shifted_digest_swaps_the_touched_rows_exactly() {
        // 10 rows; two touched rows (sum 7) become three (sum -4).
        let now = shifted(
            &digest(10, "123456789012345678901234"),
            &digest(2, "7"),
            &digest(3, "-4"),
        )
        .expect("integers");
        assert_eq!(now, digest(11, "123456789012345678901223"));
        assert_eq!(
            shifted(&digest(1, "x"), &digest(0, "0"), &digest(0, "0")),
            None
        );
    }
}
