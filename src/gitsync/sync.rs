//! One sync of one GitSync, as a pipeline read top to bottom: fetch → verify signature →
//! read and parse → Shardplane checks → resolve kinds → dry-run everything → apply → prune
//! → report. Anything refused before the apply step changes nothing in the cluster.

use std::collections::BTreeSet;
use std::path::PathBuf;

use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, ResourceExt};

use super::apply::{Applier, stamp};
use super::error::{Invalid, SyncError};
use super::inventory::{ObjectId, to_prune};
use super::manifests::{parse, validate};
use super::outcome::SyncOutcome;
use super::signature::{parse_allowed_signers, verify_commit};
use super::source::{Credentials, fetch, open_or_init, read_manifests, repository_dir};
use super::status::{next_status, publish_event, write_status};
use crate::api::{ConditionStatus, GitSync, Shard, Table};
use crate::protocol::TABLE_FINALIZER;

/// Whether `id` is a Shardplane object of `kind`.
fn is_kind(id: &ObjectId, kind: &str) -> bool {
    id.kind == kind && id.api_version.starts_with("shardplane.io/")
}

/// Syncs GitSync objects: one per cluster client, sharing a checkout folder.
pub struct Syncer {
    client: Client,
    checkout_dir: PathBuf,
    recorder: Recorder,
}

