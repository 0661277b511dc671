//! The HTTP API of kv-server: routes, extractors and handlers. The contract
//! is `openapi.yaml` at the repository root, served at `GET /openapi.yaml`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, RawQuery, Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::{StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;

use crate::dump::{self, DEFAULT_CONTENT_TYPE, Format};
use crate::error::ApiError;
use crate::key;
use crate::metrics::{self, Metrics};
use crate::serve::{MAX_HEADERS, MAX_LINE_BYTES};
use crate::store::{Condition, Entry, Precondition, Scan, Store, WriteOp, WriteOutcome};

/// The OpenAPI document, the contract of both kv-server and kv-proxy.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

/// `X-Kv-Revision`: the store revision a write took.
pub static X_KV_REVISION: HeaderName = HeaderName::from_static("x-kv-revision");

/// The default and largest page of a JSON or HTML DUMP.
pub const DEFAULT_PAGE: usize = 1000;
pub const MAX_PAGE: usize = 10_000;
/// Keys read per store call while streaming NDJSON or text.
const STREAM_CHUNK: usize = 512;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub max_value_bytes: usize,
    /// With a token, every route but `/healthz` needs it.
    pub token: Option<crate::auth::Token>,
}

/// The router, built in a plain function so tests can drive it without a socket.
pub fn app(state: AppState, request_timeout: std::time::Duration) -> Router {
    let routes = Router::new()
        .route("/kv", get(dump))
        .route("/kv/", get(get_key).put(put_key).delete(delete_key))
        .route(KEY_ROUTE, get(get_key).put(put_key).delete(delete_key))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_page))
        .route("/openapi.yaml", get(openapi));
    let routes = crate::auth::guard(routes, state.token.clone());
    common_layers(routes, state.metrics.clone(), request_timeout).with_state(Arc::new(state))
}

/// What every kv HTTP front puts around its routes: JSON answers for unknown
/// routes and methods, and the [`EdgeLayer`](crate::middleware::EdgeLayer)
/// (metrics, 414/431 for an overlong target or header line, a body timeout,
/// `nosniff`, a 500 on a panic). There is no timer on whole requests: the head
/// is bounded by the header-read timeout, the body by `request_timeout`, and
/// every wait after that by the store or `--upstream-timeout`.
pub fn common_layers<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    metrics: Arc<Metrics>,
    request_timeout: std::time::Duration,
) -> Router<S> {
    routes
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(crate::middleware::EdgeLayer::new(metrics, request_timeout))
}

/// Why a request head breaks a per-line limit, if it does: a target or a
/// header line longer than [`MAX_LINE_BYTES`] (414, 431), or more than
/// [`MAX_HEADERS`] header fields (431; hyper counts them for HTTP/1 but not for
/// HTTP/2). hyper has already bounded the whole head at 64 KiB, so checking after
/// it parsed is safe; every request passes here, so it only loops over lengths.
pub fn over_line_limits(uri: &axum::http::Uri, headers: &HeaderMap) -> Option<ApiError> {
    // The target as hyper parsed it: with scheme and authority when the client
    // sent an absolute URI (and over HTTP/2, where they are pseudo-headers).
    let target = uri.scheme_str().map_or(0, |scheme| scheme.len() + "://".len())
        + uri.authority().map_or(0, |authority| authority.as_str().len())
        + uri.path_and_query().map_or(0, |path| path.as_str().len());
    if target > MAX_LINE_BYTES {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target (path and query) is {target} bytes long; it may be at most 8 KiB"),
        ));
    }
    if headers.len() > MAX_HEADERS {
        return Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request has {} header fields; it may have at most {MAX_HEADERS}",
                headers.len()
            ),
        ));
    }
    for (name, value) in headers {
        let line = name.as_str().len() + ": ".len() + value.len();
        if line > MAX_LINE_BYTES {
            // Header names are ASCII, so any byte offset is a char boundary.
            let name = &name.as_str()[..name.as_str().len().min(64)];
            return Some(ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!("the header line '{name}: ...' is {line} bytes long; each header line may be at most 8 KiB"),
            ));
        }
    }
    None
}

