//! The SchemaVersion controller: when a Table's spec changes, it diffs `Table.spec` against
//! the table's newest `SchemaVersion` (`crate::schema`) and creates the next one —
//! `<table>-v<N>`, owned by and labelled with the table, holding the schema, the DDL, the
//! class of the change and the git commit git-sync stamped on the Table. Version 1 is the
//! `CREATE TABLE`. A refused change creates nothing: the Table's `SchemaAccepted` condition
//! turns False with reason `SchemaChangeRefused` and the refusal. Rolling a version out to
//! the shards is `schema_rollout.rs`'s job.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::api::schema_version::RolloutPhase;
use crate::api::{SchemaVersion, Table};
use crate::protocol::{SCHEMA_MANAGER, TABLE_LABEL};

use super::caches::{Cache, Caches};
use super::context::{self, Context};
use super::error::{ApiError, Doing};
use super::fence::NotLeader;
use crate::decide::conditions::{self, Observation};
use crate::decide::schema::{Outcome, newest_owned, next_version};

/// The Table condition saying whether its declared schema is accepted.
pub const SCHEMA_ACCEPTED: &str = "SchemaAccepted";

/// The reason of a refused schema change, on the condition and the Event.
pub const REFUSED_REASON: &str = "SchemaChangeRefused";

/// Why a schema reconcile failed; retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// This replica must not act.
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    /// The API server refused or failed a request (a 409: the Table changed meanwhile).
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// What the schema reconciles share: the operator's context, and a watch cache of the
/// SchemaVersions (a LIST per reconcile — one per write of any Table's status, its routing
/// map among them — made the API server filter every SchemaVersion each time).
pub struct Schemas {
    ctx: Arc<Context>,
    versions: Cache<SchemaVersion>,
}

/// Runs the controller while this replica leads.
pub async fn run(ctx: Arc<Context>, caches: Caches) {
    let schemas = Arc::new(Schemas {
        ctx: ctx.clone(),
        versions: caches.versions.clone(),
    });
    Controller::for_shared_stream(caches.tables.changes(), caches.tables.store())
        .owns_shared_stream(caches.versions.changes())
        .with_config(context::per_table_controller())
        .run(reconcile, error_policy, schemas)
        .for_each(|_| async {})
        .await;
}

fn error_policy(table: Arc<Table>, error: &SchemaError, schemas: Arc<Schemas>) -> Action {
    let ctx = &schemas.ctx;
    let result = match error {
        SchemaError::NotLeader(_) => "not_leader",
        SchemaError::Api(_) => "api",
    };
    ctx.retry("TableSchema", table.as_ref(), result, error)
}

async fn reconcile(table: Arc<Table>, schemas: Arc<Schemas>) -> Result<Action, SchemaError> {
    let ctx = &schemas.ctx;
    let started = Instant::now();
    ctx.leader.ensure()?;
    if table.meta().deletion_timestamp.is_some() {
        // A table on its way out gets no new version; its versions go with it.
        return Ok(Action::await_change());
    }
    let namespace = table.namespace().unwrap_or_default();
    let versions: Api<SchemaVersion> = Api::namespaced(ctx.client.clone(), &namespace);
    // From the watch cache: a version created a moment ago and not yet in it is created again
    // under the same name (versions are named by table and number), which the API server
    // refuses (409) and `create` leaves as it is — never a second version for a generation.
    let name = table.name_any();
    let listed: Vec<SchemaVersion> = schemas
        .versions
        .state()
        .into_iter()
        .filter(|v| {
            v.namespace().as_deref() == Some(namespace.as_str())
                && v.labels().get(TABLE_LABEL) == Some(&name)
        })
        .map(|v| (*v).clone())
        .collect();
    // A version just created is reported as the one holding the declared schema — what the
    // next look (woken by that version's creation) finds — so that look writes nothing: one
    // condition write per new table, not two. The creation itself is an Event.
    let observation = match next_version(&table, newest_owned(&table, &listed)) {
        Outcome::Current { version } => current(version),
        Outcome::Create(version) => {
            create(ctx, &table, &versions, &version).await?;
            current(version.spec.version)
        }
        Outcome::Refused { message } => Observation {
            type_: SCHEMA_ACCEPTED,
            holds: false,
            reason: REFUSED_REASON,
            message,
        },
    };
    write_condition(ctx, &table, observation).await?;
    ctx.metrics.reconciled("TableSchema", "ok", started);
    ctx.reconciled("TableSchema", table.as_ref());
    Ok(Action::await_change())
}

/// `SchemaAccepted` for a table whose declared schema version `version` holds.
fn current(version: i64) -> Observation<'static> {
    Observation {
        type_: SCHEMA_ACCEPTED,
        holds: true,
        reason: "SchemaCurrent",
        message: format!("schema version {version} holds the declared schema"),
    }
}

