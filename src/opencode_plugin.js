// qwen-cred plugin for OpenCode: Qwen OAuth with a pool of accounts.
//
// Installed by `qwen-cred opencode install` as <opencode config dir>/plugin/qwen-cred.js.
// OpenCode reads a provider's apiKey once at start-up, so per-request tokens need a plugin whose
// auth loader returns its own fetch. This file has no dependencies and no build step; it only
// runs the qwen-cred binary ($QWEN_CRED_BIN, else `qwen-cred` on PATH).
//
// Tokens reach this plugin only through a child's stdout and leave it only in request headers:
// never in argv, never in an error message. qwen-cred owns the tokens; what OpenCode stores in
// its auth.json for provider "qwen" is a marker that makes it call the loader.
//
// In `opencode auth login` the method's prompts show the pool and offer add / replace / remove
// / start fresh. In the TUI, toasts tell of a move to another account, a wait for a cooldown
// and a revoked account (off with qwen-cred's `quiet_mode`).

import { spawn, spawnSync } from "node:child_process"

const PROVIDER = "qwen"
// The value OpenCode stores in auth.json instead of a token.
const MARKER = "qwen-cred"
// 2100-01-01: the marker never expires; qwen-cred refreshes the real tokens.
const MARKER_EXPIRES = 4102444800000
// Requests sent for one fetch at most: 10 accounts, one attempt each, plus one retry (after a
// 429 with a short Retry-After, or after a 401 and a forced refresh).
const MAX_ATTEMPTS = 11
// token and report-429 may wait for a cooldown (max_rate_limit_wait_seconds, default 300 s).
const CHILD_TIMEOUT_MS = Number(process.env.QWEN_CRED_PLUGIN_TIMEOUT_MS) || 15 * 60 * 1000
// A device code lives a few minutes; this only stops a login that hangs.
const LOGIN_TIMEOUT_MS = 30 * 60 * 1000
const MAX_OUTPUT = 1024 * 1024

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
function makeToasts(client) {
  const shown = new Map()
  let quiet = null
  const isQuiet = () =>
    (quiet ??= run(["config", "--json"]).then(
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
      title: "Qwen: waiting for a cooldown",
      message: `Every Qwen account is cooling down. Waiting ${span(waitMs)} (until ${clock(at)})${next ? `, then ${next} serves` : ""}. Add an account with "opencode auth login" to avoid waits.`,
      variant: "warning",
      duration: Math.min(Math.max(waitMs, 5000), 30000),
    })
  const revoked = (id, name) =>
    toast(`revoked ${id}`, Infinity, {
      title: "Qwen: account signed out",
      message: `Qwen ${accountName(id, name)} was revoked by the server and is no longer used. Run "opencode auth login" (choose Qwen) to sign it in again.`,
      variant: "error",
      duration: 15000,
    })
  return {
    toast,
    revoked,
    // What qwen-cred says on stderr of `token` and `refresh` (refresh.rs, token.rs).
    stderrLine(line) {
      const r = line.match(/\baccount (\S+) \((.*?)\) was revoked/)
      if (r) return revoked(r[1], r[2])
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
        title: "Qwen: switched account",
        message: `Now using ${next}. Qwen ${accountName(d.account_id, d.email)} ${WHY[d.reason] || "was rate-limited"} until ${clock(until)} (in ${span(until - Date.now())}).`,
        variant: "info",
      })
    },
  }
}

// The error an OpenCode user sees when qwen-cred cannot serve, by exit code (cli.md).
// Messages avoid "rate limit", status numbers and "try again later": OpenCode retries errors
// that say so, which is pointless here.
function failure(what, r) {
  const detail = said(r.stderr)
  switch (r.code) {
    case 3:
      return new QwenCredError(
        `Qwen: no usable account in qwen-cred${detail ? ` (${detail})` : ""}. Log in with "opencode auth login" (choose Qwen) or run "qwen-cred login".`,
      )
    case 4: {
      const at = (r.stderr.match(/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)/) || [])[0]
      const when = at ? ` until ${at}${until(at)}` : ""
      return new QwenCredError(
        `Qwen: every account is out of quota or cooling down${when}. Wait until then, or add an account with "opencode auth login" (choose Qwen). Run "qwen-cred list" for details.`,
      )
    }
    case 5:
      return new QwenCredError(`Qwen: the Qwen sign-in server could not be reached or failed${detail ? ` (${detail})` : ""}. Retry in a while.`)
    case 6:
      return new QwenCredError(`Qwen: qwen-cred has a problem with a local file: ${detail}`)
    case 7:
      return new QwenCredError(`Qwen: login failed${detail ? `: ${detail}` : ""}. Log in again.`)
    default:
      return new QwenCredError(`Qwen: qwen-cred ${what} failed (exit ${r.code})${detail ? `: ${detail}` : ""}`)
  }
}

