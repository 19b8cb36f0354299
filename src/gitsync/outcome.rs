//! What a successful sync did, and how it reads in the Ready condition and the Event. No
//! I/O here: `sync` produces it, `status` words it into the GitSync's status.

use super::apply::ApplyReport;
use super::inventory::ObjectId;

/// What a successful sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncOutcome {
    /// The commit applied.
    pub commit: String,
    /// The principal whose signature was verified, when verification is on.
    pub signed_by: Option<String>,
    /// What the apply changed.
    pub applied: ApplyReport,
    /// Whether the commit was already applied before this sync, so every change it made
    /// corrected drift.
    pub same_commit: bool,
    /// What was pruned.
    pub pruned: Vec<ObjectId>,
    /// The inventory now: every object applied from the commit.
    pub inventory: Vec<String>,
}

impl SyncOutcome {
    /// One line for the Ready condition and the Event.
    pub fn summary(&self) -> String {
        let short = &self.commit[..self.commit.len().min(12)];
        let mut text = format!(
            "applied commit {short}: {} created, {} configured, {} unchanged, {} pruned",
            self.applied.created.len(),
            self.applied.configured.len(),
            self.applied.unchanged,
            self.pruned.len()
        );
        if self.same_commit && !self.applied.configured.is_empty() {
            let drifted: Vec<String> = self
                .applied
                .configured
                .iter()
                .take(10)
                .map(ObjectId::short)
                .collect();
            text.push_str(&format!("; drift corrected on {}", drifted.join(", ")));
        }
        if let Some(signer) = &self.signed_by {
            text.push_str(&format!("; signed by {signer}"));
        }
        text
    }

    /// The Event reason: `DriftCorrected`, `Applied` (something changed) or `UpToDate`.
    pub fn event_reason(&self) -> &'static str {
        let changed = !self.applied.created.is_empty()
            || !self.applied.configured.is_empty()
            || !self.pruned.is_empty();
        match (changed, self.same_commit) {
            (true, true) => "DriftCorrected",
            (true, false) => "Applied",
            (false, _) => "UpToDate",
        }
    }
}
