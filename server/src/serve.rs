//! The accept loop both programs serve HTTP with.
//!
//! `axum::serve` has no header-read timeout and no connection limit, so one
//! slow client could hold a connection forever (slowloris). This loop serves
//! each connection through hyper-util with a header-read timeout, a bounded
//! request head, and a cap on open connections; over the cap a client gets a
//! 503 and is closed, at once, instead of queueing unseen.
//!
//! Accepted connections are handed to [`Workers`]: one single-threaded
//! runtime per core, each connection living its whole life on one of them.
//!
//! A [`Shortcut`] may answer a request before the router sees it: the
//! proxy answers its cache hits that way.
//!
//! With TLS, the handshake runs in the connection's own task, never in the
//! loop, so a client that is slow to handshake cannot delay anyone's accept.
//! It is bounded by the header-read timeout: a client that connects and sends
//! nothing is cut off exactly as it is on a plain listener. (The request head
//! then gets its own header-read timeout, so connecting and sending a head may
//! take up to twice that in all.)

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::response::Response;
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::Service as _;

use crate::units::parse_duration;

/// Limits on HTTP connections, shared by kv-server and kv-proxy.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpLimits {
    /// Close a connection whose request head (request line and headers) has
    /// not fully arrived within this time.
    #[arg(long, env = "KV_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Answer 408 when a request body takes longer than this to arrive.
    #[arg(long, env = "KV_REQUEST_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// The most HTTP connections open at once; more are answered 503 and closed.
    #[arg(long, env = "KV_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            max_connections: 4096,
        }
    }
}

/// The request head may take at most this many bytes (all headers together).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most header fields in one request.
pub const MAX_HEADERS: usize = 100;
/// The longest request target, and the longest header line (name, `: ` and
/// value), in bytes. hyper bounds only the head as a whole; this per-line
/// bound is nginx's, and it is checked by `http::common_layers`. A key of
/// 1024 bytes is at most 3 KiB percent-encoded, so any valid request fits,
/// a DUMP with both `prefix` and `after` included.
pub const MAX_LINE_BYTES: usize = 8 * 1024;
/// How long shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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

/// Serves `app` on `listener` (over TLS when given an acceptor) until
/// `shutdown` resolves, then lets requests in flight finish (for up to ten
/// seconds) and returns. `shortcut` sees each request first.
pub async fn serve<S: Shortcut>(
    listener: TcpListener,
    app: Router,
    shortcut: S,
    limits: &HttpLimits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // One write(2) of head and body copied together beats writev(2) of
        // two buffers for kv's small answers: 17.9 against 22.1 µs of proxy
        // CPU per cache hit, measured A/B on this 2-core machine. A large value
        // or a DUMP chunk pays one memcpy, small beside its time on the wire.
        .writev(false)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    let front = Front {
        router: app,
        shortcut: Arc::new(shortcut),
    };
    let workers = match Workers::start() {
        Ok(workers) => Some(workers),
        Err(err) => {
            tracing::warn!(cause = %err, "cannot start the connection threads; serving on the main runtime");
            None
        }
    };
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // Stops handshakes still in progress at shutdown; graceful shutdown would
    // otherwise wait for each of them to finish or time out.
    let stopping = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(cause = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = limits.max_connections, "connection refused: too many open connections");
            // A TLS client could not read a plain-text 503, and a handshake
            // is work an overloaded server should not take on: just close.
            if tls.is_none() {
                tokio::spawn(refuse(stream));
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (builder, front, watcher) = (builder.clone(), front.clone(), graceful.watcher());
        let (tls, stopping, timeout) = (tls.clone(), stopping.clone(), limits.header_read_timeout);
        let serve_connection = move |stream: TcpStream| async move {
            let Some(acceptor) = tls else {
                return finish(watcher.watch(connection(&builder, stream, front)), peer, slot).await;
            };
            let handshake = tokio::select! {
                handshake = tokio::time::timeout(timeout, acceptor.accept(stream)) => handshake,
                () = stopping.cancelled() => return,
            };
            // Scanners, plain HTTP on this port, clients that distrust our
            // certificate: routine, so debug lines, not warnings.
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, cause = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            finish(watcher.watch(connection(&builder, stream, front)), peer, slot).await;
        };
        match &workers {
            Some(workers) => workers.spawn(stream, serve_connection),
            None => {
                tokio::spawn(serve_connection(stream));
            }
        }
    }
    drop(listener);
    stopping.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("some connections were still busy after {SHUTDOWN_GRACE:?}; closing them");
    }
}

