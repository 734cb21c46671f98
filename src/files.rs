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

/// Reads a regular file of at most `max` bytes (following a symlink), with its metadata;
/// `None` when it does not exist. Anything else is exit 6 before a byte is read: a FIFO would
/// block, a device (`/dev/zero`) would never end, a directory cannot be read. The type and
/// size are checked before opening, and again on the open file (it may have been swapped);
/// the open is non-blocking so a FIFO swapped in meanwhile cannot hang it, and the read stops
/// one byte past `max`. `what` names the file's role in messages ("a config").
pub fn read_regular(
    path: &Path,
    max: u64,
    what: &str,
) -> Result<Option<(Vec<u8>, std::fs::Metadata)>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let check = |meta: &std::fs::Metadata| -> Result<()> {
        if !meta.is_file() {
            return Err(Error::File(format!(
                "{}: is not a regular file ({}); {what} must be a plain file",
                path.display(),
                file_kind(meta)
            )));
        }
        if meta.len() > max {
            return Err(too_big(path, meta.len(), max, what));
        }
        Ok(())
    };
    match std::fs::metadata(path) {
        Ok(meta) => check(&meta)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("cannot read", path, e)),
    }
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("cannot read", path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| Error::io("cannot read", path, e))?;
    check(&meta)?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("cannot read", path, e))?;
    let len = bytes.len() as u64;
    if len > max {
        // It grew while being read; its size now is at least this.
        return Err(too_big(path, len, max, what));
    }
    Ok(Some((bytes, meta)))
}

fn too_big(path: &Path, len: u64, max: u64, what: &str) -> Error {
    Error::File(format!(
        "{}: is {len} bytes ({:.1} MiB), more than the {} MiB {what} may have; is it the right file?",
        path.display(),
        len as f64 / 1_048_576.0,
        max / 1_048_576
    ))
}

/// What a non-regular file is, for messages.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// `bytes` (a file at `path`) parsed as a JSON object of type `T`; `None` when empty or
/// blank. Every problem is exit 6 naming the file: a UTF-8 byte order mark, invalid UTF-8,
/// invalid JSON, or JSON that is not an object.
pub fn parse_json_object<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
    path: &Path,
) -> Result<Option<T>> {
    let name = path.display();
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        return Err(Error::File(format!(
            "{name}: starts with a UTF-8 byte order mark; remove it (qwen-cred reads plain UTF-8 JSON)"
        )));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Error::File(format!(
            "{name}: not valid UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<T>(text) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            Err(Error::File(format!("{name}: expected a JSON object")))
        }
        Err(e) => Err(Error::File(format!("{name}: not valid JSON: {e}"))),
    }
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

    #[test]
    fn read_regular_refuses_what_is_not_a_small_file() {
        let d = std::env::temp_dir().join(format!("qwen-cred-read-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        ensure_dir(&d).expect("dir");
        let f = d.join("f");
        assert!(matches!(read_regular(&f, 4, "a file"), Ok(None)));
        std::fs::write(&f, b"1234").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            read_regular(&f, 4, "a file").ok().flatten().map(|(b, _)| b),
            Some(b"1234".to_vec())
        );
        std::fs::write(&f, b"12345").unwrap_or_else(|e| panic!("{e}"));
        let e = read_regular(&f, 4, "a file").err().map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|m| m.contains("is 5 bytes") && m.contains("a file may have")),
            "{e:?}"
        );
        let e = read_regular(&d, 4, "a file").err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|m| m.contains("(a directory)")),
            "{e:?}"
        );
        let link = d.join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap_or_else(|e| panic!("{e}"));
        let e = read_regular(&link, 4, "a file")
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|m| m.contains("(a device)")),
            "{e:?}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
