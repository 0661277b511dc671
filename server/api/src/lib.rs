//! kv-api: the contract every kv program agrees on, with no I/O.
//!
//! kv-server, kv-proxy, the `kv` CLI and the fuzz target all depend on this
//! crate, and nothing here opens a socket or a file: no tokio, hyper, reqwest
//! or redb (ARCHITECTURE.md, "Invariants").
//!
//! # Layout
//! - [`key`]: how a key is spelled in a URL (decode, validate, encode).
//! - [`error`]: [`ErrorCode`](error::ErrorCode), every error code with its status, and the JSON body.
//! - [`condition`]: ETags, `If-Match` / `If-None-Match`, the revision headers.
//! - [`expiry`]: per-key deadlines on the wire: `ttl`, `X-Kv-Expires-In`, `expires_at`.
//! - [`batch`]: the batch write (`POST /kv`, NDJSON): its lines, limits and answer.
//! - [`dump`]: the stored pair, the NDJSON item and the JSON page, `Accept` negotiation.
//! - [`feed`]: the change feed's events, its query, SSE framing.
//! - [`quote`]: Redis-style quoting for line-oriented output.
//! - [`framing`]: the line protocol's bytes to lines (telnet negotiation, line limits), without I/O.
//! - [`command`]: the line protocol's commands, parsed from a line.
//! - [`interpreter`]: what each command answers, over a small backend trait.
//! - [`source`]: where a value read through the proxy came from (`X-Cache`, `Age`), as terminals say it.
//! - [`stats`]: the names of the proxy's figures.
//! - [`routes`]: the route table and the embedded `openapi.yaml`.

pub mod batch;
pub mod command;
pub mod condition;
pub mod dump;
pub mod error;
pub mod expiry;
pub mod feed;
pub mod framing;
pub mod interpreter;
pub mod key;
pub mod quote;
pub mod routes;
pub mod source;
pub mod stats;

pub use error::{ApiError, ErrorBody, ErrorCode};
