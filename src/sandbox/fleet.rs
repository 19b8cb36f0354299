//! A fleet of simulated node agents in one process: a load generator for the real operator
//! against the real API server. Each node proves its liveness exactly as an agent does
//! (`agent::protocol::LivenessReporter`: heartbeats over HTTP to every operator replica, the
//! node Lease as the durable record); one shared watch of the namespace's Shards drives every
//! node's replica reports (`agent::protocol::report_replica`, under the node's own field
//! manager), in the role and at the epoch `Shard.status` asks for, in the state the
//! [`ReplicaModel`] gives. It runs no PostgreSQL and ships no WAL: lag is a timer. It is what
//! `shardplane fleet`, the scale benchmark and the stand-in agent run, never `shardplane agent`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::agent::protocol::{HeartbeatKey, LivenessReporter, report_replica};
use crate::api::Shard;
use crate::api::shard::{ObservedReplica, ReplicaRole, ReplicaState};
use crate::protocol::Heartbeat;
use crate::tls::{HEARTBEAT_KEY, node_secret_name, secret_text};

/// How often every watched shard is compared with what the fleet's live nodes should report,
/// besides at every change the watch brings, when a lagging replica's delay is up and when a
/// node is revived: what retries a failed or unseen write.
const RESCAN: Duration = Duration::from_secs(2);
/// A write that succeeded but that the watch has not shown after this long is written again.
const UNSEEN_WRITE_RETRY: Duration = Duration::from_secs(10);

/// What state a simulated replica reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaModel {
    /// Every replica reports in sync as soon as the operator wants it.
    InSync,
    /// A replica new on its node reports `CatchingUp` first and in sync once `delay` has
    /// passed (as a base backup and catch-up would take); a replica already in sync stays
    /// in sync through a role change.
    Lagging {
        /// How long a new replica catches up.
        delay: Duration,
    },
}

/// How a [`Fleet`] behaves.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// The replicas' states.
    pub model: ReplicaModel,
    /// How often each node heartbeats (the cluster's `failureDetection.heartbeatIntervalMs`).
    pub heartbeat_interval: Duration,
    /// Replica reports in flight at once, across the fleet: the bound that keeps a fleet of
    /// a thousand nodes from flooding the API server after a mass placement.
    pub max_in_flight: usize,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            model: ReplicaModel::InSync,
            heartbeat_interval: Duration::from_millis(500),
            max_in_flight: 48,
        }
    }
}

/// What a fleet has written so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetStats {
    /// Replica reports written (a replica's state, role or epoch changed).
    pub reports: u64,
    /// Reports withdrawn (the operator no longer wants the replica on the node).
    pub withdrawals: u64,
    /// Writes the API server refused with `409 Conflict`.
    pub conflicts: u64,
    /// Writes that failed otherwise.
    pub errors: u64,
}

/// A running fleet; dropping it is every node dying at once.
pub struct Fleet {
    shared: Arc<Shared>,
    reports: JoinHandle<()>,
}

struct Shared {
    shards: Api<Shard>,
    leases: Api<Lease>,
    /// Where each node's heartbeat key is (its certificate Secret, which the operator
    /// issues to simulated nodes as to real ones).
    secrets: Api<Secret>,
    namespace: String,
    operators: Vec<SocketAddr>,
    config: FleetConfig,
    /// The live nodes: their liveness task and agent epoch.
    live: Mutex<BTreeMap<String, LiveNode>>,
    /// Every node the fleet simulates, live or killed, with its last agent epoch.
    epochs: Mutex<BTreeMap<String, i64>>,
    /// Reports written or being written that the watch has not shown yet, by (shard, node).
    unseen: Mutex<HashMap<(String, String), Unseen>>,
    /// When each replica not yet in sync was first wanted (for [`ReplicaModel::Lagging`]).
    catching_up_since: Mutex<HashMap<(String, String), Instant>>,
    permits: Arc<Semaphore>,
    rescan: Notify,
    /// Shards to look at again because a lagging replica's delay is up.
    due: mpsc::UnboundedSender<String>,
    counts: Counts,
}

struct LiveNode {
    liveness: JoinHandle<()>,
}

struct Unseen {
    report: Option<ObservedReplica>,
    at: Instant,
}

