//! Seeing and steering the pool from the command line: labels, a stable identity for accounts
//! without email, disable/enable, reset, `use` on an account that cannot serve, `status`, and
//! the `--json` output of every command that changes or reports something.

use crate::util::mock::{Fault, Mock};
use crate::util::{self, account, store_with, Env};
use serde_json::{json, Value};

fn parse(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn list_json(env: &Env) -> Value {
    parse(&env.expect(&["list", "--json"], 0).0)
}

fn quota_body(env: &Env) -> String {
    let body = env.root.join("quota.json");
    std::fs::write(&body, util::mock::QUOTA_BODY).expect("write body");
    body.to_string_lossy().into_owned()
}

#[test]
fn a_label_names_the_account_everywhere_and_stands_for_its_id() {
    let env = Env::new();
    let mut s = store_with(2);
    s["accounts"][1]["email"] = json!("");
    env.write_store(&s);
    let (out, err) = env.expect(&["label", "2", "work laptop", "--json"], 0);
    assert_eq!(err, "", "a label is set quietly");
    let v = parse(&out);
    assert_eq!(v["changed"], true);
    assert_eq!(v["account"]["id"], "2");
    assert_eq!(v["account"]["label"], "work laptop");
    let fp = v["account"]["fingerprint"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(fp.len(), 8);
    assert_eq!(v["account"]["name"], format!("work laptop (fp {fp})"));
    assert_eq!(env.read_store()["accounts"][1]["label"], "work laptop");

    let (table, _) = env.expect(&["list"], 0);
    assert!(table.contains(&format!("work laptop (fp {fp})")), "{table}");
    let (status, _) = env.expect(&["status"], 0);
    assert!(status.contains("work laptop"), "{status}");
    // The label goes wherever an ID goes.
    env.expect(&["use", "work laptop"], 0);
    let (tok, _) = env.expect(&["token", "--format", "json"], 0);
    let tok = parse(&tok);
    assert_eq!(tok["account_id"], "2");
    assert_eq!(tok["label"], "work laptop");
    assert_eq!(tok["name"], format!("work laptop (fp {fp})"));

    // A label must name one account only, and not read as an id.
    for (bad, why) in [
        ("work laptop", "already names account 2"),
        ("42", "all digits"),
        (" padded", "blanks"),
        ("two\nlines", "control"),
    ] {
        let (_, err) = env.expect(&["label", "1", bad], 2);
        assert!(err.contains(why), "{bad:?}: {err}");
    }
    let (_, err) = env.expect(&["label", "2", "user1@example.com"], 2);
    assert!(err.contains("already names account 1"), "{err}");
    // Its own email is fine.
    env.expect(&["label", "1", "user1@example.com"], 0);
    let (_, err) = env.expect(&["label", "1"], 2);
    assert!(err.contains("--clear"), "{err}");
    let (out, _) = env.expect(&["label", "2", "work laptop", "--json"], 0);
    assert_eq!(parse(&out)["changed"], false);
    let (out, _) = env.expect(&["label", "work laptop", "--clear", "--json"], 0);
    assert_eq!(parse(&out)["account"]["label"], Value::Null);
    assert!(env.read_store()["accounts"][1].get("label").is_none());
}

#[test]
fn login_label_names_the_new_account_and_is_checked_before_the_browser() {
    let mock = Mock::start();
    let env = Env::with_mock(&mock);
    let (_, err) = env.expect(&["login", "--no-browser", "--label", "123"], 2);
    assert!(err.contains("all digits"), "{err}");
    assert!(
        mock.requests().is_empty(),
        "nothing was sent for a bad label"
    );

    mock.push_approval(mock.approval(Some("alice@example.com")));
    let (out, _) = env.expect(&["login", "--no-browser", "--json", "--label", "home"], 0);
    let success: Value = out
        .lines()
        .map(parse)
        .find(|e| e["event"] == "success")
        .expect("a success event");
    assert_eq!(
        success,
        json!({"event": "success", "account_id": "1", "email": "alice@example.com",
               "label": "home", "name": "home (alice@example.com)"})
    );
    assert_eq!(env.read_store()["accounts"][0]["label"], "home");

    // --replace keeps the slot's id and label; --label renames it.
    mock.push_approval(mock.approval(None));
    env.expect(&["login", "--no-browser", "--replace", "home"], 0);
    let a = env.read_store()["accounts"][0].clone();
    assert_eq!(
        (a["id"].clone(), a["label"].clone(), a["email"].clone()),
        (json!("1"), json!("home"), json!(""))
    );
    mock.push_approval(mock.approval(None));
    env.expect(
        &["login", "--no-browser", "--replace", "1", "--label", "work"],
        0,
    );
    assert_eq!(env.read_store()["accounts"][0]["label"], "work");
}

/// The store of an older version has no fingerprint: the one shown before the first refresh
/// is kept for the account's life, whatever the refresh token becomes.
#[test]
fn an_account_without_email_keeps_its_fingerprint_across_refreshes() {
    let mock = Mock::start();
    mock.set_rotate_refresh(true);
    mock.add_account("rt-x", "at-x");
    let mut env = Env::with_mock(&mock);
    env.set("QWEN_CRED_TOKEN_REFRESH_RETRY_DELAY_MS", "0");
    let mut a = account("1", "at-x", "rt-x", -10);
    a["email"] = json!("");
    env.write_store(&json!({"accounts": [a], "current_account_id": "1"}));

    let before = list_json(&env)[0]["fingerprint"].clone();
    assert_eq!(before.as_str().map(str::len), Some(8));
    let (table, _) = env.expect(&["list"], 0);
    assert!(
        table.contains(&format!("fp {}", before.as_str().unwrap_or(""))),
        "{table}"
    );
    env.expect(&["token"], 0);
    env.expect(&["refresh", "--force"], 0);
    assert_eq!(mock.count_refreshes(), 2);
    let s = env.read_store();
    assert_ne!(
        s["accounts"][0]["refresh_token"], "rt-x",
        "the token rotated"
    );
    assert_eq!(s["accounts"][0]["fingerprint"], before, "stored for good");
    assert_eq!(list_json(&env)[0]["fingerprint"], before);
    let (status, _) = env.expect(&["status"], 0);
    assert!(
        status.contains(&format!("fp {}", before.as_str().unwrap_or(""))),
        "{status}"
    );

    // A new account gets its fingerprint when it is added, and keeps it too.
    let src = env.root.join("creds.json");
    let creds = json!({"access_token": "at-y", "refresh_token": "rt-y", "token_type": "Bearer",
                       "expiry_date": util::now_ms() - 1000});
    util::write_private(&src, &serde_json::to_vec(&creds).expect("json"));
    mock.add_account("rt-y", "at-y");
    let (out, _) = env.expect(&["import", src.to_str().unwrap_or(""), "--json"], 0);
    let imported = parse(&out);
    assert_eq!(imported["outcome"], "added");
    let fp_y = imported["account"]["fingerprint"].clone();
    env.expect(&["refresh", "--account", "2", "--force"], 0);
    assert_eq!(list_json(&env)[1]["fingerprint"], fp_y);
}

#[test]
fn a_disabled_account_stays_in_the_pool_out_of_rotation() {
    let env = Env::new();
    env.write_store(&store_with(3));
    let (out, err) = env.expect(&["disable", "1", "--json"], 0);
    assert_eq!(err, "");
    let v = parse(&out);
    assert_eq!(
        (v["changed"].clone(), v["account"]["state"].clone()),
        (json!(true), json!("disabled"))
    );
    assert_eq!(v["account"]["disabled"], true);
    assert_eq!(
        parse(&env.expect(&["disable", "1", "--json"], 0).0)["changed"],
        false
    );

    // Not served by rotation, whatever the strategy...
    assert_eq!(env.expect(&["token"], 0).0.trim(), "at-2");
    let mut rr = Env::new();
    rr.write_store(&store_with(3));
    rr.set("QWEN_CRED_ACCOUNT_SELECTION_STRATEGY", "round-robin");
    rr.expect(&["disable", "2"], 0);
    let served: Vec<String> = (0..4)
        .map(|_| rr.expect(&["token"], 0).0.trim().to_string())
        .collect();
    assert_eq!(served, ["at-3", "at-1", "at-3", "at-1"]);
    // ... but a pinned --account still gets it, with a warning.
    let (tok, err) = env.expect(&["token", "--account", "1"], 0);
    assert_eq!(tok.trim(), "at-1");
    assert!(
        err.contains("disabled") && err.contains("qwen-cred enable 1"),
        "{err}"
    );
    let (table, _) = env.expect(&["list"], 0);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("1 ") && l.contains("disabled")),
        "{table}"
    );

    // With every account disabled, exit 3 says which and how to bring one back.
    env.expect(&["disable", "2"], 0);
    env.expect(&["disable", "3"], 0);
    let (_, err) = env.expect(&["token"], 3);
    assert!(
        err.contains("disabled: 1, 2, 3") && err.contains("qwen-cred enable"),
        "{err}"
    );
    let (out, _) = env.expect(&["enable", "3", "--json"], 0);
    assert_eq!(parse(&out)["account"]["state"], "ok");
    assert_eq!(env.expect(&["token"], 0).0.trim(), "at-3");
    assert_eq!(
        env.read_store()["accounts"].as_array().map(Vec::len),
        Some(3)
    );
    assert!(env.read_store()["accounts"][2].get("disabled").is_none());
}

