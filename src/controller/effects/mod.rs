//! What each plan step does to the world, and how the executor knows it is done, by family:
//! replicas (`replicas.rs`: add, catch up, promote, transfer, remove), splits and merges
//! (`reshard.rs`, and the shards' drop), schema (`schema.rs`), nodes (`node.rs`). Effects are
//! written as desired state on the objects the agents act on; completion is read back from
//! what the agents report. Every effect is idempotent: applying it twice leaves the same
//! state, and an epoch is fixed by the plan, so a resumed step never bumps it twice.

mod copies;
mod node;
mod replicas;
mod reshard;
mod schema;

use kube::{Api, Resource};
use serde::de::DeserializeOwned;

use crate::api::Shard;
use crate::plan::StepAction;

use super::context::{Context, now_ms};
use super::error::{ApiError, Doing};
use super::fence::NotLeader;
use super::table::TableError;

pub use copies::ShardCopies;
pub use reshard::undo_superseded;
pub use schema::{
    LOCK_TIMEOUT_MS, primary_verified, replica_error, replicas_verified, write_schema_request,
};

/// Where a step stands after one look.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Its effect holds; the next step may start.
    Done,
    /// Its effect is written; the world has not caught up yet (why, in a sentence).
    Waiting(String),
}

/// Why a step cannot proceed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// It never will: the plan fails here, data intact, and says why.
    #[error("{0}")]
    Permanent(String),
    /// The API failed; the step is retried.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// This replica must not act.
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
}

impl From<TableError> for StepError {
    fn from(error: TableError) -> Self {
        match error {
            TableError::NotLeader(error) => StepError::NotLeader(error),
            TableError::Api(error) => StepError::Api(error),
            TableError::Switch(why) => StepError::Permanent(why),
            TableError::Encode { .. } => StepError::Permanent(error.to_string()),
        }
    }
}

/// Applies `action`'s effect (idempotently) in `namespace` for the Plan named `plan` and
/// reports whether it holds; replica steps look at `shards` (a watch cache and the
/// executor's own newest writes) first.
pub async fn advance(
    ctx: &Context,
    shards: &ShardCopies,
    namespace: &str,
    plan: &str,
    action: &StepAction,
) -> Result<Progress, StepError> {
    match action {
        StepAction::AddReplica { .. }
        | StepAction::CatchUp { .. }
        | StepAction::TransferPrimary { .. }
        | StepAction::Promote { .. }
        | StepAction::RemoveReplica { .. } => {
            replicas::advance(ctx, shards, namespace, action).await
        }
        StepAction::WaitUntil { not_before_ms } => {
            let now = now_ms();
            if now >= *not_before_ms {
                Ok(Progress::Done)
            } else {
                Ok(Progress::Waiting(format!(
                    "waiting {} s more",
                    (not_before_ms - now).div_ceil(1000)
                )))
            }
        }
        StepAction::PrepareTargets { .. }
        | StepAction::CopyRows { .. }
        | StepAction::CatchUpTarget { .. }
        | StepAction::FenceWrites { .. }
        | StepAction::VerifyRanges { .. }
        | StepAction::SwitchRouting { .. }
        | StepAction::DropShards { .. } => reshard::advance(ctx, namespace, action).await,
        StepAction::ApplySchema { shard, version } => {
            schema::apply(ctx, namespace, shard, *version).await
        }
        StepAction::RemoveNode { .. }
        | StepAction::RestartNode { .. }
        | StepAction::UpgradeNode { .. }
        | StepAction::AwaitNodeHealthy { .. } => {
            node::advance(ctx, shards.cache(), namespace, plan, action).await
        }
    }
}

/// The named shard, read now; a shard that no longer exists fails the step.
async fn get_shard(shards: &Api<Shard>, name: &str) -> Result<Shard, StepError> {
    read_now(shards, "shard", name).await
}

/// The named object (a `what`), read now; one that no longer exists fails the step.
async fn read_now<K>(api: &Api<K>, what: &str, name: &str) -> Result<K, StepError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api
        .get_opt(name)
        .await
        .doing(|| format!("read {} {name}", K::kind(&())))?
    {
        Some(object) => Ok(object),
        None => Err(StepError::Permanent(format!(
            "{what} {name} no longer exists"
        ))),
    }
}
