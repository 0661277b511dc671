//! The commands of the line protocol, parsed from one line each.
//!
//! # Format
//! ```text
//! PUT <key> <value>      the value is the rest of the line
//! PUT <key> = <value>    the form the original assignment used
//! GET <key>
//! DEL <key>              (DELETE too)
//! DUMP [<prefix>]
//! SETEX <key> <seconds> <value>   PUT with a deadline; the value is the rest of the line
//! EXPIRE <key> <seconds>          give a key a deadline
//! PERSIST <key>                   take a key's deadline away
//! TTL <key>                       TTL <seconds left>, TTL -1 (no deadline), or NOT_FOUND
//! STATS | HELP | QUIT (EXIT too)
//! AUTH <token>           when the proxy has an access token
//! ```
//! Command names are case-insensitive. A key or value may be written as a
//! double-quoted string with `\"`, `\\`, `\n`, `\r`, `\t` and `\xHH` escapes.
//! `kv shell` speaks the same commands through this parser, and
//! the interpreter answers them for both.

use crate::key::{self, KeyError};
use crate::quote::{self, QuoteError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Get {
        key: String,
    },
    Put {
        key: String,
        value: Vec<u8>,
    },
    Del {
        key: String,
    },
    Dump {
        prefix: Option<String>,
    },
    /// A PUT that expires `seconds` after it is written.
    SetEx {
        key: String,
        seconds: u64,
        value: Vec<u8>,
    },
    Expire {
        key: String,
        seconds: u64,
    },
    Persist {
        key: String,
    },
    Ttl {
        key: String,
    },
    Stats,
    Help,
    Quit,
    Auth {
        token: String,
    },
    /// `VERBOSE ON|OFF`: whether GET answers say where the value came from.
    Verbose {
        on: bool,
    },
}

