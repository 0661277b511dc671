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
            if !execute_line(&client, &line).await {
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
                if !execute_line(&client, line.as_bytes()).await {
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

/// Runs one line; `false` when the session should end.
async fn execute_line(client: &Client, line: &[u8]) -> bool {
    let command = match Command::parse(line) {
        Ok(Some(command)) => command,
        Ok(None) => return true,
        Err(err) => {
            println!("ERR {err}");
            return true;
        }
    };
    if let Command::Quit = command {
        println!("BYE");
        return false;
    }
    if let Err(err) = execute(client, command).await {
        println!("ERR {err}");
    }
    let _ = std::io::stdout().flush();
    true
}

async fn execute(client: &Client, command: Command) -> Result<(), CliError> {
    match command {
        Command::Get { key } => match client.get(&key).await? {
            Some(value) => println!("VALUE {}", quote::render_value(&value)),
            None => println!("NOT_FOUND"),
        },
        Command::Put { key, value } => {
            let content_type = crate::default_content_type(&value);
            client
                .put(&key, Bytes::from(value), content_type, Precondition::None)
                .await?;
            println!("OK");
        }
        Command::Del { key } => println!("{}", if client.delete(&key).await? { "OK" } else { "NOT_FOUND" }),
        Command::Dump { prefix } => {
            let mut items = Box::pin(client.dump(prefix.as_deref()).await?);
            let mut count = 0u64;
            while let Some(item) = items.next().await {
                let item = item?;
                let value = item.value_bytes().map_err(CliError::Server)?;
                println!("{}", crate::render_pair(&item.key, &value));
                count += 1;
            }
            println!("END {count}");
        }
        Command::Stats => {
            for (name, value) in crate::stats(client).await? {
                println!("{name} {value}");
            }
            println!("END");
        }
        Command::Help => {
            for line in HELP {
                println!("{line}");
            }
            println!("END");
        }
        Command::Quit => unreachable!("handled by the caller"),
    }
    Ok(())
}
