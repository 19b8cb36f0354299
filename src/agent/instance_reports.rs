//! What each PostgreSQL instance of the node runs with, as its replica task last saw it —
//! the cluster's parameters, the restart it carried out, the generation it applied — kept for
//! the node's status reporter, which a change wakes (`configuration.rs` writes and sums them).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use super::postgres::EffectiveParameters;

/// What one instance runs with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct InstanceReport {
    /// The cluster's parameters it runs with (and those waiting for a restart).
    pub effective: Option<EffectiveParameters>,
    /// The cluster's parameters PostgreSQL refused: (name, reason).
    pub refused: Vec<(String, String)>,
    /// The plan whose restart it has carried out, or had no need to.
    pub restarted_for: Option<String>,
    /// The cluster generation whose parameters it has applied (or refused).
    pub generation: Option<i64>,
    /// Why its last start failed, while it does not run.
    pub failure: Option<String>,
    /// The application roles PostgreSQL refused on it as a primary: (role, reason).
    pub role_failures: Vec<(String, String)>,
}

/// The node's instance reports, by shard.
#[derive(Default)]
pub(super) struct InstanceReports {
    reports: Mutex<BTreeMap<String, InstanceReport>>,
    /// Wakes the node's status reporter when a report changed.
    pub changed: Notify,
}

impl InstanceReports {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, InstanceReport>> {
        self.reports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Updates the report of `shard`'s instance; wakes the reporter if it changed.
    pub fn publish(&self, shard: &str, update: impl FnOnce(&mut InstanceReport)) {
        let mut reports = self.lock();
        let report = reports.entry(shard.to_owned()).or_default();
        let before = report.clone();
        update(report);
        if *report != before {
            self.changed.notify_one();
        }
    }

    /// The plan whose restart `shard`'s instance has carried out.
    pub fn restarted_for(&self, shard: &str) -> Option<String> {
        self.lock().get(shard).and_then(|r| r.restarted_for.clone())
    }

    /// Drops the report of a replica that left the node.
    pub fn forget(&self, shard: &str) {
        if self.lock().remove(shard).is_some() {
            self.changed.notify_one();
        }
    }

    /// Every instance's report, now.
    pub fn snapshot(&self) -> BTreeMap<String, InstanceReport> {
        self.lock().clone()
    }
}
