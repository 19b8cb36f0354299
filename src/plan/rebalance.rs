//! Rebalancing: even out bytes and replica counts across nodes to within a configured
//! imbalance with few, well-chosen moves, then even out primaries by leadership transfers.
//! Reports a lower bound on the bytes any plan must move, beside the plan.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::cluster::ClusterState;
use super::error::PlanError;
use super::leadership::balance_primaries;
use super::moves::move_replica;
use super::schedule::{ConcurrencyLimits, Plan, PlanBuilder};
use super::shares::{Imbalance, Shares, count_slack};
use super::steps::{BlockReason, PlanKind};
use super::topology::{ReplicaRole, Topology};

/// How far from balanced a cluster may be before the planner acts, and how it may act.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RebalancePolicy {
    /// Allowed deviation of each node from its weighted share, in percent of that share,
    /// for bytes, replica counts and primaries. A node within it is never touched to improve
    /// balance further (hysteresis).
    pub max_imbalance_pct: f64,
    /// Concurrency limits for the moves.
    pub limits: ConcurrencyLimits,
}

impl Default for RebalancePolicy {
    fn default() -> Self {
        RebalancePolicy {
            max_imbalance_pct: 5.0,
            limits: ConcurrencyLimits::default(),
        }
    }
}
/// What a rebalance plan achieves, for the plan's reviewers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RebalanceReport {
    /// Imbalance before the plan.
    pub before: Imbalance,
    /// Imbalance once the plan has run.
    pub after: Imbalance,
    /// Bytes that any plan reaching the target must move at least.
    pub lower_bound_bytes: u64,
    /// Bytes this plan moves.
    pub bytes_moved: u64,
    /// Replica moves.
    pub moves: u32,
    /// Leadership transfers that are not part of a move.
    pub primary_transfers: u32,
    /// Whether every node ends within the target imbalance.
    pub target_reached: bool,
}

/// A rebalance plan and its report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RebalancePlan {
    /// The plan.
    pub plan: Plan,
    /// What it achieves.
    pub report: RebalanceReport,
}
/// Which load a node is most out of balance in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dimension {
    Bytes,
    Replicas,
}

/// How far a node is outside its target band, in which dimension and direction.
#[derive(Clone, Copy, Debug)]
struct Violation {
    /// Relative distance outside the band (≤ 0 inside).
    amount: f64,
    dimension: Dimension,
    short: bool,
}

/// One replica move the rebalancer decided.
#[derive(Clone, Copy, Debug)]
struct Move {
    shard: usize,
    from: usize,
    to: usize,
}

/// The mutable search state of the replica rebalancer.
struct Balancer<'s, 'a> {
    state: &'s mut ClusterState<'a>,
    shares: &'s Shares,
    t: f64,
    /// How far a move may let a node's bytes deviate from its share: the target, or less if
    /// the cluster is already closer, so a plan never raises the maximum byte deviation.
    byte_limit: f64,
    /// Movable replicas per node, ordered by size.
    by_size: Vec<Vec<(u64, usize)>>,
    /// Balanced nodes ordered by bytes, and by replicas, relative to their share (ppm).
    by_bytes: BTreeSet<(u64, usize)>,
    by_count: BTreeSet<(u64, usize)>,
    keys: Vec<(u64, u64)>,
    /// Nodes outside the target band, ordered by how far.
    outside: BTreeSet<(u64, usize)>,
    outside_key: Vec<Option<u64>>,
    stuck: Vec<bool>,
}

