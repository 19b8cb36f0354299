//! The routing library and the acknowledged-writes checker against real parts, without the
//! operator: real PostgreSQL instances (shard `items-a` = a primary and a standby, shard
//! `items-b` = a primary, split at keyspace id 0, each refusing rows outside its range with
//! the range `CHECK` constraint), and a Table and Shards on the real API server whose status
//! (the routing map, the replicas) the test writes itself, as the operator would.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use shardplane::agent::postgres::{
    Credentials, Instance, InstanceSettings, InstanceSpec, KeyKind, ShardedTable, SyncQuorum,
    Toolchain, free_loopback_port,
};
use shardplane::api::shard::{KeyRangeSpec, ObservedReplica, ReplicaRole, ReplicaState};
use shardplane::api::table::{Column, RouteEntry, RoutingMap, TableSchema};
use shardplane::api::{Shard, ShardSpec, ShardStatus, Table, TableSpec};
use shardplane::plan::{KEYSPACE_END, KEYSPACE_START, KeyRange};
use shardplane::routing::{
    DatabaseCredentials, Router, RouterConfig, RoutingError, ShardKeyValue, keyspace_id,
};
use shardplane::workload::{Checker, Workload, WorkloadConfig};
use support::{TestEnv, env_with_crds};
use tempfile::TempDir;

/// The Table, its SQL table and the shards' range constraint.
const TABLE: &str = "items";
const RANGE_CONSTRAINT: &str = "shard_range";
/// The application role the router connects as; its password is made per test run.
const APP_USER: &str = "app";

/// Keyspace ids below 0 are shard `items-a`'s, the others `items-b`'s.
fn range_a() -> KeyRange {
    KeyRange::new(KEYSPACE_START, 0).unwrap()
}

fn range_b() -> KeyRange {
    KeyRange::new(0, KEYSPACE_END).unwrap()
}

fn sharded_table() -> ShardedTable {
    ShardedTable {
        name: TABLE.to_owned(),
        key_column: "id".to_owned(),
        key_kind: KeyKind::Integer,
    }
}

fn in_a(id: i64) -> bool {
    range_a().contains(keyspace_id(&ShardKeyValue::Int(id)))
}

/// Two shards of table `items` on real PostgreSQL, described on the real API server.
struct Fixture {
    env: TestEnv,
    /// Shard `items-a`'s primary.
    a0: Instance,
    /// Shard `items-a`'s standby, if the test asked for one.
    a1: Option<Instance>,
    /// Shard `items-b`'s primary.
    b0: Instance,
    app_password: String,
    _dir: TempDir,
}

impl Fixture {
    async fn new(with_standby: bool) -> Fixture {
        let env = env_with_crds().await;
        let toolchain = Toolchain::detect().unwrap();
        let dir = tempfile::Builder::new()
            .prefix("shardplane-routing-test-")
            .tempdir()
            .unwrap();
        toolchain.hand_over(dir.path()).unwrap();
        let salt = std::process::id();
        let credentials = Credentials::new(format!("su-{salt}"), format!("repl-{salt}"));
        let spec = |name: &str| InstanceSpec {
            name: name.to_owned(),
            dir: dir.path().join(name),
            port: free_loopback_port().unwrap(),
            settings: InstanceSettings {
                fsync: false,
                ..InstanceSettings::default()
            },
        };
        let (spec_a0, spec_b0) = (spec("a0"), spec("b0"));
        let (a0, b0) = tokio::join!(
            Instance::create_primary(&toolchain, &spec_a0, &credentials),
            Instance::create_primary(&toolchain, &spec_b0, &credentials),
        );
        let (a0, b0) = (a0.unwrap(), b0.unwrap());
        let app_password = format!("app-{salt}-'pw");
        for (primary, range) in [(&a0, range_a()), (&b0, range_b())] {
            let client = primary.connect().await.unwrap();
            client
                .batch_execute(&format!(
                    "CREATE ROLE {APP_USER} LOGIN PASSWORD '{}';
                     CREATE TABLE {TABLE} (id bigint PRIMARY KEY, note text);
                     GRANT SELECT, INSERT, UPDATE, DELETE ON {TABLE} TO {APP_USER};
                     {};",
                    app_password.replace('\'', "''"),
                    sharded_table().range_check_constraint(RANGE_CONSTRAINT, range)
                ))
                .await
                .unwrap();
        }
        let a1 = if with_standby {
            let standby =
                Instance::create_standby(&toolchain, &spec("a1"), &credentials, &a0.upstream())
                    .await
                    .unwrap();
            // Zero data loss: a commit on a0 is acknowledged once a1 has flushed it.
            a0.set_sync_quorum(&SyncQuorum::any(1, ["a1"]))
                .await
                .unwrap();
            Some(standby)
        } else {
            None
        };
        let fixture = Fixture {
            env,
            a0,
            a1,
            b0,
            app_password,
            _dir: dir,
        };
        fixture.declare().await;
        fixture
    }

