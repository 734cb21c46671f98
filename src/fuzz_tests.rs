//! Randomised input tests of the parsers (issue 5, fuzzing): `Retry-After`, the store, the
//! config and the OAuth token answer get random bytes, random JSON and mutations of valid
//! inputs from a seeded xorshift generator, and must never panic and keep their properties
//! (a parsed store round-trips, a delta-seconds value is its number, ...).
//!
//! A few hundred cases per target run with `cargo test`. `QWEN_CRED_FUZZ_ITERS=N` runs N per
//! target, `QWEN_CRED_FUZZ_SECONDS=S` runs each target for S seconds instead,
//! `QWEN_CRED_FUZZ_SEED=N` starts elsewhere, and a failure prints the case seed that
//! `QWEN_CRED_FUZZ_CASE=0x...` replays alone.

use crate::config::{parse_config_text, schema, Config, Source};
use crate::oauth::TokenResponse;
use crate::rotation::parse_retry_after;
use crate::store::{Status, Store, MAX_ACCOUNTS};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// xorshift64*: small, fast, and the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Zero is xorshift's fixed point.
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `0..n` (0 when n is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        let span = (hi as i128 - lo as i128 + 1) as u128;
        (lo as i128 + (self.next() as u128 % span) as i128) as i64
    }

    /// True one time in `n`.
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.index(xs.len())]
    }

    fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.index(max_len + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Runs `case` on fresh generators until the budget is spent; a panic or failed property is
/// reported with the case seed that replays it.
fn fuzz(name: &str, default_iters: u64, mut case: impl FnMut(&mut Rng)) {
    let one = |case: &mut dyn FnMut(&mut Rng), seed: u64, i: u64| {
        let mut rng = Rng::new(seed);
        let run = std::panic::AssertUnwindSafe(|| case(&mut rng));
        if std::panic::catch_unwind(run).is_err() {
            panic!("{name}: case {i} failed; replay it with QWEN_CRED_FUZZ_CASE={seed:#x}");
        }
    };
    if let Some(seed) = env_u64("QWEN_CRED_FUZZ_CASE") {
        one(&mut case, seed, 0);
        return;
    }
    // Each target has its own default stream, so adding one does not shift the others.
    let base = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut seeds = Rng::new(base ^ env_u64("QWEN_CRED_FUZZ_SEED").unwrap_or(0));
    let deadline =
        env_u64("QWEN_CRED_FUZZ_SECONDS").map(|s| Instant::now() + Duration::from_secs(s));
    let iters = env_u64("QWEN_CRED_FUZZ_ITERS").unwrap_or(default_iters);
    let mut i = 0;
    while match deadline {
        Some(d) => Instant::now() < d,
        None => i < iters,
    } {
        one(&mut case, seeds.next(), i);
        i += 1;
    }
    if deadline.is_some() || iters != default_iters {
        eprintln!("fuzz {name}: {i} cases passed");
    }
}

// --- random JSON ---

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

fn random_string(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => (*rng.pick(INTERESTING_STRINGS)).to_string(),
        1 => (0..rng.below(12))
            .map(|_| char::from(b'a' + rng.below(26) as u8))
            .collect(),
        2 => (0..rng.below(8))
            .filter_map(|_| char::from_u32(rng.below(0x11_0000) as u32))
            .collect(),
        _ => rng.range(-1000, 1000).to_string(),
    }
}

fn random_number(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => Value::from(*rng.pick(INTERESTING_INTS)),
        1 => Value::from(rng.next()),
        2 => Value::from(rng.next() as i64),
        3 => Value::from(rng.range(-5, 5) as f64 + 0.5),
        4 => json!(*rng.pick(&[1e300, -1e300, 1.5e12, 0.0, -0.0, 1e-300, 10.0])),
        _ => Value::from(rng.range(-100, 100)),
    }
}

fn random_json(rng: &mut Rng, depth: u32) -> Value {
    let top = if depth == 0 { 4 } else { 6 };
    match rng.below(top) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => random_number(rng),
        3 => Value::String(random_string(rng)),
        4 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.below(4))
                .map(|_| (random_string(rng), random_json(rng, depth - 1)))
                .collect(),
        ),
    }
}

