//! The node agent's run loop (`shardplane agent`): registers the DatabaseNode, reads the
//! PostgreSQL credentials from a Secret, proves liveness to the operator (heartbeats and the
//! node Lease, `protocol.rs`) and turns a lost proof into self-fencing, reports the node's
//! version and disk use, and runs one task per shard replica wanted on (or left on) this node
//! (`replicas.rs`), feeding each the newest Shard whenever a Shard or node changes.
//!
//! Self-fencing: liveness is proven at the send time of a heartbeat a leader answered, or at
//! the start of a successful Lease renewal; the operator counts the node alive until at
//! least that instant plus `deadAfterMs`. The agent declares itself not live once the last
//! proof is older than `suspectAfterMs` — judged on the local clock alone, never on a call
//! returning — and its primaries then fence their writes (`self_fence.rs`, which touches only
//! local PostgreSQL) — well before the operator can declare the node dead and promote
//! elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::api::database_node::{DatabaseNodeSpec, NodeCapacity, PortRange};
use crate::api::{DatabaseCluster, DatabaseNode, Shard};
use crate::protocol::Heartbeat;

use super::api_client;
use super::certificates;
use super::config::{
    AgentConfig, DEFAULT_CREDENTIALS_SECRET, REPLICATION_PASSWORD_KEY, SUPERUSER_PASSWORD_KEY,
};
use super::configuration;
use super::context::NodeContext;
use super::error::AgentError;
use super::failsafe;
use super::fence_locks::FenceLocks;
use super::postgres::{Credentials, InstanceSettings, Toolchain, WalLevel};
use super::protocol::{self, HeartbeatKey, LivenessReporter};
use super::record::{ReplicaRecord, replica_dir};
use super::replicas;
use super::roles;
use super::self_fence;

/// How often liveness is re-evaluated against the last proof.
const LIVENESS_CHECK: Duration = Duration::from_millis(50);
/// How often the node's version and disk use are reported.
const NODE_STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// How often the dispatcher looks at the shards even when no watch event arrived.
const DISPATCH_TICK: Duration = Duration::from_secs(1);

/// Runs the agent until the process is stopped (or a start-up step fails). `client` serves
/// the watches; calls go through a client of their own with deadlines (`api_client.rs`).
pub async fn run(client: Client, config: AgentConfig) -> Result<(), AgentError> {
    let toolchain = Toolchain::detect()?;
    let calls = api_client::with_deadlines()
        .await
        .map_err(AgentError::api("configuring the API client"))?;
    let node = register(&calls, &config).await?;
    let agent_epoch = next_agent_epoch(&config.data_dir)?;
    let watched = |client: &Client| -> Api<DatabaseCluster> {
        Api::namespaced(client.clone(), &config.namespace)
    };
    let notify = Arc::new(Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    let shards = reflect(
        Api::<Shard>::namespaced(client.clone(), &config.namespace),
        &notify,
        &mut tasks,
    );
    let nodes = reflect(
        Api::<DatabaseNode>::namespaced(client.clone(), &config.namespace),
        &notify,
        &mut tasks,
    );
    let clusters = reflect(watched(&client), &notify, &mut tasks);
    clusters.wait_until_ready().await.ok();
    let cluster = clusters
        .state()
        .into_iter()
        .find(|c| c.name_any() == node.spec.cluster);
    let credentials = credentials(&calls, &config, cluster.as_deref()).await?;
    let heartbeat_key = HeartbeatKey::default();
    let (tls, peers) = certificates::install_first(
        &Api::namespaced(calls.clone(), &config.namespace),
        &config.node,
        &config.data_dir,
        &toolchain,
        &heartbeat_key,
    )
    .await?;

    let (live_tx, live) = watch::channel(false);
    let ports = (
        u16::try_from(node.spec.ports.first).unwrap_or(u16::MAX),
        u16::try_from(node.spec.ports.last).unwrap_or(0),
    );
    let ctx = Arc::new(NodeContext {
        node: config.node.clone(),
        address: node.spec.address.clone(),
        ports,
        data_dir: config.data_dir.clone(),
        settings: InstanceSettings {
            fsync: config.fsync,
            // A primary may become the source of a split or merge (a row-filtered
            // publication), which needs logical decoding.
            wal_level: WalLevel::Logical,
            listen_address: Some(node.spec.address.clone()),
            tls: Some(tls),
            ..InstanceSettings::default()
        },
        toolchain,
        credentials: credentials.with_tls(peers),
        live,
        fence_locks: FenceLocks::default(),
        client: calls,
        namespace: config.namespace.clone(),
        cluster: node.spec.cluster.clone(),
        nodes,
        clusters,
        reserved_ports: Mutex::new(BTreeSet::new()),
        instances: Default::default(),
        access: Default::default(),
        failsafe: Default::default(),
        certificates: Default::default(),
        heartbeat_key,
        roles: Default::default(),
    });
    let beat = Heartbeat {
        namespace: config.namespace.clone(),
        node: config.node.clone(),
        agent_epoch,
    };
    spawn_liveness_thread(
        ctx.clone(),
        config.operators.clone(),
        beat,
        live_tx,
        shards.clone(),
    )?;
    tasks.spawn(report_node_status(ctx.clone(), agent_epoch));
    let renewing = ctx.clone();
    tasks.spawn(async move { certificates::keep_renewed(&renewing).await });
    tasks.spawn(roles::keep_read(ctx.clone()));
    tracing::info!(node = %config.node, agent_epoch, "agent started");
    tokio::select! {
        () = dispatch(ctx, shards, notify) => {}
        Some(ended) = tasks.join_next() => {
            tracing::error!(?ended, "an agent task ended");
        }
    }
    Ok(())
}

/// A watch-fed cache of `api`'s objects; every event wakes the dispatcher.
fn reflect<K>(api: Api<K>, notify: &Arc<Notify>, tasks: &mut tokio::task::JoinSet<()>) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    let notify = notify.clone();
    tasks.spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(error) = event {
                tracing::debug!(%error, "watch interrupted");
            }
            notify.notify_one();
        }
    });
    reader
}