#[derive(Default)]
struct Counts {
    reports: AtomicU64,
    withdrawals: AtomicU64,
    conflicts: AtomicU64,
    errors: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Fleet {
    /// Starts simulated agents for `nodes` (DatabaseNodes of `namespace`, registered by
    /// someone else), heartbeating every operator replica in `operators`. Their first
    /// heartbeats are spread over one heartbeat interval, so a large fleet does not beat in
    /// lockstep. Must be called inside a tokio runtime.
    pub fn start(
        client: Client,
        namespace: &str,
        nodes: Vec<String>,
        operators: Vec<SocketAddr>,
        config: FleetConfig,
    ) -> Fleet {
        let (due, due_shards) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            shards: Api::namespaced(client.clone(), namespace),
            leases: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            operators,
            permits: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            config,
            live: Mutex::default(),
            epochs: Mutex::default(),
            unseen: Mutex::default(),
            catching_up_since: Mutex::default(),
            rescan: Notify::new(),
            due,
            counts: Counts::default(),
        });
        let count = nodes.len().max(1) as u32;
        for (i, node) in nodes.iter().enumerate() {
            let offset = shared.config.heartbeat_interval * i as u32 / count;
            shared.start_node(node, offset);
        }
        let reports = tokio::spawn(report_loop(shared.clone(), due_shards));
        Fleet { shared, reports }
    }

    /// The node dies: no more heartbeats, Lease renewals or replica reports (a write already
    /// in flight may still land, as a dying agent's last one may). Returns whether it was
    /// live.
    pub fn kill(&self, node: &str) -> bool {
        match lock(&self.shared.live).remove(node) {
            Some(live) => {
                live.liveness.abort();
                true
            }
            None => false,
        }
    }

    /// Kills every node of `nodes` (a region, say); returns how many were live.
    pub fn kill_many<'a>(&self, nodes: impl IntoIterator<Item = &'a str>) -> usize {
        nodes.into_iter().filter(|node| self.kill(node)).count()
    }

    /// Starts `node` again (or for the first time) as a restarted agent: a new agent epoch,
    /// heartbeats at once, and reports of what the operator wants on it now.
    pub fn revive(&self, node: &str) {
        self.shared.start_node(node, Duration::ZERO);
        self.shared.rescan.notify_one();
    }

    /// Whether `node` is live in this fleet.
    pub fn is_live(&self, node: &str) -> bool {
        lock(&self.shared.live).contains_key(node)
    }

    /// Every node this fleet simulates, live or killed.
    pub fn nodes(&self) -> Vec<String> {
        lock(&self.shared.epochs).keys().cloned().collect()
    }

    /// What the fleet has written so far.
    pub fn stats(&self) -> FleetStats {
        let counts = &self.shared.counts;
        FleetStats {
            reports: counts.reports.load(Ordering::Relaxed),
            withdrawals: counts.withdrawals.load(Ordering::Relaxed),
            conflicts: counts.conflicts.load(Ordering::Relaxed),
            errors: counts.errors.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.reports.abort();
        for (_, live) in std::mem::take(&mut *lock(&self.shared.live)) {
            live.liveness.abort();
        }
    }
}

/// `node`'s heartbeat key, once the operator issued its certificate Secret (read again every
/// second until then).
async fn heartbeat_key(secrets: &Api<Secret>, node: &str) -> Vec<u8> {
    loop {
        if let Ok(Some(secret)) = secrets.get_opt(&node_secret_name(node)).await
            && let Some(key) = secret_text(&secret, HEARTBEAT_KEY)
        {
            return key.into_bytes();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl Shared {
    /// Starts `node`'s liveness after `offset`, at the next agent epoch; a node already live
    /// is left as it is.
    fn start_node(&self, node: &str, offset: Duration) {
        let mut live = lock(&self.live);
        if live.contains_key(node) {
            return;
        }
        let agent_epoch = {
            let mut epochs = lock(&self.epochs);
            let epoch = epochs.entry(node.to_owned()).or_insert(0);
            *epoch += 1;
            *epoch
        };
        let beat = Heartbeat {
            namespace: self.namespace.clone(),
            node: node.to_owned(),
            agent_epoch,
        };
        let key = HeartbeatKey::default();
        let reporter = LivenessReporter::new(
            self.operators.clone(),
            beat,
            key.clone(),
            self.leases.clone(),
        );
        let interval = self.config.heartbeat_interval;
        let (secrets, name) = (self.secrets.clone(), node.to_owned());
        let liveness = tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            key.set(&heartbeat_key(&secrets, &name).await);
            reporter.run(|| interval).await;
        });
        live.insert(node.to_owned(), LiveNode { liveness });
    }

    fn is_live(&self, node: &str) -> bool {
        lock(&self.live).contains_key(node)
    }

    /// Writes, for every live node the shard names (wanted or reported there), the report
    /// the model gives where it differs from what is reported, unless that very report is
    /// already on its way.
    async fn reconcile(self: &Arc<Self>, shard: &Shard) {
        let name = shard.name_any();
        let Some(status) = shard.status.as_ref() else {
            return;
        };
        let epoch = status.primary.as_ref().map_or(0, |p| p.epoch);
        let mut nodes: Vec<&str> = status
            .desired_replicas
            .iter()
            .map(|d| d.node.as_str())
            .chain(status.replicas.iter().map(|r| r.node.as_str()))
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        for node in nodes {
            if !self.is_live(node) {
                continue;
            }
            let key = (name.clone(), node.to_owned());
            let reported = status.replicas.iter().find(|r| r.node == node);
            let wanted = status
                .desired_replicas
                .iter()
                .find(|d| d.node == node)
                .map(|d| {
                    let state = self.model_state(&key, reported);
                    replica_report(node, d.role, state, epoch)
                });
            if wanted.is_none() {
                lock(&self.catching_up_since).remove(&key);
            }
            if same_report(reported, wanted.as_ref()) {
                lock(&self.unseen).remove(&key);
                continue;
            }
            {
                let mut unseen = lock(&self.unseen);
                if unseen
                    .get(&key)
                    .is_some_and(|u| u.report == wanted && u.at.elapsed() < UNSEEN_WRITE_RETRY)
                {
                    continue;
                }
                unseen.insert(
                    key.clone(),
                    Unseen {
                        report: wanted.clone(),
                        at: Instant::now(),
                    },
                );
            }
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                return;
            };
            let shared = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                shared.write(key, wanted).await;
            });
        }
    }

    /// The state the model gives the replica of `key` now, given what its node reported.
    fn model_state(
        &self,
        key: &(String, String),
        reported: Option<&ObservedReplica>,
    ) -> ReplicaState {
        let ReplicaModel::Lagging { delay } = self.config.model else {
            return ReplicaState::InSync;
        };
        if reported.is_some_and(|r| r.state == ReplicaState::InSync) {
            return ReplicaState::InSync;
        }
        let mut since = lock(&self.catching_up_since);
        let since = *since.entry(key.clone()).or_insert_with(|| {
            let due = self.due.clone();
            let shard = key.0.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = due.send(shard);
            });
            Instant::now()
        });
        if since.elapsed() >= delay {
            ReplicaState::InSync
        } else {
            ReplicaState::CatchingUp
        }
    }

    async fn write(&self, (shard, node): (String, String), report: Option<ObservedReplica>) {
        if !self.is_live(&node) {
            lock(&self.unseen).remove(&(shard, node));
            return;
        }
        match report_replica(&self.shards, &shard, &node, report.as_ref()).await {
            Ok(()) => {
                let counter = match report {
                    Some(_) => &self.counts.reports,
                    None => &self.counts.withdrawals,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                let counter = match &error {
                    kube::Error::Api(status) if status.code == 409 => &self.counts.conflicts,
                    _ => &self.counts.errors,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%error, shard, node, "replica report not written");
                lock(&self.unseen).remove(&(shard, node));
            }
        }
    }
}

