//! One PostgreSQL instance — one shard replica — with its own folder and loopback port:
//! creation (`initdb` for a new primary, `pg_basebackup` for a standby), start, stop, crash,
//! and connections. The postmaster is this process's child; dropping the [`Instance`] shuts
//! it down immediately, and it is killed if this process (or the thread that started it)
//! dies.
//!
//! Folder layout: `<dir>/data` (the data directory), `<dir>/pgpass` (libpq password file
//! used by replication, `pg_basebackup` and `pg_rewind`), `<dir>/postgres.log`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};

use crate::protocol::Endpoint;

use super::settings::{
    Access, CATCH_UP_RECEIVER_TIMEOUT, Credentials, InstanceSettings, PARAMETERS_FILE,
    REPLICATION_USER, SUPERUSER,
};
use super::sql::{check_replica_name, quote_conninfo, quote_ident, quote_literal};
use super::{PostgresError, Toolchain};

/// How long a start waits for the instance to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a shutdown waits before it kills the postmaster.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How many lines of the server log an error quotes.
const TAIL_LINES: usize = 30;

/// What an instance is created from.
#[derive(Clone, Debug)]
pub struct InstanceSpec {
    /// The replica's name: its `application_name` towards its primary, its replication slot's
    /// name there, and its name in quorums. `[a-z0-9_]{1,63}`.
    pub name: String,
    /// The instance's own folder; created if missing, and must be empty.
    pub dir: PathBuf,
    /// The loopback port it listens on.
    pub port: u16,
    /// Its settings.
    pub settings: InstanceSettings,
}

/// Where a standby streams from: a primary (or cascading standby) on some node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl From<Endpoint> for Upstream {
    fn from(endpoint: Endpoint) -> Self {
        Upstream {
            host: endpoint.host,
            port: endpoint.port,
        }
    }
}

/// How to shut an instance down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Roll back open transactions and shut down cleanly (SIGINT, "fast").
    Fast,
    /// Stop at once without a checkpoint; crash recovery runs at the next start (SIGQUIT).
    Immediate,
}

/// A PostgreSQL instance managed by this process.
#[derive(Debug)]
pub struct Instance {
    name: String,
    dir: PathBuf,
    port: u16,
    toolchain: Toolchain,
    credentials: Credentials,
    /// What its files say (rewritten where a program copied another instance's).
    settings: InstanceSettings,
    postmaster: Option<Child>,
}

/// Size of a WAL segment, in MB (initdb's `--wal-segsize`; PostgreSQL's default is 16). A
/// standby that starts streaming — re-pointed after a failover, or following its upstream's
/// promotion onto a new timeline — always re-receives the segment its position is in from
/// that segment's start; across a slow WAN that re-stream is what a failover waits for (the
/// new primary's quorum needs the standby), so a small segment bounds it. 1 MB is the
/// smallest PostgreSQL allows; standbys copied with `pg_basebackup` inherit it.
const WAL_SEGMENT_MB: u32 = 1;

impl Instance {
    /// Creates a new primary: `initdb`, the settings, then starts it and creates the
    /// replication role. Returns the running instance.
    pub async fn create_primary(
        toolchain: &Toolchain,
        spec: &InstanceSpec,
        credentials: &Credentials,
    ) -> Result<Self, PostgresError> {
        let mut instance = Instance::prepare(toolchain, spec, credentials)?;
        let password_file = instance.dir.join("initdb-password");
        instance.write_private(&password_file, credentials.superuser_password())?;
        let mut initdb = toolchain.command("initdb", &instance.dir);
        initdb
            .arg("-D")
            .arg(instance.data_dir())
            .args(["--username", SUPERUSER, "--encoding=UTF8", "--locale=C"])
            .args(["--auth-local=peer", "--auth-host=scram-sha-256"])
            .arg(format!("--wal-segsize={WAL_SEGMENT_MB}"))
            .arg(format!("--pwfile={}", password_file.display()));
        if !spec.settings.fsync {
            initdb.arg("--no-sync");
        }
        let result = instance.run("initdb", &mut initdb).await;
        let _ = std::fs::remove_file(&password_file);
        result?;
        instance.write_settings()?;
        instance.start().await?;
        let client = instance.connect().await?;
        let create_role = format!(
            "CREATE ROLE {} WITH LOGIN REPLICATION PASSWORD {}",
            quote_ident(REPLICATION_USER),
            quote_literal(&credentials.replication_verifier())
        );
        client
            .batch_execute(&create_role)
            .await
            .map_err(|source| instance.sql_error("creating the replication role", source))?;
        Ok(instance)
    }

