//! Named pools (issue 12): `--pool NAME` / `QWEN_CRED_POOL` select `qwen-accounts.NAME.json`
//! beside the default store, with locks and journals of its own; `opencode install --pool`
//! adds a provider served from that pool. Every test drives the real binary.

use crate::util::mock::Mock;
use crate::util::{self, account, store_with, text, Env};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn pool_store(env: &Env, pool: &str) -> PathBuf {
    env.config_dir().join(format!("qwen-accounts.{pool}.json"))
}

fn write_pool(env: &Env, pool: &str, v: &Value) {
    util::write_private(
        &pool_store(env, pool),
        &serde_json::to_vec_pretty(v).expect("json"),
    );
}

fn read_pool(env: &Env, pool: &str) -> Value {
    serde_json::from_slice(&std::fs::read(pool_store(env, pool)).expect("read pool store"))
        .expect("pool store parses")
}

/// Accounts `1..=n` of pool `coding`, tokens `ck-i` / `crt-i`, valid for two hours.
fn coding_store(n: usize) -> Value {
    let accounts: Vec<Value> = (1..=n)
        .map(|i| {
            account(
                &i.to_string(),
                &format!("ck-{i}"),
                &format!("crt-{i}"),
                7200,
            )
        })
        .collect();
    json!({"version": "1.0", "max_accounts": 10, "accounts": accounts, "current_account_id": "1"})
}

