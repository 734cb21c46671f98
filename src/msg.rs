//! Everything printed: stdout only for what a command is asked to print, every message on
//! stderr prefixed `qwen-cred: `, diagnostics only with `QWEN_CRED_LOG=debug`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static DEBUG: AtomicBool = AtomicBool::new(false);

pub fn set_debug(on: bool) {
    DEBUG.store(on, Ordering::Relaxed);
}

pub fn warn(m: &str) {
    let _ = writeln!(std::io::stderr(), "qwen-cred: {m}");
}

pub fn debug(m: &str) {
    if DEBUG.load(Ordering::Relaxed) {
        warn(&format!("debug: {m}"));
    }
}

/// Writes to stdout; a closed stdout (broken pipe) is not an error (cli.md). Any other
/// failure (a full disk, `> /dev/full`, an I/O error) is exit 6, a local file problem: what
/// was asked for did not reach its destination.
pub fn out(text: &str) -> crate::error::Result<()> {
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|_| o.flush()) {
        Ok(()) => Ok(()),
        Err(e) => stdout_error(e),
    }
}

fn stdout_error(e: std::io::Error) -> crate::error::Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return Ok(());
    }
    Err(crate::error::Error::File(format!(
        "cannot write to stdout: {e}; the output was not delivered"
    )))
}

/// Unix ms as RFC 3339 UTC, e.g. `2026-11-23T16:00:00Z`.
pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `in 2h 5m`, `3m ago`: a rough, human distance between `ms` and `now`.
pub fn relative(ms: i64, now: i64) -> String {
    let secs = (ms - now) / 1000;
    let a = secs.unsigned_abs();
    if secs <= 0 && a < 5 {
        return "just now".into();
    }
    let span = match a {
        0..=59 => format!("{a}s"),
        60..=3599 => format!("{}m", a / 60),
        3600..=86_399 => format!("{}h {}m", a / 3600, a % 3600 / 60),
        _ => format!("{}d {}h", a / 86_400, a % 86_400 / 3600),
    };
    if secs >= 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn a_closed_stdout_is_fine_and_a_full_one_is_a_file_problem() {
        assert!(stdout_error(Error::from(ErrorKind::BrokenPipe)).is_ok());
        let full = stdout_error(Error::from_raw_os_error(libc::ENOSPC));
        let e = full.err().map(|e| (e.exit_code(), e.to_string()));
        assert!(
            e.as_ref().is_some_and(|(code, m)| *code == 6
                && m.starts_with("cannot write to stdout: ")
                && m.contains("No space left on device")),
            "{e:?}"
        );
    }
}
