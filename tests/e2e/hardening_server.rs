//! kv-server hardening (issue 13): each test pins one fault a review found.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use kv_tests::{Proxy, Server, bin, client};

use crate::server::json;
use kv_tests::raw_http;

// A malformed percent-escape in a key (`%ZZ`, `%4`, a lone `%`) is refused
// with 400 `bad_key`, as Go's net/http and nginx refuse it, on the server and
// on the proxy (which decodes keys with the same function); it used to be
// stored as the literal key `%ZZ`.
#[tokio::test]
async fn a_malformed_percent_escape_in_a_key_is_400() {
    let server = Server::start();
    let proxy = Proxy::start(&server.url, &[]);
    let mut refused = 0;
    for (name, addr) in [("kv-server", server.addr), ("kv-proxy", proxy_addr(&proxy))] {
        for path in ["/kv/%ZZ", "/kv/%4", "/kv/%", "/kv/a%2", "/kv/%G0x"] {
            for method in ["PUT", "GET"] {
                let request =
                    format!("{method} {path} HTTP/1.1\r\nHost: kv\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx");
                let answer = raw_http(addr, request.as_bytes()).await.text;
                assert!(
                    answer.starts_with("HTTP/1.1 400") && answer.contains(r#""error":"bad_key""#),
                    "{name}: {method} {path}: {answer}"
                );
                refused += 1;
            }
        }
    }
    // A well-formed escape of '%' itself still works.
    let url = format!("{}/kv/%25ZZ", server.url);
    assert_eq!(client().put(&url).body("x").send().await.unwrap().status(), 201);
    let dump = client().get(format!("{}/kv", server.url)).send().await.unwrap();
    let keys = json(dump).await;
    assert_eq!(keys["items"].as_array().unwrap().len(), 1, "{keys}");
    assert_eq!(keys["items"][0]["key"], "%ZZ");
    eprintln!("malformed percent-escapes: {refused} requests, all refused with 400 bad_key");
}

fn proxy_addr(proxy: &Proxy) -> std::net::SocketAddr {
    proxy
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("the proxy's address")
}

// The write-ahead log holds a group in one record of at most 1 GiB, which
// replay checks; a `--max-value-bytes` near or over that let a write be
// acknowledged that recovery would drop. kv-server refuses such a limit at
// start and names the largest it allows.
#[test]
fn a_max_value_bytes_the_log_cannot_hold_is_refused_at_start() {
    if kv_tests::skipped_over_etcd("the write-ahead log's record size (etcd's limit: etcd::cluster tests)") {
        return;
    }
    for limit in ["2GiB", "1GiB"] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(bin("kv-server"))
            .args(["--listen", "127.0.0.1:0", "--max-value-bytes", limit, "--data-dir"])
            .arg(dir.path())
            .env_remove("KV_TOKEN")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run kv-server");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > Duration::from_secs(10) {
                child.kill().unwrap();
                child.wait().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        eprintln!("kv-server --max-value-bytes {limit}: {}", stderr.trim());
        assert!(status.is_some_and(|s| !s.success()), "{limit}: it started: {stderr}");
        assert!(
            stderr.contains("--max-value-bytes") && stderr.contains("the largest allowed is 1023MiB"),
            "{limit}: {stderr}"
        );
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "{limit}: the data directory was touched"
        );
    }
    // The largest allowed starts.
    let server = Server::start_with(&["--max-value-bytes", "1023MiB"]);
    drop(server);
}

/// The resident memory of a process, from /proc/<pid>/status, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// A page as a DUMP client reads it: the keys, and the cursor.
#[derive(serde::Deserialize)]
struct KeysPage {
    items: Vec<KeyOnly>,
    next: Option<String>,
}

#[derive(serde::Deserialize)]
struct KeyOnly {
    key: String,
}