/// A value of a different JSON type than `v` (or a random one).
fn swap_type(rng: &mut Rng, v: &Value) -> Value {
    loop {
        let n = random_json(rng, 2);
        if std::mem::discriminant(&n) != std::mem::discriminant(v) || rng.one_in(4) {
            return n;
        }
    }
}

/// Byte-level damage: truncation, flips, inserts, deletions, splices.
fn mutate_bytes(rng: &mut Rng, b: &mut Vec<u8>) {
    for _ in 0..=rng.below(3) {
        let len = b.len();
        match rng.below(6) {
            0 => b.truncate(rng.index(len + 1)),
            1 if len > 0 => {
                let i = rng.index(len);
                b[i] ^= 1 << rng.below(8);
            }
            2 => {
                let i = rng.index(len + 1);
                let c = *rng.pick(&[
                    b'"', b'{', b'}', b'[', b']', b',', b':', b'0', b'-', b'\\', b'e', b'.', 0xff,
                    0xef, 0xbb, 0x80, 0, b' ', b'n',
                ]);
                b.insert(i, c);
            }
            3 if len > 0 => {
                let i = rng.index(len);
                let j = (i + 1 + rng.index(16)).min(len);
                b.drain(i..j);
            }
            4 if len > 0 => {
                let i = rng.index(len);
                let j = (i + 1 + rng.index(64)).min(len);
                let chunk = b[i..j].to_vec();
                let at = rng.index(len + 1);
                b.splice(at..at, chunk);
            }
            _ => {
                let i = rng.index(len + 1);
                let junk = rng.bytes(8);
                b.splice(i..i, junk);
            }
        }
    }
}

fn serialize(rng: &mut Rng, v: &Value) -> Vec<u8> {
    let out = if rng.one_in(2) {
        serde_json::to_vec_pretty(v)
    } else {
        serde_json::to_vec(v)
    };
    out.unwrap_or_default()
}

// --- Retry-After ---

use crate::rotation::{LONG_DAYS, MONTHS, SHORT_DAYS};

/// The three HTTP-date forms of RFC 9110 §5.6.7 for Unix second `t`.
fn http_dates(t: i64) -> Option<[String; 3]> {
    let d = time::OffsetDateTime::from_unix_timestamp(t).ok()?;
    let wd = d.weekday().number_days_from_monday() as usize;
    let mon = MONTHS[usize::from(u8::from(d.month())) - 1];
    let clock = format!("{:02}:{:02}:{:02}", d.hour(), d.minute(), d.second());
    Some([
        format!(
            "{}, {:02} {mon} {:04} {clock} GMT",
            SHORT_DAYS[wd],
            d.day(),
            d.year()
        ),
        format!(
            "{}, {:02}-{mon}-{:02} {clock} GMT",
            LONG_DAYS[wd],
            d.day(),
            d.year().rem_euclid(100)
        ),
        format!(
            "{} {mon} {:>2} {clock} {:04}",
            SHORT_DAYS[wd],
            d.day(),
            d.year()
        ),
    ])
}

const WHITESPACE: &[&str] = &["", " ", "  ", "\t", "\r\n", " \t "];

