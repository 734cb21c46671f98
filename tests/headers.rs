//! `report-429 --headers`: the rate-limit headers of a 429 response, their precedence, and an
//! account's quota window, through the real binary; `scripts/qwen-curl` passing the headers
//! of real responses from the mock.

use crate::util::mock::{ApiReply, Mock};
use crate::util::{self, account, store_with, text, Env};
use serde_json::{json, Value};
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

const QUOTA_BODY: &str = r#"{"error":{"code":"insufficient_quota","message":"You exceeded your current quota.","type":"insufficient_quota"}}"#;
const H: i64 = 3_600_000;

/// Three accounts, so that two cooling down leave one usable and no report waits.
fn pool() -> Env {
    let env = Env::new();
    env.write_store(&store_with(3));
    env
}

/// A file in the test's tree holding `content`; its path.
fn file(env: &Env, name: &str, content: &str) -> String {
    let p = env.root.join(name);
    std::fs::write(&p, content).expect("write");
    p.to_string_lossy().into_owned()
}

/// Account `i`'s cooldown: (ms from `before`, reason).
fn cooldown(env: &Env, i: usize, before: i64) -> (i64, Value) {
    let s = env.read_store();
    let a = &s["accounts"][i];
    let until = a["rate_limit_resets_at"].as_i64().unwrap_or(i64::MIN);
    (until.saturating_sub(before), a["rate_limit_reason"].clone())
}

fn assert_near(got: i64, want: i64, what: &str) {
    assert!((got - want).abs() < 10_000, "{what}: {got} ms, want {want}");
}

fn http_date(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms / 1000).expect("time");
    let f = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.format(&f).expect("format")
}

/// `report-429 args...` with `input` on stdin; (exit code, stderr).
fn with_stdin(env: &Env, args: &[&str], input: &[u8]) -> (Option<i32>, String) {
    let mut child = env
        .cmd(args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write");
    let o = child.wait_with_output().expect("wait");
    (o.status.code(), text(&o.stderr))
}

#[test]
fn each_header_style_cools_the_account_until_its_reset() {
    let now = util::now_ms();
    let styles: Vec<(&str, String, i64)> = vec![
        ("delta", "Retry-After: 120".into(), 120_000),
        ("date", format!("Retry-After: {}", http_date(now + 600_000)), 600_000),
        (
            "openai",
            "x-ratelimit-limit-requests: 60\r\nx-ratelimit-remaining-requests: 59\r\nx-ratelimit-reset-requests: 1s\r\nx-ratelimit-reset-tokens: 6m0s".into(),
            360_000,
        ),
        ("fractions", "X-RateLimit-Reset-Requests: 1h2m3.5s".into(), 3_723_500),
        ("unix-s", format!("X-RateLimit-Reset: {}", now / 1000 + 900), 900_000),
        ("unix-ms", format!("x-ratelimit-reset: {}", now + 1_200_000), 1_200_000),
        ("delta-s", "X-RateLimit-Reset: 45".into(), 45_000),
    ];
    for (name, headers, want) in styles {
        let env = pool();
        let block = format!(
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n{headers}\r\n\r\n"
        );
        let path = file(&env, "headers.txt", &block);
        let before = util::now_ms();
        env.expect(&["report-429", "--headers", &path], 0);
        let (ms, reason) = cooldown(&env, 0, before);
        assert_near(ms, want, name);
        assert_eq!(reason, "retry-after", "{name}");
        assert_eq!(env.read_store()["current_account_id"], "2", "{name}");
    }
}

#[test]
fn retry_after_wins_then_the_latest_reset_and_the_flag_wins_over_both() {
    let env = pool();
    let path = file(
        &env,
        "h",
        "HTTP/2 429\nx-ratelimit-reset-tokens: 30m\nretry-after: 60\nX-RateLimit-Reset: 7200\n\n",
    );
    let before = util::now_ms();
    env.expect(&["report-429", "--account", "1", "--headers", &path], 0);
    assert_near(cooldown(&env, 0, before).0, 60_000, "Retry-After first");

    let path = file(
        &env,
        "h2",
        "HTTP/2 429\nx-ratelimit-reset-tokens: 30m\nX-RateLimit-Reset: 7200\n\n",
    );
    let before = util::now_ms();
    env.expect(&["report-429", "--account", "2", "--headers", &path], 0);
    assert_near(cooldown(&env, 1, before).0, 7_200_000, "the latest reset");

    // --retry-after is the caller's own reading of the headers: it wins.
    let env = pool();
    let path = file(
        &env,
        "h",
        "Retry-After: 60\r\nx-ratelimit-reset-tokens: 30m\r\n",
    );
    let before = util::now_ms();
    env.expect(
        &["report-429", "--retry-after", "300", "--headers", &path],
        0,
    );
    assert_near(cooldown(&env, 0, before).0, 300_000, "--retry-after");
}

#[test]
fn a_short_reset_is_slept_on_the_same_account_to_the_millisecond() {
    let env = pool();
    let path = file(
        &env,
        "h",
        "HTTP/1.1 429\r\nx-ratelimit-reset-requests: 600ms\r\n\r\n",
    );
    let start = Instant::now();
    env.expect(&["report-429", "--headers", &path], 0);
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(600), "slept {took:?}");
    let s = env.read_store();
    assert!(
        s["accounts"][0]["rate_limit_resets_at"].is_null(),
        "nothing marked"
    );
    assert_eq!(s["current_account_id"], "1");
    let (out, _) = env.expect(&["report-429", "--headers", &path, "--json"], 0);
    let d: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(
        (d["decision"].as_str(), d["wait_ms"].as_i64()),
        (Some("retry_same"), Some(600))
    );
}

