//! The apply pipeline's side effects: a server-side dry-run of every object (the API
//! server's schema, CEL rules and admission), then server-side apply under git-sync's own
//! field manager, then pruning of what left git. Requests run with bounded concurrency,
//! because the API server usually shares its cores with everything else.

use std::collections::HashMap;

use futures::{StreamExt, stream};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use kube::{Client, Resource};
use sha2::{Digest, Sha256};

use super::error::Invalid;
use super::inventory::ObjectId;
use super::manifests::Manifest;
use crate::protocol::{
    GIT_SYNC_ANNOTATION, GIT_SYNC_MANAGER, SOURCE_COMMIT_ANNOTATION, SOURCE_DIGEST_ANNOTATION,
};

/// What a live object's metadata says, as far as an apply cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveObject {
    /// Its resourceVersion.
    pub resource_version: Option<String>,
    /// The commit git-sync stamped on it.
    pub commit: Option<String>,
    /// The digest of the manifest it was applied from.
    pub digest: Option<String>,
}

/// Stamps every manifest with the commit that last changed it: `commit`, unless the live
/// object (`live`, in manifest order) was applied from an identical manifest, whose stamp
/// it keeps; and with the GitSync (`git_sync`) that applies it, which the chart's git-sync
/// policy holds every later write and the prune of the object to.
pub fn stamp(
    manifests: &mut [Manifest],
    live: &[Option<LiveObject>],
    commit: &str,
    git_sync: &str,
) {
    for (manifest, live) in manifests.iter_mut().zip(live) {
        let bytes = serde_json::to_vec(&manifest.object).unwrap_or_default();
        let digest: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let source = live
            .as_ref()
            .filter(|l| l.digest.as_deref() == Some(digest.as_str()))
            .and_then(|l| l.commit.clone())
            .unwrap_or_else(|| commit.to_owned());
        let annotations = manifest
            .object
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        annotations.insert(SOURCE_COMMIT_ANNOTATION.to_owned(), source);
        annotations.insert(SOURCE_DIGEST_ANNOTATION.to_owned(), digest);
        annotations.insert(GIT_SYNC_ANNOTATION.to_owned(), git_sync.to_owned());
    }
}

/// Requests in flight at once: enough to hide round trips, few enough not to starve an API
/// server on two cores.
pub const CONCURRENCY: usize = 24;

/// What one apply changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Objects that did not exist.
    pub created: Vec<ObjectId>,
    /// Objects whose live state differed from git and was changed (git changed them, or
    /// someone else did: drift).
    pub configured: Vec<ObjectId>,
    /// Objects already as git declares them.
    pub unchanged: usize,
}

/// Applies manifests to one cluster, resolving each kind once.
pub struct Applier {
    client: Client,
    resources: HashMap<(String, String), ApiResource>,
}

impl Applier {
    /// An applier with an empty kind cache.
    pub fn new(client: Client) -> Applier {
        Applier {
            client,
            resources: HashMap::new(),
        }
    }

    /// Resolves the kind of every id (by discovery, once per kind); problems name the file.
    pub async fn resolve(&mut self, ids: Vec<(&ObjectId, &str)>) -> Vec<Invalid> {
        let mut problems = Vec::new();
        for (id, file) in ids {
            let key = (id.api_version.clone(), id.kind.clone());
            if self.resources.contains_key(&key) {
                continue;
            }
            match resolve_kind(&self.client, id).await {
                Ok(resource) => {
                    self.resources.insert(key, resource);
                }
                Err(reason) => problems.push(Invalid {
                    file: file.to_owned(),
                    object: Some(id.short()),
                    reason,
                }),
            }
        }
        problems
    }

    fn api(&self, id: &ObjectId) -> Result<Api<DynamicObject>, String> {
        let key = (id.api_version.clone(), id.kind.clone());
        let resource = self
            .resources
            .get(&key)
            .ok_or_else(|| format!("kind {} {} was not resolved", id.api_version, id.kind))?;
        Ok(Api::namespaced_with(
            self.client.clone(),
            &id.namespace,
            resource,
        ))
    }

