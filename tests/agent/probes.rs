//! What the partition tests and benchmark observe: a prober inside every host asking each
//! replica 20 times a second whether it accepts a write (so two writable primaries are seen
//! even on a host the test cut off), and the first routed write acknowledged after a fault.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use shardplane::api::Shard;
use shardplane::routing::ShardKeyValue;

use super::network::{Connector, TestNetwork};
use super::{DataPlane, Ledger, SUPERUSER_PASSWORD, TABLE, keys_in};

/// How often the prober asks each replica whether it accepts a write.
pub const PROBE_EVERY: Duration = Duration::from_millis(50);

/// What one probe of a replica found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writable {
    /// An INSERT succeeded (and was rolled back).
    Yes,
    /// Refused: read-only (a standby, or a fenced primary).
    No,
    /// No answer (no session, or none within the probe's deadline).
    Unknown,
}

/// Every probe of one replica: when, and what it found.
pub struct ReplicaProbes {
    /// The shard.
    pub shard: String,
    /// The replica's node.
    pub node: String,
    /// When, and what each probe found.
    pub samples: Vec<(Instant, Writable)>,
}

/// Asks the instance of `shard` on `node` (port `port` on the host's loopback) every
/// [`PROBE_EVERY`] whether it accepts a write — an INSERT of a key of the shard's range in a
/// transaction that is rolled back, so nothing is written and no commit waits for a
/// quorum — until `stop`.
pub fn probe(
    network: &TestNetwork,
    shard: &Shard,
    node: &str,
    port: u16,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<ReplicaProbes> {
    let key = keys_in(shard, 4_000_000_000, 1)[0];
    let (shard, node) = (shard.name_any(), node.to_owned());
    // The connection is made from inside the host; the task only keeps the session.
    let connector = network.connector(&node);
    tokio::spawn(async move {
        let statement = format!("INSERT INTO {TABLE} (id, note) VALUES ($1, 'probe')");
        let mut session: Option<tokio_postgres::Client> = None;
        let mut samples = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let at = Instant::now();
            if session.as_ref().is_none_or(|s| s.is_closed()) {
                session = open_session(&connector, port).await;
            }
            let found = match session.as_mut() {
                None => Writable::Unknown,
                Some(client) => {
                    let attempt = async {
                        let transaction = client.transaction().await?;
                        transaction.execute(&statement, &[&key]).await
                    };
                    match tokio::time::timeout(Duration::from_millis(500), attempt).await {
                        Ok(Ok(_)) => Writable::Yes,
                        Ok(Err(error)) if error.code().is_some_and(|c| c.code() == "25006") => {
                            Writable::No
                        }
                        Ok(Err(_)) | Err(_) => {
                            session = None;
                            Writable::Unknown
                        }
                    }
                }
            };
            samples.push((at, found));
            tokio::time::sleep_until((at + PROBE_EVERY).into()).await;
        }
        ReplicaProbes {
            shard,
            node,
            samples,
        }
    })
}

/// A superuser session with the instance on `port` of the host `connector` enters.
async fn open_session(connector: &Connector, port: u16) -> Option<tokio_postgres::Client> {
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = tokio::time::timeout(Duration::from_secs(1), connector.connect(to))
        .await
        .ok()?
        .ok()?;
    let mut config = tokio_postgres::Config::new();
    config
        .user("postgres")
        .password(SUPERUSER_PASSWORD)
        .dbname("postgres");
    let (client, connection) = tokio::time::timeout(
        Duration::from_secs(1),
        config.connect_raw(stream, tokio_postgres::NoTls),
    )
    .await
    .ok()?
    .ok()?;
    tokio::spawn(connection);
    Some(client)
}

/// The stretches of time during which `samples` said writable, each from its first to its
/// last consecutive writable sample (a probe without answer ends none).
pub fn writable_stretches(samples: &[(Instant, Writable)]) -> Vec<(Instant, Instant)> {
    let mut stretches: Vec<(Instant, Instant)> = Vec::new();
    let mut open = false;
    for &(at, found) in samples {
        match found {
            Writable::Yes if open => stretches.last_mut().unwrap().1 = at,
            Writable::Yes => {
                stretches.push((at, at));
                open = true;
            }
            Writable::No => open = false,
            Writable::Unknown => {}
        }
    }
    stretches
}

/// Stops the probers of [`probe_every_replica`] and returns what each found.
pub async fn stop_probers(
    stop: &AtomicBool,
    probers: Vec<tokio::task::JoinHandle<ReplicaProbes>>,
) -> Vec<ReplicaProbes> {
    stop.store(true, Ordering::SeqCst);
    let mut probes = Vec::new();
    for prober in probers {
        probes.push(prober.await.expect("a prober panicked"));
    }
    probes
}

