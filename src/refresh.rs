//! Single-flight refresh of one account across every process (files.md, Locking): a
//! per-account refresh lock is held across "re-read, HTTP, persist", the store lock only for
//! the read and the write, so a slow refresh of one account never blocks callers of another,
//! and a waiter adopts the token the winner stored instead of spending the refresh token
//! again (RFC 6749 §10.4: a rotated refresh token is single-use). An account linked to the
//! Qwen CLI's file is also kept in step with that file, under that CLI's lock (qwen_cli.rs).

use crate::error::{Error, Result};
use crate::journal::{self, Journal};
use crate::oauth::{self, RefreshError};
use crate::qwen_cli::{Busy, Creds, FileSync};
use crate::secret::Secret;
use crate::store::{Account, Status};
use std::path::PathBuf;
use std::time::Duration;

/// What a refresh needs to know; `Config::refresh_settings` fills it in.
pub struct Settings {
    /// The pool: its store, store lock, refresh locks and journals.
    pub pool: crate::pool::Pool,
    pub lock_timeout: Duration,
    /// The Qwen CLI file a linked account is kept in step with; `None` without
    /// `sync_qwen_cli`.
    pub qwen_cli_file: Option<PathBuf>,
    pub oauth: oauth::Settings,
    /// Attempts for a transient failure, and the first delay between them (doubling).
    pub retry_attempts: u64,
    pub retry_delay: Duration,
}

/// What became of a refresh.
pub enum Refreshed {
    /// The account, holding a fresh token (ours, one another process stored meanwhile, or
    /// the Qwen CLI's). Should the store have refused the write, this is the only copy of
    /// the access token, and the refresh token waits in the journal.
    Fresh(Box<Account>),
    /// The server said the refresh token is dead; the account is now revoked.
    Revoked,
    /// The account was removed from the store meanwhile.
    Gone,
    /// Another process (qwen-cred or the Qwen CLI) still holds a lock this refresh needs,
    /// after the wait, or the answer could not have been kept (the journal could not be
    /// reserved); says which. Nothing was sent.
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
    set: &Settings,
    id: &str,
    seen_access: &Secret,
    still_needed: &dyn Fn(&Account) -> bool,
    wait: Duration,
) -> Result<Refreshed> {
    let asked_at = crate::store::now_ms();
    let Some(_flight) = crate::lock::refresh(&set.pool, id, wait)? else {
        return Ok(Refreshed::Busy(format!(
            "another qwen-cred has been refreshing account {id} for {} s (lock_timeout_seconds)",
            wait.as_secs()
        )));
    };
    // Before anything else: tokens an earlier refresh got but could not store.
    if let Err(e) = fold_journal(set, id) {
        return Ok(Refreshed::Busy(format!(
            "the tokens of an earlier refresh wait in {} and cannot be stored yet ({e})",
            journal::path(&set.pool, id).display()
        )));
    }
    let Some(current) = read_account(set, id)? else {
        return Ok(Refreshed::Gone);
    };
    if current.status == Status::Revoked {
        return Ok(Refreshed::Revoked);
    }
    // A key account has nothing to refresh (rotation never asks; this is the backstop): its
    // key is served as it is.
    if current.is_key() {
        return Ok(Refreshed::Fresh(Box::new(current)));
    }
    if current.access_token != *seen_access || !still_needed(&current) {
        crate::msg::debug(&format!(
            "account {id}: adopting the token another process refreshed"
        ));
        return Ok(Refreshed::Fresh(Box::new(current)));
    }
    // The refresh we waited for failed: the server is not answering, asking again now only
    // piles on (the next call tries again). Only a failure since we asked counts, so a
    // stamp from a clock that later stepped back cannot stop refreshes for long.
    if current
        .refresh_failed_at
        .is_some_and(|t| (asked_at..=crate::store::now_ms()).contains(&t))
    {
        return Ok(Refreshed::Failed(
            "a refresh by another process just failed".into(),
        ));
    }
    // An account imported from the Qwen CLI shares its refresh token with it: hold that CLI's
    // lock (after ours, before the store's) across "read the file, adopt or refresh, write
    // back", so neither side spends a token the other has rotated (files.md).
    let sync = if let Some(file) = &set.qwen_cli_file {
        match FileSync::begin(file, &current, wait)? {
            Ok(sync) => sync,
            Err(busy) => {
                if let Busy::Unwritable { dir, error } = &busy {
                    report_unwritable(set, dir, error);
                }
                return Ok(Refreshed::Busy(busy.why()));
            }
        }
    } else {
        None
    };
    let adopted = match &sync {
        Some(sync) => match sync.read() {
            Some(creds) => update_account(set, id, |a| sync.adopt(&creds, a))?,
            None => None,
        },
        None => None,
    };
    // Tokens adopted from the file are refreshed in turn if they still need it.
    let current = match adopted {
        Some(a) if !still_needed(&a) => return Ok(Refreshed::Fresh(Box::new(a))),
        Some(a) => a,
        None => current,
    };
    let deferred = crate::signals::Deferred::new();
    let result = refresh_and_store(set, id, &current, sync.as_ref(), &deferred);
    // The Qwen CLI's lock goes first: a signal held back meanwhile ends the process as soon
    // as `deferred` drops, and must not leave that lock behind.
    drop(sync);
    drop(deferred);
    result
}

