//! `token` and `report-429`: strategies, rate-limit bookkeeping, waiting, output formats, and
//! the wrapper loop against the mock API.

use crate::util::mock::Mock;
use crate::util::{self, account, store_with, text, Env};
use serde_json::{json, Value};
use std::process::Stdio;

fn tokens(env: &Env, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| env.expect(&["token"], 0).0.trim().to_string())
        .collect()
}

fn with_strategy(strategy: &str) -> Env {
    let mut env = Env::new();
    env.set("QWEN_CRED_ACCOUNT_SELECTION_STRATEGY", strategy);
    env.write_store(&store_with(3));
    env
}

#[test]
fn sticky_stays_until_a_long_429_then_moves() {
    let env = with_strategy("sticky");
    assert_eq!(tokens(&env, 3), ["at-1", "at-1", "at-1"]);
    env.expect(&["report-429", "--retry-after", "120"], 0);
    let s = env.read_store();
    assert_eq!(s["current_account_id"], "2");
    assert_eq!(s["accounts"][0]["rate_limit_reason"], "retry-after");
    let until = s["accounts"][0]["rate_limit_resets_at"]
        .as_i64()
        .unwrap_or(0);
    assert!((until - util::now_ms() - 120_000).abs() < 10_000, "{until}");
    assert_eq!(tokens(&env, 2), ["at-2", "at-2"]);
    assert_eq!(env.read_store()["accounts"][0]["total_requests"], 3);
}

#[test]
fn round_robin_cycles_and_skips_cooling_accounts() {
    let env = with_strategy("round-robin");
    assert_eq!(
        tokens(&env, 6),
        ["at-2", "at-3", "at-1", "at-2", "at-3", "at-1"]
    );
    env.expect(&["report-429", "--account", "3", "--retry-after", "600"], 0);
    assert_eq!(tokens(&env, 4), ["at-2", "at-1", "at-2", "at-1"]);
}

