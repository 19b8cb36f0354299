//! What a cluster needs next, and everything the cluster reconciler writes: the planner's
//! decision by priority (failover of dead nodes, a declared split or merge, placement of
//! under-replicated shards, drains, respread, rebalancing); which running plans a decision supersedes;
//! which finished plans are pruned; node finalizers and counts; the cluster's status.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;

use crate::api::database_cluster::DatabaseClusterStatus;
use crate::api::database_node::NodeDesiredState;
use crate::api::plan::{
    CauseKind, PlanCause, PlanPhase, PlanPurpose, PlanTarget, StepPhase, TargetKind,
};
use crate::api::{DatabaseNode, NodePhase, Plan};
use crate::plan::{
    self, ConcurrencyLimits, DrainGoal, FailoverPolicy, PlanError, RebalancePolicy, Topology,
};
use crate::protocol::NODE_FINALIZER;

use super::conditions::{self, Observation};
use super::domain::{self, desired_state};
use super::plan_wire::{self, Decision, MAX_PLAN_STEPS, PlanContext, change_cause};
use super::{ClusterView, Object, reshard, roles, rollout};

/// How many finished plans of a cluster are kept as its history.
pub const PLAN_HISTORY: usize = 20;

/// The planner's decision for this cluster now, by priority: failover, a declared split or
/// merge, placement, drain, respread (surplus and crowded replicas once nodes returned),
/// rolling restart, rebalance. `None` when nothing needs doing. `shardplane plan`
/// calls it on a pull request's desired state to show (and hash) the very plan the operator
/// will make. `now_ms` only reaches failover plans (the re-replication delay), which never
/// wait for approval.
pub fn decide(
    view: &ClusterView,
    topology: &Topology,
    now_ms: u64,
) -> Result<Option<Decision>, PlanError> {
    let spec = &view.cluster.spec;
    let cluster = view.name().to_owned();
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

    // Dead nodes that still lead shards first: their shards cannot take writes. A node
    // whose failover is under way is left to it, so a region's dead nodes are decided one
    // after another without waiting for each other.
    let under_way = |node: &str| {
        view.plans.iter().any(|p| {
            is_active(p) && p.spec.purpose == PlanPurpose::Failover && p.spec.target.name == node
        })
    };
    let mut dead: Vec<&plan::Node> = topology
        .nodes
        .iter()
        .filter(|n| n.phase == plan::NodePhase::Offline && !under_way(&n.name))
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
        let mut failover = plan::plan_failover(topology, &node.name, now_ms, &policy)?;
        failover.plan = failover.plan.first_steps(MAX_PLAN_STEPS);
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
                    failover
                        .plan
                        .steps()
                        .filter(|s| matches!(s.action, plan::StepAction::Promote { .. }))
                        .count(),
                    node.name
                ),
                facts,
            },
            plan: failover.plan,
        }));
    }

    // A live primary cut off from every in-sync standby: its commits wait for ever. One shard
    // at a time, like the dead nodes; a shard whose failover is under way is left to it.
    let detection = spec.failure_detection.clone().unwrap_or_default();
    let online: BTreeSet<&str> = topology
        .nodes
        .iter()
        .filter(|n| n.phase == plan::NodePhase::Online)
        .map(|n| n.name.as_str())
        .collect();
    let after_ms = domain::quorum_loss_after_ms(detection.dead_after_ms);
    let lost = view.shards.iter().find(|s| {
        domain::quorum_lost(s, |node| online.contains(node), now_ms, after_ms)
            && !under_way(s.name())
    });
    if let Some(shard) = lost {
        let name = shard.name();
        let policy = FailoverPolicy {
            max_lag_bytes: 0,
            re_replication_delay_ms: 0,
            limits,
        };
        let failover = plan::plan_quorum_failover(topology, name, &policy)?;
        let old = shard
            .status
            .as_ref()
            .and_then(|s| s.primary.as_ref())
            .map_or_else(String::new, |p| p.node.clone());
        let facts = failover
            .decisions
            .iter()
            .map(|d| {
                (
                    format!("failover.{}", d.shard),
                    format!(
                        "promote {}",
                        d.new_primary.as_deref().unwrap_or("nobody (blocked)")
                    ),
                )
            })
            .collect();
        return Ok(Some(Decision {
            context: PlanContext {
                cluster: cluster.clone(),
                target: target(TargetKind::Shard, name),
                cause: cause(
                    CauseKind::Failure,
                    format!(
                        "the primary of {name} on {old} lost every in-sync standby's stream for \
                         {after_ms} ms: its commits cannot be acknowledged"
                    ),
                ),
                summary: format!("fail over {name}, whose primary on {old} lost its quorum"),
                facts,
            },
            plan: failover.plan,
        }));
    }

    // A declared split or merge: its targets are placed by its own plan.
    if let Some(decision) = reshard::decide(view, topology)? {
        return Ok(Some(decision));
    }

    // A placement that is only blocked (no step possible) must not hide a drain or a
    // rebalance that can proceed; its blockers still reach the cluster's conditions.
    let placement = match liveness_judged(topology) {
        true => Some(plan::plan_placement_within(
            topology,
            limits,
            MAX_PLAN_STEPS,
        )?),
        false => None,
    };
    if placement.as_ref().is_some_and(|p| !p.operations.is_empty()) {
        return Ok(placement.map(|p| placement_decision(view, p)));
    }

    for node in &view.nodes {
        let goal = match desired_state(node) {
            Some(NodeDesiredState::Drained) => DrainGoal::Drain,
            Some(NodeDesiredState::Decommissioned) => DrainGoal::Decommission,
            _ => continue,
        };
        let name = node.name();
        let decommissioned =
            node.status.as_ref().and_then(|s| s.phase) == Some(NodePhase::Decommissioned);
        let holds = topology.shards.iter().any(|s| s.has_replica_on(name));
        if decommissioned || (!holds && goal == DrainGoal::Drain) {
            continue;
        }
        let drain = plan::plan_drain(topology, name, goal, limits)?.first_steps(MAX_PLAN_STEPS);
        let detail = if node.deleting() {
            format!("node {name} was deleted; it is decommissioned first")
        } else {
            format!("node {name} is to be {goal:?}")
        };
        return Ok(Some(Decision {
            context: PlanContext {
                cluster: cluster.clone(),
                target: target(TargetKind::DatabaseNode, name),
                cause: change_cause(node.as_ref(), detail),
                summary: format!("move every replica and primary off {name} ({goal:?})"),
                facts: BTreeMap::new(),
            },
            plan: drain,
        }));
    }

    // Replicas made while nodes were away, once those nodes are back: the surplus removed,
    // a lost region's replacements moved back into it. Not a matter of balance, so not
    // subject to `spec.rebalancing`.
    let respread = plan::plan_respread(topology, limits)?.first_steps(MAX_PLAN_STEPS);
    if !respread.operations.is_empty() {
        let shards = respread.operations.len();
        return Ok(Some(Decision {
            context: PlanContext {
                cluster: cluster.clone(),
                target: target(TargetKind::DatabaseCluster, &cluster),
                cause: cause(
                    CauseKind::Policy,
                    "shards hold more replicas than the replication factor, or more in one \
                     zone or region than the spread rule allows, since nodes returned"
                        .into(),
                ),
                summary: format!("restore the replica count and spread of {shards} shard(s)"),
                facts: BTreeMap::new(),
            },
            plan: respread,
        }));
    }

    if let Some(decision) = rollout::decide(view, topology)? {
        return Ok(Some(decision));
    }

    let rebalancing = spec.rebalancing.as_ref();
    if rebalancing.and_then(|r| r.enabled) != Some(false) {
        let policy = RebalancePolicy {
            max_imbalance_pct: rebalancing
                .and_then(|r| r.max_imbalance_percent)
                .unwrap_or(5) as f64,
            limits,
        };
        let mut rebalance = plan::plan_rebalance(topology, &policy)?;
        rebalance.plan = rebalance.plan.first_steps(MAX_PLAN_STEPS);
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
    Ok(placement
        .filter(|p| !p.blocked.is_empty())
        .map(|p| placement_decision(view, p)))
}

