//! The heartbeats this operator process has heard: when each node was last heard from, and
//! since when this process leads (silence is counted from no earlier than that). Written by
//! the heartbeat endpoint, read by the liveness reconciler.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::protocol::Heartbeat;

/// When each node was last heard from, as seen by this operator process.
#[derive(Default)]
pub struct Liveness {
    heard: Mutex<HashMap<(String, String), Instant>>,
    leading_since: Mutex<Option<Instant>>,
}

impl Liveness {
    /// Records a heartbeat.
    pub fn record(&self, heartbeat: &Heartbeat) {
        if let Ok(mut heard) = self.heard.lock() {
            heard.insert(
                (heartbeat.namespace.clone(), heartbeat.node.clone()),
                Instant::now(),
            );
        }
    }

    /// When `node` of `namespace` was last heard from by this process.
    pub(super) fn last_heard(&self, namespace: &str, node: &str) -> Option<Instant> {
        let heard = self.heard.lock().ok()?;
        heard.get(&(namespace.to_owned(), node.to_owned())).copied()
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
