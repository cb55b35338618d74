#!/usr/bin/env bash
# keygate against nginx and HAProxy doing the same job, in one command (issue 4).
#
#   benches/compare/run.sh              # the full run (about 20 to 30 minutes)
#   QUICK=1 benches/compare/run.sh      # a smoke run of about 3 minutes
#
# It installs what is missing (wrk, nginx, HAProxy from the system's packages),
# builds keygate and its benchmark helpers (examples/bench_upstream.rs,
# examples/openloop.rs, examples/rotation.rs) in release mode, generates org
# lists with known keys and imports them, renders the peers' configs from the
# templates beside this script, measures, and writes a markdown report to
# benches/compare/results/<timestamp>.md (with the raw numbers beside it, .tsv).
#
# Topology (2 cores): the load generator and the upstream are pinned to core 0,
# the proxy under test to core 1 (keygate with --workers 1, nginx with one
# worker, HAProxy with one thread). "kg-multi" is keygate with its default
# runtime (one current-thread worker per core), not pinned; "kg-mt" is keygate
# with --runtime multi-thread (tokio's work-stealing runtime, one thread per
# core), not pinned, and "kg-mt1" the same with --workers 1, pinned as "kg" is.
# Everything listens on 127.0.0.1 only; every load run is bounded in time. See
# BENCHMARKS.md for the method.
#
# Settings (environment):
#   DURATION=5         seconds of each closed-loop cell (a trailing "s" is fine)
#   WARMUP=1           seconds of unmeasured load before each cell
#   ROUNDS=3           times each closed-loop cell is measured, the targets
#                      taking turns; the report shows the median round
#   ORGS="1 1000 100000 1000000"   org counts
#   TARGETS="direct kg-bare nginx-bare haproxy-bare kg kg-multi nginx haproxy"
#   PATHS="allowed 401 429"
#   CONNS=64           wrk connections (one wrk thread)
#   BODY_BYTES=12      bytes of the upstream's answer body: 12 is {"ok":true}
#                      and a newline; a larger size pads it (13 to 20 cannot)
#   BARE_ORGS=1000     orgs the org-independent cells spread their paths over
#   OPEN_ORGS          org count of the open-loop run (100000 when measured,
#                      else the largest of ORGS)
#   OPEN_RATE          requests/s of the open-loop run (default: 50% of nginx's
#                      allowed-path req/s at OPEN_ORGS)
#   OPEN_DURATION=20   OPEN_WARMUP=2   OPEN_CONNS=32
#   OPEN_TICK_US=100   the open-loop pacer wakes at most this often
#   OPEN_TARGETS="direct kg kg-bare nginx haproxy"
#   OPEN_ADMIN_MS      when set, every keygate job target of the open loop
#                      runs a second time (as TARGET+admin) while an admin
#                      mutation (POST /v1/orgs/churn/key/regenerate, an org
#                      outside the load, durable before its answer) runs
#                      every OPEN_ADMIN_MS milliseconds, from core 0
#   OPEN_ADMIN_CALL=regenerate   or "health": the same driver calling
#                      GET /healthz, which changes nothing: what the driver
#                      alone costs the tail
#   OPEN_ADMIN_DRIVER=persistent   the driver: one process on one keep-alive
#                      connection (examples/admin_driver.rs); "curl" is the
#                      first one, a curl (and four other processes) per call
#   STARTUP_ORGS       org count of keygate's start-up measurement (default
#                      1000000, or the largest of ORGS in QUICK mode)
#   STARTUP_RUNS=3
#   ROTATION_SECS=30   ROTATION_ORGS=8   ROTATION_PERIOD_MS=100
#   ROTATION_WORKERS   keygate --workers for the rotation run (default: its
#                      default runtime)
#   STAGES="closed open startup rotation instructions"   which parts to run
#   INSTR_TARGETS="kg-bare nginx-bare haproxy-bare kg nginx haproxy"
#   INSTR_PATHS="allowed 401"   INSTR_SECS=5
#   INSTR_COUNT_FLUSH_MS=3600000   keygate's store.count_flush_ms in the
#                      instructions stage: the saver writes every changed
#                      window each period (millions of instructions in redb,
#                      per second, not per request), so it is kept out of the
#                      count; KG_COUNT_FLUSH_MS (1000) elsewhere
#   INSTR_ROUNDS=1     times each target is counted, the targets taking turns
#                      (the report shows the median and the range)
#   INSTR_WARM_MAX=120 INSTR_WARM_QUIET=3   the warm-up's rounds of 2 s go on
#                      until the proxy has opened CONNS upstream connections
#                      or INSTR_WARM_QUIET rounds in a row opened none, for at
#                      most INSTR_WARM_MAX seconds
#                      the instructions stage: each proxy under valgrind's
#                      callgrind, user-space instructions per request at
#                      BARE_ORGS orgs (a count, not a time: the same on a
#                      busy machine)
#   KG_BEFORE_BIN      a second keygate binary (an earlier build) measured in
#                      the same run: adds the targets kg-before and
#                      kg-bare-before (same config template, stores imported
#                      with that binary); KG_BEFORE_LABEL names it in the report
#   UPSTREAM_TLS=1     the upstream serves HTTPS (a private CA and a leaf for
#                      127.0.0.1/localhost made with openssl in WORK/upstream-tls);
#                      keygate gets https://127.0.0.1:PORT_UP and
#                      proxy.upstream_ca_path, nginx proxy_pass https:// with
#                      proxy_ssl_verify, HAProxy "ssl verify required"
#   UPSTREAM_ALPN=http/1.1   what the HTTPS upstream offers by ALPN
#                      ("h2,http/1.1" lets keygate pick HTTP/2; nginx and
#                      HAProxy here speak HTTP/1.1 to upstreams either way)
#   KG_LOG=warn        KEYGATE_LOG of the measured keygate processes; "warn"
#                      also takes the access log out of the request path,
#                      "info" measures it (its lines go to WORK/logs)
#   SKIP_INSTALL=1     SKIP_BUILD=1   (use what is there)
#   WORK=benches/compare/work   generated files; stores are reused when their
#                      org list is unchanged
#   PORT_UP=18000 PORT=18080 ADMIN_PORT=18081
#   CORE_GEN=0 CORE_PROXY=1
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

secs() { local v=${1%s}; printf '%s' "$v"; }

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    : "${DURATION:=3}" "${WARMUP:=1}" "${ROUNDS:=1}" "${ORGS:=1 1000}" "${OPEN_DURATION:=5}" \
        "${OPEN_WARMUP:=1}" "${ROTATION_SECS:=10}" "${STARTUP_RUNS:=1}"
