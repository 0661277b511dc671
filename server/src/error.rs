//! The one error type of the HTTP API. Every error leaves as JSON,
//! `{"error": "<code>", "message": "<for a person>"}`, with the status that
//! says whose fault it is; internal causes are logged, never sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::key::KeyError;
use crate::store::StoreError;

/// The JSON body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// A stable, machine-readable code.
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404: no such key.
    pub fn key_not_found(key: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no value is stored under the key '{key}'"),
        )
    }

    /// 412: `If-Match` / `If-None-Match` did not hold.
    pub fn precondition_failed(key: &str, current: Option<u64>) -> Self {
        let message = match current {
            Some(version) => format!("the key '{key}' is at version {version}, which the precondition does not allow"),
            None => {
                format!("the key '{key}' does not exist, which the precondition does not allow")
            }
        };
        Self::new(StatusCode::PRECONDITION_FAILED, "precondition_failed", message)
    }

    /// 413: the body is larger than `--max-value-bytes`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!("the value is larger than the limit of {limit} bytes (--max-value-bytes)"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_owned(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<KeyError> for ApiError {
    fn from(err: KeyError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_key", err.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(ref cause) => {
                tracing::error!(cause = %cause, "store unavailable");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", err.to_string())
            }
            StoreError::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down; retry against the new instance",
            ),
        }
    }
}