/// What is wrong with a line, written to be answered as `ERR <this>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown command '{0}'; type HELP for the list")]
    Unknown(String),
    #[error("usage: {0}")]
    Usage(&'static str),
    #[error("{0}")]
    Quote(#[from] QuoteError),
    #[error("bad key: {0}")]
    Key(#[from] KeyError),
    #[error("seconds must be a whole number from 1 to {max}, not '{0}'", max = MAX_SECONDS)]
    Seconds(String),
}

/// The most seconds `SETEX` and `EXPIRE` take ([`crate::expiry::MAX_TTL`]).
pub const MAX_SECONDS: u64 = crate::expiry::MAX_TTL.as_secs();

pub const HELP: &[&str] = &[
    "PUT <key> <value>    store a value (the rest of the line); PUT <key> = <value> works too",
    "GET <key>            read a value: VALUE <value>, or NOT_FOUND",
    "DEL <key>            delete a key: OK, or NOT_FOUND",
    "DUMP [<prefix>]      list pairs in key order, then END <count>",
    "SETEX <key> <seconds> <value>  store a value that expires after that many seconds",
    "EXPIRE <key> <seconds>  give a key a deadline: OK, or NOT_FOUND",
    "PERSIST <key>        remove a key's deadline: OK, or NOT_FOUND",
    "TTL <key>            seconds left: TTL <n>, TTL -1 (no deadline), or NOT_FOUND",
    "STATS                cache figures",
    "HELP                 this list",
    "QUIT                 close the connection",
    "AUTH <token>         authenticate, when the proxy has an access token",
    "VERBOSE ON|OFF       GET answers say where the value came from: VALUE <value> (cached, 3 s old) or (from server)",
    "Quote keys or values holding spaces or special bytes: PUT \"my key\" \"two\\nlines\" (escapes \\\" \\\\ \\n \\r \\t \\xHH)",
];

const USAGE_GET: &str = "GET <key>";
const USAGE_PUT: &str = "PUT <key> <value>  (or PUT <key> = <value>)";
const USAGE_DEL: &str = "DEL <key>";
const USAGE_DUMP: &str = "DUMP [<prefix>]";
const USAGE_SETEX: &str = "SETEX <key> <seconds> <value>";
const USAGE_EXPIRE: &str = "EXPIRE <key> <seconds>";
const USAGE_PERSIST: &str = "PERSIST <key>";
const USAGE_TTL: &str = "TTL <key>";

impl Command {
    /// Parses one line (without its line ending). `Ok(None)` for a blank line.
    pub fn parse(line: &[u8]) -> Result<Option<Self>, ParseError> {
        let line = trim_start(line);
        if line.is_empty() {
            return Ok(None);
        }
        let (name, rest) = split_word(line);
        // Upper-cased on the stack: every command name is short.
        let mut upper = [0u8; 8];
        let name_upper: &[u8] = match upper.get_mut(..name.len()) {
            Some(upper) => {
                upper.copy_from_slice(name);
                upper.make_ascii_uppercase();
                upper
            }
            None => b"",
        };
        let command = match name_upper {
            b"GET" => Self::Get {
                key: only_key(rest, USAGE_GET)?,
            },
            b"DEL" | b"DELETE" => Self::Del {
                key: only_key(rest, USAGE_DEL)?,
            },
            b"PUT" | b"SET" => {
                let (key, rest) = token(trim_start(rest))?.ok_or(ParseError::Usage(USAGE_PUT))?;
                let key = to_key(key)?;
                let value = value(rest)?.ok_or(ParseError::Usage(USAGE_PUT))?;
                Self::Put { key, value }
            }
            b"DUMP" => {
                let prefix = match token(trim_start(rest))? {
                    None => None,
                    Some((prefix, rest)) => {
                        if !trim_start(rest).is_empty() {
                            return Err(ParseError::Usage(USAGE_DUMP));
                        }
                        Some(String::from_utf8(prefix).map_err(|_| KeyError::NotUtf8)?)
                    }
                };
                Self::Dump { prefix }
            }
            b"SETEX" => {
                let (key, rest) = token(trim_start(rest))?.ok_or(ParseError::Usage(USAGE_SETEX))?;
                let key = to_key(key)?;
                let (seconds, rest) = split_word(trim_start(rest));
                let seconds = parse_seconds(seconds, USAGE_SETEX)?;
                let value = value(rest)?.ok_or(ParseError::Usage(USAGE_SETEX))?;
                Self::SetEx { key, seconds, value }
            }
            b"EXPIRE" => {
                let (key, rest) = token(trim_start(rest))?.ok_or(ParseError::Usage(USAGE_EXPIRE))?;
                let key = to_key(key)?;
                let (seconds, rest) = split_word(trim_start(rest));
                let seconds = parse_seconds(seconds, USAGE_EXPIRE)?;
                if !trim_start(rest).is_empty() {
                    return Err(ParseError::Usage(USAGE_EXPIRE));
                }
                Self::Expire { key, seconds }
            }
            b"PERSIST" => Self::Persist {
                key: only_key(rest, USAGE_PERSIST)?,
            },
            b"TTL" => Self::Ttl {
                key: only_key(rest, USAGE_TTL)?,
            },
            b"STATS" => no_args(rest, Self::Stats, "STATS")?,
            b"HELP" => Self::Help,
            b"QUIT" | b"EXIT" => Self::Quit,
            b"VERBOSE" => match trim_start(rest).to_ascii_uppercase().trim_ascii_end() {
                b"ON" => Self::Verbose { on: true },
                b"OFF" => Self::Verbose { on: false },
                _ => return Err(ParseError::Usage("VERBOSE ON|OFF")),
            },
            b"AUTH" => {
                let (token, rest) = token(trim_start(rest))?.ok_or(ParseError::Usage("AUTH <token>"))?;
                if !trim_start(rest).is_empty() {
                    return Err(ParseError::Usage("AUTH <token>"));
                }
                Self::Auth {
                    token: String::from_utf8_lossy(&token).into_owned(),
                }
            }
            _ => {
                return Err(ParseError::Unknown(truncate(
                    &String::from_utf8_lossy(name).to_ascii_uppercase(),
                )));
            }
        };
        Ok(Some(command))
    }

    /// The line that parses back to this command.
    pub fn render(&self) -> String {
        match self {
            Self::Get { key } => format!("GET {}", quote::render_key(key)),
            Self::Put { key, value } => format!("PUT {} {}", quote::render_key(key), quote::render_value(value)),
            Self::Del { key } => format!("DEL {}", quote::render_key(key)),
            Self::Dump { prefix: None } => "DUMP".into(),
            Self::Dump { prefix: Some(prefix) } => format!("DUMP {}", quote::quote(prefix.as_bytes())),
            Self::SetEx { key, seconds, value } => format!(
                "SETEX {} {seconds} {}",
                quote::render_key(key),
                quote::render_value(value)
            ),
            Self::Expire { key, seconds } => format!("EXPIRE {} {seconds}", quote::render_key(key)),
            Self::Persist { key } => format!("PERSIST {}", quote::render_key(key)),
            Self::Ttl { key } => format!("TTL {}", quote::render_key(key)),
            Self::Stats => "STATS".into(),
            Self::Help => "HELP".into(),
            Self::Quit => "QUIT".into(),
            Self::Auth { token } => format!("AUTH {}", quote::render_key(token)),
            Self::Verbose { on: true } => "VERBOSE ON".into(),
            Self::Verbose { on: false } => "VERBOSE OFF".into(),
        }
    }
}

/// Whether a line is the start of an HTTP request: a browser or HTTP client
/// pointed at the wrong port, or a web page trying a cross-protocol attack.
/// Such a connection is closed without executing anything (as Redis does).
pub fn looks_like_http(line: &[u8]) -> bool {
    let line = trim_start(line);
    let (first, rest) = split_word(line);
    if first.eq_ignore_ascii_case(b"POST") || first.eq_ignore_ascii_case(b"Host:") {
        return true;
    }
    // `GET /path HTTP/1.1`, `PUT /kv/x HTTP/1.0`, `OPTIONS * HTTP/2`...: a request
    // target (a path, `*` or an absolute URL) before the version, so that a
    // command storing the text `HTTP/1.1` under an ordinary key still runs.
    let words: Vec<&[u8]> = rest
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    let is_target = |word: &[u8]| {
        let scheme = |s: &[u8]| word.len() > s.len() && word[..s.len()].eq_ignore_ascii_case(s);
        word.starts_with(b"/") || word == b"*" || scheme(b"http://") || scheme(b"https://")
    };
    matches!(words.as_slice(), [target, version]
        if is_target(target) && version.len() >= 6 && version[..5].eq_ignore_ascii_case(b"HTTP/"))
}

fn truncate(name: &str) -> String {
    name.chars().take(32).filter(|c| !c.is_control()).collect()
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

fn trim_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

fn split_word(bytes: &[u8]) -> (&[u8], &[u8]) {
    let end = bytes.iter().position(u8::is_ascii_whitespace).unwrap_or(bytes.len());
    bytes.split_at(end)
}

/// A token and the rest of the line after it.
type Token<'a> = (Vec<u8>, &'a [u8]);

/// One token: a quoted string or a bare word. `None` at the end of the line.
fn token(bytes: &[u8]) -> Result<Option<Token<'_>>, ParseError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes[0] == b'"' {
        let (text, used) = quote::parse_quoted(bytes)?;
        return Ok(Some((text, &bytes[used..])));
    }
    let (word, rest) = split_word(bytes);
    Ok(Some((word.to_vec(), rest)))
}

