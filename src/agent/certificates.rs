//! The node's certificate on the node: read from the Secret the operator issues
//! (`<node>-tls`, `crate::tls`) into `<data dir>/tls/` — `server.crt`, `server.key` (0600,
//! the PostgreSQL user's) and `ca.crt` — which every instance serves and checks peers
//! against. Before its first certificate a node makes no instance (its peers admit only TLS
//! sessions from other hosts); after that, the files on disk are enough to start, so a node
//! restarts without the control plane. A renewed certificate is installed file by file
//! (each replaced by a rename, never half-written), then every instance reloads
//! (`NodeContext::certificates_installed`): sessions that are open stay open. The node's
//! heartbeat key comes in the same Secret (`heartbeat.key` beside the others, 0600).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use tokio_rustls::rustls::{ClientConfig, ServerConfig};

use super::context::NodeContext;
use super::error::AgentError;
use super::postgres::{NodeTlsPem, PeerTls, ServerTls, Toolchain};
use super::protocol::HeartbeatKey;
use crate::tls::{
    AUTHORITY_KEY, CERTIFICATE_KEY, HEARTBEAT_KEY, PRIVATE_KEY_KEY, node_client_config,
    node_secret_name, node_server_config, not_after, secret_text,
};

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

/// A certificate, its key and its authority, as PEM text, and the node's heartbeat key.
#[derive(Clone, PartialEq, Eq)]
struct Material {
    certificate: String,
    key: String,
    authority: String,
    heartbeat_key: String,
}

impl Material {
    fn pem(&self) -> NodeTlsPem<'_> {
        NodeTlsPem {
            certificate: &self.certificate,
            key: &self.key,
            authority: &self.authority,
        }
    }
}

/// The file beside the certificate's holding the node's heartbeat key (0600).
fn heartbeat_key_file(files: &ServerTls) -> PathBuf {
    files.key_file.with_file_name("heartbeat.key")
}

/// The node's certificate files, waiting for the operator to issue the first one if there
/// are none yet; returns them and the peers' check built from them, and sets `heartbeat_key`.
pub(super) async fn install_first(
    secrets: &Api<Secret>,
    node: &str,
    data_dir: &Path,
    toolchain: &Toolchain,
    heartbeat_key: &HeartbeatKey,
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
    heartbeat_key.set(material.heartbeat_key.as_bytes());
    let peers =
        PeerTls::new(files.clone(), &material.pem()).map_err(|error| AgentError::Certificate {
            node: node.to_owned(),
            problem: error.to_string(),
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
            match ctx.credentials.tls() {
                Some(tls) => tls
                    .renew(&issued.pem())
                    .map_err(|error| AgentError::Certificate {
                        node: ctx.node.clone(),
                        problem: error.to_string(),
                    }),
                None => Ok(()),
            }
        });
        match installed {
            Ok(()) => {
                ctx.heartbeat_key.set(issued.heartbeat_key.as_bytes());
                ctx.certificates_installed();
                tracing::info!(node = %ctx.node, "installed the node's renewed certificate; every instance reloads");
            }
            Err(error) => {
                tracing::warn!(%error, "the node's renewed certificate not installed")
            }
        }
    }
}

/// The TLS configurations of the node's endpoint between nodes (the failsafe), from its
/// installed files: a server admitting only the cluster's nodes, a client presenting the
/// node's certificate.
pub(super) fn endpoint_configs(
    ctx: &NodeContext,
) -> Result<(Arc<ServerConfig>, Arc<ClientConfig>), AgentError> {
    let unusable = |problem: String| AgentError::Certificate {
        node: ctx.node.clone(),
        problem,
    };
    let files = ctx
        .settings
        .tls
        .as_ref()
        .ok_or_else(|| unusable("the node has no certificate".into()))?;
    let material = read_files(files).ok_or_else(|| unusable("its files cannot be read".into()))?;
    let server = node_server_config(&material.certificate, &material.key, &material.authority)
        .map_err(|e| unusable(e.to_string()))?;
    let client = node_client_config(&material.certificate, &material.key, &material.authority)
        .map_err(|e| unusable(e.to_string()))?;
    Ok((Arc::new(server), Arc::new(client)))
}

/// When the node's installed certificate expires (RFC 3339), for its status.
pub(super) fn installed_not_after(ctx: &NodeContext) -> Option<String> {
    let files = ctx.settings.tls.as_ref()?;
    let pem = std::fs::read_to_string(&files.certificate_file).ok()?;
    let seconds = i64::try_from(not_after(&pem)?).ok()?;
    Some(Timestamp::from_second(seconds).ok()?.to_string())
}

/// The certificate the operator issued to `node`, if it did.
async fn read_secret(secrets: &Api<Secret>, node: &str) -> Result<Option<Material>, kube::Error> {
    let Some(secret) = secrets.get_opt(&node_secret_name(node)).await? else {
        return Ok(None);
    };
    let text = |key: &str| secret_text(&secret, key);
    Ok(
        match (
            text(CERTIFICATE_KEY),
            text(PRIVATE_KEY_KEY),
            text(AUTHORITY_KEY),
            text(HEARTBEAT_KEY),
        ) {
            (Some(certificate), Some(key), Some(authority), Some(heartbeat_key)) => {
                Some(Material {
                    certificate,
                    key,
                    authority,
                    heartbeat_key,
                })
            }
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
        heartbeat_key: read(&heartbeat_key_file(files))?,
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
    write_file(
        &heartbeat_key_file(files),
        &material.heartbeat_key,
        0o600,
        toolchain,
    )?;
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
