//! The store, the config, the lock and the account-management commands.

use crate::util::{self, mode, store_with, Env};
use serde_json::{json, Value};

#[test]
fn version_help_and_usage_errors() {
    let env = Env::new();
    let (out, _) = env.expect(&["--version"], 0);
    assert_eq!(
        out.trim(),
        format!("qwen-cred {}", env!("CARGO_PKG_VERSION"))
    );
    let (out, _) = env.expect(&["help", "import"], 0);
    assert!(out.contains("--email"), "{out}");
    let (_, err) = env.expect(&["list", "--bogus"], 2);
    assert!(
        err.starts_with("qwen-cred: ") && err.contains("--bogus"),
        "{err}"
    );
    env.expect(&[], 2);
    env.expect(&["remove"], 2);
    env.expect(&["remove", "1", "--all"], 2);
}

#[test]
fn unknown_fields_survive_a_rewrite() {
    let env = Env::new();
    let mut s = store_with(2);
    s["written_by"] = json!({"tool": "other", "n": [1, 2, 3]});
    s["accounts"][1]["note"] = json!("keep me");
    s["accounts"][1]["nested"] = json!({"a": null, "b": 1.5});
    env.write_store(&s);
    env.expect(&["use", "2"], 0);
    let after = env.read_store();
    assert_eq!(after["current_account_id"], "2");
    assert_eq!(after["written_by"], s["written_by"]);
    assert_eq!(after["accounts"][1]["note"], "keep me");
    assert_eq!(after["accounts"][1]["nested"], s["accounts"][1]["nested"]);
    // Every seed field keeps its value.
    for (i, a) in s["accounts"].as_array().expect("array").iter().enumerate() {
        for (k, v) in a.as_object().expect("object") {
            assert_eq!(&after["accounts"][i][k], v, "accounts[{i}].{k}");
        }
    }
}

#[test]
fn use_of_the_current_account_does_not_rewrite_the_file() {
    let env = Env::new();
    let s = store_with(2);
    let bytes = serde_json::to_vec(&s).expect("json");
    util::write_private(&env.store_path(), &bytes);
    env.expect(&["use", "1"], 0);
    assert_eq!(std::fs::read(env.store_path()).expect("read"), bytes);
}

/// Each case: a store text, the words its error must contain. Exit 6, file untouched.
#[test]
fn invalid_stores_are_refused_by_name_and_left_byte_for_byte() {
    let acct = |patch: Value| {
        let mut a = util::account("1", "at-1", "rt-1", 3600);
        for (k, v) in patch.as_object().expect("object") {
            a[k] = v.clone();
        }
        json!({"version": "1.0", "accounts": [util::account("9", "at-9", "rt-9", 3600), a]})
            .to_string()
    };
    let eleven: Vec<Value> = (1..=11)
        .map(|i| util::account(&i.to_string(), "a", &format!("r{i}"), 10))
        .collect();
    let cases: Vec<(String, &str)> = vec![
        (
            "{\"version\": \"1.0\", \"accounts\": [".into(),
            "not valid JSON",
        ),
        ("[]".into(), "expected a JSON object"),
        (
            json!({"version": "2.0", "accounts": []}).to_string(),
            "newer",
        ),
        (
            json!({"version": 1, "accounts": []}).to_string(),
            "version: expected a string",
        ),
        (
            json!({"accounts": {}}).to_string(),
            "accounts: expected an array",
        ),
        (
            json!({"accounts": [1]}).to_string(),
            "accounts[0]: expected an object",
        ),
        (
            acct(json!({"expiry_date": "soon"})),
            "accounts[1].expiry_date: expected a number",
        ),
        (acct(json!({"expiry_date": -5})), "accounts[1].expiry_date"),
        (
            acct(json!({"expiry_date": 1e300})),
            "accounts[1].expiry_date",
        ),
        (acct(json!({"id": null})), "accounts[1].id: expected"),
        (acct(json!({"id": 1})), "accounts[1].id: expected"),
        (acct(json!({"id": "9"})), "duplicate id \"9\""),
        (
            acct(json!({"access_token": null})),
            "accounts[1].access_token",
        ),
        (
            acct(json!({"refresh_token": ""})),
            "accounts[1].refresh_token",
        ),
        (
            acct(json!({"total_requests": "many"})),
            "accounts[1].total_requests",
        ),
        (acct(json!({"is_primary": "yes"})), "accounts[1].is_primary"),
        (acct(json!({"status": "paused"})), "accounts[1].status"),
        (
            acct(json!({"rate_limit_resets_at": "later"})),
            "accounts[1].rate_limit_resets_at",
        ),
        (
            json!({"max_accounts": 50, "accounts": []}).to_string(),
            "max_accounts",
        ),
        (json!({"accounts": eleven}).to_string(), "11 accounts"),
        ("\u{feff}{}".into(), "byte order mark"),
    ];
    for (body, needle) in cases {
        let env = Env::new();
        util::write_private(&env.store_path(), body.as_bytes());
        for args in [&["list"][..], &["use", "1"], &["remove", "--all"]] {
            let (_, err) = env.expect(args, 6);
            assert!(err.contains(needle), "{args:?} on {body}: {err}");
            assert!(err.contains("qwen-accounts.json"), "names the file: {err}");
            assert!(
                !err.contains("at-1") && !err.contains("rt-1"),
                "no token in: {err}"
            );
        }
        assert_eq!(
            std::fs::read(env.store_path()).expect("read"),
            body.as_bytes()
        );
    }
}

