//! Errors of the PostgreSQL instance library, worded so that an operator of the node (or a
//! person running the tests) knows which instance failed, what it was doing, and what to do.
//! No message ever contains a password: connection errors come from tokio-postgres, which
//! does not print credentials, and command output comes from tools that read a password file.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use super::digest::RangeDigest;
use crate::plan::KeyRange;

/// Why an operation on a PostgreSQL instance failed.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// No PostgreSQL installation was found.
    #[error(
        "cannot find PostgreSQL's binaries (looked for {}); install PostgreSQL 15 or later \
         (tools/setup.sh does) or set SHARDPLANE_PG_BIN to its bin folder",
        looked_in.display()
    )]
    BinariesMissing {
        /// The folder, or the first folder, that was searched.
        looked_in: PathBuf,
    },

    /// The operating system user that must run PostgreSQL does not exist.
    #[error(
        "the operating system user {user:?} that runs PostgreSQL does not exist; PostgreSQL \
         refuses to run as root, so create it (Debian's postgresql package does)"
    )]
    NoSuchUser {
        /// The user name.
        user: String,
    },

    /// A name used as an application name or slot name is not a plain identifier.
    #[error("{name:?} cannot name a replica: use 1 to 63 lowercase letters, digits or underscores")]
    InvalidName {
        /// The name given.
        name: String,
    },

    /// An instance was to be opened where none was created.
    #[error(
        "{} holds no PostgreSQL data directory (no PG_VERSION); create the instance \
         instead of opening it",
        dir.display()
    )]
    NotAnInstance {
        /// The data directory looked at.
        dir: PathBuf,
    },

    /// A file or folder of the instance could not be written or read.
    #[error("cannot prepare {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// No free TCP port could be found on 127.0.0.1.
    #[error("cannot find a free port on 127.0.0.1 for a new instance: {0}")]
    NoFreePort(#[source] std::io::Error),

    /// A PostgreSQL program could not be started at all.
    #[error("cannot run {}: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// A PostgreSQL program (initdb, pg_basebackup, pg_rewind) failed.
    #[error("{program} failed for instance {instance} ({status}):\n{output}")]
    Command {
        /// The program's name.
        program: &'static str,
        /// The instance it worked on.
        instance: String,
        /// How it exited.
        status: ExitStatus,
        /// What it printed.
        output: String,
    },

    /// The postmaster exited while the instance was starting.
    #[error("instance {instance} exited during startup ({status}); last lines of {}:\n{tail}", log.display())]
    ExitedEarly {
        /// The instance.
        instance: String,
        /// How the postmaster exited.
        status: ExitStatus,
        /// The server log.
        log: PathBuf,
        /// The last lines of the server log.
        tail: String,
    },

    /// The instance did not accept connections in time.
    #[error(
        "instance {instance} was not ready after {timeout:?} (is the machine overloaded?); \
         last lines of {}:\n{tail}",
        log.display()
    )]
    NotReady {
        /// The instance.
        instance: String,
        /// How long the start waited.
        timeout: Duration,
        /// The server log.
        log: PathBuf,
        /// The last lines of the server log.
        tail: String,
    },

    /// The operation needs a running instance.
    #[error("instance {instance} is not running; start it first")]
    NotRunning {
        /// The instance.
        instance: String,
    },

    /// A connection to the instance could not be opened.
    #[error("cannot connect to instance {instance} on 127.0.0.1:{port}: {source}")]
    Connect {
        /// The instance.
        instance: String,
        /// Its port.
        port: u16,
        /// What tokio-postgres reported.
        source: tokio_postgres::Error,
    },

    /// A SQL statement failed.
    #[error("{what} on {instance} failed: {source}")]
    Sql {
        /// The instance, or the role of the connection ("source", "target").
        instance: String,
        /// What was being done.
        what: &'static str,
        /// What PostgreSQL reported.
        source: tokio_postgres::Error,
    },

    /// The instance has the wrong role for the operation.
    #[error("instance {instance} is {actual}, but {operation} needs a {expected}")]
    WrongRole {
        /// The instance.
        instance: String,
        /// What was being done.
        operation: &'static str,
        /// The role it needs.
        expected: &'static str,
        /// The role it has.
        actual: &'static str,
    },

    /// A promotion did not complete within its timeout.
    #[error(
        "instance {instance} was still in recovery {timeout:?} after pg_promote(); \
         check its log for why the promotion stalls"
    )]
    PromoteTimeout {
        /// The instance.
        instance: String,
        /// How long the promotion was waited for.
        timeout: Duration,
    },

    /// The write fence did not reach new sessions in time.
    #[error(
        "instance {instance} still accepted writes in new sessions {timeout:?} after the \
         fence was set; check that its configuration reloads (its log says why not)"
    )]
    FenceNotApplied {
        /// The instance.
        instance: String,
        /// How long fencing waited.
        timeout: Duration,
    },

    /// Sessions the fence terminated had not ended in time.
    #[error(
        "instance {instance}: {left} session(s) terminated by the write fence still ran \
         {timeout:?} later; see pg_stat_activity for what they wait on"
    )]
    FenceSessionsLeft {
        /// The instance.
        instance: String,
        /// Sessions still there.
        left: i64,
        /// How long fencing waited.
        timeout: Duration,
    },

    /// A range checksum read back from PostgreSQL is not an integer.
    #[error(
        "instance {instance} returned range checksums that are not integers ({checksums}); \
         the comparison cannot be adjusted for the keys touched since its snapshot"
    )]
    BadChecksum {
        /// The instance.
        instance: String,
        /// The checksums involved.
        checksums: String,
    },

    /// A copied key range differs between source and target.
    #[error(
        "range {range} of table {table} differs: the source has {on_source}, the target \
         {on_target}; delete the range on the target and copy it again"
    )]
    RangeMismatch {
        /// The table.
        table: String,
        /// The key range.
        range: KeyRange,
        /// Count and checksum on the source.
        on_source: RangeDigest,
        /// Count and checksum on the target.
        on_target: RangeDigest,
    },
}

