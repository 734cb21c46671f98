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
    for a in &targets {
        let name = format!("account {} ({})", a.id, a.label());
        if a.status == Status::Revoked {
            warn(&format!("{name}: revoked; run {}", a.relogin_hint()));
            revoked += 1;
            continue;
        }
        // A key has nothing to refresh: it is checked with the server instead, so that a
        // wrapper that got a 401 can learn whether the key is dead (exit 3, revoked).
        if a.is_key() {
            match super::keys::check_account(cfg, a)? {
                Checked::Accepted(note) => warn(&format!(
                    "{name}: the key is accepted{}",
                    note.map(|n| format!(" ({n})")).unwrap_or_default()
                )),
                Checked::Revoked => revoked += 1,
                Checked::Gone => warn(&format!(
                    "{name}: removed or given another key meanwhile; skipped"
                )),
                Checked::Failed(why) => {
                    warn(&format!("{name}: the key could not be checked: {why}"));
                    failed += 1;
                }
            }
            continue;
        }
        if !args.force && !rotation::is_due(a, now, &policy) {
            warn(&format!(
                "{name}: not due, valid until {}; --force refreshes anyway",
                rfc3339(a.expiry_date)
            ));
            continue;
        }
        let needed =
            |cur: &Account| args.force || rotation::is_due(cur, crate::store::now_ms(), &policy);
        match refresh_account(
            &settings,
            &a.id,
            &a.access_token,
            &needed,
            cfg.lock_timeout(),
        )? {
            Refreshed::Fresh(a) => warn(&format!("{name}: valid until {}", rfc3339(a.expiry_date))),
            Refreshed::Revoked => revoked += 1,
            // Not a failure: the user removed it while we were at it.
            Refreshed::Gone => warn(&format!("{name}: removed meanwhile; skipped")),
            Refreshed::Busy(why) => {
                warn(&format!("{name}: not refreshed: {why}"));
                failed += 1;
            }
            Refreshed::Failed(why) => {
                warn(&format!("{name}: refresh failed: {why}"));
                failed += 1;
            }
        }
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
