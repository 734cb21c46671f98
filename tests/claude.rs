//! Claude Code with `apiKeyHelper` = `qwen-cred token --pool NAME` (README, "Claude Code"). The
//! real Claude Code (`$QWEN_CRED_TEST_CLAUDE`, else `claude` on PATH; `scripts/test` installs the
//! pinned npm package, whose native binary is an npm package too) runs with the README's
//! `settings.json`, its base URL pointed at the mock's Anthropic-style `POST /v1/messages` and
//! `qwen-cred` at the built binary, in a temp HOME and TMPDIR. Without Claude Code a test fails
//! naming the fix, unless `claude` is named in `QWEN_CRED_TEST_SKIP` (util::program).
//!
//! `claude -p PROMPT` is one turn; a session of several turns (to see what a running Claude Code
//! does between them) is `claude -p --input-format stream-json`, one user message per turn on
//! stdin, each answered by a `result` line on stdout.

use crate::util::mock::{KeySpec, Mock, Request, ResetHint};
use crate::util::{self, program, text, Env, BIN};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bounds every Claude Code run and every turn; a hung one is killed and the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// The README's pool, endpoint and model.
const POOL: &str = "dashscope";
const README_BASE_URL: &str = "https://dashscope-intl.aliyuncs.com/apps/anthropic";
const README_MODEL: &str = "qwen3-coder-plus";
/// The README's helper that checks the current key before serving one.
const CHECKING_HELPER: &str =
    "qwen-cred refresh --pool dashscope 2>/dev/null; qwen-cred token --pool dashscope";

const K1: &str = "sk-test-claude-key-one-0001";
const K2: &str = "sk-test-claude-key-two-0002";

/// `text` with the test keys replaced, for assertion messages.
fn hide(text: &str) -> String {
    [K1, K2]
        .iter()
        .fold(text.to_string(), |t, k| t.replace(k, "<key>"))
}

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md")
}

/// The ```json block of the README's "Claude Code" section.
fn readme_settings() -> Value {
    let readme = readme();
    let section = &readme[readme
        .find("\n### Claude Code\n")
        .expect("README: Claude Code section")..];
    let start = section
        .find("```json\n")
        .expect("README: Claude Code json block")
        + 8;
    let block = &section[start..];
    let block = &block[..block.find("```").expect("README: end of json block")];
    serde_json::from_str(block).expect("README's settings.json parses")
}

/// A shell command of the settings with `qwen-cred` replaced by the built binary.
fn with_bin(command: &str) -> String {
    assert!(command.starts_with("qwen-cred "), "{command}");
    command.replace("qwen-cred ", &format!("'{BIN}' "))
}

/// The README's settings, pointed at `mock` and the built binary, changed by `tweak`, written
/// to `~/.claude/settings.json` of `env`.
fn write_settings(env: &Env, mock: &Mock, tweak: impl FnOnce(&mut Value)) {
    let mut s = readme_settings();
    assert_eq!(s["env"]["ANTHROPIC_BASE_URL"], README_BASE_URL, "{s}");
    assert_eq!(s["env"]["ANTHROPIC_MODEL"], README_MODEL, "{s}");
    s["env"]["ANTHROPIC_BASE_URL"] = json!(mock.base_url());
    tweak(&mut s);
    let helper = s["apiKeyHelper"]
        .as_str()
        .expect("apiKeyHelper")
        .to_string();
    s["apiKeyHelper"] = json!(with_bin(&helper));
    if let Some(hooks) = s.pointer_mut("/hooks/StopFailure/0/hooks/0/command") {
        *hooks = json!(with_bin(hooks.as_str().expect("hook command")));
    }
    let dir = env.root.join("home/.claude");
    std::fs::create_dir_all(&dir).expect("create ~/.claude");
    std::fs::write(
        dir.join("settings.json"),
        serde_json::to_vec_pretty(&s).expect("json"),
    )
    .expect("write settings.json");
}

