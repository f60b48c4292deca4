#!/usr/bin/env bash
# `make loadtest`: run herald-loadtest for about 30 s against a local cluster and print its
# summary.
#
# Which cluster:
#   1. LOADTEST_URLS (comma-separated ws:// URLs, optional LOADTEST_ADMIN admin URLs): used
#      as they are; nothing is started.
#   2. A running `make cluster` fleet (scripts/cluster.sh; nodes 127.0.0.1:18081-18083,
#      admin 19091-19093, shifted by CLUSTER_WS_BASE / CLUSTER_ADMIN_BASE) whose nodes all
#      answer /readyz: used as it is; nothing is started or stopped.
#   3. Otherwise this script starts its own: one redis-server on a free loopback port and
#      three herald nodes (relay.kind = redis) on ephemeral ports, and on exit (trap) stops
#      exactly the processes it started. If the Redis relay does not become ready, it falls
#      back to one node with the in-process relay and says so.
#
# Environment: LOADTEST_ARGS (the scenario; default below), HERALD_BIN, LOADTEST_BIN
# (default: $CARGO_TARGET_DIR/release/…, which `make loadtest` builds first).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ "$TARGET" = /* ]] || TARGET="$ROOT/$TARGET"
HERALD_BIN="${HERALD_BIN:-$TARGET/release/herald}"
LOADTEST_BIN="${LOADTEST_BIN:-$TARGET/release/herald-loadtest}"
# Cluster default: publishers on the first node, 600 subscribers on the other two, 2,000 msgs/s.
CLUSTER_ARGS="cross-node -s 600 -p 2 -r 2000 -d 30s"
# Single-node fallback: the same load as a plain fan-out.
SINGLE_ARGS="fanout -s 600 -p 2 -r 2000 -d 30s"
WS_BASE="${CLUSTER_WS_BASE:-18080}"
ADMIN_BASE="${CLUSTER_ADMIN_BASE:-19090}"

say() { echo "loadtest: $*" >&2; }
die() {
    say "$*"
    exit 1
}

WORK="$(mktemp -d -t herald-loadtest.XXXXXX)"
STARTED=() # pids of the processes this script started

cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED[@]}"; do
        # Nodes drain before they exit; give them a bounded while, then insist.
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

readyz() { [[ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$1/readyz" 2>/dev/null || true)" == 200 ]]; }

# wait_for SECONDS CMD...: poll CMD until it succeeds; fail after SECONDS.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [[ $SECONDS -lt $deadline ]] || return 1
        sleep 0.1
    done
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_redis() {
    local port
    for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 20000))
        port_free "$port" || continue
        redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
            --logfile "$WORK/redis.log" >/dev/null 2>&1 &
        STARTED+=("$!")
        if wait_for 5 bash -c "[[ \"\$(redis-cli -p $port ping 2>/dev/null)\" == PONG ]]"; then
            REDIS_PORT="$port"
            return 0
        fi
    done
    return 1
}

# start_node NAME [ENV=VALUE...]: starts a node on ephemeral ports and sets NODE_WS and
# NODE_ADMIN from the line it prints.
start_node() {
    local name="$1" out="$WORK/$1.out"
    shift
    env "$@" "$HERALD_BIN" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 >"$out" 2>"$WORK/$name.log" &
    STARTED+=("$!")
    wait_for 10 grep -q '^herald listening on ' "$out" || {
        tail -n 20 "$WORK/$name.log" >&2
        return 1
    }
    read -r _ _ _ NODE_WS _ NODE_ADMIN <"$out"
}

URLS=() ADMINS=() ARGS="${LOADTEST_ARGS:-}"
if [[ -n "${LOADTEST_URLS:-}" ]]; then
    IFS=, read -r -a URLS <<<"$LOADTEST_URLS"
    [[ -z "${LOADTEST_ADMIN:-}" ]] || IFS=, read -r -a ADMINS <<<"$LOADTEST_ADMIN"
    say "using LOADTEST_URLS: ${URLS[*]}"
    [[ ${#URLS[@]} -ge 2 ]] || ARGS="${ARGS:-$SINGLE_ARGS}"
elif readyz "http://127.0.0.1:$((ADMIN_BASE + 1))" && readyz "http://127.0.0.1:$((ADMIN_BASE + 2))" &&
    readyz "http://127.0.0.1:$((ADMIN_BASE + 3))"; then
    for i in 1 2 3; do
        URLS+=("ws://127.0.0.1:$((WS_BASE + i))/ws")
        ADMINS+=("http://127.0.0.1:$((ADMIN_BASE + i))")
    done
    say "using the running \`make cluster\` fleet (nodes ${URLS[*]})"
else
    [[ -x "$HERALD_BIN" ]] || die "no herald binary at $HERALD_BIN (run: cargo build --release -p herald-gateway)"
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
        die "redis-server and redis-cli are needed (scripts/ensure-deps.sh installs them)"
    start_redis || die "could not start redis-server on a free port"
    say "started redis-server on 127.0.0.1:$REDIS_PORT"
    clustered=1
    for i in 1 2 3; do
        if ! start_node "herald-$i" HERALD_RELAY__KIND=redis "HERALD_REDIS__URL=redis://127.0.0.1:$REDIS_PORT/" \
            HERALD_LOG__LEVEL=warn; then
            clustered=0
            break
        fi
        URLS+=("$NODE_WS/ws")
        ADMINS+=("$NODE_ADMIN")
    done
    for a in "${ADMINS[@]}"; do
        [[ $clustered -eq 1 ]] || break
        wait_for 10 readyz "$a" || clustered=0
    done
    if [[ $clustered -eq 1 ]]; then
        say "started 3 herald nodes relayed through Redis: ${URLS[*]}"
    else
        say "the Redis relay did not become ready (see $WORK/herald-*.log); FALLING BACK TO ONE NODE with the in-process relay"
        for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
        for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null || true; done
        STARTED=()
        URLS=() ADMINS=()
        start_node herald-single HERALD_LOG__LEVEL=warn || die "could not start a herald node"
        URLS+=("$NODE_WS/ws")
        ADMINS+=("$NODE_ADMIN")
        wait_for 10 readyz "$NODE_ADMIN" || die "the node never became ready"
        ARGS="${ARGS:-$SINGLE_ARGS}"
    fi
fi
ARGS="${ARGS:-$CLUSTER_ARGS}"

[[ -x "$LOADTEST_BIN" ]] || die "no herald-loadtest binary at $LOADTEST_BIN (run: cargo build --release -p herald-loadtest)"
flags=()
for u in "${URLS[@]}"; do flags+=(--url "$u"); done
for a in "${ADMINS[@]}"; do flags+=(--admin "$a"); done
say "herald-loadtest $ARGS ${flags[*]}"
# shellcheck disable=SC2086 # ARGS is a list of flags
"$LOADTEST_BIN" $ARGS "${flags[@]}"
