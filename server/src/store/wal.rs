//! The write-ahead log: how a group of writes becomes durable with one
//! `fdatasync` of a sequential append, instead of a durable redb commit.
//!
//! A durable redb commit (two-phase, as untrusted input wants) rewrites the
//! B-tree pages a group touched and syncs twice: about 2.5 ms on this
//! machine's disk. Appending the group's changes here and syncing once takes
//! about 0.3 ms. So the writer thread logs each group here, then commits it to
//! redb without syncing (visible to readers, not yet durable in the file), and
//! now and then makes redb durable in one commit (a *checkpoint*), after which
//! the log starts again from its beginning. Recovery replays what the log holds
//! beyond redb's last durable revision.
//!
//! # Format
//! A 4 KiB header: [`MAGIC`] and a random 32-byte key. Then records, each one
//! group: `magic: u32 | payload length: u32 | tag: [u8; 16] | payload`, where
//! the payload is `count: u32` changes, each `kind: u8` (1 put, 2 delete,
//! 3 put with a deadline, 4 delete of an expired key), `revision: u64`, `key
//! length: u16`, key, for kind 3 `expires_at: u64` (unix ms), and for a put
//! `content-type length: u8`, content type, `value length: u32`, value.
//! Integers are little endian. Kinds 3 and 4 came with expiry: a log written
//! before holds only 1 and 2 and replays as it always did (a log with kinds 3
//! or 4 is not for an older kv-server, whose replay would stop at them). The tag is HMAC-SHA256 (truncated to 16 bytes) under the header's
//! key over the length and the payload.
//!
//! # Why a keyed tag
//! A record's bytes are mostly what clients sent. With a plain checksum, a
//! client could craft values such that a torn write (part new record, part
//! older bytes) checks out, and recovery would apply a write nobody made:
//! redb's reason to recommend two-phase commit for untrusted input. The key
//! never leaves the data directory, so no client can forge a tag.
//!
//! # Which records count
//! Changes carry store-wide revisions, and a log's records hold consecutive
//! revisions. After a checkpoint the log is overwritten from the start, so
//! older records may lie beyond the newest ones: replay follows the chain of
//! valid records whose revisions continue each other and stops at the first
//! that does not (a torn tail, an older cycle's record, zeroes). Every record
//! of an older cycle is at or below the revision redb made durable when that
//! cycle ended, so replay skips it; the writes to apply are the ones above
//! redb's durable revision.

use std::io;

use bytes::Bytes;
use redb::StorageBackend;
use ring::hmac;

/// The first bytes of a kv write-ahead log, format 1.
pub const MAGIC: [u8; 8] = *b"kv-wal\x00\x01";
/// The file's name inside `--data-dir`.
pub const FILE_NAME: &str = "kv.wal";

const HEADER_BYTES: u64 = 4096;
/// The log's file grows by this much at a time.
const GROWTH: u64 = 1 << 20;
const KEY_BYTES: usize = 32;
const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"kvG1");
const TAG_BYTES: usize = 16;
/// magic, payload length, tag.
const RECORD_HEAD: usize = 4 + 4 + TAG_BYTES;
/// The largest record payload replay reads; anything larger is not a record.
/// [`Wal::append`] refuses to write one, so that no acknowledged write is in
/// a record replay would drop.
pub const MAX_PAYLOAD: usize = 1 << 30;
/// A change's bytes in a payload besides its key: kind, revision, key length.
const CHANGE_OVERHEAD: usize = 1 + 8 + 2;
/// A put's bytes besides those and its content type and value: their lengths.
const PUT_OVERHEAD: usize = 1 + 4;
/// A deadline's bytes, in a put that has one.
const DEADLINE_BYTES: usize = 8;
/// The largest value one record can hold, whatever its key (at most 1024
/// bytes) and content type (at most 255): 1023 MiB, a round figure under
/// [`MAX_PAYLOAD`]. kv-server refuses a `--max-value-bytes` above it.
pub const MAX_VALUE_BYTES: usize = MAX_PAYLOAD - (1 << 20);
const _: () =
    assert!(MAX_VALUE_BYTES + 4 + CHANGE_OVERHEAD + PUT_OVERHEAD + DEADLINE_BYTES + 1024 + 255 <= MAX_PAYLOAD);

const PUT: u8 = 1;
const DELETE: u8 = 2;
const PUT_EXPIRING: u8 = 3;
const EXPIRED: u8 = 4;

