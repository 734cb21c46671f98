//! One file per command; this one dispatches and holds what several commands share.

mod accounts;
mod completions;
mod config;
mod doctor;
mod keys;
mod login;
mod opencode;
mod refresh;
mod report_429;
mod status;
mod token;

use crate::cli::{Cli, Command};
use crate::config::Config;
use crate::error::{Error, Result};

pub fn run(cli: Cli) -> Result<()> {
    let mut pool_name = None;
    run_in(cli, &mut pool_name).map_err(|e| in_pool(pool_name.as_deref(), e))
}

/// `run`, which sets `pool_name` once the pool is known.
fn run_in(cli: Cli, pool_name: &mut Option<String>) -> Result<()> {
    if cli.version {
        return crate::msg::out(&format!("qwen-cred {}\n", env!("CARGO_PKG_VERSION")));
    }
    let pool = cli.pool().map_err(Error::Usage)?.cloned();
    let Some(command) = cli.command else {
        return Err(Error::Usage(
            "a command is needed; run `qwen-cred --help` for the list".into(),
        ));
    };
    // The schema needs no config; a bad qwen.json's message points the user to it.
    if let Command::Config(crate::cli::ConfigCmd { schema: true, .. }) = command {
        return config::print_json(&crate::config::schema());
    }
    if let Command::Completions(a) = &command {
        return completions::run(a);
    }
    // doctor reports a bad config instead of stopping at it.
    if let Command::Doctor(a) = &command {
        let (cfg, problem) = Config::load_lenient(pool.as_ref())?;
        crate::msg::set_debug(cfg.debug);
        return doctor::run(&cfg, problem, a);
    }
    let cfg = Config::load(pool.as_ref())?;
    crate::msg::set_debug(cfg.debug);
    *pool_name = cfg.pool.name().map(String::from);
    match command {
        Command::Token(a) => token::run(&cfg, &a),
        Command::Report429(a) => report_429::run(&cfg, &a),
        Command::Login(a) => login::run(&cfg, &a),
        Command::AddKey(a) => keys::add(&cfg, &a),
        Command::Refresh(a) => refresh::run(&cfg, &a),
        Command::List(a) => accounts::list(&cfg, &a),
        Command::Use(a) => accounts::use_(&cfg, &a),
        Command::Remove(a) => accounts::remove(&cfg, &a),
        Command::Import(a) => accounts::import(&cfg, &a),
        Command::Label(a) => accounts::label(&cfg, &a),
        Command::Enable(a) => accounts::enable(&cfg, &a),
        Command::Disable(a) => accounts::disable(&cfg, &a),
        Command::Reset(a) => accounts::reset(&cfg, &a),
        Command::Status(a) => status::run(&cfg, &a),
        Command::Doctor(_) | Command::Completions(_) => unreachable!("answered above"),
        Command::Config(a) => config::run(&cfg, &a),
        Command::Opencode(a) => opencode::run(&cfg, &a),
    }
}

/// In a named pool, an error that suggests a qwen-cred command says that the command needs
/// `--pool` too: `qwen-cred login` alone would sign in to the default pool.
fn in_pool(pool_name: Option<&str>, e: Error) -> Error {
    let Some(p) = pool_name else {
        return e;
    };
    const SUGGESTED: [&str; 7] = [
        "login", "import", "remove", "use", "list", "refresh", "add-key",
    ];
    let suggests = |m: &str| {
        m.split("qwen-cred ")
            .skip(1)
            .any(|rest| SUGGESTED.iter().any(|c| rest.starts_with(c)))
    };
    let note = |m: String| match suggests(&m) && !m.contains("--pool") {
        true => format!("{m} (pool {p}: add --pool {p} to that command)"),
        false => m,
    };
    match e {
        Error::Internal(m) => Error::Internal(note(m)),
        Error::Usage(m) => Error::Usage(note(m)),
        Error::NoAccount(m) => Error::NoAccount(note(m)),
        Error::RateLimited(m) => Error::RateLimited(note(m)),
        Error::Server(m) => Error::Server(note(m)),
        Error::File(m) => Error::File(note(m)),
        Error::Login(m) => Error::Login(note(m)),
    }
}

/// Every usable account is cooling down until `until`: wait for it when allowed and within
/// `max_rate_limit_wait_seconds`, else exit 4 naming the time.
pub fn wait_for_reset(cfg: &Config, until: i64, no_wait: bool) -> Result<()> {
    use std::io::IsTerminal;
    let now = crate::store::now_ms();
    let ms = (until - now).max(0);
    let secs = (ms + 999) / 1000;
    let max_ms = cfg.settings.max_rate_limit_wait_seconds as i64 * 1000;
    if no_wait || ms > max_ms {
        return Err(Error::RateLimited(format!(
            "every usable account is cooling down; the soonest is free at {} (in {secs} s)",
            crate::msg::rfc3339(until)
        )));
    }
    crate::msg::warn(&format!(
        "every usable account is cooling down; waiting {secs} s until {}",
        crate::msg::rfc3339(until)
    ));
    let end = std::time::Instant::now() + std::time::Duration::from_millis(ms as u64);
    let tty = std::io::stderr().is_terminal();
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        if tty {
            eprint!("\rqwen-cred: {} s left ", left.as_secs() + 1);
        }
        std::thread::sleep(left.min(std::time::Duration::from_secs(1)));
    }
    if tty {
        eprintln!();
    }
    Ok(())
}

/// What an import did.
pub struct Imported {
    /// For the user, e.g. "imported F as account 2".
    pub message: String,
    /// A new account, not one already in the pool.
    pub added: bool,
    /// The account, as `--json` shows it.
    pub account: serde_json::Value,
}

/// Adds (or updates) the account of a Qwen CLI file, linked to it (`import`, and `token` on
/// an empty pool); returns what happened.
pub fn import_file(cfg: &Config, path: &std::path::Path, email: Option<&str>) -> Result<Imported> {
    let creds = crate::qwen_cli::read(path)?;
    let now = crate::store::now_ms();
    crate::store::update(&cfg.pool, cfg.lock_timeout(), |s| {
        let added = s.index_by_refresh_token(&creds.refresh_token).is_none();
        let message = crate::qwen_cli::import(s, path, &creds, email, now)?;
        let account = match s.index_by_refresh_token(&creds.refresh_token) {
            Some(i) => accounts::account_json(cfg, s, &s.accounts[i], now),
            None => serde_json::Value::Null,
        };
        Ok(Imported {
            message,
            added,
            account,
        })
    })
}