impl Syncer {
    /// A syncer that keeps its bare repositories under `checkout_dir`.
    pub fn new(client: Client, checkout_dir: PathBuf) -> Syncer {
        let reporter = Reporter {
            controller: "shardplane-git-sync".to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        Syncer {
            client,
            checkout_dir,
            recorder,
        }
    }

    /// Syncs once, then writes the status and an Event. The inner result is the sync's; the
    /// outer error means the result could not be reported.
    pub async fn sync_and_report(
        &self,
        object: &GitSync,
    ) -> Result<Result<SyncOutcome, SyncError>, SyncError> {
        let result = self.sync(object).await;
        let namespace = object.namespace().unwrap_or_default();
        let api = Api::<GitSync>::namespaced(self.client.clone(), &namespace);
        let status = next_status(object, &result, Timestamp::now());
        write_status(&api, &object.name_any(), &status).await?;
        publish_event(&self.recorder, object, &result).await?;
        Ok(result)
    }

    /// `stale` without the Shards of Tables pruned with them that the operator guards with
    /// its finalizer: a Table removed from git keeps its data until its drop plan is
    /// approved, and that plan (not the prune) deletes its Shards. They leave the inventory:
    /// their deletion is the operator's.
    async fn leave_to_table_drops(
        &self,
        namespace: &str,
        stale: Vec<ObjectId>,
    ) -> Result<Vec<ObjectId>, SyncError> {
        let kube_error = |action: &str| {
            let action = action.to_owned();
            move |source| SyncError::Kube { action, source }
        };
        let tables_api = Api::<Table>::namespaced(self.client.clone(), namespace);
        let mut guarded = BTreeSet::new();
        for id in stale.iter().filter(|id| is_kind(id, "Table")) {
            let table = tables_api
                .get_opt(&id.name)
                .await
                .map_err(kube_error("read a Table to prune"))?;
            if table.is_some_and(|t| t.finalizers().iter().any(|f| f == TABLE_FINALIZER)) {
                guarded.insert(id.name.clone());
            }
        }
        if guarded.is_empty() {
            return Ok(stale);
        }
        let shards = Api::<Shard>::namespaced(self.client.clone(), namespace)
            .list(&Default::default())
            .await
            .map_err(kube_error("list Shards to prune"))?;
        let held: BTreeSet<String> = shards
            .items
            .iter()
            .filter(|s| guarded.contains(&s.spec.table))
            .map(ResourceExt::name_any)
            .collect();
        Ok(stale
            .into_iter()
            .filter(|id| !(is_kind(id, "Shard") && held.contains(&id.name)))
            .collect())
    }

    /// Syncs once without reporting: fetch, verify, validate the whole commit, apply, prune.
    pub async fn sync(&self, object: &GitSync) -> Result<SyncOutcome, SyncError> {
        let namespace = object.namespace().unwrap_or_default();
        let spec = &object.spec;
        let status = object.status.clone().unwrap_or_default();
        let credentials = match &spec.credentials_secret_ref {
            Some(secret) => {
                Credentials::from_secret(&self.client, &namespace, &secret.name).await?
            }
            None => Credentials::default(),
        };
        let signers = match &spec.verify {
            Some(verify) => {
                Some(parse_allowed_signers(&verify.allowed_signers).map_err(SyncError::Spec)?)
            }
            None => None,
        };
        let dir = repository_dir(&self.checkout_dir, &namespace, &object.name_any());
        let (url, branch, path) = (spec.url.clone(), spec.branch.clone(), spec.path.clone());
        let (commit, signed_by, files) = tokio::task::spawn_blocking(move || {
            let commit = fetch(&dir, &url, &branch, &credentials)?;
            let repo = open_or_init(&dir).map_err(|error| SyncError::Read {
                commit: commit.to_string(),
                message: error.message().to_owned(),
            })?;
            let signed_by = signers
                .map(|signers| verify_commit(&repo, commit, &signers))
                .transpose()
                .map_err(|reason| SyncError::Signature {
                    commit: commit.to_string(),
                    reason,
                })?;
            let files = read_manifests(&repo, commit, &path)?;
            Ok::<_, SyncError>((commit.to_string(), signed_by, files))
        })
        .await??;

        let refused = |problems: Vec<Invalid>| SyncError::Invalid {
            commit: commit.clone(),
            problems,
        };
        let manifests = parse(&files, &namespace).map_err(refused)?;
        if manifests.is_empty() && !status.inventory.is_empty() {
            return Err(SyncError::EmptyCheckout {
                commit,
                path: spec.path.clone(),
                applied: status.inventory.len(),
            });
        }
        let mut problems = validate(&manifests);
        let mut applier = Applier::new(self.client.clone());
        problems.extend(
            applier
                .resolve(manifests.iter().map(|m| (&m.id, m.file.as_str())).collect())
                .await,
        );
        if !problems.is_empty() {
            return Err(refused(problems));
        }
        // When the last sync applied this very commit under this very spec, every object
        // passed the dry-run then: a resync (the drift check) reads the live versions with
        // one list per kind instead of dry-running every object again. Anything else —
        // a new commit, a changed spec, a failed last sync — is dry-run first.
        let last_sync_succeeded = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == ConditionStatus::True);
        let validated = last_sync_succeeded
            && status.last_applied_commit.as_deref() == Some(commit.as_str())
            && status.observed_generation == object.metadata.generation;
        let mut manifests = manifests;
        let live = applier.live_objects(&manifests).await.map_err(refused)?;
        stamp(&mut manifests, &live, &commit, &object.name_any());
        let live_versions = if validated {
            live.into_iter()
                .map(|l| l.and_then(|l| l.resource_version))
                .collect()
        } else {
            applier.dry_run(&manifests).await.map_err(refused)?
        };

        let current: BTreeSet<ObjectId> = manifests.iter().map(|m| m.id.clone()).collect();
        let applied = applier
            .apply(&manifests, &live_versions)
            .await
            .map_err(|problems| SyncError::Apply {
                commit: commit.clone(),
                problems,
                // Keep both: what was applied before and what may have been applied now,
                // so nothing created by a partial apply escapes a later prune.
                inventory: status
                    .inventory
                    .iter()
                    .cloned()
                    .chain(current.iter().map(ToString::to_string))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
            })?;

        let mut inventory: BTreeSet<ObjectId> = current;
        let mut pruned = Vec::new();
        if spec.prune {
            let stale = self
                .leave_to_table_drops(&namespace, to_prune(&status.inventory, &inventory))
                .await?;
            let failed = applier.prune(&stale).await;
            for (id, reason) in &failed {
                tracing::warn!(object = %id, %reason, "prune failed; kept in the inventory to retry");
                inventory.insert(id.clone());
            }
            pruned = stale
                .into_iter()
                .filter(|id| failed.iter().all(|(f, _)| f != id))
                .collect();
        }
        Ok(SyncOutcome {
            same_commit: status.last_applied_commit.as_deref() == Some(commit.as_str()),
            commit,
            signed_by,
            applied,
            pruned,
            inventory: inventory.iter().map(ToString::to_string).collect(),
        })
    }
}
