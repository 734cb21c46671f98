//! Managing the pool by hand: `list`, `use`, `remove`, `import`.

use super::transact;
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
    let now = crate::now_ms();
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
        crate::msg::warn("no accounts; add one with `qwen-cred login` or `qwen-cred import`");
        return Ok(());
    }
    let rows: Vec<[String; 6]> = s
        .accounts
        .iter()
        .map(|a| {
            let expiry = if crate::rotation::is_expired(a, now) {
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
    json!({
        "id": a.id,
        "email": a.email,
        "fingerprint": a.refresh_token.fingerprint(),
        "state": state,
        "current": s.current_account_id.as_deref() == Some(&a.id),
        "status_reason": a.status_reason,
        "expires_at": rfc3339(a.expiry_date),
        "expired": crate::rotation::is_expired(a, now),
        "total_requests": a.total_requests,
        "last_used_at": a.last_used_at.map(rfc3339),
        "created_at": rfc3339(a.created_at),
        "rate_limited_until": cooling_until(a, now).map(rfc3339),
        "rate_limit_reason": cooling_until(a, now).and(a.rate_limit_reason.clone()),
        "is_primary": a.is_primary,
        "linked_file": a.linked_file,
    })
}

pub fn use_(cfg: &Config, args: &Use) -> Result<()> {
    transact(cfg, |s| {
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
    transact(cfg, |s| {
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
        if let Some(fp) = crate::qwen_cli::removed_login(cfg, &removed) {
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
    let outcome = import_file(cfg, &path, args.email.as_deref())?;
    crate::msg::warn(&outcome);
    Ok(())
}

/// Adds (or updates) the account of a Qwen CLI file, linked to it; returns what happened.
pub fn import_file(cfg: &Config, path: &std::path::Path, email: Option<&str>) -> Result<String> {
    let creds = crate::qwen_cli::read(path)?;
    // Linked by the path as given, not a symlink's target: the Qwen CLI replaces a symlink
    // there with a regular file, and the link must hold (files.md).
    let linked = crate::qwen_cli::as_given(path)
        .to_string_lossy()
        .into_owned();
    let fp = creds.refresh_token.sha256_hex();
    let now = crate::now_ms();
    transact(cfg, |s| {
        // Imported by hand: a login `remove` took out may be imported again on its own later.
        if s.removed_qwen_cli_fp.as_ref() == Some(&fp) {
            s.removed_qwen_cli_fp = None;
        }
        if let Some(i) = s.index_by_refresh_token(&creds.refresh_token) {
            let a = &mut s.accounts[i];
            if creds.expiry_date > a.expiry_date {
                a.access_token = creds.access_token.clone();
                a.expiry_date = creds.expiry_date;
            }
            if let Some(e) = email {
                a.email = e.to_string();
            }
            if a.linked_file
                .as_deref()
                .is_some_and(|l| crate::qwen_cli::links_to(l, path))
            {
                a.linked_refresh_fp = Some(fp.clone());
            }
            return Ok(format!("{} is already account {}", path.display(), a.id));
        }
        let mut a = Account::new(
            creds.access_token.clone(),
            creds.refresh_token.clone(),
            creds.expiry_date,
            now,
        );
        a.token_type = creds.token_type.clone();
        a.resource_url = creds.resource_url.clone();
        a.email = email.unwrap_or_default().to_string();
        a.linked_file = Some(linked.clone());
        a.linked_refresh_fp = Some(fp.clone());
        let i = s.add(a)?;
        Ok(format!(
            "imported {} as account {}",
            path.display(),
            s.accounts[i].id
        ))
    })
}
