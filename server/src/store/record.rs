//! How a pair is laid out in the database: the tables, and the record codec.

use ::redb::TableDefinition;
use bytes::Bytes;
use kv_api::dump::Entry;

use super::wal::Change;

/// Keys to records (see [`encode`]).
pub const DATA: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// The store's own numbers.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// In [`META`]: the revision the database holds durably.
pub const REVISION: &str = "revision";
/// In [`META`]: the revision of the last checkpoint.
pub const CHECKPOINT: &str = "checkpoint";
/// The deadlines, in order: `(expires_at in unix ms, key)` for every record
/// that has one. The sweep reads it from the start; [`apply_change`] keeps it
/// in step with [`DATA`]. A database from before expiry has no such table;
/// the open creates it empty, which is exactly right for records without deadlines.
pub const DEADLINES: TableDefinition<(u64, &str), ()> = TableDefinition::new("deadlines");

/// Set in a record's version word when an 8-byte deadline follows it.
/// Revisions never come near 2^63, so no record written before expiry has it.
const HAS_DEADLINE: u64 = 1 << 63;

/// Puts one change into the data table (and the deadline index): a live
/// write, or one replayed from the log.
pub fn apply_change(
    data: &mut ::redb::Table<&str, &[u8]>,
    deadlines: &mut ::redb::Table<(u64, &str), ()>,
    change: &Change,
) -> Result<(), ::redb::StorageError> {
    let (key, old) = match change {
        Change::Put {
            key,
            revision,
            content_type,
            value,
            expires_at,
        } => {
            let record = encode(*revision, content_type, value, *expires_at);
            if let Some(at) = expires_at {
                deadlines.insert((*at, key.as_str()), ())?;
            }
            let old = data
                .insert(key.as_str(), record.as_slice())?
                .map(|old| expires_at_of(old.value()));
            (key, old.flatten().filter(|old| Some(*old) != *expires_at))
        }
        Change::Delete { key, .. } => {
            let old = data.remove(key.as_str())?.map(|old| expires_at_of(old.value()));
            (key, old.flatten())
        }
    };
    if let Some(old) = old {
        deadlines.remove((old, key.as_str()))?;
    }
    Ok(())
}

/// A record is `version: u64 LE | content-type length: u8 | content type |
/// value`, the format from before expiry. A record with a deadline sets
/// [`HAS_DEADLINE`] in its version word, and `expires_at: u64 LE` (unix ms)
/// follows the word: a new kind of record that an old database never holds.
pub fn encode(version: u64, content_type: &str, value: &[u8], expires_at: Option<u64>) -> Vec<u8> {
    let content_type = &content_type.as_bytes()[..content_type.len().min(255)];
    let mut record = Vec::with_capacity(17 + content_type.len() + value.len());
    match expires_at {
        Some(at) => {
            record.extend_from_slice(&(version | HAS_DEADLINE).to_le_bytes());
            record.extend_from_slice(&at.to_le_bytes());
        }
        None => record.extend_from_slice(&version.to_le_bytes()),
    }
    record.push(content_type.len() as u8);
    record.extend_from_slice(content_type);
    record.extend_from_slice(value);
    record
}

fn word(record: &[u8]) -> u64 {
    u64::from_le_bytes(record[..8].try_into().expect("record header"))
}

pub fn version(record: &[u8]) -> u64 {
    word(record) & !HAS_DEADLINE
}

/// The record's deadline in unix ms, if it has one.
pub fn expires_at_of(record: &[u8]) -> Option<u64> {
    (word(record) & HAS_DEADLINE != 0).then(|| u64::from_le_bytes(record[8..16].try_into().expect("deadline")))
}

/// The version of a record that is live at `now` (unix ms), or `None` if it
/// has expired: what writes see, so an expired key is absent for them too.
pub fn live_version(record: &[u8], now: u64) -> Option<u64> {
    (!kv_api::expiry::expired(expires_at_of(record), now)).then(|| version(record))
}

pub fn decode(key: String, record: &[u8], keys_only: bool) -> Entry {
    let version = version(record);
    let expires_at = expires_at_of(record);
    let record = if expires_at.is_some() { &record[8..] } else { record };
    let type_len = usize::from(record[8]);
    let content_type = String::from_utf8_lossy(&record[9..9 + type_len]).into_owned();
    let value = if keys_only {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(&record[9 + type_len..])
    };
    Entry {
        key,
        value,
        content_type,
        version,
        expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_from_before_expiry_read_as_they_always_did() {
        // Bytes as the previous version wrote them: version 7, text/plain, "hi".
        let mut old = 7u64.to_le_bytes().to_vec();
        old.push(10);
        old.extend_from_slice(b"text/plainhi");
        let entry = decode("k".into(), &old, false);
        assert_eq!((entry.version, entry.expires_at), (7, None));
        assert_eq!(
            (entry.content_type.as_str(), &entry.value[..]),
            ("text/plain", &b"hi"[..])
        );
        assert_eq!(encode(7, "text/plain", b"hi", None), old);

        let new = encode(9, "text/plain", b"hi", Some(1_700_000_000_123));
        let entry = decode("k".into(), &new, false);
        assert_eq!((entry.version, entry.expires_at), (9, Some(1_700_000_000_123)));
        assert_eq!(
            (entry.content_type.as_str(), &entry.value[..]),
            ("text/plain", &b"hi"[..])
        );
        assert_eq!(version(&new), 9);
        assert_eq!(live_version(&new, 1_700_000_000_122), Some(9));
        assert_eq!(live_version(&new, 1_700_000_000_123), None);
    }
}