#[test]
fn invalid_utf8_and_non_files_are_refused() {
    let env = Env::new();
    util::write_private(&env.store_path(), b"{\"version\": \"1.0\xff\"}");
    let (_, err) = env.expect(&["use", "1"], 6);
    assert!(err.contains("UTF-8"), "{err}");
    assert_eq!(
        std::fs::read(env.store_path()).expect("read"),
        b"{\"version\": \"1.0\xff\"}"
    );

    let env = Env::new();
    std::fs::create_dir(env.store_path()).expect("mkdir");
    let (_, err) = env.expect(&["list"], 6);
    assert!(err.contains("not a regular file"), "{err}");

    let env = Env::new();
    let elsewhere = env.root.join("elsewhere.json");
    util::write_private(
        &elsewhere,
        serde_json::to_vec(&store_with(1)).expect("json").as_slice(),
    );
    std::os::unix::fs::symlink(&elsewhere, env.store_path()).expect("symlink");
    let (_, err) = env.expect(&["use", "1"], 6);
    assert!(err.contains("symbolic link"), "{err}");
    assert!(std::fs::symlink_metadata(env.store_path())
        .expect("stat")
        .file_type()
        .is_symlink());
}

#[test]
fn empty_or_missing_store_is_an_empty_pool() {
    let env = Env::new();
    let (out, _) = env.expect(&["list", "--json"], 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json"),
        json!([])
    );
    util::write_private(&env.store_path(), b"  \n");
    let (out, _) = env.expect(&["list", "--json"], 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json"),
        json!([])
    );
}

fn write_qwen_creds(path: &std::path::Path, access: &str, refresh: &str) {
    let v = json!({"access_token": access, "refresh_token": refresh, "token_type": "Bearer",
                   "resource_url": "portal.qwen.ai", "expiry_date": util::now_ms() + 3_600_000});
    util::write_private(path, &serde_json::to_vec(&v).expect("json"));
}

