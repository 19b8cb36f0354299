//! What each plan step does to the world, and how the executor knows it is done. Effects are
//! written as desired state on `Shard.status` (the replicas the operator wants, the primary
//! and its epoch), which the node agents act on; completion is read back from what the
//! agents report. Every effect is idempotent: applying it twice leaves the same state, and
//! an epoch is fixed by the plan, so a resumed step never bumps it twice.

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::api::shard::{DesiredReplica, PrimaryRef, ReplicaRole, ReplicaState};
use crate::api::{DatabaseNode, NodePhase, Shard};
use crate::plan::StepAction;
use crate::protocol::EXECUTOR_MANAGER;

use super::context::{Context, now_ms};
use super::observe::observed_on;

/// Where a step stands after one look.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Its effect holds; the next step may start.
    Done,
    /// Its effect is written; the world has not caught up yet (why, in a sentence).
    Waiting(String),
}

/// Why a step cannot proceed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// It never will: the plan fails here, data intact, and says why.
    #[error("{0}")]
    Permanent(String),
    /// The API failed; the step is retried.
    #[error("API request failed: {0}")]
    Api(#[from] kube::Error),
    /// This replica must not act.
    #[error(transparent)]
    NotLeader(#[from] super::leader::NotLeader),
}

/// Applies `action`'s effect (idempotently) in `namespace` and reports whether it holds.
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
        StepAction::WaitUntil { not_before_ms } => {
            let now = now_ms();
            if now >= *not_before_ms {
                Ok(Progress::Done)
            } else {
                Ok(Progress::Waiting(format!(
                    "waiting {} s more",
                    (not_before_ms - now).div_ceil(1000)
                )))
            }
        }
        StepAction::RemoveNode { node } => {
            let shards_on_node = shards
                .list(&Default::default())
                .await?
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
                .await?;
            Ok(Progress::Done)
        }
        StepAction::DropShards {
            shards: names,
            not_before_ms,
        } => {
            let now = now_ms();
            if now < *not_before_ms {
                return Ok(Progress::Waiting(format!(
                    "the shards are kept {} s more",
                    (not_before_ms - now).div_ceil(1000)
                )));
            }
            // Deleting a Shard is what drops its data: the agents remove the replicas of
            // shards that no longer exist.
            let mut left = Vec::new();
            for name in names {
                let Some(shard) = shards.get_opt(name).await? else {
                    continue;
                };
                left.push(name.as_str());
                // A shard replaced by a split or merge is kept for the grace period after
                // the routing switch.
                if let Some(wait) = super::reshard::retire_wait_ms(&shard, now) {
                    return Ok(Progress::Waiting(format!(
                        "shard {name} is kept {} s more after its routing switch",
                        wait.div_ceil(1000)
                    )));
                }
                if shard.metadata.deletion_timestamp.is_none() {
                    ctx.leader.ensure()?;
                    match shards.delete(name, &Default::default()).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if left.is_empty() {
                Ok(Progress::Done)
            } else {
                Ok(Progress::Waiting(format!(
                    "waiting for shard(s) {} to be gone",
                    left.join(", ")
                )))
            }
        }
        StepAction::ApplySchema { shard, version } => {
            super::schema_rollout::apply_step(ctx, namespace, shard, *version).await
        }
        StepAction::PrepareTargets { .. }
        | StepAction::CopyRows { .. }
        | StepAction::CatchUpTarget { .. }
        | StepAction::FenceWrites { .. }
        | StepAction::VerifyRanges { .. }
        | StepAction::SwitchRouting { .. } => super::reshard::advance(ctx, namespace, action).await,
        other => Err(StepError::Permanent(format!(
            "{} needs data-plane support this operator build does not have yet; nothing was changed",
            serde_json::to_string(other).unwrap_or_default()
        ))),
    }
}

pub(super) async fn get_shard(shards: &Api<Shard>, name: &str) -> Result<Shard, StepError> {
    match shards.get_opt(name).await? {
        Some(shard) => Ok(shard),
        None => Err(StepError::Permanent(format!(
            "shard {name} no longer exists"
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
pub(super) async fn write_desired(
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
        .await?;
    Ok(())
}

async fn node_live(ctx: &Context, namespace: &str, node: &str) -> Result<bool, StepError> {
    let nodes: Api<DatabaseNode> = Api::namespaced(ctx.client.clone(), namespace);
    let phase = nodes
        .get_opt(node)
        .await?
        .and_then(|n| n.status.and_then(|s| s.phase));
    Ok(!matches!(
        phase,
        Some(NodePhase::Offline | NodePhase::Decommissioned) | None
    ))
}
