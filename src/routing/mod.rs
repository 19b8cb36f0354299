//! Routing a row to its shard: the keyspace id of a shard key value, computed bit-exactly as
//! PostgreSQL computes it, so that clients, the operator and PostgreSQL's own `CHECK`
//! constraints and row filters agree on which shard owns a row. No I/O.

mod keyhash;

pub use keyhash::{ShardKeyValue, hash_bytes_extended, hash_int8_extended, keyspace_id};