/// The decision to place `placement`'s replicas of under-replicated shards.
fn placement_decision(view: &ClusterView, placement: plan::Plan) -> Decision {
    let cluster = view.name().to_owned();
    let summary = match placement.operations.len() {
        0 => "no placement possible".to_owned(),
        shards => format!("place replicas of {shards} under-replicated shard(s)"),
    };
    Decision {
        context: PlanContext {
            cluster: cluster.clone(),
            target: PlanTarget {
                kind: TargetKind::DatabaseCluster,
                name: cluster,
            },
            cause: PlanCause {
                kind: CauseKind::Policy,
                commit: None,
                user: None,
                detail: "shards below the replication factor".into(),
            },
            summary,
            facts: BTreeMap::new(),
        },
        plan: placement,
    }
}

/// How many decisions one look at a cluster makes beside its active plans.
pub const MAX_DECISIONS_BESIDE: usize = 16;

/// How many placements of one cluster run at once (each within the planner's per-node and
/// per-cluster limits): a burst of new tables is decided at once, in parts that fit a Plan.
pub const MAX_PLACEMENTS: usize = 4;

/// What a decision beside the active plans is made on.
pub struct Beside {
    /// The observed topology with every active placement's steps applied (its shards at the
    /// replication factor, its new replicas counted on their nodes), without the held shards.
    pub topology: Topology,
    /// The shards the other active plans act on
    /// ([`StepAction::shards`](plan::StepAction::shards)) — a split's, a drain's, a
    /// failover's — and every shard with a replica on an Offline node (its failover promotes
    /// and replaces it, after the delay): a decision beside leaves them alone.
    pub held: BTreeSet<String>,
}

