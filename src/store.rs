//! The account store `qwen-accounts.json`: its schema, validation with messages that name the
//! field, unknown-field passthrough, and atomic 0600 writes (files.md). Callers hold the store
//! lock (lock.rs) around every load-modify-save.

use crate::error::{Error, Result};
use crate::secret::Secret;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

pub const STORE_VERSION: &str = "1.0";
pub const MAX_ACCOUNTS: usize = 10;
/// The latest time a store may hold (end of year 9999, Unix ms): keeps every sum of times
/// from overflowing and every time printable.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;
/// Now as Unix milliseconds, the one clock of the program (rotation takes it as an argument).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `t` made fit for the store: 0 to the end of year 9999.
pub fn clamp_time(t: i64) -> i64 {
    t.clamp(0, MAX_TIME_MS)
}

/// The largest counter a store may hold (JSON readers beyond this lose precision).
pub const MAX_COUNT: u64 = i64::MAX as u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Revoked,
}

/// What an account holds: an OAuth login (the seed format; `kind` absent) or an API key,
/// which has no refresh token and never expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OAuth,
    ApiKey,
}

impl Kind {
    /// The store's spelling of `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OAuth => "oauth",
            Kind::ApiKey => "api_key",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    pub id: String,
    pub kind: Kind,
    /// A name the user gave the account, shown by `list`.
    pub label: Option<String>,
    /// Empty when unknown; shown as a fingerprint then.
    pub email: String,
    /// The bearer token: an OAuth access token, or a key account's API key.
    pub access_token: Secret,
    /// Empty for a key account (in the file: absent).
    pub refresh_token: Secret,
    pub token_type: String,
    pub resource_url: Option<String>,
    /// Unix ms. A key account never expires: `MAX_TIME_MS` (in the file: absent).
    pub expiry_date: i64,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub total_requests: u64,
    /// Cooling down until this instant (Unix ms); past or `None` means not cooling down. Kept
    /// after it passes: the backoff reset rule needs the end of the previous cooldown.
    pub rate_limit_resets_at: Option<i64>,
    pub is_primary: bool,
    /// `quota`, `retry-after` or `backoff`.
    pub rate_limit_reason: Option<String>,
    pub consecutive_rate_limits: u32,
    /// When the current cooldown was set (Unix ms): the 2 s idempotence window of report-429.
    pub last_rate_limited_at: Option<i64>,
    pub status: Status,
    pub status_reason: Option<String>,
    pub status_changed_at: Option<i64>,
    /// Path of the Qwen CLI file this account was imported from (sync_qwen_cli), as given:
    /// absolute, not resolved through symlinks.
    pub linked_file: Option<String>,
    /// SHA-256 (hex) of the refresh token that file held when it was last imported, adopted
    /// or seen to agree with this account: a different one there means the Qwen CLI has
    /// refreshed since (qwen_cli.rs). Never the token itself.
    pub linked_refresh_fp: Option<String>,
    /// When a refresh last failed transiently (Unix ms): callers that queued behind that
    /// refresh do not repeat it at once.
    pub refresh_failed_at: Option<i64>,
    /// A key account's API base URL, used as it is (no `/v1` added).
    pub base_url: Option<String>,
    /// A key account's request headers besides `Authorization`, in the order given.
    pub headers: Vec<(String, String)>,
    /// Fields this version does not know, written back unchanged.
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Store {
    pub version: String,
    pub max_accounts: usize,
    pub accounts: Vec<Account>,
    pub current_account_id: Option<String>,
    /// Tokens served in a row by the current account (hybrid strategy).
    pub current_streak: u64,
    /// Last time `token` started a background `refresh --due` (Unix ms).
    pub last_background_refresh_at: Option<i64>,
    /// SHA-256 (hex) of the refresh token of the Qwen CLI login last removed from the pool:
    /// `token` does not import that login again on its own.
    pub removed_qwen_cli_fp: Option<String>,
    /// Last time a Qwen CLI directory we could not write was reported (Unix ms).
    pub qwen_dir_unwritable_warned_at: Option<i64>,
    pub extra: Extra,
}

/// Fields this version does not know, in file order, each value kept as the exact JSON text
/// it was read as: other tools' numbers (`18446744073709551616`, `1e400`, `1.50`) and
/// nesting come back byte for byte, never reformatted or refused.
#[derive(Debug, Clone, Default)]
pub struct Extra(Vec<(String, Box<RawValue>)>);

impl PartialEq for Extra {
    fn eq(&self, other: &Extra) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|((k, v), (l, w))| k == l && v.get() == w.get())
    }
}

impl Extra {
    #[cfg(test)]
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }

    fn write<M: SerializeMap>(&self, m: &mut M) -> std::result::Result<(), M::Error> {
        self.0.iter().try_for_each(|(k, v)| m.serialize_entry(k, v))
    }
}

