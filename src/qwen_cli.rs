//! The Qwen Code CLI's credentials file `~/.qwen/oauth_creds.json` (files.md): reading it for
//! `import` and first-run adoption, and keeping a linked account in step with it
//! (`sync_qwen_cli`) under that CLI's own lock, so that neither side spends a refresh token
//! the other already rotated.
//!
//! The Qwen CLI's protocol, which this module follows: its lock is `oauth_creds.lock` next to
//! the file, created with O_EXCL and removed when done; one whose mtime is over 10 s old is
//! stale and may be taken over (moved aside, then deleted); the file is replaced atomically
//! through a `<file>.<hex>.tmp` temp file with mode 0600.

use crate::commands::transact;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::secret::Secret;
use crate::store::Account;
use serde_json::Value;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// The tokens of a Qwen CLI file.
pub struct Creds {
    pub access_token: Secret,
    pub refresh_token: Secret,
    pub token_type: String,
    pub resource_url: Option<String>,
    pub expiry_date: i64,
}

impl Creds {
    /// Puts these tokens into `a`; without a resource_url the account keeps its own.
    pub fn apply_to(&self, a: &mut Account) {
        a.access_token = self.access_token.clone();
        a.refresh_token = self.refresh_token.clone();
        a.token_type = self.token_type.clone();
        if let Some(r) = &self.resource_url {
            a.resource_url = Some(r.clone());
        }
        a.expiry_date = self.expiry_date;
        a.refresh_failed_at = None;
    }

    /// Whether these tokens should replace `a`'s: they differ (the Qwen CLI refreshed or
    /// logged in) and expire no earlier. An equal expiry counts: both sides refresh under the
    /// same lock, so a tie in milliseconds means the file's refresh came after ours.
    fn newer_than(&self, a: &Account) -> bool {
        (self.refresh_token != a.refresh_token || self.access_token != a.access_token)
            && self.expiry_date >= a.expiry_date
    }
}

/// Reads and validates the file; every problem names it (exit 6).
pub fn read(path: &Path) -> Result<Creds> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::File(format!("{}: not valid JSON: {e}", path.display())))?;
    let field = |k: &str| -> Result<String> {
        match v.get(k) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(Error::File(format!(
                "{}: {k}: expected a non-empty string",
                path.display()
            ))),
        }
    };
    let opt = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    Ok(Creds {
        access_token: Secret::new(field("access_token")?),
        refresh_token: Secret::new(field("refresh_token")?),
        token_type: opt("token_type").unwrap_or_else(|| "Bearer".into()),
        resource_url: opt("resource_url"),
        expiry_date: v
            .get("expiry_date")
            .and_then(Value::as_i64)
            .filter(|t| (0..=crate::store::MAX_TIME_MS).contains(t))
            .ok_or_else(|| {
                Error::File(format!(
                    "{}: expiry_date: expected a number (Unix time in milliseconds)",
                    path.display()
                ))
            })?,
    })
}

/// Another process holds a lock a refresh needs; says which.
pub struct Busy(pub String);

/// One refresh's sync with the Qwen CLI's file, holding that CLI's lock until dropped, so
/// the file cannot change between reading it and writing it back.
pub struct FileSync {
    file: PathBuf,
    _lock: CliLock,
}

impl FileSync {
    /// Takes the Qwen CLI's lock when `a` is linked to its file, waiting up to `wait`.
    /// `Ok(None)`: nothing to keep in step (not linked, or the file is gone; the account itself
    /// is fine either way). `Err(Busy)`: the Qwen CLI still holds its lock.
    pub fn begin(
        cfg: &Config,
        a: &Account,
        wait: Duration,
    ) -> Result<std::result::Result<Option<FileSync>, Busy>> {
        let file = cfg.qwen_cli_file();
        let Some(linked) = a.linked_file.as_deref() else {
            return Ok(Ok(None));
        };
        if !same_file(Path::new(linked), &file) {
            return Ok(Ok(None));
        }
        if !file.is_file() {
            crate::msg::debug(&format!(
                "account {}: {} is gone; not syncing with it",
                a.id,
                file.display()
            ));
            return Ok(Ok(None));
        }
        let lock_path = file.with_file_name(LOCK_FILE);
        Ok(match lock(&lock_path, wait)? {
            Some(lock) => Ok(Some(FileSync { file, _lock: lock })),
            None if file.is_file() => Err(Busy(format!(
                "lock on {} not acquired within {} s (lock_timeout_seconds); the Qwen CLI is refreshing its token (a lock left by a dead process is taken over once {} s old)",
                lock_path.display(),
                wait.as_secs(),
                STALE.as_secs()
            ))),
            None => Ok(None),
        })
    }

