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

/// The single source of truth for configuration keys (files.md).
const KEYS: &[Key] = &[
    Key {
        name: "account_selection_strategy",
        ty: Ty::Enum(&crate::rotation::Strategy::NAMES),
        default: Def::Str("sticky"),
        about: "How token picks an account: sticky, round-robin, least-used or hybrid.",
    },
    Key {
        name: "hybrid_rotation_requests",
        ty: Ty::Int { min: 1, max: U32 },
        default: Def::Int(50),
        about: "hybrid: move on after this many tokens from one account.",
    },
    Key {
        name: "switch_on_first_rate_limit",
        ty: Ty::Bool,
        default: Def::Bool(true),
        about: "false: the first 429 without hint waits the backoff and retries the same account.",
    },
    Key {
        name: "retry_same_account_threshold_seconds",
        ty: Ty::Int { min: 0, max: 3600 },
        default: Def::Int(5),
        about: "A Retry-After at or under this is waited out on the same account.",
    },
    Key {
        name: "exponential_backoff_base_ms",
        ty: Ty::Int {
            min: 1,
            max: 86_400_000,
        },
        default: Def::Int(1000),
        about: "Cooldown after a 429 with no hint: base x 2^(n-1).",
    },
    Key {
        name: "exponential_backoff_max_ms",
        ty: Ty::Int {
            min: 1,
            max: 86_400_000,
        },
        default: Def::Int(32000),
        about: "Cap of the no-hint backoff.",
    },
    Key {
        name: "max_rate_limit_wait_seconds",
        ty: Ty::Int {
            min: 0,
            max: 86_400,
        },
        default: Def::Int(300),
        about: "How long token/report-429 may wait when all accounts cool down; 0 = never wait.",
    },
    Key {
        name: "quota_reset_time",
        ty: Ty::ClockTime,
        default: Def::Str("00:00"),
        about: "Local time (HH:MM) of the daily quota reset.",
    },
    Key {
        name: "quota_reset_utc_offset",
        ty: Ty::Offset,
        default: Def::Str("+08:00"),
        about: "UTC offset (+HH:MM) of quota_reset_time.",
    },
    Key {
        name: "proactive_token_refresh",
        ty: Ty::Bool,
        default: Def::Bool(true),
        about: "Refresh a token when it is due, not only when expired.",
    },
    Key {
        name: "proactive_refresh_buffer_seconds",
        ty: Ty::Int {
            min: 0,
            max: 86_400,
        },
        default: Def::Int(1800),
        about: "How early before expiry a token is due.",
    },
    Key {
        name: "proactive_refresh_check_interval_seconds",
        ty: Ty::Int {
            min: 1,
            max: 86_400,
        },
        default: Def::Int(300),
        about: "How often token may start a background refresh of other due accounts.",
    },
    Key {
        name: "token_refresh_retry_attempts",
        ty: Ty::Int { min: 1, max: 10 },
        default: Def::Int(3),
        about: "Attempts for a transient refresh failure.",
    },
    Key {
        name: "token_refresh_retry_delay_ms",
        ty: Ty::Int {
            min: 0,
            max: 60_000,
        },
        default: Def::Int(2000),
        about: "First retry delay of a refresh, doubling.",
    },
    Key {
        name: "http_timeout_seconds",
        ty: Ty::Int { min: 1, max: 600 },
        default: Def::Int(30),
        about: "Whole-request timeout for OAuth calls.",
    },
    Key {
        name: "lock_timeout_seconds",
        ty: Ty::Int { min: 0, max: 3600 },
        default: Def::Int(30),
        about: "How long to wait for a lock before giving up (exit 6).",
    },
    Key {
        name: "oauth_base_url",
        ty: Ty::Url,
        default: Def::Str("https://chat.qwen.ai"),
        about: "OAuth server.",
    },
    Key {
        name: "client_id",
        ty: Ty::Text,
        default: Def::Str("f0304373b74a44d2b584a3fb70ca9e56"),
        about: "OAuth client id.",
    },
    Key {
        name: "scope",
        ty: Ty::Text,
        default: Def::Str("openid profile email model.completion"),
        about: "OAuth scope.",
    },
    Key {
        name: "default_resource_url",
        ty: Ty::Resource,
        default: Def::Str("portal.qwen.ai"),
        about: "API host when a token has none.",
    },
    Key {
        name: "sync_qwen_cli",
        ty: Ty::Bool,
        default: Def::Bool(true),
        about: "Keep an account imported from the Qwen CLI in step with its file.",
    },
];

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
    /// Each key's effective value and where it came from, in table order.
    pub values: Vec<(&'static str, Value, Source)>,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    /// `QWEN_CRED_QWEN_DIR`, else `$QWEN_HOME` (the Qwen CLI's override), else `~/.qwen`.
    pub qwen_dir: PathBuf,
    /// OpenCode's credentials: `$XDG_DATA_HOME/opencode/auth.json`, else
    /// `~/.local/share/opencode/auth.json`.
    pub opencode_auth_file: PathBuf,
    /// `QWEN_CRED_ACCOUNT_ID`: default account of report-429.
    pub account_id_env: Option<String>,
    /// `$BROWSER`.
    pub browser: Option<String>,
    /// A graphical session to open a browser in (`DISPLAY`/`WAYLAND_DISPLAY`; always on macOS).
    pub has_display: bool,
    /// `QWEN_CRED_LOG=debug`.
    pub debug: bool,
}

