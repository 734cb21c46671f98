//! Managing the pool by hand: `list`, `use`, `remove`, `import`, `label`, `enable`,
//! `disable`, `reset`, and the account object every `--json` output shares.

use crate::cli::{Disable, Enable, Import, Label, List, Remove, Reset, Use};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::msg::{relative, rfc3339};
use crate::store::{self, Account, Status, Store};
use serde_json::{json, Value};
use std::path::PathBuf;

pub fn list(cfg: &Config, args: &List) -> Result<()> {
    if args.json && args.ids {
        return Err(Error::Usage("give --json or --ids, not both".into()));
    }
    // Writes are atomic renames, so a plain read sees a whole file without the lock.
    let s = store::load(&cfg.store_path())?;
    let now = crate::store::now_ms();
    if args.ids {
        let ids: String = s.accounts.iter().map(|a| format!("{}\n", a.id)).collect();
        return crate::msg::out(&ids);
    }
    if args.json {
        let items: Vec<Value> = s
            .accounts
            .iter()
            .map(|a| account_json(cfg, &s, a, now))
            .collect();
        return super::config::print_json(&Value::Array(items));
    }
    if s.accounts.is_empty() {
        crate::msg::warn(&match cfg.pool.name() {
            None => "no accounts; add one with `qwen-cred login`, `qwen-cred import` or `qwen-cred add-key`".into(),
            Some(p) => format!(
                "no accounts in pool {p}; add one with `qwen-cred login --pool {p}` or `qwen-cred add-key --pool {p}`"
            ),
        });
        return Ok(());
    }
    let rows: Vec<[String; 6]> = s
        .accounts
        .iter()
        .map(|a| {
            let used = a.last_used_at.map_or("never".into(), |t| relative(t, now));
            let mut state = state_text(&s, a, now);
            if crate::journal::is_pending(&cfg.pool, &a.id) {
                state += ", new tokens pending in its journal";
            }
            [
                a.id.clone(),
                a.name(),
                state,
                expiry_text(a, now),
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
    // A named pool says which it is; the default pool's table stays as it always was.
    let title = match cfg.pool.name() {
        Some(p) => format!("pool {p}: {}\n", cfg.store_path().display()),
        None => String::new(),
    };
    crate::msg::out(&(title + &table(&head, &rows)))
}

/// Left-aligned columns two spaces apart, trailing blanks trimmed.
pub fn table<const N: usize>(head: &[&str; N], rows: &[[String; N]]) -> String {
    let mut w = head.map(str::len);
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            l += &format!("{c:<width$}  ", width = w[i]);
        }
        l.trim_end().to_string() + "\n"
    };
    let mut text = line(*head);
    for r in rows {
        text += &line(std::array::from_fn(|i| r[i].as_str()));
    }
    text
}

/// `in 1h 59m`, or `expired 3m ago`.
pub fn expiry_text(a: &Account, now: i64) -> String {
    if a.is_key() {
        "never (API key)".into()
    } else if crate::rotation::is_expired(a, now) {
        format!("expired {}", relative(a.expiry_date, now))
    } else {
        relative(a.expiry_date, now)
    }
}

fn cooling_until(a: &Account, now: i64) -> Option<i64> {
    a.rate_limit_resets_at.filter(|&t| t > now)
}

fn state_text(s: &Store, a: &Account, now: i64) -> String {
    if a.status == Status::Revoked {
        return format!("revoked: run {}", a.relogin_hint());
    }
    let cooling = cooling_until(a, now).map(|t| {
        let reason = a.rate_limit_reason.as_deref().unwrap_or("rate limit");
        format!("cooling down until {} ({reason})", rfc3339(t))
    });
    match (a.disabled, cooling) {
        (true, Some(c)) => format!("disabled, {c}"),
        (true, None) => "disabled".into(),
        (false, Some(c)) => c,
        (false, None) if s.current_account_id.as_deref() == Some(&a.id) => "current".into(),
        (false, None) => "ok".into(),
    }
}

/// `revoked`, `disabled`, `cooling_down`, `current` or `ok`, the first that holds.
pub fn state_word(s: &Store, a: &Account, now: i64) -> &'static str {
    match () {
        _ if a.status == Status::Revoked => "revoked",
        _ if a.disabled => "disabled",
        _ if cooling_until(a, now).is_some() => "cooling_down",
        _ if s.current_account_id.as_deref() == Some(&a.id) => "current",
        _ => "ok",
    }
}

