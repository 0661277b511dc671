//! One key: `GET`, `HEAD`, `PUT`, `PATCH` and `DELETE /kv/{key}`, and the shortcut
//! that answers plain GETs before the router.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use kv_api::condition::{Condition, Precondition, X_KV_REVISION, etag};
use kv_api::dump::{DEFAULT_CONTENT_TYPE, Entry, VALUE_CSP};
use kv_api::{ApiError, ErrorCode, expiry, key, routes};
use kv_edge::request::{Key, read_body};
use kv_edge::shortcut::{Shortcut, plain_get};

use super::AppState;
use crate::store::{DeleteOutcome, PutOutcome, TouchOutcome};

/// kv-server's [`Shortcut`]: `GET /kv/{key}` read from
/// the store and answered as [`get_key`] would, without routing and extractors.
pub struct Reads(Arc<AppState>);

impl Reads {
    pub fn new(state: &AppState) -> Self {
        Self(Arc::new(state.clone()))
    }
}

impl Shortcut for Reads {
    async fn answer(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> Result<Response, hyper::Request<hyper::body::Incoming>> {
        let started = std::time::Instant::now();
        let state = &self.0;
        let Some((key, if_none_match)) = plain_get(&request, state.token.as_ref()) else {
            return Err(request);
        };
        let revision = state.store.revision();
        // A store error goes the long way, to be answered (and logged) there.
        let Ok(entry) = state.store.get(&key).await else {
            return Err(request);
        };
        let mut response = match entry {
            Some(entry) => {
                let not_modified = if_none_match.matches(entry.version);
                value_response(&entry, not_modified)
            }
            None => ApiError::key_not_found(&key).into_response(),
        };
        read_at(&mut response, revision);
        kv_edge::layer::finish(&mut response, false, &state.metrics, "GET", routes::KEY, started);
        Ok(response)
    }
}

/// Takes the whole `Request` rather than a `HeaderMap`, which axum would clone.
pub(super) async fn get_key(
    State(state): State<Arc<AppState>>,
    Key(key): Key,
    request: Request,
) -> Result<Response, ApiError> {
    // The server is the newest state there is: a revision asked for is only checked.
    kv_api::feed::min_revision(request.headers())?;
    let revision = state.store.revision();
    let entry = state
        .store
        .get(&key)
        .await?
        .ok_or_else(|| ApiError::key_not_found(&key))?;
    let if_none_match = Condition::parse(request.headers(), &header::IF_NONE_MATCH)?;
    let mut response = value_response(&entry, if_none_match.matches(entry.version));
    read_at(&mut response, revision);
    Ok(response)
}

/// Says the revision a read was made at (`X-Kv-Revision`): read before the
/// read, so every write up to it is reflected, and a client can watch from it.
fn read_at(response: &mut Response, revision: u64) {
    response
        .headers_mut()
        .insert(X_KV_REVISION.clone(), HeaderValue::from(revision));
}

/// The response for a stored value: the raw bytes with their content type
/// and ETag, or a bodiless 304; both sandboxed ([`VALUE_CSP`]).
pub fn value_response(entry: &Entry, not_modified: bool) -> Response {
    let etag = etag(entry.version);
    let sandbox = HeaderValue::from_static(VALUE_CSP);
    if not_modified {
        let cache_control = HeaderValue::from_static("no-cache");
        let mut response = (
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag),
                (header::CACHE_CONTROL, cache_control),
                (header::CONTENT_SECURITY_POLICY, sandbox),
            ],
        )
            .into_response();
        expiry_headers(response.headers_mut(), entry.expires_at);
        return response;
    }
    let content_type =
        HeaderValue::from_str(&entry.content_type).unwrap_or(HeaderValue::from_static(DEFAULT_CONTENT_TYPE));
    let mut response = Response::new(Body::from(entry.value.clone()));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::ETAG, etag);
    // `no-cache`, never a `max-age`: no cache may keep the value past its deadline.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, sandbox);
    expiry_headers(headers, entry.expires_at);
    response
}

