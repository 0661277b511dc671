//! `kv`: the command-line client, the interactive shell, and `kv up`.
//!
//! # Layout
//! - this file: the command line (clap) and the small commands.
//! - [`client`]: one method per HTTP API operation; HTTP answers to errors.
//! - [`error`]: the errors and their exit codes (0 ok, 1 not found, 2 usage,
//!   3 unreachable or server failure, 4 not authorized).
//! - [`shell`]: the interactive prompt, speaking the telnet adapter's commands.
//! - [`transfer`]: `kv export` and `kv import`, streamed.
//! - [`up`]: server and proxy together in one process.
//! - [`bench`]: the load generator.
//! - [`watch`]: `kv watch`, the change feed printed.

pub mod bench;
pub mod client;
pub mod error;
pub mod shell;
pub mod staleness;
pub mod transfer;
pub mod up;
pub mod watch;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{CommandFactory, Parser, Subcommand};
use kv_api::stats;
use kv_edge::units::parse_duration;

pub use client::Client;
pub use error::CliError;

/// kv: a durable key-value store with a caching proxy, from the command line.
///
/// Start everything with `kv up`, then `kv put name "Derek Moss"` and
/// `kv get name`. Commands talk to the proxy at --url (KV_URL).
#[derive(Debug, Parser)]
#[command(name = "kv", version, max_term_width = 100, propagate_version = true)]
pub struct Cli {
    /// Base URL of the kv proxy (or server) to talk to.
    #[arg(long, env = "KV_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,

    /// How long to wait for an answer, like 500ms or 30s.
    #[arg(long, env = "KV_TIMEOUT", default_value = "30s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,

    /// A PEM file of CA certificates to trust for an https:// --url, besides
    /// the system's: a private CA, or the server's self-signed certificate.
    #[arg(long, env = "KV_CACERT", value_name = "PATH", global = true)]
    pub cacert: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run kv-server and kv-proxy together in this process, on an embedded store.
    Up(up::UpArgs),
    /// Print a key's value exactly as stored.
    Get {
        key: String,
        /// Also say, on standard error, where the value came from: `(cached,
        /// 3 s old)` from a proxy's cache, or `(from server)`.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Store a value: `kv put KEY VALUE`, `kv put KEY -` (stdin) or `kv put KEY --file PATH`.
    Put {
        key: String,
        /// The value; `-` reads it from standard input.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The content type to store (default: text/plain for UTF-8 text, else application/octet-stream).
        #[arg(long)]
        content_type: Option<String>,
        /// Write only if the key is at this version (compare-and-swap).
        #[arg(long, conflicts_with = "if_absent")]
        if_version: Option<u64>,
        /// Write only if the key does not exist yet.
        #[arg(long)]
        if_absent: bool,
        /// Expire the key this long after the write: 1500ms, 30s, 2m, 1h (a bare number is seconds).
        #[arg(long, value_parser = kv_api::expiry::parse_ttl, conflicts_with = "keepttl")]
        ttl: Option<Duration>,
        /// Keep the key's current deadline (without --ttl or this, a put clears it).
        #[arg(long)]
        keepttl: bool,
    },
    /// Print the seconds a key has left (ms precision), or -1 when it has no deadline.
    Ttl { key: String },
    /// Give a key a deadline: `kv expire KEY 30s`.
    Expire {
        key: String,
        /// 1500ms, 30s, 2m, 1h; a bare number is seconds.
        #[arg(value_parser = kv_api::expiry::parse_ttl)]
        ttl: Duration,
    },
    /// Remove a key's deadline.
    Persist { key: String },
    /// Delete a key.
    #[command(alias = "delete")]
    Del { key: String },
    /// List pairs in key order: a table on a terminal, `key<TAB>value` lines otherwise.
    Dump {
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// One JSON array of items.
        #[arg(long, conflicts_with = "ndjson")]
        json: bool,
        /// One JSON item per line (the export format).
        #[arg(long)]
        ndjson: bool,
    },
    /// Show the proxy's cache figures.
    Stats,
    /// Print changes as they happen: `12 PUT name Derek Moss`, `13 DELETE name`.
    Watch(watch::WatchArgs),
    /// An interactive prompt: PUT, GET, DEL, DUMP, SETEX, EXPIRE, PERSIST, TTL, STATS, HELP, QUIT.
    Shell,
    /// Write every pair (or those under --prefix) to stdout as NDJSON.
    Export {
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Load pairs from an NDJSON file (as `kv export` writes); `-` reads stdin.
    Import(transfer::ImportArgs),
    /// Measure throughput and latency over HTTP (--url), the line protocol (--line) or RESP (--resp).
    Bench(bench::BenchArgs),
    /// Measure how long after a write other proxies answer the old value (tests/perf/coherence.sh).
    #[command(hide = true)]
    BenchStaleness(staleness::StalenessArgs),
    /// Print a shell completion script: `kv completions bash > /etc/bash_completion.d/kv`.
    Completions { shell: clap_complete::Shell },
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let client = || Client::new(&cli.url, cli.timeout, cli.cacert.as_deref());
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Get { key, verbose } => get(&client()?, &key, verbose).await,
        Command::Put {
            key,
            value,
            file,
            content_type,
            if_version,
            if_absent,
            ttl,
            keepttl,
        } => {
            let value = read_value(value.as_deref(), file.as_deref())?;
            let content_type = content_type.unwrap_or_else(|| kv_api::dump::content_type_for(&value).to_owned());
            let precondition = match (if_version, if_absent) {
                (Some(version), _) => client::Precondition::Version(version),
                (None, true) => client::Precondition::Absent,
                (None, false) => client::Precondition::None,
            };
            let expiry = match (ttl, keepttl) {
                (Some(ttl), _) => kv_api::expiry::Expiry::After(ttl),
                (None, true) => kv_api::expiry::Expiry::Keep,
                (None, false) => kv_api::expiry::Expiry::Clear,
            };
            let version = client()?
                .put_with(&key, value, &content_type, precondition, expiry)
                .await?;
            if std::io::stdout().is_terminal() {
                println!("OK (version {version})");
            }
            Ok(())
        }
        Command::Ttl { key } => match client()?.ttl(&key).await? {
            Some(Some(left)) => {
                println!("{}", kv_api::expiry::format_expires_in(left));
                Ok(())
            }
            Some(None) => {
                println!("-1");
                Ok(())
            }
            None => Err(CliError::NotFound(format!("no value is stored under the key '{key}'"))),
        },
        Command::Expire { key, ttl } => touch(&client()?, &key, kv_api::expiry::Touch::After(ttl)).await,
        Command::Persist { key } => touch(&client()?, &key, kv_api::expiry::Touch::Persist).await,
        Command::Del { key } => {
            if client()?.delete(&key).await? {
                Ok(())
            } else {
                Err(CliError::NotFound(format!("no value is stored under the key '{key}'")))
            }
        }
        Command::Dump { prefix, json, ndjson } => {
            let style = if json {
                transfer::DumpStyle::Json
            } else if ndjson {
                transfer::DumpStyle::Ndjson
            } else if std::io::stdout().is_terminal() {
                transfer::DumpStyle::Table
            } else {
                transfer::DumpStyle::Tsv
            };
            transfer::dump(&client()?, prefix.as_deref(), style).await
        }
        Command::Stats => {
            let figures = stats(&client()?).await?;
            let mut out = std::io::stdout().lock();
            for (name, value) in figures {
                writeln!(out, "{name} {value}")?;
            }
            Ok(())
        }
        Command::Shell => shell::run(client()?).await,
        Command::Watch(args) => watch::run(&client()?, args).await,
        Command::Export { prefix } => transfer::dump(&client()?, prefix.as_deref(), transfer::DumpStyle::Ndjson).await,
        Command::Import(args) => transfer::import(&client()?, &args).await,
        Command::Bench(args) => bench::run(args, &cli.url).await,
        Command::BenchStaleness(args) => staleness::run(args).await,
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kv", &mut script);
            std::io::stdout().write_all(&script)?;
            Ok(())
        }
    }
}

