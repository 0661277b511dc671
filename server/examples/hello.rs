//! The trivial axum server the performance targets are measured against: one
//! route answering a fixed 100-byte body, served by `axum::serve` on a default
//! multi-threaded runtime. The HTTP ceiling of this machine, for
//! `tests/perf/compare.sh`: `cargo run --release -p kv-server --example hello -- 127.0.0.1:18412`.

use axum::Router;
use axum::routing::get;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18412".into());
    let body = "x".repeat(100);
    let app = Router::new().route("/kv/{*key}", get(move || std::future::ready(body.clone())));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("hello listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