    /// Before refreshing account `id`: if the file holds newer tokens than the store, stores
    /// them instead and returns the account as now stored. A missing or unreadable file is
    /// left alone.
    pub fn adopt(&self, cfg: &Config, id: &str) -> Result<Option<Account>> {
        let creds = match read(&self.file) {
            Ok(c) => c,
            Err(e) => {
                crate::msg::debug(&format!("{e}; leaving it alone"));
                return Ok(None);
            }
        };
        let adopted = transact(cfg, |s| {
            let i = s.find_id(id)?;
            let a = &mut s.accounts[i];
            if !creds.newer_than(a) {
                return Ok(None);
            }
            creds.apply_to(a);
            Ok(Some(a.clone()))
        })?;
        if adopted.is_some() {
            crate::msg::debug(&format!(
                "account {id}: adopted the newer tokens of {}",
                self.file.display()
            ));
        }
        Ok(adopted)
    }

    /// After our refresh spent `used`: gives the file the `new` tokens if it still holds
    /// `used` (now dead), keeping its other fields. A file holding anything else is the Qwen
    /// CLI's own business and is left alone.
    pub fn write_back(&self, used: &Secret, new: &Creds) {
        match self.try_write_back(used, new) {
            Ok(true) => {
                crate::msg::debug(&format!("wrote the new tokens to {}", self.file.display()))
            }
            Ok(false) => {}
            Err(e) => crate::msg::warn(&format!(
                "cannot update {} with the new tokens ({e}); the Qwen CLI may have to log in again",
                self.file.display()
            )),
        }
    }

    fn try_write_back(&self, used: &Secret, new: &Creds) -> std::io::Result<bool> {
        let leave = |why: &str| {
            crate::msg::debug(&format!("{} {why}; leaving it alone", self.file.display()));
            Ok(false)
        };
        let bytes = match fs::read(&self.file) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return leave("is gone"),
            Err(e) => return Err(e),
        };
        let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(&bytes) else {
            return leave("is not a JSON object");
        };
        if m.get("refresh_token").and_then(Value::as_str) != Some(used.expose()) {
            return leave("holds another refresh token");
        }
        m.insert("access_token".into(), new.access_token.expose().into());
        m.insert("refresh_token".into(), new.refresh_token.expose().into());
        m.insert("token_type".into(), new.token_type.clone().into());
        if let Some(r) = &new.resource_url {
            m.insert("resource_url".into(), r.clone().into());
        }
        m.insert("expiry_date".into(), new.expiry_date.into());
        let text = serde_json::to_vec_pretty(&Value::Object(m)).map_err(std::io::Error::other)?;
        // Through a symlink to its target, as the Qwen CLI does.
        let target = fs::canonicalize(&self.file).unwrap_or_else(|_| self.file.clone());
        write_atomic(&target, &text)?;
        Ok(true)
    }
}

/// Whether two paths name one file (`linked_file` is stored canonical).
fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((fs::canonicalize(a), fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
}

/// Temp file next to `path` named like the Qwen CLI's (`<file>.<hex>.tmp`), 0600, fsync,
/// rename, fsync the directory: the Qwen CLI sees the old file or the new one, whole.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = with_suffix(path, &format!(".{}.tmp", unique_hex(12)));
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // Exactly 0600 whatever the umask.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

const LOCK_FILE: &str = "oauth_creds.lock";
/// The Qwen CLI's rule: a lock whose mtime is older than this was left by a dead process.
const STALE: Duration = Duration::from_secs(10);
/// How often a held lock's mtime is renewed, well inside `STALE`, so that a slow refresh
/// (HTTP timeouts, retries) is not mistaken for a dead one and taken over mid-flight.
const HEARTBEAT: Duration = Duration::from_secs(2);
const MAX_PAUSE: Duration = Duration::from_millis(250);

/// The Qwen CLI's lock, held. Dropping it (also on an error or a panic) removes the lock
/// file, but only while it is still ours.
pub struct CliLock {
    path: PathBuf,
    file: File,
    heartbeat: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

/// Takes the lock at `path` the Qwen CLI's way, waiting up to `timeout`. `None` when it is
/// still held then, or when its directory is gone (no file to keep in step).
pub fn lock(path: &Path, timeout: Duration) -> Result<Option<CliLock>> {
    // Some(None): the directory is gone, stop waiting.
    let got = crate::lock::wait_for(path, timeout, MAX_PAUSE, || loop {
        match create_lock(path) {
            Ok(file) => return Ok(Some(Some(file))),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Some(None)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                if !remove_stale(path) {
                    return Ok(None);
                }
            }
            Err(e) => {
                return Err(Error::File(format!(
                    "cannot create the Qwen CLI's lock {}: {e}; fix that directory's permissions, or set sync_qwen_cli to false",
                    path.display()
                )))
            }
        }
    })?;
    Ok(got.flatten().map(|file| CliLock::hold(path, file)))
}

/// O_EXCL create, with a random id in it as the Qwen CLI writes.
fn create_lock(path: &Path) -> std::io::Result<File> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let h = unique_hex(32);
    let id = format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    );
    // The file's existence is the lock; its content only helps a person looking at it.
    let _ = f.write_all(id.as_bytes());
    Ok(f)
}

