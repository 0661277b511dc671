//! kv-proxy: a caching reverse proxy for kv-server, and its telnet adapter.
//!
//! # Layout
//! - [`config`]: the command line (`--listen`, `--upstream`, `--cache-ttl`...).
//! - [`upstream`]: the reqwest client that talks to the upstream kv-server, and its store's identity.
//! - [`cache`]: the moka cache, its freshness and its ordering rule against stale fills.
//! - [`coherence`]: the change feed from the upstream, applied to the cache; whether the cache may answer.
//! - [`service`]: the operations (read-through GET, write-then-invalidate) both fronts share.
//! - [`http`]: the HTTP front, the same API as kv-server plus `X-Cache` and `Age`.
//! - [`pages`]: what the pages for people read and write through (the cache, and invalidating writes).
//! - [`telnet`]: the line protocol: framing, commands, sessions.

pub mod cache;
pub mod coherence;
pub mod config;
pub mod http;
pub mod pages;
pub mod service;
pub mod telnet;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use kv_edge::metrics::Metrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// How long a starting proxy waits for its change feed before it serves.
const STARTUP_FEED_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A configured proxy, not yet listening.
pub struct ProxyServer {
    config: Config,
    token: Option<kv_edge::auth::Token>,
    service: service::Service,
    metrics: Arc<Metrics>,
    tls: Option<kv_edge::tls::TlsAcceptor>,
}

impl ProxyServer {
    /// Builds the cache and the upstream client; fails on a malformed `--upstream`
    /// or TLS files that cannot be used.
    pub fn new(config: Config) -> Result<Self, String> {
        let token = config.auth.load()?;
        let mut exposed = vec![(config.listen, "--listen")];
        if let config::Listen::On(addr) = config.telnet_listen {
            exposed.push((addr, "--telnet-listen"));
        }
        config.auth.check_exposure(token.as_ref(), &exposed)?;
        let upstream_token = match &config.upstream_token_file {
            Some(path) => kv_edge::auth::AuthArgs {
                token_file: Some(path.clone()),
                ..Default::default()
            }
            .load()?,
            None => token.clone(),
        };
        let upstream = upstream::Upstream::new(
            &config.upstream,
            config.upstream_timeout,
            upstream_token.as_ref().map(kv_edge::auth::Token::as_str),
            config.upstream_ca_file.as_deref(),
        )?;
        let tls = config.tls.load().map_err(|err| err.to_string())?;
        let cache = cache::Cache::new(
            cache::CacheConfig {
                ttl: config.cache_ttl,
                stale_if_error: config.stale_if_error,
                max_bytes: config.cache_max_bytes,
            },
            upstream.identity().clone(),
        );
        let coherence = Arc::new(coherence::Coherence::new(config.coherence, config.feed_lease));
        let service = service::Service::new(cache, upstream, coherence)
            .with_fill_delay(config.debug_fill_delay)
            .with_unknown_outcome_window(config.upstream_timeout);
        let mut metrics = Metrics::new("kv_proxy", "Entries in the cache");
        service.register(metrics.registry_mut());
        Ok(Self {
            config,
            token,
            service,
            metrics: Arc::new(metrics),
            tls,
        })
    }

    /// The HTTP router alone, for tests that drive it without a socket.
    pub fn router(&self) -> axum::Router {
        http::app(self.state(), &self.config.http)
    }

    fn state(&self) -> http::ProxyState {
        http::ProxyState {
            service: self.service.clone(),
            metrics: self.metrics.clone(),
            max_value_bytes: usize::try_from(self.config.max_value_bytes).unwrap_or(usize::MAX),
            token: self.token.clone(),
        }
    }

    /// Serves HTTP (and telnet, when given a listener) until `shutdown` resolves.
    pub async fn serve(self, http: TcpListener, telnet: Option<TcpListener>, shutdown: impl Future<Output = ()>) {
        let addr = http.local_addr().map_or_else(|_| "?".into(), |a| a.to_string());
        tracing::info!(
            ttl = %humantime::format_duration(self.config.cache_ttl),
            max_bytes = self.config.cache_max_bytes,
            "kv-proxy listening on {}://{addr}, forwarding to {}",
            if self.tls.is_some() { "https" } else { "http" },
            self.service.upstream.upstream()
        );
        let cancel = CancellationToken::new();
        let feed_task = tokio::spawn(coherence::run(
            self.service.coherence.clone(),
            self.service.cache.clone(),
            self.service.upstream.clone(),
            cancel.clone(),
        ));
        // A moment for the feed, so that the first reads can be cached: until
        // it is current, every read is forwarded.
        if self.service.coherence.enabled() {
            let deadline = tokio::time::Instant::now() + STARTUP_FEED_WAIT;
            while !self.service.coherence.serving() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        let telnet_task = telnet.map(|listener| {
            let addr = listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string());
            tracing::info!(
                "telnet adapter listening on {addr} (try: telnet {})",
                addr.replace(':', " ")
            );
            let shared = telnet::Session {
                service: self.service.clone(),
                limits: self.config.telnet.clone(),
                token: self.token.clone(),
            };
            tokio::spawn(telnet::serve(listener, shared, cancel.clone()))
        });
        let state = self.state();
        let hits = http::Hits::new(&state);
        let app = http::app(state, &self.config.http);
        let stop = async {
            shutdown.await;
            cancel.cancel();
        };
        kv_edge::serve::serve(http, app, hits, &self.config.http, self.tls.clone(), stop).await;
        cancel.cancel();
        if let Some(task) = telnet_task {
            let _ = task.await;
        }
        let _ = feed_task.await;
        tracing::info!("kv-proxy stopped");
    }
}
