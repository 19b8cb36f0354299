//! A real Kubernetes control plane on loopback: etcd, kube-apiserver and a
//! kube-controller-manager running only the controllers that make the API behave like a
//! cluster's (garbage collection, namespace deletion, service-account tokens). Starts the
//! processes and hands out clients; runs no Shardplane code.

use std::ffi::OsStr;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::Request;
use kube::core::params::GetParams;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::SandboxError;
use super::binaries::TestenvBinaries;
use super::certificates::{CertificateFiles, write_certificates};
use super::process::{ManagedProcess, log_tail};
use super::work_dir::WorkDir;

/// How often startup polls a process for readiness.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long one readiness probe may take before it counts as "not ready yet".
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long each process may take to become ready; generous because two test binaries may
/// start control planes at once on a two-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Starts to try when a free port was taken by another program before a process bound it.
const START_ATTEMPTS: usize = 3;
/// The controllers kube-controller-manager runs: the ones tests rely on (the built-in view,
/// edit and admin roles gain what charts aggregate into them, as in a real cluster), and
/// nothing that would need nodes, a cloud or a scheduler.
const CONTROLLERS: &str = "garbagecollector,namespace,serviceaccount-token,clusterrole-aggregation";
/// Issuer of service-account tokens, as a cluster's API server would name itself.
const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Service IPs are only allocated from this range, never contacted.
const SERVICE_CLUSTER_IP_RANGE: &str = "10.0.0.0/24";

/// A running local control plane. Every process is killed when this value drops (also while
/// unwinding from a panic) and when this process exits without dropping it, so it may live in
/// a `static` shared by the tests of one binary. Share the `ControlPlane`, never a
/// [`kube::Client`]: a client belongs to the tokio runtime that made it.
#[derive(Debug)]
pub struct ControlPlane {
    /// etcd, kube-apiserver, kube-controller-manager, in start order.
    processes: Vec<ManagedProcess>,
    binaries: TestenvBinaries,
    kubeconfig: PathBuf,
    server_url: String,
    // Declared last so that it is removed after the processes using it are gone.
    work_dir: WorkDir,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager on free loopback ports and
    /// returns once all three are ready (typically a few seconds).
    ///
    /// The binaries come from `SHARDPLANE_TESTENV_BIN` if set, else from
    /// `${SHARDPLANE_CACHE:-$HOME/.cache/shardplane}/testenv/bin`, where
    /// `tools/testenv/build.sh` puts them. The processes are spawned with `std::process`, so
    /// they keep running after the tokio runtime that called `start` is gone.
    pub async fn start() -> Result<Self, SandboxError> {
        Self::start_from(TestenvBinaries::locate()?).await
    }

    /// Like [`ControlPlane::start`], with the binaries (etcd, kube-apiserver,
    /// kube-controller-manager, kubectl, helm) taken from `dir`.
    pub async fn start_with_binaries(dir: impl Into<PathBuf>) -> Result<Self, SandboxError> {
        Self::start_from(TestenvBinaries::in_dir(dir.into())?).await
    }

