//! Access control: tokens on HTTP and telnet, and protected mode (no token,
//! no listening beyond loopback).

use std::process::Command;

use kv_tests::{Proxy, Server, bin, client};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const TOKEN: &str = "correct-horse-battery";

fn token_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

#[tokio::test]
async fn with_a_token_every_route_but_healthz_needs_it() {
    let (_dir, path) = token_file();
    let server = Server::start_with(&["--token-file", &path]);
    let proxy = Proxy::start(&server.url, &["--token-file", &path]);
    let http = client();
    for url in [&server.url, &proxy.url] {
        let denied = http.put(format!("{url}/kv/k")).body("v").send().await.unwrap();
        assert_eq!(denied.status(), 401);
        assert_eq!(denied.headers()["www-authenticate"], "Bearer");
        let body: serde_json::Value = serde_json::from_slice(&denied.bytes().await.unwrap()).unwrap();
        assert_eq!(body["error"], "unauthorized");
        let wrong = http
            .get(format!("{url}/kv"))
            .bearer_auth("wrong-token-x")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
        let health = http.get(format!("{url}/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
    }
    // Through the proxy, with the token: the proxy authenticates to the server with its own.
    let put = http
        .put(format!("{}/kv/k", proxy.url))
        .bearer_auth(TOKEN)
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    for _ in 0..2 {
        let get = http
            .get(format!("{}/kv/k", proxy.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(get.status(), 200);
    }
    // The value is now cached, and still not served without the token.
    let anonymous = http.get(format!("{}/kv/k", proxy.url)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().get("x-cache").is_none());
}

#[tokio::test]
async fn telnet_needs_auth_first_when_there_is_a_token() {
    let (_dir, path) = token_file();
    let server = Server::start_with(&["--token-file", &path]);
    let proxy = Proxy::start(&server.url, &["--token-file", &path]);
    let stream = TcpStream::connect(proxy.telnet).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let mut lines = BufReader::new(reader).lines();
    let mut ask = async |line: &str| {
        writer.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        lines.next_line().await.unwrap().unwrap()
    };
    assert!(ask("GET k").await.starts_with("ERR authentication required"));
    assert_eq!(ask("AUTH not-the-token").await, "ERR invalid token");
    assert_eq!(ask(&format!("AUTH {TOKEN}")).await, "OK");
    assert_eq!(ask("PUT k hello").await, "OK");
    assert_eq!(ask("GET k").await, "VALUE hello");
}

#[test]
fn listening_beyond_loopback_needs_a_token_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(bin("kv-server"))
        .args(["--listen", "0.0.0.0:0", "--data-dir", dir.path().to_str().unwrap()])
        .env_remove("KV_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("without an access token") && stderr.contains("--token-file"),
        "{stderr}"
    );
    let output = Command::new(bin("kv-proxy"))
        .args(["--listen", "127.0.0.1:0", "--telnet-listen", "0.0.0.0:0"])
        .env_remove("KV_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--telnet-listen"));
}

#[tokio::test]
async fn the_cli_sends_kv_token_and_exits_4_without_it() {
    let (_dir, path) = token_file();
    let server = Server::start_with(&["--token-file", &path]);
    let kv = |token: Option<&str>, args: &[&str]| {
        let mut command = Command::new(bin("kv"));
        command
            .args(["--url", &server.url])
            .args(args)
            .env_remove("KV_URL")
            .env_remove("KV_TOKEN");
        if let Some(token) = token {
            command.env("KV_TOKEN", token);
        }
        command.output().unwrap()
    };
    assert!(kv(Some(TOKEN), &["put", "k", "v"]).status.success());
    let got = kv(Some(TOKEN), &["get", "k"]);
    assert_eq!(got.stdout, b"v");
    let denied = kv(None, &["get", "k"]);
    assert_eq!(denied.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&denied.stderr).starts_with("kv: "));
}

/// Sends one raw HTTP/1.1 request head (which asks to close) and returns the
/// status and the JSON error code of the answer, if it has one.
pub(crate) async fn raw_exchange(addr: &str, request: &[u8]) -> (u16, Option<String>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the answer came and the connection was closed within 10 s")
        .expect("the connection was closed cleanly, not reset");
    let text = String::from_utf8_lossy(&response);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let code = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(body).ok())
        .and_then(|body| body["error"].as_str().map(str::to_owned));
    (status, code)
}