/// `X-Kv-Expires-In` and `Expires` for a key with a deadline, counted now.
fn expiry_headers(headers: &mut HeaderMap, expires_at: Option<u64>) {
    if let Some(at) = expires_at {
        headers.extend(expiry::headers(at, expiry::now_ms()));
    }
}

pub(super) async fn put_key(
    State(state): State<Arc<AppState>>,
    Key(key): Key,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let expiry = expiry::parse_put_query(parts.uri.query())?;
    let precondition = Precondition::parse(&parts.headers)?;
    let content_type = content_type(&parts.headers)?;
    let value = read_body(&parts.headers, parts.version, body, state.max_value_bytes).await?;
    let content_type = kv_api::dump::stored_content_type(content_type, &value);
    // Counted against --max-inflight-bytes until the writer has dropped it,
    // even if this handler is dropped first (its client went away).
    let value = kv_edge::inflight::hold(&parts.extensions, value);
    match state
        .store
        .put(key.clone(), value, content_type, precondition, expiry)
        .await?
    {
        PutOutcome::Stored {
            revision,
            created,
            expires_at,
        } => {
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            let mut response = written(status, &key, revision, expires_at);
            if created && let Ok(location) = HeaderValue::from_str(&key::encode_path(&key)) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            Ok(response)
        }
        PutOutcome::PreconditionFailed { current } => Err(ApiError::precondition_failed(&key, current)),
    }
}

/// `PATCH /kv/{key}?ttl=30s` (or `?persist=true`): a new deadline for the
/// key, its value untouched; a write with a revision of its own. A missing or
/// expired key is 404.
pub(super) async fn patch_key(
    State(state): State<Arc<AppState>>,
    Key(key): Key,
    request: Request,
) -> Result<Response, ApiError> {
    let touch = expiry::parse_patch_query(request.uri().query())?;
    let precondition = Precondition::parse(request.headers())?;
    match state.store.touch(key.clone(), touch, precondition).await? {
        TouchOutcome::Touched { revision, expires_at } => Ok(written(StatusCode::OK, &key, revision, expires_at)),
        TouchOutcome::NotFound => Err(ApiError::key_not_found(&key)),
        TouchOutcome::PreconditionFailed { current } => Err(ApiError::precondition_failed(&key, current)),
    }
}

/// The answer to a PUT or PATCH that stored `key` at `revision`.
fn written(status: StatusCode, key: &str, revision: u64, expires_at: Option<u64>) -> Response {
    let body = Written {
        key,
        version: revision,
        expires_at: expires_at.map(expiry::format_rfc3339),
    };
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag(revision));
    headers.insert(X_KV_REVISION.clone(), HeaderValue::from(revision));
    expiry_headers(headers, expires_at);
    response
}

/// The body of a PUT's answer: serialised straight from these fields, with no
/// `serde_json::Value` map built on every write.
#[derive(serde::Serialize)]
struct Written<'a> {
    key: &'a str,
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

pub(super) async fn delete_key(
    State(state): State<Arc<AppState>>,
    Key(key): Key,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let precondition = Precondition::parse(&headers)?;
    match state.store.delete(key.clone(), precondition).await? {
        DeleteOutcome::Deleted { revision } => Ok((
            StatusCode::NO_CONTENT,
            [(X_KV_REVISION.clone(), HeaderValue::from(revision))],
        )
            .into_response()),
        DeleteOutcome::NotFound => Err(ApiError::key_not_found(&key)),
        DeleteOutcome::PreconditionFailed { current } => Err(ApiError::precondition_failed(&key, current)),
    }
}

/// The content type the request names, or `application/octet-stream`
/// ([`kv_api::dump::stored_content_type`] then turns a form type into text).
fn content_type(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(DEFAULT_CONTENT_TYPE.to_owned());
    };
    match value.to_str() {
        Ok(text) if !text.trim().is_empty() && text.len() <= 255 => Ok(text.trim().to_owned()),
        _ => Err(ApiError::new(
            ErrorCode::BadContentType,
            "Content-Type must be printable ASCII of at most 255 bytes, like text/plain",
        )),
    }
}
