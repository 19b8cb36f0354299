//! A local Shardplane environment on this machine: a real etcd and kube-apiserver built from
//! Go modules, used by the integration tests and by `shardplane demo`.

mod binaries;
mod certificates;
mod control_plane;
pub mod demo;
mod error;
mod process;
pub mod stand_in_agent;
mod work_dir;

pub use control_plane::ControlPlane;
pub use error::SandboxError;
