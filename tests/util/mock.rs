//! A mock of the Qwen OAuth service and its OpenAI-compatible API for integration tests
//! (protocol: spec/qwen-oauth.md), which also takes API keys (Coding Plan, DashScope, any
//! OpenAI-compatible key) with no OAuth behind them: per-key quotas and windows, 429s in each
//! header style such APIs use, `GET /v1/models`, and an Anthropic-style `POST /v1/messages`.
//!
//! A plain `std::net` HTTP/1.1 server: one accept thread, one thread per connection, one
//! response per connection (`Connection: close`) so there is no keep-alive state to get wrong.
//! Every state change notifies the condvar, so tests wait for events with [`Mock::wait_until`]
//! instead of sleeping.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// The official client id, which the mock expects unless told otherwise.
pub const CLIENT_ID: &str = "f0304373b74a44d2b584a3fb70ca9e56";
pub const SCOPE: &str = "openid profile email model.completion";
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// What the real service says about a dead refresh token.
pub const DEAD_REFRESH: &str = "Invalid refresh token or client_id";
pub const QUOTA_BODY: &str = r#"{"error":{"code":"insufficient_quota","message":"Free allocated quota exceeded.","type":"insufficient_quota"}}"#;
pub const EXPIRED_BODY: &str =
    r#"{"error":{"code":"invalid_api_key","message":"invalid access token or token expired"}}"#;
pub const RATE_LIMIT_BODY: &str = r#"{"error":{"code":"rate_limit_exceeded","message":"Requests rate limit exceeded, please try again later.","type":"rate_limit_exceeded"}}"#;
/// What a service for coding agents only says to another client.
pub const NOT_AN_AGENT_BODY: &str = r#"{"error":{"message":"This plan is only available for coding agents such as Qwen Code and Claude Code.","type":"access_denied"}}"#;

/// Just over ureq's default 10 MiB body limit, so a client without its own limit still fails.
const HUGE_LEN: usize = 10 * 1024 * 1024;
/// Bounds a silent client; Drop does not rely on it (it shuts the sockets down).
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;
/// The window of [`Mock::set_throttle_per_minute`].
const THROTTLE_WINDOW: Duration = Duration::from_secs(60);

/// How one device session answers its polls. Poll numbers start at 1.
#[derive(Clone, Debug)]
pub struct Approval {
    /// Polls answered `authorization_pending` before the outcome.
    pub pending_polls: u32,
    /// Answer `slow_down` on this poll number (it counts as one of the pending polls).
    pub slow_down_at: Option<u32>,
    /// 400 or 429: the service has been seen to use both for `slow_down`.
    pub slow_down_status: u16,
    pub outcome: Outcome,
    /// Device code lifetime, `expires_in` of the device-code response.
    pub expires_in: u64,
    /// `interval` of the device-code response; None omits the field.
    pub interval: Option<u64>,
}

impl Default for Approval {
    fn default() -> Self {
        Approval {
            pending_polls: 0,
            slow_down_at: None,
            slow_down_status: 400,
            outcome: Outcome::Approve {
                email: None,
                expires_in: 3600,
                resource_url: None,
            },
            expires_in: 300,
            interval: Some(0),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Outcome {
    /// Issue a new account. `email` goes into an unsigned JWT `id_token`.
    Approve {
        email: Option<String>,
        expires_in: u64,
        resource_url: Option<String>,
    },
    /// 400 `access_denied`.
    Deny,
    /// 400 `expired_token`.
    Expire,
    /// `authorization_pending` forever.
    Never,
}

/// A misbehaviour of the OAuth endpoints (`/api/v1/oauth2/*`).
#[derive(Clone, Debug)]
pub enum Fault {
    /// This status with a short text body.
    Status(u16),
    /// 200 with an HTML page.
    Html,
    /// 200 `application/json` that is not JSON.
    Garbage,
    /// 200 `{"token_type":"Bearer"}`.
    NoAccessToken,
    /// 200 with a body over 10 MiB.
    Huge,
    /// Close the connection without answering.
    Reset,
    /// Never answer (until the mock drops), so the client times out.
    Hang,
    /// Answer normally after this delay.
    Delay(Duration),
}

/// A scripted answer of the chat API for one request of one account.
#[derive(Clone, Debug)]
pub enum ApiReply {
    /// The normal answer (counts against the quota).
    Ok,
    /// 429 with a generic rate-limit body and this `Retry-After` value, if any.
    RateLimited { retry_after: Option<String> },
    /// 429 with the `insufficient_quota` body.
    QuotaExceeded,
    /// 401 `invalid_api_key`.
    Unauthorized,
    /// Anything else, e.g. 403 with the text `Free allocated quota exceeded.`.
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
}

/// How a key's 429 says when to come back: the header styles of OpenAI-compatible APIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetHint {
    /// No hint at all.
    None,
    /// `Retry-After: <seconds until the window resets>`.
    RetryAfter,
    /// `x-ratelimit-reset-requests: 6m0s` (a Go duration string, as OpenAI sends it).
    ResetRequests,
    /// `x-ratelimit-reset-tokens: 6m0s`.
    ResetTokens,
    /// `X-RateLimit-Reset: <Unix seconds>`.
    ResetEpochSeconds,
    /// `X-RateLimit-Reset: <Unix milliseconds>`.
    ResetEpochMs,
}

/// An API key the mock takes ([`Mock::add_key`]).
#[derive(Clone, Debug)]
pub struct KeySpec {
    /// Requests answered 200 per window; `None`: no limit.
    pub quota: Option<u32>,
    /// The quota window; it starts with the window's first request.
    pub window: Duration,
    /// How a 429 says when the window resets.
    pub hint: ResetHint,
    /// The 429 carries the `insufficient_quota` body instead of a rate-limit one.
    pub quota_body: bool,
}

impl Default for KeySpec {
    fn default() -> Self {
        KeySpec {
            quota: None,
            window: Duration::from_secs(3600),
            hint: ResetHint::RetryAfter,
            quota_body: false,
        }
    }
}

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Without the query string.
    pub path: String,
    pub query: String,
    /// Names as sent; use [`Request::header`] to look up case-insensitively.
    pub headers: Vec<(String, String)>,
    /// Decoded `application/x-www-form-urlencoded` fields, empty for other bodies.
    pub form: Vec<(String, String)>,
    pub body: String,
    pub at: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_refresh(&self) -> bool {
        self.path == "/api/v1/oauth2/token" && self.field("grant_type") == Some("refresh_token")
    }

    pub fn is_device_poll(&self) -> bool {
        self.path == "/api/v1/oauth2/token" && self.field("grant_type") == Some(DEVICE_GRANT)
    }
}

/// An account the mock issued (device flow) or was given ([`Mock::add_account`]).
#[derive(Clone, Debug)]
pub struct Issued {
    pub account: u64,
    pub access_token: String,
    pub refresh_token: String,
    pub email: Option<String>,
}

/// Everything the mock recorded; the public fields are what tests may wait on.
#[derive(Debug)]
pub struct State {
    pub requests: Vec<Request>,
    /// Arrival time of every device-code token poll, to check the interval.
    pub polls: Vec<Instant>,
    pub issued: Vec<Issued>,
    /// Refresh requests per refresh token that reached the refresh handler (not faulted).
    pub refresh_started: HashMap<String, u32>,
    pub refresh_finished: HashMap<String, u32>,
    pub max_concurrent_same_refresh: u32,
    /// Refresh requests answered 400 (dead, unknown or wrong client).
    pub bad_refreshes: u32,
    /// Chat and messages requests answered 200, per account (a key is an account too).
    pub api_ok: HashMap<u64, u32>,
    /// Chat requests answered 429 by the throttle ([`Mock::set_throttle_per_minute`]).
    pub api_throttled: u32,
    /// Chat requests answered 429 because the account's daily quota was spent.
    pub api_quota_exceeded: u32,
    /// Chat requests answered 401 for an access token the mock issued that had expired.
    pub api_expired_token: u32,
    /// Chat requests answered 401 for an access token the mock never issued (or none).
    pub api_unknown_token: u32,
    /// Refresh requests answered 200, per account.
    pub refresh_ok: HashMap<u64, u32>,
    /// Refresh requests with a token the mock issued and a rotation already spent: a refresh
    /// token sent twice (part of `bad_refreshes`).
    pub spent_refreshes: u32,
    /// When the measured run began (`POST /__start`), for `GET /__stats`.
    pub started: Option<Instant>,

