//! The heartbeats this operator process has heard: when each node was last heard from, and
//! since when this process leads (silence is counted from no earlier than that). Written by
//! the heartbeat endpoint, read by the liveness reconciler.
//!
//! A heartbeat counts only if it is signed with its node's heartbeat key (from the node's
//! certificate Secret, which every replica watches: `crate::tls::HEARTBEAT_KEY`), carries a
//! sequence number above every one accepted from that node before, and that number — the
//! agent's clock — is within [`CLOCK_TOLERANCE_MS`] of this process's clock. Anything else is
//! refused and changes nothing: a forged or replayed heartbeat never keeps a node alive.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::protocol::SignedHeartbeat;
use crate::tls::{HEARTBEAT_KEY, node_secret_name, secret_text};

/// How far a heartbeat's sequence number (the agent's clock) may be from this process's
/// clock. Bounds how long a heartbeat captured on the wire could be replayed to a replica
/// that never saw a later one (a replica that just started): 30 s, against clocks that NTP
/// keeps within milliseconds.
pub const CLOCK_TOLERANCE_MS: u64 = 30_000;

/// Why a heartbeat was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The node has no heartbeat key (yet): its certificate Secret was not issued, or is not
    /// in this replica's cache yet.
    #[error("no heartbeat key is known for this node")]
    NoKey,
    /// The signature is not the node's.
    #[error("the heartbeat is not signed with the node's key")]
    BadSignature,
    /// Its sequence number is not above the last accepted one: a replay, or one overtaken.
    #[error("the heartbeat's sequence number was already used")]
    Replayed,
    /// Its sequence number is too far from this process's clock.
    #[error("the heartbeat's clock is more than 30 s from the operator's")]
    Stale,
}

/// When each node was last heard from, as seen by this operator process.
#[derive(Default)]
pub struct Liveness {
    heard: Mutex<HashMap<(String, String), Heard>>,
    leading_since: Mutex<Option<Instant>>,
    /// The operator's TLS Secrets (set once the watch runs): the nodes' heartbeat keys.
    keys: OnceLock<Store<Secret>>,
}

struct Heard {
    at: Instant,
    sequence: u64,
}

impl Liveness {
    /// Reads heartbeat keys from `secrets` (the TLS Secrets' cache) from now on.
    pub fn use_keys(&self, secrets: Store<Secret>) {
        let _ = self.keys.set(secrets);
    }

    /// The heartbeat key of `node` in `namespace`, if known.
    pub fn key(&self, namespace: &str, node: &str) -> Option<Vec<u8>> {
        let secret = self
            .keys
            .get()?
            .get(&ObjectRef::new(&node_secret_name(node)).within(namespace))?;
        secret_text(&secret, HEARTBEAT_KEY).map(String::into_bytes)
    }

    /// Records `heartbeat` if it is genuine and new (see the module's rules) at `now_ms`
    /// (this process's clock, milliseconds since the Unix epoch); returns the node's key,
    /// to sign the answer with.
    pub fn record(&self, heartbeat: &SignedHeartbeat, now_ms: u64) -> Result<Vec<u8>, Refusal> {
        let beat = &heartbeat.beat;
        let key = self
            .key(&beat.namespace, &beat.node)
            .ok_or(Refusal::NoKey)?;
        if !heartbeat.signed_with(&key) {
            return Err(Refusal::BadSignature);
        }
        if heartbeat.sequence.abs_diff(now_ms) > CLOCK_TOLERANCE_MS {
            return Err(Refusal::Stale);
        }
        let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        let entry = (beat.namespace.clone(), beat.node.clone());
        if heard
            .get(&entry)
            .is_some_and(|last| last.sequence >= heartbeat.sequence)
        {
            return Err(Refusal::Replayed);
        }
        heard.insert(
            entry,
            Heard {
                at: Instant::now(),
                sequence: heartbeat.sequence,
            },
        );
        Ok(key)
    }

