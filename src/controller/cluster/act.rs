//! What the cluster reconciler does to the world once it has decided: creates the decided
//! plan (superseding the plans it replaces), prunes finished plans, keeps node finalizers.
//! Every write is made by the leader only. A plan created or superseded is one log line
//! each, and a plan created is timed from the event that needed it.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::api::plan::{PlanPhase, PlanPurpose};
use crate::api::{DatabaseNode, Plan, Shard};
use crate::decide::cluster::{
    Admission, MAX_DECISIONS_BESIDE, admit, admit_beside, beside, decide_beside, history_to_prune,
    node_finalizers,
};
use crate::decide::plan_wire::Decision;
use crate::decide::{self, ClusterView};
use crate::plan::Topology;

use super::super::context::Context;
use super::super::error::{ApiError, Doing};
use super::super::metrics::{decision_event, object_key, purpose_label};
use super::ClusterError;

/// How often a superseded split or merge is made again before it is left to the user.
const MAX_REMAKES: usize = 5;

/// Creates the decided plan unless it exists or a running plan finishes first
/// ([`admit`]), superseding the plans it replaces; a failover runs beside the plans that do
/// not touch its dead node. Returns the plan if it created it.
pub async fn persist(
    ctx: &Context,
    view: &ClusterView,
    topology: &Topology,
    decision: Decision,
    active: &[&Arc<Plan>],
) -> Result<Option<Plan>, ClusterError> {
    let purpose = decide::plan_wire::purpose(decision.plan.kind);
    let admission = admit(
        purpose,
        &decision.plan.hash,
        &decision.context.target,
        active,
        topology,
    );
    let supersede_all = match admission {
        Admission::Wait => return Ok(None),
        Admission::Create { supersede } => supersede,
    };
    let object = plan_object(view, decision)?;
    let name = object.name_any();
    for plan in supersede_all {
        supersede(
            ctx,
            plan,
            &format!("superseded by plan {name}: its inputs changed before it finished"),
        )
        .await?;
    }
    create(ctx, view, object).await
}

/// Creates the plans to run beside the active ones ([`decide_beside`]): up to
/// [`MAX_DECISIONS_BESIDE`], each decided with the active plans and those created before it
/// in view ([`beside`]) and admitted by [`admit_beside`].
pub async fn persist_beside(
    ctx: &Context,
    view: &ClusterView,
    topology: &Topology,
    active: &[&Arc<Plan>],
) -> Result<(), ClusterError> {
    let mut made: Vec<Arc<Plan>> = Vec::new();
    while made.len() < MAX_DECISIONS_BESIDE {
        let all: Vec<&Arc<Plan>> = active.iter().copied().chain(&made).collect();
        let decision =
            decide_beside(view, &beside(&all, topology)).map_err(|source| ClusterError::Plan {
                cluster: view.name().to_owned(),
                source,
            })?;
        let Some(decision) = decision else {
            return Ok(());
        };
        let purpose = decide::plan_wire::purpose(decision.plan.kind);
        let target = &decision.context.target;
        if !admit_beside(purpose, &decision.plan.hash, target, &all) {
            return Ok(());
        }
        match create(ctx, view, plan_object(view, decision)?).await? {
            Some(plan) => made.push(Arc::new(plan)),
            None => return Ok(()),
        }
    }
    Ok(())
}

/// The `Plan` object of `decision`, owned by the cluster.
fn plan_object(view: &ClusterView, decision: Decision) -> Result<Plan, ClusterError> {
    let cluster = view.cluster.as_ref();
    let encode = |source| ClusterError::Encode {
        cluster: cluster.name_any(),
        source,
    };
    let mut object = decide::cluster::plan_of(view, decision).map_err(encode)?;
    object.metadata.owner_references = cluster.controller_owner_ref(&()).map(|o| vec![o]);
    Ok(object)
}

