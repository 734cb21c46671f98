//! `qwen-cred doctor`: one line per check, each failure with its fix, exit 0 only when nothing
//! fails; `--online` asks the OAuth server without spending a token.

use crate::util::mock::Mock;
use crate::util::{self, mode, store_with, Env};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;

/// A set-up a careful user has: the binary on PATH, two accounts, OpenCode wired up.
fn healthy(mock: Option<&Mock>) -> Env {
    let mut env = match mock {
        Some(m) => Env::with_mock(m),
        None => Env::new(),
    };
    let bin = env.root.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    std::os::unix::fs::symlink(util::BIN, bin.join("qwen-cred")).expect("symlink");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    env.set("PATH", &path);
    env.write_store(&store_with(2));
    env.expect(&["opencode", "install", "--write-config"], 0);
    env
}

/// The lines of the checks called `name`.
fn lines<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    out.lines()
        .filter(|l| {
            l.get(6..)
                .is_some_and(|rest| rest.starts_with(&format!("{name}: ")))
        })
        .collect()
}

fn level<'a>(out: &'a str, name: &str) -> &'a str {
    let l = lines(out, name);
    assert!(!l.is_empty(), "no {name} line in:\n{out}");
    l[0].split_whitespace().next().unwrap_or("")
}

#[test]
fn a_healthy_setup_passes_every_check() {
    let mock = Mock::start();
    let env = healthy(Some(&mock));
    let (out, err) = env.expect(&["doctor"], 0);
    assert_eq!(err, "", "{out}");
    for name in [
        "binary",
        "config",
        "directory",
        "store",
        "accounts",
        "journal",
        "opencode-plugin",
        "opencode-provider",
        "opencode-auth",
        "qwen-cli",
        "clock",
    ] {
        assert_eq!(level(&out, name), "ok", "{name}:\n{out}");
    }
    assert!(
        out.contains(&format!("qwen-cred {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert!(out.contains("2 of 2 accounts in rotation"), "{out}");

    let (out, _) = env.expect(&["doctor", "--online", "--json"], 0);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["ok"], true);
    let checks = v["checks"].as_array().cloned().unwrap_or_default();
    let server: Vec<&Value> = checks.iter().filter(|c| c["check"] == "server").collect();
    assert_eq!(server.len(), 1, "{out}");
    assert_eq!(server[0]["status"], "ok");
    assert!(
        checks
            .iter()
            .any(|c| c["check"] == "server-clock" && c["status"] == "ok"),
        "{out}"
    );
    assert!(
        checks
            .iter()
            .all(|c| c["fix"].is_null() && c["message"].is_string()),
        "{out}"
    );
    // Asked without spending anything: one plain GET, no token or device-code request.
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].path.as_str()),
        ("GET", "/")
    );
    assert!(reqs[0].body.is_empty());
    for t in ["at-1", "rt-1", "at-2", "rt-2"] {
        assert!(!out.contains(t));
    }
}

