//! Whole keyspaces out and in: `kv dump`, `kv export` and `kv import`, all
//! streamed so that millions of keys take constant memory.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use std::collections::HashMap;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use indicatif::{ProgressBar, ProgressStyle};
use kv_api::batch::{self, BatchError, Op};
use kv_api::quote;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::client::Client;
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
    /// How many batches (`POST /kv`, up to 4096 lines or 1 MiB each) to have in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
}

/// The most malformed lines listed one by one in the summary.
const LISTED_ERRORS: usize = 10;
/// A batch is sent once it holds this many lines, or this many bytes (a
/// single larger line goes alone): enough for the server to group-commit
/// thousands of writes under one fsync, well within its limits.
const BATCH_LINES: usize = 4096;
const BATCH_BYTES: usize = 1 << 20;
const _: () = assert!(BATCH_LINES <= kv_api::batch::MAX_LINES && BATCH_BYTES <= kv_api::batch::MIN_BODY_BYTES);

/// A batch being filled: its body, and the file line of each of its lines.
#[derive(Default)]
struct Batch {
    body: Vec<u8>,
    lines: Vec<u64>,
    keys: Vec<String>,
    /// A key of this batch is also in a batch still in flight: the batches
    /// before must be answered first, so that a key's lines land in file order.
    waits: bool,
}

/// What the import did, counted from the server's answers.
#[derive(Default)]
struct Tally {
    imported: u64,
    deleted: u64,
    /// Deletes of keys that were not there.
    absent: u64,
    /// Lines whose deadline had passed: not stored, counted (by us or the server).
    expired: u64,
    /// The first failure, said for a person.
    failure: Option<CliError>,
}

impl Tally {
    fn add(&mut self, summary: &kv_api::batch::Summary) {
        self.imported += summary.stored;
        self.deleted += summary.deleted;
        self.absent += summary.absent;
        self.expired += summary.expired;
    }

    /// Counts a batch's answer, or keeps the first failure, said with file line numbers.
    fn settle(&mut self, lines: &[u64], result: BatchResult) {
        let (err, refused) = match result {
            Ok(summary) => return self.add(&summary),
            Err(failed) => failed,
        };
        let (first, last) = (lines.first().copied().unwrap_or(0), lines.last().copied().unwrap_or(0));
        let file_line = |n: u64| {
            usize::try_from(n)
                .ok()
                .and_then(|n| n.checked_sub(1))
                .and_then(|i| lines.get(i).copied())
        };
        let message = match refused {
            Some(BatchError {
                line, done: Some(done), ..
            }) => {
                // Failed in the middle: the lines before `line` are durable.
                self.add(&done);
                let at = line.and_then(file_line).unwrap_or(first);
                format!(
                    "line {at} was not stored (its outcome is unknown, as is that of lines {at} to {last}): {err}; \
                     lines {first} to {at} before it were stored; the import stopped there"
                )
            }
            Some(BatchError { line: Some(line), .. }) if let Some(at) = file_line(line) => format!(
                "line {at} was refused: {err}; nothing of lines {first} to {last} was stored; the import stopped there"
            ),
            _ => format!(
                "line {first} was not stored: {err}; the outcome of lines {first} to {last} is unknown; \
                 the import stopped there"
            ),
        };
        if self.failure.is_none() {
            self.failure = Some(match err {
                CliError::Usage(_) => CliError::Usage(message),
                CliError::Unauthorized(_) => CliError::Unauthorized(message),
                _ => CliError::Server(message),
            });
        }
    }
}

type Sent = futures_util::future::BoxFuture<'static, (Vec<u64>, Vec<String>, BatchResult)>;

