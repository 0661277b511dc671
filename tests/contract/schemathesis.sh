#!/usr/bin/env bash
# The HTTP contract, checked from outside: schemathesis (from PyPI) generates
# requests from openapi.yaml, valid and invalid, sends them to a real
# kv-server and to a real kv-proxy in front of it, and checks every answer:
#
#   not_a_server_error            no 5xx, whatever the input
#   status_code_conformance       every status is one the document lists
#   response_schema_conformance   every body matches its documented schema
#   negative_data_rejection       input the document calls invalid is refused
#
# Prints one line per target, "schemathesis <target>: N operations, M test
# cases, failing checks F", and exits non-zero if any check failed.
#
# Usage: bash tests/contract/schemathesis.sh
# Knobs (environment): ST_MAX_EXAMPLES (test cases per operation and phase,
# default 200), ST_SEED (replay a run's seed), ST_VERSION (schemathesis).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

# Pinned, so that a new release cannot turn CI red (or green) on its own.
ST_VERSION=${ST_VERSION:-4.32.5}
ST_MAX_EXAMPLES=${ST_MAX_EXAMPLES:-200}
CHECKS=not_a_server_error,status_code_conformance,response_schema_conformance,negative_data_rejection

work=$(mktemp -d "${TMPDIR:-/tmp}/kv-contract.XXXXXX")
pids=()
cleanup() {
  local status=$? i
  # The proxy first, then the server behind it; each finishes what is in
  # flight and exits.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  if [ "$status" -ne 0 ]; then
    for log in "$work"/*.log; do
      [ -s "$log" ] || continue
      echo "--- last lines of $(basename "$log")" >&2
      tail -n 20 "$log" >&2
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

started=$(date +%s)

echo "== schemathesis $ST_VERSION in a venv"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION"
st=$work/venv/bin/st

echo "== cargo build --release --bins --locked"
cargo build --release --bins --locked -q

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until GET /healthz answers 200 (or the program has died).
wait_healthy() {
  local url=$1 pid=$2
  for _ in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "the program serving $url exited before it became healthy" >&2
      return 1
    fi
    if python3 - "$url" 2>/dev/null <<'EOF'; then
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/healthz", timeout=1) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
      return 0
    fi
    sleep 0.1
  done
  echo "$url did not become healthy in 10 s" >&2
  return 1
}

server_port=$(free_port)
./target/release/kv-server --listen "127.0.0.1:$server_port" --data-dir "$work/data" \
  >"$work/kv-server.log" 2>&1 &
pids+=($!)
wait_healthy "http://127.0.0.1:$server_port" "${pids[-1]}"

proxy_port=$(free_port)
./target/release/kv-proxy --listen "127.0.0.1:$proxy_port" \
  --upstream "http://127.0.0.1:$server_port" --telnet-listen off \
  >"$work/kv-proxy.log" 2>&1 &
pids+=($!)
wait_healthy "http://127.0.0.1:$proxy_port" "${pids[-1]}"

seed_args=()
if [ -n "${ST_SEED:-}" ]; then seed_args=(--seed "$ST_SEED"); fi

failed=0
figures=()
run_target() {
  local name=$1 port=$2
  local report=$work/$name.json
  echo "== schemathesis against $name on 127.0.0.1:$port"
  local status=0
  # Run from the scratch directory so nothing (reports, caches) lands in the
  # repository. --max-examples bounds each phase per operation; the request
  # timeout is far below the programs' own 60 s, so a hang is a failure.
  (cd "$work" && PYTHONPATH="$root/tests/contract" SCHEMATHESIS_HOOKS=hooks \
    "$st" --config-file "$root/tests/contract/schemathesis.toml" run "$root/openapi.yaml" \
    --url "http://127.0.0.1:$port" \
    --checks "$CHECKS" \
    --max-examples "$ST_MAX_EXAMPLES" \
    --request-timeout 10 \
    --generation-database none \
    --no-color \
    --report json --report-json-path "$report" \
    "${seed_args[@]}") || status=$?
  local figure
  figure=$(python3 - "$name" "$report" <<'EOF'
import json, sys
name, path = sys.argv[1], sys.argv[2]
try:
    with open(path) as f:
        report = json.load(f)
except (OSError, ValueError):
    print(f"schemathesis {name}: no report (the run did not finish)")
    sys.exit(0)
print(
    f"schemathesis {name}: {report['operations']['tested']} operations, "
    f"{report['test_cases']['generated']} test cases, "
    f"failing checks {report['test_cases']['unique_failures']}"
    + (f", errors {len(report['errors'])}" if report["errors"] else "")
)
EOF
)
  figures+=("$figure")
  if [ "$status" -ne 0 ]; then
    failed=1
  fi
}

run_target kv-server "$server_port"
run_target kv-proxy "$proxy_port"

echo "== figures ($(($(date +%s) - started)) s)"
printf '%s\n' "${figures[@]}"
if [ "$failed" -ne 0 ]; then
  echo "schemathesis found failing checks (or could not run); see above" >&2
  exit 1
fi
