#!/usr/bin/env bash
# Bulk load: `kv import` of PAIRS pairs (100-byte values) through kv-proxy
# into a fresh kv-server, against `redis-cli --pipe` of the same SETs into a
# redis-server with `appendonly yes, appendfsync always`, on this machine, in
# this run. Prints pairs/s of each and the ratio (issue 16's target: >= 0.5x).
#
#   bash tests/perf/bulk.sh                      # builds the release binaries first
#   SKIP_BUILD=1 PAIRS=300000 ROUNDS=3 bash tests/perf/bulk.sh
#   KV_OLD=/path/to/an/older/kv bash tests/perf/bulk.sh   # also times that kv's import
#
# Needs python3, curl, redis-server and redis-cli (apt-get install -y redis-server).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PAIRS=${PAIRS:-300000}
ROUNDS=${ROUNDS:-3}
VALUE_BYTES=${VALUE_BYTES:-100}
BIN="$ROOT/target/release"

log() { printf '[bulk %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for cmd in python3 curl redis-server redis-cli; do
    command -v "$cmd" >/dev/null || die "$cmd is missing (apt-get install -y redis-server python3 curl)"
done
if [ -z "${SKIP_BUILD:-}" ]; then
    log "building the release binaries"
    (cd "$ROOT" && cargo build --release --bins)
fi

TMP=$(mktemp -d /tmp/kv-bulk.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    local i
    for ((i = 0; i < 200; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    die "nothing listens on port $1"
}
now() { date +%s.%N; }

log "writing $PAIRS pairs ($VALUE_BYTES-byte values) as NDJSON and as RESP"
python3 - "$PAIRS" "$VALUE_BYTES" "$TMP/pairs.ndjson" "$TMP/pairs.resp" <<'EOF'
import sys
pairs, size, ndjson, resp = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
with open(ndjson, "w") as n, open(resp, "wb") as r:
    for i in range(pairs):
        key = f"bulk/{i:07d}"
        value = (f"value {i} " + "x" * size)[:size]
        n.write(f'{{"key":"{key}","value":"{value}"}}\n')
        r.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key.encode(), len(value), value.encode()))
EOF

# kv_round KV_BINARY: a fresh server and proxy, one import through the proxy; prints pairs/s.
kv_round() {
    local kv=$1 dir server_port proxy_port started ended stored
    dir=$(mktemp -d "$TMP/kv.XXXXXX")
    server_port=$(free_port)
    proxy_port=$(free_port)
    "$BIN/kv-server" --listen "127.0.0.1:$server_port" --data-dir "$dir" >"$dir/server.log" 2>&1 &
    local server_pid=$!
    PIDS+=("$server_pid")
    wait_port "$server_port"
    "$BIN/kv-proxy" --listen "127.0.0.1:$proxy_port" --telnet-listen 127.0.0.1:0 \
        --upstream "http://127.0.0.1:$server_port" >"$dir/proxy.log" 2>&1 &
    local proxy_pid=$!
    PIDS+=("$proxy_pid")
    wait_port "$proxy_port"
    started=$(now)
    "$kv" --url "http://127.0.0.1:$proxy_port" import "$TMP/pairs.ndjson" 2>"$dir/import.log" \
        || die "kv import failed: $(cat "$dir/import.log")"
    ended=$(now)
    stored=$(curl -fsS -H 'accept: application/x-ndjson' "http://127.0.0.1:$server_port/kv?prefix=bulk/&keys_only=true" | wc -l)
    [ "$stored" = "$PAIRS" ] || die "the server holds $stored pairs, not $PAIRS"
    kill "$proxy_pid" "$server_pid"
    wait "$proxy_pid" "$server_pid" 2>/dev/null || true
    log "  $(tail -n 1 "$dir/import.log")"
    python3 -c "print(f'{$PAIRS / ($ended - $started):.0f}')"
}

# redis_round: a fresh redis-server (appendfsync always), one redis-cli --pipe; prints pairs/s.
redis_round() {
    local dir port started ended count
    dir=$(mktemp -d "$TMP/redis.XXXXXX")
    port=$(free_port)
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly yes \
        --appendfsync always --dir "$dir" --daemonize no >"$dir/redis.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$port"
    started=$(now)
    redis-cli -p "$port" --pipe <"$TMP/pairs.resp" >"$dir/pipe.log" 2>&1 || die "redis-cli --pipe failed: $(cat "$dir/pipe.log")"
    ended=$(now)
    count=$(redis-cli -p "$port" dbsize)
    [ "$count" = "$PAIRS" ] || die "redis holds $count keys, not $PAIRS"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    log "  $(tail -n 1 "$dir/pipe.log")"
    python3 -c "print(f'{$PAIRS / ($ended - $started):.0f}')"
}

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

kv_rates=()
redis_rates=()
old_rates=()
for ((round = 1; round <= ROUNDS; round++)); do
    log "round $round/$ROUNDS: kv import through kv-proxy"
    kv_rates+=("$(kv_round "$BIN/kv")")
    log "round $round/$ROUNDS: redis-cli --pipe (appendfsync always)"
    redis_rates+=("$(redis_round)")
    if [ -n "${KV_OLD:-}" ]; then
        log "round $round/$ROUNDS: the older kv import ($KV_OLD) through kv-proxy"
        old_rates+=("$(kv_round "$KV_OLD")")
    fi
done

kv=$(median "${kv_rates[@]}")
redis=$(median "${redis_rates[@]}")
echo
echo "machine: $(nproc) cores, $(uname -sr); redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'); kv at $(cd "$ROOT" && git rev-parse --short HEAD)"
echo "$PAIRS pairs, $VALUE_BYTES-byte values, median of $ROUNDS round(s)"
echo "| load | pairs/s (median) | rounds |"
echo "|---|--:|---|"
echo "| kv import through kv-proxy | $kv | ${kv_rates[*]} |"
if [ -n "${KV_OLD:-}" ]; then
    echo "| older kv import ($KV_OLD) through kv-proxy | $(median "${old_rates[@]}") | ${old_rates[*]} |"
fi
echo "| redis-cli --pipe, appendfsync always | $redis | ${redis_rates[*]} |"
python3 -c "print(f'kv / redis = {$kv / $redis:.2f}x (target >= 0.5x)')"