    /// Creates the Table and its two Shards, and writes their status as the operator would.
    async fn declare(&self) {
        let table = items_table();
        self.tables()
            .create(&PostParams::default(), &table)
            .await
            .unwrap();
        let routing = RoutingMap {
            version: 1,
            ranges: vec![
                self.route("items-a", &self.a0, 1),
                self.route("items-b", &self.b0, 1),
            ],
        };
        write_routing(&self.tables(), &routing).await;
        for (name, range) in [("items-a", range_a()), ("items-b", range_b())] {
            let wire = range.to_wire();
            let shard = Shard {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    ..ObjectMeta::default()
                },
                spec: ShardSpec {
                    table: TABLE.to_owned(),
                    range: KeyRangeSpec {
                        start: wire.start,
                        end: wire.end,
                    },
                    placement: None,
                },
                status: None,
            };
            self.shards()
                .create(&PostParams::default(), &shard)
                .await
                .unwrap();
        }
        let mut a = vec![replica(&self.a0, ReplicaRole::Primary)];
        a.extend(self.a1.iter().map(|a1| replica(a1, ReplicaRole::Secondary)));
        self.set_replicas("items-a", a).await;
        self.set_replicas("items-b", vec![replica(&self.b0, ReplicaRole::Primary)])
            .await;
    }

    fn route(&self, shard: &str, primary: &Instance, epoch: i64) -> RouteEntry {
        let range = if shard == "items-a" {
            range_a()
        } else {
            range_b()
        };
        let wire = range.to_wire();
        RouteEntry {
            start: wire.start,
            end: wire.end,
            shard: shard.to_owned(),
            primary: Some(format!("node-{}", primary.name())),
            endpoint: Some(endpoint(primary)),
            epoch,
        }
    }

    /// Replaces the routing map in one status write that carries the resourceVersion it was
    /// computed from, as the operator's switch does.
    async fn switch_routing(&self, ranges: Vec<RouteEntry>) {
        let mut table = self.tables().get(TABLE).await.unwrap();
        let status = table.status.get_or_insert_with(Default::default);
        let version = status.routing.as_ref().map_or(0, |map| map.version) + 1;
        status.routing = Some(RoutingMap { version, ranges });
        self.tables()
            .replace_status(TABLE, &PostParams::default(), &table)
            .await
            .unwrap();
    }

    /// Promotes shard a's standby and switches the map to it at epoch 2; returns it.
    async fn promote_standby_and_switch(&self) -> &Instance {
        let a1 = self.a1.as_ref().unwrap();
        a1.promote(&SyncQuorum::none()).await.unwrap();
        self.switch_routing(vec![
            self.route("items-a", a1, 2),
            self.route("items-b", &self.b0, 1),
        ])
        .await;
        a1
    }

    async fn set_replicas(&self, shard: &str, replicas: Vec<ObservedReplica>) {
        let status = ShardStatus {
            replicas,
            ..ShardStatus::default()
        };
        self.shards()
            .patch_status(
                shard,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .unwrap();
    }

    fn tables(&self) -> Api<Table> {
        self.env.api()
    }

    fn shards(&self) -> Api<Shard> {
        self.env.api()
    }

    fn credentials(&self) -> DatabaseCredentials {
        DatabaseCredentials::new(APP_USER, self.app_password.clone(), "postgres")
    }

    async fn router(&self, deadline: Duration) -> Router {
        let config = RouterConfig {
            deadline,
            range_constraint: RANGE_CONSTRAINT.to_owned(),
            ..RouterConfig::default()
        };
        Router::start(
            self.env.client.clone(),
            &self.env.namespace,
            TABLE,
            self.credentials(),
            config,
        )
        .await
        .unwrap()
    }

    fn checker(&self) -> Checker {
        Checker::new(
            self.env.client.clone(),
            &self.env.namespace,
            TABLE,
            sharded_table(),
            self.credentials(),
        )
    }
}

