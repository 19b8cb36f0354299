//! The plan executor: one reconcile per `Plan`. It decides approval (`approval.rs`: cluster
//! policy, a patch of `spec.approval`, or an annotation carrying the plan's hash on the
//! target object), then executes the plan wave by wave: the operations of a wave side by
//! side (at most [`MAX_IN_FLIGHT`] effects at once), the steps of an operation in order. A step
//! is marked Running in status *before* its effect (`super::effects`) is applied (except the
//! few `StepAction::recorded_with_outcome`) — the steps started together in one write — and
//! Succeeded once the effect holds, written with the next write. Every status
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
use kube::{Resource, ResourceExt};
use tracing::Level;

use crate::api::plan::{PlanPhase, PlanPurpose, PlanStatus, PlanStep, StepPhase, StepStatus};
use crate::api::{Plan, Shard};
use crate::decide::approval::Verdict;
use crate::decide::conditions::{self, Observation};
use crate::decide::plan_wire;
use crate::plan::StepAction;

use super::caches::Caches;
use super::context::Context;
use super::effects::{self, Progress, ShardCopies, StepError};
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

/// What the executor's reconciles share: the operator's context, and a watch cache of the
/// Shards its replica steps wait on (`effects::advance`), so that a waiting step costs no
/// request.
pub struct Executor {
    ctx: Arc<Context>,
    shards: ShardCopies,
}

/// Runs the executor while this replica leads.
pub async fn run(ctx: Arc<Context>, caches: Caches) {
    let executor = Arc::new(Executor {
        ctx: ctx.clone(),
        shards: ShardCopies::new(caches.shards.clone()),
    });
    let plans = caches.plans.store();
    let controller = Controller::for_shared_stream(caches.plans.changes(), plans.clone());
    ctx.metrics.queue.track("Plan", plans.clone());
    // A running plan waits on its shards' agents: a change of a shard it names (or of any
    // shard with a split/merge order or report, for the splits and merges) wakes it at once
    // instead of at its next poll (a split's write fence is up meanwhile).
    controller
        .watches_shared_stream(caches.shards.changes(), move |shard: Arc<Shard>| {
            let resharding = shard
                .status
                .as_ref()
                .is_some_and(|s| s.reshard.is_some() || s.reshard_report.is_some());
            let namespace = shard.namespace();
            let name = shard.name_any();
            plans
                .state()
                .into_iter()
                .filter(move |plan| {
                    plan.namespace() == namespace
                        && plan.status.as_ref().and_then(|s| s.phase) == Some(PlanPhase::Running)
                        && (resharding
                            || plan
                                .spec
                                .steps
                                .iter()
                                .any(|s| s.shard.as_deref() == Some(name.as_str())))
                })
                .map(|plan| ObjectRef::from_obj(plan.as_ref()))
        })
        .run(reconcile, error_policy, executor)
        .for_each(|_| async {})
        .await;
}

