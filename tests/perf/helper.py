#!/usr/bin/env python3
"""Helpers for compare.sh and etcd.sh: populate and warm each system, and print the table.

Standard library only. Keys are `key:%012d` (16 bytes, the spelling `kv bench` and
`redis-benchmark -r` use), values are 100 printable bytes.

  helper.py put-kv    BASE_URL KEYS       PUT /kv/{key} for every key
  helper.py put-etcd  BASE_URL KEYS [PREFIX]  POST /v3/kv/put for every key (PREFIX + key)
  helper.py set-redis PORT KEYS           SET over RESP (pipelined) for every key
  helper.py warm      BASE_URL PREFIX KEYS  GET PREFIX{key} for every key (fills caches)
  helper.py header    BASE_URL PATH NAME  print one response header of a GET
  helper.py table     RESULTS_DIR         print the markdown table from the raw outputs
  helper.py table-etcd RESULTS_DIR        the same for etcd.sh (kv over etcd vs its gateway)
  helper.py rate      RESULTS_DIR FRACTION ROW...  FRACTION of the lowest median req/s of
                                          the ROWs (rounded to 100), or nothing if one is missing
  helper.py tails     TAILS_DIR           print the equal-offered-load table
"""

import base64
import http.client
import json
import os
import re
import socket
import statistics
import sys
import threading
import urllib.parse

WORKERS = 16


def key(i):
    return "key:%012d" % i


def value(size=100):
    # Printable, URL-safe and shell-safe, so the same value works for every system.
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(alphabet[i % len(alphabet)] for i in range(size))


def for_each_key(base_url, keys, make_request):
    """Run make_request(i) -> (method, path, body, headers) for every key on WORKERS
    keep-alive connections; fail loudly on any unexpected status."""
    url = urllib.parse.urlsplit(base_url)
    errors = []

    def worker(start):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        for i in range(start, keys, WORKERS):
            method, path, body, headers = make_request(i)
            for attempt in range(3):
                try:
                    conn.request(method, path, body=body, headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                    break
                except (http.client.HTTPException, OSError):
                    conn.close()
                    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
                    if attempt == 2:
                        raise
            if resp.status >= 300:
                errors.append("%s %s -> %d" % (method, path, resp.status))
                return
        conn.close()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit("helper: %s (%d failures)" % (errors[0], len(errors)))


def put_kv(base_url, keys):
    body = value().encode()
    headers = {"Content-Type": "application/octet-stream"}
    for_each_key(base_url, keys, lambda i: ("PUT", "/kv/" + key(i), body, headers))


def put_etcd(base_url, keys, prefix=""):
    v = base64.b64encode(value().encode()).decode()
    headers = {"Content-Type": "application/json"}

    def request(i):
        k = base64.b64encode((prefix + key(i)).encode()).decode()
        return ("POST", "/v3/kv/put", json.dumps({"key": k, "value": v}), headers)

    for_each_key(base_url, keys, request)


def set_redis(port, keys):
    v = value().encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        batch = 1000
        for start in range(0, keys, batch):
            n = min(batch, keys - start)
            out = bytearray()
            for i in range(start, start + n):
                k = key(i).encode()
                out += b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v)
            sock.sendall(out)
            got = b""
            while got.count(b"\r\n") < n:
                chunk = sock.recv(65536)
                if not chunk:
                    sys.exit("helper: redis closed the connection")
                got += chunk
            if got != b"+OK\r\n" * n:
                sys.exit("helper: redis answered %r" % got[:80])


def warm(base_url, prefix, keys):
    for_each_key(base_url, keys, lambda i: ("GET", prefix + key(i), None, {}))


def header(base_url, path, name):
    url = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    print(resp.getheader(name, ""))


