//! The command line (cli.md): argh structs only. Parsed with `FromArgs::from_args` so that a
//! usage error exits 2.

use argh::FromArgs;

pub use crate::pool::Name as PoolName;

#[derive(FromArgs, Debug)]
/// Keeps a pool of Qwen OAuth accounts signed in and prints a valid access token, rotating to
/// the next account when one is rate-limited.
pub struct Cli {
    /// print the version and exit
    #[argh(switch)]
    pub version: bool,
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
    #[argh(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// The pool the command line names, before the command (`qwen-cred --pool P token`) or
    /// after it (`qwen-cred token --pool P`); both only when they agree. `None`: not named
    /// (then `$QWEN_CRED_POOL`, else the default pool).
    pub fn pool(&self) -> Result<Option<&PoolName>, String> {
        let after = match &self.command {
            None => None,
            Some(Command::Token(a)) => a.pool.as_ref(),
            Some(Command::Report429(a)) => a.pool.as_ref(),
            Some(Command::Login(a)) => a.pool.as_ref(),
            Some(Command::Refresh(a)) => a.pool.as_ref(),
            Some(Command::List(a)) => a.pool.as_ref(),
            Some(Command::Use(a)) => a.pool.as_ref(),
            Some(Command::Remove(a)) => a.pool.as_ref(),
            Some(Command::Import(a)) => a.pool.as_ref(),
            Some(Command::Config(a)) => a.pool.as_ref(),
            Some(Command::Opencode(Opencode {
                command: OpencodeCommand::Install(a),
            })) => a.pool.as_ref(),
        };
        match (self.pool.as_ref(), after) {
            (Some(a), Some(b)) if a != b => Err(format!(
                "--pool is given twice, as {} and as {}; give it once",
                a.arg(),
                b.arg()
            )),
            (a, b) => Ok(a.or(b)),
        }
    }
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Token(Token),
    Report429(Report429),
    Login(Login),
    Refresh(Refresh),
    List(List),
    Use(Use),
    Remove(Remove),
    Import(Import),
    Config(ConfigCmd),
    Opencode(Opencode),
}

#[derive(FromArgs, Debug)]
/// Print a valid access token for the account the rotation policy picks.
#[argh(subcommand, name = "token")]
pub struct Token {
    /// use this account (no rotation; still refreshed when needed)
    #[argh(option)]
    pub account: Option<String>,
    /// output format: raw (default), json, env or header
    #[argh(option, default = "Format::Raw")]
    pub format: Format,
    /// refresh first unless the token stays valid this many seconds (at most 31536000)
    #[argh(option, default = "0", from_str_fn(seconds))]
    pub min_valid: u64,
    /// exit 4 at once instead of waiting when every account is cooling down
    #[argh(switch)]
    pub no_wait: bool,
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Json,
    Env,
    Header,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "raw" => Ok(Format::Raw),
            "json" => Ok(Format::Json),
            "env" => Ok(Format::Env),
            "header" => Ok(Format::Header),
            _ => Err(format!(
                "unknown format \"{s}\": use raw, json, env or header"
            )),
        }
    }
}

#[derive(FromArgs, Debug)]
/// Tell the pool that a request got HTTP 429 (or 403 with a quota body); rotates as needed.
#[argh(subcommand, name = "report-429")]
pub struct Report429 {
    /// the account that got the 429 (default: $QWEN_CRED_ACCOUNT_ID, else the current one)
    #[argh(option)]
    pub account: Option<String>,
    /// the Retry-After header as received: delta-seconds or an HTTP-date; wins over the headers
    #[argh(option)]
    pub retry_after: Option<String>,
    /// file holding the response's header block (as curl -D writes it), or - for stdin
    #[argh(option)]
    pub headers: Option<String>,
    /// file holding the response body, or - for stdin (after the headers when both are -)
    #[argh(option)]
    pub body: Option<String>,
    /// never sleep or wait; exit at once
    #[argh(switch)]
    pub no_wait: bool,
    /// print the decision as one JSON line on stdout, before any wait
    #[argh(switch)]
    pub json: bool,
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
}

#[derive(FromArgs, Debug)]
/// Sign in an account with the OAuth device flow and add it to the pool.
#[argh(subcommand, name = "login")]
pub struct Login {
    /// do not open a browser; just print the URL and code
    #[argh(switch)]
    pub no_browser: bool,
    /// email to show for this account when the server does not say
    #[argh(option)]
    pub email: Option<String>,
    /// replace this account with the new one
    #[argh(option)]
    pub replace: Option<String>,
    /// empty the pool once the new login has succeeded
    #[argh(switch)]
    pub fresh: bool,
    /// give up after this many seconds (default: the device code's lifetime; at most 31536000)
    #[argh(option, from_str_fn(seconds))]
    pub timeout: Option<u64>,
    /// print progress as JSON lines on stdout
    #[argh(switch)]
    pub json: bool,
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
}

#[derive(FromArgs, Debug)]
/// Refresh tokens now: the current account, one, all, or those due.
#[argh(subcommand, name = "refresh")]
pub struct Refresh {
    /// refresh this account
    #[argh(option)]
    pub account: Option<String>,
    /// refresh every account that is not revoked
    #[argh(switch)]
    pub all: bool,
    /// refresh only the accounts whose tokens are due
    #[argh(switch)]
    pub due: bool,
    /// refresh even if the token is not due
    #[argh(switch)]
    pub force: bool,
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
}