fn is_stale(path: &Path) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > STALE)
}

/// Takes a stale lock away; true when one was removed. It is moved aside first so that two
/// takers cannot both delete it; should a racing taker have replaced it with its own fresh
/// lock meanwhile, that one is put back.
fn remove_stale(path: &Path) -> bool {
    if !is_stale(path) {
        return false;
    }
    let aside = with_suffix(path, &format!(".stale.{}", unique_hex(12)));
    if fs::rename(path, &aside).is_err() {
        return false;
    }
    if !is_stale(&aside) {
        let _ = fs::hard_link(&aside, path);
    }
    let _ = fs::remove_file(&aside);
    crate::msg::debug(&format!("took over the stale lock {}", path.display()));
    true
}

impl CliLock {
    fn hold(path: &Path, file: File) -> CliLock {
        let heartbeat = file.try_clone().ok().and_then(|f| {
            let (stop, rx) = mpsc::channel::<()>();
            crate::signals::spawn_deaf("qwen-cli-lock", move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(HEARTBEAT) {
                    let _ = f.set_modified(SystemTime::now());
                }
            })
            .ok()
            .map(|h| (stop, h))
        });
        CliLock {
            path: path.to_path_buf(),
            file,
            heartbeat,
        }
    }
}

impl Drop for CliLock {
    fn drop(&mut self) {
        if let Some((stop, h)) = self.heartbeat.take() {
            drop(stop);
            let _ = h.join();
        }
        // After a takeover the path may name someone else's lock: remove only our own.
        let ours = match (fs::symlink_metadata(&self.path), self.file.metadata()) {
            (Ok(p), Ok(f)) => p.dev() == f.dev() && p.ino() == f.ino(),
            _ => false,
        };
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `n` random hex digits (n <= 64): names that no other process picks.
fn unique_hex(n: usize) -> String {
    let mut bytes = [0u8; 32];
    // Without the OS's randomness, the process id and the clock still make a name unique
    // enough: it is only ever created with O_EXCL.
    if getrandom::getrandom(&mut bytes).is_err() {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes[..16].copy_from_slice(&nanos.to_le_bytes());
        bytes[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    hex[..n.min(hex.len())].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "qwen-cred-unit-{name}-{}-{}",
            std::process::id(),
            unique_hex(8)
        ));
        let _ = fs::create_dir_all(&d);
        d
    }

    #[test]
    fn lock_is_exclusive_removed_on_drop_and_not_acquired_while_held() {
        let d = temp_dir("lock");
        let p = d.join(LOCK_FILE);
        let held = lock(&p, Duration::from_secs(1)).ok().flatten();
        assert!(held.is_some() && p.exists());
        assert!(
            matches!(lock(&p, Duration::ZERO), Ok(None)),
            "held: not acquired"
        );
        drop(held);
        assert!(!p.exists());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_stale_lock_is_taken_over_and_a_missing_dir_means_no_lock() {
        let d = temp_dir("stale");
        let p = d.join(LOCK_FILE);
        let old = File::create(&p).and_then(|f| {
            f.set_modified(SystemTime::now() - Duration::from_secs(11))
                .map(|_| f)
        });
        assert!(old.is_ok());
        assert!(lock(&p, Duration::ZERO).ok().flatten().is_some());
        assert!(!p.exists());
        assert!(lock(&d.join("gone").join(LOCK_FILE), Duration::ZERO)
            .ok()
            .is_some_and(|l| l.is_none()));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn drop_leaves_a_lock_that_is_no_longer_ours() {
        let d = temp_dir("theirs");
        let p = d.join(LOCK_FILE);
        let held = lock(&p, Duration::ZERO).ok().flatten();
        assert!(held.is_some());
        // As if ours went stale and the Qwen CLI took over.
        let _ = fs::remove_file(&p);
        assert!(fs::write(&p, "theirs").is_ok());
        drop(held);
        assert_eq!(fs::read_to_string(&p).ok().as_deref(), Some("theirs"));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn atomic_write_is_0600_and_leaves_no_temp_file() {
        let d = temp_dir("write");
        let p = d.join("oauth_creds.json");
        assert!(fs::write(&p, "{}").is_ok());
        assert!(fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).is_ok());
        assert!(write_atomic(&p, b"{\"a\":1}").is_ok());
        let mode = fs::metadata(&p)
            .map(|m| m.permissions().mode() & 0o777)
            .ok();
        assert_eq!(mode, Some(0o600));
        assert_eq!(fs::read_dir(&d).map(|r| r.count()).ok(), Some(1));
        let _ = fs::remove_dir_all(&d);
    }
}
