//! The GET cache: moka, bounded by bytes, entries fresh for `--cache-ttl`.
//!
//! Ordering rule: every change to an entry after a miss or a write goes
//! through moka's per-key `and_compute_with`, which runs one closure per key
//! at a time. A fill reads the upstream *inside* that closure, and a write's
//! invalidation runs its own closure once the upstream has acknowledged it. So
//! a slow fill that read the old value either finishes first (and the
//! invalidation then drops what it inserted) or starts after (and reads the new
//! value): the stale-fill race (guava#1881, moka's `invalidate` caveat) cannot
//! put an old value back. Revisions decide the rest: an invalidation keeps an
//! entry only if it is already at least as new as the write.
//!
//! Freshness is ours, not moka's: moka keeps an entry for TTL plus the
//! `--stale-if-error` window, and we serve it as fresh only while younger than
//! the TTL. The older ones are kept only to be served, marked STALE, when the
//! upstream fails. An entry's age counts from when its upstream read *began*:
//! a write that bypasses the proxy after that moment shows within the TTL of
//! the write, however long the upstream took to answer.
//!
//! A key with a deadline (the server's `X-Kv-Expires-In`) is fresh only
//! until that deadline, counted from when the read began, to the millisecond:
//! an entry lives min(`--cache-ttl`, the key's time left), and is never
//! served, not even as STALE, past the key's deadline.
//!
//! Entries also carry the generation of the upstream's store identity they
//! were read from ([`StoreIdentity`]): one from an older store is never fresh.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use bytes::Bytes;
use moka::future::Cache as Moka;
use moka::notification::RemovalCause;
use moka::ops::compute::{CompResult, Op};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::upstream::StoreIdentity;

/// One cached value, with what its response needs prebuilt.
#[derive(Debug)]
pub struct Cached {
    pub value: Bytes,
    pub content_type: HeaderValue,
    pub etag: HeaderValue,
    pub version: u64,
    /// When the upstream read of this value began: the entry's age counts from here.
    pub stored_at: Instant,
    /// The generation of the upstream's store identity it was read from.
    pub generation: u64,
    /// When the key expires: the read's start plus the time left the server
    /// gave (which it counted later, so this is never past the real deadline).
    pub deadline: Option<Instant>,
    /// The server's `Expires` (an HTTP date), passed on as it came.
    pub expires: Option<HeaderValue>,
    /// Whether the value goes on a telnet line as it is; decided at the first
    /// telnet GET, since scanning it on every hit was a tenth of the work.
    bare: std::sync::OnceLock<bool>,
}

impl Cached {
    /// `read_at`: when the upstream read that found the value began.
    pub fn new(value: Bytes, content_type: HeaderValue, version: u64, read_at: Instant, generation: u64) -> Self {
        Self {
            value,
            content_type,
            etag: kv_api::condition::etag(version),
            version,
            stored_at: read_at,
            generation,
            deadline: None,
            expires: None,
            bare: std::sync::OnceLock::new(),
        }
    }

    /// The key's deadline: `expires_in` after the read began.
    pub fn with_expiry(mut self, expires_in: Option<Duration>, expires: Option<HeaderValue>) -> Self {
        self.deadline = expires_in.map(|left| self.stored_at + left);
        self.expires = expires;
        self
    }

    /// Time the key has left now; `None` when it has no deadline.
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline.map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Whether the key's deadline has passed.
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|at| at <= Instant::now())
    }

    /// Whether the line protocol shows the value bare (else quoted, see
    /// [`kv_api::quote::render_value`]).
    pub fn bare_on_a_line(&self) -> bool {
        *self.bare.get_or_init(|| kv_api::quote::can_be_bare(&self.value))
    }

    /// Bytes this entry costs: key, value, headers and bookkeeping.
    fn weight(&self, key: &str) -> u32 {
        let bytes = key.len() + self.value.len() + self.content_type.len() + self.etag.len() + 96;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// How a GET was answered, for `X-Cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Stale,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Stale => "STALE",
        }
    }
}

