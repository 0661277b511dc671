//! The pages on kv-proxy: the [`Backend`] the shared pages
//! ([`kv_edge::pages`]) read and write through. Reads go through the cache,
//! writes through [`Service::write`], which invalidates the key's entry
//! before it answers, so an edit made here is seen on the next page load.
//! The HTML listing of `GET /kv` is the server's, relayed.

use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use bytes::Bytes;
use kv_api::condition::{Condition, Precondition};
use kv_api::dump::Entry;
use kv_api::expiry::Expiry;
use kv_api::{ApiError, ErrorBody};
use kv_edge::pages::{Backend, Failure, Written};

use crate::http::upstream_error;
use crate::service::{GetError, Service};
use crate::upstream::{Relayed, UpstreamError};

#[derive(Clone)]
pub struct ServiceBackend(pub Service);

impl Backend for ServiceBackend {
    async fn get(&self, key: &str) -> Result<Option<Entry>, Failure> {
        let lookup = self.0.get(key).await.map_err(|err| match err {
            GetError::Unreachable(err) => unreachable(&err),
            GetError::Refused(relayed) => refused(&relayed),
        })?;
        Ok(lookup.value.map(|value| Entry {
            key: key.to_owned(),
            value: value.value.clone(),
            content_type: value.content_type.to_str().unwrap_or_default().to_owned(),
            version: value.version,
            // The deadline as the cache counts it now (its own monotonic clock).
            expires_at: value
                .time_left()
                .map(|left| kv_api::expiry::now_ms() + left.as_millis() as u64),
        }))
    }

    async fn put(
        &self,
        key: &str,
        value: Bytes,
        content_type: &str,
        precondition: Precondition,
    ) -> Result<Written, Failure> {
        let mut headers = conditions(&precondition);
        let content_type = HeaderValue::from_str(content_type).map_err(|_| Failure {
            status: StatusCode::BAD_REQUEST,
            message: "the content type is not a valid header value".into(),
        })?;
        headers.insert(header::CONTENT_TYPE, content_type);
        let relayed = self
            .0
            // A page edits the value, not its lifetime: the key keeps its deadline.
            .write(Method::PUT, key, Expiry::Keep.query(), &headers, value)
            .await
            .map_err(|err| unreachable(&err))?;
        match relayed.status {
            StatusCode::OK | StatusCode::CREATED => Ok(Written::Done(relayed.revision())),
            StatusCode::PRECONDITION_FAILED => Ok(Written::Conflict),
            _ => Err(refused(&relayed)),
        }
    }

    async fn delete(&self, key: &str, precondition: Precondition) -> Result<Written, Failure> {
        let headers = conditions(&precondition);
        let relayed = self
            .0
            .write(Method::DELETE, key, None, &headers, Bytes::new())
            .await
            .map_err(|err| unreachable(&err))?;
        match relayed.status {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(Written::Done(None)),
            StatusCode::NOT_FOUND => Ok(Written::NotFound),
            StatusCode::PRECONDITION_FAILED => Ok(Written::Conflict),
            _ => Err(refused(&relayed)),
        }
    }
}

/// `If-Match` and `If-None-Match` for the upstream.
fn conditions(precondition: &Precondition) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, condition) in [
        (header::IF_MATCH, &precondition.if_match),
        (header::IF_NONE_MATCH, &precondition.if_none_match),
    ] {
        let value = match condition {
            Condition::None => continue,
            Condition::Any => "*".to_owned(),
            Condition::Versions(versions) => versions
                .iter()
                .map(|v| format!("\"{v}\""))
                .collect::<Vec<_>>()
                .join(", "),
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    headers
}

fn unreachable(err: &UpstreamError) -> Failure {
    let err: ApiError = upstream_error(err);
    err.into()
}

/// The upstream's own refusal, with its message when it sent one.
fn refused(relayed: &Relayed) -> Failure {
    let message = serde_json::from_slice::<ErrorBody>(&relayed.body)
        .map(|body| body.message)
        .unwrap_or_else(|_| format!("the upstream answered {}", relayed.status));
    Failure {
        status: relayed.status,
        message,
    }
}
