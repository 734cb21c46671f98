//! The refresh journal (files.md, Locking). Once a refresh request is sent the old refresh
//! token may be spent, so what a 200 carried is written here and fsync'd before the store
//! write is tried, and the next holder of that account's refresh lock folds it into the store
//! before anything else. Its space is reserved, and the file kept open, before the request:
//! a disk that fills up or a store directory made read-only meanwhile cannot stop the answer
//! from being written, and a store lock held by a stopped process does not matter.
//!
//! One file per account and pool, `D/qwen-accounts[.POOL].refresh-ID.journal`, 0600, only ever touched while
//! holding that account's refresh lock. Blank (reserved, never written) means nothing pending.

use crate::error::{Error, Result};
use crate::pool::Pool;
use crate::qwen_cli::Creds;
use crate::secret::Secret;
use serde_json::{json, Value};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Bytes reserved before a request: a token answer is a few hundred bytes.
const RESERVE: usize = 16 * 1024;
/// A journal is never read beyond this: anything larger is not ours.
const MAX_READ: u64 = 1024 * 1024;

pub fn path(pool: &Pool, account_id: &str) -> PathBuf {
    pool.account_file(account_id, "journal")
}

/// Space for one refresh answer, held open until recorded or discarded.
pub struct Journal {
    path: PathBuf,
    file: File,
}

/// What a journal holds: the tokens a refresh got, and which refresh token that refresh
/// spent (as SHA-256, never the token).
pub struct Entry {
    pub spent_sha256: String,
    pub creds: Creds,
}

impl Entry {
    /// Whether `refresh_token` is the one this entry's refresh spent: the store has not
    /// taken the entry yet.
    pub fn spent(&self, refresh_token: &Secret) -> bool {
        refresh_token.sha256_hex() == self.spent_sha256
    }
}

impl Journal {
    /// Creates the journal of `account_id` with room for an answer, synced, directory entry
    /// included. The caller holds the account's refresh lock and has folded any pending one.
    pub fn reserve(pool: &Pool, account_id: &str) -> Result<Journal> {
        let path = path(pool, account_id);
        let fail = |e: std::io::Error| Error::io("cannot reserve the refresh journal", &path, e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(fail)?;
        file.write_all_at(&[b' '; RESERVE], 0).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        if let Some(d) = path.parent().and_then(|d| File::open(d).ok()) {
            d.sync_all().map_err(fail)?;
        }
        Ok(Journal { path, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the answer into the reserved space and syncs it.
    pub fn record(&self, account_id: &str, spent: &Secret, creds: &Creds) -> std::io::Result<()> {
        let v = json!({
            "account_id": account_id,
            "spent_sha256": spent.sha256_hex(),
            "access_token": creds.access_token.expose(),
            "refresh_token": creds.refresh_token.expose(),
            "token_type": creds.token_type,
            "resource_url": creds.resource_url,
            "expiry_date": creds.expiry_date,
        });
        let text = serde_json::to_vec(&v).map_err(std::io::Error::other)?;
        // Within the reservation the file does not grow, so no block has to be found now.
        let mut bytes = text;
        bytes.resize(bytes.len().max(RESERVE), b' ');
        self.file.write_all_at(&bytes, 0)?;
        self.file.sync_data()
    }

    /// Removes the journal: its answer is in the store, or there was none to keep.
    pub fn discard(self) {
        remove_file(&self.path);
    }
}

/// The pending entry of `account_id`, if its journal holds one. A journal that cannot be
/// read or parsed is moved aside (never overwritten) with a warning naming both files.
pub fn pending(pool: &Pool, account_id: &str) -> Result<Option<Entry>> {
    let path = path(pool, account_id);
    let bytes = match read(&path) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        Err(e) => return Err(Error::io("cannot read the refresh journal", &path, e)),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        remove_file(&path);
        return Ok(None);
    }
    match parse(&bytes, account_id) {
        Some(entry) => Ok(Some(entry)),
        None => {
            let aside = path.with_extension("journal.unreadable");
            let _ = std::fs::rename(&path, &aside);
            crate::msg::warn(&format!(
                "{}: not a refresh journal this qwen-cred can read; moved to {}",
                path.display(),
                aside.display()
            ));
            Ok(None)
        }
    }
}

/// Whether account `account_id` has tokens waiting in its journal (for `list`).
pub fn is_pending(pool: &Pool, account_id: &str) -> bool {
    matches!(read(&path(pool, account_id)), Ok(Some(b)) if !b.iter().all(u8::is_ascii_whitespace))
}

/// The journal's bytes; `None` when there is none.
fn read(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_READ).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

fn parse(bytes: &[u8], account_id: &str) -> Option<Entry> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    if s("account_id")? != account_id {
        return None;
    }
    Some(Entry {
        spent_sha256: s("spent_sha256")?.to_string(),
        creds: Creds {
            access_token: Secret::new(s("access_token")?),
            refresh_token: Secret::new(s("refresh_token")?),
            token_type: s("token_type").unwrap_or("Bearer").to_string(),
            resource_url: s("resource_url").map(str::to_string),
            expiry_date: v
                .get("expiry_date")
                .and_then(Value::as_i64)
                .filter(|t| (0..=crate::store::MAX_TIME_MS).contains(t))?,
        },
    })
}

/// Removes the journal of `account_id` once its entry is in the store (or was stale).
pub fn remove(pool: &Pool, account_id: &str) {
    remove_file(&path(pool, account_id));
}

fn remove_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            crate::msg::debug(&format!("cannot remove {}: {e}", path.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_record_pending_discard() {
        let dir = std::env::temp_dir().join(format!("qwen-cred-journal-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let pool = Pool::new(&dir, None);
        let other_pool = Pool::new(&dir, Some("other".into()));
        assert!(pending(&pool, "7").ok().flatten().is_none(), "none yet");
        let j = Journal::reserve(&pool, "7").expect("reserve");
        assert!(!is_pending(&pool, "7"), "reserved is not pending");
        let creds = Creds {
            access_token: Secret::new("at-new"),
            refresh_token: Secret::new("rt-new"),
            token_type: "Bearer".into(),
            resource_url: None,
            expiry_date: 42,
        };
        let spent = Secret::new("rt-old");
        j.record("7", &spent, &creds).expect("record");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(j.path()).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
        assert!(is_pending(&pool, "7"));
        let e = pending(&pool, "7").ok().flatten().expect("pending entry");
        assert!(e.spent(&spent) && !e.spent(&creds.refresh_token));
        assert_eq!(e.creds.refresh_token.expose(), "rt-new");
        assert_eq!(e.creds.expiry_date, 42);
        // Another account's journal is not this one's.
        assert!(pending(&pool, "8").ok().flatten().is_none());
        // Nor is another pool's journal of an account with the same id.
        assert!(!is_pending(&other_pool, "7"));
        assert!(pending(&other_pool, "7").ok().flatten().is_none());
        j.discard();
        assert!(!path(&pool, "7").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
