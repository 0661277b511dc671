//! The change feed's history and fan-out, whatever engine feeds it.
//!
//! An engine publishes each write it acknowledges as a [`Record`] (the redb
//! writer does it after the group's log fsync and commit, before it answers
//! anyone, so a write's event is in the history before its 2xx is sent). An
//! etcd engine would publish what its watch delivers. Each record is
//! serialised once, when published, and shared (`Bytes`) by every subscriber.
//!
//! The history is a ring in memory bounded by a count and by bytes. It holds
//! every change in `(base, head]`, in revision order. With redb the revisions
//! are consecutive (a revision is taken only by a write that changed
//! something); over etcd they have gaps (writes outside the prefix, other
//! deployments), so a cursor is found by revision, not by offset, and the
//! head may move past the last record ([`Feed::advance`]). A subscriber is a cursor into it: it reads
//! at its own pace, so a slow one never slows the writer; one that falls out
//! of the ring learns it ([`Behind`]) and gets a `reset`. After a restart the
//! ring is empty and starts at the store's revision: a `since` below it is
//! too old.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kv_api::feed::{Event, Kind};

/// How much history the ring keeps, and how many subscribers it serves.
#[derive(Debug, Clone, Copy)]
pub struct FeedLimits {
    pub max_events: usize,
    pub max_bytes: usize,
    pub max_watchers: usize,
}

impl Default for FeedLimits {
    fn default() -> Self {
        Self {
            max_events: 100_000,
            max_bytes: 64 << 20,
            max_watchers: 1024,
        }
    }
}

/// One change, serialised once for every subscriber.
#[derive(Debug)]
pub struct Record {
    pub rev: u64,
    pub kind: Kind,
    pub key: String,
    /// The event as JSON, with its value when it is small enough.
    pub json: Bytes,
    /// The event as JSON without its value, when `json` carries one (`values=0`).
    pub bare: Option<Bytes>,
}

impl Record {
    pub fn put(rev: u64, key: &str, value: &[u8], content_type: &str, expires_at: Option<u64>) -> Self {
        let full = Event::put(rev, key, value, content_type, expires_at, true);
        let bare = (!full.value_omitted).then(|| json(&Event::put(rev, key, value, content_type, expires_at, false)));
        Self {
            rev,
            kind: Kind::Put,
            key: key.to_owned(),
            json: json(&full),
            bare,
        }
    }

    pub fn delete(rev: u64, key: &str, expired: bool) -> Self {
        Self {
            rev,
            kind: Kind::Delete,
            key: key.to_owned(),
            json: json(&Event::delete(rev, key, expired)),
            bare: None,
        }
    }

    /// The JSON to send: with the value or without.
    pub fn json(&self, values: bool) -> &Bytes {
        match (&self.bare, values) {
            (Some(bare), false) => bare,
            _ => &self.json,
        }
    }

    fn bytes(&self) -> usize {
        self.json.len() + self.bare.as_ref().map_or(0, Bytes::len) + self.key.len() + 64
    }
}

fn json(event: &Event) -> Bytes {
    Bytes::from(serde_json::to_vec(event).expect("an event serialises"))
}

/// The ring and its subscribers.
pub struct Feed {
    ring: Mutex<Ring>,
    /// The last revision published; subscribers wait on it.
    head: tokio::sync::watch::Sender<u64>,
    limits: FeedLimits,
    watchers: Arc<AtomicUsize>,
}

struct Ring {
    records: VecDeque<Arc<Record>>,
    bytes: usize,
    /// Every change above this revision (up to `known`) is in `records`.
    base: u64,
    /// Every change up to this revision is known: the last record's, or a
    /// later one that an engine vouched for ([`Feed::advance`]).
    known: u64,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeError {
    /// Over `max_watchers`.
    TooMany { limit: usize },
    /// `since` is above the latest revision.
    Ahead { current: u64 },
    /// `since` is older than the history.
    Compacted { oldest: u64, current: u64 },
}

/// The subscriber fell out of the history: it cannot know what it missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behind {
    pub oldest: u64,
    pub current: u64,
}

impl Feed {
    /// An empty history starting at `revision` (the store's, when it opens).
    pub fn new(revision: u64, limits: FeedLimits) -> Self {
        Self {
            ring: Mutex::new(Ring {
                records: VecDeque::new(),
                bytes: 0,
                base: revision,
                known: revision,
            }),
            head: tokio::sync::watch::Sender::new(revision),
            limits,
            watchers: Arc::default(),
        }
    }

