#!/usr/bin/env bash
# Side-by-side performance comparison: kv against nginx proxy_cache, Varnish, webdis over
# redis-server, redis-server itself (appendfsync always for durable SETs) and etcd 3.4,
# all on this machine, on loopback, under the same load. See tests/perf/README.md.
#
#   bash tests/perf/compare.sh
#   KEYS=10000 ROUNDS=3 DURATION=10s CONNECTIONS=64 bash tests/perf/compare.sh
#
# Environment:
#   KEYS         distinct keys, key:000000000000 .. (16 bytes each; values 100 bytes)  [10000]
#   ROUNDS       rounds; each figure in the table is the median over them           [3]
#   DURATION     length of each wrk / kv bench run                                  [10s]
#   CONNECTIONS  concurrent connections for every load generator                    [64]
#   THREADS      wrk threads                                                         [2]
#   REDIS_REQUESTS  requests per redis-benchmark run                                [200000]
#   PORT_BASE    first of the 15 loopback ports used                                [18400]
#   SKIP_BUILD=1 use the kv binaries already in target/release
#   KEEP_TMP=1   keep the temporary directory (logs, raw outputs) and print its path
#   OUT=FILE     also write the table (with its header) to FILE
#
# Latency at equal offered load (issue 16), after the closed-loop rounds: `kv bench --rate R`
# (open loop, latency counted from when each request was due) at one R per comparison, the
# same for every system in it: cache hits (kv-proxy, nginx, Varnish), plain GET (kv-server,
# webdis) and line-protocol GET (kv telnet, redis over RESP).
#   TAILS=0         leave the section out                                             [1]
#   ONLY=tails      run only the section, and of the closed loop only the rows its rates need
#   TAIL_ROUNDS     rounds; the systems' order rotates from round to round              [3]
#   TAIL_DURATION   length of each open-loop run                                        [20s]
#   TAIL_CONNECTIONS  connections the rate is dealt over                     [CONNECTIONS]
#   TAIL_FRACTION   R = this × the slowest system's median closed-loop req/s, per group [0.6]
#   TAIL_RATE_HIT, TAIL_RATE_GET, TAIL_RATE_LINE  a fixed R (req/s) for cache hits, plain
#                   GET, line protocol; a group with one needs no closed-loop rows
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# port_open, start, wait_port, stop_started, remove_tmp: shared with the other benchmark scripts.
# shellcheck source=tests/perf/processes.sh
. "$HERE/processes.sh"
REPO=$(cd "$HERE/../.." && pwd)
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

KEYS=${KEYS:-10000}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
REDIS_REQUESTS=${REDIS_REQUESTS:-200000}
PORT_BASE=${PORT_BASE:-18400}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
OUT=${OUT:-}
TAILS=${TAILS:-1}
ONLY=${ONLY:-}
TAIL_ROUNDS=${TAIL_ROUNDS:-3}
TAIL_DURATION=${TAIL_DURATION:-20s}
TAIL_CONNECTIONS=${TAIL_CONNECTIONS:-$CONNECTIONS}
TAIL_FRACTION=${TAIL_FRACTION:-0.6}
TAIL_RATE_HIT=${TAIL_RATE_HIT:-}
TAIL_RATE_GET=${TAIL_RATE_GET:-}
TAIL_RATE_LINE=${TAIL_RATE_LINE:-}
case "$ONLY" in
    "") ;;
    tails) TAILS=1 ;;
    *) echo "compare.sh: ONLY=$ONLY: the only section that runs alone is 'tails'" >&2; exit 2 ;;
esac
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
VALUE_SIZE=100

KV_SERVER_PORT=$((PORT_BASE + 1))
KV_PROXY_PORT=$((PORT_BASE + 2))
KV_TELNET_PORT=$((PORT_BASE + 3))
NGINX_CACHE_PORT=$((PORT_BASE + 4))
NGINX_HELLO_PORT=$((PORT_BASE + 5))
VARNISH_PORT=$((PORT_BASE + 6))
REDIS_PORT=$((PORT_BASE + 7))        # in memory, behind webdis
WEBDIS_PORT=$((PORT_BASE + 8))
REDIS_AOF_PORT=$((PORT_BASE + 9))    # appendonly yes, appendfsync always
ETCD_PORT=$((PORT_BASE + 10))
ETCD_PEER_PORT=$((PORT_BASE + 11))
AXUM_HELLO_PORT=$((PORT_BASE + 12))
KV_PROXY_MISS_PORT=$((PORT_BASE + 13))  # kv-proxy with --cache-ttl 1ms: every GET a miss
NGINX_PASS_PORT=$((PORT_BASE + 14))     # nginx proxy_pass, no cache

