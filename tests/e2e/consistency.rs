//! Consistency, measured the way Jepsen does: record histories of concurrent
//! operations (invocation and return times, client, result) and check them.
//!
//! kv hands out versions (store revisions), which makes a register's history
//! cheap to check: a write is placed at its revision, a read that saw version
//! v just after it (before the next write of that key). A history is then
//! linearizable when no operation that finished before another began is
//! placed after it. Reads of a missing key may sit at any point where the key
//! was absent; for those the check is looser (it only compares them with
//! operations of known position), so it can miss a violation, never invent one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv_tests::{Proxy, Server, client};

#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// A PUT or DELETE acknowledged at this revision.
    Wrote { revision: u64, value: Option<String> },
    /// A PUT whose outcome is unknown (504 `outcome_unknown`, or no answer):
    /// placed by the checker only if a read saw its value.
    WroteUnknown { value: String },
    /// A DELETE of a key that was absent.
    DeleteMissed,
    /// A GET that saw this version and value.
    Read { version: u64, value: String },
    /// A GET that found nothing.
    ReadMissing,
}

#[derive(Debug, Clone)]
pub(crate) struct Op {
    client: usize,
    key: String,
    invoked: Instant,
    returned: Instant,
    pub(crate) outcome: Outcome,
}

/// Runs `clients` loops of random GET/PUT/DELETE on `keys` keys against `url` for `duration`.
async fn record(url: &str, clients: usize, keys: usize, duration: Duration) -> Vec<Op> {
    record_on(&[url], clients, keys, duration, false).await
}