/// What only the cache sees: evictions and expirations (moka's listener
/// counts them) and its size. The service owns the other figures and exports
/// these with them.
#[derive(Debug, Default, Clone)]
pub struct CacheCounters {
    pub evictions: Counter,
    pub expirations: Counter,
    /// Weighted bytes held, as the `--cache-max-bytes` bound counts them.
    /// Moka only knows this after its housekeeping, so [`Cache::size`] refreshes
    /// it on every `/metrics` scrape and `STATS`.
    pub bytes: Gauge,
}

/// What the cache was built with.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub stale_if_error: Duration,
    pub max_bytes: u64,
}

#[derive(Clone)]
pub struct Cache {
    entries: Moka<String, Arc<Cached>>,
    config: CacheConfig,
    identity: Arc<StoreIdentity>,
    pub counters: CacheCounters,
}

/// What the fetch of a [`Cache::fill`] found.
pub enum Fill {
    /// A value to cache and answer with.
    Keep(Cached),
    /// A value to answer with but not cache (its key's state is uncertain).
    Pass(Cached),
    /// The upstream has no such key.
    Absent,
}

/// The result of [`Cache::fill`].
pub enum Filled {
    /// The key has this value, fetched by this fill.
    Fetched(Arc<Cached>),
    /// The key has this value, an entry that another request's fill cached.
    Shared(Arc<Cached>),
    /// The upstream has no such key.
    Absent,
}