/// The Table `items`: `id bigint` (the shard key and primary key) and `note text`.
fn items_table() -> Table {
    let column = |name: &str, type_: &str, nullable| Column {
        name: name.to_owned(),
        type_: type_.to_owned(),
        nullable: Some(nullable),
        default: None,
        renamed_from: None,
        deprecated: None,
    };
    Table::new(
        TABLE,
        TableSpec {
            cluster: "main".to_owned(),
            shard_key: "id".to_owned(),
            sharding: None,
            schema: TableSchema {
                columns: vec![column("id", "bigint", false), column("note", "text", true)],
                primary_key: vec!["id".to_owned()],
                indexes: Vec::new(),
                checks: Vec::new(),
            },
        },
    )
}

/// Writes the Table's first routing map (a merge patch of its status).
async fn write_routing(tables: &Api<Table>, routing: &RoutingMap) {
    tables
        .patch_status(
            TABLE,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "routing": routing } })),
        )
        .await
        .unwrap();
}

fn endpoint(instance: &Instance) -> String {
    format!("127.0.0.1:{}", instance.port())
}

fn replica(instance: &Instance, role: ReplicaRole) -> ObservedReplica {
    ObservedReplica {
        node: format!("node-{}", instance.name()),
        role,
        state: ReplicaState::InSync,
        endpoint: Some(endpoint(instance)),
        lag_bytes: Some(0),
        epoch: Some(1),
        received_lsn: None,
        last_seen_time: None,
    }
}

/// The ids in `items` on `instance`.
async fn ids_on(instance: &Instance) -> Vec<i64> {
    let client = instance.connect().await.unwrap();
    let rows = client
        .query(&format!("SELECT id FROM {TABLE} ORDER BY id"), &[])
        .await
        .unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}

async fn insert(router: &Router, id: i64) -> Result<u64, RoutingError> {
    let note = format!("note {id}");
    router
        .execute(
            &ShardKeyValue::Int(id),
            &format!("INSERT INTO {TABLE} (id, note) VALUES ($1, $2) ON CONFLICT DO NOTHING"),
            &[&id, &note],
        )
        .await
}

#[tokio::test]
async fn a_router_waits_for_a_usable_routing_map_and_says_what_it_saw() {
    let env = env_with_crds().await;
    let tables: Api<Table> = env.api();
    // Long enough for the first watch event on a loaded machine (seen: over 1 s).
    let config = RouterConfig {
        first_map_timeout: Duration::from_secs(3),
        ..RouterConfig::default()
    };
    let start = || {
        Router::start(
            env.client.clone(),
            &env.namespace,
            TABLE,
            DatabaseCredentials::new(APP_USER, "unused", "postgres"),
            config.clone(),
        )
    };
    let problem = |result: Result<Router, RoutingError>| match result {
        Err(error @ RoutingError::NoRoutingMap { .. }) => error.to_string(),
        other => panic!("expected NoRoutingMap, got {other:?}"),
    };

    let missing = problem(start().await);
    assert!(missing.contains("Table items does not exist"), "{missing}");
    tables
        .create(&PostParams::default(), &items_table())
        .await
        .unwrap();
    let unrouted = problem(start().await);
    assert!(unrouted.contains("has no status.routing yet"), "{unrouted}");
    assert!(unrouted.contains("kubectl get table items"), "{unrouted}");

    let write_map = |endpoint: &str| {
        let routing = RoutingMap {
            version: 1,
            ranges: vec![RouteEntry {
                start: None,
                end: None,
                shard: "items-all".to_owned(),
                primary: None,
                endpoint: Some(endpoint.to_owned()),
                epoch: 1,
            }],
        };
        let tables = tables.clone();
        async move { write_routing(&tables, &routing).await }
    };
    write_map("no-port").await;
    let invalid = problem(start().await);
    assert!(
        invalid.contains("endpoint \"no-port\" is not host:port"),
        "{invalid}"
    );

    // A router that is starting follows the map as soon as it becomes usable.
    let (router, ()) = tokio::join!(start(), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        write_map("127.0.0.1:5432").await;
    });
    let router = router.unwrap();
    let route = router.route(&ShardKeyValue::Int(7)).unwrap();
    assert_eq!(route.shard, "items-all");
    assert_eq!(router.stats().map_version, 1);
}

