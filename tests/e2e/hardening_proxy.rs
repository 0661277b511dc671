//! Issue 13, the proxy's side: each test pins one fault a review found, and
//! prints the figure it measures (`--nocapture` shows it).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kv_tests::{Proxy, Server, client, header};
use reqwest::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::proxy::{get, put, server_and_proxy, x_cache};
use crate::telnet::Telnet;

/// A TCP relay to `upstream` that holds every chunk beginning a PUT or a
/// DELETE for `delay` before passing it on: an upstream slow to answer writes.
/// A write it has read reaches the upstream even if the proxy hangs up.
async fn slow_writes(upstream: SocketAddr, delay: Duration) -> (tokio::task::JoinHandle<()>, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((near, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(far) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut near_read, mut near_write) = near.into_split();
                let (mut far_read, mut far_write) = far.into_split();
                let up = async move {
                    let mut buffer = vec![0; 64 << 10];
                    while let Ok(read @ 1..) = near_read.read(&mut buffer).await {
                        let chunk = &buffer[..read];
                        if chunk.starts_with(b"PUT ") || chunk.starts_with(b"DELETE ") {
                            tokio::time::sleep(delay).await;
                        }
                        if far_write.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                    // Kept open: the upstream answers what it was sent.
                    far_write
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut far_read, &mut near_write).await;
                };
                let _ = tokio::join!(up, down);
            });
        }
    });
    (task, addr)
}

/// A PUT of `value` straight to the server; returns the version it took.
async fn put_direct(http: &Client, server: &Server, key: &str, value: &str) -> u64 {
    let response = put(http, &format!("{}/kv/{key}", server.url), value).await;
    header(&response, "etag").unwrap().trim_matches('"').parse().unwrap()
}

