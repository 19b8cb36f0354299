//! Replica steps: add a replica, wait for it to catch up, move or promote the primary, remove
//! a replica. Each writes the shard's desired replica set and primary (`Shard.status`, field
//! manager `shardplane-operator/executor`), which the node agents act on.

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::api::shard::{DesiredReplica, PrimaryRef, ReplicaRole, ReplicaState};
use crate::api::{DatabaseNode, NodePhase, Shard};
use crate::decide::domain::observed_on;
use crate::plan::StepAction;
use crate::protocol::EXECUTOR_MANAGER;

use super::super::context::Context;
use super::super::error::Doing;
use super::{Progress, StepError, get_shard};

/// Applies a replica step's effect (idempotently) and reports whether it holds.
pub async fn advance(
    ctx: &Context,
    namespace: &str,
    action: &StepAction,
) -> Result<Progress, StepError> {
    let shards: Api<Shard> = Api::namespaced(ctx.client.clone(), namespace);
    match action {
        StepAction::AddReplica { shard, node } => {
            let current = get_shard(&shards, shard).await?;
            let mut desired = desired(&current);
            if !desired.iter().any(|r| &r.node == node) {
                desired.push(DesiredReplica {
                    node: node.clone(),
                    role: ReplicaRole::Secondary,
                });
                write_desired(ctx, &shards, &current, desired, primary(&current)).await?;
            }
            Ok(Progress::Done)
        }
        StepAction::CatchUp { shard, node } => {
            let current = get_shard(&shards, shard).await?;
            let status = current.status.unwrap_or_default();
            match observed_on(&status.replicas, node) {
                Some(r) if r.state == ReplicaState::InSync => Ok(Progress::Done),
                Some(r) => Ok(Progress::Waiting(format!(
                    "replica of {shard} on {node} is {:?}",
                    r.state
                ))),
                None => Ok(Progress::Waiting(format!(
                    "no report yet of the replica of {shard} on {node}"
                ))),
            }
        }
        StepAction::TransferPrimary {
            shard, to, epoch, ..
        }
        | StepAction::Promote {
            shard,
            node: to,
            epoch,
        } => {
            let current = get_shard(&shards, shard).await?;
            let epoch = *epoch as i64;
            let target = PrimaryRef {
                node: to.clone(),
                epoch,
            };
            if primary(&current).as_ref() != Some(&target) {
                if primary(&current).is_some_and(|p| p.epoch > epoch) {
                    return Err(StepError::Permanent(format!(
                        "shard {shard} is already at an epoch above {epoch}: another promotion happened since this plan was made"
                    )));
                }
                let desired = desired(&current)
                    .into_iter()
                    .map(|r| DesiredReplica {
                        role: if &r.node == to {
                            ReplicaRole::Primary
                        } else if r.role == ReplicaRole::Primary {
                            ReplicaRole::Secondary
                        } else {
                            r.role
                        },
                        node: r.node,
                    })
                    .collect();
                write_desired(ctx, &shards, &current, desired, Some(target)).await?;
                return Ok(Progress::Waiting(format!(
                    "{to} is to serve {shard} at epoch {epoch}"
                )));
            }
            let status = current.status.unwrap_or_default();
            match observed_on(&status.replicas, to) {
                Some(r)
                    if r.role == ReplicaRole::Primary
                        && r.epoch == Some(epoch)
                        && r.state == ReplicaState::InSync =>
                {
                    Ok(Progress::Done)
                }
                _ => Ok(Progress::Waiting(format!(
                    "waiting for {to} to report {shard} primary at epoch {epoch}"
                ))),
            }
        }
        StepAction::RemoveReplica { shard, node } => {
            let current = get_shard(&shards, shard).await?;
            let mut desired = desired(&current);
            if desired
                .iter()
                .any(|r| &r.node == node && r.role == ReplicaRole::Primary)
            {
                return Err(StepError::Permanent(format!(
                    "refusing to remove the primary of {shard} on {node}; transfer it first"
                )));
            }
            if desired.iter().any(|r| &r.node == node) {
                desired.retain(|r| &r.node != node);
                write_desired(ctx, &shards, &current, desired, primary(&current)).await?;
            }
            let status = current.status.unwrap_or_default();
            if observed_on(&status.replicas, node).is_none()
                || !node_live(ctx, namespace, node).await?
            {
                Ok(Progress::Done)
            } else {
                Ok(Progress::Waiting(format!(
                    "waiting for {node} to remove its replica of {shard}"
                )))
            }
        }
        other => Err(StepError::Permanent(format!(
            "{other:?} is not a replica step"
        ))),
    }
}

fn desired(shard: &Shard) -> Vec<DesiredReplica> {
    shard
        .status
        .as_ref()
        .map(|s| s.desired_replicas.clone())
        .unwrap_or_default()
}

fn primary(shard: &Shard) -> Option<PrimaryRef> {
    shard.status.as_ref().and_then(|s| s.primary.clone())
}

/// Writes the desired replica set and primary with server-side apply under the executor's
/// own field manager (agents own their `replicas` entries, other reconcilers other fields),
/// conditional on the resourceVersion read, so a decision made on stale state is refused.
/// The one writer of `Shard.status.desiredReplicas` and `Shard.status.primary`.
pub async fn write_desired(
    ctx: &Context,
    shards: &Api<Shard>,
    shard: &Shard,
    desired: Vec<DesiredReplica>,
    primary: Option<PrimaryRef>,
) -> Result<(), StepError> {
    ctx.leader.ensure()?;
    let mut status = json!({"desiredReplicaCount": desired.len(), "desiredReplicas": desired});
    if let Some(primary) = primary {
        status["primary"] = json!(primary);
    }
    let patch = json!({
        "apiVersion": "shardplane.io/v1alpha1",
        "kind": "Shard",
        "metadata": {"name": shard.name_any(), "resourceVersion": shard.resource_version()},
        "status": status,
    });
    let params = PatchParams::apply(EXECUTOR_MANAGER).force();
    shards
        .patch_status(&shard.name_any(), &params, &Patch::Apply(patch))
        .await
        .doing(|| format!("write the desired replicas of Shard {}", shard.name_any()))?;
    Ok(())
}

async fn node_live(ctx: &Context, namespace: &str, node: &str) -> Result<bool, StepError> {
    let nodes: Api<DatabaseNode> = Api::namespaced(ctx.client.clone(), namespace);
    let phase = nodes
        .get_opt(node)
        .await
        .doing(|| format!("read DatabaseNode {namespace}/{node}"))?
        .and_then(|n| n.status.and_then(|s| s.phase));
    Ok(!matches!(
        phase,
        Some(NodePhase::Offline | NodePhase::Decommissioned) | None
    ))
}
