//! `qwen-cred report-429`: classify a rate limit and mark the account (rotation.md).

use super::wait_for_reset;
use crate::cli::Report429;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::rotation::{self, Outcome, Pick, Report};
use crate::store::Store;
use serde_json::{json, Value};
use std::io::Read;

/// Enough of a response body to recognise a quota error.
const MAX_BODY: u64 = 1024 * 1024;
/// Far more than any response's header block; the rest of a longer one is not read.
const MAX_HEADERS: u64 = 64 * 1024;
/// A cooldown past a week is a server's mistake; the cap keeps a stored time sane.
const MAX_HINT_MS: u64 = 7 * 86_400_000;

pub fn run(cfg: &Config, args: &Report429) -> Result<()> {
    let policy = cfg.rotation_policy();
    let now = crate::store::now_ms();
    let explicit = args
        .retry_after
        .as_deref()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| {
            let secs = rotation::parse_retry_after(v, now);
            if secs.is_none() {
                crate::msg::warn(&format!(
                    "ignoring Retry-After \"{}\": not delta-seconds or an HTTP-date",
                    v.escape_debug()
                ));
            }
            secs.map(|n| n.saturating_mul(1000))
        });
    let (head, body) = read_response(args)?;
    // `--retry-after` is what the caller read from the headers itself: it wins over them.
    let hint = head.map(|h| rotation::header_hint(&h, now));
    for (name, value, why) in hint.iter().flat_map(|h| &h.ignored) {
        let shown: String = value.chars().take(80).collect();
        crate::msg::warn(&format!(
            "ignoring the {name} header \"{}\": {why}",
            shown.escape_debug()
        ));
    }
    let retry_after_ms = match (explicit, &hint) {
        (Some(ms), _) => Some(ms),
        (None, Some(h)) => {
            if let (Some(ms), Some(from)) = (h.wait_ms, h.from) {
                crate::msg::debug(&format!("{from} says retry in {ms} ms"));
            }
            h.wait_ms
        }
        (None, None) => None,
    };
    let report = Report {
        retry_after_ms: retry_after_ms.map(|ms| ms.min(MAX_HINT_MS)),
        quota: crate::oauth::is_quota_body(&body),
    };
    let who = args.account.clone().or_else(|| cfg.account_id_env.clone());
    let d = crate::store::update(&cfg.pool, cfg.lock_timeout(), |s| {
        if s.accounts.is_empty() {
            return Err(Error::no_account(&[]));
        }
        let i = match &who {
            Some(id) => s.find(id)?,
            None => match s.current_account_id.as_deref().map(|c| s.find_id(c)) {
                Some(Ok(i)) => i,
                _ => {
                    return Err(Error::Usage(
                        "no account to report: give --account ID".into(),
                    ))
                }
            },
        };
        let outcome = rotation::report_429(s, i, &report, &policy, now);
        Ok(decide(s, i, outcome, &policy, now))
    })?;
    // Whether this call sleeps, decided once: the JSON line says so before the sleep starts.
    let max_wait_ms = i64::try_from(cfg.settings.max_rate_limit_wait_seconds)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000);
    let wait_ms = match (d.outcome, d.soonest) {
        _ if args.no_wait => 0,
        (Outcome::SleepThenRetry { ms }, _) => i64::try_from(ms).unwrap_or(i64::MAX),
        _ if d.any_usable => 0,
        (_, Some(until)) if until.saturating_sub(now) <= max_wait_ms => {
            until.saturating_sub(now).max(0)
        }
        _ => 0,
    };
    if args.json {
        crate::msg::out(&format!("{}\n", d.json(wait_ms)))?;
    }
    let id = &d.account_id;
    match d.outcome {
        Outcome::SleepThenRetry { ms } => {
            crate::msg::debug(&format!(
                "account {id}: short rate limit; retry the same account in {ms} ms"
            ));
            if wait_ms > 0 {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            Ok(())
        }
        Outcome::Ignored | Outcome::Marked { .. } => {
            if let Outcome::Marked { until_ms, reason } = d.outcome {
                crate::msg::debug(&format!(
                    "account {id}: cooling down until {} ({reason})",
                    crate::msg::rfc3339(until_ms)
                ));
            }
            if d.any_usable {
                return Ok(());
            }
            match d.soonest {
                // Told "no wait" (--no-wait, or past max_rate_limit_wait_seconds): exit 4.
                Some(until) => wait_for_reset(cfg, until, wait_ms == 0),
                None => Err(Error::no_account(&[])),
            }
        }
    }
}

