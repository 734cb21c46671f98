//! Keeping an account imported from the Qwen CLI in step with its `oauth_creds.json`
//! (`sync_qwen_cli`), under the Qwen CLI's own `oauth_creds.lock`, against the mock with
//! rotating refresh tokens.

use crate::util::mock::{Mock, CLIENT_ID};
use crate::util::{self, account, mode, Env};
use serde_json::{json, Value};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// An env whose refresh retries are immediate.
fn env_for(mock: &Mock) -> Env {
    let mut env = Env::with_mock(mock);
    env.set("QWEN_CRED_TOKEN_REFRESH_RETRY_DELAY_MS", "0");
    env
}

fn cli_file(env: &Env) -> PathBuf {
    env.qwen_dir().join("oauth_creds.json")
}

fn cli_lock(env: &Env) -> PathBuf {
    env.qwen_dir().join("oauth_creds.lock")
}

/// The Qwen CLI's file with these tokens, valid for `valid_for_s`, plus `extra` fields.
fn write_cli_file(env: &Env, access: &str, refresh: &str, valid_for_s: i64, extra: Value) {
    let mut v = json!({
        "access_token": access,
        "refresh_token": refresh,
        "token_type": "Bearer",
        "resource_url": "portal.qwen.ai",
        "expiry_date": util::now_ms() + valid_for_s * 1000,
    });
    if let (Some(m), Value::Object(x)) = (v.as_object_mut(), extra) {
        m.extend(x);
    }
    util::write_private(
        &cli_file(env),
        &serde_json::to_vec_pretty(&v).expect("json"),
    );
}

fn read_cli_file(env: &Env) -> Value {
    serde_json::from_slice(&fs::read(cli_file(env)).expect("read the Qwen CLI file"))
        .expect("the Qwen CLI file parses")
}

/// Account `id` linked to the Qwen CLI's file by its path, as an older qwen-cred left it (no
/// record of the file's last refresh token).
fn linked_account(env: &Env, id: &str, access: &str, refresh: &str, valid_for_s: i64) -> Value {
    let mut a = account(id, access, refresh, valid_for_s);
    a["linked_file"] = json!(cli_file(env).to_string_lossy());
    a
}

/// A store whose one account is linked to the Qwen CLI's file.
fn write_linked_store(env: &Env, access: &str, refresh: &str, valid_for_s: i64) {
    let a = linked_account(env, "1", access, refresh, valid_for_s);
    env.write_store(&json!({"version": "1.0", "accounts": [a], "current_account_id": "1"}));
}

fn store_tokens(env: &Env) -> (String, String) {
    let s = env.read_store();
    let a = &s["accounts"][0];
    (
        a["access_token"].as_str().unwrap_or_default().to_string(),
        a["refresh_token"].as_str().unwrap_or_default().to_string(),
    )
}

