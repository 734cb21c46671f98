//! Robustness (issue 5): `kill -9` at moments spread over store writes, concurrent callers
//! that must lose no update, a corpus of malformed stores and configs (`tests/corpus/`), OAuth
//! server faults, secret hygiene (no token in any argv, environment, stderr or `list`; token
//! files 0600 at every moment) and lock behaviour when a holder dies.
//!
//! No random generator: the kill delays and the mix of calls are fixed schedules that spread
//! evenly over their range, and the scheduler supplies the interleavings. The parsers'
//! randomised tests are property tests next to each parser (README, Property tests).

use crate::util::mock::{Approval, Fault, Mock, Outcome};
use crate::util::{self, account, mode, store_with, text, Env};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `i`-th of a sequence that visits every value of `0..n` once in each `n` steps, in
/// a scattered order (`step` and `n` coprime), starting at `offset`.
fn spread(i: u64, n: u64, step: u64, offset: u64) -> u64 {
    (offset + i * step) % n
}

/// Temp files `store::write_atomic` leaves when killed mid-write.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".qwen-accounts.json.tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

fn read_store_bytes(env: &Env) -> Vec<u8> {
    std::fs::read(env.store_path()).expect("read store")
}

/// The store as JSON, `None` when there is none yet.
fn read_store_opt(env: &Env) -> Option<Value> {
    let bytes = std::fs::read(env.store_path()).ok()?;
    Some(serde_json::from_slice(&bytes).expect("store parses"))
}

fn total_requests(s: &Value) -> u64 {
    s["accounts"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["total_requests"].as_u64()).sum())
        .unwrap_or(0)
}

/// `s` without the fields the given keys name, at the top level and in each account.
fn without(s: &Value, top: &[&str], per_account: &[&str]) -> Value {
    let mut s = s.clone();
    if let Some(m) = s.as_object_mut() {
        for k in top {
            m.remove(*k);
        }
    }
    if let Some(accounts) = s["accounts"].as_array_mut() {
        for a in accounts {
            if let Some(m) = a.as_object_mut() {
                for k in per_account {
                    m.remove(*k);
                }
            }
        }
    }
    s
}

// --- crash safety ---

/// `after` is `before` plus at most one `token` use: the same store, or one account with one
/// more request and a new `last_used_at`. Returns whether it is the new state.
fn one_token_use_at_most(before: &Value, after: &Value) -> bool {
    let volatile_top = ["current_streak", "last_background_refresh_at"];
    // With the usage counters of `status`.
    let volatile_account = [
        "total_requests",
        "last_used_at",
        "daily_requests",
        "daily_requests_since",
        "recent_requests",
        "recent_requests_at",
    ];
    assert_eq!(
        without(before, &volatile_top, &volatile_account),
        without(after, &volatile_top, &volatile_account),
        "a token call changed more than its counters"
    );
    let (b, a) = (total_requests(before), total_requests(after));
    assert!(a == b || a == b + 1, "total_requests went from {b} to {a}");
    let changed: Vec<usize> = (0..before["accounts"].as_array().map_or(0, Vec::len))
        .filter(|&i| before["accounts"][i] != after["accounts"][i])
        .collect();
    if a == b {
        assert!(changed.is_empty(), "accounts {changed:?} changed");
        assert_eq!(before, after);
        false
    } else {
        assert_eq!(changed.len(), 1, "one account served: {changed:?}");
        true
    }
}

/// `after` is `before`, or `before` with `current_account_id` = `target`.
fn use_at_most(before: &Value, after: &Value, target: &str) -> bool {
    assert_eq!(
        without(before, &["current_account_id", "current_streak"], &[]),
        without(after, &["current_account_id", "current_streak"], &[]),
        "use changed more than the current account"
    );
    let cur = &after["current_account_id"];
    assert!(
        *cur == before["current_account_id"] || cur == target,
        "current is {cur}"
    );
    before != after
}

#[test]
fn kill_9_at_random_moments_leaves_the_old_or_the_new_store() {
    let mut env = Env::new();
    // Nothing here needs the server; a refresh attempt would fail fast.
    env.set("QWEN_CRED_OAUTH_BASE_URL", "http://127.0.0.1:9");
    env.write_store(&store_with(3));
    // The first write adds what this version keeps (each account's fingerprint).
    env.expect(&["token"], 0);
    let dir = env.config_dir();
    let mut before = env.read_store();
    let (mut old, mut new, mut completed, mut temps_seen) = (0, 0, 0, 0);
    for cycle in 0..200 {
        let target = ((cycle / 4) % 3 + 1).to_string();
        let is_use = cycle % 4 == 3;
        let args: Vec<&str> = if is_use {
            vec!["use", &target]
        } else {
            vec!["token"]
        };
        let mut child = env
            .cmd(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        // 200 different delays over 0-3 ms, in an order that jumps about.
        std::thread::sleep(Duration::from_micros(spread(cycle, 3000, 1499, 0)));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().expect("wait");
        let bytes = read_store_bytes(&env);
        let after: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "cycle {cycle}: the store does not parse after kill -9 ({e}):\n{}",
                text(&bytes)
            )
        });
        let changed = if is_use {
            use_at_most(&before, &after, &target)
        } else {
            one_token_use_at_most(&before, &after)
        };
        if changed {
            new += 1;
        } else {
            old += 1;
        }
        let temps = temp_files(&dir);
        assert!(
            temps.len() <= 1,
            "cycle {cycle}: temp files pile up: {temps:?}"
        );
        temps_seen += temps.len();
        if status.success() {
            completed += 1;
            if !is_use || before["current_account_id"] != target.as_str() {
                assert!(changed, "cycle {cycle}: a finished call changed nothing");
            }
        }
        if status.success() && changed {
            assert!(
                temps.is_empty(),
                "a finished write left {temps:?} (cycle {cycle})"
            );
        }
        if cycle % 25 == 24 {
            // qwen-cred's own parser agrees.
            env.expect(&["list", "--json"], 0);
        }
        before = after;
    }
    // The next call that writes removes what a killed writer left.
    env.expect(&["token"], 0);
    assert_eq!(temp_files(&dir), Vec::<String>::new());
    assert_eq!(mode(&env.store_path()), 0o600);
    eprintln!(
        "crash: 200 kills: {old} left the old store, {new} the new one ({completed} calls had \
         finished), {temps_seen} temp files found after a kill"
    );
}

// --- no lost updates ---

