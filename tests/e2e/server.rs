//! kv-server over HTTP.

use kv_tests::{Server, client};

#[tokio::test]
async fn put_then_get_returns_the_value() {
    let server = Server::start();
    let http = client();
    let url = format!("{}/kv/name", server.url);
    let put = http.put(&url).body("Derek Moss").send().await.unwrap();
    assert_eq!(put.status(), 201);
    let get = http.get(&url).send().await.unwrap();
    assert_eq!(get.status(), 200);
    assert_eq!(get.text().await.unwrap(), "Derek Moss");
}
