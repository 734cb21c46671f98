//! Single-flight refresh of one account across every process (files.md, Locking): a
//! per-account refresh lock is held across "re-read, HTTP, persist", the store lock only for
//! the read and the write, so a slow refresh of one account never blocks callers of another,
//! and a waiter adopts the token the winner stored instead of spending the refresh token
//! again (RFC 6749 §10.4: a rotated refresh token is single-use). An account linked to the
//! Qwen CLI's file is also kept in step with that file, under that CLI's lock (qwen_cli.rs).

use crate::commands::transact;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::oauth::{self, RefreshError};
use crate::qwen_cli::{Busy, Creds, FileSync};
use crate::secret::Secret;
use crate::store::{Account, Status};
use std::time::Duration;

/// What became of a refresh.
pub enum Refreshed {
    /// The account now holds a fresh token (ours, one another process stored meanwhile, or
    /// the Qwen CLI's) valid until this time.
    Fresh { expiry_date: i64 },
    /// The server said the refresh token is dead; the account is now revoked.
    Revoked,
    /// Another process (qwen-cred or the Qwen CLI) still holds a lock this refresh needs,
    /// after the wait; says which. Nothing was sent.
    Busy(String),
    /// The server could not be reached or failed (now, or for the process whose refresh this
    /// one waited for); the tokens were not changed.
    Failed(String),
}

/// Refreshes account `id` unless, once the refresh lock is ours, it no longer needs it:
/// `still_needed` sees the account as stored now. `seen_access` is the access token the caller
/// decided on; a different one means another process refreshed meanwhile, so it is adopted.
/// `wait` bounds the wait for another process's refresh of the same account: a caller that
/// still holds a valid token waits not at all.
pub fn refresh_account(
    cfg: &Config,
    id: &str,
    seen_access: &Secret,
    still_needed: &dyn Fn(&Account) -> bool,
    wait: Duration,
) -> Result<Refreshed> {
    let asked_at = crate::now_ms();
    let Some(_flight) = crate::lock::refresh(&cfg.dir, id, wait)? else {
        return Ok(Refreshed::Busy(format!(
            "another qwen-cred has been refreshing account {id} for {} s (lock_timeout_seconds)",
            wait.as_secs()
        )));
    };
    let current = read_account(cfg, id)?;
    if current.status == Status::Revoked {
        return Ok(Refreshed::Revoked);
    }
    if current.access_token != *seen_access || !still_needed(&current) {
        crate::msg::debug(&format!(
            "account {id}: adopting the token another process refreshed"
        ));
        return Ok(Refreshed::Fresh {
            expiry_date: current.expiry_date,
        });
    }
    // The refresh we waited for failed: the server is not answering, asking again now only
    // piles on (the next call tries again). Only a failure since we asked counts, so a
    // stamp from a clock that later stepped back cannot stop refreshes for long.
    if current
        .refresh_failed_at
        .is_some_and(|t| (asked_at..=crate::now_ms()).contains(&t))
    {
        return Ok(Refreshed::Failed(
            "a refresh by another process just failed".into(),
        ));
    }
    // An account imported from the Qwen CLI shares its refresh token with it: hold that CLI's
    // lock (after ours, before the store's) across "read the file, adopt or refresh, write
    // back", so neither side spends a token the other has rotated (files.md).
    let sync = if cfg.bool("sync_qwen_cli") {
        match FileSync::begin(cfg, &current, wait)? {
            Ok(sync) => sync,
            Err(Busy(why)) => return Ok(Refreshed::Busy(why)),
        }
    } else {
        None
    };
    let adopted = match &sync {
        Some(s) => s.adopt(cfg, id)?,
        None => None,
    };
    // Tokens adopted from the file are refreshed in turn if they still need it.
    let current = match adopted {
        Some(a) if !still_needed(&a) => {
            return Ok(Refreshed::Fresh {
                expiry_date: a.expiry_date,
            })
        }
        Some(a) => a,
        None => current,
    };
    let deferred = crate::signals::Deferred::new();
    let result = refresh_and_store(cfg, id, &current, sync.as_ref(), &deferred);
    // The Qwen CLI's lock goes first: a signal held back meanwhile ends the process as soon
    // as `deferred` drops, and must not leave that lock behind.
    drop(sync);
    drop(deferred);
    result
}

