//! The etcd engine (`--store etcd`, built with `--features etcd`): the same
//! [`Store`] over an etcd cluster (v3 API, etcd 3.4 or later), so that
//! several stateless kv-servers can serve one replicated store.
//!
//! # Mapping
//! - A key `k` is the etcd key `<prefix>k`; its value is an [`Envelope`]
//!   around the bytes: the content type and the absolute deadline.
//! - The store's revision is etcd's; a key's version (its ETag) is its
//!   `mod_revision`, so kv-servers on one cluster agree on both.
//! - An unconditional PUT is one `put` with `prev_kv` (201 when there was no
//!   live previous value); an unconditional DELETE one `delete` with `prev_kv`.
//! - A write with a precondition, `?keepttl` or a PATCH reads the key, checks
//!   the precondition against its live version (an expired key is absent),
//!   and commits in a transaction comparing `MOD(key)` with the version read
//!   (`CREATE(key) == 0` when there was none); if another write came between,
//!   it starts again. The precondition is thus evaluated exactly as the
//!   embedded engine does (lists of ETags, `*`, expired keys), at the cost of
//!   one more round trip.
//! - A deadline is stored in the envelope, so reads never ask etcd about
//!   leases, and a key at or past it is absent at once. Removal is etcd's: each
//!   key with a deadline gets a lease of its own whose TTL ends at or just
//!   after the deadline; its expiry deletes the key with a revision, and the
//!   change feed reports that delete with `"reason":"expired"` (the deleted
//!   envelope's deadline has passed).
//! - Every call has a deadline (`--etcd-timeout`). A write past it, or whose
//!   connection failed after sending, answers [`StoreError::OutcomeUnknown`]
//!   (504): it may still be committed. A read past it answers 503.
//! - The change feed is one etcd watch on the prefix per kv-server, published
//!   into the same [`Feed`] the embedded engine uses (see [`watch`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, Identity, KeyValue,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use kv_api::condition::{Condition, Precondition};
use kv_api::dump::Entry;
use kv_api::expiry::{self, Expiry, Touch};
use tokio::sync::watch;

use super::feed::{Feed, FeedLimits, Record};
use super::{Scan, Scanned, Store, StoreError, StoreFuture, WriteOp, WriteOutcome};

/// The largest value kv accepts over etcd: etcd refuses requests over
/// 1.5 MiB by default (`--max-request-bytes`), and a request carries the
/// key, the envelope and gRPC framing besides the value.
pub const MAX_VALUE_BYTES: u64 = (3 << 19) - (16 << 10);

/// How a kv-server reaches its cluster.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub timeout: Duration,
    pub feed: FeedLimits,
    pub tls: EtcdTls,
}

/// TLS to the cluster, as the command line gave it: PEM files.
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    /// The CA that signed the members' certificates.
    pub ca: Option<PathBuf>,
    /// This client's certificate and key, for a cluster that checks them.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl EtcdTls {
    /// The client's TLS settings for `endpoints`, or why they cannot work:
    /// checked here, so that a mistake is told in kv's words, at start,
    /// rather than as a failed handshake.
    fn options(&self, endpoints: &[String]) -> Result<Option<TlsOptions>, String> {
        let https = endpoints.iter().filter(|e| e.starts_with("https://")).count();
        if https == 0 {
            if self.ca.is_some() || self.cert.is_some() {
                return Err("--etcd-ca and --etcd-cert are for a cluster that serves TLS: give its \
                            --etcd-endpoints as https:// URLs"
                    .into());
            }
            return Ok(None);
        }
        if https != endpoints.len() {
            return Err(
                "--etcd-endpoints mixes https:// and other URLs: a cluster serves its clients one way; \
                        give every member as https://"
                    .into(),
            );
        }
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|err| format!("{flag} {}: cannot read it: {err}", path.display()))
        };
        let Some(ca) = &self.ca else {
            return Err(
                "https:// endpoints need --etcd-ca: the PEM file of the CA that signed the members' \
                        certificates (etcd's --trusted-ca-file)"
                    .into(),
            );
        };
        let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(read("--etcd-ca", ca)?));
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            options = options.identity(Identity::from_pem(read("--etcd-cert", cert)?, read("--etcd-key", key)?));
        }
        Ok(Some(options))
    }
}

/// The etcd engine; cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    prefix: String,
    timeout: Duration,
    feed: Arc<Feed>,
    cluster_id: u64,
    endpoints: Vec<String>,
    stop: watch::Sender<bool>,
    watcher: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The stored form of a value: `[1][deadline: u64 BE, 0 = none][write id:
/// u64 BE][n: u8][n bytes of content type][value]`. Version byte 1; anything
/// else is refused. The write id is random per write: after a write whose
/// connection broke, reading it back tells whether that write was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub content_type: String,
    pub expires_at: Option<u64>,
    pub write_id: u64,
    pub value: Bytes,
}

