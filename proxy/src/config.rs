//! The command line and environment of `kv-proxy`.

use std::net::SocketAddr;
use std::time::Duration;

use std::path::PathBuf;

use kv_edge::auth::AuthArgs;
use kv_edge::limits::{self, HttpLimits};
use kv_edge::tls::TlsArgs;
use kv_edge::units::{parse_duration, parse_size};

/// The defaults of kv-proxy's own flags; `kv up` uses them too.
pub mod defaults {
    pub const LISTEN: &str = "127.0.0.1:8080";
    pub const UPSTREAM: &str = "http://127.0.0.1:7000";
    pub const TELNET_LISTEN: &str = "127.0.0.1:2323";
    pub const CACHE_TTL: &str = "60s";
    pub const CACHE_MAX_BYTES: &str = "256MiB";
    pub const UPSTREAM_TIMEOUT: &str = "5s";
    /// Room for a 1 MiB value written entirely in `\xHH` escapes.
    pub const TELNET_MAX_LINE: &str = "4100KiB";
    pub const TELNET_IDLE_TIMEOUT: &str = "5m";
    pub const TELNET_MAX_CONNECTIONS: usize = 1024;
    pub const TELNET_WRITE_TIMEOUT: &str = "30s";
    pub const COHERENCE: bool = true;
    /// Twice the feed's progress interval (1 s).
    pub const FEED_LEASE: &str = "2s";
}

/// kv-proxy: a caching reverse proxy for kv-server, with a telnet line protocol.
///
/// Clients talk to the proxy exactly as to the server; repeated GETs are
/// answered from memory for up to --cache-ttl. A write through the proxy is
/// seen at once by every later read through it.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "kv-proxy", version, max_term_width = 100)]
pub struct Config {
    /// Address and port to serve HTTP on.
    #[arg(long, env = "KV_PROXY_LISTEN", default_value = defaults::LISTEN)]
    pub listen: SocketAddr,

    /// Base URL of the kv-server to forward to: http:// or https://.
    #[arg(long, env = "KV_UPSTREAM", default_value = defaults::UPSTREAM)]
    pub upstream: String,

    /// A PEM file of CA certificates to trust for an https:// upstream, in
    /// addition to the system's trust store: a private CA, or the upstream's
    /// own self-signed certificate.
    #[arg(long, env = "KV_UPSTREAM_CA_FILE", value_name = "PATH")]
    pub upstream_ca_file: Option<PathBuf>,

    /// Address and port for the telnet line protocol (PUT/GET/DEL/DUMP), or "off".
    #[arg(long, env = "KV_TELNET_LISTEN", default_value = defaults::TELNET_LISTEN, value_parser = parse_listen)]
    pub telnet_listen: Listen,

    /// How long a cached GET stays fresh, like 500ms, 2s or 1m.
    #[arg(long, env = "KV_CACHE_TTL", default_value = defaults::CACHE_TTL, value_parser = parse_duration)]
    pub cache_ttl: Duration,

    /// Memory the cache may use, counting keys, values and headers, like 64MiB.
    #[arg(long, env = "KV_CACHE_MAX_BYTES", default_value = defaults::CACHE_MAX_BYTES, value_parser = parse_size)]
    pub cache_max_bytes: u64,

    /// How long to wait for the upstream before answering 504.
    #[arg(long, env = "KV_UPSTREAM_TIMEOUT", default_value = defaults::UPSTREAM_TIMEOUT, value_parser = parse_duration)]
    pub upstream_timeout: Duration,

    /// When the upstream fails, serve an entry that expired less than this long
    /// ago, marked X-Cache: STALE. 0 (the default) never serves stale values.
    #[arg(long, env = "KV_STALE_IF_ERROR", default_value = "0s", value_parser = parse_duration)]
    pub stale_if_error: Duration,

    /// The largest value a PUT may carry (the server has its own limit too).
    #[arg(long, env = "KV_MAX_VALUE_BYTES", default_value = limits::defaults::MAX_VALUE_BYTES, value_parser = parse_size)]
    pub max_value_bytes: u64,

