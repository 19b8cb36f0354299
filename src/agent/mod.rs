//! The node agent (`shardplane agent`) and its library: the PostgreSQL mechanics it carries
//! out on its node (`postgres`), the protocol it speaks with the operator (`protocol`), and
//! the agent itself — registration and liveness (`node`), self-fencing (`self_fence`), and one
//! task per shard replica (`replicas`) that does what `decide` says, all sharing the node's
//! `context`; every API call has a deadline (`api_client`). Which replicas a node runs, and in
//! which role, is the operator's decision (`Shard.status.desiredReplicas`); the agent only
//! carries it out safely.

mod api_client;
mod certificates;
pub mod config;
mod configuration;
mod context;
pub mod decide;
pub mod error;
mod failsafe;
mod fence_locks;
mod instance_reports;
mod liveness_record;
mod node;
pub mod postgres;
pub mod protocol;
pub mod record;
mod replicas;
mod reshard;
mod role_set;
mod roles;
mod schema_apply;
mod self_fence;
pub mod shard_schema;

pub use config::{AgentConfig, Registration};
pub use error::AgentError;
pub use node::run;
