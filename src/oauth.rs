//! The HTTP client of the Qwen OAuth protocol (qwen-oauth.md): the device grant with PKCE for
//! login, one refresh attempt, and the small pure helpers around tokens and the API (PKCE,
//! JWT email, API base URL and headers, what a 429 body says). It knows nothing of the store,
//! config files or the environment: callers pass `Settings` in and decide what to do with
//! each outcome.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::secret::Secret;

/// The device endpoint, relative to `oauth_base_url`.
const DEVICE_PATH: &str = "/api/v1/oauth2/device/code";
/// The token endpoint, relative to `oauth_base_url`.
const TOKEN_PATH: &str = "/api/v1/oauth2/token";
/// An OAuth answer is a few hundred bytes; a cap keeps a broken server from filling memory.
const MAX_BODY: u64 = 1024 * 1024;
/// Floor of the wait between polls, so `interval: 0` (tests) does not spin.
const MIN_POLL: Duration = Duration::from_millis(50);
/// Ceiling of the transient-error backoff while polling.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Quoted server fields are cut to this many characters so a message stays one short line.
const MAX_QUOTE: usize = 200;

/// What the client needs to know; the config module fills it in.
#[derive(Debug, Clone)]
pub struct Settings {
    pub oauth_base_url: String,
    pub client_id: String,
    pub scope: String,
    pub http_timeout: Duration,
}

/// One agent for all requests, so timeouts and headers are set in one place.
pub struct Client {
    agent: ureq::Agent,
    client_id: String,
    scope: String,
    device_url: String,
    token_url: String,
    base_url: String,
}

/// What the OAuth server answered to a plain GET (`doctor --online`).
pub struct Probe {
    pub status: u16,
    /// Its `Date` header, as sent.
    pub date: Option<String>,
}

/// The answer to the device authorization request (RFC 8628 §3.2).
#[derive(Debug, Clone)]
pub struct DeviceCode {
    pub device_code: Secret,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    pub interval: Option<u64>,
}

/// A successful token answer, from the device grant or a refresh. A 200 is taken for what it
/// carries: a refresh answer may have spent the old refresh token, so its new one is kept even
/// when the other fields are odd (files.md, Locking).
#[derive(Debug, Clone)]
pub struct TokenResponse {
    /// `None` when missing, blank, or holding whitespace or a control character (it would
    /// inject a header line in `token --format header`).
    pub access_token: Option<Secret>,
    pub refresh_token: Option<Secret>,
    pub token_type: String,
    /// Seconds; 0 means "expired now" (non-positive or unparsable in the answer).
    pub expires_in: u64,
    pub resource_url: Option<String>,
    pub id_token: Option<Secret>,
}

/// The outcome of one poll of the token endpoint that is not an error.
#[derive(Debug)]
pub enum Poll {
    /// The user has not approved yet: poll again after the interval.
    Pending,
    /// Poll again, 5 s slower.
    SlowDown,
    Done(TokenResponse),
}

#[derive(Debug)]
pub enum PollError {
    /// Login cannot succeed with this device code: stop and tell the user.
    Fatal(String),
    /// The server or network failed this time: keep polling with backoff.
    Transient(String),
}

#[derive(Debug)]
pub enum RefreshError {
    /// The server said the refresh token is dead: the account is revoked.
    Dead(String),
    /// Anything less clear: keep the account, retry later, never revoke.
    Transient(String),
}

/// A response whose body was read within the size cap.
struct Reply {
    status: u16,
    /// `None` when the body is not a JSON value.
    json: Option<Value>,
}