/// An object's members in file order with each value's text, not yet interpreted. A key given
/// twice keeps its first place and its last value, as a serde_json map does.
#[derive(Default)]
struct Members {
    list: Vec<(String, Option<Box<RawValue>>)>,
    // A B-tree, not a hash map: a few dozen short keys compare faster than SipHash hashes.
    index: BTreeMap<String, usize>,
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Members, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Members, A::Error> {
                let mut m = Members::default();
                while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                    match m.index.get(&k) {
                        Some(&i) => m.list[i].1 = Some(v),
                        None => {
                            m.index.insert(k.clone(), m.list.len());
                            m.list.push((k, Some(v)));
                        }
                    }
                }
                Ok(m)
            }
        }
        d.deserialize_map(V)
    }
}

impl Members {
    fn take(&mut self, key: &str) -> Option<Box<RawValue>> {
        let i = *self.index.get(key)?;
        self.list[i].1.take()
    }

    /// What was not taken.
    fn rest(self) -> Extra {
        Extra(
            self.list
                .into_iter()
                .filter_map(|(k, v)| Some((k, v?)))
                .collect(),
        )
    }
}

/// Reads one object's fields by name, taking each known one so that what is left is the
/// passthrough `extra`; errors name the file and the field path.
struct Fields<'a> {
    map: Members,
    at: String,
    file: &'a Path,
}

impl Fields<'_> {
    fn err(&self, key: &str, expected: &str) -> Error {
        let sep = if self.at.is_empty() { "" } else { "." };
        Error::File(format!(
            "{}: {}{sep}{key}: expected {expected}",
            self.file.display(),
            self.at
        ))
    }

    /// The value's JSON text. Missing -> `None`. `null` -> `None` only where `nullable`.
    /// Taking leaves the unknown fields in their order.
    fn take(&mut self, key: &str, nullable: bool, expected: &str) -> Result<Option<Box<RawValue>>> {
        let Some(raw) = self.map.take(key) else {
            return Ok(None);
        };
        match raw.get() {
            "null" if nullable => Ok(None),
            "null" => Err(self.err(key, expected)),
            _ => Ok(Some(raw)),
        }
    }

    fn string(&mut self, key: &str, nullable: bool) -> Result<Option<String>> {
        let Some(raw) = self.take(key, nullable, "a string")? else {
            return Ok(None);
        };
        // The text is valid JSON: a string without escapes is its own content.
        let text = raw.get();
        match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            Some(inner) if !inner.contains('\\') => Ok(Some(inner.to_string())),
            Some(_) => serde_json::from_str(text)
                .map(Some)
                .map_err(|_| self.err(key, "a string")),
            None => Err(self.err(key, "a string")),
        }
    }

    fn required_string(&mut self, key: &str) -> Result<String> {
        match self.string(key, false)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(self.err(key, "a non-empty string")),
        }
    }

    fn int(&mut self, key: &str, nullable: bool, max: i64, expected: &str) -> Result<Option<i64>> {
        match self.take(key, nullable, expected)? {
            None => Ok(None),
            // JSON integer text only: a fraction, an exponent or a string is refused.
            Some(raw) => match raw.get().parse::<i64>() {
                Ok(n) if (0..=max).contains(&n) => Ok(Some(n)),
                _ => Err(self.err(key, expected)),
            },
        }
    }

    /// A Unix-ms time, 0 to the end of year 9999 (keeps every later sum from overflowing).
    fn time(&mut self, key: &str, nullable: bool) -> Result<Option<i64>> {
        self.int(
            key,
            nullable,
            MAX_TIME_MS,
            "a number (Unix time in milliseconds)",
        )
    }

    /// A key account's `headers`: an object of names and string values, each a header line
    /// qwen-cred may print. Errors name the header, never its value (it may be a secret).
    fn headers(&self, raw: &RawValue) -> Result<Vec<(String, String)>> {
        let expected = "an object of header names and values";
        let map = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw.get())
            .map_err(|_| self.err("headers", expected))?;
        let mut out: Vec<(String, String)> = Vec::with_capacity(map.len());
        for (name, value) in map {
            let Some(value) = value.as_str() else {
                return Err(self.err(&format!("headers.{name:?}"), "a string"));
            };
            if let Err(why) = crate::apikey::check_header(&name, value) {
                return Err(self.err(&format!("headers.{name:?}"), &why));
            }
            if out.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)) {
                return Err(self.err(&format!("headers.{name:?}"), "one value per header name"));
            }
            out.push((name, value.to_string()));
        }
        Ok(out)
    }

    fn bool(&mut self, key: &str) -> Result<Option<bool>> {
        match self
            .take(key, false, "true or false")?
            .as_deref()
            .map(RawValue::get)
        {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(_) => Err(self.err(key, "true or false")),
        }
    }
}

