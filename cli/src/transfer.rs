//! Whole keyspaces out and in: `kv dump`, `kv export` and `kv import`, all
//! streamed so that millions of keys take constant memory.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use indicatif::{ProgressBar, ProgressStyle};
use kv_api::dump::{DEFAULT_CONTENT_TYPE, Item};
use kv_api::expiry::Expiry;
use kv_api::quote;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::client::{Client, Precondition};
use crate::error::CliError;

/// How `kv dump` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpStyle {
    /// Aligned columns, for a terminal.
    Table,
    /// `key<TAB>value` lines, quoted where a tab or newline would break them.
    Tsv,
    /// One JSON array.
    Json,
    /// One JSON item per line: the export and import format.
    Ndjson,
}

/// Rows of a table are aligned within batches of this many.
const TABLE_BATCH: usize = 256;
/// The widest value column in a table.
const TABLE_VALUE_WIDTH: usize = 120;

pub async fn dump(client: &Client, prefix: Option<&str>, style: DumpStyle) -> Result<(), CliError> {
    let mut items = Box::pin(client.dump(prefix).await?);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut count = 0usize;
    let mut batch: Vec<(String, String)> = Vec::new();
    if style == DumpStyle::Json {
        out.write_all(b"[")?;
    }
    while let Some(item) = items.next().await {
        let item = item?;
        match style {
            DumpStyle::Ndjson | DumpStyle::Json => {
                if style == DumpStyle::Json && count > 0 {
                    out.write_all(b",")?;
                }
                let mut clean = item;
                clean.version = None;
                out.write_all(&serde_json::to_vec(&clean).map_err(|e| CliError::Io(e.to_string()))?)?;
                if style == DumpStyle::Ndjson {
                    out.write_all(b"\n")?;
                }
            }
            DumpStyle::Tsv => {
                let value = item.value_bytes().map_err(CliError::Server)?;
                writeln!(out, "{}\t{}", quote::render_key(&item.key), quote::render_value(&value))?;
            }
            DumpStyle::Table => {
                let value = item.value_bytes().map_err(CliError::Server)?;
                let mut shown = quote::render_value(&value);
                if shown.chars().count() > TABLE_VALUE_WIDTH {
                    shown = shown.chars().take(TABLE_VALUE_WIDTH - 1).collect::<String>() + "…";
                }
                batch.push((quote::render_key(&item.key), shown));
                if batch.len() >= TABLE_BATCH {
                    write_table(&mut out, &mut batch, count < TABLE_BATCH)?;
                }
            }
        }
        count += 1;
    }
    match style {
        DumpStyle::Json => out.write_all(b"]\n")?,
        DumpStyle::Table => {
            // The header only if no full batch (which had it) was written above.
            write_table(&mut out, &mut batch, count < TABLE_BATCH)?;
            writeln!(out, "({count} {})", if count == 1 { "pair" } else { "pairs" })?;
        }
        DumpStyle::Tsv | DumpStyle::Ndjson => {}
    }
    out.flush()?;
    Ok(())
}

