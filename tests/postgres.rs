//! The data plane's building blocks against real PostgreSQL servers: bit-exact key hashing,
//! quorum replication, promotion, rewind, the write fence, and key-range copy and
//! verification. Each test starts its own instances (as the `postgres` user when run as
//! root) in its own temporary folder on free loopback ports, so tests run in parallel; the
//! instances stop when the test ends, also when it panics.

use std::time::Duration;

use shardplane::agent::postgres::{
    Credentials, HeldSnapshot, Instance, InstanceSettings, InstanceSpec, KeyKind, PostgresError,
    Role, ShardedTable, Side, StopMode, SyncQuorum, Toolchain, WalLevel, copy_range,
    free_loopback_port, range_digest, release_orphaned_segment, track_changes, untrack_changes,
    verify_range, verify_range_since,
};
use shardplane::plan::KeyRange;
use shardplane::routing::{ShardKeyValue, keyspace_id};
use tempfile::TempDir;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

/// A temporary folder for one test's instances, readable by the PostgreSQL user.
struct Sandbox {
    dir: TempDir,
    toolchain: Toolchain,
    credentials: Credentials,
}

impl Sandbox {
    fn new() -> Self {
        let toolchain = Toolchain::detect().unwrap();
        let dir = tempfile::Builder::new()
            .prefix("shardplane-pg-test-")
            .tempdir()
            .unwrap();
        toolchain.hand_over(dir.path()).unwrap();
        // Test-only passwords, different per sandbox; never printed.
        let salt = std::process::id();
        Sandbox {
            dir,
            toolchain,
            credentials: Credentials::new(format!("su-{salt}-x"), format!("repl:{salt}\\y'")),
        }
    }

    fn spec(&self, name: &str) -> InstanceSpec {
        InstanceSpec {
            name: name.to_owned(),
            dir: self.dir.path().join(name),
            port: free_loopback_port().unwrap(),
            settings: InstanceSettings {
                fsync: false,
                ..InstanceSettings::default()
            },
        }
    }

    async fn primary(&self, name: &str) -> Instance {
        Instance::create_primary(&self.toolchain, &self.spec(name), &self.credentials)
            .await
            .unwrap_or_else(|error| panic!("cannot create primary {name}: {error}"))
    }

    async fn standby(&self, name: &str, primary: &Instance) -> Instance {
        Instance::create_standby(
            &self.toolchain,
            &self.spec(name),
            &self.credentials,
            &primary.upstream(),
        )
        .await
        .unwrap_or_else(|error| panic!("cannot create standby {name}: {error}"))
    }
}

/// splitmix64: a small deterministic generator for test values.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn string(&mut self, len: usize) -> String {
        const ALPHABET: [char; 12] = [
            'a', 'Z', '0', ' ', '~', 'é', 'ß', 'Ж', '世', '界', '😀', '\u{7f}',
        ];
        (0..len)
            .map(|_| ALPHABET[(self.next() % ALPHABET.len() as u64) as usize])
            .collect()
    }
}