#[test]
fn retry_after_never_panics_and_reads_deltas_and_dates() {
    // 0001-01-01 to 9999-12-31 in Unix seconds.
    const FIRST: i64 = -62_135_596_800;
    const LAST: i64 = 253_402_300_799;
    fuzz("retry_after", 3000, |rng| {
        let now = match rng.below(4) {
            0 => *rng.pick(&[i64::MIN, i64::MAX, 0, -1, LAST * 1000 + 999, FIRST * 1000]),
            1 => rng.next() as i64,
            _ => rng.range(0, 4_102_444_800_000),
        };
        // Any u32 delta, with leading zeros and surrounding ASCII whitespace, is its number.
        let n = rng.next() as u32;
        let zeros = "0".repeat(rng.index(3));
        let v = format!("{}{zeros}{n}{}", rng.pick(WHITESPACE), rng.pick(WHITESPACE));
        assert_eq!(parse_retry_after(&v, now), Some(u64::from(n)), "{v:?}");
        let big = rng.next();
        assert_eq!(parse_retry_after(&big.to_string(), now), Some(big));
        // Wider than u64: the longest wait, never a wrapped number or no hint.
        let wide = format!("{}{:020}", big.max(1), rng.below(1 << 30));
        assert_eq!(parse_retry_after(&wide, now), Some(u64::MAX), "{wide}");
        assert_eq!(parse_retry_after(&format!("-{n}"), now), None);

        // A date in years 1..=9999: seconds until it, rounded up, 0 when past.
        let t = match rng.below(3) {
            0 => rng.range(FIRST, LAST),
            _ => (now / 1000).clamp(FIRST, LAST) + rng.range(-100_000, 100_000),
        }
        .clamp(FIRST, LAST);
        if let Some([imf, rfc850, asctime]) = http_dates(t) {
            let want = u64::try_from(
                (i128::from(t) * 1000 - i128::from(now)).clamp(0, i128::from(i64::MAX)),
            )
            .map(|ms| ms.div_ceil(1000))
            .ok();
            assert_eq!(parse_retry_after(&imf, now), want, "{imf:?} now {now}");
            assert_eq!(
                parse_retry_after(&asctime, now),
                want,
                "{asctime:?} now {now}"
            );
            // rfc850's two-digit year is read within 50 years of now.
            let now_s = now.div_euclid(1000);
            if (now_s - t).abs() < 40 * 365 * 86_400 && (FIRST..=LAST).contains(&now_s) {
                assert_eq!(
                    parse_retry_after(&rfc850, now),
                    want,
                    "{rfc850:?} now {now}"
                );
            }
            // Damaged dates: any answer, but no panic, and never beyond year 9999.
            for s in [imf, rfc850, asctime] {
                let mut b = s.into_bytes();
                mutate_bytes(rng, &mut b);
                let s = String::from_utf8_lossy(&b);
                if let Some(secs) = parse_retry_after(&s, now) {
                    if !s.trim_ascii().bytes().all(|c| c.is_ascii_digit()) {
                        assert!(
                            i128::from(secs)
                                <= (i128::from(LAST) - i128::from(now) / 1000 + 1).max(0),
                            "{s:?} now {now}: {secs}"
                        );
                    }
                }
            }
        }
        // Random text.
        let _ = parse_retry_after(&random_string(rng), now);
        let b = rng.bytes(40);
        let _ = parse_retry_after(&String::from_utf8_lossy(&b), now);
    });
}

// --- the store ---

fn store_path() -> &'static Path {
    Path::new("qwen-accounts.json")
}