impl Client {
    pub fn new(settings: &Settings) -> Result<Client> {
        let base = settings.oauth_base_url.trim_end_matches('/');
        check_url(base).map_err(|why| Error::File(format!("oauth_base_url {base}: {why}")))?;
        let connect = settings.http_timeout.min(Duration::from_secs(10));
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(settings.http_timeout))
            .timeout_connect(Some(connect))
            // Error bodies carry the OAuth `error` field we map (RFC 6749 §5.2).
            .http_status_as_error(false)
            // A token endpoint has no business redirecting; a redirect is answered as a
            // non-200 instead of re-posting a refresh token somewhere else.
            .max_redirects(0)
            // The service answers HTML to requests without a User-Agent (qwen-oauth.md).
            .user_agent(format!("qwen-cred/{}", env!("CARGO_PKG_VERSION")))
            .accept("application/json");
        if loopback_http(base) {
            // A loopback test server is never reached through a proxy from the environment.
            config = config.proxy(None);
        }
        Ok(Client {
            agent: config.build().new_agent(),
            client_id: settings.client_id.clone(),
            scope: settings.scope.clone(),
            device_url: format!("{base}{DEVICE_PATH}"),
            token_url: format!("{base}{TOKEN_PATH}"),
            base_url: format!("{base}/"),
        })
    }

    /// GETs the server's base URL: whether it answers, and its clock. Sends nothing secret
    /// and spends nothing (no token, no device code); any HTTP status counts as an answer.
    pub fn probe(&self) -> std::result::Result<Probe, String> {
        let url = &self.base_url;
        let resp = self
            .agent
            .get(url)
            .call()
            .map_err(|e| format!("{url}: {e}"))?;
        let date = resp
            .headers()
            .get("date")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(Probe {
            status: resp.status().as_u16(),
            date,
        })
    }

    /// POSTs a form and reads a capped body. `Err` is a network failure, a timeout or a body
    /// over the cap; the message never contains the form (it carries secrets).
    fn post(&self, url: &str, form: &[(&str, &str)]) -> std::result::Result<Reply, String> {
        let mut resp = self
            .agent
            .post(url)
            .header("Accept", "application/json")
            .send_form(form.iter().copied())
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => {
                    format!("{url}: response too large (HTTP {status}, over {MAX_BODY} bytes)")
                }
                e => format!("{url}: reading the response (HTTP {status}): {e}"),
            })?;
        let json = serde_json::from_slice(&bytes).ok();
        Ok(Reply { status, json })
    }

    /// Starts the device grant (RFC 8628 §3.1) with a PKCE S256 challenge (RFC 7636 §4.3).
    pub fn device_code(&self, challenge: &str) -> Result<DeviceCode> {
        let url = &self.device_url;
        let form = [
            ("client_id", self.client_id.as_str()),
            ("scope", self.scope.as_str()),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ];
        let reply = self.post(url, &form).map_err(Error::Server)?;
        // A server failure (5xx, garbage) is exit 5, retry later (cli.md); a refusal is 7.
        let json = match (reply.status, reply.json) {
            (200, Some(json)) => json,
            (200, None) => {
                return Err(Error::Server(format!(
                    "{url} answered HTTP 200 with a body that is not JSON; retry later"
                )))
            }
            (status @ 500..=599, _) => {
                return Err(Error::Server(format!(
                    "{url} answered HTTP {status}; retry later"
                )))
            }
            (status, json) => {
                return Err(Error::Login(format!(
                    "{url} answered HTTP {status}{}",
                    json.as_ref().map(error_note).unwrap_or_default()
                )))
            }
        };
        parse_device_code(&json).map_err(|why| Error::Login(format!("{url}: {why}")))
    }

    /// One poll of the token endpoint (RFC 8628 §3.4), with the PKCE verifier (RFC 7636 §4.5).
    pub fn poll_device(
        &self,
        device_code: &Secret,
        verifier: &Secret,
    ) -> std::result::Result<Poll, PollError> {
        let url = &self.token_url;
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("client_id", self.client_id.as_str()),
            ("device_code", device_code.expose()),
            ("code_verifier", verifier.expose()),
        ];
        let reply = self.post(url, &form).map_err(PollError::Transient)?;
        let status = reply.status;
        let error = reply.json.as_ref().and_then(error_code);
        let note = || {
            let note = reply.json.as_ref().map(error_note).unwrap_or_default();
            crate::secret::redact(&note, &[device_code, verifier])
        };
        // Error codes of RFC 8628 §3.5; 429 is the plain HTTP way to say slow down.
        match (status, error.as_deref()) {
            (200, _) => {
                let json = reply.json.ok_or_else(|| {
                    PollError::Transient(format!("{url} answered 200 with a body that is not JSON"))
                })?;
                let tok = TokenResponse::from_json(&json);
                match tok.access_token {
                    Some(_) => Ok(Poll::Done(tok)),
                    None => Err(PollError::Transient(format!(
                        "{url} answered 200 with no usable access_token"
                    ))),
                }
            }
            (400, Some("authorization_pending")) => Ok(Poll::Pending),
            (400, Some("slow_down")) | (429, _) => Ok(Poll::SlowDown),
            (400, Some("expired_token")) => Err(PollError::Fatal(
                "the device code expired before the browser approval".into(),
            )),
            (400, Some("access_denied")) => {
                Err(PollError::Fatal("access was denied in the browser".into()))
            }
            (401, _) => Err(PollError::Fatal(format!(
                "{url} rejected the client (HTTP 401{})",
                note()
            ))),
            (500..=599, _) => Err(PollError::Transient(format!(
                "{url} answered HTTP {status}"
            ))),
            (400, None) => Err(PollError::Transient(format!(
                "{url} answered HTTP 400 with no OAuth error"
            ))),
            _ => Err(PollError::Fatal(format!(
                "{url} answered HTTP {status}{}",
                note()
            ))),
        }
    }

    /// Polls until the user approves, refuses, or `deadline` passes (qwen-oauth.md step 4).
    pub fn device_login(
        &self,
        dc: &DeviceCode,
        verifier: &Secret,
        deadline: Instant,
        on_retry: &mut dyn FnMut(&str),
    ) -> Result<TokenResponse> {
        // RFC 8628 §3.2: the client waits `interval` seconds between polls, 5 s by default;
        // the Qwen CLI uses 2 s.
        let mut interval = Duration::from_secs(dc.interval.unwrap_or(2));
        let mut backoff: Option<Duration> = None;
        let mut last_error = String::new();
        loop {
            let wait = match self.poll_device(&dc.device_code, verifier) {
                Ok(Poll::Done(token)) => return Ok(token),
                Ok(Poll::Pending) => {
                    backoff = None;
                    interval
                }
                Ok(Poll::SlowDown) => {
                    // RFC 8628 §3.5: slow_down increases the interval by 5 s for all
                    // subsequent requests.
                    backoff = None;
                    interval = interval.saturating_add(Duration::from_secs(5));
                    interval
                }
                Err(PollError::Fatal(why)) => return Err(Error::Login(why)),
                Err(PollError::Transient(why)) => {
                    // RFC 8628 §3.5: back off exponentially on connection trouble.
                    on_retry(&why);
                    last_error = why;
                    let next = backoff
                        .map_or(interval.max(MIN_POLL), |b| b)
                        .saturating_mul(2);
                    let next = next.min(MAX_BACKOFF);
                    backoff = Some(next);
                    next.max(interval)
                }
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(timed_out(&last_error));
            }
            // Never sleep past the deadline.
            std::thread::sleep(wait.max(MIN_POLL).min(deadline - now));
            if Instant::now() >= deadline {
                return Err(timed_out(&last_error));
            }
        }
    }

    /// One refresh attempt (RFC 6749 §6). Retries and the single-use lock are the caller's.
    pub fn refresh(
        &self,
        refresh_token: &Secret,
    ) -> std::result::Result<TokenResponse, RefreshError> {
        let url = &self.token_url;
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
            ("client_id", self.client_id.as_str()),
        ];
        let reply = self.post(url, &form).map_err(RefreshError::Transient)?;
        let status = reply.status;
        let Some(json) = reply.json else {
            return Err(RefreshError::Transient(format!(
                "{url} answered HTTP {status} with a body that is not JSON"
            )));
        };
        if status == 200 {
            let tok = TokenResponse::from_json(&json);
            if tok.access_token.is_none() && tok.refresh_token.is_none() {
                return Err(RefreshError::Transient(format!(
                    "{url} answered HTTP 200 with no usable access_token and no refresh_token"
                )));
            }
            return Ok(tok);
        }
        // A server may echo the token it was sent in its error text.
        let redact = |text: String| crate::secret::redact(&text, &[refresh_token]);
        // RFC 6749 §5.2: the error response is 400 (401 for a failed client authentication)
        // with an `error` code. Only the codes that say the grant is dead revoke the account;
        // the service answers invalid_request "Invalid refresh token or client_id" for a
        // dead refresh token (qwen-oauth.md).
        match (status, error_code(&json).as_deref()) {
            (400 | 401, Some(code @ ("invalid_grant" | "invalid_request"))) => {
                Err(RefreshError::Dead(redact(match description(&json) {
                    Some(d) => format!("{code}: {d}"),
                    None => code.to_string(),
                })))
            }
            _ => Err(RefreshError::Transient(redact(format!(
                "{url} answered HTTP {status}{}",
                error_note(&json)
            )))),
        }
    }
}

