//! Coherence: the proxy keeps one change feed (`GET /kv?watch=1`, NDJSON) open
//! to its upstream and applies it to its cache, and answers from the cache
//! only while that feed is healthy.
//!
//! - A put or delete at revision R replaces (when the event carries the
//!   value) or drops the key's entry if it is older than R; a key that is not
//!   cached stays so. Events go through the cache's per-key lock, like fills
//!   and write invalidations (the ordering rule in [`crate::cache`]).
//! - Healthy means: a stream is open, it has caught up (a `progress` came
//!   after its replay), and some line came within `--feed-lease`. At start,
//!   and whenever that does not hold, every read is forwarded upstream (and
//!   not cached). The lease is checked on every hit, so hits stop the moment
//!   it runs out, whatever the feed task is doing.
//! - A stream that closes, or stays silent for the lease, is reopened with
//!   `since` = the last revision applied: an accepted replay resumes hits with
//!   the cache intact; a 410 (or a `reset`, or a `since` the upstream has never
//!   reached: another store) flushes the cache first.
//! - An upstream that offers no feed (an older kv-server answers the watch
//!   as a DUMP) leaves the proxy as it was before feeds: entries fresh for
//!   `--cache-ttl`. It is asked again every [`NO_FEED_RETRY`].
//! - `X-Kv-Min-Revision: R`: [`Coherence::reached`] waits up to
//!   [`MIN_REVISION_WAIT`] for the feed to apply R; if it does not, the read
//!   goes upstream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use futures_util::StreamExt as _;
use kv_api::feed::{Compacted, Event, Kind, WatchQuery};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use crate::cache::{Cache, Cached};
use crate::upstream::Upstream;

/// How long a read with `X-Kv-Min-Revision` waits for the feed before it reads upstream.
pub const MIN_REVISION_WAIT: Duration = Duration::from_millis(50);
/// How often an upstream without a feed is asked again.
pub const NO_FEED_RETRY: Duration = Duration::from_secs(30);
/// The longest wait between two attempts to open the feed.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

const CONNECTING: u8 = 0;
const CATCHING_UP: u8 = 1;
const HEALTHY: u8 = 2;
/// The upstream offers no feed: the cache works by TTL alone.
const NO_FEED: u8 = 3;
/// Coherence is off (`--coherence off`).
const OFF: u8 = 4;

/// The feed's state, as hits, `/metrics` and `STATS` see it.
pub struct Coherence {
    state: AtomicU8,
    lease: Duration,
    epoch: Instant,
    /// Milliseconds after `epoch` when a line last came from the feed.
    heard: AtomicU64,
    /// The last revision applied (every change up to it is in the cache).
    applied: tokio::sync::watch::Sender<u64>,
    /// Whether any stream was opened yet (before that, `since` is unknown).
    started: AtomicBool,
    pub counters: FeedCounters,
}

/// The feed's figures, under the names of [`kv_api::stats`].
#[derive(Debug, Default, Clone)]
pub struct FeedCounters {
    pub healthy: Gauge,
    pub applied_revision: Gauge,
    pub lag_seconds: Gauge<f64, AtomicU64>,
    pub resets: Counter,
    pub flushes: Counter,
    pub events_applied: Counter,
}

impl Coherence {
    pub fn new(enabled: bool, lease: Duration) -> Self {
        Self {
            state: AtomicU8::new(if enabled { CONNECTING } else { OFF }),
            lease,
            epoch: Instant::now(),
            heard: AtomicU64::new(0),
            applied: tokio::sync::watch::Sender::new(0),
            started: AtomicBool::new(false),
            counters: FeedCounters::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.state.load(Ordering::Relaxed) != OFF
    }

    /// Whether the cache may answer: coherence is off or the upstream has no
    /// feed (the TTL alone then), or the feed is healthy and within its lease.
    pub fn serving(&self) -> bool {
        match self.state.load(Ordering::Acquire) {
            HEALTHY => self.heard_within_lease(),
            NO_FEED | OFF => true,
            _ => false,
        }
    }

    fn heard_within_lease(&self) -> bool {
        let heard = Duration::from_millis(self.heard.load(Ordering::Acquire));
        self.epoch.elapsed().saturating_sub(heard) < self.lease
    }

    fn hear(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.heard.store(now, Ordering::Release);
    }

    fn set_state(&self, state: u8) {
        self.state.store(state, Ordering::Release);
    }

    /// The last revision the feed applied.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    fn set_applied(&self, revision: u64) {
        self.applied.send_if_modified(|applied| {
            let moved = revision > *applied;
            if moved {
                *applied = revision;
            }
            moved
        });
    }