    /// Keep the cache coherent with the upstream's change feed (on), or rely
    /// on --cache-ttl alone (off). With it on, a write made anywhere (through
    /// another proxy, or on the server) reaches this cache within milliseconds,
    /// and the cache answers only while the feed is healthy.
    #[arg(long, env = "KV_COHERENCE", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub coherence: bool,

    /// If nothing comes from the change feed for this long, stop answering
    /// from the cache (forward every read) and reopen the feed.
    #[arg(long, env = "KV_FEED_LEASE", default_value = defaults::FEED_LEASE, value_parser = parse_duration)]
    pub feed_lease: Duration,

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
    #[arg(long, env = "KV_TELNET_MAX_LINE", default_value = defaults::TELNET_MAX_LINE, value_parser = parse_size)]
    pub telnet_max_line: u64,

    /// Close a telnet connection that sends nothing for this long.
    #[arg(long, env = "KV_TELNET_IDLE_TIMEOUT", default_value = defaults::TELNET_IDLE_TIMEOUT, value_parser = parse_duration)]
    pub telnet_idle_timeout: Duration,

    /// The most telnet connections at once; more are told so and closed.
    #[arg(long, env = "KV_TELNET_MAX_CONNECTIONS", default_value_t = defaults::TELNET_MAX_CONNECTIONS)]
    pub telnet_max_connections: usize,

    /// Close a telnet connection whose client takes no reply bytes for this
    /// long (it stopped reading): its session, its slot and shutdown are not
    /// held by it.
    #[arg(long, env = "KV_TELNET_WRITE_TIMEOUT", default_value = defaults::TELNET_WRITE_TIMEOUT, value_parser = parse_duration)]
    pub telnet_write_timeout: Duration,
}

impl Default for TelnetLimits {
    fn default() -> Self {
        Self {
            telnet_max_line: limits::defaults::parse(defaults::TELNET_MAX_LINE, parse_size),
            telnet_idle_timeout: limits::defaults::parse(defaults::TELNET_IDLE_TIMEOUT, parse_duration),
            telnet_max_connections: defaults::TELNET_MAX_CONNECTIONS,
            telnet_write_timeout: limits::defaults::parse(defaults::TELNET_WRITE_TIMEOUT, parse_duration),
        }
    }
}

/// A listener address, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    On(SocketAddr),
}

pub fn parse_on_off(text: &str) -> Result<bool, String> {
    match text.trim() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        other => Err(format!("'{other}' is not on or off")),
    }
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
            listen: limits::defaults::parse(defaults::LISTEN, |text| text.parse().map_err(|e| format!("{e}"))),
            upstream,
            upstream_ca_file: None,
            telnet_listen: limits::defaults::parse(defaults::TELNET_LISTEN, parse_listen),
            cache_ttl: limits::defaults::parse(defaults::CACHE_TTL, parse_duration),
            cache_max_bytes: limits::defaults::parse(defaults::CACHE_MAX_BYTES, parse_size),
            upstream_timeout: limits::defaults::parse(defaults::UPSTREAM_TIMEOUT, parse_duration),
            stale_if_error: Duration::ZERO,
            max_value_bytes: limits::defaults::parse(limits::defaults::MAX_VALUE_BYTES, parse_size),
            coherence: defaults::COHERENCE,
            feed_lease: limits::defaults::parse(defaults::FEED_LEASE, parse_duration),
            debug_fill_delay: Duration::ZERO,
            telnet: TelnetLimits::default(),
            upstream_token_file: None,
            http: HttpLimits::default(),
            auth: AuthArgs::default(),
            tls: TlsArgs::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn the_embedded_defaults_are_the_command_lines() {
        let parsed = Config::try_parse_from(["kv-proxy"]).expect("no flags parse");
        let built = Config::with_upstream(defaults::UPSTREAM.to_owned());
        assert_eq!(format!("{parsed:?}"), format!("{built:?}"));
    }
}