impl Config {
    /// Reads the environment and `qwen.json`. Every problem is exit 6 naming key and value.
    pub fn load() -> Result<Config> {
        let (cfg, problem) = Config::load_lenient()?;
        problem.map_or(Ok(cfg), Err)
    }

    /// As `load`, but a bad `qwen.json` or `QWEN_CRED_<KEY>` value comes back beside a config
    /// of defaults (the paths as usual), so that `doctor` can go on and report it.
    pub fn load_lenient() -> Result<(Config, Option<Error>)> {
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
        let config_path = dir.join("qwen.json");
        let read = read_config_file(&config_path)
            .and_then(|file| resolve(&config_path, &file, |k| env(&env_name(k))));
        let (values, problem) = match read {
            Ok(v) => (v, None),
            Err(e) => (resolve(&config_path, &Map::new(), |_| None)?, Some(e)),
        };
        let cfg = Config {
            values,
            dir,
            config_path,
            qwen_dir,
            opencode_auth_file,
            account_id_env: env("QWEN_CRED_ACCOUNT_ID"),
            browser: env("BROWSER"),
            has_display: cfg!(target_os = "macos")
                || env("DISPLAY").is_some()
                || env("WAYLAND_DISPLAY").is_some(),
            debug: env("QWEN_CRED_LOG").is_some_and(|v| v.eq_ignore_ascii_case("debug")),
        };
        Ok((cfg, problem))
    }

    pub fn store_path(&self) -> PathBuf {
        crate::store::path(&self.dir)
    }

    pub fn qwen_cli_file(&self) -> PathBuf {
        self.qwen_dir.join("oauth_creds.json")
    }

    fn get(&self, name: &str) -> &Value {
        match self.values.iter().find(|(k, _, _)| *k == name) {
            Some((_, v, _)) => v,
            None => unreachable!("config key {name} is not in the table"),
        }
    }

    pub fn bool(&self, name: &str) -> bool {
        self.get(name).as_bool().unwrap_or_default()
    }

    pub fn int(&self, name: &str) -> u64 {
        self.get(name).as_u64().unwrap_or_default()
    }

    pub fn str(&self, name: &str) -> &str {
        self.get(name).as_str().unwrap_or_default()
    }

    pub fn secs(&self, name: &str) -> Duration {
        Duration::from_secs(self.int(name))
    }

    pub fn lock_timeout(&self) -> Duration {
        self.secs("lock_timeout_seconds")
    }

