//! The DatabaseCluster reconciler. One reconcile reads top to bottom: observe the cluster's
//! nodes, tables, shards and plans (watch caches); decide (`crate::decide::cluster`: the
//! planner's next plan by priority, what to supersede or prune, and — when an active plan
//! holds that decision back — what can run beside it on other shards); act (`act.rs`: persist
//! the decisions as `Plan`s owned by the cluster and node finalizers); report the cluster's
//! state (`status.rs`) and hand each node's counts to their writer (`counts.rs`). It never
//! executes a step — the plan executor does.

mod act;
mod counts;
mod status;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};

use crate::api::plan::PlanPurpose;
use crate::api::{DatabaseCluster, DatabaseNode, Plan, Shard, Table};
use crate::decide::cluster::MAX_DECISIONS_BESIDE;
use crate::decide::{self, ClusterView};
use crate::plan::{PlanError, Topology};

use super::caches::Caches;
use super::context::{Context, now_ms};
use super::error::ApiError;
use super::fence::NotLeader;
use counts::Counts;

/// Why a cluster reconcile failed; retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// This replica must not act.
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    /// The API server refused or failed a request.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The observed state is inconsistent.
    #[error("cannot plan cluster {cluster}: {source}")]
    Plan {
        /// The cluster.
        cluster: String,
        /// Why.
        source: PlanError,
    },
    /// A plan could not be serialized.
    #[error("cannot encode a plan of cluster {cluster}: {source}")]
    Encode {
        /// The cluster.
        cluster: String,
        /// Why.
        source: serde_json::Error,
    },
}

impl ClusterError {
    fn label(&self) -> &'static str {
        match self {
            ClusterError::NotLeader(_) => "not_leader",
            ClusterError::Api(_) => "api",
            ClusterError::Plan { .. } => "plan",
            ClusterError::Encode { .. } => "encode",
        }
    }
}

/// A change that needs a decision at once: a node's phase or desired state, a shard or table
/// declared or changed, its routing map switched, a plan's phase (each as a key of what
/// matters, kube's predicate).
fn decisive_changes(caches: &Caches) -> impl futures::Stream<Item = ()> + Send + use<> {
    let nodes = caches.nodes.relevant_changes(|n: &DatabaseNode| {
        let phase = n.status.as_ref().and_then(|s| s.phase);
        Some(key((
            n.metadata.generation,
            n.metadata.deletion_timestamp.is_some(),
            format!("{phase:?}"),
        )))
    });
    let tables = caches.tables.relevant_changes(|t: &Table| {
        let routing = t
            .status
            .as_ref()
            .and_then(|s| s.routing.as_ref())
            .map(|r| r.version);
        Some(key((
            t.metadata.generation,
            t.metadata.deletion_timestamp.is_some(),
            routing,
        )))
    });
    let shards = caches.shards.relevant_changes(|s: &Shard| {
        let phase = s.status.as_ref().and_then(|s| s.phase);
        Some(key((
            s.metadata.generation,
            s.metadata.deletion_timestamp.is_some(),
            format!("{phase:?}"),
        )))
    });
    let plans = caches.plans.relevant_changes(|p: &Plan| {
        let phase = p.status.as_ref().and_then(|s| s.phase);
        Some(key(format!("{phase:?}")))
    });
    futures::stream::select_all([nodes.boxed(), tables.boxed(), shards.boxed(), plans.boxed()])
}

/// `cluster`'s objects as the caches hold them now.
fn view(caches: &Caches, cluster: Arc<DatabaseCluster>) -> ClusterView {
    ClusterView::of(
        cluster,
        caches.nodes.state(),
        caches.tables.state(),
        caches.shards.state(),
        caches.plans.state(),
    )
}

struct Reconciler {
    ctx: Arc<Context>,
    caches: Caches,
    counts: Counts,
}

/// Runs the reconciler while this replica leads (it is aborted when leadership is lost).
pub async fn run(ctx: Arc<Context>, caches: Caches) {
    let changes = decisive_changes(&caches);
    let clusters = caches.clusters.clone();
    let reconciler = Arc::new(Reconciler {
        ctx: ctx.clone(),
        caches,
        counts: Counts::default(),
    });
    // Nodes, shards and plans change the decision as much as the cluster does: look again
    // at once when one changes in a way that needs a decision (the controller runs one
    // reconcile of a cluster at a time, so changes during one are looked at together, right
    // after it), and every half second for the rest (reported progress, sizes); a reconcile
    // that finds nothing new writes nothing. Changes that arrive together (a burst of
    // creations) are one look.
    let ticks = futures::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Some(((), ()))
    });
    let changes = changes.ready_chunks(CHANGES_PER_LOOK).map(|_| ());
    let ticks = futures::stream::select(ticks, changes);
    let controller = Controller::for_shared_stream(clusters.changes(), clusters.store());
    ctx.metrics.queue.track("DatabaseCluster", clusters.store());
    let looks = controller
        .reconcile_all_on(ticks)
        .run(reconcile, error_policy, reconciler.clone())
        .for_each(|_| async {});
    futures::join!(looks, reconciler.counts.write_forever(&ctx));
}

