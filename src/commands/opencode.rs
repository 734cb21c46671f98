//! `qwen-cred opencode install`: writes the OpenCode plugin (embedded from
//! `src/opencode_plugin.js`) into `D/plugin/`, prints the `qwen` provider block for
//! `opencode.json`, and with `--write-config` adds that block to a plain-JSON `opencode.json`.
//! With `--pool NAME --provider ID` the block is that of a second provider, `ID`, served by the
//! same plugin from pool NAME (its `options.qwenCredPool`); the `qwen` provider is kept.
//! Every step is idempotent: a second run changes nothing.

use crate::cli::{Opencode, OpencodeCommand, OpencodeInstall};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::msg;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// The plugin, shipped inside the binary so that install needs nothing else.
pub const PLUGIN: &str = include_str!("../opencode_plugin.js");
pub const PLUGIN_FILE: &str = "qwen-cred.js";
pub const PROVIDER_ID: &str = "qwen";
/// The key of a provider's `options` that names the qwen-cred pool serving it. OpenCode's
/// config schema takes any key there (1.18.33: `ProviderConfig.options` is an open record) and
/// hands the provider, options included, to the plugin's auth loader.
pub const POOL_OPTION: &str = "qwenCredPool";
/// The pool providers the plugin serves: it exports this many slot plugins
/// (`QwenCredPool0` ...), one per provider.
pub const POOL_SLOTS: usize = 8;
/// The models of the `qwen` provider, and of a pool provider given no `--model`.
const OAUTH_MODELS: [(&str, &str); 2] = [
    ("coder-model", "Qwen Coder"),
    ("vision-model", "Qwen Vision"),
];

/// The provider this install is about: `qwen` for the default pool, else the one `--provider`
/// names for pool `pool`.
struct Target<'a> {
    id: &'a str,
    pool: Option<&'a str>,
}

impl<'a> Target<'a> {
    fn of(cfg: &'a Config, args: &'a OpencodeInstall) -> Result<Target<'a>> {
        let Some(pool) = cfg.pool.name() else {
            if args.provider.is_some() || args.base_url.is_some() || !args.model.is_empty() {
                return Err(Error::Usage(format!(
                    "--provider, --base-url and --model go with --pool NAME: the default pool serves the \"{PROVIDER_ID}\" provider"
                )));
            }
            return Ok(Target {
                id: PROVIDER_ID,
                pool: None,
            });
        };
        let Some(id) = args.provider.as_deref() else {
            return Err(Error::Usage(format!(
                "opencode install for pool {pool} needs --provider ID, the OpenCode provider to serve from it (e.g. --provider qwen-{pool})"
            )));
        };
        check_provider_id(id).map_err(Error::Usage)?;
        if id == PROVIDER_ID {
            return Err(Error::Usage(format!(
                "the \"{PROVIDER_ID}\" provider is the default pool's; give pool {pool} a provider of its own (e.g. --provider qwen-{pool})"
            )));
        }
        if let Some(url) = &args.base_url {
            crate::oauth::check_url(url)
                .map_err(|e| Error::Usage(format!("--base-url {url:?}: {e}")))?;
        }
        for m in &args.model {
            check_model_id(m).map_err(Error::Usage)?;
        }
        Ok(Target {
            id,
            pool: Some(pool),
        })
    }
}

/// An OpenCode provider id as a key of `provider`: 1 to 64 ASCII letters, digits, `-`, `_`
/// and `.`, starting with a letter or digit (the model is then chosen as `ID/MODEL`).
fn check_provider_id(id: &str) -> std::result::Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    match ok {
        true => Ok(()),
        false => Err(format!(
            "invalid provider id {:?}: use 1 to 64 letters, digits, -, _ and ., starting with a letter or digit",
            id.chars().take(65).collect::<String>()
        )),
    }
}

/// A model id as the endpoint names it (`qwen3-coder-plus`, `org/model:tag`): up to 128
/// characters, no spaces or control characters.
fn check_model_id(m: &str) -> std::result::Result<(), String> {
    let ok = !m.is_empty()
        && m.chars().count() <= 128
        && !m.chars().any(|c| c.is_whitespace() || c.is_control());
    match ok {
        true => Ok(()),
        false => Err(format!(
            "invalid model id {:?}: up to 128 characters, no spaces",
            m.chars().take(129).collect::<String>()
        )),
    }
}