#[test]
fn import_adds_a_linked_account_once_and_leaves_the_source_alone() {
    let env = Env::new();
    let src = env.qwen_dir().join("oauth_creds.json");
    write_qwen_creds(&src, "at-cli", "rt-cli");
    let before = std::fs::read(&src).expect("read");
    env.expect(&["import", "--email", "me@example.com"], 0);
    let (_, err) = env.expect(&["import"], 0);
    assert!(err.contains("already account 1"), "{err}");
    assert_eq!(std::fs::read(&src).expect("read"), before);
    let s = env.read_store();
    assert_eq!(s["accounts"].as_array().map(Vec::len), Some(1));
    assert_eq!(s["accounts"][0]["email"], "me@example.com");
    assert_eq!(s["accounts"][0]["is_primary"], true);
    assert_eq!(s["current_account_id"], "1");
    let linked = s["accounts"][0]["linked_file"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(linked.ends_with("qwen/oauth_creds.json"), "{linked}");

    let (_, err) = env.expect(
        &[
            "import",
            env.root.join("missing.json").to_str().unwrap_or(""),
        ],
        6,
    );
    assert!(err.contains("missing.json"), "{err}");
}

#[test]
fn the_eleventh_account_is_refused_with_the_way_out() {
    let env = Env::new();
    env.write_store(&store_with(10));
    let before = std::fs::read(env.store_path()).expect("read");
    let src = env.root.join("creds.json");
    write_qwen_creds(&src, "at-new", "rt-new");
    let (_, err) = env.expect(&["import", src.to_str().unwrap_or("")], 2);
    assert!(
        err.contains("full") && err.contains("user10@example.com"),
        "{err}"
    );
    assert!(err.contains("--replace") && err.contains("remove"), "{err}");
    assert_eq!(std::fs::read(env.store_path()).expect("read"), before);
}

#[test]
fn list_shows_labels_and_states_but_never_a_token() {
    let env = Env::new();
    let mut s = store_with(3);
    s["accounts"][1]["email"] = json!("");
    s["accounts"][2]["status"] = json!("revoked");
    s["accounts"][0]["rate_limit_resets_at"] = json!(util::now_ms() + 600_000);
    s["accounts"][0]["rate_limit_reason"] = json!("quota");
    env.write_store(&s);
    let (table, _) = env.expect(&["list"], 0);
    let (js, _) = env.expect(&["list", "--json"], 0);
    for t in ["at-1", "at-2", "at-3", "rt-1", "rt-2", "rt-3"] {
        assert!(!table.contains(t) && !js.contains(t), "token {t} leaked");
    }
    assert!(
        table.contains("cooling down until") && table.contains("(quota)"),
        "{table}"
    );
    assert!(table.contains("revoked: run qwen-cred login"), "{table}");
    assert!(table.contains(" fp "), "{table}");
    let v: Value = serde_json::from_str(&js).expect("json");
    assert_eq!(v[0]["state"], "cooling_down");
    assert_eq!(v[1]["state"], "ok");
    assert_eq!(v[2]["state"], "revoked");
    assert_eq!(v[1]["fingerprint"].as_str().map(str::len), Some(8));
}

#[test]
fn use_and_remove_by_id_and_email() {
    let env = Env::new();
    env.write_store(&store_with(3));
    env.expect(&["use", "user3@example.com"], 0);
    assert_eq!(env.read_store()["current_account_id"], "3");
    let (_, err) = env.expect(&["use", "nobody"], 2);
    assert!(err.contains("no account \"nobody\""), "{err}");
    // A typo anywhere removes nothing.
    env.expect(&["remove", "1", "zzz"], 2);
    assert_eq!(
        env.read_store()["accounts"].as_array().map(Vec::len),
        Some(3)
    );
    env.expect(&["remove", "3", "1"], 0);
    let s = env.read_store();
    assert_eq!(s["accounts"].as_array().map(Vec::len), Some(1));
    assert_eq!(s["current_account_id"], "2");
    env.expect(&["remove", "--all"], 0);
    assert_eq!(env.read_store()["accounts"], json!([]));
}

#[test]
fn files_are_private_and_a_loose_store_is_tightened_once() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    std::fs::remove_dir(env.config_dir()).expect("rmdir");
    let src = env.root.join("creds.json");
    write_qwen_creds(&src, "at-x", "rt-x");
    env.expect(&["import", src.to_str().unwrap_or("")], 0);
    assert_eq!(mode(&env.config_dir()), 0o700);
    assert_eq!(mode(&env.store_path()), 0o600);

    std::fs::set_permissions(env.store_path(), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let (_, err) = env.expect(&["list"], 0);
    assert!(err.contains("mode is now 0600"), "{err}");
    assert_eq!(mode(&env.store_path()), 0o600);
    let (_, err) = env.expect(&["list"], 0);
    assert!(err.is_empty(), "{err}");
}

#[test]
fn a_held_lock_times_out_with_exit_6() {
    let mut env = Env::new();
    env.write_store(&store_with(2));
    env.set("QWEN_CRED_LOCK_TIMEOUT_SECONDS", "1");
    let lock_path = env.config_dir().join("qwen-accounts.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .expect("open");
    let mut lock = fd_lock::RwLock::new(file);
    let guard = lock.try_write().expect("lock");
    let (_, err) = env.expect(&["use", "2"], 6);
    assert!(
        err.contains("waiting for lock on") && err.contains("qwen-accounts.lock"),
        "{err}"
    );
    assert!(err.contains("not acquired within 1 s"), "{err}");
    assert_eq!(env.read_store()["current_account_id"], "1");
    drop(guard);
    env.expect(&["use", "2"], 0);
    assert_eq!(env.read_store()["current_account_id"], "2");
}

#[test]
fn config_sources_env_over_file_over_default() {
    let mut env = Env::new();
    env.write_config(&json!({"hybrid_rotation_requests": 7, "lock_timeout_seconds": 9}));
    env.set("QWEN_CRED_LOCK_TIMEOUT_SECONDS", "3");
    let (out, _) = env.expect(&["config", "--json"], 0);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        v["hybrid_rotation_requests"],
        json!({"value": 7, "source": "file"})
    );
    assert_eq!(
        v["lock_timeout_seconds"],
        json!({"value": 3, "source": "env"})
    );
    assert_eq!(
        v["account_selection_strategy"],
        json!({"value": "sticky", "source": "default"})
    );
    let (table, _) = env.expect(&["config"], 0);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("lock_timeout_seconds") && l.ends_with("(env)")),
        "{table}"
    );

    env.set("QWEN_CRED_ACCOUNT_SELECTION_STRATEGY", "random");
    let (_, err) = env.expect(&["list"], 6);
    assert!(
        err.contains("QWEN_CRED_ACCOUNT_SELECTION_STRATEGY") && err.contains("random"),
        "{err}"
    );

    // An unknown key is a warning naming the key meant, not a failure; the value is not used.
    let env = Env::new();
    env.write_config(&json!({"lock_timeout_secs": 1}));
    let (out, err) = env.expect(&["config", "--json"], 0);
    assert!(
        err.starts_with("qwen-cred: ")
            && err.lines().count() == 1
            && err.contains("qwen.json: unknown key \"lock_timeout_secs\" ignored")
            && err.contains("did you mean \"lock_timeout_seconds\"?"),
        "{err}"
    );
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["lock_timeout_seconds"]["source"], "default");
    // The schema the warnings point to is there even while the config is broken.
    let (schema, _) = env.expect(&["config", "--schema"], 0);
    assert!(schema.contains("lock_timeout_seconds"));
    env.write_config(&json!({"oauth_base_url": "http://example.com"}));
    let (_, err) = env.expect(&["config"], 6);
    assert!(
        err.contains("oauth_base_url") && err.contains("http://example.com"),
        "{err}"
    );
}