COMMAND="KEYS=$KEYS ROUNDS=$ROUNDS DURATION=$DURATION CONNECTIONS=$CONNECTIONS"
if [ "$TAILS" = 1 ]; then
    COMMAND+=" TAIL_ROUNDS=$TAIL_ROUNDS TAIL_DURATION=$TAIL_DURATION TAIL_FRACTION=$TAIL_FRACTION"
    [ "$TAIL_CONNECTIONS" = "$CONNECTIONS" ] || COMMAND+=" TAIL_CONNECTIONS=$TAIL_CONNECTIONS"
    for v in TAIL_RATE_HIT TAIL_RATE_GET TAIL_RATE_LINE; do
        [ -z "${!v}" ] || COMMAND+=" $v=${!v}"
    done
    [ -z "$ONLY" ] || COMMAND+=" ONLY=$ONLY"
else
    COMMAND+=" TAILS=0"
fi
COMMAND+=" bash tests/perf/compare.sh"

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ------------------------------------------------------------------ cleanup

PIDS=()
NAMES=()
TMP=""
POLICY_RC_CREATED=0

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ "$POLICY_RC_CREATED" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    stop_started
    remove_tmp
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ install

install_missing() {
    local missing=() pair cmd pkg
    for pair in nginx:nginx varnishd:varnish redis-server:redis-server \
        redis-benchmark:redis-tools webdis:webdis etcd:etcd-server wrk:wrk \
        python3:python3 curl:curl; do
        cmd=${pair%%:*}
        pkg=${pair#*:}
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    # Keep the packages' postinst scripts from starting the distro services: this
    # script runs its own instances on its own ports and never uses those.
    if [ ! -e /usr/sbin/policy-rc.d ] && [ -z "$sudo" ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
    fi
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y nginx varnish redis-server \
        redis-tools webdis etcd-server wrk python3 curl
    if [ "$POLICY_RC_CREATED" = 1 ]; then
        rm -f /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=0
    fi
}

# render TEMPLATE OUTPUT: fill in the @NAME@ placeholders of a carried config.
render() {
    sed -e "s|@TMP@|$TMP|g" \
        -e "s|@KV_SERVER_PORT@|$KV_SERVER_PORT|g" \
        -e "s|@NGINX_CACHE_PORT@|$NGINX_CACHE_PORT|g" \
        -e "s|@NGINX_HELLO_PORT@|$NGINX_HELLO_PORT|g" \
        -e "s|@NGINX_PASS_PORT@|$NGINX_PASS_PORT|g" \
        -e "s|@REDIS_PORT@|$REDIS_PORT|g" \
        -e "s|@WEBDIS_PORT@|$WEBDIS_PORT|g" \
        "$1" >"$2"
}

start_everything() {
    local port
    for port in $(seq $((PORT_BASE + 1)) $((PORT_BASE + 14))); do
        port_open "$port" && die "port $port is in use; set PORT_BASE to a free range"
    done
    local bin="$TARGET_DIR/release"
    unset RUST_LOG

    log "starting kv-server and kv-proxy"
    mkdir -p "$TMP/kv-data"
    start kv-server "$bin/kv-server" --listen "127.0.0.1:$KV_SERVER_PORT" --data-dir "$TMP/kv-data"
    wait_port kv-server "$KV_SERVER_PORT"
    start kv-proxy "$bin/kv-proxy" --listen "127.0.0.1:$KV_PROXY_PORT" \
        --upstream "http://127.0.0.1:$KV_SERVER_PORT" \
        --telnet-listen "127.0.0.1:$KV_TELNET_PORT" --cache-ttl 60s
    wait_port kv-proxy "$KV_PROXY_PORT"
    wait_port kv-proxy "$KV_TELNET_PORT"
    # The forward path: a GET miss every time (entries live 1 ms).
    start kv-proxy-miss "$bin/kv-proxy" --listen "127.0.0.1:$KV_PROXY_MISS_PORT" \
        --upstream "http://127.0.0.1:$KV_SERVER_PORT" --telnet-listen off --cache-ttl 1ms
    wait_port kv-proxy-miss "$KV_PROXY_MISS_PORT"

    log "starting the trivial axum server"
    start axum-hello "$TARGET_DIR/release/examples/hello" "127.0.0.1:$AXUM_HELLO_PORT"
    wait_port axum-hello "$AXUM_HELLO_PORT"

    log "starting nginx"
    render "$HERE/nginx.conf" "$TMP/nginx.conf"
    mkdir -p "$TMP/nginx-cache"
    start nginx nginx -p "$TMP" -e "$TMP/nginx-error.log" -c "$TMP/nginx.conf"
    wait_port nginx "$NGINX_CACHE_PORT"
    wait_port nginx "$NGINX_HELLO_PORT"
    wait_port nginx "$NGINX_PASS_PORT"

    log "starting Varnish"
    render "$HERE/varnish.vcl" "$TMP/varnish.vcl"
    start varnish varnishd -F -a "127.0.0.1:$VARNISH_PORT" -f "$TMP/varnish.vcl" \
        -s malloc,256m -n "$TMP/varnish" -T 127.0.0.1:0
    wait_port varnish "$VARNISH_PORT"

    log "starting redis-server (in memory) and webdis"
    mkdir -p "$TMP/redis" "$TMP/redis-aof"
    start redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' \
        --appendonly no --dir "$TMP/redis" --daemonize no
    wait_port redis "$REDIS_PORT"
    render "$HERE/webdis.json" "$TMP/webdis.json"
    start webdis webdis "$TMP/webdis.json"
    wait_port webdis "$WEBDIS_PORT"

    log "starting redis-server (appendfsync always)"
    start redis-aof redis-server --bind 127.0.0.1 --port "$REDIS_AOF_PORT" --save '' \
        --appendonly yes --appendfsync always --dir "$TMP/redis-aof" --daemonize no
    wait_port redis-aof "$REDIS_AOF_PORT"

    log "starting etcd"
    start etcd etcd --name perf --data-dir "$TMP/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "perf=http://127.0.0.1:$ETCD_PEER_PORT" \
        --logger zap --log-level warn
    wait_port etcd "$ETCD_PORT"
    local i
    for ((i = 0; i < 100; i++)); do
        curl -fsS -X POST -d '{}' "http://127.0.0.1:$ETCD_PORT/v3/maintenance/status" >/dev/null 2>&1 && break
        sleep 0.2
    done
}

# ------------------------------------------------------------------ data

helper() { python3 "$HERE/helper.py" "$@"; }

populate() {
    log "populating $KEYS keys in kv-server, etcd and both redis-servers"
    helper put-kv "http://127.0.0.1:$KV_SERVER_PORT" "$KEYS"
    helper put-etcd "http://127.0.0.1:$ETCD_PORT" "$KEYS"
    helper set-redis "$REDIS_PORT" "$KEYS"
    helper set-redis "$REDIS_AOF_PORT" "$KEYS"
}

# warm NAME PORT HEADER: GET every key through one cache, then check a key is a hit.
warm() {
    local name=$1 port=$2 header=$3 got
    helper warm "http://127.0.0.1:$port" /kv/ "$KEYS"
    got=$(helper header "http://127.0.0.1:$port" /kv/key:000000000000 "$header")
    case "$got" in
        HIT*) ;;
        *) log "warning: after warming, $name answers $header: '$got' (expected HIT)" ;;
    esac
}

