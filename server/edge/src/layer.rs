//! The one layer every kv HTTP front wraps around its routes.
//!
//! It does in one service, with one boxed future per request, what took six
//! tower layers and two `from_fn` middlewares (each of which boxes the inner
//! service and its future again): counting the request, the per-line limits of
//! the request head (414, 431), `nosniff`, a deadline for the body (408), the
//! byte budget of bodies in flight (503), `Connection: close` when an answer
//! leaves a body unread, and a 500 instead of a dropped connection should a
//! handler panic. On a proxy
//! cache hit, where the whole answer takes about 20 µs of CPU, the stack of
//! layers cost a fifth of it.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{MatchedPath, Request};
use axum::http::Version;
use axum::http::header::{self, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use tower::{Layer, Service};

use kv_api::{ApiError, ErrorCode};

use crate::inflight::{Budget, Reservation};
use crate::limits::HttpLimits;
use crate::metrics::Metrics;

/// What every kv HTTP front puts around its routes: JSON answers for unknown
/// routes and methods, and the [`EdgeLayer`]
/// (metrics, 414/431 for an overlong target or header line, a body deadline,
/// the in-flight byte budget, `nosniff`, a 500 on a panic). There is no timer
/// on whole requests: the head is bounded by the header-read timeout, the body
/// by `request_timeout`, and every wait after that by the store or
/// `--upstream-timeout`.
pub fn common_layers<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    metrics: Arc<Metrics>,
    limits: &HttpLimits,
) -> Router<S> {
    let budget = Budget::new(usize::try_from(limits.max_inflight_bytes).unwrap_or(usize::MAX));
    routes
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(EdgeLayer::new(metrics, limits.request_timeout, budget))
}

/// The answer for a path no route has.
pub async fn no_route() -> ApiError {
    ApiError::new(
        ErrorCode::NoRoute,
        "no such route; keys live under /kv/<key>, and /openapi.yaml lists every route",
    )
}

/// The answer for a method the route does not take.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take that method; see /openapi.yaml",
    )
}

/// Install with `Router::layer`, so that it runs after routing and the
/// matched route is known (and labels the request's metrics).
#[derive(Clone)]
pub struct EdgeLayer {
    metrics: Arc<Metrics>,
    body_timeout: Duration,
    budget: Arc<Budget>,
}

impl EdgeLayer {
    /// `body_timeout`: a request body that has not fully arrived this long
    /// after its head is answered 408. `budget`: the bytes all request bodies
    /// in flight may hold together.
    pub fn new(metrics: Arc<Metrics>, body_timeout: Duration, budget: Arc<Budget>) -> Self {
        Self {
            metrics,
            body_timeout,
            budget,
        }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    layer: EdgeLayer,
}

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let method = crate::metrics::method_label(request.method());
        let route = crate::metrics::route_label(request.extensions().get::<MatchedPath>());
        let has_body = !request.body().is_end_stream();
        // Over HTTP/1 a body left unread ends the connection; an HTTP/2 stream is just reset.
        let unread_body = has_body && request.version() < Version::HTTP_2;
        if let Some(refusal) = crate::limits::over_line_limits(request.uri(), request.headers()) {
            let mut response = refusal.into_response();
            finish(&mut response, unread_body, &self.layer.metrics, method, route, started);
            return Box::pin(std::future::ready(Ok(response)));
        }
        // A GET has no body to watch: only requests that carry one pay for the
        // wrapper, the deadline's timer and the reservation.
        let (request, body_read, reservation) = if has_body {
            // Content-Length up front, unless it could never fit: the handler
            // then refuses it by its length (413) before reading, or the
            // reservation grows as the body arrives and refuses it there.
            let declared = request.body().size_hint().exact().and_then(|n| usize::try_from(n).ok());
            let up_front = declared.filter(|n| *n <= self.layer.budget.capacity()).unwrap_or(0);
            let Some(reservation) = Reservation::take(&self.layer.budget, up_front) else {
                let mut response = self.layer.budget.refusal().into_response();
                finish(&mut response, unread_body, &self.layer.metrics, method, route, started);
                return Box::pin(std::future::ready(Ok(response)));
            };
            let (mut parts, body) = request.into_parts();
            parts.extensions.insert(reservation.clone());
            let finished = Arc::new(AtomicBool::new(false));
            let body = Body::new(WatchedBody {
                inner: body,
                deadline: tokio::time::sleep(self.layer.body_timeout),
                received: 0,
                reservation: reservation.clone(),
                finished: finished.clone(),
            });
            (Request::from_parts(parts, body), Some(finished), Some(reservation))
        } else {
            (request, None, None)
        };
        // The service that was polled ready is the one to call (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.layer.metrics.clone();
        Box::pin(async move {
            let answered = AssertUnwindSafe(async move { inner.call(request).await })
                .catch_unwind()
                .await;
            // The server has written the value, or the proxy's upstream answered.
            drop(reservation);
            let mut response = match answered {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    tracing::error!("a request handler panicked");
                    ApiError::new(ErrorCode::Internal, "internal error; the program logged it").into_response()
                }
            };
            let unread_body = unread_body && body_read.is_some_and(|finished| !finished.load(Ordering::Acquire));
            finish(&mut response, unread_body, &metrics, method, route, started);
            Ok(response)
        })
    }
}

