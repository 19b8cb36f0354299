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
    RebalanceReport, ReplicaRole, Shard, ShardPlacement, Topology, apply_plan, measure_imbalance,
    plan_drain, plan_failover, plan_placement, plan_rebalance, spread_limits,
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
    /// Mean time the thread was actually on a CPU (the machine is shared, so wall-clock time
    /// includes waiting for one). The scheduler counts in ticks of a few milliseconds, so
    /// only the total over all runs is precise enough; `None` without
    /// `/proc/thread-self/schedstat`.
    cpu_mean: Option<Duration>,
}

/// Nanoseconds this thread has spent running on a CPU, from the scheduler's statistics.
fn on_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

fn time<T>(mut f: impl FnMut() -> T) -> (T, Timing) {
    let cpu_start = on_cpu();
    let mut sample = || {
        let start = Instant::now();
        let out = f();
        (out, start.elapsed())
    };
    let (mut out, first) = sample();
    let mut wall = vec![first];
    for _ in 1..REPS {
        let (next, took) = sample();
        wall.push(took);
        // Dropping the previous plan is not part of planning (it stays in the CPU total).
        out = next;
    }
    let cpu_total = cpu_start.zip(on_cpu()).map(|(a, b)| b.saturating_sub(a));
    wall.sort();
    let timing = Timing {
        median: wall[REPS / 2],
        max: wall[REPS - 1],
        cpu_mean: cpu_total.map(|t| t / REPS as u32),
    };
    (out, timing)
}

/// "12.3" milliseconds, or "n/a".
fn cpu_ms(t: &Timing) -> String {
    t.cpu_mean
        .map_or_else(|| "n/a".to_owned(), |d| format!("{:.1}", ms(d)))
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

fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB
}

/// Prints our plan beside the greedy baseline's outcome; returns whether ours moved no more
/// bytes and ended better balanced (by bytes).
fn compare(
    title: &str,
    ours: &RebalanceReport,
    t_ours: &Timing,
    greedy: &Outcome,
    t_greedy: &Timing,
) -> bool {
    println!("{title}");
    println!("{:<30} {:>14} {:>14}", "", "shardplane", "greedy");
    println!("{:<30} {:>14} {:>14}", "moves", ours.moves, greedy.moves);
    println!(
        "{:<30} {:>14.1} {:>14.1}",
        "bytes moved (GiB)",
        gib(ours.bytes_moved),
        gib(greedy.bytes)
    );
    println!(
        "{:<30} {:>14.2} {:>14.2}",
        "final imbalance, bytes (%)", ours.after.bytes_pct, greedy.bytes_pct
    );
    println!(
        "{:<30} {:>14.2} {:>14.2}",
        "final imbalance, replicas (%)", ours.after.replicas_pct, greedy.replicas_pct
    );
    println!(
        "{:<30} {:>14.2} {:>14}",
        "final imbalance, primaries (%)", ours.after.primaries_pct, "not balanced"
    );
    println!(
        "{:<30} {:>14} {:>14}",
        "leadership transfers", ours.primary_transfers, 0
    );
    println!(
        "{:<30} {:>14.2} {:>14.2}",
        "planning time, median (ms)",
        ms(t_ours.median),
        ms(t_greedy.median)
    );
    println!(
        "{:<30} {:>14.2} {:>14.2}",
        "planning time, max (ms)",
        ms(t_ours.max),
        ms(t_greedy.max)
    );
    println!(
        "{:<30} {:>14} {:>14}",
        "on-CPU time, mean (ms)",
        cpu_ms(t_ours),
        cpu_ms(t_greedy)
    );
    println!(
        "lower bound {:.1} GiB; ours ÷ lower bound {:.3}; ours ÷ greedy bytes {:.3}; \
         target reached: {}",
        gib(ours.lower_bound_bytes),
        ours.bytes_moved as f64 / ours.lower_bound_bytes.max(1) as f64,
        ours.bytes_moved as f64 / greedy.bytes.max(1) as f64,
        ours.target_reached
    );
    let holds = ours.bytes_moved <= greedy.bytes && ours.after.bytes_pct < greedy.bytes_pct;
    println!("ours moves no more bytes than greedy and ends better balanced: {holds}");
    println!();
    holds
}

