//! The OpenCode integration: `qwen-cred opencode install`, and the plugin it writes, driven
//! the way OpenCode drives it. The end-to-end test runs the real `opencode` binary
//! (`$QWEN_CRED_TEST_OPENCODE`, else `opencode` on PATH) headless; the others import the plugin
//! with node. Without those programs a test fails naming the fix, unless the user named the
//! program in `QWEN_CRED_TEST_SKIP` (util::program). Everything runs against the mock on 127.0.0.1 in a temp HOME and XDG tree.

use crate::util::mock::{ApiReply, Approval, Fault, Mock, Outcome};
use crate::util::{self, now_ms, program, text, Env, BIN};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// What OpenCode's auth.json holds for `qwen` after the plugin's OAuth callback: a marker.
const AUTH_MARKER: &str = r#"{"qwen":{"type":"oauth","access":"qwen-cred","refresh":"qwen-cred","expires":4102444800000}}"#;
/// Bounds every run of opencode or node; a hung run is killed and the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(150);

/// A temp tree laid out as OpenCode expects, with the OpenCode config dir `D` (also
/// qwen-cred's `QWEN_CRED_CONFIG_DIR`) at `$XDG_CONFIG_HOME/opencode`.
struct Oc {
    env: Env,
    dir: PathBuf,
}

impl Oc {
    fn new(mock: &Mock) -> Oc {
        let mut env = Env::with_mock(mock);
        let dir = env.root.join("xdg/opencode");
        for d in [
            &dir,
            &env.root.join("data/opencode"),
            &env.root.join("work"),
        ] {
            std::fs::create_dir_all(d).expect("create dir");
        }
        env.set("QWEN_CRED_CONFIG_DIR", &dir.to_string_lossy());
        Oc { env, dir }
    }

    fn store_path(&self) -> PathBuf {
        self.dir.join("qwen-accounts.json")
    }

    fn write_store(&self, v: &Value) {
        util::write_private(&self.store_path(), &serde_json::to_vec(v).expect("json"));
    }

    fn read_store(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.store_path()).expect("read store"))
            .expect("store parses")
    }

    fn plugin_path(&self) -> PathBuf {
        self.dir.join("plugin/qwen-cred.js")
    }

    /// A `QWEN_CRED_BIN` that logs its argv to `argv.log` and runs the real binary, so a test
    /// can check that no token ever reaches a command line.
    fn logging_bin(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.env.root.join("qwen-cred-logged");
        if path.exists() {
            return path;
        }
        let log = self.env.root.join("argv.log");
        let script = format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            BIN
        );
        std::fs::write(&path, script).expect("write wrapper");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    /// As [`Oc::logging_bin`], but the first `n` `token` calls each hold their answer until
    /// all `n` have one: `n` requests sent at once all get the token picked before any of
    /// them can report a 429.
    fn barrier_bin(&self, n: usize) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.env.root.join("qwen-cred-barrier");
        let dir = self.env.root.join("barrier");
        std::fs::create_dir_all(&dir).expect("barrier dir");
        let script = format!(
            r#"#!/bin/sh
printf '%s\n' "$*" >> '{log}'
if [ "$1" = token ] && [ ! -e '{dir}/open' ]; then
  out=$('{bin}' "$@"); code=$?
  : > '{dir}/done.'$$
  [ "$(ls '{dir}' | grep -c '^done\.')" -ge {n} ] && : > '{dir}/open'
  while [ ! -e '{dir}/open' ]; do sleep 0.01; done
  printf '%s\n' "$out"
  exit $code
fi
exec '{bin}' "$@"
"#,
            log = self.env.root.join("argv.log").display(),
            dir = dir.display(),
            bin = BIN,
        );
        std::fs::write(&path, script).expect("write wrapper");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    fn argv_log(&self) -> String {
        std::fs::read_to_string(self.env.root.join("argv.log")).unwrap_or_default()
    }

    /// `program` in this tree's environment and nothing else from the caller's.
    fn command(&self, program: &Path, qwen_cred_bin: &Path) -> Command {
        let root = &self.env.root;
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", root.join("home"))
            .env("XDG_CONFIG_HOME", root.join("xdg"))
            .env("XDG_DATA_HOME", root.join("data"))
            .env("XDG_CACHE_HOME", root.join("cache"))
            .env("XDG_STATE_HOME", root.join("state"))
            .env("QWEN_CRED_QWEN_DIR", self.env.qwen_dir())
            .env("QWEN_CRED_BIN", qwen_cred_bin)
            .env("BROWSER", "true")
            .env("NO_COLOR", "1")
            .env("OPENCODE_DISABLE_AUTOUPDATE", "1")
            .env("OPENCODE_DISABLE_MODELS_FETCH", "1")
            .env("OPENCODE_DISABLE_SHARE", "1")
            .env("OPENCODE_DISABLE_LSP_DOWNLOAD", "1")
            .env("OPENCODE_DISABLE_CLAUDE_CODE", "1")
            .env("OPENCODE_DISABLE_PROJECT_CONFIG", "1")
            .current_dir(root.join("work"))
            .stdin(Stdio::null());
        if std::env::var_os("QWEN_CRED_TEST_OPENCODE_PLUGIN_CACHE").is_some() {
            // With the package linked in, nothing may come from the registry.
            c.env("npm_config_registry", "http://127.0.0.1:9/");
        }
        for (k, v) in &self.env.vars {
            c.env(k, v);
        }
        c
    }

    /// Runs to completion within [`RUN_LIMIT`]; (exit code, stdout, stderr).
    fn run(&self, cmd: Command, what: &str) -> util::Ran {
        util::run_within(&self.env.root, cmd, what, RUN_LIMIT)
    }
}