/// Creates `version` and marks its rollout Pending (a version after the first); an existing one of that name (made by
/// this replica before a restart, or by a previous leader) is left as it is.
async fn create(
    ctx: &Context,
    table: &Table,
    versions: &Api<SchemaVersion>,
    version: &SchemaVersion,
) -> Result<(), SchemaError> {
    ctx.leader.ensure()?;
    let name = version.name_any();
    let made = match versions.create(&PostParams::default(), version).await {
        Ok(made) => made,
        Err(kube::Error::Api(status)) if status.code == 409 => return Ok(()),
        Err(source) => {
            let action = format!("create SchemaVersion {name}");
            return Err(ApiError { action, source }.into());
        }
    };
    // Version 1 (the CREATE TABLE) has nothing to roll out: the rollout marks it Complete
    // at its first look, so it is not marked Pending first (10,000 new tables, 10,000 writes).
    if version.spec.previous_version.is_some() {
        let status = json!({"status": {
            "phase": RolloutPhase::Pending,
            "observedGeneration": made.meta().generation,
        }});
        versions
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .doing(|| format!("mark SchemaVersion {name} Pending"))?;
    }
    let changes: Vec<String> = version
        .spec
        .changes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.summary))
        .collect();
    ctx.event(
        table,
        false,
        "SchemaVersionCreated",
        format!(
            "{name} ({:?}): {}",
            version.spec.compatibility,
            changes.join("; ")
        ),
    )
    .await;
    Ok(())
}

