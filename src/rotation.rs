//! Rotation as pure functions of the store and a `now` in Unix ms (rotation.md): which account
//! serves a token, when a token must be refreshed, how a 429 report is classified and booked,
//! and when the daily quota resets. No I/O, no clock and no environment here, so every rule is
//! unit-tested with a fixed `now`; the commands do the sleeping, locking and printing.

use crate::store::{Account, Status, Store, MAX_COUNT, RECENT_STEPS, RECENT_STEP_MS};
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

const DAY_MS: i64 = 86_400_000;
/// Tokens this close to expiry count as expired: absorbs clock skew (README.md).
const EXPIRY_SKEW_MS: i64 = 60_000;
/// Reports within this window of the cooldown they hit are in-flight duplicates (rotation.md).
const IDEMPOTENCE_MS: i64 = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Sticky,
    RoundRobin,
    LeastUsed,
    Hybrid,
}

impl Strategy {
    /// The config spellings, in the order of the enum.
    pub const NAMES: [&'static str; 4] = ["sticky", "round-robin", "least-used", "hybrid"];

    pub fn parse(s: &str) -> Option<Strategy> {
        match s {
            "sticky" => Some(Strategy::Sticky),
            "round-robin" => Some(Strategy::RoundRobin),
            "least-used" => Some(Strategy::LeastUsed),
            "hybrid" => Some(Strategy::Hybrid),
            _ => None,
        }
    }
}

/// Local time of the daily quota reset at a fixed UTC offset (no DST: the service resets at a
/// fixed wall-clock time in its own zone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaReset {
    pub hour: u8,
    pub minute: u8,
    pub offset: UtcOffset,
}

impl Default for QuotaReset {
    fn default() -> Self {
        QuotaReset {
            hour: 0,
            minute: 0,
            offset: time::macros::offset!(+8),
        }
    }
}

/// The config keys rotation needs (files.md); `Default` holds the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub strategy: Strategy,
    pub hybrid_rotation_requests: u64,
    pub switch_on_first_rate_limit: bool,
    pub retry_same_account_threshold_seconds: u64,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub quota_reset: QuotaReset,
    pub proactive_token_refresh: bool,
    pub proactive_refresh_buffer_seconds: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            strategy: Strategy::Sticky,
            hybrid_rotation_requests: 50,
            switch_on_first_rate_limit: true,
            retry_same_account_threshold_seconds: 5,
            backoff_base_ms: 1000,
            backoff_max_ms: 32_000,
            quota_reset: QuotaReset::default(),
            proactive_token_refresh: true,
            proactive_refresh_buffer_seconds: 1800,
        }
    }
}

/// Exactly two ASCII digits.
fn two_digits(b: &[u8]) -> Option<u8> {
    match b {
        [h @ b'0'..=b'9', l @ b'0'..=b'9'] => Some((h - b'0') * 10 + (l - b'0')),
        _ => None,
    }
}

/// `"HH:MM"`, 00:00 to 23:59, two digits each.
pub fn parse_reset_time(s: &str) -> Option<(u8, u8)> {
    let (h, m) = s.split_once(':')?;
    let (h, m) = (two_digits(h.as_bytes())?, two_digits(m.as_bytes())?);
    (h < 24 && m < 60).then_some((h, m))
}

/// `"+HH:MM"` or `"-HH:MM"`, -23:59 to +23:59. Strict so a typo is a config error, not a
/// silently wrong reset time.
pub fn parse_utc_offset(s: &str) -> Option<UtcOffset> {
    let sign: i8 = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = parse_reset_time(s.get(1..)?)?;
    // Both components carry the sign: time rejects mixed signs.
    UtcOffset::from_hms(sign * h as i8, sign * m as i8, 0).ok()
}

fn datetime(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

fn unix_ms(dt: OffsetDateTime) -> i64 {
    i64::try_from(dt.unix_timestamp_nanos().div_euclid(1_000_000)).unwrap_or(i64::MAX)
}

/// The first instant strictly after `now_ms` at which the wall clock at `reset.offset` reads
/// `reset.hour:reset.minute`.
pub fn next_quota_reset(now_ms: i64, reset: &QuotaReset) -> i64 {
    // Only reachable with a hand-built QuotaReset or a `now` outside years -9999..9999.
    let fallback = now_ms.saturating_add(DAY_MS);
    let Some(local) = datetime(now_ms).and_then(|dt| dt.checked_to_offset(reset.offset)) else {
        return fallback;
    };
    let Ok(at) = Time::from_hms(reset.hour, reset.minute, 0) else {
        return fallback;
    };
    // A fixed offset has no DST, so the next day's reset is exactly 24 h later.
    let today = unix_ms(local.replace_time(at));
    if today > now_ms {
        today
    } else {
        today.saturating_add(DAY_MS)
    }
}

/// The daily quota reset at or before `now_ms`: the start of the quota day.
pub fn last_quota_reset(now_ms: i64, reset: &QuotaReset) -> i64 {
    next_quota_reset(now_ms, reset).saturating_sub(DAY_MS)
}

/// Not cooling down. Revoked and disabled accounts are never usable (for rotation; a pinned
/// `--account` may still serve a disabled one).
pub fn is_usable(a: &Account, now: i64) -> bool {
    a.status != Status::Revoked && !a.disabled && !is_cooling(a, now)
}

/// May wait for its cooldown to end: not revoked, not disabled.
fn in_rotation(a: &Account) -> bool {
    a.status != Status::Revoked && !a.disabled
}

/// Its cooldown ends in the future (whatever its status).
pub fn is_cooling(a: &Account, now: i64) -> bool {
    a.rate_limit_resets_at.is_some_and(|r| r > now)
}

/// A key account never expires.
pub fn is_expired(a: &Account, now: i64) -> bool {
    !a.is_key() && now >= a.expiry_date.saturating_sub(EXPIRY_SKEW_MS)
}

/// A key account is never due: it has nothing to refresh.
pub fn is_due(a: &Account, now: i64, policy: &Policy) -> bool {
    !a.is_key()
        && now
            >= a.expiry_date
                .saturating_sub(secs_to_ms(policy.proactive_refresh_buffer_seconds))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The token cannot be served (expired, or valid for less than `--min-valid`): refresh or
    /// try another account.
    Expired,
    /// Still servable: refresh if possible, else serve it anyway.
    Due,
}

/// Never for a key account: refresh does not apply, and `--min-valid` is always met.
pub fn needs_refresh(a: &Account, now: i64, min_valid_secs: u64, policy: &Policy) -> Option<Need> {
    if a.is_key() {
        None
    } else if is_expired(a, now) || now >= a.expiry_date.saturating_sub(secs_to_ms(min_valid_secs))
    {
        Some(Need::Expired)
    } else if policy.proactive_token_refresh && is_due(a, now, policy) {
        Some(Need::Due)
    } else {
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// Index into `store.accounts`.
    Account(usize),
    /// Nothing usable now, but some account's cooldown ends at `soonest_ms`.
    AllCooling { soonest_ms: i64 },
    /// Nothing to wait for: the pool is empty, revoked, disabled or skipped. `revoked` and
    /// `disabled` list the ids to name in the message.
    Unavailable {
        revoked: Vec<String>,
        disabled: Vec<String>,
    },
}

/// The first index after `from` (wrapping, `from` itself last) that satisfies `ok`.
fn next_after(len: usize, from: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
    (1..=len).map(|k| (from + k) % len).find(|&i| ok(i))
}

/// Chooses the account for this call per `policy.strategy` (rotation.md). `skip` holds ids
/// that already failed in this call. Does not change the store: `record_use` does.
pub fn pick(store: &Store, policy: &Policy, now: i64, skip: &[String]) -> Pick {
    let accounts = &store.accounts;
    let len = accounts.len();
    let ok = |i: usize| {
        let a = &accounts[i];
        is_usable(a, now) && !skip.contains(&a.id)
    };
    let current = store
        .current_account_id
        .as_deref()
        .and_then(|id| accounts.iter().position(|a| a.id == id));
    let first = || (0..len).find(|&i| ok(i));

    let chosen = match (policy.strategy, current) {
        (Strategy::LeastUsed, _) => (0..len)
            .filter(|&i| ok(i))
            .min_by_key(|&i| accounts[i].total_requests),
        (_, None) => first(),
        (Strategy::Sticky, Some(c)) if ok(c) => Some(c),
        (Strategy::Hybrid, Some(c))
            if ok(c) && store.current_streak < policy.hybrid_rotation_requests =>
        {
            Some(c)
        }
        (_, Some(c)) => next_after(len, c, ok),
    };
    if let Some(i) = chosen {
        return Pick::Account(i);
    }
    let waiting = accounts
        .iter()
        .filter(|a| in_rotation(a) && !skip.contains(&a.id))
        .filter_map(|a| a.rate_limit_resets_at.filter(|&r| r > now))
        .min();
    let ids = |f: &dyn Fn(&Account) -> bool| -> Vec<String> {
        accounts
            .iter()
            .filter(|a| f(a))
            .map(|a| a.id.clone())
            .collect()
    };
    match waiting {
        Some(soonest_ms) => Pick::AllCooling { soonest_ms },
        None => Pick::Unavailable {
            revoked: ids(&|a| a.status == Status::Revoked),
            disabled: ids(&|a| a.status != Status::Revoked && a.disabled),
        },
    }
}

/// A pinned token (`--account`) counts as a use but does not move `current`.
pub fn record_pinned(s: &mut Store, i: usize, policy: &Policy, now: i64) -> Account {
    let a = &mut s.accounts[i];
    count_use(a, policy, now);
    a.clone()
}

/// Counts one served token in the figures `status` shows: the total, the requests since the
/// daily reset and those per 10-minute step. A few integers, updated under the lock the call
/// holds anyway.
fn count_use(a: &mut Account, policy: &Policy, now: i64) {
    a.total_requests = a.total_requests.saturating_add(1).min(MAX_COUNT);
    a.last_used_at = Some(now);
    let day = last_quota_reset(now, &policy.quota_reset);
    if a.daily_requests_since != Some(day) {
        a.daily_requests = 0;
        a.daily_requests_since = Some(day);
    }
    a.daily_requests = a.daily_requests.saturating_add(1).min(MAX_COUNT);
    let step = now.div_euclid(RECENT_STEP_MS) * RECENT_STEP_MS;
    a.recent_requests = recent_steps(a, step);
    // A clock that stepped back keeps counting into the newest step.
    a.recent_requests_at = Some(a.recent_requests_at.map_or(step, |at| at.max(step)));
    let last = &mut a.recent_requests[RECENT_STEPS - 1];
    *last = last.saturating_add(1).min(MAX_COUNT);
}

/// `a.recent_requests` moved on to the step that starts at `step`: older steps shift out.
fn recent_steps(a: &Account, step: i64) -> [u64; RECENT_STEPS] {
    let Some(at) = a.recent_requests_at else {
        return [0; RECENT_STEPS];
    };
    let shift = usize::try_from(step.saturating_sub(at) / RECENT_STEP_MS).unwrap_or(0);
    let mut out = [0; RECENT_STEPS];
    if shift < RECENT_STEPS {
        out[..RECENT_STEPS - shift].copy_from_slice(&a.recent_requests[shift..]);
    }
    out
}

/// Tokens served in the last hour: the current 10-minute step and the five before it.
pub fn requests_last_hour(a: &Account, now: i64) -> u64 {
    let step = now.div_euclid(RECENT_STEP_MS) * RECENT_STEP_MS;
    recent_steps(a, step)
        .iter()
        .fold(0u64, |sum, &n| sum.saturating_add(n))
}

/// Tokens served since the last daily quota reset.
pub fn requests_today(a: &Account, now: i64, reset: &QuotaReset) -> u64 {
    match a.daily_requests_since {
        Some(since) if since == last_quota_reset(now, reset) => a.daily_requests,
        _ => 0,
    }
}

/// Whether to start a detached `refresh --due`: another account is due and none was started
/// within `interval_ms` (`proactive_refresh_check_interval_seconds`, recorded in the store).
pub fn background_refresh_due(
    s: &mut Store,
    served: usize,
    policy: &Policy,
    now: i64,
    interval_ms: i64,
) -> bool {
    if !policy.proactive_token_refresh {
        return false;
    }
    if s.last_background_refresh_at
        .is_some_and(|t| now - t < interval_ms && t <= now)
    {
        return false;
    }
    let due = s
        .accounts
        .iter()
        .enumerate()
        .any(|(j, a)| j != served && a.status == Status::Active && is_due(a, now, policy));
    if due {
        s.last_background_refresh_at = Some(now);
    }
    due
}

/// Books one served token: the account becomes current and its use is counted.
pub fn record_use(store: &mut Store, idx: usize, policy: &Policy, now: i64) {
    let Some(a) = store.accounts.get_mut(idx) else {
        return;
    };
    count_use(a, policy, now);
    if store.current_account_id.as_deref() == Some(a.id.as_str()) {
        store.current_streak = store.current_streak.saturating_add(1).min(MAX_COUNT);
    } else {
        store.current_account_id = Some(a.id.clone());
        store.current_streak = 1;
    }
}

/// The soonest future cooldown end among accounts in rotation (not revoked, not disabled).
pub fn soonest_reset(store: &Store, now: i64) -> Option<i64> {
    store
        .accounts
        .iter()
        .filter(|a| in_rotation(a))
        .filter_map(|a| a.rate_limit_resets_at.filter(|&r| r > now))
        .min()
}

/// Seconds to wait per a Retry-After value: delta-seconds or an HTTP-date (RFC 9110 §10.2.3).
/// `None` means no usable hint (the caller falls back to backoff); a past date means 0, and
/// delta-seconds past `u64` mean `u64::MAX` (a very long wait, which the caller caps), never
/// no hint.
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<u64> {
    let v = value.trim_ascii();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(v.parse().unwrap_or(u64::MAX));
    }
    let at = parse_http_date(v, now_ms)?;
    let ahead = u64::try_from(at.saturating_sub(now_ms)).unwrap_or(0);
    // Round up so a caller that sleeps this long never retries before the date.
    Some(ahead.div_ceil(1000))
}

const SHORT_DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const LONG_DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Digits only, `min..=max` of them.
fn digits(s: &str, min: usize, max: usize) -> Option<i32> {
    let ok = (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| s.parse().ok()).flatten()
}

fn month(s: &str) -> Option<Month> {
    let i = MONTHS.iter().position(|m| *m == s)?;
    Month::try_from(u8::try_from(i + 1).ok()?).ok()
}

/// The three HTTP-date forms of RFC 9110 §5.6.7, as Unix ms. The day name is checked for
/// spelling only; the date decides.
pub fn parse_http_date(s: &str, now_ms: i64) -> Option<i64> {
    let parts: Vec<&str> = s.split_ascii_whitespace().collect();
    let (day, mon, year, clock) = match parts.as_slice() {
        // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
        [wd, d, m, y, t, "GMT"] if SHORT_DAYS.contains(&wd.strip_suffix(',')?) => {
            (digits(d, 2, 2)?, month(m)?, digits(y, 4, 4)?, *t)
        }
        // rfc850-date: "Sunday, 06-Nov-94 08:49:37 GMT"
        [wd, dmy, t, "GMT"] if LONG_DAYS.contains(&wd.strip_suffix(',')?) => {
            let mut it = dmy.split('-');
            let (d, m, yy) = (it.next()?, it.next()?, it.next()?);
            if it.next().is_some() {
                return None;
            }
            // A two-digit year more than 50 years ahead is in the previous century.
            let this_year = datetime(now_ms)?.year();
            let mut year = this_year - this_year.rem_euclid(100) + digits(yy, 2, 2)?;
            if year > this_year + 50 {
                year -= 100;
            } else if year <= this_year - 50 {
                year += 100;
            }
            (digits(d, 2, 2)?, month(m)?, year, *t)
        }
        // asctime-date: "Sun Nov  6 08:49:37 1994"
        [wd, m, d, t, y] if SHORT_DAYS.contains(wd) => {
            (digits(d, 1, 2)?, month(m)?, digits(y, 4, 4)?, *t)
        }
        _ => return None,
    };
    let mut hms = clock.split(':');
    let (h, m, sec) = (hms.next()?, hms.next()?, hms.next()?);
    if hms.next().is_some() {
        return None;
    }
    let (h, m, sec) = (
        two_digits(h.as_bytes())?,
        two_digits(m.as_bytes())?,
        two_digits(sec.as_bytes())?,
    );
    if sec > 60 {
        return None;
    }
    let date = Date::from_calendar_date(year, mon, u8::try_from(day).ok()?).ok()?;
    // RFC 9110 allows a leap second (60); time does not, and one second does not matter here.
    let time = Time::from_hms(h, m, sec.min(59)).ok()?;
    Some(unix_ms(PrimitiveDateTime::new(date, time).assume_utc()))
}

// ---- Rate-limit headers (`report-429 --headers`) ----

const NS_PER_MS: u128 = 1_000_000;
const NS_PER_SEC: u128 = 1_000_000_000;

/// A duration's units (in ns), each spelling before any it starts with (`ms` before `m`).
const UNITS: [(&str, u128); 10] = [
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),
    ("\u{3bc}s", 1_000),
    ("ms", NS_PER_MS),
    ("s", NS_PER_SEC),
    ("m", 60 * NS_PER_SEC),
    ("h", 3_600 * NS_PER_SEC),
    ("d", 86_400 * NS_PER_SEC),
    ("w", 604_800 * NS_PER_SEC),
];

