//! The operator and data-plane scenarios of issues #4 and #5 with everything real: the API
//! server, the operator, `shardplane agent` child processes and their PostgreSQL instances.
//! The acknowledged-writes workload writes rows with unique ids through the Router while
//! replicas move, a primary's node is SIGKILLed and comes back, nodes join and one is
//! decommissioned; after each change the Checker reads every row from every primary and
//! must find no acknowledged row missing, none duplicated or misplaced, and no shard with
//! two writable primaries.

#[path = "agent/harness.rs"]
mod harness;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use shardplane::api::database_node::NodePhase;
use shardplane::api::plan::{PlanPhase, PlanPurpose};
use shardplane::api::shard::ReplicaRole;
use shardplane::api::{DatabaseCluster, DatabaseNode, Plan, Shard};
use shardplane::workload::CheckReport;
use support::operator;
use support::{TestEnv, env_with_crds, eventually};

use harness::{DataPlane, Ledger, NodeDef, OperatorMode};

/// The scenarios share two cores: one cluster at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Writers of the workload and their total rate: modest, for a 2-core machine.
const WRITERS: usize = 4;
const WRITES_PER_SECOND: f64 = 80.0;

/// How many replicas the checker could not reach.
fn unreachable_replicas(check: &CheckReport) -> usize {
    check
        .primaries
        .shards
        .iter()
        .map(|s| s.unreachable.len())
        .sum()
}

/// The primary node of every shard.
async fn primaries(plane: &DataPlane) -> BTreeMap<String, (String, i64)> {
    plane
        .shard_list()
        .await
        .into_iter()
        .filter_map(|s| {
            let primary = s.status.clone()?.primary?;
            Some((s.name_any(), (primary.node, primary.epoch)))
        })
        .collect()
}

/// The nodes of `shard`'s desired replicas.
fn placed_on(shard: &Shard) -> BTreeSet<String> {
    shard
        .status
        .as_ref()
        .map(|s| s.desired_replicas.iter().map(|r| r.node.clone()).collect())
        .unwrap_or_default()
}

/// How many shards have a desired replica on `node`.
async fn replicas_on(plane: &DataPlane, node: &str) -> usize {
    plane
        .shard_list()
        .await
        .iter()
        .filter(|s| placed_on(s).contains(node))
        .count()
}

/// The newest plan of `purpose`.
async fn plan_of(env: &TestEnv, purpose: PlanPurpose) -> Option<Plan> {
    let plans: Api<Plan> = env.api();
    plans
        .list(&Default::default())
        .await
        .ok()?
        .items
        .into_iter()
        .filter(|p| p.spec.purpose == purpose)
        .max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0))
}

async fn plan_phase(env: &TestEnv, purpose: PlanPurpose) -> Option<PlanPhase> {
    plan_of(env, purpose).await?.status?.phase
}

/// Prints how long each step of `plan` took (from its status).
fn print_step_times(plan: &Plan) {
    let Some(status) = &plan.status else {
        return;
    };
    for step in &plan.spec.steps {
        let Some(done) = status.steps.iter().find(|s| s.id == step.id) else {
            continue;
        };
        let took = match (&done.started_at, &done.finished_at) {
            (Some(a), Some(b)) => format!("{:.1} s", b.0.duration_since(a.0).as_secs_f64()),
            _ => "-".to_owned(),
        };
        println!(
            "  step {:>2} {:<16} {:<10} {:<4} {:?} {took} (attempts {})",
            step.id,
            step.action,
            step.shard.as_deref().unwrap_or(""),
            step.node.as_deref().unwrap_or(""),
            done.phase,
            done.attempts
        );
    }
}

/// Prints the plans and every shard's replicas with role, state and epoch (for a failure).
async fn print_state(env: &TestEnv) {
    kubectl_get(env, &["plans"]).await;
    kubectl_get(
        env,
        &[
            "shards",
            "-o",
            "custom-columns=NAME:.metadata.name,PRIMARY:.status.primary.node,EPOCH:.status.primary.epoch,NODES:.status.replicas[*].node,ROLES:.status.replicas[*].role,STATES:.status.replicas[*].state",
        ],
    )
    .await;
}

