//! How one operator process runs: what it watches, its identity in leader election, where
//! it listens, and the admission webhook's address and certificate.

use std::net::SocketAddr;
use std::time::Duration;

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// The namespace to watch; `None` watches every namespace.
    pub namespace: Option<String>,
    /// This replica's identity in leader election (a pod name, or host and pid).
    pub identity: String,
    /// Where the leader-election Lease lives.
    pub lease_namespace: String,
    /// How long a leader's Lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// How the leader election's own client reaches the API server (the server the
    /// reconcilers' client talks to). `None` shares the reconcilers' client — fine for
    /// tests; `shardplane operator` always sets it, so that no reconciler request can delay
    /// a renewal.
    pub api: Option<kube::Config>,
    /// Address of the metrics, health and heartbeat server.
    pub listen: SocketAddr,
    /// How often a waiting plan step is checked again.
    pub step_poll: Duration,
    /// The admission webhook's address and certificate; `None` serves no webhook.
    pub webhook: Option<WebhookServing>,
}

impl OperatorConfig {
    /// Defaults for a replica called `identity` whose Lease lives in `lease_namespace`.
    pub fn new(identity: impl Into<String>, lease_namespace: impl Into<String>) -> Self {
        OperatorConfig {
            namespace: None,
            identity: identity.into(),
            lease_namespace: lease_namespace.into(),
            lease_duration: Duration::from_secs(4),
            api: None,
            listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            step_poll: Duration::from_millis(200),
            webhook: None,
        }
    }
}

/// Where and with which certificate the webhook is served.
#[derive(Clone)]
pub struct WebhookServing {
    /// The address to listen on (the chart uses `0.0.0.0:9443`).
    pub listen: SocketAddr,
    /// The serving certificate and its chain, PEM; its names must include the address the
    /// API server calls (the webhook Service's DNS name).
    pub certificate_chain_pem: String,
    /// The certificate's private key, PEM.
    pub private_key_pem: String,
}

impl std::fmt::Debug for WebhookServing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookServing")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}
