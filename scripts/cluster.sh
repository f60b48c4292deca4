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
#                                [--source ADDR]
#                                write a copy of IN whose public and stats bind lines and
#                                `server` lines are rewritten, and optionally the check
#                                timings, maxconn and the address HAProxy connects to the
#                                nodes from (used by `up` and by the tests)
#
# Fixed ports (override with the environment variables in brackets):
#   HAProxy (public WebSocket entry) 127.0.0.1:18080 [CLUSTER_LB_PORT], stats 127.0.0.1:18404
#   [CLUSTER_LB_STATS_PORT]; nodes 127.0.0.1:18081-18083 [CLUSTER_WS_BASE=18080], admin
#   127.0.0.1:19091-19093 [CLUSTER_ADMIN_BASE=19090]; redis 127.0.0.1:16379 [CLUSTER_REDIS_PORT].
#   `up` refuses to start a component whose port is held by anything it did not start.
#
# `up` and `down` are idempotent: `up` keeps running components and starts missing ones;
# `down` signals only pids recorded in .cluster/pids whose start time still matches the
# process that was started (a recycled pid is never signalled), waits, removes the records.
# Set CLUSTER_LB=nginx to put nginx (deploy/nginx/nginx.conf, rendered the same way) in
# front instead of HAProxy.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# haproxy and nginx live in /usr/sbin, which is not on a normal user's PATH on Debian.
PATH="$PATH:/usr/sbin:/sbin"
STATE="$ROOT/.cluster"
PIDS="$STATE/pids"
NODES=3
LB_PORT="${CLUSTER_LB_PORT:-18080}"
LB_STATS_PORT="${CLUSTER_LB_STATS_PORT:-18404}"
WS_BASE="${CLUSTER_WS_BASE:-18080}"
ADMIN_BASE="${CLUSTER_ADMIN_BASE:-19090}"
REDIS_PORT="${CLUSTER_REDIS_PORT:-16379}"
LB="${CLUSTER_LB:-haproxy}"
# HAProxy connects to the nodes from this loopback address and sends each client's address
# in a PROXY protocol v2 header; the nodes trust this address only, so a client that
# connects to a node directly (from 127.0.0.1) is served as itself, without a header.
HAPROXY_SOURCE=127.0.0.2
# Local drain settings: HAProxy checks every 1 s (fastinter 250 ms, fall 2), so a draining
# node leaves the pool within ~1.5 s; 2 s of drain delay covers that.
DRAIN_DELAY_MS=2000
CLOSE_WINDOW_MS=5000
GRACE_MS=5000
# How long `down` waits for a node before SIGKILL: the drain's worst case (delay + close
# window + 2 x grace) plus a margin.
STOP_WAIT_S=$(((DRAIN_DELAY_MS + CLOSE_WINDOW_MS + 2 * GRACE_MS) / 1000 + 5))

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
    [[ $# -ge 5 ]] || die "usage: render-haproxy IN OUT LB_ADDR STATS_ADDR NAME=HOST:PORT,ADMIN_PORT... [--check PARAMS] [--maxconn N] [--source ADDR]"
    local in="$1" out="$2" lb="$3" stats="$4"
    shift 4
    local servers=() check="" maxconn="" source=""
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
        --source)
            source="${2:?--source needs a value}"
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
    awk -v lb="$lb" -v stats="$stats" -v spec="$spec" -v check="$check" -v maxconn="$maxconn" -v source="$source" '
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
                    print "    server " kv[1] " " addr[1] " check port " addr[2] (source != "" ? " source " source : "")
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
# Process records: .cluster/pids/NAME.pid holds the pid, NAME.start the process's start time
# (field 22 of /proc/PID/stat, in clock ticks since boot). A pid whose start time differs is
# a recycled pid, never ours. (Command lines are no proof: redis-server and nginx rewrite
# their own titles.)

# start_time_of PID: empty when the process is gone or a zombie (exited, not yet reaped).
start_time_of() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
    # Fields after the command name, which is in parentheses and may contain spaces:
    # state is the first, start time the 20th.
    stat="${stat##*) }"
    awk '$1 != "Z" { print $20 }' <<<"$stat"
}

# alive NAME: the recorded process runs and is still the one we started.
alive() {
    local name="$1" pid
    [[ -f "$PIDS/$name.pid" && -f "$PIDS/$name.start" ]] || return 1
    pid="$(cat "$PIDS/$name.pid")"
    [[ -n "$pid" && -d "/proc/$pid" ]] || return 1
    local started
    started="$(start_time_of "$pid")"
    [[ -n "$started" && "$started" == "$(cat "$PIDS/$name.start")" ]]
}

# port_busy PORT: something listens on 127.0.0.1:PORT (or on every address).
port_busy() {
    ss -Hltn "( sport = :$1 )" 2>/dev/null | grep -q .
}

