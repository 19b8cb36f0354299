//! Node liveness. Agents send a heartbeat to the operator's HTTP server every
//! `heartbeatIntervalMs` (no API write), and renew a per-node Lease every 5 s as the durable
//! fallback (one API write per node per 5 s). The leader keeps the last heartbeat of every
//! node in memory and, every 100 ms, derives each node's phase: Online, Suspect after
//! `suspectAfterMs` of silence, Offline after `deadAfterMs` — unless the node's Lease was
//! renewed meanwhile, which means the node lives and only its path to this operator broke.
//! A new leader starts every live node's silence at its own start, so a takeover never
//! causes a false failover. Phase changes are the only writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::api::database_node::NodeDesiredState;
use crate::api::{DatabaseCluster, DatabaseNode, NodePhase};
use crate::protocol::{Heartbeat, node_lease_name};

use super::context::{Cache, Context};
use crate::decide::domain::desired_state;

/// When each node was last heard from, as seen by this operator process.
#[derive(Default)]
pub struct Liveness {
    heard: Mutex<HashMap<(String, String), Instant>>,
    leading_since: Mutex<Option<Instant>>,
}

impl Liveness {
    /// Records a heartbeat.
    pub fn record(&self, heartbeat: &Heartbeat) {
        if let Ok(mut heard) = self.heard.lock() {
            heard.insert(
                (heartbeat.namespace.clone(), heartbeat.node.clone()),
                Instant::now(),
            );
        }
    }

    fn last_heard(&self, namespace: &str, node: &str) -> Option<Instant> {
        let heard = self.heard.lock().ok()?;
        heard.get(&(namespace.to_owned(), node.to_owned())).copied()
    }

    fn leading_since(&self) -> Instant {
        let mut since = match self.leading_since.lock() {
            Ok(since) => since,
            Err(poisoned) => poisoned.into_inner(),
        };
        *since.get_or_insert_with(Instant::now)
    }

    fn stop_leading(&self) {
        if let Ok(mut since) = self.leading_since.lock() {
            *since = None;
        }
    }
}

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
        let ms = |v: i64| Duration::from_millis(v.max(0) as u64);
        Timings {
            suspect: ms(spec.suspect_after_ms),
            dead: ms(spec.dead_after_ms),
        }
    }
}

/// Derives node phases from heartbeats every 100 ms while this replica leads.
pub async fn run(ctx: Arc<Context>) {
    let nodes = Cache::<DatabaseNode>::start(&ctx).await;
    let clusters = Cache::<DatabaseCluster>::start(&ctx).await;
    let _stop_leading = scopeguard(ctx.clone());
    ctx.liveness.leading_since();
    // Until when each silent node's Lease proves it alive: its renewal plus the dead timeout.
    let mut alive_by_lease: HashMap<(String, String), Instant> = HashMap::new();
    // When a node already declared dead may have its Lease read again (once a second).
    let mut next_lease_read: HashMap<(String, String), Instant> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for node in nodes.state() {
            let namespace = node.namespace().unwrap_or_default();
            let cluster = clusters.state().into_iter().find(|c| {
                c.namespace().as_deref() == Some(namespace.as_str())
                    && c.name_any() == node.spec.cluster
            });
            let timings = Timings::of(cluster.as_deref());
            let current = node.status.as_ref().and_then(|s| s.phase);
            if current == Some(NodePhase::Decommissioned) {
                // It left the cluster for good; its agent's silence means nothing.
                continue;
            }
            let heard = ctx.liveness.last_heard(&namespace, &node.name_any());
            let Some(silence) = silence(heard, current, ctx.liveness.leading_since()) else {
                continue;
            };
            let mut alive = silence < timings.dead;
            if !alive {
                let key = (namespace.clone(), node.name_any());
                let read_allowed = next_lease_read
                    .get(&key)
                    .is_none_or(|at| Instant::now() >= *at);
                let until = match alive_by_lease.get(&key) {
                    Some(until) if Instant::now() < *until => Some(*until),
                    _ if read_allowed => {
                        if current == Some(NodePhase::Offline) {
                            next_lease_read
                                .insert(key.clone(), Instant::now() + Duration::from_secs(1));
                        }
                        lease_alive_until(&ctx, &namespace, &node.name_any(), timings.dead).await
                    }
                    _ => None,
                };
                alive = until.is_some_and(|until| Instant::now() < until);
                match until {
                    Some(until) => alive_by_lease.insert(key, until),
                    None => alive_by_lease.remove(&key),
                };
            }
            let liveness_phase = if !alive {
                NodePhase::Offline
            } else if silence >= timings.suspect && heard.is_some() {
                NodePhase::Suspect
            } else {
                NodePhase::Online
            };
            let phase = with_desired_state(liveness_phase, desired_state(&node));
            if current != Some(phase) {
                set_phase(&ctx, &node, phase, silence).await;
            }
        }
    }
}

/// How long the node has been silent, counting from this leader's start for nodes it has
/// not heard yet; `None` for nodes never heard of that are not known to have been live.
fn silence(
    heard: Option<Instant>,
    current: Option<NodePhase>,
    leading_since: Instant,
) -> Option<Duration> {
    match (heard, current) {
        (Some(at), _) => Some(at.max(leading_since).elapsed()),
        (
            None,
            Some(
                NodePhase::Online
                | NodePhase::Suspect
                | NodePhase::Draining
                | NodePhase::Maintenance,
            ),
        ) => Some(leading_since.elapsed()),
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

/// Until when the node's Lease proves it alive (its last renewal plus `dead`), if it does now.
async fn lease_alive_until(
    ctx: &Context,
    namespace: &str,
    node: &str,
    dead: Duration,
) -> Option<Instant> {
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), namespace);
    let lease = leases.get_opt(&node_lease_name(node)).await.ok()??;
    let renewed = lease.spec?.renew_time?;
    let renewed =
        SystemTime::UNIX_EPOCH + Duration::from_millis(renewed.0.as_millisecond().max(0) as u64);
    let age = SystemTime::now()
        .duration_since(renewed)
        .unwrap_or_default();
    dead.checked_sub(age).map(|left| Instant::now() + left)
}

async fn set_phase(ctx: &Context, node: &DatabaseNode, phase: NodePhase, silence: Duration) {
    if ctx.leader.ensure().is_err() {
        return;
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
        return;
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
