//! `shardplane demo`: the local sandbox in one command — a real control plane on loopback,
//! the Helm chart (which carries the CRDs) installed, `examples/` applied, the operator and
//! one `shardplane agent` process per example node started (each running the PostgreSQL
//! instances of its replicas on loopback), rows written through the [`Router`], and where
//! they live shown with the `kubectl get` views.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use tokio::task::JoinHandle;

use crate::agent::config::{
    DEFAULT_CREDENTIALS_SECRET, REPLICATION_PASSWORD_KEY, SUPERUSER_PASSWORD_KEY,
};
use crate::agent::postgres::SUPERUSER;
use crate::agent::shard_schema::RANGE_CONSTRAINT;
use crate::api::plan::PlanPhase;
use crate::api::shard::{ReplicaState, ShardPhase};
use crate::api::{DatabaseCluster, DatabaseNode, Plan, Shard, crds};
use crate::controller::{self, OperatorConfig};
use crate::routing::{DatabaseCredentials, Router, RouterConfig, RoutingError, ShardKeyValue};

use super::{ControlPlane, SandboxError};

/// The namespace the chart is installed into.
pub const SYSTEM_NAMESPACE: &str = "shardplane-system";

/// The table the demo writes rows into, and how many.
pub const DEMO_TABLE: &str = "customers";
/// Rows the demo writes (ids 1..=DEMO_ROWS).
pub const DEMO_ROWS: i64 = 100;
/// How long the shards may take to serve with every replica in sync.
const SERVING_TIMEOUT: Duration = Duration::from_secs(240);
/// How long the views wait for running plans to finish.
const PLANS_TIMEOUT: Duration = Duration::from_secs(60);

/// What the demo installs and applies.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// The Helm chart folder (`charts/shardplane`).
    pub chart: PathBuf,
    /// The folder of example manifests applied (not recursively).
    pub examples: PathBuf,
    /// The namespace the examples are applied into.
    pub namespace: String,
}

/// Where the rows of one shard live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowPlacement {
    /// The Shard.
    pub shard: String,
    /// The node of its primary.
    pub node: String,
    /// The primary's endpoint (`host:port`), from the routing map.
    pub endpoint: String,
    /// Rows the demo wrote whose key the router sent to this shard.
    pub written: i64,
    /// Rows of the table the primary holds.
    pub found: i64,
}

/// A running demo: the agents, the operator and the control plane live as long as this
/// value (dropped in that order).
pub struct Demo {
    agents: Vec<AgentChild>,
    _operator: OperatorTask,
    /// The control plane; its kubeconfig works with kubectl and helm while the demo runs.
    pub control_plane: ControlPlane,
    /// `kubectl get shardplane` in the examples' namespace, after applying them.
    pub resources: String,
    /// Where the rows written through the router live, one entry per shard of
    /// [`DEMO_TABLE`].
    pub placement: Vec<RowPlacement>,
    /// `kubectl get` of the nodes and shards once the rows are written.
    pub views: String,
    /// The agents' folder: their replicas and `<node>.log`.
    pub agents_dir: PathBuf,
}