/// A lock file as another process leaves it, `age` old.
fn plant_lock(path: &Path, age: Duration) {
    let f = File::create(path).expect("create lock");
    (&f).write_all(b"6f1c2e9a-0000-4000-8000-000000000000")
        .expect("write lock");
    f.set_modified(SystemTime::now() - age).expect("set mtime");
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn newer_tokens_in_the_file_are_adopted_instead_of_refreshing() {
    let mock = Mock::start();
    mock.set_rotate_refresh(true);
    let env = env_for(&mock);
    write_cli_file(&env, "at-cli", "rt-cli", 3600, json!({}));
    // Due (1800 s buffer): without the file, token would refresh.
    write_linked_store(&env, "at-old", "rt-old", 60);
    let (out, _) = env.expect(&["token"], 0);
    assert_eq!(out, "at-cli\n");
    assert_eq!(mock.count_refreshes(), 0);
    assert_eq!(
        store_tokens(&env),
        ("at-cli".to_string(), "rt-cli".to_string())
    );
    assert_eq!(dir_names(&env.qwen_dir()), ["oauth_creds.json"]);
}

#[test]
fn our_refresh_is_written_back_when_the_file_holds_our_old_token() {
    let mock = Mock::start();
    mock.set_rotate_refresh(true);
    mock.add_account("rt-1", "at-1");
    let env = env_for(&mock);
    write_cli_file(&env, "at-1", "rt-1", 60, json!({"custom": {"kept": true}}));
    fs::set_permissions(
        cli_file(&env),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    write_linked_store(&env, "at-1", "rt-1", 60);
    let (out, _) = env.expect(&["token"], 0);
    let (at, rt) = store_tokens(&env);
    assert_eq!(out, format!("{at}\n"));
    assert_ne!(rt, "rt-1");
    assert!(mock.is_live_refresh(&rt));
    let f = read_cli_file(&env);
    assert_eq!(f["access_token"], at.as_str());
    assert_eq!(f["refresh_token"], rt.as_str());
    assert_eq!(f["token_type"], "Bearer");
    assert_eq!(f["custom"], json!({"kept": true}));
    assert!(f["expiry_date"].as_i64().unwrap_or(0) > util::now_ms() + 3_500_000);
    assert_eq!(mode(&cli_file(&env)), 0o600);
    // No temp file, no lock left behind.
    assert_eq!(dir_names(&env.qwen_dir()), ["oauth_creds.json"]);
}

#[test]
fn a_file_holding_another_refresh_token_is_left_alone() {
    let mock = Mock::start();
    mock.set_rotate_refresh(true);
    mock.add_account("rt-1", "at-1");
    let env = env_for(&mock);
    // Another token, older than ours: neither adopted nor overwritten.
    write_cli_file(&env, "at-other", "rt-other", 30, json!({}));
    let before = fs::read(cli_file(&env)).expect("read");
    write_linked_store(&env, "at-1", "rt-1", 60);
    let (out, _) = env.expect(&["token"], 0);
    assert_ne!(out, "at-other\n");
    assert_ne!(out, "at-1\n");
    assert_eq!(mock.count_refreshes(), 1);
    assert_eq!(fs::read(cli_file(&env)).expect("read"), before);
}

#[test]
fn a_missing_or_broken_file_is_left_alone_and_the_account_still_refreshes() {
    let mock = Mock::start();
    mock.set_rotate_refresh(true);
    mock.add_account("rt-1", "at-1");
    let env = env_for(&mock);
    write_linked_store(&env, "at-1", "rt-1", 60);
    env.expect(&["refresh", "--account", "1", "--force"], 0);
    assert!(!cli_file(&env).exists());

    util::write_private(&cli_file(&env), b"{not json");
    env.expect(&["refresh", "--account", "1", "--force"], 0);
    assert_eq!(fs::read(cli_file(&env)).expect("read"), b"{not json");
    assert_eq!(mock.bad_refreshes(), 0);
    assert_eq!(dir_names(&env.qwen_dir()), ["oauth_creds.json"]);
}

#[test]
fn a_stale_qwen_cli_lock_is_taken_over() {
    let mock = Mock::start();
    mock.set_rotate_refresh(true);
    mock.add_account("rt-1", "at-1");
    let env = env_for(&mock);
    write_cli_file(&env, "at-1", "rt-1", 60, json!({}));
    write_linked_store(&env, "at-1", "rt-1", 60);
    plant_lock(&cli_lock(&env), Duration::from_secs(36));
    let start = Instant::now();
    let (out, _) = env.expect(&["token"], 0);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(read_cli_file(&env)["access_token"], out.trim());
    assert_eq!(dir_names(&env.qwen_dir()), ["oauth_creds.json"]);
}

#[test]
fn a_live_qwen_cli_lock_makes_us_wait_and_times_out_naming_it() {
    let mock = Mock::start();
    mock.set_rotate_refresh(true);
    mock.add_account("rt-1", "at-1");
    let mut env = env_for(&mock);
    write_cli_file(&env, "at-1", "rt-1", 60, json!({}));
    write_linked_store(&env, "at-1", "rt-1", 60);

    // Held by "the Qwen CLI" and never released: exit 6 naming the lock, nothing refreshed,
    // and its lock is not ours to remove.
    plant_lock(&cli_lock(&env), Duration::ZERO);
    env.set("QWEN_CRED_LOCK_TIMEOUT_SECONDS", "1");
    let (_, err) = env.expect(&["token"], 6);
    assert!(err.contains("oauth_creds.lock"), "{err}");
    assert_eq!(mock.count_refreshes(), 0);
    assert!(cli_lock(&env).exists());

    // Released while we wait for it (once we say so): then we refresh.
    env.set("QWEN_CRED_LOCK_TIMEOUT_SECONDS", "30");
    let mut child = env
        .cmd(&["token"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut err = String::new();
    while !err.contains("waiting for lock on") {
        use std::io::BufRead;
        if stderr.read_line(&mut err).expect("read stderr") == 0 {
            break;
        }
    }
    assert!(err.contains("waiting for lock on"), "{err}");
    assert_eq!(
        mock.count_refreshes(),
        0,
        "nothing sent while the lock is held"
    );
    fs::remove_file(cli_lock(&env)).expect("release");
    std::io::Read::read_to_string(&mut stderr, &mut err).expect("read stderr");
    let o = child.wait_with_output().expect("wait");
    assert!(o.status.success(), "{err}");
    let out = crate::util::text(&o.stdout);
    assert_eq!(read_cli_file(&env)["access_token"], out.trim());
    assert_eq!(mock.count_refreshes(), 1);
}

#[test]
fn with_sync_off_the_file_and_its_lock_are_ignored() {
    let mock = Mock::start();
    mock.set_rotate_refresh(true);
    mock.add_account("rt-1", "at-1");
    let mut env = env_for(&mock);
    env.set("QWEN_CRED_SYNC_QWEN_CLI", "false");
    env.set("QWEN_CRED_LOCK_TIMEOUT_SECONDS", "1");
    // Newer tokens in the file and a live lock: both would matter with sync on.
    write_cli_file(&env, "at-cli", "rt-cli", 3600, json!({}));
    let before = fs::read(cli_file(&env)).expect("read");
    write_linked_store(&env, "at-1", "rt-1", 60);
    plant_lock(&cli_lock(&env), Duration::ZERO);
    let (out, _) = env.expect(&["token"], 0);
    assert_ne!(out, "at-cli\n");
    assert_eq!(mock.count_refreshes(), 1);
    assert_eq!(fs::read(cli_file(&env)).expect("read"), before);
    assert!(cli_lock(&env).exists());
}

/// A stand-in for the Qwen CLI (0.24.4) following its protocol: O_EXCL `oauth_creds.lock`
/// (stale after 35 s), read the file, refresh with its refresh token, write the answer back
/// atomically by the path itself (replacing a symlink), remove the lock.
struct FakeQwenCli {
    file: PathBuf,
    lock: PathBuf,
    token_url: String,
}

/// Removes the fake CLI's lock when a round ends, however it ends.
struct LockGuard<'a>(&'a Path);

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}

impl FakeQwenCli {
    fn take_lock(&self) -> Result<LockGuard<'_>, String> {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&self.lock)
            {
                Ok(mut f) => {
                    let _ = f.write_all(b"0e4f5b7c-1111-4222-8333-444455556666");
                    return Ok(LockGuard(&self.lock));
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let stale = fs::metadata(&self.lock)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age > Duration::from_secs(35));
                    if stale {
                        let _ = fs::remove_file(&self.lock);
                        continue;
                    }
                }
                Err(e) => return Err(format!("lock: {e}")),
            }
            if Instant::now() > end {
                return Err("lock: timed out".into());
            }
            std::thread::sleep(Duration::from_millis(3));
        }
    }

    fn refresh_round(&self) -> Result<(), String> {
        let _held = self.take_lock()?;
        let mut creds: Value =
            serde_json::from_slice(&fs::read(&self.file).map_err(|e| format!("read: {e}"))?)
                .map_err(|e| format!("parse: {e}"))?;
        let rt = creds["refresh_token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut reply = ureq::post(&self.token_url)
            .send_form([
                ("grant_type", "refresh_token"),
                ("refresh_token", rt.as_str()),
                ("client_id", CLIENT_ID),
            ])
            .map_err(|e| format!("refresh: {e}"))?;
        let body = reply
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("body: {e}"))?;
        let tok: Value = serde_json::from_str(&body).map_err(|e| format!("answer: {e}"))?;
        creds["access_token"] = tok["access_token"].clone();
        if tok["refresh_token"].is_string() {
            creds["refresh_token"] = tok["refresh_token"].clone();
        }
        let expires_in = tok["expires_in"].as_i64().unwrap_or(0);
        creds["expiry_date"] = json!(util::now_ms() + expires_in * 1000);
        let tmp = self
            .file
            .with_file_name("oauth_creds.json.0a1b2c3d4e5f.tmp");
        let text = serde_json::to_vec_pretty(&creds).map_err(|e| format!("json: {e}"))?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| format!("temp: {e}"))?;
        f.write_all(&text).map_err(|e| format!("write: {e}"))?;
        fs::rename(&tmp, &self.file).map_err(|e| format!("rename: {e}"))
    }
}

