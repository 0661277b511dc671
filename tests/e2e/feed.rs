//! The change feed (`GET /kv?watch=1`) and the proxies it keeps coherent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kv_tests::{Proxy, Server, bin, client, error_code, header, metric};
use reqwest::Client;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A watch's stream, read line by line (NDJSON) or frame by frame (SSE).
struct Stream {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Stream {
    async fn open(http: &Client, url: &str) -> Self {
        let response = http
            .get(url)
            .header("accept", "application/x-ndjson")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{url}: {response:?}");
        Self {
            response,
            buffer: Vec::new(),
        }
    }

    /// The next piece ending in `separator`, within 10 s.
    async fn next_piece(&mut self, separator: &[u8]) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(at) = self.buffer.windows(separator.len()).position(|w| w == separator) {
                let piece: Vec<u8> = self.buffer.drain(..at + separator.len()).collect();
                return Some(String::from_utf8(piece[..at].to_vec()).unwrap());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buffer.extend_from_slice(&chunk),
                Ok(_) => return None,
                Err(_) => panic!("nothing came from the feed for 10 s"),
            }
        }
    }

    async fn event(&mut self) -> Value {
        let line = self.next_piece(b"\n").await.expect("the feed ended");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// The next put or delete (progress lines skipped).
    async fn change(&mut self) -> Value {
        loop {
            let event = self.event().await;
            if event["type"] == "put" || event["type"] == "delete" {
                return event;
            }
        }
    }
}

async fn put(http: &Client, base: &str, key: &str, value: &str) -> u64 {
    let response = http
        .put(format!("{base}/kv/{key}"))
        .body(value.to_owned())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{response:?}");
    header(&response, "x-kv-revision").unwrap().parse().unwrap()
}

async fn delete(http: &Client, base: &str, key: &str) -> u64 {
    let response = http.delete(format!("{base}/kv/{key}")).send().await.unwrap();
    assert_eq!(response.status(), 204, "{response:?}");
    header(&response, "x-kv-revision").unwrap().parse().unwrap()
}

/// (X-Cache, body) of a GET through a proxy.
async fn get(http: &Client, base: &str, key: &str) -> (String, String) {
    let response = http.get(format!("{base}/kv/{key}")).send().await.unwrap();
    assert_eq!(response.status(), 200, "{response:?}");
    let cache = header(&response, "x-cache").unwrap_or_default();
    (cache, response.text().await.unwrap())
}

