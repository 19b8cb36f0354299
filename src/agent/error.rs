//! Why the agent cannot do something, worded for the person running the node: which object
//! or file, what failed, what to do. No message contains a password: PostgreSQL errors come
//! from the instance library (which never prints one) and Secrets are named, never shown.

use std::path::PathBuf;

use super::postgres::PostgresError;

/// What went wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The DatabaseNode does not exist and the flags to register it are missing.
    #[error(
        "DatabaseNode {node} does not exist in namespace {namespace} and cannot be registered: \
         pass {}", missing.join(", ")
    )]
    Unregistered {
        /// The node.
        node: String,
        /// Its namespace.
        namespace: String,
        /// The missing flags.
        missing: Vec<&'static str>,
    },

    /// A request to the Kubernetes API failed.
    #[error("{what} failed: {source}")]
    Api {
        /// What was being done, naming the object.
        what: String,
        /// The API error.
        source: Box<kube::Error>,
    },

    /// The credentials Secret is missing or lacks a key.
    #[error(
        "the PostgreSQL credentials Secret {namespace}/{secret} {problem}; create it with the keys \
         superuser-password and replication-password (or name another with --credentials-secret)"
    )]
    Credentials {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        secret: String,
        /// What is wrong with it.
        problem: String,
    },

    /// The node's certificate (from the operator's Secret) cannot be used.
    #[error("the certificate of node {node} cannot be used: {problem}")]
    Certificate {
        /// The node.
        node: String,
        /// What is wrong with it.
        problem: String,
    },

    /// No port of the node's range is free for a new instance.
    #[error(
        "no free port in {first}-{last} (spec.ports of DatabaseNode {node}) for a new replica; \
         widen the range or free a port"
    )]
    NoFreePort {
        /// The node.
        node: String,
        /// First port of the range.
        first: u16,
        /// Last port of the range.
        last: u16,
    },

    /// A file of the agent could not be read or written.
    #[error("cannot use {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// A replica's record file is unreadable.
    #[error("the replica record {} is damaged ({source}); remove the replica's folder to re-create it", path.display())]
    Record {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },

    /// A shard's table cannot be created.
    #[error("cannot create table {table} for shard {shard}: {problem}")]
    Schema {
        /// The shard.
        shard: String,
        /// The table.
        table: String,
        /// Why.
        problem: String,
    },

    /// A PostgreSQL operation failed.
    #[error(transparent)]
    Postgres(Box<PostgresError>),
}

impl From<PostgresError> for AgentError {
    fn from(error: PostgresError) -> Self {
        AgentError::Postgres(Box::new(error))
    }
}

impl AgentError {
    /// The PostgreSQL error inside, if any.
    pub fn postgres(&self) -> Option<&PostgresError> {
        match self {
            AgentError::Postgres(error) => Some(error),
            _ => None,
        }
    }

    /// An [`AgentError::Api`] for `what`.
    pub fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> AgentError {
        let what = what.into();
        move |source| AgentError::Api {
            what,
            source: Box::new(source),
        }
    }
}
