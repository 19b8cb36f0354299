//! The certificate reconciler: every cluster has an authority (generated into `<cluster>-ca`
//! unless `spec.tls.caSecret` names one) and every node of it a certificate the authority
//! signed, naming the node's address (`crate::tls`). It issues a node's certificate when the
//! node has none, when its address changed, when the authority was replaced, and once two
//! thirds of its validity have passed; the agent installs it with a reload. Keys live only
//! in Secrets (labelled [`TLS_SECRET_LABEL`], owned by their node or cluster, so they go
//! with it) and in the nodes' files — never in a status, an Event or a log line.
//!
//! It only ever creates a Secret that does not exist, and updates only Secrets carrying its
//! label: a Secret of the same name that someone else made is left alone, and said so.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};

use super::caches::Caches;
use super::context::Context;
use crate::api::{DatabaseCluster, DatabaseNode};
use crate::tls::{
    AUTHORITY_KEY, Authority, CERTIFICATE_KEY, HEARTBEAT_KEY, NodeIdentity, PRIVATE_KEY_KEY,
    Renewal, TLS_SECRET_LABEL, authority_generated, authority_secret_name, certificate_duration,
    good_until, new_heartbeat_key, node_secret_name, secret_text,
};

/// How often every node's certificate is looked at.
const PERIOD: Duration = Duration::from_secs(2);
/// How long a supplied authority (`spec.tls.caSecret`, not watched) is used before it is
/// read again.
const SUPPLIED_AUTHORITY_TTL: Duration = Duration::from_secs(30);

/// Issues and renews certificates while this replica leads.
pub async fn run(ctx: Arc<Context>, caches: Caches) {
    let secrets = caches.tls_secrets.clone();
    let mut authorities = Authorities::default();
    let mut good = GoodCertificates::default();
    loop {
        for cluster in caches.clusters.state() {
            let Some(authority) = authorities.of(&ctx, &secrets, &cluster).await else {
                continue;
            };
            let namespace = cluster.namespace().unwrap_or_default();
            for node in caches.nodes.state() {
                if node.namespace().as_deref() == Some(namespace.as_str())
                    && node.spec.cluster == cluster.name_any()
                {
                    certify(&ctx, &secrets, &cluster, &node, &authority, &mut good).await;
                }
            }
        }
        tokio::time::sleep(PERIOD).await;
    }
}

/// The node certificates found good, so that a pass reads (and parses) a certificate only
/// when its Secret, the node's address or the authority changed, or its renewal is due.
#[derive(Default)]
struct GoodCertificates {
    /// By (namespace, node).
    checked: HashMap<(String, String), Good>,
}

/// What a certificate was found good for, and until when.
struct Good {
    /// The Secret's resource version.
    version: String,
    /// The node's address it names.
    address: String,
    /// The authority that signed it.
    authority: Arc<Authority>,
    /// When it is to be renewed.
    until: SystemTime,
}

impl GoodCertificates {
    /// Whether `node`'s certificate in `secret` was found good for its address and
    /// `authority`, and is so still at `now`.
    fn still(
        &self,
        node: &DatabaseNode,
        secret: &Secret,
        authority: &Arc<Authority>,
        now: SystemTime,
    ) -> bool {
        let key = (node.namespace().unwrap_or_default(), node.name_any());
        self.checked.get(&key).is_some_and(|good| {
            Some(&good.version) == secret.metadata.resource_version.as_ref()
                && good.address == node.spec.address
                && Arc::ptr_eq(&good.authority, authority)
                && now < good.until
        })
    }

    fn remember(
        &mut self,
        node: &DatabaseNode,
        secret: &Secret,
        authority: &Arc<Authority>,
        until: SystemTime,
    ) {
        let key = (node.namespace().unwrap_or_default(), node.name_any());
        let Some(version) = secret.metadata.resource_version.clone() else {
            return;
        };
        let good = Good {
            version,
            address: node.spec.address.clone(),
            authority: authority.clone(),
            until,
        };
        self.checked.insert(key, good);
    }
}

/// Each cluster's authority, read once per version of its Secret.
#[derive(Default)]
struct Authorities {
    /// By (namespace, Secret name): the Secret's resource version (or, for a supplied one,
    /// when it was read) and the authority it held.
    held: HashMap<(String, String), (Held, Arc<Authority>)>,
}