    /// Server-side dry-runs every manifest (call [`Applier::resolve`] first). Returns the
    /// live resourceVersion of each (`None`: it would be created), in manifest order, or
    /// every object the API server refused.
    pub async fn dry_run(
        &self,
        manifests: &[Manifest],
    ) -> Result<Vec<Option<String>>, Vec<Invalid>> {
        let params = PatchParams::apply(GIT_SYNC_MANAGER).force().dry_run();
        let results = self.patch_all(manifests, &params).await;
        collect(manifests, results)
    }

    /// The live metadata of each manifest's object (`None`: it does not exist), in manifest
    /// order, from one metadata-only list per kind: its resourceVersion (what a resync of an
    /// already validated commit needs instead of a dry-run per object) and git-sync's stamps.
    pub async fn live_objects(
        &self,
        manifests: &[Manifest],
    ) -> Result<Vec<Option<LiveObject>>, Vec<Invalid>> {
        let mut live = HashMap::<(String, String, String), HashMap<String, LiveObject>>::new();
        for manifest in manifests {
            let id = &manifest.id;
            let key = (
                id.api_version.clone(),
                id.kind.clone(),
                id.namespace.clone(),
            );
            if live.contains_key(&key) {
                continue;
            }
            let invalid = |reason: String| {
                vec![Invalid {
                    file: manifest.file.clone(),
                    object: Some(id.short()),
                    reason,
                }]
            };
            let list = self
                .api(id)
                .map_err(invalid)?
                .list_metadata(&ListParams::default())
                .await
                .map_err(|error| invalid(describe(&error)))?;
            let objects = list
                .items
                .into_iter()
                .filter_map(|object| {
                    let meta = object.metadata;
                    let annotation =
                        |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key)).cloned();
                    let live = LiveObject {
                        commit: annotation(SOURCE_COMMIT_ANNOTATION),
                        digest: annotation(SOURCE_DIGEST_ANNOTATION),
                        resource_version: meta.resource_version,
                    };
                    Some((meta.name?, live))
                })
                .collect();
            live.insert(key, objects);
        }
        Ok(manifests
            .iter()
            .map(|m| {
                let key = (
                    m.id.api_version.clone(),
                    m.id.kind.clone(),
                    m.id.namespace.clone(),
                );
                live.get(&key)
                    .and_then(|names| names.get(&m.id.name))
                    .cloned()
            })
            .collect())
    }

    /// Server-side applies every manifest; `live_versions` ([`Applier::dry_run`]'s result, or
    /// the resourceVersions of [`Applier::live_objects`]) tell created, changed and unchanged objects apart.
    pub async fn apply(
        &self,
        manifests: &[Manifest],
        live_versions: &[Option<String>],
    ) -> Result<ApplyReport, Vec<Invalid>> {
        let params = PatchParams::apply(GIT_SYNC_MANAGER).force();
        let results = self.patch_all(manifests, &params).await;
        let applied = collect(manifests, results)?;
        let mut report = ApplyReport::default();
        for ((manifest, before), after) in manifests.iter().zip(live_versions).zip(applied) {
            match before {
                None => report.created.push(manifest.id.clone()),
                Some(before) if Some(before) != after.as_ref() => {
                    report.configured.push(manifest.id.clone());
                }
                Some(_) => report.unchanged += 1,
            }
        }
        Ok(report)
    }

    /// Patches every manifest with at most [`CONCURRENCY`] requests in flight; returns
    /// `(index, result)` pairs in completion order.
    async fn patch_all(
        &self,
        manifests: &[Manifest],
        params: &PatchParams,
    ) -> Vec<(usize, Result<Option<String>, String>)> {
        // Owned futures: the stream then needs no borrow, which keeps the whole sync `Send`.
        let requests: Vec<_> = manifests
            .iter()
            .enumerate()
            .map(|(index, manifest)| {
                let api = self.api(&manifest.id);
                let name = manifest.id.name.clone();
                let object = manifest.object.clone();
                let params = params.clone();
                async move {
                    let result = match api {
                        Ok(api) => api
                            .patch(&name, &params, &Patch::Apply(&object))
                            .await
                            .map(|applied| {
                                applied
                                    .meta()
                                    .resource_version
                                    .clone()
                                    .filter(|v| !v.is_empty())
                            })
                            .map_err(|error| describe(&error)),
                        Err(reason) => Err(reason),
                    };
                    (index, result)
                }
            })
            .collect();
        stream::iter(requests)
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await
    }

    /// Deletes every object of `ids` (resolving kinds as needed); an object already gone
    /// counts as deleted. Returns the ids that could not be deleted, with why.
    pub async fn prune(&mut self, ids: &[ObjectId]) -> Vec<(ObjectId, String)> {
        let mut failed = Vec::new();
        for id in ids {
            // Cached after the first id of each kind.
            if let Some(problem) = self.resolve(vec![(id, "status.inventory")]).await.pop() {
                failed.push((id.clone(), problem.reason));
            }
        }
        let deletions: Vec<_> = ids
            .iter()
            .filter_map(|id| Some((id.clone(), self.api(id).ok()?)))
            .map(|(id, api)| async move {
                match api.delete(&id.name, &DeleteParams::background()).await {
                    Ok(_) => None,
                    Err(kube::Error::Api(status)) if status.code == 404 => None,
                    Err(error) => Some((id, describe(&error))),
                }
            })
            .collect();
        let deletions: Vec<(ObjectId, String)> = stream::iter(deletions)
            .buffer_unordered(CONCURRENCY)
            .filter_map(|failure| async move { failure })
            .collect()
            .await;
        failed.extend(deletions);
        failed
    }
}