/// A mock with K1 and K2, and an environment whose pool `dashscope` holds them (added with
/// `add-key`, the key on stdin), in that order. Returns the mock's account numbers of the keys.
fn pool(k1: KeySpec, k2: KeySpec) -> (Mock, Env, u64, u64) {
    let mock = Mock::start();
    let (a1, a2) = (mock.add_key(K1, k1), mock.add_key(K2, k2));
    let env = Env::with_mock(&mock);
    for (key, label) in [(K1, "ds-1"), (K2, "ds-2")] {
        let mut child = env
            .cmd(&["add-key", "--pool", POOL, "--label", label])
            .args(["--base-url", &format!("{}/v1", mock.base_url())])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run add-key");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{key}\n").as_bytes())
            .expect("write key");
        let o = child.wait_with_output().expect("add-key");
        assert_eq!(o.status.code(), Some(0), "{}", hide(&text(&o.stderr)));
    }
    for d in ["work", "tmp"] {
        std::fs::create_dir_all(env.root.join(d)).expect("create dir");
    }
    (mock, env, a1, a2)
}

/// A key that is always answered 429 (no hint of when to come back).
fn spent() -> KeySpec {
    KeySpec {
        quota: Some(0),
        hint: ResetHint::None,
        ..KeySpec::default()
    }
}

fn store(env: &Env) -> Value {
    let path = env.config_dir().join(format!("qwen-accounts.{POOL}.json"));
    serde_json::from_slice(&std::fs::read(path).expect("read pool store")).expect("store parses")
}

/// How many times `token` served account `i` (0-based) of the pool: each run of the helper.
fn served(env: &Env, i: usize) -> u64 {
    store(env)["accounts"][i]["total_requests"]
        .as_u64()
        .unwrap_or(0)
}

/// Claude Code in `env`: HOME and TMPDIR in its temp dir, proxies at a closed loopback port
/// (the mock on 127.0.0.1 is exempt), so nothing leaves the machine even if it tried.
fn claude_cmd(env: &Env, claude: &Path) -> Command {
    let mut cmd = env.command(claude);
    cmd.env("TMPDIR", env.root.join("tmp"))
        .env("NO_COLOR", "1")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("ALL_PROXY", "http://127.0.0.1:9")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .current_dir(env.root.join("work"));
    cmd
}

/// `claude -p PROMPT` started; stdout and stderr go to files in the temp dir.
fn spawn_p(env: &Env, claude: &Path, prompt: &str) -> Child {
    let mut cmd = claude_cmd(env, claude);
    cmd.args(["-p", prompt]).stdin(Stdio::null());
    util::spawn_logged(&env.root, cmd, "claude")
}

/// Waits for a `spawn_p` run within [`RUN_LIMIT`]; (exit code, stdout, stderr).
fn finish(env: &Env, child: Child) -> util::Ran {
    util::finish_within(&env.root, child, "claude", RUN_LIMIT, hide)
}

fn run_p(env: &Env, claude: &Path, prompt: &str) -> util::Ran {
    finish(env, spawn_p(env, claude, prompt))
}

/// A running `claude -p --input-format stream-json` session: one turn per user message.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    err: PathBuf,
}

impl Session {
    fn start(env: &Env, claude: &Path) -> Session {
        let err = env.root.join("session.err");
        let mut child = claude_cmd(env, claude)
            .args(["-p", "--input-format", "stream-json"])
            .args(["--output-format", "stream-json", "--verbose"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err).expect("create err"))
            .spawn()
            .expect("start claude");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Session {
            stdin: child.stdin.take(),
            child,
            lines,
            err,
        }
    }

    fn stderr(&self) -> String {
        hide(&text(&std::fs::read(&self.err).unwrap_or_default()))
    }

