//! The operator's watch caches: one per kind, started once per process — on every replica,
//! leader or not — and kept across leadership terms, so that a new term (or a lost Lease
//! regained) starts its reconcilers on warm caches instead of listing every object again.
//! Every reconciler reads and is triggered from these caches: a change wakes a reconciler
//! only after the cache holds it, so no reconciler reads a cache older than what woke it.

use std::collections::HashMap;
use std::future::ready;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::context::Context;
use super::metrics::KindLabels;
use crate::api::{DatabaseCluster, DatabaseNode, Plan, SchemaVersion, Shard, Table};
use crate::tls::TLS_SECRET_LABEL;
use k8s_openapi::api::core::v1::Secret;

/// The caches of every kind the operator reconciles or reads.
#[derive(Clone)]
pub struct Caches {
    /// DatabaseClusters.
    pub clusters: Cache<DatabaseCluster>,
    /// DatabaseNodes.
    pub nodes: Cache<DatabaseNode>,
    /// Tables.
    pub tables: Cache<Table>,
    /// Shards.
    pub shards: Cache<Shard>,
    /// SchemaVersions.
    pub versions: Cache<SchemaVersion>,
    /// Plans.
    pub plans: Cache<Plan>,
    /// The Secrets the operator writes for the clusters' TLS (labelled
    /// `crate::tls::TLS_SECRET_LABEL`; no other Secret is read): authorities, node
    /// certificates, and the nodes' heartbeat keys every replica checks heartbeats with.
    pub tls_secrets: Store<Secret>,
}

impl Caches {
    /// Starts every cache and returns once each holds its first list.
    pub async fn start(ctx: &Context) -> Self {
        let tls_secrets = watch_tls_secrets(ctx);
        let (clusters, nodes, tables, shards, versions, plans) = tokio::join!(
            Cache::start(ctx, "DatabaseCluster"),
            Cache::start(ctx, "DatabaseNode"),
            Cache::start(ctx, "Table"),
            Cache::start(ctx, "Shard"),
            Cache::start(ctx, "SchemaVersion"),
            Cache::start(ctx, "Plan"),
        );
        if tls_secrets.wait_until_ready().await.is_err() {
            tracing::warn!("the TLS Secrets' watch stopped before its first list");
        }
        Caches {
            clusters,
            nodes,
            tables,
            shards,
            versions,
            plans,
            tls_secrets,
        }
    }
}

/// A watch-fed store of the Secrets labelled [`TLS_SECRET_LABEL`], for the life of the
/// process.
fn watch_tls_secrets(ctx: &Context) -> Store<Secret> {
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().labels(TLS_SECRET_LABEL);
    let stream = watcher(ctx.watched::<Secret>(), config)
        .default_backoff()
        .reflect(writer);
    tokio::spawn(stream.for_each(|event| {
        if let Err(error) = event {
            tracing::debug!(%error, "the TLS Secrets' watch failed; it is retried");
        }
        ready(())
    }));
    store
}

/// What about an object needs a decision when it changes: a hash of it (kube's predicate), or
/// `None` for nothing.
pub type Relevant<K> = fn(&K) -> Option<u64>;

/// How many changes a cache keeps for a subscriber that is behind; one further behind is
/// given every cached object again instead (`Cache::changes`).
const CHANGES_KEPT: usize = 1024;

/// An in-memory, watch-fed copy of every `K` in the watched namespace(s), and the feed of
/// its changes. Clones share the store and the watch, which stops when the last clone is
/// dropped.
pub struct Cache<K: Resource + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store: Store<K>,
    changes: broadcast::Sender<Change<K>>,
    /// The task driving the watch; `None` when nothing does (tests).
    _watch: Option<Arc<Watch>>,
}

impl<K: Resource + 'static> Clone for Cache<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    fn clone(&self) -> Self {
        Cache {
            store: self.store.clone(),
            changes: self.changes.clone(),
            _watch: self._watch.clone(),
        }
    }
}

/// One change a cache took: the object as stored, or as last seen if it was deleted.
#[derive(Clone, Debug)]
struct Change<K> {
    object: Arc<K>,
    deleted: bool,
}

