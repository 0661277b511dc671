//! The key-value operations as the proxy performs them, shared by the HTTP
//! front and the telnet adapter: read-through GET, write-then-invalidate PUT
//! and DELETE, pass-through DUMP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::sync::atomic::AtomicU64;

use axum::http::{HeaderMap, Method, StatusCode};
use bytes::Bytes;
use kv_api::stats;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cache::{Cache, CacheStatus, Cached, Fill, Filled};
use crate::coherence::Coherence;
use crate::upstream::{Fetch, Relayed, Upstream, UpstreamError};

/// A GET's answer.
pub struct Lookup {
    pub status: CacheStatus,
    /// `None`: the key does not exist.
    pub value: Option<Arc<Cached>>,
    /// Whether the answer says its `Age`: a hit, a stale answer, or a miss
    /// answered with the entry another request's fill had just cached.
    pub shows_age: bool,
}

impl Lookup {
    /// The key's time left now, for `X-Kv-Expires-In` (and `TTL`).
    pub fn time_left(&self) -> Option<Duration> {
        self.value.as_ref().and_then(|v| v.time_left())
    }

    /// Seconds since the value was fetched, for the `Age` header.
    pub fn age(&self) -> Duration {
        self.value.as_ref().map_or(Duration::ZERO, |v| v.stored_at.elapsed())
    }
}

/// Why a GET could not be answered from the cache or the upstream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GetError {
    /// No usable answer came (502, 504).
    #[error(transparent)]
    Unreachable(#[from] UpstreamError),
    /// The upstream answered with an error of its own (503 from a failed store, say).
    #[error("the upstream answered {}", .0.status)]
    Refused(Relayed),
}

#[derive(Clone)]
pub struct Service {
    pub cache: Cache,
    pub counters: Counters,
    pub upstream: Upstream,
    /// The change feed's state: whether the cache may answer.
    pub coherence: Arc<Coherence>,
    /// Test hook (`--debug-fill-delay`): a pause between an upstream read and its cache insert.
    fill_delay: Duration,
    /// The last failed fill of each key, and when it failed; see [`Service::get`].
    failures: moka::future::Cache<String, Arc<(Instant, GetError)>>,
    /// Keys whose last write had an unknown outcome; see [`Service::write`].
    uncertain: Arc<Uncertain>,
}

/// How long a failed fill is remembered for the misses that queued behind it.
/// Anything past one upstream timeout is only a safety margin.
const FAILURE_MEMORY: Duration = Duration::from_secs(60);

impl Service {
    pub fn new(cache: Cache, upstream: Upstream, coherence: Arc<Coherence>) -> Self {
        let failures = moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(FAILURE_MEMORY)
            .build();
        Self {
            cache,
            upstream,
            coherence,
            fill_delay: Duration::ZERO,
            failures,
            uncertain: Arc::new(Uncertain::new(Duration::from_secs(5))),
            counters: Counters::default(),
        }
    }

    pub fn with_fill_delay(mut self, delay: Duration) -> Self {
        self.fill_delay = delay;
        self
    }

    /// How long after a write with an unknown outcome fills of its key are
    /// not cached: `--upstream-timeout`, the time a request we gave up on may
    /// still take to land.
    pub fn with_unknown_outcome_window(mut self, window: Duration) -> Self {
        self.uncertain = Arc::new(Uncertain::new(window));
        self
    }

    /// The cached answer for `key`, if there is a fresh one (counted as a hit).
    pub async fn hit(&self, key: &str) -> Option<Lookup> {
        if !self.coherence.serving() {
            return None;
        }
        let value = self.cache.fresh(key).await?;
        self.counters.hits.inc();
        Some(Lookup {
            status: CacheStatus::Hit,
            value: Some(value),
            shows_age: true,
        })
    }

    pub async fn get(&self, key: &str) -> Result<Lookup, GetError> {
        self.get_at_least(key, None).await
    }