    /// Sends `prompt` and returns the turn's `result` line.
    fn turn(&mut self, prompt: &str) -> Value {
        let msg = json!({"type": "user", "message": {"role": "user", "content": prompt}});
        let stdin = self.stdin.as_mut().expect("session open");
        writeln!(stdin, "{msg}").expect("write to claude");
        stdin.flush().expect("flush");
        let end = Instant::now() + RUN_LIMIT;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                    if v["type"] == "result" {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "no result for {prompt:?} within {RUN_LIMIT:?}\nstderr: {}",
                    self.stderr()
                ),
            }
        }
    }

    /// Closes stdin and waits for Claude Code to exit; its exit code.
    fn end(mut self) -> Option<i32> {
        self.stdin = None;
        let mut status = None;
        let child = &mut self.child;
        let done = util::wait_for(RUN_LIMIT.as_secs(), || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        assert!(done, "claude did not exit\nstderr: {}", self.stderr());
        status.and_then(|s| s.code())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The requests Claude Code sent to the Messages API, in order.
fn messages(mock: &Mock) -> Vec<Request> {
    mock.requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/messages")
        .collect()
}

/// Which test key a request carried in `x-api-key` ("K1", "K2", "" for none), after checking
/// that `Authorization: Bearer` carries the same. Names, so a failing assertion shows no key.
fn key_of(r: &Request) -> &'static str {
    let key = r.header("x-api-key").unwrap_or_default();
    let auth = r.header("authorization").unwrap_or_default();
    assert!(
        auth.trim_end() == format!("Bearer {key}").trim_end(),
        "Authorization carries the key of x-api-key: {} / {}",
        hide(auth),
        hide(key)
    );
    match key {
        K1 => "K1",
        K2 => "K2",
        "" => "",
        _ => "another key",
    }
}

fn keys_of(sent: &[Request]) -> Vec<&'static str> {
    sent.iter().map(key_of).collect()
}

/// The README's settings, end to end: one streaming request to `/v1/messages` with the pool's
/// key in both headers, the README's model, nothing else sent anywhere, one run of the helper.
#[test]
fn claude_sends_a_key_of_the_pool_in_both_headers() {
    let Some(claude) = program("QWEN_CRED_TEST_CLAUDE", "claude") else {
        return;
    };
    let (mock, env, a1, _) = pool(KeySpec::default(), KeySpec::default());
    write_settings(&env, &mock, |_| {});
    let before = mock.requests().len();

    let (code, out, err) = run_p(&env, &claude, "say hi");
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {}", hide(&err));
    assert!(out.contains(&format!("hello from account {a1}")), "{out}");
    let sent = messages(&mock);
    assert_eq!(sent.len(), 1, "{}", hide(&format!("{sent:?}")));
    assert_eq!(key_of(&sent[0]), "K1", "the pool's current key");
    assert_eq!(sent[0].query, "beta=true");
    let body: Value = serde_json::from_str(&sent[0].body).expect("request body");
    assert_eq!(body["stream"], true);
    assert_eq!(body["model"], README_MODEL);
    let others: Vec<_> = mock.requests()[before..]
        .iter()
        .filter(|r| r.path != "/v1/messages")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(others.is_empty(), "{others:?}");
    assert_eq!(served(&env, 0), 1, "the helper ran once");
    assert_eq!(served(&env, 1), 0);
    assert!(
        !env.store_path().exists(),
        "the default pool is not touched"
    );
}

/// A 401 makes Claude Code run the helper again before each retry; qwen-cred does not hear of
/// the 401, so every retry carries the same key.
#[test]
fn claude_runs_the_helper_before_each_retry_of_a_401_and_gets_the_same_key() {
    let Some(claude) = program("QWEN_CRED_TEST_CLAUDE", "claude") else {
        return;
    };
    let (mock, env, _, _) = pool(KeySpec::default(), KeySpec::default());
    mock.revoke_key(K1);
    write_settings(&env, &mock, |s| {
        s["env"]["CLAUDE_CODE_MAX_RETRIES"] = json!("0");
    });

    let (code, out, err) = run_p(&env, &claude, "say hi");
    assert_ne!(code, Some(0), "stdout: {out}\nstderr: {}", hide(&err));
    assert!(out.contains("401"), "stdout: {out}\nstderr: {}", hide(&err));
    let sent = messages(&mock);
    // A 401 is retried twice more than CLAUDE_CODE_MAX_RETRIES says.
    assert_eq!(
        keys_of(&sent),
        ["K1", "K1", "K1"],
        "the first try and 2 retries"
    );
    assert_eq!(served(&env, 0), 3, "one run of the helper per request");
    assert_eq!(served(&env, 1), 0);
    let s = store(&env);
    assert!(
        s["accounts"][0].get("status").is_none(),
        "{}",
        hide(&s.to_string())
    );
}