async fn query_count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Polls `sql` (a count) on `instance` until it returns `expected` or 10 s pass.
async fn wait_for_count(instance: &Instance, sql: &str, expected: i64) {
    let client = instance.connect().await.unwrap();
    for _ in 0..500 {
        if query_count(&client, sql).await == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = std::fs::read_to_string(instance.log_path()).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    panic!(
        "{}: `{sql}` did not reach {expected} within 10 s; its log ends:\n{}",
        instance.name(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}

fn sql_state(error: &tokio_postgres::Error) -> Option<&SqlState> {
    error.code()
}

#[tokio::test]
async fn key_hash_matches_postgresql() {
    let sandbox = Sandbox::new();
    let instance = sandbox.primary("hashes").await;
    let client = instance.connect().await.unwrap();

    let mut random = Random(7);
    let mut integers: Vec<i64> = vec![
        0,
        1,
        -1,
        i64::MIN,
        i64::MAX,
        i64::MIN + 1,
        i64::MAX - 1,
        i64::from(i32::MIN),
        i64::from(i32::MAX),
        i64::from(i32::MIN) - 1,
        i64::from(i32::MAX) + 1,
        i64::from(u32::MAX),
        1 << 32,
        -(1 << 32),
    ];
    integers.extend((-500..500).map(i64::from));
    integers.extend((0..4000).map(|_| random.next() as i64));
    integers.extend((0..1000).map(|_| i64::from(random.next() as i32)));
    let rows = client
        .query(
            "SELECT x, hashint8extended(x, 0) FROM unnest($1::int8[]) x",
            &[&integers],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), integers.len());
    for row in rows {
        let value: i64 = row.get(0);
        let hash: i64 = row.get(1);
        assert_eq!(
            keyspace_id(&ShardKeyValue::Int(value)),
            hash,
            "int8 {value}"
        );
    }

    // int2 and int4 keys hash like the int8 of the same value.
    let small: Vec<i32> = integers
        .iter()
        .filter_map(|&value| i32::try_from(value).ok())
        .collect();
    let rows = client
        .query(
            "SELECT x, hashint4extended(x, 0), \
               CASE WHEN x BETWEEN -32768 AND 32767 THEN hashint2extended(x::int2, 0) END \
             FROM unnest($1::int4[]) x",
            &[&small],
        )
        .await
        .unwrap();
    for row in rows {
        let value: i32 = row.get(0);
        let expected = keyspace_id(&ShardKeyValue::Int(i64::from(value)));
        assert_eq!(row.get::<_, i64>(1), expected, "int4 {value}");
        if let Some(hash) = row.get::<_, Option<i64>>(2) {
            assert_eq!(hash, expected, "int2 {value}");
        }
    }

    let mut strings: Vec<String> = (0..=40)
        .map(|len| "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"[..len].to_owned())
        .collect();
    strings.extend((0..=40).map(|len| random.string(len)));
    strings.extend(
        [
            "é",
            "日本語",
            "😀😀😀",
            "Grüße, 世界",
            "tab\there",
            "quote'\"\\",
        ]
        .map(str::to_owned),
    );
    strings.extend([1000, 4095, 4096, 10_000, 100_000].map(|len| random.string(len)));
    strings.extend((0..2000).map(|_| {
        let len = (random.next() % 64) as usize;
        random.string(len)
    }));
    let rows = client
        .query(
            "SELECT s, hashtextextended(s, 0), hashtextextended(s::varchar, 0) \
             FROM unnest($1::text[]) s",
            &[&strings],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), strings.len());
    for row in rows {
        let value: String = row.get(0);
        let expected = keyspace_id(&ShardKeyValue::Text(value.clone()));
        assert_eq!(row.get::<_, i64>(1), expected, "text {value:?}");
        assert_eq!(row.get::<_, i64>(2), expected, "varchar {value:?}");
    }
}

#[tokio::test]
async fn quorum_replication_promotion_and_rewind() {
    let sandbox = Sandbox::new();
    let mut old_primary = sandbox.primary("p0").await;
    let (s1, s2) = tokio::join!(
        sandbox.standby("s1", &old_primary),
        sandbox.standby("s2", &old_primary)
    );
    old_primary
        .set_sync_quorum(&SyncQuorum::any(1, ["s1", "s2"]))
        .await
        .unwrap();
    let client = old_primary.connect().await.unwrap();
    client
        .batch_execute("CREATE TABLE acked (id int8 PRIMARY KEY, note text)")
        .await
        .unwrap();
    client
        .execute("INSERT INTO acked VALUES (1, 'before failover')", &[])
        .await
        .unwrap();

    let status = old_primary.status().await.unwrap();
    assert_eq!(status.role, Role::Primary);
    assert!(!status.write_fenced);
    let names: Vec<&str> = status.standbys.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["s1", "s2"], "{status:?}");
    for standby in &status.standbys {
        assert_eq!(standby.sync_state, "quorum", "{status:?}");
        assert_eq!(standby.state, "streaming", "{status:?}");
    }
    // The committed row reaches both standbys.
    for standby in [&s1, &s2] {
        wait_for_count(standby, "SELECT count(*) FROM acked", 1).await;
        assert_eq!(standby.status().await.unwrap().role, Role::Standby);
    }
    let status = old_primary.status().await.unwrap();
    assert!(
        status.standbys.iter().all(|s| s.replay_lag_bytes == 0),
        "{status:?}"
    );

    // Failover: the primary crashes; s1 becomes primary of s2 and, later, the old primary.
    old_primary.kill();
    let new_quorum = SyncQuorum::any(1, ["s2", "p0"]);
    s1.promote(&new_quorum).await.unwrap();
    let quorum: String = s1
        .connect()
        .await
        .unwrap()
        .query_one("SHOW synchronous_standby_names", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(quorum, "ANY 1 (s2, p0)");
    s1.create_replication_slot("s2").await.unwrap();
    s1.create_replication_slot("p0").await.unwrap();
    s2.follow(&s1.upstream()).await.unwrap();
    let new_client = s1.connect().await.unwrap();
    // Waits for s2 to confirm: proves s2 follows s1 and the first write does not hang.
    tokio::time::timeout(
        Duration::from_secs(20),
        new_client.execute("INSERT INTO acked VALUES (2, 'after failover')", &[]),
    )
    .await
    .expect("the first write after promotion hung")
    .unwrap();
    assert_eq!(s1.status().await.unwrap().role, Role::Primary);
    wait_for_count(&s2, "SELECT count(*) FROM acked", 2).await;

    // The old primary comes back only as a standby of the new one.
    old_primary.rewind_and_follow(&s1.upstream()).await.unwrap();
    wait_for_count(&old_primary, "SELECT count(*) FROM acked", 2).await;
    let status = old_primary.status().await.unwrap();
    assert_eq!(status.role, Role::Standby);
    let error = old_primary
        .connect()
        .await
        .unwrap()
        .execute("INSERT INTO acked VALUES (3, 'on the old primary')", &[])
        .await
        .unwrap_err();
    assert_eq!(
        sql_state(&error),
        Some(&SqlState::READ_ONLY_SQL_TRANSACTION),
        "{error}"
    );
    let status = s1.status().await.unwrap();
    let names: Vec<&str> = status.standbys.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["p0", "s2"], "{status:?}");

    // Slots: creating is idempotent, dropping removes the slot.
    s1.create_replication_slot("spare").await.unwrap();
    s1.create_replication_slot("spare").await.unwrap();
    let slots = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'spare'";
    assert_eq!(query_count(&new_client, slots).await, 1);
    s1.drop_replication_slot("spare").await.unwrap();
    assert_eq!(query_count(&new_client, slots).await, 0);

    // Promoting a primary is refused with a clear error.
    let error = s1.promote(&SyncQuorum::none()).await.unwrap_err();
    assert!(matches!(error, PostgresError::WrongRole { .. }), "{error}");
}

