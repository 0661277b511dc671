//! Fills a data directory with many keys quickly, for scale benchmarks:
//! `cargo run --release -p kv-server --example populate -- DATA_DIR KEYS [VALUE_BYTES]`.
//!
//! It writes through the same `Store` a running kv-server uses (group commit,
//! fsync per group), only without HTTP in the way, and uses the key names
//! `kv bench` reads: `key:000000000042`.

use std::time::Instant;

use bytes::Bytes;
use kv_api::condition::Precondition;
use kv_server::store::engine::RedbOptions;
use kv_server::store::{RedbStore, Store, WriteOp};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: populate DATA_DIR KEYS [VALUE_BYTES]";
    let dir = args.next().ok_or(usage)?;
    let keys: u64 = args.next().ok_or(usage)?.parse()?;
    let value_bytes: usize = args.next().map_or(Ok(100), |v| v.parse())?;
    let store = RedbStore::open(std::path::Path::new(&dir), &RedbOptions::default())?;
    let value = Bytes::from(vec![b'v'; value_bytes]);
    let started = Instant::now();
    let batch = 4096u64;
    let mut next = 0u64;
    while next < keys {
        let end = (next + batch * 4).min(keys);
        let writes = (next..end).map(|n| {
            store.write(WriteOp::Put {
                key: format!("key:{n:012}"),
                value: value.clone(),
                content_type: "application/octet-stream".into(),
                precondition: Precondition::default(),
                expiry: kv_api::expiry::Expiry::Clear,
            })
        });
        for result in futures_util::future::join_all(writes).await {
            result?;
        }
        next = end;
        if next % 1_000_000 < batch * 4 {
            eprintln!(
                "{next} keys, {:.0} keys/s",
                next as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    store.close().await;
    let seconds = started.elapsed().as_secs_f64();
    let size = std::fs::metadata(store.path())?.len();
    println!(
        "{keys} keys in {seconds:.1} s ({:.0} keys/s); file {} bytes, {:.1} bytes per key",
        keys as f64 / seconds,
        size,
        size as f64 / keys as f64
    );
    Ok(())
}