/// The watch task of a cache, aborted with the cache's last clone.
struct Watch(JoinHandle<()>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<K> Cache<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    /// Starts watching `kind` and returns once the first list is in.
    pub async fn start(ctx: &Context, kind: &'static str) -> Self {
        let (store, writer) = reflector::store();
        let (changes, _) = broadcast::channel(CHANGES_KEPT);
        let (sender, reader) = (changes.clone(), store.clone());
        let lists = ctx
            .metrics
            .cache_lists
            .get_or_create(&KindLabels { kind })
            .clone();
        // Trimmed before the store, so the store keeps the trimmed object; announced after it,
        // so a subscriber woken by a change finds it in the store.
        let stream = watcher(ctx.watched::<K>(), watcher::Config::default())
            .default_backoff()
            .modify(forget_status_writers)
            .reflect(writer);
        let task = tokio::spawn(stream.for_each(move |event| {
            match event {
                Ok(event) => {
                    if matches!(event, watcher::Event::InitDone) {
                        lists.inc();
                    }
                    for change in announced(&event, &reader) {
                        // No subscriber is no error: nothing waits for changes then.
                        let _ = sender.send(change);
                    }
                }
                Err(error) => tracing::debug!(%error, "a watch failed; it is retried"),
            }
            ready(())
        }));
        if store.wait_until_ready().await.is_err() {
            tracing::warn!("a watch cache stopped before its first list");
        }
        Cache {
            store,
            changes,
            _watch: Some(Arc::new(Watch(task))),
        }
    }
}

impl<K> Cache<K>
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    /// Every cached object.
    pub fn state(&self) -> Vec<Arc<K>> {
        self.store.state()
    }

    /// The cached object `name` in `namespace`, if the cache holds it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.store.get(&ObjectRef::new(name).within(namespace))
    }

    /// The store itself (for a kube `Controller` reading from this cache).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Every object the cache holds now, then every change it takes from now on, each once
    /// the store holds it (a deleted object as last seen). A subscriber that falls more than
    /// [`CHANGES_KEPT`] changes behind is given every cached object again instead of the
    /// changes it missed, so it never misses the newest state of an object.
    pub fn changes(&self) -> impl Stream<Item = Arc<K>> + Send + use<K> {
        self.feed().map(|change| change.object)
    }

    /// [`Cache::changes`], each with whether the object was deleted.
    fn feed(&self) -> impl Stream<Item = Change<K>> + Send + use<K> {
        let held = |store: &Store<K>| {
            let objects = store.state().into_iter();
            futures::stream::iter(objects.map(|object| Change {
                object,
                deleted: false,
            }))
        };
        // Subscribed before the snapshot: a change in between is seen twice, never lost.
        let receiver = self.changes.subscribe();
        let now = held(&self.store);
        let store = self.store.clone();
        let live = futures::stream::unfold(receiver, move |mut receiver| {
            let store = store.clone();
            async move {
                let next = match receiver.recv().await {
                    Ok(change) => futures::stream::iter(vec![change]).left_stream(),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "a cache subscriber fell behind; resending all");
                        held(&store).right_stream()
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                Some((next, receiver))
            }
        });
        now.chain(live.flatten())
    }

    /// [`Cache::changes`] that need a decision: an object first seen, deleted, or whose
    /// `relevant` key changed (kube's predicate filter, over this cache's feed).
    pub fn relevant_changes(
        &self,
        relevant: Relevant<K>,
    ) -> impl Stream<Item = ()> + Send + use<K> {
        let mut seen: HashMap<ObjectRef<K>, u64> = HashMap::new();
        self.feed().filter_map(move |Change { object, deleted }| {
            let reference = ObjectRef::from_obj(object.as_ref());
            let changed = if deleted {
                seen.remove(&reference);
                true
            } else {
                relevant(&object).is_some_and(|key| seen.insert(reference, key) != Some(key))
            };
            ready(changed.then_some(()))
        })
    }

    /// A cache that holds nothing and watches nothing (for tests of one reconciler).
    #[cfg(test)]
    pub fn empty() -> Self {
        Self::holding(Vec::new())
    }

    /// A cache that holds `objects` and watches nothing (for tests of one reconciler).
    #[cfg(test)]
    pub fn holding(objects: impl IntoIterator<Item = K>) -> Self {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for object in objects {
            writer.apply_watcher_event(&watcher::Event::InitApply(object));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        Cache {
            store,
            changes: broadcast::channel(CHANGES_KEPT).0,
            _watch: None,
        }
    }
}

/// The changes a watch event announces, once `store` has taken it in: an applied object as
/// stored; a deleted one as last seen; and after a list — the first, or a re-list when a watch
/// could not resume (its version expired, an error) — every object, because the store takes
/// a list in at its end, all at once. An object listed is not in the store before then, so
/// announcing each as it is listed announced nothing for an object created while the watch
/// was down, and an older copy for one changed meanwhile — and nothing woke a reconciler for
/// either again.
fn announced<K>(event: &watcher::Event<K>, store: &Store<K>) -> Vec<Change<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let stored = |object: Arc<K>| Change {
        object,
        deleted: false,
    };
    match event {
        watcher::Event::Apply(object) => store
            .get(&ObjectRef::from_obj(object))
            .map(stored)
            .into_iter()
            .collect(),
        watcher::Event::Delete(object) => vec![Change {
            object: Arc::new(object.clone()),
            deleted: true,
        }],
        watcher::Event::InitDone => store.state().into_iter().map(stored).collect(),
        watcher::Event::Init | watcher::Event::InitApply(_) => Vec::new(),
    }
}

