// qwen-cred plugin for OpenCode: Qwen OAuth and API keys with pools of accounts.
//
// Installed by `qwen-cred opencode install` as <opencode config dir>/plugin/qwen-cred.js.
// OpenCode reads a provider's apiKey once at start-up, so per-request tokens need a plugin whose
// auth loader returns its own fetch. This file has no dependencies and no build step; it only
// runs the qwen-cred binary ($QWEN_CRED_BIN, else `qwen-cred` on PATH).
//
// Providers: `qwen` is served from qwen-cred's default pool; every other provider of
// opencode.json whose `options.qwenCredPool` names a pool (`qwen-cred opencode install --pool
// NAME --provider ID`) is served from that pool. Every qwen-cred call for a provider says
// `--pool` (`default` for `qwen`, so that a QWEN_CRED_POOL in OpenCode's environment cannot
// redirect it). OpenCode 1.18.33 calls every exported function of this file as a plugin, each
// returns one hooks object with at most one `auth` provider, and every plugin's `config` hook
// sees the whole config before a provider is loaded or `opencode auth login` lists the
// providers: so QwenCredPlugin serves `qwen`, and slot plugin k (QwenCredPool0 ...) serves the
// k-th pool provider, its `config` hook setting `hooks.auth`.
//
// Tokens and keys reach this plugin only through a child's stdout or an OpenCode prompt and
// leave it only in request headers or a child's stdin: never in argv, never in an error
// message. qwen-cred owns them; what OpenCode stores in its auth.json for a provider is a
// marker that makes it call the loader.
//
// In `opencode auth login` the method's prompts show the pool and offer add / replace / remove
// / start fresh, and for a pool provider adding an API key. In the TUI, toasts tell of a move
// to another account, a wait for a cooldown and a revoked account (off with qwen-cred's
// `quiet_mode`).

import { spawn, spawnSync } from "node:child_process"

const PROVIDER = "qwen"
// The `--pool` of the `qwen` provider.
const DEFAULT_POOL = "default"
// The key of a provider's options in opencode.json that names the pool serving it.
const POOL_OPTION = "qwenCredPool"
// The value OpenCode stores in auth.json instead of a token.
const MARKER = "qwen-cred"
// 2100-01-01: the marker never expires; qwen-cred refreshes the real tokens.
const MARKER_EXPIRES = 4102444800000
// Requests sent for one fetch at most: 10 accounts, one attempt each, plus one retry (after a
// 429 with a short Retry-After or reset header, or after a 401 and a forced refresh).
const MAX_ATTEMPTS = 11
// token and report-429 may wait for a cooldown (max_rate_limit_wait_seconds, default 300 s).
const CHILD_TIMEOUT_MS = Number(process.env.QWEN_CRED_PLUGIN_TIMEOUT_MS) || 15 * 60 * 1000
// A device code lives a few minutes; this only stops a login that hangs.
const LOGIN_TIMEOUT_MS = 30 * 60 * 1000
const MAX_OUTPUT = 1024 * 1024
// How long "Add an API key, hidden" waits for the key to reach the pool, and how often it looks.
const HIDDEN_KEY_WAIT_MS = 10 * 60 * 1000
const HIDDEN_KEY_POLL_MS = 1000
// apikey.rs: a key is 1 to 4096 visible ASCII characters.
const MAX_KEY_LEN = 4096

function bin() {
  return process.env.QWEN_CRED_BIN || "qwen-cred"
}

function abortError(signal) {
  if (signal && signal.reason instanceof Error) return signal.reason
  const e = new Error("The operation was aborted")
  e.name = "AbortError"
  return e
}

// Calls `each` with every complete line of a stream's text as it arrives.
function lines(each) {
  let buf = ""
  return (d) => {
    buf += d
    // A line longer than anything qwen-cred prints is not one of its lines.
    if (buf.length > MAX_OUTPUT) buf = ""
    let i
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i).trim()
      buf = buf.slice(i + 1)
      if (line) each(line)
    }
  }
}

// Runs qwen-cred with `args` (never a token), `input` on stdin. Resolves { code, stdout, stderr }
// once the child has ended and what `onStdoutLine` / `onStderrLine` started (toasts) is done;
// they see each line as it comes, e.g. before a wait the child starts after printing it.
function run(args, { input, signal, timeoutMs = CHILD_TIMEOUT_MS, onStdoutLine, onStderrLine } = {}) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) return reject(abortError(signal))
    let child
    try {
      child = spawn(bin(), args, { stdio: ["pipe", "pipe", "pipe"], env: process.env })
    } catch (e) {
      return reject(notFound(e))
    }
    let stdout = ""
    let stderr = ""
    let done = false
    let timedOut = false
    const onAbort = () => child.kill("SIGTERM")
    const timer = setTimeout(() => {
      timedOut = true
      child.kill("SIGTERM")
    }, timeoutMs)
    if (signal) signal.addEventListener("abort", onAbort, { once: true })
    const finish = (f) => {
      if (done) return
      done = true
      clearTimeout(timer)
      if (signal) signal.removeEventListener("abort", onAbort)
      f()
    }
    child.stdout.setEncoding("utf8")
    child.stderr.setEncoding("utf8")
    const started = []
    const watch = (f) => (f ? lines((l) => started.push(Promise.resolve().then(() => f(l)).catch(() => {}))) : () => {})
    const outLine = watch(onStdoutLine)
    const errLine = watch(onStderrLine)
    child.stdout.on("data", (d) => {
      if (stdout.length < MAX_OUTPUT) stdout += d
      outLine(d)
    })
    child.stderr.on("data", (d) => {
      if (stderr.length < MAX_OUTPUT) stderr += d
      errLine(d)
    })
    child.on("error", (e) => finish(() => reject(notFound(e))))
    child.on("close", (code) =>
      finish(() => {
        if (signal && signal.aborted) return reject(abortError(signal))
        if (timedOut) {
          return reject(new QwenCredError(`qwen-cred ${args[0]} did not finish within ${Math.round(timeoutMs / 1000)} s`))
        }
        Promise.all(started).then(() => resolve({ code: code ?? -1, stdout, stderr }))
      }),
    )
    child.stdin.on("error", () => {})
    child.stdin.end(input ?? "")
  })
}

