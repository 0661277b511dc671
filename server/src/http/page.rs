//! The pages on kv-server: the rows of the HTML listing of `GET /kv`, read
//! from the store, and the [`Backend`] the shared pages
//! ([`kv_edge::pages`]) read and write through. The HTML is written there,
//! with maud.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use kv_api::ApiError;
use kv_api::condition::Precondition;
use kv_api::dump::{Entry, Query};
use kv_api::expiry::Expiry;
use kv_api::key::MAX_KEY_BYTES;
use kv_edge::pages::render::{self, Listing, Row};
use kv_edge::pages::{self, Backend, Failure, Written};

use super::AppState;
use crate::store::{DeleteOutcome, PutOutcome, Scan, Store};

/// Rows on a listing page when the query names no limit.
pub const HTML_PAGE: usize = 100;

/// The HTML listing: the folder of the prefix, its subfolders (each one
/// row, found by skipping past it in the scan, so a folder of a million keys
/// costs one read) and its keys, a page at a time.
pub(super) async fn listing(state: &AppState, query: &Query) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(HTML_PAGE);
    let folder = render::folder_of(&query.prefix);
    // Before the scan: the live page follows the feed from here, so a write
    // racing the scan is applied (or skipped, if the scan saw it) by version.
    let revision = state.store.revision();
    // The listing follows the feed live, so it reads the latest state: a
    // JSON page's pinned cursor continues here from its key.
    let after = query
        .after
        .as_deref()
        .map(|after| kv_api::dump::Cursor::parse(after).after);
    let (rows, next) = rows(state.store.as_ref(), &query.prefix, folder, after, limit).await?;
    let page = render::listing(&Listing {
        prefix: &query.prefix,
        rows: &rows,
        limit,
        next: next.as_deref(),
        after: query.after.as_deref(),
        total_keys: state.store.len().await.ok(),
        revision: Some(revision),
    });
    Ok(pages::html(StatusCode::OK, page))
}

/// Up to `limit` rows after the cursor `after`, and the cursor of the next
/// page if there are more.
async fn rows(
    store: &dyn Store,
    prefix: &str,
    folder: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Row>, Option<String>), ApiError> {
    // A cursor that is a folder row of this level resumes past the whole folder.
    let mut after = after.map(|after| {
        if is_folder_row(folder, after) {
            past_folder(after)
        } else {
            after.to_owned()
        }
    });
    let mut rows = Vec::new();
    loop {
        let want = limit + 1 - rows.len();
        let scan = Scan {
            prefix: prefix.to_owned(),
            after: after.clone(),
            at: None,
            limit: want,
            // A page shows at most a preview of each value, but the scan reads
            // them whole: bounded in bytes like a JSON page.
            max_bytes: kv_api::dump::MAX_PAGE_BYTES,
            keys_only: false,
        };
        let scanned = store.scan(scan).await?;
        let exhausted = !scanned.more;
        let entries = scanned.entries;
        let mut jumped = false;
        for entry in entries {
            if rows.len() == limit {
                let next = rows.last().map(|row: &Row| row.path().to_owned());
                return Ok((rows, next));
            }
            let rest = &entry.key[folder.len()..];
            if let Some(slash) = rest.find('/') {
                let path = entry.key[..folder.len() + slash + 1].to_owned();
                after = Some(past_folder(&path));
                rows.push(Row::Folder(path));
                jumped = true;
                break;
            }
            after = Some(entry.key.clone());
            rows.push(Row::Key(entry));
        }
        if !jumped && exhausted {
            return Ok((rows, None));
        }
    }
}

/// Whether `path` is the path of a folder row directly under `folder`.
fn is_folder_row(folder: &str, path: &str) -> bool {
    path.strip_prefix(folder)
        .and_then(|rest| rest.strip_suffix('/'))
        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

/// A cursor after every key under `folder`: the folder followed by more of
/// the greatest character than any key has bytes, and still before the next
/// name at the folder's level.
fn past_folder(folder: &str) -> String {
    let mut cursor = String::with_capacity(folder.len() + MAX_KEY_BYTES + 4);
    cursor.push_str(folder);
    while cursor.len() <= MAX_KEY_BYTES {
        cursor.push(char::MAX);
    }
    cursor
}

/// The pages' reads and writes on the server: the store itself.
#[derive(Clone)]
pub struct StoreBackend(pub Arc<dyn Store>);

impl Backend for StoreBackend {
    async fn get(&self, key: &str) -> Result<Option<Entry>, Failure> {
        Ok(self.0.get(key).await.map_err(ApiError::from)?)
    }

    async fn put(
        &self,
        key: &str,
        value: Bytes,
        content_type: &str,
        precondition: Precondition,
    ) -> Result<Written, Failure> {
        let outcome = self
            .0
            // A page edits the value, not its lifetime: the key keeps its deadline.
            .put(
                key.to_owned(),
                value,
                content_type.to_owned(),
                precondition,
                Expiry::Keep,
            )
            .await
            .map_err(ApiError::from)?;
        Ok(match outcome {
            PutOutcome::Stored { revision, .. } => Written::Done(Some(revision)),
            PutOutcome::PreconditionFailed { .. } => Written::Conflict,
        })
    }

    async fn delete(&self, key: &str, precondition: Precondition) -> Result<Written, Failure> {
        let outcome = self
            .0
            .delete(key.to_owned(), precondition)
            .await
            .map_err(ApiError::from)?;
        Ok(match outcome {
            DeleteOutcome::Deleted { .. } => Written::Done(None),
            DeleteOutcome::NotFound => Written::NotFound,
            DeleteOutcome::PreconditionFailed { .. } => Written::Conflict,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_cursors() {
        assert!(is_folder_row("users/", "users/alice/"));
        assert!(!is_folder_row("users/", "users/alice"));
        assert!(
            !is_folder_row("users/", "users/"),
            "the folder's own key is no subfolder"
        );
        assert!(!is_folder_row("users/", "users/a/b/"));
        let past = past_folder("users/a/");
        assert!(past.len() > MAX_KEY_BYTES);
        let longest = format!("users/a/{}", "\u{10FFFF}".repeat((MAX_KEY_BYTES - 8) / 4));
        assert!(past.as_str() > longest.as_str());
        assert!(past.as_str() > "users/a/zzzz" && past.as_str() < "users/a0" && past.as_str() < "users/b");
    }
}
