//! Prometheus metrics of the operator: reconciles and their durations and errors per kind,
//! the reconcile queue's depth per kind, plan steps by action and result, failovers and
//! detection time, leadership, and how long a decision takes: from the event that needed it
//! to its Plan, and on to the first step's effect (with the plan's and its steps' own
//! instants, which the log's durations use too). Labels come from fixed vocabularies (kinds,
//! actions, purposes, error variants), never from object names.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::runtime::reflector::Store;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::heartbeats::Refusal;
use crate::api::plan::{PlanPurpose, PlanSpec, TargetKind};
use crate::decide::ClusterView;

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

/// Labels naming why a heartbeat was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `no_key`, `bad_signature`, `replayed` or `stale`.
    pub reason: &'static str,
}

/// Labels naming a plan's purpose.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PurposeLabels {
    /// The purpose ([`purpose_label`]).
    pub purpose: &'static str,
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
    /// Heartbeats refused, by reason (forged, replayed, or from a node without a key yet).
    pub heartbeats_refused: Family<RefusalLabels, Counter>,
    /// Silence of a node when it was declared dead, in seconds.
    pub detection_seconds: Histogram,
    /// 1 while this replica leads.
    pub leader: Gauge,
    /// Full lists of each kind's watch cache (its first, and any re-list after its watch
    /// expired): once per process while the API server keeps the watches alive, whatever the
    /// leadership terms.
    pub cache_lists: Family<KindLabels, Counter>,
    /// Plans awaiting approval or running.
    pub active_plans: Gauge,
    /// Objects per kind waiting for a reconcile (see [`ReconcileQueue`]); set at each scrape.
    pub queue_depth: Family<KindLabels, Gauge>,
    /// What `queue_depth` is computed from.
    pub queue: ReconcileQueue,
    /// From the event that needed a decision ([`decision_event`]) to its Plan created, by
    /// purpose.
    pub decision_seconds: Family<PurposeLabels, Histogram>,
    /// From a Plan created to its first step's effect written, by purpose.
    pub first_effect_seconds: Family<PurposeLabels, Histogram>,
    /// The plans this process creates or executes, by `namespace/name`.
    plan_clocks: Mutex<HashMap<String, PlanClock>>,
}

