//! `qwen-cred doctor`: one line per check of the installation, the files and the accounts,
//! `ok`, `warn` or `fail`, each failure with the command that fixes it. Reads only: it
//! changes no file (unlike `list`, it does not tighten a loose store's mode; it says so).
//! `--online` also asks the OAuth server, with a plain GET that spends no token.

use crate::cli::Doctor;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::msg::{relative, rfc3339};
use crate::store::{Status, Store};
use serde_json::{json, Value};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    fn word(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }
}

struct Check {
    name: &'static str,
    level: Level,
    message: String,
    /// The command that fixes it (warnings and failures).
    fix: Option<String>,
    /// The exit status a failure stands for (cli.md): 3 no account, 5 server, 6 local.
    code: i32,
}

#[derive(Default)]
struct Report(Vec<Check>);

impl Report {
    fn ok(&mut self, name: &'static str, message: impl Into<String>) {
        self.push(name, Level::Ok, message.into(), None, 0);
    }

    fn warn(&mut self, name: &'static str, message: impl Into<String>, fix: Option<String>) {
        self.push(name, Level::Warn, message.into(), fix, 0);
    }

    fn fail(&mut self, name: &'static str, message: impl Into<String>, fix: String, code: i32) {
        self.push(name, Level::Fail, message.into(), Some(fix), code);
    }

    fn push(
        &mut self,
        name: &'static str,
        level: Level,
        message: String,
        fix: Option<String>,
        code: i32,
    ) {
        self.0.push(Check {
            name,
            level,
            message,
            fix,
            code,
        });
    }
}

pub fn run(cfg: &Config, config_problem: Option<Error>, args: &Doctor) -> Result<()> {
    let mut r = Report::default();
    let now = crate::store::now_ms();
    binary(&mut r);
    config(&mut r, cfg, config_problem);
    directory(&mut r, &cfg.dir);
    let store = store(&mut r, cfg);
    if let Some(s) = &store {
        accounts(&mut r, s, now);
        journals(&mut r, cfg, s);
    }
    opencode(&mut r, cfg);
    qwen_cli(&mut r, cfg, store.as_ref());
    clock(&mut r, store.as_ref(), now);
    if args.online {
        online(&mut r, cfg);
    }

    if args.json {
        let checks: Vec<Value> = r
            .0
            .iter()
            .map(|c| json!({"check": c.name, "status": c.level.word(), "message": c.message, "fix": c.fix}))
            .collect();
        let ok = r.0.iter().all(|c| c.level != Level::Fail);
        super::config::print_json(&json!({"ok": ok, "checks": checks}))?;
    } else {
        let mut text = String::new();
        for c in &r.0 {
            text += &format!("{:<4}  {}: {}", c.level.word(), c.name, c.message);
            if let Some(fix) = &c.fix {
                text += &format!("; fix: {fix}");
            }
            text.push('\n');
        }
        crate::msg::out(&text)?;
    }
    let failed: Vec<&Check> = r.0.iter().filter(|c| c.level == Level::Fail).collect();
    let Some(first) = failed.first() else {
        return Ok(());
    };
    let names: Vec<&str> = failed.iter().map(|c| c.name).collect();
    let what = format!("{} check(s) failed: {}", failed.len(), names.join(", "));
    Err(match first.code {
        3 => Error::NoAccount(what),
        5 => Error::Server(what),
        _ => Error::File(what),
    })
}

fn my_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The first `qwen-cred` on `$PATH`: the OpenCode plugin and scripts run that one.
fn binary(r: &mut Report) {
    let version = env!("CARGO_PKG_VERSION");
    let me = std::env::current_exe().ok();
    let found = std::env::split_paths(&crate::config::path_var())
        .map(|d| d.join("qwen-cred"))
        .find(|p| p.is_file());
    let fix_path = match me.as_ref().and_then(|m| m.parent()) {
        Some(dir) => format!("cargo install --path . (or put {} on PATH)", dir.display()),
        None => "cargo install --path .".into(),
    };
    let Some(found) = found else {
        r.fail(
            "binary",
            format!("qwen-cred {version} is not on PATH (OpenCode's plugin and scripts/qwen-curl run it from there)"),
            fix_path,
            6,
        );
        return;
    };
    let same_file = match (
        std::fs::canonicalize(&found),
        me.as_ref().map(std::fs::canonicalize),
    ) {
        (Ok(a), Some(Ok(b))) => a == b,
        _ => false,
    };
    if same_file {
        r.ok(
            "binary",
            format!("qwen-cred {version} at {}", found.display()),
        );
        return;
    }
    let theirs = std::process::Command::new(&found)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if theirs == format!("qwen-cred {version}") {
        r.ok(
            "binary",
            format!(
                "qwen-cred {version} at {} (the same version as this one)",
                found.display()
            ),
        );
    } else {
        let theirs = if theirs.is_empty() {
            "an unknown version".into()
        } else {
            theirs
        };
        r.fail(
            "binary",
            format!(
                "{} on PATH is {theirs}, this one is qwen-cred {version}",
                found.display()
            ),
            fix_path,
            6,
        );
    }
}

