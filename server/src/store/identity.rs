//! The identity of a store: a random 128-bit id, created with the store and
//! kept in its data directory, sent on every answer as `X-Kv-Store-Id`.
//!
//! Revisions are numbered per store. A server restarted on an empty or
//! restored data directory counts them from an earlier point again, so a
//! client that compares versions (the proxy's cache) must know it is talking
//! to another store: the id tells it.

use std::io::Write;
use std::path::Path;

use axum::http::HeaderValue;

/// The file in the data directory that holds the id (32 hex digits).
pub const FILE_NAME: &str = "store-id";

/// The id of the store in `data_dir`. `new_store`: the store's database did
/// not exist before this start, so whatever id file lies there belongs to a
/// store that is gone, and a new id is made. Otherwise the file's id is kept;
/// one is made if there is none (a store from before ids existed).
pub fn load_or_create(data_dir: &Path, new_store: bool) -> Result<HeaderValue, String> {
    let path = data_dir.join(FILE_NAME);
    if !new_store {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let id = text.trim();
                if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return HeaderValue::from_str(id).map_err(|err| err.to_string());
                }
                return Err(format!(
                    "{} does not hold a store id (32 hex digits); restore it, or remove it to give the store a new one",
                    path.display()
                ));
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(format!("cannot read {}: {err}", path.display())),
        }
    }
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "cannot draw a random store id".to_owned())?;
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // Written aside, synced, then renamed into place: never half a file.
    let temp = data_dir.join(format!("{FILE_NAME}.new-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(format!("{id}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)?;
        crate::store::engine::sync_dir(data_dir)
    };
    write().map_err(|err| format!("cannot write the store id to {}: {err}", path.display()))?;
    HeaderValue::from_str(&id).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_kept_with_its_store_and_replaced_with_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), true).unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(load_or_create(dir.path(), false).unwrap(), first);
        let second = load_or_create(dir.path(), true).unwrap();
        assert_ne!(second, first);
        std::fs::write(dir.path().join(FILE_NAME), "garbage").unwrap();
        assert!(load_or_create(dir.path(), false).is_err());
    }
}
