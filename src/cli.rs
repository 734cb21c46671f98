//! The command line (cli.md): argh structs only. Parsed with `FromArgs::from_args` so that a
//! usage error exits 2.

use argh::FromArgs;

pub use crate::pool::Name as PoolName;

#[derive(FromArgs, Debug)]
/// Keeps a pool of Qwen OAuth accounts and API keys and prints a valid token, rotating to the
/// next account when one is rate-limited.
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
            Some(Command::Label(a)) => a.pool.as_ref(),
            Some(Command::AddKey(a)) => a.pool.as_ref(),
            Some(Command::Enable(a)) => a.pool.as_ref(),
            Some(Command::Disable(a)) => a.pool.as_ref(),
            Some(Command::Reset(a)) => a.pool.as_ref(),
            Some(Command::Status(a)) => a.pool.as_ref(),
            Some(Command::Doctor(a)) => a.pool.as_ref(),
            // A completion script is the same for every pool.
            Some(Command::Completions(_)) => None,
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
    AddKey(AddKey),
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
    Completions(Completions),
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
    /// a name for the new account, shown by list and status
    #[argh(option)]
    pub label: Option<String>,
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
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
}

/// The options of `add-key` that take a value, and its switches. Anything else on its command
/// line is refused before argh sees it, so that a key typed there is never echoed.
const ADD_KEY_OPTIONS: [&str; 6] = [
    "--label",
    "--base-url",
    "--header",
    "--from-env",
    "--replace",
    "--pool",
];
const ADD_KEY_SWITCHES: [&str; 3] = ["--check", "--help", "-h"];

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
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
    /// print the result of each account as JSON on stdout
    #[argh(switch)]
    pub json: bool,
}

#[derive(FromArgs, Debug)]
/// Show the accounts: id, name, state, token expiry, requests, last use.
#[argh(subcommand, name = "list")]
pub struct List {
    /// print a JSON array instead of a table
    #[argh(switch)]
    pub json: bool,
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
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
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
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
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
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
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
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
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
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
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
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
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
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
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
}

#[derive(FromArgs, Debug)]
/// Show each account in detail: state, token expiry, requests today and in the last hour,
/// last error.
#[argh(subcommand, name = "status")]
pub struct StatusCmd {
    /// print a JSON object instead of text
    #[argh(switch)]
    pub json: bool,
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
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
    /// the account pool: NAME for qwen-accounts.NAME.json (default: $QWEN_CRED_POOL, else the default pool)
    #[argh(option, arg_name = "name")]
    pub pool: Option<PoolName>,
}