impl PostgresError {
    /// Why a start failed, in PostgreSQL's words (the server log's last `FATAL` line), if
    /// this is a failed start.
    pub fn start_failure(&self) -> Option<String> {
        let (tail, otherwise) = match self {
            PostgresError::ExitedEarly { tail, status, .. } => {
                (tail, format!("the server exited during startup ({status})"))
            }
            PostgresError::NotReady { tail, timeout, .. } => (
                tail,
                format!("the server did not accept connections within {timeout:?}"),
            ),
            _ => return None,
        };
        let fatal = tail
            .lines()
            .filter_map(|line| line.split_once("FATAL:").map(|(_, why)| why.trim()))
            .next_back();
        Some(fatal.map_or(otherwise, str::to_owned))
    }

    /// Whether a failed start says the data directory cannot be recovered as it is (it is
    /// past its upstream's timeline, or lacks the checkpoint it starts from), as opposed to
    /// a configuration or resource problem a rebuild from the primary would copy or meet
    /// again.
    pub fn data_directory_unusable(&self) -> bool {
        self.start_failure()
            .is_some_and(|why| why.contains("timeline") || why.contains("checkpoint record"))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn exited(tail: &str) -> PostgresError {
        PostgresError::ExitedEarly {
            instance: "n1_x".into(),
            status: ExitStatus::from_raw(256),
            log: "postgres.log".into(),
            tail: tail.into(),
        }
    }

    #[test]
    fn a_failed_start_is_told_by_its_last_fatal_line() {
        let timeline = exited(
            "LOG:  entering standby mode\n\
             2026-12-05 07:56:22.059 UTC [1] FATAL:  requested timeline 2 is not a child of this server's history\n\
             DETAIL:  Latest checkpoint is at 0/4012070 on timeline 1\n",
        );
        assert_eq!(
            timeline.start_failure().as_deref(),
            Some("requested timeline 2 is not a child of this server's history")
        );
        assert!(timeline.data_directory_unusable());
        let memory = exited(
            "2026-12-05 08:15:32.886 UTC [8841] FATAL:  could not map anonymous shared memory: Cannot allocate memory\n\
             HINT:  This error usually means ...\n",
        );
        assert!(memory.start_failure().unwrap().starts_with("could not map"));
        assert!(!memory.data_directory_unusable());
        assert!(
            exited("no fatal line")
                .start_failure()
                .unwrap()
                .contains("exited during startup")
        );
        let other = PostgresError::NotRunning {
            instance: "n1_x".into(),
        };
        assert_eq!(other.start_failure(), None);
    }
}
