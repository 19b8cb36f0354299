//! The wire contract between Shardplane's processes — the operator, the node agents,
//! git-sync, `shardplane plan` and the stand-in agent — owned by none of them: the names
//! each writes and reads on Kubernetes objects (annotations, labels, finalizers, field
//! managers, Lease names), the heartbeat's path and body, and the one parser of `host:port`
//! endpoints. The shapes of the reports agents write are the `Shard` and `DatabaseNode`
//! status types in `crate::api`. No I/O and no decisions here.

mod endpoint;
mod liveness;
pub mod mac;
mod names;

pub use endpoint::{Endpoint, EndpointError};
pub use liveness::{
    HEARTBEAT_PATH, Heartbeat, HeartbeatAnswer, OPERATOR_LEASE, SignedHeartbeat, node_lease_name,
};
pub use names::*;
