//! `qwen-cred config`: the effective settings and their sources (`--schema` is answered in
//! mod.rs, before any config is read).

use crate::cli::ConfigCmd;
use crate::config::Config;
use crate::error::Result;
use serde_json::{json, Map, Value};

pub fn run(cfg: &Config, args: &ConfigCmd) -> Result<()> {
    if args.json {
        let mut m = Map::new();
        for (k, v, s) in &cfg.values {
            m.insert(k.to_string(), json!({"value": v, "source": s.name()}));
        }
        return print_json(&Value::Object(m));
    }
    let width = cfg
        .values
        .iter()
        .map(|(k, _, _)| k.len())
        .max()
        .unwrap_or(0);
    let mut text = format!("# {}\n", cfg.config_path.display());
    for (k, v, s) in &cfg.values {
        text += &format!("{k:width$}  {v}  ({})\n", s.name());
    }
    crate::msg::out(&text)
}

pub fn print_json(v: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(v).unwrap_or_default();
    text.push('\n');
    crate::msg::out(&text)
}