/// Creates the DatabaseNode from the registration flags unless it exists; returns it.
async fn register(client: &Client, config: &AgentConfig) -> Result<DatabaseNode, AgentError> {
    let nodes: Api<DatabaseNode> = Api::namespaced(client.clone(), &config.namespace);
    let what = format!("reading DatabaseNode {}/{}", config.namespace, config.node);
    if let Some(node) = nodes
        .get_opt(&config.node)
        .await
        .map_err(AgentError::api(what))?
    {
        return Ok(node);
    }
    let r = &config.registration;
    let missing = r.missing_flags();
    let (
        Some(cluster),
        Some(region),
        Some(zone),
        Some(address),
        Some((first, last)),
        Some(storage_bytes),
    ) = (
        r.cluster.clone(),
        r.region.clone(),
        r.zone.clone(),
        r.address.clone(),
        r.ports,
        r.storage_bytes,
    )
    else {
        return Err(AgentError::Unregistered {
            node: config.node.clone(),
            namespace: config.namespace.clone(),
            missing,
        });
    };
    let node = DatabaseNode::new(
        &config.node,
        DatabaseNodeSpec {
            cluster,
            region,
            zone,
            address,
            ports: PortRange {
                first: first.into(),
                last: last.into(),
            },
            capacity: NodeCapacity {
                storage_bytes,
                max_replicas: None,
            },
            weight: None,
            desired_state: None,
        },
    );
    let what = format!(
        "registering DatabaseNode {}/{}",
        config.namespace, config.node
    );
    let created = nodes
        .create(&PostParams::default(), &node)
        .await
        .map_err(AgentError::api(what))?;
    tracing::info!(node = %config.node, "registered the DatabaseNode");
    Ok(created)
}

/// Prepares the data folder; bumps and returns the agent epoch kept there (1 on a node's
/// first start).
fn next_agent_epoch(data_dir: &Path) -> Result<i64, AgentError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AgentError::Io { path, source }
    };
    // PostgreSQL runs as its own user, which must traverse these folders to the instances'
    // own (0700, its own) folders.
    let replicas = replica_dir(data_dir, "");
    std::fs::create_dir_all(&replicas).map_err(io(&replicas))?;
    for dir in [data_dir, replicas.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(io(dir))?;
    }
    let path = data_dir.join("agent-epoch");
    let previous = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| text.trim().parse::<i64>().ok())
        .unwrap_or(0);
    std::fs::write(&path, (previous + 1).to_string()).map_err(io(&path))?;
    Ok(previous + 1)
}

