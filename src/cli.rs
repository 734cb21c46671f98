//! The command line (cli.md): argh structs only. Parsed with `FromArgs::from_args` so that a
//! usage error exits 2.

use argh::FromArgs;

#[derive(FromArgs, Debug)]
/// Keeps a pool of Qwen OAuth accounts and API keys and prints a valid token, rotating to the
/// next account when one is rate-limited.
pub struct Cli {
    /// print the version and exit
    #[argh(switch)]
    pub version: bool,
    #[argh(subcommand)]
    pub command: Option<Command>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Token(Token),
    Report429(Report429),
    Login(Login),
    AddKey(AddKey),
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
    /// the Retry-After header as received: delta-seconds or an HTTP-date
    #[argh(option)]
    pub retry_after: Option<String>,
    /// file holding the response body, or - for stdin
    #[argh(option)]
    pub body: Option<String>,
    /// never sleep or wait; exit at once
    #[argh(switch)]
    pub no_wait: bool,
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
}

#[derive(FromArgs, Debug)]
/// Add an API key (Coding Plan, DashScope, any OpenAI-compatible key): from a prompt, stdin or
/// --from-env, never the command line.
#[argh(subcommand, name = "add-key")]
pub struct AddKey {
    /// a name for this key, shown by list
    #[argh(option)]
    pub label: Option<String>,
    /// the API's base URL, used as given (default https://coding-intl.dashscope.aliyuncs.com/v1)
    #[argh(option)]
    pub base_url: Option<String>,
    /// a request header to send with this key, 'Name: value' (repeat for more)
    #[argh(option)]
    pub header: Vec<String>,
    /// read the key from this environment variable
    #[argh(option)]
    pub from_env: Option<String>,
    /// first make one request with the key (GET BASE_URL/models); refuse a key the server rejects
    #[argh(switch)]
    pub check: bool,
    /// put the key into this key account in place of its old one (its counters stay)
    #[argh(option)]
    pub replace: Option<String>,
}

/// The options of `add-key` that take a value, and its switches. Anything else on its command
/// line is refused before argh sees it, so that a key typed there is never echoed.
const ADD_KEY_OPTIONS: [&str; 5] = [
    "--label",
    "--base-url",
    "--header",
    "--from-env",
    "--replace",
];
const ADD_KEY_SWITCHES: [&str; 2] = ["--check", "--help"];

/// `add-key` takes no positional argument: a key given there would be in `ps` output and the
/// shell's history. Refused (exit 2) without quoting it, with the ways that keep it secret.
fn screen_add_key(args: &[&str]) -> Result<(), String> {
    let hint = "the key is never taken from the command line (ps and the shell history would show it): type it at the prompt, pipe it on stdin (qwen-cred add-key < file), or name an environment variable with --from-env VAR";
    let mut it = args.iter().enumerate();
    while let Some((i, a)) = it.next() {
        if ADD_KEY_OPTIONS.contains(a) {
            it.next();
        } else if ADD_KEY_SWITCHES.contains(a) {
        } else if a.starts_with("--") {
            // Only the name: `--key=sk-...` carries the key after the `=`.
            let name = a.split('=').next().unwrap_or_default();
            let name: String = name
                .chars()
                .take(40)
                .filter(|c| c.is_ascii_graphic())
                .collect();
            return Err(format!("add-key: unknown option {name}; {hint}"));
        } else {
            return Err(format!(
                "add-key: argument {} is not an option; {hint}",
                i + 1
            ));
        }
    }
    Ok(())
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
}

#[derive(FromArgs, Debug)]
/// Show the accounts: id, email or fingerprint, state, token expiry, requests, last use.
#[argh(subcommand, name = "list")]
pub struct List {
    /// print a JSON array instead of a table
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs, Debug)]
/// Make an account the current one.
#[argh(subcommand, name = "use")]
pub struct Use {
    /// account id, or its email where unambiguous
    #[argh(positional)]
    pub id: String,
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
    /// also add the provider block to opencode.json (plain JSON only; a backup is kept)
    #[argh(switch)]
    pub write_config: bool,
    /// print what would be done, change nothing
    #[argh(switch)]
    pub dry_run: bool,
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
    if rest.first() == Some(&"add-key") {
        screen_add_key(&rest[1..]).map_err(|e| (e, false))?;
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
    fn add_key_refuses_a_key_on_the_command_line_without_quoting_it() {
        for a in [
            &["add-key", "sk-sp-secret"][..],
            &["add-key", "--label", "work", "sk-sp-secret"],
            &["add-key", "--key=sk-sp-secret"],
            &["add-key", "--api-key", "sk-sp-secret"],
            &["add-key", "--check", "--", "sk-sp-secret"],
        ] {
            match parse(&args(a)) {
                Err((text, false)) => {
                    assert!(!text.contains("sk-sp-secret"), "{a:?}: {text}");
                    assert!(text.contains("--from-env"), "{a:?}: {text}");
                }
                other => panic!("{a:?}: {other:?}"),
            }
        }
        assert!(parse(&args(&[
            "add-key",
            "--label",
            "w",
            "--header",
            "X-A: b",
            "--header",
            "X-B: c",
            "--check",
            "--base-url",
            "https://x/v1",
            "--from-env",
            "K",
            "--replace",
            "3"
        ]))
        .is_ok());
        assert!(matches!(parse(&args(&["help", "add-key"])), Err((_, true))));
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
