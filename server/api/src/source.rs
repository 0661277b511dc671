//! Where a value read through kv-proxy came from, as its answer says it
//! (`X-Cache` and `Age`), in the words the terminals print: `(cached, 3 s
//! old)`, `(stale, 75 s old)` or `(from server)`.

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The proxy's cache, holding a value read this many seconds ago.
    Cached { age_secs: u64 },
    /// The proxy's cache, past its TTL, because the server could not be reached.
    Stale { age_secs: u64 },
    /// The server (through the proxy on a miss, or directly).
    Server,
}

impl Source {
    /// From an answer's `X-Cache` and `Age`; `None` without `X-Cache` (the
    /// answer did not pass through a proxy, or not one of ours).
    pub fn from_headers(x_cache: Option<&str>, age: Option<&str>) -> Option<Self> {
        let age_secs = age.and_then(|age| age.trim().parse().ok()).unwrap_or(0);
        match x_cache?.trim() {
            "HIT" => Some(Self::Cached { age_secs }),
            "STALE" => Some(Self::Stale { age_secs }),
            _ => Some(Self::Server),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cached { age_secs } => write!(f, "(cached, {age_secs} s old)"),
            Self::Stale { age_secs } => write!(f, "(stale: the server is unreachable; cached {age_secs} s ago)"),
            Self::Server => f.write_str("(from server)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_say_where_a_value_came_from() {
        assert_eq!(
            Source::from_headers(Some("HIT"), Some("3")).unwrap().to_string(),
            "(cached, 3 s old)"
        );
        assert_eq!(
            Source::from_headers(Some("MISS"), None).unwrap().to_string(),
            "(from server)"
        );
        assert_eq!(Source::from_headers(Some("MISS"), Some("0")), Some(Source::Server));
        assert_eq!(
            Source::from_headers(Some("STALE"), Some("75")),
            Some(Source::Stale { age_secs: 75 })
        );
        assert_eq!(Source::from_headers(None, Some("3")), None);
    }
}
