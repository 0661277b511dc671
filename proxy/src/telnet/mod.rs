//! The telnet line adapter: `telnet 127.0.0.1 2323`, then `PUT name Derek
//! Moss`, `GET name`, `DUMP`. It speaks to the same cache and upstream as the
//! HTTP front, so a GET here is cached like one there.
//!
//! [`connection`] turns bytes into bounded lines, [`kv_api::command`] turns a line
//! into a [`Command`], and the session loop here runs commands and never
//! touches bytes.

pub mod connection;

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, Method, header};
use bytes::Bytes;
use futures_util::StreamExt;
use kv_api::ErrorBody;
use kv_api::dump::Item;
use kv_api::quote;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::connection::{Connection, Frame};
use crate::config::TelnetLimits;
use crate::forward::Passed;
use crate::proxy::{Lookup, Proxy, ReadError};
pub use kv_api::command::Command;
use kv_api::command::{HELP, ParseError, looks_like_http};

/// What every session shares.
#[derive(Clone)]
pub struct Session {
    pub proxy: Proxy,
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

/// What the session loop does after a command.
enum Next {
    Continue,
    Close,
}

/// What woke the session loop.
enum Event {
    Frame(std::io::Result<Option<Frame>>),
    Idle,
    Shutdown,
}

async fn session(stream: TcpStream, shared: &Session, cancel: &CancellationToken) -> std::io::Result<()> {
    let (proxy, limits) = (&shared.proxy, &shared.limits);
    let mut authenticated = shared.token.is_none();
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
                    Ok(Some(command)) => execute(command, proxy, &mut connection).await?,
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

async fn execute<R, W>(command: Command, proxy: &Proxy, out: &mut Connection<R, W>) -> std::io::Result<Next>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    match command {
        Command::Get { key } => match proxy.get(&key).await {
            Ok(Lookup { value: Some(value), .. }) if value.bare_on_a_line() => {
                out.write_parts(&[b"VALUE ", &value.value]).await?;
            }
            Ok(Lookup { value: Some(value), .. }) => {
                out.write_parts(&[b"VALUE ", quote::quote(&value.value).as_bytes()])
                    .await?;
            }
            Ok(Lookup { value: None, .. }) => out.write_line(b"NOT_FOUND").await?,
            Err(ReadError::Forward(_)) => out.write_line(b"ERR upstream unavailable").await?,
            Err(ReadError::Upstream(passed)) => out.write_line(upstream_error(&passed).as_bytes()).await?,
        },
        Command::Put { key, value } => {
            let mut headers = HeaderMap::new();
            let content_type = if std::str::from_utf8(&value).is_ok() {
                "text/plain; charset=utf-8"
            } else {
                kv_api::dump::DEFAULT_CONTENT_TYPE
            };
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            let reply = match proxy.write(Method::PUT, &key, &headers, Bytes::from(value)).await {
                Ok(passed) if passed.status.is_success() => "OK".to_owned(),
                Ok(passed) => upstream_error(&passed),
                Err(_) => "ERR upstream unavailable".to_owned(),
            };
            out.write_line(reply.as_bytes()).await?;
        }
        Command::Del { key } => {
            let reply = match proxy.write(Method::DELETE, &key, &HeaderMap::new(), Bytes::new()).await {
                Ok(passed) if passed.status.is_success() => "OK".to_owned(),
                Ok(passed) if passed.status == axum::http::StatusCode::NOT_FOUND => "NOT_FOUND".to_owned(),
                Ok(passed) => upstream_error(&passed),
                Err(_) => "ERR upstream unavailable".to_owned(),
            };
            out.write_line(reply.as_bytes()).await?;
        }
        Command::Dump { prefix } => dump(proxy, prefix.as_deref(), out).await?,
        Command::Stats => {
            for (name, value) in proxy.stats().await {
                out.write_line(format!("{name} {value}").as_bytes()).await?;
            }
            out.write_line(b"END").await?;
        }
        Command::Help => {
            for line in HELP {
                out.write_line(line.as_bytes()).await?;
            }
            out.write_line(b"END").await?;
        }
        Command::Quit => {
            out.write_line(b"BYE").await?;
            return Ok(Next::Close);
        }
        Command::Auth { .. } => unreachable!("AUTH is answered by the session loop"),
    }
    Ok(Next::Continue)
}

/// `ERR <message>` from an upstream error answer.
fn upstream_error(passed: &Passed) -> String {
    match serde_json::from_slice::<ErrorBody>(&passed.body) {
        Ok(body) if passed.status.is_client_error() => format!("ERR {}", body.message),
        Ok(body) => format!("ERR upstream unavailable: {}", body.message),
        Err(_) => format!("ERR upstream unavailable: it answered {}", passed.status),
    }
}

/// Streams the upstream's NDJSON DUMP out as `key value` lines, then `END <count>`.
async fn dump<R, W>(proxy: &Proxy, prefix: Option<&str>, out: &mut Connection<R, W>) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let path = match prefix {
        Some(prefix) => format!("/kv?prefix={}", kv_api::key::encode_query_component(prefix)),
        None => "/kv".to_owned(),
    };
    let accept = HeaderValue::from_static("application/x-ndjson");
    let response = match proxy.forward.stream(&path, Some(&accept)).await {
        Ok(response) if response.status().is_success() => response,
        Ok(_) | Err(_) => return out.write_line(b"ERR upstream unavailable").await,
    };
    let mut body = response.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut count = 0u64;
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return out
                .write_line(b"ERR upstream unavailable: the listing was cut short")
                .await;
        };
        pending.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + end];
            start += end + 1;
            let Ok(item) = serde_json::from_slice::<Item>(line) else {
                continue;
            };
            let Ok(value) = item.value_bytes() else { continue };
            let text = format!("{} {}", quote::render_key(&item.key), quote::render_value(&value));
            out.write_line(text.as_bytes()).await?;
            count += 1;
        }
        pending.drain(..start);
    }
    out.write_line(format!("END {count}").as_bytes()).await
}