// A pool name as qwen-cred takes it (pool.rs): `default`, or 1 to 64 letters, digits, - and _,
// starting with a letter or digit, not starting with refresh-.
function poolNameProblem(name) {
  if (name === DEFAULT_POOL) return null
  if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/.test(name)) return "use 1 to 64 letters, digits, - and _, starting with a letter or digit"
  if (/^refresh-/i.test(name)) return "a name starting with refresh- is not a pool name"
  return null
}

// One OpenCode provider and the qwen-cred pool that serves it: how messages name it, and the
// `--pool` every call for it carries.
function target(provider, pool) {
  const named = pool !== DEFAULT_POOL || provider !== PROVIDER
  const problem = poolNameProblem(pool)
  return {
    provider,
    pool,
    named,
    // Names the provider (and its pool) in errors and toast titles.
    who: named ? `${provider} (pool ${pool})` : "Qwen",
    // What to run to add to the pool through OpenCode.
    authLogin: named ? `"opencode auth login --provider ${provider}"` : `"opencode auth login" (choose Qwen)`,
    // A qwen-cred command line for this pool, as a message shows it.
    cmd: (sub) => `qwen-cred ${sub}${pool === DEFAULT_POOL ? "" : ` --pool ${pool}`}`,
    argv: (args) => [...args, "--pool", pool],
    // Why no call can be made: options.qwenCredPool is no pool name.
    bad: problem && `${provider}: options.${POOL_OPTION} ${JSON.stringify(pool)} in opencode.json is not a pool name (${problem})`,
    // The login menu's snapshot of the pool (poolNow).
    cache: null,
  }
}

// `run` for a provider: with its `--pool`.
function call(t, args, opts) {
  if (t.bad) return Promise.reject(new QwenCredError(t.bad))
  return run(t.argv(args), opts)
}

class QwenCredError extends Error {
  constructor(message) {
    super(message)
    this.name = "QwenCredError"
  }
}

function notFound(e) {
  if (e && e.code === "ENOENT") {
    return new QwenCredError(
      `Qwen: the qwen-cred program was not found (${bin()}). Install it and put it on PATH, or set QWEN_CRED_BIN to its path.`,
    )
  }
  return new QwenCredError(`Qwen: cannot run qwen-cred (${bin()}): ${e && e.message}`)
}

// qwen-cred's stderr without its `qwen-cred: ` prefixes, on one line. It never holds a token.
function said(stderr) {
  return stderr
    .split("\n")
    .map((l) => l.replace(/^qwen-cred: /, "").trim())
    .filter(Boolean)
    .join(" ")
}

// "in 5h 3m" for a future instant; the words avoid digits OpenCode reads as HTTP statuses.
function until(iso) {
  const ms = Date.parse(iso) - Date.now()
  if (!(ms > 0)) return ""
  const m = Math.ceil(ms / 60000)
  const h = Math.floor(m / 60)
  return h > 0 ? ` (in ${h}h ${m % 60}m)` : ` (in ${m}m)`
}

// "account 2 (b@example.com)": how toasts and the login menu name an account.
function accountName(id, name) {
  return `account ${id}${name ? ` (${name})` : ""}`
}

function cap(s) {
  return s.charAt(0).toUpperCase() + s.slice(1)
}