    pub fn rotation_policy(&self) -> crate::rotation::Policy {
        use crate::rotation::{parse_reset_time, parse_utc_offset, Policy, QuotaReset, Strategy};
        // Validated in resolve(), so the fallbacks are never taken.
        let (hour, minute) = parse_reset_time(self.str("quota_reset_time")).unwrap_or((0, 0));
        Policy {
            strategy: Strategy::parse(self.str("account_selection_strategy"))
                .unwrap_or(Strategy::Sticky),
            hybrid_rotation_requests: self.int("hybrid_rotation_requests"),
            switch_on_first_rate_limit: self.bool("switch_on_first_rate_limit"),
            retry_same_account_threshold_seconds: self.int("retry_same_account_threshold_seconds"),
            backoff_base_ms: self.int("exponential_backoff_base_ms"),
            backoff_max_ms: self.int("exponential_backoff_max_ms"),
            quota_reset: QuotaReset {
                hour,
                minute,
                offset: parse_utc_offset(self.str("quota_reset_utc_offset"))
                    .unwrap_or(time::UtcOffset::UTC),
            },
            proactive_token_refresh: self.bool("proactive_token_refresh"),
            proactive_refresh_buffer_seconds: self.int("proactive_refresh_buffer_seconds"),
        }
    }

    pub fn oauth_settings(&self) -> crate::oauth::Settings {
        crate::oauth::Settings {
            oauth_base_url: self.str("oauth_base_url").trim_end_matches('/').to_string(),
            client_id: self.str("client_id").to_string(),
            scope: self.str("scope").to_string(),
            http_timeout: self.secs("http_timeout_seconds"),
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

/// `QWEN_CRED_<KEY>`, upper-cased.
pub fn env_name(key: &str) -> String {
    format!("QWEN_CRED_{}", key.to_ascii_uppercase())
}

/// A missing config file is an empty one.
fn read_config_file(path: &Path) -> Result<Map<String, Value>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
        Err(e) => return Err(Error::io("cannot read", path, e)),
    };
    parse_config_file(&text, path)
}

/// The config file's bytes as a JSON object; `path` only names the file in errors.
fn parse_config_file(text: &[u8], path: &Path) -> Result<Map<String, Value>> {
    if text.starts_with(b"\xEF\xBB\xBF") {
        return Err(Error::File(format!(
            "{}: starts with a UTF-8 byte order mark; remove it",
            path.display()
        )));
    }
    let text = std::str::from_utf8(text)
        .map_err(|_| Error::File(format!("{}: not valid UTF-8", path.display())))?;
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::File(format!(
            "{}: expected a JSON object",
            path.display()
        ))),
        Err(e) => Err(Error::File(format!(
            "{}: not valid JSON: {e}",
            path.display()
        ))),
    }
}

/// Applies env > file > default for every key, validating each value.
fn resolve(
    path: &Path,
    file: &Map<String, Value>,
    env_of: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(&'static str, Value, Source)>> {
    if let Some(unknown) = file.keys().find(|k| !KEYS.iter().any(|key| key.name == *k)) {
        return Err(Error::File(format!(
            "{}: unknown key \"{unknown}\" (see qwen-cred config --schema)",
            path.display()
        )));
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
    Ok(out)
}

/// `qwen.json` bytes plus an environment, through the same steps as `Config::load`: the one
/// door the randomised tests (fuzz_tests.rs) use to reach the private parser.
#[cfg(test)]
pub(crate) fn parse_config_text(
    bytes: &[u8],
    env_of: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(&'static str, Value, Source)>> {
    let path = Path::new("qwen.json");
    resolve(path, &parse_config_file(bytes, path)?, env_of)
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
        "type": "object",
        "additionalProperties": false,
        "properties": props,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_with(
        file: Value,
        envs: &[(&str, &str)],
    ) -> Result<Vec<(&'static str, Value, Source)>> {
        let Value::Object(m) = file else {
            unreachable!()
        };
        resolve(Path::new("qwen.json"), &m, |k| {
            envs.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
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
            (json!({"typo_key": 1}), "typo_key", "unknown key"),
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
