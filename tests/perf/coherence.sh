#!/usr/bin/env bash
# Coherence figures (issue 14): one kv-server, proxies A, B and C on loopback.
#
#   bash tests/perf/coherence.sh            # builds release binaries first
#   SKIP_BUILD=1 WRITES=1000 bash tests/perf/coherence.sh
#
# 1. Staleness: 100 hot keys cached in B and C; WRITES writes through A at 50/s;
#    a poller per reader GETs the written key from A's acknowledgement until the
#    new value comes back: p50/p99/max of that time, polls that never saw it
#    within 2 s, and reads that went back to an older value after the new one.
#    Again with 1,000 background writes/s, and with the writes made on the server.
# 2. Writes at 10,000/s (kv bench, open loop) with no subscriber, then with 100
#    change-feed subscribers (curl -N) reading along.
# 3. Cache hits (wrk -t2 -c64, 10,000 keys, ROUNDS alternating rounds, medians)
#    through a proxy following the feed and one with --coherence off.
# SECTIONS picks which to run (default "staleness fanout hits").
# The frozen-feed and restart cases are end-to-end tests (tests/e2e/feed.rs),
# which print their timings: cargo test -p kv-tests --test e2e feed:: -- --nocapture
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WRITES=${WRITES:-1000}
PORT_BASE=${PORT_BASE:-18600}
SKIP_BUILD=${SKIP_BUILD:-0}
SECTIONS=${SECTIONS:-staleness fanout hits}
ROUNDS=${ROUNDS:-3}
HIT_DURATION=${HIT_DURATION:-10s}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BIN=$TARGET_DIR/release

if [ "$SKIP_BUILD" != 1 ]; then
    (cd "$REPO" && cargo build --release --quiet --bins -p kv-server -p kv-proxy -p kv-cli)
fi

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

SERVER=http://127.0.0.1:$((PORT_BASE))
A=http://127.0.0.1:$((PORT_BASE + 1))
B=http://127.0.0.1:$((PORT_BASE + 2))
C=http://127.0.0.1:$((PORT_BASE + 3))

"$BIN/kv-server" --listen "127.0.0.1:$PORT_BASE" --data-dir "$TMP/data" 2>"$TMP/server.log" &
PIDS+=($!)
sleep 0.5
for i in 1 2 3; do
    "$BIN/kv-proxy" --listen "127.0.0.1:$((PORT_BASE + i))" --telnet-listen off --upstream "$SERVER" \
        2>"$TMP/proxy$i.log" &
    PIDS+=($!)
done
# D: the same proxy without the feed, for the cost of coherence on hits.
D=http://127.0.0.1:$((PORT_BASE + 4))
"$BIN/kv-proxy" --listen "127.0.0.1:$((PORT_BASE + 4))" --telnet-listen off --upstream "$SERVER" \
    --coherence off 2>"$TMP/proxy4.log" &
PIDS+=($!)
sleep 1.5
has() { [[ " $SECTIONS " == *" $1 "* ]]; }

staleness() {
    local label=$1; shift
    local json
    json=$("$BIN/kv" bench-staleness --readers "$B,$C" --writes "$WRITES" "$@")
    python3 - "$label" "$json" <<'PY'
import json, sys
label, rows = sys.argv[1], json.loads(sys.argv[2])
for name, r in zip("BC", rows):
    print(f"| {label} | {name} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.2f} | {r['timed_out']} | {r['old_after_new']} |")
PY
}

if has staleness; then
    echo "| writes | reader | p50 ms | p99 ms | max ms | not seen in 2 s | old after new |"
    echo "|---|---|---|---|---|---|---|"
    staleness "through A, 50/s" --writer "$A"
    staleness "through A, 50/s + 1,000/s background" --writer "$A" --background-rate 1000
    staleness "on the server, 50/s" --writer "$SERVER"
    echo
fi

hits() {
    local url=$1
    PERF_KEYS=10000 PERF_VALUE_SIZE=100 PERF_PREFIX=/kv/ \
        wrk -t2 -c64 -d"$HIT_DURATION" -s "$HERE/get.lua" "$url" 2>&1 |
        awk '/^Requests\/sec/ {print $2}'
}
if has hits; then
    python3 "$HERE/helper.py" put-kv "$SERVER" 10000 >/dev/null
    python3 "$HERE/helper.py" warm "$B" /kv/ 10000 >/dev/null
    python3 "$HERE/helper.py" warm "$D" /kv/ 10000 >/dev/null
    ON=() OFF=()
    for _ in $(seq 1 "$ROUNDS"); do
        ON+=("$(hits "$B")")
        OFF+=("$(hits "$D")")
    done
    python3 - "${ON[*]}" "${OFF[*]}" <<'PY'
import statistics, sys
on = [float(x) for x in sys.argv[1].split()]
off = [float(x) for x in sys.argv[2].split()]
print("| proxy | hits/s, median | rounds |")
print("|---|--:|---|")
print(f"| feed on (default) | {statistics.median(on):.0f} | {', '.join(f'{x:.0f}' for x in on)} |")
print(f"| --coherence off | {statistics.median(off):.0f} | {', '.join(f'{x:.0f}' for x in off)} |")
print(f"\nfeed on / off: {statistics.median(on) / statistics.median(off):.3f}")
PY
    echo
fi

has fanout || exit 0

echo "| subscribers | PUT/s offered | PUT/s done | p50 ms | p99 ms |"
echo "|---|---|---|---|---|"
bench() {
    "$BIN/kv" --url "$SERVER" bench --ratio 0:1 --rate 10000 --duration 10s --keys 10000 --json --no-populate
}
NONE=$(bench)
for i in $(seq 1 100); do
    curl -sN "$SERVER/kv?watch=1" >/dev/null 2>&1 &
    PIDS+=($!)
done
sleep 1
WITH=$(bench)
python3 - "$NONE" "$WITH" <<'PY'
import json, sys
for label, text in (("0", sys.argv[1]), ("100", sys.argv[2])):
    r = json.loads(text)
    print(f"| {label} | 10000 | {r['requests_per_sec']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
PY
