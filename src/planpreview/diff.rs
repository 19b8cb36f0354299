//! The pure part of a preview: from the current objects and the head commit's, which shards
//! are split, merged, added, dropped or re-placed, which tables change (their schema versions
//! come from `super::schema`), and, for each split or merge, the planner's own plan (steps,
//! risk, hash). No I/O.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use serde::Serialize;

use super::schema::{SchemaPreview, previews};
use super::snapshot::Snapshot;
use crate::api::{Shard, Table};
use crate::decide::reshard::{DEFAULT_GRACE_MS, grace_ms, plan_declared, range_of};
use crate::plan::{KeyRange, NewShard, ReshardRequest, RiskClass};

/// What a change would cause.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Changes {
    /// Splits, merges and other re-tilings of a table's keys, each with its plan.
    pub reshards: Vec<Reshard>,
    /// Shards that appear without replacing any (a new table's, or filling a gap).
    pub added_shards: Vec<ShardRef>,
    /// Shards that disappear with nothing taking over their keys: their rows are lost.
    pub dropped_shards: Vec<ShardRef>,
    /// Shards whose placement wishes change (replicas may move).
    pub placement_changes: Vec<PlacementChange>,
    /// Tables created, removed or whose spec changes.
    pub table_changes: Vec<TableChange>,
    /// The schema version each table whose schema changes would get, or its refusal.
    pub schema_changes: Vec<SchemaPreview>,
    /// Problems that make the change invalid as it is (git-sync would refuse the commit).
    pub problems: Vec<String>,
    /// Whether the change would be refused as it is: a problem above, or a refused schema
    /// change (the admission webhook denies it, and the operator creates no version).
    pub refused: bool,
    /// The highest risk of anything above; `None` when nothing changes.
    pub risk: Option<RiskClass>,
}

/// A shard and its keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardRef {
    /// The table.
    pub table: String,
    /// The Shard's name.
    pub name: String,
    /// Its keys, `[start, end)`.
    pub range: String,
}

/// The kind of re-tiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ReshardKind {
    /// One shard replaced by several covering it.
    Split,
    /// Several adjacent shards replaced by one.
    Merge,
    /// Several shards replaced by several others covering the same keys.
    Reshard,
}

/// One split or merge and the plan the operator would follow.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reshard {
    /// Split, merge or reshard.
    pub kind: ReshardKind,
    /// The table.
    pub table: String,
    /// The shards replaced.
    pub sources: Vec<ShardRef>,
    /// The shards replacing them.
    pub targets: Vec<ShardRef>,
    /// Bytes of rows to copy, when the live cluster reports the sources' sizes.
    pub bytes_to_copy: Option<u64>,
    /// The plan's risk.
    pub risk: RiskClass,
    /// The plan's hash, to approve it with; `None` when the planner could not plan it.
    pub plan_hash: Option<String>,
    /// The plan's steps, one line each.
    pub steps: Vec<String>,
    /// What the planner could not plan, and why.
    pub blocked: Vec<String>,
}

/// A shard's placement wishes before and after.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementChange {
    /// The shard.
    pub shard: String,
    /// Before, as JSON.
    pub from: String,
    /// After, as JSON.
    pub to: String,
}

/// What happens to a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TableChangeKind {
    /// The table is created.
    Created,
    /// The table's object is removed (its rows with it).
    Removed,
    /// The table's schema or settings change.
    Changed,
}

/// A table-level change; what a schema change does is in [`Changes::schema_changes`].
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TableChange {
    /// The table.
    pub table: String,
    /// Created, removed or changed.
    pub kind: TableChangeKind,
    /// Which top-level fields of the spec differ (for `Changed`).
    pub fields: Vec<String>,
}

/// The Table fields the schema differ judges (the schema is inlined in the spec); a change of
/// any other field (`spec.sharding`, `spec.cluster`) is not classified.
const SCHEMA_FIELDS: [&str; 5] = [
    "spec.columns",
    "spec.primaryKey",
    "spec.indexes",
    "spec.checks",
    "spec.shardKey",
];