/// After a 401, the retry carries what `token` serves at that moment: once `refresh --account
/// 1 --force` has found the key rejected and revoked it, the next key.
#[test]
fn after_refresh_revokes_the_rejected_key_claude_retries_with_the_next_one() {
    let Some(claude) = program("QWEN_CRED_TEST_CLAUDE", "claude") else {
        return;
    };
    let (mock, env, _, a2) = pool(KeySpec::default(), KeySpec::default());
    mock.revoke_key(K1);
    write_settings(&env, &mock, |_| {});

    let child = spawn_p(&env, &claude, "say hi");
    assert!(
        mock.wait_until(RUN_LIMIT, |st| st
            .requests
            .iter()
            .any(|r| r.path == "/v1/messages")),
        "claude sent no request"
    );
    let (_, err) = env.expect(&["refresh", "--pool", POOL, "--account", "1", "--force"], 3);
    assert!(err.contains("revoked"), "{}", hide(&err));
    let (code, out, err) = finish(&env, child);
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {}", hide(&err));
    assert!(out.contains(&format!("hello from account {a2}")), "{out}");
    let keys = keys_of(&messages(&mock));
    let (last, before) = keys.split_last().expect("requests");
    assert_eq!(*last, "K2", "the retry after the revocation: {keys:?}");
    assert!(
        !before.is_empty() && before.iter().all(|k| *k == "K1"),
        "{keys:?}"
    );
    assert_eq!(store(&env)["accounts"][0]["status"], "revoked");
    assert_eq!(served(&env, 1), 1);
}

/// The README's checking helper: a key the server stops taking in the middle of a session is
/// revoked by the run of the helper the 401 causes, and that same retry carries the next key.
#[test]
fn with_the_checking_helper_the_retry_after_a_401_carries_the_next_key() {
    let Some(claude) = program("QWEN_CRED_TEST_CLAUDE", "claude") else {
        return;
    };
    let words = readme().split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains(&format!("`\"{CHECKING_HELPER}\"`")),
        "README: the checking helper"
    );
    let (mock, env, a1, a2) = pool(KeySpec::default(), KeySpec::default());
    write_settings(&env, &mock, |s| {
        s["apiKeyHelper"] = json!(CHECKING_HELPER);
    });
    let mut session = Session::start(&env, &claude);
    let r = session.turn("say hi");
    assert_eq!(r["result"], format!("hello from account {a1}"), "{r}");

    mock.revoke_key(K1);
    let r = session.turn("say hi again");
    assert_eq!(
        r["result"],
        format!("hello from account {a2}"),
        "{r}\nstderr: {}",
        session.stderr()
    );
    assert_eq!(session.end(), Some(0));
    assert_eq!(keys_of(&messages(&mock)), ["K1", "K1", "K2"]);
    assert_eq!(store(&env)["accounts"][0]["status"], "revoked");
    assert!(
        mock.count_path("/v1/models") >= 2,
        "each run checked the key"
    );
}

/// With the default TTL (5 minutes) a session keeps the key it got at start: a rotation in
/// the pool does not reach it, and the helper does not run again.
#[test]
fn with_the_default_ttl_a_session_keeps_its_key() {
    let Some(claude) = program("QWEN_CRED_TEST_CLAUDE", "claude") else {
        return;
    };
    let (mock, env, a1, _) = pool(KeySpec::default(), KeySpec::default());
    write_settings(&env, &mock, |s| {
        s["env"]
            .as_object_mut()
            .expect("env")
            .remove("CLAUDE_CODE_API_KEY_HELPER_TTL_MS");
    });
    let mut session = Session::start(&env, &claude);
    assert_eq!(
        session.turn("one")["result"],
        format!("hello from account {a1}")
    );
    env.expect(
        &[
            "report-429",
            "--pool",
            POOL,
            "--retry-after",
            "3600",
            "--no-wait",
        ],
        0,
    );
    assert_eq!(store(&env)["current_account_id"], "2");
    assert_eq!(
        session.turn("two")["result"],
        format!("hello from account {a1}")
    );
    assert_eq!(
        session.turn("three")["result"],
        format!("hello from account {a1}")
    );
    assert_eq!(session.end(), Some(0));
    assert_eq!(keys_of(&messages(&mock)), ["K1", "K1", "K1"]);
    assert_eq!(served(&env, 0), 1, "the helper ran once");
    assert_eq!(served(&env, 1), 0);
}