/// Sets the `SchemaAccepted` condition — by server-side apply of that one condition under
/// the schema reconciler's own field manager, so it neither waits for nor refuses the table
/// reconciler's writes of the table's other conditions and routing map (conditional on the
/// version read, the two refused each other, 409, for most new tables); a Warning Event
/// accompanies a refusal the first time it is reported.
async fn write_condition(
    ctx: &Context,
    table: &Table,
    observation: Observation<'_>,
) -> Result<(), SchemaError> {
    let generation = table.meta().generation;
    let old = table
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let refused = (!observation.holds).then(|| observation.message.clone());
    let mut conditions = old.clone();
    conditions::set(&mut conditions, generation, observation, Timestamp::now());
    if conditions::same(&conditions, &old) {
        return Ok(());
    }
    ctx.leader.ensure()?;
    let tables: Api<Table> =
        Api::namespaced(ctx.client.clone(), &table.namespace().unwrap_or_default());
    let accepted: Vec<_> = conditions
        .iter()
        .filter(|c| c.type_ == SCHEMA_ACCEPTED)
        .collect();
    let patch = json!({
        "apiVersion": "shardplane.io/v1alpha1",
        "kind": "Table",
        "metadata": {"name": table.name_any()},
        "status": {"conditions": accepted},
    });
    tables
        .patch_status(
            &table.name_any(),
            &PatchParams::apply(SCHEMA_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await
        .doing(|| {
            format!(
                "write the SchemaAccepted condition of Table {}",
                table.name_any()
            )
        })?;
    if let Some(message) = refused {
        ctx.event(table, true, REFUSED_REASON, message).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::schema_version::Compatibility;
    use crate::protocol::SOURCE_COMMIT_ANNOTATION;

    fn table(generation: i64, columns: serde_json::Value) -> Table {
        let mut table: Table = serde_json::from_value(json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Table",
            "metadata": {"name": "orders", "namespace": "db", "uid": "u1", "generation": generation,
                         "annotations": {SOURCE_COMMIT_ANNOTATION: "abc123"}},
            "spec": {"cluster": "main", "shardKey": "id", "columns": columns, "primaryKey": ["id"]}
        }))
        .unwrap();
        table.metadata.generation = Some(generation);
        table
    }

    fn created(outcome: Outcome) -> SchemaVersion {
        match outcome {
            Outcome::Create(version) => *version,
            other => panic!("expected a new version, got {other:?}"),
        }
    }

    #[test]
    fn first_sight_creates_version_one_owned_labelled_and_sourced() {
        let t = table(
            1,
            json!([{"name": "id", "type": "bigint", "nullable": false}]),
        );
        let v1 = created(next_version(&t, None));
        assert_eq!(v1.metadata.name.as_deref(), Some("orders-v1"));
        assert_eq!(v1.spec.version, 1);
        assert_eq!(v1.spec.previous_version, None);
        assert_eq!(v1.spec.table_generation, Some(1));
        assert_eq!(
            v1.spec.ddl,
            ["CREATE TABLE \"orders\" (\"id\" bigint NOT NULL, PRIMARY KEY (\"id\"))"]
        );
        assert_eq!(
            v1.spec.source.clone().and_then(|s| s.commit).as_deref(),
            Some("abc123")
        );
        assert_eq!(v1.labels()[TABLE_LABEL], "orders");
        assert_eq!(v1.owner_references()[0].uid, "u1");
    }

    #[test]
    fn a_generation_already_versioned_creates_nothing() {
        let t = table(
            1,
            json!([{"name": "id", "type": "bigint", "nullable": false}]),
        );
        let v1 = created(next_version(&t, None));
        let changed = table(
            1,
            json!([{"name": "id", "type": "bigint", "nullable": false}, {"name": "x", "type": "text"}]),
        );
        assert!(matches!(
            next_version(&changed, Some(&v1)),
            Outcome::Current { version: 1 }
        ));
        let later = table(
            2,
            json!([{"name": "id", "type": "bigint", "nullable": false}, {"name": "x", "type": "text"}]),
        );
        let v2 = created(next_version(&later, Some(&v1)));
        assert_eq!((v2.spec.version, v2.spec.previous_version), (2, Some(1)));
        assert_eq!(v2.spec.compatibility, Compatibility::Online);
        assert_eq!(
            v2.spec.ddl,
            ["ALTER TABLE \"orders\" ADD COLUMN \"x\" text"]
        );
        // A generation that changed something else (no schema change) makes no version.
        let unrelated = table(
            3,
            later
                .spec
                .schema
                .columns
                .iter()
                .map(|c| serde_json::to_value(c).unwrap())
                .collect(),
        );
        assert!(matches!(
            next_version(&unrelated, Some(&v2)),
            Outcome::Current { version: 2 }
        ));
    }

    #[test]
    fn a_refused_change_creates_nothing_and_says_why() {
        let t = table(
            1,
            json!([{"name": "id", "type": "bigint", "nullable": false}, {"name": "x", "type": "text"}]),
        );
        let v1 = created(next_version(&t, None));
        let dropped = table(
            2,
            json!([{"name": "id", "type": "bigint", "nullable": false}]),
        );
        let Outcome::Refused { message } = next_version(&dropped, Some(&v1)) else {
            panic!("a drop of a column that is not deprecated was not refused");
        };
        assert_eq!(
            message,
            "spec.columns[x]: dropping column x is refused: it is not deprecated; deprecate it first (`deprecated: true`), move applications off it, then remove it"
        );
    }

    // The reconcile against a mock API server: every request it makes, in order.

    use crate::controller::fixtures::{self, Expect};

    const ID: &str = r#"{"name": "id", "type": "bigint", "nullable": false}"#;
    const X: &str = r#"{"name": "x", "type": "text"}"#;

    /// Table `orders` at `generation`, as a watch delivers it (resource version 5).
    fn watched(generation: i64, columns: &[&str]) -> Arc<Table> {
        let columns = columns
            .iter()
            .map(|c| serde_json::from_str(c).unwrap())
            .collect();
        let mut t = table(generation, serde_json::Value::Array(columns));
        t.metadata.resource_version = Some("5".into());
        Arc::new(t)
    }

    /// The version the API server holds for `table` (as created, with a generation).
    fn stored(table: &Table) -> SchemaVersion {
        let mut version = created(next_version(table, None));
        version.metadata.generation = Some(1);
        version
    }

    /// The create of SchemaVersion `orders-v<version>`.
    fn version_created(version: i64) -> Expect {
        Expect::create::<SchemaVersion>("db")
            .field("/metadata/name", format!("orders-v{version}"))
            .field("/spec/version", version)
    }

    /// A schema reconciler against the mock API server, its cache holding `versions`.
    fn schemas(leading: bool, versions: &[SchemaVersion]) -> (Arc<Schemas>, fixtures::ApiServer) {
        let (ctx, server) = fixtures::context(leading);
        let versions = Cache::holding(versions.to_vec());
        (Arc::new(Schemas { ctx, versions }), server)
    }

    /// The Table's `SchemaAccepted` condition written as `status` with `reason`, conditional
    /// on the version read.
    fn condition_written(status: &str, reason: &str) -> Expect {
        Expect::patch_status::<Table>("db", "orders")
            .absent("/metadata/resourceVersion")
            .field("/status/conditions/0/type", SCHEMA_ACCEPTED)
            .field("/status/conditions/0/status", status)
            .field("/status/conditions/0/reason", reason)
            .field("/status/conditions/0/observedGeneration", 1)
            .answer(table(1, json!([])))
    }

    #[tokio::test]
    async fn a_new_table_is_persisted_as_schema_version_one() {
        let (ctx, server) = schemas(true, &[]);
        let t = watched(1, &[ID]);
        let script = vec![
            version_created(1)
                .field("/metadata/labels/shardplane.io~1table", "orders")
                .field("/metadata/ownerReferences/0/uid", "u1")
                .field("/spec/table", "orders")
                .absent("/spec/previousVersion")
                .field(
                    "/spec/ddl",
                    ["CREATE TABLE \"orders\" (\"id\" bigint NOT NULL, PRIMARY KEY (\"id\"))"],
                )
                .field("/spec/compatibility", "Online")
                .field("/spec/source/commit", "abc123")
                .field("/spec/tableGeneration", 1)
                .answer(stored(&t)),
            // Version 1 is not marked Pending: its rollout completes at the first look.
            Expect::event("db", "SchemaVersionCreated").field("/type", "Normal"),
            // Reported as the next look finds it, so that look writes nothing.
            condition_written("True", "SchemaCurrent").field(
                "/status/conditions/0/message",
                "schema version 1 holds the declared schema",
            ),
        ];
        let action = server.run(script, reconcile(t, ctx)).await.unwrap();
        assert_eq!(action, Action::await_change());
    }

    #[tokio::test]
    async fn a_changed_table_gets_the_next_version_with_the_ddl_from_the_previous() {
        let v1 = stored(&watched(1, &[ID]));
        let (ctx, server) = schemas(true, &[v1]);
        let t = watched(2, &[ID, X]);
        let script = vec![
            version_created(2)
                .field("/spec/previousVersion", 1)
                .field(
                    "/spec/ddl",
                    ["ALTER TABLE \"orders\" ADD COLUMN \"x\" text"],
                )
                .field("/spec/compatibility", "Online")
                .field("/spec/tableGeneration", 2),
            Expect::patch_status::<SchemaVersion>("db", "orders-v2")
                .field("/status/phase", "Pending")
                .answer(stored(&t)),
            Expect::event("db", "SchemaVersionCreated"),
            Expect::patch_status::<Table>("db", "orders")
                .field("/status/conditions/0/reason", "SchemaCurrent")
                .field("/status/conditions/0/observedGeneration", 2)
                .answer(table(2, json!([]))),
        ];
        server.run(script, reconcile(t, ctx)).await.unwrap();
    }

    #[tokio::test]
    async fn an_unchanged_table_causes_no_write() {
        let mut t = (*watched(1, &[ID])).clone();
        let v1 = stored(&t);
        let (ctx, server) = schemas(true, &[v1]);
        let mut conditions = Vec::new();
        conditions::set(
            &mut conditions,
            Some(1),
            Observation {
                type_: SCHEMA_ACCEPTED,
                holds: true,
                reason: "SchemaCurrent",
                message: "schema version 1 holds the declared schema".into(),
            },
            Timestamp::now(),
        );
        t.status.get_or_insert_default().conditions = conditions;
        let action = server
            .run(vec![], reconcile(Arc::new(t), ctx))
            .await
            .unwrap();
        assert_eq!(action, Action::await_change());
    }

    #[tokio::test]
    async fn a_refused_change_writes_schema_accepted_false_and_no_version() {
        let v1 = stored(&watched(1, &[ID, X]));
        let (ctx, server) = schemas(true, &[v1]);
        let dropped = watched(2, &[ID]);
        let script = vec![
            Expect::patch_status::<Table>("db", "orders")
                .absent("/metadata/resourceVersion")
                .field("/status/conditions/0/type", SCHEMA_ACCEPTED)
                .field("/status/conditions/0/status", "False")
                .field("/status/conditions/0/reason", REFUSED_REASON)
                .field(
                    "/status/conditions/0/message",
                    "spec.columns[x]: dropping column x is refused: it is not deprecated; deprecate it first (`deprecated: true`), move applications off it, then remove it",
                )
                .answer(table(2, json!([]))),
            Expect::event("db", REFUSED_REASON).field("/type", "Warning"),
        ];
        server.run(script, reconcile(dropped, ctx)).await.unwrap();
    }

    #[tokio::test]
    async fn a_version_another_leader_created_is_left_as_it_is() {
        let (ctx, server) = schemas(true, &[]);
        let t = watched(1, &[ID]);
        let script = vec![
            version_created(1).fail(409, "AlreadyExists"),
            condition_written("True", "SchemaCurrent"),
        ];
        server.run(script, reconcile(t, ctx)).await.unwrap();
    }

    #[tokio::test]
    async fn a_table_being_deleted_gets_no_version() {
        let (ctx, server) = schemas(true, &[]);
        let mut t = (*watched(1, &[ID])).clone();
        t.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        let action = server
            .run(vec![], reconcile(Arc::new(t), ctx))
            .await
            .unwrap();
        assert_eq!(action, Action::await_change());
    }

    #[tokio::test]
    async fn a_replica_that_does_not_lead_writes_nothing() {
        let (ctx, server) = schemas(false, &[]);
        let result = server.run(vec![], reconcile(watched(1, &[ID]), ctx)).await;
        assert!(
            matches!(result, Err(SchemaError::NotLeader(_))),
            "{result:?}"
        );
    }
}