#[test]
fn sixteen_processes_lose_no_update() {
    let mut env = Env::new();
    env.set("QWEN_CRED_OAUTH_BASE_URL", "http://127.0.0.1:9");
    env.set("QWEN_CRED_MAX_RATE_LIMIT_WAIT_SECONDS", "0");
    env.set("QWEN_CRED_RETRY_SAME_ACCOUNT_THRESHOLD_SECONDS", "0");
    env.set("QWEN_CRED_LOCK_TIMEOUT_SECONDS", "120");
    env.write_store(&store_with(10));
    let env = Arc::new(env);
    let done = Arc::new(AtomicBool::new(false));

    // Readers: the raw file in a tight loop, and `list --json` as a process.
    let raw_reader = {
        let (env, done) = (Arc::clone(&env), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !done.load(Ordering::SeqCst) {
                let bytes = read_store_bytes(&env);
                let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                    panic!("a reader saw a broken store ({e}): {}", text(&bytes))
                });
                assert_eq!(v["accounts"].as_array().map(Vec::len), Some(10));
                reads += 1;
            }
            reads
        })
    };
    let list_reader = {
        let (env, done) = (Arc::clone(&env), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut lists = 0u64;
            while !done.load(Ordering::SeqCst) {
                let (out, _) = env.expect(&["list", "--json"], 0);
                let v: Value = serde_json::from_str(&out).expect("list --json");
                assert_eq!(v.as_array().map(Vec::len), Some(10));
                lists += 1;
            }
            lists
        })
    };

    let served = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(Mutex::new(BTreeSet::new()));
    let workers: Vec<_> = (0..16u64)
        .map(|w| {
            let (env, served, tokens) =
                (Arc::clone(&env), Arc::clone(&served), Arc::clone(&tokens));
            std::thread::spawn(move || {
                // Each worker makes every roll of 0..100 once (50 tokens, 20 for a named
                // account, 15 report-429, 15 use), each starting elsewhere, and names the ten
                // accounts in turn from its own starting point.
                for i in 0..100 {
                    let id = (spread(i, 10, 3, w) + 1).to_string();
                    let roll = spread(i, 100, 37, w * 7);
                    let args: Vec<&str> = match roll {
                        0..=49 => vec!["token"],
                        50..=69 => vec!["token", "--account", &id],
                        70..=84 => vec!["report-429", "--account", &id, "--retry-after", "1"],
                        _ => vec!["use", &id],
                    };
                    let o = env.run(&args);
                    let code = o.status.code();
                    let allowed: &[i32] = match roll {
                        0..=49 | 70..=84 => &[0, 4],
                        _ => &[0],
                    };
                    assert!(
                        code.is_some_and(|c| allowed.contains(&c)),
                        "{args:?} exited {code:?}: {}",
                        text(&o.stderr)
                    );
                    if roll < 70 && code == Some(0) {
                        served.fetch_add(1, Ordering::SeqCst);
                        let t = text(&o.stdout).trim().to_string();
                        tokens.lock().expect("lock").insert(t);
                    }
                }
            })
        })
        .collect();
    let results: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
    // Stop the readers before a failed worker's panic is passed on.
    done.store(true, Ordering::SeqCst);
    for r in results {
        r.expect("worker");
    }
    let reads = raw_reader.join().expect("raw reader");
    let lists = list_reader.join().expect("list reader");

    let s = env.read_store();
    let served = served.load(Ordering::SeqCst) as u64;
    assert_eq!(
        total_requests(&s),
        served,
        "every served token is counted once"
    );
    let expected: BTreeSet<String> = (1..=10).map(|i| format!("at-{i}")).collect();
    let tokens = tokens.lock().expect("lock").clone();
    assert!(tokens.is_subset(&expected), "{tokens:?}");
    assert!(reads > 0 && lists > 0);
    eprintln!("lost-updates: {served} tokens served, {reads} raw reads, {lists} list calls");
}

// --- malformed input corpus ---

