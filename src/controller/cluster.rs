//! The DatabaseCluster reconciler: observe the cluster's nodes, tables, shards and plans;
//! ask the planner what to do, in priority order (failover of dead nodes, placement of
//! under-replicated shards, drains, rebalancing); persist the decision as a `Plan` owned by
//! the cluster; and report the cluster's state in its status. It never executes a step —
//! the plan executor does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::api::database_cluster::DatabaseClusterStatus;
use crate::api::database_node::NodeDesiredState;
use crate::api::plan::{CauseKind, PlanCause, PlanPhase, PlanPurpose, PlanTarget, TargetKind};
use crate::api::{DatabaseCluster, DatabaseNode, NodePhase, Plan};
use crate::plan::{
    self, ConcurrencyLimits, DrainGoal, FailoverPolicy, PlanError, RebalancePolicy, Topology,
};
use crate::protocol::{CLUSTER_LABEL, NODE_FINALIZER, PURPOSE_LABEL, SOURCE_COMMIT_ANNOTATION};

use super::conditions::{self, Observation};
use super::context::{Cache, Context, now_ms};
use super::leader::NotLeader;
use super::observe::{Caches, ClusterView, desired_state};
use super::plan_wire::{self, PlanContext};

/// How many finished plans of a cluster are kept as its history.
pub const PLAN_HISTORY: usize = 20;

/// Why a cluster reconcile failed; retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// This replica must not act.
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    /// The API server refused or failed a request.
    #[error("API request failed: {0}")]
    Api(#[from] kube::Error),
    /// The observed state is inconsistent.
    #[error("cannot plan: {0}")]
    Plan(#[from] PlanError),
    /// A plan could not be serialized.
    #[error("cannot encode a plan: {0}")]
    Encode(#[from] serde_json::Error),
}

impl ClusterError {
    fn label(&self) -> &'static str {
        match self {
            ClusterError::NotLeader(_) => "not_leader",
            ClusterError::Api(_) => "api",
            ClusterError::Plan(_) => "plan",
            ClusterError::Encode(_) => "encode",
        }
    }
}

struct Reconciler {
    ctx: Arc<Context>,
    caches: Caches,
}

/// Runs the reconciler while this replica leads (it is aborted when leadership is lost).
pub async fn run(ctx: Arc<Context>) {
    let caches = Caches {
        nodes: Cache::start(&ctx).await,
        tables: Cache::start(&ctx).await,
        shards: Cache::start(&ctx).await,
        plans: Cache::start(&ctx).await,
    };
    let reconciler = Arc::new(Reconciler {
        ctx: ctx.clone(),
        caches,
    });
    // Nodes, shards and plans change the decision as much as the cluster does: look again
    // every half second; a reconcile that finds nothing new writes nothing.
    let ticks = futures::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Some(((), ()))
    });
    let controller = Controller::new(ctx.watched::<DatabaseCluster>(), watcher::Config::default());
    ctx.metrics
        .queue
        .track("DatabaseCluster", controller.store());
    controller
        .reconcile_all_on(ticks)
        .run(reconcile, error_policy, reconciler)
        .for_each(|_| async {})
        .await;
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
    let view = ClusterView::gather(cluster.clone(), &r.caches);
    let (topology, invalid) = view.topology();
    update_node_counts(ctx, &view, &topology).await?;
    guard_node_deletion(ctx, &view, &topology).await?;

    for plan in view
        .plans
        .iter()
        .filter(|p| is_active(p) && p.spec.purpose == PlanPurpose::Failover)
    {
        let target = topology
            .nodes
            .iter()
            .find(|n| n.name == plan.spec.target.name);
        if target.is_some_and(|n| n.phase != plan::NodePhase::Offline) {
            let message = format!(
                "node {} is back: its replicas rejoin instead of being replaced",
                plan.spec.target.name
            );
            supersede(ctx, plan, &message).await?;
        }
    }
    let active: Vec<&Arc<Plan>> = view
        .plans
        .iter()
        .filter(|p| {
            // A table's drop waits for its own approval and touches no placement: it does
            // not hold the cluster's other plans back, nor is it superseded by them.
            is_active(p)
                && p.spec.purpose != PlanPurpose::DropTable
                && !(p.spec.purpose == PlanPurpose::Failover && returned(p, &topology))
        })
        .collect();
    let decision = decide(&view, &topology, now_ms())?;
    let mut blocked = Vec::new();
    if let Some(decision) = decision {
        blocked = decision
            .plan
            .blocked
            .iter()
            .map(|b| format!("{}: {}", b.subject, b.reason))
            .collect();
        if !decision.plan.operations.is_empty() {
            persist(ctx, &cluster, decision, &active).await?;
        }
    }
    write_status(ctx, &view, &topology, &invalid, &blocked).await?;
    prune_history(ctx, &view).await?;
    ctx.metrics.active_plans.set(active.len() as i64);
    ctx.metrics.reconciled("DatabaseCluster", "ok", started);
    ctx.reconciled("DatabaseCluster", cluster.as_ref());
    Ok(ctx.next(
        "DatabaseCluster",
        cluster.as_ref(),
        Some(Duration::from_secs(30)),
    ))
}

