//! Fuzzes the telnet adapter's input path: bytes to frames (telnet
//! negotiation, line limits) and frames to commands. Checks that nothing
//! panics, that no frame exceeds the line limit, and that every command that
//! parses renders to a line that parses back to the same command.
#![no_main]

use kv_proxy::telnet::Command;
use kv_proxy::telnet::connection::{Connection, Frame};
use libfuzzer_sys::fuzz_target;

const MAX_LINE: usize = 64;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    runtime.block_on(async {
        let mut connection = Connection::new(data, tokio::io::sink(), MAX_LINE);
        while let Some(frame) = connection.read_frame().await.expect("reading from memory cannot fail") {
            let Frame::Line(line) = frame else { continue };
            assert!(line.len() <= MAX_LINE, "a frame of {} bytes passed a {MAX_LINE}-byte limit", line.len());
            if let Ok(Some(command)) = Command::parse(&line) {
                let rendered = command.render();
                let reparsed = Command::parse(rendered.as_bytes());
                assert_eq!(reparsed, Ok(Some(command)), "render/parse round trip via {rendered:?}");
            }
        }
    });
});
