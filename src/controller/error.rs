//! An API request that failed, with what it was for: every reconciler's and step's error
//! says which object and which request, not only "API request failed".

/// A failed API request and what it was for.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action}: {source}")]
pub struct ApiError {
    /// What the request was for, naming the object ("patch the status of Plan orders-1").
    pub action: String,
    /// What the API server (or the connection) said.
    #[source]
    pub source: kube::Error,
}

impl ApiError {
    /// Whether the API server refused the request because the object changed meanwhile.
    pub fn is_conflict(&self) -> bool {
        matches!(&self.source, kube::Error::Api(e) if e.code == 409)
    }
}

/// Names what a request was for.
pub trait Doing<T> {
    /// The result, its error saying it happened while doing `action`.
    fn doing(self, action: impl FnOnce() -> String) -> Result<T, ApiError>;
}

impl<T> Doing<T> for Result<T, kube::Error> {
    fn doing(self, action: impl FnOnce() -> String) -> Result<T, ApiError> {
        self.map_err(|source| ApiError {
            action: action(),
            source,
        })
    }
}
