//! The mock Qwen server as a standalone process, for `scripts/demo`, the benchmarks and
//! `scripts/soak`:
//!
//! ```sh
//! cargo test --test integration serve_mock -- --ignored --nocapture
//! ```
//!
//! prints `MOCK_URL=http://127.0.0.1:PORT` and serves until its stdin reaches end of file (so
//! it stops when the script that started it goes away). `GET /__stats` answers its counters
//! as JSON ([`State::stats`]); `POST /__start` marks the start of a measured run. Settings from
//! the environment:
//! - `QWEN_MOCK_QUOTA`: requests a day per account on the chat API;
//!   `QWEN_MOCK_ACCOUNT_QUOTAS`: comma-separated `ACCOUNT:QUOTA` pairs that override it
//!   (accounts are numbered from 1 in the order the mock learns them).
//! - `QWEN_MOCK_THROTTLE`: at most this many 200 answers per account in any 60 s; beyond,
//!   429 with Retry-After.
//! - `QWEN_MOCK_TOKEN_LIFETIME`: seconds an access token lives (default 3600).
//! - `QWEN_MOCK_ROTATE_REFRESH=1`: every refresh returns a new refresh token and kills the old
//!   one (single use), so that a refresh token sent twice is answered 400 and counted.
//! - `QWEN_MOCK_EMAILS`: comma-separated; each login is approved with the next email.
//! - `QWEN_MOCK_ACCOUNTS`: comma-separated `refresh:access` token pairs known from the start.
//! - `QWEN_MOCK_KEYS`: comma-separated API keys the API takes, each with `QWEN_MOCK_QUOTA`
//!   requests per window of `QWEN_MOCK_KEY_WINDOW` seconds (default 3600; a 429 says
//!   `Retry-After`).
//! - `QWEN_MOCK_QWEN_CLI_DIR`: runs a simulated Qwen Code CLI on that directory's
//!   `oauth_creds.json` once the run starts ([`QwenCliSim`]), with
//!   `QWEN_MOCK_QWEN_CLI_INTERVAL` (seconds between its refreshes, default 15) and
//!   `QWEN_MOCK_QWEN_CLI_SLOW` (seconds its slow refreshes hold its lock, default 12; 0: none).
//!
//! [`State::stats`]: crate::util::mock::State::stats

use crate::util::mock::{KeySpec, Mock, Outcome, CLIENT_ID};
use serde_json::{json, Value};
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[test]
#[ignore = "a server for scripts, not a test"]
fn serve_mock() {
    let mock = Mock::start();
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let secs = |k: &str| {
        var(k)
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
    };
    let lifetime = var("QWEN_MOCK_TOKEN_LIFETIME").parse::<u64>().ok();
    if let Some(l) = lifetime {
        mock.set_refresh_expires_in(l);
    }
    if let Ok(q) = var("QWEN_MOCK_QUOTA").parse() {
        mock.set_quota_per_account(Some(q));
    }
    for pair in var("QWEN_MOCK_ACCOUNT_QUOTAS").split(',') {
        if let Some((a, q)) = pair.split_once(':') {
            if let (Ok(a), Ok(q)) = (a.trim().parse(), q.trim().parse()) {
                mock.set_quota_for(a, q);
            }
        }
    }
    if let Ok(t) = var("QWEN_MOCK_THROTTLE").parse() {
        mock.set_throttle_per_minute(Some(t));
    }
    if var("QWEN_MOCK_ROTATE_REFRESH") == "1" {
        mock.set_rotate_refresh(true);
    }
    for email in var("QWEN_MOCK_EMAILS").split(',').filter(|e| !e.is_empty()) {
        let mut approval = mock.approval(Some(email));
        if let (Some(l), Outcome::Approve { expires_in, .. }) = (lifetime, &mut approval.outcome) {
            *expires_in = l;
        }
        mock.push_approval(approval);
    }
    for pair in var("QWEN_MOCK_ACCOUNTS")
        .split(',')
        .filter(|p| !p.is_empty())
    {
        if let Some((rt, at)) = pair.split_once(':') {
            mock.add_account(rt, at);
        }
    }
    let cli = Some(var("QWEN_MOCK_QWEN_CLI_DIR"))
        .filter(|d| !d.is_empty())
        .map(|dir| QwenCliSim {
            dir: PathBuf::from(dir),
            token_url: format!("{}/api/v1/oauth2/token", mock.base_url()),
            interval: Duration::from_secs_f64(secs("QWEN_MOCK_QWEN_CLI_INTERVAL").unwrap_or(15.0)),
            slow: Duration::from_secs_f64(secs("QWEN_MOCK_QWEN_CLI_SLOW").unwrap_or(12.0)),
        });
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
    std::thread::scope(|s| {
        if let Some(cli) = &cli {
            let mock = &mock;
            s.spawn(move || cli.run(mock));
        }
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        mock.stop_drivers();
    });
}