fn is_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

/// The decimal number `int.frac` (digit strings, either may be empty) times `unit_ns`, in ns,
/// rounded up; saturates instead of overflowing.
fn scaled_ns(int: &str, frac: &str, unit_ns: u128) -> u128 {
    let digit = |b: u8| u128::from(b - b'0');
    let whole = int
        .bytes()
        .fold(0u128, |n, b| n.saturating_mul(10).saturating_add(digit(b)));
    // 20 fraction digits are exact for every unit up to a week (10^20 x 6.048e14 < 2^128);
    // the digits after them are worth less than 1 ns, so a nonzero one rounds up by 1 ns.
    let (head, tail) = frac.split_at(frac.len().min(20));
    let f = head.bytes().fold(0u128, |n, b| n * 10 + digit(b));
    let part = (f * unit_ns).div_ceil(10u128.pow(head.len() as u32))
        + u128::from(tail.bytes().any(|b| b != b'0'));
    whole.saturating_mul(unit_ns).saturating_add(part)
}

/// Nanoseconds as whole milliseconds, rounded up so a caller never retries early; saturates.
fn ns_to_ms(ns: u128) -> u64 {
    u64::try_from(ns.div_ceil(NS_PER_MS)).unwrap_or(u64::MAX)
}

/// A duration in Go's syntax (`time.ParseDuration`), as ms rounded up: a sequence of decimal
/// numbers each with a unit, `ns`, `us` (`µs`, `μs`), `ms`, `s`, `m`, `h`, and beyond Go
/// `d` (24 h) and `w` (7 d): `6m0s`, `1h2m3.5s`, `250ms`, `1.5h`, `5h`, `7d`. A lone `0` needs
/// no unit. No sign but `+`, no spaces inside, no unit-less number: those are `None`. Huge
/// values saturate to `u64::MAX`. The one duration parser: rate-limit reset headers and a key
/// account's quota window (`--quota-window`) both use it.
pub fn parse_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim_ascii();
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut ns: u128 = 0;
    while !rest.is_empty() {
        let len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(len);
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        // `frac` with a second dot is not digits.
        if (int.is_empty() && frac.is_empty()) || !is_digits(int) || !is_digits(frac) {
            return None;
        }
        let (unit, unit_ns) = UNITS.iter().find(|(u, _)| after.starts_with(u))?;
        ns = ns.saturating_add(scaled_ns(int, frac, *unit_ns));
        rest = &after[unit.len()..];
    }
    Some(ns_to_ms(ns))
}

/// A bare decimal number (`20`, `7.66`) times `unit_ns`, as ms.
fn decimal_ms(v: &str, unit_ns: u128) -> Option<u64> {
    let v = v.trim_ascii();
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    (!int.is_empty() && is_digits(int) && is_digits(frac))
        .then(|| ns_to_ms(scaled_ns(int, frac, unit_ns)))
}

/// `X-RateLimit-Reset`, as ms from `now_ms`. Servers disagree on its meaning, so the size of
/// the number decides: below 10^9 it is delta-seconds (as some servers and the IETF draft
/// send; no Unix time in seconds is that small since 2001), below 10^12 Unix seconds (GitHub),
/// else Unix milliseconds (OpenRouter). A fraction is allowed; a past time is 0. A duration
/// such as `6m0s` is read as one.
fn parse_reset_epoch(v: &str, now_ms: i64) -> Option<u64> {
    let t = v.trim_ascii();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty() || !is_digits(int) || !is_digits(frac) {
        return parse_duration_ms(t);
    }
    let n = scaled_ns(int, "", 1);
    if n < 1_000_000_000 {
        return Some(ns_to_ms(scaled_ns(int, frac, NS_PER_SEC)));
    }
    let unit = if n < 1_000_000_000_000 {
        NS_PER_SEC
    } else {
        NS_PER_MS
    };
    let at = i128::try_from(scaled_ns(int, frac, unit)).unwrap_or(i128::MAX);
    let ahead = at.saturating_sub(i128::from(now_ms) * NS_PER_MS as i128);
    Some(ns_to_ms(u128::try_from(ahead).unwrap_or(0)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderKind {
    RetryAfter,
    ResetDuration,
    ResetEpoch,
}

/// The headers `report-429 --headers` reads, as they are usually spelt (matched without case),
/// and what a readable value looks like.
const RATE_LIMIT_HEADERS: [(&str, HeaderKind, &str); 4] = [
    (
        "Retry-After",
        HeaderKind::RetryAfter,
        "not delta-seconds or an HTTP-date",
    ),
    (
        "x-ratelimit-reset-requests",
        HeaderKind::ResetDuration,
        "not a duration like 6m0s",
    ),
    (
        "x-ratelimit-reset-tokens",
        HeaderKind::ResetDuration,
        "not a duration like 6m0s",
    ),
    (
        "X-RateLimit-Reset",
        HeaderKind::ResetEpoch,
        "not seconds, a Unix time or a duration",
    ),
];

/// One header value as ms from `now_ms`.
fn read_hint(kind: HeaderKind, v: &str, now_ms: i64) -> Option<u64> {
    match kind {
        HeaderKind::RetryAfter => parse_retry_after(v, now_ms).map(|s| s.saturating_mul(1000)),
        // OpenAI and Groq always give a unit; a bare number is read as seconds.
        HeaderKind::ResetDuration => parse_duration_ms(v).or_else(|| decimal_ms(v, NS_PER_SEC)),
        HeaderKind::ResetEpoch => parse_reset_epoch(v, now_ms),
    }
}

/// A value that may be a list joined with commas (a repeated field as fetch's `Headers` or a
/// proxy joins it): each element is read alone, an HTTP-date keeping its own comma, and the
/// latest wins. One unreadable element makes the value unreadable.
fn read_list(kind: HeaderKind, v: &str, now_ms: i64) -> Option<u64> {
    if let Some(ms) = read_hint(kind, v, now_ms) {
        return Some(ms);
    }
    let parts: Vec<&str> = v.split(',').collect();
    if parts.len() < 2 {
        return None;
    }
    let mut latest = None;
    let mut i = 0;
    while i < parts.len() {
        if parts[i].trim_ascii().is_empty() {
            i += 1;
            continue;
        }
        let (ms, used) = match read_hint(kind, parts[i], now_ms) {
            Some(ms) => (ms, 1),
            // "Sun, 06 Nov 1994 08:49:37 GMT" spans two elements.
            None => {
                let pair = parts
                    .get(i + 1)
                    .map(|next| format!("{},{next}", parts[i]))?;
                (read_hint(kind, &pair, now_ms)?, 2)
            }
        };
        latest = latest.max(Some(ms));
        i += used;
    }
    latest
}

/// One header field as sent: (name, value without surrounding whitespace).
type Field<'a> = (&'a [u8], &'a [u8]);

/// The fields of the last header block at the start of `bytes`, and where the body begins.
/// A block is a status line (optional), then `Name: value` lines up to an empty line, CRLF or
/// LF. Another block follows an empty line only if a status line starts it (a 1xx answer, a
/// redirect, a proxy's CONNECT, as `curl -D` and `curl -i` write them): its fields replace
/// the earlier ones. Continuation lines and lines that are not fields are skipped.
fn last_header_block(bytes: &[u8]) -> (Vec<Field<'_>>, usize) {
    let mut fields = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let eol = bytes[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| pos + i);
        let next = (eol + 1).min(bytes.len());
        let line = &bytes[pos..eol];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if bytes[next..].starts_with(b"HTTP/") {
                pos = next;
                continue;
            }
            return (fields, next);
        }
        if line.starts_with(b"HTTP/") {
            fields.clear();
        } else if !matches!(line[0], b' ' | b'\t') {
            if let Some(colon) = line.iter().position(|&b| b == b':') {
                fields.push((&line[..colon], line[colon + 1..].trim_ascii()));
            }
        }
        pos = next;
    }
    (fields, bytes.len())
}

/// Where the body begins in a response given as its header block, an empty line and the body
/// (what `curl -i` prints): after the last header block (see `last_header_block`), else the
/// end of `bytes`.
pub fn header_block_end(bytes: &[u8]) -> usize {
    last_header_block(bytes).1
}

/// What a response's header block says about when to retry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderHint {
    /// How long to wait, in ms from now; `None` when no header gave a readable value.
    pub wait_ms: Option<u64>,
    /// The header `wait_ms` came from, as `RATE_LIMIT_HEADERS` spells it.
    pub from: Option<&'static str>,
    /// Rate-limit headers whose value could not be read: (name, value, what is wrong).
    pub ignored: Vec<(&'static str, String, &'static str)>,
}

