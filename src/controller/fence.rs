//! The fence that keeps a deposed leader from acting: whether this replica may act now, and
//! at which leader epoch. The election (`leader.rs`) confirms it from the Lease as read back;
//! every write that matters checks it first.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

/// Whether this replica may act now, and at which leader epoch.
#[derive(Default)]
pub struct LeaderGuard {
    epoch: AtomicI64,
    valid_until: Mutex<Option<Instant>>,
}

/// A write was about to be made by a replica that is not (or no longer provably) the leader.
#[derive(Debug, thiserror::Error)]
#[error("this operator replica is not the leader (or cannot prove it still is); it does not act")]
pub struct NotLeader;

impl LeaderGuard {
    /// Ok while this replica provably leads; call before every write that matters.
    pub fn ensure(&self) -> Result<(), NotLeader> {
        let valid_until = *self.valid_until.lock().map_err(|_| NotLeader)?;
        match valid_until {
            Some(until) if Instant::now() < until => Ok(()),
            _ => Err(NotLeader),
        }
    }

    /// The leader epoch (the Lease's transition count) this replica leads at.
    pub fn epoch(&self) -> i64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Lets this replica act until `until`, at leader `epoch`.
    pub(super) fn confirm(&self, until: Instant, epoch: i64) {
        self.epoch.store(epoch, Ordering::Release);
        if let Ok(mut valid_until) = self.valid_until.lock() {
            *valid_until = Some(until);
        }
    }

    /// Stops this replica from acting.
    pub(super) fn revoke(&self) {
        if let Ok(mut valid_until) = self.valid_until.lock() {
            *valid_until = None;
        }
    }
}

#[cfg(test)]
impl LeaderGuard {
    /// Leads at `epoch` for an hour, without an election: for reconciler tests.
    pub(crate) fn lead_for_tests(&self, epoch: i64) {
        self.confirm(Instant::now() + Duration::from_secs(3600), epoch);
    }
}
