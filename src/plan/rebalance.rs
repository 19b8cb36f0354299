//! Rebalancing: even out bytes and replica counts across nodes to within a configured
//! imbalance with few, well-chosen moves, then even out primaries by leadership transfers.
//! Reports a lower bound on the bytes any plan must move, beside the plan.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::cluster::ClusterState;
use super::error::PlanError;
use super::moves::{move_replica, transfer_primary};
use super::steps::{BlockReason, ConcurrencyLimits, Plan, PlanBuilder, PlanKind};
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

/// Each balanced node's weighted share of bytes, replicas and primaries.
struct Shares {
    members: Vec<usize>,
    member: Vec<bool>,
    bytes: Vec<f64>,
    replicas: Vec<f64>,
    primaries: Vec<f64>,
}

impl Shares {
    /// Shares over the nodes that may take replicas; other nodes are drained, cordoned or
    /// offline and are handled by their own plans.
    fn of(state: &ClusterState<'_>) -> Self {
        let n = state.topo.nodes.len();
        let member: Vec<bool> = state
            .topo
            .nodes
            .iter()
            .map(|node| node.accepts_replicas())
            .collect();
        let members: Vec<usize> = (0..n).filter(|&i| member[i]).collect();
        let total_weight: f64 = members
            .iter()
            .map(|&i| f64::from(state.node(i).weight))
            .sum();
        let share = |load: &[u64]| -> Vec<f64> {
            let total: f64 = members.iter().map(|&i| load[i] as f64).sum();
            (0..n)
                .map(|i| {
                    if member[i] {
                        total * f64::from(state.node(i).weight) / total_weight
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        let counts: Vec<u64> = state.counts.iter().map(|&c| u64::from(c)).collect();
        let primaries: Vec<u64> = state.primaries.iter().map(|&c| u64::from(c)).collect();
        Shares {
            bytes: share(&state.bytes),
            replicas: share(&counts),
            primaries: share(&primaries),
            members,
            member,
        }
    }

    fn imbalance(&self, state: &ClusterState<'_>) -> Imbalance {
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

/// Half-width of a count band: the percentage of the share, but never under one, so a band
/// always contains a whole number.
fn count_slack(share: f64, t: f64) -> f64 {
    (share * t).max(1.0)
}

/// Measures how far each node is from its weighted share.
pub fn measure_imbalance(topology: &Topology) -> Result<Imbalance, PlanError> {
    let state = ClusterState::new(topology)?;
    Ok(Shares::of(&state).imbalance(&state))
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
    /// The same for replica counts, never tighter than the target band.
    count_limit: f64,
    /// Movable replicas per node, ordered by size.
    by_size: Vec<BTreeSet<(u64, usize)>>,
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
    fn new(state: &'s mut ClusterState<'a>, shares: &'s Shares, t: f64, before: &Imbalance) -> Self {
        let n = state.topo.nodes.len();
        let mut by_size = vec![BTreeSet::new(); n];
        for (shard, slots) in state.slots.iter().enumerate() {
            for slot in slots {
                if shares.member[slot.node]
                    && slot.role != ReplicaRole::Witness
                    && !state.is_pinned(shard, slot.node)
                {
                    by_size[slot.node].insert((state.shard(shard).size_bytes, shard));
                }
            }
        }
        let mut balancer = Balancer {
            state,
            shares,
            t,
            byte_limit: t.min(before.bytes_pct / 100.0),
            count_limit: t.max(before.replicas_pct / 100.0),
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
        let count_room = |node: usize| {
            let share = self.shares.replicas[node];
            count_slack(share, self.t).max(share * self.count_limit)
        };
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
        let set = &self.by_size[node];
        let mut below = set.range(..(ideal, 0)).rev().peekable();
        let mut above = set.range((ideal, 0)..).peekable();
        std::iter::from_fn(move || match (below.peek(), above.peek()) {
            (Some(&&(b, _)), Some(&&(a, _))) => {
                if ideal - b <= a - ideal {
                    below.next().copied()
                } else {
                    above.next().copied()
                }
            }
            (Some(_), None) => below.next().copied(),
            (None, _) => above.next().copied(),
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
    /// whose size best fits both the receiver's need and the donor's excess.
    /// Returns (shard, donor).
    fn pick_for_receiver(&self, receiver: usize, dimension: Dimension) -> Option<(usize, usize)> {
        const DONORS: usize = 24;
        const PER_DONOR: usize = 12;
        let ideal = self.ideal_size(receiver, true);
        let mut best: Option<(u64, usize, usize)> = None;
        let mut donors = 0;
        for &(_, donor) in self.order(dimension).iter().rev() {
            if donor == receiver || !self.above_share(donor, dimension) {
                continue;
            }
            donors += 1;
            let shed = self.ideal_size(donor, false);
            for (size, shard) in self.nearest(donor, ideal).take(PER_DONOR) {
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
            if donors >= DONORS {
                break;
            }
        }
        best.map(|(_, shard, donor)| (shard, donor))
    }

    /// For an overloaded node: a replica to shed and, among the nodes least loaded in that
    /// dimension, one that can take it. Returns (shard, receiver).
    fn pick_for_donor(&self, donor: usize, dimension: Dimension) -> Option<(usize, usize)> {
        const REPLICAS: usize = 8;
        const RECEIVERS: usize = 64;
        let ideal = self.ideal_size(donor, false);
        for (size, shard) in self.nearest(donor, ideal).take(REPLICAS) {
            let receiver = self
                .order(dimension)
                .iter()
                .take(RECEIVERS)
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
            self.by_bytes.iter().take(PARTNERS).map(|&(_, p)| p).collect()
        } else {
            self.by_bytes.iter().rev().take(PARTNERS).map(|&(_, p)| p).collect()
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
                    let lim = self.byte_limit.max((self.bytes(node) - nb).abs() / nb.max(1.0));
                    if (after_node - nb).abs() > nb * lim + 0.5
                        || (after_partner - pb).abs() > pb * self.byte_limit + 0.5
                        || self.state.check_host(my_shard, partner, Some(node)).is_err()
                        || self.state.check_host(their_shard, node, Some(partner)).is_err()
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
            let after = self.bytes(node) - (self.state.shard(a.shard).size_bytes as f64
                - self.state.shard(b.shard).size_bytes as f64);
            (after - self.shares.bytes[node]).abs() / nb < now
        })
        .then_some((a, b))
    }

    fn apply(&mut self, shard: usize, from: usize, to: usize) {
        let size = self.state.shard(shard).size_bytes;
        self.by_size[from].remove(&(size, shard));
        self.by_size[to].insert((size, shard));
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
    while (moves as usize) < budget {
        let Some(&(_, node)) = balancer.outside.iter().next_back() else {
            if moves_since_unstick == 0 {
                break;
            }
            moves_since_unstick = 0;
            balancer.unstick();
            continue;
        };
        let v = balancer.violation(node);
        let single = if v.short {
            balancer
                .pick_for_receiver(node, v.dimension)
                .map(|(shard, from)| [Some(Move { shard, from, to: node }), None])
        } else {
            balancer
                .pick_for_donor(node, v.dimension)
                .map(|(shard, to)| [Some(Move { shard, from: node, to }), None])
        };
        let Some(decided) = single.or_else(|| {
            balancer
                .pick_exchange(node)
                .map(|(a, b)| [Some(a), Some(b)])
        }) else {
            balancer.stuck[node] = true;
            balancer.reindex(node);
            continue;
        };
        for m in decided.into_iter().flatten() {
            let why = format!(
                "{} holds {:.1}% of its share of bytes and {} has {:.1}%; moving {} ({} bytes) \
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

fn percent_of(load: u64, share: f64) -> f64 {
    if share > 0.0 {
        load as f64 / share * 100.0
    } else {
        0.0
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

/// Evens out primaries by leadership transfers to in-sync secondaries (no data moves).
/// The node furthest outside its band hands one primary on (or takes one over) along the
/// shortest chain of transfers that ends at a node with room, so every node on the chain
/// but the two ends keeps its count. Returns the number of transfers planned.
fn balance_primaries(
    state: &mut ClusterState<'_>,
    shares: &Shares,
    t: f64,
    plan: &mut PlanBuilder,
) -> u32 {
    let n = state.topo.nodes.len();
    let mut stuck = vec![false; n];
    let mut transfers = 0u32;
    let budget = state.topo.shards.len() + 16;
    while (transfers as usize) < budget {
        let dev = |i: usize| f64::from(state.primaries[i]) - shares.primaries[i];
        let slack = |i: usize| count_slack(shares.primaries[i], t);
        let worst = shares
            .members
            .iter()
            .copied()
            .filter(|&i| !stuck[i])
            .map(|i| (dev(i).abs() - slack(i), i))
            .filter(|&(v, _)| v > 1e-9)
            .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
        let Some((_, node)) = worst else { break };
        let Some(chain) = transfer_chain(state, shares, t, node, dev(node) > 0.0) else {
            stuck[node] = true;
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
        }
    }
    transfers
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
) -> Option<Vec<(usize, usize)>> {
    let dev = |i: usize| f64::from(state.primaries[i]) - shares.primaries[i];
    let slack = |i: usize| count_slack(shares.primaries[i], t);
    // How the search reached each node: (previous node, shard transferred).
    let mut came_from: Vec<Option<(usize, usize)>> = vec![None; state.topo.nodes.len()];
    let mut seen = vec![false; state.topo.nodes.len()];
    seen[start] = true;
    let mut frontier = vec![start];
    let mut end = None;
    'search: while !frontier.is_empty() {
        let mut next = Vec::new();
        for &x in &frontier {
            for &shard in &state.node_shards[x] {
                let Some(primary) = state.primary_of(shard) else {
                    continue;
                };
                let preferred = state
                    .shard(shard)
                    .placement
                    .preferred_primary_region
                    .as_deref();
                let keeps_region = |from: usize, to: usize| {
                    preferred.is_none_or(|r| {
                        state.node(from).region != r || state.node(to).region == r
                    })
                };
                let neighbours: Vec<usize> = if push {
                    if primary != x {
                        continue;
                    }
                    state.slots[shard]
                        .iter()
                        .filter(|s| {
                            s.role == ReplicaRole::Secondary
                                && s.in_sync
                                && shares.member[s.node]
                                && keeps_region(x, s.node)
                        })
                        .map(|s| s.node)
                        .collect()
                } else {
                    let in_sync_here = state.slots[shard].iter().any(|s| {
                        s.node == x && s.role == ReplicaRole::Secondary && s.in_sync
                    });
                    if primary == x || !in_sync_here || !keeps_region(primary, x) {
                        continue;
                    }
                    vec![primary]
                };
                for y in neighbours {
                    if seen[y] {
                        continue;
                    }
                    seen[y] = true;
                    came_from[y] = Some((x, shard));
                    let room = if push {
                        dev(y) + 1.0 <= slack(y) + 1e-9 && dev(y) + 1.0 < dev(start) - 1e-9
                    } else {
                        (!shares.member[y] || dev(y) - 1.0 >= -slack(y) - 1e-9)
                            && dev(y) - 1.0 > dev(start) + 1e-9
                    };
                    if room {
                        end = Some(y);
                        break 'search;
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