/// The Qwen Code CLI's stale limit for its lock (`LOCK_TIMEOUT_MS`, files.md).
const CLI_STALE: Duration = Duration::from_secs(35);
/// Its lock attempts: 20, the pause growing from 100 ms by x1.5 up to 2 s (about 29 s in all).
const CLI_LOCK_ATTEMPTS: u32 = 20;
/// It refreshes a token that expires within this.
const CLI_REFRESH_BUFFER_MS: i64 = 30_000;
/// When the first refresh comes after the run starts.
const CLI_FIRST: Duration = Duration::from_secs(2);
/// How long a refresh that is not slow holds the lock (besides the request itself).
const CLI_FAST: Duration = Duration::from_millis(200);

/// A simulated Qwen Code CLI sharing an account with qwen-cred through `oauth_creds.json`,
/// with that CLI's protocol (files.md, "The Qwen Code CLI file"): it takes `oauth_creds.lock`
/// with an exclusive create, takes over only a lock whose mtime is over 35 s old (moved aside,
/// then deleted), never renews its own lock's mtime, re-reads the file under the lock,
/// refreshes through the mock's token endpoint, replaces the file atomically (temp file
/// 0600, rename), and removes the lock whoever's it is by then. On a 400 it deletes the file
/// (the real CLI then starts a new login) and stops.
///
/// It refreshes 2 s after the run starts, then `interval` (+-2 s) after each refresh ends.
/// Every third refresh, the first included, is slow: its request is in flight for `slow`
/// (the server answers halfway), as a real refresh may be for up to 30 s, so the lock is
/// held that long with a constant mtime. Every event is a counter of `GET /__stats`
/// (`qwen_cli_*`).
struct QwenCliSim {
    dir: PathBuf,
    token_url: String,
    interval: Duration,
    slow: Duration,
}

/// How one refresh cycle ended.
enum Cycle {
    Done,
    /// The refresh got a 400 and the file was deleted: the account is lost to the CLI.
    LoggedOut,
    /// The mock is stopping.
    Stopped,
}

impl QwenCliSim {
    fn run(&self, mock: &Mock) {
        for key in [
            "qwen_cli_refreshes",
            "qwen_cli_slow_refreshes",
            "qwen_cli_skipped_valid",
            "qwen_cli_lock_timeouts",
            "qwen_cli_lock_lost",
            "qwen_cli_stale_locks_taken_over",
            "qwen_cli_logged_out",
            "qwen_cli_refresh_errors",
            "qwen_cli_file_missing",
            "qwen_cli_lock_wait_max_ms",
        ] {
            mock.set_stat(key, json!(0));
        }
        if !mock.wait_started() || !mock.sleep(CLI_FIRST) {
            return;
        }
        let mut max_wait = Duration::ZERO;
        for n in 1u64.. {
            let slow = !self.slow.is_zero() && n % 3 == 1;
            match self.cycle(mock, slow, &mut max_wait) {
                Cycle::Done => {}
                Cycle::LoggedOut | Cycle::Stopped => return,
            }
            let jitter = Duration::from_millis((n * 1_700) % 4_000);
            let pause = (self.interval + jitter).saturating_sub(Duration::from_secs(2));
            if !mock.sleep(pause) {
                return;
            }
        }
    }