    /// Creates a standby of `upstream`: a physical replication slot named after the replica
    /// on the upstream (kept if it exists), `pg_basebackup` through it, the standby
    /// configuration, then starts it. Returns the running instance.
    pub async fn create_standby(
        toolchain: &Toolchain,
        spec: &InstanceSpec,
        credentials: &Credentials,
        upstream: &Upstream,
    ) -> Result<Self, PostgresError> {
        let mut instance = Instance::prepare(toolchain, spec, credentials)?;
        // The slot exists before the backup starts, so the upstream keeps every WAL segment
        // the backup and the standby need (`pg_basebackup -C` creates it only after the
        // backup's start point, and a concurrent checkpoint may remove that segment).
        let upstream_error = |what, source| PostgresError::Sql {
            instance: format!(
                "{}:{} (upstream of {})",
                upstream.host, upstream.port, spec.name
            ),
            what,
            source,
        };
        let client = connect(upstream, credentials)
            .await
            .map_err(|source| upstream_error("connecting", source))?;
        ensure_replication_slot(&client, &spec.name)
            .await
            .map_err(|source| upstream_error("creating a replication slot", source))?;
        let mut backup = toolchain.command("pg_basebackup", &instance.dir);
        backup
            .arg("-D")
            .arg(instance.data_dir())
            .args(["-h", &upstream.host, "-p", &upstream.port.to_string()])
            .args(["-U", REPLICATION_USER, "--no-password"])
            .args(["-X", "stream", "--checkpoint=fast", "-S", &spec.name])
            .env("PGPASSFILE", instance.pgpass_path());
        if let Some(tls) = credentials.tls() {
            backup.env("PGSSLMODE", "verify-full");
            for (name, file) in tls.libpq_settings() {
                backup.env(format!("PG{}", name.to_uppercase()), file);
            }
        }
        if !spec.settings.fsync {
            backup.arg("--no-sync");
        }
        instance.run("pg_basebackup", &mut backup).await?;
        instance.write_settings()?;
        instance.configure_standby(upstream)?;
        instance.start().await?;
        Ok(instance)
    }

    /// Adopts an instance created earlier (by this or a previous agent process) in
    /// `spec.dir`, with `spec`'s port and settings (rewritten, so a changed setting applies
    /// at the next start). The instance is not started.
    pub fn open(
        toolchain: &Toolchain,
        spec: &InstanceSpec,
        credentials: &Credentials,
    ) -> Result<Self, PostgresError> {
        let instance = Instance::prepare(toolchain, spec, credentials)?;
        let version = instance.data_dir().join("PG_VERSION");
        if !version.is_file() {
            return Err(PostgresError::NotAnInstance {
                dir: instance.data_dir(),
            });
        }
        instance.write_settings()?;
        Ok(instance)
    }

    /// A handle on an instance that another value owns (the same folder and port), for
    /// fencing it from another task while its owner is busy: it connects and runs SQL like
    /// the owner, but never starts, stops or kills the server (dropping it leaves the server
    /// running), and making it writes nothing.
    pub fn handle(toolchain: &Toolchain, spec: &InstanceSpec, credentials: &Credentials) -> Self {
        Instance {
            name: spec.name.clone(),
            dir: spec.dir.clone(),
            port: spec.port,
            toolchain: toolchain.clone(),
            credentials: credentials.clone(),
            settings: spec.settings.clone(),
            postmaster: None,
        }
    }