/// The passwords from the Secret named by the flag, else by the cluster, else the default.
async fn credentials(
    client: &Client,
    config: &AgentConfig,
    cluster: Option<&DatabaseCluster>,
) -> Result<Credentials, AgentError> {
    let secret_name = config
        .credentials_secret
        .clone()
        .or_else(|| cluster.and_then(|c| c.spec.credentials_secret.clone()))
        .unwrap_or_else(|| DEFAULT_CREDENTIALS_SECRET.to_owned());
    let problem = |problem: &str| AgentError::Credentials {
        namespace: config.namespace.clone(),
        secret: secret_name.clone(),
        problem: problem.to_owned(),
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    let what = format!("reading Secret {}/{secret_name}", config.namespace);
    let secret = secrets
        .get_opt(&secret_name)
        .await
        .map_err(AgentError::api(what))?
        .ok_or_else(|| problem("does not exist"))?;
    let data = secret.data.unwrap_or_default();
    let key = |key: &str| -> Result<String, AgentError> {
        let bytes = data
            .get(key)
            .ok_or_else(|| problem(&format!("has no key {key}")))?;
        String::from_utf8(bytes.0.clone())
            .ok()
            .filter(|text| !text.is_empty())
            .ok_or_else(|| problem(&format!("key {key} is empty or not UTF-8")))
    };
    Ok(Credentials::new(
        key(SUPERUSER_PASSWORD_KEY)?,
        key(REPLICATION_PASSWORD_KEY)?,
    ))
}

/// Runs [`prove_liveness`], the failsafe (`failsafe.rs`: its endpoint and its questions to
/// the peers) and the self-fence keeper (`self_fence.rs`) on a thread of its own with its own
/// runtime and API client (with deadlines), so that replica work (PostgreSQL sessions' SCRAM
/// handshakes, process starts) and replica tasks stuck in API calls never delay a heartbeat,
/// the fence decision or the fence. It runs for the life of the process.
fn spawn_liveness_thread(
    ctx: Arc<NodeContext>,
    operators: Vec<std::net::SocketAddr>,
    beat: Heartbeat,
    live: watch::Sender<bool>,
    shards: Store<Shard>,
) -> Result<(), AgentError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| AgentError::Io {
            path: "liveness runtime".into(),
            source,
        })?;
    let thread = std::thread::Builder::new()
        .name("liveness".into())
        .spawn(move || {
            runtime.block_on(async move {
                let keeper = self_fence::keep(&ctx);
                let client = match api_client::with_deadlines().await {
                    Ok(client) => client,
                    Err(error) => {
                        tracing::error!(%error, "no API client for liveness: this node never proves it is live");
                        keeper.await;
                        return;
                    }
                };
                let leases: Api<Lease> = Api::namespaced(client, &beat.namespace);
                tokio::join!(
                    prove_liveness(&ctx, operators, beat, leases, &live),
                    failsafe::serve(ctx.clone()),
                    failsafe::ask_peers(&ctx, &shards),
                    keeper
                );
            });
        });
    thread.map(drop).map_err(|source| AgentError::Io {
        path: "liveness thread".into(),
        source,
    })
}

/// Heartbeats every `heartbeatIntervalMs` and keeps `live` true exactly while the last proof
/// of liveness is younger than `suspectAfterMs`.
async fn prove_liveness(
    ctx: &NodeContext,
    operators: Vec<std::net::SocketAddr>,
    beat: Heartbeat,
    leases: Api<Lease>,
    live: &watch::Sender<bool>,
) {
    let reporter = LivenessReporter::new(operators, beat, ctx.heartbeat_key.clone(), leases);
    let judge = async {
        let mut failsafe_logged = false;
        loop {
            let suspect = ctx.failure_detection().suspect_after();
            let control_plane = reporter.last_proof();
            ctx.failsafe.control_plane_proved(control_plane);
            let peers = ctx.failsafe.peers_proof();
            let now_live = control_plane
                .max(peers)
                .is_some_and(|at| at.elapsed() < suspect);
            let by_peers_only = now_live && control_plane.is_none_or(|at| at.elapsed() >= suspect);
            if by_peers_only != failsafe_logged {
                failsafe_logged = by_peers_only;
                if by_peers_only {
                    tracing::warn!(
                        "the control plane is out of reach; every peer confirms this node (failsafe): its primaries keep their writes"
                    );
                }
            }
            live.send_if_modified(|was| {
                if *was == now_live {
                    return false;
                }
                if now_live {
                    tracing::info!("liveness proven");
                } else {
                    tracing::warn!(
                        suspect_after_ms = suspect.as_millis() as u64,
                        "liveness not proven; primaries fence their writes"
                    );
                }
                *was = now_live;
                true
            });
            tokio::time::sleep(LIVENESS_CHECK).await;
        }
    };
    let interval = || ctx.failure_detection().heartbeat_interval();
    tokio::join!(judge, reporter.run(interval));
}

