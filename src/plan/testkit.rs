//! Builders and generators shared by the planner's tests: `mk_node`, `mk_shard`, small
//! clusters, and proptest strategies for whole topologies.

use proptest::prelude::*;

use super::keyspace::KeyRange;
use super::placement::plan_placement;
use super::schedule::ConcurrencyLimits;
use super::simulate::apply_plan;
use super::topology::{Node, NodePhase, Replica, ReplicaRole, Shard, ShardPlacement, Topology};

/// An online node with plenty of capacity and ordinary weight.
pub(crate) fn mk_node(name: &str, region: &str, zone: &str) -> Node {
    Node {
        name: name.to_owned(),
        region: region.to_owned(),
        zone: zone.to_owned(),
        capacity_bytes: 1 << 50,
        weight: 100,
        phase: NodePhase::Online,
        cordoned: false,
    }
}

/// A shard of table `t` owning the whole key space; the first node holds the primary and
/// every replica is in sync.
pub(crate) fn mk_shard(name: &str, size_bytes: u64, nodes: &[&str]) -> Shard {
    Shard {
        name: name.to_owned(),
        table: "t".to_owned(),
        range: KeyRange::FULL,
        size_bytes,
        epoch: 1,
        replicas: nodes
            .iter()
            .enumerate()
            .map(|(i, n)| Replica {
                node: (*n).to_owned(),
                role: if i == 0 {
                    ReplicaRole::Primary
                } else {
                    ReplicaRole::Secondary
                },
                in_sync: true,
                lag_bytes: 0,
            })
            .collect(),
        placement: ShardPlacement::default(),
    }
}

/// `regions × zones × per_zone` online nodes named `r<R>z<Z>n<N>`.
pub(crate) fn mk_nodes(regions: usize, zones: usize, per_zone: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    for r in 0..regions {
        for z in 0..zones {
            for n in 0..per_zone {
                nodes.push(mk_node(
                    &format!("r{r}z{z}n{n}"),
                    &format!("r{r}"),
                    &format!("r{r}z{z}"),
                ));
            }
        }
    }
    nodes
}

/// Unplaced shards `s<k>` of table `t` tiling the key space, with the given sizes.
pub(crate) fn mk_unplaced(sizes: &[u64]) -> Vec<Shard> {
    let ranges = KeyRange::FULL
        .split_even(sizes.len() as u64)
        .expect("at least one shard");
    sizes
        .iter()
        .zip(ranges)
        .enumerate()
        .map(|(k, (&size, range))| Shard {
            range,
            replicas: Vec::new(),
            ..mk_shard(&format!("s{k}"), size, &[])
        })
        .collect()
}

/// A topology with every shard placed by the planner itself.
pub(crate) fn mk_placed(rf: u32, nodes: Vec<Node>, sizes: &[u64]) -> Topology {
    let topology = Topology {
        replication_factor: rf,
        nodes,
        shards: mk_unplaced(sizes),
    };
    let plan = plan_placement(&topology, ConcurrencyLimits::default()).expect("valid topology");
    assert!(
        plan.blocked.is_empty(),
        "placement blocked: {:?}",
        plan.blocked
    );
    apply_plan(&topology, &plan)
}

/// Clusters of 3–4 regions, 1–3 zones each, 1–3 nodes per zone, RF 3, 6–60 shards of
/// 10–200 bytes, placed by the planner and then possibly grown by empty nodes.
pub(crate) fn arb_cluster() -> impl Strategy<Value = Topology> {
    (
        3usize..=4,
        1usize..=3,
        1usize..=3,
        prop::collection::vec(10u64..200, 6..60),
        0usize..4,
    )
        .prop_map(|(regions, zones, per_zone, sizes, added)| {
            let mut topology = mk_placed(3, mk_nodes(regions, zones, per_zone), &sizes);
            for k in 0..added {
                let r = k % regions;
                topology.nodes.push(mk_node(
                    &format!("new{k}"),
                    &format!("r{r}"),
                    &format!("r{r}z0"),
                ));
            }
            topology
        })
}

/// Every shard whose replicas break the zone/region spread rule, or sit twice on a node.
pub(crate) fn spread_violations(topology: &Topology) -> Vec<String> {
    use std::collections::{BTreeMap, BTreeSet};
    let regions = super::spread::regions_in_service(&topology.nodes);
    let limits = super::spread::spread_limits(topology.replication_factor, regions);
    let node = |name: &str| topology.nodes.iter().find(|n| n.name == name);
    let mut bad = Vec::new();
    for shard in &topology.shards {
        let mut zones: BTreeMap<(&str, &str), u32> = BTreeMap::new();
        let mut regions: BTreeMap<&str, u32> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for r in &shard.replicas {
            if !seen.insert(r.node.as_str()) {
                bad.push(format!("{} twice on {}", shard.name, r.node));
            }
            if let Some(n) = node(&r.node) {
                *zones.entry((&n.region, &n.zone)).or_default() += 1;
                *regions.entry(&n.region).or_default() += 1;
            }
        }
        if zones.values().any(|&c| c > limits.per_zone) {
            bad.push(format!("{} crowds a zone: {zones:?}", shard.name));
        }
        if regions.values().any(|&c| c > limits.per_region) {
            bad.push(format!("{} crowds a region: {regions:?}", shard.name));
        }
    }
    bad
}

/// The fewest replicas each shard (in topology order) has at any point while `plan` runs step
/// by step, to check that no step sequence dips below where it started.
pub(crate) fn fewest_replicas_during(
    topology: &Topology,
    plan: &super::schedule::Plan,
) -> Vec<usize> {
    use super::schedule::Plan;
    use super::steps::Operation;
    let mut current = topology.clone();
    let mut fewest: Vec<usize> = current.shards.iter().map(|s| s.replicas.len()).collect();
    for step in plan.steps() {
        let one = Plan {
            operations: vec![Operation {
                wave: 0,
                subject: String::new(),
                steps: vec![step.clone()],
            }],
            blocked: Vec::new(),
            ..plan.clone()
        };
        current = apply_plan(&current, &one);
        for (f, s) in fewest.iter_mut().zip(&current.shards) {
            *f = (*f).min(s.replicas.len());
        }
    }
    fewest
}
