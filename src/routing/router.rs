//! The client-side router of one table: a watch on the Table's routing map, a connection pool
//! per primary endpoint, and single-key statements sent to the primary of the key's range,
//! retried through routing switches and failovers until a deadline.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::watch_object;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::error::{RoutingError, postgres_message};
use super::keyhash::ShardKeyValue;
use super::lock;
use super::map::{Route, RouteTable};
use super::pool::{CheckoutError, DatabaseCredentials, EndpointPool};
use super::retry::{RetryReason, backoff_after, classify, classify_connect};
use crate::api::Table;
use crate::protocol::Endpoint;

/// How a [`Router`] connects and retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterConfig {
    /// How long one request (all its attempts) may take. Default 10 s: longer than a
    /// failover's detection and promotion with the default failure-detection settings.
    pub deadline: Duration,
    /// How long one connection attempt may take. Default 2 s.
    pub connect_timeout: Duration,
    /// Connections per primary endpoint at most. Default 4.
    pub pool_size: usize,
    /// First pause between attempts when the routing map has not changed; doubles per retry.
    /// Default 20 ms.
    pub backoff_base: Duration,
    /// Longest pause between attempts. Default 500 ms.
    pub backoff_cap: Duration,
    /// Longest pause after a read-only refusal (SQLSTATE 25006) while the map has not
    /// changed. The map names a new primary as soon as its promotion is ordered, so such a
    /// refusal is mostly a primary being promoted this moment (or one fenced a moment before
    /// the map moves): it ends within a promotion's time, and the write should follow it
    /// closely rather than back off for half a second. Default 40 ms.
    pub read_only_backoff_cap: Duration,
    /// Name of the `CHECK` constraint by which every shard refuses rows outside its range
    /// (built with `ShardedTable::range_check_constraint`). Default `shard_range`.
    pub range_constraint: String,
    /// How long [`Router::start`] waits for the first usable routing map. Default 10 s.
    pub first_map_timeout: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            deadline: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            pool_size: 4,
            backoff_base: Duration::from_millis(20),
            backoff_cap: Duration::from_millis(500),
            read_only_backoff_cap: Duration::from_millis(40),
            range_constraint: "shard_range".to_owned(),
            first_map_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of a router since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Requests made (`execute` and `query` calls).
    pub requests: u64,
    /// Attempts repeated, all reasons together.
    pub retries: u64,
    /// Retries after a connection failure.
    pub retries_connection: u64,
    /// Retries after a read-only refusal (SQLSTATE 25006).
    pub retries_read_only: u64,
    /// Retries after the range constraint refused a row (SQLSTATE 23514).
    pub retries_misrouted: u64,
    /// Retries after a server shutdown, crash or start.
    pub retries_shutdown: u64,
    /// Retries because the map had no primary for the key's range, or no usable map.
    pub retries_no_route: u64,
    /// Retries after abandoning an attempt still waiting when a newer map moved its range
    /// to another primary.
    pub retries_moved: u64,
    /// Requests that failed with [`RoutingError::DeadlineExceeded`].
    pub gave_up: u64,
    /// Routing maps received, the first included.
    pub map_updates: u64,
    /// The version of the routing map in use (0 when none is usable).
    pub map_version: i64,
}

impl fmt::Display for RouterStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests, {} retries (connection {}, read-only {}, misrouted {}, shutdown {}, no route {}, moved {}), {} gave up, routing map version {} ({} maps received)",
            self.requests,
            self.retries,
            self.retries_connection,
            self.retries_read_only,
            self.retries_misrouted,
            self.retries_shutdown,
            self.retries_no_route,
            self.retries_moved,
            self.gave_up,
            self.map_version,
            self.map_updates
        )
    }
}

/// Routes single-key statements of one table to the primary of the key's range. Cheap to
/// clone (clones share the watch, the pools and the counters); the watch stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    table: String,
    credentials: DatabaseCredentials,
    config: RouterConfig,
    map: watch::Receiver<Observed>,
    shared: Arc<Shared>,
    watch_task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.watch_task.abort();
    }
}

