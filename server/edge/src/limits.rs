//! The limits on a request head and on connections, shared by kv-server and
//! kv-proxy, and the check of the per-line ones.

use std::time::Duration;

use axum::http::header::HeaderMap;
use kv_api::{ApiError, ErrorCode};

use crate::units::{parse_duration, parse_size};

/// The defaults of the flags both programs take, each written once: clap
/// shows and parses these strings, and `Default` impls parse the same ones.
pub mod defaults {
    pub const HEADER_READ_TIMEOUT: &str = "30s";
    pub const REQUEST_TIMEOUT: &str = "60s";
    pub const MAX_CONNECTIONS: usize = 4096;
    pub const MAX_INFLIGHT_BYTES: &str = "256MiB";
    /// `--max-value-bytes`, on the server and the proxy alike.
    pub const MAX_VALUE_BYTES: &str = "1MiB";

    /// Parses a default for a `Default` impl; a default that does not parse
    /// is a bug caught by the first test that builds a config.
    pub fn parse<T>(text: &str, parser: fn(&str) -> Result<T, String>) -> T {
        parser(text).unwrap_or_else(|err| panic!("the default {text:?} does not parse: {err}"))
    }
}

/// Limits on HTTP connections, shared by kv-server and kv-proxy.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpLimits {
    /// Close a connection whose next request head (request line and headers)
    /// has not fully arrived within this time of connecting or of its last
    /// answer, whichever protocol it speaks: idle keep-alive and HTTP/2
    /// connections with no open stream are closed after it too.
    #[arg(long, env = "KV_HEADER_READ_TIMEOUT", default_value = defaults::HEADER_READ_TIMEOUT, value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Answer 408 when a whole request body has not arrived within this time
    /// of its head (a deadline, not a wait between chunks).
    #[arg(long, env = "KV_REQUEST_TIMEOUT", default_value = defaults::REQUEST_TIMEOUT, value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// The most HTTP connections open at once; more are answered 503 and closed.
    #[arg(long, env = "KV_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// The most bytes of request bodies held at once, being received or
    /// waiting to be written, like 256MiB; past it new writes are answered 503
    /// with Retry-After.
    #[arg(long, env = "KV_MAX_INFLIGHT_BYTES", default_value = defaults::MAX_INFLIGHT_BYTES, value_parser = parse_size)]
    pub max_inflight_bytes: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: defaults::parse(defaults::HEADER_READ_TIMEOUT, parse_duration),
            request_timeout: defaults::parse(defaults::REQUEST_TIMEOUT, parse_duration),
            max_connections: defaults::MAX_CONNECTIONS,
            max_inflight_bytes: defaults::parse(defaults::MAX_INFLIGHT_BYTES, parse_size),
        }
    }
}

/// The request head may take at most this many bytes (all headers together).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most header fields in one request.
pub const MAX_HEADERS: usize = 100;
/// The longest request target, and the longest header line (name, `: ` and
/// value), in bytes. hyper bounds only the head as a whole; this per-line
/// bound is nginx's, and it is checked by [`over_line_limits`] in the edge layer. A key of
/// 1024 bytes is at most 3 KiB percent-encoded, so any valid request fits,
/// a DUMP with both `prefix` and `after` included.
pub const MAX_LINE_BYTES: usize = 8 * 1024;
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
            ErrorCode::UriTooLong,
            format!("the request target (path and query) is {target} bytes long; it may be at most 8 KiB"),
        ));
    }
    if headers.len() > MAX_HEADERS {
        return Some(ApiError::new(
            ErrorCode::HeadersTooLarge,
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
                ErrorCode::HeadersTooLarge,
                format!("the header line '{name}: ...' is {line} bytes long; each header line may be at most 8 KiB"),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use axum::http::header::{HeaderName, HeaderValue};

    use super::*;

    fn refusal(target: &str, headers: &[(&str, usize)]) -> Option<(StatusCode, &'static str)> {
        let uri: axum::http::Uri = target.parse().expect("a valid target");
        let mut map = HeaderMap::new();
        for (name, len) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("a valid name");
            map.append(name, HeaderValue::from_str(&"v".repeat(*len)).expect("a valid value"));
        }
        over_line_limits(&uri, &map).map(|err| (err.status, err.code.as_str()))
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
