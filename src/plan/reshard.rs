//! Splits and merges as one operation: replace source shards by target shards that tile the
//! same keys — prepare targets → copy → catch up → fence writes → verify → switch routing in
//! one write → drop the sources after a grace period.

use serde::{Deserialize, Serialize};

use super::cluster::ClusterState;
use super::error::PlanError;
use super::keyspace::{KeyRange, KeyRangeError, check_tiling_of};
use super::schedule::{ConcurrencyLimits, Plan, PlanBuilder};
use super::steps::{BlockReason, PlanKind, Step, StepAction, TargetShard};
use super::topology::{Shard, ShardPlacement, Topology};

/// A new shard and the keys it is to own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewShard {
    /// Its name.
    pub name: String,
    /// Its keys.
    pub range: KeyRange,
}

/// Replace `sources` of `table` by `targets` covering exactly the same keys: a split is one
/// source and several targets, a merge several adjacent sources and one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReshardRequest {
    /// The table.
    pub table: String,
    /// The shards replaced.
    pub sources: Vec<String>,
    /// The shards replacing them.
    pub targets: Vec<NewShard>,
}

impl ReshardRequest {
    /// Split `shard` at `point` into shards named `<shard>-0` and `<shard>-1`.
    pub fn split_at(shard: &Shard, point: i64) -> Result<Self, KeyRangeError> {
        let (low, high) = shard.range.split_at(point)?;
        Ok(Self::split_into(shard, vec![low, high]))
    }

    /// Split `shard` into `parts` shards of equal key counts, named `<shard>-<k>`.
    pub fn split_even(shard: &Shard, parts: u64) -> Result<Self, KeyRangeError> {
        Ok(Self::split_into(shard, shard.range.split_even(parts)?))
    }

    fn split_into(shard: &Shard, ranges: Vec<KeyRange>) -> Self {
        ReshardRequest {
            table: shard.table.clone(),
            sources: vec![shard.name.clone()],
            targets: ranges
                .into_iter()
                .enumerate()
                .map(|(k, range)| NewShard {
                    name: format!("{}-{k}", shard.name),
                    range,
                })
                .collect(),
        }
    }

    /// Merge two adjacent shards into one named `name`.
    pub fn merge(first: &Shard, second: &Shard, name: &str) -> Result<Self, KeyRangeError> {
        Ok(ReshardRequest {
            table: first.table.clone(),
            sources: vec![first.name.clone(), second.name.clone()],
            targets: vec![NewShard {
                name: name.to_owned(),
                range: first.range.merge(second.range)?,
            }],
        })
    }
}