/// [`record`] with client `i` on `urls[i % urls.len()]`. With `faults`
/// (a cluster losing members underneath), an error answer is recorded as
/// what it says: a failed read saw nothing, a PUT refused with 503
/// `store_unavailable` wrote nothing, any other failed PUT has an unknown
/// outcome; and there are no DELETEs, whose unknown outcomes nothing could
/// place.
pub(crate) async fn record_on(urls: &[&str], clients: usize, keys: usize, duration: Duration, faults: bool) -> Vec<Op> {
    let history: Arc<Mutex<Vec<Op>>> = Arc::default();
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for client_id in 0..clients {
        let (url, history) = (urls[client_id % urls.len()].to_owned(), history.clone());
        tasks.push(tokio::spawn(async move {
            let http = client();
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let key = format!("reg-{}", (n as usize * 7 + client_id) % keys);
                let target = format!("{url}/kv/{key}");
                let choice = (n * 31 + client_id as u64 * 17) % 10;
                let invoked = Instant::now();
                let outcome = if choice < 5 {
                    let response = match http.get(&target).send().await {
                        Ok(response) if response.status() == 503 && faults => None,
                        Ok(response) => Some(response),
                        Err(_) if faults => None,
                        Err(err) => panic!("GET {target}: {err}"),
                    };
                    match response {
                        None => None,
                        Some(response) if response.status() == 404 => Some(Outcome::ReadMissing),
                        Some(response) => {
                            assert_eq!(response.status(), 200);
                            let version = etag(response.headers().get("etag"));
                            Some(Outcome::Read {
                                version,
                                value: response.text().await.unwrap(),
                            })
                        }
                    }
                } else if choice < 9 || faults {
                    let value = format!("c{client_id}-{n}");
                    match http.put(&target).body(value.clone()).send().await {
                        Ok(response) if response.status().is_success() => Some(Outcome::Wrote {
                            revision: revision(&response),
                            value: Some(value),
                        }),
                        Ok(response) if faults => {
                            let body = response.text().await.unwrap_or_default();
                            (!body.contains("\"store_unavailable\"")).then_some(Outcome::WroteUnknown { value })
                        }
                        Err(_) if faults => Some(Outcome::WroteUnknown { value }),
                        other => panic!("PUT {target}: {other:?}"),
                    }
                } else {
                    let response = http.delete(&target).send().await.unwrap();
                    if response.status() == 404 {
                        Some(Outcome::DeleteMissed)
                    } else {
                        assert_eq!(response.status(), 204);
                        Some(Outcome::Wrote {
                            revision: revision(&response),
                            value: None,
                        })
                    }
                };
                let Some(outcome) = outcome else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let op = Op {
                    client: client_id,
                    key,
                    invoked,
                    returned: Instant::now(),
                    outcome,
                };
                history.lock().unwrap().push(op);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(history).unwrap().into_inner().unwrap()
}

fn etag(value: Option<&reqwest::header::HeaderValue>) -> u64 {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_matches('"').parse().ok())
        .expect("an ETag")
}

fn revision(response: &reqwest::Response) -> u64 {
    response.headers()["x-kv-revision"].to_str().unwrap().parse().unwrap()
}

/// Linearizability violations in the history of one key (see the module comment):
/// operations that cannot be placed in a legal order, so an inverted pair counts twice,
/// plus reads of a value that no write with that version wrote.
pub(crate) fn linearizability_violations(ops: &[Op]) -> usize {
    // A write of unknown outcome that a read saw took effect at the version
    // that read saw (values are unique); it may have returned at any time.
    let seen: HashMap<&str, u64> = ops
        .iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Read { version, value } => Some((value.as_str(), *version)),
            _ => None,
        })
        .collect();
    let placed: Vec<Op> = ops
        .iter()
        .filter_map(|op| match &op.outcome {
            Outcome::WroteUnknown { value } => seen.get(value.as_str()).map(|revision| Op {
                returned: op.invoked + Duration::from_secs(3600),
                outcome: Outcome::Wrote {
                    revision: *revision,
                    value: Some(value.clone()),
                },
                ..op.clone()
            }),
            _ => Some(op.clone()),
        })
        .collect();
    let ops = placed.as_slice();
    // Where each write's state begins and the next one's begins.
    let mut writes: Vec<(u64, Option<String>)> = ops
        .iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Wrote { revision, value } => Some((*revision, value.clone())),
            _ => None,
        })
        .collect();
    writes.sort_by_key(|(revision, _)| *revision);
    let value_at: HashMap<u64, Option<String>> = writes.iter().cloned().collect();
    // A position in the order: a write at 2r, a read of state r at 2r + 1.
    let mut violations = 0;
    let fixed: Vec<(&Op, u64)> = ops
        .iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Wrote { revision, .. } => Some((op, 2 * revision)),
            Outcome::Read { version, value } => {
                if value_at.get(version) != Some(&Some(value.clone())) {
                    violations += 1; // a value no write with that version wrote
                }
                Some((op, 2 * version + 1))
            }
            _ => None,
        })
        .collect();
    // States in which the key was absent: the start, and after each delete.
    let mut absent: Vec<u64> = vec![1];
    absent.extend(
        writes
            .iter()
            .filter(|(_, value)| value.is_none())
            .map(|(revision, _)| 2 * revision + 1),
    );
    for op in ops {
        let before = fixed
            .iter()
            .filter(|(other, _)| other.returned < op.invoked)
            .map(|(_, p)| *p)
            .max()
            .unwrap_or(0);
        let after = fixed
            .iter()
            .filter(|(other, _)| other.invoked > op.returned)
            .map(|(_, p)| *p)
            .min()
            .unwrap_or(u64::MAX);
        let ok = match &op.outcome {
            Outcome::Wrote { revision, .. } => (before..=after).contains(&(2 * revision)),
            Outcome::Read { version, .. } => (before..=after).contains(&(2 * version + 1)),
            Outcome::ReadMissing | Outcome::DeleteMissed => absent.iter().any(|p| (before..=after).contains(p)),
            Outcome::WroteUnknown { .. } => true,
        };
        if !ok {
            violations += 1;
        }
    }
    violations
}