    async fn start_from(binaries: TestenvBinaries) -> Result<Self, SandboxError> {
        WorkDir::remove_stale();
        let mut attempt = 1;
        loop {
            match Self::start_once(&binaries).await {
                Err(error) if error.is_port_conflict() && attempt < START_ATTEMPTS => {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_once(binaries: &TestenvBinaries) -> Result<Self, SandboxError> {
        let work_dir = WorkDir::create()?;
        let certificates = write_certificates(work_dir.path())?;
        let [etcd, etcd_peer, apiserver, controller_manager] = free_ports()?;
        let ports = Ports {
            etcd,
            etcd_peer,
            apiserver,
            controller_manager,
        };
        let server_url = format!("https://127.0.0.1:{}", ports.apiserver);
        let kubeconfig = work_dir.path().join("kubeconfig");
        write_kubeconfig(&kubeconfig, &server_url, &certificates)?;
        work_dir.subdir("kube-cache")?;
        for helm_dir in ["helm/cache", "helm/config", "helm/data"] {
            work_dir.subdir(helm_dir)?;
        }

        let mut control_plane = ControlPlane {
            processes: Vec::new(),
            binaries: binaries.clone(),
            kubeconfig,
            server_url,
            work_dir,
        };
        match control_plane.launch(&certificates, ports).await {
            Ok(()) => Ok(control_plane),
            Err(error) => {
                // Dropping `control_plane` kills what was started; its logs stay for reading.
                control_plane.work_dir.keep();
                Err(error)
            }
        }
    }

    /// Starts the processes one after the other, each once its dependency is ready.
    async fn launch(
        &mut self,
        certificates: &CertificateFiles,
        ports: Ports,
    ) -> Result<(), SandboxError> {
        let started = Instant::now();
        let Ports {
            etcd: etcd_port,
            etcd_peer: etcd_peer_port,
            apiserver: apiserver_port,
            controller_manager: controller_manager_port,
        } = ports;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let etcd_peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        let etcd_data = self.work_dir.subdir("etcd")?;
        self.spawn(
            "etcd",
            vec![
                "--name=sandbox".into(),
                format!("--data-dir={}", etcd_data.display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={etcd_peer_url}"),
                format!("--initial-advertise-peer-urls={etcd_peer_url}"),
                format!("--initial-cluster=sandbox={etcd_peer_url}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
        )?;
        self.wait_until_ready("etcd", || etcd_is_healthy(etcd_port))
            .await?;
        tracing::debug!(elapsed = ?started.elapsed(), "etcd is ready");

        let cert_dir = self.work_dir.subdir("kube-apiserver-certs")?;
        self.spawn(
            "kube-apiserver",
            vec![
                format!("--etcd-servers={etcd_url}"),
                format!("--secure-port={apiserver_port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                "--authorization-mode=RBAC".into(),
                format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
                flag(
                    "service-account-key-file",
                    &certificates.service_account_public_key,
                ),
                flag(
                    "service-account-signing-key-file",
                    &certificates.service_account_key,
                ),
                format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
                "--disable-admission-plugins=ServiceAccount".into(),
                flag("client-ca-file", &certificates.ca_cert),
                flag("tls-cert-file", &certificates.serving_cert),
                flag("tls-private-key-file", &certificates.serving_key),
                flag("cert-dir", &cert_dir),
            ],
        )?;
        let apiserver = client_for(&self.kubeconfig, None).await?;
        self.wait_until_ready("kube-apiserver", || endpoint_is_ok(&apiserver, "readyz"))
            .await?;
        tracing::debug!(elapsed = ?started.elapsed(), "kube-apiserver is ready");

        self.spawn(
            "kube-controller-manager",
            vec![
                flag("kubeconfig", &self.kubeconfig),
                flag("authentication-kubeconfig", &self.kubeconfig),
                flag("authorization-kubeconfig", &self.kubeconfig),
                "--leader-elect=false".into(),
                format!("--controllers={CONTROLLERS}"),
                flag(
                    "service-account-private-key-file",
                    &certificates.service_account_key,
                ),
                flag("root-ca-file", &certificates.ca_cert),
                "--use-service-account-credentials=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={controller_manager_port}"),
                flag("tls-cert-file", &certificates.serving_cert),
                flag("tls-private-key-file", &certificates.serving_key),
            ],
        )?;
        let controller_manager = client_for(
            &self.kubeconfig,
            Some(format!("https://127.0.0.1:{controller_manager_port}")),
        )
        .await?;
        self.wait_until_ready("kube-controller-manager", || {
            endpoint_is_ok(&controller_manager, "healthz")
        })
        .await?;
        tracing::debug!(elapsed = ?started.elapsed(), "kube-controller-manager is ready");
        Ok(())
    }

    /// Starts one component; its output goes to `<work dir>/<name>.log`.
    fn spawn(&mut self, name: &'static str, args: Vec<String>) -> Result<(), SandboxError> {
        let process =
            ManagedProcess::spawn(name, &self.binaries.path(name), &args, self.log_path(name))?;
        self.processes.push(process);
        Ok(())
    }

    /// The log file of one component.
    fn log_path(&self, name: &str) -> PathBuf {
        self.work_dir.path().join(format!("{name}.log"))
    }

    /// Polls `probe` until it succeeds, failing fast if any process exits, and with the log
    /// of `component` when [`READY_TIMEOUT`] passes.
    async fn wait_until_ready<F, Fut>(
        &mut self,
        component: &'static str,
        mut probe: F,
    ) -> Result<(), SandboxError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for process in &mut self.processes {
                process.ensure_running()?;
            }
            if tokio::time::timeout(PROBE_TIMEOUT, probe())
                .await
                .unwrap_or(false)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let log = self.log_path(component);
                return Err(SandboxError::NotReady {
                    process: component,
                    timeout: READY_TIMEOUT,
                    tail: log_tail(&log),
                    log,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The kubeconfig file for this control plane, usable by kube-rs, kubectl and helm
    /// (`KUBECONFIG=<path>`). Its user is in `system:masters`; its namespace is `default`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The work directory: certificates, kubeconfig, etcd data, and `<process>.log` for
    /// each of etcd, kube-apiserver and kube-controller-manager.
    pub fn work_dir(&self) -> &Path {
        self.work_dir.path()
    }

    /// Name (etcd, kube-apiserver, kube-controller-manager) and process id of each process.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.processes
            .iter()
            .map(|process| (process.name(), process.pid()))
            .collect()
    }

    /// A new client for this control plane, bound to the tokio runtime it is called on.
    /// Call it once per test (per runtime); do not keep clients in statics.
    pub async fn client(&self) -> Result<Client, SandboxError> {
        client_for(&self.kubeconfig, None).await
    }

    /// How a client reaches this control plane, for callers that make their own clients
    /// (the operator's election makes one on its own runtime).
    pub async fn kube_config(&self) -> Result<kube::Config, SandboxError> {
        config_for(&self.kubeconfig, None).await
    }

    /// A `kubectl` command with `KUBECONFIG` pointing at this control plane, for callers that
    /// need more control than [`ControlPlane::kubectl`] (stdin, a blocking run in `Drop`).
    pub fn kubectl_command(&self) -> Command {
        let mut command = Command::new(self.binaries.path("kubectl"));
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.work_dir.path().join("kube-cache"));
        command
    }

    /// A `helm` command with `KUBECONFIG` set and helm's cache, config and data folders
    /// inside the work directory, so nothing is read from or written to `$HOME`.
    pub fn helm_command(&self) -> Command {
        let helm = self.work_dir.path().join("helm");
        let mut command = Command::new(self.binaries.path("helm"));
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.work_dir.path().join("kube-cache"))
            .env("HELM_CACHE_HOME", helm.join("cache"))
            .env("HELM_CONFIG_HOME", helm.join("config"))
            .env("HELM_DATA_HOME", helm.join("data"));
        command
    }

    /// Runs kubectl with `args` against this control plane and returns its status, stdout
    /// and stderr. A non-zero exit is not an error here: inspect `Output::status`.
    pub async fn kubectl<I, S>(&self, args: I) -> Result<Output, SandboxError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self.kubectl_command(), args).await
    }

    /// Runs helm with `args` against this control plane and returns its status, stdout and
    /// stderr. A non-zero exit is not an error here: inspect `Output::status`.
    pub async fn helm<I, S>(&self, args: I) -> Result<Output, SandboxError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self.helm_command(), args).await
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Clients first: the controller manager, then the API server, then its store.
        for process in self.processes.iter_mut().rev() {
            process.kill();
        }
    }
}

/// The loopback ports of one control plane.
#[derive(Debug, Clone, Copy)]
struct Ports {
    /// etcd's client port.
    etcd: u16,
    /// etcd's peer port: unused by a single member, but it must not collide with others'.
    etcd_peer: u16,
    /// kube-apiserver's secure port.
    apiserver: u16,
    /// kube-controller-manager's secure port, for its health check.
    controller_manager: u16,
}

/// `--name=<path>`.
fn flag(name: &str, path: &Path) -> String {
    format!("--{name}={}", path.display())
}

/// Reserves distinct free loopback ports by binding them all at once, then releases them.
fn free_ports<const N: usize>() -> Result<[u16; N], SandboxError> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(SandboxError::NoFreePort)?;
        *port = listener
            .local_addr()
            .map_err(SandboxError::NoFreePort)?
            .port();
        listeners.push(listener);
    }
    Ok(ports)
}