fi
DURATION=$(secs "${DURATION:-5}")
WARMUP=$(secs "${WARMUP:-1}")
ROUNDS=${ROUNDS:-3}
ORGS=${ORGS:-"1 1000 100000 1000000"}
KG_BEFORE_BIN=${KG_BEFORE_BIN:-}
BEFORE_TARGETS=
[[ -n $KG_BEFORE_BIN ]] && BEFORE_TARGETS=" kg-bare-before kg-before"
TARGETS=${TARGETS:-"direct kg-bare nginx-bare haproxy-bare kg kg-multi nginx haproxy$BEFORE_TARGETS"}
PATHS=${PATHS:-"allowed 401 429"}
CONNS=${CONNS:-64}
BODY_BYTES=${BODY_BYTES:-12}
BARE_ORGS=${BARE_ORGS:-1000}
MAX_ORGS=$(tr ' ' '\n' <<<"$ORGS" | grep . | sort -n | tail -1)
if [[ -z ${OPEN_ORGS:-} ]]; then
    if [[ " $ORGS " == *" 100000 "* ]]; then OPEN_ORGS=100000; else OPEN_ORGS=$MAX_ORGS; fi
fi
OPEN_RATE=${OPEN_RATE:-}
OPEN_DURATION=$(secs "${OPEN_DURATION:-20}")
OPEN_WARMUP=$(secs "${OPEN_WARMUP:-2}")
OPEN_CONNS=${OPEN_CONNS:-32}
OPEN_TICK_US=${OPEN_TICK_US:-100}
OPEN_TARGETS=${OPEN_TARGETS:-"direct kg kg-bare nginx haproxy"}
if [[ $QUICK == 1 ]]; then
    STARTUP_ORGS=${STARTUP_ORGS:-$MAX_ORGS}
else
    STARTUP_ORGS=${STARTUP_ORGS:-1000000}
fi
STARTUP_RUNS=${STARTUP_RUNS:-3}
ROTATION_SECS=$(secs "${ROTATION_SECS:-30}")
ROTATION_ORGS=${ROTATION_ORGS:-8}
ROTATION_PERIOD_MS=${ROTATION_PERIOD_MS:-100}
ROTATION_WORKERS=${ROTATION_WORKERS:-}
STAGES=${STAGES:-"closed open startup rotation instructions"}
INSTR_TARGETS=${INSTR_TARGETS:-"kg-bare nginx-bare haproxy-bare kg nginx haproxy$BEFORE_TARGETS"}
INSTR_PATHS=${INSTR_PATHS:-"allowed 401"}
INSTR_SECS=$(secs "${INSTR_SECS:-5}")
INSTR_WARM_MAX=$(secs "${INSTR_WARM_MAX:-120}")
INSTR_WARM_QUIET=${INSTR_WARM_QUIET:-3}
INSTR_ROUNDS=${INSTR_ROUNDS:-1}
WORK=${WORK:-$HERE/work}
PORT_UP=${PORT_UP:-18000}
PORT=${PORT:-18080}
ADMIN_PORT=${ADMIN_PORT:-18081}
CORE_GEN=${CORE_GEN:-0}
CORE_PROXY=${CORE_PROXY:-1}
KG_BEFORE_LABEL=${KG_BEFORE_LABEL:-before}
UPSTREAM_TLS=${UPSTREAM_TLS:-0}
UPSTREAM_ALPN=${UPSTREAM_ALPN:-http/1.1}
KG_LOG=${KG_LOG:-warn}
# keygate's store.count_flush_ms: how often it saves the threshold counts.
COUNT_FLUSH_MS=${KG_COUNT_FLUSH_MS:-1000}
INSTR_COUNT_FLUSH_MS=${INSTR_COUNT_FLUSH_MS:-3600000}
UP_SCHEME=http
[[ $UPSTREAM_TLS == 1 ]] && UP_SCHEME=https
UP_TLS_DIR=$WORK/upstream-tls

# keygate's limits for the benchmark: never reached on the allowed path.
KG_RATE=10000000
KG_BURST=10000000
KG_THRESHOLD=4000000000
# The org of the 429 path (rate 1/s, burst 1) and its key.
RL_ORG=rl
RL_KEY=RateLimited1

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$HERE/results
REPORT=$RESULTS/$STAMP.md
RAW=$RESULTS/$STAMP.tsv
mkdir -p "$WORK/logs" "$WORK/nginx-tmp" "$RESULTS"
: >"$RAW"
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now_ns() { date +%s%N; }
raw() { (IFS=$'\t'; printf '%s\n' "$*") >>"$RAW"; }

