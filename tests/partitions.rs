//! Nodes on hosts of their own, and real network faults between them (issue #14): each node's
//! agent and PostgreSQL instances in a Linux network namespace with its own address
//! (`tests/agent/network.rs`), the control plane, operator, workload and checker on the
//! gateway. A partition drops packets (nftables inside the host's namespace), so calls hang
//! until their deadlines rather than fail at once. A prober inside each host (its own
//! loopback, which no fault cuts) asks every replica 20 times a second whether it accepts a
//! write, so two writable primaries would be seen even on a host the test cut off.

#[path = "agent/harness.rs"]
mod harness;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use shardplane::api::shard::{ReplicaRole, ReplicaState};
use shardplane::api::{DatabaseCluster, Shard};
use shardplane::routing::ShardKeyValue;
use support::{env_with_crds, eventually};

use harness::network::TestNetwork;
use harness::{DataPlane, Ledger, NODES, SUPERUSER_PASSWORD, TABLE, connect, keys_in, report};

const SHARDS: usize = 2;
/// The cluster's `deadAfterMs` (`declare_cluster_with`).
const DEAD_AFTER: Duration = Duration::from_millis(1200);
/// How often the prober asks each replica whether it accepts a write.
const PROBE_EVERY: Duration = Duration::from_millis(50);

/// What one probe of a replica found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writable {
    /// An INSERT succeeded (and was rolled back).
    Yes,
    /// Refused: read-only (a standby, or a fenced primary).
    No,
    /// No answer (no session, or none within the probe's deadline).
    Unknown,
}

/// Every probe of one replica: when, and what it found.
struct ReplicaProbes {
    shard: String,
    node: String,
    samples: Vec<(Instant, Writable)>,
}

/// Asks the instance of `shard` on `node` (port `port` on the host's loopback) every
/// [`PROBE_EVERY`] whether it accepts a write — an INSERT of a key of the shard's range in a
/// transaction that is rolled back, so nothing is written and no commit waits for a
/// quorum — until `stop`.
fn probe(
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
async fn open_session(
    connector: &harness::network::Connector,
    port: u16,
) -> Option<tokio_postgres::Client> {
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
fn writable_stretches(samples: &[(Instant, Writable)]) -> Vec<(Instant, Instant)> {
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

/// Pairs of replicas of one shard that were both seen writable in overlapping stretches (a
/// stretch is widened by one probe interval each way, as the truth lies between samples).
fn two_writable_primaries(probes: &[ReplicaProbes]) -> Vec<String> {
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

/// Runs `psql` (from `host`, or from the gateway) with a replication session to `endpoint`.
fn replication_session(network: &TestNetwork, host: Option<&str>, endpoint: &str) -> Output {
    let (address, port) = endpoint.rsplit_once(':').unwrap();
    let mut command = match host {
        Some(host) => network.command(host, "psql"),
        None => std::process::Command::new("psql"),
    };
    command
        .arg(format!(
            "host={address} port={port} user=replicator dbname=postgres replication=true \
             sslmode=disable connect_timeout=5"
        ))
        .args(["-c", "IDENTIFY_SYSTEM"])
        .env("PGPASSWORD", "test-replication-secret")
        .output()
        .expect("psql runs")
}

async fn set_client_networks(plane: &DataPlane, networks: serde_json::Value) {
    Api::<DatabaseCluster>::namespaced(plane.client.clone(), &plane.namespace)
        .patch(
            "main",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"network": {"clientNetworks": networks}}})),
        )
        .await
        .unwrap();
}

