//! A local Shardplane environment on this machine: a real etcd and kube-apiserver built from
//! Go modules, used by the integration tests and by `shardplane demo`; and simulated node
//! agents (`fleet`, `stand_in_agent`) that load the operator without PostgreSQL.

mod binaries;
mod certificates;
mod control_plane;
pub mod demo;
mod error;
pub mod fleet;
pub mod fleet_cluster;
mod process;
pub mod stand_in_agent;
mod work_dir;

pub use control_plane::ControlPlane;
pub use error::SandboxError;