/// What a decision beside `active` is made on, from the observed `topology`.
pub fn beside(active: &[&Arc<Plan>], topology: &Topology) -> Beside {
    let actions = |p: &Arc<Plan>| -> Vec<plan::StepAction> {
        p.spec
            .steps
            .iter()
            .filter_map(|step| plan_wire::step_action(step).ok())
            .collect()
    };
    let (placements, others): (Vec<&Arc<Plan>>, Vec<&Arc<Plan>>) = active
        .iter()
        .partition(|p| p.spec.purpose == PlanPurpose::Placement);
    let placed: Vec<plan::StepAction> = placements.into_iter().flat_map(actions).collect();
    let mut held: BTreeSet<String> = others
        .into_iter()
        .flat_map(actions)
        .flat_map(|action| {
            action
                .shards()
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    let offline = offline_nodes(topology);
    held.extend(
        topology
            .shards
            .iter()
            .filter(|s| offline.iter().any(|n| s.has_replica_on(n)))
            .map(|s| s.name.clone()),
    );
    let mut topology = plan::apply_steps(topology, &placed);
    topology.shards.retain(|s| !held.contains(&s.name));
    Beside { topology, held }
}

/// What to decide beside the active plans, so that a plan that waits (a failover giving its
/// dead node time to return, a split awaiting approval, a placement waiting for replicas to
/// catch up) holds no independent change back: on [`Beside`], a declared split or merge none
/// of whose shards is held, else a placement of the shards still under-replicated (a new
/// table's). Failovers, drains and rebalancing are only ever decided by [`decide`]: they
/// move whole nodes' replicas. Held shards are absent from the decision, so the load they
/// carry is not counted in its choice of nodes (active placements' replicas are).
pub fn decide_beside(view: &ClusterView, beside: &Beside) -> Result<Option<Decision>, PlanError> {
    if let Some(decision) = reshard::decide_free(view, &beside.topology, &beside.held)? {
        return Ok(Some(decision));
    }
    if !liveness_judged(&beside.topology) {
        return Ok(None);
    }
    let placement = plan::plan_placement_within(&beside.topology, limits(view), MAX_PLAN_STEPS)?;
    if placement.operations.is_empty() {
        return Ok(None);
    }
    Ok(Some(placement_decision(view, placement)))
}

/// Whether the liveness loop has judged every node (none is still `Pending`). Placement
/// waits for it: the loop judges every node within a tick of leading, and a placement made
/// before would put a new cluster's shards on the first nodes judged only, leaving the others
/// empty until a rebalance.
fn liveness_judged(topology: &Topology) -> bool {
    topology
        .nodes
        .iter()
        .all(|n| n.phase != plan::NodePhase::Pending)
}

/// Whether a decision made beside the active plans ([`decide_beside`]) is created: not if a
/// plan with its hash is active; a split or merge unless one of its table is active; a
/// placement while fewer than [`MAX_PLACEMENTS`] are.
pub fn admit_beside(
    purpose: PlanPurpose,
    hash: &str,
    target: &PlanTarget,
    active: &[&Arc<Plan>],
) -> bool {
    let same_purpose = || active.iter().filter(|p| p.spec.purpose == purpose);
    if same_purpose().any(|p| p.spec.hash == hash) {
        return false;
    }
    match purpose {
        PlanPurpose::Placement => same_purpose().count() < MAX_PLACEMENTS,
        _ => !same_purpose().any(|p| &p.spec.target == target),
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

/// Whether a plan still awaits approval or runs.
pub fn is_active(plan: &Plan) -> bool {
    matches!(
        plan.status.as_ref().and_then(|s| s.phase),
        None | Some(PlanPhase::Pending | PlanPhase::AwaitingApproval | PlanPhase::Running)
    )
}

/// Whether a failover plan's node is serving again.
fn returned(plan: &Plan, topology: &Topology) -> bool {
    topology
        .nodes
        .iter()
        .any(|n| n.name == plan.spec.target.name && n.phase != plan::NodePhase::Offline)
}

/// Active failover plans whose node is back, each with why it is superseded: its replicas
/// rejoin instead of being replaced.
pub fn returned_failovers<'a>(
    view: &'a ClusterView,
    topology: &Topology,
) -> Vec<(&'a Arc<Plan>, String)> {
    view.plans
        .iter()
        .filter(|p| is_active(p) && p.spec.purpose == PlanPurpose::Failover)
        .filter(|p| returned(p, topology))
        .map(|p| {
            let message = format!(
                "node {} is back: its replicas rejoin instead of being replaced",
                p.spec.target.name
            );
            (p, message)
        })
        .collect()
}

/// The plans that hold the cluster's next decision back: those awaiting approval or running,
/// except a table's drop (it waits for its own approval and touches no placement: it neither
/// holds the others back nor is superseded by them) and a failover whose node is back.
pub fn active_plans<'a>(view: &'a ClusterView, topology: &Topology) -> Vec<&'a Arc<Plan>> {
    view.plans
        .iter()
        .filter(|p| {
            is_active(p)
                && p.spec.purpose != PlanPurpose::DropTable
                && !(p.spec.purpose == PlanPurpose::Failover && returned(p, topology))
        })
        .collect()
}

/// What to do with a decision, given the active plans.
#[derive(Debug)]
pub enum Admission<'a> {
    /// It exists already, or a running plan finishes first: nothing to do.
    Wait,
    /// Create it, after marking these plans Superseded.
    Create {
        /// The plans it replaces.
        supersede: Vec<&'a Arc<Plan>>,
    },
}