use std::path::Path;

impl Store {
    pub fn empty() -> Store {
        Store {
            version: STORE_VERSION.to_string(),
            max_accounts: MAX_ACCOUNTS,
            accounts: Vec::new(),
            current_account_id: None,
            current_streak: 0,
            last_background_refresh_at: None,
            removed_qwen_cli_fp: None,
            qwen_dir_unwritable_warned_at: None,
            extra: Extra::default(),
        }
    }

    /// Parses and validates the store's bytes; `file` only names the file in errors. Empty or
    /// blank input is an empty pool.
    pub fn parse(bytes: &[u8], file: &Path) -> Result<Store> {
        let name = file.display();
        let Some(map) = crate::files::parse_json_object::<Members>(bytes, file)? else {
            return Ok(Store::empty());
        };
        let mut f = Fields {
            map,
            at: String::new(),
            file,
        };
        let version = f
            .string("version", false)?
            .unwrap_or_else(|| STORE_VERSION.to_string());
        let major = version
            .split('.')
            .next()
            .and_then(|m| m.parse::<u64>().ok());
        match major {
            Some(1) => {}
            Some(m) if m > 1 => {
                return Err(Error::File(format!(
                    "{name}: version {version:?} is newer than this qwen-cred understands (1.x); upgrade qwen-cred"
                )))
            }
            _ => return Err(f.err("version", "a version string like \"1.0\"")),
        }
        let max_accounts = f
            .int(
                "max_accounts",
                false,
                MAX_ACCOUNTS as i64,
                "a number from 1 to 10",
            )?
            .unwrap_or(MAX_ACCOUNTS as i64) as usize;
        if max_accounts == 0 {
            return Err(f.err("max_accounts", "a number from 1 to 10"));
        }
        let list = match f.map.take("accounts") {
            None => Vec::new(),
            Some(raw) => serde_json::from_str::<Vec<Box<RawValue>>>(raw.get())
                .map_err(|_| f.err("accounts", "an array"))?,
        };
        let mut accounts: Vec<Account> = Vec::with_capacity(list.len());
        for (i, raw) in list.iter().enumerate() {
            let Ok(map) = serde_json::from_str::<Members>(raw.get()) else {
                return Err(Error::File(format!(
                    "{name}: accounts[{i}]: expected an object"
                )));
            };
            let a = Account::parse(Fields {
                map,
                at: format!("accounts[{i}]"),
                file,
            })?;
            if accounts.iter().any(|b| b.id == a.id) {
                return Err(Error::File(format!(
                    // `{:?}` escapes control characters: the message stays one line.
                    "{name}: accounts[{i}].id: duplicate id {:?}",
                    a.id
                )));
            }
            accounts.push(a);
        }
        if accounts.len() > max_accounts {
            return Err(Error::File(format!(
                "{name}: {} accounts but max_accounts is {max_accounts}; remove some with qwen-cred remove",
                accounts.len()
            )));
        }
        let current_account_id = f.string("current_account_id", true)?;
        let current_streak = f
            .int("current_streak", false, i64::MAX, "a non-negative integer")?
            .unwrap_or(0) as u64;
        let last_background_refresh_at = f.time("last_background_refresh_at", true)?;
        let removed_qwen_cli_fp = f.string("removed_qwen_cli_fp", true)?;
        let qwen_dir_unwritable_warned_at = f.time("qwen_dir_unwritable_warned_at", true)?;
        Ok(Store {
            version,
            max_accounts,
            accounts,
            current_account_id,
            current_streak,
            last_background_refresh_at,
            removed_qwen_cli_fp,
            qwen_dir_unwritable_warned_at,
            extra: f.map.rest(),
        })
    }

    /// The store as JSON: known fields first, unknown ones after, unchanged.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Finds an account by id, or by email when that is unambiguous.
    pub fn find(&self, id: &str) -> Result<usize> {
        if let Some(i) = self.accounts.iter().position(|a| a.id == id) {
            return Ok(i);
        }
        let by_email: Vec<usize> = (0..self.accounts.len())
            .filter(|&i| !id.is_empty() && self.accounts[i].email == id)
            .collect();
        match by_email[..] {
            [i] => Ok(i),
            [] => Err(Error::Usage(format!(
                "no account \"{id}\"; accounts: {}",
                self.summary()
            ))),
            _ => Err(Error::Usage(format!(
                "\"{id}\" matches several accounts; use the id: {}",
                self.summary()
            ))),
        }
    }

