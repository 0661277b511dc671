//! What one connection is doing: requests in hand, when it last had none
//! (its idle clock), and the lingering close an answer may ask for.
//!
//! Idle connections: hyper-util's auto builder first reads bytes to tell
//! HTTP/1 from HTTP/2 with no timer, hyper's HTTP/1 header-read timeout starts
//! only once a head has begun, and HTTP/2 has no idle timeout at all. So each
//! connection here has its own timer: a connection with no request in hand
//! for `--header-read-timeout` (since it was accepted, or since its last
//! answer was written) is shut down gracefully, whatever its protocol, and
//! dropped if that does not end it soon (an HTTP/2 client that sent only the
//! preface). HTTP/2 keep-alive PINGs find dead peers while streams are open.
//!
//! Lingering close: when an answer closes an HTTP/1 connection while its
//! request body is still arriving (a 413, a 408, a 503), closing at once
//! would make the kernel reset the connection, and a client that writes its
//! whole body before reading would see a broken pipe instead of the answer.
//! Such a connection is closed as nginx does: the answer is sent and the
//! write side shut, then what the client still sends is read and discarded
//! (up to [`LINGER_BYTES`] or [`LINGER_TIME`]) before the socket is closed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A lingering close reads and discards at most this much of what the client
/// still sends...
pub const LINGER_BYTES: usize = 2 << 20;
/// ...for at most this long.
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// What a connection's idle timer looks at: is a request in hand, and since
/// when has none been?
pub(crate) struct Activity {
    born: Instant,
    /// Requests whose handler has not answered yet.
    busy: AtomicUsize,
    /// When the connection last had no request in hand nor wrote a byte, in
    /// milliseconds after `born`.
    idle_since: AtomicU64,
    /// Set by an answer that closes the connection while its body arrives.
    pub(crate) linger: AtomicBool,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            born: Instant::now(),
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            linger: AtomicBool::new(false),
        }
    }

    /// Restarts the idle clock.
    pub(crate) fn touch(&self) {
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.idle_since.store(now, Ordering::Relaxed);
    }

    pub(crate) fn busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed) > 0
    }

    /// When the connection will have been idle too long, if nothing happens.
    fn idle_deadline(&self, timeout: Duration) -> Instant {
        self.born + Duration::from_millis(self.idle_since.load(Ordering::Relaxed)) + timeout
    }
}

/// A request in hand, from its head to its answer (or its cancellation).
pub(crate) struct Busy(pub(crate) Arc<Activity>);

impl Busy {
    pub(crate) fn new(activity: Arc<Activity>) -> Self {
        activity.busy.fetch_add(1, Ordering::Relaxed);
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves once the connection has had no request in hand, and written
/// nothing, for `timeout`.
pub(crate) async fn idle(activity: &Activity, timeout: Duration) {
    loop {
        let deadline = activity.idle_deadline(timeout);
        if Instant::now() >= deadline {
            if !activity.busy() {
                return;
            }
            // A request in hand: its body and its store or upstream have timers of their own.
            activity.touch();
            continue;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

pin_project_lite::pin_project! {
    /// A connection's socket (plain or TLS) as hyper sees it: every write
    /// restarts the idle clock (an answer still streaming is activity), and
    /// shutting it down lingers when an answer asked for it.
    pub(crate) struct Watched<I> {
        #[pin]
        io: I,
        activity: Arc<Activity>,
        linger: Option<Linger>,
    }
}

struct Linger {
    until: Pin<Box<Sleep>>,
    write_shut: bool,
    discarded: usize,
}

impl<I> Watched<I> {
    pub(crate) fn new(io: I, activity: Arc<Activity>) -> Self {
        Self {
            io,
            activity,
            linger: None,
        }
    }
}

impl<I: AsyncRead> AsyncRead for Watched<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<I: AsyncRead + AsyncWrite> AsyncWrite for Watched<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let written = this.io.poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let written = this.io.poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut this = self.project();
        if !this.activity.linger.load(Ordering::Relaxed) {
            return this.io.poll_shutdown(cx);
        }
        let linger = this.linger.get_or_insert_with(|| Linger {
            until: Box::pin(tokio::time::sleep(LINGER_TIME)),
            write_shut: false,
            discarded: 0,
        });
        if !linger.write_shut {
            // The answer and a FIN go out first: the client can read them now.
            std::task::ready!(this.io.as_mut().poll_shutdown(cx))?;
            linger.write_shut = true;
        }
        let mut scratch = [0u8; 8192];
        loop {
            if linger.until.as_mut().poll(cx).is_ready() || linger.discarded >= LINGER_BYTES {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match this.io.as_mut().poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                // The client closed (or reset): nothing left to lose.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => linger.discarded += buf.filled().len(),
            }
        }
    }
}