fn config(r: &mut Report, cfg: &Config, problem: Option<Error>) {
    let path = &cfg.config_path;
    match problem {
        Some(e) => {
            let msg = e.to_string();
            let fix = if msg.starts_with("QWEN_CRED_") {
                "correct or unset that variable (qwen-cred config --schema lists the values)".into()
            } else {
                format!(
                    "correct {} (qwen-cred config --schema lists the keys and values)",
                    path.display()
                )
            };
            r.fail("config", msg, fix, 6);
        }
        None if path.exists() => r.ok("config", format!("{} is valid", path.display())),
        None => r.ok(
            "config",
            format!("no {}; the defaults apply", path.display()),
        ),
    }
}

/// `D`: ours or OpenCode's (then 0755 is normal: the store itself is 0600); never writable
/// by others, and ours.
fn directory(r: &mut Report, dir: &Path) {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            r.ok(
                "directory",
                format!(
                    "{} does not exist yet (made 0700 by the first login)",
                    dir.display()
                ),
            );
            return;
        }
        Err(e) => {
            r.fail(
                "directory",
                format!("cannot read {}: {e}", dir.display()),
                format!("chmod 700 {}", dir.display()),
                6,
            );
            return;
        }
    };
    let mode = meta.mode() & 0o777;
    if meta.uid() != my_uid() {
        r.fail(
            "directory",
            format!(
                "{} belongs to uid {}, not to you",
                dir.display(),
                meta.uid()
            ),
            format!("chown \"$(id -un)\" {}", dir.display()),
            6,
        );
    } else if mode & 0o022 != 0 {
        r.fail(
            "directory",
            format!(
                "{} is mode {mode:04o}: others can replace the store",
                dir.display()
            ),
            format!("chmod go-w {}", dir.display()),
            6,
        );
    } else {
        r.ok(
            "directory",
            format!("{} is yours, mode {mode:04o}", dir.display()),
        );
    }
}

/// Parses the store without `store::load`'s side effect (it tightens a loose mode).
fn store(r: &mut Report, cfg: &Config) -> Option<Store> {
    let path = cfg.store_path();
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            r.ok("store", format!("no {} yet", path.display()));
            return Some(Store::empty());
        }
        Err(e) => {
            r.fail(
                "store",
                format!("cannot read {}: {e}", path.display()),
                format!("chmod 600 {}", path.display()),
                6,
            );
            return None;
        }
    };
    if !meta.is_file() {
        r.fail(
            "store",
            format!(
                "{} is not a regular file (a symlink or a directory)",
                path.display()
            ),
            format!("replace {} with the file itself", path.display()),
            6,
        );
        return None;
    }
    let parsed = std::fs::read(&path)
        .map_err(|e| Error::io("cannot read", &path, e))
        .and_then(|b| Store::parse(&b, &path));
    let s = match parsed {
        Ok(s) => s,
        Err(e) => {
            r.fail(
                "store",
                e.to_string(),
                format!(
                    "correct {} by hand, or move it away and log in again (qwen-cred never rewrites a file it cannot parse)",
                    path.display()
                ),
                6,
            );
            return None;
        }
    };
    let mode = meta.mode() & 0o777;
    if meta.uid() != my_uid() {
        r.fail(
            "store",
            format!(
                "{} belongs to uid {}, not to you",
                path.display(),
                meta.uid()
            ),
            format!("chown \"$(id -un)\" {}", path.display()),
            6,
        );
    } else if mode & 0o077 != 0 {
        r.fail(
            "store",
            format!(
                "{} is mode {mode:04o}: others can read its tokens",
                path.display()
            ),
            format!("chmod 600 {}", path.display()),
            6,
        );
    } else {
        r.ok(
            "store",
            format!(
                "{} is valid, yours, mode {mode:04o}, {} of {} accounts",
                path.display(),
                s.accounts.len(),
                s.max_accounts
            ),
        );
    }
    Some(s)
}

