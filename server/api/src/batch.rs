//! The batch write, `POST /kv` with an NDJSON body: one operation per line,
//! in the shape `kv export` writes (the DUMP [`Item`](crate::dump::Item)),
//! plus `{"key": ..., "delete": true}` to remove a key.
//!
//! What is atomic and what is not (the contract, repeated in `openapi.yaml`):
//!
//! - The body is validated as a whole before anything is written: a line that
//!   is malformed or breaks a limit refuses the whole batch (4xx, naming the
//!   line), and nothing of it is written.
//! - A valid batch is then written line by line: each line is a write of its
//!   own, with a revision of its own, queued in body order (so the last line
//!   for a key wins), group-committed with other writes under few fsyncs. The
//!   batch is not atomic: readers may see some of its lines before others.
//! - A 200 is sent only once every line is durable. If the store fails in
//!   the middle, the answer names the first line whose outcome is not known:
//!   every line before it is durable (and counted), it and every line after
//!   it may or may not have been written.

use serde::{Deserialize, Serialize};

use crate::dump::{DEFAULT_CONTENT_TYPE, stored_content_type};
use crate::error::ErrorCode;

/// The media type of a batch body.
pub const CONTENT_TYPE: &str = "application/x-ndjson";

/// The most operations (non-blank lines) in one batch.
pub const MAX_LINES: usize = 100_000;

/// The smallest bound on a batch body; see [`max_body_bytes`].
pub const MIN_BODY_BYTES: usize = 16 << 20;

/// The largest batch body, given `--max-value-bytes`: 16 MiB, or room for two
/// of the largest values written as base64 if that is more.
pub fn max_body_bytes(max_value_bytes: usize) -> usize {
    MIN_BODY_BYTES.max(max_value_bytes.saturating_mul(3).saturating_add(64 << 10))
}

/// One line of a batch, as it arrives.
#[derive(Debug, Clone, Default, Deserialize)]
struct RawLine {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    value_base64: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
    /// `true`: remove the key (no value fields allowed).
    #[serde(default)]
    delete: Option<bool>,
}

/// One operation of a batch, parsed and checked (but for the value's size,
/// which is each program's own limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        content_type: String,
        /// The deadline, unix ms.
        expires_at: Option<u64>,
    },
    Delete {
        key: String,
    },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Self::Put { key, .. } | Self::Delete { key } => key,
        }
    }
}

/// Why a line was refused, and the code its answer carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub code: ErrorCode,
    pub message: String,
}

impl LineError {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::BadRequest,
            message: message.into(),
        }
    }
}

/// Whether a line holds no operation (blank lines are skipped, but counted
/// in the line numbers).
pub fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Parses one line: a JSON object with a valid key and either a value
/// (`value` or `value_base64`, an optional `content_type` and `expires_at`)
/// or `"delete": true`. Unknown fields (a DUMP's `version`) are ignored.
pub fn parse_line(line: &[u8]) -> Result<Op, LineError> {
    let raw: RawLine =
        serde_json::from_slice(line).map_err(|err| LineError::bad(format!("not a JSON item ({err})")))?;
    if let Err(err) = crate::key::validate(&raw.key) {
        return Err(LineError {
            code: ErrorCode::BadKey,
            message: format!("bad key: {err}"),
        });
    }
    if raw.delete == Some(true) {
        if raw.value.is_some() || raw.value_base64.is_some() || raw.content_type.is_some() || raw.expires_at.is_some() {
            return Err(LineError::bad(
                "a delete (\"delete\": true) takes only \"key\"; no value, content_type or expires_at",
            ));
        }
        return Ok(Op::Delete { key: raw.key });
    }
    let item = crate::dump::Item {
        key: raw.key,
        value: raw.value,
        value_base64: raw.value_base64,
        version: None,
        content_type: raw.content_type,
        expires_at: raw.expires_at,
    };
    let value = item.value_bytes().map_err(LineError::bad)?;
    let expires_at = item
        .expires_at_ms()
        .map_err(|err| LineError::bad(format!("expires_at: {err}")))?;
    let content_type = match item.content_type {
        None => DEFAULT_CONTENT_TYPE.to_owned(),
        Some(text) => {
            let text = text.trim();
            if text.is_empty() || text.len() > 255 || !text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(LineError {
                    code: ErrorCode::BadContentType,
                    message: "content_type must be printable ASCII of at most 255 bytes, like text/plain".into(),
                });
            }
            stored_content_type(text.to_owned(), &value)
        }
    };
    Ok(Op::Put {
        key: item.key,
        value,
        content_type,
        expires_at,
    })
}

