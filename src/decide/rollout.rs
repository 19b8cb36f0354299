//! Rolling restarts: which nodes need one — PostgreSQL parameters waiting for a restart, or a
//! `shardplane.io/restart-requested` annotation not yet answered — and the plan that
//! restarts them in waves (`plan::plan_node_rollout`: primaries handed over first, never two
//! replicas of a shard down, a health gate after each node).
//!
//! A node is left out while a restart asked of it is under way, and while the view of it is
//! older than a restart a plan already made of it (the watch caches of nodes and plans lag
//! independently): each node restarts once per request.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::database_node::NodeDesiredState;
use crate::api::plan::{PlanTarget, StepPhase, TargetKind};
use crate::api::{DatabaseNode, NodePhase, Plan};
use crate::plan::{self, NodeWork, PlanError, RolloutPolicy, Topology};

use super::conditions::Observation;
use super::domain::{desired_state, restart_on_demand};
use super::plan_wire::{self, Decision, MAX_PLAN_STEPS, PlanContext, change_cause};
use super::{ClusterView, Object};

/// The rolling restart the cluster needs now, if any: an on-demand request first, else the
/// parameters waiting for a restart.
pub fn decide(view: &ClusterView, topology: &Topology) -> Result<Option<Decision>, PlanError> {
    let cluster = view.cluster.as_ref();
    let mut asked: BTreeMap<String, String> = BTreeMap::new();
    let mut pending: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for node in view.nodes.iter().filter(|n| restartable(view, n)) {
        let status = node.status.clone().unwrap_or_default();
        let answered = status.restart.as_ref().and_then(|r| r.on_demand.clone());
        if let Some(request) = restart_on_demand(cluster, node)
            && Some(&request) != answered.as_ref()
        {
            asked.insert(node.name().to_owned(), request);
            continue;
        }
        let waiting = status
            .parameters
            .map(|p| p.pending_restart)
            .unwrap_or_default();
        if !waiting.is_empty() {
            pending.insert(node.name().to_owned(), waiting);
        }
    }
    let (nodes, request, detail) = if !asked.is_empty() {
        let requests: BTreeSet<&String> = asked.values().collect();
        let request = format!(
            "on demand: {}",
            requests.into_iter().cloned().collect::<Vec<_>>().join("; ")
        );
        let detail = format!("{request} (annotation shardplane.io/restart-requested)");
        (asked.into_keys().collect::<Vec<_>>(), request, detail)
    } else if !pending.is_empty() && parameters_settled(view) {
        let names: BTreeSet<&String> = pending.values().flatten().collect();
        let names = names.into_iter().cloned().collect::<Vec<_>>().join(", ");
        let generation = cluster.metadata.generation.unwrap_or(0);
        let request = format!("parameters of generation {generation}: {names}");
        let detail = format!("spec.postgresParameters changed: {names} take effect at a restart");
        (pending.into_keys().collect(), request, detail)
    } else {
        return Ok(None);
    };
    let work = NodeWork::Restart { request };
    let rollout = plan::plan_node_rollout(topology, &nodes, &work, &RolloutPolicy::default())?
        .first_steps(MAX_PLAN_STEPS);
    if rollout.operations.is_empty() {
        return Ok(None);
    }
    let target = match nodes.as_slice() {
        [one] => PlanTarget {
            kind: TargetKind::DatabaseNode,
            name: one.clone(),
        },
        _ => PlanTarget {
            kind: TargetKind::DatabaseCluster,
            name: view.name().to_owned(),
        },
    };
    let summary = format!(
        "rolling restart of {} node(s) in {} wave(s)",
        rollout.operations.len(),
        rollout
            .operations
            .iter()
            .map(|op| op.wave)
            .max()
            .map_or(0, |w| w + 1)
    );
    Ok(Some(Decision {
        context: PlanContext {
            cluster: view.name().to_owned(),
            target,
            cause: change_cause(cluster, detail),
            summary,
            facts: BTreeMap::from([("nodes".to_owned(), nodes.join(", "))]),
        },
        plan: rollout,
    }))
}

/// Whether every online node has applied (or refused) the cluster's newest parameters: a
/// restart for them is planned once, for every node that needs it.
fn parameters_settled(view: &ClusterView) -> bool {
    let generation = view.cluster.metadata.generation;
    online(view).all(|node| applied_generation(node) >= generation)
}

fn online(view: &ClusterView) -> impl Iterator<Item = &std::sync::Arc<DatabaseNode>> {
    view.nodes
        .iter()
        .filter(|n| n.status.as_ref().and_then(|s| s.phase) == Some(NodePhase::Online))
}

