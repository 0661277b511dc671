//! The storage trait: everything the HTTP layer needs from an engine, small
//! enough that the clustered backend (etcd, `--features etcd`) implements it too.
//!
//! Every write takes the next store-wide revision, like etcd's `mod_revision`;
//! a key's version is the revision of the write that last changed it. Versions
//! are what ETags, conditional writes and the proxy's cache ordering rest on.

pub mod engine;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod feed;
pub mod identity;
mod record;
mod sweep;
pub mod wal;
mod writer;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use kv_api::condition::Precondition;
use kv_api::dump::Entry;
use kv_api::expiry::{Expiry, Touch};

pub use self::engine::RedbStore;

/// A change to one key.
#[derive(Debug, Clone)]
pub enum WriteOp {
    Put {
        key: String,
        value: Bytes,
        content_type: String,
        precondition: Precondition,
        /// What becomes of the key's deadline.
        expiry: Expiry,
    },
    Delete {
        key: String,
        precondition: Precondition,
    },
    /// A new deadline (or none) for an existing key, its value unchanged: a
    /// write with a revision of its own (`PATCH`, `EXPIRE`, `PERSIST`).
    Touch {
        key: String,
        touch: Touch,
        precondition: Precondition,
    },
    /// The sweep's removal of a key whose deadline `expires_at` has passed;
    /// a no-op (`NotFound`) if the key has since been written again.
    Expire {
        key: String,
        expires_at: u64,
    },
}

impl WriteOp {
    pub fn key(&self) -> &str {
        match self {
            Self::Put { key, .. } | Self::Delete { key, .. } | Self::Touch { key, .. } | Self::Expire { key, .. } => {
                key
            }
        }
    }
}

/// What an acknowledged put did. It is returned only once the write is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored at this revision; `created` when the key was new (or had
    /// expired); `expires_at`: the key's deadline now, unix ms.
    Stored {
        revision: u64,
        created: bool,
        expires_at: Option<u64>,
    },
    /// A precondition did not hold; nothing was written.
    PreconditionFailed { current: Option<u64> },
}

/// What an acknowledged delete did. It is returned only once the write is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// Removed at this revision.
    Deleted { revision: u64 },
    /// There was no such key; nothing was written.
    NotFound,
    /// A precondition did not hold; nothing was written.
    PreconditionFailed { current: Option<u64> },
}

/// What an acknowledged touch did. It is returned only once the write is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TouchOutcome {
    /// The key's deadline is now `expires_at`, at this revision.
    Touched { revision: u64, expires_at: Option<u64> },
    /// There was no such key (or it had expired); nothing was written.
    NotFound,
    /// A precondition did not hold; nothing was written.
    PreconditionFailed { current: Option<u64> },
}

/// What an acknowledged write did, as the engine's one queue answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// A put (or a touch) stored the value at this revision; `created` when
    /// the key was new; `expires_at`: its deadline.
    Stored {
        revision: u64,
        created: bool,
        expires_at: Option<u64>,
    },
    /// A delete removed the key at this revision.
    Deleted { revision: u64 },
    /// A delete found no such key; nothing was written.
    NotFound,
    /// A precondition did not hold; nothing was written.
    PreconditionFailed { current: Option<u64> },
}

/// Which part of the keyspace to list, in key order.
#[derive(Debug, Clone)]
pub struct Scan {
    pub prefix: String,
    /// Start strictly after this key (a page cursor).
    pub after: Option<String>,
    /// Read at this revision, the one an earlier page of the same listing
    /// was read at (see [`Scanned::revision`]); `None`: the latest.
    pub at: Option<u64>,
    pub limit: usize,
    /// A budget in bytes of keys and values: the scan stops before the entry
    /// that would take it over, so that the engine reads no more than a page
    /// holds. The first entry is returned whatever its size.
    pub max_bytes: usize,
    /// Leave values out (they come back empty).
    pub keys_only: bool,
}

/// What a scan found.
#[derive(Debug, Clone, Default)]
pub struct Scanned {
    pub entries: Vec<Entry>,
    /// Whether an entry of the scan's range comes after the last one (the
    /// scan stopped at its limit or its byte budget).
    pub more: bool,
    /// The revision the scan read at, when the engine can read there again
    /// for the listing's next page (etcd, until that revision is compacted);
    /// `None` when every page reads the latest state (redb, which keeps no
    /// old versions).
    pub revision: Option<u64>,
}