/// Reads the rate-limit headers of the last header block in `bytes` (see `last_header_block`;
/// names without case, anything unreadable skipped) into one hint, in this order:
/// 1. `Retry-After`, delta-seconds or an HTTP-date: the server's instruction for when to retry
///    (RFC 9110 section 10.2.3), so it wins whatever else is there;
/// 2. else the latest of `x-ratelimit-reset-requests` and `x-ratelimit-reset-tokens` (Go
///    durations, OpenAI style; which limit was hit is unknown, since a request can need more
///    tokens than remain, so the later reset is the safe one) and `X-RateLimit-Reset`.
///
/// A field given more than once (or as a comma-joined list) counts by its latest value.
/// Pure: `now_ms` turns dates and Unix times into waits.
pub fn header_hint(block: &[u8], now_ms: i64) -> HeaderHint {
    let mut retry_after: Option<(u64, &'static str)> = None;
    let mut reset: Option<(u64, &'static str)> = None;
    let mut ignored = Vec::new();
    for (name, value) in last_header_block(block).0 {
        let Some(&(known, kind, expected)) = RATE_LIMIT_HEADERS
            .iter()
            .find(|(k, _, _)| name.eq_ignore_ascii_case(k.as_bytes()))
        else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        let ms = std::str::from_utf8(value)
            .ok()
            .and_then(|v| read_list(kind, v, now_ms));
        let slot = match kind {
            HeaderKind::RetryAfter => &mut retry_after,
            _ => &mut reset,
        };
        match ms {
            Some(ms) => *slot = (*slot).max(Some((ms, known))),
            None => ignored.push((known, String::from_utf8_lossy(value).into_owned(), expected)),
        }
    }
    let best = retry_after.or(reset);
    HeaderHint {
        wait_ms: best.map(|b| b.0),
        from: best.map(|b| b.1),
        ignored,
    }
}

/// min(base x 2^(n-1), max) for the n-th consecutive 429 (n = 0 counts as 1); saturates.
pub fn backoff_ms(n: u32, base: u64, max: u64) -> u64 {
    let factor = 1u64.checked_shl(n.saturating_sub(1)).unwrap_or(u64::MAX);
    base.saturating_mul(factor).min(max)
}

/// What a wrapper learnt from one 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Report {
    /// The server's hint, in ms from now: `--retry-after`, else the response's headers
    /// (`header_hint`).
    pub retry_after_ms: Option<u64>,
    pub quota: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A duplicate of the report that set the current cooldown; nothing changed.
    Ignored,
    /// Wait this long and retry on the same account; no cooldown was set.
    SleepThenRetry { ms: u64 },
    /// The account cools down until `until_ms`; `reason` is `quota`, `retry-after` or `backoff`.
    Marked { until_ms: i64, reason: &'static str },
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

fn add_ms(now: i64, ms: u64) -> i64 {
    now.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))
}

fn static_reason(r: Option<&str>) -> Option<&'static str> {
    ["quota", "retry-after", "backoff"]
        .into_iter()
        .find(|k| Some(*k) == r)
}

