//! The settings every instance runs with, and the credentials it accepts. The settings file
//! is part of the data directory, so a standby made by `pg_basebackup` inherits it; what
//! differs per instance (the port) is given on the postmaster's command line instead.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio_postgres_rustls::MakeRustlsConnect;

use super::sql::{quote_conninfo, quote_literal};
use crate::tls::{TlsError, node_client_config};

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
    /// The node's address, listened on besides loopback (where the agent itself connects);
    /// `None` or a loopback address: loopback only.
    pub listen_address: Option<String>,
    /// Who may connect from elsewhere (`pg_hba.conf`).
    pub access: Access,
    /// The node's certificate, served to every session that asks for TLS; `None`: no TLS
    /// (an instance outside a cluster, as in tests of one instance).
    pub tls: Option<ServerTls>,
}

/// The files of a node's certificate, its key and the cluster's authority, shared by every
/// instance of the node (`agent/certificates.rs` installs them). PostgreSQL reads them at
/// start and at every reload, so a renewed certificate takes effect with a reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    /// The certificate (PEM).
    pub certificate_file: PathBuf,
    /// Its private key (PEM, 0600, the server's user's).
    pub key_file: PathBuf,
    /// The cluster's authority (PEM): what peers' certificates are checked against.
    pub authority_file: PathBuf,
}

impl ServerTls {
    /// The files in folder `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        ServerTls {
            certificate_file: dir.join("server.crt"),
            key_file: dir.join("server.key"),
            authority_file: dir.join("ca.crt"),
        }
    }
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
            listen_address: None,
            access: Access::default(),
            tls: None,
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
        let listen = match self.listen_address.as_deref() {
            Some(address) if !is_loopback(address) && is_host(address) => {
                format!("127.0.0.1,{address}")
            }
            _ => "127.0.0.1".to_owned(),
        };
        let tls = match &self.tls {
            Some(tls) => format!(
                "ssl = on\nssl_cert_file = {}\nssl_key_file = {}\nssl_ca_file = {}\n",
                quote_literal(&tls.certificate_file.to_string_lossy()),
                quote_literal(&tls.key_file.to_string_lossy()),
                quote_literal(&tls.authority_file.to_string_lossy()),
            ),
            None => "ssl = off\n".to_owned(),
        };
        format!(
            "# Written by the Shardplane agent; changes are overwritten.\n\
             listen_addresses = '{listen}'\n\
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
             wal_receiver_timeout = '3s'\n\
             wal_sender_timeout = '5s'\n\
             max_wal_size = '256MB'\n\
             wal_keep_size = '128MB'\n\
             min_wal_size = '32MB'\n\
             logging_collector = off\n\
             log_line_prefix = '%m [%p] %q%a '\n\
             {tls}",
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

/// Who may open a session with an instance from another host: what `pg_hba.conf` says.
/// Every session authenticates with its role's password (SCRAM); loopback (the agent on the
/// instance's own host) is always admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// The addresses of the cluster's nodes (IP addresses or host names): replication
    /// sessions (standbys, `pg_basebackup`, `pg_rewind`) and the superuser's (the agents'
    /// copies, subscriptions and checks) come from these only.
    pub nodes: BTreeSet<String>,
    /// The networks (CIDR) application sessions may come from; `None`: any address.
    pub clients: Option<Vec<String>>,
    /// Whether sessions from other hosts must use TLS (`hostssl`): so whenever the node has
    /// its certificate.
    pub tls: bool,
    /// How many times the node's certificate files were replaced: rules that differ only
    /// here are the same rules, but writing them reloads the instance, which reads the new
    /// certificate.
    pub certificates: u64,
    /// Whether the cluster declares application roles: then client networks admit neither
    /// the superuser nor the replication role, which log in only from the nodes.
    pub application_roles: bool,
}

impl Default for Access {
    /// Loopback only.
    fn default() -> Self {
        Access {
            nodes: BTreeSet::new(),
            clients: Some(Vec::new()),
            tls: false,
            certificates: 0,
            application_roles: false,
        }
    }
}

