//! `qwen-cred refresh`: refresh tokens now, one account, all, or those due (for cron, and
//! for the detached child `token` starts).

use super::keys::Checked;
use crate::cli::Refresh;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::msg::{rfc3339, warn};
use crate::refresh::{refresh_account, Refreshed};
use crate::rotation;
use crate::store::{self, Account, Status};
use serde_json::{json, Value};

pub fn run(cfg: &Config, args: &Refresh) -> Result<()> {
    if [args.account.is_some(), args.all, args.due]
        .iter()
        .filter(|&&b| b)
        .count()
        > 1
    {
        return Err(Error::Usage(
            "give one of --account ID, --all, --due".into(),
        ));
    }
    let policy = cfg.rotation_policy();
    let now = crate::store::now_ms();
    // A snapshot is enough to choose; each refresh re-reads under its locks.
    let s = store::load(&cfg.store_path())?;
    let targets: Vec<Account> = if let Some(id) = &args.account {
        vec![s.accounts[s.find(id)?].clone()]
    } else if args.all || args.due {
        s.accounts
            .iter()
            .filter(|a| {
                a.status == Status::Active && (args.all || rotation::is_due(a, now, &policy))
            })
            .cloned()
            .collect()
    } else {
        match s.current_account_id.as_deref().map(|c| s.find_id(c)) {
            Some(Ok(i)) => vec![s.accounts[i].clone()],
            _ => return Err(Error::no_account(&[])),
        }
    };
    let settings = cfg.refresh_settings();
    let (mut failed, mut revoked) = (0, 0);
    let mut results: Vec<Value> = Vec::new();
    for a in &targets {
        let name = format!("account {} ({})", a.id, a.name());
        // What happened, the token's expiry now, and the message (also on stderr).
        let (result, expiry, message): (&str, Option<i64>, String) = if a.status == Status::Revoked
        {
            revoked += 1;
            (
                "revoked",
                None,
                format!("revoked; run {}", a.relogin_hint()),
            )
        } else if a.is_key() {
            // A key has nothing to refresh: it is checked with the server instead, so that a
            // wrapper that got a 401 can learn whether the key is dead (exit 3, revoked).
            match super::keys::check_account(cfg, a)? {
                Checked::Accepted(note) => (
                    "accepted",
                    None,
                    format!(
                        "the key is accepted{}",
                        note.map(|n| format!(" ({n})")).unwrap_or_default()
                    ),
                ),
                Checked::Revoked => {
                    revoked += 1;
                    ("revoked", None, "revoked by the server".into())
                }
                Checked::Gone => (
                    "removed",
                    None,
                    "removed or given another key meanwhile; skipped".into(),
                ),
                Checked::Failed(why) => {
                    failed += 1;
                    (
                        "failed",
                        None,
                        format!("the key could not be checked: {why}"),
                    )
                }
            }
        } else if !args.force && !rotation::is_due(a, now, &policy) {
            (
                "not_due",
                Some(a.expiry_date),
                format!(
                    "not due, valid until {}; --force refreshes anyway",
                    rfc3339(a.expiry_date)
                ),
            )
        } else {
            let needed = |cur: &Account| {
                args.force || rotation::is_due(cur, crate::store::now_ms(), &policy)
            };
            match refresh_account(
                &settings,
                &a.id,
                &a.access_token,
                &needed,
                cfg.lock_timeout(),
            )? {
                Refreshed::Fresh(a) => (
                    "refreshed",
                    Some(a.expiry_date),
                    format!("valid until {}", rfc3339(a.expiry_date)),
                ),
                Refreshed::Revoked => {
                    revoked += 1;
                    ("revoked", None, "revoked by the server".into())
                }
                // Not a failure: the user removed it while we were at it.
                Refreshed::Gone => ("removed", None, "removed meanwhile; skipped".into()),
                Refreshed::Busy(why) => {
                    failed += 1;
                    ("busy", None, format!("not refreshed: {why}"))
                }
                Refreshed::Failed(why) => {
                    failed += 1;
                    ("failed", None, format!("refresh failed: {why}"))
                }
            }
        };
        // refresh.rs has said it on stderr when the server revoked it.
        if !matches!(result, "revoked") || a.status == Status::Revoked {
            warn(&format!("{name}: {message}"));
        }
        results.push(json!({
            "id": a.id,
            "name": a.name(),
            "result": result,
            "expires_at": expiry.map(rfc3339),
            "message": message,
        }));
    }
    if args.json {
        super::config::print_json(&json!({ "results": results }))?;
    }
    match (failed, revoked) {
        (0, 0) => Ok(()),
        (0, n) => Err(Error::NoAccount(format!(
            "{n} account(s) revoked; run qwen-cred login (a key account: qwen-cred add-key --replace ID)"
        ))),
        (n, _) => Err(Error::Server(format!(
            "{n} of {} refreshes or key checks failed; retry later",
            targets.len()
        ))),
    }
}