/// One account as every `--json` output shows it (the man page's ACCOUNT OBJECT). Never a
/// token.
pub fn account_json(cfg: &Config, s: &Store, a: &Account, now: i64) -> Value {
    json!({
        "id": a.id,
        "kind": a.kind.as_str(),
        "email": a.email,
        "fingerprint": a.fingerprint,
        "state": state_word(s, a, now),
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
        "label": a.label,
        "name": a.name(),
        "disabled": a.disabled,
        "pending_journal": crate::journal::is_pending(&cfg.pool, &a.id),
        "pool": cfg.pool.arg(),
        "base_url": a.base_url,
    })
}

/// Runs `f` on the account `id` names, under the store lock; prints `{"changed", "account"}`
/// with `--json`. `f` says whether it changed anything.
fn change_one(
    cfg: &Config,
    id: &str,
    json: bool,
    f: impl FnOnce(&mut Store, usize) -> Result<bool>,
) -> Result<()> {
    let now = crate::store::now_ms();
    let (changed, out) = crate::store::update(&cfg.pool, cfg.lock_timeout(), |s| {
        let i = s.find(id)?;
        let changed = f(s, i)?;
        Ok((changed, account_json(cfg, s, &s.accounts[i], now)))
    })?;
    if json {
        return super::config::print_json(&json!({"changed": changed, "account": out}));
    }
    Ok(())
}

pub fn use_(cfg: &Config, args: &Use) -> Result<()> {
    let now = crate::store::now_ms();
    change_one(cfg, &args.id, args.json, |s, i| {
        let a = &s.accounts[i];
        // It becomes current all the same; `token` moves on from it while it cannot serve.
        if a.status == Status::Revoked {
            crate::msg::warn(&format!(
                "account {} is revoked; token skips it until you run {}",
                a.id,
                a.relogin_hint()
            ));
        } else if a.disabled {
            crate::msg::warn(&format!(
                "account {} is disabled; token skips it until `qwen-cred enable {}`",
                a.id, a.id
            ));
        } else if let Some(t) = cooling_until(a, now) {
            crate::msg::warn(&format!(
                "account {} is cooling down until {} ({}); token skips it until then, or until `qwen-cred reset {}` clears the cooldown",
                a.id,
                rfc3339(t),
                a.rate_limit_reason.as_deref().unwrap_or("rate limit"),
                a.id
            ));
        }
        let id = a.id.clone();
        if s.current_account_id.as_deref() == Some(&id) {
            return Ok(false);
        }
        s.current_account_id = Some(id);
        s.current_streak = 0;
        Ok(true)
    })
}

pub fn remove(cfg: &Config, args: &Remove) -> Result<()> {
    if args.all != args.ids.is_empty() {
        return Err(Error::Usage(
            "give account ids to remove, or --all (not both)".into(),
        ));
    }
    let (removed, current) = crate::store::update(&cfg.pool, cfg.lock_timeout(), |s| {
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
        // (Only the default pool imports it.)
        if let Some(fp) = cfg
            .pool
            .is_default()
            .then(|| crate::qwen_cli::removed_login(&cfg.qwen_cli_file(), &removed))
            .flatten()
        {
            s.removed_qwen_cli_fp = Some(fp);
        }
        let ids: Vec<String> = removed.into_iter().map(|a| a.id).collect();
        Ok((ids, s.current_account_id.clone()))
    })?;
    if args.json {
        return super::config::print_json(
            &json!({"removed": removed, "current_account_id": current}),
        );
    }
    Ok(())
}

pub fn import(cfg: &Config, args: &Import) -> Result<()> {
    // An imported login stays linked to its file and in step with the Qwen CLI, from one
    // pool: in two, one refresh token would be refreshed under two refresh locks.
    if let Some(p) = cfg.pool.name() {
        return Err(Error::Usage(format!(
            "import adds a Qwen Code CLI login, which belongs to the default pool only, not to pool {p}; run `qwen-cred import --pool default`, or sign in to pool {p} with `qwen-cred login --pool {p}`"
        )));
    }
    let path = args
        .path
        .as_ref()
        .map_or_else(|| cfg.qwen_cli_file(), PathBuf::from);
    let imported = super::import_file(cfg, &path, args.email.as_deref())?;
    crate::msg::warn(&imported.message);
    if args.json {
        return super::config::print_json(&json!({
            "outcome": if imported.added { "added" } else { "updated" },
            "account": imported.account,
        }));
    }
    Ok(())
}