/// A random id for one write (see [`Envelope`]).
fn write_id() -> u64 {
    let mut bytes = [0u8; 8];
    // A failed fill leaves zeros: the write then cannot be recognised, and
    // a broken connection stays outcome_unknown.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u64::from_be_bytes(bytes)
}

const ENVELOPE_V1: u8 = 1;

impl Envelope {
    pub fn encode(content_type: &str, expires_at: Option<u64>, write_id: u64, value: &[u8]) -> Vec<u8> {
        let mut ct = content_type.as_bytes();
        if ct.len() > 255 {
            ct = &ct[..255];
        }
        let mut out = Vec::with_capacity(18 + ct.len() + value.len());
        out.push(ENVELOPE_V1);
        out.extend_from_slice(&expires_at.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&write_id.to_be_bytes());
        out.push(u8::try_from(ct.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(ct);
        out.extend_from_slice(value);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (&version, rest) = bytes.split_first()?;
        if version != ENVELOPE_V1 || rest.len() < 17 {
            return None;
        }
        let deadline = u64::from_be_bytes(rest[..8].try_into().ok()?);
        let write_id = u64::from_be_bytes(rest[8..16].try_into().ok()?);
        let n = usize::from(rest[16]);
        let rest = &rest[17..];
        if rest.len() < n {
            return None;
        }
        Some(Self {
            content_type: String::from_utf8_lossy(&rest[..n]).into_owned(),
            expires_at: (deadline != 0).then_some(deadline),
            write_id,
            value: Bytes::copy_from_slice(&rest[n..]),
        })
    }

    fn live(&self, now: u64) -> bool {
        !expiry::expired(self.expires_at, now)
    }
}

/// The smallest key after every key starting with `prefix` (etcd's range end
/// for a prefix); empty (to the end of the keyspace) if there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn rev(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Whether a call failed before its request left: the connection to the
/// member could not be made (tonic says "tcp connect error").
fn not_sent(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(status)
        if i32::from(status.code()) == grpc_code::UNAVAILABLE && status.message().contains("connect error"))
        || matches!(err, etcd_client::Error::TransportError(_))
}

/// What a failed read becomes: the cluster could not be reached in time.
fn unreachable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unreachable(err.to_string())
}

/// The largest gRPC answer kv takes from etcd (tonic's default is 4 MiB): a
/// watch answer carries a whole event with its previous value (two values
/// at etcd's request limit, 1.5 MiB by default), and a range is sized to its
/// byte budget (see `scan`).
const MAX_MESSAGE: usize = 64 << 20;

/// The entries a scan's first range asks for, before it has seen their sizes.
const FIRST_RANGE: usize = 16;

/// Whether an answer was refused for being over [`MAX_MESSAGE`].
fn over_message_limit(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(status)
        if i32::from(status.code()) == grpc_code::OUT_OF_RANGE && status.message().contains("decoded message length too large"))
}

/// What a failed range read at revision `at` becomes: etcd answers
/// `OUT_OF_RANGE` for a revision it has compacted away, and for one it has
/// not reached (a cursor from another cluster, or made up).
fn read_at_failed(err: etcd_client::Error, at: i64) -> StoreError {
    if let etcd_client::Error::GRpcStatus(status) = &err
        && i32::from(status.code()) == grpc_code::OUT_OF_RANGE
    {
        if status.message().contains("compacted") {
            return StoreError::Compacted { at: rev(at) };
        }
        return StoreError::BadCursor(format!(
            "the cursor's revision {at} is not one this store has reached ({}): pass back the next of a page \
             this server gave, or start the listing without after",
            status.message()
        ));
    }
    unreachable(err)
}

/// What a failed write becomes: an error that says the request was refused
/// before it was applied is a known outcome; anything else (a timeout, a
/// lost connection, a leader change) may still be committed.
fn write_failed(err: etcd_client::Error) -> StoreError {
    if let etcd_client::Error::GRpcStatus(status) = &err {
        match i32::from(status.code()) {
            grpc_code::INVALID_ARGUMENT if status.message().contains("too large") => {
                return StoreError::TooLarge(format!(
                    "the etcd cluster refused the write as larger than its --max-request-bytes ({}); \
                     it was not stored",
                    status.message()
                ));
            }
            // The NOSPACE alarm ("etcdserver: mvcc: database space exceeded").
            // Refused before anything was applied, except the one write that
            // crossed the quota: the callers look for a put by its write id
            // ([`EtcdStore::find_write`]) and call a delete's outcome unknown.
            grpc_code::RESOURCE_EXHAUSTED if status.message().contains("space exceeded") => {
                return StoreError::NoSpace(status.message().to_owned());
            }
            grpc_code::INVALID_ARGUMENT | grpc_code::FAILED_PRECONDITION | grpc_code::RESOURCE_EXHAUSTED => {
                return StoreError::Unavailable(format!("etcd refused the write: {}", status.message()));
            }
            // `require_leader`: the member refused before proposing anything.
            grpc_code::UNAVAILABLE if status.message().contains("no leader") => {
                return StoreError::Unreachable(format!("etcd has no leader: {}", status.message()));
            }
            _ => {}
        }
    }
    StoreError::OutcomeUnknown(err.to_string())
}

