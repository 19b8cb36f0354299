//! Issue #16, configuration and restart on demand, with everything real: the API server,
//! `shardplane operator` processes, `shardplane agent` processes and their PostgreSQL
//! instances, with the acknowledged-writes workload writing through the Router throughout.
//! A reloadable parameter takes effect everywhere without a plan; a value PostgreSQL refuses
//! changes nothing and is named in the cluster's condition; a parameter that needs a restart
//! becomes a rolling restart plan that completes while the operator is SIGKILLed at every
//! step — each instance restarted exactly once, never two replicas of a shard down — a
//! restart asked of one node by annotation restarts that node's instances only, and a value
//! no start can meet halts the plan at its canary, saying why, until it is reverted.

#[path = "agent/harness.rs"]
mod harness;
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use shardplane::api::plan::{PlanPhase, PlanPurpose, TargetKind};
use shardplane::api::shard::ReplicaState;
use shardplane::api::{DatabaseCluster, DatabaseNode, Plan};
use support::{env_with_crds, eventually};

use harness::{DataPlane, Ledger, NODES, OperatorMode, PlanWatcher};

const SHARDS: usize = 4;
const WRITERS: usize = 4;
const WRITES_PER_SECOND: f64 = 80.0;

/// Each running instance by (shard, node): its postmaster's start time and the value of
/// `setting`.
async fn instances(
    plane: &DataPlane,
    setting: &str,
) -> BTreeMap<(String, String), (String, String)> {
    let mut found = BTreeMap::new();
    for shard in plane.shard_list().await {
        for replica in shard.status.clone().unwrap_or_default().replicas {
            let Some(endpoint) = replica.endpoint.as_deref() else {
                continue;
            };
            let client = harness::connect(endpoint).await.unwrap();
            let row = client
                .query_one(
                    "SELECT pg_postmaster_start_time()::text, current_setting($1)",
                    &[&setting],
                )
                .await
                .unwrap();
            found.insert((shard.name_any(), replica.node), (row.get(0), row.get(1)));
        }
    }
    found
}

async fn set_parameters(plane: &DataPlane, parameters: serde_json::Value) {
    let clusters: Api<DatabaseCluster> = Api::namespaced(plane.client.clone(), &plane.namespace);
    // One write replacing the whole map: keys absent from `parameters` are removed.
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "add", "path": "/spec/postgresParameters", "value": parameters}
    ]))
    .unwrap();
    clusters
        .patch("main", &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .unwrap();
}

/// The cluster's `ParametersApplied` condition: (status, reason, message).
async fn parameters_condition(plane: &DataPlane) -> Option<(String, String, String)> {
    let clusters: Api<DatabaseCluster> = Api::namespaced(plane.client.clone(), &plane.namespace);
    let cluster = clusters.get("main").await.ok()?;
    let generation = cluster.metadata.generation;
    cluster
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "ParametersApplied" && c.observed_generation == generation)
        .map(|c| (format!("{:?}", c.status), c.reason, c.message))
}

/// Waits until the cluster's `ParametersApplied` condition holds for its generation.
async fn wait_parameters_applied(plane: &DataPlane) {
    let applied = eventually(Duration::from_secs(60), || async {
        parameters_condition(plane)
            .await
            .is_some_and(|c| c.0 == "True")
    })
    .await;
    assert!(applied, "{:?}", parameters_condition(plane).await);
}

async fn nodes(plane: &DataPlane) -> Vec<DatabaseNode> {
    let api: Api<DatabaseNode> = Api::namespaced(plane.client.clone(), &plane.namespace);
    api.list(&Default::default()).await.unwrap().items
}

async fn plans(plane: &DataPlane) -> Vec<Plan> {
    let api: Api<Plan> = Api::namespaced(plane.client.clone(), &plane.namespace);
    api.list(&Default::default()).await.unwrap().items
}

fn restarts_logged(plane: &DataPlane) -> usize {
    plane
        .agents
        .values()
        .map(|agent| {
            std::fs::read_to_string(&agent.log)
                .unwrap_or_default()
                .matches("restarting the instance as the plan asks")
                .count()
        })
        .sum()
}

/// The most replicas of one shard that were down at one poll.
#[derive(Default)]
struct WorstShard(usize);

