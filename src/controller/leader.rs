//! Leader election of operator replicas (kube-lease-manager over a coordination Lease), and
//! what confirms the fence (`fence.rs`) that keeps a deposed leader from acting: a leader
//! may act only until the moment
//! its own last confirmed renewal expires, as read back from the Lease itself. A replica cut
//! off from the API server therefore stops acting before another could take the Lease, even
//! if the election library has not noticed. The Lease's `leaseTransitions` is the leader
//! epoch that plans record as their executor.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::{oneshot, watch};

use super::context::Context;
use crate::protocol::OPERATOR_LEASE;

/// This replica's part in the election; dropping it stops campaigning and confirming.
pub struct Leadership {
    elected: watch::Receiver<bool>,
    ctx: Arc<Context>,
    /// Dropped with the Leadership: the election thread then stops, and its runtime with the
    /// Lease manager and the confirm loop.
    _stop: oneshot::Sender<()>,
}

/// Why this replica cannot take part in the election.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// The election's thread or runtime could not be started.
    #[error("cannot start the leader election's thread: {0}")]
    Thread(std::io::Error),
    /// The election's own API client could not be made from `OperatorConfig::api`.
    #[error("cannot make the leader election's API client: {0}")]
    Client(kube::Error),
    /// The Lease manager refused to start.
    #[error(transparent)]
    Lease(#[from] LeaseManagerError),
}

/// Joins the election and starts confirming leadership from the Lease, on a thread of its
/// own with its own runtime and — when `OperatorConfig::api` is set — its own API client,
/// so that reconcilers busy deserialising large lists, or queued behind each other's
/// requests, never delay a renewal or its confirmation (BENCHMARKS.md, "Operator at scale",
/// runs E and F: what this rules out, and the API server's own latency, which it cannot).
pub async fn campaign(client: Client, ctx: Arc<Context>) -> Result<Leadership, ElectionError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ElectionError::Thread)?;
    let (started_tx, started) = oneshot::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let election_ctx = ctx.clone();
    std::thread::Builder::new()
        .name("election".into())
        .spawn(move || {
            runtime.block_on(async move {
                let started = start(client, &election_ctx).await;
                let ok = started.is_ok();
                if started_tx.send(started).is_ok() && ok {
                    // Until the Leadership is dropped; the runtime's end then aborts the
                    // Lease manager and the confirm loop.
                    let _ = stopped.await;
                }
            });
        })
        .map_err(ElectionError::Thread)?;
    let elected = started
        .await
        .map_err(|_| ElectionError::Thread(std::io::Error::other("the election thread ended")))??;
    Ok(Leadership {
        elected,
        ctx,
        _stop: stop,
    })
}

/// On the election's thread: the Lease manager and the loop that confirms leadership from
/// the Lease.
async fn start(shared: Client, ctx: &Arc<Context>) -> Result<watch::Receiver<bool>, ElectionError> {
    let config = &ctx.config;
    // Renew half-way through the Lease, so the fence (valid until renewal + duration − 1 s)
    // sees each renewal before it runs out; renewing only 1 s before expiry left the leader
    // unable to act for a moment every cycle (seen as detection and failover delays).
    let duration = config.lease_duration.as_secs().max(3);
    let client = match &config.api {
        Some(api) => election_client(api.clone(), Duration::from_secs(duration))?,
        None => shared,
    };
    let manager = LeaseManagerBuilder::new(client.clone(), OPERATOR_LEASE)
        .with_namespace(config.lease_namespace.clone())
        .with_identity(config.identity.clone())
        .with_duration(duration)
        .with_grace(duration / 2)
        .build()
        .await?;
    // The manager's task runs on this runtime and ends with it.
    let (elected, _manager_task) = manager.watch().await;
    let leases: Api<Lease> = Api::namespaced(client, &config.lease_namespace);
    // The fence's margin must stay below the renewal's, or the fence lapses before each
    // renewal is seen.
    let safety = Duration::from_secs(duration / 2).min(Duration::from_secs(2)) / 2;
    tokio::spawn(confirm_loop(leases, ctx.clone(), elected.clone(), safety));
    Ok(elected)
}

/// The election's client, bound to the election's runtime: it gives up on a connection
/// after a second and on an answer after one Lease duration — an answer later than that
/// could not keep the Lease anyway, and a call hung on a dropped link must not hold the
/// next renewal.
fn election_client(mut api: kube::Config, lease: Duration) -> Result<Client, ElectionError> {
    api.connect_timeout = Some(Duration::from_secs(1));
    api.read_timeout = Some(lease);
    api.reset_reader_on_write = true;
    Client::try_from(api).map_err(ElectionError::Client)
}

impl Leadership {
    /// Returns once this replica leads and has confirmed it from the Lease.
    pub async fn became_leader(&mut self) {
        loop {
            if *self.elected.borrow() && self.ctx.leader.ensure().is_ok() {
                self.ctx.metrics.leader.set(1);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Returns once this replica lost leadership or can no longer prove it has it.
    pub async fn lost_leadership(&mut self) {
        loop {
            if !*self.elected.borrow() || self.ctx.leader.ensure().is_err() {
                self.ctx.metrics.leader.set(0);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Reads the Lease back every few hundred milliseconds while elected: the guard is valid
/// until the holder's last renewal plus the Lease duration, minus a safety margin (half the
/// renewal margin, at most 1 s) for clock skew and the time a write can take once started.
async fn confirm_loop(
    leases: Api<Lease>,
    ctx: Arc<Context>,
    elected: watch::Receiver<bool>,
    safety: Duration,
) {
    loop {
        if *elected.borrow() {
            match leases.get(OPERATOR_LEASE).await {
                Ok(lease) => match held_until(&lease, &ctx.config.identity) {
                    Some((expires, epoch)) => {
                        let remaining = expires
                            .duration_since(SystemTime::now())
                            .unwrap_or_default()
                            .saturating_sub(safety);
                        ctx.leader.confirm(Instant::now() + remaining, epoch);
                    }
                    None => ctx.leader.revoke(),
                },
                Err(error) => tracing::warn!(%error, "cannot read the leader Lease"),
            }
        } else {
            ctx.leader.revoke();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// When `identity`'s hold on `lease` expires, and the epoch, if `identity` holds it.
fn held_until(lease: &Lease, identity: &str) -> Option<(SystemTime, i64)> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renewed = spec.renew_time.as_ref()?.0;
    let duration = Duration::from_secs(spec.lease_duration_seconds?.max(0) as u64);
    let renewed =
        SystemTime::UNIX_EPOCH + Duration::from_millis(renewed.as_millisecond().max(0) as u64);
    Some((
        renewed + duration,
        i64::from(spec.lease_transitions.unwrap_or(0)),
    ))
}
