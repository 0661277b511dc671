//! DUMP: the listing of pairs, in the four shapes `GET /kv` can take, and the
//! NDJSON item that export and import files share with it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::{key, quote};

/// One stored pair, as every read returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: bytes::Bytes,
    pub content_type: String,
    /// The revision of the write that last changed this key (its `ETag`).
    pub version: u64,
    /// When the key expires, in unix milliseconds ([`crate::expiry`]); `None`: never.
    pub expires_at: Option<u64>,
}

impl Entry {
    pub fn new(
        key: impl Into<String>,
        value: impl Into<bytes::Bytes>,
        content_type: impl Into<String>,
        version: u64,
    ) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            content_type: content_type.into(),
            version,
            expires_at: None,
        }
    }
}

/// The default and largest page of a JSON or HTML DUMP.
pub const DEFAULT_PAGE: usize = 1000;
pub const MAX_PAGE: usize = 10_000;
/// A JSON or HTML page stops early, before `limit` items, once it holds this
/// many bytes (at least one item, whatever its size); its `next` continues it.
pub const MAX_PAGE_BYTES: usize = 8 << 20;

/// A page cursor, the `next` of a JSON page that `after` takes back.
///
/// An engine that can read at a past revision (etcd) pins a listing to the
/// revision of its first page, so that its pages together are one snapshot:
/// the cursor then carries that revision, as `./<rev>/<key>`. No key can
/// start so (`.` is not a valid first segment, see [`key::validate`]), so a
/// plain key given as `after` still means "after this key, at the latest
/// revision", and clients page exactly as they always have, passing `next`
/// back verbatim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor<'a> {
    /// The revision the listing is read at; `None`: the latest.
    pub at: Option<u64>,
    /// Start strictly after this key.
    pub after: &'a str,
}

impl<'a> Cursor<'a> {
    pub fn parse(text: &'a str) -> Self {
        let pinned = text.strip_prefix("./").and_then(|rest| {
            let (rev, after) = rest.split_once('/')?;
            let at = rev
                .parse::<u64>()
                .ok()
                .filter(|_| rev.bytes().all(|b| b.is_ascii_digit()))?;
            Some(Self { at: Some(at), after })
        });
        pinned.unwrap_or(Self { at: None, after: text })
    }

    /// The `next` of a page whose last key is `after`.
    pub fn render(at: Option<u64>, after: &str) -> String {
        match at {
            Some(at) => format!("./{at}/{after}"),
            None => after.to_owned(),
        }
    }
}

/// The query of a DUMP, `GET /kv?prefix=&limit=&after=&keys_only=`, parsed
/// and checked. The proxy forwards the query it rebuilds from this, never
/// the raw string it received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub prefix: String,
    /// At most [`MAX_PAGE`]; `None` for the default page (JSON, HTML) or
    /// everything (NDJSON, text).
    pub limit: Option<usize>,
    /// The page cursor (a [`Cursor`]): start strictly after this key.
    pub after: Option<String>,
    pub keys_only: bool,
}

impl Query {
    /// Parses a raw query string (without the `?`).
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        #[derive(Deserialize)]
        struct Raw {
            prefix: Option<String>,
            limit: Option<String>,
            after: Option<String>,
            keys_only: Option<String>,
        }
        let raw: Raw = serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|err| ApiError::bad_request(format!("the query string is malformed: {err}")))?;
        let limit = match raw.limit.as_deref() {
            None => None,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => Some(n),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "limit must be a whole number from 1 to {MAX_PAGE}"
                    )));
                }
            },
        };
        let keys_only = match raw.keys_only.as_deref() {
            None | Some("false" | "0") => false,
            Some("true" | "1" | "") => true,
            Some(_) => return Err(ApiError::bad_request("keys_only must be true or false")),
        };
        Ok(Self {
            prefix: raw.prefix.unwrap_or_default(),
            limit,
            after: raw.after,
            keys_only,
        })
    }

    /// The path and query that ask for this DUMP, every part encoded as kv
    /// encodes it.
    pub fn path_and_query(&self) -> String {
        let mut parts = Vec::new();
        if !self.prefix.is_empty() {
            parts.push(format!("prefix={}", key::encode_query_component(&self.prefix)));
        }
        if let Some(limit) = self.limit {
            parts.push(format!("limit={limit}"));
        }
        if let Some(after) = &self.after {
            parts.push(format!("after={}", key::encode_query_component(after)));
        }
        if self.keys_only {
            parts.push("keys_only=true".to_owned());
        }
        if parts.is_empty() {
            "/kv".to_owned()
        } else {
            format!("/kv?{}", parts.join("&"))
        }
    }
}