impl PlanWatcher for WorstShard {
    async fn observe(&mut self, plane: &mut DataPlane, _: &Plan) {
        for shard in plane.shard_list().await {
            let status = shard.status.unwrap_or_default();
            // Down: not reported, not running, or being (re)built. A fenced former primary
            // and a standby catching up with a new primary still run.
            let down = status
                .desired_replicas
                .iter()
                .filter(|d| {
                    !status.replicas.iter().any(|r| {
                        r.node == d.node
                            && !matches!(
                                r.state,
                                ReplicaState::Down
                                    | ReplicaState::Creating
                                    | ReplicaState::Removing
                            )
                    })
                })
                .count();
            if down > self.0 {
                println!(
                    "{}: {down} replica(s) down: {:?}",
                    shard.metadata.name.as_deref().unwrap_or_default(),
                    status
                        .replicas
                        .iter()
                        .map(|r| (&r.node, r.role, r.state, r.received_lsn))
                        .collect::<Vec<_>>()
                );
            }
            self.0 = self.0.max(down);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parameters_apply_online_and_restarts_roll_one_replica_at_a_time() {
    let env = env_with_crds().await;
    let started = Instant::now();
    let mut plane = DataPlane::start_with_operator(
        env.client.clone(),
        &env.namespace,
        env.control_plane.kubeconfig_path(),
        SHARDS,
        &NODES,
        NODES.len(),
        OperatorMode::Processes(1),
    )
    .await;
    plane.wait_serving(SHARDS, Duration::from_secs(180)).await;
    harness::relax_failure_detection(&plane).await;
    let mut ledger = Ledger::new(&env.client, &env.namespace, WRITERS, WRITES_PER_SECOND).await;

    // A reloadable parameter: in force on every instance, no restart, no plan.
    let workload = ledger.start(100).await;
    let before = instances(&plane, "work_mem").await;
    assert_eq!(before.len(), SHARDS * 3);
    set_parameters(&plane, json!({"work_mem": "8MB"})).await;
    wait_parameters_applied(&plane).await;
    let after = instances(&plane, "work_mem").await;
    for (instance, (start, value)) in &after {
        assert_eq!(value, "8MB", "{instance:?}");
        assert_eq!(
            Some(start),
            before.get(instance).map(|b| &b.0),
            "{instance:?} restarted"
        );
    }
    for node in nodes(&plane).await {
        let reported = node.status.unwrap().parameters.unwrap();
        assert_eq!(reported.effective["work_mem"], "8MB");
        assert!(reported.pending_restart.is_empty());
    }
    assert!(
        plans(&plane)
            .await
            .iter()
            .all(|p| p.spec.purpose != PlanPurpose::NodeRollout)
    );
    ledger.finish("reloadable parameter", workload, 100).await;

    // Values PostgreSQL refuses: named in the condition, nothing changes.
    set_parameters(
        &plane,
        json!({"work_mem": "8MB", "enable_seqscan": "maybe", "temp_buffers": "1"}),
    )
    .await;
    let refused = eventually(Duration::from_secs(60), || async {
        parameters_condition(&plane)
            .await
            .is_some_and(|c| c.1 == "ParametersRejected")
    })
    .await;
    let condition = parameters_condition(&plane).await;
    assert!(refused, "{condition:?}");
    let message = condition.unwrap().2;
    assert!(
        message.contains("enable_seqscan") && message.contains("Boolean"),
        "{message}"
    );
    assert!(
        message.contains("temp_buffers") && message.contains("outside the valid range"),
        "{message}"
    );
    for (instance, (start, value)) in instances(&plane, "work_mem").await {
        assert_eq!(value, "8MB", "{instance:?}");
        assert_eq!(
            Some(&start),
            before.get(&instance).map(|b| &b.0),
            "{instance:?} restarted"
        );
    }
    for node in nodes(&plane).await {
        let rejected = node.status.unwrap().parameters.unwrap().rejected;
        let names: Vec<&str> = rejected.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["enable_seqscan", "temp_buffers"], "{rejected:?}");
    }

    // A parameter that needs a restart: a rolling restart plan, the operator SIGKILLed at
    // every step of it, each instance restarted exactly once, never two replicas of a shard
    // down, no acknowledged write lost and none failed.
    let workload = ledger.start(100).await;
    let logged_before = restarts_logged(&plane);
    set_parameters(&plane, json!({"work_mem": "8MB", "max_connections": "40"})).await;
    let mut worst = WorstShard::default();
    let (plan, kills) = harness::finish_plan_killing_operator_watched(
        &mut plane,
        0,
        PlanPurpose::NodeRollout,
        Duration::from_secs(600),
        &mut worst,
    )
    .await;
    println!(
        "rolling restart: {} steps, operator SIGKILLed {kills} times, {:?}",
        plan.spec.steps.len(),
        plan.spec.summary
    );
    assert!(
        plan.spec.cause.detail.contains("max_connections"),
        "{:?}",
        plan.spec.cause
    );
    assert!(
        worst.0 <= 1,
        "a shard had {} replicas out of sync at once",
        worst.0
    );
    let restarted = instances(&plane, "max_connections").await;
    for (instance, (start, value)) in &restarted {
        assert_eq!(value, "40", "{instance:?}");
        assert_ne!(
            Some(start),
            before.get(instance).map(|b| &b.0),
            "{instance:?} not restarted"
        );
    }
    assert_eq!(
        restarts_logged(&plane) - logged_before,
        SHARDS * 3,
        "each instance restarts exactly once"
    );
    for node in nodes(&plane).await {
        let status = node.status.unwrap();
        assert_eq!(
            status.restarted_for.as_deref(),
            Some(plan.name_any().as_str())
        );
        assert!(status.parameters.unwrap().pending_restart.is_empty());
    }
    wait_parameters_applied(&plane).await;
    ledger
        .finish("rolling restart for max_connections", workload, 100)
        .await;
    let rollouts = || async {
        plans(&plane)
            .await
            .into_iter()
            .filter(|p| p.spec.purpose == PlanPurpose::NodeRollout)
            .count()
    };
    assert_eq!(rollouts().await, 1, "one restart plan for one change");

    // A restart of one node on demand: only its instances restart.
    let workload = ledger.start(100).await;
    let nodes_api: Api<DatabaseNode> = Api::namespaced(plane.client.clone(), &plane.namespace);
    nodes_api
        .patch(
            "n2",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"shardplane.io/restart-requested": "first"}}}),
            ),
        )
        .await
        .unwrap();
    let done = eventually(Duration::from_secs(300), || async {
        plans(&plane).await.iter().any(|p| {
            p.spec.target.kind == TargetKind::DatabaseNode
                && p.spec.target.name == "n2"
                && p.status.as_ref().and_then(|s| s.phase) == Some(PlanPhase::Succeeded)
        })
    })
    .await;
    assert!(done, "the on-demand restart of n2 did not succeed");
    for (instance, (start, _)) in instances(&plane, "max_connections").await {
        let was = &restarted[&instance].0;
        assert_eq!(&start != was, instance.1 == "n2", "{instance:?}");
    }
    ledger
        .finish("restart of n2 on demand", workload, 100)
        .await;
    // Answered: no further restart for the same request.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rollouts().await, 2);

    // A value PostgreSQL accepts but no start can meet (shared memory larger than the
    // machine): the plan halts at its canary, which says why, the cluster serves on; the
    // value reverted, the canary starts and the plan completes.
    let workload = ledger.start(100).await;
    set_parameters(
        &plane,
        json!({"work_mem": "8MB", "max_connections": "40", "shared_buffers": "64GB"}),
    )
    .await;
    let plans_api: Api<Plan> = Api::namespaced(plane.client.clone(), &plane.namespace);
    let halted = eventually(Duration::from_secs(180), || async {
        support::operator::newest_plan(&plans_api, PlanPurpose::NodeRollout)
            .await
            .and_then(|p| p.status)
            .is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Progressing"
                        && c.message.contains("cannot start")
                        && c.message.contains("could not map anonymous shared memory")
                })
            })
    })
    .await;
    let plan = support::operator::newest_plan(&plans_api, PlanPurpose::NodeRollout)
        .await
        .unwrap();
    assert!(halted, "{:?}", plan.status);
    let asked: Vec<String> = nodes(&plane)
        .await
        .into_iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.restart.as_ref())
                .map(|r| r.plan.as_str())
                == Some(plan.name_any().as_str())
        })
        .map(|n| n.name_any())
        .collect();
    assert_eq!(
        asked.len(),
        1,
        "only the canary is asked to restart: {asked:?}"
    );
    // The cluster's condition follows the node's report at the cluster reconciler's next look.
    let clusters: Api<DatabaseCluster> = Api::namespaced(plane.client.clone(), &plane.namespace);
    let degraded = || async {
        clusters
            .get("main")
            .await
            .unwrap()
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Degraded")
            .unwrap()
    };
    let failing = eventually(Duration::from_secs(30), || async {
        degraded().await.reason == "InstancesFailing"
    })
    .await;
    let degraded = degraded().await;
    assert!(failing, "{degraded:?}");
    assert!(
        degraded.message.contains(&format!("on {}", asked[0])),
        "{degraded:?}"
    );
    println!("canary halted: {}", degraded.message);
    // Paused meanwhile (spec.paused may change on a made Plan): reverting the value lets the
    // canary start, but no further step starts until the plan is resumed.
    let pause = |paused: bool| {
        let plans_api = plans_api.clone();
        let name = plan.name_any();
        async move {
            plans_api
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"paused": paused}})),
                )
                .await
                .unwrap();
        }
    };
    pause(true).await;
    let progress = || async {
        let status = plans_api
            .get(&plan.name_any())
            .await
            .unwrap()
            .status
            .unwrap();
        let reason = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Progressing")
            .map(|c| c.reason.clone());
        (status.phase, status.completed_steps, reason)
    };
    let paused = eventually(Duration::from_secs(30), || async {
        progress().await.2.as_deref() == Some("Paused")
    })
    .await;
    assert!(paused, "{:?}", progress().await);
    set_parameters(&plane, json!({"work_mem": "8MB", "max_connections": "40"})).await;
    let held = progress().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(progress().await, held, "a paused plan took a step");
    pause(false).await;
    let finished = eventually(Duration::from_secs(300), || async {
        plans_api
            .get(&plan.name_any())
            .await
            .ok()
            .and_then(|p| p.status?.phase)
            == Some(PlanPhase::Succeeded)
    })
    .await;
    assert!(
        finished,
        "{:?}",
        plans_api.get(&plan.name_any()).await.unwrap().status
    );
    ledger
        .finish(
            "a canary that cannot start, then the value reverted",
            workload,
            100,
        )
        .await;
    for (instance, (_, value)) in instances(&plane, "shared_buffers").await {
        assert_eq!(value, "16MB", "{instance:?}");
    }
    ledger.summary();
    println!("configuration scenario took {:.1?}", started.elapsed());
}
