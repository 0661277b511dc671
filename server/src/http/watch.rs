//! The change feed over HTTP: `GET /kv?watch=1[&since=REV][&prefix=P][&values=0]`,
//! NDJSON by default, SSE when `Accept` names `text/event-stream`. Without
//! `watch`, the same route is DUMP, whose answer then says the revision it
//! read at (`X-Kv-Revision`).
//!
//! The stream reads the store's [`Feed`] from its own cursor, one batch at a
//! time, only when hyper asks for more (so a client that does not read holds
//! a cursor, not a queue). It starts with `sync`, sends `progress` as soon as
//! it has caught up and then whenever it has sent nothing for a second, and
//! `reset` when its cursor fell out of the history (SSE then continues from
//! the head; NDJSON ends, since its client must list again). A subscriber
//! whose socket takes no byte for 10 s is dropped by kv-edge
//! (`activity::WRITE_STALL`); the progress lines find dead ones.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use kv_api::condition::X_KV_REVISION;
use kv_api::feed::{self, Compacted, Event, Kind, PROGRESS_INTERVAL, WatchQuery};
use kv_api::{ApiError, ErrorCode};

use super::AppState;
use crate::store::feed::{Record, SubscribeError, Subscription};

/// Records read from the history per chunk sent.
const BATCH: usize = 256;

/// The least time between two chunks to one subscriber, per subscriber the
/// feed has, up to [`MAX_COALESCE`]. Under a stream of writes every chunk
/// costs a wake-up and a write(2) here, and a wake-up and a read(2) in the
/// subscriber, whatever it carries: the chunks per second, not the bytes,
/// are what a fan-out costs. Scaled by the count, the whole feed sends at
/// most about 10,000 chunks a second under load however many subscribe:
/// three proxies keeping their caches current wait at most 0.3 ms, a
/// hundred subscribers 10 ms. (At 20 µs, 2 ms at most, 100 curl subscribers
/// got 50,000 chunks a second between them, used half a core to read them,
/// and the server took 7.0-7.4 k of 10 k writes offered.) A quiet feed is
/// never delayed: the first change after a pause goes out at once.
const COALESCE_PER_WATCHER: Duration = Duration::from_micros(100);
const MAX_COALESCE: Duration = Duration::from_millis(10);

/// `GET /kv`: a watch when the query asks for one, else DUMP.
pub(super) async fn dump_or_watch(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(watch) = WatchQuery::parse(query.as_deref())? {
        return watch_feed(&state, watch, &headers);
    }
    // Read before the listing: every write up to it is in what follows (a
    // later one may be too; each item's version says so).
    let revision = state.store.revision();
    let mut response = super::dump::dump(State(state), RawQuery(query), headers).await?;
    // A page of a listing pinned to a revision (etcd) says which, itself.
    if response.status().is_success() && !response.headers().contains_key(&X_KV_REVISION) {
        response
            .headers_mut()
            .insert(X_KV_REVISION.clone(), HeaderValue::from(revision));
    }
    Ok(response)
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            media.eq_ignore_ascii_case(feed::EVENT_STREAM) && !refused
        })
}

fn watch_feed(state: &AppState, watch: WatchQuery, headers: &HeaderMap) -> Result<Response, ApiError> {
    let sse = wants_sse(headers);
    let since = match watch.since {
        Some(since) => Some(since),
        None if sse => headers
            .get(&feed::LAST_EVENT_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.trim().is_empty())
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| ApiError::bad_request("Last-Event-ID must be a revision (a whole number)"))
            })
            .transpose()?,
        None => None,
    };
    let store_feed = state.store.feed();
    let mut first = Vec::new();
    let subscription = match store_feed.subscribe(since) {
        Ok(subscription) => subscription,
        Err(SubscribeError::TooMany { limit }) => {
            return Err(ApiError::new(
                ErrorCode::TooManyWatchers,
                format!("the server already has {limit} change-feed subscribers (--max-watchers); retry shortly"),
            ));
        }
        Err(SubscribeError::Ahead { current }) => {
            return Err(ApiError::bad_request(format!(
                "since {} is above the current revision {current}",
                since.unwrap_or_default()
            )));
        }
        Err(SubscribeError::Compacted { oldest, current }) if !sse => {
            let body = Compacted {
                error: ErrorCode::RevisionCompacted.as_str().to_owned(),
                message: format!(
                    "the change history no longer reaches revision {}: it holds revisions after {oldest} \
                     (current {current}); list again, then watch from the listing's X-Kv-Revision",
                    since.unwrap_or_default()
                ),
                oldest,
                current,
            };
            return Ok((StatusCode::GONE, axum::Json(body)).into_response());
        }
        Err(SubscribeError::Compacted { oldest, current }) => {
            // A browser's EventSource gives up for good on a non-200: tell it in band.
            first.push(frame(
                true,
                Kind::Reset,
                Some(current),
                &json(&Event::reset(oldest, current)),
            ));
            store_feed.subscribe(None).map_err(|_| {
                ApiError::new(
                    ErrorCode::TooManyWatchers,
                    "the server has too many change-feed subscribers (--max-watchers); retry shortly",
                )
            })?
        }
    };
    let start = subscription.position();
    first.push(frame(sse, Kind::Sync, Some(start), &json(&Event::sync(start))));
    let watcher = Watcher {
        subscription,
        sse,
        values: watch.values,
        prefix: watch.prefix,
        pending: first,
        caught_up: false,
        last_sent: Instant::now(),
        ended: false,
    };
    let stream = futures_util::stream::unfold(watcher, |mut watcher| async move {
        let chunk = watcher.next_chunk().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), watcher))
    });
    let content_type = if sse {
        feed::EVENT_STREAM
    } else {
        "application/x-ndjson"
    };
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    headers.insert(X_KV_REVISION.clone(), HeaderValue::from(start));
    Ok(response)
}