/// Why the demo could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The control plane did not start.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// One of the set-up commands failed.
    #[error("{step} failed: `{command}` exited with {status}:\n{stderr}")]
    Step {
        /// What the demo was doing.
        step: &'static str,
        /// The command line that failed.
        command: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A request to the control plane failed.
    #[error("{step} failed: {source}")]
    Api {
        /// What the demo was doing.
        step: &'static str,
        /// The API error.
        source: kube::Error,
    },
    /// A local file or process could not be set up.
    #[error("{step} failed: {source}")]
    Io {
        /// What the demo was doing.
        step: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The examples declare no cluster or no node for the agents to run.
    #[error(
        "the examples in namespace {namespace} declare {what}: add it to examples/ (see docs/api.md)"
    )]
    Examples {
        /// The namespace.
        namespace: String,
        /// What is missing.
        what: &'static str,
    },
    /// The shards did not all serve in time.
    #[error(
        "the shards did not all serve with every replica in sync within {waited:?}: {state}; \
         the agents' logs are in {}",
        agents_dir.display()
    )]
    NotServing {
        /// How long the demo waited.
        waited: Duration,
        /// The shards that were not serving and their phase.
        state: String,
        /// Where the agents' logs are.
        agents_dir: PathBuf,
    },
    /// Writing through the router failed.
    #[error("writing rows into {DEMO_TABLE} through the router failed: {0}")]
    Routing(#[from] Box<RoutingError>),
    /// Counting the rows on a primary failed.
    #[error("counting the rows of shard {shard} on its primary {endpoint} failed: {source}")]
    Count {
        /// The shard.
        shard: String,
        /// The primary's endpoint.
        endpoint: String,
        /// The PostgreSQL error.
        source: tokio_postgres::Error,
    },
}

/// One `shardplane agent` child process; killed (with its PostgreSQL instances, which
/// follow their agent) when dropped.
struct AgentChild(Child);

impl Drop for AgentChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // The agents (and their PostgreSQL instances) stop first, then their folder goes.
        self.agents.clear();
        let _ = std::fs::remove_dir_all(&self.agents_dir);
    }
}

impl Demo {
    /// Starts the control plane, installs the chart, waits for the CRDs, applies the examples
    /// and reads back what they created; then starts the operator and an agent per example
    /// node, waits until every shard serves, writes [`DEMO_ROWS`] rows into [`DEMO_TABLE`]
    /// through the router and finds each on the primary it was routed to.
    pub async fn start(options: &DemoOptions) -> Result<Self, DemoError> {
        let control_plane = ControlPlane::start().await?;
        let resources = install_and_apply(&control_plane, options).await?;
        let namespace = options.namespace.as_str();
        let client = control_plane.client().await?;

        let password = create_credentials(&client, namespace).await?;
        let operator_addr = free_loopback_addr()?;
        let operator = OperatorTask(spawn_operator(client.clone(), namespace, operator_addr));
        let agents_dir =
            std::env::temp_dir().join(format!("shardplane-demo-{}", std::process::id()));
        let agents = start_agents(
            &client,
            &control_plane,
            namespace,
            &agents_dir,
            operator_addr,
        )
        .await?;
        wait_serving(&client, namespace, &agents_dir).await?;
        let placement = write_rows(&client, namespace, &password).await?;
        // The operator may still be carrying out a plan (rebalancing the primaries the first
        // placement put on one node): show the views once it is done.
        wait_for_plans(&client, namespace).await;
        let views = run(
            &control_plane,
            "listing nodes and shards",
            Tool::Kubectl,
            &["get", "databasenodes,shards", "--namespace", namespace],
        )
        .await?;

        Ok(Demo {
            agents,
            _operator: operator,
            control_plane,
            resources,
            placement,
            views,
            agents_dir,
        })
    }

    /// The rows written and where they live, as a table.
    pub fn rows_table(&self) -> String {
        let written: i64 = self.placement.iter().map(|p| p.written).sum();
        let found: i64 = self.placement.iter().map(|p| p.found).sum();
        let mut out = format!(
            "wrote {written} rows into {DEMO_TABLE} through the router; found {found} on the primaries they were routed to:\n"
        );
        let _ = writeln!(
            out,
            "{:<16} {:<16} {:<18} {:>8} {:>11}",
            "SHARD", "PRIMARY NODE", "ENDPOINT", "WRITTEN", "ON PRIMARY"
        );
        for p in &self.placement {
            let _ = writeln!(
                out,
                "{:<16} {:<16} {:<18} {:>8} {:>11}",
                p.shard, p.node, p.endpoint, p.written, p.found
            );
        }
        out
    }
}

/// The operator, running in this process; aborted when dropped.
struct OperatorTask(JoinHandle<()>);

