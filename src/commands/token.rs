//! `qwen-cred token`: pick an account (rotation.md), refresh it if needed, record the use and
//! print its token. Also the wait-for-reset rule that `report-429` shares.

use crate::cli::{Format, Token};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::msg::rfc3339;
use crate::refresh::{refresh_account, server_error, Refreshed};
use crate::rotation::{self, Need, Pick, Policy};
use crate::secret::Secret;
use crate::store::{Account, Status, Store};

/// What one pass under the store lock decided.
enum Step {
    Serve(Box<Account>, bool),
    Refresh {
        id: String,
        need: Need,
        seen: Secret,
        /// The Qwen CLI holds its lock on this account's shared token now.
        cli_busy: bool,
    },
    Wait(i64),
    Import,
    /// Nothing can serve: the revoked and the disabled accounts.
    Unavailable(Vec<String>, Vec<String>),
}

pub fn run(cfg: &Config, args: &Token) -> Result<()> {
    let policy = cfg.rotation_policy();
    let mut skip: Vec<String> = Vec::new();
    // Why each skipped account could not be refreshed, and whether only a lock was in the way.
    let mut failures: Vec<(String, bool)> = Vec::new();
    let mut imported = false;
    // Expired accounts passed over while the Qwen CLI refreshes their shared token: tried
    // again, waiting for that lock, only when no other account can serve.
    let mut deferred: Vec<String> = Vec::new();
    let mut patient = false;
    loop {
        let now = crate::store::now_ms();
        let (step, saved) = crate::store::update_lenient(&cfg.pool, cfg.lock_timeout(), |s| {
            decide(cfg, s, args, &policy, now, &skip, imported)
        })?;
        if let Err(e) = saved {
            // Only serving writes (the use, the rotation): a token is worth more than a count.
            let Step::Serve(a, _) = &step else {
                return Err(e);
            };
            crate::msg::warn(&format!(
                "account {}: serving without recording the use ({e})",
                a.id
            ));
        }
        match step {
            Step::Serve(a, spawn) => return serve(cfg, args, &a, spawn),
            Step::Import => {
                imported = true;
                let file = cfg.qwen_cli_file();
                let what = super::import_file(cfg, &file, None)?;
                crate::msg::warn(&format!("the pool was empty: {}", what.message));
            }
            Step::Wait(_) | Step::Unavailable(..) if !deferred.is_empty() => {
                skip.retain(|id| !deferred.contains(id));
                deferred.clear();
                patient = true;
            }
            Step::Wait(until) => super::wait_for_reset(cfg, until, args.no_wait)?,
            Step::Unavailable(revoked, disabled) => {
                if failures.is_empty() {
                    return Err(Error::none_usable(&revoked, &disabled));
                }
                let what = format!(
                    "no account could be refreshed ({})",
                    failures
                        .iter()
                        .map(|(w, _)| w.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                );
                return Err(if failures.iter().all(|(_, busy)| *busy) {
                    Error::File(what)
                } else {
                    Error::Server(format!("{what}; retry later"))
                });
            }
            // files.md: never spend the shared token while the Qwen CLI's lock is live; an
            // expired token moves to another account rather than wait for that lock.
            Step::Refresh {
                id,
                need: Need::Expired,
                cli_busy: true,
                ..
            } if !patient && args.account.is_none() => {
                crate::msg::debug(&format!(
                    "account {id}: the Qwen CLI is refreshing its token; trying the next account"
                ));
                deferred.push(id.clone());
                skip.push(id);
            }
            Step::Refresh { id, need, seen, .. } => {
                let still = |a: &Account| {
                    rotation::needs_refresh(a, crate::store::now_ms(), args.min_valid, &policy)
                        .is_some()
                };
                // A due token is still valid: if another process is refreshing it, serve it
                // rather than wait; an expired one waits up to lock_timeout_seconds.
                let wait = match need {
                    Need::Due => std::time::Duration::ZERO,
                    Need::Expired => cfg.lock_timeout(),
                };
                let (why, busy) =
                    match refresh_account(&cfg.refresh_settings(), &id, &seen, &still, wait)? {
                        Refreshed::Fresh(a) => {
                            if serve_after_refresh(cfg, args, &policy, &id, Some(&a))? {
                                return Ok(());
                            }
                            skip.push(id);
                            continue;
                        }
                        Refreshed::Revoked | Refreshed::Gone if args.account.is_some() => {
                            return Err(Error::no_account(&[id]));
                        }
                        // Marked revoked, or removed meanwhile: never tried again in this call.
                        Refreshed::Revoked | Refreshed::Gone => {
                            skip.push(id);
                            continue;
                        }
                        Refreshed::Busy(why) => (why, true),
                        Refreshed::Failed(why) => (why, false),
                    };
                // Not refreshed now. A due token is still valid: serve it (quietly when
                // another process is busy refreshing it).
                if matches!(need, Need::Due) {
                    if !busy {
                        crate::msg::warn(&format!(
                            "account {id}: proactive refresh failed ({why}); its token is still valid, will try again later"
                        ));
                    }
                    if serve_after_refresh(cfg, args, &policy, &id, None)? {
                        return Ok(());
                    }
                    skip.push(id);
                    continue;
                }
                // A lock not acquired in time is a local matter (exit 6); a server that
                // failed is exit 5.
                if args.account.is_some() {
                    return Err(if busy {
                        Error::File(why)
                    } else {
                        server_error(&id, &why)
                    });
                }
                crate::msg::debug(&format!(
                    "account {id}: not refreshed ({why}); trying the next account"
                ));
                failures.push((format!("account {id}: {why}"), busy));
                skip.push(id);
            }
        }
    }
}

fn decide(
    cfg: &Config,
    s: &mut Store,
    args: &Token,
    policy: &Policy,
    now: i64,
    skip: &[String],
    imported: bool,
) -> Result<Step> {
    if let Some(want) = &args.account {
        let i = s.find(want)?;
        let a = &s.accounts[i];
        if a.status == Status::Revoked {
            return Ok(Step::Unavailable(vec![a.id.clone()], vec![]));
        }
        if a.disabled {
            crate::msg::warn(&format!(
                "account {} is disabled; using it because --account asked for it (`qwen-cred enable {}` puts it back in rotation)",
                a.id, a.id
            ));
        }
        if let Some(t) = a.rate_limit_resets_at.filter(|&t| t > now) {
            crate::msg::warn(&format!(
                "account {} is cooling down until {}; using it because --account asked for it",
                a.id,
                rfc3339(t)
            ));
        }
        return Ok(
            match rotation::needs_refresh(a, now, args.min_valid, policy) {
                Some(need) => Step::Refresh {
                    id: a.id.clone(),
                    need,
                    seen: a.access_token.clone(),
                    cli_busy: false,
                },
                None => Step::Serve(Box::new(rotation::record_pinned(s, i, policy, now)), false),
            },
        );
    }
    match rotation::pick(s, policy, now, skip) {
        Pick::Account(i) => {
            let a = &s.accounts[i];
            if let Some(need) = rotation::needs_refresh(a, now, args.min_valid, policy) {
                return Ok(Step::Refresh {
                    id: a.id.clone(),
                    need,
                    seen: a.access_token.clone(),
                    cli_busy: need == Need::Expired
                        && crate::qwen_cli::cli_is_refreshing(
                            cfg.synced_qwen_cli_file().as_deref(),
                            a,
                        ),
                });
            }
            rotation::record_use(s, i, policy, now);
            let interval_ms = cfg.settings.proactive_refresh_check_interval_seconds as i64 * 1000;
            let spawn = rotation::background_refresh_due(s, i, policy, now, interval_ms);
            Ok(Step::Serve(Box::new(s.accounts[i].clone()), spawn))
        }
        Pick::AllCooling { soonest_ms } => Ok(Step::Wait(soonest_ms)),
        Pick::Unavailable { revoked, disabled } => {
            // The Qwen CLI's login is imported into the default pool only (config.rs,
            // synced_qwen_cli_file).
            let file = cfg.qwen_cli_file();
            if s.accounts.is_empty() && !imported && cfg.pool.is_default() && file.is_file() {
                // A login `remove` took out stays out until the Qwen CLI holds another one.
                if crate::qwen_cli::was_removed(&file, s.removed_qwen_cli_fp.as_deref()) {
                    return Err(Error::NoAccount(format!(
                        "no account can serve: the pool is empty (the Qwen CLI's login in {} was removed; qwen-cred import adds it back); run qwen-cred login",
                        file.display()
                    )));
                }
                return Ok(Step::Import);
            }
            Ok(Step::Unavailable(revoked, disabled))
        }
    }
}

/// After a refresh (`fresh`: ours or adopted; `None`: none happened and the stored token is
/// still valid), record the use of account `id` and serve it. `false` when the account was
/// removed or revoked meanwhile: the caller moves on.
fn serve_after_refresh(
    cfg: &Config,
    args: &Token,
    policy: &Policy,
    id: &str,
    fresh: Option<&Account>,
) -> Result<bool> {
    let now = crate::store::now_ms();
    let recorded = crate::store::update(&cfg.pool, cfg.lock_timeout(), |s| {
        let Some(i) = s.accounts.iter().position(|a| a.id == id) else {
            return Ok(None);
        };
        if s.accounts[i].status == Status::Revoked {
            return Ok(None);
        }
        Ok(Some(if args.account.is_some() {
            rotation::record_pinned(s, i, policy, now)
        } else {
            rotation::record_use(s, i, policy, now);
            s.accounts[i].clone()
        }))
    });
    // The refresh's own tokens are served: should the store have refused them, they are in
    // the journal only, and the stored ones are spent.
    let a = match (recorded, fresh) {
        (Ok(Some(_)), Some(f)) => f.clone(),
        (Ok(Some(stored)), None) => stored,
        (Ok(None), _) => return Ok(false),
        (Err(e), Some(f)) => {
            crate::msg::warn(&format!(
                "account {id}: serving its new token without recording the use ({e})"
            ));
            f.clone()
        }
        (Err(e), None) => return Err(e),
    };
    let left = (a.expiry_date - now) / 1000;
    if args.min_valid > 0 && left < args.min_valid as i64 {
        crate::msg::warn(&format!(
            "account {id}: even a fresh token is valid for only {left} s, less than --min-valid {}",
            args.min_valid
        ));
    }
    serve(cfg, args, &a, false)?;
    Ok(true)
}

fn serve(cfg: &Config, args: &Token, a: &Account, spawn: bool) -> Result<()> {
    crate::msg::debug(&format!("serving account {} ({})", a.id, a.name()));
    let text = format_token(cfg, a, args.format);
    crate::msg::out(&text)?;
    if spawn {
        spawn_refresh_due(cfg.pool.arg());
    }
    Ok(())
}

/// The request headers an integration should send: `Authorization`, then for an OAuth
/// account the official client's headers (qwen-oauth.md, The API), for a key account the
/// headers it was added with (none by default: the client making the request says who it
/// is, and no DashScope OAuth header belongs on a key).
pub fn headers(a: &Account) -> Vec<(String, String)> {
    let mut h = vec![(
        "Authorization".to_string(),
        format!("Bearer {}", a.access_token.expose()),
    )];
    if a.is_key() {
        h.extend(a.headers.iter().cloned());
    } else {
        h.extend(
            crate::oauth::api_headers(env!("CARGO_PKG_VERSION"))
                .into_iter()
                .map(|(k, v)| (k.to_string(), v)),
        );
    }
    h
}

fn format_token(cfg: &Config, a: &Account, format: Format) -> String {
    let base_url = match (&a.base_url, a.is_key()) {
        (Some(u), true) => u.clone(),
        _ => crate::oauth::api_base_url(
            a.resource_url.as_deref(),
            &cfg.settings.default_resource_url,
        ),
    };
    let token = a.access_token.expose();
    match format {
        Format::Raw => format!("{token}\n"),
        Format::Json => {
            let hdrs: serde_json::Map<String, serde_json::Value> = headers(a)
                .into_iter()
                .map(|(k, v)| (k, v.into()))
                .collect();
            // A key never expires: no expiry to give.
            let (expires_at, expiry_date) = match a.is_key() {
                true => (serde_json::Value::Null, serde_json::Value::Null),
                false => (rfc3339(a.expiry_date).into(), a.expiry_date.into()),
            };
            let mut v = serde_json::json!({
                "access_token": token,
                "token_type": "Bearer",
                "expires_at": expires_at,
                "expiry_date": expiry_date,
                "account_id": a.id,
                "email": a.email,
                "label": a.label,
                "name": a.name(),
                "base_url": base_url,
                "headers": hdrs,
            });
            if a.is_key() {
                v["kind"] = a.kind.as_str().into();
                v["label"] = a.label.clone().into();
            }
            format!("{v}\n")
        }
        // The pool too: an account id means something only in its pool, and report-429
        // takes QWEN_CRED_ACCOUNT_ID only for the pool QWEN_CRED_POOL names.
        // QWEN_CRED_HEADERS: the request headers besides Authorization, one per line, for a
        // wrapper that sends the key itself (scripts/qwen-curl).
        Format::Env => format!(
            "export OPENAI_API_KEY={}\nexport OPENAI_BASE_URL={}\nexport QWEN_CRED_ACCOUNT_ID={}\nexport QWEN_CRED_POOL={}\nexport QWEN_CRED_HEADERS={}\n",
            sh_quote(token),
            sh_quote(&base_url),
            sh_quote(&a.id),
            sh_quote(cfg.pool.arg()),
            sh_quote(
                &headers(a)
                    .iter()
                    .skip(1)
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        ),
        Format::Header => headers(a)
            .iter()
            .map(|(k, v)| format!("{k}: {v}\n"))
            .collect(),
    }
}

/// POSIX single quotes: `'` becomes `'\''`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Starts `qwen-cred refresh --due --pool POOL` detached (like `git gc --auto`): its own
/// process group, no stdio, never waited for, so `$(qwen-cred token)` returns at once. Best
/// effort.
fn spawn_refresh_due(pool: &str) {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let child = Command::new(exe)
        .args(["refresh", "--due", "--pool", pool])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    match child {
        Ok(c) => crate::msg::debug(&format!(
            "started background refresh --due (pid {})",
            c.id()
        )),
        Err(e) => crate::msg::debug(&format!("cannot start background refresh: {e}")),
    }
}