    /// The index of the account with exactly this id (ids held across a lock release).
    pub fn find_id(&self, id: &str) -> Result<usize> {
        self.accounts
            .iter()
            .position(|a| a.id == id)
            .ok_or_else(|| Error::Usage(format!("account {id} was removed meanwhile")))
    }

    /// `1 a@example.com, 2 fp 1a2b3c4d`: how accounts are named in messages.
    pub fn summary(&self) -> String {
        if self.accounts.is_empty() {
            return "none".into();
        }
        self.accounts
            .iter()
            .map(|a| format!("{} {}", a.id, a.label()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The id for a new account: largest numeric id + 1 (the smallest unused number when a
    /// hand-edited id is already the largest number there is).
    pub fn next_id(&self) -> String {
        let ids: Vec<u64> = self
            .accounts
            .iter()
            .filter_map(|a| a.id.parse::<u64>().ok())
            .collect();
        let max = ids.iter().copied().max().unwrap_or(0);
        max.checked_add(1)
            .or_else(|| (1..).find(|n| !ids.contains(n)))
            .unwrap_or(1)
            .to_string()
    }

    /// Adds an account, refusing the one past `max_accounts` (exit 2) with the way out.
    pub fn add(&mut self, mut a: Account) -> Result<usize> {
        if self.accounts.len() >= self.max_accounts {
            return Err(self.full_error());
        }
        a.id = self.next_id();
        a.is_primary = self.accounts.is_empty();
        if self.current_account_id.is_none() {
            self.current_account_id = Some(a.id.clone());
        }
        self.accounts.push(a);
        Ok(self.accounts.len() - 1)
    }

    pub fn full_error(&self) -> Error {
        Error::Usage(format!(
            "the pool is full ({} of {} accounts: {}); replace one with `qwen-cred login --replace ID`, start over with `qwen-cred login --fresh`, or remove one with `qwen-cred remove ID`",
            self.accounts.len(),
            self.max_accounts,
            self.summary()
        ))
    }

    /// Removes the account at `idx`, moving `current` to the next one in store order.
    pub fn remove_at(&mut self, idx: usize) -> Account {
        let a = self.accounts.remove(idx);
        if self.current_account_id.as_deref() == Some(&a.id) {
            self.current_account_id = self
                .accounts
                .get(idx)
                .or_else(|| self.accounts.first())
                .map(|b| b.id.clone());
            self.current_streak = 0;
        }
        a
    }

    /// The OAuth account holding this refresh token (a key account holds none).
    pub fn index_by_refresh_token(&self, rt: &Secret) -> Option<usize> {
        self.accounts
            .iter()
            .position(|a| a.kind == Kind::OAuth && a.refresh_token == *rt)
    }

    /// The key account holding this API key.
    pub fn index_by_key(&self, key: &Secret) -> Option<usize> {
        self.accounts
            .iter()
            .position(|a| a.kind == Kind::ApiKey && a.access_token == *key)
    }
}

impl Account {
    /// A fresh account from a token grant; id and is_primary are set by `Store::add`.
    pub fn new(access: Secret, refresh: Secret, expiry_date: i64, now: i64) -> Account {
        Account {
            id: String::new(),
            kind: Kind::OAuth,
            label: None,
            email: String::new(),
            access_token: access,
            refresh_token: refresh,
            token_type: "Bearer".into(),
            resource_url: None,
            expiry_date,
            created_at: now,
            last_used_at: None,
            total_requests: 0,
            rate_limit_resets_at: None,
            is_primary: false,
            rate_limit_reason: None,
            consecutive_rate_limits: 0,
            last_rate_limited_at: None,
            status: Status::Active,
            status_reason: None,
            status_changed_at: None,
            linked_file: None,
            linked_refresh_fp: None,
            refresh_failed_at: None,
            base_url: None,
            headers: Vec::new(),
            extra: Extra::default(),
        }
    }

    /// A fresh key account; id and is_primary are set by `Store::add`.
    pub fn new_key(
        key: Secret,
        base_url: String,
        headers: Vec<(String, String)>,
        now: i64,
    ) -> Account {
        let mut a = Account::new(key, Secret::default(), MAX_TIME_MS, now);
        a.kind = Kind::ApiKey;
        a.base_url = Some(base_url);
        a.headers = headers;
        a
    }

    pub fn is_key(&self) -> bool {
        self.kind == Kind::ApiKey
    }

    /// A short, stable name for the account's secret (the key, or the refresh token): 8 hex
    /// digits of its SHA-256, never the secret.
    pub fn fingerprint(&self) -> String {
        match self.kind {
            Kind::ApiKey => self.access_token.fingerprint(),
            Kind::OAuth => self.refresh_token.fingerprint(),
        }
    }

    /// Marks the account revoked by its server, with `reason` (already redacted of every
    /// secret), and says so once on stderr. Never tried again until a login or a new key.
    pub fn revoke(&mut self, reason: &str, now: i64) {
        self.status = Status::Revoked;
        self.status_reason = Some(reason.to_string());
        self.status_changed_at = Some(now);
        crate::msg::warn(&format!(
            "account {} ({}) was revoked by the server ({reason}); run {} to sign it in again",
            self.id,
            self.label(),
            self.relogin_hint()
        ));
    }

    /// What to run to sign a revoked account in again: a login finds it by email, so one
    /// without an email needs `--replace`; a key account takes a new key in its place.
    pub fn relogin_hint(&self) -> String {
        if self.is_key() {
            format!("qwen-cred add-key --replace {}", self.id)
        } else if self.email.is_empty() {
            format!("qwen-cred login --replace {}", self.id)
        } else {
            "qwen-cred login".into()
        }
    }

    /// The email, else a fingerprint of the refresh token (never the token); a key account
    /// by its label and the key's fingerprint (never the key).
    pub fn label(&self) -> String {
        if self.is_key() {
            let fp = self.access_token.fingerprint();
            match &self.label {
                Some(l) => format!("{l} (key {fp})"),
                None => format!("key {fp}"),
            }
        } else if self.email.is_empty() {
            format!("fp {}", self.refresh_token.fingerprint())
        } else {
            self.email.clone()
        }
    }

    fn parse(mut f: Fields) -> Result<Account> {
        let id = f.required_string("id")?;
        let kind = match f.string("kind", true)?.as_deref() {
            None | Some("oauth") => Kind::OAuth,
            Some("api_key") => Kind::ApiKey,
            Some(_) => return Err(f.err("kind", "\"oauth\" or \"api_key\"")),
        };
        let label = f.string("label", true)?;
        let email = f.string("email", true)?.unwrap_or_default();
        let access_token = Secret::new(f.required_string("access_token")?);
        let token_type = f
            .string("token_type", true)?
            .unwrap_or_else(|| "Bearer".into());
        // A key account has no refresh token, expiry or resource_url (such fields are kept
        // as unknown ones); an OAuth account has no base_url or headers of its own.
        let (refresh_token, resource_url, expiry_date, base_url, headers) = match kind {
            Kind::OAuth => {
                let refresh_token = Secret::new(f.required_string("refresh_token")?);
                let resource_url = f.string("resource_url", true)?.filter(|s| !s.is_empty());
                let expiry_date = f
                    .time("expiry_date", false)?
                    .ok_or_else(|| f.err("expiry_date", "a number (Unix time in milliseconds)"))?;
                (refresh_token, resource_url, expiry_date, None, Vec::new())
            }
            Kind::ApiKey => {
                // A key goes into a header line: whitespace or a control character would
                // inject another one.
                if crate::apikey::check_key(access_token.expose()).is_err() {
                    return Err(f.err(
                        "access_token",
                        "an API key (visible ASCII characters, no spaces)",
                    ));
                }
                let base = f.string("base_url", false)?.unwrap_or_default();
                let base = crate::apikey::check_base_url(&base).map_err(|_| {
                    f.err(
                        "base_url",
                        "an https:// URL (http:// only to a loopback host)",
                    )
                })?;
                let headers =
                    match f.take("headers", true, "an object of header names and values")? {
                        None => Vec::new(),
                        Some(raw) => f.headers(&raw)?,
                    };
                (Secret::default(), None, MAX_TIME_MS, Some(base), headers)
            }
        };
        let created_at = f.time("created_at", true)?.unwrap_or(0);
        let last_used_at = f.time("last_used_at", true)?;
        let total_requests = f
            .int("total_requests", false, i64::MAX, "a non-negative integer")?
            .unwrap_or(0) as u64;
        let rate_limit_resets_at = f.time("rate_limit_resets_at", true)?;
        let is_primary = f.bool("is_primary")?.unwrap_or(false);
        let rate_limit_reason = f.string("rate_limit_reason", true)?;
        let consecutive_rate_limits = f
            .int(
                "consecutive_rate_limits",
                false,
                u32::MAX as i64,
                "a non-negative integer",
            )?
            .unwrap_or(0) as u32;
        let last_rate_limited_at = f.time("last_rate_limited_at", true)?;
        let status = match f.string("status", false)?.as_deref() {
            None | Some("active") => Status::Active,
            Some("revoked") => Status::Revoked,
            Some(_) => return Err(f.err("status", "\"active\" or \"revoked\"")),
        };
        let status_reason = f.string("status_reason", true)?;
        let status_changed_at = f.time("status_changed_at", true)?;
        let refresh_failed_at = f.time("refresh_failed_at", true)?;
        let linked_file = f.string("linked_file", true)?;
        let linked_refresh_fp = f.string("linked_refresh_fp", true)?;
        Ok(Account {
            id,
            kind,
            label,
            email,
            access_token,
            refresh_token,
            token_type,
            resource_url,
            expiry_date,
            created_at,
            last_used_at,
            total_requests,
            rate_limit_resets_at,
            is_primary,
            rate_limit_reason,
            consecutive_rate_limits,
            last_rate_limited_at,
            status,
            status_reason,
            status_changed_at,
            linked_file,
            linked_refresh_fp,
            refresh_failed_at,
            base_url,
            headers,
            extra: f.map.rest(),
        })
    }
}

impl Serialize for Store {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("version", &self.version)?;
        m.serialize_entry("max_accounts", &self.max_accounts)?;
        m.serialize_entry("accounts", &self.accounts)?;
        m.serialize_entry("current_account_id", &self.current_account_id)?;
        if self.current_streak != 0 {
            m.serialize_entry("current_streak", &self.current_streak)?;
        }
        if let Some(t) = self.last_background_refresh_at {
            m.serialize_entry("last_background_refresh_at", &t)?;
        }
        if let Some(fp) = &self.removed_qwen_cli_fp {
            m.serialize_entry("removed_qwen_cli_fp", fp)?;
        }
        if let Some(t) = self.qwen_dir_unwritable_warned_at {
            m.serialize_entry("qwen_dir_unwritable_warned_at", &t)?;
        }
        self.extra.write(&mut m)?;
        m.end()
    }
}

impl Serialize for Account {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &self.id)?;
        match self.kind {
            Kind::OAuth => {
                m.serialize_entry("email", &self.email)?;
                m.serialize_entry("access_token", self.access_token.expose())?;
                m.serialize_entry("refresh_token", self.refresh_token.expose())?;
                m.serialize_entry("token_type", &self.token_type)?;
                m.serialize_entry("resource_url", &self.resource_url)?;
                m.serialize_entry("expiry_date", &self.expiry_date)?;
            }
            // No refresh token and no expiry: a key is what it is until the server refuses it.
            Kind::ApiKey => {
                m.serialize_entry("kind", self.kind.as_str())?;
                m.serialize_entry("email", &self.email)?;
                m.serialize_entry("access_token", self.access_token.expose())?;
                m.serialize_entry("token_type", &self.token_type)?;
                m.serialize_entry("base_url", &self.base_url)?;
                if !self.headers.is_empty() {
                    let h: serde_json::Map<String, serde_json::Value> = self
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().into()))
                        .collect();
                    m.serialize_entry("headers", &h)?;
                }
            }
        }
        m.serialize_entry("created_at", &self.created_at)?;
        m.serialize_entry("last_used_at", &self.last_used_at)?;
        m.serialize_entry("total_requests", &self.total_requests)?;
        m.serialize_entry("rate_limit_resets_at", &self.rate_limit_resets_at)?;
        m.serialize_entry("is_primary", &self.is_primary)?;
        // Fields added by qwen-cred: written only when set, so the seed format stays plain.
        if let Some(l) = &self.label {
            m.serialize_entry("label", l)?;
        }
        if let Some(r) = &self.rate_limit_reason {
            m.serialize_entry("rate_limit_reason", r)?;
        }
        if self.consecutive_rate_limits != 0 {
            m.serialize_entry("consecutive_rate_limits", &self.consecutive_rate_limits)?;
        }
        if let Some(t) = self.last_rate_limited_at {
            m.serialize_entry("last_rate_limited_at", &t)?;
        }
        if self.status == Status::Revoked {
            m.serialize_entry("status", "revoked")?;
        }
        if let Some(r) = &self.status_reason {
            m.serialize_entry("status_reason", r)?;
        }
        if let Some(t) = self.status_changed_at {
            m.serialize_entry("status_changed_at", &t)?;
        }
        if let Some(l) = &self.linked_file {
            m.serialize_entry("linked_file", l)?;
        }
        if let Some(fp) = &self.linked_refresh_fp {
            m.serialize_entry("linked_refresh_fp", fp)?;
        }
        if let Some(t) = self.refresh_failed_at {
            m.serialize_entry("refresh_failed_at", &t)?;
        }
        self.extra.write(&mut m)?;
        m.end()
    }
}