impl TokenResponse {
    /// When this token expires, as Unix ms from `now_ms`. A lifetime past ten years is a
    /// server's mistake and is clamped to that.
    pub fn expiry_date(&self, now_ms: i64) -> i64 {
        const TEN_YEARS_S: u64 = 10 * 365 * 86_400;
        let ms = self.expires_in.min(TEN_YEARS_S) as i64 * 1000;
        now_ms.saturating_add(ms)
    }

    /// Reads a token answer (RFC 6749 §5.1) for what it carries; the caller decides whether
    /// that is enough. The rules for odd fields are files.md's (Locking).
    pub fn from_json(json: &Value) -> TokenResponse {
        TokenResponse {
            access_token: nonempty(json, "access_token")
                .filter(|t| !t.chars().any(|c| c.is_whitespace() || c.is_control()))
                .map(Secret::new),
            refresh_token: nonempty(json, "refresh_token").map(Secret::new),
            token_type: nonempty(json, "token_type")
                .filter(|t| !has_control(t))
                .unwrap_or_else(|| "Bearer".to_string()),
            expires_in: expires_in(json.get("expires_in")),
            resource_url: nonempty(json, "resource_url").filter(|r| !has_control(r)),
            id_token: nonempty(json, "id_token").map(Secret::new),
        }
    }
}

/// `expires_in` in seconds: missing means 3600 (RFC 6749 §5.1 lets a server omit it), a
/// positive number or numeric string is taken (a fraction cut, a huge one clamped later by
/// `expiry_date`), anything else (zero, negative, garbage) means expired now, 0.
fn expires_in(v: Option<&Value>) -> u64 {
    let text = match v {
        None | Some(Value::Null) => return 3600,
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(_) => return 0,
    };
    // Integers exactly; anything else through f64.
    if let Ok(n) = text.parse::<u64>() {
        return n;
    }
    match text.parse::<f64>().ok() {
        // `as` saturates: 1e30 becomes u64::MAX, clamped to ten years by `expiry_date`.
        Some(s) if s.is_finite() && s >= 1.0 => s as u64,
        _ => 0,
    }
}

