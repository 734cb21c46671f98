//! The Qwen Code CLI's credentials file `~/.qwen/oauth_creds.json` (files.md): reading it for
//! `import` and first-run adoption, and keeping a linked account in step with it
//! (`sync_qwen_cli`) under that CLI's own lock, so that neither side spends a refresh token
//! the other already rotated.
//!
//! The Qwen CLI's protocol (`@qwen-code/qwen-code` 0.24.4, sharedTokenManager.ts), which this
//! module follows: its directory is `$QWEN_HOME`, else `~/.qwen` (config.rs); its lock is
//! `oauth_creds.lock` next to the file, created with O_EXCL, never renewed, removed when done,
//! and stale only once its mtime is over 35 s old (its refresh alone may take 30 s, and on a
//! 400 it deletes the file); the file is replaced atomically through a `<file>.<hex>.tmp` temp
//! file with mode 0600, by the path itself (a symlink there is replaced, not followed).

use crate::error::{Error, Result};
use crate::secret::Secret;
use crate::store::{Account, Store};
use serde_json::Value;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
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

    /// Whether these tokens (the file's) should replace `a`'s. "Newer" means different, not
    /// later-expiring (files.md): a refresh token other than ours, in a file that changed
    /// since we last imported, adopted or agreed with it, means the Qwen CLI refreshed and
    /// ours is spent, whatever the expiries say. An account linked by an older qwen-cred has
    /// no such record; for it the old rule holds (adopt only tokens that expire no earlier),
    /// and a dead-token answer still re-reads the file before giving up (`adopt_other`).
    /// With the same refresh token, a fresher access token is taken as a plain gain.
    fn should_replace(&self, a: &Account) -> bool {
        if self.refresh_token == a.refresh_token {
            return self.access_token != a.access_token && self.expiry_date > a.expiry_date;
        }
        match &a.linked_refresh_fp {
            Some(seen) => *seen != self.refresh_token.sha256_hex(),
            None => self.expiry_date >= a.expiry_date,
        }
    }
}