#[tokio::test]
async fn fence_makes_writes_fail() {
    let sandbox = Sandbox::new();
    let primary = sandbox.primary("fenced").await;
    let before = primary.connect().await.unwrap();
    before
        .batch_execute("CREATE TABLE t (id int8 PRIMARY KEY)")
        .await
        .unwrap();
    before
        .execute("INSERT INTO t VALUES (1)", &[])
        .await
        .unwrap();

    primary.fence_writes().await.unwrap();
    assert!(primary.status().await.unwrap().write_fenced);
    // Sessions opened before the fence are gone.
    assert!(
        before
            .execute("INSERT INTO t VALUES (2)", &[])
            .await
            .is_err()
    );
    // New sessions cannot write, at once.
    let after = primary.connect().await.unwrap();
    let error = after
        .execute("INSERT INTO t VALUES (3)", &[])
        .await
        .unwrap_err();
    assert_eq!(
        sql_state(&error),
        Some(&SqlState::READ_ONLY_SQL_TRANSACTION),
        "{error}"
    );
    // Reads still work.
    assert_eq!(query_count(&after, "SELECT count(*) FROM t").await, 1);
    // A session that overrides the read-only default gets no acknowledged commit.
    let rogue = primary.connect().await.unwrap();
    rogue
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .unwrap();
    let write = rogue.execute("INSERT INTO t VALUES (4)", &[]);
    tokio::pin!(write);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut write)
            .await
            .is_err(),
        "a write overriding the fence was acknowledged"
    );

    // Lifting the fence releases the waiting commit and lets new sessions write.
    primary.unfence_writes(&SyncQuorum::none()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .expect("the waiting commit was not released by unfencing")
        .unwrap();
    let fresh = primary.connect().await.unwrap();
    fresh
        .execute("INSERT INTO t VALUES (5)", &[])
        .await
        .unwrap();
    assert!(!primary.status().await.unwrap().write_fenced);
    assert_eq!(query_count(&fresh, "SELECT count(*) FROM t").await, 3);
}

