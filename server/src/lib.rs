//! kv-server: a durable key-value store over HTTP.
//!
//! # Layout
//! - [`config`]: the command line (`--listen`, `--data-dir`, limits).
//! - [`store`]: the storage trait and its redb engine, with group commit.
//! - [`http`]: the routes of the API, its extractors and handlers.
//! - [`dump`]: the shapes of DUMP (`GET /kv`) and the NDJSON item shared with import/export.
//! - [`key`]: how a key is spelled in a URL; shared with the proxy so both agree.
//! - [`quote`]: Redis-style quoting for the line-oriented views (telnet, text DUMP).
//! - [`auth`]: the access token and protected mode (no token, no network).
//! - [`middleware`]: the one layer around every route (metrics, body timeout, nosniff, panics).
//! - [`serve`]: the hardened accept loop both programs use, and the shutdown signal.
//! - [`tls`]: `--tls-cert`/`--tls-key`, and the crypto provider every kv program uses.
//! - [`metrics`], [`error`], [`units`]: Prometheus figures, the error body, sizes and durations.

pub mod auth;
pub mod config;
pub mod dump;
pub mod error;
pub mod http;
pub mod key;
pub mod metrics;
pub mod middleware;
pub mod quote;
pub mod serve;
pub mod store;
pub mod tls;
pub mod units;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::Config;
use store::redb::{OpenError, RedbOptions};
use store::{RedbStore, Store};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// An opened server: the store is open and locked, nothing is listening yet.
pub struct Server {
    config: Config,
    store: RedbStore,
    token: Option<auth::Token>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Server {
    /// Checks the configuration and opens the store in `config.data_dir`.
    pub fn open(config: Config) -> Result<Self, StartError> {
        let token = config.auth.load().map_err(StartError::Config)?;
        config
            .auth
            .check_exposure(token.as_ref(), &[(config.listen, "--listen")])
            .map_err(StartError::Config)?;
        // Before the store, so that a wrong path fails without touching the data directory.
        let tls = config.tls.load()?;
        let options = RedbOptions {
            cache_bytes: usize::try_from(config.store_cache_bytes()).unwrap_or(usize::MAX),
            ..RedbOptions::default()
        };
        let store = RedbStore::open(&config.data_dir, &options)?;
        Ok(Self {
            config,
            store,
            token,
            tls,
        })
    }

    /// Serves HTTP on `listener` until `shutdown` resolves, then finishes the
    /// requests in flight and the queued writes, and closes the store.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let addr = listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string());
        let path = std::path::absolute(self.store.path()).unwrap_or_else(|_| self.store.path().to_owned());
        tracing::info!(
            keys = self.store.len().unwrap_or(0),
            revision = self.store.revision(),
            store_cache = self.config.store_cache_bytes(),
            "kv-server listening on {}://{addr}, data in {}",
            if self.tls.is_some() { "https" } else { "http" },
            path.display()
        );
        let state = http::AppState {
            store: Arc::new(self.store.clone()) as Arc<dyn Store>,
            metrics: Arc::new(metrics::Metrics::new("kv_server", "Keys stored")),
            max_value_bytes: usize::try_from(self.config.max_value_bytes).unwrap_or(usize::MAX),
            token: self.token.clone(),
        };
        let reads = http::Reads::new(&state);
        let app = http::app(state, self.config.http.request_timeout);
        serve::serve(listener, app, reads, &self.config.http, self.tls.clone(), shutdown).await;
        self.store.close().await;
        tracing::info!(revision = self.store.revision(), "kv-server stopped; store closed");
    }
}

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