/// A delete refused for want of space may have been applied all the same
/// (etcd applies a transaction, then says the quota is exceeded) and has no
/// write id to look for: its outcome is unknown.
fn space_unknown(failed: StoreError) -> StoreError {
    match failed {
        StoreError::NoSpace(cause) => StoreError::OutcomeUnknown(format!(
            "the cluster is out of space (NOSPACE); etcd may have applied the delete before saying so: {cause}"
        )),
        other => other,
    }
}

/// gRPC status codes, as numbers (so that kv-server names no tonic type).
mod grpc_code {
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const OUT_OF_RANGE: i32 = 11;
    pub const UNAVAILABLE: i32 = 14;
}

/// A key as etcd holds it, decoded.
struct Current {
    envelope: Envelope,
    mod_revision: u64,
    create_revision: u64,
    lease: i64,
}

impl EtcdStore {
    /// Connects to the cluster, learns its revision, and starts the watch
    /// that feeds the change feed from there.
    pub async fn connect(options: EtcdOptions) -> Result<Self, String> {
        if options.endpoints.is_empty() {
            return Err("--store etcd needs --etcd-endpoints (or KV_ETCD_ENDPOINTS), like \
                 http://127.0.0.1:2379,http://127.0.0.1:22379"
                .into());
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.timeout)
            .with_timeout(options.timeout)
            // HTTP/2 pings no more often than every 10 s: etcd closes a
            // connection that pings more often than --grpc-keepalive-min-time
            // (5 s by default), every call on it failing ("h2 protocol error");
            // seen here with a 2 s interval as a watch lost every 8 s.
            .with_keep_alive(Duration::from_secs(10), options.timeout)
            // A member cut off from the leader refuses (reads, and watches)
            // instead of answering from a stale state or staying silent.
            .with_require_leader(true);
        if let Some(tls) = options.tls.options(&options.endpoints)? {
            connect = connect.with_tls(tls);
        }
        let endpoints = options.endpoints.clone();
        let mut client = tokio::time::timeout(options.timeout * 3, Client::connect(&endpoints, Some(connect)))
            .await
            .map_err(|_| {
                format!(
                    "etcd at {} did not answer within {:?}",
                    endpoints.join(","),
                    options.timeout * 3
                )
            })?
            .map_err(|err| format!("cannot connect to etcd at {}: {err}", endpoints.join(",")))?;
        let probe = tokio::time::timeout(
            options.timeout * 3,
            client.get(
                options.prefix.as_bytes(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            ),
        )
        .await
        .map_err(|_| format!("etcd at {} did not answer a read in time", endpoints.join(",")))?
        .map_err(|err| {
            // etcd closes the connection of a TLS client without a certificate
            // when it checks them: say what is likely missing.
            let hint = match (&options.tls.ca, &options.tls.cert) {
                (Some(_), None) => " (a cluster started with --client-cert-auth also needs --etcd-cert and --etcd-key)",
                _ => "",
            };
            format!("etcd at {} refused a read: {err}{hint}", endpoints.join(","))
        })?;
        let header = probe.header().ok_or("etcd answered without a header")?;
        let revision = rev(header.revision());
        let cluster_id = header.cluster_id();
        let feed = Arc::new(Feed::new(revision, options.feed));
        let (stop, stopped) = watch::channel(false);
        let store = Self {
            inner: Arc::new(Inner {
                client,
                prefix: options.prefix,
                timeout: options.timeout,
                feed,
                cluster_id,
                endpoints,
                stop,
                watcher: std::sync::Mutex::new(None),
            }),
        };
        let task = tokio::spawn(watch_loop(store.clone(), revision, stopped));
        *store.inner.watcher.lock().expect("watcher lock") = Some(task);
        Ok(store)
    }

    /// The id sent as `X-Kv-Store-Id`: the same for every kv-server on one
    /// cluster and prefix (the cluster's id and a digest of the prefix), so
    /// a proxy sees one store behind any of them.
    pub fn store_id(&self) -> axum::http::HeaderValue {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.inner.prefix.as_bytes());
        let mut id = format!("{:016x}", self.inner.cluster_id);
        for byte in &digest.as_ref()[..8] {
            id.push_str(&format!("{byte:02x}"));
        }
        axum::http::HeaderValue::from_str(&id).expect("hex digits are a valid header value")
    }