/// The HTTP refresh and storing its outcome, with signals held back by the caller.
fn refresh_and_store(
    set: &Settings,
    id: &str,
    current: &Account,
    sync: Option<&FileSync>,
    deferred: &crate::signals::Deferred,
) -> Result<Refreshed> {
    let used = current.refresh_token.clone();
    let client = oauth::Client::new(&set.oauth)?;
    // Once the request is sent the old refresh token may be spent: without room to keep the
    // answer, do not send it (the account stays alive; the caller serves what it can).
    let journal = match Journal::reserve(&set.pool, id) {
        Ok(j) => j,
        Err(e) => {
            crate::msg::warn(&format!("account {id}: not refreshed: {e}"));
            return Ok(Refreshed::Busy(e.to_string()));
        }
    };
    crate::msg::debug(&format!(
        "account {id}: refreshing at {}",
        set.oauth.oauth_base_url
    ));
    // Holding the Qwen CLI's lock, make one attempt only: its retries would keep that CLI
    // from its own token for minutes.
    let attempts = match sync {
        Some(_) => 1,
        None => set.retry_attempts.max(1),
    };
    // Server text may echo a token this call knows.
    let redact = |text: &str| crate::secret::redact(text, &[&used, &current.access_token]);
    match with_retries(set, attempts, deferred, || client.refresh(&used)) {
        Ok(tok) => store_answer(set, id, current, &used, tok, sync, journal),
        Err(RefreshError::Dead(reason)) => {
            journal.discard();
            // files.md: a linked account re-reads the Qwen CLI's file once first; a different
            // refresh token there is tried instead (the dead one is never sent again).
            if let Some((sync, creds)) = sync.and_then(|s| Some((s, s.read()?))) {
                if let Some(a) = update_account(set, id, |a| sync.adopt_other(&creds, a, &used))? {
                    return refresh_and_store(set, id, &a, Some(sync), deferred);
                }
            }
            let reason = redact(&reason);
            let now = crate::store::now_ms();
            let found = crate::store::update(&set.pool, set.lock_timeout, |s| {
                let Some(a) = s.accounts.iter_mut().find(|a| a.id == id) else {
                    return Ok(false);
                };
                if a.refresh_token == used {
                    a.revoke(&reason, now);
                }
                Ok(true)
            })?;
            Ok(if found {
                Refreshed::Revoked
            } else {
                Refreshed::Gone
            })
        }
        Err(RefreshError::Transient(why)) => {
            journal.discard();
            // Recorded so that callers queued behind this refresh do not repeat it at once.
            let now = crate::store::now_ms();
            let why = redact(&why);
            crate::store::update(&set.pool, set.lock_timeout, |s| {
                if let Some(a) = s.accounts.iter_mut().find(|a| a.id == id) {
                    if a.refresh_token == used {
                        a.refresh_failed_at = Some(now);
                        a.last_error = Some(format!("refresh failed: {why}"));
                        a.last_error_at = Some(now);
                    }
                }
                Ok(())
            })?;
            Ok(Refreshed::Failed(why))
        }
    }
}

