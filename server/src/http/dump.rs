//! DUMP: `GET /kv` in the shape `Accept` asks for; JSON and HTML pages, or
//! NDJSON and text streamed in chunks.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header::{self, HeaderMap};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kv_api::dump::{self, DEFAULT_PAGE, Format, Query};
use kv_api::{ApiError, ErrorCode};

use super::AppState;
use crate::store::{Scan, Store};

/// Keys read per store call while streaming NDJSON or text.
const STREAM_CHUNK: usize = 512;

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
        return super::page::listing(&state, &query);
    }
    let Query {
        prefix,
        limit,
        after,
        keys_only,
    } = query;
    let content_type = [(header::CONTENT_TYPE, format.content_type())];
    match format {
        Format::Json | Format::Html => {
            let limit = limit.unwrap_or(DEFAULT_PAGE);
            let scan = Scan {
                prefix: prefix.clone(),
                after,
                limit: limit + 1,
                keys_only,
            };
            let mut entries = state.store.scan(&scan)?;
            let next = if entries.len() > limit {
                entries.truncate(limit);
                entries.last().map(|e| e.key.clone())
            } else {
                None
            };
            let items = entries.iter().map(|e| dump::Item::from_entry(e, keys_only)).collect();
            Ok((content_type, axum::Json(dump::Page { items, next })).into_response())
        }
        Format::Ndjson | Format::Text => {
            let scan = Scan {
                prefix,
                after,
                limit: limit.unwrap_or(usize::MAX),
                keys_only,
            };
            Ok((
                content_type,
                Body::from_stream(stream_entries(state.store.clone(), scan, format)),
            )
                .into_response())
        }
    }
}

/// Streams every entry of a scan in chunks, each chunk its own short read, so
/// memory stays constant however many keys there are.
fn stream_entries(
    store: Arc<dyn Store>,
    scan: Scan,
    format: Format,
) -> impl futures_util::Stream<Item = Result<Bytes, crate::store::StoreError>> {
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
            let entries = tokio::task::spawn_blocking(move || store.scan(&chunk))
                .await
                .map_err(|err| crate::store::StoreError::Unavailable(err.to_string()))??;
            let Some(last) = entries.last() else {
                return Ok(None);
            };
            let mut out = Vec::with_capacity(entries.len() * 64);
            for entry in &entries {
                match format {
                    Format::Text => out.extend_from_slice(dump::text_line(entry, scan.keys_only).as_bytes()),
                    _ => out.extend_from_slice(&dump::ndjson_line(entry, scan.keys_only)),
                }
            }
            let more = entries.len() == STREAM_CHUNK.min(scan.limit);
            scan.limit -= entries.len();
            scan.after = Some(last.key.clone());
            Ok(Some((Bytes::from(out), more.then_some(scan))))
        }
    })
}
