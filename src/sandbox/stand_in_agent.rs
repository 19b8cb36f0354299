//! A stand-in for a node agent that speaks the agents' protocol with the operator exactly —
//! heartbeats to the operator over HTTP, a per-node Lease renewed every 5 s as the durable
//! liveness record, replicas reported in `Shard.status.replicas` under the agent's own field
//! manager, in the role and at the epoch `Shard.status` asks for — but runs no PostgreSQL.
//! It lets the operator's integration tests and benchmarks run independently of the data
//! plane; it is never what `shardplane agent` runs. The protocol itself (heartbeat, Lease,
//! report) is `crate::agent::protocol`, shared with the real agent.

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client, ResourceExt};
use tokio::task::JoinHandle;

use crate::agent::protocol::{LivenessReporter, report_replica};
use crate::api::Shard;
use crate::api::shard::{ObservedReplica, ReplicaState};
use crate::protocol::Heartbeat;

/// How often the stand-in heartbeats and looks at its shards.
pub const TICK: Duration = Duration::from_millis(200);

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
            let liveness = LivenessReporter::new(operators, beat, leases);
            let reports = async {
                loop {
                    report_replicas(&shards, &node).await;
                    tokio::time::sleep(TICK).await;
                }
            };
            tokio::join!(liveness.run(|| TICK), reports);
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
        let report = desired.map(|d| ObservedReplica {
            node: node.to_owned(),
            role: d.role,
            state: ReplicaState::InSync,
            endpoint: Some(format!("127.0.0.1:{}", 20000 + epoch)),
            lag_bytes: Some(0),
            epoch: Some(epoch),
            received_lsn: None,
            last_seen_time: None,
        });
        if let Err(error) = report_replica(shards, &shard.name_any(), node, report.as_ref()).await {
            tracing::debug!(%error, "replica report not written");
        }
    }
}
