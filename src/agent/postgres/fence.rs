//! The write fence: makes a primary refuse writes quickly and verifiably, for the brief
//! handover of a split, merge or move and for a primary that cannot prove it is still live.
//!
//! Three layers, each persisted with `ALTER SYSTEM` so a restart keeps the fence:
//! 1. `default_transaction_read_only = on`, reloaded and confirmed from a fresh session:
//!    every new transaction fails its first write with SQLSTATE 25006.
//! 2. Every client session is terminated, so none keeps an open read-write transaction or a
//!    session-level override. WAL senders stay, so standbys keep streaming.
//! 3. `synchronous_standby_names` names a standby that never exists: a session that
//!    deliberately overrides layer 1 (`SET default_transaction_read_only = off`) still gets
//!    no acknowledged commit; it waits.
//!
//! Limits: a superuser, or a role allowed to `SET synchronous_commit = local`, can still write
//! on purpose, and a commit wait cancelled by the client is reported committed locally. The
//! fence stops well-behaved and stale writers (routers, pools), not a hostile one; the
//! routing switch and epochs are what exclude a fenced primary for good, and stopping the
//! postmaster is the fence of last resort.

use std::time::{Duration, Instant};

use super::PostgresError;
use super::instance::Instance;
use super::replication::SyncQuorum;

/// The quorum that fences commits: no replica can have this name (replica names have no
/// uppercase letters).
const FENCE_QUORUM: &str = "ANY 1 (\"FENCED\")";

/// How long fencing waits for the reloaded setting to reach new sessions.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long fencing waits for the terminated sessions to end.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(5);

impl Instance {
    /// Fences writes (see the module documentation) and returns once a fresh session is
    /// read-only and every other client session is gone.
    pub async fn fence_writes(&self) -> Result<(), PostgresError> {
        self.fence_writes_on(&self.connect().await?, &[]).await
    }

    /// [`Instance::fence_writes`] on `client`, a session of this instance's, which stays
    /// open (read-only from now on), as do the client sessions of the server processes
    /// `spare`: the agent's own read-only snapshots (a split's comparison) must outlive the
    /// fence.
    pub async fn fence_writes_on(
        &self,
        client: &tokio_postgres::Client,
        spare: &[i32],
    ) -> Result<(), PostgresError> {
        self.alter_system_on(
            client,
            "fencing writes",
            &[
                ("default_transaction_read_only", Some("on")),
                ("synchronous_standby_names", Some(FENCE_QUORUM)),
            ],
        )
        .await?;
        // The reload is asynchronous: wait until sessions forked from now on see it, so
        // that no session started after the terminations below can write. The postmaster
        // re-reads the configuration before it signals its children, so once this very
        // session sees the new value, every session forked from now on does.
        let started = Instant::now();
        while !self.is_write_fenced_on(client).await? {
            if started.elapsed() > RELOAD_TIMEOUT {
                return Err(PostgresError::FenceNotApplied {
                    instance: self.name().to_owned(),
                    timeout: RELOAD_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Signal every session at once, then wait for all of them to end: a write
        // transaction cut off here has its commit (if any) flushed before its process exits,
        // so the WAL position read after this covers it. (`pg_terminate_backend`'s own wait
        // sleeps 100 ms per session.)
        let terminated: Vec<i32> = client
            .query(
                // Materialized first: the terminations must see only the chosen sessions,
                // whatever order the planner would evaluate the conditions in.
                "WITH chosen AS MATERIALIZED (SELECT pid FROM pg_stat_activity \
                   WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
                     AND pid <> ALL($1)) \
                 SELECT pid FROM chosen WHERE pg_terminate_backend(pid)",
                &[&spare],
            )
            .await
            .map_err(|source| self.sql_error("terminating write sessions", source))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let started = Instant::now();
        while !terminated.is_empty() {
            let left: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                    &[&terminated],
                )
                .await
                .map_err(|source| self.sql_error("waiting for write sessions to end", source))?
                .get(0);
            if left == 0 {
                break;
            }
            if started.elapsed() > TERMINATE_TIMEOUT {
                return Err(PostgresError::FenceSessionsLeft {
                    instance: self.name().to_owned(),
                    left,
                    timeout: TERMINATE_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// Lifts the fence: new sessions may write again, and commits wait for `quorum`.
    pub async fn unfence_writes(&self, quorum: &SyncQuorum) -> Result<(), PostgresError> {
        self.alter_system(
            "lifting the write fence",
            &[
                ("default_transaction_read_only", None),
                ("synchronous_standby_names", Some(&quorum.setting()?)),
            ],
        )
        .await
    }

    /// Whether a new session on this instance starts read-only.
    pub async fn is_write_fenced(&self) -> Result<bool, PostgresError> {
        self.is_write_fenced_on(&self.connect().await?).await
    }

    /// Whether `client` (a session of this instance's, which has seen every configuration
    /// reload signalled to it) starts its transactions read-only.
    pub async fn is_write_fenced_on(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<bool, PostgresError> {
        let value: String = client
            .query_one(
                "SELECT current_setting('default_transaction_read_only')",
                &[],
            )
            .await
            .map_err(|source| self.sql_error("reading the write fence", source))?
            .get(0);
        Ok(value == "on")
    }
}