#[test]
fn least_used_balances() {
    let env = with_strategy("least-used");
    let mut s = store_with(3);
    for (i, n) in [5, 0, 3].iter().enumerate() {
        s["accounts"][i]["total_requests"] = json!(n);
    }
    env.write_store(&s);
    assert_eq!(tokens(&env, 4), ["at-2", "at-2", "at-2", "at-2"]);
    // 5, 4, 3: now account 3 is the least used, then ties go to store order.
    assert_eq!(tokens(&env, 4), ["at-3", "at-2", "at-3", "at-1"]);
    let counts: Vec<i64> = env.read_store()["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .map(|a| a["total_requests"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(counts, [6, 5, 5]);
}

#[test]
fn hybrid_moves_after_n_tokens() {
    let mut env = with_strategy("hybrid");
    env.set("QWEN_CRED_HYBRID_ROTATION_REQUESTS", "2");
    assert_eq!(
        tokens(&env, 7),
        ["at-1", "at-1", "at-2", "at-2", "at-3", "at-3", "at-1"]
    );
}

#[test]
fn a_pinned_account_is_served_even_while_cooling_but_never_when_revoked() {
    let env = with_strategy("sticky");
    env.expect(&["report-429", "--account", "2", "--retry-after", "600"], 0);
    assert_eq!(
        env.read_store()["current_account_id"],
        "1",
        "a report for another account moves nothing"
    );
    let (out, err) = env.expect(&["token", "--account", "2"], 0);
    assert_eq!(out.trim(), "at-2");
    assert!(err.contains("cooling down"), "{err}");
    assert_eq!(
        env.read_store()["current_account_id"],
        "1",
        "pinning does not move current"
    );
    let mut s = env.read_store();
    s["accounts"][2]["status"] = json!("revoked");
    env.write_store(&s);
    let (_, err) = env.expect(&["token", "--account", "user3@example.com"], 3);
    assert!(err.contains("revoked: 3"), "{err}");
}

#[test]
fn a_short_retry_after_is_slept_on_the_same_account() {
    let mut env = with_strategy("sticky");
    env.set("QWEN_CRED_RETRY_SAME_ACCOUNT_THRESHOLD_SECONDS", "1");
    let start = std::time::Instant::now();
    env.expect(&["report-429", "--retry-after", "1"], 0);
    assert!(
        start.elapsed() >= std::time::Duration::from_secs(1),
        "slept the Retry-After"
    );
    let s = env.read_store();
    assert_eq!(s["current_account_id"], "1");
    assert!(s["accounts"][0]["rate_limit_resets_at"].is_null());
    assert_eq!(tokens(&env, 1), ["at-1"]);
    // --no-wait does not sleep; a longer value marks the account.
    env.expect(&["report-429", "--retry-after", "1", "--no-wait"], 0);
    env.expect(&["report-429", "--retry-after", "2"], 0);
    assert_eq!(env.read_store()["current_account_id"], "2");
}

#[test]
fn a_quota_body_cools_down_until_the_daily_reset() {
    let mut env = with_strategy("sticky");
    let (offset, next_midnight) = util::noon_reset();
    env.set("QWEN_CRED_QUOTA_RESET_UTC_OFFSET", &offset);
    let body = env.root.join("body.json");
    std::fs::write(&body, r#"{"error":{"code":"insufficient_quota","message":"Free allocated quota exceeded.","type":"insufficient_quota"}}"#).expect("write");
    env.expect(&["report-429", "--body", body.to_str().unwrap_or("")], 0);
    let s = env.read_store();
    assert_eq!(s["accounts"][0]["rate_limit_resets_at"], next_midnight);
    assert_eq!(s["accounts"][0]["rate_limit_reason"], "quota");
    // The body may also come on stdin; 403 text bodies count too.
    let mut c = env.cmd(&["report-429", "--account", "2", "--body", "-"]);
    let mut child = c.stdin(Stdio::piped()).spawn().expect("spawn");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"Free allocated quota exceeded.")
        .expect("write");
    assert!(child.wait().expect("wait").success());
    assert_eq!(
        env.read_store()["accounts"][1]["rate_limit_resets_at"],
        next_midnight
    );
    let (list, _) = env.expect(&["list"], 0);
    assert!(list.contains("(quota)"), "{list}");
}

#[test]
fn no_hint_backoff_doubles_and_caps() {
    let mut env = with_strategy("sticky");
    env.set("QWEN_CRED_EXPONENTIAL_BACKOFF_BASE_MS", "10000");
    env.set("QWEN_CRED_EXPONENTIAL_BACKOFF_MAX_MS", "40000");
    let mut seen = Vec::new();
    for _ in 0..4 {
        let before = util::now_ms();
        env.expect(&["report-429", "--account", "1"], 0);
        let mut s = env.read_store();
        let a = &mut s["accounts"][0];
        let until = a["rate_limit_resets_at"].as_i64().unwrap_or(0);
        seen.push((
            (until - before + 500) / 1000,
            a["consecutive_rate_limits"].clone(),
        ));
        // Step past the 2 s idempotence window by hand (it would take real seconds).
        a["last_rate_limited_at"] = json!(before - 3000);
        env.write_store(&s);
    }
    let secs: Vec<i64> = seen.iter().map(|x| x.0).collect();
    assert_eq!(secs, [10, 20, 40, 40], "{seen:?}");
    assert_eq!(seen[3].1, 4);
}

#[test]
fn invalid_retry_after_is_no_hint_with_a_warning() {
    let env = with_strategy("sticky");
    let (_, err) = env.expect(&["report-429", "--retry-after", "soon"], 0);
    assert!(err.contains("Retry-After") && err.contains("soon"), "{err}");
    assert_eq!(
        env.read_store()["accounts"][0]["rate_limit_reason"],
        "backoff"
    );
}

/// 16 in-flight requests hit the same limit: one backoff step and one rotation.
#[test]
fn sixteen_concurrent_reports_count_once() {
    let env = with_strategy("sticky");
    util::run_all_ok((0..16).map(|_| env.cmd(&["report-429", "--account", "1"])));
    let s = env.read_store();
    assert_eq!(s["accounts"][0]["consecutive_rate_limits"], 1);
    assert_eq!(s["current_account_id"], "2");
    assert!(
        s["accounts"][1]["rate_limit_resets_at"].is_null(),
        "account 2 untouched"
    );
}

fn all_cooling(env: &Env, secs: i64) {
    let mut s = store_with(2);
    for i in 0..2 {
        s["accounts"][i]["rate_limit_resets_at"] =
            json!(util::now_ms() + secs * 1000 + i as i64 * 60_000);
        s["accounts"][i]["rate_limit_reason"] = json!("backoff");
    }
    env.write_store(&s);
}

#[test]
fn all_cooling_waits_within_the_limit_else_exits_4() {
    let mut env = Env::new();
    env.set("QWEN_CRED_MAX_RATE_LIMIT_WAIT_SECONDS", "2");
    all_cooling(&env, 1);
    let (out, err) = env.expect(&["token"], 0);
    assert_eq!(out.trim(), "at-1");
    assert!(err.contains("waiting"), "{err}");

    all_cooling(&env, 600);
    let start = std::time::Instant::now();
    let (out, err) = env.expect(&["token"], 4);
    assert!(out.is_empty());
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "did not wait"
    );
    let until = env.read_store()["accounts"][0]["rate_limit_resets_at"]
        .as_i64()
        .unwrap_or(0);
    let stamp = err
        .split_whitespace()
        .find(|w| w.contains('T') && w.ends_with('Z'))
        .unwrap_or("");
    let parsed = time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
        .expect("an RFC 3339 time");
    assert_eq!(parsed.unix_timestamp(), until / 1000, "{err}");
    assert!(err.contains("(in 6") && err.contains(" s)"), "{err}");

    all_cooling(&env, 1);
    env.expect(&["token", "--no-wait"], 4);
    env.expect(&["report-429", "--account", "1", "--no-wait"], 4);
}