/// With a short TTL a session follows a rotation: the first request after the TTL ran out
/// still carries the old key and starts the helper (stale-while-revalidate); the requests
/// after the helper has finished carry the key qwen-cred now serves.
#[test]
fn with_a_short_ttl_a_session_follows_a_rotation_after_the_helper_has_run() {
    let Some(claude) = program("QWEN_CRED_TEST_CLAUDE", "claude") else {
        return;
    };
    const TTL: Duration = Duration::from_secs(3);
    let (mock, env, a1, a2) = pool(KeySpec::default(), KeySpec::default());
    write_settings(&env, &mock, |s| {
        s["env"]["CLAUDE_CODE_API_KEY_HELPER_TTL_MS"] = json!(TTL.as_millis().to_string());
    });
    let mut session = Session::start(&env, &claude);
    assert_eq!(
        session.turn("one")["result"],
        format!("hello from account {a1}")
    );
    // The helper ran before this request, so the key is past the TTL from then on.
    let stale_at = messages(&mock)[0].at + TTL;
    env.expect(
        &[
            "report-429",
            "--pool",
            POOL,
            "--retry-after",
            "3600",
            "--no-wait",
        ],
        0,
    );
    assert_eq!(served(&env, 1), 0);

    // The TTL running out is what is tested here, so the test waits for it.
    assert!(util::wait_for(10, || Instant::now() >= stale_at));
    assert_eq!(
        session.turn("two")["result"],
        format!("hello from account {a1}"),
        "the stale key still goes out once"
    );
    assert!(
        util::wait_for(RUN_LIMIT.as_secs(), || served(&env, 1) == 1),
        "that request started the helper, which served the next key\nstderr: {}",
        session.stderr()
    );
    // The helper has written the store; Claude Code takes its output once the helper has
    // exited and the result is read, which turns sent right now may beat (on a loaded machine,
    // several): until then they carry the old key, and from then on the new one.
    let (old, new) = (
        json!(format!("hello from account {a1}")),
        json!(format!("hello from account {a2}")),
    );
    let end = Instant::now() + RUN_LIMIT;
    let mut results = vec![session.turn("three")["result"].clone()];
    while results.last() == Some(&old) && Instant::now() < end {
        results.push(session.turn("again")["result"].clone());
    }
    assert_eq!(results.last(), Some(&new), "{results:?}");
    assert!(
        results[..results.len() - 1].iter().all(|r| *r == old),
        "{results:?}"
    );
    assert_eq!(session.end(), Some(0));
    let keys = keys_of(&messages(&mock));
    assert_eq!(keys[..2], ["K1", "K1"], "{keys:?}");
    assert_eq!(keys.last(), Some(&"K2"), "{keys:?}");
}

/// A 429 is retried with the same key, without running the helper, and then ends the turn;
/// qwen-cred is not told (no hook here), so the key is not cooling down and stays current.
#[test]
fn a_429_is_retried_on_the_same_key_and_qwen_cred_does_not_hear_of_it() {
    let Some(claude) = program("QWEN_CRED_TEST_CLAUDE", "claude") else {
        return;
    };
    let (mock, env, _, _) = pool(spent(), KeySpec::default());
    write_settings(&env, &mock, |s| {
        s.as_object_mut().expect("settings").remove("hooks");
        s["env"]["CLAUDE_CODE_MAX_RETRIES"] = json!("1");
    });

    let (code, out, err) = run_p(&env, &claude, "say hi");
    assert_ne!(code, Some(0), "stdout: {out}\nstderr: {}", hide(&err));
    assert!(
        out.contains("API Error: Request rejected (429)"),
        "stdout: {out}\nstderr: {}",
        hide(&err)
    );
    assert_eq!(keys_of(&messages(&mock)), ["K1", "K1"]);
    assert_eq!(served(&env, 0), 1, "no run of the helper for the retry");
    let s = store(&env);
    assert_eq!(s["current_account_id"], "1");
    assert!(
        s["accounts"][0]["rate_limit_resets_at"].is_null(),
        "{}",
        hide(&s.to_string())
    );
}