#[derive(Clone, PartialEq, Eq)]
enum Held {
    Version(String),
    ReadAt(Instant),
}

impl Authorities {
    /// `cluster`'s authority: generated (and stored) if the operator owns it and it is
    /// missing; `None` if it cannot be had now (said in the log).
    async fn of(
        &mut self,
        ctx: &Context,
        secrets: &Store<Secret>,
        cluster: &DatabaseCluster,
    ) -> Option<Arc<Authority>> {
        let namespace = cluster.namespace().unwrap_or_default();
        let name = authority_secret_name(cluster);
        let key = (namespace.clone(), name.clone());
        let secret = if authority_generated(cluster) {
            match secrets.get(&ObjectRef::new(&name).within(&namespace)) {
                Some(secret) => (*secret).clone(),
                None => generate_authority(ctx, cluster, &name).await?,
            }
        } else {
            if let Some((Held::ReadAt(at), authority)) = self.held.get(&key)
                && at.elapsed() < SUPPLIED_AUTHORITY_TTL
            {
                return Some(authority.clone());
            }
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
            match api.get_opt(&name).await {
                Ok(Some(secret)) => secret,
                Ok(None) => {
                    tracing::warn!(%namespace, cluster = %cluster.name_any(), secret = %name,
                        "spec.tls.caSecret names a Secret that does not exist: no node certificate is issued");
                    return None;
                }
                Err(error) => {
                    tracing::warn!(%error, %namespace, secret = %name, "cannot read the cluster's authority");
                    return None;
                }
            }
        };
        let held = match &secret.metadata.resource_version {
            Some(version) if authority_generated(cluster) => Held::Version(version.clone()),
            _ => Held::ReadAt(Instant::now()),
        };
        if let Some((version @ Held::Version(_), authority)) = self.held.get(&key)
            && *version == held
        {
            return Some(authority.clone());
        }
        let (Some(certificate), Some(private_key)) = (
            secret_text(&secret, CERTIFICATE_KEY),
            secret_text(&secret, PRIVATE_KEY_KEY),
        ) else {
            tracing::warn!(%namespace, secret = %name,
                "the cluster's authority Secret lacks tls.crt or tls.key: no node certificate is issued");
            return None;
        };
        match Authority::from_pem(&certificate, &private_key) {
            Ok(authority) => {
                let authority = Arc::new(authority);
                self.held.insert(key, (held, authority.clone()));
                Some(authority)
            }
            Err(error) => {
                tracing::warn!(%error, %namespace, secret = %name, "the cluster's authority cannot be used");
                None
            }
        }
    }
}

/// Generates `cluster`'s authority into Secret `name` (created, never overwritten).
async fn generate_authority(
    ctx: &Context,
    cluster: &DatabaseCluster,
    name: &str,
) -> Option<Secret> {
    let namespace = cluster.namespace().unwrap_or_default();
    let authority = match Authority::generate(&namespace, &cluster.name_any(), SystemTime::now()) {
        Ok(authority) => authority,
        Err(error) => {
            tracing::error!(%error, "cannot generate a certificate authority");
            return None;
        }
    };
    let secret = tls_secret(
        name,
        &cluster.name_any(),
        owner(cluster),
        authority.certificate_pem(),
        &authority.key_pem(),
        authority.certificate_pem(),
    );
    ctx.leader.ensure().ok()?;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    match api.create(&PostParams::default(), &secret).await {
        Ok(created) => {
            tracing::info!(%namespace, cluster = %cluster.name_any(), secret = %name, "generated the cluster's certificate authority");
            Some(created)
        }
        Err(error) => {
            tracing::warn!(%error, %namespace, secret = %name, "cannot store the cluster's certificate authority (a Secret of that name that is not the operator's is left alone)");
            None
        }
    }
}

