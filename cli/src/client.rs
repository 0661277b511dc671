//! The HTTP client the commands use: one method per API operation, and the
//! mapping from HTTP answers to [`CliError`]s a person can act on.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use kv_api::dump::Item;
use kv_api::expiry::{Expiry, Touch};
use kv_api::source::Source;
use kv_api::{ErrorBody, key};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderValue};

use crate::error::CliError;

/// The condition of a conditional write.
#[derive(Debug, Clone, Copy, Default)]
pub enum Precondition {
    #[default]
    None,
    /// Only if the key is at this version (`If-Match`).
    Version(u64),
    /// Only if the key does not exist (`If-None-Match: *`).
    Absent,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// `url` is the proxy's or the server's base URL. `KV_TOKEN`, when set, is
    /// sent as a bearer token. `cacert` adds CAs to trust for https://.
    pub fn new(url: &str, timeout: Duration, cacert: Option<&Path>) -> Result<Self, CliError> {
        let base = url.trim_end_matches('/').to_owned();
        let url =
            reqwest::Url::parse(&base).map_err(|err| CliError::Usage(format!("--url '{url}' is not a URL: {err}")))?;
        let mut headers = header::HeaderMap::new();
        if let Ok(token) = std::env::var("KV_TOKEN") {
            let value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                .map_err(|_| CliError::Usage("KV_TOKEN must be printable ASCII".into()))?;
            headers.insert(header::AUTHORIZATION, value);
        }
        let builder = kv_edge::client::builder(
            &url,
            cacert.filter(|_| url.scheme() == "https"),
            "the CA file (--cacert)",
        )
        .map_err(CliError::Usage)?;
        let http = kv_edge::client::build(
            builder
                .connect_timeout(timeout.min(Duration::from_secs(5)))
                .read_timeout(timeout)
                .default_headers(headers)
                .pool_max_idle_per_host(256),
        )
        .map_err(CliError::Usage)?;
        Ok(Self { http, base })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The value of `key`, or `None` when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, CliError> {
        Ok(self.get_from(key).await?.map(|(value, _)| value))
    }

    /// The value of `key` and, when a proxy answered, where it took it from
    /// (`X-Cache`, `Age`).
    pub async fn get_from(&self, key: &str) -> Result<Option<(Bytes, Option<Source>)>, CliError> {
        let response = self.send(self.http.get(self.key_url(key)?)).await?;
        match response.status() {
            StatusCode::OK => {
                let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
                let source = Source::from_headers(header("x-cache"), header("age"));
                let value = response.bytes().await.map_err(|e| self.unreachable(&e))?;
                Ok(Some((value, source)))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.failure(response).await),
        }
    }

    /// Stores `value`; returns the version it got.
    pub async fn put(
        &self,
        key: &str,
        value: Bytes,
        content_type: &str,
        precondition: Precondition,
    ) -> Result<u64, CliError> {
        self.put_with(key, value, content_type, precondition, Expiry::Clear)
            .await
    }

    /// Stores `value` with a deadline (or none, or the current one kept).
    pub async fn put_with(
        &self,
        key: &str,
        value: Bytes,
        content_type: &str,
        precondition: Precondition,
        expiry: Expiry,
    ) -> Result<u64, CliError> {
        let mut url = self.key_url(key)?;
        if let Some(query) = expiry.query() {
            url = format!("{url}?{query}");
        }
        let mut request = self
            .http
            .put(url)
            .header(header::CONTENT_TYPE, content_type)
            // Stated even for an empty value, which hyper would otherwise send
            // with no length at all (and HTTP/1 servers answer 411).
            .header(header::CONTENT_LENGTH, value.len())
            .body(value);
        request = match precondition {
            Precondition::None => request,
            Precondition::Version(version) => request.header(header::IF_MATCH, format!("\"{version}\"")),
            Precondition::Absent => request.header(header::IF_NONE_MATCH, "*"),
        };
        let response = self.send(request).await?;
        if !response.status().is_success() {
            return Err(self.failure(response).await);
        }
        let body = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        let version = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("version").and_then(serde_json::Value::as_u64))
            .unwrap_or(0);
        Ok(version)
    }

