//! The Qwen Code CLI's credentials file `~/.qwen/oauth_creds.json` (files.md): reading it for
//! `import` and first-run adoption.

use crate::error::{Error, Result};
use crate::secret::Secret;
use serde_json::Value;
use std::path::Path;

/// The tokens of a Qwen CLI file.
pub struct Creds {
    pub access_token: Secret,
    pub refresh_token: Secret,
    pub token_type: String,
    pub resource_url: Option<String>,
    pub expiry_date: i64,
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
            .ok_or_else(|| {
                Error::File(format!(
                    "{}: expiry_date: expected a number",
                    path.display()
                ))
            })?,
    })
}
