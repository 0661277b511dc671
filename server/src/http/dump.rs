//! DUMP: `GET /kv` in the shape `Accept` asks for; JSON and HTML pages, or
//! NDJSON and text streamed in chunks.
//!
//! Every page and every chunk is bounded in bytes as well as in keys (a page
//! at [`MAX_PAGE_BYTES`], its `next` continuing it), and is read and rendered
//! on a blocking thread, never on the runtime that serves connections.

use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::HeaderValue;
use axum::http::header::{self, HeaderMap};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kv_api::condition::X_KV_REVISION;
use kv_api::dump::{self, DEFAULT_PAGE, Format, MAX_PAGE_BYTES, Query};
use kv_api::{ApiError, ErrorCode};
use tokio::sync::Semaphore;

use super::AppState;
use crate::store::{Scan, Scanned, Store, StoreError};

/// Keys read per store call while streaming NDJSON or text, and bytes of
/// keys and values (a chunk stops at whichever comes first).
const STREAM_CHUNK: usize = 512;
const STREAM_CHUNK_BYTES: usize = 1 << 20;

/// `GET /kv`: DUMP, in the shape the `Accept` header asks for.
pub(super) async fn dump(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = Query::parse(query.as_deref())?;
    let accept = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok());
    let format = Format::negotiate(accept).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotAcceptable,
            "DUMP is available as application/json, application/x-ndjson, text/html or text/plain",
        )
    })?;
    if format == Format::Html {
        return super::page::listing(&state, &query).await;
    }
    let Query {
        prefix,
        limit,
        after,
        keys_only,
    } = query;
    let cursor = after.as_deref().map(dump::Cursor::parse);
    let at = cursor.and_then(|c| c.at);
    let after = cursor.map(|c| c.after.to_owned());
    let content_type = [(header::CONTENT_TYPE, format.content_type())];
    match format {
        // HTML went to the listing above.
        Format::Json | Format::Html => {
            let limit = limit.unwrap_or(DEFAULT_PAGE);
            let scan = Scan {
                prefix: prefix.clone(),
                after,
                at,
                limit,
                max_bytes: MAX_PAGE_BYTES,
                keys_only,
            };
            // Reading up to a page from disk and rendering it is blocking work:
            // on the serving runtime it would stall every connection there.
            let _permit = SCANS.acquire().await.map_err(|_| StoreError::Closed)?;
            let scanned = state.store.scan(scan).await?;
            let read_at = scanned.revision;
            let page = off_runtime(move || Ok(json_page(scanned, keys_only))).await?;
            let mut response = (content_type, page).into_response();
            if let Some(read_at) = read_at {
                response
                    .headers_mut()
                    .insert(X_KV_REVISION.clone(), HeaderValue::from(read_at));
            }
            Ok(response)
        }
        Format::Ndjson | Format::Text => {
            let scan = Scan {
                prefix,
                after,
                at,
                limit: limit.unwrap_or(usize::MAX),
                max_bytes: STREAM_CHUNK_BYTES,
                keys_only,
            };
            let mut response = (
                content_type,
                Body::from_stream(stream_entries(state.store.clone(), scan, format)),
            )
                .into_response();
            if let Some(at) = at {
                response
                    .headers_mut()
                    .insert(X_KV_REVISION.clone(), HeaderValue::from(at));
            }
            Ok(response)
        }
    }
}

/// At most this many scans (each with its page) are built at once, on
/// blocking threads: the pages' memory and CPU stay bounded however many
/// DUMPs arrive together.
static SCANS: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)));

/// Renders a page or chunk on a blocking thread (the caller holds a [`SCANS`] permit).
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| StoreError::Unavailable(format!("a scan failed: {err}")))?
}

/// A JSON page, `{"items": [...], "next": ...}`, written item by item and cut
/// once it holds [`MAX_PAGE_BYTES`] (JSON escaping and base64 make it larger
/// than the values it carries); `next` then continues after the last item in it.
/// Each entry is dropped once written.
fn json_page(scanned: Scanned, keys_only: bool) -> Bytes {
    let Scanned {
        entries,
        more,
        revision,
    } = scanned;
    let count = entries.len();
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(b"{\"items\":[");
    let mut next = None;
    for (i, entry) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, &dump::Item::from_entry(&entry, keys_only)).expect("an item serialises");
        let last = i + 1 == count;
        if (last && more) || (!last && out.len() >= MAX_PAGE_BYTES) {
            next = Some(dump::Cursor::render(revision, &entry.key));
            break;
        }
    }
    out.extend_from_slice(b"],\"next\":");
    serde_json::to_writer(&mut out, &next).expect("a cursor serialises");
    out.push(b'}');
    Bytes::from(out)
}

/// Streams every entry of a scan in chunks, each chunk its own short read
/// of at most [`STREAM_CHUNK`] keys and [`STREAM_CHUNK_BYTES`] (one entry at
/// least), read and rendered off the serving runtime, so memory stays
/// constant however many keys there are.
fn stream_entries(
    store: Arc<dyn Store>,
    scan: Scan,
    format: Format,
) -> impl futures_util::Stream<Item = Result<Bytes, StoreError>> {
    futures_util::stream::try_unfold(Some(scan), move |scan| {
        let store = store.clone();
        async move {
            let Some(mut scan) = scan.filter(|s| s.limit > 0) else {
                return Ok(None);
            };
            let chunk = Scan {
                limit: scan.limit.min(STREAM_CHUNK),
                ..scan.clone()
            };
            let keys_only = scan.keys_only;
            let _permit = SCANS.acquire().await.map_err(|_| StoreError::Closed)?;
            let Scanned {
                entries,
                more,
                revision,
            } = store.scan(chunk).await?;
            let (out, count, last, more) = off_runtime(move || {
                let mut out = Vec::with_capacity(entries.len() * 64);
                for entry in &entries {
                    match format {
                        Format::Text => out.extend_from_slice(dump::text_line(entry, keys_only).as_bytes()),
                        _ => out.extend_from_slice(&dump::ndjson_line(entry, keys_only)),
                    }
                }
                Ok((out, entries.len(), entries.last().map(|e| e.key.clone()), more))
            })
            .await?;
            let Some(last) = last else {
                return Ok(None);
            };
            scan.limit -= count;
            scan.after = Some(last);
            // The chunks after the first read where it did: one snapshot.
            scan.at = scan.at.or(revision);
            Ok(Some((Bytes::from(out), more.then_some(scan))))
        }
    })
}
