//! Node steps: a node leaving the cluster once it holds nothing; a rolling restart's restart
//! of every instance of a node (asked in `DatabaseNode.status.restart`, carried out by the
//! agent, which answers in `status.restartedFor` once each instance is back in sync) and its
//! health gate. Software upgrades are refused until the agents can carry them out.

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::api::database_node::RestartRequest;
use crate::api::shard::{ObservedReplica, ReplicaRole, ReplicaState};
use crate::api::{DatabaseCluster, DatabaseNode, NodePhase, Shard};
use crate::decide::domain::{observed_on, restart_on_demand};
use crate::plan::StepAction;

use super::super::caches::Cache;
use super::super::context::Context;
use super::super::error::Doing;
use super::{Progress, StepError, read_now};

/// Applies a node step of `plan` (idempotently) and reports whether it holds.
pub async fn advance(
    ctx: &Context,
    shards: &Cache<Shard>,
    namespace: &str,
    plan: &str,
    action: &StepAction,
) -> Result<Progress, StepError> {
    match action {
        StepAction::RestartNode { node, .. } => restart(ctx, shards, namespace, plan, node).await,
        StepAction::AwaitNodeHealthy { node } => healthy(ctx, shards, namespace, node).await,
        StepAction::RemoveNode { node } => {
            let shards: Api<Shard> = Api::namespaced(ctx.client.clone(), namespace);
            let shards_on_node = shards
                .list(&Default::default())
                .await
                .doing(|| format!("list the Shards of namespace {namespace}"))?
                .items
                .into_iter()
                .filter(|s| {
                    s.status
                        .as_ref()
                        .is_some_and(|st| st.desired_replicas.iter().any(|r| &r.node == node))
                })
                .map(|s| s.name_any())
                .collect::<Vec<_>>();
            if !shards_on_node.is_empty() {
                return Err(StepError::Permanent(format!(
                    "node {node} still holds replicas of {}; it cannot leave the cluster",
                    shards_on_node.join(", ")
                )));
            }
            ctx.leader.ensure()?;
            let nodes: Api<DatabaseNode> = Api::namespaced(ctx.client.clone(), namespace);
            let patch = json!({"status": {"phase": NodePhase::Decommissioned, "replicas": 0, "primaries": 0}});
            nodes
                .patch_status(node, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .doing(|| format!("mark DatabaseNode {namespace}/{node} Decommissioned"))?;
            Ok(Progress::Done)
        }
        other => Err(StepError::Permanent(format!(
            "{} needs data-plane support this operator build does not have yet; nothing was changed",
            serde_json::to_string(other).unwrap_or_default()
        ))),
    }
}

/// Asks `node` to restart its instances for `plan` (once: a resumed step finds the request
/// written), and holds once the agent reports every instance restarted and back in sync.
/// The request waits until every other replica of the node's shards is in sync: a restart
/// beside a replica still rejoining (a former primary being rewound after its handover)
/// would leave a shard's new primary no standby to acknowledge its commits.
async fn restart(
    ctx: &Context,
    shards: &Cache<Shard>,
    namespace: &str,
    plan: &str,
    node: &str,
) -> Result<Progress, StepError> {
    let nodes: Api<DatabaseNode> = Api::namespaced(ctx.client.clone(), namespace);
    let current = read_now(&nodes, "node", node).await?;
    let status = current.status.clone().unwrap_or_default();
    let asked = status.restart.as_ref().is_some_and(|r| r.plan == plan);
    if asked && status.restarted_for.as_deref() == Some(plan) {
        return Ok(Progress::Done);
    }
    if asked {
        let why = match status.failed_instances.as_slice() {
            [] => "has not yet restarted every instance and brought it back in sync".to_owned(),
            failed => format!(
                "cannot start {}; the plan waits here, the other nodes serve",
                failed
                    .iter()
                    .map(|f| format!("the instance of {}: {}", f.shard, f.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        };
        return Ok(Progress::Waiting(format!("{node} {why}")));
    }
    let behind = shards
        .state()
        .into_iter()
        .filter(|shard| shard.namespace().as_deref() == Some(namespace))
        .find_map(|shard| replica_out_of_sync_beside(&shard, node));
    if let Some(behind) = behind {
        return Ok(Progress::Waiting(format!(
            "{node} restarts once {behind}: only one replica of a shard is down at a time"
        )));
    }
    let clusters: Api<DatabaseCluster> = Api::namespaced(ctx.client.clone(), namespace);
    let cluster = clusters
        .get(&current.spec.cluster)
        .await
        .doing(|| format!("read DatabaseCluster {namespace}/{}", current.spec.cluster))?;
    let request = RestartRequest {
        plan: plan.to_owned(),
        on_demand: restart_on_demand(&cluster, &current),
    };
    ctx.leader.ensure()?;
    nodes
        .patch_status(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"restart": request}})),
        )
        .await
        .doing(|| format!("ask DatabaseNode {namespace}/{node} to restart"))?;
    Ok(Progress::Waiting(format!(
        "asked {node} to restart its instances"
    )))
}

