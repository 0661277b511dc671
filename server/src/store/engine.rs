//! The embedded engine: one redb file and its write-ahead log, written by one
//! thread that commits writers in groups.
//!
//! Group commit: every write is queued to the writer thread, which takes all
//! the writes waiting, applies them in arrival order inside one transaction
//! (each taking the next revision, each precondition checked against the
//! writes before it), appends the group's changes to the [`wal`](super::wal)
//! and syncs it, then commits the transaction without a sync of its own (so
//! readers see the writes) and answers everyone. Many writers thus share one
//! fsync, and nobody is answered before that fsync returns. Every
//! [`RedbOptions::checkpoint_bytes`] of log, or [`CHECKPOINT_INTERVAL`], a
//! durable redb commit (a checkpoint) lets the log start over.
//!
//! Fail-stop: after a failed commit the engine refuses every later write until
//! the process restarts and redb recovers the file from its last good commit.
//! Retrying an fsync that failed can report success for data the kernel
//! already dropped (PostgreSQL's "fsyncgate"), so we never retry.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use ::redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata, StorageBackend};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use kv_api::dump::Entry;
use tokio::sync::{mpsc, oneshot};

use super::feed::{Feed, FeedLimits};
use super::record::{self, DATA, DEADLINES, META, REVISION};
use super::sweep::{self, Sweep};
use super::wal::{self, Change, Wal};
use super::writer::Writer;
use super::{Scan, Scanned, Store, StoreError, StoreFuture, WriteOp, WriteOutcome};

/// The database file inside `--data-dir`.
pub const FILE_NAME: &str = "kv.redb";
/// What [`RedbStore::path`] reports for a store over a custom backend.
pub const CUSTOM_BACKEND_PATH: &str = "<custom backend>";

/// Writers waiting beyond this many queue behind the channel (backpressure).
const QUEUE_DEPTH: usize = 16 * 1024;

/// A checkpoint is due at the latest this long after the previous one (if
/// anything was written since), so that an idle-ish store does not keep
/// writes only in its log for long. Writers wait for a checkpoint (about 20 ms
/// under load here), so they are kept rare: every 2 s put them into the PUT p99.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(30);

/// How the engine commits; see ARCHITECTURE.md for what each choice costs.
#[derive(Debug, Clone)]
pub struct RedbOptions {
    /// redb's page cache, in bytes.
    pub cache_bytes: usize,
    /// Checkpoint in two phases (two fsyncs) so that recovery never has to
    /// trust a checksum over data a client chose. redb recommends it for
    /// untrusted input; the log's records have keyed tags for the same reason.
    pub two_phase_commit: bool,
    /// Checkpoint once the log holds this many bytes of records: it bounds the
    /// log file and what recovery replays (64 MiB: about a second).
    pub checkpoint_bytes: u64,
    /// The change feed's history and subscriber cap.
    pub feed: FeedLimits,
}

impl Default for RedbOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 256 << 20,
            two_phase_commit: true,
            checkpoint_bytes: 64 << 20,
            feed: FeedLimits::default(),
        }
    }
}

/// Why the store could not be opened. A variant's cause is its `source`, which
/// the programs print after the message (`{err:#}`), so messages leave it out.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create the data directory {path}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} is already in use by another kv-server (or kv up); stop that one, \
         or give this one its own --data-dir"
    )]
    AlreadyOpen { path: PathBuf },
    #[error("cannot open the database {path}: {message}")]
    Engine { path: PathBuf, message: String },
    #[error("cannot use the write-ahead log {path}")]
    Wal { path: PathBuf, source: wal::WalError },
}

/// A cheap-clone handle on the open database and its writer thread.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    path: PathBuf,
    /// Writes the open found only in the log, and brought into the database.
    recovered: usize,
    shared: Arc<Shared>,
    queue: mpsc::Sender<Job>,
    writer: Mutex<Option<thread::JoinHandle<()>>>,
    /// The background removal of expired keys ([`sweep`]).
    sweep: sweep::Handle,
}

/// State the writer thread publishes to readers.
pub(super) struct Shared {
    pub(super) revision: AtomicU64,
    /// Set once, at the first failed commit: the store is then fail-stopped.
    pub(super) failure: OnceLock<String>,
    /// Where the writer publishes each acknowledged write.
    pub(super) feed: Arc<Feed>,
}