    client_id: String,
    rotate_refresh: bool,
    always_return_refresh: bool,
    refresh_resource_url: Option<String>,
    refresh_expires_in: u64,
    refresh_delay: Duration,
    refresh_tweak: Vec<(String, Option<Value>)>,
    echo_dead_refresh: bool,
    /// Seconds the `Date` header of every answer is ahead of the real clock.
    date_skew_secs: i64,
    quota: Option<u32>,
    quota_for: HashMap<u64, u32>,
    throttle_per_minute: Option<u32>,
    /// Times of the 200 answers of the last minute, per account, for the throttle.
    api_window: HashMap<u64, VecDeque<Instant>>,
    /// Counters of a driver outside the mock (the simulated Qwen CLI), in `GET /__stats`.
    extra_stats: serde_json::Map<String, Value>,
    drivers_stop: bool,
    approvals: VecDeque<Approval>,
    sessions: HashMap<String, Session>,
    refresh_tokens: HashMap<String, RefreshEntry>,
    access_tokens: HashMap<String, AccessEntry>,
    api_scripts: HashMap<u64, VecDeque<ApiReply>>,
    keys: HashMap<String, KeyEntry>,
    /// A header (name, value prefix) every request made with a key must carry.
    key_required_header: Option<(String, String)>,
    echo_invalid_key: bool,
    faults: VecDeque<Fault>,
    sticky_fault: Option<Fault>,
    held: HashSet<String>,
    in_flight: HashMap<String, u32>,
    next_account: u64,
    seq: u64,
    shutdown: bool,
    conns: HashMap<u64, TcpStream>,
    base_url: String,
}

impl State {
    pub fn started(&self, refresh_token: &str) -> u32 {
        self.refresh_started
            .get(refresh_token)
            .copied()
            .unwrap_or(0)
    }

    pub fn finished(&self, refresh_token: &str) -> u32 {
        self.refresh_finished
            .get(refresh_token)
            .copied()
            .unwrap_or(0)
    }

    pub fn count_refreshes(&self) -> usize {
        self.requests.iter().filter(|r| r.is_refresh()).count()
    }

    pub fn count_path(&self, path: &str) -> usize {
        self.requests.iter().filter(|r| r.path == path).count()
    }

    /// The daily quota of an account: its own, else the one of every account.
    pub fn quota_of(&self, account: u64) -> Option<u32> {
        self.quota_for.get(&account).copied().or(self.quota)
    }

    /// What `GET /__stats` answers: the counters a long run (scripts/soak) reports, with each
    /// account's quota and throttle state, and the counters added by [`Mock::add_stat`].
    pub fn stats(&self) -> Value {
        let now = Instant::now();
        let accounts: Vec<Value> = (1..=self.next_account)
            .map(|account| {
                let ok = self.api_ok.get(&account).copied().unwrap_or(0);
                let quota = self.quota_of(account);
                let last_minute = self.api_window.get(&account).map_or(0, |w| {
                    w.iter()
                        .filter(|&&t| now.duration_since(t) < THROTTLE_WINDOW)
                        .count()
                });
                json!({
                    "account": account,
                    "api_ok": ok,
                    "quota": quota,
                    "quota_left": quota.map(|q| q.saturating_sub(ok)),
                    "api_ok_last_minute": last_minute,
                    "refreshes": self.refresh_ok.get(&account).copied().unwrap_or(0),
                })
            })
            .collect();
        let quota_left_any = (1..=self.next_account).any(|a| {
            self.quota_of(a)
                .is_none_or(|q| self.api_ok.get(&a).copied().unwrap_or(0) < q)
        });
        let mut v = json!({
            "elapsed_seconds": self.started.map(|t| now.duration_since(t).as_secs_f64()),
            "chat_ok": self.api_ok.values().map(|&n| u64::from(n)).sum::<u64>(),
            "chat_throttled": self.api_throttled,
            "chat_quota_exceeded": self.api_quota_exceeded,
            "chat_expired_token": self.api_expired_token,
            "chat_unknown_token": self.api_unknown_token,
            "refresh_requests": self.refresh_started.values().map(|&n| u64::from(n)).sum::<u64>(),
            "refresh_ok": self.refresh_ok.values().map(|&n| u64::from(n)).sum::<u64>(),
            "bad_refreshes": self.bad_refreshes,
            "spent_refreshes": self.spent_refreshes,
            "max_concurrent_same_refresh": self.max_concurrent_same_refresh,
            "quota_left_any": quota_left_any,
            "accounts": accounts,
        });
        if let Value::Object(m) = &mut v {
            for (k, x) in &self.extra_stats {
                m.insert(k.clone(), x.clone());
            }
        }
        v
    }