fn parse_device_code(json: &Value) -> std::result::Result<DeviceCode, String> {
    let device_code = nonempty(json, "device_code").ok_or("the answer has no device_code")?;
    let complete = nonempty(json, "verification_uri_complete");
    let verification_uri = nonempty(json, "verification_uri")
        .or_else(|| complete.clone())
        .ok_or("the answer has no verification_uri")?;
    // These URLs are opened in a browser: only web URLs, nothing a shell or OS could run.
    for uri in std::iter::once(&verification_uri).chain(complete.iter()) {
        if !(uri.starts_with("https://") || uri.starts_with("http://")) || has_control(uri) {
            return Err("the verification URL is not an http(s) URL".into());
        }
    }
    let number = |key: &str| json.get(key).and_then(Value::as_u64);
    Ok(DeviceCode {
        device_code: Secret::new(device_code),
        user_code: nonempty(json, "user_code").unwrap_or_default(),
        verification_uri,
        verification_uri_complete: complete,
        // RFC 8628 §3.2 requires expires_in; when a server omits it, give the user 10 minutes.
        expires_in: number("expires_in").filter(|&n| n > 0).unwrap_or(600),
        interval: number("interval"),
    })
}

fn timed_out(last_error: &str) -> Error {
    let mut msg =
        "timed out waiting for the browser approval; run `qwen-cred login` again".to_string();
    if !last_error.is_empty() {
        msg.push_str(&format!(" (last error: {last_error})"));
    }
    Error::Login(msg)
}

/// A non-empty string field.
fn nonempty(json: &Value, key: &str) -> Option<String> {
    json.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
}

/// The OAuth `error` code of RFC 6749 §5.2.
fn error_code(json: &Value) -> Option<String> {
    nonempty(json, "error").map(|s| quote(&s))
}

fn description(json: &Value) -> Option<String> {
    nonempty(json, "error_description").map(|s| quote(&s))
}

/// ": error: description" for a message, or nothing. Only these two fields are ever quoted
/// from a body: the rest may carry tokens.
fn error_note(json: &Value) -> String {
    match (error_code(json), description(json)) {
        (Some(e), Some(d)) => format!(": {e}: {d}"),
        (Some(e), None) => format!(": {e}"),
        (None, Some(d)) => format!(": {d}"),
        (None, None) => String::new(),
    }
}

/// A server string made fit for a one-line message.
fn quote(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_QUOTE)
        .collect::<String>()
        .trim()
        .to_string()
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Accepts `https://` URLs, and `http://` only to a loopback host, which tests use
/// (qwen-oauth.md). `Err` says why a URL is refused.
pub fn check_url(url: &str) -> std::result::Result<(), String> {
    let url = url.trim();
    if has_control(url) || url.contains(char::is_whitespace) {
        return Err("the URL contains spaces or control characters".into());
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("the URL has no scheme; use https://".into());
    };
    if authority(rest).is_empty() {
        return Err("the URL has no host".into());
    }
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(()),
        "http" if loopback_http(url) => Ok(()),
        "http" => Err(
            "plain http:// is allowed only to a loopback host (127.0.0.0/8, \
             [::1], localhost); use https://"
                .into(),
        ),
        _ => Err(format!(
            "the scheme {scheme}:// is not supported; use https://"
        )),
    }
}

/// The host[:port] part after the scheme.
fn authority(rest: &str) -> &str {
    rest.split(['/', '?', '#']).next().unwrap_or_default()
}

/// Whether `url` is `http://` to 127.0.0.0/8, `[::1]` or `localhost`.
pub(crate) fn loopback_http(url: &str) -> bool {
    let Some((scheme, rest)) = url.trim().split_once("://") else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("http") {
        return false;
    }
    let auth = authority(rest);
    // Userinfo would let `http://127.0.0.1@evil.com` pass for loopback.
    if auth.contains('@') {
        return false;
    }
    let (host, port) = if let Some(v6) = auth.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return false;
        };
        let Some(port) = after.strip_prefix(':').or((after.is_empty()).then_some("")) else {
            return false;
        };
        let Ok(ip) = host.parse::<std::net::Ipv6Addr>() else {
            return false;
        };
        if !ip.is_loopback() {
            return false;
        }
        (None, port)
    } else {
        match auth.split_once(':') {
            Some((h, p)) => (Some(h), p),
            None => (Some(auth), ""),
        }
    };
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    match host {
        None => true,
        Some(h) if h.eq_ignore_ascii_case("localhost") => true,
        Some(h) => h
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback()),
    }
}

/// A PKCE pair (RFC 7636 §4.1, §4.2): a 43-char verifier from 32 random bytes, and its S256
/// challenge.
pub fn pkce_pair() -> Result<(Secret, String)> {
    let mut bytes = [0u8; 32];
    // RFC 7636 §7.1: the verifier must come from a cryptographically random source.
    getrandom::getrandom(&mut bytes)
        .map_err(|e| Error::Internal(format!("no random bytes for PKCE: {e}")))?;
    let verifier = URL_SAFE_NO_PAD.encode(bytes);
    let challenge = challenge_for(&verifier);
    Ok((Secret::new(verifier), challenge))
}