/// A plain `GET /kv/{key}` that a [`Shortcut`](crate::serve::Shortcut) may
/// answer without the router: its key and `If-None-Match`.
///
/// `None` for anything the router must see to answer as it always does: another
/// method (HEAD included), a body, a request over a line limit, a missing or
/// wrong token, a malformed key or condition. The router then refuses those
/// with its usual status.
pub fn plain_get<B: hyper::body::Body>(
    request: &axum::http::Request<B>,
    token: Option<&crate::auth::Token>,
) -> Option<(String, Condition)> {
    let headers = request.headers();
    if request.method() != axum::http::Method::GET
        || !request.uri().path().starts_with(key::KV_PREFIX)
        || !request.body().is_end_stream()
        || over_line_limits(request.uri(), headers).is_some()
        || token.is_some_and(|token| !token.authorizes(headers.get(header::AUTHORIZATION)))
    {
        return None;
    }
    let key = key::decode_path(request.uri().path()).ok()?;
    let if_none_match = parse_condition(headers, &header::IF_NONE_MATCH).ok()?;
    Some((key, if_none_match))
}

/// The route of a single key, as routes and metrics name it.
pub const KEY_ROUTE: &str = "/kv/{*key}";

/// kv-server's [`Shortcut`](crate::serve::Shortcut): `GET /kv/{key}` read from
/// the store and answered as [`get_key`] would, without routing and extractors.
pub struct Reads(Arc<AppState>);

impl Reads {
    pub fn new(state: &AppState) -> Self {
        Self(Arc::new(state.clone()))
    }
}

impl crate::serve::Shortcut for Reads {
    async fn answer(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> Result<Response, hyper::Request<hyper::body::Incoming>> {
        let started = std::time::Instant::now();
        let state = &self.0;
        let Some((key, if_none_match)) = plain_get(&request, state.token.as_ref()) else {
            return Err(request);
        };
        // A store error goes the long way, to be answered (and logged) there.
        let Ok(entry) = state.store.get(&key) else {
            return Err(request);
        };
        let mut response = match entry {
            Some(entry) => {
                let not_modified = if_none_match.matches(entry.version);
                value_response(&entry, not_modified)
            }
            None => ApiError::key_not_found(&key).into_response(),
        };
        crate::middleware::finish(&mut response, false, &state.metrics, "GET", KEY_ROUTE, started);
        Ok(response)
    }
}

/// The key a request names, decoded from the raw path (never from a
/// pre-decoded parameter) so that the proxy, which uses the same function,
/// always agrees with the server.
pub struct Key(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Key {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(key::decode_path(parts.uri.path())?))
    }
}

/// Takes the whole `Request` rather than a `HeaderMap`, which axum would clone.
async fn get_key(State(state): State<Arc<AppState>>, Key(key): Key, request: Request) -> Result<Response, ApiError> {
    let entry = state.store.get(&key)?.ok_or_else(|| ApiError::key_not_found(&key))?;
    let if_none_match = parse_condition(request.headers(), &header::IF_NONE_MATCH)?;
    Ok(value_response(&entry, if_none_match.matches(entry.version)))
}

/// The response for a stored value: the raw bytes with their content type
/// and ETag, or a bodiless 304.
pub fn value_response(entry: &Entry, not_modified: bool) -> Response {
    let etag = etag(entry.version);
    if not_modified {
        let cache_control = HeaderValue::from_static("no-cache");
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag), (header::CACHE_CONTROL, cache_control)],
        )
            .into_response();
    }
    let content_type =
        HeaderValue::from_str(&entry.content_type).unwrap_or(HeaderValue::from_static(DEFAULT_CONTENT_TYPE));
    let mut response = Response::new(Body::from(entry.value.clone()));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::ETAG, etag);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

pub fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header value")
}