fn write_table(out: &mut impl Write, rows: &mut Vec<(String, String)>, header: bool) -> std::io::Result<()> {
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(3)
        .clamp(3, 48);
    if header {
        writeln!(out, "{:width$}  VALUE", "KEY")?;
    }
    for (key, value) in rows.drain(..) {
        writeln!(out, "{key:width$}  {value}")?;
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The NDJSON file to read (`-` for standard input).
    pub file: PathBuf,
    /// Skip malformed lines (reporting them at the end) instead of stopping at the first.
    #[arg(long)]
    pub continue_on_error: bool,
    /// How many writes to have in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
}

/// The most malformed lines listed one by one in the summary.
const LISTED_ERRORS: usize = 10;

pub async fn import(client: &Client, args: &ImportArgs) -> Result<(), CliError> {
    let started = Instant::now();
    let (reader, total_bytes): (Box<dyn AsyncRead + Unpin + Send>, Option<u64>) = if args.file.as_os_str() == "-" {
        (Box::new(tokio::io::stdin()), None)
    } else {
        let file = tokio::fs::File::open(&args.file)
            .await
            .map_err(|err| CliError::Usage(format!("cannot open {}: {err}", args.file.display())))?;
        let size = file.metadata().await.ok().map(|m| m.len());
        (Box::new(file), size)
    };
    let progress = progress_bar(total_bytes);
    let mut lines = BufReader::with_capacity(1 << 16, reader).split(b'\n');
    let mut in_flight = FuturesUnordered::new();
    let mut line_number = 0u64;
    let mut imported = 0u64;
    let mut skipped: Vec<(u64, String)> = Vec::new();
    // Lines whose deadline had passed: not stored, counted.
    let mut expired = 0u64;
    let mut failure: Option<CliError> = None;

    while failure.is_none() {
        while in_flight.len() >= usize::from(args.concurrency) {
            if let Some(result) = in_flight.next().await {
                settle(result, &mut imported, &mut failure);
            }
        }
        let Some(line) = lines.next_segment().await? else { break };
        line_number += 1;
        progress.inc(line.len() as u64 + 1);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_line(&line) {
            Ok((key, value, content_type, expires_at)) => {
                // The deadline restored as it was: the time left from now, to the ms.
                let now = kv_api::expiry::now_ms();
                let expiry = match expires_at {
                    Some(at) if at <= now => {
                        expired += 1;
                        continue;
                    }
                    Some(at) => Expiry::After(Duration::from_millis(at - now)),
                    None => Expiry::Clear,
                };
                let client = client.clone();
                in_flight.push(async move {
                    let result = client
                        .put_with(&key, value, &content_type, Precondition::None, expiry)
                        .await;
                    (line_number, result)
                });
            }
            Err(message) if args.continue_on_error => skipped.push((line_number, message)),
            Err(message) => {
                failure = Some(CliError::Usage(format!(
                    "line {line_number} is malformed: {message}; nothing after it was imported \
                     (fix the line, or pass --continue-on-error to skip such lines)"
                )));
            }
        }
    }
    while let Some(result) = in_flight.next().await {
        settle(result, &mut imported, &mut failure);
    }
    progress.finish_and_clear();

    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "imported {imported} {} in {seconds:.1} s ({:.0} pairs/s)",
        if imported == 1 { "pair" } else { "pairs" },
        imported as f64 / seconds.max(1e-9)
    );
    if expired > 0 {
        eprintln!(
            "skipped {expired} expired {} (their expires_at had passed)",
            if expired == 1 { "pair" } else { "pairs" }
        );
    }
    if !skipped.is_empty() {
        eprintln!(
            "skipped {} malformed {}:",
            skipped.len(),
            if skipped.len() == 1 { "line" } else { "lines" }
        );
        for (line, message) in skipped.iter().take(LISTED_ERRORS) {
            eprintln!("  line {line}: {message}");
        }
        if skipped.len() > LISTED_ERRORS {
            eprintln!("  ... and {} more", skipped.len() - LISTED_ERRORS);
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Counts a finished write, or keeps the first failure (tagged with its line).
fn settle(result: (u64, Result<u64, CliError>), imported: &mut u64, failure: &mut Option<CliError>) {
    match result {
        (_, Ok(_)) => *imported += 1,
        (line, Err(err)) => {
            if failure.is_none() {
                let message = format!("line {line} was not stored: {err}; the import stopped there");
                *failure = Some(match err {
                    CliError::Usage(_) => CliError::Usage(message),
                    CliError::Unauthorized(_) => CliError::Unauthorized(message),
                    _ => CliError::Server(message),
                });
            }
        }
    }
}

/// One import line: an item with a key and a value (or value_base64), and
/// its deadline (unix ms) if it has one.
fn parse_line(line: &[u8]) -> Result<(String, Bytes, String, Option<u64>), String> {
    let item: Item = serde_json::from_slice(line).map_err(|err| format!("not a JSON item ({err})"))?;
    kv_api::key::validate(&item.key).map_err(|err| format!("bad key: {err}"))?;
    let value = item.value_bytes()?;
    let expires_at = item.expires_at_ms()?;
    let content_type = item.content_type.unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned());
    Ok((item.key, Bytes::from(value), content_type, expires_at))
}

fn progress_bar(total_bytes: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match total_bytes {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("valid template"),
        ),
        None => ProgressBar::new_spinner()
            .with_style(ProgressStyle::with_template("{spinner} {binary_bytes} read").expect("valid template")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_lines() {
        let (key, value, content_type, expires_at) = parse_line(br#"{"key":"k","value":"v"}"#).unwrap();
        assert_eq!(
            (key.as_str(), &value[..], content_type.as_str(), expires_at),
            ("k", &b"v"[..], DEFAULT_CONTENT_TYPE, None)
        );
        let (.., expires_at) =
            parse_line(br#"{"key":"k","value":"v","expires_at":"2023-11-14T22:13:21.532Z"}"#).unwrap();
        assert_eq!(expires_at, Some(1_700_000_001_532));
        assert!(parse_line(br#"{"key":"k","value":"v","expires_at":"soon"}"#).is_err());
        let (_, value, ..) = parse_line(br#"{"key":"k","value_base64":"/wA="}"#).unwrap();
        assert_eq!(&value[..], &[0xff, 0]);
        assert!(parse_line(b"{not json").unwrap_err().starts_with("not a JSON item"));
        assert!(parse_line(br#"{"key":"k"}"#).unwrap_err().contains("needs"));
        assert!(
            parse_line(br#"{"key":"","value":"v"}"#)
                .unwrap_err()
                .starts_with("bad key")
        );
    }
}