// A duration for people: "45 s", "4m 10s", "5h 3m".
function span(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000))
  if (s < 60) return `${s} s`
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`
}

// A local wall-clock time: "16:00", with the date when it is not within the next 20 hours.
function clock(ms) {
  const d = new Date(ms)
  const pad = (n) => String(n).padStart(2, "0")
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`
  if (ms - Date.now() < 20 * 3600 * 1000) return hm
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${hm}`
}

const WHY = {
  quota: "is out of its daily quota",
  "retry-after": "was rate-limited by the server",
  backoff: "was rate-limited",
}

// Toasts in OpenCode's TUI for what a user must know: a move to another account, a wait for a
// cooldown, a revoked account. One per event, however many requests saw it: an event's key is
// remembered until the time it stands for has passed. Off with the `quiet_mode` config key.
// `client.tui.showToast` is never awaited: inside the plugin's init that deadlocks, and under
// `opencode run` (no TUI) it only resolves harmlessly.
function makeToasts(client, t) {
  const shown = new Map()
  let quiet = null
  const isQuiet = () =>
    (quiet ??= call(t, ["config", "--json"]).then(
      (r) => {
        try {
          return r.code === 0 && JSON.parse(r.stdout).quiet_mode.value === true
        } catch {
          return false
        }
      },
      () => false,
    ))
  // Shows `body` unless an event with `key` was shown and lasts until after now. `until` is
  // when this event is over (ms); Infinity for one that never repeats.
  async function toast(key, until, body) {
    const now = Date.now()
    if (key != null) {
      if (shown.get(key) > now) return
      shown.set(key, Math.max(until, now + 1000))
      if (shown.size > 200) for (const [k, t] of shown) if (t <= now) shown.delete(k)
    }
    if (await isQuiet()) return
    const tui = client && client.tui
    if (!tui || typeof tui.showToast !== "function") return
    try {
      const p = tui.showToast({ body: { title: body.title, message: body.message, variant: body.variant, duration: body.duration ?? 8000 } })
      if (p && typeof p.then === "function") p.then(undefined, () => {})
    } catch {
      // No TUI to show it: nothing to do.
    }
  }
  const waiting = (waitMs, at, next) =>
    toast("wait", at, {
      title: `${t.who}: waiting for a cooldown`,
      message: `${t.named ? `Every account of pool ${t.pool}` : "Every Qwen account"} is cooling down. Waiting ${span(waitMs)} (until ${clock(at)})${next ? `, then ${next} serves` : ""}. ${t.named ? `Add a key or an account with ${t.authLogin}` : `Add an account with "opencode auth login"`} to avoid waits.`,
      variant: "warning",
      duration: Math.min(Math.max(waitMs, 5000), 30000),
    })
  // Account `id` revoked: an OAuth account whose refresh token is dead, or (`key`) a key
  // account whose key the server refuses.
  const revoked = (id, name, key) =>
    toast(`revoked ${id}`, Infinity, {
      title: `${t.who}: ${key ? "key refused" : "account signed out"}`,
      message: key
        ? `Key ${accountName(id, name)}${t.named ? ` of pool ${t.pool}` : ""} was refused by the server (an invalid key) and is no longer used. Give it a new key with ${t.authLogin} ("Replace an account") or "${t.cmd(`add-key --replace ${id}`)}".`
        : t.named
          ? `${cap(accountName(id, name))} of pool ${t.pool} was revoked by the server and is no longer used. Run ${t.authLogin} to sign it in again.`
          : `Qwen ${accountName(id, name)} was revoked by the server and is no longer used. Run "opencode auth login" (choose Qwen) to sign it in again.`,
      variant: "error",
      duration: 15000,
    })
  return {
    toast,
    revoked,
    // What qwen-cred says on stderr of `token` and `refresh` (refresh.rs, token.rs, and
    // Account::revoke, whose hint for a key account is add-key --replace).
    stderrLine(line) {
      const r = line.match(/\baccount (\S+) \((.*?)\) was revoked/)
      if (r) return revoked(r[1], r[2], /\badd-key --replace\b/.test(line))
      const w = line.match(/\bwaiting (\d+) s until (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)/)
      if (w) return waiting(Number(w[1]) * 1000, Date.parse(w[2]))
    },
    // The decision `report-429 --json` prints before it waits.
    decision(line) {
      let d
      try {
        d = JSON.parse(line)
      } catch {
        return
      }
      if (!d || d.decision === "retry_same" || d.next_account_id == null) return
      const next = accountName(d.next_account_id, d.next_email)
      if (d.wait_ms > 0) return waiting(d.wait_ms, Date.now() + d.wait_ms, next)
      const until = Date.parse(d.cooling_until)
      if (String(d.next_account_id) === String(d.account_id) || !(until > 0)) return
      return toast(`moved ${d.account_id}`, until, {
        title: `${t.who}: switched account`,
        message: `Now using ${next}. ${t.named ? cap(accountName(d.account_id, d.email)) : `Qwen ${accountName(d.account_id, d.email)}`} ${(t.named && d.reason === "quota" ? "is out of its quota" : WHY[d.reason]) || "was rate-limited"} until ${clock(until)} (in ${span(until - Date.now())}).`,
        variant: "info",
      })
    },
  }
}

// The error an OpenCode user sees when qwen-cred cannot serve, by exit code (cli.md).
// Messages avoid "rate limit", status numbers and "try again later": OpenCode retries errors
// that say so, which is pointless here.
function failure(t, what, r) {
  const detail = said(r.stderr)
  switch (r.code) {
    case 3:
      return new QwenCredError(
        t.named
          ? `${t.who}: no usable account in qwen-cred${detail ? ` (${detail})` : ""}. Add a key or an account with ${t.authLogin}, or run "${t.cmd("add-key")}" or "${t.cmd("login")}".`
          : `Qwen: no usable account in qwen-cred${detail ? ` (${detail})` : ""}. Log in with "opencode auth login" (choose Qwen) or run "qwen-cred login".`,
      )
    case 4: {
      const at = (r.stderr.match(/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)/) || [])[0]
      const when = at ? ` until ${at}${until(at)}` : ""
      return new QwenCredError(
        `${t.who}: every account${t.named ? ` of pool ${t.pool}` : ""} is out of quota or cooling down${when}. Wait until then, or add ${t.named ? `a key or an account with ${t.authLogin}` : `an account with "opencode auth login" (choose Qwen)`}. Run "${t.cmd("list")}" for details.`,
      )
    }
    case 5:
      return new QwenCredError(
        `${t.who}: ${t.named ? "the server (Qwen sign-in, or the API checking a key)" : "the Qwen sign-in server"} could not be reached or failed${detail ? ` (${detail})` : ""}. Retry in a while.`,
      )
    case 6:
      return new QwenCredError(`${t.who}: qwen-cred has a problem with a local file: ${detail}`)
    case 7:
      return new QwenCredError(`${t.who}: login failed${detail ? `: ${detail}` : ""}. Log in again.`)
    default:
      return new QwenCredError(`${t.who}: qwen-cred ${what} failed (exit ${r.code})${detail ? `: ${detail}` : ""}`)
  }
}

// `token --format json`, rotation's pick, or account `id` when given.
async function token(t, signal, id, events) {
  const args = id == null ? ["token", "--format", "json"] : ["token", "--account", id, "--format", "json"]
  const r = await call(t, args, { signal, onStderrLine: events && events.stderrLine })
  if (r.code !== 0) throw failure(t, "token", r)
  let tok
  try {
    tok = JSON.parse(r.stdout)
  } catch {
    tok = null
  }
  if (!tok || typeof tok.headers !== "object" || !tok.headers || tok.account_id == null) {
    // Never quote stdout here: it holds a token.
    throw new QwenCredError(`${t.who}: "${bin()} token --format json" printed no usable JSON; is QWEN_CRED_BIN a qwen-cred binary?`)
  }
  return tok
}

const QUOTA = /insufficient_quota|quota/i

function isQuota(status, body) {
  return status === 429 || (status === 403 && QUOTA.test(body))
}

// A response as `curl -i` prints it, for `report-429 --headers - --body -`: the status line and
// the headers (Retry-After and the x-ratelimit reset headers say when to retry), an empty line,
// the body. fetch has already joined a repeated header with ", "; qwen-cred reads such lists.
function asCurlI(res, body) {
  const clean = (v) => String(v).replace(/[\r\n]+/g, " ")
  let head = `HTTP/1.1 ${res.status} ${clean(res.statusText || "")}\r\n`
  res.headers.forEach((v, k) => {
    head += `${clean(k)}: ${clean(v)}\r\n`
  })
  return `${head}\r\n${body}`
}

function trimSlash(s) {
  return String(s).replace(/\/+$/, "")
}

// OpenCode builds URLs from the configured baseURL; the account's own API base (its
// resource_url, via `token --format json`) wins.
function rebase(url, configured, accountBase) {
  if (!configured || !accountBase) return url
  const from = trimSlash(configured)
  const to = trimSlash(accountBase)
  if (from === to || !url.startsWith(from)) return url
  const rest = url.slice(from.length)
  return rest === "" || rest.startsWith("/") || rest.startsWith("?") ? to + rest : url
}

// A body that fetch can send more than once as it is. Everything else (a ReadableStream, a
// Node stream, an async generator) can be read only once, so it is read into memory first.
function resendable(body) {
  return (
    body == null ||
    typeof body === "string" ||
    body instanceof ArrayBuffer ||
    ArrayBuffer.isView(body) ||
    (typeof Blob !== "undefined" && body instanceof Blob) ||
    (typeof FormData !== "undefined" && body instanceof FormData) ||
    (typeof URLSearchParams !== "undefined" && body instanceof URLSearchParams)
  )
}

async function readOnce(body) {
  if (typeof body.getReader === "function") return new Response(body).arrayBuffer()
  if (typeof body[Symbol.asyncIterator] === "function") {
    const parts = []
    for await (const part of body) parts.push(part)
    return new Blob(parts).arrayBuffer()
  }
  // Not a body type fetch knows: fetch sends it as its string form every time.
  return body
}

// Splits fetch(input, init) into parts that can be sent again: the body is read once.
async function replayable(input, init) {
  init = init || {}
  let url
  let method = init.method
  let headers
  let body = init.body
  let signal = init.signal
  if (typeof Request !== "undefined" && input instanceof Request) {
    url = input.url
    method = method || input.method
    headers = new Headers(init.headers || input.headers)
    signal = signal || input.signal
    if (body === undefined && input.body) body = await input.clone().arrayBuffer()
  } else {
    url = String(input)
    headers = new Headers(init.headers || {})
  }
  if (!resendable(body)) body = await readOnce(body)
  const rest = { ...init }
  for (const k of ["method", "headers", "body", "signal", "duplex"]) delete rest[k]
  return { url, method: method || "GET", headers, body, signal, rest }
}

// The accounts `qwen-cred list --json` says could serve now (no token in that output).
async function servingIds(t, signal) {
  const { accounts } = await listAccounts(t, signal)
  return (accounts || []).filter((a) => a.state === "ok" || a.state === "current").map((a) => String(a.id))
}

// A token from rotation (`token`), or, when rotation picks an account this request has found
// unusable (its 401 could not be cured), from the next account that can serve, by id.
// null when there is none.
async function tokenAvoiding(t, avoid, signal, events) {
  const tok = await token(t, signal, undefined, events)
  const picked = String(tok.account_id)
  if (!avoid.has(picked)) return tok
  const ids = await servingIds(t, signal)
  const at = ids.indexOf(picked)
  const order = at < 0 ? ids : [...ids.slice(at + 1), ...ids.slice(0, at)]
  for (const id of order) {
    if (avoid.has(id)) continue
    try {
      return await token(t, signal, id, events)
    } catch (e) {
      if (!(e instanceof QwenCredError)) throw e
      // Revoked or not refreshable meanwhile: the next one.
      avoid.add(id)
    }
  }
  return null
}

// What to tell OpenCode when the accounts this request gave up on were all there was: the
// failed refresh as an error, or the API's own 401 answer.
function givenUp(t, why) {
  if (why.refresh) throw failure(t, "refresh", why.refresh)
  const r = why.unauthorized
  return new Response(r.text, { status: r.status, statusText: r.statusText, headers: r.headers })
}

function makeFetch(t, configuredBase, events) {
  return async function qwenCredFetch(input, init) {
    const req = await replayable(input, init)
    // The accounts that had their forced refresh in this request; those passed over for this
    // request (the refresh failed, or even a fresh token got a 401) and why the latest was;
    // and why the last attempt failed.
    const refreshed = new Set()
    const avoid = new Set()
    let giveUp = null
    let last = null
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const tok = await tokenAvoiding(t, avoid, req.signal, events)
      if (!tok) return givenUp(t, giveUp)
      const headers = new Headers(req.headers)
      headers.delete("authorization")
      for (const [k, v] of Object.entries(tok.headers)) headers.set(k, String(v))
      const res = await fetch(rebase(req.url, configuredBase, tok.base_url), {
        ...req.rest,
        method: req.method,
        headers,
        body: req.body,
        signal: req.signal,
      })
      const id = String(tok.account_id)
      if (res.status === 401) {
        const text = await res.text()
        last = { unauthorized: { text, status: res.status, statusText: res.statusText, headers: res.headers } }
        if (refreshed.has(id)) {
          // Even a fresh token was refused: this account cannot serve this request.
          avoid.add(id)
          giveUp = last
          continue
        }
        refreshed.add(id)
        const r = await call(t, ["refresh", "--account", id, "--force"], { signal: req.signal, onStderrLine: events.stderrLine })
        // 0: a fresh token (for a key account: the key is accepted); ask again. 3: the
        // refresh token is dead (the key is refused) and the account now revoked, so rotation
        // skips it. Else (server down or busy): the next account.
        if (r.code === 3) await events.revoked(id, tok.kind === "api_key" ? tok.name : tok.email, tok.kind === "api_key")
        if (r.code !== 0 && r.code !== 3) {
          avoid.add(id)
          giveUp = last = { refresh: r }
        }
        continue
      }
      if (res.status !== 429 && res.status !== 403) return res
      const text = await res.text()
      if (!isQuota(res.status, text)) {
        return new Response(text, { status: res.status, statusText: res.statusText, headers: res.headers })
      }
      last = { quota: true }
      const r = await call(t, ["report-429", "--account", id, "--headers", "-", "--body", "-", "--json"], {
        input: asCurlI(res, text),
        signal: req.signal,
        onStdoutLine: events.decision,
      })
      if (r.code !== 0) throw failure(t, "report-429", r)
    }
    if (last && !last.quota) return givenUp(t, last)
    throw new QwenCredError(
      `${t.who}: every attempt (${MAX_ATTEMPTS}) was refused for quota; run "${t.cmd("list")}" to see the accounts' state.`,
    )
  }
}

