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
//! **Who may ask and answer.** The endpoint speaks HTTP over mutual TLS with the nodes'
//! certificates (`crate::tls`): it admits only a client presenting a certificate of the
//! cluster's authority, and confirms only a question from the node that certificate names
//! (its `shardplane://` identity, same namespace and cluster); the asker checks the peer's
//! certificate and address against the same authority. A forged *answer* could keep a
//! partitioned primary writing, a forged *question* would make a peer promise to wait: both
//! need a node's key. A renewed certificate is used from the next connection on.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::routing::post;
use axum::serve::IncomingStream;
use axum::{Json, Router};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, StatusCode};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use serde::{Deserialize, Serialize};

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{ClientConfig, ServerConfig};

use crate::api::Shard;
use crate::tls::{NodeIdentity, TlsListener, identity_of};

use super::certificates;
use super::context::NodeContext;
use super::error::AgentError;

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

/// The endpoint's TLS, as of the node's last installed certificate: rebuilt when a renewed
/// one was installed (`NodeContext::certificates_installed`), the previous kept if the new
/// one cannot be read.
struct EndpointTls {
    built: Mutex<(u64, Arc<ServerConfig>, Arc<ClientConfig>)>,
}

impl EndpointTls {
    fn new(ctx: &NodeContext) -> Result<Self, AgentError> {
        let (server, client) = certificates::endpoint_configs(ctx)?;
        Ok(EndpointTls {
            built: Mutex::new((ctx.certificates_generation(), server, client)),
        })
    }

    fn current(&self, ctx: &NodeContext) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        let generation = ctx.certificates_generation();
        if built.0 != generation {
            match certificates::endpoint_configs(ctx) {
                Ok((server, client)) => *built = (generation, server, client),
                Err(error) => {
                    tracing::warn!(%error, "the failsafe endpoint keeps its previous certificate")
                }
            }
        }
        (built.1.clone(), built.2.clone())
    }
}

/// The node that asks, as its certificate names it (`None`: a certificate without a node's
/// identity, which the verifier would not have admitted anyway).
#[derive(Clone, Debug)]
struct Asker(Option<NodeIdentity>);

impl Connected<IncomingStream<'_, TlsListener>> for Asker {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        let (_, session) = stream.io().get_ref();
        Asker(
            session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|certificate| identity_of(certificate)),
        )
    }
}

/// Serves the endpoint on the node's address at the last port of its range, for the life of
/// the agent. A node that cannot bind it confirms nobody (its peers then fence as before).
pub(crate) async fn serve(ctx: Arc<NodeContext>) {
    let tls = match EndpointTls::new(&ctx) {
        Ok(tls) => Arc::new(tls),
        Err(error) => {
            tracing::error!(%error, "the failsafe endpoint has no certificate; this node confirms no peer");
            return;
        }
    };
    let addr = (ctx.address.clone(), ctx.ports.1);
    let listener = match tokio::net::TcpListener::bind(addr.clone()).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(address = %addr.0, port = addr.1, %error, "the failsafe endpoint cannot listen; this node confirms no peer");
            return;
        }
    };
    let acceptor = {
        let ctx = ctx.clone();
        move || TlsAcceptor::from(tls.current(&ctx).0)
    };
    let listener = TlsListener::new(listener, "failsafe endpoint", acceptor);
    let app = Router::new()
        .route(FAILSAFE_PATH, post(confirm))
        .with_state(ctx);
    let service = app.into_make_service_with_connect_info::<Asker>();
    if let Err(error) = axum::serve(listener, service).await {
        tracing::error!(%error, "the failsafe endpoint stopped");
    }
}

