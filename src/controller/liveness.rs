//! Node liveness. Agents send a heartbeat to the operator's HTTP server every
//! `heartbeatIntervalMs` (no API write), and renew a per-node Lease every 30 s — every
//! interval while no leader answers them — as the durable fallback. The leader keeps the last
//! heartbeat of every node in memory and, every 100 ms, derives each node's phase: Online,
//! Suspect after `suspectAfterMs` of silence, Offline after `deadAfterMs` — unless the node's
//! Lease was renewed meanwhile, which means the node lives and only its path to this operator
//! broke. A new leader starts every live node's silence at its own start, so a takeover never
//! causes a false failover. Phase changes are the only writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::api::database_node::NodeDesiredState;
use crate::api::{DatabaseCluster, DatabaseNode, NodePhase};
use crate::protocol::node_lease_name;

use super::caches::Caches;
use super::context::Context;
use crate::decide::domain::desired_state;

/// Timings of failure detection, from the cluster's spec or the defaults.
#[derive(Clone, Copy)]
struct Timings {
    suspect: Duration,
    dead: Duration,
}

impl Timings {
    fn of(cluster: Option<&DatabaseCluster>) -> Self {
        let spec = cluster
            .and_then(|c| c.spec.failure_detection.clone())
            .unwrap_or_default();
        Timings {
            suspect: spec.suspect_after(),
            dead: spec.dead_after(),
        }
    }
}

/// Derives node phases from heartbeats every 100 ms while this replica leads.
pub async fn run(ctx: Arc<Context>, caches: Caches) {
    let Caches {
        nodes, clusters, ..
    } = caches;
    let _stop_leading = scopeguard(ctx.clone());
    ctx.liveness.leading_since();
    let mut leases = LeaseEvidence::default();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for node in nodes.state() {
            let namespace = node.namespace().unwrap_or_default();
            let cluster = clusters.state().into_iter().find(|c| {
                c.namespace().as_deref() == Some(namespace.as_str())
                    && c.name_any() == node.spec.cluster
            });
            let tick = Tick {
                timings: Timings::of(cluster.as_deref()),
                heard: ctx.liveness.last_heard(&namespace, &node.name_any()),
                leading_since: ctx.liveness.leading_since(),
                now: Instant::now(),
            };
            step(&ctx, &node, tick, &mut leases).await;
        }
    }
}

/// What one tick of the loop knows about a node besides the node itself.
#[derive(Clone, Copy)]
struct Tick {
    timings: Timings,
    /// When this operator last heard the node's heartbeat.
    heard: Option<Instant>,
    /// When this replica started leading: silence is never counted from before it.
    leading_since: Instant,
    now: Instant,
}

/// One node at one tick: its phase from its silence (and, once silent past `deadAfterMs`,
/// from its Lease), written if it changed. Returns the phase it wrote, if any.
async fn step(
    ctx: &Context,
    node: &DatabaseNode,
    tick: Tick,
    leases: &mut LeaseEvidence,
) -> Option<NodePhase> {
    let current = node.status.as_ref().and_then(|s| s.phase);
    if current == Some(NodePhase::Decommissioned) {
        // It left the cluster for good; its agent's silence means nothing.
        return None;
    }
    let silence = silence(tick.heard, current, tick.leading_since, tick.now)?;
    let lease_alive =
        silence >= tick.timings.dead && leases.prove_alive(ctx, node, current, tick).await;
    let liveness = liveness_phase(silence, tick.heard.is_some(), lease_alive, tick.timings);
    let phase = with_desired_state(liveness, desired_state(node));
    if current == Some(phase) {
        return None;
    }
    set_phase(ctx, node, phase, silence).await.then_some(phase)
}

/// The phase silence alone gives: `Offline` past `dead` unless the Lease proves the node
/// alive, `Suspect` past `suspect` for a node heard before, `Online` otherwise.
fn liveness_phase(
    silence: Duration,
    heard: bool,
    lease_alive: bool,
    timings: Timings,
) -> NodePhase {
    if silence >= timings.dead && !lease_alive {
        NodePhase::Offline
    } else if silence >= timings.suspect && heard {
        NodePhase::Suspect
    } else {
        NodePhase::Online
    }
}