/// The longest label, in characters.
const MAX_LABEL: usize = 64;

/// Why `name` cannot label account `i` of `s`, if it cannot: it must name one account only.
fn check_label(s: &Store, i: usize, name: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::Usage(format!("label {name:?}: {why}")));
    if name.trim().is_empty() || name.trim() != name {
        return bad("give a name without leading or trailing blanks");
    }
    if name.chars().count() > MAX_LABEL || name.chars().any(char::is_control) {
        return bad(&format!(
            "at most {MAX_LABEL} characters, no control characters"
        ));
    }
    if name.starts_with('-') {
        return bad("must not start with -");
    }
    // A label stands for the account wherever an ID goes, so it must not read as another.
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return bad("all digits would read as an account id");
    }
    for (j, b) in s.accounts.iter().enumerate() {
        if j != i && (b.label.as_deref() == Some(name) || b.email == name || b.id == name) {
            return bad(&format!("already names account {}", b.id));
        }
    }
    Ok(())
}

pub fn label(cfg: &Config, args: &Label) -> Result<()> {
    let name = match (&args.name, args.clear) {
        (Some(n), false) => Some(n.clone()),
        (None, true) => None,
        _ => {
            return Err(Error::Usage(
                "give a label, or --clear to remove it (not both): qwen-cred label ID NAME".into(),
            ))
        }
    };
    change_one(cfg, &args.id, args.json, |s, i| {
        if let Some(n) = &name {
            check_label(s, i, n)?;
        }
        let changed = s.accounts[i].label != name;
        s.accounts[i].label = name;
        Ok(changed)
    })
}

/// Applies a label given at login to the account it signed in.
pub fn set_label(s: &mut Store, i: usize, name: &str) -> Result<()> {
    check_label(s, i, name)?;
    s.accounts[i].label = Some(name.to_string());
    Ok(())
}

/// `login --label` is checked before the browser opens; `i` is `None` for a new account.
pub fn check_new_label(s: &Store, i: Option<usize>, name: &str) -> Result<()> {
    check_label(s, i.unwrap_or(usize::MAX), name)
}

pub fn enable(cfg: &Config, args: &Enable) -> Result<()> {
    change_one(cfg, &args.id, args.json, |s, i| {
        let a = &mut s.accounts[i];
        let changed = a.disabled;
        a.disabled = false;
        if a.status == Status::Revoked {
            crate::msg::warn(&format!(
                "account {} is revoked; run {} to sign it in again",
                a.id,
                a.relogin_hint()
            ));
        }
        Ok(changed)
    })
}

pub fn disable(cfg: &Config, args: &Disable) -> Result<()> {
    change_one(cfg, &args.id, args.json, |s, i| {
        let a = &mut s.accounts[i];
        let changed = !a.disabled;
        a.disabled = true;
        Ok(changed)
    })
}

pub fn reset(cfg: &Config, args: &Reset) -> Result<()> {
    let now = crate::store::now_ms();
    let (cleared, accounts) = crate::store::update(&cfg.pool, cfg.lock_timeout(), |s| {
        let targets: Vec<usize> = match (&args.id, args.all) {
            (Some(id), false) => vec![s.find(id)?],
            (None, true) => (0..s.accounts.len()).collect(),
            _ => {
                return Err(Error::Usage(
                    "give an account id, or --all (not both)".into(),
                ))
            }
        };
        let mut cleared = Vec::new();
        for &i in &targets {
            let a = &mut s.accounts[i];
            if cooling_until(a, now).is_some() {
                cleared.push(a.id.clone());
            }
            // The next 429 starts the backoff afresh; when and why the last one came stays
            // for `status`.
            a.rate_limit_resets_at = None;
            a.consecutive_rate_limits = 0;
        }
        let accounts: Vec<Value> = targets
            .iter()
            .map(|&i| account_json(cfg, s, &s.accounts[i], now))
            .collect();
        Ok((cleared, accounts))
    })?;
    if args.json {
        return super::config::print_json(&json!({"cleared": cleared, "accounts": accounts}));
    }
    if cleared.is_empty() {
        crate::msg::warn(match args.all {
            true => "no account was cooling down",
            false => "that account was not cooling down",
        });
    }
    Ok(())
}
