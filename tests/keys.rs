//! API-key accounts (issue 12): `add-key` reads the key from stdin, a no-echo prompt or a
//! named variable and never from argv; `token` serves a key as it serves an OAuth token
//! (strategies, pinning, formats, cooldowns, waits, exit codes) without ever refreshing it;
//! `refresh` of a key account checks the key and revokes a rejected one; the wrapper loop gets
//! every key's quota. Keys never show in argv, stderr, `list`, or these tests' own messages.

use crate::terminal::Tmux;
use crate::util::mock::{KeySpec, Mock, ResetHint};
use crate::util::{self, account, program, text, Env};
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Output, Stdio};
use std::time::Duration;

const K1: &str = "sk-sp-test-key-one-0001";
const K2: &str = "sk-sp-test-key-two-0002";
const K3: &str = "sk-sp-test-key-three-0003";

/// `text` with every test key replaced, for assertion messages: a failing test prints what
/// it saw without printing a key.
fn hide(text: &str) -> String {
    [K1, K2, K3, "sk-sp-unknown-9999"]
        .iter()
        .fold(text.to_string(), |t, k| t.replace(k, "<key>"))
}

/// `assert_eq!` whose failure message shows every test key as `<key>`.
macro_rules! same {
    ($a:expr, $b:expr $(, $why:expr)?) => {
        match (&$a, &$b) {
            (a, b) => assert!(
                a == b,
                "{}{}\n  left: {}\n right: {}",
                stringify!($a),
                <[String]>::concat(&[$(format!(" ({})", $why))?]),
                hide(&format!("{a:?}")),
                hide(&format!("{b:?}"))
            ),
        }
    };
}

fn no_key(what: &str, text: &str) {
    for k in [K1, K2, K3, "sk-sp-unknown-9999"] {
        assert!(!text.contains(k), "a key in {what}: {}", hide(text));
    }
}

/// qwen-cred with `input` on stdin; (exit code, stdout, stderr).
fn run_with_stdin(env: &Env, args: &[&str], input: &str) -> (Option<i32>, String, String) {
    let mut child = env
        .cmd(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(input.as_bytes());
    }
    let o = child.wait_with_output().expect("wait");
    (o.status.code(), text(&o.stdout), text(&o.stderr))
}

/// `add-key ARGS` with `key` piped on stdin; asserts the exit code; returns stderr, which must
/// hold no key.
fn add_key(env: &Env, key: &str, args: &[&str], code: i32) -> String {
    let mut all = vec!["add-key"];
    all.extend(args);
    let (got, out, err) = run_with_stdin(env, &all, &format!("{key}\n"));
    assert_eq!(
        got,
        Some(code),
        "{all:?}\nstdout: {}\nstderr: {}",
        hide(&out),
        hide(&err)
    );
    assert!(
        out.is_empty(),
        "add-key prints nothing on stdout: {}",
        hide(&out)
    );
    no_key("add-key's stderr", &err);
    err
}

fn expect(env: &Env, args: &[&str], code: i32) -> (String, String) {
    let o = env.run(args);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(
        o.status.code(),
        Some(code),
        "qwen-cred {args:?}\nstdout: {}\nstderr: {}",
        hide(&out),
        hide(&err)
    );
    no_key("stderr", &err);
    (out, err)
}

