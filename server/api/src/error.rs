//! The one error type of the HTTP API. Every error leaves as JSON,
//! `{"error": "<code>", "message": "<for a person>"}`, with the status that
//! says whose fault it is; internal causes are logged, never sent.
//!
//! The codes are [`ErrorCode`]: one enum, so that a code cannot be spelled two
//! ways, and `openapi.yaml` lists exactly these (a test compares them).

use axum_core::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::{Deserialize, Serialize};

use crate::key::KeyError;

/// The JSON body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = ($code:literal, $status:ident),)*) => {
        /// Every stable, machine-readable error code of the API, with its status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in the order `openapi.yaml` lists them.
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as it travels in `"error"`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            /// The status every answer with this code carries.
            pub fn status(self) -> StatusCode {
                match self {
                    $(ErrorCode::$variant => StatusCode::$status,)*
                }
            }
        }
    };
}

error_codes! {
    /// The request is malformed (a query, a header, a body that cannot be read).
    BadRequest = ("bad_request", BAD_REQUEST),
    /// The path does not name a valid key.
    BadKey = ("bad_key", BAD_REQUEST),
    /// A token is needed and was not given, or is wrong.
    Unauthorized = ("unauthorized", UNAUTHORIZED),
    /// No value is stored under the key.
    NotFound = ("not_found", NOT_FOUND),
    /// No route has this path.
    NoRoute = ("no_route", NOT_FOUND),
    /// The route does not take this method.
    MethodNotAllowed = ("method_not_allowed", METHOD_NOT_ALLOWED),
    /// DUMP cannot answer in any type `Accept` allows.
    NotAcceptable = ("not_acceptable", NOT_ACCEPTABLE),
    /// The request body did not arrive within `--request-timeout`.
    RequestTimeout = ("request_timeout", REQUEST_TIMEOUT),
    /// A PUT over HTTP/1 without a length.
    LengthRequired = ("length_required", LENGTH_REQUIRED),
    /// `If-Match` or `If-None-Match` did not hold.
    PreconditionFailed = ("precondition_failed", PRECONDITION_FAILED),
    /// The value is larger than `--max-value-bytes`.
    ValueTooLarge = ("value_too_large", PAYLOAD_TOO_LARGE),
    /// The request target is longer than 8 KiB.
    UriTooLong = ("uri_too_long", URI_TOO_LONG),
    /// The Content-Type cannot be stored.
    BadContentType = ("bad_content_type", UNSUPPORTED_MEDIA_TYPE),
    /// A header line is longer than 8 KiB, or there are too many.
    HeadersTooLarge = ("headers_too_large", REQUEST_HEADER_FIELDS_TOO_LARGE),
    /// A bug: a handler panicked.
    Internal = ("internal", INTERNAL_SERVER_ERROR),
    /// The proxy's upstream could not be reached (502; 504 on a timeout).
    UpstreamUnavailable = ("upstream_unavailable", BAD_GATEWAY),
    /// The store failed, or refuses work after a failure (fail-stop).
    StoreUnavailable = ("store_unavailable", SERVICE_UNAVAILABLE),
    /// A write was sent to the store (an etcd cluster) but not confirmed in
    /// time: it may or may not have been applied (504; 503 when the
    /// connection was lost).
    OutcomeUnknown = ("outcome_unknown", GATEWAY_TIMEOUT),
    /// The store is out of space (etcd's `NOSPACE` alarm): writes are
    /// refused, nothing was written; reads and deletes still work.
    StoreFull = ("store_full", INSUFFICIENT_STORAGE),
    /// The program is shutting down.
    ShuttingDown = ("shutting_down", SERVICE_UNAVAILABLE),
    /// Over `--max-connections`.
    TooManyConnections = ("too_many_connections", SERVICE_UNAVAILABLE),
    /// Request bodies in flight hold `--max-inflight-bytes`; sent with `Retry-After`.
    TooManyBytesInFlight = ("too_many_bytes_in_flight", SERVICE_UNAVAILABLE),
    /// A watch's `since` is older than the feed's history (NDJSON; SSE gets a `reset` event).
    RevisionCompacted = ("revision_compacted", GONE),
    /// Over `--max-watchers` change-feed subscribers; sent with `Retry-After`.
    TooManyWatchers = ("too_many_watchers", SERVICE_UNAVAILABLE),
}

/// An error answer: a code, its status (usually the code's own), and a
/// message for a person.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    /// An error with the code's own status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: code.status(),
            code,
            message: message.into(),
        }
    }

    /// The same code under another status (504 for an upstream timeout).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// 404: no such key.
    pub fn key_not_found(key: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("no value is stored under the key '{key}'"))
    }

    /// 412: `If-Match` / `If-None-Match` did not hold.
    pub fn precondition_failed(key: &str, current: Option<u64>) -> Self {
        let message = match current {
            Some(version) => format!("the key '{key}' is at version {version}, which the precondition does not allow"),
            None => {
                format!("the key '{key}' does not exist, which the precondition does not allow")
            }
        };
        Self::new(ErrorCode::PreconditionFailed, message)
    }

    /// 413: the body is larger than `--max-value-bytes`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            ErrorCode::ValueTooLarge,
            format!("the value is larger than the limit of {limit} bytes (--max-value-bytes)"),
        )
    }

    /// The JSON body, for answers built by hand.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.code.as_str().to_owned(),
            message: self.message.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.as_str().to_owned(),
            message: self.message,
        };
        let json = serde_json::to_vec(&body).expect("an error body serialises");
        let mut response = (self.status, json).into_response();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if matches!(self.code, ErrorCode::TooManyBytesInFlight | ErrorCode::TooManyWatchers) {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<KeyError> for ApiError {
    fn from(err: KeyError) -> Self {
        Self::new(ErrorCode::BadKey, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{} twice", code.as_str());
            assert!(code.as_str().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
    }
}
