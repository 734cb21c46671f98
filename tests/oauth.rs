//! Login (device flow with PKCE), refresh, revocation, and single-flight refresh across
//! processes, against the mock Qwen server.

use crate::util::mock::{Approval, Fault, Mock, Outcome};
use crate::util::{self, account, text, Env};
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;

fn lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// An env whose refresh retries are immediate, so fault tests stay fast.
fn env_for(mock: &Mock) -> Env {
    let mut env = Env::with_mock(mock);
    env.set("QWEN_CRED_TOKEN_REFRESH_RETRY_DELAY_MS", "0");
    env
}

#[test]
fn login_adds_an_account_with_pkce_and_reports_progress_as_json() {
    let mock = Mock::start();
    let mut approval = mock.approval(Some("alice@example.com"));
    approval.pending_polls = 2;
    mock.push_approval(approval);
    let env = env_for(&mock);
    let (out, err) = env.expect(&["login", "--no-browser", "--json"], 0);
    let events = lines(&out);
    assert_eq!(events[0]["event"], "verification");
    assert!(events[0]["verification_uri_complete"]
        .as_str()
        .unwrap_or("")
        .starts_with(&mock.base_url()));
    assert!(events[0]["user_code"].is_string());
    assert_eq!(
        events[1],
        json!({"event": "success", "account_id": "1", "email": "alice@example.com", "label": null, "name": "alice@example.com"})
    );
    assert!(err.contains("confirm the code"), "{err}");

    let issued = mock.state(|s| s.issued.clone());
    let s = env.read_store();
    assert_eq!(s["accounts"][0]["email"], "alice@example.com");
    assert_eq!(
        s["accounts"][0]["access_token"],
        issued[0].access_token.as_str()
    );
    assert_eq!(
        s["accounts"][0]["refresh_token"],
        issued[0].refresh_token.as_str()
    );
    assert!(s["accounts"][0]["expiry_date"].as_i64().unwrap_or(0) > util::now_ms() + 3_500_000);
    assert_eq!(s["current_account_id"], "1");
    // Every request carries the headers the service expects; the device request uses S256.
    for r in mock.requests() {
        assert!(
            r.header("user-agent")
                .unwrap_or("")
                .starts_with("qwen-cred/"),
            "{r:?}"
        );
        assert_eq!(r.header("accept"), Some("application/json"));
    }
    let device = mock
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/device/code"))
        .expect("device request");
    assert_eq!(device.field("code_challenge_method"), Some("S256"));
    assert_eq!(mock.polls().len(), 3);

    // The same email again updates account 1 in place.
    mock.push_approval(mock.approval(Some("alice@example.com")));
    env.expect(&["login", "--no-browser"], 0);
    let s = env.read_store();
    assert_eq!(s["accounts"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        s["accounts"][0]["access_token"],
        mock.state(|s| s.issued[1].access_token.clone()).as_str()
    );
}

#[test]
fn login_without_email_uses_the_flag_or_a_fingerprint() {
    let mock = Mock::start();
    let env = env_for(&mock);
    env.expect(&["login", "--no-browser", "--email", "bob@example.com"], 0);
    env.expect(&["login", "--no-browser"], 0);
    let s = env.read_store();
    assert_eq!(s["accounts"][0]["email"], "bob@example.com");
    assert_eq!(s["accounts"][1]["email"], "");
    let (list, _) = env.expect(&["list"], 0);
    assert!(list.contains(" fp "), "{list}");
}

#[test]
fn slow_down_adds_five_seconds_to_the_interval() {
    let mock = Mock::start();
    mock.push_approval(Approval {
        pending_polls: 2,
        slow_down_at: Some(1),
        slow_down_status: 429,
        ..mock.approval(None)
    });
    let env = env_for(&mock);
    env.expect(&["login", "--no-browser"], 0);
    let polls = mock.polls();
    assert_eq!(polls.len(), 3);
    assert!(
        polls[1] - polls[0] >= Duration::from_secs(5),
        "{:?}",
        polls[1] - polls[0]
    );
    assert!(
        polls[2] - polls[1] >= Duration::from_secs(5),
        "the interval stays longer"
    );
}

#[test]
fn denied_expired_and_timed_out_logins_exit_7() {
    for (outcome, needle, extra) in [
        (Outcome::Deny, "denied", vec![]),
        (Outcome::Expire, "expired", vec![]),
        (Outcome::Never, "timed out", vec!["--timeout", "1"]),
    ] {
        let mock = Mock::start();
        mock.push_approval(Approval {
            outcome,
            ..mock.approval(None)
        });
        let env = env_for(&mock);
        let mut args = vec!["login", "--no-browser", "--json"];
        args.extend(extra);
        let (out, err) = env.expect(&args, 7);
        assert!(err.contains(needle), "{err}");
        let last = lines(&out).pop().expect("an event");
        assert_eq!(last["event"], "error");
        assert!(!env.store_path().exists());
    }
}

#[test]
fn a_full_pool_needs_replace_or_fresh() {
    let mock = Mock::start();
    let env = env_for(&mock);
    env.write_store(&util::store_with(10));
    let (_, err) = env.expect(&["login", "--no-browser"], 2);
    assert!(
        err.contains("full") && err.contains("--replace") && err.contains("--fresh"),
        "{err}"
    );
    assert!(err.contains("user7@example.com"), "{err}");
    assert!(
        mock.requests().is_empty(),
        "no device flow before the choice is made"
    );

    mock.push_approval(mock.approval(Some("new@example.com")));
    env.expect(&["login", "--no-browser", "--replace", "3"], 0);
    let s = env.read_store();
    assert_eq!(s["accounts"].as_array().map(Vec::len), Some(10));
    assert_eq!(s["accounts"][2]["id"], "3");
    assert_eq!(s["accounts"][2]["email"], "new@example.com");

    // --fresh empties the pool only once the new login succeeded.
    mock.push_approval(Approval {
        outcome: Outcome::Deny,
        ..mock.approval(None)
    });
    env.expect(&["login", "--no-browser", "--fresh"], 7);
    assert_eq!(
        env.read_store()["accounts"].as_array().map(Vec::len),
        Some(10)
    );
    mock.push_approval(mock.approval(Some("only@example.com")));
    env.expect(&["login", "--no-browser", "--fresh"], 0);
    let s = env.read_store();
    assert_eq!(s["accounts"].as_array().map(Vec::len), Some(1));
    assert_eq!(s["accounts"][0]["email"], "only@example.com");
    assert_eq!(s["current_account_id"], "1");
}

/// A full pool with a revoked account: the login may be its revival, so it goes ahead.
#[test]
fn a_full_pool_with_a_revoked_account_lets_its_relogin_through() {
    let mock = Mock::start();
    let env = env_for(&mock);
    let mut s = util::store_with(10);
    s["accounts"][4]["status"] = json!("revoked");
    env.write_store(&s);
    mock.push_approval(mock.approval(Some("user5@example.com")));
    env.expect(&["login", "--no-browser"], 0);
    let mut s = env.read_store();
    assert!(s["accounts"][4].get("status").is_none(), "revived");
    // A new account still does not fit.
    s["accounts"][4]["status"] = json!("revoked");
    env.write_store(&s);
    mock.push_approval(mock.approval(Some("new@example.com")));
    let (_, err) = env.expect(&["login", "--no-browser"], 2);
    assert!(err.contains("full"), "{err}");
    assert_eq!(
        env.read_store()["accounts"].as_array().map(Vec::len),
        Some(10)
    );
}

#[test]
fn a_relogin_revives_a_revoked_account() {
    let mock = Mock::start();
    let env = env_for(&mock);
    let mut s = util::store_with(2);
    s["accounts"][1]["status"] = json!("revoked");
    s["accounts"][1]["status_reason"] =
        json!("invalid_request: Invalid refresh token or client_id");
    env.write_store(&s);
    mock.push_approval(mock.approval(Some("user2@example.com")));
    env.expect(&["login", "--no-browser"], 0);
    let s = env.read_store();
    assert_eq!(s["accounts"].as_array().map(Vec::len), Some(2));
    assert!(s["accounts"][1].get("status").is_none() || s["accounts"][1]["status"] == "active");
    assert!(s["accounts"][1].get("status_reason").is_none());
    env.expect(&["token", "--account", "2"], 0);
}

/// A store whose account 1 is expired, with its refresh token known to the mock.
fn expired_store(env: &Env, mock: &Mock, n: usize) {
    let mut accounts = Vec::new();
    for i in 1..=n {
        let (at, rt) = (format!("at-old-{i}"), format!("rt-old-{i}"));
        mock.add_account(&rt, &at);
        accounts.push(account(
            &i.to_string(),
            &at,
            &rt,
            if i == 1 { -10 } else { 7200 },
        ));
    }
    env.write_store(&json!({"version": "1.0", "accounts": accounts, "current_account_id": "1"}));
}

#[test]
fn refresh_keeps_the_refresh_token_and_resource_url_when_omitted() {
    let mock = Mock::start();
    let env = env_for(&mock);
    expired_store(&env, &mock, 1);
    let (out, err) = env.expect(&["token"], 0);
    assert!(err.is_empty(), "{err}");
    let s = env.read_store();
    let a = &s["accounts"][0];
    assert_eq!(out.trim(), a["access_token"].as_str().unwrap_or(""));
    assert_ne!(a["access_token"], "at-old-1");
    assert_eq!(a["refresh_token"], "rt-old-1");
    assert_eq!(a["resource_url"], "portal.qwen.ai");
    assert_eq!(a["total_requests"], 1);
    assert_eq!(mock.count_refreshes(), 1);

    // A rotating server: the new refresh token and resource_url are kept.
    mock.set_rotate_refresh(true);
    mock.set_refresh_resource_url(Some("127.0.0.1:9"));
    env.expect(&["refresh", "--force"], 0);
    let a = env.read_store()["accounts"][0].clone();
    assert_ne!(a["refresh_token"], "rt-old-1");
    assert!(mock.is_live_refresh(a["refresh_token"].as_str().unwrap_or("")));
    assert_eq!(a["resource_url"], "127.0.0.1:9");
}

#[test]
fn a_dead_refresh_token_revokes_the_account_and_the_next_one_serves() {
    let mock = Mock::start();
    let env = env_for(&mock);
    expired_store(&env, &mock, 2);
    mock.revoke_refresh("rt-old-1");
    let (out, err) = env.expect(&["token"], 0);
    assert_eq!(out.trim(), "at-old-2");
    assert!(
        err.contains("account 1") && err.contains("revoked") && err.contains("qwen-cred login"),
        "{err}"
    );
    assert!(!err.contains("rt-old-1"), "{err}");
    let s = env.read_store();
    assert_eq!(s["accounts"][0]["status"], "revoked");
    assert!(s["accounts"][0]["status_reason"]
        .as_str()
        .unwrap_or("")
        .contains("invalid_request"));
    assert!(s["accounts"][0]["status_changed_at"].is_i64());
    assert_eq!(s["current_account_id"], "2");
    let (out, err) = env.expect(&["token"], 0);
    assert_eq!(out.trim(), "at-old-2");
    assert!(err.is_empty(), "one warning only: {err}");
    assert_eq!(
        mock.count_refreshes(),
        1,
        "a revoked account is never tried again"
    );
    let (list, _) = env.expect(&["list"], 0);
    assert!(list.contains("revoked: run qwen-cred login"), "{list}");

    env.expect(&["remove", "2"], 0);
    let (_, err) = env.expect(&["token"], 3);
    assert!(err.contains("revoked: 1"), "{err}");
}

#[test]
fn transient_failures_never_revoke() {
    for fault in [
        Fault::Status(500),
        Fault::Status(502),
        Fault::Status(429),
        Fault::Garbage,
        Fault::Html,
        Fault::NoAccessToken,
        Fault::Reset,
    ] {
        let mock = Mock::start();
        let mut env = env_for(&mock);
        // No detached `refresh --due` of account 1: this test counts every refresh.
        env.set("QWEN_CRED_PROACTIVE_TOKEN_REFRESH", "false");
        expired_store(&env, &mock, 2);
        mock.set_sticky_fault(Some(fault.clone()));
        // The expired account is skipped; the next one serves.
        let (out, _) = env.expect(&["token"], 0);
        assert_eq!(out.trim(), "at-old-2", "{fault:?}");
        assert_eq!(
            mock.count_refreshes(),
            3,
            "{fault:?}: retried per token_refresh_retry_attempts"
        );
        // Pinned to the expired account: exit 5.
        let (_, err) = env.expect(&["token", "--account", "1"], 5);
        assert!(
            err.contains("account 1") && err.contains("retry later"),
            "{fault:?}: {err}"
        );
        let s = env.read_store();
        assert!(
            s["accounts"][0].get("status").is_none(),
            "{fault:?} revoked an account"
        );
        assert_eq!(s["accounts"][0]["access_token"], "at-old-1");
    }
}

#[test]
fn a_due_token_is_served_when_its_refresh_fails() {
    let mock = Mock::start();
    let env = env_for(&mock);
    mock.add_account("rt-d", "at-d");
    env.write_store(
        &json!({"accounts": [account("1", "at-d", "rt-d", 600)], "current_account_id": "1"}),
    );
    mock.set_sticky_fault(Some(Fault::Status(503)));
    let (out, err) = env.expect(&["token"], 0);
    assert_eq!(out.trim(), "at-d");
    assert!(err.contains("still valid"), "{err}");
    mock.set_sticky_fault(None);
    let (out, _) = env.expect(&["token"], 0);
    assert_ne!(out.trim(), "at-d", "refreshed on the next call");
}

#[test]
fn an_unreachable_server_with_no_valid_token_is_exit_5() {
    let mock = Mock::start();
    let mut env = env_for(&mock);
    expired_store(&env, &mock, 1);
    env.set("QWEN_CRED_OAUTH_BASE_URL", "http://127.0.0.1:9");
    let (_, err) = env.expect(&["token"], 5);
    assert!(err.contains("127.0.0.1:9"), "{err}");
}

/// The race every earlier tool lost: 64 processes find the same expired token at once.
#[test]
fn sixty_four_processes_share_one_refresh() {
    let mock = Mock::start();
    mock.set_rotate_refresh(true);
    mock.set_refresh_delay(Duration::from_millis(300));
    let env = env_for(&mock);
    expired_store(&env, &mock, 1);
    let outs = util::run_all_ok((0..64).map(|_| env.cmd(&["token"])));
    let tokens: std::collections::BTreeSet<String> = outs
        .iter()
        .map(|o| text(&o.stdout).trim().to_string())
        .collect();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(mock.count_refreshes(), 1);
    assert_eq!(mock.bad_refreshes(), 0);
    let s = env.read_store();
    assert_eq!(
        s["accounts"][0]["access_token"].as_str(),
        tokens.iter().next().map(String::as_str)
    );
    assert_eq!(s["accounts"][0]["total_requests"], 64);
}

/// A slow refresh of account A holds up nobody who needs account B.
#[test]
fn a_slow_refresh_of_one_account_does_not_block_another() {
    let mock = Mock::start();
    let env = env_for(&mock);
    mock.add_account("rt-a", "at-a");
    mock.add_account("rt-b", "at-b");
    env.write_store(&json!({"accounts": [account("1", "at-a", "rt-a", -10), account("2", "at-b", "rt-b", -10)], "current_account_id": "1"}));
    mock.hold_refresh("rt-a");
    let a = env
        .cmd(&["token", "--account", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    assert!(
        mock.wait_until(Duration::from_secs(20), |s| s.started("rt-a") == 1),
        "A's refresh started"
    );
    let (b, _) = env.expect(&["token", "--account", "2"], 0);
    assert_ne!(b.trim(), "at-b");
    assert_eq!(
        mock.state(|s| s.finished("rt-a")),
        0,
        "B finished while A's refresh was still in flight"
    );
    let (list, _) = env.expect(&["list", "--json"], 0);
    assert!(list.contains("\"2\""), "the store is readable meanwhile");
    mock.release_refresh("rt-a");
    let o = a.wait_with_output().expect("wait");
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_ne!(text(&o.stdout).trim(), "at-a");
}

/// With a server that rotates refresh tokens, 20 rounds of concurrent refreshes never send
/// a spent refresh token.
#[test]
fn rotating_refresh_tokens_survive_concurrent_refreshes() {
    let mock = Mock::start();
    mock.set_rotate_refresh(true);
    let env = env_for(&mock);
    expired_store(&env, &mock, 2);
    for _ in 0..20 {
        util::run_all_ok(
            [
                &["refresh", "--account", "1", "--force"][..],
                &["token", "--min-valid", "7200"],
                &["token", "--account", "1", "--min-valid", "7200"],
                &["refresh", "--all", "--force"],
            ]
            .map(|args| env.cmd(args)),
        );
    }
    assert_eq!(mock.bad_refreshes(), 0);
    assert!(mock.max_concurrent_same_refresh() <= 1);
    let s = env.read_store();
    for a in s["accounts"].as_array().expect("accounts") {
        assert!(mock.is_live_refresh(a["refresh_token"].as_str().unwrap_or("")));
    }
}

#[test]
fn refresh_command_reports_each_account() {
    let mock = Mock::start();
    let env = env_for(&mock);
    expired_store(&env, &mock, 3);
    let (_, err) = env.expect(&["refresh", "--due"], 0);
    assert!(
        err.contains("account 1") && err.contains("valid until"),
        "{err}"
    );
    assert!(!err.contains("account 2"), "only due accounts: {err}");
    let (_, err) = env.expect(&["refresh", "--account", "2"], 0);
    assert!(err.contains("not due"), "{err}");
    assert_eq!(mock.count_refreshes(), 1);
    mock.revoke_refresh("rt-old-3");
    let (_, err) = env.expect(&["refresh", "--all", "--force"], 3);
    assert!(
        err.contains("account 3") && err.contains("revoked"),
        "{err}"
    );
    mock.set_sticky_fault(Some(Fault::Status(500)));
    let (_, err) = env.expect(&["refresh", "--account", "1", "--force"], 5);
    assert!(err.contains("refresh failed"), "{err}");
    env.expect(&["refresh", "--all", "--due"], 2);
}

/// SIGTERM while a refresh is in flight: the process finishes storing the new tokens first,
/// so a rotated refresh token is never lost.
#[test]
fn a_signal_during_a_refresh_waits_until_the_new_tokens_are_stored() {
    let mock = Mock::start();
    mock.set_rotate_refresh(true);
    let env = env_for(&mock);
    expired_store(&env, &mock, 1);
    mock.hold_refresh("rt-old-1");
    let child = env
        .cmd(&["token"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    assert!(mock.wait_until(Duration::from_secs(20), |s| s.started("rt-old-1") == 1));
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    mock.release_refresh("rt-old-1");
    let o = child.wait_with_output().expect("wait");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        o.status.signal(),
        Some(15),
        "ended by the deferred SIGTERM: {}",
        text(&o.stderr)
    );
    let s = env.read_store();
    let rt = s["accounts"][0]["refresh_token"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_ne!(rt, "rt-old-1");
    assert!(
        mock.is_live_refresh(&rt),
        "the rotated refresh token was stored"
    );
    env.expect(&["token"], 0);
    assert_eq!(mock.bad_refreshes(), 0);
}

/// A caller whose token is only due does not wait for another process's refresh; one whose
/// token expired waits at most lock_timeout_seconds, then another account serves.
#[test]
fn a_refresh_in_progress_elsewhere_never_stalls_a_caller() {
    let mock = Mock::start();
    let mut env = env_for(&mock);
    env.set("QWEN_CRED_LOCK_TIMEOUT_SECONDS", "1");
    mock.add_account("rt-d", "at-d");
    mock.add_account("rt-x", "at-x");
    mock.add_account("rt-ok", "at-ok");
    env.write_store(&json!({"accounts": [account("1", "at-d", "rt-d", 600), account("2", "at-x", "rt-x", -10), account("3", "at-ok", "rt-ok", 7200)], "current_account_id": "1"}));
    mock.hold_refresh("rt-d");
    mock.hold_refresh("rt-x");
    let holders: Vec<_> = ["1", "2"]
        .iter()
        .map(|id| {
            env.cmd(&["refresh", "--account", id, "--force"])
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    assert!(
        mock.wait_until(Duration::from_secs(20), |s| s.started("rt-d") == 1
            && s.started("rt-x") == 1)
    );
    // Due: served at once, quietly.
    let (out, err) = env.expect(&["token"], 0);
    assert_eq!(out.trim(), "at-d");
    assert!(err.is_empty(), "{err}");
    // Expired: after the lock wait, the next account.
    let (out, _) = env.expect(
        &[
            "token",
            "--format",
            "raw",
            "--min-valid",
            "0",
            "--account",
            "3",
        ],
        0,
    );
    assert_eq!(out.trim(), "at-ok");
    env.expect(&["use", "2"], 0);
    let (out, err) = env.expect(&["token"], 0);
    assert_eq!(out.trim(), "at-ok", "{err}");
    mock.release_refresh("rt-d");
    mock.release_refresh("rt-x");
    for h in holders {
        assert!(h.wait_with_output().expect("wait").status.success());
    }
    assert_eq!(mock.count_refreshes(), 2);
}

/// Callers queued behind a refresh that failed do not send it again at once.
#[test]
fn a_failed_refresh_is_not_repeated_by_those_who_waited_for_it() {
    let mock = Mock::start();
    let mut env = env_for(&mock);
    env.set("QWEN_CRED_HTTP_TIMEOUT_SECONDS", "2");
    env.set("QWEN_CRED_TOKEN_REFRESH_RETRY_ATTEMPTS", "1");
    expired_store(&env, &mock, 1);
    mock.set_sticky_fault(Some(Fault::Hang));
    let first = env
        .cmd(&["token"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    assert!(mock.wait_until(Duration::from_secs(20), |s| s.count_refreshes() == 1));
    let (_, err) = env.expect(&["token"], 5);
    assert!(err.contains("just failed"), "{err}");
    let o = first.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    assert_eq!(mock.count_refreshes(), 1);
    // Later calls try again.
    mock.set_sticky_fault(None);
    env.expect(&["token"], 0);
}

/// Times from outside (a server's expires_in, a Qwen CLI file) never make the store unreadable.
#[test]
fn absurd_lifetimes_are_clamped_or_refused() {
    let mock = Mock::start();
    let env = env_for(&mock);
    expired_store(&env, &mock, 1);
    mock.set_refresh_expires_in(10_000_000_000_000);
    env.expect(&["token"], 0);
    env.expect(&["list"], 0);
    env.expect(&["token"], 0);
    assert_eq!(mock.count_refreshes(), 1);

    let creds = env.root.join("creds.json");
    for expiry in ["9000000000000000000", "-5"] {
        std::fs::write(
            &creds,
            format!(r#"{{"access_token":"a","refresh_token":"r","expiry_date":{expiry}}}"#),
        )
        .expect("write");
        let (_, err) = env.expect(&["import", creds.to_str().unwrap_or("")], 6);
        assert!(err.contains("expiry_date"), "{err}");
    }
    env.expect(&["list"], 0);
}

/// A failure stamp from a clock that stepped back does not stop refreshes.
#[test]
fn a_refresh_failure_stamp_in_the_future_is_ignored() {
    let mock = Mock::start();
    let env = env_for(&mock);
    expired_store(&env, &mock, 1);
    let mut s = env.read_store();
    s["accounts"][0]["refresh_failed_at"] = json!(util::now_ms() + 3_600_000);
    env.write_store(&s);
    env.expect(&["token"], 0);
    assert_eq!(mock.count_refreshes(), 1);
    assert!(env.read_store()["accounts"][0]
        .get("refresh_failed_at")
        .is_none());
}