/// Hard-links (or copies) a directory tree; symlinks are recreated as they are.
fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if kind.is_dir() {
            link_tree(&src, &dst)?;
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// OpenCode npm-installs `@opencode-ai/plugin` into a config dir that holds plugins, and waits
/// minutes when the registry is out of reach. `$QWEN_CRED_TEST_OPENCODE_PLUGIN_CACHE` is a
/// folder where .ci/run installed it once; its package files and node_modules go into `dir`.
fn link_plugin_package(dir: &Path) {
    let Some(cache) = std::env::var_os("QWEN_CRED_TEST_OPENCODE_PLUGIN_CACHE") else {
        eprintln!(
            "note: QWEN_CRED_TEST_OPENCODE_PLUGIN_CACHE is not set; OpenCode installs @opencode-ai/plugin from the registry"
        );
        return;
    };
    let cache = PathBuf::from(cache);
    for f in ["package.json", "package-lock.json"] {
        std::fs::copy(cache.join(f), dir.join(f))
            .unwrap_or_else(|e| panic!("{}: {e}", cache.join(f).display()));
    }
    link_tree(&cache.join("node_modules"), &dir.join("node_modules")).expect("link node_modules");
}

/// The next 00:00 at UTC+08:00 (the default quota reset) after `now`, in Unix ms.
fn next_daily_reset(now: i64) -> i64 {
    const DAY: i64 = 86_400_000;
    const AT: i64 = 16 * 3_600_000; // 00:00 +08:00 is 16:00 UTC
    (now - AT).div_euclid(DAY) * DAY + DAY + AT
}

fn chat_requests(mock: &Mock) -> Vec<util::mock::Request> {
    mock.requests()
        .into_iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .collect()
}

/// The integration headers of qwen-oauth.md ("The API") on one API request.
fn assert_api_headers(r: &util::mock::Request, token: &str) {
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!(r.header("x-dashscope-authtype"), Some("qwen-oauth"));
    assert_eq!(r.header("x-dashscope-cachecontrol"), Some("enable"));
    let ua = r.header("user-agent").unwrap_or_default();
    assert!(ua.starts_with("qwen-cred/"), "User-Agent: {ua}");
    assert_eq!(r.header("x-dashscope-useragent"), Some(ua));
}

fn assert_no_token_in_argv(oc: &Oc, tokens: &[&str]) {
    let log = oc.argv_log();
    assert!(!log.is_empty(), "QWEN_CRED_BIN was never run");
    for t in tokens {
        assert!(!log.contains(t), "token {t} in argv:\n{log}");
    }
    assert!(!log.contains("Bearer"), "{log}");
}

/// Two accounts the mock knows, both with the API at the mock.
fn two_accounts(mock: &Mock) -> (u64, u64, Value) {
    let a1 = mock.add_account("rt-1", "at-1");
    let a2 = mock.add_account("rt-2", "at-2");
    let mut store = util::store_with(2);
    for a in store["accounts"].as_array_mut().expect("accounts") {
        a["resource_url"] = json!(mock.base_url());
    }
    (a1, a2, store)
}

#[test]
fn install_writes_the_plugin_and_merges_the_provider_idempotently() {
    let mock = Mock::start();
    let oc = Oc::new(&mock);
    let config = oc.dir.join("opencode.json");
    std::fs::write(
        &config,
        "{\"theme\": \"dark\", \"provider\": {\"other\": {}}}\n",
    )
    .expect("write config");

    let (out, err) = oc
        .env
        .expect(&["opencode", "install", "--dry-run", "--write-config"], 0);
    assert!(
        err.contains("would write") && err.contains("would add"),
        "{err}"
    );
    assert!(!oc.plugin_path().exists());
    assert!(!oc.dir.join("opencode.json.bak").exists());
    let block: Value = serde_json::from_str(&out).expect("stdout is the provider block");
    assert_eq!(
        block["provider"]["qwen"]["options"]["baseURL"],
        "https://portal.qwen.ai/v1"
    );
    assert!(block["provider"]["qwen"]["models"]["coder-model"].is_object());

    let (_, err) = oc.env.expect(&["opencode", "install", "--write-config"], 0);
    assert!(err.contains("backup"), "{err}");
    assert_eq!(
        std::fs::read_to_string(oc.plugin_path()).expect("plugin"),
        include_str!("../src/opencode_plugin.js")
    );
    let merged: Value =
        serde_json::from_slice(&std::fs::read(&config).expect("read")).expect("plain JSON");
    assert_eq!(merged["theme"], "dark");
    assert_eq!(merged["provider"]["other"], json!({}));
    assert_eq!(merged["provider"]["qwen"], block["provider"]["qwen"]);
    assert_eq!(
        std::fs::read_to_string(oc.dir.join("opencode.json.bak")).expect("backup"),
        "{\"theme\": \"dark\", \"provider\": {\"other\": {}}}\n"
    );

    // OpenCode's auth.json gets the marker that turns the plugin on (never a token), kept
    // private, other entries untouched.
    let auth_file = oc.env.root.join("home/.local/share/opencode/auth.json");
    let auth: Value =
        serde_json::from_slice(&std::fs::read(&auth_file).expect("auth.json")).expect("json");
    assert_eq!(
        auth["qwen"],
        json!({"type": "oauth", "access": "qwen-cred", "refresh": "qwen-cred", "expires": 4102444800000_i64})
    );
    assert_eq!(util::mode(&auth_file), 0o600);

    // Idempotent: nothing changes, no second backup.
    let before = std::fs::read(&config).expect("read");
    let auth_before = std::fs::read(&auth_file).expect("read");
    let (_, err) = oc.env.expect(&["opencode", "install", "--write-config"], 0);
    assert!(
        err.contains("up to date") && err.contains("already has"),
        "{err}"
    );
    assert_eq!(std::fs::read(&config).expect("read"), before);
    assert_eq!(std::fs::read(&auth_file).expect("read"), auth_before);
    assert!(!oc.dir.join("opencode.json.bak.1").exists());

    // Another provider's entry is kept; an auth.json that does not parse is left alone.
    std::fs::write(&auth_file, r#"{"anthropic": {"type": "api", "key": "k"}}"#).expect("write");
    oc.env.expect(&["opencode", "install", "--write-config"], 0);
    let auth: Value =
        serde_json::from_slice(&std::fs::read(&auth_file).expect("auth.json")).expect("json");
    assert_eq!(auth["anthropic"]["key"], "k");
    assert_eq!(auth["qwen"]["access"], "qwen-cred");
    // A symlinked auth.json (dotfile managers) is written through, not replaced.
    let real = oc.env.root.join("dotfiles-auth.json");
    std::fs::write(&real, r#"{"anthropic": {"type": "api", "key": "k"}}"#).expect("write");
    std::fs::remove_file(&auth_file).expect("rm");
    std::os::unix::fs::symlink(&real, &auth_file).expect("symlink");
    oc.env.expect(&["opencode", "install", "--write-config"], 0);
    assert!(std::fs::symlink_metadata(&auth_file)
        .expect("stat")
        .file_type()
        .is_symlink());
    let auth: Value = serde_json::from_slice(&std::fs::read(&real).expect("read")).expect("json");
    assert_eq!(auth["qwen"]["access"], "qwen-cred");
    std::fs::remove_file(&auth_file).expect("rm");
    std::fs::write(&auth_file, "{broken").expect("write");
    let (_, err) = oc.env.expect(&["opencode", "install", "--write-config"], 6);
    assert!(err.contains("auth.json"), "{err}");
    assert_eq!(std::fs::read(&auth_file).expect("read"), b"{broken");

    // JSONC with comments is refused (exit 6) and left as it was.
    std::fs::remove_file(&config).expect("rm");
    let jsonc = oc.dir.join("opencode.jsonc");
    let commented = "{\n  // mine\n  \"theme\": \"dark\"\n}\n";
    std::fs::write(&jsonc, commented).expect("write jsonc");
    let (out, err) = oc.env.expect(&["opencode", "install", "--write-config"], 6);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("opencode.jsonc") && err.contains("comments"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&jsonc).expect("read"), commented);
}

/// OpenCode's side of `opencode run` against the mock: an opencode.json with the provider
/// that `opencode install --write-config` adds (API at the mock), the plugin, the marker in
/// OpenCode's auth.json, and @opencode-ai/plugin linked in.
fn set_up_opencode(oc: &mut Oc, mock: &Mock) {
    std::fs::write(
        oc.dir.join("opencode.json"),
        r#"{"$schema": "https://opencode.ai/config.json", "autoupdate": false}"#,
    )
    .expect("write opencode.json");
    oc.env
        .set("QWEN_CRED_DEFAULT_RESOURCE_URL", &mock.base_url());
    oc.env.expect(&["opencode", "install", "--write-config"], 0);
    let config: Value =
        serde_json::from_slice(&std::fs::read(oc.dir.join("opencode.json")).expect("read"))
            .expect("json");
    assert_eq!(
        config["provider"]["qwen"]["options"]["baseURL"],
        format!("{}/v1", mock.base_url())
    );
    util::write_private(
        &oc.env.root.join("data/opencode/auth.json"),
        AUTH_MARKER.as_bytes(),
    );
    link_plugin_package(&oc.dir);
}

/// `opencode run -m qwen/coder-model "say hi"`, qwen-cred run through the argv-logging
/// wrapper; (exit code, stdout, stderr).
fn opencode_run(oc: &Oc, opencode: &Path) -> (Option<i32>, String, String) {
    opencode_run_with(oc, opencode, "qwen/coder-model", &[])
}

/// `opencode run -m MODEL "say hi"` with `vars` in OpenCode's environment too.
fn opencode_run_with(
    oc: &Oc,
    opencode: &Path,
    model: &str,
    vars: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let mut cmd = oc.command(opencode, &oc.logging_bin());
    cmd.args(["run", "-m", model, "say hi"]);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    oc.run(cmd, "opencode")
}

/// The issue's end-to-end run: real OpenCode, account 1 out of quota, account 2 answers.
#[test]
fn opencode_run_rotates_to_the_second_account_on_quota() {
    let Some(opencode) = program("QWEN_CRED_TEST_OPENCODE", "opencode") else {
        return;
    };
    let mock = Mock::start();
    let mut oc = Oc::new(&mock);
    let (a1, a2, store) = two_accounts(&mock);
    // `opencode run` sends its title request and the reply's at once, both with account 1's
    // token: each gets the quota answer, whichever comes first.
    mock.api_script_for(a1, ApiReply::QuotaExceeded);
    mock.api_script_for(a1, ApiReply::QuotaExceeded);
    oc.write_store(&store);
    set_up_opencode(&mut oc, &mock);

    let before = now_ms();
    let (code, out, err) = opencode_run(&oc, &opencode);
    let after = now_ms();
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("hello from account 2"),
        "stdout: {out}\nstderr: {err}"
    );

    let chats = chat_requests(&mock);
    assert!(chats.len() >= 2, "{chats:?}");
    assert_api_headers(&chats[0], "at-1");
    let second = chats
        .iter()
        .position(|r| r.header("authorization") == Some("Bearer at-2"))
        .expect("a request with account 2's token");
    assert!(second > 0);
    assert_api_headers(&chats[second], "at-2");
    assert!(mock.state(|s| s.api_ok.get(&a2).copied().unwrap_or(0)) >= 1);

    let s = oc.read_store();
    let acct1 = &s["accounts"][0];
    assert_eq!(acct1["id"], "1");
    assert_eq!(acct1["rate_limit_reason"], "quota", "{acct1}");
    let resets = acct1["rate_limit_resets_at"].as_i64().expect("resets_at");
    assert!(
        resets == next_daily_reset(before) || resets == next_daily_reset(after),
        "resets_at {resets}, expected {}",
        next_daily_reset(before)
    );
    assert_eq!(s["current_account_id"], "2");
    assert_no_token_in_argv(&oc, &["at-1", "at-2", "rt-1", "rt-2"]);
    let log = oc.argv_log();
    assert!(log.contains("token --format json"), "{log}");
    assert!(
        log.contains("report-429 --account 1 --headers - --body -"),
        "{log}"
    );
}

/// Issue 9 item 6, end to end: the API refuses account 1's token (401) and the forced refresh
/// finds its refresh token revoked. OpenCode's request still succeeds, served by account 2,
/// and the store shows account 1 revoked.
#[test]
fn opencode_run_moves_on_when_an_account_is_revoked_mid_request() {
    let Some(opencode) = program("QWEN_CRED_TEST_OPENCODE", "opencode") else {
        return;
    };
    let mock = Mock::start();
    let mut oc = Oc::new(&mock);
    let (_, a2, store) = two_accounts(&mock);
    // The store still thinks at-1 is valid for two hours; the server no longer does.
    mock.expire_access("at-1");
    mock.revoke_refresh("rt-1");
    oc.write_store(&store);
    set_up_opencode(&mut oc, &mock);

    let (code, out, err) = opencode_run(&oc, &opencode);
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("hello from account 2"),
        "stdout: {out}\nstderr: {err}"
    );
    assert!(!out.contains("no usable account"), "{out}");

    // Each request account 1 could not serve was sent again, the same, with account 2. (The
    // first request of `opencode run` is the title's: one that failed would go unnoticed.)
    let chats = chat_requests(&mock);
    assert_api_headers(&chats[0], "at-1");
    for (i, refused) in chats.iter().enumerate() {
        if refused.header("authorization") != Some("Bearer at-1") {
            continue;
        }
        let again = chats[i + 1..]
            .iter()
            .find(|r| r.body == refused.body)
            .unwrap_or_else(|| panic!("request {i} was not sent again: {chats:?}"));
        assert_api_headers(again, "at-2");
    }
    assert!(mock.state(|s| s.api_ok.get(&a2).copied().unwrap_or(0)) >= 1);
    // Only account 1 needed a refresh, and the server refused it.
    let refreshed: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|r| r.is_refresh())
        .map(|r| r.field("refresh_token").unwrap_or_default().to_string())
        .collect();
    assert!(
        !refreshed.is_empty() && refreshed.iter().all(|t| t == "rt-1"),
        "{refreshed:?}"
    );

    let s = oc.read_store();
    assert_eq!(s["accounts"][0]["id"], "1");
    assert_eq!(s["accounts"][0]["status"], "revoked", "{s}");
    assert_ne!(s["accounts"][1]["status"], "revoked", "{s}");
    assert_eq!(s["current_account_id"], "2");
    assert_no_token_in_argv(&oc, &["at-1", "at-2", "rt-1", "rt-2"]);
    assert!(
        oc.argv_log().contains("refresh --account 1 --force"),
        "{}",
        oc.argv_log()
    );
}

/// Imports the installed plugin with node and runs one step the way OpenCode 1.18.33 does: it
/// calls every export as a plugin (each must be a function), runs every `config` hook with
/// the config `plan.config` (default `{}`), then uses the one `auth` hook of provider
/// `plan.provider` (default `qwen`). Prints one JSON line per result, then `{"toasts": [...]}`:
/// what the plugin asked OpenCode's client to show. That client records each toast with the
/// time and never answers, so a plugin that awaited it would hang. `"client": "none"` passes
/// no client, `"throws"` one whose showToast throws. Step `providers` prints the providers
/// served, in the order of the exports.
const DRIVER: &str = r#"
import { pathToFileURL } from "node:url"
const [plugin, plan] = [process.argv[2], JSON.parse(process.argv[3])]
const say = (o) => console.log(JSON.stringify(o))
const mod = await import(pathToFileURL(plugin).href)
const fns = Object.values(mod)
if (fns.some((f) => typeof f !== "function")) throw new Error("Plugin export is not a function")
const toasts = []
const clients = {
  record: { tui: { showToast: (o) => (toasts.push({ ...o.body, at: Date.now() }), new Promise(() => {})) } },
  none: undefined,
  throws: { tui: { showToast: () => { throw new Error("no TUI") } } },
}
const input = { client: clients[plan.client || "record"] }
const all = []
for (const f of fns) all.push(await f(input))
const config = plan.config || {}
for (const h of all) if (h.config) await h.config(config)
const served = all.filter((h) => h.auth).map((h) => h.auth.provider)
const provider = plan.provider || "qwen"
const serving = all.filter((h) => h.auth && h.auth.provider === provider)
if (serving.length !== 1) throw new Error(`${serving.length} plugins serve ${provider}; served: ${served}`)
const auth = serving[0].auth
try {
  if (plan.step === "providers") {
    say({ served })
  } else if (plan.step === "describe") {
    say({ provider: auth.provider, methods: auth.methods.map((m) => ({ type: m.type, label: m.label, prompts: m.prompts })) })
  } else if (plan.step === "login") {
    const r = await auth.methods[0].authorize(plan.inputs)
    say({ url: r.url, instructions: r.instructions, method: r.method })
    say({ result: await r.callback() })
  } else if (plan.step === "fetch") {
    // OpenCode hands the loader the provider with its options merged from the config.
    const options = { ...((config.provider || {})[provider] || {}).options, baseURL: plan.base }
    const opts = await auth.loader(async () => JSON.parse(plan.auth), { id: provider, options })
    say({ apiKey: opts.apiKey })
    const text = JSON.stringify({ model: "coder-model", messages: [{ role: "user", content: "hi" }] })
    // A body that can be read only once, in halves, when the plan asks for one.
    const half = text.length >> 1
    const bytes = (s) => new TextEncoder().encode(s)
    const bodies = {
      string: () => text,
      stream: () =>
        new ReadableStream({
          start(c) {
            c.enqueue(bytes(text.slice(0, half)))
            c.enqueue(bytes(text.slice(half)))
            c.close()
          },
        }),
      generator: () =>
        (async function* () {
          yield bytes(text.slice(0, half))
          yield bytes(text.slice(half))
        })(),
    }
    const one = async () => {
      const body = bodies[plan.body || "string"]()
      const res = await opts.fetch(plan.base + "/chat/completions", {
        method: "POST",
        headers: { "content-type": "application/json", authorization: "Bearer " },
        body,
        ...(typeof body === "string" ? {} : { duplex: "half" }),
      })
      return { status: res.status, body: await res.text(), done: Date.now() }
    }
    // `concurrent` requests at once, as OpenCode sends a title and a reply together.
    const results = await Promise.all(Array.from({ length: plan.concurrent || 1 }, one))
    for (const r of results) say(r)
  }
} catch (e) {
  say({ error: String(e && e.message), name: e && e.name })
}
say({ toasts })
"#;

