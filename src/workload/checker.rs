//! The checker: reads every row of a table from every primary in its routing map and compares
//! them with the acknowledged keys (missing, duplicated, misplaced by PostgreSQL's own hash),
//! and asks every replica of every shard of the table whether it takes writes (two writable
//! primaries in one shard is a split brain). Reads the whole table into memory: meant for
//! test and scenario tables, not production ones.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use kube::Api;
use kube::api::ListParams;
use tokio_postgres::Client;

use super::sql_identifier;
use crate::agent::postgres::{KeyKind, ShardedTable};
use crate::api::table::KeySpace;
use crate::api::{Shard, Table};
use crate::routing::{
    DatabaseCredentials, Endpoint, Route, RouteTable, RoutingMapError, ShardKeyValue,
    postgres_message,
};

/// How long the checker waits for one connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How many problems a report shows, one line each.
const MAX_EXAMPLES: usize = 10;

/// Checks one table of one namespace.
#[derive(Clone)]
pub struct Checker {
    client: kube::Client,
    namespace: String,
    table: String,
    rows: ShardedTable,
    credentials: DatabaseCredentials,
}

/// Why a check could not be made (as opposed to a check that found problems).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The API server did not answer.
    #[error(
        "checker: {what} for Table {namespace}/{table} failed: {source}; check the API server and that this client may get Tables and list Shards"
    )]
    Kube {
        /// What was being read.
        what: &'static str,
        /// The namespace.
        namespace: String,
        /// The Table.
        table: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The Table has no routing map to check against.
    #[error(
        "checker: Table {namespace}/{table} has no status.routing, so there is nothing to check against: wait until the operator has routed it"
    )]
    NoRoutingMap {
        /// The namespace.
        namespace: String,
        /// The Table.
        table: String,
    },
    /// The routing map is unusable.
    #[error("checker: {0}")]
    InvalidMap(#[from] RoutingMapError),
    /// A range has no primary, so its rows cannot be read.
    #[error(
        "checker: shard {shard} of Table {table} has no primary in routing map version {version}, so its rows cannot be read: check again once its failover or switch has finished"
    )]
    NoPrimary {
        /// The Table.
        table: String,
        /// The Shard.
        shard: String,
        /// The map's version.
        version: i64,
    },
    /// A setting names something that is not a lower-case SQL identifier.
    #[error(
        "checker: {what} {name:?} is not a lower-case SQL identifier ([a-z_][a-z0-9_]*): use the table's SQL names"
    )]
    Identifier {
        /// Which setting.
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// A serving primary could not be reached or read.
    #[error(
        "checker: {what} on {endpoint} (shard {shard}) failed: {message}; every serving primary must be reachable and its table readable by the checker's role"
    )]
    Sql {
        /// What was being done.
        what: &'static str,
        /// The endpoint.
        endpoint: String,
        /// The Shard(s) it serves.
        shard: String,
        /// PostgreSQL's error in full.
        message: String,
        /// PostgreSQL's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// What the rows of a table look like against the acknowledged keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowReport {
    /// The Table.
    pub table: String,
    /// The routing map version the rows were read by.
    pub map_version: i64,
    /// Keys acknowledged to the writers.
    pub acked: usize,
    /// Rows read from all serving primaries.
    pub found: usize,
    /// Acknowledged keys found on no serving primary.
    pub missing: usize,
    /// Keys found more than once (on two shards, or twice on one).
    pub duplicated: usize,
    /// Rows on a primary whose ranges do not contain their keyspace id.
    pub misplaced: usize,
    /// Keys found that were never acknowledged (a write whose outcome was unknown, or rows
    /// that were there before): allowed.
    pub unacknowledged: usize,
    /// The first few problems, one line each.
    pub examples: Vec<String>,
}

impl RowReport {
    /// Whether no acknowledged row is missing and no row is duplicated or misplaced.
    pub fn is_clean(&self) -> bool {
        self.missing == 0 && self.duplicated == 0 && self.misplaced == 0
    }
}

impl fmt::Display for RowReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "checker: table {} (routing map version {}): acked {}, found {}, missing {}, duplicated {}, misplaced {} ({} present without acknowledgement)",
            self.table,
            self.map_version,
            self.acked,
            self.found,
            self.missing,
            self.duplicated,
            self.misplaced,
            self.unacknowledged
        )?;
        for example in &self.examples {
            write!(f, "\n  {example}")?;
        }
        Ok(())
    }
}

/// The writable replicas of one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardPrimaries {
    /// The Shard.
    pub shard: String,
    /// Endpoints of replicas that are not in recovery and not read-only.
    pub writable: Vec<String>,
    /// Replicas that were asked.
    pub checked: usize,
    /// Endpoints that could not be reached (a stopped instance takes no writes).
    pub unreachable: Vec<String>,
}

