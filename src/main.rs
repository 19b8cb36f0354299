//! The `shardplane` binary: one process per subcommand. Each subcommand is a thin shell over
//! the library; errors reach the user here, as `anyhow` chains.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

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
        dir: Option<std::path::PathBuf>,
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

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
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
        Command::Operator => not_available("operator"),
        Command::Agent => not_available("agent"),
        Command::GitSync => not_available("git-sync"),
        Command::Plan => not_available("plan"),
    }
}

/// Subcommands whose implementation has not landed say so instead of pretending to work.
fn not_available(name: &str) -> anyhow::Result<()> {
    anyhow::bail!(
        "`shardplane {name}` is not available in this build yet; see the README's status section"
    )
}
