//! kv-server hardening (issue 13): each test pins one fault a review found.

use kv_tests::{Proxy, Server, client};

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