#[test]
fn unreadable_headers_are_named_and_the_backoff_ladder_applies() {
    let env = pool();
    let path = file(
        &env,
        "h",
        "HTTP/1.1 429\r\nRetry-After: soon\r\nx-ratelimit-reset-tokens: 6 minutes\r\nSet-Cookie: a=b\r\n\r\n",
    );
    let before = util::now_ms();
    let (_, err) = env.expect(&["report-429", "--headers", &path], 0);
    assert!(
        err.contains("ignoring the Retry-After header \"soon\"")
            && err.contains("ignoring the x-ratelimit-reset-tokens header \"6 minutes\""),
        "{err}"
    );
    assert!(!err.contains("a=b"), "{err}");
    let (ms, reason) = cooldown(&env, 0, before);
    assert_eq!(reason, "backoff");
    assert_near(ms, 1000, "the first step");

    // No rate-limit header at all: the ladder, quietly.
    let path = file(&env, "h2", "HTTP/1.1 429\r\nContent-Length: 2\r\n\r\n");
    let (_, err) = env.expect(&["report-429", "--account", "2", "--headers", &path], 0);
    assert_eq!(err, "");
    assert_eq!(cooldown(&env, 1, before).1, "backoff");

    // A header file that cannot be read is exit 6, naming it.
    let missing = env.root.join("nope.txt");
    let (_, err) = env.expect(&["report-429", "--headers", &missing.to_string_lossy()], 6);
    assert!(
        err.contains("response headers") && err.contains("nope.txt"),
        "{err}"
    );
}

#[test]
fn huge_hints_are_capped_at_seven_days() {
    for headers in [
        format!("Retry-After: {}", "9".repeat(5000)),
        format!("x-ratelimit-reset-tokens: {}h", "9".repeat(5000)),
        "X-RateLimit-Reset: 99999999999999999999".to_string(),
        format!("X-RateLimit-Reset: 10000000{}", "0".repeat(60_000)),
    ] {
        let env = pool();
        let path = file(&env, "h", &format!("HTTP/1.1 429\r\n{headers}\r\n\r\n"));
        let before = util::now_ms();
        env.expect(&["report-429", "--headers", &path], 0);
        assert_near(cooldown(&env, 0, before).0, 7 * 24 * H, &headers[..30]);
    }
}

