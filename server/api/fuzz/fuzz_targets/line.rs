//! Fuzzes the line protocol's input path: bytes to frames (telnet
//! negotiation, line limits) and frames to commands. Checks that nothing
//! panics, that no frame exceeds the line limit, and that every command that
//! parses renders to a line that parses back to the same command. Both halves
//! are kv-api's, without I/O, so this crate builds nothing else.
#![no_main]

use kv_api::command::Command;
use kv_api::framing::{Frame, Framer};
use libfuzzer_sys::fuzz_target;

const MAX_LINE: usize = 64;

fuzz_target!(|data: &[u8]| {
    let mut framer = Framer::new(MAX_LINE);
    // Fed in uneven pieces, as reads would deliver them.
    let mut frames = Vec::new();
    for piece in data.chunks(7) {
        frames.extend(framer.push(piece));
    }
    frames.extend(framer.end());
    for frame in frames {
        let Frame::Line(line) = frame else { continue };
        assert!(line.len() <= MAX_LINE, "a frame of {} bytes passed a {MAX_LINE}-byte limit", line.len());
        if let Ok(Some(command)) = Command::parse(&line) {
            let rendered = command.render();
            let reparsed = Command::parse(rendered.as_bytes());
            assert_eq!(reparsed, Ok(Some(command)), "render/parse round trip via {rendered:?}");
        }
    }
});
