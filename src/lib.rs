//! Shardplane: a Kubernetes-native control plane for a sharded SQL database whose storage
//! nodes are PostgreSQL servers. The binary `shardplane` is a thin shell over this library.

pub mod agent;
pub mod api;
pub mod controller;
pub mod decide;
pub mod gitsync;
pub mod plan;
pub mod planpreview;
pub mod protocol;
pub mod routing;
pub mod sandbox;
pub mod schema;
pub mod tls;
pub mod workload;
