//! Failsafe: a primary keeps taking writes while nobody can reach the control plane, as long
//! as every other replica of its shards confirms it is still the one they follow (Patroni's
//! failsafe mode is the anchor). API servers restart — upgrades, etcd elections — and a
//! control plane that is down for everyone cannot fail anything over, so it must not stop
//! the database either.
//!
//! **The rule.** A node whose liveness the control plane has not confirmed for one and a half
//! heartbeat intervals asks, every half interval, each *peer* — every other node holding a replica of a
//! shard this node is the primary of — over the peers' agent endpoint (the last port of the
//! node's range, on its address). A peer confirms only while it cannot reach the control
//! plane either (its own last proof is as old): when the control plane works for
//! the peer, the node's trouble is its own (a partition) and fencing wins, as before. When
//! every peer confirmed, the send time of that round counts as a proof of liveness like a
//! heartbeat's: the node stays live (its primaries unfenced) until that instant plus
//! `suspectAfterMs`.
//!
//! **Why two primaries cannot both write.** A peer that confirmed at instant `c` promotes
//! nothing before `c + suspectAfterMs + heartbeatIntervalMs`, on its own clock. The node's
//! proof from that round is the round's send time `s ≤ c`, and it fences once its newest proof
//! is `suspectAfterMs` old, so by `s + suspectAfterMs` — before the peer may promote. A node
//! can be live by failsafe only while *every* peer confirms, so a single peer that stops
//! confirming (because it reaches the control plane again, and may be told to promote) ends
//! the node's writes within `suspectAfterMs`. Only durations on each host's monotonic clock
//! are compared, never clocks of two hosts.
//!
//! The cluster's `spec.failureDetection.failsafe: false` turns it off: then a primary that
//! cannot prove its liveness to the control plane fences, whatever its peers see.
//!
//! Confirmations are plain HTTP on the cluster's network until the agents' endpoints get TLS
//! (issue #14's certificates): a forged *request* only makes a peer promise to wait; a forged
//! *answer* could keep a partitioned primary writing, so the endpoint belongs on a network
//! only the cluster's nodes reach.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use serde::{Deserialize, Serialize};

use crate::api::Shard;

use super::context::NodeContext;

/// The agents' failsafe endpoint.
pub const FAILSAFE_PATH: &str = "/v1/failsafe";

/// A node's request to a peer: "do you still follow me?"
#[derive(Debug, Serialize, Deserialize)]
struct Question {
    /// The asking node.
    node: String,
}

/// A peer's answer.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    /// Whether it confirms (and so promises not to promote for a while).
    confirmed: bool,
}

/// How long a node that confirmed a peer waits before it promotes anything.
pub(crate) fn promise(ctx: &NodeContext) -> Duration {
    let detection = ctx.failure_detection();
    detection.suspect_after() + detection.heartbeat_interval()
}

/// How long the control plane must have been silent for a node before it asks its peers, or
/// confirms one: one and a half heartbeat intervals. A proof is a heartbeat's send time, so
/// while the control plane answers it is never older than one interval and an answer's
/// round trip. A peer confirms within 1.5 intervals of an outage's start, while the asking
/// node's last proof may lapse `suspectAfterMs − heartbeatIntervalMs` after it: with 200 /
/// 600 ms in time, with the defaults (500 / 1000 ms) possibly not (docs/dataplane.md,
/// "Failsafe").
fn quiet(ctx: &NodeContext) -> Duration {
    ctx.failure_detection().heartbeat_interval() * 3 / 2
}

/// `host:port`, with an IPv6 address in brackets.
fn endpoint(host: &str, port: impl std::fmt::Display) -> String {
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Serves the endpoint on the node's address at the last port of its range, for the life of
/// the agent. A node that cannot bind it confirms nobody (its peers then fence as before).
pub(crate) async fn serve(ctx: Arc<NodeContext>) {
    let addr = (ctx.address.clone(), ctx.ports.1);
    let listener = match tokio::net::TcpListener::bind(addr.clone()).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(address = %addr.0, port = addr.1, %error, "the failsafe endpoint cannot listen; this node confirms no peer");
            return;
        }
    };
    let app = Router::new()
        .route(FAILSAFE_PATH, post(confirm))
        .with_state(ctx);
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "the failsafe endpoint stopped");
    }
}

