//! The agent's side of a schema rollout. The operator writes a `schemaRequest` (a version and
//! the statements reaching it) on a Shard; each replica's task looks at it once per pass:
//! every replica compares its catalog (after replay, on a standby) with the version's schema
//! and reports in `status.schemaReports`; the primary, when its catalog differs, first runs
//! the statements — under `lock_timeout`, transactional ones together in one transaction,
//! `CONCURRENTLY` ones alone outside any — each made idempotent, so a re-run after a crash
//! does not fail.

use std::collections::BTreeSet;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio_postgres::error::SqlState;

use crate::api::shard::{ReplicaSchemaReport, SchemaRequest};
use crate::api::table::TableSchema;
use crate::api::{SchemaVersion, Shard};
use crate::schema::quote_ident;

use super::context::NodeContext;
use super::error::AgentError;
use super::postgres::{Instance, PostgresError};
use super::shard_schema::RANGE_CONSTRAINT;
use crate::protocol::agent_schema_manager;

/// How often a statement that timed out waiting for its lock is tried before the request
/// fails.
const LOCK_ATTEMPTS: u32 = 3;
/// The pause between two such tries, which lets the writes queued behind the DDL through.
const LOCK_RETRY_PAUSE: Duration = Duration::from_millis(300);

/// What one replica task remembers of the schema requests it has answered.
#[derive(Default)]
pub(crate) struct SchemaApplier {
    /// The request answered for good (verified, or failed on the primary).
    settled: Option<SchemaRequest>,
    /// The last report written.
    reported: Option<ReplicaSchemaReport>,
    /// The schema of the last version looked up.
    expected: Option<(i64, TableSchema)>,
    session: Option<tokio_postgres::Client>,
}

impl SchemaApplier {
    /// Answers `shard`'s schema request, if it has one this replica has not settled yet.
    pub(crate) async fn look(
        &mut self,
        ctx: &NodeContext,
        shard: &Shard,
        instance: &mut Instance,
    ) -> Result<(), AgentError> {
        let status = shard.status.clone().unwrap_or_default();
        let Some(request) = status.schema_request else {
            return Ok(());
        };
        if self.settled.as_ref() == Some(&request) || !instance.is_running() {
            return Ok(());
        }
        let table = shard.spec.table.clone();
        let expected = self.expected(ctx, &table, request.version).await?;
        let session = self.take_session(instance).await?;
        let in_recovery: bool = session
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(sql(instance, "reading the replica's role"))?
            .get(0);
        let primary = !in_recovery && status.primary.as_ref().is_some_and(|p| p.node == ctx.node);
        let mut differences = differences(&session, &table, &expected)
            .await
            .map_err(sql(instance, "reading the table's catalog"))?;
        let mut error = None;
        if !differences.is_empty() && primary {
            tracing::info!(shard = %shard_name(shard), version = request.version, "applying the schema change");
            match apply(&session, &table, &request).await {
                Ok(()) => {
                    differences = differences_of(&session, &table, &expected, instance).await?;
                    if !differences.is_empty() {
                        error = Some(format!(
                            "the statements ran but the table differs from version {}: {}",
                            request.version,
                            differences.join("; ")
                        ));
                    }
                }
                Err(failure) => {
                    tracing::warn!(shard = %shard_name(shard), version = request.version, error = %failure, "the schema change failed");
                    error = Some(failure);
                }
            }
        }
        self.session = Some(session);
        let verified = differences.is_empty();
        if verified || error.is_some() {
            self.settled = Some(request.clone());
        }
        let report = ReplicaSchemaReport {
            node: ctx.node.clone(),
            version: request.version,
            verified,
            error,
        };
        self.report(ctx, shard, report).await
    }

    /// The schema of `table`'s version `version`, from its SchemaVersion.
    async fn expected(
        &mut self,
        ctx: &NodeContext,
        table: &str,
        version: i64,
    ) -> Result<TableSchema, AgentError> {
        if let Some((cached, schema)) = &self.expected
            && *cached == version
        {
            return Ok(schema.clone());
        }
        let name = format!("{table}-v{version}");
        let found = ctx
            .api::<SchemaVersion>()
            .get(&name)
            .await
            .map_err(AgentError::api(format!("reading SchemaVersion {name}")))?;
        self.expected = Some((version, found.spec.schema.clone()));
        Ok(found.spec.schema)
    }

