//! The change feed's contract: `GET /kv?watch=1[&since=REV][&prefix=P][&values=0]`,
//! the event objects it streams (NDJSON lines, or SSE `data:`), and how SSE
//! frames them. kv-server writes these events, kv-proxy applies them to its
//! cache, and `kv watch` prints them.
//!
//! - `{"type":"sync","rev":S}` first: the stream starts after revision `S`.
//! - `{"type":"put","rev":N,"key":"…","value":"…","content_type":"…"}`: the
//!   value is left out (`"value_omitted":true`, `"size":S`) above
//!   [`MAX_INLINE_VALUE`] or with `values=0`; a value that is not UTF-8 comes
//!   as `value_base64`, as in DUMP.
//!   A key with a deadline carries it as `expires_at` (RFC 3339, ms).
//! - `{"type":"delete","rev":N,"key":"…"}`, with `"reason":"expired"` when
//!   the key's deadline removed it.
//! - `{"type":"progress","rev":N}`: every change up to `N` has been sent on
//!   this stream. It travels in the same ordered queue as the events, so it
//!   never runs ahead of them; it comes at least every [`PROGRESS_INTERVAL`]
//!   on a quiet stream, and once as soon as a stream has caught up with the
//!   store.
//! - `{"type":"reset","oldest":O,"current":C}`: the history no longer reaches
//!   `since` (SSE only; NDJSON answers 410 `revision_compacted` instead).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderName;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Values larger than this are left out of `put` events (`value_omitted`).
pub const MAX_INLINE_VALUE: usize = 64 << 10;

/// A `delete` event's `reason` when the key's deadline removed it.
pub const REASON_EXPIRED: &str = "expired";

/// A quiet stream sends a `progress` event at least this often.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// The content type of an SSE feed.
pub const EVENT_STREAM: &str = "text/event-stream";

/// `X-Kv-Min-Revision: R` on a read: do not answer with a state older than
/// revision `R` (a proxy waits briefly for its feed to reach `R`, then reads
/// the upstream).
pub static X_KV_MIN_REVISION: HeaderName = HeaderName::from_static("x-kv-min-revision");

/// The `X-Kv-Min-Revision` a read asks for, if any; a value that is not a
/// revision (a whole number) is `400 bad_request`, not silently ignored.
pub fn min_revision(headers: &http::HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(&X_KV_MIN_REVISION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "X-Kv-Min-Revision must be a revision: a whole number, such as a write's X-Kv-Revision",
            )
        })
}

/// `Last-Event-ID`: where an SSE client (a browser's EventSource) resumes.
pub static LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// What an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Sync,
    Put,
    Delete,
    Progress,
    Reset,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Put => "put",
            Self::Delete => "delete",
            Self::Progress => "progress",
            Self::Reset => "reset",
        }
    }
}

/// One event of the feed, as it travels (one JSON object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Keys are UTF-8 in this store; the field exists for engines whose keys may not be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub value_omitted: bool,
    /// The value's size in bytes, when it is left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// `put`: the key's deadline, RFC 3339 with milliseconds, as in DUMP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// `delete`: `"expired"` when the key's deadline removed it, not a client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `reset`: the oldest `since` the history still reaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest: Option<u64>,
    /// `reset`: the revision the stream continues from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<u64>,
}

impl Event {
    fn bare(kind: Kind, rev: Option<u64>) -> Self {
        Self {
            kind,
            rev,
            key: None,
            key_base64: None,
            value: None,
            value_base64: None,
            value_omitted: false,
            size: None,
            content_type: None,
            expires_at: None,
            reason: None,
            oldest: None,
            current: None,
        }
    }

    pub fn sync(rev: u64) -> Self {
        Self::bare(Kind::Sync, Some(rev))
    }

    pub fn progress(rev: u64) -> Self {
        Self::bare(Kind::Progress, Some(rev))
    }

    pub fn reset(oldest: u64, current: u64) -> Self {
        Self {
            oldest: Some(oldest),
            current: Some(current),
            ..Self::bare(Kind::Reset, None)
        }
    }

