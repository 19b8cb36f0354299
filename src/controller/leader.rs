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
use tokio::sync::watch;

use super::context::Context;
use crate::protocol::OPERATOR_LEASE;

/// This replica's part in the election; dropping it stops campaigning and confirming.
pub struct Leadership {
    elected: watch::Receiver<bool>,
    ctx: Arc<Context>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Leadership {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Joins the election and starts confirming leadership from the Lease.
pub async fn campaign(client: Client, ctx: Arc<Context>) -> Result<Leadership, LeaseManagerError> {
    let config = &ctx.config;
    // Renew half-way through the Lease, so the fence (valid until renewal + duration − 1 s)
    // sees each renewal before it runs out; renewing only 1 s before expiry left the leader
    // unable to act for a moment every cycle (seen as detection and failover delays).
    let duration = config.lease_duration.as_secs().max(3);
    let manager = LeaseManagerBuilder::new(client.clone(), OPERATOR_LEASE)
        .with_namespace(config.lease_namespace.clone())
        .with_identity(config.identity.clone())
        .with_duration(duration)
        .with_grace(duration / 2)
        .build()
        .await?;
    let (elected, manager_task) = manager.watch().await;
    let leases: Api<Lease> = Api::namespaced(client, &config.lease_namespace);
    // The fence's margin must stay below the renewal's, or the fence lapses before each
    // renewal is seen.
    let safety = Duration::from_secs(duration / 2).min(Duration::from_secs(2)) / 2;
    let confirm_task = tokio::spawn(confirm_loop(leases, ctx.clone(), elected.clone(), safety));
    Ok(Leadership {
        elected,
        ctx,
        tasks: vec![manager_task.abort_handle(), confirm_task.abort_handle()],
    })
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
