//! The plan executor against a mock API server: approval, and a step's effect applied exactly
//! once across a retried reconcile.

use std::sync::Arc;

use serde_json::json;

use super::super::fixtures::{self, Expect};
use super::*;
use crate::api::plan::{PlanStatus, TargetKind};
use crate::api::{DatabaseCluster, Table};
use crate::controller::caches::Cache;
use crate::decide::plan_wire::{PlanContext, plan_object, to_spec};
use crate::plan::{self, Operation, PlanKind, Step};

const NS: &str = "db";

/// An executor against the mock API server, its shard cache empty (so every replica step
/// reads the shard from the API server).
fn executor(leading: bool) -> (Arc<Executor>, fixtures::ApiServer) {
    let (ctx, server) = fixtures::context(leading);
    let shards = ShardCopies::new(Cache::empty());
    (Arc::new(Executor { ctx, shards }), server)
}

/// A one-step plan adding a replica of `orders-0` on n2, of `risk`, in `status`.
fn add_replica_plan(risk: plan::RiskClass, status: Option<PlanStatus>) -> Arc<Plan> {
    add_replicas_plan(risk, &["n2"], status)
}

/// A plan of one operation adding replicas of `orders-0` on `nodes`, one after the other.
fn add_replicas_plan(
    risk: plan::RiskClass,
    nodes: &[&str],
    status: Option<PlanStatus>,
) -> Arc<Plan> {
    let steps = nodes
        .iter()
        .map(|node| {
            let mut step = Step::new(
                StepAction::AddReplica {
                    shard: "orders-0".into(),
                    node: (*node).into(),
                },
                "below the replication factor",
            );
            step.risk = risk;
            step
        })
        .collect();
    let mut planned = plan::Plan {
        kind: PlanKind::Placement,
        risk,
        hash: String::new(),
        operations: vec![Operation {
            wave: 0,
            subject: "orders-0".into(),
            steps,
        }],
        blocked: Vec::new(),
    };
    planned.hash = planned.content_hash();
    let context = PlanContext {
        cluster: "main".into(),
        target: crate::api::plan::PlanTarget {
            kind: TargetKind::Table,
            name: "orders".into(),
        },
        cause: crate::api::plan::PlanCause {
            kind: crate::api::plan::CauseKind::Policy,
            commit: None,
            user: None,
            detail: "test".into(),
        },
        summary: "add a replica".into(),
        facts: Default::default(),
    };
    let mut object = plan_object("main-placement-1", NS, to_spec(&planned, context).unwrap());
    object.metadata.resource_version = Some("1".into());
    object.metadata.generation = Some(1);
    object.status = status;
    Arc::new(object)
}

/// The plan running at leader epoch 1, its one step `phase` after `attempts`.
fn running(phase: StepPhase, attempts: i32) -> PlanStatus {
    PlanStatus {
        phase: Some(PlanPhase::Running),
        executor_epoch: Some(1),
        total_steps: Some(1),
        completed_steps: Some(0),
        steps: vec![StepStatus {
            phase,
            attempts,
            ..StepStatus::pending(0)
        }],
        ..Default::default()
    }
}

fn cluster() -> DatabaseCluster {
    serde_json::from_value(json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseCluster",
        "metadata": {"name": "main", "namespace": NS},
        "spec": {"replicationFactor": 3, "regions": [{"name": "r1", "zones": ["r1-a"]}]},
    }))
    .unwrap()
}

/// Shard `orders-0` wanting replicas on `nodes` (the first its primary at epoch 1).
fn shard(nodes: &[&str]) -> Shard {
    let desired: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| json!({"node": n, "role": if i == 0 { "Primary" } else { "Secondary" }}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
        "metadata": {"name": "orders-0", "namespace": NS, "resourceVersion": "11"},
        "spec": {"table": "orders", "range": {}},
        "status": {"primary": {"node": "n1", "epoch": 1}, "desiredReplicas": desired},
    }))
    .unwrap()
}

