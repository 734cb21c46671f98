//! Never lose an account: a refresh token the server answered is kept whatever fails next
//! (a store lock held by a stopped process, a full disk, a read-only store directory, odd
//! fields in a 200), and an account that goes away mid-refresh does not fail the request.

use crate::util::mock::Mock;
use crate::util::{self, account, text, Env};
use serde_json::{json, Value};
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn env_for(mock: &Mock) -> Env {
    let mut env = Env::with_mock(mock);
    env.set("QWEN_CRED_TOKEN_REFRESH_RETRY_DELAY_MS", "0");
    env.set("QWEN_CRED_LOCK_TIMEOUT_SECONDS", "1");
    env
}

fn spawn(mut c: Command) -> Child {
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The store lock, held as a qwen-cred stopped inside its transaction would hold it.
fn hold_store_lock(env: &Env) -> File {
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(env.config_dir().join("qwen-accounts.lock"))
        .expect("open lock");
    // SAFETY: flock on a descriptor this function owns.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    f
}

fn stored_account(env: &Env, id: &str) -> Value {
    let s = env.read_store();
    s["accounts"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["id"] == id).cloned())
        .unwrap_or(Value::Null)
}

fn journal_path(env: &Env, id: &str) -> std::path::PathBuf {
    env.config_dir()
        .join(format!("qwen-accounts.refresh-{id}.journal"))
}

/// One expired account `1` (`at-1`/`rt-1`) at a mock that rotates refresh tokens.
fn one_expired(mock: &Mock, env: &Env) {
    mock.set_rotate_refresh(true);
    mock.add_account("rt-1", "at-1");
    env.write_store(
        &json!({"accounts": [account("1", "at-1", "rt-1", -10)], "current_account_id": "1"}),
    );
}