#[test]
fn headers_and_body_share_stdin_as_curl_i_prints_them() {
    let env = pool();
    let response = format!(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many Requests\r\nx-ratelimit-reset-tokens: 20m\r\n\r\n{QUOTA_BODY}"
    );
    // A quota body: the daily reset or the hint, whichever is later (at least 20 minutes).
    let before = util::now_ms();
    let (code, err) = with_stdin(
        &env,
        &["report-429", "--headers", "-", "--body", "-"],
        response.as_bytes(),
    );
    assert_eq!(code, Some(0), "{err}");
    let (ms, reason) = cooldown(&env, 0, before);
    assert_eq!(reason, "quota");
    assert!(ms >= 20 * 60_000 - 1000, "{ms}");

    // Without the body's quota text the hint alone decides; the same file can serve both.
    let path = file(
        &env,
        "response.txt",
        "HTTP/1.1 429\r\nRetry-After: 90\r\n\r\n{\"error\":\"Retry-After: 5, slow down\"}",
    );
    let before = util::now_ms();
    env.expect(
        &[
            "report-429",
            "--account",
            "2",
            "--headers",
            &path,
            "--body",
            &path,
        ],
        0,
    );
    let (ms, reason) = cooldown(&env, 1, before);
    assert_eq!(reason, "retry-after");
    assert_near(ms, 90_000, "the header, not the body's text");

    // Headers alone on stdin.
    let env = pool();
    let before = util::now_ms();
    let (code, err) = with_stdin(
        &env,
        &["report-429", "--headers", "-"],
        b"HTTP/1.1 429\nRetry-After: 75\n",
    );
    assert_eq!(code, Some(0), "{err}");
    assert_near(cooldown(&env, 0, before).0, 75_000, "stdin");
}

/// Three accounts; account 1 declares a quota window of `window_ms`.
fn windowed(window_ms: i64) -> Env {
    let env = Env::new();
    let mut s = store_with(3);
    s["accounts"][0]["quota_window_ms"] = json!(window_ms);
    env.write_store(&s);
    env
}

#[test]
fn a_quota_window_cools_a_quota_429_until_the_window_can_have_reset() {
    // No hint: the whole window, whatever the daily reset (here 10 minutes, always sooner
    // than the next daily reset, 11 to 13 hours away, and 30 hours, always later).
    let (offset, next_reset) = util::noon_reset();
    for window in [10 * 60_000, 30 * H] {
        let mut env = windowed(window);
        env.set("QWEN_CRED_QUOTA_RESET_UTC_OFFSET", &offset);
        let body = file(&env, "body.json", QUOTA_BODY);
        let before = util::now_ms();
        env.expect(&["report-429", "--body", &body], 0);
        let (ms, reason) = cooldown(&env, 0, before);
        assert_eq!(reason, "quota");
        assert_near(ms, window, "the window");
        let s = env.read_store();
        assert_eq!(s["accounts"][0]["quota_window_ms"], window, "kept");
        assert_eq!(s["current_account_id"], "2");
    }
    // A hint says when exactly: shorter or longer than the window.
    for (headers, want) in [
        ("x-ratelimit-reset-requests: 1h30m", 90 * 60_000),
        ("Retry-After: 259200", 72 * H),
    ] {
        let env = windowed(5 * H);
        let body = file(&env, "body.json", QUOTA_BODY);
        let path = file(&env, "h", &format!("HTTP/1.1 429\r\n{headers}\r\n\r\n"));
        let before = util::now_ms();
        env.expect(&["report-429", "--headers", &path, "--body", &body], 0);
        let (ms, reason) = cooldown(&env, 0, before);
        assert_eq!(reason, "quota");
        assert_near(ms, want, headers);
    }
    // An account without a window still waits for the daily reset.
    let mut env = windowed(5 * H);
    env.set("QWEN_CRED_QUOTA_RESET_UTC_OFFSET", &offset);
    let body = file(&env, "body.json", QUOTA_BODY);
    env.expect(&["report-429", "--account", "2", "--body", &body], 0);
    assert_eq!(
        env.read_store()["accounts"][1]["rate_limit_resets_at"],
        next_reset
    );
    assert!(env.read_store()["accounts"][1]
        .get("quota_window_ms")
        .is_none());
}

