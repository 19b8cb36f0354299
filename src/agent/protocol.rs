//! The agents' side of the protocol with the operator, shared by the real agent
//! (`shardplane agent`) and the PostgreSQL-free stand-in the operator's tests use: heartbeats
//! POSTed to every operator replica, the node Lease renewed as the durable liveness record,
//! and a replica's report in `Shard.status.replicas` under the agent's own field manager.
//! It decides nothing about replicas; it only says what the agent has.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::api::shard::ObservedReplica;
use crate::api::{DatabaseNode, Shard};
use crate::protocol::{
    HEARTBEAT_PATH, Heartbeat, HeartbeatAnswer, SignedHeartbeat, agent_manager, node_lease_name,
};

/// How often the node Lease is renewed while the leader answers heartbeats: one API write per
/// node per 30 s. The leader reads a node's Lease only once the node has been silent for
/// `deadAfterMs`, and an agent whose heartbeats go unanswered for two intervals renews every
/// interval from then on (and `heartbeatIntervalMs < suspectAfterMs < deadAfterMs`), so the
/// renewals that keep a node alive are those; the steady ones only keep the record current
/// for people and tools. At the seed's size they were the API server's largest single cost at
/// 10 s (70,739 applies, 423 ms each, in a 14-minute run).
pub const LEASE_RENEWAL: Duration = Duration::from_secs(30);
/// The least time a heartbeat's answer, or a Lease renewal, is awaited: each is awaited for
/// the heartbeat interval but never less than this. A proof counts from the call's start, so
/// waiting longer on a loaded machine costs nothing; but a call is never awaited without a
/// deadline: a partition that drops packets makes it hang rather than fail, and a hung renewal
/// would hold up the renewals after it.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a heartbeat was not answered.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    /// The operator replica could not be reached or did not answer in time.
    #[error("heartbeat to the operator at {operator} failed: {source}")]
    Unreachable {
        /// The operator replica's address.
        operator: SocketAddr,
        /// What went wrong.
        source: std::io::Error,
    },
    /// It refused the heartbeat (`401`): the node's heartbeat key is not the one it knows.
    #[error("the operator at {operator} refused the heartbeat: {reason}")]
    Refused {
        /// The operator replica's address.
        operator: SocketAddr,
        /// Its reason.
        reason: String,
    },
    /// It answered something other than `200 OK` with an answer signed with the node's key.
    #[error(
        "the operator at {operator} answered the heartbeat with {answer:?}, not signed with the node's key; is it a Shardplane operator of this version?"
    )]
    BadAnswer {
        /// The operator replica's address.
        operator: SocketAddr,
        /// The start of its answer.
        answer: String,
    },
}

/// Heartbeats over HTTP/1.1 with connection reuse: one client per reporter keeps its
/// connection to each operator replica open between beats, so a beat every
/// `heartbeatIntervalMs` costs neither side a TCP handshake. Cheap to clone (clones share
/// the connections).
#[derive(Clone)]
pub struct HeartbeatClient {
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HeartbeatClient {
    fn default() -> Self {
        HeartbeatClient::new()
    }
}

impl HeartbeatClient {
    /// A client with no connection open yet.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        HeartbeatClient {
            http: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// POSTs `beat` to one operator replica, giving up after `timeout`, and returns whether
    /// that replica is the leader — if its answer is signed with `key`, the node's heartbeat
    /// key (anything else could come from something that is not the operator).
    pub async fn post(
        &self,
        operator: SocketAddr,
        beat: &SignedHeartbeat,
        key: &[u8],
        timeout: Duration,
    ) -> Result<bool, HeartbeatError> {
        let unreachable = |source| HeartbeatError::Unreachable { operator, source };
        let exchange = async {
            let request = Request::post(format!("http://{operator}{HEARTBEAT_PATH}"))
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(serde_json::to_vec(beat)?)))
                .map_err(io::Error::other)?;
            let response = self.http.request(request).await.map_err(io_error)?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(io_error)?;
            Ok::<_, io::Error>((status, body.to_bytes()))
        };
        let (status, body) = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result.map_err(unreachable)?,
            Err(elapsed) => return Err(unreachable(elapsed.into())),
        };
        let bad = || HeartbeatError::BadAnswer {
            operator,
            answer: format!("{status} {}", String::from_utf8_lossy(&body))
                .chars()
                .take(120)
                .collect(),
        };
        if status == StatusCode::UNAUTHORIZED {
            let refusal: serde_json::Value = serde_json::from_slice(&body).map_err(|_| bad())?;
            return Err(HeartbeatError::Refused {
                operator,
                reason: refusal["refused"]
                    .as_str()
                    .unwrap_or("no reason")
                    .to_owned(),
            });
        }
        if status != StatusCode::OK {
            return Err(bad());
        }
        let answer: HeartbeatAnswer = serde_json::from_slice(&body).map_err(|_| bad())?;
        if !beat.answered_by(&answer, key) {
            return Err(bad());
        }
        Ok(answer.leader)
    }
}