/// A write of the plan's status, answered with `plan` as the API server would hold it.
fn plan_status_written(plan: &Plan) -> Expect {
    Expect::patch_status::<Plan>(NS, "main-placement-1").answer(plan)
}

#[tokio::test]
async fn a_step_is_recorded_running_before_its_effect_and_applied_once_across_a_retry() {
    let (ctx, server) = executor(true);

    // First look: the step's Running is written before its effect; that write meets a newer
    // plan (409), so the effect is not applied at all.
    let pending = add_replica_plan(plan::RiskClass::Safe, Some(running(StepPhase::Pending, 0)));
    let script = vec![
        plan_status_written(&pending)
            .field("/metadata/resourceVersion", "1")
            .field("/status/steps/0/phase", "Running")
            .field("/status/steps/0/attempts", 1)
            .fail(409, "Conflict"),
    ];
    let error = server
        .run(script, reconcile(pending, ctx.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ExecutorError::Api(e) if e.is_conflict()),
        "{error}"
    );

    // The retry reads the plan as written: the step Running at this epoch, so no second
    // Running write; the effect adds n2 once, and the plan succeeds in one more write.
    let resumed = add_replica_plan(plan::RiskClass::Safe, Some(running(StepPhase::Running, 1)));
    let mut done = running(StepPhase::Succeeded, 1);
    done.phase = Some(PlanPhase::Succeeded);
    done.completed_steps = Some(1);
    let succeeded = add_replica_plan(plan::RiskClass::Safe, Some(done));
    let script = vec![
        Expect::get::<Shard>(NS, "orders-0").answer(shard(&["n1"])),
        Expect::patch_status::<Shard>(NS, "orders-0")
            .field("/metadata/resourceVersion", "11")
            .field("/status/desiredReplicas/1/node", "n2")
            .field("/status/desiredReplicas/1/role", "Secondary")
            .field("/status/desiredReplicaCount", 2)
            .answer(shard(&["n1", "n2"])),
        plan_status_written(&succeeded)
            .field("/status/phase", "Succeeded")
            .field("/status/steps/0/phase", "Succeeded")
            .field("/status/completedSteps", 1),
        Expect::event(NS, "PlanSucceeded"),
    ];
    server
        .run(script, reconcile(resumed, ctx.clone()))
        .await
        .unwrap();

    // A look at the finished plan does nothing.
    server
        .run(Vec::new(), reconcile(succeeded, ctx))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_effect_is_written_on_the_cached_shard_and_read_anew_only_when_that_copy_is_stale() {
    let (ctx, server) = fixtures::context(true);
    let mut stale = shard(&["n1"]);
    stale.metadata.resource_version = Some("10".into());
    let executor = Arc::new(Executor {
        ctx,
        shards: ShardCopies::new(Cache::holding([stale])),
    });
    let resumed = add_replica_plan(plan::RiskClass::Safe, Some(running(StepPhase::Running, 1)));
    let mut done = running(StepPhase::Succeeded, 1);
    done.phase = Some(PlanPhase::Succeeded);
    let script = vec![
        // No read first: the write carries the cached copy's version, which is stale.
        Expect::patch_status::<Shard>(NS, "orders-0")
            .field("/metadata/resourceVersion", "10")
            .field("/status/desiredReplicas/1/node", "n2")
            .fail(409, "Conflict"),
        Expect::get::<Shard>(NS, "orders-0").answer(shard(&["n1"])),
        Expect::patch_status::<Shard>(NS, "orders-0")
            .field("/metadata/resourceVersion", "11")
            .field("/status/desiredReplicas/1/node", "n2")
            .answer(shard(&["n1", "n2"])),
        plan_status_written(&add_replica_plan(plan::RiskClass::Safe, Some(done)))
            .field("/status/phase", "Succeeded"),
        Expect::event(NS, "PlanSucceeded"),
    ];
    server
        .run(script, reconcile(resumed.clone(), executor.clone()))
        .await
        .unwrap();

    // A current copy: written at once, no read at all.
    let (ctx, server) = fixtures::context(true);
    let executor = Arc::new(Executor {
        ctx,
        shards: ShardCopies::new(Cache::holding([shard(&["n1"])])),
    });
    let mut done = running(StepPhase::Succeeded, 1);
    done.phase = Some(PlanPhase::Succeeded);
    let script = vec![
        Expect::patch_status::<Shard>(NS, "orders-0")
            .field("/metadata/resourceVersion", "11")
            .answer(shard(&["n1", "n2"])),
        plan_status_written(&add_replica_plan(plan::RiskClass::Safe, Some(done)))
            .field("/status/phase", "Succeeded"),
        Expect::event(NS, "PlanSucceeded"),
    ];
    server
        .run(script, reconcile(resumed, executor))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_step_writing_a_shard_the_previous_step_wrote_uses_that_writes_answer_not_the_lagging_cache()
 {
    let (ctx, server) = fixtures::context(true);
    // The cache holds version 11 and never sees the executor's writes (it lags them).
    let executor = Arc::new(Executor {
        ctx,
        shards: ShardCopies::new(Cache::holding([shard(&["n1"])])),
    });
    let mut status = running(StepPhase::Running, 1);
    status.total_steps = Some(2);
    status.steps.push(StepStatus::pending(1));
    let plan = add_replicas_plan(plan::RiskClass::Safe, &["n2", "n3"], Some(status));
    let mut added = shard(&["n1", "n2"]);
    added.metadata.resource_version = Some("12".into());
    let mut done = plan.status.clone().unwrap();
    done.phase = Some(PlanPhase::Succeeded);
    let script = vec![
        Expect::patch_status::<Shard>(NS, "orders-0")
            .field("/metadata/resourceVersion", "11")
            .field("/status/desiredReplicas/1/node", "n2")
            .answer(&added),
        // Step 1 recorded Running, then written on version 12, the first write's answer: no
        // 409 on the cache's version 11, no read.
        plan_status_written(&plan).field("/status/steps/1/phase", "Running"),
        Expect::patch_status::<Shard>(NS, "orders-0")
            .field("/metadata/resourceVersion", "12")
            .field("/status/desiredReplicas/2/node", "n3")
            .answer(shard(&["n1", "n2", "n3"])),
        plan_status_written(&plan).field("/status/phase", "Succeeded"),
        Expect::event(NS, "PlanSucceeded"),
    ];
    server.run(script, reconcile(plan, executor)).await.unwrap();
}

#[tokio::test]
async fn an_effect_that_already_holds_is_not_written_again() {
    let (ctx, server) = executor(true);
    // A new leader (epoch 1) resumes a step a deposed one (epoch 0) left Running: the attempt
    // is counted, and n2 is already wanted, so the shard is not written.
    let mut status = running(StepPhase::Running, 1);
    status.executor_epoch = Some(0);
    let resumed = add_replica_plan(plan::RiskClass::Safe, Some(status));
    let script = vec![
        plan_status_written(&resumed)
            .field("/status/steps/0/attempts", 2)
            .field("/status/executorEpoch", 1),
        Expect::get::<Shard>(NS, "orders-0").answer(shard(&["n1", "n2"])),
        plan_status_written(&resumed).field("/status/phase", "Succeeded"),
        Expect::event(NS, "PlanSucceeded"),
    ];
    server.run(script, reconcile(resumed, ctx)).await.unwrap();
}

#[tokio::test]
async fn a_destructive_plan_waits_for_the_hash_on_its_target_and_names_both_hashes() {
    let (ctx, server) = executor(true);
    let plan = add_replica_plan(plan::RiskClass::Destructive, None);
    let mut target: Table = serde_json::from_value(json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "Table",
        "metadata": {"name": "orders", "namespace": NS,
                     "annotations": {"shardplane.io/approve-plan": "not-this-hash"}},
        "spec": {"cluster": "main", "shardKey": "id",
                 "columns": [{"name": "id", "type": "bigint"}], "primaryKey": ["id"]},
    }))
    .unwrap();
    let script = vec![
        Expect::get::<DatabaseCluster>(NS, "main").answer(cluster()),
        Expect::get::<Table>(NS, "orders").answer(&target),
        plan_status_written(&plan)
            .field("/status/phase", "AwaitingApproval")
            .field("/status/conditions/0/type", "Approved")
            .field("/status/conditions/0/status", "False")
            .field("/status/conditions/0/reason", "HashMismatch"),
    ];
    let action = server
        .run(script, reconcile(plan.clone(), ctx.clone()))
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));

    // With the plan's own hash on the target it is approved by the annotation and runs.
    target
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert("shardplane.io/approve-plan".into(), plan.spec.hash.clone());
    let script = vec![
        Expect::get::<DatabaseCluster>(NS, "main").answer(cluster()),
        Expect::get::<Table>(NS, "orders").answer(&target),
        plan_status_written(&plan)
            .field("/status/phase", "Running")
            .field("/status/approvedBy", "annotation:Table/orders")
            .field("/status/executorEpoch", 1),
        Expect::event(NS, "PlanApproved"),
        plan_status_written(&plan).field("/status/steps/0/phase", "Running"),
        Expect::get::<Shard>(NS, "orders-0").answer(shard(&["n1"])),
        Expect::patch_status::<Shard>(NS, "orders-0")
            .field("/status/desiredReplicas/1/node", "n2")
            .answer(shard(&["n1", "n2"])),
        plan_status_written(&plan).field("/status/phase", "Succeeded"),
        Expect::event(NS, "PlanSucceeded"),
    ];
    server.run(script, reconcile(plan, ctx)).await.unwrap();
}

