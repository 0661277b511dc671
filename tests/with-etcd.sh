#!/usr/bin/env bash
# Runs a command with a fresh 3-member etcd cluster on loopback and
# KV_TEST_ETCD_ENDPOINTS pointing at it, then stops the cluster: the
# end-to-end tests' servers then run on the etcd engine instead of redb
# (tests/support.rs), each under a prefix of its own. For example:
#
#   bash tests/with-etcd.sh cargo test -p kv-tests --features etcd --test e2e server::
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=$(mktemp -d)
trap 'bash "$here/etcd-cluster.sh" stop "$dir"; rm -rf "$dir"' EXIT
KV_TEST_ETCD_ENDPOINTS=$(bash "$here/etcd-cluster.sh" start "$dir")
export KV_TEST_ETCD_ENDPOINTS
echo "etcd cluster for the tests: $KV_TEST_ETCD_ENDPOINTS" >&2
"$@"