    /// A GET that must not answer with a state older than revision `min`
    /// (`X-Kv-Min-Revision`). The cache answers only while the change feed
    /// is healthy (and, with `min`, has applied it, waiting briefly for
    /// that); otherwise the read goes upstream and nothing is cached.
    pub async fn get_at_least(&self, key: &str, min: Option<u64>) -> Result<Lookup, GetError> {
        let from_cache = self.coherence.serving()
            && match min {
                None => true,
                Some(min) => self.coherence.reached(min).await,
            };
        if !from_cache {
            return self.forward(key).await;
        }
        if let Some(lookup) = self.hit(key).await {
            return Ok(lookup);
        }
        let counters = &self.counters;
        counters.misses.inc();
        let (upstream, fill_delay, failures, uncertain) =
            (&self.upstream, self.fill_delay, &self.failures, &self.uncertain);
        let queued_at = Instant::now();
        let filled = self
            .cache
            .fill(key, || async move {
                // Single-flight for failures too: when the fill this miss queued
                // behind failed, its answer is ours. Asking again in turn would make
                // the n-th of n concurrent misses wait n upstream timeouts.
                if let Some(failure) = failures.get(key).await.filter(|f| f.0 >= queued_at) {
                    return Err(failure.1.clone());
                }
                counters.upstream_requests.inc();
                // The entry's age counts from here: what it holds may be this old.
                let began = Instant::now();
                // Taken before the read: a flush during the read makes the entry old.
                let generation = upstream.identity().generation();
                let read = upstream.read(key).await;
                if !fill_delay.is_zero() {
                    tokio::time::sleep(fill_delay).await;
                }
                let result = match read {
                    Ok(Fetch::Found(f)) => {
                        let generation = generation.min(f.generation);
                        let value = Cached::new(f.value, f.content_type, f.version, began, generation)
                            .with_expiry(f.expires_in, f.expires);
                        // Decided under the key's lock, after the read: a write with
                        // an unknown outcome either marked the key already, or its
                        // invalidation is queued behind this fill and drops what it put.
                        Ok(if uncertain.contains(key) {
                            Fill::Pass(value)
                        } else {
                            Fill::Keep(value)
                        })
                    }
                    Ok(Fetch::NotFound) => Ok(Fill::Absent),
                    Ok(Fetch::Failed(passed)) => Err(GetError::Refused(passed)),
                    Err(err) => {
                        counters.upstream_errors.inc();
                        Err(GetError::Unreachable(err))
                    }
                };
                if let Err(err) = &result {
                    failures
                        .insert(key.to_owned(), Arc::new((Instant::now(), err.clone())))
                        .await;
                }
                result
            })
            .await;
        match filled {
            Ok(Filled::Fetched(value)) => Ok(Lookup {
                status: CacheStatus::Miss,
                value: Some(value),
                shows_age: false,
            }),
            Ok(Filled::Shared(value)) => Ok(Lookup {
                status: CacheStatus::Miss,
                value: Some(value),
                shows_age: true,
            }),
            Ok(Filled::Absent) => Ok(Lookup {
                status: CacheStatus::Miss,
                value: None,
                shows_age: false,
            }),
            Err(err) => self.stale_or(key, err).await,
        }
    }

    /// After a failed upstream read: the entry the cache still holds past
    /// its freshness, if any (`X-Cache: STALE`), else the failure.
    async fn stale_or(&self, key: &str, failed: GetError) -> Result<Lookup, GetError> {
        let Some(value) = self.cache.stale(key).await else {
            return Err(failed);
        };
        self.counters.stale.inc();
        tracing::warn!(key, cause = %failed, "upstream failed; serving a stale entry");
        Ok(Lookup {
            status: CacheStatus::Stale,
            value: Some(value),
            shows_age: true,
        })
    }

    /// Reads `key` upstream without the cache (the feed cannot vouch for it).
    async fn forward(&self, key: &str) -> Result<Lookup, GetError> {
        let counters = &self.counters;
        counters.misses.inc();
        counters.upstream_requests.inc();
        let began = Instant::now();
        let failed = match self.upstream.read(key).await {
            Ok(Fetch::Found(f)) => {
                // The time left goes on with a forwarded read too (X-Kv-Expires-In, Expires).
                let value = Cached::new(f.value, f.content_type, f.version, began, f.generation)
                    .with_expiry(f.expires_in, f.expires);
                return Ok(Lookup {
                    status: CacheStatus::Miss,
                    value: Some(Arc::new(value)),
                    shows_age: false,
                });
            }
            Ok(Fetch::NotFound) => {
                return Ok(Lookup {
                    status: CacheStatus::Miss,
                    value: None,
                    shows_age: false,
                });
            }
            Ok(Fetch::Failed(passed)) => GetError::Refused(passed),
            Err(err) => {
                counters.upstream_errors.inc();
                GetError::Unreachable(err)
            }
        };
        self.stale_or(key, failed).await
    }