/// RFC 7636 §4.2 S256: base64url-nopad(SHA-256(ASCII(verifier))).
pub fn challenge_for(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// The `email` claim of an ID token, as a label only: no signature check.
pub fn email_from_id_token(id_token: &Secret) -> Option<String> {
    let payload = id_token.expose().split('.').nth(1)?;
    // JWT producers are not all strict: padding or not, and the standard alphabet too.
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let bytes = LENIENT
        .decode(payload.replace('+', "-").replace('/', "_"))
        .ok()?;
    let json: Value = serde_json::from_slice(&bytes).ok()?;
    let email = json.get("email")?.as_str()?.trim();
    (!email.is_empty() && !has_control(email)).then(|| email.to_string())
}

/// The OpenAI-compatible base URL from a token's `resource_url` (qwen-oauth.md "The API").
pub fn api_base_url(resource_url: Option<&str>, default_resource_url: &str) -> String {
    let raw = resource_url
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(default_resource_url.trim());
    let mut url = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("https://{raw}")
    };
    while url.ends_with('/') {
        url.pop();
    }
    if !url.ends_with("/v1") {
        url.push_str("/v1");
    }
    url
}

/// The headers an integration should send with the API call, `Authorization` aside: clients
/// without them were throttled below the published quota (qwen-oauth.md "The API").
pub fn api_headers(version: &str) -> Vec<(&'static str, String)> {
    let agent = format!("qwen-cred/{version}");
    vec![
        ("User-Agent", agent.clone()),
        ("X-DashScope-CacheControl", "enable".to_string()),
        ("X-DashScope-UserAgent", agent),
        ("X-DashScope-AuthType", "qwen-oauth".to_string()),
    ]
}

