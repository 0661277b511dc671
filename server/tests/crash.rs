//! The server's durability promises under crashes and I/O faults, measured on
//! the real engine (`RedbStore` with its writer thread, group commit,
//! write-ahead log and checkpoints) through storage backends that misbehave
//! on purpose, in the manner of redb's own crash-consistency tests. The
//! database and its log are two files on one simulated machine: a power loss
//! or a fault counts the operations of both.
//!
//! - `power_loss_never_loses_an_acknowledged_write`: a backend whose durable
//!   image advances only on `sync_data`, killed at thousands of random
//!   operations, then reopened from what a disk would hold.
//! - `a_failed_write_or_sync_is_fail_stop`: a backend that fails the kth write
//!   or sync once; the store must refuse every write from then on, over the
//!   `Store` trait and over HTTP, until it is reopened.
//! - `a_crash_while_creating_the_file_leaves_none`: why `RedbStore::open`
//!   creates a new file under a temporary name.
//!
//! `KV_CRASH_SEED` replays a run; `KV_CRASH_POINTS` changes how many power
//! losses the first test simulates.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use bytes::Bytes;
use http_body_util::BodyExt;
use kv_api::condition::Precondition;
use kv_edge::metrics::Metrics;
use kv_server::http::{AppState, app};
use kv_server::store::engine::RedbOptions;
use kv_server::store::{RedbStore, Store, StoreError, WriteOp, WriteOutcome};
use redb::{Database, StorageBackend};
use serde_json::Value as Json;
use tower::ServiceExt;

/// The unit a disk writes atomically in this simulation: an unsynced write
/// survives a power loss page by page, each page independently.
const PAGE: usize = 4096;

/// The first bytes of every redb file, written last when redb initialises one.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// Power losses simulated by default (each is one crash point).
const DEFAULT_CRASH_POINTS: u64 = 2000;
/// A database file lives through this many crashes before the test starts
/// afresh, so that both young and much-recovered files are crashed.
const FILE_LIFETIME: u64 = 50;
/// Rounds of concurrent writes per life of the store, and writes per round.
const ROUNDS: u64 = 4;
const MAX_BATCH: u64 = 4;

/// A small cache, so that redb writes pages between checkpoints too, and a
/// checkpoint every few groups, so that crashes and faults hit checkpoints,
/// log appends and replays alike.
fn options() -> RedbOptions {
    RedbOptions {
        cache_bytes: 1 << 20,
        checkpoint_bytes: 2048,
        ..RedbOptions::default()
    }
}

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

/// A small deterministic generator (SplitMix64): a failing run is replayed
/// from the seed it prints.
struct Rng(u64);