async fn put_key(State(state): State<Arc<AppState>>, Key(key): Key, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let precondition = precondition(&parts.headers)?;
    let content_type = content_type(&parts.headers)?;
    let value = read_body(&parts.headers, parts.version, body, state.max_value_bytes).await?;
    let op = WriteOp::Put {
        key: key.clone(),
        value,
        content_type,
        precondition,
    };
    match state.store.write(op).await? {
        WriteOutcome::Stored { revision, created } => {
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            let body = Written {
                key: &key,
                version: revision,
            };
            let mut response = (status, axum::Json(body)).into_response();
            let headers = response.headers_mut();
            headers.insert(header::ETAG, etag(revision));
            headers.insert(X_KV_REVISION.clone(), HeaderValue::from(revision));
            if created && let Ok(location) = HeaderValue::from_str(&key::encode_path(&key)) {
                headers.insert(header::LOCATION, location);
            }
            Ok(response)
        }
        WriteOutcome::PreconditionFailed { current } => Err(ApiError::precondition_failed(&key, current)),
        other => unreachable!("a put cannot end as {other:?}"),
    }
}

/// The body of a PUT's answer: serialised straight from these fields, with no
/// `serde_json::Value` map built on every write.
#[derive(serde::Serialize)]
struct Written<'a> {
    key: &'a str,
    version: u64,
}

async fn delete_key(
    State(state): State<Arc<AppState>>,
    Key(key): Key,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let op = WriteOp::Delete {
        key: key.clone(),
        precondition: precondition(&headers)?,
    };
    match state.store.write(op).await? {
        WriteOutcome::Deleted { revision } => Ok((
            StatusCode::NO_CONTENT,
            [(X_KV_REVISION.clone(), HeaderValue::from(revision))],
        )
            .into_response()),
        WriteOutcome::NotFound => Err(ApiError::key_not_found(&key)),
        WriteOutcome::PreconditionFailed { current } => Err(ApiError::precondition_failed(&key, current)),
        WriteOutcome::Stored { .. } => unreachable!("a delete cannot store"),
    }
}

/// Reads a PUT body, refusing it as soon as it is known to be too large.
pub async fn read_body(headers: &HeaderMap, version: Version, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match headers.get(header::CONTENT_LENGTH) {
        Some(length) => {
            let length: u64 = length
                .to_str()
                .ok()
                .and_then(|l| l.parse().ok())
                .ok_or_else(|| ApiError::bad_request("Content-Length is not a number"))?;
            if length > limit as u64 {
                return Err(ApiError::too_large(limit));
            }
        }
        // HTTP/2 frames its own bodies; HTTP/1 needs a length or chunked encoding.
        None if version < Version::HTTP_2 && !headers.contains_key(header::TRANSFER_ENCODING) => {
            return Err(ApiError::new(
                StatusCode::LENGTH_REQUIRED,
                "length_required",
                "a PUT needs a Content-Length header (or chunked transfer encoding)",
            ));
        }
        None => {}
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large(limit)),
        // The timeout arrives wrapped in the body's own error type: look down the chain.
        Err(err)
            if std::iter::successors(Some(&*err as &(dyn std::error::Error + 'static)), |e| e.source())
                .any(|e| e.is::<tower_http::timeout::TimeoutError>()) =>
        {
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body did not arrive in time (--request-timeout)",
            ))
        }
        Err(err) => Err(ApiError::bad_request(format!(
            "the request body could not be read: {err}"
        ))),
    }
}

/// The content type to store: the request's, or `application/octet-stream`.
fn content_type(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(DEFAULT_CONTENT_TYPE.to_owned());
    };
    match value.to_str() {
        Ok(text) if !text.trim().is_empty() && text.len() <= 255 => Ok(text.trim().to_owned()),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_content_type",
            "Content-Type must be printable ASCII of at most 255 bytes, like text/plain",
        )),
    }
}

fn precondition(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    Ok(Precondition {
        if_match: parse_condition(headers, &header::IF_MATCH)?,
        if_none_match: parse_condition(headers, &header::IF_NONE_MATCH)?,
    })
}

