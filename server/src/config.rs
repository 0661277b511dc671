//! The command line and environment of `kv-server`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kv_edge::auth::AuthArgs;
use kv_edge::limits::{self, HttpLimits};
use kv_edge::tls::TlsArgs;
use kv_edge::units::{parse_duration, parse_size};

/// The defaults of kv-server's own flags; `kv up` uses them too.
pub mod defaults {
    pub const LISTEN: &str = "127.0.0.1:7000";
    pub const DATA_DIR: &str = "./kv-data";
    pub const FEED_HISTORY_EVENTS: usize = 100_000;
    pub const FEED_HISTORY_BYTES: &str = "64MiB";
    pub const MAX_WATCHERS: usize = 1024;
    pub const ETCD_PREFIX: &str = "kv/";
    pub const ETCD_TIMEOUT: &str = "2s";
}

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
    #[arg(long, env = "KV_SERVER_LISTEN", default_value = defaults::LISTEN)]
    pub listen: SocketAddr,

    /// Directory holding the database (kv.redb) and its write-ahead log (kv.wal); created if missing.
    /// Only one kv-server may use a directory at a time.
    #[arg(long, env = "KV_DATA_DIR", default_value = defaults::DATA_DIR)]
    pub data_dir: PathBuf,

    /// The largest value a PUT may store, like 64KiB or 1MiB.
    #[arg(long, env = "KV_MAX_VALUE_BYTES", default_value = limits::defaults::MAX_VALUE_BYTES, value_parser = parse_size)]
    pub max_value_bytes: u64,

    /// Memory for the storage engine's page cache, like 2GiB. By default a
    /// quarter of the machine's memory (at least 256MiB); the cache fills only
    /// as data is read, so a small store uses little of it.
    #[arg(long, env = "KV_STORE_CACHE", value_parser = parse_size)]
    pub store_cache: Option<u64>,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub feed: FeedArgs,

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
            listen: limits::defaults::parse(defaults::LISTEN, |text| text.parse().map_err(|e| format!("{e}"))),
            data_dir,
            max_value_bytes: limits::defaults::parse(limits::defaults::MAX_VALUE_BYTES, parse_size),
            store_cache: None,
            store: StoreArgs::default(),
            feed: FeedArgs::default(),
            http: HttpLimits::default(),
            auth: AuthArgs::default(),
            tls: TlsArgs::default(),
        }
    }
}

/// Which engine keeps the data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// The embedded store: a redb file and its write-ahead log in --data-dir.
    #[default]
    Redb,
    /// An etcd cluster (v3 API, etcd 3.4 or later) at --etcd-endpoints;
    /// several kv-servers may share it. Needs kv-server built with
    /// `--features etcd`.
    Etcd,
}

/// The engine, and the etcd cluster when it is etcd.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The storage engine: redb (embedded, in --data-dir) or etcd (a cluster
    /// at --etcd-endpoints; --data-dir is then unused).
    #[arg(long = "store", env = "KV_STORE", value_enum, default_value_t = StoreKind::Redb)]
    pub kind: StoreKind,

    /// The etcd members' client URLs, comma-separated, like
    /// http://127.0.0.1:2379,http://127.0.0.1:22379.
    #[arg(long, env = "KV_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,

    /// Every key is stored in etcd under this prefix, so that several
    /// deployments can share a cluster.
    #[arg(long, env = "KV_ETCD_PREFIX", default_value = defaults::ETCD_PREFIX)]
    pub etcd_prefix: String,

    /// The deadline of every call to etcd, like 2s or 500ms: past it a
    /// write answers 504 outcome_unknown and a read 503.
    #[arg(long, env = "KV_ETCD_TIMEOUT", default_value = defaults::ETCD_TIMEOUT, value_parser = parse_duration)]
    pub etcd_timeout: Duration,

    /// For a cluster that serves TLS (https:// endpoints): the PEM file of the
    /// CA that signed the members' certificates (etcd's --trusted-ca-file).
    #[arg(long, env = "KV_ETCD_CA", value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,

    /// For a cluster that checks its clients (etcd's --client-cert-auth): this
    /// server's certificate (PEM), with --etcd-key.
    #[arg(long, env = "KV_ETCD_CERT", value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,

    /// The private key (PEM) of --etcd-cert.
    #[arg(long, env = "KV_ETCD_KEY", value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

impl Default for StoreArgs {
    fn default() -> Self {
        Self {
            kind: StoreKind::Redb,
            etcd_endpoints: Vec::new(),
            etcd_prefix: defaults::ETCD_PREFIX.to_owned(),
            etcd_timeout: limits::defaults::parse(defaults::ETCD_TIMEOUT, parse_duration),
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
        }
    }
}

/// The change feed (`GET /kv?watch=1`): its history in memory, and its subscribers.
#[derive(Debug, Clone, clap::Args)]
pub struct FeedArgs {
    /// The most changes the feed's history keeps in memory; a watch may resume
    /// (`since`) from any revision the history still reaches. It starts empty
    /// at every start of kv-server.
    #[arg(long, env = "KV_FEED_HISTORY_EVENTS", default_value_t = defaults::FEED_HISTORY_EVENTS)]
    pub feed_history_events: usize,

    /// The most bytes the feed's history keeps, like 64MiB (values above
    /// 64KiB are not kept in it).
    #[arg(long, env = "KV_FEED_HISTORY_BYTES", default_value = defaults::FEED_HISTORY_BYTES, value_parser = parse_size)]
    pub feed_history_bytes: u64,

    /// The most change-feed subscribers at once; more are answered 503.
    #[arg(long, env = "KV_MAX_WATCHERS", default_value_t = defaults::MAX_WATCHERS)]
    pub max_watchers: usize,
}

impl Default for FeedArgs {
    fn default() -> Self {
        Self {
            feed_history_events: defaults::FEED_HISTORY_EVENTS,
            feed_history_bytes: limits::defaults::parse(defaults::FEED_HISTORY_BYTES, parse_size),
            max_watchers: defaults::MAX_WATCHERS,
        }
    }
}

impl FeedArgs {
    pub fn limits(&self) -> crate::store::feed::FeedLimits {
        crate::store::feed::FeedLimits {
            max_events: self.feed_history_events.max(1),
            max_bytes: usize::try_from(self.feed_history_bytes).unwrap_or(usize::MAX),
            max_watchers: self.max_watchers,
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn the_embedded_defaults_are_the_command_lines() {
        let parsed = Config::try_parse_from(["kv-server"]).expect("no flags parse");
        let built = Config::with_data_dir(PathBuf::from(defaults::DATA_DIR));
        assert_eq!(format!("{parsed:?}"), format!("{built:?}"));
    }
}
