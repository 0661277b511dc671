//! kv-proxy over HTTP.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kv_tests::{Proxy, Server, client, error_code, header, metric, unused_addr};
use reqwest::{Client, Response};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A fresh server and a proxy in front of it, started with `args`.
pub(crate) fn server_and_proxy(args: &[&str]) -> (Server, Proxy) {
    let server = Server::start();
    let proxy = Proxy::start(&server.url, args);
    (server, proxy)
}

pub(crate) fn x_cache(response: &Response) -> String {
    header(response, "x-cache").unwrap_or_else(|| panic!("no X-Cache in {response:?}"))
}

pub(crate) async fn put(http: &Client, url: &str, value: &str) -> Response {
    let response = http.put(url).body(value.to_owned()).send().await.unwrap();
    assert!(response.status().is_success(), "PUT {url}: {response:?}");
    response
}

/// GETs `url` and returns (X-Cache, body); the answer must be 200.
pub(crate) async fn get(http: &Client, url: &str) -> (String, String) {
    let response = http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {url}");
    let cache = x_cache(&response);
    (cache, response.text().await.unwrap())
}

async fn metrics(http: &Client, base: &str) -> String {
    let response = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The proxy's `STATS`, asked over its telnet port.
async fn telnet_stats(proxy: &Proxy) -> HashMap<String, u64> {
    let stream = tokio::net::TcpStream::connect(proxy.telnet).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    writer.write_all(b"STATS\n").await.unwrap();
    let mut lines = BufReader::new(reader).lines();
    let mut stats = HashMap::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        if line == "END" {
            return stats;
        }
        let (name, value) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("not `name value`: {line}"));
        if let Ok(value) = value.parse::<u64>() {
            stats.insert(name.to_owned(), value);
        }
    }
    panic!("STATS did not end with END");
}

#[tokio::test]
async fn second_get_is_served_from_cache() {
    let (server, proxy) = server_and_proxy(&[]);
    let http = client();
    let stored = http
        .put(format!("{}/kv/name", server.url))
        .header("content-type", "text/plain")
        .body("Derek Moss")
        .send()
        .await
        .unwrap();
    let etag = header(&stored, "etag").unwrap();
    let url = format!("{}/kv/name", proxy.url);

    let first = http.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(x_cache(&first), "MISS");
    assert!(header(&first, "age").is_none(), "no Age on a miss");
    assert_eq!(header(&first, "etag").as_deref(), Some(etag.as_str()));
    assert_eq!(first.text().await.unwrap(), "Derek Moss");

    let second = http.get(&url).send().await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(x_cache(&second), "HIT");
    let age: u64 = header(&second, "age").expect("Age on a hit").parse().unwrap();
    assert!(age < 60);
    assert_eq!(header(&second, "etag").as_deref(), Some(etag.as_str()));
    assert_eq!(header(&second, "content-type").as_deref(), Some("text/plain"));
    assert_eq!(second.text().await.unwrap(), "Derek Moss");

    let text = metrics(&http, &proxy.url).await;
    assert_eq!(metric(&text, "kv_proxy_cache_hits_total"), 1.0, "{text}");
    assert_eq!(metric(&text, "kv_proxy_cache_misses_total"), 1.0, "{text}");
    assert_eq!(metric(&text, "kv_proxy_upstream_requests_total"), 1.0, "{text}");
    assert_eq!(metric(&text, "kv_proxy_keys"), 1.0, "one entry cached: {text}");
}

#[tokio::test]
async fn a_put_through_the_proxy_is_read_back_at_once() {
    let (server, proxy) = server_and_proxy(&[]);
    let http = client();
    put(&http, &format!("{}/kv/name", server.url), "old").await;
    let url = format!("{}/kv/name", proxy.url);
    assert_eq!(get(&http, &url).await, ("MISS".into(), "old".into()));
    assert_eq!(get(&http, &url).await.0, "HIT", "now cached");

    let written = put(&http, &url, "new").await;
    assert_eq!(written.status(), 200);
    let etag = header(&written, "etag").unwrap();
    assert!(header(&written, "x-kv-revision").is_some());

    let read = http.get(&url).send().await.unwrap();
    assert_eq!(header(&read, "etag"), Some(etag));
    assert_eq!(read.text().await.unwrap(), "new");
    let direct = http.get(format!("{}/kv/name", server.url)).send().await.unwrap();
    assert_eq!(direct.text().await.unwrap(), "new", "the server has it too");
}