/// Keeps what a 200 carried: journal first (fsync'd), then the Qwen CLI's file, then the
/// store. Whatever fails after the journal, the tokens are kept and the access token served.
fn store_answer(
    set: &Settings,
    id: &str,
    current: &Account,
    used: &Secret,
    tok: oauth::TokenResponse,
    sync: Option<&FileSync>,
    journal: Journal,
) -> Result<Refreshed> {
    let now = crate::store::now_ms();
    let usable = tok.access_token.is_some();
    let new = Creds {
        // Without a usable access token the old one stays, expired now, so that the next
        // call refreshes again with the new refresh token (files.md, Locking).
        expiry_date: match usable {
            true => crate::store::clamp_time(tok.expiry_date(now)),
            false => current.expiry_date.min(now),
        },
        access_token: tok
            .access_token
            .unwrap_or_else(|| current.access_token.clone()),
        // qwen-oauth.md: keep the old refresh token and resource_url when omitted.
        refresh_token: tok.refresh_token.unwrap_or_else(|| used.clone()),
        token_type: tok.token_type,
        resource_url: tok.resource_url.or(current.resource_url.clone()),
    };
    let journaled = journal.record(id, used, &new);
    if let Err(e) = &journaled {
        crate::msg::warn(&format!(
            "account {id}: cannot write {} ({e}); storing the new tokens directly",
            journal.path().display()
        ));
    }
    // The file next: should the store write fail, the Qwen CLI keeps working too.
    if let Some(s) = sync {
        s.write_back(used, &new);
    }
    let stored = crate::store::update(&set.pool, set.lock_timeout, |s| {
        let Some(a) = s.accounts.iter_mut().find(|a| a.id == id) else {
            return Ok(None);
        };
        // A login or import may have replaced the tokens meanwhile; theirs win.
        if a.refresh_token == *used {
            new.apply_to(a);
            if !usable {
                a.refresh_failed_at = Some(now);
                a.last_error = Some("refresh failed: the answer had no usable access_token".into());
                a.last_error_at = Some(now);
            }
        }
        Ok(Some(a.clone()))
    });
    let account = match stored {
        Ok(Some(a)) => {
            journal.discard();
            a
        }
        Ok(None) => {
            journal.discard();
            return Ok(Refreshed::Gone);
        }
        Err(e) => {
            crate::msg::warn(&match journaled {
                Ok(()) => format!(
                    "account {id}: the new tokens could not be stored ({e}); they are kept in {} and the next call stores them",
                    journal.path().display()
                ),
                Err(_) => format!(
                    "account {id}: the new tokens could not be stored ({e}); this call still serves its access token"
                ),
            });
            let mut a = current.clone();
            new.apply_to(&mut a);
            a
        }
    };
    if !usable {
        return Ok(Refreshed::Failed(format!(
            "{} answered 200 without a usable access_token; its new refresh token is kept",
            set.oauth.oauth_base_url
        )));
    }
    Ok(Refreshed::Fresh(Box::new(account)))
}

/// Folds a journal left by an earlier refresh of account `id` into the store: its tokens
/// replace the spent refresh token it names. The caller holds the account's refresh lock.
fn fold_journal(set: &Settings, id: &str) -> Result<()> {
    let Some(entry) = journal::pending(&set.pool, id)? else {
        return Ok(());
    };
    let folded = crate::store::update(&set.pool, set.lock_timeout, |s| {
        Ok(match s.accounts.iter_mut().find(|a| a.id == id) {
            Some(a) if entry.spent(&a.refresh_token) => {
                entry.creds.apply_to(a);
                true
            }
            // Already stored, replaced by a login, or removed: nothing left to keep.
            _ => false,
        })
    })?;
    if folded {
        crate::msg::debug(&format!(
            "account {id}: stored the tokens an earlier refresh left in its journal"
        ));
    }
    // Best effort: a journal left behind is found spent next time and removed then.
    journal::remove(&set.pool, id);
    Ok(())
}

/// Lets `change` change account `id` under the store lock; the account as now stored when
/// it did (returned true), else `None` (also when the account was removed meanwhile).
fn update_account(
    set: &Settings,
    id: &str,
    change: impl FnOnce(&mut Account) -> bool,
) -> Result<Option<Account>> {
    crate::store::update(&set.pool, set.lock_timeout, |s| {
        let a = s.accounts.iter_mut().find(|a| a.id == id);
        Ok(a.and_then(|a| change(a).then(|| a.clone())))
    })
}

/// Says (at most once an hour, recorded in the store) that the Qwen CLI's directory cannot
/// hold its lock.
fn report_unwritable(set: &Settings, dir: &std::path::Path, error: &str) {
    let now = crate::store::now_ms();
    let every = crate::qwen_cli::REPORT_UNWRITABLE_AGAIN_MS;
    let due = crate::store::update(&set.pool, set.lock_timeout, |s| {
        let due = s
            .qwen_dir_unwritable_warned_at
            .is_none_or(|t| !(now - every..=now).contains(&t));
        if due {
            s.qwen_dir_unwritable_warned_at = Some(now);
        }
        Ok(due)
    })
    .unwrap_or(true);
    if due {
        crate::msg::warn(&crate::qwen_cli::unwritable_warning(dir, error));
    }
}

/// The account as stored now; `None` once removed.
fn read_account(set: &Settings, id: &str) -> Result<Option<Account>> {
    let s = crate::store::load(&crate::store::path(&set.pool))?;
    Ok(s.accounts.into_iter().find(|a| a.id == id))
}

/// Makes `attempts` attempts at most while failures are transient, the delay doubling from
/// `token_refresh_retry_delay_ms`. A dead token is never retried.
fn with_retries(
    set: &Settings,
    attempts: u64,
    deferred: &crate::signals::Deferred,
    mut attempt: impl FnMut() -> std::result::Result<oauth::TokenResponse, RefreshError>,
) -> std::result::Result<oauth::TokenResponse, RefreshError> {
    let mut delay = set.retry_delay;
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
