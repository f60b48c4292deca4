#!/usr/bin/env bash
# `make bench-shards`: what cross-node traffic costs Redis with one Redis, with the
# topics sharded over several (`redis.urls`), and on a Redis Cluster of as many masters
# (`relay.kind = "redis-cluster"`, sharded pub/sub), at the same offered load, in
# interleaved rounds. Each run starts its own redis-server(s) on free loopback ports and two herald
# nodes (publishers on node 1, subscribers on node 2), drives them with herald-loadtest
# cross-node over many topics, reads each Redis's CPU time (`INFO cpu`) before and after
# (less its idle rate, measured over IDLE_S seconds with the nodes connected just before),
# prints one line per run, and stops exactly what it started. Every run is bounded by
# DURATION plus the loadtest's drain.
#
# Environment: IDLE_S (3), SHARD_COUNTS ("1 3 c3": a number is that many independent
# Redis, `cN` a Redis Cluster of N masters without replicas), ROUNDS (3), RATE (20000 msgs/s), TOPICS (300),
# SUBSCRIBERS (300), PUBLISHERS (4), DURATION (10s), PAYLOAD (256), HERALD_BIN,
# LOADTEST_BIN (default: $CARGO_TARGET_DIR/release/...).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ "$TARGET" = /* ]] || TARGET="$ROOT/$TARGET"
HERALD_BIN="${HERALD_BIN:-$TARGET/release/herald}"
LOADTEST_BIN="${LOADTEST_BIN:-$TARGET/release/herald-loadtest}"
SHARD_COUNTS="${SHARD_COUNTS:-1 3 c3}"
ROUNDS="${ROUNDS:-3}"
RATE="${RATE:-20000}"
TOPICS="${TOPICS:-300}"
SUBSCRIBERS="${SUBSCRIBERS:-300}"
PUBLISHERS="${PUBLISHERS:-4}"
DURATION="${DURATION:-10s}"
PAYLOAD="${PAYLOAD:-256}"
IDLE_S="${IDLE_S:-3}"

say() { echo "bench-shards: $*" >&2; }
for bin in "$HERALD_BIN" "$LOADTEST_BIN"; do
    [[ -x "$bin" ]] || { say "missing $bin (make bench-shards builds it)"; exit 1; }
done
command -v redis-server >/dev/null || { say "redis-server not found"; exit 1; }

