//! Reporting a sync: `GitSync.status` (the applied commit, the inventory, `Ready` /
//! `Progressing` / `Degraded` conditions, written in one patch) and one Event per sync.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::error::SyncError;
use super::outcome::SyncOutcome;
use crate::api::{GitSync, GitSyncStatus};
use crate::decide::conditions::{self, Observation};
use crate::protocol::GIT_SYNC_MANAGER;

/// The status after a sync: on success the new commit and inventory; on failure the last
/// applied commit stays, and the conditions say what was refused and why.
pub fn next_status(
    object: &GitSync,
    result: &Result<SyncOutcome, SyncError>,
    now: Timestamp,
) -> GitSyncStatus {
    let mut status = object.status.clone().unwrap_or_default();
    let now = Time(now);
    let generation = object.metadata.generation;
    status.observed_generation = generation;
    status.last_sync_time = Some(now.clone());
    let conditions = &mut status.conditions;
    match result {
        Ok(outcome) => {
            status.last_applied_commit = Some(outcome.commit.clone());
            status.last_attempted_commit = Some(outcome.commit.clone());
            status.inventory = outcome.inventory.clone();
            status.object_count = Some(outcome.inventory.len() as i64);
            conditions::set(
                conditions,
                generation,
                Observation {
                    type_: "Ready",
                    holds: true,
                    reason: "Applied",
                    message: outcome.summary(),
                },
                now.0,
            );
            conditions::set(
                conditions,
                generation,
                Observation {
                    type_: "Degraded",
                    holds: false,
                    reason: "Applied",
                    message: String::new(),
                },
                now.0,
            );
        }
        Err(error) => {
            if let Some(commit) = error.commit() {
                status.last_attempted_commit = Some(commit.to_owned());
            }
            if let SyncError::Apply { inventory, .. } = error {
                status.object_count = Some(inventory.len() as i64);
                status.inventory = inventory.clone();
            }
            conditions::set(
                conditions,
                generation,
                Observation {
                    type_: "Ready",
                    holds: false,
                    reason: error.reason(),
                    message: error.to_string(),
                },
                now.0,
            );
            conditions::set(
                conditions,
                generation,
                Observation {
                    type_: "Degraded",
                    holds: true,
                    reason: error.reason(),
                    message: error.to_string(),
                },
                now.0,
            );
        }
    }
    conditions::set(
        conditions,
        generation,
        Observation {
            type_: "Progressing",
            holds: false,
            reason: "SyncFinished",
            message: String::new(),
        },
        now.0,
    );
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    status
}

/// Writes `status` to the GitSync in one merge patch (lists are replaced whole).
pub async fn write_status(
    api: &Api<GitSync>,
    name: &str,
    status: &GitSyncStatus,
) -> Result<(), SyncError> {
    api.patch_status(
        name,
        &PatchParams::apply(GIT_SYNC_MANAGER),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map(drop)
    .map_err(SyncError::kube(format!(
        "writing the status of GitSync {name}"
    )))
}

/// Records one Event on the GitSync for the sync that just finished.
pub async fn publish_event(
    recorder: &Recorder,
    object: &GitSync,
    result: &Result<SyncOutcome, SyncError>,
) -> Result<(), SyncError> {
    let (type_, reason, note) = match result {
        Ok(outcome) => (EventType::Normal, outcome.event_reason(), outcome.summary()),
        Err(error) => (EventType::Warning, error.reason(), error.to_string()),
    };
    // The Events API caps a note at 1 kB.
    let note: String = note.chars().take(1000).collect();
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Sync".to_owned(),
        secondary: None,
    };
    recorder
        .publish(&event, &object.object_ref(&()))
        .await
        .map_err(SyncError::kube(format!(
            "recording an Event for GitSync {}",
            object.name_any()
        )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::GitSyncSpec;
    use crate::api::{Condition, ConditionStatus};
    use crate::gitsync::apply::ApplyReport;

    fn object() -> GitSync {
        let spec: GitSyncSpec = serde_json::from_value(json!({"url": "file:///repo"})).unwrap();
        GitSync::new("gs", spec)
    }

    fn outcome(commit: &str) -> SyncOutcome {
        SyncOutcome {
            commit: commit.to_owned(),
            signed_by: None,
            applied: ApplyReport::default(),
            same_commit: false,
            pruned: Vec::new(),
            inventory: vec!["shardplane.io/v1alpha1/Shard/db/a".to_owned()],
        }
    }

    fn ready(status: &GitSyncStatus) -> &Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
    }

    #[test]
    fn a_refused_commit_keeps_the_applied_commit_and_inventory() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let mut object = object();
        object.status = Some(next_status(&object, &Ok(outcome("aaa")), t0));
        let refused = Err(SyncError::Signature {
            commit: "bbb".to_owned(),
            reason: "it is not signed".to_owned(),
        });
        let status = next_status(&object, &refused, t1);
        assert_eq!(status.last_applied_commit.as_deref(), Some("aaa"));
        assert_eq!(status.last_attempted_commit.as_deref(), Some("bbb"));
        assert_eq!(status.inventory.len(), 1);
        let ready = ready(&status);
        assert_eq!(ready.status, ConditionStatus::False);
        assert_eq!(ready.reason, "SignatureRefused");
        assert!(ready.message.contains("not signed"));
        assert_eq!(ready.last_transition_time, Time(t1));
    }

    #[test]
    fn an_unchanged_condition_keeps_its_transition_time() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let mut object = object();
        object.status = Some(next_status(&object, &Ok(outcome("aaa")), t0));
        let status = next_status(&object, &Ok(outcome("bbb")), t1);
        assert_eq!(status.last_applied_commit.as_deref(), Some("bbb"));
        assert_eq!(ready(&status).last_transition_time, Time(t0));
        assert_eq!(status.last_sync_time, Some(Time(t1)));
    }
}
