//! What every reconciler shares: the client, the configuration, the leadership guard, the
//! liveness table, metrics and the event recorder.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client, Resource};

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
    /// Plans this process created that the Plan cache has not shown yet.
    pub plans_created: Awaited,
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
            plans_created: Awaited::default(),
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

/// How the per-Table reconcilers (a table's status and routing, its schema, its schema
/// rollouts) run: at most [`PER_TABLE_RECONCILES`] reconciles each at once, so that 10,000
/// Tables created together queue here instead of reaching the API server as 10,000
/// concurrent requests, ahead of the cluster's decisions and the leader Lease's renewal.
/// (Never two reconciles of one object at once either way.)
pub fn per_table_controller() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(PER_TABLE_RECONCILES)
}

/// How many reconciles each per-Table reconciler runs at once.
pub const PER_TABLE_RECONCILES: u16 = 16;

/// Objects this process created that its watch cache has not shown yet (controller-runtime's
/// "expectations"): a decision made on a cache without them would decide again what they
/// already decide — two placements of one shard, or a placement beside a plan it should
/// wait for. An object not seen within [`AWAITED_AT_MOST`] (deleted at once, say) is awaited
/// no more.
#[derive(Default)]
pub struct Awaited(std::sync::Mutex<Vec<(String, String, Instant)>>);

/// How long a created object is awaited in the cache at most.
pub const AWAITED_AT_MOST: Duration = Duration::from_secs(10);

impl Awaited {
    /// `namespace/name` was created now.
    pub fn created(&self, namespace: &str, name: &str) {
        let mut awaited = self.0.lock().unwrap_or_else(|e| e.into_inner());
        awaited.push((namespace.to_owned(), name.to_owned(), Instant::now()));
    }

    /// Whether every awaited object is seen (`seen(namespace, name)`): those seen, and those
    /// awaited longer than [`AWAITED_AT_MOST`], are awaited no more.
    pub fn all_seen(&self, seen: impl Fn(&str, &str) -> bool) -> bool {
        let mut awaited = self.0.lock().unwrap_or_else(|e| e.into_inner());
        awaited.retain(|(namespace, name, since)| {
            !seen(namespace, name) && since.elapsed() < AWAITED_AT_MOST
        });
        awaited.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_object_is_awaited_until_seen() {
        let awaited = Awaited::default();
        assert!(awaited.all_seen(|_, _| false), "nothing awaited");
        awaited.created("db", "main-placement-1");
        awaited.created("db", "main-placement-2");
        assert!(!awaited.all_seen(|_, name| name == "main-placement-1"));
        // The one seen is awaited no more, even if the cache drops it later.
        assert!(!awaited.all_seen(|_, _| false));
        assert!(awaited.all_seen(|_, name| name == "main-placement-2"));
        assert!(awaited.all_seen(|_, _| false));
    }
}
