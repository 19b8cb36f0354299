//! The push webhook: `POST /hooks/{namespace}/{name}` with GitHub's `X-Hub-Signature-256:
//! sha256=<hex HMAC-SHA256 of the body>` header, keyed by the GitSync's webhook Secret
//! (key `secret`). A verified request triggers an immediate sync of that GitSync; the body
//! itself is not trusted for anything else (the sync fetches the branch itself).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use kube::Client;
use kube::api::Api;
use tokio::sync::mpsc;

use super::Target;
use super::source::secret_data;
use crate::api::GitSync;
use crate::protocol::mac::{sign_hex, verify_hex};

/// The header carrying the signature, as GitHub, Gitea and Forgejo send it.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// The key of the webhook Secret that holds the HMAC key.
pub const SECRET_KEY: &str = "secret";

/// What the webhook handler needs.
#[derive(Clone)]
struct WebhookState {
    client: Client,
    namespaces: Vec<String>,
    triggers: mpsc::Sender<Target>,
}

/// The webhook's routes (and `GET /healthz` for probes); verified requests are sent to
/// `triggers`. `namespaces` empty means
/// every namespace.
pub fn router(client: Client, namespaces: Vec<String>, triggers: mpsc::Sender<Target>) -> Router {
    Router::new()
        .route("/hooks/{namespace}/{name}", post(receive))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(WebhookState {
            client,
            namespaces,
            triggers,
        })
}

async fn receive(
    State(state): State<WebhookState>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    if !state.namespaces.is_empty() && !state.namespaces.contains(&namespace) {
        return (StatusCode::NOT_FOUND, "no such GitSync\n");
    }
    let api = Api::<GitSync>::namespaced(state.client.clone(), &namespace);
    let Ok(Some(object)) = api.get_opt(&name).await else {
        return (StatusCode::NOT_FOUND, "no such GitSync\n");
    };
    let Some(secret) = object.spec.webhook_secret_ref else {
        return (StatusCode::NOT_FOUND, "this GitSync has no webhook\n");
    };
    let key = match secret_data(&state.client, &namespace, &secret.name).await {
        Ok(data) => data.get(SECRET_KEY).cloned(),
        Err(error) => {
            tracing::warn!(%error, "webhook secret unreadable");
            None
        }
    };
    let Some(key) = key else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "webhook secret unreadable\n",
        );
    };
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !verify(key.as_bytes(), &body, signature) {
        tracing::warn!(%namespace, %name, "webhook signature refused");
        return (StatusCode::UNAUTHORIZED, "signature does not verify\n");
    }
    match state.triggers.send(Target { namespace, name }).await {
        Ok(()) => (StatusCode::ACCEPTED, "sync triggered\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "git-sync is stopping\n"),
    }
}

/// `sha256=<hex>`: the signature header value for `body` under `key` (as a forge sends it).
pub fn sign(key: &[u8], body: &[u8]) -> String {
    format!("sha256={}", sign_hex(key, body))
}

/// Whether `header` is `sha256=<hex>` of `body` under `key`, compared in constant time.
pub fn verify(key: &[u8], body: &[u8], header: &str) -> bool {
    header
        .strip_prefix("sha256=")
        .is_some_and(|signature| verify_hex(key, body, signature))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_the_same_key_and_body() {
        let header = sign(b"key", b"{\"ref\":\"refs/heads/main\"}");
        assert!(header.starts_with("sha256=") && header.len() == 7 + 64);
        assert!(verify(b"key", b"{\"ref\":\"refs/heads/main\"}", &header));
        assert!(!verify(b"other", b"{\"ref\":\"refs/heads/main\"}", &header));
        assert!(!verify(b"key", b"{\"ref\":\"refs/heads/evil\"}", &header));
        assert!(!verify(b"key", b"", ""));
        assert!(!verify(b"key", b"x", "sha256=zz"));
        assert!(!verify(b"key", b"x", &header.replace("sha256=", "sha1=")));
    }

    #[test]
    fn known_vector_of_github_docs() {
        // From GitHub's "Validating webhook deliveries".
        assert_eq!(
            sign(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }
}