    fn full_key(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.inner.prefix.len() + key.len());
        full.extend_from_slice(self.inner.prefix.as_bytes());
        full.extend_from_slice(key.as_bytes());
        full
    }

    fn strip<'k>(&self, full: &'k [u8]) -> Option<&'k str> {
        std::str::from_utf8(full.strip_prefix(self.inner.prefix.as_bytes())?).ok()
    }

    fn entry(&self, kv: &KeyValue, keys_only: bool) -> Option<(Entry, Envelope)> {
        let key = self.strip(kv.key())?;
        let envelope = Envelope::decode(kv.value())?;
        let entry = Entry {
            key: key.to_owned(),
            value: if keys_only {
                Bytes::new()
            } else {
                envelope.value.clone()
            },
            content_type: envelope.content_type.clone(),
            version: rev(kv.mod_revision()),
            expires_at: envelope.expires_at,
        };
        Some((entry, envelope))
    }

    /// A call with the engine's deadline. A call that failed before it was
    /// sent (no connection to the member the channel picked: a killed
    /// member stays in the balance until it is back) is made again, on
    /// another connection, until the deadline: it cannot have been applied.
    async fn timed<T, F, Fut>(&self, mut call: F) -> Result<Result<T, etcd_client::Error>, tokio::time::error::Elapsed>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        const PAUSE: Duration = Duration::from_millis(10);
        let deadline = tokio::time::Instant::now() + self.inner.timeout;
        loop {
            match tokio::time::timeout_at(deadline, call(self.inner.client.clone())).await {
                Ok(Err(err)) if not_sent(&err) && tokio::time::Instant::now() + PAUSE < deadline => {
                    tokio::time::sleep(PAUSE).await;
                }
                other => return other,
            }
        }
    }

    async fn read_current(&self, full: &[u8]) -> Result<Option<Current>, StoreError> {
        let response = self
            .timed(|mut c| {
                let full = full.to_vec();
                async move { c.get(full, None).await }
            })
            .await
            .map_err(|_| unreachable("a read took longer than --etcd-timeout"))?
            .map_err(unreachable)?;
        Ok(response.kvs().first().and_then(|kv| {
            Envelope::decode(kv.value()).map(|envelope| Current {
                envelope,
                mod_revision: rev(kv.mod_revision()),
                create_revision: rev(kv.create_revision()),
                lease: kv.lease(),
            })
        }))
    }

    /// A lease for a key whose deadline is `expires_at`: it ends at the
    /// deadline or up to a second after it (etcd counts whole seconds), never
    /// before. A lease is a write of its own; failing it writes nothing.
    async fn lease_until(&self, expires_at: u64) -> Result<i64, StoreError> {
        let left_ms = expires_at.saturating_sub(expiry::now_ms());
        let ttl = i64::try_from(left_ms.div_ceil(1000) + 1).unwrap_or(i64::MAX);
        let lease = self
            .timed(|mut c| async move { c.lease_grant(ttl, None).await })
            .await
            .map_err(|_| unreachable("granting a lease took longer than --etcd-timeout"))?
            // A lease granted but unanswered is harmless (it ends unused), so
            // any failure but a full store is a plain "cannot reach".
            .map_err(|err| match write_failed(err) {
                full @ StoreError::NoSpace(_) => full,
                other => unreachable(other),
            })?;
        Ok(lease.id())
    }

    /// The answer to a write committed at `revision`, once this kv-server's
    /// feed has it (bounded by the deadline: the write is committed anyway),
    /// so that a client that writes and then watches from the write's
    /// revision through this server finds it.
    async fn committed(&self, revision: u64, outcome: WriteOutcome) -> Result<WriteOutcome, StoreError> {
        if !self.inner.feed.wait_for(revision, self.inner.timeout).await {
            tracing::warn!(
                revision,
                "the etcd watch has not delivered a committed write within --etcd-timeout"
            );
        }
        Ok(outcome)
    }

    /// After a put whose outcome is unknown (its connection broke after
    /// sending, not a timeout): whether the key now holds that very write
    /// (its write id), read up to three times over 0.4 s. Found means
    /// applied; not found leaves the outcome unknown (the write may still be
    /// in flight, or overwritten since).
    ///
    /// `NOSPACE` is asked too: etcd applies the write that crosses the space
    /// quota and only then answers "database space exceeded" (its quota
    /// applier), so that one write is stored; the writes after it, refused
    /// once the alarm is raised, are not.
    async fn find_write(&self, full: &[u8], id: u64, failed: &StoreError) -> Option<Current> {
        if !matches!(failed, StoreError::OutcomeUnknown(_) | StoreError::NoSpace(_)) || id == 0 {
            return None;
        }
        // A proposal forwarded by a member that died may still reach the
        // leader's log a moment later: look a few times. A NOSPACE answer
        // comes after the write was applied, or not at all: once is enough.
        let pauses: &[u64] = if matches!(failed, StoreError::NoSpace(_)) {
            &[0]
        } else {
            &[0, 100, 300]
        };
        for &pause in pauses {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            if let Ok(Some(current)) = self.read_current(full).await
                && current.envelope.write_id == id
            {
                tracing::info!(
                    revision = current.mod_revision,
                    "a write whose connection broke was applied"
                );
                return Some(current);
            }
        }
        None
    }

    async fn put_plain(&self, key: String, value: Bytes, content_type: String, expiry: Expiry) -> WriteResult {
        let full = self.full_key(&key);
        let (expires_at, lease) = match expiry {
            Expiry::After(ttl) => {
                let at = expiry::deadline(expiry::now_ms(), ttl);
                (Some(at), Some(self.lease_until(at).await?))
            }
            _ => (None, None),
        };
        let mut options = PutOptions::new().with_prev_key();
        if let Some(lease) = lease {
            options = options.with_lease(lease);
        }
        let id = write_id();
        let envelope = Envelope::encode(&content_type, expires_at, id, &value);
        drop(value);
        let response = self
            .timed(|mut c| {
                let (full, envelope, options) = (full.clone(), envelope.clone(), options.clone());
                async move { c.put(full, envelope, Some(options)).await }
            })
            .await
            .map_err(|_| StoreError::OutcomeUnknown("a put took longer than --etcd-timeout".into()))?;
        let response = match response {
            Ok(response) => response,
            Err(err) => {
                let failed = write_failed(err);
                return match self.find_write(&full, id, &failed).await {
                    Some(found) => {
                        self.committed(
                            found.mod_revision,
                            WriteOutcome::Stored {
                                revision: found.mod_revision,
                                created: found.create_revision == found.mod_revision,
                                expires_at,
                            },
                        )
                        .await
                    }
                    None => Err(failed),
                };
            }
        };
        let revision = rev(response.header().map_or(0, |h| h.revision()));
        let now = expiry::now_ms();
        let created = response
            .prev_key()
            .and_then(|kv| Envelope::decode(kv.value()))
            .is_none_or(|prev| !prev.live(now));
        self.committed(
            revision,
            WriteOutcome::Stored {
                revision,
                created,
                expires_at,
            },
        )
        .await
    }

    async fn delete_plain(&self, key: String) -> WriteResult {
        let full = self.full_key(&key);
        let response = self
            .timed(|mut c| {
                let full = full.clone();
                async move { c.delete(full, Some(DeleteOptions::new().with_prev_key())).await }
            })
            .await
            .map_err(|_| StoreError::OutcomeUnknown("a delete took longer than --etcd-timeout".into()))?
            .map_err(|err| space_unknown(write_failed(err)))?;
        let now = expiry::now_ms();
        let live = response
            .prev_kvs()
            .first()
            .and_then(|kv| Envelope::decode(kv.value()))
            .is_some_and(|prev| prev.live(now));
        if response.deleted() == 0 || !live {
            // Nothing, or only a key past its deadline (now removed, which
            // its lease would have done): absent, as the embedded engine says.
            return Ok(WriteOutcome::NotFound);
        }
        let revision = rev(response.header().map_or(0, |h| h.revision()));
        self.committed(revision, WriteOutcome::Deleted { revision }).await
    }

    /// A read, a check, and a transaction that commits only if the key is
    /// still what was read; again if it is not.
    async fn read_check_commit(&self, op: WriteOp) -> WriteResult {
        let key = op.key().to_owned();
        let full = self.full_key(&key);
        let id = write_id();
        for _ in 0..64 {
            let current = self.read_current(&full).await?;
            let now = expiry::now_ms();
            let live = current.as_ref().filter(|c| c.envelope.live(now));
            let version = live.map(|c| c.mod_revision);
            let precondition = match &op {
                WriteOp::Put { precondition, .. }
                | WriteOp::Delete { precondition, .. }
                | WriteOp::Touch { precondition, .. } => precondition,
                WriteOp::Expire { .. } => return Ok(WriteOutcome::NotFound),
            };
            if !precondition.allows(version) {
                return Ok(WriteOutcome::PreconditionFailed { current: version });
            }
            // What to write, and what the answer says.
            let (action, expires_at) = match &op {
                WriteOp::Put {
                    value,
                    content_type,
                    expiry,
                    ..
                } => {
                    let (expires_at, lease) = match expiry {
                        Expiry::Clear => (None, None),
                        Expiry::Keep => match live {
                            Some(c) if c.envelope.expires_at.is_some() => (c.envelope.expires_at, Some(c.lease)),
                            _ => (None, None),
                        },
                        Expiry::After(ttl) => {
                            let at = expiry::deadline(now, *ttl);
                            (Some(at), Some(self.lease_until(at).await?))
                        }
                    };
                    let mut options = PutOptions::new();
                    if let Some(lease) = lease.filter(|l| *l != 0) {
                        options = options.with_lease(lease);
                    }
                    let envelope = Envelope::encode(content_type, expires_at, id, value);
                    (TxnOp::put(full.clone(), envelope, Some(options)), expires_at)
                }
                WriteOp::Touch { touch, .. } => {
                    let Some(c) = live else {
                        return Ok(WriteOutcome::NotFound);
                    };
                    let (expires_at, lease) = match touch {
                        Touch::Persist => (None, None),
                        Touch::After(ttl) => {
                            let at = expiry::deadline(now, *ttl);
                            (Some(at), Some(self.lease_until(at).await?))
                        }
                    };
                    let mut options = PutOptions::new();
                    if let Some(lease) = lease {
                        options = options.with_lease(lease);
                    }
                    let envelope = Envelope::encode(&c.envelope.content_type, expires_at, id, &c.envelope.value);
                    (TxnOp::put(full.clone(), envelope, Some(options)), expires_at)
                }
                WriteOp::Delete { .. } => {
                    if live.is_none() {
                        return Ok(WriteOutcome::NotFound);
                    }
                    (TxnOp::delete(full.clone(), None), None)
                }
                WriteOp::Expire { .. } => return Ok(WriteOutcome::NotFound),
            };
            let compare = match &current {
                Some(c) => Compare::mod_revision(
                    full.clone(),
                    CompareOp::Equal,
                    i64::try_from(c.mod_revision).unwrap_or(0),
                ),
                None => Compare::create_revision(full.clone(), CompareOp::Equal, 0),
            };
            let txn = Txn::new().when([compare]).and_then([action]);
            let response = self
                .timed(|mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await
                .map_err(|_| StoreError::OutcomeUnknown("a transaction took longer than --etcd-timeout".into()))?;
            let response = match response {
                Ok(response) => response,
                Err(err) => {
                    let failed = write_failed(err);
                    let is_put = !matches!(op, WriteOp::Delete { .. });
                    let found = if is_put {
                        self.find_write(&full, id, &failed).await
                    } else {
                        return Err(space_unknown(failed));
                    };
                    return match found {
                        // The transaction compared the version read, so
                        // `live` is what it replaced.
                        Some(found) => {
                            let outcome = WriteOutcome::Stored {
                                revision: found.mod_revision,
                                created: live.is_none(),
                                expires_at,
                            };
                            self.committed(found.mod_revision, outcome).await
                        }
                        None => Err(failed),
                    };
                }
            };
            if !response.succeeded() {
                // Another write came between the read and the transaction.
                continue;
            }
            let revision = rev(response.header().map_or(0, |h| h.revision()));
            let outcome = match op {
                WriteOp::Delete { .. } => WriteOutcome::Deleted { revision },
                _ => WriteOutcome::Stored {
                    revision,
                    created: live.is_none(),
                    expires_at,
                },
            };
            return self.committed(revision, outcome).await;
        }
        Err(StoreError::Unreachable(format!(
            "the key '{key}' kept changing under a conditional write; gave up after 64 tries"
        )))
    }
}

