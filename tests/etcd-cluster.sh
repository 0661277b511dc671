#!/usr/bin/env bash
# A 3-member etcd cluster on loopback, for trying kv-server --store etcd and
# for its tests.
#
#   tests/etcd-cluster.sh start DIR   # fresh data dirs under DIR, free ports,
#                                     # a unique cluster token; waits until
#                                     # `etcdctl endpoint health` is good
#   tests/etcd-cluster.sh stop DIR    # stops the members (SIGTERM, then KILL)
#   tests/etcd-cluster.sh restart DIR N  # starts member N again on its data
#                                     # (after a kill), as it was started
#   tests/etcd-cluster.sh kill-leader DIR  # kill -9 the member that leads;
#                                     # prints its number N
#
# KV_ETCD_FLAGS adds flags to every member (`start` only), e.g.
# "--quota-backend-bytes 16777216" for a small space quota.
#
# KV_ETCD_TLS=CERTDIR (`start` only) serves clients over TLS and asks them for
# a certificate: CERTDIR holds ca.pem (the CA), server.pem and server-key.pem
# (for 127.0.0.1), client.pem and client-key.pem (signed by the CA, for
# etcdctl here and for kv-server's --etcd-ca/--etcd-cert/--etcd-key). The
# endpoints are then https:// URLs; the peers still talk plain HTTP.
#
# Members keep an hour of history (auto-compaction), so DUMP cursors and
# feed resumes live that long, and are asked for watch progress every 5 s
# (etcd's default is 10 min): kv-server moves its feed head (and the
# X-Kv-Revision of reads) past writes outside its prefix on each one.
#
# `start` prints the client endpoints (comma-separated) on stdout and writes
# them to DIR/endpoints; DIR/m<N>/ holds member N's data, log (etcd.log),
# pid, and client URL. Needs etcd and etcdctl (Debian: etcd-server, etcd-client).
set -euo pipefail

usage() { echo "usage: $0 start|stop|kill-leader DIR, or $0 restart DIR N" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1
dir=$2

# Starts member directory $1 from the flags in $1/flags (one per line).
launch() {
  local m=$1
  mapfile -t flags <"$m/flags"
  # setsid: the members outlive this script, and a Ctrl-C in the
  # terminal that ran it does not reach them.
  setsid etcd "${flags[@]}" >>"$m/etcd.log" 2>&1 </dev/null &
  echo $! >"$m/pid"
}

# etcdctl, with the cluster's client certificate when it serves TLS.
ctl() {
  local tls=()
  if [ -f "$dir/tls" ]; then
    local certs
    certs=$(cat "$dir/tls")
    tls=(--cacert "$certs/ca.pem" --cert "$certs/client.pem" --key "$certs/client-key.pem")
  fi
  ETCDCTL_API=3 etcdctl "${tls[@]}" "$@"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

stop_members() {
  for pidfile in "$dir"/m*/pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pidfile in "$dir"/m*/pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

case "$cmd" in
  start)
    command -v etcd >/dev/null || { echo "etcd is not installed (Debian: apt-get install etcd-server etcd-client)" >&2; exit 1; }
    mkdir -p "$dir"
    stop_members
    token="kv-$(date +%s%N)-$$"
    scheme=http
    tls_flags=()
    rm -f "$dir/tls"
    if [ -n "${KV_ETCD_TLS:-}" ]; then
      certs=$(cd "$KV_ETCD_TLS" && pwd)
      for f in ca.pem server.pem server-key.pem client.pem client-key.pem; do
        [ -f "$certs/$f" ] || { echo "KV_ETCD_TLS=$certs has no $f" >&2; exit 1; }
      done
      echo "$certs" >"$dir/tls"
      scheme=https
      tls_flags=(--cert-file "$certs/server.pem" --key-file "$certs/server-key.pem"
        --trusted-ca-file "$certs/ca.pem" --client-cert-auth)
    fi
    declare -a client peer
    for i in 1 2 3; do
      client[i]=$(free_port)
      peer[i]=$(free_port)
    done
    initial=""
    for i in 1 2 3; do
      initial+="m$i=http://127.0.0.1:${peer[$i]},"
    done
    initial=${initial%,}
    endpoints=""
    for i in 1 2 3; do
      m="$dir/m$i"
      rm -rf "$m"
      mkdir -p "$m"
      url="$scheme://127.0.0.1:${client[$i]}"
      echo "$url" >"$m/url"
      endpoints+="$url,"
      # shellcheck disable=SC2086 # KV_ETCD_FLAGS is split into flags on purpose
      printf '%s\n' --name "m$i" --data-dir "$m/data" \
        --listen-client-urls "$url" --advertise-client-urls "$url" \
        --listen-peer-urls "http://127.0.0.1:${peer[$i]}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${peer[$i]}" \
        --initial-cluster "$initial" --initial-cluster-token "$token" \
        --initial-cluster-state new \
        --auto-compaction-mode periodic --auto-compaction-retention 1h \
        --experimental-watch-progress-notify-interval 5s \
        "${tls_flags[@]}" ${KV_ETCD_FLAGS:-} >"$m/flags"
      launch "$m"
    done
    endpoints=${endpoints%,}
    echo "$endpoints" >"$dir/endpoints"
    for _ in $(seq 1 600); do
      if ctl --endpoints "$endpoints" --command-timeout=2s endpoint health >/dev/null 2>&1; then
        echo "$endpoints"
        exit 0
      fi
      sleep 0.1
    done
    echo "the etcd cluster did not become healthy within 60 s; logs in $dir/m*/etcd.log; their last lines:" >&2
    for i in 1 2 3; do tail -n 5 "$dir/m$i/etcd.log" | sed "s/^/  m$i: /" >&2; done
    stop_members
    exit 1
    ;;
  stop)
    stop_members
    ;;
  kill-leader)
    for i in 1 2 3; do
      m="$dir/m$i"
      [ -f "$m/pid" ] || continue
      status=$(ctl --endpoints "$(cat "$m/url")" --command-timeout=2s endpoint status -w json 2>/dev/null) || continue
      if python3 -c 'import json,sys; s=json.loads(sys.argv[1])[0]["Status"]; sys.exit(0 if s["leader"] == s["header"]["member_id"] else 1)' "$status"; then
        kill -KILL "$(cat "$m/pid")"
        rm -f "$m/pid"
        echo "$i"
        exit 0
      fi
    done
    echo "no member of $dir leads" >&2
    exit 1
    ;;
  restart)
    [ $# -eq 3 ] || usage
    m="$dir/m$3"
    [ -f "$m/flags" ] || { echo "no member $3 in $dir" >&2; exit 1; }
    [ ! -f "$m/pid" ] || ! kill -0 "$(cat "$m/pid")" 2>/dev/null || { echo "member $3 is running" >&2; exit 1; }
    launch "$m"
    ;;
  *)
    usage
    ;;
esac