fn accounts(r: &mut Report, s: &Store, now: i64) {
    if s.accounts.is_empty() {
        r.fail("accounts", "the pool is empty", "qwen-cred login".into(), 3);
        return;
    }
    let mut serving = 0;
    for a in &s.accounts {
        if a.status == Status::Revoked {
            let why = a
                .status_reason
                .as_deref()
                .unwrap_or("its refresh token was refused");
            r.warn(
                "accounts",
                format!("account {} ({}) is revoked: {why}", a.id, a.name()),
                Some(a.relogin_hint()),
            );
        } else if a.disabled {
            r.warn(
                "accounts",
                format!("account {} ({}) is disabled", a.id, a.name()),
                Some(format!("qwen-cred enable {}", a.id)),
            );
        } else {
            serving += 1;
        }
    }
    let cooling = s
        .accounts
        .iter()
        .filter(|a| {
            a.status != Status::Revoked && !a.disabled && crate::rotation::is_cooling(a, now)
        })
        .count();
    if serving == 0 {
        r.fail(
            "accounts",
            "no account is in rotation (every one is revoked or disabled)",
            "qwen-cred login, or qwen-cred enable ID".into(),
            3,
        );
    } else {
        let mut msg = format!("{serving} of {} accounts in rotation", s.accounts.len());
        if cooling > 0 {
            msg += &format!(", {cooling} cooling down (qwen-cred status shows until when)");
        }
        r.ok("accounts", msg);
    }
}

fn journals(r: &mut Report, cfg: &Config, s: &Store) {
    let mut any = false;
    for a in &s.accounts {
        if crate::journal::is_pending(&cfg.pool, &a.id) {
            any = true;
            r.warn(
                "journal",
                format!(
                    "account {}: the tokens of a refresh wait in {} to be stored",
                    a.id,
                    crate::journal::path(&cfg.pool, &a.id).display()
                ),
                Some(format!("qwen-cred refresh --account {}", a.id)),
            );
        }
    }
    let unreadable: Vec<PathBuf> = std::fs::read_dir(&cfg.dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(".journal.unreadable"))
                .collect()
        })
        .unwrap_or_default();
    for p in unreadable {
        any = true;
        r.warn(
            "journal",
            format!(
                "{} is a journal qwen-cred could not read, set aside",
                p.display()
            ),
            Some(format!(
                "look at it (it may hold tokens), then rm {}",
                p.display()
            )),
        );
    }
    if !any {
        r.ok("journal", "no refresh waits to be stored");
    }
}

