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
    /// The planner refused its input (a bug in the preview's conversion, or an invalid
    /// topology); the message says which.
    #[error("the planner refused the preview's input: {0}")]
    Planner(#[from] crate::plan::PlanError),
    /// The preview could not be rendered as JSON.
    #[error("cannot render the preview as JSON: {0}")]
    Json(#[from] serde_json::Error),
}