/// The I/O error under an HTTP client error (refused, reset, …), so the message names the
/// cause rather than the layer; else the error itself.
fn io_error(error: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<io::Error>() {
            return io::Error::new(io.kind(), io.to_string());
        }
        cause = current.source();
    }
    io::Error::other(error)
}

/// Renews the node's Lease (creating it if missing) with `renewTime` = now.
pub async fn renew_lease(leases: &Api<Lease>, node: &str) -> Result<(), kube::Error> {
    let patch = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node_lease_name(node)},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 120, "renewTime": MicroTime(Timestamp::now())},
    });
    let params = PatchParams::apply(&agent_manager(node)).force();
    leases
        .patch(&node_lease_name(node), &params, &Patch::Apply(patch))
        .await
        .map(drop)
}

/// Writes the agent's part of its node's status (server-side apply of the status
/// subresource under the agent's field manager: the operator's part stays the operator's).
pub async fn report_node_status(
    nodes: &Api<DatabaseNode>,
    node: &str,
    status: serde_json::Value,
) -> Result<(), kube::Error> {
    let patch = json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "DatabaseNode",
        "metadata": {"name": node},
        "status": status,
    });
    let params = PatchParams::apply(&agent_manager(node)).force();
    nodes
        .patch_status(node, &params, &Patch::Apply(patch))
        .await
        .map(drop)
}

/// Writes the node's entry of `shard`'s `status.replicas` (server-side apply of the status
/// subresource, `listType: map` keyed by node, so the agent owns only its own entry), or
/// withdraws it with `None`.
pub async fn report_replica(
    shards: &Api<Shard>,
    shard: &str,
    node: &str,
    report: Option<&ObservedReplica>,
) -> Result<(), kube::Error> {
    let replicas: Vec<&ObservedReplica> = report.into_iter().collect();
    let patch = json!({
        "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
        "metadata": {"name": shard},
        "status": {"replicas": replicas},
    });
    let params = PatchParams::apply(&agent_manager(node)).force();
    shards
        .patch_status(shard, &params, &Patch::Apply(patch))
        .await
        .map(drop)
}

/// A node's liveness towards the operator: a heartbeat to every operator replica every
/// interval, and the node Lease renewed every [`LEASE_RENEWAL`] — and every interval while
/// no leader has answered for two intervals, so the durable record keeps the node alive when
/// only its path to the operator broke. The two run independently (a slow API server never
/// delays a heartbeat), and heartbeats of one round do not wait for the last round's answers.
/// Tracks when liveness was last *proven*: the send time of a heartbeat a leader answered, or
/// the start of a Lease renewal that succeeded. The operator counts the node alive from no
/// earlier than those instants, which is what makes self-fencing safe.
#[derive(Clone)]
pub struct LivenessReporter {
    operators: Arc<Vec<SocketAddr>>,
    heartbeats: HeartbeatClient,
    beat: Arc<Heartbeat>,
    key: HeartbeatKey,
    /// The last heartbeat's sequence number.
    sequence: Arc<AtomicU64>,
    leases: Api<Lease>,
    proofs: Arc<Mutex<Proofs>>,
}

/// The node's heartbeat key (`crate::tls::HEARTBEAT_KEY`), once known, shared by whoever
/// reads it (the agent's certificate keeper) and the reporter that signs with it.
#[derive(Clone, Default)]
pub struct HeartbeatKey(Arc<Mutex<Option<Arc<[u8]>>>>);

impl HeartbeatKey {
    /// Signs with `key` from now on.
    pub fn set(&self, key: &[u8]) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(key.into());
    }

    /// The key, if known.
    pub fn get(&self) -> Option<Arc<[u8]>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Default)]
struct Proofs {
    leader_answered: Option<Instant>,
    lease_renewed: Option<Instant>,
}

impl LivenessReporter {
    /// A reporter for `beat.node`, signing with `key` (no heartbeat is sent while it is
    /// unknown), whose Lease lives in `leases`' namespace.
    pub fn new(
        operators: Vec<SocketAddr>,
        beat: Heartbeat,
        key: HeartbeatKey,
        leases: Api<Lease>,
    ) -> Self {
        LivenessReporter {
            operators: Arc::new(operators),
            heartbeats: HeartbeatClient::new(),
            beat: Arc::new(beat),
            key,
            sequence: Arc::default(),
            leases,
            proofs: Arc::default(),
        }
    }

    /// The next sequence number: this clock in milliseconds, or one more than the last if
    /// the clock did not move on (or went back).
    fn next_sequence(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let previous = self
            .sequence
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or_default();
        now.max(previous + 1)
    }

    /// When liveness was last proven.
    pub fn last_proof(&self) -> Option<Instant> {
        let proofs = self.proofs.lock().unwrap_or_else(|p| p.into_inner());
        proofs.leader_answered.max(proofs.lease_renewed)
    }

    /// Heartbeats and renews the Lease until dropped; `interval` is read before every round
    /// (the cluster's `heartbeatIntervalMs` may change).
    pub async fn run(&self, interval: impl Fn() -> Duration) {
        let beats = async {
            loop {
                let period = interval();
                let round = self.clone();
                // Answers are awaited in their own task: a slow one never delays the next beat.
                tokio::spawn(
                    async move { round.heartbeat_round(period.max(HEARTBEAT_TIMEOUT)).await },
                );
                tokio::time::sleep(period).await;
            }
        };
        let renewals = async {
            loop {
                let period = interval();
                if self.renewal_due(period) {
                    self.renew(period.max(HEARTBEAT_TIMEOUT)).await;
                }
                tokio::time::sleep(period).await;
            }
        };
        tokio::join!(beats, renewals);
    }

