//! The telnet line adapter: `telnet 127.0.0.1 2323`, then `PUT name Derek
//! Moss`, `GET name`, `DUMP`. It speaks to the same cache and upstream as the
//! HTTP front, so a GET here is cached like one there.
//!
//! [`connection`] turns bytes into bounded lines, [`kv_api::command`] turns a line
//! into a [`Command`], [`kv_api::interpreter`] answers it over this adapter's
//! backend (the proxy's service), and the session loop here never touches bytes.

pub mod connection;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use bytes::Bytes;
use futures_util::StreamExt;
use kv_api::ErrorBody;
use kv_api::dump::{Item, content_type_for};
use kv_api::expiry::{Expiry, Touch};
use kv_api::interpreter::{self, Next};
use kv_api::source::Source;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::connection::{Connection, Frame};
use crate::cache::{CacheStatus, Cached};
use crate::config::TelnetLimits;
use crate::service::{GetError, Service};
use crate::upstream::Relayed;
pub use kv_api::command::Command;
use kv_api::command::{ParseError, looks_like_http};

/// What every session shares.
#[derive(Clone)]
pub struct Session {
    pub service: Service,
    pub limits: TelnetLimits,
    /// With a token, a session must send `AUTH <token>` before anything else.
    pub token: Option<kv_edge::auth::Token>,
}

/// Accepts telnet clients until `cancel` fires, then tells each session to
/// end and waits for them.
pub async fn serve(listener: TcpListener, shared: Session, cancel: CancellationToken) {
    let limits = &shared.limits;
    let slots = Arc::new(Semaphore::new(limits.telnet_max_connections));
    let tracker = TaskTracker::new();
    let workers = kv_edge::workers::Workers::start()
        .inspect_err(|err| tracing::warn!(cause = %err, "cannot start the telnet threads; serving on the main runtime"))
        .ok();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(cause = %err, "telnet accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = cancel.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = limits.telnet_max_connections, "telnet connection refused: too many connections");
            tracker.spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (shared, cancel, tracker) = (shared.clone(), cancel.clone(), tracker.clone());
        let serve_session = move |stream: TcpStream| {
            tracker.track_future(async move {
                if let Err(err) = session(stream, &shared, &cancel).await {
                    tracing::debug!(%peer, cause = %err, "telnet session ended with an error");
                }
                drop(slot);
            })
        };
        match &workers {
            Some(workers) => workers.spawn(stream, serve_session),
            None => {
                tokio::spawn(serve_session(stream));
            }
        }
    }
    drop(listener);
    tracker.close();
    // Sessions were told to end; one stuck writing to a client that does not
    // read ends at its write timeout, which may be far. Shutdown does not wait
    // for it: past the grace, the session threads stop (with `workers`, when
    // this returns) and what is left of the sessions is dropped.
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        tracing::warn!(
            sessions = tracker.len(),
            "telnet sessions still busy {}s after shutdown began (clients not reading); closing them",
            SHUTDOWN_GRACE.as_secs()
        );
    }
}

/// How long shutdown waits for telnet sessions to end.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

async fn refuse(stream: TcpStream) {
    let (reader, writer) = stream.into_split();
    let mut connection = Connection::new(reader, writer, 0);
    let reply = async {
        connection
            .write_line(b"ERR too many connections; try again later")
            .await?;
        connection.flush().await?;
        connection.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), reply).await;
}

/// What woke the session loop.
enum Event {
    Frame(std::io::Result<Option<Frame>>),
    Idle,
    Shutdown,
}