/// Loads the store at `path`; missing means empty. A group- or world-readable store is
/// tightened to 0600 with a notice. Refuses a symlink or a directory: an atomic rename would
/// replace the link rather than write through it.
pub fn load(path: &Path) -> Result<Store> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Store::empty()),
        Err(e) => return Err(Error::io("cannot read", path, e)),
    };
    if meta.file_type().is_symlink() {
        return Err(Error::File(format!(
            "{}: is a symbolic link; qwen-cred replaces its store atomically and would break the link. Replace it with the file itself",
            path.display()
        )));
    }
    let Some((bytes, meta)) =
        crate::files::read_regular(path, MAX_STORE_BYTES, "an account store")?
    else {
        return Ok(Store::empty());
    };
    let store = Store::parse(&bytes, path)?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io("cannot tighten permissions of", path, e))?;
        crate::msg::warn(&format!(
            "{} was readable by others; its mode is now 0600",
            path.display()
        ));
    }
    Ok(store)
}

/// The largest store read: ten accounts take a few KiB, so anything near this is not a store
/// (and reading it whole would cost seconds and gigabytes on every `token`).
pub const MAX_STORE_BYTES: u64 = 16 * 1024 * 1024;

/// Writes the store atomically. The caller holds the store lock and has re-read the file
/// under it (files.md, Writing).
pub fn save(path: &Path, store: &Store) -> Result<()> {
    crate::files::write_locked(path, &store.to_json())
}