/// A random store that files.md allows, as JSON.
fn valid_store(rng: &mut Rng) -> Value {
    let max = rng.range(1, MAX_ACCOUNTS as i64);
    let n = rng.range(0, max) as usize;
    let time = |rng: &mut Rng| rng.range(0, 253_402_300_799_999);
    let mut ids: Vec<String> = Vec::new();
    let mut accounts = Vec::new();
    for i in 0..n {
        let id = if rng.one_in(5) {
            format!("x{}-{i}", random_string(rng))
        } else {
            (i + 1).to_string()
        };
        ids.push(id.clone());
        let mut a = Map::new();
        a.insert("id".into(), id.into());
        a.insert(
            "email".into(),
            if rng.one_in(4) {
                Value::Null
            } else {
                random_string(rng).into()
            },
        );
        a.insert(
            "access_token".into(),
            format!("at-SECRET-{}", rng.next()).into(),
        );
        a.insert(
            "refresh_token".into(),
            format!("rt-SECRET-{}", rng.next()).into(),
        );
        if rng.one_in(2) {
            a.insert("token_type".into(), "Bearer".into());
        }
        a.insert(
            "resource_url".into(),
            if rng.one_in(2) {
                Value::Null
            } else {
                random_string(rng).into()
            },
        );
        a.insert("expiry_date".into(), time(rng).into());
        for k in [
            "created_at",
            "last_used_at",
            "rate_limit_resets_at",
            "last_rate_limited_at",
            "status_changed_at",
        ] {
            match rng.below(3) {
                0 => {}
                1 => {
                    a.insert(k.into(), Value::Null);
                }
                _ => {
                    a.insert(k.into(), time(rng).into());
                }
            }
        }
        if rng.one_in(2) {
            a.insert("total_requests".into(), rng.range(0, i64::MAX).into());
        }
        if rng.one_in(2) {
            a.insert("consecutive_rate_limits".into(), (rng.next() as u32).into());
        }
        if rng.one_in(2) {
            a.insert("is_primary".into(), rng.one_in(2).into());
        }
        if rng.one_in(3) {
            a.insert("status".into(), (*rng.pick(&["active", "revoked"])).into());
        }
        for k in ["rate_limit_reason", "status_reason", "linked_file"] {
            if rng.one_in(3) {
                a.insert(k.into(), random_string(rng).into());
            }
        }
        if rng.one_in(3) {
            a.insert(format!("other_{}", random_string(rng)), random_json(rng, 2));
        }
        accounts.push(Value::Object(a));
    }
    let mut s = Map::new();
    if !rng.one_in(5) {
        s.insert(
            "version".into(),
            (*rng.pick(&["1.0", "1", "1.7", "01.0"])).into(),
        );
    }
    if !rng.one_in(5) {
        s.insert("max_accounts".into(), max.into());
    }
    s.insert("accounts".into(), Value::Array(accounts));
    let current = match (rng.below(3), ids.is_empty()) {
        (0, _) | (_, true) => Value::Null,
        (1, false) => rng.pick(&ids).clone().into(),
        _ => random_string(rng).into(),
    };
    s.insert("current_account_id".into(), current);
    if rng.one_in(3) {
        s.insert("current_streak".into(), rng.range(0, i64::MAX).into());
    }
    if rng.one_in(3) {
        s.insert("last_background_refresh_at".into(), time(rng).into());
    }
    if rng.one_in(3) {
        s.insert(format!("tool_{}", random_string(rng)), random_json(rng, 3));
    }
    Value::Object(s)
}

/// Structural damage: a field's type swapped, removed, nulled; an account duplicated; too
/// many accounts.
fn mutate_store(rng: &mut Rng, v: &mut Value) {
    let Value::Object(top) = v else { return };
    let accounts_len = top
        .get("accounts")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let target: &mut Map<String, Value> = if accounts_len > 0 && rng.one_in(2) {
        let i = rng.index(accounts_len);
        match top
            .get_mut("accounts")
            .and_then(Value::as_array_mut)
            .and_then(|a| a.get_mut(i))
        {
            Some(Value::Object(m)) => m,
            _ => return,
        }
    } else {
        top
    };
    let keys: Vec<String> = target.keys().cloned().collect();
    if keys.is_empty() {
        return;
    }
    let key = rng.pick(&keys).clone();
    match rng.below(5) {
        0 => {
            target.remove(&key);
        }
        1 => {
            target.insert(key, Value::Null);
        }
        2 => {
            let old = target.get(&key).cloned().unwrap_or(Value::Null);
            target.insert(key, swap_type(rng, &old));
        }
        3 => {
            target.insert(key, random_number(rng));
        }
        _ => {
            if let Some(Value::Array(a)) = v.get_mut("accounts") {
                if let Some(first) = a.first().cloned() {
                    while a.len() <= MAX_ACCOUNTS && !rng.one_in(4) {
                        a.push(first.clone());
                    }
                }
            }
        }
    }
}

