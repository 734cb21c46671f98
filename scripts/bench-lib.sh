# Shared setup of scripts/bench-*; sourced, not run. It builds the release binary, copies it
# to a temp dir (removed on exit, so a rebuild during the run changes nothing), and points
# HOME, XDG_CONFIG_HOME, QWEN_CRED_CONFIG_DIR and QWEN_CRED_QWEN_DIR into that dir.
# Nothing here touches the network beyond 127.0.0.1 (cargo may need crates.io on a fresh
# checkout, before the proxies are unset).

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tmp=$(cd "$(mktemp -d "${TMPDIR:-/tmp}/qwen-cred-bench.XXXXXX")" && pwd -P) # no symlink: kill_strays compares paths
export TMPDIR=$tmp # qwen-curl and rustc put their temp files here too
mock_pid=
mock_fd=

cleanup() {
    # Neither a second Ctrl-C nor a failing step (set -e) may cut the cleanup short.
    trap '' INT TERM
    set +e
    kill_strays
    stop_mock
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

(cd "$root" && cargo build --release --quiet)
cp "$root/target/release/qwen-cred" "$tmp/qwen-cred"
bin=$tmp/qwen-cred

# cargo and rustup must keep finding their homes once HOME moves.
export CARGO_HOME=${CARGO_HOME:-$HOME/.cargo} RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY
for v in $(compgen -e | grep '^QWEN_' || true); do unset "$v"; done
export HOME=$tmp/home XDG_CONFIG_HOME=$tmp/home/.config
export QWEN_CRED_CONFIG_DIR=$tmp/config QWEN_CRED_QWEN_DIR=$tmp/home/.qwen
# A refresh nobody expected goes to the discard port, never to chat.qwen.ai; scripts that
# run the mock point this at it.
export QWEN_CRED_OAUTH_BASE_URL=http://127.0.0.1:9
mkdir -p "$HOME" && mkdir -m 700 "$QWEN_CRED_CONFIG_DIR"
store=$QWEN_CRED_CONFIG_DIR/qwen-accounts.json

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# write_store N EXPIRY_MS [RESOURCE_URL]: accounts 1..N with tokens at-I / rt-I, account 1 current.
write_store() {
    local n=$1 expiry=$2 url=${3:-portal.qwen.ai} i sep= now
    now=$(now_ms)
    {
        printf '{\n  "version": "1.0",\n  "max_accounts": 10,\n  "accounts": ['
        for ((i = 1; i <= n; i++)); do
            printf '%s\n    {"id": "%d", "email": "user%d@example.com", "access_token": "at-%d",' \
                "$sep" "$i" "$i" "$i"
            printf ' "refresh_token": "rt-%d", "token_type": "Bearer", "resource_url": "%s",' "$i" "$url"
            printf ' "expiry_date": %d, "created_at": %d, "last_used_at": null,' "$expiry" "$now"
            printf ' "total_requests": 0, "rate_limit_resets_at": null, "is_primary": %s}' \
                "$([ "$i" = 1 ] && echo true || echo false)"
            sep=,
        done
        printf '\n  ],\n  "current_account_id": "1"\n}\n'
    } >"$store"
    chmod 600 "$store"
}

# sum_requests: the sum of total_requests over the store's accounts.
sum_requests() {
    grep -o '"total_requests": *[0-9]*' "$store" | awk -F: '{ s += $2 } END { print s + 0 }'
}

# start_mock: runs the mock of tests/serve.rs (settings from QWEN_MOCK_* in the environment)
# with its stdin on a fifo held open here, and sets MOCK_URL. stop_mock closes the fifo.
start_mock() {
    local fifo=$tmp/mock.in out=$tmp/mock.out i
    rm -f "$fifo" && mkfifo "$fifo"
    (cd "$root" && exec cargo test --quiet --test integration serve_mock -- --ignored --nocapture) \
        <"$fifo" >"$out" 2>"$tmp/mock.err" &
    mock_pid=$!
    exec {mock_fd}>"$fifo"
    for ((i = 0; i < 3000; i++)); do # up to 5 minutes, for a first build of the tests
        MOCK_URL=$(sed -n 's/^MOCK_URL=//p' "$out")
        [ -n "$MOCK_URL" ] && break
        kill -0 "$mock_pid" 2>/dev/null || { cat "$tmp/mock.err" >&2; return 1; }
        sleep 0.1
    done
    [ -n "$MOCK_URL" ] || { echo "the mock did not start" >&2; return 1; }
    export MOCK_URL
}

stop_mock() {
    [ -n "$mock_fd" ] && exec {mock_fd}>&-
    [ -n "$mock_pid" ] && { wait "$mock_pid" 2>/dev/null || true; } # 130 after a Ctrl-C
    mock_pid= mock_fd=
    return 0
}

# mock_stats: the mock's counters (GET /__stats, one line of JSON).
mock_stats() {
    curl -sS --max-time 10 "$MOCK_URL/__stats"
}

# stat_of KEY [JSON]: the value of a top-level number or boolean of mock_stats' JSON (read
# from stdin when JSON is not given).
stat_of() {
    local json=${2-$(cat)}
    printf '%s\n' "$json" | grep -o "\"$1\":[^,}]*" | head -n 1 | cut -d : -f 2
}

# strays: the pids of the processes running the copied binary.
strays() {
    local exe pid
    for exe in /proc/[0-9]*/exe; do
        [ "$(readlink "$exe" 2>/dev/null)" = "$bin" ] || continue
        pid=${exe#/proc/} && echo "${pid%/exe}"
    done
}

# kill_strays: ends, by pid, the processes still running the copied binary (such as the
# detached `qwen-cred refresh --due` that `token` starts), so that none outlives the temp dir:
# SIGTERM (qwen-cred holds it back until a refresh in flight is stored), then after 5 s SIGKILL.
kill_strays() {
    local pids i
    [ -n "${bin:-}" ] || return 0
    pids=$(strays)
    [ -n "$pids" ] || return 0
    kill $pids 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        pids=$(strays)
        [ -n "$pids" ] || return 0
        sleep 0.1
    done
    kill -KILL $pids 2>/dev/null || true
}

# percentile P FILE: the P-th percentile (nearest rank) of the numbers in FILE, one a line.
percentile() {
    sort -n "$2" | awk -v p="$1" '{ v[NR] = $1 } END { i = int((NR * p + 99) / 100); print v[i < 1 ? 1 : i] }'
}

machine() {
    printf 'machine: %s cores, %s, %s, temp dir on %s, load %s; %s\n' "$(nproc)" \
        "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)" "$(uname -sr)" \
        "$(df -T "$tmp" | awk 'NR == 2 { print $2 }')" "$(cut -d ' ' -f 1 /proc/loadavg)" \
        "$(date -u '+%Y-%m-%d %H:%M UTC')"
}
