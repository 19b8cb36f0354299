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