#[test]
fn reset_clears_a_cooldown_and_use_warns_about_one() {
    let env = Env::new();
    env.write_store(&store_with(2));
    // A quota body cools account 1 until the daily reset.
    env.expect(
        &["report-429", "--account", "1", "--body", &quota_body(&env)],
        0,
    );
    assert_eq!(env.expect(&["token"], 0).0.trim(), "at-2");
    let (_, err) = env.expect(&["use", "1"], 0);
    assert!(
        err.contains("cooling down until")
            && err.contains("quota")
            && err.contains("qwen-cred reset 1"),
        "{err}"
    );
    assert_eq!(
        env.expect(&["token"], 0).0.trim(),
        "at-2",
        "use does not clear it"
    );
    env.expect(&["use", "1"], 0);

    let (out, err) = env.expect(&["reset", "1", "--json"], 0);
    assert_eq!(err, "");
    let v = parse(&out);
    assert_eq!(v["cleared"], json!(["1"]));
    assert_eq!(v["accounts"][0]["state"], "current");
    assert_eq!(env.expect(&["token"], 0).0.trim(), "at-1");
    let a = &env.read_store()["accounts"][0];
    assert_eq!(a["rate_limit_resets_at"], Value::Null);
    // Its next 429 starts the backoff afresh: the first step, 1 s.
    env.expect(&["report-429", "--account", "1", "--no-wait"], 0);
    let a = env.read_store()["accounts"][0].clone();
    let left = a["rate_limit_resets_at"].as_i64().unwrap_or(0) - util::now_ms();
    assert!((0..=1000).contains(&left), "{a}");

    let (out, _) = env.expect(&["reset", "--all", "--json"], 0);
    assert_eq!(parse(&out)["accounts"].as_array().map(Vec::len), Some(2));
    let (_, err) = env.expect(&["reset", "--all"], 0);
    assert!(err.contains("no account was cooling down"), "{err}");
    env.expect(&["reset"], 2);
    env.expect(&["reset", "1", "--all"], 2);
    env.expect(&["reset", "nobody"], 2);
}