impl Rng {
    fn from_env() -> (Self, u64) {
        let seed = std::env::var("KV_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x6b76_5f63_7261_7368);
        (Self(seed), seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// Counts panics on the store's writer threads: such a panic is swallowed by the
/// thread boundary (its writers would just see the store closed).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("kv-writer") {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

fn put(key: &str, value: Bytes) -> WriteOp {
    WriteOp::Put {
        key: key.to_owned(),
        value,
        content_type: "application/octet-stream".into(),
        precondition: Precondition::default(),
        expiry: kv_api::expiry::Expiry::Clear,
    }
}

/// A value of a random size: mostly a few bytes, sometimes several pages, so
/// that commits write both small and multi-page updates.
fn value_for(n: u64, rng: &mut Rng) -> Bytes {
    let len = if rng.below(8) == 0 {
        5000 + rng.below(5000)
    } else {
        rng.below(64)
    };
    let seed = format!("value-{n}-");
    Bytes::from(
        seed.bytes()
            .cycle()
            .take(usize::try_from(len).unwrap())
            .collect::<Vec<u8>>(),
    )
}

/// Runs `writes` concurrently (one task each) through the `Store` trait and
/// returns each one's answer, in the order given.
async fn write_all(
    store: &RedbStore,
    writes: Vec<(String, Bytes)>,
) -> Vec<(String, Bytes, Result<WriteOutcome, StoreError>)> {
    let tasks: Vec<_> = writes
        .into_iter()
        .map(|(key, value)| {
            let answer = store.write(put(&key, value.clone()));
            tokio::spawn(async move { (key, value, answer.await) })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.expect("a writing task panicked"));
    }
    results
}

/// A write the store acknowledged: it must survive anything short of losing the disk.
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    value: Bytes,
    revision: u64,
}

/// Checks that every acknowledged write is in `store` with its value and
/// version, and that the store's revision is not behind any of them. Returns
/// how many writes were checked.
fn assert_all_present(store: &RedbStore, acked: &[Acked], context: &dyn fmt::Display) -> u64 {
    for ack in acked {
        let entry = store
            .get(&ack.key)
            .unwrap_or_else(|e| panic!("{context}: reading {} failed: {e}", ack.key));
        let Some(entry) = entry else {
            panic!(
                "{context}: LOST an acknowledged write: {} (revision {})",
                ack.key, ack.revision
            );
        };
        assert_eq!(
            (entry.value.as_ref(), entry.version),
            (ack.value.as_ref(), ack.revision),
            "{context}: {} does not hold the acknowledged value and version",
            ack.key
        );
    }
    let newest = acked.iter().map(|a| a.revision).max().unwrap_or(0);
    assert!(
        store.revision() >= newest,
        "{context}: the store reopened at revision {}, behind the acknowledged revision {newest}",
        store.revision()
    );
    acked.len() as u64
}

fn apply_write(image: &mut Vec<u8>, offset: usize, data: &[u8]) {
    let end = offset + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[offset..end].copy_from_slice(data);
}

fn read_image(image: &[u8], offset: u64, out: &mut [u8]) -> io::Result<()> {
    let offset = usize::try_from(offset).map_err(io::Error::other)?;
    let Some(bytes) = image.get(offset..offset + out.len()) else {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    };
    out.copy_from_slice(bytes);
    Ok(())
}

fn to_usize(n: u64) -> io::Result<usize> {
    usize::try_from(n).map_err(io::Error::other)
}

// ---------------------------------------------------------------------------
// (a) Power loss
// ---------------------------------------------------------------------------

/// A change the disk has been given but not yet promised to keep.
enum Unsynced {
    Write { offset: usize, data: Vec<u8> },
    SetLen(usize),
}

/// What both files of a machine share: the count of operations, and whether
/// the power is still on.
#[derive(Default)]
struct Machine {
    /// Writes, `set_len`s and syncs that succeeded, on any file.
    ops: u64,
    /// The machine dies once this many operations have succeeded.
    crash_after: Option<u64>,
    dead: bool,
}

impl Machine {
    /// Admits one write, `set_len` or sync, unless the machine is (now) dead.
    fn operate(&mut self) -> io::Result<()> {
        if !self.dead && self.crash_after.is_some_and(|k| self.ops >= k) {
            self.dead = true;
        }
        if self.dead {
            return Err(io::Error::other("simulated power loss: the machine is off"));
        }
        self.ops += 1;
        Ok(())
    }
}

#[derive(Default)]
struct Disk {
    /// What the running program sees: every write and `set_len` lands here.
    volatile: Vec<u8>,
    /// What survives a power loss for certain: `volatile` as of the last sync.
    durable: Vec<u8>,
    /// The changes since the last sync, in order; a power loss keeps none, or
    /// (in the harsher variant) a random subset of their pages.
    unsynced: Vec<Unsynced>,
}

/// One file on a disk that loses whatever was not synced when the power goes.
#[derive(Clone)]
struct CrashBackend {
    machine: Arc<Mutex<Machine>>,
    file: Arc<Mutex<Disk>>,
}

impl fmt::Debug for CrashBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let machine = lock(&self.machine);
        f.debug_struct("CrashBackend")
            .field("len", &self.disk().volatile.len())
            .field("ops", &machine.ops)
            .field("dead", &machine.dead)
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl CrashBackend {
    /// A machine with one file holding `image` durably, which dies after
    /// `crash_after` operations.
    fn new(image: Vec<u8>, crash_after: Option<u64>) -> Self {
        let machine = Machine {
            crash_after,
            ..Machine::default()
        };
        Self::on(Arc::new(Mutex::new(machine)), image)
    }

    /// Another file on the same machine, holding `image` durably.
    fn beside(&self, image: Vec<u8>) -> Self {
        Self::on(self.machine.clone(), image)
    }

    fn on(machine: Arc<Mutex<Machine>>, image: Vec<u8>) -> Self {
        let file = Disk {
            volatile: image.clone(),
            durable: image,
            ..Disk::default()
        };
        Self {
            machine,
            file: Arc::new(Mutex::new(file)),
        }
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        lock(&self.file)
    }

    /// Operations on every file of the machine.
    fn ops(&self) -> u64 {
        lock(&self.machine).ops
    }

    fn is_dead(&self) -> bool {
        lock(&self.machine).dead
    }

    /// Cuts the power: from now on every write and sync fails, on every file
    /// of the machine. Returns the image this file holds when the machine
    /// boots again: the durable image, plus, with `torn`, each page of each
    /// unsynced change with probability 1/2.
    fn power_off(&self, torn: Option<&mut Rng>) -> Vec<u8> {
        lock(&self.machine).dead = true;
        let disk = self.disk();
        let mut image = disk.durable.clone();
        if let Some(rng) = torn {
            for change in &disk.unsynced {
                match change {
                    Unsynced::SetLen(len) => {
                        if rng.coin() {
                            image.resize(*len, 0);
                        }
                    }
                    Unsynced::Write { offset, data } => {
                        let mut at = *offset;
                        let mut rest = data.as_slice();
                        while !rest.is_empty() {
                            let n = (PAGE - at % PAGE).min(rest.len());
                            if rng.coin() {
                                apply_write(&mut image, at, &rest[..n]);
                            }
                            at += n;
                            rest = &rest[n..];
                        }
                    }
                }
            }
        }
        image
    }
}

impl StorageBackend for CrashBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.disk().volatile.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        read_image(&self.disk().volatile, offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = to_usize(len)?;
        lock(&self.machine).operate()?;
        let mut disk = self.disk();
        disk.volatile.resize(len, 0);
        disk.unsynced.push(Unsynced::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        lock(&self.machine).operate()?;
        let mut disk = self.disk();
        let Disk { durable, unsynced, .. } = &mut *disk;
        for change in unsynced.drain(..) {
            match change {
                Unsynced::SetLen(len) => durable.resize(len, 0),
                Unsynced::Write { offset, data } => apply_write(durable, offset, &data),
            }
        }
        debug_assert!(disk.durable == disk.volatile);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let offset = to_usize(offset)?;
        lock(&self.machine).operate()?;
        let mut disk = self.disk();
        apply_write(&mut disk.volatile, offset, data);
        disk.unsynced.push(Unsynced::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }
}

#[derive(Default)]
struct PowerLossFigures {
    crash_points: u64,
    /// Crash points that hit while the store was opening, recovering or committing.
    mid_operation: u64,
    torn: u64,
    opens_cut_short: u64,
    acknowledged: u64,
    unacknowledged: u64,
    checked: u64,
    integrity_checks: u64,
    /// Reboots that found acknowledged writes only in the log, and how many.
    replays: u64,
    replayed: u64,
}

/// One life of a store: opens it over `disk`, writes rounds of concurrent puts
/// of fresh keys until the machine dies or the rounds run out, and records
/// every acknowledged write in `acked`.
async fn live_until_power_loss(
    store: &RedbStore,
    disk: &CrashBackend,
    rng: &mut Rng,
    next_key: &mut u64,
    acked: &mut Vec<Acked>,
    figures: &mut PowerLossFigures,
) {
    // Revisions are never reused after a restart: every write acknowledged in
    // this life must be numbered above every write acknowledged before it.
    let floor = acked.iter().map(|a| a.revision).max().unwrap_or(0);
    let mut revisions = std::collections::BTreeSet::new();
    for _ in 0..ROUNDS {
        let batch = (0..=rng.below(MAX_BATCH))
            .map(|_| {
                *next_key += 1;
                (format!("power/{:08}", *next_key), value_for(*next_key, rng))
            })
            .collect();
        let mut failed = false;
        for (key, value, answer) in write_all(store, batch).await {
            match answer {
                Ok(WriteOutcome::Stored { revision, created, .. }) => {
                    assert!(created, "{key} is a fresh key, yet was not created");
                    assert!(
                        revision > floor && revisions.insert(revision),
                        "revision {revision} reused (floor {floor}, this life {revisions:?})"
                    );
                    figures.acknowledged += 1;
                    acked.push(Acked { key, value, revision });
                }
                Ok(other) => panic!("a put of a fresh key answered {other:?}"),
                Err(StoreError::Unavailable(cause)) => {
                    assert!(disk.is_dead(), "a write failed while the disk was healthy: {cause}");
                    figures.unacknowledged += 1;
                    failed = true;
                }
                Err(other) => panic!("a failed commit must answer Unavailable, not {other:?}"),
            }
        }
        if failed {
            let later = store.write(put("power/after-failure", Bytes::new())).await;
            assert!(
                matches!(later, Err(StoreError::Unavailable(_))),
                "a write after a failed commit must be refused, got {later:?}"
            );
            return;
        }
    }
}

// The crash: the machine loses power at a random moment (after the kth write,
// set_len or sync the backend sees; the open, a recovery, any phase of a group
// commit), and everything the disk had not been told to sync is gone, or, in
// the harsher variant, a random subset of the unsynced pages reached the
// platter. kill -9 cannot show this (the OS page cache survives it). The store
// must then reopen from the durable image without complaint and hold every
// write it acknowledged, with the acknowledged value and version, and its
// revision must not go back. Crashed images are crashed again (a file lives
// through FILE_LIFETIME power losses), so recovery itself is crashed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_never_loses_an_acknowledged_write() {
    count_panics();
    let started = Instant::now();
    let (mut rng, seed) = Rng::from_env();
    let crash_points = std::env::var("KV_CRASH_POINTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CRASH_POINTS);
    let mut figures = PowerLossFigures::default();
    let mut next_key = 0;

    // How many operations one life takes when nothing goes wrong: crash points
    // are drawn a little beyond it, so that some fall when the store is idle.
    let budget = {
        let disk = CrashBackend::new(Vec::new(), None);
        let store = RedbStore::open_with_backend(disk.clone(), disk.beside(Vec::new()), &options())
            .expect("a fresh store opens");
        let mut acked = Vec::new();
        let mut probe = PowerLossFigures::default();
        live_until_power_loss(&store, &disk, &mut rng, &mut next_key, &mut acked, &mut probe).await;
        store.close().await;
        disk.ops() + disk.ops() / 8
    };

    let (mut image, mut log_image) = (Vec::new(), Vec::new());
    let mut acked: Vec<Acked> = Vec::new();
    for point in 0..crash_points {
        if point % FILE_LIFETIME == 0 {
            image.clear();
            log_image.clear();
            acked.clear();
        }
        let crash_after = rng.below(budget + 1);
        let torn = point % 2 == 1;
        let fresh = image.is_empty();
        let disk = CrashBackend::new(std::mem::take(&mut image), Some(crash_after));
        let log = disk.beside(std::mem::take(&mut log_image));
        match RedbStore::open_with_backend(disk.clone(), log.clone(), &options()) {
            Ok(store) => {
                live_until_power_loss(&store, &disk, &mut rng, &mut next_key, &mut acked, &mut figures).await;
                figures.mid_operation += u64::from(disk.is_dead());
                image = disk.power_off(torn.then_some(&mut rng));
                log_image = log.power_off(torn.then_some(&mut rng));
                store.close().await;
            }
            Err(err) => {
                assert!(disk.is_dead(), "the store failed to open on a healthy disk: {err}");
                figures.opens_cut_short += 1;
                figures.mid_operation += 1;
                image = disk.power_off(torn.then_some(&mut rng));
                log_image = log.power_off(torn.then_some(&mut rng));
                if fresh && !image.starts_with(&REDB_MAGIC) {
                    // `RedbStore::open` lets redb initialise a new file under a temporary
                    // name and gives it its name only once initialised: a crash before
                    // that leaves no file (see `a_crash_while_creating_the_file_leaves_none`).
                    image.clear();
                    log_image.clear();
                }
            }
        }
        drop((disk, log));
        figures.crash_points += 1;
        figures.torn += u64::from(torn);

        // The machine boots again: the store must open cleanly and hold every acknowledged write.
        let context = format!(
            "crash point {point} (power off after {crash_after} operations, {} unsynced pages kept, \
             KV_CRASH_SEED={seed})",
            if torn { "some" } else { "no" }
        );
        let rebooted = CrashBackend::new(image.clone(), None);
        let log = rebooted.beside(log_image.clone());
        let store = RedbStore::open_with_backend(rebooted, log, &options())
            .unwrap_or_else(|e| panic!("{context}: the store did not reopen: {e}"));
        figures.replays += u64::from(store.recovered() > 0);
        figures.replayed += store.recovered() as u64;
        figures.checked += assert_all_present(&store, &acked, &context);
        store.close().await;
        drop(store);

        // Now and then, let redb verify every checksum of the recovered file as well.
        if point % 16 == 0 {
            let mut db = Database::builder()
                .create_with_backend(CrashBackend::new(image.clone(), None))
                .unwrap_or_else(|e| panic!("{context}: redb did not reopen the image: {e}"));
            let intact = db
                .check_integrity()
                .unwrap_or_else(|e| panic!("{context}: integrity check failed: {e}"));
            assert!(intact, "{context}: the recovered file needed repair");
            figures.integrity_checks += 1;
        }
    }

    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a writer thread panicked");
    println!(
        "power-loss crash points: {}, acknowledged writes checked: {}, lost: 0",
        figures.crash_points, figures.checked
    );
    println!(
        "  ({} mid-operation, {} of them while opening; {} with a random subset of unsynced pages kept; \
         {} writes acknowledged, {} refused; {} reboots replayed {} writes from the log; \
         {} redb integrity checks; seed {seed}; {:.1?})",
        figures.mid_operation,
        figures.opens_cut_short,
        figures.torn,
        figures.acknowledged,
        figures.unacknowledged,
        figures.replays,
        figures.replayed,
        figures.integrity_checks,
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// (b) Fail-stop
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Faults {
    /// Writes, `set_len`s and syncs attempted, on either file.
    ops: u64,
    /// The operation that fails, once.
    fail_at: Option<u64>,
    injected: u64,
    /// What the failed operation was, and on which file.
    injected_into: Option<&'static str>,
}

impl Faults {
    fn operate(&mut self, what: &'static str) -> io::Result<()> {
        self.ops += 1;
        if self.fail_at == Some(self.ops) {
            self.injected += 1;
            self.injected_into = Some(what);
            return Err(io::Error::other(format!("injected I/O error (EIO) in {what}")));
        }
        Ok(())
    }
}

/// An in-memory file that fails one chosen write, `set_len` or sync (counted
/// over the database and its log together), then works again, as a disk with
/// a transient fault does.
#[derive(Clone)]
struct FaultyBackend {
    faults: Arc<Mutex<Faults>>,
    image: Arc<Mutex<Vec<u8>>>,
    /// "database" or "log", for the figures.
    file: &'static str,
}

impl fmt::Debug for FaultyBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let faults = self.faults();
        f.debug_struct("FaultyBackend")
            .field("file", &self.file)
            .field("len", &lock(&self.image).len())
            .field("ops", &faults.ops)
            .field("fail_at", &faults.fail_at)
            .finish()
    }
}

impl FaultyBackend {
    /// A database file holding `image`, and its log holding `log_image`, on one faulty disk.
    fn pair(image: Vec<u8>, log_image: Vec<u8>) -> (Self, Self) {
        let faults = Arc::new(Mutex::new(Faults::default()));
        let file = |image, file| Self {
            faults: faults.clone(),
            image: Arc::new(Mutex::new(image)),
            file,
        };
        (file(image, "database"), file(log_image, "log"))
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.faults)
    }

    /// Fails the kth operation from now (k >= 1).
    fn arm(&self, k: u64) {
        let mut faults = self.faults();
        faults.fail_at = Some(faults.ops + k);
    }

    fn ops(&self) -> u64 {
        self.faults().ops
    }

    fn injected(&self) -> u64 {
        self.faults().injected
    }

    fn injected_into(&self) -> Option<&'static str> {
        self.faults().injected_into
    }

    /// The bytes as they are: a process restart, not a power loss.
    fn image(&self) -> Vec<u8> {
        lock(&self.image).clone()
    }

    fn operate(&self, what: &'static str) -> io::Result<()> {
        let what = match (self.file, what) {
            ("log", "write") => "log write",
            ("log", "set_len") => "log set_len",
            ("log", _) => "log sync_data",
            (_, "write") => "database write",
            (_, "set_len") => "database set_len",
            _ => "database sync_data",
        };
        self.faults().operate(what)
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.image).len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        read_image(&lock(&self.image), offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = to_usize(len)?;
        self.operate("set_len")?;
        lock(&self.image).resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.operate("sync_data")
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let offset = to_usize(offset)?;
        self.operate("write")?;
        apply_write(&mut lock(&self.image), offset, data);
        Ok(())
    }
}

/// Values large enough that a few commits grow the file (redb starts at 72 KiB),
/// so that the sweep fails `set_len` too.
fn fault_value(n: u64) -> Bytes {
    Bytes::from(format!("value {n:06} ").repeat(2048))
}

#[derive(Debug, Clone, Copy)]
enum Client {
    /// One write at a time through the `Store` trait: each is its own commit,
    /// so the write during which the fault fired is exactly the one whose commit failed.
    Sequential,
    /// Three concurrent writes at a time, grouped into shared commits.
    Concurrent,
    /// One PUT at a time through the HTTP router.
    Http,
}

#[derive(Default)]
struct FailStopFigures {
    runs: u64,
    injected: u64,
    ok_after_failed_commit: u64,
    refused: u64,
    acknowledged: u64,
    /// Faults injected, by operation.
    by_operation: std::collections::BTreeMap<&'static str, u64>,
}

fn router(store: &RedbStore) -> Router {
    let state = AppState {
        store: Arc::new(store.clone()) as Arc<dyn Store>,
        metrics: Arc::new(Metrics::new("kv_server", "Keys stored")),
        max_value_bytes: 1 << 20,
        token: None,
    };
    app(
        state,
        &kv_edge::limits::HttpLimits {
            request_timeout: Duration::from_secs(30),
            ..Default::default()
        },
    )
}

async fn call(app: &Router, method: Method, uri: &str, body: Bytes) -> (StatusCode, Json) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .expect("a valid request");
    let response = app.clone().oneshot(request).await.expect("the router is infallible");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a readable body")
        .to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Json::Null))
}

