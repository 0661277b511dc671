//! `kv watch`: prints changes as they happen, from the change feed
//! (`GET /kv?watch=1`). One line a change, `12 PUT name Derek Moss` or
//! `13 DELETE name` (key and value quoted as telnet quotes them), or the
//! feed's JSON objects with `--json`. A dropped connection is resumed from the
//! last revision seen; when the history no longer reaches it, `kv watch` says
//! so on stderr and continues from the current revision.

use std::io::Write;
use std::time::Duration;

use futures_util::StreamExt as _;
use kv_api::feed::{Compacted, Event, Kind, WatchQuery};
use kv_api::quote;
use reqwest::StatusCode;

use crate::client::Client;
use crate::error::CliError;

/// The longest wait between two attempts to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Only keys starting with this.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Start after this revision (exclusive): every change after it is
    /// printed, then the new ones. By default, only changes from now on.
    #[arg(long)]
    pub since: Option<u64>,
    /// Print the feed's events as JSON objects, one a line, progress and all.
    #[arg(long)]
    pub json: bool,
}

/// One change as a line: the revision, the operation, the key, the value.
pub fn change_line(event: &Event) -> Option<String> {
    let rev = event.rev?;
    let key = quote::render_key(&event.key_text()?);
    match event.kind {
        Kind::Put => match event.value_bytes() {
            Some(value) => Some(format!("{rev} PUT {key} {}", quote::render_value(&value))),
            None => Some(format!(
                "{rev} PUT {key} ({} bytes, not shown)",
                event.size.unwrap_or_default()
            )),
        },
        Kind::Delete => Some(format!("{rev} DELETE {key}")),
        _ => None,
    }
}

pub async fn run(client: &Client, args: WatchArgs) -> Result<(), CliError> {
    let mut since = args.since;
    let mut connected_once = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let query = WatchQuery {
            since,
            prefix: args.prefix.clone().unwrap_or_default(),
            values: true,
        };
        let response = match client.watch(&query).await {
            Ok(response) => response,
            Err(err @ CliError::Unreachable(_)) if connected_once => {
                eprintln!("kv watch: {err}; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(err) => return Err(err),
        };
        match response.status() {
            StatusCode::OK => {}
            StatusCode::GONE => {
                let body = response.bytes().await.unwrap_or_default();
                let compacted = serde_json::from_slice::<Compacted>(&body).ok();
                say_reset(since, compacted.as_ref().map(|c| (c.oldest, c.current)));
                since = None;
                continue;
            }
            _ => return Err(client.failure(response).await),
        }
        connected_once = true;
        backoff = Duration::from_millis(100);
        let mut lines = kv_edge::client::ndjson_lines(response, "feed");
        let mut out = std::io::stdout();
        let lost = loop {
            let line = match lines.next().await {
                Some(Ok(line)) => line,
                Some(Err(err)) => break err,
                None => break "the connection closed".to_owned(),
            };
            let Ok(event) = serde_json::from_str::<Event>(&line) else {
                break format!("a malformed line: {}", line.chars().take(100).collect::<String>());
            };
            if args.json {
                writeln!(out, "{line}")?;
            } else if let Some(text) = change_line(&event) {
                writeln!(out, "{text}")?;
            }
            out.flush()?;
            match event.kind {
                Kind::Reset => {
                    say_reset(since, event.oldest.zip(event.current));
                    since = event.current;
                }
                _ => {
                    if let Some(rev) = event.rev {
                        since = Some(rev);
                    }
                }
            }
        };
        match since {
            Some(rev) => eprintln!("kv watch: {lost}; resuming after revision {rev}"),
            None => eprintln!("kv watch: {lost}; reconnecting"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn say_reset(since: Option<u64>, range: Option<(u64, u64)>) {
    let since = since.map_or_else(|| "the requested revision".to_owned(), |rev| format!("revision {rev}"));
    match range {
        Some((oldest, current)) => eprintln!(
            "kv watch: RESET: the server's history no longer reaches {since} (it keeps changes after {oldest}); \
             changes up to {current} were missed: continuing from revision {current}"
        ),
        None => eprintln!(
            "kv watch: RESET: the server's history no longer reaches {since}; changes were missed: \
             continuing from the current revision"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_print_as_telnet_quotes_them() {
        let put = Event::put(12, "name", b"Derek Moss", "text/plain", None, true);
        assert_eq!(change_line(&put).unwrap(), "12 PUT name Derek Moss");
        assert_eq!(
            change_line(&Event::delete(13, "name", false)).unwrap(),
            "13 DELETE name"
        );
        assert_eq!(change_line(&Event::progress(14)), None);
    }
}
