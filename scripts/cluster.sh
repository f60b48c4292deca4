#!/usr/bin/env bash
# A local Herald fleet on loopback: one redis-server, three herald nodes relayed through it,
# and HAProxy in front of them, all as background processes whose pids, logs and configs
# live in .cluster/ (gitignored).
#
#   scripts/cluster.sh up        build (release), start whatever is not running, print ports
#   scripts/cluster.sh down      stop exactly the processes `up` started (pids in .cluster/)
#   scripts/cluster.sh status    what runs, and each node's /readyz
#   scripts/cluster.sh render-haproxy IN OUT LB_ADDR STATS_ADDR NAME=HOST:PORT,ADMIN_PORT...
#                                [--check "inter 200ms fall 1 rise 1"] [--maxconn N]
#                                write a copy of IN whose public and stats bind lines and
#                                `server` lines are rewritten, and optionally the check
#                                timings and maxconn (used by `up` and by the tests)
#
# Fixed ports (override with the environment variables in brackets):
#   HAProxy (public WebSocket entry) 127.0.0.1:18080 [CLUSTER_LB_PORT], stats 127.0.0.1:18404
#   [CLUSTER_LB_STATS_PORT]; nodes 127.0.0.1:18081-18083 [CLUSTER_WS_BASE=18080], admin
#   127.0.0.1:19091-19093 [CLUSTER_ADMIN_BASE=19090]; redis 127.0.0.1:16379 [CLUSTER_REDIS_PORT].
#   `up` refuses to start a component whose port is held by anything it did not start.
#
# `up` and `down` are idempotent: `up` keeps running components and starts missing ones;
# `down` signals only pids recorded in .cluster/pids whose command line still matches what
# was started (a recycled pid is never signalled), waits for them, and removes the records.
# Set CLUSTER_LB=nginx to put nginx (deploy/nginx/nginx.conf) in front instead of HAProxy.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.cluster"
PIDS="$STATE/pids"
NODES=3
LB_PORT="${CLUSTER_LB_PORT:-18080}"
LB_STATS_PORT="${CLUSTER_LB_STATS_PORT:-18404}"
WS_BASE="${CLUSTER_WS_BASE:-18080}"
ADMIN_BASE="${CLUSTER_ADMIN_BASE:-19090}"
REDIS_PORT="${CLUSTER_REDIS_PORT:-16379}"
LB="${CLUSTER_LB:-haproxy}"
# Local drain settings: HAProxy checks every 1 s (fastinter 250 ms, fall 2), so a draining
# node leaves the pool within ~1.5 s; 2 s of drain delay covers that.
DRAIN_DELAY_MS=2000
CLOSE_WINDOW_MS=5000
GRACE_MS=5000
# How long `down` waits for a node: drain delay + close window + grace, plus margin.
STOP_WAIT_S=$(((DRAIN_DELAY_MS + CLOSE_WINDOW_MS + GRACE_MS) / 1000 + 5))