impl Drop for OperatorTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Installs the chart, waits for the CRDs, applies the examples into the namespace and
/// returns `kubectl get shardplane` of it.
async fn install_and_apply(cp: &ControlPlane, options: &DemoOptions) -> Result<String, DemoError> {
    let chart = options.chart.to_string_lossy();
    let examples = options.examples.to_string_lossy();
    let namespace = options.namespace.as_str();
    let crd_names = crds().into_iter().filter_map(|crd| crd.metadata.name);
    let wait_for_crds: Vec<String> = ["wait", "--for=condition=Established", "--timeout=60s"]
        .into_iter()
        .map(String::from)
        .chain(crd_names.map(|name| format!("crd/{name}")))
        .collect();
    let helm = Tool::Helm;
    let kubectl = Tool::Kubectl;
    run(
        cp,
        "installing the Helm chart",
        helm,
        &[
            "install",
            "shardplane",
            &chart,
            "--namespace",
            SYSTEM_NAMESPACE,
            "--create-namespace",
        ],
    )
    .await?;
    run(cp, "waiting for the CRDs", kubectl, &wait_for_crds).await?;
    run(
        cp,
        "creating the namespace",
        kubectl,
        &["create", "namespace", namespace],
    )
    .await?;
    run(
        cp,
        "applying the examples",
        kubectl,
        &["apply", "--namespace", namespace, "-f", &examples],
    )
    .await?;
    run(
        cp,
        "listing the resources",
        kubectl,
        &["get", "shardplane", "--namespace", namespace],
    )
    .await
}

/// `bytes` random bytes as hex, from the kernel.
fn random_hex(bytes: usize) -> Result<String, DemoError> {
    use std::io::Read as _;
    let mut buffer = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buffer))
        .map_err(|source| DemoError::Io {
            step: "reading /dev/urandom for the PostgreSQL passwords".into(),
            source,
        })?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

/// Every `K` of `namespace`; `step` names what the demo was doing if that fails.
async fn list<K>(client: &Client, namespace: &str, step: &'static str) -> Result<Vec<K>, DemoError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .list(&Default::default())
        .await
        .map(|list| list.items)
        .map_err(|source| DemoError::Api { step, source })
}

/// Creates the Secret with the PostgreSQL passwords the cluster names (random passwords);
/// returns the superuser's.
async fn create_credentials(client: &Client, namespace: &str) -> Result<String, DemoError> {
    let cluster = list::<DatabaseCluster>(client, namespace, "reading the example cluster")
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| DemoError::Examples {
            namespace: namespace.to_owned(),
            what: "no DatabaseCluster",
        })?;
    let name = cluster
        .spec
        .credentials_secret
        .clone()
        .unwrap_or_else(|| DEFAULT_CREDENTIALS_SECRET.to_owned());
    let superuser = random_hex(16)?;
    let replication = random_hex(16)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name),
            ..ObjectMeta::default()
        },
        data: Some(
            [
                (SUPERUSER_PASSWORD_KEY, &superuser),
                (REPLICATION_PASSWORD_KEY, &replication),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect(),
        ),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .map_err(|source| DemoError::Api {
            step: "creating the PostgreSQL credentials Secret",
            source,
        })?;
    Ok(superuser)
}

/// A free port on 127.0.0.1 for the operator's heartbeat server.
fn free_loopback_addr() -> Result<SocketAddr, DemoError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|source| DemoError::Io {
            step: "finding a free loopback port for the operator".into(),
            source,
        })
}

/// The operator in this process, watching only `namespace` (its leader Lease there too).
fn spawn_operator(client: Client, namespace: &str, addr: SocketAddr) -> JoinHandle<()> {
    let mut config = OperatorConfig::new("shardplane-demo-operator", namespace);
    config.namespace = Some(namespace.to_owned());
    config.listen = addr;
    tokio::spawn(async move {
        if let Err(error) = controller::run(client, config).await {
            eprintln!("the demo's operator stopped: {error}");
        }
    })
}

