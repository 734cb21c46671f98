//! `qwen-cred status`: each account in detail, from what the store already records (the
//! counters `token` updates under its lock): state and why, token expiry, requests since the
//! daily reset and in the last hour, total, last use, last error.

use super::accounts::{account_json, expiry_text, state_word};
use crate::cli::StatusCmd;
use crate::config::Config;
use crate::error::Result;
use crate::msg::{relative, rfc3339};
use crate::rotation::{self, Policy};
use crate::store::{self, Account, Status, Store};
use serde_json::{json, Value};

pub fn run(cfg: &Config, args: &StatusCmd) -> Result<()> {
    let s = store::load(&cfg.store_path())?;
    let now = store::now_ms();
    let policy = cfg.rotation_policy();
    let reset_at = rotation::next_quota_reset(now, &policy.quota_reset);
    if args.json {
        let accounts: Vec<Value> = s
            .accounts
            .iter()
            .map(|a| {
                let mut v = account_json(cfg, &s, a, now);
                let (error, error_at) = last_error(a);
                v["requests_today"] = rotation::requests_today(a, now, &policy.quota_reset).into();
                v["requests_last_hour"] = rotation::requests_last_hour(a, now).into();
                v["last_error"] = error.into();
                v["last_error_at"] = error_at.map(rfc3339).into();
                v
            })
            .collect();
        return super::config::print_json(&json!({
            "current_account_id": s.current_account_id,
            "strategy": cfg.settings.account_selection_strategy,
            "daily_reset_at": rfc3339(reset_at),
            "accounts": accounts,
        }));
    }
    if s.accounts.is_empty() {
        crate::msg::warn("no accounts; add one with `qwen-cred login` or `qwen-cred import`");
        return Ok(());
    }
    let mut text = format!(
        "{} accounts, strategy {}; the daily quota resets at {} ({})\n",
        s.accounts.len(),
        cfg.settings.account_selection_strategy,
        rfc3339(reset_at),
        relative(reset_at, now)
    );
    for a in &s.accounts {
        text += &block(cfg, &s, a, &policy, now);
    }
    crate::msg::out(&text)
}

/// One account: a head line, then one line per fact.
fn block(cfg: &Config, s: &Store, a: &Account, policy: &Policy, now: i64) -> String {
    let mut state = state_line(s, a, now);
    if crate::journal::is_pending(&cfg.pool, &a.id) {
        state += &format!(
            "; new tokens pending in its journal (`qwen-cred refresh --account {}` stores them)",
            a.id
        );
    }
    let used = a.last_used_at.map_or("never".into(), |t| {
        format!("{} ({})", relative(t, now), rfc3339(t))
    });
    let error = match last_error(a) {
        (Some(e), Some(t)) => format!("{e} ({})", relative(t, now)),
        (Some(e), None) => e,
        _ => "none".into(),
    };
    format!(
        "\n{}  {}\n  state       {state}\n  token       expires {} ({})\n  requests    {} since the daily reset, {} in the last hour, {} in total\n  last used   {used}\n  last error  {error}\n",
        a.id,
        a.name(),
        expiry_text(a, now),
        rfc3339(a.expiry_date),
        rotation::requests_today(a, now, &policy.quota_reset),
        rotation::requests_last_hour(a, now),
        a.total_requests,
    )
}

/// The state and, where it is not `ok`, why and what to run.
fn state_line(s: &Store, a: &Account, now: i64) -> String {
    let mut parts = vec![state_word(s, a, now).replace('_', " ")];
    if a.status == Status::Revoked {
        let why = a
            .status_reason
            .as_deref()
            .unwrap_or("the server refused its refresh token");
        parts = vec![format!("revoked ({why}): run {}", a.relogin_hint())];
    }
    if a.disabled && a.status != Status::Revoked {
        parts = vec![format!(
            "disabled: token skips it; `qwen-cred enable {}` puts it back",
            a.id
        )];
    }
    if let Some(t) = a.rate_limit_resets_at.filter(|&t| t > now) {
        let reason = a.rate_limit_reason.as_deref().unwrap_or("rate limit");
        let cooling = format!(
            "cooling down until {} ({}, {reason}); `qwen-cred reset {}` clears it",
            rfc3339(t),
            relative(t, now),
            a.id
        );
        if a.disabled || a.status == Status::Revoked {
            parts.push(cooling);
        } else {
            parts = vec![cooling];
        }
    }
    if s.current_account_id.as_deref() == Some(&a.id) && parts[0] != "current" {
        parts.push("current".into());
    }
    parts.join("; ")
}

/// The latest of: the last refresh failure or revocation, and the last 429 reported.
fn last_error(a: &Account) -> (Option<String>, Option<i64>) {
    let stored = a.last_error.clone().map(|e| (e, a.last_error_at));
    let limited = a.last_rate_limited_at.map(|t| {
        let reason = a.rate_limit_reason.as_deref().unwrap_or("rate limit");
        (format!("HTTP 429 reported ({reason})"), Some(t))
    });
    let revoked = match (a.status, &a.status_reason) {
        (Status::Revoked, Some(r)) if a.last_error.is_none() => {
            Some((format!("revoked: {r}"), a.status_changed_at))
        }
        _ => None,
    };
    [stored, limited, revoked]
        .into_iter()
        .flatten()
        .max_by_key(|(_, t)| t.unwrap_or(i64::MIN))
        .map_or((None, None), |(e, t)| (Some(e), t))
}