async fn set_desired_state(env: &TestEnv, node: &str, state: &str) {
    let nodes: Api<DatabaseNode> = env.api();
    let patch = json!({"spec": {"desiredState": state}});
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

async fn node_phase(env: &TestEnv, node: &str) -> Option<NodePhase> {
    let nodes: Api<DatabaseNode> = env.api();
    nodes.get(node).await.ok()?.status?.phase
}

/// Waits until `node`'s agent registered it and it is Online.
async fn wait_online(env: &TestEnv, node: &str) {
    assert!(
        eventually(Duration::from_secs(30), || async {
            node_phase(env, node).await == Some(NodePhase::Online)
        })
        .await,
        "{node} never came online"
    );
}

/// Prints `kubectl get <what>` and returns its output.
async fn kubectl_get(env: &TestEnv, args: &[&str]) -> String {
    let out = env
        .kubectl(["get"].iter().chain(args.iter()).copied())
        .await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("$ kubectl get {}\n{text}", args.join(" "));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// SIGKILLs the agent holding the most primaries (its PostgreSQL dies with it) and waits until
/// exactly its primaries failed over, each epoch bumped once; returns the node.
async fn kill_busiest_node_and_fail_over(plane: &mut DataPlane) -> String {
    let before = primaries(plane).await;
    let mut led: BTreeMap<&str, usize> = BTreeMap::new();
    for (node, _) in before.values() {
        *led.entry(node.as_str()).or_default() += 1;
    }
    let victim = led
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(node, _)| node.to_owned())
        .unwrap();
    let phase = Instant::now();
    plane.agents.get_mut(&victim).unwrap().kill();
    let failed_over = eventually(Duration::from_secs(90), || async {
        let now = primaries(plane).await;
        before.iter().all(|(shard, (node, epoch))| {
            let (new_node, new_epoch) = &now[shard];
            if node == &victim {
                new_node != &victim && *new_epoch == epoch + 1
            } else {
                new_node == node && new_epoch == epoch
            }
        })
    })
    .await;
    assert!(failed_over, "the primaries of {victim} did not fail over");
    println!(
        "kill: {victim}'s primaries failed over after {:.1?}",
        phase.elapsed()
    );
    victim
}

/// The three nodes of issue #5 and the fourth that replicas move to (same zone as n1, so a
/// drained n1's replicas can only go there).
const MOVE_NODES: [NodeDef; 4] = [
    ("n1", "r1", "r1-a", 27100),
    ("n2", "r2", "r2-a", 27200),
    ("n3", "r3", "r3-a", 27300),
    ("n4", "r1", "r1-a", 27400),
];

/// The shards of the move scenarios.
const MOVE_SHARDS: usize = 4;

/// The move scenarios' plane: n1..n3 with agents, [`MOVE_SHARDS`] shards serving.
async fn move_plane(env: &TestEnv, operator: OperatorMode, started: Instant) -> DataPlane {
    let plane = DataPlane::start_with_operator(
        env.client.clone(),
        &env.namespace,
        env.control_plane.kubeconfig_path(),
        MOVE_SHARDS,
        &MOVE_NODES,
        3,
        operator,
    )
    .await;
    plane
        .wait_serving(MOVE_SHARDS, Duration::from_secs(120))
        .await;
    println!(
        "{MOVE_SHARDS} shards x 3 replicas serving after {:.1?}",
        started.elapsed()
    );
    plane
}

/// A move: n4 joins, n1 is drained; every replica on n1 is to be rebuilt on n4 (AddReplica
/// with pg_basebackup, CatchUp, TransferPrimary off n1, RemoveReplica).
async fn join_n4_and_drain_n1(env: &TestEnv, plane: &mut DataPlane) {
    plane.start_agent("n4");
    wait_online(env, "n4").await;
    let on_n1 = replicas_on(plane, "n1").await;
    assert_eq!(
        on_n1, MOVE_SHARDS,
        "n1 should hold a replica of every shard"
    );
    set_desired_state(env, "n1", "Drained").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_acknowledged_write_is_lost_through_a_move_a_node_kill_and_its_return() {
    let _one = ONE_AT_A_TIME.lock().await;
    const SHARDS: usize = MOVE_SHARDS;
    let env = env_with_crds().await;
    let started = Instant::now();
    let mut plane = move_plane(&env, OperatorMode::InProcess, started).await;
    let mut ledger = Ledger::new(&env.client, &env.namespace, WRITERS, WRITES_PER_SECOND).await;

    // The move while rows are written.
    let workload = ledger.start(100).await;
    let phase = Instant::now();
    join_n4_and_drain_n1(&env, &mut plane).await;
    let moved = eventually(Duration::from_secs(300), || async {
        plan_phase(&env, PlanPurpose::Drain).await == Some(PlanPhase::Succeeded)
            && replicas_on(&plane, "n1").await == 0
            && replicas_on(&plane, "n4").await == SHARDS
            && plane.all_serving(SHARDS).await
    })
    .await;
    if !moved {
        print_state(&env).await;
        panic!("n1's replicas did not move to n4");
    }
    let plan = plan_of(&env, PlanPurpose::Drain).await.unwrap();
    let actions: BTreeSet<&str> = plan.spec.steps.iter().map(|s| s.action.as_str()).collect();
    assert!(
        actions.contains("AddReplica") && actions.contains("RemoveReplica"),
        "{actions:?}"
    );
    println!(
        "move: n1 drained onto n4 in {:.1?} ({} steps: {actions:?})",
        phase.elapsed(),
        plan.spec.steps.len()
    );
    print_step_times(&plan);
    ledger
        .finish("move (drain n1 onto n4)", workload, 100)
        .await;

    let workload = ledger.start(100).await;
    let victim = kill_busiest_node_and_fail_over(&mut plane).await;
    assert_ne!(victim, "n1");
    let check = ledger
        .finish(&format!("SIGKILL of {victim}"), workload, 200)
        .await;
    let unreachable = unreachable_replicas(&check);
    assert!(
        unreachable > 0,
        "the killed node's replicas answered: {check}"
    );

    // The node returns: its former primaries come back as standbys; every shard serves with
    // three in-sync replicas again.
    let workload = ledger.start(100).await;
    let phase = Instant::now();
    plane.start_agent(&victim);
    plane.wait_serving(SHARDS, Duration::from_secs(120)).await;
    let after = primaries(&plane).await;
    for (shard, (node, _)) in &after {
        assert_ne!(
            node, &victim,
            "{shard}: the returned node took its primary back"
        );
        let shard = plane.shards().get(shard).await.unwrap();
        let role = harness::report(&shard, &victim).map(|r| r.role);
        assert_eq!(role, Some(ReplicaRole::Secondary), "{}", shard.name_any());
    }
    println!(
        "return: {victim} back, all shards serving after {:.1?}",
        phase.elapsed()
    );
    let check = ledger
        .finish(&format!("return of {victim}"), workload, 100)
        .await;
    let unreachable = unreachable_replicas(&check);
    assert_eq!(unreachable, 0, "{check}");
    kubectl_get(&env, &["shards"]).await;
    ledger.summary();
    println!("issue #5 scenarios took {:.1?}", started.elapsed());
}

/// Issue #4's five nodes in five zones of three regions, and the two that join.
const ZONED_NODES: [NodeDef; 7] = [
    ("n1", "r1", "r1-a", 27100),
    ("n2", "r1", "r1-b", 27200),
    ("n3", "r2", "r2-a", 27300),
    ("n4", "r2", "r2-b", 27400),
    ("n5", "r3", "r3-a", 27500),
    ("n6", "r2", "r2-b", 27600),
    ("n7", "r3", "r3-a", 27700),
];

const ZONED_SHARDS: usize = 8;

fn zone_of(node: &str) -> (&'static str, &'static str) {
    ZONED_NODES
        .iter()
        .find(|n| n.0 == node)
        .map(|n| (n.1, n.2))
        .unwrap()
}

/// Prints `kubectl get shards` with each shard's primary and replica nodes, asserts every
/// shard has three replicas in three zones of three regions, and returns the listing.
async fn assert_spread_by_zone(env: &TestEnv) -> String {
    let text = kubectl_get(
        env,
        &[
            "shards",
            "--no-headers",
            "-o",
            "custom-columns=NAME:.metadata.name,PRIMARY:.status.primary.node,NODES:.status.desiredReplicas[*].node",
        ],
    )
    .await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), ZONED_SHARDS, "{text}");
    for line in lines {
        let columns: Vec<&str> = line.split_whitespace().collect();
        let nodes: Vec<&str> = columns[2].split(',').collect();
        assert_eq!(nodes.len(), 3, "{line}");
        assert!(nodes.contains(&columns[1]), "{line}");
        let zones: BTreeSet<_> = nodes.iter().map(|n| zone_of(n).1).collect();
        let regions: BTreeSet<_> = nodes.iter().map(|n| zone_of(n).0).collect();
        assert_eq!((zones.len(), regions.len()), (3, 3), "{line}");
    }
    text
}