pub fn run(cfg: &Config, args: &Opencode) -> Result<()> {
    match &args.command {
        OpencodeCommand::Install(a) => install(cfg, a),
    }
}

/// What a step did (or, with `--dry-run`, would do).
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Unchanged,
    Created,
    Updated,
}

fn install(cfg: &Config, args: &OpencodeInstall) -> Result<()> {
    let target = Target::of(cfg, args)?;
    let id = target.id;
    let dry = args.dry_run;
    let would = |done: &str, planned: &str| {
        if dry {
            planned.to_string()
        } else {
            done.to_string()
        }
    };

    let plugin = cfg.dir.join("plugin").join(PLUGIN_FILE);
    match install_plugin(&plugin, dry)? {
        Step::Unchanged => msg::warn(&format!("{} is up to date", plugin.display())),
        Step::Created => msg::warn(&format!(
            "{} the OpenCode plugin {}",
            would("wrote", "would write"),
            plugin.display()
        )),
        Step::Updated => msg::warn(&format!(
            "{} the OpenCode plugin {}",
            would("updated", "would update"),
            plugin.display()
        )),
    }

    let oauth_api = crate::oauth::api_base_url(None, &cfg.settings.default_resource_url);
    let block = match target.pool {
        None => provider_block(&oauth_api),
        Some(pool) => {
            let base_url = args.base_url.as_deref().unwrap_or(&oauth_api);
            let models: Vec<&str> = args.model.iter().map(String::as_str).collect();
            pool_provider_block(id, pool, base_url, &models)
        }
    };
    if args.write_config {
        write_config(&cfg.dir, id, &block, dry)?;
        write_auth_marker(&cfg.opencode_auth_file, id, dry)?;
    } else {
        let file = config_file(&cfg.dir);
        match std::fs::read_to_string(&file) {
            Ok(text) if has_provider(&text, id) => msg::warn(&format!(
                "{} already has a \"{id}\" provider",
                file.display()
            )),
            _ => msg::warn(&format!(
                "add this to {} (or rerun with --write-config):",
                file.display()
            )),
        }
    }
    let mut shown = serde_json::to_string_pretty(&json!({ "provider": block }))
        .map_err(|e| Error::Internal(format!("cannot print the provider block: {e}")))?;
    shown.push('\n');
    msg::out(&shown)?;
    if let (Some(pool), false) = (target.pool, dry) {
        let model = block[id]["models"]
            .as_object()
            .and_then(|m| m.keys().next().cloned())
            .unwrap_or_default();
        warn_past_slots(&cfg.dir);
        msg::warn(&format!(
            "next: add API keys or accounts to pool {pool} with `opencode auth login --provider {id}`, `qwen-cred add-key --pool {pool}` or `qwen-cred login --pool {pool}`, then `opencode run -m {id}/{model}`"
        ));
    } else if !dry && args.write_config {
        msg::warn("next: `opencode run -m qwen/coder-model`; add accounts with `qwen-cred login` or `opencode auth login` (choose Qwen)");
    } else if !dry {
        msg::warn(
            "next: run `opencode auth login`, choose Qwen, then use a model such as qwen/coder-model",
        );
    }
    Ok(())
}

/// The plugin serves [`POOL_SLOTS`] pool providers (by id, in order); says so when
/// `opencode.json` has more.
fn warn_past_slots(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(config_file(dir)) else {
        return;
    };
    let ids = pool_providers(&text);
    if ids.len() > POOL_SLOTS {
        msg::warn(&format!(
            "opencode.json has {} providers with options.{POOL_OPTION}; the plugin serves the first {POOL_SLOTS} by id, not {}",
            ids.len(),
            ids[POOL_SLOTS..].join(", ")
        ));
    }
}

