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
    List(List),
    Use(Use),
    Remove(Remove),
    Import(Import),
    Config(ConfigCmd),
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