#[test]
fn an_empty_pool_is_exit_3_and_a_qwen_cli_file_is_adopted() {
    let env = Env::new();
    let (_, err) = env.expect(&["token"], 3);
    assert!(err.contains("qwen-cred login"), "{err}");
    env.expect(&["report-429"], 3);
    let creds = json!({"access_token": "at-cli", "refresh_token": "rt-cli", "token_type": "Bearer",
        "resource_url": "portal.qwen.ai", "expiry_date": util::now_ms() + 7_200_000});
    util::write_private(
        &env.qwen_dir().join("oauth_creds.json"),
        creds.to_string().as_bytes(),
    );
    let (out, err) = env.expect(&["token"], 0);
    assert_eq!(out.trim(), "at-cli");
    assert!(err.contains("imported"), "{err}");
    let (_, err) = env.expect(&["token"], 0);
    assert!(err.is_empty(), "said once: {err}");
    assert!(env.read_store()["accounts"][0]["linked_file"].is_string());
}

#[test]
fn output_formats() {
    let env = Env::new();
    env.write_store(&store_with(2));
    let (out, _) = env.expect(&["token", "--format", "json"], 0);
    assert_eq!(out.lines().count(), 1);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["access_token"], "at-1");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["account_id"], "1");
    assert_eq!(v["email"], "user1@example.com");
    assert_eq!(v["base_url"], "https://portal.qwen.ai/v1");
    assert!(v["expiry_date"].is_i64());
    assert!(v["expires_at"].as_str().unwrap_or("").ends_with('Z'));
    assert_eq!(v["headers"]["Authorization"], "Bearer at-1");
    assert_eq!(v["headers"]["X-DashScope-AuthType"], "qwen-oauth");
    assert_eq!(v["headers"]["X-DashScope-CacheControl"], "enable");
    assert!(v["headers"]["User-Agent"]
        .as_str()
        .unwrap_or("")
        .starts_with("qwen-cred/"));
    assert_eq!(
        v["headers"]["X-DashScope-UserAgent"],
        v["headers"]["User-Agent"]
    );

    let (raw, _) = env.expect(&["token"], 0);
    assert_eq!(raw, "at-1\n");

    let script = format!("eval \"$('{}' token --format env)\" && printf '%s|%s|%s' \"$OPENAI_API_KEY\" \"$OPENAI_BASE_URL\" \"$QWEN_CRED_ACCOUNT_ID\"", util::BIN);
    let o = env_sh(&env, &script);
    assert_eq!(
        text(&o.stdout),
        "at-1|https://portal.qwen.ai/v1|1",
        "{}",
        text(&o.stderr)
    );

    let (h, _) = env.expect(&["token", "--format", "header"], 0);
    assert!(h.lines().any(|l| l == "Authorization: Bearer at-1"), "{h}");
    assert!(h.lines().all(|l| l.contains(": ")), "{h}");
    env.expect(&["token", "--format", "yaml"], 2);
}

/// Runs `sh -c script` with the environment of `env`.
fn env_sh(env: &Env, script: &str) -> std::process::Output {
    env.command("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("sh")
}

#[test]
fn the_header_format_works_with_curl_against_the_api() {
    let mock = Mock::start();
    let env = Env::with_mock(&mock);
    mock.add_account("rt-h", "at-h");
    let mut a = account("1", "at-h", "rt-h", 7200);
    a["resource_url"] = json!(mock.base_url());
    env.write_store(&json!({"accounts": [a]}));
    let hfile = env.root.join("h");
    let script = format!(
        "'{}' token --format header > '{}' && curl -sS -f -H @'{}' -H 'Content-Type: application/json' -d '{{\"model\":\"coder-model\",\"messages\":[]}}' {}/v1/chat/completions",
        util::BIN, hfile.display(), hfile.display(), mock.base_url()
    );
    let o = env_sh(&env, &script);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("chat.completion"));
    let r = mock
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/chat/completions")
        .expect("api request");
    assert_eq!(r.header("authorization"), Some("Bearer at-h"));
    assert_eq!(r.header("x-dashscope-authtype"), Some("qwen-oauth"));
}