/// What every store `parse` accepts must satisfy; and it must survive a write and re-read.
fn check_store(s: &Store, input: &[u8]) {
    assert!(s.max_accounts >= 1 && s.max_accounts <= MAX_ACCOUNTS);
    assert!(s.accounts.len() <= s.max_accounts);
    for (i, a) in s.accounts.iter().enumerate() {
        assert!(!a.id.is_empty() && !a.access_token.expose().is_empty());
        assert!(!a.refresh_token.expose().is_empty());
        assert!(s.accounts[..i].iter().all(|b| b.id != a.id), "duplicate id");
        for t in [
            Some(a.expiry_date),
            Some(a.created_at),
            a.last_used_at,
            a.rate_limit_resets_at,
            a.last_rate_limited_at,
            a.status_changed_at,
        ]
        .into_iter()
        .flatten()
        {
            assert!((0..=253_402_300_799_999).contains(&t), "time {t}");
        }
        assert!(a.status == Status::Active || a.status == Status::Revoked);
    }
    let written = s.to_json();
    let again = Store::parse(&written, store_path()).unwrap_or_else(|e| {
        panic!(
            "a parsed store does not re-parse: {e}\ninput: {}\nwritten: {}",
            String::from_utf8_lossy(input),
            String::from_utf8_lossy(&written)
        )
    });
    assert_eq!(&again, s, "round trip changed the store");
    assert_eq!(
        String::from_utf8_lossy(&again.to_json()),
        String::from_utf8_lossy(&written),
        "writing is not stable"
    );
}

