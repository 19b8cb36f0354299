//! The plan the operator will make once the head commit is applied: the live cluster with
//! the head's declared specs laid over it (what git-sync would leave behind), handed to the
//! operator's own decision function, `decide::cluster::decide`. The hash shown is therefore the
//! hash of the `Plan` the operator creates from the same state, and a pull request can
//! approve exactly it. No I/O.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::snapshot::Snapshot;
use crate::api::database_cluster::Approval;
use crate::api::plan::RiskClass;
use crate::decide::ClusterView;
use crate::decide::approval::{approval_needed, kind_name};
use crate::decide::cluster::decide;
use crate::decide::plan_wire::{self, plan_name};
use crate::protocol::APPROVE_ANNOTATION;

/// The operator's next plan for one cluster after the change.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorPlan {
    /// The DatabaseCluster.
    pub cluster: String,
    /// The name the `Plan` object will have.
    pub name: String,
    /// What it is for (`Decommission`, `Drain`, `Placement`, ...).
    pub purpose: String,
    /// The object it changes, as `Kind/name`: where an approval annotation goes.
    pub target: String,
    /// Its risk class.
    pub risk: RiskClass,
    /// Its content hash: what `shardplane.io/approve-plan` must carry.
    pub hash: String,
    /// Whether it waits for approval under the cluster's policy.
    pub needs_approval: bool,
    /// Whether the approval is already in the head commit (the target's annotation carries
    /// this hash).
    pub approved_in_head: bool,
    /// One line for humans.
    pub summary: String,
    /// The steps, one line each.
    pub steps: Vec<String>,
    /// What the planner could not handle.
    pub blocked: Vec<String>,
    /// Whether the change causes it (without the change the operator's next plan differs);
    /// `false` means the operator would make it anyway.
    pub caused_by_change: bool,
}

/// The operator's next plan, per DatabaseCluster declared at base or head, once `head` is
/// applied over `live` (`base` tells what git declared before: objects it declared that
/// the head drops are pruned). `now_ms` is the clock given to the planner (the head
/// commit's time: it only reaches failover plans, which never wait for approval). Returns
/// the plans and, per cluster that cannot be planned, why.
pub fn operator_plans(
    live: &Snapshot,
    base: &Snapshot,
    head: &Snapshot,
    now_ms: u64,
) -> (Vec<OperatorPlan>, Vec<String>) {
    let after = desired(live, base, head, now_ms);
    let before = desired(live, base, base, now_ms);
    let declared: BTreeSet<String> = base
        .clusters
        .iter()
        .chain(&head.clusters)
        .map(ResourceExt::name_any)
        .collect();
    let mut plans = Vec::new();
    let mut problems = Vec::new();
    for cluster in after
        .clusters
        .iter()
        .filter(|c| declared.contains(&c.name_any()))
    {
        let next = |state: &Snapshot| {
            let view = state.view_of(&cluster.name_any());
            view.map(|view| {
                let (topology, _) = view.topology();
                decide(&view, &topology, now_ms)
            })
        };
        let decision = match next(&after) {
            Some(Ok(Some(decision))) if !decision.plan.operations.is_empty() => decision,
            Some(Ok(_)) | None => continue,
            Some(Err(error)) => {
                problems.push(format!(
                    "the operator cannot plan cluster {}: {error}",
                    cluster.name_any()
                ));
                continue;
            }
        };
        let unchanged = matches!(
            next(&before),
            Some(Ok(Some(ref old))) if old.plan.hash == decision.plan.hash
        );
        let purpose = plan_wire::purpose(decision.plan.kind);
        let risk = plan_wire::risk(decision.plan.risk);
        let target = &decision.context.target;
        let approved_in_head = annotation_of(head, kind_name(target.kind), &target.name)
            .is_some_and(|hash| hash == decision.plan.hash);
        plans.push(OperatorPlan {
            cluster: cluster.name_any(),
            name: plan_name(&cluster.name_any(), purpose, &decision.plan.hash),
            purpose: format!("{purpose:?}"),
            target: format!("{}/{}", kind_name(target.kind), target.name),
            risk,
            needs_approval: approval_needed(purpose, risk, cluster.spec.approval.as_ref())
                == Approval::Manual,
            approved_in_head,
            summary: decision.context.summary.clone(),
            steps: decision
                .plan
                .steps()
                .map(|step| super::diff::step_line(&step.action, step.risk))
                .collect(),
            blocked: decision
                .plan
                .blocked
                .iter()
                .map(|b| format!("{}: {}", b.subject, b.reason))
                .collect(),
            hash: decision.plan.hash,
            caused_by_change: !unchanged,
        });
    }
    (plans, problems)
}

impl Snapshot {
    /// The operator's view of cluster `name` in this state, if it has that cluster.
    fn view_of(&self, name: &str) -> Option<ClusterView> {
        let cluster = self.clusters.iter().find(|c| c.name_any() == name)?;
        Some(ClusterView::of(
            Arc::new(cluster.clone()),
            arcs(&self.nodes),
            arcs(&self.tables),
            arcs(&self.shards),
            Vec::new(),
        ))
    }
}

fn arcs<K: Clone>(objects: &[K]) -> Vec<Arc<K>> {
    objects.iter().cloned().map(Arc::new).collect()
}

