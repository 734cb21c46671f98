//! The mock Qwen server as a standalone process, for `scripts/demo` and the benchmarks:
//!
//! ```sh
//! cargo test --test integration serve_mock -- --ignored --nocapture
//! ```
//!
//! prints `MOCK_URL=http://127.0.0.1:PORT` and serves until its stdin reaches end of file (so
//! it stops when the script that started it goes away). Settings from the environment:
//! `QWEN_MOCK_QUOTA` (requests a day per account on the chat API), `QWEN_MOCK_EMAILS`
//! (comma-separated: each login is approved with the next email), `QWEN_MOCK_ACCOUNTS`
//! (comma-separated `refresh:access` token pairs known from the start), `QWEN_MOCK_KEYS`
//! (comma-separated API keys the API takes, each with `QWEN_MOCK_QUOTA` requests per window
//! of `QWEN_MOCK_KEY_WINDOW` seconds, default 3600; a 429 says `Retry-After`).

use crate::util::mock::{KeySpec, Mock};
use std::io::{Read, Write};
use std::time::Duration;

#[test]
#[ignore = "a server for scripts, not a test"]
fn serve_mock() {
    let mock = Mock::start();
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if let Ok(q) = var("QWEN_MOCK_QUOTA").parse() {
        mock.set_quota_per_account(Some(q));
    }
    for email in var("QWEN_MOCK_EMAILS").split(',').filter(|e| !e.is_empty()) {
        mock.push_approval(mock.approval(Some(email)));
    }
    for pair in var("QWEN_MOCK_ACCOUNTS")
        .split(',')
        .filter(|p| !p.is_empty())
    {
        if let Some((rt, at)) = pair.split_once(':') {
            mock.add_account(rt, at);
        }
    }
    let window = var("QWEN_MOCK_KEY_WINDOW").parse().unwrap_or(3600);
    for key in var("QWEN_MOCK_KEYS").split(',').filter(|k| !k.is_empty()) {
        let spec = KeySpec {
            quota: var("QWEN_MOCK_QUOTA").parse().ok(),
            window: Duration::from_secs(window),
            ..KeySpec::default()
        };
        mock.add_key(key, spec);
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "MOCK_URL={}", mock.base_url());
    let _ = out.flush();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}