    /// The kept session on the instance (reopened when it was closed), taken out of `self`
    /// for the look and put back after.
    async fn take_session(
        &mut self,
        instance: &Instance,
    ) -> Result<tokio_postgres::Client, AgentError> {
        match self.session.take().filter(|s| !s.is_closed()) {
            Some(session) => Ok(session),
            None => Ok(instance.connect().await?),
        }
    }

    /// Writes `report` as this node's entry of `status.schemaReports` (its own field manager:
    /// entries of other nodes, and the replica reports, belong to others) when it changed.
    async fn report(
        &mut self,
        ctx: &NodeContext,
        shard: &Shard,
        report: ReplicaSchemaReport,
    ) -> Result<(), AgentError> {
        if self.reported.as_ref() == Some(&report) {
            return Ok(());
        }
        let name = shard_name(shard);
        let patch = json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
            "metadata": {"name": name},
            "status": {"schemaReports": [report]},
        });
        let params = PatchParams::apply(&agent_schema_manager(&ctx.node)).force();
        ctx.shards()
            .patch_status(&name, &params, &Patch::Apply(patch))
            .await
            .map_err(AgentError::api(format!(
                "reporting the schema of shard {name}"
            )))?;
        self.reported = Some(report);
        Ok(())
    }
}

fn shard_name(shard: &Shard) -> String {
    kube::ResourceExt::name_any(shard)
}

fn sql(
    instance: &Instance,
    what: &'static str,
) -> impl FnOnce(tokio_postgres::Error) -> AgentError {
    let instance = instance.name().to_owned();
    move |source| {
        PostgresError::Sql {
            instance,
            what,
            source,
        }
        .into()
    }
}

async fn differences_of(
    session: &tokio_postgres::Client,
    table: &str,
    expected: &TableSchema,
    instance: &Instance,
) -> Result<Vec<String>, AgentError> {
    differences(session, table, expected)
        .await
        .map_err(sql(instance, "reading the table's catalog"))
}