/// A plan the planner made, with what the operator adds to it.
pub struct Decision {
    /// The planner's plan.
    pub plan: plan::Plan,
    /// Target, cause, summary and facts.
    pub context: PlanContext,
}

/// The planner's decision for this cluster now, by priority: failover, placement, drain,
/// rebalance. `None` when nothing needs doing. Pure: `shardplane plan` calls it on a pull
/// request's desired state to show (and hash) the very plan the operator will make.
/// `now_ms` only reaches failover plans (the re-replication delay), which never wait for
/// approval.
pub fn decide(
    view: &ClusterView,
    topology: &Topology,
    now_ms: u64,
) -> Result<Option<Decision>, PlanError> {
    let spec = &view.cluster.spec;
    let cluster = view.cluster.name_any();
    let limits = limits(view);
    let target = |kind, name: &str| PlanTarget {
        kind,
        name: name.to_string(),
    };
    let cause = |kind, detail: String| PlanCause {
        kind,
        commit: None,
        user: None,
        detail,
    };

    // Dead nodes that still lead shards first: their shards cannot take writes.
    let mut dead: Vec<&plan::Node> = topology
        .nodes
        .iter()
        .filter(|n| n.phase == plan::NodePhase::Offline)
        .filter(|n| topology.shards.iter().any(|s| s.has_replica_on(&n.name)))
        .collect();
    dead.sort_by_key(|n| {
        !topology
            .shards
            .iter()
            .any(|s| s.primary_node() == Some(n.name.as_str()))
    });
    if let Some(node) = dead.first() {
        let delay_s = spec
            .failure_detection
            .clone()
            .unwrap_or_default()
            .replace_replicas_after_seconds;
        let policy = FailoverPolicy {
            max_lag_bytes: 0,
            re_replication_delay_ms: delay_s.max(0) as u64 * 1000,
            limits,
        };
        let failover = plan::plan_failover(topology, &node.name, now_ms, &policy)?;
        let facts = failover
            .decisions
            .iter()
            .take(60)
            .map(|d| {
                let chosen = d
                    .new_primary
                    .clone()
                    .unwrap_or_else(|| "nobody (blocked)".into());
                let others: Vec<String> = d
                    .candidates
                    .iter()
                    .filter_map(|c| {
                        c.rejected
                            .as_ref()
                            .map(|why| format!("{} ({why:?})", c.node))
                    })
                    .collect();
                (
                    format!("failover.{}", d.shard),
                    format!("promote {chosen}; not chosen: {}", others.join(", ")),
                )
            })
            .collect();
        return Ok(Some(Decision {
            context: PlanContext {
                cluster: cluster.clone(),
                target: target(TargetKind::DatabaseNode, &node.name),
                cause: cause(
                    CauseKind::Failure,
                    format!("node {} stopped heartbeating", node.name),
                ),
                summary: format!(
                    "fail over {} shard(s) led by dead node {}, then re-replicate",
                    failover.decisions.len(),
                    node.name
                ),
                facts,
            },
            plan: failover.plan,
        }));
    }

    // A declared split or merge: its targets are placed by its own plan.
    if let Some(decision) = super::reshard::decide(view, topology)? {
        return Ok(Some(decision));
    }

    // A placement that is only blocked (no step possible) must not hide a drain or a
    // rebalance that can proceed; its blockers still reach the cluster's conditions.
    let placement = plan::plan_placement(topology, limits)?;
    if !placement.operations.is_empty() {
        let shards = placement.operations.len();
        return Ok(Some(Decision {
            context: PlanContext {
                cluster: cluster.clone(),
                target: target(TargetKind::DatabaseCluster, &cluster),
                cause: cause(
                    CauseKind::Policy,
                    "shards below the replication factor".into(),
                ),
                summary: format!("place replicas of {shards} under-replicated shard(s)"),
                facts: BTreeMap::new(),
            },
            plan: placement,
        }));
    }

    for node in &view.nodes {
        let goal = match desired_state(node) {
            Some(NodeDesiredState::Drained) => DrainGoal::Drain,
            Some(NodeDesiredState::Decommissioned) => DrainGoal::Decommission,
            _ => continue,
        };
        let name = node.name_any();
        let decommissioned =
            node.status.as_ref().and_then(|s| s.phase) == Some(NodePhase::Decommissioned);
        let holds = topology.shards.iter().any(|s| s.has_replica_on(&name));
        if decommissioned || (!holds && goal == DrainGoal::Drain) {
            continue;
        }
        let drain = plan::plan_drain(topology, &name, goal, limits)?;
        let detail = if node.metadata.deletion_timestamp.is_some() {
            format!("node {name} was deleted; it is decommissioned first")
        } else {
            format!("node {name} is to be {goal:?}")
        };
        return Ok(Some(Decision {
            context: PlanContext {
                cluster: cluster.clone(),
                target: target(TargetKind::DatabaseNode, &name),
                cause: change_cause(node.as_ref(), detail),
                summary: format!("move every replica and primary off {name} ({goal:?})"),
                facts: BTreeMap::new(),
            },
            plan: drain,
        }));
    }

    let rebalancing = spec.rebalancing.as_ref();
    if rebalancing.and_then(|r| r.enabled) != Some(false) {
        let policy = RebalancePolicy {
            max_imbalance_pct: rebalancing
                .and_then(|r| r.max_imbalance_percent)
                .unwrap_or(5) as f64,
            limits,
        };
        let rebalance = plan::plan_rebalance(topology, &policy)?;
        if !rebalance.plan.operations.is_empty() {
            let report = rebalance.report;
            let facts = BTreeMap::from([
                ("bytesMoved".to_string(), report.bytes_moved.to_string()),
                (
                    "lowerBoundBytes".to_string(),
                    report.lower_bound_bytes.to_string(),
                ),
                ("moves".to_string(), report.moves.to_string()),
                (
                    "primaryTransfers".to_string(),
                    report.primary_transfers.to_string(),
                ),
                (
                    "imbalanceBeforePct".to_string(),
                    format!("{:.1}", report.before.bytes_pct),
                ),
                (
                    "imbalanceAfterPct".to_string(),
                    format!("{:.1}", report.after.bytes_pct),
                ),
            ]);
            return Ok(Some(Decision {
                context: PlanContext {
                    cluster: cluster.clone(),
                    target: target(TargetKind::DatabaseCluster, &cluster),
                    cause: cause(CauseKind::Policy, "nodes outside the balance band".into()),
                    summary: format!(
                        "rebalance: {} move(s), {} primary transfer(s), {} bytes",
                        report.moves, report.primary_transfers, report.bytes_moved
                    ),
                    facts,
                },
                plan: rebalance.plan,
            }));
        }
    }
    if placement.blocked.is_empty() {
        return Ok(None);
    }
    Ok(Some(Decision {
        context: PlanContext {
            cluster: cluster.clone(),
            target: target(TargetKind::DatabaseCluster, &cluster),
            cause: cause(
                CauseKind::Policy,
                "shards below the replication factor".into(),
            ),
            summary: "no placement possible".into(),
            facts: BTreeMap::new(),
        },
        plan: placement,
    }))
}

