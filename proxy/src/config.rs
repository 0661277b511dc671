//! The command line and environment of `kv-proxy`.

use std::net::SocketAddr;
use std::time::Duration;

use std::path::PathBuf;

use kv_server::auth::AuthArgs;
use kv_server::serve::HttpLimits;
use kv_server::tls::TlsArgs;
use kv_server::units::{parse_duration, parse_size};

/// kv-proxy: a caching reverse proxy for kv-server, with a telnet line protocol.
///
/// Clients talk to the proxy exactly as to the server; repeated GETs are
/// answered from memory for up to --cache-ttl. A write through the proxy is
/// seen at once by every later read through it.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "kv-proxy", version, max_term_width = 100)]
pub struct Config {
    /// Address and port to serve HTTP on.
    #[arg(long, env = "KV_PROXY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Base URL of the kv-server to forward to: http:// or https://.
    #[arg(long, env = "KV_UPSTREAM", default_value = "http://127.0.0.1:7000")]
    pub upstream: String,

    /// A PEM file of CA certificates to trust for an https:// upstream, in
    /// addition to the system's trust store: a private CA, or the upstream's
    /// own self-signed certificate.
    #[arg(long, env = "KV_UPSTREAM_CA_FILE", value_name = "PATH")]
    pub upstream_ca_file: Option<PathBuf>,

    /// Address and port for the telnet line protocol (PUT/GET/DEL/DUMP), or "off".
    #[arg(long, env = "KV_TELNET_LISTEN", default_value = "127.0.0.1:2323", value_parser = parse_listen)]
    pub telnet_listen: Listen,

    /// How long a cached GET stays fresh, like 500ms, 2s or 1m.
    #[arg(long, env = "KV_CACHE_TTL", default_value = "60s", value_parser = parse_duration)]
    pub cache_ttl: Duration,

    /// Memory the cache may use, counting keys, values and headers, like 64MiB.
    #[arg(long, env = "KV_CACHE_MAX_BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub cache_max_bytes: u64,

    /// How long to wait for the upstream before answering 504.
    #[arg(long, env = "KV_UPSTREAM_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,

    /// When the upstream fails, serve an entry that expired less than this long
    /// ago, marked X-Cache: STALE. 0 (the default) never serves stale values.
    #[arg(long, env = "KV_STALE_IF_ERROR", default_value = "0s", value_parser = parse_duration)]
    pub stale_if_error: Duration,

    /// The largest value a PUT may carry (the server has its own limit too).
    #[arg(long, env = "KV_MAX_VALUE_BYTES", default_value = "1MiB", value_parser = parse_size)]
    pub max_value_bytes: u64,

    /// Test hook: wait this long between reading a miss from the upstream and
    /// caching it, to widen the stale-fill race window on purpose.
    #[arg(long, hide = true, default_value = "0s", value_parser = parse_duration)]
    pub debug_fill_delay: Duration,

    #[command(flatten)]
    pub telnet: TelnetLimits,

    /// A file holding the token to present to the upstream; by default the
    /// proxy's own token (--token-file / KV_TOKEN).
    #[arg(long, env = "KV_UPSTREAM_TOKEN_FILE")]
    pub upstream_token_file: Option<PathBuf>,

    #[command(flatten)]
    pub http: HttpLimits,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Limits of the telnet adapter.
#[derive(Debug, Clone, clap::Args)]
pub struct TelnetLimits {
    /// The longest command line, in bytes. The default leaves room for a 1 MiB
    /// value written entirely in \xHH escapes.
    #[arg(long, env = "KV_TELNET_MAX_LINE", default_value = "4100KiB", value_parser = parse_size)]
    pub telnet_max_line: u64,

    /// Close a telnet connection that sends nothing for this long.
    #[arg(long, env = "KV_TELNET_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub telnet_idle_timeout: Duration,

    /// The most telnet connections at once; more are told so and closed.
    #[arg(long, env = "KV_TELNET_MAX_CONNECTIONS", default_value_t = 1024)]
    pub telnet_max_connections: usize,

    /// Close a telnet connection whose client takes no reply bytes for this
    /// long (it stopped reading): its session, its slot and shutdown are not
    /// held by it.
    #[arg(long, env = "KV_TELNET_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub telnet_write_timeout: Duration,
}

impl Default for TelnetLimits {
    fn default() -> Self {
        Self {
            telnet_max_line: 4100 << 10,
            telnet_idle_timeout: Duration::from_secs(300),
            telnet_max_connections: 1024,
            telnet_write_timeout: Duration::from_secs(30),
        }
    }
}

/// A listener address, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    On(SocketAddr),
}

pub fn parse_listen(text: &str) -> Result<Listen, String> {
    match text.trim() {
        "off" | "none" | "" => Ok(Listen::Off),
        addr => addr
            .parse()
            .map(Listen::On)
            .map_err(|_| format!("'{addr}' is not an address like 127.0.0.1:2323 (or \"off\")")),
    }
}

impl Config {
    /// The defaults, for embedding (`kv up`) and tests.
    pub fn with_upstream(upstream: String) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            upstream,
            upstream_ca_file: None,
            telnet_listen: Listen::On(SocketAddr::from(([127, 0, 0, 1], 2323))),
            cache_ttl: Duration::from_secs(60),
            cache_max_bytes: 256 << 20,
            upstream_timeout: Duration::from_secs(5),
            stale_if_error: Duration::ZERO,
            max_value_bytes: 1 << 20,
            debug_fill_delay: Duration::ZERO,
            telnet: TelnetLimits::default(),
            upstream_token_file: None,
            http: HttpLimits::default(),
            auth: AuthArgs::default(),
            tls: TlsArgs::default(),
        }
    }
}