#[test]
fn each_problem_fails_with_the_command_that_fixes_it() {
    let env = healthy(None);
    // A store others can read: failed, and left as it is (doctor changes nothing).
    std::fs::set_permissions(env.store_path(), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let plugin = env.config_dir().join("plugin/qwen-cred.js");
    std::fs::write(&plugin, "// an older plugin\n").expect("write plugin");
    let auth = env.root.join("home/.local/share/opencode/auth.json");
    std::fs::write(&auth, r#"{"other": {"type": "api", "key": "k"}}"#).expect("auth");
    std::fs::write(
        env.config_dir().join("qwen.json"),
        r#"{"lock_timeout_seconds": -1}"#,
    )
    .expect("config");
    let (out, err) = env.expect(&["doctor"], 6);
    assert!(err.contains("check(s) failed"), "{err}");
    let expect_fail = |name: &str, words: &[&str]| {
        assert_eq!(level(&out, name), "fail", "{name}:\n{out}");
        let line = lines(&out, name).join("\n");
        assert!(line.contains("; fix: "), "{line}");
        for w in words {
            assert!(line.contains(w), "{name}: {w:?} missing in {line}");
        }
    };
    expect_fail("store", &["0644", "chmod 600"]);
    assert_eq!(mode(&env.store_path()), 0o644);
    expect_fail("opencode-plugin", &["qwen-cred opencode install"]);
    expect_fail(
        "opencode-auth",
        &["no \"qwen\" entry", "opencode auth login"],
    );
    expect_fail(
        "config",
        &["lock_timeout_seconds", "qwen-cred config --schema"],
    );
    // The checks after a failing one still run.
    assert_eq!(level(&out, "opencode-provider"), "ok");
    assert_eq!(level(&out, "clock"), "ok");

    // Not on PATH, then another version on PATH.
    let mut env = healthy(None);
    env.set("PATH", &std::env::var("PATH").unwrap_or_default());
    let (out, _) = env.expect(&["doctor"], 6);
    expect_fail_in(&out, "binary", &["not on PATH", "cargo install --path ."]);
    let other = env.root.join("other");
    std::fs::create_dir_all(&other).expect("dir");
    let fake = other.join("qwen-cred");
    std::fs::write(&fake, "#!/bin/sh\necho 'qwen-cred 0.0.1'\n").expect("fake");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    env.set(
        "PATH",
        &format!(
            "{}:{}",
            other.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    let (out, _) = env.expect(&["doctor"], 6);
    expect_fail_in(
        &out,
        "binary",
        &["qwen-cred 0.0.1", env!("CARGO_PKG_VERSION")],
    );
}

fn expect_fail_in(out: &str, name: &str, words: &[&str]) {
    assert_eq!(level(out, name), "fail", "{name}:\n{out}");
    let line = lines(out, name).join("\n");
    for w in words {
        assert!(line.contains(w), "{name}: {w:?} missing in {line}");
    }
}

#[test]
fn accounts_journals_and_the_qwen_cli_file_are_warned_about() {
    let env = healthy(None);
    let mut s = store_with(3);
    s["accounts"][0]["status"] = json!("revoked");
    s["accounts"][0]["status_reason"] = json!("invalid_grant");
    s["accounts"][1]["disabled"] = json!(true);
    env.write_store(&s);
    std::fs::write(
        env.config_dir().join("qwen-accounts.refresh-3.journal"),
        "{}",
    )
    .expect("journal");
    let creds = json!({"access_token": "at-q", "refresh_token": "rt-q", "token_type": "Bearer",
                       "expiry_date": util::now_ms() + 3_600_000});
    util::write_private(
        &env.qwen_dir().join("oauth_creds.json"),
        &serde_json::to_vec(&creds).expect("json"),
    );
    // Warnings only: exit 0.
    let (out, _) = env.expect(&["doctor"], 0);
    let acc = lines(&out, "accounts").join("\n");
    assert!(
        acc.contains("account 1")
            && acc.contains("revoked: invalid_grant")
            && acc.contains("fix: qwen-cred login"),
        "{acc}"
    );
    assert!(
        acc.contains("account 2")
            && acc.contains("disabled")
            && acc.contains("fix: qwen-cred enable 2"),
        "{acc}"
    );
    assert!(acc.contains("1 of 3 accounts in rotation"), "{acc}");
    let j = lines(&out, "journal").join("\n");
    assert!(
        j.starts_with("warn") && j.contains("fix: qwen-cred refresh --account 3"),
        "{j}"
    );
    let q = lines(&out, "qwen-cli").join("\n");
    assert!(
        q.starts_with("warn")
            && q.contains("not in the pool")
            && q.contains("fix: qwen-cred import"),
        "{q}"
    );
    // Once imported, linked and in step.
    env.expect(&["import"], 0);
    let (out, _) = env.expect(&["doctor"], 0);
    let q = lines(&out, "qwen-cli").join("\n");
    assert!(
        q.starts_with("ok") && q.contains("linked to account 4"),
        "{q}"
    );

    // No account can serve: exit 3.
    env.expect(&["disable", "3"], 0);
    env.expect(&["disable", "4"], 0);
    let (out, _) = env.expect(&["doctor"], 3);
    assert!(
        lines(&out, "accounts")
            .iter()
            .any(|l| l.starts_with("fail")),
        "{out}"
    );
    env.expect(&["remove", "--all"], 0);
    let (out, _) = env.expect(&["doctor"], 3);
    assert!(
        out.contains("the pool is empty; fix: qwen-cred login"),
        "{out}"
    );
}

#[test]
fn online_reports_an_unreachable_server_and_clock_skew() {
    let mut env = healthy(None);
    // Nothing listens on the discard port.
    env.set("QWEN_CRED_OAUTH_BASE_URL", "http://127.0.0.1:9");
    env.set("QWEN_CRED_HTTP_TIMEOUT_SECONDS", "5");
    let (out, _) = env.expect(&["doctor", "--online"], 5);
    expect_fail_in(&out, "server", &["cannot reach", "127.0.0.1:9"]);

    let mock = Mock::start();
    env.set("QWEN_CRED_OAUTH_BASE_URL", &mock.base_url());
    mock.set_date_skew(120);
    let (out, _) = env.expect(&["doctor", "--online"], 0);
    let l = lines(&out, "server-clock").join("\n");
    assert!(
        l.starts_with("warn") && l.contains("ahead") && l.contains("timedatectl"),
        "{l}"
    );
    let secs: i64 = l
        .split_whitespace()
        .zip(l.split_whitespace().skip(1))
        .find(|(_, s)| *s == "s")
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0);
    assert!((119..=121).contains(&secs), "{l}");
    mock.set_date_skew(-900);
    let (out, _) = env.expect(&["doctor", "--online"], 6);
    let l = lines(&out, "server-clock").join("\n");
    assert!(l.starts_with("fail") && l.contains("behind"), "{l}");
    assert_eq!(mock.count_refreshes(), 0);
}

#[test]
fn opencode_with_other_providers_only_is_not_a_problem() {
    let env = healthy(None);
    // Undo what `healthy` set up for OpenCode, as for a user of OpenCode with other providers.
    std::fs::remove_file(env.config_dir().join("plugin/qwen-cred.js")).expect("rm plugin");
    std::fs::write(
        env.config_dir().join("opencode.json"),
        r#"{"provider": {"other": {}}}"#,
    )
    .expect("opencode.json");
    let auth = env.root.join("home/.local/share/opencode/auth.json");
    std::fs::write(&auth, r#"{"other": {"type": "api", "key": "k"}}"#).expect("auth");
    let (out, _) = env.expect(&["doctor"], 0);
    assert_eq!(level(&out, "opencode"), "ok", "{out}");
    assert!(
        out.contains("qwen-cred opencode install --write-config"),
        "{out}"
    );
    assert!(lines(&out, "opencode-plugin").is_empty(), "{out}");
    // Half set up (the marker without the plugin) is a failure with its fix.
    std::fs::write(
        &auth,
        r#"{"qwen": {"type": "oauth", "access": "qwen-cred"}}"#,
    )
    .expect("auth");
    let (out, _) = env.expect(&["doctor"], 6);
    expect_fail_in(
        &out,
        "opencode-plugin",
        &["no plugin", "qwen-cred opencode install"],
    );
    expect_fail_in(&out, "opencode-provider", &["no \"qwen\" provider"]);
}
