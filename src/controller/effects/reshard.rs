//! Split and merge steps, and the drop of replaced shards. Each effect writes what it asks
//! of the agents to `Shard.status.reshard` (under its own field manager) and reads their
//! answers from `Shard.status.reshardReport`; the routing switch asks the table's one
//! writer of its routing map (`table::switch_routing`) for the map with the sources retired.
//! Protocol: docs/dataplane.md, "Split and merge".

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::api::shard::{
    CopyPhase, DesiredReplica, PrimaryRef, RangeEndpoint, ReplicaRole, ReplicaState, ReshardOrder,
    ShardPhase,
};
use crate::api::{Shard, Table};
use crate::decide::domain::observed_on;
use crate::decide::reshard::{grace_ms, order, prepared, primary_endpoint, retire_wait_ms};
use crate::plan::{KeyRange, StepAction, TargetShard};
use crate::protocol::RESHARD_MANAGER;

use super::super::context::{Context, now_ms};
use super::super::error::{ApiError, Doing};
use super::super::table::switch_routing;
use super::replicas::write_desired;
use super::{Progress, StepError, get_shard};

/// How long the fence waits for the sources' primaries to prepare their comparison before
/// fencing anyway (they then compare by full scans under the fence).
const PREPARE_TIMEOUT_MS: i64 = 120_000;

/// The named shards, read at once (a split's fence is up while the executor reads them).
async fn get_shards(shards: &Api<Shard>, names: &[String]) -> Result<Vec<Shard>, StepError> {
    futures::future::try_join_all(names.iter().map(|name| get_shard(shards, name))).await
}