// Reads JSON lines from a running `qwen-cred login --json`.
function startLogin(t, args) {
  if (t.bad) return { verification: Promise.reject(new QwenCredError(t.bad)), result: Promise.reject(new QwenCredError(t.bad)) }
  let child
  try {
    child = spawn(bin(), t.argv(args), { stdio: ["ignore", "pipe", "pipe"], env: process.env })
  } catch (e) {
    return { verification: Promise.reject(notFound(e)), result: Promise.reject(notFound(e)) }
  }
  let stderr = ""
  let onVerification
  let onResult
  const verification = new Promise((res, rej) => (onVerification = { res, rej }))
  const result = new Promise((res, rej) => (onResult = { res, rej }))
  result.catch(() => {})
  verification.catch(() => {})
  const timer = setTimeout(() => child.kill("SIGTERM"), LOGIN_TIMEOUT_MS)
  const event = (e) => {
    if (e.event === "verification") onVerification.res(e)
    else if (e.event === "success") onResult.res(e)
    else if (e.event === "error") {
      const err = loginFailure(t, typeof e.exit_code === "number" ? e.exit_code : 7, String(e.message || ""))
      onVerification.rej(err)
      onResult.rej(err)
    }
  }
  child.stdout.setEncoding("utf8")
  child.stderr.setEncoding("utf8")
  child.stdout.on(
    "data",
    lines((line) => {
      try {
        event(JSON.parse(line))
      } catch {
        // Not a JSON line: ignore.
      }
    }),
  )
  child.stderr.on("data", (d) => {
    if (stderr.length < MAX_OUTPUT) stderr += d
  })
  child.on("error", (e) => {
    clearTimeout(timer)
    onVerification.rej(notFound(e))
    onResult.rej(notFound(e))
  })
  child.on("close", (code) => {
    clearTimeout(timer)
    const err = code === 0 ? new QwenCredError(`${t.who}: qwen-cred login ended without a result`) : loginFailure(t, code, stderr)
    // No effect on a promise already settled.
    onVerification.rej(err)
    onResult.rej(err)
  })
  return { verification, result, cancel: () => child.kill("SIGTERM") }
}