/// Writes a kubeconfig naming the CA and the admin certificate by path.
fn write_kubeconfig(
    path: &Path,
    server_url: &str,
    certificates: &CertificateFiles,
) -> Result<(), SandboxError> {
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "shardplane-sandbox",
            "cluster": {
                "server": server_url,
                "certificate-authority": certificates.ca_cert,
            },
        }],
        "users": [{
            "name": "shardplane-admin",
            "user": {
                "client-certificate": certificates.admin_cert,
                "client-key": certificates.admin_key,
            },
        }],
        "contexts": [{
            "name": "shardplane-sandbox",
            "context": {
                "cluster": "shardplane-sandbox",
                "user": "shardplane-admin",
                "namespace": "default",
            },
        }],
        "current-context": "shardplane-sandbox",
    });
    let write_error = |source| SandboxError::WorkDir {
        path: path.to_path_buf(),
        source,
    };
    let yaml =
        serde_yaml::to_string(&kubeconfig).map_err(|e| write_error(std::io::Error::other(e)))?;
    std::fs::write(path, yaml).map_err(write_error)
}

/// A client from `kubeconfig`, optionally aimed at another server that trusts the same CA
/// (kube-controller-manager's health endpoint).
async fn client_for(kubeconfig: &Path, server: Option<String>) -> Result<Client, SandboxError> {
    let config = config_for(kubeconfig, server).await?;
    Client::try_from(config).map_err(|source| SandboxError::Client {
        path: kubeconfig.to_path_buf(),
        source,
    })
}

