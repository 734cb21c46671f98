//! The one error type. Each variant is an exit code of `cli.md`; its message says what the
//! user should do next and never carries a token.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// Exit 1: a bug. Report it.
    Internal(String),
    /// Exit 2: the command line is wrong, or a choice is needed (full pool). Fix the command.
    Usage(String),
    /// Exit 3: no account can serve (empty pool, or every account revoked). Run `qwen-cred login`
    /// (or `add-key`).
    NoAccount(String),
    /// Exit 4: every usable account cools down past the wait limit. Wait until the time given.
    RateLimited(String),
    /// Exit 5: the OAuth server failed or could not be reached and no valid token was at hand.
    /// Retry later.
    Server(String),
    /// Exit 6: a local file problem (corrupt, newer format, bad config, permissions, lock
    /// timeout). Fix the file named.
    File(String),
    /// Exit 7: login failed (denied, expired code, timed out, cancelled). Log in again.
    Login(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Internal(_) => 1,
            Error::Usage(_) => 2,
            Error::NoAccount(_) => 3,
            Error::RateLimited(_) => 4,
            Error::Server(_) => 5,
            Error::File(_) => 6,
            Error::Login(_) => 7,
        }
    }

    /// No account can serve: exit 3, naming the revoked ones.
    pub fn no_account(revoked: &[String]) -> Error {
        if revoked.is_empty() {
            Error::NoAccount(
                "no account can serve: the pool is empty; run qwen-cred login (or qwen-cred add-key for an API key)".into(),
            )
        } else {
            Error::NoAccount(format!(
                "no account can serve: revoked: {}; run qwen-cred login (a key account: qwen-cred add-key --replace ID)",
                revoked.join(", ")
            ))
        }
    }

    /// No account can serve: exit 3, naming the revoked and the disabled ones and what
    /// brings each back.
    pub fn none_usable(revoked: &[String], disabled: &[String]) -> Error {
        if disabled.is_empty() {
            return Error::no_account(revoked);
        }
        let mut why = Vec::new();
        if !revoked.is_empty() {
            why.push(format!(
                "revoked: {} (run qwen-cred login)",
                revoked.join(", ")
            ));
        }
        why.push(format!(
            "disabled: {} (`qwen-cred enable ID` puts one back)",
            disabled.join(", ")
        ));
        Error::NoAccount(format!("no account can serve: {}", why.join("; ")))
    }

    /// A file error naming the path and the I/O failure.
    pub fn io(what: &str, path: &std::path::Path, e: std::io::Error) -> Error {
        Error::File(format!("{what} {}: {e}", path.display()))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (Error::Internal(m)
        | Error::Usage(m)
        | Error::NoAccount(m)
        | Error::RateLimited(m)
        | Error::Server(m)
        | Error::File(m)
        | Error::Login(m)) = self;
        f.write_str(m)
    }
}

impl std::error::Error for Error {}