/// Item 5: once a write is sent upstream, its invalidation runs whatever the
/// client does (HTTP/1 close, HTTP/2 stream reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_whose_client_hangs_up_still_invalidates() {
    let server = Server::start();
    let (_relay, relay) = slow_writes(server.addr, Duration::from_secs(1)).await;
    let proxy = Proxy::start(&format!("http://{relay}"), &["--cache-ttl", "60s"]);
    let http = client();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let mut stale = Vec::new();
    for (key, how) in [("h1", "HTTP/1 close"), ("h2", "HTTP/2 reset")] {
        put_direct(&http, &server, key, "old").await;
        let url = format!("{}/kv/{key}", proxy.url);
        get(&http, &url).await;
        assert_eq!(get(&http, &url).await, ("HIT".into(), "old".into()));

        let sent = Instant::now();
        if key == "h1" {
            let mut raw = TcpStream::connect(proxy.url.trim_start_matches("http://"))
                .await
                .unwrap();
            let request = format!("PUT /kv/{key} HTTP/1.1\r\nhost: kv\r\ncontent-length: 3\r\n\r\nnew");
            raw.write_all(request.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(raw);
        } else {
            let cancelled = h2.put(&url).body("new").send().await;
            assert!(cancelled.unwrap_err().is_timeout(), "the client gave up after 200 ms");
        }
        // The upstream applies the write a second after it was sent.
        let stored = loop {
            let response = http.get(format!("{}/kv/{key}", server.url)).send().await.unwrap();
            let body = response.text().await.unwrap();
            if body == "new" || sent.elapsed() > Duration::from_secs(5) {
                break body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(stored, "new", "the upstream applied the write");
        // Give the proxy the time to read the upstream's answer.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (cache, body) = get(&http, &url).await;
        eprintln!("item 5, {how} 200 ms after a PUT: the next GET was {cache} {body:?}");
        if body != "new" {
            stale.push(format!("{how}: {cache} {body:?}"));
        }
    }
    assert!(stale.is_empty(), "stale reads after a cancelled write: {stale:?}");
}

/// Item 6: an answer that proves the cached entry stale drops it (a 412 on PUT
/// or DELETE, a 404 on DELETE), over HTTP and telnet.
#[tokio::test]
async fn a_412_or_a_404_on_delete_drops_the_stale_entry() {
    let (server, proxy) = server_and_proxy(&["--cache-ttl", "60s"]);
    let http = client();
    let mut seen = Vec::new();

    for method in [reqwest::Method::PUT, reqwest::Method::DELETE] {
        let key = format!("c-{method}");
        let first = put_direct(&http, &server, &key, "one").await;
        let url = format!("{}/kv/{key}", proxy.url);
        get(&http, &url).await;
        assert_eq!(get(&http, &url).await, ("HIT".into(), "one".into()));
        let second = put_direct(&http, &server, &key, "two").await;
        let refused = http
            .request(method.clone(), &url)
            .header("if-match", format!("\"{first}\""))
            .body("three")
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 412);
        let read = http.get(&url).send().await.unwrap();
        let (cache, etag) = (x_cache(&read), header(&read, "etag").unwrap());
        eprintln!("item 6, {method} If-Match: \"{first}\" got 412; the next GET: {cache} ETag {etag}");
        seen.push((format!("{method} 412"), etag == format!("\"{second}\"")));
    }

    put_direct(&http, &server, "d", "old").await;
    let url = format!("{}/kv/d", proxy.url);
    get(&http, &url).await;
    assert_eq!(get(&http, &url).await.0, "HIT");
    http.delete(format!("{}/kv/d", server.url)).send().await.unwrap();
    assert_eq!(http.delete(&url).send().await.unwrap().status(), 404);
    let status = http.get(&url).send().await.unwrap().status();
    eprintln!("item 6, DELETE got 404; the next GET: {status}");
    seen.push(("DELETE 404".into(), status == 404));

    put_direct(&http, &server, "t", "old").await;
    let mut telnet = Telnet::connect(proxy.telnet).await;
    assert_eq!(telnet.ask("GET t").await, "VALUE old");
    assert_eq!(telnet.ask("GET t").await, "VALUE old");
    http.delete(format!("{}/kv/t", server.url)).send().await.unwrap();
    assert_eq!(telnet.ask("DEL t").await, "NOT_FOUND");
    let reply = telnet.ask("GET t").await;
    eprintln!("item 6, telnet DEL t gave NOT_FOUND; GET t: {reply}");
    seen.push(("telnet DEL NOT_FOUND".into(), reply == "NOT_FOUND"));

    let stale: Vec<_> = seen.iter().filter(|(_, ok)| !ok).map(|(what, _)| what).collect();
    assert!(stale.is_empty(), "stale entries served after: {stale:?}");
}

/// Item 7: after a write whose outcome is unknown (504), fills of its key are
/// served but not cached until the outcome can no longer change.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fills_after_an_unknown_write_outcome_are_not_cached() {
    let server = Server::start();
    let (_relay, relay) = slow_writes(server.addr, Duration::from_millis(2500)).await;
    let proxy = Proxy::start(
        &format!("http://{relay}"),
        &["--cache-ttl", "60s", "--upstream-timeout", "2s"],
    );
    let http = client();
    put_direct(&http, &server, "k", "v1").await;
    let url = format!("{}/kv/k", proxy.url);
    get(&http, &url).await;
    assert_eq!(get(&http, &url).await, ("HIT".into(), "v1".into()));

    let sent = Instant::now();
    let timed_out = http.put(&url).body("v2").send().await.unwrap();
    assert_eq!(timed_out.status(), 504, "the upstream takes 2.5 s, the proxy waits 2 s");
    // The write is still on its way: this read sees the old value...
    let (during, during_value) = get(&http, &url).await;
    // ...and the write lands 2.5 s after it was sent.
    loop {
        let direct = http.get(format!("{}/kv/k", server.url)).send().await.unwrap();
        if direct.text().await.unwrap() == "v2" {
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(4),
            "the upstream never applied the write"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (after, after_value) = get(&http, &url).await;
    eprintln!(
        "item 7, after a 504 on PUT: a GET while the write was in flight: {during} {during_value:?}; \
         once it landed ({} ms after it was sent): {after} {after_value:?}",
        sent.elapsed().as_millis()
    );
    assert_eq!(after_value, "v2", "the value read before the write landed was cached");

    // Past the window (the upstream timeout after the 504), fills are cached again.
    tokio::time::sleep(Duration::from_millis(4500).saturating_sub(sent.elapsed())).await;
    get(&http, &url).await;
    assert_eq!(get(&http, &url).await, ("HIT".into(), "v2".into()));
}

/// Item 8: an entry's age counts from when its upstream read began, and a miss
/// answered by another request's fill says that entry's `Age`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_freshness_clock_starts_when_the_upstream_read_begins() {
    let server = Server::start();
    // The fill holds what it read for 1.5 s: an upstream that slow. The TTL
    // clock alone (`--coherence off`): with the feed, the write would replace
    // the entry as soon as the fill lets go of the key.
    let proxy = Proxy::start(
        &server.url,
        &[
            "--cache-ttl",
            "2s",
            "--debug-fill-delay",
            "1500ms",
            "--coherence",
            "off",
        ],
    );
    let http = client();
    put_direct(&http, &server, "k", "old").await;
    let url = format!("{}/kv/k", proxy.url);

    let filling = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move { get(&http, &url).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let written = Instant::now();
    put_direct(&http, &server, "k", "new").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiting = http.get(&url).send().await.unwrap();
    let (waiting_cache, waiting_age) = (x_cache(&waiting), header(&waiting, "age"));
    assert_eq!(waiting.text().await.unwrap(), "old");
    assert_eq!(filling.await.unwrap(), ("MISS".into(), "old".into()));

    // Read until the direct write shows; note when the read that showed it was sent.
    let shown_to = loop {
        let asked = Instant::now();
        let (_, body) = get(&http, &url).await;
        if body == "new" {
            break asked.duration_since(written);
        }
        assert!(written.elapsed() < Duration::from_secs(10), "the write never showed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "item 8, upstream read 1.5 s, TTL 2 s: a miss that waited for another's fill said {waiting_cache} \
         Age {waiting_age:?}; a direct write was hidden from reads sent up to {} ms after it",
        shown_to.as_millis()
    );
    assert_eq!(waiting_cache, "MISS");
    assert_eq!(waiting_age.as_deref(), Some("1"), "the entry was 1.4 s old when served");
    assert!(
        shown_to < Duration::from_millis(2100),
        "a write that bypassed the proxy stayed hidden {shown_to:?}, more than the TTL"
    );
}

/// Item 10: a server restarted on a fresh data directory behind a running
/// proxy has a new store id; the proxy flushes its cache and says why.
#[tokio::test]
async fn a_new_store_behind_the_proxy_flushes_its_cache() {
    let first_dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(first_dir.path(), &[]);
    let proxy = Proxy::start(&server.url, &["--cache-ttl", "60s"]);
    let http = client();
    for round in 0..5 {
        put(&http, &format!("{}/kv/k", proxy.url), &format!("old-{round}")).await;
    }
    put(&http, &format!("{}/kv/other", proxy.url), "old").await;
    for key in ["k", "other"] {
        let url = format!("{}/kv/{key}", proxy.url);
        get(&http, &url).await;
        assert_eq!(get(&http, &url).await.0, "HIT");
    }
    let old_id = http.get(format!("{}/kv/k", server.url)).send().await.unwrap();
    let old_id = header(&old_id, "x-kv-store-id");

    server.program.kill9();
    let second_dir = tempfile::tempdir().unwrap();
    let server = Server::start_on(second_dir.path(), server.addr, &[]);
    // A new client: the old one's pooled connections went with the old server.
    let http = client();
    let new_id = header(
        &http.get(format!("{}/healthz", server.url)).send().await.unwrap(),
        "x-kv-store-id",
    );
    assert!(new_id.is_some() && new_id != old_id, "{old_id:?} then {new_id:?}");

    // Revision 1 on the new store, below the cached entry's version 5.
    let written = put(&http, &format!("{}/kv/k", proxy.url), "new").await;
    assert_eq!(header(&written, "etag").as_deref(), Some("\"1\""));
    let (k_cache, k_value) = get(&http, &format!("{}/kv/k", proxy.url)).await;
    let other = http.get(format!("{}/kv/other", proxy.url)).send().await.unwrap();
    let (other_status, other_cache) = (other.status(), x_cache(&other));
    let warned = proxy
        .program
        .log()
        .lines()
        .filter(|l| l.contains("store id changed"))
        .count();
    eprintln!(
        "item 10, store id {old_id:?} -> {new_id:?}: GET k after a PUT through the proxy: {k_cache} {k_value:?}; \
         GET other (only on the old store): {other_status} {other_cache}; warnings logged: {warned}"
    );
    assert_eq!(k_value, "new", "read-your-writes across a store change");
    assert_eq!((other_status.as_u16(), other_cache.as_str()), (404, "MISS"));
    assert_eq!(warned, 1, "one warning says why:\n{}", proxy.program.log());
}

/// A fake upstream that answers the first GET of each connection (keep-alive)
/// and closes the connection, without a byte, when a second request comes on
/// it: a server closing an idle connection just as the proxy reuses it.
async fn closes_reused_connections() -> (tokio::task::JoinHandle<()>, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(read @ 1..) => head.extend_from_slice(&buffer[..read]),
                        _ => return,
                    }
                }
                let answer =
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\netag: \"1\"\r\ncontent-length: 5\r\n\r\nvalue";
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                // The next request gets no answer: the connection just closes.
                let _ = stream.read(&mut buffer).await;
            });
        }
    });
    (task, addr)
}

