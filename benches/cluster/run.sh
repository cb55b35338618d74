#!/usr/bin/env bash
# Cluster mode against a single node, in one command (issue 13).
#
#   benches/cluster/run.sh
#
# Starts a redis-server (appendonly yes, appendfsync always, in WORK/redis),
# the benchmark upstream of benches/compare (examples/bench_upstream.rs), three
# release keygate nodes on that Redis and, in turns with the cluster's first
# node, a single keygate over its own redb store holding the same orgs (moved
# into the cluster with `keygate export` and `keygate import`). It measures:
#
#   1. throughput: wrk against the cluster's node 1 and against the single node,
#      the same orgs and paths (benches/compare/spread.lua), taking turns ROUNDS
#      times; the report gives each median and the ratio cluster / single
#      (goal: at least 0.95);
#   2. a confirmed key change with three nodes: LAT_N regenerates through node 1,
#      one after another, each timed by curl from send to answer (the answer
#      comes once every node serves the new key); p50, p99 and max, with the
#      nodes idle and again while wrk loads nodes 2 and 3 (goal: p99 < 10 ms);
#   3. threshold accuracy: one org with threshold_calls = TH_CALLS, all three
#      nodes loaded at once until its key is disabled; forwarded = the 2xx
#      answers wrk counted (every request drains, none is cut off in flight);
#      must be at most TH_CALLS (goal: exactly), and the key disabled on all;
#   4. rate accuracy: one org with rate_per_sec = RATE, burst = RATE, the three
#      nodes loaded evenly for RATE_SECS; achieved = (forwarded - burst) / RATE_SECS.
#
# The report goes to stdout and benches/cluster/results/<timestamp>.md.
# Everything listens on 127.0.0.1; every run is bounded in time.
#
# Settings (environment):
#   ORGS=1000           orgs in the stores (spread over by the throughput runs)
#   DURATION=10 WARMUP=2 ROUNDS=3 CONNS=64    the throughput cells (one wrk thread)
#   LAT_N=200           regenerates per latency run
#   TH_CALLS=1000 TH_SECS=5 TH_CONNS=16       the threshold run (per node)
#   RATE=50 RATE_SECS=10 RATE_CONNS=4         the rate run (per node)
#   LEASE_MS=3000       cluster.lease_ms of the nodes
#   WORKERS=1           keygate --workers of the measured node (node 1, or the
#                       single node), pinned to CORE_PROXY; the other nodes,
#                       Redis, the upstream and wrk share CORE_GEN
#   SKIP_INSTALL=1 SKIP_BUILD=1
#   WORK=benches/cluster/work
#   PORT_UP=18500 REDIS_PORT=18579 PORT_SINGLE=18580 (admin: +1)
#   PORT_NODE=18590     node i's proxy is PORT_NODE + 2i, its admin one more
#   CORE_GEN=0 CORE_PROXY=1
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
COMPARE=$ROOT/benches/compare

ORGS=${ORGS:-1000}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
LAT_N=${LAT_N:-200}
TH_CALLS=${TH_CALLS:-1000}
TH_SECS=${TH_SECS:-5}
TH_CONNS=${TH_CONNS:-16}
RATE=${RATE:-50}
RATE_SECS=${RATE_SECS:-10}
RATE_CONNS=${RATE_CONNS:-4}
LEASE_MS=${LEASE_MS:-3000}
WORKERS=${WORKERS:-1}
WORK=${WORK:-$HERE/work}
PORT_UP=${PORT_UP:-18500}
REDIS_PORT=${REDIS_PORT:-18579}
PORT_SINGLE=${PORT_SINGLE:-18580}
PORT_NODE=${PORT_NODE:-18590}
CORE_GEN=${CORE_GEN:-0}
CORE_PROXY=${CORE_PROXY:-1}

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$HERE/results
REPORT=$RESULTS/$STAMP.md
mkdir -p "$WORK/logs" "$RESULTS"
PATH=$PATH:/usr/sbin:/sbin

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
kv() { tr ' ' '\n' <<<"$2" | awk -F= -v k="$1" '$1 == k { print $2; exit }'; }

