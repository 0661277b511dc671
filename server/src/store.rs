//! The storage trait: everything the HTTP layer needs from an engine, small
//! enough that a clustered backend (etcd) can implement it later.
//!
//! Every write takes the next store-wide revision, like etcd's `mod_revision`;
//! a key's version is the revision of the write that last changed it. Versions
//! are what ETags, conditional writes and the proxy's cache ordering rest on.

pub mod redb;
pub mod wal;

use bytes::Bytes;
use futures_util::future::BoxFuture;

pub use self::redb::RedbStore;

/// One stored pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Bytes,
    pub content_type: String,
    /// The revision of the write that last changed this key.
    pub version: u64,
}

/// An `If-Match` or `If-None-Match` condition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Condition {
    /// No header.
    #[default]
    None,
    /// `*`: any current value.
    Any,
    /// A list of versions (`"3", "4"`); a tag that is not one of ours matches nothing.
    Versions(Vec<u64>),
}

impl Condition {
    /// Whether an `If-None-Match` with this condition matches a key at
    /// `version`, so that a GET answers 304.
    pub fn matches(&self, version: u64) -> bool {
        match self {
            Self::None => false,
            Self::Any => true,
            Self::Versions(versions) => versions.contains(&version),
        }
    }
}

/// The preconditions of a write, from `If-Match` and `If-None-Match`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Precondition {
    pub if_match: Condition,
    pub if_none_match: Condition,
}

impl Precondition {
    /// Whether a write may go ahead given the key's current version (RFC 9110 §13.2.2).
    pub fn allows(&self, current: Option<u64>) -> bool {
        let if_match_ok = match (&self.if_match, current) {
            (Condition::None, _) => true,
            (_, None) => false,
            (Condition::Any, Some(_)) => true,
            (Condition::Versions(vs), Some(v)) => vs.contains(&v),
        };
        let if_none_match_ok = match (&self.if_none_match, current) {
            (Condition::None, _) | (_, None) => true,
            (Condition::Any, Some(_)) => false,
            (Condition::Versions(vs), Some(v)) => !vs.contains(&v),
        };
        if_match_ok && if_none_match_ok
    }
}

/// A change to one key.
#[derive(Debug, Clone)]
pub enum WriteOp {
    Put {
        key: String,
        value: Bytes,
        content_type: String,
        precondition: Precondition,
    },
    Delete {
        key: String,
        precondition: Precondition,
    },
}

/// What an acknowledged write did. It is returned only once the write is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// A put stored the value at this revision; `created` when the key was new.
    Stored { revision: u64, created: bool },
    /// A delete removed the key at this revision.
    Deleted { revision: u64 },
    /// A delete found no such key; nothing was written.
    NotFound,
    /// A precondition did not hold; nothing was written.
    PreconditionFailed { current: Option<u64> },
}

/// Which part of the keyspace to list, in key order.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub prefix: String,
    /// Start strictly after this key (a page cursor).
    pub after: Option<String>,
    pub limit: usize,
    /// Leave values out (they come back empty).
    pub keys_only: bool,
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
}

/// A key-value engine. Reads are synchronous and cheap; writes are durable
/// (fsynced) when their future resolves, and may be batched with others.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;
    fn scan(&self, scan: &Scan) -> Result<Vec<Entry>, StoreError>;
    /// The number of keys stored.
    fn len(&self) -> Result<u64, StoreError>;
    fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
    /// The latest revision the store has acknowledged.
    fn revision(&self) -> u64;
    /// Whether the store is able to take writes.
    fn healthy(&self) -> Result<(), StoreError>;
    fn write(&self, op: WriteOp) -> BoxFuture<'static, Result<WriteOutcome, StoreError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preconditions_follow_rfc_9110() {
        let any = |m, n| Precondition {
            if_match: m,
            if_none_match: n,
        };
        assert!(Precondition::default().allows(None));
        assert!(any(Condition::Versions(vec![3]), Condition::None).allows(Some(3)));
        assert!(!any(Condition::Versions(vec![3]), Condition::None).allows(Some(4)));
        assert!(!any(Condition::Versions(vec![3]), Condition::None).allows(None));
        assert!(!any(Condition::Any, Condition::None).allows(None));
        assert!(any(Condition::None, Condition::Any).allows(None));
        assert!(!any(Condition::None, Condition::Any).allows(Some(1)));
        assert!(!any(Condition::None, Condition::Versions(vec![1])).allows(Some(1)));
        assert!(any(Condition::None, Condition::Versions(vec![1])).allows(Some(2)));
    }
}
