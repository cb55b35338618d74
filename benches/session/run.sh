#!/usr/bin/env bash
# What session login costs calls (issue 14), with wrk against a release keygate:
#
#   1. keyed calls to a keygate with [session] configured against one without
#      (goal: no measurable change);
#   2. calls with a session's JSESSIONID cookie against keyed calls, both on
#      the keygate with [session] (goal: at least 0.95x).
#
#   benches/session/run.sh                      # ROUNDS=5 SECS=10: about 3 minutes
#   ROUNDS=1 SECS=1 benches/session/run.sh      # a smoke run of a few seconds
#
# It builds keygate and examples/bench_upstream.rs in release mode, starts the
# upstream and two keygates (one config with [session], one without; the
# same org "acme" with the same key imported into each store; limits raised
# so no call is rate limited or counted past a threshold), makes an API user
# through the admin API, logs in once with curl to get a JSESSIONID, then
# measures in rounds: each round runs the three cells (keyed/off, keyed/on,
# session/on) for SECS seconds each, in an order that reverses every round so
# a drift of the machine does not favour one cell. It prints each round's
# requests/s and ratios, then the median and the spread (min..max) of each
# ratio over the rounds. A cell with any non-2xx answer fails the run.
#
# Topology (2 cores, as benches/compare): wrk and the upstream on core
# CORE_GEN, each keygate on core CORE_PROXY with --workers 1 (taskset, when
# present). Everything listens on 127.0.0.1; every wait and run is bounded.
#
# Settings (environment):
#   ROUNDS=5    rounds (at most 50)
#   SECS=10     seconds of each cell (at most 120)
#   CONNS=32    wrk connections (one wrk thread)
#   WARMUP=1    seconds of unmeasured load on each cell before the rounds
#   SKIP_BUILD=1                 use the binaries already in the target folder
#   PORT_UP=18100 PORT_OFF=18180 PORT_ON=18190 (admin ports are PORT + 1)
#   CORE_GEN=0 CORE_PROXY=1
#   WORK=benches/session/work    generated configs, stores and logs
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

ROUNDS=${ROUNDS:-5}
SECS=${SECS:-10}
SECS=${SECS%s}
CONNS=${CONNS:-32}
WARMUP=${WARMUP:-1}
WARMUP=${WARMUP%s}
PORT_UP=${PORT_UP:-18100}
PORT_OFF=${PORT_OFF:-18180}
PORT_ON=${PORT_ON:-18190}
CORE_GEN=${CORE_GEN:-0}
CORE_PROXY=${CORE_PROXY:-1}
WORK=${WORK:-$HERE/work}

# Bounded: a run is at most 50 rounds of 3 cells of 120 s.
((ROUNDS >= 1 && ROUNDS <= 50)) || { echo "ROUNDS must be 1 to 50" >&2; exit 2; }
((SECS >= 1 && SECS <= 120)) || { echo "SECS must be 1 to 120" >&2; exit 2; }
((CONNS >= 1 && CONNS <= 1024)) || { echo "CONNS must be 1 to 1024" >&2; exit 2; }

ORG=acme
KEY=Ab3dEf6hIj9k
USER_NAME=ops@acme.example
PASSWORD="session bench password"
LOGIN_PATH=/api/v1/authenticatedSession
CALL_PATH=/$ORG/v1/users

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

for tool in wrk curl; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
on_core() {
    local core=$1
    shift
    if command -v taskset >/dev/null; then taskset -c "$core" "$@"; else "$@"; fi
}

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
KG=$TARGET_DIR/release/keygate
UPSTREAM=$TARGET_DIR/release/examples/bench_upstream
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building keygate and bench_upstream (release)"
    (cd "$ROOT" && cargo build --release --bin keygate --example bench_upstream)
fi

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

rm -rf "$WORK"
mkdir -p "$WORK/logs"

# Waits (at most 10 s) until http://127.0.0.1:$1/healthz answers.
wait_healthy() {
    local i
    for ((i = 0; i < 100; i++)); do
        curl -fsS --max-time 1 -o /dev/null "http://127.0.0.1:$1/healthz" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing answered on 127.0.0.1:$1 within 10 s (see $WORK/logs)" >&2
    exit 1
}

TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
TOKEN_SHA256=$(printf %s "$TOKEN" | "$KG" digest)

# config NAME PORT SESSION(0|1): writes $WORK/NAME.toml and imports the org.
config() {
    local name=$1 port=$2 session=$3
    cat >"$WORK/$name.toml" <<TOML
[proxy]
listen = "127.0.0.1:$port"
upstream = "http://127.0.0.1:$PORT_UP"

[admin]
listen = "127.0.0.1:$((port + 1))"
provider_token_sha256 = "$TOKEN_SHA256"

[store]
path = "$WORK/$name.redb"

[limits]
rate_per_sec = 10000000
burst = 10000000
threshold_calls = 4000000000
threshold_window_secs = 3600
TOML
    if [[ $session == 1 ]]; then
        # Idle timeout well past a run, so the one login lasts all rounds.
        printf '\n[session]\nidle_timeout_secs = 86400\nmax_age_secs = 86400\n' >>"$WORK/$name.toml"
    fi
    printf '%s\t%s\n' "$ORG" "$KEY" | "$KG" import --config "$WORK/$name.toml" - \
        2>>"$WORK/logs/import.log"
}
config off "$PORT_OFF" 0
config on "$PORT_ON" 1