/// Whether the decided plan (of `purpose`, `hash`, `target`) is created now, and which
/// active plans it supersedes. Unless it exists:
/// - a failover runs at once; it supersedes the active plans that touch its dead node
///   ([`touches_node`]) — except the failover of the same node, under way, and a split or
///   merge past its routing switch (only dropping its sources is left, which a failover does
///   not change) — and runs beside the others;
/// - anything else is created when every active plan is a not-yet-approved plan for the
///   same purpose and target whose inputs have since changed (it replaces them); otherwise a
///   running plan finishes first.
pub fn admit<'a>(
    purpose: PlanPurpose,
    hash: &str,
    target: &PlanTarget,
    active: &[&'a Arc<Plan>],
    topology: &Topology,
) -> Admission<'a> {
    if active
        .iter()
        .any(|p| p.spec.purpose == purpose && p.spec.hash == hash)
    {
        return Admission::Wait;
    }
    if purpose == PlanPurpose::Failover {
        let same_node =
            |p: &Plan| p.spec.purpose == PlanPurpose::Failover && &p.spec.target == target;
        if active.iter().any(|p| same_node(p)) {
            return Admission::Wait;
        }
        let supersede = active
            .iter()
            .filter(|p| touches_node(p, &target.name, topology) && !switched(p))
            .copied()
            .collect();
        return Admission::Create { supersede };
    }
    for plan in active {
        let awaiting = plan.status.as_ref().and_then(|s| s.phase) != Some(PlanPhase::Running);
        let same_change = plan.spec.purpose == purpose && &plan.spec.target == target;
        if !(awaiting && same_change) {
            return Admission::Wait;
        }
    }
    Admission::Create {
        supersede: active.to_vec(),
    }
}

/// Whether `plan` acts on `node` or on a shard with a replica there: a step names the node,
/// or a shard that `node` holds (as its subject, or among the shards a split or merge copies,
/// fences, switches or drops), or creates a shard with a replica on `node`.
pub fn touches_node(plan: &Plan, node: &str, topology: &Topology) -> bool {
    let held = |shard: &str| {
        topology
            .shards
            .iter()
            .any(|s| s.name == shard && s.has_replica_on(node))
    };
    plan.spec.steps.iter().any(|step| {
        step.node.as_deref() == Some(node)
            || step.shard.as_deref().is_some_and(held)
            || plan_wire::step_action(step).is_ok_and(|action| {
                action.shards().into_iter().any(held)
                    || matches!(&action, plan::StepAction::PrepareTargets { targets }
                        if targets.iter().any(|t| t.nodes.iter().any(|n| n == node)))
            })
    })
}

/// Whether `plan` is a split or merge whose routing switch has happened.
fn switched(plan: &Plan) -> bool {
    let Some(status) = plan.status.as_ref() else {
        return false;
    };
    plan.spec.steps.iter().any(|step| {
        step.action == "SwitchRouting"
            && status
                .steps
                .iter()
                .any(|s| s.id == step.id && s.phase == StepPhase::Succeeded)
    })
}

/// The finished plans beyond the newest [`PLAN_HISTORY`], to delete.
pub fn history_to_prune(view: &ClusterView) -> Vec<&Arc<Plan>> {
    let mut finished: Vec<&Arc<Plan>> = view.plans.iter().filter(|p| !is_active(p)).collect();
    if finished.len() <= PLAN_HISTORY {
        return Vec::new();
    }
    finished.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.clone().map(|t| t.0)));
    finished.split_off(PLAN_HISTORY)
}

