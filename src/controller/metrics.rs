//! Prometheus metrics of the operator: reconciles and their durations and errors per kind,
//! plan steps by action and result, failovers and detection time, leadership. Labels come
//! from fixed vocabularies (kinds, actions, error variants), never from object names.

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
        }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
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