/// The README's `StopFailure` hook tells qwen-cred of the 429 that ended a turn; the next run
/// of the helper (here: the next `claude`) serves the next key.
#[test]
fn the_stop_failure_hook_reports_the_429_and_the_next_run_gets_the_next_key() {
    let Some(claude) = program("QWEN_CRED_TEST_CLAUDE", "claude") else {
        return;
    };
    let (mock, env, _, a2) = pool(spent(), KeySpec::default());
    write_settings(&env, &mock, |s| {
        s["env"]["CLAUDE_CODE_MAX_RETRIES"] = json!("1");
    });
    // In a session: `claude -p PROMPT` exits right after the failed turn, cutting hooks short.
    let mut session = Session::start(&env, &claude);
    let r = session.turn("say hi");
    assert_eq!(r["is_error"], true, "{r}");
    assert!(
        util::wait_for(RUN_LIMIT.as_secs(), || !store(&env)["accounts"][0]
            ["rate_limit_resets_at"]
            .is_null()),
        "the hook reported the 429\nstderr: {}",
        session.stderr()
    );
    let s = store(&env);
    assert_eq!(s["current_account_id"], "2", "{}", hide(&s.to_string()));
    assert_eq!(s["accounts"][0]["rate_limit_reason"], "backoff");
    session.end();
    assert_eq!(keys_of(&messages(&mock)), ["K1", "K1"]);

    let (code, out, err) = run_p(&env, &claude, "say hi again");
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {}", hide(&err));
    assert!(out.contains(&format!("hello from account {a2}")), "{out}");
    assert_eq!(keys_of(&messages(&mock))[2..], ["K2"]);
}

/// With every key cooling down, `token` fails; Claude Code shows qwen-cred's message and sends
/// the request with an empty key, which the server refuses.
#[test]
fn claude_shows_why_qwen_cred_gave_no_key() {
    let Some(claude) = program("QWEN_CRED_TEST_CLAUDE", "claude") else {
        return;
    };
    let (mock, env, _, _) = pool(KeySpec::default(), KeySpec::default());
    let cool = [
        "report-429",
        "--pool",
        POOL,
        "--retry-after",
        "86400",
        "--no-wait",
    ];
    env.expect(&cool, 0);
    env.expect(&cool, 4);
    write_settings(&env, &mock, |s| {
        s["env"]["CLAUDE_CODE_MAX_RETRIES"] = json!("0");
    });

    let (code, out, err) = run_p(&env, &claude, "say hi");
    assert_ne!(code, Some(0), "stdout: {out}\nstderr: {}", hide(&err));
    assert!(
        err.contains("apiKeyHelper failed: exited 4: qwen-cred: "),
        "stdout: {out}\nstderr: {}",
        hide(&err)
    );
    // Each retry of the 401 runs the helper again, which fails again.
    assert_eq!(keys_of(&messages(&mock)), ["", "", ""]);
    assert_eq!(
        err.matches("apiKeyHelper failed: exited 4").count(),
        3,
        "{}",
        hide(&err)
    );
}

/// The man page's EXAMPLES show the README's settings.
#[test]
fn the_man_page_shows_the_readme_settings() {
    let man = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/qwen-cred.1"))
        .expect("read the man page");
    let start = man
        .find("\n{\n  \"apiKeyHelper\"")
        .expect("man page: Claude Code settings")
        + 1;
    let block = &man[start..];
    let block = &block[..block
        .find("\n.fi\n")
        .expect("man page: end of the settings")];
    let json: Value =
        serde_json::from_str(&block.replace("\\-", "-")).expect("the man page's settings parse");
    assert_eq!(json, readme_settings());
}