/// The `shardplane.io/approve-plan` annotation of `Kind/name` in a commit's manifests.
fn annotation_of(snapshot: &Snapshot, kind: &str, name: &str) -> Option<String> {
    fn find<K: Resource>(objects: &[K], name: &str) -> Option<String> {
        objects
            .iter()
            .find(|o| o.meta().name.as_deref() == Some(name))
            .and_then(|o| {
                o.meta()
                    .annotations
                    .as_ref()?
                    .get(APPROVE_ANNOTATION)
                    .cloned()
            })
    }
    match kind {
        "DatabaseCluster" => find(&snapshot.clusters, name),
        "DatabaseNode" => find(&snapshot.nodes, name),
        "Table" => find(&snapshot.tables, name),
        "Shard" => find(&snapshot.shards, name),
        _ => None,
    }
}

/// The cluster as git-sync leaves it after applying `head`: every object `head` declares
/// with `head`'s spec and annotations over its live status; objects `base` declared and
/// `head` does not are pruned — gone, or, for kinds a finalizer holds (nodes, tables),
/// terminating; objects git never declared stay as they are.
fn desired(live: &Snapshot, base: &Snapshot, head: &Snapshot, now_ms: u64) -> Snapshot {
    let deleted_at = Timestamp::from_millisecond(i64::try_from(now_ms).unwrap_or(0))
        .map(Time)
        .ok();
    Snapshot {
        clusters: applied(&live.clusters, &base.clusters, &head.clusters, None),
        nodes: applied(&live.nodes, &base.nodes, &head.nodes, deleted_at.clone()),
        tables: applied(&live.tables, &base.tables, &head.tables, deleted_at),
        shards: applied(&live.shards, &base.shards, &head.shards, None),
        schema_versions: live.schema_versions.clone(),
        problems: Vec::new(),
    }
}

/// One kind of [`desired`]; `held`: the deletion time of pruned objects a finalizer keeps,
/// `None` for kinds that go at once.
fn applied<K>(live: &[K], base: &[K], head: &[K], held: Option<Time>) -> Vec<K>
where
    K: Resource + Clone + Serialize + DeserializeOwned,
{
    let named = |objects: &[K], name: &str| -> Option<K> {
        objects.iter().find(|o| o.name_any() == name).cloned()
    };
    let mut result = Vec::new();
    for object in live {
        let name = object.name_any();
        match (named(head, &name), named(base, &name)) {
            (Some(declared), _) => result.push(with_declared(object, &declared)),
            (None, Some(_)) => {
                if let Some(at) = &held {
                    let mut terminating = object.clone();
                    terminating.meta_mut().deletion_timestamp = Some(at.clone());
                    result.push(terminating);
                }
            }
            (None, None) => result.push(object.clone()),
        }
    }
    for declared in head {
        if named(live, &declared.name_any()).is_none() {
            result.push(declared.clone());
        }
    }
    result
}

/// `live` with `declared`'s spec and annotations: what a server-side apply of the manifest
/// leaves (git-sync owns exactly the fields git declares).
fn with_declared<K>(live: &K, declared: &K) -> K
where
    K: Resource + Clone + Serialize + DeserializeOwned,
{
    let (Ok(mut value), Ok(declared_value)) =
        (serde_json::to_value(live), serde_json::to_value(declared))
    else {
        return declared.clone();
    };
    if let Some(spec) = declared_value.get("spec") {
        value["spec"] = spec.clone();
    }
    let mut merged = serde_json::from_value::<K>(value).unwrap_or_else(|_| declared.clone());
    if let Some(annotations) = &declared.meta().annotations {
        merged
            .meta_mut()
            .annotations
            .get_or_insert_with(Default::default)
            .extend(annotations.clone());
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DatabaseNode, NodePhase};
    use serde_json::json;

    fn node(name: &str, desired_state: Option<&str>, phase: Option<&str>) -> DatabaseNode {
        let mut value = json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseNode",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"cluster": "c", "region": "r", "zone": "z", "address": "127.0.0.1",
                     "ports": {"first": 1, "last": 2}, "capacity": {"storageBytes": 1}}
        });
        if let Some(state) = desired_state {
            value["spec"]["desiredState"] = json!(state);
        }
        if let Some(phase) = phase {
            value["status"] = json!({"phase": phase});
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_head_spec_lands_on_the_live_status_and_pruned_nodes_terminate() {
        let live = vec![
            node("a", None, Some("Online")),
            node("b", None, Some("Online")),
            node("c", None, Some("Online")),
        ];
        let base = vec![node("a", None, None), node("b", None, None)];
        let head = vec![
            node("a", Some("Decommissioned"), None),
            node("d", None, None),
        ];
        let at = Timestamp::from_millisecond(5_000).map(Time).ok();
        let result = applied(&live, &base, &head, at);
        let names: Vec<String> = result.iter().map(ResourceExt::name_any).collect();
        // a: declared; b: pruned but held; c: not git's; d: new.
        assert_eq!(names, ["a", "b", "c", "d"]);
        let a = &result[0];
        assert_eq!(
            format!("{:?}", a.spec.desired_state),
            "Some(Decommissioned)"
        );
        assert_eq!(
            a.status.as_ref().and_then(|s| s.phase),
            Some(NodePhase::Online)
        );
        assert!(result[1].metadata.deletion_timestamp.is_some());
        assert!(result[2].metadata.deletion_timestamp.is_none());
        assert!(result[3].status.is_none());
    }

    #[test]
    fn pruned_objects_no_finalizer_holds_are_gone() {
        let live = vec![node("a", None, Some("Online"))];
        let base = vec![node("a", None, None)];
        assert!(applied(&live, &base, &[], None).is_empty());
    }
}
