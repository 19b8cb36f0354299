//! Errors of the local control plane, worded so that the person running a test or
//! `shardplane demo` knows what failed and what to do about it.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why the local control plane could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Neither `SHARDPLANE_TESTENV_BIN`, `SHARDPLANE_CACHE` nor `HOME` says where the binaries are.
    #[error(
        "cannot tell where the control plane binaries are: none of SHARDPLANE_TESTENV_BIN, \
         SHARDPLANE_CACHE or HOME is set; run tools/testenv/build.sh and set \
         SHARDPLANE_TESTENV_BIN to the folder it prints"
    )]
    NoBinaryFolder,

    /// Some of the Go-built binaries are not in the binary folder.
    #[error(
        "the control plane binaries {missing} are missing from {}; build them with \
         tools/testenv/build.sh (or set SHARDPLANE_TESTENV_BIN to a folder that holds them)",
        dir.display()
    )]
    BinariesMissing {
        /// The folder that was searched.
        dir: PathBuf,
        /// The missing binaries, comma-separated.
        missing: String,
    },

    /// The work directory (certificates, kubeconfig, etcd data, logs) could not be written.
    #[error("cannot write the control plane's work directory {}: {source}", path.display())]
    WorkDir {
        /// The file or folder that could not be written.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// rcgen could not generate the CA, the certificates or the service-account key.
    #[error("cannot generate the control plane's certificates: {0}")]
    Certificates(#[from] rcgen::Error),

    /// No free TCP port could be reserved on 127.0.0.1.
    #[error("cannot reserve a free port on 127.0.0.1: {0}")]
    NoFreePort(#[source] std::io::Error),

    /// A control plane process could not be spawned at all.
    #[error("cannot start {process} from {}: {source}", binary.display())]
    Spawn {
        /// The component: etcd, kube-apiserver or kube-controller-manager.
        process: &'static str,
        /// The binary that was executed.
        binary: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// A control plane process exited while the control plane was starting.
    #[error("{process} exited during startup ({status}); last lines of {}:\n{tail}", log.display())]
    ExitedEarly {
        /// The component that exited.
        process: &'static str,
        /// How it exited.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },

    /// A control plane process did not become ready in time.
    #[error(
        "{process} was not ready after {timeout:?} (is the machine overloaded?); last lines of {}:\n{tail}",
        log.display()
    )]
    NotReady {
        /// The component that was not ready.
        process: &'static str,
        /// How long startup waited.
        timeout: Duration,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },

    /// The generated kubeconfig could not be read back or turned into a client configuration.
    #[error("cannot load the kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// What kube-rs reported.
        source: kube::config::KubeconfigError,
    },

    /// A Kubernetes client could not be built from the kubeconfig.
    #[error("cannot build a Kubernetes client from {}: {source}", path.display())]
    Client {
        /// The kubeconfig file.
        path: PathBuf,
        /// What kube-rs reported.
        source: kube::Error,
    },

    /// kubectl or helm could not be run.
    #[error(
        "cannot run {}: {source}; build it with tools/testenv/build.sh",
        program.display()
    )]
    Command {
        /// The binary that was executed.
        program: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
}

impl SandboxError {
    /// True when a process failed because a port picked as free was taken meanwhile by
    /// another program; starting again with new ports fixes that.
    pub(crate) fn is_port_conflict(&self) -> bool {
        match self {
            SandboxError::ExitedEarly { tail, .. } | SandboxError::NotReady { tail, .. } => {
                tail.contains("address already in use")
            }
            _ => false,
        }
    }
}