/// What the loop remembers of silent nodes' Leases between ticks.
#[derive(Default)]
struct LeaseEvidence {
    /// Until when each silent node's Lease proves it alive: its renewal plus the dead timeout.
    alive_until: HashMap<(String, String), Instant>,
    /// When a node already declared dead may have its Lease read again (once a second).
    next_read: HashMap<(String, String), Instant>,
}

impl LeaseEvidence {
    /// Whether `node`'s Lease proves it alive at `tick.now`: remembered from an earlier read
    /// while that proof holds, else read (an Offline node's at most once a second).
    async fn prove_alive(
        &mut self,
        ctx: &Context,
        node: &DatabaseNode,
        current: Option<NodePhase>,
        tick: Tick,
    ) -> bool {
        let namespace = node.namespace().unwrap_or_default();
        let key = (namespace.clone(), node.name_any());
        let read_allowed = self.next_read.get(&key).is_none_or(|at| tick.now >= *at);
        let until = match self.alive_until.get(&key) {
            Some(until) if tick.now < *until => Some(*until),
            _ if read_allowed => {
                if current == Some(NodePhase::Offline) {
                    self.next_read
                        .insert(key.clone(), tick.now + Duration::from_secs(1));
                }
                lease_alive_until(
                    ctx,
                    &namespace,
                    &node.name_any(),
                    tick.timings.dead,
                    tick.now,
                )
                .await
            }
            _ => None,
        };
        match until {
            Some(until) => self.alive_until.insert(key, until),
            None => self.alive_until.remove(&key),
        };
        until.is_some_and(|until| tick.now < until)
    }
}

/// How long the node has been silent at `now`, counting from this leader's start for nodes it
/// has not heard yet; `None` for nodes never heard of that are not known to have been live.
fn silence(
    heard: Option<Instant>,
    current: Option<NodePhase>,
    leading_since: Instant,
    now: Instant,
) -> Option<Duration> {
    match (heard, current) {
        (Some(at), _) => Some(now.saturating_duration_since(at.max(leading_since))),
        (
            None,
            Some(
                NodePhase::Online
                | NodePhase::Suspect
                | NodePhase::Draining
                | NodePhase::Maintenance,
            ),
        ) => Some(now.saturating_duration_since(leading_since)),
        _ => None,
    }
}

/// The phase a user's wish turns a liveness phase into.
fn with_desired_state(liveness: NodePhase, desired: Option<NodeDesiredState>) -> NodePhase {
    match (liveness, desired) {
        (NodePhase::Offline, _) => NodePhase::Offline,
        (_, Some(NodeDesiredState::Drained | NodeDesiredState::Decommissioned)) => {
            NodePhase::Draining
        }
        (_, Some(NodeDesiredState::Maintenance)) => NodePhase::Maintenance,
        (phase, _) => phase,
    }
}

/// Until when the node's Lease proves it alive (its last renewal plus `dead`, counted from
/// `now`), if it does now.
async fn lease_alive_until(
    ctx: &Context,
    namespace: &str,
    node: &str,
    dead: Duration,
    now: Instant,
) -> Option<Instant> {
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), namespace);
    let lease = leases.get_opt(&node_lease_name(node)).await.ok()??;
    let renewed = lease.spec?.renew_time?;
    let renewed =
        SystemTime::UNIX_EPOCH + Duration::from_millis(renewed.0.as_millisecond().max(0) as u64);
    let age = SystemTime::now()
        .duration_since(renewed)
        .unwrap_or_default();
    dead.checked_sub(age).map(|left| now + left)
}

/// Writes `phase` (with the time) to the node's status; an Offline node gets an Event and
/// its detection time is measured. Returns whether the phase was written.
async fn set_phase(
    ctx: &Context,
    node: &DatabaseNode,
    phase: NodePhase,
    silence: Duration,
) -> bool {
    if ctx.leader.ensure().is_err() {
        return false;
    }
    let namespace = node.namespace().unwrap_or_default();
    let api: Api<DatabaseNode> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = json!({"status": {"phase": phase, "lastHeartbeatTime": Time(Timestamp::now())}});
    if let Err(error) = api
        .patch_status(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        tracing::warn!(%error, node = %node.name_any(), "cannot record node phase");
        return false;
    }
    tracing::info!(node = %node.name_any(), ?phase, silence_ms = silence.as_millis() as u64, "node phase changed");
    if phase == NodePhase::Offline {
        ctx.metrics.detection_seconds.observe(silence.as_secs_f64());
        let note = format!(
            "no heartbeat for {} ms; its primaries fail over",
            silence.as_millis()
        );
        ctx.event(node, true, "NodeOffline", note).await;
    }
    true
}

