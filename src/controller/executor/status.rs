//! A plan's status as the executor changes it within one reconcile, written with the
//! resourceVersion of the last read or write, so concurrent writers (a deposed leader) are
//! refused with a conflict; and the `Progressing`/`Ready` conditions every phase sets.

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::api::Plan;
use crate::api::plan::{PlanPhase, PlanStatus};
use crate::decide::conditions::{self, Observation};

use super::super::context::Context;
use super::super::error::Doing;
use super::ExecutorError;

/// Sets the plan's `Progressing` (while it runs) and `Ready` (once it succeeded) conditions.
pub fn set_progress(
    status: &mut PlanStatus,
    generation: Option<i64>,
    reason: &'static str,
    message: String,
) {
    let running = status.phase == Some(PlanPhase::Running);
    let succeeded = status.phase == Some(PlanPhase::Succeeded);
    conditions::set(
        &mut status.conditions,
        generation,
        Observation {
            type_: "Progressing",
            holds: running,
            reason,
            message: message.clone(),
        },
        Timestamp::now(),
    );
    conditions::set(
        &mut status.conditions,
        generation,
        Observation {
            type_: "Ready",
            holds: succeeded,
            reason,
            message,
        },
        Timestamp::now(),
    );
}

/// The plan's status as this reconcile changes it, written with the resourceVersion of the
/// last read or write, so concurrent writers (a deposed leader) are refused with a conflict.
pub struct StatusWriter<'a> {
    ctx: &'a Context,
    /// The status as this reconcile has it.
    pub status: PlanStatus,
    written: PlanStatus,
    resource_version: Option<String>,
}

impl<'a> StatusWriter<'a> {
    /// A writer of `plan`'s status, starting from the status read.
    pub fn new(ctx: &'a Context, plan: &Plan) -> Self {
        let status = plan.status.clone().unwrap_or_default();
        StatusWriter {
            ctx,
            written: status.clone(),
            status,
            resource_version: plan.resource_version(),
        }
    }

    /// Writes the status unless it says what was last written.
    pub async fn flush_if_changed(&mut self, plan: &Plan) -> Result<(), ExecutorError> {
        let same = conditions::same(&self.status.conditions, &self.written.conditions)
            && PlanStatus {
                conditions: Vec::new(),
                ..self.status.clone()
            } == PlanStatus {
                conditions: Vec::new(),
                ..self.written.clone()
            };
        if same {
            return Ok(());
        }
        self.flush(plan).await
    }

    /// Writes the status.
    pub async fn flush(&mut self, plan: &Plan) -> Result<(), ExecutorError> {
        self.ctx.leader.ensure()?;
        self.status.observed_generation = plan.meta().generation;
        let plans: Api<Plan> = Api::namespaced(
            self.ctx.client.clone(),
            &plan.namespace().unwrap_or_default(),
        );
        let patch = json!({
            "metadata": {"resourceVersion": self.resource_version},
            "status": self.status,
        });
        let written = plans
            .patch_status(
                &plan.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
            .doing(|| format!("write the status of Plan {}", plan.name_any()))?;
        self.resource_version = written.resource_version();
        self.written = self.status.clone();
        Ok(())
    }
}
