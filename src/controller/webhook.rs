//! The validating admission webhook for Tables, served over TLS by every operator replica
//! (it needs no leadership: it only judges the request in front of it). On UPDATE it diffs
//! the old Table against the new one (`crate::schema`) and denies a refused change with its
//! message; on CREATE it denies what the CRD's CEL rules cannot express. Rewrites and drops
//! are admitted with a warning: they wait for approval later. The SchemaVersion controller
//! checks again against the newest SchemaVersion, for changes that bypassed the webhook.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::post;
use axum::{Json, Router};
use kube::ResourceExt;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use crate::api::Table;
use crate::schema::{self, ChangeClass, Diff};
use crate::tls::TlsListener;

use super::config::WebhookServing;
use crate::decide::schema::shape;

/// The path the API server posts Table admission reviews to.
pub const TABLE_WEBHOOK_PATH: &str = "/validate/tables";

/// Why the webhook cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The certificate file holds no usable certificate.
    #[error(
        "the admission webhook's certificate cannot be read: {0}; give a PEM certificate chain (tls.crt)"
    )]
    Certificate(String),
    /// The key file holds no usable key.
    #[error(
        "the admission webhook's private key cannot be read: {0}; give a PEM private key (tls.key)"
    )]
    Key(String),
    /// The certificate and key do not make a TLS configuration.
    #[error("the admission webhook's certificate and key are not usable together: {0}")]
    Tls(#[from] rustls::Error),
    /// The listen address is taken or not allowed.
    #[error("cannot listen on {addr} for the admission webhook: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The TLS configuration of `serving`'s certificate and key (HTTP/1.1 only).
pub fn tls_config(serving: &WebhookServing) -> Result<Arc<ServerConfig>, WebhookError> {
    let chain = CertificateDer::pem_slice_iter(serving.certificate_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WebhookError::Certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(WebhookError::Certificate(
            "no CERTIFICATE block found".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(serving.private_key_pem.as_bytes())
        .map_err(|e| WebhookError::Key(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Binds the webhook's address.
pub async fn bind(serving: &WebhookServing) -> Result<TcpListener, WebhookError> {
    TcpListener::bind(serving.listen)
        .await
        .map_err(|source| WebhookError::Listen {
            addr: serving.listen,
            source,
        })
}

/// Serves admission reviews on `listener` over TLS until the task is aborted.
pub async fn serve(listener: TcpListener, tls: Arc<ServerConfig>) {
    let app = Router::new().route(TABLE_WEBHOOK_PATH, post(review_table));
    let acceptor = TlsAcceptor::from(tls);
    let listener = TlsListener::new(listener, "admission webhook", move || acceptor.clone());
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "the admission webhook server stopped");
    }
}

async fn review_table(
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(error) => return Json(AdmissionResponse::invalid(error).into_review()),
    };
    let mut response = AdmissionResponse::from(&request);
    match judge(&request) {
        Ok(diff) => {
            if let Some(message) = diff.refusal_message() {
                tracing::info!(table = %request.name, namespace = ?request.namespace, %message, "refused a schema change");
                response = response.deny(message);
            } else {
                let warnings: Vec<String> = diff
                    .changes
                    .iter()
                    .filter(|c| c.class > ChangeClass::Online)
                    .map(|c| c.to_string())
                    .collect();
                response.warnings = (!warnings.is_empty()).then_some(warnings);
            }
        }
        Err(message) => response = response.deny(message),
    }
    Json(response.into_review())
}

/// The changes a request makes; the refusals of a new Table on CREATE.
fn judge(request: &AdmissionRequest<DynamicObject>) -> Result<Diff, String> {
    let table = |object: &Option<DynamicObject>| -> Result<Option<Table>, String> {
        object
            .as_ref()
            .map(|o| {
                serde_json::to_value(o)
                    .and_then(serde_json::from_value::<Table>)
                    .map_err(|e| format!("the object is not a Table this operator can read: {e}"))
            })
            .transpose()
    };
    let (old, new) = (table(&request.old_object)?, table(&request.object)?);
    Ok(match (&request.operation, old, new) {
        (Operation::Create, _, Some(new)) => schema::validate(shape(&new)),
        (Operation::Update, Some(old), Some(new)) if old.spec != new.spec => {
            schema::diff(&new.name_any(), shape(&old), shape(&new))
        }
        _ => Diff::default(),
    })
}
