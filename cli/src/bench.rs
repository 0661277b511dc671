//! `kv bench`: a load generator in the manner of redis-benchmark and
//! memtier. It drives kv's HTTP API, kv's telnet line protocol, or a Redis
//! server over RESP, so that kv and Redis are measured by one tool.
//!
//! Each connection runs its own loop: closed (send, wait, repeat) by default,
//! or open at `--rate`, where a pacer thread deals send times to the connections
//! in turn; latency counts from when a request *should* have been sent, so a
//! stall is not hidden (coordinated omission).

use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use kv_edge::units::parse_duration;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::error::CliError;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Drive kv's telnet line protocol at this address (HOST:PORT) instead of HTTP at --url.
    #[arg(long, conflicts_with = "resp")]
    pub line: Option<String>,
    /// Drive a Redis server over RESP at this address (HOST:PORT), GET and SET only.
    #[arg(long)]
    pub resp: Option<String>,
    /// HTTP path of each request after --url's, `{key}` standing for the key: lets one
    /// tool read from HTTP servers that spell keys their own way, like webdis's /GET/{key}.
    #[arg(long, default_value = "/kv/{key}")]
    pub path: String,
    /// Connections, each with its own loop.
    #[arg(long, short = 'c', default_value_t = 64)]
    pub connections: usize,
    /// How long to measure, like 10s.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How many distinct keys to use (each 16 bytes, `key:000000000042`).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Bytes per value written.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Mix of GETs to PUTs, like 1:0 (only GETs), 9:1 or 0:1 (only PUTs).
    #[arg(long, default_value = "1:0", value_parser = parse_ratio)]
    pub ratio: (u32, u32),
    /// Requests in flight per connection on the line protocol and RESP.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Open-loop load: this many requests per second in all, dealt to the connections in
    /// turn; the run ends when every request due within --duration has been answered.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Skip writing every key once before measuring.
    #[arg(long)]
    pub no_populate: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_ratio(text: &str) -> Result<(u32, u32), String> {
    let (gets, puts) = text.split_once(':').ok_or("write the ratio as GETS:PUTS, like 9:1")?;
    let gets = gets
        .trim()
        .parse()
        .map_err(|_| format!("'{gets}' is not a whole number"))?;
    let puts = puts
        .trim()
        .parse()
        .map_err(|_| format!("'{puts}' is not a whole number"))?;
    if gets == 0 && puts == 0 {
        return Err("the ratio needs some GETs or some PUTs".into());
    }
    Ok((gets, puts))
}

/// What one run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub protocol: &'static str,
    pub connections: usize,
    pub pipeline: usize,
    pub duration_secs: f64,
    /// The --rate asked for (open loop); none in a closed loop.
    pub rate: Option<f64>,
    pub requests: u64,
    pub errors: u64,
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    Put,
}

/// Where the load goes, and how to speak to it.
#[derive(Debug, Clone)]
enum Target {
    Http {
        addr: String,
        host: String,
        /// --url's path and --path, `{key}` still in it.
        path: String,
    },
    Line(String),
    Resp(String),
}

impl Target {
    fn protocol(&self) -> &'static str {
        match self {
            Self::Http { .. } => "http",
            Self::Line(_) => "line",
            Self::Resp(_) => "resp",
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Http { host, path, .. } => format!("http://{host}{path}"),
            Self::Line(addr) | Self::Resp(addr) => addr.clone(),
        }
    }
}

