//! API-key accounts (Coding Plan, DashScope, any OpenAI-compatible key): what a key, its base
//! URL and its headers may hold, and the one request that tells whether a server takes a key
//! (`GET {base_url}/models`, the cheapest authenticated call of an OpenAI-compatible API).
//! Like oauth.rs it knows no store: callers decide what an answer means for the pool.

use crate::secret::Secret;
use serde_json::Value;
use std::time::Duration;

/// Longer than any real key (Coding Plan and DashScope keys are ~40 characters).
pub const MAX_KEY_LEN: usize = 4096;
/// An answer to the check is a model list; the cap keeps a broken server from filling memory.
const MAX_BODY: u64 = 1024 * 1024;
/// Quoted server text is cut to this many characters so a message stays one short line.
const MAX_QUOTE: usize = 200;
/// Headers qwen-cred sets itself, or that would break the request they are added to.
const RESERVED: [&str; 5] = [
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
];

/// A key is printed into a header line and a shell `export`: visible ASCII only, so it
/// cannot inject another line. `Err` says why, never quoting the key.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!("the key is longer than {MAX_KEY_LEN} characters"));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the key holds spaces, control or non-ASCII characters".into());
    }
    Ok(())
}

/// A base URL fit to be used as it is: `https://` (or `http://` to a loopback host, for tests),
/// no query or fragment; trailing slashes dropped.
pub fn check_base_url(url: &str) -> Result<String, String> {
    let url = url.trim().trim_end_matches('/');
    crate::oauth::check_url(url)?;
    if url.contains(['?', '#']) {
        return Err("the base URL has a query or fragment; give the API's root, e.g. https://coding-intl.dashscope.aliyuncs.com/v1".into());
    }
    Ok(url.to_string())
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A header qwen-cred may hand out with a key: a token name that is not one qwen-cred sets
/// itself, and a value of visible ASCII and spaces. `Err` never quotes the value.
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err("a header name (letters, digits and !#$%&'*+-.^_`|~)".into());
    }
    if RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "a header other than {name} (qwen-cred sets Authorization itself; the others belong to the request)"
        ));
    }
    if value.trim() != value || !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err("a value of visible ASCII characters and inner spaces".into());
    }
    Ok(())
}

/// `Name: value` as given to `add-key --header`.
pub fn parse_header(line: &str) -> Result<(String, String), String> {
    let Some((name, value)) = line.split_once(':') else {
        return Err("a header is written 'Name: value'".into());
    };
    let (name, value) = (name.trim(), value.trim());
    check_header(name, value).map_err(|why| format!("header {name:?}: expected {why}"))?;
    Ok((name.to_string(), value.to_string()))
}

/// What a server said about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It took the key (2xx; a 429 or a quota answer also means it knows the key). The note
    /// says what else it said.
    Accepted(Option<String>),
    /// It says the key is invalid (401, or 403 whose body says so): the key is dead.
    Invalid(String),
    /// It answered, but not to say the key is bad (a 403 for a client it does not serve, a 404
    /// for an API without `/models`): the key may be fine, this request was not.
    Refused(String),
    /// No answer that says anything about the key: network, timeout, 5xx, garbage.
    Unreachable(String),
}

/// Whether a 401/403 body says the key itself is invalid (OpenAI `invalid_api_key`, DashScope
/// `InvalidApiKey`, Anthropic `invalid x-api-key`, "Incorrect API key provided", ...).
pub fn says_invalid_key(body: &str) -> bool {
    let b = body.to_ascii_lowercase();
    if ["invalid_api_key", "invalidapikey", "authentication_error"]
        .iter()
        .any(|k| b.contains(k))
    {
        return true;
    }
    let names_key = ["api key", "api_key", "apikey", "api-key", "x-api-key"]
        .iter()
        .any(|k| b.contains(k));
    let bad = [
        "invalid",
        "incorrect",
        "expired",
        "revoked",
        "not valid",
        "disabled",
    ]
    .iter()
    .any(|k| b.contains(k));
    names_key && bad
}

/// The human part of an error body: `error.message`, `message`, `error` (a string),
/// `error.code`; else the body's start. Redacted of the key and made one short line.
pub fn server_message(body: &str, key: &Secret) -> String {
    let json: Option<Value> = serde_json::from_str(body).ok();
    let pick = |v: &Value| -> Option<String> {
        let s = v
            .pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .or_else(|| v.pointer("/error/code"))
            .or_else(|| v.get("code"))?;
        s.as_str().map(str::to_string)
    };
    let text = json
        .as_ref()
        .and_then(pick)
        .unwrap_or_else(|| body.to_string());
    crate::secret::redact(&text, &[key])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_QUOTE)
        .collect::<String>()
        .trim()
        .to_string()
}

/// Classifies an answer to the check.
pub fn classify(url: &str, status: u16, body: &str, key: &Secret) -> Verdict {
    let said = || {
        let m = server_message(body, key);
        match m.is_empty() {
            true => format!("{url} answered HTTP {status}"),
            false => format!("{url} answered HTTP {status}: {m}"),
        }
    };
    match status {
        200..=299 => Verdict::Accepted(None),
        401 => Verdict::Invalid(said()),
        403 if says_invalid_key(body) => Verdict::Invalid(said()),
        429 => Verdict::Accepted(Some(format!("{}; the key is known", said()))),
        403 if crate::oauth::is_quota_body(body) => {
            Verdict::Accepted(Some(format!("{}; the key is known", said())))
        }
        500..=599 => Verdict::Unreachable(said()),
        _ => Verdict::Refused(said()),
    }
}