impl Access {
    /// The contents of `pg_hba.conf`. PostgreSQL takes the first line that matches a
    /// session's type, database, user and address; a session no line matches is refused.
    /// An address that is neither an IP address, a network nor a host name (it could not
    /// be written as one field) is left out. With [`Access::tls`], every line but
    /// loopback's admits TLS sessions only. With [`Access::application_roles`], client
    /// networks first refuse the superuser and the replication role.
    pub(crate) fn render(&self) -> String {
        let host = if self.tls { "hostssl" } else { "host" };
        let mut hba = String::from(
            "# Written by the Shardplane agent; changes are overwritten.\n\
             # type database user address method\n\
             host all all 127.0.0.1/32 scram-sha-256\n\
             host replication replicator 127.0.0.1/32 scram-sha-256\n",
        );
        // A node's sessions also present its certificate, which must be the cluster
        // authority's: a stolen password alone opens no replication or superuser session.
        let node_certificate = if self.tls {
            " clientcert=verify-ca"
        } else {
            ""
        };
        for node in self.nodes.iter().filter_map(|node| hba_address(node)) {
            hba.push_str(&format!(
                "{host} replication {REPLICATION_USER} {node} scram-sha-256{node_certificate}\n\
                 {host} all {SUPERUSER} {node} scram-sha-256{node_certificate}\n"
            ));
        }
        let networks: Vec<String> = match &self.clients {
            None => vec!["all".to_owned()],
            Some(networks) => networks
                .iter()
                .filter_map(|network| hba_address(network))
                .collect(),
        };
        for network in &networks {
            // `host` matches TLS sessions too, so the refusal covers both kinds.
            if self.application_roles {
                hba.push_str(&format!(
                    "host all {SUPERUSER},{REPLICATION_USER} {network} reject\n"
                ));
            }
            hba.push_str(&format!("{host} all all {network} scram-sha-256\n"));
        }
        hba
    }
}

/// `address` as the address field of a `pg_hba.conf` line: an IP address as the network of
/// that one address, a network (`10.0.0.0/8`) or a host name as it is; `None` for anything
/// else.
fn hba_address(address: &str) -> Option<String> {
    if let Ok(ip) = address.parse::<IpAddr>() {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        return Some(format!("{ip}/{bits}"));
    }
    if let Some((ip, bits)) = address.split_once('/') {
        let ip: IpAddr = ip.parse().ok()?;
        let bits: u8 = bits.parse().ok()?;
        let most = if ip.is_ipv4() { 32 } else { 128 };
        return (bits <= most).then(|| format!("{ip}/{bits}"));
    }
    is_host(address).then(|| address.to_owned())
}

