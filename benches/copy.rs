//! Data-plane benchmark against real PostgreSQL instances (as the `postgres` user when run
//! as root, `fsync=off`, loopback). Run with `cargo bench --bench copy`.
//!
//! 1. Range copy vs plain COPY: 1,000,000 rows loaded into a source instance, then copied to
//!    a target instance (a) by plain `COPY t TO STDOUT | COPY t FROM STDIN` in text and in
//!    binary format and (b) by `copy_range` of the two halves of the key space (every row
//!    passes PostgreSQL's hash filter), alternating, best of three each; then `verify_range`
//!    of both halves, and `fence_writes`/`unfence_writes` on the loaded source.
//! 2. Promotion, the data-plane half of a failover: kill -9 the primary's postmaster, promote
//!    the synchronous standby with the new quorum, re-point the other standby, first
//!    acknowledged write; 12 rounds, each rewinding the old primary to follow the new one.
//!
//! Exits non-zero if the range copy is slower than 0.7× plain COPY or promotion p99 > 3 s.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use shardplane::agent::postgres::{
    Credentials, Instance, InstanceSettings, InstanceSpec, KeyKind, ShardedTable, SyncQuorum,
    Toolchain, copy_range, free_loopback_port, pipe_copy, verify_range,
};
use shardplane::plan::KeyRange;
use tempfile::TempDir;
use tokio_postgres::Client;

const ROWS: i64 = 1_000_000;
const COPY_ROUNDS: usize = 3;
const PROMOTE_ROUNDS: usize = 12;
const TABLE: &str = "CREATE TABLE orders (id int8 PRIMARY KEY, customer_id int8 NOT NULL, \
     note text, amount numeric(12,2), placed timestamptz)";

struct Sandbox {
    dir: TempDir,
    toolchain: Toolchain,
    credentials: Credentials,
}

impl Sandbox {
    fn spec(&self, name: &str) -> InstanceSpec {
        InstanceSpec {
            name: name.to_owned(),
            dir: self.dir.path().join(name),
            port: free_loopback_port().expect("a free port"),
            settings: InstanceSettings {
                fsync: false,
                ..InstanceSettings::default()
            },
        }
    }

    async fn primary(&self, name: &str) -> Instance {
        Instance::create_primary(&self.toolchain, &self.spec(name), &self.credentials)
            .await
            .unwrap_or_else(|error| panic!("cannot create {name}: {error}"))
    }