    /// Forwards a PUT or DELETE and, once the upstream has answered, makes sure
    /// no older value of the key is served from here again.
    ///
    /// The upstream call and the invalidation after it run in a task of their
    /// own, to completion: hyper drops a handler whose client went away (an
    /// HTTP/1 close, an HTTP/2 stream reset), and a write already sent may
    /// land all the same, so its invalidation must not depend on the client.
    pub async fn write(
        &self,
        method: Method,
        key: &str,
        query: Option<String>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Relayed, UpstreamError> {
        let (this, key, headers) = (self.clone(), key.to_owned(), headers.clone());
        to_completion(async move { this.write_through(method, &key, query.as_deref(), &headers, body).await })
            .await
            .unwrap_or_else(|cancelled| {
                Err(UpstreamError::Unavailable {
                    upstream: self.upstream.upstream().to_owned(),
                    cause: format!("the write was cancelled: {cancelled}"),
                })
            })
    }

    async fn write_through(
        &self,
        method: Method,
        key: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Relayed, UpstreamError> {
        // A 404 to a DELETE or a PATCH says the key is gone.
        let is_delete = method != Method::PUT;
        let result = self.upstream.write(method, key, query, headers, body).await;
        let answer = result.as_ref().ok().map(|relayed| (relayed.status, relayed.revision()));
        let invalidation = match after_write(answer, is_delete) {
            AfterWrite::Nothing => None,
            AfterWrite::Invalidate(revision) => Some(revision),
            AfterWrite::Uncertain => {
                self.uncertain.mark(key);
                Some(None)
            }
        };
        if result.is_err() {
            self.counters.upstream_errors.inc();
        }
        if let Some(revision) = invalidation {
            self.cache.invalidate(key, revision).await;
        }
        result
    }
}

/// Runs `work` in a task of its own, to completion whatever becomes of the
/// caller (hyper drops a handler whose client went away); a panic in it is
/// the caller's panic. `Err`: the runtime cancelled the task (shutdown).
async fn to_completion<T: Send + 'static>(
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    match tokio::spawn(work).await {
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        other => other,
    }
}

/// Why a batch through the proxy failed without an upstream answer to relay.
#[derive(Debug)]
pub enum BatchFailure {
    /// The client's body was refused (too large, too slow, over the budget).
    Client(kv_api::ApiError),
    /// No usable answer came from the upstream.
    Upstream(UpstreamError),
}

/// The keys a batch body named, as it streamed through.
#[derive(Debug, Default)]
struct BatchKeys {
    keys: Vec<String>,
    /// A line (not blank) whose key could not be read: the server would
    /// refuse it, but should it have written it, the proxy cannot say which
    /// key changed, and flushes its cache.
    unparsed: bool,
    /// The body went wrong on the client's side.
    refused: Option<kv_api::ApiError>,
}

impl BatchKeys {
    fn line(&mut self, line: &[u8]) {
        if kv_api::batch::is_blank(line) {
            return;
        }
        match kv_api::batch::line_key(line) {
            Some(key) => self.keys.push(key),
            None => self.unparsed = true,
        }
    }
}

impl Service {
    /// Forwards a batch (`POST /kv`, NDJSON), streaming its body upstream as
    /// it arrives while reading the key of every line, and, once the upstream
    /// has answered, makes sure no older value of any of those keys is served
    /// from here again (read-your-writes): on a 2xx each is invalidated below
    /// the batch's `X-Kv-Revision`; on a 5xx or no answer each is invalidated
    /// and marked uncertain; a 4xx wrote nothing (the server checks every line
    /// before it writes any).
    ///
    /// Like [`Service::write`], the upstream call and the invalidation run in
    /// a task of their own, so a client that goes away cannot skip them.
    pub async fn batch(
        &self,
        headers: &HeaderMap,
        body: axum::body::Body,
        length: Option<u64>,
        limit: usize,
    ) -> Result<Relayed, BatchFailure> {
        let (this, headers) = (self.clone(), headers.clone());
        to_completion(async move { this.batch_through(&headers, body, length, limit).await })
            .await
            .unwrap_or_else(|cancelled| {
                Err(BatchFailure::Upstream(UpstreamError::Unavailable {
                    upstream: self.upstream.upstream().to_owned(),
                    cause: format!("the batch was cancelled: {cancelled}"),
                }))
            })
    }

