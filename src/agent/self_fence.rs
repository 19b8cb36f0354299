//! Self-fencing: while this node cannot prove it is live, every running primary of the node
//! refuses writes. The keeper here runs beside the replica tasks, on the liveness thread, and
//! touches only local PostgreSQL: it never waits on a network call, so a partition that makes
//! API calls hang (a replica task stuck in a report, a schema read, a split's report) cannot
//! hold the fence up. Lifting a fence is the replica task's (`replicas.rs`), and only under
//! the replica's fence lock with liveness checked again, so a fence set here is never undone
//! by a task that decided to serve before liveness was lost.

use std::collections::BTreeSet;
use std::time::Duration;

use super::context::NodeContext;
use super::postgres::{Instance, InstanceSpec};
use super::record::{ReplicaRecord, replica_dir, replica_name};

/// How often, while the node is not live, the replica folders are looked at again for a
/// primary not fenced yet (one being started or promoted by its task).
const RESCAN: Duration = Duration::from_millis(50);

/// Runs for the life of the agent: each time the node stops being live, fences every running
/// primary of the node at once, and keeps fencing any that starts serving until the node is
/// live again.
pub(crate) async fn keep(ctx: &NodeContext) {
    let mut live = ctx.live.clone();
    loop {
        if live.wait_for(|live| !*live).await.is_err() {
            return;
        }
        // Primaries fenced since liveness was lost, by folder and port.
        let mut fenced = BTreeSet::new();
        while !*live.borrow_and_update() {
            fence_primaries(ctx, &mut fenced).await;
            tokio::select! {
                _ = live.changed() => {}
                () = tokio::time::sleep(RESCAN) => {}
            }
        }
    }
}

/// Fences every primary in the node's replica folders that is not in `fenced` yet and that
/// runs (one that does not run refuses the connection at once and is tried again at the next
/// look); adds those fenced.
async fn fence_primaries(ctx: &NodeContext, fenced: &mut BTreeSet<(String, u16)>) {
    let Ok(entries) = std::fs::read_dir(replica_dir(&ctx.data_dir, "")) else {
        return;
    };
    let mut primaries = Vec::new();
    for entry in entries.flatten() {
        let shard = entry.file_name().to_string_lossy().into_owned();
        let Ok(Some(record)) = ReplicaRecord::load(&entry.path()) else {
            continue;
        };
        if fenced.contains(&(shard.clone(), record.port)) {
            continue;
        }
        let spec = InstanceSpec {
            name: replica_name(&ctx.node),
            dir: entry.path(),
            port: record.port,
            settings: ctx.settings.clone(),
        };
        let instance = Instance::handle(&ctx.toolchain, &spec, &ctx.credentials);
        if !instance.data_dir().join("standby.signal").exists() {
            primaries.push((shard, record.port, instance));
        }
    }
    let done = futures::future::join_all(
        primaries
            .iter()
            .map(|(shard, _, instance)| fence(ctx, shard, instance)),
    )
    .await;
    for ((shard, port, _), done) in primaries.into_iter().zip(done) {
        if done {
            fenced.insert((shard, port));
        }
    }
}

/// Fences `instance`, `shard`'s primary, unless it is fenced already; whether it is fenced now.
async fn fence(ctx: &NodeContext, shard: &str, instance: &Instance) -> bool {
    let lock = ctx.fence_locks.of(shard);
    let _fencing = lock.lock().await;
    if *ctx.live.borrow() {
        // Live again: the replica's task decides.
        return false;
    }
    let session = match instance.connect().await {
        Ok(session) => session,
        Err(error) => {
            tracing::trace!(%shard, %error, "primary not reachable to fence (not running)");
            return false;
        }
    };
    match instance.is_write_fenced_on(&session).await {
        Ok(true) => return true,
        Ok(false) => {}
        Err(error) => {
            tracing::debug!(%shard, %error, "the write fence could not be read");
            return false;
        }
    }
    match instance.fence_writes_on(&session, &[]).await {
        Ok(()) => {
            tracing::warn!(%shard, "primary fenced: this node cannot prove it is live");
            true
        }
        Err(error) => {
            tracing::warn!(%shard, %error, "primary not fenced yet; trying again");
            false
        }
    }
}
