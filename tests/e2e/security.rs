//! Access control: tokens on HTTP and telnet, and protected mode (no token,
//! no listening beyond loopback).

use std::process::Command;

use kv_tests::{Proxy, Server, bin, client};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
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
