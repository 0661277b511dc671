//! kv-edge: the HTTP edge every kv program serves through.
//!
//! It knows nothing of stores, caches or telnet (ARCHITECTURE.md,
//! "Invariants"): kv-server and kv-proxy each bring a router and, optionally,
//! a [`Shortcut`](shortcut::Shortcut), and this crate accepts, limits, times,
//! authenticates, encrypts, counts and shuts down.
//!
//! # Layout
//! - [`serve`]: the accept loop (hyper-util, connection cap, TLS handshake) and `bind`.
//! - [`activity`]: a connection's idle clock and its lingering close.
//! - [`workers`]: one single-threaded runtime per core, where connections live.
//! - [`shortcut`]: answering some requests before the router (cache hits, plain GETs).
//! - [`layer`]: the one layer around every route (metrics, line limits, body deadline, nosniff, panics).
//! - [`inflight`]: the byte budget of request bodies in flight.
//! - [`limits`]: the connection and request-head flags and limits.
//! - [`request`]: what handlers take from a request: the key, a bounded body.
//! - [`auth`]: the access token (a bearer header, or the pages' login cookie) and protected mode.
//! - [`pages`]: the pages for people (a key's page, the forms, login), over a [`pages::Backend`].
//! - [`tls`]: HTTPS for the listeners, and the crypto provider of every client.
//! - [`client`]: the reqwest client builder the proxy and the CLI share.
//! - [`metrics`]: Prometheus figures for HTTP.
//! - [`units`]: `64KiB` and `2s` on the command line.
//! - [`shutdown`]: Ctrl-C or SIGTERM.

pub mod activity;
pub mod auth;
pub mod client;
pub mod inflight;
pub mod layer;
pub mod limits;
pub mod metrics;
pub mod pages;
pub mod request;
pub mod serve;
pub mod shortcut;
pub mod shutdown;
pub mod tls;
pub mod units;
pub mod workers;

/// Installs the log subscriber: one line per event, `RUST_LOG` overrides the level.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