/// Read-your-writes and monotonic-read violations, per client, in one key's history.
fn session_violations(ops: &[Op]) -> (usize, usize) {
    let deletes: Vec<u64> = ops
        .iter()
        .filter_map(|op| match op.outcome {
            Outcome::Wrote { revision, value: None } => Some(revision),
            _ => None,
        })
        .collect();
    let deleted_after = |revision: u64| deletes.iter().any(|d| *d > revision);
    let (mut ryw, mut monotonic) = (0, 0);
    let mut by_client: HashMap<usize, Vec<&Op>> = HashMap::new();
    for op in ops {
        by_client.entry(op.client).or_default().push(op);
    }
    for mut own in by_client.into_values() {
        own.sort_by_key(|op| op.invoked);
        let (mut last_write, mut last_read) = (0u64, 0u64);
        for op in own {
            match &op.outcome {
                Outcome::Wrote { revision, .. } => last_write = *revision,
                Outcome::Read { version, .. } => {
                    ryw += usize::from(*version < last_write);
                    monotonic += usize::from(*version < last_read);
                    last_read = *version;
                }
                Outcome::ReadMissing => {
                    // Absent is fine only if a delete came after what this client wrote or read.
                    let own_delete_last = ops.iter().any(|o| {
                        o.client == op.client
                            && matches!(o.outcome, Outcome::Wrote { revision, value: None } if revision == last_write)
                    });
                    ryw += usize::from(last_write > 0 && !own_delete_last && !deleted_after(last_write));
                    monotonic += usize::from(last_read > 0 && !deleted_after(last_read));
                }
                Outcome::DeleteMissed | Outcome::WroteUnknown { .. } => {}
            }
        }
    }
    (ryw, monotonic)
}

