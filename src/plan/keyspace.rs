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

    /// Whether the two ranges share at least one key.
    pub fn overlaps(self, other: KeyRange) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// The keys both ranges hold, if any.
    pub fn intersection(self, other: KeyRange) -> Option<KeyRange> {
        KeyRange::new(self.start.max(other.start), self.end.min(other.end)).ok()
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn kr(start: i128, end: i128) -> KeyRange {
        KeyRange::new(start, end).expect("valid range")
    }

    #[test]
    fn wire_bounds_round_trip_and_absent_means_the_ends() {
        let full = KeyRange::from_wire(None, None).expect("full");
        assert_eq!(full, KeyRange::FULL);
        assert_eq!(full.to_wire(), WireKeyRange::default());
        assert_eq!(full.key_count(), 1u128 << 64);
        let r = KeyRange::from_wire(Some(-5), Some(7)).expect("range");
        assert_eq!((r.start(), r.end()), (-5, 7));
        assert_eq!(
            r.to_wire(),
            WireKeyRange {
                start: Some(-5),
                end: Some(7)
            }
        );
        assert!(r.contains(-5) && r.contains(6) && !r.contains(7));
        assert!(KeyRange::FULL.contains(i64::MAX) && KeyRange::FULL.contains(i64::MIN));
        let json = serde_json::to_string(&r).expect("serialize");
        assert_eq!(json, r#"{"start":-5,"end":7}"#);
        assert_eq!(serde_json::from_str::<KeyRange>("{}").expect("parse"), full);
    }

    #[test]
    fn empty_and_reversed_ranges_are_refused() {
        assert!(matches!(
            KeyRange::from_wire(Some(3), Some(3)),
            Err(KeyRangeError::Empty { .. })
        ));
        assert!(serde_json::from_str::<KeyRange>(r#"{"start":9,"end":2}"#).is_err());
        assert!(matches!(
            KeyRange::new(KEYSPACE_START - 1, 0),
            Err(KeyRangeError::OutOfKeySpace { .. })
        ));
    }

    #[test]
    fn split_merge_and_their_refusals() {
        let (a, b) = KeyRange::FULL.split_at(0).expect("split");
        assert_eq!(a.to_wire().end, Some(0));
        assert_eq!(
            b.to_wire(),
            WireKeyRange {
                start: Some(0),
                end: None
            }
        );
        assert_eq!(a.merge(b), Ok(KeyRange::FULL));
        assert_eq!(b.merge(a), Ok(KeyRange::FULL));
        assert!(KeyRange::FULL.split_at(i64::MIN).is_err());
        assert!(kr(0, 3).split_even(4).is_err());
        assert!(kr(0, 3).merge(kr(4, 6)).is_err());
        let quarters = KeyRange::FULL.split_even(4).expect("quarters");
        assert_eq!(quarters[1].to_wire().start, Some(i64::MIN / 2));
        assert_eq!(quarters[2].to_wire().start, Some(0));
    }

    #[test]
    fn tiling_errors_name_the_gap_and_the_overlap() {
        let ok = [("a", kr(KEYSPACE_START, 0)), ("b", kr(0, KEYSPACE_END))];
        assert!(check_tiling(ok).is_ok());
        let err = check_tiling([
            ("a", kr(KEYSPACE_START, 0)),
            ("b", kr(-10, 100)),
            ("c", kr(200, KEYSPACE_END)),
        ])
        .expect_err("broken tiling");
        assert_eq!(
            err.problems,
            vec![
                TilingProblem::Overlap {
                    first: "a".into(),
                    second: "b".into(),
                    keys: kr(-10, 0)
                },
                TilingProblem::Gap(kr(100, 200)),
            ]
        );
        let msg = err.to_string();
        assert!(
            msg.contains("overlap: a and b both own keys [-10, 0)"),
            "{msg}"
        );
        assert!(msg.contains("gap: no shard owns keys [100, 200)"), "{msg}");
        let outside = check_tiling_of(kr(0, 10), [("x", kr(0, 20))]).expect_err("outside");
        assert!(outside.to_string().contains("x owns [0, 20)"));
        assert!(check_tiling(std::iter::empty()).is_err());
    }

    fn arb_points() -> impl Strategy<Value = Vec<i64>> {
        prop::collection::btree_set(
            any::<i64>().prop_filter("inside", |p| *p != i64::MIN),
            0..20,
        )
        .prop_map(|s| s.into_iter().collect())
    }

    /// A range with arbitrary bounds inside the key space.
    fn arb_range() -> impl Strategy<Value = KeyRange> {
        (any::<Option<i64>>(), any::<Option<i64>>()).prop_filter_map("non-empty", |(x, y)| {
            let (x, y) = (
                x.map_or(KEYSPACE_START, i128::from),
                y.map_or(KEYSPACE_END, i128::from),
            );
            KeyRange::new(x.min(y), x.max(y)).ok()
        })
    }

    /// Ranges between sorted split points.
    fn ranges_from(points: &[i64]) -> Vec<KeyRange> {
        let mut bounds = vec![KEYSPACE_START];
        bounds.extend(points.iter().map(|&p| i128::from(p)));
        bounds.push(KEYSPACE_END);
        bounds.windows(2).map(|w| kr(w[0], w[1])).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn split_points_tile_the_key_space(points in arb_points()) {
            let ranges = ranges_from(&points);
            let names: Vec<String> = (0..ranges.len()).map(|i| format!("s{i}")).collect();
            prop_assert!(check_tiling(names.iter().map(String::as_str).zip(ranges.iter().copied())).is_ok());
            let keys: u128 = ranges.iter().map(|r| r.key_count()).sum();
            prop_assert_eq!(keys, 1u128 << 64);
        }

        #[test]
        fn even_splits_tile_their_parent_and_merge_back(points in arb_points(), pick in any::<prop::sample::Index>(), parts in 1u64..50) {
            let ranges = ranges_from(&points);
            let parent = ranges[pick.index(ranges.len())];
            prop_assume!(u128::from(parts) <= parent.key_count());
            let children = parent.split_even(parts).expect("split");
            prop_assert_eq!(children.len() as u64, parts);
            let named: Vec<(&str, KeyRange)> = children.iter().map(|&r| ("child", r)).collect();
            prop_assert!(check_tiling_of(parent, named).is_ok());
            let merged = children[1..].iter().try_fold(children[0], |acc, &r| acc.merge(r));
            prop_assert_eq!(merged, Ok(parent));
            let smallest = children.iter().map(|r| r.key_count()).min().unwrap_or(0);
            let largest = children.iter().map(|r| r.key_count()).max().unwrap_or(0);
            prop_assert!(largest - smallest <= 1);
        }

        #[test]
        fn a_missing_or_doubled_range_is_reported(points in arb_points(), pick in any::<prop::sample::Index>(), double in any::<bool>()) {
            let mut ranges = ranges_from(&points);
            let i = pick.index(ranges.len());
            let victim = ranges[i];
            if double {
                ranges.push(victim);
            } else {
                ranges.remove(i);
            }
            let err = check_tiling(ranges.iter().map(|&r| ("s", r))).expect_err("not a tiling");
            let expected = if double {
                TilingProblem::Overlap { first: "s".into(), second: "s".into(), keys: victim }
            } else {
                TilingProblem::Gap(victim)
            };
            prop_assert_eq!(err.problems, vec![expected]);
        }

        #[test]
        fn ranges_overlap_exactly_when_they_share_a_key(a in arb_range(), b in arb_range(), key in any::<i64>()) {
            prop_assert_eq!(a.overlaps(b), b.overlaps(a));
            prop_assert!(a.overlaps(a));
            let shared = a.intersection(b);
            prop_assert_eq!(shared.is_some(), a.overlaps(b));
            prop_assert_eq!(shared.is_some_and(|s| s.contains(key)), a.contains(key) && b.contains(key));
            // The shared keys bound the overlap: its first key lies in both ranges.
            if let Some(s) = shared {
                let first = s.start() as i64;
                prop_assert!(a.contains(first) && b.contains(first));
            }
            // Tiles of one tiling never overlap each other.
            if let Ok((low, high)) = a.split_at(key) {
                prop_assert!(!low.overlaps(high) && low.overlaps(a) && high.overlaps(a));
            }
        }

        #[test]
        fn wire_form_round_trips(start in any::<Option<i64>>(), end in any::<Option<i64>>()) {
            match KeyRange::from_wire(start, end) {
                Ok(r) => {
                    let w = r.to_wire();
                    prop_assert_eq!(KeyRange::from_wire(w.start, w.end), Ok(r));
                    let start_is_min = start.is_none() || start == Some(i64::MIN);
                    prop_assert_eq!(w.start.is_none(), start_is_min);
                    prop_assert_eq!(w.end, end);
                }
                Err(_) => prop_assert!(
                    i128::from(start.unwrap_or(i64::MIN)) >= end.map_or(KEYSPACE_END, i128::from)
                ),
            }
        }
    }
}