    /// Appends acknowledged changes, in revision order, each the next revision.
    pub fn publish(&self, records: Vec<Record>) {
        let Some(last) = records.last().map(|r| r.rev) else {
            return;
        };
        {
            let mut ring = self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for record in records {
                ring.known = ring.known.max(record.rev);
                ring.bytes += record.bytes();
                ring.records.push_back(Arc::new(record));
            }
            while ring.records.len() > self.limits.max_events
                || (ring.bytes > self.limits.max_bytes && ring.records.len() > 1)
            {
                let Some(old) = ring.records.pop_front() else { break };
                ring.bytes -= old.bytes();
                ring.base = old.rev;
            }
        }
        self.head.send_if_modified(|head| {
            let moved = last > *head;
            *head = (*head).max(last);
            moved
        });
    }

    /// Says that no change up to `revision` is missing from the history (an
    /// etcd watch's progress: every change under the prefix up to it was
    /// delivered), so the head moves there without a record.
    pub fn advance(&self, revision: u64) {
        {
            let mut ring = self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if revision <= ring.known {
                return;
            }
            ring.known = revision;
        }
        self.head.send_if_modified(|head| {
            let moved = revision > *head;
            *head = (*head).max(revision);
            moved
        });
    }

    /// Drops the whole history and starts again at `revision`: the engine
    /// cannot say what changed before it (an etcd watch whose start was
    /// compacted). Every subscriber's cursor is then behind and gets a `reset`.
    pub fn reset(&self, revision: u64) {
        {
            let mut ring = self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let revision = revision.max(ring.known);
            ring.records.clear();
            ring.bytes = 0;
            ring.base = revision;
            ring.known = revision;
        }
        self.head.send_if_modified(|head| {
            let moved = revision > *head;
            *head = (*head).max(revision);
            moved
        });
    }

    /// Waits (up to `timeout`) until the head has reached `revision`;
    /// whether it has.
    pub async fn wait_for(&self, revision: u64, timeout: Duration) -> bool {
        let mut head = self.head.subscribe();
        tokio::time::timeout(timeout, head.wait_for(|head| *head >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The last revision published.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// The oldest `since` the history still reaches.
    pub fn oldest(&self) -> u64 {
        self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner).base
    }

    /// Subscribers right now.
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Relaxed)
    }

    /// A subscription to every change after `since` (after the head when `None`).
    pub fn subscribe(self: &Arc<Self>, since: Option<u64>) -> Result<Subscription, SubscribeError> {
        let current = self.head();
        let since = since.unwrap_or(current);
        if since > current {
            return Err(SubscribeError::Ahead { current });
        }
        let oldest = self.oldest();
        if since < oldest {
            return Err(SubscribeError::Compacted { oldest, current });
        }
        let guard = WatcherGuard::take(&self.watchers, self.limits.max_watchers).ok_or(SubscribeError::TooMany {
            limit: self.limits.max_watchers,
        })?;
        Ok(Subscription {
            feed: self.clone(),
            next: since + 1,
            head: self.head.subscribe(),
            _guard: guard,
        })
    }
}

struct WatcherGuard(Arc<AtomicUsize>);