/// Orders results by manifest and turns failures into problems naming file and object.
fn collect(
    manifests: &[Manifest],
    mut results: Vec<(usize, Result<Option<String>, String>)>,
) -> Result<Vec<Option<String>>, Vec<Invalid>> {
    results.sort_by_key(|(index, _)| *index);
    let mut versions = Vec::with_capacity(results.len());
    let mut problems = Vec::new();
    for (index, result) in results {
        match result {
            Ok(version) => versions.push(version),
            Err(reason) => problems.push(Invalid {
                file: manifests[index].file.clone(),
                object: Some(manifests[index].id.short()),
                reason,
            }),
        }
    }
    if problems.is_empty() {
        Ok(versions)
    } else {
        Err(problems)
    }
}

/// The API server's own message, which names the field (CEL rules, schema errors).
fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

async fn resolve_kind(client: &Client, id: &ObjectId) -> Result<ApiResource, String> {
    let (group, version) = id
        .api_version
        .split_once('/')
        .unwrap_or(("", id.api_version.as_str()));
    let gvk = GroupVersionKind::gvk(group, version, &id.kind);
    let (resource, capabilities) = pinned_kind(client, &gvk).await.map_err(|error| match error {
        kube::Error::Api(status) if status.code == 404 => format!(
            "the API server serves no kind {} in {}; install its CustomResourceDefinition first",
            id.kind, id.api_version
        ),
        kube::Error::Discovery(_) => format!(
            "the API server serves no kind {} in {}; install its CustomResourceDefinition first",
            id.kind, id.api_version
        ),
        other => format!("cannot look up kind {} in {}: {other}", id.kind, id.api_version),
    })?;
    if capabilities.scope != Scope::Namespaced {
        return Err(format!(
            "{} is cluster-scoped; git-sync applies only namespaced objects to its own namespace",
            id.kind
        ));
    }
    Ok(resource)
}
