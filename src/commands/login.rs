//! `qwen-cred login`: the OAuth device flow (RFC 8628 with PKCE, qwen-oauth.md), then the
//! account goes into the pool: updated in place when it is already there (which revives a
//! revoked one), replacing one with `--replace`, or as the only one with `--fresh`.

use crate::cli::Login;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::oauth;
use crate::store::{self, Account, Status, Store};
use serde_json::json;
use std::time::{Duration, Instant};

/// Where the new account goes when it is not already in the pool.
#[derive(Clone)]
enum Slot {
    Add,
    Replace(String),
    Fresh,
}

pub fn run(cfg: &Config, args: &Login) -> Result<()> {
    let result = login(cfg, args);
    if let (Err(e), true) = (&result, args.json) {
        emit(&json!({"event": "error", "message": e.to_string(), "exit_code": e.exit_code()}))?;
    }
    result
}

fn emit(v: &serde_json::Value) -> Result<()> {
    crate::msg::out(&format!("{v}\n"))
}

fn login(cfg: &Config, args: &Login) -> Result<()> {
    let slot = match (&args.replace, args.fresh) {
        (Some(_), true) => {
            return Err(Error::Usage(
                "--replace and --fresh exclude each other".into(),
            ))
        }
        (Some(id), false) => Slot::Replace(id.clone()),
        (None, true) => Slot::Fresh,
        (None, false) => Slot::Add,
    };
    // Settle where the account goes before the user spends time in the browser.
    let pool = store::load(&cfg.store_path())?;
    let replaced = match &slot {
        Slot::Replace(id) => Some(pool.find(id)?),
        _ => None,
    };
    if let Some(label) = &args.label {
        super::accounts::check_new_label(&pool, replaced, label)?;
    }
    // A full pool is settled now, unless an account is revoked: then the login may be its
    // revival (same email or refresh token), which `place` sees once the server has answered.
    let revoked = pool.accounts.iter().any(|a| a.status == Status::Revoked);
    let slot = match slot {
        Slot::Add if pool.accounts.len() >= pool.max_accounts && !revoked => ask_when_full(&pool)?,
        other => other,
    };

    let client = oauth::Client::new(&cfg.oauth_settings())?;
    let (verifier, challenge) = oauth::pkce_pair()?;
    let dc = client.device_code(&challenge)?;
    let url = dc
        .verification_uri_complete
        .clone()
        .unwrap_or_else(|| dc.verification_uri.clone());
    crate::msg::warn(&format!(
        "to sign in, open {url} and confirm the code {}",
        dc.user_code
    ));
    if args.json {
        emit(&json!({
            "event": "verification",
            "verification_uri_complete": url,
            "verification_uri": dc.verification_uri,
            "user_code": dc.user_code,
            "expires_in": dc.expires_in,
        }))?;
    }
    if !args.no_browser {
        open_browser(cfg, &url);
    }
    // `--timeout` is at most a year (cli.rs); the server's `expires_in` is clamped the same,
    // so the sum cannot overflow whatever the server sent.
    let wait = args
        .timeout
        .unwrap_or(dc.expires_in)
        .min(crate::cli::MAX_SECS);
    let start = Instant::now();
    let deadline = start
        .checked_add(Duration::from_secs(wait))
        .unwrap_or(start);
    let tok = client.device_login(&dc, &verifier, deadline, &mut |m| crate::msg::debug(m))?;
    let refresh = tok.refresh_token.clone().ok_or_else(|| {
        Error::Login("the server approved the login but sent no refresh token; try again".into())
    })?;
    let email = tok
        .id_token
        .as_ref()
        .and_then(oauth::email_from_id_token)
        .or_else(|| args.email.clone())
        .unwrap_or_default();
    let now = crate::store::now_ms();
    // poll_device answers Done only with an access token.
    let access = tok.access_token.clone().ok_or_else(|| {
        Error::Login("the server approved the login but sent no access token; try again".into())
    })?;
    let expiry = store::clamp_time(tok.expiry_date(now));
    let mut new = Account::new(access, refresh, expiry, now);
    new.token_type = tok.token_type.clone();
    new.resource_url = tok.resource_url.clone();
    new.email = email;
    let a = crate::store::update(&cfg.pool, cfg.lock_timeout(), |s| {
        let i = place(s, new, &slot, now)?;
        if let Some(label) = &args.label {
            super::accounts::set_label(s, i, label)?;
        }
        Ok(s.accounts[i].clone())
    })?;
    crate::msg::warn(&format!("signed in account {} ({})", a.id, a.name()));
    if args.json {
        emit(&json!({
            "event": "success",
            "account_id": a.id,
            "email": a.email,
            "label": a.label,
            "name": a.name(),
        }))?;
    }
    Ok(())
}