/// Takes the control plane from every component of `plane` for `outage` while `workload`
/// writes ([`DataPlane::cut_control_plane`]), then gives it back: when it was cut and
/// restored, and how many routed writes were acknowledged meanwhile.
pub async fn control_plane_outage(
    plane: &DataPlane,
    workload: &shardplane::workload::Workload,
    outage: Duration,
) -> (Instant, Instant, u64) {
    let before = workload.acked_so_far();
    let cut = Instant::now();
    plane.cut_control_plane();
    tokio::time::sleep(outage).await;
    let acked_during = workload.acked_so_far() - before;
    plane.restore_control_plane();
    (cut, Instant::now(), acked_during)
}

/// Of the probes of the replicas `is_primary` picks (by shard and node) made in
/// `[from, to)`: how many found a writable replica, and how many there were.
pub fn writable_share(
    probes: &[ReplicaProbes],
    is_primary: impl Fn(&str, &str) -> bool,
    from: Instant,
    to: Instant,
) -> (usize, usize) {
    let during: Vec<Writable> = probes
        .iter()
        .filter(|p| is_primary(&p.shard, &p.node))
        .flat_map(|p| {
            p.samples
                .iter()
                .filter(|(at, _)| *at >= from && *at < to)
                .map(|(_, found)| *found)
        })
        .collect();
    let writable = during.iter().filter(|w| **w == Writable::Yes).count();
    (writable, during.len())
}

/// Pairs of replicas of one shard that were both seen writable in overlapping stretches (a
/// stretch is widened by one probe interval each way, as the truth lies between samples).
pub fn two_writable_primaries(probes: &[ReplicaProbes]) -> Vec<String> {
    let mut found = Vec::new();
    for (i, a) in probes.iter().enumerate() {
        for b in probes[i + 1..].iter().filter(|b| b.shard == a.shard) {
            for (a_from, a_to) in writable_stretches(&a.samples) {
                for (b_from, b_to) in writable_stretches(&b.samples) {
                    if a_from < b_to + PROBE_EVERY && b_from < a_to + PROBE_EVERY {
                        found.push(format!(
                            "{}: {} writable {:?}..{:?} and {} writable {:?}..{:?}",
                            a.shard, a.node, a_from, a_to, b.node, b_from, b_to
                        ));
                    }
                }
            }
        }
    }
    found
}

/// Probers on every replica of every shard ([`probe`]), stopped by `stop`.
pub fn probe_every_replica(
    plane: &DataPlane,
    shards: &[Shard],
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<ReplicaProbes>> {
    let mut probers = Vec::new();
    for shard in shards {
        for replica in &shard.status.as_ref().unwrap().replicas {
            let port = replica
                .endpoint
                .as_deref()
                .unwrap()
                .rsplit_once(':')
                .unwrap()
                .1;
            probers.push(probe(
                plane.network(),
                shard,
                &replica.node,
                port.parse().unwrap(),
                stop.clone(),
            ));
        }
    }
    probers
}

/// Writes a row of `shard` through the ledger's router every 20 ms, each write on its own,
/// until one is acknowledged; how long after `since` the first was. Every acknowledged row
/// joins the ledger.
pub async fn first_acknowledged(ledger: &mut Ledger, shard: &Shard, since: Instant) -> Duration {
    first_acknowledged_within(ledger, shard, since, Duration::from_secs(30))
        .await
        .expect("no routed write was acknowledged in 30 s")
}

/// [`first_acknowledged`], writing for at most `limit`: `None` if no write was acknowledged.
pub async fn first_acknowledged_within(
    ledger: &mut Ledger,
    shard: &Shard,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    let first = Arc::new(std::sync::Mutex::new(None::<Duration>));
    let mut writes = Vec::new();
    // A write sent at the very moment of a kill may still be acknowledged by the dying
    // primary (its PostgreSQL dies a few milliseconds after the agent): the first is sent
    // 100 ms after the fault.
    tokio::time::sleep_until((since + Duration::from_millis(100)).into()).await;
    // Each call writes keys of its own.
    static CALLS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let from = 6_000_000_000 + 100_000_000 * CALLS.fetch_add(1, Ordering::Relaxed);
    let writes_at_most = (limit.as_millis() / 20) as usize;
    for key in keys_in(shard, from, writes_at_most) {
        let router = ledger.router.clone();
        let first_ack = first.clone();
        writes.push(tokio::spawn(async move {
            let statement =
                format!("INSERT INTO {TABLE} (id, note) VALUES ($1, 'cut') ON CONFLICT DO NOTHING");
            let done = router
                .execute(&ShardKeyValue::Int(key), &statement, &[&key])
                .await;
            if done.is_ok() {
                let at = since.elapsed();
                let mut first = first_ack.lock().unwrap();
                if first.is_none_or(|f| at < f) {
                    *first = Some(at);
                }
            }
            done.is_ok().then_some(key)
        }));
        if first.lock().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut acked = Vec::new();
    for write in writes {
        acked.extend(write.await.unwrap());
    }
    ledger.acked.extend(acked);
    let timed = first.lock().unwrap();
    *timed
}