# ------------------------------------------------------------------ load

# run_wrk ROW ROUND PORT SCRIPT [PREFIX]
run_wrk() {
    local row=$1 round=$2 port=$3 script=$4 prefix=${5:-/kv/}
    local out="$TMP/results/wrk.$row.$round.out"
    PERF_KEYS=$KEYS PERF_VALUE_SIZE=$VALUE_SIZE PERF_PREFIX=$prefix \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
        -s "$HERE/$script" "http://127.0.0.1:$port" >"$out" 2>&1 || true
    log "  $row: $(grep -E '^Requests/sec' "$out" || echo 'failed (see raw output)')"
}

# run_redis_benchmark ROW ROUND PORT TEST
run_redis_benchmark() {
    local row=$1 round=$2 port=$3 test=$4
    local out="$TMP/results/redisbench.$row.$test.$round.out"
    redis-benchmark -h 127.0.0.1 -p "$port" -c "$CONNECTIONS" -n "$REDIS_REQUESTS" \
        -d "$VALUE_SIZE" -r "$KEYS" -t "$test" --csv >"$out" 2>&1 || true
    log "  $row: $(grep -i "^\"$test\"" "$out" | cut -d, -f2 | tr -d '"' || true) req/s"
}

KV_BENCH=0
# run_kv_bench ROW ROUND ARGS...: kv bench ... --json; a missing subcommand leaves n/a.
run_kv_bench() {
    local row=$1 round=$2
    shift 2
    local out="$TMP/results/kvbench.$row.$round.out"
    if [ "$KV_BENCH" != 1 ]; then
        echo "kv bench is not available" >"$out"
        return 0
    fi
    "$TARGET_DIR/release/kv" bench "$@" --connections "$CONNECTIONS" --duration "$DURATION" \
        --keys "$KEYS" --value-size "$VALUE_SIZE" --no-populate --json >"$out" 2>&1 || true
    log "  $row: $(tail -n 1 "$out" | cut -c1-200)"
}