/// The ids of the providers other than `qwen` whose `options.qwenCredPool` is a string,
/// sorted: the ones the plugin's slots serve, in slot order.
fn pool_providers(text: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = v["provider"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(id, p)| *id != PROVIDER_ID && p["options"][POOL_OPTION].is_string())
                .map(|(id, _)| id.clone())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

fn install_plugin(path: &Path, dry: bool) -> Result<Step> {
    let step = match std::fs::read(path) {
        Ok(old) if old == PLUGIN.as_bytes() => return Ok(Step::Unchanged),
        Ok(_) => Step::Updated,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Step::Created,
        Err(e) => return Err(Error::io("cannot read", path, e)),
    };
    if !dry {
        if let Some(dir) = path.parent() {
            crate::files::ensure_dir(dir)?;
        }
        crate::files::write_atomic(path, PLUGIN.as_bytes())?;
    }
    Ok(step)
}

/// The `provider.qwen` entry of `opencode.json`. The models are those the Qwen Code CLI lists
/// for Qwen OAuth: `coder-model`, and `vision-model` from releases before `coder-model` took
/// images. The plugin sends each request to the account's own base URL; this one is the default.
pub fn provider_block(base_url: &str) -> Value {
    let models: Map<String, Value> = OAUTH_MODELS
        .iter()
        .map(|(id, name)| (id.to_string(), json!({ "name": name })))
        .collect();
    json!({
        PROVIDER_ID: {
            "npm": "@ai-sdk/openai-compatible",
            "name": "Qwen (qwen-cred)",
            "options": { "baseURL": base_url },
            "models": models,
        }
    })
}

/// The entry of provider `id`, served by the plugin from pool `pool`: `options.qwenCredPool`
/// names the pool, `baseURL` the API (each request still goes to the serving account's own
/// base URL). `models` empty: those of the `qwen` provider.
pub fn pool_provider_block(id: &str, pool: &str, base_url: &str, models: &[&str]) -> Value {
    let mut listed = Map::new();
    for m in models {
        listed.insert(m.to_string(), json!({ "name": m }));
    }
    if listed.is_empty() {
        for (m, name) in OAUTH_MODELS {
            listed.insert(m.into(), json!({ "name": name }));
        }
    }
    json!({
        id: {
            "npm": "@ai-sdk/openai-compatible",
            "name": format!("Qwen, pool {pool} (qwen-cred)"),
            "options": { "baseURL": base_url, POOL_OPTION: pool },
            "models": listed,
        }
    })
}

/// `opencode.json`, or an existing `opencode.jsonc` when there is no `opencode.json`.
pub fn config_file(dir: &Path) -> PathBuf {
    let json = dir.join("opencode.json");
    let jsonc = dir.join("opencode.jsonc");
    if !json.exists() && jsonc.exists() {
        jsonc
    } else {
        json
    }
}

pub fn has_provider(text: &str, id: &str) -> bool {
    serde_json::from_str::<Value>(text)
        .ok()
        .is_some_and(|v| v["provider"].get(id).is_some())
}

fn write_config(dir: &Path, id: &str, block: &Value, dry: bool) -> Result<()> {
    let file = config_file(dir);
    let old = match std::fs::read(&file) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("cannot read", &file, e)),
    };
    let text = match &old {
        Some(b) => std::str::from_utf8(b)
            .map_err(|_| Error::File(format!("{}: not valid UTF-8", file.display())))?,
        None => "",
    };
    let merged = merge_provider(text, block).map_err(|why| {
        Error::File(format!(
            "{}: {why}; add the provider block printed below by hand",
            file.display()
        ))
    })?;
    let Some(new_text) = merged else {
        msg::warn(&format!(
            "{} already has a \"{id}\" provider; left unchanged",
            file.display()
        ));
        return Ok(());
    };
    // Write through a symlink (dotfile managers) instead of replacing it.
    let target = match std::fs::symlink_metadata(&file) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::canonicalize(&file).map_err(|e| Error::io("cannot resolve", &file, e))?
        }
        _ => file.clone(),
    };
    let backup = old.as_ref().map(|_| backup_path(&target));
    if dry {
        match &backup {
            Some(b) => msg::warn(&format!(
                "would add the \"{id}\" provider to {} (backup: {})",
                file.display(),
                b.display()
            )),
            None => msg::warn(&format!(
                "would create {} with the \"{id}\" provider",
                file.display()
            )),
        }
        return Ok(());
    }
    let mode = std::fs::metadata(&target).ok().map(|m| m.permissions());
    if let (Some(b), Some(bytes)) = (&backup, &old) {
        crate::files::write_atomic(b, bytes)?;
        if let Some(m) = &mode {
            let _ = std::fs::set_permissions(b, m.clone());
        }
    }
    crate::files::write_atomic(&target, new_text.as_bytes())?;
    if let Some(m) = mode {
        std::fs::set_permissions(&target, m)
            .map_err(|e| Error::io("cannot set the permissions of", &target, e))?;
    }
    match &backup {
        Some(b) => msg::warn(&format!(
            "added the \"{id}\" provider to {} (backup: {})",
            file.display(),
            b.display()
        )),
        None => msg::warn(&format!(
            "created {} with the \"{id}\" provider",
            file.display()
        )),
    }
    Ok(())
}

