//! The batch write, `POST /kv` with an NDJSON body: through the server and
//! through the proxy, its limits, malformed lines, deletes, and durability
//! across a kill -9.

use std::fmt::Write as _;

use kv_tests::{Proxy, Server, client, error_code, header};
use reqwest::{Client, Response};
use serde_json::Value;

const NDJSON: &str = "application/x-ndjson";

async fn post(http: &Client, base: &str, body: impl Into<reqwest::Body>) -> Response {
    http.post(format!("{base}/kv"))
        .header("content-type", NDJSON)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// POSTs a batch that must succeed; returns its summary, checked against `X-Kv-Revision`.
async fn batch_ok(http: &Client, base: &str, body: impl Into<reqwest::Body>) -> Value {
    let response = post(http, base, body).await;
    assert_eq!(response.status(), 200, "{response:?}");
    let revision: u64 = header(&response, "x-kv-revision").unwrap().parse().unwrap();
    let summary: Value = json(response).await;
    assert_eq!(summary["revision"].as_u64(), Some(revision), "{summary}");
    summary
}

async fn json(response: Response) -> Value {
    let body = response.bytes().await.unwrap();
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)))
}

/// The body and status of a GET (404 gives `None`).
async fn read(http: &Client, url: &str) -> Option<(String, Response)> {
    let response = http.get(url).send().await.unwrap();
    match response.status().as_u16() {
        404 => None,
        200 => {
            let text = response.text().await.unwrap();
            let again = http.get(url).send().await.unwrap();
            Some((text, again))
        }
        other => panic!("GET {url}: {other}"),
    }
}

async fn text(http: &Client, url: &str) -> Option<String> {
    read(http, url).await.map(|(text, _)| text)
}

/// How many keys the server holds under `prefix`.
async fn count(http: &Client, base: &str, prefix: &str) -> usize {
    let response = http
        .get(format!("{base}/kv?prefix={prefix}"))
        .header("accept", NDJSON)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap().lines().count()
}

/// A raw head declaring a body one byte over the 16 MiB bound, with no body:
/// refused with 413 before anything is read (a client library writing 16 MiB
/// may meet the close first).
async fn declared_over_the_bound_is_413(addr: impl tokio::net::ToSocketAddrs) {
    let head = format!(
        "POST /kv HTTP/1.1\r\nHost: kv\r\nContent-Type: {NDJSON}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        (16u64 << 20) + 1
    );
    let answer = kv_tests::raw_http(addr, head.as_bytes()).await;
    assert_eq!(answer.status, 413, "{}", answer.text);
    assert_eq!(
        answer.error_code().as_deref(),
        Some("value_too_large"),
        "{}",
        answer.text
    );
}