/// The Qwen CLI's file holds a few hundred bytes; anything over this is not it.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Reads and validates the file; every problem names it (exit 6).
pub fn read(path: &Path) -> Result<Creds> {
    let Some((bytes, _)) = crate::files::read_regular(path, MAX_FILE_BYTES, "the Qwen CLI's file")?
    else {
        return Err(Error::File(format!("{}: not found", path.display())));
    };
    let v = Value::Object(crate::files::parse_json_object(&bytes, path)?.unwrap_or_default());
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

/// `path` made absolute the way the user gave it: not resolved through symlinks, so that a
/// link the Qwen CLI later replaces with a regular file still names the same place.
pub fn as_given(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Whether an account's `linked_file` names `file`: the same path as given, or the same file
/// now (two spellings of one path, or a store from a version that kept a symlink's target).
pub fn links_to(linked: &str, file: &Path) -> bool {
    let linked = Path::new(linked);
    as_given(linked) == as_given(file)
        || matches!((fs::canonicalize(linked), fs::canonicalize(file)), (Ok(x), Ok(y)) if x == y)
}

/// Adds (or updates) the account of the Qwen CLI file `path` holding `creds` in `s`, linked
/// to that file; says what happened. The caller holds the store lock.
pub fn import(
    s: &mut Store,
    path: &Path,
    creds: &Creds,
    email: Option<&str>,
    now: i64,
) -> Result<String> {
    let fp = creds.refresh_token.sha256_hex();
    // Imported by hand: a login `remove` took out may be imported again on its own later.
    if s.removed_qwen_cli_fp.as_ref() == Some(&fp) {
        s.removed_qwen_cli_fp = None;
    }
    if let Some(i) = s.index_by_refresh_token(&creds.refresh_token) {
        let a = &mut s.accounts[i];
        if creds.expiry_date > a.expiry_date {
            a.access_token = creds.access_token.clone();
            a.expiry_date = creds.expiry_date;
        }
        if let Some(e) = email {
            a.email = e.to_string();
        }
        if a.linked_file.as_deref().is_some_and(|l| links_to(l, path)) {
            a.linked_refresh_fp = Some(fp);
        }
        return Ok(format!("{} is already account {}", path.display(), a.id));
    }
    let mut a = Account::new(
        creds.access_token.clone(),
        creds.refresh_token.clone(),
        creds.expiry_date,
        now,
    );
    a.token_type = creds.token_type.clone();
    a.resource_url = creds.resource_url.clone();
    a.email = email.unwrap_or_default().to_string();
    // Linked by the path as given, not a symlink's target: the Qwen CLI replaces a symlink
    // there with a regular file, and the link must hold (files.md).
    a.linked_file = Some(as_given(path).to_string_lossy().into_owned());
    a.linked_refresh_fp = Some(fp);
    let i = s.add(a)?;
    Ok(format!(
        "imported {} as account {}",
        path.display(),
        s.accounts[i].id
    ))
}

/// Whether the Qwen CLI holds its lock on the file `a` is kept in step with (a live lock,
/// at most 35 s old): its refresh of the shared token may be in flight, so ours must not
/// start.
pub fn cli_is_refreshing(file: Option<&Path>, a: &Account) -> bool {
    let Some(file) = file else {
        return false;
    };
    a.linked_file.as_deref().is_some_and(|l| links_to(l, file))
        && lock_age(&file.with_file_name(LOCK_FILE)).is_some_and(|age| age <= STALE)
}

/// What `remove` remembers when the removed accounts include the Qwen CLI's login (linked to
/// its file, or holding the token that file holds): the fingerprint of the refresh token the
/// file holds now (else of the removed account's), so that `token` does not import that login
/// again on its own. `None` when no removed account came from there.
pub fn removed_login(file: &Path, removed: &[Account]) -> Option<String> {
    let in_file = read(file).ok().map(|c| c.refresh_token);
    let gone = removed.iter().find(|a| {
        a.linked_file.as_deref().is_some_and(|l| links_to(l, file))
            || in_file.as_ref() == Some(&a.refresh_token)
    })?;
    Some(in_file.as_ref().unwrap_or(&gone.refresh_token).sha256_hex())
}

/// Whether `file` holds the login `remove` took out of the pool (`removed_fp`).
pub fn was_removed(file: &Path, removed_fp: Option<&str>) -> bool {
    removed_fp.is_some_and(|fp| read(file).is_ok_and(|c| c.refresh_token.sha256_hex() == fp))
}

/// Why a refresh cannot keep in step with the Qwen CLI's file now; nothing was sent.
pub enum Busy {
    /// The Qwen CLI holds its lock; says which.
    Locked(String),
    /// Its directory cannot hold our lock (read-only, permissions): the caller reports it
    /// (`unwritable_warning`, at most once an hour) and serves what it can.
    Unwritable { dir: PathBuf, error: String },
}

impl Busy {
    pub fn why(&self) -> String {
        match self {
            Busy::Locked(why) => why.clone(),
            Busy::Unwritable { dir, error } => format!(
                "cannot create the Qwen CLI's lock in {} ({error}); make that directory writable, or set sync_qwen_cli to false",
                dir.display()
            ),
        }
    }
}

/// How often a directory we cannot write is reported: once, then again only after this long.
pub const REPORT_UNWRITABLE_AGAIN_MS: i64 = 3_600_000;

/// The one-line warning for a Qwen CLI directory that cannot hold its lock.
pub fn unwritable_warning(dir: &Path, error: &str) -> String {
    format!(
        "{} is not writable ({error}): the account shared with the Qwen CLI is served while its token is valid, but never refreshed without the Qwen CLI's lock there; make that directory writable, or set sync_qwen_cli to false",
        dir.display()
    )
}

/// One refresh's sync with the Qwen CLI's file, holding that CLI's lock until dropped, so
/// the file cannot change between reading it and writing it back.
pub struct FileSync {
    /// The file by the path the user gave (`$QWEN_HOME` or `~/.qwen`), absolute.
    file: PathBuf,
    _lock: CliLock,
}

impl FileSync {
    /// Takes the Qwen CLI's lock when `a` is linked to its file, waiting up to `wait`.
    /// `Ok(None)`: nothing to keep in step (not linked, or the file is gone; the account itself
    /// is fine either way). `Err(Busy)`: the Qwen CLI still holds its lock, or its directory
    /// cannot hold ours (read-only, permissions): the shared token is never refreshed without
    /// that lock, so the caller serves what it can without refreshing.
    pub fn begin(
        file: &Path,
        a: &Account,
        wait: Duration,
    ) -> Result<std::result::Result<Option<FileSync>, Busy>> {
        let file = as_given(file);
        let Some(linked) = a.linked_file.as_deref() else {
            return Ok(Ok(None));
        };
        if !links_to(linked, &file) {
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
            Lock::Held(lock) => Ok(Some(FileSync { file, _lock: lock })),
            Lock::Busy if file.is_file() => Err(Busy::Locked(format!(
                "lock on {} not acquired within {} s (lock_timeout_seconds); the Qwen CLI is refreshing its token (a lock left by a dead process is taken over once {} s old)",
                lock_path.display(),
                wait.as_secs(),
                STALE.as_secs()
            ))),
            Lock::Busy | Lock::NoDir => Ok(None),
            Lock::Unwritable(e) => Err(Busy::Unwritable {
                dir: lock_path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                error: e.to_string(),
            }),
        })
    }

    /// The file's tokens now; `None` (with a debug line) when it is missing or unreadable:
    /// then it is left alone.
    pub fn read(&self) -> Option<Creds> {
        read(&self.file)
            .map_err(|e| crate::msg::debug(&format!("{e}; leaving it alone")))
            .ok()
    }

    /// Before a refresh, with the file's tokens `creds`: gives `a` those tokens if they should
    /// replace its own (`Creds::should_replace`); true when it did. Also keeps the account's
    /// record of the file: `linked_file` by the path as given, so that the link survives the
    /// Qwen CLI replacing a symlink there with a regular file, and `linked_refresh_fp`.
    pub fn adopt(&self, creds: &Creds, a: &mut Account) -> bool {
        a.linked_file = Some(self.file.to_string_lossy().into_owned());
        let replace = creds.should_replace(a);
        if replace || creds.refresh_token == a.refresh_token {
            a.linked_refresh_fp = Some(creds.refresh_token.sha256_hex());
        }
        if replace {
            creds.apply_to(a);
            crate::msg::debug(&format!(
                "account {}: adopted the tokens the Qwen CLI wrote to {}",
                a.id,
                self.file.display()
            ));
        }
        replace
    }

    /// After the server called `dead` dead, with the file's tokens `creds`: gives `a` the
    /// file's refresh token if it is another one (to be refreshed in turn instead of revoking
    /// the account); true when it did. `dead` itself is never sent again.
    pub fn adopt_other(&self, creds: &Creds, a: &mut Account, dead: &Secret) -> bool {
        // A login or import replaced the tokens meanwhile (theirs win), or the file holds
        // the dead token too.
        if a.refresh_token != *dead || creds.refresh_token == *dead {
            return false;
        }
        creds.apply_to(a);
        a.linked_refresh_fp = Some(creds.refresh_token.sha256_hex());
        crate::msg::debug(&format!(
            "account {}: the server called its refresh token dead; trying the one in {}",
            a.id,
            self.file.display()
        ));
        true
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
        let bytes =
            match crate::files::read_regular(&self.file, MAX_FILE_BYTES, "the Qwen CLI's file") {
                Ok(Some((b, _))) => b,
                Ok(None) => return leave("is gone"),
                Err(e) => return Err(std::io::Error::other(e.to_string())),
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
        // By the path itself, as the Qwen CLI writes (no-follow): a symlink there becomes a
        // regular file, which both sides keep using.
        write_atomic(&self.file, &text)?;
        Ok(true)
    }
}

/// Replaces the file atomically through a temp file named like the Qwen CLI's
/// (`<file>.<hex>.tmp`), 0600: the Qwen CLI sees the old file or the new one, whole.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = crate::files::sibling(path, "", &format!(".{}.tmp", unique_hex(12)));
    crate::files::replace(path, &tmp, bytes)
}

const LOCK_FILE: &str = "oauth_creds.lock";
/// The Qwen CLI's rule (`LOCK_TIMEOUT_MS` in 0.24.4; older releases used 10 s): a lock whose
/// mtime is more than this old was left by a dead process. Younger, it is live: the Qwen CLI
/// never renews it, and its refresh alone may take 30 s.
const STALE: Duration = Duration::from_secs(35);
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

/// What became of taking the Qwen CLI's lock.
pub enum Lock {
    Held(CliLock),
    /// Still held by another process when the wait ended.
    Busy,
    /// Its directory is gone: no file to keep in step.
    NoDir,
    /// The directory cannot hold a lock (read-only, permissions, full).
    Unwritable(std::io::Error),
}

/// Takes the lock at `path` the Qwen CLI's way, waiting up to `timeout`.
pub fn lock(path: &Path, timeout: Duration) -> Result<Lock> {
    let got = crate::lock::wait_for(path, timeout, MAX_PAUSE, || loop {
        match create_lock(path) {
            Ok(file) => return Ok(Some(Lock::Held(CliLock::hold(path, file)))),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Some(Lock::NoDir)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                if !remove_stale(path) {
                    return Ok(None);
                }
            }
            Err(e) => return Ok(Some(Lock::Unwritable(e))),
        }
    })?;
    Ok(got.unwrap_or(Lock::Busy))
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

/// How old the lock at `path` is by its mtime (one from the future counts as new); `None`
/// when there is none.
fn lock_age(path: &Path) -> Option<Duration> {
    let t = fs::metadata(path).and_then(|m| m.modified()).ok()?;
    Some(
        SystemTime::now()
            .duration_since(t)
            .unwrap_or(Duration::ZERO),
    )
}

fn is_stale(path: &Path) -> bool {
    lock_age(path).is_some_and(|age| age > STALE)
}

/// Takes a stale lock away; true when one was removed. It is moved aside first so that two
/// takers cannot both delete it; should a racing taker have replaced it with its own fresh
/// lock meanwhile, that one is put back.
fn remove_stale(path: &Path) -> bool {
    if !is_stale(path) {
        return false;
    }
    let aside = crate::files::sibling(path, "", &format!(".stale.{}", unique_hex(12)));
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

    fn held(l: Result<Lock>) -> Option<CliLock> {
        match l {
            Ok(Lock::Held(l)) => Some(l),
            _ => None,
        }
    }

    #[test]
    fn lock_is_exclusive_removed_on_drop_and_not_acquired_while_held() {
        let d = temp_dir("lock");
        let p = d.join(LOCK_FILE);
        let held = held(lock(&p, Duration::from_secs(1)));
        assert!(held.is_some() && p.exists());
        assert!(
            matches!(lock(&p, Duration::ZERO), Ok(Lock::Busy)),
            "held: not acquired"
        );
        drop(held);
        assert!(!p.exists());
        let _ = fs::remove_dir_all(&d);
    }

    /// The Qwen CLI's 35 s: a lock 34 s old is live (its refresh may still be in flight), one
    /// 36 s old was left by a dead process. A missing directory means no lock.
    #[test]
    fn only_a_lock_over_35_s_old_is_taken_over() {
        let d = temp_dir("stale");
        let p = d.join(LOCK_FILE);
        let plant = |age: u64| {
            File::create(&p)
                .and_then(|f| f.set_modified(SystemTime::now() - Duration::from_secs(age)))
                .is_ok()
        };
        assert!(plant(34));
        assert!(matches!(lock(&p, Duration::ZERO), Ok(Lock::Busy)));
        assert!(p.exists());
        assert!(plant(36));
        assert!(held(lock(&p, Duration::ZERO)).is_some());
        assert!(!p.exists());
        assert!(matches!(
            lock(&d.join("gone").join(LOCK_FILE), Duration::ZERO),
            Ok(Lock::NoDir)
        ));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn drop_leaves_a_lock_that_is_no_longer_ours() {
        let d = temp_dir("theirs");
        let p = d.join(LOCK_FILE);
        let held = held(lock(&p, Duration::ZERO));
        assert!(held.is_some());
        // As if ours went stale and the Qwen CLI took over.
        let _ = fs::remove_file(&p);
        assert!(fs::write(&p, "theirs").is_ok());
        drop(held);
        assert_eq!(fs::read_to_string(&p).ok().as_deref(), Some("theirs"));
        let _ = fs::remove_dir_all(&d);
    }

    /// Through a symlink, the Qwen CLI's way: the link itself is replaced by a regular file
    /// (its target is not written), so both sides go on using the path.
    #[test]
    fn atomic_write_replaces_a_symlink_instead_of_following_it() {
        let d = temp_dir("link");
        let target = d.join("elsewhere.json");
        let p = d.join("oauth_creds.json");
        assert!(fs::write(&target, "{}").is_ok());
        assert!(std::os::unix::fs::symlink(&target, &p).is_ok());
        assert!(write_atomic(&p, b"{\"a\":1}").is_ok());
        let meta = fs::symlink_metadata(&p).ok();
        assert!(meta.is_some_and(|m| m.file_type().is_file()));
        assert_eq!(fs::read(&p).ok().as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(fs::read(&target).ok().as_deref(), Some(&b"{}"[..]));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_link_is_kept_by_the_path_given_and_matches_older_canonical_links() {
        let d = temp_dir("links");
        let target = d.join("real.json");
        let p = d.join("oauth_creds.json");
        assert!(fs::write(&target, "{}").is_ok());
        assert!(std::os::unix::fs::symlink(&target, &p).is_ok());
        let given = p.to_string_lossy().into_owned();
        let canonical = target.to_string_lossy().into_owned();
        assert!(links_to(&given, &p));
        // What an older version stored: the target, while the link is there.
        assert!(links_to(&canonical, &p));
        // The Qwen CLI replaced the link with a file: the path as given still matches.
        assert!(fs::remove_file(&p).is_ok() && fs::write(&p, "{}").is_ok());
        assert!(links_to(&given, &p));
        assert!(!links_to(&canonical, &p));
        let _ = fs::remove_dir_all(&d);
    }

    fn linked(rt: &str, expiry: i64, fp: Option<&str>) -> Account {
        let mut a = Account::new(Secret::new("at"), Secret::new(rt), expiry, 0);
        a.linked_refresh_fp = fp.map(String::from);
        a
    }

    fn creds(at: &str, rt: &str, expiry: i64) -> Creds {
        Creds {
            access_token: Secret::new(at),
            refresh_token: Secret::new(rt),
            token_type: "Bearer".into(),
            resource_url: None,
            expiry_date: expiry,
        }
    }

    #[test]
    fn newer_means_different_since_last_seen_not_later_expiring() {
        let fp = |t: &str| Secret::new(t).sha256_hex();
        // The Qwen CLI refreshed after we last saw rt-1 there: adopted, even expiring sooner.
        assert!(creds("at-2", "rt-2", 100).should_replace(&linked("rt-1", 500, Some(&fp("rt-1")))));
        // The file still holds what we last saw, which is not ours (our write-back failed):
        // not adopted, even expiring later.
        assert!(!creds("at-1", "rt-1", 900).should_replace(&linked(
            "rt-2",
            500,
            Some(&fp("rt-1"))
        )));
        // No record (linked by an older version): the old rule.
        assert!(creds("at-2", "rt-2", 500).should_replace(&linked("rt-1", 500, None)));
        assert!(!creds("at-2", "rt-2", 499).should_replace(&linked("rt-1", 500, None)));
        // Same refresh token: only a fresher access token.
        assert!(creds("at-x", "rt-1", 600).should_replace(&linked("rt-1", 500, None)));
        assert!(!creds("at-x", "rt-1", 400).should_replace(&linked("rt-1", 500, None)));
        assert!(!creds("at", "rt-1", 600).should_replace(&linked("rt-1", 500, None)));
        assert_eq!(fp("rt-1").len(), 64);
        assert_ne!(fp("rt-1"), fp("rt-2"));
    }

    #[test]
    fn atomic_write_is_0600_and_leaves_no_temp_file() {
        use std::os::unix::fs::PermissionsExt;
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