#[test]
fn a_bad_quota_window_is_a_file_error_naming_the_field() {
    let env = windowed(0);
    let before = std::fs::read(env.store_path()).expect("read");
    let (_, err) = env.expect(&["report-429"], 6);
    assert!(
        err.contains("accounts[0].quota_window_ms: expected a number of milliseconds"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(env.store_path()).expect("read"),
        before,
        "not rewritten"
    );
}

/// `scripts/qwen-curl` against the mock: one account's 429 carries `headers`, the other serves.
fn qwen_curl_with(headers: Vec<(String, String)>, body: &str) -> (Env, Mock, i64) {
    let mock = Mock::start();
    let mut env = Env::with_mock(&mock);
    env.set("QWEN_CRED_BIN", util::BIN);
    env.set("QWEN_CRED_MAX_RATE_LIMIT_WAIT_SECONDS", "0");
    // Its own temp dir: rotation.rs checks that the shared one holds no qwen-curl leftovers.
    let tmp = env.root.join("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp");
    env.set("TMPDIR", &tmp.to_string_lossy());
    let mut accounts = Vec::new();
    for i in 1..=2 {
        let (at, rt) = (format!("at-{i}"), format!("rt-{i}"));
        let id = mock.add_account(&rt, &at);
        let mut a = account(&i.to_string(), &at, &rt, 7200);
        a["resource_url"] = json!(mock.base_url());
        if i == 1 {
            a["quota_window_ms"] = json!(5 * H);
            mock.api_script_for(
                id,
                ApiReply::Status {
                    status: 429,
                    headers: headers.clone(),
                    body: body.into(),
                },
            );
        }
        accounts.push(a);
    }
    env.write_store(&json!({"accounts": accounts, "current_account_id": "1"}));
    let script = format!(
        "'{}/scripts/qwen-curl' -H 'Content-Type: application/json' -d '{{\"model\":\"coder-model\",\"messages\":[]}}' {}/v1/chat/completions",
        env!("CARGO_MANIFEST_DIR"),
        mock.base_url()
    );
    let before = util::now_ms();
    let o = env
        .command("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("sh");
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("hello from account"),
        "{}",
        text(&o.stdout)
    );
    let left = std::fs::read_dir(&tmp).expect("tmp").count();
    assert_eq!(left, 0, "qwen-curl left its temp dir behind");
    (env, mock, before)
}

#[test]
fn qwen_curl_passes_each_header_style() {
    let h = |k: &str, v: &str| (k.to_string(), v.to_string());
    let now = util::now_ms();
    // (the 429's headers, its body, the cooldown wanted, its reason)
    type Case<'a> = (Vec<(String, String)>, &'a str, i64, &'a str);
    let cases: Vec<Case> = vec![
        (vec![h("Retry-After", "120")], "{}", 120_000, "retry-after"),
        (
            vec![h("Retry-After", &http_date(now + 600_000))],
            "{}",
            600_000,
            "retry-after",
        ),
        (
            vec![
                h("x-ratelimit-reset-requests", "2s"),
                h("x-ratelimit-reset-tokens", "6m0s"),
            ],
            "{}",
            360_000,
            "retry-after",
        ),
        (
            vec![h("X-RateLimit-Reset", &(now + 900_000).to_string())],
            "{}",
            900_000,
            "retry-after",
        ),
        // A quota 429 on a key with a 5-hour window: the reset header says when.
        (
            vec![h("X-RateLimit-Reset", &(now / 1000 + 3600).to_string())],
            QUOTA_BODY,
            3_600_000,
            "quota",
        ),
        // ...and without one, the window.
        (vec![], QUOTA_BODY, 5 * H, "quota"),
    ];
    for (headers, body, want, reason) in cases {
        let what = format!("{headers:?} {}", &body[..2]);
        let (env, mock, before) = qwen_curl_with(headers, body);
        let (ms, got) = cooldown(&env, 0, before);
        assert_eq!(got, reason, "{what}");
        assert_near(ms, want, &what);
        let bearers: Vec<String> = mock
            .requests()
            .iter()
            .filter(|r| r.path == "/v1/chat/completions")
            .map(|r| r.header("authorization").unwrap_or_default().to_string())
            .collect();
        assert_eq!(bearers, ["Bearer at-1", "Bearer at-2"], "{what}");
    }
}
