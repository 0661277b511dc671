//! The key-value operations as the proxy performs them, shared by the HTTP
//! front and the telnet adapter: read-through GET, write-then-invalidate PUT
//! and DELETE, pass-through DUMP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, StatusCode};
use bytes::Bytes;

use crate::cache::{Cache, CacheStatus, Cached, Fill, Filled};
use crate::forward::{Forward, ForwardError, Passed, Read};

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
    /// Seconds since the value was fetched, for the `Age` header.
    pub fn age(&self) -> Duration {
        self.value.as_ref().map_or(Duration::ZERO, |v| v.stored_at.elapsed())
    }
}

/// Why a GET could not be answered from the cache or the upstream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// The upstream answered with an error of its own (503 from a failed store, say).
    #[error("the upstream answered {}", .0.status)]
    Upstream(Passed),
}

#[derive(Clone)]
pub struct Proxy {
    pub cache: Cache,
    pub forward: Forward,
    /// Test hook (`--debug-fill-delay`): a pause between an upstream read and its cache insert.
    fill_delay: Duration,
    /// The last failed fill of each key, and when it failed; see [`Proxy::get`].
    failures: moka::future::Cache<String, Arc<(Instant, ReadError)>>,
    /// Keys whose last write had an unknown outcome; see [`Proxy::write`].
    uncertain: Arc<Uncertain>,
}

/// How long a failed fill is remembered for the misses that queued behind it.
/// Anything past one upstream timeout is only a safety margin.
const FAILURE_MEMORY: Duration = Duration::from_secs(60);

impl Proxy {
    pub fn new(cache: Cache, forward: Forward) -> Self {
        let failures = moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(FAILURE_MEMORY)
            .build();
        Self {
            cache,
            forward,
            fill_delay: Duration::ZERO,
            failures,
            uncertain: Arc::new(Uncertain::new(Duration::from_secs(5))),
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
        let value = self.cache.fresh(key).await?;
        self.cache.counters.hits.inc();
        Some(Lookup {
            status: CacheStatus::Hit,
            value: Some(value),
            shows_age: true,
        })
    }

    pub async fn get(&self, key: &str) -> Result<Lookup, ReadError> {
        if let Some(lookup) = self.hit(key).await {
            return Ok(lookup);
        }
        let counters = &self.cache.counters;
        counters.misses.inc();
        let (forward, fill_delay, failures, uncertain) =
            (&self.forward, self.fill_delay, &self.failures, &self.uncertain);
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
                let read = forward.read(key).await;
                if !fill_delay.is_zero() {
                    tokio::time::sleep(fill_delay).await;
                }
                let result = match read {
                    Ok(Read::Found(f)) => {
                        let value = Cached::new(f.value, f.content_type, f.version, began, f.generation);
                        // Decided under the key's lock, after the read: a write with
                        // an unknown outcome either marked the key already, or its
                        // invalidation is queued behind this fill and drops what it put.
                        Ok(if uncertain.contains(key) {
                            Fill::Pass(value)
                        } else {
                            Fill::Keep(value)
                        })
                    }
                    Ok(Read::NotFound) => Ok(Fill::Absent),
                    Ok(Read::Other(passed)) => Err(ReadError::Upstream(passed)),
                    Err(err) => {
                        counters.upstream_errors.inc();
                        Err(ReadError::Forward(err))
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
            Err(err) => match self.cache.stale(key).await {
                Some(value) => {
                    counters.stale.inc();
                    tracing::warn!(key, cause = %err, "upstream failed; serving a stale entry");
                    Ok(Lookup {
                        status: CacheStatus::Stale,
                        value: Some(value),
                        shows_age: true,
                    })
                }
                None => Err(err),
            },
        }
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
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Passed, ForwardError> {
        let (this, key, headers) = (self.clone(), key.to_owned(), headers.clone());
        let task = tokio::spawn(async move { this.write_through(method, &key, &headers, body).await });
        match task.await {
            Ok(result) => result,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => Err(ForwardError::Unavailable {
                upstream: self.forward.upstream().to_owned(),
                cause: format!("the write was cancelled: {err}"),
            }),
        }
    }

    async fn write_through(
        &self,
        method: Method,
        key: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Passed, ForwardError> {
        let is_delete = method == Method::DELETE;
        let result = self.forward.write(method, key, headers, body).await;
        // `Some(revision)`: drop the entry unless it is at least that new;
        // `Some(None)`: drop it whatever its version.
        let invalidation = match &result {
            Ok(passed) if passed.status.is_success() => Some(passed.revision()),
            // The write did not happen, and the answer proves the cached entry
            // may be stale: 412 says the key's version is not the one the client
            // named (which may be the cached one), 404 on DELETE that the key is
            // gone. Dropping an entry that was current costs one miss.
            Ok(passed) if passed.status == StatusCode::PRECONDITION_FAILED => Some(None),
            Ok(passed) if is_delete && passed.status == StatusCode::NOT_FOUND => Some(None),
            // Any other 4xx (400, 413...) is a write that certainly did not
            // happen and says nothing about the key.
            Ok(passed) if passed.status.is_client_error() => None,
            // No answer, or a 5xx: the write may have happened, or may yet.
            Ok(_) | Err(_) => {
                self.uncertain.mark(key);
                Some(None)
            }
        };
        if result.is_err() {
            self.cache.counters.upstream_errors.inc();
        }
        if let Some(revision) = invalidation {
            self.cache.invalidate(key, revision).await;
        }
        result
    }
}

/// The most keys remembered as uncertain; past it, every key is.
const MAX_UNCERTAIN_KEYS: usize = 10_000;

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

impl Proxy {
    /// The cache figures, as `STATS` prints them.
    pub async fn stats(&self) -> Vec<(&'static str, String)> {
        let counters = &self.cache.counters;
        let (entries, bytes) = self.cache.size().await;
        let config = self.cache.config();
        vec![
            ("hits", counters.hits.get().to_string()),
            ("misses", counters.misses.get().to_string()),
            ("stale", counters.stale.get().to_string()),
            ("evictions", counters.evictions.get().to_string()),
            ("expirations", counters.expirations.get().to_string()),
            ("entries", entries.to_string()),
            ("bytes", bytes.to_string()),
            ("max_bytes", config.max_bytes.to_string()),
            ("ttl_seconds", format!("{}", config.ttl.as_secs_f64())),
            ("upstream_requests", counters.upstream_requests.get().to_string()),
            ("upstream_errors", counters.upstream_errors.get().to_string()),
        ]
    }
}
