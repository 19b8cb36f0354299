//! The schema rollout (leader only): one reconcile per `SchemaVersion`. Once the table's
//! previous version is fully rolled out, it persists a rollout `Plan` (waves from
//! `plan::plan_schema_rollout`, risk from the version's class, target the SchemaVersion, so
//! an approval annotates it); the executor runs its `ApplySchema` steps
//! (`effects::schema`), which ask each shard for the version (`Shard.status.schemaRequest`) and
//! waits for every replica's agent to verify it. A failed plan is rolled back: every shard
//! asked for the version is asked for the previous one with the inverse statements
//! (`schema::inverse`). The SchemaVersion's status says what happened per shard; the Table's
//! `SchemaRolledOut` condition names a failure's shard, node and error, and
//! `Table.status.schemaVersion` is the version fully rolled out.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::api::plan::{PlanPhase, PlanPurpose, PlanTarget, TargetKind};
use crate::api::schema_version::{Compatibility, RolloutPhase, SchemaVersionStatus, ShardRollout};
use crate::api::shard::SchemaRequest;
use crate::api::{DatabaseCluster, DatabaseNode, Plan, SchemaVersion, Shard, Table};
use crate::plan::{PlanError, RiskClass, RolloutPolicy, plan_schema_rollout};
use crate::protocol::TABLE_LABEL;

use crate::decide::ClusterView;
use crate::decide::conditions::{self, Observation};
use crate::decide::plan_wire::{self, PlanContext, change_cause};

use super::caches::{Cache, Caches};
use super::context::{self, Context};
use super::effects::{
    LOCK_TIMEOUT_MS, primary_verified, replica_error, replicas_verified, write_schema_request,
};
use super::error::{ApiError, Doing};
use super::fence::NotLeader;

/// The Table condition that says whether its newest version is rolled out.
pub const ROLLED_OUT: &str = "SchemaRolledOut";

