//! The command line (cli.md): argh structs only. Parsed with `FromArgs::from_args` so that a
//! usage error exits 2.

use argh::FromArgs;

#[derive(FromArgs, Debug)]
/// Keeps a pool of Qwen OAuth accounts signed in and prints a valid access token, rotating to
/// the next account when one is rate-limited.
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
    Refresh(Refresh),
    List(List),
    Use(Use),
    Remove(Remove),
    Import(Import),
    Label(Label),
    Enable(Enable),
    Disable(Disable),
    Reset(Reset),
    Status(StatusCmd),
    Doctor(Doctor),
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
    /// refresh first unless the token stays valid this many seconds
    #[argh(option, default = "0")]
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
    /// give up after this many seconds (default: the device code's lifetime)
    #[argh(option)]
    pub timeout: Option<u64>,
    /// print progress as JSON lines on stdout
    #[argh(switch)]
    pub json: bool,
    /// a name for the new account, shown by list and status
    #[argh(option)]
    pub label: Option<String>,
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
    /// print the result of each account as JSON on stdout
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs, Debug)]
/// Show the accounts: id, email or fingerprint, state, token expiry, requests, last use.
#[argh(subcommand, name = "list")]
pub struct List {
    /// print a JSON array instead of a table
    #[argh(switch)]
    pub json: bool,
    /// print only the account ids, one per line
    #[argh(switch)]
    pub ids: bool,
}

#[derive(FromArgs, Debug)]
/// Make an account the current one.
#[argh(subcommand, name = "use")]
pub struct Use {
    /// account id, or its label or email where unambiguous
    #[argh(positional)]
    pub id: String,
    /// print the outcome as JSON on stdout
    #[argh(switch)]
    pub json: bool,
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
    /// print the outcome as JSON on stdout
    #[argh(switch)]
    pub json: bool,
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
    /// print the outcome as JSON on stdout
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs, Debug)]
/// Give an account a name of your own, shown by list and status and usable as its ID.
#[argh(subcommand, name = "label")]
pub struct Label {
    /// account id, or its label or email where unambiguous
    #[argh(positional)]
    pub id: String,
    /// the new label
    #[argh(positional)]
    pub name: Option<String>,
    /// remove the label
    #[argh(switch)]
    pub clear: bool,
    /// print the outcome as JSON on stdout
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs, Debug)]
/// Put a disabled account back in rotation.
#[argh(subcommand, name = "enable")]
pub struct Enable {
    /// account id, or its label or email where unambiguous
    #[argh(positional)]
    pub id: String,
    /// print the outcome as JSON on stdout
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs, Debug)]
/// Take an account out of rotation, keeping it in the pool (a pinned --account still uses it).
#[argh(subcommand, name = "disable")]
pub struct Disable {
    /// account id, or its label or email where unambiguous
    #[argh(positional)]
    pub id: String,
    /// print the outcome as JSON on stdout
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs, Debug)]
/// Clear the cooldown of an account (or of all), e.g. after a misclassified 429.
#[argh(subcommand, name = "reset")]
pub struct Reset {
    /// account id, or its label or email where unambiguous
    #[argh(positional)]
    pub id: Option<String>,
    /// clear the cooldown of every account
    #[argh(switch)]
    pub all: bool,
    /// print the outcome as JSON on stdout
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs, Debug)]
/// Show each account in detail: state, token expiry, requests today and in the last hour,
/// last error.
#[argh(subcommand, name = "status")]
pub struct StatusCmd {
    /// print a JSON object instead of text
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs, Debug)]
/// Check the installation, files and accounts; each problem with the command that fixes it.
#[argh(subcommand, name = "doctor")]
pub struct Doctor {
    /// also ask the OAuth server (reachable, clock skew); spends no refresh token
    #[argh(switch)]
    pub online: bool,
    /// print a JSON object instead of text
    #[argh(switch)]
    pub json: bool,
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
