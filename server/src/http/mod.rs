//! The HTTP API of kv-server: the router and what its handlers share. The
//! contract is `openapi.yaml` at the repository root, served at `GET /openapi.yaml`.
//!
//! - [`keys`]: one key (GET, HEAD, PUT, PATCH, DELETE) and the shortcut for plain GETs.
//! - [`dump`]: `GET /kv` in its four shapes.
//! - [`batch`]: `POST /kv`, the batch write (NDJSON).
//! - [`page`]: the rows of the HTML listing, and the store behind the pages of [`kv_edge::pages`].
//! - [`watch`]: the change feed (`GET /kv?watch=1`).

mod batch;
mod dump;
mod keys;
mod page;
mod watch;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kv_api::routes;
use kv_edge::auth::Token;
use kv_edge::metrics::{self, Metrics};

pub use keys::{Reads, value_response};

use crate::store::Store;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub max_value_bytes: usize,
    /// With a token, every route but `/healthz` needs it.
    pub token: Option<Token>,
}

/// The router, built in a plain function so tests can drive it without a socket.
pub fn app(state: AppState, limits: &kv_edge::limits::HttpLimits) -> Router {
    let routes = Router::new()
        .route(routes::DUMP, get(watch::dump_or_watch).post(batch::post_batch))
        .route(
            routes::EMPTY_KEY,
            get(keys::get_key)
                .put(keys::put_key)
                .patch(keys::patch_key)
                .delete(keys::delete_key),
        )
        .route(
            routes::KEY,
            get(keys::get_key)
                .put(keys::put_key)
                .patch(keys::patch_key)
                .delete(keys::delete_key),
        )
        .route(routes::HEALTHZ, get(healthz))
        .route(routes::METRICS, get(metrics_page))
        .route(routes::OPENAPI, get(openapi));
    let pages = kv_edge::pages::Pages {
        backend: page::StoreBackend(state.store.clone()),
        max_value_bytes: state.max_value_bytes,
        token: state.token.clone(),
    };
    let routes = kv_edge::pages::routes(routes, pages);
    let routes = kv_edge::auth::guard(routes, state.token.clone());
    kv_edge::layer::common_layers(routes, state.metrics.clone(), limits).with_state(Arc::new(state))
}

async fn healthz(State(state): State<Arc<AppState>>) -> Result<Response, kv_api::ApiError> {
    state.store.healthy().await?;
    Ok(axum::Json(serde_json::json!({ "status": "ok", "revision": state.store.revision() })).into_response())
}

async fn metrics_page(State(state): State<Arc<AppState>>) -> Response {
    if let Ok(keys) = state.store.len().await {
        state.metrics.keys.set(i64::try_from(keys).unwrap_or(i64::MAX));
    }
    metrics::exposition(&state.metrics)
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], routes::OPENAPI_YAML)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::store::RedbStore;
    use crate::store::engine::RedbOptions;

    async fn get(app: &Router, uri: &str) -> (StatusCode, String) {
        let request = Request::get(uri).body(Body::empty()).expect("a request");
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let body = response.into_body().collect().await.expect("a body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    // A writer thread that dies (a panic, a bug) takes every write with it:
    // /healthz must say so, not "ok", and writes must be refused as a failure.
    #[tokio::test]
    async fn healthz_is_503_once_the_writer_thread_has_died() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = RedbStore::open(dir.path(), &RedbOptions::default()).expect("a store");
        let state = AppState {
            store: Arc::new(store.clone()) as Arc<dyn Store>,
            metrics: Arc::new(Metrics::new("kv_server", "Keys stored")),
            max_value_bytes: 1 << 20,
            token: None,
        };
        let app = app(state, &kv_edge::limits::HttpLimits::default());
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);

        store.kill_writer().await;
        let (status, body) = get(&app, "/healthz").await;
        eprintln!("/healthz after the writer thread died: {status} {body}");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains(r#""error":"store_unavailable""#), "{body}");
        let write = store
            .put(
                "k".into(),
                "v".into(),
                String::new(),
                Default::default(),
                Default::default(),
            )
            .await;
        assert!(
            matches!(write, Err(crate::store::StoreError::Unavailable(ref m)) if m.contains("writer thread")),
            "{write:?}"
        );
    }
}
