//! A stand-in for one node agent, for the operator's integration tests and benchmarks: a
//! [`Fleet`] of one node, heartbeating every [`TICK`], its replicas in sync as soon as the
//! operator wants them. It speaks the agents' protocol exactly (heartbeats, the node Lease,
//! replica reports under the node's own field manager) but runs no PostgreSQL; it is never
//! what `shardplane agent` runs.

use std::net::SocketAddr;
use std::time::Duration;

use kube::Client;

use super::fleet::{Fleet, FleetConfig, ReplicaModel};

/// How often the stand-in heartbeats.
pub const TICK: Duration = Duration::from_millis(200);

/// A running stand-in agent; dropping it (or [`StandInAgent::kill`]) is the node dying.
pub struct StandInAgent {
    fleet: Fleet,
    node: String,
}

impl StandInAgent {
    /// Starts the stand-in for `node` in `namespace`, heartbeating every operator replica in
    /// `operators`.
    pub fn start(client: Client, namespace: &str, node: &str, operators: Vec<SocketAddr>) -> Self {
        let config = FleetConfig {
            model: ReplicaModel::InSync,
            heartbeat_interval: TICK,
            max_in_flight: 8,
        };
        let fleet = Fleet::start(client, namespace, vec![node.to_owned()], operators, config);
        StandInAgent {
            fleet,
            node: node.to_owned(),
        }
    }

    /// The node dies: no more heartbeats, Lease renewals or reports.
    pub fn kill(&self) {
        self.fleet.kill(&self.node);
    }
}