/// The HTTP refresh and storing its outcome, with signals held back by the caller.
fn refresh_and_store(
    cfg: &Config,
    id: &str,
    current: &Account,
    sync: Option<&FileSync>,
    deferred: &crate::signals::Deferred,
) -> Result<Refreshed> {
    let used = current.refresh_token.clone();
    let client = oauth::Client::new(&cfg.oauth_settings())?;
    crate::msg::debug(&format!(
        "account {id}: refreshing at {}",
        cfg.str("oauth_base_url")
    ));
    // Holding the Qwen CLI's lock, make one attempt only: its retries would keep that CLI
    // from its own token for minutes.
    let attempts = match sync {
        Some(_) => 1,
        None => cfg.int("token_refresh_retry_attempts").max(1),
    };
    match with_retries(cfg, attempts, deferred, || client.refresh(&used)) {
        Ok(tok) => {
            let now = crate::now_ms();
            let new = Creds {
                expiry_date: tok.expiry_date(now),
                access_token: tok.access_token,
                // qwen-oauth.md: keep the old refresh token and resource_url when omitted.
                refresh_token: tok.refresh_token.unwrap_or_else(|| used.clone()),
                token_type: tok.token_type,
                resource_url: tok.resource_url.or(current.resource_url.clone()),
            };
            // The file first: should the store write fail, the next refresh adopts from it.
            if let Some(s) = sync {
                s.write_back(&used, &new);
            }
            transact(cfg, |s| {
                let i = s.find_id(id)?;
                let a = &mut s.accounts[i];
                // A login or import may have replaced the tokens meanwhile; theirs win.
                if a.refresh_token == used {
                    new.apply_to(a);
                }
                Ok(Refreshed::Fresh {
                    expiry_date: a.expiry_date,
                })
            })
        }
        Err(RefreshError::Dead(reason)) => {
            // files.md: a linked account re-reads the Qwen CLI's file once first; a different
            // refresh token there is tried instead (the dead one is never sent again).
            if let Some(a) = sync
                .map(|s| s.adopt_other(cfg, id, &used))
                .transpose()?
                .flatten()
            {
                return refresh_and_store(cfg, id, &a, sync, deferred);
            }
            let now = crate::now_ms();
            transact(cfg, |s| {
                let i = s.find_id(id)?;
                let a = &mut s.accounts[i];
                if a.refresh_token == used {
                    a.status = Status::Revoked;
                    a.status_reason = Some(reason.clone());
                    a.status_changed_at = Some(now);
                    crate::msg::warn(&format!(
                        "account {} ({}) was revoked by the server ({reason}); run {} to sign it in again",
                        a.id,
                        a.label(),
                        a.relogin_hint()
                    ));
                }
                Ok(())
            })?;
            Ok(Refreshed::Revoked)
        }
        Err(RefreshError::Transient(why)) => {
            // Recorded so that callers queued behind this refresh do not repeat it at once.
            let now = crate::now_ms();
            transact(cfg, |s| {
                let i = s.find_id(id)?;
                if s.accounts[i].refresh_token == used {
                    s.accounts[i].refresh_failed_at = Some(now);
                }
                Ok(())
            })?;
            Ok(Refreshed::Failed(why))
        }
    }
}

fn read_account(cfg: &Config, id: &str) -> Result<Account> {
    let s = crate::store::load(&cfg.store_path())?;
    Ok(s.accounts[s.find_id(id)?].clone())
}

/// Makes `attempts` attempts at most while failures are transient, the delay doubling from
/// `token_refresh_retry_delay_ms`. A dead token is never retried.
fn with_retries(
    cfg: &Config,
    attempts: u64,
    deferred: &crate::signals::Deferred,
    mut attempt: impl FnMut() -> std::result::Result<oauth::TokenResponse, RefreshError>,
) -> std::result::Result<oauth::TokenResponse, RefreshError> {
    let mut delay = Duration::from_millis(cfg.int("token_refresh_retry_delay_ms"));
    let mut n = 1;
    loop {
        match attempt() {
            Err(RefreshError::Transient(why)) if n < attempts => {
                crate::msg::debug(&format!("refresh failed ({why}); retrying in {delay:?}"));
                deferred.unblocked(|| std::thread::sleep(delay));
                delay *= 2;
                n += 1;
            }
            other => return other,
        }
    }
}

/// An error for a refresh that left no usable token (exit 5).
pub fn server_error(id: &str, why: &str) -> Error {
    Error::Server(format!("cannot refresh account {id}: {why}; retry later"))
}
