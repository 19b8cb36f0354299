//! The signed 64-bit key space and the half-open ranges that shards own: conversions
//! from/to the `Shard` resource's optional bounds, split, merge, and tiling validation.
//! A key space id is PostgreSQL's `hash*extended(key, 0)` (or the key itself in range mode).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The first key of the key space (inclusive): `i64::MIN`.
pub const KEYSPACE_START: i128 = i64::MIN as i128;
/// The end of the key space (exclusive): 2^63, one past `i64::MAX`.
pub const KEYSPACE_END: i128 = i64::MAX as i128 + 1;

/// A non-empty half-open range `[start, end)` of the key space. Bounds are `i128` so that
/// the end of the key space (2^63) is representable and ranges tile it with no gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "WireKeyRange", into = "WireKeyRange")]
pub struct KeyRange {
    start: i128,
    end: i128,
}

/// A key range as the `Shard` resource spells it: an absent `start` is the start of the key
/// space, an absent `end` is its end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireKeyRange {
    /// First key (inclusive); absent means `i64::MIN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<i64>,
    /// First key past the range (exclusive); absent means the end of the key space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
}

/// Why a key range operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyRangeError {
    /// `start` is not below `end`.
    #[error("key range start {start} is not below its end {end}; a range must be non-empty")]
    Empty {
        /// The start given.
        start: i128,
        /// The end given.
        end: i128,
    },
    /// A bound lies outside the key space.
    #[error("key range bound {bound} is outside the key space [-2^63, 2^63)")]
    OutOfKeySpace {
        /// The offending bound.
        bound: i128,
    },
    /// A split point is not strictly inside the range.
    #[error("split point {point} is not strictly inside {range}; pick a key between its bounds")]
    SplitPointOutside {
        /// The range being split.
        range: KeyRange,
        /// The point asked for.
        point: i64,
    },
    /// A range cannot be split into that many parts.
    #[error("cannot split {range} into {parts} parts: it needs at least one key per part")]
    TooManyParts {
        /// The range being split.
        range: KeyRange,
        /// The number of parts asked for.
        parts: u64,
    },
    /// Two ranges that are not adjacent were asked to merge.
    #[error("cannot merge {first} and {second}: they are not adjacent")]
    NotAdjacent {
        /// The first range.
        first: KeyRange,
        /// The second range.
        second: KeyRange,
    },
}

impl KeyRange {
    /// The whole key space.
    pub const FULL: KeyRange = KeyRange {
        start: KEYSPACE_START,
        end: KEYSPACE_END,
    };

    /// The range `[start, end)`; both bounds must lie in the key space and `start < end`.
    pub fn new(start: i128, end: i128) -> Result<Self, KeyRangeError> {
        for bound in [start, end] {
            if !(KEYSPACE_START..=KEYSPACE_END).contains(&bound) {
                return Err(KeyRangeError::OutOfKeySpace { bound });
            }
        }
        if start >= end {
            return Err(KeyRangeError::Empty { start, end });
        }
        Ok(KeyRange { start, end })
    }

    /// The range from the `Shard` resource's optional bounds.
    pub fn from_wire(start: Option<i64>, end: Option<i64>) -> Result<Self, KeyRangeError> {
        KeyRange::new(
            start.map_or(KEYSPACE_START, i128::from),
            end.map_or(KEYSPACE_END, i128::from),
        )
    }

    /// The `Shard` resource's optional bounds for this range.
    pub fn to_wire(self) -> WireKeyRange {
        WireKeyRange {
            start: (self.start != KEYSPACE_START).then_some(self.start as i64),
            end: (self.end != KEYSPACE_END).then_some(self.end as i64),
        }
    }

    /// First key (inclusive).
    pub fn start(self) -> i128 {
        self.start
    }

    /// First key past the range (exclusive).
    pub fn end(self) -> i128 {
        self.end
    }

    /// Number of keys in the range (up to 2^64).
    pub fn key_count(self) -> u128 {
        (self.end - self.start) as u128
    }

    /// Whether `key` falls in the range.
    pub fn contains(self, key: i64) -> bool {
        (self.start..self.end).contains(&i128::from(key))
    }

    /// Two ranges `[start, point)` and `[point, end)`.
    pub fn split_at(self, point: i64) -> Result<(KeyRange, KeyRange), KeyRangeError> {
        let p = i128::from(point);
        if p <= self.start || p >= self.end {
            return Err(KeyRangeError::SplitPointOutside { range: self, point });
        }
        Ok((
            KeyRange {
                start: self.start,
                end: p,
            },
            KeyRange {
                start: p,
                end: self.end,
            },
        ))
    }

