//! Where the files live and what the settings are: the key table of files.md, read from
//! `qwen.json` and `QWEN_CRED_<KEY>` variables. The only module that reads the environment or
//! asks `dirs` for the home directory. The same table generates `config --schema`.

use crate::error::{Error, Result};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What kind of value a key holds; drives parsing, validation and the JSON Schema.
#[derive(Clone, Copy)]
enum Ty {
    Bool,
    /// An integer in `min..=max`.
    Int {
        min: i64,
        max: i64,
    },
    Enum(&'static [&'static str]),
    /// Local time `HH:MM`.
    ClockTime,
    /// A UTC offset `+HH:MM` / `-HH:MM`.
    Offset,
    /// `https://...`, or `http://` to a loopback host.
    Url,
    /// A host name or URL of the API (resource_url).
    Resource,
    Text,
}

#[derive(Clone, Copy)]
enum Def {
    Bool(bool),
    Int(i64),
    Str(&'static str),
}

struct Key {
    name: &'static str,
    ty: Ty,
    default: Def,
    about: &'static str,
}

const U32: i64 = u32::MAX as i64;

/// Declares every key once: `KEYS` (name, type, default, help, from which parsing, validation,
/// `config --schema` and the `QWEN_CRED_*` names follow) and `Settings`, the typed values, so a
/// misspelt key is a compile error, never a panic at run time.
macro_rules! settings {
    ($($name:ident: $rust:ident = $default:expr, $ty:expr, $about:literal;)*) => {
        const KEYS: &[Key] = &[$(Key {
            name: stringify!($name),
            ty: $ty,
            default: settings!(@def $rust $default),
            about: $about,
        }),*];

        /// The effective value of every key (files.md, The config), typed. Some are read by
        /// the OpenCode plugin alone, through `config --json` (`quiet_mode`).
        #[derive(Debug, Clone)]
        #[allow(dead_code)]
        pub struct Settings {
            $(#[doc = $about] pub $name: $rust,)*
        }

        impl Settings {
            /// From the resolved values, in `KEYS` order. `resolve` has validated each, so
            /// the fallbacks never apply.
            pub(crate) fn from_resolved(values: &Resolved) -> Settings {
                let mut it = values.iter().map(|(_, v, _)| v);
                Settings { $($name: settings!(@get $rust it.next()),)* }
            }
        }
    };
    (@def bool $d:expr) => { Def::Bool($d) };
    (@def u64 $d:expr) => { Def::Int($d) };
    (@def String $d:expr) => { Def::Str($d) };
    (@get bool $v:expr) => { $v.and_then(Value::as_bool).unwrap_or_default() };
    (@get u64 $v:expr) => { $v.and_then(Value::as_u64).unwrap_or_default() };
    (@get String $v:expr) => { $v.and_then(Value::as_str).unwrap_or_default().to_string() };
}

// The keys of files.md, in its order.
settings! {
    account_selection_strategy: String = "sticky", Ty::Enum(&crate::rotation::Strategy::NAMES),
        "How token picks an account: sticky, round-robin, least-used or hybrid.";
    hybrid_rotation_requests: u64 = 50, Ty::Int { min: 1, max: U32 },
        "hybrid: move on after this many tokens from one account.";
    switch_on_first_rate_limit: bool = true, Ty::Bool,
        "false: the first 429 without hint waits the backoff and retries the same account.";
    retry_same_account_threshold_seconds: u64 = 5, Ty::Int { min: 0, max: 3600 },
        "A Retry-After at or under this is waited out on the same account.";
    exponential_backoff_base_ms: u64 = 1000, Ty::Int { min: 1, max: 86_400_000 },
        "Cooldown after a 429 with no hint: base x 2^(n-1).";
    exponential_backoff_max_ms: u64 = 32000, Ty::Int { min: 1, max: 86_400_000 },
        "Cap of the no-hint backoff.";
    max_rate_limit_wait_seconds: u64 = 300, Ty::Int { min: 0, max: 86_400 },
        "How long token/report-429 may wait when all accounts cool down; 0 = never wait.";
    quota_reset_time: String = "00:00", Ty::ClockTime,
        "Local time (HH:MM) of the daily quota reset.";
    quota_reset_utc_offset: String = "+08:00", Ty::Offset,
        "UTC offset (+HH:MM) of quota_reset_time.";
    proactive_token_refresh: bool = true, Ty::Bool,
        "Refresh a token when it is due, not only when expired.";
    proactive_refresh_buffer_seconds: u64 = 1800, Ty::Int { min: 0, max: 86_400 },
        "How early before expiry a token is due.";
    proactive_refresh_check_interval_seconds: u64 = 300, Ty::Int { min: 1, max: 86_400 },
        "How often token may start a background refresh of other due accounts.";
    token_refresh_retry_attempts: u64 = 3, Ty::Int { min: 1, max: 10 },
        "Attempts for a transient refresh failure.";
    token_refresh_retry_delay_ms: u64 = 2000, Ty::Int { min: 0, max: 60_000 },
        "First retry delay of a refresh, doubling.";
    http_timeout_seconds: u64 = 30, Ty::Int { min: 1, max: 600 },
        "Whole-request timeout for OAuth calls.";
    lock_timeout_seconds: u64 = 30, Ty::Int { min: 0, max: 3600 },
        "How long to wait for a lock before giving up (exit 6).";
    oauth_base_url: String = "https://chat.qwen.ai", Ty::Url,
        "OAuth server.";
    client_id: String = "f0304373b74a44d2b584a3fb70ca9e56", Ty::Text,
        "OAuth client id.";
    scope: String = "openid profile email model.completion", Ty::Text,
        "OAuth scope.";
    default_resource_url: String = "portal.qwen.ai", Ty::Resource,
        "API host when a token has none.";
    sync_qwen_cli: bool = true, Ty::Bool,
        "Keep an account imported from the Qwen CLI in step with its file.";
    quiet_mode: bool = false, Ty::Bool,
        "The OpenCode plugin shows no toasts (account moves, waits, revocations).";
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Env,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File => "file",
            Source::Env => "env",
        }
    }
}

