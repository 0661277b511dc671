//! `kv shell`: an interactive prompt speaking the telnet adapter's commands
//! (the same parser), with line editing and history. Fed by a pipe instead of
//! a person, it runs one command per line and prints no prompt.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use kv_api::command::Command;
use kv_api::dump::{Item, content_type_for};
use kv_api::expiry::{Expiry, Touch};
use kv_api::interpreter::{self, Backend, Next, Replies};
use kv_api::source::Source;
use rustyline::error::ReadlineError;

use crate::client::{Client, Precondition};
use crate::error::CliError;

/// The history file, in the home directory.
const HISTORY: &str = ".kv_history";

pub async fn run(client: Client) -> Result<(), CliError> {
    // A person at the prompt is told where each value came from; a script
    // feeding a pipe gets the plain replies unless it says VERBOSE ON.
    let verbose = AtomicBool::new(std::io::stdin().is_terminal());
    if !std::io::stdin().is_terminal() {
        let stdin = std::io::stdin();
        for line in stdin.lock().split(b'\n') {
            let mut line = line?;
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if !execute_line(&client, &verbose, &line).await? {
                break;
            }
        }
        return Ok(());
    }

    let mut editor =
        rustyline::DefaultEditor::new().map_err(|e| CliError::Io(format!("cannot start the line editor: {e}")))?;
    let history = std::env::var_os("HOME").map(|home| std::path::PathBuf::from(home).join(HISTORY));
    if let Some(history) = &history {
        let _ = editor.load_history(history);
    }
    println!(
        "kv shell on {}: type HELP for the commands, QUIT or Ctrl-D to leave.",
        client.base()
    );
    loop {
        match editor.readline("kv> ") {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                if !execute_line(&client, &verbose, line.as_bytes()).await? {
                    break;
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(err) => return Err(CliError::Io(format!("cannot read the command line: {err}"))),
        }
    }
    if let Some(history) = &history {
        let _ = editor.save_history(history);
    }
    Ok(())
}

/// Runs one line; `Ok(false)` when the session should end. Replies go out
/// with `writeln!`, not `println!`, so that a closed stdout ends the session
/// instead of panicking.
async fn execute_line(client: &Client, verbose: &AtomicBool, line: &[u8]) -> Result<bool, CliError> {
    let command = match Command::parse(line) {
        Ok(Some(command)) => command,
        Ok(None) => return Ok(true),
        Err(err) => {
            Stdout.line(&[b"ERR ", err.to_string().as_bytes()]).await?;
            return Ok(true);
        }
    };
    let next = interpreter::execute(command, &Http(client, verbose), &mut Stdout).await?;
    Ok(next == Next::Continue)
}

/// The shell's backend: the HTTP API, through the CLI's client. `VERBOSE`
/// starts on at a prompt: after a value read through a proxy, the shell says
/// where it came from.
struct Http<'a>(&'a Client, &'a AtomicBool);

/// A value the shell read, and where a proxy took it from.
struct Read(Bytes, Option<Source>);

impl AsRef<[u8]> for Read {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Backend for Http<'_> {
    type Value = Read;
    type Pairs = BoxStream<'static, Result<Item, String>>;

    async fn get(&self, key: &str) -> Result<Option<Read>, String> {
        let read = self.0.get_from(key).await.map_err(|err| err.to_string())?;
        Ok(read.map(|(value, source)| Read(value, source)))
    }

    fn source(&self, value: &Read) -> Option<Source> {
        value.1
    }

    fn verbose(&self) -> bool {
        self.1.load(Ordering::Relaxed)
    }

    fn set_verbose(&self, on: bool) -> Result<(), &'static str> {
        self.1.store(on, Ordering::Relaxed);
        Ok(())
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        let content_type = content_type_for(&value);
        self.0
            .put(key, Bytes::from(value), content_type, Precondition::None)
            .await
            .map(drop)
            .map_err(|err| err.to_string())
    }

    async fn setex(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), String> {
        let content_type = content_type_for(&value);
        self.0
            .put_with(
                key,
                Bytes::from(value),
                content_type,
                Precondition::None,
                Expiry::After(ttl),
            )
            .await
            .map(drop)
            .map_err(|err| err.to_string())
    }

    async fn expire(&self, key: &str, ttl: Option<Duration>) -> Result<bool, String> {
        let touch = ttl.map_or(Touch::Persist, Touch::After);
        self.0.touch(key, touch).await.map_err(|err| err.to_string())
    }

    async fn ttl(&self, key: &str) -> Result<Option<Option<Duration>>, String> {
        self.0.ttl(key).await.map_err(|err| err.to_string())
    }

    async fn delete(&self, key: &str) -> Result<bool, String> {
        self.0.delete(key).await.map_err(|err| err.to_string())
    }

    async fn dump(&self, prefix: Option<&str>) -> Result<Self::Pairs, String> {
        let items = self.0.dump(prefix).await.map_err(|err| err.to_string())?;
        Ok(items.map(|item| item.map_err(|err| err.to_string())).boxed())
    }

    async fn stats(&self) -> Result<Vec<(String, String)>, String> {
        crate::stats(self.0).await.map_err(|err| err.to_string())
    }

    fn auth(&self) -> &'static str {
        "ERR the shell authenticates with KV_TOKEN; AUTH is for telnet"
    }
}

/// Replies on standard output, each line sent on at once.
struct Stdout;

impl Replies for Stdout {
    type Error = CliError;

    async fn line(&mut self, parts: &[&[u8]]) -> Result<(), CliError> {
        let mut stdout = std::io::stdout().lock();
        for part in parts {
            stdout.write_all(part)?;
        }
        stdout.write_all(b"\n")?;
        stdout.flush()?;
        Ok(())
    }
}
