//! qwen-cred: a stateless credential helper for a pool of Qwen OAuth accounts. `main` parses
//! the command line, runs it, and maps an error to its exit code (cli.md).

mod apikey;
mod cli;
mod commands;
mod config;
mod error;
mod files;
mod journal;
mod lock;
mod msg;
mod oauth;
mod pool;
mod qwen_cli;
mod refresh;
mod rotation;
mod secret;
mod signals;
mod store;
#[cfg(test)]
mod strategies;
mod tty;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cli = match cli::parse(&args) {
        Ok(c) => c,
        Err((text, true)) => {
            let _ = msg::out(&text);
            let _ = msg::out("\n");
            std::process::exit(0);
        }
        Err((text, false)) => {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                msg::warn(line);
            }
            std::process::exit(2);
        }
    };
    if let Err(e) = commands::run(cli) {
        msg::warn(&e.to_string());
        std::process::exit(e.exit_code());
    }
}