impl<'s, 'a> Balancer<'s, 'a> {
    fn new(
        state: &'s mut ClusterState<'a>,
        shares: &'s Shares,
        t: f64,
        before: &Imbalance,
    ) -> Self {
        let n = state.topo.nodes.len();
        let mut by_size = vec![Vec::new(); n];
        for (shard, slots) in state.slots.iter().enumerate() {
            for slot in slots {
                if shares.member[slot.node]
                    && slot.role != ReplicaRole::Witness
                    && !state.is_pinned(shard, slot.node)
                {
                    by_size[slot.node].push((state.shard(shard).size_bytes, shard));
                }
            }
        }
        for sizes in &mut by_size {
            sizes.sort_unstable();
        }
        let mut balancer = Balancer {
            state,
            shares,
            t,
            byte_limit: t.min(before.bytes_pct / 100.0),
            by_size,
            by_bytes: BTreeSet::new(),
            by_count: BTreeSet::new(),
            keys: vec![(0, 0); n],
            outside: BTreeSet::new(),
            outside_key: vec![None; n],
            stuck: vec![false; n],
        };
        for &i in &shares.members {
            balancer.reindex(i);
        }
        balancer
    }

    fn bytes(&self, node: usize) -> f64 {
        self.state.bytes[node] as f64
    }

    fn count(&self, node: usize) -> f64 {
        f64::from(self.state.counts[node])
    }

    fn violation(&self, node: usize) -> Violation {
        let (tb, tc) = (self.shares.bytes[node], self.shares.replicas[node]);
        let slack = count_slack(tc, self.t);
        let (b, c) = (self.bytes(node), self.count(node));
        let (nb, nc) = (tb.max(1.0), tc.max(1.0));
        let terms = [
            ((tb * (1.0 - self.t) - b) / nb, Dimension::Bytes, true),
            ((b - tb * (1.0 + self.t)) / nb, Dimension::Bytes, false),
            ((tc - slack - c) / nc, Dimension::Replicas, true),
            ((c - tc - slack) / nc, Dimension::Replicas, false),
        ];
        let mut worst = Violation {
            amount: f64::MIN,
            dimension: Dimension::Bytes,
            short: false,
        };
        for (amount, dimension, short) in terms {
            if amount > worst.amount {
                worst = Violation {
                    amount,
                    dimension,
                    short,
                };
            }
        }
        worst
    }

    fn reindex(&mut self, node: usize) {
        let (kb, kc) = self.keys[node];
        self.by_bytes.remove(&(kb, node));
        self.by_count.remove(&(kc, node));
        let kb = (self.bytes(node) / self.shares.bytes[node].max(1.0) * 1e6) as u64;
        let kc = (self.count(node) / self.shares.replicas[node].max(1.0) * 1e6) as u64;
        self.keys[node] = (kb, kc);
        self.by_bytes.insert((kb, node));
        self.by_count.insert((kc, node));
        if let Some(k) = self.outside_key[node].take() {
            self.outside.remove(&(k, node));
        }
        let v = self.violation(node);
        if v.amount > 1e-12 && !self.stuck[node] {
            let k = (v.amount * 1e9) as u64;
            self.outside_key[node] = Some(k);
            self.outside.insert((k, node));
        }
    }

    /// Whether moving `size` bytes from `donor` to `receiver` keeps both inside the limits.
    fn fits(&self, size: u64, donor: usize, receiver: usize) -> bool {
        let s = size as f64;
        let count_room = |node: usize| count_slack(self.shares.replicas[node], self.t);
        let (db, dc) = (self.shares.bytes[donor], self.shares.replicas[donor]);
        let (rb, rc) = (self.shares.bytes[receiver], self.shares.replicas[receiver]);
        self.bytes(donor) - s >= db * (1.0 - self.byte_limit) - 0.5
            && self.count(donor) - 1.0 >= dc - count_room(donor) - 1e-9
            && self.bytes(receiver) + s <= rb * (1.0 + self.byte_limit) + 0.5
            && self.count(receiver) + 1.0 <= rc + count_room(receiver) + 1e-9
    }

