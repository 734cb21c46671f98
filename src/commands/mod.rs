//! One file per command; this one dispatches and holds the store transaction they share.

mod accounts;
mod config;
mod login;
mod opencode;
mod refresh;
mod report_429;
mod token;

use crate::cli::{Cli, Command};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::{self, Store};

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
        Command::Refresh(a) => refresh::run(&cfg, &a),
        Command::List(a) => accounts::list(&cfg, &a),
        Command::Use(a) => accounts::use_(&cfg, &a),
        Command::Remove(a) => accounts::remove(&cfg, &a),
        Command::Import(a) => accounts::import(&cfg, &a),
        Command::Config(a) => config::run(&cfg, &a),
        Command::Opencode(a) => opencode::run(&cfg, &a),
    }
}

/// Lock the store, re-read it, let `f` change it, write it back if it changed. Every store
/// update goes through here, so no update is lost and nothing is written without the lock.
pub fn transact<T>(cfg: &Config, f: impl FnOnce(&mut Store) -> Result<T>) -> Result<T> {
    let (out, saved) = transact_lenient(cfg, f)?;
    saved.map(|()| out)
}

/// As `transact`, but a failed write (disk full, read-only directory) comes back beside `f`'s
/// result instead of replacing it, for bookkeeping a caller can go on without.
pub fn transact_lenient<T>(
    cfg: &Config,
    f: impl FnOnce(&mut Store) -> Result<T>,
) -> Result<(T, Result<()>)> {
    let path = cfg.store_path();
    let _held = crate::lock::store(&cfg.dir, cfg.lock_timeout())?;
    let before = store::load(&path)?;
    let mut after = before.clone();
    let out = f(&mut after)?;
    let saved = match after != before {
        true => store::save(&path, &after),
        false => Ok(()),
    };
    Ok((out, saved))
}