/// Whether `address` is an IP address or a DNS host name (letters, digits, `-` and `.`).
fn is_host(address: &str) -> bool {
    address.parse::<IpAddr>().is_ok()
        || (!address.is_empty()
            && address.len() <= 253
            && address
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
}

/// Whether `address` names this host's loopback.
fn is_loopback(address: &str) -> bool {
    address == "localhost" || address.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The superuser every instance is initialised with.
/// `wal_receiver_timeout` of a standby catching up (re-pointed, created, or fallen behind):
/// a WAL receiver counts only whole messages as received, and a catching-up stream's are up to
/// 128 KB, which a slow, lossy WAN link delivers in more than the 3 s an in-sync stream is
/// given (28 KB/s measured across the test WAN: 4.6 s per message, so the receiver timed out
/// before every message and never caught up). 30 s holds down to about 4 KB/s; an in-sync
/// standby gets the instance's own timeout back, so a cut stream is still noticed in 3 s.
pub const CATCH_UP_RECEIVER_TIMEOUT: &str = "30s";

pub const SUPERUSER: &str = "postgres";

/// The role standbys (and `pg_basebackup`) connect as.
pub const REPLICATION_USER: &str = "replicator";

/// What an instance's sessions with its peers present and check: the passwords of a replica
/// set's superuser and replication role, and — once the node has its certificate — the
/// cluster's authority, against which every peer's certificate and name are checked. `Debug`
/// never shows the passwords.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    superuser_password: String,
    replication_password: String,
    tls: Option<PeerTls>,
}

impl Credentials {
    /// Credentials from the two passwords, with no TLS.
    pub fn new(superuser_password: String, replication_password: String) -> Self {
        Credentials {
            superuser_password,
            replication_password,
            tls: None,
        }
    }

    /// These credentials, checking peers with `tls`.
    pub fn with_tls(self, tls: PeerTls) -> Self {
        Credentials {
            tls: Some(tls),
            ..self
        }
    }

    /// How sessions with peers check them, if they use TLS.
    pub fn tls(&self) -> Option<&PeerTls> {
        self.tls.as_ref()
    }

    /// The `sslmode` (and root certificate) of a libpq connection string to a peer.
    pub(crate) fn peer_ssl_options(&self) -> String {
        match &self.tls {
            Some(tls) => tls.libpq_settings().iter().fold(
                "sslmode=verify-full".to_owned(),
                |options, (name, file)| {
                    format!(
                        "{options} {name}={}",
                        quote_conninfo(&file.to_string_lossy())
                    )
                },
            ),
            None => "sslmode=disable".to_owned(),
        }
    }

    /// The superuser's password, for making connections.
    pub(crate) fn superuser_password(&self) -> &str {
        &self.superuser_password
    }

    /// A libpq password file (`.pgpass`) holding both roles' passwords, for any host: the
    /// cluster's instances share them.
    pub(crate) fn pgpass(&self) -> String {
        let escape = |text: &str| text.replace('\\', "\\\\").replace(':', "\\:");
        format!(
            "*:*:*:{SUPERUSER}:{}\n*:*:*:{REPLICATION_USER}:{}\n",
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

/// How an instance's sessions with peers check them and present the node: libpq's
/// (standbys, `pg_basebackup`, `pg_rewind`, subscriptions) with `sslmode=verify-full`
/// against the authority's file and the node's certificate files, the agent's own
/// (`tokio_postgres`) with a connector built from the same. Both follow a renewal: libpq
/// reads the files at every connection, the connector is replaced by [`PeerTls::renew`].
/// Clones share the connector.
#[derive(Clone)]
pub struct PeerTls {
    files: ServerTls,
    connector: Arc<Mutex<MakeRustlsConnect>>,
}

impl PeerTls {
    /// Checks peers against the authority and presents the node's certificate, both as in
    /// `files` (given here as PEM text too).
    pub fn new(files: ServerTls, node: &NodeTlsPem<'_>) -> Result<Self, TlsError> {
        Ok(PeerTls {
            files,
            connector: Arc::new(Mutex::new(node.connector()?)),
        })
    }

    /// The libpq settings of a session with a peer: `verify-full` against the authority's
    /// file, presenting the node's certificate (libpq would otherwise look for one in the
    /// home folder of the server's user).
    pub(crate) fn libpq_settings(&self) -> [(&'static str, &Path); 3] {
        [
            ("sslrootcert", &self.files.authority_file),
            ("sslcert", &self.files.certificate_file),
            ("sslkey", &self.files.key_file),
        ]
    }

    /// Uses `node`'s authority and certificate from now on (their files were rewritten).
    pub fn renew(&self, node: &NodeTlsPem<'_>) -> Result<(), TlsError> {
        let connector = node.connector()?;
        *self
            .connector
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = connector;
        Ok(())
    }

    /// The connector for a new session.
    pub(crate) fn connector(&self) -> MakeRustlsConnect {
        self.connector
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// A node's certificate, its key and the cluster's authority, as PEM text.
pub struct NodeTlsPem<'a> {
    /// The node's certificate.
    pub certificate: &'a str,
    /// Its private key.
    pub key: &'a str,
    /// The cluster's authority.
    pub authority: &'a str,
}

impl NodeTlsPem<'_> {
    /// A connector for the agent's sessions with peers: checks them against the authority,
    /// presents the node's certificate.
    fn connector(&self) -> Result<MakeRustlsConnect, TlsError> {
        let config = node_client_config(self.certificate, self.key, self.authority)?;
        Ok(MakeRustlsConnect::new(config))
    }
}

impl PartialEq for PeerTls {
    fn eq(&self, other: &Self) -> bool {
        self.files == other.files && Arc::ptr_eq(&self.connector, &other.connector)
    }
}

impl Eq for PeerTls {}

#[cfg(test)]
mod tests {
    use super::*;

    fn hba_lines(access: &Access) -> Vec<String> {
        access
            .render()
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn replication_and_the_superuser_come_only_from_nodes_and_clients_from_their_networks() {
        let access = Access {
            nodes: ["10.1.0.11", "fd00::12", "db-3.example"]
                .map(String::from)
                .into(),
            clients: Some(vec!["192.0.2.0/24".into()]),
            ..Access::default()
        };
        let lines = hba_lines(&access);
        assert_eq!(
            lines,
            [
                "host all all 127.0.0.1/32 scram-sha-256",
                "host replication replicator 127.0.0.1/32 scram-sha-256",
                "host replication replicator 10.1.0.11/32 scram-sha-256",
                "host all postgres 10.1.0.11/32 scram-sha-256",
                "host replication replicator db-3.example scram-sha-256",
                "host all postgres db-3.example scram-sha-256",
                "host replication replicator fd00::12/128 scram-sha-256",
                "host all postgres fd00::12/128 scram-sha-256",
                "host all all 192.0.2.0/24 scram-sha-256",
            ]
        );
        // No line admits replication from anywhere but loopback and the nodes.
        assert!(
            lines
                .iter()
                .filter(|l| l.contains(" replication "))
                .all(|l| !l.contains(" all scram") && !l.contains("192.0.2"))
        );
    }

    #[test]
    fn with_tls_every_line_but_loopbacks_admits_tls_sessions_only() {
        let access = Access {
            nodes: ["10.1.0.11"].map(String::from).into(),
            clients: None,
            tls: true,
            certificates: 3,
            application_roles: false,
        };
        let lines = hba_lines(&access);
        assert_eq!(
            lines,
            [
                "host all all 127.0.0.1/32 scram-sha-256",
                "host replication replicator 127.0.0.1/32 scram-sha-256",
                "hostssl replication replicator 10.1.0.11/32 scram-sha-256 clientcert=verify-ca",
                "hostssl all postgres 10.1.0.11/32 scram-sha-256 clientcert=verify-ca",
                "hostssl all all all scram-sha-256",
            ]
        );
        let settings = InstanceSettings {
            tls: Some(ServerTls::in_dir(Path::new("/var/lib/n1/tls"))),
            ..InstanceSettings::default()
        };
        let conf = settings.render();
        assert!(conf.contains("ssl = on\n"), "{conf}");
        assert!(conf.contains("ssl_cert_file = '/var/lib/n1/tls/server.crt'\n"));
        assert!(conf.contains("ssl_key_file = '/var/lib/n1/tls/server.key'\n"));
        assert!(conf.contains("ssl_ca_file = '/var/lib/n1/tls/ca.crt'\n"));
        assert!(InstanceSettings::default().render().contains("ssl = off\n"));
    }

    #[test]
    fn with_application_roles_client_networks_refuse_the_superuser_and_replication_role() {
        let access = Access {
            nodes: ["10.1.0.11"].map(String::from).into(),
            clients: Some(vec!["192.0.2.0/24".into(), "198.51.100.0/24".into()]),
            tls: true,
            certificates: 0,
            application_roles: true,
        };
        assert_eq!(
            hba_lines(&access)[2..],
            [
                "hostssl replication replicator 10.1.0.11/32 scram-sha-256 clientcert=verify-ca",
                "hostssl all postgres 10.1.0.11/32 scram-sha-256 clientcert=verify-ca",
                "host all postgres,replicator 192.0.2.0/24 reject",
                "hostssl all all 192.0.2.0/24 scram-sha-256",
                "host all postgres,replicator 198.51.100.0/24 reject",
                "hostssl all all 198.51.100.0/24 scram-sha-256",
            ]
        );
        let anywhere = Access {
            clients: None,
            ..access
        };
        assert_eq!(
            hba_lines(&anywhere)[4..],
            [
                "host all postgres,replicator all reject",
                "hostssl all all all scram-sha-256",
            ]
        );
    }

    #[test]
    fn clients_unset_come_from_anywhere_and_empty_from_loopback_only() {
        let anywhere = Access {
            nodes: BTreeSet::new(),
            clients: None,
            ..Access::default()
        };
        assert!(hba_lines(&anywhere).contains(&"host all all all scram-sha-256".to_owned()));
        assert_eq!(hba_lines(&Access::default()).len(), 2);
    }

    #[test]
    fn an_address_that_is_not_one_field_is_left_out() {
        let access = Access {
            nodes: ["10.0.0.1 trust\nhost all all all", "10.0.0.0/33", "", "a b"]
                .map(String::from)
                .into(),
            clients: Some(vec!["all trust".into(), "10.0.0.0/8".into()]),
            ..Access::default()
        };
        let lines = hba_lines(&access);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[2], "host all all 10.0.0.0/8 scram-sha-256");
    }

    #[test]
    fn the_node_address_is_listened_on_besides_loopback() {
        let listen = |address: Option<&str>| {
            let settings = InstanceSettings {
                listen_address: address.map(str::to_owned),
                ..InstanceSettings::default()
            };
            settings
                .render()
                .lines()
                .find(|line| line.starts_with("listen_addresses"))
                .unwrap()
                .to_owned()
        };
        assert_eq!(listen(None), "listen_addresses = '127.0.0.1'");
        assert_eq!(listen(Some("127.0.0.1")), "listen_addresses = '127.0.0.1'");
        assert_eq!(
            listen(Some("10.213.0.11")),
            "listen_addresses = '127.0.0.1,10.213.0.11'"
        );
        assert_eq!(listen(Some("x',port='1")), "listen_addresses = '127.0.0.1'");
    }
}