pub(super) enum Job {
    Write(WriteOp, oneshot::Sender<Result<WriteOutcome, StoreError>>),
    Close,
    /// Tests only: makes the writer thread panic, as a bug in it would.
    #[cfg(test)]
    Panic,
}

/// Lives on the writer thread's stack: if the thread unwinds, the store is
/// marked failed on the way out, so that `healthy()` and every later write
/// say so instead of "shutting down".
struct WriterAlive(Arc<Shared>);

/// What the store reports once its writer thread has died.
const WRITER_DIED: &str = "the writer thread stopped unexpectedly (a bug; its panic is in the log); \
                           restart kv-server to recover";

impl Drop for WriterAlive {
    fn drop(&mut self) {
        if thread::panicking() {
            tracing::error!("the writer thread panicked; refusing all writes until kv-server is restarted");
            let _ = self.0.failure.set(WRITER_DIED.to_owned());
        }
    }
}

impl RedbStore {
    /// Opens (or creates) the store in `data_dir`, taking the file's lock.
    pub fn open(data_dir: &Path, options: &RedbOptions) -> Result<Self, OpenError> {
        std::fs::create_dir_all(data_dir).map_err(|source| OpenError::CreateDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(FILE_NAME);
        let io_err = |e: std::io::Error| OpenError::Engine {
            path: path.clone(),
            message: e.to_string(),
        };
        if !path.try_exists().unwrap_or(true) {
            create_file(data_dir, &path).map_err(io_err)?;
        }
        let db = Database::builder().set_cache_size(options.cache_bytes).create(&path);
        // Only once the database's lock is ours: another server may be using the log.
        let wal_path = data_dir.join(wal::FILE_NAME);
        let wal = match &db {
            Ok(_) => {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&wal_path)
                    .map_err(|e| OpenError::Engine {
                        path: wal_path.clone(),
                        message: e.to_string(),
                    })?;
                Some(::redb::backends::FileBackend::new(file).map_err(|e| OpenError::Engine {
                    path: wal_path.clone(),
                    message: e.to_string(),
                })?)
            }
            Err(_) => None,
        };
        if db.is_ok() {
            // The files' directory entries (and the directory's own, if it is new) must be
            // durable before a write is acknowledged, or a power loss can take a file away.
            sync_dir(data_dir).map_err(io_err)?;
            sync_dir(
                data_dir
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new(".")),
            )
            .map_err(io_err)?;
        }
        Self::start(db, wal.map(|backend| (backend, wal_path)), path, options)
    }

    /// Opens (or creates) the store over any redb storage backends instead of
    /// files in a directory: `backend` for the database, `log` for its
    /// write-ahead log. It exists for crash and fault-injection tests (backends
    /// that lose what was not synced, or fail the kth write or sync) and for
    /// other media. Locking is the backends' business; [`Self::path`] reports
    /// [`CUSTOM_BACKEND_PATH`].
    pub fn open_with_backend(
        backend: impl StorageBackend,
        log: impl StorageBackend,
        options: &RedbOptions,
    ) -> Result<Self, OpenError> {
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create_with_backend(backend);
        let path = PathBuf::from(CUSTOM_BACKEND_PATH);
        Self::start(db, Some((log, path.clone())), path, options)
    }

    /// Opens the log, creates the tables, replays what the log holds beyond
    /// the database's durable revision, and starts the writer thread.
    fn start<B: StorageBackend>(
        db: Result<Database, DatabaseError>,
        log: Option<(B, PathBuf)>,
        path: PathBuf,
        options: &RedbOptions,
    ) -> Result<Self, OpenError> {
        let engine_err = |e: &dyn std::fmt::Display| OpenError::Engine {
            path: path.clone(),
            message: e.to_string(),
        };
        let db = db.map_err(|err| match err {
            DatabaseError::DatabaseAlreadyOpen => OpenError::AlreadyOpen { path: path.clone() },
            other => engine_err(&other),
        })?;
        let (log, wal_path) = log.expect("a log comes with every opened database");
        let wal_err = |source| OpenError::Wal {
            path: wal_path.clone(),
            source,
        };
        let mut wal = Wal::open(log).map_err(wal_err)?;
        // Create the tables up front so that readers never meet a missing table,
        // and bring the database up to date with the log, in one durable commit.
        let mut txn = db.begin_write().map_err(|e| engine_err(&e))?;
        txn.set_two_phase_commit(options.two_phase_commit);
        let (revision, replayed) = {
            let mut data = txn.open_table(DATA).map_err(|e| engine_err(&e))?;
            let mut meta = txn.open_table(META).map_err(|e| engine_err(&e))?;
            let mut deadlines = txn.open_table(DEADLINES).map_err(|e| engine_err(&e))?;
            let durable = meta.get(REVISION).map_err(|e| engine_err(&e))?.map_or(0, |g| g.value());
            let changes = wal.replay(durable).map_err(wal_err)?;
            for change in &changes {
                record::apply_change(&mut data, &mut deadlines, change).map_err(|e| engine_err(&e))?;
            }
            let revision = changes.last().map_or(durable, Change::revision);
            meta.insert(REVISION, revision).map_err(|e| engine_err(&e))?;
            (revision, changes.len())
        };
        txn.commit().map_err(|e| engine_err(&e))?;
        // Room for a checkpoint's worth of log and a margin, once: the log is
        // rewound at each checkpoint, so appends then never grow the file.
        wal.preallocate(options.checkpoint_bytes + options.checkpoint_bytes / 8)
            .map_err(|e| wal_err(e.into()))?;
        if replayed > 0 {
            tracing::info!(
                writes = replayed,
                revision,
                "recovered writes from the write-ahead log that the database did not hold yet"
            );
        }

        let db = Arc::new(db);
        let shared = Arc::new(Shared {
            revision: AtomicU64::new(revision),
            failure: OnceLock::new(),
            feed: Arc::new(Feed::new(revision, options.feed)),
        });
        let (queue, jobs) = mpsc::channel(QUEUE_DEPTH);
        let writer = {
            let (db, shared, options) = (db.clone(), shared.clone(), options.clone());
            thread::Builder::new()
                .name("kv-writer".into())
                .spawn(move || {
                    let _alive = WriterAlive(shared.clone());
                    Writer::new(&db, &shared, wal, &options).run(jobs);
                })
                .map_err(|e| engine_err(&e))?
        };
        let sweep = Sweep::start(Arc::downgrade(&db), queue.downgrade(), sweep::BATCH).map_err(|e| engine_err(&e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                path,
                recovered: replayed,
                shared,
                queue,
                writer: Mutex::new(Some(writer)),
                sweep,
            }),
        })
    }

    /// The database file, or [`CUSTOM_BACKEND_PATH`] for a store opened with
    /// [`Self::open_with_backend`].
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// How many writes opening the store recovered from the write-ahead log
    /// (acknowledged before a crash, not yet checkpointed into the database).
    pub fn recovered(&self) -> usize {
        self.inner.recovered
    }

    /// Finishes the queued writes and stops the writer thread. The file itself
    /// is closed when the last handle is dropped.
    pub async fn close(&self) {
        let sweep = self.inner.sweep.clone();
        let _ = tokio::task::spawn_blocking(move || sweep.stop()).await;
        let _ = self.inner.queue.send(Job::Close).await;
        let writer = self.inner.writer.lock().expect("writer handle lock").take();
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
    }

    fn read_txn(&self) -> Result<::redb::ReadTransaction, StoreError> {
        self.inner.db.begin_read().map_err(unavailable)
    }
}