type WriteResult = Result<WriteOutcome, StoreError>;

fn unconditional(precondition: &Precondition) -> bool {
    precondition.if_match == Condition::None && precondition.if_none_match == Condition::None
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> StoreFuture<Option<Entry>> {
        let store = self.clone();
        let full = self.full_key(key);
        async move {
            let response = store
                .timed(|mut c| {
                    let full = full.clone();
                    async move { c.get(full, None).await }
                })
                .await
                .map_err(|_| unreachable("a read took longer than --etcd-timeout"))?
                .map_err(unreachable)?;
            let now = expiry::now_ms();
            Ok(response
                .kvs()
                .first()
                .and_then(|kv| store.entry(kv, false))
                .filter(|(_, envelope)| envelope.live(now))
                .map(|(entry, _)| entry))
        }
        .boxed()
    }

    fn scan(&self, scan: Scan) -> StoreFuture<Scanned> {
        let store = self.clone();
        async move {
            let base = store.full_key(&scan.prefix);
            let end = prefix_end(&base);
            let mut start = match &scan.after {
                Some(after) if after.as_str() >= scan.prefix.as_str() => {
                    let mut from = store.full_key(after);
                    from.push(0);
                    from
                }
                _ => base,
            };
            let mut scanned = Scanned {
                entries: Vec::with_capacity(scan.limit.min(1024)),
                ..Scanned::default()
            };
            let mut bytes = 0usize;
            // Every range after the first reads at the first one's revision,
            // and so does every page after the listing's first (the cursor
            // carries it): one listing is one snapshot, however many ranges
            // and pages it takes, until etcd compacts that revision.
            let mut at = scan.at.and_then(|at| i64::try_from(at).ok()).unwrap_or(0);
            // Entries per range: a few at first, then as many as the byte
            // budget holds at the sizes seen so far, so that a range of large
            // values never brings back far more than the scan keeps (etcd has
            // no byte limit on a range); halved when an answer is over
            // MAX_MESSAGE anyway.
            let mut per_range = FIRST_RANGE;
            let (mut seen, mut seen_bytes) = (0usize, 0usize);
            loop {
                let want = scan.limit.saturating_sub(scanned.entries.len());
                // One more than wanted, to know whether more follow.
                let limit = want.min(per_range).min(1000) + 1;
                let mut options = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(i64::try_from(limit).unwrap_or(1001));
                if at > 0 {
                    options = options.with_revision(at);
                }
                let response = store
                    .timed(|c| {
                        let (start, options) = (start.clone(), options.clone());
                        let mut kv = c.kv_client().max_decoding_message_size(MAX_MESSAGE);
                        async move { kv.get(start, Some(options)).await }
                    })
                    .await
                    .map_err(|_| unreachable("a range read took longer than --etcd-timeout"))?;
                let response = match response {
                    Ok(response) => response,
                    Err(err) if over_message_limit(&err) && limit > 2 => {
                        per_range = limit / 2;
                        continue;
                    }
                    Err(err) => return Err(read_at_failed(err, at)),
                };
                if at == 0 {
                    at = response.header().map_or(0, |h| h.revision());
                }
                scanned.revision = Some(rev(at));
                let now = expiry::now_ms();
                let kvs = response.kvs();
                seen += kvs.len();
                seen_bytes += kvs.iter().map(|kv| kv.key().len() + kv.value().len()).sum::<usize>();
                for kv in kvs {
                    start = kv.key().to_vec();
                    start.push(0);
                    let Some((entry, envelope)) = store.entry(kv, scan.keys_only) else {
                        continue;
                    };
                    if !envelope.live(now) {
                        continue;
                    }
                    if scanned.entries.len() >= scan.limit {
                        scanned.more = true;
                        return Ok(scanned);
                    }
                    let size = entry.key.len() + if scan.keys_only { 0 } else { kv.value().len() };
                    if !scanned.entries.is_empty() && bytes.saturating_add(size) > scan.max_bytes {
                        scanned.more = true;
                        return Ok(scanned);
                    }
                    bytes += size;
                    scanned.entries.push(entry);
                }
                let average = seen_bytes / seen.max(1);
                per_range = (scan.max_bytes.saturating_sub(bytes) / average.max(1)).clamp(1, 1000);
                if !response.more() || kvs.is_empty() {
                    return Ok(scanned);
                }
            }
        }
        .boxed()
    }

    fn len(&self) -> StoreFuture<u64> {
        let store = self.clone();
        async move {
            let prefix = store.inner.prefix.clone();
            let response = store
                .timed(|mut c| {
                    let prefix = prefix.clone();
                    async move {
                        c.get(prefix, Some(GetOptions::new().with_prefix().with_count_only()))
                            .await
                    }
                })
                .await
                .map_err(|_| unreachable("counting keys took longer than --etcd-timeout"))?
                .map_err(unreachable)?;
            Ok(rev(response.count()))
        }
        .boxed()
    }

    fn revision(&self) -> u64 {
        // What this kv-server's feed has: a `since` up to it is never ahead.
        self.inner.feed.head()
    }

    fn healthy(&self) -> StoreFuture<()> {
        // A linearizable read: it needs a leader and a quorum, as writes do.
        self.len().map(|r| r.map(drop)).boxed()
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        let store = self.clone();
        async move {
            store.inner.stop.send_replace(true);
            let task = store.inner.watcher.lock().expect("watcher lock").take();
            if let Some(task) = task {
                let _ = task.await;
            }
        }
        .boxed()
    }

    fn location(&self) -> String {
        format!(
            "etcd at {} under '{}'",
            self.inner.endpoints.join(","),
            self.inner.prefix
        )
    }

    fn feed(&self) -> &Arc<Feed> {
        &self.inner.feed
    }

    fn write(&self, op: WriteOp) -> BoxFuture<'static, Result<WriteOutcome, StoreError>> {
        let store = self.clone();
        async move {
            match op {
                WriteOp::Put {
                    key,
                    value,
                    content_type,
                    precondition,
                    expiry,
                } if unconditional(&precondition) && expiry != Expiry::Keep => {
                    store.put_plain(key, value, content_type, expiry).await
                }
                WriteOp::Delete { key, precondition } if unconditional(&precondition) => store.delete_plain(key).await,
                // The sweep's removals are etcd's leases here.
                WriteOp::Expire { .. } => Ok(WriteOutcome::NotFound),
                op => store.read_check_commit(op).await,
            }
        }
        .boxed()
    }
}