/// A corpus file, where it goes, the exit codes of `list`, `token` and `use 1` (cli.md: a
/// file problem is 6), and what the message must say. Store files are copied to
/// `D/qwen-accounts.json`, config files to `D/qwen.json` (next to a valid store).
#[rustfmt::skip]
const CORPUS: &[(&str, [i32; 3], &str)] = &[
    // Not JSON, or not an object.
    ("store-truncated.json", [6; 3], "not valid JSON: EOF"),
    ("store-truncated-in-string.json", [6; 3], "not valid JSON: EOF"),
    ("store-trailing-garbage.json", [6; 3], "not valid JSON: trailing characters"),
    ("store-two-documents.json", [6; 3], "not valid JSON: trailing characters"),
    ("store-nul-byte.json", [6; 3], "not valid JSON"),
    ("store-number-out-of-range.json", [6; 3], "max_accounts: expected a number from 1 to 10"),
    ("store-top-array.json", [6; 3], "expected a JSON object"),
    ("store-top-null.json", [6; 3], "expected a JSON object"),
    ("store-top-string.json", [6; 3], "expected a JSON object"),
    // Encodings.
    ("store-bom.json", [6; 3], "byte order mark"),
    ("store-invalid-utf8.json", [6; 3], "not valid UTF-8"),
    ("store-overlong-utf8.json", [6; 3], "not valid UTF-8"),
    ("store-utf16.json", [6; 3], "not valid UTF-8"),
    // Version.
    ("store-version-newer.json", [6; 3], "version \"2.0\" is newer"),
    ("store-version-number.json", [6; 3], "version: expected a string"),
    ("store-version-garbage.json", [6; 3], "version: expected a version string"),
    ("store-version-null.json", [6; 3], "version: expected a string"),
    // Pool size and ids.
    ("store-11-accounts.json", [6; 3], "11 accounts but max_accounts is 10"),
    ("store-max-accounts-50.json", [6; 3], "max_accounts: expected a number from 1 to 10"),
    ("store-max-accounts-0.json", [6; 3], "max_accounts: expected a number from 1 to 10"),
    ("store-max-accounts-string.json", [6; 3], "max_accounts: expected a number"),
    ("store-negative-max-accounts.json", [6; 3], "max_accounts: expected a number"),
    ("store-more-than-max-accounts.json", [6; 3], "4 accounts but max_accounts is 3"),
    ("store-duplicate-ids.json", [6; 3], "accounts[2].id: duplicate id \"1\""),
    // Wrong types, and nulls where none is allowed.
    ("store-accounts-object.json", [6; 3], "accounts: expected an array"),
    ("store-accounts-null.json", [6; 3], "accounts: expected an array"),
    ("store-account-string.json", [6; 3], "accounts[0]: expected an object"),
    ("store-id-number.json", [6; 3], "accounts[1].id: expected a string"),
    ("store-id-null.json", [6; 3], "accounts[1].id: expected a string"),
    ("store-id-missing.json", [6; 3], "accounts[1].id: expected a non-empty string"),
    ("store-access-token-null.json", [6; 3], "accounts[1].access_token: expected a string"),
    ("store-refresh-token-empty.json", [6; 3], "accounts[1].refresh_token: expected a non-empty"),
    ("store-refresh-token-number.json", [6; 3], "accounts[1].refresh_token: expected a string"),
    ("store-email-number.json", [6; 3], "accounts[1].email: expected a string"),
    ("store-expiry-string.json", [6; 3], "accounts[1].expiry_date: expected a number"),
    ("store-expiry-null.json", [6; 3], "accounts[1].expiry_date: expected a number"),
    ("store-expiry-missing.json", [6; 3], "accounts[1].expiry_date: expected a number"),
    ("store-expiry-float.json", [6; 3], "accounts[1].expiry_date: expected a number"),
    ("store-total-requests-string.json", [6; 3], "accounts[1].total_requests: expected"),
    ("store-total-requests-null.json", [6; 3], "accounts[1].total_requests: expected"),
    ("store-is-primary-string.json", [6; 3], "accounts[1].is_primary: expected true or false"),
    ("store-is-primary-null.json", [6; 3], "accounts[1].is_primary: expected true or false"),
    ("store-status-unknown.json", [6; 3], "accounts[1].status: expected \"active\" or"),
    ("store-status-null.json", [6; 3], "accounts[1].status: expected a string"),
    ("store-rate-limit-string.json", [6; 3], "accounts[1].rate_limit_resets_at: expected"),
    ("store-current-id-number.json", [6; 3], "current_account_id: expected a string"),
    ("store-disabled-string.json", [6; 3], "accounts[1].disabled: expected true or false"),
    ("store-label-number.json", [6; 3], "accounts[1].label: expected a string"),
    ("store-recent-requests-too-long.json", [6; 3], "accounts[1].recent_requests: expected an array of at most 6"),
    ("store-recent-requests-negative.json", [6; 3], "accounts[1].recent_requests: expected an array of at most 6"),
    // Huge numbers.
    ("store-huge-expiry.json", [6; 3], "accounts[0].expiry_date: expected a number"),
    ("store-expiry-after-9999.json", [6; 3], "accounts[1].expiry_date: expected a number"),
    ("store-huge-total-requests.json", [6; 3], "accounts[1].total_requests: expected"),
    ("store-total-requests-1e30.json", [6; 3], "accounts[1].total_requests: expected"),
    ("store-consecutive-overflow.json", [6; 3], "accounts[1].consecutive_rate_limits"),
    // Negative numbers and times.
    ("store-negative-expiry.json", [6; 3], "accounts[1].expiry_date: expected a number"),
    ("store-negative-created.json", [6; 3], "accounts[1].created_at: expected a number"),
    ("store-negative-last-used.json", [6; 3], "accounts[1].last_used_at: expected a number"),
    ("store-negative-total-requests.json", [6; 3], "accounts[1].total_requests: expected"),
    // Empty is an empty pool (files.md): list works, token has no account, use knows no "1".
    // So is a pool whose only other field is another tool's 300-deep array: kept as it is.
    ("store-deep-nesting.json", [0, 3, 2], ""),
    ("store-empty.json", [0, 3, 2], ""),
    ("store-whitespace.json", [0, 3, 2], ""),
    // Configs.
    ("config-truncated.json", [6; 3], "not valid JSON: EOF"),
    ("config-top-array.json", [6; 3], "expected a JSON object"),
    ("config-bom.json", [6; 3], "byte order mark"),
    ("config-invalid-utf8.json", [6; 3], "not valid UTF-8"),
    // Unknown keys are a warning naming the nearest known key, not a failure (issue 9).
    ("config-unknown-key.json", [0; 3], "unknown key \"lock_timeout\" ignored; did you mean \"lock_timeout_seconds\"?"),
    ("config-store-key.json", [0; 3], "unknown key \"max_accounts\" ignored (the nearest known key is"),
    ("config-schema-key.json", [0; 3], ""),
    ("config-strategy-unknown.json", [6; 3], "account_selection_strategy: invalid value \"random\""),
    ("config-strategy-null.json", [6; 3], "account_selection_strategy: invalid value \"null\""),
    ("config-timeout-negative.json", [6; 3], "lock_timeout_seconds: invalid value \"-1\""),
    ("config-timeout-zero-http.json", [6; 3], "http_timeout_seconds: invalid value \"0\""),
    ("config-timeout-string.json", [6; 3], "http_timeout_seconds: invalid value \"30\""),
    ("config-timeout-float.json", [6; 3], "http_timeout_seconds: invalid value \"2.5\""),
    ("config-huge-number.json", [6; 3], "max_rate_limit_wait_seconds: invalid value"),
    ("config-huge-integer.json", [6; 3], "exponential_backoff_max_ms: invalid value"),
    ("config-bool-string.json", [6; 3], "sync_qwen_cli: invalid value \"yes\""),
    ("config-reset-time-24.json", [6; 3], "quota_reset_time: invalid value \"24:00\""),
    ("config-offset-bad.json", [6; 3], "quota_reset_utc_offset: invalid value \"+8\""),
    ("config-url-plain-http.json", [6; 3], "oauth_base_url: invalid value \"http://chat.qwen.ai\""),
    ("config-url-ftp.json", [6; 3], "oauth_base_url: invalid value \"ftp://127.0.0.1\""),
    ("config-client-id-empty.json", [6; 3], "client_id: invalid value"),
    // An empty config is all defaults; the store next to it has accounts 1 and 2.
    ("config-empty.json", [0, 0, 0], ""),
];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// Runs `list`, `token` and `use 1` and checks codes, messages, that no token leaks, and
/// that `files` are byte for byte what they were.
fn check_commands(
    env: &Env,
    what: &str,
    codes: [i32; 3],
    needle: &str,
    names: &str,
    files: &[PathBuf],
) {
    let before: Vec<Option<Vec<u8>>> = files.iter().map(|f| std::fs::read(f).ok()).collect();
    for (args, code) in [&["list"][..], &["token"], &["use", "1"]]
        .into_iter()
        .zip(codes)
    {
        let (out, err) = env.expect(args, code);
        // A config that is accepted says nothing, or, with a warning, says so once on one line.
        if code == 0 && needle.is_empty() && what.starts_with("config-") {
            assert_eq!(err, "", "{what}: {args:?}");
        }
        if code == 0 && !needle.is_empty() {
            assert!(
                err.contains(needle) && err.contains(names),
                "{what}: {args:?}: {err}"
            );
            assert!(
                err.starts_with("qwen-cred: ") && err.lines().count() == 1,
                "{what}: {err}"
            );
        }
        if code == 6 {
            assert!(err.contains(needle), "{what}: {args:?}: {err}");
            assert!(
                err.contains(names),
                "{what}: {args:?} names the file: {err}"
            );
            assert!(
                err.starts_with("qwen-cred: ") && err.lines().count() == 1,
                "{what}: {err}"
            );
        }
        for leak in ["at-corpus", "rt-corpus", "rt-1", "rt-2"] {
            assert!(
                !err.contains(leak),
                "{what}: {args:?}: a token in stderr: {err}"
            );
            if args[0] != "token" {
                assert!(
                    !out.contains(leak),
                    "{what}: {args:?}: a token on stdout: {out}"
                );
            }
        }
    }
    // Nothing but a served token writes.
    if codes[1] != 0 {
        for (f, b) in files.iter().zip(&before) {
            assert_eq!(&std::fs::read(f).ok(), b, "{what}: {} changed", f.display());
        }
    }
    assert_eq!(temp_files(&env.config_dir()), Vec::<String>::new());
}