/// One change a group made, as it is logged and replayed: the key's state
/// after the write, not the request (preconditions were already decided).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put {
        key: String,
        revision: u64,
        content_type: String,
        value: Bytes,
        /// The key's deadline, unix ms.
        expires_at: Option<u64>,
    },
    Delete {
        key: String,
        revision: u64,
        /// Removed because its deadline passed (the sweep), not by a client:
        /// what a change feed will report as `"reason":"expired"`.
        expired: bool,
    },
}

impl Change {
    pub fn revision(&self) -> u64 {
        match self {
            Self::Put { revision, .. } | Self::Delete { revision, .. } => *revision,
        }
    }
}

/// Why a log could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(
        "its header is damaged (it is not a kv log, or the disk corrupted it); moving it aside starts \
         from the database alone, losing the writes acknowledged since its last checkpoint"
    )]
    BadHeader,
    #[error(
        "it starts at revision {first}, but the database holds writes only up to revision {durable}: \
         the writes in between are missing (was the database file replaced?); restore the database \
         file that goes with this log"
    )]
    Gap { first: u64, durable: u64 },
}

/// Why an append was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The group's record would be larger than replay reads: nothing was
    /// written, and the log is as it was.
    #[error("a record of {payload} bytes is larger than the log's limit of {MAX_PAYLOAD} bytes")]
    TooLarge { payload: usize },
    /// Writing or syncing failed: the log is unusable (the caller fail-stops).
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The most bytes a put takes in a record's payload: with a deadline, which
/// a put learns only once the group reads the key (`keepttl`).
pub fn put_bytes(key: &str, content_type: &str, value_len: usize) -> usize {
    CHANGE_OVERHEAD + PUT_OVERHEAD + DEADLINE_BYTES + key.len() + content_type.len().min(255) + value_len
}

/// The bytes a delete takes in a record's payload.
pub fn delete_bytes(key: &str) -> usize {
    CHANGE_OVERHEAD + key.len()
}

/// The bytes one change takes in a record's payload.
fn change_bytes(change: &Change) -> usize {
    match change {
        Change::Put {
            key,
            content_type,
            value,
            expires_at,
            ..
        } => put_bytes(key, content_type, value.len()) - if expires_at.is_some() { 0 } else { DEADLINE_BYTES },
        Change::Delete { key, .. } => delete_bytes(key),
    }
}

/// The payload of a record holding `changes`.
fn payload_bytes(changes: &[Change]) -> usize {
    4 + changes.iter().map(change_bytes).sum::<usize>()
}

/// An open log over any storage (a file in production, a simulated disk in
/// the crash tests), written by the store's writer thread only.
pub struct Wal<B: StorageBackend> {
    storage: B,
    key: hmac::Key,
    /// Where the next record goes.
    end: u64,
    /// The storage's length.
    len: u64,
    /// Record bytes, reused from group to group.
    buf: Vec<u8>,
}