say() { echo "cluster: $*"; }
die() {
    echo "cluster: $*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------
# render-haproxy: rewrite the bind lines of the `herald_public` and `stats` frontends and
# replace the `server` lines of `herald_nodes`; optionally the check timings (everything
# from `inter` to `rise N` on the default-server line) and every `maxconn`.
render_haproxy() {
    [[ $# -ge 5 ]] || die "usage: render-haproxy IN OUT LB_ADDR STATS_ADDR NAME=HOST:PORT,ADMIN_PORT... [--check PARAMS] [--maxconn N]"
    local in="$1" out="$2" lb="$3" stats="$4"
    shift 4
    local servers=() check="" maxconn=""
    while [[ $# -gt 0 ]]; do
        case "$1" in
        --check)
            check="${2:?--check needs a value}"
            shift 2
            ;;
        --maxconn)
            maxconn="${2:?--maxconn needs a value}"
            shift 2
            ;;
        *=*:*,*)
            servers+=("$1")
            shift
            ;;
        *) die "render-haproxy: bad server spec $1 (want NAME=HOST:PORT,ADMIN_PORT)" ;;
        esac
    done
    [[ ${#servers[@]} -gt 0 ]] || die "render-haproxy: no servers"
    local spec
    spec="$(printf '%s\n' "${servers[@]}")"
    awk -v lb="$lb" -v stats="$stats" -v spec="$spec" -v check="$check" -v maxconn="$maxconn" '
        BEGIN { n = split(spec, s, "\n") }
        /^[a-z]/ { section = $1 " " $2 }
        $1 == "maxconn" && maxconn != "" { sub(/maxconn [0-9]+/, "maxconn " maxconn); print; next }
        section == "frontend herald_public" && $1 == "bind" { print "    bind " lb; next }
        section == "frontend stats" && $1 == "bind" { print "    bind " stats; next }
        section == "backend herald_nodes" && $1 == "default-server" && check != "" {
            line = $0
            sub(/inter .* rise [0-9]+/, check, line)
            print line
            next
        }
        section == "backend herald_nodes" && $1 == "server" {
            if (!done) {
                for (i = 1; i <= n; i++) {
                    split(s[i], kv, "=")
                    split(kv[2], addr, ",")
                    print "    server " kv[1] " " addr[1] " check port " addr[2]
                }
                done = 1
            }
            next
        }
        { print }
    ' "$in" >"$out.tmp"
    mv "$out.tmp" "$out"
}

# ---------------------------------------------------------------------------------------
# Process records: .cluster/pids/NAME.pid holds the pid, NAME.cmd the command line as
# /proc/PID/cmdline shows it (NUL-separated args joined with spaces).

cmdline_of() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }

# alive NAME: the recorded process runs and is still the one we started.
alive() {
    local name="$1" pid
    [[ -f "$PIDS/$name.pid" ]] || return 1
    pid="$(cat "$PIDS/$name.pid")"
    [[ -n "$pid" && -d "/proc/$pid" ]] || return 1
    [[ "$(cmdline_of "$pid")" == "$(cat "$PIDS/$name.cmd" 2>/dev/null)" ]]
}

# port_busy PORT: something listens on 127.0.0.1:PORT (or on every address).
port_busy() {
    ss -Hltn "( sport = :$1 )" 2>/dev/null | grep -q .
}

# check_port NAME PORT: refuse when the port is held and NAME is not ours.
check_port() {
    local name="$1" port="$2"
    if port_busy "$port"; then
        die "port $port (for $name) is already in use by a process this script did not start; free it or set the port variables (see the top of scripts/cluster.sh)"
    fi
}

# launch NAME LOG PROG ARGS...: start PROG in its own session (so a Ctrl-C in this terminal
# does not reach it), record its pid, and its command line once PROG runs.
launch() {
    local name="$1" log="$2"
    shift 2
    # No job control in a script, so the background child is not a process-group leader:
    # setsid execs in place and $! is the program itself.
    setsid "$@" </dev/null >>"$log" 2>&1 &
    local pid=$! i
    echo "$pid" >"$PIDS/$name.pid"
    for i in $(seq 1 100); do
        [[ "$(cmdline_of "$pid")" == "$1 "* ]] && break
        sleep 0.02
    done
    remember "$name"
}

# remember NAME: record the command line the process shows now (redis-server rewrites its
# title once it runs, so it is remembered again after it answers).
remember() { cmdline_of "$(cat "$PIDS/$1.pid")" >"$PIDS/$1.cmd"; }

# http_status HOST PORT PATH: the status code of one GET, or 000.
http_status() {
    curl -s -o /dev/null -m 2 -w '%{http_code}' "http://$1:$2$3" 2>/dev/null || true
}

# wait_for SECONDS CMD...: poll CMD until it succeeds; fail after SECONDS.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [[ $SECONDS -lt $deadline ]] || return 1
        sleep 0.1
    done
}

node_ready() { [[ "$(http_status 127.0.0.1 "$((ADMIN_BASE + $1))" /readyz)" == 200 ]]; }
redis_up() { [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]; }
lb_up() { port_busy "$LB_PORT"; }

herald_bin() {
    local target="${CARGO_TARGET_DIR:-$ROOT/target}"
    [[ "$target" = /* ]] || target="$ROOT/$target"
    echo "$target/release/herald"
}

# ---------------------------------------------------------------------------------------
start_redis() {
    if alive redis; then
        say "redis-server already running (pid $(cat "$PIDS/redis.pid"))"
        return
    fi
    check_port redis "$REDIS_PORT"
    mkdir -p "$STATE/redis"
    launch redis "$STATE/redis.log" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
        --save "" --appendonly no --dir "$STATE/redis"
    wait_for 10 redis_up || die "redis-server did not answer PING; see $STATE/redis.log"
    remember redis
}

start_node() {
    local i="$1" name="herald-$1"
    if alive "$name"; then
        say "$name already running (pid $(cat "$PIDS/$name.pid"))"
        return
    fi
    check_port "$name" "$((WS_BASE + i))"
    check_port "$name admin" "$((ADMIN_BASE + i))"
    cat >"$STATE/$name.toml" <<EOF
# Generated by scripts/cluster.sh for the local fleet; edit the script, not this file.
listen = "127.0.0.1:$((WS_BASE + i))"
node_id = "$name"

[admin]
listen = "127.0.0.1:$((ADMIN_BASE + i))"

[relay]
kind = "redis"

[redis]
url = "redis://127.0.0.1:$REDIS_PORT/"

[shutdown]
drain_delay_ms = $DRAIN_DELAY_MS
close_window_ms = $CLOSE_WINDOW_MS
grace_ms = $GRACE_MS
EOF
    # The file alone configures the node: HERALD_* variables of this shell would override it.
    (
        for var in $(compgen -e); do
            [[ "$var" == HERALD_* ]] && unset "$var"
        done
        launch "$name" "$STATE/$name.log" "$(herald_bin)" --config "$STATE/$name.toml"
    )
}

start_haproxy() {
    if alive haproxy; then
        say "haproxy already running (pid $(cat "$PIDS/haproxy.pid"))"
        return
    fi
    check_port haproxy "$LB_PORT"
    check_port "haproxy stats" "$LB_STATS_PORT"
    local servers=() i
    for i in $(seq 1 $NODES); do
        servers+=("herald-$i=127.0.0.1:$((WS_BASE + i)),$((ADMIN_BASE + i))")
    done
    # maxconn must fit this shell's open-file limit (two fds per client, plus slack).
    local fds maxconn=()
    fds="$(ulimit -n)"
    [[ "$fds" == unlimited ]] || maxconn=(--maxconn "$((fds / 2 - 100))")
    render_haproxy "$ROOT/deploy/haproxy/haproxy.cfg" "$STATE/haproxy.cfg" \
        "127.0.0.1:$LB_PORT" "127.0.0.1:$LB_STATS_PORT" "${servers[@]}" "${maxconn[@]}"
    haproxy -c -q -f "$STATE/haproxy.cfg" || die "rendered $STATE/haproxy.cfg does not pass haproxy -c"
    launch haproxy "$STATE/haproxy.log" haproxy -db -f "$STATE/haproxy.cfg"
    wait_for 10 lb_up || die "haproxy did not start; see $STATE/haproxy.log"
}

start_nginx() {
    if alive nginx; then
        say "nginx already running (pid $(cat "$PIDS/nginx.pid"))"
        return
    fi
    check_port nginx "$LB_PORT"
    [[ "$LB_PORT" == 18080 && "$WS_BASE" == 18080 ]] ||
        die "deploy/nginx/nginx.conf is written for the default ports; unset CLUSTER_LB_PORT/CLUSTER_WS_BASE"
    mkdir -p "$STATE/nginx/logs"
    nginx -t -q -p "$STATE/nginx" -e "$STATE/nginx/logs/error.log" -c "$ROOT/deploy/nginx/nginx.conf" ||
        die "deploy/nginx/nginx.conf does not pass nginx -t"
    launch nginx "$STATE/nginx.log" nginx -p "$STATE/nginx" -e "$STATE/nginx/logs/error.log" \
        -c "$ROOT/deploy/nginx/nginx.conf" -g "daemon off;"
    wait_for 10 lb_up || die "nginx did not start; see $STATE/nginx.log"
}

cmd_up() {
    local tool
    for tool in redis-server redis-cli "$LB" curl ss cargo; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (make deps installs the test tools)"
    done
    mkdir -p "$PIDS"
    say "building herald (release)"
    (cd "$ROOT" && cargo build --release -q -p herald-gateway --bin herald) || die "build failed"
    start_redis
    local i
    for i in $(seq 1 $NODES); do
        start_node "$i"
    done
    for i in $(seq 1 $NODES); do
        wait_for 20 node_ready "$i" ||
            die "herald-$i is not ready after 20 s; see $STATE/herald-$i.log"
    done
    if [[ "$LB" == nginx ]]; then start_nginx; else start_haproxy; fi
    cat <<EOF

Herald fleet on loopback (state, logs and configs in .cluster/):
  WebSocket entry ($LB)   ws://127.0.0.1:$LB_PORT/ws
EOF
    [[ "$LB" == nginx ]] || echo "  HAProxy stats             http://127.0.0.1:$LB_STATS_PORT/stats"
    for i in $(seq 1 $NODES); do
        echo "  herald-$i                  ws://127.0.0.1:$((WS_BASE + i))/ws   admin http://127.0.0.1:$((ADMIN_BASE + i))"
    done
    cat <<EOF
  redis                     redis://127.0.0.1:$REDIS_PORT/

Try: websocat 'ws://127.0.0.1:$LB_PORT/ws?topics=demo'   (in one terminal)
     curl -s 127.0.0.1:$((ADMIN_BASE + 2))/api/publish -d '{"topic":"demo","data":"hi"}'
Stop with: make cluster-down
EOF
}

# stop NAME SECONDS: SIGTERM the recorded process, wait, SIGKILL after SECONDS.
stop() {
    local name="$1" secs="$2" pid
    [[ -f "$PIDS/$name.pid" ]] || return 0
    pid="$(cat "$PIDS/$name.pid")"
    if alive "$name"; then
        say "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + secs))
        while [[ -d "/proc/$pid" ]] && alive "$name"; do
            if [[ $SECONDS -ge $deadline ]]; then
                say "$name did not stop within ${secs}s; SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
    else
        say "$name (pid $pid) is not running"
    fi
    rm -f "$PIDS/$name.pid" "$PIDS/$name.cmd"
}

cmd_down() {
    [[ -d "$PIDS" ]] || {
        say "nothing to stop"
        return
    }
    # Nodes first, all at once: each drains (its clients get 1001, spread over the close
    # window) while the load balancer still carries the close frames; then the rest.
    local i pids=()
    for i in $(seq 1 $NODES); do
        stop "herald-$i" "$STOP_WAIT_S" &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i"; done
    stop haproxy 10
    stop nginx 10
    stop redis 10
    say "stopped"
}

cmd_status() {
    local name
    for name in redis herald-1 herald-2 herald-3 haproxy nginx; do
        if alive "$name"; then
            echo "$name: running (pid $(cat "$PIDS/$name.pid"))"
        elif [[ -f "$PIDS/$name.pid" ]]; then
            echo "$name: not running (stale record)"
        fi
    done
    local i
    for i in $(seq 1 $NODES); do
        echo "herald-$i /readyz: $(http_status 127.0.0.1 "$((ADMIN_BASE + i))" /readyz)"
    done
}

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
render-haproxy)
    shift
    render_haproxy "$@"
    ;;
*)
    echo "usage: $0 up|down|status|render-haproxy ..." >&2
    exit 64
    ;;
esac
