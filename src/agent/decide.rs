//! What one replica on this node should do next, as a pure function of what the operator
//! wants (`Shard.status.desiredReplicas`, `primary`), what the other agents report, whether
//! this node can prove it is live, and what runs locally. No I/O: `replicas.rs` carries the
//! answer out. The rules that keep one writer per shard live here:
//!
//! - an instance that was primary at an older epoch and is now wanted as a secondary is
//!   never writable again: it is fenced, then rewound to follow the new primary;
//! - a standby is promoted only once the previous primary is gone (its node Offline, its
//!   report Down or withdrawn) or has fenced itself;
//! - a primary that cannot prove the node is live is fenced, and is started or unfenced only
//!   while the node is live;
//! - an empty primary is initialised only for a shard no other node has reported data for.

use std::collections::BTreeSet;

use crate::api::database_cluster::{Durability, DurabilityMode};
use crate::api::shard::{ObservedReplica, PrimaryRef, ReplicaRole, ReplicaState};

use super::postgres::SyncQuorum;

/// What the agent knows about one shard replica's world.
#[derive(Clone, Debug)]
pub struct ReplicaView<'a> {
    /// This node.
    pub node: &'a str,
    /// The role the operator wants here; `None` when the replica is not wanted (or the shard
    /// is gone).
    pub desired: Option<ReplicaRole>,
    /// The shard's primary and epoch.
    pub primary: Option<&'a PrimaryRef>,
    /// Every agent's report (this node's included).
    pub reports: &'a [ObservedReplica],
    /// Nodes the operator declared Offline (or that left the cluster).
    pub offline_nodes: &'a BTreeSet<String>,
    /// Whether this node proved its liveness recently enough (see `node.rs`).
    pub live: bool,
}

/// The replica's instance on this node, as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalReplica {
    /// No instance.
    Absent,
    /// A standby streaming (or configured to stream) from `upstream`.
    Standby {
        /// The endpoint it follows, as recorded.
        upstream: Option<String>,
        /// Whether its postmaster runs.
        running: bool,
    },
    /// A primary (not in recovery) that last served at `epoch`.
    Primary {
        /// The epoch it was primary at.
        epoch: i64,
        /// Whether its postmaster runs.
        running: bool,
    },
}

/// The next thing to do for a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaAction {
    /// Nothing can be done yet; why.
    Wait(String),
    /// Stop the instance and remove it.
    Remove,
    /// `initdb` a new primary at `epoch` with the table's schema.
    CreatePrimary {
        /// The primary's epoch.
        epoch: i64,
    },
    /// `pg_basebackup` a new standby of `upstream`.
    CreateStandby {
        /// `host:port` of the primary.
        upstream: String,
        /// The primary's epoch.
        epoch: i64,
    },
    /// Start a stopped standby.
    StartStandby,
    /// Re-point a running standby at a new primary.
    Follow {
        /// `host:port` of the new primary.
        upstream: String,
        /// Its epoch.
        epoch: i64,
    },
    /// Promote the standby at `epoch`; first let it catch up with `catch_up_with`, a previous
    /// primary that fenced itself (a planned handover).
    Promote {
        /// The new epoch.
        epoch: i64,
        /// `host:port` of a fenced previous primary still running.
        catch_up_with: Option<String>,
    },
    /// The primary is wanted again at a higher epoch and no other primary served between:
    /// record the new epoch.
    AdoptEpoch {
        /// The new epoch.
        epoch: i64,
    },
    /// Fence the former primary (if it runs), rewind it and make it follow `upstream`.
    Demote {
        /// `host:port` of the new primary.
        upstream: String,
        /// The new primary's epoch.
        epoch: i64,
    },
    /// Fence writes of a running primary (never start it); why.
    Fence(String),
    /// Serve as primary at `epoch`: start if stopped, unfence, keep quorum and slots current.
    ServePrimary {
        /// The epoch.
        epoch: i64,
    },
    /// Keep streaming.
    ServeStandby,
    /// Wanted as primary while the previous primary still serves (its fence is coming): keep
    /// a replication slot for every wanted standby, so that they can stream from this standby
    /// before its promotion and acknowledge its first commits at once; why it waits.
    PrepareToLead(String),
}

