//! The writer thread: group commit, checkpoints and fail-stop.
//!
//! It takes every write waiting, applies them in arrival order inside one
//! transaction (each taking the next revision, each precondition checked
//! against the writes before it), appends the group's changes to the log and
//! syncs it, then commits the transaction without a sync of its own (so
//! readers see the writes) and answers everyone.

use std::sync::atomic::Ordering;
use std::time::Instant;

use ::redb::{Database, Durability, ReadableTable, StorageBackend, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::engine::{CHECKPOINT_INTERVAL, Job, RedbOptions, Shared};
use kv_api::expiry::{Expiry, Touch};

use super::feed::Record;
use super::record::{self, CHECKPOINT, DATA, DEADLINES, META, REVISION};
use super::wal::{self, AppendError, Change, Wal};
use super::{StoreError, WriteOp, WriteOutcome};

/// The most writes in one group, and the most bytes its log record holds
/// (a write larger than that alone is a group of its own).
const MAX_GROUP_OPS: usize = 4096;
const MAX_GROUP_BYTES: usize = 64 << 20;
// So a group record is at most the larger of this and one write, which
// `admit` keeps within what the log can replay.
const _: () = assert!(MAX_GROUP_BYTES < wal::MAX_PAYLOAD);

/// Any redb error, as the writer reports it.
fn engine(err: impl Into<::redb::Error>) -> WriterError {
    WriterError::Engine(err.into())
}

/// Why a group or a checkpoint could not be committed; the store fail-stops on it.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("the database failed: {0}")]
    Engine(#[from] ::redb::Error),
    #[error("writing the write-ahead log failed: {0}")]
    Log(#[from] std::io::Error),
    /// The group's log record would be larger than replay reads; nothing was
    /// written or committed, and the store carries on.
    #[error("{0}")]
    TooLarge(AppendError),
}

/// The writer thread: gather a group, apply it, log it, commit it, answer
/// everyone; checkpoint when due.
pub(super) struct Writer<'a, B: StorageBackend> {
    db: &'a Database,
    shared: &'a Shared,
    wal: Wal<B>,
    two_phase: bool,
    checkpoint_bytes: u64,
    /// When the last checkpoint was, and whether anything was written since.
    checkpointed_at: Instant,
    dirty: bool,
}

impl<'a, B: StorageBackend> Writer<'a, B> {
    pub(super) fn new(db: &'a Database, shared: &'a Shared, wal: Wal<B>, options: &RedbOptions) -> Self {
        Self {
            db,
            shared,
            wal,
            two_phase: options.two_phase_commit,
            checkpoint_bytes: options.checkpoint_bytes,
            checkpointed_at: Instant::now(),
            dirty: false,
        }
    }

    pub(super) fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let mut closing = false;
        // A write that would have taken the last group over its byte cap: it
        // starts the next one.
        let mut carried: Option<(WriteOp, Reply)> = None;
        while !closing {
            let first = match carried.take() {
                Some((op, reply)) => Job::Write(op, reply),
                None => match jobs.blocking_recv() {
                    Some(job) => job,
                    None => break,
                },
            };
            let mut group = Vec::new();
            let mut bytes = 0;
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Close => closing = true,
                    Job::Write(op, reply) => {
                        let Some(size) = admit(&op) else {
                            let _ = reply.send(Err(StoreError::TooLarge(too_large(op_bytes(&op)))));
                            next = jobs.try_recv().ok();
                            continue;
                        };
                        if !group.is_empty() && bytes + size > MAX_GROUP_BYTES {
                            carried = Some((op, reply));
                            break;
                        }
                        bytes += size;
                        group.push((op, reply));
                    }
                    #[cfg(test)]
                    Job::Panic => panic!("writer thread panic injected by a test"),
                }
                if closing || group.len() >= MAX_GROUP_OPS || bytes >= MAX_GROUP_BYTES {
                    break;
                }
                next = jobs.try_recv().ok();
            }
            // Before the group, not after the previous one: a checkpoint belongs to
            // no write, and a fault in it must fail the writes still to come, never
            // be mistaken for the failure of writes already acknowledged.
            if self.checkpoint_due() {
                self.checkpoint();
            }
            if !group.is_empty() {
                self.commit(group);
            }
        }
        if let Some((_, reply)) = carried {
            let _ = reply.send(Err(StoreError::Closed));
        }
        if self.dirty && self.shared.failure.get().is_none() {
            self.checkpoint();
        }
        jobs.close();
        // Writes that raced with Close are refused, never silently dropped.
        while let Ok(job) = jobs.try_recv() {
            if let Job::Write(_, reply) = job {
                let _ = reply.send(Err(StoreError::Closed));
            }
        }
    }

    /// Commits one group and answers its writers: each gets its outcome once
    /// the group is durable, or everyone gets an error.
    fn commit(&mut self, group: Vec<(WriteOp, Reply)>) {
        let answers = match self.shared.failure.get() {
            Some(failure) => Err(failure.clone()),
            None => {
                let committing = Instant::now();
                let ops: Vec<&WriteOp> = group.iter().map(|(op, _)| op).collect();
                let result = self.commit_ops(&ops);
                match result {
                    Ok((outcomes, revision)) => {
                        tracing::debug!(
                            writes = ops.len(),
                            micros = committing.elapsed().as_micros(),
                            "group committed"
                        );
                        self.shared.revision.store(revision, Ordering::Release);
                        Ok(outcomes)
                    }
                    // Refused before anything was written: these writes
                    // fail, the store carries on.
                    Err(WriterError::TooLarge(AppendError::TooLarge { payload })) => {
                        tracing::warn!(writes = ops.len(), payload, "a group too large for the log was refused");
                        for (_, reply) in group {
                            let _ = reply.send(Err(StoreError::TooLarge(too_large(payload))));
                        }
                        return;
                    }
                    Err(err) => Err(self.fail(&err, group.len())),
                }
            }
        };
        match answers {
            Ok(outcomes) => {
                for ((_, reply), outcome) in group.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(failure) => {
                for (_, reply) in group {
                    let _ = reply.send(Err(StoreError::Unavailable(failure.clone())));
                }
            }
        }
    }

    /// Applies `ops` in one transaction, makes their changes durable in the
    /// log, then commits the transaction (no sync: the log holds them). Returns
    /// each write's outcome and the last revision used. Any error fails the
    /// whole group, and the store with it.
    fn commit_ops(&mut self, ops: &[&WriteOp]) -> Result<(Vec<WriteOutcome>, u64), WriterError> {
        let start = self.shared.revision.load(Ordering::Acquire);
        let mut txn = self.db.begin_write().map_err(engine)?;
        txn.set_durability(Durability::None).map_err(engine)?;
        let (outcomes, changes) = apply_ops(&txn, ops, start).map_err(engine)?;
        let Some(revision) = changes.last().map(Change::revision) else {
            // Only refused writes: nothing to make durable.
            txn.abort().map_err(engine)?;
            return Ok((outcomes, start));
        };
        {
            let mut meta = txn.open_table(META).map_err(engine)?;
            meta.insert(REVISION, revision).map_err(engine)?;
        }
        let logging = Instant::now();
        match self.wal.append(&changes) {
            Ok(()) => {}
            Err(refused @ AppendError::TooLarge { .. }) => {
                txn.abort().map_err(engine)?;
                return Err(WriterError::TooLarge(refused));
            }
            Err(AppendError::Io(err)) => return Err(WriterError::Log(err)),
        }
        let logged = logging.elapsed();
        txn.commit().map_err(engine)?;
        // Readers see the group now; its events go into the feed's history
        // before anyone is answered, so a write's 2xx implies its event.
        self.shared.feed.publish(changes.iter().map(feed_record).collect());
        tracing::debug!(
            log_micros = logged.as_micros(),
            commit_micros = (logging.elapsed() - logged).as_micros(),
            "group logged"
        );
        self.dirty = true;
        Ok((outcomes, revision))
    }

    fn checkpoint_due(&self) -> bool {
        self.dirty
            && self.shared.failure.get().is_none()
            && (self.wal.bytes() >= self.checkpoint_bytes || self.checkpointed_at.elapsed() >= CHECKPOINT_INTERVAL)
    }

    /// Makes everything committed so far durable in the database itself, so
    /// that the log can start over; fail-stops the store if it cannot.
    fn checkpoint(&mut self) {
        if let Err(err) = self.try_checkpoint() {
            self.fail(&err, 0);
        }
    }

    fn try_checkpoint(&mut self) -> Result<(), WriterError> {
        let started = Instant::now();
        let mut txn = self.db.begin_write().map_err(engine)?;
        txn.set_two_phase_commit(self.two_phase);
        // A change of its own, so that redb writes a new durable root however
        // it treats an empty transaction.
        let revision = self.shared.revision.load(Ordering::Acquire);
        {
            let mut meta = txn.open_table(META).map_err(engine)?;
            meta.insert(CHECKPOINT, revision).map_err(engine)?;
        }
        txn.commit().map_err(engine)?;
        tracing::debug!(
            revision,
            log_bytes = self.wal.bytes(),
            micros = started.elapsed().as_micros(),
            "checkpoint"
        );
        self.wal.rewind();
        self.checkpointed_at = Instant::now();
        self.dirty = false;
        Ok(())
    }

    /// Fail-stops the store after a failed commit, log write or checkpoint;
    /// returns the message every later write gets.
    fn fail(&self, err: &WriterError, writes: usize) -> String {
        tracing::error!(
            cause = %err,
            writes,
            "commit failed; refusing all writes until kv-server is restarted"
        );
        self.shared
            .failure
            .get_or_init(|| format!("a commit failed ({err}); restart kv-server to recover"))
            .clone()
    }
}