fn opencode(r: &mut Report, cfg: &Config) {
    let plugin = cfg.dir.join("plugin").join(super::opencode::PLUGIN_FILE);
    let config = super::opencode::config_file(&cfg.dir);
    let config_text = std::fs::read_to_string(&config).ok();
    let auth = std::fs::read(&cfg.opencode_auth_file).ok();
    let auth_json = auth.as_ref().map(|b| serde_json::from_slice::<Value>(b));
    let has_marker =
        matches!(&auth_json, Some(Ok(v)) if v.get(super::opencode::PROVIDER_ID).is_some());
    let has_provider = config_text
        .as_deref()
        .is_some_and(|t| super::opencode::has_provider(t, "qwen"));
    // OpenCode used with other providers only is not a problem of qwen-cred's.
    if !plugin.exists() && !has_provider && !has_marker {
        r.ok(
            "opencode",
            "not set up for OpenCode (only needed with it: qwen-cred opencode install --write-config)",
        );
        return;
    }
    let install = "qwen-cred opencode install --write-config".to_string();
    match std::fs::read(&plugin) {
        Ok(b) if b == super::opencode::PLUGIN.as_bytes() => r.ok(
            "opencode-plugin",
            format!(
                "{} is the plugin of this qwen-cred {}",
                plugin.display(),
                env!("CARGO_PKG_VERSION")
            ),
        ),
        Ok(_) => r.fail(
            "opencode-plugin",
            format!(
                "{} is not the plugin of this qwen-cred {} (an older or newer one)",
                plugin.display(),
                env!("CARGO_PKG_VERSION")
            ),
            "qwen-cred opencode install".into(),
            6,
        ),
        Err(_) => r.fail(
            "opencode-plugin",
            format!(
                "no plugin at {}: OpenCode cannot get tokens from qwen-cred",
                plugin.display()
            ),
            install.clone(),
            6,
        ),
    }
    match &config_text {
        Some(t) if super::opencode::has_provider(t, "qwen") => r.ok(
            "opencode-provider",
            format!("{} has the \"qwen\" provider", config.display()),
        ),
        Some(t) if serde_json::from_str::<Value>(t).is_err() => r.warn(
            "opencode-provider",
            format!("{} is not plain JSON (comments?); cannot tell whether it has the \"qwen\" provider", config.display()),
            Some("qwen-cred opencode install prints the block to add by hand".into()),
        ),
        Some(_) => r.fail(
            "opencode-provider",
            format!("{} has no \"qwen\" provider", config.display()),
            install.clone(),
            6,
        ),
        None => r.fail(
            "opencode-provider",
            format!("no {}", config.display()),
            install.clone(),
            6,
        ),
    }
    let file = &cfg.opencode_auth_file;
    match auth_json {
        Some(Ok(Value::Object(m))) if m.contains_key(super::opencode::PROVIDER_ID) => r.ok(
            "opencode-auth",
            format!(
                "{} has the \"qwen\" entry that makes OpenCode use the plugin",
                file.display()
            ),
        ),
        Some(Ok(Value::Object(_))) | None => r.fail(
            "opencode-auth",
            format!(
                "{} has no \"qwen\" entry: OpenCode does not call the plugin",
                file.display()
            ),
            format!("{install} (or opencode auth login, choose Qwen)"),
            6,
        ),
        Some(_) => r.fail(
            "opencode-auth",
            format!("{} is not a JSON object", file.display()),
            "correct it, or sign in with opencode auth login (choose Qwen)".into(),
            6,
        ),
    }
}

/// The Qwen Code CLI's file and the account linked to it.
fn qwen_cli(r: &mut Report, cfg: &Config, s: Option<&Store>) {
    let file = cfg.qwen_cli_file();
    let accounts = s.map_or(&[][..], |s| &s.accounts[..]);
    let linked = accounts.iter().find(|a| {
        a.linked_file
            .as_deref()
            .is_some_and(|l| crate::qwen_cli::links_to(l, &file))
    });
    if !file.exists() {
        match linked {
            Some(a) => r.warn(
                "qwen-cli",
                format!("account {} is linked to {}, which is gone (the Qwen CLI signed out?); it is used as it is", a.id, file.display()),
                Some(format!("qwen-cred remove {} if you no longer use that login", a.id)),
            ),
            None => r.ok("qwen-cli", format!("no Qwen Code CLI login at {}", file.display())),
        }
        return;
    }
    let creds = match crate::qwen_cli::read(&file) {
        Ok(c) => c,
        Err(e) => {
            r.warn(
                "qwen-cli",
                format!("{e} (the Qwen Code CLI's file; qwen-cred leaves it alone)"),
                Some("sign in the Qwen Code CLI again, or remove the file".into()),
            );
            return;
        }
    };
    let sync = match cfg.settings.sync_qwen_cli {
        true => "kept in step with it",
        false => "not kept in step (sync_qwen_cli is false)",
    };
    match linked {
        Some(a) if a.refresh_token == creds.refresh_token => r.ok(
            "qwen-cli",
            format!("{} is linked to account {}, {sync}; both hold the same token", file.display(), a.id),
        ),
        Some(a) => r.ok(
            "qwen-cli",
            format!("{} is linked to account {}, {sync}; the Qwen CLI has refreshed since (the next refresh adopts its tokens)", file.display(), a.id),
        ),
        None => match accounts.iter().find(|a| a.refresh_token == creds.refresh_token) {
            Some(a) => r.ok(
                "qwen-cli",
                format!("{} holds the login of account {} (not linked to the file)", file.display(), a.id),
            ),
            None if crate::qwen_cli::was_removed(&file, s.and_then(|s| s.removed_qwen_cli_fp.as_deref())) => r.ok(
                "qwen-cli",
                format!("{} holds a login removed from the pool on purpose (qwen-cred import adds it back)", file.display()),
            ),
            None => r.warn(
                "qwen-cli",
                format!("{} holds a login that is not in the pool", file.display()),
                Some(format!("qwen-cred import {}", file.display())),
            ),
        },
    }
}