/// Why a rollout reconcile failed; retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// This replica must not act.
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    /// The API server refused or failed a request.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The rollout plan could not be encoded (a bug).
    #[error("cannot encode the rollout plan: {0}")]
    Encode(#[from] serde_json::Error),
    /// The planner refused the cluster's state (for example an invalid topology).
    #[error("cannot plan the rollout: {0}")]
    Plan(#[from] PlanError),
}

/// What the rollout's reconciles share: the operator's context, and the Tables' watch cache
/// (a new table's version 1 reads its table from it).
pub struct Rollouts {
    ctx: Arc<Context>,
    tables: Cache<Table>,
}

/// Runs the rollout while this replica leads.
pub async fn run(ctx: Arc<Context>, caches: Caches) {
    let rollouts = Arc::new(Rollouts {
        ctx,
        tables: caches.tables.clone(),
    });
    Controller::for_shared_stream(caches.versions.changes(), caches.versions.store())
        .with_config(context::per_table_controller())
        .run(reconcile, error_policy, rollouts)
        .for_each(|_| async {})
        .await;
}

fn error_policy(version: Arc<SchemaVersion>, error: &RolloutError, r: Arc<Rollouts>) -> Action {
    let ctx = &r.ctx;
    let result = match error {
        RolloutError::NotLeader(_) => "not_leader",
        RolloutError::Api(_) => "api",
        RolloutError::Encode(_) => "encode",
        RolloutError::Plan(_) => "plan",
    };
    ctx.retry("SchemaRollout", version.as_ref(), result, error)
}

/// How often an unfinished rollout is looked at (plans and agents are not watched here).
const POLL: Duration = Duration::from_millis(500);

async fn reconcile(version: Arc<SchemaVersion>, r: Arc<Rollouts>) -> Result<Action, RolloutError> {
    let ctx = &r.ctx;
    ctx.leader.ensure()?;
    let status = version.status.clone().unwrap_or_default();
    if matches!(
        status.phase,
        Some(RolloutPhase::Complete | RolloutPhase::RolledBack | RolloutPhase::Failed)
    ) {
        return Ok(Action::await_change());
    }
    let namespace = version.namespace().unwrap_or_default();
    let api = Apis::new(ctx, &namespace);
    // Version 1 only sets the table's version where it has none: the cached table does (a
    // stale copy sets the same number again); a later version reads the table now.
    let cached = match version.spec.previous_version {
        None => r.tables.get(&namespace, &version.spec.table),
        Some(_) => None,
    };
    let table = match cached {
        Some(table) => Some((*table).clone()),
        None => api
            .tables
            .get_opt(&version.spec.table)
            .await
            .doing(|| format!("read Table {}", version.spec.table))?,
    };
    let Some(table) = table else {
        return Ok(Action::await_change());
    };
    let current = table.status.as_ref().and_then(|s| s.schema_version);
    let number = version.spec.version;
    let mut rollout = Rollout {
        ctx,
        api: &api,
        version: &version,
        table: &table,
        status,
    };
    let Some(previous) = version.spec.previous_version else {
        // Version 1 is the CREATE TABLE every new primary runs: nothing to roll out.
        if current.is_none() {
            rollout.set_table_version(number).await?;
        }
        rollout.status.phase = Some(RolloutPhase::Complete);
        rollout.flush().await?;
        return Ok(Action::await_change());
    };
    if current.is_some_and(|c| c >= number) {
        rollout.status.phase = Some(RolloutPhase::Complete);
        rollout.flush().await?;
        return Ok(Action::await_change());
    }
    if current != Some(previous) {
        rollout.status.phase = Some(RolloutPhase::Pending);
        rollout.progressing(
            "WaitingForPreviousVersion",
            format!(
                "waits until version {previous} of {} is rolled out",
                table.name_any()
            ),
        );
        rollout.flush().await?;
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let Some(plan) = rollout.ensure_plan().await? else {
        return Ok(Action::requeue(Duration::from_secs(2)));
    };
    rollout.status.plan = Some(plan.name_any());
    let shards = api.shards_of(&table.name_any()).await?;
    match plan.status.as_ref().and_then(|s| s.phase) {
        None | Some(PlanPhase::Pending | PlanPhase::AwaitingApproval) => {
            rollout.status.phase = Some(RolloutPhase::Pending);
            let waiting = plan
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Approved"))
                .map(|c| c.message.clone())
                .unwrap_or_else(|| format!("plan {} is about to start", plan.name_any()));
            rollout.progressing("AwaitingApproval", waiting);
        }
        Some(PlanPhase::Running) => {
            rollout.status.phase = Some(RolloutPhase::RollingOut);
            rollout.progressing(
                "RollingOut",
                format!(
                    "plan {} applies version {number} wave by wave",
                    plan.name_any()
                ),
            );
        }
        Some(PlanPhase::Succeeded) => {
            rollout.status.phase = Some(RolloutPhase::Complete);
            rollout.status.shards = rollout.shard_states(&plan, &shards, None);
            rollout
                .settle(
                    true,
                    "RolledOut",
                    format!(
                        "version {number} is applied and verified on every replica of every shard"
                    ),
                )
                .await?;
            rollout.set_table_version(number).await?;
            rollout.flush().await?;
            return Ok(Action::await_change());
        }
        Some(PlanPhase::Failed | PlanPhase::Superseded) => {
            return rollout.roll_back(&plan, &shards, previous).await;
        }
    }
    rollout.status.shards = rollout.shard_states(&plan, &shards, None);
    rollout.flush().await?;
    Ok(Action::requeue(POLL))
}

/// The APIs of one namespace.
struct Apis {
    tables: Api<Table>,
    shards: Api<Shard>,
    plans: Api<Plan>,
    versions: Api<SchemaVersion>,
    clusters: Api<DatabaseCluster>,
    nodes: Api<DatabaseNode>,
}

impl Apis {
    fn new(ctx: &Context, namespace: &str) -> Self {
        let client = ctx.client.clone();
        Apis {
            tables: Api::namespaced(client.clone(), namespace),
            shards: Api::namespaced(client.clone(), namespace),
            plans: Api::namespaced(client.clone(), namespace),
            versions: Api::namespaced(client.clone(), namespace),
            clusters: Api::namespaced(client.clone(), namespace),
            nodes: Api::namespaced(client, namespace),
        }
    }

    /// The table's shards, by name.
    async fn shards_of(&self, table: &str) -> Result<Vec<Shard>, ApiError> {
        let mut shards: Vec<Shard> = self
            .shards
            .list(&Default::default())
            .await
            .doing(|| format!("list the Shards of table {table}"))?
            .items
            .into_iter()
            .filter(|s| s.spec.table == table)
            .collect();
        shards.sort_by_key(|s| s.name_any());
        Ok(shards)
    }
}

/// One reconcile of one version's rollout: what it read and the status it writes.
struct Rollout<'a> {
    ctx: &'a Context,
    api: &'a Apis,
    version: &'a SchemaVersion,
    table: &'a Table,
    status: SchemaVersionStatus,
}

impl Rollout<'_> {
    /// The version's rollout plan: the one its status names, else a new one. `None` when the
    /// planner blocked a shard (no live primary): the rollout waits, and says why.
    async fn ensure_plan(&mut self) -> Result<Option<Plan>, RolloutError> {
        if let Some(name) = &self.status.plan
            && let Some(plan) = self
                .api
                .plans
                .get_opt(name)
                .await
                .doing(|| format!("read Plan {name}"))?
        {
            return Ok(Some(plan));
        }
        let table = self.table.name_any();
        let cluster = self
            .api
            .clusters
            .get_opt(&self.table.spec.cluster)
            .await
            .doing(|| format!("read DatabaseCluster {}", self.table.spec.cluster))?;
        let Some(cluster) = cluster else {
            self.progressing(
                "NoCluster",
                format!("DatabaseCluster {} does not exist", self.table.spec.cluster),
            );
            self.flush().await?;
            return Ok(None);
        };
        let view = ClusterView::of(
            Arc::new(cluster),
            self.api
                .nodes
                .list(&Default::default())
                .await
                .doing(|| "list the DatabaseNodes".to_owned())?
                .items
                .into_iter()
                .map(Arc::new)
                .collect(),
            vec![Arc::new(self.table.clone())],
            self.api
                .shards_of(&table)
                .await?
                .into_iter()
                .map(Arc::new)
                .collect(),
            Vec::new(),
        );
        let (topology, _) = view.topology();
        let number = self.version.spec.version;
        let planned = plan_schema_rollout(
            &topology,
            &table,
            number as u64,
            risk(self.version.spec.compatibility),
            &RolloutPolicy::default(),
        )?;
        if !planned.blocked.is_empty() {
            let blocked: Vec<String> = planned
                .blocked
                .iter()
                .map(|b| format!("{}: {}", b.subject, b.reason))
                .collect();
            self.status.phase = Some(RolloutPhase::Pending);
            self.progressing(
                "Blocked",
                format!("the rollout waits: {}", blocked.join("; ")),
            );
            self.flush().await?;
            return Ok(None);
        }
        let cluster = &self.table.spec.cluster;
        // The same steps give the same hash; a version deleted to retry its rollout and made
        // again must not find its predecessor's finished plan, so the name carries the uid.
        let uid = self.version.uid().unwrap_or_default();
        let name = format!(
            "{}-{}",
            plan_wire::plan_name(cluster, PlanPurpose::SchemaRollout, &planned.hash),
            &uid[..uid.len().min(5)]
        );
        let context = PlanContext {
            cluster: cluster.clone(),
            target: PlanTarget {
                kind: TargetKind::SchemaVersion,
                name: self.version.name_any(),
            },
            cause: change_cause(
                self.table,
                format!("schema version {number} of table {table}"),
            ),
            summary: format!(
                "apply schema version {number} ({:?}) of table {table} to {} shard(s), canary first",
                self.version.spec.compatibility,
                planned.operations.len()
            ),
            facts: Default::default(),
        };
        let mut object = plan_wire::plan_object(
            &name,
            &self.version.namespace().unwrap_or_default(),
            plan_wire::to_spec(&planned, context)?,
        );
        object.metadata.owner_references = self.version.controller_owner_ref(&()).map(|o| vec![o]);
        if let Some(labels) = object.metadata.labels.as_mut() {
            labels.insert(TABLE_LABEL.to_string(), table.clone());
        }
        self.ctx.leader.ensure()?;
        let plan = match self.api.plans.create(&PostParams::default(), &object).await {
            Ok(plan) => {
                self.ctx
                    .event(
                        self.version,
                        false,
                        "PlanCreated",
                        format!(
                            "plan {name} ({:?}, hash {}): {}",
                            object.spec.risk, object.spec.hash, object.spec.summary
                        ),
                    )
                    .await;
                plan
            }
            Err(kube::Error::Api(e)) if e.code == 409 => self
                .api
                .plans
                .get(&name)
                .await
                .doing(|| format!("read Plan {name}"))?,
            Err(source) => {
                let action = format!("create Plan {name}");
                return Err(ApiError { action, source }.into());
            }
        };
        Ok(Some(plan))
    }

    /// After a failed plan: records the failure, asks every shard that was asked for this
    /// version for the previous one (inverse statements), and completes once every replica
    /// of those shards verified it.
    async fn roll_back(
        &mut self,
        plan: &Plan,
        shards: &[Shard],
        previous: i64,
    ) -> Result<Action, RolloutError> {
        let number = self.version.spec.version;
        let table = self.table.name_any();
        let failure = self
            .status
            .shards
            .iter()
            .find(|s| s.state == "Failed")
            .cloned()
            .or_else(|| failed_shard(shards, number))
            .unwrap_or_else(|| ShardRollout {
                shard: "(unknown)".into(),
                wave: 0,
                state: "Failed".into(),
                node: None,
                error: plan_failure(plan),
                last_transition_time: Some(Time(Timestamp::now())),
            });
        let what = format!(
            "version {number} failed on shard {} (node {}): {}",
            failure.shard,
            failure.node.as_deref().unwrap_or("unknown"),
            failure.error.as_deref().unwrap_or("no error reported")
        );
        let prior = self
            .api
            .versions
            .get(&format!("{table}-v{previous}"))
            .await
            .doing(|| format!("read SchemaVersion {table}-v{previous}"))?;
        let statements =
            match crate::schema::inverse(&table, &prior.spec.schema, &self.version.spec.schema) {
                Ok(statements) => statements,
                Err(why) => {
                    self.status.phase = Some(RolloutPhase::Failed);
                    self.status.shards = self.shard_states(plan, shards, Some(&failure));
                    let message = format!("{what}; it cannot be rolled back: {why}");
                    self.settle(false, "RolloutFailed", message).await?;
                    self.flush().await?;
                    return Ok(Action::await_change());
                }
            };
        let request = SchemaRequest {
            version: previous,
            statements,
            lock_timeout_ms: LOCK_TIMEOUT_MS,
            statement_timeout_ms: None,
        };
        let mut pending = Vec::new();
        self.ctx.leader.ensure()?;
        for shard in shards {
            let asked = shard
                .status
                .as_ref()
                .and_then(|s| s.schema_request.as_ref());
            if asked.is_some_and(|r| r.version == number) {
                write_schema_request(&self.api.shards, shard, &request, None)
                    .await
                    .doing(|| format!("ask Shard {} to roll back", shard.name_any()))?;
                pending.push(shard.name_any());
            } else if asked == Some(&request) {
                if !replicas_verified(shard, previous).is_empty() {
                    pending.push(shard.name_any());
                } else {
                    write_schema_request(&self.api.shards, shard, &request, Some(previous))
                        .await
                        .doing(|| format!("record the roll-back on Shard {}", shard.name_any()))?;
                }
            }
        }
        self.status.shards = self.shard_states(plan, shards, Some(&failure));
        if pending.is_empty() {
            self.status.phase = Some(RolloutPhase::RolledBack);
            let rolled: Vec<&str> = self
                .status
                .shards
                .iter()
                .filter(|s| s.state == "RolledBack")
                .map(|s| s.shard.as_str())
                .collect();
            let message = format!(
                "{what}; the rollout stopped and was rolled back to version {previous} on {} shard(s) ({})",
                rolled.len(),
                rolled.join(", ")
            );
            self.settle(false, "RolledBack", message).await?;
            self.flush().await?;
            return Ok(Action::await_change());
        }
        self.status.phase = Some(RolloutPhase::RollingOut);
        self.progressing(
            "RollingBack",
            format!(
                "{what}; rolling back to version {previous} on {}",
                pending.join(", ")
            ),
        );
        self.flush().await?;
        Ok(Action::requeue(POLL))
    }

    /// Each shard's state, from what it was asked and what its replicas verified; a recorded
    /// failure stays.
    fn shard_states(
        &self,
        plan: &Plan,
        shards: &[Shard],
        failure: Option<&ShardRollout>,
    ) -> Vec<ShardRollout> {
        let number = self.version.spec.version;
        let previous = self.version.spec.previous_version;
        shards
            .iter()
            .map(|shard| {
                let name = shard.name_any();
                let wave = plan
                    .spec
                    .steps
                    .iter()
                    .find(|s| s.shard.as_deref() == Some(name.as_str()))
                    .map_or(0, |s| s.wave);
                let asked = shard
                    .status
                    .as_ref()
                    .and_then(|s| s.schema_request.as_ref());
                let (state, node, error) = match (failure, asked) {
                    (Some(f), _) if f.shard == name => ("Failed", f.node.clone(), f.error.clone()),
                    (Some(_), Some(r))
                        if Some(r.version) == previous && !r.statements.is_empty() =>
                    {
                        if replicas_verified(shard, r.version).is_empty() {
                            ("RolledBack", None, None)
                        } else {
                            ("RollingBack", None, None)
                        }
                    }
                    (_, Some(r)) if r.version == number => match replica_error(shard, number) {
                        Some((node, error)) => ("Failed", Some(node), Some(error)),
                        None if replicas_verified(shard, number).is_empty() => {
                            ("Verified", None, None)
                        }
                        None if primary_verified(shard, number) => ("Applied", None, None),
                        None => ("Pending", None, None),
                    },
                    _ => ("Pending", None, None),
                };
                let old = self.status.shards.iter().find(|s| s.shard == name);
                let changed = old.is_none_or(|o| o.state != state);
                ShardRollout {
                    shard: name,
                    wave,
                    state: state.to_owned(),
                    node,
                    error,
                    last_transition_time: if changed {
                        Some(Time(Timestamp::now()))
                    } else {
                        old.and_then(|o| o.last_transition_time.clone())
                    },
                }
            })
            .collect()
    }

    fn progressing(&mut self, reason: &str, message: String) {
        let generation = self.version.metadata.generation;
        conditions::set(
            &mut self.status.conditions,
            generation,
            Observation {
                type_: "Progressing",
                holds: true,
                reason,
                message,
            },
            Timestamp::now(),
        );
    }

    /// Ends the rollout: conditions on the version, the Table's `SchemaRolledOut`, an Event.
    async fn settle(
        &mut self,
        done: bool,
        reason: &str,
        message: String,
    ) -> Result<(), RolloutError> {
        let generation = self.version.metadata.generation;
        for (type_, holds) in [("Progressing", false), ("Ready", done), ("Degraded", !done)] {
            conditions::set(
                &mut self.status.conditions,
                generation,
                Observation {
                    type_,
                    holds,
                    reason,
                    message: message.clone(),
                },
                Timestamp::now(),
            );
        }
        let old = self
            .table
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let mut table_conditions = old.clone();
        conditions::set(
            &mut table_conditions,
            self.table.metadata.generation,
            Observation {
                type_: ROLLED_OUT,
                holds: done,
                reason,
                message: format!("{}: {message}", self.version.name_any()),
            },
            Timestamp::now(),
        );
        if !conditions::same(&table_conditions, &old) {
            let patch = json!({
                "metadata": {"resourceVersion": self.table.resource_version()},
                "status": {"conditions": table_conditions},
            });
            merge_status(self.ctx, &self.api.tables, &self.table.name_any(), patch).await?;
        }
        self.ctx.event(self.version, !done, reason, message).await;
        Ok(())
    }

    async fn set_table_version(&self, number: i64) -> Result<(), RolloutError> {
        let patch = json!({"status": {"schemaVersion": number}});
        merge_status(self.ctx, &self.api.tables, &self.table.name_any(), patch).await
    }

    async fn flush(&mut self) -> Result<(), RolloutError> {
        let old = self.version.status.clone().unwrap_or_default();
        self.status.observed_generation = self.version.metadata.generation;
        let unchanged = conditions::same(&self.status.conditions, &old.conditions)
            && SchemaVersionStatus {
                conditions: Vec::new(),
                ..self.status.clone()
            } == SchemaVersionStatus {
                conditions: Vec::new(),
                ..old
            };
        if unchanged {
            return Ok(());
        }
        let patch = json!({"status": self.status});
        merge_status(
            self.ctx,
            &self.api.versions,
            &self.version.name_any(),
            patch,
        )
        .await
    }
}

