//! An indexed, mutable view of a [`Topology`] that planners update as they decide: node
//! and zone ids, per-node load, per-shard replica sets and epochs. Planning-time only; it
//! never describes anything the cluster has actually done.

use std::collections::{BTreeMap, HashSet};
use std::hash::BuildHasherDefault;

use super::error::PlanError;
use super::name_map::{NameHasher, NameMap};
use super::spread::{SpreadLimits, regions_in_service, spread_limits};
use super::steps::PlacementRejection;
use super::topology::{Node, NodePhase, ReplicaRole, Shard, Topology};

/// One replica in the planning view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) node: usize,
    pub(crate) role: ReplicaRole,
    pub(crate) in_sync: bool,
    pub(crate) lag_bytes: u64,
}

pub(crate) struct ClusterState<'a> {
    pub(crate) topo: &'a Topology,
    node_index: NameMap<&'a str, usize>,
    pub(crate) zone_of: Vec<usize>,
    pub(crate) region_of: Vec<usize>,
    pub(crate) spread: SpreadLimits,
    /// Mean bytes of a data-holding replica, the unit in which placement weighs bytes.
    mean_replica_bytes: f64,
    pub(crate) slots: Vec<Vec<Slot>>,
    pub(crate) pinned: Vec<Vec<usize>>,
    pub(crate) bytes: Vec<u64>,
    pub(crate) counts: Vec<u32>,
    pub(crate) primaries: Vec<u32>,
    pub(crate) epochs: Vec<u64>,
    /// The node holding each shard's primary (the first replica marked primary), cached
    /// because chain searches ask for it constantly.
    primary: Vec<Option<usize>>,
    pub(crate) node_shards: Vec<Vec<usize>>,
}

impl<'a> ClusterState<'a> {
    pub(crate) fn new(topo: &'a Topology) -> Result<Self, PlanError> {
        if topo.replication_factor == 0 {
            return Err(PlanError::ZeroReplicationFactor);
        }
        let mut node_index = NameMap::default();
        let mut zones: NameMap<(&str, &str), usize> = NameMap::default();
        let mut regions: NameMap<&str, usize> = NameMap::default();
        let mut zone_of = Vec::with_capacity(topo.nodes.len());
        let mut region_of = Vec::with_capacity(topo.nodes.len());
        for (i, n) in topo.nodes.iter().enumerate() {
            if node_index.insert(n.name.as_str(), i).is_some() {
                return Err(PlanError::DuplicateName {
                    name: n.name.clone(),
                });
            }
            let next_zone = zones.len();
            zone_of.push(*zones.entry((&n.region, &n.zone)).or_insert(next_zone));
            let next_region = regions.len();
            region_of.push(*regions.entry(&n.region).or_insert(next_region));
        }
        let mut state = ClusterState {
            topo,
            node_index,
            zone_of,
            region_of,
            spread: spread_limits(topo.replication_factor, regions_in_service(&topo.nodes)),
            mean_replica_bytes: {
                let sizes = topo.shards.iter().map(|s| s.size_bytes as f64);
                sizes.sum::<f64>() / topo.shards.len().max(1) as f64
            },
            slots: Vec::with_capacity(topo.shards.len()),
            pinned: Vec::with_capacity(topo.shards.len()),
            bytes: vec![0; topo.nodes.len()],
            counts: vec![0; topo.nodes.len()],
            primaries: vec![0; topo.nodes.len()],
            epochs: topo.shards.iter().map(|s| s.epoch).collect(),
            primary: vec![None; topo.shards.len()],
            node_shards: {
                // Room for an even share plus some, so building rarely reallocates.
                let replicas: usize = topo.shards.iter().map(|s| s.replicas.len()).sum();
                let per_node = replicas / topo.nodes.len().max(1) + 8;
                (0..topo.nodes.len())
                    .map(|_| Vec::with_capacity(per_node))
                    .collect()
            },
        };
        let mut shard_names: HashSet<&str, BuildHasherDefault<NameHasher>> =
            HashSet::with_capacity_and_hasher(topo.shards.len(), BuildHasherDefault::default());
        for (si, shard) in topo.shards.iter().enumerate() {
            if !shard_names.insert(shard.name.as_str()) {
                return Err(PlanError::DuplicateName {
                    name: shard.name.clone(),
                });
            }
            let mut slots = Vec::with_capacity(shard.replicas.len());
            for r in &shard.replicas {
                let node = state
                    .node_ix(&r.node)
                    .ok_or_else(|| PlanError::UnknownReplicaNode {
                        shard: shard.name.clone(),
                        node: r.node.clone(),
                    })?;
                slots.push(Slot {
                    node,
                    role: r.role,
                    in_sync: r.in_sync,
                    lag_bytes: r.lag_bytes,
                });
            }
            // One spare slot: a move adds the new replica before removing the old one.
            state.slots.push(Vec::with_capacity(slots.len() + 1));
            for slot in slots {
                state.attach(si, slot);
            }
            let pins = shard
                .placement
                .pinned_nodes
                .iter()
                .filter_map(|p| state.node_ix(p))
                .collect();
            state.pinned.push(pins);
        }
        Ok(state)
    }

