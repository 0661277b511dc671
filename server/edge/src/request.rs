//! What handlers take from a request: the key it names, and its body within
//! the size limit.

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::Version;
use axum::http::header::{self, HeaderMap};
use axum::http::request::Parts;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use kv_api::key;
use kv_api::{ApiError, ErrorCode};

use crate::layer::BodyRefused;

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

/// The declared length of a PUT or batch body, if any: refused as soon as
/// it is over `limit` (with `too_large`'s answer), or when HTTP/1 gives
/// neither a length nor chunked encoding.
pub fn body_length(
    headers: &HeaderMap,
    version: Version,
    limit: usize,
    too_large: impl FnOnce() -> ApiError,
) -> Result<Option<u64>, ApiError> {
    match headers.get(header::CONTENT_LENGTH) {
        Some(length) => {
            let length: u64 = length
                .to_str()
                .ok()
                .and_then(|l| l.parse().ok())
                .ok_or_else(|| ApiError::bad_request("Content-Length is not a number"))?;
            if length > limit as u64 {
                return Err(too_large());
            }
            Ok(Some(length))
        }
        // HTTP/2 frames its own bodies; HTTP/1 needs a length or chunked encoding.
        None if version < Version::HTTP_2 && !headers.contains_key(header::TRANSFER_ENCODING) => Err(ApiError::new(
            ErrorCode::LengthRequired,
            "a PUT or a batch (POST /kv) needs a Content-Length header (or chunked transfer encoding)",
        )),
        None => Ok(None),
    }
}

/// Reads a PUT (or batch) body, refusing it as soon as it is known to be too large.
pub async fn read_body(headers: &HeaderMap, version: Version, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    body_length(headers, version, limit, || ApiError::too_large(limit))?;
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large(limit)),
        Err(err) => Err(body_error(&*err)),
    }
}

/// The answer for a request body that could not be read: the edge's refusal
/// (408 past `--request-timeout`, 503 over `--max-inflight-bytes`), or 400.
pub fn body_error(err: &(dyn std::error::Error + 'static)) -> ApiError {
    // The edge's refusal arrives wrapped in the body's own error type: look down the chain.
    match refusal(err) {
        Some(BodyRefused::Deadline) => ApiError::new(
            ErrorCode::RequestTimeout,
            "the request body did not arrive in time (--request-timeout)",
        ),
        Some(BodyRefused::OverBudget) => ApiError::new(
            ErrorCode::TooManyBytesInFlight,
            "request bodies in flight already hold the limit (--max-inflight-bytes); retry shortly",
        ),
        None => ApiError::bad_request(format!("the request body could not be read: {err}")),
    }
}

/// The edge's reason for stopping a body, if that is why reading it failed.
fn refusal(err: &(dyn std::error::Error + 'static)) -> Option<BodyRefused> {
    std::iter::successors(Some(err), |e| e.source()).find_map(|e| e.downcast_ref::<BodyRefused>().copied())
}
