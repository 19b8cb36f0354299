//! Prometheus metrics of the operator: reconciles and their durations and errors per kind,
//! the reconcile queue's depth per kind, plan steps by action and result, failovers and
//! detection time, leadership. Labels come from fixed vocabularies (kinds, actions, error
//! variants), never from object names.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Resource;
use kube::runtime::reflector::Store;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// The kind reconciled.
    pub kind: &'static str,
    /// `ok` or the error variant.
    pub result: &'static str,
}

/// Labels of a plan step.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    /// The step's action.
    pub action: String,
    /// `succeeded` or `failed`.
    pub result: &'static str,
}

/// Labels naming a kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The kind.
    pub kind: &'static str,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    /// Reconciles by kind and result.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// Reconcile durations by kind.
    pub reconcile_seconds: Family<KindLabels, Histogram>,
    /// Plan steps finished, by action and result.
    pub plan_steps: Family<StepLabels, Counter>,
    /// Failover plans started.
    pub failovers: Counter,
    /// Silence of a node when it was declared dead, in seconds.
    pub detection_seconds: Histogram,
    /// 1 while this replica leads.
    pub leader: Gauge,
    /// Plans awaiting approval or running.
    pub active_plans: Gauge,
    /// Objects per kind waiting for a reconcile (see [`ReconcileQueue`]); set at each scrape.
    pub queue_depth: Family<KindLabels, Gauge>,
    /// What `queue_depth` is computed from.
    pub queue: ReconcileQueue,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("shardplane");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let reconcile_seconds = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        let plan_steps = Family::<StepLabels, Counter>::default();
        let failovers = Counter::default();
        let detection_seconds = Histogram::new(exponential_buckets(0.25, 1.5, 12));
        let leader = Gauge::default();
        let active_plans = Gauge::default();
        let queue_depth = Family::<KindLabels, Gauge>::default();
        registry.register(
            "reconcile_queue_depth",
            "Objects whose current version or due requeue a reconcile has not started on yet, by kind",
            queue_depth.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles by kind and result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration by kind",
            reconcile_seconds.clone(),
        );
        registry.register(
            "plan_steps",
            "Plan steps finished by action and result",
            plan_steps.clone(),
        );
        registry.register("failovers", "Failover plans started", failovers.clone());
        registry.register(
            "node_failure_detection_seconds",
            "Silence of a node when it was declared dead",
            detection_seconds.clone(),
        );
        registry.register(
            "leader",
            "1 while this operator replica leads",
            leader.clone(),
        );
        registry.register(
            "active_plans",
            "Plans awaiting approval or running",
            active_plans.clone(),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_seconds,
            plan_steps,
            failovers,
            detection_seconds,
            leader,
            active_plans,
            queue_depth,
            queue: ReconcileQueue::default(),
        }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        // Only the leader reconciles; a follower's (or a deposed leader's) caches are stale.
        let leading = self.leader.get() == 1;
        for (kind, depth) in self.queue.depth(Instant::now()) {
            self.queue_depth
                .get_or_create(&KindLabels { kind })
                .set(if leading { depth } else { 0 });
        }
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }

    /// Records one reconcile of `kind` that took `started.elapsed()`.
    pub fn reconciled(
        &self,
        kind: &'static str,
        result: &'static str,
        started: std::time::Instant,
    ) {
        self.reconciles
            .get_or_create(&ReconcileLabels { kind, result })
            .inc();
        self.reconcile_seconds
            .get_or_create(&KindLabels { kind })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The current objects of one kind: `(namespace/name, resourceVersion)`.
type Listing = Box<dyn Fn() -> Vec<(String, Option<String>)> + Send + Sync>;

/// The depth of each reconciler's queue, as closely as kube-runtime lets one see it: its
/// scheduler is private, so the depth is derived from what it acts on. An object is waiting
/// when the controller's own watch cache holds a version of it that no reconcile has started
/// on yet (every new version is a watch event that queues a reconcile), or when a requeue
/// (periodic or after an error) is due and its reconcile has not started. Not counted: the
/// cluster reconciler's 500 ms ticks, and reconciles of a Table queued by a change of one of
/// its Shards (a mapped watch whose events leave the Table's own version unchanged).
#[derive(Default)]
pub struct ReconcileQueue {
    kinds: Mutex<BTreeMap<&'static str, Tracked>>,
}

struct Tracked {
    objects: Listing,
    started: HashMap<String, Option<String>>,
    due: HashMap<String, Instant>,
}

/// The key of an object in [`ReconcileQueue`]: `namespace/name`.
pub fn object_key<K: Resource>(object: &K) -> String {
    let meta = object.meta();
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

impl ReconcileQueue {
    /// Tracks `kind` through the store of its controller (replacing an earlier one: a new
    /// leader term starts a new controller).
    pub fn track<K>(&self, kind: &'static str, store: Store<K>)
    where
        K: Resource + Clone + Send + Sync + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let objects: Listing = Box::new(move || {
            store
                .state()
                .iter()
                .map(|o: &Arc<K>| (object_key(o.as_ref()), o.meta().resource_version.clone()))
                .collect()
        });
        self.lock().insert(
            kind,
            Tracked {
                objects,
                started: HashMap::new(),
                due: HashMap::new(),
            },
        );
    }

    /// A reconcile of `key` started on `version`.
    pub fn started(&self, kind: &'static str, key: String, version: Option<String>) {
        if let Some(tracked) = self.lock().get_mut(kind) {
            tracked.due.remove(&key);
            tracked.started.insert(key, version);
        }
    }

    /// `key` is to be reconciled again `after` from now (`None`: only on a change).
    pub fn requeued(&self, kind: &'static str, key: String, after: Option<Duration>) {
        if let Some(tracked) = self.lock().get_mut(kind) {
            match after {
                Some(after) => {
                    tracked.due.insert(key, Instant::now() + after);
                }
                None => {
                    tracked.due.remove(&key);
                }
            }
        }
    }

    /// Objects waiting per tracked kind at `now`.
    pub fn depth(&self, now: Instant) -> Vec<(&'static str, i64)> {
        let mut kinds = self.lock();
        kinds
            .iter_mut()
            .map(|(kind, tracked)| {
                let objects = (tracked.objects)();
                // Forget what left the cache, so the maps stay as large as the cache.
                let present: std::collections::HashSet<&String> =
                    objects.iter().map(|(key, _)| key).collect();
                tracked.started.retain(|key, _| present.contains(key));
                tracked.due.retain(|key, _| present.contains(key));
                let waiting = objects
                    .iter()
                    .filter(|(key, version)| {
                        tracked.started.get(key) != Some(version)
                            || tracked.due.get(key).is_some_and(|due| *due <= now)
                    })
                    .count();
                (*kind, waiting as i64)
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Tracked>> {
        // A panic while holding the lock leaves plain maps behind: still usable.
        self.kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Plan;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    fn plan(name: &str, version: &str) -> Plan {
        let mut plan: Plan = serde_json::from_value(serde_json::json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Plan",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"cluster": "c", "target": {"kind": "DatabaseCluster", "name": "c"},
                     "purpose": "Placement", "cause": {"kind": "Policy"}, "risk": "Safe",
                     "hash": "0".repeat(64), "summary": "", "steps": []}
        }))
        .unwrap();
        plan.metadata.resource_version = Some(version.into());
        plan
    }

    #[test]
    fn new_versions_and_due_requeues_wait_until_a_reconcile_starts() {
        let (reader, mut writer) = store::<Plan>();
        let queue = ReconcileQueue::default();
        queue.track("Plan", reader);
        let now = Instant::now();
        writer.apply_watcher_event(&Event::Apply(plan("a", "1")));
        writer.apply_watcher_event(&Event::Apply(plan("b", "1")));
        assert_eq!(queue.depth(now), [("Plan", 2)]);
        queue.started("Plan", "ns/a".into(), Some("1".into()));
        queue.requeued("Plan", "ns/a".into(), Some(Duration::from_secs(60)));
        assert_eq!(queue.depth(now), [("Plan", 1)]);
        // A new version of a queues it again; its requeue comes due later still.
        writer.apply_watcher_event(&Event::Apply(plan("a", "2")));
        queue.started("Plan", "ns/b".into(), Some("1".into()));
        assert_eq!(queue.depth(now), [("Plan", 1)]);
        queue.started("Plan", "ns/a".into(), Some("2".into()));
        queue.requeued("Plan", "ns/a".into(), Some(Duration::from_secs(60)));
        assert_eq!(queue.depth(now), [("Plan", 0)]);
        assert_eq!(queue.depth(now + Duration::from_secs(61)), [("Plan", 1)]);
        // A deleted object waits for nothing.
        writer.apply_watcher_event(&Event::Delete(plan("a", "2")));
        assert_eq!(queue.depth(now + Duration::from_secs(61)), [("Plan", 0)]);
        // Untracked kinds are ignored.
        queue.started("Shard", "ns/x".into(), None);
        assert_eq!(queue.depth(now).len(), 1);
    }
}