fn node_step(oc: &Oc, node: &Path, plan: Value) -> Vec<Value> {
    node_step_with(oc, node, &oc.logging_bin(), plan)
}

/// [`node_step`] with this program as `QWEN_CRED_BIN`.
fn node_step_with(oc: &Oc, node: &Path, bin: &Path, plan: Value) -> Vec<Value> {
    let driver = oc.env.root.join("driver.mjs");
    std::fs::write(&driver, DRIVER).expect("write driver");
    let mut cmd = oc.command(node, bin);
    cmd.arg(&driver).arg(oc.plugin_path()).arg(plan.to_string());
    let (code, out, err) = oc.run(cmd, "node");
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}\nstderr: {err}")))
        .collect()
}

/// The toasts a [`node_step`] recorded (its last line).
fn toasts_of(r: &[Value]) -> Vec<Value> {
    r.last()
        .and_then(|l| l["toasts"].as_array())
        .cloned()
        .unwrap_or_else(|| panic!("no toasts line: {r:?}"))
}

fn refresh_tokens(store: &Value) -> Vec<String> {
    store["accounts"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["refresh_token"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A `BROWSER` that records the URL it was asked to open.
fn recording_browser(oc: &mut Oc) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let log = oc.env.root.join("browser.log");
    let path = oc.env.root.join("browser");
    std::fs::write(
        &path,
        format!("#!/bin/sh\nprintf '%s\\n' \"$1\" >> '{}'\n", log.display()),
    )
    .expect("write browser");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    oc.env.set("BROWSER", &path.to_string_lossy());
    log
}

/// The values of a select prompt's options.
fn option_values(prompt: &Value) -> Vec<&str> {
    prompt["options"]
        .as_array()
        .map(|o| o.iter().filter_map(|x| x["value"].as_str()).collect())
        .unwrap_or_default()
}

/// The login menu as the plugin's auth method gives it to `opencode auth login`: the pool
/// (how many accounts, each one's email and state) in the first prompt; add, replace and remove
/// (picked from the list, not typed), start fresh.
#[test]
fn oauth_method_prompts_show_the_pool_and_offer_picks_from_it() {
    let Some(node) = program("QWEN_CRED_TEST_NODE", "node") else {
        return;
    };
    let mock = Mock::start();
    let mut oc = Oc::new(&mock);
    oc.env.set("TZ", "UTC");
    oc.env.expect(&["opencode", "install"], 0);

    let d = node_step(&oc, &node, json!({"step": "describe"}));
    assert_eq!(d[0]["provider"], "qwen");
    let m = &d[0]["methods"][0];
    assert_eq!(m["type"], "oauth");
    let prompts = m["prompts"].as_array().expect("prompts");
    assert_eq!(prompts.len(), 1, "{prompts:?}");
    assert_eq!(prompts[0]["type"], "select");
    assert_eq!(
        prompts[0]["message"],
        "Qwen accounts in qwen-cred: none yet"
    );
    assert_eq!(option_values(&prompts[0]), ["add"]);

    let mut store = util::store_with(3);
    let cools = now_ms() + 3 * 3_600_000;
    store["accounts"][1]["rate_limit_resets_at"] = json!(cools);
    store["accounts"][1]["rate_limit_reason"] = json!("quota");
    store["accounts"][2]["status"] = json!("revoked");
    oc.write_store(&store);
    let d = node_step(&oc, &node, json!({"step": "describe"}));
    let prompts = d[0]["methods"][0]["prompts"].as_array().expect("prompts");
    assert_eq!(prompts.len(), 3, "{prompts:?}");
    let head = prompts[0]["message"].as_str().unwrap_or_default();
    let lines: Vec<&str> = head.lines().collect();
    assert_eq!(
        lines,
        [
            "Qwen accounts in qwen-cred: 3",
            "- 1  user1@example.com  current",
            &format!(
                "- 2  user2@example.com  cooling down until {} (quota)",
                utc_clock(cools)
            ),
            "- 3  user3@example.com  revoked: sign in as it again to revive it",
        ],
        "{head}"
    );
    assert_eq!(
        option_values(&prompts[0]),
        ["add", "replace", "remove", "fresh"]
    );
    for (p, key) in prompts[1..].iter().zip(["replace", "remove"]) {
        assert_eq!(p["type"], "select", "{p}");
        assert_eq!(p["key"], key);
        assert_eq!(p["when"], json!({"key": "mode", "op": "eq", "value": key}));
        assert_eq!(option_values(p), ["1", "2", "3"]);
        assert_eq!(p["options"][0]["label"], "1  user1@example.com");
        assert_eq!(
            p["options"][2]["hint"],
            "revoked: sign in as it again to revive it"
        );
    }
}

/// `opencode auth login`'s side of the plugin: authorize (URL and code; the browser opened),
/// callback, each choice of the menu, and a failed login that says why.
#[test]
fn oauth_method_drives_qwen_cred_login_through_authorize_and_callback() {
    let Some(node) = program("QWEN_CRED_TEST_NODE", "node") else {
        return;
    };
    let mock = Mock::start();
    let mut oc = Oc::new(&mock);
    oc.env.expect(&["opencode", "install"], 0);
    let browser = recording_browser(&mut oc);

    // Empty pool: add.
    mock.push_approval(mock.approval(Some("new@example.com")));
    let r = node_step(
        &oc,
        &node,
        json!({"step": "login", "inputs": {"mode": "add"}}),
    );
    let url = r[0]["url"].as_str().unwrap_or_default();
    assert!(
        url.starts_with(&format!("{}/authorize?user_code=", mock.base_url())),
        "{r:?}"
    );
    let code = url.rsplit('=').next().unwrap_or_default();
    assert!(
        r[0]["instructions"]
            .as_str()
            .unwrap_or_default()
            .contains(code),
        "{r:?}"
    );
    assert_eq!(r[0]["method"], "auto");
    assert_eq!(
        r[1]["result"],
        json!({"type": "success", "access": "qwen-cred", "refresh": "qwen-cred", "expires": 4102444800000_i64})
    );
    let s = oc.read_store();
    assert_eq!(s["accounts"].as_array().map(Vec::len), Some(1));
    assert_eq!(s["accounts"][0]["email"], "new@example.com");
    // qwen-cred opened the browser on the link, as `qwen-cred login` does.
    assert_eq!(
        std::fs::read_to_string(&browser).unwrap_or_default(),
        format!("{url}\n")
    );
    assert!(!oc.argv_log().contains("--no-browser"), "{}", oc.argv_log());

    // Full pool: "add" explains the choices and changes nothing; "replace" and "fresh" work.
    oc.write_store(&util::store_with(10));
    let r = node_step(
        &oc,
        &node,
        json!({"step": "login", "inputs": {"mode": "add"}}),
    );
    let msg = r[0]["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("Replace an account") && msg.contains("Start fresh"),
        "{r:?}"
    );
    assert_eq!(refresh_tokens(&oc.read_store()).len(), 10);

    let r = node_step(
        &oc,
        &node,
        json!({"step": "login", "inputs": {"mode": "replace", "replace": "3"}}),
    );
    assert!(
        r[0]["instructions"]
            .as_str()
            .unwrap_or_default()
            .contains("in place of account 3"),
        "{r:?}"
    );
    assert_eq!(r[1]["result"]["type"], "success", "{r:?}");
    let rts = refresh_tokens(&oc.read_store());
    assert_eq!(rts.len(), 10);
    assert!(!rts.contains(&"rt-3".to_string()), "{rts:?}");
    let newest = mock.state(|s| s.issued.last().map(|i| i.refresh_token.clone()));
    assert!(newest.is_some_and(|t| rts.contains(&t)));

    // Remove: no login; OpenCode shows what was removed and what is left.
    let r = node_step(
        &oc,
        &node,
        json!({"step": "login", "inputs": {"mode": "remove", "remove": "2"}}),
    );
    assert_eq!(r[0]["url"], "", "{r:?}");
    assert_eq!(
        r[0]["instructions"],
        "Removed account 2 (user2@example.com) from qwen-cred's pool; 9 left."
    );
    assert_eq!(r[1]["result"]["type"], "success", "{r:?}");
    let rts = refresh_tokens(&oc.read_store());
    assert_eq!(rts.len(), 9);
    assert!(!rts.contains(&"rt-2".to_string()), "{rts:?}");

    let r = node_step(
        &oc,
        &node,
        json!({"step": "login", "inputs": {"mode": "fresh"}}),
    );
    assert_eq!(r[1]["result"]["type"], "success", "{r:?}");
    assert_eq!(refresh_tokens(&oc.read_store()).len(), 1);

    // A denied login: the URL is shown, then the callback fails saying why (OpenCode prints
    // "Failed to authorize: " and the message), and a toast says it too.
    mock.push_approval(Approval {
        outcome: Outcome::Deny,
        ..Approval::default()
    });
    let r = node_step(
        &oc,
        &node,
        json!({"step": "login", "inputs": {"mode": "add"}}),
    );
    assert_eq!(r[0]["method"], "auto", "{r:?}");
    assert_eq!(r[1]["name"], "QwenCredError", "{r:?}");
    let why = r[1]["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("login failed") && why.contains("denied"),
        "{why}"
    );
    let toasts = toasts_of(&r);
    assert_eq!(toasts.len(), 1, "{toasts:?}");
    assert_eq!(toasts[0]["variant"], "error");
    assert_eq!(toasts[0]["message"], why);
    assert_eq!(refresh_tokens(&oc.read_store()).len(), 1);
    assert!(oc.argv_log().contains("login --json --replace 3"));
    assert!(oc.argv_log().contains("remove 2"));
}

/// The loader's fetch without OpenCode: a 401 costs one forced refresh; a 403 quota text and
/// a 429 rotate; when every account is spent the error names the reset time and what to do.
#[test]
fn plugin_fetch_refreshes_on_401_and_explains_an_exhausted_pool() {
    let Some(node) = program("QWEN_CRED_TEST_NODE", "node") else {
        return;
    };
    let mock = Mock::start();
    let oc = Oc::new(&mock);
    let (a1, a2, store) = two_accounts(&mock);
    oc.write_store(&store);
    oc.env.expect(&["opencode", "install"], 0);
    let plan =
        json!({"step": "fetch", "base": format!("{}/v1", mock.base_url()), "auth": AUTH_MARKER});

    mock.api_script_for(a1, ApiReply::Unauthorized);
    let r = node_step(&oc, &node, plan.clone());
    assert_eq!(r[0]["apiKey"], "");
    assert_eq!(r[1]["status"], 200, "{r:?}");
    assert!(r[1]["body"]
        .as_str()
        .unwrap_or_default()
        .contains("hello from account 1"));
    assert_eq!(mock.count_refreshes(), 1);
    let chats = chat_requests(&mock);
    assert_eq!(chats.len(), 2);
    assert_api_headers(&chats[0], "at-1");
    let fresh = chats[1].header("authorization").unwrap_or_default();
    assert!(
        fresh.starts_with("Bearer ") && fresh != "Bearer at-1",
        "{fresh}"
    );
    assert_eq!(
        mock.account_of(fresh.trim_start_matches("Bearer ")),
        Some(a1)
    );

    mock.api_script_for(
        a1,
        ApiReply::Status {
            status: 403,
            headers: vec![],
            body: "Free allocated quota exceeded.".into(),
        },
    );
    mock.api_script_for(a2, ApiReply::QuotaExceeded);
    let before = now_ms();
    let r = node_step(&oc, &node, plan);
    let msg = r[1]["error"].as_str().unwrap_or_default();
    assert_eq!(r[1]["name"], "QwenCredError", "{r:?}");
    assert!(
        msg.contains("out of quota") && msg.contains("opencode auth login"),
        "{msg}"
    );
    let at = next_daily_reset(before);
    let shown = time_rfc3339(at);
    assert!(msg.contains(&shown), "{msg} should name {shown}");
    let chats = chat_requests(&mock);
    assert_eq!(chats.len(), 4, "{chats:?}");
    assert_eq!(chats[3].header("authorization"), Some("Bearer at-2"));
    let s = oc.read_store();
    for a in s["accounts"].as_array().expect("accounts") {
        assert_eq!(a["rate_limit_reason"], "quota", "{a}");
    }
    assert_no_token_in_argv(&oc, &["at-1", "at-2", "rt-1", "rt-2"]);
    let log = oc.argv_log();
    assert!(log.contains("refresh --account 1 --force"), "{log}");
    assert!(
        log.contains("report-429 --account 2 --headers - --body - --json"),
        "{log}"
    );
}

/// The plugin hands report-429 the 429's headers with its body: a reset header alone decides
/// how long the account cools down, and a quota window with an X-RateLimit-Reset too.
#[test]
fn plugin_fetch_passes_the_rate_limit_headers_to_report_429() {
    let Some(node) = program("QWEN_CRED_TEST_NODE", "node") else {
        return;
    };
    let mock = Mock::start();
    let oc = Oc::new(&mock);
    let ids: Vec<u64> = (1..=3)
        .map(|i| mock.add_account(&format!("rt-{i}"), &format!("at-{i}")))
        .collect();
    let mut store = util::store_with(3);
    for a in store["accounts"].as_array_mut().expect("accounts") {
        a["resource_url"] = json!(mock.base_url());
    }
    store["accounts"][1]["quota_window_ms"] = json!(5 * 3_600_000);
    oc.write_store(&store);
    oc.env.expect(&["opencode", "install"], 0);
    let plan =
        json!({"step": "fetch", "base": format!("{}/v1", mock.base_url()), "auth": AUTH_MARKER});
    let h = |k: &str, v: &str| (k.to_string(), v.to_string());

    // A throttle whose only hint is OpenAI-style reset headers: the later one counts.
    mock.api_script_for(
        ids[0],
        ApiReply::Status {
            status: 429,
            headers: vec![
                h("x-ratelimit-reset-requests", "1s"),
                h("x-ratelimit-reset-tokens", "6m0s"),
            ],
            body: r#"{"error":{"message":"Rate limit reached for tokens"}}"#.into(),
        },
    );
    // A quota 429 on an account with a 5-hour window, saying when its window resets.
    let reset_s = now_ms() / 1000 + 3600;
    mock.api_script_for(
        ids[1],
        ApiReply::Status {
            status: 429,
            headers: vec![h("X-RateLimit-Reset", &reset_s.to_string())],
            body: r#"{"error":{"code":"insufficient_quota","message":"quota exceeded"}}"#.into(),
        },
    );
    let before = now_ms();
    let r = node_step(&oc, &node, plan);
    assert_eq!(r[1]["status"], 200, "{r:?}");
    assert_eq!(bearers(&mock), ["at-1", "at-2", "at-3"]);
    let s = oc.read_store();
    let cooling = |i: usize| {
        let a = &s["accounts"][i];
        (
            a["rate_limit_resets_at"].as_i64().unwrap_or(0) - before,
            a["rate_limit_reason"].clone(),
        )
    };
    let (ms, reason) = cooling(0);
    assert_eq!(reason, "retry-after");
    assert!((ms - 360_000).abs() < 10_000, "{ms}");
    let (ms, reason) = cooling(1);
    assert_eq!(reason, "quota");
    assert!((ms - 3_600_000).abs() < 10_000, "{ms}");
    let log = oc.argv_log();
    assert!(
        log.contains("report-429 --account 1 --headers - --body - --json"),
        "{log}"
    );
    assert_no_token_in_argv(&oc, &["at-1", "at-2", "at-3", "rt-1", "rt-2", "rt-3"]);
}

/// The chat requests' bearer tokens, in order.
fn bearers(mock: &Mock) -> Vec<String> {
    chat_requests(mock)
        .iter()
        .map(|r| {
            r.header("authorization")
                .unwrap_or_default()
                .trim_start_matches("Bearer ")
                .to_string()
        })
        .collect()
}

/// Every chat request carried the whole body the caller gave once.
fn assert_same_bodies(mock: &Mock) {
    let bodies: Vec<String> = chat_requests(mock).into_iter().map(|r| r.body).collect();
    let want = r#"{"model":"coder-model","messages":[{"role":"user","content":"hi"}]}"#;
    assert!(bodies.iter().all(|b| b == want), "{bodies:?}");
}

/// A 401 whose forced refresh finds the account revoked sends the same request (a body that
/// can be read only once) with the next account; a 401 on that account gets its own refresh.
/// Only when every account is revoked does the request fail, saying to log in.
#[test]
fn plugin_fetch_moves_to_the_next_account_when_the_first_is_revoked() {
    let Some(node) = program("QWEN_CRED_TEST_NODE", "node") else {
        return;
    };
    let mock = Mock::start();
    let oc = Oc::new(&mock);
    let (_, a2, store) = two_accounts(&mock);
    oc.write_store(&store);
    oc.env.expect(&["opencode", "install"], 0);
    mock.expire_access("at-1");
    mock.revoke_refresh("rt-1");
    mock.api_script_for(a2, ApiReply::Unauthorized);
    let plan = json!({"step": "fetch", "base": format!("{}/v1", mock.base_url()),
        "auth": AUTH_MARKER, "body": "stream"});

    let r = node_step(&oc, &node, plan);
    assert_eq!(r[1]["status"], 200, "{r:?}");
    assert!(
        r[1]["body"]
            .as_str()
            .unwrap_or_default()
            .contains("hello from account 2"),
        "{r:?}"
    );
    let sent = bearers(&mock);
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(sent[..2], ["at-1", "at-2"]);
    assert_ne!(sent[2], "at-2");
    assert_eq!(mock.account_of(&sent[2]), Some(a2));
    assert_same_bodies(&mock);

    let s = oc.read_store();
    assert_eq!(s["accounts"][0]["status"], "revoked", "{s}");
    assert_ne!(s["accounts"][1]["status"], "revoked", "{s}");
    assert_eq!(s["current_account_id"], "2");
    let log = oc.argv_log();
    assert!(log.contains("refresh --account 1 --force"), "{log}");
    assert!(log.contains("refresh --account 2 --force"), "{log}");
    assert_no_token_in_argv(&oc, &["at-1", "at-2", "rt-1", "rt-2", &sent[2]]);
    // One toast says which account is gone and how to get it back.
    assert_revoked_toast(&r, "account 1 (user1@example.com)");

    // With every account revoked, `token` has nothing left: the error says to log in.
    mock.expire_access(&sent[2]);
    mock.revoke_refresh(&refresh_tokens(&s)[1]);
    let plan = json!({"step": "fetch", "base": format!("{}/v1", mock.base_url()),
        "auth": AUTH_MARKER});
    let r = node_step(&oc, &node, plan);
    let msg = r[1]["error"].as_str().unwrap_or_default();
    assert_eq!(r[1]["name"], "QwenCredError", "{r:?}");
    assert!(
        msg.contains("no usable account") && msg.contains("opencode auth login"),
        "{msg}"
    );
    let s = oc.read_store();
    for a in s["accounts"].as_array().expect("accounts") {
        assert_eq!(a["status"], "revoked", "{a}");
    }
    assert_revoked_toast(&r, "account 2 (user2@example.com)");
}

/// Exactly one toast, an error naming `who` and "opencode auth login".
fn assert_revoked_toast(r: &[Value], who: &str) {
    let toasts = toasts_of(r);
    assert_eq!(toasts.len(), 1, "{toasts:?}");
    let t = &toasts[0];
    assert_eq!(t["variant"], "error", "{t}");
    let msg = t["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(who) && msg.contains("revoked") && msg.contains("opencode auth login"),
        "{msg}"
    );
}

/// `token` itself finds account 1's refresh token dead (its token expired): the request is
/// served by account 2, and a toast says account 1 was revoked.
#[test]
fn plugin_toasts_an_account_that_token_finds_revoked() {
    let Some(node) = program("QWEN_CRED_TEST_NODE", "node") else {
        return;
    };
    let mock = Mock::start();
    let oc = Oc::new(&mock);
    let (_, _, mut store) = two_accounts(&mock);
    store["accounts"][0]["expiry_date"] = json!(now_ms() - 1000);
    mock.revoke_refresh("rt-1");
    oc.write_store(&store);
    oc.env.expect(&["opencode", "install"], 0);
    let plan = json!({"step": "fetch", "base": format!("{}/v1", mock.base_url()),
        "auth": AUTH_MARKER});
    let r = node_step(&oc, &node, plan);
    assert_eq!(r[1]["status"], 200, "{r:?}");
    assert_eq!(bearers(&mock), ["at-2"]);
    assert_eq!(oc.read_store()["accounts"][0]["status"], "revoked");
    assert!(!oc.argv_log().contains("refresh"), "{}", oc.argv_log());
    assert_revoked_toast(&r, "account 1 (user1@example.com)");
}

/// A 401 whose forced refresh fails because the sign-in server is down: the request goes to
/// another account that has a valid token; the first account is kept, not marked revoked,
/// and is used again once the server is back. An account whose fresh token is refused too is
/// passed over the same way.
#[test]
fn plugin_fetch_tries_the_next_account_while_the_sign_in_server_is_down() {
    let Some(node) = program("QWEN_CRED_TEST_NODE", "node") else {
        return;
    };
    let mock = Mock::start();
    let mut oc = Oc::new(&mock);
    oc.env.set("QWEN_CRED_TOKEN_REFRESH_RETRY_DELAY_MS", "0");
    let (a1, a2, store) = two_accounts(&mock);
    oc.write_store(&store);
    oc.env.expect(&["opencode", "install"], 0);
    mock.expire_access("at-1");
    mock.set_sticky_fault(Some(Fault::Status(503)));
    let plan = json!({"step": "fetch", "base": format!("{}/v1", mock.base_url()),
        "auth": AUTH_MARKER, "body": "generator"});

    let r = node_step(&oc, &node, plan.clone());
    assert_eq!(r[1]["status"], 200, "{r:?}");
    assert!(
        r[1]["body"]
            .as_str()
            .unwrap_or_default()
            .contains("hello from account 2"),
        "{r:?}"
    );
    assert_eq!(bearers(&mock), ["at-1", "at-2"]);
    assert_same_bodies(&mock);
    assert!(mock.count_refreshes() >= 1);
    let s = oc.read_store();
    let acct1 = &s["accounts"][0];
    assert_ne!(acct1["status"], "revoked", "{acct1}");
    assert_eq!(acct1["refresh_token"], "rt-1");
    assert!(mock.is_live_refresh("rt-1"));
    // Passed over for this request only: the next one tries account 1 first again.
    assert_eq!(s["current_account_id"], "1");
    let log = oc.argv_log();
    assert!(log.contains("refresh --account 1 --force"), "{log}");
    assert!(log.contains("token --account 2 --format json"), "{log}");

    // No account left with a token the API takes: the error names the sign-in server.
    mock.expire_access("at-2");
    let r = node_step(&oc, &node, plan.clone());
    let msg = r[1]["error"].as_str().unwrap_or_default();
    assert_eq!(r[1]["name"], "QwenCredError", "{r:?}");
    assert!(msg.contains("sign-in server"), "{msg}");
    let s = oc.read_store();
    for a in s["accounts"].as_array().expect("accounts") {
        assert_ne!(a["status"], "revoked", "{a}");
    }

    // The server is back: account 1 is refreshed and serves again.
    mock.set_sticky_fault(None);
    let r = node_step(&oc, &node, plan.clone());
    assert_eq!(r[1]["status"], 200, "{r:?}");
    assert!(
        r[1]["body"]
            .as_str()
            .unwrap_or_default()
            .contains("hello from account 1"),
        "{r:?}"
    );
    let last = bearers(&mock).pop().unwrap_or_default();
    assert_eq!(mock.account_of(&last), Some(a1));
    assert_ne!(last, "at-1");

    // An account whose fresh token is refused as well is passed over the same way; account
    // 2's 401 (at-2 was expired above) gets its own forced refresh.
    mock.api_script_for(a1, ApiReply::Unauthorized);
    mock.api_script_for(a1, ApiReply::Unauthorized);
    let before = bearers(&mock).len();
    let r = node_step(&oc, &node, plan);
    assert_eq!(r[1]["status"], 200, "{r:?}");
    assert!(
        r[1]["body"]
            .as_str()
            .unwrap_or_default()
            .contains("hello from account 2"),
        "{r:?}"
    );
    let sent = bearers(&mock)[before..].to_vec();
    let owners: Vec<_> = sent.iter().map(|t| mock.account_of(t)).collect();
    assert_eq!(owners, [Some(a1), Some(a1), Some(a2), Some(a2)], "{sent:?}");
    assert_eq!(sent[0], last);
    assert_ne!(sent[1], last);
    assert_eq!(sent[2], "at-2");
    assert_ne!(sent[3], "at-2");
    assert_same_bodies(&mock);
    let mut secrets = vec!["at-1", "at-2", "rt-1", "rt-2"];
    secrets.extend(sent.iter().map(String::as_str));
    assert_no_token_in_argv(&oc, &secrets);
}

/// Unix ms as qwen-cred prints it: RFC 3339 UTC, whole seconds.
fn time_rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A private tmux server (its own socket) running in the test's environment.
struct Tmux<'a> {
    oc: &'a Oc,
    tmux: PathBuf,
    socket: PathBuf,
}

impl Tmux<'_> {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        let mut c = self.oc.command(&self.tmux, &self.oc.logging_bin());
        c.arg("-S")
            .arg(&self.socket)
            .args(["-f", "/dev/null"])
            .args(args);
        c.output().expect("run tmux")
    }

    fn screen(&self) -> String {
        text(
            &self
                .cmd(&["capture-pane", "-p", "-J", "-S", "-200", "-t", "oc"])
                .stdout,
        )
    }

    /// Polls the screen until it shows `what`; panics with the screen after `secs`.
    fn wait_for(&self, what: &str, secs: u64) -> String {
        let end = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let screen = self.screen();
            if screen.contains(what) {
                return screen;
            }
            assert!(
                std::time::Instant::now() < end,
                "the screen never showed {what:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux<'_> {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// `opencode auth login` under tmux in `oc`'s environment, up to the plugin's first prompt
/// (the pool); `expect` is a line that prompt must show. Each `run` gets its own tmux server:
/// one just killed may still hold its socket.
fn auth_login<'a>(oc: &'a Oc, opencode: &Path, tmux: PathBuf, run: &str, expect: &str) -> Tmux<'a> {
    let t = Tmux {
        oc,
        tmux,
        socket: oc.env.root.join(format!("tmux-{run}.sock")),
    };
    let script = format!(
        "'{}' auth login; echo \"opencode exited: $?\"; sleep 120",
        opencode.display()
    );
    let o = t.cmd(&[
        "new-session",
        "-d",
        "-s",
        "oc",
        "-x",
        "150",
        "-y",
        "40",
        "sh",
        "-c",
        &script,
    ]);
    assert!(o.status.success(), "tmux: {}", text(&o.stderr));
    t.wait_for("Select provider", 60);
    t.cmd(&["send-keys", "-t", "oc", "qwen"]);
    t.wait_for("(1 match)", 30);
    t.cmd(&["send-keys", "-t", "oc", "Enter"]);
    t.wait_for(expect, 30);
    t
}

