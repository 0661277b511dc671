//! DUMP: the listing of pairs, in the four shapes `GET /kv` can take, and the
//! NDJSON item that export and import files share with it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::quote;

/// One stored pair, as every read returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: bytes::Bytes,
    pub content_type: String,
    /// The revision of the write that last changed this key (its `ETag`).
    pub version: u64,
}

/// The default and largest page of a JSON or HTML DUMP.
pub const DEFAULT_PAGE: usize = 1000;
pub const MAX_PAGE: usize = 10_000;
/// A JSON or HTML page stops early, before `limit` items, once it holds this
/// many bytes (at least one item, whatever its size); its `next` continues it.
pub const MAX_PAGE_BYTES: usize = 8 << 20;

/// The content type stored when a PUT names none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// The content type of a value written without one by the line protocol,
/// `kv put` or `kv import`: text when the bytes are UTF-8.
pub fn content_type_for(value: &[u8]) -> &'static str {
    if std::str::from_utf8(value).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        DEFAULT_CONTENT_TYPE
    }
}

/// One pair in a JSON page, an NDJSON line or an export file. A value that is
/// not UTF-8 travels as `value_base64` instead of `value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Left out when it is the default, `application/octet-stream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

impl Item {
    pub fn from_entry(entry: &Entry, keys_only: bool) -> Self {
        let (value, value_base64) = if keys_only {
            (None, None)
        } else {
            match std::str::from_utf8(&entry.value) {
                Ok(text) => (Some(text.to_owned()), None),
                Err(_) => (None, Some(BASE64.encode(&entry.value))),
            }
        };
        let content_type = (entry.content_type != DEFAULT_CONTENT_TYPE && !entry.content_type.is_empty())
            .then(|| entry.content_type.clone());
        Self {
            key: entry.key.clone(),
            value,
            value_base64,
            version: Some(entry.version),
            content_type,
        }
    }

    /// The value's bytes, from whichever field carries them.
    pub fn value_bytes(&self) -> Result<Vec<u8>, String> {
        match (&self.value, &self.value_base64) {
            (Some(text), None) => Ok(text.as_bytes().to_vec()),
            (None, Some(encoded)) => BASE64
                .decode(encoded)
                .map_err(|err| format!("value_base64 is not valid base64: {err}")),
            (Some(_), Some(_)) => Err("an item has both \"value\" and \"value_base64\"; keep one".into()),
            (None, None) => Err("an item needs \"value\" (text) or \"value_base64\" (bytes)".into()),
        }
    }
}

/// A JSON page: `{"items": [...], "next": "<cursor>" | null}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page {
    pub items: Vec<Item>,
    pub next: Option<String>,
}

/// The shapes of a DUMP, chosen by `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Ndjson,
    Html,
    Text,
}

impl Format {
    /// Picks the format from an `Accept` header: the supported type with the
    /// highest q-value, ties going to the one listed first; no header, or
    /// `*/*`, means JSON. `None` when nothing offered is acceptable.
    pub fn negotiate(accept: Option<&str>) -> Option<Self> {
        let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
            return Some(Self::Json);
        };
        let mut best: Option<(Self, f32)> = None;
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()))
                .next()
                .unwrap_or(1.0);
            let format = match media.as_str() {
                "application/json" | "*/*" | "application/*" => Self::Json,
                "application/x-ndjson" | "application/jsonl" => Self::Ndjson,
                "text/html" | "application/xhtml+xml" => Self::Html,
                "text/plain" | "text/*" => Self::Text,
                _ => continue,
            };
            if q > 0.0 && best.is_none_or(|(_, best_q)| q > best_q) {
                best = Some((format, q));
            }
        }
        best.map(|(format, _)| format)
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Ndjson => "application/x-ndjson",
            Self::Html => "text/html; charset=utf-8",
            Self::Text => "text/plain; charset=utf-8",
        }
    }
}

/// One NDJSON line, newline included.
pub fn ndjson_line(entry: &Entry, keys_only: bool) -> Vec<u8> {
    let mut line = serde_json::to_vec(&Item::from_entry(entry, keys_only)).expect("an item serialises");
    line.push(b'\n');
    line
}

/// One `key value` line, quoted where needed so the line cannot be broken.
pub fn text_line(entry: &Entry, keys_only: bool) -> String {
    if keys_only {
        format!("{}\n", quote::render_key(&entry.key))
    } else {
        format!(
            "{} {}\n",
            quote::render_key(&entry.key),
            quote::render_value(&entry.value)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(key: &str, value: &[u8]) -> Entry {
        Entry {
            key: key.into(),
            value: Bytes::copy_from_slice(value),
            content_type: DEFAULT_CONTENT_TYPE.into(),
            version: 7,
        }
    }

    #[test]
    fn accept_negotiation() {
        assert_eq!(Format::negotiate(None), Some(Format::Json));
        assert_eq!(Format::negotiate(Some("*/*")), Some(Format::Json));
        assert_eq!(
            Format::negotiate(Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")),
            Some(Format::Html)
        );
        assert_eq!(Format::negotiate(Some("application/x-ndjson")), Some(Format::Ndjson));
        assert_eq!(Format::negotiate(Some("text/plain")), Some(Format::Text));
        assert_eq!(
            Format::negotiate(Some("text/plain;q=0.5, application/json")),
            Some(Format::Json)
        );
        assert_eq!(Format::negotiate(Some("image/png")), None);
    }

    #[test]
    fn items_carry_binary_values_as_base64() {
        let item = Item::from_entry(&entry("k", &[0xff, 0x00]), false);
        assert_eq!(item.value, None);
        assert_eq!(item.value_base64.as_deref(), Some("/wA="));
        assert_eq!(item.value_bytes().unwrap(), vec![0xff, 0x00]);
        let text = Item::from_entry(&entry("k", b"hi"), false);
        assert_eq!(
            serde_json::to_string(&text).unwrap(),
            r#"{"key":"k","value":"hi","version":7}"#
        );
    }
}
