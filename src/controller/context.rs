//! What every reconciler shares: the client, the configuration, the leadership guard, the
//! liveness table, metrics and the event recorder.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::PredicateConfig;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::backoff::Backoff;
use super::config::OperatorConfig;
use super::error::{ApiError, Doing};
use super::fence::LeaderGuard;
use super::heartbeats::Liveness;
use super::metrics::{Metrics, object_key};

/// Shared by every reconciler of one operator process.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The configuration.
    pub config: OperatorConfig,
    /// Whether, and at which epoch, this replica may act.
    pub leader: LeaderGuard,
    /// When each node was last heard from.
    pub liveness: Liveness,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Publishes Kubernetes Events: the human-readable audit trail of every decision.
    pub recorder: Recorder,
    /// Retry delays of objects whose reconcile failed.
    pub backoff: Backoff,
}

impl Context {
    /// A context for one operator process.
    pub fn new(client: Client, config: OperatorConfig) -> Self {
        let reporter = Reporter {
            controller: "shardplane-operator".into(),
            instance: Some(config.identity.clone()),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            leader: LeaderGuard::default(),
            liveness: Liveness::default(),
            metrics: Metrics::default(),
            backoff: Backoff::default(),
            client,
            config,
        }
    }

    /// An `Api` for `K` in the watched namespace, or in all namespaces.
    pub fn watched<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match &self.config.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    /// Publishes a Normal or Warning Event about `object`; failures are logged, never fatal.
    pub async fn event<K>(&self, object: &K, warning: bool, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        use kube::runtime::events::{Event, EventType};
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: reason.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(%error, reason, "cannot publish event");
        }
    }
    /// What a reconciler's error policy does: log, count the failure by kind and error
    /// variant, and retry `object` after its backoff.
    pub fn retry<K: Resource>(
        &self,
        kind: &'static str,
        object: &K,
        result: &'static str,
        error: &dyn std::fmt::Display,
    ) -> kube::runtime::controller::Action {
        let key = backoff_key(kind, object);
        tracing::warn!(%error, object = %key, "reconcile failed");
        self.metrics
            .reconciles
            .get_or_create(&super::metrics::ReconcileLabels { kind, result })
            .inc();
        let delay = self.backoff.failed(&key);
        self.metrics
            .queue
            .requeued(kind, object_key(object), Some(delay));
        kube::runtime::controller::Action::requeue(delay)
    }

    /// Writes `finalizers` on `object`, conditional on the version read: finalizers are a
    /// list others may edit too.
    pub async fn set_finalizers<K, E>(&self, object: &K, finalizers: Vec<String>) -> Result<(), E>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        E: From<super::fence::NotLeader> + From<ApiError>,
    {
        self.leader.ensure()?;
        let meta = object.meta();
        let api: Api<K> = Api::namespaced(
            self.client.clone(),
            meta.namespace.as_deref().unwrap_or_default(),
        );
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": meta.resource_version, "finalizers": finalizers}
        });
        let name = meta.name.as_deref().unwrap_or_default();
        api.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch),
        )
        .await
        .doing(|| {
            format!(
                "set the finalizers of {} {}/{name}",
                K::kind(&()),
                meta.namespace.as_deref().unwrap_or_default()
            )
        })?;
        Ok(())
    }

    /// Notes that a reconcile of `object` starts, for the queue depth.
    pub fn reconcile_started<K: Resource>(&self, kind: &'static str, object: &K) {
        self.metrics.queue.started(
            kind,
            object_key(object),
            object.meta().resource_version.clone(),
        );
    }

    /// What a reconcile returns when `object` is to be looked at again `after` from now
    /// (`None`: only when it changes), noted for the queue depth.
    pub fn next<K: Resource>(
        &self,
        kind: &'static str,
        object: &K,
        after: Option<Duration>,
    ) -> kube::runtime::controller::Action {
        self.metrics.queue.requeued(kind, object_key(object), after);
        match after {
            Some(after) => kube::runtime::controller::Action::requeue(after),
            None => kube::runtime::controller::Action::await_change(),
        }
    }

    /// Forgets `object`'s failures after a successful reconcile.
    pub fn reconciled<K: Resource>(&self, kind: &'static str, object: &K) {
        self.backoff.succeeded(&backoff_key(kind, object));
    }
}

fn backoff_key<K: Resource>(kind: &str, object: &K) -> String {
    let meta = object.meta();
    format!(
        "{kind}/{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

/// Milliseconds since the Unix epoch: the clock the planner is given (it reads none itself).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// What about an object needs a decision when it changes: a hash of it (kube's predicate), or
/// `None` for nothing.
pub type Relevant<K> = fn(&K) -> Option<u64>;

/// An in-memory, watch-fed copy of every `K` in the watched namespace(s); the watch stops
/// when the cache is dropped (reconcilers are aborted when leadership is lost).
pub struct Cache<K: kube::Resource + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store: Store<K>,
    /// The task driving the watch; `None` when nothing does (tests).
    task: Option<JoinHandle<()>>,
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
    /// Starts watching and returns once the first list is in.
    pub async fn start(ctx: &Context) -> Self {
        Self::watch(ctx, None).await
    }

    /// Like [`Cache::start`], and each change of an object's `relevant` key (kube's
    /// predicate: a hash of what matters about it) and each new object wake `changed`.
    pub async fn notifying(ctx: &Context, changed: Arc<Notify>, relevant: Relevant<K>) -> Self {
        Self::watch(ctx, Some((changed, relevant))).await
    }

    async fn watch(ctx: &Context, notify: Option<(Arc<Notify>, Relevant<K>)>) -> Self {
        let (store, writer) = reflector::store();
        // Trimmed before the store, so the store keeps the trimmed object.
        let stream = watcher(ctx.watched::<K>(), watcher::Config::default())
            .default_backoff()
            .modify(forget_status_writers)
            .reflect(writer)
            .touched_objects();
        let task = match notify {
            None => tokio::spawn(stream.for_each(|_| async {})),
            Some((changed, relevant)) => tokio::spawn(
                stream
                    .predicate_filter(relevant, PredicateConfig::default())
                    .for_each(move |_| {
                        changed.notify_one();
                        async {}
                    }),
            ),
        };
        if store.wait_until_ready().await.is_err() {
            tracing::warn!("a watch cache stopped before its first list");
        }
        Cache {
            store,
            task: Some(task),
        }
    }

    /// Every cached object.
    pub fn state(&self) -> Vec<std::sync::Arc<K>> {
        self.store.state()
    }

    /// The cached object `name` in `namespace`, if the cache holds it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.store
            .get(&reflector::ObjectRef::new(name).within(namespace))
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
        Cache { store, task: None }
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

impl<K: kube::Resource + 'static> Drop for Cache<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

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
        let cache = Cache::<Shard>::start(&ctx).await;
        let cached = cache
            .get("db", "orders-0")
            .expect("the listed shard is cached");
        assert_eq!(managers(&cached), ["kubectl"]);
    }
}