#[tokio::test]
async fn routed_rows_land_on_the_shard_of_their_range() {
    let fixture = Fixture::new(false).await;
    let router = fixture.router(Duration::from_secs(10)).await;

    for id in 1..=200 {
        assert_eq!(insert(&router, id).await.unwrap(), 1, "id {id}");
    }
    let (on_a, on_b) = (ids_on(&fixture.a0).await, ids_on(&fixture.b0).await);
    let expected_a: Vec<i64> = (1..=200).filter(|&id| in_a(id)).collect();
    let expected_b: Vec<i64> = (1..=200).filter(|&id| !in_a(id)).collect();
    assert!(!expected_a.is_empty() && !expected_b.is_empty());
    assert_eq!(on_a, expected_a, "shard a holds exactly its range's ids");
    assert_eq!(on_b, expected_b, "shard b holds exactly its range's ids");

    // Reads go to the key's primary and find the row written through the router.
    for id in [1_i64, 2, 3, 50, 199] {
        let rows = router
            .query(
                &ShardKeyValue::Int(id),
                &format!("SELECT note FROM {TABLE} WHERE id = $1"),
                &[&id],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "id {id}");
        assert_eq!(rows[0].get::<_, String>(0), format!("note {id}"));
    }
    let stats = router.stats();
    assert_eq!((stats.requests, stats.retries), (205, 0), "{stats}");

    // A statement error is reported at once, naming table, key and endpoint, not retried.
    let error = router
        .execute(
            &ShardKeyValue::Int(1),
            "INSERT INTO no_such_table VALUES ($1)",
            &[&1_i64],
        )
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, RoutingError::Refused { .. }), "{message}");
    assert!(
        message.contains("Table items") && message.contains("key 1"),
        "{message}"
    );
    assert!(!message.contains(&fixture.app_password), "{message}");
    assert_eq!(router.stats().retries, 0);
}

#[tokio::test]
async fn a_stale_map_is_refused_by_the_range_constraint_and_retried_until_it_is_fixed() {
    let fixture = Fixture::new(false).await;
    let router = fixture.router(Duration::from_secs(1)).await;
    let id_a = (1..).find(|&id| in_a(id)).unwrap();

    // A map that sends each range to the other shard's primary: every write is misrouted.
    let crossed = vec![
        fixture.route("items-a", &fixture.b0, 1),
        fixture.route("items-b", &fixture.a0, 1),
    ];
    fixture.switch_routing(crossed).await;
    assert!(
        support::eventually(Duration::from_secs(10), || async {
            router.stats().map_version == 2
        })
        .await
    );
    let error = insert(&router, id_a).await.unwrap_err();
    let stats = router.stats();
    assert!(
        matches!(error, RoutingError::DeadlineExceeded { .. }),
        "{error}"
    );
    assert!(stats.retries_misrouted > 0 && stats.gave_up == 1, "{stats}");
    assert!(
        error.to_string().contains("23514") || error.to_string().contains(RANGE_CONSTRAINT),
        "{error}"
    );
    assert!(
        ids_on(&fixture.b0).await.is_empty(),
        "the constraint let a misrouted row in"
    );

    // Fixed while a write is retrying: the write goes through on the newer map.
    let router = fixture.router(Duration::from_secs(10)).await;
    let writer = tokio::spawn({
        let router = router.clone();
        async move { insert(&router, id_a).await }
    });
    assert!(
        support::eventually(Duration::from_secs(10), || async {
            router.stats().retries_misrouted > 0
        })
        .await,
        "the write under the crossed map was not refused"
    );
    fixture
        .switch_routing(vec![
            fixture.route("items-a", &fixture.a0, 1),
            fixture.route("items-b", &fixture.b0, 1),
        ])
        .await;
    assert_eq!(writer.await.unwrap().unwrap(), 1);
    assert_eq!(ids_on(&fixture.a0).await, vec![id_a]);
    let stats = router.stats();
    assert!(stats.retries_misrouted > 0 && stats.gave_up == 0, "{stats}");
}