// DUMP pages used to be bounded in keys only: `GET /kv?limit=1000` over 1 MiB
// values built the whole page (GiBs once base64 and JSON are added) on the
// runtime serving connections, stalling every connection there. Now every page
// stops at 8 MiB and `next` continues it, every streamed chunk stops at 1 MiB,
// and the scans run on blocking threads. 1,000 binary values of 1 MiB; four
// clients each read a page of `?limit=1000` and the page its `next` points
// to, while an NDJSON export streams (its first 64 MiB: a whole export takes
// over a minute with debug builds); the server's RSS growth stays under
// 200 MiB, and a plain GET on the side is answered within 100 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dump_pages_are_bounded_in_bytes_and_scans_do_not_stall_reads() {
    // Over etcd, 100 values: a GiB of 1 MiB values is past what etcd is made
    // for (and what it writes here within --etcd-timeout); 100 MiB still
    // makes every page and chunk stop at its byte bound, and a range of
    // `limit=1000` would be 1,000 MiB if it were not sized by bytes.
    let over_etcd = kv_tests::etcd_endpoints().is_some();
    let values: usize = if over_etcd { 100 } else { 1000 };
    const MIB: u64 = 1 << 20;
    const RSS_BOUND: u64 = 200 * MIB;
    // Past this the server is killed, to spare the machine, and the test fails.
    const KILL_AT: u64 = 2048 * MIB;
    const EXPORT_READ: usize = 64 << 20;
    // The engine's page cache is kept small, so that what is measured is the pages.
    let mut args = vec!["--max-value-bytes", "1MiB", "--store-cache", "32MiB"];
    if over_etcd {
        // Eight writes of 1 MiB at once through raft and fsync on two busy cores.
        args.extend(["--etcd-timeout", "10s"]);
    }
    let server = Server::start_with(&args);
    let http = client();
    let base = server.url.clone();
    let writing = Instant::now();
    // Not UTF-8 (0xFF never is), so DUMP carries the values as base64.
    let pattern: Vec<u8> = (0..MIB as usize).map(|j| (j % 251) as u8 | 0x80).collect();
    let puts = futures_util::stream::iter(0..values)
        .map(|i| {
            let (http, base) = (http.clone(), base.clone());
            let mut value = pattern.clone();
            value[0] = 0xFF;
            value[1..9].copy_from_slice(&(i as u64).to_le_bytes());
            async move {
                let response = http
                    .put(format!("{base}/kv/big/{i:04}"))
                    .body(value)
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success(), "{response:?}");
            }
        })
        .buffer_unordered(8);
    puts.collect::<Vec<()>>().await;
    let small = format!("{base}/kv/small");
    assert!(http.put(&small).body("s").send().await.unwrap().status().is_success());
    eprintln!(
        "DUMP memory: {values} values of 1 MiB written in {:.1?}",
        writing.elapsed()
    );

    let pid = server.program.pid();
    let baseline = rss(pid);
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = baseline;
            while !done.load(Ordering::Relaxed) {
                let now = rss(pid);
                peak = peak.max(now);
                if now > baseline + KILL_AT {
                    eprintln!(
                        "DUMP memory: RSS grew by {} MiB; killing the server",
                        (now - baseline) >> 20
                    );
                    let _ = std::process::Command::new("kill")
                        .args(["-9", &pid.to_string()])
                        .status();
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    // Plain GETs on their own connection while the DUMPs run.
    let getter = {
        let (done, small) = (done.clone(), small.clone());
        tokio::spawn(async move {
            let http = client();
            let mut latencies = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let started = Instant::now();
                let Ok(response) = http.get(&small).send().await else {
                    break;
                };
                assert_eq!(response.bytes().await.unwrap(), "s");
                latencies.push(started.elapsed());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            latencies
        })
    };
    let dumping = Instant::now();
    let pages: Vec<_> = (0..4)
        .map(|_| {
            let (http, base) = (client(), base.clone());
            tokio::spawn(async move {
                let mut after: Option<String> = None;
                let mut pages = Vec::new();
                for _ in 0..2 {
                    // The keys here need no escaping but their '/'.
                    let url = match &after {
                        Some(after) => format!("{base}/kv?limit=1000&after={}", after.replace('/', "%2F")),
                        None => format!("{base}/kv?limit=1000"),
                    };
                    let response = http.get(url).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    let body = response.bytes().await.unwrap();
                    let page: KeysPage = serde_json::from_slice(&body).unwrap();
                    let keys: Vec<String> = page.items.into_iter().map(|item| item.key).collect();
                    pages.push((keys, body.len()));
                    after = Some(page.next.expect("a page cut short has a next"));
                }
                pages
            })
        })
        .collect();
    let export = {
        let (http, base) = (client(), base.clone());
        tokio::spawn(async move {
            let response = http
                .get(format!("{base}/kv"))
                .header("accept", "application/x-ndjson")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let (mut lines, mut bytes, mut largest) = (0, 0, 0);
            let mut stream = response.bytes_stream();
            while bytes < EXPORT_READ {
                let Some(chunk) = stream.next().await else { break };
                let chunk = chunk.unwrap();
                bytes += chunk.len();
                largest = largest.max(chunk.len());
                lines += chunk.iter().filter(|&&b| b == b'\n').count();
            }
            (lines, bytes, largest)
        })
    };
    let mut walks = Vec::new();
    for walk in pages {
        walks.push(walk.await.unwrap());
    }
    let (lines, exported, largest_chunk) = export.await.unwrap();
    let elapsed = dumping.elapsed();
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let mut latencies = getter.await.unwrap();
    latencies.sort();
    let growth = peak.saturating_sub(baseline);
    let slowest = latencies.last().copied().unwrap_or_default();
    let median = latencies.get(latencies.len() / 2).copied().unwrap_or_default();
    eprintln!(
        "DUMP memory: RSS {} MiB before, peak {} MiB, growth {} MiB (bound {} MiB) over four clients reading \
         two pages of ?limit=1000 and an NDJSON export ({} MiB read, {lines} lines) in {elapsed:.1?}",
        baseline / MIB,
        peak / MIB,
        growth / MIB,
        RSS_BOUND / MIB,
        exported as u64 / MIB
    );
    let largest_page = walks.iter().flatten().map(|(_, bytes)| *bytes).max().unwrap_or(0);
    eprintln!(
        "DUMP memory: pages of {} and {} items, the largest {:.1} MiB; the largest NDJSON chunk {:.1} MiB; \
         plain GETs during the DUMPs: {} answered, median {median:.1?}, slowest {slowest:.1?}",
        walks[0][0].0.len(),
        walks[0][1].0.len(),
        largest_page as f64 / MIB as f64,
        largest_chunk as f64 / MIB as f64,
        latencies.len(),
    );
    for walk in &walks {
        let (first, second) = (&walk[0].0, &walk[1].0);
        assert!(
            !first.is_empty() && first.len() < values,
            "a page of 1,000 MiB was not cut short"
        );
        assert_eq!(first[0], "big/0000");
        // The next page continues right after the last key of the first.
        let expected = format!("big/{:04}", first.len());
        assert_eq!(second.first(), Some(&expected));
    }
    assert!(
        largest_page <= (9 + 2) * MIB as usize,
        "a page over its byte bound: {largest_page}"
    );
    assert!(
        largest_chunk <= 2 * MIB as usize,
        "an NDJSON chunk over its byte bound: {largest_chunk}"
    );
    assert!(lines > 0 && exported >= EXPORT_READ, "the export streamed");
    assert!(growth < RSS_BOUND, "RSS grew by {} MiB", growth / MIB);
    assert!(!latencies.is_empty());
    // 100 ms is the promise; the machine is shared, so the slowest may be a
    // hiccup. Over etcd a GET is a linearizable read by a cluster that is
    // serving the DUMPs' ranges of 1 MiB values on the same two cores (seen:
    // 0.7 s): its bound is the call's deadline.
    assert!(median < Duration::from_millis(100), "median GET {median:?}");
    let slowest_bound = Duration::from_millis(if over_etcd { 2000 } else { 500 });
    assert!(slowest < slowest_bound, "slowest GET {slowest:?}");
}