/// Only the key of a line, for the proxy, which must know every key a batch
/// wrote (to invalidate its cache) without checking the rest. `None` when the
/// line has no key a valid batch could hold.
pub fn line_key(line: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct KeyOnly {
        key: String,
    }
    let parsed: KeyOnly = serde_json::from_slice(line).ok()?;
    crate::key::validate(&parsed.key).ok()?;
    Some(parsed.key)
}

/// The answer to a batch: what its lines did (200), or, in a failure's
/// answer, what the lines before the failing one did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Puts written.
    pub stored: u64,
    /// Deletes that removed a key.
    pub deleted: u64,
    /// Deletes of keys that did not exist (nothing written).
    pub absent: u64,
    /// Puts whose `expires_at` had already passed: not written, as if
    /// written and expired at once.
    pub expired: u64,
    /// The store's revision once these lines were durable: every write of
    /// the batch has a revision at or below it (also sent as `X-Kv-Revision`).
    pub revision: u64,
}

/// The error body of a refused or failed batch: the usual `error` and
/// `message`, the line it is about, and (after a failure in the middle) what
/// the lines before it did, all durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchError {
    pub error: String,
    pub message: String,
    /// The line (1-based, blank lines counted) refused, or the first line
    /// whose outcome is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// After a failure in the middle: the lines before `line`, durable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<Summary>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(
            parse_line(br#"{"key":"k","value":"v"}"#),
            Ok(Op::Put {
                key: "k".into(),
                value: b"v".to_vec(),
                content_type: DEFAULT_CONTENT_TYPE.into(),
                expires_at: None
            })
        );
        // A DUMP line, version and all.
        let op = parse_line(
            br#"{"key":"k","value_base64":"/wA=","version":7,"content_type":"image/png","expires_at":"2023-11-14T22:13:21.532Z"}"#,
        )
        .unwrap();
        assert_eq!(
            op,
            Op::Put {
                key: "k".into(),
                value: vec![0xff, 0],
                content_type: "image/png".into(),
                expires_at: Some(1_700_000_001_532)
            }
        );
        assert_eq!(
            parse_line(br#"{"key":"k","delete":true}"#),
            Ok(Op::Delete { key: "k".into() })
        );
        assert!(parse_line(br#"{"key":"k","delete":true,"value":"v"}"#).is_err());
        assert!(
            parse_line(br#"{"key":"k","delete":false}"#)
                .unwrap_err()
                .message
                .contains("needs")
        );
        assert_eq!(
            parse_line(br#"{"key":"","value":"v"}"#).unwrap_err().code,
            ErrorCode::BadKey
        );
        assert!(
            parse_line(b"{not json")
                .unwrap_err()
                .message
                .starts_with("not a JSON item")
        );
        assert!(parse_line(br#"{"key":"k","value":"v","expires_at":"soon"}"#).is_err());
        assert_eq!(
            parse_line(br#"{"key":"k","value":"v","content_type":"a\u0001b"}"#)
                .unwrap_err()
                .code,
            ErrorCode::BadContentType
        );
        assert_eq!(line_key(br#"{"key":"a/b","value":"v"}"#).as_deref(), Some("a/b"));
        assert_eq!(line_key(br#"{"key":"","value":"v"}"#), None);
        assert_eq!(line_key(b"[1]"), None);
        assert!(is_blank(b" \r") && !is_blank(b"{}"));
        assert_eq!(max_body_bytes(1 << 20), 16 << 20);
        assert!(max_body_bytes(64 << 20) > 128 << 20);
    }
}