/// The cluster generation whose parameters `node` reports applied.
fn applied_generation(node: &DatabaseNode) -> Option<i64> {
    node.status
        .as_ref()?
        .parameters
        .as_ref()?
        .observed_generation
}

/// Whether `node` may be asked for a restart now: online, staying in the cluster, no restart
/// under way, and seen at least as recently as the last restart a plan made of it.
fn restartable(view: &ClusterView, node: &DatabaseNode) -> bool {
    let status = node.status.clone().unwrap_or_default();
    let staying = !matches!(
        desired_state(node),
        Some(NodeDesiredState::Drained | NodeDesiredState::Decommissioned)
    );
    let under_way = status
        .restart
        .as_ref()
        .is_some_and(|r| Some(&r.plan) != status.restarted_for.as_ref());
    let last = status.restart.as_ref().map(|r| r.plan.as_str());
    staying
        && status.phase == Some(NodePhase::Online)
        && !under_way
        && !restarted_since(view, node.name(), last)
}

/// Whether a plan newer than `last` (the plan the node's status names) restarted `node`: then
/// the view of the node predates that restart.
fn restarted_since(view: &ClusterView, node: &str, last: Option<&str>) -> bool {
    let created = |plan: &Plan| plan.metadata.creation_timestamp.clone().map(|t| t.0);
    let last_created = last
        .and_then(|name| view.plans.iter().find(|p| p.name() == name))
        .and_then(|p| created(p));
    view.plans
        .iter()
        .filter(|p| Some(p.name()) != last)
        .filter(|p| restarted(p, node))
        .any(|p| last_created.is_none() || created(p) > last_created)
}

/// Whether `plan`'s restart of `node` succeeded.
fn restarted(plan: &Plan, node: &str) -> bool {
    let Some(status) = plan.status.as_ref() else {
        return false;
    };
    plan.spec.steps.iter().any(|step| {
        step.node.as_deref() == Some(node)
            && plan_wire::step_action(step)
                .is_ok_and(|a| matches!(a, plan::StepAction::RestartNode { .. }))
            && status
                .steps
                .iter()
                .any(|s| s.id == step.id && s.phase == StepPhase::Succeeded)
    })
}

/// The cluster's `ParametersApplied` condition from what its online nodes report: refused
/// parameters first (named with PostgreSQL's reason), then parameters waiting for a restart,
/// then nodes that have not applied the newest set yet.
pub fn parameters_observation(view: &ClusterView) -> Observation<'static> {
    let wanted = &view.cluster.spec.postgres_parameters;
    let generation = view.cluster.metadata.generation;
    let mut refused = Vec::new();
    let mut waiting: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut behind = Vec::new();
    for node in online(view) {
        let reported = node
            .status
            .as_ref()
            .and_then(|s| s.parameters.clone())
            .unwrap_or_default();
        for rejected in &reported.rejected {
            refused.push(format!(
                "{} on {}: {}",
                rejected.name,
                node.name(),
                rejected.reason
            ));
        }
        for name in &reported.pending_restart {
            waiting.entry(name.clone()).or_default().push(node.name());
        }
        if reported.observed_generation < generation {
            behind.push(node.name());
        }
    }
    let shorten = |mut items: Vec<String>| {
        let more = items.len().saturating_sub(5);
        items.truncate(5);
        let mut text = items.join("; ");
        if more > 0 {
            text.push_str(&format!("; and {more} more"));
        }
        text
    };
    if !refused.is_empty() {
        return Observation {
            type_: "ParametersApplied",
            holds: false,
            reason: "ParametersRejected",
            message: format!(
                "PostgreSQL refused spec.postgresParameters, so the previous parameters stay in force: {}",
                shorten(refused)
            ),
        };
    }
    if !waiting.is_empty() {
        let items = waiting
            .iter()
            .map(|(name, nodes)| format!("{name} on {}", nodes.join(", ")))
            .collect();
        return Observation {
            type_: "ParametersApplied",
            holds: false,
            reason: "RestartPending",
            message: format!(
                "waiting for a rolling restart (a NodeRollout plan): {}",
                shorten(items)
            ),
        };
    }
    if !behind.is_empty() {
        return Observation {
            type_: "ParametersApplied",
            holds: false,
            reason: "Applying",
            message: format!(
                "not yet in force on {}",
                shorten(behind.into_iter().map(str::to_owned).collect())
            ),
        };
    }
    Observation {
        type_: "ParametersApplied",
        holds: true,
        reason: "Applied",
        message: format!(
            "{} parameter(s) of spec.postgresParameters in force on every online node",
            wanted.len()
        ),
    }
}
