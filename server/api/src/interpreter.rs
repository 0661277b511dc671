//! One interpreter of the line protocol, for every front that speaks it: the
//! telnet adapter (over the proxy's cache) and `kv shell` (over HTTP). Each
//! front implements [`Backend`] (what the commands do) and [`Replies`] (where
//! the answer lines go); what a command answers, and in which words, is
//! decided here once.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::time::Duration;

use futures_core::Stream;

use crate::command::{Command, HELP};
use crate::dump::Item;
use crate::quote;

/// What the commands do: the store (or the proxy) behind a line front.
/// Errors are messages for a person; they are answered as `ERR <message>`.
pub trait Backend: Sync {
    /// A value read by `GET`.
    type Value: AsRef<[u8]> + Send;
    /// The pairs of a `DUMP`, in key order.
    type Pairs: Stream<Item = Result<Item, String>> + Send + Unpin;

    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Self::Value>, String>> + Send;
    fn put(&self, key: &str, value: Vec<u8>) -> impl Future<Output = Result<(), String>> + Send;
    /// `Ok(false)`: there was no such key.
    fn delete(&self, key: &str) -> impl Future<Output = Result<bool, String>> + Send;
    /// `SETEX`: a put whose key expires `ttl` after it is written.
    fn setex(&self, key: &str, value: Vec<u8>, ttl: Duration) -> impl Future<Output = Result<(), String>> + Send;
    /// `EXPIRE` (`Some`) or `PERSIST` (`None`): a new deadline for an existing
    /// key. `Ok(false)`: there was no such key.
    fn expire(&self, key: &str, ttl: Option<Duration>) -> impl Future<Output = Result<bool, String>> + Send;
    /// `TTL`: `None` when there is no such key, `Some(None)` when it has no deadline.
    fn ttl(&self, key: &str) -> impl Future<Output = Result<Option<Option<Duration>>, String>> + Send;
    fn dump(&self, prefix: Option<&str>) -> impl Future<Output = Result<Self::Pairs, String>> + Send;
    /// The figures `STATS` prints, named as [`crate::stats`] names them.
    fn stats(&self) -> impl Future<Output = Result<Vec<(String, String)>, String>> + Send;

    /// Whether a value goes on a line as it is (else quoted); a backend may
    /// remember the answer per value.
    fn bare_on_a_line(&self, value: &Self::Value) -> bool {
        quote::can_be_bare(value.as_ref())
    }

    /// Where a value read by `GET` came from, when the front knows.
    fn source(&self, _value: &Self::Value) -> Option<crate::source::Source> {
        None
    }

    /// Whether `GET` answers say where the value came from ([`Backend::source`]).
    fn verbose(&self) -> bool {
        false
    }

    /// `VERBOSE ON|OFF`; `Err` (a message) when the front cannot say.
    fn set_verbose(&self, _on: bool) -> Result<(), &'static str> {
        Err("VERBOSE is not available here")
    }

    /// `AUTH`, when the front did not answer it itself.
    fn auth(&self) -> &'static str {
        "ERR AUTH is not needed here"
    }
}

/// Where answer lines go. A line is written from parts, without its ending.
pub trait Replies: Send {
    type Error;
    fn line(&mut self, parts: &[&[u8]]) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// What the session does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Continue,
    Close,
}

