//! Each node's share of the cluster's bytes, replicas and primaries — weighted, and capped by
//! the spread rule and by capacity — and how far nodes are from it. The yardstick the
//! rebalancer balances against; it plans nothing itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::cluster::ClusterState;
use super::error::PlanError;
use super::topology::Topology;

/// The largest deviation of any node from its weighted share, in percent of that share.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Imbalance {
    /// By bytes stored.
    pub bytes_pct: f64,
    /// By number of data-holding replicas.
    pub replicas_pct: f64,
    /// By number of primaries.
    pub primaries_pct: f64,
}

/// Each balanced node's weighted share of bytes, replicas and primaries.
pub(crate) struct Shares {
    /// The balanced nodes: online, not cordoned, weight > 0.
    pub(crate) members: Vec<usize>,
    /// Whether each node is balanced.
    pub(crate) member: Vec<bool>,
    /// Each node's share of bytes.
    pub(crate) bytes: Vec<f64>,
    /// Each node's share of data-holding replicas.
    pub(crate) replicas: Vec<f64>,
    /// Each node's share of primaries.
    pub(crate) primaries: Vec<f64>,
}

impl Shares {
    /// Shares over the nodes that may take replicas; other nodes are drained, cordoned or
    /// offline and are handled by their own plans. A node's share is its weight's part of
    /// what its zone can hold, and a zone's of what its region can hold, where the spread rule
    /// caps a region (zone) at `per_region` (`per_zone`) replicas of every shard: with 3
    /// regions and RF 3, each region holds exactly a third, however many nodes it has.
    pub(crate) fn of(state: &ClusterState<'_>) -> Self {
        let n = state.topo.nodes.len();
        let member: Vec<bool> = state
            .topo
            .nodes
            .iter()
            .map(|node| node.accepts_replicas())
            .collect();
        let members: Vec<usize> = (0..n).filter(|&i| member[i]).collect();
        let data_shards = state.topo.shards.iter().filter(|s| s.size_bytes > 0);
        let shard_bytes: f64 = data_shards.map(|s| s.size_bytes as f64).sum();
        let shard_count = state.topo.shards.len() as f64;
        let counts: Vec<u64> = state.counts.iter().map(|&c| u64::from(c)).collect();
        // A node holds at most its capacity, and about that many average replicas.
        let mean_replica = shard_bytes / shard_count.max(1.0);
        let capacity = |i: usize| state.node(i).capacity_bytes as f64;
        let bytes = spread_shares(state, &members, &state.bytes, shard_bytes, capacity);
        let replicas = spread_shares(state, &members, &counts, shard_count, |i| {
            if mean_replica > 0.0 {
                (capacity(i) / mean_replica).floor()
            } else {
                f64::INFINITY
            }
        });
        // A node should lead its fair part of the replicas it holds.
        let total_primaries: f64 = members.iter().map(|&i| f64::from(state.primaries[i])).sum();
        let total_replicas: f64 = members.iter().map(|&i| replicas[i]).sum();
        let primaries = (0..n)
            .map(|i| {
                if member[i] && total_replicas > 0.0 {
                    total_primaries * replicas[i] / total_replicas
                } else {
                    0.0
                }
            })
            .collect();
        Shares {
            bytes,
            replicas,
            primaries,
            members,
            member,
        }
    }

    pub(crate) fn imbalance(&self, state: &ClusterState<'_>) -> Imbalance {
        let worst = |load: &dyn Fn(usize) -> f64, target: &[f64]| -> f64 {
            self.members
                .iter()
                .filter(|&&i| target[i] > 0.0)
                .map(|&i| (load(i) - target[i]).abs() / target[i] * 100.0)
                .fold(0.0, f64::max)
        };
        Imbalance {
            bytes_pct: worst(&|i| state.bytes[i] as f64, &self.bytes),
            replicas_pct: worst(&|i| f64::from(state.counts[i]), &self.replicas),
            primaries_pct: worst(&|i| f64::from(state.primaries[i]), &self.primaries),
        }
    }
}

