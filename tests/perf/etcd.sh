#!/usr/bin/env bash
# kv over etcd against etcd's own JSON gateway on the same cluster (issue 15): a real
# 3-member etcd cluster on loopback (tests/etcd-cluster.sh), one kv-server --store etcd
# over all three members and a kv-proxy in front of it, under the same wrk load as the
# gateway's /v3/kv/put and /v3/kv/range. See tests/perf/README.md.
#
#   bash tests/perf/etcd.sh
#   KEYS=10000 ROUNDS=3 DURATION=10s THREADS=3 CONNECTIONS=63 bash tests/perf/etcd.sh
#
# Environment:
#   KEYS         distinct keys, key:000000000000 .. (16 bytes each; values 100 bytes)  [10000]
#   ROUNDS       rounds; each figure in the table is the median over them           [3]
#   DURATION     length of each wrk run                                             [10s]
#   THREADS      wrk threads; a multiple of 3, so that "all members in turn" is even [3]
#   CONNECTIONS  concurrent connections for every run; a multiple of THREADS        [63]
#   PORT_BASE    kv-server on PORT_BASE+1, kv-proxy on +2 (etcd-cluster.sh picks free
#                ports of its own for the members)                                 [19600]
#   SKIP_BUILD=1 use the kv binaries already in target/release (built with the etcd feature)
#   KEEP_TMP=1   keep the temporary directory (logs, raw outputs) and print its path
#   OUT=FILE     also write the table (with its header) to FILE
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# port_open, start, wait_port, stop_started, remove_tmp: shared with the other benchmark scripts.
# shellcheck source=tests/perf/processes.sh
. "$HERE/processes.sh"
REPO=$(cd "$HERE/../.." && pwd)

KEYS=${KEYS:-10000}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-3}
CONNECTIONS=${CONNECTIONS:-63}
PORT_BASE=${PORT_BASE:-19600}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
OUT=${OUT:-}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
VALUE_SIZE=100
GW_PREFIX=gw/   # the gateway's keys; kv-server keeps its own under kv/ (--etcd-prefix)

# Longer than the whole run: the PUT runs refresh cached entries through the change feed,
# and a warm-up GET that hits does not, so with 60 s, entries a PUT run refreshed expired
# in the middle of a later hit run (2% misses seen).
PROXY_TTL=10m

KV_SERVER_PORT=$((PORT_BASE + 1))
KV_PROXY_PORT=$((PORT_BASE + 2))

COMMAND="KEYS=$KEYS ROUNDS=$ROUNDS DURATION=$DURATION THREADS=$THREADS CONNECTIONS=$CONNECTIONS bash tests/perf/etcd.sh"
BUILD="cargo build --release --bins -p kv-server -p kv-proxy -p kv-cli --features kv-server/etcd"