    fn cycle(&self, mock: &Mock, slow: bool, max_wait: &mut Duration) -> Cycle {
        let lock = self.dir.join("oauth_creds.lock");
        let file = self.dir.join("oauth_creds.json");
        let id = unique_id();
        let asked = Instant::now();
        let mut pause = Duration::from_millis(100);
        let mut got = false;
        for _ in 0..CLI_LOCK_ATTEMPTS {
            let created = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&lock);
            match created {
                Ok(mut f) => {
                    let _ = f.write_all(id.as_bytes());
                    got = true;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let age = fs::metadata(&lock)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok());
                    if age.is_some_and(|a| a > CLI_STALE) {
                        let aside = self.dir.join(format!("oauth_creds.lock.stale.{id}"));
                        if fs::rename(&lock, &aside).is_ok() {
                            let _ = fs::remove_file(&aside);
                            mock.add_stat("qwen_cli_stale_locks_taken_over", 1);
                            continue;
                        }
                    }
                    if !mock.sleep(pause) {
                        return Cycle::Stopped;
                    }
                    pause = pause.mul_f64(1.5).min(Duration::from_secs(2));
                }
                Err(_) => {
                    mock.add_stat("qwen_cli_refresh_errors", 1);
                    return Cycle::Done;
                }
            }
        }
        let waited = asked.elapsed();
        if waited > *max_wait {
            *max_wait = waited;
            mock.set_stat(
                "qwen_cli_lock_wait_max_ms",
                json!(waited.as_millis() as u64),
            );
        }
        if !got {
            mock.add_stat("qwen_cli_lock_timeouts", 1);
            return Cycle::Done;
        }
        let cycle = self.refresh_locked(mock, &file, slow);
        // The CLI's release: unlink the path, whoever's lock it names by now.
        if fs::read(&lock).ok().as_deref() != Some(id.as_bytes()) {
            mock.add_stat("qwen_cli_lock_lost", 1);
        }
        let _ = fs::remove_file(&lock);
        cycle
    }

    /// Under the lock: re-read the file, refresh, write it back (or delete it on a 400).
    fn refresh_locked(&self, mock: &Mock, file: &std::path::Path, slow: bool) -> Cycle {
        let creds = match fs::read(file) {
            Ok(b) => serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null),
            Err(_) => {
                mock.add_stat("qwen_cli_file_missing", 1);
                return Cycle::Done;
            }
        };
        let field = |k: &str| {
            creds
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let refresh_token = field("refresh_token");
        if creds
            .get("expiry_date")
            .and_then(Value::as_i64)
            .is_some_and(|t| now_ms() < t - CLI_REFRESH_BUFFER_MS)
            && !field("access_token").is_empty()
        {
            mock.add_stat("qwen_cli_skipped_valid", 1);
            return Cycle::Done;
        }
        let latency = if slow { self.slow } else { CLI_FAST };
        if slow {
            mock.add_stat("qwen_cli_slow_refreshes", 1);
        }
        // The request is in flight: the server sees it halfway, the answer arrives at the end.
        if !mock.sleep(latency / 2) {
            return Cycle::Stopped;
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent();
        let sent = agent.post(&self.token_url).send_form([
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.as_str()),
            ("client_id", CLIENT_ID),
        ]);
        let (status, body) = match sent {
            Ok(mut r) => (
                r.status().as_u16(),
                r.body_mut()
                    .read_to_vec()
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or(Value::Null),
            ),
            Err(_) => (0, Value::Null),
        };
        if !mock.sleep(latency / 2) {
            return Cycle::Stopped;
        }
        let got = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        match (status, got("access_token")) {
            (200, Some(access)) => {
                let mut new = json!({
                    "access_token": access,
                    "token_type": got("token_type").unwrap_or_else(|| "Bearer".into()),
                    "refresh_token": got("refresh_token").unwrap_or(refresh_token),
                    "expiry_date": now_ms()
                        + body.get("expires_in").and_then(Value::as_i64).unwrap_or(0) * 1000,
                });
                if let Some(url) = got("resource_url") {
                    new["resource_url"] = json!(url);
                }
                if write_atomic(file, &new).is_ok() {
                    mock.add_stat("qwen_cli_refreshes", 1);
                } else {
                    mock.add_stat("qwen_cli_refresh_errors", 1);
                }
                Cycle::Done
            }
            (400, _) => {
                let _ = fs::remove_file(file);
                mock.add_stat("qwen_cli_logged_out", 1);
                Cycle::LoggedOut
            }
            _ => {
                mock.add_stat("qwen_cli_refresh_errors", 1);
                Cycle::Done
            }
        }
    }
}

/// Temp file 0600 next to `file`, fsync, rename over it.
fn write_atomic(file: &std::path::Path, v: &Value) -> std::io::Result<()> {
    let tmp = file.with_file_name(format!("oauth_creds.json.tmp.{}", unique_id()));
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(
            serde_json::to_string_pretty(v)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        f.sync_all()?;
        fs::rename(&tmp, file)
    };
    let r = write();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A name no other call picks (the CLI uses a random UUID).
fn unique_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{nanos:x}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A client for the tests below: any status is an answer, never through a proxy.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent()
}

fn stat(s: &crate::util::mock::State, key: &str) -> u64 {
    s.stats()[key].as_u64().unwrap_or(0)
}

