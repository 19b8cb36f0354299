//! The `shardplane` binary: one process per subcommand. Each subcommand is a thin shell over
//! the library; errors reach the user here, as `anyhow` chains.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shardplane::controller::{self, OperatorConfig};
use shardplane::sandbox::demo::{Demo, DemoOptions};

/// Shardplane: a Kubernetes-native control plane for a sharded SQL database on PostgreSQL.
#[derive(Parser)]
#[command(name = "shardplane", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions of every Shardplane resource as YAML.
    Crds {
        /// Write one file per resource into this folder instead (as in the repository's
        /// `crds/` and the Helm chart's `crds/`).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Start a local sandbox: a control plane on loopback, the Helm chart and CRDs installed,
    /// the examples applied, the operator and one agent per example node running PostgreSQL
    /// on loopback; writes rows through the router and shows where they live; runs until
    /// Ctrl-C.
    Demo {
        /// The Helm chart to install.
        #[arg(long, default_value = "charts/shardplane")]
        chart: PathBuf,
        /// The folder of example manifests to apply.
        #[arg(long, default_value = "examples")]
        examples: PathBuf,
        /// The namespace to apply the examples into.
        #[arg(long, default_value = "shardplane-demo")]
        namespace: String,
        /// Stop right after showing the rows and resources instead of running until Ctrl-C.
        #[arg(long)]
        exit: bool,
    },
    /// Run the operator: reconcilers and the plan executor (while elected leader), node
    /// liveness, and the metrics, health and heartbeat server.
    Operator {
        /// Watch only this namespace (default: every namespace).
        #[arg(long, env = "SHARDPLANE_WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// The namespace of the leader-election Lease (default: the watched namespace, or
        /// `shardplane-system`).
        #[arg(long, env = "SHARDPLANE_LEASE_NAMESPACE")]
        lease_namespace: Option<String>,
        /// This replica's identity in leader election (default: host name and process id).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// How long the leader's Lease lasts: a standby takes over about this long after the
        /// leader dies, and the leader stops acting when it cannot confirm a renewal within
        /// it (renewed half-way). Longer rides out a slow API server at large scale.
        #[arg(long, env = "SHARDPLANE_LEASE_DURATION_SECONDS", default_value_t = 4,
              value_parser = clap::value_parser!(u64).range(3..=120))]
        lease_duration_seconds: u64,
        /// Address of the metrics, health and heartbeat server.
        #[arg(long, default_value = "0.0.0.0:9090")]
        listen: std::net::SocketAddr,
        /// Serve the Table admission webhook over TLS on this address (e.g. `0.0.0.0:9443`);
        /// needs `--admission-cert` and `--admission-key`.
        #[arg(long, env = "SHARDPLANE_ADMISSION_ADDRESS", value_name = "ADDR", requires_all = ["admission_cert", "admission_key"])]
        admission_listen: Option<std::net::SocketAddr>,
        /// The admission webhook's certificate chain, PEM (a mounted Secret's `tls.crt`).
        #[arg(long, env = "SHARDPLANE_ADMISSION_CERT", value_name = "FILE")]
        admission_cert: Option<PathBuf>,
        /// The admission webhook's private key, PEM (`tls.key`).
        #[arg(long, env = "SHARDPLANE_ADMISSION_KEY", value_name = "FILE")]
        admission_key: Option<PathBuf>,
    },
    /// Run the node agent: registers the DatabaseNode, runs one PostgreSQL instance per shard
    /// replica the operator places on the node (created, promoted, rewound and fenced as
    /// `Shard.status` asks), reports them, and proves the node's liveness to the operator.
    Agent(AgentArgs),
    /// Simulate a fleet of node agents in this one process, to load-test a real operator:
    /// every node heartbeats and renews its Lease as an agent does, and reports the replicas
    /// the operator wants on it (in sync, or after a lag) — no PostgreSQL. Never a real
    /// node's agent. Prints what it wrote every 10 s; runs until Ctrl-C.
    Fleet(FleetArgs),
    /// Apply git repositories to the cluster: every GitSync object's branch and path is
    /// validated as a whole, applied with server-side apply and pruned (see docs/gitops.md).
    GitSync {
        /// The namespaces whose GitSync objects are synced (repeat or comma-separate); every
        /// namespace when none is given.
        #[arg(
            long = "namespace",
            env = "SHARDPLANE_WATCH_NAMESPACES",
            value_delimiter = ','
        )]
        namespaces: Vec<String>,
        /// Where the bare repositories are kept between syncs.
        #[arg(
            long,
            env = "SHARDPLANE_GIT_CHECKOUT_DIR",
            default_value = "/var/lib/shardplane/git"
        )]
        checkout_dir: PathBuf,
        /// Serve the push webhook (`POST /hooks/{namespace}/{name}`) on this address, for
        /// example `0.0.0.0:9292`.
        #[arg(long, env = "SHARDPLANE_WEBHOOK_ADDRESS", value_name = "ADDR")]
        webhook_listen: Option<std::net::SocketAddr>,
    },
    /// Show what a change between two commits would cause: shards split, merged, added,
    /// dropped or moved, bytes to copy, table changes, the risk class and the plan hashes to
    /// approve. Compared with the live cluster (kubeconfig) when it answers, else with the
    /// base commit.
    Plan {
        /// The git repository (any folder inside it).
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// The base revision: the branch the change goes into.
        #[arg(long)]
        base: String,
        /// The head revision: the change.
        #[arg(long, default_value = "HEAD")]
        head: String,
        /// The folder of manifests inside the repository (as a GitSync's spec.path).
        #[arg(long, default_value = "")]
        path: String,
        /// The namespace the manifests are applied to.
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = PlanFormat::Markdown)]
        format: PlanFormat,
        /// Do not contact a cluster: compare with the base commit only.
        #[arg(long)]
        offline: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

