//! Which pool a command works on, and the names of that pool's files (files.md, Named pools).
//! The default pool is the seed's `D/qwen-accounts.json`; pool NAME is `D/qwen-accounts.NAME.json`
//! beside it, with its own store lock, refresh locks and refresh journals, so that two pools
//! never share a file, a lock or a journal.
//!
//! The default pool's files are `qwen-accounts.json`, `qwen-accounts.lock` and
//! `qwen-accounts.refresh-ID.{lock,journal}`; pool NAME's are the same with `.NAME` after
//! `qwen-accounts`. A name has no dot, so the only name that could meet another pool's file is
//! one starting `refresh-` (pool `refresh-1`'s store lock would be the default pool's refresh
//! lock of account 1): such names are refused.

use std::path::{Path, PathBuf};

/// The name that means the default pool on the command line and in `QWEN_CRED_POOL`.
pub const DEFAULT: &str = "default";

/// The longest pool name: with an account id and `.journal.unreadable` it stays far below the
/// 255 bytes a file name may have.
pub const MAX_NAME: usize = 64;

/// A pool as named by `--pool` or `QWEN_CRED_POOL`: `None` is the default pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(pub Option<String>);

impl Name {
    /// The name as `--pool` takes it: `default` for the default pool.
    pub fn arg(&self) -> &str {
        self.0.as_deref().unwrap_or(DEFAULT)
    }
}

impl std::str::FromStr for Name {
    type Err = String;
    fn from_str(s: &str) -> Result<Name, String> {
        parse(s).map(Name)
    }
}

/// `default` is the default pool (`None`); any other name must be a safe part of a file name:
/// 1 to 64 ASCII letters, digits, `-` and `_`, starting with a letter or digit, and not
/// starting with `refresh-` in any case (see the module doc).
pub fn parse(s: &str) -> Result<Option<String>, String> {
    if s == DEFAULT {
        return Ok(None);
    }
    let shown: String = s.chars().take(MAX_NAME + 1).collect();
    let bad = |why: &str| Err(format!("invalid pool name {shown:?}: {why}"));
    if s.is_empty() {
        return bad("it is empty");
    }
    if s.len() > MAX_NAME {
        return bad(&format!("more than {MAX_NAME} characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return bad("use only letters, digits, - and _");
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("it must start with a letter or a digit");
    }
    if s.len() >= 8 && s[..8].eq_ignore_ascii_case("refresh-") {
        return bad("a name starting with refresh- would share the default pool's refresh locks");
    }
    Ok(Some(s.to_string()))
}

/// The pool a command works on: its directory and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    dir: PathBuf,
    name: Option<String>,
}

impl Pool {
    /// Pool `name` (`None`: the default pool) in `dir`. `name` has passed `parse`.
    pub fn new(dir: &Path, name: Option<String>) -> Pool {
        Pool {
            dir: dir.to_path_buf(),
            name,
        }
    }

    /// The name, `None` for the default pool.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The name as `--pool` takes it: `default` for the default pool.
    pub fn arg(&self) -> &str {
        self.name().unwrap_or(DEFAULT)
    }

    pub fn is_default(&self) -> bool {
        self.name.is_none()
    }

    /// `qwen-accounts` or `qwen-accounts.NAME`: what every file of the pool starts with.
    fn stem(&self) -> String {
        match &self.name {
            None => "qwen-accounts".into(),
            Some(n) => format!("qwen-accounts.{n}"),
        }
    }

    /// The account store.
    pub fn store_file(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.stem()))
    }

    /// The lock guarding every read-modify-write of the store.
    pub fn lock_file(&self) -> PathBuf {
        self.dir.join(format!("{}.lock", self.stem()))
    }

    /// `D/STEM.refresh-ID.EXT`: a file of one account beside the store (its refresh lock,
    /// its refresh journal).
    pub fn account_file(&self, account_id: &str, ext: &str) -> PathBuf {
        // Ids come from a file a person may edit: keep only what is safe in a file name.
        let safe: String = account_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir
            .join(format!("{}.refresh-{safe}.{ext}", self.stem()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_file_name_parts() {
        assert_eq!(parse("default"), Ok(None));
        for ok in ["coding", "Coding-Plan_2", "0", "a-", &"x".repeat(MAX_NAME)] {
            assert_eq!(parse(ok), Ok(Some(ok.to_string())), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("a.b", "only letters"),
            ("../x", "only letters"),
            ("a/b", "only letters"),
            ("a b", "only letters"),
            ("é", "only letters"),
            ("a\nb", "only letters"),
            ("-x", "start with a letter"),
            ("_x", "start with a letter"),
            ("refresh-1", "refresh-"),
            ("Refresh-x", "refresh-"),
            (&"x".repeat(MAX_NAME + 1), "more than 64"),
        ] {
            let e = parse(bad).err().unwrap_or_default();
            assert!(e.contains(why) && !e.contains('\n'), "{bad:?}: {e}");
        }
        // A long name is cut in the message.
        let e = parse(&"y".repeat(10_000)).err().unwrap_or_default();
        assert!(e.len() < 200, "{e}");
    }

    #[test]
    fn the_default_pool_keeps_the_seed_names_and_a_named_pool_its_own() {
        let d = Path::new("/d");
        let def = Pool::new(d, None);
        assert_eq!(def.store_file(), d.join("qwen-accounts.json"));
        assert_eq!(def.lock_file(), d.join("qwen-accounts.lock"));
        assert_eq!(
            def.account_file("1", "lock"),
            d.join("qwen-accounts.refresh-1.lock")
        );
        assert_eq!(def.arg(), "default");
        let p = Pool::new(d, Some("coding".into()));
        assert_eq!(p.store_file(), d.join("qwen-accounts.coding.json"));
        assert_eq!(p.lock_file(), d.join("qwen-accounts.coding.lock"));
        assert_eq!(
            p.account_file("a/b", "journal"),
            d.join("qwen-accounts.coding.refresh-a_b.journal")
        );
        assert_eq!(p.arg(), "coding");
    }

    #[test]
    fn no_two_pools_share_a_file() {
        // Every file of every pool among some names and ids, all distinct (case folded, as
        // on a case-insensitive disk, except where the names themselves differ only in case).
        let d = Path::new("/d");
        let names = [
            None,
            Some("a"),
            Some("refresh"),
            Some("lock"),
            Some("json"),
            Some("b-1"),
        ];
        let ids = ["1", "a", "lock", "refresh-1"];
        let mut seen = std::collections::HashMap::new();
        for n in names {
            let p = Pool::new(d, n.map(String::from));
            let mut files = vec![p.store_file(), p.lock_file()];
            for id in ids {
                files.push(p.account_file(id, "lock"));
                files.push(p.account_file(id, "journal"));
            }
            for f in files {
                let key = f.to_string_lossy().to_lowercase();
                if let Some(other) = seen.insert(key, n) {
                    panic!("{f:?} belongs to {other:?} and {n:?}");
                }
            }
        }
    }
}