pub async fn run(args: BenchArgs, url: &str) -> Result<(), CliError> {
    if args.connections == 0 || args.pipeline == 0 || args.keys == 0 {
        return Err(CliError::Usage(
            "--connections, --pipeline and --keys must be at least 1".into(),
        ));
    }
    if args.rate.is_some_and(|rate| !(rate.is_finite() && rate > 0.0)) {
        return Err(CliError::Usage("--rate must be a positive number".into()));
    }
    if !(args.path.starts_with('/') && args.path.contains("{key}")) {
        return Err(CliError::Usage("--path must start with / and hold {key}".into()));
    }
    let target = match (&args.line, &args.resp) {
        (Some(addr), _) => Target::Line(addr.clone()),
        (_, Some(addr)) => Target::Resp(addr.clone()),
        _ => {
            let parsed = reqwest::Url::parse(url).map_err(|e| CliError::Usage(format!("--url '{url}': {e}")))?;
            if parsed.scheme() != "http" {
                return Err(CliError::Usage("kv bench speaks plain http:// only".into()));
            }
            let host = parsed.host_str().unwrap_or("127.0.0.1").to_owned();
            let port = parsed.port_or_known_default().unwrap_or(80);
            Target::Http {
                addr: format!("{host}:{port}"),
                host: format!("{host}:{port}"),
                path: format!("{}{}", parsed.path().trim_end_matches('/'), args.path),
            }
        }
    };
    let value = Bytes::from(vec![b'v'; args.value_size]);

    if !args.no_populate && args.ratio.0 > 0 {
        populate(&target, &args, &value).await?;
    }

    // Every connection is open before the clock starts.
    let mut workers = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        workers.push(Worker::connect(&target).await?);
    }
    let started = Instant::now();
    let deadline = started + args.duration;
    let schedules: Vec<Option<UnboundedReceiver<Instant>>> = match args.rate {
        Some(rate) => pace(rate / args.pipeline as f64, args.connections, started, deadline)
            .into_iter()
            .map(Some)
            .collect(),
        None => (0..args.connections).map(|_| None).collect(),
    };
    let mut tasks = Vec::with_capacity(args.connections);
    for ((id, mut worker), mut schedule) in workers.into_iter().enumerate().zip(schedules) {
        let value = value.clone();
        let (keys, ratio, pipeline) = (args.keys, args.ratio, args.pipeline);
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(id as u64 + 1);
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let (mut requests, mut errors) = (0u64, 0u64);
            loop {
                let sent = match &mut schedule {
                    Some(schedule) => match schedule.recv().await {
                        Some(due) => due,
                        None => break,
                    },
                    None if Instant::now() < deadline => Instant::now(),
                    None => break,
                };
                let batch: Vec<(Op, u64)> = (0..pipeline)
                    .map(|_| {
                        let op = if rng.random_range(0..ratio.0 + ratio.1) < ratio.0 {
                            Op::Get
                        } else {
                            Op::Put
                        };
                        (op, rng.random_range(0..keys))
                    })
                    .collect();
                let failed = worker.send(&batch, &value).await?;
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
                for _ in 0..batch.len() {
                    let _ = histogram.record(micros.min(60_000_000));
                }
                requests += batch.len() as u64;
                errors += failed;
            }
            Ok::<_, CliError>((histogram, requests, errors))
        }));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let (mut requests, mut errors) = (0u64, 0u64);
    for task in tasks {
        let (h, r, e) = task
            .await
            .map_err(|e| CliError::Io(format!("a bench connection panicked: {e}")))??;
        histogram.add(h).map_err(|e| CliError::Io(e.to_string()))?;
        requests += r;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let report = Report {
        target: target.describe(),
        protocol: target.protocol(),
        connections: args.connections,
        pipeline: args.pipeline,
        duration_secs: elapsed,
        rate: args.rate,
        requests,
        errors,
        requests_per_sec: requests as f64 / elapsed,
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: histogram.max() as f64 / 1000.0,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("a report serialises"));
    } else {
        println!(
            "kv bench: {} {}, GET:PUT {}:{}, {} connections, pipeline {}, {} keys, {}-byte values, {}",
            report.protocol,
            report.target,
            args.ratio.0,
            args.ratio.1,
            args.connections,
            args.pipeline,
            args.keys,
            args.value_size,
            args.rate
                .map_or_else(|| "closed loop".to_owned(), |rate| format!("open loop at {rate} req/s"))
        );
        println!(
            "  requests   {} in {:.1} s: {:.0} req/s",
            report.requests, elapsed, report.requests_per_sec
        );
        println!("  errors     {}", report.errors);
        println!(
            "  latency    p50 {:.3} ms   p99 {:.3} ms   p99.9 {:.3} ms   max {:.3} ms",
            report.p50_ms, report.p99_ms, report.p999_ms, report.max_ms
        );
    }
    if requests > 0 && errors == requests {
        return Err(CliError::Server(
            "every request failed; is the target the right kind of server?".into(),
        ));
    }
    Ok(())
}