const ORDERS: &str = "CREATE TABLE orders (customer_id int8, order_id int4, note text, \
     amount numeric(12,2), placed timestamptz, PRIMARY KEY (customer_id, order_id))";

#[tokio::test]
async fn range_copy_verify_and_check_constraint() {
    let sandbox = Sandbox::new();
    let (source, target) = tokio::join!(sandbox.primary("source"), sandbox.primary("target"));
    let source = source.connect().await.unwrap();
    let target = target.connect().await.unwrap();
    for client in [&source, &target] {
        client.batch_execute(ORDERS).await.unwrap();
    }
    source
        .batch_execute(
            "INSERT INTO orders SELECT g % 5000, g, md5(g::text), g * 1.25, \
               '2026-01-01'::timestamptz + g * interval '1 minute' \
             FROM generate_series(1, 20000) g",
        )
        .await
        .unwrap();
    let table = ShardedTable {
        name: "orders".to_owned(),
        key_column: "customer_id".to_owned(),
        key_kind: KeyKind::Integer,
    };
    let quarters = KeyRange::FULL.split_even(4).unwrap();
    let range = quarters[1];

    let copied = copy_range(&source, &target, &table, range).await.unwrap();
    let expected = query_count(
        &source,
        &format!(
            "SELECT count(*) FROM orders WHERE {}",
            table.range_predicate(range)
        ),
    )
    .await;
    assert!(
        expected > 3000 && expected < 7000,
        "{expected} rows in a quarter"
    );
    assert_eq!(copied.rows, expected as u64);
    assert!(copied.bytes > 0);
    assert_eq!(
        query_count(&target, "SELECT count(*) FROM orders").await,
        expected
    );
    let digest = verify_range(&source, &target, &table, range).await.unwrap();
    assert_eq!(digest.rows, expected);
    // Every copied row is in the range by the Rust hash too.
    let keys = target
        .query("SELECT DISTINCT customer_id FROM orders", &[])
        .await
        .unwrap();
    for row in keys {
        let key = keyspace_id(&ShardKeyValue::Int(row.get(0)));
        assert!(range.contains(key), "key hash {key} outside {range}");
    }

    // The CHECK constraint makes the shard refuse misrouted rows and accept its own.
    target
        .batch_execute(&table.range_check_constraint("orders_in_range", range))
        .await
        .unwrap();
    let outside = (0..)
        .find(|&key| !range.contains(keyspace_id(&ShardKeyValue::Int(key))))
        .unwrap();
    let inside = (100_000..)
        .find(|&key| range.contains(keyspace_id(&ShardKeyValue::Int(key))))
        .unwrap();
    let error = target
        .execute(
            "INSERT INTO orders VALUES ($1, 1, 'misrouted', 1, now())",
            &[&outside],
        )
        .await
        .unwrap_err();
    assert_eq!(
        sql_state(&error),
        Some(&SqlState::CHECK_VIOLATION),
        "{error}"
    );
    target
        .execute(
            "INSERT INTO orders VALUES ($1, 1, 'routed', 1, now())",
            &[&inside],
        )
        .await
        .unwrap();
    target
        .execute("DELETE FROM orders WHERE customer_id = $1", &[&inside])
        .await
        .unwrap();

    // The verifier catches a missing row ...
    target
        .batch_execute(
            "DELETE FROM orders WHERE (customer_id, order_id) IN \
             (SELECT customer_id, order_id FROM orders LIMIT 1)",
        )
        .await
        .unwrap();
    let error = verify_range(&source, &target, &table, range)
        .await
        .unwrap_err();
    match &error {
        PostgresError::RangeMismatch {
            on_source,
            on_target,
            ..
        } => assert_eq!(on_source.rows, on_target.rows + 1, "{error}"),
        other => panic!("expected a mismatch, got {other}"),
    }
    // ... and a changed row with the right count.
    target.batch_execute("TRUNCATE orders").await.unwrap();
    copy_range(&source, &target, &table, range).await.unwrap();
    verify_range(&source, &target, &table, range).await.unwrap();
    target
        .batch_execute(
            "UPDATE orders SET amount = amount + 0.01 WHERE (customer_id, order_id) IN \
             (SELECT customer_id, order_id FROM orders LIMIT 1)",
        )
        .await
        .unwrap();
    let error = verify_range(&source, &target, &table, range)
        .await
        .unwrap_err();
    match &error {
        PostgresError::RangeMismatch {
            on_source,
            on_target,
            ..
        } => {
            assert_eq!(on_source.rows, on_target.rows, "{error}");
            assert_ne!(on_source.checksum, on_target.checksum, "{error}");
        }
        other => panic!("expected a mismatch, got {other}"),
    }

    // The ranges tile the table: their counts add up to the whole.
    let mut total = 0;
    for quarter in &quarters {
        total += range_digest(&source, "source", &table, *quarter)
            .await
            .unwrap()
            .rows;
    }
    assert_eq!(total, 20000);

    // PostgreSQL accepts the range predicate as a publication row filter.
    source
        .batch_execute(&table.range_publication("orders_q2", range))
        .await
        .unwrap();
}