/// Compares `current` with `head`. `live` says whether `current` is the cluster (it reports
/// shard sizes and SchemaVersions).
pub fn diff(current: &Snapshot, head: &Snapshot, live: bool) -> Changes {
    let mut changes = Changes {
        problems: head.problems.clone(),
        ..Changes::default()
    };
    let old = by_name(&current.shards);
    let new = by_name(&head.shards);
    for (name, after) in &new {
        let Some(before) = old.get(name) else {
            continue;
        };
        if before.spec.range != after.spec.range {
            changes.problems.push(format!(
                "Shard {name}: its range changes in place; ranges are immutable, so replace it with Shards of new names"
            ));
        }
        if before.spec.placement != after.spec.placement {
            changes.placement_changes.push(PlacementChange {
                shard: name.clone(),
                from: json_of(&before.spec.placement),
                to: json_of(&after.spec.placement),
            });
        }
    }
    let removed: Vec<&Shard> = old
        .iter()
        .filter(|(name, _)| !new.contains_key(*name))
        .map(|(_, s)| *s)
        .collect();
    let added: Vec<&Shard> = new
        .iter()
        .filter(|(name, _)| !old.contains_key(*name))
        .map(|(_, s)| *s)
        .collect();
    for group in overlapping_groups(&removed, &added) {
        match (group.sources.is_empty(), group.targets.is_empty()) {
            (false, false) => {
                changes
                    .reshards
                    .push(plan_group(current, head, &group, live));
            }
            (true, false) => changes
                .added_shards
                .extend(group.targets.iter().map(|s| shard_ref(s))),
            (false, true) => {
                changes
                    .dropped_shards
                    .extend(group.sources.iter().map(|s| shard_ref(s)));
            }
            (true, true) => {}
        }
    }
    changes.table_changes = table_changes(&current.tables, &head.tables);
    changes.schema_changes = previews(current, head, live);
    changes.refused =
        !changes.problems.is_empty() || changes.schema_changes.iter().any(|s| s.refusal.is_some());
    changes.risk = overall_risk(&changes);
    changes
}

fn by_name(shards: &[Shard]) -> BTreeMap<String, &Shard> {
    shards.iter().map(|s| (s.name_any(), s)).collect()
}

fn json_of<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn shard_ref(shard: &Shard) -> ShardRef {
    ShardRef {
        table: shard.spec.table.clone(),
        name: shard.name_any(),
        range: range_of(shard).map_or_else(|| "(invalid range)".to_owned(), |r| r.to_string()),
    }
}

/// Removed and added shards of one table whose keys overlap, transitively.
struct Group<'a> {
    table: String,
    sources: Vec<&'a Shard>,
    targets: Vec<&'a Shard>,
}

