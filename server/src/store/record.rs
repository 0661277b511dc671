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

/// Puts one change into the data table: a live write, or one replayed from the log.
pub fn apply_change(data: &mut ::redb::Table<&str, &[u8]>, change: &Change) -> Result<(), ::redb::StorageError> {
    match change {
        Change::Put {
            key,
            revision,
            content_type,
            value,
        } => {
            data.insert(key.as_str(), encode(*revision, content_type, value).as_slice())?;
        }
        Change::Delete { key, .. } => {
            data.remove(key.as_str())?;
        }
    }
    Ok(())
}

/// A record is `version: u64 LE | content-type length: u8 | content type | value`.
pub fn encode(version: u64, content_type: &str, value: &[u8]) -> Vec<u8> {
    let content_type = &content_type.as_bytes()[..content_type.len().min(255)];
    let mut record = Vec::with_capacity(9 + content_type.len() + value.len());
    record.extend_from_slice(&version.to_le_bytes());
    record.push(content_type.len() as u8);
    record.extend_from_slice(content_type);
    record.extend_from_slice(value);
    record
}

pub fn version(record: &[u8]) -> u64 {
    u64::from_le_bytes(record[..8].try_into().expect("record header"))
}

pub fn decode(key: String, record: &[u8], keys_only: bool) -> Entry {
    let version = version(record);
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
    }
}
