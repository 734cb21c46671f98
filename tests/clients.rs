//! Other clients that take their key from qwen-cred (README, "Using it with other tools"). The
//! real Codex CLI (`$QWEN_CRED_TEST_CODEX`, else `codex` on PATH; `scripts/test` installs the
//! pinned npm package) runs `codex exec` with the README's `config.toml`, its base URL pointed
//! at the mock on 127.0.0.1, in a temp HOME. Without Codex a test fails naming the fix, unless
//! `codex` is named in `QWEN_CRED_TEST_SKIP` (util::program). Crush cannot be installed here
//! (README), so it has no test.

use crate::util::mock::{ApiReply, Mock, Request};
use crate::util::{self, account, program, store_with, text, Env, BIN};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Bounds every Codex run; a hung run is killed and the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// The base URL of the README's example, replaced by the mock's.
const README_BASE_URL: &str = "https://portal.qwen.ai/v1";

/// The ```toml block of the README's "Codex CLI" section, base URL pointed at `mock`.
fn readme_codex_config(mock: &Mock) -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let section = &readme[readme
        .find("\n### Codex CLI\n")
        .expect("README: Codex CLI section")..];
    let start = section.find("```toml\n").expect("README: Codex toml block") + "```toml\n".len();
    let block = &section[start..];
    let block = &block[..block.find("```").expect("README: end of toml block")];
    assert!(block.contains(README_BASE_URL), "{block}");
    block.replace(README_BASE_URL, &format!("{}/v1", mock.base_url()))
}

/// An environment with Codex's home holding the README's configuration.
fn codex_env(mock: &Mock) -> Env {
    let env = Env::with_mock(mock);
    let codex_home = env.root.join("home/.codex");
    std::fs::create_dir_all(&codex_home).expect("create ~/.codex");
    std::fs::create_dir_all(env.root.join("work")).expect("create work dir");
    std::fs::write(codex_home.join("config.toml"), readme_codex_config(mock))
        .expect("write config.toml");
    env
}

/// `codex exec PROMPT` in `env`, with qwen-cred first on PATH (the README's `command =
/// "qwen-cred"` is looked up there). Proxies point at a closed loopback port, so what Codex
/// fetches on its own (plugin catalogues, update checks) fails at once instead of leaving the
/// machine; the mock on 127.0.0.1 is exempt. (exit code, stdout, stderr).
fn codex_exec(env: &Env, codex: &Path, prompt: &str) -> (Option<i32>, String, String) {
    let bin_dir = Path::new(BIN).parent().expect("binary dir");
    let mut path = vec![bin_dir.to_path_buf()];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let mut cmd = env.command(codex);
    cmd.env("PATH", std::env::join_paths(path).expect("PATH"))
        .env("NO_COLOR", "1")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("ALL_PROXY", "http://127.0.0.1:9")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .current_dir(env.root.join("work"))
        .args(["exec", "--skip-git-repo-check", prompt]);
    run_limited(env, cmd, "codex")
}

/// Runs to completion within [`RUN_LIMIT`]; (exit code, stdout, stderr).
fn run_limited(env: &Env, mut cmd: Command, what: &str) -> util::Ran {
    cmd.stdin(Stdio::null());
    util::run_within(&env.root, cmd, what, RUN_LIMIT)
}

/// The requests Codex sent to the Responses API, in order.
fn responses_requests(mock: &Mock) -> Vec<Request> {
    mock.requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/responses")
        .collect()
}

/// The headers `qwen-cred token --format json` tells a client to send, less Authorization.
fn qwen_cred_headers(env: &Env) -> Vec<(String, String)> {
    let (out, _) = env.expect(&["token", "--format", "json"], 0);
    let v: Value = serde_json::from_str(&out).expect("token json");
    let headers = v["headers"].as_object().expect("headers object");
    let listed: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("authorization"))
        .map(|(k, v)| (k.clone(), v.as_str().expect("header value").to_string()))
        .collect();
    assert!(listed.len() >= 4, "{v}");
    listed
}

fn bearer(r: &Request) -> &str {
    r.header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
}

/// The README's Codex configuration, end to end: Codex gets its token from `qwen-cred token`
/// and sends it with the headers the service wants, to `/v1/responses`.
#[test]
fn codex_sends_a_pool_token_and_the_dashscope_headers() {
    let Some(codex) = program("QWEN_CRED_TEST_CODEX", "codex") else {
        return;
    };
    let mock = Mock::start();
    mock.add_account("rt-1", "at-1");
    mock.add_account("rt-2", "at-2");
    let env = codex_env(&mock);
    env.write_store(&store_with(2));

    let (code, out, err) = codex_exec(&env, &codex, "say hi");
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("hello from account 1"),
        "stdout: {out}\nstderr: {err}"
    );
    let sent = responses_requests(&mock);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(bearer(&sent[0]), "at-1");
    let s = env.read_store();
    assert_eq!(
        s["accounts"][0]["total_requests"], 1,
        "one use recorded: {s}"
    );
    for (name, value) in qwen_cred_headers(&env) {
        assert_eq!(
            sent[0].header(&name),
            Some(value.as_str()),
            "header {name} (README's http_headers must match `qwen-cred token --format json`)"
        );
    }
}