fn json(event: &Event) -> Bytes {
    Bytes::from(serde_json::to_vec(event).expect("an event serialises"))
}

/// One event as it goes on the wire: an NDJSON line, or an SSE frame.
fn frame(sse: bool, kind: Kind, id: Option<u64>, json: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(json.len() + 48);
    push_frame(&mut out, sse, kind, id, json);
    out.freeze()
}

fn push_frame(out: &mut BytesMut, sse: bool, kind: Kind, id: Option<u64>, json: &[u8]) {
    if sse {
        out.extend_from_slice(feed::sse_head(kind, id).as_bytes());
        out.extend_from_slice(json);
        out.extend_from_slice(feed::SSE_TAIL);
    } else {
        out.extend_from_slice(json);
        out.extend_from_slice(b"\n");
    }
}

/// One subscriber's stream.
struct Watcher {
    subscription: Subscription,
    sse: bool,
    values: bool,
    prefix: String,
    /// Frames to send before reading the history (sync, reset).
    pending: Vec<Bytes>,
    /// Whether a progress was sent since the stream (re)started at the head.
    caught_up: bool,
    last_sent: Instant,
    /// An NDJSON stream that fell out of the history ends after its reset.
    ended: bool,
}

impl Watcher {
    fn progress(&mut self) -> Bytes {
        let rev = self.subscription.position();
        self.last_sent = Instant::now();
        self.caught_up = true;
        frame(self.sse, Kind::Progress, Some(rev), &json(&Event::progress(rev)))
    }

    fn push_record(&self, out: &mut BytesMut, record: &Record) {
        push_frame(out, self.sse, record.kind, Some(record.rev), record.json(self.values));
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        if !self.pending.is_empty() {
            let mut out = BytesMut::new();
            for chunk in self.pending.drain(..) {
                out.extend_from_slice(&chunk);
            }
            self.last_sent = Instant::now();
            return Some(out.freeze());
        }
        if self.ended {
            return None;
        }
        let watchers = u32::try_from(self.subscription.watchers()).unwrap_or(u32::MAX);
        let coalesce = COALESCE_PER_WATCHER.saturating_mul(watchers).min(MAX_COALESCE);
        let since = self.last_sent.elapsed();
        if since < coalesce {
            tokio::time::sleep(coalesce - since).await;
        }
        loop {
            match self.subscription.read(BATCH) {
                Err(behind) => {
                    let reset = json(&Event::reset(behind.oldest, behind.current));
                    if !self.sse {
                        self.ended = true;
                        return Some(frame(false, Kind::Reset, None, &reset));
                    }
                    let head = self.subscription.skip_to_head();
                    self.caught_up = false;
                    self.last_sent = Instant::now();
                    return Some(frame(true, Kind::Reset, Some(head), &reset));
                }
                Ok(records) if records.is_empty() => {
                    if !self.caught_up {
                        return Some(self.progress());
                    }
                    let wait = PROGRESS_INTERVAL.saturating_sub(self.last_sent.elapsed());
                    if wait.is_zero() {
                        return Some(self.progress());
                    }
                    self.subscription.wait(wait).await;
                }
                Ok(records) => {
                    // Sized once: a coalesced chunk holds up to BATCH records,
                    // and growing it by doubling copied each of them again.
                    let size = records.iter().map(|r| r.json(self.values).len() + 64).sum();
                    let mut out = BytesMut::with_capacity(size);
                    for record in records.iter().filter(|r| r.key.starts_with(&self.prefix)) {
                        self.push_record(&mut out, record);
                    }
                    let drained = records.len() < BATCH;
                    if !out.is_empty() {
                        if drained && !self.caught_up {
                            out.extend_from_slice(&self.progress());
                        }
                        self.last_sent = Instant::now();
                        return Some(out.freeze());
                    }
                    if self.last_sent.elapsed() >= PROGRESS_INTERVAL || (drained && !self.caught_up) {
                        return Some(self.progress());
                    }
                    // A long replay that the prefix filters out must not hold the worker.
                    tokio::task::consume_budget().await;
                }
            }
        }
    }
}