/// OpenCode runs the plugin's loader only when its auth.json has an entry for the provider
/// (`qwen`, or a pool's provider `id`), which the plugin's OAuth method creates. Accounts
/// signed in with `qwen-cred login` never went through it, so `--write-config` adds the same
/// marker (never a token; the plugin's MARKER and MARKER_EXPIRES) when `id` has no entry yet.
/// Other entries are kept; a file that does not parse is left alone.
fn write_auth_marker(file: &Path, id: &str, dry: bool) -> Result<()> {
    let mut entries = match std::fs::read(file) {
        Ok(b) => match serde_json::from_slice::<Value>(&b) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Err(Error::File(format!(
                    "{}: not a JSON object; fix it, or sign in once with `opencode auth login` (choose Qwen)",
                    file.display()
                )))
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
        Err(e) => return Err(Error::io("cannot read", file, e)),
    };
    if entries.contains_key(id) {
        msg::warn(&format!("{} already has a \"{id}\" entry", file.display()));
        return Ok(());
    }
    if dry {
        msg::warn(&format!(
            "would add the qwen-cred marker for \"{id}\" to {}",
            file.display()
        ));
        return Ok(());
    }
    entries.insert(
        id.into(),
        json!({"type": "oauth", "access": "qwen-cred", "refresh": "qwen-cred", "expires": 4_102_444_800_000_i64}),
    );
    let mut text = serde_json::to_string_pretty(&Value::Object(entries))
        .map_err(|e| Error::Internal(format!("cannot write {}: {e}", file.display())))?;
    text.push('\n');
    // Write through a symlink (dotfile managers) instead of replacing it with a copy.
    let target = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    crate::files::write_atomic(&target, text.as_bytes())?;
    msg::warn(&format!(
        "added the qwen-cred marker for \"{id}\" to {} (OpenCode then asks qwen-cred for every token)",
        file.display()
    ));
    Ok(())
}