/// What every answer gets on its way out; a [`Shortcut`](crate::shortcut::Shortcut)
/// that answers without the router calls it too.
pub fn finish(
    response: &mut Response,
    unread_body: bool,
    metrics: &Metrics,
    method: &'static str,
    route: &'static str,
    started: Instant,
) {
    let headers = response.headers_mut();
    // hyper closes a connection whose request body was left unread, but says
    // nothing; a client would then send its next request down a connection
    // about to close and see a broken pipe instead of an answer.
    if unread_body {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    headers
        .entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    metrics.observe(
        method,
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
}

/// Why the edge stopped a request body: the handler's read fails with this
/// (inside the body's error), and `read_body` answers it with its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyRefused {
    /// The body had not fully arrived by `--request-timeout` after its head.
    #[error("the request body did not arrive within --request-timeout of its head")]
    Deadline,
    /// Growing the body's reservation would pass `--max-inflight-bytes`.
    #[error("request bodies in flight hold --max-inflight-bytes")]
    OverBudget,
}

pin_project_lite::pin_project! {
    /// A request body with a deadline for the whole of it (tower-http's
    /// `TimeoutBody` restarts its timer on every chunk, so a client sending a
    /// byte every half-timeout never met it), held against the in-flight
    /// budget as it arrives, that notes when it has been read to its end.
    struct WatchedBody {
        #[pin]
        inner: Body,
        #[pin]
        deadline: tokio::time::Sleep,
        received: usize,
        reservation: Reservation,
        finished: Arc<AtomicBool>,
    }
}

impl HttpBody for WatchedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        let mut this = self.project();
        let frame = match this.inner.as_mut().poll_frame(cx) {
            Poll::Pending => {
                return match this.deadline.poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyRefused::Deadline)))),
                    Poll::Pending => Poll::Pending,
                };
            }
            Poll::Ready(frame) => frame,
        };
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            *this.received = this.received.saturating_add(data.len());
            if !this.reservation.cover(*this.received) {
                return Poll::Ready(Some(Err(axum::Error::new(BodyRefused::OverBudget))));
            }
        }
        if frame.is_none() || this.inner.is_end_stream() {
            this.finished.store(true, Ordering::Release);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::{get, put};
    use tower::ServiceExt as _;

    use super::*;
    use crate::request::read_body;

    fn app(metrics: Arc<Metrics>) -> Router {
        let routes = Router::new()
            .route("/kv/{*key}", get(|| async { "value" }))
            .route("/panic", get(panics))
            .route("/ignore", put(|| async { "not reading the body" }))
            .route(
                "/read",
                put(|request: Request| async move {
                    let (parts, body) = request.into_parts();
                    read_body(&parts.headers, parts.version, body, 1024)
                        .await
                        .map(|_| "stored")
                }),
            );
        let limits = HttpLimits {
            request_timeout: Duration::from_millis(100),
            ..HttpLimits::default()
        };
        common_layers(routes, metrics, &limits)
    }

    async fn panics() -> &'static str {
        panic!("a handler bug")
    }

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new("kv_test", "keys"))
    }

    async fn send(app: Router, request: axum::http::Request<Body>) -> Response {
        app.oneshot(request).await.unwrap()
    }

    fn put_request(path: &str, body: Body) -> axum::http::Request<Body> {
        axum::http::Request::put(path)
            .header(header::TRANSFER_ENCODING, "chunked")
            .body(body)
            .unwrap()
    }

    #[tokio::test]
    async fn every_answer_is_counted_and_says_nosniff() {
        let metrics = metrics();
        let response = send(
            app(metrics.clone()),
            axum::http::Request::get("/kv/a").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let response = send(
            app(metrics.clone()),
            axum::http::Request::get("/nowhere").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let text = metrics.render();
        assert!(
            text.contains(r#"kv_test_http_requests_total{method="GET",route="/kv/{*key}",status="200"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"status="404"} 1"#), "{text}");
    }

    #[tokio::test]
    async fn a_panicking_handler_gets_a_500_not_a_dropped_connection() {
        let response = send(
            app(metrics()),
            axum::http::Request::get("/panic").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }

    #[tokio::test]
    async fn an_answer_that_leaves_the_body_unread_closes_the_connection() {
        let response = send(app(metrics()), put_request("/ignore", Body::from("abc"))).await;
        assert_eq!(response.headers()[header::CONNECTION], "close");
        let response = send(app(metrics()), put_request("/read", Body::from("abc"))).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(!response.headers().contains_key(header::CONNECTION));
    }

    #[tokio::test]
    async fn a_body_that_stalls_gets_a_408() {
        let stalled = Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>());
        let response = send(app(metrics()), put_request("/read", stalled)).await;
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(response.headers()[header::CONNECTION], "close");
    }

    #[tokio::test]
    async fn an_overlong_header_line_is_refused_before_the_handler_and_counted() {
        let metrics = metrics();
        let request = axum::http::Request::put("/read")
            .header(header::TRANSFER_ENCODING, "chunked")
            .header("x-big", "x".repeat(9 * 1024))
            .body(Body::from("abc"))
            .unwrap();
        let response = send(app(metrics.clone()), request).await;
        assert_eq!(response.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(response.headers()[header::CONNECTION], "close");
        assert_eq!(response.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(metrics.render().contains(r#"status="431"} 1"#));
    }
}