impl<B: StorageBackend> Wal<B> {
    /// Opens the log in `storage`, creating its header if there is none yet.
    ///
    /// A log no longer than its header was never written to (its header is
    /// synced before the first record), so it is (re)initialised; a longer one
    /// with a bad header is refused rather than silently dropped.
    pub fn open(storage: B) -> Result<Self, WalError> {
        let len = storage.len()?;
        let mut header = [0u8; MAGIC.len() + KEY_BYTES];
        let valid = len >= HEADER_BYTES && {
            storage.read(0, &mut header)?;
            header[..MAGIC.len()] == MAGIC
        };
        if !valid {
            if len > HEADER_BYTES {
                return Err(WalError::BadHeader);
            }
            header[..MAGIC.len()].copy_from_slice(&MAGIC);
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut header[MAGIC.len()..])
                .map_err(|_| io::Error::other("the system's random number generator failed"))?;
            let mut block = vec![0u8; HEADER_BYTES as usize];
            block[..header.len()].copy_from_slice(&header);
            if len < HEADER_BYTES {
                storage.set_len(HEADER_BYTES)?;
            }
            storage.write(0, &block)?;
            storage.sync_data()?;
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &header[MAGIC.len()..]),
            len: storage.len()?,
            storage,
            end: HEADER_BYTES,
            buf: Vec::new(),
        })
    }

    /// The changes above `durable` that the log holds, in revision order,
    /// ending where the chain of valid records ends. Call once, before the
    /// first [`Self::append`]; appends then start at the beginning again.
    pub fn replay(&mut self, durable: u64) -> Result<Vec<Change>, WalError> {
        let len = self.storage.len()?;
        let mut offset = HEADER_BYTES;
        let mut next: Option<u64> = None;
        let mut changes = Vec::new();
        while let Some((group, size)) = self.read_record(offset, len)? {
            let first = group[0].revision();
            if next.is_some_and(|next| first != next) {
                break;
            }
            if next.is_none() && first > durable + 1 {
                return Err(WalError::Gap { first, durable });
            }
            next = Some(group[group.len() - 1].revision() + 1);
            changes.extend(group.into_iter().filter(|change| change.revision() > durable));
            offset += size;
        }
        self.end = HEADER_BYTES;
        Ok(changes)
    }

    /// Makes sure the file holds `bytes` of records' room as written blocks
    /// (zeroes), syncing once. An append into blocks a file already has changes
    /// no metadata, so its fdatasync needs no journal commit: growing the file
    /// instead made some syncs wait 25-300 ms for the filesystem's journal (and
    /// the data of other files it had to flush first), a PUT p99 of 200 ms. The
    /// same reason etcd preallocates its 64 MB WAL segments and PostgreSQL
    /// zero-fills its own.
    pub fn preallocate(&mut self, bytes: u64) -> io::Result<()> {
        let target = (HEADER_BYTES + bytes).next_multiple_of(4096);
        if self.len >= target {
            return Ok(());
        }
        self.storage.set_len(target)?;
        let zeroes = vec![0u8; GROWTH as usize];
        let mut at = self.len;
        while at < target {
            let n = (target - at).min(GROWTH);
            self.storage.write(at, &zeroes[..n as usize])?;
            at += n;
        }
        self.storage.sync_data()?;
        self.len = target;
        Ok(())
    }

    /// Appends one group's changes and syncs: when this returns `Ok`, they
    /// survive a power loss. A group whose record would be over
    /// [`MAX_PAYLOAD`] is refused before anything is written
    /// ([`AppendError::TooLarge`]): replay would drop it. Any other error
    /// leaves the log unusable (the caller fail-stops): the record may be
    /// partly on disk, and a retried sync could report success for pages the
    /// kernel already dropped.
    pub fn append(&mut self, changes: &[Change]) -> Result<(), AppendError> {
        let payload = payload_bytes(changes);
        if payload > MAX_PAYLOAD {
            return Err(AppendError::TooLarge { payload });
        }
        encode(&self.key, changes, &mut self.buf);
        debug_assert_eq!(self.buf.len(), RECORD_HEAD + payload);
        let end = self.end + self.buf.len() as u64;
        // Beyond the preallocated room (a group larger than the margin):
        // storage grows only by `set_len` (the backend contract redb's file
        // follows too), a megabyte at a time.
        if end > self.len {
            self.len = end.next_multiple_of(GROWTH);
            self.storage.set_len(self.len)?;
        }
        self.storage.write(self.end, &self.buf)?;
        self.storage.sync_data()?;
        self.end = end;
        if self.buf.capacity() > 4 << 20 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Bytes of records since the last rewind.
    pub fn bytes(&self) -> u64 {
        self.end - HEADER_BYTES
    }

    /// Starts the log over, once everything in it is durable elsewhere (redb
    /// has checkpointed). Nothing is written: the next record overwrites the
    /// first, and replay tells old records from new by their revisions.
    pub fn rewind(&mut self) {
        self.end = HEADER_BYTES;
    }

    /// The record at `offset`, and its size, if a valid one is there.
    fn read_record(&self, offset: u64, len: u64) -> io::Result<Option<(Vec<Change>, u64)>> {
        if offset + RECORD_HEAD as u64 > len {
            return Ok(None);
        }
        let mut head = [0u8; RECORD_HEAD];
        self.storage.read(offset, &mut head)?;
        if u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) != RECORD_MAGIC {
            return Ok(None);
        }
        let payload_len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) as usize;
        let size = (RECORD_HEAD + payload_len) as u64;
        if payload_len > MAX_PAYLOAD || offset + size > len {
            return Ok(None);
        }
        let mut record = vec![0u8; RECORD_HEAD + payload_len];
        self.storage.read(offset, &mut record)?;
        // Truncated tags, so ring's `verify` (whole tags only) does not apply;
        // nobody learns anything from a recovery's timing, so `==` will do.
        if sign(&self.key, &record[4..8], &record[RECORD_HEAD..])[..] != record[8..RECORD_HEAD] {
            return Ok(None);
        }
        Ok(decode(&record[RECORD_HEAD..]).map(|changes| (changes, size)))
    }
}