/// `F.bak`, or `F.bak.N` for the first N not taken: an older backup is never overwritten.
fn backup_path(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let first = file.with_file_name(format!("{name}.bak"));
    if !first.exists() {
        return first;
    }
    (1..)
        .map(|n| file.with_file_name(format!("{name}.bak.{n}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// Adds `block` (an object `{ "qwen": ... }`, or a pool provider's) under `provider` of the
/// config `text`. `Ok(None)`: a provider of that id is already there. `Err`: why the text cannot be edited safely.
/// Key order and every other value are kept; the output is plain JSON, two-space indented.
pub fn merge_provider(text: &str, block: &Value) -> std::result::Result<Option<String>, String> {
    let mut root = if text.trim().is_empty() {
        let mut m = Map::new();
        m.insert("$schema".into(), json!("https://opencode.ai/config.json"));
        m
    } else {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err("expected a JSON object".into()),
            Err(e) if has_comments(text) => {
                return Err(format!(
                    "has comments (JSONC), which qwen-cred does not rewrite so as not to lose them ({e})"
                ))
            }
            Err(e) => return Err(format!("not plain JSON ({e})")),
        }
    };
    let providers = root
        .entry("provider")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(providers) = providers else {
        return Err("\"provider\" is not an object".into());
    };
    let Value::Object(add) = block else {
        return Err("internal: the provider block is not an object".into());
    };
    if add.keys().any(|k| providers.contains_key(k)) {
        return Ok(None);
    }
    for (k, v) in add {
        providers.insert(k.clone(), v.clone());
    }
    let mut out = serde_json::to_string_pretty(&Value::Object(root))
        .map_err(|e| format!("cannot serialize: {e}"))?;
    out.push('\n');
    Ok(Some(out))
}

/// A `//` or `/*` outside strings.
fn has_comments(text: &str) -> bool {
    let b = text.as_bytes();
    let mut in_str = false;
    let mut i = 0;
    while i < b.len() {
        match (in_str, b[i]) {
            (true, b'\\') => i += 1,
            (true, b'"') | (false, b'"') => in_str = !in_str,
            (false, b'/') if matches!(b.get(i + 1), Some(b'/') | Some(b'*')) => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block() -> Value {
        provider_block("https://portal.qwen.ai/v1")
    }

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap_or(Value::Null)
    }

    #[test]
    fn empty_config_gets_schema_and_provider() {
        let out = merge_provider("", &block())
            .ok()
            .flatten()
            .unwrap_or_default();
        let v = parse(&out);
        assert_eq!(v["$schema"], "https://opencode.ai/config.json");
        assert_eq!(v["provider"]["qwen"]["npm"], "@ai-sdk/openai-compatible");
        assert_eq!(
            v["provider"]["qwen"]["options"]["baseURL"],
            "https://portal.qwen.ai/v1"
        );
        assert!(v["provider"]["qwen"]["models"]["coder-model"].is_object());
        assert!(out.ends_with("}\n"), "{out}");
    }

    #[test]
    fn existing_keys_and_providers_are_kept_in_order() {
        let text = r#"{"theme": "dark", "provider": {"other": {"npm": "x", "models": {"m": {}}}}, "model": "other/m", "n": [1, 2.5, null]}"#;
        let out = merge_provider(text, &block())
            .ok()
            .flatten()
            .unwrap_or_default();
        let v = parse(&out);
        let keys: Vec<&String> = v
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["theme", "provider", "model", "n"]);
        let providers: Vec<&String> = v["provider"]
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        assert_eq!(providers, ["other", "qwen"]);
        assert_eq!(v["provider"]["other"], parse(text)["provider"]["other"]);
        assert_eq!(v["n"], json!([1, 2.5, null]));
    }

    #[test]
    fn merging_twice_changes_nothing() {
        let once = merge_provider("{\"theme\": \"dark\"}", &block())
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!(merge_provider(&once, &block()), Ok(None));
        // A qwen provider of the user's own is never touched.
        let mine = r#"{"provider": {"qwen": {"options": {"baseURL": "http://mine"}}}}"#;
        assert_eq!(merge_provider(mine, &block()), Ok(None));
    }

    #[test]
    fn the_plugin_has_a_slot_for_each_pool_provider_counted() {
        let slots: Vec<&str> = PLUGIN
            .lines()
            .filter(|l| l.starts_with("export const QwenCredPool"))
            .collect();
        assert_eq!(slots.len(), POOL_SLOTS, "{slots:?}");
        for (k, line) in slots.iter().enumerate() {
            assert!(
                line.starts_with(&format!("export const QwenCredPool{k} = slot({k})")),
                "{line}"
            );
        }
        let text = r#"{"provider": {"z": {"options": {"qwenCredPool": "p"}}, "qwen": {"options": {"qwenCredPool": "q"}},
            "a": {"options": {"qwenCredPool": "p2"}}, "n": {"options": {"qwenCredPool": 1}}, "o": {}}}"#;
        assert_eq!(pool_providers(text), ["a", "z"]);
        assert!(pool_providers("{broken").is_empty());
    }

    #[test]
    fn jsonc_and_odd_shapes_are_refused_with_a_reason() {
        let cases = [
            ("{\n  // my settings\n  \"theme\": \"dark\"\n}", "comments"),
            ("{ /* c */ \"theme\": \"dark\" }", "comments"),
            ("{\"theme\": \"dark\",}", "not plain JSON"),
            ("[1]", "JSON object"),
            ("{\"provider\": []}", "not an object"),
        ];
        for (text, why) in cases {
            let err = merge_provider(text, &block()).err().unwrap_or_default();
            assert!(err.contains(why), "{text}: {err}");
        }
        // Slashes inside strings are not comments.
        let url = r#"{"$schema": "https://opencode.ai/config.json", "x": "a /* b"}"#;
        assert!(matches!(merge_provider(url, &block()), Ok(Some(_))));
        assert!(!has_comments(r#"{"a": "\" // not a comment"}"#));
    }
}