/// The open loop's clock: the instant each batch is due, `per_sec` a second from `start`
/// until `deadline`, dealt to the connections in turn. A thread of its own sleeps between
/// them because tokio's timer ticks in whole milliseconds, which would add up to a
/// millisecond to every latency counted from these instants, more than a cache hit takes.
/// The schedules close at the deadline; what is left in them is still sent and counted.
fn pace(per_sec: f64, connections: usize, start: Instant, deadline: Instant) -> Vec<UnboundedReceiver<Instant>> {
    let (due, schedules): (Vec<_>, Vec<_>) = (0..connections).map(|_| unbounded_channel()).unzip();
    std::thread::spawn(move || {
        for n in 0u64.. {
            let at = start + Duration::from_secs_f64(n as f64 / per_sec);
            if at >= deadline {
                break;
            }
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if due[n as usize % due.len()].send(at).is_err() {
                break; // that connection has gone: the run failed
            }
        }
    });
    schedules
}

/// Writes every key once, so GETs find values.
async fn populate(target: &Target, args: &BenchArgs, value: &Bytes) -> Result<(), CliError> {
    let connections = args.connections.min(64) as u64;
    let mut tasks = Vec::new();
    for id in 0..connections {
        let (target, value, keys) = (target.clone(), value.clone(), args.keys);
        tasks.push(tokio::spawn(async move {
            let mut worker = Worker::connect(&target).await?;
            let mut key = id;
            while key < keys {
                let batch: Vec<(Op, u64)> = (0..16)
                    .map(|i| key + i * connections)
                    .filter(|k| *k < keys)
                    .map(|k| (Op::Put, k))
                    .collect();
                let failed = worker.send(&batch, &value).await?;
                if failed > 0 {
                    return Err(CliError::Server("writing the keys before the run failed".into()));
                }
                key += 16 * connections;
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| CliError::Io(e.to_string()))??;
    }
    Ok(())
}

fn key_name(n: u64) -> String {
    format!("key:{n:012}")
}

/// A protocol spoken over a plain TCP stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// kv's telnet line protocol.
    Line,
    /// Redis's RESP.
    Resp,
}

/// One connection to the target.
enum Worker {
    Http {
        sender: http1::SendRequest<Full<Bytes>>,
        host: String,
        path: String,
    },
    Stream {
        wire: Wire,
        reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
        writer: tokio::net::tcp::OwnedWriteHalf,
    },
}

impl Worker {
    async fn connect(target: &Target) -> Result<Self, CliError> {
        let addr = match target {
            Target::Http { addr, .. } => addr,
            Target::Line(addr) | Target::Resp(addr) => addr,
        };
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| CliError::Unreachable(format!("cannot connect to {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        Ok(match target {
            Target::Http { host, path, .. } => {
                let (sender, connection) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| CliError::Unreachable(format!("HTTP handshake with {addr} failed: {e}")))?;
                tokio::spawn(connection);
                Self::Http {
                    sender,
                    host: host.clone(),
                    path: path.clone(),
                }
            }
            Target::Line(_) | Target::Resp(_) => {
                let wire = if matches!(target, Target::Line(_)) {
                    Wire::Line
                } else {
                    Wire::Resp
                };
                let (reader, writer) = stream.into_split();
                Self::Stream {
                    wire,
                    reader: BufReader::new(reader),
                    writer,
                }
            }
        })
    }

    /// Sends a batch and reads every answer; returns how many failed.
    async fn send(&mut self, batch: &[(Op, u64)], value: &Bytes) -> Result<u64, CliError> {
        let lost = |e: std::io::Error| CliError::Unreachable(format!("the connection failed: {e}"));
        match self {
            Self::Http { sender, host, path } => {
                let mut failed = 0;
                for &(op, key) in batch {
                    let uri = path.replace("{key}", &key_name(key));
                    let request = hyper::Request::builder()
                        .method(if op == Op::Get {
                            hyper::Method::GET
                        } else {
                            hyper::Method::PUT
                        })
                        .uri(uri)
                        .header(hyper::header::HOST, host.as_str())
                        .body(Full::new(if op == Op::Get { Bytes::new() } else { value.clone() }))
                        .expect("a valid request");
                    sender
                        .ready()
                        .await
                        .map_err(|e| CliError::Unreachable(format!("the connection failed: {e}")))?;
                    let response = sender
                        .send_request(request)
                        .await
                        .map_err(|e| CliError::Unreachable(format!("the request failed: {e}")))?;
                    let ok = response.status().is_success();
                    response
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| CliError::Unreachable(format!("reading an answer failed: {e}")))?;
                    failed += u64::from(!ok);
                }
                Ok(failed)
            }
            Self::Stream { wire, reader, writer } => {
                let mut out = Vec::with_capacity(batch.len() * (48 + value.len()));
                for &(op, key) in batch {
                    wire.encode(&mut out, op, &key_name(key), value);
                }
                writer.write_all(&out).await.map_err(lost)?;
                let mut failed = 0;
                let mut line = Vec::new();
                for _ in batch {
                    failed += u64::from(!wire.read_reply(reader, &mut line).await.map_err(lost)?);
                }
                Ok(failed)
            }
        }
    }
}