/// Every file of the config dir but those of pool `except` (`qwen-accounts.EXCEPT.*`), with
/// its bytes.
fn files_but(dir: &Path, except: &str) -> BTreeMap<String, Vec<u8>> {
    let prefix = format!("qwen-accounts.{except}.");
    std::fs::read_dir(dir)
        .expect("read config dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(&prefix) && !n.starts_with(&format!(".{prefix}")))
        .map(|n| {
            let bytes = std::fs::read(dir.join(&n)).unwrap_or_default();
            (n, bytes)
        })
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Holds an exclusive flock on `path` (created if missing) until the file is dropped, as a
/// qwen-cred inside its transaction would.
fn hold(path: &Path) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .expect("open lock");
    // SAFETY: flock on a descriptor this function owns.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    f
}

fn sh(env: &Env, script: &str) -> std::process::Output {
    env.command("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("sh")
}

#[test]
fn two_pools_live_side_by_side_and_never_touch_each_others_files() {
    let env = Env::new();
    env.write_store(&store_with(2));
    write_pool(&env, "coding", &coding_store(2));
    let dir = env.config_dir();
    let default_before = files_but(&dir, "coding");

    // Everything a user does with the coding pool, by flag before or after the command.
    let (out, _) = env.expect(&["token", "--pool", "coding"], 0);
    assert_eq!(out, "ck-1\n");
    env.expect(&["use", "--pool", "coding", "2"], 0);
    let (out, _) = env.expect(&["--pool", "coding", "token"], 0);
    assert_eq!(out, "ck-2\n");
    env.expect(&["report-429", "--pool", "coding", "--no-wait"], 0);
    let (out, _) = env.expect(&["token", "--pool", "coding"], 0);
    assert_eq!(out, "ck-1\n", "account 2 of pool coding cools down");
    env.expect(&["remove", "--pool", "coding", "2"], 0);
    let (out, _) = env.expect(&["list", "--pool", "coding", "--json"], 0);
    let list: Value = serde_json::from_str(&out).expect("list json");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["id"], "1");
    assert_eq!(list[0]["pool"], "coding");
    let (out, _) = env.expect(&["list", "--pool", "coding"], 0);
    assert!(
        out.starts_with(&format!(
            "pool coding: {}\n",
            pool_store(&env, "coding").display()
        )),
        "{out}"
    );
    env.expect(&["config", "--pool", "coding"], 0);

    // The default pool's files, its store and its lock among them, are as they were: not one
    // byte changed, nothing created.
    assert_eq!(files_but(&dir, "coding"), default_before);
    assert!(!dir.join("qwen-accounts.lock").exists());
    let coding = read_pool(&env, "coding");
    assert_eq!(coding["accounts"][0]["total_requests"], 2);
    assert_eq!(
        names(&dir),
        [
            "qwen-accounts.coding.json",
            "qwen-accounts.coding.lock",
            "qwen-accounts.json"
        ]
    );
    assert_eq!(util::mode(&pool_store(&env, "coding")), 0o600);

    // And the other way round: the default pool's commands leave pool coding alone.
    let coding_before = std::fs::read(pool_store(&env, "coding")).expect("read");
    let (out, _) = env.expect(&["token"], 0);
    assert_eq!(out, "at-1\n");
    env.expect(&["use", "2"], 0);
    env.expect(&["report-429", "--no-wait"], 0);
    let (out, _) = env.expect(&["list"], 0);
    assert!(
        out.starts_with("ID "),
        "the default pool's table is unchanged: {out}"
    );
    let (out, _) = env.expect(&["list", "--json"], 0);
    assert!(out.contains("\"pool\": \"default\""), "{out}");
    assert_eq!(
        std::fs::read(pool_store(&env, "coding")).expect("read"),
        coding_before
    );
}

#[test]
fn a_store_lock_held_on_one_pool_does_not_block_another() {
    let mut env = Env::new();
    env.set("QWEN_CRED_LOCK_TIMEOUT_SECONDS", "1");
    env.write_store(&store_with(1));
    write_pool(&env, "coding", &coding_store(1));
    let dir = env.config_dir();

    let held = hold(&dir.join("qwen-accounts.lock"));
    let (out, err) = env.expect(&["token", "--pool", "coding"], 0);
    assert_eq!(out, "ck-1\n");
    assert!(!err.contains("waiting"), "{err}");
    let (_, err) = env.expect(&["token"], 6);
    assert!(
        err.contains(&format!(
            "waiting for lock on {}",
            dir.join("qwen-accounts.lock").display()
        )),
        "{err}"
    );
    drop(held);

    let held = hold(&dir.join("qwen-accounts.coding.lock"));
    let (out, err) = env.expect(&["token"], 0);
    assert_eq!(out, "at-1\n");
    assert!(!err.contains("waiting"), "{err}");
    let (_, err) = env.expect(&["token", "--pool", "coding"], 6);
    assert!(
        err.contains("qwen-accounts.coding.lock") && err.contains("not acquired within 1 s"),
        "{err}"
    );
    drop(held);
}

/// Both pools have an expired account `1`. With the default pool's refresh lock of account 1
/// held, pool coding still refreshes its own account 1 at once, under its own refresh lock.
#[test]
fn refresh_locks_and_journals_are_per_pool() {
    let mock = Mock::start();
    let mut env = Env::with_mock(&mock);
    env.set("QWEN_CRED_LOCK_TIMEOUT_SECONDS", "1");
    env.set("QWEN_CRED_TOKEN_REFRESH_RETRY_DELAY_MS", "0");
    mock.add_account("rt-1", "at-1");
    mock.add_account("crt-1", "ck-1");
    env.write_store(
        &json!({"accounts": [account("1", "at-1", "rt-1", -60)], "current_account_id": "1"}),
    );
    write_pool(
        &env,
        "coding",
        &json!({"accounts": [account("1", "ck-1", "crt-1", -60)], "current_account_id": "1"}),
    );
    let dir = env.config_dir();
    let default_before = files_but(&dir, "coding");

    let held = hold(&dir.join("qwen-accounts.refresh-1.lock"));
    let (out, err) = env.expect(&["token", "--pool", "coding"], 0);
    assert!(!err.contains("waiting"), "{err}");
    let coding = read_pool(&env, "coding");
    let fresh = coding["accounts"][0]["access_token"].as_str().unwrap_or("");
    assert_eq!(out, format!("{fresh}\n"));
    assert_ne!(fresh, "ck-1");
    assert_eq!(mock.state(|s| s.started("crt-1")), 1);
    assert_eq!(mock.state(|s| s.started("rt-1")), 0);
    assert!(dir.join("qwen-accounts.coding.refresh-1.lock").exists());
    assert!(!dir.join("qwen-accounts.coding.refresh-1.journal").exists());
    // Nothing of the default pool was written (the lock file held here aside).
    let mut before = default_before;
    before.insert(
        "qwen-accounts.refresh-1.lock".into(),
        std::fs::read(dir.join("qwen-accounts.refresh-1.lock")).expect("read"),
    );
    assert_eq!(files_but(&dir, "coding"), before);
    // The default pool's account 1 does wait for its own refresh lock, and gives up.
    let (_, err) = env.expect(&["token"], 6);
    assert!(err.contains("account 1"), "{err}");
    assert_eq!(mock.state(|s| s.started("rt-1")), 0);
    drop(held);

    // A journal of pool coding's account 1 is pool coding's only.
    std::fs::write(
        dir.join("qwen-accounts.coding.refresh-1.journal"),
        r#"{"account_id": "1"}"#,
    )
    .expect("write journal");
    let (out, _) = env.expect(&["list"], 0);
    assert!(!out.contains("pending"), "{out}");
    let (out, _) = env.expect(&["list", "--pool", "coding"], 0);
    assert!(out.contains("new tokens pending in its journal"), "{out}");
}

#[test]
fn qwen_cred_pool_names_the_same_pool_as_the_flag() {
    let mut env = Env::new();
    env.write_store(&store_with(2));
    write_pool(&env, "coding", &coding_store(2));

    let json_of = |out: &str| -> Value { serde_json::from_str(out).expect("json") };
    let (by_flag, _) = env.expect(&["token", "--pool", "coding", "--format", "json"], 0);
    let (list_by_flag, _) = env.expect(&["list", "--pool", "coding", "--json"], 0);
    env.set("QWEN_CRED_POOL", "coding");
    let (by_env, _) = env.expect(&["token", "--format", "json"], 0);
    assert_eq!(json_of(&by_flag)["access_token"], "ck-1");
    assert_eq!(json_of(&by_env)["access_token"], "ck-1");
    assert_eq!(
        json_of(&by_env)["account_id"],
        json_of(&by_flag)["account_id"]
    );
    let (list_by_env, _) = env.expect(&["list", "--json"], 0);
    let mut a = json_of(&list_by_flag);
    let mut b = json_of(&list_by_env);
    // The second token call was counted in between.
    for v in [&mut a, &mut b] {
        for acct in v.as_array_mut().into_iter().flatten() {
            acct["total_requests"] = json!(0);
            acct["last_used_at"] = Value::Null;
        }
    }
    assert_eq!(a, b);
    assert_eq!(
        read_pool(&env, "coding")["accounts"][0]["total_requests"],
        2
    );
    // The flag wins over the environment; `default` names the default pool; both agreeing
    // is fine.
    let (out, _) = env.expect(&["token", "--pool", "default"], 0);
    assert_eq!(out, "at-1\n");
    let (out, _) = env.expect(&["--pool", "coding", "token", "--pool", "coding"], 0);
    assert_eq!(out, "ck-1\n");
    let (_, err) = env.expect(&["--pool", "coding", "token", "--pool", "default"], 2);
    assert!(err.contains("--pool is given twice"), "{err}");
    assert_eq!(env.read_store()["accounts"][0]["total_requests"], 1);
}

/// `token --format env` says which pool its account id belongs to, so that `report-429` in
/// the same shell reports the right account of the right pool; an account id from another
/// pool is never applied to this one.
#[test]
fn an_account_id_is_only_taken_for_its_own_pool() {
    let env = Env::new();
    env.write_store(&store_with(2));
    write_pool(&env, "coding", &coding_store(2));
    env.expect(&["use", "--pool", "coding", "2"], 0);
    let default_before = std::fs::read(env.store_path()).expect("read");

    let bin = util::BIN;
    let o = sh(
        &env,
        &format!("eval \"$('{bin}' token --pool coding --format env)\" && printf '%s|%s' \"$QWEN_CRED_POOL\" \"$QWEN_CRED_ACCOUNT_ID\" && '{bin}' report-429 --no-wait"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "coding|2");
    let coding = read_pool(&env, "coding");
    assert!(
        coding["accounts"][1]["rate_limit_resets_at"].is_i64(),
        "{coding}"
    );
    assert!(coding["accounts"][0]["rate_limit_resets_at"].is_null());
    assert_eq!(
        std::fs::read(env.store_path()).expect("read"),
        default_before
    );

    // The default pool's `--format env` says so too.
    let (out, _) = env.expect(&["token", "--format", "env"], 0);
    assert!(out.contains("\nexport QWEN_CRED_POOL='default'\n"), "{out}");

    // QWEN_CRED_ACCOUNT_ID=2 of the default pool (no QWEN_CRED_POOL) is not account 2 of
    // pool other: report-429 --pool other reports other's current account, 1.
    write_pool(&env, "other", &coding_store(2));
    let o = sh(
        &env,
        &format!("QWEN_CRED_ACCOUNT_ID=2 '{bin}' report-429 --pool other --no-wait"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let other = read_pool(&env, "other");
    assert!(
        other["accounts"][0]["rate_limit_resets_at"].is_i64(),
        "{other}"
    );
    assert!(
        other["accounts"][1]["rate_limit_resets_at"].is_null(),
        "{other}"
    );
}

#[test]
fn a_bad_pool_name_is_exit_2_and_creates_nothing() {
    let mut env = Env::new();
    env.write_store(&store_with(1));
    let dir = env.config_dir();
    let before = files_but(&dir, "-");
    let long = "p".repeat(65);
    for name in [
        "a.b",
        "../x",
        "a/b",
        "/tmp/x",
        "-x",
        "_x",
        "x y",
        "é",
        "refresh-1",
        "REFRESH-x",
        long.as_str(),
        "",
    ] {
        for args in [
            vec!["token", "--pool", name],
            vec!["--pool", name, "list"],
            vec!["opencode", "install", "--pool", name, "--provider", "p"],
        ] {
            let (out, err) = env.expect(&args, 2);
            assert!(out.is_empty(), "{args:?}: {out}");
            assert!(err.contains("invalid pool name"), "{args:?}: {err}");
            // One line, and the usage hint every usage error ends with.
            let lines: Vec<&str> = err.trim_end().lines().collect();
            assert!(lines.len() <= 2, "{args:?}: {err}");
            assert!(
                lines[1..].iter().all(|l| l.contains("qwen-cred help")),
                "{err}"
            );
        }
        if name.is_empty() {
            continue; // an empty variable is an unset one
        }
        env.set("QWEN_CRED_POOL", name);
        let (out, err) = env.expect(&["token"], 2);
        assert!(out.is_empty(), "{name}: {out}");
        assert!(
            err.starts_with("qwen-cred: QWEN_CRED_POOL: invalid pool name"),
            "{name}: {err}"
        );
        // The flag does not make a bad variable good: it is still a mistake to fix.
        env.expect(&["token", "--pool", "default"], 2);
        env.vars.retain(|(k, _)| k != "QWEN_CRED_POOL");
    }
    assert_eq!(files_but(&dir, "-"), before);
    assert!(!dir.join("plugin").exists());
}

#[test]
fn the_qwen_cli_login_stays_in_the_default_pool() {
    let env = Env::new();
    let creds = json!({
        "access_token": "at-cli", "refresh_token": "rt-cli", "token_type": "Bearer",
        "resource_url": "portal.qwen.ai", "expiry_date": util::now_ms() + 7_200_000,
    });
    util::write_private(
        &env.qwen_dir().join("oauth_creds.json"),
        &serde_json::to_vec(&creds).expect("json"),
    );
    let (_, err) = env.expect(&["token", "--pool", "coding"], 3);
    assert!(
        err.contains("qwen-cred login") && err.contains("--pool coding"),
        "{err}"
    );
    let (_, err) = env.expect(&["import", "--pool", "coding"], 2);
    assert!(
        err.contains("default pool only") && err.contains("qwen-cred login --pool coding"),
        "{err}"
    );
    assert!(!pool_store(&env, "coding").exists());
    // The default pool imports it as it always did.
    let (out, _) = env.expect(&["token"], 0);
    assert_eq!(out, "at-cli\n");
}

/// `token` in pool coding starts its detached `refresh --due` in pool coding, not in the
/// default pool (whose due account would otherwise be refreshed).
#[test]
fn the_background_refresh_stays_in_its_pool() {
    let mock = Mock::start();
    let mut env = Env::with_mock(&mock);
    env.set("QWEN_CRED_TOKEN_REFRESH_RETRY_DELAY_MS", "0");
    for (rt, at) in [
        ("rt-1", "at-1"),
        ("rt-2", "at-2"),
        ("crt-1", "ck-1"),
        ("crt-2", "ck-2"),
    ] {
        mock.add_account(rt, at);
    }
    env.write_store(&json!({"accounts": [account("1", "at-1", "rt-1", 7200), account("2", "at-2", "rt-2", 600)], "current_account_id": "1"}));
    write_pool(
        &env,
        "coding",
        &json!({"accounts": [account("1", "ck-1", "crt-1", 7200), account("2", "ck-2", "crt-2", 600)], "current_account_id": "1"}),
    );
    let default_before = std::fs::read(env.store_path()).expect("read");
    let (out, _) = env.expect(&["token", "--pool", "coding"], 0);
    assert_eq!(out, "ck-1\n");
    assert!(
        mock.wait_until(std::time::Duration::from_secs(20), |s| s.finished("crt-2")
            == 1),
        "the child refreshes account 2 of pool coding"
    );
    assert!(
        util::wait_for(20, || read_pool(&env, "coding")["accounts"][1]
            ["access_token"]
            != "ck-2"),
        "the child stored the new token in pool coding"
    );
    assert_eq!(mock.state(|s| s.started("rt-2")), 0);
    assert_eq!(
        std::fs::read(env.store_path()).expect("read"),
        default_before
    );
}

/// Every command takes `--pool`, after its name as before it.
#[test]
fn every_command_takes_the_pool_flag() {
    let env = Env::new();
    let (top, _) = env.expect(&["--help"], 0);
    assert!(top.contains("--pool"), "{top}");
    let mut todo: Vec<Vec<String>> = subcommands(&top).into_iter().map(|c| vec![c]).collect();
    assert!(todo.len() >= 5, "{top}");
    while let Some(path) = todo.pop() {
        let mut args = vec!["help"];
        args.extend(path.iter().map(String::as_str));
        let (help, _) = env.expect(&args, 0);
        let subs = subcommands(&help);
        // A completion script is the same for every pool.
        if subs.is_empty() && path != ["completions"] {
            assert!(help.contains("--pool"), "{path:?}: {help}");
        }
        for sub in subs {
            let mut p = path.clone();
            p.push(sub);
            todo.push(p);
        }
    }
}

/// The command names listed under `Commands:` in an argh help text.
fn subcommands(help: &str) -> Vec<String> {
    help.split("Commands:")
        .nth(1)
        .unwrap_or("")
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

#[test]
fn opencode_install_adds_a_provider_served_from_the_pool() {
    let env = Env::new();
    let dir = env.config_dir();
    let config = dir.join("opencode.json");
    let auth_file = env.root.join("home/.local/share/opencode/auth.json");
    env.expect(&["opencode", "install", "--write-config"], 0);
    let with_qwen = std::fs::read(&config).expect("read");
    let qwen: Value = serde_json::from_slice(&with_qwen).expect("json");

    let args = [
        "opencode",
        "install",
        "--pool",
        "coding",
        "--provider",
        "qwen-coding-plan",
        "--base-url",
        "https://coding-intl.dashscope.aliyuncs.com/v1",
        "--model",
        "qwen3-coder-plus",
        "--model",
        "qwen3-coder-next",
    ];
    let (out, _) = env.expect(&args[..], 0);
    let expected = json!({
        "npm": "@ai-sdk/openai-compatible",
        "name": "Qwen, pool coding (qwen-cred)",
        "options": {
            "baseURL": "https://coding-intl.dashscope.aliyuncs.com/v1",
            "qwenCredPool": "coding",
        },
        "models": {
            "qwen3-coder-plus": {"name": "qwen3-coder-plus"},
            "qwen3-coder-next": {"name": "qwen3-coder-next"},
        },
    });
    let shown: Value = serde_json::from_str(&out).expect("stdout is the provider block");
    assert_eq!(shown, json!({"provider": {"qwen-coding-plan": expected}}));
    assert_eq!(
        std::fs::read(&config).expect("read"),
        with_qwen,
        "printed only"
    );

    let mut write = args.to_vec();
    write.push("--write-config");
    let (_, err) = env.expect(&write, 0);
    assert!(err.contains("qwen-cred login --pool coding"), "{err}");
    let merged: Value =
        serde_json::from_slice(&std::fs::read(&config).expect("read")).expect("json");
    assert_eq!(merged["provider"]["qwen"], qwen["provider"]["qwen"]);
    assert_eq!(merged["provider"]["qwen-coding-plan"], expected);
    let providers: Vec<&String> = merged["provider"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert_eq!(providers, ["qwen", "qwen-coding-plan"]);
    let auth: Value =
        serde_json::from_slice(&std::fs::read(&auth_file).expect("auth.json")).expect("json");
    let marker = json!({"type": "oauth", "access": "qwen-cred", "refresh": "qwen-cred", "expires": 4102444800000_i64});
    assert_eq!(auth["qwen"], marker);
    assert_eq!(auth["qwen-coding-plan"], marker);
    // The same plugin serves both: one file.
    assert_eq!(names(&dir.join("plugin")), ["qwen-cred.js"]);
    // No pool store is made by installing.
    assert!(!pool_store(&env, "coding").exists());

    // Idempotent; QWEN_CRED_POOL is --pool here too.
    let before = std::fs::read(&config).expect("read");
    let (_, err) = env.expect(&write, 0);
    assert!(
        err.contains("already has a \"qwen-coding-plan\" provider"),
        "{err}"
    );
    assert_eq!(std::fs::read(&config).expect("read"), before);
    let mut by_env = Env::new();
    by_env.set("QWEN_CRED_POOL", "coding");
    let (out, _) = by_env.expect(
        &args[..2]
            .iter()
            .chain(&args[4..])
            .copied()
            .collect::<Vec<_>>(),
        0,
    );
    assert_eq!(
        serde_json::from_str::<Value>(&out).ok(),
        Some(shown.clone())
    );

    // No --model: the Qwen OAuth models; no --base-url: the Qwen OAuth API.
    let (out, _) = env.expect(
        &[
            "opencode",
            "install",
            "--pool",
            "oauth2",
            "--provider",
            "qwen-2",
        ],
        0,
    );
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        v["provider"]["qwen-2"]["options"]["baseURL"],
        "https://portal.qwen.ai/v1"
    );
    assert_eq!(v["provider"]["qwen-2"]["options"]["qwenCredPool"], "oauth2");
    assert!(v["provider"]["qwen-2"]["models"]["coder-model"].is_object());

    // Mistakes are exit 2 and change nothing.
    for (bad, says) in [
        (
            vec!["opencode", "install", "--pool", "coding"],
            "needs --provider",
        ),
        (
            vec!["opencode", "install", "--provider", "x"],
            "go with --pool",
        ),
        (
            vec!["opencode", "install", "--model", "m"],
            "go with --pool",
        ),
        (
            vec![
                "opencode",
                "install",
                "--pool",
                "coding",
                "--provider",
                "qwen",
            ],
            "default pool's",
        ),
        (
            vec![
                "opencode",
                "install",
                "--pool",
                "coding",
                "--provider",
                "a b",
            ],
            "invalid provider id",
        ),
        (
            vec![
                "opencode",
                "install",
                "--pool",
                "coding",
                "--provider",
                "p",
                "--base-url",
                "http://example.com/v1",
            ],
            "--base-url",
        ),
        (
            vec![
                "opencode",
                "install",
                "--pool",
                "coding",
                "--provider",
                "p",
                "--model",
                "two words",
            ],
            "invalid model id",
        ),
    ] {
        let mut a = bad.clone();
        a.push("--write-config");
        let (out, err) = env.expect(&a, 2);
        assert!(out.is_empty() && err.contains(says), "{bad:?}: {err}");
    }
    assert_eq!(std::fs::read(&config).expect("read"), before);
}