#[test]
fn malformed_corpus_gives_exit_6_naming_the_problem_and_stays_byte_identical() {
    let listed: BTreeSet<&str> = CORPUS.iter().map(|(f, _, _)| *f).collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(corpus_dir())
        .expect("tests/corpus")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    assert_eq!(
        on_disk,
        listed.iter().map(|s| s.to_string()).collect(),
        "every corpus file has a row in CORPUS"
    );
    assert!(CORPUS.len() >= 30);
    for (file, codes, needle) in CORPUS {
        let bytes = std::fs::read(corpus_dir().join(file)).expect("corpus file");
        let env = Env::new();
        if file.starts_with("store-") {
            util::write_private(&env.store_path(), &bytes);
            check_commands(
                &env,
                file,
                *codes,
                needle,
                "qwen-accounts.json",
                &[env.store_path()],
            );
        } else {
            let config = env.config_dir().join("qwen.json");
            util::write_private(&config, &bytes);
            env.write_store(&store_with(2));
            check_commands(
                &env,
                file,
                *codes,
                needle,
                "qwen.json",
                &[config, env.store_path()],
            );
        }
    }
}

#[test]
fn directories_and_symlinks_instead_of_files() {
    // The store is a directory.
    let env = Env::new();
    std::fs::create_dir(env.store_path()).expect("mkdir");
    check_commands(
        &env,
        "store dir",
        [6; 3],
        "not a regular file",
        "qwen-accounts.json",
        &[],
    );
    assert!(env.store_path().is_dir());

    // The store is a symlink to a valid store elsewhere, or to nothing.
    for dangling in [false, true] {
        let env = Env::new();
        let elsewhere = env.root.join("elsewhere.json");
        if !dangling {
            util::write_private(
                &elsewhere,
                &serde_json::to_vec(&store_with(2)).expect("json"),
            );
        }
        std::os::unix::fs::symlink(&elsewhere, env.store_path()).expect("symlink");
        check_commands(
            &env,
            "store symlink",
            [6; 3],
            "symbolic link",
            "qwen-accounts.json",
            std::slice::from_ref(&elsewhere),
        );
        assert_eq!(
            std::fs::read_link(env.store_path()).expect("still a link"),
            elsewhere
        );
        assert_eq!(elsewhere.exists(), !dangling);
    }

    // The config is a directory.
    let env = Env::new();
    env.write_store(&store_with(2));
    std::fs::create_dir(env.config_dir().join("qwen.json")).expect("mkdir");
    check_commands(
        &env,
        "config dir",
        [6; 3],
        "is not a regular file (a directory)",
        "qwen.json",
        &[env.store_path()],
    );

    // The config is a symlink: only read, never written, so it is followed (dotfile
    // managers link it); what it points to is checked like the file itself.
    let env = Env::new();
    env.write_store(&store_with(2));
    let elsewhere = env.root.join("qwen-elsewhere.json");
    std::os::unix::fs::symlink(&elsewhere, env.config_dir().join("qwen.json")).expect("symlink");
    std::fs::write(&elsewhere, br#"{"lock_timeout_seconds": 7}"#).expect("write");
    let (out, _) = env.expect(&["config", "--json"], 0);
    assert!(out.contains("\"file\""), "{out}");
    std::fs::write(&elsewhere, br#"{"lock_timeout_seconds": "7"}"#).expect("write");
    check_commands(
        &env,
        "config symlink",
        [6; 3],
        "lock_timeout_seconds: invalid value",
        "qwen.json",
        &[elsewhere.clone(), env.store_path()],
    );
}

// --- server faults ---

/// An env whose refreshes fail fast: 1 s HTTP timeout, immediate retries.
fn fault_env(mock: &Mock) -> Env {
    let mut env = Env::with_mock(mock);
    env.set("QWEN_CRED_HTTP_TIMEOUT_SECONDS", "1");
    env.set("QWEN_CRED_TOKEN_REFRESH_RETRY_DELAY_MS", "0");
    env.set("QWEN_CRED_TOKEN_REFRESH_RETRY_ATTEMPTS", "2");
    env
}

#[test]
fn server_faults_keep_a_valid_token_served_and_revoke_nothing() {
    let faults = [
        Fault::Status(500),
        Fault::Status(502),
        Fault::Status(503),
        Fault::Status(429),
        Fault::Status(400),
        Fault::Hang,
        Fault::Reset,
        Fault::Garbage,
        Fault::Html,
        Fault::NoAccessToken,
        Fault::Huge,
    ];
    for fault in faults {
        let mock = Mock::start();
        let env = fault_env(&mock);
        // Account 1 is due (valid 10 more minutes, inside the 30 min buffer), 2 is expired.
        mock.add_account("rt-due", "at-due");
        mock.add_account("rt-exp", "at-exp");
        env.write_store(&json!({"version": "1.0", "accounts": [
            account("1", "at-due", "rt-due", 600), account("2", "at-exp", "rt-exp", -10)],
            "current_account_id": "1"}));
        mock.set_sticky_fault(Some(fault.clone()));

        let (out, err) = env.expect(&["token"], 0);
        assert_eq!(out.trim(), "at-due", "{fault:?}: the valid token is served");
        assert!(err.contains("still valid"), "{fault:?}: {err}");
        let (_, err2) = env.expect(&["token", "--account", "2"], 5);
        assert!(
            err2.contains("account 2") && err2.contains("retry later"),
            "{fault:?}: {err2}"
        );
        let (_, err3) = env.expect(&["refresh", "--account", "2", "--force"], 5);
        for e in [&err, &err2, &err3] {
            for t in ["at-due", "rt-due", "at-exp", "rt-exp"] {
                assert!(!e.contains(t), "{fault:?}: a token in stderr: {e}");
            }
        }
        let s = env.read_store();
        for a in s["accounts"].as_array().expect("accounts") {
            assert!(a.get("status").is_none(), "{fault:?} revoked: {a}");
        }
        assert_eq!(s["accounts"][0]["access_token"], "at-due");
        assert_eq!(s["accounts"][1]["refresh_token"], "rt-exp");
        assert!(mock.count_refreshes() >= 3, "{fault:?}");

        // Once the server is back, both accounts refresh.
        mock.set_sticky_fault(None);
        let (out, _) = env.expect(&["token", "--account", "2"], 0);
        assert_ne!(out.trim(), "at-exp", "{fault:?}");
        let (out, _) = env.expect(&["token"], 0);
        assert_ne!(
            out.trim(),
            "at-due",
            "{fault:?}: the due token is refreshed"
        );
    }
}

/// Every poll after the first answers 429 (slow_down): the client adds 5 s per answer and
/// gives up at `--timeout` with exit 7, without hammering the server.
#[test]
fn a_slow_down_storm_times_out_without_hammering() {
    let mock = Mock::start();
    mock.push_approval(Approval {
        pending_polls: 1000,
        slow_down_at: Some(1),
        slow_down_status: 429,
        outcome: Outcome::Never,
        ..mock.approval(None)
    });
    let env = fault_env(&mock);
    let started = Instant::now();
    let child = env
        .cmd(&["login", "--no-browser", "--timeout", "6"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let polls =
        |s: &crate::util::mock::State| s.requests.iter().filter(|r| r.is_device_poll()).count();
    assert!(mock.wait_until(Duration::from_secs(10), |s| polls(s) >= 1));
    // From here on every poll is a 429 storm.
    mock.set_sticky_fault(Some(Fault::Status(429)));
    let o = child.wait_with_output().expect("wait");
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(7), "{err}");
    assert!(err.contains("timed out"), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(6));
    let times: Vec<Instant> = mock.state(|s| {
        s.requests
            .iter()
            .filter(|r| r.is_device_poll())
            .map(|r| r.at)
            .collect()
    });
    assert!(
        (1..=2).contains(&times.len()),
        "{} polls in 6 s",
        times.len()
    );
    for w in times.windows(2) {
        assert!(w[1] - w[0] >= Duration::from_secs(5), "{:?}", w[1] - w[0]);
    }
    assert!(read_store_opt(&env).is_none(), "no account was added");
}

// --- secret hygiene ---

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// Holds the store lock with flock(1) until killed: `-o` keeps the lock in the flock process
/// alone, so killing it frees the lock; `cat` (which does not hold it) ends when its stdin
/// closes.
fn hold_store_lock(env: &Env) -> Child {
    let flock = which("flock").expect("flock(1) from util-linux is needed for this test");
    let lock = env.config_dir().join("qwen-accounts.lock");
    let mut child = Command::new(flock)
        .arg("-o")
        .arg(&lock)
        .args(["sh", "-c", "echo locked; exec cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn flock");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "locked");
    child
}

fn release(mut holder: Child) {
    let _ = holder.kill();
    let _ = holder.wait();
    drop(holder.stdin.take());
}

/// Runs every command under `strace -f` (execve of every process we start, with argv and
/// environment) and checks that no access or refresh token the mock issued or the store
/// held appears in any argv or environment, in stderr, in `list` output or in the browser's
/// argv.
#[test]
fn no_token_in_argv_environment_stderr_or_list() {
    let strace =
        which("strace").expect("strace is needed for this test: apt-get install -y strace");
    let mock = Mock::start();
    mock.set_rotate_refresh(true);
    mock.push_approval(mock.approval(Some("alice@example.com")));
    let mut env = Env::with_mock(&mock);
    env.set("QWEN_CRED_TOKEN_REFRESH_RETRY_DELAY_MS", "0");
    env.set("QWEN_CRED_LOG", "debug");
    env.set("DISPLAY", ":0");
    let browser = env.root.join("browser.sh");
    let browser_log = env.root.join("browser.log");
    std::fs::write(
        &browser,
        format!("#!/bin/sh\necho \"$@\" >> '{}'\n", browser_log.display()),
    )
    .expect("write");
    std::fs::set_permissions(
        &browser,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    env.set("BROWSER", &browser.display().to_string());
    let traces = env.root.join("traces");
    std::fs::create_dir(&traces).expect("mkdir");

    let mut stderr_all = String::new();
    let mut shown = String::new();
    let mut tokens: BTreeSet<String> = BTreeSet::new();
    let mut n = 0;
    let mut run = |env: &Env, args: &[&str], codes: &[i32]| -> String {
        n += 1;
        let inner = env.cmd(args);
        let mut c = Command::new(&strace);
        c.args([
            "-f",
            "-qq",
            "-v",
            "-s",
            "1000000",
            "-e",
            "trace=execve",
            "-o",
        ])
        .arg(traces.join(format!("{n}.log")))
        .arg(inner.get_program())
        .args(inner.get_args())
        .env_clear()
        .stdin(Stdio::null());
        for (k, v) in inner.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        let o = c.output().expect("run strace");
        let (out, err) = (text(&o.stdout), text(&o.stderr));
        assert!(
            o.status.code().is_some_and(|c| codes.contains(&c)),
            "{args:?} exited {:?}: {err}",
            o.status.code()
        );
        stderr_all.push_str(&err);
        if args[0] == "list" {
            shown.push_str(&out);
        }
        out
    };
    let snapshot = |env: &Env, tokens: &mut BTreeSet<String>| {
        if let Some(s) = read_store_opt(env) {
            for a in s["accounts"].as_array().into_iter().flatten() {
                for k in ["access_token", "refresh_token"] {
                    if let Some(t) = a[k].as_str() {
                        tokens.insert(t.to_string());
                    }
                }
            }
        }
    };

    run(&env, &["login", "--json"], &[0]);
    snapshot(&env, &mut tokens);
    run(
        &env,
        &["login", "--no-browser", "--email", "bob@example.com"],
        &[0],
    );
    snapshot(&env, &mut tokens);
    let served = run(&env, &["token"], &[0]);
    for format in ["json", "env", "header"] {
        run(&env, &["token", "--format", format], &[0]);
    }
    run(&env, &["list"], &[0]);
    run(&env, &["list", "--json"], &[0]);
    // Make both accounts due, refresh 1 in the foreground, and let the next `token` start
    // the detached `refresh --due` for account 2 (strace -f follows it to its end).
    mock.set_refresh_expires_in(600);
    run(&env, &["refresh", "--all", "--force"], &[0]);
    snapshot(&env, &mut tokens);
    mock.set_refresh_expires_in(3600);
    run(&env, &["token", "--account", "1"], &[0]);
    snapshot(&env, &mut tokens);
    run(&env, &["token"], &[0]);
    snapshot(&env, &mut tokens);
    run(
        &env,
        &["report-429", "--account", "1", "--retry-after", "60"],
        &[0],
    );
    // Failing refreshes, then a revocation.
    mock.set_sticky_fault(Some(Fault::Status(500)));
    run(&env, &["refresh", "--all", "--force"], &[5]);
    mock.set_sticky_fault(None);
    let s = env.read_store();
    mock.revoke_refresh(s["accounts"][1]["refresh_token"].as_str().unwrap_or(""));
    run(&env, &["refresh", "--account", "2", "--force"], &[3]);
    run(&env, &["list"], &[0]);
    // A lock timeout.
    let holder = hold_store_lock(&env);
    env.set("QWEN_CRED_LOCK_TIMEOUT_SECONDS", "1");
    run(&env, &["token"], &[6]);
    env.vars
        .retain(|(k, _)| k != "QWEN_CRED_LOCK_TIMEOUT_SECONDS");
    release(holder);
    run(&env, &["use", "1"], &[0]);
    run(&env, &["remove", "2"], &[0]);
    run(&env, &["list", "--json"], &[0]);
    snapshot(&env, &mut tokens);

    for i in mock.state(|s| s.issued.clone()) {
        tokens.insert(i.access_token);
        tokens.insert(i.refresh_token);
    }
    assert!(tokens.len() >= 8, "{} tokens seen", tokens.len());
    assert!(
        tokens.contains(served.trim()),
        "the checker knows the tokens it looks for"
    );
    let mut execs = String::new();
    for e in std::fs::read_dir(&traces).expect("traces").flatten() {
        execs.push_str(&std::fs::read_to_string(e.path()).expect("trace"));
    }
    let browser_argv = std::fs::read_to_string(&browser_log).unwrap_or_default();
    assert!(
        browser_argv.contains(&mock.base_url()),
        "the browser was opened: {browser_argv}"
    );
    assert!(
        execs.contains(r#""refresh", "--due""#),
        "the detached refresh was traced"
    );
    assert!(execs.contains("browser.sh"), "the browser start was traced");
    assert!(
        execs.contains("QWEN_CRED_CONFIG_DIR="),
        "environments are recorded too"
    );
    for t in &tokens {
        assert!(
            !execs.contains(t.as_str()),
            "a token in the argv or environment of a process"
        );
        assert!(
            !stderr_all.contains(t.as_str()),
            "a token in stderr: {stderr_all}"
        );
        assert!(
            !shown.contains(t.as_str()),
            "a token in list output: {shown}"
        );
        assert!(
            !browser_argv.contains(t.as_str()),
            "a token in the browser's argv"
        );
    }
}

/// A thread lists the config directory in a tight loop while 200 `token` calls rewrite the
/// store: every store, temp and lock file it sees is 0600, and the directory 0700.
#[test]
fn token_files_are_0600_at_every_moment() {
    let mut env = Env::new();
    let dir = env.root.join("fresh-config");
    env.set("QWEN_CRED_CONFIG_DIR", &dir.display().to_string());
    env.expect(&["list"], 0);
    env.expect(&["token"], 3); // creates the directory and the lock file
    assert_eq!(mode(&dir), 0o700, "qwen-cred creates D 0700");
    util::write_private(
        &dir.join("qwen-accounts.json"),
        &serde_json::to_vec(&store_with(3)).expect("json"),
    );

    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (dir, done) = (dir.clone(), Arc::clone(&done));
        std::thread::spawn(move || {
            use std::os::unix::fs::PermissionsExt;
            let (mut bad, mut temps, mut looks) = (Vec::new(), 0usize, 0usize);
            while !done.load(Ordering::SeqCst) {
                looks += 1;
                let dir_mode = std::fs::metadata(&dir).map(|m| m.permissions().mode() & 0o777);
                if let Ok(m) = dir_mode {
                    if m != 0o700 {
                        bad.push(format!("dir {m:o}"));
                    }
                }
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !name.contains("qwen-accounts") {
                        continue;
                    }
                    temps += usize::from(name.contains(".tmp-"));
                    // The file may be renamed away between readdir and stat.
                    if let Ok(m) = std::fs::symlink_metadata(e.path()) {
                        let m = m.permissions().mode() & 0o777;
                        if m != 0o600 {
                            bad.push(format!("{name} {m:o}"));
                        }
                    }
                }
            }
            (bad, temps, looks)
        })
    };
    for _ in 0..200 {
        env.expect(&["token"], 0);
    }
    done.store(true, Ordering::SeqCst);
    let (bad, temps, looks) = watcher.join().expect("watcher");
    assert!(bad.is_empty(), "files seen with the wrong mode: {bad:?}");
    assert_eq!(
        total_requests(
            &serde_json::from_slice(&std::fs::read(dir.join("qwen-accounts.json")).expect("read"))
                .expect("json")
        ),
        200
    );
    eprintln!("0600: {looks} directory scans, {temps} sightings of a temp file");
}

// --- lock behaviour ---

#[test]
fn a_killed_lock_holder_frees_the_store_lock_and_lock_timeout_is_honoured() {
    let mut env = Env::new();
    env.write_store(&store_with(3));
    let bytes = read_store_bytes(&env);
    let holder = hold_store_lock(&env);

    // From the config file.
    env.write_config(&json!({"lock_timeout_seconds": 1}));
    let started = Instant::now();
    let (_, err) = env.expect(&["use", "2"], 6);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        err.contains("qwen-accounts.lock")
            && err.contains("lock_timeout_seconds")
            && err.contains("waiting for lock"),
        "{err}"
    );
    // From the environment; 0 gives up at once.
    env.set("QWEN_CRED_LOCK_TIMEOUT_SECONDS", "0");
    let (_, err) = env.expect(&["token"], 6);
    assert!(err.contains("within 0 s"), "{err}");
    assert_eq!(
        read_store_bytes(&env),
        bytes,
        "nothing written without the lock"
    );

    // kill -9 of the holder frees the lock at once: no wait, no message.
    release(holder);
    env.set("QWEN_CRED_LOCK_TIMEOUT_SECONDS", "5");
    let (_, err) = env.expect(&["use", "2"], 0);
    assert!(err.is_empty(), "{err}");
    assert_eq!(env.read_store()["current_account_id"], "2");
}

#[test]
fn a_qwen_cred_killed_mid_refresh_frees_its_refresh_lock() {
    let mock = Mock::start();
    let mut env = fault_env(&mock);
    env.set("QWEN_CRED_HTTP_TIMEOUT_SECONDS", "30");
    mock.add_account("rt-k", "at-k");
    env.write_store(&json!({"version": "1.0", "accounts": [account("1", "at-k", "rt-k", -10)], "current_account_id": "1"}));
    mock.hold_refresh("rt-k");
    let mut child = env
        .cmd(&["token"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    assert!(mock.wait_until(Duration::from_secs(20), |s| s.started("rt-k") == 1));
    // It holds the refresh lock of account 1 and waits for the server: kill it there.
    let _ = child.kill();
    let _ = child.wait();
    mock.release_refresh("rt-k");

    env.set("QWEN_CRED_LOCK_TIMEOUT_SECONDS", "5");
    let (out, err) = env.expect(&["token"], 0);
    assert!(err.is_empty(), "{err}");
    assert_ne!(out.trim(), "at-k");
    let s = env.read_store();
    assert_eq!(s["accounts"][0]["access_token"].as_str(), Some(out.trim()));
    assert!(s["accounts"][0].get("status").is_none());
    assert_eq!(temp_files(&env.config_dir()), Vec::<String>::new());
}

/// Login under faults: a failing device endpoint is exit 5 (retry later, cli.md); a fault
/// while polling is retried and the approval that follows still adds the account.
#[test]
fn login_retries_poll_faults_and_a_failing_device_endpoint_is_exit_5() {
    // (fault, whether it is also tried on the device endpoint)
    let faults = [
        (Fault::Status(500), true),
        (Fault::Status(502), true),
        (Fault::Reset, true),
        (Fault::Hang, true),
        (Fault::Garbage, true),
        (Fault::Html, true),
        (Fault::Huge, true),
        (Fault::NoAccessToken, false),
        (Fault::Status(400), false),
    ];
    for (fault, at_device) in faults {
        let mock = Mock::start();
        let env = fault_env(&mock);
        if at_device {
            mock.push_fault(fault.clone());
            let (_, err) = env.expect(&["login", "--no-browser", "--timeout", "5"], 5);
            assert!(err.contains("device/code"), "{fault:?}: {err}");
            assert!(read_store_opt(&env).is_none(), "{fault:?}");
        }
        // The device request is answered normally, the first poll gets the fault.
        mock.push_fault(Fault::Delay(Duration::ZERO));
        mock.push_fault(fault.clone());
        let (_, err) = env.expect(&["login", "--no-browser", "--timeout", "20"], 0);
        let issued = mock.state(|s| s.issued.clone());
        assert_eq!(issued.len(), 1, "{fault:?}");
        for t in [&issued[0].access_token, &issued[0].refresh_token] {
            assert!(
                !err.contains(t.as_str()),
                "{fault:?}: a token in stderr: {err}"
            );
        }
        let s = env.read_store();
        assert_eq!(
            s["accounts"][0]["access_token"],
            issued[0].access_token.as_str()
        );
        assert!(
            mock.state(|s| s.requests.iter().filter(|r| r.is_device_poll()).count()) >= 2,
            "{fault:?}: polled again after the fault"
        );
    }
}

// --- hostile files, huge numbers, stdout (issue 9) ---

/// Runs qwen-cred with `args` under a 1 GiB address-space limit and waits at most `secs`:
/// a regression that blocks (a FIFO) or reads without end (/dev/zero) fails the test instead
/// of hanging it or eating the machine's memory.
fn run_bounded(env: &Env, args: &[&str], secs: u64) -> std::process::Output {
    let mut child = env
        .command("sh")
        .arg("-c")
        .arg("ulimit -v 1048576 && exec \"$0\" \"$@\"")
        .arg(util::BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let done = util::wait_for(secs, || !matches!(child.try_wait(), Ok(None)));
    if !done {
        let _ = child.kill();
        let _ = child.wait();
        panic!("qwen-cred {args:?} did not finish within {secs} s");
    }
    child.wait_with_output().expect("wait")
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

/// The editor key `$schema` is ignored, and an unknown key is one warning line naming the
/// key and the nearest known key; neither stops a request.
#[test]
fn schema_key_is_accepted_and_an_unknown_key_only_warns() {
    let env = Env::new();
    env.write_store(&store_with(2));
    env.write_config(&json!({
        "$schema": "https://example.com/qwen-cred.schema.json",
        "account_selection_strategy": "round-robin",
    }));
    let (out, err) = env.expect(&["token"], 0);
    assert_eq!((out.trim(), err.as_str()), ("at-2", ""));

    env.write_config(&json!({"$schema": "x", "proactive_refresh_buffer": 60}));
    let (out, err) = env.expect(&["token"], 0);
    assert_eq!(out.trim(), "at-2", "sticky from the current account");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("qwen-cred: ")
            && err.contains("qwen.json: unknown key \"proactive_refresh_buffer\" ignored")
            && err.contains("did you mean \"proactive_refresh_buffer_seconds\"?"),
        "{err}"
    );
    // A known key with a bad value is still refused, naming key and value.
    env.write_config(&json!({"typo": 1, "max_rate_limit_wait_seconds": "5"}));
    let (_, err) = env.expect(&["token"], 6);
    assert!(
        err.contains("max_rate_limit_wait_seconds: invalid value \"5\""),
        "{err}"
    );
}

/// A `qwen.json` that is a FIFO, a directory, a device (a symlink to /dev/zero), a symlink to
/// a FIFO, or over 1 MiB: exit 6 at once naming the file and what is wrong, never waited on
/// or read whole; the store is left as it was.
#[test]
fn a_config_that_is_not_a_small_regular_file_is_refused_at_once() {
    let cases: [(&str, &str); 5] = [
        ("fifo", "is not a regular file (a FIFO)"),
        ("dir", "is not a regular file (a directory)"),
        ("dev-zero", "is not a regular file (a device)"),
        ("link-to-fifo", "is not a regular file (a FIFO)"),
        (
            "2mib",
            "is 2097152 bytes (2.0 MiB), more than the 1 MiB a config may have",
        ),
    ];
    for (case, says) in cases {
        let env = Env::new();
        env.write_store(&store_with(2));
        let before = read_store_bytes(&env);
        let config = env.config_dir().join("qwen.json");
        match case {
            "fifo" => mkfifo(&config),
            "dir" => std::fs::create_dir(&config).expect("mkdir"),
            "dev-zero" => std::os::unix::fs::symlink("/dev/zero", &config).expect("symlink"),
            "link-to-fifo" => {
                let fifo = env.root.join("fifo");
                mkfifo(&fifo);
                std::os::unix::fs::symlink(&fifo, &config).expect("symlink");
            }
            _ => {
                // Valid JSON, so only its size can be the problem.
                let mut big = br#"{"scope": ""#.to_vec();
                big.resize(2 * 1024 * 1024 - 2, b'x');
                big.extend_from_slice(br#""}"#);
                std::fs::write(&config, big).expect("write");
            }
        }
        let started = Instant::now();
        for args in [&["token"][..], &["list"], &["config"]] {
            let o = run_bounded(&env, args, 10);
            let err = text(&o.stderr);
            assert_eq!(o.status.code(), Some(6), "{case} {args:?}: {err}");
            assert!(
                err.starts_with("qwen-cred: ")
                    && err.lines().count() == 1
                    && err.contains("qwen.json")
                    && err.contains(says),
                "{case} {args:?}: {err}"
            );
            assert!(o.stdout.is_empty(), "{case}");
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{case}: slow");
        assert_eq!(read_store_bytes(&env), before, "{case}");
    }
}

/// Numbers on the command line are bounded (exit 2, before any request), a Retry-After past
/// u64 is the longest wait capped at 7 days, and a server's huge poll interval cannot
/// overflow: no exit 134 anywhere.
#[test]
fn huge_numbers_never_abort_or_wrap() {
    let mock = Mock::start();
    mock.add_account("rt-1", "at-1");
    let env = Env::with_mock(&mock);
    env.write_store(&store_with(2));
    let before = read_store_bytes(&env);
    for args in [
        &["login", "--no-browser", "--timeout", "18446744073709551615"][..],
        &["token", "--min-valid", "18446744073709551615"],
        &["token", "--min-valid", "9223372036854775808"],
        &["token", "--min-valid", "31536001"],
    ] {
        let (out, err) = env.expect(args, 2);
        assert!(
            out.is_empty() && err.contains("more than 31536000 seconds (365 days)"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(mock.requests().len(), 0, "nothing was asked of the server");
    assert_eq!(read_store_bytes(&env), before);

    // The largest --min-valid allowed is compared as it is, never wrapped: the token falls
    // short of it, so account 1 is refreshed and the shortfall is said.
    let (out, err) = env.expect(&["token", "--min-valid", "31536000"], 0);
    assert_ne!(out.trim(), "at-1");
    assert!(err.contains("less than --min-valid 31536000"), "{err}");
    assert_eq!(mock.count_refreshes(), 1);

    // Retry-After beyond u64: account 1 cools down for the 7-day cap, with no "ignoring".
    let now = util::now_ms();
    let (_, err) = env.expect(
        &[
            "report-429",
            "--account",
            "1",
            "--retry-after",
            "99999999999999999999999",
        ],
        0,
    );
    assert!(!err.contains("ignoring"), "{err}");
    let s = env.read_store();
    assert_eq!(s["accounts"][0]["rate_limit_reason"], "retry-after");
    let until = s["accounts"][0]["rate_limit_resets_at"]
        .as_i64()
        .unwrap_or(0);
    let week = 7 * 86_400_000;
    assert!(
        until >= now + week && until <= util::now_ms() + week,
        "{until}"
    );

    // A device code whose interval is u64::MAX seconds, then slow_down (+5 s): the wait is
    // bounded by --timeout, and the login times out with exit 7.
    mock.push_approval(Approval {
        pending_polls: 1000,
        slow_down_at: Some(1),
        outcome: Outcome::Never,
        interval: Some(u64::MAX),
        ..mock.approval(None)
    });
    let o = run_bounded(&env, &["login", "--no-browser", "--timeout", "1"], 20);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(7), "{err}");
    assert!(err.contains("timed out"), "{err}");
}

/// stdout that cannot be written (`> /dev/full`) is exit 6 saying so, not "a bug"; a closed
/// stdout (broken pipe) is not an error.
#[test]
fn a_full_stdout_is_exit_6_and_a_closed_one_is_fine() {
    let env = Env::new();
    env.write_store(&store_with(1));
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let o = env.cmd(&["token"]).stdout(full).output().expect("run");
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(6), "{err}");
    assert!(
        err.starts_with("qwen-cred: cannot write to stdout: No space left on device")
            && err.lines().count() == 1
            && !err.contains("bug")
            && !err.contains("at-1"),
        "{err}"
    );

    // A pipe whose reader is gone before qwen-cred writes.
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) fills in.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned here alone.
    let (read, write) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    drop(read);
    let o = env.cmd(&["token"]).stdout(write).output().expect("run");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stderr), "");
}

/// A 17 MiB store is refused at once naming its size, and left byte for byte.
#[test]
fn a_huge_store_is_refused_naming_its_size() {
    let env = Env::new();
    let mut s = store_with(2);
    s["padding"] = json!("x".repeat(17 * 1024 * 1024));
    env.write_store(&s);
    let before = read_store_bytes(&env);
    let size = before.len();
    assert!(size > 17 * 1024 * 1024);
    for args in [&["token"][..], &["list"], &["use", "2"]] {
        let o = run_bounded(&env, args, 10);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(6), "{args:?}: {err}");
        assert!(
            err.contains("qwen-accounts.json")
                && err.contains(&format!("is {size} bytes (17.0 MiB)"))
                && err.contains("more than the 16 MiB an account store may have")
                && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    assert!(read_store_bytes(&env) == before, "the store changed");
}

/// Numbers in fields qwen-cred does not know keep their exact text through a rewrite: an
/// integer past u64 is not turned into a float, and 1e400 does not make the store refused.
#[test]
fn unknown_numbers_keep_their_exact_text() {
    let env = Env::new();
    let s = store_with(2);
    let text_in = serde_json::to_string_pretty(&s)
        .expect("json")
        .replacen(
            "\"version\": \"1.0\",",
            "\"version\": \"1.0\",\n  \"big\": 18446744073709551616,\n  \"huge\": 1e400,\n  \"exact\": [0.1000000000000000055511151231257827, -0, 1.50, 1E+2, -99999999999999999999],",
            1,
        )
        .replacen(
            "\"id\": \"2\",",
            "\"id\": \"2\",\n      \"their_counter\": 340282366920938463463374607431768211456,",
            1,
        )
        .replacen(
            "\"current_account_id\"",
            &format!(
                "\"nested\": {{\"a\":[1e-7, {{\"b\" : 2E5}}]}},\n  \"deep\": {}{},\n  \"current_account_id\"",
                "[".repeat(10_000),
                "]".repeat(10_000)
            ),
            1,
        );
    util::write_private(&env.store_path(), text_in.as_bytes());
    let (out, _) = env.expect(&["token"], 0);
    assert_eq!(out.trim(), "at-1");
    let after = String::from_utf8(read_store_bytes(&env)).expect("utf-8");
    assert!(
        after.contains("\"total_requests\": 1"),
        "rewritten: {after}"
    );
    for kept in [
        "\"big\": 18446744073709551616",
        "\"huge\": 1e400",
        "0.1000000000000000055511151231257827",
        "-0,",
        "1.50,",
        "1E+2,",
        "-99999999999999999999",
        "\"their_counter\": 340282366920938463463374607431768211456",
        "\"nested\": {\"a\":[1e-7, {\"b\" : 2E5}]}",
        &format!("\"deep\": {}{}", "[".repeat(10_000), "]".repeat(10_000)),
    ] {
        assert!(after.contains(kept), "{kept} lost: {after}");
    }
    // Known fields are still checked: the same kind of number there is refused.
    let bad = after.replacen(
        "\"total_requests\": 1",
        "\"total_requests\": 18446744073709551616",
        1,
    );
    util::write_private(&env.store_path(), bad.as_bytes());
    let (_, err) = env.expect(&["token"], 6);
    assert!(
        err.contains("accounts[0].total_requests: expected a non-negative integer"),
        "{err}"
    );
}

/// A lock file replaced by a symlink is refused (exit 6 naming it) and what it points to is
/// never created: the store lock and a refresh lock.
#[test]
fn a_symlinked_lock_file_is_refused_and_its_target_not_created() {
    let mock = Mock::start();
    mock.add_account("rt-1", "at-1");
    let env = Env::with_mock(&mock);
    env.write_store(&store_with(2));
    let before = read_store_bytes(&env);
    let target = env.root.join("planted");
    let lock = env.config_dir().join("qwen-accounts.lock");
    std::os::unix::fs::symlink(&target, &lock).expect("symlink");
    for args in [&["use", "2"][..], &["token"]] {
        let (_, err) = env.expect(args, 6);
        assert!(
            err.contains("qwen-accounts.lock")
                && err.contains("is a symbolic link")
                && err.lines().count() == 1,
            "{args:?}: {err}"
        );
        assert!(!target.exists(), "{args:?} created the link's target");
    }
    assert_eq!(read_store_bytes(&env), before);
    std::fs::remove_file(&lock).expect("rm");

    // The refresh lock of an expired account 1.
    let mut s = store_with(1);
    s["accounts"][0] = account("1", "at-1", "rt-1", -10);
    env.write_store(&s);
    let refresh_lock = env.config_dir().join("qwen-accounts.refresh-1.lock");
    std::os::unix::fs::symlink(&target, &refresh_lock).expect("symlink");
    let (_, err) = env.expect(&["token"], 6);
    assert!(
        err.contains("qwen-accounts.refresh-1.lock") && err.contains("is a symbolic link"),
        "{err}"
    );
    assert!(!target.exists());
    assert_eq!(mock.count_refreshes(), 0, "no refresh without its lock");
}

/// A config dir others can write to is one warning line per call (they could swap the store
/// or its locks); the call still succeeds.
#[test]
fn a_config_dir_writable_by_others_is_warned_about_once() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.write_store(&store_with(2));
    for (mode, who) in [(0o770, "the group"), (0o707, "others"), (0o1777, "others")] {
        std::fs::set_permissions(env.config_dir(), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
        for args in [&["token"][..], &["use", "2"], &["list"]] {
            let (_, err) = env.expect(args, 0);
            let lines: Vec<&str> = err.lines().filter(|l| l.contains("writable")).collect();
            assert_eq!(lines.len(), 1, "{mode:o} {args:?}: {err}");
            assert!(
                lines[0].contains(&format!(
                    "{} is writable by {who} (mode {mode:04o})",
                    env.config_dir().display()
                )) && lines[0].contains("chmod 700"),
                "{err}"
            );
        }
    }
    std::fs::set_permissions(env.config_dir(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    let (_, err) = env.expect(&["token"], 0);
    assert_eq!(err, "");
}
