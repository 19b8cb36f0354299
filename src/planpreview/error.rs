//! What can stop `shardplane plan` from previewing a change.

/// Why no preview could be made.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// A revision could not be read from the repository.
    #[error("cannot read revision {rev} of the repository at {repo}: {message}")]
    Git {
        /// The repository path.
        repo: String,
        /// The revision asked for.
        rev: String,
        /// libgit2's message.
        message: String,
    },
    /// The manifests of a revision could not be read (for example `--path` is missing).
    #[error("{0}")]
    Manifests(String),
    /// The preview could not be rendered as JSON.
    #[error("cannot render the preview as JSON: {0}")]
    Json(#[from] serde_json::Error),
}
