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
use kv_api::condition::X_KV_STORE_ID;
use kv_edge::{auth, metrics, serve, shortcut, tls};
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
    /// Sent on every answer as `X-Kv-Store-Id`.
    store_id: axum::http::HeaderValue,
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
            feed: config.feed.limits(),
            ..RedbOptions::default()
        };
        let new_store = !config
            .data_dir
            .join(store::engine::FILE_NAME)
            .try_exists()
            .unwrap_or(true);
        let store = RedbStore::open(&config.data_dir, &options)?;
        let store_id = store::identity::load_or_create(&config.data_dir, new_store).map_err(StartError::Config)?;
        Ok(Self {
            config,
            store,
            store_id,
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
            store_id = ?self.store_id,
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
        let reads = StoreIdOn(http::Reads::new(&state), self.store_id.clone());
        let store_id = self.store_id.clone();
        let app = http::app(state, &self.config.http).layer(axum::middleware::map_response(
            move |mut response: axum::response::Response| {
                response.headers_mut().insert(X_KV_STORE_ID.clone(), store_id.clone());
                std::future::ready(response)
            },
        ));
        serve::serve(listener, app, reads, &self.config.http, self.tls.clone(), shutdown).await;
        self.store.close().await;
        tracing::info!(revision = self.store.revision(), "kv-server stopped; store closed");
    }
}

/// A shortcut whose answers carry the store id, as the router's do.
struct StoreIdOn<S>(S, axum::http::HeaderValue);

impl<S: shortcut::Shortcut> shortcut::Shortcut for StoreIdOn<S> {
    async fn answer(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> Result<axum::response::Response, hyper::Request<hyper::body::Incoming>> {
        let mut response = self.0.answer(request).await?;
        response.headers_mut().insert(X_KV_STORE_ID.clone(), self.1.clone());
        Ok(response)
    }
}
