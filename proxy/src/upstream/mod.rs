//! Talking to the upstream kv-server with reqwest: pooled keep-alive
//! connections, bounded time, and requests rebuilt from what we decoded.
//!
//! The upstream URL is always built from the decoded key with the same
//! encoding the server decodes ([`kv_api::key::encode_path`]), never from
//! the raw incoming path, so that a path the proxy understood one way cannot
//! reach the server meaning another. Only the headers the API defines are
//! copied across; hop-by-hop headers and framing are never forwarded, and the
//! body is re-framed with its own length (no request smuggling through us).

mod identity;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use bytes::Bytes;

pub use self::identity::StoreIdentity;

/// Why the upstream did not give a usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// Connection refused, reset, or a malformed answer: 502.
    #[error("the upstream kv-server at {upstream} cannot be reached: {cause}")]
    Unavailable { upstream: String, cause: String },
    /// No answer within `--upstream-timeout`: 504.
    #[error("the upstream kv-server at {upstream} did not answer within {timeout:?}")]
    Timeout { upstream: String, timeout: Duration },
}

/// A value read from the upstream.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub value: Bytes,
    pub content_type: HeaderValue,
    pub version: u64,
    /// The [`StoreIdentity`] generation of the store that answered.
    pub generation: u64,
    /// The key's time left (`X-Kv-Expires-In`) and deadline (`Expires`).
    pub expires_in: Option<Duration>,
    pub expires: Option<HeaderValue>,
}

/// An upstream answer passed through to the client as it came.
#[derive(Debug, Clone)]
pub struct Relayed {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Relayed {
    /// The revision a successful write took (`X-Kv-Revision`).
    pub fn revision(&self) -> Option<u64> {
        self.headers
            .get(&kv_api::condition::X_KV_REVISION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }
}

/// The result of reading one key.
#[derive(Debug)]
pub enum Fetch {
    Found(Fetched),
    NotFound,
    /// Any other answer (503 from a failed store, say): passed through, never cached.
    Failed(Relayed),
}

/// Headers of an upstream answer that the client should see.
const PASSED_HEADERS: [HeaderName; 10] = [
    header::CONTENT_TYPE,
    header::ETAG,
    header::LOCATION,
    header::CACHE_CONTROL,
    header::CONTENT_SECURITY_POLICY,
    header::ALLOW,
    header::RETRY_AFTER,
    HeaderName::from_static("x-kv-revision"),
    HeaderName::from_static("x-kv-expires-in"),
    header::EXPIRES,
];

/// Request headers a client may send that the upstream needs.
const FORWARDED_HEADERS: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::ACCEPT,
];

/// How long an idle upstream connection stays in the pool. kv-server closes a
/// kept-alive connection that sends no request head within its
/// `--header-read-timeout` (hyper starts that timer as it waits for the next
/// head; 30 s by default). Reusing a connection the server is closing fails
/// with no byte answered, so the pool lets connections go well before that.
/// (A server run with a shorter `--header-read-timeout` is covered by the one
/// retry of a GET in [`Upstream::read`].)
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// The longest a batch (`POST /kv`) may take upstream, on top of
/// `--upstream-timeout`: its body streams through as the client sends it,
/// which the edge bounds by its default `--request-timeout`.
pub const BATCH_BODY_TIME: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Upstream {
    /// One client, and so one connection pool, per worker runtime
    /// ([`kv_edge::workers`]), and one more for every other thread: reqwest
    /// drives a connection on the runtime that opened it, so a shared pool
    /// hands a worker connections driven by another thread, and every
    /// forwarded request then wakes that thread and back.
    clients: Arc<[reqwest::Client]>,
    /// For batches: no read timeout (a batch's answer comes only after its
    /// whole body has streamed through and been written), a total one instead.
    batch_client: reqwest::Client,
    /// For the one retry of a GET: it never pools, so the retry is on a new
    /// connection, not on another pooled one the server may be closing too.
    fresh_client: reqwest::Client,
    base: String,
    timeout: Duration,
    token: Option<HeaderValue>,
    identity: Arc<StoreIdentity>,
}

impl Upstream {
    /// `upstream` is the server's base URL, like `http://127.0.0.1:7000` or
    /// `https://kv.internal:7000`; `ca_file` holds extra CAs to trust for it.
    pub fn new(upstream: &str, timeout: Duration, token: Option<&str>, ca_file: Option<&Path>) -> Result<Self, String> {
        let base = upstream.trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base).map_err(|err| format!("--upstream '{upstream}' is not a URL: {err}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("--upstream '{upstream}' must be an http:// or https:// URL"));
        }
        if url.path() != "/" || url.query().is_some() {
            return Err(format!(
                "--upstream '{upstream}' must be a base URL such as http://127.0.0.1:7000, without a path"
            ));
        }
        let builder = || {
            Ok::<_, String>(
                kv_edge::client::builder(&url, ca_file, "--upstream-ca-file")?
                    .connect_timeout(timeout.min(Duration::from_secs(2)))
                    .pool_max_idle_per_host(1024)
                    .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                    .http1_only(),
            )
        };
        let clients = (0..=kv_edge::workers::count())
            .map(|_| kv_edge::client::build(builder()?.read_timeout(timeout)))
            .collect::<Result<Arc<[_]>, String>>()?;
        let batch_client = kv_edge::client::build(builder()?)?;
        let fresh_client = kv_edge::client::build(builder()?.read_timeout(timeout).pool_max_idle_per_host(0))?;
        let token = token
            .map(|t| {
                HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| "the upstream token is not printable ASCII".to_owned())
            })
            .transpose()?;
        Ok(Self {
            clients,
            batch_client,
            fresh_client,
            base,
            timeout,
            token,
            identity: Arc::default(),
        })
    }

