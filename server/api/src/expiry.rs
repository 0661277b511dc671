//! Per-key expiry on the wire: the `ttl` a write asks for, the deadline a read
//! reports, and the clock both are counted on.
//!
//! A deadline is an absolute wall-clock time in unix milliseconds, stored with
//! the key (and in the write-ahead log), so that it survives restarts counted
//! from the original write. A key whose deadline is at or before now is
//! absent, for reads and for writes alike, whether or not it has been removed
//! yet. Time left goes on the wire as `X-Kv-Expires-In` (seconds with
//! millisecond precision, rounded down) and `Expires` (an HTTP date); in DUMP
//! items and export files as `expires_at` (RFC 3339 with milliseconds).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use crate::error::ApiError;

/// `X-Kv-Expires-In`: the seconds a key has left, with millisecond precision.
pub static X_KV_EXPIRES_IN: HeaderName = HeaderName::from_static("x-kv-expires-in");

/// The longest ttl accepted: about 100 years, far below where unix
/// milliseconds would overflow.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Now, in unix milliseconds (the wall clock).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether a key with this deadline is gone at `now` (both unix ms).
pub fn expired(expires_at: Option<u64>, now: u64) -> bool {
    expires_at.is_some_and(|at| at <= now)
}

/// The deadline a ttl sets when written at `now`.
pub fn deadline(now: u64, ttl: Duration) -> u64 {
    now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

/// Parses a ttl: `1500ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
/// Zero, negative, fractional, unparsable or above [`MAX_TTL`] is an error.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (text, 1000)
    };
    let bad = || format!("ttl '{text}' is not a positive duration like 1500ms, 30s, 2m, 1h or 30 (seconds)");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let ms = n.checked_mul(unit_ms).ok_or_else(bad)?;
    let ttl = Duration::from_millis(ms);
    if ms == 0 || ttl > MAX_TTL {
        return Err(bad());
    }
    Ok(ttl)
}

/// What a PUT asks of the key's deadline (`?ttl=` or `?keepttl=true`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Expiry {
    /// No deadline (a PUT with neither parameter clears one, as Redis's SET does).
    #[default]
    Clear,
    /// Keep the key's current deadline, if it has one (Redis's KEEPTTL).
    Keep,
    /// Expire this long after the write.
    After(Duration),
}

impl Expiry {
    /// The query string of a PUT with this expiry (without the `?`), or `None`.
    pub fn query(self) -> Option<String> {
        match self {
            Self::Clear => None,
            Self::Keep => Some("keepttl=true".to_owned()),
            Self::After(ttl) => Some(format!("ttl={}ms", ttl.as_millis())),
        }
    }
}

/// What a PATCH asks: a new deadline (`?ttl=`) or none (`?persist=true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    After(Duration),
    Persist,
}

impl Touch {
    pub fn query(self) -> String {
        match self {
            Self::After(ttl) => format!("ttl={}ms", ttl.as_millis()),
            Self::Persist => "persist=true".to_owned(),
        }
    }
}

#[derive(Deserialize)]
struct RawQuery {
    ttl: Option<String>,
    keepttl: Option<String>,
    persist: Option<String>,
}

fn raw_query(raw: Option<&str>) -> Result<RawQuery, ApiError> {
    serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|err| ApiError::bad_request(format!("the query string is malformed: {err}")))
}

fn flag(name: &str, value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1" | "") => Ok(true),
        Some(_) => Err(ApiError::bad_request(format!("{name} must be true or false"))),
    }
}

/// Parses a PUT's query: `ttl=30s`, `keepttl=true`, or neither.
pub fn parse_put_query(raw: Option<&str>) -> Result<Expiry, ApiError> {
    let raw = raw_query(raw)?;
    let keep = flag("keepttl", raw.keepttl.as_deref())?;
    match (raw.ttl, keep) {
        (Some(_), true) => Err(ApiError::bad_request(
            "ttl and keepttl=true exclude each other: give one or the other",
        )),
        (Some(ttl), false) => Ok(Expiry::After(parse_ttl(&ttl).map_err(ApiError::bad_request)?)),
        (None, true) => Ok(Expiry::Keep),
        (None, false) => Ok(Expiry::Clear),
    }
}

/// Parses a PATCH's query: exactly one of `ttl=30s` or `persist=true`.
pub fn parse_patch_query(raw: Option<&str>) -> Result<Touch, ApiError> {
    let raw = raw_query(raw)?;
    let persist = flag("persist", raw.persist.as_deref())?;
    match (raw.ttl, persist) {
        (Some(ttl), false) => Ok(Touch::After(parse_ttl(&ttl).map_err(ApiError::bad_request)?)),
        (None, true) => Ok(Touch::Persist),
        _ => Err(ApiError::bad_request(
            "PATCH takes exactly one of ttl=<duration> (a new deadline) or persist=true (no deadline)",
        )),
    }
}

