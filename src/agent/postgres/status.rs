//! What an instance reports about itself: its role, its WAL position, its standbys and how
//! far each lags, its size, and whether writes are fenced — the observed state an agent
//! publishes in `Shard.status.replicas`.

use super::PostgresError;
use super::instance::Instance;

/// Whether an instance accepts writes or replays another's WAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not in recovery: it writes WAL.
    Primary,
    /// In recovery: it replays WAL from its upstream.
    Standby,
}

/// An instance's observed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceStatus {
    /// Its role.
    pub role: Role,
    /// WAL position in bytes: written (primary) or replayed (standby).
    pub wal_position: u64,
    /// The standbys streaming from it (empty on a standby without cascading standbys).
    pub standbys: Vec<StandbyStatus>,
    /// Size of the `postgres` database in bytes.
    pub database_size_bytes: u64,
    /// Whether new sessions start read-only (the write fence).
    pub write_fenced: bool,
}

/// One standby as its upstream sees it (`pg_stat_replication`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StandbyStatus {
    /// Its replica name (`application_name`).
    pub name: String,
    /// The WAL sender's state: `startup`, `catchup`, `streaming`, `backup` or `stopping`.
    pub state: String,
    /// `sync`, `quorum`, `potential` or `async`.
    pub sync_state: String,
    /// Bytes of WAL the upstream wrote that the standby has not flushed to disk.
    pub flush_lag_bytes: u64,
    /// Bytes of WAL the upstream wrote that the standby has not replayed.
    pub replay_lag_bytes: u64,
}

impl Instance {
    /// Reads the instance's observed state.
    pub async fn status(&self) -> Result<InstanceStatus, PostgresError> {
        let client = self.connect().await?;
        let error = |source| self.sql_error("reading the instance status", source);
        let row = client
            .query_one(
                "SELECT pg_is_in_recovery(), \
                   pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() \
                     THEN coalesce(pg_last_wal_replay_lsn(), '0/0') \
                     ELSE pg_current_wal_lsn() END, '0/0')::int8, \
                   pg_database_size('postgres'), \
                   current_setting('default_transaction_read_only') = 'on'",
                &[],
            )
            .await
            .map_err(error)?;
        let in_recovery: bool = row.get(0);
        let standbys = client
            .query(
                "SELECT application_name, state, sync_state, \
                   coalesce(pg_wal_lsn_diff(w.lsn, flush_lsn), 0)::int8, \
                   coalesce(pg_wal_lsn_diff(w.lsn, replay_lsn), 0)::int8 \
                 FROM pg_stat_replication, \
                   (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
                     ELSE pg_current_wal_lsn() END AS lsn) w \
                 ORDER BY application_name",
                &[],
            )
            .await
            .map_err(error)?
            .iter()
            .map(|row| StandbyStatus {
                name: row.get(0),
                state: row.get(1),
                sync_state: row.get(2),
                flush_lag_bytes: non_negative(row.get(3)),
                replay_lag_bytes: non_negative(row.get(4)),
            })
            .collect();
        Ok(InstanceStatus {
            role: if in_recovery {
                Role::Standby
            } else {
                Role::Primary
            },
            wal_position: non_negative(row.get(1)),
            standbys,
            database_size_bytes: non_negative(row.get(2)),
            write_fenced: row.get(3),
        })
    }
}

/// A byte count PostgreSQL returns as `int8`; negative only in races (a standby's position
/// read a moment after the upstream's), which mean zero.
fn non_negative(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