    /// `parts` adjacent ranges of (as nearly as possible) equal key counts covering this one.
    pub fn split_even(self, parts: u64) -> Result<Vec<KeyRange>, KeyRangeError> {
        let len = self.key_count();
        if parts == 0 || u128::from(parts) > len {
            return Err(KeyRangeError::TooManyParts { range: self, parts });
        }
        // len ≤ 2^64 and parts < 2^64, so len * k fits in u128.
        let bound = |k: u64| self.start + (len * u128::from(k) / u128::from(parts)) as i128;
        Ok((0..parts)
            .map(|k| KeyRange {
                start: bound(k),
                end: bound(k + 1),
            })
            .collect())
    }

    /// The union of two adjacent ranges (in either order).
    pub fn merge(self, other: KeyRange) -> Result<KeyRange, KeyRangeError> {
        if self.end == other.start {
            Ok(KeyRange {
                start: self.start,
                end: other.end,
            })
        } else if other.end == self.start {
            Ok(KeyRange {
                start: other.start,
                end: self.end,
            })
        } else {
            Err(KeyRangeError::NotAdjacent {
                first: self,
                second: other,
            })
        }
    }
}

impl TryFrom<WireKeyRange> for KeyRange {
    type Error = KeyRangeError;

    fn try_from(wire: WireKeyRange) -> Result<Self, Self::Error> {
        KeyRange::from_wire(wire.start, wire.end)
    }
}

impl From<KeyRange> for WireKeyRange {
    fn from(range: KeyRange) -> Self {
        range.to_wire()
    }
}

impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.end == KEYSPACE_END {
            write!(f, "[{}, end)", self.start)
        } else {
            write!(f, "[{}, {})", self.start, self.end)
        }
    }
}

/// One way a set of ranges fails to tile a span of the key space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TilingProblem {
    /// No range covers these keys.
    Gap(KeyRange),
    /// Two named ranges both cover these keys.
    Overlap {
        /// The range that starts first.
        first: String,
        /// The range that starts inside it.
        second: String,
        /// The keys both cover.
        keys: KeyRange,
    },
    /// A named range reaches outside the span being tiled.
    Outside {
        /// The range's name.
        name: String,
        /// The range.
        range: KeyRange,
    },
}

impl fmt::Display for TilingProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TilingProblem::Gap(keys) => write!(f, "gap: no shard owns keys {keys}"),
            TilingProblem::Overlap {
                first,
                second,
                keys,
            } => write!(f, "overlap: {first} and {second} both own keys {keys}"),
            TilingProblem::Outside { name, range } => {
                write!(f, "{name} owns {range}, outside the span being tiled")
            }
        }
    }
}

/// The ranges do not tile the span: every problem found, in key order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the ranges do not tile {span}: {}", render(.problems))]
pub struct TilingError {
    /// The span that should have been tiled.
    pub span: KeyRange,
    /// Every gap and overlap, in key order.
    pub problems: Vec<TilingProblem>,
}

fn render(problems: &[TilingProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks that named ranges tile the whole key space with no gap and no overlap.
pub fn check_tiling<'a>(
    ranges: impl IntoIterator<Item = (&'a str, KeyRange)>,
) -> Result<(), TilingError> {
    check_tiling_of(KeyRange::FULL, ranges)
}

/// Checks that named ranges tile `span` exactly: no gap, no overlap, nothing outside.
pub fn check_tiling_of<'a>(
    span: KeyRange,
    ranges: impl IntoIterator<Item = (&'a str, KeyRange)>,
) -> Result<(), TilingError> {
    let mut sorted: Vec<(&str, KeyRange)> = ranges.into_iter().collect();
    sorted.sort_by_key(|&(name, r)| (r.start, r.end, name));
    let mut problems = Vec::new();
    let mut cursor = span.start;
    // The range that reaches furthest so far, to name it in an overlap.
    let mut furthest: Option<&str> = None;
    for &(name, range) in &sorted {
        if range.start < span.start || range.end > span.end {
            problems.push(TilingProblem::Outside {
                name: name.to_owned(),
                range,
            });
            continue;
        }
        if range.start > cursor {
            problems.push(TilingProblem::Gap(KeyRange {
                start: cursor,
                end: range.start,
            }));
        } else if range.start < cursor {
            problems.push(TilingProblem::Overlap {
                first: furthest.unwrap_or_default().to_owned(),
                second: name.to_owned(),
                keys: KeyRange {
                    start: range.start,
                    end: cursor.min(range.end),
                },
            });
        }
        if range.end > cursor {
            cursor = range.end;
            furthest = Some(name);
        }
    }
    if cursor < span.end {
        problems.push(TilingProblem::Gap(KeyRange {
            start: cursor,
            end: span.end,
        }));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(TilingError { span, problems })
    }
}