#[tokio::test]
async fn a_delete_through_the_proxy_is_seen_at_once() {
    let (server, proxy) = server_and_proxy(&[]);
    let http = client();
    put(&http, &format!("{}/kv/name", server.url), "Derek Moss").await;
    let url = format!("{}/kv/name", proxy.url);
    get(&http, &url).await;
    assert_eq!(get(&http, &url).await.0, "HIT");

    let deleted = http.delete(&url).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert!(header(&deleted, "x-kv-revision").is_some());
    assert_eq!(error_code(http.get(&url).send().await.unwrap(), 404).await, "not_found");
    assert_eq!(
        error_code(http.delete(&url).send().await.unwrap(), 404).await,
        "not_found"
    );
}

#[tokio::test]
async fn a_write_made_directly_on_the_server_shows_only_after_the_ttl() {
    // Without the change feed (`--coherence off`): the TTL alone (tests/e2e/feed.rs has the feed).
    let (server, proxy) = server_and_proxy(&["--cache-ttl", "1s", "--coherence", "off"]);
    let http = client();
    // The check inside the TTL must run within a second of the fill; on a
    // machine too busy for that, try again with a fresh key.
    for attempt in 0..3 {
        let direct = format!("{}/kv/name{attempt}", server.url);
        let url = format!("{}/kv/name{attempt}", proxy.url);
        put(&http, &direct, "old").await;
        assert_eq!(get(&http, &url).await, ("MISS".into(), "old".into()));
        let cached_at = Instant::now();

        put(&http, &direct, "new").await;
        let (cache, body) = get(&http, &url).await;
        if cached_at.elapsed() >= Duration::from_millis(900) {
            continue;
        }
        assert_eq!(
            (cache.as_str(), body.as_str()),
            ("HIT", "old"),
            "fresh for the TTL, so the old value"
        );

        tokio::time::sleep(Duration::from_millis(1200).saturating_sub(cached_at.elapsed())).await;
        assert_eq!(
            get(&http, &url).await,
            ("MISS".into(), "new".into()),
            "expired, so fetched again"
        );
        return;
    }
    panic!("three attempts could not read back within the TTL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_of_one_key_make_one_upstream_request() {
    let (server, proxy) = server_and_proxy(&[]);
    let http = client();
    put(&http, &format!("{}/kv/hot", server.url), "popular").await;
    let before = metric(&metrics(&http, &proxy.url).await, "kv_proxy_upstream_requests_total");

    let url = format!("{}/kv/hot", proxy.url);
    let bodies: Vec<String> = futures_util::stream::iter(0..50)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            async move { get(&http, &url).await.1 }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    assert!(bodies.iter().all(|b| b == "popular"), "{bodies:?}");

    let after = metric(&metrics(&http, &proxy.url).await, "kv_proxy_upstream_requests_total");
    assert_eq!(after - before, 1.0, "50 concurrent misses, one upstream request");
    let served = metric(
        &metrics(&http, &server.url).await,
        r#"kv_server_http_requests_total{method="GET",route="/kv/{*key}",status="200"}"#,
    );
    assert_eq!(served, 1.0, "the server saw one GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cache_is_bounded_by_bytes() {
    const LIMIT: u64 = 64 * 1024;
    let (server, proxy) = server_and_proxy(&["--cache-max-bytes", "64KiB"]);
    let http = client();
    let value = "v".repeat(4096);
    for i in 0..48 {
        put(&http, &format!("{}/kv/big/{i:02}", server.url), &value).await;
    }
    for round in 0..2 {
        for i in 0..48 {
            let (_, body) = get(&http, &format!("{}/kv/big/{i:02}", proxy.url)).await;
            assert_eq!(body.len(), 4096, "round {round}, key {i}");
        }
    }

    let stats = telnet_stats(&proxy).await;
    assert_eq!(stats["cache_max_bytes"], LIMIT);
    assert!(stats["cache_bytes"] <= LIMIT, "{stats:?}");
    assert!(
        stats["cache_entries"] < 48 && stats["cache_entries"] * 4096 <= LIMIT,
        "{stats:?}"
    );
    assert!(stats["cache_evictions"] > 0, "{stats:?}");
    let text = metrics(&http, &proxy.url).await;
    assert!(metric(&text, "kv_proxy_cache_evictions_total") > 0.0, "{text}");
    assert!(metric(&text, "kv_proxy_cache_bytes") <= LIMIT as f64, "{text}");
    assert!(metric(&text, "kv_proxy_cache_bytes") > 0.0, "{text}");
}

#[tokio::test]
async fn an_unreachable_upstream_gives_a_quick_502() {
    let proxy = Proxy::start(&format!("http://{}", unused_addr()), &[]);
    let http = client();
    let url = format!("{}/kv/name", proxy.url);

    let started = Instant::now();
    let response = http.get(&url).send().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(error_code(response, 502).await, "upstream_unavailable");

    // Writes fail clearly rather than seeming to succeed.
    let response = http.put(&url).body("v").send().await.unwrap();
    assert_eq!(error_code(response, 502).await, "upstream_unavailable");
    let response = http.delete(&url).send().await.unwrap();
    assert_eq!(error_code(response, 502).await, "upstream_unavailable");
    let response = http.get(format!("{}/kv", proxy.url)).send().await.unwrap();
    assert_eq!(error_code(response, 502).await, "upstream_unavailable");

    let health = http.get(format!("{}/healthz", proxy.url)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let health: Value = serde_json::from_slice(&health.bytes().await.unwrap()).unwrap();
    assert_eq!(health["upstream"], "unavailable");
    let text = metrics(&http, &proxy.url).await;
    assert!(metric(&text, "kv_proxy_upstream_errors_total") >= 3.0, "{text}");
}

#[tokio::test]
async fn the_proxy_recovers_when_the_upstream_comes_back() {
    let mut server = Server::start();
    let proxy = Proxy::start(&server.url, &[]);
    let http = client();
    put(&http, &format!("{}/kv/name", proxy.url), "Derek Moss").await;

    server.program.kill9();
    let response = http.get(format!("{}/kv/name", proxy.url)).send().await.unwrap();
    assert_eq!(error_code(response, 502).await, "upstream_unavailable");

    let _back = Server::start_on(&server.data_dir, server.addr, &[]);
    assert_eq!(
        get(&http, &format!("{}/kv/name", proxy.url)).await,
        ("MISS".into(), "Derek Moss".into())
    );
    let written = http
        .put(format!("{}/kv/other", proxy.url))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 201, "writes work again too");
}

#[tokio::test]
async fn stale_if_error_serves_an_expired_entry_while_the_upstream_is_down() {
    let (mut server, proxy) = server_and_proxy(&["--cache-ttl", "1s", "--stale-if-error", "30s"]);
    let http = client();
    put(&http, &format!("{}/kv/name", server.url), "Derek Moss").await;
    let url = format!("{}/kv/name", proxy.url);
    assert_eq!(get(&http, &url).await.0, "MISS");

    server.program.kill9();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(x_cache(&response), "STALE");
    let age: u64 = header(&response, "age")
        .expect("Age on a stale answer")
        .parse()
        .unwrap();
    assert!(age >= 1, "age {age}");
    assert_eq!(response.text().await.unwrap(), "Derek Moss");

    let never_cached = http.get(format!("{}/kv/other", proxy.url)).send().await.unwrap();
    assert_eq!(error_code(never_cached, 502).await, "upstream_unavailable");
    assert_eq!(
        metric(&metrics(&http, &proxy.url).await, "kv_proxy_cache_stale_total"),
        1.0
    );
}

#[tokio::test]
async fn without_stale_if_error_an_expired_entry_is_not_served() {
    let (mut server, proxy) = server_and_proxy(&["--cache-ttl", "1s"]);
    let http = client();
    put(&http, &format!("{}/kv/name", server.url), "Derek Moss").await;
    let url = format!("{}/kv/name", proxy.url);
    assert_eq!(get(&http, &url).await.0, "MISS");

    server.program.kill9();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        error_code(http.get(&url).send().await.unwrap(), 502).await,
        "upstream_unavailable"
    );
}

#[tokio::test]
async fn a_404_is_not_cached() {
    let (server, proxy) = server_and_proxy(&[]);
    let http = client();
    let url = format!("{}/kv/late", proxy.url);
    let missing = http.get(&url).send().await.unwrap();
    assert_eq!(x_cache(&missing), "MISS");
    assert_eq!(error_code(missing, 404).await, "not_found");

    put(&http, &format!("{}/kv/late", server.url), "here now").await;
    assert_eq!(get(&http, &url).await, ("MISS".into(), "here now".into()));
}

#[tokio::test]
async fn conditional_requests_and_headers_pass_through() {
    let (_server, proxy) = server_and_proxy(&[]);
    let http = client();
    let url = format!("{}/kv/doc", proxy.url);

    let created = http
        .put(&url)
        .header("content-type", "text/markdown")
        .body("# hi")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let etag = header(&created, "etag").unwrap();
    let revision = header(&created, "x-kv-revision").unwrap();
    assert_eq!(etag, format!("\"{revision}\""));
    assert_eq!(header(&created, "location").as_deref(), Some("/kv/doc"));
    let body: Value = serde_json::from_slice(&created.bytes().await.unwrap()).unwrap();
    assert_eq!(body["key"], "doc");

    // On a miss and then on a hit: the type and tag as stored, 304 for a matching tag.
    for expected in ["MISS", "HIT"] {
        let read = http.get(&url).send().await.unwrap();
        assert_eq!(x_cache(&read), expected);
        assert_eq!(header(&read, "content-type").as_deref(), Some("text/markdown"));
        assert_eq!(header(&read, "etag").as_deref(), Some(etag.as_str()));
        let not_modified = http.get(&url).header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(not_modified.status(), 304);
        assert_eq!(header(&not_modified, "etag").as_deref(), Some(etag.as_str()));
    }
    let head = http.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "etag").as_deref(), Some(etag.as_str()));

    let wrong = http
        .put(&url)
        .header("if-match", "\"999999\"")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(wrong, 412).await, "precondition_failed");
    let exists = http
        .put(&url)
        .header("if-none-match", "*")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(exists, 412).await, "precondition_failed");
    let wrong = http.delete(&url).header("if-match", "\"999999\"").send().await.unwrap();
    assert_eq!(error_code(wrong, 412).await, "precondition_failed");
    assert_eq!(get(&http, &url).await.1, "# hi", "refused writes changed nothing");

    let replaced = http
        .put(&url)
        .header("if-match", &etag)
        .body("# bye")
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.status(), 200);
    assert_eq!(get(&http, &url).await.1, "# bye");

    let too_large = http.put(&url).body(vec![b'x'; (1 << 20) + 1]).send().await.unwrap();
    assert_eq!(error_code(too_large, 413).await, "value_too_large");
    let bad_key = http.get(format!("{}/kv/%FF", proxy.url)).send().await.unwrap();
    assert_eq!(error_code(bad_key, 400).await, "bad_key");
    let no_route = http.get(format!("{}/nothing", proxy.url)).send().await.unwrap();
    assert_eq!(error_code(no_route, 404).await, "no_route");
    let post = http.post(&url).body("x").send().await.unwrap();
    assert_eq!(error_code(post, 405).await, "method_not_allowed");
}

