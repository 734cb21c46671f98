//! Proptest strategies shared by the property tests next to each parser that takes outside
//! input (rotation.rs: Retry-After; store.rs; config.rs; oauth.rs: the token answer): JSON
//! values built from the numbers and strings that trip parsers, and byte-level damage.
//! Test-only; each `Edit` shrinks towards fewer and smaller changes.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::Value;

const INTERESTING_INTS: &[i64] = &[
    0,
    1,
    -1,
    2,
    10,
    11,
    50,
    i64::MIN,
    i64::MAX,
    i32::MAX as i64,
    u32::MAX as i64,
    u32::MAX as i64 + 1,
    1 << 53,
    (1 << 53) + 1,
    253_402_300_799_999,
    253_402_300_800_000,
    1_704_067_200_000,
    -1_704_067_200_000,
];

const INTERESTING_FLOATS: &[f64] = &[1e300, -1e300, 1.5e12, 0.0, -0.0, 1e-300, 10.0];

const INTERESTING_STRINGS: &[&str] = &[
    "",
    " ",
    "\t\n",
    "1",
    "1.0",
    "2.0",
    "0.9",
    "1.",
    ".1",
    "abc",
    "active",
    "revoked",
    "Bearer",
    "null",
    "true",
    "-1",
    "99999999999999999999999",
    "\u{0}",
    "\u{feff}",
    "é\u{1F600}",
    "portal.qwen.ai",
    "https://chat.qwen.ai",
    "http://127.0.0.1:9",
    "http://example.com",
    "00:00",
    "24:00",
    "+08:00",
    "-14:00",
    "sticky",
    "hybrid",
    "at-secret",
];

/// Bytes that change what JSON means when inserted: structure, escapes, the start of a
/// number or literal, a byte order mark's bytes, invalid UTF-8, NUL.
const JSON_BYTES: &[u8] = &[
    b'"', b'{', b'}', b'[', b']', b',', b':', b'0', b'-', b'\\', b'e', b'.', 0xff, 0xef, 0xbb,
    0x80, 0, b' ', b'n',
];

/// A short string: a known troublemaker, lower-case letters, any chars, or a small number.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        select(INTERESTING_STRINGS).prop_map(str::to_string),
        "[a-z]{0,11}",
        vec(any::<char>(), 0..8).prop_map(|c| c.into_iter().collect()),
        (-1000i64..=1000).prop_map(|n| n.to_string()),
    ]
}

/// A JSON number: edges of i64, u64, u32 and f64 precision and of year 9999 in ms (most
/// often), any i64 or u64, fractions, and plain small integers.
pub fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => select(INTERESTING_INTS).prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => (-5i64..=5).prop_map(|n| Value::from(n as f64 + 0.5)),
        1 => select(INTERESTING_FLOATS).prop_map(Value::from),
        1 => (-100i64..=100).prop_map(Value::from),
    ]
}

/// Any JSON value nested at most `depth` deep, with up to 3 members per level.
pub fn json(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, 40, 3, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((text(), inner), 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// `v` of another JSON type than `old`: the first of `candidates` (from `Index` on) whose
/// type differs, else the candidate at `Index`.
pub fn retype(old: &Value, candidates: &[Value], at: Index) -> Value {
    if candidates.is_empty() {
        return Value::Null;
    }
    let start = at.index(candidates.len());
    let n = candidates.len();
    (0..n)
        .map(|i| &candidates[(start + i) % n])
        .find(|c| std::mem::discriminant(*c) != std::mem::discriminant(old))
        .unwrap_or(&candidates[start])
        .clone()
}

/// Candidates for `retype`: one value of each JSON type, in a random order of types.
pub fn other_types() -> impl Strategy<Value = Vec<Value>> {
    (
        any::<bool>(),
        number(),
        text(),
        vec(json(1), 0..3),
        vec((text(), json(1)), 0..3),
    )
        .prop_map(|(b, n, s, a, o)| {
            vec![
                Value::Null,
                Value::Bool(b),
                n,
                Value::String(s),
                Value::Array(a),
                Value::Object(o.into_iter().collect()),
            ]
        })
        .prop_shuffle()
}

/// `v` as JSON text, indented or compact.
pub fn to_bytes(v: &Value, pretty: bool) -> Vec<u8> {
    let out = if pretty {
        serde_json::to_vec_pretty(v)
    } else {
        serde_json::to_vec(v)
    };
    out.unwrap_or_default()
}

/// One change to a byte string; positions are taken relative to its length when applied.
#[derive(Debug, Clone)]
pub enum Edit {
    Truncate(Index),
    FlipBit(Index, u8),
    Insert(Index, u8),
    /// Removes 1 to 16 bytes.
    Delete(Index, usize),
    /// Copies 1 to 64 bytes elsewhere.
    Splice {
        from: Index,
        len: usize,
        to: Index,
    },
    Junk(Index, Vec<u8>),
}

/// One to four edits: truncation, bit flips, inserts of meaningful bytes, deletions, splices
/// of the text itself, random bytes.
pub fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit =
        prop_oneof![
            any::<Index>().prop_map(Edit::Truncate),
            (any::<Index>(), 0u8..8).prop_map(|(i, b)| Edit::FlipBit(i, b)),
            (any::<Index>(), select(JSON_BYTES)).prop_map(|(i, c)| Edit::Insert(i, c)),
            (any::<Index>(), 1usize..=16).prop_map(|(i, n)| Edit::Delete(i, n)),
            (any::<Index>(), 1usize..=64, any::<Index>())
                .prop_map(|(from, len, to)| Edit::Splice { from, len, to }),
            (any::<Index>(), vec(any::<u8>(), 0..=8)).prop_map(|(i, j)| Edit::Junk(i, j)),
        ];
    vec(edit, 1..=4)
}

/// `b` with `edits` applied in turn.
pub fn apply(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = b.len();
        // A place between bytes (0..=len), or a byte (0..len) when there is one.
        let gap = |i: &Index| i.index(len + 1);
        let byte = |i: &Index| (len > 0).then(|| i.index(len));
        match e {
            Edit::Truncate(i) => b.truncate(gap(i)),
            Edit::FlipBit(i, bit) => {
                if let Some(i) = byte(i) {
                    b[i] ^= 1 << bit;
                }
            }
            Edit::Insert(i, c) => b.insert(gap(i), *c),
            Edit::Delete(i, n) => {
                if let Some(i) = byte(i) {
                    b.drain(i..(i + n).min(len));
                }
            }
            Edit::Splice { from, len: n, to } => {
                if let Some(i) = byte(from) {
                    let chunk = b[i..(i + n).min(len)].to_vec();
                    let at = gap(to);
                    b.splice(at..at, chunk);
                }
            }
            Edit::Junk(i, junk) => {
                let at = gap(i);
                b.splice(at..at, junk.iter().copied());
            }
        }
    }
    b
}

proptest! {
    /// Every edit fits any length, the empty string included.
    #[test]
    fn edits_stay_in_bounds(len in 0usize..6, e in edits()) {
        let _ = apply(vec![b'x'; len], &e);
    }
}