#[test]
fn status_shows_state_counts_and_the_last_error() {
    let mock = Mock::start();
    let mut env = Env::with_mock(&mock);
    env.set("QWEN_CRED_TOKEN_REFRESH_RETRY_DELAY_MS", "0");
    env.set("QWEN_CRED_TOKEN_REFRESH_RETRY_ATTEMPTS", "1");
    let mut s = store_with(3);
    s["accounts"][0]["total_requests"] = json!(100);
    // Counted on an earlier quota day: not today's.
    s["accounts"][0]["daily_requests"] = json!(50);
    s["accounts"][0]["daily_requests_since"] = json!(util::now_ms() - 3 * 86_400_000);
    s["accounts"][2]["status"] = json!("revoked");
    s["accounts"][2]["status_reason"] = json!("invalid_grant: Invalid refresh token");
    env.write_store(&s);
    for _ in 0..3 {
        env.expect(&["token"], 0);
    }
    mock.set_sticky_fault(Some(Fault::Status(503)));
    env.expect(&["refresh", "--account", "2", "--force"], 5);
    std::fs::write(
        env.config_dir().join("qwen-accounts.refresh-2.journal"),
        "{}",
    )
    .expect("journal");
    env.expect(&["disable", "2"], 0);

    let (out, _) = env.expect(&["status", "--json"], 0);
    let v = parse(&out);
    assert_eq!(v["current_account_id"], "1");
    assert_eq!(v["strategy"], "sticky");
    assert!(
        v["daily_reset_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{v}"
    );
    let a = &v["accounts"];
    assert_eq!(
        (
            a[0]["state"].clone(),
            a[0]["requests_today"].clone(),
            a[0]["requests_last_hour"].clone(),
            a[0]["total_requests"].clone()
        ),
        (json!("current"), json!(3), json!(3), json!(103))
    );
    assert_eq!(a[0]["last_error"], Value::Null);
    assert_eq!(a[1]["state"], "disabled");
    assert_eq!(a[1]["pending_journal"], true);
    assert!(
        a[1]["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("refresh failed") && e.contains("503")),
        "{}",
        a[1]
    );
    assert!(a[1]["last_error_at"].is_string());
    assert_eq!(a[2]["state"], "revoked");
    assert!(a[2]["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("Invalid refresh token")));
    for t in ["at-1", "at-2", "rt-1", "rt-2"] {
        assert!(!out.contains(t), "{t} leaked");
    }

    let (text, _) = env.expect(&["status"], 0);
    assert!(
        text.contains("3 since the daily reset, 3 in the last hour, 103 in total"),
        "{text}"
    );
    assert!(text.contains("qwen-cred enable 2"), "{text}");
    assert!(text.contains("pending in its journal"), "{text}");
    assert!(text.contains("refresh failed"), "{text}");
    assert!(
        text.contains("revoked (invalid_grant: Invalid refresh token): run qwen-cred login"),
        "{text}"
    );
    // A cooldown is shown with its end, its reason and the way to clear it.
    env.expect(
        &["report-429", "--account", "1", "--body", &quota_body(&env)],
        4,
    );
    let (text, _) = env.expect(&["status"], 0);
    assert!(
        text.contains("cooling down until")
            && text.contains("quota")
            && text.contains("qwen-cred reset 1"),
        "{text}"
    );
    assert!(text.contains("HTTP 429 reported (quota)"), "{text}");
}

#[test]
fn changing_commands_print_one_json_object() {
    let mock = Mock::start();
    mock.add_account("rt-2", "at-2");
    let mut env = Env::with_mock(&mock);
    env.set("QWEN_CRED_TOKEN_REFRESH_RETRY_DELAY_MS", "0");
    env.write_store(&store_with(3));

    let (out, err) = env.expect(&["use", "2", "--json"], 0);
    assert_eq!(err, "");
    let v = parse(&out);
    assert_eq!(v["changed"], true);
    assert_eq!(v["account"]["state"], "current");
    assert_eq!(
        parse(&env.expect(&["use", "2", "--json"], 0).0)["changed"],
        false
    );

    let (out, _) = env.expect(&["refresh", "--account", "1", "--json"], 0);
    let v = parse(&out);
    assert_eq!(v["results"][0]["id"], "1");
    assert_eq!(v["results"][0]["result"], "not_due");
    assert!(v["results"][0]["expires_at"].is_string());
    let (out, _) = env.expect(&["refresh", "--account", "2", "--force", "--json"], 0);
    let v = parse(&out);
    assert_eq!(v["results"][0]["result"], "refreshed");
    // A failure still prints its result, and keeps its exit code.
    mock.set_sticky_fault(Some(Fault::Status(503)));
    env.set("QWEN_CRED_TOKEN_REFRESH_RETRY_ATTEMPTS", "1");
    let (out, _) = env.expect(&["refresh", "--all", "--force", "--json"], 5);
    let results = parse(&out)["results"].clone();
    assert_eq!(results.as_array().map(Vec::len), Some(3));
    assert!(
        results
            .as_array()
            .into_iter()
            .flatten()
            .all(|r| r["result"] == "failed"),
        "{results}"
    );

    let (out, _) = env.expect(&["remove", "2", "3", "--json"], 0);
    assert_eq!(
        parse(&out),
        json!({"removed": ["2", "3"], "current_account_id": "1"})
    );

    let src = env.root.join("creds.json");
    let creds = json!({"access_token": "at-c", "refresh_token": "rt-c", "token_type": "Bearer",
                       "expiry_date": util::now_ms() + 3_600_000});
    util::write_private(&src, &serde_json::to_vec(&creds).expect("json"));
    let path = src.to_str().unwrap_or("");
    let (out, _) = env.expect(&["import", path, "--json"], 0);
    let v = parse(&out);
    assert_eq!(v["outcome"], "added");
    assert_eq!(v["account"]["id"], "2");
    assert_eq!(v["account"]["linked_file"], path);
    let (out, _) = env.expect(&["import", path, "--json", "--email", "c@example.com"], 0);
    let v = parse(&out);
    assert_eq!(
        (v["outcome"].clone(), v["account"]["email"].clone()),
        (json!("updated"), json!("c@example.com"))
    );
    assert!(!out.contains("at-c") && !out.contains("rt-c"));
}
