//! Talking to the upstream kv-server with reqwest: pooled keep-alive
//! connections, bounded time, and requests rebuilt from what we decoded.
//!
//! The upstream URL is always built from the decoded key with the same
//! encoding the server decodes ([`kv_api::key::encode_path`]), never from
//! the raw incoming path, so that a path the proxy understood one way cannot
//! reach the server meaning another. Only the headers the API defines are
//! copied across; hop-by-hop headers and framing are never forwarded, and the
//! body is re-framed with its own length (no request smuggling through us).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use bytes::Bytes;

/// Why the upstream did not give a usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ForwardError {
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
}

/// An upstream answer passed through to the client as it came.
#[derive(Debug, Clone)]
pub struct Passed {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Passed {
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
pub enum Read {
    Found(Fetched),
    NotFound,
    /// Any other answer (503 from a failed store, say): passed through, never cached.
    Other(Passed),
}

/// The identity of the store behind the upstream, as its answers last said
/// (`X-Kv-Store-Id`, see `kv-server`'s `store::identity`), and a generation that
/// moves on each change.
///
/// Revisions are numbered per store: a server restarted on an empty or
/// restored data directory counts from an earlier revision again, and cached
/// versions from the old store would win the ordering rule against the new
/// store's writes. So a change of identity flushes the cache (the hook set
/// with [`StoreIdentity::on_change`]), and an entry read from an older
/// generation is never served as fresh, even one a fill in flight inserts
/// after the flush.
#[derive(Default)]
pub struct StoreIdentity {
    last: Mutex<Option<HeaderValue>>,
    generation: AtomicU64,
    on_change: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl StoreIdentity {
    /// The generation of the store seen last.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Sets what to do when the identity changes (flush the cache); once.
    pub fn on_change(&self, hook: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_change.set(Box::new(hook));
    }

    /// Notes the identity an answer carried (an answer without one, from an
    /// older server, changes nothing) and returns the generation the answer
    /// belongs to.
    pub fn observe(&self, upstream: &str, headers: &HeaderMap) -> u64 {
        let Some(id) = headers.get(&kv_api::condition::X_KV_STORE_ID) else {
            return self.generation();
        };
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match last.as_ref() {
            Some(seen) if seen == id => {}
            None => *last = Some(id.clone()),
            Some(seen) => {
                tracing::warn!(
                    upstream,
                    was = ?seen,
                    now = ?id,
                    "the upstream's store id changed (a new or restored data directory): \
                     its revisions cannot be compared with the cached ones; flushing the cache"
                );
                *last = Some(id.clone());
                self.generation.fetch_add(1, Ordering::AcqRel);
                if let Some(hook) = self.on_change.get() {
                    hook();
                }
            }
        }
        self.generation()
    }
}

/// Headers of an upstream answer that the client should see.
const PASSED_HEADERS: [HeaderName; 8] = [
    header::CONTENT_TYPE,
    header::ETAG,
    header::LOCATION,
    header::CACHE_CONTROL,
    header::CONTENT_SECURITY_POLICY,
    header::ALLOW,
    header::RETRY_AFTER,
    HeaderName::from_static("x-kv-revision"),
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
/// retry of a GET in [`Forward::read`].)
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone)]
pub struct Forward {
    client: reqwest::Client,
    base: String,
    timeout: Duration,
    token: Option<HeaderValue>,
    identity: Arc<StoreIdentity>,
}

impl Forward {
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
        kv_edge::tls::install_crypto_provider();
        let builder = match (url.scheme(), ca_file) {
            // No TLS will be spoken, so do not load the system's trust store:
            // a bare machine without one would fail to build the client.
            ("http", None) => reqwest::Client::builder().tls_certs_only([]),
            // Refused rather than ignored: whoever names a CA expects the
            // traffic to be encrypted, and it would not be.
            ("http", Some(_)) => {
                return Err(format!(
                    "--upstream-ca-file is set but --upstream '{upstream}' is not https://; use https:// or drop the CA file"
                ));
            }
            // The system's trust store (reqwest's platform verifier), plus the
            // CA file if any, so a publicly trusted upstream works either way.
            (_, ca_file) => reqwest::Client::builder().tls_certs_merge(trusted_roots(ca_file, "upstream CA file")?),
        };
        let client = builder
            // A proxy must not be redirected, nor proxied by whatever HTTP_PROXY says.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .read_timeout(timeout)
            .pool_max_idle_per_host(1024)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .tcp_nodelay(true)
            .http1_only()
            .build()
            .map_err(|err| format!("cannot build the HTTP client: {}", with_causes(&err)))?;
        let token = token
            .map(|t| {
                HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| "the upstream token is not printable ASCII".to_owned())
            })
            .transpose()?;
        Ok(Self {
            client,
            base,
            timeout,
            token,
            identity: Arc::default(),
        })
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
    pub async fn read(&self, key: &str) -> Result<Read, ForwardError> {
        let path = kv_api::key::encode_path(key);
        let started = Instant::now();
        let response = match self.request(Method::GET, &path).send().await {
            Ok(response) => response,
            Err(err) if failed_before_an_answer(&err) && started.elapsed() < self.timeout => {
                tracing::debug!(cause = %with_causes(&err), "upstream GET failed before an answer; retrying once");
                self.request(Method::GET, &path)
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
                    return Err(ForwardError::Unavailable {
                        upstream: self.base.clone(),
                        cause: "a value came back without a numeric ETag; is the upstream a kv-server?".into(),
                    });
                };
                let value = response.bytes().await.map_err(|e| self.error(e))?;
                Ok(Read::Found(Fetched {
                    value,
                    content_type,
                    version,
                    generation,
                }))
            }
            StatusCode::NOT_FOUND => Ok(Read::NotFound),
            _ => Ok(Read::Other(self.collect(response).await?)),
        }
    }