    /// The replica size that best closes a node's gap: bytes it should gain (or shed) per
    /// replica it should gain (or shed). Receivers aim just inside the band's lower edge so
    /// no more bytes move than needed. Zero means "as small as possible".
    fn ideal_size(&self, node: usize, short: bool) -> u64 {
        let (tb, tc) = (self.shares.bytes[node], self.shares.replicas[node]);
        let (b, c) = (self.bytes(node), self.count(node));
        let slack = count_slack(tc, self.t);
        let margin = 0.75 * self.t;
        let (byte_gap, count_gap) = if short {
            let aim = if b < tb * (1.0 - margin) {
                tb * (1.0 - margin)
            } else {
                tb
            };
            (aim - b, (tc - slack).ceil() - c)
        } else {
            let aim = if b > tb * (1.0 + margin) {
                tb * (1.0 + margin)
            } else {
                tb
            };
            (b - aim, c - (tc + slack).floor())
        };
        if byte_gap <= 0.0 {
            0
        } else {
            (byte_gap / count_gap.max(1.0)) as u64
        }
    }

    /// Replicas on `node` ordered by closeness of size to `ideal` (nearest first).
    fn nearest(&self, node: usize, ideal: u64) -> impl Iterator<Item = (u64, usize)> + '_ {
        let sizes = &self.by_size[node];
        let split = sizes.partition_point(|&(size, _)| size < ideal);
        let (mut below, mut above) = (split, split);
        std::iter::from_fn(move || {
            let take_below = match (below.checked_sub(1), sizes.get(above)) {
                (Some(b), Some(&(a, _))) => ideal - sizes[b].0 <= a - ideal,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return None,
            };
            if take_below {
                below -= 1;
                Some(sizes[below])
            } else {
                above += 1;
                Some(sizes[above - 1])
            }
        })
    }

    fn order(&self, dimension: Dimension) -> &BTreeSet<(u64, usize)> {
        match dimension {
            Dimension::Bytes => &self.by_bytes,
            Dimension::Replicas => &self.by_count,
        }
    }

    fn above_share(&self, node: usize, dimension: Dimension) -> bool {
        match dimension {
            Dimension::Bytes => self.bytes(node) > self.shares.bytes[node],
            Dimension::Replicas => self.count(node) > self.shares.replicas[node],
        }
    }

    /// For a short node: among the nodes most loaded in the short dimension, the replica
    /// whose size best fits both the receiver's need and the donor's excess. A quick search
    /// looks at the most loaded donors; a `thorough` one at every donor and replica.
    /// Returns (shard, donor).
    fn pick_for_receiver(
        &self,
        receiver: usize,
        dimension: Dimension,
        thorough: bool,
    ) -> Option<(usize, usize)> {
        let max_donors = if thorough { usize::MAX } else { 24 };
        let ideal = self.ideal_size(receiver, true);
        let mut best: Option<(u64, usize, usize)> = None;
        let mut donors = 0;
        for &(_, donor) in self.order(dimension).iter().rev() {
            // The quick search only takes from nodes above their share; the thorough one
            // from any node that stays inside its band.
            if donor == receiver || (!thorough && !self.above_share(donor, dimension)) {
                continue;
            }
            donors += 1;
            let shed = self.ideal_size(donor, false);
            for (size, shard) in self.nearest(donor, ideal) {
                if !self.fits(size, donor, receiver)
                    || self.state.check_host(shard, receiver, Some(donor)).is_err()
                {
                    continue;
                }
                let miss = size.abs_diff(ideal) + size.abs_diff(shed) / 2;
                if best.is_none_or(|(m, _, _)| miss < m) {
                    best = Some((miss, shard, donor));
                }
                break;
            }
            // A near-perfect fit will not be beaten by less loaded donors.
            if donors >= max_donors || best.is_some_and(|(m, _, _)| m <= ideal / 32) {
                break;
            }
        }
        best.map(|(_, shard, donor)| (shard, donor))
    }

    /// For an overloaded node: a replica to shed and, among the nodes least loaded in that
    /// dimension, one that can take it; `thorough` tries every replica and every node.
    /// Returns (shard, receiver).
    fn pick_for_donor(
        &self,
        donor: usize,
        dimension: Dimension,
        thorough: bool,
    ) -> Option<(usize, usize)> {
        let (replicas, receivers) = if thorough {
            (usize::MAX, usize::MAX)
        } else {
            (8, 64)
        };
        let ideal = self.ideal_size(donor, false);
        for (size, shard) in self.nearest(donor, ideal).take(replicas) {
            let receiver = self
                .order(dimension)
                .iter()
                .take(receivers)
                .map(|&(_, r)| r)
                .find(|&r| {
                    r != donor
                        && self.fits(size, donor, r)
                        && self.state.check_host(shard, r, Some(donor)).is_ok()
                });
            if let Some(r) = receiver {
                return Some((shard, r));
            }
        }
        None
    }

    /// When no single move helps a node whose bytes and replica count pull in opposite
    /// directions (too many bytes in too few replicas, or the reverse): exchange one of its
    /// replicas for one of a partner's, which fixes bytes without changing either count.
    /// Returns ((shard, from, to), (shard, from, to)).
    fn pick_exchange(&self, node: usize) -> Option<(Move, Move)> {
        const OWN: usize = 8;
        const PARTNERS: usize = 32;
        const THEIRS: usize = 4;
        let heavy = self.bytes(node) > self.shares.bytes[node];
        let gap = (self.bytes(node) - self.shares.bytes[node]).abs();
        let partners: Vec<usize> = if heavy {
            self.by_bytes
                .iter()
                .take(PARTNERS)
                .map(|&(_, p)| p)
                .collect()
        } else {
            self.by_bytes
                .iter()
                .rev()
                .take(PARTNERS)
                .map(|&(_, p)| p)
                .collect()
        };
        // A heavy node gives its larger replicas away, a light one its smaller ones.
        let own: Vec<(u64, usize)> = if heavy {
            self.by_size[node].iter().rev().take(OWN).copied().collect()
        } else {
            self.by_size[node].iter().take(OWN).copied().collect()
        };
        let mut best: Option<(f64, Move, Move)> = None;
        for &(mine, my_shard) in &own {
            for &partner in &partners {
                if partner == node {
                    continue;
                }
                // The partner's replica that makes the exchange shift about `gap` bytes.
                let wanted = if heavy {
                    (mine as f64 - gap).max(0.0) as u64
                } else {
                    mine + gap as u64
                };
                for (theirs, their_shard) in self.nearest(partner, wanted).take(THEIRS) {
                    let shift = mine as f64 - theirs as f64;
                    if their_shard == my_shard || (shift > 0.0) != heavy || shift == 0.0 {
                        continue;
                    }
                    let after_node = self.bytes(node) - shift;
                    let after_partner = self.bytes(partner) + shift;
                    let (nb, pb) = (self.shares.bytes[node], self.shares.bytes[partner]);
                    let lim = self
                        .byte_limit
                        .max((self.bytes(node) - nb).abs() / nb.max(1.0));
                    if (after_node - nb).abs() > nb * lim + 0.5
                        || (after_partner - pb).abs() > pb * self.byte_limit + 0.5
                        || self
                            .state
                            .check_host(my_shard, partner, Some(node))
                            .is_err()
                        || self
                            .state
                            .check_host(their_shard, node, Some(partner))
                            .is_err()
                    {
                        continue;
                    }
                    let score = (after_node - nb).abs() / nb.max(1.0)
                        + (after_partner - pb).abs() / pb.max(1.0);
                    if best.as_ref().is_none_or(|(s, _, _)| score < *s) {
                        best = Some((
                            score,
                            Move {
                                shard: my_shard,
                                from: node,
                                to: partner,
                            },
                            Move {
                                shard: their_shard,
                                from: partner,
                                to: node,
                            },
                        ));
                    }
                }
            }
        }
        let (score, a, b) = best?;
        // Only worth two copies if the node ends closer to its share than it is.
        let now = gap / self.shares.bytes[node].max(1.0);
        (score < now * 2.0 && {
            let nb = self.shares.bytes[node].max(1.0);
            let after = self.bytes(node)
                - (self.state.shard(a.shard).size_bytes as f64
                    - self.state.shard(b.shard).size_bytes as f64);
            (after - self.shares.bytes[node]).abs() / nb < now
        })
        .then_some((a, b))
    }

    fn apply(&mut self, shard: usize, from: usize, to: usize) {
        let size = self.state.shard(shard).size_bytes;
        if let Ok(i) = self.by_size[from].binary_search(&(size, shard)) {
            self.by_size[from].remove(i);
        }
        if let Err(i) = self.by_size[to].binary_search(&(size, shard)) {
            self.by_size[to].insert(i, (size, shard));
        }
        self.reindex(from);
        self.reindex(to);
    }

    /// Gives every stuck node another chance (moves since may have opened a way).
    fn unstick(&mut self) {
        for node in 0..self.stuck.len() {
            if std::mem::take(&mut self.stuck[node]) {
                self.reindex(node);
            }
        }
    }
}