/// Effective settings plus the paths and environment facts the commands need.
pub struct Config {
    pub settings: Settings,
    /// Each key's effective value and where it came from, in table order.
    pub values: Vec<(&'static str, Value, Source)>,
    pub dir: PathBuf,
    /// The pool this command works on: `--pool`, else `QWEN_CRED_POOL`, else the default.
    pub pool: crate::pool::Pool,
    pub config_path: PathBuf,
    /// `QWEN_CRED_QWEN_DIR`, else `$QWEN_HOME` (the Qwen CLI's override), else `~/.qwen`.
    pub qwen_dir: PathBuf,
    /// OpenCode's credentials: `$XDG_DATA_HOME/opencode/auth.json`, else
    /// `~/.local/share/opencode/auth.json`.
    pub opencode_auth_file: PathBuf,
    /// `QWEN_CRED_ACCOUNT_ID`: default account of report-429. Ids are per pool, so it is
    /// taken only for the pool `QWEN_CRED_POOL` names (the default pool when unset), the pool
    /// `token --format env` printed it with.
    pub account_id_env: Option<String>,
    /// `$BROWSER`.
    pub browser: Option<String>,
    /// A graphical session to open a browser in (`DISPLAY`/`WAYLAND_DISPLAY`; always on macOS).
    pub has_display: bool,
    /// `QWEN_CRED_LOG=debug`.
    pub debug: bool,
}

impl Config {
    /// Reads the environment and `qwen.json`. Every problem is exit 6 naming key and value,
    /// but a bad `QWEN_CRED_POOL`, which is exit 2 as a bad `--pool` is. `pool_arg` is the
    /// pool the command line names, which wins over `QWEN_CRED_POOL`.
    pub fn load(pool_arg: Option<&crate::pool::Name>) -> Result<Config> {
        let (cfg, problem) = Config::load_lenient(pool_arg)?;
        problem.map_or(Ok(cfg), Err)
    }

    /// As `load`, but a bad `qwen.json` or `QWEN_CRED_<KEY>` value comes back beside a config
    /// of defaults (the paths as usual), so that `doctor` can go on and report it.
    pub fn load_lenient(pool_arg: Option<&crate::pool::Name>) -> Result<(Config, Option<Error>)> {
        let home = dirs::home_dir();
        let dir = match env("QWEN_CRED_CONFIG_DIR") {
            Some(d) => PathBuf::from(d),
            None => match env("XDG_CONFIG_HOME") {
                Some(x) => PathBuf::from(x).join("opencode"),
                None => home
                    .as_ref()
                    .ok_or_else(|| {
                        Error::File(
                            "cannot find the home directory; set QWEN_CRED_CONFIG_DIR".into(),
                        )
                    })?
                    .join(".config/opencode"),
            },
        };
        // The Qwen CLI's own rule when ours is unset: `$QWEN_HOME` is its `~/.qwen`, with a
        // leading `~` for the home directory and a relative path taken from the current one.
        let qwen_dir = match (env("QWEN_CRED_QWEN_DIR"), env("QWEN_HOME")) {
            (Some(d), _) => PathBuf::from(d),
            (None, Some(h)) => {
                let h = match (h.strip_prefix('~'), &home) {
                    (Some(""), Some(hd)) => hd.clone(),
                    (Some(rest), Some(hd)) if rest.starts_with('/') => {
                        hd.join(rest.trim_start_matches('/'))
                    }
                    _ => PathBuf::from(h),
                };
                std::path::absolute(&h).unwrap_or(h)
            }
            (None, None) => home.clone().unwrap_or_default().join(".qwen"),
        };
        let opencode_auth_file = match env("XDG_DATA_HOME") {
            Some(d) => PathBuf::from(d),
            None => home.unwrap_or_default().join(".local/share"),
        }
        .join("opencode/auth.json");
        let pool_env = match env("QWEN_CRED_POOL") {
            None => None,
            Some(v) => {
                crate::pool::parse(&v).map_err(|e| Error::Usage(format!("QWEN_CRED_POOL: {e}")))?
            }
        };
        let pool_name = match pool_arg {
            Some(crate::pool::Name(n)) => n.clone(),
            None => pool_env.clone(),
        };
        let account_id_env = env("QWEN_CRED_ACCOUNT_ID").filter(|_| pool_name == pool_env);
        let pool = crate::pool::Pool::new(&dir, pool_name);
        let config_path = dir.join("qwen.json");
        warn_if_open_to_others(&dir);
        let read = read_config_file(&config_path)
            .and_then(|file| resolve(&config_path, &file, |k| env(&env_name(k))));
        let (values, problem) = match read {
            Ok((values, warnings)) => {
                for w in warnings {
                    crate::msg::warn(&w);
                }
                (values, None)
            }
            Err(e) => (resolve(&config_path, &Map::new(), |_| None)?.0, Some(e)),
        };
        let cfg = Config {
            settings: Settings::from_resolved(&values),
            values,
            dir,
            pool,
            config_path,
            qwen_dir,
            opencode_auth_file,
            account_id_env,
            browser: env("BROWSER"),
            has_display: cfg!(target_os = "macos")
                || env("DISPLAY").is_some()
                || env("WAYLAND_DISPLAY").is_some(),
            debug: env("QWEN_CRED_LOG").is_some_and(|v| v.eq_ignore_ascii_case("debug")),
        };
        Ok((cfg, problem))
    }