async fn session(stream: TcpStream, shared: &Session, cancel: &CancellationToken) -> std::io::Result<()> {
    let (service, limits) = (&shared.service, &shared.limits);
    let mut authenticated = shared.token.is_none();
    // `VERBOSE ON`: GET answers say where the value came from.
    let verbose = std::sync::atomic::AtomicBool::new(false);
    let (reader, writer) = stream.into_split();
    let max_line = usize::try_from(limits.telnet_max_line).unwrap_or(usize::MAX);
    let mut connection = Connection::new(reader, writer, max_line).with_write_timeout(limits.telnet_write_timeout);
    // One idle timer and one shutdown waiter for the whole session: arming a
    // timer and a waiter for every line cost more than the rest of a cached GET.
    // The timer is re-armed only when it fires before the session was idle
    // for the whole timeout.
    let idle_timeout = limits.telnet_idle_timeout;
    let mut active_at = tokio::time::Instant::now();
    let idle = tokio::time::sleep(idle_timeout);
    let shutdown = cancel.cancelled();
    tokio::pin!(idle, shutdown);
    loop {
        let event = tokio::select! {
            frame = connection.read_frame() => Event::Frame(frame),
            () = &mut idle => {
                let deadline = active_at + idle_timeout;
                if tokio::time::Instant::now() < deadline {
                    idle.as_mut().reset(deadline);
                    continue;
                }
                Event::Idle
            }
            () = &mut shutdown => Event::Shutdown,
        };
        let next = match event {
            Event::Shutdown => {
                connection.write_line(b"BYE the proxy is shutting down").await?;
                break;
            }
            Event::Idle => {
                let idle = humantime::format_duration(idle_timeout);
                connection
                    .write_line(format!("ERR idle for {idle}; closing the connection").as_bytes())
                    .await?;
                Next::Close
            }
            Event::Frame(frame) => match frame? {
                None => Next::Close,
                Some(Frame::TooLong) => {
                    let message = format!("ERR line too long: at most {max_line} bytes; the line was skipped");
                    connection.write_line(message.as_bytes()).await?;
                    Next::Continue
                }
                Some(Frame::Line(line)) if looks_like_http(&line) => {
                    tracing::warn!("closing a telnet connection that sent an HTTP request");
                    return Ok(());
                }
                Some(Frame::Line(line)) => match Command::parse(&line) {
                    Ok(None) => Next::Continue,
                    Ok(Some(Command::Auth { token })) => {
                        let reply: &[u8] = match &shared.token {
                            Some(expected) if expected.matches(token.as_bytes()) => {
                                authenticated = true;
                                b"OK"
                            }
                            Some(_) => b"ERR invalid token",
                            None => b"ERR this proxy has no access token; AUTH is not needed",
                        };
                        connection.write_line(reply).await?;
                        Next::Continue
                    }
                    Ok(Some(command)) if !authenticated && !matches!(command, Command::Quit | Command::Help) => {
                        connection
                            .write_line(b"ERR authentication required: send AUTH <token> first")
                            .await?;
                        Next::Continue
                    }
                    Ok(Some(command)) => {
                        let lines = Lines {
                            service,
                            verbose: &verbose,
                        };
                        interpreter::execute(command, &lines, &mut connection).await?
                    }
                    Err(err) => {
                        connection.write_line(error_line(&err).as_bytes()).await?;
                        Next::Continue
                    }
                },
            },
        };
        if matches!(next, Next::Close) {
            break;
        }
        active_at = tokio::time::Instant::now();
        // Replies to pipelined commands leave together, after the last one.
        if !connection.has_frame() {
            connection.flush().await?;
        }
    }
    connection.flush().await?;
    connection.shutdown().await
}

fn error_line(err: &ParseError) -> String {
    format!("ERR {err}")
}

/// The line protocol's backend: the proxy's service, its cache and upstream.
struct Lines<'a> {
    service: &'a Service,
    /// The session's `VERBOSE` setting.
    verbose: &'a std::sync::atomic::AtomicBool,
}

/// A value as a GET over telnet answers it: the cached entry, shared, and
/// where this answer took it from.
struct Value(Arc<Cached>, Source);

impl AsRef<[u8]> for Value {
    fn as_ref(&self) -> &[u8] {
        &self.0.value
    }
}