fn error_policy(plan: Arc<Plan>, error: &ExecutorError, executor: Arc<Executor>) -> Action {
    let ctx = &executor.ctx;
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

async fn reconcile(plan: Arc<Plan>, executor: Arc<Executor>) -> Result<Action, ExecutorError> {
    let (ctx, shards) = (&executor.ctx, &executor.shards);
    let started = Instant::now();
    ctx.reconcile_started("Plan", plan.as_ref());
    ctx.leader.ensure()?;
    let mut writer = StatusWriter::new(ctx, &plan);
    let action = match writer.status.phase {
        Some(PlanPhase::Superseded) if plan.spec.purpose == PlanPurpose::Reshard => {
            undo_superseded_reshard(ctx, &plan).await?;
            ctx.next("Plan", plan.as_ref(), None)
        }
        Some(PlanPhase::Succeeded | PlanPhase::Failed | PlanPhase::Superseded) => {
            ctx.next("Plan", plan.as_ref(), None)
        }
        Some(PlanPhase::Running) if paused(&plan) => pause(ctx, &plan, &mut writer).await?,
        Some(PlanPhase::Running) => execute(ctx, shards, &plan, &mut writer).await?,
        None | Some(PlanPhase::Pending | PlanPhase::AwaitingApproval) => {
            match approval(ctx, &plan).await? {
                Verdict::Approved(by) => {
                    start(ctx, &plan, &mut writer, by).await?;
                    if paused(&plan) {
                        pause(ctx, &plan, &mut writer).await?
                    } else {
                        execute(ctx, shards, &plan, &mut writer).await?
                    }
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

fn paused(plan: &Plan) -> bool {
    plan.spec.paused == Some(true)
}

/// Holds a running plan that `spec.paused` pauses: no step starts; the plan says so (once)
/// and waits for its spec to change.
async fn pause(
    ctx: &Context,
    plan: &Plan,
    writer: &mut StatusWriter<'_>,
) -> Result<Action, ExecutorError> {
    let done = writer.status.succeeded_steps();
    let message = format!(
        "paused by spec.paused after {done} of {} step(s); set spec.paused to false to resume",
        plan.spec.steps.len()
    );
    let news = !writer
        .status
        .conditions
        .iter()
        .any(|c| c.type_ == "Progressing" && c.message == message);
    set_progress(
        &mut writer.status,
        plan.meta().generation,
        "Paused",
        message.clone(),
    );
    writer.flush_if_changed(plan).await?;
    if news {
        plan_line!(Level::INFO, plan, why = message.as_str(), "plan paused");
    }
    Ok(ctx.next("Plan", plan, None))
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
        .map(|s| StepStatus::pending(s.id))
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

/// How many step effects of one plan are applied at once: a wave holds at most the cluster's
/// concurrency limit of operations, but a failover's promotions all share its first wave.
const MAX_IN_FLIGHT: usize = 64;

/// What one round of the current wave came to.
#[derive(Default)]
struct Round {
    /// A step succeeded: the operations move on at once.
    progressed: bool,
    /// The steps that wait, each with why.
    waiting: Vec<(usize, String)>,
    /// The waiting steps whose reason changed, each with the new one.
    news: Vec<(usize, String)>,
    /// The first step that failed for good, with why: the plan fails.
    failed: Option<(usize, String)>,
    /// The first effect the API refused or failed; its step is retried.
    api: Option<ExecutorError>,
}

/// Executes the plan wave by wave (`plan_wire::next_steps`): the operations of the current
/// wave advance side by side, each through its steps in order, until every one waits or is
/// done; the next wave starts once every step of this one succeeded. The steps started
/// together are recorded Running in one status write before their effects; the steps done
/// are recorded with the next write. Returns when the plan waits, fails or succeeded.
async fn execute(
    ctx: &Context,
    shards: &ShardCopies,
    plan: &Plan,
    writer: &mut StatusWriter<'_>,
) -> Result<Action, ExecutorError> {
    let namespace = plan.namespace().unwrap_or_default();
    let generation = plan.meta().generation;
    for step in &plan.spec.steps {
        status_index(&mut writer.status, step.id);
    }
    loop {
        if writer
            .status
            .steps
            .iter()
            .any(|s| s.phase == StepPhase::Failed)
        {
            return Ok(ctx.next("Plan", plan, None));
        }
        let next = plan_wire::next_steps(&plan.spec.steps, &writer.status);
        if next.is_empty() {
            break;
        }
        begin(ctx, plan, writer, &next).await?;
        let outcomes: Vec<(usize, Result<Progress, StepError>)> = futures::stream::iter(next)
            .map(|i| {
                let namespace = namespace.as_str();
                let step = &plan.spec.steps[i];
                async move { (i, advance(ctx, shards, plan, namespace, step).await) }
            })
            .buffer_unordered(MAX_IN_FLIGHT)
            .collect()
            .await;
        let round = record(ctx, plan, writer, outcomes)?;
        if let Some((i, why)) = round.failed {
            fail(ctx, plan, writer, &plan.spec.steps[i], why).await?;
            return Ok(ctx.next("Plan", plan, None));
        }
        if !round.progressed
            && let Some((i, why)) = round.waiting.first()
        {
            let step = &plan.spec.steps[*i];
            let others = match round.waiting.len() - 1 {
                0 => String::new(),
                n => format!(" ({n} other step(s) of wave {} wait too)", step.wave),
            };
            set_progress(
                &mut writer.status,
                generation,
                "Running",
                format!("step {} ({}): {why}{others}", step.id, step.action),
            );
        }
        // A round that progressed is written with the next one's start (or its end): the
        // plan's status is large, and one write per round is enough to resume from.
        if !round.progressed {
            writer.flush_if_changed(plan).await?;
        }
        // Once per new reason (written), not at every poll.
        for (i, why) in &round.news {
            let step = &plan.spec.steps[*i];
            step_line!(Level::INFO, plan, step, why = why.as_str(), "step waiting");
        }
        if round.progressed {
            continue;
        }
        if round.waiting.is_empty()
            && let Some(error) = round.api
        {
            // Every effect of the round failed on the API: retried with a backoff.
            return Err(error);
        }
        return Ok(ctx.next("Plan", plan, Some(ctx.config.step_poll)));
    }
    succeed(ctx, plan, writer).await
}

/// The position of step `id`'s entry in `status.steps`, added (pending) if missing.
fn status_index(status: &mut PlanStatus, id: i32) -> usize {
    if let Some(index) = status.steps.iter().position(|s| s.id == id) {
        return index;
    }
    status.steps.push(StepStatus::pending(id));
    status.steps.len() - 1
}

/// Records the steps at `next` (positions in the plan's steps) as started — pending steps
/// Running, steps a new leader resumes with one more attempt — in one status write before
/// any of their effects. Some steps are recorded with their outcome only (one write less
/// while a split's fence is up; `StepAction::recorded_with_outcome`).
async fn begin(
    ctx: &Context,
    plan: &Plan,
    writer: &mut StatusWriter<'_>,
    next: &[usize],
) -> Result<(), ExecutorError> {
    let key = object_key(plan);
    let epoch = ctx.leader.epoch();
    let resumed = writer.status.executor_epoch != Some(epoch);
    let mut write = false;
    for &i in next {
        let step = &plan.spec.steps[i];
        let index = status_index(&mut writer.status, step.id);
        let state = &mut writer.status.steps[index];
        match state.phase {
            StepPhase::Pending => {
                state.phase = StepPhase::Running;
                state.attempts += 1;
                state.started_at = Some(Time(Timestamp::now()));
                let attempt = state.attempts;
                write |= !plan_wire::step_action(step)
                    .as_ref()
                    .is_ok_and(StepAction::recorded_with_outcome);
                ctx.metrics.step_started(&key, step.id);
                step_line!(Level::INFO, plan, step, attempt, "step started");
            }
            StepPhase::Running if resumed => {
                state.attempts += 1;
                write = true;
                let attempt = state.attempts;
                step_line!(Level::INFO, plan, step, attempt, "step resumed");
            }
            StepPhase::Running | StepPhase::Succeeded | StepPhase::Failed => {}
        }
    }
    writer.status.executor_epoch = Some(epoch);
    if write {
        writer.flush(plan).await?;
    }
    Ok(())
}

/// Applies the effect of `step` of `plan` (idempotently) and reports whether it holds.
async fn advance(
    ctx: &Context,
    shards: &ShardCopies,
    plan: &Plan,
    namespace: &str,
    step: &PlanStep,
) -> Result<Progress, StepError> {
    let outcome = match plan_wire::step_action(step) {
        Ok(action) => effects::advance(ctx, shards, namespace, &plan.name_any(), &action).await,
        Err(error) => Err(StepError::Permanent(format!(
            "step {} cannot be read: {error}",
            step.id
        ))),
    };
    if outcome.is_ok() {
        // Only the plan's first effect ends its decision clock.
        ctx.metrics.effect_written(&object_key(plan));
    }
    outcome
}

/// Records one round's outcomes in the status (not yet written): steps done are Succeeded,
/// waiting steps say why, a step that failed for good is named for [`fail`], an API failure
/// leaves its step Running to be retried. Returns at once when this replica must not act.
fn record(
    ctx: &Context,
    plan: &Plan,
    writer: &mut StatusWriter<'_>,
    outcomes: Vec<(usize, Result<Progress, StepError>)>,
) -> Result<Round, NotLeader> {
    let key = object_key(plan);
    let mut round = Round::default();
    for (i, outcome) in outcomes {
        let step = &plan.spec.steps[i];
        let index = status_index(&mut writer.status, step.id);
        let state = &mut writer.status.steps[index];
        match outcome {
            Ok(Progress::Done) => {
                state.phase = StepPhase::Succeeded;
                state.finished_at = Some(Time(Timestamp::now()));
                state.message = None;
                let clock = ctx.metrics.step_ended(&key, step.id);
                let duration_ms = millis(clock, state.started_at.as_ref());
                step_line!(Level::INFO, plan, step, duration_ms, "step succeeded");
                ctx.metrics
                    .plan_steps
                    .get_or_create(&StepLabels {
                        action: step.action.clone(),
                        result: "succeeded",
                    })
                    .inc();
                round.progressed = true;
            }
            Ok(Progress::Waiting(why)) => {
                if state.message.replace(why.clone()).as_ref() != Some(&why) {
                    round.news.push((i, why.clone()));
                }
                round.waiting.push((i, why));
            }
            Err(StepError::Permanent(why)) => {
                if round.failed.is_none() {
                    round.failed = Some((i, why));
                }
            }
            Err(StepError::Api(source)) => {
                step_line!(
                    Level::WARN,
                    plan,
                    step,
                    error = %source,
                    "step effect not applied; retried"
                );
                if round.api.is_none() {
                    round.api = Some(ExecutorError::Step {
                        plan: plan.name_any(),
                        step: step.id,
                        action: step.action.clone(),
                        source,
                    });
                }
            }
            Err(StepError::NotLeader(error)) => return Err(error),
        }
    }
    let done = writer.status.succeeded_steps();
    writer.status.completed_steps = Some(done as i32);
    Ok(round)
}

/// Fails `step` of `plan` (and the plan) for `why`: data intact, the plan says why.
async fn fail(
    ctx: &Context,
    plan: &Plan,
    writer: &mut StatusWriter<'_>,
    step: &PlanStep,
    why: String,
) -> Result<(), ExecutorError> {
    let key = object_key(plan);
    let generation = plan.meta().generation;
    let index = status_index(&mut writer.status, step.id);
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
    Ok(())
}

/// Ends `plan`: every step succeeded.
async fn succeed(
    ctx: &Context,
    plan: &Plan,
    writer: &mut StatusWriter<'_>,
) -> Result<Action, ExecutorError> {
    let generation = plan.meta().generation;
    writer.status.phase = Some(PlanPhase::Succeeded);
    writer.status.finished_at = Some(Time(Timestamp::now()));
    let message = format!("all {} step(s) succeeded", plan.spec.steps.len());
    set_progress(&mut writer.status, generation, "Succeeded", message.clone());
    writer.flush(plan).await?;
    let clock = ctx.metrics.plan_ended(&object_key(plan));
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