/// The engine's own reads, synchronous: a read transaction answers at once
/// (a scan reads from disk, so async callers go through [`Store::scan`]).
impl RedbStore {
    pub fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let txn = self.read_txn()?;
        let table = txn.open_table(DATA).map_err(unavailable)?;
        let Some(record) = table.get(key).map_err(unavailable)? else {
            return Ok(None);
        };
        let entry = record::decode(key.to_owned(), record.value(), false);
        Ok((!kv_api::expiry::expired(entry.expires_at, kv_api::expiry::now_ms())).then_some(entry))
    }

    pub fn scan(&self, scan: &Scan) -> Result<Scanned, StoreError> {
        let txn = self.read_txn()?;
        let table = txn.open_table(DATA).map_err(unavailable)?;
        let start = match &scan.after {
            Some(after) if after.as_str() >= scan.prefix.as_str() => std::ops::Bound::Excluded(after.as_str()),
            _ => std::ops::Bound::Included(scan.prefix.as_str()),
        };
        let range = table
            .range::<&str>((start, std::ops::Bound::Unbounded))
            .map_err(unavailable)?;
        let mut scanned = Scanned {
            entries: Vec::with_capacity(scan.limit.min(1024)),
            ..Scanned::default()
        };
        let mut bytes = 0usize;
        let now = kv_api::expiry::now_ms();
        for item in range {
            let (key, record) = item.map_err(unavailable)?;
            let key = key.value();
            if !key.starts_with(scan.prefix.as_str()) {
                break;
            }
            if scanned.entries.len() >= scan.limit {
                scanned.more = true;
                break;
            }
            let record = record.value();
            if record::live_version(record, now).is_none() {
                continue;
            }
            let size = key.len() + if scan.keys_only { 0 } else { record.len() };
            if !scanned.entries.is_empty() && bytes.saturating_add(size) > scan.max_bytes {
                scanned.more = true;
                break;
            }
            bytes += size;
            scanned
                .entries
                .push(record::decode(key.to_owned(), record, scan.keys_only));
        }
        Ok(scanned)
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    pub fn len(&self) -> Result<u64, StoreError> {
        let txn = self.read_txn()?;
        let table = txn.open_table(DATA).map_err(unavailable)?;
        table.len().map_err(unavailable)
    }

    pub fn healthy(&self) -> Result<(), StoreError> {
        if let Some(failure) = self.inner.shared.failure.get() {
            return Err(StoreError::Unavailable(failure.clone()));
        }
        // The writer thread owns the queue's receiver: closed means it has
        // exited (closed by `close`, or dropped as the thread died).
        if self.inner.queue.is_closed() {
            return Err(StoreError::Unavailable(
                "the writer thread has stopped; no write can be taken".into(),
            ));
        }
        self.read_txn().map(drop)
    }
}