    /// This thread's client: its worker's, or the last one off the workers.
    fn client(&self) -> &reqwest::Client {
        let last = self.clients.len() - 1;
        &self.clients[kv_edge::workers::current().map_or(last, |i| i.min(last))]
    }

    pub fn upstream(&self) -> &str {
        &self.base
    }

    /// The identity of the upstream's store, as its answers say it.
    pub fn identity(&self) -> &Arc<StoreIdentity> {
        &self.identity
    }

    /// Reads one key. A GET that fails before any byte of an answer came back
    /// (a pooled connection the server closed as we reused it) is sent once
    /// more, on a new connection, within what is left of the timeout: a GET is
    /// safe to repeat.
    pub async fn read(&self, key: &str) -> Result<Fetch, UpstreamError> {
        let path = kv_api::key::encode_path(key);
        let started = Instant::now();
        let response = match self.request(Method::GET, &path).send().await {
            Ok(response) => response,
            Err(err) if failed_before_an_answer(&err) && started.elapsed() < self.timeout => {
                tracing::debug!(cause = %kv_edge::client::with_causes(&err), "upstream GET failed before an answer; retrying once");
                self.request_on(&self.fresh_client, Method::GET, &path)
                    .timeout(self.timeout.saturating_sub(started.elapsed()))
                    .send()
                    .await
                    .map_err(|e| self.error(e))?
            }
            Err(err) => return Err(self.error(err)),
        };
        let generation = self.identity.observe(&self.base, response.headers());
        match response.status() {
            StatusCode::OK => {
                let content_type = response
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .cloned()
                    .unwrap_or(HeaderValue::from_static(kv_api::dump::DEFAULT_CONTENT_TYPE));
                let version = response
                    .headers()
                    .get(header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim_matches('"').parse().ok());
                let Some(version) = version else {
                    return Err(UpstreamError::Unavailable {
                        upstream: self.base.clone(),
                        cause: "a value came back without a numeric ETag; is the upstream a kv-server?".into(),
                    });
                };
                let expires_in = kv_api::expiry::parse_expires_in(response.headers());
                let expires = response.headers().get(header::EXPIRES).cloned();
                let value = response.bytes().await.map_err(|e| self.error(e))?;
                Ok(Fetch::Found(Fetched {
                    value,
                    content_type,
                    version,
                    generation,
                    expires_in,
                    expires,
                }))
            }
            StatusCode::NOT_FOUND => Ok(Fetch::NotFound),
            _ => Ok(Fetch::Failed(self.collect(response).await?)),
        }
    }

