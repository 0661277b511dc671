//! The HTTP front of kv-proxy: the same API as kv-server, answered from the
//! cache where it can be, and `X-Cache` / `Age` saying how.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::body::Incoming;
use kv_api::condition::Condition;
use kv_api::{ApiError, ErrorCode, routes};
use kv_edge::auth::Token;
use kv_edge::metrics::{self, Metrics};
use kv_edge::request::{Key, read_body};
use kv_edge::shortcut::{Shortcut, plain_get};

use crate::service::{GetError, Lookup, Service};
use crate::upstream::{Relayed, UpstreamError};

pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

#[derive(Clone)]
pub struct ProxyState {
    pub service: Service,
    pub metrics: Arc<Metrics>,
    pub max_value_bytes: usize,
    /// Checked before the cache is consulted.
    pub token: Option<Token>,
}

pub fn app(state: ProxyState, limits: &kv_edge::limits::HttpLimits) -> Router {
    let routes = Router::new()
        .route(routes::DUMP, get(dump).post(batch))
        .route(
            routes::EMPTY_KEY,
            get(get_key).put(put_key).patch(patch_key).delete(delete_key),
        )
        .route(
            routes::KEY,
            get(get_key).put(put_key).patch(patch_key).delete(delete_key),
        )
        .route(routes::HEALTHZ, get(healthz))
        .route(routes::METRICS, get(metrics_page))
        .route(routes::OPENAPI, get(openapi));
    let pages = kv_edge::pages::Pages {
        backend: crate::pages::ServiceBackend(state.service.clone()),
        max_value_bytes: state.max_value_bytes,
        token: state.token.clone(),
    };
    let routes = kv_edge::pages::routes(routes, pages);
    let routes = kv_edge::auth::guard(routes, state.token.clone());
    kv_edge::layer::common_layers(routes, state.metrics.clone(), limits).with_state(Arc::new(state))
}

/// Cache hits, answered before the router: the [`Shortcut`] of kv-proxy.
///
/// A hit takes the same steps as [`get_key`] behind the router (token, line
/// limits, key decoding, `If-None-Match`, [`lookup_response`], the edge
/// layer's metrics and `nosniff`) without routing, extractors and their boxed
/// futures. Anything else (a miss, a request with a body, a malformed key or
/// header) goes to the router untouched, which then answers it in full.
pub struct Hits(Arc<ProxyState>);

impl Hits {
    pub fn new(state: &ProxyState) -> Self {
        Self(Arc::new(state.clone()))
    }
}

impl Shortcut for Hits {
    async fn answer(&self, request: hyper::Request<Incoming>) -> Result<Response, hyper::Request<Incoming>> {
        let started = std::time::Instant::now();
        let state = &self.0;
        let Some((key, if_none_match)) = plain_get(&request, state.token.as_ref()) else {
            return Err(request);
        };
        let Some(lookup) = state.service.hit(&key).await else {
            return Err(request);
        };
        let mut response = lookup_response(&key, &lookup, &if_none_match);
        kv_edge::layer::finish(&mut response, false, &state.metrics, "GET", routes::KEY, started);
        Ok(response)
    }
}

/// Takes the whole `Request` rather than a `HeaderMap`, which axum would clone.
async fn get_key(
    State(state): State<Arc<ProxyState>>,
    Key(key): Key,
    request: Request,
) -> Result<Response, ProxyError> {
    let if_none_match = Condition::parse(request.headers(), &header::IF_NONE_MATCH)?;
    let min = kv_api::feed::min_revision(request.headers())?;
    let lookup = state.service.get_at_least(&key, min).await?;
    Ok(lookup_response(&key, &lookup, &if_none_match))
}

/// Builds a GET answer; on a hit this is the whole of the work.
fn lookup_response(key: &str, lookup: &Lookup, if_none_match: &Condition) -> Response {
    let x_cache = HeaderValue::from_static(lookup.status.as_str());
    let Some(value) = &lookup.value else {
        let mut response = ApiError::key_not_found(key).into_response();
        response.headers_mut().insert(X_CACHE.clone(), x_cache);
        return response;
    };
    let mut response = if if_none_match.matches(value.version) {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        let mut response = Response::new(Body::from(value.value.clone()));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, value.content_type.clone());
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, value.etag.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // A value is inert in a browser, from the cache as from the server.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(kv_api::dump::VALUE_CSP),
    );
    headers.insert(X_CACHE.clone(), x_cache);
    // The time left as it is now, not as it was when the value was cached.
    if let Some(left) = value.time_left() {
        let expires_in = kv_api::expiry::format_expires_in(left);
        headers.insert(
            kv_api::expiry::X_KV_EXPIRES_IN.clone(),
            HeaderValue::from_str(&expires_in).expect("digits and a dot"),
        );
        if let Some(expires) = &value.expires {
            headers.insert(header::EXPIRES, expires.clone());
        }
    }
    if lookup.shows_age {
        headers.insert(header::AGE, HeaderValue::from(lookup.age().as_secs()));
    }
    response
}

async fn put_key(
    State(state): State<Arc<ProxyState>>,
    Key(key): Key,
    request: Request,
) -> Result<Response, ProxyError> {
    let (parts, body) = request.into_parts();
    let expiry = kv_api::expiry::parse_put_query(parts.uri.query())?;
    let value = read_body(&parts.headers, parts.version, body, state.max_value_bytes).await?;
    let passed = state
        .service
        .write(Method::PUT, &key, expiry.query(), &parts.headers, value)
        .await?;
    Ok(relayed_response(passed))
}