/// Starts one `shardplane agent` (this executable) per DatabaseNode of the namespace; each
/// keeps its replicas in `<dir>/<node>` and logs to `<dir>/<node>.log`.
async fn start_agents(
    client: &Client,
    control_plane: &ControlPlane,
    namespace: &str,
    dir: &Path,
    operator: SocketAddr,
) -> Result<Vec<AgentChild>, DemoError> {
    let io = |step: String| move |source| DemoError::Io { step, source };
    let nodes = list::<DatabaseNode>(client, namespace, "listing the example nodes").await?;
    if nodes.is_empty() {
        return Err(DemoError::Examples {
            namespace: namespace.to_owned(),
            what: "no DatabaseNode",
        });
    }
    let exe = std::env::current_exe().map_err(io("finding the shardplane executable".into()))?;
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    // PostgreSQL runs as its own user when the demo runs as root: it must reach the folders.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(io(format!(
        "opening {} to the postgres user",
        dir.display()
    )))?;
    let mut agents = Vec::new();
    for node in nodes {
        let name = node.name_any();
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(io(format!("creating {}", log_path.display())))?;
        let err = log
            .try_clone()
            .map_err(io(format!("opening {}", log_path.display())))?;
        let child = Command::new(&exe)
            .args(["agent", "--node", &name, "--namespace", namespace])
            .arg("--data-dir")
            .arg(dir.join(&name))
            .args(["--operator", &operator.to_string()])
            // A throwaway sandbox: commits need not survive a power cut.
            .arg("--no-fsync")
            .env("KUBECONFIG", control_plane.kubeconfig_path())
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(io(format!("starting the agent of {name}")))?;
        agents.push(AgentChild(child));
    }
    Ok(agents)
}

/// Shards of `namespace` not yet serving with every desired replica in sync, with their
/// phase; empty when all serve.
async fn not_serving(client: &Client, namespace: &str) -> Result<Vec<String>, kube::Error> {
    let shards: Api<Shard> = Api::namespaced(client.clone(), namespace);
    let list = shards.list(&Default::default()).await?.items;
    Ok(list
        .iter()
        .filter_map(|shard| {
            let status = shard.status.clone().unwrap_or_default();
            let desired = status.desired_replicas.len();
            let serving = status.phase == Some(ShardPhase::Serving)
                && desired > 0
                && status.replicas.len() == desired
                && status.ready_replicas == i32::try_from(desired).ok()
                && status
                    .replicas
                    .iter()
                    .all(|r| r.state == ReplicaState::InSync);
            (!serving).then(|| {
                let in_sync = status
                    .replicas
                    .iter()
                    .filter(|r| r.state == ReplicaState::InSync)
                    .count();
                format!(
                    "{} ({:?}, {in_sync}/{desired} replicas in sync)",
                    shard.name_any(),
                    status.phase
                )
            })
        })
        .collect())
}

