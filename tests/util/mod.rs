//! Test harness: a hermetic environment per test (its own temp HOME, XDG_CONFIG_HOME,
//! QWEN_CRED_CONFIG_DIR and Qwen CLI dir; the rest of the environment cleared) and helpers to
//! run the real binary.

#![allow(dead_code)]

pub mod mock;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

pub const BIN: &str = env!("CARGO_BIN_EXE_qwen-cred");

/// A temp directory tree removed on drop.
pub struct Env {
    pub root: PathBuf,
    /// Extra environment for every command run in this environment.
    pub vars: Vec<(String, String)>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Env {
    pub fn new() -> Env {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let root = std::env::temp_dir().join(format!("qwen-cred-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["home", "xdg", "config", "qwen"] {
            std::fs::create_dir_all(root.join(d)).expect("create temp dir");
        }
        // 0700 whatever the umask: a group-writable config dir is warned about on every call.
        std::fs::set_permissions(
            root.join("config"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod config dir");
        Env {
            root,
            vars: Vec::new(),
        }
    }

    /// An environment whose OAuth base URL points at `mock`.
    pub fn with_mock(mock: &mock::Mock) -> Env {
        let mut e = Env::new();
        e.set("QWEN_CRED_OAUTH_BASE_URL", &mock.base_url());
        e
    }

    pub fn set(&mut self, k: &str, v: &str) {
        self.vars.retain(|(a, _)| a != k);
        self.vars.push((k.to_string(), v.to_string()));
    }

    pub fn config_dir(&self) -> PathBuf {
        self.root.join("config")
    }

    pub fn qwen_dir(&self) -> PathBuf {
        self.root.join("qwen")
    }

    pub fn store_path(&self) -> PathBuf {
        self.config_dir().join("qwen-accounts.json")
    }

    /// qwen-cred with `args` in this environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.command(BIN);
        c.args(args);
        c
    }

    /// Any program (sh, tmux, ...) in this environment, stdin closed.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.root.join("home"))
            .env("XDG_CONFIG_HOME", self.root.join("xdg"))
            .env("QWEN_CRED_CONFIG_DIR", self.config_dir())
            .env("QWEN_CRED_QWEN_DIR", self.qwen_dir())
            .env("BROWSER", "true")
            .stdin(Stdio::null());
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run qwen-cred")
    }

    /// Runs and asserts the exit code, returning (stdout, stderr).
    pub fn expect(&self, args: &[&str], code: i32) -> (String, String) {
        let o = self.run(args);
        let (out, err) = (text(&o.stdout), text(&o.stderr));
        assert_eq!(
            o.status.code(),
            Some(code),
            "qwen-cred {args:?}\nstdout: {out}\nstderr: {err}"
        );
        (out, err)
    }

    pub fn write_store(&self, v: &Value) {
        write_private(
            &self.store_path(),
            &serde_json::to_vec_pretty(v).expect("json"),
        );
    }

    pub fn read_store(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.store_path()).expect("read store"))
            .expect("store parses")
    }

    pub fn write_config(&self, v: &Value) {
        std::fs::write(
            self.config_dir().join("qwen.json"),
            serde_json::to_vec(v).expect("json"),
        )
        .expect("write config");
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("open for write");
    f.write_all(bytes).expect("write");
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// A `quota_reset_utc_offset` at which it is about noon now, so that the next daily reset is
/// 11 to 13 hours away whenever the test runs (at `+00:00` a test started at 23:55 UTC would
/// see the reset come before a 10-minute Retry-After). Returns the setting and the next
/// reset (Unix ms).
pub fn noon_reset() -> (String, i64) {
    const H: i64 = 3_600_000;
    let now = now_ms();
    let hours = (12 - now / H % 24 + 24) % 24; // 0..=23
    let hours = if hours > 12 { hours - 24 } else { hours }; // -11..=12, a valid offset
    let offset = hours * H;
    let day = 24 * H;
    let next = ((now + offset) / day + 1) * day - offset;
    let sign = if hours < 0 { '-' } else { '+' };
    (format!("{sign}{:02}:00", hours.abs()), next)
}

/// One account JSON in the seed format, valid for `valid_for_s` seconds from now.
pub fn account(id: &str, access: &str, refresh: &str, valid_for_s: i64) -> Value {
    serde_json::json!({
        "id": id,
        "email": format!("user{id}@example.com"),
        "access_token": access,
        "refresh_token": refresh,
        "token_type": "Bearer",
        "resource_url": "portal.qwen.ai",
        "expiry_date": now_ms() + valid_for_s * 1000,
        "created_at": now_ms() - 1000,
        "last_used_at": null,
        "total_requests": 0,
        "rate_limit_resets_at": null,
        "is_primary": id == "1",
    })
}

/// A store with accounts `1..=n`, tokens `at-i` / `rt-i`, valid for an hour (not due with a
/// 1800 s buffer).
pub fn store_with(n: usize) -> Value {
    let accounts: Vec<Value> = (1..=n)
        .map(|i| account(&i.to_string(), &format!("at-{i}"), &format!("rt-{i}"), 7200))
        .collect();
    serde_json::json!({"version": "1.0", "max_accounts": 10, "accounts": accounts, "current_account_id": if n > 0 { Some("1") } else { None }})
}

/// A program from `$var` (which must exist), else from PATH. When it is missing the test
/// fails naming the fix, unless the user named `name` in `QWEN_CRED_TEST_SKIP`: then `None`,
/// and the skip is counted (`skipped`).
pub fn program(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{var}={} is not a file", p.display());
        return Some(p);
    }
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            skip_allowed(name),
            "{name} is not installed: run scripts/test (it installs what the tests need), set {var}, or name it in QWEN_CRED_TEST_SKIP={name} to skip these tests"
        );
        skipped(name, &format!("{name} not installed"));
    }
    found
}

