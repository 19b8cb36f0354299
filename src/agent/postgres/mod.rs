//! PostgreSQL instances as the agent runs them, one per shard replica: creation, start and
//! stop, quorum replication, promotion, rewind, the write fence, observed state, and copying
//! and verifying key ranges between instances. Every operation is idempotent or says why it
//! cannot be repeated; none decides *whether* to act — that is the operator's plan.

mod copy;
mod digest;
mod error;
mod fence;
mod instance;
mod parameters;
mod replication;
mod roles;
mod settings;
mod shared_memory;
mod sql;
mod status;
mod toolchain;
mod verify;

pub use copy::{
    CopyStats, KeyKind, ShardedTable, copy_range, pipe_copy, range_digest, verify_range,
};
pub use digest::RangeDigest;
pub use error::PostgresError;
pub(crate) use instance::connect;
pub use instance::{Instance, InstanceSpec, StopMode, Upstream};
pub use parameters::{EffectiveParameters, Refusal};
pub use replication::SyncQuorum;
pub use roles::{
    ObservedRole, RoleChange, RolePassword, RoleStatement, TableAccess, WantedRole, apply_roles,
    is_reserved_role, observe_roles, plan_roles,
};
pub use settings::{
    Access, CATCH_UP_RECEIVER_TIMEOUT, Credentials, InstanceSettings, NodeTlsPem, PeerTls,
    REPLICATION_USER, SUPERUSER, ServerTls, WalLevel,
};
pub use shared_memory::release_orphaned_segment;
pub(crate) use sql::quote_ident;
pub use status::{InstanceStatus, Role, StandbyStatus};
pub use toolchain::{OsUser, PG_BIN_ENV, Toolchain};
pub use verify::{HeldSnapshot, Side, track_changes, untrack_changes, verify_range_since};

/// A TCP port on 127.0.0.1 that was free a moment ago, for a new instance. Another program
/// may take it before the instance binds it; the start then fails with "could not bind" and
/// can be retried with a new port.
pub fn free_loopback_port() -> Result<u16, PostgresError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(PostgresError::NoFreePort)
}
