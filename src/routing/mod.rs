//! Routing a row to its shard, on the client side. The keyspace id of a shard key value is
//! computed bit-exactly as PostgreSQL computes it (`keyhash`, no I/O), so that clients, the
//! operator and PostgreSQL's own `CHECK` constraints and row filters agree on which shard owns
//! a row. A [`Router`] watches one Table's routing map (`status.routing`), sends single-key
//! statements to the primary of the key's range over a small connection pool per endpoint,
//! and retries them through routing switches and failovers until a deadline.
//!
//! ```no_run
//! use shardplane::routing::{DatabaseCredentials, Router, RouterConfig, ShardKeyValue};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client = kube::Client::try_default().await?;
//! let credentials = DatabaseCredentials::new("app", std::env::var("PGPASSWORD")?, "postgres");
//! let router = Router::start(client, "shop", "orders", credentials, RouterConfig::default()).await?;
//!
//! let id = 42_i64;
//! // Idempotent: a retry after an ambiguous commit inserts nothing the second time.
//! router
//!     .execute(
//!         &ShardKeyValue::Int(id),
//!         "INSERT INTO orders (id, note) VALUES ($1, $2) ON CONFLICT DO NOTHING",
//!         &[&id, &"first order"],
//!     )
//!     .await?;
//! let rows = router
//!     .query(&ShardKeyValue::Int(id), "SELECT note FROM orders WHERE id = $1", &[&id])
//!     .await?;
//! println!("{}; {}", rows[0].get::<_, String>(0), router.stats());
//! # Ok(())
//! # }
//! ```
//!
//! **Retries and idempotency.** An attempt that fails on a connection error, a read-only
//! refusal (SQLSTATE 25006), the shard's range constraint (23514 on
//! [`RouterConfig::range_constraint`]) or a server shutdown is repeated as soon as a newer
//! routing map arrives, or after a short jittered backoff, until [`RouterConfig::deadline`].
//! A connection lost after `COMMIT` was sent leaves the outcome unknown, and the retry may
//! run the statement a second time: every write sent through a router must be idempotent,
//! for example `INSERT … ON CONFLICT DO NOTHING` on a unique id, or an `UPDATE` that sets
//! values rather than increments them. `docs/routing.md` has the details.

mod error;
mod keyhash;
mod map;
mod pool;
mod retry;
mod router;

pub use crate::protocol::Endpoint;
pub use error::{RoutingError, RoutingMapError, postgres_message};
pub use keyhash::{ShardKeyValue, hash_bytes_extended, hash_int8_extended, keyspace_id};
pub use map::{Route, RouteTable};
pub use pool::DatabaseCredentials;
pub use retry::{RetryReason, backoff, classify, classify_connect};
pub use router::{Router, RouterConfig, RouterStats};

/// Locks `mutex`, also after a panic in another holder: every critical section of the
/// router and the workload leaves its data valid (a push, a pop, a map update).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
