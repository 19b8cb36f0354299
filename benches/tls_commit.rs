//! The cost of TLS on a quorum commit (issue #14, `tls_commit_overhead_ms`): two replica sets
//! of real PostgreSQL instances on this machine's loopback, each a primary and one
//! synchronous standby (`ANY 1`), the same but for TLS — one plain (the standby streams
//! without TLS, the client connects without it), one as the agent runs them (the node's
//! certificate served, the standby streaming with `sslmode=verify-full`, the client checking
//! the server as the routing library does). A client commits one-row INSERTs one after
//! another on each primary, in alternating rounds, and the benchmark reports each set's
//! commit latency and the difference of the medians.
//!
//! Run with `cargo bench --bench tls_commit` (`SHARDPLANE_BENCH_COMMITS` per round, default
//! 2,000; 4 rounds each). Exits non-zero if the TLS set's standby or client does not actually
//! use TLS (or the plain set's does).

mod support;

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use shardplane::agent::postgres::{
    Credentials, Instance, InstanceSettings, InstanceSpec, NodeTlsPem, PeerTls, ServerTls,
    SyncQuorum, Toolchain, free_loopback_port,
};
use shardplane::tls::{Authority, NodeIdentity};
use tempfile::TempDir;
use tokio_postgres::Client;

const ROUNDS: usize = 4;

/// A primary and its standby (kept running while the set lives) and a client's session.
struct ReplicaSet {
    name: &'static str,
    _primary: Instance,
    _standby: Instance,
    client: Client,
}

/// A folder the PostgreSQL user owns, the programs, and the credentials.
struct Sandbox {
    dir: TempDir,
    toolchain: Toolchain,
    superuser_password: String,
    credentials: Credentials,
}

impl Sandbox {
    fn spec(&self, name: &str, tls: Option<&ServerTls>) -> InstanceSpec {
        InstanceSpec {
            name: name.to_owned(),
            dir: self.dir.path().join(name),
            port: free_loopback_port().expect("a free port"),
            settings: InstanceSettings {
                fsync: false,
                tls: tls.cloned(),
                ..InstanceSettings::default()
            },
        }
    }

    /// A primary and a synchronous standby, with TLS when `tls` names the node's files and
    /// their contents.
    async fn replica_set(
        &self,
        name: &'static str,
        tls: Option<(&ServerTls, &NodeTlsPem<'_>)>,
    ) -> ReplicaSet {
        let credentials = match tls {
            Some((files, node)) => self
                .credentials
                .clone()
                .with_tls(PeerTls::new(files.clone(), node).unwrap()),
            None => self.credentials.clone(),
        };
        let files = tls.map(|(files, _)| files);
        let primary = Instance::create_primary(
            &self.toolchain,
            &self.spec(&format!("{name}_p"), files),
            &credentials,
        )
        .await
        .unwrap_or_else(|error| panic!("cannot create {name}'s primary: {error}"));
        let standby_name = format!("{name}_s");
        let standby = Instance::create_standby(
            &self.toolchain,
            &self.spec(&standby_name, files),
            &credentials,
            &primary.upstream(),
        )
        .await
        .unwrap_or_else(|error| panic!("cannot create {name}'s standby: {error}"));
        primary
            .set_sync_quorum(&SyncQuorum::any(1, [standby_name]))
            .await
            .unwrap();
        let client = self
            .client(&primary, tls.map(|(_, node)| node.authority))
            .await;
        client
            .batch_execute("CREATE TABLE commits (id int8 PRIMARY KEY, note text)")
            .await
            .unwrap();
        ReplicaSet {
            name,
            _primary: primary,
            _standby: standby,
            client,
        }
    }

    /// A session on `primary` from a client on this host: over TLS checking the server
    /// against `authority` (as the routing library does), or plain.
    async fn client(&self, primary: &Instance, authority: Option<&str>) -> Client {
        let upstream = primary.upstream();
        let mut config = tokio_postgres::Config::new();
        config
            .host(&upstream.host)
            .port(upstream.port)
            .user("postgres")
            .password(&self.superuser_password)
            .dbname("postgres");
        match authority {
            Some(authority) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let connector = shardplane::tls::postgres_connector(authority).unwrap();
                let (client, connection) = config.connect(connector).await.unwrap();
                tokio::spawn(connection);
                client
            }
            None => {
                let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(connection);
                client
            }
        }
    }
}

