//! A real data plane for tests and benchmarks: three nodes in three zones, each a
//! `shardplane agent` child process (so SIGKILL is a real node death, its PostgreSQL
//! included), an operator running in this process, and a Table with declared Shards.
//! Shared by the real-agent tests (`tests/agent.rs`, `dataplane.rs`, `reshard.rs`,
//! `schema_rollout.rs`) and benchmarks, each of which also includes `tests/support/` (the
//! operator process, its kill loop and its Lease are there, shared with the stand-in-agent
//! suite); it needs only a client and a kubeconfig of a control plane with the CRDs installed.

// The test and the benchmark each use a different part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use shardplane::api::shard::{ObservedReplica, ReplicaRole, ReplicaState};
use shardplane::api::{DatabaseCluster, Shard, Table};
use shardplane::protocol::Endpoint;
use shardplane::routing::{ShardKeyValue, keyspace_id};
use shardplane::workload::{CheckReport, Checker, Workload, WorkloadConfig, WorkloadReport};
use tokio::task::JoinHandle;

use crate::support::eventually;
use crate::support::operator::{self, OperatorProcess, free_addr};

#[path = "faults.rs"]
pub mod faults;
#[path = "network.rs"]
pub mod network;
#[path = "probes.rs"]
pub mod probes;
#[path = "regions.rs"]
pub mod regions;
#[path = "wan.rs"]
pub mod wan;
use network::TestNetwork;

/// A node: name, region, zone, first port of its range (20 ports each).
pub type NodeDef = (&'static str, &'static str, &'static str, u16);

/// The nodes of [`DataPlane::start`].
pub const NODES: [NodeDef; 3] = [
    ("n1", "r1", "r1-a", 25100),
    ("n2", "r2", "r2-a", 25200),
    ("n3", "r3", "r3-a", 25300),
];
/// The superuser password of the test's replica sets.
pub const SUPERUSER_PASSWORD: &str = "test-superuser-secret";
/// The table every shard holds.
pub const TABLE: &str = "orders";
/// The identity of the operator of [`OperatorMode::InProcess`].
const IN_PROCESS_IDENTITY: &str = "op-a";

/// One `shardplane agent` process.
pub struct AgentProcess {
    child: Child,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
}

impl AgentProcess {
    /// SIGKILL: the node dies at once, with its PostgreSQL instances (their parent-death
    /// signal).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How the plane's operator runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorMode {
    /// A task of this process (aborting it is a crash).
    InProcess,
    /// `n` `shardplane operator` processes (identities `op-0`, `op-1`, ...), each with its own
    /// heartbeat address; every agent heartbeats all of them; one leads by the Lease.
    Processes(usize),
}

/// The running data plane of one namespace.
pub struct DataPlane {
    /// A client of the control plane.
    pub client: Client,
    /// The namespace everything lives in.
    pub namespace: String,
    /// The control plane's kubeconfig, for the agents.
    pub kubeconfig: PathBuf,
    /// The operator's heartbeat address (the first replica's, with [`OperatorMode::Processes`]).
    pub operator_addr: SocketAddr,
    /// The agents by node.
    pub agents: BTreeMap<String, AgentProcess>,
    /// The operator replicas, with [`OperatorMode::Processes`] (agents heartbeat each one).
    pub operators: Vec<OperatorProcess>,
    /// Each operator replica's own proxy to the API server, by index, to cut one off.
    pub operator_proxies: Vec<ApiProxy>,
    operator: Option<JoinHandle<()>>,
    /// Every node the plane may run (the cluster declares their regions and zones).
    nodes: Vec<NodeDef>,
    port_offset: u16,
    /// The hosts the nodes run on, when they are not all this host's loopback.
    hosts: Option<Hosts>,
    dir: tempfile::TempDir,
}

/// The plane's nodes as hosts of a test network (`network.rs`).
struct Hosts {
    network: TestNetwork,
    /// The agents' kubeconfig: the API server through a proxy on the gateway.
    kubeconfig: PathBuf,
    /// That proxy.
    proxy: ApiProxy,
    /// The operator's own proxy to the API server (on loopback).
    operator_proxy: ApiProxy,
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        if let Some(operator) = &self.operator {
            operator.abort();
        }
    }
}

/// A TCP proxy in front of the API server, to cut agents off from it. Every connection is
/// forwarded while the link is open. [`ApiProxy::cut`] drops open connections and refuses new
/// ones (a refused connection fails at once); [`ApiProxy::freeze`] is a partition that drops
/// packets: connections are accepted and kept, open ones too, but no byte is forwarded in
/// either direction, so every call hangs until the caller's own deadline. Both last until
/// [`ApiProxy::restore`], which forwards again (bytes held by a freeze are then delivered).
pub struct ApiProxy {
    /// A kubeconfig that reaches the API server through the proxy.
    pub kubeconfig: PathBuf,
    /// Where the proxy listens.
    pub addr: SocketAddr,
    link: Arc<tokio::sync::watch::Sender<Link>>,
    task: JoinHandle<()>,
}

/// The state of an [`ApiProxy`]'s link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Open,
    Frozen,
    Cut,
}

impl ApiProxy {
    /// A proxy for the API server of `kubeconfig` (whose server is `https://127.0.0.1:<port>`);
    /// its own kubeconfig is written into `dir`.
    pub async fn start(kubeconfig: &Path, dir: &Path) -> Self {
        Self::start_on(kubeconfig, dir, Ipv4Addr::LOCALHOST).await
    }