    /// Sends a write (PUT or DELETE) of one key and returns the upstream's answer.
    pub async fn write(
        &self,
        method: Method,
        key: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Passed, ForwardError> {
        let path = kv_api::key::encode_path(key);
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

    /// Starts a streamed request (DUMP), passing the query string and `Accept` on.
    pub async fn stream(
        &self,
        path_and_query: &str,
        accept: Option<&HeaderValue>,
    ) -> Result<reqwest::Response, ForwardError> {
        let mut request = self.client.get(format!("{}{path_and_query}", self.base));
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
    pub fn passed_headers(from: &HeaderMap) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for name in &PASSED_HEADERS {
            for value in from.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .timeout(self.timeout);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, token);
        }
        request
    }

    async fn collect(&self, response: reqwest::Response) -> Result<Passed, ForwardError> {
        let status = response.status();
        self.identity.observe(&self.base, response.headers());
        let headers = Self::passed_headers(response.headers());
        let body = response.bytes().await.map_err(|e| self.error(e))?;
        Ok(Passed { status, headers, body })
    }

    fn error(&self, err: reqwest::Error) -> ForwardError {
        if err.is_timeout() {
            ForwardError::Timeout {
                upstream: self.base.clone(),
                timeout: self.timeout,
            }
        } else if let Some(tls) = kv_edge::tls::rustls_cause(&err) {
            // The rustls error alone says what to fix (an unknown issuer, a
            // name mismatch); reqwest's wrapping around it only adds noise.
            ForwardError::Unavailable {
                upstream: self.base.clone(),
                cause: format!("TLS handshake failed: {tls}"),
            }
        } else {
            ForwardError::Unavailable {
                upstream: self.base.clone(),
                cause: with_causes(&err),
            }
        }
    }
}

/// The certificates in a CA file (`what` names it in messages), as reqwest
/// takes them; the CLI's `--cacert` uses this too.
pub fn trusted_roots(ca_file: Option<&Path>, what: &'static str) -> Result<Vec<reqwest::Certificate>, String> {
    let Some(path) = ca_file else {
        return Ok(Vec::new());
    };
    kv_edge::tls::read_certificates(path, what)
        .map_err(|err| err.to_string())?
        .iter()
        .map(|der| reqwest::Certificate::from_der(der))
        .collect::<Result<_, _>>()
        .map_err(|err| format!("{what} {}: {err}", path.display()))
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

/// An error and each of its sources, for reqwest, whose own message
/// ("builder error", "error sending request") leaves out what went wrong.
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text = format!("{text}: {inner}");
        source = inner.source();
    }
    text
}