// `token --format json`, rotation's pick, or account `id` when given.
async function token(signal, id, events) {
  const args = id == null ? ["token", "--format", "json"] : ["token", "--account", id, "--format", "json"]
  const r = await run(args, { signal, onStderrLine: events && events.stderrLine })
  if (r.code !== 0) throw failure("token", r)
  let t
  try {
    t = JSON.parse(r.stdout)
  } catch {
    t = null
  }
  if (!t || typeof t.headers !== "object" || !t.headers || t.account_id == null) {
    // Never quote stdout here: it holds a token.
    throw new QwenCredError(`Qwen: "${bin()} token --format json" printed no usable JSON; is QWEN_CRED_BIN a qwen-cred binary?`)
  }
  return t
}

const QUOTA = /insufficient_quota|quota/i

function isQuota(status, body) {
  return status === 429 || (status === 403 && QUOTA.test(body))
}

// A Retry-After value as given, if it is safe as one argv word (delta-seconds or HTTP-date).
function retryAfterArg(v) {
  return v && /^[0-9A-Za-z][0-9A-Za-z ,:.+-]{0,63}$/.test(v.trim()) ? ["--retry-after", v.trim()] : []
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
async function servingIds(signal) {
  const { accounts } = await listAccounts(signal)
  return (accounts || []).filter((a) => a.state === "ok" || a.state === "current").map((a) => String(a.id))
}

// A token from rotation (`token`), or, when rotation picks an account this request has found
// unusable (its 401 could not be cured), from the next account that can serve, by id.
// null when there is none.
async function tokenAvoiding(avoid, signal, events) {
  const t = await token(signal, undefined, events)
  const picked = String(t.account_id)
  if (!avoid.has(picked)) return t
  const ids = await servingIds(signal)
  const at = ids.indexOf(picked)
  const order = at < 0 ? ids : [...ids.slice(at + 1), ...ids.slice(0, at)]
  for (const id of order) {
    if (avoid.has(id)) continue
    try {
      return await token(signal, id, events)
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
function givenUp(why) {
  if (why.refresh) throw failure("refresh", why.refresh)
  const r = why.unauthorized
  return new Response(r.text, { status: r.status, statusText: r.statusText, headers: r.headers })
}

function makeFetch(configuredBase, events) {
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
      const t = await tokenAvoiding(avoid, req.signal, events)
      if (!t) return givenUp(giveUp)
      const headers = new Headers(req.headers)
      headers.delete("authorization")
      for (const [k, v] of Object.entries(t.headers)) headers.set(k, String(v))
      const res = await fetch(rebase(req.url, configuredBase, t.base_url), {
        ...req.rest,
        method: req.method,
        headers,
        body: req.body,
        signal: req.signal,
      })
      const id = String(t.account_id)
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
        const r = await run(["refresh", "--account", id, "--force"], { signal: req.signal, onStderrLine: events.stderrLine })
        // 0: a fresh token; ask again. 3: the refresh token is dead and the account now
        // revoked, so rotation skips it. Else (server down or busy): the next account.
        if (r.code === 3) await events.revoked(id, t.email)
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
      const r = await run(
        ["report-429", "--account", id, ...retryAfterArg(res.headers.get("retry-after")), "--body", "-", "--json"],
        { input: text, signal: req.signal, onStdoutLine: events.decision },
      )
      if (r.code !== 0) throw failure("report-429", r)
    }
    if (last && !last.quota) return givenUp(last)
    throw new QwenCredError(
      `Qwen: every attempt (${MAX_ATTEMPTS}) was refused for quota; run "qwen-cred list" to see the accounts' state.`,
    )
  }
}

// Reads JSON lines from a running `qwen-cred login --json`.
function startLogin(args) {
  let child
  try {
    child = spawn(bin(), args, { stdio: ["ignore", "pipe", "pipe"], env: process.env })
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
      const err = loginFailure(typeof e.exit_code === "number" ? e.exit_code : 7, String(e.message || ""))
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
    const err = code === 0 ? new QwenCredError("Qwen: qwen-cred login ended without a result") : loginFailure(code, stderr)
    // No effect on a promise already settled.
    onVerification.rej(err)
    onResult.rej(err)
  })
  return { verification, result, cancel: () => child.kill("SIGTERM") }
}

function loginFailure(code, stderr) {
  if (code === 2) {
    return new QwenCredError(
      `Qwen: ${said(stderr) || "the account pool is full"}. Run "opencode auth login" again and choose "Replace an account" or "Start fresh".`,
    )
  }
  return failure("login", { code, stderr })
}

function loginArgs(inputs) {
  // qwen-cred opens the browser where there is a display ($BROWSER, else the platform opener).
  const args = ["login", "--json"]
  const mode = (inputs && inputs.mode) || "add"
  if (mode === "fresh") args.push("--fresh")
  if (mode === "replace") {
    const id = String((inputs && inputs.replace) || "").trim()
    if (!id) throw new QwenCredError("Qwen: say which account to replace")
    args.push("--replace", id)
  }
  return args
}

const MARKER_RESULT = { type: "success", access: MARKER, refresh: MARKER, expires: MARKER_EXPIRES }

// An account's name as `list --json` gives it: its label, else its email, else the fingerprint.
function nameOf(a) {
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
      return "revoked: sign in as it again to revive it"
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

async function listAccounts(signal) {
  return parsePool(await run(["list", "--json"], { signal }))
}

// The pool for the login menu. OpenCode reads a method's prompts as a plain property, so this
// runs `list --json` synchronously; one snapshot serves one `opencode auth login` (it reads the
// prompts more than once) and is dropped when a login or removal starts.
const POOL_TTL_MS = 3000
let poolCache = null
function poolNow() {
  if (poolCache && Date.now() - poolCache.at < POOL_TTL_MS) return poolCache.pool
  let pool
  const r = spawnSync(bin(), ["list", "--json"], {
    encoding: "utf8",
    env: process.env,
    stdio: ["ignore", "pipe", "pipe"],
    timeout: 30 * 1000,
    maxBuffer: MAX_OUTPUT,
  })
  if (r.error) pool = { error: notFound(r.error).message }
  else pool = parsePool({ code: r.status ?? -1, stdout: r.stdout || "", stderr: r.stderr || "" })
  poolCache = { at: Date.now(), pool }
  return pool
}

// `opencode auth login`'s prompts: the pool (how many, each account's name and state), then
// what to do with it, then which account for replace and remove.
function menu(pool) {
  const accounts = pool.accounts || []
  const n = accounts.length
  const head = pool.error
    ? `Qwen accounts in qwen-cred: cannot list them (${pool.error})`
    : n === 0
      ? "Qwen accounts in qwen-cred: none yet"
      : `Qwen accounts in qwen-cred: ${n}${n >= 10 ? " (the pool is full)" : ""}`
  const rows = accounts.map((a) => `- ${a.id}  ${nameOf(a) || "?"}  ${stateText(a)}`)
  const options = [
    {
      label: "Add an account",
      value: "add",
      hint: n >= 10 ? "the pool is full: replace one or start fresh" : "keeps the accounts already in the pool",
    },
  ]
  if (n > 0) {
    options.push(
      { label: "Replace an account", value: "replace", hint: "pick it; the new login takes its place" },
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
  const prompts = [{ type: "select", key: "mode", message: [head, ...rows].join("\n"), options }]
  if (n > 0) prompts.push(pick("replace", "Account to replace"), pick("remove", "Account to remove"))
  return prompts
}

async function signIn(inputs, failed) {
  const args = loginArgs(inputs)
  const login = startLogin(args)
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
        poolCache = null
      }
      return MARKER_RESULT
    },
  }
}

// Removes one account; OpenCode shows the instructions, then (the callback succeeds at once,
// keeping its marker) "Login successful".
async function removeAccount(inputs) {
  const id = String((inputs && inputs.remove) || "").trim()
  if (!id) throw new QwenCredError("Qwen: say which account to remove")
  const before = await listAccounts()
  const acct = (before.accounts || []).find((a) => String(a.id) === id)
  const r = await run(["remove", id])
  if (r.code !== 0) throw failure("remove", r)
  const after = await listAccounts()
  const left = after.accounts ? `; ${after.accounts.length} left` : ""
  return {
    url: "",
    instructions: `Removed ${accountName(id, acct && nameOf(acct))} from qwen-cred's pool${left}.`,
    method: "auto",
    async callback() {
      return MARKER_RESULT
    },
  }
}

export const QwenCredPlugin = async (input) => {
  // Nothing here waits on OpenCode: awaiting its client during init deadlocks.
  const toasts = makeToasts(input && input.client)
  const failed = (e) =>
    toasts.toast(null, 0, { title: "Qwen: login failed", message: String(e && e.message), variant: "error", duration: 15000 })
  return {
    auth: {
      provider: PROVIDER,
      async loader(_auth, provider) {
        const configured = provider && provider.options && provider.options.baseURL
        return { apiKey: "", fetch: makeFetch(configured, toasts) }
      },
      methods: [
        {
          type: "oauth",
          label: "Qwen OAuth via qwen-cred (multi-account)",
          get prompts() {
            return menu(poolNow())
          },
          async authorize(inputs) {
            poolCache = null
            try {
              if (inputs && inputs.mode === "remove") return await removeAccount(inputs)
              return await signIn(inputs, failed)
            } catch (e) {
              await failed(e)
              throw e
            }
          },
        },
      ],
    },
  }
}
