//! Declared splits and merges: finding them (Shards of a table that overlap the shards its
//! routing map serves are the targets of a change that replaces those sources), planning
//! them, and reading the split/merge orders and reports on `Shard.status`. Protocol:
//! docs/dataplane.md, "Split and merge".

use std::collections::{BTreeMap, BTreeSet};

use crate::api::plan::{PlanTarget, TargetKind};
use crate::api::shard::{ReplicaRole, ReshardOrder, ShardPhase};
use crate::api::{Shard, Table};
use crate::plan::{self, KeyRange, NewShard, PlanError, ReshardRequest, Topology};
use crate::protocol::RETIRE_GRACE_ANNOTATION;

use super::domain::observed_on;
use super::plan_wire::{Decision, PlanContext, change_cause};
use super::{ClusterView, Object};

/// How long replaced shards are kept after the routing switch when the Table does not say.
pub const DEFAULT_GRACE_MS: u64 = 60_000;

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
            .filter(|s| s.spec.table == table.name() && !s.deleting())
            .filter_map(|s| Some((s.as_ref(), range_of(s)?)))
            .collect();
        let (serving, candidates): (Vec<_>, Vec<_>) = shards
            .into_iter()
            .filter(|(s, _)| phase(s) != Some(ShardPhase::Retiring))
            .partition(|(s, _)| routed.contains(&s.name()));
        let mut targets: Vec<(&Shard, KeyRange)> = candidates
            .into_iter()
            .filter(|(_, r)| serving.iter().any(|(_, o)| r.overlaps(*o)))
            .collect();
        if targets.is_empty() {
            continue;
        }
        let mut sources: Vec<(&Shard, KeyRange)> = serving
            .into_iter()
            .filter(|(_, r)| targets.iter().any(|(_, t)| r.overlaps(*t)))
            .collect();
        sources.sort_by_key(|(_, r)| r.start());
        targets.sort_by_key(|(_, r)| r.start());
        requests.push(ReshardRequest {
            table: table.name().to_owned(),
            sources: sources.iter().map(|(s, _)| s.name().to_owned()).collect(),
            targets: targets
                .iter()
                .map(|(s, range)| NewShard {
                    name: s.name().to_owned(),
                    range: *range,
                })
                .collect(),
        });
    }
    requests
}

/// The plan of the first declared split or merge, if any.
pub fn decide(view: &ClusterView, topology: &Topology) -> Result<Option<Decision>, PlanError> {
    match declared_reshards(view).into_iter().next() {
        Some(request) => decision(view, topology, request).map(Some),
        None => Ok(None),
    }
}

/// The first declared split or merge none of whose sources and targets is `held` (by an
/// active plan), planned on `topology` (which holds its sources): one that can run beside
/// the active plans.
pub fn decide_free(
    view: &ClusterView,
    topology: &Topology,
    held: &BTreeSet<String>,
) -> Result<Option<Decision>, PlanError> {
    let free = declared_reshards(view).into_iter().find(|r| {
        let mut shards = r.sources.iter().chain(r.targets.iter().map(|t| &t.name));
        !shards.any(|s| held.contains(s))
    });
    match free {
        Some(request) => decision(view, topology, request).map(Some),
        None => Ok(None),
    }
}

/// The decision to carry out the declared `request`.
fn decision(
    view: &ClusterView,
    topology: &Topology,
    request: ReshardRequest,
) -> Result<Decision, PlanError> {
    let table = view.tables.iter().find(|t| t.name() == request.table);
    let grace_ms = table.map_or(DEFAULT_GRACE_MS, |t| grace_ms(t));
    let plan = plan_declared(topology, &request, grace_ms)?;
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
        .find(|s| s.name() == request.targets[0].name);
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
    Ok(Decision {
        context: PlanContext {
            cluster: view.name().to_owned(),
            target: PlanTarget {
                kind: TargetKind::Table,
                name: request.table.clone(),
            },
            cause,
            summary,
            facts,
        },
        plan,
    })
}

/// The plan of a declared split or merge. The targets may exist as Shards already; the
/// planner places them as new shards, so it sees the topology without them. The drop
/// step's time is the grace period itself: the executor counts it from the routing switch
/// ([`ReshardOrder::retire_after_ms`]), so the plan (and its hash) does not change from one
/// look to the next — and `shardplane plan` previews the same hash.
pub fn plan_declared(
    topology: &Topology,
    request: &ReshardRequest,
    grace_ms: u64,
) -> Result<plan::Plan, PlanError> {
    let mut before = topology.clone();
    before
        .shards
        .retain(|s| !request.targets.iter().any(|t| t.name == s.name));
    plan::plan_reshard(&before, request, 0, grace_ms)
}

/// How long the table's replaced shards are kept after the routing switch.
pub fn grace_ms(table: &Table) -> u64 {
    table
        .annotation(RETIRE_GRACE_ANNOTATION)
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(DEFAULT_GRACE_MS, |s| s.saturating_mul(1000))
}

/// The shard's key range, if its ends are valid.
pub fn range_of(shard: &Shard) -> Option<KeyRange> {
    KeyRange::from_wire(shard.spec.range.start, shard.spec.range.end).ok()
}

fn phase(shard: &Shard) -> Option<ShardPhase> {
    shard.status.as_ref().and_then(|s| s.phase)
}

/// What the executor asks of the shard's agents for a split or merge.
pub fn order(shard: &Shard) -> ReshardOrder {
    shard
        .status
        .as_ref()
        .and_then(|s| s.reshard.clone())
        .unwrap_or_default()
}

/// How long a source that switched at some point must still be kept, if at all.
pub fn retire_wait_ms(shard: &Shard, now_ms: u64) -> Option<u64> {
    let after = order(shard).retire_after_ms?;
    let after = u64::try_from(after).unwrap_or(0);
    (after > now_ms).then(|| after - now_ms)
}

/// `host:port` of the shard's primary while it serves (or is fenced) at its epoch.
pub fn primary_endpoint(shard: &Shard) -> Option<String> {
    let status = shard.status.as_ref()?;
    let primary = status.primary.as_ref()?;
    observed_on(&status.replicas, &primary.node)
        .filter(|o| o.role == ReplicaRole::Primary && o.epoch == Some(primary.epoch))
        .and_then(|o| o.endpoint.clone())
}

/// Whether the source's primary reports its comparison prepared for every target asked.
pub fn prepared(shard: &Shard) -> bool {
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
