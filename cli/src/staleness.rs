//! `kv bench-staleness` (hidden; `tests/perf/coherence.sh` drives it): how
//! long after a write is acknowledged other proxies still answer the old
//! value.
//!
//! `--keys` hot keys are written once and read through every `--reader`
//! until each answers from its cache. Then `--writes` writes go to
//! `--writer` at `--rate`, each to one hot key; as soon as a write is
//! acknowledged, a poller per reader GETs the key in a tight loop until the
//! new value comes back. Staleness is the time from the acknowledgement to
//! that first new answer (0 if it came back at once). After it, three more
//! reads must not answer an older value: such a read is counted as "old after
//! new". `--background-rate` adds writes to other keys at that rate.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::error::CliError;

#[derive(Debug, clap::Args)]
pub struct StalenessArgs {
    /// Where the measured writes go (a proxy, or the server).
    #[arg(long)]
    pub writer: String,
    /// The proxies to poll, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub readers: Vec<String>,
    #[arg(long, default_value_t = 100)]
    pub keys: usize,
    #[arg(long, default_value_t = 1000)]
    pub writes: usize,
    /// Measured writes per second.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Writes per second to other keys, through --writer, meanwhile.
    #[arg(long, default_value_t = 0.0)]
    pub background_rate: f64,
    /// Give up on a poll after this long (counted as the bound).
    #[arg(long, default_value = "2s", value_parser = kv_edge::units::parse_duration)]
    pub bound: Duration,
}

#[derive(Debug, Serialize)]
struct ReaderReport {
    reader: String,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Polls that never saw the new value within the bound.
    timed_out: u64,
    /// Reads that answered an older value after the new one had been seen.
    old_after_new: u64,
}

fn client() -> Result<reqwest::Client, CliError> {
    kv_edge::tls::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| CliError::Usage(e.to_string()))
}

async fn put(http: &reqwest::Client, base: &str, key: &str, value: String) -> Result<(), CliError> {
    let response = http
        .put(format!("{base}/kv/{key}"))
        .body(value)
        .send()
        .await
        .map_err(|e| CliError::Unreachable(e.to_string()))?;
    if !response.status().is_success() {
        return Err(CliError::Server(format!("PUT {base}: {}", response.status())));
    }
    Ok(())
}

async fn get(http: &reqwest::Client, base: &str, key: &str) -> Result<(String, String), CliError> {
    let response = http
        .get(format!("{base}/kv/{key}"))
        .send()
        .await
        .map_err(|e| CliError::Unreachable(e.to_string()))?;
    let cache = response
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response
        .text()
        .await
        .map_err(|e| CliError::Unreachable(e.to_string()))?;
    Ok((cache, body))
}

/// The generation number in a value `g<N>`.
fn generation(value: &str) -> u64 {
    value.strip_prefix('g').and_then(|n| n.parse().ok()).unwrap_or(0)
}

pub async fn run(args: StalenessArgs) -> Result<(), CliError> {
    let http = client()?;
    let keys: Vec<String> = (0..args.keys).map(|i| format!("hot-{i:03}")).collect();
    for key in &keys {
        put(&http, &args.writer, key, "g0".into()).await?;
    }
    // Warm every reader's cache until each key is a hit.
    for reader in &args.readers {
        for key in &keys {
            let started = Instant::now();
            while get(&http, reader, key).await?.0 != "HIT" {
                if started.elapsed() > Duration::from_secs(10) {
                    return Err(CliError::Server(format!("{reader} never cached {key}")));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let background = (args.background_rate > 0.0).then(|| {
        let (http, writer, rate, stop) = (http.clone(), args.writer.clone(), args.background_rate, stop.clone());
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut n = 0u64;
            while !stop.is_cancelled() {
                ticker.tick().await;
                n += 1;
                let (http, writer) = (http.clone(), writer.clone());
                tokio::spawn(async move {
                    let _ = put(&http, &writer, &format!("bg-{}", n % 1000), format!("{n}")).await;
                });
            }
        })
    });
    let mut histograms: Vec<Histogram<u64>> = args
        .readers
        .iter()
        .map(|_| Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"))
        .collect();
    let mut timed_out = vec![0u64; args.readers.len()];
    let mut old_after_new = vec![0u64; args.readers.len()];
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    for i in 0..args.writes {
        ticker.tick().await;
        let key = &keys[i % keys.len()];
        let want = (i / keys.len()) as u64 + 1;
        put(&http, &args.writer, key, format!("g{want}")).await?;
        let acked = Instant::now();
        let polls = args.readers.iter().map(|reader| {
            let (http, key, bound) = (http.clone(), key.clone(), args.bound);
            let reader = reader.clone();
            async move {
                loop {
                    let (_, body) = get(&http, &reader, &key).await?;
                    if generation(&body) >= want {
                        let took = acked.elapsed();
                        let mut old = 0;
                        for _ in 0..3 {
                            if generation(&get(&http, &reader, &key).await?.1) < want {
                                old += 1;
                            }
                        }
                        return Ok::<_, CliError>((Some(took), old));
                    }
                    if acked.elapsed() > bound {
                        return Ok((None, 0));
                    }
                }
            }
        });
        let results = futures_util::future::join_all(polls).await;
        for (r, result) in results.into_iter().enumerate() {
            let (took, old) = result?;
            old_after_new[r] += old;
            match took {
                Some(took) => {
                    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
                    histograms[r].record(micros).expect("within bounds");
                }
                None => timed_out[r] += 1,
            }
        }
    }
    stop.cancel();
    if let Some(task) = background {
        let _ = task.await;
    }
    let reports: Vec<ReaderReport> = args
        .readers
        .iter()
        .enumerate()
        .map(|(r, reader)| {
            let h = &histograms[r];
            let ms = |micros: u64| micros as f64 / 1000.0;
            ReaderReport {
                reader: reader.clone(),
                p50_ms: ms(h.value_at_quantile(0.50)),
                p99_ms: ms(h.value_at_quantile(0.99)),
                max_ms: ms(h.max()),
                timed_out: timed_out[r],
                old_after_new: old_after_new[r],
            }
        })
        .collect();
    println!(
        "{}",
        serde_json::to_string(&reports).map_err(|e| CliError::Io(e.to_string()))?
    );
    Ok(())
}