impl Command {
    /// The log filter of a subcommand that runs a long-lived process, when `RUST_LOG` sets
    /// none; `None` for the one-shot commands, which print their result and log nothing.
    fn default_log_filter(&self) -> Option<&'static str> {
        match self {
            Command::Operator { .. }
            | Command::Agent(_)
            | Command::Fleet(_)
            | Command::GitSync { .. } => Some("info"),
            // The demo's own output is the show: its operator's decisions on request only.
            Command::Demo { .. } => Some("error"),
            Command::Crds { .. } | Command::Plan { .. } => None,
        }
    }
}

/// Logs to stderr through `tracing`: filtered by `RUST_LOG` (tracing's syntax, e.g.
/// `info,kube=warn`), else by `default`; fields as `key=value`; colored only on a terminal,
/// so that a log file holds plain text.
fn install_log_subscriber(default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(default) = cli.command.default_log_filter() {
        install_log_subscriber(default);
    }
    match cli.command {
        Command::Crds { dir: None } => {
            print!("{}", shardplane::api::crds_yaml()?);
            Ok(())
        }
        Command::Crds { dir: Some(dir) } => {
            for (file, yaml) in shardplane::api::crd_files()? {
                let path = dir.join(file);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::Demo {
            chart,
            examples,
            namespace,
            exit,
        } => {
            demo(
                DemoOptions {
                    chart,
                    examples,
                    namespace,
                },
                exit,
            )
            .await
        }
        Command::Operator {
            namespace,
            lease_namespace,
            identity,
            lease_duration_seconds,
            listen,
            admission_listen,
            admission_cert,
            admission_key,
        } => {
            let identity = identity.unwrap_or_else(default_identity);
            let lease_namespace = lease_namespace
                .or_else(|| namespace.clone())
                .unwrap_or_else(|| "shardplane-system".into());
            let mut config = OperatorConfig::new(identity, lease_namespace);
            config.namespace = namespace;
            config.listen = listen;
            config.lease_duration = std::time::Duration::from_secs(lease_duration_seconds);
            if let (Some(listen), Some(cert), Some(key)) =
                (admission_listen, admission_cert, admission_key)
            {
                let read = |path: PathBuf| {
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))
                };
                config.webhook = Some(controller::WebhookServing {
                    listen,
                    certificate_chain_pem: read(cert)?,
                    private_key_pem: read(key)?,
                });
            }
            let api = kube::Config::infer()
                .await
                .context("finding the Kubernetes API (KUBECONFIG or in-cluster)")?;
            let client = kube::Client::try_from(api.clone())
                .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
            config.api = Some(api);
            controller::run(client, config).await?;
            Ok(())
        }
        Command::Agent(args) => agent(args).await,
        Command::Fleet(args) => fleet(args).await,
        Command::GitSync {
            namespaces,
            checkout_dir,
            webhook_listen,
        } => git_sync(namespaces, checkout_dir, webhook_listen).await,
        Command::Plan {
            repo,
            base,
            head,
            path,
            namespace,
            format,
            offline,
        } => {
            let request = shardplane::planpreview::PreviewRequest {
                repo,
                base,
                head,
                path,
                namespace,
            };
            plan_preview(request, format, offline).await
        }
    }
}

