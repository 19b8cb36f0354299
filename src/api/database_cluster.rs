//! `DatabaseCluster`: the topology (regions and zones), replication and durability, node
//! software version, placement, rebalancing, change-approval and failure-detection policy
//! of one sharded database. Written by users, through git.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, DNS_LABEL_PATTERN, OBJECT_NAME_PATTERN};

/// The desired shape and policies of one sharded database cluster.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "shardplane.io",
    version = "v1alpha1",
    kind = "DatabaseCluster",
    namespaced,
    status = "DatabaseClusterStatus",
    shortname = "dbc",
    category = "shardplane",
    doc = "A sharded SQL database cluster: its regions and zones, replication, software version and the policies the operator follows.",
    printcolumn(
        name = "RF",
        type_ = "integer",
        json_path = ".spec.replicationFactor",
        description = "Replicas per shard"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".spec.version",
        description = "Desired node software version"
    ),
    printcolumn(
        name = "Nodes",
        type_ = "integer",
        json_path = ".status.nodes",
        description = "Registered nodes"
    ),
    printcolumn(
        name = "Online",
        type_ = "integer",
        json_path = ".status.onlineNodes",
        description = "Nodes online"
    ),
    printcolumn(
        name = "Shards",
        type_ = "integer",
        json_path = ".status.shards",
        description = "Shards of all tables"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    validation = Rule::new("size(self.metadata.name) <= 63").message(
        "metadata.name must be at most 63 characters: a cluster's name is a label value on its Plans and certificate Secrets; choose a shorter name"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.durability) || self.durability.mode != 'Quorum' || self.durability.syncReplicas < self.replicationFactor",
        "message": "spec.durability.syncReplicas must be less than spec.replicationFactor: a primary can wait only for its own secondaries",
        "fieldPath": ".durability.syncReplicas"
    },
    {
        // The spread rule of `crate::plan::spread_limits`: a zone holds fewer replicas of a
        // shard than its quorum can lose (at least one), and so does a region once the
        // cluster spans 3 or more regions (and rf >= 3). Zones are at least one per region.
        "rule": "(self.replicationFactor >= 3 && size(self.regions) >= 3 ? size(self.regions) : self.regions.map(r, size(r.zones)).sum()) * (self.replicationFactor <= 2 ? 1 : self.replicationFactor - self.replicationFactor / 2 - 1) >= self.replicationFactor",
        "message": "spec.replicationFactor is more than spec.regions can hold: a zone holds at most one replica of a shard (two with a replication factor of 5 or 6, three with 7: fewer than a quorum), and a cluster of 3 or more regions holds no more in one region than in one zone; declare more zones or regions in spec.regions, or lower spec.replicationFactor",
        "fieldPath": ".replicationFactor"
    }
]))]
pub struct DatabaseClusterSpec {
    /// The regions the cluster spans, each with its zones. Losing one zone never loses a
    /// shard's quorum; losing one region does not either when the replication factor is at
    /// least 3 across at least 3 regions.
    #[schemars(length(min = 1, max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub regions: Vec<Region>,
    /// How many replicas each shard has (one primary, the rest secondaries), 1 to 7; no more
    /// than `regions` can hold, since a zone holds fewer replicas of a shard than its quorum
    /// can lose (at least one), and so does a region once there are 3 or more.
    #[schemars(range(min = 1, max = 7))]
    pub replication_factor: i32,
    /// The node software version the cluster should run (for example `15.8-shardplane.0.1.0`);
    /// changing it starts a rolling upgrade, node by node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[0-9A-Za-z]([-0-9A-Za-z._+]*[0-9A-Za-z])?$")
    )]
    pub version: Option<String>,
    /// How commits wait for secondaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<Durability>,
    /// When and how fast the operator moves shards to even out load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalancing: Option<RebalancingPolicy>,
    /// Which plans run without a human's approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalPolicy>,
    /// How fast a dead node is detected and its replicas replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_detection: Option<FailureDetection>,
    /// PostgreSQL server parameters applied to every instance (for example `work_mem: 8MB`,
    /// `shared_buffers: 256MB`). Reloadable ones take effect at once; ones that need a
    /// restart (`shared_buffers`, `max_connections`, ...) through a rolling restart plan. A
    /// value PostgreSQL refuses changes nothing and is named in the nodes' status and the
    /// cluster's `ParametersApplied` condition. Parameters Shardplane manages itself
    /// (addresses, ports, replication, durability, the write fence, the configuration files)
    /// are refused: see `MANAGED_PARAMETERS`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.all(k, !(k in ['listen_addresses', 'port', 'unix_socket_directories', 'data_directory', 'config_file', 'hba_file', 'ident_file', 'external_pid_file', 'include', 'include_dir', 'include_if_exists', 'wal_level', 'hot_standby', 'hot_standby_feedback', 'max_wal_senders', 'max_replication_slots', 'wal_log_hints', 'wal_receiver_status_interval', 'synchronous_standby_names', 'synchronous_commit', 'primary_conninfo', 'primary_slot_name', 'restore_command', 'default_transaction_read_only', 'fsync', 'password_encryption', 'ssl', 'ssl_cert_file', 'ssl_key_file', 'ssl_ca_file']) && !k.startsWith('recovery_'))",
            "message": "spec.postgresParameters may not set a parameter Shardplane manages itself: listen_addresses, port, unix_socket_directories, data_directory, config_file, hba_file, ident_file, external_pid_file, include, include_dir, include_if_exists, wal_level, hot_standby, hot_standby_feedback, max_wal_senders, max_replication_slots, wal_log_hints, wal_receiver_status_interval, synchronous_standby_names, synchronous_commit, primary_conninfo, primary_slot_name, restore_command, default_transaction_read_only, fsync, password_encryption, ssl, ssl_cert_file, ssl_key_file, ssl_ca_file, or any recovery_* parameter"
        },
        {
            "rule": "self.all(k, k.matches('^[a-z_][a-z0-9_]*([.][a-z_][a-z0-9_]*)?$'))",
            "message": "spec.postgresParameters has an invalid parameter name: names are lower-case letters, digits and underscores, with one dot for an extension parameter such as auto_explain.log_min_duration"
        },
        {
            "rule": "self.all(k, !self[k].matches('[\\x00-\\x1f]'))",
            "message": "spec.postgresParameters values must be one line without control characters"
        }
    ]))]
    #[schemars(extend("maxProperties" = 256, "additionalProperties" = {"type": "string", "maxLength": 1024}))]
    pub postgres_parameters: std::collections::BTreeMap<String, String>,
    /// The Secret (in this namespace) with the PostgreSQL superuser and replication
    /// credentials (keys `superuser-password`, `replication-password`). Passwords never
    /// appear in any resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub credentials_secret: Option<String>,
    /// Where sessions may reach the cluster's instances from. Replication and the agents'
    /// own sessions (copies, subscriptions, checks) are admitted only from the addresses of
    /// the cluster's nodes, whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<ClusterNetwork>,
    /// The cluster's certificates. Every instance serves TLS with its node's certificate;
    /// sessions from other hosts must use it (`hostssl`), and standbys, copies and
    /// subscriptions check the server with `sslmode=verify-full` against the cluster's
    /// authority. Unset: the operator generates the authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTls>,
    /// The cluster's application roles: the agents create each one on every shard's primary
    /// (standbys get it by replication), set its password from its Secret, grant it exactly
    /// what `access` says on its `tables` and nothing else, change it when this changes and
    /// drop it when it is removed. Applications and the routing library log in as one of
    /// them; once one is declared, the superuser is refused from client networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub roles: Vec<DatabaseRole>,
}

