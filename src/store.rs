//! The account store `qwen-accounts.json`: its schema, validation with messages that name the
//! field, unknown-field passthrough, and atomic 0600 writes (files.md). Callers hold the store
//! lock (lock.rs) around every load-modify-save.

use crate::error::{Error, Result};
use crate::secret::Secret;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use std::borrow::Cow;
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

/// The longest quota window an account may declare (366 days, in ms): past that it is a typo.
pub const MAX_QUOTA_WINDOW_MS: i64 = 366 * 86_400_000;

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
    /// The account's own quota window (ms, e.g. 5 h for a key with a quota per 5 hours): a
    /// quota 429 cools it until the window can have reset instead of until the daily reset
    /// (rotation.rs, `report_429`). `None`: the daily reset applies.
    pub quota_window_ms: Option<u64>,
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
    /// A name the user gave the account (`label`, `login --label`).
    pub label: Option<String>,
    /// Kept in the pool but out of rotation (`disable`); a pinned `--account` still serves it.
    pub disabled: bool,
    /// 8 hex digits of the SHA-256 of the account's first refresh token, kept for its life:
    /// how an account without email is told apart (the refresh token changes every refresh).
    pub fingerprint: String,
    /// Tokens served since the daily quota reset at `daily_requests_since` (Unix ms).
    pub daily_requests: u64,
    pub daily_requests_since: Option<i64>,
    /// Tokens served per 10-minute step, oldest first, the newest starting at
    /// `recent_requests_at` (Unix ms): the requests of the last hour.
    pub recent_requests: [u64; RECENT_STEPS],
    pub recent_requests_at: Option<i64>,
    /// The last refresh failure or revocation, as shown by `status` (redacted server text).
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
    /// A key account's API base URL, used as it is (no `/v1` added).
    pub base_url: Option<String>,
    /// A key account's request headers besides `Authorization`, in the order given.
    pub headers: Vec<(String, String)>,
    /// Fields this version does not know, written back unchanged.
    pub extra: Extra,
}

/// `recent_requests` counts in steps of this many ms ...
pub const RECENT_STEP_MS: i64 = 600_000;
/// ... and keeps this many steps: the current one and the five before it.
pub const RECENT_STEPS: usize = 6;

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

/// An object's members in file order with each value's text, not yet interpreted, borrowed
/// from the file's text (no copy unless a name has escapes). A key given twice keeps its
/// first place and its last value, as a serde_json map does.
#[derive(Default)]
struct Members<'t> {
    list: Vec<(Cow<'t, str>, Option<&'t RawValue>)>,
    /// Built only for a large object: a few dozen keys are found faster by comparing them in
    /// order (most often the next one is the one asked for) than by hashing or a tree.
    index: Option<BTreeMap<String, usize>>,
    /// Where the last key taken stood: the store is written in the order it is read.
    cursor: usize,
    /// A bit per (length, first byte) class of the names present: most optional fields are
    /// absent, and a name whose bit is clear is absent without a scan.
    classes: u64,
}

/// The bit of `name`'s (length, first byte) class in `Members::classes`.
fn class_bit(name: &str) -> u64 {
    let first = name.as_bytes().first().copied().unwrap_or(0) as usize;
    1 << ((name.len().wrapping_mul(31) ^ first) % 64)
}

/// Objects with more members than this get an index.
const SMALL_OBJECT: usize = 48;

/// A member name, borrowed from the text when it has no escapes.
struct Name<'t>(Cow<'t, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Name<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> std::result::Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Members<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Members<'de>, A::Error> {
                let mut m = Members {
                    // An account has about twenty fields: room for them at once.
                    list: Vec::with_capacity(24),
                    ..Members::default()
                };
                while let Some((Name(k), v)) = map.next_entry::<Name<'de>, &'de RawValue>()? {
                    m.insert(k, v);
                }
                Ok(m)
            }
        }
        d.deserialize_map(V)
    }
}

/// The store's top-level object with its `accounts` read in the same pass, when they are an
/// array of objects; anything else fails, and `Store::parse` looks closer to say why.
struct Top<'t> {
    members: Members<'t>,
    accounts: Vec<Members<'t>>,
}