# ---------------------------------------------------------------- the table

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def to_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError("not a wrk duration: %r" % text)
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(text):
    rps = re.search(r"^Requests/sec:\s*([0-9.]+)", text, re.M)
    p50 = re.search(r"^\s*50(?:\.000)?%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s*99(?:\.000)?%\s+(\S+)", text, re.M)
    if not (rps and p50 and p99):
        return None
    total = re.search(r"^\s*(\d+) requests in", text, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = int(non2xx.group(1)) if non2xx else 0
    if sock:
        errors += sum(int(g) for g in sock.groups())
    return {
        "rps": float(rps.group(1)),
        "p50": to_ms(p50.group(1)),
        "p99": to_ms(p99.group(1)),
        "errors": errors,
        "requests": int(total.group(1)) if total else 0,
    }


def parse_redis_csv(text, test):
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    for line in text.splitlines():
        cells = [c.strip('"') for c in line.strip().split(",")]
        if cells and cells[0] == test and len(cells) >= 7:
            return {"rps": float(cells[1]), "p50": float(cells[4]), "p99": float(cells[6]), "errors": 0}
    return None


def parse_kv_bench(text):
    try:
        report = json.loads(text.strip().splitlines()[-1])
        return {
            "rps": float(report["requests_per_sec"]),
            "p50": float(report["p50_ms"]),
            "p99": float(report["p99_ms"]),
            "p999": float(report.get("p999_ms", "nan")),
            "rate": report.get("rate"),
            "errors": int(report.get("errors", 0)),
        }
    except (ValueError, KeyError, IndexError):
        return None


def parse(path):
    with open(path, errors="replace") as f:
        text = f.read()
    name = os.path.basename(path)
    if name.startswith("wrk."):
        return parse_wrk(text)
    if name.startswith("redisbench."):
        test = name.split(".")[2].upper()  # redisbench.<row>.<get|set>.<round>
        return parse_redis_csv(text, test)
    if name.startswith("kvbench."):
        return parse_kv_bench(text)
    return None


def collect(results_dir):
    """Median over rounds of each metric, per row id."""
    rounds = {}
    for name in sorted(os.listdir(results_dir)):
        if not name.endswith(".out"):
            continue
        parts = name[: -len(".out")].split(".")
        row = parts[1]
        got = parse(os.path.join(results_dir, name))
        if got is not None:
            rounds.setdefault(row, []).append(got)
    medians = {}
    for row, runs in rounds.items():
        medians[row] = {
            "rps": statistics.median(r["rps"] for r in runs),
            "p50": statistics.median(r["p50"] for r in runs),
            "p99": statistics.median(r["p99"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            "rounds": len(runs),
        }
    return medians


# (group, kv row, [(alternative row, goal ratio or None, p99 must be no worse)])
GROUPS = [
    ("Proxy cache hit, HTTP GET", "kvproxy_get",
     [("nginx_cache", 1.5, True), ("varnish", 1.5, True), ("axum_hello", 0.8, True),
      ("nginx_hello", None, True)]),
    ("Server GET, durable store, no cache", "kvserver_get", [("webdis_get", 1.5, False)]),
    ("Durable PUT, 64 writers", "kvserver_put",
     [("etcd_put", 3.0, False), ("webdis_set", 0.9, False), ("redis_aof_set", None, False),
      ("redis_aof_set_kvbench", None, False)]),
    ("Line protocol GET (cache hits)", "kvtelnet_get",
     [("redis_get", 1.0, False), ("redis_get_kvbench", 1.0, False)]),
    ("Forward path: GET miss through the proxy", "kvproxy_miss", [("nginx_pass_get", 1.2, False)]),
    ("Forward path: PUT through the proxy", "kvproxy_put",
     [("nginx_pass_put", 1.2, False), ("kvserver_put", 0.6, False)]),
]

LABELS = {
    "kvproxy_get": "**kv-proxy** GET /kv/{key} (hit)",
    "nginx_cache": "nginx proxy_cache hit",
    "varnish": "Varnish hit",
    "axum_hello": "trivial axum server, 100-byte answer (server/examples/hello.rs)",
    "nginx_hello": "nginx `return 200` (HTTP ceiling)",
    "kvserver_get": "**kv-server** GET /kv/{key}",
    "webdis_get": "webdis GET (redis, in memory)",
    "kvserver_put": "**kv-server** PUT /kv/{key} (fsync)",
    "etcd_put": "etcd 3.4 PUT (JSON gateway, fsync)",
    "webdis_set": "webdis SET (redis, no fsync)",
    "redis_aof_set": "redis SET appendfsync always (redis-benchmark)",
    "redis_aof_set_kvbench": "redis SET appendfsync always (kv bench --resp)",
    "kvtelnet_get": "**kv telnet** GET (kv bench --line)",
    "redis_get": "redis GET (redis-benchmark)",
    "redis_get_kvbench": "redis GET (kv bench --resp)",
    "kvproxy_put": "**kv-proxy** PUT /kv/{key} (fsync on server)",
    "kvproxy_miss": "**kv-proxy** GET /kv/{key} (miss: `--cache-ttl 1ms`)",
    "nginx_pass_get": "nginx proxy_pass GET (no cache, keep-alive 64)",
    "nginx_pass_put": "nginx proxy_pass PUT (keep-alive 64)",
}

TOOLS = {
    "redis_aof_set": "redis-benchmark", "redis_get": "redis-benchmark",
    "redis_get_kvbench": "kv bench", "redis_aof_set_kvbench": "kv bench",
    "kvtelnet_get": "kv bench",
}


def fmt_num(x, digits=2):
    return "n/a" if x is None else ("%.*f" % (digits, x))


def table(results_dir, groups=None, labels=None, tools=None):
    groups = GROUPS if groups is None else groups
    labels = LABELS if labels is None else labels
    tools = TOOLS if tools is None else tools
    m = collect(results_dir)
    lines = [
        "| comparison | system | tool | req/s | p50 ms | p99 ms | errors | kv ÷ this | target | met |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|:-:|",
    ]
    shortfalls = []
    for group, kv_row, alts in groups:
        kv = m.get(kv_row)

        def cells(row):
            r = m.get(row)
            if r is None:
                return ["n/a", "n/a", "n/a", "n/a"]
            return ["%.0f" % r["rps"], fmt_num(r["p50"], 3), fmt_num(r["p99"], 3), str(r["errors"])]

        lines.append("| %s | %s | %s | %s | — | — | — |" % (
            group, labels[kv_row], tools.get(kv_row, "wrk"), " | ".join(cells(kv_row))))
        for alt_row, goal, p99_rule in alts:
            alt = m.get(alt_row)
            ratio = kv["rps"] / alt["rps"] if kv and alt and alt["rps"] > 0 else None
            if ratio is None or goal is None:
                met = "—" if goal is None or ratio is None else ""
                if goal is not None and ratio is None:
                    met = "n/a"
            else:
                ok = ratio >= goal
                why = "" if ok else "%.2f× < %.1f×" % (ratio, goal)
                if p99_rule and kv["p99"] > alt["p99"]:
                    ok = False
                    why = (why + "; " if why else "") + "p99 %.2f > %.2f ms" % (kv["p99"], alt["p99"])
                met = "yes" if ok else "**no**"
                if not ok:
                    shortfalls.append("%s vs %s: %s" % (labels[kv_row].replace("**", ""), labels[alt_row], why))
            lines.append("| | %s | %s | %s | %s | %s | %s |" % (
                labels[alt_row], tools.get(alt_row, "wrk"), " | ".join(cells(alt_row)),
                "n/a" if ratio is None else "%.2f×" % ratio,
                "—" if goal is None else ("≥ %.1f×" % goal + (", p99 ≤" if p99_rule else "")),
                met))
    print("\n".join(lines))
    rounds = sorted({r["rounds"] for r in m.values()})
    print()
    print("Each figure is the median of %s round(s); `kv ÷ this` is kv's req/s over that system's."
          % "/".join(str(r) for r in rounds))
    if shortfalls:
        print()
        print("Below target:")
        for s in shortfalls:
            print("- " + s)


# etcd.sh: kv-server over a 3-member etcd cluster against etcd's own JSON gateway on
# the same cluster (issue 15), the gateway hit at its leader and at all members in turn.
ETCD_GROUPS = [
    ("Durable PUT, through etcd", "kvserver_put",
     [("gw_put_leader", 1.0, False), ("gw_put_members", 1.0, False)]),
    ("Linearizable GET, from etcd", "kvserver_get",
     [("gw_range_leader", 1.0, False), ("gw_range_members", 1.0, False)]),
    ("Proxy cache hit vs etcd's range", "kvproxy_get",
     [("gw_range_leader", 10.0, False), ("gw_range_members", 10.0, False)]),
]

ETCD_LABELS = {
    "kvserver_put": "**kv-server** PUT /kv/{key} (`--store etcd`, all members)",
    "gw_put_leader": "etcd gateway POST /v3/kv/put, leader only",
    "gw_put_members": "etcd gateway POST /v3/kv/put, all members in turn",
    "kvserver_get": "**kv-server** GET /kv/{key} (`--store etcd`, linearizable)",
    "gw_range_leader": "etcd gateway POST /v3/kv/range (linearizable), leader only",
    "gw_range_members": "etcd gateway POST /v3/kv/range (linearizable), all members in turn",
    "kvproxy_get": "**kv-proxy** GET /kv/{key} (hit) in front of that kv-server",
}


def cpu_table(results_dir, labels):
    """etcd.sh's cpu.ROW.ROUND.out files: the CPU the members, kv-server and kv-proxy
    spent per request in each run (medians over rounds), next to the wall time."""
    per_row = {}
    for name in sorted(os.listdir(results_dir)):
        if not (name.startswith("cpu.") and name.endswith(".out")):
            continue
        _, row, rnd = name[: -len(".out")].split(".")
        with open(os.path.join(results_dir, name)) as f:
            fields = dict(kv.split("=") for kv in f.read().split())
        wrk_path = os.path.join(results_dir, "wrk.%s.%s.out" % (row, rnd))
        got = parse(wrk_path) if os.path.exists(wrk_path) else None
        if not got or not got["requests"]:
            continue
        hz, n = float(fields["ticks"]), got["requests"]
        per_row.setdefault(row, []).append({
            "etcd": float(fields["etcd"]) / hz / n * 1e6,
            "kvserver": float(fields["kvserver"]) / hz / n * 1e6,
            "kvproxy": float(fields["kvproxy"]) / hz / n * 1e6,
            "cores": (float(fields["etcd"]) + float(fields["kvserver"]) + float(fields["kvproxy"]))
            / hz / float(fields["wall"]),
        })
    if not per_row:
        return
    print()
    print("CPU per request, µs (user + system, from /proc; medians): where each row's time goes")
    print()
    print("| system | etcd (3 members) | kv-server | kv-proxy | total | cores used by etcd + kv (of %d) |" % os.cpu_count())
    print("|---|--:|--:|--:|--:|--:|")
    for row in labels:
        runs = per_row.get(row)
        if not runs:
            continue
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print("| %s | %.0f | %.0f | %.0f | %.0f | %.2f |" % (
            labels[row], med["etcd"], med["kvserver"], med["kvproxy"],
            med["etcd"] + med["kvserver"] + med["kvproxy"], med["cores"]))


def rate(results_dir, fraction, rows):
    m = collect(results_dir)
    if any(row not in m or m[row]["rps"] <= 0 for row in rows):
        return
    slowest = min(m[row]["rps"] for row in rows)
    print("%d" % max(100, round(fraction * slowest / 100) * 100))


# ---------------------------------------------------------------- equal offered load

# (comparison, kv row, [(alternative row, goal for kv p99 ÷ its p99, p99.9 held to it too)])
TAIL_GROUPS = [
    ("Proxy cache hit", "kvproxy_get", [("nginx_cache", 1.0, True), ("varnish", 1.0, True)]),
    ("Server GET, no cache", "kvserver_get", [("webdis_get", 1.0, False)]),
    ("Line protocol GET (cache hits)", "kvtelnet_get", [("redis_get_kvbench", 1.2, False)]),
]

TAIL_LABELS = dict(LABELS, kvtelnet_get="**kv telnet** GET (`--line`)", redis_get_kvbench="redis GET (`--resp`)",
                   webdis_get="webdis GET (redis, in memory; `--path /GET/{key}`)")


def tail_runs(tails_dir):
    """Every round's figures, per row id, in round order."""
    runs = {}
    for name in sorted(os.listdir(tails_dir), key=lambda n: (n.split(".")[1], int(n.split(".")[2]))):
        if name.endswith(".out"):
            path = os.path.join(tails_dir, name)
            got = parse(path)
            if got is not None:
                with open(path, errors="replace") as f:
                    load = re.match(r"loadavg ([0-9.]+)", f.readline())
                runs.setdefault(name.split(".")[1], []).append(
                    dict(got, round=int(name.split(".")[2]), load=float(load.group(1)) if load else None))
    return runs


def spread(values, digits=3):
    """median (lowest–highest)"""
    if not values:
        return "n/a"
    if len(values) == 1:
        return "%.*f" % (digits, values[0])
    return "%.*f (%.*f–%.*f)" % (digits, statistics.median(values), digits, min(values), digits, max(values))


def tails(tails_dir):
    runs = tail_runs(tails_dir)
    lines = [
        "| comparison, offered load | system | achieved req/s | p50 ms | p99 ms | p99.9 ms | errors "
        "| kv ÷ this, p99 | kv ÷ this, p99.9 | target | met |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|:-:|",
    ]
    shortfalls, notes = [], []

    def med(row, key):
        return statistics.median(r[key] for r in runs[row]) if row in runs else None

    def cells(row):
        if row not in runs:
            return ["n/a"] * 5
        rs = runs[row]
        for r in rs:
            if r["rate"] and r["rps"] < 0.98 * r["rate"]:
                notes.append("%s, round %d: %.0f req/s achieved of %.0f offered (the backlog's wait counts)"
                             % (TAIL_LABELS[row].replace("**", ""), r["round"], r["rps"], r["rate"]))
        return ["%.0f" % med(row, "rps"), "%.3f" % med(row, "p50"), spread([r["p99"] for r in rs]),
                spread([r["p999"] for r in rs]), str(sum(r["errors"] for r in rs))]

    def ratio(kv_row, alt_row, key):
        """kv's median over the alternative's, and the range of the round-by-round ratios."""
        if kv_row not in runs or alt_row not in runs or not med(alt_row, key):
            return None, "n/a"
        whole = med(kv_row, key) / med(alt_row, key)
        alt_by_round = {r["round"]: r[key] for r in runs[alt_row]}
        per_round = [r[key] / alt_by_round[r["round"]] for r in runs[kv_row] if alt_by_round.get(r["round"])]
        text = "%.2f×" % whole
        if len(per_round) > 1:
            text += " (%.2f–%.2f)" % (min(per_round), max(per_round))
        return whole, text

    for group, kv_row, alts in TAIL_GROUPS:
        offered = sorted({r["rate"] for row in [kv_row] + [a for a, _, _ in alts] for r in runs.get(row, [])
                          if r["rate"]})
        load = " / ".join("%.0f req/s" % o for o in offered) or "n/a"
        lines.append("| %s, %s | %s | %s | — | — | — | — |" % (
            group, load, TAIL_LABELS[kv_row], " | ".join(cells(kv_row))))
        for alt_row, goal, p999_rule in alts:
            r99, t99 = ratio(kv_row, alt_row, "p99")
            r999, t999 = ratio(kv_row, alt_row, "p999")
            if r99 is None or (p999_rule and r999 is None):
                met = "n/a"
            else:
                why = []
                if r99 > goal:
                    why.append("p99 %.3f ms is %.2f× its %.3f ms" % (med(kv_row, "p99"), r99, med(alt_row, "p99")))
                if p999_rule and r999 > goal:
                    why.append("p99.9 %.3f ms is %.2f× its %.3f ms" % (med(kv_row, "p999"), r999,
                                                                     med(alt_row, "p999")))
                met = "**no**" if why else "yes"
                if why:
                    shortfalls.append("%s vs %s (goal ≤ %.1f×): %s" % (
                        TAIL_LABELS[kv_row].replace("**", ""), TAIL_LABELS[alt_row], goal, "; ".join(why)))
            target = "p99%s ≤ %.1f×" % (", p99.9" if p999_rule else "", goal)
            lines.append("| | %s | %s | %s | %s | %s | %s |" % (
                TAIL_LABELS[alt_row], " | ".join(cells(alt_row)), t99, t999, target, met))
    rounds = sorted({len(rs) for rs in runs.values()})
    print("#### Latency at equal offered load")
    print()
    print("\n".join(lines))
    print()
    print("Open loop (`kv bench --rate`): latency counts from when each request was due. Each figure is "
          "the median of %s round(s), in brackets the lowest and highest round; `kv ÷ this` is the ratio "
          "of the medians, in brackets the lowest and highest of the round-by-round ratios. The kv-proxy "
          "target is the better of nginx and Varnish, so it is met only if met against both."
          % "/".join(str(r) for r in rounds))
    loads = [r["load"] for rs in runs.values() for r in rs if r["load"] is not None]
    if loads:
        print()
        print("Load average (1 min) just before the runs: %.1f to %.1f on %d cores; it counts the systems "
              "and the load generator of the previous run as well as anything else on the machine."
              % (min(loads), max(loads), os.cpu_count() or 0))
    if notes:
        print()
        print("Short of the offered rate:")
        for n in notes:
            print("- " + n)
    if shortfalls:
        print()
        print("Below target:")
        for s in shortfalls:
            print("- " + s)


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "put-kv":
        put_kv(args[0], int(args[1]))
    elif cmd == "put-etcd":
        put_etcd(args[0], int(args[1]), args[2] if len(args) > 2 else "")
    elif cmd == "set-redis":
        set_redis(int(args[0]), int(args[1]))
    elif cmd == "warm":
        warm(args[0], args[1], int(args[2]))
    elif cmd == "header":
        header(args[0], args[1], args[2])
    elif cmd == "table":
        table(args[0])
    elif cmd == "table-etcd":
        table(args[0], ETCD_GROUPS, ETCD_LABELS, {})
        cpu_table(args[0], ETCD_LABELS)
    elif cmd == "rate":
        rate(args[0], float(args[1]), args[2:])
    elif cmd == "tails":
        tails(args[0])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
