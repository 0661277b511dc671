//! The proxy's figures, named once: `/metrics` exports them (after the
//! `kv_proxy_` prefix, counters with `_total`), and telnet's `STATS` and
//! `kv stats` print them under the same names.

/// One figure: its name and what it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub name: &'static str,
    pub help: &'static str,
}

pub const CACHE_HITS: Stat = Stat {
    name: "cache_hits",
    help: "GETs answered from the cache",
};
pub const CACHE_MISSES: Stat = Stat {
    name: "cache_misses",
    help: "GETs that had to ask the upstream",
};
pub const CACHE_STALE: Stat = Stat {
    name: "cache_stale",
    help: "Expired entries served because the upstream failed",
};
pub const CACHE_EVICTIONS: Stat = Stat {
    name: "cache_evictions",
    help: "Entries evicted to stay under --cache-max-bytes",
};
pub const CACHE_EXPIRATIONS: Stat = Stat {
    name: "cache_expirations",
    help: "Entries dropped for age",
};
pub const CACHE_ENTRIES: Stat = Stat {
    name: "cache_entries",
    help: "Entries in the cache",
};
pub const CACHE_BYTES: Stat = Stat {
    name: "cache_bytes",
    help: "Bytes held in the cache, counting keys, values and headers",
};
pub const CACHE_MAX_BYTES: Stat = Stat {
    name: "cache_max_bytes",
    help: "The cache's bound in bytes (--cache-max-bytes)",
};
pub const CACHE_TTL_SECONDS: Stat = Stat {
    name: "cache_ttl_seconds",
    help: "How long an entry is served as fresh (--cache-ttl)",
};
pub const UPSTREAM_REQUESTS: Stat = Stat {
    name: "upstream_requests",
    help: "Requests sent to the upstream kv-server",
};
pub const UPSTREAM_ERRORS: Stat = Stat {
    name: "upstream_errors",
    help: "Upstream requests that failed or timed out",
};

pub const FEED_HEALTHY: Stat = Stat {
    name: "feed_healthy",
    help: "1 while the change feed from the upstream is healthy and the cache answers; 0 while every read is forwarded",
};
pub const FEED_APPLIED_REVISION: Stat = Stat {
    name: "feed_applied_revision",
    help: "The last upstream revision the change feed applied to the cache",
};
pub const FEED_LAG_SECONDS: Stat = Stat {
    name: "feed_lag_seconds",
    help: "Seconds since the change feed was last heard from",
};
pub const FEED_RESETS: Stat = Stat {
    name: "feed_resets",
    help: "Times the change feed could not resume (history too short, another store)",
};
pub const FEED_FLUSHES: Stat = Stat {
    name: "feed_flushes",
    help: "Times the cache was flushed because the change feed could not say what changed",
};
pub const FEED_EVENTS_APPLIED: Stat = Stat {
    name: "feed_events_applied",
    help: "Change-feed events (puts and deletes) applied to the cache",
};

/// Every figure, in the order `STATS` prints them.
pub const ALL: &[Stat] = &[
    CACHE_HITS,
    CACHE_MISSES,
    CACHE_STALE,
    CACHE_EVICTIONS,
    CACHE_EXPIRATIONS,
    CACHE_ENTRIES,
    CACHE_BYTES,
    CACHE_MAX_BYTES,
    CACHE_TTL_SECONDS,
    UPSTREAM_REQUESTS,
    UPSTREAM_ERRORS,
    FEED_HEALTHY,
    FEED_APPLIED_REVISION,
    FEED_LAG_SECONDS,
    FEED_RESETS,
    FEED_FLUSHES,
    FEED_EVENTS_APPLIED,
];