# ---------------------------------------------------------------- install ---
install_tools() {
    local need=()
    command -v wrk >/dev/null || need+=(wrk)
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
    command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || need+=(haproxy)
    command -v curl >/dev/null || need+=(curl)
    command -v taskset >/dev/null || need+=(util-linux)
    command -v ps >/dev/null || need+=(procps)
    if has_stage instructions; then
        command -v valgrind >/dev/null || need+=(valgrind)
    fi
    if [[ $UPSTREAM_TLS == 1 ]]; then
        command -v openssl >/dev/null || need+=(openssl)
    fi
    if ((${#need[@]})); then
        log "installing ${need[*]} from the system's packages"
        apt-get update -qq
        # RUNLEVEL=1: do not start the packages' system services.
        RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
}
PATH=$PATH:/usr/sbin:/sbin

# ------------------------------------------------------------------ build ---
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
KG=$TARGET_DIR/release/keygate
EX=$TARGET_DIR/release/examples
build() {
    log "building keygate and the benchmark helpers (release)"
    (cd "$ROOT" && cargo build --release --bin keygate \
        --example bench_upstream --example openloop --example rotation --example admin_driver)
}

# ------------------------------------------------------------- processes ---
PIDS=()
UPSTREAM_PID=
PROXY_PID=
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The pid and its descendants.
tree_pids() {
    local p=$1 kids k
    echo "$p"
    kids=$(ps -o pid= --ppid "$p" 2>/dev/null || true)
    for k in $kids; do tree_pids "$k"; done
}
# utime + stime, in clock ticks, of the pids given.
ticks() {
    local files=() p
    for p in "$@"; do [[ -r /proc/$p/stat ]] && files+=("/proc/$p/stat"); done
    ((${#files[@]})) || { echo 0; return; }
    awk '{ sub(/^.*\) /, ""); t += $12 + $13 } END { print t + 0 }' "${files[@]}"
}
# VmRSS in KiB of the pids given, summed.
rss_kib() {
    local files=() p
    for p in "$@"; do [[ -r /proc/$p/status ]] && files+=("/proc/$p/status"); done
    ((${#files[@]})) || { echo 0; return; }
    awk '$1 == "VmRSS:" { t += $2 } END { print t + 0 }' "${files[@]}"
}
# "busy total" jiffies of one core.
core_jiffies() {
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

# Waits until something answers HTTP on the port; prints the ns it took from $2.
wait_ready() {
    local port=$1 t0=$2 limit=${3:-300} pid=${4:-} scheme=${5:-http} code
    local until=$(($(date +%s) + limit))
    while :; do
        code=$(curl -sk -o /dev/null -m 1 -w '%{http_code}' "$scheme://127.0.0.1:$port/" || true)
        if [[ $code != 000 && -n $code ]]; then
            echo $(($(now_ns) - t0))
            return 0
        fi
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            log "the process on port $port exited; see $WORK/logs"
            return 1
        fi
        if (($(date +%s) > until)); then
            log "nothing answers on port $port after ${limit}s"
            return 1
        fi
        sleep 0.005
    done
}

# Exits when something already listens on the port (a leftover of another
# run would answer in place of the process about to start).
port_free() {
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        log "port $1 is already taken (a leftover process?); stop it or move the port"
        exit 1
    fi
}

stop_pid() {
    local p=$1 i
    [[ -n $p ]] || return 0
    kill -TERM "$p" 2>/dev/null || true
    for i in $(seq 150); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    local kept=()
    for i in "${PIDS[@]}"; do [[ $i == "$p" ]] || kept+=("$i"); done
    PIDS=("${kept[@]}")
}

start_upstream() {
    local tls=()
    if [[ $UPSTREAM_TLS == 1 ]]; then
        make_upstream_cert
        tls=(--tls "$UP_TLS_DIR/leaf-chain.pem" "$UP_TLS_DIR/leaf.key" --alpn "$UPSTREAM_ALPN")
    fi
    port_free "$PORT_UP"
    taskset -c "$CORE_GEN" "$EX/bench_upstream" "127.0.0.1:$PORT_UP" "$BODY_BYTES" "${tls[@]}" \
        2>"$WORK/logs/upstream.log" &
    UPSTREAM_PID=$!
    PIDS+=("$UPSTREAM_PID")
    wait_ready "$PORT_UP" "$(now_ns)" 30 "$UPSTREAM_PID" "$UP_SCHEME" >/dev/null
}

# The HTTPS upstream's certificates, made once: a private CA (ca.pem, what the
# proxies trust) and a leaf it signed for 127.0.0.1 and localhost (ECDSA
# P-256, served with the CA: leaf-chain.pem, leaf.key).
make_upstream_cert() {
    local d=$UP_TLS_DIR
    [[ -s $d/ca.pem && -s $d/leaf-chain.pem && -s $d/leaf.key ]] && return 0
    log "making the HTTPS upstream's CA and certificate in $d"
    mkdir -p "$d"
    (
        cd "$d"
        umask 077
        openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout ca.key -out ca.pem -days 3650 -subj "/CN=keygate bench CA" \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout leaf.key -out leaf.csr -subj "/CN=localhost"
        printf '%s\n' 'basicConstraints=critical,CA:FALSE' \
            'keyUsage=critical,digitalSignature' 'extendedKeyUsage=serverAuth' \
            'subjectAltName=IP:127.0.0.1,DNS:localhost' >leaf.ext
        openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -days 3650 -sha256 -extfile leaf.ext -out leaf.pem
        cat leaf.pem ca.pem >leaf-chain.pem
        chmod 644 ca.pem leaf.pem leaf-chain.pem
    ) 2>>"$WORK/logs/openssl.log"
}

# --------------------------------------------------------------- the orgs ---
TOKEN=
TOKEN_SHA=
make_token() {
    if [[ ! -s $WORK/provider-token ]]; then
        (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/provider-token")
    fi
    TOKEN=$(<"$WORK/provider-token")
    TOKEN_SHA=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
}

# orgs-all.tsv: org-0 .. org-(n-1), each with a random-looking 12-character
# key, the same for every run (fixed seed), so smaller lists are its prefixes.
gen_org_lists() {
    local max=$MAX_ORGS n
    for n in $STARTUP_ORGS $BARE_ORGS $OPEN_ORGS; do ((n > max)) && max=$n; done
    local have=0
    [[ -f $WORK/orgs-all.tsv ]] && have=$(wc -l <"$WORK/orgs-all.tsv")
    if ((have < max)); then
        log "generating $max orgs with known keys"
        awk -v n="$max" 'BEGIN {
            srand(20261122)
            a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
            for (i = 0; i < n; i++) {
                k = ""
                for (j = 0; j < 12; j++) k = k substr(a, int(rand() * 62) + 1, 1)
                printf "org-%d\t%s\n", i, k
            }
        }' >"$WORK/orgs-all.tsv.tmp"
        mv "$WORK/orgs-all.tsv.tmp" "$WORK/orgs-all.tsv"
    fi
    printf '%s\t%s\n' "$RL_ORG" "$RL_KEY" >"$WORK/rl.tsv"
}

org_list() { # n -> path of the list of the first n orgs
    local n=$1 f=$WORK/orgs-$1.tsv
    if [[ ! -f $f ]] || (($(wc -l <"$f") != n)); then
        head -n "$n" "$WORK/orgs-all.tsv" >"$f"
    fi
    echo "$f"
}

render() { # template out key=value...
    local tmpl=$1 out=$2 args=() kv
    shift 2
    for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${args[@]}" "$tmpl" >"$out"
    if grep -v '^[[:space:]]*#' "$out" | grep -q '@[A-Z_0-9]*@'; then
        log "unfilled placeholder in $out"
        exit 1
    fi
}

# kg_render OUT STORE [TLS]: keygate's config for the store. The upstream is
# http://127.0.0.1:PORT_UP, or with TLS (default UPSTREAM_TLS) 1 https:// and
# proxy.upstream_ca_path (only builds with HTTPS upstreams accept that: the
# plain-HTTP config holds keys every build accepts).
kg_render() {
    local out=$1 store=$2 tls=${3:-$UPSTREAM_TLS} scheme=http
    local ca="# plain HTTP upstream: no upstream_ca_path"
    if [[ $tls == 1 ]]; then
        scheme=https
        ca="upstream_ca_path = \"$UP_TLS_DIR/ca.pem\""
    fi
    render "$HERE/keygate.toml.tmpl" "$out" PORT="$PORT" \
        UPSTREAM="$scheme://127.0.0.1:$PORT_UP" UPSTREAM_CA="$ca" \
        ADMIN_PORT="$ADMIN_PORT" TOKEN_SHA256="$TOKEN_SHA" STORE="$store" COUNT_FLUSH_MS="$COUNT_FLUSH_MS" \
        RATE=$KG_RATE BURST=$KG_BURST THRESHOLD=$KG_THRESHOLD
}

# kg_config n [store [name [tls]]] -> path of keygate's config for the store
# of n orgs (name: "" for this build, "-before" for KG_BEFORE_BIN's; tls as
# kg_render's).
kg_config() {
    local n=$1 store=${2:-$WORK/store-$1.redb} f=$WORK/keygate-$1${3:-}.toml
    kg_render "$f" "$store" "${4:-}"
    echo "$f"
}

# store-n.redb: the first n orgs and the org "rl", imported with `keygate
# import`; rebuilt when its org list changed. With a binary and a name
# ("-before"), store-n-before.redb imported by that binary, so that each build
# reads a store it wrote itself.
IMPORT_SECS=()
make_store() {
    local n=$1 bin=${2:-$KG} name=${3:-} list sum store=$WORK/store-$1${3:-}.redb
    list=$(org_list "$n")
    if [[ -z $name ]]; then
        sum=$(cat "$list" "$WORK/rl.tsv" | md5sum | cut -d' ' -f1)
    else
        sum=$( (cat "$list" "$WORK/rl.tsv"; cksum <"$bin") | md5sum | cut -d' ' -f1)
    fi
    if [[ -f $store && $(cat "$store.sum" 2>/dev/null) == "$sum" ]]; then
        return 0
    fi
    rm -f "$store" "$store.sum"
    log "importing $n orgs into $(basename "$store")"
    local cfg t0 t1
    # The import does not reach the upstream: a plain-HTTP config, which
    # every build accepts.
    cfg=$(kg_config "$n" "$store" "$name-import" 0)
    t0=$(now_ns)
    cat "$list" "$WORK/rl.tsv" | KEYGATE_LOG=warn "$bin" import --config "$cfg" - \
        2>>"$WORK/logs/import.log"
    t1=$(now_ns)
    echo "$sum" >"$store.sum"
    [[ -n $name ]] || raw import "$n" "$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.1f", d / 1e9 }')"
}

# nginx and HAProxy maps for the same org/key pairs.
make_maps() {
    local n=$1 list
    list=$(org_list "$n")
    if [[ ! -f $WORK/map-$n.nginx || $list -nt $WORK/map-$n.nginx ]]; then
        awk -F'\t' -v rl="$RL_ORG:$RL_KEY" '{ print $1 ":" $2 " a;" } END { print rl " r;" }' \
            "$list" >"$WORK/map-$n.nginx"
        awk -F'\t' -v rl="$RL_ORG:$RL_KEY" -v r=$KG_RATE \
            '{ print $1 ":" $2 " " r } END { print rl " 1" }' "$list" >"$WORK/map-$n.haproxy"
    fi
}

# ----------------------------------------------------------- the proxies ---
# start_proxy TARGET N: starts it (pinned as the topology says), waits until it
# answers, and sets PROXY_PID, PROXY_PORT, START_NS, START_RSS_KIB.
PROXY_PORT=
PROXY_SCHEME=http
START_NS=
START_RSS_KIB=
VIA=() # a command the proxy runs under (the instructions stage: valgrind)
start_proxy() {
    local target=$1 n=$2 t0 cfg
    [[ $target == direct ]] || port_free "$PORT"
    PROXY_PORT=$PORT
    PROXY_SCHEME=http
    PROXY_PID=
    case $target in
    direct)
        PROXY_PORT=$PORT_UP
        PROXY_SCHEME=$UP_SCHEME
        START_NS=0
        START_RSS_KIB=0
        return 0
        ;;
    kg | kg-multi | kg-mt | kg-mt1 | kg-bare | kg-before | kg-multi-before | kg-bare-before)
        local pin=(taskset -c "$CORE_PROXY") flags=(--workers 1) bin=$KG name=
        [[ $target == kg-multi* ]] && pin=() && flags=()
        [[ $target == kg-mt ]] && pin=() && flags=(--runtime multi-thread)
        [[ $target == kg-mt1 ]] && flags=(--runtime multi-thread --workers 1)
        [[ $target == kg-bare* ]] && flags+=(--bare)
        if is_before "$target"; then
            [[ -n $KG_BEFORE_BIN ]] || { log "$target needs KG_BEFORE_BIN"; return 1; }
            if [[ $UPSTREAM_TLS == 1 ]]; then
                log "$target skipped: the build before has no HTTPS upstreams"
                return 1
            fi
            bin=$KG_BEFORE_BIN name=-before
        fi
        cfg=$(kg_config "$n" "$WORK/store-$n$name.redb" "$name")
        t0=$(now_ns)
        KEYGATE_LOG=$KG_LOG "${pin[@]}" "${VIA[@]}" "$bin" serve --config "$cfg" "${flags[@]}" \
            2>>"$WORK/logs/$target.log" &
        PROXY_PID=$!
        ;;
    nginx | nginx-bare)
        local tmpl=$HERE/nginx.conf.tmpl zone_mb
        [[ $target == nginx-bare ]] && tmpl=$HERE/nginx-bare.conf.tmpl
        zone_mb=$((n * 160 / 1000000 + 8))
        cfg=$WORK/nginx-$target-$n.conf
        nginx_upstream_tls
        render "$tmpl" "$cfg" WORK="$WORK" PORT="$PORT" UP_PORT="$PORT_UP" \
            MAP="$WORK/map-$n.nginx" MAP_HASH_MAX=$((n * 2 > 4096 ? n * 2 : 4096)) \
            ZONE_MB="$zone_mb" RATE=1000000 BURST=1000000 UP_SCHEME="$UP_SCHEME" \
            UP_TLS_CONF="$WORK/nginx-upstream-tls.conf"
        # Under valgrind, the worker's counters are reachable only without a
        # master process (the same one process serves either way).
        if ((${#VIA[@]})); then sed -i 's/^master_process on;/master_process off;/' "$cfg"; fi
        : >"$WORK/nginx-error.log"
        t0=$(now_ns)
        taskset -c "$CORE_PROXY" "${VIA[@]}" nginx -p "$WORK/nginx-tmp" -e "$WORK/nginx-error.log" \
            -c "$cfg" 2>>"$WORK/logs/$target.log" &
        PROXY_PID=$!
        ;;
    haproxy | haproxy-bare)
        local tmpl=$HERE/haproxy.cfg.tmpl
        [[ $target == haproxy-bare ]] && tmpl=$HERE/haproxy-bare.cfg.tmpl
        cfg=$WORK/haproxy-$target-$n.cfg
        local ssl=
        [[ $UPSTREAM_TLS == 1 ]] &&
            ssl=" ssl verify required ca-file $UP_TLS_DIR/ca.pem verifyhost localhost alpn http/1.1"
        render "$tmpl" "$cfg" WORK="$WORK" PORT="$PORT" UP_PORT="$PORT_UP" \
            MAP="$WORK/map-$n.haproxy" TABLE_SIZE=$((n + 1000)) THRESHOLD=$KG_THRESHOLD \
            UP_SSL="$ssl"
        t0=$(now_ns)
        taskset -c "$CORE_PROXY" "${VIA[@]}" haproxy -db -f "$cfg" 2>>"$WORK/logs/$target.log" &
        PROXY_PID=$!
        ;;
    *)
        log "unknown target $target"
        exit 1
        ;;
    esac
    PIDS+=("$PROXY_PID")
    START_NS=$(wait_ready "$PORT" "$t0" 600 "$PROXY_PID") || {
        stop_pid "$PROXY_PID"
        PROXY_PID=
        return 1
    }
    START_RSS_KIB=$(rss_kib $(tree_pids "$PROXY_PID"))
    if is_job "$target" && [[ $target == kg* ]]; then
        # The org of the 429 path: rate 1/s, burst 1 (kept in the store).
        local code
        code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT \
            "http://127.0.0.1:$ADMIN_PORT/v1/orgs/$RL_ORG/limits" \
            -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
            -d '{"rate_per_sec":1,"burst":1}')
        [[ $code == 200 ]] || log "setting the limits of $RL_ORG answered $code"
    fi
    return 0
}

stop_proxy() {
    stop_pid "$PROXY_PID"
    PROXY_PID=
}

is_job() {
    case $1 in
    kg | kg-multi | kg-mt | kg-mt1 | kg-before | kg-multi-before | nginx | haproxy) return 0 ;;
    *) return 1 ;;
    esac
}
is_before() { [[ $1 == *-before ]]; }
is_bare() { [[ $1 == *-bare || $1 == *-bare-before ]]; }

# The directives that make nginx's proxy_pass to the upstream HTTPS, included
# by both nginx templates (empty for a plain HTTP upstream): the certificate
# verified against the benchmark's CA, for the name localhost (no SNI is sent
# for 127.0.0.1, as keygate sends none for an IP address), sessions reused.
nginx_upstream_tls() {
    local f=$WORK/nginx-upstream-tls.conf
    if [[ $UPSTREAM_TLS == 1 ]]; then
        cat >"$f" <<EOF
proxy_ssl_trusted_certificate $UP_TLS_DIR/ca.pem;
proxy_ssl_verify on;
proxy_ssl_verify_depth 2;
proxy_ssl_name localhost;
proxy_ssl_server_name off;
proxy_ssl_session_reuse on;
proxy_ssl_protocols TLSv1.2 TLSv1.3;
EOF
    else
        echo "# plain HTTP upstream" >"$f"
    fi
}

# check TARGET PATH N: one request with x-echo: 1 through the proxy; prints
# "ok" or what is wrong (the status, and for the job, what reached the upstream).
check() {
    local target=$1 path=$2 n=$3 org key want hdrs status
    IFS=$'\t' read -r org key < <(head -n 1 "$(org_list "$n")")
    case $path in
    allowed) want=200 ;;
    401) want=401 key=WrongKey0000 ;;
    429)
        want=429 org=$RL_ORG key=$RL_KEY
        curl -sk -o /dev/null -H "x-api-key: $key" "$PROXY_SCHEME://127.0.0.1:$PROXY_PORT/$org/v1/ping" || true
        ;;
    esac
    hdrs=$(curl -sk -D - -o /dev/null -H 'x-echo: 1' -H "x-api-key: $key" \
        "$PROXY_SCHEME://127.0.0.1:$PROXY_PORT/$org/v1/ping" | tr -d '\r') || true
    status=$(awk 'NR == 1 { print $2 }' <<<"$hdrs")
    if [[ $status != "$want" ]]; then
        echo "status $status, not $want"
        return
    fi
    if [[ $path == allowed ]] && is_job "$target"; then
        local p o k
        p=$(awk -F': ' 'tolower($1) == "x-echo-path" { print $2 }' <<<"$hdrs")
        o=$(awk -F': ' 'tolower($1) == "x-echo-org" { print $2 }' <<<"$hdrs")
        k=$(awk -F': ' 'tolower($1) == "x-echo-key" { print $2 }' <<<"$hdrs")
        if [[ $p != /v1/ping || $o != "$org" || $k != absent ]]; then
            echo "upstream got path=$p org=$o key=$k"
            return
        fi
    fi
    echo ok
}

kv() { # key line -> value of key=value in line
    tr ' ' '\n' <<<"$2" | awk -F= -v k="$1" '$1 == k { print $2; exit }'
}

# cell TARGET N PATH: a closed-loop wrk run against the running proxy.
cell() {
    local target=$1 n=$2 path=$3 list count mode
    case $path in
    allowed) list=$(org_list "$n") count=$n mode=good ;;
    401) list=$(org_list "$n") count=$n mode=bad ;;
    429) list=$WORK/rl.tsv count=1 mode=good ;;
    esac
    local url=$PROXY_SCHEME://127.0.0.1:$PROXY_PORT ok
    ok=$(check "$target" "$path" "$n")
    [[ $ok == ok ]] || log "check failed: $target $n orgs $path: $ok"
    local wrk=(taskset -c "$CORE_GEN" wrk -t1 -c"$CONNS" -s "$HERE/spread.lua")
    if [[ $WARMUP != 0 ]]; then
        "${wrk[@]}" -d"${WARMUP}s" "$url" -- "$list" "$count" "$mode" >/dev/null 2>&1 || true
    fi
    local watch=$PROXY_PID
    [[ -z $watch ]] && watch=$UPSTREAM_PID
    local pids out_file=$WORK/wrk.out marker=$WORK/wrk.started
    pids=$(tree_pids "$watch")
    rm -f "$marker"
    "${wrk[@]}" -d"${DURATION}s" "$url" -- "$list" "$count" "$mode" "$marker" >"$out_file" 2>&1 &
    local wrk_pid=$!
    # Sample over the steady part of the run: from just after the load starts
    # (wrk builds its requests first, then creates the marker) for 80% of the
    # duration.
    local waited=0
    while [[ ! -e $marker ]] && kill -0 "$wrk_pid" 2>/dev/null && ((waited < 1200)); do
        sleep 0.05
        waited=$((waited + 1))
    done
    sleep 0.1
    local t0 p0 j00 j10 t1 p1 j01 j11
    t0=$(now_ns)
    p0=$(ticks $pids)
    j00=$(core_jiffies 0)
    j10=$(core_jiffies 1)
    sleep "$(awk -v d="$DURATION" 'BEGIN { printf "%.2f", d * 0.8 - 0.1 }')"
    t1=$(now_ns)
    p1=$(ticks $pids)
    j01=$(core_jiffies 0)
    j11=$(core_jiffies 1)
    wait "$wrk_pid" || true
    local rss=0
    [[ -n $PROXY_PID ]] && rss=$(rss_kib $(tree_pids "$PROXY_PID"))
    local line
    line=$(grep '^wrk ' "$out_file" || true)
    if [[ -z $line ]]; then
        log "wrk printed no result for $target $n $path:"
        cat "$out_file" >&2
        raw cell "$n" "$target" "$path" 0 0 0 0 0 0 0 0 0 0 "no result"
        return
    fi
    local req dur_us sockerr nonok p50 p99
    req=$(kv requests "$line")
    dur_us=$(kv duration_us "$line")
    sockerr=$(($(kv errors_connect "$line") + $(kv errors_read "$line") + $(kv errors_write "$line") + $(kv errors_timeout "$line")))
    nonok=$(kv errors_status "$line")
    p50=$(kv p50_us "$line")
    p99=$(kv p99_us "$line")
    # proxy share: CPU seconds per wall second over the sample window.
    local fields
    fields=$(awk -v req="$req" -v dus="$dur_us" -v nonok="$nonok" -v tk="$CLK_TCK" \
        -v t0="$t0" -v t1="$t1" -v p0="$p0" -v p1="$p1" -v proxy="$PROXY_PID" \
        -v j00="$j00" -v j01="$j01" -v j10="$j10" -v j11="$j11" 'BEGIN {
            split(j00, a, " "); split(j01, b, " "); split(j10, c, " "); split(j11, d, " ")
            rps = req / (dus / 1e6)
            wall = (t1 - t0) / 1e9
            share = (p1 - p0) / tk / wall
            per_core = (proxy != "" && share > 0) ? rps / share : 0
            core0 = (b[2] > a[2]) ? 100 * (b[1] - a[1]) / (b[2] - a[2]) : 0
            core1 = (d[2] > c[2]) ? 100 * (d[1] - c[1]) / (d[2] - c[2]) : 0
            printf "%.0f\t%.1f\t%.2f\t%.0f\t%.0f\t%.0f", rps, 100 * nonok / (req ? req : 1), share, per_core, core0, core1
        }')
    local rps nonok_pct share per_core core0 core1
    IFS=$'\t' read -r rps nonok_pct share per_core core0 core1 <<<"$fields"
    raw cell "$n" "$target" "$path" "$rps" "$p50" "$p99" "$nonok_pct" "$sockerr" \
        "$share" "$per_core" "$((rss / 1024))" "$core0" "$core1" "$ok"
    log "  $target $n orgs $path: $rps req/s, p50 ${p50}us p99 ${p99}us, non-2xx ${nonok_pct}%, proxy ${share} cores, core0 ${core0}% core1 ${core1}%, check $ok"
}

