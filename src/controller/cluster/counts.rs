//! Each node's replica and primary counts (`DatabaseNode.status.replicas`/`primaries`),
//! written beside the cluster's looks rather than inside them. They are informational
//! (`kubectl get databasenodes`), and a placement at 1,000 nodes changes hundreds of nodes'
//! counts at once: written inside the look, they made every look wait ≈ 7 s for them at the
//! seed's size, and every decision with it. A look hands its counts over here ([`Counts::offer`],
//! the newest per node wins); one writer writes them, at most [`WRITES_AT_ONCE`] at a time and
//! one batch per [`EVERY`] (10 s), so a burst of looks is one batch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;

use crate::api::DatabaseNode;

use super::super::context::Context;
use super::super::error::Doing;
use super::ClusterError;

/// How many nodes' counts are written at once.
const WRITES_AT_ONCE: usize = 16;

/// The shortest time between two batches of writes: during a placement at 1,000 nodes
/// nearly every node's counts change between two batches, so this bounds their write rate
/// (every 2 s, they were 14,300 writes in a seed-size run — more than the looks made).
const EVERY: Duration = Duration::from_secs(10);

/// A node's replica and primary counts.
type Tally = (i32, i32);

/// A node's namespace and name.
type NodeKey = (String, String);

/// Counts offered by the looks and not written yet, and what was last written.
#[derive(Default)]
pub struct Counts {
    pending: Mutex<HashMap<NodeKey, (Arc<DatabaseNode>, Tally)>>,
    /// What this writer last wrote per node: a look on a cache that does not hold that write
    /// yet offers the same counts again, which are not written twice.
    written: Mutex<HashMap<NodeKey, Tally>>,
    offered: Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn key(node: &DatabaseNode) -> NodeKey {
    (node.namespace().unwrap_or_default(), node.name_any())
}

impl Counts {
    /// Hands over the counts of the nodes whose status differs from them (newest wins).
    pub fn offer(&self, counts: Vec<(Arc<DatabaseNode>, i32, i32)>) {
        if counts.is_empty() {
            return;
        }
        let written = lock(&self.written);
        let mut pending = lock(&self.pending);
        for (node, replicas, primaries) in counts {
            let key = key(&node);
            if written.get(&key) == Some(&(replicas, primaries)) {
                pending.remove(&key);
            } else {
                pending.insert(key, (node, (replicas, primaries)));
            }
        }
        drop(pending);
        self.offered.notify_one();
    }

    /// The counts to write now, taken out of the pending ones.
    fn take(&self) -> Vec<(Arc<DatabaseNode>, Tally)> {
        lock(&self.pending)
            .drain()
            .map(|(_, entry)| entry)
            .collect()
    }

    /// Writes offered counts until dropped (with the leadership): one batch, then at least
    /// [`EVERY`] before the next. A failed write is left to the next look, which offers it
    /// again (the cache still shows the old counts).
    pub async fn write_forever(&self, ctx: &Context) {
        loop {
            self.offered.notified().await;
            let batch = self.take();
            futures::stream::iter(batch)
                .for_each_concurrent(WRITES_AT_ONCE, |(node, tally)| async move {
                    match write(ctx, &node, tally).await {
                        Ok(()) => {
                            lock(&self.written).insert(key(&node), tally);
                        }
                        Err(error) => tracing::warn!(%error, "node counts not written"),
                    }
                })
                .await;
            tokio::time::sleep(EVERY).await;
        }
    }
}

/// Writes one node's replica and primary counts (the leader only).
async fn write(
    ctx: &Context,
    node: &DatabaseNode,
    (replicas, primaries): Tally,
) -> Result<(), ClusterError> {
    ctx.leader.ensure()?;
    let namespace = node.namespace().unwrap_or_default();
    let nodes: Api<DatabaseNode> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = json!({"status": {"replicas": replicas, "primaries": primaries}});
    nodes
        .patch_status(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
        .doing(|| {
            format!(
                "write the counts of DatabaseNode {namespace}/{}",
                node.name_any()
            )
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Arc<DatabaseNode> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseNode",
                "metadata": {"name": name, "namespace": "db"},
                "spec": {"cluster": "main", "region": "r1", "zone": "z1", "address": "10.0.0.1",
                         "ports": {"first": 5432, "last": 5439},
                         "capacity": {"storageBytes": 1_000_000_000_i64}}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn the_newest_offer_wins_and_what_was_written_is_not_offered_again() {
        let counts = Counts::default();
        counts.offer(vec![(node("a"), 1, 0), (node("b"), 2, 1)]);
        counts.offer(vec![(node("a"), 3, 1)]);
        let mut batch: Vec<(String, Tally)> = counts
            .take()
            .into_iter()
            .map(|(n, t)| (n.name_any(), t))
            .collect();
        batch.sort();
        assert_eq!(batch, [("a".into(), (3, 1)), ("b".into(), (2, 1))]);
        assert!(counts.take().is_empty());

        // Written: a look on a cache that lags offers the same counts; nothing to write.
        lock(&counts.written).insert(key(&node("a")), (3, 1));
        counts.offer(vec![(node("a"), 3, 1)]);
        assert!(counts.take().is_empty());
        // An offer pending when the write lands is withdrawn by the same offer again.
        counts.offer(vec![(node("a"), 4, 1)]);
        counts.offer(vec![(node("a"), 3, 1)]);
        assert!(counts.take().is_empty());
        // Changed since: written again.
        counts.offer(vec![(node("a"), 4, 2)]);
        assert_eq!(counts.take().len(), 1);
    }
}
