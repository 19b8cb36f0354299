//! A key range's row count and checksum on one instance: what a copy's verification
//! compares between source and target, and what a failed verification reports. See `copy.rs`
//! for how it is computed.

use std::fmt;

/// A range's row count and checksum on one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeDigest {
    /// Rows in the range.
    pub rows: i64,
    /// `sum(hashtextextended(row::text, 0))` over the range, as decimal text.
    pub checksum: String,
}

impl fmt::Display for RangeDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rows (checksum {})", self.rows, self.checksum)
    }
}