/// What the watch task and the requests share.
#[derive(Default)]
struct Shared {
    pools: Mutex<HashMap<Endpoint, Arc<EndpointPool>>>,
    requests: AtomicU64,
    retries: [AtomicU64; RetryReason::ALL.len()],
    gave_up: AtomicU64,
    map_updates: AtomicU64,
    map_version: AtomicI64,
}

/// The routing map as last observed.
#[derive(Clone, Debug)]
enum Observed {
    Usable(Arc<RouteTable>),
    Unusable(String),
}

/// One statement on one connection, sent again by every attempt.
trait Call: Sync {
    /// What the statement returns.
    type Output: Send;
    /// Sends the statement on `client`.
    fn send<'a>(
        &'a self,
        client: &'a Client,
    ) -> impl Future<Output = Result<Self::Output, tokio_postgres::Error>> + Send + 'a;
}

/// A statement returning the number of rows it affected.
struct Execute<'s>(&'s str, &'s [&'s (dyn ToSql + Sync)]);

/// A statement returning rows.
struct Query<'s>(&'s str, &'s [&'s (dyn ToSql + Sync)]);

impl Call for Execute<'_> {
    type Output = u64;
    fn send<'a>(
        &'a self,
        client: &'a Client,
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a {
        client.execute(self.0, self.1)
    }
}

impl Call for Query<'_> {
    type Output = Vec<Row>;
    fn send<'a>(
        &'a self,
        client: &'a Client,
    ) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a {
        client.query(self.0, self.1)
    }
}

/// How one attempt failed.
enum AttemptError {
    /// For a reason a routing change explains; the text says what happened where.
    Retry(RetryReason, String),
    /// For a reason another attempt would not fix.
    Refused(tokio_postgres::Error),
}

impl Router {
    /// Starts watching the routing map of Table `table` in `namespace` and returns once a
    /// usable map has arrived (or fails after `config.first_map_timeout`). `credentials` are
    /// used for every primary; they are never logged.
    pub async fn start(
        client: kube::Client,
        namespace: &str,
        table: &str,
        credentials: DatabaseCredentials,
        config: RouterConfig,
    ) -> Result<Router, RoutingError> {
        if config.pool_size == 0 {
            return Err(RoutingError::Config(
                "pool_size is 0: a router needs at least one connection per endpoint".into(),
            ));
        }
        if config.deadline.is_zero() {
            return Err(RoutingError::Config(
                "deadline is 0: no request could make even one attempt".into(),
            ));
        }
        let (sender, receiver) = watch::channel(Observed::Unusable("not observed yet".into()));
        let shared = Arc::new(Shared::default());
        let api: Api<Table> = Api::namespaced(client, namespace);
        let watch_task = tokio::spawn(watch_routing(
            api,
            table.to_owned(),
            sender,
            Arc::clone(&shared),
        ));
        let router = Router {
            inner: Arc::new(Inner {
                namespace: namespace.to_owned(),
                table: table.to_owned(),
                credentials,
                config,
                map: receiver,
                shared,
                watch_task,
            }),
        };
        let mut first = router.inner.map.clone();
        let usable = tokio::time::timeout(
            router.inner.config.first_map_timeout,
            first.wait_for(|observed| matches!(observed, Observed::Usable(_))),
        )
        .await;
        match usable {
            Ok(Ok(_)) => Ok(router),
            _ => {
                let problem = match &*router.inner.map.borrow() {
                    Observed::Unusable(problem) => problem.clone(),
                    Observed::Usable(_) => "the watch ended".to_owned(),
                };
                Err(RoutingError::NoRoutingMap {
                    namespace: router.inner.namespace.clone(),
                    table: router.inner.table.clone(),
                    waited: router.inner.config.first_map_timeout,
                    problem,
                })
            }
        }
    }