/// How many thorough (exhaustive) searches one plan may run.
const THOROUGH_SEARCHES: u32 = 64;
/// How many times nodes set aside as unhelpable get another chance.
const UNSTICK_ROUNDS: u32 = 2;

/// Plans moves and leadership transfers that bring every balanced node (online, not
/// cordoned, weight > 0) within `policy.max_imbalance_pct` of its weighted share of bytes,
/// replicas and primaries. A cluster already within it gets an empty plan.
pub fn plan_rebalance(
    topology: &Topology,
    policy: &RebalancePolicy,
) -> Result<RebalancePlan, PlanError> {
    let mut state = ClusterState::new(topology)?;
    let shares = Shares::of(&state);
    let t = (policy.max_imbalance_pct / 100.0).max(0.0);
    let before = shares.imbalance(&state);
    let lower_bound_bytes = lower_bound_bytes(&state, &shares, t);
    let mut plan = PlanBuilder::new(PlanKind::Rebalance, policy.limits);
    let mut bytes_moved = 0u64;
    let mut moves = 0u32;
    let mut balancer = Balancer::new(&mut state, &shares, t, &before);
    let budget = topology.shards.len() * topology.replication_factor as usize * 2 + 16;
    let mut moves_since_unstick = 0;
    // Thorough searches scan every donor and replica; a cluster whose targets cannot be met
    // would otherwise pay for one per stuck node per round.
    let mut thorough_left = THOROUGH_SEARCHES;
    let mut unstick_rounds_left = UNSTICK_ROUNDS;
    while (moves as usize) < budget {
        let Some(&(_, node)) = balancer.outside.iter().next_back() else {
            if moves_since_unstick == 0 || unstick_rounds_left == 0 {
                break;
            }
            unstick_rounds_left -= 1;
            moves_since_unstick = 0;
            balancer.unstick();
            continue;
        };
        let v = balancer.violation(node);
        let single = |thorough: bool| {
            if v.short {
                balancer
                    .pick_for_receiver(node, v.dimension, thorough)
                    .map(|(shard, from)| {
                        [
                            Some(Move {
                                shard,
                                from,
                                to: node,
                            }),
                            None,
                        ]
                    })
            } else {
                balancer
                    .pick_for_donor(node, v.dimension, thorough)
                    .map(|(shard, to)| {
                        [
                            Some(Move {
                                shard,
                                from: node,
                                to,
                            }),
                            None,
                        ]
                    })
            }
        };
        let single = single(false).or_else(|| {
            thorough_left = thorough_left.checked_sub(1)?;
            single(true)
        });
        // Exchanges keep both counts, so they only help a node out of balance in bytes.
        let Some(decided) = single.or_else(|| {
            (v.dimension == Dimension::Bytes)
                .then(|| balancer.pick_exchange(node))
                .flatten()
                .map(|(a, b)| [Some(a), Some(b)])
        }) else {
            balancer.stuck[node] = true;
            balancer.reindex(node);
            continue;
        };
        for m in decided.into_iter().flatten() {
            let why = format!(
                "{} holds {}% of its share of bytes and {} has {}%; moving {} ({} bytes) \
                 brings both toward their share",
                balancer.state.node_name(m.from),
                percent_of(balancer.state.bytes[m.from], shares.bytes[m.from]),
                balancer.state.node_name(m.to),
                percent_of(balancer.state.bytes[m.to], shares.bytes[m.to]),
                balancer.state.shard_name(m.shard),
                balancer.state.shard(m.shard).size_bytes,
            );
            let steps = move_replica(balancer.state, m.shard, m.from, m.to, &why);
            plan.schedule(balancer.state.shard_name(m.shard), steps, None);
            bytes_moved += balancer.state.shard(m.shard).size_bytes;
            moves += 1;
            moves_since_unstick += 1;
            balancer.apply(m.shard, m.from, m.to);
        }
    }
    let stuck: Vec<usize> = (0..topology.nodes.len())
        .filter(|&i| balancer.stuck[i])
        .collect();
    for node in stuck {
        plan.block(state.node_name(node), BlockReason::Unbalanceable);
    }
    let primary_transfers = balance_primaries(&mut state, &shares, t, &mut plan);
    let after = shares.imbalance(&state);
    let target_reached = within(&after, policy.max_imbalance_pct, &state, &shares, t);
    Ok(RebalancePlan {
        plan: plan.finish(),
        report: RebalanceReport {
            before,
            after,
            lower_bound_bytes,
            bytes_moved,
            moves,
            primary_transfers,
            target_reached,
        },
    })
}

