//! `shardplane demo`: the local sandbox in one command — a real control plane on loopback,
//! the Helm chart (which carries the CRDs) installed, `examples/` applied, and
//! `kubectl get shardplane` shown. It grows with the operator and the agents.

use std::path::PathBuf;

use crate::api::crds;

use super::{ControlPlane, SandboxError};

/// The namespace the chart is installed into.
pub const SYSTEM_NAMESPACE: &str = "shardplane-system";

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

/// A running demo: its control plane lives as long as this value.
pub struct Demo {
    /// The control plane; its kubeconfig works with kubectl and helm while the demo runs.
    pub control_plane: ControlPlane,
    /// `kubectl get shardplane` in the examples' namespace, after applying them.
    pub resources: String,
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
}

impl Demo {
    /// Starts the control plane, installs the chart, waits for the CRDs, applies the examples
    /// and reads back what they created.
    pub async fn start(options: &DemoOptions) -> Result<Self, DemoError> {
        let control_plane = ControlPlane::start().await?;
        let chart = options.chart.to_string_lossy();
        let examples = options.examples.to_string_lossy();
        let namespace = options.namespace.as_str();
        let crd_names = crds().into_iter().filter_map(|crd| crd.metadata.name);
        let wait_for_crds: Vec<String> = ["wait", "--for=condition=Established", "--timeout=60s"]
            .into_iter()
            .map(String::from)
            .chain(crd_names.map(|name| format!("crd/{name}")))
            .collect();

        let cp = &control_plane;
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
        let resources = run(
            cp,
            "listing the resources",
            kubectl,
            &["get", "shardplane", "--namespace", namespace],
        )
        .await?;

        Ok(Demo {
            control_plane,
            resources,
        })
    }
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
