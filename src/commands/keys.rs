//! API-key accounts: `qwen-cred add-key`, and checking a key account's key, which is what
//! `refresh` does for one (there is nothing to refresh). The key comes from a no-echo prompt,
//! stdin or a named environment variable, never from argv (cli.rs refuses it there), and
//! leaves this process only in the `Authorization` header of the check.

use crate::apikey::{self, Verdict};
use crate::cli::AddKey;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::secret::Secret;
use crate::store::{self, Account, Status, Store};

/// Alibaba Cloud Coding Plan, international (the Qwen Code CLI's `coding-intl` endpoint).
pub const DEFAULT_BASE_URL: &str = "https://coding-intl.dashscope.aliyuncs.com/v1";
/// More than any key with its newline; more on stdin is not a key.
const MAX_INPUT: usize = 64 * 1024;
const MAX_LABEL: usize = 64;

pub fn add(cfg: &Config, args: &AddKey) -> Result<()> {
    let base = match &args.base_url {
        Some(u) => Some(
            apikey::check_base_url(u).map_err(|why| Error::Usage(format!("--base-url: {why}")))?,
        ),
        None => None,
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for h in &args.header {
        let (name, value) =
            apikey::parse_header(h).map_err(|e| Error::Usage(format!("--header: {e}")))?;
        if headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)) {
            return Err(Error::Usage(format!("--header {name:?} is given twice")));
        }
        headers.push((name, value));
    }
    let label = match args.label.as_deref().map(str::trim) {
        None => None,
        Some(l)
            if l.is_empty() || l.chars().count() > MAX_LABEL || l.contains(char::is_control) =>
        {
            return Err(Error::Usage(format!(
                "--label: expected 1 to {MAX_LABEL} characters, no control characters"
            )))
        }
        Some(l) => Some(l.to_string()),
    };
    // Before the key is asked for: what it replaces, and whether there is room for it.
    let snapshot = store::load(&cfg.store_path())?;
    let target = match &args.replace {
        Some(id) => {
            let a = &snapshot.accounts[snapshot.find(id)?];
            if !a.is_key() {
                return Err(Error::Usage(format!(
                    "account {} is an OAuth account; --replace takes a key account (an OAuth account is replaced with qwen-cred login --replace {})",
                    a.id, a.id
                )));
            }
            Some(a.clone())
        }
        None if snapshot.accounts.len() >= snapshot.max_accounts => {
            return Err(full_error(&snapshot))
        }
        None => None,
    };

    let key = read_key(args)?;
    apikey::check_key(key.expose())
        .map_err(|why| Error::Usage(format!("not a usable key: {why}")))?;
    if headers.iter().any(|(_, v)| v.contains(key.expose()))
        || label.as_deref().is_some_and(|l| l.contains(key.expose()))
    {
        return Err(Error::Usage(
            "a --header or the --label holds the key itself; qwen-cred sends the key in Authorization on its own".into(),
        ));
    }
    // What the account will hold: given, else what it held, else the defaults.
    let base = base
        .or_else(|| target.as_ref().and_then(|a| a.base_url.clone()))
        .unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
    let headers_given = !args.header.is_empty();
    let headers = match (&target, headers_given) {
        (Some(a), false) => a.headers.clone(),
        _ => headers,
    };

    if args.check {
        match apikey::check(&base, &key, &headers, cfg.http_timeout()) {
            Verdict::Accepted(None) => {}
            Verdict::Accepted(Some(note)) => crate::msg::warn(&format!("the key is accepted ({note})")),
            Verdict::Invalid(why) => {
                return Err(Error::Login(format!("the server rejected the key ({why}); nothing was added")))
            }
            Verdict::Refused(why) => {
                return Err(Error::Login(format!(
                    "the server refused the check ({why}); nothing was added. A key for a service that serves only coding agents may need their headers (--header 'User-Agent: ...'; see qwen-cred(1), API-KEY ACCOUNTS)"
                )))
            }
            Verdict::Unreachable(why) => {
                return Err(Error::Server(format!(
                    "could not check the key ({why}); nothing was added; retry later, or add it without --check"
                )))
            }
        }
    }

    let now = store::now_ms();
    let base_given = args.base_url.is_some();
    let said = store::update(&cfg.pool, cfg.lock_timeout(), |s| {
        if let Some(t) = &target {
            let i = s.find_id(&t.id)?;
            if let Some(j) = s.index_by_key(&key).filter(|&j| j != i) {
                return Err(Error::Usage(format!(
                    "that key is already account {}; remove one of them first",
                    s.accounts[j].id
                )));
            }
            let a = &mut s.accounts[i];
            if !a.is_key() {
                return Err(Error::Usage(format!(
                    "account {} is no longer a key account",
                    a.id
                )));
            }
            // A new key: its own quota and standing; the counters stay.
            a.access_token = key.clone();
            a.base_url = Some(base.clone());
            a.headers = headers.clone();
            if label.is_some() {
                a.label = label.clone();
            }
            a.rate_limit_resets_at = None;
            a.rate_limit_reason = None;
            a.consecutive_rate_limits = 0;
            a.last_rate_limited_at = None;
            revive(a, now);
            return Ok(format!(
                "replaced the key of account {} ({})",
                a.id,
                a.name()
            ));
        }
        if let Some(i) = s.index_by_key(&key) {
            let a = &mut s.accounts[i];
            if base_given {
                a.base_url = Some(base.clone());
            }
            if headers_given {
                a.headers = headers.clone();
            }
            if label.is_some() {
                a.label = label.clone();
            }
            revive(a, now);
            return Ok(format!(
                "that key is already account {} ({}); updated it",
                a.id,
                a.name()
            ));
        }
        if s.accounts.len() >= s.max_accounts {
            return Err(full_error(s));
        }
        let mut a = Account::new_key(key.clone(), base.clone(), headers.clone(), now);
        a.label = label.clone();
        let i = s.add(a)?;
        let a = &s.accounts[i];
        Ok(format!("added key account {} ({})", a.id, a.name()))
    })?;
    crate::msg::warn(&said);
    Ok(())
}

