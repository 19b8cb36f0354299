//! Fetching: the branch of a repository into a local bare repository with git2, and reading
//! the manifest files under a path straight from the commit's tree (no working copy, so a
//! half-written checkout can never be read). Credentials come from a Secret and are handed
//! to libgit2 only; they are never logged or put in errors.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use git2::{FetchOptions, RemoteCallbacks, Repository, TreeWalkMode, TreeWalkResult};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::error::SyncError;

/// Credentials for one repository, from the GitSync's credentials Secret.
#[derive(Clone, Default)]
pub struct Credentials {
    /// HTTPS user name (`token` by default: most forges accept any with a token).
    username: Option<String>,
    /// HTTPS token or password.
    token: Option<String>,
    /// An OpenSSH private key.
    identity: Option<String>,
    /// OpenSSH `known_hosts` lines the server's host key must match.
    known_hosts: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("identity", &self.identity.as_ref().map(|_| "<redacted>"))
            .field("known_hosts", &self.known_hosts.is_some())
            .finish()
    }
}

impl Credentials {
    /// Reads the keys `username`, `token`, `identity` and `known_hosts` of a Secret.
    pub async fn from_secret(
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> Result<Credentials, SyncError> {
        let data = secret_data(client, namespace, name).await?;
        Ok(Credentials {
            username: data.get("username").cloned(),
            token: data.get("token").cloned(),
            identity: data.get("identity").cloned(),
            known_hosts: data.get("known_hosts").cloned(),
        })
    }
}

/// A Secret's data as UTF-8 strings; a missing Secret is an error naming it.
pub(crate) async fn secret_data(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<BTreeMap<String, String>, SyncError> {
    let secret_error = |problem: String| SyncError::Secret {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        problem,
    };
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(SyncError::kube(format!(
            "reading Secret {namespace}/{name}"
        )))?
        .ok_or_else(|| secret_error("not found; create it or fix the reference".to_owned()))?;
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| {
            String::from_utf8(value.0)
                .map(|text| (key.clone(), text))
                .map_err(|_| secret_error(format!("key {key} is not UTF-8 text")))
        })
        .collect()
}

/// One manifest file of a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestFile {
    /// Its path from the repository's root.
    pub path: String,
    /// Its content.
    pub content: String,
}

/// Fetches `branch` of `url` into the bare repository at `dir` (created on first use) and
/// returns the branch's head commit. Blocking: call from `spawn_blocking`.
pub fn fetch(
    dir: &Path,
    url: &str,
    branch: &str,
    credentials: &Credentials,
) -> Result<git2::Oid, SyncError> {
    let fetch_error = |error: git2::Error| SyncError::Fetch {
        url: redact_url(url),
        branch: branch.to_owned(),
        message: error.message().to_owned(),
    };
    let repo = open_or_init(dir).map_err(fetch_error)?;
    let tracking = format!("refs/remotes/origin/{branch}");
    let refspec = format!("+refs/heads/{branch}:{tracking}");
    let mut remote = repo.remote_anonymous(url).map_err(fetch_error)?;
    let mut options = FetchOptions::new();
    options.remote_callbacks(callbacks(credentials));
    remote
        .fetch(&[refspec.as_str()], Some(&mut options), None)
        .map_err(fetch_error)?;
    repo.refname_to_id(&tracking).map_err(fetch_error)
}

/// `url` with any `user:password@` replaced by `***@`, for messages. The CRD refuses such
/// URLs; this keeps a credential out of errors even if one slips through.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) if rest[..at].contains(':') => format!("{scheme}://***@{}", &rest[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Opens the bare repository at `dir`, or makes one.
pub fn open_or_init(dir: &Path) -> Result<Repository, git2::Error> {
    match Repository::open_bare(dir) {
        Ok(repo) => Ok(repo),
        Err(_) => Repository::init_bare(dir),
    }
}

/// Where the bare repository of one GitSync lives under the checkout folder.
pub fn repository_dir(checkout_dir: &Path, namespace: &str, name: &str) -> PathBuf {
    checkout_dir.join(namespace).join(format!("{name}.git"))
}