    /// [`ApiProxy::start`] listening on `ip` (a test network's gateway, for agents on its
    /// hosts); its kubeconfig still verifies the server's certificate as `127.0.0.1`'s.
    pub async fn start_on(kubeconfig: &Path, dir: &Path, ip: Ipv4Addr) -> Self {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let proxy_addr = listener.local_addr().unwrap();
        let text = std::fs::read_to_string(kubeconfig).unwrap();
        let (server_line, server) = text
            .lines()
            .find_map(|l| Some((l, l.trim().strip_prefix("server: ")?)))
            .unwrap();
        let server = server.trim_matches('"').to_owned();
        let upstream: SocketAddr = server.trim_start_matches("https://").parse().unwrap();
        let indent = &server_line[..server_line.len() - server_line.trim_start().len()];
        let proxied = dir.join(format!("proxied-kubeconfig-{ip}-{}", proxy_addr.port()));
        std::fs::write(
            &proxied,
            text.replace(
                server_line,
                &format!(
                    "{indent}server: https://{proxy_addr}\n{indent}tls-server-name: {}",
                    upstream.ip()
                ),
            ),
        )
        .unwrap();
        let (link, watching) = tokio::sync::watch::channel(Link::Open);
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if *watching.borrow() == Link::Cut {
                    continue;
                }
                let mut cut_off = watching.clone();
                let link = watching.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (from_client, to_client) = inbound.into_split();
                    let (from_server, to_server) = outbound.into_split();
                    tokio::select! {
                        _ = async {
                            tokio::join!(
                                forward(from_client, to_server, link.clone()),
                                forward(from_server, to_client, link),
                            )
                        } => {}
                        _ = cut_off.wait_for(|link| *link == Link::Cut) => {}
                    }
                });
            }
        });
        ApiProxy {
            kubeconfig: proxied,
            addr: proxy_addr,
            link: Arc::new(link),
            task,
        }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.link.send_replace(Link::Cut);
    }

    /// Forwards nothing, in either direction, on open and new connections, without closing
    /// any: like a partition that drops packets.
    pub fn freeze(&self) {
        self.link.send_replace(Link::Frozen);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.link.send_replace(Link::Open);
    }
}

/// Copies bytes from `from` to `to` while the link is open; a chunk read while it is frozen
/// is held until it opens again (or is dropped with the connection when it is cut).
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut link: tokio::sync::watch::Receiver<Link>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if link.wait_for(|link| *link == Link::Open).await.is_err() {
            return;
        }
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if link.wait_for(|link| *link == Link::Open).await.is_err()
            || to.write_all(&chunk[..n]).await.is_err()
        {
            return;
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Creates `object` in `namespace`.
async fn create<K>(client: &Client, namespace: &str, object: &K)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), object)
        .await
        .unwrap();
}

/// A client of the API server `kubeconfig` names.
pub async fn client_of(kubeconfig: &Path) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    Client::try_from(config).unwrap()
}

/// The Secret, the cluster (RF 3, fast failure detection, replicas replaced only after
/// 300 s), the table and `shards` declared Shards tiling the key space.
pub async fn declare_cluster(client: &Client, namespace: &str, shards: usize) {
    declare_cluster_with(client, namespace, shards, &NODES).await;
}

/// [`declare_cluster`] with the regions and zones of `nodes`.
pub async fn declare_cluster_with(
    client: &Client,
    namespace: &str,
    shards: usize,
    nodes: &[NodeDef],
) {
    let mut zones: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (_, region, zone, _) in nodes {
        let in_region = zones.entry(region).or_default();
        if !in_region.contains(zone) {
            in_region.push(zone);
        }
    }
    let regions: Vec<serde_json::Value> = zones
        .into_iter()
        .map(|(name, zones)| json!({"name": name, "zones": zones}))
        .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("shardplane-postgres".into()),
            ..ObjectMeta::default()
        },
        data: Some(
            [
                ("superuser-password", SUPERUSER_PASSWORD),
                ("replication-password", "test-replication-secret"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect(),
        ),
        ..Secret::default()
    };
    create(client, namespace, &secret).await;
    let cluster: DatabaseCluster = serde_json::from_value(json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseCluster",
        "metadata": {"name": "main"},
        "spec": {
            "regions": regions,
            "replicationFactor": 3,
            "durability": {"mode": "Quorum", "syncReplicas": 1},
            "approval": {"safe": "Automatic", "disruptive": "Automatic", "destructive": "Manual"},
            "rebalancing": {"enabled": false},
            "failureDetection": {"heartbeatIntervalMs": 200, "suspectAfterMs": 600, "deadAfterMs": 1200, "replaceReplicasAfterSeconds": 300}
        }
    }))
    .unwrap();
    create(client, namespace, &cluster).await;
    let table: Table = serde_json::from_value(json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "Table",
        "metadata": {"name": TABLE},
        "spec": {"cluster": "main", "shardKey": "id",
                 "columns": [{"name": "id", "type": "bigint", "nullable": false}, {"name": "note", "type": "text"}],
                 "primaryKey": ["id"]}
    }))
    .unwrap();
    create(client, namespace, &table).await;
    let step = (1i128 << 64) / shards as i128;
    for i in 0..shards {
        let mut range = json!({});
        if i > 0 {
            range["start"] = json!((i128::from(i64::MIN) + i as i128 * step) as i64);
        }
        if i + 1 < shards {
            range["end"] = json!((i128::from(i64::MIN) + (i as i128 + 1) * step) as i64);
        }
        let shard: Shard = serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
            "metadata": {"name": format!("{TABLE}-{i}")},
            "spec": {"table": TABLE, "range": range}
        }))
        .unwrap();
        create(client, namespace, &shard).await;
    }
}

impl DataPlane {
    /// Declares the cluster, starts the operator and the three agents (which register their
    /// DatabaseNodes themselves).
    pub async fn start(client: Client, namespace: &str, kubeconfig: &Path, shards: usize) -> Self {
        Self::start_with(client, namespace, kubeconfig, shards, &NODES, NODES.len()).await
    }