/// Plans a split or merge. A malformed request (sources of another table or not adjacent,
/// targets that do not tile the sources' keys, names in use) yields a plan with a blocker
/// saying what is wrong, and no steps. `now_ms` and `grace_ms` set when sources may be dropped.
pub fn plan_reshard(
    topology: &Topology,
    request: &ReshardRequest,
    now_ms: u64,
    grace_ms: u64,
) -> Result<Plan, PlanError> {
    let mut plan = PlanBuilder::new(PlanKind::Reshard, ConcurrencyLimits::default());
    let sources: Vec<&Shard> = request
        .sources
        .iter()
        .map(|name| {
            topology
                .shards
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| PlanError::UnknownShard {
                    shard: name.clone(),
                })
        })
        .collect::<Result<_, _>>()?;
    if let Err(detail) = validate(topology, request, &sources) {
        plan.block(&request.table, BlockReason::InvalidReshard { detail });
        return Ok(plan.finish());
    }
    // Place the targets as shards of their own, with sizes estimated from the sources'
    // bytes in proportion to the keys they take over.
    let mut future = topology.clone();
    let first_target = future.shards.len();
    for t in &request.targets {
        future.shards.push(Shard {
            name: t.name.clone(),
            table: request.table.clone(),
            range: t.range,
            size_bytes: estimated_size(&sources, t.range),
            epoch: 0,
            replicas: Vec::new(),
            placement: ShardPlacement::default(),
        });
    }
    let mut state = ClusterState::new(&future)?;
    let mut targets = Vec::new();
    for (k, t) in request.targets.iter().enumerate() {
        let shard = first_target + k;
        let mut nodes = Vec::new();
        for _ in 0..topology.replication_factor {
            match state.choose_host(shard, None) {
                Ok(node) => {
                    state.add_replica(shard, node);
                    nodes.push(state.node_name(node).to_owned());
                }
                Err(rejected) => {
                    plan.block(
                        &t.name,
                        BlockReason::NoPlacement {
                            missing: topology.replication_factor - nodes.len() as u32,
                            rejected,
                        },
                    );
                    break;
                }
            }
        }
        targets.push(TargetShard {
            name: t.name.clone(),
            table: request.table.clone(),
            range: t.range,
            nodes,
        });
    }
    if plan.has_blockers() {
        return Ok(plan.finish());
    }
    let source_names: Vec<String> = request.sources.clone();
    let target_names: Vec<String> = request.targets.iter().map(|t| t.name.clone()).collect();
    let mut steps = vec![Step::new(
        StepAction::PrepareTargets { targets },
        "new replica sets, placed like any shard, to receive the rows",
    )];
    for source in &sources {
        for t in &request.targets {
            if let Some(range) = source.range.intersection(t.range) {
                steps.push(Step::new(
                    StepAction::CopyRows {
                        source: source.name.clone(),
                        target: t.name.clone(),
                        range,
                    },
                    format!(
                        "{} takes over keys {range} from {}; copy them with a row-filtered \
                         publication while writes continue",
                        t.name, source.name
                    ),
                ));
            }
        }
    }
    for t in &request.targets {
        steps.push(Step::new(
            StepAction::CatchUpTarget {
                target: t.name.clone(),
            },
            "wait until logical replication lag is small enough for a brief fence",
        ));
    }
    steps.push(Step::new(
        StepAction::FenceWrites {
            shards: source_names.clone(),
        },
        "stop writes on the sources so the targets hold every acknowledged write",
    ));
    steps.push(Step::new(
        StepAction::VerifyRanges {
            sources: source_names.clone(),
            targets: target_names.clone(),
        },
        "row counts and checksums per range must match before routing switches",
    ));
    steps.push(Step::new(
        StepAction::SwitchRouting {
            table: request.table.clone(),
            retire: source_names.clone(),
            serve: target_names,
        },
        "one write of the table's routing map, guarded by its resourceVersion",
    ));
    steps.push(Step::new(
        StepAction::DropShards {
            shards: source_names,
            not_before_ms: now_ms.saturating_add(grace_ms),
        },
        format!("drop the retired sources after a grace period of {grace_ms} ms"),
    ));
    plan.schedule(&request.table, steps, None);
    Ok(plan.finish())
}

fn validate(
    topology: &Topology,
    request: &ReshardRequest,
    sources: &[&Shard],
) -> Result<(), String> {
    if sources.is_empty() || request.targets.is_empty() {
        return Err("name at least one source shard and one target shard".to_owned());
    }
    if let Some(other) = sources.iter().find(|s| s.table != request.table) {
        return Err(format!(
            "source {} belongs to table {}, not {}",
            other.name, other.table, request.table
        ));
    }
    let mut ranges: Vec<KeyRange> = sources.iter().map(|s| s.range).collect();
    ranges.sort();
    let mut span = ranges[0];
    for &r in &ranges[1..] {
        span = span
            .merge(r)
            .map_err(|e| format!("the sources must be adjacent: {e}"))?;
    }
    check_tiling_of(
        span,
        request.targets.iter().map(|t| (t.name.as_str(), t.range)),
    )
    .map_err(|e| e.to_string())?;
    for t in &request.targets {
        if topology.shards.iter().any(|s| s.name == t.name) {
            return Err(format!("target name {} is already a shard", t.name));
        }
    }
    Ok(())
}

