//! The node agent's library: the PostgreSQL mechanics it carries out on its node, and the
//! protocol it speaks with the operator. Which replicas a node should run, and in which role,
//! is the operator's decision (recorded in `Shard.status.desiredReplicas`); nothing here
//! decides that.

pub mod postgres;
pub mod protocol;
