//! Keys as they travel in URLs: the one decoding both the server and the proxy
//! use, so that a cache in front can never disagree with the store behind it
//! about which key a request names.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// The longest key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;

/// The path prefix under which every key lives.
pub const KV_PREFIX: &str = "/kv/";

/// Why a path does not name a valid key. The message is written for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the key is empty: write it after /kv/, as in /kv/name")]
    Empty,
    #[error("the key is {0} bytes long; keys may be at most {MAX_KEY_BYTES} bytes")]
    TooLong(usize),
    #[error("the key is not valid UTF-8 once percent-decoded")]
    NotUtf8,
    #[error(
        "the key has a malformed percent-escape ('%' must be followed by two hex digits, as in %2F); \
         write a literal '%' as %25"
    )]
    BadEscape,
    #[error(
        "the key has '.' or '..' as a path segment, which URLs normalise away; \
         use another spelling, such as a different separator"
    )]
    DotSegment,
}

/// Decodes the key from a request path such as `/kv/users%2F42/name`.
///
/// The key is the whole rest of the path after `/kv/`, percent-decoded once, so
/// `%2F` and `/` name the same key. A `%` not followed by two hex digits
/// (`%ZZ`, `%4`, a trailing `%`) is refused, as Go's net/http and nginx do,
/// rather than kept as a literal `%`. Segments `.` and `..` are refused because
/// every URL library between a user and the server (curl, browsers, reqwest)
/// rewrites them, so such a key could be stored but never reliably read back.
pub fn decode_path(path: &str) -> Result<String, KeyError> {
    let raw = path.strip_prefix(KV_PREFIX).unwrap_or("");
    if !escapes_are_well_formed(raw.as_bytes()) {
        return Err(KeyError::BadEscape);
    }
    let key = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| KeyError::NotUtf8)?
        .into_owned();
    validate(&key)?;
    Ok(key)
}

/// Whether every `%` in `raw` starts an escape of two hex digits.
fn escapes_are_well_formed(raw: &[u8]) -> bool {
    let mut rest = raw;
    while let Some(at) = rest.iter().position(|&b| b == b'%') {
        match rest.get(at + 1..at + 3) {
            Some([high, low]) if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() => rest = &rest[at + 3..],
            _ => return false,
        }
    }
    true
}

/// Checks a key that arrived by other means than a path (the line protocol, an import file).
pub fn validate(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong(key.len()));
    }
    if key.split('/').any(|segment| segment == "." || segment == "..") {
        return Err(KeyError::DotSegment);
    }
    Ok(())
}

/// Everything but unreserved characters and `/` is escaped: `/` stays readable in
/// logs, and the server decodes `%2F` and `/` alike anyway.
const PATH_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// The path for a key, `/kv/<key>`, escaped so that [`decode_path`] gives the key back.
pub fn encode_path(key: &str) -> String {
    format!("{KV_PREFIX}{}", utf8_percent_encode(key, PATH_ESCAPE))
}

/// A query-string component (for `prefix=` and `after=`), escaped completely.
pub fn encode_query_component(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slash_and_escaped_slash_name_the_same_key() {
        assert_eq!(decode_path("/kv/a/b").unwrap(), "a/b");
        assert_eq!(decode_path("/kv/a%2Fb").unwrap(), "a/b");
        assert_eq!(decode_path("/kv/%61").unwrap(), "a");
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason() {
        assert_eq!(decode_path("/kv/"), Err(KeyError::Empty));
        assert_eq!(decode_path("/kv/%FF"), Err(KeyError::NotUtf8));
        assert_eq!(decode_path("/kv/%2e%2e"), Err(KeyError::DotSegment));
        assert_eq!(decode_path("/kv/a/./b"), Err(KeyError::DotSegment));
        let long = format!("/kv/{}", "x".repeat(MAX_KEY_BYTES + 1));
        assert_eq!(decode_path(&long), Err(KeyError::TooLong(MAX_KEY_BYTES + 1)));
        assert!(decode_path(&format!("/kv/{}", "x".repeat(MAX_KEY_BYTES))).is_ok());
    }

    #[test]
    fn malformed_percent_escapes_are_refused() {
        for path in [
            "/kv/%ZZ",
            "/kv/%4",
            "/kv/%",
            "/kv/a%",
            "/kv/a%g1",
            "/kv/%%41",
            "/kv/ok%41%2",
        ] {
            assert_eq!(decode_path(path), Err(KeyError::BadEscape), "{path}");
        }
        assert_eq!(decode_path("/kv/%25ZZ").unwrap(), "%ZZ");
        assert_eq!(decode_path("/kv/a%2fb%41").unwrap(), "a/bA");
    }

    #[test]
    fn dots_inside_a_segment_are_fine() {
        assert_eq!(decode_path("/kv/a..b/.c").unwrap(), "a..b/.c");
    }

    #[test]
    fn encoding_round_trips() {
        for key in [
            "name",
            "users/42/name",
            "with space",
            "ünïcödé",
            "a%2Fb",
            "q?x#y",
            "/lead",
            "a//b",
            "\0nul",
        ] {
            assert_eq!(decode_path(&encode_path(key)).unwrap(), key, "{key}");
        }
    }
}