/// Instances on separate hosts stream from each other; replication is admitted only from
/// the cluster's nodes, application sessions only from `spec.network.clientNetworks`
/// (changed at run time, applied by a reload). Then the host of a primary is cut off from
/// everything — not killed: its primary refuses writes before a standby elsewhere is
/// promoted (no instant with two writable primaries, seen from inside every host), routed
/// writes resume on the new primary, and once the cut heals the old primary rejoins as a
/// standby by itself. Every acknowledged write is found exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_primary_fences_before_a_standby_takes_over_and_rejoins_after_the_heal() {
    let env = env_with_crds().await;
    let started = Instant::now();
    let network = TestNetwork::new();
    let gateway = network.gateway();
    let plane = DataPlane::start_on_network(
        env.client.clone(),
        &env.namespace,
        env.control_plane.kubeconfig_path(),
        SHARDS,
        &NODES,
        network,
    )
    .await;
    plane.wait_serving(SHARDS, Duration::from_secs(120)).await;
    println!("serving on three hosts after {:.1?}", started.elapsed());

    // Replication: refused from the gateway (not a node), admitted from a node's host.
    let shard = plane.shard_list().await.remove(0);
    let primary = shard.status.clone().unwrap().primary.unwrap().node;
    let endpoint = report(&shard, &primary)
        .and_then(|r| r.endpoint.clone())
        .unwrap();
    assert!(
        endpoint.starts_with(&plane.network().address(&primary).to_string()),
        "the primary's endpoint {endpoint} is not its host's address"
    );
    let refused = replication_session(plane.network(), None, &endpoint);
    let words = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && words.contains(&format!(
                "no pg_hba.conf entry for replication connection from host \"{gateway}\""
            )),
        "a replication session from the gateway: {words}"
    );
    let other = NODES.iter().map(|n| n.0).find(|n| *n != primary).unwrap();
    let admitted = replication_session(plane.network(), Some(other), &endpoint);
    assert!(
        admitted.status.success(),
        "a replication session from {other}'s host: {}",
        String::from_utf8_lossy(&admitted.stderr)
    );

    // Application sessions: refused once the gateway is outside the client networks,
    // admitted again once it is inside (a reload each time, no restart).
    set_client_networks(&plane, json!(["192.0.2.0/24"])).await;
    let refusal = format!("no pg_hba.conf entry for host \"{gateway}\"");
    assert!(
        eventually(Duration::from_secs(30), || async {
            connect(&endpoint).await.is_err_and(|e| {
                e.as_db_error()
                    .is_some_and(|e| e.message().contains(&refusal))
            })
        })
        .await,
        "an application session from outside spec.network.clientNetworks was not refused"
    );
    set_client_networks(&plane, json!([format!("{gateway}/32")])).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            connect(&endpoint).await.is_ok()
        })
        .await,
        "an application session from inside spec.network.clientNetworks was refused"
    );

    // The isolated primary.
    let mut ledger = Ledger::new(&plane.client, &plane.namespace, 4, 200.0).await;
    let workload = ledger.start(50).await;
    let shards = plane.shard_list().await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut probers = Vec::new();
    for shard in &shards {
        for replica in shard.status.as_ref().unwrap().replicas.iter() {
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
    let epochs: BTreeMap<String, i64> = shards
        .iter()
        .filter(|s| s.status.as_ref().unwrap().primary.as_ref().unwrap().node == primary)
        .map(|s| {
            (
                s.name_any(),
                s.status.as_ref().unwrap().primary.as_ref().unwrap().epoch,
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let cut = Instant::now();
    plane.network().isolate(&primary);
    // One routed write of an affected shard every 20 ms, each on its own: the first
    // acknowledged after the cut was taken by the new primary (no answer leaves the cut-off
    // host).
    let affected = shards
        .iter()
        .find(|s| s.name_any() == shard.name_any())
        .unwrap();
    let keys = keys_in(affected, 5_000_000_000, 500);
    let first_ack = Arc::new(std::sync::Mutex::new(None::<Duration>));
    let mut writes = Vec::new();
    for key in keys.iter().copied() {
        let router = ledger.router.clone();
        let first = first_ack.clone();
        writes.push(tokio::spawn(async move {
            let statement =
                format!("INSERT INTO {TABLE} (id, note) VALUES ($1, 'cut') ON CONFLICT DO NOTHING");
            let done = router
                .execute(&ShardKeyValue::Int(key), &statement, &[&key])
                .await;
            if done.is_ok() {
                let mut first = first.lock().unwrap();
                let at = cut.elapsed();
                if first.is_none_or(|f| at < f) {
                    *first = Some(at);
                }
            }
            done.is_ok().then_some(key)
        }));
        if first_ack.lock().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut acked_by_new = Vec::new();
    for write in writes {
        acked_by_new.extend(write.await.unwrap());
    }
    let failover = first_ack
        .lock()
        .unwrap()
        .expect("no routed write was acknowledged");
    ledger.acked.extend(&acked_by_new);
    println!("partition_failover_s: {:.3}", failover.as_secs_f64());
    for (name, epoch) in &epochs {
        let shard = plane.shards().get(name).await.unwrap();
        let now = shard.status.unwrap().primary.unwrap();
        assert!(
            now.node != primary && now.epoch > *epoch,
            "{name}: primary {} at epoch {} after the cut (was {primary} at {epoch})",
            now.node,
            now.epoch
        );
    }

    // Heal: the old primary rejoins as a standby of the new one, with no step by anyone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    plane.network().heal(&primary);
    let healed = Instant::now();
    let rejoined = eventually(Duration::from_secs(90), || async {
        plane.shard_list().await.iter().all(|shard| {
            report(shard, &primary).is_some_and(|r| {
                r.role == ReplicaRole::Secondary && r.state == ReplicaState::InSync
            })
        })
    })
    .await;
    assert!(
        rejoined,
        "{primary} did not rejoin every shard as a streaming standby"
    );
    println!(
        "rejoined as standbys {:.1?} after the heal",
        healed.elapsed()
    );
    ledger.finish("isolated primary", workload, 100).await;

    stop.store(true, Ordering::SeqCst);
    let mut probes = Vec::new();
    for prober in probers {
        probes.push(prober.await.unwrap());
    }
    let both = two_writable_primaries(&probes);
    println!("two_writable_primaries_observed: {}", both.len());
    assert!(both.is_empty(), "two writable primaries: {both:#?}");
    for probes in probes
        .iter()
        .filter(|p| p.node == primary && epochs.contains_key(&p.shard))
    {
        let last = writable_stretches(&probes.samples)
            .iter()
            .map(|s| s.1)
            .filter(|to| *to < cut + Duration::from_secs(60))
            .max()
            .expect("the old primary was never seen writable");
        println!(
            "{}: the isolated primary's last writable probe {:.0?} after the cut (deadAfterMs {:?})",
            probes.shard,
            last.saturating_duration_since(cut),
            DEAD_AFTER
        );
        assert!(
            probes
                .samples
                .iter()
                .any(|(at, w)| *at > cut && *at < healed && *w == Writable::No),
            "{}: the isolated primary was never seen refusing writes during the cut",
            probes.shard
        );
    }
    ledger.summary();
}

/// The control plane out of reach of everything (issue #14, case g): each host's packets to
/// and from the API server and the operator are dropped, and the operator's own link to the
/// API server is frozen, for `SHARDPLANE_OUTAGE_S` seconds (default 20; the benchmark's
/// figure is for 120). Every peer of each primary confirms it (failsafe), so the primaries
/// keep taking writes: the routed workload writes on, no failover happens, nothing is
/// re-done when the control plane returns, and every acknowledged write is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_primaries_keep_their_writes_while_the_control_plane_is_out_of_reach() {
    let outage = Duration::from_secs(
        std::env::var("SHARDPLANE_OUTAGE_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    let env = env_with_crds().await;
    let plane = DataPlane::start_on_network(
        env.client.clone(),
        &env.namespace,
        env.control_plane.kubeconfig_path(),
        SHARDS,
        &NODES,
        TestNetwork::new(),
    )
    .await;
    plane.wait_serving(SHARDS, Duration::from_secs(120)).await;
    let shards = plane.shard_list().await;
    let epochs: BTreeMap<String, (String, i64)> = shards
        .iter()
        .map(|s| {
            let primary = s.status.as_ref().unwrap().primary.clone().unwrap();
            (s.name_any(), (primary.node, primary.epoch))
        })
        .collect();
    let plans_before = harness::plans(&plane).await.len();
    let mut ledger = Ledger::new(&plane.client, &plane.namespace, 4, 200.0).await;
    let workload = ledger.start(50).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut probers = Vec::new();
    for shard in &shards {
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
    tokio::time::sleep(Duration::from_secs(1)).await;

    let acked_before = workload.acked_so_far();
    let cut = Instant::now();
    plane.cut_control_plane();
    tokio::time::sleep(outage).await;
    let acked_during = workload.acked_so_far() - acked_before;
    plane.restore_control_plane();
    let restored = Instant::now();
    println!(
        "control plane out of reach for {:.1?}: {acked_during} routed writes acknowledged meanwhile",
        restored - cut
    );
    // Time for anything the control plane would do on its return.
    tokio::time::sleep(Duration::from_secs(10)).await;
    ledger
        .finish("control plane out of reach", workload, 100)
        .await;
    stop.store(true, Ordering::SeqCst);
    let mut probes = Vec::new();
    for prober in probers {
        probes.push(prober.await.unwrap());
    }

    let both = two_writable_primaries(&probes);
    println!("two_writable_primaries_observed: {}", both.len());
    assert!(both.is_empty(), "two writable primaries: {both:#?}");
    // The primaries' probes during the outage: the share that found them writable.
    let during: Vec<Writable> = probes
        .iter()
        .filter(|p| epochs[&p.shard].0 == p.node)
        .flat_map(|p| {
            p.samples
                .iter()
                .filter(|(at, _)| *at >= cut && *at < restored)
                .map(|(_, found)| *found)
        })
        .collect();
    let writable = during.iter().filter(|w| **w == Writable::Yes).count();
    let pct = 100.0 * writable as f64 / during.len().max(1) as f64;
    println!(
        "control_plane_outage_write_success_pct: {pct:.1} ({writable} of {} probes of the primaries accepted a write)",
        during.len()
    );
    for shard in plane.shard_list().await {
        let primary = shard.status.unwrap().primary.unwrap();
        assert_eq!(
            (primary.node.clone(), primary.epoch),
            epochs[&shard.metadata.name.clone().unwrap()],
            "a failover happened"
        );
    }
    let plans_after = harness::plans(&plane).await.len();
    assert_eq!(
        plans_after, plans_before,
        "plans were made during or after the outage"
    );
    assert!(
        acked_during > 0 && pct >= 95.0,
        "the primaries did not keep their writes: {acked_during} routed writes acknowledged, {pct:.1} % of probes writable"
    );
    ledger.summary();
}
