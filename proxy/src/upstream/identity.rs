//! Which store the upstream's answers come from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use axum::http::{HeaderMap, HeaderValue};

/// The identity of the store behind the upstream, as its answers last said
/// (`X-Kv-Store-Id`, see `kv-server`'s `store::identity`), and a generation that
/// moves on each change.
///
/// Revisions are numbered per store: a server restarted on an empty or
/// restored data directory counts from an earlier revision again, and cached
/// versions from the old store would win the ordering rule against the new
/// store's writes. So a change of identity flushes the cache (the hook set
/// with [`StoreIdentity::on_change`]), and an entry read from an older
/// generation is never served as fresh, even one a fill in flight inserts
/// after the flush.
#[derive(Default)]
pub struct StoreIdentity {
    last: Mutex<Option<HeaderValue>>,
    generation: AtomicU64,
    on_change: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl StoreIdentity {
    /// The generation of the store seen last.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Moves to a new generation without a new identity: what was read
    /// before is never fresh again (the change feed lost track of changes).
    pub fn advance(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Sets what to do when the identity changes (flush the cache); once.
    pub fn on_change(&self, hook: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_change.set(Box::new(hook));
    }

    /// Notes the identity an answer carried (an answer without one, from an
    /// older server, changes nothing) and returns the generation the answer
    /// belongs to.
    pub fn observe(&self, upstream: &str, headers: &HeaderMap) -> u64 {
        let Some(id) = headers.get(&kv_api::condition::X_KV_STORE_ID) else {
            return self.generation();
        };
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match last.as_ref() {
            Some(seen) if seen == id => {}
            None => *last = Some(id.clone()),
            Some(seen) => {
                tracing::warn!(
                    upstream,
                    was = ?seen,
                    now = ?id,
                    "the upstream's store id changed (a new or restored data directory): \
                     its revisions cannot be compared with the cached ones; flushing the cache"
                );
                *last = Some(id.clone());
                self.generation.fetch_add(1, Ordering::AcqRel);
                if let Some(hook) = self.on_change.get() {
                    hook();
                }
            }
        }
        self.generation()
    }
}