fn sh(env: &Env, script: &str) -> Output {
    env.command("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("sh")
}

fn api(mock: &Mock) -> String {
    format!("{}/v1", mock.base_url())
}

fn fp(key: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    d.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_key_from_stdin_is_stored_0600_and_served_without_refresh() {
    let mock = Mock::start();
    mock.add_key(K1, KeySpec::default());
    let env = Env::with_mock(&mock);
    let err = add_key(&env, K1, &["--label", "work", "--base-url", &api(&mock)], 0);
    assert!(
        err.contains(&format!("added key account 1 (work (key {}))", fp(K1))),
        "{}",
        hide(&err)
    );
    assert_eq!(util::mode(&env.store_path()), 0o600);
    let s = env.read_store();
    let a = &s["accounts"][0];
    assert_eq!(a["kind"], "api_key");
    same!(a["access_token"], K1);
    assert_eq!(a["base_url"], api(&mock));
    assert_eq!(a["label"], "work");
    assert!(a.get("refresh_token").is_none() && a.get("expiry_date").is_none());
    assert_eq!(s["current_account_id"], "1");

    same!(expect(&env, &["token"], 0).0, format!("{K1}\n"));
    // `--min-valid` is always met: a key does not expire, and nothing is refreshed.
    same!(
        expect(&env, &["token", "--min-valid", "31536000"], 0).0,
        format!("{K1}\n")
    );
    let (json, _) = expect(&env, &["token", "--format", "json"], 0);
    let v: Value = serde_json::from_str(&json).expect("json");
    same!(v["access_token"], K1);
    assert_eq!(v["base_url"], api(&mock));
    assert_eq!(v["account_id"], "1");
    assert_eq!(
        (&v["expires_at"], &v["expiry_date"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(v["kind"], "api_key");
    // Its own headers only: no DashScope OAuth header on a key.
    same!(
        v["headers"],
        json!({"Authorization": format!("Bearer {K1}")})
    );
    let (header, _) = expect(&env, &["token", "--format", "header"], 0);
    same!(header, format!("Authorization: Bearer {K1}\n"));
    let (envs, _) = expect(&env, &["token", "--format", "env"], 0);
    assert!(envs.contains(&format!("export OPENAI_BASE_URL='{}'\n", api(&mock))));
    assert!(
        envs.contains("export QWEN_CRED_HEADERS=''\n"),
        "{}",
        hide(&envs)
    );
    assert_eq!(mock.count_refreshes(), 0);
    assert!(mock.requests().is_empty(), "serving a key asks no server");
    assert_eq!(env.read_store()["accounts"][0]["total_requests"], 5);

    // list: the label and the key's fingerprint, never the key.
    let (table, _) = expect(&env, &["list"], 0);
    no_key("list", &table);
    assert!(table.contains(&format!("work (key {})", fp(K1))), "{table}");
    assert!(table.contains("never (API key)"), "{table}");
    let (listed, _) = expect(&env, &["list", "--json"], 0);
    no_key("list --json", &listed);
    let l: Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(l[0]["kind"], "api_key");
    assert_eq!(l[0]["fingerprint"], fp(K1));
    assert_eq!(l[0]["base_url"], api(&mock));
    assert_eq!(l[0]["expires_at"], Value::Null);
}

#[test]
fn a_key_on_the_command_line_is_refused_and_never_echoed() {
    let env = Env::new();
    for args in [
        &["add-key", K1][..],
        &["add-key", "--label", "x", K1],
        &["add-key", &format!("--key={K1}")],
        &["add-key", "--api-key", K1],
    ] {
        let (out, err) = expect(&env, args, 2);
        assert!(out.is_empty());
        assert!(
            err.contains("never taken from the command line"),
            "{}",
            hide(&err)
        );
        assert!(err.contains("--from-env VAR"), "{}", hide(&err));
    }
    assert!(!env.store_path().exists(), "nothing was stored");
    // A header that would carry the key, or Authorization, is refused too.
    let (code, _, err) =
        run_with_stdin(&env, &["add-key", "--header", &format!("X-Key: {K1}")], K1);
    assert_eq!(code, Some(2), "{}", hide(&err));
    no_key("stderr", &err);
    let (code, _, err) = run_with_stdin(
        &env,
        &[
            "add-key",
            "--header",
            &format!("Authorization: Bearer {K1}"),
        ],
        K1,
    );
    assert_eq!(code, Some(2), "{}", hide(&err));
    no_key("stderr", &err);
    assert!(!env.store_path().exists(), "nothing was stored");
}

#[test]
fn check_refuses_a_rejected_key_and_from_env_reads_a_variable() {
    let mock = Mock::start();
    mock.add_key(K1, KeySpec::default());
    mock.add_key("sk-sp-unknown-9999", KeySpec::default());
    mock.revoke_key("sk-sp-unknown-9999");
    mock.set_echo_invalid_key(true);
    let mut env = Env::with_mock(&mock);
    env.set("MY_KEY", K1);
    env.set("BAD_KEY", "sk-sp-unknown-9999");
    let base = api(&mock);
    let (_, err) = expect(
        &env,
        &[
            "add-key",
            "--from-env",
            "MY_KEY",
            "--check",
            "--base-url",
            &base,
        ],
        0,
    );
    assert!(err.contains("added key account 1 (key "), "{}", hide(&err));
    let checks: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/models")
        .collect();
    assert_eq!(checks.len(), 1, "one cheap request");
    assert_eq!(checks[0].method, "GET");
    assert_eq!(
        checks[0].header("authorization"),
        Some(format!("Bearer {K1}").as_str())
    );

    // The server rejects it (and quotes it back): exit 7, nothing added, the key redacted.
    let (_, err) = expect(
        &env,
        &[
            "add-key",
            "--from-env",
            "BAD_KEY",
            "--check",
            "--base-url",
            &base,
        ],
        7,
    );
    assert!(err.contains("rejected the key"), "{}", hide(&err));
    assert!(
        err.contains("HTTP 401: Incorrect API key provided: REDACTED"),
        "{}",
        hide(&err)
    );
    assert_eq!(
        env.read_store()["accounts"].as_array().map(Vec::len),
        Some(1)
    );
    // Without --check it is taken as given.
    expect(
        &env,
        &["add-key", "--from-env", "BAD_KEY", "--base-url", &base],
        0,
    );
    assert_eq!(
        env.read_store()["accounts"].as_array().map(Vec::len),
        Some(2)
    );

    // No server: exit 5, nothing added.
    let (_, err) = expect(
        &env,
        &[
            "add-key",
            "--from-env",
            "MY_KEY",
            "--check",
            "--base-url",
            "http://127.0.0.1:9/v1",
        ],
        5,
    );
    assert!(err.contains("could not check the key"), "{}", hide(&err));
    // An unset variable, or none on stdin: exit 2.
    expect(&env, &["add-key", "--from-env", "NOT_SET"], 2);
    let (code, _, err) = run_with_stdin(&env, &["add-key"], "\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no key on stdin"), "{err}");
    let (code, _, err) = run_with_stdin(&env, &["add-key"], "two words\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(!err.contains("two words"), "{err}");
}

/// A plan that serves coding agents only refuses a check without their header; the header
/// given with the key goes out with every token of that key, and only with it.
#[test]
fn a_key_carries_the_headers_it_was_added_with() {
    let mock = Mock::start();
    mock.require_header_for_keys(Some(("User-Agent", "QwenCode/")));
    mock.add_key(K1, KeySpec::default());
    let env = Env::with_mock(&mock);
    let base = api(&mock);
    let err = add_key(&env, K1, &["--check", "--base-url", &base], 7);
    assert!(err.contains("refused the check"), "{}", hide(&err));
    assert!(err.contains("coding agents"), "{}", hide(&err));
    assert!(err.contains("--header 'User-Agent: ...'"), "{}", hide(&err));
    assert!(!env.store_path().exists());

    let ua = "QwenCode/0.24.4 (linux; x64)";
    add_key(
        &env,
        K1,
        &[
            "--check",
            "--base-url",
            &base,
            "--header",
            &format!("User-Agent: {ua}"),
            "--header",
            "X-DashScope-CacheControl: enable",
        ],
        0,
    );
    let (header, _) = expect(&env, &["token", "--format", "header"], 0);
    same!(
        header,
        format!("Authorization: Bearer {K1}\nUser-Agent: {ua}\nX-DashScope-CacheControl: enable\n")
    );
    let (json, _) = expect(&env, &["token", "--format", "json"], 0);
    let v: Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["headers"]["User-Agent"], ua);
    assert!(v["headers"].get("X-DashScope-AuthType").is_none());
    // Through the wrapper: the request has them, and nothing of OAuth.
    let mut env = env;
    env.set("QWEN_CRED_BIN", util::BIN);
    let o = sh(
        &env,
        &format!(
            "'{}/scripts/qwen-curl' -H 'Content-Type: application/json' -d '{{\"messages\":[]}}' {base}/chat/completions",
            env!("CARGO_MANIFEST_DIR")
        ),
    );
    assert!(o.status.success(), "{}", hide(&text(&o.stderr)));
    let r = mock
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/chat/completions")
        .expect("request");
    assert_eq!(r.header("user-agent"), Some(ua));
    assert_eq!(r.header("x-dashscope-cachecontrol"), Some("enable"));
    assert_eq!(r.header("x-dashscope-authtype"), None);
    assert_eq!(mock.key_ok(K1), 1);
}

/// Strategies, pinning, cooldowns, waits and exit codes work on keys as on OAuth accounts,
/// in a pool that holds both.
#[test]
fn keys_rotate_cool_down_and_wait_like_oauth_accounts() {
    let mut env = Env::new();
    env.set("QWEN_CRED_ACCOUNT_SELECTION_STRATEGY", "round-robin");
    env.write_store(
        &json!({"accounts": [account("1", "at-1", "rt-1", 7200)], "current_account_id": "1"}),
    );
    add_key(
        &env,
        K1,
        &["--base-url", "https://coding.dashscope.aliyuncs.com/v1"],
        0,
    );
    add_key(&env, K2, &[], 0);
    let s = env.read_store();
    assert_eq!(
        s["accounts"][2]["base_url"], "https://coding-intl.dashscope.aliyuncs.com/v1",
        "the default"
    );
    let served: Vec<String> = (0..6)
        .map(|_| expect(&env, &["token"], 0).0.trim().to_string())
        .collect();
    same!(served, [K1, K2, "at-1", K1, K2, "at-1"]);

    // A long 429 on key 2 cools it down; rotation passes it by.
    expect(
        &env,
        &["report-429", "--account", "3", "--retry-after", "600"],
        0,
    );
    let served: Vec<String> = (0..4)
        .map(|_| expect(&env, &["token"], 0).0.trim().to_string())
        .collect();
    same!(served, [K1, "at-1", K1, "at-1"]);
    // Pinned, it is served while cooling down, with a warning.
    let (out, err) = expect(&env, &["token", "--account", "3"], 0);
    same!(out.trim(), K2);
    assert!(
        err.contains("account 3 is cooling down until"),
        "{}",
        hide(&err)
    );
    // All cooling: exit 4 naming the soonest reset, or a wait when within the limit.
    expect(
        &env,
        &["report-429", "--account", "1", "--retry-after", "600"],
        0,
    );
    let (_, err) = expect(
        &env,
        &[
            "report-429",
            "--account",
            "2",
            "--retry-after",
            "3",
            "--no-wait",
        ],
        0,
    );
    assert!(err.is_empty(), "{err}");
    expect(
        &env,
        &["report-429", "--account", "2", "--retry-after", "600"],
        4,
    );
    let (_, err) = expect(&env, &["token", "--no-wait"], 4);
    assert!(
        err.contains("every usable account is cooling down"),
        "{}",
        hide(&err)
    );
    let mut s = env.read_store();
    s["accounts"][1]["rate_limit_resets_at"] = json!(util::now_ms() + 1500);
    env.write_store(&s);
    env.set("QWEN_CRED_MAX_RATE_LIMIT_WAIT_SECONDS", "5");
    let (out, err) = expect(&env, &["token"], 0);
    same!(out.trim(), K1, "after the wait");
    assert!(err.contains("waiting"), "{}", hide(&err));
    // Every account removed: exit 3.
    expect(&env, &["remove", "--all"], 0);
    let (_, err) = expect(&env, &["token"], 3);
    assert!(err.contains("qwen-cred add-key"), "{err}");
}

#[test]
fn replace_swaps_a_key_in_place_and_keeps_its_counters() {
    let env = Env::new();
    env.write_store(
        &json!({"accounts": [account("1", "at-1", "rt-1", 7200)], "current_account_id": "1"}),
    );
    add_key(&env, K1, &["--label", "plan"], 0);
    add_key(&env, K3, &[], 0);
    for _ in 0..3 {
        expect(&env, &["token", "--account", "2"], 0);
    }
    expect(
        &env,
        &["report-429", "--account", "2", "--retry-after", "600"],
        0,
    );
    let err = add_key(&env, K2, &["--replace", "2"], 0);
    assert!(
        err.contains("replaced the key of account 2 (plan (key "),
        "{}",
        hide(&err)
    );
    let a = &env.read_store()["accounts"][1];
    assert_eq!(a["id"], "2");
    same!(a["access_token"], K2);
    assert_eq!(a["label"], "plan");
    assert_eq!(a["total_requests"], 3, "its counters stay");
    assert_eq!(
        a["rate_limit_resets_at"],
        Value::Null,
        "a new key is not cooling down"
    );
    same!(expect(&env, &["token", "--account", "2"], 0).0.trim(), K2);
    // The same key again updates that account rather than adding one.
    let err = add_key(&env, K2, &["--label", "renamed"], 0);
    assert!(err.contains("already account 2"), "{}", hide(&err));
    assert_eq!(
        env.read_store()["accounts"].as_array().map(Vec::len),
        Some(3)
    );
    // Not an OAuth account, nor a key that is already another account.
    let err = add_key(&env, K2, &["--replace", "1"], 2);
    assert!(
        err.contains("account 1 is an OAuth account"),
        "{}",
        hide(&err)
    );
    let err = add_key(&env, K3, &["--replace", "2"], 2);
    assert!(err.contains("already account 3"), "{}", hide(&err));
    same!(env.read_store()["accounts"][1]["access_token"], K2);
}

#[test]
fn a_full_pool_is_refused_before_the_key_is_read() {
    let env = Env::new();
    env.write_store(&util::store_with(10));
    let err = add_key(&env, K1, &[], 2);
    assert!(err.contains("the pool is full"), "{}", hide(&err));
    assert!(err.contains("add-key --replace ID"), "{}", hide(&err));
    assert!(!std::fs::read_to_string(env.store_path())
        .unwrap_or_default()
        .contains(K1));
}

/// `refresh` of a key account checks the key: a wrapper that got a 401 runs
/// `refresh --account ID --force` as for OAuth and learns from the exit code whether the key
/// is dead (3, now revoked) or not known now (5).
#[test]
fn refresh_checks_a_key_and_revokes_a_rejected_one() {
    let mock = Mock::start();
    mock.add_key(K1, KeySpec::default());
    mock.add_key(K2, KeySpec::default());
    mock.set_echo_invalid_key(true);
    let env = Env::with_mock(&mock);
    let base = api(&mock);
    add_key(&env, K1, &["--base-url", &base], 0);
    add_key(&env, K2, &["--base-url", &base], 0);
    let (_, err) = expect(&env, &["refresh", "--account", "1", "--force"], 0);
    assert!(err.contains("the key is accepted"), "{}", hide(&err));
    // --due never touches a key: there is nothing due.
    expect(&env, &["refresh", "--due"], 0);
    assert_eq!(mock.count_path("/v1/models"), 1);

    mock.revoke_key(K1);
    let (_, err) = expect(&env, &["refresh", "--account", "1", "--force"], 3);
    assert!(
        err.contains(&format!(
            "account 1 (key {}) was revoked by the server ({}/models answered HTTP 401: Incorrect API key provided: REDACTED); run qwen-cred add-key --replace 1 to sign it in again",
            fp(K1),
            base
        )),
        "{}",
        hide(&err)
    );
    let s = env.read_store();
    assert_eq!(s["accounts"][0]["status"], "revoked");
    no_key(
        "the stored reason",
        s["accounts"][0]["status_reason"].as_str().unwrap_or(""),
    );
    assert_eq!(
        expect(&env, &["token"], 0).0.trim(),
        K2,
        "the next key serves"
    );
    let (_, err) = expect(&env, &["token", "--account", "1"], 3);
    assert!(err.contains("revoked: 1"), "{err}");
    let (table, _) = expect(&env, &["list"], 0);
    assert!(
        table.contains("revoked: run qwen-cred add-key --replace 1"),
        "{table}"
    );

    // A server that does not answer revokes nothing: exit 5.
    let mut s = env.read_store();
    s["accounts"][1]["base_url"] = json!("http://127.0.0.1:9/v1");
    env.write_store(&s);
    let (_, err) = expect(&env, &["refresh", "--account", "2"], 5);
    assert!(
        err.contains("the key could not be checked"),
        "{}",
        hide(&err)
    );
    assert!(env.read_store()["accounts"][1].get("status").is_none());

    // A new key revives the account.
    let (code, _, err) = run_with_stdin(&env, &["add-key", "--replace", "1"], K3);
    assert_eq!(code, Some(0), "{}", hide(&err));
    assert!(env.read_store()["accounts"][0].get("status").is_none());
}

/// N keys with a quota of Q requests each serve N x Q requests through the wrapper loop,
/// which then ends with exit 4 (every key cooling down until its window resets).
#[test]
fn the_wrapper_loop_serves_every_keys_quota() {
    const Q: u32 = 4;
    let mock = Mock::start();
    let keys = [K1, K2, K3];
    for k in keys {
        mock.add_key(
            k,
            KeySpec {
                quota: Some(Q),
                window: Duration::from_secs(3600),
                hint: ResetHint::RetryAfter,
                quota_body: false,
            },
        );
    }
    let mut env = Env::with_mock(&mock);
    env.set("QWEN_CRED_MAX_RATE_LIMIT_WAIT_SECONDS", "0");
    env.set("QWEN_CRED_BIN", util::BIN);
    for k in keys {
        add_key(&env, k, &["--base-url", &api(&mock)], 0);
    }
    let curl = format!(
        "'{}/scripts/qwen-curl' -H 'Content-Type: application/json' -d '{{\"messages\":[]}}' {}/chat/completions",
        env!("CARGO_MANIFEST_DIR"),
        api(&mock)
    );
    let mut served = 0;
    let code = loop {
        let o = sh(&env, &curl);
        no_key("qwen-curl's stderr", &text(&o.stderr));
        match o.status.code() {
            Some(0) => served += 1,
            other => break other,
        }
        assert!(served <= 3 * Q, "more than the quota");
    };
    assert_eq!(served, 3 * Q);
    assert_eq!(code, Some(4));
    for k in keys {
        assert_eq!(mock.key_ok(k), Q);
    }
    let s = env.read_store();
    for a in s["accounts"].as_array().expect("accounts") {
        assert_eq!(a["rate_limit_reason"], "retry-after");
        assert!(a["rate_limit_resets_at"].as_i64().unwrap_or(0) > util::now_ms() + 3_000_000);
    }
    for r in mock.requests() {
        assert_eq!(
            r.header("x-dashscope-authtype"),
            None,
            "no OAuth header on a key"
        );
    }
}

/// The mock's 429s for keys say when the window resets in each header style an
/// OpenAI-compatible API uses (report-429 learns them; here the mock is checked against the
/// clock).
#[test]
fn the_mock_says_when_a_key_window_resets_in_each_header_style() {
    let mock = Mock::start();
    let env = Env::with_mock(&mock);
    let styles = [
        (ResetHint::RetryAfter, "retry-after"),
        (ResetHint::ResetRequests, "x-ratelimit-reset-requests"),
        (ResetHint::ResetTokens, "x-ratelimit-reset-tokens"),
        (ResetHint::ResetEpochSeconds, "x-ratelimit-reset"),
        (ResetHint::ResetEpochMs, "x-ratelimit-reset"),
        (ResetHint::None, ""),
    ];
    for (i, (hint, name)) in styles.iter().enumerate() {
        let key = format!("sk-mock-style-{i}");
        mock.add_key(
            &key,
            KeySpec {
                quota: Some(1),
                window: Duration::from_secs(390),
                hint: *hint,
                quota_body: false,
            },
        );
        let hfile = env.root.join(format!("h{i}"));
        util::write_private(&hfile, format!("Authorization: Bearer {key}\n").as_bytes());
        let send = format!(
            "curl -sS -o /dev/null -D - -w 'status=%{{http_code}}\\n' -H @'{}' -d '{{}}' {}/chat/completions",
            hfile.display(),
            api(&mock)
        );
        assert!(text(&sh(&env, &send).stdout).contains("status=200"));
        let head = text(&sh(&env, &send).stdout).to_ascii_lowercase();
        assert!(head.contains("status=429"), "{head}");
        let value = head
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::trim)
            .unwrap_or_default()
            .to_string();
        let now_s = util::now_ms() / 1000;
        match hint {
            ResetHint::RetryAfter => {
                let v: i64 = value.parse().unwrap_or(0);
                assert!((385..=390).contains(&v), "{name}: {value}");
            }
            ResetHint::ResetRequests | ResetHint::ResetTokens => {
                assert!(
                    value.starts_with("6m") && value.ends_with('s'),
                    "{name}: {value}"
                )
            }
            ResetHint::ResetEpochSeconds => {
                let v: i64 = value.parse().unwrap_or(0);
                assert!((now_s + 380..=now_s + 391).contains(&v), "{name}: {value}");
            }
            ResetHint::ResetEpochMs => {
                let v: i64 = value.parse().unwrap_or(0) / 1000;
                assert!((now_s + 380..=now_s + 391).contains(&v), "{name}: {value}");
            }
            ResetHint::None => {
                for h in ["retry-after", "x-ratelimit-reset"] {
                    assert!(!head.contains(h), "{head}");
                }
            }
        }
    }
    assert_eq!(
        crate::util::mock::go_duration(Duration::from_secs(360)),
        "6m0s"
    );
    assert_eq!(
        crate::util::mock::go_duration(Duration::from_secs(3723)),
        "1h2m3s"
    );
    assert_eq!(
        crate::util::mock::go_duration(Duration::from_millis(250)),
        "250ms"
    );
}

/// The Anthropic-style endpoint (for Claude Code's apiKeyHelper): the key from `token` in
/// `x-api-key`, a message or its event stream; a refused key is an `authentication_error`.
#[test]
fn the_mock_serves_anthropic_messages_to_a_key() {
    let mock = Mock::start();
    mock.add_key(K1, KeySpec::default());
    let env = Env::with_mock(&mock);
    add_key(&env, K1, &["--base-url", &mock.base_url()], 0);
    let hfile = env.root.join("h");
    let send = |extra: &str| {
        text(
            &sh(
                &env,
                &format!(
                    "printf 'x-api-key: %s\\n' \"$('{}' token)\" > '{}' && curl -sS -H @'{}' -H 'anthropic-version: 2023-06-01' -d '{{\"model\":\"qwen3-coder-plus\",\"max_tokens\":8,\"messages\":[]{extra}}}' {}/v1/messages",
                    util::BIN,
                    hfile.display(),
                    hfile.display(),
                    mock.base_url()
                ),
            )
            .stdout,
        )
    };
    let v: Value = serde_json::from_str(&send("")).expect("json");
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], "hello from account 1");
    let stream = send(",\"stream\":true");
    for e in [
        "event: message_start",
        "event: content_block_delta",
        "event: message_stop",
    ] {
        assert!(stream.contains(e), "{stream}");
    }
    mock.revoke_key(K1);
    let v: Value = serde_json::from_str(&send("")).expect("json");
    assert_eq!(v["error"]["type"], "authentication_error");
    assert_eq!(mock.key_ok(K1), 2);
}

/// On a terminal the key is asked with echo off: it never shows on the screen, and Ctrl-C at
/// the prompt ends qwen-cred with echo back on and nothing stored.
#[test]
fn the_prompt_does_not_echo_and_ctrl_c_restores_the_terminal() {
    let env = Env::new();
    // The shell traps Ctrl-C (so it lives on to print the status); qwen-cred, its child,
    // gets the default SIGINT.
    let script = format!(
        "'{bin}' add-key --label typed; echo \"first: $?\"; trap 'echo trapped' INT; '{bin}' add-key; echo \"second: $?\"; stty -a | tr ' ;' '\\n\\n' | grep -x -e echo -e -echo | sed 's/^/tty: /'; sleep 60",
        bin = util::BIN
    );
    let Some(t) = Tmux::start(&env, &script) else {
        return;
    };
    t.wait_for("API key (not shown): ", 30);
    t.keys(&[K1, "Enter"]);
    let screen = t.wait_for("first: ", 30);
    no_key("the screen", &screen);
    assert!(screen.contains("first: 0"), "{}", hide(&screen));
    assert!(
        screen.contains("added key account 1 (typed (key "),
        "{}",
        hide(&screen)
    );
    same!(env.read_store()["accounts"][0]["access_token"], K1);

    let end = std::time::Instant::now() + Duration::from_secs(30);
    while t
        .wait_for("first: ", 1)
        .matches("API key (not shown)")
        .count()
        < 2
    {
        assert!(std::time::Instant::now() < end, "no second prompt");
        std::thread::sleep(Duration::from_millis(100));
    }
    t.keys(&["sk-half-typed"]);
    t.keys(&["C-c"]);
    let screen = t.wait_for("tty: ", 30);
    assert!(
        screen.contains("second: 130"),
        "ended by SIGINT: {}",
        hide(&screen)
    );
    assert!(
        screen.contains("tty: echo"),
        "echo is back on: {}",
        hide(&screen)
    );
    assert!(!screen.contains("sk-half-typed"), "{}", hide(&screen));
    assert_eq!(
        env.read_store()["accounts"].as_array().map(Vec::len),
        Some(1)
    );
}

/// Under `strace -f`: no key in the argv or environment of any process qwen-cred or the
/// wrapper starts (curl included), nor in stderr or `list`, across add-key, token in every
/// format, report-429, refresh and the wrapper loop.
#[test]
fn no_key_in_argv_environment_stderr_or_list() {
    let Some(strace) = program("QWEN_CRED_TEST_STRACE", "strace") else {
        return;
    };
    let mock = Mock::start();
    mock.add_key(
        K1,
        KeySpec {
            quota: Some(1),
            ..KeySpec::default()
        },
    );
    mock.add_key(K2, KeySpec::default());
    let mut env = Env::with_mock(&mock);
    env.set("QWEN_CRED_BIN", util::BIN);
    env.set("QWEN_CRED_LOG", "debug");
    let traces = env.root.join("traces");
    std::fs::create_dir(&traces).expect("mkdir");
    let mut n = 0;
    let mut traced = |args: &[&str], input: &str| -> Output {
        n += 1;
        let mut c = env.command(&strace);
        c.args([
            "-f",
            "-qq",
            "-v",
            "-s",
            "100000",
            "-e",
            "trace=execve",
            "-o",
        ])
        .arg(traces.join(format!("{n}.log")))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c.spawn().expect("strace");
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(input.as_bytes());
        }
        let o = child.wait_with_output().expect("wait");
        no_key("stderr", &text(&o.stderr));
        o
    };
    let base = api(&mock);
    for k in [K1, K2] {
        let o = traced(&[util::BIN, "add-key", "--check", "--base-url", &base], k);
        assert!(o.status.success(), "{}", hide(&text(&o.stderr)));
    }
    for f in ["raw", "json", "env", "header"] {
        assert!(traced(&[util::BIN, "token", "--format", f], "")
            .status
            .success());
    }
    let curl = format!(
        "'{}/scripts/qwen-curl' -d '{{}}' {base}/chat/completions",
        env!("CARGO_MANIFEST_DIR")
    );
    for _ in 0..3 {
        let o = traced(&["sh", "-c", &curl], "");
        assert!(o.status.success(), "{}", hide(&text(&o.stderr)));
    }
    assert!(traced(&[util::BIN, "refresh", "--all"], "")
        .status
        .success());
    let list = traced(&[util::BIN, "list"], "");
    no_key("list", &text(&list.stdout));
    let list = traced(&[util::BIN, "list", "--json"], "");
    no_key("list --json", &text(&list.stdout));
    let mut execs = String::new();
    for e in std::fs::read_dir(&traces).expect("traces").flatten() {
        execs.push_str(&std::fs::read_to_string(e.path()).expect("trace"));
    }
    assert!(execs.contains("curl"), "the wrapper's curl was traced");
    assert!(
        execs.contains("QWEN_CRED_CONFIG_DIR="),
        "environments are recorded too"
    );
    no_key("an argv or environment", &execs);
    assert_eq!(mock.key_ok(K1) + mock.key_ok(K2), 3, "the loop was served");
}