    /// Sends a write (PUT, PATCH or DELETE) of one key and returns the
    /// upstream's answer. `query`: rebuilt from what the proxy parsed
    /// ([`kv_api::expiry`]), never the client's raw query.
    pub async fn write(
        &self,
        method: Method,
        key: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Relayed, UpstreamError> {
        let mut path = kv_api::key::encode_path(key);
        if let Some(query) = query {
            path = format!("{path}?{query}");
        }
        let is_put = method == Method::PUT;
        let mut request = self.request(method, &path);
        for name in &FORWARDED_HEADERS {
            for value in headers.get_all(name) {
                request = request.header(name, value);
            }
        }
        if is_put {
            // Stated even for an empty value, which hyper would otherwise send
            // with no length at all (and the server answers 411).
            request = request.header(header::CONTENT_LENGTH, body.len());
        }
        let response = request.body(body).send().await.map_err(|e| self.error(e))?;
        self.collect(response).await
    }

    /// Sends a batch (`POST /kv`), its body streamed as it comes, and returns
    /// the upstream's answer. `length`: the client's `Content-Length`, passed
    /// on (otherwise the body goes chunked).
    pub async fn batch(
        &self,
        headers: &HeaderMap,
        body: reqwest::Body,
        length: Option<u64>,
    ) -> Result<Relayed, UpstreamError> {
        let timeout = self.timeout + BATCH_BODY_TIME;
        let mut request = self
            .batch_client
            .post(format!("{}{}", self.base, kv_api::routes::DUMP))
            .timeout(timeout);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, token);
        }
        if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        if let Some(length) = length {
            request = request.header(header::CONTENT_LENGTH, length);
        }
        let response = request.body(body).send().await.map_err(|err| {
            if err.is_timeout() {
                UpstreamError::Timeout {
                    upstream: self.base.clone(),
                    timeout,
                }
            } else {
                self.error(err)
            }
        })?;
        self.collect(response).await
    }

    /// Starts a streamed request (DUMP), passing the query string and `Accept` on.
    pub async fn stream(
        &self,
        path_and_query: &str,
        accept: Option<&HeaderValue>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut request = self.client().get(format!("{}{path_and_query}", self.base));
        if let Some(accept) = accept {
            request = request.header(header::ACCEPT, accept);
        }
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, token);
        }
        let response = request.send().await.map_err(|e| self.error(e))?;
        self.identity.observe(&self.base, response.headers());
        Ok(response)
    }

    /// Opens the change feed (`path_and_query` is a watch's), NDJSON. No
    /// overall timeout: the stream lasts; the caller bounds its silences.
    pub async fn watch(&self, path_and_query: &str) -> Result<reqwest::Response, UpstreamError> {
        let ndjson = HeaderValue::from_static("application/x-ndjson");
        self.watch_as(path_and_query, Some(&ndjson), None).await
    }

    /// Opens the change feed as a client asked for it (`Accept`, `Last-Event-ID`).
    pub async fn watch_as(
        &self,
        path_and_query: &str,
        accept: Option<&HeaderValue>,
        last_event_id: Option<&HeaderValue>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut request = self.client().get(format!("{}{path_and_query}", self.base));
        if let Some(accept) = accept {
            request = request.header(header::ACCEPT, accept);
        }
        if let Some(id) = last_event_id {
            request = request.header(&kv_api::feed::LAST_EVENT_ID, id);
        }
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, token);
        }
        let response = request.send().await.map_err(|e| self.error(e))?;
        self.identity.observe(&self.base, response.headers());
        Ok(response)
    }

    /// Whether the upstream answers its health check.
    pub async fn healthy(&self) -> bool {
        let request = self
            .request(Method::GET, "/healthz")
            .timeout(self.timeout.min(Duration::from_secs(2)));
        match request.send().await {
            Ok(response) => {
                self.identity.observe(&self.base, response.headers());
                response.status().is_success()
            }
            Err(_) => false,
        }
    }

    /// Copies the headers the client should see from an upstream answer.
    pub fn relayed_headers(from: &HeaderMap) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for name in &PASSED_HEADERS {
            for value in from.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.request_on(self.client(), method, path)
    }

    fn request_on(&self, client: &reqwest::Client, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = client
            .request(method, format!("{}{path}", self.base))
            .timeout(self.timeout);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, token);
        }
        request
    }

    async fn collect(&self, response: reqwest::Response) -> Result<Relayed, UpstreamError> {
        let status = response.status();
        self.identity.observe(&self.base, response.headers());
        let headers = Self::relayed_headers(response.headers());
        let body = response.bytes().await.map_err(|e| self.error(e))?;
        Ok(Relayed { status, headers, body })
    }

    fn error(&self, err: reqwest::Error) -> UpstreamError {
        if err.is_timeout() {
            UpstreamError::Timeout {
                upstream: self.base.clone(),
                timeout: self.timeout,
            }
        } else if let Some(tls) = kv_edge::tls::rustls_cause(&err) {
            // The rustls error alone says what to fix (an unknown issuer, a
            // name mismatch); reqwest's wrapping around it only adds noise.
            UpstreamError::Unavailable {
                upstream: self.base.clone(),
                cause: format!("TLS handshake failed: {tls}"),
            }
        } else {
            UpstreamError::Unavailable {
                upstream: self.base.clone(),
                cause: kv_edge::client::with_causes(&err),
            }
        }
    }
}

/// Whether a request failed before any byte of an answer came back, on a
/// connection that was open: closed or reset under it. Not a timeout, and not
/// a failure to connect (sending again would fail the same way).
fn failed_before_an_answer(err: &reqwest::Error) -> bool {
    if err.is_timeout() || err.is_connect() {
        return false;
    }
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        if let Some(hyper) = inner.downcast_ref::<hyper::Error>()
            && (hyper.is_incomplete_message() || hyper.is_canceled())
        {
            return true;
        }
        if let Some(io) = inner.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        source = inner.source();
    }
    false
}