/// Imports an NDJSON file in batches (`POST /kv`), a few in flight. A
/// malformed line stops the import there (nothing after it is sent); lines
/// whose `expires_at` has passed are skipped and counted. Success is reported
/// only once every batch was answered as stored, which the server does only
/// once every line of it is durable.
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
    let mut in_flight: FuturesUnordered<Sent> = FuturesUnordered::new();
    // The keys of the batches in flight, with how many lines of them each has.
    let mut flying: HashMap<String, u32> = HashMap::new();
    let mut line_number = 0u64;
    let mut skipped: Vec<(u64, String)> = Vec::new();
    let mut tally = Tally::default();
    let mut batch = Batch::default();
    let mut malformed: Option<CliError> = None;
    let concurrency = usize::from(args.concurrency);

    loop {
        let line = if tally.failure.is_some() || malformed.is_some() {
            None
        } else {
            lines.next_segment().await?
        };
        let last = line.is_none();
        if let Some(line) = line {
            line_number += 1;
            progress.inc(line.len() as u64 + 1);
            if batch::is_blank(&line) {
                continue;
            }
            match batch::parse_line(&line) {
                Ok(op) => {
                    if let Op::Put {
                        expires_at: Some(at), ..
                    } = op
                        && at <= kv_api::expiry::now_ms()
                    {
                        tally.expired += 1;
                        continue;
                    }
                    let key = op.key().to_owned();
                    if !batch.lines.is_empty() && batch.body.len() + line.len() + 1 > BATCH_BYTES {
                        let full = std::mem::take(&mut batch);
                        dispatch(client, full, &mut in_flight, &mut flying, concurrency, &mut tally).await;
                    }
                    batch.waits |= flying.contains_key(&key);
                    batch.body.extend_from_slice(&line);
                    batch.body.push(b'\n');
                    batch.lines.push(line_number);
                    batch.keys.push(key);
                    if batch.lines.len() >= BATCH_LINES {
                        let full = std::mem::take(&mut batch);
                        dispatch(client, full, &mut in_flight, &mut flying, concurrency, &mut tally).await;
                    }
                    continue;
                }
                Err(err) if args.continue_on_error => {
                    skipped.push((line_number, err.message));
                    continue;
                }
                Err(err) => {
                    malformed = Some(CliError::Usage(format!(
                        "line {line_number} is malformed: {}; nothing after it was imported \
                         (fix the line, or pass --continue-on-error to skip such lines)",
                        err.message
                    )));
                }
            }
        }
        if last || malformed.is_some() {
            // The lines before a malformed one still go; nothing after it does.
            if !batch.lines.is_empty() && tally.failure.is_none() {
                let full = std::mem::take(&mut batch);
                dispatch(client, full, &mut in_flight, &mut flying, concurrency, &mut tally).await;
            }
            break;
        }
    }
    while let Some(done) = in_flight.next().await {
        settle(done, &mut tally, &mut flying);
    }
    progress.finish_and_clear();

    let seconds = started.elapsed().as_secs_f64();
    let imported = tally.imported;
    eprintln!(
        "imported {imported} {} in {seconds:.1} s ({:.0} pairs/s)",
        if imported == 1 { "pair" } else { "pairs" },
        imported as f64 / seconds.max(1e-9)
    );
    if tally.deleted + tally.absent > 0 {
        eprintln!(
            "deleted {} {} ({} of them were not there)",
            tally.deleted + tally.absent,
            if tally.deleted + tally.absent == 1 {
                "key"
            } else {
                "keys"
            },
            tally.absent
        );
    }
    if tally.expired > 0 {
        eprintln!(
            "skipped {} expired {} (their expires_at had passed)",
            tally.expired,
            if tally.expired == 1 { "pair" } else { "pairs" }
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
    match (malformed, tally.failure) {
        // A batch that failed says more (the server's side) than a malformed line after it.
        (_, Some(failure)) | (Some(failure), None) => Err(failure),
        (None, None) => Ok(()),
    }
}

/// Sends a batch once there is room for it in flight (and, if it shares a
/// key with a batch in flight, once every batch before it is answered).
async fn dispatch(
    client: &Client,
    batch: Batch,
    in_flight: &mut FuturesUnordered<Sent>,
    flying: &mut HashMap<String, u32>,
    concurrency: usize,
    tally: &mut Tally,
) {
    let limit = if batch.waits { 1 } else { concurrency };
    while in_flight.len() >= limit {
        match in_flight.next().await {
            Some(done) => settle(done, tally, flying),
            None => break,
        }
    }
    if tally.failure.is_some() {
        return;
    }
    for key in &batch.keys {
        *flying.entry(key.clone()).or_insert(0) += 1;
    }
    let client = client.clone();
    let Batch { body, lines, keys, .. } = batch;
    in_flight.push(Box::pin(async move {
        let result = client.batch(Bytes::from(body)).await;
        (lines, keys, result)
    }));
}

type BatchResult = Result<kv_api::batch::Summary, (CliError, Option<BatchError>)>;

/// Settles one answered batch: its keys are no longer in flight, its answer is counted.
fn settle(done: (Vec<u64>, Vec<String>, BatchResult), tally: &mut Tally, flying: &mut HashMap<String, u32>) {
    let (lines, keys, result) = done;
    for key in keys {
        if let Some(count) = flying.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                flying.remove(&key);
            }
        }
    }
    tally.settle(&lines, result);
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