/// Asks `GET {base_url}/models` with the key (and the account's headers) and says what the
/// server made of it. The only request made with a key; the key leaves only in its header.
pub fn check(
    base_url: &str,
    key: &Secret,
    headers: &[(String, String)],
    timeout: Duration,
) -> Verdict {
    let url = format!("{}/models", base_url.trim_end_matches('/'));
    let mut config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .timeout_connect(Some(timeout.min(Duration::from_secs(10))))
        // Error bodies say why a key was refused.
        .http_status_as_error(false)
        // The key is not sent on to wherever a redirect points.
        .max_redirects(0)
        .user_agent(format!("qwen-cred/{}", env!("CARGO_PKG_VERSION")));
    if crate::oauth::loopback_http(&url) {
        // A loopback test server is never reached through a proxy from the environment.
        config = config.proxy(None);
    }
    let agent = config.build().new_agent();
    let mut req = agent
        .get(&url)
        .header("Accept", "application/json")
        .header("Authorization", &format!("Bearer {}", key.expose()));
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let mut resp = match req.call() {
        Ok(r) => r,
        // ureq's error text names the URL and the failure, never a header.
        Err(e) => return Verdict::Unreachable(format!("{url}: {e}")),
    };
    let status = resp.status().as_u16();
    let body = match resp.body_mut().with_config().limit(MAX_BODY).read_to_vec() {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) if (200..300).contains(&status) => String::new(),
        Err(e) => {
            return Verdict::Unreachable(format!("{url}: reading the answer (HTTP {status}): {e}"))
        }
    };
    classify(&url, status, &body, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_and_never_quoted() {
        assert!(check_key("sk-sp-0123456789abcdef").is_ok());
        for bad in [
            "",
            "sk 1",
            "sk\n1",
            "sk\t",
            "ключ",
            &"k".repeat(MAX_KEY_LEN + 1),
        ] {
            let e = check_key(bad).err().unwrap_or_default();
            assert!(!e.is_empty(), "{bad:?}");
            assert!(bad.len() < 3 || !e.contains(bad), "{e}");
        }
    }

    #[test]
    fn headers_are_checked_without_quoting_their_value() {
        assert_eq!(
            parse_header("User-Agent:  QwenCode/0.24.4 (linux; x64) "),
            Ok(("User-Agent".into(), "QwenCode/0.24.4 (linux; x64)".into()))
        );
        assert_eq!(
            parse_header("X-DashScope-CacheControl: enable"),
            Ok(("X-DashScope-CacheControl".into(), "enable".into()))
        );
        for bad in [
            "no colon",
            ": value",
            "Bad Name: v",
            "authorization: Bearer secret-value",
            "Host: evil",
            "X-A: line\rbreak",
            "X-A: tab\there",
            "X-A: ünïcode",
        ] {
            let e = parse_header(bad).err().unwrap_or_default();
            assert!(!e.is_empty(), "{bad:?}");
            assert!(!e.contains("secret-value") && !e.contains("break"), "{e}");
        }
    }

    #[test]
    fn base_urls_are_https_or_loopback_without_query() {
        assert_eq!(
            check_base_url("https://coding-intl.dashscope.aliyuncs.com/v1/"),
            Ok("https://coding-intl.dashscope.aliyuncs.com/v1".into())
        );
        assert_eq!(
            check_base_url("http://127.0.0.1:8080/v1"),
            Ok("http://127.0.0.1:8080/v1".into())
        );
        for bad in [
            "http://example.com/v1",
            "coding.dashscope.aliyuncs.com/v1",
            "https://x/v1?a=1",
            "https://x/v1#f",
            "ftp://x",
            "",
        ] {
            assert!(check_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_are_classified_and_redacted() {
        let key = Secret::new("sk-secret-1");
        let u = "https://x/v1/models";
        assert_eq!(classify(u, 200, "{}", &key), Verdict::Accepted(None));
        let openai = r#"{"error":{"message":"Incorrect API key provided: sk-secret-1","type":"invalid_request_error","code":"invalid_api_key"}}"#;
        match classify(u, 401, openai, &key) {
            Verdict::Invalid(m) => {
                assert!(
                    m.contains("HTTP 401: Incorrect API key provided: REDACTED"),
                    "{m}"
                );
                assert!(!m.contains("sk-secret-1"));
            }
            other => panic!("{other:?}"),
        }
        // Any 401 is a refused key, whatever its body.
        assert!(matches!(classify(u, 401, "", &key), Verdict::Invalid(_)));
        let anthropic = r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
        assert!(matches!(
            classify(u, 403, anthropic, &key),
            Verdict::Invalid(_)
        ));
        let dashscope = r#"{"code":"InvalidApiKey","message":"Invalid API-key provided."}"#;
        assert!(matches!(
            classify(u, 403, dashscope, &key),
            Verdict::Invalid(_)
        ));
        // A 403 that is about the client, not the key, revokes nothing.
        let agents = r#"{"error":{"message":"only available for Coding Agents such as Qwen Code, Claude Code","type":"access_denied"}}"#;
        assert!(matches!(
            classify(u, 403, agents, &key),
            Verdict::Refused(_)
        ));
        assert!(matches!(
            classify(u, 403, r#"{"error":{"code":"insufficient_quota"}}"#, &key),
            Verdict::Accepted(Some(_))
        ));
        assert!(matches!(
            classify(u, 429, "", &key),
            Verdict::Accepted(Some(_))
        ));
        assert!(matches!(
            classify(u, 404, "not found", &key),
            Verdict::Refused(_)
        ));
        assert!(matches!(
            classify(u, 503, "", &key),
            Verdict::Unreachable(_)
        ));
        let long = format!("{{\"message\":\"{}\"}}", "x".repeat(1000));
        match classify(u, 400, &long, &key) {
            Verdict::Refused(m) => assert!(m.len() < 300, "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