    fn new(base_url: String) -> State {
        State {
            requests: Vec::new(),
            polls: Vec::new(),
            issued: Vec::new(),
            refresh_started: HashMap::new(),
            refresh_finished: HashMap::new(),
            max_concurrent_same_refresh: 0,
            bad_refreshes: 0,
            api_ok: HashMap::new(),
            api_throttled: 0,
            api_quota_exceeded: 0,
            api_expired_token: 0,
            api_unknown_token: 0,
            refresh_ok: HashMap::new(),
            spent_refreshes: 0,
            started: None,
            client_id: CLIENT_ID.to_string(),
            rotate_refresh: false,
            always_return_refresh: false,
            refresh_resource_url: None,
            refresh_expires_in: 3600,
            refresh_delay: Duration::ZERO,
            refresh_tweak: Vec::new(),
            echo_dead_refresh: false,
            date_skew_secs: 0,
            quota: None,
            quota_for: HashMap::new(),
            throttle_per_minute: None,
            api_window: HashMap::new(),
            extra_stats: serde_json::Map::new(),
            drivers_stop: false,
            approvals: VecDeque::new(),
            sessions: HashMap::new(),
            refresh_tokens: HashMap::new(),
            access_tokens: HashMap::new(),
            api_scripts: HashMap::new(),
            keys: HashMap::new(),
            key_required_header: None,
            echo_invalid_key: false,
            faults: VecDeque::new(),
            sticky_fault: None,
            held: HashSet::new(),
            in_flight: HashMap::new(),
            next_account: 0,
            seq: 0,
            shutdown: false,
            conns: HashMap::new(),
            base_url,
        }
    }

    /// Unique and unguessable enough for tests, without a rand dependency.
    fn rand_hex(&mut self) -> String {
        self.seq += 1;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let seed = format!("{}:{}:{}", self.seq, nanos, std::process::id());
        let digest = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes());
        digest.as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn new_access(&mut self, account: u64, expires_in: u64) -> String {
        let token = format!("at-{account}-{}", self.rand_hex());
        let expires_at = Instant::now() + Duration::from_secs(expires_in);
        self.access_tokens.insert(
            token.clone(),
            AccessEntry {
                account,
                expires_at,
            },
        );
        token
    }

    fn new_refresh(&mut self, account: u64) -> String {
        let token = format!("rt-{account}-{}", self.rand_hex());
        self.refresh_tokens.insert(
            token.clone(),
            RefreshEntry {
                account,
                live: true,
            },
        );
        token
    }