record_start() { # target n
    raw start "$2" "$1" "$(awk -v s="$START_NS" 'BEGIN { printf "%.3f", s / 1e9 }')" \
        "$((START_RSS_KIB / 1024))"
}

# ------------------------------------------------------------------ main ---
main() {
    [[ ${SKIP_INSTALL:-0} == 1 ]] || install_tools
    [[ ${SKIP_BUILD:-0} == 1 ]] || build
    [[ -x $KG && -x $EX/bench_upstream && -x $EX/openloop && -x $EX/rotation ]] || {
        log "missing binaries under $TARGET_DIR/release (build first)"
        exit 1
    }
    log "work folder $WORK; report $REPORT"
    make_token
    [[ $UPSTREAM_TLS == 1 ]] && make_upstream_cert
    gen_org_lists
    local n
    for n in 1 $ORGS $BARE_ORGS $OPEN_ORGS $STARTUP_ORGS; do make_store "$n"; done
    if [[ -n $KG_BEFORE_BIN ]]; then
        [[ -x $KG_BEFORE_BIN ]] || { log "KG_BEFORE_BIN $KG_BEFORE_BIN is not executable"; exit 1; }
        # The build before reads stores it imported itself, at the org counts
        # its targets use.
        for n in 1 $ORGS $BARE_ORGS; do make_store "$n" "$KG_BEFORE_BIN" -before; done
    fi
    for n in $ORGS $OPEN_ORGS; do make_maps "$n"; done
    raw meta "$STAMP" "$DURATION" "$WARMUP" "$CONNS" "$ORGS" "$QUICK" \
        "$(uname -r)" "$(nproc)" "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)" \
        "$(wrk -v 2>&1 | head -1 | awk '{ print $2 }')" "$(nginx -v 2>&1 | sed 's|.*/||')" \
        "$(haproxy -v | head -1 | awk '{ print $3 }')" "$(cat /proc/loadavg | cut -d' ' -f1-3)" \
        "$BODY_BYTES" "$UP_SCHEME" "$UPSTREAM_ALPN" "$(build_label "$ROOT")" \
        "${KG_BEFORE_BIN:+$KG_BEFORE_LABEL}" "$KG_LOG"

    start_upstream
    has_stage closed && closed_loop
    has_stage open && open_loop
    has_stage startup && startup
    has_stage rotation && rotation
    has_stage instructions && instructions
    stop_pid "$UPSTREAM_PID"
    "$HERE/report.sh" "$RAW" | tee "$REPORT"
    log "report: $REPORT (raw numbers: $RAW)"
}

