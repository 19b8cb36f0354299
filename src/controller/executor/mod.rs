//! The plan executor: one reconcile per `Plan`. It decides approval (`approval.rs`: cluster
//! policy, a patch of `spec.approval`, or an annotation carrying the plan's hash on the
//! target object), then executes the steps in order, one at a time: a step is marked Running
//! in status *before* its effect (`super::effects`) is applied (except the few
//! `StepAction::recorded_with_outcome`), and Succeeded once the effect holds. Every status
//! write carries the resourceVersion it was computed from (`status.rs`), so a deposed
//! leader's stale write is refused; a restarted operator finds the Running step and
//! re-applies its idempotent effect. Each of these moments is one log line (`plan_line!`,
//! `step_line!`): approval, each step started, waiting (once per new reason), succeeded or
//! failed, and the plan's end.

mod approval;
mod status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::Level;

use crate::api::plan::{PlanPhase, PlanPurpose, StepPhase, StepStatus};
use crate::api::{Plan, Shard};
use crate::decide::approval::Verdict;
use crate::decide::conditions::{self, Observation};
use crate::decide::plan_wire;
use crate::plan::StepAction;

use super::context::Context;
use super::effects::{self, Progress, StepError};
use super::error::ApiError;
use super::fence::NotLeader;
use super::metrics::{StepLabels, object_key, purpose_label};
use approval::approval;
use status::{StatusWriter, set_progress};

/// How soon a plan whose status write met a newer version is looked at again.
const CONFLICT_RETRY: Duration = Duration::from_millis(20);

/// One log line about `$plan` at `$level`: its name, namespace, cluster and purpose, then the
/// given fields and message.
macro_rules! plan_line {
    ($level:expr, $plan:expr, $($fields:tt)+) => {
        tracing::event!(
            $level,
            plan = %$plan.name_any(),
            namespace = %$plan.namespace().unwrap_or_default(),
            cluster = %$plan.spec.cluster,
            purpose = %purpose_label($plan.spec.purpose),
            $($fields)+
        )
    };
}

/// One log line about step `$step` of `$plan` at `$level`: the plan's name and namespace, the
/// step's id, action, shard and node, then the given fields and message.
macro_rules! step_line {
    ($level:expr, $plan:expr, $step:expr, $($fields:tt)+) => {
        tracing::event!(
            $level,
            plan = %$plan.name_any(),
            namespace = %$plan.namespace().unwrap_or_default(),
            step = $step.id,
            action = %$step.action,
            shard = $step.shard.as_deref().map(tracing::field::display),
            node = $step.node.as_deref().map(tracing::field::display),
            $($fields)+
        )
    };
}

/// Why a plan reconcile failed; retried with backoff (a conflict, at once).
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// This replica must not act.
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    /// The API server refused or failed a request (a 409 means the plan changed meanwhile).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A step's effect could not be applied or checked; the step is retried.
    #[error("plan {plan}, step {step} ({action}): {source}")]
    Step {
        /// The plan.
        plan: String,
        /// The step's id.
        step: i32,
        /// The step's action.
        action: String,
        /// The request that failed.
        source: ApiError,
    },
}

