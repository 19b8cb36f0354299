//! PostgreSQL's hash functions with seed 0, reimplemented bit-exactly: `hashint8extended`
//! (also used for `smallint` and `integer` keys, which PostgreSQL hashes identically) and
//! `hashtextextended` under a deterministic collation, which is `hash_bytes_extended` (Bob
//! Jenkins' lookup3, as in PostgreSQL's `src/common/hashfn.c`) over the value's UTF-8 bytes.
//!
//! PostgreSQL reads the key's bytes as native-endian 32-bit words; this module reproduces
//! the little-endian result (x86-64, arm64), which is what every supported node runs.

/// A shard key value of a row, in the two families of types a shard key may have.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ShardKeyValue {
    /// A `smallint`, `integer` or `bigint` key (PostgreSQL hashes all three as `bigint`).
    Int(i64),
    /// A `text` or `varchar` key under a deterministic collation.
    Text(String),
}

impl std::fmt::Display for ShardKeyValue {
    /// An integer as digits, a text key quoted (as in error messages and reports).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardKeyValue::Int(value) => write!(f, "{value}"),
            ShardKeyValue::Text(value) => write!(f, "{value:?}"),
        }
    }
}

/// The keyspace id of a shard key value: the signed 64-bit result of PostgreSQL's
/// `hashint8extended(value, 0)` or `hashtextextended(value, 0)`.
pub fn keyspace_id(value: &ShardKeyValue) -> i64 {
    match value {
        ShardKeyValue::Int(value) => hash_int8_extended(*value, 0),
        ShardKeyValue::Text(value) => hash_bytes_extended(value.as_bytes(), 0),
    }
}

/// PostgreSQL's `hashint8extended(value, seed)`, as the signed value SQL returns.
pub fn hash_int8_extended(value: i64, seed: u64) -> i64 {
    // Fold the high half into the low one so that logically equal int2/int4/int8 values
    // hash alike (PostgreSQL does this for cross-type hash joins).
    let low = value as u32;
    let high = (value >> 32) as u32;
    let folded = low ^ if value >= 0 { high } else { !high };
    let mut state = State::new(4, seed);
    state.a = state.a.wrapping_add(folded);
    state.finish()
}

/// PostgreSQL's `hash_bytes_extended(bytes, seed)` (`hashtextextended` of a text value is
/// this over its UTF-8 bytes), as the signed value SQL returns.
///
/// Keys longer than `i32::MAX` bytes do not exist in PostgreSQL (a value is at most 1 GB).
pub fn hash_bytes_extended(bytes: &[u8], seed: u64) -> i64 {
    let mut state = State::new(bytes.len() as u32, seed);
    let mut blocks = bytes.chunks_exact(12);
    for block in &mut blocks {
        state.a = state.a.wrapping_add(word(&block[0..4]));
        state.b = state.b.wrapping_add(word(&block[4..8]));
        state.c = state.c.wrapping_add(word(&block[8..12]));
        state.mix();
    }
    let tail = blocks.remainder();
    // The lowest byte of `c` is reserved for the length, so the tail's bytes 8..11 go one
    // byte higher in `c` than they would in a whole word.
    let at = |index: usize| tail.get(index).map_or(0, |&byte| u32::from(byte));
    state.a = state
        .a
        .wrapping_add(at(0) | (at(1) << 8) | (at(2) << 16) | (at(3) << 24));
    state.b = state
        .b
        .wrapping_add(at(4) | (at(5) << 8) | (at(6) << 16) | (at(7) << 24));
    state.c = state
        .c
        .wrapping_add((at(8) << 8) | (at(9) << 16) | (at(10) << 24));
    state.finish()
}

/// A little-endian 32-bit word from exactly four bytes.
fn word(bytes: &[u8]) -> u32 {
    u32::from(bytes[0])
        | (u32::from(bytes[1]) << 8)
        | (u32::from(bytes[2]) << 16)
        | (u32::from(bytes[3]) << 24)
}

/// lookup3's internal state.
struct State {
    a: u32,
    b: u32,
    c: u32,
}

impl State {
    /// The initial state for a key of `len` bytes, perturbed by a non-zero seed.
    fn new(len: u32, seed: u64) -> Self {
        let initial = 0x9e37_79b9_u32.wrapping_add(len).wrapping_add(3_923_095);
        let mut state = State {
            a: initial,
            b: initial,
            c: initial,
        };
        if seed != 0 {
            state.a = state.a.wrapping_add((seed >> 32) as u32);
            state.b = state.b.wrapping_add(seed as u32);
            state.mix();
        }
        state
    }

    /// lookup3's `mix()`.
    fn mix(&mut self) {
        let State { a, b, c } = self;
        *a = a.wrapping_sub(*c);
        *a ^= c.rotate_left(4);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a);
        *b ^= a.rotate_left(6);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b);
        *c ^= b.rotate_left(8);
        *b = b.wrapping_add(*a);
        *a = a.wrapping_sub(*c);
        *a ^= c.rotate_left(16);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a);
        *b ^= a.rotate_left(19);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b);
        *c ^= b.rotate_left(4);
        *b = b.wrapping_add(*a);
    }

    /// lookup3's `final()`, then the 64-bit result `(b << 32) | c` as PostgreSQL's `int8`.
    fn finish(mut self) -> i64 {
        let State { a, b, c } = &mut self;
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(14));
        *a ^= *c;
        *a = a.wrapping_sub(c.rotate_left(11));
        *b ^= *a;
        *b = b.wrapping_sub(a.rotate_left(25));
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(16));
        *a ^= *c;
        *a = a.wrapping_sub(c.rotate_left(4));
        *b ^= *a;
        *b = b.wrapping_sub(a.rotate_left(14));
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(24));
        ((u64::from(self.b) << 32) | u64::from(self.c)) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from PostgreSQL 15: `SELECT x, hashint8extended(x, 0)`.
    #[test]
    fn integers_match_postgresql() {
        let known = [
            (0, 4154612158245552303),
            (1, -3670598878359251130),
            (-1, -1888257769727981238),
            (42, 8010225493015854792),
            (-5, -9082176226831438310),
            (7, -3288951424994980865),
            (i64::from(i32::MAX), -9109110466470504941),
            (i64::from(i32::MIN), 1977219185673256887),
            (i64::MAX, 1977219185673256887),
            (i64::MIN, -9109110466470504941),
        ];
        for (value, hash) in known {
            assert_eq!(keyspace_id(&ShardKeyValue::Int(value)), hash, "key {value}");
        }
    }

    /// Values from PostgreSQL 15: `SELECT s, hashtextextended(s, 0)`.
    #[test]
    fn text_matches_postgresql() {
        let known = [
            ("", -6939563903564495251),
            ("a", 3591986179850072241),
            ("abc", -6747756470228489321),
            ("hello world!", -2866487628948787489),
            ("hello world!x", -6683131005855957752),
            ("shardplane", -2805263566427532895),
            ("Grüße, 世界", -7981528116157456438),
        ];
        for (value, hash) in known {
            assert_eq!(
                keyspace_id(&ShardKeyValue::Text(value.to_owned())),
                hash,
                "key {value:?}"
            );
        }
    }

    /// Values from PostgreSQL 15 with a non-zero seed, which perturbs the initial state.
    #[test]
    fn seeds_match_postgresql() {
        assert_eq!(hash_int8_extended(42, 1), 3812564155960986560);
        assert_eq!(
            hash_bytes_extended(b"abc", 12345678901),
            7771095233771874284
        );
    }
}
