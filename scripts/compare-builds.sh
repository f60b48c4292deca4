#!/usr/bin/env bash
# Two builds of Herald side by side under the same herald-loadtest run, alternating round
# by round (A, B, A, B, ...), each node pinned to core 0 and the generator to core 1, so a
# change is measured against the build before it in one session at the same offered load.
#
#   scripts/compare-builds.sh ROUNDS HERALD_A HERALD_B [herald-loadtest arguments...]
#   scripts/compare-builds.sh 3 /tmp/before/herald target/release/herald fanout -s 1000 -p 1 -r max -d 10s
#   scripts/compare-builds.sh 3 A B cross-node -s 1000 -p 1 -r max -d 10s
#
# ENV_A / ENV_B: extra VAR=value words for build A's / B's nodes (so one binary can be
# compared with itself under two configurations); LOADTEST_ARGS_A / LOADTEST_ARGS_B: extra
# generator arguments for A's / B's rounds (e.g. `--jwt-secret ...` for a node with auth).
# The per-connection publish rate limits are off in every round (a generator's publisher
# at max rate is not an abusive client) unless BENCH_LIMITS=on.
#
# With `cross-node` each round starts its own redis-server (free port, no persistence) and
# two nodes of the build through it; otherwise one node. Every run is bounded by the
# generator's own duration; the script stops exactly the processes it started. Prints,
# per round and build, the generator's delivery, latency, CPU and memory lines.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ "$TARGET" = /* ]] || TARGET="$ROOT/$TARGET"
LOADTEST_BIN="${LOADTEST_BIN:-$TARGET/release/herald-loadtest}"

[[ $# -ge 3 ]] || { sed -n '2,12p' "$0" >&2; exit 64; }
ROUNDS="$1" A="$2" B="$3"
shift 3
[[ $# -gt 0 ]] || set -- fanout -s 1000 -p 1 --payload-size 256 -r max -d 10s
[[ -x "$A" && -x "$B" && -x "$LOADTEST_BIN" ]] || { echo "compare-builds: need executables $A, $B and $LOADTEST_BIN" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || true

# shellcheck source=scripts/lib/bench.sh
. "$ROOT/scripts/lib/bench.sh"
trap stop_all EXIT

# node BIN PORT ADMIN [ENV...]: starts one node on core 0.
node() {
    local bin="$1" port="$2" admin="$3"
    shift 3
    local limits=(HERALD_LIMITS__PUBLISH_PER_SECOND=0 HERALD_LIMITS__PUBLISH_BYTES_PER_SECOND=0)
    [[ "${BENCH_LIMITS:-off}" == on ]] && limits=()
    # shellcheck disable=SC2086 # ENV_* are word lists on purpose
    env "${limits[@]}" $SIDE_ENV "$@" taskset -c 0 "$bin" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" >/dev/null 2>&1 &
    PIDS+=($!)
    wait_port "$port"
}

# round LABEL BIN ARGS...
round() {
    local label="$1" bin="$2"
    shift 2
    if [[ "$1" == cross-node ]]; then
        local rport p1 p2 a1 a2
        rport="$(free_port)"
        redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
        PIDS+=($!)
        wait_port "$rport"
        p1="$(free_port)" a1="$(free_port)" p2="$(free_port)" a2="$(free_port)"
        local env=(HERALD_RELAY__KIND=redis "HERALD_REDIS__URL=redis://127.0.0.1:$rport/")
        node "$bin" "$p1" "$a1" "${env[@]}" HERALD_NODE_ID=n1
        node "$bin" "$p2" "$a2" "${env[@]}" HERALD_NODE_ID=n2
        echo "== $label"
        generate "$LOADTEST_BIN" "$@" -u "ws://127.0.0.1:$p1/ws,ws://127.0.0.1:$p2/ws" \
            --admin "http://127.0.0.1:$a1,http://127.0.0.1:$a2" --server-pid "${PIDS[1]}" --server-pid "${PIDS[2]}"
    else
        local port admin
        port="$(free_port)" admin="$(free_port)"
        node "$bin" "$port" "$admin"
        echo "== $label"
        generate "$LOADTEST_BIN" "$@" -u "ws://127.0.0.1:$port/ws" --admin "http://127.0.0.1:$admin" \
            --server-pid "${PIDS[0]}"
    fi
    stop_all
}

for r in $(seq 1 "$ROUNDS"); do
    # shellcheck disable=SC2086
    SIDE_ENV="${ENV_A:-}" round "round $r: A ($A)" "$A" "$@" ${LOADTEST_ARGS_A:-}
    # shellcheck disable=SC2086
    SIDE_ENV="${ENV_B:-}" round "round $r: B ($B)" "$B" "$@" ${LOADTEST_ARGS_B:-}
done
