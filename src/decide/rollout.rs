//! Rolling restarts: which nodes need one — PostgreSQL parameters waiting for a restart, or a
//! `shardplane.io/restart-requested` annotation not yet answered — and the plan that
//! restarts them in waves (`plan::plan_node_rollout`: primaries handed over first, never two
//! replicas of a shard down, a health gate after each node).
//!
//! A node is left out while a restart asked of it is under way, and while the view of it is
//! older than a restart a plan already made of it (the watch caches of nodes and plans lag
//! independently): each node restarts once per request.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::database_node::{NodeDesiredState, NodeParameters};
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
        let Some(status) = node.status.as_ref() else {
            continue;
        };
        let answered = status.restart.as_ref().and_then(|r| r.on_demand.as_ref());
        if let Some(request) = restart_on_demand(cluster, node)
            && Some(&request) != answered
        {
            asked.insert(node.name().to_owned(), request);
            continue;
        }
        if let Some(parameters) = &status.parameters
            && !parameters.pending_restart.is_empty()
        {
            pending.insert(node.name().to_owned(), parameters.pending_restart.clone());
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

pub(super) fn online(view: &ClusterView) -> impl Iterator<Item = &std::sync::Arc<DatabaseNode>> {
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
    let Some(status) = node.status.as_ref() else {
        return false;
    };
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
    let none = NodeParameters::default();
    for node in online(view) {
        let reported = node
            .status
            .as_ref()
            .and_then(|s| s.parameters.as_ref())
            .unwrap_or(&none);
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

/// The first five of `items` joined for a condition's message, and how many more there are.
pub(super) fn shorten(mut items: Vec<String>) -> String {
    let more = items.len().saturating_sub(5);
    items.truncate(5);
    let mut text = items.join("; ");
    if more > 0 {
        text.push_str(&format!("; and {more} more"));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{Value, json};

    use super::*;

    fn object<K: serde::de::DeserializeOwned>(value: Value) -> K {
        serde_json::from_value(value).unwrap()
    }

    /// Three online nodes holding the three replicas of one shard (n0 leads it), the
    /// cluster at generation 2 with a parameter, each node reporting `node_status` besides
    /// its phase; and `plans`.
    fn view(node_status: &[Value], cluster_annotations: Value, plans: Vec<Plan>) -> ClusterView {
        let cluster = object(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseCluster",
            "metadata": {"name": "main", "namespace": "db", "generation": 2,
                         "annotations": cluster_annotations},
            "spec": {"replicationFactor": 3, "postgresParameters": {"shared_buffers": "64MB"},
                     "regions": [{"name": "r0", "zones": ["r0-a"]}, {"name": "r1", "zones": ["r1-a"]},
                                 {"name": "r2", "zones": ["r2-a"]}]},
        }));
        let nodes = node_status
            .iter()
            .enumerate()
            .map(|(i, status)| {
                let mut status = status.clone();
                status["phase"] = json!("Online");
                Arc::new(object(json!({
                    "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseNode",
                    "metadata": {"name": format!("n{i}"), "namespace": "db"},
                    "spec": {"cluster": "main", "region": format!("r{i}"), "zone": format!("r{i}-a"),
                             "address": "127.0.0.1", "ports": {"first": 20000, "last": 20010},
                             "capacity": {"storageBytes": 1_000_000_000_i64}},
                    "status": status,
                })))
            })
            .collect();
        let table = crate::decide::testkit::table();
        let role = |i: usize| if i == 0 { "Primary" } else { "Secondary" };
        let shard = Arc::new(object(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
            "metadata": {"name": "t-0", "namespace": "db"},
            "spec": {"table": "t", "range": {}},
            "status": {
                "phase": "Serving",
                "primary": {"node": "n0", "epoch": 1},
                "desiredReplicas": (0..3).map(|i| json!({"node": format!("n{i}"), "role": role(i)})).collect::<Vec<_>>(),
                "replicas": (0..3).map(|i| json!({"node": format!("n{i}"), "role": role(i), "state": "InSync", "epoch": 1})).collect::<Vec<_>>(),
            },
        })));
        let plans = plans.into_iter().map(Arc::new).collect();
        ClusterView::of(Arc::new(cluster), nodes, vec![table], vec![shard], plans)
    }

    fn pending(generation: i64) -> Value {
        json!({"parameters": {"observedGeneration": generation, "pendingRestart": ["shared_buffers"]}})
    }

    fn decided(view: &ClusterView) -> Option<Decision> {
        let (topology, invalid) = view.topology();
        assert!(invalid.is_empty(), "{invalid:?}");
        decide(view, &topology).unwrap()
    }

    fn restarted_nodes(decision: &Decision) -> Vec<String> {
        decision
            .plan
            .steps()
            .filter_map(|s| match &s.action {
                plan::StepAction::RestartNode { node, .. } => Some(node.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn parameters_waiting_for_a_restart_restart_every_node_once_all_applied_them() {
        let behind = view(&[pending(2), pending(2), pending(1)], json!({}), Vec::new());
        assert!(
            decided(&behind).is_none(),
            "n2 has not applied generation 2 yet"
        );
        let settled = view(&[pending(2), pending(2), pending(2)], json!({}), Vec::new());
        let decision = decided(&settled).expect("a rolling restart");
        assert_eq!(restarted_nodes(&decision), ["n0", "n1", "n2"]);
        assert!(decision.context.cause.detail.contains("shared_buffers"));
        // The leader hands its primary over before it restarts.
        let first = decision
            .plan
            .operations
            .iter()
            .find(|op| op.subject == "n0")
            .unwrap();
        assert!(matches!(
            first.steps[0].action,
            plan::StepAction::TransferPrimary { .. }
        ));
        // Waves: no two replicas of the shard down at once.
        let waves: BTreeSet<u32> = decision.plan.operations.iter().map(|op| op.wave).collect();
        assert_eq!(waves.len(), 3);
    }

    #[test]
    fn a_node_restarting_or_seen_before_its_last_restart_is_left_out() {
        let under_way = json!({"parameters": {"observedGeneration": 2, "pendingRestart": ["shared_buffers"]},
                               "restart": {"plan": "main-noderollout-1"}, "restartedFor": "main-noderollout-0"});
        let decision = decided(&view(
            &[under_way, pending(2), pending(2)],
            json!({}),
            Vec::new(),
        ))
        .expect("the others restart");
        assert_eq!(restarted_nodes(&decision), ["n1", "n2"]);

        // A plan restarted n1 after the restart n1's status names: the view of n1 is stale.
        let earlier = json!({"parameters": {"observedGeneration": 2, "pendingRestart": ["shared_buffers"]},
                             "restart": {"plan": "p-old"}, "restartedFor": "p-old"});
        let done: Plan = object(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Plan",
            "metadata": {"name": "p-new", "namespace": "db", "creationTimestamp": "2026-12-05T10:00:00Z"},
            "spec": {"cluster": "main", "target": {"kind": "DatabaseCluster", "name": "main"},
                     "purpose": "NodeRollout", "risk": "Disruptive", "hash": "0".repeat(64), "summary": "s",
                     "cause": {"kind": "Policy", "detail": "d"},
                     "steps": [{"id": 0, "wave": 0, "operation": 0, "action": "RestartNode", "node": "n1",
                                "detail": "{\"RestartNode\":{\"node\":\"n1\",\"request\":\"r\"}}", "reason": "r"}]},
            "status": {"phase": "Succeeded", "steps": [{"id": 0, "phase": "Succeeded", "attempts": 1}]},
        }));
        let decision = decided(&view(
            &[pending(2), earlier, pending(2)],
            json!({}),
            vec![done],
        ))
        .expect("the others restart");
        assert_eq!(restarted_nodes(&decision), ["n0", "n2"]);
    }

    #[test]
    fn an_on_demand_request_restarts_until_answered_and_only_once() {
        let asked = json!({"shardplane.io/restart-requested": "2026-12-05"});
        let decision = decided(&view(
            &[json!({}), json!({}), json!({})],
            asked.clone(),
            Vec::new(),
        ))
        .expect("a rolling restart");
        assert_eq!(restarted_nodes(&decision), ["n0", "n1", "n2"]);
        assert!(decision.context.cause.detail.contains("cluster=2026-12-05"));
        let answered = json!({"restart": {"plan": "p", "onDemand": "cluster=2026-12-05"}, "restartedFor": "p"});
        let view = view(
            &[answered.clone(), answered.clone(), answered],
            asked,
            Vec::new(),
        );
        assert!(decided(&view).is_none());
    }

    #[test]
    fn the_condition_names_refused_and_waiting_parameters() {
        let refused = json!({"parameters": {"observedGeneration": 2,
            "rejected": [{"name": "shared_buffers", "reason": "invalid value"}]}});
        let observation = parameters_observation(&view(
            &[refused, pending(2), json!({})],
            json!({}),
            Vec::new(),
        ));
        assert_eq!(
            (observation.holds, observation.reason),
            (false, "ParametersRejected")
        );
        assert!(
            observation
                .message
                .contains("shared_buffers on n0: invalid value")
        );
        let observation = parameters_observation(&view(
            &[pending(2), pending(2), json!({})],
            json!({}),
            Vec::new(),
        ));
        assert_eq!(observation.reason, "RestartPending");
        assert!(observation.message.contains("shared_buffers on n0, n1"));
        let applied = json!({"parameters": {"observedGeneration": 2, "effective": {"shared_buffers": "64MB"}}});
        let observation = parameters_observation(&view(
            &[applied.clone(), applied.clone(), json!({})],
            json!({}),
            Vec::new(),
        ));
        assert_eq!((observation.holds, observation.reason), (false, "Applying"));
        let observation = parameters_observation(&view(
            &[applied.clone(), applied.clone(), applied],
            json!({}),
            Vec::new(),
        ));
        assert!(observation.holds);
    }
}
