//! The command line and environment of `kv-server`.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::auth::AuthArgs;
use crate::serve::HttpLimits;
use crate::tls::TlsArgs;
use crate::units::parse_size;

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

    /// The largest value a PUT may store, like 64KiB or 1MiB.
    #[arg(long, env = "KV_MAX_VALUE_BYTES", default_value = "1MiB", value_parser = parse_size)]
    pub max_value_bytes: u64,

    /// Memory for the storage engine's page cache, like 256MiB.
    #[arg(long, env = "KV_STORE_CACHE", default_value = "256MiB", value_parser = parse_size)]
    pub store_cache: u64,

    #[command(flatten)]
    pub http: HttpLimits,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub tls: TlsArgs,
}

impl Config {
    /// The defaults, for embedding (`kv up`) and tests.
    pub fn with_data_dir(data_dir: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7000)),
            data_dir,
            max_value_bytes: 1 << 20,
            store_cache: 256 << 20,
            http: HttpLimits::default(),
            auth: AuthArgs::default(),
            tls: TlsArgs::default(),
        }
    }
}