fn assert_store_unavailable(status: StatusCode, body: &Json, what: &str) {
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {body}");
    assert_eq!(body["error"], "store_unavailable", "{what}: {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("restart"),
        "{what}: the message should say to restart: {body}"
    );
    // The cause is logged, never sent: no OS error text, no engine internals.
    for internal in ["injected", "EIO", "I/O error", "os error", "failed:"] {
        assert!(
            !body.to_string().contains(internal),
            "{what}: the body carries the internal cause ({internal}): {body}"
        );
    }
}

/// Writes through `client` until the armed fault has fired, checking every
/// answer against whether a commit has failed yet. Returns the acknowledged writes.
async fn write_until_fault(
    store: &RedbStore,
    disk: &FaultyBackend,
    client: Client,
    context: &str,
    figures: &mut FailStopFigures,
) -> Vec<Acked> {
    let app = router(store);
    let mut acked = Vec::new();
    let mut n = 0;
    for _ in 0..64 {
        let already_failed = disk.injected() > 0;
        let width = if matches!(client, Client::Concurrent) { 3 } else { 1 };
        let batch: Vec<_> = (0..width)
            .map(|_| {
                n += 1;
                (format!("faulty/{n:04}"), fault_value(n))
            })
            .collect();
        let answers: Vec<(String, Bytes, Result<u64, StoreError>)> = match client {
            Client::Sequential | Client::Concurrent => write_all(store, batch)
                .await
                .into_iter()
                .map(|(key, value, answer)| {
                    let answer = answer.map(|outcome| match outcome {
                        WriteOutcome::Stored { revision, .. } => revision,
                        other => panic!("{context}: a put answered {other:?}"),
                    });
                    (key, value, answer)
                })
                .collect(),
            Client::Http => {
                let (key, value) = batch.into_iter().next().expect("one write");
                let (status, body) = call(&app, Method::PUT, &format!("/kv/{key}"), value.clone()).await;
                let answer = if status.is_success() {
                    Ok(body["version"].as_u64().expect("a PUT answers its version"))
                } else {
                    assert_store_unavailable(status, &body, context);
                    Err(StoreError::Unavailable(body["message"].to_string()))
                };
                vec![(key, value, answer)]
            }
        };
        let failed_now = disk.injected() > 0;
        let mut refused = 0;
        for (key, value, answer) in answers {
            match answer {
                Ok(revision) => {
                    // Acknowledged after a commit had failed, or (one write per commit) the
                    // very write whose commit the fault hit.
                    if already_failed || (failed_now && !matches!(client, Client::Concurrent)) {
                        figures.ok_after_failed_commit += 1;
                    }
                    figures.acknowledged += 1;
                    acked.push(Acked { key, value, revision });
                }
                Err(StoreError::Unavailable(_)) => {
                    assert!(failed_now, "{context}: {key} was refused before any fault");
                    refused += 1;
                    figures.refused += 1;
                }
                Err(other) => panic!("{context}: {key}: a failed commit must answer Unavailable, not {other:?}"),
            }
        }
        if failed_now && !already_failed {
            assert!(
                refused > 0,
                "{context}: the fault fired, yet every write was acknowledged"
            );
        }
        if already_failed {
            return acked;
        }
    }
    panic!("{context}: the armed fault never fired");
}

