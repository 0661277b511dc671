//! The per-core runtimes connections are served on.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;

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

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// How many worker runtimes [`Workers::start`] makes: one per core.
pub fn count() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

/// The index of the worker runtime this thread runs, `None` off the workers.
/// A client that keeps one connection pool per worker picks its pool by it,
/// so that a forwarded request and its upstream connection share a thread.
pub fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

impl Workers {
    pub fn start() -> std::io::Result<Self> {
        let count = count();
        let (mut handles, mut stops) = (Vec::with_capacity(count), Vec::with_capacity(count));
        for i in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            handles.push(runtime.handle().clone());
            std::thread::Builder::new()
                .name(format!("kv-http-{i}"))
                .spawn(move || {
                    WORKER.with(|worker| worker.set(Some(i)));
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
