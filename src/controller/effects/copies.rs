//! The Shards as the executor sees them: the watch cache, and the copy each of its own writes
//! returned, until the cache holds that write (or something newer). The cache lags the
//! executor's writes by a watch event; a step that writes a shard right after another step
//! wrote it (a new shard's replicas, added one after the other) would otherwise write on the
//! stale cached copy, be refused (409) and read the shard anew.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::ResourceExt;

use crate::api::Shard;

use super::super::caches::Cache;

/// How many written copies are kept before those the cache caught up with are dropped.
const KEPT: usize = 256;

/// A watch cache of the Shards and the executor's newest writes on top of it.
#[derive(Clone)]
pub struct ShardCopies {
    cache: Cache<Shard>,
    written: Arc<Mutex<HashMap<(String, String), Written>>>,
}

/// A shard as a write returned it, and the version the write was made on.
struct Written {
    on: Option<String>,
    shard: Arc<Shard>,
}

impl ShardCopies {
    /// The shards `cache` holds, with no write of the executor's yet.
    pub fn new(cache: Cache<Shard>) -> Self {
        ShardCopies {
            cache,
            written: Arc::default(),
        }
    }

    /// The watch cache alone.
    pub fn cache(&self) -> &Cache<Shard> {
        &self.cache
    }

    /// The newest copy of shard `namespace/name` known: the executor's own last write while
    /// the cache still holds the version that write was made on, else the cache's.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Shard>> {
        let cached = self.cache.get(namespace, name);
        let key = (namespace.to_owned(), name.to_owned());
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        match written.get(&key) {
            Some(copy)
                if cached
                    .as_ref()
                    .is_none_or(|c| c.resource_version() == copy.on) =>
            {
                Some(copy.shard.clone())
            }
            Some(_) => {
                written.remove(&key);
                cached
            }
            None => cached,
        }
    }

    /// Remembers that a write on version `on` of a shard returned `shard`.
    pub fn wrote(&self, on: Option<String>, shard: Shard) {
        let key = (shard.namespace().unwrap_or_default(), shard.name_any());
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if written.len() >= KEPT {
            written.retain(|(namespace, name), copy| {
                self.cache
                    .get(namespace, name)
                    .is_none_or(|c| c.resource_version() == copy.on)
            });
        }
        written.insert(
            key,
            Written {
                on,
                shard: Arc::new(shard),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn shard(version: &str) -> Shard {
        serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
            "metadata": {"name": "orders-0", "namespace": "ns", "resourceVersion": version},
            "spec": {"table": "orders", "range": {}},
        }))
        .unwrap()
    }

    fn version(copies: &ShardCopies) -> Option<String> {
        copies
            .get("ns", "orders-0")
            .and_then(|s| s.resource_version())
    }

    #[test]
    fn a_written_copy_is_seen_until_the_cache_moves_past_the_version_it_was_written_on() {
        let copies = ShardCopies::new(Cache::holding([shard("10")]));
        assert_eq!(version(&copies).as_deref(), Some("10"));
        copies.wrote(Some("10".into()), shard("11"));
        assert_eq!(
            version(&copies).as_deref(),
            Some("11"),
            "the cache still lags"
        );

        // The cache took the write, or a newer version: the cache's copy again.
        let copies = ShardCopies {
            cache: Cache::holding([shard("12")]),
            written: copies.written.clone(),
        };
        assert_eq!(version(&copies).as_deref(), Some("12"));
        assert!(
            copies.written.lock().unwrap().is_empty(),
            "kept after the cache moved"
        );
    }
}
