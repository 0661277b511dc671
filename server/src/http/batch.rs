//! The batch write: `POST /kv` with an NDJSON body, one operation per line
//! ([`kv_api::batch`] says what is atomic and what is not).
//!
//! The whole body is read (within [`kv_api::batch::max_body_bytes`]) and
//! every line checked before anything is written: a refused line refuses the
//! batch, and nothing of it is written. Then every line is queued to the
//! store's writer, in body order, each as a write of its own, so the writer
//! group-commits them under few fsyncs; the answer waits until every one is
//! durable. That part runs in a task of its own: a client that goes away
//! cannot leave half a batch queued.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use kv_api::batch::{self, BatchError, Op, Summary};
use kv_api::condition::{Precondition, X_KV_REVISION};
use kv_api::expiry::{self, Expiry};
use kv_api::{ApiError, ErrorCode};
use kv_edge::request::read_body;

use super::AppState;
use crate::store::{StoreError, WriteOp, WriteOutcome};

pub(super) async fn post_batch(State(state): State<Arc<AppState>>, request: Request) -> Response {
    match run(state, request).await {
        Ok(summary) => answer(&summary),
        Err(err) => err.into_response(),
    }
}

/// The answer to a batch whose every line is durable.
fn answer(summary: &Summary) -> Response {
    let mut response = axum::Json(summary).into_response();
    response
        .headers_mut()
        .insert(X_KV_REVISION.clone(), HeaderValue::from(summary.revision));
    response
}

/// A refused or failed batch.
struct Refused {
    error: ApiError,
    line: Option<u64>,
    done: Option<Summary>,
}

impl From<ApiError> for Refused {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            line: None,
            done: None,
        }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        // The store's failure words (and their log line) as for any write.
        let body = BatchError {
            error: self.error.code.as_str().to_owned(),
            message: self.error.message.clone(),
            line: self.line,
            done: self.done,
        };
        let mut response = self.error.into_response();
        let json = serde_json::to_vec(&body).expect("an error body serialises");
        *response.body_mut() = axum::body::Body::from(json);
        response.headers_mut().remove(header::CONTENT_LENGTH);
        if let Some(done) = &self.done {
            response
                .headers_mut()
                .insert(X_KV_REVISION.clone(), HeaderValue::from(done.revision));
        }
        response
    }
}

async fn run(state: Arc<AppState>, request: Request) -> Result<Summary, Refused> {
    let (parts, body) = request.into_parts();
    let media = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if media.as_deref() != Some(batch::CONTENT_TYPE) {
        return Err(ApiError::new(
            ErrorCode::BadContentType,
            format!(
                "a batch (POST /kv) is NDJSON: send it with Content-Type: {}",
                batch::CONTENT_TYPE
            ),
        )
        .into());
    }
    let limit = batch::max_body_bytes(state.max_value_bytes);
    let body = read_body(&parts.headers, parts.version, body, limit)
        .await
        .map_err(|err| match err.code {
            ErrorCode::ValueTooLarge => ApiError::new(
                ErrorCode::ValueTooLarge,
                format!("a batch body may be at most {limit} bytes; split it into several POSTs"),
            ),
            _ => err,
        })?;
    let ops = parse(&body, state.max_value_bytes)?;
    // Counted against --max-inflight-bytes until the writes are done.
    let body = kv_edge::inflight::hold(&parts.extensions, body);
    let store = state.store.clone();
    let task = tokio::spawn(async move {
        let summary = write(&*store, ops).await;
        drop(body);
        summary
    });
    match task.await {
        Ok(result) => result,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => Err(ApiError::new(ErrorCode::ShuttingDown, "the server is shutting down").into()),
    }
}

/// A line checked and ready to queue: its number, and the write (`None`
/// for a put whose deadline had passed).
type Checked = (u64, Option<WriteOp>);