    pub(crate) fn node_ix(&self, name: &str) -> Option<usize> {
        self.node_index.get(name).copied()
    }

    pub(crate) fn node(&self, ix: usize) -> &'a Node {
        &self.topo.nodes[ix]
    }

    pub(crate) fn shard(&self, ix: usize) -> &'a Shard {
        &self.topo.shards[ix]
    }

    pub(crate) fn node_name(&self, ix: usize) -> &'a str {
        &self.topo.nodes[ix].name
    }

    pub(crate) fn shard_name(&self, ix: usize) -> &'a str {
        &self.topo.shards[ix].name
    }

    /// Bytes a replica of the shard in `role` occupies (witnesses hold no data).
    pub(crate) fn replica_bytes(&self, shard: usize, role: ReplicaRole) -> u64 {
        if role == ReplicaRole::Witness {
            0
        } else {
            self.topo.shards[shard].size_bytes
        }
    }

    pub(crate) fn is_pinned(&self, shard: usize, node: usize) -> bool {
        self.pinned[shard].contains(&node)
    }

    pub(crate) fn primary_of(&self, shard: usize) -> Option<usize> {
        self.primary[shard]
    }

    /// The first replica marked primary, for the cache in `primary`.
    fn find_primary(&self, shard: usize) -> Option<usize> {
        self.slots[shard]
            .iter()
            .find(|s| s.role == ReplicaRole::Primary)
            .map(|s| s.node)
    }

    /// Replicas that count towards the replication factor: on nodes that are not gone.
    pub(crate) fn serving_replicas(&self, shard: usize) -> u32 {
        self.slots[shard]
            .iter()
            .filter(|s| {
                !matches!(
                    self.node(s.node).phase,
                    NodePhase::Offline | NodePhase::Decommissioned
                )
            })
            .count() as u32
    }

    /// Whether `node` may take a replica of `shard`, with the replica on `leaving` (if any)
    /// about to go: eligibility, one replica per node, capacity, and zone/region spread.
    pub(crate) fn check_host(
        &self,
        shard: usize,
        node: usize,
        leaving: Option<usize>,
    ) -> Result<(), PlacementRejection> {
        let n = self.node(node);
        if n.phase != NodePhase::Online {
            return Err(PlacementRejection::NotOnline);
        }
        if n.cordoned {
            return Err(PlacementRejection::Cordoned);
        }
        if n.weight == 0 {
            return Err(PlacementRejection::ZeroWeight);
        }
        let (mut in_zone, mut in_region) = (0, 0);
        for s in &self.slots[shard] {
            if s.node == node {
                return Err(PlacementRejection::HoldsReplica);
            }
            if Some(s.node) == leaving {
                continue;
            }
            in_zone += u32::from(self.zone_of[s.node] == self.zone_of[node]);
            in_region += u32::from(self.region_of[s.node] == self.region_of[node]);
        }
        if self.bytes[node].saturating_add(self.topo.shards[shard].size_bytes) > n.capacity_bytes {
            return Err(PlacementRejection::NoCapacity);
        }
        if in_zone >= self.spread.per_zone {
            return Err(PlacementRejection::ZoneFull);
        }
        if in_region >= self.spread.per_region {
            return Err(PlacementRejection::RegionFull);
        }
        Ok(())
    }

    /// The best node for a new replica of `shard` (replacing the one on `leaving`, if any):
    /// the eligible node in the least-used zone and region of the shard, then with the lowest
    /// weighted load. On failure, how many nodes were rejected for each reason.
    pub(crate) fn choose_host(
        &self,
        shard: usize,
        leaving: Option<usize>,
    ) -> Result<usize, Vec<(PlacementRejection, u32)>> {
        let mut rejected: BTreeMap<PlacementRejection, u32> = BTreeMap::new();
        let mut best: Option<((u32, u32, u64), usize)> = None;
        let size = self.topo.shards[shard].size_bytes as f64;
        let unit = self.mean_replica_bytes.max(1.0);
        for node in 0..self.topo.nodes.len() {
            if let Err(why) = self.check_host(shard, node, leaving) {
                *rejected.entry(why).or_default() += 1;
                continue;
            }
            let (mut in_zone, mut in_region) = (0, 0);
            for s in self.slots[shard].iter().filter(|s| Some(s.node) != leaving) {
                in_zone += u32::from(self.zone_of[s.node] == self.zone_of[node]);
                in_region += u32::from(self.region_of[s.node] == self.region_of[node]);
            }
            // Load in units of an average replica, the larger of bytes and replicas, so a
            // node is filled neither with only large nor with only small shards.
            let load = ((self.bytes[node] as f64 + size) / unit)
                .max(f64::from(self.counts[node] + 1))
                / f64::from(self.node(node).weight);
            let key = (in_region, in_zone, (load * 1e6) as u64);
            if best.is_none_or(|(k, _)| key < k) {
                best = Some((key, node));
            }
        }
        best.map(|(_, n)| n)
            .ok_or_else(|| rejected.into_iter().collect())
    }

    fn attach(&mut self, shard: usize, slot: Slot) {
        let bytes = self.replica_bytes(shard, slot.role);
        self.bytes[slot.node] += bytes;
        if slot.role != ReplicaRole::Witness {
            self.counts[slot.node] += 1;
        }
        if slot.role == ReplicaRole::Primary {
            self.primaries[slot.node] += 1;
        }
        self.node_shards[slot.node].push(shard);
        self.slots[shard].push(slot);
        if self.primary[shard].is_none() {
            self.primary[shard] = self.find_primary(shard);
        }
    }

    /// Records a new, caught-up secondary of `shard` on `node`.
    pub(crate) fn add_replica(&mut self, shard: usize, node: usize) {
        self.attach(
            shard,
            Slot {
                node,
                role: ReplicaRole::Secondary,
                in_sync: true,
                lag_bytes: 0,
            },
        );
    }

    /// Records the removal of the replica of `shard` on `node`.
    pub(crate) fn remove_replica(&mut self, shard: usize, node: usize) {
        let Some(pos) = self.slots[shard].iter().position(|s| s.node == node) else {
            return;
        };
        let slot = self.slots[shard].swap_remove(pos);
        self.bytes[node] -= self.replica_bytes(shard, slot.role);
        if slot.role != ReplicaRole::Witness {
            self.counts[node] -= 1;
        }
        if slot.role == ReplicaRole::Primary {
            self.primaries[node] -= 1;
            self.primary[shard] = self.find_primary(shard);
        }
        if let Some(p) = self.node_shards[node].iter().position(|&s| s == shard) {
            self.node_shards[node].swap_remove(p);
        }
    }

    /// Records `node` becoming the primary of `shard` (the old primary, if any, becomes a
    /// secondary) and returns the new epoch.
    pub(crate) fn make_primary(&mut self, shard: usize, node: usize) -> u64 {
        for slot in &mut self.slots[shard] {
            if slot.role == ReplicaRole::Primary {
                slot.role = ReplicaRole::Secondary;
                self.primaries[slot.node] -= 1;
            }
        }
        for slot in &mut self.slots[shard] {
            if slot.node == node {
                slot.role = ReplicaRole::Primary;
                self.primaries[node] += 1;
            }
        }
        self.primary[shard] = self.find_primary(shard);
        self.epochs[shard] += 1;
        self.epochs[shard]
    }
}