log() { printf '[etcd-perf %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ------------------------------------------------------------------ cleanup

PIDS=()
NAMES=()
TMP=""
CLUSTER=""   # the etcd cluster's directory, once etcd-cluster.sh start has run

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_started
    # The members run detached (setsid); etcd-cluster.sh stops exactly the ones whose
    # pid files are in this cluster's directory.
    if [ -n "$CLUSTER" ]; then
        bash "$REPO/tests/etcd-cluster.sh" stop "$CLUSTER" || true
    fi
    remove_tmp
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

KV_SERVER_PID=""
KV_PROXY_PID=""
ENDPOINTS=""   # http://127.0.0.1:P1,http://127.0.0.1:P2,http://127.0.0.1:P3
MEMBERS=""     # 127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3 (for lib.lua's PERF_TARGETS)

start_everything() {
    local port
    for port in "$KV_SERVER_PORT" "$KV_PROXY_PORT"; do
        port_open "$port" && die "port $port is in use; set PORT_BASE to a free range"
    done
    local bin="$TARGET_DIR/release"
    unset RUST_LOG

    log "starting a 3-member etcd cluster (tests/etcd-cluster.sh)"
    CLUSTER="$TMP/etcd"
    ENDPOINTS=$(bash "$REPO/tests/etcd-cluster.sh" start "$CLUSTER")
    MEMBERS=${ENDPOINTS//http:\/\//}
    log "  members: $ENDPOINTS"

    log "starting kv-server --store etcd and kv-proxy"
    mkdir -p "$TMP/kv-data"
    start kv-server "$bin/kv-server" --listen "127.0.0.1:$KV_SERVER_PORT" --data-dir "$TMP/kv-data" \
        --store etcd --etcd-endpoints "$ENDPOINTS"
    KV_SERVER_PID=$!
    wait_port kv-server "$KV_SERVER_PORT"
    start kv-proxy "$bin/kv-proxy" --listen "127.0.0.1:$KV_PROXY_PORT" \
        --upstream "http://127.0.0.1:$KV_SERVER_PORT" --telnet-listen off --cache-ttl "$PROXY_TTL"
    KV_PROXY_PID=$!
    wait_port kv-proxy "$KV_PROXY_PORT"
}

# leader: the client address (127.0.0.1:PORT) of the member that leads now.
leader() {
    local url status
    for url in ${ENDPOINTS//,/ }; do
        status=$(ETCDCTL_API=3 etcdctl --endpoints "$url" --command-timeout=2s endpoint status -w json 2>/dev/null) || continue
        if python3 -c 'import json,sys; s=json.loads(sys.argv[1])[0]["Status"]; sys.exit(0 if s["leader"] == s["header"]["member_id"] else 1)' "$status"; then
            echo "${url#http://}"
            return 0
        fi
    done
    return 1
}

# ------------------------------------------------------------------ data

helper() { python3 "$HERE/helper.py" "$@"; }

populate() {
    log "populating $KEYS keys through kv-server (etcd prefix kv/) and the gateway (prefix $GW_PREFIX)"
    helper put-kv "http://127.0.0.1:$KV_SERVER_PORT" "$KEYS"
    helper put-etcd "http://$(leader || echo "${MEMBERS%%,*}")" "$KEYS" "$GW_PREFIX"
}

# note TEXT: something odd about a run, printed under the table.
note() {
    log "note: $*"
    printf -- '- %s\n' "$*" >>"$TMP/notes"
}

# proxy_metric NAME: one counter of kv-proxy's /metrics (kv_proxy_NAME_total).
proxy_metric() {
    curl -fsS "http://127.0.0.1:$KV_PROXY_PORT/metrics" 2>/dev/null |
        awk -v n="kv_proxy_${1}_total" '$1 == n {print $2; found = 1} END {if (!found) print 0}'
}

# warm: GET every key through kv-proxy, then wait (up to 10 s) until a key is a hit:
# the proxy answers from its cache only while its change feed from kv-server is healthy.
warm() {
    local got="" i
    helper warm "http://127.0.0.1:$KV_PROXY_PORT" /kv/ "$KEYS"
    for ((i = 0; i < 50; i++)); do
        got=$(helper header "http://127.0.0.1:$KV_PROXY_PORT" /kv/key:000000000000 X-Cache)
        case "$got" in
            HIT*) return 0 ;;
        esac
        sleep 0.2
        helper warm "http://127.0.0.1:$KV_PROXY_PORT" /kv/ 1
    done
    note "after warming, kv-proxy still answered X-Cache: '$got' 10 s later (expected HIT)"
}

# ------------------------------------------------------------------ load

LEADERS=()   # the leader before each gateway run, for the header
TICKS=$(getconf CLK_TCK)

# cpu_ticks PID...: user + system CPU ticks so far of those processes (all threads).
cpu_ticks() {
    local pid total=0 t
    for pid in "$@"; do
        t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
        total=$((total + t))
    done
    echo "$total"
}

secs() { awk -v t="$1" -v hz="$TICKS" 'BEGIN {printf "%.2f", t / hz}'; }

member_pids() { cat "$CLUSTER"/m*/pid 2>/dev/null || true; }

# run_wrk ROW ROUND ADDR SCRIPT [TARGETS]: TARGETS (host:port,...) spreads the wrk
# threads over those addresses in turn (lib.lua's PERF_TARGETS). Also writes the CPU
# that etcd's members, kv-server and kv-proxy spent during the run (cpu.ROW.ROUND.out).
run_wrk() {
    local row=$1 round=$2 addr=$3 script=$4 targets=${5:-}
    local out="$TMP/results/wrk.$row.$round.out"
    local -a members
    mapfile -t members < <(member_pids)
    local e0 s0 p0 e1 s1 p1 t0 t1
    e0=$(cpu_ticks "${members[@]}"); s0=$(cpu_ticks "$KV_SERVER_PID"); p0=$(cpu_ticks "$KV_PROXY_PID")
    t0=$(date +%s.%N)
    PERF_KEYS=$KEYS PERF_VALUE_SIZE=$VALUE_SIZE PERF_PREFIX=/kv/ PERF_ETCD_PREFIX=$GW_PREFIX \
        PERF_TARGETS=$targets \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
        -s "$HERE/$script" "http://$addr" >"$out" 2>&1 || true
    t1=$(date +%s.%N)
    e1=$(cpu_ticks "${members[@]}"); s1=$(cpu_ticks "$KV_SERVER_PID"); p1=$(cpu_ticks "$KV_PROXY_PID")
    echo "ticks=$TICKS wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') etcd=$((e1 - e0)) kvserver=$((s1 - s0)) kvproxy=$((p1 - p0))" \
        >"$TMP/results/cpu.$row.$round.out"
    local errors
    errors=$(grep -E 'Non-2xx|Socket errors' "$out" | tr -s ' ' | sed 's/^ //' | paste -sd ';' || true)
    log "  $row: $(grep -E '^Requests/sec' "$out" || echo 'failed (see raw output)'); CPU s: etcd $(secs $((e1 - e0))), kv-server $(secs $((s1 - s0))), kv-proxy $(secs $((p1 - p0)))${errors:+; $errors}"
    [ -z "$errors" ] || note "round $round, $row: $errors"
    local late
    late=$(awk -v a="$t0" -v b="$t1" -v d="${DURATION%s}" 'BEGIN {if (d ~ /^[0-9.]+$/ && b - a > d + 5) printf "%.0f", b - a}')
    [ -z "$late" ] || note "round $round, $row: wrk took ${late} s for a ${DURATION} run (the machine stalled?)"
}

# gateway ROW ROUND SCRIPT: the gateway at its leader, then at all members in turn.
gateway() {
    local row=$1 round=$2 script=$3 lead after
    lead=$(leader) || die "no etcd member leads"
    LEADERS+=("$lead")
    run_wrk "${row}_leader" "$round" "$lead" "$script"
    run_wrk "${row}_members" "$round" "${MEMBERS%%,*}" "$script" "$MEMBERS"
    after=$(leader || echo none)
    [ "$after" = "$lead" ] || note "round $round: the etcd leader moved from $lead to $after during the ${row} runs"
}

kv_put() { run_wrk kvserver_put "$1" "127.0.0.1:$KV_SERVER_PORT" kv_put.lua; }
gw_put() { gateway gw_put "$1" etcd_put.lua; }
kv_get() { run_wrk kvserver_get "$1" "127.0.0.1:$KV_SERVER_PORT" get.lua; }
gw_range() { gateway gw_range "$1" etcd_range.lua; }
# proxy_hit ROUND: warmed hits, and how many of the run's GETs kv-proxy forwarded
# (a change feed that lapses, under a stall, turns hits into misses).
proxy_hit() {
    local r=$1 h0 m0 h1 m1
    warm
    h0=$(proxy_metric cache_hits); m0=$(proxy_metric cache_misses)
    run_wrk kvproxy_get "$r" "127.0.0.1:$KV_PROXY_PORT" get.lua
    h1=$(proxy_metric cache_hits); m1=$(proxy_metric cache_misses)
    log "  kvproxy_get: $((h1 - h0)) hits, $((m1 - m0)) misses"
    if [ $(((m1 - m0) * 100)) -gt $((h1 - h0 + m1 - m0)) ]; then
        note "round $r, kvproxy_get: $((m1 - m0)) of $((h1 - h0 + m1 - m0)) GETs were misses (kv-proxy forwarded them)"
    fi
}

# Odd rounds run kv before the gateway, even rounds the gateway first, so that neither
# always runs on the store the other has just grown.
round() {
    local r=$1
    log "round $r of $ROUNDS"
    if [ $((r % 2)) = 1 ]; then
        kv_put "$r"; gw_put "$r"
        kv_get "$r"; gw_range "$r"
        proxy_hit "$r"
    else
        gw_put "$r"; kv_put "$r"
        gw_range "$r"; kv_get "$r"
        proxy_hit "$r"
    fi
}

# ------------------------------------------------------------------ main

for cmd in cargo etcd etcdctl wrk python3 curl; do
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd is not installed (Debian: etcd-server etcd-client wrk python3 curl)"
done
[ $((THREADS % 3)) = 0 ] || log "warning: THREADS=$THREADS is not a multiple of 3: 'all members in turn' loads them unevenly"
[ $((CONNECTIONS % THREADS)) = 0 ] || log "warning: wrk opens CONNECTIONS/THREADS per thread: $((CONNECTIONS / THREADS * THREADS)), not $CONNECTIONS"

if [ "$SKIP_BUILD" = 1 ]; then
    log "SKIP_BUILD=1: using the binaries in $TARGET_DIR/release"
else
    log "building kv ($BUILD)"
    (cd "$REPO" && $BUILD)
fi
for b in kv-server kv-proxy; do
    [ -x "$TARGET_DIR/release/$b" ] || die "$TARGET_DIR/release/$b is missing"
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/kv-perf-etcd.XXXXXX")
mkdir -p "$TMP/results"
: >"$TMP/notes"

START=$(date +%s)
start_everything
populate
for ((r = 1; r <= ROUNDS; r++)); do
    round "$r"
done

leaders=$(printf '%s\n' "${LEADERS[@]}" | sort | uniq -c | awk '{printf "%s%s (%d runs)", (NR > 1 ? ", " : ""), $2, $1}')
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
mem=$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
if [ "$SKIP_BUILD" = 1 ]; then
    kv_version="kv prebuilt in $TARGET_DIR/release ($(date -u -r "$TARGET_DIR/release/kv-server" '+%Y-%m-%d %H:%M UTC'))"
else
    kv_version="kv $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo '+dirty')"
fi
versions="etcd $(etcd --version | head -n1 | awk '{print $3}'), wrk $(dpkg-query -W -f='${Version}' wrk 2>/dev/null || echo '?'), $kv_version (\`$BUILD\`)"
{
    echo "### kv over etcd vs etcd's JSON gateway, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- machine: $(nproc) cores, ${cpu:-unknown CPU}, $mem RAM, Linux $(uname -r); etcd's 3 members, kv-server, kv-proxy and the load generator on the same cores, loopback; load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- cluster: 3 members started by \`tests/etcd-cluster.sh\` (data in the temporary directory, fsync on); kv-server \`--store etcd --etcd-endpoints\` all three (its client balances over them), kv-proxy \`--cache-ttl $PROXY_TTL\` in front of it (kept coherent by kv-server's change feed), warmed before each of its runs"
    echo "- gateway: etcd's own JSON gateway on the members' client ports, \`POST /v3/kv/put\` and \`POST /v3/kv/range\` (linearizable, etcd's default), base64 keys under \`$GW_PREFIX\`; \"leader only\": every connection to the member leading at the start of that run (${leaders:-?}); \"all members in turn\": wrk thread i to member i mod 3"
    echo "- load: \`wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency\` for every row (tests/perf/kv_put.lua, get.lua, etcd_put.lua, etcd_range.lua); $KEYS keys of 16 bytes, values of $VALUE_SIZE bytes, written before the runs; median of $ROUNDS round(s), kv first in odd rounds and the gateway first in even ones"
    echo "- versions: $versions"
    echo "- command: \`$COMMAND\` ($(( ($(date +%s) - START) / 60 )) min)"
    echo
    helper table-etcd "$TMP/results"
    if [ -s "$TMP/notes" ]; then
        echo
        echo "Odd runs (their figures are in the medians):"
        cat "$TMP/notes"
    fi
} >"$TMP/table.md"
if [ -n "$OUT" ]; then cp "$TMP/table.md" "$OUT"; fi
cat "$TMP/table.md"
