//! A telnet client's socket: bytes read into a [`Framer`] (telnet negotiation
//! removed, lines bounded in length), replies written with the client's own
//! line ending.
//!
//! Replies go through an 8 KiB buffer that is written out when full, so a
//! session queues at most that much besides the reply being written (a cached
//! value is written from the cache's own bytes, not copied). A client that
//! stops reading therefore blocks its session's writes, and a write that makes
//! no progress for the write timeout fails with `TimedOut`: the session ends,
//! and its slot is free again.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub use kv_api::framing::Frame;
use kv_api::framing::Framer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};

/// How much a read asks for at a time.
const READ_CHUNK: usize = 8 * 1024;

/// The reply buffer of a session.
const WRITE_BUFFER: usize = 8 * 1024;

pub struct Connection<R, W> {
    reader: R,
    writer: BufWriter<TimedWrite<W>>,
    framer: Framer,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Connection<R, W> {
    pub fn new(reader: R, writer: W, max_line: usize) -> Self {
        Self {
            reader,
            writer: BufWriter::with_capacity(WRITE_BUFFER, TimedWrite::new(writer)),
            framer: Framer::new(max_line),
        }
    }

    /// Fails a write (a reply, a flush, the shutdown) when the client takes no
    /// byte of it for `timeout`.
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.writer.get_mut().timeout = Some(timeout);
        self
    }

    /// The next line, or `None` when the client has closed. Cancel-safe: a
    /// read that is dropped while waiting has taken nothing.
    pub async fn read_frame(&mut self) -> std::io::Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.framer.next_frame() {
                return Ok(Some(frame));
            }
            let read = self.reader.read_buf(self.framer.read_buffer(READ_CHUNK)).await?;
            if read == 0 {
                return Ok(self.framer.end());
            }
            self.framer.filled();
        }
    }

    /// Whether a whole line is already waiting: replies to pipelined
    /// commands are then sent together, after the last of them.
    pub fn has_frame(&self) -> bool {
        self.framer.has_frame()
    }

    /// Queues one reply line; `flush` sends it.
    pub async fn write_line(&mut self, text: &[u8]) -> std::io::Result<()> {
        self.write_parts(&[text]).await
    }

    /// Queues one reply line made of `parts`, without joining them first.
    pub async fn write_parts(&mut self, parts: &[&[u8]]) -> std::io::Result<()> {
        for part in parts {
            self.writer.write_all(part).await?;
        }
        self.writer
            .write_all(if self.framer.crlf() { b"\r\n" } else { b"\n" })
            .await
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush().await
    }

    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        self.writer.shutdown().await
    }
}

/// A writer that fails with `TimedOut` once its peer has taken no bytes for
/// `timeout` (when set): a client that stopped reading.
struct TimedWrite<W> {
    inner: W,
    timeout: Option<Duration>,
    /// The stall timer; armed when a write finds no room, disarmed by any progress.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl<W: AsyncWrite + Unpin> TimedWrite<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            timeout: None,
            stall: None,
            armed: false,
        }
    }

    fn poll_timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut W>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(result) = poll(Pin::new(&mut self.inner), cx) {
            self.armed = false;
            return Poll::Ready(result);
        }
        let Some(timeout) = self.timeout else {
            return Poll::Pending;
        };
        if !self.armed {
            let deadline = tokio::time::Instant::now() + timeout;
            match &mut self.stall {
                Some(stall) => stall.as_mut().reset(deadline),
                None => self.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        match self.stall.as_mut().map(|stall| stall.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => {
                self.armed = false;
                let waited = humantime::format_duration(timeout);
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the client took no reply bytes for {waited} (--telnet-write-timeout)"),
                )))
            }
            _ => Poll::Pending,
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for TimedWrite<W> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.get_mut().poll_timed(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().poll_timed(cx, AsyncWrite::poll_flush)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().poll_timed(cx, AsyncWrite::poll_shutdown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_come_from_the_socket_and_replies_end_as_the_client_writes() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (reader, writer) = tokio::io::split(server);
        let mut connection = Connection::new(reader, writer, 100);
        client.write_all(b"GET a\nGET b\r\n").await.unwrap();
        drop(client.write_all(b"").await);
        assert_eq!(
            connection.read_frame().await.unwrap(),
            Some(Frame::Line(b"GET a".to_vec()))
        );
        assert!(connection.has_frame());
        assert_eq!(
            connection.read_frame().await.unwrap(),
            Some(Frame::Line(b"GET b".to_vec()))
        );
        connection.write_line(b"OK").await.unwrap();
        connection.flush().await.unwrap();
        let mut reply = [0u8; 4];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"OK\r\n");
    }

    #[tokio::test]
    async fn a_write_the_client_takes_nothing_of_times_out() {
        // A pipe whose reading end is never read: 64 bytes fit, then writes wait.
        let (_unread, writer) = tokio::io::duplex(64);
        let mut connection = Connection::new(&b""[..], writer, 100).with_write_timeout(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let written = async {
            connection.write_line(&[b'x'; 100_000]).await?;
            connection.flush().await
        };
        let err = written.await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }
}
