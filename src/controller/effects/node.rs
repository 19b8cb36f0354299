//! Node steps: a node leaving the cluster once it holds nothing. Software rollouts
//! (restart, upgrade, health gate) are refused until the agents can carry them out.

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::api::{DatabaseNode, NodePhase, Shard};
use crate::plan::StepAction;

use super::super::context::Context;
use super::super::error::Doing;
use super::{Progress, StepError};

/// Applies a node step's effect (idempotently) and reports whether it holds.
pub async fn advance(
    ctx: &Context,
    namespace: &str,
    action: &StepAction,
) -> Result<Progress, StepError> {
    match action {
        StepAction::RemoveNode { node } => {
            let shards: Api<Shard> = Api::namespaced(ctx.client.clone(), namespace);
            let shards_on_node = shards
                .list(&Default::default())
                .await
                .doing(|| format!("list the Shards of namespace {namespace}"))?
                .items
                .into_iter()
                .filter(|s| {
                    s.status
                        .as_ref()
                        .is_some_and(|st| st.desired_replicas.iter().any(|r| &r.node == node))
                })
                .map(|s| s.name_any())
                .collect::<Vec<_>>();
            if !shards_on_node.is_empty() {
                return Err(StepError::Permanent(format!(
                    "node {node} still holds replicas of {}; it cannot leave the cluster",
                    shards_on_node.join(", ")
                )));
            }
            ctx.leader.ensure()?;
            let nodes: Api<DatabaseNode> = Api::namespaced(ctx.client.clone(), namespace);
            let patch = json!({"status": {"phase": NodePhase::Decommissioned, "replicas": 0, "primaries": 0}});
            nodes
                .patch_status(node, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .doing(|| format!("mark DatabaseNode {namespace}/{node} Decommissioned"))?;
            Ok(Progress::Done)
        }
        other => Err(StepError::Permanent(format!(
            "{} needs data-plane support this operator build does not have yet; nothing was changed",
            serde_json::to_string(other).unwrap_or_default()
        ))),
    }
}