/// 2024-01-01T00:00:00Z: no clock that works is earlier.
const EARLIEST_SANE_MS: i64 = 1_704_067_200_000;
/// Store times this far ahead of the clock mean it stepped back.
const FUTURE_SLACK_MS: i64 = 300_000;

fn clock(r: &mut Report, s: Option<&Store>, now: i64) {
    let fix = "set the system clock (e.g. timedatectl set-ntp true)".to_string();
    if now < EARLIEST_SANE_MS {
        r.fail(
            "clock",
            format!("the system clock says {}", rfc3339(now)),
            fix,
            6,
        );
        return;
    }
    let latest = s
        .into_iter()
        .flat_map(|s| &s.accounts)
        .flat_map(|a| {
            [
                a.last_used_at,
                Some(a.created_at),
                a.last_rate_limited_at,
                a.status_changed_at,
            ]
        })
        .flatten()
        .max();
    match latest {
        Some(t) if t > now + FUTURE_SLACK_MS => r.warn(
            "clock",
            format!(
                "it is {} but the store records {} ({}): the clock went back",
                rfc3339(now),
                rfc3339(t),
                relative(t, now)
            ),
            Some(fix),
        ),
        _ => r.ok("clock", format!("{} (UTC)", rfc3339(now))),
    }
}

/// Skew under this is ok (`Date` has whole seconds; tokens are taken as expired 60 s early).
const SKEW_OK_MS: i64 = 30_000;
/// Skew over this fails: tokens look valid long after they expired, or expired while valid.
const SKEW_FAIL_MS: i64 = 300_000;

fn online(r: &mut Report, cfg: &Config) {
    let settings = cfg.oauth_settings();
    let url = &settings.oauth_base_url;
    let client = match crate::oauth::Client::new(&settings) {
        Ok(c) => c,
        Err(e) => {
            r.fail(
                "server",
                e.to_string(),
                "correct oauth_base_url (qwen-cred config)".into(),
                6,
            );
            return;
        }
    };
    let sent = crate::store::now_ms();
    let probe = client.probe();
    let back = crate::store::now_ms();
    let probe = match probe {
        Ok(p) => p,
        Err(e) => {
            r.fail(
                "server",
                format!("cannot reach the OAuth server: {e}"),
                "check the network (and HTTPS_PROXY); QWEN_CRED_LOG=debug shows the requests"
                    .into(),
                5,
            );
            return;
        }
    };
    r.ok(
        "server",
        format!("{url} answers (HTTP {}, {} ms)", probe.status, back - sent),
    );
    let Some(date) = probe.date else {
        r.warn(
            "server-clock",
            format!("{url} sent no Date header; clock skew unknown"),
            None,
        );
        return;
    };
    let mid = sent + (back - sent) / 2;
    let Some(theirs) = crate::rotation::parse_http_date(&date, mid) else {
        r.warn(
            "server-clock",
            format!("{url} sent a Date header that is not an HTTP-date: {date:?}"),
            None,
        );
        return;
    };
    // `Date` drops the milliseconds: compare with our clock cut the same way.
    let skew = theirs - mid.div_euclid(1000) * 1000;
    let secs = skew / 1000;
    let how = match skew {
        0 => "in step with this machine's".to_string(),
        s if s > 0 => format!("{secs} s ahead of this machine's"),
        _ => format!("{} s behind this machine's", -secs),
    };
    let fix = "sync the system clock (e.g. timedatectl set-ntp true)".to_string();
    match skew.abs() {
        s if s <= SKEW_OK_MS => r.ok("server-clock", format!("the server's clock is {how}")),
        s if s <= SKEW_FAIL_MS => r.warn(
            "server-clock",
            format!("the server's clock is {how}: tokens may be refreshed late or early"),
            Some(fix),
        ),
        _ => r.fail(
            "server-clock",
            format!("the server's clock is {how}: token expiry cannot be trusted"),
            fix,
            6,
        ),
    }
}