fn estimated_size(sources: &[&Shard], range: KeyRange) -> u64 {
    sources
        .iter()
        .filter_map(|s| {
            let overlap = s.range.intersection(range)?;
            Some((u128::from(s.size_bytes) * overlap.key_count() / s.range.key_count()) as u64)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::plan::keyspace::check_tiling;
    use crate::plan::simulate::apply_plan;
    use crate::plan::steps::RiskClass;
    use crate::plan::testkit::{mk_nodes, mk_placed, spread_violations};

    fn table() -> Topology {
        mk_placed(3, mk_nodes(3, 1, 2), &[400, 400, 400])
    }

    fn tiles(topology: &Topology) -> bool {
        check_tiling(topology.shards.iter().map(|s| (s.name.as_str(), s.range))).is_ok()
    }

    #[test]
    fn a_split_runs_the_full_step_list_and_keeps_the_tiling() {
        let topology = table();
        let request = ReshardRequest::split_even(&topology.shards[1], 2).expect("split");
        let plan = plan_reshard(&topology, &request, 1_000, 60_000).expect("plan");
        assert!(plan.blocked.is_empty(), "{:?}", plan.blocked);
        let kinds: Vec<&str> = plan
            .steps()
            .map(|s| match s.action {
                StepAction::PrepareTargets { .. } => "prepare",
                StepAction::CopyRows { .. } => "copy",
                StepAction::CatchUpTarget { .. } => "catch-up",
                StepAction::FenceWrites { .. } => "fence",
                StepAction::VerifyRanges { .. } => "verify",
                StepAction::SwitchRouting { .. } => "switch",
                StepAction::DropShards { .. } => "drop",
                _ => "other",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "prepare", "copy", "copy", "catch-up", "catch-up", "fence", "verify", "switch",
                "drop"
            ]
        );
        assert!(plan.steps().any(|s| s.action
            == StepAction::DropShards {
                shards: vec!["s1".into()],
                not_before_ms: 61_000
            }));
        assert_eq!(plan.risk, RiskClass::Destructive);
        let after = apply_plan(&topology, &plan);
        assert!(tiles(&after));
        let names: Vec<&str> = after.shards.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["s0", "s2", "s1-0", "s1-1"]);
        // Half the keys, so about half the bytes.
        assert!((199..=200).contains(&after.shards[2].size_bytes));
        assert!(spread_violations(&after).is_empty());
    }

    #[test]
    fn a_merge_copies_both_sources_into_one_target() {
        let topology = table();
        let request = ReshardRequest::merge(&topology.shards[0], &topology.shards[1], "s01")
            .expect("adjacent");
        let plan = plan_reshard(&topology, &request, 0, 0).expect("plan");
        let copies = plan
            .steps()
            .filter(|s| matches!(s.action, StepAction::CopyRows { .. }))
            .count();
        assert_eq!(copies, 2);
        let after = apply_plan(&topology, &plan);
        assert!(tiles(&after));
        assert_eq!(
            after
                .shards
                .iter()
                .find(|s| s.name == "s01")
                .map(|s| s.size_bytes),
            Some(800)
        );
        assert!(ReshardRequest::merge(&topology.shards[0], &topology.shards[2], "x").is_err());
    }

    #[test]
    fn a_request_that_does_not_tile_is_refused_with_the_gap() {
        let topology = table();
        let mut request = ReshardRequest::split_even(&topology.shards[1], 3).expect("split");
        request.targets.remove(1);
        let plan = plan_reshard(&topology, &request, 0, 0).expect("plan");
        assert!(plan.operations.is_empty());
        let BlockReason::InvalidReshard { detail } = &plan.blocked[0].reason else {
            panic!("{:?}", plan.blocked);
        };
        assert!(detail.contains("gap: no shard owns keys"), "{detail}");
        let err = plan_reshard(
            &topology,
            &ReshardRequest {
                sources: vec!["nope".into()],
                ..request
            },
            0,
            0,
        )
        .expect_err("unknown shard");
        assert_eq!(
            err,
            PlanError::UnknownShard {
                shard: "nope".into()
            }
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn splitting_any_shard_keeps_the_table_tiled(pick in any::<prop::sample::Index>(), parts in 2u64..6, point in any::<i64>()) {
            let topology = mk_placed(3, mk_nodes(3, 1, 2), &[100; 5]);
            let source = &topology.shards[pick.index(5)];
            let request = match ReshardRequest::split_at(source, point) {
                Ok(r) if point % 2 == 0 => r,
                _ => ReshardRequest::split_even(source, parts).expect("wide range"),
            };
            let plan = plan_reshard(&topology, &request, 0, 0).expect("plan");
            prop_assert!(plan.blocked.is_empty());
            let after = apply_plan(&topology, &plan);
            prop_assert!(tiles(&after));
            prop_assert_eq!(after.shards.len(), 4 + request.targets.len());
        }
    }
}