/// The store of the pool in `dir`.
pub fn path(dir: &Path) -> std::path::PathBuf {
    dir.join("qwen-accounts.json")
}

/// The store's one way to change: lock it, re-read it, let `f` change it, write it back if it
/// changed. Every writer goes through here, so no update is lost and nothing is written
/// without the lock (files.md, Writing).
pub fn update<T>(
    dir: &Path,
    lock_timeout: std::time::Duration,
    f: impl FnOnce(&mut Store) -> Result<T>,
) -> Result<T> {
    let (out, saved) = update_lenient(dir, lock_timeout, f)?;
    saved.map(|()| out)
}

/// As `update`, but a failed write (disk full, read-only directory) comes back beside `f`'s
/// result instead of replacing it, for bookkeeping a caller can go on without.
pub fn update_lenient<T>(
    dir: &Path,
    lock_timeout: std::time::Duration,
    f: impl FnOnce(&mut Store) -> Result<T>,
) -> Result<(T, Result<()>)> {
    let path = path(dir);
    let _held = crate::lock::store(dir, lock_timeout)?;
    let before = load(&path)?;
    let mut after = before.clone();
    let out = f(&mut after)?;
    let saved = match after != before {
        true => save(&path, &after),
        false => Ok(()),
    };
    Ok((out, saved))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Store> {
        Store::parse(text.as_bytes(), Path::new("qwen-accounts.json"))
    }

    const ACCOUNT: &str = r#"{"id": "1", "access_token": "a", "refresh_token": "r",
        "expiry_date": 1, "x": 1e400}"#;

    #[test]
    fn unknown_values_keep_their_text_and_known_ones_are_checked() {
        let text = format!(
            r#"{{"big": 18446744073709551616, "accounts": [{ACCOUNT}], "e": 1E+2, "o": {{"k" : [ 1.50 ]}}}}"#
        );
        let s = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let out = String::from_utf8(s.to_json()).unwrap_or_default();
        for kept in [
            r#""big": 18446744073709551616"#,
            r#""x": 1e400"#,
            r#""e": 1E+2"#,
            r#""o": {"k" : [ 1.50 ]}"#,
        ] {
            assert!(out.contains(kept), "{kept}: {out}");
        }
        assert_eq!(parse(&out).ok(), Some(s), "a rewrite reads back the same");
        for (field, value) in [
            ("expiry_date", "1e400"),
            ("expiry_date", "18446744073709551616"),
            ("expiry_date", "1.0"),
            ("email", "[[[[1]]]]"),
        ] {
            let bad = ACCOUNT.replacen(r#""x": 1e400"#, &format!(r#""{field}": {value}"#), 1);
            let bad = bad.replacen(
                r#""expiry_date": 1,"#,
                "",
                usize::from(field == "expiry_date"),
            );
            let e = parse(&format!(r#"{{"accounts": [{bad}]}}"#)).err();
            assert!(
                e.as_ref().is_some_and(|e| e
                    .to_string()
                    .contains(&format!("accounts[0].{field}: expected"))),
                "{field} {value}: {e:?}"
            );
        }
    }

    #[test]
    fn a_key_given_twice_keeps_its_place_and_its_last_value() {
        let s = parse(r#"{"z": 1, "a": 2, "z": 3, "version": "1.0", "version": "1.1"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.version, "1.1");
        let out = String::from_utf8(s.to_json()).unwrap_or_default();
        assert!(out.contains("\"z\": 3,\n  \"a\": 2\n}"), "{out}");
    }

    #[test]
    fn not_an_object_is_named_as_such() {
        for (text, says) in [
            ("[]", "expected a JSON object"),
            ("\"s\"", "expected a JSON object"),
            ("{\"accounts\": {}}", "accounts: expected an array"),
            ("{\"accounts\": null}", "accounts: expected an array"),
            ("{\"accounts\": [1]}", "accounts[0]: expected an object"),
            ("{\"a\": 1", "not valid JSON: EOF"),
            ("{} {}", "not valid JSON: trailing characters"),
        ] {
            let e = parse(text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn a_key_account_needs_no_refresh_token_and_round_trips() {
        let text = r#"{"accounts": [
            {"id": "1", "access_token": "a", "refresh_token": "r", "expiry_date": 1},
            {"id": "2", "kind": "api_key", "label": "work", "access_token": "sk-sp-1",
             "base_url": "https://coding-intl.dashscope.aliyuncs.com/v1/",
             "headers": {"User-Agent": "QwenCode/1 (linux; x64)", "X-B": "c"},
             "refresh_token": "kept-as-is", "expiry_date": 7, "total_requests": 5}]}"#;
        let s = parse(text).unwrap_or_else(|e| panic!("{e}"));
        let (o, k) = (&s.accounts[0], &s.accounts[1]);
        assert!(!o.is_key() && k.is_key());
        assert_eq!(k.label.as_deref(), Some("work"));
        assert_eq!(
            k.base_url.as_deref(),
            Some("https://coding-intl.dashscope.aliyuncs.com/v1")
        );
        assert_eq!(k.headers[0].0, "User-Agent");
        assert_eq!(k.headers[1], ("X-B".into(), "c".into()));
        assert_eq!((k.expiry_date, k.total_requests), (MAX_TIME_MS, 5));
        assert_eq!(k.fingerprint(), Secret::new("sk-sp-1").fingerprint());
        assert!(k.label().starts_with("work (key ") && !k.label().contains("sk-sp-1"));
        assert_eq!(k.relogin_hint(), "qwen-cred add-key --replace 2");
        let out = String::from_utf8(s.to_json()).unwrap_or_default();
        // A key account's fields of an OAuth account are kept as unknown ones, unchanged.
        assert!(out.contains(r#""refresh_token": "kept-as-is""#), "{out}");
        assert!(out.contains(r#""expiry_date": 7"#), "{out}");
        assert!(out.contains(r#""kind": "api_key""#), "{out}");
        assert_eq!(parse(&out).ok(), Some(s), "a rewrite reads back the same");
        // The seed format stays plain: no kind on an OAuth account.
        let oauth = out.split(r#""id": "2""#).next().unwrap_or_default();
        assert!(!oauth.contains("kind"), "{out}");
    }

    #[test]
    fn a_bad_key_account_is_named_never_quoting_a_secret() {
        for (account, says) in [
            (
                r#"{"id": "1", "access_token": "a", "expiry_date": 1}"#,
                "accounts[0].refresh_token: expected",
            ),
            (
                r#"{"id": "1", "kind": "key", "access_token": "a"}"#,
                "accounts[0].kind: expected",
            ),
            (
                r#"{"id": "1", "kind": "api_key", "access_token": "a"}"#,
                "accounts[0].base_url: expected",
            ),
            (
                r#"{"id": "1", "kind": "api_key", "access_token": "a", "base_url": "http://example.com"}"#,
                "accounts[0].base_url: expected",
            ),
            (
                r#"{"id": "1", "kind": "api_key", "access_token": "sk x", "base_url": "https://x"}"#,
                "accounts[0].access_token: expected an API key",
            ),
            (
                r#"{"id": "1", "kind": "api_key", "access_token": "a", "base_url": "https://x", "headers": []}"#,
                "accounts[0].headers: expected",
            ),
            (
                r#"{"id": "1", "kind": "api_key", "access_token": "a", "base_url": "https://x", "headers": {"X-A": 1}}"#,
                "accounts[0].headers.\"X-A\": expected a string",
            ),
            (
                r#"{"id": "1", "kind": "api_key", "access_token": "a", "base_url": "https://x", "headers": {"X-A": "secret\r\nX-Evil: 1"}}"#,
                "accounts[0].headers.\"X-A\": expected a value",
            ),
            (
                r#"{"id": "1", "kind": "api_key", "access_token": "a", "base_url": "https://x", "headers": {"Authorization": "Bearer secret"}}"#,
                "accounts[0].headers.\"Authorization\": expected a header other",
            ),
        ] {
            let e = parse(&format!(r#"{{"accounts": [{account}]}}"#))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(says), "{account}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn next_id_never_overflows() {
        let mut s = Store::empty();
        assert_eq!(s.next_id(), "1");
        for id in ["18446744073709551615", "1", "x"] {
            let mut a = Account::new(
                Secret::new("a".to_string()),
                Secret::new("r".to_string()),
                1,
                1,
            );
            a.id = id.into();
            s.accounts.push(a);
        }
        assert_eq!(s.next_id(), "2");
    }
}