in_list() { [[ " $2 " == *" $1 "* ]]; }
# The commit of a source tree, "+dirty" when it has uncommitted changes to src/.
build_label() {
    local c
    c=$(git -C "$1" rev-parse --short HEAD 2>/dev/null) || { echo "?"; return; }
    git -C "$1" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || c+="+dirty"
    echo "$c"
}
has_stage() { in_list "$1" "$STAGES"; }

closed_loop() {
    local n r
    # Org-independent cells: the upstream alone and the bare proxies. On this
    # kind of machine throughput drifts by 10 to 30% within minutes, so each
    # cell is measured ROUNDS times with the targets taking turns.
    local t
    for r in $(seq "$ROUNDS"); do
        for t in direct kg-bare kg-bare-before nginx-bare haproxy-bare; do
            in_list "$t" "$TARGETS" || continue
            log "$t (round $r of $ROUNDS)"
            local store_n=$BARE_ORGS
            [[ $t == kg-bare* ]] && store_n=1
            if ! start_proxy "$t" "$store_n"; then
                log "$t did not start"
                continue
            fi
            [[ $t == direct ]] || record_start "$t" "$store_n"
            cell "$t" "$BARE_ORGS" allowed
            stop_proxy
        done
    done

    # The job, at every org count, with keygate bare taking its turn on the
    # allowed path (paths spread over the same orgs), so that job / bare compares
    # cells measured minutes, not a quarter of an hour, apart.
    for n in $ORGS; do
        for r in $(seq "$ROUNDS"); do
            for t in kg-bare kg-bare-before kg kg-before kg-multi kg-multi-before kg-mt kg-mt1 nginx haproxy; do
                in_list "$t" "$TARGETS" || continue
                if [[ $t == kg-bare* ]]; then
                    start_proxy "$t" 1 || { log "$t did not start"; continue; }
                    cell "$t" "$n" allowed
                    stop_proxy
                    continue
                fi
                log "$t with $n orgs (round $r of $ROUNDS): starting"
                if ! start_proxy "$t" "$n"; then
                    log "$t did not start with $n orgs"
                    continue
                fi
                record_start "$t" "$n"
                log "  ready in $(awk -v s="$START_NS" 'BEGIN { printf "%.2f", s / 1e9 }') s, RSS $((START_RSS_KIB / 1024)) MiB"
                local p
                for p in $PATHS; do cell "$t" "$n" "$p"; done
                stop_proxy
            done
        done
    done
}