/// A merge patch of the status of `name`, written only by the leader.
async fn merge_status<K>(
    ctx: &Context,
    api: &Api<K>,
    name: &str,
    patch: serde_json::Value,
) -> Result<(), RolloutError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    ctx.leader.ensure()?;
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .doing(|| format!("write the status of {name}"))?;
    Ok(())
}

/// The risk of rolling out a version of `class`: online is safe, a rewrite disruptive, a
/// drop destructive (which always waits for approval).
fn risk(class: Compatibility) -> RiskClass {
    match class {
        Compatibility::Online => RiskClass::Safe,
        Compatibility::Rewrite => RiskClass::Disruptive,
        Compatibility::Destructive => RiskClass::Destructive,
    }
}

/// The failed plan step's message.
fn plan_failure(plan: &Plan) -> Option<String> {
    plan.status.as_ref()?.steps.iter().find_map(|s| {
        s.message
            .clone()
            .filter(|_| s.phase == crate::api::plan::StepPhase::Failed)
    })
}

/// The first shard whose replica reported an error for `version`.
fn failed_shard(shards: &[Shard], version: i64) -> Option<ShardRollout> {
    shards.iter().find_map(|shard| {
        let (node, error) = replica_error(shard, version)?;
        Some(ShardRollout {
            shard: shard.name_any(),
            wave: 0,
            state: "Failed".into(),
            node: Some(node),
            error: Some(error),
            last_transition_time: Some(Time(Timestamp::now())),
        })
    })
}