install_tools() {
    local need=()
    command -v wrk >/dev/null || need+=(wrk)
    command -v curl >/dev/null || need+=(curl)
    command -v redis-server >/dev/null || need+=(redis-server)
    command -v taskset >/dev/null || need+=(util-linux)
    if ((${#need[@]})); then
        log "installing ${need[*]} from the system's packages"
        apt-get update -qq
        # RUNLEVEL=1: do not start the packages' system services.
        RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
}

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
KG=$TARGET_DIR/release/keygate
EX=$TARGET_DIR/release/examples
build() {
    log "building keygate and the benchmark upstream (release)"
    (cd "$ROOT" && cargo build --release --bin keygate --example bench_upstream)
}

# ------------------------------------------------------------- processes ---
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget_pid() {
    local kept=() i
    for i in "${PIDS[@]}"; do [[ $i == "$1" ]] || kept+=("$i"); done
    PIDS=("${kept[@]}")
}

stop_pid() {
    local p=$1 i
    kill -TERM "$p" 2>/dev/null || true
    for i in $(seq 150); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    forget_pid "$p"
}

port_free() {
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        log "port $1 is already taken (a leftover process?); stop it or move the port"
        exit 1
    fi
}

# Waits (at most $3 s) until something answers HTTP on port $1; $2 is its pid.
wait_http() {
    local port=$1 pid=$2 limit=${3:-60} code until=$(($(date +%s) + ${3:-60}))
    while :; do
        code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$port/" || true)
        [[ $code != 000 && -n $code ]] && return 0
        kill -0 "$pid" 2>/dev/null || { log "the process on port $port exited; see $WORK/logs"; return 1; }
        (($(date +%s) <= until)) || { log "nothing answers on port $port after ${limit}s"; return 1; }
        sleep 0.02
    done
}

TOKEN=
TOKEN_SHA=
make_token() {
    if [[ ! -s $WORK/provider-token ]]; then
        (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/provider-token")
    fi
    TOKEN=$(<"$WORK/provider-token")
    TOKEN_SHA=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
}

# orgs.tsv: org-0 .. org-(ORGS-1) with fixed 12-character keys.
gen_orgs() {
    awk -v n="$ORGS" 'BEGIN {
        srand(20261130)
        a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        for (i = 0; i < n; i++) {
            k = ""
            for (j = 0; j < 12; j++) k = k substr(a, int(rand() * 62) + 1, 1)
            printf "org-%d\t%s\n", i, k
        }
    }' >"$WORK/orgs.tsv"
}

# config OUT PROXY_PORT ADMIN_PORT STORE [cluster]: a keygate config; limits
# never reached on the throughput path.
config() {
    local out=$1 proxy=$2 admin=$3 store=$4 cluster=${5:-}
    {
        printf '[proxy]\nlisten = "127.0.0.1:%s"\nupstream = "http://127.0.0.1:%s"\n\n' "$proxy" "$PORT_UP"
        printf '[admin]\nlisten = "127.0.0.1:%s"\nprovider_token_sha256 = "%s"\n\n' "$admin" "$TOKEN_SHA"
        printf '[store]\npath = "%s"\n\n' "$store"
        printf '[limits]\nrate_per_sec = 10000000\nburst = 10000000\nthreshold_calls = 4000000000\n'
        if [[ -n $cluster ]]; then
            printf '\n[cluster]\nredis_url = "redis://127.0.0.1:%s/0"\nname = "bench"\nlease_ms = %s\n' \
                "$REDIS_PORT" "$LEASE_MS"
        fi
    } >"$out"
}

UPSTREAM_PID=
start_upstream() {
    port_free "$PORT_UP"
    taskset -c "$CORE_GEN" "$EX/bench_upstream" "127.0.0.1:$PORT_UP" 12 2>"$WORK/logs/upstream.log" &
    UPSTREAM_PID=$!
    PIDS+=("$UPSTREAM_PID")
    wait_http "$PORT_UP" "$UPSTREAM_PID" 30
}

REDIS_PID=
start_redis() {
    port_free "$REDIS_PORT"
    rm -rf "$WORK/redis"
    mkdir -p "$WORK/redis"
    taskset -c "$CORE_GEN" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
        --appendonly yes --appendfsync always --save "" --dir "$WORK/redis" \
        --daemonize no >"$WORK/logs/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    local i
    for i in $(seq 500); do
        [[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]] && return 0
        sleep 0.02
    done
    log "redis-server did not answer PING"
    exit 1
}

# start_kg CONFIG LOGNAME CORE WORKERS -> sets KG_PID; waits for its admin port $5.
KG_PID=
start_kg() {
    local cfg=$1 name=$2 core=$3 workers=$4 admin=$5
    KEYGATE_LOG=warn taskset -c "$core" "$KG" serve --config "$cfg" --workers "$workers" \
        2>>"$WORK/logs/$name.log" &
    KG_PID=$!
    PIDS+=("$KG_PID")
    wait_http "$admin" "$KG_PID" 60
}

admin() { # METHOD PORT PATH [JSON] -> body; fails on a non-2xx
    local method=$1 port=$2 path=$3 body=${4:-}
    local args=(-sS -f -X "$method" -H "authorization: Bearer $TOKEN" "http://127.0.0.1:$port$path")
    [[ -n $body ]] && args+=(-H 'content-type: application/json' -d "$body")
    curl "${args[@]}"
}

key_of() { grep -o '"key":"[A-Za-z0-9]*"' | head -1 | cut -d'"' -f4; }

# wrk_cell PORT LIST N SECS CONNS [drain] -> the spread.lua summary line
wrk_cell() {
    local port=$1 list=$2 n=$3 secs=$4 conns=$5 drain=${6:-}
    if [[ -n $drain ]]; then
        SPREAD_DRAIN_AFTER=$secs taskset -c "$CORE_GEN" wrk -t1 -c"$conns" -d"$((secs + 2))s" \
            -s "$COMPARE/spread.lua" "http://127.0.0.1:$port" -- "$list" "$n" good 2>&1 | grep '^wrk ' || true
    else
        taskset -c "$CORE_GEN" wrk -t1 -c"$conns" -d"${secs}s" \
            -s "$COMPARE/spread.lua" "http://127.0.0.1:$port" -- "$list" "$n" good 2>&1 | grep '^wrk ' || true
    fi
}

rps_of() { # wrk line -> requests per second of 2xx answers
    local line=$1 req dur err
    req=$(kv requests "$line")
    dur=$(kv duration_us "$line")
    err=$(kv errors_status "$line")
    awk -v r="${req:-0}" -v d="${dur:-1}" -v e="${err:-0}" 'BEGIN { printf "%.0f", (r - e) / (d / 1e6) }'
}

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print 0 }'; }

# p QUANTILE < numbers (sorted here)
pct() { sort -n | awk -v q="$1" '{ v[NR] = $1 } END { i = int(q * NR + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR; print v[i] }'; }

node_proxy() { echo $((PORT_NODE + 2 * $1)); }
node_admin() { echo $((PORT_NODE + 2 * $1 + 1)); }

# ------------------------------------------------------------------ main ---
main() {
    [[ ${SKIP_INSTALL:-0} == 1 ]] || install_tools
    [[ ${SKIP_BUILD:-0} == 1 ]] || build
    [[ -x $KG && -x $EX/bench_upstream ]] || { log "missing binaries under $TARGET_DIR/release"; exit 1; }
    make_token
    gen_orgs
    local list=$WORK/orgs.tsv

    log "the single node's store: $ORGS orgs imported"
    local single_cfg=$WORK/single.toml store=$WORK/single.redb
    rm -f "$store"
    config "$single_cfg" "$PORT_SINGLE" "$((PORT_SINGLE + 1))" "$store"
    "$KG" import --config "$single_cfg" "$list" 2>>"$WORK/logs/import.log"
    "$KG" export --config "$single_cfg" >"$WORK/export.jsonl" 2>>"$WORK/logs/import.log"

    start_upstream
    start_redis
    local i cfgs=()
    for i in 1 2 3; do
        config "$WORK/node$i.toml" "$(node_proxy "$i")" "$(node_admin "$i")" "$WORK/node$i.redb" cluster
        cfgs+=("$WORK/node$i.toml")
    done
    log "moving the orgs into the cluster (keygate import of the export)"
    "$KG" import --config "${cfgs[0]}" "$WORK/export.jsonl" 2>>"$WORK/logs/import.log"
    local node_pids=()
    for i in 1 2 3; do
        local core=$CORE_GEN workers=1
        [[ $i == 1 ]] && { core=$CORE_PROXY; workers=$WORKERS; }
        port_free "$(node_proxy "$i")"
        start_kg "${cfgs[$((i - 1))]}" "node$i" "$core" "$workers" "$(node_admin "$i")"
        node_pids+=("$KG_PID")
    done

    # 1. Throughput, taking turns.
    local r cluster_rps=() single_rps=() line
    for r in $(seq "$ROUNDS"); do
        log "throughput round $r of $ROUNDS: cluster node 1"
        wrk_cell "$(node_proxy 1)" "$list" "$ORGS" "$WARMUP" "$CONNS" >/dev/null
        line=$(wrk_cell "$(node_proxy 1)" "$list" "$ORGS" "$DURATION" "$CONNS")
        cluster_rps+=("$(rps_of "$line")")
        log "  $line"
        log "throughput round $r of $ROUNDS: single node"
        port_free "$PORT_SINGLE"
        start_kg "$single_cfg" single "$CORE_PROXY" "$WORKERS" "$((PORT_SINGLE + 1))"
        local single_pid=$KG_PID
        wrk_cell "$PORT_SINGLE" "$list" "$ORGS" "$WARMUP" "$CONNS" >/dev/null
        line=$(wrk_cell "$PORT_SINGLE" "$list" "$ORGS" "$DURATION" "$CONNS")
        single_rps+=("$(rps_of "$line")")
        log "  $line"
        stop_pid "$single_pid"
    done
    local c_med s_med ratio
    c_med=$(printf '%s\n' "${cluster_rps[@]}" | median)
    s_med=$(printf '%s\n' "${single_rps[@]}" | median)
    ratio=$(awk -v c="$c_med" -v s="$s_med" 'BEGIN { printf "%.3f", (s > 0) ? c / s : 0 }')

    # 2. Confirmed key change latency.
    admin POST "$(node_admin 1)" /v1/orgs '{"org":"lat"}' >/dev/null
    local idle loaded
    idle=$(regen_times lat)
    log "latency under load: wrk on nodes 2 and 3 meanwhile"
    # taskset execs wrk, so each pid is wrk's own; both end by themselves
    # after 120 s at the latest.
    local loaders=()
    for i in 2 3; do
        taskset -c "$CORE_GEN" wrk -t1 -c16 -d120s -s "$COMPARE/spread.lua" \
            "http://127.0.0.1:$(node_proxy "$i")" -- "$list" "$ORGS" good >/dev/null 2>&1 &
        loaders+=($!)
        PIDS+=($!)
    done
    sleep 1
    loaded=$(regen_times lat)
    for i in "${loaders[@]}"; do stop_pid "$i"; done

    # 3. Threshold accuracy.
    log "threshold $TH_CALLS across three loaded nodes"
    local th_key
    th_key=$(admin POST "$(node_admin 1)" /v1/orgs \
        "{\"org\":\"th\",\"limits\":{\"threshold_calls\":$TH_CALLS,\"threshold_window_secs\":3600,\"rate_per_sec\":10000000,\"burst\":10000000}}" | key_of)
    printf 'th\t%s\n' "$th_key" >"$WORK/th.tsv"
    local forwarded statuses
    forwarded=$(three_loads "$WORK/th.tsv" "$TH_SECS" "$TH_CONNS")
    statuses=$(for i in 1 2 3; do admin GET "$(node_admin "$i")" /v1/orgs/th/key |
        grep -o '"status":"[a-z]*"' | cut -d'"' -f4; done | tr '\n' ' ')

    # 4. Rate accuracy.
    log "rate $RATE/s across three evenly loaded nodes for ${RATE_SECS}s"
    local rt_key
    rt_key=$(admin POST "$(node_admin 1)" /v1/orgs \
        "{\"org\":\"rt\",\"limits\":{\"rate_per_sec\":$RATE,\"burst\":$RATE,\"threshold_calls\":4000000000}}" | key_of)
    printf 'rt\t%s\n' "$rt_key" >"$WORK/rt.tsv"
    local rate_fwd achieved
    rate_fwd=$(three_loads "$WORK/rt.tsv" "$RATE_SECS" "$RATE_CONNS")
    achieved=$(awk -v f="$rate_fwd" -v b="$RATE" -v s="$RATE_SECS" 'BEGIN { printf "%.1f", (f - b) / s }')

    for i in "${node_pids[@]}"; do stop_pid "$i"; done
    stop_pid "$REDIS_PID"
    stop_pid "$UPSTREAM_PID"

    {
        echo "# keygate cluster mode, $STAMP"
        echo
        echo "$(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), Redis $(redis-server --version | awk '{ sub(/^v=/, "", $3); print $3 }'), lease_ms $LEASE_MS, $ORGS orgs, commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo ?)"
        echo
        echo "| measurement | result |"
        echo "|---|---|"
        echo "| throughput, cluster node 1 (median of $ROUNDS x ${DURATION}s, $CONNS conns, --workers $WORKERS) | $c_med req/s (rounds: ${cluster_rps[*]}) |"
        echo "| throughput, single node, same run | $s_med req/s (rounds: ${single_rps[*]}) |"
        echo "| ratio cluster / single (goal >= 0.95) | $ratio |"
        echo "| confirmed regenerate, 3 nodes idle, $LAT_N in a row: p50 / p99 / max | $idle |"
        echo "| confirmed regenerate, nodes 2 and 3 under wrk: p50 / p99 / max | $loaded |"
        echo "| threshold $TH_CALLS, 3 nodes x $TH_CONNS conns for ${TH_SECS}s: forwarded | $forwarded (key status on nodes 1 2 3: $statuses) |"
        echo "| rate $RATE/s burst $RATE, 3 nodes x $RATE_CONNS conns for ${RATE_SECS}s: forwarded, achieved rate | $rate_fwd, $achieved/s |"
    } | tee "$REPORT"
    log "report: $REPORT"
}

# regen_times ORG -> "p50 / p99 / max ms" of LAT_N regenerates through node 1.
regen_times() {
    local org=$1 i t times=$WORK/regen-times.txt
    : >"$times"
    for i in $(seq "$LAT_N"); do
        t=$(curl -sS -o /dev/null -w '%{http_code} %{time_total}' -X POST \
            -H "authorization: Bearer $TOKEN" "http://127.0.0.1:$(node_admin 1)/v1/orgs/$org/key/regenerate")
        [[ ${t%% *} == 200 ]] || { log "regenerate $i answered ${t%% *}"; continue; }
        echo "${t#* }" >>"$times"
    done
    local p50 p99 max
    p50=$(pct 0.50 <"$times")
    p99=$(pct 0.99 <"$times")
    max=$(pct 1 <"$times")
    awk -v a="$p50" -v b="$p99" -v c="$max" -v n="$(wc -l <"$times")" \
        'BEGIN { printf "%.2f / %.2f / %.2f ms (%d answered 200)", a * 1000, b * 1000, c * 1000, n }'
}

# three_loads LIST SECS CONNS -> 2xx answers of three drained wrk runs, one per node, at once.
three_loads() {
    local list=$1 secs=$2 conns=$3 i outs=() pids=() total=0
    for i in 1 2 3; do
        outs+=("$WORK/load-$i.txt")
        wrk_cell "$(node_proxy "$i")" "$list" 1 "$secs" "$conns" drain >"$WORK/load-$i.txt" &
        pids+=($!)
    done
    wait "${pids[@]}"
    for i in "${outs[@]}"; do
        local line req err
        line=$(cat "$i")
        log "  $line"
        req=$(kv requests "$line")
        err=$(kv errors_status "$line")
        total=$((total + ${req:-0} - ${err:-0}))
    done
    echo "$total"
}

main "$@"