/// Three accounts with a quota of Q each serve 3·Q requests through the wrapper loop.
#[test]
fn the_wrapper_loop_serves_every_accounts_quota() {
    const Q: u32 = 4;
    let mock = Mock::start();
    mock.set_quota_per_account(Some(Q));
    let mut env = Env::with_mock(&mock);
    env.set("QWEN_CRED_MAX_RATE_LIMIT_WAIT_SECONDS", "0");
    env.set("QWEN_CRED_BIN", util::BIN);
    let mut accounts = Vec::new();
    for i in 1..=3 {
        let (at, rt) = (format!("at-q{i}"), format!("rt-q{i}"));
        mock.add_account(&rt, &at);
        let mut a = account(&i.to_string(), &at, &rt, 7200);
        a["resource_url"] = json!(mock.base_url());
        accounts.push(a);
    }
    env.write_store(&json!({"accounts": accounts, "current_account_id": "1"}));
    let curl = format!(
        "'{}/scripts/qwen-curl' -d '{{\"model\":\"coder-model\",\"messages\":[]}}' {}/v1/chat/completions",
        env!("CARGO_MANIFEST_DIR"),
        mock.base_url()
    );
    let mut served = 0;
    let code = loop {
        let o = env_sh(&env, &curl);
        match o.status.code() {
            Some(0) => served += 1,
            other => break other,
        }
        assert!(served <= 3 * Q, "more than the quota");
    };
    assert_eq!(served, 3 * Q);
    assert_eq!(code, Some(4));
    // Every request says it is JSON and carries the headers of `token --format header`
    // (one list, qwen-cred's, not a copy in the script).
    let chats: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .collect();
    assert!(!chats.is_empty());
    for r in &chats {
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r
            .header("user-agent")
            .is_some_and(|v| v.starts_with("qwen-cred/")));
        assert_eq!(r.header("x-dashscope-authtype"), Some("qwen-oauth"));
    }
    let s = env.read_store();
    for a in s["accounts"].as_array().expect("accounts") {
        assert_eq!(a["rate_limit_reason"], "quota");
    }
    // No header file is left behind.
    let leftovers = std::fs::read_dir(std::env::temp_dir())
        .expect("tmp")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("qwen-curl."))
        .count();
    assert_eq!(leftovers, 0);
}

/// Another account is due: `token` starts a detached `refresh --due` at most once per check
/// interval, and `$(qwen-cred token)` returns without waiting for it.
#[test]
fn due_accounts_are_refreshed_in_a_detached_child() {
    let mock = Mock::start();
    let mut env = Env::with_mock(&mock);
    env.set("QWEN_CRED_TOKEN_REFRESH_RETRY_DELAY_MS", "0");
    mock.add_account("rt-1", "at-1");
    mock.add_account("rt-2", "at-2");
    env.write_store(&json!({"accounts": [account("1", "at-1", "rt-1", 7200), account("2", "at-2", "rt-2", 600)], "current_account_id": "1"}));
    mock.hold_refresh("rt-2");
    let o = env_sh(
        &env,
        &format!("t=$('{}' token) && printf '%s' \"$t\"", util::BIN),
    );
    assert_eq!(text(&o.stdout), "at-1", "{}", text(&o.stderr));
    assert!(
        mock.wait_until(std::time::Duration::from_secs(20), |s| s.started("rt-2")
            == 1),
        "the child refreshes account 2"
    );
    assert_eq!(
        mock.state(|s| s.finished("rt-2")),
        0,
        "the parent returned while the child's refresh was held"
    );
    // Within the check interval no second child starts.
    env.expect(&["token"], 0);
    mock.release_refresh("rt-2");
    assert!(
        mock.wait_until(std::time::Duration::from_secs(20), |s| s.finished("rt-2")
            == 1)
    );
    assert!(
        util::wait_for(20, || env.read_store()["accounts"][1]["access_token"]
            != "at-2"),
        "the child stored the new token"
    );
    assert_eq!(mock.count_refreshes(), 1);
    assert!(env.read_store()["last_background_refresh_at"].is_i64());
}