fn run() -> Result<bool, String> {
    let mut rng = SplitMix(0x5eed_2026);
    let setup = Instant::now();
    let base = balanced_cluster(&mut rng)?;
    let before_growth = measure_imbalance(&base).map_err(|e| e.to_string())?;
    println!(
        "input: {NODES} nodes, {SHARDS} shards, RF {RF}, {REGIONS} regions × {ZONES_PER_REGION} \
         zones, seeded; balanced start {:.2}% bytes / {:.2}% replicas; setup {:.0} ms; \
         timings over {REPS} runs",
        before_growth.bytes_pct,
        before_growth.replicas_pct,
        ms(setup.elapsed())
    );
    println!();

    // (a) rebalance after adding 100 empty nodes: ours at its default target and at the
    // greedy baseline's own 10%, so bytes are also compared at equal targets.
    let mut grown = base.clone();
    grown.nodes.extend((NODES..NODES + ADDED_NODES).map(node));
    let default_policy = RebalancePolicy::default();
    let (ours, t_ours) = time(|| plan_rebalance(&grown, &default_policy));
    let ours = ours.map_err(|e| e.to_string())?;
    let simulated =
        measure_imbalance(&apply_plan(&grown, &ours.plan)).map_err(|e| e.to_string())?;
    let same_target = RebalancePolicy {
        max_imbalance_pct: 10.0,
        ..RebalancePolicy::default()
    };
    let (ours10, t_ours10) = time(|| plan_rebalance(&grown, &same_target));
    let ours10 = ours10.map_err(|e| e.to_string())?;
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

    let at_default = compare(
        &format!(
            "(a) rebalance after adding {ADDED_NODES} empty nodes — ours at its default 5% target, \
             greedy at 10%"
        ),
        &ours.report,
        &t_ours,
        &baseline,
        &t_greedy,
    );
    println!(
        "    plan applied and re-measured: {:.2}% bytes, {:.2}% replicas; hash {}",
        simulated.bytes_pct, simulated.replicas_pct, ours.plan.hash
    );
    if ours.report.lower_bound_bytes > baseline.bytes {
        println!(
            "    note: reaching 5% needs at least {:.1} GiB, more than greedy moved to reach 10% \
             ({:.1} GiB); no plan reaching 5% can move fewer bytes than greedy on this input",
            gib(ours.report.lower_bound_bytes),
            gib(baseline.bytes)
        );
    }
    println!();
    let at_same = compare(
        "(a') the same input — ours and greedy both at 10%",
        &ours10.report,
        &t_ours10,
        &baseline,
        &t_greedy,
    );
    let promoted = failover
        .decisions
        .iter()
        .filter(|d| d.new_primary.is_some())
        .count();
    println!(
        "(b) failover of node-0000: {promoted} promotions, {} re-replications, {} blocked; \
         median {:.2} ms, max {:.2} ms, on-CPU mean {} ms",
        failover.plan.operations.len() - promoted,
        failover.plan.blocked.len(),
        ms(t_failover.median),
        ms(t_failover.max),
        cpu_ms(&t_failover)
    );
    println!(
        "(c) drain of node-0001: {} operations, {} blocked; median {:.2} ms, max {:.2} ms, \
         on-CPU mean {} ms",
        drain.operations.len(),
        drain.blocked.len(),
        ms(t_drain.median),
        ms(t_drain.max),
        cpu_ms(&t_drain)
    );
    println!();
    let ratio = |r: &RebalanceReport| r.bytes_moved as f64 / baseline.bytes.max(1) as f64;
    let vs_bound = |r: &RebalanceReport| r.bytes_moved as f64 / r.lower_bound_bytes.max(1) as f64;
    println!("| key | value |");
    println!("|---|---|");
    println!(
        "| rebalance_plan_ms | {:.1} median, {:.1} max, {} on-CPU mean (5% target); {:.1} \
         median at 10% |",
        ms(t_ours.median),
        ms(t_ours.max),
        cpu_ms(&t_ours),
        ms(t_ours10.median)
    );
    println!(
        "| rebalance_bytes_vs_greedy | {:.3} (ours at 5% vs greedy at 10%); {:.3} (both at 10%) |",
        ratio(&ours.report),
        ratio(&ours10.report)
    );
    println!(
        "| rebalance_final_imbalance_pct | {:.2} bytes / {:.2} replicas (5% target); {:.2} / {:.2} \
         (10%); greedy {:.2} / {:.2} |",
        ours.report.after.bytes_pct,
        ours.report.after.replicas_pct,
        ours10.report.after.bytes_pct,
        ours10.report.after.replicas_pct,
        baseline.bytes_pct,
        baseline.replicas_pct
    );
    println!(
        "| rebalance_bytes_vs_lower_bound | {:.3} (5% target); {:.3} (10%) |",
        vs_bound(&ours.report),
        vs_bound(&ours10.report)
    );
    println!(
        "| failover_plan_ms | {:.1} median, {:.1} max, {} on-CPU mean |",
        ms(t_failover.median),
        ms(t_failover.max),
        cpu_ms(&t_failover)
    );
    println!(
        "| drain_plan_ms | {:.1} median, {:.1} max, {} on-CPU mean |",
        ms(t_drain.median),
        ms(t_drain.max),
        cpu_ms(&t_drain)
    );
    println!();
    println!(
        "at equal targets (10%), ours moves no more bytes and ends better balanced: {at_same}"
    );
    println!("at our default target (5%) against greedy's 10%, the same holds: {at_default}");
    // The pass/fail check compares like with like: both planners at the same target.
    Ok(at_same)
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
