//! One file per command; this one dispatches and holds what several commands share.

mod accounts;
mod config;
mod keys;
mod login;
mod opencode;
mod refresh;
mod report_429;
mod token;

use crate::cli::{Cli, Command};
use crate::config::Config;
use crate::error::{Error, Result};

pub fn run(cli: Cli) -> Result<()> {
    if cli.version {
        return crate::msg::out(&format!("qwen-cred {}\n", env!("CARGO_PKG_VERSION")));
    }
    let Some(command) = cli.command else {
        return Err(Error::Usage(
            "a command is needed; run `qwen-cred --help` for the list".into(),
        ));
    };
    // The schema needs no config; a bad qwen.json's message points the user to it.
    if let Command::Config(crate::cli::ConfigCmd { schema: true, .. }) = command {
        return config::print_json(&crate::config::schema());
    }
    let cfg = Config::load()?;
    crate::msg::set_debug(cfg.debug);
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
        Command::Config(a) => config::run(&cfg, &a),
        Command::Opencode(a) => opencode::run(&cfg, &a),
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

/// Adds (or updates) the account of a Qwen CLI file, linked to it (`import`, and `token` on
/// an empty pool); returns what happened.
pub fn import_file(cfg: &Config, path: &std::path::Path, email: Option<&str>) -> Result<String> {
    let creds = crate::qwen_cli::read(path)?;
    let now = crate::store::now_ms();
    crate::store::update(&cfg.dir, cfg.lock_timeout(), |s| {
        crate::qwen_cli::import(s, path, &creds, email, now)
    })
}