/// Writes `order` (whole: the field manager owns every field of it) and, if given, the
/// shard's phase.
async fn write_order(
    ctx: &Context,
    shards: &Api<Shard>,
    name: &str,
    order: &ReshardOrder,
    phase: Option<ShardPhase>,
) -> Result<(), StepError> {
    ctx.leader.ensure()?;
    let mut status = json!({ "reshard": order });
    if let Some(phase) = phase {
        status["phase"] = json!(phase);
    }
    let patch = json!({
        "apiVersion": "shardplane.io/v1alpha1",
        "kind": "Shard",
        "metadata": {"name": name},
        "status": status,
    });
    shards
        .patch_status(
            name,
            &PatchParams::apply(RESHARD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await
        .doing(|| format!("write the split/merge order of Shard {name}"))?;
    Ok(())
}

/// Applies a split/merge step's effect (idempotently) and reports whether it holds.
pub async fn advance(
    ctx: &Context,
    namespace: &str,
    action: &StepAction,
) -> Result<Progress, StepError> {
    let shards: Api<Shard> = Api::namespaced(ctx.client.clone(), namespace);
    match action {
        StepAction::PrepareTargets { targets } => prepare_targets(ctx, &shards, targets).await,
        StepAction::CopyRows {
            source,
            target,
            range,
        } => copy_rows(ctx, &shards, source, target, *range).await,
        StepAction::CatchUpTarget { target } => {
            let shard = get_shard(&shards, target).await?;
            let wanted = order(&shard).copy_from;
            let copies = shard
                .status
                .as_ref()
                .and_then(|s| s.reshard_report.clone())
                .unwrap_or_default()
                .copies;
            let lagging: Vec<&str> = wanted
                .iter()
                .filter(|w| {
                    !copies
                        .iter()
                        .any(|c| c.source == w.shard && c.phase == CopyPhase::Streaming)
                })
                .map(|w| w.shard.as_str())
                .collect();
            if lagging.is_empty() {
                Ok(Progress::Done)
            } else {
                Ok(Progress::Waiting(format!(
                    "{target} is still copying from {}",
                    lagging.join(", ")
                )))
            }
        }
        StepAction::FenceWrites { shards: sources } => fence(ctx, &shards, sources).await,
        StepAction::VerifyRanges { sources, targets } => {
            verify(ctx, &shards, sources, targets).await
        }
        StepAction::SwitchRouting {
            table,
            retire,
            serve,
        } => switch(ctx, namespace, &shards, table, retire, serve).await,
        StepAction::DropShards {
            shards: names,
            not_before_ms,
        } => drop_shards(ctx, &shards, names, *not_before_ms).await,
        other => Err(StepError::Permanent(format!(
            "{other:?} is not a split/merge step"
        ))),
    }
}

async fn prepare_targets(
    ctx: &Context,
    shards: &Api<Shard>,
    targets: &[TargetShard],
) -> Result<Progress, StepError> {
    let mut waiting = Vec::new();
    for target in targets {
        let shard = get_shard(shards, &target.name).await?;
        let status = shard.status.clone().unwrap_or_default();
        let Some(first) = target.nodes.first() else {
            return Err(StepError::Permanent(format!(
                "the plan places no replica of {}",
                target.name
            )));
        };
        if status.desired_replicas.is_empty() && status.primary.is_none() {
            let desired = target
                .nodes
                .iter()
                .map(|node| DesiredReplica {
                    node: node.clone(),
                    role: if node == first {
                        ReplicaRole::Primary
                    } else {
                        ReplicaRole::Secondary
                    },
                })
                .collect();
            let primary = PrimaryRef {
                node: first.clone(),
                epoch: 1,
            };
            write_desired(ctx, shards, &shard, desired, Some(primary)).await?;
            waiting.push(target.name.as_str());
            continue;
        }
        let ready = status.desired_replicas.iter().all(|d| {
            observed_on(&status.replicas, &d.node)
                .is_some_and(|o| o.role == d.role && o.state == ReplicaState::InSync)
        });
        if !ready {
            waiting.push(target.name.as_str());
        }
    }
    if waiting.is_empty() {
        Ok(Progress::Done)
    } else {
        Ok(Progress::Waiting(format!(
            "waiting for every replica of {} to serve",
            waiting.join(", ")
        )))
    }
}

async fn copy_rows(
    ctx: &Context,
    shards: &Api<Shard>,
    source: &str,
    target: &str,
    range: KeyRange,
) -> Result<Progress, StepError> {
    let from = get_shard(shards, source).await?;
    let Some(endpoint) = primary_endpoint(&from) else {
        return Ok(Progress::Waiting(format!(
            "{source} has no serving primary to copy from"
        )));
    };
    let into = get_shard(shards, target).await?;
    let mut order = order(&into);
    let wire = range.to_wire();
    let entry = RangeEndpoint {
        shard: source.to_owned(),
        endpoint,
        start: wire.start,
        end: wire.end,
    };
    if !order.copy_from.contains(&entry) {
        order.copy_from.retain(|e| e.shard != source);
        order.copy_from.push(entry);
        write_order(ctx, shards, target, &order, None).await?;
    }
    Ok(Progress::Done)
}

/// The ranges each target copies from `source`, with the target's primary.
async fn ranges_copied_from(
    shards: &Api<Shard>,
    source: &str,
) -> Result<Vec<RangeEndpoint>, StepError> {
    let mut out = Vec::new();
    let all = shards
        .list(&Default::default())
        .await
        .doing(|| "list the Shards that copy from a split or merge source".to_owned())?;
    for shard in all.items {
        for copy in order(&shard).copy_from {
            if copy.shard == source {
                let Some(endpoint) = primary_endpoint(&shard) else {
                    return Err(StepError::Permanent(format!(
                        "target {} has no serving primary to verify against",
                        shard.name_any()
                    )));
                };
                out.push(RangeEndpoint {
                    shard: shard.name_any(),
                    endpoint,
                    start: copy.start,
                    end: copy.end,
                });
            }
        }
    }
    Ok(out)
}

/// The fence, in two stages so that the window stays short: first every source is asked
/// for its comparison (`verify`), which its primary prepares while it still serves; once
/// every source has prepared (or [`PREPARE_TIMEOUT_MS`] passed: the primary then compares
/// by full scans under the fence), every source is asked to fence at once. Done when every
/// source's primary reports its fence.
async fn fence(
    ctx: &Context,
    shards: &Api<Shard>,
    sources: &[String],
) -> Result<Progress, StepError> {
    let current = get_shards(shards, sources).await?;
    let mut asked = false;
    for shard in &current {
        let mut order = order(shard);
        if order.verify.is_empty() && !order.fence {
            order.verify = ranges_copied_from(shards, &shard.name_any()).await?;
            order.verify_requested_at_ms = Some(now_ms() as i64);
            write_order(ctx, shards, &shard.name_any(), &order, None).await?;
            asked = true;
        }
    }
    if asked {
        return Ok(Progress::Waiting(format!(
            "waiting for the primary of {} to prepare the comparison",
            sources.join(", ")
        )));
    }
    let unprepared: Vec<String> = current
        .iter()
        .filter(|s| !order(s).fence && !prepared(s))
        .map(|s| s.name_any())
        .collect();
    let timed_out = current.iter().any(|s| {
        order(s)
            .verify_requested_at_ms
            .is_none_or(|at| now_ms() as i64 - at > PREPARE_TIMEOUT_MS)
    });
    if !unprepared.is_empty() && !timed_out {
        return Ok(Progress::Waiting(format!(
            "waiting for the primary of {} to prepare the comparison",
            unprepared.join(", ")
        )));
    }
    // Every source is fenced at the same moment (the orders written together): a merge's
    // window is as long as its slowest source's.
    let unfenced: Vec<&Shard> = current.iter().filter(|s| !order(s).fence).collect();
    futures::future::try_join_all(unfenced.iter().map(|shard| {
        let order = ReshardOrder {
            fence: true,
            ..order(shard)
        };
        async move { write_order(ctx, shards, &shard.name_any(), &order, None).await }
    }))
    .await?;
    let mut waiting: Vec<String> = unfenced.iter().map(|s| s.name_any()).collect();
    for shard in current.iter().filter(|s| order(s).fence) {
        let name = shard.name_any();
        let fenced = shard
            .status
            .as_ref()
            .and_then(|s| s.reshard_report.as_ref())
            .is_some_and(|r| r.fenced_at_ms.is_some());
        if !fenced {
            waiting.push(name);
        }
    }
    if waiting.is_empty() {
        Ok(Progress::Done)
    } else {
        Ok(Progress::Waiting(format!(
            "waiting for the primary of {} to refuse writes",
            waiting.join(", ")
        )))
    }
}

async fn verify(
    ctx: &Context,
    shards: &Api<Shard>,
    sources: &[String],
    targets: &[String],
) -> Result<Progress, StepError> {
    let mut mismatches = Vec::new();
    let mut waiting = Vec::new();
    for shard in get_shards(shards, sources).await? {
        let name = shard.name_any();
        let checks = shard
            .status
            .as_ref()
            .and_then(|s| s.reshard_report.clone())
            .unwrap_or_default()
            .checks;
        for wanted in order(&shard).verify {
            match checks.iter().find(|c| c.target == wanted.shard) {
                Some(check) if !check.matches => {
                    mismatches.push(format!("{name} → {}: {}", check.target, check.detail))
                }
                Some(_) => {}
                None => waiting.push(format!("{name} → {}", wanted.shard)),
            }
        }
    }
    if !mismatches.is_empty() {
        abort(ctx, shards, sources, targets).await?;
        return Err(StepError::Permanent(format!(
            "verification failed, the change is aborted and the sources serve again: {}",
            mismatches.join("; ")
        )));
    }
    if waiting.is_empty() {
        Ok(Progress::Done)
    } else {
        Ok(Progress::Waiting(format!(
            "waiting for the range checks {}",
            waiting.join(", ")
        )))
    }
}

/// Undoes what a superseded split or merge asked of its shards, unless its routing switch
/// happened (the targets serve then, and the sources stay fenced until dropped): lifts the
/// sources' fence and stops the targets' copies, so that a failover that preempted the change
/// while the sources were fenced does not leave them refusing writes. Idempotent; returns
/// whether it undid anything.
pub async fn undo_superseded(
    ctx: &Context,
    namespace: &str,
    actions: &[StepAction],
) -> Result<bool, StepError> {
    let mut sources = Vec::new();
    let mut targets = Vec::new();
    let mut table = None;
    for action in actions {
        if let StepAction::SwitchRouting {
            table: name,
            retire,
            serve,
        } = action
        {
            table = Some(name);
            sources.extend(retire.iter().cloned());
            targets.extend(serve.iter().cloned());
        }
    }
    let Some(table) = table else {
        return Ok(false);
    };
    let tables: Api<Table> = Api::namespaced(ctx.client.clone(), namespace);
    let routed = tables
        .get_opt(table)
        .await
        .doing(|| format!("read Table {namespace}/{table}"))?
        .and_then(|t| t.status?.routing)
        .unwrap_or_default();
    if routed.ranges.iter().any(|e| targets.contains(&e.shard)) {
        return Ok(false);
    }
    let shards: Api<Shard> = Api::namespaced(ctx.client.clone(), namespace);
    let mut asked = Vec::new();
    for name in sources.iter().chain(&targets) {
        if let Some(shard) = shards
            .get_opt(name)
            .await
            .doing(|| format!("read Shard {namespace}/{name}"))?
            && order(&shard) != ReshardOrder::default()
        {
            asked.push(name.clone());
        }
    }
    if asked.is_empty() {
        return Ok(false);
    }
    abort(ctx, &shards, &sources, &targets).await?;
    Ok(true)
}

/// Lifts the sources' fence and stops the targets' copies: the sources keep serving, and
/// the routing map never named the targets.
async fn abort(
    ctx: &Context,
    shards: &Api<Shard>,
    sources: &[String],
    targets: &[String],
) -> Result<(), StepError> {
    for name in sources {
        write_order(ctx, shards, name, &ReshardOrder::default(), None).await?;
    }
    for name in targets {
        let target = shards
            .get_opt(name)
            .await
            .doing(|| format!("read Shard {name}"))?;
        if target.is_some() {
            write_order(ctx, shards, name, &ReshardOrder::default(), None).await?;
        }
    }
    Ok(())
}

async fn switch(
    ctx: &Context,
    namespace: &str,
    shards: &Api<Shard>,
    table: &str,
    retire: &[String],
    serve: &[String],
) -> Result<Progress, StepError> {
    let switched = switch_routing(ctx, namespace, table, retire, serve).await?;
    let now = now_ms() as i64;
    let grace = grace_ms(&switched);
    for name in retire {
        let shard = get_shard(shards, name).await?;
        let mut order = order(&shard);
        if order.switched_at_ms.is_none() {
            order.switched_at_ms = Some(now);
            order.retire_after_ms = Some(now + grace as i64);
            write_order(ctx, shards, name, &order, Some(ShardPhase::Retiring)).await?;
        }
    }
    for name in serve {
        let shard = get_shard(shards, name).await?;
        if !order(&shard).copy_from.is_empty() {
            write_order(ctx, shards, name, &ReshardOrder::default(), None).await?;
        }
    }
    Ok(Progress::Done)
}

/// Drops the named shards, not before `not_before_ms`, and each replaced by a split or merge
/// not before its grace period after the routing switch. Deleting a Shard is what drops its
/// data: the agents remove the replicas of shards that no longer exist.
async fn drop_shards(
    ctx: &Context,
    shards: &Api<Shard>,
    names: &[String],
    not_before_ms: u64,
) -> Result<Progress, StepError> {
    let now = now_ms();
    if now < not_before_ms {
        return Ok(Progress::Waiting(format!(
            "the shards are kept {} s more",
            (not_before_ms - now).div_ceil(1000)
        )));
    }
    let mut left = Vec::new();
    for name in names {
        let shard = shards
            .get_opt(name)
            .await
            .doing(|| format!("read Shard {name}"))?;
        let Some(shard) = shard else {
            continue;
        };
        left.push(name.as_str());
        if let Some(wait) = retire_wait_ms(&shard, now) {
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
                Err(source) => {
                    let action = format!("delete Shard {name}");
                    return Err(ApiError { action, source }.into());
                }
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
