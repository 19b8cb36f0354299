//! What a node knows of its own liveness — its newest proof from the control plane, its
//! newest from its peers (`failsafe.rs`) — and the promise it gave peers it confirmed.
//! Shared by the liveness loop, the failsafe endpoint and the replica tasks; it decides
//! nothing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// This node's liveness proofs and failsafe promise.
#[derive(Default)]
pub(crate) struct LivenessRecord {
    times: Mutex<Times>,
}

#[derive(Default)]
struct Times {
    /// The newest proof of liveness from the control plane (heartbeat or Lease).
    control_plane: Option<Instant>,
    /// The send time of the newest round every peer confirmed.
    peers: Option<Instant>,
    /// When this node last confirmed a peer.
    confirmed: Option<Instant>,
}

impl LivenessRecord {
    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.times.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the newest proof of liveness from the control plane.
    pub fn control_plane_proved(&self, at: Option<Instant>) {
        self.times().control_plane = at;
    }

    /// Records the send time of a round every peer confirmed.
    pub fn peers_proved(&self, sent: Instant) {
        let mut times = self.times();
        times.peers = times.peers.max(Some(sent));
    }

    /// Records that this node confirmed a peer now.
    pub fn confirmed_now(&self) {
        self.times().confirmed = Some(Instant::now());
    }

    /// The send time of the newest round every peer confirmed.
    pub fn peers_proof(&self) -> Option<Instant> {
        self.times().peers
    }

    /// Whether the control plane has not confirmed this node's liveness for `quiet`.
    pub fn control_plane_quiet(&self, quiet: Duration) -> bool {
        self.times()
            .control_plane
            .is_none_or(|at| at.elapsed() >= quiet)
    }

    /// Until when this node may promote nothing: `wait` after its last confirmation.
    pub fn promotion_barred_until(&self, wait: Duration) -> Option<Instant> {
        self.times()
            .confirmed
            .map(|at| at + wait)
            .filter(|until| *until > Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confirmation_bars_promotion_for_the_promise_and_no_longer() {
        let failsafe = LivenessRecord::default();
        let promise = Duration::from_millis(300);
        assert_eq!(failsafe.promotion_barred_until(promise), None);
        failsafe.times().confirmed = Some(Instant::now());
        let until = failsafe.promotion_barred_until(promise).unwrap();
        assert!(until > Instant::now() + Duration::from_millis(200));
        failsafe.times().confirmed = Some(Instant::now() - Duration::from_millis(301));
        assert_eq!(failsafe.promotion_barred_until(promise), None);
    }

    #[test]
    fn the_control_plane_is_quiet_only_once_its_newest_proof_is_old_enough() {
        let failsafe = LivenessRecord::default();
        let quiet = Duration::from_millis(750);
        assert!(failsafe.control_plane_quiet(quiet), "never proven");
        failsafe.control_plane_proved(Some(Instant::now() - Duration::from_millis(500)));
        assert!(!failsafe.control_plane_quiet(quiet));
        failsafe.control_plane_proved(Some(Instant::now() - Duration::from_millis(800)));
        assert!(failsafe.control_plane_quiet(quiet));
    }
}