    async fn standby(&self, name: &str, primary: &Instance) -> Instance {
        let spec = self.spec(name);
        Instance::create_standby(
            &self.toolchain,
            &spec,
            &self.credentials,
            &primary.upstream(),
        )
        .await
        .unwrap_or_else(|error| panic!("cannot create {name}: {error}"))
    }
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// The value at quantile `q` of sorted samples (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

async fn truncate(target: &Client) {
    target
        .batch_execute("TRUNCATE orders")
        .await
        .expect("truncate the target");
    target
        .batch_execute("CHECKPOINT")
        .await
        .expect("checkpoint the target");
}

async fn copy_benchmark(sandbox: &Sandbox) -> f64 {
    let (source_instance, target_instance) =
        tokio::join!(sandbox.primary("source"), sandbox.primary("target"));
    let source = source_instance
        .connect()
        .await
        .expect("connect to the source");
    let target = target_instance
        .connect()
        .await
        .expect("connect to the target");
    for client in [&source, &target] {
        client.batch_execute(TABLE).await.expect("create the table");
    }
    let loading = Instant::now();
    source
        .batch_execute(&format!(
            "INSERT INTO orders SELECT g, g % 100000, md5(g::text), g * 0.25, \
               '2026-01-01'::timestamptz + g * interval '1 second' \
             FROM generate_series(1, {ROWS}) g"
        ))
        .await
        .expect("load the source");
    for statement in ["VACUUM ANALYZE orders", "CHECKPOINT"] {
        source.batch_execute(statement).await.expect(statement);
    }
    let size: String = source
        .query_one(
            "SELECT pg_size_pretty(pg_total_relation_size('orders'))",
            &[],
        )
        .await
        .expect("table size")
        .get(0);
    println!(
        "loaded {ROWS} rows ({size} with its index) in {:.2} s",
        seconds(loading.elapsed())
    );

    let table = ShardedTable {
        name: "orders".to_owned(),
        key_column: "id".to_owned(),
        key_kind: KeyKind::Integer,
    };
    let (low, high) = KeyRange::FULL.split_at(0).expect("split the key space");
    let mut plain_text = Vec::new();
    let mut plain_binary = Vec::new();
    let mut ranged = Vec::new();
    for round in 1..=COPY_ROUNDS {
        truncate(&target).await;
        let started = Instant::now();
        let stats = pipe_copy(
            &source,
            "COPY orders TO STDOUT",
            &target,
            "COPY orders FROM STDIN",
        )
        .await
        .expect("plain text copy");
        plain_text.push(started.elapsed());
        assert_eq!(stats.rows, ROWS as u64);

        truncate(&target).await;
        let started = Instant::now();
        let stats = pipe_copy(
            &source,
            "COPY orders TO STDOUT (FORMAT binary)",
            &target,
            "COPY orders FROM STDIN (FORMAT binary)",
        )
        .await
        .expect("plain binary copy");
        plain_binary.push(started.elapsed());
        assert_eq!(stats.rows, ROWS as u64);

        truncate(&target).await;
        let started = Instant::now();
        let mut rows = 0;
        for half in [low, high] {
            rows += copy_range(&source, &target, &table, half)
                .await
                .expect("range copy")
                .rows;
        }
        ranged.push(started.elapsed());
        assert_eq!(rows, ROWS as u64);
        println!(
            "round {round}: plain text {:.2} s, plain binary {:.2} s, range copy (2 halves) {:.2} s",
            seconds(plain_text[round - 1]),
            seconds(plain_binary[round - 1]),
            seconds(ranged[round - 1])
        );
    }
    let best = |samples: &[Duration]| samples.iter().min().copied().unwrap_or_default();
    let started = Instant::now();
    let mut verified = 0;
    for half in [low, high] {
        verified += verify_range(&source, &target, &table, half)
            .await
            .expect("verification")
            .rows;
    }
    println!(
        "verify_range of both halves ({verified} rows): {:.2} s",
        seconds(started.elapsed())
    );
    // The handover of a split fences the source: time the fence on the loaded instance,
    // with the benchmark's own session open (it is terminated).
    let started = Instant::now();
    source_instance.fence_writes().await.expect("fence");
    let fenced = started.elapsed();
    let started = Instant::now();
    source_instance
        .unfence_writes(&SyncQuorum::none())
        .await
        .expect("unfence");
    println!(
        "fence_writes {:.3} s, unfence_writes {:.3} s",
        seconds(fenced),
        seconds(started.elapsed())
    );
    let plain = best(&plain_text).min(best(&plain_binary));
    let ratio = seconds(plain) / seconds(best(&ranged));
    println!(
        "split_copy_vs_plain_copy: {ratio:.2} (range copy {:.2} s vs best plain COPY {:.2} s; \
         plain text {:.2} s, plain binary {:.2} s; best of {COPY_ROUNDS})",
        seconds(best(&ranged)),
        seconds(plain),
        seconds(best(&plain_text)),
        seconds(best(&plain_binary)),
    );
    ratio
}

async fn promote_benchmark(sandbox: &Sandbox) -> Duration {
    let primary = sandbox.primary("r0").await;
    let (a, b) = tokio::join!(
        sandbox.standby("r1", &primary),
        sandbox.standby("r2", &primary)
    );
    let mut primary = primary;
    let (mut a, mut b) = (a, b);
    primary
        .set_sync_quorum(&SyncQuorum::any(1, [a.name(), b.name()]))
        .await
        .expect("set the quorum");
    primary
        .connect()
        .await
        .expect("connect")
        .batch_execute("CREATE TABLE writes (id serial PRIMARY KEY, at timestamptz DEFAULT now())")
        .await
        .expect("create the table");
    let mut samples = Vec::new();
    for round in 1..=PROMOTE_ROUNDS {
        primary
            .connect()
            .await
            .expect("connect")
            .batch_execute("INSERT INTO writes DEFAULT VALUES")
            .await
            .expect("write before the failure");
        primary.kill();
        let started = Instant::now();
        a.promote(&SyncQuorum::any(1, [b.name(), primary.name()]))
            .await
            .expect("promote");
        let promoted = started.elapsed();
        a.create_replication_slot(b.name()).await.expect("slot");
        b.follow(&a.upstream()).await.expect("re-point");
        a.connect()
            .await
            .expect("connect to the new primary")
            .batch_execute("INSERT INTO writes DEFAULT VALUES")
            .await
            .expect("first write");
        let elapsed = started.elapsed();
        samples.push(elapsed);

        let rewinding = Instant::now();
        a.create_replication_slot(primary.name())
            .await
            .expect("slot");
        primary
            .rewind_and_follow(&a.upstream())
            .await
            .expect("rewind the old primary");
        println!(
            "round {round}: promote + re-point + first write {:.3} s (promotion {:.3} s; \
             then rewind {:.2} s)",
            seconds(elapsed),
            seconds(promoted),
            seconds(rewinding.elapsed())
        );
        // The new primary is a; its standbys are b and the rewound old primary.
        std::mem::swap(&mut primary, &mut a);
        std::mem::swap(&mut a, &mut b);
    }
    samples.sort();
    let p50 = quantile(&samples, 0.5);
    let p99 = quantile(&samples, 0.99);
    println!(
        "dataplane_promote_s: p50 {:.3} s, p99 {:.3} s over {PROMOTE_ROUNDS} rounds",
        seconds(p50),
        seconds(p99)
    );
    p99
}

fn main() -> ExitCode {
    let toolchain = Toolchain::detect().expect("PostgreSQL is installed");
    let dir = tempfile::Builder::new()
        .prefix("shardplane-bench-")
        .tempdir()
        .expect("a temporary folder");
    toolchain
        .hand_over(dir.path())
        .expect("give the folder to the PostgreSQL user");
    let salt = std::process::id();
    let sandbox = Sandbox {
        dir,
        toolchain,
        credentials: Credentials::new(format!("bench-su-{salt}"), format!("bench-repl-{salt}")),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (ratio, p99) = runtime.block_on(async {
        let ratio = copy_benchmark(&sandbox).await;
        let p99 = promote_benchmark(&sandbox).await;
        (ratio, p99)
    });
    let mut ok = true;
    if ratio < 0.7 {
        eprintln!("FAIL: range copy at {ratio:.2}× plain COPY, below 0.7×");
        ok = false;
    }
    if p99 > Duration::from_secs(3) {
        eprintln!("FAIL: promotion p99 {:.3} s above 3 s", seconds(p99));
        ok = false;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