    pub fn store_path(&self) -> PathBuf {
        crate::store::path(&self.pool)
    }

    pub fn qwen_cli_file(&self) -> PathBuf {
        self.qwen_dir.join("oauth_creds.json")
    }

    pub fn http_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.http_timeout_seconds)
    }

    pub fn lock_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.lock_timeout_seconds)
    }

    pub fn rotation_policy(&self) -> crate::rotation::Policy {
        use crate::rotation::{parse_reset_time, parse_utc_offset, Policy, QuotaReset, Strategy};
        // Validated in resolve(), so the fallbacks are never taken.
        let (hour, minute) = parse_reset_time(&self.settings.quota_reset_time).unwrap_or((0, 0));
        Policy {
            strategy: Strategy::parse(&self.settings.account_selection_strategy)
                .unwrap_or(Strategy::Sticky),
            hybrid_rotation_requests: self.settings.hybrid_rotation_requests,
            switch_on_first_rate_limit: self.settings.switch_on_first_rate_limit,
            retry_same_account_threshold_seconds: self
                .settings
                .retry_same_account_threshold_seconds,
            backoff_base_ms: self.settings.exponential_backoff_base_ms,
            backoff_max_ms: self.settings.exponential_backoff_max_ms,
            quota_reset: QuotaReset {
                hour,
                minute,
                offset: parse_utc_offset(&self.settings.quota_reset_utc_offset)
                    .unwrap_or(time::UtcOffset::UTC),
            },
            proactive_token_refresh: self.settings.proactive_token_refresh,
            proactive_refresh_buffer_seconds: self.settings.proactive_refresh_buffer_seconds,
        }
    }

    /// The Qwen CLI file to keep linked accounts in step with: `None` without
    /// `sync_qwen_cli`, and in a named pool (the Qwen CLI's login lives in the default pool
    /// only: one OAuth account in two pools would be refreshed under two refresh locks).
    pub fn synced_qwen_cli_file(&self) -> Option<PathBuf> {
        (self.settings.sync_qwen_cli && self.pool.is_default()).then(|| self.qwen_cli_file())
    }

    pub fn refresh_settings(&self) -> crate::refresh::Settings {
        crate::refresh::Settings {
            pool: self.pool.clone(),
            lock_timeout: self.lock_timeout(),
            qwen_cli_file: self.synced_qwen_cli_file(),
            oauth: self.oauth_settings(),
            retry_attempts: self.settings.token_refresh_retry_attempts,
            retry_delay: Duration::from_millis(self.settings.token_refresh_retry_delay_ms),
        }
    }

    pub fn oauth_settings(&self) -> crate::oauth::Settings {
        crate::oauth::Settings {
            oauth_base_url: self
                .settings
                .oauth_base_url
                .trim_end_matches('/')
                .to_string(),
            client_id: self.settings.client_id.clone(),
            scope: self.settings.scope.clone(),
            http_timeout: Duration::from_secs(self.settings.http_timeout_seconds),
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `$PATH`, where `doctor` looks for the binary.
pub fn path_var() -> std::ffi::OsString {
    std::env::var_os("PATH").unwrap_or_default()
}

/// The value of the environment variable the user named (`add-key --from-env VAR`); `None`
/// when unset or empty.
pub fn named_env(name: &str) -> Option<String> {
    env(name)
}

/// `QWEN_CRED_<KEY>`, upper-cased.
pub fn env_name(key: &str) -> String {
    // Built by hand, not with format!: every `token` call asks for each key's variable.
    let mut name = String::with_capacity("QWEN_CRED_".len() + key.len());
    name.push_str("QWEN_CRED_");
    name.push_str(key);
    name.make_ascii_uppercase();
    name
}

/// The largest `qwen.json` read: a config is a few hundred bytes.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// A missing config file is an empty one. Anything but a regular file (a FIFO would block
/// every command, a device would be read without end) or a file over 1 MiB is exit 6 before
/// a byte is read. A symlink is followed: the file is only read, and dotfile managers link it.
fn read_config_file(path: &Path) -> Result<Map<String, Value>> {
    match crate::files::read_regular(path, MAX_CONFIG_BYTES, "a config")? {
        None => Ok(Map::new()),
        Some((text, _)) => parse_config_file(&text, path),
    }
}

/// Says once (one line) when the config directory can be written by group or others: they
/// could swap the store, its locks or the config.
fn warn_if_open_to_others(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(dir) {
        let mode = meta.permissions().mode();
        if meta.is_dir() && mode & 0o022 != 0 {
            crate::msg::warn(&format!(
                "{} is writable by {} (mode {:04o}): they could replace the account store or its locks; run chmod 700 {}",
                dir.display(),
                if mode & 0o002 != 0 { "others" } else { "the group" },
                mode & 0o7777,
                dir.display()
            ));
        }
    }
}

/// The config file's bytes as a JSON object; `path` only names the file in errors.
fn parse_config_file(text: &[u8], path: &Path) -> Result<Map<String, Value>> {
    Ok(crate::files::parse_json_object(text, path)?.unwrap_or_default())
}

/// The effective values, in table order, with where each came from.
pub(crate) type Resolved = Vec<(&'static str, Value, Source)>;

/// Applies env > file > default for every key, validating each value. Also returns one
/// warning line per unknown key of the file (`$schema` is for editors and is not one).
fn resolve(
    path: &Path,
    file: &Map<String, Value>,
    env_of: impl Fn(&str) -> Option<String>,
) -> Result<(Resolved, Vec<String>)> {
    let unknown: Vec<&String> = file
        .keys()
        .filter(|k| *k != "$schema" && !KEYS.iter().any(|key| key.name == *k))
        .collect();
    let mut warnings: Vec<String> = unknown
        .iter()
        .take(MAX_UNKNOWN_WARNINGS)
        .map(|k| unknown_key_warning(path, k))
        .collect();
    if unknown.len() > MAX_UNKNOWN_WARNINGS {
        warnings.push(format!(
            "{}: {} more unknown keys ignored",
            path.display(),
            unknown.len() - MAX_UNKNOWN_WARNINGS
        ));
    }
    let mut out = Vec::with_capacity(KEYS.len());
    for key in KEYS {
        let (value, source) = if let Some(raw) = env_of(key.name) {
            let v =
                from_env_text(key.ty, &raw).ok_or_else(|| bad(&env_name(key.name), &raw, key))?;
            (v, Source::Env)
        } else if let Some(v) = file.get(key.name) {
            (v.clone(), Source::File)
        } else {
            (default_value(key.default), Source::Default)
        };
        if !valid(key.ty, &value) {
            let shown = match &value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let name = match source {
                Source::Env => env_name(key.name),
                _ => format!("{}: {}", path.display(), key.name),
            };
            return Err(bad(&name, &shown, key));
        }
        out.push((key.name, value, source));
    }
    Ok((out, warnings))
}

/// Unknown keys named one per line, up to this many; the rest are counted.
const MAX_UNKNOWN_WARNINGS: usize = 5;

/// `qwen.json: unknown key "lock_timeout" ignored; did you mean "lock_timeout_seconds"?`
fn unknown_key_warning(path: &Path, unknown: &str) -> String {
    // `{:?}` escapes control characters: the warning stays one line. A long key is cut.
    let shown: String = unknown.chars().take(MAX_KEY_CHARS).collect();
    let cut = if shown.len() < unknown.len() {
        "..."
    } else {
        ""
    };
    let head = format!("{}: unknown key {shown:?}{cut} ignored", path.display());
    match nearest_key(unknown) {
        (near, true) => format!("{head}; did you mean {near:?}?"),
        (near, false) => {
            format!("{head} (the nearest known key is {near:?}; see qwen-cred config --schema)")
        }
    }
}

/// The known key nearest to `unknown`, and whether it is close enough to be the one meant:
/// a few edits away, or `unknown` is its start (a unit suffix left off: `lock_timeout`).
fn nearest_key(unknown: &str) -> (&'static str, bool) {
    let u: String = unknown
        .trim()
        .chars()
        .take(MAX_KEY_CHARS)
        .map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    let mut best = (KEYS[0].name, usize::MAX);
    for key in KEYS {
        let d = edit_distance(&u, key.name);
        if d < best.1 {
            best = (key.name, d);
        }
    }
    let (near, d) = best;
    let longer = u.chars().count().max(near.len());
    if d <= 2 || d * 3 <= longer {
        return (near, true);
    }
    // A unique key that starts with what was typed (at least a word of it).
    let mut starting = KEYS
        .iter()
        .filter(|k| u.len() >= 4 && k.name.starts_with(&u));
    match (starting.next(), starting.next()) {
        (Some(k), None) => (k.name, true),
        _ => (near, false),
    }
}

/// How much of an unknown key is shown and compared: keys are at most 40 characters.
const MAX_KEY_CHARS: usize = 80;

/// Levenshtein distance over chars (insert, delete, substitute).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

fn bad(name: &str, value: &str, key: &Key) -> Error {
    Error::File(format!(
        "{name}: invalid value {value:?}: expected {}",
        expectation(key.ty)
    ))
}

fn expectation(ty: Ty) -> String {
    match ty {
        Ty::Bool => "true or false".into(),
        Ty::Int { min, max } => format!("an integer from {min} to {max}"),
        Ty::Enum(names) => format!("one of {}", names.join(", ")),
        Ty::ClockTime => "a time HH:MM".into(),
        Ty::Offset => "a UTC offset like +08:00 or -05:00".into(),
        Ty::Url => "an https:// URL, or http:// to 127.0.0.1, [::1] or localhost".into(),
        Ty::Resource => "a host name like portal.qwen.ai, or a URL".into(),
        Ty::Text => "a non-empty string".into(),
    }
}

fn from_env_text(ty: Ty, raw: &str) -> Option<Value> {
    Some(match ty {
        Ty::Bool => match raw {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return None,
        },
        Ty::Int { .. } => Value::from(raw.trim().parse::<i64>().ok()?),
        _ => Value::String(raw.to_string()),
    })
}

fn valid(ty: Ty, v: &Value) -> bool {
    match ty {
        Ty::Bool => v.is_boolean(),
        Ty::Int { min, max } => v.as_i64().is_some_and(|n| (min..=max).contains(&n)),
        Ty::Enum(names) => v.as_str().is_some_and(|s| names.contains(&s)),
        Ty::ClockTime => v
            .as_str()
            .and_then(crate::rotation::parse_reset_time)
            .is_some(),
        Ty::Offset => v
            .as_str()
            .and_then(crate::rotation::parse_utc_offset)
            .is_some(),
        Ty::Url => v
            .as_str()
            .is_some_and(|s| crate::oauth::check_url(s).is_ok()),
        Ty::Resource => v.as_str().is_some_and(|s| {
            !s.trim().is_empty()
                && !s.contains(char::is_whitespace)
                && (!s.contains("://") || crate::oauth::check_url(s).is_ok())
        }),
        Ty::Text => v.as_str().is_some_and(|s| !s.trim().is_empty()),
    }
}

fn default_value(d: Def) -> Value {
    match d {
        Def::Bool(b) => Value::Bool(b),
        Def::Int(n) => Value::from(n),
        Def::Str(s) => Value::from(s),
    }
}

/// The JSON Schema (draft 2020-12) of `qwen.json`, generated from `KEYS`.
pub fn schema() -> Value {
    let mut props = Map::new();
    for key in KEYS {
        let mut p = match key.ty {
            Ty::Bool => json!({"type": "boolean"}),
            Ty::Int { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
            Ty::Enum(names) => json!({"type": "string", "enum": names}),
            Ty::ClockTime => {
                json!({"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"})
            }
            Ty::Offset => {
                json!({"type": "string", "pattern": "^[+-]([01][0-9]|2[0-3]):[0-5][0-9]$"})
            }
            Ty::Url => {
                json!({"type": "string", "format": "uri", "pattern": "^(https://|http://(127\\.|localhost|\\[::1\\]))"})
            }
            Ty::Resource | Ty::Text => json!({"type": "string", "minLength": 1}),
        };
        p["default"] = default_value(key.default);
        p["description"] = Value::from(key.about);
        props.insert(key.name.to_string(), p);
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "qwen-cred configuration (qwen.json)",
        "description": "Every key is optional. \"$schema\" is ignored; any other key not listed here is ignored with a warning naming the nearest known key.",
        "type": "object",
        "properties": props,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_warn(file: Value, envs: &[(&str, &str)]) -> Result<(Resolved, Vec<String>)> {
        let Value::Object(m) = file else {
            unreachable!()
        };
        resolve(Path::new("qwen.json"), &m, |k| {
            envs.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    fn resolve_with(file: Value, envs: &[(&str, &str)]) -> Result<Resolved> {
        resolve_warn(file, envs).map(|(values, _)| values)
    }

    fn warnings(file: Value) -> Vec<String> {
        match resolve_warn(file, &[]) {
            Ok((_, w)) => w,
            Err(e) => vec![format!("refused: {e}")],
        }
    }

    #[test]
    fn schema_key_is_ignored_and_unknown_keys_warn_naming_the_nearest() {
        assert_eq!(
            warnings(json!({"$schema": "https://example.com/qwen.json", "scope": "x"})),
            Vec::<String>::new()
        );
        let cases = [
            ("lock_timeout", "did you mean \"lock_timeout_seconds\"?"),
            (
                "lock_timeout_secs",
                "did you mean \"lock_timeout_seconds\"?",
            ),
            (
                "http-timeout-seconds",
                "did you mean \"http_timeout_seconds\"?",
            ),
            ("Sync_Qwen_CLI", "did you mean \"sync_qwen_cli\"?"),
            (
                "acount_selection_strategy",
                "did you mean \"account_selection_strategy\"?",
            ),
            ("clientid", "did you mean \"client_id\"?"),
            ("$schemas", "nearest known key is"),
            ("max_accounts", "nearest known key is"),
            ("zzz", "nearest known key is"),
        ];
        for (key, says) in cases {
            let w = warnings(json!({ key: 1 }));
            assert_eq!(w.len(), 1, "{key}: {w:?}");
            assert!(
                w[0].starts_with(&format!("qwen.json: unknown key {key:?} ignored"))
                    && w[0].contains(says)
                    && !w[0].contains('\n'),
                "{key}: {w:?}"
            );
        }
        // A far-off key is named as the nearest, never as the one meant.
        let w = warnings(json!({"max_accounts": 1}));
        assert!(!w[0].contains("did you mean"), "{w:?}");
        // Known keys still validate next to unknown ones.
        let e = resolve_with(json!({"typo": 1, "http_timeout_seconds": 0}), &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("http_timeout_seconds: invalid value \"0\""),
            "{e}"
        );
    }

    #[test]
    fn many_or_long_unknown_keys_stay_a_few_short_lines() {
        let mut m = Map::new();
        for i in 0..1000 {
            m.insert(format!("key_{i}"), json!(i));
        }
        let long = "x".repeat(100_000);
        m.insert(long.clone(), json!(1));
        m.insert("bell\u{7}\nline".into(), json!(1));
        let w = warnings(Value::Object(m));
        assert_eq!(w.len(), MAX_UNKNOWN_WARNINGS + 1, "{w:?}");
        assert!(w
            .last()
            .is_some_and(|l| l.contains("997 more unknown keys ignored")));
        assert!(
            w.iter().all(|l| l.len() < 300 && !l.contains('\n')),
            "{w:?}"
        );
        let w = warnings(json!({ long: 1 }));
        assert!(
            w[0].contains(&format!("{:?}...", "x".repeat(MAX_KEY_CHARS))),
            "{w:?}"
        );
        let w = warnings(json!({"bell\u{7}\nline": 1}));
        assert!(w[0].contains("\"bell\\u{7}\\nline\""), "{w:?}");
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("scope", "scoop"), 2);
        assert_eq!(edit_distance("é", "e"), 1);
    }

    #[test]
    fn the_schema_allows_schema_and_unknown_keys() {
        let s = schema();
        assert!(s.get("additionalProperties").is_none(), "{s}");
        assert!(s["description"]
            .as_str()
            .is_some_and(|d| d.contains("$schema") && d.contains("warning")));
    }

    #[test]
    fn defaults_are_valid_and_match_the_schema() {
        let vals = resolve_with(json!({}), &[]).unwrap_or_default();
        assert_eq!(vals.len(), KEYS.len());
        let schema = schema();
        for (k, v, s) in vals {
            assert_eq!(s, Source::Default);
            assert_eq!(schema["properties"][k]["default"], v);
        }
    }

    #[test]
    fn settings_are_typed_from_the_resolved_values() {
        let vals = resolve_with(
            json!({"hybrid_rotation_requests": 7, "sync_qwen_cli": false}),
            &[("scope", "openid email")],
        )
        .unwrap_or_default();
        let s = Settings::from_resolved(&vals);
        assert_eq!(s.hybrid_rotation_requests, 7);
        assert!(!s.sync_qwen_cli);
        assert_eq!(s.scope, "openid email");
        assert_eq!(s.lock_timeout_seconds, 30);
        assert_eq!(s.account_selection_strategy, "sticky");
    }

    #[test]
    fn env_beats_file_beats_default() {
        let vals = resolve_with(
            json!({"hybrid_rotation_requests": 7, "lock_timeout_seconds": 9}),
            &[("lock_timeout_seconds", "3")],
        )
        .unwrap_or_default();
        let get = |n: &str| vals.iter().find(|(k, _, _)| *k == n).cloned();
        assert_eq!(
            get("hybrid_rotation_requests").map(|x| (x.1, x.2)),
            Some((json!(7), Source::File))
        );
        assert_eq!(
            get("lock_timeout_seconds").map(|x| (x.1, x.2)),
            Some((json!(3), Source::Env))
        );
        assert_eq!(get("scope").map(|x| x.2), Some(Source::Default));
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let cases = [
            (
                json!({"account_selection_strategy": "random"}),
                "account_selection_strategy",
                "random",
            ),
            (
                json!({"http_timeout_seconds": 0}),
                "http_timeout_seconds",
                "0",
            ),
            (
                json!({"http_timeout_seconds": -3}),
                "http_timeout_seconds",
                "-3",
            ),
            (json!({"sync_qwen_cli": "yes"}), "sync_qwen_cli", "yes"),
            (
                json!({"quota_reset_time": "24:00"}),
                "quota_reset_time",
                "24:00",
            ),
            (
                json!({"quota_reset_utc_offset": "8"}),
                "quota_reset_utc_offset",
                "8",
            ),
            (
                json!({"oauth_base_url": "http://example.com"}),
                "oauth_base_url",
                "http://example.com",
            ),
        ];
        for (file, key, value) in cases {
            let msg = resolve_with(file, &[])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(msg.contains(key) && msg.contains(value), "{msg}");
        }
        let msg = resolve_with(json!({}), &[("max_rate_limit_wait_seconds", "soon")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("QWEN_CRED_MAX_RATE_LIMIT_WAIT_SECONDS") && msg.contains("soon"),
            "{msg}"
        );
    }
}

/// Properties of reading `qwen.json` and `QWEN_CRED_*` over generated input (README,
/// Property tests).
#[cfg(test)]
mod proptests {
    use super::*;
    use crate::strategies::{apply, edits, json, number, other_types, retype, text, to_bytes};
    use proptest::collection::vec;
    use proptest::option;
    use proptest::prelude::*;
    use proptest::sample::{select, Index};

    /// `qwen.json` bytes and an environment (key name -> text) through the same steps as
    /// `Config::load`.
    fn parse_text(bytes: &[u8], env: &[(String, String)]) -> Result<Resolved> {
        let path = Path::new("qwen.json");
        let file = parse_config_file(bytes, path)?;
        let env_of = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        resolve(path, &file, env_of).map(|(values, _)| values)
    }

    /// A value `ty` allows.
    fn valid_value(ty: Ty) -> BoxedStrategy<Value> {
        match ty {
            Ty::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
            Ty::Int { min, max } => prop_oneof![Just(min), Just(max), min..=max]
                .prop_map(Value::from)
                .boxed(),
            Ty::Enum(names) => select(names).prop_map(Value::from).boxed(),
            Ty::ClockTime => (0u8..24, 0u8..60)
                .prop_map(|(h, m)| Value::from(format!("{h:02}:{m:02}")))
                .boxed(),
            Ty::Offset => (select(&["+", "-"][..]), 0u8..24, 0u8..60)
                .prop_map(|(sign, h, m)| Value::from(format!("{sign}{h:02}:{m:02}")))
                .boxed(),
            Ty::Url => select(
                &[
                    "https://chat.qwen.ai",
                    "https://a.example/",
                    "http://127.0.0.1:1234",
                    "http://localhost:9",
                    "http://[::1]:80",
                ][..],
            )
            .prop_map(Value::from)
            .boxed(),
            Ty::Resource | Ty::Text => any::<u64>()
                .prop_map(|n| Value::from(format!("v{n}")))
                .boxed(),
        }
    }

    /// How `v` is spelt in a `QWEN_CRED_<KEY>` variable; `alt` picks among the spellings.
    fn env_text(v: &Value, alt: u8) -> String {
        match v {
            Value::Bool(true) => ["true", "1"][usize::from(alt % 2)].into(),
            Value::Bool(false) => ["false", "0"][usize::from(alt % 2)].into(),
            Value::String(s) => s.clone(),
            Value::Number(n) if alt.is_multiple_of(3) => format!(" {n} "),
            other => other.to_string(),
        }
    }

    /// Where one key's value comes from.
    #[derive(Debug, Clone)]
    enum Choice {
        Default,
        File(Value),
        /// The variable wins over a file value, if there is one.
        Env(Value, u8, Option<Value>),
    }

    /// One `Choice` per key, in `KEYS` order.
    fn choices() -> impl Strategy<Value = Vec<Choice>> {
        KEYS.iter()
            .map(|k| {
                let v = || valid_value(k.ty);
                prop_oneof![
                    Just(Choice::Default),
                    v().prop_map(Choice::File),
                    (v(), any::<u8>(), option::weighted(0.5, v()))
                        .prop_map(|(v, alt, file)| Choice::Env(v, alt, file)),
                ]
            })
            .collect::<Vec<_>>()
    }

    /// The file, the environment and what they resolve to, with env > file > default.
    fn build(choices: &[Choice]) -> (Map<String, Value>, Vec<(String, String)>, Resolved) {
        let (mut file, mut env, mut want) = (Map::new(), Vec::new(), Vec::new());
        for (key, c) in KEYS.iter().zip(choices) {
            let name = key.name;
            let (v, src) = match c {
                Choice::Default => (default_value(key.default), Source::Default),
                Choice::File(v) => {
                    file.insert(name.to_string(), v.clone());
                    (v.clone(), Source::File)
                }
                Choice::Env(v, alt, in_file) => {
                    if let Some(f) = in_file {
                        file.insert(name.to_string(), f.clone());
                    }
                    env.push((name.to_string(), env_text(v, *alt)));
                    (v.clone(), Source::Env)
                }
            };
            want.push((name, v, src));
        }
        (file, env, want)
    }

    /// Damage to one key (picked by the `Index`) of the file or the environment.
    #[derive(Debug, Clone)]
    enum Damage {
        /// A value of another JSON type than the key's default.
        Retype(Vec<Value>, Index),
        Any(Value),
        /// Any number: edges of every integer type, fractions.
        Number(Value),
        UnknownKey(String, Value),
        /// The variable's text: any text, or any number's.
        EnvText(String),
        Nothing,
    }

    fn damage() -> impl Strategy<Value = (Index, Damage)> {
        let kind = prop_oneof![
            (other_types(), any::<Index>()).prop_map(|(c, i)| Damage::Retype(c, i)),
            json(2).prop_map(Damage::Any),
            number().prop_map(Damage::Number),
            (text(), json(1)).prop_map(|(k, v)| Damage::UnknownKey(k, v)),
            prop_oneof![text(), number().prop_map(|n| n.to_string())].prop_map(Damage::EnvText),
            Just(Damage::Nothing),
        ];
        (any::<Index>(), kind)
    }

    /// Whether an accepted value is one the published schema allows, and one the typed
    /// getters read.
    fn check_value(key: &Key, v: &Value, p: &Value) -> std::result::Result<(), TestCaseError> {
        let name = key.name;
        if let Some(names) = p["enum"].as_array() {
            prop_assert!(names.contains(v), "{}: {}", name, v);
        }
        match p["type"].as_str() {
            Some("boolean") => prop_assert!(v.is_boolean(), "{}: {}", name, v),
            Some("integer") => {
                let n = v.as_i64().unwrap_or(i64::MIN);
                prop_assert!(
                    p["minimum"].as_i64() <= Some(n) && Some(n) <= p["maximum"].as_i64(),
                    "{}: {}",
                    name,
                    v
                );
                prop_assert!(v.as_u64().is_some(), "{}: {} is read as u64", name, v);
            }
            _ => {
                let s = v.as_str().unwrap_or_default();
                prop_assert!(!s.trim().is_empty(), "{}: {}", name, v);
                match key.ty {
                    Ty::ClockTime => {
                        prop_assert!(crate::rotation::parse_reset_time(s).is_some(), "{}", s)
                    }
                    Ty::Offset => {
                        prop_assert!(crate::rotation::parse_utc_offset(s).is_some(), "{}", s)
                    }
                    Ty::Url => prop_assert!(crate::oauth::check_url(s).is_ok(), "{}", s),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Any valid file and environment is accepted, each key resolved env > file >
        /// default.
        #[test]
        fn config_valid_is_accepted_env_over_file_over_default(
            choices in choices(),
            pretty in any::<bool>(),
        ) {
            let (file, env, want) = build(&choices);
            let text = to_bytes(&Value::Object(file), pretty);
            let got = parse_text(&text, &env).map_err(|e| {
                TestCaseError::fail(format!(
                    "a valid config was refused: {e}\n{}",
                    String::from_utf8_lossy(&text)
                ))
            })?;
            prop_assert_eq!(got, want);
        }

        /// A damaged config (a value of another type, any JSON, an unknown key, bad variable
        /// text, damaged or random bytes) either loads, every value fitting the schema and
        /// readable by the getters every command uses, or is exit 6 naming qwen.json or the
        /// QWEN_CRED_ variable; never a panic.
        #[test]
        fn config_damaged_loads_within_the_schema_or_names_the_problem(
            choices in choices(),
            (at, damage) in damage(),
            pretty in any::<bool>(),
            edits in option::weighted(0.33, edits()),
            junk in option::weighted(0.1, vec(any::<u8>(), 0..=64)),
        ) {
            let (mut file, mut env, _) = build(&choices);
            let key = at.get(KEYS);
            match damage {
                Damage::Retype(candidates, i) => {
                    let v = retype(&default_value(key.default), &candidates, i);
                    file.insert(key.name.to_string(), v);
                }
                Damage::Any(v) | Damage::Number(v) => {
                    file.insert(key.name.to_string(), v);
                }
                Damage::UnknownKey(k, v) => {
                    file.insert(k, v);
                }
                Damage::EnvText(t) => {
                    env.retain(|(n, _)| n != key.name);
                    env.push((key.name.to_string(), t));
                }
                Damage::Nothing => {}
            }
            let mut text = to_bytes(&Value::Object(file), pretty);
            if let Some(e) = &edits {
                text = apply(text, e);
            }
            if let Some(j) = junk {
                text = j;
            }
            match parse_text(&text, &env) {
                Ok(values) => {
                    let schema = schema();
                    prop_assert_eq!(values.len(), KEYS.len());
                    for (key, (k, v, _)) in KEYS.iter().zip(&values) {
                        prop_assert_eq!(key.name, *k);
                        prop_assert!(schema["properties"][*k].is_object(), "{}", k);
                        check_value(key, v, &schema["properties"][*k])?;
                    }
                    // The typed getters behind every command must not trip on what was
                    // accepted.
                    let cfg = Config {
                        settings: Settings::from_resolved(&values),
                        values,
                        dir: PathBuf::new(),
                        pool: crate::pool::Pool::new(Path::new(""), None),
                        config_path: PathBuf::new(),
                        qwen_dir: PathBuf::new(),
                        opencode_auth_file: PathBuf::new(),
                        account_id_env: None,
                        browser: None,
                        has_display: false,
                        debug: false,
                    };
                    let _ = cfg.rotation_policy();
                    let _ = cfg.oauth_settings();
                    let _ = cfg.lock_timeout();
                }
                Err(e) => {
                    prop_assert_eq!(e.exit_code(), 6);
                    let msg = e.to_string();
                    prop_assert!(
                        msg.starts_with("qwen.json") || msg.starts_with("QWEN_CRED_"),
                        "{}",
                        msg
                    );
                }
            }
        }
    }
}
