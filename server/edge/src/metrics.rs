//! Prometheus metrics for an HTTP service: requests by route and status and a
//! latency histogram. The proxy reuses this and registers its cache figures
//! in the same registry.

use axum::extract::MatchedPath;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

// Labels are `&'static str` so that recording a request allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

pub(crate) fn route_label(matched: Option<&MatchedPath>) -> &'static str {
    match matched {
        None => "unmatched",
        Some(path) => kv_api::routes::ALL
            .iter()
            .find(|route| **route == path.as_str())
            .copied()
            .unwrap_or("other"),
    }
}

pub(crate) fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::POST => "POST",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The registry plus the HTTP metrics every kv program exposes.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    /// Keys stored (server) or cached (proxy); refreshed when scraped.
    pub keys: Gauge,
}

impl Metrics {
    /// `prefix` names the program (`kv_server`, `kv_proxy`); the keys gauge is
    /// described by `keys_help`.
    pub fn new(prefix: &str, keys_help: &str) -> Self {
        let mut registry = Registry::with_prefix(prefix);
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_05, 2.0, 18)));
        let keys = Gauge::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (until the response head), by route",
            latency.clone(),
        );
        registry.register("keys", keys_help, keys.clone());
        Self {
            registry,
            requests,
            latency,
            keys,
        }
    }

    /// Registers a program's own metrics; call before sharing.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    pub(crate) fn observe(&self, method: &'static str, route: &'static str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels { method, route, status })
            .inc();
        self.latency.get_or_create(&RouteLabels { route }).observe(seconds);
    }
}

/// `GET /metrics`.
pub fn exposition(metrics: &Metrics) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}
