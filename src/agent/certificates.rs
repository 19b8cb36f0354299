//! The node's certificate on the node: read from the Secret the operator issues
//! (`<node>-tls`, `crate::tls`) into `<data dir>/tls/` — `server.crt`, `server.key` (0600,
//! the PostgreSQL user's) and `ca.crt` — which every instance serves and checks peers
//! against. Before its first certificate a node makes no instance (its peers admit only TLS
//! sessions from other hosts); after that, the files on disk are enough to start, so a node
//! restarts without the control plane. A renewed certificate is installed file by file
//! (each replaced by a rename, never half-written), then every instance reloads
//! (`NodeContext::certificates_installed`): sessions that are open stay open.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::context::NodeContext;
use super::error::AgentError;
use super::postgres::{PeerTls, ServerTls, Toolchain};
use crate::tls::{AUTHORITY_KEY, CERTIFICATE_KEY, PRIVATE_KEY_KEY, node_secret_name};

/// How often the node's certificate Secret is read for a renewal. A renewal is due a third
/// of a certificate's life before it expires, so this only bounds how soon a replaced
/// authority or a changed address takes effect.
const RENEWAL_POLL: Duration = Duration::from_secs(15);
/// How often a node still waiting for its first certificate reads the Secret.
const FIRST_POLL: Duration = Duration::from_millis(500);

/// The folder of the node's certificate files.
pub(super) fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// A certificate, its key and its authority, as PEM text.
#[derive(Clone, PartialEq, Eq)]
struct Material {
    certificate: String,
    key: String,
    authority: String,
}

/// The node's certificate files, waiting for the operator to issue the first one if there
/// are none yet; returns them and the peers' check built from them.
pub(super) async fn install_first(
    secrets: &Api<Secret>,
    node: &str,
    data_dir: &Path,
    toolchain: &Toolchain,
) -> Result<(ServerTls, PeerTls), AgentError> {
    let files = ServerTls::in_dir(&tls_dir(data_dir));
    let mut waited = 0u32;
    let material = loop {
        if let Some(material) = read_files(&files) {
            break material;
        }
        match read_secret(secrets, node).await {
            Ok(Some(material)) => {
                write_files(&files, &material, toolchain)?;
                tracing::info!(%node, "installed the node's certificate");
                break material;
            }
            Ok(None) => {}
            Err(error) => tracing::debug!(%error, "the node's certificate Secret not read"),
        }
        if waited.is_multiple_of(20) {
            tracing::info!(%node, secret = %node_secret_name(node),
                "waiting for the operator to issue the node's certificate");
        }
        waited += 1;
        tokio::time::sleep(FIRST_POLL).await;
    };
    let peers = PeerTls::new(files.clone(), &material.authority).map_err(|error| {
        AgentError::Certificate {
            node: node.to_owned(),
            problem: error.to_string(),
        }
    })?;
    Ok((files, peers))
}

/// Installs every renewal of the node's certificate, for the life of the process.
pub(super) async fn keep_renewed(ctx: &NodeContext) {
    let Some(files) = ctx.settings.tls.clone() else {
        return;
    };
    let secrets: Api<Secret> = ctx.api();
    loop {
        tokio::time::sleep(RENEWAL_POLL).await;
        let issued = match read_secret(&secrets, &ctx.node).await {
            Ok(Some(issued)) => issued,
            Ok(None) => continue,
            Err(error) => {
                tracing::debug!(%error, "the node's certificate Secret not read");
                continue;
            }
        };
        if read_files(&files).as_ref() == Some(&issued) {
            continue;
        }
        let installed = write_files(&files, &issued, &ctx.toolchain).and_then(|()| {
            let trust = ctx
                .credentials
                .tls()
                .map(|tls| tls.trust(&issued.authority));
            trust
                .transpose()
                .map_err(|error| AgentError::Certificate {
                    node: ctx.node.clone(),
                    problem: error.to_string(),
                })
                .map(drop)
        });
        match installed {
            Ok(()) => {
                ctx.certificates_installed();
                tracing::info!(node = %ctx.node, "installed the node's renewed certificate; every instance reloads");
            }
            Err(error) => {
                tracing::warn!(%error, "the node's renewed certificate not installed")
            }
        }
    }
}

/// The certificate the operator issued to `node`, if it did.
async fn read_secret(secrets: &Api<Secret>, node: &str) -> Result<Option<Material>, kube::Error> {
    let Some(secret) = secrets.get_opt(&node_secret_name(node)).await? else {
        return Ok(None);
    };
    let data = secret.data.unwrap_or_default();
    let text = |key: &str| {
        data.get(key)
            .and_then(|bytes| String::from_utf8(bytes.0.clone()).ok())
            .filter(|text| !text.is_empty())
    };
    Ok(
        match (
            text(CERTIFICATE_KEY),
            text(PRIVATE_KEY_KEY),
            text(AUTHORITY_KEY),
        ) {
            (Some(certificate), Some(key), Some(authority)) => Some(Material {
                certificate,
                key,
                authority,
            }),
            _ => None,
        },
    )
}

fn read_files(files: &ServerTls) -> Option<Material> {
    let read = |path: &Path| std::fs::read_to_string(path).ok().filter(|t| !t.is_empty());
    Some(Material {
        certificate: read(&files.certificate_file)?,
        key: read(&files.key_file)?,
        authority: read(&files.authority_file)?,
    })
}

/// Writes each file by a rename of a complete one, key first (a server reloading between
/// two renames keeps its previous certificate if the pair does not match), the authority
/// last.
fn write_files(
    files: &ServerTls,
    material: &Material,
    toolchain: &Toolchain,
) -> Result<(), AgentError> {
    let dir = files.key_file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| AgentError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write_file(&files.key_file, &material.key, 0o600, toolchain)?;
    write_file(
        &files.certificate_file,
        &material.certificate,
        0o644,
        toolchain,
    )?;
    write_file(&files.authority_file, &material.authority, 0o644, toolchain)
}

fn write_file(path: &Path, text: &str, mode: u32, toolchain: &Toolchain) -> Result<(), AgentError> {
    let io = |source| AgentError::Io {
        path: path.to_path_buf(),
        source,
    };
    let temporary = path.with_extension("new");
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    toolchain.hand_over(&temporary)?;
    std::fs::rename(&temporary, path).map_err(io)
}
