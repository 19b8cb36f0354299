//! What can go wrong in one sync, as messages a user can act on. Nothing here carries a
//! credential: errors name Secrets and keys, never their values.

use std::fmt;

/// One manifest (or one object in it) that a commit cannot be applied with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The file, relative to the repository's root.
    pub file: String,
    /// The object, as `Kind/name`, when the problem belongs to one.
    pub object: Option<String>,
    /// Why, in a sentence.
    pub reason: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.object {
            Some(object) => write!(f, "{}: {object}: {}", self.file, self.reason),
            None => write!(f, "{}: {}", self.file, self.reason),
        }
    }
}

/// Renders problems one per clause, capped so a condition message stays readable.
pub(crate) fn render_invalid(problems: &[Invalid]) -> String {
    const SHOWN: usize = 10;
    let mut text = problems
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > SHOWN {
        text.push_str(&format!("; and {} more", problems.len() - SHOWN));
    }
    text
}

/// Why a sync did not apply its commit.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The repository could not be fetched.
    #[error(
        "cannot fetch branch {branch} of {url}: {message}; check spec.url, spec.branch and the credentials Secret"
    )]
    Fetch {
        /// The repository URL (credentials are never part of it: they come from a Secret).
        url: String,
        /// The branch.
        branch: String,
        /// libgit2's message.
        message: String,
    },
    /// The commit could not be read.
    #[error("cannot read commit {commit}: {message}")]
    Read {
        /// The commit.
        commit: String,
        /// What failed.
        message: String,
    },
    /// `spec.path` does not exist in the commit: a broken checkout, so nothing is applied
    /// or pruned.
    #[error("spec.path {path:?} is not a folder in commit {commit}; nothing was applied or pruned")]
    PathMissing {
        /// The path.
        path: String,
        /// The commit.
        commit: String,
    },
    /// The commit holds no manifests while objects are applied: refused so a broken or
    /// emptied checkout never prunes the cluster.
    #[error(
        "commit {commit} has no manifests under {path:?} but {applied} objects are applied; refusing to prune everything (delete the objects with kubectl if that is what you want)"
    )]
    EmptyCheckout {
        /// The commit.
        commit: String,
        /// The path.
        path: String,
        /// How many objects the inventory holds.
        applied: usize,
    },
    /// The commit's signature is missing or not by an allowed signer.
    #[error("commit {commit} refused: {reason}")]
    Signature {
        /// The commit.
        commit: String,
        /// Why.
        reason: String,
    },
    /// Some manifests are invalid; nothing was applied.
    #[error("commit {commit} not applied, {} invalid: {}", .problems.len(), render_invalid(.problems))]
    Invalid {
        /// The commit.
        commit: String,
        /// Every problem found.
        problems: Vec<Invalid>,
    },
    /// The apply itself failed after validation passed (for example a concurrent change);
    /// retried at the next interval.
    #[error("applying commit {commit} failed after validation: {}", render_invalid(.problems))]
    Apply {
        /// The commit.
        commit: String,
        /// The objects that failed.
        problems: Vec<Invalid>,
        /// The inventory to record: what was applied before and what may be applied now.
        inventory: Vec<String>,
    },
    /// The GitSync's spec cannot be used as it is.
    #[error("{0}")]
    Spec(String),
    /// A referenced Secret is missing or lacks a key.
    #[error("Secret {namespace}/{name}: {problem}")]
    Secret {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What is wrong with it (never its content).
        problem: String,
    },
    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API: {action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// The client's error.
        source: kube::Error,
    },
    /// A blocking git task could not be joined (it panicked or was cancelled).
    #[error("the git task stopped unexpectedly: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl SyncError {
    /// The CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            SyncError::Fetch { .. } => "FetchFailed",
            SyncError::Read { .. } | SyncError::PathMissing { .. } => "CheckoutFailed",
            SyncError::EmptyCheckout { .. } => "EmptyCheckoutRefused",
            SyncError::Signature { .. } => "SignatureRefused",
            SyncError::Invalid { .. } => "ValidationFailed",
            SyncError::Apply { .. } => "ApplyFailed",
            SyncError::Secret { .. } => "SecretInvalid",
            SyncError::Spec(_) => "SpecInvalid",
            SyncError::Kube { .. } | SyncError::Task(_) => "ApiError",
        }
    }

    /// The commit the error is about, when one was fetched.
    pub fn commit(&self) -> Option<&str> {
        match self {
            SyncError::Read { commit, .. }
            | SyncError::PathMissing { commit, .. }
            | SyncError::EmptyCheckout { commit, .. }
            | SyncError::Signature { commit, .. }
            | SyncError::Invalid { commit, .. }
            | SyncError::Apply { commit, .. } => Some(commit),
            _ => None,
        }
    }

    pub(crate) fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> SyncError {
        let action = action.into();
        move |source| SyncError::Kube { action, source }
    }
}
