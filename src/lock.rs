//! All locking: the store lock and the per-account refresh locks, each an `fd-lock` (flock)
//! on a sidecar file that is never renamed or deleted, so the kernel frees it when a process
//! dies and there are no stale locks. Order: a refresh lock is taken before the store lock,
//! never while holding it.

use crate::error::{Error, Result};
use fd_lock::RwLock;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A held lock; dropping it closes the file, which releases the lock.
pub struct Held {
    _file: RwLock<File>,
}

/// How long to try quietly before saying "waiting for lock".
const QUIET: Duration = Duration::from_millis(300);

/// Lock guarding every read-modify-write of the store; not getting it in time is exit 6.
pub fn store(dir: &Path, timeout: Duration) -> Result<Held> {
    let path = dir.join("qwen-accounts.lock");
    acquire(&path, timeout)?.ok_or_else(|| {
        Error::File(format!(
            "lock on {} not acquired within {} s (lock_timeout_seconds); another qwen-cred is still running",
            path.display(),
            timeout.as_secs()
        ))
    })
}

/// Single-flight lock for refreshing one account, held across re-read, HTTP and persist.
/// `None` when another process still holds it after `wait`: the caller serves what it can.
pub fn refresh(dir: &Path, account_id: &str, wait: Duration) -> Result<Option<Held>> {
    acquire(&refresh_lock_path(dir, account_id), wait)
}

fn refresh_lock_path(dir: &Path, account_id: &str) -> PathBuf {
    account_file(dir, account_id, "lock")
}

/// `D/qwen-accounts.refresh-ID.EXT`: a file of one account beside the store (its refresh lock,
/// its refresh journal).
pub fn account_file(dir: &Path, account_id: &str, ext: &str) -> PathBuf {
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
    dir.join(format!("qwen-accounts.refresh-{safe}.{ext}"))
}

/// `None` when the lock is still taken after `timeout`.
fn acquire(path: &Path, timeout: Duration) -> Result<Option<Held>> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        crate::files::ensure_dir(dir)?;
    }
    // O_NOFOLLOW: a symlink planted in place of a lock file would make us create or lock
    // whatever it points to. O_NONBLOCK: a FIFO there cannot hang the open.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    let mut lock = RwLock::new(file);
    let got = wait_for(path, timeout, Duration::from_millis(4), || {
        match lock.try_write() {
            Ok(guard) => {
                // Keep the lock until the file closes: `Held` owns the fd.
                std::mem::forget(guard);
                Ok(Some(()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(Error::io("cannot lock", path, e)),
        }
    })?;
    Ok(got.map(|()| Held { _file: lock }))
}

fn open_error(path: &Path, e: std::io::Error) -> Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        return Error::File(format!(
            "lock file {} is a symbolic link; qwen-cred does not follow it. Remove the link (qwen-cred creates its lock files itself)",
            path.display()
        ));
    }
    Error::io("cannot open lock file", path, e)
}

/// The waiting policy of every lock, ours and the Qwen CLI's: `attempt` until it gives
/// `Some`, quietly for a moment, then saying "waiting for lock on PATH", pausing a little
/// longer each time (up to `max_pause`); `None` once `timeout` has passed.
pub fn wait_for<T>(
    path: &Path,
    timeout: Duration,
    max_pause: Duration,
    mut attempt: impl FnMut() -> Result<Option<T>>,
) -> Result<Option<T>> {
    let start = Instant::now();
    let mut said = false;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(got) = attempt()? {
            if said {
                crate::msg::debug(&format!("got lock on {}", path.display()));
            }
            return Ok(Some(got));
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Ok(None);
        }
        if !said && waited >= QUIET {
            crate::msg::warn(&format!("waiting for lock on {}", path.display()));
            said = true;
        }
        std::thread::sleep(pause.min(timeout - waited));
        pause = (pause * 2).min(max_pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_lock_file_is_refused_and_its_target_not_created() {
        let d = std::env::temp_dir().join(format!("qwen-cred-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
        let target = d.join("target");
        std::os::unix::fs::symlink(&target, d.join("qwen-accounts.lock"))
            .unwrap_or_else(|e| panic!("{e}"));
        let e = store(&d, Duration::ZERO)
            .err()
            .map(|e| (e.exit_code(), e.to_string()));
        assert!(
            e.as_ref().is_some_and(
                |(c, m)| *c == 6 && m.contains("qwen-accounts.lock is a symbolic link")
            ),
            "{e:?}"
        );
        assert!(!target.exists());
        // A lock file of our own is fine.
        std::fs::remove_file(d.join("qwen-accounts.lock")).unwrap_or_else(|e| panic!("{e}"));
        assert!(store(&d, Duration::ZERO).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }
}