// The crash: the disk fails one write or one fsync (EIO, a full disk, a
// flaky controller) in the middle of a commit, then works again. The write
// whose commit failed must not be acknowledged, and neither may any later
// write: after a failed fsync the kernel may already have dropped the dirty
// pages and marked them clean, so a retried fsync can succeed over lost data
// (PostgreSQL's "fsyncgate"). The store must fail-stop: every later write is
// refused, `healthy()` says so, the HTTP API answers 503 `store_unavailable`
// asking for a restart (and /healthz 503), nothing panics, and after a
// restart every acknowledged write is there and writes work again. The fault
// is swept over every write, set_len and sync of a run, with three kinds of
// client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_or_sync_is_fail_stop() {
    count_panics();
    let started = Instant::now();
    let mut figures = FailStopFigures::default();

    // How many operations a few sequential commits take: the fault is swept over all of them.
    let budget = {
        let (disk, log) = FaultyBackend::pair(Vec::new(), Vec::new());
        let store = RedbStore::open_with_backend(disk.clone(), log, &options()).expect("a fresh store opens");
        let before = disk.ops();
        for n in 0..4 {
            store
                .write(put(&format!("probe/{n}"), fault_value(n)))
                .await
                .expect("a healthy write");
        }
        store.close().await;
        disk.ops() - before
    };
    assert!(budget > 0, "commits did no I/O: are they durable?");

    for k in 1..=budget {
        for client in [Client::Sequential, Client::Concurrent, Client::Http] {
            let context = format!("fault at operation {k} after open, {client:?} client");
            let (disk, log) = FaultyBackend::pair(Vec::new(), Vec::new());
            let store =
                RedbStore::open_with_backend(disk.clone(), log.clone(), &options()).expect("a fresh store opens");
            disk.arm(k);
            let acked = write_until_fault(&store, &disk, client, &context, &mut figures).await;
            figures.runs += 1;
            figures.injected += disk.injected();
            if let Some(what) = disk.injected_into() {
                *figures.by_operation.entry(what).or_default() += 1;
            }

            // Fail-stop, although the disk works again.
            assert!(
                matches!(store.healthy(), Err(StoreError::Unavailable(_))),
                "{context}: healthy() must report the failure"
            );
            for answer in write_all(&store, vec![("faulty/later".into(), Bytes::new()); 3]).await {
                match answer.2 {
                    Err(StoreError::Unavailable(message)) => {
                        assert!(message.contains("restart"), "{context}: {message}");
                        figures.refused += 1;
                    }
                    Ok(outcome) => {
                        figures.ok_after_failed_commit += 1;
                        eprintln!("{context}: a write after a failed commit answered {outcome:?}");
                    }
                    Err(other) => panic!("{context}: {other:?}"),
                }
            }
            let app = router(&store);
            let (status, body) = call(&app, Method::PUT, "/kv/faulty/http-later", Bytes::from_static(b"x")).await;
            if status.is_success() {
                figures.ok_after_failed_commit += 1;
            } else {
                assert_store_unavailable(status, &body, &context);
            }
            let (status, body) = call(&app, Method::GET, "/healthz", Bytes::new()).await;
            assert_store_unavailable(status, &body, &format!("{context}, /healthz"));
            drop(app);
            store.close().await;
            drop(store);

            // The restart: redb recovers the file, the log is replayed, every
            // acknowledged write is there, writes work.
            let (disk, log) = FaultyBackend::pair(disk.image(), log.image());
            let store = RedbStore::open_with_backend(disk, log, &options())
                .unwrap_or_else(|e| panic!("{context}: the store did not reopen: {e}"));
            assert_all_present(&store, &acked, &context);
            store.healthy().expect("a restarted store is healthy");
            let newest = acked.iter().map(|a| a.revision).max().unwrap_or(0);
            match store.write(put("faulty/after-restart", Bytes::new())).await {
                Ok(WriteOutcome::Stored { revision, .. }) => assert!(revision > newest, "{context}: revision reused"),
                other => panic!("{context}: a write after the restart answered {other:?}"),
            }
            store.close().await;
        }
    }

    println!(
        "fail-stop: injected faults {}, 2xx after a failed commit: {}",
        figures.injected, figures.ok_after_failed_commit
    );
    println!(
        "  ({} runs over {budget} operations x 3 clients; faults by operation {:?}; {} writes acknowledged \
         before the fault, {} refused at or after it; {:.1?})",
        figures.runs,
        figures.by_operation,
        figures.acknowledged,
        figures.refused,
        started.elapsed()
    );
    assert_eq!(
        figures.ok_after_failed_commit, 0,
        "a write was acknowledged after a failed commit"
    );
    assert_eq!(figures.injected, figures.runs, "every run injects exactly one fault");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a writer thread panicked");
}