/// An error names the file and never quotes a token.
fn check_store_error(e: &crate::error::Error) {
    assert_eq!(e.exit_code(), 6);
    let msg = e.to_string();
    assert!(msg.starts_with("qwen-accounts.json: "), "{msg}");
    assert!(!msg.contains("SECRET"), "a token in an error: {msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

#[test]
fn store_parse_never_panics_and_round_trips() {
    fuzz("store", 600, |rng| {
        let mut v = valid_store(rng);
        let clean = serialize(rng, &v);
        match Store::parse(&clean, store_path()) {
            Ok(s) => check_store(&s, &clean),
            Err(e) => panic!(
                "a valid store was refused: {e}\n{}",
                String::from_utf8_lossy(&clean)
            ),
        }
        let mut bytes = match rng.below(4) {
            0 => rng.bytes(256),
            1 => {
                let j = random_json(rng, 4);
                serialize(rng, &j)
            }
            2 => {
                for _ in 0..=rng.below(2) {
                    mutate_store(rng, &mut v);
                }
                serialize(rng, &v)
            }
            _ => clean,
        };
        if rng.one_in(2) {
            mutate_bytes(rng, &mut bytes);
        }
        match Store::parse(&bytes, store_path()) {
            Ok(s) => check_store(&s, &bytes),
            Err(e) => check_store_error(&e),
        }
    });
}

/// Found by the store target: `Map::remove` swapped the last unknown field into the hole a
/// known one left, so every rewrite reordered other tools' fields.
#[test]
fn unknown_fields_keep_their_order_across_rewrites() {
    let text = br#"{"z": 1, "version": "1.0", "a": 2, "accounts": [], "m": 3, "b": 4}"#;
    let s = Store::parse(text, store_path()).unwrap_or_else(|e| panic!("{e}"));
    let keys: Vec<&str> = s.extra.keys().map(String::as_str).collect();
    assert_eq!(keys, ["z", "a", "m", "b"]);
    let again = Store::parse(&s.to_json(), store_path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.to_json(), s.to_json());
}

// --- the config ---

/// A random value the schema allows for `key`.
fn valid_config_value(rng: &mut Rng, key: &str, p: &Value) -> Value {
    if let Some(names) = p["enum"].as_array() {
        return rng.pick(names).clone();
    }
    match p["type"].as_str() {
        Some("boolean") => Value::Bool(rng.one_in(2)),
        Some("integer") => {
            let (lo, hi) = (
                p["minimum"].as_i64().unwrap_or(0),
                p["maximum"].as_i64().unwrap_or(0),
            );
            let mid = rng.range(lo, hi);
            Value::from(*rng.pick(&[lo, hi, mid]))
        }
        _ => Value::from(match key {
            "quota_reset_time" => format!("{:02}:{:02}", rng.below(24), rng.below(60)),
            "quota_reset_utc_offset" => format!(
                "{}{:02}:{:02}",
                rng.pick(&["+", "-"]),
                rng.below(24),
                rng.below(60)
            ),
            "oauth_base_url" => (*rng.pick(&[
                "https://chat.qwen.ai",
                "https://a.example/",
                "http://127.0.0.1:1234",
                "http://localhost:9",
                "http://[::1]:80",
            ]))
            .to_string(),
            _ => format!("v{}", rng.next()),
        }),
    }
}

/// How the same value is spelled in a `QWEN_CRED_<KEY>` variable.
fn env_text(rng: &mut Rng, v: &Value) -> String {
    match v {
        Value::Bool(b) => (*rng.pick(if *b { &["true", "1"] } else { &["false", "0"] })).into(),
        Value::String(s) => s.clone(),
        Value::Number(n) if rng.one_in(3) => format!(" {n} "),
        other => other.to_string(),
    }
}

/// Whether a resolved value is one the schema allows, and that the typed getters read.
fn check_config_value(key: &str, v: &Value, p: &Value) {
    if let Some(names) = p["enum"].as_array() {
        assert!(names.contains(v), "{key}: {v}");
    }
    match p["type"].as_str() {
        Some("boolean") => assert!(v.is_boolean(), "{key}: {v}"),
        Some("integer") => {
            let n = v.as_i64().unwrap_or(i64::MIN);
            assert!(
                p["minimum"].as_i64() <= Some(n) && Some(n) <= p["maximum"].as_i64(),
                "{key}: {v}"
            );
            assert!(v.as_u64().is_some(), "{key}: {v} is read as u64");
        }
        _ => {
            let s = v.as_str().unwrap_or_default();
            assert!(!s.trim().is_empty(), "{key}: {v}");
            match key {
                "quota_reset_time" => assert!(crate::rotation::parse_reset_time(s).is_some()),
                "quota_reset_utc_offset" => {
                    assert!(crate::rotation::parse_utc_offset(s).is_some())
                }
                "oauth_base_url" => assert!(crate::oauth::check_url(s).is_ok(), "{s}"),
                _ => {}
            }
        }
    }
}

#[test]
fn config_parse_never_panics_and_accepts_only_valid_values() {
    let schema = schema();
    let props: Vec<(String, Value)> = schema["properties"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    assert!(props.len() > 10);
    fuzz("config", 800, |rng| {
        // A valid file and environment: accepted, with env > file > default.
        let mut file = Map::new();
        let mut env: Vec<(String, String)> = Vec::new();
        let mut want: Vec<(String, Value, Source)> = Vec::new();
        for (k, p) in &props {
            let (v, src) = match rng.below(3) {
                0 => (p["default"].clone(), Source::Default),
                1 => {
                    let v = valid_config_value(rng, k, p);
                    file.insert(k.clone(), v.clone());
                    (v, Source::File)
                }
                _ => {
                    let v = valid_config_value(rng, k, p);
                    if rng.one_in(2) {
                        file.insert(k.clone(), valid_config_value(rng, k, p));
                    }
                    env.push((k.clone(), env_text(rng, &v)));
                    (v, Source::Env)
                }
            };
            want.push((k.clone(), v, src));
        }
        let text = serialize(rng, &Value::Object(file.clone()));
        let lookup = |env: &[(String, String)]| {
            let env = env.to_vec();
            move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        };
        let got = parse_config_text(&text, lookup(&env)).unwrap_or_else(|e| {
            panic!(
                "a valid config was refused: {e}\n{}",
                String::from_utf8_lossy(&text)
            )
        });
        let got: Vec<(String, Value, Source)> = got
            .into_iter()
            .map(|(k, v, s)| (k.to_string(), v, s))
            .collect();
        assert_eq!(got, want);

        // Then damage: a value of another type, an unknown key, bad env text, bad bytes.
        let mut file = Value::Object(file);
        let (k, p) = rng.pick(&props);
        match rng.below(5) {
            0 => file[k.as_str()] = swap_type(rng, &p["default"]),
            1 => file[k.as_str()] = random_json(rng, 2),
            2 => file[random_string(rng)] = random_json(rng, 1),
            3 => {
                env.retain(|(n, _)| n != k);
                env.push((k.clone(), random_string(rng)));
            }
            _ => {}
        }
        let mut text = serialize(rng, &file);
        if rng.one_in(3) {
            mutate_bytes(rng, &mut text);
        }
        if rng.one_in(10) {
            text = rng.bytes(64);
        }
        match parse_config_text(&text, lookup(&env)) {
            Ok(values) => {
                assert_eq!(values.len(), props.len());
                for (k, v, _) in &values {
                    check_config_value(k, v, &schema["properties"][*k]);
                }
                // The typed getters behind every command must not trip on what was accepted.
                let cfg = Config {
                    settings: crate::config::Settings::from_resolved(&values),
                    values,
                    dir: PathBuf::new(),
                    config_path: PathBuf::new(),
                    qwen_dir: PathBuf::new(),
                    opencode_auth_file: PathBuf::new(),
                    account_id_env: None,
                    browser: None,
                    has_display: false,
                    debug: false,
                };
                let _ = cfg.rotation_policy();
                let _ = cfg.oauth_settings();
                let _ = cfg.lock_timeout();
            }
            Err(e) => {
                assert_eq!(e.exit_code(), 6);
                let msg = e.to_string();
                assert!(
                    msg.starts_with("qwen.json") || msg.starts_with("QWEN_CRED_"),
                    "{msg}"
                );
            }
        }
    });
}

// --- the OAuth token answer ---

#[test]
fn token_response_never_panics_and_keeps_what_it_was_given() {
    fuzz("token_response", 2000, |rng| {
        let at = format!("at-SECRET-{}", rng.next());
        let rt = format!("rt-SECRET-{}", rng.next());
        let expires = rng.range(1, i64::MAX);
        let mut v = json!({
            "access_token": at,
            "refresh_token": rt,
            "token_type": "Bearer",
            "expires_in": if rng.one_in(4) { Value::from(format!(" {expires}")) } else { Value::from(expires) },
            "resource_url": "portal.qwen.ai",
            "id_token": "a.b.c",
        });
        let t = TokenResponse::from_json(&v);
        assert_eq!(
            t.access_token.as_ref().map(|s| s.expose()),
            Some(at.as_str())
        );
        assert_eq!(
            t.refresh_token.as_ref().map(|s| s.expose()),
            Some(rt.as_str())
        );
        assert_eq!(t.expires_in, expires as u64);

        // Damage: fields removed, nulled, of other types; or any JSON at all.
        let keys = [
            "access_token",
            "refresh_token",
            "token_type",
            "expires_in",
            "resource_url",
            "id_token",
        ];
        for _ in 0..=rng.below(3) {
            let k = *rng.pick(&keys);
            match rng.below(4) {
                0 => {
                    if let Some(m) = v.as_object_mut() {
                        m.remove(k);
                    }
                }
                1 => v[k] = Value::Null,
                2 => v[k] = random_json(rng, 2),
                _ => v[k] = random_number(rng),
            }
        }
        if rng.one_in(5) {
            v = random_json(rng, 3);
        }
        let mut bytes = serialize(rng, &v);
        if rng.one_in(4) {
            mutate_bytes(rng, &mut bytes);
        }
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            return;
        };
        // Whatever came, what is kept is what was sent, and a kept access token is fit
        // for a header line; a refresh token sent is never dropped.
        let t = TokenResponse::from_json(&v);
        if let Some(a) = &t.access_token {
            let a = a.expose();
            assert!(!a.is_empty() && !a.chars().any(|c| c.is_whitespace() || c.is_control()));
            assert_eq!(Some(a), v.get("access_token").and_then(Value::as_str));
        }
        let sent_rt = v
            .get("refresh_token")
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty());
        assert_eq!(t.refresh_token.as_ref().map(|s| s.expose()), sent_rt);
        assert!(!t.token_type.trim().is_empty());
    });
}