    /// Sends one batch (`POST /kv`, NDJSON) and returns what it did. On an
    /// error answer, the error and the server's account of it (the line it is
    /// about, and what the lines before it did) when it gave one.
    pub async fn batch(
        &self,
        body: Bytes,
    ) -> Result<kv_api::batch::Summary, (CliError, Option<kv_api::batch::BatchError>)> {
        let request = self
            .http
            .post(format!("{}{}", self.base, kv_api::routes::DUMP))
            .header(header::CONTENT_TYPE, kv_api::batch::CONTENT_TYPE)
            .header(header::CONTENT_LENGTH, body.len())
            .body(body);
        let response = self.send(request).await.map_err(|err| (err, None))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| (self.unreachable(&e), None))?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|err| {
                let message = format!(
                    "{} answered a batch with something else than its summary: {err}",
                    self.base
                );
                (CliError::Server(message), None)
            });
        }
        let refused = serde_json::from_slice::<kv_api::batch::BatchError>(&body).ok();
        let message = refused
            .as_ref()
            .map_or_else(|| format!("{} answered {status}", self.base), |r| r.message.clone());
        let err = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => CliError::Unauthorized(message),
            s if s.is_client_error() => CliError::Usage(message),
            _ => CliError::Server(message),
        };
        Err((err, refused))
    }

    /// The time `key` has left: `None` when there is no such key,
    /// `Some(None)` when it has no deadline.
    pub async fn ttl(&self, key: &str) -> Result<Option<Option<Duration>>, CliError> {
        let response = self.send(self.http.head(self.key_url(key)?)).await?;
        match response.status() {
            StatusCode::OK => Ok(Some(kv_api::expiry::parse_expires_in(response.headers()))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.failure(response).await),
        }
    }

    /// Gives `key` a new deadline, or none (`PATCH`); `false` when there was no such key.
    pub async fn touch(&self, key: &str, touch: Touch) -> Result<bool, CliError> {
        let url = format!("{}?{}", self.key_url(key)?, touch.query());
        let response = self.send(self.http.patch(url)).await?;
        match response.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.failure(response).await),
        }
    }

    /// Deletes `key`; `false` when there was no such key.
    pub async fn delete(&self, key: &str) -> Result<bool, CliError> {
        let response = self.send(self.http.delete(self.key_url(key)?)).await?;
        match response.status() {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.failure(response).await),
        }
    }

    /// Every pair under `prefix`, in key order, streamed as NDJSON items.
    pub async fn dump(
        &self,
        prefix: Option<&str>,
    ) -> Result<impl Stream<Item = Result<Item, CliError>> + use<>, CliError> {
        let mut url = format!("{}/kv", self.base);
        if let Some(prefix) = prefix {
            url = format!("{url}?prefix={}", key::encode_query_component(prefix));
        }
        let request = self.http.get(url).header(header::ACCEPT, "application/x-ndjson");
        let response = self.send(request).await?;
        if !response.status().is_success() {
            return Err(self.failure(response).await);
        }
        let base = self.base.clone();
        Ok(kv_edge::client::ndjson_items(response)
            .map_err(move |message| CliError::Server(format!("{message} (from {base})"))))
    }

    /// Opens the change feed (NDJSON); the caller reads the status.
    pub async fn watch(&self, query: &kv_api::feed::WatchQuery) -> Result<reqwest::Response, CliError> {
        let url = format!("{}{}", self.base, query.path_and_query());
        let request = self.http.get(url).header(header::ACCEPT, "application/x-ndjson");
        self.send(request).await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> Result<String, CliError> {
        let response = self.send(self.http.get(format!("{}/metrics", self.base))).await?;
        if !response.status().is_success() {
            return Err(self.failure(response).await);
        }
        response.text().await.map_err(|e| self.unreachable(&e))
    }

    fn key_url(&self, key: &str) -> Result<String, CliError> {
        key::validate(key).map_err(|err| CliError::Usage(format!("bad key: {err}")))?;
        Ok(format!("{}{}", self.base, key::encode_path(key)))
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, CliError> {
        request.send().await.map_err(|err| self.unreachable(&err))
    }

    fn unreachable(&self, err: &reqwest::Error) -> CliError {
        if err.is_timeout() {
            CliError::Unreachable(format!("{} did not answer in time (see --timeout)", self.base))
        } else if let Some(tls) = kv_edge::tls::rustls_cause(err) {
            CliError::Unreachable(format!(
                "TLS with {} failed: {tls} (a private CA or self-signed certificate needs --cacert or KV_CACERT)",
                self.base
            ))
        } else {
            CliError::Unreachable(format!(
                "cannot reach kv at {}: is it running? Start it with `kv up`, or point --url (KV_URL) at it",
                self.base
            ))
        }
    }

    /// Turns an error answer into the error of the matching exit code.
    pub(crate) async fn failure(&self, response: reqwest::Response) -> CliError {
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.message)
            .unwrap_or_else(|_| format!("{} answered {status}", self.base));
        match status {
            StatusCode::NOT_FOUND => CliError::NotFound(message),
            StatusCode::PRECONDITION_FAILED => CliError::PreconditionFailed(message),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => CliError::Unauthorized(message),
            s if s.is_client_error() => CliError::Usage(message),
            _ => CliError::Server(message),
        }
    }
}
