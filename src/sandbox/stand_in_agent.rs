//! A stand-in for a node agent that speaks the agents' protocol with the operator exactly —
//! heartbeats to the operator over HTTP, a per-node Lease renewed every 5 s as the durable
//! liveness record, replicas reported in `Shard.status.replicas` under the agent's own field
//! manager, in the role and at the epoch `Shard.status` asks for — but runs no PostgreSQL.
//! It lets the operator's integration tests and benchmarks run before (and independently
//! of) the real data plane; it is never what `shardplane agent` runs.

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::api::Shard;
use crate::controller::{HEARTBEAT_PATH, Heartbeat, node_lease_name};

/// How often the stand-in heartbeats and looks at its shards.
pub const TICK: Duration = Duration::from_millis(200);
/// How often it renews its node Lease.
pub const LEASE_RENEWAL: Duration = Duration::from_secs(5);

/// A running stand-in agent; dropping it (or [`StandInAgent::kill`]) is the node dying.
pub struct StandInAgent {
    task: JoinHandle<()>,
}

impl StandInAgent {
    /// Starts the stand-in for `node` in `namespace`, heartbeating every operator replica in
    /// `operators`.
    pub fn start(client: Client, namespace: &str, node: &str, operators: Vec<SocketAddr>) -> Self {
        let namespace = namespace.to_string();
        let node = node.to_string();
        let task = tokio::spawn(async move {
            let shards: Api<Shard> = Api::namespaced(client.clone(), &namespace);
            let leases: Api<Lease> = Api::namespaced(client, &namespace);
            let beat = Heartbeat {
                namespace: namespace.clone(),
                node: node.clone(),
                agent_epoch: 1,
            };
            let mut last_renewal: Option<tokio::time::Instant> = None;
            loop {
                for operator in &operators {
                    if let Err(error) = post_heartbeat(*operator, &beat).await {
                        tracing::debug!(%error, %operator, "heartbeat not delivered");
                    }
                }
                if last_renewal.is_none_or(|at| at.elapsed() >= LEASE_RENEWAL) {
                    renew_lease(&leases, &node).await;
                    last_renewal = Some(tokio::time::Instant::now());
                }
                report_replicas(&shards, &node).await;
                tokio::time::sleep(TICK).await;
            }
        });
        StandInAgent { task }
    }

    /// The node dies: no more heartbeats, Lease renewals or reports.
    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for StandInAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reports every replica the operator wants on `node` as in sync, in the wanted role at the
/// shard's epoch; withdraws reports of replicas no longer wanted. Writes only changes.
async fn report_replicas(shards: &Api<Shard>, node: &str) {
    let Ok(list) = shards.list(&Default::default()).await else {
        return;
    };
    let manager = format!("shardplane-agent-{node}");
    for shard in list {
        let status = shard.status.clone().unwrap_or_default();
        let desired = status.desired_replicas.iter().find(|d| d.node == node);
        let reported = status.replicas.iter().find(|r| r.node == node);
        let epoch = status.primary.as_ref().map_or(0, |p| p.epoch);
        let unchanged = match (reported, desired) {
            (Some(r), Some(d)) => r.role == d.role && r.epoch == Some(epoch),
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            continue;
        }
        let replicas: Vec<_> = desired
            .map(|d| {
                json!({"node": node, "role": d.role, "state": "InSync", "lagBytes": 0, "epoch": epoch,
                       "endpoint": format!("127.0.0.1:{}", 20000 + epoch)})
            })
            .into_iter()
            .collect();
        let patch = json!({
            "apiVersion": "shardplane.io/v1alpha1", "kind": "Shard",
            "metadata": {"name": shard.name_any()},
            "status": {"replicas": replicas},
        });
        let params = PatchParams::apply(&manager).force();
        if let Err(error) = shards
            .patch_status(&shard.name_any(), &params, &Patch::Apply(patch))
            .await
        {
            tracing::debug!(%error, "replica report not written");
        }
    }
}

async fn renew_lease(leases: &Api<Lease>, node: &str) {
    let patch = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node_lease_name(node)},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 15, "renewTime": MicroTime(Timestamp::now())},
    });
    let params = PatchParams::apply(&format!("shardplane-agent-{node}")).force();
    if let Err(error) = leases
        .patch(&node_lease_name(node), &params, &Patch::Apply(patch))
        .await
    {
        tracing::debug!(%error, "node lease not renewed");
    }
}

/// A minimal HTTP/1.1 POST of a heartbeat.
async fn post_heartbeat(operator: SocketAddr, beat: &Heartbeat) -> std::io::Result<()> {
    let body = serde_json::to_string(beat)?;
    let mut stream = tokio::time::timeout(TICK, tokio::net::TcpStream::connect(operator)).await??;
    let request = format!(
        "POST {HEARTBEAT_PATH} HTTP/1.1\r\nHost: {operator}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(TICK, stream.read_to_end(&mut response)).await??;
    Ok(())
}