/// Puts the new account in the pool; returns its index.
fn place(s: &mut Store, new: Account, slot: &Slot, now: i64) -> Result<usize> {
    // Only an OAuth account is the same login (a key account may carry any email).
    let same = s.accounts.iter().position(|a| {
        !a.is_key()
            && ((!new.email.is_empty() && a.email == new.email)
                || a.refresh_token == new.refresh_token)
    });
    let i = match (same, slot) {
        (_, Slot::Fresh) => {
            s.accounts.clear();
            s.current_account_id = None;
            s.current_streak = 0;
            s.add(new)?
        }
        (Some(i), _) => {
            let a = &mut s.accounts[i];
            a.access_token = new.access_token;
            a.refresh_token = new.refresh_token;
            a.expiry_date = new.expiry_date;
            a.token_type = new.token_type;
            a.refresh_failed_at = None;
            if new.resource_url.is_some() {
                a.resource_url = new.resource_url;
            }
            if !new.email.is_empty() {
                a.email = new.email;
            }
            if a.status == Status::Revoked {
                a.status = Status::Active;
                a.status_reason = None;
                a.status_changed_at = Some(now);
            }
            i
        }
        (None, Slot::Replace(id)) => {
            let i = s.find(id)?;
            let old = &s.accounts[i];
            let mut new = new;
            new.id = old.id.clone();
            new.is_primary = old.is_primary;
            // The slot keeps its name (a revoked account signed in again, typically);
            // `--label` gives another.
            new.label = old.label.clone();
            s.accounts[i] = new;
            i
        }
        (None, Slot::Add) => s.add(new)?,
    };
    Ok(i)
}

/// A full pool: on a terminal, ask which account to replace (or start fresh); else exit 2.
fn ask_when_full(pool: &Store) -> Result<Slot> {
    use std::io::{BufRead, IsTerminal, Write};
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return Err(pool.full_error());
    }
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "qwen-cred: the pool is full ({}).\nType the id of an account to replace, 'fresh' to start over with only the new account, or Enter to cancel: ",
        pool.summary()
    );
    let _ = err.flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Error::Login(format!("cannot read the answer: {e}")))?;
    match line.trim() {
        "" => Err(Error::Login("login cancelled".into())),
        "fresh" => Ok(Slot::Fresh),
        id => {
            pool.find(id)?;
            Ok(Slot::Replace(id.to_string()))
        }
    }
}

/// Opens the URL with `$BROWSER`, else the platform opener. Never fails the login: without a
/// browser the user opens the URL printed above.
fn open_browser(cfg: &Config, url: &str) {
    use std::process::{Command, Stdio};
    let opener = match &cfg.browser {
        Some(b) => b.clone(),
        None if !cfg.has_display => {
            crate::msg::debug("no display: not opening a browser");
            return;
        }
        None if cfg!(target_os = "macos") => "open".into(),
        None => "xdg-open".into(),
    };
    let started = Command::new(&opener)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Err(e) = started {
        crate::msg::warn(&format!(
            "could not start a browser ({opener}: {e}); open the URL above yourself"
        ));
    }
}