/// A GET of `target` with `Host`, `Connection: close` and then `headers`.
fn head(target: &str, headers: &[(String, String)]) -> Vec<u8> {
    let mut head = format!("GET {target} HTTP/1.1\r\nHost: kv\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

// The reliability issue's limits on a request head: the target and each
// header line at most 8 KiB, at most 100 header fields, the head at most
// 64 KiB. Each is answered with its own status (ours with the JSON error,
// hyper's without a body), never a 5xx or a hang, and the program goes on.
#[tokio::test]
async fn overlong_targets_and_header_lines_are_refused_with_414_and_431() {
    const KIB: usize = 1024;
    let server = Server::start();
    let proxy = Proxy::start(&server.url, &[]);
    let target = |len: usize| format!("/kv/{}", "a".repeat(len - "/kv/".len()));
    let line = |name: &str, len: usize| (name.to_owned(), "v".repeat(len - name.len() - ": ".len()));
    let fields = |n: usize| -> Vec<(String, String)> { (0..n).map(|i| (format!("x-h{i}"), "v".into())).collect() };
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        // Keys are at most 1024 bytes, so the 8 KiB target gets the key's 400.
        ("an 8 KiB target", head(&target(8 * KIB), &[]), 400, Some("bad_key")),
        (
            "an 8 KiB + 1 target",
            head(&target(8 * KIB + 1), &[]),
            414,
            Some("uri_too_long"),
        ),
        (
            "a 10 KiB target",
            head(&target(10 * KIB), &[]),
            414,
            Some("uri_too_long"),
        ),
        // The head passes 64 KiB before the line ends: hyper's 431.
        ("a 70 KiB target", head(&target(70 * KIB), &[]), 431, None),
        (
            "an 8 KiB header line",
            head("/healthz", &[line("x-big", 8 * KIB)]),
            200,
            None,
        ),
        (
            "an 8 KiB + 1 header line",
            head("/healthz", &[line("x-big", 8 * KIB + 1)]),
            431,
            Some("headers_too_large"),
        ),
        (
            "a 9 KiB header line",
            head("/healthz", &[line("x-big", 9 * KIB)]),
            431,
            Some("headers_too_large"),
        ),
        // With Host and Connection, 100 fields and then 101; hyper counts them as it parses.
        ("100 header fields", head("/healthz", &fields(98)), 200, None),
        ("101 header fields", head("/healthz", &fields(99)), 431, None),
        (
            "70 KiB of 7 KiB header lines",
            head(
                "/healthz",
                &(0..10).map(|i| line(&format!("x-h{i}"), 7 * KIB)).collect::<Vec<_>>(),
            ),
            431,
            None,
        ),
        (
            "a header line without a colon",
            b"GET /healthz HTTP/1.1\r\nHost: kv\r\nno-colon\r\n\r\n".to_vec(),
            400,
            None,
        ),
        // RFC 9112 section 2.2 lets a recipient accept a bare LF; hyper does.
        (
            "bare LF line ends",
            b"GET /healthz HTTP/1.1\nHost: kv\nConnection: close\n\n".to_vec(),
            200,
            None,
        ),
    ];
    let http = client();
    for (name, url) in [("kv-server", &server.url), ("kv-proxy", &proxy.url)] {
        let addr = url.trim_start_matches("http://");
        let mut statuses = Vec::new();
        for (what, request, status, code) in &cases {
            let answer = raw_exchange(addr, request).await;
            assert_eq!(answer, (*status, code.map(str::to_owned)), "{name}, {what}");
            statuses.push(answer.0);
            let health = http.get(format!("{url}/healthz")).send().await.unwrap();
            assert_eq!(health.status(), 200, "{name} stopped serving after {what}");
        }
        println!(
            "request head limits on {name}: {} heads answered {statuses:?}, served after each",
            cases.len()
        );
    }
}