/// The change feed over etcd: one watch on the prefix from the revision the
/// store opened at, with `prev_kv` (to tell an expiry from a delete) and
/// progress notifications; each response's events are published as one
/// batch. A lost watch is opened again from the last revision published; a
/// watch whose start was compacted resets the feed (every subscriber gets a
/// `reset`) and starts again from the cluster's current revision.
async fn watch_loop(store: EtcdStore, opened_at: u64, mut stop: watch::Receiver<bool>) {
    let mut last = opened_at;
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        let outcome = tokio::select! {
            outcome = watch_once(&store, &mut last) => outcome,
            _ = stop.changed() => return,
        };
        match outcome {
            WatchEnd::Compacted => {
                // Learn the current revision and restart the history there.
                let prefix = store.inner.prefix.clone();
                match store
                    .timed(|mut c| {
                        let prefix = prefix.clone();
                        async move {
                            c.get(prefix, Some(GetOptions::new().with_prefix().with_count_only()))
                                .await
                        }
                    })
                    .await
                {
                    Ok(Ok(response)) => {
                        let now = rev(response.header().map_or(0, |h| h.revision()));
                        tracing::warn!(from = last, to = now, "etcd compacted the feed's history: feed reset");
                        store.inner.feed.reset(now);
                        last = now.max(last);
                        failures = 0;
                    }
                    _ => failures += 1,
                }
            }
            WatchEnd::Lost(why) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(resume_from = last + 1, cause = %why, "the etcd watch was lost; reopening it");
                }
            }
        }
        let pause = Duration::from_millis(50 * u64::from(failures.min(10)));
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
    }
}