/// What this process remembers of one plan, to the nanosecond (the Plan's status keeps whole
/// seconds, as `metav1.Time` does): for the first-effect latency and the durations logged.
struct PlanClock {
    /// Its purpose and when it was created, until its first step's effect is written.
    created: Option<(&'static str, Instant)>,
    /// When it was approved and started running.
    started: Option<Instant>,
    /// The step running, and since when.
    step: Option<(i32, Instant)>,
    /// When the clock was last used.
    used: Instant,
}

/// How many plans [`Metrics`] keeps clocks for, at most (the least recently used goes first):
/// a plan deleted before it ends is never heard of again.
const MAX_PLAN_CLOCKS: usize = 10_000;

impl Metrics {
    /// Counts a refused heartbeat.
    pub fn heartbeat_refused(&self, refusal: Refusal) {
        let reason = match refusal {
            Refusal::NoKey => "no_key",
            Refusal::BadSignature => "bad_signature",
            Refusal::Replayed => "replayed",
            Refusal::Stale => "stale",
        };
        self.heartbeats_refused
            .get_or_create(&RefusalLabels { reason })
            .inc();
    }
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
        let heartbeats_refused = Family::<RefusalLabels, Counter>::default();
        let detection_seconds = Histogram::new(exponential_buckets(0.25, 1.5, 12));
        let leader = Gauge::default();
        let cache_lists = Family::<KindLabels, Counter>::default();
        let active_plans = Gauge::default();
        let queue_depth = Family::<KindLabels, Gauge>::default();
        // The event's time has a resolution of one second: finer buckets would be noise.
        let decision_seconds = Family::<PurposeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.25, 2.0, 11))
        });
        let first_effect_seconds = Family::<PurposeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 15))
        });
        registry.register(
            "decision_latency_seconds",
            "From the event that needed a decision to its Plan created, by plan purpose",
            decision_seconds.clone(),
        );
        registry.register(
            "first_effect_latency_seconds",
            "From a Plan created to its first step's effect written, by plan purpose",
            first_effect_seconds.clone(),
        );
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
            "heartbeats_refused",
            "Heartbeats refused, by reason: no key known for the node, a signature not the node's, a sequence number used before, a clock too far off",
            heartbeats_refused.clone(),
        );
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
            "watch_cache_lists",
            "Full lists of each kind's watch cache (the first, then re-lists after a watch expired)",
            cache_lists.clone(),
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
            heartbeats_refused,
            detection_seconds,
            leader,
            cache_lists,
            active_plans,
            queue_depth,
            queue: ReconcileQueue::default(),
            decision_seconds,
            first_effect_seconds,
            plan_clocks: Mutex::default(),
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

    /// Plan `key` (`namespace/name`, [`object_key`]) of `purpose` was created at `created`,
    /// for an event at `event` ([`decision_event`]; `None` when it cannot be told): observes
    /// the decision latency and starts the plan's first-effect clock.
    pub fn plan_created(
        &self,
        key: String,
        purpose: PlanPurpose,
        event: Option<Timestamp>,
        created: Timestamp,
    ) {
        let purpose = purpose_label(purpose);
        if let Some(event) = event {
            self.decision_seconds
                .get_or_create(&PurposeLabels { purpose })
                .observe(seconds_between(event, created));
        }
        self.clock(key, |clock| clock.created = Some((purpose, Instant::now())));
    }

    /// Plan `key` was approved and starts running.
    pub fn plan_started(&self, key: &str) {
        self.clock(key.to_owned(), |clock| clock.started = Some(Instant::now()));
    }

    /// Step `step` of plan `key` starts (this process applies its effect first).
    pub fn step_started(&self, key: &str, step: i32) {
        self.clock(key.to_owned(), |clock| {
            clock.step = Some((step, Instant::now()))
        });
    }

    /// A step of plan `key` wrote its effect. Only the first call after
    /// [`Metrics::plan_created`] observes (steps run in order, so that is the first step's);
    /// a plan another process created is not timed.
    pub fn effect_written(&self, key: &str) {
        let created = self
            .lock_clocks()
            .get_mut(key)
            .and_then(|clock| clock.created.take());
        if let Some((purpose, created)) = created {
            self.first_effect_seconds
                .get_or_create(&PurposeLabels { purpose })
                .observe(created.elapsed().as_secs_f64());
        }
    }

    /// Step `step` of plan `key` ended: how long it ran, if this process started it.
    pub fn step_ended(&self, key: &str, step: i32) -> Option<Duration> {
        let mut clocks = self.lock_clocks();
        let clock = clocks.get_mut(key)?;
        let (running, since) = clock.step?;
        (running == step).then(|| {
            clock.step = None;
            since.elapsed()
        })
    }

    /// Plan `key` ended (succeeded, failed or superseded), and is forgotten: how long it ran, if
    /// this process started it. One that ends before its first step's effect is not timed.
    pub fn plan_ended(&self, key: &str) -> Option<Duration> {
        let clock = self.lock_clocks().remove(key)?;
        clock.started.map(|since| since.elapsed())
    }

    /// Changes the clock of plan `key` (made if it has none).
    fn clock(&self, key: String, change: impl FnOnce(&mut PlanClock)) {
        let now = Instant::now();
        let mut clocks = self.lock_clocks();
        if clocks.len() >= MAX_PLAN_CLOCKS
            && !clocks.contains_key(&key)
            && let Some(oldest) = clocks
                .iter()
                .min_by_key(|(_, clock)| clock.used)
                .map(|(key, _)| key.clone())
        {
            clocks.remove(&oldest);
        }
        let clock = clocks.entry(key).or_insert(PlanClock {
            created: None,
            started: None,
            step: None,
            used: now,
        });
        clock.used = now;
        change(clock);
    }

    fn lock_clocks(&self) -> std::sync::MutexGuard<'_, HashMap<String, PlanClock>> {
        // A panic while holding the lock leaves a plain map behind: still usable.
        self.plan_clocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A plan purpose as a metric label.
