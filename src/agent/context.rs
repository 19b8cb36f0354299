//! What every task of a node's agent shares: the node's identity and address, its port
//! range, PostgreSQL's programs and credentials, the watched nodes and cluster, and whether
//! the node is live. It reads caches and hands out ports; it runs nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use k8s_openapi::NamespaceResourceScope;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;

use crate::api::database_cluster::{DatabaseRole, Durability, FailureDetection};
use crate::api::{DatabaseCluster, DatabaseNode, NodePhase, Shard};

use super::error::AgentError;
use super::fence_locks::FenceLocks;
use super::instance_reports::InstanceReports;
use super::liveness_record::LivenessRecord;
use super::postgres::{Access, Credentials, InstanceSettings, Toolchain};
use super::protocol::HeartbeatKey;
use super::role_set::RoleSet;

/// What every replica task of this node shares.
pub(crate) struct NodeContext {
    /// This node's name.
    pub node: String,
    /// The node's `spec.address`, the host of every endpoint it reports.
    pub address: String,
    /// The node's `spec.ports`.
    pub ports: (u16, u16),
    /// The agent's data folder.
    pub data_dir: std::path::PathBuf,
    /// PostgreSQL's programs.
    pub toolchain: Toolchain,
    /// The replica sets' passwords.
    pub credentials: Credentials,
    /// Settings of every instance (its access rules as the agent started: see
    /// [`NodeContext::instance_settings`]).
    pub settings: InstanceSettings,
    /// Whether this node proved its liveness recently enough.
    pub live: watch::Receiver<bool>,
    /// One lock per replica, held while its write fence is set or lifted (`fence_locks.rs`).
    pub(super) fence_locks: FenceLocks,
    /// The agent's API client for calls (not watches), with deadlines (`api_client.rs`).
    pub(super) client: Client,
    /// The node's namespace.
    pub(super) namespace: String,
    /// The node's DatabaseCluster.
    pub(super) cluster: String,
    /// The watched DatabaseNodes of the namespace.
    pub(super) nodes: Store<DatabaseNode>,
    /// The watched DatabaseClusters of the namespace.
    pub(super) clusters: Store<DatabaseCluster>,
    /// Ports held by this node's replicas (recorded ones included).
    pub(super) reserved_ports: Mutex<BTreeSet<u16>>,
    /// What each replica's instance runs with (`instance_reports.rs`).
    pub(super) instances: InstanceReports,
    /// Who may connect to the instances from elsewhere ([`NodeContext::refresh_access`]).
    pub(super) access: Mutex<Arc<Access>>,
    /// Liveness proven by the peers while the control plane is out of reach, and the
    /// promise this node gave them (`failsafe.rs`).
    pub(super) failsafe: LivenessRecord,
    /// How many renewed certificates were installed since the agent started
    /// (`certificates.rs`).
    pub(super) certificates: AtomicU64,
    /// The node's heartbeat key (`certificates.rs` reads it, the liveness reporter signs
    /// with it).
    pub(super) heartbeat_key: HeartbeatKey,
    /// The cluster's application roles and their passwords (`roles.rs`).
    pub(super) roles: Mutex<Option<Arc<RoleSet>>>,
}

impl NodeContext {
    /// An `Api` in the node's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The Shards of the node's namespace.
    pub fn shards(&self) -> Api<Shard> {
        self.api()
    }

    /// `address:port` of an instance of this node.
    pub fn endpoint(&self, port: u16) -> String {
        format!("{}:{port}", self.address)
    }

    /// Nodes the operator declared Offline, or that left the cluster.
    pub fn offline_nodes(&self) -> BTreeSet<String> {
        self.nodes
            .state()
            .iter()
            .filter(|n| {
                matches!(
                    n.status.as_ref().and_then(|s| s.phase),
                    Some(NodePhase::Offline | NodePhase::Decommissioned)
                )
            })
            .map(|n| n.name_any())
            .collect()
    }

    fn cluster(&self) -> Option<Arc<DatabaseCluster>> {
        self.clusters
            .get(&ObjectRef::new(&self.cluster).within(&self.namespace))
    }

    /// The cluster's durability policy, if it states one.
    pub fn durability(&self) -> Option<Durability> {
        self.cluster().and_then(|c| c.spec.durability.clone())
    }

