#!/usr/bin/env bash
# consentd on PostgreSQL beside consentd on its embedded sled store, in one
# run on one machine (the measurements of issue 13):
#   - durable writes/s (OptOut/OptIn toggles) at 64 clients, each store;
#   - BatchCheckEligibility decisions/s: sled, and each of two replicas that
#     share one PostgreSQL database holding the same N profiles.
# It starts its own PostgreSQL cluster (tools/pg/cluster; Debian's
# postgresql package) and removes it at the end.
#
# Usage:
#   cargo build --release --locked --bins
#   tools/bench/postgres.sh
#
# Settings (environment): N=200000 profiles, DURATION=10 (seconds per timed
# run), LOAD_BIN, CONSENTD_BIN (default target/release/), OUT (raw outputs;
# default a new temporary directory). Absolute figures move from run to run
# on a shared machine; compare the columns of one run.
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-200000}
DURATION=${DURATION:-10}
LOAD_BIN=${LOAD_BIN:-${CARGO_TARGET_DIR:-target}/release/consentd-load}
CONSENTD_BIN=${CONSENTD_BIN:-$(dirname "$LOAD_BIN")/consentd}
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/consentd-pg.XXXXXX")}
mkdir -p "$OUT"
say() { printf '== %s\n' "$*" >&2; }
for bin in "$LOAD_BIN" "$CONSENTD_BIN"; do
    [[ -x $bin ]] || { echo "$bin is missing: cargo build --release --locked --bins" >&2; exit 1; }
done

pg_dir=$(mktemp -d)
chmod 755 "$pg_dir"   # the postgres user must reach the cluster inside it
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    tools/pg/cluster stop "$pg_dir/c" || true
    rm -rf "$pg_dir"
}
trap cleanup EXIT
url=$(tools/pg/cluster start "$pg_dir/c")
psql "$url" -qAt -c "CREATE DATABASE consentd_writes" >/dev/null
writes_url=${url%/consentd}/consentd_writes
say "PostgreSQL at $url"

kv() { sed -n "s/^$2=//p" "$1" | tail -n 1; }

say "durable writes, 64 clients: sled"
"$LOAD_BIN" bench --clients 64 --duration "${DURATION}s" >"$OUT/sled-writes.md" 2>"$OUT/sled-writes.log"
say "durable writes, 64 clients: PostgreSQL"
"$LOAD_BIN" bench --clients 64 --duration "${DURATION}s" \
    --server-arg=--database-url="$writes_url" >"$OUT/pg-writes.md" 2>"$OUT/pg-writes.log"

say "seed $N profiles (sled), copied into PostgreSQL by export and import"
seed_dir=$("$LOAD_BIN" seed --profiles "$N" 2>"$OUT/seed.log")
"$CONSENTD_BIN" export --data-dir "$seed_dir" --output "$OUT/seed.jsonl" 2>>"$OUT/seed.log"
started=$SECONDS
"$CONSENTD_BIN" import --database-url "$url" "$OUT/seed.jsonl" 2>>"$OUT/seed.log"
import_s=$((SECONDS - started))

say "batches: sled"
"$LOAD_BIN" batch --profiles "$N" --data-dir "$seed_dir" --duration "${DURATION}s" --kv \
    >"$OUT/sled-batch.kv" 2>"$OUT/sled-batch.log"

say "batches: two replicas on PostgreSQL"
for port in 50301 50302; do
    "$CONSENTD_BIN" serve --listen "127.0.0.1:$port" --database-url "$url" 2>"$OUT/replica-$port.log" &
    pids+=($!)
done
# consentd-load waits for SERVING, once something listens.
for port in 50301 50302; do
    for _ in $(seq 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
done
"$LOAD_BIN" batch --addr 127.0.0.1:50301 --server-pid "${pids[0]}" --profiles "$N" \
    --duration "${DURATION}s" --kv >"$OUT/pg-batch-1.kv" 2>"$OUT/pg-batch-1.log"
"$LOAD_BIN" batch --addr 127.0.0.1:50302 --server-pid "${pids[1]}" --profiles "$N" \
    --duration "${DURATION}s" --kv >"$OUT/pg-batch-2.kv" 2>"$OUT/pg-batch-2.log"

writes() { awk -F'|' '/^\| 64 /{ gsub(/ /, "", $4); print $4 }' "$1"; }
p99() { awk -F'|' '/^\| 64 /{ gsub(/^ +| +$/, "", $6); print $6 }' "$1"; }
{
    echo "consentd on PostgreSQL beside sled: $N profiles, $(nproc) CPUs, load generator, servers and database on one machine; $(date -u +%Y-%m-%dT%H:%MZ)."
    echo
    echo "| measure | sled | PostgreSQL replica 1 | PostgreSQL replica 2 |"
    echo "|---|---:|---:|---:|"
    echo "| durable writes/s, 64 clients (p99) | $(writes "$OUT/sled-writes.md") ($(p99 "$OUT/sled-writes.md")) | $(writes "$OUT/pg-writes.md") ($(p99 "$OUT/pg-writes.md")) | |"
    echo "| BatchCheckEligibility, 10,000 ids, 4 in flight: decisions/s | $(kv "$OUT/sled-batch.kv" decisions_per_s) | $(kv "$OUT/pg-batch-1.kv" decisions_per_s) | $(kv "$OUT/pg-batch-2.kv" decisions_per_s) |"
    echo "| the same: p99 per call, ms | $(kv "$OUT/sled-batch.kv" latency_p99_ms) | $(kv "$OUT/pg-batch-1.kv" latency_p99_ms) | $(kv "$OUT/pg-batch-2.kv" latency_p99_ms) |"
    echo "| server RSS after the batches, MiB | $(kv "$OUT/sled-batch.kv" server_rss_mib) | $(kv "$OUT/pg-batch-1.kv" server_rss_mib) | $(kv "$OUT/pg-batch-2.kv" server_rss_mib) |"
    echo
    echo "Import of the $N-profile export into PostgreSQL: ${import_s} s. Raw outputs: $OUT."
} | tee "$OUT/table.md"