/// The next action for one replica.
pub fn decide(view: &ReplicaView<'_>, local: &LocalReplica) -> ReplicaAction {
    match view.desired {
        None => ReplicaAction::Remove,
        Some(ReplicaRole::Primary) => decide_primary(view, local),
        Some(ReplicaRole::Secondary | ReplicaRole::Witness) => decide_secondary(view, local),
    }
}

fn decide_primary(view: &ReplicaView<'_>, local: &LocalReplica) -> ReplicaAction {
    let Some(primary) = view.primary.filter(|p| p.node == view.node) else {
        return ReplicaAction::Wait(
            "wanted as primary, but status.primary names another node".into(),
        );
    };
    let epoch = primary.epoch;
    match local {
        LocalReplica::Absent if !view.live => {
            ReplicaAction::Wait("not creating a primary before this node proves it is live".into())
        }
        LocalReplica::Absent => match view.reports.iter().find(|r| r.node != view.node) {
            Some(other) => ReplicaAction::Wait(format!(
                "refusing to initialise an empty primary: node {} holds a replica of this shard; \
                     add this node as a secondary first",
                other.node
            )),
            None => ReplicaAction::CreatePrimary { epoch },
        },
        LocalReplica::Standby { .. } if !view.live => {
            ReplicaAction::Wait("not promoting before this node proves it is live".into())
        }
        LocalReplica::Standby { running: false, .. } => ReplicaAction::StartStandby,
        LocalReplica::Standby { .. } => {
            let previous = view.reports.iter().find(|r| {
                r.node != view.node
                    && r.role == ReplicaRole::Primary
                    && r.epoch.unwrap_or(0) < epoch
                    && !view.offline_nodes.contains(&r.node)
            });
            match previous {
                Some(p) if p.state == ReplicaState::Fenced => ReplicaAction::Promote {
                    epoch,
                    catch_up_with: p.endpoint.clone(),
                },
                Some(p) if p.state != ReplicaState::Down => ReplicaAction::PrepareToLead(format!(
                    "waiting for the previous primary on {} to fence its writes",
                    p.node
                )),
                _ => ReplicaAction::Promote {
                    epoch,
                    catch_up_with: None,
                },
            }
        }
        LocalReplica::Primary { epoch: mine, .. } if *mine == epoch => {
            if view.live && !view.offline_nodes.contains(view.node) {
                ReplicaAction::ServePrimary { epoch }
            } else {
                ReplicaAction::Fence("this node cannot prove it is live".into())
            }
        }
        LocalReplica::Primary { epoch: mine, .. } if *mine < epoch => {
            let between = view.reports.iter().find(|r| {
                r.node != view.node
                    && r.role == ReplicaRole::Primary
                    && r.epoch.is_some_and(|e| e > *mine && e < epoch)
            });
            match between {
                Some(other) => ReplicaAction::Fence(format!(
                    "this primary (epoch {mine}) missed the primary on {} at epoch {}; its data may \
                     have diverged: move the primary elsewhere or remove this replica",
                    other.node,
                    other.epoch.unwrap_or_default()
                )),
                None => ReplicaAction::AdoptEpoch { epoch },
            }
        }
        LocalReplica::Primary { epoch: mine, .. } => ReplicaAction::Fence(format!(
            "this primary served at epoch {mine}, above the shard's epoch {epoch}"
        )),
    }
}

