//! Status conditions, the one setter of every kind's `conditions`: set one by type, keeping
//! `lastTransitionTime` when the status did not change, and compare condition lists ignoring
//! timestamps so that an unchanged world causes no status write. The time is given.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::{Condition, ConditionStatus};

/// A condition to set: type, whether it holds, a CamelCase reason and a sentence.
pub struct Observation<'a> {
    /// `Ready`, `Progressing`, `Degraded`, …
    pub type_: &'a str,
    /// Whether it holds.
    pub holds: bool,
    /// Why, as a CamelCase word.
    pub reason: &'a str,
    /// What happened and what to do, in a sentence.
    pub message: String,
}

/// Sets `observation` in `conditions` for `generation`, keeping the transition time when the
/// status is unchanged; `now` is the transition time otherwise.
pub fn set(
    conditions: &mut Vec<Condition>,
    generation: Option<i64>,
    observation: Observation,
    now: Timestamp,
) {
    let status = if observation.holds {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    };
    let existing = conditions.iter_mut().find(|c| c.type_ == observation.type_);
    match existing {
        Some(condition) => {
            if condition.status != status {
                condition.last_transition_time = Time(now);
            }
            condition.status = status;
            condition.reason = observation.reason.into();
            condition.message = observation.message;
            condition.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: observation.type_.into(),
            status,
            reason: observation.reason.into(),
            message: observation.message,
            last_transition_time: Time(now),
            observed_generation: generation,
        }),
    }
}

/// Whether two condition lists say the same thing, ignoring transition times.
pub fn same(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().all(|x| {
            b.iter().any(|y| {
                x.type_ == y.type_
                    && x.status == y.status
                    && x.reason == y.reason
                    && x.message == y.message
                    && x.observed_generation == y.observed_generation
            })
        })
}
