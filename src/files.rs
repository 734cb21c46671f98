//! The file primitives every owner of a file shares: a directory created 0700, and the atomic
//! 0600 replacement of a file (temp file in the same directory, fsync, rename, fsync of the
//! directory), so a crash at any instant leaves the old file or the new one, whole.

use crate::error::{Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Creates a directory (and missing parents) with mode 0700.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("cannot create directory", dir, e))
}

/// Replaces `path` with `bytes`, for a file written only under its lock: the temp file has one
/// fixed name, `.NAME.tmp`, so one left by a crash is simply reused, with no directory scan.
pub fn write_locked(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = sibling(path, ".", ".tmp");
    write_with(path, &tmp, bytes)
}

/// Replaces `path` with `bytes`, for a file written without a lock of ours: the temp file's
/// name is this process's own.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = sibling(path, ".", &format!(".tmp-{}", std::process::id()));
    write_with(path, &tmp, bytes)
}

fn write_with(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        ensure_dir(dir)?;
    }
    replace(path, tmp, bytes).map_err(|e| Error::io("cannot write", path, e))
}

/// Writes `bytes` to `tmp` (0600 whatever the umask, never through a symlink, truncated if a
/// crash left it), syncs it, renames it over `path` and syncs the directory. A symlink at
/// `path` is replaced, not followed. On failure the temp file is removed.
pub fn replace(path: &Path, tmp: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(tmp)?;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(tmp, path)
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// `PREFIX + file name + SUFFIX` in the same directory as `path`.
pub fn sibling(path: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{prefix}{name}{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_is_0600_replaces_a_symlink_and_leaves_no_temp_file() {
        let d = std::env::temp_dir().join(format!("qwen-cred-files-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        ensure_dir(&d).expect("dir");
        let mode = |p: &Path| fs::symlink_metadata(p).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode(&d).ok(), Some(0o700));
        let target = d.join("target");
        fs::write(&target, "old").expect("target");
        let p = d.join("f.json");
        std::os::unix::fs::symlink(&target, &p).expect("symlink");
        write_locked(&p, b"{\"a\":1}").expect("write");
        assert_eq!(fs::read_to_string(&target).ok().as_deref(), Some("old"));
        assert_eq!(fs::read_to_string(&p).ok().as_deref(), Some("{\"a\":1}"));
        assert_eq!(mode(&p).ok(), Some(0o600));
        write_atomic(&p, b"2").expect("write again");
        let names: Vec<_> = fs::read_dir(&d)
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let _ = fs::remove_dir_all(&d);
    }
}