/// Drops the `managedFields` entries of status writers from a cached object: on a Shard,
/// every agent reporting a replica and the executor each hold one, which would make up most
/// of the cache. Spec writers stay (a plan's decision clock reads them:
/// `metrics::decision_event`).
fn forget_status_writers<K: Resource>(object: &mut K) {
    if let Some(fields) = object.meta_mut().managed_fields.as_mut() {
        fields.retain(|entry| entry.subresource.as_deref() != Some("status"));
    }
}

#[cfg(test)]
mod tests {
    use kube::ResourceExt;
    use serde_json::json;

    use super::super::config::OperatorConfig;
    use super::super::fixtures::{self, Expect};
    use super::*;
    use crate::api::Shard;

    /// A Shard written by kubectl (spec), an agent and the executor (status).
    fn shard_with_three_writers() -> serde_json::Value {
        json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
            "metadata": {"name": "orders-0", "namespace": "db", "resourceVersion": "7",
                "managedFields": [
                {"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:spec": {}}},
                {"manager": "shardplane-agent/n1", "operation": "Apply", "subresource": "status",
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}},
                {"manager": "shardplane-operator/executor", "operation": "Apply",
                 "subresource": "status", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}},
            ]},
            "spec": {"table": "orders", "range": {}},
        })
    }

    fn managers(shard: &Shard) -> Vec<&str> {
        shard
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|f| f.manager.as_deref())
            .collect()
    }

    fn shard_at(name: &str, version: &str) -> Shard {
        serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
            "metadata": {"name": name, "namespace": "db", "resourceVersion": version},
            "spec": {"table": "orders", "range": {}},
        }))
        .unwrap()
    }

    /// Applies `event` to the store as the watch does, then says what it announces: each
    /// announced object's name and version as the store holds it.
    fn take_in(
        writer: &mut reflector::store::Writer<Shard>,
        store: &Store<Shard>,
        event: watcher::Event<Shard>,
    ) -> Vec<(String, String)> {
        writer.apply_watcher_event(&event);
        let mut seen: Vec<(String, String)> = announced(&event, store)
            .into_iter()
            .map(|c| {
                (
                    c.object.name_any(),
                    c.object.resource_version().unwrap_or_default(),
                )
            })
            .collect();
        seen.sort();
        seen
    }

    #[test]
    fn a_relist_announces_what_changed_while_the_watch_was_down_once_the_store_holds_it() {
        let (store, mut writer) = reflector::store();
        let pair = |name: &str, version: &str| (name.to_owned(), version.to_owned());
        take_in(&mut writer, &store, watcher::Event::Init);
        take_in(
            &mut writer,
            &store,
            watcher::Event::InitApply(shard_at("a", "1")),
        );
        assert_eq!(
            take_in(&mut writer, &store, watcher::Event::InitDone),
            [pair("a", "1")]
        );
        assert_eq!(
            take_in(
                &mut writer,
                &store,
                watcher::Event::Apply(shard_at("a", "2"))
            ),
            [pair("a", "2")]
        );
        // The watch could not resume: a re-list, while which `a` changed and `b` was made.
        take_in(&mut writer, &store, watcher::Event::Init);
        for listed in [shard_at("a", "5"), shard_at("b", "4")] {
            // Not in the store yet: announcing it now would announce `a` at 2 and no `b`.
            assert!(take_in(&mut writer, &store, watcher::Event::InitApply(listed)).is_empty());
        }
        assert_eq!(
            take_in(&mut writer, &store, watcher::Event::InitDone),
            [pair("a", "5"), pair("b", "4")]
        );
        let gone = shard_at("b", "6");
        let deleted = announced(&watcher::Event::Delete(gone.clone()), &store);
        assert!(deleted.len() == 1 && deleted[0].deleted);
    }

    #[test]
    fn a_cached_object_keeps_its_spec_writers_and_forgets_its_status_writers() {
        let mut shard: Shard = serde_json::from_value(shard_with_three_writers()).unwrap();
        forget_status_writers(&mut shard);
        assert_eq!(managers(&shard), ["kubectl"]);
    }

    /// The store itself holds the trimmed object, not only what the watch passes on (the
    /// trimming once ran after the store and saved nothing).
    #[tokio::test]
    async fn the_store_holds_no_status_writers() {
        let mut config = OperatorConfig::new("test-operator", "default");
        config.namespace = Some("db".into());
        let (ctx, server) = fixtures::context_with(config, true);
        // The first list; the watch that follows is answered 500 (and retried), unverified.
        let _scenario = server.expect(vec![
            Expect::new(axum::http::Method::GET, fixtures::collection::<Shard>("db")).answer(
                json!({
                    "apiVersion": "shardplane.io/v1alpha1", "kind": "ShardList",
                    "metadata": {"resourceVersion": "7"},
                    "items": [shard_with_three_writers()],
                }),
            ),
        ]);
        let cache = Cache::<Shard>::start(&ctx, "Shard").await;
        let cached = cache
            .get("db", "orders-0")
            .expect("the listed shard is cached");
        assert_eq!(managers(&cached), ["kubectl"]);
    }

    fn shard(name: &str, generation: i64) -> Shard {
        serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
            "metadata": {"name": name, "namespace": "db", "generation": generation},
            "spec": {"table": "orders", "range": {}},
        }))
        .unwrap()
    }

    /// A cache fed by hand: what the watch task does with each event.
    struct Fed {
        cache: Cache<Shard>,
        writer: reflector::store::Writer<Shard>,
    }

    impl Fed {
        fn holding(shards: &[Shard]) -> Self {
            let (store, mut writer) = reflector::store();
            writer.apply_watcher_event(&watcher::Event::Init);
            for shard in shards {
                writer.apply_watcher_event(&watcher::Event::InitApply(shard.clone()));
            }
            writer.apply_watcher_event(&watcher::Event::InitDone);
            let cache = Cache {
                store,
                changes: broadcast::channel(CHANGES_KEPT).0,
                _watch: None,
            };
            Fed { cache, writer }
        }

        fn apply(&mut self, shard: Shard) {
            self.writer
                .apply_watcher_event(&watcher::Event::Apply(shard.clone()));
            let object = self.cache.store.get(&ObjectRef::from_obj(&shard)).unwrap();
            let change = Change {
                object,
                deleted: false,
            };
            self.cache.changes.send(change).unwrap();
        }

        fn delete(&mut self, shard: Shard) {
            self.writer
                .apply_watcher_event(&watcher::Event::Delete(shard.clone()));
            let change = Change {
                object: Arc::new(shard),
                deleted: true,
            };
            self.cache.changes.send(change).unwrap();
        }
    }

    fn names(shards: &[Arc<Shard>]) -> Vec<String> {
        shards
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect()
    }

    /// A reconciler started after the cache filled (a new leadership term) is given every
    /// cached object first, then the changes, each after the store holds it.
    #[tokio::test]
    async fn a_late_subscriber_gets_what_is_held_then_each_change_once_stored() {
        let mut fed = Fed::holding(&[shard("orders-0", 1)]);
        let mut changes = Box::pin(fed.cache.changes());
        fed.apply(shard("orders-1", 1));
        fed.apply(shard("orders-0", 2));
        let seen = changes.by_ref().take(3).collect::<Vec<_>>().await;
        assert_eq!(names(&seen), ["orders-0", "orders-1", "orders-0"]);
        assert_eq!(seen[2].metadata.generation, Some(2));
        assert!(
            fed.cache.get("db", "orders-1").is_some(),
            "announced before stored"
        );
    }

    /// A subscriber further behind than the feed keeps is given every cached object again:
    /// it misses no object's newest state.
    #[tokio::test]
    async fn a_subscriber_that_fell_behind_is_given_everything_again() {
        let mut fed = Fed::holding(&[]);
        let mut changes = Box::pin(fed.cache.changes());
        for i in 0..CHANGES_KEPT + 10 {
            fed.apply(shard(&format!("orders-{i}"), 1));
        }
        fed.apply(shard("orders-0", 9));
        let seen = changes
            .by_ref()
            .take(CHANGES_KEPT + 11)
            .collect::<Vec<_>>()
            .await;
        let newest_of_0 = seen
            .iter()
            .rfind(|s| s.metadata.name.as_deref() == Some("orders-0"))
            .unwrap();
        assert_eq!(newest_of_0.metadata.generation, Some(9));
        let distinct: std::collections::BTreeSet<_> = names(&seen).into_iter().collect();
        assert_eq!(
            distinct.len(),
            CHANGES_KEPT + 10,
            "every object given again"
        );
    }

    /// Only a first sight, a change of the relevant key, or a deletion needs a decision.
    #[tokio::test]
    async fn relevant_changes_skip_what_does_not_matter() {
        let mut fed = Fed::holding(&[shard("orders-0", 1)]);
        let relevant: Relevant<Shard> = |s| s.metadata.generation.map(|g| g as u64);
        let mut changes = Box::pin(fed.cache.relevant_changes(relevant));
        // The held object, first seen.
        changes.next().await.unwrap();
        fed.apply(shard("orders-0", 1)); // same key: nothing
        fed.apply(shard("orders-0", 2)); // new key
        fed.delete(shard("orders-0", 2)); // gone
        changes.next().await.unwrap();
        changes.next().await.unwrap();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), changes.next())
                .await
                .is_err(),
            "an unchanged key woke a decision"
        );
    }
}
