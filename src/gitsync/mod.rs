//! `shardplane git-sync`: applies git repositories to the cluster, transactionally. Each
//! `GitSync` object names a repository, branch and path; on its interval, on a verified
//! webhook and whenever its spec changes, the whole commit is validated (Shardplane's
//! checks, then a server-side dry-run of every object) before anything is applied, then
//! applied with server-side apply and pruned from the inventory in its status.
//!
//! Modules, in pipeline order: `source` (git2 fetch, reading the tree), `signature`,
//! `manifests` (parse and Shardplane's checks), `apply` (dry-run, apply, prune),
//! `inventory`, `outcome` (what a sync did), `status`, and `sync` (the pipeline); `webhook`
//! is the HTTP trigger.

pub mod apply;
pub mod error;
pub mod inventory;
pub mod manifests;
pub mod outcome;
pub mod signature;
pub mod source;
pub mod status;
pub mod sync;
pub mod webhook;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::Instrument;

pub use error::{Invalid, SyncError};
pub use outcome::SyncOutcome;
pub use sync::Syncer;

use crate::api::GitSync;

/// One GitSync to sync now.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// How the git-sync process runs.
pub struct Options {
    /// The namespaces whose GitSync objects are synced; empty means every namespace.
    pub namespaces: Vec<String>,
    /// Where the bare repositories are kept between syncs.
    pub checkout_dir: PathBuf,
    /// Where the push webhook listens, if anywhere.
    pub webhook: Option<TcpListener>,
}

/// Why the git-sync process stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The webhook server failed.
    #[error("the webhook server stopped: {0}")]
    Webhook(#[source] std::io::Error),
    /// Every trigger sender is gone (the webhook server stopped).
    #[error("the trigger channel closed")]
    TriggersClosed,
}

/// How often the scheduler looks for a due GitSync when no webhook arrives.
const TICK: Duration = Duration::from_millis(500);

/// Runs until an error: watches GitSync objects, syncs each on its interval, on a webhook
/// and when its spec changes. Syncs run one at a time, so two never race on one namespace.
pub async fn run(client: Client, options: Options) -> Result<(), RunError> {
    let (triggers, mut triggered) = mpsc::channel::<Target>(256);
    let stores = watch(&client, &options.namespaces);
    let webhook = options.webhook.map(|listener| {
        let app = webhook::router(client.clone(), options.namespaces.clone(), triggers.clone());
        tokio::spawn(async move { axum::serve(listener, app).await })
    });
    for store in &stores {
        // Only fails when the writer is dropped, i.e. the watch task ended: the loop below
        // then sees an empty store and the webhook still works.
        let _ = store.wait_until_ready().await;
    }
    let syncer = Syncer::new(client.clone(), options.checkout_dir);
    let mut schedule = Schedule::default();
    loop {
        let urgent = tokio::select! {
            target = triggered.recv() => Some(target.ok_or(RunError::TriggersClosed)?),
            _ = tokio::time::sleep(TICK) => None,
        };
        if let Some(handle) = &webhook
            && handle.is_finished()
        {
            return Err(RunError::Webhook(std::io::Error::other(
                "the webhook server task ended",
            )));
        }
        let now = Instant::now();
        let mut due: Vec<Target> = stores
            .iter()
            .flat_map(Store::state)
            .filter_map(|object| {
                let target = Target {
                    namespace: object.namespace().unwrap_or_default(),
                    name: object.name_any(),
                };
                (!object.spec.suspend && schedule.is_due(&target, &object, now)).then_some(target)
            })
            .collect();
        // A webhook for a GitSync the watch has not delivered yet is served all the same.
        if let Some(target) = urgent
            && !due.contains(&target)
        {
            due.push(target);
        }
        for target in due {
            // Read it fresh: the store may lag behind the status written by the last sync.
            let api = Api::<GitSync>::namespaced(client.clone(), &target.namespace);
            let object = match api.get_opt(&target.name).await {
                Ok(Some(object)) if !object.spec.suspend => object,
                Ok(_) => continue,
                Err(error) => {
                    tracing::warn!(%error, namespace = %target.namespace, name = %target.name, "cannot read GitSync");
                    continue;
                }
            };
            let span =
                tracing::info_span!("sync", namespace = %target.namespace, name = %target.name);
            match syncer.sync_and_report(&object).instrument(span).await {
                Ok(Ok(outcome)) => tracing::info!("{}", outcome.summary()),
                Ok(Err(error)) => tracing::warn!(reason = error.reason(), "{error}"),
                Err(error) => tracing::warn!("sync not reported: {error}"),
            }
            schedule.synced(target, &object, Instant::now());
        }
    }
}

/// One reflector per namespace (or one for all), each fed by its own watch task.
fn watch(client: &Client, namespaces: &[String]) -> Vec<Store<GitSync>> {
    let apis: Vec<Api<GitSync>> = if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    apis.into_iter()
        .map(|api| {
            let (reader, writer) = reflector::store();
            let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
                .default_backoff()
                .applied_objects();
            tokio::spawn(stream.for_each(|event| async move {
                if let Err(error) = event {
                    tracing::warn!(%error, "watching GitSync objects");
                }
            }));
            reader
        })
        .collect()
}

/// When each GitSync is next due, and the generation last synced.
#[derive(Default)]
struct Schedule {
    entries: HashMap<Target, (Instant, Option<i64>)>,
}

impl Schedule {
    /// Due when never synced, when its spec changed, or when its interval has passed.
    fn is_due(&self, target: &Target, object: &GitSync, now: Instant) -> bool {
        match self.entries.get(target) {
            None => true,
            Some((due, generation)) => *generation != object.metadata.generation || *due <= now,
        }
    }

    fn synced(&mut self, target: Target, object: &GitSync, now: Instant) {
        let interval =
            Duration::from_secs(u64::try_from(object.spec.interval_seconds).unwrap_or(60));
        // Up to 10% jitter, so many GitSyncs with one interval do not fetch in lockstep.
        let noise = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.subsec_nanos() % 1000);
        let jitter = interval.mul_f64(f64::from(noise) / 10_000.0);
        self.entries.insert(
            target,
            (now + interval + jitter, object.metadata.generation),
        );
    }
}