/// How shard a's primary goes away in a failover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failover {
    /// A planned switch: the old primary is fenced (writes fail with 25006, sessions are
    /// terminated) and stays up as a read-only instance.
    Fenced,
    /// A crash: the old primary is killed with SIGKILL (connections break and are refused).
    Crashed,
}

#[tokio::test]
async fn the_workload_continues_through_a_fenced_failover_and_loses_no_acknowledged_write() {
    workload_through_failover(Failover::Fenced).await;
}

#[tokio::test]
async fn the_workload_continues_through_a_crash_failover_and_loses_no_acknowledged_write() {
    workload_through_failover(Failover::Crashed).await;
}

async fn workload_through_failover(failover: Failover) {
    let mut fixture = Fixture::new(true).await;
    let router = fixture.router(Duration::from_secs(20)).await;
    let config = WorkloadConfig::new(TABLE, "id", 4, 200.0);
    let workload = Workload::start(router.clone(), &config).unwrap();
    assert!(
        support::eventually(Duration::from_secs(20), || async {
            workload.acked_so_far() >= 100
        })
        .await,
        "the workload did not get going"
    );

    // Failover of shard a: fence or kill the old primary, promote its standby, switch the
    // routing map in one write (new endpoint, new epoch), and report the new roles.
    let failover_started = std::time::Instant::now();
    match failover {
        Failover::Fenced => fixture.a0.fence_writes().await.unwrap(),
        Failover::Crashed => fixture.a0.kill(),
    }
    let a1 = fixture.promote_standby_and_switch().await;
    let switched_after = failover_started.elapsed();
    let on_a1_at_switch = ids_on(a1).await.len();
    fixture
        .set_replicas(
            "items-a",
            vec![
                ObservedReplica {
                    state: match failover {
                        Failover::Fenced => ReplicaState::Fenced,
                        Failover::Crashed => ReplicaState::Down,
                    },
                    ..replica(&fixture.a0, ReplicaRole::Secondary)
                },
                replica(a1, ReplicaRole::Primary),
            ],
        )
        .await;
    let acked_at_switch = workload.acked_so_far();
    assert!(
        support::eventually(Duration::from_secs(20), || async {
            workload.acked_so_far() >= acked_at_switch + 200
        })
        .await,
        "the workload did not continue after the switch"
    );
    let report = workload.stop().await;
    let stats = router.stats();
    println!("{failover:?} failover: {report}");
    println!("router: {stats}; routing switched {switched_after:.2?} after the failover began");

    assert!(report.failed.is_empty(), "{report}");
    assert!(report.retries > 0, "the failover caused no retry: {report}");
    let expected_reasons = match failover {
        Failover::Fenced => stats.retries_read_only + stats.retries_shutdown,
        Failover::Crashed => stats.retries_connection + stats.retries_shutdown,
    };
    assert!(expected_reasons > 0, "{failover:?}: {stats}");
    assert!(
        ids_on(a1).await.len() > on_a1_at_switch,
        "shard a's writes did not move to the promoted standby"
    );

    let check = fixture.checker().check(&report.acked_keys()).await.unwrap();
    println!("{check}");
    assert_eq!(
        (
            check.rows.missing,
            check.rows.duplicated,
            check.rows.misplaced
        ),
        (0, 0, 0),
        "{check}"
    );
    assert_eq!(check.rows.acked, report.acked.len());
    assert!(check.rows.found >= report.acked.len(), "{check}");
    assert!(check.primaries.is_clean(), "{check}");
    assert_eq!(check.primaries.shards.len(), 2);
    let unreachable = &check.primaries.shards[0].unreachable;
    match failover {
        Failover::Fenced => assert!(unreachable.is_empty(), "{check}"),
        Failover::Crashed => assert_eq!(unreachable, &vec![endpoint(&fixture.a0)], "{check}"),
    }
}