/// An issue #4 scenario: its turn on the machine, its namespace, its plane and its ledger.
struct Zoned {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    env: TestEnv,
    plane: DataPlane,
    ledger: Ledger,
    started: Instant,
}

impl Zoned {
    async fn start() -> Self {
        let turn = ONE_AT_A_TIME.lock().await;
        let env = env_with_crds().await;
        let started = Instant::now();
        let plane = zoned_plane(&env, started).await;
        let ledger = Ledger::new(&env.client, &env.namespace, WRITERS, WRITES_PER_SECOND).await;
        Zoned {
            _turn: turn,
            env,
            plane,
            ledger,
            started,
        }
    }
}

/// Issue #4's cluster: nodes n1..n5 with agents, eight shards serving, placed by zone.
async fn zoned_plane(env: &TestEnv, started: Instant) -> DataPlane {
    let plane = DataPlane::start_with(
        env.client.clone(),
        &env.namespace,
        env.control_plane.kubeconfig_path(),
        ZONED_SHARDS,
        &ZONED_NODES,
        5,
    )
    .await;
    plane
        .wait_serving(ZONED_SHARDS, Duration::from_secs(180))
        .await;
    println!(
        "{ZONED_SHARDS} shards x 3 replicas on 5 nodes serving after {:.1?}",
        started.elapsed()
    );
    kubectl_get(env, &["databasenodes"]).await;
    assert_spread_by_zone(env).await;
    plane
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_zoned_nodes_place_by_zone_and_a_node_is_drained_and_decommissioned() {
    const SHARDS: usize = ZONED_SHARDS;
    let Zoned {
        env,
        mut plane,
        mut ledger,
        started,
        _turn,
    } = Zoned::start().await;

    // Decommission n2: drained, then removed once the destructive plan is approved (by the
    // annotation with its hash on the node, as a reviewed pull request does).
    let workload = ledger.start(100).await;
    let phase = Instant::now();
    set_desired_state(&env, "n2", "Decommissioned").await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            plan_phase(&env, PlanPurpose::Decommission).await == Some(PlanPhase::AwaitingApproval)
        })
        .await,
        "the decommission plan did not wait for approval"
    );
    let plan = plan_of(&env, PlanPurpose::Decommission).await.unwrap();
    assert_eq!(plan.spec.steps.last().unwrap().action, "RemoveNode");
    let nodes: Api<DatabaseNode> = env.api();
    let patch =
        json!({"metadata": {"annotations": {"shardplane.io/approve-plan": plan.spec.hash}}});
    nodes
        .patch("n2", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let gone = eventually(Duration::from_secs(240), || async {
        node_phase(&env, "n2").await == Some(NodePhase::Decommissioned)
            && replicas_on(&plane, "n2").await == 0
            && plane.all_serving(SHARDS).await
    })
    .await;
    if !gone {
        print_state(&env).await;
        panic!("n2 was not decommissioned");
    }
    let plan = plan_of(&env, PlanPurpose::Decommission).await.unwrap();
    println!(
        "decommission: n2 emptied and Decommissioned ({} steps) after {:.1?}",
        plan.spec.steps.len(),
        phase.elapsed()
    );
    print_step_times(&plan);
    ledger.finish("decommission of n2", workload, 100).await;
    let placement = assert_spread_by_zone(&env).await;
    assert!(!placement.contains("n2"), "{placement}");
    kubectl_get(&env, &["databasenodes"]).await;
    ledger.summary();
    plane.agents.clear();
    println!(
        "issue #4 placement + decommission took {:.1?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_new_nodes_receive_replicas_through_rebalancing() {
    const SHARDS: usize = ZONED_SHARDS;
    let Zoned {
        env,
        mut plane,
        mut ledger,
        started,
        _turn,
    } = Zoned::start().await;

    // Two nodes join and rebalancing is turned on: a Rebalance plan moves replicas and
    // primaries onto them; every replica, including each primary demoted by a
    // TransferPrimary, must serve in sync afterwards.
    let workload = ledger.start(100).await;
    let phase = Instant::now();
    for node in ["n6", "n7"] {
        plane.start_agent(node);
    }
    for node in ["n6", "n7"] {
        wait_online(&env, node).await;
    }
    let clusters: Api<DatabaseCluster> = env.api();
    let patch = json!({"spec": {"rebalancing": {"enabled": true}}});
    clusters
        .patch("main", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let rebalanced = eventually(Duration::from_secs(240), || async {
        plan_phase(&env, PlanPurpose::Rebalance).await == Some(PlanPhase::Succeeded)
            && replicas_on(&plane, "n6").await > 0
            && replicas_on(&plane, "n7").await > 0
    })
    .await;
    if !rebalanced {
        print_state(&env).await;
        panic!("the new nodes received no replicas");
    }
    let plan = plan_of(&env, PlanPurpose::Rebalance).await.unwrap();
    println!(
        "rebalance: {} steps, n6 holds {}, n7 holds {} replicas, after {:.1?}",
        plan.spec.steps.len(),
        replicas_on(&plane, "n6").await,
        replicas_on(&plane, "n7").await,
        phase.elapsed()
    );
    print_step_times(&plan);
    let serving = eventually(Duration::from_secs(120), || plane.all_serving(SHARDS)).await;
    if !serving {
        print_state(&env).await;
        panic!(
            "after the rebalance not every replica serves in sync (a primary demoted by \
             TransferPrimary that stays Down: see its agent's pg_rewind errors above)"
        );
    }
    ledger.finish("rebalance onto n6, n7", workload, 100).await;
    assert_spread_by_zone(&env).await;
    ledger.summary();
    plane.agents.clear();
    println!("issue #4 rebalance took {:.1?}", started.elapsed());
}

/// Issue #4 with the real agent: the operator, its own `shardplane operator` process, is
/// SIGKILLed and restarted once at every point of progress of a move plan (right after each
/// step is recorded Running) while the workload writes through the Router; the plan still
/// succeeds, no step's effect happens twice, and no acknowledged row is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_completes_when_the_operator_process_is_killed_at_every_step() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = env_with_crds().await;
    let started = Instant::now();
    let mut plane = move_plane(&env, OperatorMode::Processes(1), started).await;
    // Not a failover test: no failover may add an epoch the plan did not (a loaded machine).
    harness::relax_failure_detection(&plane).await;
    let mut ledger = Ledger::new(&env.client, &env.namespace, WRITERS, WRITES_PER_SECOND).await;

    let workload = ledger.start(100).await;
    let before = plane.shard_list().await;
    let phase = Instant::now();
    join_n4_and_drain_n1(&env, &mut plane).await;
    let (plan, kills) = harness::finish_plan_killing_operator(
        &mut plane,
        0,
        PlanPurpose::Drain,
        Duration::from_secs(600),
    )
    .await;
    let steps = support::operator::sequential_steps(&plan);
    println!(
        "move under operator kills: {steps} steps one after another, operator SIGKILLed {kills} times, plan \
         succeeded after {:.1?}",
        phase.elapsed()
    );
    print_step_times(&plan);
    assert!(
        kills * 2 >= steps,
        "killed only {kills} times in {steps} steps one after another"
    );
    let attempts: i32 = plan
        .status
        .as_ref()
        .map(|s| s.steps.iter().map(|s| s.attempts).sum())
        .unwrap_or_default();
    let total = plan.spec.steps.len();
    assert!(attempts as usize >= total, "attempts {attempts} < {total}");
    let serving = eventually(Duration::from_secs(120), || async {
        replicas_on(&plane, "n4").await == MOVE_SHARDS && plane.all_serving(MOVE_SHARDS).await
    })
    .await;
    if !serving {
        print_state(&env).await;
        panic!("after the move not every shard serves with three in-sync replicas");
    }
    operator::assert_no_step_repeated(&plan, &before, &plane.shard_list().await, "n1", 3);
    ledger
        .finish("move under operator SIGKILLs", workload, 100)
        .await;
    ledger.summary();
    println!("operator-kill move scenario took {:.1?}", started.elapsed());
}

/// Issue #4 with the real agent: two `shardplane operator` processes, exactly one leads (the
/// Lease holder, the only one whose leader gauge is 1); SIGKILL it while the workload writes;
/// the standby takes over (time measured) and acts: a node SIGKILLed afterwards fails over,
/// and no acknowledged row is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_operator_process_takes_over_and_a_failover_still_happens() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = env_with_crds().await;
    let started = Instant::now();
    let mut plane = move_plane(&env, OperatorMode::Processes(2), started).await;
    let leader = operator::lease_holder(&plane.client, &plane.namespace)
        .await
        .expect("a Lease holder");
    let leading = plane
        .operators
        .iter()
        .position(|o| o.identity == leader)
        .expect("the holder is one of the two operators");
    let standby = 1 - leading;
    let gauges = [
        operator::leader_gauge(plane.operators[0].addr).await,
        operator::leader_gauge(plane.operators[1].addr).await,
    ];
    let mut expected = [Some(0), Some(0)];
    expected[leading] = Some(1);
    assert_eq!(gauges, expected, "exactly the Lease holder {leader} leads");
    let mut ledger = Ledger::new(&env.client, &env.namespace, WRITERS, WRITES_PER_SECOND).await;

    let workload = ledger.start(100).await;
    let killed = Instant::now();
    plane.kill_operator(leading);
    let successor = plane.operators[standby].identity.clone();
    let standby_addr = plane.operators[standby].addr;
    let took_over = eventually(Duration::from_secs(30), || async {
        operator::lease_holder(&plane.client, &plane.namespace)
            .await
            .as_deref()
            == Some(successor.as_str())
            && operator::leader_gauge(standby_addr).await == Some(1)
    })
    .await;
    let takeover = killed.elapsed();
    assert!(took_over, "{successor} did not take over from {leader}");
    println!("takeover: {leader} SIGKILLed, {successor} leads after {takeover:.2?}");
    assert!(
        takeover < Duration::from_secs(15),
        "takeover took {takeover:?}"
    );

    // The new leader acts: the node holding the most primaries dies and they fail over.
    let victim = kill_busiest_node_and_fail_over(&mut plane).await;
    let check = ledger
        .finish(
            &format!("operator takeover, then SIGKILL of {victim}"),
            workload,
            200,
        )
        .await;
    assert!(
        unreachable_replicas(&check) > 0,
        "the killed node's replicas answered: {check}"
    );
    ledger.summary();
    println!("operator takeover scenario took {:.1?}", started.elapsed());
}