fn decide_secondary(view: &ReplicaView<'_>, local: &LocalReplica) -> ReplicaAction {
    let primary = view.primary.filter(|p| p.node != view.node);
    // Follow a primary only once its agent reports it serving at the shard's epoch: an older
    // report may name a dead or deposed instance.
    let upstream = primary.and_then(|p| {
        view.reports
            .iter()
            .find(|r| {
                r.node == p.node && r.role == ReplicaRole::Primary && r.epoch == Some(p.epoch)
            })
            .and_then(|r| r.endpoint.clone())
            .map(|endpoint| (endpoint, p.epoch))
    });
    // A running standby moves to the standby about to be promoted as soon as that one is
    // named, while it still streams in sync (cascading replication): at its promotion this
    // standby already streams from it, follows its new timeline on the same connection, and
    // acknowledges its first commits at once — instead of being re-pointed only after the
    // promotion, while the new primary's commits wait for a quorum. Nothing is promoted or
    // written here: the promotion keeps its own rules.
    let upstream = upstream.or_else(|| match local {
        LocalReplica::Standby { running: true, .. } => primary.and_then(|p| {
            view.reports
                .iter()
                .find(|r| {
                    r.node == p.node
                        && r.role == ReplicaRole::Secondary
                        && r.state == ReplicaState::InSync
                        && r.received_lsn.is_none()
                        && !view.offline_nodes.contains(&r.node)
                })
                .and_then(|r| r.endpoint.clone())
                .map(|endpoint| (endpoint, p.epoch))
        }),
        _ => None,
    });
    match (local, upstream) {
        (LocalReplica::Absent, Some((upstream, epoch))) => {
            ReplicaAction::CreateStandby { upstream, epoch }
        }
        (LocalReplica::Absent, None) => {
            ReplicaAction::Wait("no serving primary to copy from yet".into())
        }
        (LocalReplica::Standby { running: false, .. }, _) => ReplicaAction::StartStandby,
        (
            LocalReplica::Standby {
                upstream: current, ..
            },
            Some((upstream, epoch)),
        ) if current.as_ref() != Some(&upstream) => ReplicaAction::Follow { upstream, epoch },
        (LocalReplica::Standby { .. }, _) => ReplicaAction::ServeStandby,
        (LocalReplica::Primary { .. }, Some((upstream, epoch))) => {
            ReplicaAction::Demote { upstream, epoch }
        }
        (LocalReplica::Primary { .. }, None) => ReplicaAction::Fence(
            "a former primary, wanted as a secondary: fenced until the new primary serves".into(),
        ),
    }
}

/// Lag changes smaller than this many bytes do not make a report due on their own: a busy
/// shard's standbys would otherwise rewrite the Shard's status on every commit.
pub const LAG_REPORT_STEP: i64 = 1024 * 1024;

/// Whether a replica's report differs from the last one written in anything the operator
/// acts on, so it is written now rather than at the next periodic refresh: the role, state,
/// endpoint and epoch, the lag in steps of [`LAG_REPORT_STEP`], whether a standby's stream
/// has broken, and then, for an in-sync standby, the end of the WAL it holds. That position
/// is what failover waits for (it promotes only once every in-sync standby has reported
/// it), so it must not wait for a refresh. A standby out of sync may still be replaying WAL
/// it holds locally: its position moves with every look and the operator does not use it,
/// so only the break itself makes its report due.
pub fn report_due(last: Option<&ObservedReplica>, now: Option<&ObservedReplica>) -> bool {
    let substance = |r: Option<&ObservedReplica>| {
        r.map(|r| {
            (
                r.role,
                r.state,
                r.endpoint.clone(),
                r.epoch,
                r.lag_bytes.map(|l| l / LAG_REPORT_STEP),
                r.received_lsn
                    .map(|held| (r.state == ReplicaState::InSync).then_some(held)),
            )
        })
    };
    substance(last) != substance(now)
}