pub fn purpose_label(purpose: PlanPurpose) -> &'static str {
    match purpose {
        PlanPurpose::Placement => "Placement",
        PlanPurpose::Rebalance => "Rebalance",
        PlanPurpose::Failover => "Failover",
        PlanPurpose::Drain => "Drain",
        PlanPurpose::Decommission => "Decommission",
        PlanPurpose::Reshard => "Reshard",
        PlanPurpose::NodeRollout => "NodeRollout",
        PlanPurpose::SchemaRollout => "SchemaRollout",
        PlanPurpose::DropTable => "DropTable",
    }
}

/// When the event that needed the cluster plan `spec` happened, as the API server recorded it
/// (to the second: `metav1.Time` has no finer resolution). For a failover, the dead node's
/// Offline write (`status.lastHeartbeatTime` is written with the phase). Otherwise the newest
/// change of the objects the plan acts on: the cluster, its target, every Shard and
/// DatabaseNode a step names and, for a Table target, the table and its shards; an object
/// changes when it is created, deleted, or its spec written ([`last_change`]). `None` when
/// none of them is in `view`.
pub fn decision_event(view: &ClusterView, spec: &PlanSpec) -> Option<Timestamp> {
    let target = spec.target.name.as_str();
    let named = |meta: &ObjectMeta, names: &[&str]| {
        meta.name
            .as_deref()
            .is_some_and(|name| names.contains(&name))
    };
    if spec.purpose == PlanPurpose::Failover {
        return view
            .nodes
            .iter()
            .find(|n| named(n.meta(), &[target]))
            .and_then(|n| n.status.as_ref()?.last_heartbeat_time.as_ref())
            .map(|t| t.0);
    }
    let nodes: Vec<&str> = spec
        .steps
        .iter()
        .filter_map(|s| s.node.as_deref())
        .chain((spec.target.kind == TargetKind::DatabaseNode).then_some(target))
        .collect();
    let table = (spec.target.kind == TargetKind::Table).then_some(target);
    let shards: Vec<&str> = spec
        .steps
        .iter()
        .filter_map(|s| s.shard.as_deref())
        .collect();
    let metas = std::iter::once(view.cluster.meta())
        .chain(
            view.nodes
                .iter()
                .map(|n| n.meta())
                .filter(|m| named(m, &nodes)),
        )
        .chain(
            view.tables
                .iter()
                .map(|t| t.meta())
                .filter(|m| table.is_some_and(|t| named(m, &[t]))),
        )
        .chain(
            view.shards
                .iter()
                .filter(|s| named(s.meta(), &shards) || Some(s.spec.table.as_str()) == table)
                .map(|s| s.meta()),
        );
    metas.filter_map(last_change).max()
}

/// When an object was last created, deleted or had its spec written, as its metadata records
/// it: writes to its status (a subresource) do not count — the operator and the agents write
/// those as a consequence of decisions, not as their cause.
pub fn last_change(meta: &ObjectMeta) -> Option<Timestamp> {
    let spec_writes = meta.managed_fields.iter().flatten().filter(|entry| {
        entry.subresource.as_deref().unwrap_or_default().is_empty()
            && entry
                .fields_v1
                .as_ref()
                .is_some_and(|fields| fields.0.get("f:spec").is_some())
    });
    spec_writes
        .filter_map(|entry| entry.time.as_ref())
        .chain(&meta.creation_timestamp)
        .chain(&meta.deletion_timestamp)
        .map(|t| t.0)
        .max()
}