// Exit 2 of login: most likely the pool is full (qwen-cred's message says).
function loginFailure(t, code, stderr) {
  if (code === 2) {
    return new QwenCredError(
      `${t.who}: ${said(stderr) || "the account pool is full"}. Run ${t.named ? t.authLogin : `"opencode auth login"`} again and choose "Replace an account" or "Start fresh".`,
    )
  }
  return failure(t, "login", { code, stderr })
}

function picked(t, inputs, key, what) {
  const id = String((inputs && inputs[key]) || "").trim()
  if (!id) throw new QwenCredError(`${t.who}: say which account to ${what}`)
  return id
}

function loginArgs(t, inputs) {
  // qwen-cred opens the browser where there is a display ($BROWSER, else the platform opener).
  const args = ["login", "--json"]
  const mode = (inputs && inputs.mode) || "add"
  if (mode === "fresh") args.push("--fresh")
  if (mode === "replace") args.push("--replace", picked(t, inputs, "replace", "replace"))
  return args
}

const MARKER_RESULT = { type: "success", access: MARKER, refresh: MARKER, expires: MARKER_EXPIRES }

function isKey(a) {
  return a.kind === "api_key"
}

// An account's name as `list --json` gives it: its label, else its email, else the fingerprint;
// a key account's label with its key's fingerprint (never the key).
function nameOf(a) {
  if (isKey(a)) return a.name || (a.fingerprint ? `key ${a.fingerprint}` : "")
  return a.label || a.email || (a.fingerprint ? `fp ${a.fingerprint}` : "")
}