#[derive(FromArgs, Debug)]
/// Print a shell completion script: bash, zsh or fish.
#[argh(subcommand, name = "completions")]
pub struct Completions {
    /// the shell: bash, zsh or fish
    #[argh(positional)]
    pub shell: Shell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl std::str::FromStr for Shell {
    type Err = String;
    fn from_str(s: &str) -> Result<Shell, String> {
        match s {
            "bash" => Ok(Shell::Bash),
            "zsh" => Ok(Shell::Zsh),
            "fish" => Ok(Shell::Fish),
            _ => Err(format!("unknown shell \"{s}\": use bash, zsh or fish")),
        }
    }
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

/// Parses argv. `help COMMAND` is `COMMAND --help`, and `-h` is `--help`. Err carries the text
/// to print and whether it is help output (exit 0, stdout) or a usage error (exit 2, stderr);
/// a usage error names the nearest command or flag and the help to read.
pub fn parse(args: &[String]) -> Result<Cli, (String, bool)> {
    let mut rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    if rest.first() == Some(&"help") {
        rest.remove(0);
        rest.push("--help");
    }
    // A key given on the command line is refused before argh sees it, so no usage error can
    // echo it (the command word may follow `--pool NAME`).
    let add_key =
        (0..rest.len()).find(|&i| rest[i] == "add-key" && (i == 0 || rest[i - 1] != "--pool"));
    if let Some(i) = add_key {
        screen_add_key(&rest[i + 1..]).map_err(|e| (e, false))?;
    }
    if rest.contains(&"-h") {
        short_help(&mut rest);
    }
    Cli::from_args(&["qwen-cred"], &rest).map_err(|e| match e.status.is_ok() {
        true => (e.output, true),
        false => (explain(&rest, &e.output), false),
    })
}

/// The help text of the command `path` (`[]`: the program).
pub fn help_of(path: &[&str]) -> String {
    let mut args = path.to_vec();
    args.push("--help");
    match Cli::from_args(&["qwen-cred"], &args) {
        Err(e) => e.output,
        Ok(_) => String::new(),
    }
}

/// The entries of one section of a help text (`Commands:`, `Options:`, `Positional
/// Arguments:`): each name with its description (wrapped lines joined).
fn section(help: &str, title: &str) -> Vec<(String, String)> {
    let Some(body) = help.split(&format!("\n{title}\n")).nth(1) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for l in body.lines().take_while(|l| !l.trim().is_empty()) {
        if l.starts_with("   ") {
            if let Some((_, about)) = out.last_mut() {
                about.push(' ');
                about.push_str(l.trim());
            }
            continue;
        }
        let l = l.trim();
        let (name, about) = l.split_once("  ").unwrap_or((l, ""));
        if let Some(name) = name.split(',').next() {
            out.push((name.trim().to_string(), about.trim().to_string()));
        }
    }
    out
}

/// The subcommands of a help text, with what each does.
pub fn commands_in(help: &str) -> Vec<(String, String)> {
    section(help, "Commands:")
}

/// The flags of a help text (`--help` included), with what each does.
pub fn flags_in(help: &str) -> Vec<(String, String)> {
    section(help, "Options:")
}

/// The positional arguments of a help text, by name.
pub fn positionals_in(help: &str) -> Vec<String> {
    section(help, "Positional Arguments:")
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

/// Whether `flag` takes a value, per the usage line (`[--account <account>]`).
pub fn takes_value(help: &str, flag: &str) -> bool {
    let usage = help.lines().next().unwrap_or("");
    let words: Vec<&str> = usage
        .split(|c: char| c.is_whitespace() || c == '[' || c == ']')
        .filter(|w| !w.is_empty())
        .collect();
    words
        .windows(2)
        .any(|w| w[0] == flag && w[1].starts_with('<'))
}

/// The command path `args` names (`["opencode", "install"]`) and where its own arguments
/// start. Levels with subcommands take only flags without values before the subcommand.
fn command_path<'a>(args: &[&'a str]) -> (Vec<&'a str>, usize) {
    let mut path: Vec<&str> = Vec::new();
    let mut i = 0;
    loop {
        let commands = commands_in(&help_of(&path));
        if commands.is_empty() {
            return (path, i);
        }
        while args.get(i).is_some_and(|a| a.starts_with('-')) {
            i += 1;
        }
        match args.get(i) {
            Some(a) if commands.iter().any(|(c, _)| c == a) => {
                path.push(a);
                i += 1;
            }
            _ => return (path, i),
        }
    }
}

/// `-h` becomes `--help`, except as the value of an option (`--label -h`) or after `--`.
fn short_help(args: &mut [&str]) {
    let (path, start) = command_path(args);
    let help = help_of(&path);
    for i in 0..args.len() {
        if args[i] == "--" && i >= start {
            break;
        }
        let value = i > 0 && i > start && takes_value(&help, args[i - 1]);
        if args[i] == "-h" && !value {
            args[i] = "--help";
        }
    }
}

/// A usage error made helpful: an unknown command or flag gets the nearest known one, and
/// every error the help to read.
fn explain(args: &[&str], argh_text: &str) -> String {
    let (path, _) = command_path(args);
    let help = help_of(&path);
    let cmd = path.join(" ");
    let see = if cmd.is_empty() {
        "run `qwen-cred help` for the commands".to_string()
    } else {
        format!("see `qwen-cred help {cmd}`")
    };
    // After "did you mean ...?" the hint starts a sentence.
    let see_cap = see[..1].to_uppercase() + &see[1..];
    let Some(word) = argh_text.trim().strip_prefix("Unrecognized argument: ") else {
        let mut text = argh_text.trim_end().to_string();
        text.push_str(&format!("\n{see}"));
        return text;
    };
    let commands = commands_in(&help);
    let flags = flags_in(&help);
    let names = |list: &[(String, String)]| -> Vec<String> {
        list.iter().map(|(n, _)| n.clone()).collect()
    };
    if word.starts_with('-') {
        let what = match cmd.is_empty() {
            true => format!("unknown flag `{word}`"),
            false => format!("unknown flag `{word}` for `qwen-cred {cmd}`"),
        };
        return match nearest(word, &names(&flags)) {
            Some(n) => format!("{what}; did you mean `{n}`? {see_cap}"),
            None => format!("{what}; {see}"),
        };
    }
    if !commands.is_empty() {
        let what = match cmd.is_empty() {
            true => format!("unknown command `{word}`"),
            false => format!("unknown command `{word}` for `qwen-cred {cmd}`"),
        };
        return match nearest(word, &names(&commands)) {
            Some(n) => {
                let full = if cmd.is_empty() {
                    n.clone()
                } else {
                    format!("{cmd} {n}")
                };
                format!("{what}; did you mean `{n}`? See `qwen-cred help {full}`, or `qwen-cred help` for all commands")
            }
            None => format!("{what}; {see}"),
        };
    }
    // A word too many: perhaps a flag typed without its dashes (`list json`).
    let dashed = format!("--{word}");
    match nearest(&dashed, &names(&flags)) {
        Some(n) => {
            format!(
                "unexpected argument `{word}` for `qwen-cred {cmd}`; did you mean `{n}`? {see_cap}"
            )
        }
        None => format!("unexpected argument `{word}` for `qwen-cred {cmd}`; {see}"),
    }
}

/// The candidate closest to `word`: one it starts (at least 2 characters), else one within
/// a third of its length in edits (a swap of two neighbours counts as one), at most 2.
fn nearest(word: &str, candidates: &[String]) -> Option<String> {
    let bare = word.trim_start_matches('-');
    if bare.chars().count() >= 2 {
        let prefixed: Vec<&String> = candidates.iter().filter(|c| c.starts_with(word)).collect();
        if let [only] = prefixed[..] {
            return Some(only.clone());
        }
    }
    let limit = (bare.chars().count() / 3).clamp(1, 2);
    candidates
        .iter()
        .map(|c| (distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.clone())
}

/// Edit distance with adjacent transpositions (optimal string alignment).
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nearest_takes_typos_swaps_and_prefixes_but_not_strangers() {
        let cmds = names(&[
            "token",
            "report-429",
            "refresh",
            "remove",
            "reset",
            "status",
        ]);
        assert_eq!(nearest("tokn", &cmds).as_deref(), Some("token"));
        assert_eq!(nearest("stauts", &cmds).as_deref(), Some("status"));
        assert_eq!(nearest("report", &cmds).as_deref(), Some("report-429"));
        assert_eq!(nearest("frobnicate", &cmds), None);
        // An ambiguous prefix falls back to edits: "re" is two edits from nothing here.
        assert_eq!(nearest("re", &cmds), None);
        let flags = names(&["--account", "--format", "--no-wait", "--help"]);
        assert_eq!(nearest("--acount", &flags).as_deref(), Some("--account"));
        assert_eq!(nearest("--nowait", &flags).as_deref(), Some("--no-wait"));
        assert_eq!(nearest("--x", &flags), None);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("ab", "ba"), 1);
    }