    /// A delete; `expired`: the sweep removed the key at its deadline.
    pub fn delete(rev: u64, key: &str, expired: bool) -> Self {
        Self {
            key: Some(key.to_owned()),
            reason: expired.then(|| REASON_EXPIRED.to_owned()),
            ..Self::bare(Kind::Delete, Some(rev))
        }
    }

    /// A put, its value inline (`with_value`, and not above [`MAX_INLINE_VALUE`]) or left out;
    /// `expires_at`: the key's deadline, unix ms.
    pub fn put(
        rev: u64,
        key: &str,
        value: &[u8],
        content_type: &str,
        expires_at: Option<u64>,
        with_value: bool,
    ) -> Self {
        let mut event = Self {
            key: Some(key.to_owned()),
            content_type: Some(content_type.to_owned()),
            expires_at: expires_at.map(crate::expiry::format_rfc3339),
            ..Self::bare(Kind::Put, Some(rev))
        };
        if with_value && value.len() <= MAX_INLINE_VALUE {
            match std::str::from_utf8(value) {
                Ok(text) => event.value = Some(text.to_owned()),
                Err(_) => event.value_base64 = Some(BASE64.encode(value)),
            }
        } else {
            event.value_omitted = true;
            event.size = Some(value.len() as u64);
        }
        event
    }

    /// The event's key, from whichever field carries it.
    pub fn key_text(&self) -> Option<String> {
        if let Some(key) = &self.key {
            return Some(key.clone());
        }
        let bytes = BASE64.decode(self.key_base64.as_deref()?).ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The value's bytes, when the event carries them.
    pub fn value_bytes(&self) -> Option<Vec<u8>> {
        match (&self.value, &self.value_base64) {
            (Some(text), _) => Some(text.as_bytes().to_vec()),
            (None, Some(encoded)) => BASE64.decode(encoded).ok(),
            (None, None) => None,
        }
    }

    /// The event as one NDJSON line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("an event serialises");
        line.push(b'\n');
        line
    }
}

/// The head of an SSE frame for an event whose JSON follows: `id:` (when the
/// event has a revision, so that a reconnect resumes from it), `event:`, then
/// `data: `. The frame ends with [`SSE_TAIL`] after the JSON.
pub fn sse_head(kind: Kind, id: Option<u64>) -> String {
    match id {
        Some(id) => format!("id: {id}\nevent: {}\ndata: ", kind.as_str()),
        None => format!("event: {}\ndata: ", kind.as_str()),
    }
}

/// What ends an SSE frame.
pub const SSE_TAIL: &[u8] = b"\n\n";

/// The query of a watch, `GET /kv?watch=1&since=&prefix=&values=`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchQuery {
    /// Send every change after this revision (exclusive).
    pub since: Option<u64>,
    pub prefix: String,
    /// Whether put events carry their values (`values=0` leaves them out).
    pub values: bool,
}

impl WatchQuery {
    /// The watch a raw query string asks for, or `None` when it asks for no
    /// watch (no `watch`, or `watch=0`): then it is a DUMP.
    pub fn parse(raw: Option<&str>) -> Result<Option<Self>, ApiError> {
        #[derive(Deserialize)]
        struct Raw {
            watch: Option<String>,
            since: Option<String>,
            prefix: Option<String>,
            values: Option<String>,
        }
        let raw: Raw = serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|err| ApiError::bad_request(format!("the query string is malformed: {err}")))?;
        match raw.watch.as_deref() {
            None | Some("0" | "false") => return Ok(None),
            Some("1" | "true" | "") => {}
            Some(_) => return Err(ApiError::bad_request("watch must be 1 or 0")),
        }
        let since = raw
            .since
            .map(|text| {
                text.parse::<u64>()
                    .map_err(|_| ApiError::bad_request("since must be a revision (a whole number)"))
            })
            .transpose()?;
        let values = match raw.values.as_deref() {
            None | Some("1" | "true" | "") => true,
            Some("0" | "false") => false,
            Some(_) => return Err(ApiError::bad_request("values must be 1 or 0")),
        };
        Ok(Some(Self {
            since,
            prefix: raw.prefix.unwrap_or_default(),
            values,
        }))
    }

    /// The path and query that ask for this watch, encoded as kv encodes it.
    pub fn path_and_query(&self) -> String {
        let mut query = "/kv?watch=1".to_owned();
        if let Some(since) = self.since {
            query.push_str(&format!("&since={since}"));
        }
        if !self.prefix.is_empty() {
            query.push_str(&format!("&prefix={}", crate::key::encode_query_component(&self.prefix)));
        }
        if !self.values {
            query.push_str("&values=0");
        }
        query
    }
}