/// The drain-before-delete finalizer on every node: the finalizers each node should carry
/// where they differ from what it carries — added to every live node, lifted from a deleted
/// node once no replica is left on it (the decommission plan moved them all).
pub fn node_finalizers<'a>(
    view: &'a ClusterView,
    topology: &Topology,
) -> Vec<(&'a Arc<DatabaseNode>, Vec<String>)> {
    let mut changes = Vec::new();
    for node in &view.nodes {
        let finalizers = node.finalizers();
        let has = finalizers.iter().any(|f| f == NODE_FINALIZER);
        let empty = !topology
            .shards
            .iter()
            .any(|s| s.has_replica_on(node.name()));
        let wanted: Option<Vec<String>> = match (node.deleting(), has) {
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
        if let Some(wanted) = wanted {
            changes.push((node, wanted));
        }
    }
    changes
}

/// Each node's replica and primary counts, where they differ from its status.
pub fn node_counts(view: &ClusterView, topology: &Topology) -> Vec<(Arc<DatabaseNode>, i32, i32)> {
    // One pass over the shards (not one per node: 1,000 nodes × 10,000 shards).
    let mut counts: HashMap<&str, (i32, i32)> = HashMap::new();
    for shard in &topology.shards {
        let nodes: BTreeSet<&str> = shard.replicas.iter().map(|r| r.node.as_str()).collect();
        for node in nodes {
            counts.entry(node).or_default().0 += 1;
        }
        if let Some(primary) = shard.primary_node() {
            counts.entry(primary).or_default().1 += 1;
        }
    }
    let mut changes = Vec::new();
    for node in &view.nodes {
        let (replicas, primaries) = counts.get(node.name()).copied().unwrap_or_default();
        let status = node.status.as_ref();
        if status.and_then(|s| s.replicas) != Some(replicas)
            || status.and_then(|s| s.primaries) != Some(primaries)
        {
            changes.push((node.clone(), replicas, primaries));
        }
    }
    changes
}

/// The cluster's status (counts, `Ready`/`Progressing`/`Degraded`), or `None` when it says
/// what the cluster already says. `invalid` names shards left out of the topology;
/// `blocked` what the planner could not place.
pub fn status(
    view: &ClusterView,
    topology: &Topology,
    invalid: &[String],
    blocked: &[String],
    now: Timestamp,
) -> Option<DatabaseClusterStatus> {
    let cluster = &view.cluster;
    let generation = cluster.metadata.generation;
    let old = cluster.status.clone().unwrap_or_default();
    let online = topology
        .nodes
        .iter()
        .filter(|n| n.phase == plan::NodePhase::Online)
        .count();
    let offline = offline_nodes(topology);
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
        now,
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
        now,
    );
    conditions::set(
        &mut status.conditions,
        generation,
        rollout::parameters_observation(view),
        now,
    );
    conditions::set(
        &mut status.conditions,
        generation,
        roles::roles_observation(view),
        now,
    );
    let failing: Vec<String> = view
        .nodes
        .iter()
        .flat_map(|node| {
            let failed = node
                .status
                .as_ref()
                .map(|s| s.failed_instances.as_slice())
                .unwrap_or_default();
            failed.iter().map(move |f| {
                format!(
                    "on {} the instance of {} fails to start: {}",
                    node.name(),
                    f.shard,
                    f.reason
                )
            })
        })
        .collect();
    let failing_instances = !failing.is_empty();
    let outside = nodes_outside_topology(view);
    let mut problems: Vec<String> = Vec::new();
    if !offline.is_empty() {
        problems.push(format!("node(s) offline: {}", offline.join(", ")));
    }
    problems.extend(failing);
    problems.extend(outside.iter().cloned());
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
            } else if failing_instances {
                "InstancesFailing"
            } else if !outside.is_empty() {
                "NodesOutsideTopology"
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
        now,
    );
    let unchanged = conditions::same(&status.conditions, &old.conditions)
        && DatabaseClusterStatus {
            conditions: Vec::new(),
            ..status.clone()
        } == DatabaseClusterStatus {
            conditions: Vec::new(),
            ..old
        };
    (!unchanged).then_some(status)
}

/// The nodes whose `spec.region` or `spec.zone` the cluster does not declare, each in a
/// sentence naming the field and what to do. The CRD cannot refuse such a node (it needs the
/// cluster); the planner would count its zone as a failure domain the cluster does not have.
fn nodes_outside_topology(view: &ClusterView) -> Vec<String> {
    let regions = &view.cluster.spec.regions;
    let declared = |names: &mut dyn Iterator<Item = &String>| {
        names.map(String::as_str).collect::<Vec<_>>().join(", ")
    };
    view.nodes
        .iter()
        .filter_map(|node| {
            let (name, spec) = (node.name(), &node.spec);
            match regions.iter().find(|r| r.name == spec.region) {
                None => Some(format!(
                    "node {name}: spec.region {} is not one of the cluster's spec.regions ({}): \
                     declare it in spec.regions, or register the node in one of those",
                    spec.region,
                    declared(&mut regions.iter().map(|r| &r.name)),
                )),
                Some(region) if !region.zones.contains(&spec.zone) => Some(format!(
                    "node {name}: spec.zone {} is not a zone of region {} in the cluster's \
                     spec.regions ({}): declare it there, or register the node in one of those",
                    spec.zone,
                    region.name,
                    declared(&mut region.zones.iter()),
                )),
                Some(_) => None,
            }
        })
        .collect()
}

/// The plan object a decision becomes in the cluster's namespace (its owner is the caller's
/// to set), and its name.
pub fn plan_of(
    view: &ClusterView,
    decision: Decision,
) -> Result<crate::api::Plan, serde_json::Error> {
    let purpose = plan_wire::purpose(decision.plan.kind);
    let name = plan_wire::plan_name(view.name(), purpose, &decision.plan.hash);
    let spec = plan_wire::to_spec(&decision.plan, decision.context)?;
    Ok(plan_wire::plan_object(
        &name,
        view.cluster.namespace().unwrap_or_default(),
        spec,
    ))
}