async fn confirm(
    State(ctx): State<Arc<NodeContext>>,
    ConnectInfo(Asker(asker)): ConnectInfo<Asker>,
    Json(request): Json<Question>,
) -> Json<Answer> {
    if !asks_for_itself(asker.as_ref(), &ctx.namespace, &ctx.cluster, &request.node) {
        tracing::warn!(claimed = %request.node, certificate = ?asker, "failsafe question refused: the certificate is not the asking node's");
        return Json(Answer { confirmed: false });
    }
    let confirmed =
        ctx.failure_detection().failsafe && ctx.failsafe.control_plane_quiet(quiet(&ctx));
    if confirmed {
        ctx.failsafe.confirmed_now();
        tracing::debug!(peer = %request.node, "failsafe confirmed: the control plane is out of reach here too");
    }
    Json(Answer { confirmed })
}

/// Whether the certificate of `asker` names the node the question claims to come from, in
/// this node's namespace and cluster.
fn asks_for_itself(
    asker: Option<&NodeIdentity>,
    namespace: &str,
    cluster: &str,
    claimed: &str,
) -> bool {
    asker.is_some_and(|asker| {
        asker.namespace == namespace && asker.cluster == cluster && asker.node == claimed
    })
}

/// An HTTPS client presenting the node's certificate and checking the peers' against the
/// cluster's authority.
type PeerClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

fn peer_client(tls: &ClientConfig) -> PeerClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.enforce_http(false);
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_only()
        .enable_http1()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new()).build(https)
}

/// Asks the peers every half heartbeat interval while the control plane has been quiet
/// ([`quiet`]), recording the send time of every round all of them confirmed. Runs for the life of the
/// agent.
pub(crate) async fn ask_peers(ctx: &NodeContext, shards: &Store<Shard>) {
    let tls = match EndpointTls::new(ctx) {
        Ok(tls) => tls,
        Err(error) => {
            tracing::error!(%error, "no certificate to ask the peers with; the failsafe cannot prove this node's liveness");
            return;
        }
    };
    let mut client: Option<(Arc<ClientConfig>, PeerClient)> = None;
    loop {
        let interval = ctx.failure_detection().heartbeat_interval();
        if ctx.failure_detection().failsafe && ctx.failsafe.control_plane_quiet(quiet(ctx)) {
            let config = tls.current(ctx).1;
            if client
                .as_ref()
                .is_none_or(|(used, _)| !Arc::ptr_eq(used, &config))
            {
                client = Some((config.clone(), peer_client(&config)));
            }
            if let Some((_, http)) = &client {
                round(ctx, shards, http).await;
            }
        }
        tokio::time::sleep(interval / 2).await;
    }
}

/// Asks every peer once; records the round's send time if all of them confirmed.
async fn round(ctx: &NodeContext, shards: &Store<Shard>, http: &PeerClient) {
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
async fn ask(http: &PeerClient, peer: &str, node: &str, deadline: Duration) -> bool {
    let exchange = async {
        let body = serde_json::to_vec(&Question {
            node: node.to_owned(),
        })
        .ok()?;
        let request = Request::post(format!("https://{peer}{FAILSAFE_PATH}"))
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
    fn only_the_node_a_certificate_names_may_ask() {
        let n1 = NodeIdentity {
            namespace: "prod".into(),
            cluster: "orders".into(),
            node: "n1".into(),
        };
        assert!(asks_for_itself(Some(&n1), "prod", "orders", "n1"));
        assert!(!asks_for_itself(Some(&n1), "prod", "orders", "n2"));
        assert!(!asks_for_itself(Some(&n1), "prod", "payments", "n1"));
        assert!(!asks_for_itself(Some(&n1), "staging", "orders", "n1"));
        assert!(!asks_for_itself(None, "prod", "orders", "n1"));
    }

    #[test]
    fn an_ipv6_peer_is_bracketed() {
        assert_eq!(endpoint("fd00::7", 25119), "[fd00::7]:25119");
        assert_eq!(endpoint("10.0.0.7", 25119), "10.0.0.7:25119");
        assert_eq!(endpoint("db-1.example", 25119), "db-1.example:25119");
    }
}
