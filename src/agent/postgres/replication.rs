//! Replication within one shard's replica set: physical streaming with a slot per standby,
//! quorum synchronous commit (`ANY k (…)`), promotion with the new quorum set in the same
//! step, re-pointing a standby at a new primary, and `pg_rewind` of a former primary so it
//! can only come back as a standby; and logical subscriptions for catching a copied key
//! range up.

use std::fmt;
use std::time::{Duration, Instant};

use super::PostgresError;
use super::instance::{Instance, StopMode, Upstream, connect, ensure_replication_slot};
use super::settings::{CATCH_UP_RECEIVER_TIMEOUT, SUPERUSER};
use super::sql::{check_replica_name, quote_conninfo, quote_ident, quote_literal};

/// How long a promotion may take before it is reported as stuck.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(60);

/// The standbys a primary's commits wait for: `ANY count (names…)`, or none (asynchronous).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncQuorum {
    /// How many of `names` must confirm a commit (flushed to disk) before it is acknowledged.
    pub count: u32,
    /// The standbys' replica names (their `application_name`s).
    pub names: Vec<String>,
}

impl SyncQuorum {
    /// Asynchronous replication: commits wait for no standby.
    pub fn none() -> Self {
        SyncQuorum {
            count: 0,
            names: Vec::new(),
        }
    }

    /// `ANY count (names…)`.
    pub fn any(count: u32, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        SyncQuorum {
            count,
            names: names.into_iter().map(Into::into).collect(),
        }
    }

    /// The value of `synchronous_standby_names`; empty for asynchronous replication.
    pub(crate) fn setting(&self) -> Result<String, PostgresError> {
        if self.count == 0 || self.names.is_empty() {
            return Ok(String::new());
        }
        for name in &self.names {
            check_replica_name(name)?;
        }
        Ok(format!("ANY {} ({})", self.count, self.names.join(", ")))
    }
}

impl fmt::Display for SyncQuorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.setting() {
            Ok(setting) if setting.is_empty() => f.write_str("asynchronous"),
            Ok(setting) => f.write_str(&setting),
            Err(_) => write!(f, "invalid quorum {:?}", self.names),
        }
    }
}

impl Instance {
    /// Sets the synchronous quorum and reloads the configuration. Works on a primary and on
    /// a standby (where it takes effect once the standby is promoted).
    pub async fn set_sync_quorum(&self, quorum: &SyncQuorum) -> Result<(), PostgresError> {
        self.alter_system(
            "setting the synchronous quorum",
            &[("synchronous_standby_names", Some(&quorum.setting()?))],
        )
        .await
    }

    /// Creates the physical replication slot a standby named `name` streams through, unless
    /// it exists. The slot reserves WAL at once, so the standby can attach later.
    pub async fn create_replication_slot(&self, name: &str) -> Result<(), PostgresError> {
        check_replica_name(name)?;
        ensure_replication_slot(&self.connect().await?, name)
            .await
            .map_err(|source| self.sql_error("creating a replication slot", source))
    }

