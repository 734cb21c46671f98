//! Managing the pool by hand: `list`, `use`, `remove`, `import`.

use crate::cli::{Import, List, Remove, Use};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::msg::{relative, rfc3339};
use crate::store::{self, Account, Status, Store};
use serde_json::{json, Value};
use std::path::PathBuf;

pub fn list(cfg: &Config, args: &List) -> Result<()> {
    // Writes are atomic renames, so a plain read sees a whole file without the lock.
    let s = store::load(&cfg.store_path())?;
    let now = crate::store::now_ms();
    if args.json {
        let items: Vec<Value> = s
            .accounts
            .iter()
            .map(|a| {
                let mut v = account_json(&s, a, now);
                v["pending_journal"] = crate::journal::is_pending(&cfg.dir, &a.id).into();
                v
            })
            .collect();
        return super::config::print_json(&Value::Array(items));
    }
    if s.accounts.is_empty() {
        crate::msg::warn(
            "no accounts; add one with `qwen-cred login`, `qwen-cred import` or `qwen-cred add-key`",
        );
        return Ok(());
    }
    let rows: Vec<[String; 6]> = s
        .accounts
        .iter()
        .map(|a| {
            let expiry = if a.is_key() {
                "never (API key)".to_string()
            } else if crate::rotation::is_expired(a, now) {
                format!("expired {}", relative(a.expiry_date, now))
            } else {
                relative(a.expiry_date, now)
            };
            let used = a.last_used_at.map_or("never".into(), |t| relative(t, now));
            let mut state = state_text(&s, a, now);
            if crate::journal::is_pending(&cfg.dir, &a.id) {
                state += ", new tokens pending in its journal";
            }
            [
                a.id.clone(),
                a.label(),
                state,
                expiry,
                a.total_requests.to_string(),
                used,
            ]
        })
        .collect();
    let head = [
        "ID",
        "ACCOUNT",
        "STATE",
        "TOKEN EXPIRES",
        "REQUESTS",
        "LAST USED",
    ];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            l += &format!("{c:<width$}  ", width = w[i]);
        }
        l.trim_end().to_string() + "\n"
    };
    let mut text = line(head);
    for r in &rows {
        text += &line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]);
    }
    crate::msg::out(&text)
}

fn cooling_until(a: &Account, now: i64) -> Option<i64> {
    a.rate_limit_resets_at.filter(|&t| t > now)
}

fn state_text(s: &Store, a: &Account, now: i64) -> String {
    if a.status == Status::Revoked {
        return format!("revoked: run {}", a.relogin_hint());
    }
    if let Some(t) = cooling_until(a, now) {
        let reason = a.rate_limit_reason.as_deref().unwrap_or("rate limit");
        return format!("cooling down until {} ({reason})", rfc3339(t));
    }
    if s.current_account_id.as_deref() == Some(&a.id) {
        "current".into()
    } else {
        "ok".into()
    }
}

fn account_json(s: &Store, a: &Account, now: i64) -> Value {
    let state = match () {
        _ if a.status == Status::Revoked => "revoked",
        _ if cooling_until(a, now).is_some() => "cooling_down",
        _ if s.current_account_id.as_deref() == Some(&a.id) => "current",
        _ => "ok",
    };
    // A key account: its label and base URL; no expiry (a key does not expire).
    let mut v = json!({
        "id": a.id,
        "kind": a.kind.as_str(),
        "email": a.email,
        "fingerprint": a.fingerprint(),
        "state": state,
        "current": s.current_account_id.as_deref() == Some(&a.id),
        "status_reason": a.status_reason,
        "expires_at": (!a.is_key()).then(|| rfc3339(a.expiry_date)),
        "expired": crate::rotation::is_expired(a, now),
        "total_requests": a.total_requests,
        "last_used_at": a.last_used_at.map(rfc3339),
        "created_at": rfc3339(a.created_at),
        "rate_limited_until": cooling_until(a, now).map(rfc3339),
        "rate_limit_reason": cooling_until(a, now).and(a.rate_limit_reason.clone()),
        "is_primary": a.is_primary,
        "linked_file": a.linked_file,
    });
    if a.is_key() {
        v["label"] = a.label.clone().into();
        v["base_url"] = a.base_url.clone().into();
    }
    v
}

pub fn use_(cfg: &Config, args: &Use) -> Result<()> {
    crate::store::update(&cfg.dir, cfg.lock_timeout(), |s| {
        let i = s.find(&args.id)?;
        let id = s.accounts[i].id.clone();
        if s.current_account_id.as_deref() != Some(&id) {
            s.current_account_id = Some(id);
            s.current_streak = 0;
        }
        Ok(())
    })
}

pub fn remove(cfg: &Config, args: &Remove) -> Result<()> {
    if args.all != args.ids.is_empty() {
        return Err(Error::Usage(
            "give account ids to remove, or --all (not both)".into(),
        ));
    }
    crate::store::update(&cfg.dir, cfg.lock_timeout(), |s| {
        let removed = if args.all {
            s.current_account_id = None;
            s.current_streak = 0;
            std::mem::take(&mut s.accounts)
        } else {
            // Resolve every id first, so a typo removes nothing.
            let mut ids = Vec::new();
            for id in &args.ids {
                ids.push(s.accounts[s.find(id)?].id.clone());
            }
            let mut removed = Vec::new();
            for id in ids {
                if let Some(i) = s.accounts.iter().position(|a| a.id == id) {
                    removed.push(s.remove_at(i));
                }
            }
            removed
        };
        // Removing the Qwen CLI's login sticks: `token` does not import it again on its own.
        if let Some(fp) = crate::qwen_cli::removed_login(&cfg.qwen_cli_file(), &removed) {
            s.removed_qwen_cli_fp = Some(fp);
        }
        Ok(())
    })
}

pub fn import(cfg: &Config, args: &Import) -> Result<()> {
    let path = args
        .path
        .as_ref()
        .map_or_else(|| cfg.qwen_cli_file(), PathBuf::from);
    let outcome = super::import_file(cfg, &path, args.email.as_deref())?;
    crate::msg::warn(&outcome);
    Ok(())
}