    #[test]
    fn help_texts_give_commands_flags_and_value_flags() {
        let top = help_of(&[]);
        let cmds: Vec<String> = commands_in(&top).into_iter().map(|(c, _)| c).collect();
        assert!(cmds.contains(&"token".to_string()) && cmds.contains(&"opencode".to_string()));
        let token = help_of(&["token"]);
        let flags: Vec<String> = flags_in(&token).into_iter().map(|(f, _)| f).collect();
        assert!(flags.contains(&"--account".into()) && flags.contains(&"--help".into()));
        assert!(takes_value(&token, "--account") && !takes_value(&token, "--no-wait"));
        assert_eq!(positionals_in(&help_of(&["remove"])), ["ids"]);
        assert_eq!(
            command_path(&["opencode", "install", "-h"]).0,
            ["opencode", "install"]
        );
        assert_eq!(command_path(&["--version", "tokn"]), (vec![], 1));
    }

    #[test]
    fn short_help_spares_option_values() {
        let mut a = vec!["login", "--label", "-h"];
        short_help(&mut a);
        assert_eq!(a, ["login", "--label", "-h"]);
        let mut a = vec!["token", "-h"];
        short_help(&mut a);
        assert_eq!(a, ["token", "--help"]);
        let mut a = vec!["-h"];
        short_help(&mut a);
        assert_eq!(a, ["--help"]);
    }

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
