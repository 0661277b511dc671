//! Versions on the wire: ETags, `If-Match` / `If-None-Match`, and the
//! revision headers.
//!
//! Every write takes the next store-wide revision, like etcd's `mod_revision`;
//! a key's version is the revision of the write that last changed it, and its
//! ETag is that number in quotes. Conditional writes, 304s and the proxy's
//! cache ordering all rest on these numbers.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::error::ApiError;

/// `X-Kv-Revision`: the store revision a write took.
pub static X_KV_REVISION: HeaderName = HeaderName::from_static("x-kv-revision");

/// `X-Kv-Store-Id`: the random identity of the store that answered. Revisions
/// are per store: a client that compares versions (the proxy's cache) must
/// notice when it is talking to another store (a server restarted on a new
/// or restored data directory).
pub static X_KV_STORE_ID: HeaderName = HeaderName::from_static("x-kv-store-id");

/// The ETag of a key at `version`: the number, quoted.
pub fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header value")
}

/// An `If-Match` or `If-None-Match` condition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Condition {
    /// No header.
    #[default]
    None,
    /// `*`: any current value.
    Any,
    /// A list of versions (`"3", "4"`); a tag that is not one of ours matches nothing.
    Versions(Vec<u64>),
}

impl Condition {
    /// Whether an `If-None-Match` with this condition matches a key at
    /// `version`, so that a GET answers 304.
    pub fn matches(&self, version: u64) -> bool {
        match self {
            Self::None => false,
            Self::Any => true,
            Self::Versions(versions) => versions.contains(&version),
        }
    }

    /// Parses `If-Match` / `If-None-Match`: `*`, or a list of ETags such as `"3", "4"`.
    /// Tags that are not ours (weak ones, or not numbers) can never match.
    pub fn parse(headers: &HeaderMap, name: &HeaderName) -> Result<Self, ApiError> {
        let mut versions = Vec::new();
        let mut seen = false;
        for value in headers.get_all(name) {
            seen = true;
            let text = value
                .to_str()
                .map_err(|_| ApiError::bad_request(format!("{name} must be ASCII, like \"3\" or *")))?;
            for tag in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if tag == "*" {
                    return Ok(Self::Any);
                }
                // A weak tag never matches in If-Match; ours are all strong anyway.
                if let Some(version) = tag
                    .strip_prefix('"')
                    .and_then(|t| t.strip_suffix('"'))
                    .and_then(|t| t.parse().ok())
                {
                    versions.push(version);
                }
            }
        }
        Ok(if seen { Self::Versions(versions) } else { Self::None })
    }
}

/// The preconditions of a write, from `If-Match` and `If-None-Match`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Precondition {
    pub if_match: Condition,
    pub if_none_match: Condition,
}

impl Precondition {
    /// Reads both headers of a write.
    pub fn parse(headers: &HeaderMap) -> Result<Self, ApiError> {
        Ok(Self {
            if_match: Condition::parse(headers, &http::header::IF_MATCH)?,
            if_none_match: Condition::parse(headers, &http::header::IF_NONE_MATCH)?,
        })
    }

    /// Whether a write may go ahead given the key's current version (RFC 9110 §13.2.2).
    pub fn allows(&self, current: Option<u64>) -> bool {
        let if_match_ok = match (&self.if_match, current) {
            (Condition::None, _) => true,
            (_, None) => false,
            (Condition::Any, Some(_)) => true,
            (Condition::Versions(vs), Some(v)) => vs.contains(&v),
        };
        let if_none_match_ok = match (&self.if_none_match, current) {
            (Condition::None, _) | (_, None) => true,
            (Condition::Any, Some(_)) => false,
            (Condition::Versions(vs), Some(v)) => !vs.contains(&v),
        };
        if_match_ok && if_none_match_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preconditions_follow_rfc_9110() {
        let any = |m, n| Precondition {
            if_match: m,
            if_none_match: n,
        };
        assert!(Precondition::default().allows(None));
        assert!(any(Condition::Versions(vec![3]), Condition::None).allows(Some(3)));
        assert!(!any(Condition::Versions(vec![3]), Condition::None).allows(Some(4)));
        assert!(!any(Condition::Versions(vec![3]), Condition::None).allows(None));
        assert!(!any(Condition::Any, Condition::None).allows(None));
        assert!(any(Condition::None, Condition::Any).allows(None));
        assert!(!any(Condition::None, Condition::Any).allows(Some(1)));
        assert!(!any(Condition::None, Condition::Versions(vec![1])).allows(Some(1)));
        assert!(any(Condition::None, Condition::Versions(vec![1])).allows(Some(2)));
    }

    #[test]
    fn etags_parse_as_lists_and_star() {
        let mut headers = HeaderMap::new();
        headers.append(
            http::header::IF_MATCH,
            HeaderValue::from_static("\"3\", W/\"4\", \"x\""),
        );
        let condition = Condition::parse(&headers, &http::header::IF_MATCH).unwrap();
        assert_eq!(condition, Condition::Versions(vec![3]));
        headers.append(http::header::IF_MATCH, HeaderValue::from_static("*"));
        assert_eq!(
            Condition::parse(&headers, &http::header::IF_MATCH).unwrap(),
            Condition::Any
        );
        assert_eq!(
            Condition::parse(&headers, &http::header::IF_NONE_MATCH).unwrap(),
            Condition::None
        );
        assert_eq!(etag(12), HeaderValue::from_static("\"12\""));
    }
}
