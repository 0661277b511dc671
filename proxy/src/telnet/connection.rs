//! Bytes to lines for the telnet adapter: telnet negotiation removed, lines
//! bounded in length, replies written with the client's own line ending.
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

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};

/// One unit read from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A line, without its line ending.
    Line(Vec<u8>),
    /// A line longer than the limit; its bytes were skipped up to the newline.
    TooLong,
}

/// Telnet's "interpret as command" byte and the ones that follow it.
const IAC: u8 = 255;
const SB: u8 = 250;
const SE: u8 = 240;
const WILL: u8 = 251;
const DONT: u8 = 254;

/// Where the negotiation filter is between reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Telnet {
    Data,
    Iac,
    /// After WILL/WONT/DO/DONT: one option byte to drop.
    Option,
    /// Inside a subnegotiation, until IAC SE.
    Sub,
    SubIac,
}

/// How much a read asks for at a time.
const READ_CHUNK: usize = 8 * 1024;

/// The reply buffer of a session.
const WRITE_BUFFER: usize = 8 * 1024;

pub struct Connection<R, W> {
    reader: R,
    writer: BufWriter<TimedWrite<W>>,
    line: Vec<u8>,
    /// Bytes read (negotiation removed) and not yet cut into frames: those
    /// from `consumed` on. Frames are cut by moving `consumed`, so pipelined
    /// lines cost no copying of the ones behind them.
    pending: Vec<u8>,
    consumed: usize,
    max_line: usize,
    telnet: Telnet,
    /// Skipping the rest of an over-long line.
    skipping: bool,
    /// Whether the last byte skipped was a CR, in case the LF after it comes
    /// in the next read.
    skipped_cr: bool,
    /// Reply with CRLF (telnet) or LF (nc, scripts), as the client writes.
    crlf: bool,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Connection<R, W> {
    pub fn new(reader: R, writer: W, max_line: usize) -> Self {
        Self {
            reader,
            writer: BufWriter::with_capacity(WRITE_BUFFER, TimedWrite::new(writer)),
            line: Vec::new(),
            pending: Vec::new(),
            consumed: 0,
            max_line,
            telnet: Telnet::Data,
            skipping: false,
            skipped_cr: false,
            crlf: true,
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
            if let Some(frame) = self.take_frame() {
                return Ok(Some(frame));
            }
            // `take_frame` found no newline and took everything it was given.
            self.pending.clear();
            self.consumed = 0;
            self.pending.reserve(READ_CHUNK);
            let read = self.reader.read_buf(&mut self.pending).await?;
            if read == 0 {
                // A last line without a newline still counts.
                if !self.skipping && !self.line.is_empty() {
                    return Ok(Some(Frame::Line(std::mem::take(&mut self.line))));
                }
                return Ok(None);
            }
            self.filter();
        }
    }

    /// Whether a whole line is already waiting: replies to pipelined
    /// commands are then sent together, after the last of them.
    pub fn has_frame(&self) -> bool {
        self.pending[self.consumed..].contains(&b'\n')
    }

    /// Removes telnet negotiation from the bytes just read (all of `pending`,
    /// since a read starts with it empty), in place.
    fn filter(&mut self) {
        if self.telnet == Telnet::Data && !self.pending.contains(&IAC) {
            return;
        }
        let mut kept = 0;
        for i in 0..self.pending.len() {
            let byte = self.pending[i];
            let (next, keep) = match (self.telnet, byte) {
                (Telnet::Data, IAC) => (Telnet::Iac, false),
                (Telnet::Data, _) | (Telnet::Iac, IAC) => (Telnet::Data, true),
                (Telnet::Iac, SB) => (Telnet::Sub, false),
                (Telnet::Iac, WILL..=DONT) => (Telnet::Option, false),
                (Telnet::Iac | Telnet::Option, _) => (Telnet::Data, false),
                (Telnet::Sub, IAC) => (Telnet::SubIac, false),
                (Telnet::SubIac, SE) => (Telnet::Data, false),
                (Telnet::Sub | Telnet::SubIac, _) => (Telnet::Sub, false),
            };
            self.telnet = next;
            if keep {
                self.pending[kept] = byte;
                kept += 1;
            }
        }
        self.pending.truncate(kept);
    }

    /// Cuts a frame out of the queued bytes, if a whole one is there.
    fn take_frame(&mut self) -> Option<Frame> {
        loop {
            let rest = &self.pending[self.consumed..];
            if rest.is_empty() {
                return None;
            }
            let newline = rest.iter().position(|&b| b == b'\n');
            let take = newline.map_or(rest.len(), |i| i + 1);
            if self.skipping {
                if let Some(i) = newline {
                    // The refusal is a reply like any other: it ends as the skipped line did.
                    self.crlf = if i == 0 { self.skipped_cr } else { rest[i - 1] == b'\r' };
                    self.consumed += take;
                    self.skipping = false;
                    return Some(Frame::TooLong);
                }
                self.skipped_cr = rest.last() == Some(&b'\r');
                self.consumed += take;
                continue;
            }
            let room = self.max_line.saturating_sub(self.line.len());
            let content = newline.unwrap_or(take);
            if content > room {
                // Over the limit: forget what we have and skip to the newline.
                self.line = Vec::new();
                self.skipping = true;
                self.skipped_cr = false;
                continue;
            }
            self.line.extend_from_slice(&rest[..content]);
            self.consumed += take;
            if newline.is_some() {
                let mut line = std::mem::take(&mut self.line);
                self.crlf = line.last() == Some(&b'\r');
                if self.crlf {
                    line.pop();
                }
                return Some(Frame::Line(line));
            }
        }
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
        self.writer.write_all(if self.crlf { b"\r\n" } else { b"\n" }).await
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

    async fn frames(input: &[u8], max_line: usize) -> Vec<Frame> {
        let mut connection = Connection::new(input, tokio::io::sink(), max_line);
        let mut frames = Vec::new();
        while let Some(frame) = connection.read_frame().await.unwrap() {
            frames.push(frame);
        }
        frames
    }

    fn line(text: &str) -> Frame {
        Frame::Line(text.as_bytes().to_vec())
    }

    #[tokio::test]
    async fn lf_and_crlf_lines() {
        assert_eq!(
            frames(b"GET a\nGET b\r\nGET c", 100).await,
            vec![line("GET a"), line("GET b"), line("GET c")]
        );
    }

    #[tokio::test]
    async fn telnet_negotiation_is_not_data() {
        // IAC DO ECHO, IAC SB NAWS ... IAC SE, IAC IP, then a real line.
        let input = b"\xff\xfd\x01\xff\xfa\x1f\x00\x50\x00\x18\xff\xf0GE\xff\xf4T a\r\n";
        assert_eq!(frames(input, 100).await, vec![line("GET a")]);
        assert_eq!(
            frames(b"PUT k \xff\xff\n", 100).await,
            vec![Frame::Line(b"PUT k \xff".to_vec())]
        );
    }

    #[tokio::test]
    async fn a_skipped_line_sets_the_line_ending_of_its_refusal() {
        for (input, crlf) in [(&b"xxxxxxxxxxxx\n"[..], false), (b"xxxxxxxxxxxx\r\n", true)] {
            let mut connection = Connection::new(input, tokio::io::sink(), 10);
            assert_eq!(connection.read_frame().await.unwrap(), Some(Frame::TooLong));
            assert_eq!(connection.crlf, crlf, "{input:?}");
        }
    }

    #[tokio::test]
    async fn pipelined_lines_are_cut_one_by_one_and_announced() {
        let mut connection = Connection::new(&b"GET a\nGET b\r\nGET"[..], tokio::io::sink(), 100);
        assert_eq!(connection.read_frame().await.unwrap(), Some(line("GET a")));
        assert!(connection.has_frame(), "GET b is waiting");
        assert_eq!(connection.read_frame().await.unwrap(), Some(line("GET b")));
        assert!(!connection.has_frame(), "only half a line is left");
        assert_eq!(connection.read_frame().await.unwrap(), Some(line("GET")));
        assert_eq!(connection.read_frame().await.unwrap(), None);
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

    #[tokio::test]
    async fn an_overlong_line_is_skipped_and_the_next_one_read() {
        let mut input = vec![b'x'; 50];
        input.extend_from_slice(b"\nGET a\n");
        assert_eq!(frames(&input, 10).await, vec![Frame::TooLong, line("GET a")]);
        assert_eq!(frames(b"0123456789\n", 10).await, vec![line("0123456789")]);
    }
}