/// `opencode auth login` for real, under tmux: pick Qwen, see the empty pool, "Add an
/// account", and OpenCode shows the mock's URL, waits for the approval and stores the marker
/// in its auth.json.
#[test]
fn opencode_auth_login_adds_an_account_under_tmux() {
    let Some(opencode) = program("QWEN_CRED_TEST_OPENCODE", "opencode") else {
        return;
    };
    let Some(tmux) = program("QWEN_CRED_TEST_TMUX", "tmux") else {
        return;
    };
    let mock = Mock::start();
    let oc = Oc::new(&mock);
    oc.env.expect(&["opencode", "install"], 0);
    link_plugin_package(&oc.dir);
    mock.push_approval(Approval {
        pending_polls: 2,
        ..mock.approval(Some("tmux@example.com"))
    });

    let t = auth_login(
        &oc,
        &opencode,
        tmux,
        "add",
        "Qwen accounts in qwen-cred: none yet",
    );
    t.wait_for("Add an account", 30);
    t.cmd(&["send-keys", "-t", "oc", "Enter"]);
    let screen = t.wait_for("opencode exited: 0", 90);
    assert!(screen.contains("Login successful"), "{screen}");
    assert!(
        screen.contains(&format!("{}/authorize?user_code=", mock.base_url())),
        "{screen}"
    );

    let auth: Value = serde_json::from_slice(
        &std::fs::read(oc.env.root.join("data/opencode/auth.json")).expect("auth.json"),
    )
    .expect("auth.json parses");
    assert_eq!(auth["qwen"]["type"], "oauth");
    assert_eq!(auth["qwen"]["access"], "qwen-cred");
    let s = oc.read_store();
    assert_eq!(s["accounts"].as_array().map(Vec::len), Some(1));
    assert_eq!(s["accounts"][0]["email"], "tmux@example.com");
    assert!(oc.argv_log().contains("login --json"));
}