/// Parses `If-Match` / `If-None-Match`: `*`, or a list of ETags such as `"3", "4"`.
/// Tags that are not ours (weak ones, or not numbers) can never match.
pub fn parse_condition(headers: &HeaderMap, name: &HeaderName) -> Result<Condition, ApiError> {
    let mut versions = Vec::new();
    let mut seen = false;
    for value in headers.get_all(name) {
        seen = true;
        let text = value
            .to_str()
            .map_err(|_| ApiError::bad_request(format!("{name} must be ASCII, like \"3\" or *")))?;
        for tag in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if tag == "*" {
                return Ok(Condition::Any);
            }
            // A weak tag never matches in If-Match; ours are all strong anyway.
            if let Some(version) = tag
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .and_then(|t| t.parse().ok())
            {
                versions.push(version);
            }
        }
    }
    Ok(if seen {
        Condition::Versions(versions)
    } else {
        Condition::None
    })
}

#[derive(Debug, Default, Deserialize)]
struct DumpQuery {
    prefix: Option<String>,
    limit: Option<String>,
    after: Option<String>,
    keys_only: Option<String>,
}

/// `GET /kv`: DUMP, in the shape the `Accept` header asks for.
async fn dump(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query: DumpQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|err| ApiError::bad_request(format!("the query string is malformed: {err}")))?;
    let limit = match query.limit.as_deref() {
        None => None,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Some(n),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit must be a whole number from 1 to {MAX_PAGE}"
                )));
            }
        },
    };
    let keys_only = match query.keys_only.as_deref() {
        None | Some("false" | "0") => false,
        Some("true" | "1" | "") => true,
        Some(_) => return Err(ApiError::bad_request("keys_only must be true or false")),
    };
    let accept = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok());
    let format = Format::negotiate(accept).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            "DUMP is available as application/json, application/x-ndjson, text/html or text/plain",
        )
    })?;
    let prefix = query.prefix.unwrap_or_default();
    let content_type = [(header::CONTENT_TYPE, format.content_type())];
    match format {
        Format::Json | Format::Html => {
            let limit = limit.unwrap_or(DEFAULT_PAGE);
            let scan = Scan {
                prefix: prefix.clone(),
                after: query.after,
                limit: limit + 1,
                keys_only,
            };
            let mut entries = state.store.scan(&scan)?;
            let next = if entries.len() > limit {
                entries.truncate(limit);
                entries.last().map(|e| e.key.clone())
            } else {
                None
            };
            if format == Format::Json {
                let items = entries.iter().map(|e| dump::Item::from_entry(e, keys_only)).collect();
                Ok((content_type, axum::Json(dump::Page { items, next })).into_response())
            } else {
                let total = state.store.len().ok();
                let page = dump::html_page(&entries, &prefix, limit, next.as_deref(), total);
                let csp = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'";
                Ok((content_type, [(header::CONTENT_SECURITY_POLICY, csp)], page).into_response())
            }
        }
        Format::Ndjson | Format::Text => {
            let scan = Scan {
                prefix,
                after: query.after,
                limit: limit.unwrap_or(usize::MAX),
                keys_only,
            };
            Ok((
                content_type,
                Body::from_stream(stream_entries(state.store.clone(), scan, format)),
            )
                .into_response())
        }
    }
}