#[derive(FromArgs, Debug)]
/// Show the accounts: id, email or fingerprint, state, token expiry, requests, last use.
#[argh(subcommand, name = "list")]
pub struct List {
    /// print a JSON array instead of a table
    #[argh(switch)]
    pub json: bool,
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
}

#[derive(FromArgs, Debug)]
/// Make an account the current one.
#[argh(subcommand, name = "use")]
pub struct Use {
    /// account id, or its email where unambiguous
    #[argh(positional)]
    pub id: String,
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
}

#[derive(FromArgs, Debug)]
/// Delete accounts from the pool.
#[argh(subcommand, name = "remove")]
pub struct Remove {
    /// account ids (or emails) to delete
    #[argh(positional)]
    pub ids: Vec<String>,
    /// delete every account
    #[argh(switch)]
    pub all: bool,
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
}

#[derive(FromArgs, Debug)]
/// Add the account of a Qwen Code CLI credentials file (default ~/.qwen/oauth_creds.json).
#[argh(subcommand, name = "import")]
pub struct Import {
    /// the credentials file to import
    #[argh(positional)]
    pub path: Option<String>,
    /// email to show for this account
    #[argh(option)]
    pub email: Option<String>,
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
}

#[derive(FromArgs, Debug)]
/// Show the effective configuration and where each value came from.
#[argh(subcommand, name = "config")]
pub struct ConfigCmd {
    /// print a JSON object instead of a table
    #[argh(switch)]
    pub json: bool,
    /// print the JSON Schema of qwen.json
    #[argh(switch)]
    pub schema: bool,
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
}

#[derive(FromArgs, Debug)]
/// Set up OpenCode to take its Qwen tokens from qwen-cred.
#[argh(subcommand, name = "opencode")]
pub struct Opencode {
    #[argh(subcommand)]
    pub command: OpencodeCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum OpencodeCommand {
    Install(OpencodeInstall),
}

#[derive(FromArgs, Debug)]
/// Write the qwen-cred plugin into OpenCode's plugin folder and print the provider block.
#[argh(subcommand, name = "install")]
pub struct OpencodeInstall {
    /// for a named pool, the OpenCode provider to serve from it (e.g. qwen-coding-plan)
    #[argh(option)]
    pub provider: Option<String>,
    /// for a named pool, its provider's API base URL (default: the Qwen OAuth API)
    #[argh(option)]
    pub base_url: Option<String>,
    /// for a named pool, a model its provider offers; repeat for more (default: coder-model, vision-model)
    #[argh(option)]
    pub model: Vec<String>,
    /// also add the provider block to opencode.json (plain JSON only; a backup is kept)
    #[argh(switch)]
    pub write_config: bool,
    /// print what would be done, change nothing
    #[argh(switch)]
    pub dry_run: bool,
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
}

/// The most seconds `--min-valid` and `--timeout` take: 365 days. More is a mistake (tokens
/// live an hour, device codes minutes); refusing it (exit 2) keeps every sum of times in range.
pub const MAX_SECS: u64 = 365 * 86_400;

/// A number of seconds from 0 to `MAX_SECS`.
fn seconds(value: &str) -> Result<u64, String> {
    let too_big = || format!("{value} is more than {MAX_SECS} seconds (365 days)");
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse::<u64>()
            .ok()
            .filter(|&n| n <= MAX_SECS)
            .ok_or_else(too_big);
    }
    Err(format!("{value:?} is not a number of seconds"))
}

/// Parses argv. `help COMMAND` is `COMMAND --help`. Err carries argh's text and whether it is
/// help output (exit 0, stdout) or a usage error (exit 2, stderr).
pub fn parse(args: &[String]) -> Result<Cli, (String, bool)> {
    let mut rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    if rest.first() == Some(&"help") {
        rest.remove(0);
        rest.push("--help");
    }
    Cli::from_args(&["qwen-cred"], &rest).map_err(|e| (e.output, e.status.is_ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        std::iter::once("qwen-cred")
            .chain(v.iter().copied())
            .map(String::from)
            .collect()
    }

    #[test]
    fn seconds_are_bounded_and_never_wrap() {
        assert_eq!(seconds("0"), Ok(0));
        assert_eq!(seconds("3000"), Ok(3000));
        assert_eq!(seconds("031536000"), Ok(MAX_SECS));
        for bad in [
            "31536001",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999",
        ] {
            let e = seconds(bad).err().unwrap_or_default();
            assert!(e.contains("more than 31536000 seconds"), "{bad}: {e}");
        }
        for bad in ["", "-1", "1e3", "1.5", " 5", "ten"] {
            let e = seconds(bad).err().unwrap_or_default();
            assert!(e.contains("not a number of seconds"), "{bad}: {e}");
        }
    }

    #[test]
    fn huge_seconds_are_a_usage_error() {
        for a in [
            &["token", "--min-valid", "18446744073709551615"][..],
            &["login", "--timeout", "18446744073709551615"],
        ] {
            match parse(&args(a)) {
                Err((text, false)) => assert!(text.contains("more than"), "{text}"),
                other => panic!("{a:?}: {other:?}"),
            }
        }
        assert!(parse(&args(&["token", "--min-valid", "3000"])).is_ok());
    }
}