async fn confirm(
    State(ctx): State<Arc<NodeContext>>,
    Json(request): Json<Question>,
) -> Json<Answer> {
    let confirmed =
        ctx.failure_detection().failsafe && ctx.failsafe.control_plane_quiet(quiet(&ctx));
    if confirmed {
        ctx.failsafe.confirmed_now();
        tracing::debug!(peer = %request.node, "failsafe confirmed: the control plane is out of reach here too");
    }
    Json(Answer { confirmed })
}

/// Asks the peers every half heartbeat interval while the control plane has been quiet
/// ([`quiet`]), recording the send time of every round all of them confirmed. Runs for the life of the
/// agent.
pub(crate) async fn ask_peers(ctx: &NodeContext, shards: &Store<Shard>) {
    let http = {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector)
    };
    loop {
        let interval = ctx.failure_detection().heartbeat_interval();
        if ctx.failure_detection().failsafe && ctx.failsafe.control_plane_quiet(quiet(ctx)) {
            round(ctx, shards, &http).await;
        }
        tokio::time::sleep(interval / 2).await;
    }
}

/// Asks every peer once; records the round's send time if all of them confirmed.
async fn round(
    ctx: &NodeContext,
    shards: &Store<Shard>,
    http: &Client<HttpConnector, Full<Bytes>>,
) {
    let Some(peers) = peers(ctx, shards) else {
        return;
    };
    let sent = Instant::now();
    let deadline = ctx.failure_detection().suspect_after();
    let answers = futures::future::join_all(
        peers
            .iter()
            .map(|peer| ask(http, peer, &ctx.node, deadline)),
    )
    .await;
    let refused: Vec<&String> = peers
        .iter()
        .zip(&answers)
        .filter(|(_, confirmed)| !**confirmed)
        .map(|(peer, _)| peer)
        .collect();
    if refused.is_empty() {
        ctx.failsafe.peers_proved(sent);
    } else {
        tracing::debug!(?refused, "failsafe not confirmed by every peer");
    }
}

/// One peer's answer within `deadline`; anything but a confirmation is a refusal.
async fn ask(
    http: &Client<HttpConnector, Full<Bytes>>,
    peer: &str,
    node: &str,
    deadline: Duration,
) -> bool {
    let exchange = async {
        let body = serde_json::to_vec(&Question {
            node: node.to_owned(),
        })
        .ok()?;
        let request = Request::post(format!("http://{peer}{FAILSAFE_PATH}"))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .ok()?;
        let response = http.request(request).await.ok()?;
        if response.status() != StatusCode::OK {
            return None;
        }
        let body = response.into_body().collect().await.ok()?.to_bytes();
        serde_json::from_slice::<Answer>(&body).ok()
    };
    matches!(
        tokio::time::timeout(deadline, exchange).await,
        Ok(Some(Answer { confirmed: true }))
    )
}

/// The endpoints (`address:port`) of every other node holding a replica (wanted or
/// reported) of a shard this node is the primary of; `None` when there is no such shard or a
/// peer's node is unknown (then nothing can be proven).
fn peers(ctx: &NodeContext, shards: &Store<Shard>) -> Option<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for shard in shards.state() {
        let Some(status) = shard.status.as_ref() else {
            continue;
        };
        if status.primary.as_ref().is_none_or(|p| p.node != ctx.node) {
            continue;
        }
        names.extend(status.desired_replicas.iter().map(|r| r.node.clone()));
        names.extend(status.replicas.iter().map(|r| r.node.clone()));
    }
    names.remove(&ctx.node);
    if names.is_empty() {
        return None;
    }
    let nodes = ctx.nodes.state();
    names
        .iter()
        .map(|name| {
            let node = nodes.iter().find(|n| n.name_any() == *name)?;
            Some(endpoint(&node.spec.address, node.spec.ports.last))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_peer_is_bracketed() {
        assert_eq!(endpoint("fd00::7", 25119), "[fd00::7]:25119");
        assert_eq!(endpoint("10.0.0.7", 25119), "10.0.0.7:25119");
        assert_eq!(endpoint("db-1.example", 25119), "db-1.example:25119");
    }
}