/// A 401 makes Codex run `qwen-cred token` again and send the request once more. Here the
/// token Codex holds has expired (the server refuses it; qwen-cred's clock says so too: every
/// token the mock issues is reported with `expires_in` 0), so the second run refreshes and the
/// retry carries the new token.
#[test]
fn codex_runs_qwen_cred_again_after_a_401_and_retries_with_a_fresh_token() {
    let Some(codex) = program("QWEN_CRED_TEST_CODEX", "codex") else {
        return;
    };
    let mock = Mock::start();
    let a1 = mock.add_account("rt-1", "at-1");
    mock.set_refresh_tweak(&[("expires_in", Some(json!(0)))]);
    mock.api_script_for(a1, ApiReply::Unauthorized);
    let env = codex_env(&mock);
    env.write_store(&json!({
        "version": "1.0", "max_accounts": 10, "current_account_id": "1",
        "accounts": [account("1", "at-1", "rt-1", -60)],
    }));

    let (code, out, err) = codex_exec(&env, &codex, "say hi");
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("hello from account 1"),
        "stdout: {out}\nstderr: {err}"
    );
    let sent = responses_requests(&mock);
    assert_eq!(sent.len(), 2, "{sent:?}");
    let (first, second) = (bearer(&sent[0]), bearer(&sent[1]));
    assert!(first.starts_with("at-1-"), "{first}");
    assert!(second.starts_with("at-1-"), "{second}");
    assert_ne!(first, second, "the retry must carry a new token");
    assert_eq!(
        mock.count_refreshes(),
        2,
        "one refresh per run of the command"
    );
    let s = env.read_store();
    assert_eq!(s["accounts"][0]["access_token"], second, "{s}");
}

/// Codex ends the turn on a 429 without telling qwen-cred; the README's `report-429` cools
/// the account, and the next Codex run is served by the next one.
#[test]
fn codex_after_a_quota_429_and_report_429_uses_the_next_account() {
    let Some(codex) = program("QWEN_CRED_TEST_CODEX", "codex") else {
        return;
    };
    let mock = Mock::start();
    let a1 = mock.add_account("rt-1", "at-1");
    mock.add_account("rt-2", "at-2");
    mock.api_script_for(a1, ApiReply::QuotaExceeded);
    let env = codex_env(&mock);
    env.write_store(&store_with(2));

    let (code, out, err) = codex_exec(&env, &codex, "say hi");
    assert_ne!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(err.contains("Quota exceeded"), "stderr: {err}");
    let sent = responses_requests(&mock);
    assert_eq!(sent.len(), 1, "Codex does not retry a 429: {sent:?}");
    assert_eq!(bearer(&sent[0]), "at-1");

    // README: `echo insufficient_quota | qwen-cred report-429 --body -`.
    let mut report = env.cmd(&["report-429", "--body", "-", "--json"]);
    let mut child = report
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run report-429");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"insufficient_quota\n")
            .expect("write body");
    }
    let o = child.wait_with_output().expect("report-429");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let d: Value = serde_json::from_slice(&o.stdout).expect("report-429 --json");
    assert_eq!(d["account_id"], "1", "{d}");
    assert_eq!(d["reason"], "quota", "{d}");
    assert_eq!(d["next_account_id"], "2", "{d}");

    let (code, out, err) = codex_exec(&env, &codex, "say hi again");
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("hello from account 2"),
        "stdout: {out}\nstderr: {err}"
    );
    let sent = responses_requests(&mock);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(bearer(&sent[1]), "at-2");
}

/// With every account cooling down, `token --no-wait` fails at once; Codex logs qwen-cred's
/// message and sends the request without a token, which the service refuses.
#[test]
fn codex_shows_why_qwen_cred_gave_no_token() {
    let Some(codex) = program("QWEN_CRED_TEST_CODEX", "codex") else {
        return;
    };
    let mock = Mock::start();
    mock.add_account("rt-1", "at-1");
    let env = codex_env(&mock);
    let mut store = store_with(1);
    store["accounts"][0]["rate_limit_resets_at"] = json!(util::now_ms() + 3_600_000);
    store["accounts"][0]["rate_limit_reason"] = json!("quota");
    env.write_store(&store);

    let (code, out, err) = codex_exec(&env, &codex, "say hi");
    assert_ne!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains(
            "provider auth command `qwen-cred` exited with status exit status: 4: qwen-cred:"
        ),
        "stderr: {err}"
    );
    let sent = responses_requests(&mock);
    assert!(!sent.is_empty());
    assert!(
        sent.iter().all(|r| r.header("authorization").is_none()),
        "{sent:?}"
    );
}