/// Splits the members' total `load` into node shares: regions first, then zones, then
/// nodes, each in proportion to weight but capped — a region (zone) by the spread rule
/// (`per_region` or `per_zone` times `per_shard_total`, the load of one replica of every
/// shard) and by what its nodes can hold, a node by `node_cap`.
fn spread_shares(
    state: &ClusterState<'_>,
    members: &[usize],
    load: &[u64],
    per_shard_total: f64,
    node_cap: impl Fn(usize) -> f64,
) -> Vec<f64> {
    let total: f64 = members.iter().map(|&i| load[i] as f64).sum();
    let weight = |i: usize| f64::from(state.node(i).weight);
    let group = |nodes: &[usize], per: u32| -> (f64, f64) {
        let spread_cap = if per == u32::MAX {
            f64::INFINITY
        } else {
            f64::from(per) * per_shard_total
        };
        let room: f64 = nodes.iter().map(|&i| node_cap(i)).sum();
        (nodes.iter().map(|&i| weight(i)).sum(), spread_cap.min(room))
    };
    let mut shares = vec![0.0; state.topo.nodes.len()];
    let regions = group_by(members, |i| state.region_of[i]);
    let region_groups: Vec<(f64, f64)> = regions
        .iter()
        .map(|g| group(g, state.spread.per_region))
        .collect();
    for (region, region_share) in regions.iter().zip(water_fill(total, &region_groups)) {
        let zones = group_by(region, |i| state.zone_of[i]);
        let zone_groups: Vec<(f64, f64)> = zones
            .iter()
            .map(|g| group(g, state.spread.per_zone))
            .collect();
        for (zone, zone_share) in zones.iter().zip(water_fill(region_share, &zone_groups)) {
            let node_groups: Vec<(f64, f64)> =
                zone.iter().map(|&i| (weight(i), node_cap(i))).collect();
            for (&i, share) in zone.iter().zip(water_fill(zone_share, &node_groups)) {
                shares[i] = share;
            }
        }
    }
    shares
}

/// Members grouped by a key, groups in order of first appearance.
fn group_by(members: &[usize], key: impl Fn(usize) -> usize) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut slot_of: BTreeMap<usize, usize> = BTreeMap::new();
    for &i in members {
        let slot = *slot_of.entry(key(i)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[slot].push(i);
    }
    groups
}

/// Divides `total` among groups in proportion to weight, none above its cap: capped groups
/// take their cap and the rest is shared again among the others (water-filling).
fn water_fill(total: f64, groups: &[(f64, f64)]) -> Vec<f64> {
    let mut shares = vec![0.0; groups.len()];
    let mut open: Vec<usize> = (0..groups.len()).collect();
    let mut remaining = total;
    loop {
        let weight: f64 = open.iter().map(|&g| groups[g].0).sum();
        if weight <= 0.0 {
            break;
        }
        let capped: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&g| remaining * groups[g].0 / weight > groups[g].1)
            .collect();
        if capped.is_empty() {
            for &g in &open {
                shares[g] = remaining * groups[g].0 / weight;
            }
            break;
        }
        for &g in &capped {
            shares[g] = groups[g].1;
            remaining -= groups[g].1;
        }
        open.retain(|g| !capped.contains(g));
    }
    shares
}

/// Half-width of a count band: the percentage of the share, but never under one, so a band
/// always contains a whole number.
pub(crate) fn count_slack(share: f64, t: f64) -> f64 {
    (share * t).max(1.0)
}

/// Measures how far each node is from its weighted share.
pub fn measure_imbalance(topology: &Topology) -> Result<Imbalance, PlanError> {
    let state = ClusterState::new(topology)?;
    Ok(Shares::of(&state).imbalance(&state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn water_filling_caps_groups_and_shares_the_rest() {
        assert_eq!(water_fill(90.0, &[(1.0, f64::INFINITY); 3]), vec![30.0; 3]);
        // The first group can hold only 10; the others split the remaining 80.
        assert_eq!(
            water_fill(90.0, &[(1.0, 10.0), (1.0, 100.0), (1.0, 100.0)]),
            vec![10.0, 40.0, 40.0]
        );
        // More than everyone can hold: everyone full.
        assert_eq!(
            water_fill(90.0, &[(1.0, 10.0), (2.0, 20.0)]),
            vec![10.0, 20.0]
        );
        assert_eq!(count_slack(10.0, 0.05), 1.0);
        assert!((count_slack(100.0, 0.05) - 5.0).abs() < 1e-9);
    }
}