/// Runs one command and writes its answer.
pub async fn execute<B: Backend, R: Replies>(command: Command, backend: &B, out: &mut R) -> Result<Next, R::Error> {
    match command {
        Command::Get { key } => match backend.get(&key).await {
            Ok(Some(value))
                if backend.verbose()
                    && let Some(source) = backend.source(&value) =>
            {
                // For people: a script that parses VALUE lines leaves VERBOSE off.
                let note = format!(" {source}");
                if backend.bare_on_a_line(&value) {
                    out.line(&[b"VALUE ", value.as_ref(), note.as_bytes()]).await?;
                } else {
                    out.line(&[b"VALUE ", quote::quote(value.as_ref()).as_bytes(), note.as_bytes()])
                        .await?;
                }
            }
            Ok(Some(value)) if backend.bare_on_a_line(&value) => out.line(&[b"VALUE ", value.as_ref()]).await?,
            Ok(Some(value)) => out.line(&[b"VALUE ", quote::quote(value.as_ref()).as_bytes()]).await?,
            Ok(None) => out.line(&[b"NOT_FOUND"]).await?,
            Err(message) => error(out, &message).await?,
        },
        Command::Put { key, value } => match backend.put(&key, value).await {
            Ok(()) => out.line(&[b"OK"]).await?,
            Err(message) => error(out, &message).await?,
        },
        Command::Del { key } => match backend.delete(&key).await {
            Ok(true) => out.line(&[b"OK"]).await?,
            Ok(false) => out.line(&[b"NOT_FOUND"]).await?,
            Err(message) => error(out, &message).await?,
        },
        Command::SetEx { key, seconds, value } => {
            match backend.setex(&key, value, Duration::from_secs(seconds)).await {
                Ok(()) => out.line(&[b"OK"]).await?,
                Err(message) => error(out, &message).await?,
            }
        }
        Command::Expire { key, seconds } => {
            found_or_not(out, backend.expire(&key, Some(Duration::from_secs(seconds))).await).await?;
        }
        Command::Persist { key } => found_or_not(out, backend.expire(&key, None).await).await?,
        Command::Ttl { key } => match backend.ttl(&key).await {
            Ok(Some(Some(left))) => out.line(&[b"TTL ", ttl_seconds(left).to_string().as_bytes()]).await?,
            Ok(Some(None)) => out.line(&[b"TTL -1"]).await?,
            Ok(None) => out.line(&[b"NOT_FOUND"]).await?,
            Err(message) => error(out, &message).await?,
        },
        Command::Dump { prefix } => dump(backend, prefix.as_deref(), out).await?,
        Command::Stats => match backend.stats().await {
            Ok(figures) => {
                for (name, value) in figures {
                    out.line(&[name.as_bytes(), b" ", value.as_bytes()]).await?;
                }
                out.line(&[b"END"]).await?;
            }
            Err(message) => error(out, &message).await?,
        },
        Command::Help => {
            for line in HELP {
                out.line(&[line.as_bytes()]).await?;
            }
            out.line(&[b"END"]).await?;
        }
        Command::Quit => {
            out.line(&[b"BYE"]).await?;
            return Ok(Next::Close);
        }
        Command::Auth { .. } => out.line(&[backend.auth().as_bytes()]).await?,
        Command::Verbose { on } => match backend.set_verbose(on) {
            Ok(()) => out.line(&[b"OK"]).await?,
            Err(message) => error(out, message).await?,
        },
    }
    Ok(Next::Continue)
}

/// One pair on a line, as DUMP shows it: key and value, quoted where needed.
pub fn render_pair(key: &str, value: &[u8]) -> String {
    format!("{} {}", quote::render_key(key), quote::render_value(value))
}

/// Seconds left as `TTL` answers them: rounded to the nearest second, as Redis does.
pub fn ttl_seconds(left: Duration) -> u64 {
    (left.as_millis() as u64).saturating_add(500) / 1000
}

async fn found_or_not<R: Replies>(out: &mut R, result: Result<bool, String>) -> Result<(), R::Error> {
    match result {
        Ok(true) => out.line(&[b"OK"]).await,
        Ok(false) => out.line(&[b"NOT_FOUND"]).await,
        Err(message) => error(out, &message).await,
    }
}

async fn error<R: Replies>(out: &mut R, message: &str) -> Result<(), R::Error> {
    out.line(&[b"ERR ", message.as_bytes()]).await
}

