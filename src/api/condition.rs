//! The status condition shared by every kind: the Kubernetes convention (`type`, `status`,
//! `reason`, `message`, `lastTransitionTime`, `observedGeneration`), with a schema that
//! documents each field for `kubectl explain`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Whether a condition holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Shardplane cannot tell yet.
    Unknown,
}

/// One observation of an aspect of an object's state, such as `Ready`, `Progressing` or
/// `Degraded`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The aspect observed: `Ready`, `Progressing`, `Degraded`, or a kind-specific type.
    #[schemars(length(min = 1, max = 316))]
    #[serde(rename = "type")]
    pub type_: String,
    /// Whether the condition holds: True, False or Unknown.
    pub status: ConditionStatus,
    /// A CamelCase word saying why, for programs and alerts (for example `QuorumLost`).
    #[schemars(length(max = 1024))]
    pub reason: String,
    /// What happened and what a user can do about it, in a sentence.
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub message: String,
    /// When the status last changed (not when the condition was last written).
    pub last_transition_time: Time,
    /// The `metadata.generation` the condition was computed from; older than the object's
    /// generation means the observation is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