    /// When `node` of `namespace` was last heard from by this process.
    pub(super) fn last_heard(&self, namespace: &str, node: &str) -> Option<Instant> {
        let heard = self.heard.lock().ok()?;
        heard
            .get(&(namespace.to_owned(), node.to_owned()))
            .map(|h| h.at)
    }

    /// When this process started leading (now, on first asking since it last stopped).
    pub(super) fn leading_since(&self) -> Instant {
        let mut since = match self.leading_since.lock() {
            Ok(since) => since,
            Err(poisoned) => poisoned.into_inner(),
        };
        *since.get_or_insert_with(Instant::now)
    }

    /// Forgets when this process started leading.
    pub(super) fn stop_leading(&self) {
        if let Ok(mut since) = self.leading_since.lock() {
            *since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;
    use kube::runtime::{reflector, watcher};

    use super::*;
    use crate::protocol::Heartbeat;

    const NOW: u64 = 1_800_000_000_000;
    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn liveness_knowing_n1() -> Liveness {
        let (store, mut writer) = reflector::store();
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(node_secret_name("n1")),
                namespace: Some("prod".into()),
                ..ObjectMeta::default()
            },
            data: Some([(HEARTBEAT_KEY.to_owned(), ByteString(KEY.to_vec()))].into()),
            ..Secret::default()
        };
        writer.apply_watcher_event(&watcher::Event::Apply(secret));
        let liveness = Liveness::default();
        liveness.use_keys(store);
        liveness
    }

    fn beat(node: &str, sequence: u64, key: &[u8]) -> SignedHeartbeat {
        let beat = Heartbeat {
            namespace: "prod".into(),
            node: node.into(),
            agent_epoch: 2,
        };
        SignedHeartbeat::sign(beat, sequence, key)
    }

    #[test]
    fn only_a_genuine_new_heartbeat_counts() {
        let liveness = liveness_knowing_n1();
        assert_eq!(
            liveness.record(&beat("n1", NOW, b"a forger's key"), NOW),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            liveness.record(&beat("n2", NOW, KEY), NOW),
            Err(Refusal::NoKey)
        );
        assert!(
            liveness.last_heard("prod", "n1").is_none(),
            "a refusal counted"
        );
        assert_eq!(
            liveness.record(&beat("n1", NOW, KEY), NOW),
            Ok(KEY.to_vec())
        );
        let heard = liveness.last_heard("prod", "n1").unwrap();
        // Played again, or an older one: refused, and the node is not heard again.
        assert_eq!(
            liveness.record(&beat("n1", NOW, KEY), NOW + 500),
            Err(Refusal::Replayed)
        );
        assert_eq!(
            liveness.record(&beat("n1", NOW - 500, KEY), NOW + 500),
            Err(Refusal::Replayed)
        );
        assert_eq!(liveness.last_heard("prod", "n1"), Some(heard));
        assert!(
            liveness
                .record(&beat("n1", NOW + 500, KEY), NOW + 500)
                .is_ok()
        );
    }

    #[test]
    fn a_heartbeat_far_from_the_operators_clock_is_refused() {
        let liveness = liveness_knowing_n1();
        let far = CLOCK_TOLERANCE_MS + 1;
        assert_eq!(
            liveness.record(&beat("n1", NOW - far, KEY), NOW),
            Err(Refusal::Stale)
        );
        assert_eq!(
            liveness.record(&beat("n1", NOW + far, KEY), NOW),
            Err(Refusal::Stale)
        );
        assert!(liveness.record(&beat("n1", NOW - 1_000, KEY), NOW).is_ok());
    }

    #[test]
    fn without_the_secrets_cache_nothing_counts() {
        let liveness = Liveness::default();
        assert_eq!(
            liveness.record(&beat("n1", NOW, KEY), NOW),
            Err(Refusal::NoKey)
        );
    }
}