fn revive(a: &mut Account, now: i64) {
    if a.status == Status::Revoked {
        a.status = Status::Active;
        a.status_reason = None;
        a.status_changed_at = Some(now);
    }
}

fn full_error(s: &Store) -> Error {
    Error::Usage(format!(
        "the pool is full ({} of {} accounts: {}); put the key in place of another with `qwen-cred add-key --replace ID`, or remove one with `qwen-cred remove ID`",
        s.accounts.len(),
        s.max_accounts,
        s.summary()
    ))
}

/// The key: from `--from-env VAR`, else a no-echo prompt when stdin is a terminal, else stdin.
fn read_key(args: &AddKey) -> Result<Secret> {
    use std::io::{IsTerminal, Read};
    if let Some(var) = &args.from_env {
        if var.is_empty() || var.contains(['=', '\0']) {
            return Err(Error::Usage(
                "--from-env: expected the name of an environment variable".into(),
            ));
        }
        return crate::config::named_env(var)
            .map(|v| Secret::new(v.trim().to_string()))
            .ok_or_else(|| {
                Error::Usage(format!(
                    "--from-env {var}: that variable is not set or is empty"
                ))
            });
    }
    if std::io::stdin().is_terminal() {
        let answer = crate::tty::read_hidden("qwen-cred: API key (not shown): ", MAX_INPUT)
            .map_err(|e| Error::Usage(format!("cannot ask for the key on the terminal ({e}); pipe it on stdin or use --from-env VAR")))?;
        return match answer {
            Some(k) if !k.trim().is_empty() => Ok(Secret::new(k.trim().to_string())),
            _ => Err(Error::Login("no key was typed; nothing was added".into())),
        };
    }
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_INPUT as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::Usage(format!("cannot read the key from stdin: {e}")))?;
    if buf.len() > MAX_INPUT {
        return Err(Error::Usage(format!(
            "stdin holds more than {MAX_INPUT} bytes; expected one key"
        )));
    }
    let text =
        String::from_utf8(buf).map_err(|_| Error::Usage("the key on stdin is not text".into()))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(Error::Usage(
            "no key on stdin: pipe one (qwen-cred add-key < file), run add-key on a terminal to type it, or use --from-env VAR".into(),
        ));
    }
    Ok(Secret::new(key.to_string()))
}

/// What checking a key account's key came to (`refresh` of a key account).
pub enum Checked {
    /// The server took the key; what else it said, if anything.
    Accepted(Option<String>),
    /// The server says the key is invalid: the account is now revoked.
    Revoked,
    /// Removed, or given another key, meanwhile: nothing to say about it.
    Gone,
    /// Not known now (network, 5xx, a refusal that is not about the key).
    Failed(String),
}

/// Asks the server about account `a`'s key (`GET {base_url}/models`); marks the account
/// revoked when the server says the key is invalid, as a dead refresh token does.
pub fn check_account(cfg: &Config, a: &Account) -> Result<Checked> {
    let base = a.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
    let why = match apikey::check(base, &a.access_token, &a.headers, cfg.http_timeout()) {
        Verdict::Accepted(note) => return Ok(Checked::Accepted(note)),
        Verdict::Refused(why) | Verdict::Unreachable(why) => return Ok(Checked::Failed(why)),
        Verdict::Invalid(why) => why,
    };
    let now = store::now_ms();
    let revoked = store::update(&cfg.pool, cfg.lock_timeout(), |s| {
        let Some(cur) = s.accounts.iter_mut().find(|b| b.id == a.id) else {
            return Ok(false);
        };
        // Only the key that was refused: a key put in its place meanwhile is another matter.
        if !cur.is_key() || cur.access_token != a.access_token {
            return Ok(false);
        }
        if cur.status != Status::Revoked {
            cur.revoke(&why, now);
        }
        Ok(true)
    })?;
    Ok(if revoked {
        Checked::Revoked
    } else {
        Checked::Gone
    })
}