/// The content type stored when a PUT names none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// The Content-Security-Policy of every answer carrying a stored value: a
/// value stored as `text/html` or SVG and opened in a browser runs in a
/// sandbox with an opaque origin and no script, never with the origin of the
/// server, the proxy or their listing pages.
pub const VALUE_CSP: &str = "sandbox";

/// The content type of a value written without one by the line protocol,
/// `kv put` or `kv import`: text when the bytes are UTF-8.
pub fn content_type_for(value: &[u8]) -> &'static str {
    if std::str::from_utf8(value).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        DEFAULT_CONTENT_TYPE
    }
}

/// curl's default Content-Type for `--data`: nobody means it as the type of a value.
pub const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

/// The content type a write is stored with: what the request said, except
/// that curl's default form type (which `curl --data` sends unasked) is
/// stored as if no type had been given, as [`content_type_for`] says: text
/// when the bytes are UTF-8, so a browser shows the value instead of
/// downloading it. The server decides this once, so a write through the
/// proxy (which forwards the header) is stored the same way.
pub fn stored_content_type(requested: String, value: &[u8]) -> String {
    let media = requested.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case(FORM_CONTENT_TYPE) {
        content_type_for(value).to_owned()
    } else {
        requested
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
    /// When the key expires (RFC 3339 with milliseconds, UTC); left out when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
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
            expires_at: entry.expires_at.map(crate::expiry::format_rfc3339),
        }
    }

    /// The deadline in unix milliseconds, if the item has one.
    pub fn expires_at_ms(&self) -> Result<Option<u64>, String> {
        self.expires_at.as_deref().map(crate::expiry::parse_rfc3339).transpose()
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

    fn entry(key: &str, value: &[u8]) -> Entry {
        Entry::new(key, value.to_vec(), DEFAULT_CONTENT_TYPE, 7)
    }

    #[test]
    fn a_pinned_cursor_carries_its_revision_and_a_plain_key_does_not() {
        let pinned = Cursor::render(Some(42), "a/./b c");
        assert_eq!(pinned, "./42/a/./b c");
        assert_eq!(
            Cursor::parse(&pinned),
            Cursor {
                at: Some(42),
                after: "a/./b c"
            }
        );
        assert_eq!(Cursor::render(None, "a/b"), "a/b");
        for plain in ["a/b", "./x/y", "./12", ".//k", "./+1/k", "name"] {
            assert_eq!(Cursor::parse(plain), Cursor { at: None, after: plain }, "{plain}");
        }
        assert!(
            key::validate("./42/k").is_err(),
            "no key can be mistaken for a pinned cursor"
        );
    }

    #[test]
    fn a_query_is_rebuilt_from_what_it_means() {
        let query = Query::parse(Some("prefix=a%2Fb%20c&limit=5&after=a%2Fb%20c%2F1&keys_only=1&junk=x")).unwrap();
        assert_eq!(query.prefix, "a/b c");
        assert_eq!(query.after.as_deref(), Some("a/b c/1"));
        assert_eq!(
            query.path_and_query(),
            "/kv?prefix=a%2Fb%20c&limit=5&after=a%2Fb%20c%2F1&keys_only=true"
        );
        assert_eq!(Query::parse(Some(&query.path_and_query()[4..])).unwrap(), query);
        assert_eq!(Query::parse(None).unwrap().path_and_query(), "/kv");
        assert!(Query::parse(Some("limit=0")).is_err());
        assert!(Query::parse(Some("limit=10001")).is_err());
        assert!(Query::parse(Some("keys_only=maybe")).is_err());
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
    fn curls_form_type_is_stored_as_no_type() {
        let form = || FORM_CONTENT_TYPE.to_owned();
        assert_eq!(stored_content_type(form(), b"Derek Moss"), "text/plain; charset=utf-8");
        assert_eq!(stored_content_type(form(), &[0xff, 0]), DEFAULT_CONTENT_TYPE);
        assert_eq!(
            stored_content_type("Application/X-WWW-Form-Urlencoded; charset=utf-8".into(), b"a=b"),
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            stored_content_type("application/json".into(), b"{}"),
            "application/json"
        );
        assert_eq!(
            stored_content_type(DEFAULT_CONTENT_TYPE.into(), b"text"),
            DEFAULT_CONTENT_TYPE
        );
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
        let expiring = Entry {
            expires_at: Some(1_700_000_001_532),
            ..entry("k", b"hi")
        };
        let item = Item::from_entry(&expiring, false);
        assert_eq!(
            serde_json::to_string(&item).unwrap(),
            r#"{"key":"k","value":"hi","version":7,"expires_at":"2023-11-14T22:13:21.532Z"}"#
        );
        assert_eq!(item.expires_at_ms(), Ok(Some(1_700_000_001_532)));
    }
}
