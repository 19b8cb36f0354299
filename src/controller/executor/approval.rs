//! What approval of a plan depends on, read from the API: the cluster's policy and the
//! marks on the plan's target object. The verdict itself is `decide::approval::verdict`.

use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, ResourceExt};

use crate::api::database_cluster::Approval;
use crate::api::{DatabaseCluster, Plan};
use crate::decide::approval::{TargetMarks, Verdict, approval_needed, kind_name, verdict};
use crate::protocol::{APPROVE_ANNOTATION, SOURCE_COMMIT_ANNOTATION};

use super::super::context::Context;
use super::super::error::Doing;
use super::ExecutorError;

/// Whether `plan` may run now. The target object is read only when the plan waits for a
/// human and carries no approval of its own.
pub async fn approval(ctx: &Context, plan: &Plan) -> Result<Verdict, ExecutorError> {
    let namespace = plan.namespace().unwrap_or_default();
    let clusters: Api<DatabaseCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let policy = clusters
        .get_opt(&plan.spec.cluster)
        .await
        .doing(|| format!("read DatabaseCluster {namespace}/{}", plan.spec.cluster))?
        .and_then(|c| c.spec.approval);
    let manual =
        approval_needed(plan.spec.purpose, plan.spec.risk, policy.as_ref()) == Approval::Manual;
    let marks = if manual && plan.spec.approval.is_none() {
        target_marks(ctx, plan).await?
    } else {
        TargetMarks::default()
    };
    Ok(verdict(plan, policy.as_ref(), &marks))
}

/// The approval annotation on the plan's target object, if any, and the git commit
/// git-sync stamped on the target, if it came from git.
async fn target_marks(ctx: &Context, plan: &Plan) -> Result<TargetMarks, ExecutorError> {
    let kind = kind_name(plan.spec.target.kind);
    let plural = format!("{}s", kind.to_lowercase());
    let gvk = GroupVersionKind::gvk(crate::api::GROUP, crate::api::VERSION, kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, &plural);
    let namespace = plan.namespace().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &namespace, &resource);
    let name = &plan.spec.target.name;
    let target = api.get_opt(name).await.doing(|| {
        format!(
            "read {kind} {namespace}/{name}, the target of Plan {}",
            plan.name_any()
        )
    })?;
    let annotation = |key: &str| target.as_ref()?.annotations().get(key).cloned();
    Ok(TargetMarks {
        approve: annotation(APPROVE_ANNOTATION),
        commit: annotation(SOURCE_COMMIT_ANNOTATION),
    })
}