/// The schema is a well-formed draft 2020-12 object schema whose defaults are exactly what
/// `config` reports with no file and no env, and each default satisfies its own constraints.
#[test]
fn config_schema_matches_the_defaults() {
    let env = Env::new();
    let (schema, _) = env.expect(&["config", "--schema"], 0);
    let schema: Value = serde_json::from_str(&schema).expect("schema is JSON");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["type"], "object");
    // `$schema` and unknown keys are allowed (the latter with a warning): the schema must not
    // make an editor reject a file qwen-cred accepts.
    assert!(schema.get("additionalProperties").is_none(), "{schema}");
    let (cfg, _) = env.expect(&["config", "--json"], 0);
    let cfg: Value = serde_json::from_str(&cfg).expect("json");
    let props = schema["properties"].as_object().expect("properties");
    assert_eq!(props.len(), cfg.as_object().map(|m| m.len()).unwrap_or(0));
    for (k, p) in props {
        let d = &p["default"];
        assert_eq!(&cfg[k]["value"], d, "{k}");
        assert!(p["description"].is_string(), "{k}");
        match p["type"].as_str() {
            Some("boolean") => assert!(d.is_boolean(), "{k}"),
            Some("integer") => {
                let n = d.as_i64().expect("integer default");
                assert!(p["minimum"].as_i64().is_some_and(|m| m <= n), "{k}");
                assert!(p["maximum"].as_i64().is_some_and(|m| m >= n), "{k}");
            }
            Some("string") => {
                assert!(d.is_string(), "{k}");
                if let Some(e) = p["enum"].as_array() {
                    assert!(e.contains(d), "{k}");
                }
            }
            other => panic!("{k}: unexpected type {other:?}"),
        }
        // A value the schema refuses is refused by qwen-cred too.
        let bad = match p["type"].as_str() {
            Some("boolean") => json!("maybe"),
            Some("integer") => json!(p["maximum"].as_i64().unwrap_or(0) + 1),
            _ => json!(7),
        };
        env.write_config(&json!({ k: bad }));
        let (_, err) = env.expect(&["config"], 6);
        assert!(err.contains(k.as_str()), "{k}: {err}");
    }
}