/// Why the store could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The engine failed, or failed earlier and now refuses work until restarted (fail-stop).
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The store is shutting down.
    #[error("the store is shutting down")]
    Closed,
    /// A write may or may not have been applied: the engine did not answer
    /// in time or the connection was lost after the write was sent (etcd).
    #[error("the outcome of the write is unknown: {0}")]
    OutcomeUnknown(String),
    /// A remote engine (etcd) did not answer in time or could not be reached;
    /// nothing is known to be broken for good.
    #[error("the store cannot be reached: {0}")]
    Unreachable(String),
    /// The write is too large for the write-ahead log to hold in one record
    /// (so it could not be replayed); it was refused, nothing was written.
    #[error("{0}")]
    TooLarge(String),
    /// A scan asked for a revision that the engine has compacted away: the
    /// listing it continues cannot go on as one snapshot.
    #[error("revision {at} has been compacted")]
    Compacted { at: u64 },
    /// A scan's cursor names a revision the store cannot read at.
    #[error("{0}")]
    BadCursor(String),
    /// The store refused the write for want of space (etcd's `NOSPACE`
    /// alarm); nothing was written, and reads still work.
    #[error("the store is out of space: {0}")]
    NoSpace(String),
}

/// What an engine's calls return: a future, so that an engine over the
/// network (etcd) and the embedded one (redb, which answers at once or on a
/// blocking thread) implement the same trait.
pub type StoreFuture<T> = BoxFuture<'static, Result<T, StoreError>>;

/// A key-value engine. Writes are durable (fsynced, or committed by a
/// quorum) when their future resolves, and may be batched with others.
pub trait Store: Send + Sync + 'static {
    /// The key's entry, `None` when there is none or it has expired (even
    /// if the sweep has not removed it yet).
    fn get(&self, key: &str) -> StoreFuture<Option<Entry>>;
    /// Live entries only: expired ones are skipped. An engine that reads
    /// from disk does so off the async runtime (`spawn_blocking`).
    fn scan(&self, scan: Scan) -> StoreFuture<Scanned>;
    /// The number of keys stored (expired keys not removed yet included).
    fn len(&self) -> StoreFuture<u64>;
    fn is_empty(&self) -> StoreFuture<bool> {
        self.len().map(|len| len.map(|n| n == 0)).boxed()
    }
    /// The latest revision the store has acknowledged (or, over etcd, seen).
    fn revision(&self) -> u64;
    /// Whether the store is able to take writes.
    fn healthy(&self) -> StoreFuture<()>;
    /// Finishes queued work and stops the engine's threads and tasks.
    fn close(&self) -> BoxFuture<'static, ()>;
    /// Where the data is, for the log: a path, or a cluster's endpoints.
    fn location(&self) -> String;
    /// The change feed: every acknowledged write, in revision order (see [`feed`]).
    fn feed(&self) -> &std::sync::Arc<feed::Feed>;
    /// Queues any write; [`Store::put`] and [`Store::delete`] are the typed doors.
    fn write(&self, op: WriteOp) -> BoxFuture<'static, Result<WriteOutcome, StoreError>>;

    fn put(
        &self,
        key: String,
        value: Bytes,
        content_type: String,
        precondition: Precondition,
        expiry: Expiry,
    ) -> BoxFuture<'static, Result<PutOutcome, StoreError>> {
        let op = WriteOp::Put {
            key,
            value,
            content_type,
            precondition,
            expiry,
        };
        self.write(op)
            .map(|outcome| match outcome? {
                WriteOutcome::Stored {
                    revision,
                    created,
                    expires_at,
                } => Ok(PutOutcome::Stored {
                    revision,
                    created,
                    expires_at,
                }),
                WriteOutcome::PreconditionFailed { current } => Ok(PutOutcome::PreconditionFailed { current }),
                other => Err(StoreError::mismatch("put", other)),
            })
            .boxed()
    }

    fn delete(&self, key: String, precondition: Precondition) -> BoxFuture<'static, Result<DeleteOutcome, StoreError>> {
        self.write(WriteOp::Delete { key, precondition })
            .map(|outcome| match outcome? {
                WriteOutcome::Deleted { revision } => Ok(DeleteOutcome::Deleted { revision }),
                WriteOutcome::NotFound => Ok(DeleteOutcome::NotFound),
                WriteOutcome::PreconditionFailed { current } => Ok(DeleteOutcome::PreconditionFailed { current }),
                other => Err(StoreError::mismatch("delete", other)),
            })
            .boxed()
    }

    fn touch(
        &self,
        key: String,
        touch: Touch,
        precondition: Precondition,
    ) -> BoxFuture<'static, Result<TouchOutcome, StoreError>> {
        self.write(WriteOp::Touch {
            key,
            touch,
            precondition,
        })
        .map(|outcome| match outcome? {
            WriteOutcome::Stored {
                revision, expires_at, ..
            } => Ok(TouchOutcome::Touched { revision, expires_at }),
            WriteOutcome::NotFound => Ok(TouchOutcome::NotFound),
            WriteOutcome::PreconditionFailed { current } => Ok(TouchOutcome::PreconditionFailed { current }),
            other => Err(StoreError::mismatch("touch", other)),
        })
        .boxed()
    }
}