/// Whether the user allowed tests needing `what` to be skipped: `QWEN_CRED_TEST_SKIP` is a
/// comma-separated list such as `opencode,tmux`.
pub fn skip_allowed(what: &str) -> bool {
    std::env::var("QWEN_CRED_TEST_SKIP")
        .unwrap_or_default()
        .split(',')
        .any(|w| w.trim() == what)
}

/// Says on stderr that the calling test did not run, and why; `scripts/test` counts these
/// (one line each in `$QWEN_CRED_TEST_SKIP_LOG`) and reports the total at the end.
pub fn skipped(what: &str, why: &str) {
    eprintln!("SKIPPED: {why}");
    if let Some(log) = std::env::var_os("QWEN_CRED_TEST_SKIP_LOG") {
        use std::io::Write;
        let name = std::thread::current().name().unwrap_or("?").to_string();
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
            let _ = writeln!(f, "{what} {name}");
        }
    }
}

/// Starts every command at once and waits for all; each must succeed. Returns their outputs
/// (stdout and stderr captured) in order.
pub fn run_all_ok(cmds: impl IntoIterator<Item = Command>) -> Vec<Output> {
    let children: Vec<_> = cmds
        .into_iter()
        .map(|mut c| {
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait"))
        .collect();
    for o in &outs {
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    outs
}

/// Waits for a condition without sleeping blindly: polls `f` until it holds or `secs` pass.
pub fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::yield_now();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    f()
}

/// What a bounded run of a client (opencode, codex, claude) left: exit code, stdout, stderr.
pub type Ran = (Option<i32>, String, String);

/// Starts `cmd` with its stdout and stderr going to `DIR/WHAT.out` and `DIR/WHAT.err`.
pub fn spawn_logged(dir: &Path, mut cmd: Command, what: &str) -> std::process::Child {
    cmd.stdout(std::fs::File::create(dir.join(format!("{what}.out"))).expect("create out"))
        .stderr(std::fs::File::create(dir.join(format!("{what}.err"))).expect("create err"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"))
}

/// Waits up to `limit` for a `spawn_logged` child; kills it and fails the test, showing its
/// output through `show` (which may hide secrets), if it takes longer.
pub fn finish_within(
    dir: &Path,
    mut child: std::process::Child,
    what: &str,
    limit: std::time::Duration,
    show: impl Fn(&str) -> String,
) -> Ran {
    let mut status = None;
    let finished = wait_for(limit.as_secs(), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    let read =
        |ext: &str| text(&std::fs::read(dir.join(format!("{what}.{ext}"))).unwrap_or_default());
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{what} did not finish within {limit:?}\nstdout: {}\nstderr: {}",
            show(&read("out")),
            show(&read("err"))
        );
    }
    (status.and_then(|s| s.code()), read("out"), read("err"))
}

/// `spawn_logged` then `finish_within`.
pub fn run_within(dir: &Path, cmd: Command, what: &str, limit: std::time::Duration) -> Ran {
    finish_within(
        dir,
        spawn_logged(dir, cmd, what),
        what,
        limit,
        str::to_string,
    )
}