/// One application role of the cluster (a PostgreSQL login role on every shard).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseRole {
    /// The role's name, a plain PostgreSQL identifier: lower-case letters, digits and
    /// underscores, starting with a letter or underscore, at most 63 characters; not the
    /// superuser (`postgres`), the replication role (`replicator`), a name PostgreSQL
    /// reserves (`public`, `none`, ...) or a `pg_` name.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z_][a-z0-9_]*$"))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "!(self in ['postgres', 'replicator', 'public', 'none', 'current_role', 'current_user', 'session_user']) && !self.startsWith('pg_')",
            "message": "spec.roles[].name may not be postgres (the superuser), replicator (the replication role), public, none, current_role, current_user, session_user or start with pg_"
        }
    ]))]
    pub name: String,
    /// The Secret (in this namespace) whose key `password` holds the role's password. The
    /// agents read it (so it must be one of the Secrets they may read, the chart's
    /// `agent.credentialsSecrets`) and set a changed password within about ten seconds.
    #[schemars(length(min = 1, max = 253))]
    pub password_secret: String,
    /// What the role may do on its tables: `ReadWrite` (SELECT, INSERT, UPDATE, DELETE) or
    /// `ReadOnly` (SELECT). Never DDL, TRUNCATE, ownership or any role attribute.
    pub access: RoleAccess,
    /// The Tables (of this cluster) the role may use; empty: every table of the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    #[schemars(extend("x-kubernetes-list-type" = "set", "items" = {"type": "string", "minLength": 1, "maxLength": 63}))]
    pub tables: Vec<String>,
}