#[tokio::test]
async fn a_write_stuck_on_a_primary_without_its_quorum_moves_with_the_range() {
    let fixture = Fixture::new(true).await;
    let deadline = Duration::from_secs(30);
    let router = fixture.router(deadline).await;
    let id = (1..).find(|&id| in_a(id)).unwrap();

    // The primary loses its quorum: a commit there waits for a standby that never comes.
    fixture
        .a0
        .set_sync_quorum(&SyncQuorum::any(1, ["lost"]))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (inserted, a1) = tokio::join!(insert(&router, id), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(router.stats().requests, 1);
        assert_eq!(router.stats().retries, 0, "the write did not wait on a0");
        fixture.promote_standby_and_switch().await
    });
    let took = started.elapsed();
    let stats = router.stats();
    println!("stuck write: {inserted:?} after {took:.2?}; router: {stats}");
    // 0 when the stuck commit had already streamed to a1 before its promotion.
    assert!(matches!(inserted, Ok(0 | 1)), "{inserted:?}");
    assert!(
        took < deadline / 2,
        "the write waited {took:?} for the deadline"
    );
    assert_eq!(stats.retries_moved, 1, "{stats}");
    assert_eq!(ids_on(a1).await, vec![id]);
}

#[tokio::test]
async fn the_checker_finds_lost_duplicated_and_misplaced_rows() {
    let fixture = Fixture::new(false).await;
    let router = fixture.router(Duration::from_secs(10)).await;
    let mut acked = HashSet::new();
    for id in 1..=100 {
        insert(&router, id).await.unwrap();
        acked.insert(ShardKeyValue::Int(id));
    }
    let checker = fixture.checker();
    let clean = checker.check_rows(&acked).await.unwrap();
    assert!(clean.is_clean(), "{clean}");
    assert_eq!(
        (clean.acked, clean.found, clean.unacknowledged),
        (100, 100, 0)
    );

    let lost = (1..=100).find(|&id| in_a(id)).unwrap();
    let copied = (1..=100).find(|&id| !in_a(id)).unwrap();
    let stray = (101..).find(|&id| !in_a(id)).unwrap();
    let a0 = fixture.a0.connect().await.unwrap();
    a0.batch_execute(&format!(
        "DELETE FROM {TABLE} WHERE id = {lost};
         ALTER TABLE {TABLE} DROP CONSTRAINT {RANGE_CONSTRAINT};
         INSERT INTO {TABLE} (id) VALUES ({copied}), ({stray});"
    ))
    .await
    .unwrap();

    let report = checker.check_rows(&acked).await.unwrap();
    println!("{report}");
    assert!(!report.is_clean());
    assert_eq!(
        (
            report.missing,
            report.duplicated,
            report.misplaced,
            report.unacknowledged
        ),
        (1, 1, 2, 1),
        "{report}"
    );
    assert_eq!(report.found, 101);
    let text = report.to_string();
    assert!(
        text.contains(&format!(
            "missing: acknowledged key {lost} (belongs to shard items-a)"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("duplicated: key {copied}")),
        "{text}"
    );
    assert!(text.contains(&format!("misplaced: key {stray}")), "{text}");
}

#[tokio::test]
async fn two_writable_primaries_in_one_shard_are_detected() {
    let fixture = Fixture::new(true).await;
    let checker = fixture.checker();
    let before = checker.check_primaries().await.unwrap();
    assert!(before.is_clean(), "{before}");
    assert_eq!(before.shards.iter().map(|s| s.checked).sum::<usize>(), 3);

    // Promoted without fencing the old primary: both take writes.
    let a1 = fixture.a1.as_ref().unwrap();
    a1.promote(&SyncQuorum::none()).await.unwrap();
    let split = checker.check_primaries().await.unwrap();
    println!("{split}");
    let brains = split.split_brains();
    assert_eq!(brains.len(), 1, "{split}");
    assert_eq!(brains[0].shard, "items-a");
    assert_eq!(
        brains[0].writable.iter().collect::<HashSet<_>>(),
        HashSet::from([&endpoint(&fixture.a0), &endpoint(a1)])
    );
    assert!(
        split.to_string().contains("1 with two writable primaries"),
        "{split}"
    );

    fixture.a0.fence_writes().await.unwrap();
    let fenced = checker.check_primaries().await.unwrap();
    assert!(fenced.is_clean(), "{fenced}");
    assert_eq!(fenced.shards[0].writable, vec![endpoint(a1)]);
}