fn feed_record(change: &Change) -> Record {
    match change {
        Change::Put {
            key,
            revision,
            content_type,
            value,
            expires_at,
        } => Record::put(*revision, key, value, content_type, *expires_at),
        Change::Delete { key, revision, expired } => Record::delete(*revision, key, *expired),
    }
}

type Reply = oneshot::Sender<Result<WriteOutcome, StoreError>>;

/// The bytes a write takes in the group's log record, at most.
fn op_bytes(op: &WriteOp) -> usize {
    match op {
        WriteOp::Put {
            key,
            value,
            content_type,
            ..
        } => wal::put_bytes(key, content_type, value.len()),
        WriteOp::Delete { key, .. } | WriteOp::Expire { key, .. } => wal::delete_bytes(key),
        // A touch logs the key's whole entry, whose size is known only once
        // the group reads it: counted as its key here. A group that the
        // touched values take past the log's limit is refused whole by the
        // log (`AppendError::TooLarge`), never half-written.
        WriteOp::Touch { key, .. } => wal::delete_bytes(key),
    }
}

/// A write's size in the log, if one record can hold it (with the group's
/// count); `None` for a write the log could not replay, which is refused
/// before it joins a group.
fn admit(op: &WriteOp) -> Option<usize> {
    let size = op_bytes(op);
    (4 + size <= wal::MAX_PAYLOAD).then_some(size)
}