    /// Whether the cache may answer a read that wants at least revision `min`:
    /// waits up to [`MIN_REVISION_WAIT`] for the feed to apply it.
    pub async fn reached(&self, min: u64) -> bool {
        if !self.serving() {
            return false;
        }
        if matches!(self.state.load(Ordering::Acquire), NO_FEED | OFF) {
            // No feed to wait for: only the upstream knows.
            return false;
        }
        let mut applied = self.applied.subscribe();
        let waited = tokio::time::timeout(MIN_REVISION_WAIT, applied.wait_for(|applied| *applied >= min)).await;
        matches!(waited, Ok(Ok(_))) && self.serving()
    }

    /// Refreshes the gauges (before `/metrics` or `STATS` reads them).
    pub fn refresh(&self) {
        let counters = &self.counters;
        counters.healthy.set(i64::from(self.serving() && self.enabled()));
        counters
            .applied_revision
            .set(i64::try_from(self.applied()).unwrap_or(i64::MAX));
        let lag = match self.state.load(Ordering::Acquire) {
            OFF | NO_FEED => 0.0,
            _ if !self.started.load(Ordering::Relaxed) => 0.0,
            _ => {
                let heard = Duration::from_millis(self.heard.load(Ordering::Acquire));
                self.epoch.elapsed().saturating_sub(heard).as_secs_f64()
            }
        };
        counters.lag_seconds.set(lag);
    }
}

/// How one stream ended.
enum Ended {
    /// Closed, silent for the lease, or failed: reopen from the last applied
    /// revision (at once if the stream had been healthy).
    Lost { was_healthy: bool },
    /// The history no longer reaches us, or this is another store: flushed; reopen from the head.
    Reset,
    /// The upstream offers no feed.
    NoFeed,
}