round() {
    local r=$1
    log "round $r of $ROUNDS"
    # Reads. Each cache is warmed just before its run: entries live 60 s.
    run_wrk nginx_hello "$r" "$NGINX_HELLO_PORT" get.lua
    run_wrk axum_hello "$r" "$AXUM_HELLO_PORT" get.lua
    # Both kv-proxy runs follow one warm-up: a second one ~50 s later would find the first
    # one's entries expiring (60 s TTL) during it and during the run after it.
    warm kv-proxy "$KV_PROXY_PORT" X-Cache
    run_wrk kvproxy_get "$r" "$KV_PROXY_PORT" get.lua
    run_kv_bench kvtelnet_get "$r" --line "127.0.0.1:$KV_TELNET_PORT" --ratio 1:0
    warm nginx "$NGINX_CACHE_PORT" X-Cache-Status
    run_wrk nginx_cache "$r" "$NGINX_CACHE_PORT" get.lua
    warm varnish "$VARNISH_PORT" X-Cache
    run_wrk varnish "$r" "$VARNISH_PORT" get.lua
    run_wrk kvserver_get "$r" "$KV_SERVER_PORT" get.lua
    # The forward path: misses through each proxy, in front of the same kv-server.
    run_wrk kvproxy_miss "$r" "$KV_PROXY_MISS_PORT" get.lua
    run_wrk nginx_pass_get "$r" "$NGINX_PASS_PORT" get.lua
    run_wrk webdis_get "$r" "$WEBDIS_PORT" get.lua /GET/
    run_redis_benchmark redis_get "$r" "$REDIS_PORT" get
    run_kv_bench redis_get_kvbench "$r" --resp "127.0.0.1:$REDIS_PORT" --ratio 1:0
    # Durable writes, 64 writers, then the ones that do not fsync.
    run_wrk kvserver_put "$r" "$KV_SERVER_PORT" kv_put.lua
    run_wrk kvproxy_put "$r" "$KV_PROXY_PORT" kv_put.lua
    run_wrk nginx_pass_put "$r" "$NGINX_PASS_PORT" kv_put.lua
    run_wrk etcd_put "$r" "$ETCD_PORT" etcd_put.lua
    run_redis_benchmark redis_aof_set "$r" "$REDIS_AOF_PORT" set
    run_kv_bench redis_aof_set_kvbench "$r" --resp "127.0.0.1:$REDIS_AOF_PORT" --ratio 0:1
    run_wrk webdis_set "$r" "$WEBDIS_PORT" webdis_set.lua
}

# ------------------------------------------------------------------ equal offered load

# The comparisons of the section: the kv row first, then the systems it is held against.
TAIL_HIT_ROWS=(kvproxy_get nginx_cache varnish)
TAIL_GET_ROWS=(kvserver_get webdis_get)
TAIL_LINE_ROWS=(kvtelnet_get redis_get_kvbench)