#[tokio::test]
async fn text_key_range_copy() {
    let sandbox = Sandbox::new();
    let (source, target) = tokio::join!(sandbox.primary("tsource"), sandbox.primary("ttarget"));
    let source = source.connect().await.unwrap();
    let target = target.connect().await.unwrap();
    for client in [&source, &target] {
        client
            .batch_execute("CREATE TABLE users (email varchar(200) PRIMARY KEY, profile jsonb)")
            .await
            .unwrap();
    }
    source
        .batch_execute(
            "INSERT INTO users SELECT 'user' || g || '@example.com', \
               jsonb_build_object('n', g, 'name', 'Jörg ' || g) \
             FROM generate_series(1, 5000) g",
        )
        .await
        .unwrap();
    let table = ShardedTable {
        name: "users".to_owned(),
        key_column: "email".to_owned(),
        key_kind: KeyKind::Text,
    };
    let (low, _) = KeyRange::FULL.split_at(0).unwrap();
    let copied = copy_range(&source, &target, &table, low).await.unwrap();
    let digest = verify_range(&source, &target, &table, low).await.unwrap();
    assert_eq!(digest.rows as u64, copied.rows);
    let emails = target.query("SELECT email FROM users", &[]).await.unwrap();
    assert_eq!(emails.len() as u64, copied.rows);
    for row in emails {
        let email: String = row.get(0);
        assert!(
            keyspace_id(&ShardKeyValue::Text(email.clone())) < 0,
            "{email}"
        );
    }
}