#[tokio::test]
async fn a_replica_that_does_not_lead_writes_nothing() {
    let (ctx, server) = executor(false);
    let plan = add_replica_plan(plan::RiskClass::Safe, Some(running(StepPhase::Pending, 0)));
    let result = server.run(Vec::new(), reconcile(plan, ctx)).await;
    assert!(
        matches!(result, Err(ExecutorError::NotLeader(_))),
        "{result:?}"
    );
}

/// A running placement plan of two operations in wave 0, each adding a replica on n2 and
/// waiting for it to catch up: `orders-0` (steps 0, 1) and `orders-1` (steps 2, 3).
fn two_operation_plan() -> Arc<Plan> {
    let operations = ["orders-0", "orders-1"]
        .iter()
        .map(|shard| Operation {
            wave: 0,
            subject: (*shard).into(),
            steps: vec![
                Step::new(
                    StepAction::AddReplica {
                        shard: (*shard).into(),
                        node: "n2".into(),
                    },
                    "below the replication factor",
                ),
                Step::new(
                    StepAction::CatchUp {
                        shard: (*shard).into(),
                        node: "n2".into(),
                    },
                    "serve only once in sync",
                ),
            ],
        })
        .collect();
    let mut planned = plan::Plan {
        kind: PlanKind::Placement,
        risk: plan::RiskClass::Safe,
        hash: String::new(),
        operations,
        blocked: Vec::new(),
    };
    planned.hash = planned.content_hash();
    let context = PlanContext {
        cluster: "main".into(),
        target: crate::api::plan::PlanTarget {
            kind: TargetKind::DatabaseCluster,
            name: "main".into(),
        },
        cause: crate::api::plan::PlanCause {
            kind: crate::api::plan::CauseKind::Policy,
            commit: None,
            user: None,
            detail: "test".into(),
        },
        summary: "place two shards".into(),
        facts: Default::default(),
    };
    let mut object = plan_object("main-placement-1", NS, to_spec(&planned, context).unwrap());
    object.metadata.resource_version = Some("1".into());
    object.metadata.generation = Some(1);
    let mut status = running(StepPhase::Pending, 0);
    status.total_steps = Some(4);
    status.steps = (0..4).map(StepStatus::pending).collect();
    object.status = Some(status);
    Arc::new(object)
}