fn callbacks(credentials: &Credentials) -> RemoteCallbacks<'_> {
    let mut callbacks = RemoteCallbacks::new();
    callbacks.credentials(move |_url, username_from_url, allowed| {
        if allowed.contains(git2::CredentialType::SSH_KEY)
            && let Some(identity) = &credentials.identity
        {
            return git2::Cred::ssh_key_from_memory(
                username_from_url.unwrap_or("git"),
                None,
                identity,
                None,
            );
        }
        if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT)
            && let Some(token) = &credentials.token
        {
            let username = credentials.username.as_deref().unwrap_or("token");
            return git2::Cred::userpass_plaintext(username, token);
        }
        Err(git2::Error::from_str(
            "the server asked for credentials the credentials Secret does not hold (HTTPS: token; SSH: identity)",
        ))
    });
    callbacks.certificate_check(move |cert, host| {
        let Some(hostkey) = cert.as_hostkey() else {
            // HTTPS: libgit2 has already verified the certificate chain.
            return Ok(git2::CertificateCheckStatus::CertificatePassthrough);
        };
        let known = credentials
            .known_hosts
            .as_deref()
            .is_some_and(|lines| host_key_known(lines, hostkey.hostkey().unwrap_or_default()));
        if known {
            Ok(git2::CertificateCheckStatus::CertificateOk)
        } else {
            Err(git2::Error::from_str(&format!(
                "the SSH host key of {host} is not in known_hosts of the credentials Secret"
            )))
        }
    });
    callbacks
}

/// Whether `key` (the raw SSH host key blob) is one of the keys of `known_hosts`.
fn host_key_known(known_hosts: &str, key: &[u8]) -> bool {
    ssh_key::known_hosts::KnownHosts::new(known_hosts).any(|entry| {
        entry
            .ok()
            .and_then(|entry| entry.public_key().to_bytes().ok())
            .is_some_and(|blob| blob == key)
    })
}

/// Reads every `*.yaml`/`*.yml` file under `path` of `commit` (skipping hidden files and
/// folders), sorted by path. A missing
/// `path` is an error, never an empty result, so a broken checkout cannot prune.
pub fn read_manifests(
    repo: &Repository,
    commit: git2::Oid,
    path: &str,
) -> Result<Vec<ManifestFile>, SyncError> {
    let read_error = |error: git2::Error| SyncError::Read {
        commit: commit.to_string(),
        message: error.message().to_owned(),
    };
    let root = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(read_error)?;
    let path = path.trim_matches('/');
    let tree = if path.is_empty() {
        root
    } else {
        let missing = || SyncError::PathMissing {
            path: path.to_owned(),
            commit: commit.to_string(),
        };
        let entry = root.get_path(Path::new(path)).map_err(|_| missing())?;
        entry
            .to_object(repo)
            .map_err(read_error)?
            .into_tree()
            .map_err(|_| missing())?
    };
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    let mut blobs = Vec::new();
    tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
        let name = entry.name().unwrap_or_default();
        // Hidden files and folders (`.github/workflows/*.yaml`, editor files) are not
        // manifests.
        if name.starts_with('.') {
            return TreeWalkResult::Skip;
        }
        if entry.kind() == Some(git2::ObjectType::Blob)
            && (name.ends_with(".yaml") || name.ends_with(".yml"))
        {
            blobs.push((format!("{prefix}{dir}{name}"), entry.id()));
        }
        TreeWalkResult::Ok
    })
    .map_err(read_error)?;
    let mut files = blobs
        .into_iter()
        .map(|(path, id)| {
            let blob = repo.find_blob(id).map_err(read_error)?;
            let content =
                String::from_utf8(blob.content().to_vec()).map_err(|_| SyncError::Invalid {
                    commit: commit.to_string(),
                    problems: vec![super::error::Invalid {
                        file: path.clone(),
                        object: None,
                        reason: "not UTF-8 text".to_owned(),
                    }],
                })?;
            Ok(ManifestFile { path, content })
        })
        .collect::<Result<Vec<_>, SyncError>>()?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_never_shows_secrets() {
        let credentials = Credentials {
            username: Some("bot".into()),
            token: Some("ghp_supersecret".into()),
            identity: Some("-----BEGIN OPENSSH PRIVATE KEY-----abc".into()),
            known_hosts: None,
        };
        let shown = format!("{credentials:?}");
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(shown.contains("bot"), "{shown}");
    }

    #[test]
    fn passwords_in_urls_are_redacted_and_plain_users_kept() {
        assert_eq!(
            redact_url("https://bot:ghp_secret@github.com/a/b.git"),
            "https://***@github.com/a/b.git"
        );
        assert_eq!(
            redact_url("ssh://git@github.com/a/b.git"),
            "ssh://git@github.com/a/b.git"
        );
        assert_eq!(redact_url("file:///tmp/a@b:c"), "file:///tmp/a@b:c");
    }

    #[test]
    fn host_key_matches_only_listed_keys() {
        let key = "AAAAC3NzaC1lZDI1NTE5AAAAIBEfDtUjqWkKJ8TY0Uf7sPSVLbPuWuyjCZVFDmwr8/HF";
        let known = format!("github.com ssh-ed25519 {key}\n");
        let blob = ssh_key::PublicKey::from_openssh(&format!("ssh-ed25519 {key}"))
            .unwrap()
            .to_bytes()
            .unwrap();
        assert!(host_key_known(&known, &blob));
        assert!(!host_key_known(&known, &blob[..blob.len() - 1]));
        assert!(!host_key_known("", &blob));
    }
}