/// Books a 429 on `store.accounts[idx]` (rotation.md, "Reporting a 429"). When the account was
/// current and gets marked, the next usable account per strategy becomes current.
pub fn report_429(
    store: &mut Store,
    idx: usize,
    report: &Report,
    policy: &Policy,
    now: i64,
) -> Outcome {
    let Some(acct) = store.accounts.get_mut(idx) else {
        return Outcome::Ignored;
    };
    let existing = acct.rate_limit_resets_at.filter(|&r| r > now);
    if existing.is_some()
        && acct
            .last_rate_limited_at
            .is_some_and(|t| now.saturating_sub(t) < IDEMPOTENCE_MS)
    {
        return Outcome::Ignored;
    }
    // The same for a first 429 that was only slept on (switch_on_first_rate_limit false):
    // reports that arrive while that sleep still runs come from requests in flight with it,
    // so they sleep out the rest of it rather than count as the second 429 in a row.
    if existing.is_none()
        && !policy.switch_on_first_rate_limit
        && !report.quota
        && report.retry_after_ms.is_none()
        && acct.consecutive_rate_limits == 1
    {
        let first = i64::try_from(backoff_ms(1, policy.backoff_base_ms, policy.backoff_max_ms))
            .unwrap_or(i64::MAX);
        if let Some(t) = acct
            .last_rate_limited_at
            .filter(|&t| t <= now && now - t < first)
        {
            return Outcome::SleepThenRetry {
                ms: (t + first - now) as u64,
            };
        }
    }

    // The streak of 429s restarts once the account has been quiet for 2 x max backoff after
    // its last episode (the end of its cooldown, or an unmarked first 429).
    let quiet_ms = i64::try_from(policy.backoff_max_ms.saturating_mul(2)).unwrap_or(i64::MAX);
    let prior = match acct.rate_limit_resets_at.max(acct.last_rate_limited_at) {
        Some(end) if now.saturating_sub(end) <= quiet_ms => acct.consecutive_rate_limits,
        _ => 0,
    };
    let n = prior.saturating_add(1);

    let (until, reason) = if report.quota {
        let until = match (acct.quota_window_ms, report.retry_after_ms) {
            // An account with its own quota window (a key's "N requests per 5 hours"): the
            // daily reset of the OAuth tier does not apply. The window began at or before
            // now, so it has reset by now + window at the latest (a rolling window too). A
            // hint says exactly when, as only the server knows where its window stands, and
            // may be later (a weekly quota behind a 5-hour one): it replaces the bound. The
            // backoff step is its floor, so a hint of 0 (a clock ahead of the server's, a
            // generic Retry-After) does not send the next request straight back to it.
            (Some(_), Some(hint)) => add_ms(
                now,
                hint.max(backoff_ms(n, policy.backoff_base_ms, policy.backoff_max_ms)),
            ),
            (Some(window), None) => add_ms(now, window),
            // The OAuth tier: the daily reset, or a later hint.
            (None, hint) => {
                next_quota_reset(now, &policy.quota_reset).max(add_ms(now, hint.unwrap_or(0)))
            }
        };
        (until, "quota")
    } else if let Some(ms) = report.retry_after_ms {
        if ms
            <= policy
                .retry_same_account_threshold_seconds
                .saturating_mul(1000)
        {
            return Outcome::SleepThenRetry { ms };
        }
        (add_ms(now, ms), "retry-after")
    } else {
        let ms = backoff_ms(n, policy.backoff_base_ms, policy.backoff_max_ms);
        if n == 1 && !policy.switch_on_first_rate_limit {
            // Remember the 429 so the next one counts as the second, but leave it usable.
            acct.consecutive_rate_limits = 1;
            acct.last_rate_limited_at = Some(now);
            return Outcome::SleepThenRetry { ms };
        }
        (add_ms(now, ms), "backoff")
    };

    // Never shorten a cooldown: a longer one keeps its end and its reason.
    let (until, reason) = match existing {
        Some(e) if e > until => (
            e,
            static_reason(acct.rate_limit_reason.as_deref()).unwrap_or(reason),
        ),
        _ => (until, reason),
    };
    acct.rate_limit_resets_at = Some(until);
    acct.rate_limit_reason = Some(reason.to_string());
    acct.last_rate_limited_at = Some(now);
    acct.consecutive_rate_limits = n;

    if store.current_account_id.as_deref() == Some(store.accounts[idx].id.as_str()) {
        if let Pick::Account(next) = pick(store, policy, now, &[]) {
            if next != idx {
                store.current_account_id = Some(store.accounts[next].id.clone());
                store.current_streak = 0;
            }
        }
    }
    Outcome::Marked {
        until_ms: until,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use time::format_description::well_known::Rfc3339;

    /// 2026-11-23T15:40:00Z
    const NOW: i64 = 1_795_448_400_000;
    const H: i64 = 3_600_000;

    fn ms(rfc3339: &str) -> i64 {
        unix_ms(OffsetDateTime::parse(rfc3339, &Rfc3339).expect("test vector time"))
    }

    fn acct(id: &str) -> Account {
        let mut a = Account::new(Default::default(), Default::default(), NOW + H, 0);
        a.id = id.to_string();
        a.email = format!("{id}@example.com");
        a
    }

    fn store(ids: &[&str]) -> Store {
        Store {
            accounts: ids.iter().map(|id| acct(id)).collect(),
            ..Store::empty()
        }
    }

    fn policy(strategy: Strategy) -> Policy {
        Policy {
            strategy,
            ..Policy::default()
        }
    }

    fn cool(s: &mut Store, i: usize, until: i64) {
        s.accounts[i].rate_limit_resets_at = Some(until);
    }

    fn revoke(s: &mut Store, i: usize) {
        s.accounts[i].status = Status::Revoked;
    }

    /// Picks and records `n` tokens, returning the ids served.
    fn serve(s: &mut Store, p: &Policy, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| match pick(s, p, NOW, &[]) {
                Pick::Account(i) => {
                    record_use(s, i, p, NOW);
                    s.accounts[i].id.clone()
                }
                other => panic!("expected an account, got {other:?}"),
            })
            .collect()
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn vectors() -> Value {
        serde_json::from_str(include_str!("../tests/vectors.json")).expect("vectors.json parses")
    }

    #[test]
    fn now_constant_matches_its_comment() {
        assert_eq!(ms("2026-11-23T15:40:00Z"), NOW);
    }

    // ---- config parsing ----

    #[test]
    fn strategy_names_round_trip() {
        for name in Strategy::NAMES {
            assert!(Strategy::parse(name).is_some(), "{name}");
        }
        for bad in [
            "",
            "Sticky",
            "round_robin",
            "roundrobin",
            "least",
            " hybrid",
        ] {
            assert_eq!(Strategy::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reset_time_is_strict_hh_mm() {
        assert_eq!(parse_reset_time("00:00"), Some((0, 0)));
        assert_eq!(parse_reset_time("23:59"), Some((23, 59)));
        assert_eq!(parse_reset_time("06:30"), Some((6, 30)));
        for bad in [
            "6:30", "06:3", "24:00", "12:60", "1230", "ab:cd", "+1:00", "06:30 ", "", ":",
            "06:30:00",
        ] {
            assert_eq!(parse_reset_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn utc_offset_is_strict_sign_hh_mm() {
        let off = |s| parse_utc_offset(s).map(|o| o.whole_seconds());
        assert_eq!(off("+08:00"), Some(8 * 3600));
        assert_eq!(off("-05:00"), Some(-5 * 3600));
        assert_eq!(off("+05:45"), Some(5 * 3600 + 45 * 60));
        assert_eq!(off("-00:30"), Some(-30 * 60));
        assert_eq!(off("+00:00"), Some(0));
        assert_eq!(off("-00:00"), Some(0));
        assert_eq!(off("+23:59"), Some(23 * 3600 + 59 * 60));
        assert_eq!(off("-23:59"), Some(-(23 * 3600 + 59 * 60)));
        for bad in [
            "08:00", "+8:00", "+24:00", "+23:60", "Z", "+0800", "+08:00 ", "", "+", "UTC+8",
            "−05:00",
        ] {
            assert_eq!(off(bad), None, "{bad:?}");
        }
    }

    // ---- daily quota reset ----

    #[test]
    fn quota_reset_vectors() {
        let v = vectors();
        let cases = v["quota_reset"].as_array().expect("quota_reset array");
        assert!(!cases.is_empty());
        for c in cases {
            let (h, m) = parse_reset_time(c["quota_reset_time"].as_str().expect("time"))
                .expect("valid time");
            let offset = parse_utc_offset(c["quota_reset_utc_offset"].as_str().expect("offset"))
                .expect("offset");
            let reset = QuotaReset {
                hour: h,
                minute: m,
                offset,
            };
            let now = ms(c["now"].as_str().expect("now"));
            let want = ms(c["next_reset"].as_str().expect("next_reset"));
            assert_eq!(next_quota_reset(now, &reset), want, "{c}");
        }
    }

    #[test]
    fn quota_reset_is_strictly_after_now_to_the_millisecond() {
        let reset = QuotaReset::default(); // 00:00 at +08:00 = 16:00Z
        let at = ms("2026-11-23T16:00:00Z");
        assert_eq!(next_quota_reset(at - 1, &reset), at);
        assert_eq!(next_quota_reset(at, &reset), at + 24 * H);
        assert_eq!(next_quota_reset(at + 1, &reset), at + 24 * H);
    }

    #[test]
    fn quota_reset_across_midnight_and_offsets() {
        let west = QuotaReset {
            hour: 0,
            minute: 0,
            offset: parse_utc_offset("-05:00").expect("offset"),
        };
        // 23:30 local on the 22nd is 04:30Z on the 23rd: reset at 05:00Z.
        assert_eq!(
            next_quota_reset(ms("2026-11-23T04:30:00Z"), &west),
            ms("2026-11-23T05:00:00Z")
        );
        // 21:00Z on the 23rd is 16:00 local: next local midnight is 05:00Z on the 24th.
        assert_eq!(
            next_quota_reset(ms("2026-11-23T21:00:00Z"), &west),
            ms("2026-11-24T05:00:00Z")
        );
        // UTC already past midnight but local not yet.
        assert_eq!(
            next_quota_reset(ms("2026-11-24T01:00:00Z"), &west),
            ms("2026-11-24T05:00:00Z")
        );

        let nepal = QuotaReset {
            hour: 0,
            minute: 0,
            offset: parse_utc_offset("+05:45").expect("offset"),
        };
        assert_eq!(
            next_quota_reset(ms("2026-12-31T18:14:59Z"), &nepal),
            ms("2026-12-31T18:15:00Z")
        );
        assert_eq!(
            next_quota_reset(ms("2026-12-31T18:15:00Z"), &nepal),
            ms("2027-01-01T18:15:00Z")
        );

        let morning = QuotaReset {
            hour: 6,
            minute: 30,
            offset: parse_utc_offset("+08:00").expect("offset"),
        };
        // 2026 is not a leap year: 28 Feb then 1 Mar.
        assert_eq!(
            next_quota_reset(ms("2026-02-28T23:00:00Z"), &morning),
            ms("2026-03-01T22:30:00Z")
        );
    }

    #[test]
    fn quota_reset_with_a_bad_hand_built_time_does_not_panic() {
        let bad = QuotaReset {
            hour: 25,
            minute: 0,
            offset: UtcOffset::UTC,
        };
        assert_eq!(next_quota_reset(NOW, &bad), NOW + 24 * H);
        assert_eq!(next_quota_reset(i64::MAX, &QuotaReset::default()), i64::MAX);
    }

    // ---- token predicates ----

    #[test]
    fn usable_and_cooling() {
        let mut a = acct("a");
        assert!(is_usable(&a, NOW) && !is_cooling(&a, NOW));
        a.rate_limit_resets_at = Some(NOW + 1);
        assert!(!is_usable(&a, NOW) && is_cooling(&a, NOW));
        a.rate_limit_resets_at = Some(NOW);
        assert!(
            is_usable(&a, NOW) && !is_cooling(&a, NOW),
            "a cooldown ending now is over"
        );
        a.rate_limit_resets_at = Some(NOW - H);
        assert!(is_usable(&a, NOW));
        a.status = Status::Revoked;
        assert!(!is_usable(&a, NOW), "revoked is never usable");
    }

    #[test]
    fn expired_and_due_boundaries() {
        let p = Policy::default(); // buffer 1800 s
        let mut a = acct("a");
        a.expiry_date = NOW + 60_000;
        assert!(is_expired(&a, NOW));
        a.expiry_date = NOW + 60_001;
        assert!(!is_expired(&a, NOW));
        a.expiry_date = NOW + 1_800_000;
        assert!(is_due(&a, NOW, &p));
        a.expiry_date = NOW + 1_800_001;
        assert!(!is_due(&a, NOW, &p));
        a.expiry_date = i64::MIN;
        assert!(is_expired(&a, NOW) && is_due(&a, NOW, &p));
    }

    #[test]
    fn needs_refresh_cases() {
        let p = Policy::default();
        let off = Policy {
            proactive_token_refresh: false,
            ..Policy::default()
        };
        let mut a = acct("a");
        a.expiry_date = NOW + 2 * H;
        assert_eq!(needs_refresh(&a, NOW, 0, &p), None);
        assert_eq!(
            needs_refresh(&a, NOW, 7200, &p),
            Some(Need::Expired),
            "within --min-valid"
        );
        assert_eq!(needs_refresh(&a, NOW, 7199, &p), None);
        a.expiry_date = NOW + 10 * 60_000;
        assert_eq!(needs_refresh(&a, NOW, 0, &p), Some(Need::Due));
        assert_eq!(
            needs_refresh(&a, NOW, 0, &off),
            None,
            "due only matters when proactive"
        );
        assert_eq!(needs_refresh(&a, NOW, 600, &off), Some(Need::Expired));
        a.expiry_date = NOW + 30_000;
        assert_eq!(needs_refresh(&a, NOW, 0, &p), Some(Need::Expired));
        assert_eq!(needs_refresh(&a, NOW, 0, &off), Some(Need::Expired));
        a.expiry_date = NOW + 2 * H;
        assert_eq!(
            needs_refresh(&a, NOW, u64::MAX, &p),
            Some(Need::Expired),
            "no overflow"
        );
    }

    #[test]
    fn a_key_account_is_never_expired_due_or_refreshed() {
        let p = Policy::default();
        let mut k = Account::new_key(
            crate::secret::Secret::new("sk-1"),
            "https://x/v1".into(),
            Vec::new(),
            0,
        );
        for expiry in [0, NOW, NOW + 1, crate::store::MAX_TIME_MS] {
            k.expiry_date = expiry;
            assert!(!is_expired(&k, NOW) && !is_due(&k, NOW, &p), "{expiry}");
            for min_valid in [0, 3600, u64::MAX] {
                assert_eq!(needs_refresh(&k, NOW, min_valid, &p), None);
            }
        }
        // Nor does it make `token` start a background refresh.
        let mut s = store(&["a"]);
        s.accounts.push(k);
        assert!(!background_refresh_due(&mut s, 0, &p, NOW, 0));
    }

    // ---- picking ----

    #[test]
    fn sticky_stays_then_moves_after_a_mark() {
        let p = policy(Strategy::Sticky);
        let mut s = store(&["a", "b", "c"]);
        assert_eq!(serve(&mut s, &p, 3), ids(&["a", "a", "a"]));
        assert_eq!(s.current_streak, 3);
        let out = report_429(&mut s, 0, &Report::default(), &p, NOW);
        assert_eq!(
            out,
            Outcome::Marked {
                until_ms: NOW + 1000,
                reason: "backoff"
            }
        );
        assert_eq!(s.current_account_id.as_deref(), Some("b"));
        assert_eq!(s.current_streak, 0);
        assert_eq!(serve(&mut s, &p, 2), ids(&["b", "b"]));
        assert_eq!(s.current_streak, 2);
    }

    #[test]
    fn sticky_wraps_and_starts_from_the_first_without_current() {
        let p = policy(Strategy::Sticky);
        let mut s = store(&["a", "b", "c"]);
        cool(&mut s, 0, NOW + H);
        assert_eq!(
            pick(&s, &p, NOW, &[]),
            Pick::Account(1),
            "no current: first usable"
        );
        s.current_account_id = Some("gone".into());
        assert_eq!(
            pick(&s, &p, NOW, &[]),
            Pick::Account(1),
            "unknown current: first usable"
        );
        s.current_account_id = Some("c".into());
        cool(&mut s, 2, NOW + H);
        assert_eq!(
            pick(&s, &p, NOW, &[]),
            Pick::Account(1),
            "wraps past a and its cooldown"
        );
        cool(&mut s, 2, NOW);
        assert_eq!(
            pick(&s, &p, NOW, &[]),
            Pick::Account(2),
            "current usable again"
        );
    }

    #[test]
    fn round_robin_cycles_and_skips_cooling_and_revoked() {
        let p = policy(Strategy::RoundRobin);
        let mut s = store(&["a", "b", "c", "d"]);
        assert_eq!(serve(&mut s, &p, 6), ids(&["a", "b", "c", "d", "a", "b"]));
        cool(&mut s, 2, NOW + H);
        revoke(&mut s, 3);
        assert_eq!(serve(&mut s, &p, 4), ids(&["a", "b", "a", "b"]));
        revoke(&mut s, 1);
        assert_eq!(
            serve(&mut s, &p, 2),
            ids(&["a", "a"]),
            "a lone usable account repeats"
        );
    }

    #[test]
    fn least_used_balances_with_ties_to_the_earliest() {
        let p = policy(Strategy::LeastUsed);
        let mut s = store(&["a", "b", "c"]);
        s.accounts[0].total_requests = 5;
        s.accounts[1].total_requests = 3;
        s.accounts[2].total_requests = 3;
        assert_eq!(serve(&mut s, &p, 5), ids(&["b", "c", "b", "c", "a"]));
        // b and c caught up with a; a three-way tie went to a.
        assert_eq!(
            s.accounts
                .iter()
                .map(|a| a.total_requests)
                .collect::<Vec<_>>(),
            vec![6, 5, 5]
        );
        cool(&mut s, 1, NOW + H);
        assert_eq!(serve(&mut s, &p, 2), ids(&["c", "a"]));
    }

    #[test]
    fn hybrid_moves_after_n_tokens() {
        let p = Policy {
            hybrid_rotation_requests: 3,
            ..policy(Strategy::Hybrid)
        };
        let mut s = store(&["a", "b", "c"]);
        assert_eq!(
            serve(&mut s, &p, 10),
            ids(&["a", "a", "a", "b", "b", "b", "c", "c", "c", "a"])
        );
        assert_eq!(s.current_streak, 1);
        // A cooling current account moves on at once, like sticky.
        cool(&mut s, 0, NOW + H);
        assert_eq!(serve(&mut s, &p, 1), ids(&["b"]));
        assert_eq!(s.current_streak, 1);
    }

    #[test]
    fn hybrid_stays_when_it_is_the_only_usable_account() {
        let p = Policy {
            hybrid_rotation_requests: 2,
            ..policy(Strategy::Hybrid)
        };
        let mut s = store(&["a", "b"]);
        revoke(&mut s, 1);
        assert_eq!(serve(&mut s, &p, 5), ids(&["a"; 5]));
        assert_eq!(s.current_streak, 5);
    }

    #[test]
    fn skip_list_excludes_for_this_call() {
        let mut s = store(&["a", "b", "c"]);
        s.current_account_id = Some("a".into());
        let skip = ids(&["a"]);
        for strat in [
            Strategy::Sticky,
            Strategy::Hybrid,
            Strategy::RoundRobin,
            Strategy::LeastUsed,
        ] {
            assert_eq!(
                pick(&s, &policy(strat), NOW, &skip),
                Pick::Account(1),
                "{strat:?}"
            );
        }
        assert_eq!(
            pick(&s, &policy(Strategy::Sticky), NOW, &ids(&["a", "b", "c"])),
            Pick::Unavailable {
                revoked: vec![],
                disabled: vec![]
            }
        );
        // A skipped account's cooldown is not something to wait for.
        cool(&mut s, 1, NOW + 10_000);
        cool(&mut s, 2, NOW + 20_000);
        assert_eq!(
            pick(&s, &policy(Strategy::Sticky), NOW, &ids(&["a", "b"])),
            Pick::AllCooling {
                soonest_ms: NOW + 20_000
            }
        );
        assert_eq!(
            pick(&s, &policy(Strategy::Sticky), NOW, &ids(&["a", "c"])),
            Pick::AllCooling {
                soonest_ms: NOW + 10_000
            }
        );
    }

    #[test]
    fn all_cooling_versus_unavailable() {
        let p = Policy::default();
        assert_eq!(
            pick(&store(&[]), &p, NOW, &[]),
            Pick::Unavailable {
                revoked: vec![],
                disabled: vec![]
            }
        );

        let mut s = store(&["a", "b", "c"]);
        revoke(&mut s, 0);
        cool(&mut s, 1, NOW + 30_000);
        cool(&mut s, 2, NOW + 10_000);
        assert_eq!(
            pick(&s, &p, NOW, &[]),
            Pick::AllCooling {
                soonest_ms: NOW + 10_000
            }
        );
        assert_eq!(soonest_reset(&s, NOW), Some(NOW + 10_000));

        // A revoked account's cooldown never counts.
        cool(&mut s, 0, NOW + 1_000);
        assert_eq!(
            pick(&s, &p, NOW, &[]),
            Pick::AllCooling {
                soonest_ms: NOW + 10_000
            }
        );
        assert_eq!(soonest_reset(&s, NOW), Some(NOW + 10_000));

        revoke(&mut s, 1);
        revoke(&mut s, 2);
        assert_eq!(
            pick(&s, &p, NOW, &[]),
            Pick::Unavailable {
                revoked: ids(&["a", "b", "c"]),
                disabled: vec![]
            }
        );
        assert_eq!(soonest_reset(&s, NOW), None);
    }

    #[test]
    fn disabled_accounts_are_out_of_rotation() {
        for strat in [
            Strategy::Sticky,
            Strategy::Hybrid,
            Strategy::RoundRobin,
            Strategy::LeastUsed,
        ] {
            let p = policy(strat);
            let mut s = store(&["a", "b", "c"]);
            s.current_account_id = Some("a".into());
            s.accounts[0].disabled = true;
            s.accounts[2].disabled = true;
            assert_eq!(serve(&mut s, &p, 3), ids(&["b"; 3]), "{strat:?}");
        }
        let p = Policy::default();
        let mut s = store(&["a", "b", "c"]);
        s.accounts[0].disabled = true;
        revoke(&mut s, 1);
        cool(&mut s, 2, NOW + 10_000);
        // A disabled account's cooldown is nothing to wait for.
        cool(&mut s, 0, NOW + 1_000);
        assert_eq!(
            pick(&s, &p, NOW, &[]),
            Pick::AllCooling {
                soonest_ms: NOW + 10_000
            }
        );
        assert_eq!(soonest_reset(&s, NOW), Some(NOW + 10_000));
        s.accounts[2].disabled = true;
        assert_eq!(
            pick(&s, &p, NOW, &[]),
            Pick::Unavailable {
                revoked: ids(&["b"]),
                disabled: ids(&["a", "c"])
            }
        );
        assert_eq!(soonest_reset(&s, NOW), None);
    }

    #[test]
    fn record_use_counts_and_tracks_the_streak() {
        let p = Policy::default();
        let mut s = store(&["a", "b"]);
        record_use(&mut s, 1, &p, NOW);
        assert_eq!(
            (s.current_account_id.as_deref(), s.current_streak),
            (Some("b"), 1)
        );
        record_use(&mut s, 1, &p, NOW + 5);
        assert_eq!(s.current_streak, 2);
        assert_eq!(s.accounts[1].total_requests, 2);
        assert_eq!(s.accounts[1].last_used_at, Some(NOW + 5));
        record_use(&mut s, 0, &p, NOW + 6);
        assert_eq!(
            (s.current_account_id.as_deref(), s.current_streak),
            (Some("a"), 1)
        );
        record_use(&mut s, 9, &p, NOW); // out of range: no panic, no change
        assert_eq!(s.current_streak, 1);
    }

    #[test]
    fn uses_are_counted_per_quota_day_and_per_hour() {
        // NOW is 15:40 UTC = 23:40 at +08:00: the quota day ends in 20 minutes.
        let p = Policy::default();
        let m = 60_000;
        let mut s = store(&["a"]);
        let a = |s: &Store| s.accounts[0].clone();
        assert_eq!(
            last_quota_reset(NOW, &p.quota_reset),
            ms("2026-11-22T16:00:00Z")
        );
        for t in [NOW - 70 * m, NOW - 30 * m, NOW - 30 * m, NOW - m, NOW] {
            record_pinned(&mut s, 0, &p, t);
        }
        assert_eq!(a(&s).total_requests, 5);
        assert_eq!(requests_today(&a(&s), NOW, &p.quota_reset), 5);
        // The one 70 minutes ago is out of the hour.
        assert_eq!(requests_last_hour(&a(&s), NOW), 4);
        // Later, the steps shift out: 45 minutes on only the last two remain.
        assert_eq!(requests_last_hour(&a(&s), NOW + 45 * m), 2);
        assert_eq!(requests_last_hour(&a(&s), NOW + 2 * H), 0);
        // After the daily reset (at 16:00 UTC) the day's count starts again.
        assert_eq!(requests_today(&a(&s), NOW + 25 * m, &p.quota_reset), 0);
        record_use(&mut s, 0, &p, NOW + 25 * m);
        assert_eq!(requests_today(&a(&s), NOW + 25 * m, &p.quota_reset), 1);
        assert_eq!(requests_last_hour(&a(&s), NOW + 25 * m), 5);
        assert_eq!(a(&s).total_requests, 6);
        // A clock that steps back counts into the newest step and loses nothing.
        record_use(&mut s, 0, &p, NOW - 3 * H);
        assert_eq!(requests_last_hour(&a(&s), NOW + 25 * m), 6);
    }

    // ---- Retry-After and 429 classification ----

    #[test]
    fn retry_after_vectors() {
        let v = vectors();
        let cases = v["retry_after"].as_array().expect("retry_after array");
        assert!(!cases.is_empty());
        for c in cases {
            let now = ms(c["now"].as_str().expect("now"));
            let got = parse_retry_after(c["value"].as_str().expect("value"), now);
            assert_eq!(got, c["seconds"].as_u64(), "{c}");
        }
    }

    #[test]
    fn retry_after_dates_more() {
        // asctime pads a one-digit day with a space.
        assert_eq!(parse_retry_after("Mon Nov  2 00:00:00 2026", NOW), Some(0));
        assert_eq!(
            parse_retry_after("Tue Nov 24 15:40:00 2026", NOW),
            Some(86_400)
        );
        // Sub-second remainders round up so the caller never retries early.
        assert_eq!(
            parse_retry_after("Mon, 23 Nov 2026 15:42:00 GMT", NOW + 500),
            Some(120)
        );
        assert_eq!(
            parse_retry_after("Mon, 23 Nov 2026 15:42:00 GMT", NOW + 1000),
            Some(119)
        );
        // A leap second is accepted.
        assert_eq!(
            parse_retry_after("Mon, 23 Nov 2026 15:40:60 GMT", NOW),
            Some(59)
        );
        // RFC 850 two-digit years: at most 50 years ahead, else the previous century.
        assert_eq!(
            parse_retry_after("Monday, 23-Nov-76 15:40:00 GMT", NOW),
            Some(((ms("2076-11-23T15:40:00Z") - NOW) / 1000) as u64),
            "2076 is exactly 50 years ahead"
        );
        assert_eq!(
            parse_retry_after("Monday, 23-Nov-77 15:40:00 GMT", NOW),
            Some(0),
            "1977"
        );
        let y2099 = ms("2099-06-01T00:00:00Z");
        assert_eq!(
            parse_retry_after("Monday, 01-Jun-00 00:00:10 GMT", y2099),
            Some(365 * 86_400 + 10),
            "the nearest year is 2100, not 2000"
        );
        // Invalid dates and near misses are no hint.
        for bad in [
            "Mon, 31 Feb 2026 15:42:00 GMT",
            "Mon, 23 Nov 2026 24:00:00 GMT",
            "Mon, 23 Nov 2026 15:42:61 GMT",
            "Mon, 23 Nov 2026 15:42:00 UTC",
            "Mon, 23 Nov 2026 15:42 GMT",
            "Mon, 23 Nov 26 15:42:00 GMT",
            "Mon 23 Nov 2026 15:42:00 GMT",
            "Monday, 23 Nov 2026 15:42:00 GMT",
            "Mon, 23 nov 2026 15:42:00 GMT",
            "Monday, 23-Nov-2026 15:42:00 GMT",
            "Monday, 23-Nov-26-1 15:42:00 GMT",
            "Mon, 23-Nov-26 15:42:00 GMT",
            "Mon Nov 123 15:42:00 2026",
            "Mon Nov 23 15:42:00:00 2026",
            "+5",
            "5s",
            "0x10",
        ] {
            assert_eq!(parse_retry_after(bad, NOW), None, "{bad:?}");
        }
        assert_eq!(
            parse_retry_after("\t18446744073709551615\r\n", NOW),
            Some(u64::MAX)
        );
        // Past u64 is still a (very long) hint, not none: the caller caps it.
        for huge in [
            "18446744073709551616",
            "99999999999999999999999",
            &"9".repeat(4096),
        ] {
            assert_eq!(parse_retry_after(huge, NOW), Some(u64::MAX), "{huge}");
        }
        // Leading zeros are digits like any other.
        assert_eq!(
            parse_retry_after("000000000000000000000000000000042", NOW),
            Some(42)
        );
    }

    #[test]
    fn backoff_doubles_and_caps_without_overflow() {
        let b = |n| backoff_ms(n, 1000, 32_000);
        assert_eq!(
            [b(0), b(1), b(2), b(3), b(4), b(5), b(6), b(7)],
            [1000, 1000, 2000, 4000, 8000, 16_000, 32_000, 32_000]
        );
        assert_eq!(b(64), 32_000);
        assert_eq!(b(65), 32_000);
        assert_eq!(b(u32::MAX), 32_000);
        assert_eq!(backoff_ms(2, u64::MAX, u64::MAX), u64::MAX);
        assert_eq!(backoff_ms(3, 0, 32_000), 0);
        assert_eq!(backoff_ms(3, 1000, 2500), 2500);
    }

    // ---- rate-limit headers ----

    #[test]
    fn durations_read_go_syntax_round_up_and_saturate() {
        for (text, want) in [
            ("6m0s", 360_000),
            ("1h2m3.5s", 3_723_500),
            ("250ms", 250),
            ("20s", 20_000),
            ("7.66s", 7_660),
            ("2m59.56s", 179_560),
            ("0", 0),
            ("0s", 0),
            ("+5h", 5 * H as u64),
            ("5h", 5 * H as u64),
            ("1.5h", 5_400_000),
            ("7d", 7 * 86_400_000),
            ("1w", 7 * 86_400_000),
            ("1w1d1h1m1s1ms", 8 * 86_400_000 + 3_661_001),
            (".5s", 500),
            ("5.s", 5_000),
            (" 30s\r\n", 30_000),
            // Below a millisecond rounds up: a retry never comes early.
            ("1ns", 1),
            ("1us", 1),
            ("1µs", 1),
            ("1μs", 1),
            ("1000000ns", 1),
            ("1000001ns", 2),
            ("0.0000001s", 1),
            ("0.000000000000000000000000000001s", 1),
            ("0.000000000000000000000000000000s", 0),
            ("1.0000000000000000000000000001ms", 2),
            ("0001s", 1_000),
        ] {
            assert_eq!(parse_duration_ms(text), Some(want), "{text:?}");
        }
        for huge in [
            "18446744073709551615ms",
            "18446744073709551616ms",
            "99999999999999999999999999999999999999999999w",
            &format!("{}h", "9".repeat(4096)),
            &"999999999w".repeat(1000),
        ] {
            assert_eq!(parse_duration_ms(huge), Some(u64::MAX), "{huge:.40}");
        }
        for bad in [
            "", " ", "5", "00", "-5s", "-0", "5 s", "1h 2m", "5x", "h", "s5", ".s", "1..5s",
            "1.2.3s", "5sm", "1m5", "5H", "5S", "5min", "5mo", "0x10s", "++5s", "5s,", "1e3s",
            "٣s",
        ] {
            assert_eq!(parse_duration_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn x_ratelimit_reset_is_delta_seconds_unix_seconds_or_unix_ms_by_size() {
        let r = |v: &str| parse_reset_epoch(v, NOW);
        let now_s = NOW / 1000;
        assert_eq!(r("30"), Some(30_000), "small: delta-seconds");
        assert_eq!(r("0"), Some(0));
        assert_eq!(r("1.5"), Some(1_500));
        assert_eq!(r("999999999"), Some(999_999_999_000), "the largest delta");
        assert_eq!(
            r("1000000000"),
            Some(0),
            "the smallest Unix time: 2001, past"
        );
        assert_eq!(r(&(now_s + 60).to_string()), Some(60_000), "Unix seconds");
        assert_eq!(r(&format!("{}.25", now_s + 60)), Some(60_250));
        assert_eq!(r(&(now_s - 60).to_string()), Some(0), "past: 0");
        assert_eq!(r("999999999999"), Some(999_999_999_999_000 - NOW as u64));
        assert_eq!(r(&(NOW + 1500).to_string()), Some(1_500), "Unix ms");
        assert_eq!(r(&format!("{}.1", NOW + 1500)), Some(1_501));
        assert_eq!(
            r("1000000000000"),
            Some(0),
            "the smallest Unix ms: 2001, past"
        );
        assert_eq!(r("6m0s"), Some(360_000), "a duration");
        // Huge values are a long wait, never a panic (the command caps them).
        assert_eq!(r("18446744073709551615"), Some(u64::MAX - NOW as u64));
        assert_eq!(r(&"9".repeat(4096)), Some(u64::MAX));
        assert_eq!(
            parse_reset_epoch("1000000000", i64::MIN),
            Some(1_000_000_000_000 + (1 << 63))
        );
        assert_eq!(parse_reset_epoch("1000000000000", i64::MAX), Some(0));
        for bad in ["", "-5", "soon", "1e9", "0x10", ".5", "1.2.3", "5 0", "+5"] {
            assert_eq!(r(bad), None, "{bad:?}");
        }
    }

    fn wait(block: &str) -> (Option<u64>, Option<&'static str>) {
        let h = header_hint(block.as_bytes(), NOW);
        (h.wait_ms, h.from)
    }

    #[test]
    fn header_blocks_are_read_leniently() {
        let ra = Some("Retry-After");
        // Status line optional; CRLF or LF; names without case; spaces around the value.
        for block in [
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 120\r\n\r\n",
            "HTTP/2 429 \r\nretry-after:120\r\n\r\n",
            "HTTP/2 429\nRETRY-AFTER: \t120 \n\n",
            "Retry-After: 120",
            "Retry-After: 120\r\n",
            "x: 1\nno colon here\n:\n\u{1}\u{ff}garbage: x\nRetry-After: 120\n",
        ] {
            assert_eq!(wait(block), (Some(120_000), ra), "{block:?}");
        }
        // Continuation lines (obsolete folding) are skipped, and so is a name with spaces.
        assert_eq!(
            wait("X-A: 1\r\n Retry-After: 9\r\nRetry-After : 9\r\n"),
            (None, None)
        );
        // The last block counts: 1xx answers, redirects and a proxy's CONNECT come first.
        let curl_d = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 302 Found\r\nRetry-After: 999\r\nLocation: /b\r\n\r\nHTTP/1.1 429 Too Many Requests\r\nx-ratelimit-reset-tokens: 7s\r\n\r\n";
        assert_eq!(
            wait(curl_d),
            (Some(7_000), Some("x-ratelimit-reset-tokens"))
        );
        // What follows the empty line is the body, not headers.
        let curl_i = "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 10\r\n\r\nRetry-After: 99\r\n";
        assert_eq!(wait(curl_i), (Some(10_000), ra));
        assert_eq!(header_block_end(curl_i.as_bytes()), curl_i.len() - 17);
        assert_eq!(header_block_end(curl_d.as_bytes()), curl_d.len());
        assert_eq!(header_block_end(b"HTTP/1.1 429\n\n{}"), 14);
        assert_eq!(header_block_end(b"\r\nbody"), 2, "an empty block");
        assert_eq!(header_block_end(b"Retry-After: 1"), 14);
        assert_eq!(header_block_end(b""), 0);
        // Nothing to read.
        for block in [
            "",
            "\r\n",
            "HTTP/1.1 429\r\n\r\n",
            "Retry-After:\r\n",
            "\u{0}\u{0}",
        ] {
            assert_eq!(
                header_hint(block.as_bytes(), NOW),
                HeaderHint::default(),
                "{block:?}"
            );
        }
    }

    #[test]
    fn retry_after_wins_else_the_latest_reset() {
        let ra = Some("Retry-After");
        assert_eq!(
            wait("Retry-After: 5\nx-ratelimit-reset-requests: 6m0s\nX-RateLimit-Reset: 900\n"),
            (Some(5_000), ra),
            "the server's instruction wins, shorter or not"
        );
        assert_eq!(
            wait("x-ratelimit-reset-requests: 1s\nx-ratelimit-reset-tokens: 6m0s\n"),
            (Some(360_000), Some("x-ratelimit-reset-tokens"))
        );
        assert_eq!(
            wait("x-ratelimit-reset-requests: 2m\nx-ratelimit-reset-tokens: 250ms\n"),
            (Some(120_000), Some("x-ratelimit-reset-requests"))
        );
        let epoch = format!(
            "X-RateLimit-Reset: {}\nx-ratelimit-reset-tokens: 6m0s\n",
            NOW + 600_000
        );
        assert_eq!(wait(&epoch), (Some(600_000), Some("X-RateLimit-Reset")));
        assert_eq!(
            wait("x-ratelimit-reset-requests: 20\n"),
            (Some(20_000), Some("x-ratelimit-reset-requests")),
            "a bare number is seconds"
        );
        // A repeated field, or one joined with commas, counts by its latest value.
        assert_eq!(
            wait("Retry-After: 30\nRetry-After: 10\n"),
            (Some(30_000), ra)
        );
        assert_eq!(wait("Retry-After: 10, 30\n"), (Some(30_000), ra));
        assert_eq!(wait("Retry-After: 10,,30,\n"), (Some(30_000), ra));
        assert_eq!(
            wait("Retry-After: 10, Mon, 23 Nov 2026 15:42:00 GMT\n"),
            (Some(120_000), ra),
            "an HTTP-date in a list keeps its comma"
        );
        assert_eq!(
            wait("Retry-After: Mon, 23 Nov 2026 15:41:00 GMT, Mon, 23 Nov 2026 15:42:00 GMT\n"),
            (Some(120_000), ra)
        );
        assert_eq!(
            wait("x-ratelimit-reset-tokens: 1s, 6m0s\n"),
            (Some(360_000), Some("x-ratelimit-reset-tokens"))
        );
    }

    #[test]
    fn unreadable_rate_limit_headers_are_named_and_skipped() {
        let h = header_hint(
            b"Retry-After: soon\r\nx-ratelimit-reset-tokens: 6 minutes\r\nX-RateLimit-Reset: \xff\r\nX-Other: ?\r\nx-ratelimit-reset-requests: 2s\r\nRetry-After: 5, soon\r\n",
            NOW,
        );
        assert_eq!(h.wait_ms, Some(2_000), "the readable one is used");
        assert_eq!(h.from, Some("x-ratelimit-reset-requests"));
        let names: Vec<&str> = h.ignored.iter().map(|i| i.0).collect();
        assert_eq!(
            names,
            [
                "Retry-After",
                "x-ratelimit-reset-tokens",
                "X-RateLimit-Reset",
                "Retry-After"
            ]
        );
        assert_eq!(h.ignored[0].1, "soon");
        assert_eq!(h.ignored[0].2, "not delta-seconds or an HTTP-date");
        assert_eq!(h.ignored[2].1, "\u{fffd}");
    }

    #[test]
    fn header_hints_saturate() {
        for block in [
            "Retry-After: 99999999999999999999999\n".to_string(),
            format!("x-ratelimit-reset-tokens: {}h\n", "9".repeat(5000)),
            format!("X-RateLimit-Reset: {}\n", "9".repeat(5000)),
            "Retry-After: 18446744073709551615\n".to_string(),
        ] {
            assert_eq!(
                header_hint(block.as_bytes(), NOW).wait_ms,
                Some(u64::MAX),
                "{block:.40}"
            );
        }
        assert_eq!(
            header_hint(b"Retry-After: 1\n", i64::MIN).wait_ms,
            Some(1000)
        );
        assert_eq!(
            header_hint(b"Retry-After: Mon, 23 Nov 2026 15:42:00 GMT\n", i64::MAX).wait_ms,
            Some(0),
            "a date long past"
        );
    }

    // ---- quota window ----

    fn windowed(ids: &[&str], window_ms: u64) -> Store {
        let mut s = store(ids);
        for a in &mut s.accounts {
            a.quota_window_ms = Some(window_ms);
        }
        s
    }

    fn quota_hint(ms: u64) -> Report {
        Report {
            retry_after_ms: Some(ms),
            quota: true,
        }
    }

    #[test]
    fn a_quota_window_replaces_the_daily_reset() {
        let p = Policy::default(); // the daily reset is at 16:00Z, 20 minutes after NOW
        let daily = ms("2026-11-23T16:00:00Z");
        let mark = |until_ms| Outcome::Marked {
            until_ms,
            reason: "quota",
        };
        // No hint: until the window can have reset, shorter or longer than the daily reset.
        for window in [10 * 60_000, 5 * H as u64, 7 * 86_400_000] {
            let mut s = windowed(&["a", "b"], window);
            assert_eq!(
                report_429(&mut s, 0, &QUOTA, &p, NOW),
                mark(NOW + window as i64),
                "{window}"
            );
        }
        // A hint says exactly when, shorter or longer than the window.
        let mut s = windowed(&["a"], 5 * H as u64);
        assert_eq!(
            report_429(&mut s, 0, &quota_hint(600_000), &p, NOW),
            mark(NOW + 600_000)
        );
        let mut s = windowed(&["a"], 5 * H as u64);
        let week = 7 * 86_400_000;
        assert_eq!(
            report_429(&mut s, 0, &quota_hint(week), &p, NOW),
            mark(NOW + week as i64)
        );
        // A hint of 0 (a clock ahead of the server's) is floored by the backoff ladder.
        let mut s = windowed(&["a"], 5 * H as u64);
        assert_eq!(
            report_429(&mut s, 0, &quota_hint(0), &p, NOW),
            mark(NOW + 1000)
        );
        assert_eq!(
            report_429(&mut s, 0, &quota_hint(0), &p, NOW + 3000),
            mark(NOW + 3000 + 2000),
            "the second in a row: the next step"
        );
        // Without a window the daily reset still applies, whatever the hint.
        let mut s = store(&["a"]);
        assert_eq!(
            report_429(&mut s, 0, &quota_hint(600_000), &p, NOW),
            mark(daily)
        );
        // A throttle (no quota body) on a windowed account: the hint or the ladder, as ever.
        let mut s = windowed(&["a"], 5 * H as u64);
        assert_eq!(
            report_429(&mut s, 0, &Report::default(), &p, NOW),
            Outcome::Marked {
                until_ms: NOW + 1000,
                reason: "backoff"
            }
        );
        let mut s = windowed(&["a"], 5 * H as u64);
        assert_eq!(
            report_429(&mut s, 0, &hint(3), &p, NOW),
            Outcome::SleepThenRetry { ms: 3000 }
        );
        // Saturates.
        let mut s = windowed(&["a"], u64::MAX);
        assert_eq!(report_429(&mut s, 0, &QUOTA, &p, NOW), mark(i64::MAX));
        let mut s = windowed(&["a"], 1);
        assert_eq!(
            report_429(&mut s, 0, &quota_hint(u64::MAX), &p, NOW),
            mark(i64::MAX)
        );
    }

    #[test]
    fn a_sub_second_hint_is_slept_in_milliseconds() {
        let p = Policy::default();
        let mut s = store(&["a"]);
        let r = Report {
            retry_after_ms: Some(250),
            quota: false,
        };
        assert_eq!(
            report_429(&mut s, 0, &r, &p, NOW),
            Outcome::SleepThenRetry { ms: 250 }
        );
        let r = Report {
            retry_after_ms: Some(5_001),
            quota: false,
        };
        assert_eq!(
            report_429(&mut s, 0, &r, &p, NOW),
            Outcome::Marked {
                until_ms: NOW + 5_001,
                reason: "retry-after"
            },
            "past the 5 s threshold by a millisecond"
        );
    }

    // ---- report-429 ----

    fn hint(secs: u64) -> Report {
        Report {
            retry_after_ms: Some(secs.saturating_mul(1000)),
            quota: false,
        }
    }

    const QUOTA: Report = Report {
        retry_after_ms: None,
        quota: true,
    };

    #[test]
    fn quota_cools_until_the_daily_reset_or_a_later_retry_after() {
        let p = Policy::default(); // 00:00 at +08:00 = 16:00Z; NOW is 15:40Z
        let reset = ms("2026-11-23T16:00:00Z");
        let mut s = store(&["a", "b"]);
        let out = report_429(&mut s, 0, &QUOTA, &p, NOW);
        assert_eq!(
            out,
            Outcome::Marked {
                until_ms: reset,
                reason: "quota"
            }
        );
        assert_eq!(s.accounts[0].rate_limit_reason.as_deref(), Some("quota"));

        let mut s = store(&["a", "b"]);
        let q = Report {
            retry_after_ms: Some(3000),
            quota: true,
        };
        assert_eq!(
            report_429(&mut s, 0, &q, &p, NOW),
            Outcome::Marked {
                until_ms: reset,
                reason: "quota"
            },
            "a short hint is not slept on"
        );
        let mut s = store(&["a", "b"]);
        let q = Report {
            retry_after_ms: Some(3_600_000),
            quota: true,
        };
        assert_eq!(
            report_429(&mut s, 0, &q, &p, NOW),
            Outcome::Marked {
                until_ms: NOW + H,
                reason: "quota"
            }
        );
    }

    #[test]
    fn short_retry_after_sleeps_without_marking() {
        let p = Policy::default(); // threshold 5 s
        let mut s = store(&["a", "b"]);
        s.current_account_id = Some("a".into());
        let before = format!("{s:?}");
        assert_eq!(
            report_429(&mut s, 0, &hint(5), &p, NOW),
            Outcome::SleepThenRetry { ms: 5000 }
        );
        assert_eq!(
            report_429(&mut s, 0, &hint(0), &p, NOW),
            Outcome::SleepThenRetry { ms: 0 }
        );
        assert_eq!(format!("{s:?}"), before, "nothing changed");
    }

    #[test]
    fn long_retry_after_cools_until_then() {
        let p = Policy::default();
        let mut s = store(&["a", "b"]);
        assert_eq!(
            report_429(&mut s, 0, &hint(6), &p, NOW),
            Outcome::Marked {
                until_ms: NOW + 6000,
                reason: "retry-after"
            }
        );
        let a = &s.accounts[0];
        assert_eq!(
            (
                a.rate_limit_resets_at,
                a.last_rate_limited_at,
                a.consecutive_rate_limits
            ),
            (Some(NOW + 6000), Some(NOW), 1)
        );
        assert_eq!(s.current_account_id, None, "not current: current untouched");
        let mut s = store(&["a"]);
        assert_eq!(
            report_429(&mut s, 0, &hint(u64::MAX), &p, NOW),
            Outcome::Marked {
                until_ms: i64::MAX,
                reason: "retry-after"
            },
            "saturates"
        );
    }

    /// Reports a hintless 429 once each previous cooldown has ended, `gap` ms later.
    fn hintless_chain(p: &Policy, gap: i64, n: usize) -> Vec<i64> {
        let mut s = store(&["a"]);
        let mut now = NOW;
        let mut out = vec![];
        for _ in 0..n {
            match report_429(&mut s, 0, &Report::default(), p, now) {
                Outcome::Marked { until_ms, reason } => {
                    assert_eq!(reason, "backoff");
                    out.push(until_ms - now);
                    now = until_ms + gap;
                }
                other => panic!("expected a mark, got {other:?}"),
            }
        }
        out
    }

    #[test]
    fn backoff_doubles_on_consecutive_reports_and_caps() {
        let p = Policy::default();
        assert_eq!(
            hintless_chain(&p, 0, 8),
            vec![1000, 2000, 4000, 8000, 16_000, 32_000, 32_000, 32_000]
        );
        // Up to 2 x max after the previous cooldown ended still counts as consecutive.
        assert_eq!(hintless_chain(&p, 64_000, 3), vec![1000, 2000, 4000]);
        // Longer than that and the count starts over.
        assert_eq!(hintless_chain(&p, 64_001, 3), vec![1000, 1000, 1000]);
    }

    #[test]
    fn idempotence_window_is_two_seconds() {
        let p = Policy::default();
        let mut s = store(&["a", "b"]);
        s.current_account_id = Some("a".into());
        let long = hint(60);
        let first = report_429(&mut s, 0, &long, &p, NOW);
        assert_eq!(
            first,
            Outcome::Marked {
                until_ms: NOW + 60_000,
                reason: "retry-after"
            }
        );
        let after_first = format!("{s:?}");
        assert_eq!(
            report_429(&mut s, 0, &Report::default(), &p, NOW + 1900),
            Outcome::Ignored
        );
        assert_eq!(
            report_429(&mut s, 0, &QUOTA, &p, NOW + 1999),
            Outcome::Ignored
        );
        assert_eq!(format!("{s:?}"), after_first, "duplicates change nothing");
        assert_eq!(s.accounts[0].consecutive_rate_limits, 1);

        let later = report_429(&mut s, 0, &hint(120), &p, NOW + 2100);
        assert_eq!(
            later,
            Outcome::Marked {
                until_ms: NOW + 2100 + 120_000,
                reason: "retry-after"
            }
        );
        assert_eq!(s.accounts[0].consecutive_rate_limits, 2);
        assert_eq!(s.accounts[0].last_rate_limited_at, Some(NOW + 2100));
    }

    #[test]
    fn a_cooldown_that_already_ended_is_no_duplicate() {
        let p = Policy::default();
        let mut s = store(&["a"]);
        s.accounts[0].rate_limit_resets_at = Some(NOW - 1);
        s.accounts[0].last_rate_limited_at = Some(NOW - 1000);
        s.accounts[0].consecutive_rate_limits = 1;
        assert_eq!(
            report_429(&mut s, 0, &Report::default(), &p, NOW),
            Outcome::Marked {
                until_ms: NOW + 2000,
                reason: "backoff"
            }
        );
    }

    #[test]
    fn a_report_never_shortens_a_cooldown() {
        let p = Policy::default();
        let reset = ms("2026-11-23T16:00:00Z");
        let mut s = store(&["a"]);
        report_429(&mut s, 0, &QUOTA, &p, NOW);
        let out = report_429(&mut s, 0, &Report::default(), &p, NOW + 3000);
        assert_eq!(
            out,
            Outcome::Marked {
                until_ms: reset,
                reason: "quota"
            }
        );
        let a = &s.accounts[0];
        assert_eq!(
            (a.rate_limit_resets_at, a.rate_limit_reason.as_deref()),
            (Some(reset), Some("quota"))
        );
        assert_eq!(a.last_rate_limited_at, Some(NOW + 3000));
        assert_eq!(a.consecutive_rate_limits, 2);
        // A later end does extend it.
        let out = report_429(&mut s, 0, &hint(2 * 3600), &p, NOW + 6000);
        assert_eq!(
            out,
            Outcome::Marked {
                until_ms: NOW + 6000 + 2 * H,
                reason: "retry-after"
            }
        );
        assert_eq!(
            s.accounts[0].rate_limit_reason.as_deref(),
            Some("retry-after")
        );
    }

    #[test]
    fn without_switch_on_first_the_first_hintless_429_sleeps() {
        let p = Policy {
            switch_on_first_rate_limit: false,
            ..Policy::default()
        };
        let mut s = store(&["a", "b"]);
        s.current_account_id = Some("a".into());
        assert_eq!(
            report_429(&mut s, 0, &Report::default(), &p, NOW),
            Outcome::SleepThenRetry { ms: 1000 }
        );
        let a = &s.accounts[0];
        assert!(is_usable(a, NOW + 1));
        assert_eq!(
            (a.consecutive_rate_limits, a.last_rate_limited_at),
            (1, Some(NOW))
        );
        assert_eq!(s.current_account_id.as_deref(), Some("a"));
        // A request in flight with the first hits the same limit during the sleep: it sleeps
        // out the rest, nothing more is counted.
        assert_eq!(
            report_429(&mut s, 0, &Report::default(), &p, NOW + 400),
            Outcome::SleepThenRetry { ms: 600 }
        );
        assert_eq!(s.accounts[0].consecutive_rate_limits, 1);
        assert_eq!(s.current_account_id.as_deref(), Some("a"));
        // The retry after the sleep hits again: second in a row, marked, rotated.
        let out = report_429(&mut s, 0, &Report::default(), &p, NOW + 1500);
        assert_eq!(
            out,
            Outcome::Marked {
                until_ms: NOW + 1500 + 2000,
                reason: "backoff"
            }
        );
        assert_eq!(s.current_account_id.as_deref(), Some("b"));
        // Much later, the count has reset and the first 429 sleeps again.
        let much_later = NOW + 1500 + 2000 + 64_001;
        assert_eq!(
            report_429(&mut s, 0, &Report::default(), &p, much_later),
            Outcome::SleepThenRetry { ms: 1000 }
        );
    }

    #[test]
    fn marking_the_current_account_moves_current_per_strategy() {
        // Sticky, hybrid and round-robin: the next usable after it, wrapping.
        for strat in [Strategy::Sticky, Strategy::Hybrid, Strategy::RoundRobin] {
            let mut s = store(&["a", "b", "c", "d"]);
            s.current_account_id = Some("c".into());
            s.current_streak = 7;
            cool(&mut s, 3, NOW + H);
            report_429(&mut s, 2, &hint(60), &policy(strat), NOW);
            assert_eq!(s.current_account_id.as_deref(), Some("a"), "{strat:?}");
            assert_eq!(s.current_streak, 0);
        }
        // Least-used: the least-used usable one.
        let mut s = store(&["a", "b", "c"]);
        s.accounts[0].total_requests = 9;
        s.accounts[1].total_requests = 4;
        s.accounts[2].total_requests = 1;
        s.current_account_id = Some("c".into());
        report_429(&mut s, 2, &hint(60), &policy(Strategy::LeastUsed), NOW);
        assert_eq!(s.current_account_id.as_deref(), Some("b"));
    }

    #[test]
    fn marking_leaves_current_alone_when_nothing_else_is_usable_or_it_was_not_current() {
        let p = Policy::default();
        let mut s = store(&["a", "b"]);
        s.current_account_id = Some("a".into());
        s.current_streak = 4;
        cool(&mut s, 1, NOW + H);
        report_429(&mut s, 0, &hint(60), &p, NOW);
        assert_eq!(
            (s.current_account_id.as_deref(), s.current_streak),
            (Some("a"), 4)
        );
        assert_eq!(
            pick(&s, &p, NOW, &[]),
            Pick::AllCooling {
                soonest_ms: NOW + 60_000
            }
        );

        let mut s = store(&["a", "b"]);
        s.current_account_id = Some("a".into());
        report_429(&mut s, 1, &hint(60), &p, NOW);
        assert_eq!(s.current_account_id.as_deref(), Some("a"));
        assert_eq!(
            report_429(&mut s, 7, &hint(60), &p, NOW),
            Outcome::Ignored,
            "bad index: no panic"
        );
    }
}

/// Properties of Retry-After parsing over generated input (README, Property tests).
#[cfg(test)]
mod proptests {
    use super::*;
    use crate::strategies::{apply, edits, text};
    use proptest::collection::vec;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, prop_oneof, proptest};
    use proptest::sample::select;
    use proptest::strategy::Strategy;
    use proptest::test_runner::Config as ProptestConfig;

    /// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z in Unix seconds.
    const FIRST: i64 = -62_135_596_800;
    const LAST: i64 = 253_402_300_799;

    const EDGES: &[i64] = &[i64::MIN, i64::MAX, 0, -1, LAST * 1000 + 999, FIRST * 1000];
    const WHITESPACE: &[&str] = &["", " ", "  ", "\t", "\r\n", " \t "];

    /// The caller's clock in Unix ms: an edge, any i64, or 1970 to 2100.
    fn now() -> impl Strategy<Value = i64> {
        prop_oneof![
            1 => select(EDGES),
            1 => any::<i64>(),
            2 => 0i64..=4_102_444_800_000,
        ]
    }

    /// A Unix second in years 1..=9999: any, or (two times in three) within about a day of
    /// `now`.
    fn date_near(now: i64, near: bool, any_t: i64, offset: i64) -> i64 {
        match near {
            true => (now / 1000).clamp(FIRST, LAST) + offset,
            false => any_t,
        }
        .clamp(FIRST, LAST)
    }

    fn date() -> impl Strategy<Value = (bool, i64, i64)> {
        (
            proptest::bool::weighted(0.67),
            FIRST..=LAST,
            -100_000i64..=100_000,
        )
    }

    /// The three HTTP-date forms of RFC 9110 §5.6.7 for Unix second `t`: IMF-fixdate,
    /// rfc850-date, asctime-date.
    fn http_dates(t: i64) -> Option<[String; 3]> {
        let d = OffsetDateTime::from_unix_timestamp(t).ok()?;
        let wd = d.weekday().number_days_from_monday() as usize;
        let mon = MONTHS[usize::from(u8::from(d.month())) - 1];
        let clock = format!("{:02}:{:02}:{:02}", d.hour(), d.minute(), d.second());
        let (day, year) = (d.day(), d.year());
        Some([
            format!("{}, {day:02} {mon} {year:04} {clock} GMT", SHORT_DAYS[wd]),
            format!(
                "{}, {day:02}-{mon}-{:02} {clock} GMT",
                LONG_DAYS[wd],
                year.rem_euclid(100)
            ),
            format!("{} {mon} {day:>2} {clock} {year:04}", SHORT_DAYS[wd]),
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Delta-seconds: any u32, with leading zeros and ASCII whitespace around it, is its
        /// number; any u64 is itself; wider than u64 is the longest wait, never a wrapped
        /// number or no hint; a negative number is no hint.
        #[test]
        fn retry_after_delta_seconds_are_their_number(
            now in now(),
            n in any::<u32>(),
            zeros in 0usize..3,
            before in select(WHITESPACE),
            after in select(WHITESPACE),
            big in any::<u64>(),
            tail in 0u64..1 << 30,
        ) {
            let v = format!("{before}{}{n}{after}", "0".repeat(zeros));
            prop_assert_eq!(parse_retry_after(&v, now), Some(u64::from(n)), "{:?}", v);
            prop_assert_eq!(parse_retry_after(&big.to_string(), now), Some(big));
            let wide = format!("{}{tail:020}", big.max(1));
            prop_assert_eq!(parse_retry_after(&wide, now), Some(u64::MAX), "{}", wide);
            prop_assert_eq!(parse_retry_after(&format!("-{n}"), now), None);
        }

        /// An HTTP-date in years 1..=9999, in each of the three forms: the seconds until it,
        /// rounded up, 0 when past. rfc850's two-digit year is read within 50 years of now.
        #[test]
        fn retry_after_http_dates_are_the_seconds_until_them(
            now in now(),
            (near, any_t, offset) in date(),
        ) {
            let t = date_near(now, near, any_t, offset);
            let [imf, rfc850, asctime] = http_dates(t).unwrap_or_default();
            let want = u64::try_from(
                (i128::from(t) * 1000 - i128::from(now)).clamp(0, i128::from(i64::MAX)),
            )
            .map(|ms| ms.div_ceil(1000))
            .ok();
            prop_assert_eq!(parse_retry_after(&imf, now), want, "{:?} now {}", imf, now);
            prop_assert_eq!(parse_retry_after(&asctime, now), want, "{:?} now {}", asctime, now);
            let now_s = now.div_euclid(1000);
            if (now_s - t).abs() < 40 * 365 * 86_400 && (FIRST..=LAST).contains(&now_s) {
                prop_assert_eq!(parse_retry_after(&rfc850, now), want, "{:?} now {}", rfc850, now);
            }
        }

        /// A damaged date: any answer or none, but no panic, and never a wait past the end of
        /// year 9999 unless the damage left plain digits (delta-seconds).
        #[test]
        fn retry_after_damaged_dates_never_pass_year_9999(
            now in now(),
            (near, any_t, offset) in date(),
            form in 0usize..3,
            edits in edits(),
        ) {
            let t = date_near(now, near, any_t, offset);
            let dates = http_dates(t).unwrap_or_default();
            let b = apply(dates[form].clone().into_bytes(), &edits);
            let s = String::from_utf8_lossy(&b);
            if let Some(secs) = parse_retry_after(&s, now) {
                if !s.trim_ascii().bytes().all(|c| c.is_ascii_digit()) {
                    let last = (i128::from(LAST) - i128::from(now) / 1000 + 1).max(0);
                    prop_assert!(i128::from(secs) <= last, "{:?} now {}: {}", s, now, secs);
                }
            }
        }

        /// Any text at all: an answer or none, never a panic.
        #[test]
        fn retry_after_any_text_never_panics(
            now in now(),
            s in text(),
            b in vec(any::<u8>(), 0..=40),
        ) {
            let _ = parse_retry_after(&s, now);
            let _ = parse_retry_after(&String::from_utf8_lossy(&b), now);
        }
    }

    const HDR_NOW: i64 = 1_795_000_000_000;
    const NOISE: &[&str] = &[
        "Content-Type: application/json",
        "x-request-id: 5b8e",
        "garbage line",
        "X-RateLimit-Limit: 100",
        "x-ratelimit-remaining-tokens: 0",
        ": empty name",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Any d/h/m/s/ms written the Go way reads back as its exact length, and so does the
        /// same length written as seconds with a fraction.
        #[test]
        fn written_durations_read_back(
            parts in (0u64..400, 0u64..100, 0u64..100, 0u64..100, 0u64..1000),
            zeros in vec(any::<bool>(), 5),
        ) {
            let (d, h, m, s, ms) = parts;
            let want = (((d * 24 + h) * 60 + m) * 60 + s) * 1000 + ms;
            let mut text = String::new();
            for (i, (n, unit)) in [(d, "d"), (h, "h"), (m, "m"), (s, "s"), (ms, "ms")].into_iter().enumerate() {
                if n > 0 || zeros[i] {
                    text += &format!("{n}{unit}");
                }
            }
            if text.is_empty() {
                text = "0".into();
            }
            prop_assert_eq!(parse_duration_ms(&text), Some(want), "{}", text);
            let secs = format!("{}.{:03}s", want / 1000, want % 1000);
            prop_assert_eq!(parse_duration_ms(&secs), Some(want), "{}", secs);
        }

        /// A header block's hint does not depend on line endings, case, the status line,
        /// where the field stands among others, or noise lines; and bent bytes never panic.
        #[test]
        fn header_hint_ignores_form_and_never_panics(
            secs in 0u64..10_000_000,
            style in 0u8..4,
            upper in vec(any::<bool>(), 40),
            crlf in any::<bool>(),
            noise in vec(select(NOISE), 0..6),
            at in any::<proptest::sample::Index>(),
            spaces in 0usize..3,
            status in any::<bool>(),
            bends in edits(),
            junk in vec(any::<u8>(), 0..200),
            clock in any::<i64>(),
        ) {
            let (name, value) = match style {
                0 => ("Retry-After", secs.to_string()),
                1 => ("x-ratelimit-reset-requests", format!("{secs}s")),
                2 => ("x-ratelimit-reset-tokens", format!("{}m{}s", secs / 60, secs % 60)),
                _ => ("X-RateLimit-Reset", (HDR_NOW / 1000 + secs as i64).to_string()),
            };
            let name: String = name
                .chars()
                .zip(upper.iter().cycle())
                .map(|(c, &u)| if u { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
                .collect();
            let eol = if crlf { "\r\n" } else { "\n" };
            let mut lines: Vec<String> = noise.iter().map(|n| n.to_string()).collect();
            let i = at.index(lines.len() + 1);
            lines.insert(i, format!("{name}:{}{value}", " ".repeat(spaces)));
            if status {
                lines.insert(0, "HTTP/1.1 429 Too Many Requests".into());
            }
            let mut block = lines.join(eol);
            block += eol;
            block += eol;
            let body_at = block.len();
            block += r#"{"error":"Retry-After: 1"}"#;
            let h = header_hint(block.as_bytes(), HDR_NOW);
            prop_assert_eq!(h.wait_ms, Some(secs * 1000), "{:?}", block);
            prop_assert_eq!(header_block_end(block.as_bytes()), body_at, "{:?}", block);
            let _ = header_hint(&junk, HDR_NOW);
            let bent = apply(block.into_bytes(), &bends);
            let _ = header_hint(&bent, clock);
            prop_assert!(header_block_end(&bent) <= bent.len());
        }
    }
}