    /// The cluster's failure-detection timings (the defaults if it states none).
    pub(super) fn failure_detection(&self) -> FailureDetection {
        self.cluster()
            .and_then(|c| c.spec.failure_detection.clone())
            .unwrap_or_default()
    }

    /// The cluster's `spec.roles`; `None` while the cluster is unknown.
    pub(super) fn declared_roles(&self) -> Option<Vec<DatabaseRole>> {
        self.cluster().map(|c| c.spec.roles.clone())
    }

    /// The cluster's application roles with their passwords, as last read by
    /// `roles::keep_read` (`None` before the first read: nothing may be dropped for want of
    /// it). The same `Arc` until they change.
    pub(super) fn roles(&self) -> Option<Arc<RoleSet>> {
        self.roles
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The cluster's `spec.postgresParameters` and the generation they are of (none while
    /// the cluster is unknown).
    pub(super) fn parameters(&self) -> (BTreeMap<String, String>, Option<i64>) {
        self.cluster()
            .map(|c| (c.spec.postgres_parameters.clone(), c.metadata.generation))
            .unwrap_or_default()
    }

    /// Who may connect to the node's instances from elsewhere, as last looked at by
    /// [`NodeContext::refresh_access`]. The same `Arc` until the rules change, so a replica
    /// task tells a change by pointer, not by comparing every node's address on every pass.
    pub(super) fn access(&self) -> Arc<Access> {
        self.access
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Looks at the access rules again (the dispatcher does, once per look at the shards): the
    /// addresses of the cluster's nodes (but decommissioned ones) for replication and the
    /// agents' sessions, the cluster's `spec.network.clientNetworks` for applications.
    pub(super) fn refresh_access(&self) {
        let nodes = self
            .nodes
            .state()
            .iter()
            .filter(|n| {
                n.spec.cluster == self.cluster
                    && n.status.as_ref().and_then(|s| s.phase) != Some(NodePhase::Decommissioned)
            })
            .map(|n| n.spec.address.clone())
            .chain([self.address.clone()])
            .collect();
        let cluster = self.cluster();
        let clients = cluster
            .as_ref()
            .and_then(|c| c.spec.network.clone())
            .and_then(|network| network.client_networks);
        let now = Access {
            nodes,
            clients,
            tls: self.settings.tls.is_some(),
            certificates: self.certificates_generation(),
            application_roles: cluster.is_some_and(|c| !c.spec.roles.is_empty()),
        };
        let mut access = self
            .access
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if **access != now {
            *access = Arc::new(now);
        }
    }

    /// How many renewed certificates were installed since the agent started.
    pub(super) fn certificates_generation(&self) -> u64 {
        self.certificates.load(Ordering::Relaxed)
    }

    /// Says that a renewed certificate was installed: the next look at the access rules
    /// reloads every instance, which reads it.
    pub(super) fn certificates_installed(&self) {
        self.certificates.fetch_add(1, Ordering::Relaxed);
    }

    /// The settings of an instance made now: the node's, with [`NodeContext::access`].
    pub(super) fn instance_settings(&self) -> InstanceSettings {
        InstanceSettings {
            access: Access::clone(&self.access()),
            ..self.settings.clone()
        }
    }

    /// The plan that last asked this node for a restart (`status.restart.plan`).
    pub(super) fn restart_requested(&self) -> Option<String> {
        let node = self
            .nodes
            .get(&ObjectRef::new(&self.node).within(&self.namespace))?;
        node.status
            .as_ref()?
            .restart
            .as_ref()
            .map(|r| r.plan.clone())
    }

    /// The lowest port of the node's range that no replica holds and that is free now (the
    /// last one is never an instance's).
    pub fn allocate_port(&self) -> Result<u16, AgentError> {
        let mut reserved = self
            .reserved_ports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The last port is the agent's own endpoint (`failsafe.rs`).
        let (first, last) = self.ports;
        let free = (first..last).find(|port| {
            !reserved.contains(port) && std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok()
        });
        match free {
            Some(port) => {
                reserved.insert(port);
                Ok(port)
            }
            None => Err(AgentError::NoFreePort {
                node: self.node.clone(),
                first,
                last,
            }),
        }
    }

    /// Gives a removed replica's port back.
    pub fn release_port(&self, port: u16) {
        self.reserved_ports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&port);
    }
}