/// Polls `base` until `key` reads `want`; returns how long that took.
async fn until_value(http: &Client, base: &str, key: &str, want: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (_, body) = get(http, base, key).await;
        if body == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{base} still answers {body:?} for {key} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// GETs until the proxy answers from its cache (the feed is current).
async fn until_hit(http: &Client, base: &str, key: &str, within: Duration) {
    let started = Instant::now();
    while get(http, base, key).await.0 != "HIT" {
        assert!(started.elapsed() < within, "{base} never answered {key} from its cache");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn list_then_watch_delivers_every_change_exactly_once_in_order() {
    let server = Server::start();
    let http = client();
    for i in 0..20 {
        put(&http, &server.url, &format!("k{i}"), "first").await;
    }
    // Writes go on while the client lists and subscribes.
    let writer = {
        let (http, url) = (http.clone(), server.url.clone());
        tokio::spawn(async move {
            let mut last = 0;
            for i in 0..300 {
                let key = format!("k{}", i % 25);
                last = if i % 7 == 3 {
                    let response = http.delete(format!("{url}/kv/{key}")).send().await.unwrap();
                    match header(&response, "x-kv-revision") {
                        Some(rev) => rev.parse().unwrap(),
                        None => last,
                    }
                } else {
                    put(&http, &url, &key, &format!("v{i}")).await
                };
            }
            last
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let listing = http.get(format!("{}/kv", server.url)).send().await.unwrap();
    let listed_at: u64 = header(&listing, "x-kv-revision")
        .expect("DUMP says its revision")
        .parse()
        .unwrap();
    let page: Value = serde_json::from_slice(&listing.bytes().await.unwrap()).unwrap();
    let mut state: std::collections::BTreeMap<String, (u64, String)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let key = item["key"].as_str().unwrap().to_owned();
            (
                key,
                (
                    item["version"].as_u64().unwrap(),
                    item["value"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect();
    let mut feed = Stream::open(&http, &format!("{}/kv?watch=1&since={listed_at}", server.url)).await;
    assert_eq!(
        feed.event().await,
        serde_json::json!({"type": "sync", "rev": listed_at})
    );
    let last = writer.await.unwrap();
    let mut expected = listed_at + 1;
    while expected <= last {
        let event = feed.change().await;
        let rev = event["rev"].as_u64().unwrap();
        assert_eq!(rev, expected, "every revision once, in order: {event}");
        expected += 1;
        let key = event["key"].as_str().unwrap().to_owned();
        // The listing may already hold a later version of a key: apply only newer events.
        if state.get(&key).is_some_and(|(version, _)| *version >= rev) {
            continue;
        }
        if event["type"] == "put" {
            state.insert(key, (rev, event["value"].as_str().unwrap().to_owned()));
        } else {
            state.remove(&key);
        }
    }
    // The list plus the feed is the store.
    let now = http.get(format!("{}/kv", server.url)).send().await.unwrap();
    let now: Value = serde_json::from_slice(&now.bytes().await.unwrap()).unwrap();
    let now: std::collections::BTreeMap<String, (u64, String)> = now["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let key = item["key"].as_str().unwrap().to_owned();
            (
                key,
                (
                    item["version"].as_u64().unwrap(),
                    item["value"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect();
    assert_eq!(state, now);
}

#[tokio::test]
async fn a_watch_resumes_with_since_and_says_its_headers_and_progress() {
    let server = Server::start();
    let http = client();
    let start = put(&http, &server.url, "a", "1").await;
    let response = http
        .get(format!("{}/kv?watch=1&prefix=a", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some("application/x-ndjson")
    );
    assert_eq!(header(&response, "cache-control").as_deref(), Some("no-cache"));
    assert_eq!(header(&response, "x-accel-buffering").as_deref(), Some("no"));
    assert_eq!(header(&response, "x-kv-revision"), Some(start.to_string()));
    let mut feed = Stream {
        response,
        buffer: Vec::new(),
    };
    assert_eq!(feed.event().await["type"], "sync");
    // Caught up at once, then at least once a second while quiet.
    assert_eq!(
        feed.event().await,
        serde_json::json!({"type": "progress", "rev": start})
    );
    let quiet = Instant::now();
    assert_eq!(feed.event().await["type"], "progress");
    assert!(quiet.elapsed() < Duration::from_millis(1500), "{:?}", quiet.elapsed());

    let r1 = put(&http, &server.url, "a1", "x").await;
    put(&http, &server.url, "b", "not mine").await;
    let r2 = delete(&http, &server.url, "a1").await;
    let change = feed.change().await;
    assert_eq!(
        change,
        serde_json::json!({"type": "put", "rev": r1, "key": "a1", "value": "x", "content_type": "application/octet-stream"})
    );
    drop(feed);
    // Missed while disconnected, then resumed from the last revision seen.
    let r3 = put(&http, &server.url, "a2", "y").await;
    let mut feed = Stream::open(&http, &format!("{}/kv?watch=1&prefix=a&since={r1}", server.url)).await;
    assert_eq!(feed.event().await, serde_json::json!({"type": "sync", "rev": r1}));
    assert_eq!(
        feed.change().await,
        serde_json::json!({"type": "delete", "rev": r2, "key": "a1"})
    );
    assert_eq!(feed.change().await["rev"], r3);

    // values=0 leaves values out; a since ahead of the store is refused.
    let mut bare = Stream::open(&http, &format!("{}/kv?watch=1&values=0&since={r2}", server.url)).await;
    bare.event().await;
    assert_eq!(
        bare.change().await,
        serde_json::json!({"type": "put", "rev": r3, "key": "a2", "value_omitted": true, "size": 1, "content_type": "application/octet-stream"})
    );
    let ahead = http
        .get(format!("{}/kv?watch=1&since={}", server.url, r3 + 10))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(ahead, 400).await, "bad_request");
    // GET says the revision it read at.
    let read = http.get(format!("{}/kv/a2", server.url)).send().await.unwrap();
    assert_eq!(header(&read, "x-kv-revision"), Some(r3.to_string()));
}

#[tokio::test]
async fn a_since_older_than_the_history_is_410_or_an_sse_reset() {
    let server = Server::start_with(&["--feed-history-events", "5"]);
    let http = client();
    let mut last = 0;
    for i in 0..20 {
        last = put(&http, &server.url, "k", &i.to_string()).await;
    }
    let gone = http
        .get(format!("{}/kv?watch=1&since=1", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 410);
    let body: Value = serde_json::from_slice(&gone.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"], "revision_compacted");
    assert_eq!(body["oldest"], last - 5);
    assert_eq!(body["current"], last);
    // Within the history: fine.
    Stream::open(&http, &format!("{}/kv?watch=1&since={}", server.url, last - 5)).await;

    // SSE: 200, a reset event, then the stream from the current revision.
    let response = http
        .get(format!("{}/kv?watch=1&since=1", server.url))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut sse = Stream {
        response,
        buffer: Vec::new(),
    };
    let reset = sse.next_piece(b"\n\n").await.unwrap();
    assert_eq!(
        reset,
        format!(
            "id: {last}\nevent: reset\ndata: {{\"type\":\"reset\",\"oldest\":{},\"current\":{last}}}",
            last - 5
        )
    );
    let sync = sse.next_piece(b"\n\n").await.unwrap();
    assert!(sync.starts_with(&format!("id: {last}\nevent: sync\n")), "{sync}");
}

#[tokio::test]
async fn sse_resumes_from_last_event_id() {
    let server = Server::start();
    let http = client();
    let r1 = put(&http, &server.url, "name", "Derek Moss").await;
    let r2 = put(&http, &server.url, "city", "Pune").await;
    let response = http
        .get(format!("{}/kv?watch=1", server.url))
        .header("accept", "text/event-stream")
        .header("last-event-id", r1.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type").as_deref(), Some("text/event-stream"));
    assert_eq!(header(&response, "x-kv-revision"), Some(r1.to_string()));
    let mut sse = Stream {
        response,
        buffer: Vec::new(),
    };
    assert!(sse.next_piece(b"\n\n").await.unwrap().contains("event: sync"));
    let frame = sse.next_piece(b"\n\n").await.unwrap();
    assert_eq!(
        frame,
        format!(
            "id: {r2}\nevent: put\ndata: {{\"type\":\"put\",\"rev\":{r2},\"key\":\"city\",\"value\":\"Pune\",\"content_type\":\"application/octet-stream\"}}"
        )
    );
    let progress = sse.next_piece(b"\n\n").await.unwrap();
    assert!(
        progress.starts_with(&format!("id: {r2}\nevent: progress\n")),
        "{progress}"
    );
}

#[tokio::test]
async fn subscribers_are_capped() {
    let server = Server::start_with(&["--max-watchers", "1"]);
    let http = client();
    let _first = Stream::open(&http, &format!("{}/kv?watch=1", server.url)).await;
    let second = http.get(format!("{}/kv?watch=1", server.url)).send().await.unwrap();
    assert_eq!(header(&second, "retry-after").as_deref(), Some("1"));
    assert_eq!(error_code(second, 503).await, "too_many_watchers");
}

#[tokio::test]
async fn a_subscriber_that_never_reads_is_dropped_and_writes_do_not_slow() {
    let server = Server::start();
    let http = client();
    // A subscriber with a small receive buffer that never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(server.addr).await.unwrap();
    stalled
        .write_all(b"GET /kv?watch=1 HTTP/1.1\r\nhost: kv\r\n\r\n")
        .await
        .unwrap();
    let value = "x".repeat(16 << 10);
    let started = Instant::now();
    for i in 0..600 {
        put(&http, &server.url, &format!("k{}", i % 10), &value).await;
    }
    let writing = started.elapsed();
    assert!(writing < Duration::from_secs(15), "600 writes took {writing:?}");
    // It has not drained for 10 s: the server drops it.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut sink = vec![0u8; 1 << 20];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stalled.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stalled subscriber was not disconnected");
    // And the server is well.
    put(&http, &server.url, "after", "ok").await;
}

#[tokio::test]
async fn a_write_through_one_proxy_shows_through_another_at_once() {
    let server = Server::start();
    let a = Proxy::start(&server.url, &[]);
    let b = Proxy::start(&server.url, &[]);
    let http = client();
    put(&http, &a.url, "hot", "v1").await;
    until_hit(&http, &b.url, "hot", Duration::from_secs(5)).await;
    put(&http, &a.url, "hot", "v2").await;
    let took = until_value(&http, &b.url, "hot", "v2", Duration::from_secs(2)).await;
    eprintln!("seen through B after {took:?}");
    // A write made on the server itself, too.
    until_hit(&http, &b.url, "hot", Duration::from_secs(5)).await;
    put(&http, &server.url, "hot", "v3").await;
    until_value(&http, &b.url, "hot", "v3", Duration::from_secs(2)).await;
    // The event carried the value: B answers it from its cache.
    assert_eq!(get(&http, &b.url, "hot").await, ("HIT".to_owned(), "v3".to_owned()));
    // A delete drops the entry.
    delete(&http, &a.url, "hot").await;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let status = http.get(format!("{}/kv/hot", b.url)).send().await.unwrap().status();
        if status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "B still has the deleted key");
    }
    // X-Kv-Min-Revision: never older than the client's own write.
    for i in 0..20 {
        let rev = put(&http, &a.url, "ryw", &i.to_string()).await;
        let response = http
            .get(format!("{}/kv/ryw", b.url))
            .header("x-kv-min-revision", rev.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.text().await.unwrap(), i.to_string());
    }
    // A revision that is not one is refused, by the proxy and by the server.
    for base in [&b.url, &server.url] {
        let response = http
            .get(format!("{base}/kv/ryw"))
            .header("x-kv-min-revision", "soon")
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(response, 400).await, "bad_request", "{base}");
    }
    let text = http
        .get(format!("{}/metrics", b.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metric(&text, "kv_proxy_feed_healthy"), 1.0, "{text}");
    assert!(metric(&text, "kv_proxy_feed_events_applied_total") >= 3.0, "{text}");
    assert!(metric(&text, "kv_proxy_feed_applied_revision") >= 20.0, "{text}");
}

/// A TCP relay between a proxy and its server that can freeze the change
/// feed's connections (those that carried `watch=1`): while frozen they
/// forward nothing either way; other connections pass.
struct Relay {
    addr: std::net::SocketAddr,
    frozen: Arc<AtomicBool>,
}

impl Relay {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let frozen = flag.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let is_feed = Arc::new(AtomicBool::new(false));
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let (up_feed, up_frozen) = (is_feed.clone(), frozen.clone());
                    let up = tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            let n = match client_read.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if buf[..n].windows(7).any(|w| w == b"watch=1") {
                                up_feed.store(true, Ordering::SeqCst);
                            }
                            while up_feed.load(Ordering::SeqCst) && up_frozen.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            if server_write.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = match server_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        while is_feed.load(Ordering::SeqCst) && frozen.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        Self { addr, frozen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[tokio::test]
async fn a_frozen_feed_suspends_hits_within_the_lease_and_they_resume_after() {
    let server = Server::start();
    let relay = Relay::start(server.addr).await;
    let a = Proxy::start(&server.url, &[]);
    let b = Proxy::start(&relay.url(), &["--feed-lease", "1s"]);
    let http = client();
    put(&http, &a.url, "k", "v1").await;
    until_hit(&http, &b.url, "k", Duration::from_secs(5)).await;

    relay.frozen.store(true, Ordering::SeqCst);
    let frozen_at = Instant::now();
    loop {
        let (cache, _) = get(&http, &b.url, "k").await;
        if cache != "HIT" {
            break;
        }
        assert!(
            frozen_at.elapsed() < Duration::from_millis(1000 + 500),
            "B kept answering from its cache {:?} after its feed froze",
            frozen_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("hits suspended {:?} after the freeze", frozen_at.elapsed());
    // Meanwhile B answers current values, from the server.
    put(&http, &a.url, "k", "v2").await;
    assert_eq!(get(&http, &b.url, "k").await, ("MISS".to_owned(), "v2".to_owned()));
    let text = http
        .get(format!("{}/metrics", b.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metric(&text, "kv_proxy_feed_healthy"), 0.0, "{text}");

    relay.frozen.store(false, Ordering::SeqCst);
    until_hit(&http, &b.url, "k", Duration::from_secs(8)).await;
    assert_eq!(get(&http, &b.url, "k").await.1, "v2");
    // The replay was accepted: no flush.
    let text = http
        .get(format!("{}/metrics", b.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metric(&text, "kv_proxy_feed_flushes_total"), 0.0, "{text}");
}

#[tokio::test]
async fn proxies_stay_coherent_across_a_server_restart_and_a_new_store() {
    let mut server = Server::start();
    let b = Proxy::start(&server.url, &[]);
    let http = client();
    put(&http, &server.url, "k", "before").await;
    until_hit(&http, &b.url, "k", Duration::from_secs(5)).await;

    // kill -9 and back on the same directory and port: B resumes from its revision.
    let (dir, addr) = (server.data_dir.clone(), server.addr);
    server.program.kill9();
    let restarted = Server::start_on(&dir, addr, &[]);
    // A new client: the old one's pooled connections died with the server.
    let http = client();
    put(&http, &restarted.url, "k", "after").await;
    until_value(&http, &b.url, "k", "after", Duration::from_secs(5)).await;
    until_hit(&http, &b.url, "k", Duration::from_secs(5)).await;
    assert_eq!(get(&http, &b.url, "k").await.1, "after");
    drop(restarted);

    // Another store on the same port (a new data directory): B flushes.
    let other = tempfile::tempdir().unwrap();
    let fresh = Server::start_on(other.path(), addr, &[]);
    let http = client();
    put(&http, &fresh.url, "k", "new store").await;
    until_value(&http, &b.url, "k", "new store", Duration::from_secs(5)).await;
    until_hit(&http, &b.url, "k", Duration::from_secs(5)).await;
    let text = http
        .get(format!("{}/metrics", b.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metric(&text, "kv_proxy_feed_healthy"), 1.0, "{text}");
}

#[tokio::test]
async fn kv_watch_prints_changes_and_resumes_after_a_restart() {
    let server = Server::start();
    let http = client();
    let start = put(&http, &server.url, "other", "x").await;
    let mut watch = tokio::process::Command::new(bin("kv"))
        .args(["--url", &server.url, "watch", "--since", &start.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let mut lines = tokio_util_lines(stdout);
    let r1 = put(&http, &server.url, "name", "Derek Moss").await;
    let r2 = delete(&http, &server.url, "name").await;
    assert_eq!(next_line(&mut lines).await, format!("{r1} PUT name Derek Moss"));
    assert_eq!(next_line(&mut lines).await, format!("{r2} DELETE name"));
    let r3 = put(&http, &server.url, "quote", "a \"b\"").await;
    assert_eq!(next_line(&mut lines).await, format!("{r3} PUT quote \"a \\\"b\\\"\""));

    // The server goes away and comes back: kv watch resumes where it was.
    let mut server = server;
    let (dir, addr) = (server.data_dir.clone(), server.addr);
    server.program.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restarted = Server::start_on(&dir, addr, &[]);
    let r4 = put(&http, &restarted.url, "name", "back").await;
    assert_eq!(next_line(&mut lines).await, format!("{r4} PUT name back"));
    watch.kill().await.unwrap();

    // --json prints the events as they come.
    let mut json = tokio::process::Command::new(bin("kv"))
        .args(["--url", &restarted.url, "watch", "--json", "--since", &r3.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio_util_lines(json.stdout.take().unwrap());
    assert_eq!(
        serde_json::from_str::<Value>(&next_line(&mut lines).await).unwrap(),
        serde_json::json!({"type": "sync", "rev": r3})
    );
    let put4: Value = serde_json::from_str(&next_line(&mut lines).await).unwrap();
    assert_eq!(put4["rev"], r4);
    json.kill().await.unwrap();

    // The history starts at the restart: older is a reset, said on stderr.
    let old = tokio::process::Command::new(bin("kv"))
        .args(["--url", &restarted.url, "watch", "--since", &r2.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = old.stderr.unwrap();
    let mut said = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        let mut buf = [0u8; 1024];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            said.extend_from_slice(&buf[..n]);
            if said.contains(&b'\n') {
                break;
            }
        }
    })
    .await;
    let said = String::from_utf8_lossy(&said);
    assert!(said.contains("RESET"), "{said}");
}

type Lines = futures_util::stream::BoxStream<'static, String>;

fn tokio_util_lines(stdout: tokio::process::ChildStdout) -> Lines {
    use tokio::io::AsyncBufReadExt;
    let lines = tokio::io::BufReader::new(stdout).lines();
    futures_util::stream::unfold(lines, |mut lines| async move {
        let line = lines.next_line().await.ok()??;
        Some((line, lines))
    })
    .boxed()
}

async fn next_line(lines: &mut Lines) -> String {
    tokio::time::timeout(Duration::from_secs(10), lines.next())
        .await
        .expect("kv watch printed nothing for 10 s")
        .expect("kv watch ended")
}