/// What one report decided, read from the store right after it was booked.
struct Decision {
    outcome: Outcome,
    account_id: String,
    email: String,
    /// The reported account's cooldown (end, reason), if it is cooling down.
    cooling: Option<(i64, String)>,
    any_usable: bool,
    soonest: Option<i64>,
    /// When the next account can serve: now, after the short wait, or at the soonest reset.
    next_at: i64,
    /// The account `token` picks at `next_at` if nothing else changes: (id, email).
    next: Option<(String, String)>,
}

fn decide(s: &Store, i: usize, outcome: Outcome, policy: &rotation::Policy, now: i64) -> Decision {
    let a = &s.accounts[i];
    let cooling = match outcome {
        Outcome::Marked { until_ms, reason } => Some((until_ms, reason.to_string())),
        Outcome::Ignored => a.rate_limit_resets_at.filter(|&t| t > now).map(|t| {
            let reason = a
                .rate_limit_reason
                .clone()
                .unwrap_or_else(|| "backoff".into());
            (t, reason)
        }),
        Outcome::SleepThenRetry { .. } => None,
    };
    let any_usable = s.accounts.iter().any(|a| rotation::is_usable(a, now));
    let soonest = rotation::soonest_reset(s, now);
    let next_at = match outcome {
        Outcome::SleepThenRetry { ms } => now.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)),
        _ if any_usable => now,
        _ => soonest.unwrap_or(now),
    };
    let next = match rotation::pick(s, policy, next_at, &[]) {
        Pick::Account(j) => Some((s.accounts[j].id.clone(), s.accounts[j].email.clone())),
        _ => None,
    };
    Decision {
        outcome,
        account_id: a.id.clone(),
        email: a.email.clone(),
        cooling,
        any_usable,
        soonest,
        next_at,
        next,
    }
}

impl Decision {
    /// The `--json` line (cli.md, man page): one stable shape whatever the decision.
    fn json(&self, wait_ms: i64) -> Value {
        let decision = match self.outcome {
            Outcome::SleepThenRetry { .. } => "retry_same",
            Outcome::Ignored => "already_cooling",
            Outcome::Marked { .. } => "cooled",
        };
        let rfc3339 = crate::msg::rfc3339;
        json!({
            "account_id": self.account_id,
            "email": self.email,
            "decision": decision,
            "reason": self.cooling.as_ref().map(|(_, r)| r),
            "cooling_until": self.cooling.as_ref().map(|(t, _)| rfc3339(*t)),
            "next_account_id": self.next.as_ref().map(|(id, _)| id),
            "next_email": self.next.as_ref().map(|(_, e)| e),
            "next_at": self.next.as_ref().map(|_| rfc3339(self.next_at)),
            "wait_ms": wait_ms,
        })
    }
}

/// The response's header block (`--headers`) and body (`--body`), each bounded. When both
/// name the same file (`-` included: stdin can be read only once), it holds the header block,
/// an empty line and the body, as `curl -i` prints a response.
fn read_response(args: &Report429) -> Result<(Option<Vec<u8>>, String)> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match (args.headers.as_deref(), args.body.as_deref()) {
        (Some(h), Some(b)) if h == b => {
            let all = read_bounded(h, MAX_HEADERS + MAX_BODY, "response")?;
            let end = rotation::header_block_end(&all);
            let head = all[..end.min(MAX_HEADERS as usize)].to_vec();
            let body = &all[end..];
            Ok((Some(head), text(&body[..body.len().min(MAX_BODY as usize)])))
        }
        (h, b) => {
            let head = h
                .map(|h| read_bounded(h, MAX_HEADERS, "response headers"))
                .transpose()?;
            let body = b
                .map(|b| read_bounded(b, MAX_BODY, "response body"))
                .transpose()?;
            Ok((head, body.as_deref().map(text).unwrap_or_default()))
        }
    }
}

/// At most `limit` bytes of `path`, or of stdin for `-`.
fn read_bounded(path: &str, limit: u64, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let read = if path == "-" {
        std::io::stdin().lock().take(limit).read_to_end(&mut buf)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(limit).read_to_end(&mut buf))
    };
    read.map_err(|e| Error::File(format!("cannot read the {what} {path}: {e}")))?;
    Ok(buf)
}