enum WatchEnd {
    Compacted,
    Lost(String),
}

async fn watch_once(store: &EtcdStore, last: &mut u64) -> WatchEnd {
    // Fragments: etcd splits an answer over its request limit (a backlog
    // of large values) into several, each taken as it comes; only events'
    // own revisions move `last`.
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(i64::try_from(*last + 1).unwrap_or(i64::MAX))
        .with_prev_key()
        .with_progress_notify()
        .with_fragment();
    let prefix = store.inner.prefix.clone();
    let watch = store
        .timed(|c| {
            let (prefix, options) = (prefix.clone(), options.clone());
            let mut watch = c.watch_client().max_decoding_message_size(MAX_MESSAGE);
            async move { watch.watch(prefix, Some(options)).await }
        })
        .await;
    let mut stream = match watch {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return WatchEnd::Lost(err.to_string()),
        Err(_) => return WatchEnd::Lost("opening the watch took longer than --etcd-timeout".into()),
    };
    loop {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => return WatchEnd::Lost("the watch stream ended".into()),
            Err(err) => return WatchEnd::Lost(err.to_string()),
        };
        if message.canceled() {
            if message.compact_revision() > 0 {
                return WatchEnd::Compacted;
            }
            return WatchEnd::Lost(format!("the watch was cancelled: {}", message.cancel_reason()));
        }
        let events = message.events();
        tracing::debug!(
            events = events.len(),
            created = message.created(),
            revision = message.header().map(|h| h.revision()),
            "etcd watch response"
        );
        if events.is_empty() {
            // A progress notification (or the watch's creation): etcd 3.4
            // sends the periodic ones only to a watcher that has delivered
            // everything up to the header's revision. On-demand progress
            // (which can run ahead of events in 3.4.23) is never requested.
            if !message.created()
                && let Some(header) = message.header()
            {
                let revision = rev(header.revision());
                if revision > *last {
                    *last = revision;
                    store.inner.feed.advance(revision);
                }
            }
            continue;
        }
        let now = expiry::now_ms();
        let mut records = Vec::with_capacity(events.len());
        for event in events {
            let Some(kv) = event.kv() else { continue };
            let revision = rev(kv.mod_revision());
            if revision <= *last {
                continue;
            }
            let Some(key) = store.strip(kv.key()) else { continue };
            match event.event_type() {
                EventType::Put => {
                    let Some(envelope) = Envelope::decode(kv.value()) else {
                        continue;
                    };
                    records.push(Record::put(
                        revision,
                        key,
                        &envelope.value,
                        &envelope.content_type,
                        envelope.expires_at,
                    ));
                }
                EventType::Delete => {
                    let expired = event
                        .prev_kv()
                        .and_then(|prev| Envelope::decode(prev.value()))
                        .is_some_and(|prev| !prev.live(now));
                    records.push(Record::delete(revision, key, expired));
                }
            }
        }
        if let Some(newest) = records.last().map(|r| r.rev) {
            *last = newest;
            store.inner.feed.publish(records);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_refuse_what_they_do_not_know() {
        let bytes = Envelope::encode("text/plain", Some(1_700_000_000_000), 42, b"hello");
        let envelope = Envelope::decode(&bytes).expect("decodes");
        assert_eq!(envelope.content_type, "text/plain");
        assert_eq!(envelope.expires_at, Some(1_700_000_000_000));
        assert_eq!(envelope.write_id, 42);
        assert_eq!(&envelope.value[..], b"hello");
        let none = Envelope::decode(&Envelope::encode("", None, 0, b"")).expect("decodes");
        assert_eq!(none.expires_at, None);
        assert!(Envelope::decode(b"").is_none());
        assert!(Envelope::decode(b"\x02rest-of-it").is_none());
        assert!(Envelope::decode(&bytes[..5]).is_none());
    }

    #[test]
    fn a_prefix_ends_after_its_last_key() {
        assert_eq!(prefix_end(b"kv/"), b"kv0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