fn overlapping_groups<'a>(removed: &[&'a Shard], added: &[&'a Shard]) -> Vec<Group<'a>> {
    // Union-find over removed (0..r) and added (r..r+a) shards, joined when a removed and
    // an added shard of the same table share keys.
    let all: Vec<&Shard> = removed.iter().chain(added).copied().collect();
    let mut parent: Vec<usize> = (0..all.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for (i, source) in removed.iter().enumerate() {
        for (j, target) in added.iter().enumerate() {
            if source.spec.table == target.spec.table && overlaps(source, target) {
                let (a, b) = (root(&mut parent, i), root(&mut parent, removed.len() + j));
                parent[a] = b;
            }
        }
    }
    let mut groups = BTreeMap::<usize, Group<'a>>::new();
    for (i, shard) in all.iter().enumerate() {
        let group = groups.entry(root(&mut parent, i)).or_insert_with(|| Group {
            table: shard.spec.table.clone(),
            sources: Vec::new(),
            targets: Vec::new(),
        });
        if i < removed.len() {
            group.sources.push(shard);
        } else {
            group.targets.push(shard);
        }
    }
    let mut groups: Vec<Group<'a>> = groups.into_values().collect();
    for group in &mut groups {
        group
            .sources
            .sort_by_key(|s| range_of(s).map(KeyRange::start));
        group
            .targets
            .sort_by_key(|s| range_of(s).map(KeyRange::start));
    }
    groups.sort_by(|a, b| (&a.table, first_name(a)).cmp(&(&b.table, first_name(b))));
    groups
}

fn first_name(group: &Group<'_>) -> String {
    group
        .sources
        .iter()
        .chain(&group.targets)
        .next()
        .map(|s| s.name_any())
        .unwrap_or_default()
}

fn overlaps(a: &Shard, b: &Shard) -> bool {
    match (range_of(a), range_of(b)) {
        (Some(a), Some(b)) => a.overlaps(b),
        _ => false,
    }
}

/// A split's, merge's or re-tiling's plan, made by the operator's own function with the
/// grace period the head's Table declares: the hash shown is the hash the operator's plan
/// will have for the same topology.
fn plan_group(
    current: &Snapshot,
    head: &Snapshot,
    group: &Group<'_>,
    sizes_known: bool,
) -> Reshard {
    let kind = match (group.sources.len(), group.targets.len()) {
        (1, _) => ReshardKind::Split,
        (_, 1) => ReshardKind::Merge,
        _ => ReshardKind::Reshard,
    };
    let request = ReshardRequest {
        table: group.table.clone(),
        sources: group.sources.iter().map(|s| s.name_any()).collect(),
        targets: group
            .targets
            .iter()
            .filter_map(|s| {
                Some(NewShard {
                    name: s.name_any(),
                    range: range_of(s)?,
                })
            })
            .collect(),
    };
    let topology = current.topology(&group.table, !sizes_known);
    let bytes_to_copy = sizes_known.then(|| {
        group
            .sources
            .iter()
            .filter_map(|s| s.status.as_ref()?.size_bytes)
            .map(|bytes| u64::try_from(bytes).unwrap_or(0))
            .sum()
    });
    let mut reshard = Reshard {
        kind,
        table: group.table.clone(),
        sources: group.sources.iter().map(|s| shard_ref(s)).collect(),
        targets: group.targets.iter().map(|s| shard_ref(s)).collect(),
        bytes_to_copy,
        // Every split or merge drops its sources after the switch.
        risk: RiskClass::Destructive,
        plan_hash: None,
        steps: Vec::new(),
        blocked: Vec::new(),
    };
    let grace = head
        .tables
        .iter()
        .chain(&current.tables)
        .find(|t| t.name_any() == group.table)
        .map_or(DEFAULT_GRACE_MS, grace_ms);
    match plan_declared(&topology, &request, grace) {
        Ok(plan) => {
            reshard.risk = plan.risk;
            reshard.plan_hash = Some(plan.hash.clone());
            reshard.steps = plan
                .steps()
                .map(|step| step_line(&step.action, step.risk))
                .collect();
            reshard.blocked = plan
                .blocked
                .iter()
                .map(|b| format!("{}: {}", b.subject, b.reason))
                .collect();
        }
        // The input cannot be planned (for example the table's DatabaseCluster is not
        // declared): say why instead of failing the whole preview.
        Err(error) => reshard.blocked.push(format!("not planned: {error}")),
    }
    reshard
}

/// `Action key=value ...`: the action's name and its scalar arguments.
pub(crate) fn step_line(action: &crate::plan::StepAction, risk: RiskClass) -> String {
    let value = serde_json::to_value(action).unwrap_or_default();
    let (name, args) = match &value {
        serde_json::Value::Object(map) => map
            .iter()
            .next()
            .map_or(("?".to_owned(), String::new()), |(name, args)| {
                (name.clone(), args_line(args))
            }),
        serde_json::Value::String(name) => (name.clone(), String::new()),
        _ => ("?".to_owned(), String::new()),
    };
    format!("{name}{args} ({risk:?})")
}

fn args_line(args: &serde_json::Value) -> String {
    let Some(map) = args.as_object() else {
        return String::new();
    };
    map.iter()
        .map(|(key, value)| format!(" {key}={}", arg_text(value)))
        .collect()
}

/// Strings bare, key ranges as `[start, end)`, lists comma-separated, new shards as
/// `name@node+node`.
fn arg_text(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::String(text) => text.clone(),
        Value::Array(items) => items.iter().map(arg_text).collect::<Vec<_>>().join(","),
        Value::Object(map) if map.keys().all(|k| k == "start" || k == "end") => {
            let bound = |k: &str| map.get(k).and_then(Value::as_i64);
            KeyRange::from_wire(bound("start"), bound("end"))
                .map_or_else(|_| value.to_string(), |range| range.to_string())
        }
        Value::Object(map) if map.contains_key("name") => format!(
            "{}@{}",
            map.get("name").map(arg_text).unwrap_or_default(),
            map.get("nodes")
                .and_then(Value::as_array)
                .map(|nodes| nodes.iter().map(arg_text).collect::<Vec<_>>().join("+"))
                .unwrap_or_default()
        ),
        other => other.to_string(),
    }
}

fn table_changes(current: &[Table], head: &[Table]) -> Vec<TableChange> {
    let old: BTreeMap<String, &Table> = current.iter().map(|t| (t.name_any(), t)).collect();
    let new: BTreeMap<String, &Table> = head.iter().map(|t| (t.name_any(), t)).collect();
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    names
        .into_iter()
        .filter_map(|name| {
            let (kind, fields) = match (old.get(name), new.get(name)) {
                (None, Some(_)) => (TableChangeKind::Created, Vec::new()),
                (Some(_), None) => (TableChangeKind::Removed, Vec::new()),
                (Some(before), Some(after)) if before.spec != after.spec => {
                    (TableChangeKind::Changed, changed_fields(before, after))
                }
                _ => return None,
            };
            Some(TableChange {
                table: name.clone(),
                kind,
                fields,
            })
        })
        .collect()
}

fn changed_fields(before: &Table, after: &Table) -> Vec<String> {
    let (before, after) = (
        serde_json::to_value(&before.spec).unwrap_or_default(),
        serde_json::to_value(&after.spec).unwrap_or_default(),
    );
    let empty = serde_json::Map::new();
    let (before, after) = (
        before.as_object().unwrap_or(&empty),
        after.as_object().unwrap_or(&empty),
    );
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|key| before.get(*key) != after.get(*key))
        .map(|key| format!("spec.{key}"))
        .collect()
}