/// 8 processes import, switch and remove at once: every import lands, every remove lands.
#[test]
fn concurrent_commands_lose_no_update() {
    let env = Env::new();
    util::run_all_ok((0..8).map(|i| {
        let src = env.root.join(format!("creds-{i}.json"));
        write_qwen_creds(&src, &format!("at-c{i}"), &format!("rt-c{i}"));
        env.cmd(&["import", src.to_str().unwrap_or("")])
    }));
    let s = env.read_store();
    let accts = s["accounts"].as_array().cloned().unwrap_or_default();
    assert_eq!(accts.len(), 8, "an import was lost");
    let mut ids: Vec<String> = accts
        .iter()
        .map(|a| a["id"].as_str().unwrap_or("").to_string())
        .collect();
    ids.sort_by_key(|i| i.parse::<u32>().unwrap_or(0));
    assert_eq!(ids, (1..=8).map(|i| i.to_string()).collect::<Vec<_>>());

    // Removes of 1..=4 race with `use` of 5..=8.
    util::run_all_ok((1..=8).map(|i: u32| {
        let id = i.to_string();
        env.cmd(&[if i <= 4 { "remove" } else { "use" }, id.as_str()])
    }));
    let s = env.read_store();
    let left: Vec<&str> = s["accounts"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(left, ["5", "6", "7", "8"]);
    assert!(["5", "6", "7", "8"].contains(&s["current_account_id"].as_str().unwrap_or("")));
}

/// Every subcommand and every flag that `--help` shows is in the man page.
#[test]
fn the_man_page_covers_every_command_and_flag() {
    let man = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/qwen-cred.1"))
        .expect("man page");
    let man = man.replace("\\-", "-");
    for sec in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "COMMANDS",
        "OPTIONS",
        "EXIT STATUS",
        "ENVIRONMENT",
        "FILES",
        "EXAMPLES",
    ] {
        assert!(
            man.contains(&format!(".SH {sec}")) || man.contains(&format!(".SH \"{sec}\"")),
            "section {sec}"
        );
    }
    let env = Env::new();
    let (top, _) = env.expect(&["--help"], 0);
    let commands = subcommands(&top);
    assert!(commands.len() >= 5, "{top}");
    // Each command, and each subcommand of one (`opencode install`), with all of its flags.
    let mut todo: Vec<Vec<String>> = commands.into_iter().map(|c| vec![c]).collect();
    let mut checked = 0;
    while let Some(path) = todo.pop() {
        let name = path.join(" ");
        assert!(
            man.contains(&format!("qwen-cred {name}"))
                || man.contains(&format!(".B {}", path[path.len() - 1])),
            "command {name}"
        );
        let mut args = vec!["help"];
        args.extend(path.iter().map(String::as_str));
        let (help, _) = env.expect(&args, 0);
        for flag in help.split_whitespace().filter(|w| w.starts_with("--")) {
            let flag = flag.trim_end_matches(',');
            assert!(man.contains(flag), "{name} {flag} missing from man page");
        }
        for sub in subcommands(&help) {
            let mut p = path.clone();
            p.push(sub);
            todo.push(p);
        }
        checked += 1;
    }
    assert!(checked > 10, "{checked} commands checked");
}

/// `mandoc -T lint -W warning` finds nothing to warn about in the man page.
#[test]
fn the_man_page_passes_mandoc_lint() {
    let Some(mandoc) = util::program("QWEN_CRED_TEST_MANDOC", "mandoc") else {
        return;
    };
    let page = concat!(env!("CARGO_MANIFEST_DIR"), "/man/qwen-cred.1");
    let o = Env::new()
        .command(mandoc)
        .args(["-T", "lint", "-W", "warning", page])
        .output()
        .expect("run mandoc");
    let report = format!("{}{}", util::text(&o.stdout), util::text(&o.stderr));
    assert!(o.status.success() && report.is_empty(), "{report}");
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
