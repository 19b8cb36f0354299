//! Leadership balancing: evening out primaries by transfers to in-sync secondaries, along
//! the shortest chain of transfers when no single one helps. Moves no data.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::cluster::ClusterState;
use super::moves::transfer_primary;
use super::schedule::PlanBuilder;
use super::shares::{Shares, count_slack};
use super::topology::ReplicaRole;

/// Evens out primaries by leadership transfers to in-sync secondaries (no data moves).
/// The node furthest outside its band hands one primary on (or takes one over) along the
/// shortest chain of transfers that ends at a node with room, so every node on the chain
/// but the two ends keeps its count. Returns the number of transfers planned.
pub(crate) fn balance_primaries(
    state: &mut ClusterState<'_>,
    shares: &Shares,
    t: f64,
    plan: &mut PlanBuilder,
) -> u32 {
    let outside = |state: &ClusterState<'_>, i: usize| {
        let dev = f64::from(state.primaries[i]) - shares.primaries[i];
        let v = dev.abs() - count_slack(shares.primaries[i], t);
        (v > 1e-9).then_some(((v * 1e9) as u64, dev > 0.0))
    };
    // Nodes outside their band, furthest first (lowest index on ties); entries go stale as
    // counts change and are re-checked when popped.
    let mut heap: BinaryHeap<(u64, Reverse<usize>)> = shares
        .members
        .iter()
        .filter_map(|&i| outside(state, i).map(|(k, _)| (k, Reverse(i))))
        .collect();
    let mut search = ChainSearch {
        round: 0,
        seen: vec![0; state.topo.nodes.len()],
        came_from: vec![None; state.topo.nodes.len()],
        neighbours: Vec::new(),
    };
    let mut transfers = 0u32;
    let budget = state.topo.shards.len() + 16;
    while (transfers as usize) < budget {
        let Some((key, Reverse(node))) = heap.pop() else {
            break;
        };
        let Some((current, over)) = outside(state, node) else {
            continue;
        };
        if current != key {
            heap.push((current, Reverse(node)));
            continue;
        }
        // A node with no chain is left as it is (it cannot be helped by transfers).
        let Some(chain) = transfer_chain(state, shares, t, node, over, &mut search) else {
            continue;
        };
        for (shard, to) in chain {
            let from = state.primary_of(shard).unwrap_or(to);
            let why = format!(
                "balancing primaries: {} leads {} shards against a share of {:.1}, {} leads {} \
                 against {:.1}; a leadership transfer moves no data",
                state.node_name(from),
                state.primaries[from],
                shares.primaries[from],
                state.node_name(to),
                state.primaries[to],
                shares.primaries[to],
            );
            if let Some(step) = transfer_primary(state, shard, to, &why) {
                plan.schedule(state.shard_name(shard), vec![step], None);
                transfers += 1;
            }
            for i in [from, to] {
                if let Some((k, _)) = outside(state, i) {
                    heap.push((k, Reverse(i)));
                }
            }
        }
    }
    transfers
}

/// The longest chain of leadership transfers searched for.
const MAX_CHAIN: usize = 4;

/// Scratch space for [`transfer_chain`], reused across searches: `seen[i] == round` marks
/// the nodes reached in the current search, `came_from` how (previous node, shard), and
/// `neighbours` is the buffer of nodes one transfer away.
struct ChainSearch {
    round: u32,
    seen: Vec<u32>,
    came_from: Vec<Option<(usize, usize)>>,
    neighbours: Vec<usize>,
}

/// Breadth-first search for the shortest chain of leadership transfers that takes one
/// primary off `start` (when `push`) or brings one to it (otherwise), ending at a node that
/// stays inside its band and ends no further from its share than `start` was. Returns the
/// transfers (shard, new primary node) in the order to run them.
fn transfer_chain(
    state: &ClusterState<'_>,
    shares: &Shares,
    t: f64,
    start: usize,
    push: bool,
    search: &mut ChainSearch,
) -> Option<Vec<(usize, usize)>> {
    let dev = |i: usize| f64::from(state.primaries[i]) - shares.primaries[i];
    let slack = |i: usize| count_slack(shares.primaries[i], t);
    search.round += 1;
    let round = search.round;
    let ChainSearch {
        seen,
        came_from,
        neighbours,
        ..
    } = search;
    seen[start] = round;
    came_from[start] = None;
    let mut frontier = vec![start];
    let mut end: Option<usize> = None;
    let mut depth = 0;
    // Chains longer than a few transfers are rare and each search level can touch every
    // node; past the limit the node is left as it is.
    while !frontier.is_empty() && end.is_none() && depth < MAX_CHAIN {
        depth += 1;
        let mut next = Vec::new();
        for &x in &frontier {
            for &shard in &state.node_shards[x] {
                let Some(primary) = state.primary_of(shard) else {
                    continue;
                };
                // Pushing follows the shards x leads; pulling, the shards x follows.
                if (primary == x) != push {
                    continue;
                }
                let preferred = state
                    .shard(shard)
                    .placement
                    .preferred_primary_region
                    .as_deref();
                let keeps_region = |from: usize, to: usize| {
                    preferred
                        .is_none_or(|r| state.node(from).region != r || state.node(to).region == r)
                };
                neighbours.clear();
                if push {
                    neighbours.extend(
                        state.slots[shard]
                            .iter()
                            .filter(|s| {
                                s.role == ReplicaRole::Secondary
                                    && s.in_sync
                                    && shares.member[s.node]
                                    && keeps_region(x, s.node)
                            })
                            .map(|s| s.node),
                    );
                } else {
                    let in_sync_here = state.slots[shard]
                        .iter()
                        .any(|s| s.node == x && s.role == ReplicaRole::Secondary && s.in_sync);
                    if in_sync_here && keeps_region(primary, x) {
                        neighbours.push(primary);
                    }
                }
                for &y in neighbours.iter() {
                    if seen[y] == round {
                        continue;
                    }
                    seen[y] = round;
                    came_from[y] = Some((x, shard));
                    let room = if push {
                        dev(y) + 1.0 <= slack(y) + 1e-9 && dev(y) + 1.0 < dev(start) - 1e-9
                    } else {
                        (!shares.member[y] || dev(y) - 1.0 >= -slack(y) - 1e-9)
                            && dev(y) - 1.0 > dev(start) + 1e-9
                    };
                    // Among the ends at the shortest distance, the one furthest on the
                    // other side of its share.
                    let better = |e: usize| {
                        if push {
                            dev(y) < dev(e)
                        } else {
                            dev(y) > dev(e)
                        }
                    };
                    if room && end.is_none_or(better) {
                        end = Some(y);
                    }
                    next.push(y);
                }
            }
        }
        frontier = next;
    }
    let mut chain = Vec::new();
    let mut at = end?;
    while let Some((prev, shard)) = came_from[at] {
        // Pushing: the primary of `shard` moves prev → at. Pulling: at → prev.
        chain.push((shard, if push { at } else { prev }));
        at = prev;
    }
    if !push {
        chain.reverse();
    }
    Some(chain)
}
