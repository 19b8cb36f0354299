//! The operator under test, the same for the stand-in-agent suite (`tests/operator.rs`) and
//! the real-agent suites (`tests/agent/harness.rs` and the binaries built on it): run as a
//! task of the test process or as a `shardplane operator` process that can be SIGKILLed, its
//! leadership as the Lease and its metrics show it, and a plan driven to its end while the
//! operator is killed at every step.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::{Client, ResourceExt};
use shardplane::api::Plan;
use shardplane::api::Shard;
use shardplane::api::plan::{PlanPhase, PlanPurpose, StepPhase};
use shardplane::api::shard::{ReplicaRole, ShardStatus};
use shardplane::controller::{self, OperatorConfig};
use shardplane::protocol::OPERATOR_LEASE;
use tokio::task::JoinHandle;

use super::TestEnv;

/// A free port on the loopback interface.
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Runs an operator as a task of this process, scoped to `namespace`, serving heartbeats and
/// metrics on `addr`; aborting the task is a crash. A restart may find the old listener not yet
/// closed: it retries until it binds.
pub fn start_in_process(
    client: &Client,
    namespace: &str,
    identity: &str,
    addr: SocketAddr,
) -> JoinHandle<()> {
    let mut config = OperatorConfig::new(identity, namespace.to_owned());
    config.namespace = Some(namespace.to_owned());
    config.listen = addr;
    config.step_poll = Duration::from_millis(100);
    let client = client.clone();
    tokio::spawn(async move {
        while controller::run(client.clone(), config.clone())
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// One `shardplane operator` process, SIGKILLable and respawnable on the same address.
pub struct OperatorProcess {
    child: Child,
    namespace: String,
    kubeconfig: PathBuf,
    /// Its identity in leader election.
    pub identity: String,
    /// Its heartbeat (metrics, health) address.
    pub addr: SocketAddr,
    /// Its log file (stdout and stderr, appended over restarts).
    pub log: PathBuf,
}

impl OperatorProcess {
    /// Starts an operator process scoped to `namespace` on the control plane of `kubeconfig`.
    pub fn spawn(
        namespace: &str,
        kubeconfig: &Path,
        identity: &str,
        addr: SocketAddr,
        log: PathBuf,
    ) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shardplane"));
        command
            .args(["operator", "--namespace", namespace, "--identity", identity])
            .args(["--listen", &addr.to_string()]);
        OperatorProcess {
            child: spawn_logged(command, kubeconfig, &log),
            namespace: namespace.to_owned(),
            kubeconfig: kubeconfig.to_owned(),
            identity: identity.to_owned(),
            addr,
            log,
        }
    }

    /// [`OperatorProcess::spawn`] in the test's namespace, logging to
    /// `operator-<identity>.log` in the control plane's folder.
    pub fn in_env(env: &TestEnv, identity: &str, addr: SocketAddr) -> Self {
        let log = env
            .control_plane
            .work_dir()
            .join(format!("operator-{identity}.log"));
        Self::spawn(
            &env.namespace,
            env.control_plane.kubeconfig_path(),
            identity,
            addr,
            log,
        )
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILLs the process if it runs and starts it again with the same identity on the same
    /// address.
    pub fn respawn(&mut self) {
        self.kill();
        *self = Self::spawn(
            &self.namespace,
            &self.kubeconfig,
            &self.identity,
            self.addr,
            self.log.clone(),
        );
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `command` (a `shardplane` subcommand) on the control plane of `kubeconfig`, its
/// output appended to `log`, logging at `info` (or as `SHARDPLANE_CHILD_LOG` says, for a
/// trace: `info,kube=warn,shardplane::agent::replicas=debug`, say).
pub fn spawn_logged(mut command: Command, kubeconfig: &Path, log: &Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    command
        .env("KUBECONFIG", kubeconfig)
        .env(
            "RUST_LOG",
            std::env::var("SHARDPLANE_CHILD_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap()
}

/// The holder of the operators' leader-election Lease in `namespace`.
pub async fn lease_holder(client: &Client, namespace: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), namespace)
        .get_opt(OPERATOR_LEASE)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// `/metrics` of the operator at `addr`; `None` when it does not answer.
pub async fn scrape(addr: SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    conn.read_to_string(&mut response).await.ok()?;
    Some(response)
}

/// The `shardplane_leader` gauge of the operator at `addr` (1 while it leads); `None` when it
/// does not answer.
pub async fn leader_gauge(addr: SocketAddr) -> Option<i64> {
    scrape(addr)
        .await?
        .lines()
        .find_map(|l| l.strip_prefix("shardplane_leader "))
        .and_then(|v| v.trim().parse().ok())
}

/// What [`finish_plan_killing_operator`] drives.
pub trait KilledOperator {
    /// SIGKILLs the operator process and starts it again.
    fn respawn_operator(&mut self);

    /// Called with the plan at every poll (about every 20 ms) until it finishes: what a test
    /// does besides the operator kills (SIGKILL an agent at a chosen step, say).
    fn observe(&mut self, _plan: &Plan) -> impl Future<Output = ()> {
        async {}
    }
}

impl KilledOperator for OperatorProcess {
    fn respawn_operator(&mut self) {
        self.respawn();
    }
}

/// The newest Plan of `purpose` in `plans`.
pub async fn newest_plan(plans: &Api<Plan>, purpose: PlanPurpose) -> Option<Plan> {
    plans
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.spec.purpose == purpose)
        .max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0))
}

/// Waits (at most `timeout`) until the newest plan of `purpose` succeeds, SIGKILLing the
/// operator and starting it again once at every point of progress: right after each step is
/// recorded Running (before or while its effect is applied). Returns the plan and how many
/// times the operator was killed; panics if the plan fails or does not finish in time.
pub async fn finish_plan_killing_operator(
    operator: &mut impl KilledOperator,
    plans: &Api<Plan>,
    purpose: PlanPurpose,
    timeout: Duration,
) -> (Plan, usize) {
    let mut kills = 0;
    let mut last_progress = None;
    let deadline = Instant::now() + timeout;
    loop {
        assert!(
            Instant::now() < deadline,
            "the {purpose:?} plan did not finish in {timeout:?}: {:?}",
            newest_plan(plans, purpose).await.and_then(|p| p.status)
        );
        if let Some(plan) = newest_plan(plans, purpose).await {
            let status = plan.status.clone().unwrap_or_default();
            if status.phase == Some(PlanPhase::Succeeded) {
                return (plan, kills);
            }
            assert_ne!(
                status.phase,
                Some(PlanPhase::Failed),
                "{:?}",
                status.conditions
            );
            let running = status
                .steps
                .iter()
                .find(|s| s.phase == StepPhase::Running)
                .map(|s| s.id);
            let progress = (status.completed_steps, running);
            if running.is_some() && last_progress != Some(progress) {
                last_progress = Some(progress);
                operator.respawn_operator();
                kills += 1;
            }
            operator.observe(&plan).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many of `plan`'s steps run one after another: the operations of a wave run side by
/// side, so each wave counts its longest operation. An operator killed at every change of
/// progress is killed at least about this often.
pub fn sequential_steps(plan: &Plan) -> usize {
    let mut operations: BTreeMap<(i32, i32), usize> = BTreeMap::new();
    for step in &plan.spec.steps {
        *operations.entry((step.wave, step.operation)).or_default() += 1;
    }
    let mut waves: BTreeMap<i32, usize> = BTreeMap::new();
    for ((wave, _), steps) in operations {
        let longest = waves.entry(wave).or_default();
        *longest = (*longest).max(steps);
    }
    waves.values().sum()
}

/// No step of `plan` took effect twice: every shard's epoch moved by exactly the plan's
/// transfers (TransferPrimary, Promote) since `before`, and every shard has exactly
/// `replication` distinct desired replicas, none on `drained`, one of them primary.
pub fn assert_no_step_repeated(
    plan: &Plan,
    before: &[Shard],
    after: &[Shard],
    drained: &str,
    replication: usize,
) {
    assert_eq!(before.len(), after.len());
    for shard in after {
        let name = shard.name_any();
        let status = shard.status.clone().unwrap_or_default();
        let was = before
            .iter()
            .find(|b| b.name_any() == name)
            .and_then(|b| b.status.clone())
            .unwrap_or_default();
        let transfers = plan
            .spec
            .steps
            .iter()
            .filter(|s| {
                s.shard.as_deref() == Some(name.as_str())
                    && (s.action == "TransferPrimary" || s.action == "Promote")
            })
            .count() as i64;
        let epoch = |s: &ShardStatus| s.primary.as_ref().map(|p| p.epoch);
        assert_eq!(
            epoch(&status),
            epoch(&was).map(|e| e + transfers),
            "{name}: the epoch moved by other than the plan's {transfers} transfers"
        );
        let nodes: BTreeSet<&str> = status
            .desired_replicas
            .iter()
            .map(|r| r.node.as_str())
            .collect();
        assert_eq!(nodes.len(), replication, "{name}: {nodes:?}");
        assert_eq!(status.desired_replicas.len(), replication, "{name}");
        assert!(!nodes.contains(drained), "{name} still on {drained}");
        let primaries = status
            .desired_replicas
            .iter()
            .filter(|r| r.role == ReplicaRole::Primary)
            .count();
        assert_eq!(primaries, 1, "{name}: {:?}", status.desired_replicas);
    }
}