# capacity_round ROUND: of the closed loop, only the rows the offered rates come from
# (ONLY=tails); a group with a fixed TAIL_RATE_* needs none.
capacity_round() {
    local r=$1
    log "closed-loop round $r of $ROUNDS (only the rows the offered rates come from)"
    if [ -z "$TAIL_RATE_HIT" ]; then
        warm kv-proxy "$KV_PROXY_PORT" X-Cache
        run_wrk kvproxy_get "$r" "$KV_PROXY_PORT" get.lua
        warm nginx "$NGINX_CACHE_PORT" X-Cache-Status
        run_wrk nginx_cache "$r" "$NGINX_CACHE_PORT" get.lua
        warm varnish "$VARNISH_PORT" X-Cache
        run_wrk varnish "$r" "$VARNISH_PORT" get.lua
    fi
    if [ -z "$TAIL_RATE_GET" ]; then
        run_wrk kvserver_get "$r" "$KV_SERVER_PORT" get.lua
        run_wrk webdis_get "$r" "$WEBDIS_PORT" get.lua /GET/
    fi
    if [ -z "$TAIL_RATE_LINE" ]; then
        warm kv-proxy "$KV_PROXY_PORT" X-Cache
        run_kv_bench kvtelnet_get "$r" --line "127.0.0.1:$KV_TELNET_PORT" --ratio 1:0
        run_kv_bench redis_get_kvbench "$r" --resp "127.0.0.1:$REDIS_PORT" --ratio 1:0
    fi
}

# tail_rate FIXED ROW...: FIXED if set, else TAIL_FRACTION of the lowest median closed-loop
# req/s among the ROWs; empty when one of them has no figure.
tail_rate() {
    local fixed=$1
    shift
    if [ -n "$fixed" ]; then
        echo "$fixed"
    else
        helper rate "$TMP/results" "$TAIL_FRACTION" "$@"
    fi
}

# run_tail ROW ROUND RATE ARGS...: kv bench open loop at RATE requests a second.
run_tail() {
    local row=$1 round=$2 rate=$3
    shift 3
    local out="$TMP/tails/kvbench.$row.$round.out"
    # How busy the machine was just before: tails move with what else runs on the cores.
    echo "loadavg $(cut -d' ' -f1-3 /proc/loadavg)" >"$out"
    "$TARGET_DIR/release/kv" bench "$@" --rate "$rate" --connections "$TAIL_CONNECTIONS" \
        --duration "$TAIL_DURATION" --keys "$KEYS" --value-size "$VALUE_SIZE" --ratio 1:0 \
        --no-populate --json >>"$out" 2>&1 || true
    log "  $row at $rate req/s: $(tail -n 1 "$out" | cut -c1-200)"
}

# tail_system ROW ROUND RATE: one system's run; each cache is warmed just before it.
tail_system() {
    local row=$1 r=$2 rate=$3
    case "$row" in
        kvproxy_get)
            warm kv-proxy "$KV_PROXY_PORT" X-Cache
            run_tail "$row" "$r" "$rate" --url "http://127.0.0.1:$KV_PROXY_PORT" ;;
        nginx_cache)
            warm nginx "$NGINX_CACHE_PORT" X-Cache-Status
            run_tail "$row" "$r" "$rate" --url "http://127.0.0.1:$NGINX_CACHE_PORT" ;;
        varnish)
            warm varnish "$VARNISH_PORT" X-Cache
            run_tail "$row" "$r" "$rate" --url "http://127.0.0.1:$VARNISH_PORT" ;;
        kvserver_get)
            run_tail "$row" "$r" "$rate" --url "http://127.0.0.1:$KV_SERVER_PORT" ;;
        webdis_get)
            run_tail "$row" "$r" "$rate" --url "http://127.0.0.1:$WEBDIS_PORT" --path '/GET/{key}' ;;
        kvtelnet_get)
            warm kv-proxy "$KV_PROXY_PORT" X-Cache
            run_tail "$row" "$r" "$rate" --line "127.0.0.1:$KV_TELNET_PORT" ;;
        redis_get_kvbench)
            run_tail "$row" "$r" "$rate" --resp "127.0.0.1:$REDIS_PORT" ;;
        *) die "no tail run for $row" ;;
    esac
}

# tail_group ROUND RATE ROW...: the rows in an order rotated by the round, so that no
# system always runs first, or right after a given other.
tail_group() {
    local r=$1 rate=$2
    shift 2
    [ -n "$rate" ] || return 0
    local rows=("$@") n=$# i
    for ((i = 0; i < n; i++)); do
        tail_system "${rows[(i + r - 1) % n]}" "$r" "$rate"
    done
}