open_loop() {
    local rate=$OPEN_RATE n=$OPEN_ORGS
    if [[ -z $rate ]]; then
        # Half of nginx's median round.
        rate=$(awk -F'\t' -v n="$n" '$1 == "cell" && $2 == n && $3 == "nginx" && $4 == "allowed" { print $5 }' "$RAW" |
            sort -n | awk '{ v[NR] = $1 } END { if (NR) printf "%.0f", v[int((NR + 1) / 2)] / 2 }')
    fi
    if [[ -z $rate || $rate == 0 ]]; then
        log "open loop skipped: no nginx allowed-path result at $n orgs (set OPEN_RATE)"
        return 0
    fi
    log "open loop at $rate req/s over $n orgs"
    local t list runs=()
    list=$(org_list "$n")
    for t in $OPEN_TARGETS; do
        runs+=("$t")
        [[ -n ${OPEN_ADMIN_MS:-} ]] && is_job "$t" && [[ $t == kg* ]] && runs+=("$t+admin")
    done
    for t in "${runs[@]}"; do
        local store_n=$n base=${t%+admin}
        [[ $base == kg-bare* ]] && store_n=1
        if ! start_proxy "$base" "$store_n"; then
            log "$base did not start"
            continue
        fi
        local out churn_pid=
        if [[ $t == *+admin ]]; then
            admin_churn "$OPEN_ADMIN_MS" "$WORK/admin-churn-$t.tsv" &
            churn_pid=$!
            PIDS+=("$churn_pid")
        fi
        out=$(taskset -c "$CORE_GEN" "$EX/openloop" --target "127.0.0.1:$PROXY_PORT" \
            --orgs "$list" --count "$n" --rate "$rate" --duration "$OPEN_DURATION" \
            --warmup "$OPEN_WARMUP" --connections "$OPEN_CONNS" --tick-us "$OPEN_TICK_US" --label "$t" \
            2>>"$WORK/logs/openloop.log") || true
        if [[ -n $churn_pid ]]; then
            stop_pid "$churn_pid"
            local done failed
            done=$(awk -F'\t' '$2 ~ /^2/' "$WORK/admin-churn-$t.tsv" | wc -l)
            failed=$(awk -F'\t' '$2 !~ /^2/' "$WORK/admin-churn-$t.tsv" | wc -l)
            log "  admin mutations during the run: $done answered 2xx, $failed not"
            raw openadmin "$t" "$OPEN_ADMIN_MS" "$done" "$failed"
        fi
        stop_proxy
        if [[ -z $out ]]; then
            log "  $t: openloop printed nothing (see $WORK/logs/openloop.log)"
            continue
        fi
        log "  $out"
        raw open "$n" "$t" "$rate" "$(kv p50_us "$out")" "$(kv p90_us "$out")" \
            "$(kv p99_us "$out")" "$(kv p999_us "$out")" "$(kv max_us "$out")" \
            "$(kv scheduled "$out")" "$(kv completed "$out")" "$(kv s2xx "$out")" \
            "$(kv errors "$out")" "$(kv unfinished "$out")" "$(kv lag_p99_us "$out")"
    done
}

