//! Declared splits and merges: finding them (Shards of a table that overlap the shards its
//! routing map serves are the targets of a change that replaces those sources), and the
//! effects of a reshard plan's steps. Each effect writes what it asks of the agents to
//! `Shard.status.reshard` (under its own field manager) and reads their answers from
//! `Shard.status.reshardReport`; the routing switch is one write of the Table's routing map,
//! conditional on its resourceVersion. Protocol: docs/dataplane.md, "Split and merge".

use std::collections::BTreeMap;

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::api::plan::{PlanTarget, TargetKind};
use crate::api::shard::{
    CopyPhase, DesiredReplica, PrimaryRef, RangeEndpoint, ReplicaRole, ReplicaState, ReshardOrder,
    ShardPhase,
};
use crate::api::table::{RouteEntry, RoutingMap};
use crate::api::{Shard, Table};
use crate::plan::{
    self, KeyRange, NewShard, PlanError, ReshardRequest, StepAction, TargetShard, Topology,
};
use crate::protocol::{RESHARD_MANAGER, RETIRE_GRACE_ANNOTATION};

use super::cluster::{Decision, change_cause};
use super::context::{Context, now_ms};
use super::effects::{Progress, StepError, get_shard, write_desired};
use super::observe::{ClusterView, observed_on};
use super::plan_wire::PlanContext;

/// The grace period when the Table does not set one.
pub const DEFAULT_GRACE_MS: u64 = 60_000;
/// How long the fence waits for the sources' primaries to prepare their comparison before
/// fencing anyway (they then compare by full scans under the fence).
const PREPARE_TIMEOUT_MS: i64 = 120_000;
/// How often the routing switch re-reads the Table when another writer got there first.
const SWITCH_ATTEMPTS: usize = 5;

/// The declared split or merge of each table, if any: the shards the routing map does not
/// route yet that overlap shards it does (the targets), and the routed shards they overlap
/// (the sources), each in key order. A table whose map is still empty has none.
pub fn declared_reshards(view: &ClusterView) -> Vec<ReshardRequest> {
    let mut requests = Vec::new();
    for table in &view.tables {
        let routed: Vec<&str> = table
            .status
            .as_ref()
            .and_then(|s| s.routing.as_ref())
            .map(|r| r.ranges.iter().map(|e| e.shard.as_str()).collect())
            .unwrap_or_default();
        if routed.is_empty() {
            continue;
        }
        let shards: Vec<(&Shard, KeyRange)> = view
            .shards
            .iter()
            .filter(|s| s.spec.table == table.name_any() && s.metadata.deletion_timestamp.is_none())
            .filter_map(|s| Some((s.as_ref(), range_of(s)?)))
            .collect();
        let (serving, candidates): (Vec<_>, Vec<_>) = shards
            .into_iter()
            .filter(|(s, _)| phase(s) != Some(ShardPhase::Retiring))
            .partition(|(s, _)| routed.contains(&s.name_any().as_str()));
        let mut targets: Vec<(&Shard, KeyRange)> = candidates
            .into_iter()
            .filter(|(_, r)| serving.iter().any(|(_, o)| overlap(*r, *o)))
            .collect();
        if targets.is_empty() {
            continue;
        }
        let mut sources: Vec<(&Shard, KeyRange)> = serving
            .into_iter()
            .filter(|(_, r)| targets.iter().any(|(_, t)| overlap(*r, *t)))
            .collect();
        sources.sort_by_key(|(_, r)| r.start());
        targets.sort_by_key(|(_, r)| r.start());
        requests.push(ReshardRequest {
            table: table.name_any(),
            sources: sources.iter().map(|(s, _)| s.name_any()).collect(),
            targets: targets
                .iter()
                .map(|(s, range)| NewShard {
                    name: s.name_any(),
                    range: *range,
                })
                .collect(),
        });
    }
    requests
}

