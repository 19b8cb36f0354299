//! Per-object retry backoff for failed reconciles: the delay doubles with each consecutive
//! failure of the same object, from 500 ms up to one minute, with a per-object jitter so that
//! objects failing together do not retry together; a success forgets the object.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

/// The first retry delay.
pub const BASE: Duration = Duration::from_millis(500);
/// The longest retry delay.
pub const CAP: Duration = Duration::from_secs(60);

/// Consecutive failures per object.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// Records a failure of `object` and returns how long to wait before retrying it.
    pub fn failed(&self, object: &str) -> Duration {
        let mut failures = match self.failures.lock() {
            Ok(failures) => failures,
            Err(poisoned) => poisoned.into_inner(),
        };
        let count = failures.entry(object.to_string()).or_insert(0);
        *count = count.saturating_add(1);
        retry_after(*count, object)
    }

    /// Forgets `object`'s failures after a successful reconcile.
    pub fn succeeded(&self, object: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(object);
        }
    }
}

/// The delay after `failures` consecutive failures of `object`: `BASE · 2^(failures−1)`,
/// capped at `CAP`, plus up to 10% jitter derived from the object and the count.
pub fn retry_after(failures: u32, object: &str) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let delay = BASE.saturating_mul(1 << exponent).min(CAP);
    let mut hasher = DefaultHasher::new();
    (object, failures).hash(&mut hasher);
    let jitter_permille = hasher.finish() % 101;
    delay + delay.mul_f64(jitter_permille as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_then_cap_and_success_resets() {
        let backoff = Backoff::default();
        let delays: Vec<Duration> = (0..10).map(|_| backoff.failed("Plan/ns/p")).collect();
        for (i, delay) in delays.iter().enumerate() {
            let expected = BASE.saturating_mul(1 << i).min(CAP);
            assert!(
                *delay >= expected && *delay <= expected.mul_f64(1.1),
                "failure {}: {delay:?}",
                i + 1
            );
        }
        assert!(delays[9] <= CAP.mul_f64(1.1));
        backoff.succeeded("Plan/ns/p");
        assert!(backoff.failed("Plan/ns/p") <= BASE.mul_f64(1.1));
        // Another object's failures are its own.
        assert!(backoff.failed("Plan/ns/q") <= BASE.mul_f64(1.1));
    }

    #[test]
    fn objects_failing_together_retry_apart() {
        let delays: std::collections::BTreeSet<Duration> = (0..20)
            .map(|i| retry_after(3, &format!("Table/ns/t{i}")))
            .collect();
        assert!(delays.len() > 10, "jitter spreads retries: {delays:?}");
    }
}