/// Whether a 429 (or 403) body says the daily quota is spent rather than a short throttle.
pub fn is_quota_body(body: &str) -> bool {
    if [
        "insufficient_quota",
        "quota_exceeded",
        "Free allocated quota exceeded",
    ]
    .iter()
    .any(|k| body.contains(k))
    {
        return true;
    }
    let lower = body.to_ascii_lowercase();
    lower.contains("quota") && lower.contains("exceed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    fn vectors() -> Value {
        let text = include_str!("../tests/vectors.json");
        serde_json::from_str(text).expect("vectors.json parses")
    }

    #[test]
    fn classify_429_vectors() {
        let v = vectors();
        let cases = v["classify_429"].as_array().expect("classify_429 array");
        assert!(!cases.is_empty());
        for c in cases {
            let want = match c["kind"].as_str() {
                Some("quota") => true,
                Some("throttle") => false,
                other => panic!("unknown kind {other:?}"),
            };
            assert_eq!(
                is_quota_body(c["body"].as_str().expect("body")),
                want,
                "{c}"
            );
        }
        assert!(is_quota_body("Daily QUOTA has been EXCEEDED"));
        assert!(!is_quota_body("quota remaining: 10"));
        assert!(!is_quota_body("exceeded the rate"));
    }

    #[test]
    fn pkce_vector() {
        for v in vectors()["pkce_s256"].as_array().expect("array") {
            let verifier = v["code_verifier"].as_str().expect("verifier");
            assert_eq!(
                challenge_for(verifier),
                v["code_challenge"].as_str().expect("c")
            );
        }
    }

    #[test]
    fn pkce_pair_shape() {
        let (verifier, challenge) = pkce_pair().expect("urandom");
        assert_eq!(verifier.expose().len(), 43);
        assert_eq!(challenge, challenge_for(verifier.expose()));
        assert_ne!(pkce_pair().expect("urandom").0, verifier);
    }

    #[test]
    fn base_url_vectors() {
        for v in vectors()["base_url"].as_array().expect("array") {
            let default = v["default_resource_url"]
                .as_str()
                .unwrap_or("portal.qwen.ai");
            let got = api_base_url(v["resource_url"].as_str(), default);
            assert_eq!(got, v["base_url"].as_str().expect("base_url"));
        }
        assert_eq!(api_base_url(Some("x.ai/v1/"), "d"), "https://x.ai/v1");
        assert_eq!(api_base_url(Some(" "), "d.ai"), "https://d.ai/v1");
    }

    fn jwt(payload: &str, pad: bool) -> Secret {
        let mut body = URL_SAFE_NO_PAD.encode(payload.as_bytes());
        while pad && !body.len().is_multiple_of(4) {
            body.push('=');
        }
        Secret::new(format!("eyJhbGciOiJub25lIn0.{body}.sig"))
    }

    #[test]
    fn email_from_jwt() {
        let p = r#"{"sub":"12","email":"a@b.c"}"#;
        assert_ne!(p.len() % 3, 0, "the padded case needs padding");
        assert_eq!(
            email_from_id_token(&jwt(p, false)).as_deref(),
            Some("a@b.c")
        );
        assert_eq!(email_from_id_token(&jwt(p, true)).as_deref(), Some("a@b.c"));
        assert_eq!(email_from_id_token(&jwt(r#"{"sub":"1"}"#, false)), None);
        assert_eq!(email_from_id_token(&jwt(r#"{"email":""}"#, false)), None);
        assert_eq!(email_from_id_token(&jwt("not json", false)), None);
        assert_eq!(email_from_id_token(&Secret::new("garbage")), None);
        assert_eq!(email_from_id_token(&Secret::new("a.!!!.c")), None);
    }

    #[test]
    fn urls() {
        for ok in [
            "https://chat.qwen.ai",
            "HTTPS://chat.qwen.ai/x",
            "http://127.0.0.1:8080",
            "http://127.1.2.3/x",
            "http://localhost",
            "http://[::1]:9",
            "http://[::1]",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://example.com",
            "ftp://127.0.0.1",
            "http://127.0.0.1.evil.com",
            "http://127.0.0.1@evil.com",
            "http://localhost.evil.com",
            "http://[::2]:9",
            "chat.qwen.ai",
            "https://",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert!(check_url("http://example.com")
            .unwrap_err()
            .contains("loopback"));
    }

    #[test]
    fn token_response_parsing() {
        let t = TokenResponse::from_json(&serde_json::json!({
            "access_token": "at", "expires_in": 3600
        }));
        assert_eq!(t.access_token.as_ref().map(Secret::expose), Some("at"));
        assert!(t.refresh_token.is_none() && t.resource_url.is_none() && t.id_token.is_none());
        assert_eq!((t.token_type.as_str(), t.expires_in), ("Bearer", 3600));
        let t = TokenResponse::from_json(&serde_json::json!({
            "access_token": "at", "refresh_token": "rt", "token_type": "bearer",
            "expires_in": "60", "resource_url": "portal.qwen.ai", "id_token": "x.y.z"
        }));
        assert_eq!(t.refresh_token.as_ref().map(Secret::expose), Some("rt"));
        assert_eq!(t.resource_url.as_deref(), Some("portal.qwen.ai"));
        assert_eq!(t.expires_in, 60);
        let odd = |body: Value| TokenResponse::from_json(&body);
        assert!(odd(serde_json::json!({"expires_in": 60}))
            .access_token
            .is_none());
        for bad in ["", "  ", "a b", "a\nX-Evil: 1", "a\t", "a\u{7f}"] {
            let t = odd(serde_json::json!({"access_token": bad, "refresh_token": "rt"}));
            assert!(t.access_token.is_none(), "{bad:?}");
            assert_eq!(t.refresh_token.as_ref().map(Secret::expose), Some("rt"));
        }
        // files.md: missing is 3600, non-positive or unparsable is expired now, huge clamped.
        for (v, want) in [
            (Value::Null, 3600),
            (serde_json::json!(3600.0), 3600),
            (serde_json::json!(90.9), 90),
            (serde_json::json!("120"), 120),
            (serde_json::json!(0), 0),
            (serde_json::json!(-5), 0),
            (serde_json::json!(0.5), 0),
            (serde_json::json!("soon"), 0),
            (serde_json::json!(true), 0),
            (serde_json::json!(1e30), u64::MAX),
        ] {
            let body = match v {
                Value::Null => serde_json::json!({"access_token": "a"}),
                v => serde_json::json!({"access_token": "a", "expires_in": v}),
            };
            assert_eq!(odd(body).expires_in, want);
        }
        let huge = odd(serde_json::json!({"access_token": "a", "expires_in": 1e30}));
        assert_eq!(huge.expiry_date(1000), 1000 + 10 * 365 * 86_400_000);
    }

    #[test]
    fn headers() {
        let h = api_headers("1.2.3");
        assert!(h.contains(&("User-Agent", "qwen-cred/1.2.3".into())));
        assert!(h.contains(&("X-DashScope-UserAgent", "qwen-cred/1.2.3".into())));
        assert!(h.contains(&("X-DashScope-AuthType", "qwen-oauth".into())));
    }

    /// A loopback server answering one canned response per connection, recording requests.
    fn serve(responses: Vec<(u16, &'static str)>) -> (Client, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for (status, body) in responses {
                let Ok((mut s, _)) = listener.accept() else {
                    return;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break;
                        }
                    }
                }
                log.lock()
                    .expect("log")
                    .push(String::from_utf8_lossy(&req).to_string());
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let client = Client::new(&Settings {
            oauth_base_url: base,
            client_id: "cid".into(),
            scope: "openid".into(),
            http_timeout: Duration::from_secs(5),
        })
        .expect("client");
        (client, seen)
    }

    const OK: &str = r#"{"access_token":"at2","refresh_token":"rt2","expires_in":3600}"#;

    #[test]
    fn refresh_outcomes() {
        let (client, seen) = serve(vec![
            (200, OK),
            (
                400,
                r#"{"error":"invalid_request","error_description":"Invalid refresh token or client_id"}"#,
            ),
            (400, r#"{"error":"invalid_grant"}"#),
            (500, r#"{"error":"server_error"}"#),
            (200, "<html>hi</html>"),
            (429, ""),
            (403, r#"{"error":"forbidden"}"#),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"rt-secret-1 is spent"}"#,
            ),
        ]);
        let rt = Secret::new("rt-secret-1");
        let t = client.refresh(&rt).expect("200");
        assert_eq!(t.access_token.as_ref().map(Secret::expose), Some("at2"));
        match client.refresh(&rt) {
            Err(RefreshError::Dead(why)) => {
                assert_eq!(why, "invalid_request: Invalid refresh token or client_id")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(client.refresh(&rt), Err(RefreshError::Dead(w)) if w == "invalid_grant"));
        for status in ["500", "200", "429", "403"] {
            match client.refresh(&rt) {
                Err(RefreshError::Transient(m)) => {
                    assert!(
                        m.contains(status) && m.contains("/api/v1/oauth2/token"),
                        "{m}"
                    );
                    assert!(!m.contains("rt-secret-1"));
                }
                other => panic!("{other:?}"),
            }
        }
        // A server echoing the token it was sent never gets it into a message.
        assert!(
            matches!(client.refresh(&rt), Err(RefreshError::Dead(w)) if w == "invalid_grant: REDACTED is spent")
        );
        let req = seen.lock().expect("log")[0].to_ascii_lowercase();
        assert!(req.starts_with("post /api/v1/oauth2/token "));
        assert!(req.contains("user-agent: qwen-cred/"));
        assert!(req.contains("accept: application/json"));
        assert!(req.contains("content-type: application/x-www-form-urlencoded"));
        assert!(req.contains("grant_type=refresh_token"));
        assert!(req.contains("refresh_token=rt-secret-1") && req.contains("client_id=cid"));
    }

    #[test]
    fn poll_outcomes() {
        let (client, seen) = serve(vec![
            (400, r#"{"error":"authorization_pending"}"#),
            (429, r#"{"error":"slow_down"}"#),
            (400, r#"{"error":"slow_down"}"#),
            (401, r#"{"error":"invalid_client"}"#),
            (400, r#"{"error":"access_denied"}"#),
            (503, "down"),
        ]);
        let (dc, v) = (Secret::new("dev-1"), Secret::new("ver-1"));
        assert!(matches!(client.poll_device(&dc, &v), Ok(Poll::Pending)));
        assert!(matches!(client.poll_device(&dc, &v), Ok(Poll::SlowDown)));
        assert!(matches!(client.poll_device(&dc, &v), Ok(Poll::SlowDown)));
        assert!(
            matches!(client.poll_device(&dc, &v), Err(PollError::Fatal(m)) if m.contains("401"))
        );
        assert!(
            matches!(client.poll_device(&dc, &v), Err(PollError::Fatal(m)) if m.contains("denied"))
        );
        assert!(matches!(
            client.poll_device(&dc, &v),
            Err(PollError::Transient(_))
        ));
        let req = seen.lock().expect("log")[0].clone();
        assert!(req.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code"));
        assert!(req.contains("device_code=dev-1") && req.contains("code_verifier=ver-1"));
    }

    #[test]
    fn device_flow() {
        let (client, seen) = serve(vec![
            (
                200,
                r#"{"device_code":"dev-1","user_code":"AB-CD","verification_uri":"https://x/a","verification_uri_complete":"https://x/a?c=AB-CD","expires_in":900,"interval":0}"#,
            ),
            (400, r#"{"error":"authorization_pending"}"#),
            (500, ""),
            (200, OK),
        ]);
        let dc = client.device_code("chal").expect("device code");
        assert_eq!(
            (dc.user_code.as_str(), dc.expires_in, dc.interval),
            ("AB-CD", 900, Some(0))
        );
        let mut notes = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let t = client
            .device_login(&dc, &Secret::new("v"), deadline, &mut |m| {
                notes.push(m.to_string())
            })
            .expect("login");
        assert_eq!(
            t.refresh_token.map(|s| s.expose().to_string()).as_deref(),
            Some("rt2")
        );
        assert_eq!(notes.len(), 1);
        let req = seen.lock().expect("log")[0].clone();
        assert!(req.contains("code_challenge=chal") && req.contains("code_challenge_method=S256"));
    }

    #[test]
    fn device_login_times_out() {
        let (client, _) = serve(vec![(400, r#"{"error":"authorization_pending"}"#); 50]);
        let dc = DeviceCode {
            device_code: Secret::new("d"),
            user_code: String::new(),
            verification_uri: "https://x".into(),
            verification_uri_complete: None,
            expires_in: 1,
            interval: Some(0),
        };
        let deadline = Instant::now() + Duration::from_millis(200);
        let err = client.device_login(&dc, &Secret::new("v"), deadline, &mut |_| {});
        assert!(matches!(err, Err(Error::Login(m)) if m.contains("timed out")));
        assert!(Instant::now() < deadline + Duration::from_secs(1));
    }

    #[test]
    fn big_body_is_refused() {
        let big: &'static str = Box::leak("x".repeat(2 << 20).into_boxed_str());
        let (client, _) = serve(vec![(200, big)]);
        let r = client.refresh(&Secret::new("r"));
        assert!(matches!(r, Err(RefreshError::Transient(m)) if m.contains("too large")));
    }

    #[test]
    fn device_code_refused() {
        let (client, _) = serve(vec![
            (403, r#"{"error":"nope"}"#),
            (200, r#"{"user_code":"x"}"#),
        ]);
        let e = client.device_code("c").expect_err("403");
        assert!(
            matches!(&e, Error::Login(m) if m.contains("403") && m.contains("nope")),
            "{e}"
        );
        let e = client.device_code("c").expect_err("no device_code");
        assert!(
            matches!(&e, Error::Login(m) if m.contains("device_code")),
            "{e}"
        );
    }
}

/// Properties of reading the token endpoint's answer over generated input (README, Property
/// tests).
#[cfg(test)]
mod proptests {
    use super::*;
    use crate::strategies::{apply, edits, json, number, text, to_bytes};
    use proptest::collection::vec;
    use proptest::option;
    use proptest::prelude::*;
    use proptest::sample::select;

    const KEYS: &[&str] = &[
        "access_token",
        "refresh_token",
        "token_type",
        "expires_in",
        "resource_url",
        "id_token",
    ];

    /// A full answer as a server sends it; `expires_in` as a number or a padded string.
    fn answer() -> impl Strategy<Value = (String, String, u64, bool)> {
        (
            any::<u64>().prop_map(|n| format!("at-SECRET-{n}")),
            any::<u64>().prop_map(|n| format!("rt-SECRET-{n}")),
            1..=i64::MAX as u64,
            proptest::bool::weighted(0.25),
        )
    }

    fn answer_json(at: &str, rt: &str, expires: u64, as_text: bool) -> Value {
        serde_json::json!({
            "access_token": at,
            "refresh_token": rt,
            "token_type": "Bearer",
            "expires_in": if as_text { Value::from(format!(" {expires}")) } else { Value::from(expires) },
            "resource_url": "portal.qwen.ai",
            "id_token": "a.b.c",
        })
    }

    /// One field of the answer removed, nulled, of any JSON type, a number, or text with a
    /// character in it that must not reach a header line.
    #[derive(Debug, Clone)]
    enum Damage {
        Remove,
        Null,
        Any(Value),
        Number(Value),
        Text(String),
    }

    /// Whitespace and control characters, ASCII and not.
    const BREAKS: &[char] = &[
        ' ', '\t', '\n', '\r', '\u{0}', '\u{b}', '\u{c}', '\u{1b}', '\u{7f}', '\u{85}', '\u{a0}',
        '\u{2028}', '\u{3000}',
    ];

    fn damage() -> impl Strategy<Value = (&'static str, Damage)> {
        let kind = prop_oneof![
            Just(Damage::Remove),
            Just(Damage::Null),
            json(2).prop_map(Damage::Any),
            number().prop_map(Damage::Number),
            (text(), select(BREAKS), text())
                .prop_map(|(a, c, b)| Damage::Text(format!("{a}{c}{b}"))),
        ];
        (select(KEYS), kind)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// A full answer is kept as sent: both tokens, and `expires_in` as a number or a
        /// numeric string.
        #[test]
        fn token_response_keeps_a_full_answer((at, rt, expires, as_text) in answer()) {
            let t = TokenResponse::from_json(&answer_json(&at, &rt, expires, as_text));
            prop_assert_eq!(t.access_token.as_ref().map(Secret::expose), Some(at.as_str()));
            prop_assert_eq!(t.refresh_token.as_ref().map(Secret::expose), Some(rt.as_str()));
            prop_assert_eq!(t.expires_in, expires);
        }

        /// Whatever comes (fields removed, nulled, of other types; any JSON; damaged bytes
        /// that still parse): what is kept is what was sent, a kept access token is fit for
        /// a header line (no whitespace or control character), a refresh token sent is never
        /// dropped, and the token type is never blank.
        #[test]
        fn token_response_keeps_what_was_sent(
            (at, rt, expires, as_text) in answer(),
            damages in vec(damage(), 1..=4),
            any_json in option::weighted(0.2, json(3)),
            pretty in any::<bool>(),
            edits in option::weighted(0.25, edits()),
        ) {
            let mut v = answer_json(&at, &rt, expires, as_text);
            for (k, d) in damages {
                match d {
                    Damage::Remove => {
                        if let Some(m) = v.as_object_mut() {
                            m.shift_remove(k);
                        }
                    }
                    Damage::Null => v[k] = Value::Null,
                    Damage::Any(x) | Damage::Number(x) => v[k] = x,
                    Damage::Text(t) => v[k] = Value::from(t),
                }
            }
            if let Some(x) = any_json {
                v = x;
            }
            let mut bytes = to_bytes(&v, pretty);
            if let Some(e) = &edits {
                bytes = apply(bytes, e);
            }
            let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
                return Ok(());
            };
            let t = TokenResponse::from_json(&v);
            if let Some(a) = &t.access_token {
                let a = a.expose();
                prop_assert!(!a.is_empty());
                prop_assert!(!a.chars().any(|c| c.is_whitespace() || c.is_control()), "{:?}", a);
                prop_assert_eq!(Some(a), v.get("access_token").and_then(Value::as_str));
            }
            let sent_rt = v
                .get("refresh_token")
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty());
            prop_assert_eq!(t.refresh_token.as_ref().map(Secret::expose), sent_rt);
            prop_assert!(!t.token_type.trim().is_empty());
        }
    }
}
