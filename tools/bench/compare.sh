#!/usr/bin/env bash
# consentd beside its peers, in one run on one machine, with one Markdown table
# at the end (the targets of issue 11).
#
# The peers are not part of this repository; they are available separately,
# each its own small Cargo project:
#   - a Redis set-up ("what a team would build instead": profiles as hashes,
#     quarantined addresses as a set, the same decision rules). Its `pipe` mode
#     sends one pipeline of HMGETs plus one SMISMEMBER per batch. Redis itself
#     comes from the distribution: apt-get install -y redis-server.
#   - a no-op tonic server with consentd's consent.v1 message shapes and field
#     numbers, whose decisions cost nothing (every id eligible with one
#     address): the most any implementation can reach through tonic here.
# Give their binaries in PEER_REDIS_BIN and PEER_MOCK_BIN; either may be left
# unset, and its column stays empty.
#
# Usage:
#   cargo build --release --locked --bins
#   PEER_REDIS_BIN=/path/to/peer-redis PEER_MOCK_BIN=/path/to/mock tools/bench/compare.sh
#
# Settings (environment), with their defaults:
#   N=1000000               profiles (the same data shape in consentd and Redis)
#   DURATION=10             seconds of each timed run (after WARMUP)
#   WARMUP=2s               load before each timed run of consentd-load
#   RECIPIENTS=10000000     StreamEligibility recipients, over 2 streams
#   FEEDBACK_EVENTS=20000   RecordDeliveryFeedback events for one address (0: skip)
#   FEEDBACK_TIME_LIMIT=120s  stop a feedback run after this long
#   LOAD_BIN                consentd-load (default: target/release/, or $CARGO_TARGET_DIR/release/)
#   CONSENTD_BIN            consentd (default: next to LOAD_BIN)
#   CONSENTD_ARGS           extra flags for `consentd serve`
#   SEED_DIR                consentd's data directory (default: consentd-load seed's)
#   REDIS_PORT=6399  MOCK_ADDR=127.0.0.1:50199  CONSENTD_ADDR=127.0.0.1:50198
#   OUT                     where every run's raw output goes (default: a new temporary directory)
#
# The script starts and stops Redis, the no-op server and consentd itself; it
# refuses to run when one of their ports is already taken. Absolute figures
# move from run to run on a shared machine; ratios measured side by side hold.
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-1000000}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2s}
RECIPIENTS=${RECIPIENTS:-10000000}
FEEDBACK_EVENTS=${FEEDBACK_EVENTS:-20000}
FEEDBACK_TIME_LIMIT=${FEEDBACK_TIME_LIMIT:-120s}
LOAD_BIN=${LOAD_BIN:-${CARGO_TARGET_DIR:-target}/release/consentd-load}
CONSENTD_BIN=${CONSENTD_BIN:-$(dirname "$LOAD_BIN")/consentd}
CONSENTD_ARGS=${CONSENTD_ARGS:-}
REDIS_PORT=${REDIS_PORT:-6399}
MOCK_ADDR=${MOCK_ADDR:-127.0.0.1:50199}
CONSENTD_ADDR=${CONSENTD_ADDR:-127.0.0.1:50198}
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/consentd-compare.XXXXXX")}
PEER_REDIS_BIN=${PEER_REDIS_BIN:-}
PEER_MOCK_BIN=${PEER_MOCK_BIN:-}
mkdir -p "$OUT"

say() { printf '== %s\n' "$*" >&2; }
die() { printf 'compare.sh: %s\n' "$*" >&2; exit 1; }

for bin in "$LOAD_BIN" "$CONSENTD_BIN"; do
    [[ -x $bin ]] || die "$bin is missing: cargo build --release --locked --bins (or set LOAD_BIN)"
done
[[ -z $PEER_REDIS_BIN || -x $PEER_REDIS_BIN ]] || die "PEER_REDIS_BIN=$PEER_REDIS_BIN is not executable"
[[ -z $PEER_MOCK_BIN || -x $PEER_MOCK_BIN ]] || die "PEER_MOCK_BIN=$PEER_MOCK_BIN is not executable"
if [[ -n $PEER_REDIS_BIN ]]; then
    if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
        die "redis-server and redis-cli are needed for the Redis peer: apt-get install -y redis-server"
    fi
fi

# --- helpers -----------------------------------------------------------------

# Whether something listens on HOST:PORT.
listening() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

# Waits until something listens on $1, for at most $2 seconds (a server
# that builds an index before it listens may take a while), and while
# process $3 (if given) runs.
wait_listening() {
    local deadline=$((SECONDS + $2))
    until listening "$1"; do
        ((SECONDS < deadline)) || die "nothing listens on $1 after $2 s"
        [[ -z ${3:-} ]] || kill -0 "$3" 2>/dev/null || die "the server for $1 exited (see $OUT)"
        sleep 0.05
    done
}