/// The writable replicas of every shard of a table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrimaryReport {
    /// The Table.
    pub table: String,
    /// One entry per Shard of the table, by name.
    pub shards: Vec<ShardPrimaries>,
}

impl PrimaryReport {
    /// Shards with more than one writable replica.
    pub fn split_brains(&self) -> Vec<&ShardPrimaries> {
        self.shards
            .iter()
            .filter(|s| s.writable.len() > 1)
            .collect()
    }

    /// Whether no shard has two writable primaries.
    pub fn is_clean(&self) -> bool {
        self.split_brains().is_empty()
    }
}

impl fmt::Display for PrimaryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let checked: usize = self.shards.iter().map(|s| s.checked).sum();
        let unreachable: usize = self.shards.iter().map(|s| s.unreachable.len()).sum();
        let split = self.split_brains();
        write!(
            f,
            "checker: table {}: {} shards, {} with two writable primaries ({checked} replicas checked, {unreachable} unreachable)",
            self.table,
            self.shards.len(),
            split.len()
        )?;
        for shard in split {
            write!(
                f,
                "\n  shard {}: {} writable primaries: {}",
                shard.shard,
                shard.writable.len(),
                shard.writable.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Both checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// The rows.
    pub rows: RowReport,
    /// The primaries.
    pub primaries: PrimaryReport,
}

impl CheckReport {
    /// Whether both checks found nothing wrong.
    pub fn is_clean(&self) -> bool {
        self.rows.is_clean() && self.primaries.is_clean()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n{}", self.rows, self.primaries)
    }
}

impl Checker {
    /// A checker of Table `table` in `namespace`, whose rows are in the SQL table `rows`,
    /// read with `credentials` (a role that may read the table on every replica).
    pub fn new(
        client: kube::Client,
        namespace: &str,
        table: &str,
        rows: ShardedTable,
        credentials: DatabaseCredentials,
    ) -> Self {
        Checker {
            client,
            namespace: namespace.to_owned(),
            table: table.to_owned(),
            rows,
            credentials,
        }
    }

    /// Both checks: the rows against `acked`, and the writable primaries.
    pub async fn check(&self, acked: &HashSet<ShardKeyValue>) -> Result<CheckReport, CheckError> {
        Ok(CheckReport {
            rows: self.check_rows(acked).await?,
            primaries: self.check_primaries().await?,
        })
    }

    /// Reads every row from every primary of the current routing map and compares the keys
    /// with `acked`. A row is misplaced when PostgreSQL's own keyspace id of its key (the
    /// expression of the range `CHECK` constraint) lies in none of the ranges its primary
    /// serves.
    pub async fn check_rows(
        &self,
        acked: &HashSet<ShardKeyValue>,
    ) -> Result<RowReport, CheckError> {
        let map = self.routing_map().await?;
        let mut by_endpoint: BTreeMap<&Endpoint, Vec<&Route>> = BTreeMap::new();
        for route in map.routes() {
            let endpoint = route
                .endpoint
                .as_ref()
                .ok_or_else(|| CheckError::NoPrimary {
                    table: self.table.clone(),
                    shard: route.shard.clone(),
                    version: map.version(),
                })?;
            by_endpoint.entry(endpoint).or_default().push(route);
        }
        let select = self.select_keys(map.key_space())?;
        let mut report = RowReport {
            table: self.table.clone(),
            map_version: map.version(),
            acked: acked.len(),
            ..RowReport::default()
        };
        let mut seen: HashMap<ShardKeyValue, Vec<String>> = HashMap::new();
        for (endpoint, routes) in by_endpoint {
            let shards = routes
                .iter()
                .map(|r| r.shard.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let sql_error = |what, source| CheckError::Sql {
                what,
                endpoint: endpoint.to_string(),
                shard: shards.clone(),
                message: postgres_message(&source),
                source,
            };
            let client = self
                .credentials
                .connect(endpoint, "shardplane-checker", CONNECT_TIMEOUT)
                .await
                .map_err(|source| sql_error("connecting", source))?;
            let rows = client
                .query(&select, &[])
                .await
                .map_err(|source| sql_error("reading every row", source))?;
            for row in rows {
                let key = match self.rows.key_kind {
                    KeyKind::Integer => ShardKeyValue::Int(row.get(0)),
                    KeyKind::Text => ShardKeyValue::Text(row.get(0)),
                };
                let keyspace_id: i64 = row.get(1);
                report.found += 1;
                if !routes.iter().any(|r| r.range.contains(keyspace_id)) {
                    report.misplaced += 1;
                    note(&mut report.examples, || {
                        format!(
                            "misplaced: key {} (keyspace id {keyspace_id}) is on {endpoint} (shard {shards}), outside its range",
                            key
                        )
                    });
                }
                seen.entry(key)
                    .or_default()
                    .push(format!("{endpoint} ({shards})"));
            }
        }
        for (key, places) in &seen {
            if places.len() > 1 {
                report.duplicated += 1;
                note(&mut report.examples, || {
                    format!("duplicated: key {} is on {}", key, places.join(" and "))
                });
            }
            if !acked.contains(key) {
                report.unacknowledged += 1;
            }
        }
        for key in acked {
            if !seen.contains_key(key) {
                report.missing += 1;
                note(&mut report.examples, || {
                    let shard = map
                        .keyspace_of(key)
                        .and_then(|id| map.route(id))
                        .map_or("no shard", |route| route.shard.as_str());
                    format!(
                        "missing: acknowledged key {} (belongs to shard {shard})",
                        key
                    )
                });
            }
        }
        Ok(report)
    }

    /// Asks every replica of every Shard of the table (their endpoints in
    /// `Shard.status.replicas`) whether it takes writes: not in recovery and not read-only
    /// for a new session.
    pub async fn check_primaries(&self) -> Result<PrimaryReport, CheckError> {
        let shards = Api::<Shard>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default().fields(&format!("spec.table={}", self.table)))
            .await
            .map_err(|source| self.kube_error("listing Shards", source))?;
        let mut report = PrimaryReport {
            table: self.table.clone(),
            shards: Vec::new(),
        };
        for shard in &shards.items {
            let name = shard.metadata.name.clone().unwrap_or_default();
            let mut primaries = ShardPrimaries {
                shard: name,
                writable: Vec::new(),
                checked: 0,
                unreachable: Vec::new(),
            };
            let replicas = shard.status.iter().flat_map(|s| s.replicas.iter());
            for endpoint in replicas.filter_map(|r| r.endpoint.as_deref()) {
                primaries.checked += 1;
                match self.takes_writes(endpoint).await {
                    Some(true) => primaries.writable.push(endpoint.to_owned()),
                    Some(false) => {}
                    None => primaries.unreachable.push(endpoint.to_owned()),
                }
            }
            report.shards.push(primaries);
        }
        report.shards.sort_by(|a, b| a.shard.cmp(&b.shard));
        Ok(report)
    }

    /// Whether the instance at `endpoint` takes writes; `None` if it cannot be asked.
    async fn takes_writes(&self, endpoint: &str) -> Option<bool> {
        let endpoint = Endpoint::parse(endpoint).ok()?;
        let client: Client = self
            .credentials
            .connect(&endpoint, "shardplane-checker", CONNECT_TIMEOUT)
            .await
            .ok()?;
        let row = client
            .query_one(
                "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'",
                &[],
            )
            .await
            .ok()?;
        row.try_get(0).ok()
    }

    /// The Table's current routing map.
    async fn routing_map(&self) -> Result<std::sync::Arc<RouteTable>, CheckError> {
        let table = Api::<Table>::namespaced(self.client.clone(), &self.namespace)
            .get(&self.table)
            .await
            .map_err(|source| self.kube_error("reading the Table", source))?;
        RouteTable::from_table(&table)?.ok_or_else(|| CheckError::NoRoutingMap {
            namespace: self.namespace.clone(),
            table: self.table.clone(),
        })
    }

    /// `SELECT key, keyspace id FROM table`, the keyspace id computed by PostgreSQL.
    fn select_keys(&self, key_space: KeySpace) -> Result<String, CheckError> {
        let identifier = |what, name: &str| {
            sql_identifier(name).ok_or_else(|| CheckError::Identifier {
                what,
                name: name.to_owned(),
            })
        };
        let table = identifier("table", &self.rows.name)?;
        let key = identifier("key column", &self.rows.key_column)?;
        let key_expression = match self.rows.key_kind {
            KeyKind::Integer => format!("{key}::int8"),
            KeyKind::Text => format!("{key}::text"),
        };
        let keyspace = match key_space {
            KeySpace::Hash => self.rows.keyspace_expression(),
            KeySpace::Range => format!("{key}::int8"),
        };
        Ok(format!("SELECT {key_expression}, {keyspace} FROM {table}"))
    }

    fn kube_error(&self, what: &'static str, source: kube::Error) -> CheckError {
        CheckError::Kube {
            what,
            namespace: self.namespace.clone(),
            table: self.table.clone(),
            source: Box::new(source),
        }
    }
}

/// Adds an example line while fewer than [`MAX_EXAMPLES`] are shown.
fn note(examples: &mut Vec<String>, line: impl FnOnce() -> String) {
    if examples.len() < MAX_EXAMPLES {
        examples.push(line());
    }
}