impl WatcherGuard {
    fn take(count: &Arc<AtomicUsize>, limit: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .ok()
            .map(|_| Self(count.clone()))
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A cursor into the history.
pub struct Subscription {
    feed: Arc<Feed>,
    /// The next revision this subscriber wants.
    next: u64,
    head: tokio::sync::watch::Receiver<u64>,
    _guard: WatcherGuard,
}

impl Subscription {
    /// Subscribers of the feed right now, this one included.
    pub fn watchers(&self) -> usize {
        self.feed.watchers()
    }

    /// Every revision up to this one has been read.
    pub fn position(&self) -> u64 {
        self.next - 1
    }

    /// Up to `max` records from the cursor on (none when caught up), or
    /// [`Behind`] when the history no longer holds the cursor.
    pub fn read(&mut self, max: usize) -> Result<Vec<Arc<Record>>, Behind> {
        let ring = self.feed.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.next <= ring.base {
            return Err(Behind {
                oldest: ring.base,
                current: ring.known,
            });
        }
        // Found by revision: over etcd the revisions have gaps.
        let skip = ring.records.partition_point(|r| r.rev < self.next);
        let records: Vec<Arc<Record>> = ring.records.iter().skip(skip).take(max).cloned().collect();
        let drained = skip + records.len() == ring.records.len();
        let known = ring.known;
        drop(ring);
        if let Some(last) = records.last() {
            self.next = last.rev + 1;
        }
        if drained {
            // Nothing more is known up to `known`: the cursor is there.
            self.next = self.next.max(known + 1);
        }
        Ok(records)
    }

    /// Moves the cursor to the head, after a [`Behind`]; returns the head.
    pub fn skip_to_head(&mut self) -> u64 {
        let head = self.feed.head();
        self.next = head + 1;
        head
    }

    /// Waits until something is published past the cursor, or `timeout`.
    pub async fn wait(&mut self, timeout: Duration) {
        let next = self.next;
        let _ = tokio::time::timeout(timeout, self.head.wait_for(|head| *head >= next)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn puts(from: u64, to: u64) -> Vec<Record> {
        (from..=to)
            .map(|rev| Record::put(rev, &format!("k{rev}"), b"v", "text/plain", None))
            .collect()
    }

    #[test]
    fn a_subscriber_reads_every_change_after_since_once_in_order() {
        let feed = Arc::new(Feed::new(10, FeedLimits::default()));
        let mut sub = feed.subscribe(Some(10)).unwrap();
        feed.publish(puts(11, 15));
        let revs: Vec<u64> = sub.read(3).unwrap().iter().map(|r| r.rev).collect();
        assert_eq!(revs, [11, 12, 13]);
        let revs: Vec<u64> = sub.read(100).unwrap().iter().map(|r| r.rev).collect();
        assert_eq!(revs, [14, 15]);
        assert!(sub.read(100).unwrap().is_empty());
        assert_eq!(sub.position(), 15);
        let mut late = feed.subscribe(Some(12)).unwrap();
        assert_eq!(late.read(100).unwrap()[0].rev, 13);
        assert_eq!(
            feed.subscribe(Some(16)).err(),
            Some(SubscribeError::Ahead { current: 15 })
        );
        assert_eq!(
            feed.subscribe(Some(9)).err(),
            Some(SubscribeError::Compacted {
                oldest: 10,
                current: 15
            })
        );
    }

    #[test]
    fn the_ring_is_bounded_and_a_subscriber_that_falls_out_learns_it() {
        let limits = FeedLimits {
            max_events: 4,
            ..FeedLimits::default()
        };
        let feed = Arc::new(Feed::new(0, limits));
        let mut sub = feed.subscribe(None).unwrap();
        feed.publish(puts(1, 10));
        assert_eq!(feed.oldest(), 6);
        assert_eq!(sub.read(10).unwrap_err(), Behind { oldest: 6, current: 10 });
        assert_eq!(sub.skip_to_head(), 10);
        feed.publish(puts(11, 11));
        assert_eq!(sub.read(10).unwrap()[0].rev, 11);
    }

    #[test]
    fn revisions_with_gaps_and_advances_are_read_by_revision() {
        let feed = Arc::new(Feed::new(10, FeedLimits::default()));
        let mut sub = feed.subscribe(Some(10)).unwrap();
        feed.publish(vec![
            Record::put(12, "a", b"v", "text/plain", None),
            Record::delete(15, "b", true),
        ]);
        let revs: Vec<u64> = sub.read(100).unwrap().iter().map(|r| r.rev).collect();
        assert_eq!(revs, [12, 15]);
        feed.advance(20);
        assert_eq!(feed.head(), 20);
        assert!(sub.read(100).unwrap().is_empty());
        assert_eq!(sub.position(), 20, "the cursor moves to what the engine vouched for");
        let mut late = feed.subscribe(Some(13)).unwrap();
        assert_eq!(late.read(100).unwrap()[0].rev, 15);
        feed.reset(25);
        assert_eq!(
            sub.read(10).unwrap_err(),
            Behind {
                oldest: 25,
                current: 25
            }
        );
        assert!(feed.subscribe(Some(20)).is_err());
    }

    #[test]
    fn subscribers_are_capped() {
        let limits = FeedLimits {
            max_watchers: 1,
            ..FeedLimits::default()
        };
        let feed = Arc::new(Feed::new(0, limits));
        let first = feed.subscribe(None).unwrap();
        assert_eq!(feed.subscribe(None).err(), Some(SubscribeError::TooMany { limit: 1 }));
        drop(first);
        assert!(feed.subscribe(None).is_ok());
    }

    #[test]
    fn values_are_inline_once_and_left_out_on_request() {
        let record = Record::put(1, "k", b"hello", "text/plain", None);
        assert!(std::str::from_utf8(record.json(true)).unwrap().contains("hello"));
        let bare = std::str::from_utf8(record.json(false)).unwrap();
        assert!(!bare.contains("hello") && bare.contains("\"value_omitted\":true"));
    }
}