/// What an agent reports of a replica it holds in `role` and `state` under `epoch`: the
/// stand-in endpoint changes with the epoch, as a promoted replica's would.
fn replica_report(
    node: &str,
    role: ReplicaRole,
    state: ReplicaState,
    epoch: i64,
) -> ObservedReplica {
    ObservedReplica {
        node: node.to_owned(),
        role,
        state,
        endpoint: Some(format!("127.0.0.1:{}", 20000 + epoch)),
        lag_bytes: Some(0),
        epoch: Some(epoch),
        received_lsn: None,
        last_seen_time: None,
    }
}

/// Whether `reported` already says what `wanted` would (role, state, epoch), or both are
/// absent.
fn same_report(reported: Option<&ObservedReplica>, wanted: Option<&ObservedReplica>) -> bool {
    match (reported, wanted) {
        (Some(r), Some(w)) => r.role == w.role && r.state == w.state && r.epoch == w.epoch,
        (None, None) => true,
        _ => false,
    }
}

/// The one watch of the namespace's Shards and the periodic rescan, driving every node's
/// reports.
async fn report_loop(shared: Arc<Shared>, mut due_shards: mpsc::UnboundedReceiver<String>) {
    let (store, writer) = reflector::store();
    let events = reflector(
        writer,
        watcher::watcher(shared.shards.clone(), watcher::Config::default()).default_backoff(),
    );
    let mut events = std::pin::pin!(events);
    let mut rescan = tokio::time::interval(RESCAN);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let everything = tokio::select! {
            event = events.next() => match event {
                Some(Ok(Event::Apply(shard) | Event::InitApply(shard))) => {
                    shared.reconcile(&shard).await;
                    false
                }
                Some(Ok(Event::InitDone)) => true,
                Some(Ok(Event::Init | Event::Delete(_))) => false,
                Some(Err(error)) => {
                    tracing::debug!(%error, "shard watch interrupted");
                    false
                }
                None => return,
            },
            Some(shard) = due_shards.recv() => {
                let key = ObjectRef::new(&shard).within(&shared.namespace);
                if let Some(shard) = store.get(&key) {
                    shared.reconcile(&shard).await;
                }
                false
            }
            _ = rescan.tick() => true,
            () = shared.rescan.notified() => true,
        };
        if everything {
            for shard in store.state() {
                shared.reconcile(&shard).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_differs_in_role_state_or_epoch_and_not_in_endpoint() {
        let report = replica_report("n1", ReplicaRole::Secondary, ReplicaState::InSync, 2);
        assert!(same_report(Some(&report), Some(&report)));
        assert!(same_report(None, None));
        assert!(!same_report(Some(&report), None));
        assert!(!same_report(None, Some(&report)));
        let moved = |f: fn(&mut ObservedReplica)| {
            let mut other = report.clone();
            f(&mut other);
            same_report(Some(&report), Some(&other))
        };
        assert!(!moved(|r| r.role = ReplicaRole::Primary));
        assert!(!moved(|r| r.state = ReplicaState::CatchingUp));
        assert!(!moved(|r| r.epoch = Some(3)));
        assert!(moved(|r| r.endpoint = None));
    }
}