/// Streams every entry of a scan in chunks, each chunk its own short read, so
/// memory stays constant however many keys there are.
fn stream_entries(
    store: Arc<dyn Store>,
    scan: Scan,
    format: Format,
) -> impl futures_util::Stream<Item = Result<Bytes, crate::store::StoreError>> {
    futures_util::stream::try_unfold(Some(scan), move |scan| {
        let store = store.clone();
        async move {
            let Some(mut scan) = scan.filter(|s| s.limit > 0) else {
                return Ok(None);
            };
            let chunk = Scan {
                limit: scan.limit.min(STREAM_CHUNK),
                ..scan.clone()
            };
            let entries = tokio::task::spawn_blocking(move || store.scan(&chunk))
                .await
                .map_err(|err| crate::store::StoreError::Unavailable(err.to_string()))??;
            let Some(last) = entries.last() else {
                return Ok(None);
            };
            let mut out = Vec::with_capacity(entries.len() * 64);
            for entry in &entries {
                match format {
                    Format::Text => out.extend_from_slice(dump::text_line(entry, scan.keys_only).as_bytes()),
                    _ => out.extend_from_slice(&dump::ndjson_line(entry, scan.keys_only)),
                }
            }
            let more = entries.len() == STREAM_CHUNK.min(scan.limit);
            scan.limit -= entries.len();
            scan.after = Some(last.key.clone());
            Ok(Some((Bytes::from(out), more.then_some(scan))))
        }
    })
}

async fn healthz(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    state.store.healthy()?;
    Ok(axum::Json(serde_json::json!({ "status": "ok", "revision": state.store.revision() })).into_response())
}

async fn metrics_page(State(state): State<Arc<AppState>>) -> Response {
    if let Ok(keys) = state.store.len() {
        state.metrics.keys.set(i64::try_from(keys).unwrap_or(i64::MAX));
    }
    metrics::exposition(&state.metrics)
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML)
}

pub async fn no_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such route; keys live under /kv/<key>, and /openapi.yaml lists every route",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see /openapi.yaml",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(target: &str, headers: &[(&str, usize)]) -> Option<(StatusCode, &'static str)> {
        let uri: axum::http::Uri = target.parse().expect("a valid target");
        let mut map = HeaderMap::new();
        for (name, len) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("a valid name");
            map.append(name, HeaderValue::from_str(&"v".repeat(*len)).expect("a valid value"));
        }
        over_line_limits(&uri, &map).map(|err| (err.status, err.code))
    }

    #[test]
    fn a_target_may_be_8_kib_and_no_longer() {
        let path = |len: usize| format!("/kv/{}", "a".repeat(len - "/kv/".len()));
        assert_eq!(refusal(&path(MAX_LINE_BYTES), &[]), None);
        assert_eq!(
            refusal(&path(MAX_LINE_BYTES + 1), &[]),
            Some((StatusCode::URI_TOO_LONG, "uri_too_long"))
        );
        let query = format!("/kv?prefix={}", "p".repeat(MAX_LINE_BYTES));
        assert_eq!(refusal(&query, &[]).map(|r| r.0), Some(StatusCode::URI_TOO_LONG));
        // An absolute target counts its scheme and authority too.
        let absolute = format!("http://kv{}", path(MAX_LINE_BYTES - "http://kv".len()));
        assert_eq!(refusal(&absolute, &[]), None);
        let absolute = format!("http://kv{}", path(MAX_LINE_BYTES - "http://kv".len() + 1));
        assert_eq!(refusal(&absolute, &[]).map(|r| r.0), Some(StatusCode::URI_TOO_LONG));
    }

    #[test]
    fn a_header_line_may_be_8_kib_and_no_longer() {
        let fits = MAX_LINE_BYTES - "x-big: ".len();
        assert_eq!(refusal("/", &[("host", 2), ("x-big", fits)]), None);
        assert_eq!(
            refusal("/", &[("host", 2), ("x-big", fits + 1)]),
            Some((StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large"))
        );
        // Repeated fields are separate lines, each within the limit.
        assert_eq!(refusal("/", &[("x-big", fits), ("x-big", fits)]), None);
    }

    #[test]
    fn at_most_100_header_fields() {
        let names: Vec<String> = (0..=MAX_HEADERS).map(|i| format!("x-h{i}")).collect();
        let fields: Vec<(&str, usize)> = names.iter().map(|name| (name.as_str(), 1)).collect();
        assert_eq!(refusal("/", &fields[..MAX_HEADERS]), None);
        assert_eq!(
            refusal("/", &fields).map(|r| r.0),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
    }
}