    /// Declares the cluster with the zones of every node of `nodes`, starts the operator and
    /// the agents of the first `running` of them ([`DataPlane::start_agent`] starts others).
    pub async fn start_with(
        client: Client,
        namespace: &str,
        kubeconfig: &Path,
        shards: usize,
        nodes: &[NodeDef],
        running: usize,
    ) -> Self {
        Self::start_with_operator(
            client,
            namespace,
            kubeconfig,
            shards,
            nodes,
            running,
            OperatorMode::InProcess,
        )
        .await
    }

    /// [`DataPlane::start_with`] with the operator run as `mode` says.
    pub async fn start_with_operator(
        client: Client,
        namespace: &str,
        kubeconfig: &Path,
        shards: usize,
        nodes: &[NodeDef],
        running: usize,
        mode: OperatorMode,
    ) -> Self {
        Self::launch(
            client, namespace, kubeconfig, shards, nodes, running, mode, None,
        )
        .await
    }

    /// [`DataPlane::start_with`] with every node a host of `network` (added to it here): each
    /// agent and its instances in the host's namespace, at the host's address; the
    /// operator's heartbeat endpoint and the API server (through a proxy) on the gateway.
    pub async fn start_on_network(
        client: Client,
        namespace: &str,
        kubeconfig: &Path,
        shards: usize,
        nodes: &[NodeDef],
        mut network: TestNetwork,
    ) -> Self {
        for (node, ..) in nodes {
            network.add_host(node);
        }
        let mode = OperatorMode::InProcess;
        let running = nodes.len();
        Self::launch(
            client,
            namespace,
            kubeconfig,
            shards,
            nodes,
            running,
            mode,
            Some(network),
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn launch(
        client: Client,
        namespace: &str,
        kubeconfig: &Path,
        shards: usize,
        nodes: &[NodeDef],
        running: usize,
        mode: OperatorMode,
        network: Option<TestNetwork>,
    ) -> Self {
        declare_cluster_with(&client, namespace, shards, nodes).await;
        let dir = tempfile::tempdir().unwrap();
        // PostgreSQL runs as its own user, which must reach the instances' folders.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (in_process_addr, hosts) = match network {
            None => (free_addr(), None),
            Some(network) => {
                let gateway = network.gateway();
                let proxy = ApiProxy::start_on(kubeconfig, dir.path(), gateway).await;
                let operator_proxy = ApiProxy::start(kubeconfig, dir.path()).await;
                let listener = std::net::TcpListener::bind((gateway, 0)).unwrap();
                let hosts = Hosts {
                    kubeconfig: proxy.kubeconfig.clone(),
                    proxy,
                    operator_proxy,
                    network,
                };
                (listener.local_addr().unwrap(), Some(hosts))
            }
        };
        // On a test network the operator, too, reaches the API server through a proxy, so
        // that the control plane can be taken away from every component.
        let operator_client = match &hosts {
            None => client.clone(),
            Some(hosts) => client_of(&hosts.operator_proxy.kubeconfig).await,
        };
        let mut operator_proxies = Vec::new();
        let (operator, operators) = match mode {
            OperatorMode::InProcess => (
                Some(operator::start_in_process(
                    &operator_client,
                    namespace,
                    IN_PROCESS_IDENTITY,
                    in_process_addr,
                )),
                Vec::new(),
            ),
            OperatorMode::Processes(n) => {
                for _ in 0..n {
                    operator_proxies.push(ApiProxy::start(kubeconfig, dir.path()).await);
                }
                let operators: Vec<OperatorProcess> = operator_proxies
                    .iter()
                    .enumerate()
                    .map(|(i, proxy)| {
                        let identity = format!("op-{i}");
                        let log = dir.path().join(format!("operator-{identity}.log"));
                        OperatorProcess::spawn(
                            namespace,
                            &proxy.kubeconfig,
                            &identity,
                            free_addr(),
                            log,
                        )
                    })
                    .collect();
                (None, operators)
            }
        };
        let operator_addr = operators.first().map_or(in_process_addr, |o| o.addr);
        // Planes of one test binary run at once: each gets its own port ranges.
        static PLANES: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let port_offset = 1000 * PLANES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut plane = DataPlane {
            port_offset,
            client,
            namespace: namespace.to_owned(),
            kubeconfig: kubeconfig.to_owned(),
            operator_addr,
            agents: BTreeMap::new(),
            operator,
            operators,
            operator_proxies,
            nodes: nodes.to_vec(),
            hosts,
            dir,
        };
        for (node, ..) in &nodes[..running] {
            plane.start_agent(node);
        }
        plane
    }

    /// Stops the operator (a crash: its heartbeat endpoint stops answering).
    pub fn stop_operator(&mut self) {
        if let Some(operator) = &self.operator {
            operator.abort();
        }
    }

    /// Starts the operator again on the same heartbeat address.
    pub fn restart_operator(&mut self) {
        self.stop_operator();
        self.operator = Some(operator::start_in_process(
            &self.client,
            &self.namespace,
            IN_PROCESS_IDENTITY,
            self.operator_addr,
        ));
    }

    /// Every node the plane may run.
    pub fn nodes(&self) -> &[NodeDef] {
        &self.nodes
    }

    /// Every operator heartbeat address the agents are given.
    pub fn operator_addrs(&self) -> Vec<SocketAddr> {
        if self.operators.is_empty() {
            vec![self.operator_addr]
        } else {
            self.operators.iter().map(|o| o.addr).collect()
        }
    }

    /// SIGKILLs operator process `i` ([`OperatorMode::Processes`]).
    pub fn kill_operator(&mut self, i: usize) {
        self.operators[i].kill();
    }

    /// SIGKILLs operator process `i` if it runs and starts it again with the same identity on
    /// the same heartbeat address.
    pub fn respawn_operator(&mut self, i: usize) {
        self.operators[i].respawn();
    }

    /// Starts (or restarts, on the same data folder) the agent of `node`.
    pub fn start_agent(&mut self, node: &str) {
        let (_, region, zone, first_port) = self.nodes.iter().find(|n| n.0 == node).unwrap();
        let first_port = first_port + self.port_offset;
        let data_dir = self.dir.path().join(node);
        let log = self.dir.path().join(format!("{node}.log"));
        let program = env!("CARGO_BIN_EXE_shardplane");
        let (mut command, address, kubeconfig) = match &self.hosts {
            None => (
                Command::new(program),
                "127.0.0.1".to_owned(),
                &self.kubeconfig,
            ),
            Some(hosts) => (
                hosts.network.command(node, program),
                hosts.network.address(node).to_string(),
                &hosts.kubeconfig,
            ),
        };
        command
            .args(["agent", "--node", node, "--namespace", &self.namespace])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(
                self.operator_addrs()
                    .iter()
                    .flat_map(|addr| ["--operator".to_owned(), addr.to_string()]),
            )
            .args(["--cluster", "main", "--region", region, "--zone", zone])
            .args(["--address", &address, "--storage-bytes", "10000000000"])
            .args(["--ports", &format!("{first_port}-{}", first_port + 19)])
            .arg("--no-fsync");
        let child = operator::spawn_logged(command, kubeconfig, &log);
        self.agents
            .insert(node.to_owned(), AgentProcess { child, log });
    }

    /// Takes the control plane away from every component, as a stopped or frozen API server
    /// and operator would look to them: each host's packets to and from the API server's
    /// proxy and the operator's heartbeat port are dropped, and the operator's own link to
    /// the API server is frozen. The test's own client keeps working (it checks).
    pub fn cut_control_plane(&self) {
        let hosts = self
            .hosts
            .as_ref()
            .expect("the plane runs on a test network");
        for (node, ..) in &self.nodes {
            self.cut_control_plane_of(node);
        }
        hosts.operator_proxy.freeze();
    }

    /// Takes the control plane away from host `node` only ([`DataPlane::cut_control_plane`]
    /// for one host): its packets to and from the API server's proxy and the operator are
    /// dropped; its peers and clients still reach it. Healed by the network's `heal`.
    pub fn cut_control_plane_of(&self, node: &str) {
        let hosts = self
            .hosts
            .as_ref()
            .expect("the plane runs on a test network");
        let ports = [hosts.proxy.addr.port(), self.operator_addr.port()];
        hosts
            .network
            .cut_ports(node, hosts.network.gateway(), &ports);
    }

    /// Gives the control plane back ([`DataPlane::cut_control_plane`]).
    pub fn restore_control_plane(&self) {
        let hosts = self
            .hosts
            .as_ref()
            .expect("the plane runs on a test network");
        for (node, ..) in &self.nodes {
            hosts.network.heal(node);
        }
        hosts.operator_proxy.restore();
    }

    /// The test network the nodes are hosts of ([`DataPlane::start_on_network`]).
    pub fn network(&self) -> &TestNetwork {
        &self
            .hosts
            .as_ref()
            .expect("the plane runs on a test network")
            .network
    }

    /// Prints every agent's log (for a failed test).
    pub fn print_logs(&self) {
        let logs = self
            .agents
            .iter()
            .map(|(node, agent)| (format!("agent {node}"), &agent.log))
            .chain(
                self.operators
                    .iter()
                    .map(|o| (format!("operator {}", o.identity), &o.log)),
            );
        // Every log of the plane (agents', operators', instances'), kept for a post-mortem.
        if let Ok(keep) = std::env::var("SHARDPLANE_KEEP_LOGS") {
            let kept = std::path::Path::new(&keep).join(format!(
                "{}-{}",
                self.namespace,
                std::process::id()
            ));
            let _ = std::fs::create_dir_all(&kept);
            let copied = Command::new("sh")
                .arg("-c")
                .arg("cd \"$1\" && find . -name '*.log' -exec cp --parents {} \"$2\" \\;")
                .args([
                    "sh",
                    &self.dir.path().to_string_lossy(),
                    &kept.to_string_lossy(),
                ])
                .status();
            eprintln!("==== logs kept in {} ({copied:?}) ====", kept.display());
        }
        for (what, log) in logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("==== {what} (last lines) ====");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }

    /// The Shards API of the namespace.
    pub fn shards(&self) -> Api<Shard> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Every shard, sorted by name.
    pub async fn shard_list(&self) -> Vec<Shard> {
        let mut list = self.shards().list(&Default::default()).await.unwrap().items;
        list.sort_by_key(|s| s.name_any());
        list
    }

    /// Whether each of `count` shards has 3 ready replicas and serves.
    pub async fn all_serving(&self, count: usize) -> bool {
        let Ok(list) = self.shards().list(&Default::default()).await else {
            return false;
        };
        list.items.len() == count
            && list.items.iter().all(|s| {
                let st = s.status.clone().unwrap_or_default();
                st.ready_replicas == Some(3)
                    && st.phase == Some(shardplane::api::shard::ShardPhase::Serving)
                    && st.replicas.iter().all(|r| r.state == ReplicaState::InSync)
            })
    }

    /// Waits until `count` shards serve with three ready replicas; prints the logs if not.
    pub async fn wait_serving(&self, count: usize, timeout: Duration) {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.all_serving(count).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the shards did not all serve with three replicas within {timeout:?}");
    }
}

/// The report of `node` in `shard`.
pub fn report<'a>(shard: &'a Shard, node: &str) -> Option<&'a ObservedReplica> {
    shard
        .status
        .as_ref()
        .and_then(|s| s.replicas.iter().find(|r| r.node == node))
}

