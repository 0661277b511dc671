//! kv-server hardening (issue 13): each test pins one fault a review found.

use std::time::{Duration, Instant};

use kv_tests::{Proxy, Server, bin, client};

use crate::server::{json, raw_http};

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
                let answer = raw_http(addr, &request).await;
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