/// Checks every line; the first refused one refuses the batch.
fn parse(body: &[u8], max_value_bytes: usize) -> Result<Vec<Checked>, Refused> {
    let refuse = |line: u64, code: ErrorCode, message: String| Refused {
        error: ApiError::new(
            code,
            format!("line {line}: {message}; nothing of the batch was written"),
        ),
        line: Some(line),
        done: None,
    };
    let now = expiry::now_ms();
    let mut ops = Vec::new();
    for (index, line) in body.split(|b| *b == b'\n').enumerate() {
        let number = index as u64 + 1;
        if batch::is_blank(line) {
            continue;
        }
        if ops.len() >= batch::MAX_LINES {
            return Err(refuse(
                number,
                ErrorCode::ValueTooLarge,
                format!(
                    "a batch may hold at most {} lines; split it into several POSTs",
                    batch::MAX_LINES
                ),
            ));
        }
        let op = batch::parse_line(line).map_err(|err| refuse(number, err.code, err.message))?;
        let op = match op {
            Op::Delete { key } => Some(WriteOp::Delete {
                key,
                precondition: Precondition::default(),
            }),
            Op::Put {
                key,
                value,
                content_type,
                expires_at,
            } => {
                if value.len() > max_value_bytes {
                    return Err(refuse(
                        number,
                        ErrorCode::ValueTooLarge,
                        format!(
                            "the value of '{key}' is {} bytes, over the limit of {max_value_bytes} bytes (--max-value-bytes)",
                            value.len()
                        ),
                    ));
                }
                let expiry = match expires_at {
                    None => Some(Expiry::Clear),
                    Some(at) if at <= now => None,
                    Some(at) => Some(Expiry::After(std::time::Duration::from_millis(at - now))),
                };
                expiry.map(|expiry| WriteOp::Put {
                    key,
                    value: Bytes::from(value),
                    content_type,
                    precondition: Precondition::default(),
                    expiry,
                })
            }
        };
        ops.push((number, op));
    }
    Ok(ops)
}

/// Queues the writes and waits for all of them. Writes of different keys
/// go to the writer's queue together (so it groups them under few fsyncs);
/// a line whose key an earlier line of the batch still in flight also
/// writes waits until every write before it is done, so that a key's lines
/// land in body order whatever the order the queue takes them in.
async fn write(store: &dyn crate::store::Store, ops: Vec<Checked>) -> Result<Summary, Refused> {
    type Pending = FuturesOrdered<BoxFuture<'static, (u64, Option<Result<WriteOutcome, StoreError>>)>>;
    let mut pending: Pending = FuturesOrdered::new();
    let mut summary = Summary::default();
    let mut failed: Option<(u64, StoreError)> = None;
    let mut in_flight: HashSet<String> = HashSet::new();

    async fn settle(pending: &mut Pending, summary: &mut Summary, failed: &mut Option<(u64, StoreError)>) {
        while let Some((number, outcome)) = pending.next().await {
            if failed.is_some() {
                // After the first line with an unknown outcome, every outcome is
                // reported as unknown, whatever it was: the answer stays a prefix.
                continue;
            }
            match outcome {
                None => summary.expired += 1,
                Some(Ok(WriteOutcome::Stored { revision, .. })) => {
                    summary.stored += 1;
                    summary.revision = summary.revision.max(revision);
                }
                Some(Ok(WriteOutcome::Deleted { revision })) => {
                    summary.deleted += 1;
                    summary.revision = summary.revision.max(revision);
                }
                Some(Ok(WriteOutcome::NotFound)) => summary.absent += 1,
                Some(Ok(other @ WriteOutcome::PreconditionFailed { .. })) => {
                    // No line carries a precondition: a bug, refused like a failure.
                    *failed = Some((
                        number,
                        StoreError::Unavailable(format!("an unconditional batch write was answered {other:?}")),
                    ));
                }
                Some(Err(err)) => *failed = Some((number, err)),
            }
        }
    }

    for (number, op) in ops {
        let Some(op) = op else {
            pending.push_back(Box::pin(std::future::ready((number, None))));
            continue;
        };
        if !in_flight.insert(op.key().to_owned()) {
            settle(&mut pending, &mut summary, &mut failed).await;
            in_flight.clear();
            in_flight.insert(op.key().to_owned());
        }
        if failed.is_some() {
            break;
        }
        let future = store.write(op);
        pending.push_back(Box::pin(async move { (number, Some(future.await)) }));
    }
    settle(&mut pending, &mut summary, &mut failed).await;
    // Every write before now is durable: a revision that covers the lines
    // that wrote nothing (expired puts, absent deletes) too.
    summary.revision = summary.revision.max(store.revision());
    match failed {
        None => Ok(summary),
        Some((line, err)) => {
            let certain = matches!(err, StoreError::TooLarge(_) | StoreError::NoSpace(_));
            let mut error = ApiError::from(err);
            error.message = if certain {
                format!(
                    "line {line} was not written: {}; lines before it are durable (see \"done\"), \
                     lines after it may or may not have been written",
                    error.message
                )
            } else {
                format!(
                    "{}; lines before line {line} are durable (see \"done\"); the outcome of line {line} \
                     and of every line after it is unknown",
                    error.message
                )
            };
            Err(Refused {
                error,
                line: Some(line),
                done: Some(summary),
            })
        }
    }
}