/// For a shard with a replica wanted on `node`: the first of its other wanted replicas not
/// reported in sync in the role wanted (the primary at the shard's epoch), said as what the
/// restart waits for; `None` when every other replica is in sync, or the shard has none on
/// `node`.
fn replica_out_of_sync_beside(shard: &Shard, node: &str) -> Option<String> {
    let status = shard.status.as_ref()?;
    if !status.desired_replicas.iter().any(|d| d.node == node) {
        return None;
    }
    let epoch = status.primary.as_ref().map(|p| p.epoch);
    status
        .desired_replicas
        .iter()
        .filter(|d| d.node != node)
        .find_map(|wanted| {
            let report = observed_on(&status.replicas, &wanted.node);
            let in_sync = report.is_some_and(|r| {
                r.role == wanted.role
                    && reports_in_sync(r)
                    && (wanted.role != ReplicaRole::Primary || r.epoch == epoch)
            });
            (!in_sync).then(|| {
                let state = report.map_or("not reported".to_owned(), |r| {
                    format!("{:?} {:?}", r.role, r.state).to_lowercase()
                });
                format!(
                    "the replica of {} on {} is in sync (it is {state})",
                    shard.name_any(),
                    wanted.node
                )
            })
        })
}

/// Whether a replica reports itself in sync: a serving primary, or a standby streaming within
/// the lag bound (a standby whose stream broke reports the WAL it holds instead).
fn reports_in_sync(report: &ObservedReplica) -> bool {
    report.state == ReplicaState::InSync
        && (report.role == ReplicaRole::Primary || report.received_lsn.is_none())
}

/// Holds once `node` is online and every replica wanted on it reports in sync: a serving
/// primary, or a standby streaming within the lag bound.
async fn healthy(
    ctx: &Context,
    shards: &Cache<Shard>,
    namespace: &str,
    node: &str,
) -> Result<Progress, StepError> {
    let nodes: Api<DatabaseNode> = Api::namespaced(ctx.client.clone(), namespace);
    let current = read_now(&nodes, "node", node).await?;
    let phase = current.status.as_ref().and_then(|s| s.phase);
    if phase != Some(NodePhase::Online) {
        return Ok(Progress::Waiting(format!(
            "{node} is {phase:?}, not Online"
        )));
    }
    let mut behind = Vec::new();
    for shard in shards.state() {
        if shard.namespace().as_deref() != Some(namespace) {
            continue;
        }
        let Some(status) = shard.status.as_ref() else {
            continue;
        };
        if !status.desired_replicas.iter().any(|d| d.node == node) {
            continue;
        }
        let in_sync = status
            .replicas
            .iter()
            .any(|r| r.node == node && reports_in_sync(r));
        if !in_sync {
            behind.push(shard.name_any());
        }
    }
    if behind.is_empty() {
        return Ok(Progress::Done);
    }
    behind.sort();
    let more = behind.len().saturating_sub(5);
    behind.truncate(5);
    Ok(Progress::Waiting(format!(
        "replicas of {}{} on {node} are not in sync yet",
        behind.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Shard `orders-0` wanting n1 (primary, epoch 2), n2 and n3, with `reports`.
    fn shard(reports: serde_json::Value) -> Shard {
        serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
            "metadata": {"name": "orders-0", "namespace": "db"},
            "spec": {"table": "orders", "range": {}},
            "status": {
                "primary": {"node": "n1", "epoch": 2},
                "desiredReplicas": [
                    {"node": "n1", "role": "Primary"},
                    {"node": "n2", "role": "Secondary"},
                    {"node": "n3", "role": "Secondary"},
                ],
                "replicas": reports,
            },
        }))
        .unwrap()
    }

    fn report(node: &str, role: &str, state: &str, epoch: i64) -> serde_json::Value {
        json!({"node": node, "role": role, "state": state, "epoch": epoch})
    }

    #[test]
    fn a_node_restarts_only_while_every_other_replica_of_its_shards_is_in_sync() {
        let healthy = shard(json!([
            report("n1", "Primary", "InSync", 2),
            report("n2", "Secondary", "InSync", 2),
            report("n3", "Secondary", "InSync", 2),
        ]));
        assert_eq!(replica_out_of_sync_beside(&healthy, "n3"), None);
        assert_eq!(
            replica_out_of_sync_beside(&healthy, "n4"),
            None,
            "no replica there"
        );

        // A former primary still being rewound after its handover: n3 must wait, or the new
        // primary on n1 has no standby left to acknowledge a commit.
        let rejoining = shard(json!([
            report("n1", "Primary", "InSync", 2),
            report("n2", "Primary", "Fenced", 1),
            report("n3", "Secondary", "InSync", 2),
        ]));
        let why = replica_out_of_sync_beside(&rejoining, "n3").unwrap();
        assert!(why.contains("orders-0 on n2"), "{why}");
        assert!(why.contains("primary fenced"), "{why}");
        // n2 itself may restart: the others are in sync.
        assert_eq!(replica_out_of_sync_beside(&rejoining, "n2"), None);

        // A primary reported at an older epoch is not the primary the shard has now.
        let old_epoch = shard(json!([
            report("n1", "Primary", "InSync", 1),
            report("n2", "Secondary", "InSync", 2),
            report("n3", "Secondary", "InSync", 2),
        ]));
        assert!(replica_out_of_sync_beside(&old_epoch, "n3").is_some());

        let unreported = shard(json!([report("n1", "Primary", "InSync", 2)]));
        let why = replica_out_of_sync_beside(&unreported, "n3").unwrap();
        assert!(why.contains("not reported"), "{why}");
    }
}