/// The plan of the first declared split or merge, if any. The targets exist as Shards
/// already; the planner places them as new shards, so it sees the topology without them.
/// The drop step's time is the grace period itself: the executor counts it from the
/// routing switch ([`ReshardOrder::retire_after_ms`]), so the plan (and its hash) does not
/// change from one look to the next.
pub fn decide(view: &ClusterView, topology: &Topology) -> Result<Option<Decision>, PlanError> {
    let Some(request) = declared_reshards(view).into_iter().next() else {
        return Ok(None);
    };
    let table = view.tables.iter().find(|t| t.name_any() == request.table);
    let grace_ms = table.map_or(DEFAULT_GRACE_MS, |t| grace_ms(t));
    let mut before = topology.clone();
    before
        .shards
        .retain(|s| !request.targets.iter().any(|t| t.name == s.name));
    let plan = plan::plan_reshard(&before, &request, 0, grace_ms)?;
    let verb = if request.sources.len() == 1 {
        "split"
    } else {
        "merge"
    };
    let targets: Vec<&str> = request.targets.iter().map(|t| t.name.as_str()).collect();
    let summary = format!(
        "{verb} {} into {}: copy, catch up, fence, verify, switch routing, drop after {} s",
        request.sources.join(" + "),
        targets.join(" + "),
        grace_ms / 1000
    );
    let cause_object = view
        .shards
        .iter()
        .find(|s| s.name_any() == request.targets[0].name);
    let detail = format!(
        "Shards {} were declared over {}",
        targets.join(", "),
        request.sources.join(", ")
    );
    let cause = match cause_object {
        Some(shard) => change_cause(shard.as_ref(), detail),
        None => change_cause(view.cluster.as_ref(), detail),
    };
    let facts = BTreeMap::from([
        ("sources".to_owned(), request.sources.join(",")),
        ("targets".to_owned(), targets.join(",")),
        ("graceMs".to_owned(), grace_ms.to_string()),
    ]);
    Ok(Some(Decision {
        context: PlanContext {
            cluster: view.cluster.name_any(),
            target: PlanTarget {
                kind: TargetKind::Table,
                name: request.table.clone(),
            },
            cause,
            summary,
            facts,
        },
        plan,
    }))
}

fn grace_ms(table: &Table) -> u64 {
    table
        .annotations()
        .get(RETIRE_GRACE_ANNOTATION)
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(DEFAULT_GRACE_MS, |s| s.saturating_mul(1000))
}

fn range_of(shard: &Shard) -> Option<KeyRange> {
    KeyRange::from_wire(shard.spec.range.start, shard.spec.range.end).ok()
}

fn overlap(a: KeyRange, b: KeyRange) -> bool {
    a.start() < b.end() && b.start() < a.end()
}

fn phase(shard: &Shard) -> Option<ShardPhase> {
    shard.status.as_ref().and_then(|s| s.phase)
}

fn order(shard: &Shard) -> ReshardOrder {
    shard
        .status
        .as_ref()
        .and_then(|s| s.reshard.clone())
        .unwrap_or_default()
}

/// The named shards, read at once (a split's fence is up while the executor reads them).
async fn get_shards(shards: &Api<Shard>, names: &[String]) -> Result<Vec<Shard>, StepError> {
    futures::future::try_join_all(names.iter().map(|name| get_shard(shards, name))).await
}

/// How long a source that switched at some point must still be kept, if at all.
pub fn retire_wait_ms(shard: &Shard, now_ms: u64) -> Option<u64> {
    let after = order(shard).retire_after_ms?;
    let after = u64::try_from(after).unwrap_or(0);
    (after > now_ms).then(|| after - now_ms)
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
        .await?;
    Ok(())
}

