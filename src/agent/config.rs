//! What `shardplane agent` is told on its command line: which node it is, where its
//! instances live, which operator replicas to heartbeat, and what to register the node with
//! when its DatabaseNode does not exist yet. Plain values; no I/O.

use std::net::SocketAddr;
use std::path::PathBuf;

/// The Secret holding the PostgreSQL passwords when neither the flag nor the cluster names one.
pub const DEFAULT_CREDENTIALS_SECRET: &str = "shardplane-postgres";
/// The Secret key of the superuser's password.
pub const SUPERUSER_PASSWORD_KEY: &str = "superuser-password";
/// The Secret key of the replication role's password.
pub const REPLICATION_PASSWORD_KEY: &str = "replication-password";
/// The key of an application role's password in its Secret (`spec.roles[].passwordSecret`).
pub const ROLE_PASSWORD_KEY: &str = "password";

/// The agent's configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The DatabaseNode this agent runs.
    pub node: String,
    /// The namespace of the node, its cluster, tables and shards.
    pub namespace: String,
    /// Where the node's replicas live: one folder per shard replica under `replicas/`.
    pub data_dir: PathBuf,
    /// Every operator replica's heartbeat address.
    pub operators: Vec<SocketAddr>,
    /// What to create the DatabaseNode with if it does not exist.
    pub registration: Registration,
    /// The Secret with the PostgreSQL passwords; default: the cluster's
    /// `spec.credentialsSecret`, else [`DEFAULT_CREDENTIALS_SECRET`].
    pub credentials_secret: Option<String>,
    /// `fsync` of the instances; off only for throwaway nodes (tests, benchmarks).
    pub fsync: bool,
}

/// The DatabaseNode's spec, for registering a node that does not exist yet. Every field is
/// needed then; none is used when the node exists (its spec is the user's).
#[derive(Clone, Debug, Default)]
pub struct Registration {
    /// `spec.cluster`.
    pub cluster: Option<String>,
    /// `spec.region`.
    pub region: Option<String>,
    /// `spec.zone`.
    pub zone: Option<String>,
    /// `spec.address`: where other nodes and clients reach this node's instances.
    pub address: Option<String>,
    /// `spec.ports`: the first and last port instances may listen on.
    pub ports: Option<(u16, u16)>,
    /// `spec.capacity.storageBytes`.
    pub storage_bytes: Option<i64>,
}

impl Registration {
    /// The command-line flags of the fields that are missing.
    pub fn missing_flags(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        let checks = [
            (self.cluster.is_none(), "--cluster"),
            (self.region.is_none(), "--region"),
            (self.zone.is_none(), "--zone"),
            (self.address.is_none(), "--address"),
            (self.ports.is_none(), "--ports"),
            (self.storage_bytes.is_none(), "--storage-bytes"),
        ];
        for (absent, flag) in checks {
            if absent {
                missing.push(flag);
            }
        }
        missing
    }
}

/// Parses `FIRST-LAST` (both included), as `--ports` takes it.
pub fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let (first, last) = text.split_once('-').ok_or_else(|| {
        format!("{text:?} is not a port range; write FIRST-LAST, e.g. 20000-20099")
    })?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("{p:?} in {text:?} is not a port number"))
    };
    let (first, last) = (port(first)?, port(last)?);
    if first < 1024 || first > last {
        return Err(format!(
            "{text:?}: the range must start at 1024 or above and FIRST must not exceed LAST"
        ));
    }
    Ok((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("20000-20099"), Ok((20000, 20099)));
        assert!(parse_port_range("20099-20000").is_err());
        assert!(parse_port_range("80-90").is_err());
        assert!(parse_port_range("20000").is_err());
    }

    #[test]
    fn missing_registration_flags_are_named() {
        let registration = Registration {
            cluster: Some("main".into()),
            ports: Some((20000, 20010)),
            ..Registration::default()
        };
        assert_eq!(
            registration.missing_flags(),
            ["--region", "--zone", "--address", "--storage-bytes"]
        );
    }
}