/// Waits until every shard serves with every replica in sync.
async fn wait_serving(
    client: &Client,
    namespace: &str,
    agents_dir: &Path,
) -> Result<(), DemoError> {
    let started = Instant::now();
    loop {
        let waiting = not_serving(client, namespace).await;
        if waiting.as_ref().is_ok_and(Vec::is_empty) {
            return Ok(());
        }
        if started.elapsed() > SERVING_TIMEOUT {
            let state = match waiting {
                Ok(waiting) => waiting.join(", "),
                Err(error) => format!("listing the shards failed: {error}"),
            };
            return Err(DemoError::NotServing {
                waited: SERVING_TIMEOUT,
                state,
                agents_dir: agents_dir.to_owned(),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits (at most [`PLANS_TIMEOUT`]) until no Plan of `namespace` is pending or running.
async fn wait_for_plans(client: &Client, namespace: &str) {
    let started = Instant::now();
    while started.elapsed() < PLANS_TIMEOUT {
        let busy = list::<Plan>(client, namespace, "listing the plans")
            .await
            .map(|plans| {
                plans.iter().any(|p| {
                    matches!(
                        p.status.as_ref().and_then(|s| s.phase),
                        None | Some(PlanPhase::Pending | PlanPhase::Running)
                    )
                })
            })
            .unwrap_or(true);
        if !busy {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Writes rows 1..=[`DEMO_ROWS`] into [`DEMO_TABLE`] through the router, then counts the
/// table's rows on each shard's primary.
async fn write_rows(
    client: &Client,
    namespace: &str,
    password: &str,
) -> Result<Vec<RowPlacement>, DemoError> {
    let credentials = DatabaseCredentials::new(SUPERUSER, password, "postgres");
    let config = RouterConfig {
        range_constraint: RANGE_CONSTRAINT.to_owned(),
        first_map_timeout: Duration::from_secs(60),
        ..RouterConfig::default()
    };
    let router = Router::start(
        client.clone(),
        namespace,
        DEMO_TABLE,
        credentials.clone(),
        config,
    )
    .await
    .map_err(Box::new)?;
    let insert = format!(
        "INSERT INTO {DEMO_TABLE} (customer_id, email, name) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
    );
    let mut written: BTreeMap<String, i64> = BTreeMap::new();
    for id in 1..=DEMO_ROWS {
        let key = ShardKeyValue::Int(id);
        let email = format!("customer{id}@example.com");
        let name = format!("Customer {id}");
        router
            .execute(&key, &insert, &[&id, &email, &name])
            .await
            .map_err(Box::new)?;
        if let Some(route) = router.route(&key) {
            *written.entry(route.shard).or_default() += 1;
        }
    }
    let shards: Api<Shard> = Api::namespaced(client.clone(), namespace);
    let mut placement = Vec::new();
    let map = router.routing_map().ok_or_else(|| {
        Box::new(RoutingError::Config(
            "the routing map became unusable after the writes".into(),
        ))
    })?;
    for route in map.routes() {
        let Some(endpoint) = route.endpoint.clone() else {
            continue;
        };
        let shown = format!("{}:{}", endpoint.host, endpoint.port);
        let count_error = |source| DemoError::Count {
            shard: route.shard.clone(),
            endpoint: shown.clone(),
            source,
        };
        let session = credentials
            .connect(&endpoint, "shardplane-demo", Duration::from_secs(5))
            .await
            .map_err(count_error)?;
        let found: i64 = session
            .query_one(&format!("SELECT count(*) FROM {DEMO_TABLE}"), &[])
            .await
            .map_err(count_error)?
            .get(0);
        let node = shards
            .get(&route.shard)
            .await
            .ok()
            .and_then(|s| s.status?.primary)
            .map(|p| p.node)
            .unwrap_or_default();
        placement.push(RowPlacement {
            shard: route.shard.clone(),
            node,
            endpoint: shown,
            written: written.get(&route.shard).copied().unwrap_or(0),
            found,
        });
    }
    Ok(placement)
}

/// The Go-built command-line tools the demo drives.
#[derive(Clone, Copy)]
enum Tool {
    Kubectl,
    Helm,
}

/// Runs `tool args` against the control plane; its stdout when it succeeded, else a
/// [`DemoError::Step`] naming `step` and the command line.
async fn run<S: AsRef<str>>(
    control_plane: &ControlPlane,
    step: &'static str,
    tool: Tool,
    args: &[S],
) -> Result<String, DemoError> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let (program, output) = match tool {
        Tool::Kubectl => ("kubectl", control_plane.kubectl(&args).await?),
        Tool::Helm => ("helm", control_plane.helm(&args).await?),
    };
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    Err(DemoError::Step {
        step,
        command: format!("{program} {}", args.join(" ")),
        status: output.status,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}