/// `host:port` of the shard's primary while it serves (or is fenced) at its epoch.
fn primary_endpoint(shard: &Shard) -> Option<String> {
    let status = shard.status.as_ref()?;
    let primary = status.primary.as_ref()?;
    observed_on(&status.replicas, &primary.node)
        .filter(|o| o.role == ReplicaRole::Primary && o.epoch == Some(primary.epoch))
        .and_then(|o| o.endpoint.clone())
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
    for shard in shards.list(&Default::default()).await?.items {
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

/// Whether the source's primary reports its comparison prepared for every target asked.
fn prepared(shard: &Shard) -> bool {
    let prepared = shard
        .status
        .as_ref()
        .and_then(|s| s.reshard_report.as_ref())
        .map(|r| r.prepared.clone())
        .unwrap_or_default();
    order(shard)
        .verify
        .iter()
        .all(|t| prepared.contains(&t.shard))
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
        .await?
        .and_then(|t| t.status?.routing)
        .unwrap_or_default();
    if routed.ranges.iter().any(|e| targets.contains(&e.shard)) {
        return Ok(false);
    }
    let shards: Api<Shard> = Api::namespaced(ctx.client.clone(), namespace);
    let mut asked = Vec::new();
    for name in sources.iter().chain(&targets) {
        if let Some(shard) = shards.get_opt(name).await?
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
        if shards.get_opt(name).await?.is_some() {
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
    let tables: Api<Table> = Api::namespaced(ctx.client.clone(), namespace);
    // Read together: the sources are fenced until the map's write.
    let (targets, mut fetched) = tokio::try_join!(get_shards(shards, serve), async {
        Ok(tables.get_opt(table).await?)
    })?;
    let mut serving = Vec::new();
    for shard in targets {
        let name = shard.name_any();
        let status = shard.status.clone().unwrap_or_default();
        let Some(primary) = status.primary.clone() else {
            return Err(StepError::Permanent(format!("{name} has no primary")));
        };
        serving.push(RouteEntry {
            start: shard.spec.range.start,
            end: shard.spec.range.end,
            shard: name.clone(),
            primary: Some(primary.node.clone()),
            endpoint: primary_endpoint(&shard),
            epoch: primary.epoch,
        });
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(current) = fetched.take() else {
            return Err(StepError::Permanent(format!(
                "table {table} no longer exists"
            )));
        };
        let old = current
            .status
            .as_ref()
            .and_then(|s| s.routing.clone())
            .unwrap_or_default();
        let Some(routing) = switched_map(&old, retire, &serving) else {
            break;
        };
        ctx.leader.ensure()?;
        let patch = json!({
            "metadata": {"resourceVersion": current.resource_version()},
            "status": {"routing": routing},
        });
        match tables
            .patch_status(table, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => break,
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < SWITCH_ATTEMPTS => {
                fetched = tables.get_opt(table).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let now = now_ms() as i64;
    let grace = tables
        .get_opt(table)
        .await?
        .map_or(DEFAULT_GRACE_MS, |t| grace_ms(&t));
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

/// The routing map with `retire` replaced by `serve`, one version on; `None` when it
/// already is so.
fn switched_map(old: &RoutingMap, retire: &[String], serve: &[RouteEntry]) -> Option<RoutingMap> {
    let done = !old.ranges.iter().any(|e| retire.contains(&e.shard))
        && serve
            .iter()
            .all(|s| old.ranges.iter().any(|e| e.shard == s.shard));
    if done {
        return None;
    }
    let mut ranges: Vec<RouteEntry> = old
        .ranges
        .iter()
        .filter(|e| !retire.contains(&e.shard) && !serve.iter().any(|s| s.shard == e.shard))
        .cloned()
        .chain(serve.iter().cloned())
        .collect();
    ranges.sort_by_key(|e| (e.start.map_or(i128::MIN, i128::from), e.shard.clone()));
    Some(RoutingMap {
        version: old.version + 1,
        ranges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(shard: &str, start: Option<i64>, end: Option<i64>) -> RouteEntry {
        RouteEntry {
            start,
            end,
            shard: shard.to_owned(),
            primary: Some("n1".to_owned()),
            endpoint: Some("127.0.0.1:1".to_owned()),
            epoch: 1,
        }
    }

    #[test]
    fn the_switch_replaces_the_sources_in_one_new_version_and_is_idempotent() {
        let old = RoutingMap {
            version: 7,
            ranges: vec![entry("a", None, Some(0)), entry("b", Some(0), None)],
        };
        let serve = vec![
            entry("b0", Some(0), Some(100)),
            entry("b1", Some(100), None),
        ];
        let new = switched_map(&old, &["b".to_owned()], &serve).expect("a change");
        assert_eq!(new.version, 8);
        let names: Vec<&str> = new.ranges.iter().map(|e| e.shard.as_str()).collect();
        assert_eq!(names, ["a", "b0", "b1"]);
        assert_eq!(switched_map(&new, &["b".to_owned()], &serve), None);
    }
}