# CPU time (user + system) of a process, in clock ticks.
cpu_ticks() { cut -d')' -f2- "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
rss_mib() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# The value of KEY in a `consentd-load --kv` output file, or n/a.
kv() {
    local v=""
    [[ -f $1 ]] && v=$(sed -n "s/^$2=//p" "$1" | tail -n 1)
    printf '%s' "${v:-n/a}"
}

# consentd-load MODE ... > $OUT/NAME.kv (stderr to NAME.log); a failed run leaves n/a.
load() {
    local name=$1
    shift
    say "consentd-load $*"
    if ! "$LOAD_BIN" "$@" --kv >"$OUT/$name.kv" 2>"$OUT/$name.log"; then
        printf 'compare.sh: run %s failed (see %s):\n' "$name" "$OUT/$name.log" >&2
        tail -n 5 "$OUT/$name.log" >&2
    fi
}

# Milliseconds with 2 decimals under 10, 1 under 100, none above.
ms() {
    if is_num "$1"; then
        awk -v v="$1" 'BEGIN { if (v < 10) printf "%.2f", v; else if (v < 100) printf "%.1f", v; else printf "%.0f", v }'
    else printf '%s' "$1"; fi
}
is_num() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
# 1234567 -> 1,234,567 (integers only; anything else unchanged).
int() { if [[ $1 =~ ^[0-9]+$ ]]; then sed ':a;s/\B[0-9]\{3\}\>/,&/;ta' <<<"$1"; else printf '%s' "$1"; fi; }
# A / B as "1.23×", or a dash.
ratio() { if is_num "$1" && is_num "$2" && [[ $2 != 0 ]]; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", a / b }'; else printf '—'; fi; }
# A / B as "45 %", or a dash.
pct() { if is_num "$1" && is_num "$2" && [[ $2 != 0 ]]; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f %%", 100 * a / b }'; else printf '—'; fi; }

REDIS_STARTED=""
MOCK_PID=""
CONSENTD_PID=""
cleanup() {
    if [[ -n $REDIS_STARTED ]]; then
        redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    fi
    if [[ -n $MOCK_PID ]]; then
        kill "$MOCK_PID" 2>/dev/null || true
    fi
    if [[ -n $CONSENTD_PID ]]; then
        kill -TERM "$CONSENTD_PID" 2>/dev/null || true
        wait "$CONSENTD_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

for addr in "127.0.0.1:$REDIS_PORT" "$MOCK_ADDR" "$CONSENTD_ADDR"; do
    listening "$addr" && die "$addr is already in use: stop what listens there, or choose another port"
done

CPUS=$(nproc)
MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
COMMIT=$(git describe --always --dirty 2>/dev/null || echo unknown)
say "raw outputs in $OUT"

# --- consentd's data ----------------------------------------------------------

say "seeding consentd with $N profiles (kept between runs)"
SEED_DIR=$("$LOAD_BIN" seed --profiles "$N" ${SEED_DIR:+--data-dir "$SEED_DIR"} --server-bin "$CONSENTD_BIN" 2>"$OUT/seed.log")
cat "$OUT/seed.log" >&2

# --- the Redis peer -----------------------------------------------------------

REDIS_RATE=n/a REDIS_CPU=n/a REDIS_USED=n/a REDIS_RSS=n/a
if [[ -n $PEER_REDIS_BIN ]]; then
    say "Redis peer: redis-server on port $REDIS_PORT, load $N, pipe 10000 2 $DURATION $N"
    redis-server --port "$REDIS_PORT" --save "" --appendonly no --daemonize yes >"$OUT/redis-server.log"
    REDIS_STARTED=1
    wait_listening "127.0.0.1:$REDIS_PORT" 30
    until redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; do sleep 0.05; done
    REDIS_PID=$(redis-cli -p "$REDIS_PORT" info server | tr -d '\r' | sed -n 's/^process_id://p')
    "$PEER_REDIS_BIN" "$REDIS_PORT" load "$N" >"$OUT/redis-load.log"
    REDIS_USED=$(redis-cli -p "$REDIS_PORT" info memory | tr -d '\r' | awk -F: '/^used_memory:/ { printf "%.1f", $2 / 1048576 }')
    before=$(cpu_ticks "$REDIS_PID")
    "$PEER_REDIS_BIN" "$REDIS_PORT" pipe 10000 2 "$DURATION" "$N" | tee "$OUT/redis-pipe.log" >&2
    after=$(cpu_ticks "$REDIS_PID")
    REDIS_RSS=$(rss_mib "$REDIS_PID")
    read -r REDIS_RATE REDIS_SECS < <(sed -n 's/^redis-pipeline peer: \([0-9]*\) decisions\/s .* \([0-9.]*\) s)$/\1 \2/p' "$OUT/redis-pipe.log") ||
        die "the Redis peer's output was not understood (see $OUT/redis-pipe.log)"
    REDIS_CPU=$(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v r="$REDIS_RATE" -v s="$REDIS_SECS" \
        'BEGIN { printf "%.2f", (t / hz * 1000) / (r * s / 1000) }')
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    REDIS_STARTED=""
fi

# --- the no-op server ---------------------------------------------------------

if [[ -n $PEER_MOCK_BIN ]]; then
    say "no-op server on $MOCK_ADDR"
    "$PEER_MOCK_BIN" "$MOCK_ADDR" >"$OUT/mock.log" 2>&1 &
    MOCK_PID=$!
    wait_listening "$MOCK_ADDR" 30 "$MOCK_PID"
    M=(--addr "$MOCK_ADDR" --server-pid "$MOCK_PID" --profiles "$N")
    load mock-batch batch "${M[@]}" --view full --duration "${DURATION}s" --warmup "$WARMUP"
    load mock-stream stream "${M[@]}" --recipients "$RECIPIENTS"
    load mock-check check "${M[@]}" --duration "${DURATION}s" --warmup "$WARMUP"
    if [[ $FEEDBACK_EVENTS != 0 ]]; then
        load mock-feedback feedback "${M[@]:0:4}" --events "$FEEDBACK_EVENTS" --time-limit "$FEEDBACK_TIME_LIMIT"
    fi
    MOCK_RSS=$(rss_mib "$MOCK_PID")
    kill "$MOCK_PID"
    wait "$MOCK_PID" 2>/dev/null || true
    MOCK_PID=""
fi

# --- consentd -----------------------------------------------------------------

say "consentd on $CONSENTD_ADDR, data in $SEED_DIR"
# shellcheck disable=SC2086 # CONSENTD_ARGS is a list of flags
"$CONSENTD_BIN" serve --listen "$CONSENTD_ADDR" --data-dir "$SEED_DIR" $CONSENTD_ARGS >"$OUT/consentd.log" 2>&1 &
CONSENTD_PID=$!
wait_listening "$CONSENTD_ADDR" 300 "$CONSENTD_PID"
C=(--addr "$CONSENTD_ADDR" --server-pid "$CONSENTD_PID" --profiles "$N")
load consentd-batch batch "${C[@]}" --view full --duration "${DURATION}s" --warmup "$WARMUP"
load consentd-basic batch "${C[@]}" --view basic --duration "${DURATION}s" --warmup "$WARMUP"
load consentd-stream stream "${C[@]}" --recipients "$RECIPIENTS"
load consentd-check check "${C[@]}" --duration "${DURATION}s" --warmup "$WARMUP"
CONSENTD_RSS=$(rss_mib "$CONSENTD_PID")
kill -TERM "$CONSENTD_PID"
wait "$CONSENTD_PID" 2>/dev/null || true
CONSENTD_PID=""
if [[ $FEEDBACK_EVENTS != 0 ]]; then
    # Each on a server of its own, on a fresh data directory that
    # consentd-load removes afterwards: the hot address's log does not
    # belong in the seed.
    FB=(--server-bin "$CONSENTD_BIN" --events "$FEEDBACK_EVENTS" --time-limit "$FEEDBACK_TIME_LIMIT")
    for flag in $CONSENTD_ARGS; do FB+=("--server-arg=$flag"); done
    load consentd-feedback feedback "${FB[@]}"
    load consentd-late feedback "${FB[@]}" --late
fi
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the table ----------------------------------------------------------------

c() { kv "$OUT/consentd-$1.kv" "$2"; }
m() { kv "$OUT/mock-$1.kv" "$2"; }
# Events/s of a feedback run, marked when it stopped at the time limit.
fb() {
    local f=$OUT/$1-feedback.kv
    [[ $1 == consentd-late ]] && f=$OUT/consentd-late.kv
    local rate
    rate=$(int "$(kv "$f" events_per_s)")
    if [[ $(kv "$f" complete) == 0 ]]; then
        rate="$rate (stopped after $(kv "$f" sent) events, $(kv "$f" elapsed_s) s)"
    fi
    printf '%s; p99 %s ms' "$rate" "$(ms "$(kv "$f" latency_p99_ms)")"
}

{
    echo "consentd ($COMMIT) beside its peers: $N profiles; $CPUS CPUs ($MODEL), load generator and servers on the same machine; $STARTED; load average $LOAD_START at the start, $LOAD_END at the end."
    echo
    echo "| work | consentd | Redis peer | no-op server | consentd ÷ Redis | consentd ÷ no-op |"
    echo "|---|---:|---:|---:|---:|---:|"
    echo "| BatchCheckEligibility, 10,000 ids, 4 in flight (Redis: pipeline, 2 clients), FULL: decisions/s | $(int "$(c batch decisions_per_s)") | $(int "$REDIS_RATE") | $(int "$(m batch decisions_per_s)") | $(ratio "$(c batch decisions_per_s)" "$REDIS_RATE") | $(pct "$(c batch decisions_per_s)" "$(m batch decisions_per_s)") |"
    echo "| the same, BASIC view: decisions/s | $(int "$(c basic decisions_per_s)") | | (ignores the view) | $(ratio "$(c basic decisions_per_s)" "$REDIS_RATE") | |"
    echo "| the same: answer bytes per decision, FULL / BASIC | $(c batch bytes_per_decision) / $(c basic bytes_per_decision) | | $(m batch bytes_per_decision) / — | | |"
    echo "| the same, FULL: p50 / p99 per call | $(ms "$(c batch latency_p50_ms)") / $(ms "$(c batch latency_p99_ms)") ms | | $(ms "$(m batch latency_p50_ms)") / $(ms "$(m batch latency_p99_ms)") ms | | |"
    echo "| the same, FULL: server CPU per 1,000 decisions | $(c batch server_cpu_ms_per_1000) ms | $REDIS_CPU ms | $(m batch server_cpu_ms_per_1000) ms | | |"
    echo "| the same, FULL: load generator CPU per 1,000 decisions | $(c batch client_cpu_ms_per_1000) ms | | $(m batch client_cpu_ms_per_1000) ms | | |"
    echo "| StreamEligibility, $(int "$RECIPIENTS") recipients, 2 streams of 10,000-id chunks: decisions/s | $(int "$(c stream decisions_per_s)") | | $(int "$(m stream decisions_per_s)") | | $(pct "$(c stream decisions_per_s)" "$(m stream decisions_per_s)") |"
    echo "| the same: server RSS before, and lowest–highest during | $(c stream server_rss_before_mib); $(c stream server_rss_min_mib)–$(c stream server_rss_max_mib) MiB | | $(m stream server_rss_before_mib); $(m stream server_rss_min_mib)–$(m stream server_rss_max_mib) MiB | | |"
    echo "| CheckEligibility, 64 in flight over 4 connections: calls/s | $(int "$(c check calls_per_s)") | | $(int "$(m check calls_per_s)") | | $(pct "$(c check calls_per_s)" "$(m check calls_per_s)") |"
    echo "| the same: p50 / p99 | $(ms "$(c check latency_p50_ms)") / $(ms "$(c check latency_p99_ms)") ms | | $(ms "$(m check latency_p50_ms)") / $(ms "$(m check latency_p99_ms)") ms | | |"
    if [[ $FEEDBACK_EVENTS != 0 ]]; then
        echo "| RecordDeliveryFeedback, one address, $(int "$FEEDBACK_EVENTS") events 1 ms apart, 256 in flight: events/s | $(fb consentd) | | $(fb mock) | | |"
        echo "| the same, every event late | $(fb consentd-late) | | | | |"
    fi
    echo "| memory with $(int "$N") profiles (consentd and no-op server: RSS after the eligibility runs; Redis: used_memory, and RSS) | ${CONSENTD_RSS:-n/a} MiB | $REDIS_USED MiB ($REDIS_RSS MiB) | ${MOCK_RSS:-n/a} MiB | $(ratio "${CONSENTD_RSS:-n/a}" "$REDIS_USED") | |"
    echo "| consentd start-up to SERVING | $(c batch serving_s) s | | | | |"
    echo
    echo "Commands: \`consentd-load seed --profiles $N\`; Redis: \`peer-redis $REDIS_PORT load $N\`, \`peer-redis $REDIS_PORT pipe 10000 2 $DURATION $N\`; each server: \`consentd-load batch --view full|basic --duration ${DURATION}s\`, \`stream --recipients $RECIPIENTS\`, \`check --duration ${DURATION}s\`, \`feedback --events $FEEDBACK_EVENTS [--late]\`, with \`--addr ADDR --server-pid PID --profiles $N\` (consentd's feedback runs: each on a fresh server that consentd-load starts). Raw outputs: $OUT."
} | tee "$OUT/table.md"
