//! Issue 13, the proxy's side: each test pins one fault a review found, and
//! prints the figure it measures (`--nocapture` shows it).

use kv_tests::{Server, client};
use reqwest::Client;

use crate::proxy::{get, header, put, server_and_proxy, x_cache};
use crate::telnet::Telnet;

/// A PUT of `value` straight to the server; returns the version it took.
async fn put_direct(http: &Client, server: &Server, key: &str, value: &str) -> u64 {
    let response = put(http, &format!("{}/kv/{key}", server.url), value).await;
    header(&response, "etag").unwrap().trim_matches('"').parse().unwrap()
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