impl<'de> Deserialize<'de> for Top<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Top<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Top<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Top<'de>, A::Error> {
                let mut top = Top {
                    members: Members::default(),
                    accounts: Vec::new(),
                };
                while let Some(Name(k)) = map.next_key::<Name<'de>>()? {
                    match k.as_ref() {
                        "accounts" => top.accounts = map.next_value()?,
                        _ => top.members.insert(k, map.next_value()?),
                    }
                }
                Ok(top)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'t> Members<'t> {
    /// Adds a member read from the text; a name given again keeps its place.
    fn insert(&mut self, k: Cow<'t, str>, v: &'t RawValue) {
        match self.position(&k) {
            Some(i) => self.list[i].1 = Some(v),
            None => {
                if let Some(index) = &mut self.index {
                    index.insert(k.to_string(), self.list.len());
                }
                self.classes |= class_bit(&k);
                self.list.push((k, Some(v)));
                if self.index.is_none() && self.list.len() > SMALL_OBJECT {
                    self.index = Some(
                        (self.list.iter().enumerate())
                            .map(|(i, (k, _))| (k.to_string(), i))
                            .collect(),
                    );
                }
            }
        }
    }

    fn position(&self, key: &str) -> Option<usize> {
        if self.classes & class_bit(key) == 0 {
            return None;
        }
        match &self.index {
            Some(index) => index.get(key).copied(),
            None => (self.cursor..self.list.len())
                .chain(0..self.cursor)
                .find(|&i| self.list[i].0 == key),
        }
    }

    fn take(&mut self, key: &str) -> Option<&'t RawValue> {
        let i = self.position(key)?;
        self.cursor = i + 1;
        self.list[i].1.take()
    }

    /// What was not taken, copied out of the text.
    fn rest(self) -> Extra {
        // A loop, not `filter_map().collect()`: collecting in place reuses, and later frees,
        // the whole list's memory for what is usually nothing.
        let mut extra = Vec::new();
        for (k, v) in self.list {
            if let Some(v) = v {
                extra.push((k.into_owned(), v.to_owned()));
            }
        }
        Extra(extra)
    }
}

/// Reads one object's fields by name, taking each known one so that what is left is the
/// passthrough `extra`; errors name the file and the field path.
struct Fields<'a> {
    map: Members<'a>,
    /// The account's place in `accounts`, `None` for the top level; only errors spell it out.
    account: Option<usize>,
    file: &'a Path,
}

impl<'a> Fields<'a> {
    fn err(&self, key: &str, expected: &str) -> Error {
        let file = self.file.display();
        Error::File(match self.account {
            Some(i) => format!("{file}: accounts[{i}].{key}: expected {expected}"),
            None => format!("{file}: {key}: expected {expected}"),
        })
    }

    /// The value's JSON text. Missing -> `None`. `null` -> `None` only where `nullable`.
    /// Taking leaves the unknown fields in their order.
    fn take(&mut self, key: &str, nullable: bool, expected: &str) -> Result<Option<&'a RawValue>> {
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