WORK="$(mktemp -d -t herald-bench-shards.XXXXXX)"
STARTED=()
stop_started() {
    local pid
    for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${STARTED[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    STARTED=()
}
trap 'stop_started; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
redis_cpu_us() {
    redis-cli -p "$1" INFO cpu | tr -d '\r' |
        awk -F: '/^used_cpu_(sys|user):/ { s += $2 } END { printf "%.0f", s * 1e6 }'
}
wait_ready() {
    for _ in $(seq 1 200); do
        [[ "$(curl -s -m 1 "$1/readyz" | jq -r .reason 2>/dev/null || true)" == ready ]] && return 0
        sleep 0.05
    done
    say "$1 not ready"
    return 1
}

run_one() {
    local shards="$1" round="$2" ports=() urls="" i kind=redis count cluster_args=()
    count="${shards#c}"
    if [[ "$shards" == c* ]]; then
        kind=redis-cluster
    fi
    for i in $(seq 1 "$count"); do
        local p
        p="$(free_port)"
        if [[ "$kind" == redis-cluster ]]; then
            mkdir -p "$WORK/cluster-$p"
            cluster_args=(--cluster-enabled yes --cluster-config-file "$WORK/cluster-$p/nodes.conf"
                --cluster-port "$(free_port)" --dir "$WORK/cluster-$p")
        fi
        redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no \
            --logfile "$WORK/redis-$p.log" "${cluster_args[@]}" >/dev/null &
        STARTED+=($!)
        ports+=("$p")
        urls="${urls:+$urls,}redis://127.0.0.1:$p/"
    done
    for p in "${ports[@]}"; do
        for _ in $(seq 1 100); do redis-cli -p "$p" PING >/dev/null 2>&1 && break; sleep 0.05; done
    done
    if [[ "$kind" == redis-cluster ]]; then
        local hosts=()
        for p in "${ports[@]}"; do hosts+=("127.0.0.1:$p"); done
        if ! redis-cli --cluster create "${hosts[@]}" --cluster-yes >"$WORK/cluster-create.log" 2>&1; then
            say "redis-cli --cluster create failed:"
            cat "$WORK/cluster-create.log" >&2
            return 1
        fi
        local formed=""
        for _ in $(seq 1 200); do
            if redis-cli -p "${ports[0]}" CLUSTER INFO | tr -d '\r' | grep -q '^cluster_state:ok'; then
                formed=1
                break
            fi
            sleep 0.05
        done
        [[ -n "$formed" ]] || { say "the Redis Cluster did not form"; return 1; }
    fi
    local ws=() admin=() pids=()
    for i in 1 2; do
        local w a
        w="$(free_port)"
        a="$(free_port)"
        HERALD_RELAY__KIND="$kind" HERALD_REDIS__URLS="$urls" HERALD_NODE_ID="bench-$i" \
            HERALD_LIMITS__PUBLISH_PER_SECOND=0 HERALD_LIMITS__PUBLISH_BYTES_PER_SECOND=0 \
            HERALD_LOG__LEVEL=warn \
            taskset -c 0 "$HERALD_BIN" --listen "127.0.0.1:$w" --admin-listen "127.0.0.1:$a" \
            >"$WORK/node-$i.log" 2>&1 &
        STARTED+=($!)
        pids+=($!)
        ws+=("ws://127.0.0.1:$w/ws")
        admin+=("http://127.0.0.1:$a")
    done
    for a in "${admin[@]}"; do wait_ready "$a"; done
    # Idle cost first (heartbeats, canaries, Redis's own cron), to subtract from the run.
    local idle0=() before=() after=()
    for p in "${ports[@]}"; do idle0+=("$(redis_cpu_us "$p")"); done
    sleep "$IDLE_S"
    for p in "${ports[@]}"; do before+=("$(redis_cpu_us "$p")"); done
    local t0 t1
    t0="$(date +%s%N)"
    taskset -c 1 "$LOADTEST_BIN" cross-node -u "${ws[0]},${ws[1]}" \
        --admin "${admin[0]},${admin[1]}" --server-pid "${pids[0]},${pids[1]}" \
        -s "$SUBSCRIBERS" -p "$PUBLISHERS" -t "$TOPICS" --distribution uniform \
        -r "$RATE" -d "$DURATION" --payload-size "$PAYLOAD" -q --json >"$WORK/report.json"
    for p in "${ports[@]}"; do after+=("$(redis_cpu_us "$p")"); done
    t1="$(date +%s%N)"
    local total=0 max=0 per="" wall_us=$(((t1 - t0) / 1000))
    for i in "${!ports[@]}"; do
        local idle_us=$(((before[i] - idle0[i]) * wall_us / (IDLE_S * 1000000)))
        local d=$((after[i] - before[i] - idle_us))
        ((d < 0)) && d=0
        total=$((total + d))
        ((d > max)) && max=$d
        per="${per:+$per/}$((d / 1000))"
    done
    jq -r --arg shards "$shards" --arg round "$round" --arg total "$total" --arg max "$max" --arg per "$per" '
        .messages as $m | .latency_us as $l |
        [$round, $shards, ($m.published), ($m.published_per_s | floor), ($m.lost), ($m.duplicates),
         ($m.out_of_order), ($l.p50 / 1000), ($l.p99 / 1000),
         (($total | tonumber) / 1000 | floor), $per,
         (($total | tonumber) / $m.published | . * 100 | round / 100),
         (($max | tonumber) / $m.published | . * 100 | round / 100)]
        | @tsv' "$WORK/report.json"
    stop_started
}

printf 'round\tshards\tpublished\tmsg/s\tlost\tdup\tooo\tp50_ms\tp99_ms\tredis_cpu_ms\tper_shard_ms\tredis_us_per_msg\tbusiest_shard_us_per_msg\n'
for round in $(seq 1 "$ROUNDS"); do
    for shards in $SHARD_COUNTS; do
        run_one "$shards" "$round"
    done
done