    async fn batch_through(
        &self,
        headers: &HeaderMap,
        body: axum::body::Body,
        length: Option<u64>,
        limit: usize,
    ) -> Result<Relayed, BatchFailure> {
        use futures_util::StreamExt as _;
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
        let reader = tokio::spawn(async move {
            let mut found = BatchKeys::default();
            let mut partial: Vec<u8> = Vec::new();
            let mut received = 0usize;
            let mut stream = body.into_data_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(err) => {
                        found.refused = Some(kv_edge::request::body_error(&err));
                        let _ = sender
                            .send(Err(std::io::Error::other("the client's body failed")))
                            .await;
                        return found;
                    }
                };
                received += chunk.len();
                if received > limit {
                    found.refused = Some(kv_api::ApiError::new(
                        kv_api::ErrorCode::ValueTooLarge,
                        format!("a batch body may be at most {limit} bytes; split it into several POSTs"),
                    ));
                    let _ = sender.send(Err(std::io::Error::other("the batch is too large"))).await;
                    return found;
                }
                let mut rest = &chunk[..];
                while let Some(at) = rest.iter().position(|b| *b == b'\n') {
                    if partial.is_empty() {
                        found.line(&rest[..at]);
                    } else {
                        partial.extend_from_slice(&rest[..at]);
                        found.line(&partial);
                        partial.clear();
                    }
                    rest = &rest[at + 1..];
                }
                partial.extend_from_slice(rest);
                if sender.send(Ok(chunk)).await.is_err() {
                    // The upstream request ended (an early answer, or it failed).
                    return found;
                }
            }
            found.line(&partial);
            found
        });
        let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        let result = self
            .upstream
            .batch(headers, reqwest::Body::wrap_stream(stream), length)
            .await;
        let found = match reader.await {
            Ok(found) => found,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            // Cancelled: the runtime is going away. Nothing known of the keys.
            Err(_) => BatchKeys {
                unparsed: true,
                ..BatchKeys::default()
            },
        };
        let answer = result.as_ref().ok().map(|relayed| (relayed.status, relayed.revision()));
        let after = match answer {
            Some((status, revision)) if status.is_success() => AfterWrite::Invalidate(revision),
            // The server checks every line before it writes any: a 4xx wrote nothing.
            Some((status, _)) if status.is_client_error() => AfterWrite::Nothing,
            Some(_) | None => AfterWrite::Uncertain,
        };
        if result.is_err() {
            self.counters.upstream_errors.inc();
        }
        let revision = match after {
            AfterWrite::Nothing => None,
            AfterWrite::Invalidate(revision) => Some(revision),
            AfterWrite::Uncertain => {
                if found.unparsed || found.keys.len() > MAX_UNCERTAIN_KEYS / 10 {
                    self.uncertain.mark_all();
                } else {
                    for key in &found.keys {
                        self.uncertain.mark(key);
                    }
                }
                Some(None)
            }
        };
        if let Some(revision) = revision {
            if found.unparsed {
                tracing::warn!("a batch with a line whose key could not be read may have written; flushing the cache");
                self.cache.flush();
            }
            for key in &found.keys {
                self.cache.invalidate(key, revision).await;
            }
        }
        match (result, found.refused) {
            // The client's own failure is the answer, whatever the upstream said of the cut body.
            (_, Some(refused)) => Err(BatchFailure::Client(refused)),
            (Ok(relayed), None) => Ok(relayed),
            (Err(err), None) => Err(BatchFailure::Upstream(err)),
        }
    }
}

/// The most keys remembered as uncertain; past it, every key is.
const MAX_UNCERTAIN_KEYS: usize = 10_000;

/// What a write's answer means for the cached entry of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterWrite {
    /// The write certainly did not happen and says nothing about the key.
    Nothing,
    /// Drop the entry unless it is at least this new (`None`: whatever its version).
    Invalidate(Option<u64>),
    /// The write may have happened, or may yet: drop the entry, and do not
    /// cache fills of the key until the write can no longer land.
    Uncertain,
}