/// Whether the standby streams over TLS and whether this client's session uses it, as the
/// primary sees them.
async fn uses_tls(set: &ReplicaSet) -> (bool, bool) {
    let row = set
        .client
        .query_one(
            "SELECT bool_and(s.ssl) FILTER (WHERE r.pid IS NOT NULL), \
                    bool_and(s.ssl) FILTER (WHERE s.pid = pg_backend_pid()) \
             FROM pg_stat_ssl s LEFT JOIN pg_stat_replication r USING (pid) \
             WHERE r.pid IS NOT NULL OR s.pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    (
        row.get::<_, Option<bool>>(0).unwrap_or(false),
        row.get::<_, Option<bool>>(1).unwrap_or(false),
    )
}

/// `commits` one-row commits one after another from `first`; the latency of each.
async fn commit_round(set: &ReplicaSet, first: i64, commits: usize) -> Vec<Duration> {
    let insert = set
        .client
        .prepare("INSERT INTO commits (id, note) VALUES ($1, 'a committed row')")
        .await
        .unwrap();
    let mut latencies = Vec::with_capacity(commits);
    for id in first..first + commits as i64 {
        let started = Instant::now();
        set.client.execute(&insert, &[&id]).await.unwrap();
        latencies.push(started.elapsed());
    }
    latencies
}

fn millis(samples: &[Duration]) -> Vec<f64> {
    samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect()
}

fn main() -> ExitCode {
    let commits: usize = std::env::var("SHARDPLANE_BENCH_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let toolchain = Toolchain::detect().expect("PostgreSQL is installed");
    let dir = tempfile::Builder::new()
        .prefix("shardplane-bench-")
        .tempdir()
        .expect("a temporary folder");
    toolchain.hand_over(dir.path()).unwrap();
    let salt = std::process::id();
    let superuser_password = format!("bench-su-{salt}");
    let sandbox = Sandbox {
        toolchain,
        credentials: Credentials::new(superuser_password.clone(), format!("bench-repl-{salt}")),
        superuser_password,
        dir,
    };

    // The node's certificate for 127.0.0.1, as the operator issues it and the agent
    // installs it.
    let now = SystemTime::now();
    let authority = Authority::generate("bench", "tls", now).unwrap();
    let identity = NodeIdentity {
        namespace: "bench".into(),
        cluster: "tls".into(),
        node: "n1".into(),
    };
    let issued = authority
        .issue(&identity, "127.0.0.1", now, Duration::from_secs(3600))
        .unwrap();
    let tls_dir = sandbox.dir.path().join("tls");
    std::fs::create_dir(&tls_dir).unwrap();
    let files = ServerTls::in_dir(&tls_dir);
    for (path, text, mode) in [
        (&files.certificate_file, &issued.certificate_pem, 0o644),
        (&files.key_file, &issued.key_pem, 0o600),
        (&files.authority_file, &issued.authority_pem, 0o644),
    ] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        sandbox.toolchain.hand_over(path).unwrap();
    }
    sandbox.toolchain.hand_over(&tls_dir).unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let plain = sandbox.replica_set("plain", None).await;
        let node = NodeTlsPem {
            certificate: &issued.certificate_pem,
            key: &issued.key_pem,
            authority: &issued.authority_pem,
        };
        let tls = sandbox.replica_set("tls", Some((&files, &node))).await;
        let (plain_standby, plain_client) = uses_tls(&plain).await;
        let (tls_standby, tls_client) = uses_tls(&tls).await;
        println!(
            "TLS in use — plain set: standby {plain_standby}, client {plain_client}; TLS set: standby {tls_standby}, client {tls_client}"
        );
        if plain_standby || plain_client || !tls_standby || !tls_client {
            eprintln!("FAIL: the sets do not use TLS as they should");
            return ExitCode::FAILURE;
        }
        let sets = [plain, tls];
        let mut samples: [Vec<Duration>; 2] = Default::default();
        // A warm-up round each, not counted.
        for set in sets.iter() {
            commit_round(set, 1_000_000_000, 200).await;
        }
        for round in 0..ROUNDS {
            for (i, set) in sets.iter().enumerate() {
                let first = (round * commits) as i64;
                samples[i].extend(commit_round(set, first, commits).await);
            }
        }
        let mut medians = [0.0; 2];
        for (i, set) in sets.iter().enumerate() {
            let ms = millis(&samples[i]);
            medians[i] = support::percentile(&ms, 0.5);
            println!(
                "quorum commit, {}: {} ({} commits)",
                set.name,
                support::summary(&ms),
                ms.len()
            );
        }
        let overhead = medians[1] - medians[0];
        println!(
            "tls_commit_overhead_ms: {overhead:.3} (median {:.3} ms with TLS, {:.3} ms without, same run)",
            medians[1], medians[0]
        );
        println!("machine: {}", support::machine());
        ExitCode::SUCCESS
    })
}
