//! kv-server: a durable key-value store over HTTP.
//!
//! The store and its HTTP API, and nothing else: the contract lives in
//! `kv-api`, the HTTP edge (accept loop, limits, auth, TLS) in `kv-edge`.
//!
//! # Layout
//! - [`config`]: the command line (`--listen`, `--data-dir`, limits).
//! - [`store`]: the storage trait and its redb engine (`engine`, `writer`, `record`, `wal`).
//! - [`http`]: the router and handlers (`keys`, `dump`, `page`).

pub mod config;
pub mod http;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::Config;
use kv_edge::{auth, metrics, serve, tls};
use store::engine::{OpenError, RedbOptions};
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
    tls: Option<kv_edge::tls::TlsAcceptor>,
}

impl Server {
    /// Checks the configuration and opens the store in `config.data_dir`.
    pub fn open(config: Config) -> Result<Self, StartError> {
        const _: () = assert!(store::wal::MAX_VALUE_BYTES == 1023 << 20, "the message says 1023MiB");
        // A value the log cannot hold in one record would be acknowledged,
        // then dropped by recovery: refuse the limit that would allow it.
        if config.max_value_bytes > store::wal::MAX_VALUE_BYTES as u64 {
            return Err(StartError::Config(format!(
                "--max-value-bytes {} is more than the write-ahead log can hold in one record; \
                 the largest allowed is 1023MiB ({} bytes)",
                config.max_value_bytes,
                store::wal::MAX_VALUE_BYTES
            )));
        }
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