    /// An array of at most `N` non-negative integers, missing ones 0.
    fn counts<const N: usize>(&mut self, key: &str) -> Result<[u64; N]> {
        let expected = || format!("an array of at most {N} non-negative integers");
        let mut out = [0; N];
        let Some(raw) = self.map.take(key) else {
            return Ok(out);
        };
        let list = serde_json::from_str::<Option<Vec<&RawValue>>>(raw.get())
            .ok()
            .filter(|l| l.as_ref().is_none_or(|l| l.len() <= N))
            .ok_or_else(|| self.err(key, &expected()))?;
        for (slot, v) in out.iter_mut().zip(list.iter().flatten()) {
            // JSON integer text only, as `int` takes it.
            *slot = v
                .get()
                .parse::<u64>()
                .ok()
                .filter(|&n| n <= MAX_COUNT)
                .ok_or_else(|| self.err(key, &expected()))?;
        }
        Ok(out)
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
        match self.take(key, false, "true or false")?.map(RawValue::get) {
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
        // Usually the accounts are an array of objects, read in the same pass as the rest;
        // anything else is read again, member by member, to say what is wrong.
        let (map, accounts) = match crate::files::parse_json_object::<Top>(bytes, file) {
            Ok(None) => return Ok(Store::empty()),
            Ok(Some(top)) => (top.members, Some(top.accounts)),
            Err(_) => match crate::files::parse_json_object::<Members>(bytes, file)? {
                None => return Ok(Store::empty()),
                Some(map) => (map, None),
            },
        };
        let mut f = Fields {
            map,
            account: None,
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
        // Only when the one pass failed: each account read on its own, to name the one that
        // is not an object (an array of objects here means the bad `accounts` was not the
        // last one given).
        let members = match accounts {
            Some(list) => list,
            None => match f.map.take("accounts") {
                None => Vec::new(),
                Some(raw) => {
                    let list = serde_json::from_str::<Vec<&RawValue>>(raw.get())
                        .map_err(|_| f.err("accounts", "an array"))?;
                    let mut members = Vec::with_capacity(list.len());
                    for (i, raw) in list.iter().enumerate() {
                        let Ok(map) = serde_json::from_str::<Members>(raw.get()) else {
                            return Err(Error::File(format!(
                                "{name}: accounts[{i}]: expected an object"
                            )));
                        };
                        members.push(map);
                    }
                    members
                }
            },
        };
        let mut accounts: Vec<Account> = Vec::with_capacity(members.len());
        for (i, map) in members.into_iter().enumerate() {
            let a = Account::parse(Fields {
                map,
                account: Some(i),
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
        // Room for the whole file up front: growing from serde_json's 128 bytes would copy
        // it six times.
        let mut out = Vec::with_capacity(1024 + 1024 * self.accounts.len());
        // Writing to memory cannot fail, nor can these Serialize impls. Were it to, stopping
        // is right: an empty result written back would lose every account.
        serde_json::to_writer_pretty(&mut out, self).expect("the store serializes");
        out.push(b'\n');
        out
    }

    /// Finds an account by id, else by label, else by email when that is unambiguous.
    pub fn find(&self, id: &str) -> Result<usize> {
        if let Some(i) = self.accounts.iter().position(|a| a.id == id) {
            return Ok(i);
        }
        if let Some(i) = self
            .accounts
            .iter()
            .position(|a| a.label.as_deref() == Some(id))
        {
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
            .map(|a| format!("{} {}", a.id, a.name()))
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
            email: String::new(),
            access_token: access,
            refresh_token: refresh.clone(),
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
            quota_window_ms: None,
            status: Status::Active,
            status_reason: None,
            status_changed_at: None,
            linked_file: None,
            linked_refresh_fp: None,
            refresh_failed_at: None,
            label: None,
            disabled: false,
            fingerprint: refresh.fingerprint(),
            daily_requests: 0,
            daily_requests_since: None,
            recent_requests: [0; RECENT_STEPS],
            recent_requests_at: None,
            last_error: None,
            last_error_at: None,
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
        a.fingerprint = a.access_token.fingerprint();
        a.base_url = Some(base_url);
        a.headers = headers;
        a
    }

    pub fn is_key(&self) -> bool {
        self.kind == Kind::ApiKey
    }

    /// Marks the account revoked by its server, with `reason` (already redacted of every
    /// secret), and says so once on stderr. Never tried again until a login or a new key.
    pub fn revoke(&mut self, reason: &str, now: i64) {
        self.status = Status::Revoked;
        self.status_reason = Some(reason.to_string());
        self.status_changed_at = Some(now);
        self.last_error = Some(format!("revoked by the server: {reason}"));
        self.last_error_at = Some(now);
        crate::msg::warn(&format!(
            "account {} ({}) was revoked by the server ({reason}); run {} to sign it in again",
            self.id,
            self.name(),
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

    /// How the account is named in messages and tables: its label, else its email, else its
    /// fingerprint (never a token; a key account's is the key's); a label with the email or
    /// fingerprint after it.
    pub fn name(&self) -> String {
        let who = if self.is_key() {
            format!("key {}", self.fingerprint)
        } else if self.email.is_empty() {
            format!("fp {}", self.fingerprint)
        } else {
            self.email.clone()
        };
        match &self.label {
            Some(l) => format!("{l} ({who})"),
            None => who,
        }
    }

    fn parse(mut f: Fields) -> Result<Account> {
        let id = f.required_string("id")?;
        let kind = match f.string("kind", true)?.as_deref() {
            None | Some("oauth") => Kind::OAuth,
            Some("api_key") => Kind::ApiKey,
            Some(_) => return Err(f.err("kind", "\"oauth\" or \"api_key\"")),
        };
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
                        Some(raw) => f.headers(raw)?,
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
        let window = "a number of milliseconds from 1 to 31622400000 (366 days)";
        let quota_window_ms = match f.int("quota_window_ms", true, MAX_QUOTA_WINDOW_MS, window)? {
            Some(0) => return Err(f.err("quota_window_ms", window)),
            w => w.map(|w| w as u64),
        };
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
        let label = f.string("label", true)?.filter(|l| !l.is_empty());
        let disabled = f.bool("disabled")?.unwrap_or(false);
        // An account from before fingerprints were kept gets the one of its refresh token now,
        // and keeps it from the next write on.
        let fingerprint = f
            .string("fingerprint", true)?
            .filter(|fp| !fp.is_empty())
            .unwrap_or_else(|| match kind {
                Kind::ApiKey => access_token.fingerprint(),
                Kind::OAuth => refresh_token.fingerprint(),
            });
        let daily_requests = f
            .int("daily_requests", false, i64::MAX, "a non-negative integer")?
            .unwrap_or(0) as u64;
        let daily_requests_since = f.time("daily_requests_since", true)?;
        let recent_requests = f.counts("recent_requests")?;
        let recent_requests_at = f.time("recent_requests_at", true)?;
        let last_error = f.string("last_error", true)?;
        let last_error_at = f.time("last_error_at", true)?;
        Ok(Account {
            id,
            kind,
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
            quota_window_ms,
            status,
            status_reason,
            status_changed_at,
            linked_file,
            linked_refresh_fp,
            refresh_failed_at,
            label,
            disabled,
            fingerprint,
            daily_requests,
            daily_requests_since,
            recent_requests,
            recent_requests_at,
            last_error,
            last_error_at,
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
        if let Some(r) = &self.rate_limit_reason {
            m.serialize_entry("rate_limit_reason", r)?;
        }
        if self.consecutive_rate_limits != 0 {
            m.serialize_entry("consecutive_rate_limits", &self.consecutive_rate_limits)?;
        }
        if let Some(t) = self.last_rate_limited_at {
            m.serialize_entry("last_rate_limited_at", &t)?;
        }
        if let Some(w) = self.quota_window_ms {
            m.serialize_entry("quota_window_ms", &w)?;
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
        if let Some(l) = &self.label {
            m.serialize_entry("label", l)?;
        }
        if self.disabled {
            m.serialize_entry("disabled", &true)?;
        }
        m.serialize_entry("fingerprint", &self.fingerprint)?;
        if self.daily_requests != 0 {
            m.serialize_entry("daily_requests", &self.daily_requests)?;
        }
        if let Some(t) = self.daily_requests_since {
            m.serialize_entry("daily_requests_since", &t)?;
        }
        if self.recent_requests.iter().any(|&n| n != 0) {
            m.serialize_entry("recent_requests", &self.recent_requests)?;
        }
        if let Some(t) = self.recent_requests_at {
            m.serialize_entry("recent_requests_at", &t)?;
        }
        if let Some(e) = &self.last_error {
            m.serialize_entry("last_error", e)?;
        }
        if let Some(t) = self.last_error_at {
            m.serialize_entry("last_error_at", &t)?;
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

/// The store file of `pool`.
pub fn path(pool: &crate::pool::Pool) -> std::path::PathBuf {
    pool.store_file()
}

/// The store's one way to change: lock it, re-read it, let `f` change it, write it back if it
/// changed. Every writer goes through here, so no update is lost and nothing is written
/// without the lock (files.md, Writing).
pub fn update<T>(
    pool: &crate::pool::Pool,
    lock_timeout: std::time::Duration,
    f: impl FnOnce(&mut Store) -> Result<T>,
) -> Result<T> {
    let (out, saved) = update_lenient(pool, lock_timeout, f)?;
    saved.map(|()| out)
}

/// As `update`, but a failed write (disk full, read-only directory) comes back beside `f`'s
/// result instead of replacing it, for bookkeeping a caller can go on without.
pub fn update_lenient<T>(
    pool: &crate::pool::Pool,
    lock_timeout: std::time::Duration,
    f: impl FnOnce(&mut Store) -> Result<T>,
) -> Result<(T, Result<()>)> {
    let path = path(pool);
    let _held = crate::lock::store(pool, lock_timeout)?;
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
    fn a_quota_window_is_optional_positive_and_written_only_when_set() {
        let s = parse(&format!(r#"{{"accounts": [{ACCOUNT}]}}"#)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.accounts[0].quota_window_ms, None);
        let out = String::from_utf8(s.to_json()).unwrap_or_default();
        assert!(!out.contains("quota_window_ms"), "{out}");
        let with = |v: &str| {
            let a = ACCOUNT.replacen("}", &format!(r#", "quota_window_ms": {v}}}"#), 1);
            parse(&format!(r#"{{"accounts": [{a}]}}"#))
        };
        for (value, want) in [("18000000", Some(18_000_000)), ("null", None)] {
            let s = with(value).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(s.accounts[0].quota_window_ms, want, "{value}");
            let out = String::from_utf8(s.to_json()).unwrap_or_default();
            assert_eq!(
                out.contains(&format!(r#""quota_window_ms": {value}"#)),
                want.is_some()
            );
            assert_eq!(parse(&out).ok(), Some(s), "round trip");
        }
        assert!(with(&MAX_QUOTA_WINDOW_MS.to_string()).is_ok(), "366 days");
        let over = (MAX_QUOTA_WINDOW_MS + 1).to_string();
        for bad in ["0", "-1", over.as_str(), "1.5", "\"5h\"", "1e3"] {
            let e = with(bad).err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e
                    .contains("accounts[0].quota_window_ms: expected a number of milliseconds")),
                "{bad}: {e:?}"
            );
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
        assert_eq!(k.fingerprint, Secret::new("sk-sp-1").fingerprint());
        assert!(k.name().starts_with("work (key ") && !k.name().contains("sk-sp-1"));
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

    /// Found by the randomised store tests: `Map::remove` swapped the last unknown field into
    /// the hole a known one left, so every rewrite reordered other tools' fields.
    #[test]
    fn unknown_fields_keep_their_order_across_rewrites() {
        let s = parse(r#"{"z": 1, "version": "1.0", "a": 2, "accounts": [], "m": 3, "b": 4}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        let keys: Vec<&str> = s.extra.keys().map(String::as_str).collect();
        assert_eq!(keys, ["z", "a", "m", "b"]);
        let again = Store::parse(&s.to_json(), Path::new("qwen-accounts.json"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.to_json(), s.to_json());
    }
}

/// Properties of `Store::parse` and `to_json` over generated input (README, Property tests).
#[cfg(test)]
mod proptests {
    use super::*;
    use crate::strategies::{apply, edits, json, number, other_types, retype, text, to_bytes};
    use proptest::collection::vec;
    use proptest::option;
    use proptest::prelude::*;
    use proptest::sample::{select, Index};
    use serde_json::{Map, Value};

    fn file() -> &'static Path {
        Path::new("qwen-accounts.json")
    }

    fn time() -> impl Strategy<Value = Value> {
        (0..=MAX_TIME_MS).prop_map(Value::from)
    }

    /// A nullable field: missing, null, or a value.
    fn nullable<S: Strategy<Value = Value>>(s: S) -> impl Strategy<Value = Option<Value>> {
        prop_oneof![Just(None), Just(Some(Value::Null)), s.prop_map(Some)]
    }

    /// Fields this version does not know, each with where it goes among the known ones.
    fn unknown(depth: u32) -> impl Strategy<Value = Vec<(String, Value, Index)>> {
        vec((text(), json(depth), any::<Index>()), 0..3)
    }

    /// `fields` in order, with `unknown` (named `{prefix}{n}_...`) put among them; an
    /// object's members keep that order (`preserve_order`).
    fn object(
        mut fields: Vec<(String, Value)>,
        unknown: Vec<(String, Value, Index)>,
        prefix: &str,
    ) -> Value {
        for (n, (name, v, at)) in unknown.into_iter().enumerate() {
            let at = at.index(fields.len() + 1);
            fields.insert(at, (format!("{prefix}{n}_{name}"), v));
        }
        Value::Object(fields.into_iter().collect::<Map<_, _>>())
    }

    /// An account files.md allows, but for its id: given as `x<text>` (one in five) or
    /// left to its place in the list.
    #[derive(Debug, Clone)]
    struct GenAccount {
        id: Option<String>,
        fields: Vec<(String, Value)>,
        unknown: Vec<(String, Value, Index)>,
    }

    fn account() -> impl Strategy<Value = GenAccount> {
        let text_or_null = || prop_oneof![Just(Value::Null), text().prop_map(Value::from)];
        let tokens = (
            option::weighted(0.2, text()),
            prop_oneof![1 => Just(Value::Null), 3 => text().prop_map(Value::from)],
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            text_or_null(),
            time(),
        );
        let rest = (
            proptest::array::uniform6(nullable(time())),
            option::of(0..=i64::MAX),
            option::of(any::<u32>()),
            option::of(any::<bool>()),
            option::weighted(0.33, select(&["active", "revoked"][..])),
            proptest::array::uniform4(option::weighted(0.33, text())),
            unknown(2),
        );
        (tokens, rest).prop_map(|(tokens, rest)| {
            let (id, email, at, rt, bearer, resource_url, expiry) = tokens;
            let (times, total, consecutive, primary, status, texts, unknown) = rest;
            let mut f: Vec<(String, Value)> = vec![
                ("email".into(), email),
                ("access_token".into(), format!("at-SECRET-{at}").into()),
                ("refresh_token".into(), format!("rt-SECRET-{rt}").into()),
            ];
            if bearer {
                f.push(("token_type".into(), "Bearer".into()));
            }
            f.push(("resource_url".into(), resource_url));
            f.push(("expiry_date".into(), expiry));
            let time_keys = [
                "created_at",
                "last_used_at",
                "rate_limit_resets_at",
                "last_rate_limited_at",
                "status_changed_at",
                "refresh_failed_at",
            ];
            for (k, t) in time_keys.into_iter().zip(times) {
                f.extend(t.map(|t| (k.to_string(), t)));
            }
            f.extend(total.map(|n| ("total_requests".into(), n.into())));
            f.extend(consecutive.map(|n| ("consecutive_rate_limits".into(), n.into())));
            f.extend(primary.map(|b| ("is_primary".into(), b.into())));
            f.extend(status.map(|s| ("status".into(), s.into())));
            let text_keys = [
                "rate_limit_reason",
                "status_reason",
                "linked_file",
                "linked_refresh_fp",
            ];
            for (k, t) in text_keys.into_iter().zip(texts) {
                f.extend(t.map(|t| (k.to_string(), t.into())));
            }
            GenAccount {
                id,
                fields: f,
                unknown,
            }
        })
    }

    /// A store files.md allows, as JSON.
    fn store() -> impl Strategy<Value = Value> {
        let head = (
            option::weighted(0.8, select(&["1.0", "1", "1.7", "01.0"][..])),
            proptest::bool::weighted(0.8),
            0..=MAX_ACCOUNTS,
            vec(account(), 0..=MAX_ACCOUNTS),
            (0u8..3, any::<Index>(), text()),
        );
        let tail = (
            option::weighted(0.33, 0..=i64::MAX),
            option::weighted(0.33, time()),
            option::weighted(
                0.33,
                prop_oneof![Just(Value::Null), text().prop_map(Value::from)],
            ),
            nullable(time()),
            unknown(3),
        );
        (head, tail).prop_map(|(head, tail)| {
            let (version, has_max, spare, accounts, current) = head;
            let (streak, background, removed_fp, unwritable_at, unknown) = tail;
            let max = (accounts.len() + spare).clamp(1, MAX_ACCOUNTS);
            let mut ids = Vec::new();
            let mut list = Vec::new();
            for (i, a) in accounts.into_iter().enumerate() {
                let id = match a.id {
                    Some(t) => format!("x{t}-{i}"),
                    None => (i + 1).to_string(),
                };
                let mut fields = vec![("id".to_string(), Value::from(id.clone()))];
                fields.extend(a.fields);
                list.push(object(fields, a.unknown, "other"));
                ids.push(id);
            }
            let mut f: Vec<(String, Value)> = Vec::new();
            f.extend(version.map(|v| ("version".into(), v.into())));
            if has_max {
                f.push(("max_accounts".into(), max.into()));
            }
            f.push(("accounts".into(), Value::Array(list)));
            let current = match current {
                (1, i, _) if !ids.is_empty() => Value::from(i.get(&ids).clone()),
                (2, _, t) => Value::from(t),
                _ => Value::Null,
            };
            f.push(("current_account_id".into(), current));
            f.extend(streak.map(|n| ("current_streak".into(), n.into())));
            f.extend(background.map(|t| ("last_background_refresh_at".into(), t)));
            f.extend(removed_fp.map(|s| ("removed_qwen_cli_fp".into(), s)));
            f.extend(unwritable_at.map(|t| ("qwen_dir_unwritable_warned_at".into(), t)));
            object(f, unknown, "tool")
        })
    }

    /// The store's field names, and an account's.
    const STORE_KEYS: &[&str] = &[
        "version",
        "max_accounts",
        "current_account_id",
        "current_streak",
        "last_background_refresh_at",
        "removed_qwen_cli_fp",
        "qwen_dir_unwritable_warned_at",
    ];
    const ACCOUNT_KEYS: &[&str] = &[
        "id",
        "email",
        "access_token",
        "refresh_token",
        "token_type",
        "resource_url",
        "expiry_date",
        "created_at",
        "last_used_at",
        "total_requests",
        "rate_limit_resets_at",
        "is_primary",
        "rate_limit_reason",
        "consecutive_rate_limits",
        "last_rate_limited_at",
        "status",
        "status_reason",
        "status_changed_at",
        "linked_file",
        "linked_refresh_fp",
        "refresh_failed_at",
    ];

    /// Any JSON under the store's field names (and others), accounts included: reaches
    /// every check of a field's value.
    fn shaped() -> impl Strategy<Value = Value> {
        let member = |names: &'static [&'static str]| {
            (
                prop_oneof![3 => select(names).prop_map(str::to_string), 1 => text()],
                prop_oneof![number(), text().prop_map(Value::from), json(2)],
            )
        };
        let account =
            vec(member(ACCOUNT_KEYS), 0..8).prop_map(|m| Value::Object(m.into_iter().collect()));
        (vec(member(STORE_KEYS), 0..5), vec(account, 0..4)).prop_map(|(top, accounts)| {
            let mut m: Map<String, Value> = top.into_iter().collect();
            m.insert("accounts".into(), Value::Array(accounts));
            Value::Object(m)
        })
    }

    /// Structural damage to one field of the store or of one account.
    #[derive(Debug, Clone)]
    enum Damage {
        Remove,
        Null,
        Retype(Vec<Value>, Index),
        /// Any number in a field that holds a number or null.
        Number(Value),
        /// Copies of the first account appended, up to one past the most a store may hold.
        Duplicate(usize),
        /// A whole account replaced by any JSON.
        Account(Value),
    }

    fn damage() -> impl Strategy<Value = (Option<Index>, Index, Damage)> {
        let kind = prop_oneof![
            1 => Just(Damage::Remove),
            1 => Just(Damage::Null),
            1 => (other_types(), any::<Index>()).prop_map(|(c, i)| Damage::Retype(c, i)),
            3 => number().prop_map(Damage::Number),
            1 => (0..=MAX_ACCOUNTS + 1).prop_map(Damage::Duplicate),
            1 => json(2).prop_map(Damage::Account),
        ];
        (option::of(any::<Index>()), any::<Index>(), kind)
    }

    fn harm(v: &mut Value, (account, key, damage): &(Option<Index>, Index, Damage)) {
        let Value::Object(top) = v else { return };
        if let (Damage::Duplicate(_) | Damage::Account(_), Some(Value::Array(a))) =
            (damage, top.get_mut("accounts"))
        {
            match damage {
                Damage::Duplicate(n) => {
                    if let Some(first) = a.first().cloned() {
                        for _ in 0..*n {
                            if a.len() > MAX_ACCOUNTS {
                                break;
                            }
                            a.push(first.clone());
                        }
                    }
                }
                Damage::Account(x) if !a.is_empty() => {
                    let i = key.index(a.len());
                    a[i] = x.clone();
                }
                _ => {}
            }
            return;
        }
        let accounts = top
            .get("accounts")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let target: &mut Map<String, Value> = match account {
            Some(i) if accounts > 0 => match top
                .get_mut("accounts")
                .and_then(Value::as_array_mut)
                .and_then(|a| a.get_mut(i.index(accounts)))
            {
                Some(Value::Object(m)) => m,
                _ => return,
            },
            _ => top,
        };
        // A number goes into a field that holds a number (or null), where its range is
        // checked; the other damage into any field.
        let keys: Vec<String> = target
            .iter()
            .filter(|(_, v)| !matches!(damage, Damage::Number(_)) || v.is_number() || v.is_null())
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        let k = key.get(&keys).clone();
        match damage {
            Damage::Remove => {
                target.shift_remove(&k);
            }
            Damage::Null => {
                target.insert(k, Value::Null);
            }
            Damage::Retype(candidates, i) => {
                let old = target.get(&k).cloned().unwrap_or_default();
                target.insert(k, retype(&old, candidates, *i));
            }
            Damage::Number(n) => {
                target.insert(k, n.clone());
            }
            Damage::Duplicate(_) | Damage::Account(_) => {}
        }
    }

    /// What every store `parse` accepts satisfies (files.md); and it survives a write and a
    /// re-read unchanged, unknown fields included, and writing it again is byte-identical.
    fn check_store(s: &Store, input: &[u8]) -> std::result::Result<(), TestCaseError> {
        prop_assert!(s.max_accounts >= 1 && s.max_accounts <= MAX_ACCOUNTS);
        prop_assert!(s.accounts.len() <= s.max_accounts);
        for (i, a) in s.accounts.iter().enumerate() {
            prop_assert!(!a.id.is_empty() && !a.access_token.expose().is_empty());
            prop_assert!(!a.refresh_token.expose().is_empty());
            prop_assert!(s.accounts[..i].iter().all(|b| b.id != a.id), "duplicate id");
            let times = [
                Some(a.expiry_date),
                Some(a.created_at),
                a.last_used_at,
                a.rate_limit_resets_at,
                a.last_rate_limited_at,
                a.status_changed_at,
                a.refresh_failed_at,
            ];
            for t in times.into_iter().flatten() {
                prop_assert!((0..=MAX_TIME_MS).contains(&t), "time {}", t);
            }
        }
        let written = s.to_json();
        let again = Store::parse(&written, file()).map_err(|e| {
            TestCaseError::fail(format!(
                "a parsed store does not re-parse: {e}\ninput: {}\nwritten: {}",
                String::from_utf8_lossy(input),
                String::from_utf8_lossy(&written)
            ))
        })?;
        prop_assert_eq!(&again, s, "round trip changed the store");
        let rewritten = again.to_json();
        prop_assert_eq!(
            String::from_utf8_lossy(&rewritten),
            String::from_utf8_lossy(&written),
            "writing is not stable"
        );
        Ok(())
    }

    /// A refused file is exit 6 with one line that names it and quotes no token.
    fn check_store_error(e: &Error) -> std::result::Result<(), TestCaseError> {
        prop_assert_eq!(e.exit_code(), 6);
        let msg = e.to_string();
        prop_assert!(msg.starts_with("qwen-accounts.json: "), "{}", msg);
        prop_assert!(!msg.contains("SECRET"), "a token in an error: {}", msg);
        prop_assert!(!msg.contains('\n'), "{}", msg);
        Ok(())
    }

    /// `extra` holds exactly the members of `v` whose names start with `prefix`, in order,
    /// each as its JSON text: the compact text when the input was compact.
    fn check_unknown(
        extra: &Extra,
        v: &Value,
        prefix: &str,
        compact: bool,
    ) -> std::result::Result<(), TestCaseError> {
        let want: Vec<(&String, &Value)> = v
            .as_object()
            .map(|m| m.iter().filter(|(k, _)| k.starts_with(prefix)).collect())
            .unwrap_or_default();
        prop_assert_eq!(extra.0.len(), want.len());
        for ((k, raw), (wk, wv)) in extra.0.iter().zip(want) {
            prop_assert_eq!(k, wk);
            let read: Value = serde_json::from_str(raw.get()).unwrap_or_default();
            prop_assert_eq!(&read, wv, "{}", k);
            if compact {
                prop_assert_eq!(raw.get(), serde_json::to_string(wv).unwrap_or_default());
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// A store files.md allows parses, round-trips, and keeps every unknown field, at the
        /// top and in each account, with its exact text and in its place among the others.
        #[test]
        fn store_valid_parses_round_trips_and_keeps_unknown_fields(
            v in store(),
            pretty in any::<bool>(),
        ) {
            let text = to_bytes(&v, pretty);
            let s = Store::parse(&text, file()).map_err(|e| {
                TestCaseError::fail(format!(
                    "a valid store was refused: {e}\n{}",
                    String::from_utf8_lossy(&text)
                ))
            })?;
            check_store(&s, &text)?;
            check_unknown(&s.extra, &v, "tool", !pretty)?;
            let accounts = v["accounts"].as_array().cloned().unwrap_or_default();
            prop_assert_eq!(s.accounts.len(), accounts.len());
            for (a, va) in s.accounts.iter().zip(&accounts) {
                check_unknown(&a.extra, va, "other", !pretty)?;
            }
        }

        /// A damaged store (fields removed, nulled, of another type, numbers anywhere, too
        /// many accounts, an account that is any JSON; then maybe its bytes damaged) parses and round-trips, or is refused
        /// with exit 6 naming the file; never a panic.
        #[test]
        fn store_damaged_round_trips_or_is_refused_naming_the_file(
            mut v in store(),
            damages in vec(damage(), 0..=3),
            pretty in any::<bool>(),
            edits in option::weighted(0.25, edits()),
        ) {
            for d in &damages {
                harm(&mut v, d);
            }
            let mut text = to_bytes(&v, pretty);
            if let Some(e) = &edits {
                text = apply(text, e);
            }
            match Store::parse(&text, file()) {
                Ok(s) => check_store(&s, &text)?,
                Err(e) => check_store_error(&e)?,
            }
        }

        /// Any bytes, any JSON, or any JSON under the store's own field names: a store that
        /// round-trips, or exit 6 naming the file.
        #[test]
        fn store_any_input_round_trips_or_is_refused_naming_the_file(
            text in prop_oneof![
                vec(any::<u8>(), 0..=256),
                (json(4), any::<bool>()).prop_map(|(v, pretty)| to_bytes(&v, pretty)),
                (shaped(), any::<bool>()).prop_map(|(v, pretty)| to_bytes(&v, pretty)),
            ],
            edits in option::weighted(0.5, edits()),
        ) {
            let text = match &edits {
                Some(e) => apply(text, e),
                None => text,
            };
            match Store::parse(&text, file()) {
                Ok(s) => check_store(&s, &text)?,
                Err(e) => check_store_error(&e)?,
            }
        }
    }
}
