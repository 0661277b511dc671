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
//! nothing is cut off exactly as it is on a plain listener.
//!
//!
//! Each connection's idle clock and its lingering close are [`crate::activity`]'s.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::http::{Version, header};
use axum::response::Response;
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service as _;

use crate::activity::{Activity, Busy, Watched, idle};
use crate::limits::{HttpLimits, MAX_HEAD_BYTES, MAX_HEADERS};
use crate::shortcut::Shortcut;
use crate::workers::Workers;

/// How long shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a connection told to close gracefully (idle, or at shutdown) may
/// take to end by itself, with no request in hand, before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
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
    // PINGs find a dead peer while streams are open; with none open, the
    // connection's idle timer closes it. A PING is a write, which restarts the
    // idle clock, so they come at twice the idle timeout: an idle connection
    // is closed before its next PING.
    let ping = limits.header_read_timeout.max(Duration::from_secs(1));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(ping * 2)
        .keep_alive_timeout(ping)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    let (router, shortcut) = (app, Arc::new(shortcut));
    let workers = match Workers::start() {
        Ok(workers) => Some(workers),
        Err(err) => {
            tracing::warn!(cause = %err, "cannot start the connection threads; serving on the main runtime");
            None
        }
    };
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Every connection's task, to wait for at shutdown.
    let tracker = TaskTracker::new();
    // Tells every connection to finish its requests in flight and close;
    // stops TLS handshakes still in progress.
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
        // The idle clock starts at accept, TLS handshake included.
        let activity = Arc::new(Activity::new());
        let front = Front {
            router: router.clone(),
            shortcut: shortcut.clone(),
            activity: activity.clone(),
        };
        let builder = builder.clone();
        let (tls, stopping, timeout) = (tls.clone(), stopping.clone(), limits.header_read_timeout);
        let tracked = tracker.clone();
        let serve_connection = move |stream: TcpStream| {
            tracked.track_future(async move {
                let Some(acceptor) = tls else {
                    let io = Watched::new(stream, activity.clone());
                    let connection = connection(&builder, io, front);
                    return finish(drive(connection, &activity, timeout, &stopping), peer, slot).await;
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
                let io = Watched::new(stream, activity.clone());
                let connection = connection(&builder, io, front);
                finish(drive(connection, &activity, timeout, &stopping), peer, slot).await;
            })
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
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        tracing::warn!("some connections were still busy after {SHUTDOWN_GRACE:?}; closing them");
    }
}

/// The hyper service of a connection: the shortcut, then the router. It
/// tells the connection's [`Activity`] when a request is in hand.
struct Front<S> {
    router: Router,
    shortcut: Arc<S>,
    activity: Arc<Activity>,
}

impl<S> Clone for Front<S> {
    fn clone(&self) -> Self {
        Self {
            router: self.router.clone(),
            shortcut: self.shortcut.clone(),
            activity: self.activity.clone(),
        }
    }
}

impl<S: Shortcut> hyper::service::Service<hyper::Request<Incoming>> for Front<S> {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let Front {
            mut router,
            shortcut,
            activity,
        } = self.clone();
        let busy = Busy::new(activity);
        // An HTTP/1 answer that closes the connection before the body has all
        // arrived needs a lingering close.
        let body_pending = request.version() < Version::HTTP_2 && !hyper::body::Body::is_end_stream(request.body());
        Box::pin(async move {
            let response = match shortcut.answer(request).await {
                Ok(response) => response,
                Err(request) => router.call(request).await?,
            };
            if body_pending && response.headers().contains_key(header::CONNECTION) {
                busy.0.linger.store(true, Ordering::Relaxed);
            }
            drop(busy);
            Ok(response)
        })
    }
}

/// Runs a connection until it ends, shutting it down gracefully when it has
/// been idle for `timeout` or when the program stops, and dropping it if it
/// has not ended [`CLOSE_GRACE`] after that with no request in hand.
async fn drive<I, S>(
    connection: auto::UpgradeableConnection<'static, TokioIo<Watched<I>>, Front<S>, TokioExecutor>,
    activity: &Activity,
    timeout: Duration,
    stopping: &CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Shortcut,
{
    let mut connection = std::pin::pin!(connection);
    let mut idle = std::pin::pin!(idle(activity, timeout));
    let mut closing: Option<Instant> = None;
    loop {
        let drop_at = closing.unwrap_or_else(|| Instant::now() + SHUTDOWN_GRACE);
        tokio::select! {
            ended = connection.as_mut() => return ended,
            () = &mut idle, if closing.is_none() => {
                tracing::debug!("closing an idle connection");
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + CLOSE_GRACE);
            }
            () = stopping.cancelled(), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + CLOSE_GRACE);
            }
            () = tokio::time::sleep_until(drop_at), if closing.is_some() => {
                if !activity.busy() {
                    return Ok(());
                }
                closing = Some(Instant::now() + CLOSE_GRACE);
            }
        }
    }
}

/// One HTTP connection over `io`, plain or TLS; generic so the plain path
/// costs what it did before TLS existed (no boxed stream).
fn connection<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    io: Watched<I>,
    front: Front<S>,
) -> auto::UpgradeableConnection<'static, TokioIo<Watched<I>>, Front<S>, TokioExecutor>
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

/// Why a listener could not be bound, in words that say what to change.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on {addr}: {cause} (is another program, or kv itself, using that port? choose another address with {flag})"
)]
pub struct BindError {
    pub addr: std::net::SocketAddr,
    /// The flag that sets this address, like `--listen`.
    pub flag: &'static str,
    pub cause: std::io::Error,
}

/// Binds a listener with a deep accept queue, so that a burst of connections
/// waits to be accepted (and, over the cap, told why it is refused) instead of
/// being dropped by the kernel. tokio's default backlog is 1024. `flag` names
/// the flag that chose `addr`, for the error message.
pub fn bind(addr: std::net::SocketAddr, flag: &'static str) -> Result<TcpListener, BindError> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(4096)
    };
    listen().map_err(|cause| BindError { addr, flag, cause })
}