/// How soon a look put off for a created plan the cache does not hold yet is made again.
const AWAIT_CREATED_PLANS: Duration = Duration::from_millis(50);

/// How many decisive changes that arrived together one look takes in.
const CHANGES_PER_LOOK: usize = 1024;

/// A hash of `value`: an object's key for [`Cache::relevant_changes`].
fn key(value: impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

fn error_policy(cluster: Arc<DatabaseCluster>, error: &ClusterError, r: Arc<Reconciler>) -> Action {
    r.ctx
        .retry("DatabaseCluster", cluster.as_ref(), error.label(), error)
}

async fn reconcile(
    cluster: Arc<DatabaseCluster>,
    r: Arc<Reconciler>,
) -> Result<Action, ClusterError> {
    let started = Instant::now();
    let ctx = &r.ctx;
    ctx.reconcile_started("DatabaseCluster", cluster.as_ref());
    ctx.leader.ensure()?;
    // Observe.
    // Decided only on a Plan cache that holds every plan this process created: the look
    // right after a creation may come before the cache has it.
    let plans = &r.caches.plans;
    if !ctx
        .plans_created
        .all_seen(|namespace, name| plans.get(namespace, name).is_some())
    {
        return Ok(ctx.next(
            "DatabaseCluster",
            cluster.as_ref(),
            Some(AWAIT_CREATED_PLANS),
        ));
    }
    let view = view(&r.caches, cluster.clone());
    let active = converge(ctx, &view, &r.counts, now_ms()).await?;
    ctx.metrics.active_plans.set(active as i64);
    ctx.metrics.reconciled("DatabaseCluster", "ok", started);
    ctx.reconciled("DatabaseCluster", cluster.as_ref());
    Ok(ctx.next(
        "DatabaseCluster",
        cluster.as_ref(),
        Some(Duration::from_secs(30)),
    ))
}

/// Decides, acts and reports on one observed view of the cluster at `now_ms`, offering each
/// node's counts to `counts`; returns how many plans hold the cluster's next decision back.
async fn converge(
    ctx: &Context,
    view: &ClusterView,
    counts: &Counts,
    now_ms: u64,
) -> Result<usize, ClusterError> {
    let started = Instant::now();
    let (topology, invalid) = view.topology();
    let observed = started.elapsed();

    // Decide.
    let returned = decide::cluster::returned_failovers(view, &topology);
    let active = decide::cluster::active_plans(view, &topology).len();

    // Act.
    act::guard_node_deletion(ctx, view, &topology).await?;
    for (plan, message) in returned {
        act::supersede(ctx, plan, &message).await?;
    }
    let blocked = decide_and_persist(ctx, view, &topology, now_ms).await?;
    let decided = started.elapsed();

    // Status.
    counts.offer(decide::cluster::node_counts(view, &topology));
    status::write(ctx, view, &topology, &invalid, &blocked).await?;
    act::prune_history(ctx, view).await?;
    tracing::debug!(
        cluster = view.name(),
        shards = topology.shards.len(),
        observed_ms = observed.as_millis() as u64,
        decided_ms = decided.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "cluster looked at"
    );
    Ok(active)
}

/// Decides the cluster's next plan and persists it; when an active plan holds it back, what
/// can run beside it on other shards. A failover just created is followed at once by the
/// next dead node's (a lost region's nodes are all decided in one look, up to
/// [`MAX_DECISIONS_BESIDE`]). Returns what the last decision could not plan.
async fn decide_and_persist(
    ctx: &Context,
    view: &ClusterView,
    topology: &Topology,
    now_ms: u64,
) -> Result<Vec<String>, ClusterError> {
    let mut created: Vec<Arc<Plan>> = Vec::new();
    loop {
        let view = view.with_plans(&created);
        let active = decide::cluster::active_plans(&view, topology);
        let decision = decide::cluster::decide(&view, topology, now_ms).map_err(|source| {
            ClusterError::Plan {
                cluster: view.name().to_owned(),
                source,
            }
        })?;
        let blocked = decision
            .iter()
            .flat_map(|d| &d.plan.blocked)
            .map(|b| format!("{}: {}", b.subject, b.reason))
            .collect();
        let Some(decision) = decision.filter(|d| !d.plan.operations.is_empty()) else {
            return Ok(blocked);
        };
        match act::persist(ctx, &view, topology, decision, &active).await? {
            Some(plan)
                if plan.spec.purpose == PlanPurpose::Failover
                    && created.len() < MAX_DECISIONS_BESIDE =>
            {
                created.push(Arc::new(plan));
            }
            Some(_) => return Ok(blocked),
            None => {
                // What waits behind an active plan may still run beside it, on other shards.
                act::persist_beside(ctx, &view, topology, &active).await?;
                return Ok(blocked);
            }
        }
    }
}

#[cfg(test)]
mod tests;
