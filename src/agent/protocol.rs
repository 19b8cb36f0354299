//! The agents' side of the protocol with the operator, shared by the real agent
//! (`shardplane agent`) and the PostgreSQL-free stand-in the operator's tests use: heartbeats
//! POSTed to every operator replica, the node Lease renewed as the durable liveness record,
//! and a replica's report in `Shard.status.replicas` under the agent's own field manager.
//! It decides nothing about replicas; it only says what the agent has.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::Shard;
use crate::api::shard::ObservedReplica;
use crate::protocol::{HEARTBEAT_PATH, Heartbeat, agent_manager, node_lease_name};

/// How often the node Lease is renewed while the leader answers heartbeats.
pub const LEASE_RENEWAL: Duration = Duration::from_secs(5);
/// The least time a heartbeat's answer is awaited (its proof counts from its send time, so
/// waiting longer on a loaded machine costs nothing).
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
    /// It answered something other than `200 OK` with `{"leader": bool}`.
    #[error(
        "the operator at {operator} answered the heartbeat with {answer:?}; is it a Shardplane operator of this version?"
    )]
    BadAnswer {
        /// The operator replica's address.
        operator: SocketAddr,
        /// The start of its answer.
        answer: String,
    },
}

/// POSTs `beat` to one operator replica (a minimal HTTP/1.1 request, no connection reuse)
/// and returns whether that replica is the leader.
pub async fn post_heartbeat(
    operator: SocketAddr,
    beat: &Heartbeat,
    timeout: Duration,
) -> Result<bool, HeartbeatError> {
    let unreachable = |source| HeartbeatError::Unreachable { operator, source };
    let exchange = async {
        let body = serde_json::to_string(beat)?;
        let mut stream = tokio::net::TcpStream::connect(operator).await?;
        let request = format!(
            "POST {HEARTBEAT_PATH} HTTP/1.1\r\nHost: {operator}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result.map_err(unreachable)?,
        Err(elapsed) => return Err(unreachable(elapsed.into())),
    };
    let text = String::from_utf8_lossy(&response);
    let bad = || HeartbeatError::BadAnswer {
        operator,
        answer: text.chars().take(120).collect(),
    };
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(bad());
    }
    let answer: serde_json::Value = serde_json::from_str(body.trim()).map_err(|_| bad())?;
    answer["leader"].as_bool().ok_or_else(bad)
}

/// Renews the node's Lease (creating it if missing) with `renewTime` = now.
pub async fn renew_lease(leases: &Api<Lease>, node: &str) -> Result<(), kube::Error> {
    let patch = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node_lease_name(node)},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 15, "renewTime": MicroTime(Timestamp::now())},
    });
    let params = PatchParams::apply(&agent_manager(node)).force();
    leases
        .patch(&node_lease_name(node), &params, &Patch::Apply(patch))
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
    beat: Arc<Heartbeat>,
    leases: Api<Lease>,
    proofs: Arc<Mutex<Proofs>>,
}

#[derive(Default)]
struct Proofs {
    leader_answered: Option<Instant>,
    lease_renewed: Option<Instant>,
}

impl LivenessReporter {
    /// A reporter for `beat.node`, whose Lease lives in `leases`' namespace.
    pub fn new(operators: Vec<SocketAddr>, beat: Heartbeat, leases: Api<Lease>) -> Self {
        LivenessReporter {
            operators: Arc::new(operators),
            beat: Arc::new(beat),
            leases,
            proofs: Arc::default(),
        }
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
                    self.renew().await;
                }
                tokio::time::sleep(period).await;
            }
        };
        tokio::join!(beats, renewals);
    }

    async fn heartbeat_round(&self, timeout: Duration) {
        let sent = Instant::now();
        let answers = futures::future::join_all(
            self.operators
                .iter()
                .map(|operator| post_heartbeat(*operator, &self.beat, timeout)),
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

    async fn renew(&self) {
        let started = Instant::now();
        match renew_lease(&self.leases, &self.beat.node).await {
            Ok(()) => {
                let mut proofs = self.proofs.lock().unwrap_or_else(|p| p.into_inner());
                proofs.lease_renewed = proofs.lease_renewed.max(Some(started));
            }
            Err(error) => tracing::debug!(%error, "node lease not renewed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP server on loopback that answers one request with `answer`.
    async fn answering(answer: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = vec![0; 4096];
            let read = stream.read(&mut request).await.unwrap();
            let request = String::from_utf8_lossy(&request[..read]).into_owned();
            assert!(request.starts_with(&format!("POST {HEARTBEAT_PATH} HTTP/1.1")));
            assert!(request.ends_with(r#""agentEpoch":3}"#), "{request}");
            stream.write_all(answer.as_bytes()).await.unwrap();
        });
        addr
    }

    fn beat() -> Heartbeat {
        Heartbeat {
            namespace: "ns".into(),
            node: "n1".into(),
            agent_epoch: 3,
        }
    }

    #[tokio::test]
    async fn the_heartbeat_answer_says_whether_the_leader_was_reached() {
        let second = Duration::from_secs(1);
        let leader = answering(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"leader\":true}",
        )
        .await;
        assert!(post_heartbeat(leader, &beat(), second).await.unwrap());
        let follower =
            answering("HTTP/1.1 200 OK\r\ncontent-length: 16\r\n\r\n{\"leader\":false}").await;
        assert!(!post_heartbeat(follower, &beat(), second).await.unwrap());
        let stranger = answering("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await;
        assert!(matches!(
            post_heartbeat(stranger, &beat(), second).await,
            Err(HeartbeatError::BadAnswer { .. })
        ));
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        assert!(matches!(
            post_heartbeat(closed, &beat(), second).await,
            Err(HeartbeatError::Unreachable { .. })
        ));
    }
}