/// Seconds from `event` to `then`; 0 if the clocks disagree so far that `event` comes later.
pub fn seconds_between(event: Timestamp, then: Timestamp) -> f64 {
    then.duration_since(event).as_secs_f64().max(0.0)
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
    use crate::api::{DatabaseCluster, DatabaseNode, Plan, Shard, Table};
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;
    use serde_json::{Value, json};

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

    /// Metadata `name` created at second `created` (of 2026-12-05T01:00:00Z) whose spec
    /// `manager`s last wrote at the seconds given, plus a status write at second 50.
    fn meta(name: &str, created: u32, spec_writes: &[(&str, u32)]) -> Value {
        let at = |second: u32| format!("2026-12-05T01:00:{second:02}Z");
        let mut fields: Vec<Value> = spec_writes
            .iter()
            .map(|(manager, second)| {
                json!({"manager": manager, "operation": "Update", "time": at(*second),
                       "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}})
            })
            .collect();
        fields.push(
            json!({"manager": "shardplane-agent-n1", "operation": "Apply",
                           "subresource": "status", "time": at(50),
                           "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}}),
        );
        json!({"name": name, "namespace": "ns", "creationTimestamp": at(created),
               "managedFields": fields})
    }

    fn second(second: u32) -> Timestamp {
        format!("2026-12-05T01:00:{second:02}Z").parse().unwrap()
    }

    /// Cluster `main` (created at 0); nodes n1 (created at 1, its spec written at 20 by
    /// kubectl) and n2 (created at 2, Offline since 30); table `orders` (3) with shards
    /// `orders-0` (4) and `orders-1` (10); the agents' status writes (at 50) everywhere.
    fn view() -> ClusterView {
        let cluster: DatabaseCluster = serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseCluster",
            "metadata": meta("main", 0, &[("kubectl-create", 0)]),
            "spec": {"replicationFactor": 3, "regions": [{"name": "r1", "zones": ["r1-a"]}]}
        }))
        .unwrap();
        let node = |name: &str, created: u32, writes: &[(&str, u32)], status: Value| {
            let node: DatabaseNode = serde_json::from_value(json!({
                "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseNode",
                "metadata": meta(name, created, writes),
                "spec": {"cluster": "main", "region": "r1", "zone": "r1-a", "address": "127.0.0.1",
                         "ports": {"first": 20000, "last": 20100},
                         "capacity": {"storageBytes": 1_000_000_000}},
                "status": status
            }))
            .unwrap();
            Arc::new(node)
        };
        let table: Table = serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Table",
            "metadata": meta("orders", 3, &[]),
            "spec": {"cluster": "main", "shardKey": "id",
                     "columns": [{"name": "id", "type": "bigint"}], "primaryKey": ["id"]}
        }))
        .unwrap();
        let shard = |name: &str, created: u32| {
            let shard: Shard = serde_json::from_value(json!({
                "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
                "metadata": meta(name, created, &[("kubectl-create", created)]),
                "spec": {"table": "orders", "range": {}}
            }))
            .unwrap();
            Arc::new(shard)
        };
        ClusterView::of(
            Arc::new(cluster),
            vec![
                node(
                    "n1",
                    1,
                    &[("kubectl-patch", 20)],
                    json!({"phase": "Online"}),
                ),
                node(
                    "n2",
                    2,
                    &[],
                    json!({"phase": "Offline", "lastHeartbeatTime": "2026-12-05T01:00:30Z"}),
                ),
            ],
            vec![Arc::new(table)],
            vec![shard("orders-0", 4), shard("orders-1", 10)],
            Vec::new(),
        )
    }

    /// A plan spec of `purpose` targeting `target`, one step per `(shard, node)`.
    fn spec(
        purpose: &str,
        target: (&str, &str),
        steps: &[(Option<&str>, Option<&str>)],
    ) -> PlanSpec {
        let steps: Vec<Value> = steps
            .iter()
            .enumerate()
            .map(|(id, (shard, node))| {
                json!({"id": id, "action": "AddReplica", "shard": shard, "node": node,
                       "detail": "{}"})
            })
            .collect();
        serde_json::from_value(json!({
            "cluster": "main", "target": {"kind": target.0, "name": target.1},
            "purpose": purpose, "cause": {"kind": "Policy"}, "risk": "Safe",
            "hash": "0".repeat(64), "summary": "", "steps": steps
        }))
        .unwrap()
    }

    #[test]
    fn the_event_is_the_newest_spec_change_of_what_the_plan_acts_on() {
        let view = view();
        let placed = [(Some("orders-0"), Some("n2"))];
        let cases = [
            // Placing orders-0 on n2: created at 4, n2 at 2; the status writes at 50 and
            // orders-1 (not acted on, created at 10) do not count.
            (
                "Placement",
                ("DatabaseCluster", "main"),
                &placed[..],
                Some(4),
            ),
            // A drain of n1, whose spec kubectl wrote at 20.
            ("Drain", ("DatabaseNode", "n1"), &placed[..], Some(20)),
            // A split of the table's shards: its newest shard, whatever the steps name.
            (
                "Reshard",
                ("Table", "orders"),
                &[(None, None)][..],
                Some(10),
            ),
            // A failover: the dead node's Offline write, not the newer changes of others.
            (
                "Failover",
                ("DatabaseNode", "n2"),
                &[(Some("orders-1"), Some("n1"))][..],
                Some(30),
            ),
            ("Failover", ("DatabaseNode", "n9"), &[][..], None),
        ];
        for (purpose, target, steps, event) in cases {
            let plan = spec(purpose, target, steps);
            assert_eq!(
                decision_event(&view, &plan),
                event.map(second),
                "{purpose} of {target:?}"
            );
        }
    }

    #[test]
    fn a_deletion_is_a_change_and_a_status_write_is_not() {
        let mut meta: ObjectMeta =
            serde_json::from_value(meta("n1", 1, &[("kubectl", 7)])).unwrap();
        assert_eq!(last_change(&meta), Some(second(7)));
        meta.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            second(40),
        ));
        assert_eq!(last_change(&meta), Some(second(40)));
        assert_eq!(last_change(&ObjectMeta::default()), None);
    }

    #[test]
    fn latencies_are_seconds_and_never_negative() {
        let event = second(4);
        let created: Timestamp = "2026-12-05T01:00:05.25Z".parse().unwrap();
        assert_eq!(seconds_between(event, created), 1.25);
        assert_eq!(seconds_between(created, event), 0.0);
    }

    #[test]
    fn the_first_effect_of_a_created_plan_is_timed_once_by_purpose() {
        let metrics = Metrics::default();
        let created: Timestamp = "2026-12-05T01:00:05.5Z".parse().unwrap();
        metrics.plan_created(
            "ns/main-placement-0".into(),
            PlanPurpose::Placement,
            Some(second(4)),
            created,
        );
        metrics.plan_created("ns/main-drain-0".into(), PlanPurpose::Drain, None, created);
        metrics.effect_written("ns/main-placement-0");
        metrics.effect_written("ns/main-placement-0");
        metrics.effect_written("ns/made-by-another-process");
        assert_eq!(metrics.plan_ended("ns/main-drain-0"), None);
        metrics.effect_written("ns/main-drain-0");
        let text = metrics.encode();
        let line = |prefix: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(str::trim)
                .map(str::to_owned)
        };
        let placement = "{purpose=\"Placement\"} ";
        assert_eq!(
            line(&format!(
                "shardplane_decision_latency_seconds_count{placement}"
            ))
            .as_deref(),
            Some("1"),
            "{text}"
        );
        assert_eq!(
            line(&format!(
                "shardplane_decision_latency_seconds_sum{placement}"
            ))
            .as_deref(),
            Some("1.5"),
            "{text}"
        );
        assert_eq!(
            line(&format!(
                "shardplane_first_effect_latency_seconds_count{placement}"
            ))
            .as_deref(),
            Some("1"),
            "{text}"
        );
        // The drain's decision had no known event, and it ended before any effect.
        assert!(!text.contains("purpose=\"Drain\""), "{text}");
    }

    #[test]
    fn a_step_and_a_plan_are_timed_only_by_the_process_that_started_them() {
        let metrics = Metrics::default();
        let key = "ns/main-placement-0";
        metrics.plan_started(key);
        metrics.step_started(key, 0);
        assert_eq!(metrics.step_ended(key, 1), None, "another step");
        assert!(metrics.step_ended(key, 0).is_some());
        assert_eq!(metrics.step_ended(key, 0), None, "ended once");
        // A step resumed from another process's start: no clock here.
        assert_eq!(metrics.step_ended(key, 2), None);
        assert!(metrics.plan_ended(key).is_some());
        assert_eq!(metrics.plan_ended(key), None, "forgotten");
        assert_eq!(metrics.step_ended("ns/never-seen", 0), None);
    }
}