/// The issue's scenario: the Qwen CLI refreshing through its file while qwen-cred refreshes
/// through the pool, both rotating one shared refresh token, 20 rounds each at once: no
/// refresh is ever refused, and both sides end with a live refresh token.
#[test]
fn qwen_cli_and_qwen_cred_refreshing_at_once_never_spend_a_dead_token() {
    const ROUNDS: usize = 20;
    let mock = Mock::start();
    mock.set_rotate_refresh(true);
    mock.set_refresh_delay(Duration::from_millis(5));
    mock.add_account("rt-1", "at-1");
    let env = env_for(&mock);
    write_cli_file(&env, "at-1", "rt-1", 60, json!({}));
    write_linked_store(&env, "at-1", "rt-1", 60);
    let cli = FakeQwenCli {
        file: cli_file(&env),
        lock: cli_lock(&env),
        token_url: format!("{}/api/v1/oauth2/token", mock.base_url()),
    };
    let (cli_errors, ours) = std::thread::scope(|sc| {
        let cli_side = sc.spawn(|| {
            let mut errors = Vec::new();
            for round in 0..ROUNDS {
                if let Err(e) = cli.refresh_round() {
                    errors.push(format!("round {round}: {e}"));
                }
                std::thread::sleep(Duration::from_millis(3 + (round as u64 * 7) % 11));
            }
            errors
        });
        let our_side = sc.spawn(|| {
            (0..ROUNDS)
                .map(|_| env.run(&["refresh", "--account", "1", "--force"]))
                .collect::<Vec<_>>()
        });
        (
            cli_side.join().expect("the fake Qwen CLI"),
            our_side.join().expect("qwen-cred"),
        )
    });
    assert!(cli_errors.is_empty(), "{cli_errors:?}");
    for o in &ours {
        assert_eq!(o.status.code(), Some(0), "{}", util::text(&o.stderr));
    }
    assert_eq!(mock.bad_refreshes(), 0);
    assert_eq!(mock.count_refreshes(), 2 * ROUNDS);
    // The file always holds the newest token: each side writes its refresh there.
    let cli_rt = read_cli_file(&env)["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(mock.is_live_refresh(&cli_rt));
    // One more of ours: whoever refreshed last, both sides now hold the same live token.
    env.expect(&["refresh", "--account", "1", "--force"], 0);
    let (at, rt) = store_tokens(&env);
    let f = read_cli_file(&env);
    assert_eq!(f["refresh_token"], rt.as_str());
    assert_eq!(f["access_token"], at.as_str());
    assert!(mock.is_live_refresh(&rt));
    assert_eq!(mock.bad_refreshes(), 0);
    assert_eq!(dir_names(&env.qwen_dir()), ["oauth_creds.json"]);
}

/// SIGTERM while a linked account's refresh is in flight (the Qwen CLI lock's heartbeat thread
/// running): the new tokens reach the store and the file, and the lock is not left behind.
#[test]
fn a_signal_during_a_linked_refresh_loses_nothing_and_leaves_no_lock() {
    let mock = Mock::start();
    mock.set_rotate_refresh(true);
    mock.add_account("rt-1", "at-1");
    let env = env_for(&mock);
    write_cli_file(&env, "at-1", "rt-1", 30, json!({}));
    write_linked_store(&env, "at-1", "rt-1", 30);
    mock.hold_refresh("rt-1");
    let child = env
        .cmd(&["token"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    assert!(mock.wait_until(Duration::from_secs(20), |s| s.started("rt-1") == 1));
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    mock.release_refresh("rt-1");
    let o = child.wait_with_output().expect("wait");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(15), "{}", util::text(&o.stderr));
    let (_, rt) = store_tokens(&env);
    assert!(
        mock.is_live_refresh(&rt),
        "the store holds the rotated token"
    );
    assert_eq!(read_cli_file(&env)["refresh_token"], rt.as_str());
    assert!(!cli_lock(&env).exists(), "no lock left behind");
}

/// A token that is only due is served at once while the Qwen CLI holds its lock.
#[test]
fn a_due_token_does_not_wait_for_the_qwen_cli() {
    let mock = Mock::start();
    mock.add_account("rt-1", "at-1");
    let mut env = env_for(&mock);
    env.set("QWEN_CRED_LOCK_TIMEOUT_SECONDS", "30");
    write_cli_file(&env, "at-1", "rt-1", 600, json!({}));
    write_linked_store(&env, "at-1", "rt-1", 600);
    plant_lock(&cli_lock(&env), Duration::ZERO);
    let start = Instant::now();
    let (out, err) = env.expect(&["token"], 0);
    assert_eq!(out.trim(), "at-1");
    assert!(err.is_empty(), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "did not wait for the lock"
    );
    assert_eq!(mock.count_refreshes(), 0);
}

/// Runs a prepared command, asserting its exit code; returns (stdout, stderr).
fn expect_cmd(mut cmd: std::process::Command, code: i32) -> (String, String) {
    let o = cmd.output().expect("run");
    let (out, err) = (util::text(&o.stdout), util::text(&o.stderr));
    assert_eq!(o.status.code(), Some(code), "stdout: {out}\nstderr: {err}");
    (out, err)
}

/// An env whose CLI (`FakeQwenCli`) refreshes against the mock through the Qwen CLI's file.
fn fake_cli(env: &Env, mock: &Mock) -> FakeQwenCli {
    FakeQwenCli {
        file: cli_file(env),
        lock: cli_lock(env),
        token_url: format!("{}/api/v1/oauth2/token", mock.base_url()),
    }
}

fn account_of_store(env: &Env, id: &str) -> Value {
    env.read_store()["accounts"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["id"] == id).cloned())
        .unwrap_or(Value::Null)
}

/// The issue's case: the Qwen CLI's refresh is held 14 s by the server, so its lock is 14 s
/// old. That lock is live (the Qwen CLI 0.24.4 deems a lock stale only after 35 s and would
/// delete its file on the 400 a second refresh of its token causes): qwen-cred neither takes
/// it over nor refreshes, and serves the next account at once. A lock 36 s old was left by a
/// dead process and is taken over.
#[test]
fn a_qwen_cli_lock_younger_than_35_s_is_never_taken_over() {
    let mock = Mock::start();
    mock.set_rotate_refresh(true);
    mock.add_account("rt-1", "at-1");
    let mut env = env_for(&mock);
    // No detached `refresh --due` racing the calls below for the locks.
    env.set("QWEN_CRED_PROACTIVE_TOKEN_REFRESH", "false");
    write_cli_file(&env, "at-1", "rt-1", 30, json!({}));
    let expired = linked_account(&env, "1", "at-1", "rt-1", 30);
    let other = account("2", "at-2", "rt-2", 7200);
    env.write_store(
        &json!({"version": "1.0", "accounts": [expired, other], "current_account_id": "1"}),
    );
    plant_lock(&cli_lock(&env), Duration::from_secs(14));
    let lock_before = fs::read(cli_lock(&env)).expect("lock");
    let start = Instant::now();
    let (out, _) = env.expect(&["token"], 0);
    assert_eq!(out, "at-2\n");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "moved on without waiting for the lock"
    );
    assert_eq!(mock.count_refreshes(), 0);
    assert_eq!(
        fs::read(cli_lock(&env)).expect("lock still there"),
        lock_before
    );
    assert_eq!(read_cli_file(&env)["refresh_token"], "rt-1");

    // Only that account can serve: it waits within lock_timeout_seconds for the lock, which
    // it never takes over (30 s old: stale under the old 10 s rule), then exit 6.
    env.set("QWEN_CRED_LOCK_TIMEOUT_SECONDS", "1");
    plant_lock(&cli_lock(&env), Duration::from_secs(30));
    let (_, err) = env.expect(&["token", "--account", "1"], 6);
    assert!(err.contains("oauth_creds.lock"), "{err}");
    assert_eq!(mock.count_refreshes(), 0);
    assert!(cli_lock(&env).exists());

    plant_lock(&cli_lock(&env), Duration::from_secs(36));
    let (out, _) = env.expect(&["token", "--account", "1"], 0);
    assert_eq!(mock.count_refreshes(), 1);
    assert_eq!(read_cli_file(&env)["access_token"], out.trim());
    assert_eq!(dir_names(&env.qwen_dir()), ["oauth_creds.json"]);
}