/// Issues `node`'s certificate if it has none or needs a new one.
async fn certify(
    ctx: &Context,
    secrets: &Store<Secret>,
    cluster: &DatabaseCluster,
    node: &DatabaseNode,
    authority: &Arc<Authority>,
    good: &mut GoodCertificates,
) {
    let namespace = node.namespace().unwrap_or_default();
    let name = node_secret_name(&node.name_any());
    let held = secrets.get(&ObjectRef::new(&name).within(&namespace));
    let now = SystemTime::now();
    if let Some(secret) = &held
        && good.still(node, secret, authority, now)
    {
        return;
    }
    let data = |key: &str| held.as_ref().and_then(|secret| secret_text(secret, key));
    let heartbeat_key = data(HEARTBEAT_KEY);
    let verdict = good_until(
        data(CERTIFICATE_KEY).as_deref(),
        data(AUTHORITY_KEY).as_deref(),
        authority.certificate_pem(),
        &node.spec.address,
    );
    let reason = match (verdict, &heartbeat_key) {
        (Err(renewal), _) => format!("{renewal:?}"),
        (Ok(until), _) if now >= until => format!("{:?}", Renewal::Expiring),
        (Ok(_), None) => "no heartbeat key".to_owned(),
        (Ok(until), Some(_)) => {
            if let Some(secret) = &held {
                good.remember(node, secret, authority, until);
            }
            return;
        }
    };
    // The heartbeat key outlives certificates: a renewal must not make the node's
    // heartbeats count as forged until its agent has read the Secret again.
    let heartbeat_key = match heartbeat_key {
        Some(key) => key,
        None => match new_heartbeat_key() {
            Ok(key) => key,
            Err(error) => {
                tracing::error!(%error, "cannot make a heartbeat key");
                return;
            }
        },
    };
    let identity = NodeIdentity {
        namespace: namespace.clone(),
        cluster: cluster.name_any(),
        node: node.name_any(),
    };
    let issued = match authority.issue(
        &identity,
        &node.spec.address,
        now,
        certificate_duration(cluster),
    ) {
        Ok(issued) => issued,
        Err(error) => {
            tracing::warn!(%error, node = %node.name_any(), "cannot issue the node's certificate");
            return;
        }
    };
    let mut secret = tls_secret(
        &name,
        &cluster.name_any(),
        owner(node),
        &issued.certificate_pem,
        &issued.key_pem,
        &issued.authority_pem,
    );
    secret.data.get_or_insert_default().insert(
        HEARTBEAT_KEY.to_owned(),
        ByteString(heartbeat_key.into_bytes()),
    );
    if ctx.leader.ensure().is_err() {
        return;
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let written = if held.is_some() {
        // Ours (the label selected it): replaced as a whole.
        let params = PatchParams::apply("shardplane-operator").force();
        api.patch(&name, &params, &Patch::Apply(&secret))
            .await
            .map(drop)
    } else {
        // Created, never overwritten: a Secret of that name that is not ours stays as it is.
        api.create(&PostParams::default(), &secret).await.map(drop)
    };
    match written {
        Ok(()) => {
            tracing::info!(%namespace, node = %node.name_any(), secret = %name, %reason, "issued the node's certificate");
        }
        Err(error) => {
            tracing::warn!(%error, %namespace, node = %node.name_any(), secret = %name, "cannot store the node's certificate (a Secret of that name that is not the operator's is left alone)");
        }
    }
}

/// A `kubernetes.io/tls` Secret labelled as the operator's TLS Secret of `cluster`.
fn tls_secret(
    name: &str,
    cluster: &str,
    owner: Option<OwnerReference>,
    certificate: &str,
    key: &str,
    authority: &str,
) -> Secret {
    let bytes = |text: &str| ByteString(text.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([(TLS_SECRET_LABEL.to_owned(), cluster.to_owned())].into()),
            owner_references: Some(owner.into_iter().collect()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(
            [
                (CERTIFICATE_KEY.to_owned(), bytes(certificate)),
                (PRIVATE_KEY_KEY.to_owned(), bytes(key)),
                (AUTHORITY_KEY.to_owned(), bytes(authority)),
            ]
            .into(),
        ),
        ..Secret::default()
    }
}

/// An owner reference to `object`, so that its Secret is deleted with it.
fn owner<K: Resource<DynamicType = ()>>(object: &K) -> Option<OwnerReference> {
    object.controller_owner_ref(&())
}