function stateText(a) {
  switch (a.state) {
    case "current":
    case "ok":
      return a.state
    case "cooling_down": {
      const t = Date.parse(a.rate_limited_until)
      return `cooling down${t > 0 ? ` until ${clock(t)}` : ""}${a.rate_limit_reason ? ` (${a.rate_limit_reason})` : ""}`
    }
    case "revoked":
      return isKey(a) ? "revoked: the server refused the key; replace it" : "revoked: sign in as it again to revive it"
    default:
      return String(a.state || "unknown")
  }
}

// `qwen-cred list --json` (no token in it) as { accounts } or { error }.
function parsePool(r) {
  if (r.code !== 0) return { error: said(r.stderr || "") || `qwen-cred list failed (exit ${r.code})` }
  try {
    const list = JSON.parse(r.stdout)
    if (Array.isArray(list)) return { accounts: list.filter((a) => a && a.id != null) }
  } catch {
    // Below.
  }
  return { error: `"${bin()} list --json" printed no list` }
}

async function listAccounts(t, signal) {
  return parsePool(await call(t, ["list", "--json"], { signal }))
}

// The pool for the login menu. OpenCode reads a method's prompts as a plain property, so this
// runs `list --json` synchronously; one snapshot serves one `opencode auth login` (it reads the
// prompts more than once) and is dropped when a login or removal starts.
const POOL_TTL_MS = 3000
function poolNow(t) {
  if (t.cache && Date.now() - t.cache.at < POOL_TTL_MS) return t.cache.pool
  let pool
  if (t.bad) pool = { error: t.bad }
  else {
    const r = spawnSync(bin(), t.argv(["list", "--json"]), {
      encoding: "utf8",
      env: process.env,
      stdio: ["ignore", "pipe", "pipe"],
      timeout: 30 * 1000,
      maxBuffer: MAX_OUTPUT,
    })
    if (r.error) pool = { error: notFound(r.error).message }
    else pool = parsePool({ code: r.status ?? -1, stdout: r.stdout || "", stderr: r.stderr || "" })
  }
  t.cache = { at: Date.now(), pool }
  return pool
}

// Why `text` is no API key (apikey.rs: 1 to 4096 visible ASCII characters), or undefined. The
// answer never repeats the text.
function keyProblem(text) {
  const k = String(text ?? "").trim()
  if (!k) return "Paste the key (or press Esc to cancel)"
  if (k.length > MAX_KEY_LEN) return `A key is at most ${MAX_KEY_LEN} characters`
  if (!/^[\x21-\x7e]+$/.test(k)) return "A key has no spaces, control or non-ASCII characters"
  return undefined
}