impl Store for RedbStore {
    fn get(&self, key: &str) -> StoreFuture<Option<Entry>> {
        futures_util::future::ready(Self::get(self, key)).boxed()
    }

    fn scan(&self, scan: Scan) -> StoreFuture<Scanned> {
        let store = self.clone();
        async move {
            tokio::task::spawn_blocking(move || Self::scan(&store, &scan))
                .await
                .map_err(|err| StoreError::Unavailable(format!("a scan failed: {err}")))?
        }
        .boxed()
    }

    fn len(&self) -> StoreFuture<u64> {
        futures_util::future::ready(Self::len(self)).boxed()
    }

    fn revision(&self) -> u64 {
        self.inner.shared.revision.load(Ordering::Acquire)
    }

    fn feed(&self) -> &Arc<Feed> {
        &self.inner.shared.feed
    }

    fn healthy(&self) -> StoreFuture<()> {
        futures_util::future::ready(Self::healthy(self)).boxed()
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        let store = self.clone();
        async move { Self::close(&store).await }.boxed()
    }

    fn location(&self) -> String {
        let path = std::path::absolute(self.path()).unwrap_or_else(|_| self.path().to_owned());
        path.display().to_string()
    }

    fn write(&self, op: WriteOp) -> BoxFuture<'static, Result<WriteOutcome, StoreError>> {
        let (queue, shared) = (self.inner.queue.clone(), self.inner.shared.clone());
        async move {
            let (reply, answer) = oneshot::channel();
            let gone = || match shared.failure.get() {
                Some(failure) => StoreError::Unavailable(failure.clone()),
                None => StoreError::Closed,
            };
            queue.send(Job::Write(op, reply)).await.map_err(|_| gone())?;
            answer.await.map_err(|_| gone())?
        }
        .boxed()
    }
}

#[cfg(test)]
impl RedbStore {
    /// Makes the writer thread panic, as a bug in it would, and waits for it to end.
    pub(crate) async fn kill_writer(&self) {
        let _ = self.inner.queue.send(Job::Panic).await;
        let writer = self.inner.writer.lock().expect("writer handle lock").take();
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
    }
}