/// `answer`: the upstream's status and `X-Kv-Revision`, or `None` when no
/// answer came.
fn after_write(answer: Option<(StatusCode, Option<u64>)>, is_delete: bool) -> AfterWrite {
    match answer {
        Some((status, revision)) if status.is_success() => AfterWrite::Invalidate(revision),
        // The write did not happen, and the answer proves the cached entry
        // may be stale: 412 says the key's version is not the one the client
        // named (which may be the cached one), 404 on DELETE that the key is
        // gone. Dropping an entry that was current costs one miss.
        Some((StatusCode::PRECONDITION_FAILED, _)) => AfterWrite::Invalidate(None),
        Some((StatusCode::NOT_FOUND, _)) if is_delete => AfterWrite::Invalidate(None),
        // Any other 4xx (400, 413...) certainly did not happen.
        Some((status, _)) if status.is_client_error() => AfterWrite::Nothing,
        // A 5xx, or no answer.
        Some(_) | None => AfterWrite::Uncertain,
    }
}

/// Keys whose last write had an unknown outcome (no answer, or a 5xx), each
/// until that write can no longer land: fills of those keys are answered but
/// not cached, so a value read before the write lands is not kept for a TTL.
struct Uncertain {
    window: Duration,
    state: Mutex<UncertainKeys>,
}

#[derive(Default)]
struct UncertainKeys {
    until: HashMap<String, Instant>,
    /// Set when the map is full: every key is uncertain until then.
    all_until: Option<Instant>,
}

impl Uncertain {
    fn new(window: Duration) -> Self {
        Self {
            window,
            state: Mutex::default(),
        }
    }

    fn mark(&self, key: &str) {
        let now = Instant::now();
        let until = now + self.window;
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.until.len() >= MAX_UNCERTAIN_KEYS && !state.until.contains_key(key) {
            state.until.retain(|_, until| *until > now);
        }
        if state.until.len() >= MAX_UNCERTAIN_KEYS && !state.until.contains_key(key) {
            state.all_until = Some(until);
        } else {
            state.until.insert(key.to_owned(), until);
        }
    }

    /// Every key is uncertain for the window (a batch of many keys failed).
    fn mark_all(&self) {
        let until = Instant::now() + self.window;
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.all_until = Some(state.all_until.map_or(until, |all| all.max(until)));
    }

    fn contains(&self, key: &str) -> bool {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.until.is_empty() && state.all_until.is_none() {
            return false;
        }
        let now = Instant::now();
        if state.all_until.is_some_and(|until| until <= now) {
            state.all_until = None;
        }
        match state.until.get(key) {
            Some(until) if *until <= now => {
                state.until.remove(key);
            }
            Some(_) => return true,
            None => {}
        }
        state.all_until.is_some()
    }
}

/// The service's figures; with the cache's, they are what `/metrics`,
/// `STATS` and `kv stats` show, under the names of [`kv_api::stats`].
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub hits: Counter,
    pub misses: Counter,
    pub stale: Counter,
    pub upstream_requests: Counter,
    pub upstream_errors: Counter,
}