pub(crate) fn by_key(history: &[Op]) -> HashMap<&str, Vec<Op>> {
    let mut keys: HashMap<&str, Vec<Op>> = HashMap::new();
    for op in history {
        keys.entry(op.key.as_str()).or_default().push(op.clone());
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn histories_against_the_server_are_linearizable() {
    let server = Server::start();
    let history = record(&server.url, 8, 3, Duration::from_secs(3)).await;
    let violations: usize = by_key(&history)
        .values()
        .map(|ops| linearizability_violations(ops))
        .sum();
    println!(
        "linearizability, direct to kv-server: {} operations on 3 keys by 8 clients, violations {violations}",
        history.len()
    );
    assert!(history.len() > 200);
    assert_eq!(violations, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_one_proxy_clients_read_their_writes_monotonically() {
    let server = Server::start();
    let proxy = Proxy::start(&server.url, &["--cache-ttl", "60s"]);
    let history = record(&proxy.url, 8, 3, Duration::from_secs(3)).await;
    let (mut ryw, mut monotonic, mut linear) = (0, 0, 0);
    for ops in by_key(&history).values() {
        let (r, m) = session_violations(ops);
        ryw += r;
        monotonic += m;
        linear += linearizability_violations(ops);
    }
    println!(
        "through one kv-proxy: {} operations, read-your-writes violations {ryw}, monotonic-read violations {monotonic} \
         (linearizability violations {linear})",
        history.len()
    );
    assert!(history.len() > 200);
    assert_eq!((ryw, monotonic), (0, 0));
}

// Writes that bypass the proxy reach its readers within the TTL: measure the
// largest staleness a reader sees, from the moment a newer write was
// acknowledged on the server to the start of a read that still missed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_that_bypass_the_proxy_show_within_the_ttl() {
    let server = Server::start();
    let ttl = Duration::from_secs(1);
    let proxy = Proxy::start(&server.url, &["--cache-ttl", "1s"]);
    let http = client();
    let acked: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(4);
    let writer = {
        let (url, acked) = (server.url.clone(), acked.clone());
        tokio::spawn(async move {
            let http = client();
            let mut n = 0;
            while Instant::now() < deadline {
                n += 1;
                let response = http
                    .put(format!("{url}/kv/bypass"))
                    .body(format!("v{n}"))
                    .send()
                    .await
                    .unwrap();
                acked.lock().unwrap().push((revision(&response), Instant::now()));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut worst = Duration::ZERO;
    let mut reads = 0;
    tokio::time::sleep(Duration::from_millis(100)).await;
    while Instant::now() < deadline {
        let invoked = Instant::now();
        let response = http.get(format!("{}/kv/bypass", proxy.url)).send().await.unwrap();
        if response.status() == 404 {
            continue; // before the first write
        }
        let version = etag(response.headers().get("etag"));
        reads += 1;
        // The first write newer than what we read, acknowledged before we asked.
        let missed = acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, at)| *r > version && *at < invoked)
            .map(|(_, at)| *at)
            .min();
        if let Some(since) = missed {
            worst = worst.max(invoked - since);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    writer.await.unwrap();
    println!("writes bypassing the proxy (TTL {ttl:?}): {reads} reads, largest staleness {worst:?}");
    assert!(reads > 50);
    assert!(worst <= ttl + Duration::from_secs(1), "a reader was {worst:?} behind");
}

// The checkers themselves: each must flag a history that breaks its rule.
#[test]
fn the_checkers_flag_stale_and_backward_reads() {
    let start = Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);
    let op = |client, invoked, returned, outcome| Op {
        client,
        key: "k".into(),
        invoked: at(invoked),
        returned: at(returned),
        outcome,
    };
    let wrote = |revision, value: &str| Outcome::Wrote {
        revision,
        value: Some(value.into()),
    };
    let read = |version, value: &str| Outcome::Read {
        version,
        value: value.into(),
    };
    let good = vec![
        op(0, 0, 10, wrote(1, "a")),
        op(1, 5, 15, read(1, "a")),
        op(0, 20, 30, wrote(2, "b")),
        op(1, 40, 50, read(2, "b")),
    ];
    assert_eq!(linearizability_violations(&good), 0);
    assert_eq!(session_violations(&good), (0, 0));
    // Client 1 reads version 1 after version 2 was acknowledged: stale.
    let stale = vec![
        op(0, 0, 10, wrote(1, "a")),
        op(0, 20, 30, wrote(2, "b")),
        op(1, 40, 50, read(1, "a")),
    ];
    assert_eq!(
        linearizability_violations(&stale),
        2,
        "both the read and the write it missed are misplaced"
    );
    // Client 0 reads back older than its own write, then goes backwards.
    let own = vec![
        op(1, 0, 10, wrote(1, "a")),
        op(0, 20, 30, wrote(2, "b")),
        op(0, 40, 50, read(1, "a")),
        op(1, 60, 70, read(2, "b")),
        op(1, 80, 90, read(1, "a")),
    ];
    assert_eq!(session_violations(&own), (1, 1));
    // A value that no write with that version wrote.
    let forged = vec![op(0, 0, 10, wrote(1, "a")), op(1, 20, 30, read(1, "zzz"))];
    assert_eq!(linearizability_violations(&forged), 1);
    // A write of unknown outcome that a read saw is placed where it was seen;
    // one nobody saw is left out. But a read of it from before it was sent is
    // still flagged.
    let unknown = |value: &str| Outcome::WroteUnknown { value: value.into() };
    let landed = vec![
        op(0, 0, 10, wrote(1, "a")),
        op(1, 20, 30, unknown("b")),
        op(2, 40, 50, read(2, "b")),
        op(1, 60, 70, unknown("c")),
        op(2, 80, 90, read(2, "b")),
    ];
    assert_eq!(linearizability_violations(&landed), 0);
    let early = vec![op(0, 0, 10, read(2, "b")), op(1, 20, 30, unknown("b"))];
    assert!(linearizability_violations(&early) > 0);
}