/// Time left as `X-Kv-Expires-In` spells it: seconds, three decimals.
pub fn format_expires_in(left: Duration) -> String {
    let ms = left.as_millis();
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// Reads `X-Kv-Expires-In` back (`None` when absent or malformed).
pub fn parse_expires_in(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(&X_KV_EXPIRES_IN)?.to_str().ok()?;
    let (secs, frac) = text.split_once('.').unwrap_or((text, "0"));
    let secs: u64 = secs.parse().ok()?;
    if frac.is_empty() || frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms: u64 = format!("{frac:0<3}").parse().ok()?;
    Some(Duration::from_millis(secs.checked_mul(1000)?.checked_add(ms)?))
}

/// The two headers of a read answer for a key with a deadline at `expires_at`
/// (unix ms), counted at `now`: `X-Kv-Expires-In` and `Expires`.
pub fn headers(expires_at: u64, now: u64) -> [(HeaderName, HeaderValue); 2] {
    let left = Duration::from_millis(expires_at.saturating_sub(now));
    let expires_in = HeaderValue::from_str(&format_expires_in(left)).expect("digits and a dot");
    [
        (X_KV_EXPIRES_IN.clone(), expires_in),
        (http::header::EXPIRES, http_date(expires_at)),
    ]
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`) for unix ms.
pub fn http_date(unix_ms: u64) -> HeaderValue {
    let time = UNIX_EPOCH + Duration::from_millis(unix_ms);
    HeaderValue::from_str(&httpdate::fmt_http_date(time)).expect("an HTTP date is a valid header value")
}

/// RFC 3339 with milliseconds, UTC: `2026-01-02T03:04:05.678Z`.
pub fn format_rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

/// Parses RFC 3339 in UTC (any precision; `Z` or `+00:00`) to unix ms.
pub fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let time = humantime::parse_rfc3339_weak(text.trim())
        .map_err(|err| format!("expires_at '{text}' is not an RFC 3339 time: {err}"))?;
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .map_err(|_| format!("expires_at '{text}' is before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_in_the_units_of_the_issue() {
        assert_eq!(parse_ttl("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_ttl("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_ttl("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("30"), Ok(Duration::from_secs(30)));
        for bad in [
            "0",
            "0s",
            "-1",
            "-5s",
            "",
            "s",
            "1.5s",
            "abc",
            "10d",
            "99999999999999999999",
            "+3",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn put_and_patch_queries() {
        assert_eq!(parse_put_query(None).unwrap(), Expiry::Clear);
        assert_eq!(
            parse_put_query(Some("ttl=30s")).unwrap(),
            Expiry::After(Duration::from_secs(30))
        );
        assert_eq!(parse_put_query(Some("keepttl=true")).unwrap(), Expiry::Keep);
        assert!(parse_put_query(Some("ttl=0")).is_err());
        assert!(parse_put_query(Some("ttl=5s&keepttl=true")).is_err());
        assert!(parse_put_query(Some("keepttl=maybe")).is_err());
        assert_eq!(
            parse_patch_query(Some("ttl=1h")).unwrap(),
            Touch::After(Duration::from_secs(3600))
        );
        assert_eq!(parse_patch_query(Some("persist=true")).unwrap(), Touch::Persist);
        assert!(parse_patch_query(None).is_err());
        assert!(parse_patch_query(Some("ttl=1s&persist=true")).is_err());
        let expiry = Expiry::After(Duration::from_millis(1234));
        assert_eq!(parse_put_query(expiry.query().as_deref()).unwrap(), expiry);
    }

    #[test]
    fn time_left_on_the_wire() {
        assert_eq!(format_expires_in(Duration::from_millis(1532)), "1.532");
        assert_eq!(format_expires_in(Duration::from_micros(29_000_999)), "29.000");
        let mut headers = HeaderMap::new();
        let [(name, value), (_, date)] = super::headers(1_700_000_001_532, 1_700_000_000_000);
        headers.insert(name, value);
        assert_eq!(parse_expires_in(&headers), Some(Duration::from_millis(1532)));
        assert_eq!(date, "Tue, 14 Nov 2023 22:13:21 GMT");
        assert_eq!(format_rfc3339(1_700_000_001_532), "2023-11-14T22:13:21.532Z");
        assert_eq!(parse_rfc3339("2023-11-14T22:13:21.532Z"), Ok(1_700_000_001_532));
        assert!(expired(Some(5), 5) && !expired(Some(6), 5) && !expired(None, 5));
    }
}