/// How to reach the server of `kubeconfig`, or `server` with the same credentials.
async fn config_for(
    kubeconfig: &Path,
    server: Option<String>,
) -> Result<kube::Config, SandboxError> {
    let kubeconfig_error = |source| SandboxError::Kubeconfig {
        path: kubeconfig.to_path_buf(),
        source,
    };
    let mut config = Kubeconfig::read_from(kubeconfig).map_err(kubeconfig_error)?;
    if let Some(server) = server {
        for cluster in config
            .clusters
            .iter_mut()
            .filter_map(|named| named.cluster.as_mut())
        {
            cluster.server = Some(server.clone());
        }
    }
    kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .map_err(kubeconfig_error)
}

/// True when etcd's `/health` on `port` reports healthy.
async fn etcd_is_healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request = b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    let mut response = Vec::new();
    stream.write_all(request).await.is_ok()
        && stream.read_to_end(&mut response).await.is_ok()
        && String::from_utf8_lossy(&response).contains(r#""health":"true""#)
}

/// True when `GET /<endpoint>` (`readyz`, `healthz`) answers with a success status.
async fn endpoint_is_ok(client: &Client, endpoint: &str) -> bool {
    match Request::new("").get(endpoint, &GetParams::default()) {
        Ok(request) => client.request_text(request).await.is_ok(),
        Err(_) => false,
    }
}

/// Runs a prepared command with extra arguments, capturing its output.
async fn run<I, S>(command: Command, args: I) -> Result<Output, SandboxError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let program = PathBuf::from(command.get_program());
    tokio::process::Command::from(command)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| SandboxError::Command { program, source })
}