/// What an application role may do on its tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
pub enum RoleAccess {
    /// SELECT, INSERT, UPDATE and DELETE.
    ReadWrite,
    /// SELECT only.
    ReadOnly,
}

/// Where the cluster's certificate authority comes from and how long node certificates
/// live.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterTls {
    /// A Secret in this namespace holding the authority that signs the nodes' certificates
    /// (`tls.crt` and `tls.key`, the layout cert-manager writes for a CA Certificate). The
    /// operator only reads it. Unset: the operator generates an authority into
    /// `<cluster>-ca` once. Replacing the authority re-issues every node's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub ca_secret: Option<String>,
    /// How long a node certificate is valid, in seconds (default 7,776,000: 90 days). The
    /// operator issues a new one once two thirds of it have passed; the agent installs it
    /// with a reload, so no session or write is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 3600, max = 315360000))]
    pub certificate_duration_seconds: Option<i64>,
}

/// Where application sessions may reach the cluster's instances from (`pg_hba.conf`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetwork {
    /// The networks application sessions may come from, in CIDR notation (`10.0.0.0/8`,
    /// `fd00::/8`, `192.0.2.7/32`). Unset: from any address (with the password, as every
    /// session); empty: from none but the node itself. Changes are applied by a reload, with
    /// no restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "set", "items" = {
        "type": "string",
        "maxLength": 43,
        "x-kubernetes-validations": [{
            "rule": "isCIDR(self)",
            "message": "must be a network in CIDR notation, such as 10.0.0.0/8, fd00::/8 or 192.0.2.7/32"
        }]
    }))]
    pub client_networks: Option<Vec<String>>,
}

/// Parameters the agent sets itself, which `spec.postgresParameters` may not set (nor any
/// `recovery_*` parameter): addresses and ports, the files the configuration comes from,
/// replication, durability (`synchronous_*`) and the write fence
/// (`default_transaction_read_only`). The CRD's rule lists the same names (a test checks).
pub const MANAGED_PARAMETERS: &[&str] = &[
    "listen_addresses",
    "port",
    "unix_socket_directories",
    "data_directory",
    "config_file",
    "hba_file",
    "ident_file",
    "external_pid_file",
    "include",
    "include_dir",
    "include_if_exists",
    "wal_level",
    "hot_standby",
    "hot_standby_feedback",
    "max_wal_senders",
    "max_replication_slots",
    "wal_log_hints",
    "wal_receiver_status_interval",
    "synchronous_standby_names",
    "synchronous_commit",
    "primary_conninfo",
    "primary_slot_name",
    "restore_command",
    "default_transaction_read_only",
    "fsync",
    "password_encryption",
    "ssl",
    "ssl_cert_file",
    "ssl_key_file",
    "ssl_ca_file",
];

/// Whether Shardplane manages parameter `name` itself.
pub fn is_managed_parameter(name: &str) -> bool {
    MANAGED_PARAMETERS.contains(&name) || name.starts_with("recovery_")
}

/// One region of the cluster and its zones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct Region {
    /// The region's name, as nodes report it (for example `eu-west`).
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))]
    pub name: String,
    /// The zones (failure domains) inside the region, named like regions (for example
    /// `eu-west-a`).
    #[schemars(
        length(min = 1, max = 16),
        inner(length(min = 1, max = 63), regex(pattern = DNS_LABEL_PATTERN))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub zones: Vec<String>,
}

/// How commits wait for secondaries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct Durability {
    /// `Async`: commits return at once, a failover may lose the last commits. `Quorum`:
    /// commits wait for `syncReplicas` secondaries (`ANY k (...)`), so no acknowledged write
    /// is lost by a failover.
    pub mode: DurabilityMode,
    /// With `Quorum`: how many secondaries each commit waits for; less than the replication
    /// factor.
    #[serde(default = "default_sync_replicas")]
    #[schemars(range(min = 1, max = 6))]
    pub sync_replicas: i32,
}

fn default_sync_replicas() -> i32 {
    1
}

/// Whether commits wait for secondaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
pub enum DurabilityMode {
    /// Commits do not wait for secondaries.
    Async,
    /// Commits wait for a quorum of secondaries.
    Quorum,
}

/// When and how fast the operator moves shards to even out load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct RebalancingPolicy {
    /// Whether the operator plans rebalancing on its own (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The tolerated deviation of a node's bytes and shard count from the mean, in percent
    /// of the mean (default 5). A cluster inside it yields an empty plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_imbalance_percent: Option<i32>,
    /// How many replica moves may touch one node at a time (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub max_concurrent_moves_per_node: Option<i32>,
    /// How many replica moves may run in the whole cluster at a time (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub max_concurrent_moves: Option<i32>,
}