impl Cache {
    /// A cache of what the upstream whose store is `identity` answers; a
    /// change of identity flushes it.
    pub fn new(config: CacheConfig, identity: Arc<StoreIdentity>) -> Self {
        let counters = CacheCounters::default();
        let listener = {
            let counters = counters.clone();
            move |_key: Arc<String>, _value: Arc<Cached>, cause: RemovalCause| match cause {
                RemovalCause::Size => {
                    counters.evictions.inc();
                }
                RemovalCause::Expired => {
                    counters.expirations.inc();
                }
                RemovalCause::Explicit | RemovalCause::Replaced => {}
            }
        };
        let entries = Moka::builder()
            .max_capacity(config.max_bytes)
            .weigher(|key: &String, value: &Arc<Cached>| value.weight(key))
            .time_to_live(config.ttl + config.stale_if_error)
            .eviction_listener(listener)
            .build();
        identity.on_change({
            let entries = entries.clone();
            move || entries.invalidate_all()
        });
        Self {
            entries,
            config,
            identity,
            counters,
        }
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// The entry for `key` if it is younger than the TTL: the hit path.
    pub async fn fresh(&self, key: &str) -> Option<Arc<Cached>> {
        self.entries.get(key).await.filter(|entry| self.is_fresh(entry))
    }

    /// The entry for `key` if it expired less than `--stale-if-error` ago.
    pub async fn stale(&self, key: &str) -> Option<Arc<Cached>> {
        if self.config.stale_if_error.is_zero() {
            return None;
        }
        self.entries
            .get(key)
            .await
            .filter(|entry| entry.generation == self.identity.generation() && !entry.expired())
    }

    /// Fills `key` on a miss. `fetch` runs under the key's lock, so concurrent
    /// misses make one upstream request: the others wait, then find it fresh.
    pub async fn fill<F, Fut, E>(&self, key: &str, fetch: F) -> Result<Filled, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fill, E>>,
        E: Send + Sync + 'static,
    {
        let this = self.clone();
        let passed = std::sync::OnceLock::new();
        let result = self
            .entries
            .entry(key.to_owned())
            .and_try_compute_with(|current| {
                let passed = &passed;
                async move {
                    if let Some(current) = current
                        && this.is_fresh(current.value())
                    {
                        return Ok(Op::Nop);
                    }
                    Ok(match fetch().await? {
                        Fill::Keep(fetched) => Op::Put(Arc::new(fetched)),
                        Fill::Pass(fetched) => {
                            let _ = passed.set(Arc::new(fetched));
                            Op::Remove
                        }
                        Fill::Absent => Op::Remove,
                    })
                }
            })
            .await?;
        if let Some(value) = passed.into_inner() {
            return Ok(Filled::Fetched(value));
        }
        Ok(match result {
            CompResult::Inserted(entry) | CompResult::ReplacedWith(entry) => Filled::Fetched(entry.into_value()),
            CompResult::Unchanged(entry) => Filled::Shared(entry.into_value()),
            CompResult::StillNone(_) | CompResult::Removed(_) => Filled::Absent,
        })
    }

    /// Called once the upstream has answered a write (or failed to): drops the
    /// entry unless it is already at least as new as `revision`. Without a
    /// revision (the outcome is unknown) the entry is dropped.
    pub async fn invalidate(&self, key: &str, revision: Option<u64>) {
        self.entries
            .entry(key.to_owned())
            .and_compute_with(|current| {
                let op = match (current, revision) {
                    (Some(entry), Some(revision))
                        if entry.value().version >= revision
                            && entry.value().generation == self.identity.generation() =>
                    {
                        Op::Nop
                    }
                    (Some(_), _) => Op::Remove,
                    (None, _) => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
    }

    /// Applies a change-feed event for `key` at `revision`: an entry older
    /// than the change is replaced by `value` (when the event carried it) or
    /// dropped; a key not cached stays uncached. It runs under the key's lock,
    /// like fills and write invalidations (the ordering rule): a fill that read
    /// the key before this change either inserted first (and is replaced or
    /// dropped here) or waits for this, and then reads the change itself.
    pub async fn apply(&self, key: &str, revision: u64, value: Option<Cached>) {
        let generation = self.identity.generation();
        self.entries
            .entry(key.to_owned())
            .and_compute_with(|current| {
                let op = match current {
                    Some(entry) if entry.value().version >= revision && entry.value().generation == generation => {
                        Op::Nop
                    }
                    Some(_) => match value {
                        Some(value) => Op::Put(Arc::new(value)),
                        None => Op::Remove,
                    },
                    None => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
    }

    /// Drops every entry: the change feed cannot say what changed (a `reset`,
    /// a 410, another store).
    /// A new generation first: an entry a fill in flight inserts after this,
    /// read before it, is never fresh.
    pub fn flush(&self) {
        self.identity.advance();
        self.entries.invalidate_all();
    }

    /// The generation of the upstream's store identity, for entries built here.
    pub fn generation(&self) -> u64 {
        self.identity.generation()
    }

    /// Entries and weighted bytes, after moka's pending housekeeping.
    pub async fn size(&self) -> (u64, u64) {
        self.entries.run_pending_tasks().await;
        let bytes = self.entries.weighted_size();
        self.counters.bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        (self.entries.entry_count(), bytes)
    }

    fn is_fresh(&self, entry: &Cached) -> bool {
        entry.stored_at.elapsed() < self.config.ttl
            && entry.generation == self.identity.generation()
            && !entry.expired()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::http::HeaderMap;

    use super::*;

    fn cache(ttl: Duration) -> (Cache, Arc<StoreIdentity>) {
        let identity = Arc::new(StoreIdentity::default());
        let config = CacheConfig {
            ttl,
            stale_if_error: Duration::ZERO,
            max_bytes: 1 << 20,
        };
        (Cache::new(config, identity.clone()), identity)
    }

    fn value(text: &'static str, version: u64) -> Cached {
        Cached::new(
            Bytes::from_static(text.as_bytes()),
            HeaderValue::from_static("text/plain"),
            version,
            Instant::now(),
            0,
        )
    }

    async fn fill(cache: &Cache, key: &str, fetched: Fill) -> Option<u64> {
        let filled = cache
            .fill(key, || async { Ok::<_, Infallible>(fetched) })
            .await
            .unwrap();
        match filled {
            Filled::Fetched(entry) | Filled::Shared(entry) => Some(entry.version),
            Filled::Absent => None,
        }
    }

    #[tokio::test]
    async fn an_invalidation_keeps_only_an_entry_at_least_as_new_as_the_write() {
        let (cache, _) = cache(Duration::from_secs(60));
        fill(&cache, "k", Fill::Keep(value("v5", 5))).await;
        cache.invalidate("k", Some(5)).await;
        assert_eq!(
            cache.fresh("k").await.map(|e| e.version),
            Some(5),
            "already as new as the write"
        );
        cache.invalidate("k", Some(6)).await;
        assert!(cache.fresh("k").await.is_none(), "older than the write");
        fill(&cache, "k", Fill::Keep(value("v7", 7))).await;
        cache.invalidate("k", None).await;
        assert!(cache.fresh("k").await.is_none(), "an unknown outcome drops the entry");
    }

    #[tokio::test]
    async fn a_slow_fill_and_a_write_are_serialised_so_the_old_value_cannot_return() {
        // The fill read version 1 and is slow to insert it; the write of version
        // 2 is acknowledged meanwhile and its invalidation waits for the key's
        // lock, then drops what the fill inserted.
        let (cache, _) = cache(Duration::from_secs(60));
        let (read, reading) = tokio::sync::oneshot::channel::<()>();
        let slow = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .fill("k", || async move {
                        let _ = read.send(());
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, Infallible>(Fill::Keep(value("old", 1)))
                    })
                    .await
                    .map(|_| ())
            })
        };
        reading.await.unwrap();
        cache.invalidate("k", Some(2)).await;
        slow.await.unwrap().unwrap();
        assert!(
            cache.fresh("k").await.is_none(),
            "the old value came back after the write"
        );
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch() {
        let (cache, _) = cache(Duration::from_secs(60));
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let misses = (0..20).map(|_| {
            let (cache, fetches) = (cache.clone(), fetches.clone());
            tokio::spawn(async move {
                cache
                    .fill("k", || async move {
                        fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, Infallible>(Fill::Keep(value("v", 1)))
                    })
                    .await
                    .map(|_| ())
            })
        });
        for miss in misses.collect::<Vec<_>>() {
            miss.await.unwrap().unwrap();
        }
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_entry_is_fresh_for_the_ttl_only_and_a_pass_is_not_cached() {
        let (cache, _) = cache(Duration::from_millis(50));
        fill(&cache, "k", Fill::Keep(value("v", 1))).await;
        assert!(cache.fresh("k").await.is_some());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(cache.fresh("k").await.is_none(), "older than the TTL");
        assert_eq!(fill(&cache, "p", Fill::Pass(value("v", 1))).await, Some(1), "answered");
        assert!(cache.fresh("p").await.is_none(), "but not cached");
    }

    #[tokio::test]
    async fn an_entry_lives_no_longer_than_its_key() {
        let (cache, _) = cache(Duration::from_secs(60));
        let expiring = value("v", 1).with_expiry(Some(Duration::from_millis(50)), None);
        fill(&cache, "k", Fill::Keep(expiring)).await;
        let hit = cache.fresh("k").await.expect("fresh before the deadline");
        assert!(hit.time_left().unwrap() <= Duration::from_millis(50));
        tokio::time::sleep(Duration::from_millis(51)).await;
        assert!(cache.fresh("k").await.is_none(), "past the key's deadline");
        assert!(cache.stale("k").await.is_none(), "not even as stale");
    }

    #[tokio::test]
    async fn a_new_store_identity_makes_every_entry_stale() {
        let (cache, identity) = cache(Duration::from_secs(60));
        let answer = |id: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(kv_api::condition::X_KV_STORE_ID.clone(), HeaderValue::from_static(id));
            headers
        };
        identity.observe("test", &answer("aaaa"));
        fill(&cache, "k", Fill::Keep(value("v", 9))).await;
        assert!(cache.fresh("k").await.is_some());
        identity.observe("test", &answer("bbbb"));
        assert!(cache.fresh("k").await.is_none(), "an entry of the old store was served");
    }
}
