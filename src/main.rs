//! The `shardplane` binary: one process per subcommand. Each subcommand is a thin shell over
//! the library; errors reach the user here, as `anyhow` chains.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
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
    /// the examples applied; runs until Ctrl-C.
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
        /// Stop right after showing the resources instead of running until Ctrl-C.
        #[arg(long)]
        exit: bool,
    },
    /// Run the operator (reconcilers and plan executor). Not available yet.
    Operator,
    /// Run the node agent beside a storage node's PostgreSQL instances. Not available yet.
    Agent,
    /// Pull manifests from a git repository and apply them. Not available yet.
    GitSync,
    /// Show what a pull request would cause. Not available yet.
    Plan,
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

async fn run(cli: Cli) -> anyhow::Result<()> {
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
        Command::Operator => not_available("operator"),
        Command::Agent => not_available("agent"),
        Command::GitSync => not_available("git-sync"),
        Command::Plan => not_available("plan"),
    }
}

async fn demo(options: DemoOptions, exit: bool) -> anyhow::Result<()> {
    eprintln!("starting a local control plane and installing Shardplane...");
    let demo = Demo::start(&options).await?;
    println!("{}", demo.resources);
    if exit {
        return Ok(());
    }
    let kubeconfig = demo.control_plane.kubeconfig_path().display();
    println!("The sandbox runs until Ctrl-C. Meanwhile, in another shell:");
    println!("  export KUBECONFIG={kubeconfig}");
    println!("  kubectl get shardplane -n {}", options.namespace);
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}

/// Subcommands whose implementation has not landed say so instead of pretending to work.
fn not_available(name: &str) -> anyhow::Result<()> {
    anyhow::bail!(
        "`shardplane {name}` is not available in this build yet; see the README's status section"
    )
}