/// The standbys a primary's commits wait for. `Quorum` durability: `ANY k` of the
/// secondaries (k at most their number); `Async`: none. A cluster that does not say
/// (`spec.durability` absent) gets `ANY 1` of its secondaries whenever it has any, so no
/// acknowledged write is lost by a failover unless the cluster opted out.
pub fn sync_quorum(durability: Option<&Durability>, secondaries: Vec<String>) -> SyncQuorum {
    let wanted = match durability {
        Some(Durability {
            mode: DurabilityMode::Async,
            ..
        }) => 0,
        Some(Durability {
            mode: DurabilityMode::Quorum,
            sync_replicas,
        }) => u32::try_from(*sync_replicas).unwrap_or(1),
        None => 1,
    };
    let count = wanted.min(u32::try_from(secondaries.len()).unwrap_or(u32::MAX));
    if count == 0 {
        SyncQuorum::none()
    } else {
        SyncQuorum::any(count, secondaries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: &str, role: ReplicaRole, state: ReplicaState, epoch: i64) -> ObservedReplica {
        ObservedReplica {
            node: node.into(),
            role,
            state,
            endpoint: Some(format!("127.0.0.1:{}", 20000 + node.len())),
            lag_bytes: Some(0),
            epoch: Some(epoch),
            received_lsn: None,
            last_seen_time: None,
        }
    }

    fn view<'a>(
        desired: Option<ReplicaRole>,
        primary: Option<&'a PrimaryRef>,
        reports: &'a [ObservedReplica],
        offline: &'a BTreeSet<String>,
        live: bool,
    ) -> ReplicaView<'a> {
        ReplicaView {
            node: "n1",
            desired,
            primary,
            reports,
            offline_nodes: offline,
            live,
        }
    }

    fn at(node: &str, epoch: i64) -> PrimaryRef {
        PrimaryRef {
            node: node.into(),
            epoch,
        }
    }

    fn local_primary(epoch: i64, running: bool) -> LocalReplica {
        LocalReplica::Primary { epoch, running }
    }

    const STANDBY: LocalReplica = LocalReplica::Standby {
        upstream: None,
        running: true,
    };

    #[test]
    fn a_standby_whose_stream_broke_reports_the_wal_it_holds_at_once() {
        let mut streaming = report("n1", ReplicaRole::Secondary, ReplicaState::InSync, 2);
        streaming.lag_bytes = Some(168);
        // The primary died: still in sync (it replayed all it received), lag 0, and now the
        // end of its WAL, which failover compares across standbys.
        let mut broken = streaming.clone();
        broken.lag_bytes = Some(0);
        broken.received_lsn = Some(50_331_816);
        assert!(report_due(Some(&streaming), Some(&broken)));
        // And back to streaming (it follows the new primary): the position is withdrawn.
        assert!(report_due(Some(&broken), Some(&streaming)));
        let mut moved = broken.clone();
        moved.received_lsn = Some(50_331_900);
        assert!(report_due(Some(&broken), Some(&moved)));
        // Out of sync, the break is due but not every step of a local replay.
        let mut behind = streaming.clone();
        behind.state = ReplicaState::CatchingUp;
        let mut replaying = behind.clone();
        replaying.received_lsn = Some(40_000_000);
        assert!(report_due(Some(&behind), Some(&replaying)));
        let mut further = replaying.clone();
        further.received_lsn = Some(40_100_000);
        assert!(!report_due(Some(&replaying), Some(&further)));
    }

    #[test]
    fn a_report_is_due_when_what_the_operator_acts_on_changes() {
        let base = report("n1", ReplicaRole::Secondary, ReplicaState::InSync, 2);
        assert!(!report_due(Some(&base), Some(&base.clone())));
        assert!(report_due(None, Some(&base)));
        assert!(report_due(Some(&base), None));
        assert!(!report_due(None, None));
        let mut lag = base.clone();
        lag.lag_bytes = Some(LAG_REPORT_STEP - 1);
        assert!(!report_due(Some(&base), Some(&lag)), "lag within a step");
        lag.lag_bytes = Some(LAG_REPORT_STEP);
        assert!(report_due(Some(&base), Some(&lag)));
        let mut state = base.clone();
        state.state = ReplicaState::CatchingUp;
        assert!(report_due(Some(&base), Some(&state)));
        let mut role = base.clone();
        role.role = ReplicaRole::Primary;
        assert!(report_due(Some(&base), Some(&role)));
        let mut epoch = base.clone();
        epoch.epoch = Some(3);
        assert!(report_due(Some(&base), Some(&epoch)));
        let mut endpoint = base.clone();
        endpoint.endpoint = None;
        assert!(report_due(Some(&base), Some(&endpoint)));
        let mut seen = base.clone();
        seen.last_seen_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        assert!(
            !report_due(Some(&base), Some(&seen)),
            "a refresh is timed, not due"
        );
    }

    #[test]
    fn quorum_follows_the_durability_policy() {
        let two = || vec!["a".to_string(), "b".to_string()];
        assert_eq!(sync_quorum(None, two()), SyncQuorum::any(1, ["a", "b"]));
        assert_eq!(sync_quorum(None, vec![]), SyncQuorum::none());
        let quorum = |k| Durability {
            mode: DurabilityMode::Quorum,
            sync_replicas: k,
        };
        assert_eq!(
            sync_quorum(Some(&quorum(2)), two()),
            SyncQuorum::any(2, ["a", "b"])
        );
        assert_eq!(
            sync_quorum(Some(&quorum(3)), two()),
            SyncQuorum::any(2, ["a", "b"])
        );
        let asynchronous = Durability {
            mode: DurabilityMode::Async,
            sync_replicas: 1,
        };
        assert_eq!(sync_quorum(Some(&asynchronous), two()), SyncQuorum::none());
    }

    #[test]
    fn a_new_shard_gets_an_empty_primary_only_when_no_one_holds_data() {
        let none = BTreeSet::new();
        let p = at("n1", 1);
        let v = view(Some(ReplicaRole::Primary), Some(&p), &[], &none, true);
        assert_eq!(
            decide(&v, &LocalReplica::Absent),
            ReplicaAction::CreatePrimary { epoch: 1 }
        );
        let others = [report(
            "n2",
            ReplicaRole::Secondary,
            ReplicaState::InSync,
            1,
        )];
        let v = view(Some(ReplicaRole::Primary), Some(&p), &others, &none, true);
        assert!(matches!(
            decide(&v, &LocalReplica::Absent),
            ReplicaAction::Wait(_)
        ));
        let v = view(Some(ReplicaRole::Primary), Some(&p), &[], &none, false);
        assert!(matches!(
            decide(&v, &LocalReplica::Absent),
            ReplicaAction::Wait(_)
        ));
    }

    #[test]
    fn failover_promotes_once_the_old_primary_is_offline_or_fenced() {
        let p = at("n1", 2);
        let old = [report("n2", ReplicaRole::Primary, ReplicaState::InSync, 1)];
        let none = BTreeSet::new();
        let v = view(Some(ReplicaRole::Primary), Some(&p), &old, &none, true);
        assert!(matches!(
            decide(&v, &STANDBY),
            ReplicaAction::PrepareToLead(_)
        ));
        let offline: BTreeSet<String> = ["n2".to_string()].into();
        let v = view(Some(ReplicaRole::Primary), Some(&p), &old, &offline, true);
        assert_eq!(
            decide(&v, &STANDBY),
            ReplicaAction::Promote {
                epoch: 2,
                catch_up_with: None
            }
        );
        let fenced = [report("n2", ReplicaRole::Primary, ReplicaState::Fenced, 1)];
        let v = view(Some(ReplicaRole::Primary), Some(&p), &fenced, &none, true);
        assert!(matches!(
            decide(&v, &STANDBY),
            ReplicaAction::Promote {
                epoch: 2,
                catch_up_with: Some(_)
            }
        ));
    }

    #[test]
    fn a_former_primary_is_never_served_again_only_demoted() {
        let none = BTreeSet::new();
        let p = at("n2", 2);
        let local = local_primary(1, false);
        // New primary not reported yet: fenced, not started.
        let stale = [report(
            "n2",
            ReplicaRole::Secondary,
            ReplicaState::InSync,
            1,
        )];
        let v = view(Some(ReplicaRole::Secondary), Some(&p), &stale, &none, true);
        assert!(matches!(decide(&v, &local), ReplicaAction::Fence(_)));
        let serving = [report("n2", ReplicaRole::Primary, ReplicaState::InSync, 2)];
        let v = view(
            Some(ReplicaRole::Secondary),
            Some(&p),
            &serving,
            &none,
            true,
        );
        assert!(matches!(
            decide(&v, &local),
            ReplicaAction::Demote { epoch: 2, .. }
        ));
    }

    #[test]
    fn a_primary_that_cannot_prove_liveness_is_fenced() {
        let none = BTreeSet::new();
        let p = at("n1", 3);
        let local = local_primary(3, true);
        let v = view(Some(ReplicaRole::Primary), Some(&p), &[], &none, false);
        assert!(matches!(decide(&v, &local), ReplicaAction::Fence(_)));
        let v = view(Some(ReplicaRole::Primary), Some(&p), &[], &none, true);
        assert_eq!(decide(&v, &local), ReplicaAction::ServePrimary { epoch: 3 });
        let me_offline: BTreeSet<String> = ["n1".to_string()].into();
        let v = view(Some(ReplicaRole::Primary), Some(&p), &[], &me_offline, true);
        assert!(matches!(decide(&v, &local), ReplicaAction::Fence(_)));
    }

    #[test]
    fn an_older_primary_adopts_a_new_epoch_only_if_none_served_between() {
        let none = BTreeSet::new();
        let p = at("n1", 5);
        let local = local_primary(3, true);
        let v = view(Some(ReplicaRole::Primary), Some(&p), &[], &none, true);
        assert_eq!(decide(&v, &local), ReplicaAction::AdoptEpoch { epoch: 5 });
        let between = [report("n2", ReplicaRole::Primary, ReplicaState::Down, 4)];
        let v = view(Some(ReplicaRole::Primary), Some(&p), &between, &none, true);
        assert!(matches!(decide(&v, &local), ReplicaAction::Fence(_)));
    }

    #[test]
    fn a_standby_follows_the_reported_primary_and_is_removed_when_unwanted() {
        let none = BTreeSet::new();
        let p = at("n2", 2);
        let reports = [report("n2", ReplicaRole::Primary, ReplicaState::InSync, 2)];
        let v = view(
            Some(ReplicaRole::Secondary),
            Some(&p),
            &reports,
            &none,
            false,
        );
        let endpoint = reports[0].endpoint.clone().unwrap();
        assert_eq!(
            decide(&v, &STANDBY),
            ReplicaAction::Follow {
                upstream: endpoint.clone(),
                epoch: 2
            }
        );
        let following = LocalReplica::Standby {
            upstream: Some(endpoint.clone()),
            running: true,
        };
        assert_eq!(decide(&v, &following), ReplicaAction::ServeStandby);
        assert_eq!(
            decide(&v, &LocalReplica::Absent),
            ReplicaAction::CreateStandby {
                upstream: endpoint,
                epoch: 2
            }
        );
        let v = view(None, Some(&p), &reports, &none, true);
        assert_eq!(decide(&v, &following), ReplicaAction::Remove);
    }

    #[test]
    fn a_standby_streams_from_the_named_new_primary_before_its_promotion_when_it_is_in_sync() {
        let none = BTreeSet::new();
        let p = at("n2", 3);
        let next =
            |reports: &[ObservedReplica], offline: &BTreeSet<String>, local: &LocalReplica| {
                let v = view(
                    Some(ReplicaRole::Secondary),
                    Some(&p),
                    reports,
                    offline,
                    true,
                );
                decide(&v, local)
            };
        let with_endpoint = |mut r: ObservedReplica, port: u16| {
            r.endpoint = Some(format!("127.0.0.1:{port}"));
            r
        };
        let old = with_endpoint(
            report("n3", ReplicaRole::Primary, ReplicaState::InSync, 2),
            3,
        );
        let following_old = LocalReplica::Standby {
            upstream: old.endpoint.clone(),
            running: true,
        };
        // n2 is named primary at epoch 3 and still a standby in sync: n1 streams from it now.
        let candidate = with_endpoint(
            report("n2", ReplicaRole::Secondary, ReplicaState::InSync, 2),
            2,
        );
        let reports = [old.clone(), candidate.clone()];
        assert_eq!(
            next(&reports, &none, &following_old),
            ReplicaAction::Follow {
                upstream: "127.0.0.1:2".into(),
                epoch: 3
            }
        );
        // Already there: it keeps streaming, and its promotion changes nothing here.
        let following_new = LocalReplica::Standby {
            upstream: candidate.endpoint.clone(),
            running: true,
        };
        assert_eq!(
            next(&reports, &none, &following_new),
            ReplicaAction::ServeStandby
        );

        // Not while the named standby lags, has lost its stream, or its node is offline; and
        // a replica not yet made is copied only from a serving primary.
        let lagging = with_endpoint(
            report("n2", ReplicaRole::Secondary, ReplicaState::CatchingUp, 2),
            2,
        );
        let mut broken = candidate.clone();
        broken.received_lsn = Some(42);
        let offline: BTreeSet<String> = ["n2".to_owned()].into();
        for (named, offline) in [(lagging, &none), (broken, &none), (candidate, &offline)] {
            let reports = [old.clone(), named];
            assert_eq!(
                next(&reports, offline, &following_old),
                ReplicaAction::ServeStandby
            );
        }
        assert!(matches!(
            next(&reports, &none, &LocalReplica::Absent),
            ReplicaAction::Wait(_)
        ));
    }
}