fn to_key(bytes: Vec<u8>) -> Result<String, ParseError> {
    let key = String::from_utf8(bytes).map_err(|_| KeyError::NotUtf8)?;
    key::validate(&key)?;
    Ok(key)
}

fn only_key(rest: &[u8], usage: &'static str) -> Result<String, ParseError> {
    let (key, rest) = token(trim_start(rest))?.ok_or(ParseError::Usage(usage))?;
    if !trim_start(rest).is_empty() {
        return Err(ParseError::Usage(usage));
    }
    to_key(key)
}

/// A count of seconds for `SETEX` or `EXPIRE`: 1 to [`MAX_SECONDS`].
fn parse_seconds(word: &[u8], usage: &'static str) -> Result<u64, ParseError> {
    if word.is_empty() {
        return Err(ParseError::Usage(usage));
    }
    match std::str::from_utf8(word).ok().and_then(|w| w.parse::<u64>().ok()) {
        Some(n) if (1..=MAX_SECONDS).contains(&n) && word.iter().all(u8::is_ascii_digit) => Ok(n),
        _ => Err(ParseError::Seconds(truncate(&String::from_utf8_lossy(word)))),
    }
}

fn no_args(rest: &[u8], command: Command, usage: &'static str) -> Result<Command, ParseError> {
    if trim_start(rest).is_empty() {
        Ok(command)
    } else {
        Err(ParseError::Usage(usage))
    }
}