// `opencode auth login`'s prompts: the pool (how many, each account's name and state), then
// what to do with it, then which account for replace and remove, and for a key: the key. A
// pool provider also offers to add an API key, typed here (shown as typed: OpenCode has no
// masked prompt for a plugin) or into `qwen-cred add-key` (not shown). OpenCode's CLI reads
// `when` and `condition`, its TUI only `when`.
function menu(t, pool, baseURL) {
  const accounts = pool.accounts || []
  const n = accounts.length
  const full = n >= 10
  const title = t.named ? `Accounts of pool ${t.pool} in qwen-cred` : "Qwen accounts in qwen-cred"
  const head = pool.error
    ? `${title}: cannot list them (${pool.error})`
    : n === 0
      ? `${title}: none yet`
      : `${title}: ${n}${full ? " (the pool is full)" : ""}`
  const rows = accounts.map((a) => `- ${a.id}  ${nameOf(a) || "?"}  ${stateText(a)}`)
  const options = []
  if (t.named) {
    options.push(
      {
        label: "Add an API key",
        value: "key",
        hint: full ? "the pool is full: replace one" : "paste it at the next prompt, which shows it as you type",
      },
      {
        label: "Add an API key, hidden",
        value: "hidden",
        hint: `type it into "${t.cmd("add-key")}" in a terminal, which does not show it`,
      },
    )
  }
  options.push({
    label: t.named ? "Add a Qwen OAuth account" : "Add an account",
    value: "add",
    hint: full ? "the pool is full: replace one or start fresh" : "keeps the accounts already in the pool",
  })
  if (n > 0) {
    options.push(
      {
        label: "Replace an account",
        value: "replace",
        hint: "pick it; a new login (a new key for a key account) takes its place",
      },
      { label: "Remove an account", value: "remove", hint: "pick it; no login" },
    )
  }
  if (n > 0 || pool.error) {
    options.push({ label: "Start fresh", value: "fresh", hint: "the new account replaces all others once it is in" })
  }
  const pick = (key, message) => ({
    type: "select",
    key,
    message,
    options: accounts.map((a) => ({ label: `${a.id}  ${nameOf(a) || "?"}`, value: String(a.id), hint: stateText(a) })),
    when: { key: "mode", op: "eq", value: key },
    condition: (inputs) => inputs.mode === key,
  })
  const where = baseURL ? ` for ${baseURL}` : ""
  const keyPrompt = (message, when, condition) => ({
    type: "text",
    key: "key",
    message,
    placeholder: "sk-...",
    when,
    condition,
    validate: keyProblem,
  })
  const prompts = [{ type: "select", key: "mode", message: [head, ...rows].join("\n"), options }]
  if (t.named) {
    prompts.push(
      keyPrompt(
        `API key${where}, for pool ${t.pool}. It is shown as you type: for a hidden prompt, cancel and run "${t.cmd("add-key")}" in a terminal`,
        { key: "mode", op: "eq", value: "key" },
        (inputs) => inputs.mode === "key",
      ),
      {
        type: "text",
        key: "label",
        message: "A name for this key, shown in the pool's list (optional: Enter for none)",
        when: { key: "mode", op: "eq", value: "key" },
        condition: (inputs) => inputs.mode === "key",
      },
    )
  }
  if (n > 0) {
    prompts.push(pick("replace", "Account to replace"), pick("remove", "Account to remove"))
    // A key account is replaced by a new key: its prompt shows when it is the one picked.
    for (const a of accounts.filter(isKey)) {
      const id = String(a.id)
      prompts.push(
        keyPrompt(
          `New API key for account ${id} (${nameOf(a)}). It is shown as you type: for a hidden prompt, cancel and run "${t.cmd(`add-key --replace ${id}`)}" in a terminal`,
          { key: "replace", op: "eq", value: id },
          (inputs) => inputs.mode === "replace" && String(inputs.replace) === id,
        ),
      )
    }
  }
  return prompts
}

async function signIn(t, inputs, failed) {
  const args = loginArgs(t, inputs)
  const login = startLogin(t, args)
  let v
  try {
    v = await login.verification
  } catch (e) {
    if (login.cancel) login.cancel()
    throw e
  }
  const url = v.verification_uri_complete || v.verification_uri
  const minutes = v.expires_in ? ` within ${Math.max(1, Math.round(v.expires_in / 60))} min` : ""
  const mode = (inputs && inputs.mode) || "add"
  const then =
    mode === "replace"
      ? `puts the account in place of account ${args[args.length - 1]}`
      : mode === "fresh"
        ? "keeps only this account once it is in"
        : t.named
          ? `adds the account to pool ${t.pool}`
          : "adds the account to its pool"
  return {
    url,
    instructions: `Open the link and approve${minutes}; if asked for a code, enter ${v.user_code}. qwen-cred ${then}.`,
    method: "auto",
    async callback() {
      try {
        await login.result
      } catch (e) {
        // OpenCode shows a thrown error's message after "Failed to authorize: ".
        await failed(e)
        throw e
      } finally {
        t.cache = null
      }
      return MARKER_RESULT
    },
  }
}

// Done at once: OpenCode shows the instructions, then (the callback succeeds, keeping its
// marker) "Login successful".
function done(instructions) {
  return {
    url: "",
    instructions,
    method: "auto",
    async callback() {
      return MARKER_RESULT
    },
  }
}

// "; 3 accounts in pool work" after a change.
async function countText(t) {
  const after = await listAccounts(t)
  if (!after.accounts) return ""
  const n = after.accounts.length
  return t.named ? `; ${n} account${n === 1 ? "" : "s"} in pool ${t.pool}` : `; ${n} left`
}

// Removes one account.
async function removeAccount(t, inputs) {
  const id = picked(t, inputs, "remove", "remove")
  const before = await listAccounts(t)
  const acct = (before.accounts || []).find((a) => String(a.id) === id)
  const r = await call(t, ["remove", id])
  if (r.code !== 0) throw failure(t, "remove", r)
  return done(`Removed ${accountName(id, acct && nameOf(acct))} from ${t.named ? `pool ${t.pool}` : "qwen-cred's pool"}${await countText(t)}.`)
}

// Adds the key typed at the prompt to the pool (or, replacing, puts it into key account
// `inputs.replace`): `qwen-cred add-key` reads it on stdin, never from argv. The account's base
// URL is the provider's (options.baseURL), as `opencode install --pool --base-url` set it.
async function addKey(t, inputs, baseURL) {
  const why = keyProblem(inputs && inputs.key)
  if (why) throw new QwenCredError(`${t.who}: no API key was added: ${why.charAt(0).toLowerCase()}${why.slice(1)}`)
  const args = ["add-key"]
  const replace = inputs.mode === "replace" ? picked(t, inputs, "replace", "replace") : null
  if (replace) args.push("--replace", replace)
  const label = String((inputs && inputs.label) || "").trim()
  if (label && !replace) args.push("--label", label)
  if (baseURL) args.push("--base-url", String(baseURL))
  const r = await call(t, args, { input: `${String(inputs.key).trim()}\n` })
  t.cache = null
  if (r.code === 2) {
    // A full pool, or a key or label add-key refuses: its message says which.
    const full = /pool is full/.test(r.stderr)
    throw new QwenCredError(
      `${t.who}: no API key was added: ${said(r.stderr) || "add-key refused it"}${full ? `. Run ${t.authLogin} again and choose "Replace an account"` : ""}.`,
    )
  }
  if (r.code !== 0) throw failure(t, "add-key", r)
  // What add-key said ("added key account 3 (plan-3 (key 1a2b3c4d))"): ids and fingerprints only.
  const what = said(r.stderr) || (replace ? `replaced the key of account ${replace}` : "added the key")
  return done(`qwen-cred ${what}${await countText(t)}.`)
}