impl Wire {
    /// Appends one request to `out`.
    fn encode(self, out: &mut Vec<u8>, op: Op, key: &str, value: &[u8]) {
        match (self, op) {
            (Self::Line, Op::Get) => out.extend_from_slice(format!("GET {key}\r\n").as_bytes()),
            (Self::Line, Op::Put) => {
                out.extend_from_slice(format!("PUT {key} ").as_bytes());
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
            (Self::Resp, Op::Get) => {
                out.extend_from_slice(format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes());
            }
            (Self::Resp, Op::Put) => {
                let head = format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n", key.len(), value.len());
                out.extend_from_slice(head.as_bytes());
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// Reads one reply; `false` when it is an error.
    async fn read_reply(
        self,
        reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
        line: &mut Vec<u8>,
    ) -> std::io::Result<bool> {
        line.clear();
        if reader.read_until(b'\n', line).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        Ok(match (self, line.first()) {
            (Self::Line, _) => !line.starts_with(b"ERR"),
            (Self::Resp, Some(b'-')) => false,
            (Self::Resp, Some(b'$')) => {
                // A bulk string: its length, then that many bytes and CRLF.
                let length: i64 = std::str::from_utf8(&line[1..])
                    .ok()
                    .and_then(|l| l.trim().parse().ok())
                    .unwrap_or(-1);
                if let Ok(length) = usize::try_from(length) {
                    let mut skip = vec![0u8; length + 2];
                    reader.read_exact(&mut skip).await?;
                }
                true
            }
            (Self::Resp, _) => true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_loop_deals_every_send_time_in_turn_until_the_deadline() {
        let start = Instant::now();
        let mut schedules = pace(1000.0, 3, start, start + Duration::from_millis(20));
        let mut due = Vec::new();
        for (connection, schedule) in schedules.iter_mut().enumerate() {
            while let Some(at) = schedule.blocking_recv() {
                due.push((at - start, connection));
            }
        }
        due.sort();
        assert_eq!(due.len(), 20);
        for (n, (at, connection)) in due.into_iter().enumerate() {
            assert_eq!(connection, n % 3);
            assert!(
                at.abs_diff(Duration::from_millis(n as u64)) < Duration::from_micros(1),
                "{n}: {at:?}"
            );
        }
    }
}
