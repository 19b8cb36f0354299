//! The two sides a preview compares, as typed Shardplane objects: the manifests of a commit
//! (read with git2, parsed and checked as git-sync would) or the live objects of a
//! namespace. Also their conversion into the planner's `Topology`.

use std::path::Path;

use git2::Repository;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;

use super::error::PreviewError;
use crate::api::{DatabaseCluster, DatabaseNode, SchemaVersion, Shard, Table};
use crate::decide::domain::{domain_node, domain_shard};
use crate::gitsync::SyncError;
use crate::gitsync::manifests::{self, Manifest, is_shardplane};
use crate::gitsync::source::read_manifests;
use crate::plan::{self, Topology};

/// The Shardplane objects of one side of a change.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// DatabaseClusters.
    pub clusters: Vec<DatabaseCluster>,
    /// DatabaseNodes.
    pub nodes: Vec<DatabaseNode>,
    /// Tables.
    pub tables: Vec<Table>,
    /// Shards.
    pub shards: Vec<Shard>,
    /// SchemaVersions (live only: the operator makes them, git never declares them).
    pub schema_versions: Vec<SchemaVersion>,
    /// What git-sync would refuse in this commit (empty for the live side).
    pub problems: Vec<String>,
}

/// One commit of a repository: its id, committer time and manifests.
pub struct Commit {
    /// The full commit id.
    pub id: String,
    /// The committer time, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Its Shardplane objects.
    pub snapshot: Snapshot,
}

/// Reads revision `rev` (a branch, tag or commit) of the repository at `repo`, the manifests
/// under `path`, bound to `namespace`.
pub fn read_commit(
    repo: &Path,
    rev: &str,
    path: &str,
    namespace: &str,
) -> Result<Commit, PreviewError> {
    let git_error = |error: git2::Error| PreviewError::Git {
        repo: repo.display().to_string(),
        rev: rev.to_owned(),
        message: error.message().to_owned(),
    };
    let repository = Repository::discover(repo).map_err(git_error)?;
    let commit = repository
        .revparse_single(rev)
        .and_then(|object| object.peel_to_commit())
        .map_err(git_error)?;
    let files = read_manifests(&repository, commit.id(), path).map_err(|error| match error {
        SyncError::PathMissing { path, commit } => PreviewError::Manifests(format!(
            "--path {path:?} is not a folder in commit {commit} (revision {rev})"
        )),
        other => PreviewError::Manifests(other.to_string()),
    })?;
    let mut snapshot = Snapshot::default();
    match manifests::parse(&files, namespace) {
        Ok(parsed) => {
            snapshot.problems = manifests::validate(&parsed)
                .iter()
                .map(ToString::to_string)
                .collect();
            snapshot.fill(&parsed);
        }
        Err(problems) => snapshot.problems = problems.iter().map(ToString::to_string).collect(),
    }
    Ok(Commit {
        id: commit.id().to_string(),
        time_ms: u64::try_from(commit.time().seconds()).unwrap_or(0) * 1000,
        snapshot,
    })
}

impl Snapshot {
    fn fill(&mut self, parsed: &[Manifest]) {
        for manifest in parsed {
            let problem = if is_shardplane(manifest, "DatabaseCluster") {
                typed(manifest).map(|o| self.clusters.push(o))
            } else if is_shardplane(manifest, "DatabaseNode") {
                typed(manifest).map(|o| self.nodes.push(o))
            } else if is_shardplane(manifest, "Table") {
                typed(manifest).map(|o| self.tables.push(o))
            } else if is_shardplane(manifest, "Shard") {
                typed(manifest).map(|o| self.shards.push(o))
            } else {
                Ok(())
            };
            if let Err(problem) = problem {
                self.problems.push(problem);
            }
        }
    }

    /// The live Shardplane objects of `namespace`.
    pub async fn live(client: &Client, namespace: &str) -> Result<Snapshot, kube::Error> {
        Ok(Snapshot {
            clusters: list(client, namespace).await?,
            nodes: list(client, namespace).await?,
            tables: list(client, namespace).await?,
            shards: list(client, namespace).await?,
            schema_versions: list(client, namespace).await?,
            problems: Vec::new(),
        })
    }

    /// The planner's view of the cluster that stores `table`, converted as the operator
    /// converts its own (`decide::domain`). Nodes without a reported phase count as
    /// Online when `assume_online` (a commit's manifests carry no status).
    pub fn topology(&self, table: &str, assume_online: bool) -> Topology {
        let cluster = self
            .tables
            .iter()
            .find(|t| t.name_any() == table)
            .map(|t| t.spec.cluster.clone());
        let replication_factor = self
            .clusters
            .iter()
            .find(|c| Some(c.name_any()) == cluster)
            .map_or(0, |c| u32::try_from(c.spec.replication_factor).unwrap_or(0));
        Topology {
            replication_factor,
            nodes: self
                .nodes
                .iter()
                .filter(|n| Some(&n.spec.cluster) == cluster.as_ref())
                .map(|n| {
                    let mut node = domain_node(n);
                    if assume_online && n.status.as_ref().and_then(|s| s.phase).is_none() {
                        node.phase = plan::NodePhase::Online;
                    }
                    node
                })
                .collect(),
            shards: self
                .shards
                .iter()
                .filter_map(|s| domain_shard(s).ok())
                .collect(),
        }
    }
}

fn typed<K: DeserializeOwned>(manifest: &Manifest) -> Result<K, String> {
    serde_json::to_value(&manifest.object)
        .and_then(serde_json::from_value)
        .map_err(|error| format!("{}: {}: {error}", manifest.file, manifest.id.short()))
}

async fn list<K>(client: &Client, namespace: &str) -> Result<Vec<K>, kube::Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api = Api::<K>::namespaced(client.clone(), namespace);
    Ok(api.list(&ListParams::default()).await?.items)
}
