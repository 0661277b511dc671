//! Answers some requests before the router: the proxy's cache hits and the
//! server's plain GETs.

use std::future::Future;

use axum::http::header;
use axum::response::Response;
use hyper::body::Incoming;
use kv_api::condition::Condition;
use kv_api::key;

use crate::auth::Token;
use crate::limits::over_line_limits;

/// Answers some requests before the router does, and hands it the rest.
///
/// It exists for the proxy's cache hits: a hit is a lookup and a prebuilt
/// answer, about half the CPU of routing and extracting the same request
/// through axum (ARCHITECTURE.md, "GET through the proxy"). Whatever it does not
/// answer exactly as the router would (a miss, a malformed key, a request over a
/// limit), it gives back untouched.
pub trait Shortcut: Send + Sync + 'static {
    fn answer(
        &self,
        request: hyper::Request<Incoming>,
    ) -> impl Future<Output = Result<Response, hyper::Request<Incoming>>> + Send;
}

/// No shortcut: every request goes to the router.
impl Shortcut for () {
    fn answer(
        &self,
        request: hyper::Request<Incoming>,
    ) -> impl Future<Output = Result<Response, hyper::Request<Incoming>>> + Send {
        std::future::ready(Err(request))
    }
}

/// A plain `GET /kv/{key}` that a [`Shortcut`] may
/// answer without the router: its key and `If-None-Match`.
///
/// `None` for anything the router must see to answer as it always does: another
/// method (HEAD included), a body, a request over a line limit, a missing or
/// wrong token, a malformed key or condition. The router then refuses those
/// with its usual status.
pub fn plain_get<B: hyper::body::Body>(
    request: &axum::http::Request<B>,
    token: Option<&Token>,
) -> Option<(String, Condition)> {
    let headers = request.headers();
    if request.method() != axum::http::Method::GET
        || !request.uri().path().starts_with(key::KV_PREFIX)
        || !request.body().is_end_stream()
        || over_line_limits(request.uri(), headers).is_some()
        || token.is_some_and(|token| !token.authorizes(headers.get(header::AUTHORIZATION)))
        // A read that names a revision is checked, and may wait: the long way.
        || headers.contains_key(&kv_api::feed::X_KV_MIN_REVISION)
    {
        return None;
    }
    let key = key::decode_path(request.uri().path()).ok()?;
    let if_none_match = Condition::parse(headers, &header::IF_NONE_MATCH).ok()?;
    Some((key, if_none_match))
}