/// Shard `name` wanting replicas on n1 (primary) and n2, n2 reported in `state`.
fn shard_with_n2(name: &str, state: &str) -> Shard {
    serde_json::from_value(json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": "11"},
        "spec": {"table": "orders", "range": {}},
        "status": {
            "primary": {"node": "n1", "epoch": 1},
            "desiredReplicas": [{"node": "n1", "role": "Primary"}, {"node": "n2", "role": "Secondary"}],
            "replicas": [{"node": "n2", "role": "Secondary", "state": state, "epoch": 1}],
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn the_operations_of_a_wave_run_side_by_side_and_one_that_waits_holds_no_other_back() {
    let (ctx, server) = executor(true);
    let plan = two_operation_plan();
    let catching_up = shard_with_n2("orders-0", "CatchingUp");
    let in_sync = shard_with_n2("orders-1", "InSync");
    let script = vec![
        // Both operations' first steps start in one write, then act side by side (n2 is
        // already wanted by both shards, so neither is written).
        plan_status_written(&plan)
            .field("/status/steps/0/phase", "Running")
            .field("/status/steps/2/phase", "Running")
            .field("/status/steps/1/phase", "Pending"),
        Expect::get::<Shard>(NS, "orders-0").answer(&catching_up),
        Expect::get::<Shard>(NS, "orders-1").answer(&in_sync),
        // Both succeeded: both operations' second steps start in one write.
        plan_status_written(&plan)
            .field("/status/steps/0/phase", "Succeeded")
            .field("/status/steps/2/phase", "Succeeded")
            .field("/status/steps/1/phase", "Running")
            .field("/status/steps/3/phase", "Running"),
        Expect::get::<Shard>(NS, "orders-0").answer(&catching_up),
        Expect::get::<Shard>(NS, "orders-1").answer(&in_sync),
        // orders-1 is done although orders-0 still waits: a round that progressed is not
        // written by itself; only orders-0 is looked at again.
        Expect::get::<Shard>(NS, "orders-0").answer(&catching_up),
        // Every operation left waits: one write holds the round that progressed and says
        // which step waits and why.
        plan_status_written(&plan)
            .field("/status/phase", "Running")
            .field("/status/completedSteps", 3)
            .field("/status/steps/1/phase", "Running")
            .field(
                "/status/steps/1/message",
                "replica of orders-0 on n2 is CatchingUp",
            )
            .field("/status/steps/3/phase", "Succeeded")
            .field("/status/conditions/0/type", "Progressing")
            .field(
                "/status/conditions/0/message",
                "step 1 (CatchUp): replica of orders-0 on n2 is CatchingUp",
            ),
    ];
    let action = server.run(script, reconcile(plan, ctx)).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_millis(200)));
}

#[tokio::test]
async fn a_paused_plan_starts_no_step_and_says_so() {
    let (ctx, server) = executor(true);
    let mut paused =
        (*add_replica_plan(plan::RiskClass::Safe, Some(running(StepPhase::Pending, 0)))).clone();
    paused.spec.paused = Some(true);
    let paused = Arc::new(paused);
    // One status write saying why, and no request for the step's effect (the mock API
    // server fails on any request not listed).
    let script = vec![
        plan_status_written(&paused)
            .field("/status/phase", "Running")
            .field("/status/steps/0/phase", "Pending")
            .field("/status/conditions/0/type", "Progressing")
            .field("/status/conditions/0/reason", "Paused")
            .field(
                "/status/conditions/0/message",
                "paused by spec.paused after 0 of 1 step(s); set spec.paused to false to resume",
            ),
    ];
    let action = server.run(script, reconcile(paused, ctx)).await.unwrap();
    assert_eq!(action, Action::await_change());
}