fn sign(key: &hmac::Key, length: &[u8], payload: &[u8]) -> [u8; TAG_BYTES] {
    let mut context = hmac::Context::with_key(key);
    context.update(length);
    context.update(payload);
    let mut tag = [0u8; TAG_BYTES];
    tag.copy_from_slice(&context.sign().as_ref()[..TAG_BYTES]);
    tag
}

/// Writes one record for `changes` into `out` (cleared first).
fn encode(key: &hmac::Key, changes: &[Change], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.extend_from_slice(&[0u8; 4 + TAG_BYTES]);
    out.extend_from_slice(&(changes.len() as u32).to_le_bytes());
    for change in changes {
        match change {
            Change::Put {
                key,
                revision,
                content_type,
                value,
                expires_at,
            } => {
                out.push(if expires_at.is_some() { PUT_EXPIRING } else { PUT });
                out.extend_from_slice(&revision.to_le_bytes());
                put_key(out, key);
                if let Some(at) = expires_at {
                    out.extend_from_slice(&at.to_le_bytes());
                }
                let content_type = &content_type.as_bytes()[..content_type.len().min(255)];
                out.push(content_type.len() as u8);
                out.extend_from_slice(content_type);
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
            Change::Delete { key, revision, expired } => {
                out.push(if *expired { EXPIRED } else { DELETE });
                out.extend_from_slice(&revision.to_le_bytes());
                put_key(out, key);
            }
        }
    }
    let payload_len = (out.len() - RECORD_HEAD) as u32;
    out[4..8].copy_from_slice(&payload_len.to_le_bytes());
    let tag = sign(key, &out[4..8], &out[RECORD_HEAD..]);
    out[8..RECORD_HEAD].copy_from_slice(&tag);
}

fn put_key(out: &mut Vec<u8>, key: &str) {
    // Keys are at most 1024 bytes (key::MAX_KEY_BYTES).
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
}

/// Reads a payload back; `None` if it is not exactly a well-formed, non-empty
/// group of consecutive revisions.
fn decode(payload: &[u8]) -> Option<Vec<Change>> {
    let mut cursor = Cursor(payload);
    let count = cursor.u32()? as usize;
    if count == 0 {
        return None;
    }
    let mut changes = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let kind = cursor.take(1)?[0];
        let revision = cursor.u64()?;
        let key_len = usize::from(cursor.u16()?);
        let key = String::from_utf8(cursor.take(key_len)?.to_vec()).ok()?;
        let change = match kind {
            PUT | PUT_EXPIRING => {
                let expires_at = if kind == PUT_EXPIRING {
                    Some(cursor.u64()?)
                } else {
                    None
                };
                let type_len = usize::from(cursor.take(1)?[0]);
                // Lossy: the HTTP layer admits only printable ASCII, and a record
                // whose tag checks out must never be dropped over its content type.
                let content_type = String::from_utf8_lossy(cursor.take(type_len)?).into_owned();
                let value_len = cursor.u32()? as usize;
                let value = Bytes::copy_from_slice(cursor.take(value_len)?);
                Change::Put {
                    key,
                    revision,
                    content_type,
                    value,
                    expires_at,
                }
            }
            DELETE | EXPIRED => Change::Delete {
                key,
                revision,
                expired: kind == EXPIRED,
            },
            _ => return None,
        };
        if changes
            .last()
            .is_some_and(|last: &Change| last.revision() + 1 != revision)
        {
            return None;
        }
        changes.push(change);
    }
    cursor.0.is_empty().then_some(changes)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use redb::backends::InMemoryBackend;

    use super::*;

    fn put(revision: u64, value: &str) -> Change {
        Change::Put {
            key: format!("key/{revision}"),
            revision,
            content_type: "text/plain".into(),
            value: Bytes::from(value.to_owned()),
            expires_at: None,
        }
    }

    fn group(revisions: std::ops::RangeInclusive<u64>) -> Vec<Change> {
        revisions.map(|r| put(r, &"v".repeat(r as usize % 7))).collect()
    }

    /// A log with the groups appended, and its storage for a reopen.
    fn log_with(groups: &[Vec<Change>]) -> (Wal<InMemoryBackend>, Vec<u8>) {
        let mut wal = Wal::open(InMemoryBackend::new()).unwrap();
        for g in groups {
            wal.append(g).unwrap();
        }
        // Beyond the last record the file holds zeroes only.
        let mut image = image(&wal.storage);
        image.truncate(wal.end as usize);
        (wal, image)
    }

    fn image(storage: &InMemoryBackend) -> Vec<u8> {
        let mut bytes = vec![0; storage.len().unwrap() as usize];
        storage.read(0, &mut bytes).unwrap();
        bytes
    }

    fn backend(bytes: &[u8]) -> InMemoryBackend {
        let storage = InMemoryBackend::new();
        storage.set_len(bytes.len() as u64).unwrap();
        storage.write(0, bytes).unwrap();
        storage
    }

    fn reopen(bytes: &[u8]) -> Wal<InMemoryBackend> {
        Wal::open(backend(bytes)).unwrap()
    }

    fn revisions(changes: &[Change]) -> Vec<u64> {
        changes.iter().map(Change::revision).collect()
    }

    #[test]
    fn replay_returns_what_is_above_the_durable_revision() {
        let (_, bytes) = log_with(&[
            group(1..=3),
            vec![Change::Delete {
                key: "key/2".into(),
                revision: 4,
                expired: false,
            }],
            group(5..=5),
        ]);
        let changes = reopen(&bytes).replay(0).unwrap();
        assert_eq!(revisions(&changes), [1, 2, 3, 4, 5]);
        assert_eq!(changes[1], put(2, "vv"));
        assert_eq!(revisions(&reopen(&bytes).replay(3).unwrap()), [4, 5]);
        assert!(reopen(&bytes).replay(5).unwrap().is_empty());
    }

    #[test]
    fn deadlines_and_expiry_deletes_are_logged() {
        let expiring = Change::Put {
            key: "session".into(),
            revision: 1,
            content_type: "text/plain".into(),
            value: Bytes::from_static(b"v"),
            expires_at: Some(1_700_000_000_123),
        };
        let swept = Change::Delete {
            key: "session".into(),
            revision: 2,
            expired: true,
        };
        let (_, bytes) = log_with(&[vec![expiring.clone(), swept.clone()], group(3..=3)]);
        assert_eq!(reopen(&bytes).replay(0).unwrap(), [expiring, swept, put(3, "vvv")]);
    }

    #[test]
    fn a_log_from_before_expiry_replays() {
        // One record as the previous version wrote it: a put (kind 1) of
        // "k" = "v" at revision 1, and a delete (kind 2) of "k" at revision 2.
        let mut payload = 2u32.to_le_bytes().to_vec();
        payload.push(1);
        payload.extend_from_slice(&1u64.to_le_bytes());
        payload.extend_from_slice(&1u16.to_le_bytes());
        payload.extend_from_slice(b"k");
        payload.push(10);
        payload.extend_from_slice(b"text/plain");
        payload.extend_from_slice(&1u32.to_le_bytes());
        payload.extend_from_slice(b"v");
        payload.push(2);
        payload.extend_from_slice(&2u64.to_le_bytes());
        payload.extend_from_slice(&1u16.to_le_bytes());
        payload.extend_from_slice(b"k");
        let (wal, mut bytes) = log_with(&[]);
        let mut record = RECORD_MAGIC.to_le_bytes().to_vec();
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&sign(&wal.key, &record[4..8], &payload));
        record.extend_from_slice(&payload);
        bytes.extend_from_slice(&record);
        let changes = reopen(&bytes).replay(0).unwrap();
        assert_eq!(
            changes,
            [
                Change::Put {
                    key: "k".into(),
                    revision: 1,
                    content_type: "text/plain".into(),
                    value: Bytes::from_static(b"v"),
                    expires_at: None,
                },
                Change::Delete {
                    key: "k".into(),
                    revision: 2,
                    expired: false,
                }
            ]
        );
    }

    #[test]
    fn a_torn_last_record_ends_the_replay() {
        let (first, _) = log_with(&[group(1..=3)]);
        let second = first.end as usize;
        let (_, bytes) = log_with(&[group(1..=3), group(4..=6)]);
        for cut in (HEADER_BYTES as usize..bytes.len()).step_by(5) {
            let expected: &[u64] = if cut < second { &[] } else { &[1, 2, 3] };
            assert_eq!(
                revisions(&reopen(&bytes[..cut]).replay(0).unwrap()),
                expected,
                "cut at {cut}"
            );
        }
        // A flipped bit anywhere in the second record drops it, not the first.
        for at in (second..bytes.len()).step_by(3) {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            assert_eq!(
                revisions(&reopen(&damaged).replay(0).unwrap()),
                [1, 2, 3],
                "bit flipped at {at}"
            );
        }
    }

    #[test]
    fn after_a_rewind_older_records_beyond_the_new_ones_are_not_replayed() {
        let (mut wal, _) = log_with(&[group(1..=2), group(3..=4), group(5..=9)]);
        // A checkpoint made 1..=9 durable; the log starts over with a short group.
        wal.rewind();
        wal.append(&group(10..=10)).unwrap();
        let bytes = image(&wal.storage);
        assert_eq!(revisions(&reopen(&bytes).replay(9).unwrap()), [10]);
        // Crashed right after the checkpoint, before anything new: nothing to replay.
        let (mut wal, _) = log_with(&[group(1..=2), group(3..=4)]);
        wal.rewind();
        assert!(reopen(&image(&wal.storage)).replay(4).unwrap().is_empty());
    }

    #[test]
    fn a_record_tagged_with_another_key_is_not_trusted() {
        let (_, bytes) = log_with(&[group(1..=3)]);
        let mut forged = Vec::new();
        encode(
            &hmac::Key::new(hmac::HMAC_SHA256, &[7; KEY_BYTES]),
            &group(4..=4),
            &mut forged,
        );
        let mut bytes = bytes;
        bytes.extend_from_slice(&forged);
        assert_eq!(revisions(&reopen(&bytes).replay(0).unwrap()), [1, 2, 3]);
    }

    #[test]
    fn a_log_that_starts_above_the_database_is_refused() {
        let (_, bytes) = log_with(&[group(5..=6)]);
        assert!(matches!(
            reopen(&bytes).replay(3),
            Err(WalError::Gap { first: 5, durable: 3 })
        ));
        assert_eq!(revisions(&reopen(&bytes).replay(4).unwrap()), [5, 6]);
    }

    #[test]
    fn an_append_replay_would_drop_is_refused_before_anything_is_written() {
        let (mut wal, before) = log_with(&[group(1..=2)]);
        // calloc'd and never touched: the refusal must come before encoding.
        let huge = |revision, len| Change::Put {
            key: format!("big/{revision}"),
            revision,
            content_type: "application/octet-stream".into(),
            value: Bytes::from(vec![0u8; len]),
            expires_at: None,
        };
        // One value over the limit, and a group of two that is over it together.
        let groups = [
            vec![huge(3, MAX_PAYLOAD)],
            vec![huge(3, MAX_PAYLOAD / 2), huge(4, MAX_PAYLOAD / 2)],
        ];
        for changes in &groups {
            match wal.append(changes) {
                Err(AppendError::TooLarge { payload }) => {
                    eprintln!("append refused: a record of {payload} bytes, limit {MAX_PAYLOAD}");
                    assert!(payload > MAX_PAYLOAD);
                }
                other => panic!("an oversize record must be refused, not {other:?}"),
            }
            let mut after = image(&wal.storage);
            after.truncate(wal.end as usize);
            assert_eq!(after, before, "nothing was written");
        }
        // The largest value a record holds, with the longest key and content
        // type, is accepted: its size is computed exactly as it is encoded.
        let largest = vec![Change::Put {
            key: "k".repeat(1024),
            revision: 3,
            content_type: "t".repeat(255),
            value: Bytes::from(vec![0u8; MAX_VALUE_BYTES]),
            expires_at: Some(u64::MAX),
        }];
        assert!(payload_bytes(&largest) <= MAX_PAYLOAD);
        wal.append(&group(3..=3)).unwrap();
        assert_eq!(revisions(&reopen(&image(&wal.storage)).replay(0).unwrap()), [1, 2, 3]);
    }

    #[test]
    fn a_damaged_header_is_refused_unless_the_log_was_never_written() {
        let (_, mut bytes) = log_with(&[group(1..=1)]);
        bytes[0] ^= 1;
        assert!(matches!(Wal::open(backend(&bytes)), Err(WalError::BadHeader)));
        // Cut short while its header was being written (nothing was ever logged): made anew.
        assert!(Wal::open(backend(&bytes[..100])).unwrap().replay(0).unwrap().is_empty());
    }
}