#[tokio::test]
async fn instance_reopens_after_stop() {
    let sandbox = Sandbox::new();
    let spec = sandbox.spec("reopened");
    let mut instance = Instance::create_primary(&sandbox.toolchain, &spec, &sandbox.credentials)
        .await
        .unwrap();
    instance
        .connect()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE kept (id int8); INSERT INTO kept VALUES (1)")
        .await
        .unwrap();
    instance.stop(StopMode::Fast).await;
    assert!(!instance.is_running());
    drop(instance);

    // A new agent process adopts the instance from its folder.
    let mut instance = Instance::open(&sandbox.toolchain, &spec, &sandbox.credentials).unwrap();
    instance.start().await.unwrap();
    let client = instance.connect().await.unwrap();
    assert_eq!(query_count(&client, "SELECT count(*) FROM kept").await, 1);

    let empty = sandbox.spec("never_created");
    let error = Instance::open(&sandbox.toolchain, &empty, &sandbox.credentials).unwrap_err();
    assert!(
        matches!(error, PostgresError::NotAnInstance { .. }),
        "{error}"
    );
}

/// A SIGKILLed postmaster leaves its System V interlock segment; it is kept while anything
/// attaches to it and released once nothing does, which is what the agent does before it
/// removes a replica's directory.
#[tokio::test]
async fn a_killed_instances_segment_is_released_only_once_nothing_attaches() {
    let sandbox = Sandbox::new();
    let mut instance = sandbox.primary("killed").await;
    let data_dir = instance.data_dir();
    let pid_file = std::fs::read_to_string(data_dir.join("postmaster.pid")).unwrap();
    let id: libc::c_int = pid_file
        .lines()
        .nth(6)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let exists = |id| {
        let mut info: libc::shmid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: IPC_STAT only fills `info`.
        unsafe { libc::shmctl(id, libc::IPC_STAT, &mut info) == 0 }
    };
    assert!(exists(id), "the running server has no segment {id}");
    assert!(
        !release_orphaned_segment(&data_dir),
        "a running server's segment was removed"
    );

    instance.kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !release_orphaned_segment(&data_dir) {
        assert!(
            std::time::Instant::now() < deadline,
            "segment {id} never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!exists(id), "segment {id} outlived its release");
}

impl Sandbox {
    /// A source primary with `wal_level = logical` and a target primary, `<prefix>source` and
    /// `<prefix>target`, each with the `orders` table, and a session on each.
    async fn orders_pair(&self, prefix: &str) -> (Instance, Instance, Client, Client) {
        let mut logical = self.spec(&format!("{prefix}source"));
        logical.settings.wal_level = WalLevel::Logical;
        let target_name = format!("{prefix}target");
        let (source, target) = tokio::join!(
            Instance::create_primary(&self.toolchain, &logical, &self.credentials),
            self.primary(&target_name)
        );
        let source = source.unwrap();
        let source_client = source.connect().await.unwrap();
        let target_client = target.connect().await.unwrap();
        for client in [&source_client, &target_client] {
            client.batch_execute(ORDERS).await.unwrap();
        }
        (source, target, source_client, target_client)
    }
}

/// Publishes the upper half of the key space of `orders` on the source as `name` and
/// subscribes the target to it (copying what is there, then streaming); returns the table
/// and that range.
async fn subscribe_high_half(
    source: &Instance,
    target: &Instance,
    source_client: &Client,
    name: &str,
) -> (ShardedTable, KeyRange) {
    let table = ShardedTable {
        name: "orders".to_owned(),
        key_column: "customer_id".to_owned(),
        key_kind: KeyKind::Integer,
    };
    let (_, range) = KeyRange::FULL.split_at(i64::MIN / 2).unwrap();
    source_client
        .batch_execute(&table.range_publication(name, range))
        .await
        .unwrap();
    target
        .subscribe(name, &source.upstream(), name, true)
        .await
        .unwrap();
    (table, range)
}

/// Inserts orders `from..=to` of `customers` customers.
fn orders_rows(from: i32, to: i32, customers: i32) -> String {
    format!(
        "INSERT INTO orders SELECT g % {customers}, g, md5(g::text), g, now() \
         FROM generate_series({from}, {to}) g"
    )
}

/// Whether `range` on `client` reaches `expected` within 10 s.
async fn catches_up(
    client: &Client,
    table: &ShardedTable,
    range: KeyRange,
    expected: &shardplane::agent::postgres::RangeDigest,
) -> bool {
    for _ in 0..500 {
        if &range_digest(client, "target", table, range).await.unwrap() == expected {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn row_filtered_subscription_catches_up() {
    let sandbox = Sandbox::new();
    let (source, target, source_client, target_client) = sandbox.orders_pair("l").await;
    let insert = |from: i32, to: i32| orders_rows(from, to, 700);
    source_client.batch_execute(&insert(1, 3000)).await.unwrap();
    let (table, range) = subscribe_high_half(&source, &target, &source_client, "split_high").await;
    // Writes after the subscription started: inserts, an update, a delete.
    source_client
        .batch_execute(&insert(3001, 4000))
        .await
        .unwrap();
    source_client
        .batch_execute(
            "UPDATE orders SET note = 'changed' WHERE order_id % 10 = 0; \
             DELETE FROM orders WHERE order_id % 7 = 0",
        )
        .await
        .unwrap();
    let expected = range_digest(&source_client, "source", &table, range)
        .await
        .unwrap();
    assert!(
        catches_up(&target_client, &table, range, &expected).await,
        "the target did not catch up with {expected}"
    );
    // Only the range's rows arrived.
    let total = query_count(&target_client, "SELECT count(*) FROM orders").await;
    assert_eq!(total, expected.rows);
    verify_range(&source_client, &target_client, &table, range)
        .await
        .unwrap();
    target.unsubscribe("split_high").await.unwrap();
}

/// Why `Instance::promote` takes the new quorum: a standby promoted by plain `pg_promote()`
/// keeps the quorum it was copied with, and its first write waits forever. The same property
/// makes a primary cut off from its quorum unable to acknowledge a commit.
#[tokio::test]
async fn promotion_with_the_old_quorum_blocks_writes() {
    let sandbox = Sandbox::new();
    let mut primary = sandbox.primary("q0").await;
    primary
        .set_sync_quorum(&SyncQuorum::any(1, ["q1"]))
        .await
        .unwrap();
    let standby = sandbox.standby("q1", &primary).await;
    let client = primary.connect().await.unwrap();
    client
        .batch_execute("CREATE TABLE t (id int8)")
        .await
        .unwrap();
    primary.kill();

    let promoted = standby.connect().await.unwrap();
    promoted
        .batch_execute("SELECT pg_promote(true, 60)")
        .await
        .unwrap();
    let write = promoted.execute("INSERT INTO t VALUES (1)", &[]);
    tokio::pin!(write);
    assert!(
        tokio::time::timeout(Duration::from_millis(1000), &mut write)
            .await
            .is_err(),
        "the write on a primary with a quorum of absent standbys was acknowledged"
    );
    // Setting the quorum to the standbys it really has releases the waiting commit.
    standby.set_sync_quorum(&SyncQuorum::none()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .expect("the waiting commit was not released")
        .unwrap();
}

/// A split's comparison prepared while the source serves (`agent::postgres::verify`): both
/// sides checksummed at held snapshots with their touched keys logged; after more writes
/// (which the subscription carries), the fence, and the catch-up, only the touched keys are
/// re-read, and the result equals a full scan. A row the target gets behind the
/// subscription's back after the snapshots is caught; the fence spares the snapshot's
/// session and ends the others.
#[tokio::test]
async fn a_comparison_prepared_before_the_fence_rereads_only_touched_keys() {
    let sandbox = Sandbox::new();
    let (source, target, source_client, target_client) = sandbox.orders_pair("p").await;
    let insert = |from: i32, to: i32| orders_rows(from, to, 900);
    source_client.batch_execute(&insert(1, 5000)).await.unwrap();
    let (table, range) =
        subscribe_high_half(&source, &target, &source_client, "prepared_high").await;
    // Writes keep coming while the comparison is prepared: the target lags the source when
    // the snapshots are taken.
    source_client
        .batch_execute(&insert(5001, 6000))
        .await
        .unwrap();
    track_changes(&source_client, "source", &table, false)
        .await
        .unwrap();
    track_changes(&target_client, "target", &table, true)
        .await
        .unwrap();
    let source_then = HeldSnapshot::take(source.connect().await.unwrap(), "source")
        .await
        .unwrap();
    let target_then = HeldSnapshot::take(target.connect().await.unwrap(), "target")
        .await
        .unwrap();
    let source_baseline = source_then.digest(&table, range).await.unwrap();
    let target_baseline = target_then.digest(&table, range).await.unwrap();
    source_client
        .batch_execute(&format!(
            "{}; UPDATE orders SET note = 'changed' WHERE order_id % 10 = 0 AND order_id < 300; \
             DELETE FROM orders WHERE order_id % 7 = 0 AND order_id < 300",
            insert(6001, 6100)
        ))
        .await
        .unwrap();

    // The fence spares the snapshot's session and ends any other.
    let fenced = source.connect().await.unwrap();
    let bystander = source.connect().await.unwrap();
    source
        .fence_writes_on(&fenced, &[source_then.pid()])
        .await
        .unwrap();
    assert!(bystander.simple_query("SELECT 1").await.is_err());
    let expected = range_digest(&fenced, "source", &table, range)
        .await
        .unwrap();
    assert!(
        catches_up(&target_client, &table, range, &expected).await,
        "the target did not catch up with {expected}"
    );

    let touched = |extra: Vec<String>| async {
        let mut keys = source_then.touched_since(&fenced).await.unwrap();
        keys.extend(target_then.touched_since(&target_client).await.unwrap());
        keys.extend(extra);
        keys.sort_unstable();
        keys.dedup();
        keys
    };
    let keys = touched(Vec::new()).await;
    // Customers 1..=899 exist; the writes since the snapshots touched at most those of
    // order_id 6001..=6100 and < 300, and those the target applied after its snapshot.
    assert!(!keys.is_empty() && keys.len() < 900, "{} keys", keys.len());
    let compare = |keys: Vec<String>| {
        let (source_then, target_then) = (&source_then, &target_then);
        let (source_baseline, target_baseline) = (&source_baseline, &target_baseline);
        let (fenced, target_client, table) = (&fenced, &target_client, &table);
        async move {
            verify_range_since(
                Side {
                    now: fenced,
                    then: source_then,
                    baseline: source_baseline,
                },
                Side {
                    now: target_client,
                    then: target_then,
                    baseline: target_baseline,
                },
                table,
                range,
                &keys,
            )
            .await
        }
    };
    assert_eq!(compare(keys).await.unwrap(), expected);

    // A row the subscription did not bring, written after the snapshots: logged, caught.
    let stray = (1..)
        .find(|k: &i64| range.contains(keyspace_id(&ShardKeyValue::Int(*k))))
        .unwrap();
    target_client
        .execute(
            "INSERT INTO orders VALUES ($1, 999999, 'stray', 1, now())",
            &[&stray],
        )
        .await
        .unwrap();
    let keys = touched(Vec::new()).await;
    assert!(keys.contains(&stray.to_string()));
    let error = compare(keys).await.unwrap_err();
    assert!(
        matches!(error, PostgresError::RangeMismatch { .. }),
        "{error}"
    );
    // The snapshots' transactions hold the table's lock that removing the trigger needs.
    drop((source_then, target_then));
    let mut removed = false;
    for _ in 0..100 {
        if untrack_changes(&target_client, "target", &table)
            .await
            .is_ok()
        {
            removed = true;
            break;
        }
    }
    assert!(removed, "the log of touched keys could not be removed");
    assert_eq!(
        query_count(
            &target_client,
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'shardplane_touched'"
        )
        .await,
        0
    );
    target.unsubscribe("prepared_high").await.unwrap();
}