# preflight: every port a component that is not running yet needs must be free, before
# anything starts (so a refusal leaves nothing half-started).
preflight() {
    local wanted=() name port i busy=()
    alive redis || wanted+=("redis=$REDIS_PORT")
    for i in $(seq 1 $NODES); do
        alive "herald-$i" || wanted+=("herald-$i=$((WS_BASE + i))" "herald-$i(admin)=$((ADMIN_BASE + i))")
    done
    if ! alive "$LB"; then
        wanted+=("$LB=$LB_PORT")
        [[ "$LB" == nginx ]] || wanted+=("haproxy(stats)=$LB_STATS_PORT")
    fi
    for name in "${wanted[@]}"; do
        port="${name##*=}"
        port_busy "$port" && busy+=("$port (for ${name%=*}): $(ss -Hltnp "( sport = :$port )" 2>/dev/null | grep -o 'users:.*' | head -1)")
    done
    if [[ ${#busy[@]} -gt 0 ]]; then
        printf 'cluster: port %s\n' "${busy[@]}" >&2
        die "these ports are held by processes this script did not start; free them or choose other ports (CLUSTER_* variables, see the top of scripts/cluster.sh)"
    fi
}

# launch NAME LOG PROG ARGS...: start PROG in its own session (so a Ctrl-C in this terminal
# does not reach it) and record it.
launch() {
    local name="$1" log="$2"
    shift 2
    # No job control in a script, so the background child is not a process-group leader:
    # setsid execs in place and $! is the program itself (exec keeps pid and start time).
    setsid "$@" </dev/null >>"$log" 2>&1 &
    local pid=$!
    echo "$pid" >"$PIDS/$name.pid"
    start_time_of "$pid" >"$PIDS/$name.start"
}

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
    mkdir -p "$STATE/redis"
    launch redis "$STATE/redis.log" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
        --save "" --appendonly no --dir "$STATE/redis"
    wait_for 10 redis_up || die "redis-server did not answer PING; see $STATE/redis.log"
}

start_node() {
    local i="$1" name="herald-$1"
    if alive "$name"; then
        say "$name already running (pid $(cat "$PIDS/$name.pid"))"
        return
    fi
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

[proxy]
# HAProxy (send-proxy-v2 from $HAPROXY_SOURCE) names each client's address.
trusted = ["$HAPROXY_SOURCE"]
proxy_protocol = true

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
        export NO_COLOR=1 # plain log files
        launch "$name" "$STATE/$name.log" "$(herald_bin)" --config "$STATE/$name.toml"
    )
}

start_haproxy() {
    if alive haproxy; then
        say "haproxy already running (pid $(cat "$PIDS/haproxy.pid"))"
        return
    fi
    local servers=() i
    for i in $(seq 1 $NODES); do
        servers+=("herald-$i=127.0.0.1:$((WS_BASE + i)),$((ADMIN_BASE + i))")
    done
    # maxconn must fit this shell's open-file limit (two fds per client, plus slack).
    local fds maxconn=()
    fds="$(ulimit -n)"
    [[ "$fds" == unlimited ]] || maxconn=(--maxconn "$((fds / 2 - 100))")
    render_haproxy "$ROOT/deploy/haproxy/haproxy.cfg" "$STATE/haproxy.cfg" \
        "127.0.0.1:$LB_PORT" "127.0.0.1:$LB_STATS_PORT" "${servers[@]}" "${maxconn[@]}" --source "$HAPROXY_SOURCE"
    haproxy -c -q -f "$STATE/haproxy.cfg" || die "rendered $STATE/haproxy.cfg does not pass haproxy -c"
    launch haproxy "$STATE/haproxy.log" haproxy -db -f "$STATE/haproxy.cfg"
    wait_for 10 lb_up || die "haproxy did not start; see $STATE/haproxy.log"
}

start_nginx() {
    if alive nginx; then
        say "nginx already running (pid $(cat "$PIDS/nginx.pid"))"
        return
    fi
    # deploy/nginx/nginx.conf is written for the default ports; move them if asked to.
    local sed_args=(-e "s/listen 127.0.0.1:18080;/listen 127.0.0.1:$LB_PORT;/") i
    for i in $(seq 1 $NODES); do
        sed_args+=(-e "s/server 127.0.0.1:$((18080 + i)) /server 127.0.0.1:$((WS_BASE + i)) /")
    done
    sed "${sed_args[@]}" "$ROOT/deploy/nginx/nginx.conf" >"$STATE/nginx.conf"
    mkdir -p "$STATE/nginx/logs"
    nginx -t -q -p "$STATE/nginx" -e "$STATE/nginx/logs/error.log" -c "$STATE/nginx.conf" ||
        die "$STATE/nginx.conf does not pass nginx -t"
    launch nginx "$STATE/nginx.log" nginx -p "$STATE/nginx" -e "$STATE/nginx/logs/error.log" \
        -c "$STATE/nginx.conf" -g "daemon off;"
    wait_for 10 lb_up || die "nginx did not start; see $STATE/nginx.log"
}

cmd_up() {
    local tool
    for tool in redis-server redis-cli "$LB" curl ss cargo; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (make deps installs the test tools)"
    done
    mkdir -p "$PIDS"
    preflight
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
    echo
    echo "Herald fleet on loopback (pids, logs and configs in .cluster/):"
    printf '  %-18s %s\n' "entry ($LB)" "ws://127.0.0.1:$LB_PORT/ws"
    [[ "$LB" == nginx ]] || printf '  %-18s %s\n' "haproxy stats" "http://127.0.0.1:$LB_STATS_PORT/stats"
    for i in $(seq 1 $NODES); do
        printf '  %-18s %-28s admin http://127.0.0.1:%s\n' "herald-$i" "ws://127.0.0.1:$((WS_BASE + i))/ws" "$((ADMIN_BASE + i))"
    done
    printf '  %-18s %s\n' "redis" "redis://127.0.0.1:$REDIS_PORT/"
    cat <<EOF

Subscribe through the load balancer:  websocat 'ws://127.0.0.1:$LB_PORT/ws?topics=demo'
Publish on another node:              curl -s 127.0.0.1:$((ADMIN_BASE + 2))/api/publish \\
                                        -H 'Content-Type: application/json' -d '{"topic":"demo","data":"hi"}'
Drain one node:                       kill -TERM \$(cat .cluster/pids/herald-1.pid)
Stop everything:                      make cluster-down
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
        while alive "$name"; do
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
    rm -f "$PIDS/$name.pid" "$PIDS/$name.start"
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