/// Dropping shards or tables loses rows: destructive. A schema version carries its class's
/// risk; a change of a table field the schema differ does not judge counts as disruptive.
fn overall_risk(changes: &Changes) -> Option<RiskClass> {
    let mut risks: Vec<RiskClass> = changes.reshards.iter().map(|r| r.risk).collect();
    risks.extend(changes.schema_changes.iter().filter_map(|s| s.risk));
    if !changes.dropped_shards.is_empty()
        || changes
            .table_changes
            .iter()
            .any(|t| t.kind == TableChangeKind::Removed)
    {
        risks.push(RiskClass::Destructive);
    }
    if changes.table_changes.iter().any(|t| {
        t.kind == TableChangeKind::Changed
            && t.fields
                .iter()
                .any(|f| !SCHEMA_FIELDS.contains(&f.as_str()))
    }) {
        risks.push(RiskClass::Disruptive);
    }
    if !changes.added_shards.is_empty()
        || !changes.placement_changes.is_empty()
        || changes
            .table_changes
            .iter()
            .any(|t| t.kind == TableChangeKind::Created)
    {
        risks.push(RiskClass::Safe);
    }
    risks.into_iter().max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ShardSpec;
    use crate::api::shard::{KeyRangeSpec, ShardPlacement};

    fn shard(name: &str, start: Option<i64>, end: Option<i64>) -> Shard {
        Shard::new(
            name,
            ShardSpec {
                table: "t".into(),
                range: KeyRangeSpec { start, end },
                placement: None,
            },
        )
    }

    fn snapshot(shards: Vec<Shard>) -> Snapshot {
        Snapshot {
            shards,
            ..Snapshot::default()
        }
    }

    #[test]
    fn two_adjacent_shards_replaced_by_one_are_a_merge() {
        let current = snapshot(vec![shard("a", None, Some(0)), shard("b", Some(0), None)]);
        let head = snapshot(vec![shard("ab", None, None)]);
        let changes = diff(&current, &head, false);
        assert_eq!(changes.reshards.len(), 1);
        let merge = &changes.reshards[0];
        assert_eq!(merge.kind, ReshardKind::Merge);
        let sources: Vec<&str> = merge.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(sources, ["a", "b"]);
        // No DatabaseCluster declared: no replication factor, so the planner cannot place
        // the target; the preview says so instead of failing.
        assert_eq!(merge.plan_hash, None);
        assert!(
            merge.blocked[0].starts_with("not planned:"),
            "{:?}",
            merge.blocked
        );
        assert_eq!(merge.risk, RiskClass::Destructive);
        assert!(changes.dropped_shards.is_empty() && changes.added_shards.is_empty());
    }

    #[test]
    fn a_shard_removed_with_nothing_covering_its_keys_is_a_destructive_drop() {
        let current = snapshot(vec![shard("a", None, Some(0)), shard("b", Some(0), None)]);
        let head = snapshot(vec![shard("a", None, Some(0))]);
        let changes = diff(&current, &head, false);
        assert!(changes.reshards.is_empty());
        assert_eq!(changes.dropped_shards[0].name, "b");
        assert_eq!(changes.risk, Some(RiskClass::Destructive));
    }

    #[test]
    fn new_shards_placement_changes_and_in_place_range_edits_are_told_apart() {
        let mut moved = shard("a", None, Some(0));
        moved.spec.placement = Some(ShardPlacement {
            pinned_nodes: vec!["n1".into()],
            preferred_primary_region: None,
        });
        let current = snapshot(vec![shard("a", None, Some(0)), shard("b", Some(0), None)]);
        let head = snapshot(vec![
            moved,
            shard("b", Some(5), None),
            shard("c", Some(0), Some(5)),
        ]);
        let changes = diff(&current, &head, false);
        assert_eq!(changes.placement_changes[0].shard, "a");
        assert!(changes.placement_changes[0].to.contains("n1"));
        assert_eq!(changes.added_shards[0].name, "c");
        assert!(
            changes.problems[0].contains("Shard b: its range changes in place"),
            "{:?}",
            changes.problems
        );
    }

    #[test]
    fn nothing_changed_means_no_risk() {
        let current = snapshot(vec![shard("a", None, None)]);
        let changes = diff(&current, &current.clone(), false);
        assert_eq!(changes.risk, None);
        assert!(changes.reshards.is_empty() && changes.problems.is_empty());
    }
}