/// "Newer" means different: the Qwen CLI refreshed and its token expires sooner than ours.
/// Ours is spent, so the file's tokens are adopted; the dead one is never sent.
#[test]
fn the_qwen_cli_refreshing_to_a_sooner_expiry_is_adopted() {
    let mock = Mock::start();
    mock.set_rotate_refresh(true);
    mock.add_account("rt-1", "at-1");
    let env = env_for(&mock);
    write_cli_file(&env, "at-1", "rt-1", 600, json!({}));
    env.expect(&["import"], 0);
    mock.set_refresh_expires_in(300);
    fake_cli(&env, &mock)
        .refresh_round()
        .expect("the Qwen CLI refreshes");
    mock.set_refresh_expires_in(3600);
    let cli_rt = read_cli_file(&env)["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_ne!(cli_rt, "rt-1");

    let (out, _) = env.expect(&["token"], 0);
    assert_eq!(mock.bad_refreshes(), 0, "the spent token was sent");
    assert_eq!(
        mock.state(|s| s.started("rt-1")),
        1,
        "only the Qwen CLI's refresh used rt-1"
    );
    assert_eq!(
        mock.state(|s| s.started(&cli_rt)),
        1,
        "ours used the Qwen CLI's token"
    );
    let (at, rt) = store_tokens(&env);
    assert_eq!(out, format!("{at}\n"));
    assert!(mock.is_live_refresh(&rt));
    assert_eq!(account_of_store(&env, "1")["status"], Value::Null);
    // And the file follows: both sides hold the same live token.
    assert_eq!(read_cli_file(&env)["refresh_token"], rt.as_str());
}

/// A store from an older qwen-cred (no record of the file) whose token the Qwen CLI spent,
/// with a sooner expiry in the file: the server calls ours dead, the file is read again, and
/// its token is adopted and refreshed instead of revoking the account.
#[test]
fn a_dead_token_reads_the_file_again_before_revoking() {
    let mock = Mock::start();
    mock.set_rotate_refresh(true);
    mock.add_account("rt-1", "at-1");
    let env = env_for(&mock);
    write_cli_file(&env, "at-1", "rt-1", 600, json!({}));
    write_linked_store(&env, "at-1", "rt-1", 600);
    mock.set_refresh_expires_in(300);
    fake_cli(&env, &mock)
        .refresh_round()
        .expect("the Qwen CLI refreshes");
    mock.set_refresh_expires_in(3600);
    let cli_rt = read_cli_file(&env)["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let (out, err) = env.expect(&["token"], 0);
    assert!(!err.contains("revoked"), "{err}");
    let (at, rt) = store_tokens(&env);
    assert_eq!(out, format!("{at}\n"));
    assert!(mock.is_live_refresh(&rt));
    assert_eq!(account_of_store(&env, "1")["status"], Value::Null);
    // Our dead token was sent once (nothing told us it was dead), and never again.
    assert_eq!(
        mock.state(|s| s.started("rt-1")),
        2,
        "the Qwen CLI's refresh and our one try"
    );
    assert_eq!(mock.bad_refreshes(), 1);
    assert_eq!(mock.state(|s| s.started(&cli_rt)), 1);
    assert_eq!(read_cli_file(&env)["refresh_token"], rt.as_str());
    // It is on record now: the next time the Qwen CLI refreshes, no dead token is sent.
    mock.set_refresh_expires_in(300);
    fake_cli(&env, &mock)
        .refresh_round()
        .expect("the Qwen CLI refreshes");
    env.expect(&["token"], 0);
    assert_eq!(mock.bad_refreshes(), 1);
}

/// `~/.qwen/oauth_creds.json` a symlink: linked by that path, not its target. The Qwen CLI
/// writes by the path (no-follow), replacing the link with a regular file; qwen-cred keeps
/// syncing with it.
#[test]
fn a_symlinked_file_stays_linked_when_the_qwen_cli_replaces_the_link() {
    let mock = Mock::start();
    mock.set_rotate_refresh(true);
    mock.add_account("rt-1", "at-1");
    let env = env_for(&mock);
    let target_dir = env.root.join("dotfiles");
    fs::create_dir_all(&target_dir).expect("mkdir");
    let target = target_dir.join("oauth_creds.json");
    std::os::unix::fs::symlink(&target, cli_file(&env)).expect("symlink");
    write_cli_file(&env, "at-1", "rt-1", 600, json!({}));
    env.expect(&["import"], 0);
    assert_eq!(
        account_of_store(&env, "1")["linked_file"],
        cli_file(&env).to_string_lossy().as_ref()
    );

    fake_cli(&env, &mock)
        .refresh_round()
        .expect("the Qwen CLI refreshes");
    let meta = fs::symlink_metadata(cli_file(&env)).expect("stat");
    assert!(meta.file_type().is_file(), "the Qwen CLI replaced the link");
    let f = read_cli_file(&env);

    let (out, _) = env.expect(&["token"], 0);
    assert_eq!(out.trim(), f["access_token"].as_str().unwrap_or_default());
    assert_eq!(mock.count_refreshes(), 1, "adopted, not refreshed");
    assert_eq!(mock.bad_refreshes(), 0);

    // Our next refresh goes to the file at that path too.
    env.expect(&["refresh", "--account", "1", "--force"], 0);
    let (_, rt) = store_tokens(&env);
    assert_eq!(read_cli_file(&env)["refresh_token"], rt.as_str());
    assert_eq!(mock.bad_refreshes(), 0);
    let old: Value = serde_json::from_slice(&fs::read(&target).expect("target")).expect("json");
    assert_eq!(
        old["refresh_token"], "rt-1",
        "the old target is left as it was"
    );
}

/// `$QWEN_HOME` is the Qwen CLI's own override of `~/.qwen`: with `QWEN_CRED_QWEN_DIR` unset,
/// `token`'s first-run import and `import` read the file there (a leading `~` is the home
/// directory); `QWEN_CRED_QWEN_DIR` still wins.
#[test]
fn qwen_home_is_honoured_when_qwen_cred_qwen_dir_is_unset() {
    let env = Env::new();
    let home_qwen = env.root.join("home/.qwen");
    fs::create_dir_all(&home_qwen).expect("mkdir");
    util::write_private(
        &home_qwen.join("oauth_creds.json"),
        br#"{"access_token":"at-home","refresh_token":"rt-home","expiry_date":9999999999999}"#,
    );
    let qhome = env.root.join("qhome");
    fs::create_dir_all(&qhome).expect("mkdir");
    util::write_private(
        &qhome.join("oauth_creds.json"),
        br#"{"access_token":"at-qh","refresh_token":"rt-qh","expiry_date":9999999999999}"#,
    );
    let cmd = |qwen_home: &str, args: &[&str]| {
        let mut c = env.cmd(args);
        c.env_remove("QWEN_CRED_QWEN_DIR")
            .env("QWEN_HOME", qwen_home);
        c
    };

    let (out, err) = expect_cmd(cmd(&qhome.to_string_lossy(), &["token"]), 0);
    assert_eq!(out, "at-qh\n");
    assert!(err.contains("qhome"), "{err}");
    assert_eq!(
        account_of_store(&env, "1")["linked_file"],
        qhome.join("oauth_creds.json").to_string_lossy().as_ref()
    );

    let tilde = env.root.join("home/qh2");
    fs::create_dir_all(&tilde).expect("mkdir");
    util::write_private(
        &tilde.join("oauth_creds.json"),
        br#"{"access_token":"at-qh2","refresh_token":"rt-qh2","expiry_date":9999999999999}"#,
    );
    expect_cmd(cmd("~/qh2", &["import"]), 0);
    assert_eq!(
        account_of_store(&env, "2")["linked_file"],
        tilde.join("oauth_creds.json").to_string_lossy().as_ref()
    );

    // QWEN_CRED_QWEN_DIR (set by Env) beats QWEN_HOME.
    write_cli_file(&env, "at-ours", "rt-ours", 3600, json!({}));
    let mut c = env.cmd(&["import"]);
    c.env("QWEN_HOME", &qhome);
    let (_, err) = expect_cmd(c, 0);
    assert!(err.contains(&*env.qwen_dir().to_string_lossy()), "{err}");
    let s = env.read_store();
    assert_eq!(s["accounts"].as_array().map(Vec::len), Some(3));
    assert!(!fs::read_to_string(env.store_path())
        .unwrap_or_default()
        .contains("rt-home"));
}

/// Makes a directory unwritable for the qwen-cred it runs: chmod 0500 for a normal user; for
/// root, whom permission bits do not stop, a private mount namespace in which the directory
/// is a read-only bind mount of itself (nothing is left behind, whatever happens).
struct ReadOnlyDir {
    dir: PathBuf,
    root: bool,
}

impl ReadOnlyDir {
    /// `None` (after a SKIPPED line) when this machine offers no way to do it.
    fn new(env: &Env, dir: &Path) -> Option<ReadOnlyDir> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let root = fs::metadata(&env.root)
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        if !root {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o500)).expect("chmod");
        }
        let ro = ReadOnlyDir {
            dir: dir.to_path_buf(),
            root,
        };
        let probe = dir.join(".probe");
        let ok = ro
            .wrap(env, "sh", &["-c", ": > \"$0\"", &probe.to_string_lossy()])
            .output()
            .is_ok_and(|o| !o.status.success() && o.status.code() != Some(97))
            && !probe.exists();
        if !ok {
            eprintln!(
                "SKIPPED: cannot make {} unwritable here (root: {root}; needs unshare and mount)",
                dir.display()
            );
            return None;
        }
        Some(ro)
    }

    fn wrap(&self, env: &Env, program: &str, args: &[&str]) -> std::process::Command {
        if !self.root {
            let mut c = env.command(program);
            c.args(args);
            return c;
        }
        let mut c = env.command("unshare");
        c.args([
            "-m",
            "sh",
            "-c",
            "mount --bind -o ro \"$0\" \"$0\" || exit 97; exec \"$@\"",
        ])
        .arg(&self.dir)
        .arg(program)
        .args(args);
        c
    }

    fn cmd(&self, env: &Env, args: &[&str]) -> std::process::Command {
        self.wrap(env, util::BIN, args)
    }
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if !self.root {
            let _ = fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700));
        }
    }
}