#[tokio::test]
async fn dump_through_the_proxy_equals_the_servers() {
    let (server, proxy) = server_and_proxy(&[]);
    let http = client();
    for i in 0..30 {
        put(&http, &format!("{}/kv/item/{i:02}", server.url), &format!("value {i}")).await;
    }
    http.put(format!("{}/kv/binary", server.url))
        .body(vec![0xff, 0, 1])
        .send()
        .await
        .unwrap();
    http.put(format!("{}/kv/multi", server.url))
        .body("two\nlines")
        .send()
        .await
        .unwrap();

    for (query, accept) in [
        ("", "application/json"),
        ("?prefix=item%2F&limit=7", "application/json"),
        ("?prefix=item%2F&limit=7&after=item%2F06", "application/json"),
        ("?keys_only=true", "application/json"),
        ("", "application/x-ndjson"),
        ("", "text/plain"),
        ("?limit=5", "text/html"),
        ("?limit=0", "application/json"),
        ("", "image/png"),
    ] {
        let direct = http
            .get(format!("{}/kv{query}", server.url))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        let proxied = http
            .get(format!("{}/kv{query}", proxy.url))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(proxied.status(), direct.status(), "{query} {accept}");
        for name in ["content-type", "content-security-policy"] {
            assert_eq!(
                header(&proxied, name),
                header(&direct, name),
                "{name} of {query} {accept}"
            );
        }
        assert!(header(&proxied, "x-cache").is_none(), "DUMP is never cached");
        let (direct, proxied) = (direct.bytes().await.unwrap(), proxied.bytes().await.unwrap());
        assert!(!direct.is_empty());
        assert_eq!(proxied, direct, "{query} {accept}");
    }
}