# admin_churn PERIOD_MS OUT: regenerates the key of the org "churn" (made
# first; outside the load's orgs) every PERIOD_MS until killed, from core 0,
# one line per call in OUT: seconds since the epoch, status, seconds taken.
admin_churn() {
    local period=$1 out=$2 auth="authorization: Bearer $TOKEN"
    : >"$out"
    if [[ ${OPEN_ADMIN_DRIVER:-persistent} == persistent ]]; then
        # exec: the harness's TERM reaches the driver itself.
        exec taskset -c "$CORE_GEN" "$EX/admin_driver" --admin "127.0.0.1:$ADMIN_PORT" \
            --token "$TOKEN" --period-ms "$period" --call "${OPEN_ADMIN_CALL:-regenerate}" \
            --org churn >>"$out" 2>>"$WORK/logs/admin-driver.log"
    fi
    curl -s -o /dev/null -X POST "http://127.0.0.1:$ADMIN_PORT/v1/orgs" -H "$auth" \
        -H 'content-type: application/json' -d '{"org":"churn"}' || true
    trap 'exit 0' TERM
    while :; do
        if [[ ${OPEN_ADMIN_CALL:-regenerate} == health ]]; then
            taskset -c "$CORE_GEN" curl -s -o /dev/null -w "$(date +%s.%N)\t%{http_code}\t%{time_total}\n" \
                "http://127.0.0.1:$ADMIN_PORT/healthz" >>"$out" || true
        else
            taskset -c "$CORE_GEN" curl -s -o /dev/null -w "$(date +%s.%N)\t%{http_code}\t%{time_total}\n" \
                -X POST "http://127.0.0.1:$ADMIN_PORT/v1/orgs/churn/key/regenerate" -H "$auth" \
                >>"$out" || true
        fi
        sleep "$(awk -v p="$period" 'BEGIN { printf "%.3f", p / 1000 }')"
    done
}

