//! The settings every instance runs with, and the credentials it accepts. The settings file
//! is part of the data directory, so a standby made by `pg_basebackup` inherits it; what
//! differs per instance (the port) is given on the postmaster's command line instead.

use std::fmt;

/// The WAL detail an instance writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalLevel {
    /// Enough for streaming replication, `pg_basebackup` and `pg_rewind`.
    Replica,
    /// Also enough for logical replication (range catch-up with row-filtered publications).
    Logical,
}

/// Tunable settings of an instance. [`InstanceSettings::default`] is small: many instances
/// share one node, one per shard replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceSettings {
    /// `shared_buffers`, in megabytes.
    pub shared_buffers_mb: u32,
    /// `max_connections`.
    pub max_connections: u32,
    /// `fsync`: off only for throwaway instances (tests, benchmarks); a crash of the machine
    /// then corrupts the instance.
    pub fsync: bool,
    /// `wal_level`.
    pub wal_level: WalLevel,
    /// `max_wal_senders`: standbys, backups and rewinds streaming from this instance at once.
    pub max_wal_senders: u32,
    /// `max_replication_slots`: one per standby of this instance, plus spare.
    pub max_replication_slots: u32,
}

impl Default for InstanceSettings {
    fn default() -> Self {
        InstanceSettings {
            shared_buffers_mb: 16,
            max_connections: 30,
            fsync: true,
            wal_level: WalLevel::Replica,
            max_wal_senders: 10,
            max_replication_slots: 10,
        }
    }
}

impl InstanceSettings {
    /// The contents of `shardplane.conf`, included from `postgresql.conf`.
    pub(crate) fn render(&self) -> String {
        let on_off = |flag: bool| if flag { "on" } else { "off" };
        let wal_level = match self.wal_level {
            WalLevel::Replica => "replica",
            WalLevel::Logical => "logical",
        };
        format!(
            "# Written by the Shardplane agent; changes are overwritten.\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = ''\n\
             password_encryption = 'scram-sha-256'\n\
             shared_buffers = '{shared_buffers}MB'\n\
             max_connections = {max_connections}\n\
             fsync = {fsync}\n\
             wal_level = {wal_level}\n\
             max_wal_senders = {max_wal_senders}\n\
             max_replication_slots = {max_replication_slots}\n\
             hot_standby = on\n\
             hot_standby_feedback = on\n\
             wal_log_hints = on\n\
             wal_receiver_status_interval = '1s'\n\
             wal_retrieve_retry_interval = '50ms'\n\
             max_wal_size = '256MB'\n\
             wal_keep_size = '128MB'\n\
             min_wal_size = '32MB'\n\
             logging_collector = off\n\
             log_line_prefix = '%m [%p] %q%a '\n",
            shared_buffers = self.shared_buffers_mb,
            max_connections = self.max_connections,
            fsync = on_off(self.fsync),
            max_wal_senders = self.max_wal_senders,
            max_replication_slots = self.max_replication_slots,
        )
    }
}

/// The file of the data directory holding the cluster's `spec.postgresParameters`
/// (`parameters.rs`), included after the agent's own settings.
pub(crate) const PARAMETERS_FILE: &str = "shardplane-parameters.conf";

/// The contents of `pg_hba.conf`: password (SCRAM) logins on loopback only, replication
/// only for the replication role.
pub(crate) const PG_HBA: &str = "# Written by the Shardplane agent.\n\
host all all 127.0.0.1/32 scram-sha-256\n\
host replication replicator 127.0.0.1/32 scram-sha-256\n";

/// The superuser every instance is initialised with.
pub const SUPERUSER: &str = "postgres";

/// The role standbys (and `pg_basebackup`) connect as.
pub const REPLICATION_USER: &str = "replicator";

/// The passwords of a replica set's superuser and replication role. `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    superuser_password: String,
    replication_password: String,
}

impl Credentials {
    /// Credentials from the two passwords.
    pub fn new(superuser_password: String, replication_password: String) -> Self {
        Credentials {
            superuser_password,
            replication_password,
        }
    }

    /// The superuser's password, for making connections.
    pub(crate) fn superuser_password(&self) -> &str {
        &self.superuser_password
    }

    /// A libpq password file (`.pgpass`) holding both roles' loopback passwords.
    pub(crate) fn pgpass(&self) -> String {
        let escape = |text: &str| text.replace('\\', "\\\\").replace(':', "\\:");
        format!(
            "127.0.0.1:*:*:{SUPERUSER}:{}\n127.0.0.1:*:*:{REPLICATION_USER}:{}\n",
            escape(&self.superuser_password),
            escape(&self.replication_password)
        )
    }

    /// The replication role's password as a SCRAM verifier, the only form that reaches SQL
    /// (and so possibly a server log).
    pub(crate) fn replication_verifier(&self) -> String {
        postgres_protocol::password::scram_sha_256(self.replication_password.as_bytes())
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials { .. }")
    }
}
