//! `qwen-cred report-429`: classify a rate limit and mark the account (rotation.md).

use super::wait_for_reset;
use crate::cli::Report429;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::rotation::{self, Outcome, Report};
use std::io::Read;

/// Enough of a response body to recognise a quota error.
const MAX_BODY: u64 = 1024 * 1024;
const MAX_RETRY_AFTER_SECS: u64 = 7 * 86_400;

pub fn run(cfg: &Config, args: &Report429) -> Result<()> {
    let policy = cfg.rotation_policy();
    let now = crate::store::now_ms();
    let retry_after = args
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
            // A cooldown past a week is a server's mistake; cap it so a stored time stays sane.
            secs.map(|n| n.min(MAX_RETRY_AFTER_SECS))
        });
    let body = match args.body.as_deref() {
        None => String::new(),
        Some(path) => read_body(path)?,
    };
    let report = Report {
        retry_after_secs: retry_after,
        quota: rotation::is_quota_body(&body),
    };
    let who = args.account.clone().or_else(|| cfg.account_id_env.clone());
    let (outcome, id, soonest, any_usable) =
        crate::store::update(&cfg.pool, cfg.lock_timeout(), |s| {
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
            let id = s.accounts[i].id.clone();
            let outcome = rotation::report_429(s, i, &report, &policy, now);
            let any_usable = s.accounts.iter().any(|a| rotation::is_usable(a, now));
            Ok((outcome, id, rotation::soonest_reset(s, now), any_usable))
        })?;
    match outcome {
        Outcome::SleepThenRetry { ms } => {
            crate::msg::debug(&format!(
                "account {id}: short rate limit; retry the same account in {ms} ms"
            ));
            if !args.no_wait {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            Ok(())
        }
        Outcome::Ignored | Outcome::Marked { .. } => {
            if let Outcome::Marked { until_ms, reason } = outcome {
                crate::msg::debug(&format!(
                    "account {id}: cooling down until {} ({reason})",
                    crate::msg::rfc3339(until_ms)
                ));
            }
            if any_usable {
                return Ok(());
            }
            match soonest {
                Some(until) => wait_for_reset(cfg, until, args.no_wait),
                None => Err(Error::no_account(&[])),
            }
        }
    }
}

fn read_body(path: &str) -> Result<String> {
    let mut buf = Vec::new();
    let read = if path == "-" {
        std::io::stdin().lock().take(MAX_BODY).read_to_end(&mut buf)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_BODY).read_to_end(&mut buf))
    };
    read.map_err(|e| Error::File(format!("cannot read the response body {path}: {e}")))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