/// The menu of the real `opencode auth login` with accounts in the pool: it lists them with
/// their state; "Replace an account" and "Remove an account" pick from that list with the
/// arrow keys; a denied login ends with OpenCode saying why.
#[test]
fn opencode_auth_login_shows_the_pool_and_replaces_or_removes_a_picked_account() {
    let Some(opencode) = program("QWEN_CRED_TEST_OPENCODE", "opencode") else {
        return;
    };
    let Some(tmux) = program("QWEN_CRED_TEST_TMUX", "tmux") else {
        return;
    };
    let mock = Mock::start();
    let oc = Oc::new(&mock);
    oc.env.expect(&["opencode", "install"], 0);
    link_plugin_package(&oc.dir);
    let mut store = util::store_with(3);
    store["accounts"][1]["rate_limit_resets_at"] = json!(now_ms() + 3_600_000);
    store["accounts"][1]["rate_limit_reason"] = json!("quota");
    oc.write_store(&store);
    let emails = |oc: &Oc| -> Vec<String> {
        oc.read_store()["accounts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["email"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };

    // Replace account 2, picked as the second entry of the list.
    mock.push_approval(mock.approval(Some("picked@example.com")));
    let t = auth_login(
        &oc,
        &opencode,
        tmux.clone(),
        "replace",
        "Qwen accounts in qwen-cred: 3",
    );
    let screen = t.wait_for("Start fresh", 30);
    assert!(screen.contains("1  user1@example.com  current"), "{screen}");
    assert!(
        screen.contains("2  user2@example.com  cooling down until"),
        "{screen}"
    );
    assert!(screen.contains("3  user3@example.com  ok"), "{screen}");
    t.cmd(&["send-keys", "-t", "oc", "Down", "Enter"]);
    t.wait_for("Account to replace", 30);
    t.cmd(&["send-keys", "-t", "oc", "Down", "Enter"]);
    let screen = t.wait_for("opencode exited: 0", 90);
    assert!(screen.contains("Login successful"), "{screen}");
    assert!(screen.contains("in place of account 2"), "{screen}");
    assert_eq!(
        emails(&oc),
        [
            "user1@example.com",
            "picked@example.com",
            "user3@example.com"
        ]
    );
    drop(t);

    // Remove account 1, the first entry.
    let t = auth_login(
        &oc,
        &opencode,
        tmux.clone(),
        "remove",
        "Qwen accounts in qwen-cred: 3",
    );
    t.wait_for("Start fresh", 30);
    t.cmd(&["send-keys", "-t", "oc", "Down", "Down", "Enter"]);
    t.wait_for("Account to remove", 30);
    t.cmd(&["send-keys", "-t", "oc", "Enter"]);
    let screen = t.wait_for("opencode exited: 0", 60);
    assert!(
        screen.contains("Removed account 1 (user1@example.com) from qwen-cred's pool; 2 left."),
        "{screen}"
    );
    assert_eq!(emails(&oc), ["picked@example.com", "user3@example.com"]);
    drop(t);

    // A denied login: OpenCode's "Failed to authorize" says why.
    mock.push_approval(Approval {
        outcome: Outcome::Deny,
        ..Approval::default()
    });
    let t = auth_login(
        &oc,
        &opencode,
        tmux,
        "deny",
        "Qwen accounts in qwen-cred: 2",
    );
    t.wait_for("Start fresh", 30);
    t.cmd(&["send-keys", "-t", "oc", "Enter"]);
    let screen = t.wait_for("opencode exited: 1", 90);
    assert!(
        screen.contains("Failed to authorize: Qwen: login failed: "),
        "{screen}"
    );
    assert!(screen.contains("denied"), "{screen}");
    assert_eq!(emails(&oc), ["picked@example.com", "user3@example.com"]);
}

/// The local wall-clock time "HH:MM" the plugin shows for `ms` with TZ=UTC.
fn utc_clock(ms: i64) -> String {
    let rfc = time_rfc3339(ms);
    rfc.get(11..16).unwrap_or_default().to_string()
}

/// Issue 11: three requests sent at once all get account 1's token and all hit its daily
/// quota; each reports it, and the requests move to account 2. The user gets one toast, not
/// three: which account now serves, which one cools, why and until when.
#[test]
fn plugin_toasts_once_when_concurrent_requests_move_to_the_next_account() {
    let Some(node) = program("QWEN_CRED_TEST_NODE", "node") else {
        return;
    };
    let mock = Mock::start();
    let mut oc = Oc::new(&mock);
    oc.env.set("TZ", "UTC");
    let (a1, _, store) = two_accounts(&mock);
    oc.write_store(&store);
    oc.env.expect(&["opencode", "install"], 0);
    for _ in 0..3 {
        mock.api_script_for(a1, ApiReply::QuotaExceeded);
    }
    let plan = json!({"step": "fetch", "base": format!("{}/v1", mock.base_url()),
        "auth": AUTH_MARKER, "concurrent": 3});

    let before = now_ms();
    let r = node_step_with(&oc, &node, &oc.barrier_bin(3), plan);
    for res in &r[1..4] {
        assert_eq!(res["status"], 200, "{r:?}");
        assert!(res["body"]
            .as_str()
            .unwrap_or_default()
            .contains("hello from account 2"));
    }
    // All three really hit the 429 and reported it.
    assert_eq!(bearers(&mock)[..3], ["at-1", "at-1", "at-1"]);
    let log = oc.argv_log();
    assert_eq!(
        log.matches("report-429 --account 1 --headers - --body - --json")
            .count(),
        3,
        "{log}"
    );

    let toasts = toasts_of(&r);
    assert_eq!(toasts.len(), 1, "{toasts:?}");
    let t = &toasts[0];
    assert_eq!(t["variant"], "info", "{t}");
    assert!(
        t["title"].as_str().unwrap_or_default().contains("switched"),
        "{t}"
    );
    let msg = t["message"].as_str().unwrap_or_default();
    for want in [
        "Now using account 2 (user2@example.com)",
        "account 1 (user1@example.com) is out of its daily quota",
        &format!("until {}", utc_clock(next_daily_reset(before))),
    ] {
        assert!(msg.contains(want), "{msg:?} should say {want:?}");
    }
}

/// The plugin reads `quiet_mode` from qwen-cred's config: on, a move to another account shows
/// no toast. Without a client, or with one whose showToast throws (no TUI), requests work as
/// before.
#[test]
fn plugin_is_quiet_in_quiet_mode_and_works_without_a_tui() {
    let Some(node) = program("QWEN_CRED_TEST_NODE", "node") else {
        return;
    };
    let mock = Mock::start();
    let oc = Oc::new(&mock);
    let (a1, _, store) = two_accounts(&mock);
    oc.env.expect(&["opencode", "install"], 0);
    for client in ["record", "none", "throws"] {
        oc.write_store(&store);
        mock.api_script_for(a1, ApiReply::QuotaExceeded);
        let plan = json!({"step": "fetch", "base": format!("{}/v1", mock.base_url()),
            "auth": AUTH_MARKER, "client": client});
        let r = node_step(&oc, &node, plan.clone());
        assert_eq!(r[1]["status"], 200, "{client}: {r:?}");
        assert_eq!(oc.read_store()["current_account_id"], "2");
        assert_eq!(
            toasts_of(&r).len(),
            usize::from(client == "record"),
            "{r:?}"
        );
    }

    std::fs::write(oc.dir.join("qwen.json"), r#"{"quiet_mode": true}"#).expect("write config");
    oc.write_store(&store);
    mock.api_script_for(a1, ApiReply::QuotaExceeded);
    let plan = json!({"step": "fetch", "base": format!("{}/v1", mock.base_url()),
        "auth": AUTH_MARKER});
    let r = node_step(&oc, &node, plan);
    assert_eq!(r[1]["status"], 200, "{r:?}");
    assert_eq!(oc.read_store()["current_account_id"], "2");
    assert_eq!(toasts_of(&r), Vec::<Value>::new());
    assert!(oc.argv_log().contains("config --json"));
}

/// Every account cooling down for a short while: the plugin says it waits, and for how long,
/// before the wait starts (the toast comes at least a second before the request is answered),
/// whether `report-429` or `token` does the waiting.
#[test]
fn plugin_toasts_a_wait_for_a_cooldown_before_it_starts() {
    let Some(node) = program("QWEN_CRED_TEST_NODE", "node") else {
        return;
    };
    let mock = Mock::start();
    let mut oc = Oc::new(&mock);
    oc.env
        .set("QWEN_CRED_RETRY_SAME_ACCOUNT_THRESHOLD_SECONDS", "0");
    let a1 = mock.add_account("rt-1", "at-1");
    let mut store = util::store_with(1);
    store["accounts"][0]["resource_url"] = json!(mock.base_url());
    oc.write_store(&store);
    oc.env.expect(&["opencode", "install"], 0);
    let plan = json!({"step": "fetch", "base": format!("{}/v1", mock.base_url()),
        "auth": AUTH_MARKER});

    // report-429 waits: the only account says "retry after 2 s".
    mock.api_script_for(
        a1,
        ApiReply::RateLimited {
            retry_after: Some("2".into()),
        },
    );
    let r = node_step(&oc, &node, plan.clone());
    assert_eq!(r[1]["status"], 200, "{r:?}");
    assert_eq!(bearers(&mock), ["at-1", "at-1"]);
    let toasts = toasts_of(&r);
    assert_eq!(toasts.len(), 1, "{toasts:?}");
    let t = &toasts[0];
    assert_eq!(t["variant"], "warning", "{t}");
    let msg = t["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("cooling down")
            && msg.contains("Waiting 2 s (until ")
            && msg.contains("then account 1 (user1@example.com) serves"),
        "{msg}"
    );
    let early = r[1]["done"].as_i64().unwrap_or(0) - t["at"].as_i64().unwrap_or(i64::MAX);
    assert!(early >= 1000, "the toast came {early} ms before the answer");

    // token waits: the account is still cooling down for 2 s when the request starts.
    let mut store = oc.read_store();
    store["accounts"][0]["rate_limit_resets_at"] = json!(now_ms() + 2000);
    store["accounts"][0]["last_rate_limited_at"] = json!(now_ms());
    oc.write_store(&store);
    let r = node_step(&oc, &node, plan);
    assert_eq!(r[1]["status"], 200, "{r:?}");
    let toasts = toasts_of(&r);
    assert_eq!(toasts.len(), 1, "{toasts:?}");
    assert_eq!(toasts[0]["variant"], "warning");
    assert!(
        toasts[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Waiting "),
        "{toasts:?}"
    );
    let early = r[1]["done"].as_i64().unwrap_or(0) - toasts[0]["at"].as_i64().unwrap_or(i64::MAX);
    assert!(early >= 1000, "the toast came {early} ms before the answer");
}

/// The keys of `report-429 --json`, in the order the man page lists them.
const DECISION_KEYS: [&str; 9] = [
    "account_id",
    "email",
    "decision",
    "reason",
    "cooling_until",
    "next_account_id",
    "next_email",
    "next_at",
    "wait_ms",
];

fn decision(out: &str) -> Value {
    assert_eq!(out.lines().count(), 1, "one line: {out}");
    let v: Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let keys: Vec<&str> = v
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(keys, DECISION_KEYS, "{out}");
    v
}

/// `report-429 --json`: what the plugin reads instead of guessing. One shape for every
/// decision: cooled (and until when, why), a duplicate of the report that set the cooldown, a
/// short wait on the same account; the next account and from when; how long it waits.
#[test]
fn report_429_json_says_what_it_decided_before_it_waits() {
    let mut env = Env::new();
    let (offset, reset) = util::noon_reset();
    env.set("QWEN_CRED_QUOTA_RESET_UTC_OFFSET", &offset);
    env.write_store(&util::store_with(2));
    let body = env.root.join("quota.json");
    std::fs::write(&body, r#"{"error":{"code":"insufficient_quota"}}"#).expect("write body");
    let body = body.to_string_lossy().to_string();

    let (out, _) = env.expect(&["report-429", "--json", "--body", &body], 0);
    let d = decision(&out);
    let midnight = time_rfc3339(reset);
    assert_eq!(d["account_id"], "1");
    assert_eq!(d["email"], "user1@example.com");
    assert_eq!(d["decision"], "cooled");
    assert_eq!(d["reason"], "quota");
    assert_eq!(d["cooling_until"], midnight.as_str());
    assert_eq!(d["next_account_id"], "2");
    assert_eq!(d["next_email"], "user2@example.com");
    assert_eq!(d["wait_ms"], 0);
    let next_at = d["next_at"].as_str().unwrap_or_default().to_string();
    assert!(next_at <= time_rfc3339(now_ms()), "{next_at}: now");

    // The same 429 seen by a request in flight: nothing changes, and it says so.
    let (out, _) = env.expect(
        &["report-429", "--json", "--account", "1", "--body", &body],
        0,
    );
    let d = decision(&out);
    assert_eq!(d["decision"], "already_cooling");
    assert_eq!(d["reason"], "quota");
    assert_eq!(d["cooling_until"], midnight.as_str());
    assert_eq!(d["next_account_id"], "2");

    // A short Retry-After: retry the same account after the wait; nothing cools.
    let (out, _) = env.expect(
        &[
            "report-429",
            "--json",
            "--account",
            "2",
            "--retry-after",
            "1",
            "--no-wait",
        ],
        0,
    );
    let d = decision(&out);
    assert_eq!(d["decision"], "retry_same");
    assert_eq!(d["reason"], Value::Null);
    assert_eq!(d["cooling_until"], Value::Null);
    assert_eq!(d["next_account_id"], "2");
    assert_eq!(d["wait_ms"], 0, "--no-wait never waits");

    // Every account cooling down past the wait limit: exit 4, and the line still says which
    // account is free first, and when.
    let (out, err) = env.expect(
        &[
            "report-429",
            "--json",
            "--account",
            "2",
            "--retry-after",
            "600",
            "--no-wait",
        ],
        4,
    );
    let d = decision(&out);
    assert_eq!(d["decision"], "cooled");
    assert_eq!(d["reason"], "retry-after");
    assert_eq!(d["next_account_id"], "2");
    assert_eq!(d["next_at"], d["cooling_until"]);
    assert_eq!(d["wait_ms"], 0);
    assert!(err.contains("cooling down"), "{err}");

    // A wait within max_rate_limit_wait_seconds: the line comes first, then the wait.
    env.set("QWEN_CRED_RETRY_SAME_ACCOUNT_THRESHOLD_SECONDS", "0");
    env.write_store(&util::store_with(1));
    let mut child = env
        .cmd(&["report-429", "--json", "--retry-after", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start report-429");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read the decision");
    assert_eq!(
        child.try_wait().expect("try_wait"),
        None,
        "printed before the wait"
    );
    let d = decision(&line);
    assert_eq!(d["decision"], "cooled");
    assert_eq!(d["next_account_id"], "1");
    assert_eq!(d["next_at"], d["cooling_until"]);
    let wait = d["wait_ms"].as_i64().unwrap_or(0);
    assert!((1000..=2000).contains(&wait), "{d}");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}

/// A key pool through the plugin: a key the server refuses (401) gets the plugin's forced
/// `refresh`, which for a key account checks the key, finds it invalid and revokes it
/// (exit 3); the same request then goes to the next key, with the key's own headers and
/// none of OAuth's. No key reaches a command line.
#[test]
fn plugin_fetch_passes_over_a_key_the_server_rejects() {
    use std::io::Write;
    let Some(node) = program("QWEN_CRED_TEST_NODE", "node") else {
        return;
    };
    let (k1, k2) = ("sk-sp-plugin-key-1", "sk-sp-plugin-key-2");
    let mock = Mock::start();
    mock.add_key(k1, Default::default());
    mock.add_key(k2, Default::default());
    let oc = Oc::new(&mock);
    let base = format!("{}/v1", mock.base_url());
    for k in [k1, k2] {
        let mut child = oc
            .env
            .cmd(&["add-key", "--base-url", &base, "--header", "X-Client: test"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("add-key");
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(k.as_bytes());
        }
        assert!(child.wait().expect("wait").success());
    }
    oc.env.expect(&["opencode", "install"], 0);
    mock.revoke_key(k1);
    let plan = json!({"step": "fetch", "base": base, "auth": AUTH_MARKER, "body": "stream"});
    let r = node_step(&oc, &node, plan);
    assert_eq!(r[1]["status"], 200, "{r:?}");
    assert!(bearers(&mock) == [k1, k2], "not key 1, then key 2");
    let last = chat_requests(&mock).pop().expect("request");
    assert_eq!(last.header("x-client"), Some("test"));
    assert_eq!(last.header("x-dashscope-authtype"), None);
    assert_same_bodies(&mock);
    let s = oc.read_store();
    assert_eq!(s["accounts"][0]["status"], "revoked", "{s}");
    assert!(s["accounts"][1].get("status").is_none(), "{s}");
    let log = oc.argv_log();
    assert!(log.contains("refresh --account 1 --force"), "{log}");
    assert_no_token_in_argv(&oc, &[k1, k2]);
}

// Named pools in OpenCode (issue 12): a provider of opencode.json whose
// `options.qwenCredPool` names a pool is served by the same plugin from that pool, beside
// `qwen`; `opencode auth login` for it adds API keys (on qwen-cred's stdin, never its argv).

const POOL_KEY_1: &str = "sk-sp-oc-pool-key-0001";
const POOL_KEY_2: &str = "sk-sp-oc-pool-key-0002";
const POOL_KEY_3: &str = "sk-sp-oc-pool-key-0003";

/// `text` with each test key shown as `<key>`: a failing assertion never prints a key.
fn hide_keys(text: &str) -> String {
    [POOL_KEY_1, POOL_KEY_2, POOL_KEY_3]
        .iter()
        .fold(text.to_string(), |t, k| t.replace(k, "<key>"))
}

fn assert_no_key_in(what: &str, text: &str) {
    for k in [POOL_KEY_1, POOL_KEY_2, POOL_KEY_3] {
        assert!(!text.contains(k), "a key in {what}: {}", hide_keys(text));
    }
}

impl Oc {
    fn pool_store_path(&self, pool: &str) -> PathBuf {
        self.dir.join(format!("qwen-accounts.{pool}.json"))
    }

    fn read_pool_store(&self, pool: &str) -> Value {
        serde_json::from_slice(&std::fs::read(self.pool_store_path(pool)).expect("read pool store"))
            .expect("pool store parses")
    }

    /// `qwen-cred add-key --pool POOL --base-url BASE` with `key` on stdin, as a user pipes it.
    fn add_key(&self, pool: &str, base: &str, key: &str) {
        use std::io::Write;
        let mut child = self
            .env
            .cmd(&["add-key", "--pool", pool, "--base-url", base])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("add-key");
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(format!("{key}\n").as_bytes());
        }
        let o = child.wait_with_output().expect("wait");
        assert!(o.status.success(), "{}", hide_keys(&text(&o.stderr)));
    }
}

/// opencode.json's `provider` with `qwen` and two pool providers, `qwen-cp` (pool cp, API at
/// `base`) and `qwen-work` (pool work), and one that is no pool provider.
fn pool_config(base: &str) -> Value {
    json!({"provider": {
        "qwen": {"options": {"baseURL": base}},
        "qwen-work": {"options": {"baseURL": base, "qwenCredPool": "work"}},
        "other": {"options": {"baseURL": base}},
        "qwen-cp": {"name": "Qwen, pool cp (qwen-cred)", "options": {"baseURL": base, "qwenCredPool": "cp"}},
    }})
}

/// The end-to-end run of issue 12: one OpenCode with `qwen` (OAuth, the default pool) and
/// `qwen-cp` (a key pool) side by side. Each provider's requests carry its own pool's
/// credentials; in the key pool a key out of quota cools down and the next key serves. A
/// QWEN_CRED_POOL in OpenCode's environment redirects neither: every qwen-cred call says
/// `--pool`. No token or key reaches a command line.
#[test]
fn opencode_run_serves_a_key_pool_provider_beside_qwen() {
    use crate::util::mock::KeySpec;
    let Some(opencode) = program("QWEN_CRED_TEST_OPENCODE", "opencode") else {
        return;
    };
    let mock = Mock::start();
    let mut oc = Oc::new(&mock);
    let (a1, _, store) = two_accounts(&mock);
    oc.write_store(&store);
    set_up_opencode(&mut oc, &mock);
    let base = format!("{}/v1", mock.base_url());
    // Key 1 has no quota left: its every request is a 429 with a Retry-After of its window.
    mock.add_key(
        POOL_KEY_1,
        KeySpec {
            quota: Some(0),
            ..KeySpec::default()
        },
    );
    let k2 = mock.add_key(POOL_KEY_2, KeySpec::default());
    oc.add_key("cp", &base, POOL_KEY_1);
    oc.add_key("cp", &base, POOL_KEY_2);
    let (_, err) = oc.env.expect(
        &[
            "opencode",
            "install",
            "--write-config",
            "--pool",
            "cp",
            "--provider",
            "qwen-cp",
            "--base-url",
            &base,
            "--model",
            "qwen3-coder-plus",
        ],
        0,
    );
    assert!(
        err.contains("opencode auth login --provider qwen-cp"),
        "{err}"
    );
    let marker = json!({"type": "oauth", "access": "qwen-cred", "refresh": "qwen-cred", "expires": 4102444800000_i64});
    util::write_private(
        &oc.env.root.join("data/opencode/auth.json"),
        json!({"qwen": marker, "qwen-cp": marker})
            .to_string()
            .as_bytes(),
    );

    // `qwen`, with QWEN_CRED_POOL=cp around it: still the default pool's OAuth account.
    let (code, out, err) = opencode_run_with(
        &oc,
        &opencode,
        "qwen/coder-model",
        &[("QWEN_CRED_POOL", "cp")],
    );
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {}", hide_keys(&err));
    assert!(
        out.contains(&format!("hello from account {a1}")),
        "{}",
        hide_keys(&out)
    );
    let qwen_chats = chat_requests(&mock);
    assert!(!qwen_chats.is_empty());
    for r in &qwen_chats {
        assert_api_headers(r, "at-1");
    }
    let log = oc.argv_log();
    assert!(log.contains("token --format json --pool default"), "{log}");
    assert!(
        log.lines().all(|l| l.ends_with("--pool default")),
        "a call without --pool default:\n{log}"
    );
    std::fs::remove_file(oc.env.root.join("argv.log")).expect("rm argv.log");
    let default_store = std::fs::read(oc.store_path()).expect("read store");

    // `qwen-cp`, with QWEN_CRED_POOL naming another pool: pool cp's keys. Key 1 is out of
    // quota: reported, cooled, and key 2 serves the same request.
    let (code, out, err) = opencode_run_with(
        &oc,
        &opencode,
        "qwen-cp/qwen3-coder-plus",
        &[("QWEN_CRED_POOL", "work")],
    );
    assert_eq!(
        code,
        Some(0),
        "stdout: {}\nstderr: {}",
        hide_keys(&out),
        hide_keys(&err)
    );
    assert!(
        out.contains(&format!("hello from account {k2}")),
        "{}",
        hide_keys(&out)
    );
    let cp_chats: Vec<_> = chat_requests(&mock)[qwen_chats.len()..].to_vec();
    let sent: Vec<String> = cp_chats
        .iter()
        .map(|r| r.header("authorization").unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        sent.first().map(String::as_str),
        Some(format!("Bearer {POOL_KEY_1}").as_str()),
        "{}",
        hide_keys(&format!("{sent:?}"))
    );
    assert!(
        sent.iter()
            .all(|b| *b == format!("Bearer {POOL_KEY_1}") || *b == format!("Bearer {POOL_KEY_2}")),
        "{}",
        hide_keys(&format!("{sent:?}"))
    );
    assert!(sent.contains(&format!("Bearer {POOL_KEY_2}")));
    for r in &cp_chats {
        assert!(r.body.contains("qwen3-coder-plus"), "{}", r.body);
        // A key goes without the DashScope OAuth headers.
        assert_eq!(r.header("x-dashscope-authtype"), None);
    }
    let cp = oc.read_pool_store("cp");
    assert_eq!(
        cp["accounts"][0]["rate_limit_reason"],
        "retry-after",
        "{}",
        hide_keys(&cp.to_string())
    );
    assert!(
        cp["accounts"][0]["rate_limit_resets_at"]
            .as_i64()
            .unwrap_or(0)
            > now_ms() + 3_000_000
    );
    assert_eq!(cp["current_account_id"], "2");
    // The default pool is as it was.
    assert_eq!(
        std::fs::read(oc.store_path()).expect("read store"),
        default_store
    );
    assert!(!oc.pool_store_path("work").exists());

    let log = oc.argv_log();
    assert!(log.contains("token --format json --pool cp"), "{log}");
    assert!(
        log.contains("report-429 --account 1 --headers - --body - --json --pool cp"),
        "{log}"
    );
    assert!(log.lines().all(|l| l.ends_with("--pool cp")), "{log}");
    assert_no_key_in("argv", &log);
    assert_no_token_in_argv(&oc, &["at-1", "at-2", "rt-1", "rt-2"]);
}

/// Each pool provider of opencode.json gets its own plugin slot, `qwen` stays the default
/// pool's, and a provider without `options.qwenCredPool` is left alone. The login menu of a
/// pool provider shows that pool and offers to add an API key: typed at an OpenCode prompt
/// that says it shows the key, or into `qwen-cred add-key --pool NAME`, which does not.
#[test]
fn plugin_serves_each_pool_provider_and_offers_to_add_a_key() {
    let Some(node) = program("QWEN_CRED_TEST_NODE", "node") else {
        return;
    };
    let mock = Mock::start();
    let oc = Oc::new(&mock);
    oc.env.expect(&["opencode", "install"], 0);
    let base = format!("{}/v1", mock.base_url());
    let config = pool_config(&base);

    let r = node_step(&oc, &node, json!({"step": "providers", "config": config}));
    assert_eq!(
        r[0]["served"],
        json!(["qwen", "qwen-cp", "qwen-work"]),
        "{r:?}"
    );
    // Without a config hook run (or with no pool provider), only `qwen`.
    let r = node_step(&oc, &node, json!({"step": "providers"}));
    assert_eq!(r[0]["served"], json!(["qwen"]), "{r:?}");

    let d = node_step(
        &oc,
        &node,
        json!({"step": "describe", "config": config, "provider": "qwen-cp"}),
    );
    assert_eq!(d[0]["provider"], "qwen-cp");
    let m = &d[0]["methods"][0];
    assert_eq!(
        m["type"], "oauth",
        "an api method would store the key in auth.json"
    );
    assert!(
        m["label"].as_str().unwrap_or_default().contains("pool cp"),
        "{m}"
    );
    let prompts = m["prompts"].as_array().expect("prompts");
    assert_eq!(
        prompts[0]["message"],
        "Accounts of pool cp in qwen-cred: none yet"
    );
    assert_eq!(option_values(&prompts[0]), ["key", "hidden", "add"]);
    let hidden = &prompts[0]["options"][1];
    assert!(
        hidden["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("qwen-cred add-key --pool cp"),
        "{hidden}"
    );
    let key = &prompts[1];
    assert_eq!(key["type"], "text");
    assert_eq!(key["key"], "key");
    assert_eq!(
        key["when"],
        json!({"key": "mode", "op": "eq", "value": "key"})
    );
    let msg = key["message"].as_str().unwrap_or_default();
    for want in [
        &format!("API key for {base}, for pool cp"),
        "shown as you type",
        "qwen-cred add-key --pool cp",
    ] {
        assert!(msg.contains(want), "{msg:?} should say {want:?}");
    }
    assert_eq!(prompts[2]["key"], "label");
    assert_eq!(prompts[2]["when"], key["when"]);
    assert_eq!(prompts.len(), 3, "{prompts:?}");

    // `qwen`'s menu is the one it had: no key options.
    let d = node_step(&oc, &node, json!({"step": "describe", "config": config}));
    let prompts = d[0]["methods"][0]["prompts"].as_array().expect("prompts");
    assert_eq!(option_values(&prompts[0]), ["add"]);
    assert_eq!(
        prompts[0]["message"],
        "Qwen accounts in qwen-cred: none yet"
    );
}

/// `opencode auth login` for a pool provider, its methods driven as OpenCode drives them: a key
/// typed at the prompt reaches `qwen-cred add-key --pool NAME` on stdin (the argv log never
/// has it) with the label and the provider's base URL; what OpenCode is given to store is the
/// marker alone. A key account picked for replacement gets a new key the same way; remove
/// names the pool; an OAuth login goes into the pool; a QWEN_CRED_POOL around OpenCode
/// changes none of it.
#[test]
fn pool_provider_login_adds_a_key_on_stdin_and_stores_only_the_marker() {
    let Some(node) = program("QWEN_CRED_TEST_NODE", "node") else {
        return;
    };
    let mock = Mock::start();
    let mut oc = Oc::new(&mock);
    oc.env.expect(&["opencode", "install"], 0);
    oc.env.set("QWEN_CRED_POOL", "work");
    let base = format!("{}/v1", mock.base_url());
    let config = pool_config(&base);
    let login = |inputs: Value| {
        let r = node_step(
            &oc,
            &node,
            json!({"step": "login", "config": config, "provider": "qwen-cp", "inputs": inputs}),
        );
        let all = serde_json::to_string(&r).unwrap_or_default();
        assert_no_key_in("the plugin's answers", &all);
        r
    };
    let marker = json!({"type": "success", "access": "qwen-cred", "refresh": "qwen-cred", "expires": 4102444800000_i64});

    let r = login(json!({"mode": "key", "key": format!("  {POOL_KEY_1}  "), "label": "plan-1"}));
    assert_eq!(r[0]["url"], "", "{r:?}");
    let said = r[0]["instructions"].as_str().unwrap_or_default();
    assert!(
        said.contains("added key account 1 (plan-1 (key ")
            && said.ends_with("; 1 account in pool cp."),
        "{said}"
    );
    assert_eq!(r[1]["result"], marker, "only the marker, never the key");
    let cp = oc.read_pool_store("cp");
    let a = &cp["accounts"][0];
    assert!(
        a["access_token"] == POOL_KEY_1,
        "the key, trimmed, reached the pool"
    );
    assert_eq!(a["kind"], "api_key");
    assert_eq!(a["label"], "plan-1");
    assert_eq!(a["base_url"], base.as_str());
    assert!(!oc.store_path().exists(), "the default pool is not touched");
    assert!(!oc.pool_store_path("work").exists());
    let log = oc.argv_log();
    assert!(
        log.contains(&format!(
            "add-key --label plan-1 --base-url {base} --pool cp"
        )),
        "{log}"
    );
    assert_no_key_in("argv", &log);

    // The menu now lists the key, and picking it for replacement asks for a new key.
    let d = node_step(
        &oc,
        &node,
        json!({"step": "describe", "config": config, "provider": "qwen-cp"}),
    );
    let prompts = d[0]["methods"][0]["prompts"].as_array().expect("prompts");
    let head = prompts[0]["message"].as_str().unwrap_or_default();
    assert!(
        head.starts_with("Accounts of pool cp in qwen-cred: 1\n- 1  plan-1 (key "),
        "{head}"
    );
    assert_eq!(
        option_values(&prompts[0]),
        ["key", "hidden", "add", "replace", "remove", "fresh"]
    );
    let new_key = prompts.last().expect("a prompt");
    assert_eq!(new_key["type"], "text");
    assert_eq!(new_key["key"], "key");
    assert_eq!(
        new_key["when"],
        json!({"key": "replace", "op": "eq", "value": "1"})
    );

    let r = login(json!({"mode": "replace", "replace": "1", "key": POOL_KEY_2}));
    assert_eq!(r[1]["result"], marker, "{r:?}");
    let said = r[0]["instructions"].as_str().unwrap_or_default();
    assert!(said.contains("replaced the key of account 1"), "{said}");
    let cp = oc.read_pool_store("cp");
    assert!(
        cp["accounts"][0]["access_token"] == POOL_KEY_2,
        "key 2 took key 1's place"
    );
    assert_eq!(cp["accounts"][0]["label"], "plan-1");
    assert_eq!(cp["accounts"].as_array().map(Vec::len), Some(1));
    assert!(oc
        .argv_log()
        .contains(&format!("add-key --replace 1 --base-url {base} --pool cp")));

    // Not a key: refused before qwen-cred runs, without repeating what was typed.
    let adds = oc.argv_log().matches("add-key").count();
    let r = login(json!({"mode": "key", "key": "sk-sp with a space"}));
    assert_eq!(r[0]["name"], "QwenCredError", "{r:?}");
    let msg = r[0]["error"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("qwen-cp (pool cp): no API key was added"),
        "{msg}"
    );
    assert!(!msg.contains("with a space"), "{msg}");
    assert_eq!(oc.argv_log().matches("add-key").count(), adds);
    let toasts = toasts_of(&r);
    assert_eq!(toasts.len(), 1, "{toasts:?}");
    assert_eq!(toasts[0]["title"], "qwen-cp (pool cp): login failed");

    // Remove names the pool; an OAuth login goes into the pool.
    let r = login(json!({"mode": "remove", "remove": "1"}));
    let said = r[0]["instructions"].as_str().unwrap_or_default();
    assert!(
        said.starts_with("Removed account 1 (plan-1 (key ")
            && said.ends_with(") from pool cp; 0 accounts in pool cp."),
        "{said}"
    );
    mock.push_approval(mock.approval(Some("pooled@example.com")));
    let r = login(json!({"mode": "add"}));
    assert_eq!(r[1]["result"], marker, "{r:?}");
    assert!(
        r[0]["instructions"]
            .as_str()
            .unwrap_or_default()
            .contains("adds the account to pool cp"),
        "{r:?}"
    );
    let cp = oc.read_pool_store("cp");
    assert_eq!(cp["accounts"][0]["email"], "pooled@example.com");
    assert!(!oc.store_path().exists());
    let log = oc.argv_log();
    assert!(log.contains("remove 1 --pool cp"), "{log}");
    assert!(log.contains("login --json --pool cp"), "{log}");
    assert!(log.lines().all(|l| l.ends_with("--pool cp")), "{log}");
    assert_no_key_in("argv", &log);
}

/// "Add an API key, hidden": OpenCode says what to run in a terminal (`qwen-cred add-key
/// --pool NAME`, which asks for the key without showing it) and waits until the key is in the
/// pool; only then does the login succeed, with the marker.
#[test]
fn pool_provider_login_waits_for_a_key_typed_into_add_key() {
    let Some(node) = program("QWEN_CRED_TEST_NODE", "node") else {
        return;
    };
    let mock = Mock::start();
    let oc = Oc::new(&mock);
    oc.env.expect(&["opencode", "install"], 0);
    let base = format!("{}/v1", mock.base_url());
    let plan = json!({"step": "login", "config": pool_config(&base), "provider": "qwen-cp",
        "inputs": {"mode": "hidden"}});
    let out = oc.env.root.join("node.out");
    let r = std::thread::scope(|s| {
        let waiting = s.spawn(|| node_step(&oc, &node, plan));
        assert!(
            util::wait_for(60, || std::fs::read_to_string(&out)
                .unwrap_or_default()
                .contains("instructions")),
            "no instructions"
        );
        let first = std::fs::read_to_string(&out).unwrap_or_default();
        assert_eq!(first.lines().count(), 1, "it waits for the key: {first}");
        oc.add_key("cp", &base, POOL_KEY_3);
        waiting.join().expect("node")
    });
    let said = r[0]["instructions"].as_str().unwrap_or_default();
    assert!(
        said.contains(&format!(
            "run: qwen-cred add-key --pool cp --base-url {base} "
        )),
        "{said}"
    );
    assert!(said.contains("does not show it"), "{said}");
    assert_eq!(
        r[1]["result"],
        json!({"type": "success", "access": "qwen-cred", "refresh": "qwen-cred", "expires": 4102444800000_i64})
    );
    assert!(oc.read_pool_store("cp")["accounts"][0]["access_token"] == POOL_KEY_3);
    assert!(oc.argv_log().contains("list --json --pool cp"));
}

/// `opencode auth login --provider qwen-cp` for real, under tmux: the pool's menu, "Add an API
/// key", the key pasted and no label: qwen-cred adds it, OpenCode says "Login successful" and
/// its auth.json gets the marker for `qwen-cp`, never the key.
#[test]
fn opencode_auth_login_adds_a_key_to_a_pool_provider_under_tmux() {
    let Some(opencode) = program("QWEN_CRED_TEST_OPENCODE", "opencode") else {
        return;
    };
    let Some(tmux) = program("QWEN_CRED_TEST_TMUX", "tmux") else {
        return;
    };
    let mock = Mock::start();
    let oc = Oc::new(&mock);
    let base = format!("{}/v1", mock.base_url());
    oc.env.expect(
        &[
            "opencode",
            "install",
            "--write-config",
            "--pool",
            "cp",
            "--provider",
            "qwen-cp",
            "--base-url",
            &base,
            "--model",
            "qwen3-coder-plus",
        ],
        0,
    );
    link_plugin_package(&oc.dir);
    let t = Tmux {
        oc: &oc,
        tmux,
        socket: oc.env.root.join("tmux-key.sock"),
    };
    let script = format!(
        "'{}' auth login --provider qwen-cp; echo \"opencode exited: $?\"; sleep 120",
        opencode.display()
    );
    let o = t.cmd(&[
        "new-session",
        "-d",
        "-s",
        "oc",
        "-x",
        "150",
        "-y",
        "40",
        "sh",
        "-c",
        &script,
    ]);
    assert!(o.status.success(), "tmux: {}", text(&o.stderr));
    t.wait_for("Accounts of pool cp in qwen-cred: none yet", 60);
    t.wait_for("Add an API key", 30);
    t.cmd(&["send-keys", "-t", "oc", "Enter"]);
    t.wait_for("shown as you type", 30);
    t.cmd(&["send-keys", "-t", "oc", "-l", POOL_KEY_1]);
    t.cmd(&["send-keys", "-t", "oc", "Enter"]);
    t.wait_for("A name for this key", 30);
    t.cmd(&["send-keys", "-t", "oc", "Enter"]);
    let screen = t.wait_for("opencode exited: ", 60);
    assert!(
        screen.contains("opencode exited: 0"),
        "{}",
        hide_keys(&screen)
    );
    assert!(
        screen.contains("Login successful"),
        "{}",
        hide_keys(&screen)
    );
    assert!(
        screen.contains("added key account 1 (key "),
        "{}",
        hide_keys(&screen)
    );
    drop(t);

    let auth =
        std::fs::read_to_string(oc.env.root.join("data/opencode/auth.json")).expect("auth.json");
    assert_no_key_in("OpenCode's auth.json", &auth);
    let auth: Value = serde_json::from_str(&auth).expect("auth.json parses");
    assert_eq!(
        auth,
        json!({"qwen-cp": {"type": "oauth", "access": "qwen-cred", "refresh": "qwen-cred", "expires": 4102444800000_i64}})
    );
    let cp = oc.read_pool_store("cp");
    assert!(
        cp["accounts"][0]["access_token"] == POOL_KEY_1,
        "the key reached the pool"
    );
    assert_eq!(cp["accounts"][0]["label"], Value::Null);
    assert_eq!(cp["accounts"][0]["base_url"], base.as_str());
    let log = oc.argv_log();
    assert!(
        log.contains(&format!("add-key --base-url {base} --pool cp")),
        "{log}"
    );
    assert_no_key_in("argv", &log);
}

/// A pool provider's fetch: the key the server refuses gets the forced check (`refresh --pool
/// cp`), is revoked, and the request goes to the pool's next key; the toast names the
/// provider and says how to give that key account a new key. With no key left, the error
/// names the provider and the commands for its pool.
#[test]
fn pool_provider_fetch_names_the_provider_and_its_pool() {
    let Some(node) = program("QWEN_CRED_TEST_NODE", "node") else {
        return;
    };
    let mock = Mock::start();
    let oc = Oc::new(&mock);
    oc.env.expect(&["opencode", "install"], 0);
    let base = format!("{}/v1", mock.base_url());
    mock.add_key(POOL_KEY_1, Default::default());
    let k2 = mock.add_key(POOL_KEY_2, Default::default());
    oc.add_key("cp", &base, POOL_KEY_1);
    oc.add_key("cp", &base, POOL_KEY_2);
    mock.revoke_key(POOL_KEY_1);
    let plan = json!({"step": "fetch", "config": pool_config(&base), "provider": "qwen-cp",
        "base": base, "auth": r#"{"type":"oauth","access":"qwen-cred"}"#});

    let r = node_step(&oc, &node, plan.clone());
    assert_no_key_in(
        "the plugin's answers",
        &serde_json::to_string(&r).unwrap_or_default(),
    );
    assert_eq!(r[1]["status"], 200, "{r:?}");
    assert!(
        r[1]["body"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("hello from account {k2}")),
        "{r:?}"
    );
    assert_eq!(oc.read_pool_store("cp")["accounts"][0]["status"], "revoked");
    let toasts = toasts_of(&r);
    assert_eq!(toasts.len(), 1, "{toasts:?}");
    assert_eq!(toasts[0]["title"], "qwen-cp (pool cp): key refused");
    let msg = toasts[0]["message"].as_str().unwrap_or_default();
    for want in [
        "Key account 1 (key ",
        "of pool cp",
        "\"opencode auth login --provider qwen-cp\"",
        "\"qwen-cred add-key --replace 1 --pool cp\"",
    ] {
        assert!(msg.contains(want), "{msg:?} should say {want:?}");
    }
    assert!(oc
        .argv_log()
        .contains("refresh --account 1 --force --pool cp"));

    mock.revoke_key(POOL_KEY_2);
    let r = node_step(&oc, &node, plan);
    assert_eq!(r[1]["name"], "QwenCredError", "{r:?}");
    let msg = r[1]["error"].as_str().unwrap_or_default();
    for want in [
        "qwen-cp (pool cp): no usable account",
        "\"opencode auth login --provider qwen-cp\"",
        "\"qwen-cred add-key --pool cp\"",
        "\"qwen-cred login --pool cp\"",
    ] {
        assert!(msg.contains(want), "{msg:?} should say {want:?}");
    }
    assert_no_key_in("argv", &oc.argv_log());
}