/// The value of a PUT: after an optional `=`, a quoted string alone, or the
/// rest of the line with surrounding whitespace removed.
fn value(rest: &[u8]) -> Result<Option<Vec<u8>>, ParseError> {
    let mut rest = trim_start(rest);
    if rest.first() == Some(&b'=') && rest.get(1).is_none_or(u8::is_ascii_whitespace) {
        rest = trim_start(&rest[1..]);
    }
    if rest.is_empty() {
        return Ok(None);
    }
    if rest[0] == b'"' {
        let (value, used) = quote::parse_quoted(rest)?;
        if !trim_start(&rest[used..]).is_empty() {
            return Err(ParseError::Usage(
                "PUT <key> \"<quoted value>\" with nothing after the closing quote",
            ));
        }
        return Ok(Some(value));
    }
    Ok(Some(trim_end(rest).to_vec()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(line: &str) -> Command {
        Command::parse(line.as_bytes()).unwrap().unwrap()
    }

    fn put(key: &str, value: &[u8]) -> Command {
        Command::Put {
            key: key.into(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn the_assignment_commands() {
        assert_eq!(parse("PUT name Derek Moss"), put("name", b"Derek Moss"));
        assert_eq!(parse("PUT age = 18"), put("age", b"18"));
        assert_eq!(parse("put Fname = Sayali"), put("Fname", b"Sayali"));
        assert_eq!(parse("get name"), Command::Get { key: "name".into() });
        assert_eq!(parse("verbose on"), Command::Verbose { on: true });
        assert_eq!(parse("VERBOSE OFF "), Command::Verbose { on: false });
        assert!(Command::parse(b"VERBOSE maybe").is_err());
        assert_eq!(parse("DEL age"), Command::Del { key: "age".into() });
        assert_eq!(parse("dump"), Command::Dump { prefix: None });
        assert_eq!(
            parse("DUMP users/"),
            Command::Dump {
                prefix: Some("users/".into())
            }
        );
        assert_eq!(parse("Quit"), Command::Quit);
        assert_eq!(Command::parse(b"   ").unwrap(), None);
    }

    #[test]
    fn the_expiry_commands() {
        assert_eq!(
            parse("SETEX session 30 user 42"),
            Command::SetEx {
                key: "session".into(),
                seconds: 30,
                value: b"user 42".to_vec()
            }
        );
        assert_eq!(
            parse("expire k 5"),
            Command::Expire {
                key: "k".into(),
                seconds: 5
            }
        );
        assert_eq!(parse("PERSIST k"), Command::Persist { key: "k".into() });
        assert_eq!(parse("ttl k"), Command::Ttl { key: "k".into() });
        // PUT keeps its meaning: the rest of the line is the value.
        assert_eq!(parse("PUT k v EX 2"), put("k", b"v EX 2"));
        let err = |line: &str| Command::parse(line.as_bytes()).unwrap_err().to_string();
        for bad in [
            "SETEX k 0 v",
            "SETEX k -1 v",
            "SETEX k x v",
            "EXPIRE k 1.5",
            "EXPIRE k +3",
        ] {
            assert!(err(bad).starts_with("seconds must be"), "{bad}: {}", err(bad));
        }
        assert!(err("SETEX k 5").starts_with("usage: SETEX"));
        assert!(err("EXPIRE k").starts_with("usage: EXPIRE"));
        assert!(err("EXPIRE k 5 6").starts_with("usage: EXPIRE"));
        assert!(err("TTL").starts_with("usage: TTL"));
    }

    #[test]
    fn quoting() {
        assert_eq!(parse(r#"PUT "my key" "two\nlines""#), put("my key", b"two\nlines"));
        assert_eq!(parse(r#"PUT k "\xff\x00""#), put("k", &[0xff, 0]));
        assert_eq!(parse(r#"PUT k = "= x""#), put("k", b"= x"));
        assert_eq!(parse("PUT k =v"), put("k", b"=v"));
        assert_eq!(parse(r#"GET "a b""#), Command::Get { key: "a b".into() });
    }

    #[test]
    fn errors_say_how_to_write_it_right() {
        let err = |line: &str| Command::parse(line.as_bytes()).unwrap_err().to_string();
        assert_eq!(err("FROB x"), "unknown command 'FROB'; type HELP for the list");
        assert!(err("PUT k").starts_with("usage: PUT"));
        assert!(err("GET").starts_with("usage: GET"));
        assert!(err("GET a b").starts_with("usage: GET"));
        assert!(err(r#"PUT "open"#).contains("not closed"));
        assert!(err("GET ..").starts_with("bad key"));
    }

    #[test]
    fn http_requests_are_recognised() {
        assert!(looks_like_http(b"POST /kv/x HTTP/1.1"));
        assert!(looks_like_http(b"GET / HTTP/1.1"));
        assert!(looks_like_http(b"Host: 127.0.0.1:2323"));
        assert!(looks_like_http(b"put /kv/x http/1.0"));
        assert!(!looks_like_http(b"GET name"));
        assert!(!looks_like_http(b"PUT name Derek Moss"));
        assert!(!looks_like_http(b"PUT http HTTP/1"));
        assert!(!looks_like_http(b"PUT protocol HTTP/1.1"));
        assert!(looks_like_http(b"GET http://kv/ HTTP/1.1"));
    }

    #[test]
    fn the_awkward_cases_round_trip() {
        // Regressions worth naming; the property tests below cover the rest.
        for value in [
            &b""[..],
            b" lead",
            b"trail ",
            b"= x",
            b"=",
            b"\"q\"",
            b"two\nlines\r\n",
            b"\x1b[31m",
        ] {
            let command = put("=", value);
            assert_eq!(Command::parse(command.render().as_bytes()).unwrap(), Some(command));
        }
    }

    /// Text built from pieces the quoting rules treat specially, so that the
    /// cases that matter (`= x`, a trailing space, `\x`...) come up in every
    /// run, not once in a while.
    fn awkward_text(max_pieces: usize) -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            3 => proptest::char::range('a', 'z').prop_map(String::from),
            2 => prop::sample::select(vec![
                " ", "\"", "\\", "=", "= ", "\t", "\n", "\r\n", "/", ".", "..", "\x1b", "\u{2028}", "ü", "\\x", "HTTP/1.1",
            ])
            .prop_map(String::from),
            1 => any::<char>().prop_map(String::from),
        ];
        prop::collection::vec(piece, 0..max_pieces).prop_map(|pieces| pieces.concat())
    }

    fn awkward_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            awkward_text(16).prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..40),
        ]
    }

    fn valid_key() -> impl Strategy<Value = String> {
        awkward_text(12).prop_filter("keys the server accepts", |key| key::validate(key).is_ok())
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            valid_key().prop_map(|key| Command::Get { key }),
            (valid_key(), awkward_bytes()).prop_map(|(key, value)| Command::Put { key, value }),
            valid_key().prop_map(|key| Command::Del { key }),
            (valid_key(), 1..=MAX_SECONDS, awkward_bytes()).prop_map(|(key, seconds, value)| Command::SetEx {
                key,
                seconds,
                value
            }),
            (valid_key(), 1..=MAX_SECONDS).prop_map(|(key, seconds)| Command::Expire { key, seconds }),
            valid_key().prop_map(|key| Command::Persist { key }),
            valid_key().prop_map(|key| Command::Ttl { key }),
            proptest::option::of(awkward_text(12)).prop_map(|prefix| Command::Dump { prefix }),
            awkward_text(12).prop_map(|token| Command::Auth { token }),
            Just(Command::Stats),
            Just(Command::Help),
            Just(Command::Quit),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn render_then_parse_gives_the_command_back(command in command()) {
            let line = command.render();
            prop_assert!(!line.contains(['\n', '\r']), "a rendered command must stay on one line: {line:?}");
            prop_assert_eq!(Command::parse(line.as_bytes()).unwrap(), Some(command));
        }

        /// Whatever a client types, parsing does not panic, and what it
        /// understood renders to a line that means the same thing.
        #[test]
        fn any_line_parses_to_a_fixed_point(line in prop_oneof![
            awkward_bytes(),
            (prop::sample::select(vec!["GET ", "PUT ", "DEL ", "DUMP ", "AUTH ", "put k = ", "SETEX k 5 ", "EXPIRE ", "TTL ", "PERSIST "]), awkward_bytes())
                .prop_map(|(name, rest)| [name.as_bytes(), &rest].concat()),
        ]) {
            if let Ok(Some(command)) = Command::parse(&line) {
                prop_assert_eq!(Command::parse(command.render().as_bytes()).unwrap(), Some(command));
            }
        }
    }
}
