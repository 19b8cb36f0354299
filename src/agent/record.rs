//! What the agent remembers of each replica across restarts, in the replica's own folder
//! (`<data-dir>/replicas/<shard>/replica.json`): its port — so a restarted agent reopens the
//! instance where it listened before — the epoch it last served or followed, and the
//! endpoint it streams from. Written only after the instance it describes exists, so a
//! folder without a record is an interrupted creation, removed and redone.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::AgentError;

/// The record file's name inside a replica's folder.
const RECORD_FILE: &str = "replica.json";

/// One replica's remembered facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaRecord {
    /// The loopback port the instance listens on.
    pub port: u16,
    /// The epoch it served at (a primary) or of the primary it follows (a standby).
    pub epoch: i64,
    /// `host:port` of the primary it streams from; absent on a primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

impl ReplicaRecord {
    /// The record in `dir`, if one was written.
    pub fn load(dir: &Path) -> Result<Option<Self>, AgentError> {
        let path = dir.join(RECORD_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|source| AgentError::Record { path, source }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AgentError::Io { path, source }),
        }
    }

    /// Writes the record atomically (a temporary file renamed over the old one).
    pub fn save(&self, dir: &Path) -> Result<(), AgentError> {
        let path = dir.join(RECORD_FILE);
        let temporary = dir.join(format!("{RECORD_FILE}.new"));
        let text = serde_json::to_string_pretty(self).map_err(|source| AgentError::Record {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, &path))
            .map_err(|source| AgentError::Io { path, source })
    }
}

/// The folder of `shard`'s replica under the agent's data folder.
pub fn replica_dir(data_dir: &Path, shard: &str) -> PathBuf {
    data_dir.join("replicas").join(shard)
}

/// The replica name of `node`'s replica in any shard: its application name towards the
/// primary, its slot name there and its name in quorums. Every agent derives the same name
/// for a node, so a primary's agent can name its standbys. Node names may hold `-` and `.`
/// and be 253 characters long; replica names are `[a-z0-9_]{1,63}`, so the name is the
/// node's name made to fit, plus a hash of the whole name that keeps two nodes apart.
pub fn replica_name(node: &str) -> String {
    let readable: String = node
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect();
    let digest = Sha256::digest(node.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{readable}_{hash}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_names_fit_and_keep_nodes_apart() {
        let a = replica_name("Node-1.zone-a");
        assert!(a.starts_with("node_1_zone_a_"));
        assert!(a.len() <= 63);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        );
        assert_ne!(replica_name("n-1"), replica_name("n.1"));
        assert!(replica_name(&"x".repeat(253)).len() <= 63);
    }

    #[test]
    fn records_survive_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ReplicaRecord::load(dir.path()).unwrap(), None);
        let record = ReplicaRecord {
            port: 20001,
            epoch: 3,
            upstream: Some("127.0.0.1:20005".into()),
        };
        record.save(dir.path()).unwrap();
        assert_eq!(ReplicaRecord::load(dir.path()).unwrap(), Some(record));
    }
}