log "starting the upstream and two keygates"
on_core "$CORE_GEN" "$UPSTREAM" "127.0.0.1:$PORT_UP" 2>"$WORK/logs/upstream.log" &
PIDS+=($!)
for name in off on; do
    KEYGATE_LOG=warn on_core "$CORE_PROXY" "$KG" serve --config "$WORK/$name.toml" --workers 1 \
        2>"$WORK/logs/$name.log" &
    PIDS+=($!)
done
wait_healthy $((PORT_OFF + 1))
wait_healthy $((PORT_ON + 1))

curl -fsS --max-time 10 -o /dev/null -X POST "http://127.0.0.1:$((PORT_ON + 1))/v1/orgs/$ORG/api-users" \
    -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d "{\"username\":\"$USER_NAME\",\"password\":\"$PASSWORD\"}"

# The vendor's obfuscation of $KEY with the timestamp $1 (milliseconds).
obfuscate() {
    local n=${1: -6} out= i r
    r=$(printf '%06d' $((10#$n >> 1)))
    for ((i = 0; i < 6; i++)); do out+=${KEY:${n:i:1}:1}; done
    for ((i = 0; i < 6; i++)); do out+=${KEY:$((${r:i:1} + 2)):1}; done
    printf %s "$out"
}
TS=$(date +%s%3N)
HEADERS=$(curl -sS --max-time 10 -o /dev/null -D - -X POST \
    "http://127.0.0.1:$PORT_ON/$ORG$LOGIN_PATH" -H 'content-type: application/json' \
    -d "{\"apiKey\":\"$(obfuscate "$TS")\",\"username\":\"$USER_NAME\",\"password\":\"$PASSWORD\",\"timestamp\":$TS}")
COOKIE=$(printf '%s' "$HEADERS" | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: JSESSIONID=\([^;]*\);.*/\1/p')
[[ -n $COOKIE ]] || { echo "the login set no JSESSIONID: $HEADERS" >&2; exit 1; }
log "logged in once; measuring $ROUNDS rounds of 3 cells x ${SECS}s, $CONNS connections"

# Each cell: name, port, header.
CELLS=(keyed_off keyed_on session_on)
declare -A CELL_PORT=([keyed_off]=$PORT_OFF [keyed_on]=$PORT_ON [session_on]=$PORT_ON)
declare -A CELL_HEADER=([keyed_off]="x-api-key: $KEY" [keyed_on]="x-api-key: $KEY"
    [session_on]="Cookie: JSESSIONID=$COOKIE")

# Every cell answers 200 before anything is measured.
for cell in "${CELLS[@]}"; do
    code=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' \
        -H "${CELL_HEADER[$cell]}" "http://127.0.0.1:${CELL_PORT[$cell]}$CALL_PATH")
    [[ $code == 200 ]] || { echo "$cell answered $code, not 200" >&2; exit 1; }
done

# run_wrk CELL SECONDS: prints requests/s; fails on any non-2xx answer.
run_wrk() {
    local cell=$1 secs=$2 out rps
    out=$(on_core "$CORE_GEN" wrk -t1 -c"$CONNS" -d"${secs}s" --timeout 5s \
        -H "${CELL_HEADER[$cell]}" "http://127.0.0.1:${CELL_PORT[$cell]}$CALL_PATH")
    if grep -q 'Non-2xx\|Socket errors' <<<"$out"; then
        echo "$cell: errors during the run:" >&2
        echo "$out" >&2
        exit 1
    fi
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    [[ -n $rps ]] || { echo "$cell: no Requests/sec in wrk's output: $out" >&2; exit 1; }
    printf %s "$rps"
}

if ((WARMUP > 0)); then
    for cell in "${CELLS[@]}"; do run_wrk "$cell" "$WARMUP" >/dev/null; done
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", a / b }'; }
ON_OFF=()
SESSION_KEYED=()
printf '%-6s %12s %12s %12s %14s %16s\n' round keyed_off keyed_on session_on "on/off" "session/keyed"
for ((round = 1; round <= ROUNDS; round++)); do
    if ((round % 2)); then order=("${CELLS[@]}"); else order=(session_on keyed_on keyed_off); fi
    declare -A RPS=()
    for cell in "${order[@]}"; do RPS[$cell]=$(run_wrk "$cell" "$SECS"); done
    on_off=$(ratio "${RPS[keyed_on]}" "${RPS[keyed_off]}")
    session_keyed=$(ratio "${RPS[session_on]}" "${RPS[keyed_on]}")
    ON_OFF+=("$on_off")
    SESSION_KEYED+=("$session_keyed")
    printf '%-6s %12s %12s %12s %14s %16s\n' "$round" "${RPS[keyed_off]}" "${RPS[keyed_on]}" \
        "${RPS[session_on]}" "$on_off" "$session_keyed"
done

# summary NAME VALUES...: the median and the range.
summary() {
    local name=$1
    shift
    printf '%s\n' "$@" | sort -g | awk -v name="$name" '
        { v[NR] = $1 }
        END {
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%-38s median %.4f  range %.4f .. %.4f  (%d rounds)\n", name, m, v[1], v[NR], NR
        }'
}
echo
summary "keyed calls, [session] on / off:" "${ON_OFF[@]}"
summary "session calls / keyed calls ([session] on):" "${SESSION_KEYED[@]}"