// What identifies the pool's keys: a new one, a replaced one, one revived or renamed changes it.
function keysOf(pool) {
  return (pool.accounts || [])
    .filter(isKey)
    .map((a) => [a.id, a.fingerprint, a.label, a.state === "revoked"].join(" "))
    .sort()
    .join("\n")
}

// "Add an API key, hidden": the user runs `qwen-cred add-key --pool NAME` in a terminal, which
// asks for the key without showing it; OpenCode waits until the key is in the pool.
async function waitForKey(t, baseURL, failed) {
  const before = await listAccounts(t)
  if (before.error) throw new QwenCredError(`${t.who}: ${before.error}`)
  const command = `${t.cmd("add-key")}${baseURL ? ` --base-url ${baseURL}` : ""}`
  return {
    url: "",
    instructions: `In a terminal, run: ${command} (add --label NAME to name the key). It asks for the key and does not show it. Waiting here until the key is in pool ${t.pool} (up to ${Math.round(HIDDEN_KEY_WAIT_MS / 60000)} min).`,
    method: "auto",
    async callback() {
      const end = Date.now() + HIDDEN_KEY_WAIT_MS
      for (;;) {
        await new Promise((res) => setTimeout(res, HIDDEN_KEY_POLL_MS))
        const now = await listAccounts(t)
        if (now.accounts && keysOf(now) !== keysOf(before)) break
        if (Date.now() > end) {
          const e = new QwenCredError(
            `${t.who}: no new key reached pool ${t.pool} within ${Math.round(HIDDEN_KEY_WAIT_MS / 60000)} min; nothing changed. Run "${command}" in a terminal, then choose this again.`,
          )
          await failed(e)
          throw e
        }
      }
      t.cache = null
      return MARKER_RESULT
    },
  }
}

// The `auth` hook of one provider served from one pool.
function serve(t, client) {
  // Nothing here waits on OpenCode: awaiting its client during init deadlocks.
  const toasts = makeToasts(client, t)
  const failed = (e) =>
    toasts.toast(null, 0, { title: `${t.who}: login failed`, message: String(e && e.message), variant: "error", duration: 15000 })
  // The provider's configured base URL, from the loader (OpenCode's merged options) or the
  // config hook (a pool provider).
  let baseURL = t.baseURL
  return {
    provider: t.provider,
    async loader(_auth, provider) {
      const configured = provider && provider.options && provider.options.baseURL
      if (configured) baseURL = configured
      return { apiKey: "", fetch: makeFetch(t, configured, toasts) }
    },
    methods: [
      {
        type: "oauth",
        label: t.named ? `Qwen OAuth or API keys via qwen-cred (pool ${t.pool})` : "Qwen OAuth via qwen-cred (multi-account)",
        get prompts() {
          return menu(t, poolNow(t), t.named ? baseURL : undefined)
        },
        async authorize(inputs) {
          t.cache = null
          try {
            const mode = inputs && inputs.mode
            if (mode === "remove") return await removeAccount(t, inputs)
            if (mode === "key" || (mode === "replace" && inputs.key !== undefined)) return await addKey(t, inputs, baseURL)
            if (mode === "hidden") return await waitForKey(t, baseURL, failed)
            return await signIn(t, inputs, failed)
          } catch (e) {
            await failed(e)
            throw e
          }
        },
      },
    ],
  }
}

export const QwenCredPlugin = async (input) => ({ auth: serve(target(PROVIDER, DEFAULT_POOL), input && input.client) })

// The providers of opencode.json served from a named pool (options.qwenCredPool), by id.
function poolProviders(config) {
  const providers = (config && config.provider) || {}
  return Object.keys(providers)
    .filter((id) => {
      const o = providers[id] && providers[id].options
      return id !== PROVIDER && o && typeof o[POOL_OPTION] === "string"
    })
    .sort()
    .map((id) => ({ id, pool: providers[id].options[POOL_OPTION], baseURL: providers[id].options.baseURL }))
}

// Slot plugin k: serves the k-th pool provider, if there is one. Eight slots: a ninth pool
// provider is not served (`opencode install --pool` warns).
function slot(k) {
  return async (input) => {
    const hooks = {
      async config(config) {
        const p = poolProviders(config)[k]
        if (!p) return
        const t = target(p.id, p.pool)
        if (typeof p.baseURL === "string") t.baseURL = p.baseURL
        hooks.auth = serve(t, input && input.client)
      },
    }
    return hooks
  }
}

export const QwenCredPool0 = slot(0)
export const QwenCredPool1 = slot(1)
export const QwenCredPool2 = slot(2)
export const QwenCredPool3 = slot(3)
export const QwenCredPool4 = slot(4)
export const QwenCredPool5 = slot(5)
export const QwenCredPool6 = slot(6)
export const QwenCredPool7 = slot(7)