    fn new_account(&mut self, email: Option<String>, expires_in: u64) -> Issued {
        self.next_account += 1;
        let account = self.next_account;
        let issued = Issued {
            account,
            access_token: self.new_access(account, expires_in),
            refresh_token: self.new_refresh(account),
            email,
        };
        self.issued.push(issued.clone());
        issued
    }
}

#[derive(Debug)]
struct Session {
    challenge: String,
    approval: Approval,
    polls: u32,
    done: bool,
    deadline: Instant,
}

#[derive(Debug)]
struct RefreshEntry {
    account: u64,
    live: bool,
}

#[derive(Debug)]
struct AccessEntry {
    account: u64,
    expires_at: Instant,
}

#[derive(Debug)]
struct KeyEntry {
    account: u64,
    spec: KeySpec,
    live: bool,
    window_start: Option<Instant>,
    used: u32,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

/// Locks even after a panicking test closure poisoned the mutex, so Drop still works.
fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.0.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running mock server; dropping it stops it.
pub struct Mock {
    shared: Shared,
    addr: SocketAddr,
    base_url: String,
    accept: Option<JoinHandle<()>>,
}

impl Mock {
    pub fn start() -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").expect("mock: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("mock: local_addr");
        let base_url = format!("http://{addr}");
        let shared: Shared = Arc::new((Mutex::new(State::new(base_url.clone())), Condvar::new()));
        let for_thread = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("mock-accept".into())
            .spawn(move || accept_loop(listener, for_thread))
            .expect("mock: spawn accept thread");
        Mock {
            shared,
            addr,
            base_url,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT`; also the `resource_url` to point a client's API calls here.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// Runs `f` on the state under the lock and notifies waiters.
    fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut lock(&self.shared));
        self.shared.1.notify_all();
        r
    }

    /// Reads the state under the lock.
    pub fn state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&lock(&self.shared))
    }

    /// Waits until `f` holds; false on timeout.
    pub fn wait_until(&self, timeout: Duration, mut f: impl FnMut(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.shared);
        loop {
            if f(&st) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = match self.shared.1.wait_timeout(st, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    // --- device flow ---

    /// A default approval that approves at once, with `email` and `resource_url` = this mock.
    pub fn approval(&self, email: Option<&str>) -> Approval {
        Approval {
            outcome: Outcome::Approve {
                email: email.map(str::to_string),
                expires_in: 3600,
                resource_url: Some(self.base_url()),
            },
            ..Approval::default()
        }
    }

    /// Scripts the next device session. With none queued, sessions approve at once with no
    /// email and `resource_url` = this mock.
    pub fn push_approval(&self, approval: Approval) {
        self.update(|s| s.approvals.push_back(approval));
    }

    pub fn set_client_id(&self, client_id: &str) {
        self.update(|s| s.client_id = client_id.to_string());
    }

    // --- refresh ---

    pub fn set_rotate_refresh(&self, on: bool) {
        self.update(|s| s.rotate_refresh = on);
    }

    /// Return the (unchanged) refresh token even without rotation.
    pub fn set_always_return_refresh(&self, on: bool) {
        self.update(|s| s.always_return_refresh = on);
    }

    pub fn set_refresh_resource_url(&self, url: Option<&str>) {
        self.update(|s| s.refresh_resource_url = url.map(str::to_string));
    }

    /// Lifetime of access tokens issued by refresh (default 3600 s).
    pub fn set_refresh_expires_in(&self, secs: u64) {
        self.update(|s| s.refresh_expires_in = secs);
    }

    /// Keeps every refresh in flight this long, to widen race windows.
    pub fn set_refresh_delay(&self, delay: Duration) {
        self.update(|s| s.refresh_delay = delay);
    }

    /// Changes each successful refresh answer: a field set to a value, or removed (`None`).
    /// The answer is still real: its new tokens are live.
    pub fn set_refresh_tweak(&self, tweak: &[(&str, Option<Value>)]) {
        let tweak = tweak.iter().map(|(k, v)| (k.to_string(), v.clone()));
        self.update(|s| s.refresh_tweak = tweak.collect());
    }

    /// A dead refresh token's error_description quotes the token, as a careless server might.
    /// Every answer's `Date` header runs this many seconds ahead (behind when negative).
    pub fn set_date_skew(&self, secs: i64) {
        self.update(|s| s.date_skew_secs = secs);
    }

    pub fn set_echo_dead_refresh(&self, on: bool) {
        self.update(|s| s.echo_dead_refresh = on);
    }

    /// Blocks refreshes with this token (after `refresh_started` counts them) until released.
    pub fn hold_refresh(&self, refresh_token: &str) {
        self.update(|s| s.held.insert(refresh_token.to_string()));
    }

    pub fn release_refresh(&self, refresh_token: &str) {
        self.update(|s| s.held.remove(refresh_token));
    }

    // --- accounts ---

    /// Registers a live account without the device flow; returns its account number.
    /// The access token lives for the refresh lifetime (default 3600 s).
    pub fn add_account(&self, refresh_token: &str, access_token: &str) -> u64 {
        self.update(|s| {
            s.next_account += 1;
            let account = s.next_account;
            let expires_at = Instant::now() + Duration::from_secs(s.refresh_expires_in);
            s.refresh_tokens.insert(
                refresh_token.to_string(),
                RefreshEntry {
                    account,
                    live: true,
                },
            );
            s.access_tokens.insert(
                access_token.to_string(),
                AccessEntry {
                    account,
                    expires_at,
                },
            );
            s.issued.push(Issued {
                account,
                access_token: access_token.to_string(),
                refresh_token: refresh_token.to_string(),
                email: None,
            });
            account
        })
    }

    /// Makes the API answer 401 for this access token from now on.
    pub fn expire_access(&self, access_token: &str) {
        self.update(|s| {
            if let Some(e) = s.access_tokens.get_mut(access_token) {
                e.expires_at = Instant::now();
            }
        });
    }

    /// Kills a refresh token, as if revoked on the server.
    pub fn revoke_refresh(&self, refresh_token: &str) {
        self.update(|s| {
            if let Some(e) = s.refresh_tokens.get_mut(refresh_token) {
                e.live = false;
            }
        });
    }

    /// The account number of an access or refresh token the mock knows.
    pub fn account_of(&self, token: &str) -> Option<u64> {
        self.state(|s| {
            s.access_tokens
                .get(token)
                .map(|e| e.account)
                .or_else(|| s.refresh_tokens.get(token).map(|e| e.account))
        })
    }

    pub fn is_live_refresh(&self, refresh_token: &str) -> bool {
        self.state(|s| s.refresh_tokens.get(refresh_token).is_some_and(|e| e.live))
    }

    // --- API ---

    /// Each account answers 200 this many times, then 429 `insufficient_quota`.
    pub fn set_quota_per_account(&self, quota: Option<u32>) {
        self.update(|s| s.quota = quota);
    }

    /// This account answers 200 this many times, then 429 `insufficient_quota`, whatever
    /// [`Mock::set_quota_per_account`] says.
    pub fn set_quota_for(&self, account: u64, quota: u32) {
        self.update(|s| s.quota_for.insert(account, quota));
    }

    /// At most this many 200 answers per account in any 60 s; beyond, 429 with the generic
    /// rate-limit body and a `Retry-After` (whole seconds) until the oldest leaves the window.
    pub fn set_throttle_per_minute(&self, limit: Option<u32>) {
        self.update(|s| s.throttle_per_minute = limit);
    }

    /// Queues a scripted answer for the next chat request of this account.
    pub fn api_script_for(&self, account: u64, reply: ApiReply) {
        self.update(|s| s.api_scripts.entry(account).or_default().push_back(reply));
    }

    // --- API keys ---

    /// Registers an API key the API takes with no OAuth behind it; returns its account
    /// number (shared with OAuth accounts: `api_ok` and `api_script_for` use it).
    pub fn add_key(&self, key: &str, spec: KeySpec) -> u64 {
        self.update(|s| {
            s.next_account += 1;
            let account = s.next_account;
            s.keys.insert(
                key.to_string(),
                KeyEntry {
                    account,
                    spec,
                    live: true,
                    window_start: None,
                    used: 0,
                },
            );
            account
        })
    }

    /// The API refuses this key from now on (401 `invalid_api_key`), as after its deletion.
    pub fn revoke_key(&self, key: &str) {
        self.update(|s| {
            if let Some(e) = s.keys.get_mut(key) {
                e.live = false;
            }
        });
    }

    /// Every request made with a key must carry header `name` with a value starting with
    /// `prefix`, else 403 [`NOT_AN_AGENT_BODY`] (a plan for coding agents only).
    pub fn require_header_for_keys(&self, header: Option<(&str, &str)>) {
        self.update(|s| {
            s.key_required_header = header.map(|(n, p)| (n.to_string(), p.to_string()));
        });
    }

    /// A refused key's 401 quotes the key, as OpenAI's "Incorrect API key provided: ..." does.
    pub fn set_echo_invalid_key(&self, on: bool) {
        self.update(|s| s.echo_invalid_key = on);
    }

    /// Requests answered 200 with this key, over all windows.
    pub fn key_ok(&self, key: &str) -> u32 {
        self.state(|s| {
            s.keys
                .get(key)
                .and_then(|e| s.api_ok.get(&e.account))
                .copied()
                .unwrap_or(0)
        })
    }

    // --- faults ---

    /// Queues a fault for the next `/api/v1/oauth2/*` request.
    pub fn push_fault(&self, fault: Fault) {
        self.update(|s| s.faults.push_back(fault));
    }

    /// A fault for every `/api/v1/oauth2/*` request (after queued ones) until cleared.
    pub fn set_sticky_fault(&self, fault: Option<Fault>) {
        self.update(|s| s.sticky_fault = fault);
    }

    // --- log ---

    pub fn requests(&self) -> Vec<Request> {
        self.state(|s| s.requests.clone())
    }

    /// Refresh requests received, faulted ones included.
    pub fn count_refreshes(&self) -> usize {
        self.state(State::count_refreshes)
    }

    pub fn count_path(&self, path: &str) -> usize {
        self.state(|s| s.count_path(path))
    }

    pub fn polls(&self) -> Vec<Instant> {
        self.state(|s| s.polls.clone())
    }

    pub fn bad_refreshes(&self) -> u32 {
        self.state(|s| s.bad_refreshes)
    }

    pub fn max_concurrent_same_refresh(&self) -> u32 {
        self.state(|s| s.max_concurrent_same_refresh)
    }

    /// Adds `n` to a counter of `GET /__stats` kept for a driver outside the mock.
    pub fn add_stat(&self, key: &str, n: u64) {
        self.update(|s| {
            let old = s.extra_stats.get(key).and_then(Value::as_u64).unwrap_or(0);
            s.extra_stats
                .insert(key.to_string(), json!(old.saturating_add(n)));
        });
    }

    /// Sets a value of `GET /__stats` kept for a driver outside the mock.
    pub fn set_stat(&self, key: &str, value: Value) {
        self.update(|s| {
            s.extra_stats.insert(key.to_string(), value);
        });
    }

    /// Waits until the measured run began (`POST /__start`) or the mock shut down; true
    /// when it began.
    pub fn wait_started(&self) -> bool {
        let mut st = lock(&self.shared);
        loop {
            if st.started.is_some() {
                return true;
            }
            if st.drivers_stop {
                return false;
            }
            st = self.shared.1.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Marks the mock as shutting down without dropping it: wakes [`Mock::wait_started`]
    /// and [`Mock::sleep`] so that driver threads end.
    pub fn stop_drivers(&self) {
        self.update(|s| s.drivers_stop = true);
    }

    /// Sleeps `d`, or less when [`Mock::stop_drivers`] is called; false then.
    pub fn sleep(&self, d: Duration) -> bool {
        !self.wait_until(d, |s| s.drivers_stop)
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.update(|s| {
            s.shutdown = true;
            s.held.clear();
            // Unblocks connection threads stuck reading from or writing to a client.
            for (_, conn) in s.conns.drain() {
                let _ = conn.shutdown(Shutdown::Both);
            }
        });
        // Wakes the accept thread, which then sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(handle) = self.accept.take() {
            let _ = handle.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Shared) {
    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id = 0u64;
    loop {
        let accepted = listener.accept();
        // Registering under the lock that Drop takes means no connection escapes shutdown.
        let mut st = lock(&shared);
        if st.shutdown {
            break;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(_) => continue,
        };
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        next_id += 1;
        let id = next_id;
        st.conns.insert(id, clone);
        drop(st);
        handles.retain(|h| !h.is_finished());
        let shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name("mock-conn".into())
            .spawn(move || serve(stream, &shared, id));
        if let Ok(h) = spawned {
            handles.push(h);
        }
    }
    for h in handles {
        let _ = h.join();
    }
}

struct Response {
    status: u16,
    content_type: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn json(status: u16, body: &Value) -> Response {
        Response::raw(status, "application/json", body.to_string())
    }

    fn raw(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    fn error(status: u16, error: &str) -> Response {
        Response::json(status, &json!({ "error": error }))
    }
}

fn serve(stream: TcpStream, shared: &Shared, id: u64) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    if let Ok(Some(req)) = read_request(&stream) {
        {
            let mut st = lock(shared);
            st.requests.push(req.clone());
        }
        shared.1.notify_all();
        if let Some(mut resp) = route(shared, &req) {
            let skew = lock(shared).date_skew_secs;
            resp.headers.push(("Date".into(), http_date(skew)));
            let _ = write_response(&stream, &resp);
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    lock(shared).conns.remove(&id);
}

fn read_request(stream: &TcpStream) -> io::Result<Option<Request>> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if read_line(&mut reader, &mut line)? == 0 {
        return Ok(None);
    }
    let at = Instant::now();
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.clone(), String::new()),
    };
    let mut headers = Vec::new();
    let mut head_len = line.len();
    loop {
        line.clear();
        let n = read_line(&mut reader, &mut line)?;
        head_len += n;
        if n == 0 || head_len > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad head"));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    if header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        let mut w = stream;
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let chunked =
        header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked(&mut reader)?
    } else {
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if len > MAX_BODY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        body
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    let is_form = header("content-type").is_some_and(|v| {
        v.to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    let form = if is_form {
        parse_form(&body)
    } else {
        Vec::new()
    };
    Ok(Some(Request {
        method,
        path,
        query,
        headers,
        form,
        body,
        at,
    }))
}

fn read_line(reader: &mut impl BufRead, line: &mut String) -> io::Result<usize> {
    let mut limited = reader.take(MAX_HEAD as u64);
    limited.read_line(line)
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad chunk");
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        if read_line(reader, &mut line)? == 0 {
            return Err(bad());
        }
        let size_hex = line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad())?;
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                line.clear();
                if read_line(reader, &mut line)? == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(bad());
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        line.clear();
        read_line(reader, &mut line)?;
    }
}

pub fn parse_form(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// base64url without padding (RFC 4648 §5), as PKCE and JWTs use it.
pub fn b64url(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// RFC 7636 §4.2: S256 challenge of a verifier.
pub fn pkce_challenge(verifier: &str) -> String {
    b64url(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref())
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Now plus `skew_secs` as an IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(skew_secs: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let t = now + skew_secs;
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn write_response(stream: &TcpStream, resp: &Response) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut w = stream;
    w.write_all(head.as_bytes())?;
    w.write_all(&resp.body)?;
    w.flush()
}

/// Waits until shutdown or `deadline`; true when shutting down.
fn wait_shutdown(shared: &Shared, deadline: Option<Instant>) -> bool {
    let mut st = lock(shared);
    loop {
        if st.shutdown {
            return true;
        }
        match deadline {
            None => st = shared.1.wait(st).unwrap_or_else(|e| e.into_inner()),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return false;
                }
                st = match shared.1.wait_timeout(st, d - now) {
                    Ok((g, _)) => g,
                    Err(e) => e.into_inner().0,
                };
            }
        }
    }
}

/// None: close without answering.
fn route(shared: &Shared, req: &Request) -> Option<Response> {
    if req.path.starts_with("/api/v1/oauth2/") {
        let fault = {
            let mut st = lock(shared);
            st.faults.pop_front().or_else(|| st.sticky_fault.clone())
        };
        shared.1.notify_all();
        if let Some(fault) = fault {
            match fault {
                Fault::Status(status) => {
                    return Some(Response::raw(status, "text/plain", format!("upstream error {status}")))
                }
                Fault::Html => {
                    return Some(Response::raw(
                        200,
                        "text/html; charset=utf-8",
                        "<!DOCTYPE html><html><head><title>Qwen</title></head><body>Please enable JavaScript.</body></html>",
                    ))
                }
                Fault::Garbage => return Some(Response::raw(200, "application/json", "{not json")),
                Fault::NoAccessToken => {
                    return Some(Response::json(200, &json!({ "token_type": "Bearer" })))
                }
                Fault::Huge => {
                    let mut body = Vec::with_capacity(HUGE_LEN + 32);
                    body.extend_from_slice(b"{\"access_token\":\"");
                    body.resize(body.len() + HUGE_LEN, b'a');
                    body.extend_from_slice(b"\",\"token_type\":\"Bearer\"}");
                    return Some(Response::raw(200, "application/json", body));
                }
                Fault::Reset => return None,
                Fault::Hang => {
                    wait_shutdown(shared, None);
                    return None;
                }
                Fault::Delay(d) => {
                    if wait_shutdown(shared, Some(Instant::now() + d)) {
                        return None;
                    }
                }
            }
        }
    }
    let resp = match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/api/v1/oauth2/device/code") => device_code(shared, req),
        ("POST", "/api/v1/oauth2/token") => match req.field("grant_type") {
            Some(DEVICE_GRANT) => device_poll(shared, req),
            Some("refresh_token") => refresh(shared, req)?,
            _ => Response::error(400, "unsupported_grant_type"),
        },
        ("POST", "/v1/chat/completions") => chat(shared, req),
        ("GET", "/__stats") => Response::json(200, &lock(shared).stats()),
        ("POST", "/__start") => {
            lock(shared).started.get_or_insert_with(Instant::now);
            shared.1.notify_all();
            Response::json(200, &json!({}))
        }
        ("POST", "/v1/responses") => responses(shared, req),
        ("POST", "/v1/messages") => messages(shared, req),
        ("GET", "/v1/models") => models(shared, req),
        ("GET", "/authorize") => Response::raw(
            200,
            "text/html; charset=utf-8",
            "<html><body>mock authorize page</body></html>",
        ),
        _ => Response::json(404, &json!({ "error": "not_found" })),
    };
    Some(resp)
}

/// RFC 8628 §3.1-3.2 with RFC 7636 §4.3 parameters.
fn device_code(shared: &Shared, req: &Request) -> Response {
    let mut st = lock(shared);
    if req.field("client_id") != Some(st.client_id.as_str())
        || req.field("code_challenge_method") != Some("S256")
        || req.field("code_challenge").is_none_or(str::is_empty)
    {
        return Response::error(400, "invalid_request");
    }
    let approval = match st.approvals.pop_front() {
        Some(a) => a,
        None => Approval {
            outcome: Outcome::Approve {
                email: None,
                expires_in: 3600,
                resource_url: Some(st.base_url.clone()),
            },
            ..Approval::default()
        },
    };
    let device_code = format!("dc-{}", st.rand_hex());
    let hex = st.rand_hex().to_ascii_uppercase();
    let user_code = format!("{}-{}", &hex[0..4], &hex[4..8]);
    let mut body = json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": format!("{}/authorize", st.base_url),
        "verification_uri_complete": format!("{}/authorize?user_code={user_code}", st.base_url),
        "expires_in": approval.expires_in,
    });
    if let Some(interval) = approval.interval {
        body["interval"] = json!(interval);
    }
    let session = Session {
        challenge: req.field("code_challenge").unwrap_or_default().to_string(),
        deadline: Instant::now() + Duration::from_secs(approval.expires_in),
        approval,
        polls: 0,
        done: false,
    };
    st.sessions.insert(device_code, session);
    drop(st);
    shared.1.notify_all();
    Response::json(200, &body)
}

/// RFC 8628 §3.4-3.5 token polling.
fn device_poll(shared: &Shared, req: &Request) -> Response {
    let mut st = lock(shared);
    st.polls.push(req.at);
    let resp = device_poll_locked(&mut st, req);
    drop(st);
    shared.1.notify_all();
    resp
}

fn device_poll_locked(st: &mut State, req: &Request) -> Response {
    if req.field("client_id") != Some(st.client_id.as_str()) {
        return Response::error(400, "invalid_client");
    }
    let code = req.field("device_code").unwrap_or_default();
    let Some(sess) = st.sessions.get_mut(code) else {
        return Response::error(400, "invalid_grant");
    };
    if sess.done {
        return Response::error(400, "invalid_grant");
    }
    if Instant::now() >= sess.deadline {
        return Response::error(400, "expired_token");
    }
    sess.polls += 1;
    let poll = sess.polls;
    let a = sess.approval.clone();
    if a.slow_down_at == Some(poll) {
        return Response::error(a.slow_down_status, "slow_down");
    }
    if poll <= a.pending_polls {
        return Response::error(400, "authorization_pending");
    }
    let (email, expires_in, resource_url) = match a.outcome {
        Outcome::Never => return Response::error(400, "authorization_pending"),
        Outcome::Deny => return Response::error(400, "access_denied"),
        Outcome::Expire => return Response::error(400, "expired_token"),
        Outcome::Approve {
            email,
            expires_in,
            resource_url,
        } => (email, expires_in, resource_url),
    };
    let verifier = req.field("code_verifier").unwrap_or_default();
    if pkce_challenge(verifier) != sess.challenge {
        return Response::json(
            400,
            &json!({"error": "invalid_grant", "error_description": "PKCE verification failed"}),
        );
    }
    sess.done = true;
    let issued = st.new_account(email.clone(), expires_in);
    let mut body = json!({
        "access_token": issued.access_token,
        "refresh_token": issued.refresh_token,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "scope": SCOPE,
    });
    if let Some(url) = resource_url {
        body["resource_url"] = json!(url);
    }
    if let Some(email) = email {
        body["id_token"] = json!(unsigned_jwt(issued.account, &email));
    }
    Response::json(200, &body)
}

fn unsigned_jwt(account: u64, email: &str) -> String {
    let header = json!({"alg": "none", "typ": "JWT"}).to_string();
    let payload = json!({
        "iss": "https://chat.qwen.ai",
        "sub": format!("user-{account}"),
        "aud": CLIENT_ID,
        "email": email,
    })
    .to_string();
    format!(
        "{}.{}.{}",
        b64url(header.as_bytes()),
        b64url(payload.as_bytes()),
        b64url(b"mock-signature")
    )
}

/// RFC 6749 §6. None when the mock shut down while the refresh was held.
fn refresh(shared: &Shared, req: &Request) -> Option<Response> {
    let token = req.field("refresh_token").unwrap_or_default().to_string();
    let mut st = lock(shared);
    *st.refresh_started.entry(token.clone()).or_default() += 1;
    let in_flight = st.in_flight.entry(token.clone()).or_default();
    *in_flight += 1;
    let now_in_flight = *in_flight;
    st.max_concurrent_same_refresh = st.max_concurrent_same_refresh.max(now_in_flight);
    shared.1.notify_all();

    let delay_end = Instant::now() + st.refresh_delay;
    loop {
        if st.shutdown {
            break;
        }
        let now = Instant::now();
        st = if st.held.contains(&token) {
            shared.1.wait(st).unwrap_or_else(|e| e.into_inner())
        } else if now < delay_end {
            match shared.1.wait_timeout(st, delay_end - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            }
        } else {
            break;
        };
    }
    let resp = refresh_locked(&mut st, req, &token);
    if let Some(n) = st.in_flight.get_mut(&token) {
        *n = n.saturating_sub(1);
    }
    *st.refresh_finished.entry(token).or_default() += 1;
    let shutdown = st.shutdown;
    drop(st);
    shared.1.notify_all();
    (!shutdown).then_some(resp)
}

fn refresh_locked(st: &mut State, req: &Request, token: &str) -> Response {
    let account = match st.refresh_tokens.get(token) {
        Some(e) if e.live && req.field("client_id") == Some(st.client_id.as_str()) => e.account,
        known => {
            st.bad_refreshes += 1;
            if known.is_some() && req.field("client_id") == Some(st.client_id.as_str()) {
                st.spent_refreshes += 1;
            }
            let description = match st.echo_dead_refresh {
                true => format!("{DEAD_REFRESH}: {token}"),
                false => DEAD_REFRESH.to_string(),
            };
            return Response::json(
                400,
                &json!({"error": "invalid_request", "error_description": description}),
            );
        }
    };
    let expires_in = st.refresh_expires_in;
    *st.refresh_ok.entry(account).or_default() += 1;
    let access = st.new_access(account, expires_in);
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": expires_in,
    });
    if st.rotate_refresh {
        if let Some(e) = st.refresh_tokens.get_mut(token) {
            e.live = false;
        }
        body["refresh_token"] = json!(st.new_refresh(account));
    } else if st.always_return_refresh {
        body["refresh_token"] = json!(token);
    }
    if let Some(url) = &st.refresh_resource_url {
        body["resource_url"] = json!(url);
    }
    for (k, v) in &st.refresh_tweak {
        match (v, body.as_object_mut()) {
            (Some(v), _) => body[k.as_str()] = v.clone(),
            (None, Some(m)) => drop(m.remove(k)),
            (None, None) => {}
        }
    }
    Response::json(200, &body)
}

/// The Responses API (`POST /v1/responses`), which Codex CLI speaks: the chat endpoint's
/// answer (token check, scripted replies, quota) turned into the stream Codex reads
/// (codex-rs `codex-api/src/sse/responses.rs`): `response.created`, one
/// `response.output_text.delta`, `response.output_item.done` with the assistant message,
/// `response.completed`. An error answer is passed on as it is.
fn responses(shared: &Shared, req: &Request) -> Response {
    let as_chat = Request {
        body: "{}".into(),
        ..req.clone()
    };
    let chat = chat(shared, &as_chat);
    if chat.status != 200 {
        return chat;
    }
    let text = serde_json::from_slice::<Value>(&chat.body)
        .ok()
        .and_then(|v| {
            v["choices"][0]["message"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_default();
    let response = json!({"id": "resp-1", "object": "response", "model": "coder-model"});
    let message = json!({
        "type": "message",
        "id": "msg-1",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text}],
    });
    let events = [
        json!({"type": "response.created", "response": response}),
        json!({"type": "response.output_text.delta", "item_id": "msg-1", "delta": text}),
        json!({"type": "response.output_item.done", "item": message}),
        json!({"type": "response.completed", "response": response}),
    ];
    let body: String = events
        .iter()
        .map(|e| {
            format!(
                "event: {}\ndata: {e}\n\n",
                e["type"].as_str().unwrap_or_default()
            )
        })
        .collect();
    let mut r = Response::raw(200, "text/event-stream", body);
    r.headers.push(("Cache-Control".into(), "no-cache".into()));
    r
}

fn chat(shared: &Shared, req: &Request) -> Response {
    let mut st = lock(shared);
    let resp = chat_locked(&mut st, req);
    drop(st);
    shared.1.notify_all();
    resp
}

/// The wire format of an API's errors.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    OpenAi,
    Anthropic,
}

/// The credential of an API request: a bearer token, or Anthropic's `x-api-key`.
fn credential(req: &Request) -> &str {
    req.header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| req.header("x-api-key"))
        .unwrap_or_default()
        .trim()
}

fn api_error(api: Api, status: u16, openai_body: &str, kind: &str, message: &str) -> Response {
    match api {
        Api::OpenAi => Response::raw(status, "application/json", openai_body.to_string()),
        Api::Anthropic => Response::json(
            status,
            &json!({"type": "error", "error": {"type": kind, "message": message}}),
        ),
    }
}

/// The 401 for a key the API does not take (any more).
fn invalid_key(st: &State, api: Api, key: &str) -> Response {
    let message = match st.echo_invalid_key {
        true => format!("Incorrect API key provided: {key}"),
        false => "Incorrect API key provided.".to_string(),
    };
    match api {
        Api::OpenAi => Response::json(
            401,
            &json!({"error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}}),
        ),
        Api::Anthropic => Response::json(
            401,
            &json!({"type": "error", "error": {"type": "authentication_error", "message": message}}),
        ),
    }
}

/// `6m0s`, `1h2m3s`, `45s`, `250ms`: a Go duration string, as OpenAI's reset headers carry.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs() + u64::from(d.subsec_millis() > 0);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// The header that tells when a key's window resets, in the key's style.
fn reset_header(hint: ResetHint, left: Duration) -> Option<(String, String)> {
    let at = SystemTime::now() + left;
    let epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs_up = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    Some(match hint {
        ResetHint::None => return None,
        ResetHint::RetryAfter => ("Retry-After".into(), secs_up.to_string()),
        ResetHint::ResetRequests => ("x-ratelimit-reset-requests".into(), go_duration(left)),
        ResetHint::ResetTokens => ("x-ratelimit-reset-tokens".into(), go_duration(left)),
        ResetHint::ResetEpochSeconds => (
            "X-RateLimit-Reset".into(),
            (epoch.as_secs() + u64::from(epoch.subsec_nanos() > 0)).to_string(),
        ),
        ResetHint::ResetEpochMs => ("X-RateLimit-Reset".into(), epoch.as_millis().to_string()),
    })
}

/// Who may make a model request, and whether its quota allows it: the account that serves
/// it, or the answer refusing it. Counts the request when it passes.
fn gate(st: &mut State, req: &Request, api: Api) -> Result<u64, Response> {
    let token = credential(req).to_string();
    let unauthorized = || {
        api_error(
            api,
            401,
            EXPIRED_BODY,
            "authentication_error",
            "invalid x-api-key",
        )
    };
    let (account, key) = match st.access_tokens.get(&token) {
        Some(e) if e.expires_at > Instant::now() => (e.account, false),
        Some(_) => {
            st.api_expired_token += 1;
            return Err(unauthorized());
        }
        None => match st.keys.get(&token) {
            Some(e) if e.live => (e.account, true),
            Some(_) => return Err(invalid_key(st, api, &token)),
            None => {
                st.api_unknown_token += 1;
                return Err(unauthorized());
            }
        },
    };
    if key {
        if let Some((name, prefix)) = &st.key_required_header {
            if !req
                .header(name)
                .is_some_and(|v| v.starts_with(prefix.as_str()))
            {
                return Err(api_error(
                    api,
                    403,
                    NOT_AN_AGENT_BODY,
                    "permission_error",
                    "only available for coding agents",
                ));
            }
        }
    }
    let scripted = st
        .api_scripts
        .get_mut(&account)
        .and_then(VecDeque::pop_front);
    match scripted {
        None | Some(ApiReply::Ok) => {}
        Some(ApiReply::RateLimited { retry_after }) => {
            let mut r = Response::raw(429, "application/json", RATE_LIMIT_BODY);
            if let Some(v) = retry_after {
                r.headers.push(("Retry-After".into(), v));
            }
            return Err(r);
        }
        Some(ApiReply::QuotaExceeded) => {
            return Err(Response::raw(429, "application/json", QUOTA_BODY))
        }
        Some(ApiReply::Unauthorized) => return Err(unauthorized()),
        Some(ApiReply::Status {
            status,
            headers,
            body,
        }) => {
            let mut r = Response::raw(status, "application/json", body);
            r.headers = headers;
            return Err(r);
        }
    }
    let now = Instant::now();
    if let Some(limit) = st.throttle_per_minute {
        let window = st.api_window.entry(account).or_default();
        while window
            .front()
            .is_some_and(|&t| now.duration_since(t) >= THROTTLE_WINDOW)
        {
            window.pop_front();
        }
        if window.len() >= limit as usize {
            let free_at = window.front().map_or(now, |&t| t + THROTTLE_WINDOW);
            let wait = free_at.saturating_duration_since(now);
            let secs = (wait.as_millis().div_ceil(1000) as u64).max(1);
            st.api_throttled += 1;
            let mut r = Response::raw(429, "application/json", RATE_LIMIT_BODY);
            r.headers.push(("Retry-After".into(), secs.to_string()));
            return Err(r);
        }
    }
    if key {
        let Some(e) = st.keys.get_mut(&token) else {
            return Err(unauthorized());
        };
        let start = match e.window_start {
            Some(t) if now.duration_since(t) < e.spec.window => t,
            _ => {
                e.window_start = Some(now);
                e.used = 0;
                now
            }
        };
        if e.spec.quota.is_some_and(|q| e.used >= q) {
            let left = (start + e.spec.window).saturating_duration_since(now);
            let (body, kind) = match e.spec.quota_body {
                true => (QUOTA_BODY, "rate_limit_error"),
                false => (RATE_LIMIT_BODY, "rate_limit_error"),
            };
            let mut r = api_error(api, 429, body, kind, "rate limit exceeded for this key");
            r.headers.extend(reset_header(e.spec.hint, left));
            return Err(r);
        }
        e.used += 1;
    } else if st
        .quota_of(account)
        .is_some_and(|q| st.api_ok.get(&account).copied().unwrap_or(0) >= q)
    {
        st.api_quota_exceeded += 1;
        return Err(Response::raw(429, "application/json", QUOTA_BODY));
    }
    *st.api_ok.entry(account).or_default() += 1;
    if st.throttle_per_minute.is_some() {
        st.api_window.entry(account).or_default().push_back(now);
    }
    Ok(account)
}

fn chat_locked(st: &mut State, req: &Request) -> Response {
    let account = match gate(st, req, Api::OpenAi) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let content = format!("hello from account {account}");
    let stream = serde_json::from_str::<Value>(&req.body)
        .ok()
        .and_then(|v| v.get("stream").and_then(Value::as_bool))
        .unwrap_or(false);
    if !stream {
        return Response::json(
            200,
            &json!({
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": "coder-model",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }],
            }),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "model": "coder-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let body = format!(
        "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
        chunk(
            json!({"role": "assistant", "content": content}),
            Value::Null
        ),
        chunk(json!({}), json!("stop")),
    );
    let mut r = Response::raw(200, "text/event-stream", body);
    r.headers.push(("Cache-Control".into(), "no-cache".into()));
    r
}

/// `GET /v1/models`: the cheapest authenticated call; counts against no quota.
fn models(shared: &Shared, req: &Request) -> Response {
    let st = lock(shared);
    let token = credential(req);
    let known = st
        .access_tokens
        .get(token)
        .is_some_and(|e| e.expires_at > Instant::now());
    let key = st.keys.get(token).filter(|e| e.live);
    if !known && key.is_none() {
        return match st.keys.contains_key(token) {
            true => invalid_key(&st, Api::OpenAi, token),
            false => Response::raw(401, "application/json", EXPIRED_BODY),
        };
    }
    if key.is_some() {
        if let Some((name, prefix)) = &st.key_required_header {
            if !req
                .header(name)
                .is_some_and(|v| v.starts_with(prefix.as_str()))
            {
                return Response::raw(403, "application/json", NOT_AN_AGENT_BODY);
            }
        }
    }
    let model = |id: &str| json!({"id": id, "object": "model", "owned_by": "mock"});
    Response::json(
        200,
        &json!({"object": "list", "data": [model("coder-model"), model("qwen3-coder-plus")]}),
    )
}

/// `POST /v1/messages`, Anthropic-style: the key in `x-api-key` or `Authorization: Bearer`,
/// a message answer, or its event stream with `"stream": true`.
fn messages(shared: &Shared, req: &Request) -> Response {
    let mut st = lock(shared);
    let gated = gate(&mut st, req, Api::Anthropic);
    drop(st);
    shared.1.notify_all();
    let account = match gated {
        Ok(a) => a,
        Err(r) => return r,
    };
    let asked: Value = serde_json::from_str(&req.body).unwrap_or(Value::Null);
    let model = asked
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("qwen3-coder-plus")
        .to_string();
    let text = format!("hello from account {account}");
    if !asked
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return Response::json(
            200,
            &json!({
                "id": "msg_mock_1",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": null,
                "usage": {"input_tokens": 1, "output_tokens": 5},
            }),
        );
    }
    let events = [
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_mock_1", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 1, "output_tokens": 0}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 5}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ];
    let body: String = events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect();
    let mut r = Response::raw(200, "text/event-stream", body);
    r.headers.push(("Cache-Control".into(), "no-cache".into()));
    r
}