// The crash: the power goes while redb initialises a brand-new file, on the
// server's very first start. redb writes its magic number last, so the disk is
// left with a file that has none, and redb refuses such a file ever after
// ("Not a redb database"): the server could never start again, although it
// never held anything. `RedbStore::open` therefore creates the file under a
// temporary name and links it into place only once redb has synced it; this
// test shows the hazard on a simulated disk, then that a data directory with a
// stray temporary file from such a crash opens cleanly.
#[tokio::test]
async fn a_crash_while_creating_the_file_leaves_none() {
    count_panics();
    let mut refused = 0;
    for crash_after in 0.. {
        let disk = CrashBackend::new(Vec::new(), Some(crash_after));
        if Database::builder().create_with_backend(disk.clone()).is_ok() {
            break;
        }
        let image = disk.power_off(None);
        if !image.is_empty()
            && Database::builder()
                .create_with_backend(CrashBackend::new(image, None))
                .is_err()
        {
            refused += 1;
        }
    }
    assert!(
        refused > 0,
        "redb now recovers a file cut short while it was created; the temporary name may go"
    );

    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("kv.redb.new-1"), vec![0; 8192]).expect("a stray file");
    let store = RedbStore::open(dir.path(), &options()).expect("the store opens next to a stray temporary file");
    let answer = store.write(put("created", Bytes::from_static(b"1"))).await;
    assert!(
        matches!(answer, Ok(WriteOutcome::Stored { revision: 1, .. })),
        "{answer:?}"
    );
    store.close().await;
    drop(store);
    let store = RedbStore::open(dir.path(), &options()).expect("the store reopens");
    assert_eq!(store.get("created").expect("a read").map(|e| e.version), Some(1));
    let own_temp = format!("kv.redb.new-{}", std::process::id());
    assert!(!dir.path().join(own_temp).exists(), "the temporary file is removed");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a writer thread panicked");
}