impl interpreter::Backend for Lines<'_> {
    type Value = Value;
    type Pairs = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Item, String>> + Send>>;

    async fn get(&self, key: &str) -> Result<Option<Value>, String> {
        match self.service.get(key).await {
            Ok(lookup) => {
                let age_secs = lookup.age().as_secs();
                let source = match lookup.status {
                    CacheStatus::Hit => Source::Cached { age_secs },
                    CacheStatus::Stale => Source::Stale { age_secs },
                    CacheStatus::Miss => Source::Server,
                };
                Ok(lookup.value.map(|value| Value(value, source)))
            }
            Err(GetError::Unreachable(_)) => Err(UNAVAILABLE.to_owned()),
            Err(GetError::Refused(relayed)) => Err(upstream_error(&relayed)),
        }
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type_for(&value)));
        match self
            .service
            .write(Method::PUT, key, None, &headers, Bytes::from(value))
            .await
        {
            Ok(relayed) if relayed.status.is_success() => Ok(()),
            Ok(relayed) => Err(upstream_error(&relayed)),
            Err(_) => Err(UNAVAILABLE.to_owned()),
        }
    }

    async fn setex(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), String> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type_for(&value)));
        let query = Expiry::After(ttl).query();
        match self
            .service
            .write(Method::PUT, key, query, &headers, Bytes::from(value))
            .await
        {
            Ok(relayed) if relayed.status.is_success() => Ok(()),
            Ok(relayed) => Err(upstream_error(&relayed)),
            Err(_) => Err(UNAVAILABLE.to_owned()),
        }
    }

    async fn expire(&self, key: &str, ttl: Option<Duration>) -> Result<bool, String> {
        let touch = ttl.map_or(Touch::Persist, Touch::After);
        let headers = HeaderMap::new();
        match self
            .service
            .write(Method::PATCH, key, Some(touch.query()), &headers, Bytes::new())
            .await
        {
            Ok(relayed) if relayed.status.is_success() => Ok(true),
            Ok(relayed) if relayed.status == StatusCode::NOT_FOUND => Ok(false),
            Ok(relayed) => Err(upstream_error(&relayed)),
            Err(_) => Err(UNAVAILABLE.to_owned()),
        }
    }

    /// Through the cache, like GET: a cached entry's time left is counted now.
    async fn ttl(&self, key: &str) -> Result<Option<Option<Duration>>, String> {
        match self.service.get(key).await {
            Ok(lookup) => Ok(lookup.value.as_ref().map(|_| lookup.time_left())),
            Err(GetError::Unreachable(_)) => Err(UNAVAILABLE.to_owned()),
            Err(GetError::Refused(relayed)) => Err(upstream_error(&relayed)),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool, String> {
        match self
            .service
            .write(Method::DELETE, key, None, &HeaderMap::new(), Bytes::new())
            .await
        {
            Ok(relayed) if relayed.status.is_success() => Ok(true),
            Ok(relayed) if relayed.status == StatusCode::NOT_FOUND => Ok(false),
            Ok(relayed) => Err(upstream_error(&relayed)),
            Err(_) => Err(UNAVAILABLE.to_owned()),
        }
    }

    /// The upstream's NDJSON DUMP, streamed: never cached, never held whole.
    async fn dump(&self, prefix: Option<&str>) -> Result<Self::Pairs, String> {
        let query = kv_api::dump::Query {
            prefix: prefix.unwrap_or_default().to_owned(),
            ..Default::default()
        };
        let accept = HeaderValue::from_static("application/x-ndjson");
        match self
            .service
            .upstream
            .stream(&query.path_and_query(), Some(&accept))
            .await
        {
            Ok(response) if response.status().is_success() => Ok(Box::pin(
                kv_edge::client::ndjson_items(response).map(|item| item.map_err(|err| format!("{UNAVAILABLE}: {err}"))),
            )),
            Ok(_) | Err(_) => Err(UNAVAILABLE.to_owned()),
        }
    }

    async fn stats(&self) -> Result<Vec<(String, String)>, String> {
        Ok(self.service.stats().await)
    }

    fn bare_on_a_line(&self, value: &Value) -> bool {
        value.0.bare_on_a_line()
    }

    fn source(&self, value: &Value) -> Option<Source> {
        Some(value.1)
    }

    fn verbose(&self) -> bool {
        self.verbose.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_verbose(&self, on: bool) -> Result<(), &'static str> {
        self.verbose.store(on, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

impl<R, W> interpreter::Replies for Connection<R, W>
where
    R: tokio::io::AsyncRead + Unpin + Send,
    W: tokio::io::AsyncWrite + Unpin + Send,
{
    type Error = std::io::Error;

    async fn line(&mut self, parts: &[&[u8]]) -> std::io::Result<()> {
        self.write_parts(parts).await
    }
}

const UNAVAILABLE: &str = "upstream unavailable";

/// The message of an upstream error answer, for an `ERR` line.
fn upstream_error(relayed: &Relayed) -> String {
    match serde_json::from_slice::<ErrorBody>(&relayed.body) {
        Ok(body) if relayed.status.is_client_error() => body.message,
        Ok(body) => format!("{UNAVAILABLE}: {}", body.message),
        Err(_) => format!("{UNAVAILABLE}: it answered {}", relayed.status),
    }
}
