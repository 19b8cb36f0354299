//! The operator (`shardplane operator`): reconcilers for every kind and the plan executor,
//! run only by the elected leader — the imperative shell around `crate::decide`. Each
//! reconcile observes state, asks `crate::decide` for a decision, carries it out (a `Plan`
//! persisted, one step's effect applied, recording progress in status before acting, so a
//! killed operator resumes from what the API server holds), and writes status.
//!
//! Node liveness (agents heartbeat the leader over HTTP, a per-node Lease is the durable
//! fallback), metrics and health endpoints live here too. No decision is made here that the
//! planner could make; no I/O happens in the planner.

mod backoff;
mod caches;
mod certificates;
mod cluster;
mod config;
mod context;
mod effects;
mod error;
mod executor;
mod fence;
#[cfg(test)]
mod fixtures;
mod heartbeats;
mod leader;
mod liveness;
mod metrics;
mod schema;
mod schema_rollout;
mod server;
mod table;
mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::task::JoinSet;

use caches::Caches;
pub use config::{OperatorConfig, WebhookServing};
pub use context::Context;
pub use fence::LeaderGuard;
pub use heartbeats::Liveness;
pub use schema::{REFUSED_REASON, SCHEMA_ACCEPTED};
pub use webhook::{TABLE_WEBHOOK_PATH, WebhookError};

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The metrics, health and heartbeat server could not listen.
    #[error("cannot listen on {addr} for metrics, health and heartbeats: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Leader election failed in a way it cannot retry.
    #[error("leader election failed: {0}")]
    Leader(#[from] leader::ElectionError),
    /// The admission webhook cannot be served.
    #[error(transparent)]
    Webhook(#[from] WebhookError),
}

/// Runs the operator until the process is stopped: serves metrics, health and heartbeats,
/// takes part in leader election, and runs the reconcilers while it leads.
pub async fn run(client: Client, config: OperatorConfig) -> Result<(), OperatorError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| OperatorError::Listen {
            addr: config.listen,
            source,
        })?;
    let ctx = Arc::new(Context::new(client.clone(), config));
    tracing::info!(addr = %ctx.config.listen, "serving metrics, health and heartbeats");
    // Every task lives in this set, so aborting `run` (a crash, in tests) stops them all.
    let mut server = JoinSet::new();
    server.spawn(server::serve(listener, ctx.clone()));
    if let Some(serving) = &ctx.config.webhook {
        let tls = webhook::tls_config(serving)?;
        let listener = webhook::bind(serving).await?;
        tracing::info!(addr = %serving.listen, "serving the admission webhook");
        server.spawn(webhook::serve(listener, tls));
    }

    // Started before the campaign and kept across leadership terms: a standby takes over on
    // warm caches, and a lost term does not list every object again.
    let caches = Caches::start(&ctx).await;
    ctx.liveness.use_keys(caches.tls_secrets.clone());
    tracing::info!("watch caches filled");
    let mut leadership = leader::campaign(client, ctx.clone()).await?;
    loop {
        leadership.became_leader().await;
        tracing::info!(identity = %ctx.config.identity, epoch = ctx.leader.epoch(), "leading");
        let mut reconcilers = spawn_reconcilers(&ctx, &caches);
        tokio::select! {
            _ = leadership.lost_leadership() => {
                tracing::warn!("lost leadership; stopping every reconciler");
            }
            Some(done) = reconcilers.join_next() => {
                tracing::error!(?done, "a reconciler stopped; restarting them all");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        reconcilers.shutdown().await;
        if server.is_empty() || server.try_join_next().is_some() {
            break;
        }
    }
    Ok(())
}

/// The reconcilers one leader runs, in a set that is aborted as a whole when it stops leading.
fn spawn_reconcilers(ctx: &Arc<Context>, caches: &Caches) -> JoinSet<()> {
    let mut set = JoinSet::new();
    set.spawn(liveness::run(ctx.clone(), caches.clone()));
    set.spawn(certificates::run(ctx.clone(), caches.clone()));
    set.spawn(cluster::run(ctx.clone(), caches.clone()));
    set.spawn(executor::run(ctx.clone(), caches.clone()));
    set.spawn(schema::run(ctx.clone(), caches.clone()));
    set.spawn(schema_rollout::run(ctx.clone(), caches.clone()));
    set.spawn(table::run(ctx.clone(), caches.clone()));
    set
}