/// Why a user-declared change of `object` happened: the git commit git-sync stamped on it
/// (`shardplane.io/source-commit`) when its spec came from git, else a user. A deletion is
/// always a user's (or a prune's) act, so it is never attributed to the stamped commit.
pub fn change_cause<K: Resource>(object: &K, detail: String) -> PlanCause {
    let commit = object
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(SOURCE_COMMIT_ANNOTATION))
        .filter(|_| object.meta().deletion_timestamp.is_none())
        .cloned();
    PlanCause {
        kind: if commit.is_some() {
            CauseKind::GitCommit
        } else {
            CauseKind::User
        },
        commit,
        user: None,
        detail,
    }
}

fn limits(view: &ClusterView) -> ConcurrencyLimits {
    let defaults = ConcurrencyLimits::default();
    let rebalancing = view.cluster.spec.rebalancing.as_ref();
    ConcurrencyLimits {
        per_node: rebalancing
            .and_then(|r| r.max_concurrent_moves_per_node)
            .map_or(defaults.per_node, |v| v.max(1) as u32),
        per_cluster: rebalancing
            .and_then(|r| r.max_concurrent_moves)
            .map_or(defaults.per_cluster, |v| v.max(1) as u32),
    }
}

/// Whether a failover plan's node is serving again.
fn returned(plan: &Plan, topology: &Topology) -> bool {
    topology
        .nodes
        .iter()
        .any(|n| n.name == plan.spec.target.name && n.phase != plan::NodePhase::Offline)
}