/// `key value` lines, then `END <count>`; an error cuts the listing short
/// with `ERR`, and no `END`, so a script cannot take a partial listing for a
/// whole one.
async fn dump<B: Backend, R: Replies>(backend: &B, prefix: Option<&str>, out: &mut R) -> Result<(), R::Error> {
    let mut pairs = match backend.dump(prefix).await {
        Ok(pairs) => pairs,
        Err(message) => return error(out, &message).await,
    };
    let mut count = 0u64;
    while let Some(item) = poll_fn(|cx| Pin::new(&mut pairs).poll_next(cx)).await {
        let pair = item.and_then(|item| item.value_bytes().map(|value| (item.key, value)));
        match pair {
            Ok((key, value)) => {
                out.line(&[render_pair(&key, &value).as_bytes()]).await?;
                count += 1;
            }
            Err(message) => return error(out, &message).await,
        }
    }
    out.line(&[b"END ", count.to_string().as_bytes()]).await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;

    /// A backend over a map (values and their ttls), and replies collected as strings.
    #[derive(Default)]
    struct Map(Mutex<BTreeMap<String, Vec<u8>>>, Mutex<BTreeMap<String, Duration>>);

    struct Items(std::vec::IntoIter<Result<Item, String>>);

    impl Stream for Items {
        type Item = Result<Item, String>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }

    impl Backend for Map {
        type Value = Vec<u8>;
        type Pairs = Items;

        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(self.0.lock().unwrap().get(key).cloned())
        }
        async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
            self.0.lock().unwrap().insert(key.to_owned(), value);
            self.1.lock().unwrap().remove(key);
            Ok(())
        }
        async fn setex(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), String> {
            self.0.lock().unwrap().insert(key.to_owned(), value);
            self.1.lock().unwrap().insert(key.to_owned(), ttl);
            Ok(())
        }
        async fn expire(&self, key: &str, ttl: Option<Duration>) -> Result<bool, String> {
            if !self.0.lock().unwrap().contains_key(key) {
                return Ok(false);
            }
            let mut ttls = self.1.lock().unwrap();
            match ttl {
                Some(ttl) => ttls.insert(key.to_owned(), ttl),
                None => ttls.remove(key),
            };
            Ok(true)
        }
        async fn ttl(&self, key: &str) -> Result<Option<Option<Duration>>, String> {
            if !self.0.lock().unwrap().contains_key(key) {
                return Ok(None);
            }
            Ok(Some(self.1.lock().unwrap().get(key).copied()))
        }
        async fn delete(&self, key: &str) -> Result<bool, String> {
            Ok(self.0.lock().unwrap().remove(key).is_some())
        }
        async fn dump(&self, prefix: Option<&str>) -> Result<Items, String> {
            let map = self.0.lock().unwrap();
            let mut items: Vec<Result<Item, String>> = map
                .iter()
                .filter(|(key, _)| key.starts_with(prefix.unwrap_or("")))
                .map(|(key, value)| {
                    Ok(Item {
                        key: key.clone(),
                        value: Some(String::from_utf8_lossy(value).into_owned()),
                        value_base64: None,
                        version: None,
                        content_type: None,
                        expires_at: None,
                    })
                })
                .collect();
            if prefix == Some("broken") {
                items.push(Err("the listing was cut short".into()));
            }
            Ok(Items(items.into_iter()))
        }
        async fn stats(&self) -> Result<Vec<(String, String)>, String> {
            Err("no figures here".into())
        }
    }

    #[derive(Default)]
    struct Lines(Vec<String>);

    impl Replies for Lines {
        type Error = std::convert::Infallible;
        async fn line(&mut self, parts: &[&[u8]]) -> Result<(), Self::Error> {
            self.0.push(String::from_utf8_lossy(&parts.concat()).into_owned());
            Ok(())
        }
    }

    fn run(backend: &Map, lines: &[&str]) -> Vec<String> {
        let mut out = Lines::default();
        for line in lines {
            let command = Command::parse(line.as_bytes()).unwrap().unwrap();
            let future = execute(command, backend, &mut out);
            // Every future here is ready at once: a no-op waker drives it.
            let mut future = std::pin::pin!(future);
            let waker = std::task::Waker::noop();
            let std::task::Poll::Ready(Ok(_)) = future.as_mut().poll(&mut std::task::Context::from_waker(waker)) else {
                panic!("the command did not finish");
            };
        }
        out.0
    }

    #[test]
    fn the_seed_session_answers_as_the_assignment_says() {
        let map = Map::default();
        let replies = run(
            &map,
            &[
                "PUT name Derek Moss",
                "GET name",
                "PUT age = 18",
                "DUMP",
                "DEL name",
                "DEL name",
                "GET name",
                "QUIT",
            ],
        );
        assert_eq!(
            replies,
            [
                "OK",
                "VALUE Derek Moss",
                "OK",
                "age 18",
                "name Derek Moss",
                "END 2",
                "OK",
                "NOT_FOUND",
                "NOT_FOUND",
                "BYE"
            ]
        );
    }

    #[test]
    fn the_expiry_commands_answer_as_redis_spells_them() {
        let map = Map::default();
        let replies = run(
            &map,
            &[
                "TTL k",
                "SETEX k 30 v w",
                "GET k",
                "TTL k",
                "PERSIST k",
                "TTL k",
                "EXPIRE k 5",
                "TTL k",
                "PUT k v",
                "TTL k",
                "EXPIRE nope 5",
                "PERSIST nope",
            ],
        );
        assert_eq!(
            replies,
            [
                "NOT_FOUND",
                "OK",
                "VALUE v w",
                "TTL 30",
                "OK",
                "TTL -1",
                "OK",
                "TTL 5",
                "OK",
                "TTL -1",
                "NOT_FOUND",
                "NOT_FOUND"
            ]
        );
        assert_eq!(ttl_seconds(Duration::from_millis(29_499)), 29);
        assert_eq!(ttl_seconds(Duration::from_millis(29_500)), 30);
    }

    #[test]
    fn values_that_cannot_stand_bare_are_quoted_and_errors_are_err_lines() {
        let map = Map::default();
        let replies = run(&map, &["PUT k \"two\\nlines\"", "GET k", "STATS", "DUMP broken"]);
        assert_eq!(
            replies,
            [
                "OK",
                "VALUE \"two\\nlines\"",
                "ERR no figures here",
                "ERR the listing was cut short"
            ]
        );
    }
}