/// Creates an empty database at `path` atomically: redb initialises it under a
/// temporary name, and it takes its real name (by a hard link, which never
/// replaces a file another server has just created) only once redb has synced
/// it. A power loss during redb's initialisation would otherwise leave a file
/// without redb's magic number, which redb refuses to open ever after. A crash
/// here leaves at most a stray `kv.redb.new-<pid>` and no `kv.redb`.
fn create_file(data_dir: &Path, path: &Path) -> std::io::Result<()> {
    let temp = data_dir.join(format!("{FILE_NAME}.new-{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    drop(Database::builder().create(&temp).map_err(std::io::Error::other)?);
    // Fails when another server created the file first (its lock then decides
    // who runs), or where there are no hard links (redb then creates it in place).
    let _ = std::fs::hard_link(&temp, path);
    std::fs::remove_file(&temp)
}

/// Makes a directory's entries durable (a no-op where directories cannot be synced).
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    match std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        Err(e)
            if !matches!(
                e.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported
            ) =>
        {
            return Err(e);
        }
        _ => {}
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kv_api::condition::{Condition, Precondition};
    use kv_api::expiry::Expiry;

    fn put(key: &str, value: &str) -> WriteOp {
        WriteOp::Put {
            key: key.into(),
            value: Bytes::from(value.to_owned()),
            content_type: "text/plain".into(),
            precondition: Precondition::default(),
            expiry: Expiry::Clear,
        }
    }

    #[tokio::test]
    async fn revisions_survive_reopen_and_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), &RedbOptions::default()).unwrap();
        assert_eq!(
            store.write(put("a", "1")).await.unwrap(),
            WriteOutcome::Stored {
                revision: 1,
                created: true,
                expires_at: None
            }
        );
        assert_eq!(
            store.write(put("a", "2")).await.unwrap(),
            WriteOutcome::Stored {
                revision: 2,
                created: false,
                expires_at: None
            }
        );
        let delete = WriteOp::Delete {
            key: "a".into(),
            precondition: Precondition::default(),
        };
        assert_eq!(
            store.write(delete).await.unwrap(),
            WriteOutcome::Deleted { revision: 3 }
        );
        store.close().await;
        drop(store);

        let store = RedbStore::open(dir.path(), &RedbOptions::default()).unwrap();
        assert_eq!(store.revision(), 3);
        assert_eq!(
            store.write(put("b", "x")).await.unwrap(),
            WriteOutcome::Stored {
                revision: 4,
                created: true,
                expires_at: None
            }
        );
    }

    #[tokio::test]
    async fn a_group_sees_its_own_earlier_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), &RedbOptions::default()).unwrap();
        let create_only = |v: &str| WriteOp::Put {
            key: "k".into(),
            value: Bytes::from(v.to_owned()),
            content_type: String::new(),
            precondition: Precondition {
                if_match: Condition::None,
                if_none_match: Condition::Any,
            },
            expiry: Expiry::Clear,
        };
        let results = futures_util::future::join_all((0..50).map(|i| store.write(create_only(&i.to_string())))).await;
        let stored = results
            .iter()
            .filter(|r| matches!(r, Ok(WriteOutcome::Stored { .. })))
            .count();
        assert_eq!(stored, 1, "exactly one create-if-absent may win: {results:?}");
    }

    fn put_with(key: &str, value: &str, expiry: Expiry, precondition: Precondition) -> WriteOp {
        WriteOp::Put {
            key: key.into(),
            value: Bytes::from(value.to_owned()),
            content_type: "text/plain".into(),
            precondition,
            expiry,
        }
    }

    fn put_for(key: &str, ttl: Duration) -> WriteOp {
        put_with(key, "v", Expiry::After(ttl), Precondition::default())
    }

    #[tokio::test]
    async fn an_expired_key_is_absent_before_and_after_the_sweep_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), &RedbOptions::default()).unwrap();
        store.write(put_for("short", Duration::from_millis(150))).await.unwrap();
        store.write(put_for("long", Duration::from_secs(600))).await.unwrap();
        store.write(put("plain", "v")).await.unwrap();
        let deadline = store.get("short").unwrap().unwrap().expires_at.unwrap();
        assert!(deadline > kv_api::expiry::now_ms());
        std::thread::sleep(Duration::from_millis(160));
        // Absent at once, whether or not the sweep got to it.
        assert!(store.get("short").unwrap().is_none());
        let keys: Vec<String> = store
            .scan(&Scan {
                prefix: String::new(),
                after: None,
                at: None,
                limit: 10,
                max_bytes: usize::MAX,
                keys_only: false,
            })
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["long", "plain"]);
        // Absent for writes: a create-only put succeeds, as a new key.
        let create_only = Precondition {
            if_match: Condition::None,
            if_none_match: Condition::Any,
        };
        let create_only = put_with("short", "again", Expiry::Clear, create_only);
        assert!(matches!(
            store.write(create_only).await.unwrap(),
            WriteOutcome::Stored { created: true, .. }
        ));
        // The sweep removes expired keys with revisions of their own.
        store.write(put_for("gone", Duration::from_millis(20))).await.unwrap();
        let before = store.revision();
        for _ in 0..100 {
            if store.len().unwrap() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(store.len().unwrap(), 3, "the sweep removed the expired key");
        assert_eq!(store.revision(), before + 1, "one delete, one revision");
        // Deadlines survive a reopen, counted from the write.
        store.close().await;
        drop(store);
        let store = RedbStore::open(dir.path(), &RedbOptions::default()).unwrap();
        let long = store.get("long").unwrap().unwrap();
        assert!(long.expires_at.unwrap() - kv_api::expiry::now_ms() <= 600_000);
        assert_eq!(store.get("plain").unwrap().unwrap().expires_at, None);
    }

    #[tokio::test]
    async fn keepttl_keeps_touch_moves_and_a_plain_put_clears_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), &RedbOptions::default()).unwrap();
        store.write(put_for("k", Duration::from_secs(60))).await.unwrap();
        let first = store.get("k").unwrap().unwrap().expires_at;
        let keep = put_with("k", "w", Expiry::Keep, Precondition::default());
        let WriteOutcome::Stored { expires_at, .. } = store.write(keep).await.unwrap() else {
            panic!("not stored");
        };
        assert_eq!(expires_at, first);
        let touch = |touch| WriteOp::Touch {
            key: "k".into(),
            touch,
            precondition: Precondition::default(),
        };
        let moved = store
            .write(touch(kv_api::expiry::Touch::After(Duration::from_secs(5))))
            .await
            .unwrap();
        assert!(matches!(
            moved,
            WriteOutcome::Stored {
                expires_at: Some(_),
                created: false,
                ..
            }
        ));
        let entry = store.get("k").unwrap().unwrap();
        assert_eq!(&entry.value[..], b"w", "the value is untouched");
        assert!(entry.expires_at < first);
        store.write(touch(kv_api::expiry::Touch::Persist)).await.unwrap();
        assert_eq!(store.get("k").unwrap().unwrap().expires_at, None);
        store.write(put_for("k", Duration::from_secs(5))).await.unwrap();
        store.write(put("k", "x")).await.unwrap();
        assert_eq!(
            store.get("k").unwrap().unwrap().expires_at,
            None,
            "a plain put clears it"
        );
        let missing = WriteOp::Touch {
            key: "nope".into(),
            touch: kv_api::expiry::Touch::Persist,
            precondition: Precondition::default(),
        };
        assert_eq!(store.write(missing).await.unwrap(), WriteOutcome::NotFound);
    }

    #[tokio::test]
    async fn a_write_the_log_cannot_hold_is_refused_and_the_store_carries_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), &RedbOptions::default()).unwrap();
        // calloc'd and never touched: the writer refuses it by its length alone.
        let huge = WriteOp::Put {
            key: "huge".into(),
            value: Bytes::from(vec![0u8; wal::MAX_PAYLOAD]),
            content_type: String::new(),
            precondition: Precondition::default(),
            expiry: Expiry::Clear,
        };
        let answer = store.write(huge).await;
        assert!(matches!(answer, Err(StoreError::TooLarge(_))), "{answer:?}");
        store.healthy().expect("a refused write does not fail the store");
        assert_eq!(
            store.write(put("after", "x")).await.unwrap(),
            WriteOutcome::Stored {
                revision: 1,
                created: true,
                expires_at: None
            }
        );
        assert!(store.get("huge").unwrap().is_none());
    }

    #[test]
    fn a_second_open_of_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = RedbStore::open(dir.path(), &RedbOptions::default()).unwrap();
        let second = RedbStore::open(dir.path(), &RedbOptions::default());
        assert!(matches!(second, Err(OpenError::AlreadyOpen { .. })));
    }
}