impl StoreError {
    /// An engine that answered one kind of write with another's outcome: a
    /// bug, refused like a failure rather than trusted.
    fn mismatch(write: &str, outcome: WriteOutcome) -> Self {
        Self::Unavailable(format!("the engine answered a {write} with {outcome:?}"))
    }
}

/// What a client is told when the store fails: the same words whatever the
/// cause, which kv-server logs.
pub const STORE_UNAVAILABLE: &str = "the store failed and refuses writes until kv-server is restarted; see its log";

impl From<StoreError> for kv_api::ApiError {
    fn from(err: StoreError) -> Self {
        use kv_api::{ApiError, ErrorCode};
        match err {
            // The cause (an OS error, a path, redb's words) goes to the log
            // only: it means nothing to a client, and tells it about the host.
            StoreError::Unavailable(ref cause) => {
                tracing::error!(cause = %cause, "store unavailable");
                ApiError::new(ErrorCode::StoreUnavailable, STORE_UNAVAILABLE)
            }
            // The engine's words say which limit refused it: the write-ahead
            // log's record size, or the etcd cluster's request size.
            StoreError::TooLarge(cause) => {
                tracing::warn!(cause = %cause, "a write too large for the store was refused");
                ApiError::new(ErrorCode::ValueTooLarge, cause)
            }
            StoreError::NoSpace(ref cause) => {
                tracing::error!(cause = %cause, "the store is out of space: writes are refused");
                ApiError::new(
                    ErrorCode::StoreFull,
                    "the store's etcd cluster is out of space (its NOSPACE alarm is raised): the write was not \
                     stored; reads and deletes still work. An operator must free space: compact the history \
                     (etcdctl compact), defragment the members (etcdctl defrag), then disarm the alarm \
                     (etcdctl alarm disarm); or raise --quota-backend-bytes",
                )
            }
            StoreError::OutcomeUnknown(ref cause) => {
                tracing::warn!(cause = %cause, "a write's outcome is unknown");
                ApiError::new(
                    ErrorCode::OutcomeUnknown,
                    "the store did not confirm the write in time: it may or may not have been applied; \
                     read the key to find out before retrying a conditional write",
                )
            }
            StoreError::Unreachable(ref cause) => {
                tracing::warn!(cause = %cause, "the store cannot be reached");
                ApiError::new(
                    ErrorCode::StoreUnavailable,
                    "the store's cluster did not answer in time; retry shortly",
                )
            }
            StoreError::Compacted { at } => ApiError::new(
                ErrorCode::RevisionCompacted,
                format!(
                    "this listing was read at revision {at}, which the store's history no longer holds \
                     (etcd compacted it): start the listing again, without after"
                ),
            ),
            StoreError::BadCursor(message) => ApiError::bad_request(message),
            StoreError::Closed => ApiError::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down; retry against the new instance",
            ),
        }
    }
}
