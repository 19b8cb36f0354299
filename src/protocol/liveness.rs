//! How agents prove they live: the heartbeat they POST to every operator replica, and the
//! Lease each renews as the durable record. A heartbeat is signed with the node's heartbeat
//! key (HMAC-SHA256; the key is in the node's certificate Secret, `crate::tls::HEARTBEAT_KEY`,
//! known to the operator and the node only), and so is the answer, so neither a heartbeat for
//! another node nor an answer from something that is not the operator counts. A heartbeat
//! carries a sequence number — the agent's clock in milliseconds, strictly increasing — which
//! the operator accepts only once, only in order, and only near its own clock, so a captured
//! heartbeat cannot be played again to keep a dead node alive.

use serde::{Deserialize, Serialize};

use super::mac::{sign_hex, verify_hex};

/// The HTTP path agents post heartbeats to.
pub const HEARTBEAT_PATH: &str = "/v1/heartbeat";

/// The Lease the operator replicas compete for.
pub const OPERATOR_LEASE: &str = "shardplane-operator";

/// The Lease a node's agent renews as its durable liveness record.
pub fn node_lease_name(node: &str) -> String {
    format!("shardplane-node-{node}")
}

/// Who sends heartbeats: a node's agent, in one of its lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// The namespace of the node's DatabaseNode.
    pub namespace: String,
    /// The DatabaseNode's name.
    pub node: String,
    /// Bumped each time the agent starts.
    pub agent_epoch: i64,
}

/// One heartbeat as sent: who, its sequence number, and its signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedHeartbeat {
    /// Who sends it.
    #[serde(flatten)]
    pub beat: Heartbeat,
    /// The agent's clock when sent (milliseconds since the Unix epoch), strictly increasing.
    pub sequence: u64,
    /// HMAC-SHA256 of the above with the node's heartbeat key, hexadecimal.
    pub mac: String,
}

/// The operator's answer to a heartbeat it accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatAnswer {
    /// Whether the replica that answers leads (only then does the answer prove liveness).
    pub leader: bool,
    /// HMAC-SHA256 of the heartbeat's node, sequence and `leader` with the node's key.
    pub mac: String,
}

impl SignedHeartbeat {
    /// `beat` with `sequence`, signed with `key`.
    pub fn sign(beat: Heartbeat, sequence: u64, key: &[u8]) -> Self {
        let mac = sign(key, &message("heartbeat", &beat, sequence, None));
        SignedHeartbeat {
            beat,
            sequence,
            mac,
        }
    }

    /// Whether it was signed with `key` (in constant time).
    pub fn signed_with(&self, key: &[u8]) -> bool {
        verify(
            key,
            &message("heartbeat", &self.beat, self.sequence, None),
            &self.mac,
        )
    }

    /// The answer to it, signed with `key`.
    pub fn answer(&self, leader: bool, key: &[u8]) -> HeartbeatAnswer {
        let message = message("answer", &self.beat, self.sequence, Some(leader));
        HeartbeatAnswer {
            leader,
            mac: sign(key, &message),
        }
    }

    /// Whether `answer` answers it and was signed with `key`.
    pub fn answered_by(&self, answer: &HeartbeatAnswer, key: &[u8]) -> bool {
        verify(
            key,
            &message("answer", &self.beat, self.sequence, Some(answer.leader)),
            &answer.mac,
        )
    }
}

/// What is signed: the kind, then every field, one per line (no field holds a newline: names
/// are DNS labels).
fn message(kind: &str, beat: &Heartbeat, sequence: u64, leader: Option<bool>) -> String {
    let leader = leader.map_or(String::new(), |leader| format!("\n{leader}"));
    format!(
        "shardplane-{kind}\n{}\n{}\n{}\n{sequence}{leader}",
        beat.namespace, beat.node, beat.agent_epoch
    )
}

/// The signature of `message` with `key`; nothing for an empty key, which signs nothing.
fn sign(key: &[u8], message: &str) -> String {
    if key.is_empty() {
        return String::new();
    }
    sign_hex(key, message.as_bytes())
}

/// Whether `signature` is `message`'s with `key` (never for an empty key).
fn verify(key: &[u8], message: &str, signature: &str) -> bool {
    !key.is_empty() && verify_hex(key, message.as_bytes(), signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(node: &str) -> Heartbeat {
        Heartbeat {
            namespace: "prod".into(),
            node: node.into(),
            agent_epoch: 4,
        }
    }

    #[test]
    fn a_heartbeat_counts_only_with_its_nodes_key_and_unchanged() {
        let key = b"key of n1, thirty-two bytes long";
        let signed = SignedHeartbeat::sign(beat("n1"), 1_000, key);
        assert!(signed.signed_with(key));
        assert!(!signed.signed_with(b"key of n2, thirty-two bytes long"));
        assert!(!signed.signed_with(b""));
        let mut other_node = signed.clone();
        other_node.beat.node = "n2".into();
        assert!(!other_node.signed_with(key));
        let mut later = signed.clone();
        later.sequence += 1;
        assert!(!later.signed_with(key));
        let mut unsigned = signed.clone();
        unsigned.mac = String::new();
        assert!(!unsigned.signed_with(key));
        // The wire form keeps the fields the operator reads.
        let json = serde_json::to_value(&signed).unwrap();
        assert_eq!(json["node"], "n1");
        assert_eq!(json["agentEpoch"], 4);
        assert_eq!(json["sequence"], 1_000);
    }

    #[test]
    fn an_answer_counts_only_for_its_heartbeat_with_the_nodes_key() {
        let key = b"key of n1, thirty-two bytes long";
        let signed = SignedHeartbeat::sign(beat("n1"), 1_000, key);
        let answer = signed.answer(true, key);
        assert!(signed.answered_by(&answer, key));
        let forged = HeartbeatAnswer {
            leader: true,
            mac: signed.answer(false, key).mac,
        };
        assert!(!signed.answered_by(&forged, key));
        let next = SignedHeartbeat::sign(beat("n1"), 1_001, key);
        assert!(!next.answered_by(&answer, key), "an old answer replayed");
        assert!(!signed.answered_by(&signed.answer(true, b"another key"), key));
    }
}
