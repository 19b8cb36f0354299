//! The cluster's status, computed by `decide::cluster::status` and written once per
//! reconcile — only when it says something new.

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::api::DatabaseCluster;
use crate::decide::{self, ClusterView};
use crate::plan::Topology;

use super::super::context::Context;
use super::super::error::Doing;
use super::ClusterError;

/// Writes the cluster's counts and conditions where they changed.
pub async fn write(
    ctx: &Context,
    view: &ClusterView,
    topology: &Topology,
    invalid: &[String],
    blocked: &[String],
) -> Result<(), ClusterError> {
    let Some(status) = decide::cluster::status(view, topology, invalid, blocked, Timestamp::now())
    else {
        return Ok(());
    };
    ctx.leader.ensure()?;
    let cluster = &view.cluster;
    let namespace = cluster.namespace().unwrap_or_default();
    let clusters: Api<DatabaseCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    clusters
        .patch_status(
            &cluster.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .doing(|| {
            format!(
                "write the status of DatabaseCluster {namespace}/{}",
                cluster.name_any()
            )
        })?;
    Ok(())
}