/// A `~/.qwen` qwen-cred cannot write never blocks the pool: the linked account's expired
/// token moves to the next account (the shared token is never refreshed without the Qwen
/// CLI's lock), with one warning naming the directory; a valid token is served as it is.
#[test]
fn an_unwritable_qwen_dir_never_blocks_the_pool() {
    let mock = Mock::start();
    mock.set_rotate_refresh(true);
    mock.add_account("rt-1", "at-1");
    let mut env = env_for(&mock);
    // No detached `refresh --due` racing the calls below for the store.
    env.set("QWEN_CRED_PROACTIVE_TOKEN_REFRESH", "false");
    write_cli_file(&env, "at-1", "rt-1", 30, json!({}));
    let Some(ro) = ReadOnlyDir::new(&env, &env.qwen_dir()) else {
        return;
    };
    let qwen_dir = env.qwen_dir().to_string_lossy().into_owned();
    let pool = |valid_for_s: i64| {
        let a = linked_account(&env, "1", "at-1", "rt-1", valid_for_s);
        json!({"version": "1.0", "accounts": [a, account("2", "at-2", "rt-2", 7200)], "current_account_id": "1"})
    };

    env.write_store(&pool(30));
    let (out, err) = expect_cmd(ro.cmd(&env, &["token"]), 0);
    assert_eq!(out, "at-2\n");
    assert!(
        err.contains(&qwen_dir) && err.contains("sync_qwen_cli"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(mock.count_refreshes(), 0);
    // Once: the next call that meets it says nothing more.
    let (out, err) = expect_cmd(ro.cmd(&env, &["token", "--account", "1"]), 6);
    assert!(out.is_empty() && err.contains(&qwen_dir), "{err}");
    assert!(
        !err.contains(
            "make that directory writable, or set sync_qwen_cli to false\nqwen-cred: cannot create"
        ),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(mock.count_refreshes(), 0);

    // A valid token is served as it is.
    env.write_store(&pool(7200));
    let (out, err) = expect_cmd(ro.cmd(&env, &["token"]), 0);
    assert_eq!((out.as_str(), err.as_str()), ("at-1\n", ""));
    drop(ro);
    assert_eq!(dir_names(&env.qwen_dir()), ["oauth_creds.json"]);
}

/// Removing the account imported from the Qwen CLI sticks: `token` does not import that login
/// again on its own (exit 3), until the Qwen CLI holds another one. `import` still does.
#[test]
fn removing_the_qwen_cli_login_sticks_until_it_logs_in_again() {
    let env = Env::new();
    write_cli_file(&env, "at-1", "rt-1", 3600, json!({}));
    let (out, _) = env.expect(&["token"], 0);
    assert_eq!(out, "at-1\n");
    env.expect(&["remove", "1"], 0);
    let (out, err) = env.expect(&["token"], 3);
    assert!(out.is_empty());
    assert!(err.contains("qwen-cred import"), "{err}");
    assert_eq!(env.read_store()["accounts"], json!([]));
    assert!(!fs::read_to_string(env.store_path())
        .unwrap_or_default()
        .contains("rt-1"));

    // Asked for by name, it comes back; `remove --all` takes it out for good again.
    env.expect(&["import"], 0);
    let (out, _) = env.expect(&["token"], 0);
    assert_eq!(out, "at-1\n");
    env.expect(&["remove", "--all"], 0);
    env.expect(&["token"], 3);

    // The Qwen CLI signs in again: a new refresh token, imported on first use.
    write_cli_file(&env, "at-9", "rt-9", 3600, json!({}));
    let (out, _) = env.expect(&["token"], 0);
    assert_eq!(out, "at-9\n");
}