async fn demo(options: DemoOptions, exit: bool) -> anyhow::Result<()> {
    eprintln!("starting a local control plane and installing Shardplane...");
    let demo = Demo::start(&options).await?;
    println!("{}", demo.resources);
    println!("{}", demo.rows_table());
    println!("{}", demo.views);
    if exit {
        return Ok(());
    }
    let kubeconfig = demo.control_plane.kubeconfig_path().display();
    println!("The sandbox runs until Ctrl-C. Meanwhile, in another shell:");
    println!("  export KUBECONFIG={kubeconfig}");
    println!("  kubectl get shardplane,shards -n {}", options.namespace);
    println!(
        "  kubectl get shards -n {} -o custom-columns=NAME:.metadata.name,PRIMARY:.status.primary.node,REPLICAS:.status.replicas[*].endpoint",
        options.namespace
    );
    println!(
        "  kubectl get table {} -n {} -o jsonpath='{{.status.routing}}'",
        shardplane::sandbox::demo::DEMO_TABLE,
        options.namespace
    );
    println!(
        "Agent logs and replica folders: {}",
        demo.agents_dir.display()
    );
    // Ctrl-C or SIGTERM: either way the demo is dropped, which stops the agents (and their
    // PostgreSQL instances) and the control plane.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted.context("waiting for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    drop(demo);
    Ok(())
}

async fn git_sync(
    namespaces: Vec<String>,
    checkout_dir: PathBuf,
    webhook_listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (kubeconfig or in-cluster service account)")?;
    let webhook = match webhook_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening for webhooks on {addr}"))?,
        ),
        None => None,
    };
    let options = shardplane::gitsync::Options {
        namespaces,
        checkout_dir,
        webhook,
    };
    shardplane::gitsync::run(client, options).await?;
    Ok(())
}

/// The flags of `shardplane agent`.
#[derive(clap::Args)]
struct AgentArgs {
    /// The DatabaseNode this agent runs.
    #[arg(long, env = "SHARDPLANE_NODE")]
    node: String,
    /// The namespace of the node and its cluster.
    #[arg(long, env = "SHARDPLANE_NAMESPACE")]
    namespace: String,
    /// Where the node's PostgreSQL instances live (one folder per shard replica).
    #[arg(
        long,
        env = "SHARDPLANE_DATA_DIR",
        default_value = "/var/lib/shardplane/agent"
    )]
    data_dir: PathBuf,
    /// An operator replica's heartbeat address (`host:port`); repeat for every replica.
    #[arg(long = "operator", value_name = "ADDR", required = true)]
    operators: Vec<std::net::SocketAddr>,
    /// The Secret with the PostgreSQL passwords (keys superuser-password and
    /// replication-password); default: the cluster's spec.credentialsSecret, else
    /// shardplane-postgres.
    #[arg(long)]
    credentials_secret: Option<String>,
    /// Registration: the DatabaseCluster the node joins (only used if the node does not exist).
    #[arg(long)]
    cluster: Option<String>,
    /// Registration: the node's region.
    #[arg(long)]
    region: Option<String>,
    /// Registration: the node's zone.
    #[arg(long)]
    zone: Option<String>,
    /// Registration: the address other nodes and clients reach its instances at.
    #[arg(long)]
    address: Option<String>,
    /// Registration: the ports its instances may listen on, FIRST-LAST.
    #[arg(long, value_parser = shardplane::agent::config::parse_port_range)]
    ports: Option<(u16, u16)>,
    /// Registration: usable storage in bytes.
    #[arg(long)]
    storage_bytes: Option<i64>,
    /// Run the instances without fsync: only for throwaway nodes (tests, benchmarks); a
    /// machine crash then corrupts them.
    #[arg(long)]
    no_fsync: bool,
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let config = shardplane::agent::AgentConfig {
        node: args.node,
        namespace: args.namespace,
        data_dir: args.data_dir,
        operators: args.operators,
        registration: shardplane::agent::Registration {
            cluster: args.cluster,
            region: args.region,
            zone: args.zone,
            address: args.address,
            ports: args.ports,
            storage_bytes: args.storage_bytes,
        },
        credentials_secret: args.credentials_secret,
        fsync: !args.no_fsync,
    };
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    shardplane::agent::run(client, config).await?;
    Ok(())
}