/// Item 11b: a GET that failed on a reused connection before any byte came
/// back is retried once on a new one.
#[tokio::test]
async fn a_get_on_a_connection_the_upstream_closed_is_retried() {
    let (_upstream, addr) = closes_reused_connections().await;
    let proxy = Proxy::start(&format!("http://{addr}"), &["--cache-ttl", "60s"]);
    let http = client();
    let mut failed = 0;
    let gets = 10;
    for i in 0..gets {
        let response = http.get(format!("{}/kv/k{i}", proxy.url)).send().await.unwrap();
        if response.status() != 200 {
            failed += 1;
        }
    }
    eprintln!("item 11b, {gets} GETs, each on a pooled connection the upstream then closed: {failed} failed");
    assert_eq!(failed, 0);
}

/// A telnet client that asks `GET big` 50 times and never reads, over a
/// socket with a 4 KiB receive buffer.
async fn non_reader(telnet: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(telnet).await.unwrap();
    stream.write_all("GET big\n".repeat(50).as_bytes()).await.unwrap();
    stream
}

/// Item 3: a telnet client that stops reading loses its session after the
/// write timeout, and its slot is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_telnet_client_that_stops_reading_loses_its_session_and_slot() {
    let (server, proxy) = server_and_proxy(&[
        "--telnet-idle-timeout",
        "2s",
        "--telnet-max-connections",
        "1",
        "--telnet-write-timeout",
        "2s",
    ]);
    let http = client();
    http.put(format!("{}/kv/big", server.url))
        .body(vec![b'x'; 512 << 10])
        .send()
        .await
        .unwrap();
    let started = Instant::now();
    let mut stuck = non_reader(proxy.telnet).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The slot frees once the session is closed; until then a second client is refused.
    let served_after = loop {
        let mut second = Telnet::connect(proxy.telnet).await;
        second.send("GET small").await;
        let reply = second.recv().await;
        if reply == "NOT_FOUND" {
            break started.elapsed();
        }
        assert!(reply.starts_with("ERR too many connections"), "{reply}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the stuck session kept its slot"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // What the stuck client can still read is bounded, then the connection ends.
    let mut drained = 0usize;
    let mut buffer = vec![0; 64 << 10];
    let drain = async {
        loop {
            match stuck.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => drained += read,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .expect("the stuck session was closed");
    eprintln!(
        "item 3, a client with a 4 KiB receive buffer asking 50 x 512 KiB without reading: \
         a second client was served after {} ms; the stuck one could still read {drained} bytes",
        served_after.as_millis()
    );
    assert!(served_after < Duration::from_secs(6), "{served_after:?}");
    assert!(drained < 50 * (512 << 10), "{drained}");
}

/// Item 3: shutdown completes within 10 s even while a telnet client that
/// stops reading holds a session (its write timeout far away).
#[tokio::test]
async fn shutdown_completes_while_a_telnet_client_stops_reading() {
    let (server, mut proxy) = server_and_proxy(&["--telnet-write-timeout", "60s"]);
    client()
        .put(format!("{}/kv/big", server.url))
        .body(vec![b'x'; 512 << 10])
        .send()
        .await
        .unwrap();
    let _stuck = non_reader(proxy.telnet).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    // Fails the test if the proxy is still running 20 s after the signal.
    let status = proxy.program.stop_with("TERM");
    let took = asked.elapsed();
    eprintln!(
        "item 3, SIGTERM with a non-reading telnet client: the proxy stopped after {} ms ({status})",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
}
