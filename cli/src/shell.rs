//! `kv shell`: an interactive prompt speaking the telnet adapter's commands
//! (the same parser), with line editing and history. Fed by a pipe instead of
//! a person, it runs one command per line and prints no prompt.

use std::io::{BufRead, IsTerminal, Write};

use bytes::Bytes;
use futures_util::StreamExt;
use kv_proxy::telnet::Command;
use kv_proxy::telnet::command::HELP;
use kv_server::quote;
use rustyline::error::ReadlineError;

use crate::client::{Client, Precondition};
use crate::error::CliError;

/// The history file, in the home directory.
const HISTORY: &str = ".kv_history";

pub async fn run(client: Client) -> Result<(), CliError> {
    if !std::io::stdin().is_terminal() {
        let stdin = std::io::stdin();
        for line in stdin.lock().split(b'\n') {
            let mut line = line?;
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if !execute_line(&client, &line).await? {
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
                if !execute_line(&client, line.as_bytes()).await? {
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
async fn execute_line(client: &Client, line: &[u8]) -> Result<bool, CliError> {
    let command = match Command::parse(line) {
        Ok(Some(command)) => command,
        Ok(None) => return Ok(true),
        Err(err) => {
            reply(format_args!("ERR {err}"))?;
            return Ok(true);
        }
    };
    if let Command::Quit = command {
        reply(format_args!("BYE"))?;
        return Ok(false);
    }
    match execute(client, command).await {
        Ok(()) => {}
        Err(err @ (CliError::OutputClosed | CliError::Io(_))) => return Err(err),
        Err(err) => reply(format_args!("ERR {err}"))?,
    }
    Ok(true)
}

/// Writes one reply line and sends it on at once.
fn reply(line: std::fmt::Arguments<'_>) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

async fn execute(client: &Client, command: Command) -> Result<(), CliError> {
    match command {
        Command::Get { key } => match client.get(&key).await? {
            Some(value) => reply(format_args!("VALUE {}", quote::render_value(&value)))?,
            None => reply(format_args!("NOT_FOUND"))?,
        },
        Command::Put { key, value } => {
            let content_type = crate::default_content_type(&value);
            client
                .put(&key, Bytes::from(value), content_type, Precondition::None)
                .await?;
            reply(format_args!("OK"))?;
        }
        Command::Del { key } => {
            let found = client.delete(&key).await?;
            reply(format_args!("{}", if found { "OK" } else { "NOT_FOUND" }))?;
        }
        Command::Dump { prefix } => {
            let mut items = Box::pin(client.dump(prefix.as_deref()).await?);
            let mut count = 0u64;
            while let Some(item) = items.next().await {
                let item = item?;
                let value = item.value_bytes().map_err(CliError::Server)?;
                reply(format_args!("{}", crate::render_pair(&item.key, &value)))?;
                count += 1;
            }
            reply(format_args!("END {count}"))?;
        }
        Command::Stats => {
            for (name, value) in crate::stats(client).await? {
                reply(format_args!("{name} {value}"))?;
            }
            reply(format_args!("END"))?;
        }
        Command::Help => {
            for line in HELP {
                reply(format_args!("{line}"))?;
            }
            reply(format_args!("END"))?;
        }
        Command::Quit => unreachable!("handled by the caller"),
        Command::Auth { .. } => println!("ERR the shell authenticates with KV_TOKEN; AUTH is for telnet"),
    }
    Ok(())
}