/// How the table in this instance's catalog differs from `expected`: its columns and their
/// types, its (valid, non-primary-key) indexes and its checks (Shardplane's own aside).
async fn differences(
    session: &tokio_postgres::Client,
    table: &str,
    expected: &TableSchema,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let relation = quote_ident(table);
    let columns: BTreeSet<(String, String)> = session
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
            &[&relation],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let indexes: BTreeSet<String> = session
        .query(
            "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE i.indrelid = to_regclass($1) AND NOT i.indisprimary AND i.indisvalid",
            &[&relation],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let checks: BTreeSet<String> = session
        .query(
            "SELECT conname::text FROM pg_constraint WHERE conrelid = to_regclass($1) \
             AND contype = 'c' AND conname::text <> $2 AND conname::text NOT LIKE 'shardplane\\_nn\\_%'",
            &[&relation, &RANGE_CONSTRAINT],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(compare(expected, &columns, &indexes, &checks))
}

/// The differences between `expected` and a catalog's columns (name, `format_type`),
/// index names and check names, one sentence each.
fn compare(
    expected: &TableSchema,
    columns: &BTreeSet<(String, String)>,
    indexes: &BTreeSet<String>,
    checks: &BTreeSet<String>,
) -> Vec<String> {
    let mut found = Vec::new();
    for column in &expected.columns {
        let want = catalog_type(&column.type_);
        match columns.iter().find(|(name, _)| *name == column.name) {
            None => found.push(format!("column {} is missing", column.name)),
            Some((_, have)) if *have != want => {
                found.push(format!("column {} is {have}, not {want}", column.name))
            }
            Some(_) => {}
        }
    }
    for (name, _) in columns {
        if !expected.columns.iter().any(|c| &c.name == name) {
            found.push(format!("column {name} should not exist"));
        }
    }
    let want_indexes: BTreeSet<&String> = expected.indexes.iter().map(|i| &i.name).collect();
    let want_checks: BTreeSet<&String> = expected.checks.iter().map(|c| &c.name).collect();
    for (what, want, have) in [
        ("index", want_indexes, indexes),
        ("check", want_checks, checks),
    ] {
        for name in &want {
            if !have.contains(*name) {
                found.push(format!("{what} {name} is missing"));
            }
        }
        for name in have {
            if !want.contains(name) {
                found.push(format!("{what} {name} should not exist"));
            }
        }
    }
    found
}

/// A declared column type as PostgreSQL's `format_type` spells it.
fn catalog_type(declared: &str) -> String {
    let (base, modifier) = match declared.split_once('(') {
        Some((base, rest)) => (base, Some(rest.trim_end_matches(')'))),
        None => (declared, None),
    };
    match (base, modifier) {
        ("varchar", Some(n)) => format!("character varying({n})"),
        ("char", Some(n)) => format!("character({n})"),
        ("numeric", Some(p)) if !p.contains(',') => format!("numeric({p},0)"),
        ("time", None) => "time without time zone".to_owned(),
        ("timestamp", None) => "timestamp without time zone".to_owned(),
        ("timestamptz", None) => "timestamp with time zone".to_owned(),
        _ => declared.to_owned(),
    }
}

/// Runs `request`'s statements on the primary's `session`: first drops indexes of `table`
/// that an interrupted `CREATE INDEX CONCURRENTLY` left invalid, then runs the statements in
/// groups — consecutive transactional ones in one transaction, each `CONCURRENTLY` one on
/// its own — retrying a group that timed out waiting for its lock. The error says which
/// statement failed and what PostgreSQL reported.
async fn apply(
    session: &tokio_postgres::Client,
    table: &str,
    request: &SchemaRequest,
) -> Result<(), String> {
    let invalid = session
        .query(
            "SELECT quote_ident(c.relname::text) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE i.indrelid = to_regclass($1) AND NOT i.indisvalid",
            &[&quote_ident(table)],
        )
        .await
        .map_err(|e| describe(&e, "looking for invalid indexes"))?;
    let mut groups: Vec<Vec<String>> = invalid
        .iter()
        .map(|row| {
            vec![format!(
                "DROP INDEX CONCURRENTLY IF EXISTS {}",
                row.get::<_, String>(0)
            )]
        })
        .collect();
    for statement in &request.statements {
        let statement = idempotent(statement);
        match groups.last_mut() {
            Some(group) if !concurrent(&statement) && group.iter().all(|s| !concurrent(s)) => {
                group.push(statement)
            }
            _ => groups.push(vec![statement]),
        }
    }
    for group in groups {
        let mut attempt = 1;
        loop {
            match run_group(session, &group, request).await {
                Ok(()) => break,
                Err(error)
                    if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
                        && attempt < LOCK_ATTEMPTS =>
                {
                    attempt += 1;
                    tokio::time::sleep(LOCK_RETRY_PAUSE).await;
                }
                Err(error) => {
                    return Err(describe(
                        &error,
                        &format!("{} (attempt {attempt})", group.join("; ")),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `what failed: message (SQLSTATE code)`
fn describe(error: &tokio_postgres::Error, what: &str) -> String {
    match error.as_db_error() {
        Some(db) => format!("{what}: {} (SQLSTATE {})", db.message(), db.code().code()),
        None => format!("{what}: {error}"),
    }
}

async fn run_group(
    session: &tokio_postgres::Client,
    group: &[String],
    request: &SchemaRequest,
) -> Result<(), tokio_postgres::Error> {
    let lock = format!("SET lock_timeout = {}", request.lock_timeout_ms.max(1));
    if group.iter().any(|s| concurrent(s)) {
        // Outside any transaction, and not cut short: building an index takes its time.
        session
            .batch_execute(&format!("{lock}; SET statement_timeout = 0"))
            .await?;
        return session.batch_execute(&group.join("; ")).await;
    }
    let statement_timeout = request.statement_timeout_ms.unwrap_or(0).max(0);
    let text = format!(
        "BEGIN; SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {statement_timeout}; {}; COMMIT",
        request.lock_timeout_ms.max(1),
        group.join("; ")
    );
    let outcome = session.batch_execute(&text).await;
    if outcome.is_err() {
        // The failed transaction block stays open until it is ended.
        let _ = session.batch_execute("ROLLBACK").await;
    }
    outcome
}

/// Whether a statement must run outside a transaction.
fn concurrent(statement: &str) -> bool {
    statement.contains(" INDEX CONCURRENTLY ")
}

/// `statement` in a form that succeeds when its effect is already there: `IF NOT EXISTS` on
/// additions and `IF EXISTS` on drops. Statements that are idempotent by nature (a type or a
/// default set to what it is) or that PostgreSQL has no such clause for pass unchanged; a
/// shard whose catalog already matches the version runs none at all.
fn idempotent(statement: &str) -> String {
    for (prefix, clause) in [
        ("CREATE INDEX CONCURRENTLY ", "IF NOT EXISTS "),
        ("CREATE UNIQUE INDEX CONCURRENTLY ", "IF NOT EXISTS "),
        ("DROP INDEX CONCURRENTLY ", "IF EXISTS "),
    ] {
        if let Some(rest) = statement.strip_prefix(prefix) {
            return with_clause(prefix, clause, rest);
        }
    }
    if let Some(rest) = statement.strip_prefix("ALTER TABLE ")
        && let Some(end) = quoted_end(rest)
    {
        let (table, action) = rest.split_at(end);
        for (prefix, clause) in [
            (" ADD COLUMN ", "IF NOT EXISTS "),
            (" DROP COLUMN ", "IF EXISTS "),
            (" DROP CONSTRAINT ", "IF EXISTS "),
        ] {
            if let Some(rest) = action.strip_prefix(prefix) {
                return format!("ALTER TABLE {table}{}", with_clause(prefix, clause, rest));
            }
        }
    }
    statement.to_owned()
}

fn with_clause(prefix: &str, clause: &str, rest: &str) -> String {
    if rest.starts_with(clause) {
        format!("{prefix}{rest}")
    } else {
        format!("{prefix}{clause}{rest}")
    }
}

/// The length of the double-quoted identifier `text` starts with (doubled quotes inside).
fn quoted_end(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    if bytes.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    while i < bytes.len() {
        if bytes[i] == b'"' {
            if bytes.get(i + 1) == Some(&b'"') {
                i += 2;
                continue;
            }
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_become_idempotent() {
        let cases = [
            (
                "ALTER TABLE \"orders\" ADD COLUMN \"region\" text",
                "ALTER TABLE \"orders\" ADD COLUMN IF NOT EXISTS \"region\" text",
            ),
            (
                "ALTER TABLE \"a \"\" DROP COLUMN b\" DROP COLUMN \"c\"",
                "ALTER TABLE \"a \"\" DROP COLUMN b\" DROP COLUMN IF EXISTS \"c\"",
            ),
            (
                "CREATE UNIQUE INDEX CONCURRENTLY \"i\" ON \"t\" (\"a\")",
                "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS \"i\" ON \"t\" (\"a\")",
            ),
            (
                "DROP INDEX CONCURRENTLY IF EXISTS \"i\"",
                "DROP INDEX CONCURRENTLY IF EXISTS \"i\"",
            ),
            (
                "ALTER TABLE \"t\" ALTER COLUMN \"c\" TYPE varchar(40)",
                "ALTER TABLE \"t\" ALTER COLUMN \"c\" TYPE varchar(40)",
            ),
        ];
        for (given, wanted) in cases {
            assert_eq!(idempotent(given), wanted);
        }
        assert!(concurrent(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS \"i\" ON \"t\" (\"a\")"
        ));
        assert!(!concurrent("ALTER TABLE \"t\" ADD COLUMN \"c\" text"));
    }

    #[test]
    fn declared_types_are_compared_as_the_catalog_spells_them() {
        assert_eq!(catalog_type("varchar(40)"), "character varying(40)");
        assert_eq!(catalog_type("numeric(12)"), "numeric(12,0)");
        assert_eq!(catalog_type("numeric(12,2)"), "numeric(12,2)");
        assert_eq!(catalog_type("timestamptz"), "timestamp with time zone");
        assert_eq!(catalog_type("bigint"), "bigint");
    }

    #[test]
    fn the_comparison_names_every_difference() {
        let expected: TableSchema = serde_json::from_value(serde_json::json!({
            "columns": [
                {"name": "id", "type": "bigint", "nullable": false},
                {"name": "note", "type": "varchar(40)"}
            ],
            "primaryKey": ["id"],
            "indexes": [{"name": "by_note", "columns": ["note"]}]
        }))
        .expect("schema");
        let columns: BTreeSet<(String, String)> = [
            ("id", "bigint"),
            ("note", "character varying(20)"),
            ("legacy", "text"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
        let found = compare(
            &expected,
            &columns,
            &BTreeSet::new(),
            &["old".to_owned()].into(),
        );
        assert_eq!(
            found,
            vec![
                "column note is character varying(20), not character varying(40)",
                "column legacy should not exist",
                "index by_note is missing",
                "check old should not exist",
            ]
        );
        let matching: BTreeSet<(String, String)> =
            [("id", "bigint"), ("note", "character varying(40)")]
                .into_iter()
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect();
        assert!(
            compare(
                &expected,
                &matching,
                &["by_note".to_owned()].into(),
                &BTreeSet::new()
            )
            .is_empty()
        );
    }
}
