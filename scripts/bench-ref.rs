//! The floor that `scripts/bench-token` compares `qwen-cred token` against: the same file work
//! with nothing else (no config, no JSON model, no rotation). Lock the sidecar file, read the
//! store, write it back atomically, print the first account's access_token, unlock.
//!
//!     rustc -O scripts/bench-ref.rs -o bench-ref && QWEN_CRED_CONFIG_DIR=D ./bench-ref

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

fn main() -> io::Result<()> {
    let dir = PathBuf::from(std::env::var_os("QWEN_CRED_CONFIG_DIR").ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "QWEN_CRED_CONFIG_DIR is not set")
    })?);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join("qwen-accounts.lock"))?;
    lock.lock()?;

    let store = dir.join("qwen-accounts.json");
    let text = fs::read_to_string(&store)?;

    let tmp = dir.join(format!(".qwen-accounts.json.{}.tmp", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, &store)?;
    File::open(&dir)?.sync_all()?;

    // The first `"access_token": "..."` value; the store escapes nothing in a token.
    let token = text
        .split_once("\"access_token\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(value, _)| value)
        .unwrap_or_default();
    let mut out = io::stdout().lock();
    writeln!(out, "{token}")?;
    out.flush()?;
    lock.unlock()
}
