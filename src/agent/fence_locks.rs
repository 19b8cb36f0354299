//! The write-fence lock of each replica of the node, shared by the self-fence keeper
//! (`self_fence.rs`) and the replica tasks (`replicas.rs`): whoever sets or lifts a replica's
//! fence holds its lock, so the two never do it at once, and a fence is lifted only after
//! liveness is checked again under the lock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One lock per replica, held while its write fence is set or lifted: the keeper and the
/// replica's task never fence or unfence the same instance at once (each would end the
/// other's session), and a task lifts a fence only after checking, under the lock, that the
/// node is live.
#[derive(Default)]
pub(crate) struct FenceLocks {
    locks: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl FenceLocks {
    /// The lock of `shard`'s replica on this node.
    pub(crate) fn of(&self, shard: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(shard.to_owned())
            .or_default()
            .clone()
    }
}