/// What a writer is told when its write is too large for one log record.
fn too_large(payload: usize) -> String {
    format!(
        "the write needs a log record of {payload} bytes, over the write-ahead log's limit of {} bytes \
         (values may be at most {} bytes); it was not stored",
        wal::MAX_PAYLOAD,
        wal::MAX_VALUE_BYTES
    )
}

/// Applies a group in `txn`, in order, each write seeing the ones before it;
/// returns each write's outcome and the changes made (with their revisions,
/// consecutive from `start + 1`).
///
/// A key whose deadline has passed is absent here as for readers: a
/// precondition sees no version, a delete or a touch finds nothing, a put
/// creates it anew. `now` is read once per group, before its first write.
fn apply_ops(
    txn: &WriteTransaction,
    ops: &[&WriteOp],
    start: u64,
) -> Result<(Vec<WriteOutcome>, Vec<Change>), ::redb::Error> {
    let now = kv_api::expiry::now_ms();
    let mut revision = start;
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut changes = Vec::with_capacity(ops.len());
    let mut data = txn.open_table(DATA)?;
    let mut deadlines = txn.open_table(DEADLINES)?;
    for op in ops {
        let key = op.key();
        let (current, current_deadline) = match data.get(key)? {
            Some(record) => {
                let record = record.value();
                (record::live_version(record, now), record::expires_at_of(record))
            }
            None => (None, None),
        };
        let change = match op {
            WriteOp::Put { precondition, .. }
            | WriteOp::Delete { precondition, .. }
            | WriteOp::Touch { precondition, .. }
                if !precondition.allows(current) =>
            {
                outcomes.push(WriteOutcome::PreconditionFailed { current });
                continue;
            }
            WriteOp::Delete { .. } | WriteOp::Touch { .. } if current.is_none() => {
                outcomes.push(WriteOutcome::NotFound);
                continue;
            }
            WriteOp::Delete { key, .. } => Change::Delete {
                key: key.clone(),
                revision: revision + 1,
                expired: false,
            },
            WriteOp::Expire { key, expires_at } => {
                // Only the record the sweep saw, and only once it is due.
                if current_deadline != Some(*expires_at) || *expires_at > now {
                    outcomes.push(WriteOutcome::NotFound);
                    continue;
                }
                Change::Delete {
                    key: key.clone(),
                    revision: revision + 1,
                    expired: true,
                }
            }
            WriteOp::Put {
                key,
                value,
                content_type,
                expiry,
                ..
            } => Change::Put {
                key: key.clone(),
                revision: revision + 1,
                content_type: content_type.clone(),
                value: value.clone(),
                expires_at: match expiry {
                    Expiry::Clear => None,
                    Expiry::Keep => current.and(current_deadline),
                    Expiry::After(ttl) => Some(kv_api::expiry::deadline(now, *ttl)),
                },
            },
            WriteOp::Touch { key, touch, .. } => {
                let record = data.get(key.as_str())?.expect("a live key has a record");
                let entry = record::decode(key.clone(), record.value(), false);
                Change::Put {
                    key: key.clone(),
                    revision: revision + 1,
                    content_type: entry.content_type,
                    value: entry.value,
                    expires_at: match touch {
                        Touch::Persist => None,
                        Touch::After(ttl) => Some(kv_api::expiry::deadline(now, *ttl)),
                    },
                }
            }
        };
        revision += 1;
        record::apply_change(&mut data, &mut deadlines, &change)?;
        outcomes.push(match &change {
            Change::Put { expires_at, .. } => WriteOutcome::Stored {
                revision,
                created: current.is_none(),
                expires_at: *expires_at,
            },
            Change::Delete { .. } => WriteOutcome::Deleted { revision },
        });
        changes.push(change);
    }
    Ok((outcomes, changes))
}