tails() {
    mkdir -p "$TMP/tails"
    if ! "$TARGET_DIR/release/kv" bench --help 2>/dev/null | grep -q -- '--path'; then
        log "kv bench has no --rate/--path: the equal-offered-load rows will say n/a"
        return 0
    fi
    local hit get line
    hit=$(tail_rate "$TAIL_RATE_HIT" "${TAIL_HIT_ROWS[@]}")
    get=$(tail_rate "$TAIL_RATE_GET" "${TAIL_GET_ROWS[@]}")
    line=$(tail_rate "$TAIL_RATE_LINE" "${TAIL_LINE_ROWS[@]}")
    log "equal offered load (req/s): cache hits ${hit:-n/a}, plain GET ${get:-n/a}, line protocol ${line:-n/a}"
    local r
    for ((r = 1; r <= TAIL_ROUNDS; r++)); do
        log "equal-offered-load round $r of $TAIL_ROUNDS"
        tail_group "$r" "$hit" "${TAIL_HIT_ROWS[@]}"
        tail_group "$r" "$get" "${TAIL_GET_ROWS[@]}"
        tail_group "$r" "$line" "${TAIL_LINE_ROWS[@]}"
    done
}

# ------------------------------------------------------------------ main

install_missing
for cmd in cargo nginx varnishd redis-server redis-benchmark webdis etcd wrk python3 curl; do
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd is not installed"
done

if [ "$SKIP_BUILD" = 1 ]; then
    log "SKIP_BUILD=1: using the binaries in $TARGET_DIR/release"
else
    log "building kv (cargo build --release --workspace --bins --example hello)"
    (cd "$REPO" && cargo build --release --workspace --bins --example hello)
fi
for b in kv-server kv-proxy kv examples/hello; do
    [ -x "$TARGET_DIR/release/$b" ] || die "$TARGET_DIR/release/$b is missing"
done
if "$TARGET_DIR/release/kv" bench --help 2>/dev/null | grep -q -- '--no-populate'; then
    KV_BENCH=1
else
    log "kv bench is not available: its rows will say n/a"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/kv-perf.XXXXXX")
chmod 755 "$TMP"
mkdir -p "$TMP/results"

START=$(date +%s)
start_everything
populate
for ((r = 1; r <= ROUNDS; r++)); do
    if [ "$ONLY" = tails ]; then capacity_round "$r"; else round "$r"; fi
done
if [ "$TAILS" = 1 ]; then tails; fi

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
mem=$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
if [ "$SKIP_BUILD" = 1 ]; then
    kv_version="kv prebuilt in $TARGET_DIR/release ($(date -u -r "$TARGET_DIR/release/kv-server" '+%Y-%m-%d %H:%M UTC'))"
else
    kv_version="kv $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo '+dirty')"
fi
versions="nginx $(nginx -v 2>&1 | sed 's|.*nginx/||'), $(varnishd -V 2>&1 | head -n1 | sed 's/varnishd (\(varnish-[^ ]*\).*/\1/'), redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), webdis $(dpkg-query -W -f='${Version}' webdis 2>/dev/null || echo '?'), etcd $(etcd --version | head -n1 | awk '{print $3}'), wrk $(dpkg-query -W -f='${Version}' wrk 2>/dev/null || echo '?'), $kv_version"
{
    echo "### kv vs the alternatives, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- machine: $(nproc) cores, ${cpu:-unknown CPU}, $mem RAM, Linux $(uname -r); load generator on the same cores, loopback"
    echo "- load: \`wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency\` (tests/perf/*.lua), \`redis-benchmark -c $CONNECTIONS -n $REDIS_REQUESTS -d $VALUE_SIZE -r $KEYS\`, \`kv bench --connections $CONNECTIONS --duration $DURATION\`; $KEYS keys of 16 bytes, values of $VALUE_SIZE bytes; median of $ROUNDS round(s); caches warmed before each run"
    if [ -d "$TMP/tails" ]; then
        echo "- equal offered load: \`kv bench --rate R --connections $TAIL_CONNECTIONS --duration $TAIL_DURATION\`, open loop, latency counted from when each request was due; R per comparison = $TAIL_FRACTION × the slowest system's median closed-loop req/s (unless TAIL_RATE_* fixes it); median of $TAIL_ROUNDS round(s), the systems' order rotated each round"
    fi
    echo "- versions: $versions"
    echo "- command: \`$COMMAND\` ($(( ($(date +%s) - START) / 60 )) min)"
    echo
    helper table "$TMP/results"
    if [ -d "$TMP/tails" ]; then
        echo
        helper tails "$TMP/tails"
    fi
} >"$TMP/table.md"
if [ -n "$OUT" ]; then cp "$TMP/table.md" "$OUT"; fi
cat "$TMP/table.md"
