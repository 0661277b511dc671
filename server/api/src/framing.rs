//! Bytes to lines for the line protocol, without I/O: telnet negotiation
//! removed, lines bounded in length, the client's line ending noted so replies
//! can use it. The telnet adapter reads sockets into a [`Framer`]; the fuzz
//! target feeds it bytes directly.

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

/// Cuts the bytes a client sends into [`Frame`]s.
#[derive(Debug)]
pub struct Framer {
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

impl Framer {
    /// Lines longer than `max_line` bytes are skipped and reported as [`Frame::TooLong`].
    pub fn new(max_line: usize) -> Self {
        Self {
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

    /// The next whole frame among the bytes given so far, if there is one.
    pub fn next_frame(&mut self) -> Option<Frame> {
        self.take_frame()
    }

    /// The buffer the next read goes into, once [`Framer::next_frame`] has
    /// found nothing: emptied, with room for `chunk` bytes. Call
    /// [`Framer::filled`] after reading into it.
    pub fn read_buffer(&mut self, chunk: usize) -> &mut Vec<u8> {
        self.pending.clear();
        self.consumed = 0;
        self.pending.reserve(chunk);
        &mut self.pending
    }

    /// Takes in the bytes just read into [`Framer::read_buffer`].
    pub fn filled(&mut self) {
        self.filter();
    }

    /// The client has closed: a last line without a newline still counts.
    pub fn end(&mut self) -> Option<Frame> {
        (!self.skipping && !self.line.is_empty()).then(|| Frame::Line(std::mem::take(&mut self.line)))
    }

    /// Feeds `bytes` and returns every whole frame they complete: for tests
    /// and the fuzz target, which have the bytes in memory.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.take_frame() {
            frames.push(frame);
        }
        self.read_buffer(bytes.len()).extend_from_slice(bytes);
        self.filled();
        while let Some(frame) = self.take_frame() {
            frames.push(frame);
        }
        frames
    }

    /// Whether a whole line is already waiting: replies to pipelined
    /// commands are then sent together, after the last of them.
    pub fn has_frame(&self) -> bool {
        self.pending[self.consumed..].contains(&b'\n')
    }

    /// Whether the client ends its lines with CRLF (else LF), as seen last.
    pub fn crlf(&self) -> bool {
        self.crlf
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8], max_line: usize) -> Vec<Frame> {
        let mut framer = Framer::new(max_line);
        let mut frames = framer.push(input);
        frames.extend(framer.end());
        frames
    }

    fn line(text: &str) -> Frame {
        Frame::Line(text.as_bytes().to_vec())
    }

    #[test]
    fn lf_and_crlf_lines() {
        assert_eq!(
            frames(b"GET a\nGET b\r\nGET c", 100),
            vec![line("GET a"), line("GET b"), line("GET c")]
        );
    }

    #[test]
    fn telnet_negotiation_is_not_data() {
        // IAC DO ECHO, IAC SB NAWS ... IAC SE, IAC IP, then a real line.
        let input = b"\xff\xfd\x01\xff\xfa\x1f\x00\x50\x00\x18\xff\xf0GE\xff\xf4T a\r\n";
        assert_eq!(frames(input, 100), vec![line("GET a")]);
        assert_eq!(
            frames(b"PUT k \xff\xff\n", 100),
            vec![Frame::Line(b"PUT k \xff".to_vec())]
        );
    }

    #[test]
    fn negotiation_split_across_reads_is_still_removed() {
        let mut framer = Framer::new(100);
        assert!(framer.push(b"GE\xff").is_empty());
        assert_eq!(framer.push(b"\xfd\x01T a\n"), vec![line("GET a")]);
    }

    #[test]
    fn a_skipped_line_sets_the_line_ending_of_its_refusal() {
        for (input, crlf) in [(&b"xxxxxxxxxxxx\n"[..], false), (b"xxxxxxxxxxxx\r\n", true)] {
            let mut framer = Framer::new(10);
            assert_eq!(framer.push(input), vec![Frame::TooLong]);
            assert_eq!(framer.crlf(), crlf, "{input:?}");
        }
    }

    #[test]
    fn pipelined_lines_are_cut_one_by_one_and_announced() {
        let mut framer = Framer::new(100);
        framer.read_buffer(64).extend_from_slice(b"GET a\nGET b\r\nGET");
        framer.filled();
        assert_eq!(framer.next_frame(), Some(line("GET a")));
        assert!(framer.has_frame(), "GET b is waiting");
        assert_eq!(framer.next_frame(), Some(line("GET b")));
        assert!(!framer.has_frame(), "only half a line is left");
        assert_eq!(framer.next_frame(), None);
        assert_eq!(framer.end(), Some(line("GET")));
    }

    #[test]
    fn an_overlong_line_is_skipped_and_the_next_one_read() {
        let mut input = vec![b'x'; 50];
        input.extend_from_slice(b"\nGET a\n");
        assert_eq!(frames(&input, 10), vec![Frame::TooLong, line("GET a")]);
        assert_eq!(frames(b"0123456789\n", 10), vec![line("0123456789")]);
    }
}
