//! Connections to shard primaries: the credentials a client passes in, one connection to an
//! endpoint, and a small pool per endpoint (idle connections reused, at most `size` in use,
//! a connection that saw an error or was closed is dropped, never reused).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::lock;
use crate::protocol::Endpoint;
use crate::tls::{TlsError, postgres_connector};

/// The role, password and database a client connects with, and the cluster's authority when
/// sessions use TLS. `Debug` never shows the password, and no error or log line of this module
/// contains it.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseCredentials {
    user: String,
    password: String,
    database: String,
    tls: Option<ServerCheck>,
}

/// Sessions over TLS that check the server's certificate and name against the cluster's
/// authority (libpq's `sslmode=verify-full`).
#[derive(Clone)]
struct ServerCheck {
    authority_pem: String,
    connector: MakeRustlsConnect,
}

impl PartialEq for ServerCheck {
    fn eq(&self, other: &Self) -> bool {
        self.authority_pem == other.authority_pem
    }
}

impl Eq for ServerCheck {}

impl DatabaseCredentials {
    /// Credentials of `user` with `password` for `database`.
    pub fn new(
        user: impl Into<String>,
        password: impl Into<String>,
        database: impl Into<String>,
    ) -> Self {
        DatabaseCredentials {
            user: user.into(),
            password: password.into(),
            database: database.into(),
            tls: None,
        }
    }

    /// These credentials with every session over TLS, the server checked against the
    /// cluster's authority `authority_pem` (the `ca.crt` of the cluster's authority Secret or
    /// of any node's certificate Secret) and its name against the endpoint's host — what
    /// libpq's `sslmode=verify-full` does. Instances admit sessions from other hosts over TLS
    /// only.
    pub fn with_tls(self, authority_pem: &str) -> Result<Self, TlsError> {
        Ok(DatabaseCredentials {
            tls: Some(ServerCheck {
                authority_pem: authority_pem.to_owned(),
                connector: postgres_connector(authority_pem)?,
            }),
            ..self
        })
    }

    /// The role.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The database.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// One connection to `endpoint` (over TLS if [`DatabaseCredentials::with_tls`] said so),
    /// its connection task spawned on the current tokio runtime. Gives up after `timeout`.
    pub async fn connect(
        &self,
        endpoint: &Endpoint,
        application_name: &str,
        timeout: Duration,
    ) -> Result<Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&endpoint.host)
            .port(endpoint.port)
            .user(&self.user)
            .password(&self.password)
            .dbname(&self.database)
            .application_name(application_name)
            .connect_timeout(timeout);
        // Each connection ends when the client drops or the server goes away; the client then
        // reports the error of its next request, which is where the router classifies it.
        match &self.tls {
            Some(check) => {
                config.ssl_mode(SslMode::Require);
                let (client, connection) = config.connect(check.connector.clone()).await?;
                tokio::spawn(connection);
                Ok(client)
            }
            None => {
                let (client, connection) = config.connect(NoTls).await?;
                tokio::spawn(connection);
                Ok(client)
            }
        }
    }
}

impl fmt::Debug for DatabaseCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseCredentials")
            .field("user", &self.user)
            .field("database", &self.database)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Connections to one endpoint.
pub(crate) struct EndpointPool {
    endpoint: Endpoint,
    idle: Mutex<Vec<Client>>,
    in_use: Arc<Semaphore>,
}

/// A connection taken from a pool. [`PooledClient::release`] returns it after a successful
/// request; dropped instead (after an error, or when the request was cancelled), it closes,
/// because its session's state is unknown.
pub(crate) struct PooledClient {
    client: Client,
    pool: Arc<EndpointPool>,
    _permit: OwnedSemaphorePermit,
}

/// Why a connection could not be had.
pub(crate) enum CheckoutError {
    /// The pool was closed.
    Closed,
    /// Connecting failed.
    Connect(tokio_postgres::Error),
}

impl EndpointPool {
    /// An empty pool of at most `size` connections to `endpoint`.
    pub(crate) fn new(endpoint: Endpoint, size: usize) -> Arc<Self> {
        Arc::new(EndpointPool {
            endpoint,
            idle: Mutex::new(Vec::new()),
            in_use: Arc::new(Semaphore::new(size.max(1))),
        })
    }

    /// An open idle connection, or a new one once fewer than `size` are in use.
    pub(crate) async fn checkout(
        self: &Arc<Self>,
        credentials: &DatabaseCredentials,
        timeout: Duration,
    ) -> Result<PooledClient, CheckoutError> {
        let permit = Arc::clone(&self.in_use)
            .acquire_owned()
            .await
            .map_err(|_| CheckoutError::Closed)?;
        let reused = loop {
            let candidate = lock(&self.idle).pop();
            match candidate {
                Some(client) if client.is_closed() => continue,
                other => break other,
            }
        };
        let client = match reused {
            Some(client) => client,
            None => credentials
                .connect(&self.endpoint, "shardplane-router", timeout)
                .await
                .map_err(CheckoutError::Connect)?,
        };
        Ok(PooledClient {
            client,
            pool: Arc::clone(self),
            _permit: permit,
        })
    }

    /// Drops every idle connection and refuses new checkouts (the endpoint left the map).
    pub(crate) fn close(&self) {
        self.in_use.close();
        lock(&self.idle).clear();
    }
}

impl PooledClient {
    /// The connection.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Returns the connection to its pool for reuse, unless it closed or the pool did.
    pub(crate) fn release(self) {
        if !self.client.is_closed() && !self.pool.in_use.is_closed() {
            lock(&self.pool.idle).push(self.client);
        }
    }
}
