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
    store: Arc<dyn Store>,
    /// Sent on every answer as `X-Kv-Store-Id`.
    store_id: axum::http::HeaderValue,
    token: Option<auth::Token>,
    tls: Option<kv_edge::tls::TlsAcceptor>,
}

/// The edge's settings either engine needs: the token (refusing a
/// network-facing `--listen` without one) and TLS, loaded before any store
/// is touched.
fn edge(config: &Config) -> Result<(Option<auth::Token>, Option<tls::TlsAcceptor>), StartError> {
    let token = config.auth.load().map_err(StartError::Config)?;
    config
        .auth
        .check_exposure(token.as_ref(), &[(config.listen, "--listen")])
        .map_err(StartError::Config)?;
    let tls = config.tls.load()?;
    Ok((token, tls))
}

impl Server {
    /// Checks the configuration and opens the engine it names: the embedded
    /// store in `config.data_dir`, or (built with the `etcd` feature) a
    /// connection to the etcd cluster at `--etcd-endpoints`.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        match config.store.kind {
            config::StoreKind::Redb => Self::open(config),
            config::StoreKind::Etcd => Self::open_etcd(config).await,
        }
    }

    #[cfg(not(feature = "etcd"))]
    async fn open_etcd(_config: Config) -> Result<Self, StartError> {
        Err(StartError::Config(
            "--store etcd: this kv-server was built without etcd support; build it with \
             `cargo build --release -p kv-server --features etcd` (which needs protoc: \
             apt-get install protobuf-compiler)"
                .into(),
        ))
    }

    #[cfg(feature = "etcd")]
    async fn open_etcd(config: Config) -> Result<Self, StartError> {
        if config.max_value_bytes > store::etcd::MAX_VALUE_BYTES {
            return Err(StartError::Config(format!(
                "--max-value-bytes {} is more than etcd takes in one request with kv's envelope \
                 (etcd refuses requests over 1.5MiB by default); the largest allowed over etcd is {} bytes",
                config.max_value_bytes,
                store::etcd::MAX_VALUE_BYTES
            )));
        }
        let (token, tls) = edge(&config)?;
        let options = store::etcd::EtcdOptions {
            endpoints: config.store.etcd_endpoints.clone(),
            prefix: config.store.etcd_prefix.clone(),
            timeout: config.store.etcd_timeout,
            feed: config.feed.limits(),
            tls: store::etcd::EtcdTls {
                ca: config.store.etcd_ca.clone(),
                cert: config.store.etcd_cert.clone(),
                key: config.store.etcd_key.clone(),
            },
        };
        let etcd = store::etcd::EtcdStore::connect(options)
            .await
            .map_err(StartError::Config)?;
        let store_id = etcd.store_id();
        Ok(Self {
            config,
            store: Arc::new(etcd),
            store_id,
            token,
            tls,
        })
    }

    /// Checks the configuration and opens the embedded store in `config.data_dir`
    /// (`kv up`, tests); [`Server::start`] opens either engine.
    pub fn open(config: Config) -> Result<Self, StartError> {
        if config.store.kind != config::StoreKind::Redb {
            return Err(StartError::Config(
                "this program embeds kv-server with its own store (redb); run kv-server --store etcd for etcd".into(),
            ));
        }
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
        // Before the store, so that a wrong path fails without touching the data directory.
        let (token, tls) = edge(&config)?;
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
            store: Arc::new(store),
            store_id,
            token,
            tls,
        })
    }

    /// Serves HTTP on `listener` until `shutdown` resolves, then finishes the
    /// requests in flight and the queued writes, and closes the store.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let addr = listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string());
        tracing::info!(
            keys = self.store.len().await.unwrap_or(0),
            revision = self.store.revision(),
            store_id = ?self.store_id,
            store_cache = self.config.store_cache_bytes(),
            "kv-server listening on {}://{addr}, data in {}",
            if self.tls.is_some() { "https" } else { "http" },
            self.store.location()
        );
        let state = http::AppState {
            store: self.store.clone(),
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