/// A new deadline for a key: forwarded with the query rebuilt from what was parsed.
async fn patch_key(
    State(state): State<Arc<ProxyState>>,
    Key(key): Key,
    request: Request,
) -> Result<Response, ProxyError> {
    let touch = kv_api::expiry::parse_patch_query(request.uri().query())?;
    let passed = state
        .service
        .write(
            Method::PATCH,
            &key,
            Some(touch.query()),
            request.headers(),
            bytes::Bytes::new(),
        )
        .await?;
    Ok(relayed_response(passed))
}

async fn delete_key(
    State(state): State<Arc<ProxyState>>,
    Key(key): Key,
    headers: HeaderMap,
) -> Result<Response, ProxyError> {
    let passed = state
        .service
        .write(Method::DELETE, &key, None, &headers, bytes::Bytes::new())
        .await?;
    Ok(relayed_response(passed))
}

/// A batch (`POST /kv`, NDJSON): streamed upstream as it arrives, within the
/// same bound as on the server ([`kv_api::batch::max_body_bytes`] of the
/// proxy's `--max-value-bytes`); every key it names is invalidated before the
/// answer is relayed ([`Service::batch`]).
async fn batch(State(state): State<Arc<ProxyState>>, request: Request) -> Result<Response, ProxyError> {
    let limit = kv_api::batch::max_body_bytes(state.max_value_bytes);
    let (parts, body) = request.into_parts();
    let length = kv_edge::request::body_length(&parts.headers, parts.version, limit, || {
        ApiError::new(
            ErrorCode::ValueTooLarge,
            format!("a batch body may be at most {limit} bytes; split it into several POSTs"),
        )
    })?;
    match state.service.batch(&parts.headers, body, length, limit).await {
        Ok(passed) => Ok(relayed_response(passed)),
        Err(crate::service::BatchFailure::Client(err)) => Err(err.into()),
        Err(crate::service::BatchFailure::Upstream(err)) => Err(err.into()),
    }
}

/// DUMP is never cached: the upstream's answer streams through as it comes.
/// DUMP is passed through, never cached; the upstream is asked with a query
/// rebuilt from the parsed one, so what reaches the server is what the proxy
/// understood.
async fn dump(State(state): State<Arc<ProxyState>>, request: Request) -> Result<Response, ProxyError> {
    if let Some(watch) = kv_api::feed::WatchQuery::parse(request.uri().query())? {
        return relay_watch(&state, &watch, request.headers()).await;
    }
    let query = kv_api::dump::Query::parse(request.uri().query())?;
    let upstream = state
        .service
        .upstream
        .stream(&query.path_and_query(), request.headers().get(header::ACCEPT))
        .await?;
    let status = upstream.status();
    let headers = crate::upstream::Upstream::relayed_headers(upstream.headers());
    let mut response = Response::new(Body::from_stream(upstream.bytes_stream()));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// A watch through the proxy is the upstream's feed, relayed as it comes
/// (NDJSON or SSE, as `Accept` asks); `Last-Event-ID` goes along.
async fn relay_watch(
    state: &ProxyState,
    watch: &kv_api::feed::WatchQuery,
    headers: &HeaderMap,
) -> Result<Response, ProxyError> {
    let upstream = state
        .service
        .upstream
        .watch_as(
            &watch.path_and_query(),
            headers.get(header::ACCEPT),
            headers.get(&kv_api::feed::LAST_EVENT_ID),
        )
        .await?;
    let status = upstream.status();
    let mut relayed = crate::upstream::Upstream::relayed_headers(upstream.headers());
    if status.is_success() {
        relayed.insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    let mut response = Response::new(Body::from_stream(upstream.bytes_stream()));
    *response.status_mut() = status;
    *response.headers_mut() = relayed;
    Ok(response)
}

async fn healthz(State(state): State<Arc<ProxyState>>) -> Response {
    let upstream = if state.service.upstream.healthy().await {
        "ok"
    } else {
        "unavailable"
    };
    axum::Json(serde_json::json!({ "status": "ok", "upstream": upstream })).into_response()
}

async fn metrics_page(State(state): State<Arc<ProxyState>>) -> Response {
    let (entries, _) = state.service.cache.size().await;
    state.service.coherence.refresh();
    state.metrics.keys.set(i64::try_from(entries).unwrap_or(i64::MAX));
    metrics::exposition(&state.metrics)
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], routes::OPENAPI_YAML)
}

fn relayed_response(passed: Relayed) -> Response {
    let mut response = Response::new(Body::from(passed.body));
    *response.status_mut() = passed.status;
    *response.headers_mut() = passed.headers;
    response
}

/// Errors of the proxy: the client's (4xx, as the server would say them), or
/// the upstream's (passed through, or 502/504 when it gave no answer).
pub enum ProxyError {
    Api(ApiError),
    Get(GetError),
    Upstream(UpstreamError),
}

impl From<ApiError> for ProxyError {
    fn from(err: ApiError) -> Self {
        Self::Api(err)
    }
}

impl From<GetError> for ProxyError {
    fn from(err: GetError) -> Self {
        Self::Get(err)
    }
}

impl From<UpstreamError> for ProxyError {
    fn from(err: UpstreamError) -> Self {
        Self::Upstream(err)
    }
}

/// The 502 or 504 for an upstream that gave no answer.
pub fn upstream_error(err: &UpstreamError) -> ApiError {
    tracing::warn!(cause = %err, "upstream request failed");
    let status = match err {
        UpstreamError::Unavailable { .. } => StatusCode::BAD_GATEWAY,
        UpstreamError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
    };
    ApiError::new(ErrorCode::UpstreamUnavailable, err.to_string()).with_status(status)
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        match self {
            Self::Api(err) => err.into_response(),
            Self::Upstream(err) | Self::Get(GetError::Unreachable(err)) => upstream_error(&err).into_response(),
            Self::Get(GetError::Refused(passed)) => relayed_response(passed),
        }
    }
}