/// Runs `token` while `interrupt` breaks the store between the refresh request and its
/// answer; `restore` mends it. The call must serve the new token, and after the repair the
/// next call serves the same one, stored from the journal, without a second refresh.
fn refresh_survives(
    mock: &Mock,
    env: &Env,
    token: Command,
    next: Command,
    interrupt: impl FnOnce() -> Box<dyn FnOnce()>,
    why: &str,
) {
    mock.hold_refresh("rt-1");
    let child = spawn(token);
    assert!(
        mock.wait_until(Duration::from_secs(20), |s| s.started("rt-1") == 1),
        "the refresh started"
    );
    let restore = interrupt();
    mock.release_refresh("rt-1");
    let o = child.wait_with_output().expect("wait");
    let (served, err) = (text(&o.stdout).trim().to_string(), text(&o.stderr));
    assert!(o.status.success(), "{why}: token failed: {err}");
    assert!(
        served.starts_with("at-") && served != "at-1",
        "{why}: {served}"
    );
    assert_eq!(mock.account_of(&served), Some(1));
    assert!(
        err.contains("journal"),
        "{why}: says where the tokens are: {err}"
    );
    assert_eq!(stored_account(env, "1")["refresh_token"], "rt-1", "{why}");
    let (list, _) = env.expect(&["list", "--json"], 0);
    let list: Value = serde_json::from_str(&list).expect("list json");
    assert_eq!(list[0]["pending_journal"], true, "{why}: list shows it");
    restore();
    let o = { next }.output().expect("next token");
    assert!(o.status.success(), "{why}: {}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), served, "{why}: the journal's token");
    assert_eq!(mock.count_refreshes(), 1, "{why}: no second refresh");
    assert_eq!(mock.bad_refreshes(), 0, "{why}: no spent token sent");
    let rt = stored_account(env, "1")["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(mock.is_live_refresh(&rt), "{why}: the account is alive");
    assert!(!journal_path(env, "1").exists(), "{why}: journal folded");
}

#[test]
fn a_refresh_whose_store_lock_is_held_by_a_stopped_process_is_kept() {
    let mock = Mock::start();
    let env = env_for(&mock);
    one_expired(&mock, &env);
    refresh_survives(
        &mock,
        &env,
        env.cmd(&["token"]),
        env.cmd(&["token"]),
        || {
            let held = hold_store_lock(&env);
            Box::new(move || drop(held))
        },
        "store lock held",
    );
}

/// `umount` when dropped.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_refresh_answered_while_the_disk_fills_up_is_kept() {
    if !is_root() {
        util::skipped(
            "root",
            "mounting a small tmpfs for the full-disk test needs root",
        );
        return;
    }
    let mock = Mock::start();
    let env = env_for(&mock);
    let dir = env.config_dir();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
        .arg(&dir)
        .status()
        .expect("run mount");
    assert!(ok.success(), "mount a tmpfs on {}", dir.display());
    let _mounted = Mounted(dir.clone());
    one_expired(&mock, &env);
    let filler = dir.join("filler");
    refresh_survives(
        &mock,
        &env,
        env.cmd(&["token"]),
        env.cmd(&["token"]),
        || {
            fill(&filler);
            Box::new(move || std::fs::remove_file(&filler).expect("free the disk"))
        },
        "disk full",
    );
}

/// Writes `path` until the file system has no block left.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = File::create(path).expect("create filler");
    let chunk = [0u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = f.sync_all();
}

#[test]
fn a_refresh_answered_after_the_store_dir_turned_read_only_is_kept() {
    let mock = Mock::start();
    let env = env_for(&mock);
    one_expired(&mock, &env);
    let dir = env.config_dir();
    // Permission bits do not stop root: run qwen-cred as an unprivileged user then.
    let as_user = |args: &[&str]| -> Command {
        if !is_root() {
            return env.cmd(args);
        }
        let mut c = env.command("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(util::BIN)
            .args(args);
        c
    };
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(ok.success());
    }
    let set_mode = move |mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    refresh_survives(
        &mock,
        &env,
        as_user(&["token"]),
        as_user(&["token"]),
        || {
            set_mode(0o500);
            Box::new(move || set_mode(0o700))
        },
        "read-only store directory",
    );
}

/// A 200 with a new refresh token and odd other fields keeps that refresh token and never
/// sends the old one again; a usable access token in it is served.
#[test]
fn an_odd_but_real_answer_keeps_the_new_refresh_token() {
    let odd: [(&str, Option<Value>, bool); 6] = [
        ("no expires_in", None, true),
        ("expires_in 0", Some(json!(0)), false),
        ("expires_in negative", Some(json!(-5)), false),
        ("expires_in 3600.0", Some(json!(3600.0)), true),
        ("expires_in 1e30", Some(json!(1e30)), true),
        ("expires_in a string", Some(json!("soon")), false),
    ];
    for (why, expires_in, lasting) in odd {
        let mock = Mock::start();
        let env = env_for(&mock);
        one_expired(&mock, &env);
        mock.set_refresh_tweak(&[("expires_in", expires_in)]);
        let (out, err) = env.expect(&["token"], 0);
        assert_eq!(mock.account_of(out.trim()), Some(1), "{why}: {err}");
        let a = stored_account(&env, "1");
        let expiry = a["expiry_date"].as_i64().unwrap_or_default();
        let now = util::now_ms();
        if lasting {
            assert!(expiry > now + 3_000_000, "{why}: {expiry}");
        } else {
            assert!(expiry <= now, "{why}: expired now, refreshed next call");
        }
        mock.set_refresh_tweak(&[]);
        env.expect(&["token"], 0);
        let expected_refreshes = if lasting { 1 } else { 2 };
        assert_eq!(mock.count_refreshes(), expected_refreshes, "{why}");
        assert_eq!(
            mock.bad_refreshes(),
            0,
            "{why}: the spent token was sent again"
        );
        let a = stored_account(&env, "1");
        assert_ne!(a["status"], "revoked", "{why}");
        assert!(mock.is_live_refresh(a["refresh_token"].as_str().unwrap_or_default()));
    }
}

/// A 200 with a new refresh token but no usable access token (missing, blank, or one that
/// would inject a header line): the refresh token is kept, another account serves.
#[test]
fn an_answer_without_a_usable_access_token_keeps_its_refresh_token() {
    let bad: [(&str, Option<Value>); 4] = [
        ("missing", None),
        ("empty", Some(json!(""))),
        ("blank", Some(json!("   "))),
        ("header injection", Some(json!("at-x\r\nX-Evil: 1"))),
    ];
    for (why, access) in bad {
        let mock = Mock::start();
        let env = env_for(&mock);
        mock.set_rotate_refresh(true);
        mock.add_account("rt-1", "at-1");
        mock.add_account("rt-2", "at-2");
        env.write_store(&json!({"accounts": [account("1", "at-1", "rt-1", -10), account("2", "at-2", "rt-2", 7200)], "current_account_id": "1"}));
        mock.set_refresh_tweak(&[("access_token", access)]);
        let (out, _) = env.expect(&["token"], 0);
        assert_eq!(out.trim(), "at-2", "{why}: the next account serves");
        let rt = stored_account(&env, "1")["refresh_token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert_ne!(rt, "rt-1", "{why}: the new refresh token is stored");
        assert!(mock.is_live_refresh(&rt), "{why}");
        // Pinned, the same answer again: refused, never printed, its refresh token kept.
        let o = env.run(&["token", "--account", "1", "--format", "header"]);
        assert_eq!(o.status.code(), Some(5), "{why}: {}", text(&o.stderr));
        assert!(!text(&o.stdout).contains("X-Evil") && !text(&o.stderr).contains("X-Evil"));
        mock.set_refresh_tweak(&[]);
        let (out, err) = env.expect(&["token", "--account", "1"], 0);
        assert_eq!(mock.account_of(out.trim()), Some(1), "{why}: {err}");
        assert_eq!(
            mock.bad_refreshes(),
            0,
            "{why}: the spent token was sent again"
        );
        assert_ne!(stored_account(&env, "1")["status"], "revoked", "{why}");
    }
}

fn two_accounts_first_expired(mock: &Mock, env: &Env) {
    mock.add_account("rt-1", "at-1");
    mock.add_account("rt-2", "at-2");
    env.write_store(&json!({"accounts": [account("1", "at-1", "rt-1", -10), account("2", "at-2", "rt-2", -10)], "current_account_id": "1"}));
}

/// `remove` while that account's refresh is in flight: `token` moves on to the next
/// account, `refresh --all` reports it and refreshes the rest.
#[test]
fn an_account_removed_during_its_refresh_is_skipped() {
    for args in [&["token"][..], &["refresh", "--all"]] {
        let mock = Mock::start();
        mock.set_rotate_refresh(true);
        let env = env_for(&mock);
        two_accounts_first_expired(&mock, &env);
        mock.hold_refresh("rt-1");
        let child = spawn(env.cmd(args));
        assert!(mock.wait_until(Duration::from_secs(20), |s| s.started("rt-1") == 1));
        env.expect(&["remove", "1"], 0);
        mock.release_refresh("rt-1");
        let o: Output = child.wait_with_output().expect("wait");
        let err = text(&o.stderr);
        assert!(o.status.success(), "{args:?}: {err}");
        let a2 = stored_account(&env, "2");
        assert_ne!(a2["access_token"], "at-2", "{args:?}: account 2 refreshed");
        if args[0] == "token" {
            assert_eq!(text(&o.stdout).trim(), a2["access_token"]);
        } else {
            assert!(err.contains("removed meanwhile"), "{err}");
        }
        assert_eq!(
            env.read_store()["accounts"].as_array().map(Vec::len),
            Some(1)
        );
    }
}

/// A server that echoes the refresh token in its error text never gets it printed or stored.
#[test]
fn server_text_is_redacted_before_it_is_printed_or_stored() {
    let mock = Mock::start();
    mock.set_echo_dead_refresh(true);
    let env = env_for(&mock);
    mock.add_account("rt-2", "at-2");
    env.write_store(&json!({"accounts": [account("1", "at-1", "rt-secret-1", -10), account("2", "at-2", "rt-2", 7200)], "current_account_id": "1"}));
    let (out, err) = env.expect(&["token"], 0);
    assert_eq!(out.trim(), "at-2");
    assert!(err.contains("revoked") && err.contains("REDACTED"), "{err}");
    assert!(!err.contains("rt-secret-1"), "{err}");
    let reason = stored_account(&env, "1")["status_reason"].to_string();
    assert!(
        !reason.contains("rt-secret-1") && reason.contains("REDACTED"),
        "{reason}"
    );
    let (list, _) = env.expect(&["list", "--json"], 0);
    assert!(!list.contains("rt-secret-1"));
}
