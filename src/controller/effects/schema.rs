//! The schema step: a shard asked to apply a SchemaVersion (its DDL, under a lock timeout)
//! through `Shard.status.schemaRequest`, done once every wanted replica's agent verified it.
//! The rollout reconciler (`controller::schema_rollout`) writes its roll-backs through the
//! same one writer of `schemaRequest`.

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::api::schema_version::Compatibility;
use crate::api::shard::SchemaRequest;
use crate::api::{SchemaVersion, Shard};
use crate::protocol::SCHEMA_ROLLOUT_MANAGER;

use super::super::context::Context;
use super::super::error::Doing;
use super::{Progress, StepError, get_shard};

/// How long a schema statement may wait for its table lock before it fails (and is retried
/// a few times by the agent): writes queue behind a waiting `ALTER TABLE`, so this bounds how
/// long a rollout can stall them.
pub const LOCK_TIMEOUT_MS: i64 = 1000;
/// The `statement_timeout` of an online version's transactional statements (catalog
/// changes that should take milliseconds); rewrites get none.
pub const ONLINE_STATEMENT_TIMEOUT_MS: i64 = 60_000;

/// The node and error of a replica of `shard` that failed `version`.
pub fn replica_error(shard: &Shard, version: i64) -> Option<(String, String)> {
    shard.status.as_ref()?.schema_reports.iter().find_map(|r| {
        (r.version == version)
            .then(|| r.error.clone().map(|e| (r.node.clone(), e)))
            .flatten()
    })
}

/// The wanted replicas of `shard` that have not verified `version` yet (none: all have).
pub fn replicas_verified(shard: &Shard, version: i64) -> Vec<String> {
    let status = shard.status.clone().unwrap_or_default();
    status
        .desired_replicas
        .iter()
        .filter(|d| {
            !status
                .schema_reports
                .iter()
                .any(|r| r.node == d.node && r.version == version && r.verified)
        })
        .map(|d| d.node.clone())
        .collect()
}

pub fn primary_verified(shard: &Shard, version: i64) -> bool {
    let status = shard.status.clone().unwrap_or_default();
    status.primary.is_some_and(|p| {
        status
            .schema_reports
            .iter()
            .any(|r| r.node == p.node && r.version == version && r.verified)
    })
}

/// Writes `request` (and, once verified everywhere, `schemaVersion`) on the shard's status
/// under the rollout's own field manager.
pub async fn write_schema_request(
    shards: &Api<Shard>,
    shard: &Shard,
    request: &SchemaRequest,
    applied: Option<i64>,
) -> Result<(), kube::Error> {
    let status = shard.status.clone().unwrap_or_default();
    if status.schema_request.as_ref() == Some(request)
        && (applied.is_none() || status.schema_version == applied)
    {
        return Ok(());
    }
    let mut fields = json!({"schemaRequest": request});
    if let Some(applied) = applied.or(status.schema_version) {
        fields["schemaVersion"] = json!(applied);
    }
    let patch = json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
        "metadata": {"name": shard.name_any()},
        "status": fields,
    });
    shards
        .patch_status(
            &shard.name_any(),
            &PatchParams::apply(SCHEMA_ROLLOUT_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await
        .map(drop)
}

/// The `ApplySchema` step: asks `shard` for `version` (the version's DDL, under
/// [`LOCK_TIMEOUT_MS`]), and is done once every wanted replica's agent verified it; a
/// replica's error fails the step, naming the shard, the node and the error.
pub async fn apply(
    ctx: &Context,
    namespace: &str,
    shard_name: &str,
    version: u64,
) -> Result<Progress, StepError> {
    let shards: Api<Shard> = Api::namespaced(ctx.client.clone(), namespace);
    let shard = get_shard(&shards, shard_name).await?;
    let versions: Api<SchemaVersion> = Api::namespaced(ctx.client.clone(), namespace);
    let name = format!("{}-v{version}", shard.spec.table);
    let target = versions
        .get_opt(&name)
        .await
        .doing(|| format!("read SchemaVersion {namespace}/{name}"))?;
    let Some(target) = target else {
        return Err(StepError::Permanent(format!(
            "SchemaVersion {name} no longer exists"
        )));
    };
    let number = target.spec.version;
    let request = SchemaRequest {
        version: number,
        statements: target.spec.ddl.clone(),
        lock_timeout_ms: LOCK_TIMEOUT_MS,
        statement_timeout_ms: (target.spec.compatibility == Compatibility::Online)
            .then_some(ONLINE_STATEMENT_TIMEOUT_MS),
    };
    let asked = shard
        .status
        .as_ref()
        .and_then(|s| s.schema_request.as_ref());
    if asked != Some(&request) {
        ctx.leader.ensure()?;
        write_schema_request(&shards, &shard, &request, None)
            .await
            .doing(|| format!("ask Shard {shard_name} for schema version {number}"))?;
        return Ok(Progress::Waiting(format!(
            "asked shard {shard_name} to apply schema version {number}"
        )));
    }
    if let Some((node, error)) = replica_error(&shard, number) {
        return Err(StepError::Permanent(format!(
            "schema version {number} failed on shard {shard_name}, node {node}: {error}"
        )));
    }
    let missing = replicas_verified(&shard, number);
    if !missing.is_empty() {
        return Ok(Progress::Waiting(format!(
            "waiting for the replicas of {shard_name} on {} to verify schema version {number}",
            missing.join(", ")
        )));
    }
    ctx.leader.ensure()?;
    write_schema_request(&shards, &shard, &request, Some(number))
        .await
        .doing(|| format!("record schema version {number} on Shard {shard_name}"))?;
    Ok(Progress::Done)
}