fn puts(prefix: &str, range: std::ops::Range<usize>, value: &str) -> String {
    let mut body = String::new();
    for i in range {
        writeln!(body, r#"{{"key":"{prefix}{i:05}","value":"{value} {i}"}}"#).unwrap();
    }
    body
}

#[tokio::test]
async fn a_batch_writes_puts_and_deletes_and_says_what_it_did() {
    let server = Server::start();
    let http = client();
    let base = &server.url;
    for key in ["gone/1", "gone/2"] {
        let put = http.put(format!("{base}/kv/{key}")).body("old").send().await.unwrap();
        assert_eq!(put.status(), 201);
    }
    let mut body = puts("b/", 0..1000, "value");
    body.push_str("\n   \n"); // blank lines are skipped
    body.push_str(r#"{"key":"typed","value":"{\"a\":1}","content_type":"application/json"}"#);
    body.push('\n');
    body.push_str(r#"{"key":"bytes","value_base64":"/wA=","version":99}"#);
    body.push('\n');
    body.push_str(r#"{"key":"soon","value":"s","expires_at":"2099-01-01T00:00:00.000Z"}"#);
    body.push('\n');
    body.push_str(r#"{"key":"past","value":"p","expires_at":"2001-01-01T00:00:00.000Z"}"#);
    body.push('\n');
    body.push_str(r#"{"key":"gone/1","delete":true}"#);
    body.push('\n');
    body.push_str(r#"{"key":"gone/2","delete":true}"#);
    body.push('\n');
    body.push_str(r#"{"key":"never","delete":true}"#);
    // The same key twice: the later line wins; a put then a delete leaves nothing.
    body.push_str("\n{\"key\":\"twice\",\"value\":\"first\"}\n{\"key\":\"twice\",\"value\":\"second\"}\n");
    body.push_str("{\"key\":\"brief\",\"value\":\"x\"}\n{\"key\":\"brief\",\"delete\":true}"); // no final newline
    let before: Value = json(http.get(format!("{base}/healthz")).send().await.unwrap()).await;
    let summary = batch_ok(&http, base, body).await;
    eprintln!("{summary}");
    assert_eq!(summary["stored"], 1000 + 3 + 2 + 1, "{summary}");
    assert_eq!(summary["deleted"], 3, "{summary}");
    assert_eq!(summary["absent"], 1, "{summary}");
    assert_eq!(summary["expired"], 1, "{summary}");
    // Every line that wrote took a revision of its own.
    let start = before["revision"].as_u64().unwrap();
    assert_eq!(summary["revision"].as_u64().unwrap(), start + 1006 + 3, "{summary}");

    assert_eq!(count(&http, base, "b/").await, 1000);
    assert_eq!(
        text(&http, &format!("{base}/kv/b/00999")).await.as_deref(),
        Some("value 999")
    );
    let typed = http.get(format!("{base}/kv/typed")).send().await.unwrap();
    assert_eq!(header(&typed, "content-type").as_deref(), Some("application/json"));
    let bytes = http.get(format!("{base}/kv/bytes")).send().await.unwrap();
    assert_eq!(
        header(&bytes, "content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(&bytes.bytes().await.unwrap()[..], &[0xff, 0]);
    let soon = http.get(format!("{base}/kv/soon")).send().await.unwrap();
    assert!(header(&soon, "x-kv-expires-in").is_some(), "{soon:?}");
    assert_eq!(text(&http, &format!("{base}/kv/past")).await, None);
    assert_eq!(text(&http, &format!("{base}/kv/gone/1")).await, None);
    assert_eq!(text(&http, &format!("{base}/kv/gone/2")).await, None);
    assert_eq!(
        text(&http, &format!("{base}/kv/twice")).await.as_deref(),
        Some("second")
    );
    assert_eq!(text(&http, &format!("{base}/kv/brief")).await, None);
}

#[tokio::test]
async fn a_refused_line_refuses_the_whole_batch_and_names_it() {
    let server = Server::start_with(&["--max-value-bytes", "1KiB"]);
    let http = client();
    let base = &server.url;
    let good = puts("r/", 0..2, "v");
    let cases: Vec<(String, u16, &str, u64)> = vec![
        (
            format!("{good}{{\"key\":\"r/x\",\"value\": oops}}\n"),
            400,
            "bad_request",
            3,
        ),
        (format!("{good}\n{{\"key\":\"r/x\"}}\n"), 400, "bad_request", 4),
        (format!("{good}{{\"key\":\"\",\"value\":\"v\"}}\n"), 400, "bad_key", 3),
        (
            format!("{good}{{\"key\":\"r/x\",\"value_base64\":\"not base64!\"}}\n"),
            400,
            "bad_request",
            3,
        ),
        (
            format!("{good}{{\"key\":\"r/x\",\"delete\":true,\"value\":\"v\"}}\n"),
            400,
            "bad_request",
            3,
        ),
        (
            format!("{good}{{\"key\":\"r/x\",\"value\":\"v\",\"expires_at\":\"soon\"}}\n"),
            400,
            "bad_request",
            3,
        ),
        (
            format!("{good}{{\"key\":\"r/x\",\"value\":\"v\",\"content_type\":\"a\\u0001\"}}\n"),
            415,
            "bad_content_type",
            3,
        ),
        (
            format!("{good}{{\"key\":\"r/x\",\"value\":\"{}\"}}\n", "x".repeat(1025)),
            413,
            "value_too_large",
            3,
        ),
        (
            format!("{good}[1,2]\n{}", puts("r/after", 0..3, "v")),
            400,
            "bad_request",
            3,
        ),
    ];
    for (body, status, code, line) in cases {
        let response = post(&http, base, body.clone()).await;
        assert_eq!(response.status(), status, "{body}");
        assert_eq!(header(&response, "content-type").as_deref(), Some("application/json"));
        let json: Value = json(response).await;
        eprintln!("{status} {json}");
        assert_eq!(json["error"], code, "{json}");
        assert_eq!(json["line"].as_u64(), Some(line), "{json}");
        assert!(json.get("done").is_none(), "{json}");
        let message = json["message"].as_str().unwrap();
        assert!(message.contains(&format!("line {line}")), "{message}");
        assert!(message.contains("nothing of the batch was written"), "{message}");
        // Nothing of it, not even the good lines before the bad one.
        assert_eq!(count(&http, base, "r/").await, 0, "{body}");
    }

    // The body itself: not NDJSON, too large, too many lines.
    let wrong_type = http
        .post(format!("{base}/kv"))
        .header("content-type", "application/json")
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(wrong_type, 415).await, "bad_content_type");
    // Over the bound by its declared length: refused before the body is read.
    declared_over_the_bound_is_413(server.addr).await;
    let many = "{\"key\":\"r/n\",\"value\":\"\"}\n".repeat(100_001);
    let response = post(&http, base, many).await;
    assert_eq!(response.status(), 413);
    let json: Value = json(response).await;
    assert_eq!(json["line"].as_u64(), Some(100_001), "{json}");
    assert_eq!(count(&http, base, "r/").await, 0);

    // And a good batch after all that is written whole.
    let summary = batch_ok(&http, base, good).await;
    assert_eq!(summary["stored"], 2);
    assert_eq!(count(&http, base, "r/").await, 2);
}

#[tokio::test]
async fn a_batch_answered_200_survives_a_kill_9_at_once() {
    let mut server = Server::start();
    let http = client();
    // Several batches at once, so that their lines share group commits; the
    // server is killed the moment the last answer arrives.
    let batches: Vec<String> = (0..4)
        .map(|b| puts(&format!("crash/{b}/"), 0..5000, "durable"))
        .collect();
    let answers = futures_util::future::join_all(batches.into_iter().map(|body| {
        let (http, base) = (http.clone(), server.url.clone());
        async move { batch_ok(&http, &base, body).await }
    }))
    .await;
    server.program.kill9();
    let last = answers.iter().map(|s| s["revision"].as_u64().unwrap()).max().unwrap();
    for summary in &answers {
        assert_eq!(summary["stored"], 5000, "{summary}");
    }
    server.crash_and_restart();
    let base = &server.url;
    assert_eq!(count(&http, base, "crash/").await, 20_000);
    for b in 0..4 {
        for i in [0, 2500, 4999] {
            let url = format!("{base}/kv/crash/{b}/{i:05}");
            assert_eq!(text(&http, &url).await, Some(format!("durable {i}")), "{url}");
        }
    }
    let health: Value = json(http.get(format!("{base}/healthz")).send().await.unwrap()).await;
    assert!(health["revision"].as_u64().unwrap() >= last, "{health}");
}

/// A key cached in the proxy, then overwritten (or deleted) by a batch through
/// it, reads back new at once: with the change feed (`on`) and without it
/// (`off`, a long TTL: only the batch's own invalidation can do it).
#[tokio::test]
async fn a_batch_through_the_proxy_keeps_read_your_writes() {
    for coherence in ["on", "off"] {
        let server = Server::start();
        let proxy = Proxy::start(&server.url, &["--cache-ttl", "60s", "--coherence", coherence]);
        let http = client();
        let (origin, front) = (&server.url, &proxy.url);
        for key in ["ryw/a", "ryw/b", "ryw/c"] {
            let put = http.put(format!("{origin}/kv/{key}")).body("old").send().await.unwrap();
            assert!(put.status().is_success());
        }
        // Cached: the second read is a hit (with the feed, once it is healthy).
        for key in ["ryw/a", "ryw/b", "ryw/c"] {
            let url = format!("{front}/kv/{key}");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let (value, again) = read(&http, &url).await.unwrap();
                assert_eq!(value, "old");
                if header(&again, "x-cache").as_deref() == Some("HIT") {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "{key} is never cached");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        for round in 0..20 {
            // A streamed (chunked) body, cut mid-line, so the proxy must join lines across chunks.
            let body = format!(
                "{{\"key\":\"ryw/a\",\"value\":\"new {round}\"}}\n{{\"key\":\"ryw/b\",\"delete\":true}}\n\
                 {{\"key\":\"ryw/c\",\"value\":\"c {round}\"}}\n{{\"key\":\"ryw/b\",\"value\":\"b {round}\"}}\n"
            );
            let (head, tail) = body.split_at(body.len() / 2 + 3);
            let chunks: Vec<Result<String, std::io::Error>> = vec![Ok(head.to_owned()), Ok(tail.to_owned())];
            let summary = batch_ok(
                &http,
                front,
                reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
            )
            .await;
            assert_eq!(summary["stored"], 3, "{summary}");
            assert_eq!(summary["deleted"], 1, "{summary}");
            assert_eq!(
                text(&http, &format!("{front}/kv/ryw/a")).await,
                Some(format!("new {round}"))
            );
            assert_eq!(
                text(&http, &format!("{front}/kv/ryw/b")).await,
                Some(format!("b {round}"))
            );
            assert_eq!(
                text(&http, &format!("{front}/kv/ryw/c")).await,
                Some(format!("c {round}"))
            );
            // Deleted by a batch: gone through the proxy at once.
            let summary = batch_ok(&http, front, "{\"key\":\"ryw/c\",\"delete\":true}\n").await;
            assert_eq!(summary["deleted"], 1, "{summary}");
            assert_eq!(text(&http, &format!("{front}/kv/ryw/c")).await, None, "{coherence}");
            // Cache them again for the next round.
            for key in ["ryw/a", "ryw/b"] {
                read(&http, &format!("{front}/kv/{key}")).await.unwrap();
            }
        }
        eprintln!("coherence {coherence}: read-your-writes held over 20 rounds");
    }
}

#[tokio::test]
async fn a_refused_batch_through_the_proxy_writes_nothing_and_keeps_its_limits() {
    let server = Server::start();
    let proxy = Proxy::start(&server.url, &["--cache-ttl", "60s"]);
    let http = client();
    let front = &proxy.url;
    let body = format!("{}not json\n", puts("pr/", 0..10, "v"));
    let response = post(&http, front, body).await;
    assert_eq!(response.status(), 400);
    let json: Value = json(response).await;
    assert_eq!(json["line"].as_u64(), Some(11), "{json}");
    assert_eq!(count(&http, &server.url, "pr/").await, 0);

    // A declared length over the bound is refused before a byte of the body is read
    // (a raw head with no body: a client library writing 16 MiB may meet the close first).
    declared_over_the_bound_is_413(front.trim_start_matches("http://")).await;
    // A streamed one is cut where it goes over.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..17).map(|_| Ok(vec![b'\n'; 1 << 20])).collect();
    let response = post(
        &http,
        front,
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
    )
    .await;
    assert_eq!(error_code(response, 413).await, "value_too_large");

    // The proxy relays a good batch's summary as the server said it.
    let summary = batch_ok(&http, front, puts("pr/", 0..10, "v")).await;
    assert_eq!(summary["stored"], 10, "{summary}");
    assert_eq!(count(&http, &server.url, "pr/").await, 10);
}
