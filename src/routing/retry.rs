//! Which failures a routing switch or failover explains, so that the same statement may be
//! sent again once the routing map changes, and the jittered backoff between attempts when it
//! does not change. No I/O.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use tokio_postgres::error::SqlState;

/// Why an attempt failed in a way that another attempt, after a routing change, may not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryReason {
    /// The endpoint could not be reached, or the connection broke (refused, reset, closed,
    /// SQLSTATE class 08, too many connections).
    Connection,
    /// The endpoint refused a write as read-only (SQLSTATE 25006): it was fenced or demoted.
    ReadOnly,
    /// The shard's range `CHECK` constraint refused the row (SQLSTATE 23514 on the range
    /// constraint): the router's map is older than the shard's range.
    Misrouted,
    /// The server is shutting down, crashed or is starting (SQLSTATE 57P01, 57P02, 57P03).
    Shutdown,
    /// The map has no primary for the key's range, does not cover the key, or is unusable.
    NoRoute,
    /// The attempt was still waiting (for example for a quorum its primary lost) when a
    /// newer map moved the key's range to another primary; it was abandoned.
    Moved,
}

impl RetryReason {
    /// Every reason, in declaration order (`reason as usize` indexes it).
    pub const ALL: [RetryReason; 6] = [
        RetryReason::Connection,
        RetryReason::ReadOnly,
        RetryReason::Misrouted,
        RetryReason::Shutdown,
        RetryReason::NoRoute,
        RetryReason::Moved,
    ];
}

/// The reason to retry an error PostgreSQL returned for a statement, or `None` when a retry
/// would fail the same way. `range_constraint` is the name of the shards' range `CHECK`
/// constraint; a violation of any other check is the caller's.
pub fn classify(error: &tokio_postgres::Error, range_constraint: &str) -> Option<RetryReason> {
    match error.code() {
        Some(code) => classify_code(
            code,
            error.as_db_error().and_then(|e| e.constraint()),
            range_constraint,
        ),
        // No SQLSTATE: the connection closed or an I/O error broke it; anything else (a
        // parameter that does not convert, a row that does not decode) is the caller's.
        None => (error.is_closed() || io_error_in(error)).then_some(RetryReason::Connection),
    }
}

/// The reason to retry a failed connection attempt, or `None` for one that a retry would
/// not fix (a refused password or role, a missing database).
pub fn classify_connect(error: &tokio_postgres::Error) -> Option<RetryReason> {
    match error.code() {
        Some(code) => classify_code(code, None, ""),
        None => Some(RetryReason::Connection),
    }
}

fn classify_code(
    code: &SqlState,
    constraint: Option<&str>,
    range_constraint: &str,
) -> Option<RetryReason> {
    if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
        Some(RetryReason::ReadOnly)
    } else if *code == SqlState::CHECK_VIOLATION {
        (constraint == Some(range_constraint)).then_some(RetryReason::Misrouted)
    } else if [
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
    ]
    .contains(code)
    {
        Some(RetryReason::Shutdown)
    } else if code.code().starts_with("08") || *code == SqlState::TOO_MANY_CONNECTIONS {
        Some(RetryReason::Connection)
    } else {
        None
    }
}

fn io_error_in(error: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The pause before retry number `retry` (1-based) when the routing map has not changed:
/// `base · 2^(retry−1)` capped at `cap`, then a random 50–100 % of that, so that clients
/// that failed together do not retry together.
pub fn backoff(retry: u32, base: Duration, cap: Duration) -> Duration {
    let exponent = retry.saturating_sub(1).min(16);
    let ceiling = base.saturating_mul(1 << exponent).min(cap);
    // A fresh RandomState is randomly keyed: a cheap jitter source without a dependency.
    let permille = RandomState::new().hash_one(retry) % 501;
    ceiling.mul_f64((500 + permille) as f64 / 1000.0)
}

/// The pause before retry number `retry` after a failure for `reason`: [`backoff`] up to
/// `caps.0`, or up to `caps.1` after a read-only refusal (a primary being promoted, or fenced
/// a moment before the map moves: over within a promotion's time, so followed closely).
pub fn backoff_after(
    reason: RetryReason,
    retry: u32,
    base: Duration,
    (cap, read_only_cap): (Duration, Duration),
) -> Duration {
    let cap = match reason {
        RetryReason::ReadOnly => cap.min(read_only_cap),
        _ => cap,
    };
    backoff(retry, base, cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_and_failover_codes_retry_and_others_do_not() {
        let retry = |code: &SqlState, constraint| classify_code(code, constraint, "shard_range");
        assert_eq!(
            retry(&SqlState::READ_ONLY_SQL_TRANSACTION, None),
            Some(RetryReason::ReadOnly)
        );
        assert_eq!(
            retry(&SqlState::CHECK_VIOLATION, Some("shard_range")),
            Some(RetryReason::Misrouted)
        );
        assert_eq!(
            retry(&SqlState::CHECK_VIOLATION, Some("price_positive")),
            None
        );
        assert_eq!(retry(&SqlState::CHECK_VIOLATION, None), None);
        assert_eq!(
            retry(&SqlState::ADMIN_SHUTDOWN, None),
            Some(RetryReason::Shutdown)
        );
        assert_eq!(
            retry(&SqlState::CONNECTION_FAILURE, None),
            Some(RetryReason::Connection)
        );
        assert_eq!(retry(&SqlState::UNIQUE_VIOLATION, None), None);
        assert_eq!(retry(&SqlState::SYNTAX_ERROR, None), None);
        assert_eq!(retry(&SqlState::INVALID_PASSWORD, None), None);
    }

    #[test]
    fn every_reason_indexes_its_own_counter() {
        for (index, reason) in RetryReason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, index, "{reason:?}");
        }
    }

    #[test]
    fn a_read_only_refusal_is_followed_closely_and_other_failures_back_off_further() {
        let base = Duration::from_millis(20);
        let caps = (Duration::from_millis(500), Duration::from_millis(40));
        for retry in 1..12 {
            let read_only = backoff_after(RetryReason::ReadOnly, retry, base, caps);
            assert!(read_only <= caps.1, "retry {retry}: {read_only:?}");
        }
        let connection = backoff_after(RetryReason::Connection, 8, base, caps);
        assert!(connection >= Duration::from_millis(250), "{connection:?}");
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let base = Duration::from_millis(20);
        let cap = Duration::from_millis(500);
        for retry in 1..12 {
            let ceiling = base.saturating_mul(1 << (retry - 1)).min(cap);
            let pause = backoff(retry, base, cap);
            assert!(
                pause >= ceiling / 2 && pause <= ceiling,
                "retry {retry}: {pause:?}"
            );
        }
        let spread: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| backoff(5, base, cap)).collect();
        assert!(spread.len() > 5, "jitter spreads pauses: {spread:?}");
    }
}