/// The flags of `shardplane fleet`.
#[derive(clap::Args)]
struct FleetArgs {
    /// The namespace of the nodes, their cluster and its shards.
    #[arg(long)]
    namespace: String,
    /// Simulate every DatabaseNode of this DatabaseCluster, heartbeating at its
    /// `failureDetection.heartbeatIntervalMs`.
    #[arg(
        long,
        value_name = "CLUSTER",
        required_unless_present = "nodes",
        conflicts_with = "nodes"
    )]
    nodes_from_cluster: Option<String>,
    /// Simulate the nodes PREFIX0 … PREFIX(N-1) (their DatabaseNodes must exist).
    #[arg(long, value_name = "N")]
    nodes: Option<usize>,
    /// The name prefix of `--nodes`.
    #[arg(long, default_value = "sim-")]
    prefix: String,
    /// An operator replica's heartbeat address (`host:port`); repeat for every replica.
    #[arg(long = "operator", value_name = "ADDR", required = true)]
    operators: Vec<std::net::SocketAddr>,
    /// How often each node heartbeats, in milliseconds (default: the cluster's, else 500).
    #[arg(long, value_name = "MS")]
    heartbeat_interval_ms: Option<u64>,
    /// A replica new on its node reports CatchingUp for this long before it is in sync
    /// (default: in sync at once).
    #[arg(long, value_name = "MS")]
    lag_ms: Option<u64>,
    /// Replica reports in flight at once, across the fleet.
    #[arg(long, default_value_t = 48)]
    max_in_flight: usize,
}

async fn fleet(args: FleetArgs) -> anyhow::Result<()> {
    use shardplane::api::{DatabaseCluster, DatabaseNode};
    use shardplane::sandbox::fleet::{Fleet, FleetConfig, ReplicaModel};
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    let mut config = FleetConfig::default();
    let nodes = match (&args.nodes_from_cluster, args.nodes) {
        (Some(cluster), _) => {
            let clusters: kube::Api<DatabaseCluster> =
                kube::Api::namespaced(client.clone(), &args.namespace);
            let found = clusters.get(cluster).await.with_context(|| {
                format!(
                    "reading DatabaseCluster {cluster} in namespace {}",
                    args.namespace
                )
            })?;
            if let Some(detection) = found.spec.failure_detection {
                config.heartbeat_interval =
                    Duration::from_millis(u64::try_from(detection.heartbeat_interval_ms)?);
            }
            let nodes: kube::Api<DatabaseNode> =
                kube::Api::namespaced(client.clone(), &args.namespace);
            let names: Vec<String> = nodes
                .list(&Default::default())
                .await
                .with_context(|| format!("listing DatabaseNodes in namespace {}", args.namespace))?
                .into_iter()
                .filter(|node| &node.spec.cluster == cluster)
                .filter_map(|node| node.metadata.name)
                .collect();
            anyhow::ensure!(
                !names.is_empty(),
                "DatabaseCluster {cluster} in namespace {} has no DatabaseNodes to simulate",
                args.namespace
            );
            names
        }
        (None, Some(count)) => (0..count).map(|i| format!("{}{i}", args.prefix)).collect(),
        (None, None) => anyhow::bail!("give --nodes-from-cluster or --nodes"),
    };
    if let Some(ms) = args.heartbeat_interval_ms {
        config.heartbeat_interval = Duration::from_millis(ms);
    }
    if let Some(ms) = args.lag_ms {
        config.model = ReplicaModel::Lagging {
            delay: Duration::from_millis(ms),
        };
    }
    config.max_in_flight = args.max_in_flight;
    tracing::info!(
        nodes = nodes.len(),
        heartbeat_interval_ms = config.heartbeat_interval.as_millis() as u64,
        model = ?config.model,
        "fleet starting"
    );
    let fleet = Fleet::start(client, &args.namespace, nodes, args.operators, config);
    let mut every = tokio::time::interval(Duration::from_secs(10));
    every.tick().await;
    loop {
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => {
                interrupted.context("waiting for Ctrl-C")?;
                return Ok(());
            }
            _ = every.tick() => {
                let stats = fleet.stats();
                tracing::info!(
                    reports = stats.reports,
                    withdrawals = stats.withdrawals,
                    conflicts = stats.conflicts,
                    errors = stats.errors,
                    "fleet writes so far"
                );
            }
        }
    }
}

/// Host name and process id: unique among replicas on one machine and across pods.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

/// The output formats of `shardplane plan`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum PlanFormat {
    /// A pull-request comment.
    Markdown,
    /// For machines.
    Json,
}

async fn plan_preview(
    request: shardplane::planpreview::PreviewRequest,
    format: PlanFormat,
    offline: bool,
) -> anyhow::Result<()> {
    // No kubeconfig is not an error: the preview then compares with the base commit.
    let client = if offline {
        None
    } else {
        kube::Client::try_default().await.ok()
    };
    let preview = shardplane::planpreview::preview(&request, client).await?;
    match format {
        PlanFormat::Markdown => print!("{}", shardplane::planpreview::render::markdown(&preview)),
        PlanFormat::Json => println!("{}", shardplane::planpreview::render::json(&preview)?),
    }
    Ok(())
}