#[test]
fn the_mock_throttles_each_account_and_counts_what_the_soak_reports() {
    let mock = Mock::start();
    mock.set_throttle_per_minute(Some(2));
    mock.set_quota_per_account(Some(100));
    mock.set_rotate_refresh(true);
    mock.add_account("rt-a", "at-a");
    let b = mock.add_account("rt-b", "at-b");
    mock.set_quota_for(b, 1);
    let chat = |token: &str| {
        let r = agent()
            .post(format!("{}/v1/chat/completions", mock.base_url()))
            .header("Authorization", format!("Bearer {token}"))
            .send("{}")
            .expect("chat request");
        let retry_after = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        (r.status().as_u16(), retry_after)
    };
    assert_eq!(chat("at-a").0, 200);
    assert_eq!(chat("at-a").0, 200);
    let (status, retry_after) = chat("at-a");
    assert_eq!(status, 429, "a third request within a minute is throttled");
    assert!(
        retry_after.is_some_and(|s| (1..=60).contains(&s)),
        "{retry_after:?}"
    );
    assert_eq!(chat("at-b").0, 200, "the throttle counts per account");
    assert_eq!(chat("at-b").0, 429, "account b's quota of 1 is spent");
    mock.expire_access("at-b");
    assert_eq!(chat("at-b").0, 401);
    assert_eq!(chat("never-issued").0, 401);
    let refresh = |rt: &str| {
        agent()
            .post(format!("{}/api/v1/oauth2/token", mock.base_url()))
            .send_form([
                ("grant_type", "refresh_token"),
                ("refresh_token", rt),
                ("client_id", CLIENT_ID),
            ])
            .expect("refresh request")
            .status()
            .as_u16()
    };
    assert_eq!(refresh("rt-a"), 200);
    assert_eq!(refresh("rt-a"), 400, "a rotated refresh token is spent");
    assert_eq!(refresh("rt-unknown"), 400);

    let mut r = agent()
        .get(format!("{}/__stats", mock.base_url()))
        .call()
        .expect("stats");
    let stats: Value =
        serde_json::from_slice(&r.body_mut().read_to_vec().expect("body")).expect("stats are JSON");
    for (key, want) in [
        ("chat_ok", 3),
        ("chat_throttled", 1),
        ("chat_quota_exceeded", 1),
        ("chat_expired_token", 1),
        ("chat_unknown_token", 1),
        ("refresh_ok", 1),
        ("bad_refreshes", 2),
        ("spent_refreshes", 1),
    ] {
        assert_eq!(stats[key], want, "{key}: {stats}");
    }
    assert_eq!(stats["quota_left_any"], true, "{stats}");
    assert_eq!(stats["accounts"][1]["quota_left"], 0, "{stats}");
}

#[test]
fn the_simulated_qwen_cli_takes_a_stale_lock_refreshes_the_file_and_deletes_it_on_a_400() {
    use crate::util::{mode, now_ms, write_private, Env};
    let mock = Mock::start();
    mock.set_rotate_refresh(true);
    // Under the CLI's 30 s margin: it refreshes on every cycle, as in scripts/soak.
    mock.set_refresh_expires_in(20);
    mock.add_account("rt-cli", "at-cli");
    let env = Env::new();
    let file = env.qwen_dir().join("oauth_creds.json");
    let lock = env.qwen_dir().join("oauth_creds.lock");
    let creds = json!({"access_token": "at-cli", "refresh_token": "rt-cli",
        "token_type": "Bearer", "expiry_date": now_ms()});
    write_private(&file, creds.to_string().as_bytes());
    // Left by a process that died 40 s ago: older than the CLI's 35 s limit.
    let old = fs::File::create(&lock)
        .and_then(|f| f.set_modified(SystemTime::now() - Duration::from_secs(40)));
    assert!(old.is_ok(), "{old:?}");
    let sim = QwenCliSim {
        dir: env.qwen_dir(),
        token_url: format!("{}/api/v1/oauth2/token", mock.base_url()),
        interval: Duration::from_millis(300),
        slow: Duration::ZERO,
    };
    /// Stops the simulated CLI however the test ends, so that the scope can join it.
    struct Stop<'a>(&'a Mock);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.stop_drivers();
        }
    }
    std::thread::scope(|s| {
        let run = s.spawn(|| sim.run(&mock));
        let _stop = Stop(&mock);
        let started = agent()
            .post(format!("{}/__start", mock.base_url()))
            .send("")
            .map(|r| r.status().as_u16());
        assert_eq!(started.ok(), Some(200));
        assert!(mock.wait_until(Duration::from_secs(20), |s| {
            stat(s, "qwen_cli_refreshes") >= 1
        }));
        assert_eq!(
            mock.state(|s| stat(s, "qwen_cli_stale_locks_taken_over")),
            1
        );
        let now: Value = serde_json::from_slice(&fs::read(&file).expect("file")).expect("json");
        let rt = now["refresh_token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(rt != "rt-cli" && mock.is_live_refresh(&rt), "{now}");
        assert_eq!(mode(&file), 0o600);

        // As the real CLI: a refresh answered 400 deletes the file, and the CLI stops.
        mock.set_sticky_fault(Some(crate::util::mock::Fault::Status(400)));
        assert!(mock.wait_until(Duration::from_secs(20), |s| {
            stat(s, "qwen_cli_logged_out") == 1
        }));
        assert!(run.join().is_ok());
        assert!(!file.exists() && !lock.exists());
        assert_eq!(mock.state(|s| stat(s, "qwen_cli_lock_lost")), 0);
    });
}
