//! Planner benchmark: 1,000 nodes × 10,000 shards × RF 3 across 10 regions (seeded input).
//! Times (a) rebalance after adding 100 empty nodes, (b) failover of one dead node, (c) drain
//! of one node, and compares the rebalance with the classic greedy rebalancer.
//! Run with `cargo bench --bench planner`. Exits non-zero if our planner moves more bytes
//! than the greedy baseline or ends less balanced.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use shardplane::plan::{
    ConcurrencyLimits, DrainGoal, FailoverPolicy, KeyRange, Node, NodePhase, RebalancePolicy,
    ReplicaRole, Shard, ShardPlacement, Topology, apply_plan, measure_imbalance, plan_drain,
    plan_failover, plan_placement, plan_rebalance, spread_limits,
};

const NODES: usize = 1_000;
const ADDED_NODES: usize = 100;
const SHARDS: u64 = 10_000;
const RF: u32 = 3;
const REGIONS: usize = 10;
const ZONES_PER_REGION: usize = 3;
const REPS: usize = 9;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// SplitMix64: a tiny seeded generator, so the input is the same on every run.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.unit().max(1e-12), self.unit());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

fn node(i: usize) -> Node {
    let region = i % REGIONS;
    let zone = (i / REGIONS) % ZONES_PER_REGION;
    Node {
        name: format!("node-{i:04}"),
        region: format!("region-{region}"),
        zone: format!("region-{region}-zone-{zone}"),
        capacity_bytes: 64 << 40,
        weight: 100,
        phase: NodePhase::Online,
        cordoned: false,
    }
}

/// A cluster that the planner itself placed and balanced, with realistic shard sizes:
/// log-normal around 4 GiB, capped at the 16 GiB split threshold.
fn balanced_cluster(rng: &mut SplitMix) -> Result<Topology, String> {
    let ranges = KeyRange::FULL
        .split_even(SHARDS)
        .map_err(|e| e.to_string())?;
    let shards = ranges
        .into_iter()
        .enumerate()
        .map(|(k, range)| {
            let gib = (4.0 * (0.6 * rng.normal()).exp()).clamp(0.25, 16.0);
            Shard {
                name: format!("orders-{k:05}"),
                table: "orders".to_owned(),
                range,
                size_bytes: (gib * GIB) as u64,
                epoch: 0,
                replicas: Vec::new(),
                placement: ShardPlacement::default(),
            }
        })
        .collect();
    let mut topology = Topology {
        replication_factor: RF,
        nodes: (0..NODES).map(node).collect(),
        shards,
    };
    let placement =
        plan_placement(&topology, ConcurrencyLimits::default()).map_err(|e| e.to_string())?;
    topology = apply_plan(&topology, &placement);
    let settle =
        plan_rebalance(&topology, &RebalancePolicy::default()).map_err(|e| e.to_string())?;
    topology = apply_plan(&topology, &settle.plan);
    // Observed replication state: most secondaries in sync with a little lag.
    for shard in &mut topology.shards {
        for replica in &mut shard.replicas {
            if replica.role == ReplicaRole::Secondary {
                replica.in_sync = rng.unit() < 0.95;
                replica.lag_bytes = if replica.in_sync {
                    0
                } else {
                    rng.next() % (64 << 20)
                };
            }
        }
    }
    Ok(topology)
}

struct Timing {
    median: Duration,
    max: Duration,
}

