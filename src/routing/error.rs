//! What the router reports to its caller. Every message names the table and, where there is
//! one, the key and the endpoint, and says what to do. No message contains a password.

use std::time::Duration;

/// A routing map that cannot be used as it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "routing map version {version} of Table {table} is invalid: {reason}; the operator writes it from the table's Shards: check `kubectl get shards` and the Table's Ready condition"
)]
pub struct RoutingMapError {
    /// The Table.
    pub table: String,
    /// The map's version.
    pub version: i64,
    /// What is wrong with it.
    pub reason: String,
}

/// Why a routed statement did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// A setting of [`super::RouterConfig`] cannot work.
    #[error("invalid router configuration: {0}")]
    Config(String),
    /// The Table never showed a usable routing map while the router waited for its first.
    #[error(
        "Table {namespace}/{table} has no usable routing map after {waited:?} ({problem}); the operator writes status.routing once the table's Shards tile the key space and each has a primary: check `kubectl get table {table} -n {namespace}` and its Ready condition"
    )]
    NoRoutingMap {
        /// The Table's namespace.
        namespace: String,
        /// The Table.
        table: String,
        /// How long the router waited.
        waited: Duration,
        /// What it saw last (missing object, no status.routing, invalid map, watch error).
        problem: String,
    },
    /// A text key was given for a table whose key space is the integer key itself.
    #[error(
        "key {key} of Table {table} has no position in the table's Range key space, which only integer keys have: pass an integer shard key value"
    )]
    KeyNotInKeySpace {
        /// The Table.
        table: String,
        /// The key, as text.
        key: String,
    },
    /// The server refused the statement for a reason another attempt would not fix.
    #[error(
        "statement for key {key} of Table {table} failed on {endpoint} (shard {shard}): {message}; a retry does not fix this (SQL, parameters, a constraint, permissions or credentials): fix the statement or the router's credentials"
    )]
    Refused {
        /// The Table.
        table: String,
        /// The key, as text.
        key: String,
        /// The Shard the key was routed to.
        shard: String,
        /// The primary's `host:port`.
        endpoint: String,
        /// PostgreSQL's error in full.
        message: String,
        /// PostgreSQL's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Every attempt until the deadline failed for a reason a routing switch or failover
    /// explains (or the last attempt was still running at the deadline).
    #[error(
        "gave up on key {key} of Table {table} after {attempts} attempt(s) in {waited:?} at routing map version {version}; last: {last}. A write may or may not have been applied: retry it (writes must be idempotent). If this persists, the shard's switch or failover takes longer than RouterConfig::deadline: check `kubectl get shards` and the Table's Ready condition"
    )]
    DeadlineExceeded {
        /// The Table.
        table: String,
        /// The key, as text.
        key: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        waited: Duration,
        /// The routing map version of the last attempt (0 if there was no usable map).
        version: i64,
        /// What the last attempt ran into.
        last: String,
    },
}

/// A PostgreSQL error in full: its message, SQLSTATE and constraint for a server error (the
/// driver's own `Display` says only "db error"), or the error and its causes otherwise.
pub fn postgres_message(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut text = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(constraint) = db.constraint() {
            text.push_str(&format!(", constraint {constraint}"));
        }
        return text;
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