/// The reports of `shard`'s secondaries.
pub fn secondaries(shard: &Shard) -> Vec<ObservedReplica> {
    shard
        .status
        .as_ref()
        .map(|s| {
            s.replicas
                .iter()
                .filter(|r| r.role == ReplicaRole::Secondary)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// A superuser session on the instance at `endpoint` (`host:port`).
pub async fn connect(endpoint: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = superuser_config(endpoint)
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A superuser session on the instance at `endpoint` over TLS, the server checked against
/// `authority` (PEM) and its name against the endpoint's host (`verify-full`).
pub async fn connect_tls(
    endpoint: &str,
    authority: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let connector = shardplane::tls::postgres_connector(authority).unwrap();
    let (client, connection) = superuser_config(endpoint)
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .connect(connector)
        .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn superuser_config(endpoint: &str) -> tokio_postgres::Config {
    let endpoint = Endpoint::parse(endpoint).unwrap();
    let mut config = tokio_postgres::Config::new();
    config
        .host(&endpoint.host)
        .port(endpoint.port)
        .user("postgres")
        .password(SUPERUSER_PASSWORD)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(2));
    config
}

/// The certificate of the cluster `main`'s authority (PEM), once the operator made it.
pub async fn cluster_authority(client: &Client, namespace: &str) -> String {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(secret) = secrets.get_opt("main-ca").await.unwrap() {
            let data = secret.data.unwrap_or_default();
            let authority = data.get(shardplane::tls::CERTIFICATE_KEY).unwrap();
            return String::from_utf8(authority.0.clone()).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the operator made no certificate authority for cluster main in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The superuser's credentials for routed sessions, over TLS checked against the cluster's
/// authority.
pub async fn routed_credentials(
    client: &Client,
    namespace: &str,
) -> shardplane::routing::DatabaseCredentials {
    shardplane::routing::DatabaseCredentials::new("postgres", SUPERUSER_PASSWORD, "postgres")
        .with_tls(&cluster_authority(client, namespace).await)
        .unwrap()
}

/// `n` keys whose keyspace id lies in the shard's range, starting the search at `from`.
pub fn keys_in(shard: &Shard, from: i64, n: usize) -> Vec<i64> {
    let start = shard.spec.range.start.unwrap_or(i64::MIN);
    let end = shard.spec.range.end;
    (from..)
        .filter(|k| {
            let id = keyspace_id(&ShardKeyValue::Int(*k));
            id >= start && end.is_none_or(|e| id < e)
        })
        .take(n)
        .collect()
}

/// Inserts `keys` on the primary at `endpoint`, one transaction each.
pub async fn insert(endpoint: &str, keys: &[i64]) -> Result<(), tokio_postgres::Error> {
    let client = connect(endpoint).await?;
    for key in keys {
        client
            .execute(
                &format!("INSERT INTO {TABLE} (id, note) VALUES ($1, 'row')"),
                &[key],
            )
            .await?;
    }
    Ok(())
}

/// How many of `keys` the instance at `endpoint` holds.
pub async fn count(endpoint: &str, keys: &[i64]) -> Result<i64, tokio_postgres::Error> {
    let client = connect(endpoint).await?;
    let row = client
        .query_one(
            &format!("SELECT count(*) FROM {TABLE} WHERE id = ANY($1)"),
            &[&keys],
        )
        .await?;
    Ok(row.get(0))
}

/// The node and endpoint of `name`'s primary if it serves at `epoch` (its agent reports it
/// in sync at that epoch) and the routing map points at it.
pub async fn serving_primary(
    plane: &DataPlane,
    tables: &Api<Table>,
    name: &str,
    epoch: i64,
) -> Option<(String, String, Shard)> {
    let shard = plane.shards().get(name).await.ok()?;
    let primary = shard.status.clone()?.primary?;
    if primary.epoch != epoch {
        return None;
    }
    let endpoint = report(&shard, &primary.node)
        .filter(|r| {
            r.role == ReplicaRole::Primary
                && r.state == ReplicaState::InSync
                && r.epoch == Some(epoch)
        })?
        .endpoint
        .clone()?;
    let routing = tables.get(TABLE).await.ok()?.status?.routing?;
    routing
        .ranges
        .iter()
        .any(|e| e.shard == name && e.endpoint.as_deref() == Some(&endpoint) && e.epoch == epoch)
        .then_some((primary.node, endpoint, shard))
}

/// A Shard of the table over `[start, end)` (`None`: the edge of the key space), as a pull
/// request declaring a split or merge would add it.
pub fn declare(name: &str, start: Option<i64>, end: Option<i64>) -> Shard {
    let mut range = json!({});
    if let Some(start) = start {
        range["start"] = json!(start);
    }
    if let Some(end) = end {
        range["end"] = json!(end);
    }
    serde_json::from_value(json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
        "metadata": {"name": name},
        "spec": {"table": TABLE, "range": range}
    }))
    .unwrap()
}

/// Declares `targets`, approves the reshard plan by its hash and waits until it reaches a
/// final phase; returns the plan and the fence window (fence → routing switched) measured
/// on `measured` (a source).
pub async fn reshard(
    plane: &DataPlane,
    targets: Vec<Shard>,
    measured: &str,
) -> (shardplane::api::Plan, Option<i64>) {
    let plan = propose_reshard(plane, targets).await;
    let plans_api: Api<shardplane::api::Plan> =
        Api::namespaced(plane.client.clone(), &plane.namespace);
    let started = Instant::now();
    let mut window = None;
    loop {
        if let Ok(source) = plane.shards().get(measured).await {
            let status = source.status.unwrap_or_default();
            if let (Some(order), Some(report)) = (status.reshard, status.reshard_report)
                && let (Some(switched), Some(fenced)) = (order.switched_at_ms, report.fenced_at_ms)
            {
                if window.is_none()
                    && let Some(checked) = report.checked_at_ms
                {
                    println!(
                        "{measured}: fence window {} ms = fence → checked {} ms (agent) + \
                         checked → routing switched {} ms (operator)",
                        switched - fenced,
                        checked - fenced,
                        switched - checked
                    );
                }
                window = Some(switched - fenced);
            }
        }
        let current = plans_api.get(&plan.name_any()).await.unwrap();
        let phase = current.status.as_ref().and_then(|s| s.phase);
        if matches!(
            phase,
            Some(
                shardplane::api::plan::PlanPhase::Succeeded
                    | shardplane::api::plan::PlanPhase::Failed
            )
        ) {
            return (current, window);
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the reshard plan did not finish: {:?}",
            current.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Declares `targets` (as a pull request would), waits for the reshard plan the operator
/// makes of them and approves it by its hash; returns the plan as first seen.
pub async fn propose_reshard(plane: &DataPlane, targets: Vec<Shard>) -> shardplane::api::Plan {
    let known: std::collections::BTreeSet<String> =
        plans(plane).await.iter().map(|p| p.name_any()).collect();
    for target in &targets {
        plane
            .shards()
            .create(&PostParams::default(), target)
            .await
            .unwrap();
    }
    let started = Instant::now();
    let plan = loop {
        if let Some(plan) = plans(plane).await.into_iter().find(|p| {
            !known.contains(&p.name_any())
                && p.spec.purpose == shardplane::api::plan::PlanPurpose::Reshard
        }) {
            break plan;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no reshard plan was made"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("plan {}: {}", plan.name_any(), plan.spec.summary);
    annotate_table(plane, "shardplane.io/approve-plan", &plan.spec.hash).await;
    plan
}

/// Every Plan of the plane's namespace.
pub async fn plans(plane: &DataPlane) -> Vec<shardplane::api::Plan> {
    let plans: Api<shardplane::api::Plan> = Api::namespaced(plane.client.clone(), &plane.namespace);
    plans
        .list(&kube::api::ListParams::default())
        .await
        .unwrap()
        .items
}

/// A control plane of its own (for a benchmark), the CRDs applied and established, a
/// namespace, and a data plane of `shards` declared shards there.
pub async fn bench_plane(
    namespace: &str,
    shards: usize,
) -> (shardplane::sandbox::ControlPlane, DataPlane) {
    let (cp, client) = bench_control_plane(namespace).await;
    let plane = DataPlane::start(client, namespace, cp.kubeconfig_path(), shards).await;
    (cp, plane)
}

/// [`bench_plane`] with `nodes` hosts of `network` ([`DataPlane::start_on_network`]).
pub async fn bench_plane_on_network(
    namespace: &str,
    shards: usize,
    nodes: &[NodeDef],
    network: TestNetwork,
) -> (shardplane::sandbox::ControlPlane, DataPlane) {
    let (cp, client) = bench_control_plane(namespace).await;
    let plane = DataPlane::start_on_network(
        client,
        namespace,
        cp.kubeconfig_path(),
        shards,
        nodes,
        network,
    )
    .await;
    (cp, plane)
}

/// A control plane of its own with the CRDs established and `namespace` made, and a client.
async fn bench_control_plane(namespace: &str) -> (shardplane::sandbox::ControlPlane, Client) {
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::runtime::wait::{await_condition, conditions::is_crd_established};

    let cp = shardplane::sandbox::ControlPlane::start()
        .await
        .expect("control plane");
    let client = cp.client().await.expect("client");
    let definitions: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in shardplane::api::crds() {
        let name = crd.name_any();
        definitions
            .patch(
                &name,
                &kube::api::PatchParams::apply("bench").force(),
                &kube::api::Patch::Apply(&crd),
            )
            .await
            .expect("CRD applied");
        let established = await_condition(definitions.clone(), &name, is_crd_established());
        tokio::time::timeout(Duration::from_secs(60), established)
            .await
            .expect("CRD established in time")
            .expect("CRD watch");
    }
    let object = Namespace {
        metadata: ObjectMeta {
            name: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &object)
        .await
        .expect("namespace");
    (cp, client)
}

/// Schema rollouts (`tests/schema_rollout.rs`, `benches/schema_rollout.rs`): declares the
/// Table's columns and indexes (everything else stays).
pub async fn declare_schema(
    plane: &DataPlane,
    columns: serde_json::Value,
    indexes: serde_json::Value,
) {
    Api::<Table>::namespaced(plane.client.clone(), &plane.namespace)
        .patch(
            TABLE,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"columns": columns, "indexes": indexes}})),
        )
        .await
        .unwrap();
}

/// The status of SchemaVersion `<TABLE>-v<version>`, once it has one.
pub async fn schema_version_status(
    plane: &DataPlane,
    version: i64,
) -> Option<shardplane::api::schema_version::SchemaVersionStatus> {
    Api::<shardplane::api::SchemaVersion>::namespaced(plane.client.clone(), &plane.namespace)
        .get(&format!("{TABLE}-v{version}"))
        .await
        .ok()?
        .status
}

/// Waits (at most `timeout`) until version `version` of the table is rolled out: the Table's
/// `status.schemaVersion` moved to it, then the version's own phase says `Complete`. Returns
/// how long it took; `None` when it did not happen in time.
pub async fn wait_schema_version(
    plane: &DataPlane,
    version: i64,
    timeout: Duration,
) -> Option<Duration> {
    use shardplane::api::schema_version::RolloutPhase;
    let tables: Api<Table> = Api::namespaced(plane.client.clone(), &plane.namespace);
    let started = Instant::now();
    while started.elapsed() < timeout {
        let table = tables.get(TABLE).await.ok().and_then(|t| t.status);
        if table.and_then(|s| s.schema_version) == Some(version)
            && schema_version_status(plane, version)
                .await
                .and_then(|s| s.phase)
                == Some(RolloutPhase::Complete)
        {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Failure detection of 500 / 5000 / 10000 ms (heartbeat / suspect / dead): for tests of
/// something other than failover on a loaded machine, where the harness's 600 ms suspicion
/// makes primaries fence themselves now and then.
pub async fn relax_failure_detection(plane: &DataPlane) {
    set_failure_detection(plane, RELAXED_DETECTION).await;
}

/// The failure detection of [`relax_failure_detection`] (ms): heartbeat, suspect, dead.
pub const RELAXED_DETECTION: (u64, u64, u64) = (500, 5000, 10000);

/// Sets the cluster's failure detection (ms): heartbeat interval, suspect after, dead after.
pub async fn set_failure_detection(plane: &DataPlane, (heartbeat, suspect, dead): (u64, u64, u64)) {
    Api::<DatabaseCluster>::namespaced(plane.client.clone(), &plane.namespace)
        .patch(
            "main",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"failureDetection": {
                "heartbeatIntervalMs": heartbeat, "suspectAfterMs": suspect, "deadAfterMs": dead
            }}})),
        )
        .await
        .unwrap();
}

/// Turns the cluster's failsafe off (`spec.failureDetection.failsafe`): a primary that cannot
/// prove its liveness to the control plane fences even when its peers cannot either.
pub async fn disable_failsafe(plane: &DataPlane) {
    Api::<DatabaseCluster>::namespaced(plane.client.clone(), &plane.namespace)
        .patch(
            "main",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"failureDetection": {"failsafe": false}}})),
        )
        .await
        .unwrap();
}

/// A router for the table, as the superuser, with a 10 s deadline.
pub async fn table_router(plane: &DataPlane) -> shardplane::routing::Router {
    let config = shardplane::routing::RouterConfig {
        deadline: Duration::from_secs(10),
        range_constraint: "shardplane_shard_range".to_owned(),
        ..shardplane::routing::RouterConfig::default()
    };
    shardplane::routing::Router::start(
        plane.client.clone(),
        &plane.namespace,
        TABLE,
        routed_credentials(&plane.client, &plane.namespace).await,
        config,
    )
    .await
    .unwrap()
}

/// Sets how long the table's shards replaced by a split or merge are kept after the
/// routing switch.
pub async fn set_retire_grace(plane: &DataPlane, seconds: u64) {
    annotate_table(
        plane,
        "shardplane.io/retire-grace-seconds",
        &seconds.to_string(),
    )
    .await;
}

/// Sets annotation `key` of the table to `value`.
async fn annotate_table(plane: &DataPlane, key: &str, value: &str) {
    Api::<Table>::namespaced(plane.client.clone(), &plane.namespace)
        .patch(
            TABLE,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
        )
        .await
        .unwrap();
}

/// The plan finished with every step done.
pub fn assert_succeeded(plan: &shardplane::api::Plan) {
    assert_eq!(
        plan.status.as_ref().and_then(|s| s.phase),
        Some(shardplane::api::plan::PlanPhase::Succeeded),
        "{:?}",
        plan.status
    );
}

/// A Router of the table as the superuser (deadline 40 s: longer than a node's failover, whose
/// primaries are promoted one after another) and a Checker of its rows, for the
/// acknowledged-writes workload.
pub async fn router_and_checker(
    client: &Client,
    namespace: &str,
) -> (shardplane::routing::Router, Checker) {
    use shardplane::agent::postgres::{KeyKind, ShardedTable};
    use shardplane::routing::{Router, RouterConfig};
    let credentials = routed_credentials(client, namespace).await;
    let config = RouterConfig {
        deadline: Duration::from_secs(40),
        range_constraint: shardplane::agent::shard_schema::RANGE_CONSTRAINT.to_owned(),
        first_map_timeout: Duration::from_secs(30),
        ..RouterConfig::default()
    };
    let router = Router::start(
        client.clone(),
        namespace,
        TABLE,
        credentials.clone(),
        config,
    )
    .await
    .unwrap();
    let rows = ShardedTable {
        name: TABLE.to_owned(),
        key_column: "id".to_owned(),
        key_kind: KeyKind::Integer,
    };
    let checker = Checker::new(client.clone(), namespace, TABLE, rows, credentials);
    (router, checker)
}

/// Every acknowledged write of a scenario and how its workloads went: the workload is started
/// and stopped around each change, and after each the checker reads every row acknowledged
/// so far from every primary.
pub struct Ledger {
    /// The Router the workload writes through.
    pub router: shardplane::routing::Router,
    checker: Checker,
    /// Every id acknowledged so far (a test may add a row it wrote itself).
    pub acked: std::collections::BTreeSet<i64>,
    next_id: i64,
    writers: usize,
    writes_per_second: f64,
    lines: Vec<String>,
}

impl Ledger {
    /// A ledger of the table in `namespace`, its workloads `writers` strong at
    /// `writes_per_second` in total.
    pub async fn new(
        client: &Client,
        namespace: &str,
        writers: usize,
        writes_per_second: f64,
    ) -> Self {
        let (router, checker) = router_and_checker(client, namespace).await;
        Ledger {
            router,
            checker,
            acked: Default::default(),
            next_id: 1,
            writers,
            writes_per_second,
            lines: Vec::new(),
        }
    }

    /// Starts writing and returns once the first `warm_up` writes were acknowledged.
    pub async fn start(&mut self, warm_up: u64) -> Workload {
        let mut config = WorkloadConfig::new(TABLE, "id", self.writers, self.writes_per_second);
        config.first_id = self.next_id;
        self.next_id += 10_000_000;
        let workload = Workload::start(self.router.clone(), &config).unwrap();
        assert!(
            eventually(Duration::from_secs(60), || async {
                workload.acked_so_far() >= warm_up
            })
            .await,
            "the workload did not get going"
        );
        workload
    }

    /// Lets `workload` write `more` acknowledged rows after the change, stops it and checks
    /// every row acknowledged so far in this scenario ([`assert_nothing_lost`]); prints and
    /// returns the check.
    pub async fn finish(&mut self, what: &str, workload: Workload, more: u64) -> CheckReport {
        let (check, failed) = self.finish_counting_failures(what, workload, more).await;
        assert_eq!(failed, 0, "{what}: routed writes failed");
        check
    }

    /// [`Ledger::finish`] for a change under which a routed write may fail — its outcome
    /// unknown, e.g. a commit still waiting for a standby at the client's deadline: how many
    /// did. Every acknowledged row is still checked.
    pub async fn finish_counting_failures(
        &mut self,
        what: &str,
        workload: Workload,
        more: u64,
    ) -> (CheckReport, usize) {
        let at = workload.acked_so_far();
        assert!(
            eventually(Duration::from_secs(60), || async {
                workload.acked_so_far() >= at + more
            })
            .await,
            "{what}: the workload did not continue after the change"
        );
        let report: WorkloadReport = workload.stop().await;
        println!("{what}: workload: {report}");
        println!("{what}: router: {}", self.router.stats());
        let failed = report.failed.len();
        self.acked.extend(&report.acked);
        let acked = self
            .acked
            .iter()
            .map(|&id| ShardKeyValue::Int(id))
            .collect();
        let check = self.checker.check(&acked).await.unwrap();
        println!("{what}: {check}");
        self.lines.push(format!(
            "{what}: acked {} (this phase {}), found {}, missing {}, duplicated {}, misplaced {}, shards with two writable primaries {}, slowest write {:.2?}",
            check.rows.acked,
            report.acked.len(),
            check.rows.found,
            check.rows.missing,
            check.rows.duplicated,
            check.rows.misplaced,
            check.primaries.split_brains().len(),
            report.slowest_write
        ));
        assert_nothing_lost(what, &check, self.acked.len());
        (check, failed)
    }

    /// Prints one line per checked change.
    pub fn summary(&self) {
        println!("acked_writes_lost summary:");
        for line in &self.lines {
            println!("  {line}");
        }
    }
}

/// Waits (at most `timeout`) until the newest plan of `purpose` succeeds, SIGKILLing operator
/// process `i` and starting it again once at every point of progress (the shared
/// [`finish_plan_killing_operator`](crate::support::operator::finish_plan_killing_operator)).
/// Returns the plan and how many times the operator was killed.
pub async fn finish_plan_killing_operator(
    plane: &mut DataPlane,
    i: usize,
    purpose: shardplane::api::plan::PlanPurpose,
    timeout: Duration,
) -> (shardplane::api::Plan, usize) {
    finish_plan_killing_operator_watched(plane, i, purpose, timeout, &mut ()).await
}

/// What a test does besides the operator kills of [`finish_plan_killing_operator_watched`]
/// (for example SIGKILL an agent at a chosen step and start it again), given the plan as
/// read at each poll.
pub trait PlanWatcher {
    /// Called at every poll of the plan (about every 20 ms) until it finishes.
    fn observe(
        &mut self,
        plane: &mut DataPlane,
        plan: &shardplane::api::Plan,
    ) -> impl std::future::Future<Output = ()>;
}

/// Watches nothing.
impl PlanWatcher for () {
    async fn observe(&mut self, _: &mut DataPlane, _: &shardplane::api::Plan) {}
}

/// [`finish_plan_killing_operator`], calling `watcher` with the plan at every poll.
pub async fn finish_plan_killing_operator_watched(
    plane: &mut DataPlane,
    i: usize,
    purpose: shardplane::api::plan::PlanPurpose,
    timeout: Duration,
    watcher: &mut impl PlanWatcher,
) -> (shardplane::api::Plan, usize) {
    let plans = Api::namespaced(plane.client.clone(), &plane.namespace);
    let mut killed = KilledPlaneOperator { plane, i, watcher };
    operator::finish_plan_killing_operator(&mut killed, &plans, purpose, timeout).await
}

/// Operator process `i` of a plane, and what a test watches besides.
struct KilledPlaneOperator<'a, W> {
    plane: &'a mut DataPlane,
    i: usize,
    watcher: &'a mut W,
}

impl<W: PlanWatcher> operator::KilledOperator for KilledPlaneOperator<'_, W> {
    fn respawn_operator(&mut self) {
        self.plane.respawn_operator(self.i);
    }

    async fn observe(&mut self, plan: &shardplane::api::Plan) {
        self.watcher.observe(self.plane, plan).await;
    }
}

/// Asserts what the checker found after `what`: every one of the `acked` acknowledged
/// writes exactly once, in its shard's range, and no shard with two writable primaries.
pub fn assert_nothing_lost(what: &str, check: &CheckReport, acked: usize) {
    assert_eq!(
        (
            check.rows.missing,
            check.rows.duplicated,
            check.rows.misplaced
        ),
        (0, 0, 0),
        "{what}: {check}"
    );
    assert_eq!(check.rows.acked, acked);
    assert!(check.primaries.is_clean(), "{what}: {check}");
}