impl Service {
    /// Registers every figure (the service's and the cache's) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let (ours, cache) = (&self.counters, &self.cache.counters);
        let counters = [
            (stats::CACHE_HITS, &ours.hits),
            (stats::CACHE_MISSES, &ours.misses),
            (stats::CACHE_STALE, &ours.stale),
            (stats::CACHE_EVICTIONS, &cache.evictions),
            (stats::CACHE_EXPIRATIONS, &cache.expirations),
            (stats::UPSTREAM_REQUESTS, &ours.upstream_requests),
            (stats::UPSTREAM_ERRORS, &ours.upstream_errors),
        ];
        for (stat, counter) in counters {
            registry.register(stat.name, stat.help, counter.clone());
        }
        let feed = &self.coherence.counters;
        registry.register(stats::FEED_HEALTHY.name, stats::FEED_HEALTHY.help, feed.healthy.clone());
        registry.register(
            stats::FEED_APPLIED_REVISION.name,
            stats::FEED_APPLIED_REVISION.help,
            feed.applied_revision.clone(),
        );
        registry.register(
            stats::FEED_LAG_SECONDS.name,
            stats::FEED_LAG_SECONDS.help,
            feed.lag_seconds.clone(),
        );
        for (stat, counter) in [
            (stats::FEED_RESETS, &feed.resets),
            (stats::FEED_FLUSHES, &feed.flushes),
            (stats::FEED_EVENTS_APPLIED, &feed.events_applied),
        ] {
            registry.register(stat.name, stat.help, counter.clone());
        }
        registry.register(stats::CACHE_BYTES.name, stats::CACHE_BYTES.help, cache.bytes.clone());
        let config = self.cache.config();
        let max_bytes = Gauge::<i64>::default();
        max_bytes.set(i64::try_from(config.max_bytes).unwrap_or(i64::MAX));
        registry.register(stats::CACHE_MAX_BYTES.name, stats::CACHE_MAX_BYTES.help, max_bytes);
        let ttl = Gauge::<f64, AtomicU64>::default();
        ttl.set(config.ttl.as_secs_f64());
        registry.register(stats::CACHE_TTL_SECONDS.name, stats::CACHE_TTL_SECONDS.help, ttl);
    }

    /// Every figure, as `STATS` prints it: the names and order of [`kv_api::stats::ALL`].
    pub async fn stats(&self) -> Vec<(String, String)> {
        let (ours, cache) = (&self.counters, &self.cache.counters);
        let (entries, bytes) = self.cache.size().await;
        let config = self.cache.config();
        self.coherence.refresh();
        let feed = &self.coherence.counters;
        [
            (stats::CACHE_HITS, ours.hits.get().to_string()),
            (stats::CACHE_MISSES, ours.misses.get().to_string()),
            (stats::CACHE_STALE, ours.stale.get().to_string()),
            (stats::CACHE_EVICTIONS, cache.evictions.get().to_string()),
            (stats::CACHE_EXPIRATIONS, cache.expirations.get().to_string()),
            (stats::CACHE_ENTRIES, entries.to_string()),
            (stats::CACHE_BYTES, bytes.to_string()),
            (stats::CACHE_MAX_BYTES, config.max_bytes.to_string()),
            (stats::CACHE_TTL_SECONDS, config.ttl.as_secs_f64().to_string()),
            (stats::UPSTREAM_REQUESTS, ours.upstream_requests.get().to_string()),
            (stats::UPSTREAM_ERRORS, ours.upstream_errors.get().to_string()),
            (stats::FEED_HEALTHY, feed.healthy.get().to_string()),
            (stats::FEED_APPLIED_REVISION, feed.applied_revision.get().to_string()),
            (stats::FEED_LAG_SECONDS, feed.lag_seconds.get().to_string()),
            (stats::FEED_RESETS, feed.resets.get().to_string()),
            (stats::FEED_FLUSHES, feed.flushes.get().to_string()),
            (stats::FEED_EVENTS_APPLIED, feed.events_applied.get().to_string()),
        ]
        .into_iter()
        .map(|(stat, value)| (stat.name.to_owned(), value))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_write_answer_means_for_the_cached_entry() {
        let put = |status: u16, revision| after_write(Some((StatusCode::from_u16(status).unwrap(), revision)), false);
        let delete = |status: u16| after_write(Some((StatusCode::from_u16(status).unwrap(), None)), true);
        assert_eq!(put(201, Some(7)), AfterWrite::Invalidate(Some(7)));
        assert_eq!(put(200, Some(8)), AfterWrite::Invalidate(Some(8)));
        assert_eq!(delete(204), AfterWrite::Invalidate(None));
        assert_eq!(
            put(412, None),
            AfterWrite::Invalidate(None),
            "a 412 shows the entry may be stale"
        );
        assert_eq!(
            delete(404),
            AfterWrite::Invalidate(None),
            "a 404 on DELETE shows the key is gone"
        );
        assert_eq!(put(404, None), AfterWrite::Nothing);
        assert_eq!(put(413, None), AfterWrite::Nothing);
        assert_eq!(put(400, None), AfterWrite::Nothing);
        assert_eq!(put(503, None), AfterWrite::Uncertain);
        assert_eq!(put(504, None), AfterWrite::Uncertain);
        assert_eq!(after_write(None, false), AfterWrite::Uncertain, "no answer at all");
    }

    #[test]
    fn an_uncertain_key_is_uncertain_for_its_window_only() {
        let uncertain = Uncertain::new(Duration::from_millis(30));
        assert!(!uncertain.contains("a"));
        uncertain.mark("a");
        assert!(uncertain.contains("a"));
        assert!(!uncertain.contains("b"));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!uncertain.contains("a"), "the window passed");
    }

    #[test]
    fn when_the_map_is_full_every_key_is_uncertain() {
        let uncertain = Uncertain::new(Duration::from_secs(60));
        for i in 0..MAX_UNCERTAIN_KEYS {
            uncertain.mark(&format!("k{i}"));
        }
        assert!(!uncertain.contains("other"));
        uncertain.mark("one-too-many");
        assert!(uncertain.contains("other"), "a full map makes every key uncertain");
    }
}
