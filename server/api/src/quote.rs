//! Redis-style quoting for the line-oriented views of the store: the telnet
//! adapter, `kv shell`, and the `text/plain` DUMP.
//!
//! A string is written bare when that is unambiguous and as `"..."` with
//! backslash escapes (`\"`, `\\`, `\n`, `\r`, `\t`, `\xHH`) otherwise, so a value
//! holding a newline, an ESC byte or bytes that are not UTF-8 can neither break a
//! line nor reach a terminal raw, and output can be pasted back as input.

use std::fmt::Write;

/// Why a quoted string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("a quoted string is not closed: end it with \"")]
    Unterminated,
    #[error("\\x must be followed by two hex digits, as in \\x1b")]
    BadHexEscape,
    #[error("a closing quote must be followed by a space or the end of the line")]
    TrailingGarbage,
}

/// Always quotes: every byte that is not printable UTF-8 is escaped.
pub fn quote(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if is_unsafe_char(c) => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(out, "\\x{b:02x}");
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out.push('"');
    out
}

/// A key as it appears on a line: bare unless it holds a space, a quote, a
/// backslash or a control character.
pub fn render_key(key: &str) -> String {
    let needs_quotes = key.is_empty()
        || key.starts_with('=')
        || key
            .chars()
            .any(|c| c == ' ' || c == '"' || c == '\\' || c.is_whitespace() || is_unsafe_char(c));
    if needs_quotes {
        quote(key.as_bytes())
    } else {
        key.to_owned()
    }
}

/// A value as it appears last on a line: bare, so `VALUE Derek Moss` reads
/// naturally, unless reading it back bare would give something else.
pub fn render_value(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) if value_can_be_bare(text) => text.to_owned(),
        _ => quote(value),
    }
}

/// Whether [`render_value`] writes `value` as it is.
pub fn can_be_bare(value: &[u8]) -> bool {
    std::str::from_utf8(value).is_ok_and(value_can_be_bare)
}

fn value_can_be_bare(text: &str) -> bool {
    !text.is_empty()
        && !text.starts_with(char::is_whitespace)
        && !text.ends_with(char::is_whitespace)
        && !text.starts_with('"')
        && text != "="
        && !text.starts_with("= ")
        && !text
            .chars()
            .any(|c| c == '"' || c == '\\' || is_unsafe_char(c) || c == '\n' || c == '\r')
}

/// Control characters (C0, DEL, C1) and the Unicode line and paragraph
/// separators, which some terminals and JavaScript treat as line breaks.
fn is_unsafe_char(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// Reads one quoted string at the start of `input` (which begins with `"`).
/// Returns the bytes it stands for and how many input bytes it took.
pub fn parse_quoted(input: &[u8]) -> Result<(Vec<u8>, usize), QuoteError> {
    debug_assert_eq!(input.first(), Some(&b'"'));
    let mut out = Vec::with_capacity(input.len());
    let mut i = 1;
    while i < input.len() {
        match input[i] {
            b'"' => {
                let end = i + 1;
                if end < input.len() && !input[end].is_ascii_whitespace() {
                    return Err(QuoteError::TrailingGarbage);
                }
                return Ok((out, end));
            }
            b'\\' if i + 1 < input.len() => {
                let escaped = input[i + 1];
                i += 2;
                match escaped {
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'a' => out.push(0x07),
                    b'b' => out.push(0x08),
                    b'x' => {
                        let hex = input.get(i..i + 2).ok_or(QuoteError::BadHexEscape)?;
                        let hex = std::str::from_utf8(hex).map_err(|_| QuoteError::BadHexEscape)?;
                        let byte = u8::from_str_radix(hex, 16).map_err(|_| QuoteError::BadHexEscape)?;
                        out.push(byte);
                        i += 2;
                    }
                    // `\"`, `\\` and, as in Redis, any other escaped byte stand for themselves.
                    other => out.push(other),
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Err(QuoteError::Unterminated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unquote(text: &str) -> Vec<u8> {
        let (bytes, used) = parse_quoted(text.as_bytes()).unwrap();
        assert_eq!(used, text.len());
        bytes
    }

    #[test]
    fn plain_values_stay_bare() {
        assert_eq!(render_value(b"Derek Moss"), "Derek Moss");
        assert_eq!(render_key("name"), "name");
        assert_eq!(render_key("users/42"), "users/42");
    }

    #[test]
    fn risky_values_are_quoted() {
        assert_eq!(render_value(b"two\nlines"), "\"two\\nlines\"");
        assert_eq!(render_value(b" padded"), "\" padded\"");
        assert_eq!(render_value(b""), "\"\"");
        assert_eq!(render_value(b"= x"), "\"= x\"");
        assert_eq!(render_value(b"\x1b[31mred"), "\"\\x1b[31mred\"");
        assert_eq!(render_value(&[0xff, b'a']), "\"\\xffa\"");
        assert_eq!(render_value("a\u{2028}b".as_bytes()), "\"a\\xe2\\x80\\xa8b\"");
        assert_eq!(render_key("my key"), "\"my key\"");
    }

    #[test]
    fn quoting_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255u8).collect();
        assert_eq!(unquote(&quote(&all)), all);
        for sample in [&b"say \"hi\"\\"[..], b"tab\there", "ünï".as_bytes(), b"\r\n"] {
            assert_eq!(unquote(&quote(sample)), sample);
        }
    }

    #[test]
    fn malformed_quotes_are_errors() {
        assert_eq!(parse_quoted(b"\"open"), Err(QuoteError::Unterminated));
        assert_eq!(parse_quoted(b"\"\\xZZ\""), Err(QuoteError::BadHexEscape));
        assert_eq!(parse_quoted(b"\"a\"b"), Err(QuoteError::TrailingGarbage));
        assert_eq!(parse_quoted(b"\"a\" b").unwrap(), (b"a".to_vec(), 3));
    }
}