/// Whether a plan still awaits approval or runs.
pub fn is_active(plan: &Plan) -> bool {
    matches!(
        plan.status.as_ref().and_then(|s| s.phase),
        None | Some(PlanPhase::Pending | PlanPhase::AwaitingApproval | PlanPhase::Running)
    )
}

/// How often a superseded split or merge is made again before it is left to the user.
const MAX_REMAKES: usize = 5;

/// Creates the decided plan unless it exists, superseding plans it replaces: any plan when
/// the decision is a failover, and a not-yet-approved plan for the same purpose and target
/// whose inputs have since changed. Otherwise a running plan finishes first.
async fn persist(
    ctx: &Context,
    cluster: &DatabaseCluster,
    decision: Decision,
    active: &[&Arc<Plan>],
) -> Result<(), ClusterError> {
    let purpose = plan_wire::purpose(decision.plan.kind);
    let name = plan_wire::plan_name(&cluster.name_any(), purpose, &decision.plan.hash);
    if active
        .iter()
        .any(|p| p.spec.purpose == purpose && p.spec.hash == decision.plan.hash)
    {
        return Ok(());
    }
    let target = &decision.context.target;
    for plan in active {
        let awaiting = plan.status.as_ref().and_then(|s| s.phase) != Some(PlanPhase::Running);
        let same_change = plan.spec.purpose == purpose && &plan.spec.target == target;
        // A failover preempts anything but the failover of the same node, which is under
        // way; a plan not yet running is replaced when its inputs changed.
        let supersede = if purpose == PlanPurpose::Failover {
            !same_change
        } else {
            awaiting && same_change
        };
        if !supersede {
            return Ok(());
        }
    }
    for plan in active {
        supersede(
            ctx,
            plan,
            &format!("superseded by plan {name}: its inputs changed before it finished"),
        )
        .await?;
    }
    let namespace = cluster.namespace().unwrap_or_default();
    let spec = plan_wire::to_spec(&decision.plan, decision.context)?;
    let mut object = Plan::new(&name, spec);
    object.metadata.namespace = Some(namespace.clone());
    object.metadata.owner_references = cluster.controller_owner_ref(&()).map(|o| vec![o]);
    object.metadata.labels = Some(BTreeMap::from([
        (CLUSTER_LABEL.to_string(), cluster.name_any()),
        (PURPOSE_LABEL.to_string(), format!("{purpose:?}")),
    ]));
    ctx.leader.ensure()?;
    let plans: Api<Plan> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut attempt = 1;
    loop {
        match plans.create(&PostParams::default(), &object).await {
            Ok(_) => break,
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // The same change was planned before. A split or merge that a failover
                // superseded before its switch is made again (its approval by hash still
                // holds: it is the same change); anything else that ended stays ended.
                let existing = plans.get_opt(&object.name_any()).await?;
                let superseded = existing
                    .and_then(|p| p.status)
                    .is_some_and(|s| s.phase == Some(PlanPhase::Superseded));
                if purpose != PlanPurpose::Reshard || !superseded || attempt >= MAX_REMAKES {
                    return Ok(());
                }
                attempt += 1;
                object.metadata.name = Some(format!("{name}-{attempt}"));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if purpose == PlanPurpose::Failover {
        ctx.metrics.failovers.inc();
    }
    let source = object
        .spec
        .cause
        .commit
        .as_ref()
        .map(|c| format!(" (from commit {c})"))
        .unwrap_or_default();
    let note = format!(
        "plan {} ({purpose:?}, {:?}, {} steps, hash {}): {}{source}",
        object.name_any(),
        object.spec.risk,
        object.spec.steps.len(),
        object.spec.hash,
        object.spec.summary
    );
    ctx.event(cluster, false, "PlanCreated", note).await;
    Ok(())
}

/// Marks `plan` Superseded with `message`, conditional on the version this reconciler saw:
/// if the executor moved the plan meanwhile (approved it, started it), the write fails and
/// the decision is taken again on fresh state.
async fn supersede(ctx: &Context, plan: &Plan, message: &str) -> Result<(), ClusterError> {
    ctx.leader.ensure()?;
    let plans: Api<Plan> =
        Api::namespaced(ctx.client.clone(), &plan.namespace().unwrap_or_default());
    let condition = json!({
        "type": "Ready", "status": "False", "reason": "Superseded", "message": message,
        "lastTransitionTime": Time(Timestamp::now()),
    });
    let patch = json!({
        "metadata": {"resourceVersion": plan.resource_version()},
        "status": {"phase": PlanPhase::Superseded, "conditions": [condition]},
    });
    let params = PatchParams::default();
    plans
        .patch_status(&plan.name_any(), &params, &Patch::Merge(patch))
        .await?;
    ctx.event(plan, false, "PlanSuperseded", message.to_string())
        .await;
    Ok(())
}

/// Keeps the newest [`PLAN_HISTORY`] finished plans of the cluster; deletes older ones.
async fn prune_history(ctx: &Context, view: &ClusterView) -> Result<(), ClusterError> {
    let mut finished: Vec<&Arc<Plan>> = view.plans.iter().filter(|p| !is_active(p)).collect();
    if finished.len() <= PLAN_HISTORY {
        return Ok(());
    }
    finished.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.clone().map(|t| t.0)));
    for plan in &finished[PLAN_HISTORY..] {
        ctx.leader.ensure()?;
        let plans: Api<Plan> =
            Api::namespaced(ctx.client.clone(), &plan.namespace().unwrap_or_default());
        match plans
            .delete(&plan.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Keeps the drain-before-delete finalizer on every node, and lifts it from a deleted node
/// once no replica is left on it (the decommission plan moved them all).
async fn guard_node_deletion(
    ctx: &Context,
    view: &ClusterView,
    topology: &Topology,
) -> Result<(), ClusterError> {
    for node in &view.nodes {
        let name = node.name_any();
        let finalizers = node.finalizers();
        let has = finalizers.iter().any(|f| f == NODE_FINALIZER);
        let deleting = node.metadata.deletion_timestamp.is_some();
        let empty = !topology.shards.iter().any(|s| s.has_replica_on(&name));
        let wanted: Option<Vec<String>> = match (deleting, has) {
            (false, false) => Some(
                finalizers
                    .iter()
                    .cloned()
                    .chain([NODE_FINALIZER.to_string()])
                    .collect(),
            ),
            (true, true) if empty => Some(
                finalizers
                    .iter()
                    .filter(|f| *f != NODE_FINALIZER)
                    .cloned()
                    .collect(),
            ),
            _ => None,
        };
        let Some(wanted) = wanted else { continue };
        ctx.set_finalizers::<_, ClusterError>(node.as_ref(), wanted)
            .await?;
        if deleting {
            ctx.event(
                node.as_ref(),
                false,
                "NodeRemoved",
                format!("{name} holds no replica; it leaves the cluster"),
            )
            .await;
        }
    }
    Ok(())
}

/// Writes each node's replica and primary counts where they changed.
async fn update_node_counts(
    ctx: &Context,
    view: &ClusterView,
    topology: &Topology,
) -> Result<(), ClusterError> {
    for node in &view.nodes {
        let name = node.name_any();
        let replicas = topology
            .shards
            .iter()
            .filter(|s| s.has_replica_on(&name))
            .count() as i32;
        let primaries = topology
            .shards
            .iter()
            .filter(|s| s.primary_node() == Some(name.as_str()))
            .count() as i32;
        let status = node.status.clone().unwrap_or_default();
        if status.replicas == Some(replicas) && status.primaries == Some(primaries) {
            continue;
        }
        ctx.leader.ensure()?;
        let nodes: Api<DatabaseNode> =
            Api::namespaced(ctx.client.clone(), &node.namespace().unwrap_or_default());
        let patch = json!({"status": {"replicas": replicas, "primaries": primaries}});
        nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    Ok(())
}

async fn write_status(
    ctx: &Context,
    view: &ClusterView,
    topology: &Topology,
    invalid: &[String],
    blocked: &[String],
) -> Result<(), ClusterError> {
    let cluster = &view.cluster;
    let generation = cluster.meta().generation;
    let old = cluster.status.clone().unwrap_or_default();
    let online = topology
        .nodes
        .iter()
        .filter(|n| n.phase == plan::NodePhase::Online)
        .count();
    let offline: Vec<&str> = topology
        .nodes
        .iter()
        .filter(|n| n.phase == plan::NodePhase::Offline)
        .map(|n| n.name.as_str())
        .collect();
    let rf = topology.replication_factor as usize;
    let degraded_shards = topology
        .shards
        .iter()
        .filter(|s| {
            s.primary_node().is_none() || s.replicas.iter().filter(|r| r.in_sync).count() < rf
        })
        .count();
    let active = view.plans.iter().filter(|p| is_active(p)).count();
    let mut status = DatabaseClusterStatus {
        observed_generation: generation,
        conditions: old.conditions.clone(),
        nodes: Some(view.nodes.len() as i32),
        online_nodes: Some(online as i32),
        shards: Some(view.shards.len() as i32),
        tables: Some(view.tables.len() as i32),
        active_plans: Some(active as i32),
        min_node_version: old.min_node_version.clone(),
    };
    let ready = degraded_shards == 0 && invalid.is_empty() && offline.is_empty();
    conditions::set(
        &mut status.conditions,
        generation,
        Observation {
            type_: "Ready",
            holds: ready,
            reason: if ready {
                "AllShardsServing"
            } else {
                "ShardsNotReady"
            },
            message: if ready {
                format!(
                    "{} shard(s) serving with {rf} in-sync replicas each",
                    topology.shards.len()
                )
            } else {
                format!("{degraded_shards} shard(s) lack a primary or in-sync replicas")
            },
        },
    );
    conditions::set(
        &mut status.conditions,
        generation,
        Observation {
            type_: "Progressing",
            holds: active > 0,
            reason: if active > 0 { "PlanActive" } else { "Idle" },
            message: format!("{active} plan(s) awaiting approval or running"),
        },
    );
    let mut problems: Vec<String> = Vec::new();
    if !offline.is_empty() {
        problems.push(format!("node(s) offline: {}", offline.join(", ")));
    }
    problems.extend(invalid.iter().map(|i| format!("invalid shard {i}")));
    problems.extend(blocked.iter().map(|b| format!("blocked {b}")));
    conditions::set(
        &mut status.conditions,
        generation,
        Observation {
            type_: "Degraded",
            holds: !problems.is_empty(),
            reason: if !offline.is_empty() {
                "NodesOffline"
            } else if !blocked.is_empty() {
                "PlanBlocked"
            } else if !invalid.is_empty() {
                "InvalidShards"
            } else {
                "Healthy"
            },
            message: if problems.is_empty() {
                "no problem observed".into()
            } else {
                problems.join("; ")
            },
        },
    );
    let unchanged = conditions::same(&status.conditions, &old.conditions)
        && DatabaseClusterStatus {
            conditions: Vec::new(),
            ..status.clone()
        } == DatabaseClusterStatus {
            conditions: Vec::new(),
            ..old
        };
    if unchanged {
        return Ok(());
    }
    ctx.leader.ensure()?;
    let clusters: Api<DatabaseCluster> =
        Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    clusters
        .patch_status(
            &cluster.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    Ok(())
}