/// Forgets the leadership start when the liveness task ends (it is aborted on lost leadership).
struct LeadingGuard(Arc<Context>);

impl Drop for LeadingGuard {
    fn drop(&mut self) {
        self.0.liveness.stop_leading();
    }
}

fn scopeguard(ctx: Arc<Context>) -> LeadingGuard {
    LeadingGuard(ctx)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use kube::api::ObjectMeta;

    use super::*;
    use crate::controller::fixtures::{self, ApiServer, Expect};

    const NS: &str = "db";

    /// The operator test suite's timings: suspect after 600 ms, dead after 1200 ms.
    const TIMINGS: Timings = Timings {
        suspect: Duration::from_millis(600),
        dead: Duration::from_millis(1200),
    };

    fn node(phase: Option<NodePhase>) -> DatabaseNode {
        serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseNode",
            "metadata": {"name": "n1", "namespace": NS, "uid": "n1-uid", "resourceVersion": "7"},
            "spec": {"cluster": "main", "region": "r1", "zone": "r1-a", "address": "127.0.0.1",
                     "ports": {"first": 20000, "last": 20099}, "capacity": {"storageBytes": 1000}},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    fn with_phase(node: &DatabaseNode, phase: NodePhase) -> DatabaseNode {
        let mut node = node.clone();
        node.status.get_or_insert_default().phase = Some(phase);
        node
    }

    /// The node's Lease, last renewed `age` ago.
    fn lease(age: Duration) -> Lease {
        let renewed = Timestamp::now() - age;
        Lease {
            metadata: ObjectMeta {
                name: Some(node_lease_name("n1")),
                namespace: Some(NS.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("n1".into()),
                renew_time: Some(MicroTime(renewed)),
                ..LeaseSpec::default()
            }),
        }
    }

    /// A node stepped tick after tick against a mock API server, its Lease evidence kept
    /// between ticks; last heard at `heard`, by a replica that led since before.
    struct Ticks {
        mock: (Arc<Context>, ApiServer),
        node: DatabaseNode,
        leases: LeaseEvidence,
        heard: Instant,
    }

    impl Ticks {
        fn new(leading: bool, node: DatabaseNode) -> Self {
            Ticks {
                mock: fixtures::context(leading),
                node,
                leases: LeaseEvidence::default(),
                heard: Instant::now(),
            }
        }

        /// The tick `silent_ms` after the last heartbeat.
        fn tick(&self, silent_ms: u64) -> Tick {
            Tick {
                timings: TIMINGS,
                heard: Some(self.heard),
                leading_since: self.heard,
                now: self.heard + Duration::from_millis(silent_ms),
            }
        }

        /// One step at `tick` against `script`; returns the phase written.
        async fn step_at(&mut self, tick: Tick, script: Vec<Expect>) -> Option<NodePhase> {
            let (ctx, server) = &self.mock;
            server
                .run(script, step(ctx, &self.node, tick, &mut self.leases))
                .await
        }

        /// One step `silent_ms` after the last heartbeat against `script`.
        async fn at(&mut self, silent_ms: u64, script: Vec<Expect>) -> Option<NodePhase> {
            self.step_at(self.tick(silent_ms), script).await
        }
    }

    fn lease_read() -> Expect {
        Expect::get::<Lease>(NS, &node_lease_name("n1"))
    }

    /// The Lease read answered with a Lease renewed an hour ago.
    fn stale_lease() -> Expect {
        lease_read().answer(lease(Duration::from_secs(3600)))
    }

    fn phase_written(node: &DatabaseNode, phase: NodePhase) -> Expect {
        Expect::patch_status::<DatabaseNode>(NS, "n1")
            .field("/status/phase", phase)
            .present("/status/lastHeartbeatTime")
            .answer(with_phase(node, phase))
    }

    /// `Offline` written, then the Warning Event that says so.
    fn written_offline(node: &DatabaseNode) -> [Expect; 2] {
        [
            phase_written(node, NodePhase::Offline),
            Expect::event(NS, "NodeOffline").field("/type", "Warning"),
        ]
    }

    #[tokio::test]
    async fn a_node_silent_past_dead_after_is_written_offline_with_an_event() {
        // Its Lease is stale, or it has none.
        for (current, lease_answer) in [
            (NodePhase::Suspect, stale_lease()),
            (NodePhase::Online, lease_read().not_found()),
        ] {
            let mut node = Ticks::new(true, node(Some(current)));
            let mut script = vec![lease_answer];
            script.extend(written_offline(&node.node));
            assert_eq!(node.at(1500, script).await, Some(NodePhase::Offline));
        }
    }

    #[tokio::test]
    async fn a_silent_node_whose_lease_was_renewed_is_not_written_offline() {
        let mut node = Ticks::new(true, node(Some(NodePhase::Suspect)));
        // The Lease, renewed just now, proves it alive: it stays Suspect, nothing is written.
        let script = vec![lease_read().answer(lease(Duration::ZERO))];
        assert_eq!(node.at(1500, script).await, None);
        // The proof is remembered until it runs out: the next tick reads nothing.
        assert_eq!(node.at(1600, vec![]).await, None);
    }

    #[tokio::test]
    async fn a_node_whose_lease_lapsed_too_is_written_offline_once_the_proof_runs_out() {
        let mut node = Ticks::new(true, node(Some(NodePhase::Suspect)));
        // Renewed 1 s ago with a dead timeout of 1.2 s: alive for 0.2 s more.
        let script = vec![lease_read().answer(lease(Duration::from_secs(1)))];
        assert_eq!(node.at(1500, script).await, None);
        let mut script = vec![stale_lease()];
        script.extend(written_offline(&node.node));
        assert_eq!(node.at(2000, script).await, Some(NodePhase::Offline));
    }

    #[tokio::test]
    async fn past_suspect_after_a_node_is_written_suspect_and_heard_again_online() {
        // Short of deadAfterMs: the phase is written alone, without reading the Lease.
        for (current, silent_ms, phase) in [
            (NodePhase::Online, 800, NodePhase::Suspect),
            (NodePhase::Suspect, 100, NodePhase::Online),
        ] {
            let mut node = Ticks::new(true, node(Some(current)));
            let script = vec![phase_written(&node.node, phase)];
            let written = node.at(silent_ms, script).await;
            assert_eq!(written, Some(phase), "{current:?} after {silent_ms} ms");
        }
    }

    #[tokio::test]
    async fn an_unchanged_phase_writes_nothing() {
        for (phase, silent_ms) in [
            (NodePhase::Online, 100),
            (NodePhase::Suspect, 800),
            (NodePhase::Draining, 100),
        ] {
            let mut object = node(Some(phase));
            if phase == NodePhase::Draining {
                object.spec.desired_state = Some(NodeDesiredState::Drained);
            }
            let mut node = Ticks::new(true, object);
            assert_eq!(node.at(silent_ms, vec![]).await, None, "{phase:?}");
        }
    }

    #[tokio::test]
    async fn a_decommissioned_or_never_heard_node_is_left_alone() {
        let mut decommissioned = Ticks::new(true, node(Some(NodePhase::Decommissioned)));
        assert_eq!(decommissioned.at(60_000, vec![]).await, None);
        // Registered but never heard, by this leader or its predecessors: no phase yet.
        let mut never_heard = Ticks::new(true, node(None));
        let tick = Tick {
            heard: None,
            ..never_heard.tick(60_000)
        };
        assert_eq!(never_heard.step_at(tick, vec![]).await, None);
    }

    #[tokio::test]
    async fn an_offline_nodes_lease_is_read_at_most_once_a_second() {
        let mut node = Ticks::new(true, node(Some(NodePhase::Offline)));
        for (silent_ms, script) in [
            (5000, vec![stale_lease()]),
            (5500, vec![]),
            (6000, vec![stale_lease()]),
        ] {
            assert_eq!(node.at(silent_ms, script).await, None, "{silent_ms} ms");
        }
    }

    #[tokio::test]
    async fn a_replica_that_does_not_lead_writes_nothing() {
        let mut suspect = Ticks::new(false, node(Some(NodePhase::Online)));
        // Past suspectAfterMs: a leader would write Suspect; this replica makes no request.
        assert_eq!(suspect.at(800, vec![]).await, None);
        // Past deadAfterMs it reads the node's Lease, as before any write, but writes nothing.
        let mut dead = Ticks::new(false, node(Some(NodePhase::Online)));
        assert_eq!(dead.at(1500, vec![stale_lease()]).await, None);
    }

    #[test]
    fn silence_past_the_timeouts_gives_suspect_then_offline_unless_the_lease_proves_life() {
        use NodePhase::{Offline, Online, Suspect};
        // (silence ms, heard by this leader, Lease proves life) → phase
        let cases = [
            (599, true, false, Online),
            (600, true, false, Suspect),
            (1199, true, false, Suspect),
            (1200, true, false, Offline),
            (1200, true, true, Suspect),
            // A node never heard by this leader is not suspected, only declared dead.
            (900, false, false, Online),
            (1200, false, true, Online),
            (1200, false, false, Offline),
        ];
        for (ms, heard, lease_alive, phase) in cases {
            let silence = Duration::from_millis(ms);
            assert_eq!(
                liveness_phase(silence, heard, lease_alive, TIMINGS),
                phase,
                "{ms} ms, heard {heard}, lease alive {lease_alive}"
            );
        }
    }

    #[test]
    fn silence_counts_from_the_leaders_start_at_the_earliest() {
        let heard = Instant::now();
        let led = heard + Duration::from_secs(10);
        let now = led + Duration::from_secs(1);
        let online = Some(NodePhase::Online);
        assert_eq!(
            silence(Some(heard), online, led, now),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            silence(Some(led), online, heard, now),
            Some(Duration::from_secs(1))
        );
        // Not heard yet by this leader: silent since it started leading, if it was live.
        for phase in [
            NodePhase::Online,
            NodePhase::Suspect,
            NodePhase::Draining,
            NodePhase::Maintenance,
        ] {
            assert_eq!(
                silence(None, Some(phase), led, now),
                Some(Duration::from_secs(1)),
                "{phase:?}"
            );
        }
        for phase in [None, Some(NodePhase::Offline)] {
            assert_eq!(silence(None, phase, led, now), None, "{phase:?}");
        }
    }

    #[test]
    fn a_users_wish_shapes_every_phase_but_offline() {
        use NodeDesiredState::{Active, Decommissioned, Drained, Maintenance};
        let cases = [
            (NodePhase::Offline, Some(Drained), NodePhase::Offline),
            (NodePhase::Online, Some(Drained), NodePhase::Draining),
            (
                NodePhase::Suspect,
                Some(Decommissioned),
                NodePhase::Draining,
            ),
            (NodePhase::Online, Some(Maintenance), NodePhase::Maintenance),
            (NodePhase::Suspect, Some(Active), NodePhase::Suspect),
            (NodePhase::Online, None, NodePhase::Online),
        ];
        for (liveness, desired, phase) in cases {
            assert_eq!(with_desired_state(liveness, desired), phase, "{desired:?}");
        }
    }

    #[test]
    fn timings_come_from_the_cluster_or_the_defaults() {
        let defaults = Timings::of(None);
        assert_eq!(
            (defaults.suspect, defaults.dead),
            (Duration::from_millis(1000), Duration::from_millis(1500))
        );
        let cluster: DatabaseCluster = serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseCluster",
            "metadata": {"name": "main", "namespace": NS},
            "spec": {"regions": [{"name": "r1", "zones": ["r1-a"]}], "replicationFactor": 1,
                     "failureDetection": {"heartbeatIntervalMs": 200, "suspectAfterMs": 600, "deadAfterMs": 1200}}
        }))
        .unwrap();
        let timings = Timings::of(Some(&cluster));
        assert_eq!(
            (timings.suspect, timings.dead),
            (TIMINGS.suspect, TIMINGS.dead)
        );
    }
}