/// Creates `object`, unless the same change was planned before (a split or merge that a
/// failover superseded before its switch is made again); returns it if it created it.
async fn create(
    ctx: &Context,
    view: &ClusterView,
    mut object: Plan,
) -> Result<Option<Plan>, ClusterError> {
    let cluster = view.cluster.as_ref();
    let purpose = object.spec.purpose;
    let name = object.name_any();
    ctx.leader.ensure()?;
    let namespace = cluster.namespace().unwrap_or_default();
    let plans: Api<Plan> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut attempt = 1;
    loop {
        match plans.create(&PostParams::default(), &object).await {
            Ok(_) => break,
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // The same change was planned before. A split or merge that a failover
                // superseded before its switch is made again (its approval by hash still
                // holds: it is the same change); anything else that ended stays ended.
                let existing = plans
                    .get_opt(&object.name_any())
                    .await
                    .doing(|| format!("read Plan {}/{}", namespace, object.name_any()))?;
                let superseded = existing
                    .and_then(|p| p.status)
                    .is_some_and(|s| s.phase == Some(PlanPhase::Superseded));
                if purpose != PlanPurpose::Reshard || !superseded || attempt >= MAX_REMAKES {
                    return Ok(None);
                }
                attempt += 1;
                object.metadata.name = Some(format!("{name}-{attempt}"));
            }
            Err(source) => {
                let action = format!("create Plan {namespace}/{}", object.name_any());
                return Err(ApiError { action, source }.into());
            }
        }
    }
    ctx.plans_created.created(&namespace, &object.name_any());
    let created = Timestamp::now();
    ctx.metrics.plan_created(
        object_key(&object),
        purpose,
        decision_event(view, &object.spec),
        created,
    );
    if purpose == PlanPurpose::Failover {
        ctx.metrics.failovers.inc();
    }
    let spec = &object.spec;
    tracing::info!(
        plan = %object.name_any(),
        %namespace,
        cluster = %cluster.name_any(),
        purpose = %purpose_label(purpose),
        risk = ?spec.risk,
        steps = spec.steps.len(),
        hash = %spec.hash,
        target = format_args!("{:?}/{}", spec.target.kind, spec.target.name),
        cause = ?spec.cause.kind,
        commit = spec.cause.commit.as_deref().map(tracing::field::display),
        why = spec.cause.detail.as_str(),
        "plan created"
    );
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
    Ok(Some(object))
}

/// Marks `plan` Superseded with `message`, conditional on the version this reconciler saw:
/// if the executor moved the plan meanwhile (approved it, started it), the write fails and
/// the decision is taken again on fresh state.
pub async fn supersede(ctx: &Context, plan: &Plan, message: &str) -> Result<(), ClusterError> {
    ctx.leader.ensure()?;
    let namespace = plan.namespace().unwrap_or_default();
    let plans: Api<Plan> = Api::namespaced(ctx.client.clone(), &namespace);
    let condition = json!({
        "type": "Ready", "status": "False", "reason": "Superseded", "message": message,
        "lastTransitionTime": Time(Timestamp::now()),
    });
    let patch = json!({
        "metadata": {"resourceVersion": plan.resource_version()},
        "status": {"phase": PlanPhase::Superseded, "conditions": [condition]},
    });
    plans
        .patch_status(
            &plan.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
        .doing(|| format!("mark Plan {namespace}/{} Superseded", plan.name_any()))?;
    ctx.metrics.plan_ended(&object_key(plan));
    tracing::info!(
        plan = %plan.name_any(),
        %namespace,
        cluster = %plan.spec.cluster,
        purpose = %purpose_label(plan.spec.purpose),
        why = message,
        "plan superseded"
    );
    ctx.event(plan, false, "PlanSuperseded", message.to_string())
        .await;
    Ok(())
}

/// Deletes the finished plans beyond the cluster's history.
pub async fn prune_history(ctx: &Context, view: &ClusterView) -> Result<(), ClusterError> {
    for plan in history_to_prune(view) {
        ctx.leader.ensure()?;
        let namespace = plan.namespace().unwrap_or_default();
        let plans: Api<Plan> = Api::namespaced(ctx.client.clone(), &namespace);
        match plans
            .delete(&plan.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(source) => {
                let action = format!("delete Plan {namespace}/{}", plan.name_any());
                return Err(ApiError { action, source }.into());
            }
        }
    }
    Ok(())
}

/// Keeps the drain-before-delete finalizer on every node, and lifts it from a deleted node
/// once no replica is left on it — as the API server has it now, not only the watch caches:
/// a cache that had not yet seen the executor's last replica on the node released a node
/// still holding replicas (CI-equivalent run 11).
pub async fn guard_node_deletion(
    ctx: &Context,
    view: &ClusterView,
    topology: &Topology,
) -> Result<(), ClusterError> {
    for (node, wanted) in node_finalizers(view, topology) {
        let releasing = node.metadata.deletion_timestamp.is_some();
        if releasing && holds_replicas_now(ctx, node).await? {
            continue;
        }
        ctx.set_finalizers::<_, ClusterError>(node.as_ref(), wanted)
            .await?;
        if releasing {
            ctx.event(
                node.as_ref(),
                false,
                "NodeRemoved",
                format!(
                    "{} holds no replica; it leaves the cluster",
                    node.name_any()
                ),
            )
            .await;
        }
    }
    Ok(())
}

/// Whether any Shard of `node`'s namespace, read from the API server now, wants a replica
/// on it. A LIST, made only when a deleted node is about to be released.
async fn holds_replicas_now(ctx: &Context, node: &DatabaseNode) -> Result<bool, ClusterError> {
    let namespace = node.namespace().unwrap_or_default();
    let shards: Api<Shard> = Api::namespaced(ctx.client.clone(), &namespace);
    let list = shards
        .list(&Default::default())
        .await
        .doing(|| format!("list the Shards of namespace {namespace}"))?;
    let name = node.name_any();
    Ok(list.items.iter().any(|shard| {
        shard
            .status
            .as_ref()
            .is_some_and(|status| status.desired_replicas.iter().any(|r| r.node == name))
    }))
}
