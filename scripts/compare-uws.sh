#!/usr/bin/env bash
# Herald and uWebSockets.js side by side under the same herald-loadtest run, alternating,
# each server pinned to core 0 and the generator to core 1 (the setup of issue 5's table).
#
#   scripts/compare-uws.sh [rounds] [herald-loadtest arguments...]
#   scripts/compare-uws.sh 5 fanout -s 1000 -p 1 --payload-size 256 -r 100 -d 15s
#
# uWS runs as benches/peers/uws/server.mjs (the part of Herald's protocol the generator
# uses), installed from npm on first use. Both servers listen on 127.0.0.1 ephemeral-range
# ports chosen here; every run is bounded by the generator's own duration, and the script
# stops exactly the processes it started. Prints, per round and server, the generator's
# delivery, latency and CPU lines.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ "$TARGET" = /* ]] || TARGET="$ROOT/$TARGET"
HERALD_BIN="${HERALD_BIN:-$TARGET/release/herald}"
LOADTEST_BIN="${LOADTEST_BIN:-$TARGET/release/herald-loadtest}"
PEER_DIR="$ROOT/benches/peers/uws"

ROUNDS="${1:-3}"
shift || true
if [[ $# -eq 0 ]]; then
    set -- fanout -s 1000 -p 1 --payload-size 256 -r 100 -d 15s
fi

command -v node >/dev/null || { echo "compare-uws: node is needed for the uWS peer" >&2; exit 1; }
[[ -x "$HERALD_BIN" && -x "$LOADTEST_BIN" ]] || (cd "$ROOT" && cargo build --release -p herald-gateway -p herald-loadtest)
[[ -d "$PEER_DIR/node_modules/uws-pack" ]] || (cd "$PEER_DIR" && npm ci --no-audit --no-fund >/dev/null)

# shellcheck source=scripts/lib/bench.sh
. "$ROOT/scripts/lib/bench.sh"
trap stop_all EXIT

# measure LABEL PORT ARGS...: runs the generator against the server just started on PORT
# (the first of PIDS), prints the report's key lines, stops the server.
measure() {
    local label="$1" port="$2"
    shift 2
    wait_port "$port"
    echo "== $label (pid ${PIDS[0]})"
    generate "$LOADTEST_BIN" "$@" -u "ws://127.0.0.1:$port/ws" --server-pid "${PIDS[0]}"
    stop_all
}

for round in $(seq 1 "$ROUNDS"); do
    port="$(free_port)"
    admin="$(free_port)"
    taskset -c 0 "$HERALD_BIN" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" >/dev/null 2>&1 &
    PIDS=($!)
    measure "round $round: herald" "$port" "$@"

    port="$(free_port)"
    taskset -c 0 node "$PEER_DIR/server.mjs" "$port" >/dev/null 2>&1 &
    PIDS=($!)
    measure "round $round: uWebSockets.js" "$port" "$@"
done