#[tokio::test]
async fn proxy_serves_healthz_metrics_and_openapi() {
    let (_server, proxy) = server_and_proxy(&[]);
    let http = client();
    let health = http.get(format!("{}/healthz", proxy.url)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let health: Value = serde_json::from_slice(&health.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (health["status"].as_str(), health["upstream"].as_str()),
        (Some("ok"), Some("ok"))
    );

    let text = metrics(&http, &proxy.url).await;
    for name in [
        "kv_proxy_cache_hits_total",
        "kv_proxy_cache_misses_total",
        "kv_proxy_cache_stale_total",
        "kv_proxy_cache_evictions_total",
        "kv_proxy_cache_bytes",
        "kv_proxy_keys",
        "kv_proxy_upstream_requests_total",
        "kv_proxy_upstream_errors_total",
        "kv_proxy_http_requests_total",
        "kv_proxy_http_request_duration_seconds",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from:\n{text}"
        );
    }

    let openapi = http.get(format!("{}/openapi.yaml", proxy.url)).send().await.unwrap();
    assert_eq!(openapi.status(), 200);
    assert!(openapi.text().await.unwrap().starts_with("openapi: 3"));
}

/// A TCP listener that accepts connections and never answers: an upstream that hangs.
async fn silent_upstream() -> (tokio::task::JoinHandle<()>, std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (task, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_upstream_gives_504_within_the_upstream_timeout() {
    let (_upstream, addr) = silent_upstream().await;
    let proxy = Proxy::start(&format!("http://{addr}"), &["--upstream-timeout", "500ms"]);
    let http = client();
    let url = format!("{}/kv/name", proxy.url);

    // Six concurrent misses of one key share one upstream timeout; in turn, the last would wait six.
    let started = Instant::now();
    let answers: Vec<(u16, Duration)> = futures_util::stream::iter(0..6)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let response = http.get(&url).send().await.unwrap();
                let status = response.status().as_u16();
                assert_eq!(error_code(response, status).await, "upstream_unavailable");
                (status, started.elapsed())
            }
        })
        .buffer_unordered(6)
        .collect()
        .await;
    for (status, took) in answers {
        assert_eq!(status, 504);
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(2),
            "took {took:?}"
        );
    }
}
