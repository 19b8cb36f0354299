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
use super::{Progress, ShardCopies, StepError, get_shard};

/// Applies a replica step's effect (idempotently) and reports whether it holds. What the step
/// waits for (a report of the agents) is read from `copies` (a watch cache of the Shards and
/// the executor's own newest writes), so a waiting step costs no request; the effect is
/// written on that copy, and the shard read from the API server only when the write finds
/// the copy stale (a write is conditional on the version read).
pub async fn advance(
    ctx: &Context,
    copies: &ShardCopies,
    namespace: &str,
    action: &StepAction,
) -> Result<Progress, StepError> {
    let shards: Api<Shard> = Api::namespaced(ctx.client.clone(), namespace);
    let (shard, effect) = match action {
        StepAction::AddReplica { shard, .. }
        | StepAction::TransferPrimary { shard, .. }
        | StepAction::Promote { shard, .. }
        | StepAction::RemoveReplica { shard, .. } => (shard, true),
        StepAction::CatchUp { shard, .. } => (shard, false),
        other => {
            return Err(StepError::Permanent(format!(
                "{other:?} is not a replica step"
            )));
        }
    };
    let cached = copies.get(namespace, shard);
    if let Some(current) = &cached
        && (!effect || written(current, action)?)
    {
        return look(ctx, namespace, current, action).await;
    }
    // The effect is to be written: on the cached copy first. The write is conditional on the
    // version read, so a copy older than the API server's is refused (409) and the shard is
    // read now — a read only when the cache lags, not before every write.
    let current = match cached {
        Some(current) => match write(ctx, copies, &shards, &current, action).await {
            Ok(()) => return wrote(ctx, namespace, &current, action).await,
            Err(StepError::Api(error)) if error.is_conflict() => get_shard(&shards, shard).await?,
            Err(error) => return Err(error),
        },
        None => get_shard(&shards, shard).await?,
    };
    if !written(&current, action)? {
        write(ctx, copies, &shards, &current, action).await?;
        return wrote(ctx, namespace, &current, action).await;
    }
    look(ctx, namespace, &current, action).await
}

/// What a step whose effect was just written on `current` waits for: a promotion for its
/// node's report; anything else as [`look`] finds it.
async fn wrote(
    ctx: &Context,
    namespace: &str,
    current: &Shard,
    action: &StepAction,
) -> Result<Progress, StepError> {
    if let StepAction::TransferPrimary {
        shard, to, epoch, ..
    }
    | StepAction::Promote {
        shard,
        node: to,
        epoch,
    } = action
    {
        return Ok(Progress::Waiting(format!(
            "{to} is to serve {shard} at epoch {epoch}"
        )));
    }
    look(ctx, namespace, current, action).await
}

/// Whether `action`'s effect is written on `current` (refused if it never can be).
fn written(current: &Shard, action: &StepAction) -> Result<bool, StepError> {
    let desired = desired(current);
    Ok(match action {
        StepAction::AddReplica { node, .. } => desired.iter().any(|r| &r.node == node),
        StepAction::TransferPrimary {
            shard, to, epoch, ..
        }
        | StepAction::Promote {
            shard,
            node: to,
            epoch,
        } => {
            let epoch = *epoch as i64;
            let now = primary(current);
            if now
                .as_ref()
                .is_some_and(|p| &p.node == to && p.epoch == epoch)
            {
                true
            } else if now.is_some_and(|p| p.epoch > epoch) {
                return Err(StepError::Permanent(format!(
                    "shard {shard} is already at an epoch above {epoch}: another promotion happened since this plan was made"
                )));
            } else {
                false
            }
        }
        StepAction::RemoveReplica { shard, node } => {
            if desired
                .iter()
                .any(|r| &r.node == node && r.role == ReplicaRole::Primary)
            {
                return Err(StepError::Permanent(format!(
                    "refusing to remove the primary of {shard} on {node}; transfer it first"
                )));
            }
            !desired.iter().any(|r| &r.node == node)
        }
        _ => true,
    })
}

/// Writes `action`'s effect on `current`, and remembers the shard as written in `copies`.
async fn write(
    ctx: &Context,
    copies: &ShardCopies,
    shards: &Api<Shard>,
    current: &Shard,
    action: &StepAction,
) -> Result<(), StepError> {
    let mut desired = desired(current);
    let written = match action {
        StepAction::AddReplica { node, .. } => {
            desired.push(DesiredReplica {
                node: node.clone(),
                role: ReplicaRole::Secondary,
            });
            write_desired(ctx, shards, current, desired, primary(current)).await
        }
        StepAction::TransferPrimary { to, epoch, .. }
        | StepAction::Promote {
            node: to, epoch, ..
        } => {
            let desired = desired
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
            let target = PrimaryRef {
                node: to.clone(),
                epoch: *epoch as i64,
            };
            write_desired(ctx, shards, current, desired, Some(target)).await
        }
        StepAction::RemoveReplica { node, .. } => {
            desired.retain(|r| &r.node != node);
            write_desired(ctx, shards, current, desired, primary(current)).await
        }
        _ => Err(StepError::Permanent(format!(
            "{action:?} writes nothing on a shard"
        ))),
    }?;
    copies.wrote(current.resource_version(), written);
    Ok(())
}

/// Whether `action`'s effect, written, holds on `current`: what the agents report.
async fn look(
    ctx: &Context,
    namespace: &str,
    current: &Shard,
    action: &StepAction,
) -> Result<Progress, StepError> {
    let status = current.status.clone().unwrap_or_default();
    match action {
        StepAction::CatchUp { shard, node } => match observed_on(&status.replicas, node) {
            Some(r) if r.state == ReplicaState::InSync => Ok(Progress::Done),
            Some(r) => Ok(Progress::Waiting(format!(
                "replica of {shard} on {node} is {:?}",
                r.state
            ))),
            None => Ok(Progress::Waiting(format!(
                "no report yet of the replica of {shard} on {node}"
            ))),
        },
        StepAction::TransferPrimary {
            shard, to, epoch, ..
        }
        | StepAction::Promote {
            shard,
            node: to,
            epoch,
        } => match observed_on(&status.replicas, to) {
            Some(r)
                if r.role == ReplicaRole::Primary
                    && r.epoch == Some(*epoch as i64)
                    && r.state == ReplicaState::InSync =>
            {
                Ok(Progress::Done)
            }
            _ => Ok(Progress::Waiting(format!(
                "waiting for {to} to report {shard} primary at epoch {epoch}"
            ))),
        },
        StepAction::RemoveReplica { shard, node } => {
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
        _ => Ok(Progress::Done),
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
/// The one writer of `Shard.status.desiredReplicas` and `Shard.status.primary`. Returns the
/// shard as written.
pub async fn write_desired(
    ctx: &Context,
    shards: &Api<Shard>,
    shard: &Shard,
    desired: Vec<DesiredReplica>,
    primary: Option<PrimaryRef>,
) -> Result<Shard, StepError> {
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
    let written = shards
        .patch_status(&shard.name_any(), &params, &Patch::Apply(patch))
        .await
        .doing(|| format!("write the desired replicas of Shard {}", shard.name_any()))?;
    Ok(written)
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