/// The names of `topology`'s Offline nodes.
fn offline_nodes(topology: &plan::Topology) -> Vec<&str> {
    topology
        .nodes
        .iter()
        .filter(|n| n.phase == plan::NodePhase::Offline)
        .map(|n| n.name.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object<K: serde::de::DeserializeOwned>(value: serde_json::Value) -> K {
        serde_json::from_value(value).unwrap()
    }

    /// A three-region cluster of nine nodes and one table of `shards` unplaced shards.
    fn unplaced(shards: usize) -> ClusterView {
        let cluster: crate::api::DatabaseCluster = object(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseCluster",
            "metadata": {"name": "main", "namespace": "db"},
            "spec": {"replicationFactor": 3, "regions": [
                {"name": "r0", "zones": ["r0-a"]}, {"name": "r1", "zones": ["r1-a"]},
                {"name": "r2", "zones": ["r2-a"]}]},
        }));
        let nodes = (0..9)
            .map(|i| {
                Arc::new(object(json!({
                    "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseNode",
                    "metadata": {"name": format!("n{i}"), "namespace": "db"},
                    "spec": {"cluster": "main", "region": format!("r{}", i % 3),
                             "zone": format!("r{}-a", i % 3), "address": "127.0.0.1",
                             "ports": {"first": 20000, "last": 29999},
                             "capacity": {"storageBytes": 1_000_000_000_000_i64}},
                    "status": {"phase": "Online"},
                })))
            })
            .collect();
        let table = crate::decide::testkit::table();
        let width = u64::MAX / shards as u64;
        let shards = (0..shards)
            .map(|i| {
                let bound = |k: usize| {
                    (k > 0 && k < shards)
                        .then(|| (i64::MIN as i128 + (k as u64 * width) as i128) as i64)
                };
                Arc::new(object(json!({
                    "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
                    "metadata": {"name": format!("t-{i:04}"), "namespace": "db"},
                    "spec": {"table": "t", "range": {"start": bound(i), "end": bound(i + 1)}},
                })))
            })
            .collect();
        ClusterView::of(Arc::new(cluster), nodes, vec![table], shards, Vec::new())
    }

    /// A node the liveness loop has not judged yet (`Pending`) holds placement back: placed
    /// before, a new cluster's shards would go to the nodes judged first only.
    #[test]
    fn placement_waits_until_every_node_is_judged() {
        let view = unplaced(8);
        let mut nodes = view.nodes.clone();
        let mut pending = (*nodes[0]).clone();
        pending.status = None;
        nodes[0] = Arc::new(pending);
        let waiting = ClusterView::of(
            view.cluster.clone(),
            nodes,
            view.tables.clone(),
            view.shards.clone(),
            Vec::new(),
        );
        let (topology, _) = waiting.topology();
        assert!(decide(&waiting, &topology, 0).unwrap().is_none());
        let (topology, _) = view.topology();
        let decision = decide(&view, &topology, 0).unwrap().unwrap();
        assert_eq!(decision.plan.kind, plan::PlanKind::Placement);
    }

    /// A node in a region or zone the cluster does not declare is named in `Degraded`, with
    /// the field and what to do; the others are not.
    #[test]
    fn nodes_outside_the_declared_topology_degrade_the_cluster() {
        let view = unplaced(1);
        let mut nodes = view.nodes.clone();
        let mut strange_zone = (*nodes[0]).clone();
        strange_zone.spec.zone = "r0-z".into();
        nodes[0] = Arc::new(strange_zone);
        let mut strange_region = (*nodes[1]).clone();
        strange_region.spec.region = "r9".into();
        nodes[1] = Arc::new(strange_region);
        let view = ClusterView::of(
            view.cluster.clone(),
            nodes,
            view.tables.clone(),
            view.shards.clone(),
            Vec::new(),
        );
        let outside = nodes_outside_topology(&view);
        assert_eq!(outside.len(), 2, "{outside:?}");
        assert!(
            outside[0].starts_with("node n0: spec.zone r0-z is not a zone of region r0")
                && outside[0].contains("(r0-a)"),
            "{}",
            outside[0]
        );
        assert!(
            outside[1].starts_with("node n1: spec.region r9 is not one of the cluster's")
                && outside[1].contains("(r0, r1, r2)"),
            "{}",
            outside[1]
        );
        let (topology, _) = view.topology();
        let status = status(&view, &topology, &[], &[], Timestamp::UNIX_EPOCH).unwrap();
        let degraded = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .unwrap();
        assert_eq!(degraded.reason, "NodesOutsideTopology");
        assert!(
            degraded.message.contains("spec.region r9"),
            "{}",
            degraded.message
        );
    }

    #[test]
    fn a_decision_larger_than_one_plan_object_is_made_in_parts_that_fit() {
        let view = unplaced(400);
        let (topology, invalid) = view.topology();
        assert!(invalid.is_empty(), "{invalid:?}");
        let full = plan::plan_placement(&topology, limits(&view)).unwrap();
        assert!(
            full.steps().count() > MAX_PLAN_STEPS,
            "the input must need parts"
        );
        let decision = decide(&view, &topology, 0).unwrap().unwrap();
        let steps = decision.plan.steps().count();
        assert!(
            steps <= MAX_PLAN_STEPS && steps > MAX_PLAN_STEPS / 2,
            "{steps} steps"
        );
        assert_eq!(decision.plan.hash, decision.plan.content_hash());
        // The same view decides the same part, so the plan is made once and keeps its hash.
        let again = decide(&view, &topology, 0).unwrap().unwrap();
        assert_eq!(again.plan.hash, decision.plan.hash);
        // Once this part is carried out, the next decision places the rest, in parts too.
        let placed = plan::apply_plan(&topology, &decision.plan);
        let next = plan::plan_placement(&placed, limits(&view)).unwrap();
        assert!(!next.operations.is_empty());
        assert_eq!(
            next.operations.len() + decision.plan.operations.len(),
            full.operations.len(),
            "every shard is placed by one part or the next"
        );
        assert!(
            decision
                .context
                .summary
                .contains(&decision.plan.operations.len().to_string()),
            "{}",
            decision.context.summary
        );
    }

    /// A running split of `orders-0` into `a` + `b`, its routing switch done if `switched`.
    fn split(switched: bool) -> Arc<Plan> {
        let actions = [
            plan::StepAction::FenceWrites {
                shards: vec!["orders-0".into()],
            },
            plan::StepAction::SwitchRouting {
                table: "orders".into(),
                retire: vec!["orders-0".into()],
                serve: vec!["a".into(), "b".into()],
            },
            plan::StepAction::DropShards {
                shards: vec!["orders-0".into()],
                not_before_ms: 60_000,
            },
        ];
        let names = ["FenceWrites", "SwitchRouting", "DropShards"];
        let steps: Vec<_> = actions
            .iter()
            .zip(names)
            .enumerate()
            .map(|(i, (action, name))| {
                json!({"id": i, "wave": 0, "action": name,
                       "detail": serde_json::to_string(action).unwrap(), "reason": "x"})
            })
            .collect();
        let done = if switched { 2 } else { 1 };
        let statuses: Vec<_> = (0..3)
            .map(|i| json!({"id": i, "phase": if i < done { "Succeeded" } else { "Running" }, "attempts": 1}))
            .collect();
        Arc::new(object(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Plan",
            "metadata": {"name": "main-reshard-1", "namespace": "db"},
            "spec": {"cluster": "main", "target": {"kind": "Table", "name": "orders"},
                     "purpose": "Reshard", "cause": {"kind": "User", "detail": "x"},
                     "risk": "Destructive", "hash": "0123", "summary": "x", "steps": steps},
            "status": {"phase": "Running", "steps": statuses},
        })))
    }

    #[test]
    fn a_failover_supersedes_only_what_touches_its_node_and_never_a_switched_split() {
        let mut topology = unplaced(1).topology().0;
        topology.shards[0].name = "orders-0".into();
        topology.shards[0].replicas = vec![plan::Replica {
            node: "n0".into(),
            role: plan::ReplicaRole::Primary,
            in_sync: true,
            lag_bytes: 0,
        }];
        let failover_of = |node: &str| PlanTarget {
            kind: TargetKind::DatabaseNode,
            name: node.into(),
        };
        let supersedes = |plan: &Arc<Plan>, node: &str| match admit(
            PlanPurpose::Failover,
            "f",
            &failover_of(node),
            &[plan],
            &topology,
        ) {
            Admission::Create { supersede } => !supersede.is_empty(),
            Admission::Wait => panic!("a failover never waits for another plan"),
        };
        // The split's source lives on n0: its failover supersedes the split before its
        // switch (the executor undoes it and it is made again), not after it.
        assert!(supersedes(&split(false), "n0"));
        assert!(!supersedes(&split(true), "n0"));
        // A failover of a node the split does not touch leaves it running.
        assert!(!supersedes(&split(false), "n5"));
    }

    /// In-sync replicas on `nodes`, the first of them primary.
    fn in_sync_on(nodes: &[&str]) -> Vec<plan::Replica> {
        nodes
            .iter()
            .enumerate()
            .map(|(i, node)| plan::Replica {
                node: (*node).into(),
                role: if i == 0 {
                    plan::ReplicaRole::Primary
                } else {
                    plan::ReplicaRole::Secondary
                },
                in_sync: true,
                lag_bytes: 0,
            })
            .collect()
    }

    #[test]
    fn a_waiting_failover_holds_back_no_placement_of_other_shards() {
        let view = unplaced(2);
        let mut topology = view.topology().0;
        // t-0000 lives on n0 (now offline), n1 and n2; t-0001 is a new table's, unplaced.
        topology.shards[0].replicas = in_sync_on(&["n0", "n1", "n2"]);
        let n0 = topology.nodes.iter_mut().find(|n| n.name == "n0").unwrap();
        n0.phase = plan::NodePhase::Offline;

        // The cluster's next decision is n0's failover; once it is active (waiting to
        // replace n0's replica), the cluster's next decision waits for it...
        let first = decide(&view, &topology, 0).unwrap().unwrap();
        assert_eq!(first.plan.kind, plan::PlanKind::Failover);
        let failover = Arc::new(plan_of(&view, first).unwrap());
        let cluster = PlanTarget {
            kind: TargetKind::DatabaseCluster,
            name: "main".into(),
        };
        let active = [&failover];
        assert!(matches!(
            admit(PlanPurpose::Placement, "x", &cluster, &active, &topology),
            Admission::Wait
        ));
        // ...but the new table's shard is placed beside it, and only that shard.
        let free = beside(&active, &topology);
        assert!(free.held.contains("t-0000"), "{:?}", free.held);
        assert!(!free.held.contains("t-0001"), "{:?}", free.held);
        let placement = decide_beside(&view, &free).unwrap().unwrap();
        assert_eq!(placement.plan.kind, plan::PlanKind::Placement);
        let shards: BTreeSet<&str> = placement
            .plan
            .steps()
            .flat_map(|s| s.action.shards())
            .collect();
        assert_eq!(shards, BTreeSet::from(["t-0001"]));
        let target = placement.context.target.clone();
        let hash = placement.plan.hash.clone();
        assert!(admit_beside(
            PlanPurpose::Placement,
            &hash,
            &target,
            &active
        ));
        // Once that placement is active, its shard counts as placed: nothing is left to
        // decide beside the two plans, and the same placement is not made twice.
        let placing = Arc::new(plan_of(&view, placement).unwrap());
        let both = [&failover, &placing];
        assert!(!admit_beside(PlanPurpose::Placement, &hash, &target, &both));
        assert!(
            decide_beside(&view, &beside(&both, &topology))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_burst_of_new_shards_is_placed_by_several_plans_that_see_each_others_replicas() {
        let view = unplaced(400);
        let topology = view.topology().0;
        let mut made: Vec<Arc<Plan>> = Vec::new();
        let cluster = PlanTarget {
            kind: TargetKind::DatabaseCluster,
            name: "main".into(),
        };
        loop {
            let active: Vec<&Arc<Plan>> = made.iter().collect();
            let Some(decision) = decide_beside(&view, &beside(&active, &topology)).unwrap() else {
                break;
            };
            if !admit_beside(
                PlanPurpose::Placement,
                &decision.plan.hash,
                &cluster,
                &active,
            ) {
                break;
            }
            made.push(Arc::new(plan_of(&view, decision).unwrap()));
        }
        assert_eq!(made.len(), MAX_PLACEMENTS);
        // No replica is placed by two plans, and the plans together spread the replicas
        // evenly: each saw the replicas the ones before it placed.
        let mut placed = BTreeSet::new();
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for plan in &made {
            for step in plan.spec.steps.iter().filter(|s| s.action == "AddReplica") {
                let action = plan_wire::step_action(step).unwrap();
                let plan::StepAction::AddReplica { shard, node } = action else {
                    unreachable!("an AddReplica step holds an AddReplica action")
                };
                assert!(placed.insert((shard, node.clone())), "placed twice");
                *per_node.entry(node).or_default() += 1;
            }
        }
        let least = per_node.values().min().unwrap();
        let most = per_node.values().max().unwrap();
        assert!(most - least <= 1, "{per_node:?}");
    }

    #[test]
    fn the_dead_nodes_of_a_lost_region_are_decided_one_after_another_without_waiting() {
        let view = unplaced(2);
        let mut topology = view.topology().0;
        // Region r0 (n0, n3, n6) is lost: t-0000 was led by n0, t-0001 by n3.
        for (shard, nodes) in [(0, ["n0", "n1", "n2"]), (1, ["n3", "n4", "n5"])] {
            topology.shards[shard].replicas = in_sync_on(&nodes);
        }
        for node in topology.nodes.iter_mut().filter(|n| n.region == "r0") {
            node.phase = plan::NodePhase::Offline;
        }
        let first = decide(&view, &topology, 0).unwrap().unwrap();
        assert_eq!(first.plan.kind, plan::PlanKind::Failover);
        let first_node = first.context.target.name.clone();
        let first = Arc::new(plan_of(&view, first).unwrap());
        // With the first failover under way (not yet in any cache), the next decision is
        // the other dead node's failover, not the first one again.
        let view = view.with_plans(std::slice::from_ref(&first));
        let second = decide(&view, &topology, 0).unwrap().unwrap();
        assert_eq!(second.plan.kind, plan::PlanKind::Failover);
        assert_ne!(second.context.target.name, first_node);
        assert!(["n0", "n3"].contains(&second.context.target.name.as_str()));
        // It runs beside the first: they share no shard.
        let active = [&first];
        assert!(matches!(
            admit(
                PlanPurpose::Failover,
                &second.plan.hash,
                &second.context.target,
                &active,
                &topology
            ),
            Admission::Create { supersede } if supersede.is_empty()
        ));
    }
}
