//! `shardplane plan`: what a change between two commits would cause — shards split, merged,
//! added, dropped or re-placed, bytes to copy, table and schema changes, the risk class and
//! the plan hash to approve — compared with the live cluster when one is reachable, else
//! with the base commit's manifests. Rendered as Markdown for a pull request or as JSON.
//!
//! `snapshot` reads each side (git2 or the API), `diff` is the pure comparison that calls
//! the planner, `render` formats it. Nothing here writes anywhere.

pub mod diff;
pub mod error;
pub mod operator_plan;
pub mod render;
pub mod schema;
pub mod snapshot;

use std::path::PathBuf;
use std::time::Duration;

use kube::{Client, ResourceExt};
use serde::Serialize;

pub use diff::Changes;
pub use error::PreviewError;
pub use operator_plan::OperatorPlan;
use snapshot::{Snapshot, read_commit};

/// What to compare.
#[derive(Clone, Debug)]
pub struct PreviewRequest {
    /// The repository (any folder inside it).
    pub repo: PathBuf,
    /// The base revision (the target branch).
    pub base: String,
    /// The head revision (the pull request).
    pub head: String,
    /// The folder of manifests inside the repository ("" for its root).
    pub path: String,
    /// The namespace the manifests are applied to.
    pub namespace: String,
}

/// A preview: the two commits, what the change was compared with, and the changes.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// The base commit.
    pub base: String,
    /// The head commit.
    pub head: String,
    /// What the head was compared with, in words.
    pub compared_with: String,
    /// Whether the comparison used the live cluster (and so knows shard sizes).
    pub live: bool,
    /// Remarks on how the preview was made (for example why the live cluster was not used).
    pub notes: Vec<String>,
    /// What the change causes.
    #[serde(flatten)]
    pub changes: Changes,
    /// The plan the operator will make once the head is applied, per cluster (live only):
    /// its hash is what an approval annotation in the pull request must carry.
    pub operator_plans: Vec<OperatorPlan>,
}

/// How long `preview` waits for a live cluster before falling back to the base commit.
const LIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Previews `request`, against the cluster of `client` when it is given and answers, else
/// against the base commit's manifests.
pub async fn preview(
    request: &PreviewRequest,
    client: Option<Client>,
) -> Result<Preview, PreviewError> {
    let base = read_commit(
        &request.repo,
        &request.base,
        &request.path,
        &request.namespace,
    )?;
    let head = read_commit(
        &request.repo,
        &request.head,
        &request.path,
        &request.namespace,
    )?;
    let mut notes = Vec::new();
    let live = match client {
        Some(client) => {
            let live =
                tokio::time::timeout(LIVE_TIMEOUT, Snapshot::live(&client, &request.namespace))
                    .await;
            match live {
                Ok(Ok(live)) => Some(live),
                Ok(Err(error)) => {
                    notes.push(format!("the live cluster could not be read ({error}); compared with the base commit instead"));
                    None
                }
                Err(_) => {
                    notes.push(format!("the live cluster did not answer within {LIVE_TIMEOUT:?}; compared with the base commit instead"));
                    None
                }
            }
        }
        None => None,
    };
    let mut operator_plans = Vec::new();
    if let Some(live) = &live {
        let (plans, problems) =
            operator_plan::operator_plans(live, &base.snapshot, &head.snapshot, head.time_ms);
        operator_plans = plans;
        notes.extend(problems);
    } else {
        notes.push(
            "the operator's next plan (and its hash to approve) is shown only against a live cluster: it depends on where replicas are now".to_owned(),
        );
    }
    let (current, compared_with, is_live) = match live {
        Some(live) => (
            overlay(live, &base.snapshot, &head.snapshot),
            format!("the live cluster (namespace `{}`)", request.namespace),
            true,
        ),
        None => (
            base.snapshot.clone(),
            format!(
                "the manifests of base commit `{}`",
                &base.id[..base.id.len().min(12)]
            ),
            false,
        ),
    };
    if !is_live {
        notes.push(
            "shard sizes are unknown without a live cluster, so bytes to copy are not shown; declared nodes are assumed Online and empty".to_owned(),
        );
    }
    let changes = diff::diff(&current, &head.snapshot, is_live);
    Ok(Preview {
        base: base.id,
        head: head.id,
        compared_with,
        live: is_live,
        notes,
        changes,
        operator_plans,
    })
}

/// The current side when a live cluster answers: its nodes and clusters, and for every
/// table and shard that git declares (at base or head) the live object, or the base
/// commit's when it is not applied yet. Live objects git never declared are not this
/// repository's, so they are neither compared nor reported dropped.
fn overlay(live: Snapshot, base: &Snapshot, head: &Snapshot) -> Snapshot {
    fn pick<K: kube::Resource + Clone>(live: Vec<K>, base: &[K], head: &[K]) -> Vec<K> {
        let declared: std::collections::BTreeSet<String> =
            base.iter().chain(head).map(ResourceExt::name_any).collect();
        let mut picked: Vec<K> = live
            .into_iter()
            .filter(|o| declared.contains(&o.name_any()))
            .collect();
        for object in base {
            if !picked.iter().any(|o| o.name_any() == object.name_any()) {
                picked.push(object.clone());
            }
        }
        picked
    }
    fn union<K: kube::Resource + Clone>(mut live: Vec<K>, base: &[K]) -> Vec<K> {
        for object in base {
            if !live.iter().any(|o| o.name_any() == object.name_any()) {
                live.push(object.clone());
            }
        }
        live
    }
    Snapshot {
        clusters: union(live.clusters, &base.clusters),
        nodes: union(live.nodes, &base.nodes),
        tables: pick(live.tables, &base.tables, &head.tables),
        shards: pick(live.shards, &base.shards, &head.shards),
        schema_versions: live.schema_versions,
        problems: Vec::new(),
    }
}