/// Which plans run without a human's approval, by risk class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalPolicy {
    /// Plans that lose no availability (moves, online DDL): `Automatic` (default) or
    /// `Manual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe: Option<Approval>,
    /// Plans that briefly disrupt clients (primary transfers, write fences, restarts):
    /// `Automatic` or `Manual` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruptive: Option<Approval>,
    /// Plans that destroy data (dropping a column or a table): always `Manual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self == 'Manual'", "message": "spec.approval.destructive must be Manual: destructive plans never run without approval"}
    ]))]
    pub destructive: Option<Approval>,
}

/// Whether a plan needs a human's approval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
pub enum Approval {
    /// The plan runs as soon as it is made.
    Automatic,
    /// The plan waits until it is approved, by patching the Plan or by an annotation with
    /// its hash on the target object.
    Manual,
}

/// How fast a dead node is detected and its replicas replaced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = super::describe_by_field)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.heartbeatIntervalMs < self.suspectAfterMs && self.suspectAfterMs < self.deadAfterMs",
        "message": "spec.failureDetection must satisfy heartbeatIntervalMs < suspectAfterMs < deadAfterMs"
    }
]))]
pub struct FailureDetection {
    /// How often each agent reports that its node is alive, in milliseconds (default 500).
    #[serde(default = "default_heartbeat_ms")]
    #[schemars(range(min = 100, max = 60000))]
    pub heartbeat_interval_ms: i64,
    /// Silence after which a node is suspect (no new primaries placed on it), in
    /// milliseconds (default 1000).
    #[serde(default = "default_suspect_ms")]
    #[schemars(range(min = 200, max = 600000))]
    pub suspect_after_ms: i64,
    /// Silence after which a node is dead and its primaries fail over, in milliseconds
    /// (default 1500: three missed heartbeats, and detection within 2 s).
    #[serde(default = "default_dead_ms")]
    #[schemars(range(min = 300, max = 3600000))]
    pub dead_after_ms: i64,
    /// How long a dead node's replicas wait before they are re-created elsewhere, in
    /// seconds (default 300), so a node that merely restarts does not cause a copy.
    #[serde(default = "default_replace_after_s")]
    #[schemars(range(min = 0, max = 604800))]
    pub replace_replicas_after_seconds: i64,
    /// Whether a primary keeps taking writes while nobody can reach the control plane, as
    /// long as every other replica of its shards confirms it (default true; Patroni's
    /// failsafe mode). Off: every primary that cannot prove its liveness to the control plane
    /// fences its writes after `suspectAfterMs`, even when the control plane is down for all.
    #[serde(default = "default_failsafe")]
    pub failsafe: bool,
}

impl FailureDetection {
    /// `heartbeatIntervalMs` as a duration (a negative value as none).
    pub fn heartbeat_interval(&self) -> std::time::Duration {
        millis(self.heartbeat_interval_ms)
    }

    /// `suspectAfterMs` as a duration.
    pub fn suspect_after(&self) -> std::time::Duration {
        millis(self.suspect_after_ms)
    }

    /// `deadAfterMs` as a duration.
    pub fn dead_after(&self) -> std::time::Duration {
        millis(self.dead_after_ms)
    }
}

fn millis(value: i64) -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(value).unwrap_or(0))
}

impl Default for FailureDetection {
    fn default() -> Self {
        FailureDetection {
            heartbeat_interval_ms: default_heartbeat_ms(),
            suspect_after_ms: default_suspect_ms(),
            dead_after_ms: default_dead_ms(),
            replace_replicas_after_seconds: default_replace_after_s(),
            failsafe: default_failsafe(),
        }
    }
}

fn default_heartbeat_ms() -> i64 {
    500
}
fn default_suspect_ms() -> i64 {
    1000
}
fn default_dead_ms() -> i64 {
    1500
}
fn default_replace_after_s() -> i64 {
    300
}
fn default_failsafe() -> bool {
    true
}

/// What the operator observes of the cluster as a whole.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, with reasons a user can act on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Registered nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<i32>,
    /// Nodes whose phase is Online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online_nodes: Option<i32>,
    /// Shards of all tables in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<i32>,
    /// Tables in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<i32>,
    /// Plans not yet finished (awaiting approval or running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_plans: Option<i32>,
    /// The lowest software version any node runs, while a rolling upgrade is under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_node_version: Option<String>,
}