startup() {
    local n=$STARTUP_ORGS i
    log "keygate start-up with $n orgs ($STARTUP_RUNS runs) and with 1 org"
    for i in $(seq "$STARTUP_RUNS"); do
        start_proxy kg-multi "$n" || { log "keygate did not start"; return 0; }
        # Settle, then read the memory of the idle process.
        sleep 1
        raw startup kg "$n" "$(awk -v s="$START_NS" 'BEGIN { printf "%.3f", s / 1e9 }')" \
            "$(rss_kib "$PROXY_PID")"
        stop_proxy
    done
    start_proxy kg-multi 1 || return 0
    sleep 1
    raw startup kg 1 "$(awk -v s="$START_NS" 'BEGIN { printf "%.3f", s / 1e9 }')" \
        "$(rss_kib "$PROXY_PID")"
    stop_proxy
}

rotation() {
    log "rotation under load: one of $ROTATION_ORGS orgs every ${ROTATION_PERIOD_MS} ms for ${ROTATION_SECS} s"
    local store=$WORK/rotation.redb cfg flags=()
    rm -f "$store"
    cfg=$WORK/keygate-rotation.toml
    kg_render "$cfg" "$store"
    [[ -n $ROTATION_WORKERS ]] && flags=(--workers "$ROTATION_WORKERS")
    local t0
    t0=$(now_ns)
    KEYGATE_LOG=warn "$KG" serve --config "$cfg" "${flags[@]}" 2>>"$WORK/logs/rotation-kg.log" &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_ready "$PORT" "$t0" 60 "$PROXY_PID" >/dev/null || { stop_proxy; return 0; }
    local out rc=0
    out=$(KEYGATE_BENCH_TOKEN=$TOKEN taskset -c "$CORE_GEN" "$EX/rotation" \
        --proxy "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN_PORT" --orgs "$ROTATION_ORGS" \
        --duration "$ROTATION_SECS" --period-ms "$ROTATION_PERIOD_MS" \
        2>>"$WORK/logs/rotation.log") || rc=$?
    stop_proxy
    log "  rotation exit $rc"
    local line
    while read -r line; do
        [[ -n $line ]] && log "  $line"
    done <<<"$out"
    raw rotation "$(tr '\n' ' ' <<<"$out")" "$rc" "${ROTATION_WORKERS:-default}"
}

# The connections the upstream has accepted so far (TLS: handshakes done).
upstream_connections() {
    grep -c '^bench_upstream: new connection' "$WORK/logs/upstream.log" || true
}

# Each proxy under callgrind (valgrind's instruction counter, about 50 times
# slower): warm up (until no new upstream connection opens), zero its counters, run wrk for INSTR_SECS, dump, and divide
# the user-space instructions of every process of the proxy by the requests
# answered. Time on this kind of machine drifts by 10 to 30% within minutes; an
# instruction count does not (runs of the same build agree within about 1%).
# It does not see the kernel, where the proxies make the same system calls per
# request (BENCHMARKS.md).
instructions() {
    local n=$BARE_ORGS t p r COUNT_FLUSH_MS=$INSTR_COUNT_FLUSH_MS
    for r in $(seq "$INSTR_ROUNDS"); do
    ((INSTR_ROUNDS == 1)) || log "instructions, round $r of $INSTR_ROUNDS"
    for t in $INSTR_TARGETS; do
        local out=$WORK/callgrind/$t
        ((INSTR_ROUNDS == 1)) || out+=-$r
        rm -rf "$out"
        mkdir -p "$out"
        VIA=(valgrind --tool=callgrind "--callgrind-out-file=$out/%p.out")
        local proxy_c0
        proxy_c0=$(upstream_connections)
        local store_n=$n
        [[ $t == kg-bare* ]] && store_n=1
        log "$t under callgrind: starting"
        if ! start_proxy "$t" "$store_n"; then
            VIA=()
            log "$t did not start under callgrind"
            continue
        fi
        VIA=()
        for p in $INSTR_PATHS; do
            is_bare "$t" && [[ $p != allowed ]] && continue
            local list mode url=$PROXY_SCHEME://127.0.0.1:$PROXY_PORT
            list=$(org_list "$n")
            mode=good
            [[ $p == 401 ]] && mode=bad
            # Every run drains its load (spread.lua's SPREAD_DRAIN_AFTER)
            # rather than cutting requests off in flight, which makes a proxy
            # close those upstream connections.
            local wrk=(taskset -c "$CORE_GEN" wrk -t1 -c"$CONNS" -s "$HERE/spread.lua")
            # Warm up in rounds of 2 s until the proxy holds as many upstream
            # connections as wrk has (the upstream logs each one it accepts),
            # or INSTR_WARM_QUIET rounds in a row open none, so that the count
            # measures the steady state, not the pool filling up: under
            # callgrind the pool fills slowly, and one TLS handshake costs
            # the proxy millions of instructions.
            local warm=0 quiet=0 c0 c1
            while :; do
                c0=$(upstream_connections)
                SPREAD_DRAIN_AFTER=2 "${wrk[@]}" -d3s "$url" -- "$list" "$n" "$mode" >/dev/null 2>&1 || true
                warm=$((warm + 2))
                c1=$(upstream_connections)
                if ((c1 == c0)); then quiet=$((quiet + 1)); else quiet=0; fi
                ((c1 - proxy_c0 >= CONNS || quiet >= INSTR_WARM_QUIET)) && break
                if ((warm >= INSTR_WARM_MAX)); then
                    log "  $t $p: still opening upstream connections after ${warm} s of warm-up"
                    break
                fi
            done
            local pids pid
            pids=$(tree_pids "$PROXY_PID")
            rm -f "$out"/*.out.*
            for pid in $pids; do callgrind_control -z "$pid" >/dev/null 2>&1 || true; done
            local line
            c0=$(upstream_connections)
            line=$(SPREAD_DRAIN_AFTER=$INSTR_SECS "${wrk[@]}" -d"$((INSTR_SECS + 1))s" "$url" -- "$list" "$n" "$mode" 2>&1 | grep '^wrk ' || true)
            for pid in $pids; do callgrind_control -d "$pid" >/dev/null 2>&1 || true; done
            c1=$(upstream_connections)
            local req ir
            req=$(kv requests "$line")
            ir=$(cat "$out"/*.out.* 2>/dev/null | awk '/^summary:/ { s += $2 } END { printf "%.0f", s }')
            if [[ -z $req || $req == 0 || $ir == 0 ]]; then
                log "  $t $p: no count (wrk: ${line:-nothing})"
                continue
            fi
            raw instr "$n" "$t" "$p" "$req" "$ir" "$((c1 - c0))" "$warm" "$UP_SCHEME"
            log "  $t $n orgs $p: $req requests, $((ir / req)) instructions per request ($((c1 - c0)) upstream connections opened during the count, after ${warm} s of warm-up)"
        done
        stop_proxy
    done
    done
}

main "$@"