/// `load` as a whole percentage of `share` (whole numbers read as well in a reason, and
/// formatting floats for thousands of steps is measurable).
fn percent_of(load: u64, share: f64) -> u64 {
    if share > 0.0 {
        (load as f64 / share * 100.0).round() as u64
    } else {
        0
    }
}

/// Whether every node is inside the target band for bytes, replicas and primaries.
fn within(after: &Imbalance, pct: f64, state: &ClusterState<'_>, shares: &Shares, t: f64) -> bool {
    let counts_ok = |load: &dyn Fn(usize) -> f64, share: &[f64]| {
        shares
            .members
            .iter()
            .all(|&i| (load(i) - share[i]).abs() <= count_slack(share[i], t) + 1e-9)
    };
    after.bytes_pct <= pct + 1e-9
        && counts_ok(&|i| f64::from(state.counts[i]), &shares.replicas)
        && counts_ok(&|i| f64::from(state.primaries[i]), &shares.primaries)
}

/// The fewest bytes any plan must move so that every node ends within the target band:
/// the larger of what short nodes must receive and what overloaded nodes must shed by
/// bytes, and the smallest replicas that could fix the replica-count gaps.
fn lower_bound_bytes(state: &ClusterState<'_>, shares: &Shares, t: f64) -> u64 {
    let (mut inflow, mut outflow) = (0.0f64, 0.0f64);
    let (mut count_in, mut count_out) = (0u64, 0u64);
    for &i in &shares.members {
        let b = state.bytes[i] as f64;
        inflow += (shares.bytes[i] * (1.0 - t) - b).max(0.0);
        outflow += (b - shares.bytes[i] * (1.0 + t)).max(0.0);
        let slack = count_slack(shares.replicas[i], t);
        let c = f64::from(state.counts[i]);
        count_in += ((shares.replicas[i] - slack).ceil() - c).max(0.0) as u64;
        count_out += (c - (shares.replicas[i] + slack).floor()).max(0.0) as u64;
    }
    let needed_moves = count_in.max(count_out) as usize;
    let mut sizes: Vec<u64> = state
        .slots
        .iter()
        .enumerate()
        .flat_map(|(shard, slots)| {
            slots
                .iter()
                .filter(|s| shares.member[s.node] && s.role != ReplicaRole::Witness)
                .map(move |_| shard)
        })
        .map(|shard| state.shard(shard).size_bytes)
        .collect();
    let by_count: u64 = if needed_moves == 0 || sizes.is_empty() {
        0
    } else {
        let k = needed_moves.min(sizes.len());
        sizes.select_nth_unstable(k - 1);
        sizes[..k].iter().sum()
    };
    (inflow.max(outflow).ceil() as u64).max(by_count)
}
#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::plan::shares::measure_imbalance;
    use crate::plan::simulate::apply_plan;
    use crate::plan::steps::StepAction;
    use crate::plan::testkit::{
        arb_cluster, fewest_replicas_during, mk_node, mk_nodes, mk_placed, mk_shard,
        spread_violations,
    };

    fn rebalance(topology: &Topology) -> RebalancePlan {
        plan_rebalance(topology, &RebalancePolicy::default()).expect("plan")
    }

    /// Nodes that give or receive a replica in the plan.
    fn touched(plan: &Plan) -> BTreeSet<String> {
        plan.steps()
            .filter_map(|s| match &s.action {
                StepAction::AddReplica { node, .. } | StepAction::RemoveReplica { node, .. } => {
                    Some(node.clone())
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_empty_node_fills_and_the_move_steps_are_in_order() {
        let mut topology = mk_placed(3, mk_nodes(3, 1, 2), &[100; 24]);
        topology.nodes.push(mk_node("fresh", "r0", "r0z0"));
        let out = rebalance(&topology);
        assert!(out.report.target_reached, "{:?}", out.report);
        assert!(out.report.moves > 0 && out.report.bytes_moved >= out.report.lower_bound_bytes);
        let first = &out.plan.operations[0].steps;
        assert!(matches!(first[0].action, StepAction::AddReplica { .. }));
        assert!(matches!(first[1].action, StepAction::CatchUp { .. }));
        assert!(matches!(
            first.last().map(|s| &s.action),
            Some(StepAction::RemoveReplica { .. })
        ));
        let after = apply_plan(&topology, &out.plan);
        let fresh = after
            .shards
            .iter()
            .filter(|s| s.has_replica_on("fresh"))
            .count();
        // Region r0 holds one replica of every shard, shared by its three nodes.
        assert_eq!(fresh, 8);
        assert!(spread_violations(&after).is_empty());
    }

    #[test]
    fn moving_a_primary_hands_it_over_before_removal() {
        let mut topology = Topology {
            replication_factor: 1,
            nodes: vec![mk_node("a", "r", "z1"), mk_node("b", "r", "z2")],
            shards: vec![mk_shard("s0", 100, &["a"]), mk_shard("s1", 100, &["a"])],
        };
        topology.shards[1].range = topology.shards[0].range;
        let out = rebalance(&topology);
        let steps: Vec<&StepAction> = out.plan.steps().map(|s| &s.action).collect();
        assert!(
            matches!(steps[2], StepAction::TransferPrimary { epoch: 2, .. }),
            "{steps:?}"
        );
        assert!(matches!(steps[3], StepAction::RemoveReplica { .. }));
        assert_eq!(out.plan.risk, crate::plan::steps::RiskClass::Disruptive);
    }

    #[test]
    fn leadership_is_balanced_by_transfers_not_moves() {
        // Every primary on one node; replicas perfectly balanced.
        let nodes = mk_nodes(3, 1, 1);
        let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
        let order: Vec<&str> = names.iter().map(String::as_str).collect();
        let topology = Topology {
            replication_factor: 3,
            nodes,
            shards: (0..12)
                .map(|k| mk_shard(&format!("s{k}"), 100, &order))
                .collect(),
        };
        let out = rebalance(&topology);
        assert_eq!(out.report.moves, 0);
        assert!(out.report.target_reached, "{:?}", out.report);
        // Shares are 4 each and the band is ±1: the planner stops at the band's edge.
        assert_eq!(out.report.primary_transfers, 7);
        let after = apply_plan(&topology, &out.plan);
        for n in &names {
            let led = after
                .shards
                .iter()
                .filter(|s| s.primary_node() == Some(n))
                .count();
            assert!((3..=5).contains(&led), "{n} leads {led}");
        }
    }

    /// Many similar shards on a cluster grown by empty nodes: reaching 5% is possible.
    fn arb_feasible() -> impl Strategy<Value = Topology> {
        (3usize..=4, 2usize..=3, 1usize..=2, 1usize..=3, any::<u64>()).prop_map(
            |(regions, zones, per_zone, added, seed)| {
                let nodes = regions * zones * per_zone;
                let mut x = seed | 1;
                let sizes: Vec<u64> = (0..nodes * 12)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        95 + x % 11
                    })
                    .collect();
                let mut topology = mk_placed(3, mk_nodes(regions, zones, per_zone), &sizes);
                for k in 0..added {
                    let r = k % regions;
                    topology.nodes.push(mk_node(
                        &format!("new{k}"),
                        &format!("r{r}"),
                        &format!("r{r}z{}", k % zones),
                    ));
                }
                topology
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn rebalancing_never_raises_the_maximum_deviation(topology in arb_cluster()) {
            let out = rebalance(&topology);
            let after = apply_plan(&topology, &out.plan);
            let measured = measure_imbalance(&after).expect("measure");
            prop_assert!(measured.bytes_pct <= out.report.before.bytes_pct + 1e-9,
                "{} -> {}", out.report.before.bytes_pct, measured.bytes_pct);
            prop_assert!((measured.bytes_pct - out.report.after.bytes_pct).abs() < 1e-9);
            prop_assert!(spread_violations(&after).is_empty(), "{:?}", spread_violations(&after));
            prop_assert!(after.shards.iter().all(|s| s.replicas.len() == 3 && s.primary_node().is_some()));
        }

        #[test]
        fn no_shard_loses_a_replica_while_the_plan_runs(topology in arb_cluster()) {
            let out = rebalance(&topology);
            let fewest = fewest_replicas_during(&topology, &out.plan);
            for (shard, min) in topology.shards.iter().zip(fewest) {
                prop_assert_eq!(min, shard.replicas.len(), "{}", shard.name);
            }
        }

        #[test]
        fn a_rebalance_plan_reaches_the_target(topology in arb_feasible()) {
            let out = rebalance(&topology);
            prop_assert!(out.report.target_reached, "{:?}", out.report);
            let after = apply_plan(&topology, &out.plan);
            let measured = measure_imbalance(&after).expect("measure");
            prop_assert!(measured.bytes_pct <= 5.0 + 1e-9, "{measured:?}");
        }

        #[test]
        fn bytes_moved_stay_within_one_shard_per_node_of_the_lower_bound(topology in arb_feasible()) {
            let out = rebalance(&topology);
            let largest = topology.shards.iter().map(|s| s.size_bytes).max().unwrap_or(0);
            let nodes = touched(&out.plan).len() as u64;
            prop_assert!(out.report.bytes_moved <= out.report.lower_bound_bytes + nodes * largest,
                "{:?}, {nodes} nodes touched", out.report);
        }

        #[test]
        fn a_balanced_cluster_gets_an_empty_plan(topology in arb_feasible()) {
            let first = rebalance(&topology);
            let after = apply_plan(&topology, &first.plan);
            let second = rebalance(&after);
            prop_assert!(second.plan.operations.is_empty(), "{:?}", second.report);
            prop_assert_eq!(second.report.bytes_moved, 0);
        }

        #[test]
        fn the_same_input_gives_the_same_plan_and_hash(topology in arb_cluster()) {
            let a = rebalance(&topology);
            let b = rebalance(&topology);
            prop_assert_eq!(&a.plan.hash, &b.plan.hash);
            prop_assert_eq!(&a.plan, &b.plan);
            prop_assert_eq!(a.plan.content_hash(), a.plan.hash);
        }
    }
}