/// Single-threaded runtimes, one per core, that accepted connections are
/// handed to in turn.
///
/// A connection lives its whole life on one of them: no work stealing and no
/// wakeups across threads on each request. On this 2-core machine that gave a
/// trivial axum server 26-55% more requests per second than tokio's default
/// multi-threaded runtime, and kv-proxy's cache hits about the same. The accept
/// loop, the connection cap and graceful shutdown stay on the main runtime.
/// The telnet adapter uses a pool of its own.
pub struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    next: AtomicUsize,
    /// Dropped with the pool: each runtime then ends, and its thread with it.
    _stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Workers {
    pub fn start() -> std::io::Result<Self> {
        let count = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let (mut handles, mut stops) = (Vec::with_capacity(count), Vec::with_capacity(count));
        for i in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            handles.push(runtime.handle().clone());
            std::thread::Builder::new()
                .name(format!("kv-http-{i}"))
                .spawn(move || {
                    let _ = runtime.block_on(stopped);
                })?;
            stops.push(stop);
        }
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            _stop: stops,
        })
    }

    /// Moves `stream` to the next runtime (its socket is registered with that
    /// runtime's reactor) and serves it there.
    pub fn spawn<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                tracing::debug!(cause = %err, "cannot hand a connection over");
                return;
            }
        };
        let handle = &self.handles[self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len()];
        handle.spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(err) => tracing::debug!(cause = %err, "cannot take a connection over"),
            }
        });
    }
}

/// The hyper service of a connection: the shortcut, then the router.
struct Front<S> {
    router: Router,
    shortcut: Arc<S>,
}

impl<S> Clone for Front<S> {
    fn clone(&self) -> Self {
        Self {
            router: self.router.clone(),
            shortcut: self.shortcut.clone(),
        }
    }
}

impl<S: Shortcut> hyper::service::Service<hyper::Request<Incoming>> for Front<S> {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let Front { mut router, shortcut } = self.clone();
        Box::pin(async move {
            match shortcut.answer(request).await {
                Ok(response) => Ok(response),
                Err(request) => router.call(request).await,
            }
        })
    }
}

/// One HTTP connection over `io`, plain or TLS; generic so the plain path
/// costs what it did before TLS existed (no boxed stream).
fn connection<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    front: Front<S>,
) -> auto::UpgradeableConnection<'static, TokioIo<I>, Front<S>, TokioExecutor>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Shortcut,
{
    builder
        .serve_connection_with_upgrades(TokioIo::new(io), front)
        .into_owned()
}

/// Runs a connection to its end, then gives its slot back.
async fn finish<E: std::fmt::Display>(
    connection: impl Future<Output = Result<(), E>>,
    peer: std::net::SocketAddr,
    slot: OwnedSemaphorePermit,
) {
    if let Err(err) = connection.await {
        tracing::debug!(%peer, cause = %err, "connection ended with an error");
    }
    drop(slot);
}

/// Tells a client over the connection cap why it is being turned away.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str =
        r#"{"error":"too_many_connections","message":"the server has too many open connections; retry shortly"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(response.as_bytes())).await;
    let _ = stream.shutdown().await;
}

/// Binds a listener with a deep accept queue, so that a burst of connections
/// waits to be accepted (and, over the cap, told why it is refused) instead of
/// being dropped by the kernel. tokio's default backlog is 1024.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
