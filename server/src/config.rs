//! The command line and environment of `kv-server`.

use std::net::SocketAddr;
use std::path::PathBuf;

use kv_edge::auth::AuthArgs;
use kv_edge::limits::HttpLimits;
use kv_edge::tls::TlsArgs;
use kv_edge::units::parse_size;

/// kv-server: a durable key-value store over HTTP.
///
/// Every acknowledged write is on disk (fsynced) before its response is sent.
/// Point a browser at http://<listen>/kv for a listing; the API is described
/// at http://<listen>/openapi.yaml.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "kv-server", version, max_term_width = 100)]
pub struct Config {
    /// Address and port to serve HTTP on. Loopback by default; any other
    /// address needs --token-file (or KV_TOKEN), or --insecure.
    #[arg(long, env = "KV_SERVER_LISTEN", default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,

    /// Directory holding the database (kv.redb) and its write-ahead log (kv.wal); created if missing.
    /// Only one kv-server may use a directory at a time.
    #[arg(long, env = "KV_DATA_DIR", default_value = "./kv-data")]
    pub data_dir: PathBuf,

    /// The largest value a PUT may store, like 64KiB or 1MiB; at most 1023MiB,
    /// what one record of the write-ahead log holds.
    #[arg(long, env = "KV_MAX_VALUE_BYTES", default_value = "1MiB", value_parser = parse_size)]
    pub max_value_bytes: u64,

    /// Memory for the storage engine's page cache, like 2GiB. By default a
    /// quarter of the machine's memory (at least 256MiB); the cache fills only
    /// as data is read, so a small store uses little of it.
    #[arg(long, env = "KV_STORE_CACHE", value_parser = parse_size)]
    pub store_cache: Option<u64>,

    #[command(flatten)]
    pub http: HttpLimits,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub tls: TlsArgs,
}

impl Config {
    /// The page cache to give the engine: `--store-cache`, or a quarter of
    /// the machine's memory. Reads that miss it go through the OS page cache
    /// and cost a copy and a lookup more: with 10 million keys, a 256 MiB
    /// cache served 0.69x the GETs of a cache the file fit in.
    pub fn store_cache_bytes(&self) -> u64 {
        const FLOOR: u64 = 256 << 20;
        self.store_cache
            .unwrap_or_else(|| physical_memory().map_or(FLOOR, |bytes| (bytes / 4).max(FLOOR)))
    }

    /// The defaults, for embedding (`kv up`) and tests.
    pub fn with_data_dir(data_dir: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7000)),
            data_dir,
            max_value_bytes: 1 << 20,
            store_cache: None,
            http: HttpLimits::default(),
            auth: AuthArgs::default(),
            tls: TlsArgs::default(),
        }
    }
}

/// The machine's memory, from /proc/meminfo (Linux); `None` elsewhere.
fn physical_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}