    /// Runs `statement` (which should touch only rows of `key`) on the primary of `key`'s
    /// range and returns the number of rows it affected. Retried through routing switches and
    /// failovers: make writes idempotent (see the module documentation).
    pub async fn execute(
        &self,
        key: &ShardKeyValue,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, RoutingError> {
        self.run(key, &Execute(statement, params)).await
    }

    /// Runs the query `statement` (which should read only rows of `key`) on the primary of
    /// `key`'s range and returns its rows, retried like [`Router::execute`].
    pub async fn query(
        &self,
        key: &ShardKeyValue,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, RoutingError> {
        self.run(key, &Query(statement, params)).await
    }

    /// The routing map in use, if a usable one was observed last.
    pub fn routing_map(&self) -> Option<Arc<RouteTable>> {
        match &*self.inner.map.borrow() {
            Observed::Usable(map) => Some(Arc::clone(map)),
            Observed::Unusable(_) => None,
        }
    }

    /// Where `key` is routed now, if the map in use covers it.
    pub fn route(&self, key: &ShardKeyValue) -> Option<Route> {
        let map = self.routing_map()?;
        let keyspace_id = map.keyspace_of(key)?;
        map.route(keyspace_id).cloned()
    }

    /// The counters since the router started.
    pub fn stats(&self) -> RouterStats {
        let shared = &self.inner.shared;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let retries = |reason: RetryReason| load(&shared.retries[reason as usize]);
        RouterStats {
            requests: load(&shared.requests),
            retries: RetryReason::ALL.into_iter().map(retries).sum(),
            retries_connection: retries(RetryReason::Connection),
            retries_read_only: retries(RetryReason::ReadOnly),
            retries_misrouted: retries(RetryReason::Misrouted),
            retries_shutdown: retries(RetryReason::Shutdown),
            retries_no_route: retries(RetryReason::NoRoute),
            retries_moved: retries(RetryReason::Moved),
            gave_up: load(&shared.gave_up),
            map_updates: load(&shared.map_updates),
            map_version: shared.map_version.load(Ordering::Relaxed),
        }
    }

    /// Attempts `call` on the primary of `key` until it succeeds, fails for good, or the
    /// deadline passes. Between attempts it waits for a newer routing map or a jittered
    /// backoff, whichever comes first.
    async fn run<C: Call>(&self, key: &ShardKeyValue, call: &C) -> Result<C::Output, RoutingError> {
        let inner = &*self.inner;
        let started = Instant::now();
        let deadline = started + inner.config.deadline;
        inner.shared.requests.fetch_add(1, Ordering::Relaxed);
        let mut map = inner.map.clone();
        let mut attempts = 0_u32;
        // The failure before the current attempt, for a report that the deadline cut short.
        let mut previous: Option<String> = None;
        loop {
            attempts += 1;
            let observed = map.borrow_and_update().clone();
            let (version, reason, last) = match observed {
                Observed::Unusable(problem) => (0, RetryReason::NoRoute, problem),
                Observed::Usable(table) => {
                    let version = table.version();
                    let keyspace_id =
                        table
                            .keyspace_of(key)
                            .ok_or_else(|| RoutingError::KeyNotInKeySpace {
                                table: inner.table.clone(),
                                key: key.to_string(),
                            })?;
                    match table.route(keyspace_id) {
                        None => (
                            version,
                            RetryReason::NoRoute,
                            format!("the routing map does not cover keyspace id {keyspace_id}"),
                        ),
                        Some(Route {
                            shard,
                            endpoint: None,
                            ..
                        }) => (
                            version,
                            RetryReason::NoRoute,
                            format!("shard {shard} has no primary in the routing map"),
                        ),
                        Some(Route {
                            shard,
                            endpoint: Some(endpoint),
                            epoch,
                            ..
                        }) => {
                            let attempt =
                                tokio::time::timeout_at(deadline, self.attempt(endpoint, call));
                            // A write waiting on a primary cut off from its quorum would wait
                            // until the deadline; once the map moves the range, it is stale.
                            let moved = route_moved(map.clone(), version, keyspace_id, endpoint);
                            let outcome = tokio::select! {
                                outcome = attempt => outcome,
                                () = moved => Ok(Err(AttemptError::Retry(
                                    RetryReason::Moved,
                                    "abandoned while it waited, because a newer routing map moved the range to another primary; its outcome is unknown".to_owned(),
                                ))),
                            };
                            match outcome {
                                Ok(Ok(value)) => return Ok(value),
                                Ok(Err(AttemptError::Retry(reason, what))) => (
                                    version,
                                    reason,
                                    format!("{endpoint} (shard {shard}, epoch {epoch}): {what}"),
                                ),
                                Ok(Err(AttemptError::Refused(source))) => {
                                    return Err(RoutingError::Refused {
                                        table: inner.table.clone(),
                                        key: key.to_string(),
                                        shard: shard.clone(),
                                        endpoint: endpoint.to_string(),
                                        message: postgres_message(&source),
                                        source,
                                    });
                                }
                                Err(_) => (
                                    version,
                                    RetryReason::Connection,
                                    format!(
                                        "the attempt on {endpoint} (shard {shard}) was still running at the deadline, its outcome unknown{}",
                                        previous
                                            .as_deref()
                                            .map(|p| format!("; the attempt before: {p}"))
                                            .unwrap_or_default()
                                    ),
                                ),
                            }
                        }
                    }
                }
            };
            previous = Some(last.clone());
            self.retry_or_give_up(
                &mut map,
                (version, reason, last),
                key,
                attempts,
                started,
                deadline,
            )
            .await?;
        }
    }

    /// After a failed attempt: gives up if the deadline has passed, otherwise counts the
    /// retry and waits for a routing map newer than `version` or a backoff.
    async fn retry_or_give_up(
        &self,
        map: &mut watch::Receiver<Observed>,
        (version, reason, last): (i64, RetryReason, String),
        key: &ShardKeyValue,
        attempts: u32,
        started: Instant,
        deadline: Instant,
    ) -> Result<(), RoutingError> {
        let shared = &self.inner.shared;
        let give_up = || {
            shared.gave_up.fetch_add(1, Ordering::Relaxed);
            RoutingError::DeadlineExceeded {
                table: self.inner.table.clone(),
                key: key.to_string(),
                attempts,
                waited: started.elapsed(),
                version,
                last: last.clone(),
            }
        };
        if Instant::now() >= deadline {
            return Err(give_up());
        }
        shared.retries[reason as usize].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(table = %self.inner.table, ?reason, attempt = attempts, "retrying: {last}");
        let config = &self.inner.config;
        let caps = (config.backoff_cap, config.read_only_backoff_cap);
        let pause = backoff_after(reason, attempts, config.backoff_base, caps);
        let newer = async {
            let changed = map
                .wait_for(
                    |observed| matches!(observed, Observed::Usable(t) if t.version() > version),
                )
                .await
                .is_ok();
            if !changed {
                // The watch ended (the router is being dropped): the backoff decides.
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = newer => {}
            () = tokio::time::sleep(pause) => {}
            () = tokio::time::sleep_until(deadline) => return Err(give_up()),
        }
        Ok(())
    }

    /// One attempt of `call` on `endpoint`.
    async fn attempt<C: Call>(
        &self,
        endpoint: &Endpoint,
        call: &C,
    ) -> Result<C::Output, AttemptError> {
        let inner = &*self.inner;
        let pool = self.pool(endpoint);
        let connection = pool
            .checkout(&inner.credentials, inner.config.connect_timeout)
            .await
            .map_err(|error| match error {
                CheckoutError::Closed => AttemptError::Retry(
                    RetryReason::NoRoute,
                    "the endpoint left the routing map".to_owned(),
                ),
                CheckoutError::Connect(error) => match classify_connect(&error) {
                    Some(reason) => AttemptError::Retry(
                        reason,
                        format!("connecting: {}", postgres_message(&error)),
                    ),
                    None => AttemptError::Refused(error),
                },
            })?;
        let result = call.send(connection.client()).await;
        match result {
            Ok(value) => {
                connection.release();
                Ok(value)
            }
            Err(error) => match classify(&error, &inner.config.range_constraint) {
                // A read-only refusal leaves the session as it was (the one statement failed
                // in its own transaction): kept, so that following a primary being promoted
                // costs no new connection per attempt.
                Some(RetryReason::ReadOnly) => {
                    connection.release();
                    Err(AttemptError::Retry(
                        RetryReason::ReadOnly,
                        postgres_message(&error),
                    ))
                }
                // Otherwise the session's state is unknown: the connection is dropped.
                Some(reason) => Err(AttemptError::Retry(reason, postgres_message(&error))),
                None => {
                    connection.release();
                    Err(AttemptError::Refused(error))
                }
            },
        }
    }

    /// The pool of `endpoint`, made on first use.
    fn pool(&self, endpoint: &Endpoint) -> Arc<EndpointPool> {
        let mut pools = lock(&self.inner.shared.pools);
        Arc::clone(
            pools.entry(endpoint.clone()).or_insert_with(|| {
                EndpointPool::new(endpoint.clone(), self.inner.config.pool_size)
            }),
        )
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("namespace", &self.inner.namespace)
            .field("table", &self.inner.table)
            .field("credentials", &self.inner.credentials)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Resolves once a routing map newer than `version` sends `keyspace_id` somewhere other
/// than `endpoint` (or to no primary); never if the watch ends.
async fn route_moved(
    mut map: watch::Receiver<Observed>,
    version: i64,
    keyspace_id: i64,
    endpoint: &Endpoint,
) {
    let moved = map
        .wait_for(|observed| match observed {
            Observed::Usable(table) => {
                table.version() > version
                    && table.route(keyspace_id).and_then(|r| r.endpoint.as_ref()) != Some(endpoint)
            }
            Observed::Unusable(_) => false,
        })
        .await
        .is_ok();
    if !moved {
        std::future::pending::<()>().await;
    }
}

/// Follows the Table's routing map until the router is dropped: publishes each new map (or
/// why there is none usable), and closes the pools of endpoints that left the map.
async fn watch_routing(
    api: Api<Table>,
    name: String,
    sender: watch::Sender<Observed>,
    shared: Arc<Shared>,
) {
    let events = watch_object(api, &name).default_backoff();
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        let observed = match event {
            Ok(Some(table)) => match RouteTable::from_table(&table) {
                Ok(Some(map)) => Observed::Usable(map),
                Ok(None) => Observed::Unusable(format!("Table {name} has no status.routing yet")),
                Err(error) => Observed::Unusable(error.to_string()),
            },
            Ok(None) => Observed::Unusable(format!("Table {name} does not exist")),
            Err(error) => {
                tracing::warn!(table = %name, "watching the routing map failed (retrying): {error}");
                if matches!(*sender.borrow(), Observed::Usable(_)) {
                    // A stale map is better than none: a misrouted write fails and retries.
                    continue;
                }
                Observed::Unusable(format!("watching Table {name} failed: {error}"))
            }
        };
        publish(&sender, &shared, observed);
    }
}

/// Replaces the observed map unless nothing changed.
fn publish(sender: &watch::Sender<Observed>, shared: &Shared, observed: Observed) {
    sender.send_if_modified(|current| {
        let changed = match (&*current, &observed) {
            (Observed::Usable(old), Observed::Usable(new)) => old != new,
            (Observed::Unusable(old), Observed::Unusable(new)) => old != new,
            _ => true,
        };
        if !changed {
            return false;
        }
        match &observed {
            Observed::Usable(map) => {
                tracing::debug!(version = map.version(), "routing map observed");
                shared.map_updates.fetch_add(1, Ordering::Relaxed);
                shared.map_version.store(map.version(), Ordering::Relaxed);
                let wanted: Vec<&Endpoint> = map
                    .routes()
                    .iter()
                    .filter_map(|r| r.endpoint.as_ref())
                    .collect();
                lock(&shared.pools).retain(|endpoint, pool| {
                    let keep = wanted.contains(&endpoint);
                    if !keep {
                        pool.close();
                    }
                    keep
                });
            }
            Observed::Unusable(problem) => {
                tracing::warn!("routing map unusable: {problem}");
                shared.map_version.store(0, Ordering::Relaxed);
            }
        }
        *current = observed;
        true
    });
}