/// The body of the 410 an NDJSON watch gets when its `since` is older than
/// the history: `{"error":"revision_compacted","message":…,"oldest":O,"current":C}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Compacted {
    pub error: String,
    pub message: String,
    pub oldest: u64,
    pub current: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_travel_as_the_contract_says() {
        let put = Event::put(12, "name", b"Derek Moss", "text/plain", None, true);
        assert_eq!(
            String::from_utf8(put.to_line()).unwrap(),
            "{\"type\":\"put\",\"rev\":12,\"key\":\"name\",\"value\":\"Derek Moss\",\"content_type\":\"text/plain\"}\n"
        );
        let binary = Event::put(13, "b", &[0xff], "application/octet-stream", None, true);
        assert_eq!(binary.value_base64.as_deref(), Some("/w=="));
        assert_eq!(binary.value_bytes(), Some(vec![0xff]));
        let omitted = Event::put(14, "big", &vec![b'x'; MAX_INLINE_VALUE + 1], "text/plain", None, true);
        assert!(omitted.value_omitted && omitted.value.is_none());
        assert_eq!(omitted.size, Some(MAX_INLINE_VALUE as u64 + 1));
        assert!(Event::put(15, "k", b"v", "text/plain", None, false).value_omitted);
        assert_eq!(
            serde_json::to_string(&Event::delete(16, "name", false)).unwrap(),
            r#"{"type":"delete","rev":16,"key":"name"}"#
        );
        assert_eq!(
            serde_json::to_string(&Event::delete(17, "session", true)).unwrap(),
            r#"{"type":"delete","rev":17,"key":"session","reason":"expired"}"#
        );
        let expiring = Event::put(18, "s", b"t", "text/plain", Some(1_700_000_000_123), true);
        assert_eq!(expiring.expires_at.as_deref(), Some("2023-11-14T22:13:20.123Z"));
        assert_eq!(
            serde_json::to_string(&Event::reset(3, 9)).unwrap(),
            r#"{"type":"reset","oldest":3,"current":9}"#
        );
        let parsed: Event = serde_json::from_str(r#"{"type":"progress","rev":20}"#).unwrap();
        assert_eq!(parsed, Event::progress(20));
        assert_eq!(sse_head(Kind::Put, Some(12)), "id: 12\nevent: put\ndata: ");
    }

    #[test]
    fn a_watch_query_is_parsed_and_rebuilt() {
        assert_eq!(WatchQuery::parse(Some("prefix=a")).unwrap(), None);
        assert_eq!(WatchQuery::parse(Some("watch=0")).unwrap(), None);
        let query = WatchQuery::parse(Some("watch=1&since=7&prefix=a%2Fb&values=0"))
            .unwrap()
            .unwrap();
        assert_eq!(
            query,
            WatchQuery {
                since: Some(7),
                prefix: "a/b".into(),
                values: false
            }
        );
        assert_eq!(query.path_and_query(), "/kv?watch=1&since=7&prefix=a%2Fb&values=0");
        assert!(WatchQuery::parse(Some("watch=1&since=x")).is_err());
        assert!(WatchQuery::parse(Some("watch=maybe")).is_err());
    }
}
