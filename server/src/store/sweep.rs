//! The sweep: removes keys whose deadline has passed, in the background.
//!
//! Readers and writers already treat an expired key as absent (its record
//! says when it expires), so the sweep is not what makes a key disappear; it
//! frees the space, and it turns each expiry into an ordinary write: a delete
//! with the next revision, logged (kind "expired") and group-committed by
//! the writer like any other. A change feed will see those deletes in order
//! with every other write, and caches ordered by revision drop the key.
//!
//! One thread reads the deadline index ([`DEADLINES`], ordered by time) for
//! at most [`BATCH`] keys that are due, queues a [`WriteOp::Expire`] for
//! each, and waits for the batch to be committed before it reads again: at
//! most one batch is ever in flight, so a million keys expiring at once
//! become many small groups that client writes join or follow, never one
//! long transaction ahead of them. When nothing is due it sleeps until the
//! next deadline (at most [`IDLE`]).

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread;
use std::time::Duration;

use ::redb::{Database, ReadableDatabase};
use tokio::sync::{mpsc, oneshot};

use super::engine::Job;
use super::record::DEADLINES;
use super::{WriteOp, WriteOutcome};

/// The most keys removed per batch (one batch in flight at a time).
pub const BATCH: usize = 256;
/// The longest the sweep sleeps between looks at the index.
const IDLE: Duration = Duration::from_millis(50);
/// How long it waits after the store refused its writes (fail-stop, closing).
const BACKOFF: Duration = Duration::from_secs(1);

/// Stops the sweep thread and waits for it.
#[derive(Clone)]
pub(super) struct Handle(Arc<Control>);

struct Control {
    stopped: Mutex<bool>,
    wake: Condvar,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

impl Handle {
    /// Stops the thread (it finishes its batch first) and joins it. Blocking.
    pub(super) fn stop(&self) {
        *self.0.stopped.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.0.wake.notify_all();
        let thread = self
            .0
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// Sleeps up to `timeout`; `true` if the sweep was stopped meanwhile.
    fn sleep(&self, timeout: Duration) -> bool {
        let stopped = self.0.stopped.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (stopped, _) = self
            .0
            .wake
            .wait_timeout_while(stopped, timeout, |stopped| !*stopped)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *stopped
    }
}

/// The sweep thread. It holds the database and the writer's queue weakly:
/// a store dropped without [`RedbStore::close`](super::RedbStore::close)
/// still lets its writer thread end and its file go.
pub(super) struct Sweep {
    db: Weak<Database>,
    queue: mpsc::WeakSender<Job>,
    batch: usize,
    handle: Handle,
}

impl Sweep {
    pub(super) fn start(db: Weak<Database>, queue: mpsc::WeakSender<Job>, batch: usize) -> std::io::Result<Handle> {
        let handle = Handle(Arc::new(Control {
            stopped: Mutex::new(false),
            wake: Condvar::new(),
            thread: Mutex::new(None),
        }));
        let sweep = Self {
            db,
            queue,
            batch,
            handle: handle.clone(),
        };
        let thread = thread::Builder::new()
            .name("kv-expiry".into())
            .spawn(move || sweep.run())?;
        *handle
            .0
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(thread);
        Ok(handle)
    }

    fn run(self) {
        loop {
            let pause = match self.round() {
                Some(pause) => pause,
                None => return,
            };
            if !pause.is_zero() && self.handle.sleep(pause) {
                return;
            }
            if *self
                .handle
                .0
                .stopped
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
            {
                return;
            }
        }
    }

    /// One look at the index and at most one batch; how long to pause after
    /// it, or `None` when the store is gone.
    fn round(&self) -> Option<Duration> {
        let now = kv_api::expiry::now_ms();
        let (due, next) = match self.due(now)? {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(cause = %err, "the expiry sweep cannot read the deadline index");
                return Some(BACKOFF);
            }
        };
        if due.is_empty() {
            let until_next = next.map_or(IDLE, |at| Duration::from_millis(at.saturating_sub(now)));
            return Some(until_next.min(IDLE));
        }
        let queue = self.queue.upgrade()?;
        let mut answers = Vec::with_capacity(due.len());
        for (expires_at, key) in due {
            let (reply, answer) = oneshot::channel();
            if queue
                .blocking_send(Job::Write(WriteOp::Expire { key, expires_at }, reply))
                .is_err()
            {
                return None;
            }
            answers.push(answer);
        }
        drop(queue);
        let mut removed = 0usize;
        let mut failed = false;
        for answer in answers {
            match answer.blocking_recv() {
                Ok(Ok(WriteOutcome::Deleted { .. })) => removed += 1,
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => failed = true,
            }
        }
        if failed {
            return Some(BACKOFF);
        }
        tracing::trace!(removed, "expired keys removed");
        // Nothing removed (the clock went back since the index was read):
        // wait rather than spin on the same keys.
        Some(if removed == 0 { IDLE } else { Duration::ZERO })
    }

    /// Up to a batch of `(deadline, key)` due at `now`, and the next deadline
    /// after them; `None` when the database is gone.
    #[allow(clippy::type_complexity)]
    fn due(&self, now: u64) -> Option<Result<(Vec<(u64, String)>, Option<u64>), ::redb::Error>> {
        let db = self.db.upgrade()?;
        let read = || -> Result<_, ::redb::Error> {
            let txn = db.begin_read()?;
            let table = txn.open_table(DEADLINES)?;
            let mut due = Vec::new();
            for item in table.range::<(u64, &str)>(..)? {
                let (entry, _) = item?;
                let (at, key) = entry.value();
                if at > now {
                    return Ok((due, Some(at)));
                }
                if due.len() >= self.batch {
                    return Ok((due, Some(at)));
                }
                due.push((at, key.to_owned()));
            }
            Ok((due, None))
        };
        Some(read())
    }
}