/// Keeps the feed open and applied until `stop` is cancelled.
pub async fn run(coherence: Arc<Coherence>, cache: Cache, upstream: Upstream, stop: CancellationToken) {
    if !coherence.enabled() {
        return;
    }
    let mut backoff = Duration::from_millis(20);
    loop {
        let since = coherence.started.load(Ordering::Relaxed).then(|| coherence.applied());
        let ended = tokio::select! {
            ended = follow(&coherence, &cache, &upstream, since) => ended,
            () = stop.cancelled() => return,
        };
        let wait = match ended {
            Ended::Reset => Duration::ZERO,
            Ended::Lost { was_healthy: true } => {
                backoff = Duration::from_millis(20);
                Duration::ZERO
            }
            Ended::Lost { was_healthy: false } => {
                coherence.set_state(CONNECTING);
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
            Ended::NoFeed => {
                if coherence.state.swap(NO_FEED, Ordering::AcqRel) != NO_FEED {
                    tracing::warn!(
                        upstream = upstream.upstream(),
                        "the upstream offers no change feed (an older kv-server?); cached entries are \
                         fresh for --cache-ttl, and writes made elsewhere show only when they expire"
                    );
                }
                NO_FEED_RETRY
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Opens one stream from `since` and applies it until it ends.
async fn follow(coherence: &Coherence, cache: &Cache, upstream: &Upstream, since: Option<u64>) -> Ended {
    let lease = coherence.lease;
    let query = WatchQuery {
        since,
        prefix: String::new(),
        values: true,
    };
    let response = match tokio::time::timeout(lease, upstream.watch(&query.path_and_query())).await {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => {
            tracing::debug!(cause = %err, "cannot open the change feed");
            return Ended::Lost { was_healthy: false };
        }
        Err(_) => {
            tracing::debug!("the change feed did not answer within the lease");
            return Ended::Lost { was_healthy: false };
        }
    };
    let status = response.status();
    let is_ndjson = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    match status {
        StatusCode::OK if is_ndjson => {}
        StatusCode::GONE => {
            let body = response.bytes().await.unwrap_or_default();
            let current = serde_json::from_slice::<Compacted>(&body).ok().map(|c| c.current);
            reset(
                coherence,
                cache,
                current,
                "the feed's history no longer reaches our revision",
            );
            return Ended::Reset;
        }
        StatusCode::BAD_REQUEST if since.is_some() => {
            // Our revision is above the upstream's: not the store we followed.
            reset(
                coherence,
                cache,
                None,
                "the upstream is behind our revision (another store?)",
            );
            return Ended::Reset;
        }
        StatusCode::OK | StatusCode::NOT_FOUND | StatusCode::NOT_ACCEPTABLE | StatusCode::METHOD_NOT_ALLOWED => {
            return Ended::NoFeed;
        }
        other => {
            tracing::debug!(status = %other, "the change feed was refused");
            return Ended::Lost { was_healthy: false };
        }
    }
    let mut lines = kv_edge::client::ndjson_lines(response, "feed");
    let mut healthy = false;
    loop {
        let line = match tokio::time::timeout(lease, lines.next()).await {
            Ok(Some(Ok(line))) => line,
            Ok(Some(Err(err))) => {
                suspend(coherence, &format!("the change feed failed: {err}"));
                return Ended::Lost { was_healthy: healthy };
            }
            Ok(None) => {
                suspend(coherence, "the change feed closed");
                return Ended::Lost { was_healthy: healthy };
            }
            Err(_) => {
                suspend(coherence, "nothing came from the change feed within --feed-lease");
                return Ended::Lost { was_healthy: healthy };
            }
        };
        coherence.hear();
        let Ok(event) = serde_json::from_str::<Event>(&line) else {
            tracing::warn!(line = %line.chars().take(200).collect::<String>(), "a malformed change-feed line; reopening the feed");
            suspend(coherence, "a malformed change-feed line");
            return Ended::Lost { was_healthy: healthy };
        };
        match event.kind {
            Kind::Sync => {
                coherence.set_state(CATCHING_UP);
                if since.is_none() {
                    // Nothing is known before this stream: start from an empty cache.
                    cache.flush();
                    coherence.started.store(true, Ordering::Relaxed);
                }
                if let Some(rev) = event.rev {
                    coherence.set_applied(rev);
                }
            }
            Kind::Put | Kind::Delete => {
                let (Some(rev), Some(key)) = (event.rev, event.key_text()) else {
                    continue;
                };
                let value = (event.kind == Kind::Put)
                    .then(|| event_value(&event, rev, cache.generation()))
                    .flatten();
                cache.apply(&key, rev, value).await;
                coherence.counters.events_applied.inc();
                coherence.set_applied(rev);
            }
            Kind::Progress => {
                if let Some(rev) = event.rev {
                    coherence.set_applied(rev);
                }
                if coherence.state.swap(HEALTHY, Ordering::AcqRel) != HEALTHY {
                    tracing::info!(
                        revision = coherence.applied(),
                        "the change feed is current; answering from the cache"
                    );
                }
                healthy = true;
            }
            Kind::Reset => {
                reset(
                    coherence,
                    cache,
                    event.current,
                    "the feed's history no longer reaches our revision",
                );
                return Ended::Reset;
            }
        }
    }
}

/// The cache entry a put event carries, if it carries its value. A key with
/// a deadline is not filled from its event: the event says when it expires
/// by the server's clock, and the cache counts deadlines only from a time
/// left the server reported on a read (so clock skew cannot stretch them);
/// the entry is dropped, and the next read fills it.
fn event_value(event: &Event, rev: u64, generation: u64) -> Option<Cached> {
    if event.expires_at.is_some() {
        return None;
    }
    let value = event.value_bytes()?;
    let content_type = event
        .content_type
        .as_deref()
        .and_then(|ct| HeaderValue::from_str(ct).ok())
        .unwrap_or(HeaderValue::from_static(kv_api::dump::DEFAULT_CONTENT_TYPE));
    Some(Cached::new(value.into(), content_type, rev, Instant::now(), generation))
}

fn suspend(coherence: &Coherence, why: &str) {
    if coherence.state.swap(CONNECTING, Ordering::AcqRel) == HEALTHY {
        tracing::warn!(
            revision = coherence.applied(),
            "{why}; forwarding every read until it is back"
        );
    }
}

/// Flushes the cache and starts over from the upstream's head.
fn reset(coherence: &Coherence, cache: &Cache, current: Option<u64>, why: &str) {
    coherence.set_state(CONNECTING);
    cache.flush();
    coherence.counters.resets.inc();
    coherence.counters.flushes.inc();
    tracing::warn!(revision = coherence.applied(), "{why}; cache flushed");
    // The next stream starts at the head; the applied revision follows its sync.
    coherence.started.store(false, Ordering::Relaxed);
    coherence.applied.send_replace(current.unwrap_or(0));
}