/// Runs the executor while this replica leads.
pub async fn run(ctx: Arc<Context>) {
    let controller = Controller::new(ctx.watched::<Plan>(), watcher::Config::default());
    let plans = controller.store();
    ctx.metrics.queue.track("Plan", plans.clone());
    // A split's or merge's steps wait on its shards' agents: a change of such a shard wakes
    // the running plans at once instead of at their next poll (the write fence is up
    // meanwhile).
    controller
        .watches(
            ctx.watched::<Shard>(),
            watcher::Config::default(),
            move |shard: Shard| {
                let resharding = shard
                    .status
                    .as_ref()
                    .is_some_and(|s| s.reshard.is_some() || s.reshard_report.is_some());
                let namespace = shard.namespace();
                plans
                    .state()
                    .into_iter()
                    .filter(move |plan| {
                        resharding
                            && plan.namespace() == namespace
                            && plan.status.as_ref().and_then(|s| s.phase)
                                == Some(PlanPhase::Running)
                    })
                    .map(|plan| ObjectRef::from_obj(plan.as_ref()))
            },
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(plan: Arc<Plan>, error: &ExecutorError, ctx: Arc<Context>) -> Action {
    if let ExecutorError::Api(error) = error
        && error.is_conflict()
    {
        // The cache did not hold this executor's own last status write yet (a shard's
        // change can wake a plan right after it): look again at once, without a backoff;
        // nothing acted on the stale copy (every status write precedes its step's effect).
        return ctx.next("Plan", plan.as_ref(), Some(CONFLICT_RETRY));
    }
    let result = match error {
        ExecutorError::NotLeader(_) => "not_leader",
        ExecutorError::Api(_) => "api",
        ExecutorError::Step { .. } => "step",
    };
    ctx.retry("Plan", plan.as_ref(), result, error)
}

async fn reconcile(plan: Arc<Plan>, ctx: Arc<Context>) -> Result<Action, ExecutorError> {
    let started = Instant::now();
    ctx.reconcile_started("Plan", plan.as_ref());
    ctx.leader.ensure()?;
    let mut writer = StatusWriter::new(&ctx, &plan);
    let action = match writer.status.phase {
        Some(PlanPhase::Superseded) if plan.spec.purpose == PlanPurpose::Reshard => {
            undo_superseded_reshard(&ctx, &plan).await?;
            ctx.next("Plan", plan.as_ref(), None)
        }
        Some(PlanPhase::Succeeded | PlanPhase::Failed | PlanPhase::Superseded) => {
            ctx.next("Plan", plan.as_ref(), None)
        }
        Some(PlanPhase::Running) => execute(&ctx, &plan, &mut writer).await?,
        None | Some(PlanPhase::Pending | PlanPhase::AwaitingApproval) => {
            match approval(&ctx, &plan).await? {
                Verdict::Approved(by) => {
                    start(&ctx, &plan, &mut writer, by).await?;
                    execute(&ctx, &plan, &mut writer).await?
                }
                Verdict::Waiting { reason, message } => {
                    let generation = plan.meta().generation;
                    // Logged once per new reason, not at every look (one a second).
                    let news = !writer
                        .status
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Approved" && c.message == message);
                    let logged = news.then(|| message.clone());
                    writer.status.phase = Some(PlanPhase::AwaitingApproval);
                    writer.status.total_steps = Some(plan.spec.steps.len() as i32);
                    conditions::set(
                        &mut writer.status.conditions,
                        generation,
                        Observation {
                            type_: "Approved",
                            holds: false,
                            reason,
                            message,
                        },
                        Timestamp::now(),
                    );
                    writer.flush_if_changed(&plan).await?;
                    if let Some(message) = logged {
                        plan_line!(
                            Level::INFO,
                            plan,
                            hash = %plan.spec.hash,
                            reason,
                            why = message.as_str(),
                            "plan awaits approval"
                        );
                    }
                    // The target's annotation is not watched here: look again shortly.
                    ctx.next("Plan", plan.as_ref(), Some(Duration::from_secs(1)))
                }
            }
        }
    };
    ctx.metrics.reconciled("Plan", "ok", started);
    ctx.reconciled("Plan", plan.as_ref());
    Ok(action)
}

/// A split or merge superseded (by a failover) before its routing switch: its shards are
/// asked for nothing any more (`effects::undo_superseded`). Runs after any reconcile of the
/// plan in flight when it was superseded (the controller runs one at a time per plan), so no
/// step of it writes an order afterwards.
async fn undo_superseded_reshard(ctx: &Context, plan: &Plan) -> Result<(), ExecutorError> {
    let actions: Vec<StepAction> = plan
        .spec
        .steps
        .iter()
        .filter_map(|step| plan_wire::step_action(step).ok())
        .collect();
    let namespace = plan.namespace().unwrap_or_default();
    match effects::undo_superseded(ctx, &namespace, &actions).await {
        Ok(true) => {
            ctx.event(
                plan,
                true,
                "ReshardUndone",
                format!(
                    "plan {} was superseded before its routing switch: the sources' fence is \
                     lifted and the targets' copies are stopped",
                    plan.name_any()
                ),
            )
            .await;
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(StepError::Api(error)) => Err(error.into()),
        Err(StepError::NotLeader(error)) => Err(error.into()),
        Err(StepError::Permanent(why)) => {
            plan_line!(
                Level::WARN,
                plan,
                why = why.as_str(),
                "a superseded split/merge could not be undone"
            );
            Ok(())
        }
    }
}

async fn start(
    ctx: &Context,
    plan: &Plan,
    writer: &mut StatusWriter<'_>,
    by: String,
) -> Result<(), ExecutorError> {
    let generation = plan.meta().generation;
    let status = &mut writer.status;
    status.phase = Some(PlanPhase::Running);
    status.approved_by = Some(by.clone());
    status.total_steps = Some(plan.spec.steps.len() as i32);
    status.completed_steps = Some(0);
    status.started_at = Some(Time(Timestamp::now()));
    status.executor_epoch = Some(ctx.leader.epoch());
    status.steps = plan
        .spec
        .steps
        .iter()
        .map(|s| StepStatus {
            id: s.id,
            phase: StepPhase::Pending,
            attempts: 0,
            started_at: None,
            finished_at: None,
            message: None,
        })
        .collect();
    conditions::set(
        &mut status.conditions,
        generation,
        Observation {
            type_: "Approved",
            holds: true,
            reason: "Approved",
            message: format!("approved by {by}"),
        },
        Timestamp::now(),
    );
    set_progress(
        status,
        generation,
        "Running",
        format!("executing {} step(s)", plan.spec.steps.len()),
    );
    writer.flush(plan).await?;
    ctx.metrics.plan_started(&object_key(plan));
    plan_line!(
        Level::INFO,
        plan,
        hash = %plan.spec.hash,
        approved_by = %by,
        steps = plan.spec.steps.len(),
        "plan approved"
    );
    ctx.event(
        plan,
        false,
        "PlanApproved",
        format!(
            "plan {} (hash {}) approved by {by}",
            plan.name_any(),
            plan.spec.hash
        ),
    )
    .await;
    Ok(())
}

/// Executes steps in order until one must wait, the plan fails, or every step is done.
async fn execute(
    ctx: &Context,
    plan: &Plan,
    writer: &mut StatusWriter<'_>,
) -> Result<Action, ExecutorError> {
    let namespace = plan.namespace().unwrap_or_default();
    let generation = plan.meta().generation;
    let key = object_key(plan);
    for step in &plan.spec.steps {
        let index = match writer.status.steps.iter().position(|s| s.id == step.id) {
            Some(index) => index,
            None => {
                writer.status.steps.push(StepStatus {
                    id: step.id,
                    phase: StepPhase::Pending,
                    attempts: 0,
                    started_at: None,
                    finished_at: None,
                    message: None,
                });
                writer.status.steps.len() - 1
            }
        };
        let action = plan_wire::step_action(step);
        match writer.status.steps[index].phase {
            StepPhase::Succeeded => continue,
            StepPhase::Failed => return Ok(ctx.next("Plan", plan, None)),
            StepPhase::Pending => {
                // Recorded before acting: a restarted operator resumes this step. Some
                // steps are recorded with their outcome only (one write less while a
                // split's fence is up; `StepAction::recorded_with_outcome`).
                let state = &mut writer.status.steps[index];
                state.phase = StepPhase::Running;
                state.attempts += 1;
                state.started_at = Some(Time(Timestamp::now()));
                writer.status.executor_epoch = Some(ctx.leader.epoch());
                if !action.as_ref().is_ok_and(StepAction::recorded_with_outcome) {
                    writer.flush(plan).await?;
                }
                ctx.metrics.step_started(&key, step.id);
                let attempt = writer.status.steps[index].attempts;
                step_line!(Level::INFO, plan, step, attempt, "step started");
            }
            StepPhase::Running => {
                if writer.status.executor_epoch != Some(ctx.leader.epoch()) {
                    // Resumed by a new leader: count the attempt.
                    writer.status.steps[index].attempts += 1;
                    writer.status.executor_epoch = Some(ctx.leader.epoch());
                    writer.flush(plan).await?;
                    let attempt = writer.status.steps[index].attempts;
                    step_line!(Level::INFO, plan, step, attempt, "step resumed");
                }
            }
        }
        let outcome = match action {
            Ok(action) => effects::advance(ctx, &namespace, &action).await,
            Err(error) => Err(StepError::Permanent(format!(
                "step {} cannot be read: {error}",
                step.id
            ))),
        };
        if outcome.is_ok() {
            // Steps run in order: only the first step's effect ends the plan's clock.
            ctx.metrics.effect_written(&key);
        }
        match outcome {
            Ok(Progress::Done) => {
                let state = &mut writer.status.steps[index];
                state.phase = StepPhase::Succeeded;
                state.finished_at = Some(Time(Timestamp::now()));
                state.message = None;
                let clock = ctx.metrics.step_ended(&key, step.id);
                let duration_ms = millis(clock, state.started_at.as_ref());
                step_line!(Level::INFO, plan, step, duration_ms, "step succeeded");
                let done = writer
                    .status
                    .steps
                    .iter()
                    .filter(|s| s.phase == StepPhase::Succeeded)
                    .count();
                writer.status.completed_steps = Some(done as i32);
                // Written with the next step's Running (or the plan's end): one write less
                // per step. A crash before it re-runs this step's idempotent effect.
                ctx.metrics
                    .plan_steps
                    .get_or_create(&StepLabels {
                        action: step.action.clone(),
                        result: "succeeded",
                    })
                    .inc();
            }
            Ok(Progress::Waiting(why)) => {
                let before = writer.status.steps[index].message.replace(why.clone());
                set_progress(
                    &mut writer.status,
                    generation,
                    "Running",
                    format!("step {} ({}): {why}", step.id, step.action),
                );
                writer.flush_if_changed(plan).await?;
                // Once per new reason, not at every poll.
                if before.as_ref() != Some(&why) {
                    step_line!(Level::INFO, plan, step, why = why.as_str(), "step waiting");
                }
                return Ok(ctx.next("Plan", plan, Some(ctx.config.step_poll)));
            }
            Err(StepError::Permanent(why)) => {
                let state = &mut writer.status.steps[index];
                state.phase = StepPhase::Failed;
                state.finished_at = Some(Time(Timestamp::now()));
                state.message = Some(why.clone());
                writer.status.phase = Some(PlanPhase::Failed);
                writer.status.finished_at = Some(Time(Timestamp::now()));
                let message = format!("step {} ({}) failed: {why}", step.id, step.action);
                set_progress(
                    &mut writer.status,
                    generation,
                    "StepFailed",
                    message.clone(),
                );
                conditions::set(
                    &mut writer.status.conditions,
                    generation,
                    Observation {
                        type_: "Degraded",
                        holds: true,
                        reason: "StepFailed",
                        message: message.clone(),
                    },
                    Timestamp::now(),
                );
                writer.flush(plan).await?;
                let clock = ctx.metrics.step_ended(&key, step.id);
                let duration_ms = millis(clock, writer.status.steps[index].started_at.as_ref());
                step_line!(
                    Level::WARN,
                    plan,
                    step,
                    duration_ms,
                    why = why.as_str(),
                    "step failed"
                );
                let clock = ctx.metrics.plan_ended(&key);
                let duration_ms = millis(clock, writer.status.started_at.as_ref());
                plan_line!(
                    Level::WARN,
                    plan,
                    step = step.id,
                    duration_ms,
                    "plan failed"
                );
                ctx.metrics
                    .plan_steps
                    .get_or_create(&StepLabels {
                        action: step.action.clone(),
                        result: "failed",
                    })
                    .inc();
                ctx.event(plan, true, "PlanFailed", message).await;
                return Ok(ctx.next("Plan", plan, None));
            }
            Err(StepError::Api(source)) => {
                return Err(ExecutorError::Step {
                    plan: plan.name_any(),
                    step: step.id,
                    action: step.action.clone(),
                    source,
                });
            }
            Err(StepError::NotLeader(error)) => return Err(error.into()),
        }
    }
    writer.status.phase = Some(PlanPhase::Succeeded);
    writer.status.finished_at = Some(Time(Timestamp::now()));
    let message = format!("all {} step(s) succeeded", plan.spec.steps.len());
    set_progress(&mut writer.status, generation, "Succeeded", message.clone());
    writer.flush(plan).await?;
    let clock = ctx.metrics.plan_ended(&key);
    plan_line!(
        Level::INFO,
        plan,
        steps = plan.spec.steps.len(),
        duration_ms = millis(clock, writer.status.started_at.as_ref()),
        "plan succeeded"
    );
    ctx.event(
        plan,
        false,
        "PlanSucceeded",
        format!(
            "plan {} (hash {}): {message}",
            plan.name_any(),
            plan.spec.hash
        ),
    )
    .await;
    Ok(ctx.next("Plan", plan, None))
}

/// A duration for the log, in milliseconds: this process's own measure (`clock`) when it
/// started the step or plan, else since the recorded start — to the second then, as
/// `metav1.Time` keeps no less (a step resumed after a restart or a change of leader).
fn millis(clock: Option<Duration>, started: Option<&Time>) -> Option<u64> {
    clock
        .or_else(|| {
            let since = Timestamp::now().duration_since(started?.0);
            Duration::try_from(since).ok()
        })
        .map(|d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
