# Shared by the side-by-side benchmark scripts (compare-uws.sh, compare-builds.sh): free
# loopback ports, waiting for a listener, stopping exactly what a script started, and
# running the generator pinned to core 1 with the report's key lines kept. Source it; it
# defines functions only.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# PIDS: every process the sourcing script started, stopped by stop_all.
PIDS=()
stop_all() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    PIDS=()
}

wait_port() {
    for _ in $(seq 1 100); do
        (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "bench: nothing listens on $1" >&2
    return 1
}

# generate LOADTEST_BIN ARGS...: the generator on core 1, the report's key lines only.
generate() {
    local bin="$1"
    shift
    taskset -c 1 "$bin" "$@" -q |
        grep -E "deliveries|lost|latency|generator|cpu .* of a core|idle|memory" || true
}