fn time<T>(mut f: impl FnMut() -> T) -> (T, Timing) {
    let mut samples = Vec::with_capacity(REPS);
    let mut last = None;
    for _ in 0..REPS {
        let start = Instant::now();
        let out = f();
        samples.push(start.elapsed());
        last = Some(out);
    }
    samples.sort();
    let timing = Timing {
        median: samples[REPS / 2],
        max: samples[REPS - 1],
    };
    match last {
        Some(out) => (out, timing),
        None => unreachable!("REPS > 0"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Outcome {
    moves: usize,
    bytes: u64,
    bytes_pct: f64,
    replicas_pct: f64,
}

/// The classic greedy rebalancer: move one shard at a time from the most loaded node (by
/// bytes) to the least loaded one that can legally take one, choosing the largest shard
/// that narrows the gap, until every node is within 10% of the mean. It obeys the same
/// placement rules (one replica per node, zone and region spread) as our planner.
fn greedy(topology: &Topology) -> Outcome {
    let n = topology.nodes.len();
    let index: std::collections::HashMap<&str, usize> = topology
        .nodes
        .iter()
        .enumerate()
        .map(|(i, nd)| (nd.name.as_str(), i))
        .collect();
    let mut regions: Vec<&str> = topology.nodes.iter().map(|nd| nd.region.as_str()).collect();
    regions.sort_unstable();
    regions.dedup();
    let limits = spread_limits(topology.replication_factor, regions.len());
    let mut bytes = vec![0u64; n];
    let mut counts = vec![0u32; n];
    let mut on_node: Vec<BTreeSet<(u64, usize)>> = vec![BTreeSet::new(); n];
    let mut holders: Vec<Vec<usize>> = Vec::with_capacity(topology.shards.len());
    for (s, shard) in topology.shards.iter().enumerate() {
        let mut h = Vec::new();
        for r in &shard.replicas {
            let i = index[r.node.as_str()];
            bytes[i] += shard.size_bytes;
            counts[i] += 1;
            on_node[i].insert((shard.size_bytes, s));
            h.push(i);
        }
        holders.push(h);
    }
    let mean = bytes.iter().sum::<u64>() as f64 / n as f64;
    let allowed = |holders: &[usize], from: usize, to: usize| {
        let (mut zone, mut region) = (0, 0);
        for &h in holders {
            if h == to {
                return false;
            }
            if h == from {
                continue;
            }
            zone += u32::from(topology.nodes[h].zone == topology.nodes[to].zone);
            region += u32::from(topology.nodes[h].region == topology.nodes[to].region);
        }
        zone < limits.per_zone && region < limits.per_region
    };
    let mut by_load: BTreeSet<(u64, usize)> = (0..n).map(|i| (bytes[i], i)).collect();
    let mut exhausted = vec![false; n];
    let (mut moves, mut moved) = (0usize, 0u64);
    loop {
        let outside = |b: u64| (b as f64 - mean).abs() > 0.10 * mean;
        if !(0..n).any(|i| outside(bytes[i])) {
            break;
        }
        let Some(&(_, donor)) = by_load.iter().rev().find(|&&(_, d)| !exhausted[d]) else {
            break;
        };
        let mut chosen = None;
        'receivers: for &(rb, receiver) in by_load.iter() {
            if receiver == donor || rb >= bytes[donor] {
                break;
            }
            let gap = bytes[donor] - rb;
            for &(size, s) in on_node[donor].range(..(gap, 0)).rev() {
                if allowed(&holders[s], donor, receiver) {
                    chosen = Some((size, s, receiver));
                    break 'receivers;
                }
            }
        }
        let Some((size, s, receiver)) = chosen else {
            exhausted[donor] = true;
            continue;
        };
        for (i, delta) in [(donor, -1i64), (receiver, 1)] {
            by_load.remove(&(bytes[i], i));
            if delta < 0 {
                bytes[i] -= size;
                counts[i] -= 1;
                on_node[i].remove(&(size, s));
            } else {
                bytes[i] += size;
                counts[i] += 1;
                on_node[i].insert((size, s));
            }
            by_load.insert((bytes[i], i));
        }
        for h in &mut holders[s] {
            if *h == donor {
                *h = receiver;
            }
        }
        exhausted.iter_mut().for_each(|e| *e = false);
        moves += 1;
        moved += size;
    }
    let mean_count = counts.iter().map(|&c| f64::from(c)).sum::<f64>() / n as f64;
    Outcome {
        moves,
        bytes: moved,
        bytes_pct: bytes
            .iter()
            .map(|&b| (b as f64 - mean).abs() / mean * 100.0)
            .fold(0.0, f64::max),
        replicas_pct: counts
            .iter()
            .map(|&c| (f64::from(c) - mean_count).abs() / mean_count * 100.0)
            .fold(0.0, f64::max),
    }
}

fn run() -> Result<bool, String> {
    let mut rng = SplitMix(0x5eed_2026);
    let setup = Instant::now();
    let base = balanced_cluster(&mut rng)?;
    let before_growth = measure_imbalance(&base).map_err(|e| e.to_string())?;
    println!(
        "input: {NODES} nodes, {SHARDS} shards, RF {RF}, {REGIONS} regions × {ZONES_PER_REGION} zones; \
         balanced start {:.2}% bytes / {:.2}% replicas; setup {:.0} ms",
        before_growth.bytes_pct,
        before_growth.replicas_pct,
        ms(setup.elapsed())
    );

    // (a) rebalance after adding 100 empty nodes.
    let mut grown = base.clone();
    grown.nodes.extend((NODES..NODES + ADDED_NODES).map(node));
    let policy = RebalancePolicy::default();
    let (ours, t_rebalance) = time(|| plan_rebalance(&grown, &policy));
    let ours = ours.map_err(|e| e.to_string())?;
    let check = measure_imbalance(&apply_plan(&grown, &ours.plan)).map_err(|e| e.to_string())?;
    let (baseline, t_greedy) = time(|| greedy(&grown));

    // (b) failover of one dead node; (c) drain of one node.
    let mut dead = base.clone();
    dead.nodes[0].phase = NodePhase::Offline;
    let (failover, t_failover) =
        time(|| plan_failover(&dead, "node-0000", 0, &FailoverPolicy::default()));
    let failover = failover.map_err(|e| e.to_string())?;
    let (drain, t_drain) = time(|| {
        plan_drain(
            &base,
            "node-0001",
            DrainGoal::Drain,
            ConcurrencyLimits::default(),
        )
    });
    let drain = drain.map_err(|e| e.to_string())?;

    let r = &ours.report;
    println!();
    println!(
        "(a) rebalance after adding {ADDED_NODES} empty nodes (imbalance target 5%; greedy stops at 10%)"
    );
    println!("{:<28} {:>14} {:>14}", "", "shardplane", "greedy");
    println!("{:<28} {:>14} {:>14}", "moves", r.moves, baseline.moves);
    println!(
        "{:<28} {:>14.1} {:>14.1}",
        "bytes moved (GiB)",
        r.bytes_moved as f64 / GIB,
        baseline.bytes as f64 / GIB
    );
    println!(
        "{:<28} {:>14.2} {:>14.2}",
        "final imbalance bytes (%)", r.after.bytes_pct, baseline.bytes_pct
    );
    println!(
        "{:<28} {:>14.2} {:>14.2}",
        "final imbalance replicas (%)", r.after.replicas_pct, baseline.replicas_pct
    );
    println!(
        "{:<28} {:>14.2} {:>14}",
        "final imbalance primaries (%)", r.after.primaries_pct, "n/a"
    );
    println!(
        "{:<28} {:>14} {:>14}",
        "leadership transfers", r.primary_transfers, "n/a"
    );
    println!(
        "{:<28} {:>14.2} {:>14.2}",
        "planning time median (ms)",
        ms(t_rebalance.median),
        ms(t_greedy.median)
    );
    println!(
        "{:<28} {:>14.2} {:>14.2}",
        "planning time max (ms)",
        ms(t_rebalance.max),
        ms(t_greedy.max)
    );
    println!(
        "lower bound {:.1} GiB; ours/lower bound {:.3}; ours/greedy bytes {:.3}; target reached: {}; \
         simulated outcome {:.2}% bytes",
        r.lower_bound_bytes as f64 / GIB,
        r.bytes_moved as f64 / r.lower_bound_bytes.max(1) as f64,
        r.bytes_moved as f64 / baseline.bytes.max(1) as f64,
        r.target_reached,
        check.bytes_pct
    );
    println!();
    println!(
        "(b) failover of node-0000: {} promotions, {} re-replications, {} blocked; median {:.2} ms, max {:.2} ms",
        failover.decisions.len(),
        failover.plan.operations.len()
            - failover
                .decisions
                .iter()
                .filter(|d| d.new_primary.is_some())
                .count(),
        failover.plan.blocked.len(),
        ms(t_failover.median),
        ms(t_failover.max)
    );
    println!(
        "(c) drain of node-0001: {} operations, {} blocked; median {:.2} ms, max {:.2} ms",
        drain.operations.len(),
        drain.blocked.len(),
        ms(t_drain.median),
        ms(t_drain.max)
    );
    println!();
    println!("| key | value |");
    println!("|---|---|");
    println!(
        "| rebalance_plan_ms | {:.2} (median of {REPS}; max {:.2}) |",
        ms(t_rebalance.median),
        ms(t_rebalance.max)
    );
    println!(
        "| rebalance_bytes_vs_greedy | {:.3} |",
        r.bytes_moved as f64 / baseline.bytes.max(1) as f64
    );
    println!(
        "| rebalance_final_imbalance_pct | {:.2} (greedy {:.2}) |",
        r.after.bytes_pct, baseline.bytes_pct
    );
    println!(
        "| rebalance_bytes_vs_lower_bound | {:.3} |",
        r.bytes_moved as f64 / r.lower_bound_bytes.max(1) as f64
    );
    println!(
        "| failover_plan_ms | {:.2} (median of {REPS}; max {:.2}) |",
        ms(t_failover.median),
        ms(t_failover.max)
    );
    println!(
        "| drain_plan_ms | {:.2} (median of {REPS}; max {:.2}) |",
        ms(t_drain.median),
        ms(t_drain.max)
    );

    let fewer_bytes = r.bytes_moved <= baseline.bytes;
    let better_balanced = r.after.bytes_pct < baseline.bytes_pct;
    println!();
    println!("ours moves no more bytes than greedy: {fewer_bytes}");
    println!("ours ends better balanced than greedy: {better_balanced}");
    Ok(fewer_bytes && better_balanced)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}