/// Reports the agent-owned fields of the node's status now, every [`NODE_STATUS_INTERVAL`]
/// and whenever an instance's configuration report changes: software and PostgreSQL
/// versions, disk use, agent epoch, the cluster's parameters as the instances run them, and
/// the plan whose restart every instance carried out (`configuration.rs`).
async fn report_node_status(ctx: Arc<NodeContext>, agent_epoch: i64) {
    let postgres_version = postgres_version(&ctx.toolchain).await;
    let major = postgres_version
        .as_deref()
        .and_then(|v| v.split('.').next())
        .unwrap_or("0")
        .to_owned();
    let version = format!("{major}-shardplane.{}", env!("CARGO_PKG_VERSION"));
    let mut used = None;
    let mut next_full_report = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_full_report || used.is_none() {
            let dir = ctx.data_dir.clone();
            used = Some(
                tokio::task::spawn_blocking(move || disk_use(&dir))
                    .await
                    .unwrap_or(0),
            );
            next_full_report = tokio::time::Instant::now() + NODE_STATUS_INTERVAL;
        }
        let requested = ctx.restart_requested();
        let summary = configuration::summarize(
            &ctx.instances.snapshot(),
            requested.as_deref(),
            ctx.parameters().1,
        );
        let mut status = json!({
            "version": version,
            "postgresVersion": postgres_version,
            "usedBytes": used,
            "agentEpoch": agent_epoch,
            "parameters": summary.parameters,
            "failedInstances": summary.failed,
            "roleFailures": roles::failures(&ctx),
        });
        if let Some(plan) = summary.restarted_for {
            status["restartedFor"] = json!(plan);
        }
        if let Some(expires) = certificates::installed_not_after(&ctx) {
            status["certificateNotAfter"] = json!(expires);
        }
        if let Err(error) =
            protocol::report_node_status(&ctx.api::<DatabaseNode>(), &ctx.node, status).await
        {
            tracing::warn!(%error, "node status not reported");
        }
        tokio::select! {
            () = ctx.instances.changed.notified() => {}
            () = tokio::time::sleep_until(next_full_report) => {}
        }
    }
}

/// `15.8` from `postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)`.
async fn postgres_version(toolchain: &Toolchain) -> Option<String> {
    let output = tokio::process::Command::new(toolchain.bin_dir().join("postgres"))
        .arg("--version")
        .output()
        .await
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .nth(2)
        .map(str::to_owned)
}

/// Bytes of the files under `dir` (a folder the agent cannot read counts as empty).
fn disk_use(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => disk_use(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// The replica tasks by shard: the channel feeding each its newest Shard, and the task.
type Workers = BTreeMap<String, (watch::Sender<Option<Arc<Shard>>>, JoinHandle<()>)>;

/// Keeps one replica task per shard replica wanted on this node, and per replica folder
/// left from an earlier run, and feeds each the newest Shard.
async fn dispatch(ctx: Arc<NodeContext>, shards: Store<Shard>, notify: Arc<Notify>) {
    shards.wait_until_ready().await.ok();
    let mut workers: Workers = BTreeMap::new();
    // Replicas left by an earlier run: their ports are taken before any new one is chosen.
    let mut leftovers = local_replicas(&ctx);
    loop {
        ctx.refresh_access();
        let current = shards.state();
        workers.retain(|_, (_, task)| !task.is_finished());
        for name in leftovers.drain(..) {
            let newest = current.iter().find(|s| s.name_any() == name).cloned();
            spawn_worker(&ctx, &mut workers, &name, newest);
        }
        for shard in &current {
            let wanted = shard
                .status
                .as_ref()
                .is_some_and(|s| s.desired_replicas.iter().any(|d| d.node == ctx.node));
            let name = shard.name_any();
            if wanted && !workers.contains_key(&name) {
                spawn_worker(&ctx, &mut workers, &name, Some(shard.clone()));
            }
        }
        for (name, (sender, _)) in &workers {
            let newest = current.iter().find(|s| &s.name_any() == name).cloned();
            sender.send_replace(newest);
        }
        tokio::select! {
            () = notify.notified() => {}
            () = tokio::time::sleep(DISPATCH_TICK) => {}
        }
    }
}

fn spawn_worker(
    ctx: &Arc<NodeContext>,
    workers: &mut Workers,
    shard: &str,
    newest: Option<Arc<Shard>>,
) {
    let (sender, receiver) = watch::channel(newest);
    let task = tokio::spawn(replicas::run(ctx.clone(), shard.to_owned(), receiver));
    workers.insert(shard.to_owned(), (sender, task));
}

/// Shards with a replica folder under the data folder; reserves the recorded ports.
fn local_replicas(ctx: &NodeContext) -> Vec<String> {
    let root = replica_dir(&ctx.data_dir, "");
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    let mut shards = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(Some(record)) = ReplicaRecord::load(&entry.path()) {
            ctx.reserved_ports
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(record.port);
        }
        shards.push(name);
    }
    shards
}