async fn get(client: &Client, key: &str, verbose: bool) -> Result<(), CliError> {
    let (value, source) = client
        .get_from(key)
        .await?
        .ok_or_else(|| CliError::NotFound(format!("no value is stored under the key '{key}'")))?;
    if verbose {
        // No X-Cache: no proxy answered, so the server did.
        eprintln!("{}", source.unwrap_or(kv_api::source::Source::Server));
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&value)?;
    // On a terminal, end the line so the prompt does not stick to the value.
    if std::io::stdout().is_terminal() && !value.ends_with(b"\n") {
        stdout.write_all(b"\n")?;
    }
    stdout.flush()?;
    Ok(())
}

async fn touch(client: &Client, key: &str, touch: kv_api::expiry::Touch) -> Result<(), CliError> {
    if client.touch(key, touch).await? {
        Ok(())
    } else {
        Err(CliError::NotFound(format!("no value is stored under the key '{key}'")))
    }
}

fn read_value(value: Option<&str>, file: Option<&std::path::Path>) -> Result<Bytes, CliError> {
    match (value, file) {
        (_, Some(path)) => std::fs::read(path)
            .map(Bytes::from)
            .map_err(|err| CliError::Usage(format!("cannot read {}: {err}", path.display()))),
        (Some("-"), None) => {
            let mut buffer = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut buffer)?;
            Ok(Bytes::from(buffer))
        }
        (Some(value), None) => Ok(Bytes::from(value.to_owned())),
        (None, None) => Err(CliError::Usage("give a value, `-` for stdin, or --file PATH".into())),
    }
}

/// The proxy's cache figures, read from its Prometheus metrics.
pub async fn stats(client: &Client) -> Result<Vec<(String, String)>, CliError> {
    let metrics = client.metrics().await?;
    let figures: Vec<(String, String)> = metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            let name = name.strip_prefix("kv_proxy_")?;
            let name = name.strip_suffix("_total").unwrap_or(name);
            let name = if name == "keys" {
                stats::CACHE_ENTRIES.name
            } else {
                name
            };
            let stat = stats::ALL.iter().find(|stat| stat.name == name)?;
            Some((stat.name.to_owned(), value.to_owned()))
        })
        .collect();
    if figures.is_empty() {
        return Err(CliError::Usage(format!(
            "{} has no cache figures: stats come from kv-proxy, and this looks like a kv-server",
            client.base()
        )));
    }
    Ok(figures)
}