    /// The folder and password file of an instance, created if missing.
    fn prepare(
        toolchain: &Toolchain,
        spec: &InstanceSpec,
        credentials: &Credentials,
    ) -> Result<Self, PostgresError> {
        check_replica_name(&spec.name)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&spec.dir)
            .map_err(|source| PostgresError::Io {
                path: spec.dir.clone(),
                source,
            })?;
        toolchain.hand_over(&spec.dir)?;
        let instance = Self::handle(toolchain, spec, credentials);
        instance.write_private(&instance.pgpass_path(), &credentials.pgpass())?;
        Ok(instance)
    }

    /// Writes `shardplane.conf`, includes it from `postgresql.conf`, and writes `pg_hba.conf`:
    /// this node's, also where `pg_basebackup` or `pg_rewind` copied another node's.
    pub(super) fn write_settings(&self) -> Result<(), PostgresError> {
        let data = self.data_dir();
        self.write_private(&data.join("shardplane.conf"), &self.settings.render())?;
        self.write_access(&self.settings.access)?;
        self.ensure_included("include 'shardplane.conf'")?;
        self.ensure_parameters_included()
    }

    /// Makes `postgresql.conf` include the cluster's parameters file (after the agent's own
    /// settings, so a tunable the cluster sets wins) if it exists; instances made before the
    /// file existed get the line at their next parameters change.
    pub(super) fn ensure_parameters_included(&self) -> Result<(), PostgresError> {
        self.ensure_included(&format!("include_if_exists '{}'", PARAMETERS_FILE))
    }

    /// Appends `include` to `postgresql.conf` unless it has the line.
    fn ensure_included(&self, include: &str) -> Result<(), PostgresError> {
        let main = self.data_dir().join("postgresql.conf");
        let text = std::fs::read_to_string(&main).map_err(|source| PostgresError::Io {
            path: main.clone(),
            source,
        })?;
        if !text.lines().any(|line| line == include) {
            self.append(&main, &format!("{include}\n"))?;
        }
        Ok(())
    }

    /// Makes a stopped instance a standby of `upstream` at its next start: `standby.signal`
    /// and the connection settings (what `pg_basebackup -R` writes, but pointing at the
    /// password file rather than copying the password).
    pub(crate) fn configure_standby(&self, upstream: &Upstream) -> Result<(), PostgresError> {
        self.write_private(&self.data_dir().join("standby.signal"), "")?;
        self.append(
            &self.data_dir().join("postgresql.auto.conf"),
            &format!(
                "primary_conninfo = {}\nprimary_slot_name = {}\nwal_receiver_timeout = {}\n",
                quote_literal(&self.primary_conninfo(upstream)),
                quote_literal(&self.name),
                quote_literal(CATCH_UP_RECEIVER_TIMEOUT)
            ),
        )
    }

    /// The `primary_conninfo` with which this instance streams from `upstream`. Connecting
    /// may take 10 s: across a WAN the TCP, TLS and SCRAM round trips of one attempt took
    /// 1.9–2.4 s at 230 ms round trips (`tests/partitions.rs`, the slow WAN), so the 2 s this
    /// was gave up on attempts that would have succeeded, and retried from scratch. A longer
    /// deadline costs nothing when the upstream is dead: re-pointing the instance (a
    /// reload) ends a walreceiver stuck connecting at once.
    pub(crate) fn primary_conninfo(&self, upstream: &Upstream) -> String {
        format!(
            "host={} port={} user={REPLICATION_USER} application_name={} passfile={} \
             {} connect_timeout=10",
            quote_conninfo(&upstream.host),
            upstream.port,
            self.name,
            quote_conninfo(&self.pgpass_path().to_string_lossy()),
            self.credentials.peer_ssl_options()
        )
    }

    /// Starts the postmaster and waits until it accepts connections (as a primary or a hot
    /// standby).
    pub async fn start(&mut self) -> Result<(), PostgresError> {
        if self.is_running() {
            return Ok(());
        }
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| PostgresError::Io {
                path: log_path.clone(),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| PostgresError::Io {
            path: log_path.clone(),
            source,
        })?;
        let mut command = self.toolchain.postmaster(&self.data_dir());
        command
            .arg("-p")
            .arg(self.port.to_string())
            .stdout(log)
            .stderr(log_err);
        let child = command.spawn().map_err(|source| PostgresError::Spawn {
            program: PathBuf::from("setpriv"),
            source,
        })?;
        let pid = child.id();
        self.postmaster = Some(child);
        let started = Instant::now();
        loop {
            if let Some(child) = self.postmaster.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.postmaster = None;
                return Err(PostgresError::ExitedEarly {
                    instance: self.name.clone(),
                    status,
                    log: log_path.clone(),
                    tail: log_tail(&log_path),
                });
            }
            if self.postmaster_status(pid).as_deref() == Some("ready")
                || self.postmaster_status(pid).as_deref() == Some("standby")
            {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                self.kill();
                return Err(PostgresError::NotReady {
                    instance: self.name.clone(),
                    timeout: START_TIMEOUT,
                    log: log_path.clone(),
                    tail: log_tail(&log_path),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The status word in `postmaster.pid` (`ready`, `standby`, `starting`, `stopping`) if
    /// the file belongs to the postmaster `pid`.
    fn postmaster_status(&self, pid: u32) -> Option<String> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let lines: Vec<&str> = text.lines().collect();
        if lines.first()?.trim() != pid.to_string() {
            return None;
        }
        Some(lines.get(7)?.trim().to_owned())
    }

    /// Stops the instance and waits for the postmaster to exit (killing it after 30 s).
    pub async fn stop(&mut self, mode: StopMode) {
        if let Some(child) = self.postmaster.as_mut() {
            signal_process(child, mode.signal());
            let started = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && started.elapsed() < STOP_TIMEOUT {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.kill();
    }

    /// Kills the postmaster with SIGKILL, as a crash would; its backends notice and exit.
    /// The data directory is left as a crash leaves it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.postmaster.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the postmaster this value started is still running.
    pub fn is_running(&mut self) -> bool {
        match self.postmaster.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.postmaster = None;
                false
            }
            None => false,
        }
    }

    /// A superuser connection to the `postgres` database. Its connection task runs on the
    /// current tokio runtime.
    pub async fn connect(&self) -> Result<Client, PostgresError> {
        connect_local(self.port, &self.credentials)
            .await
            .map_err(|source| PostgresError::Connect {
                instance: self.name.clone(),
                port: self.port,
                source,
            })
    }

    /// The replica's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// This instance as the upstream of a standby on the same machine.
    pub fn upstream(&self) -> Upstream {
        Upstream {
            host: "127.0.0.1".to_owned(),
            port: self.port,
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The server log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// The libpq password file.
    pub(crate) fn pgpass_path(&self) -> PathBuf {
        self.dir.join("pgpass")
    }

    /// The credentials of the instance's replica set.
    pub(crate) fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The toolchain the instance runs with.
    pub(crate) fn toolchain(&self) -> &Toolchain {
        &self.toolchain
    }

    /// A [`PostgresError::Sql`] for this instance.
    pub(crate) fn sql_error(
        &self,
        what: &'static str,
        source: tokio_postgres::Error,
    ) -> PostgresError {
        PostgresError::Sql {
            instance: self.name.clone(),
            what,
            source,
        }
    }

    /// Runs a one-shot program to completion; fails with its output if it fails.
    pub(crate) async fn run(
        &self,
        program: &'static str,
        command: &mut tokio::process::Command,
    ) -> Result<(), PostgresError> {
        let output = command
            .output()
            .await
            .map_err(|source| PostgresError::Spawn {
                program: self.toolchain.bin_dir().join(program),
                source,
            })?;
        if output.status.success() {
            return Ok(());
        }
        Err(PostgresError::Command {
            program,
            instance: self.name.clone(),
            status: output.status,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }

    /// Persists settings with `ALTER SYSTEM` (`None` resets one) and reloads the
    /// configuration. One statement at a time: `ALTER SYSTEM` cannot run in the implicit
    /// transaction of a multi-statement query.
    pub(crate) async fn alter_system(
        &self,
        what: &'static str,
        settings: &[(&str, Option<&str>)],
    ) -> Result<(), PostgresError> {
        self.alter_system_on(&self.connect().await?, what, settings)
            .await
    }

    /// [`Instance::alter_system`] on a session of this instance's.
    pub(crate) async fn alter_system_on(
        &self,
        client: &Client,
        what: &'static str,
        settings: &[(&str, Option<&str>)],
    ) -> Result<(), PostgresError> {
        for (name, value) in settings {
            let statement = match value {
                Some(value) => format!("ALTER SYSTEM SET {name} = {}", quote_literal(value)),
                None => format!("ALTER SYSTEM RESET {name}"),
            };
            client
                .batch_execute(&statement)
                .await
                .map_err(|source| self.sql_error(what, source))?;
        }
        client
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .map_err(|source| self.sql_error(what, source))
    }

    /// Writes `pg_hba.conf` for `access`.
    fn write_access(&self, access: &Access) -> Result<(), PostgresError> {
        self.write_private(&self.data_dir().join("pg_hba.conf"), &access.render())
    }

    /// Admits the sessions `access` says from now on: writes `pg_hba.conf` (and the settings,
    /// so TLS is served wherever `hostssl` is asked for) and, if the instance runs, reloads
    /// its configuration, which also reads the certificate files again (open sessions stay).
    pub async fn apply_access(&mut self, access: &Access) -> Result<(), PostgresError> {
        self.settings.access = access.clone();
        self.write_settings()?;
        if self.is_running() {
            self.connect()
                .await?
                .batch_execute("SELECT pg_reload_conf()")
                .await
                .map_err(|source| self.sql_error("reload pg_hba.conf", source))?;
        }
        Ok(())
    }

    /// Writes a file only the PostgreSQL user can read.
    pub(super) fn write_private(&self, path: &Path, contents: &str) -> Result<(), PostgresError> {
        let io_error = |source| PostgresError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io_error)?;
        file.write_all(contents.as_bytes()).map_err(io_error)?;
        self.toolchain.hand_over(path)
    }

    /// Appends to a file of the data directory.
    fn append(&self, path: &Path, text: &str) -> Result<(), PostgresError> {
        let io_error = |source| PostgresError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(io_error)?;
        file.write_all(text.as_bytes()).map_err(io_error)?;
        self.toolchain.hand_over(path)
    }
}

/// A superuser connection to the `postgres` database of the server at `address`, a peer:
/// over TLS, checking its certificate and name against the cluster's authority, once the
/// node has its certificate (`Credentials::tls`).
pub(crate) async fn connect(
    address: &Upstream,
    credentials: &Credentials,
) -> Result<Client, tokio_postgres::Error> {
    let mut config = superuser_config(&address.host, address.port, credentials);
    match credentials.tls() {
        Some(tls) => {
            config.ssl_mode(SslMode::Require);
            spawned(config.connect(tls.connector()).await?)
        }
        None => spawned(config.connect(NoTls).await?),
    }
}

/// A superuser connection to this node's own instance on `port`, over loopback (which
/// `pg_hba.conf` admits without TLS).
async fn connect_local(
    port: u16,
    credentials: &Credentials,
) -> Result<Client, tokio_postgres::Error> {
    let config = superuser_config("127.0.0.1", port, credentials);
    spawned(config.connect(NoTls).await?)
}

fn superuser_config(host: &str, port: u16, credentials: &Credentials) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(SUPERUSER)
        .password(credentials.superuser_password())
        .dbname("postgres")
        .application_name("shardplane-agent")
        .connect_timeout(Duration::from_secs(5));
    config
}

/// The client of a new session, its connection driven by a task of the current runtime: it
/// ends when the client drops or the server goes away; the client reports the error of any
/// request after that.
fn spawned<S>(
    (client, connection): (
        Client,
        tokio_postgres::Connection<tokio_postgres::Socket, S>,
    ),
) -> Result<Client, tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Creates the physical replication slot `name` on the server behind `client` unless it
/// exists. The slot reserves WAL at once, so a standby can attach to it later.
pub(crate) async fn ensure_replication_slot(
    client: &Client,
    name: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "SELECT pg_create_physical_replication_slot($1, true) \
             WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1)",
            &[&name],
        )
        .await
        .map(drop)
}

impl Drop for Instance {
    /// Immediate shutdown (blocking: the runtime may be gone), SIGKILL after 30 s.
    fn drop(&mut self) {
        if let Some(child) = self.postmaster.as_mut() {
            signal_process(child, StopMode::Immediate.signal());
            let started = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && started.elapsed() < STOP_TIMEOUT {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.kill();
    }
}

impl StopMode {
    /// The signal that asks the postmaster for this shutdown.
    fn signal(self) -> libc::c_int {
        match self {
            StopMode::Fast => libc::SIGINT,
            StopMode::Immediate => libc::SIGQUIT,
        }
    }
}

/// Sends `signal` to a child that has not been reaped.
fn signal_process(child: &Child, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory-safety preconditions; the child is not yet reaped, so
        // its pid cannot have been reused.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// The last lines of a server log, or a note saying why there are none.
fn log_tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(32 * 1024)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
        }
        Err(error) => format!("(log unreadable: {error})"),
    }
}