    async fn heartbeat_round(&self, timeout: Duration) {
        let Some(key) = self.key.get() else {
            tracing::debug!(node = %self.beat.node, "no heartbeat key yet: no heartbeat sent");
            return;
        };
        let sent = Instant::now();
        let signed =
            SignedHeartbeat::sign(Heartbeat::clone(&self.beat), self.next_sequence(), &key);
        let answers = futures::future::join_all(
            self.operators
                .iter()
                .map(|operator| self.heartbeats.post(*operator, &signed, &key, timeout)),
        )
        .await;
        let mut leader_answered = false;
        for answer in answers {
            match answer {
                Ok(leader) => leader_answered |= leader,
                Err(error) => tracing::debug!(%error, "heartbeat not delivered"),
            }
        }
        if leader_answered {
            let mut proofs = self.proofs.lock().unwrap_or_else(|p| p.into_inner());
            proofs.leader_answered = proofs.leader_answered.max(Some(sent));
        }
    }

    fn renewal_due(&self, interval: Duration) -> bool {
        let proofs = self.proofs.lock().unwrap_or_else(|p| p.into_inner());
        let leader_silent = proofs
            .leader_answered
            .is_none_or(|at| at.elapsed() >= 2 * interval);
        let renewal_old = proofs
            .lease_renewed
            .is_none_or(|at| at.elapsed() >= LEASE_RENEWAL);
        leader_silent || renewal_old
    }

    /// Renews the Lease, giving up after `deadline`; a renewal that succeeded proves liveness
    /// from its start.
    async fn renew(&self, deadline: Duration) {
        let started = Instant::now();
        match tokio::time::timeout(deadline, renew_lease(&self.leases, &self.beat.node)).await {
            Ok(Ok(())) => {
                let mut proofs = self.proofs.lock().unwrap_or_else(|p| p.into_inner());
                proofs.lease_renewed = proofs.lease_renewed.max(Some(started));
            }
            Ok(Err(error)) => tracing::debug!(%error, "node lease not renewed"),
            Err(_) => tracing::debug!(?deadline, "node lease not renewed: no answer in time"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use axum::Router;
    use axum::http::Version;
    use axum::routing::post;
    use axum::serve::ListenerExt;

    use super::*;

    /// An HTTP server on loopback that answers heartbeats with `leader` (every request with
    /// `404 Not Found` when `None`), and counts the TCP connections it accepted.
    async fn answering(leader: Option<bool>) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let listener = listener.tap_io(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let mut app = Router::new();
        if let Some(leader) = leader {
            let answer = move |version: Version, body: String| async move {
                assert_eq!(version, Version::HTTP_11);
                let signed: SignedHeartbeat = serde_json::from_str(&body).unwrap();
                assert_eq!(signed.beat.agent_epoch, 3, "{body}");
                assert!(signed.signed_with(KEY));
                axum::Json(signed.answer(leader, KEY))
            };
            app = app.route(HEARTBEAT_PATH, post(answer));
        }
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (addr, accepted)
    }

    const KEY: &[u8] = b"the heartbeat key of node n1";

    fn beat() -> SignedHeartbeat {
        let beat = Heartbeat {
            namespace: "ns".into(),
            node: "n1".into(),
            agent_epoch: 3,
        };
        SignedHeartbeat::sign(beat, 1_000, KEY)
    }

    #[tokio::test]
    async fn the_heartbeat_answer_says_whether_the_leader_was_reached() {
        let second = Duration::from_secs(1);
        let client = HeartbeatClient::new();
        let (leader, _) = answering(Some(true)).await;
        assert!(client.post(leader, &beat(), KEY, second).await.unwrap());
        let (follower, _) = answering(Some(false)).await;
        assert!(!client.post(follower, &beat(), KEY, second).await.unwrap());
        // An answer signed with another key could come from anyone: it proves nothing.
        assert!(matches!(
            client.post(leader, &beat(), b"another key", second).await,
            Err(HeartbeatError::BadAnswer { .. })
        ));
        let (stranger, _) = answering(None).await;
        assert!(matches!(
            client.post(stranger, &beat(), KEY, second).await,
            Err(HeartbeatError::BadAnswer { .. })
        ));
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        assert!(matches!(
            client.post(closed, &beat(), KEY, second).await,
            Err(HeartbeatError::Unreachable { .. })
        ));
    }

    #[tokio::test]
    async fn heartbeats_to_one_operator_share_a_connection() {
        let second = Duration::from_secs(1);
        let client = HeartbeatClient::new();
        let (leader, accepted) = answering(Some(true)).await;
        for _ in 0..3 {
            assert!(client.post(leader, &beat(), KEY, second).await.unwrap());
            // Beats are an interval apart: the answered connection is back in the pool.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}