    /// Drops the replication slot of a standby that is gone, so it holds back no WAL.
    pub async fn drop_replication_slot(&self, name: &str) -> Result<(), PostgresError> {
        self.connect()
            .await?
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&name],
            )
            .await
            .map_err(|source| self.sql_error("dropping a replication slot", source))?;
        Ok(())
    }

    /// Promotes this standby to primary with `quorum` as its synchronous standbys. The
    /// quorum is set *before* `pg_promote()`: a standby keeps the quorum it was copied with
    /// (which names itself and the old primary), and a primary with that quorum would make
    /// its first write wait forever. Returns once the instance accepts writes.
    pub async fn promote(&self, quorum: &SyncQuorum) -> Result<(), PostgresError> {
        let client = self.connect().await?;
        let in_recovery: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|source| self.sql_error("reading the role", source))?
            .get(0);
        if !in_recovery {
            return Err(PostgresError::WrongRole {
                instance: self.name().to_owned(),
                operation: "promotion",
                expected: "standby",
                actual: "primary",
            });
        }
        self.set_sync_quorum(quorum).await?;
        // pg_promote(wait => true) checks for the end of recovery only every 100 ms; poll
        // more often, since writes are refused until it ends.
        client
            .execute("SELECT pg_promote(false)", &[])
            .await
            .map_err(|source| self.sql_error("promoting", source))?;
        let started = Instant::now();
        loop {
            let in_recovery: bool = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .map_err(|source| self.sql_error("waiting for the promotion", source))?
                .get(0);
            if !in_recovery {
                return Ok(());
            }
            if started.elapsed() > PROMOTE_TIMEOUT {
                return Err(PostgresError::PromoteTimeout {
                    instance: self.name().to_owned(),
                    timeout: PROMOTE_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Re-points this running standby at `upstream` (after a failover): new connection and
    /// slot settings, applied by a reload; the WAL receiver reconnects and follows the new
    /// primary's timeline, with the catch-up timeout ([`CATCH_UP_RECEIVER_TIMEOUT`]) until it
    /// has received what the new primary has. The slot must exist on the new primary
    /// ([`Instance::create_replication_slot`]).
    pub async fn follow(&self, upstream: &Upstream) -> Result<(), PostgresError> {
        self.alter_system(
            "re-pointing the standby",
            &[
                ("primary_conninfo", Some(&self.primary_conninfo(upstream))),
                ("primary_slot_name", Some(self.name())),
                ("wal_receiver_timeout", Some(CATCH_UP_RECEIVER_TIMEOUT)),
            ],
        )
        .await
    }

    /// Gives the WAL receiver the catch-up timeout (`catching_up`) or back the instance's own
    /// (`wal_receiver_timeout`, 3 s unless the cluster's parameters set it), by a reload that
    /// keeps the stream.
    pub async fn pace_receiver(&self, catching_up: bool) -> Result<(), PostgresError> {
        self.alter_system(
            "setting the stream's timeout",
            &[(
                "wal_receiver_timeout",
                catching_up.then_some(CATCH_UP_RECEIVER_TIMEOUT),
            )],
        )
        .await
    }

    /// Turns a former primary into a standby of `upstream`: stops it (if it still runs),
    /// rewinds its data directory to the point where the new primary's timeline forked
    /// (`pg_rewind`, which first runs crash recovery if the old primary crashed), configures
    /// it as a standby and starts it. Writes the old primary took after the fork are
    /// discarded — they were never acknowledged by a quorum. The slot must exist on the new
    /// primary.
    pub async fn rewind_and_follow(&mut self, upstream: &Upstream) -> Result<(), PostgresError> {
        // Stopped at once: a clean shutdown writes a checkpoint record right at the point the
        // new primary forked from, and standbys still streaming from this instance replay
        // it — past the fork, so they could not start again on the new timeline ("requested
        // timeline is not a child of this server's history"). pg_rewind runs the crash
        // recovery an immediate stop leaves, locally.
        self.stop(StopMode::Immediate).await;
        // pg_rewind reads the source's timeline from its control file, which a promotion
        // updates only at the next checkpoint; without one it finds "no rewind required"
        // and the old primary cannot follow.
        let upstream_error = |source| PostgresError::Sql {
            instance: format!("{}:{} (new primary)", upstream.host, upstream.port),
            what: "checkpointing before pg_rewind",
            source,
        };
        connect(upstream, self.credentials())
            .await
            .map_err(upstream_error)?
            .batch_execute("CHECKPOINT")
            .await
            .map_err(upstream_error)?;
        let source = format!(
            "host={} port={} user={SUPERUSER} dbname=postgres passfile={} {}",
            quote_conninfo(&upstream.host),
            upstream.port,
            quote_conninfo(&self.pgpass_path().to_string_lossy()),
            self.credentials().peer_ssl_options()
        );
        let mut rewind = self.toolchain().command("pg_rewind", &self.data_dir());
        rewind
            .arg("--target-pgdata")
            .arg(self.data_dir())
            .arg(format!("--source-server={source}"));
        self.run("pg_rewind", &mut rewind).await?;
        // pg_rewind copied the new primary's configuration files: this node's again.
        self.write_settings()?;
        self.configure_standby(upstream)?;
        self.start().await
    }
}

impl Instance {
    /// Subscribes this instance to `publication` on `upstream` (logical replication: the
    /// catch-up of a split, merge or move target). With `copy_data`, PostgreSQL first copies
    /// the published rows (applying a publication's row filter), then streams changes from a
    /// consistent point; without it, only changes from now on are streamed. Connects as the
    /// superuser through the password file. The upstream needs `wal_level = logical`.
    pub async fn subscribe(
        &self,
        subscription: &str,
        upstream: &Upstream,
        publication: &str,
        copy_data: bool,
    ) -> Result<(), PostgresError> {
        check_replica_name(subscription)?;
        let conninfo = format!(
            "host={} port={} user={SUPERUSER} dbname=postgres passfile={} {}",
            quote_conninfo(&upstream.host),
            upstream.port,
            quote_conninfo(&self.pgpass_path().to_string_lossy()),
            self.credentials().peer_ssl_options()
        );
        let statement = format!(
            "CREATE SUBSCRIPTION {subscription} CONNECTION {} PUBLICATION {} \
             WITH (copy_data = {copy_data})",
            quote_literal(&conninfo),
            quote_ident(publication)
        );
        self.connect()
            .await?
            .batch_execute(&statement)
            .await
            .map_err(|source| self.sql_error("subscribing", source))
    }

    /// Drops a subscription and its slot on the upstream (after the routing switch).
    pub async fn unsubscribe(&self, subscription: &str) -> Result<(), PostgresError> {
        check_replica_name(subscription)?;
        self.connect()
            .await?
            .batch_execute(&format!("DROP SUBSCRIPTION IF EXISTS {subscription}"))
            .await
            .map_err(|source| self.sql_error("dropping a subscription", source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_setting() {
        assert_eq!(
            SyncQuorum::any(1, ["s1", "s2"]).setting().unwrap(),
            "ANY 1 (s1, s2)"
        );
        assert_eq!(SyncQuorum::none().setting().unwrap(), "");
        assert!(SyncQuorum::any(1, ["bad name"]).setting().is_err());
    }
}
