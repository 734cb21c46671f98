//! Rotation as pure functions of the store and a `now` in Unix ms (rotation.md): which account
//! serves a token, when a token must be refreshed, how a 429 report is classified and booked,
//! and when the daily quota resets. No I/O, no clock and no environment here, so every rule is
//! unit-tested with a fixed `now`; the commands do the sleeping, locking and printing.

use crate::store::{Account, Status, Store, MAX_COUNT};
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

/// Not cooling down. Revoked accounts are never usable.
pub fn is_usable(a: &Account, now: i64) -> bool {
    a.status != Status::Revoked && !is_cooling(a, now)
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
    /// Nothing to wait for: the pool is empty, revoked or skipped. `revoked` lists the ids to
    /// name in the "run qwen-cred login" message.
    Unavailable { revoked: Vec<String> },
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
        .filter(|a| a.status != Status::Revoked && !skip.contains(&a.id))
        .filter_map(|a| a.rate_limit_resets_at.filter(|&r| r > now))
        .min();
    match waiting {
        Some(soonest_ms) => Pick::AllCooling { soonest_ms },
        None => Pick::Unavailable {
            revoked: accounts
                .iter()
                .filter(|a| a.status == Status::Revoked)
                .map(|a| a.id.clone())
                .collect(),
        },
    }
}

/// A pinned token (`--account`) counts as a use but does not move `current`.
pub fn record_pinned(s: &mut Store, i: usize, now: i64) -> Account {
    let a = &mut s.accounts[i];
    a.total_requests = a.total_requests.saturating_add(1).min(MAX_COUNT);
    a.last_used_at = Some(now);
    a.clone()
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
pub fn record_use(store: &mut Store, idx: usize, now: i64) {
    let Some(a) = store.accounts.get_mut(idx) else {
        return;
    };
    a.total_requests = a.total_requests.saturating_add(1).min(MAX_COUNT);
    a.last_used_at = Some(now);
    if store.current_account_id.as_deref() == Some(a.id.as_str()) {
        store.current_streak = store.current_streak.saturating_add(1).min(MAX_COUNT);
    } else {
        store.current_account_id = Some(a.id.clone());
        store.current_streak = 1;
    }
}

/// The soonest future cooldown end among accounts that are not revoked.
pub fn soonest_reset(store: &Store, now: i64) -> Option<i64> {
    store
        .accounts
        .iter()
        .filter(|a| a.status != Status::Revoked)
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

pub(crate) const SHORT_DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
pub(crate) const LONG_DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
pub(crate) const MONTHS: [&str; 12] = [
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
fn parse_http_date(s: &str, now_ms: i64) -> Option<i64> {
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

/// Whether a 429 (or 403) body says the daily quota is spent rather than a short throttle.
pub fn is_quota_body(body: &str) -> bool {
    if [
        "insufficient_quota",
        "quota_exceeded",
        "Free allocated quota exceeded",
    ]
    .iter()
    .any(|k| body.contains(k))
    {
        return true;
    }
    let lower = body.to_ascii_lowercase();
    lower.contains("quota") && lower.contains("exceed")
}

/// min(base x 2^(n-1), max) for the n-th consecutive 429 (n = 0 counts as 1); saturates.
pub fn backoff_ms(n: u32, base: u64, max: u64) -> u64 {
    let factor = 1u64.checked_shl(n.saturating_sub(1)).unwrap_or(u64::MAX);
    base.saturating_mul(factor).min(max)
}

/// What a wrapper learnt from one 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Report {
    pub retry_after_secs: Option<u64>,
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
        && report.retry_after_secs.is_none()
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
        let hinted = add_ms(
            now,
            report.retry_after_secs.unwrap_or(0).saturating_mul(1000),
        );
        (
            next_quota_reset(now, &policy.quota_reset).max(hinted),
            "quota",
        )
    } else if let Some(secs) = report.retry_after_secs {
        if secs <= policy.retry_same_account_threshold_seconds {
            return Outcome::SleepThenRetry {
                ms: secs.saturating_mul(1000),
            };
        }
        (add_ms(now, secs.saturating_mul(1000)), "retry-after")
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
                    record_use(s, i, NOW);
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
            Pick::Unavailable { revoked: vec![] }
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
            Pick::Unavailable { revoked: vec![] }
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
                revoked: ids(&["a", "b", "c"])
            }
        );
        assert_eq!(soonest_reset(&s, NOW), None);
    }

    #[test]
    fn record_use_counts_and_tracks_the_streak() {
        let mut s = store(&["a", "b"]);
        record_use(&mut s, 1, NOW);
        assert_eq!(
            (s.current_account_id.as_deref(), s.current_streak),
            (Some("b"), 1)
        );
        record_use(&mut s, 1, NOW + 5);
        assert_eq!(s.current_streak, 2);
        assert_eq!(s.accounts[1].total_requests, 2);
        assert_eq!(s.accounts[1].last_used_at, Some(NOW + 5));
        record_use(&mut s, 0, NOW + 6);
        assert_eq!(
            (s.current_account_id.as_deref(), s.current_streak),
            (Some("a"), 1)
        );
        record_use(&mut s, 9, NOW); // out of range: no panic, no change
        assert_eq!(s.current_streak, 1);
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
    fn classify_429_vectors() {
        let v = vectors();
        let cases = v["classify_429"].as_array().expect("classify_429 array");
        assert!(!cases.is_empty());
        for c in cases {
            let want = match c["kind"].as_str() {
                Some("quota") => true,
                Some("throttle") => false,
                other => panic!("unknown kind {other:?}"),
            };
            assert_eq!(
                is_quota_body(c["body"].as_str().expect("body")),
                want,
                "{c}"
            );
        }
        assert!(is_quota_body("Daily QUOTA has been EXCEEDED"));
        assert!(!is_quota_body("quota remaining: 10"));
        assert!(!is_quota_body("exceeded the rate"));
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

    // ---- report-429 ----

    fn hint(secs: u64) -> Report {
        Report {
            retry_after_secs: Some(secs),
            quota: false,
        }
    }

    const QUOTA: Report = Report {
        retry_after_secs: None,
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
            retry_after_secs: Some(3),
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
            retry_after_secs: Some(3600),
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
