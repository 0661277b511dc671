//! The `kv` command-line client, run as a user or a script runs it: the real
//! binary against a real kv-server and kv-proxy, asserting exit codes, the
//! exact bytes on stdout and the one-line messages on stderr.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kv_tests::{Program, Proxy, Server, bin, client, metric, unused_addr};
use serde_json::Value;

/// The longest any one `kv` command may take before the test gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// What one finished `kv` command left behind.
struct Run {
    what: String,
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn text(&self) -> String {
        String::from_utf8(self.stdout.clone()).unwrap_or_else(|_| panic!("{}: stdout is not UTF-8", self.what))
    }

    fn describe(&self) -> String {
        format!(
            "{}: exit {:?}\nstdout: {:?}\nstderr: {}",
            self.what,
            self.code,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        )
    }

    /// Exit 0; returns stdout.
    fn ok(&self) -> &[u8] {
        assert_eq!(self.code, Some(0), "{}", self.describe());
        &self.stdout
    }

    /// Exit `code`; nothing on stdout.
    fn fails(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "{}", self.describe());
        assert!(self.stdout.is_empty(), "{}", self.describe());
        self
    }

    /// Exit `code` with one line on stderr, `kv: ...`; returns the line.
    fn fails_with_one_line(&self, code: i32) -> &str {
        self.fails(code);
        let line = self.stderr.strip_suffix('\n').unwrap_or(&self.stderr);
        assert!(line.starts_with("kv: "), "{}", self.describe());
        assert!(!line.contains('\n'), "more than one line: {}", self.describe());
        line
    }
}

/// `kv --url URL ARGS...` with a clean environment: stdin null, stdout and stderr piped.
fn kv_command(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(bin("kv"));
    command
        .arg("--url")
        .arg(url)
        .args(args)
        .env_remove("KV_URL")
        .env_remove("KV_TOKEN")
        .env_remove("KV_TIMEOUT")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn kv(url: &str, args: &[&str]) -> Run {
    run(kv_command(url, args), None)
}

/// Like [`kv`], with `input` piped to stdin.
fn kv_stdin(url: &str, args: &[&str], input: &[u8]) -> Run {
    run(kv_command(url, args), Some(input.to_vec()))
}

/// Runs `command` to the end (killing it after [`COMMAND_TIMEOUT`]).
fn run(mut command: Command, input: Option<Vec<u8>>) -> Run {
    let what = format!("{command:?}");
    if input.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    let feeder = input.map(|bytes| {
        let mut stdin = child.stdin.take().expect("stdin piped");
        // A command may stop reading early (QUIT); a broken pipe is no failure.
        std::thread::spawn(move || drop(stdin.write_all(&bytes)))
    });
    let stdout = drain(child.stdout.take().expect("stdout piped"));
    let stderr = drain(child.stderr.take().expect("stderr piped"));
    let status = wait(&mut child, &what);
    if let Some(feeder) = feeder {
        feeder.join().expect("stdin writer");
    }
    Run {
        code: status.code(),
        stdout: stdout.join().expect("stdout reader"),
        stderr: String::from_utf8_lossy(&stderr.join().expect("stderr reader")).into_owned(),
        what,
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        pipe.read_to_end(&mut bytes).expect("read a pipe");
        bytes
    })
}

fn wait(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish in {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A kv-server with a kv-proxy in front, as `kv` normally talks to it.
struct System {
    server: Server,
    proxy: Proxy,
}

impl System {
    fn start() -> Self {
        let server = Server::start();
        let proxy = Proxy::start(&server.url, &[]);
        Self { server, proxy }
    }

    fn url(&self) -> &str {
        &self.proxy.url
    }
}

/// A plain HTTP GET from the test itself: status, one header, body.
fn http_get(url: &str, header: &str) -> (u16, Option<String>, Vec<u8>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let response = client()
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status().as_u16();
        let value = response
            .headers()
            .get(header)
            .map(|v| v.to_str().expect("ASCII header").to_owned());
        (status, value, response.bytes().await.expect("body").to_vec())
    })
}

/// The version of `key` on `server`, from its ETag.
fn version_of(server: &Server, key: &str) -> u64 {
    let (status, etag, _) = http_get(&format!("{}/kv/{key}", server.url), "etag");
    assert_eq!(status, 200, "GET {key}");
    etag.expect("an ETag")
        .trim_matches('"')
        .parse()
        .expect("a numeric ETag")
}

/// How many keys the server holds, from its `/metrics`.
fn server_keys(server: &Server) -> u64 {
    let (status, _, body) = http_get(&format!("{}/metrics", server.url), "content-type");
    assert_eq!(status, 200);
    metric(&String::from_utf8(body).expect("UTF-8 metrics"), "kv_server_keys") as u64
}

/// Every byte value once, in order.
fn all_bytes() -> Vec<u8> {
    (0..=255u8).collect()
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write a file");
    path.to_str().expect("UTF-8 path").to_owned()
}

fn lines(bytes: &[u8]) -> Vec<String> {
    std::str::from_utf8(bytes)
        .expect("UTF-8 output")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn put_get_del_and_their_exit_codes() {
    let system = System::start();
    let url = system.url();

    // Not on a terminal, put says nothing and get adds no newline.
    assert_eq!(kv(url, &["put", "name", "Derek Moss"]).ok(), b"");
    assert_eq!(kv(url, &["get", "name"]).ok(), b"Derek Moss");
    assert_eq!(kv(url, &["put", "lines", "two\nlines\n"]).ok(), b"");
    assert_eq!(kv(url, &["get", "lines"]).ok(), b"two\nlines\n");
    assert_eq!(kv(url, &["put", "path/to/a key", "ключ ✓"]).ok(), b"");
    assert_eq!(kv(url, &["get", "path/to/a key"]).ok(), "ключ ✓".as_bytes());
    assert_eq!(kv(url, &["put", "empty", ""]).ok(), b"");
    assert_eq!(kv(url, &["get", "empty"]).ok(), b"");

    // Overwrite, then read back through the cache and straight from the server.
    kv(url, &["put", "name", "Ada"]).ok();
    assert_eq!(kv(url, &["get", "name"]).ok(), b"Ada");
    assert_eq!(kv(&system.server.url, &["get", "name"]).ok(), b"Ada");

    let missing = kv(url, &["get", "nobody"]);
    let line = missing.fails_with_one_line(1);
    assert!(line.contains("nobody"), "{line}");

    assert_eq!(kv(url, &["del", "name"]).ok(), b"");
    kv(url, &["get", "name"]).fails_with_one_line(1);
    let again = kv(url, &["del", "name"]);
    assert!(again.fails_with_one_line(1).contains("name"));
    // `delete` is an alias.
    kv(url, &["delete", "lines"]).ok();
    kv(url, &["get", "lines"]).fails_with_one_line(1);

    // KV_URL stands in for --url.
    let mut command = kv_command(url, &["get", "path/to/a key"]);
    let from_env = {
        let mut bare = Command::new(bin("kv"));
        bare.args(["get", "path/to/a key"])
            .env("KV_URL", url)
            .env_remove("KV_TOKEN")
            .env_remove("KV_TIMEOUT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run(bare, None)
    };
    assert_eq!(from_env.ok(), "ключ ✓".as_bytes());
    command.env("KV_URL", "http://127.0.0.1:1");
    assert_eq!(run(command, None).ok(), "ключ ✓".as_bytes(), "--url wins over KV_URL");

    // A key the server would refuse is a usage error, caught before sending.
    kv(url, &["get", "a/../b"]).fails_with_one_line(2);
}

#[test]
fn put_takes_the_value_from_stdin_or_a_file() {
    let system = System::start();
    let url = system.url();
    let temp = tempfile::tempdir().unwrap();

    kv_stdin(url, &["put", "from-stdin", "-"], b"piped in\nwith a trailing newline\n").ok();
    assert_eq!(
        kv(url, &["get", "from-stdin"]).ok(),
        b"piped in\nwith a trailing newline\n"
    );

    let big: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    kv_stdin(url, &["put", "big", "-"], &big).ok();
    assert!(kv(url, &["get", "big"]).ok() == big.as_slice(), "800 kB from stdin");

    let path = write_file(temp.path(), "value.txt", b"from a file\n");
    kv(url, &["put", "from-file", "--file", &path]).ok();
    assert_eq!(kv(url, &["get", "from-file"]).ok(), b"from a file\n");

    // The content type is the stored one: text as text, else bytes, or as told.
    let content_type = |key: &str| http_get(&format!("{}/kv/{key}", system.server.url), "content-type").1;
    assert_eq!(content_type("from-file").as_deref(), Some("text/plain; charset=utf-8"));
    let binary = write_file(temp.path(), "value.bin", &[0xff, 0xfe, 0]);
    kv(url, &["put", "from-binary", "--file", &binary]).ok();
    assert_eq!(content_type("from-binary").as_deref(), Some("application/octet-stream"));
    kv(url, &["put", "typed", "{}", "--content-type", "application/json"]).ok();
    assert_eq!(content_type("typed").as_deref(), Some("application/json"));

    let missing = temp.path().join("no-such-file");
    let run = kv(url, &["put", "k", "--file", missing.to_str().unwrap()]);
    assert!(
        run.fails_with_one_line(2).contains("no-such-file"),
        "{}",
        run.describe()
    );
    // A value and a file, or neither, is a usage error.
    kv(url, &["put", "k", "v", "--file", &path]).fails(2);
    kv(url, &["put", "k"]).fails(2);
    kv(url, &["get", "k"]).fails_with_one_line(1);
}

#[test]
fn conditional_puts() {
    let system = System::start();
    let url = system.url();

    kv(url, &["put", "counter", "1", "--if-absent"]).ok();
    let taken = kv(url, &["put", "counter", "2", "--if-absent"]);
    taken.fails_with_one_line(1);
    assert_eq!(kv(url, &["get", "counter"]).ok(), b"1");

    let version = version_of(&system.server, "counter").to_string();
    kv(url, &["put", "counter", "2", "--if-version", &version]).ok();
    assert_eq!(kv(url, &["get", "counter"]).ok(), b"2");
    // The same version again is stale now.
    kv(url, &["put", "counter", "3", "--if-version", &version]).fails_with_one_line(1);
    assert_eq!(kv(url, &["get", "counter"]).ok(), b"2");
    // A version for a key that does not exist cannot hold either.
    kv(url, &["put", "nothing-here", "x", "--if-version", &version]).fails_with_one_line(1);
    kv(url, &["get", "nothing-here"]).fails_with_one_line(1);

    // The two conditions exclude each other; a version is a number.
    kv(url, &["put", "counter", "4", "--if-version", "1", "--if-absent"]).fails(2);
    kv(url, &["put", "counter", "4", "--if-version", "soon"]).fails(2);
    assert_eq!(kv(url, &["get", "counter"]).ok(), b"2");
}

#[test]
fn dump_as_tsv_json_and_ndjson() {
    let system = System::start();
    let url = system.url();
    kv(url, &["put", "user/2", "Grace Hopper"]).ok();
    kv(url, &["put", "user/1", "Ada Lovelace"]).ok();
    kv(url, &["put", "user/3", "tab\there, newline\nthere"]).ok();
    kv(url, &["put", "zeta", "last"]).ok();
    kv(url, &["put", "with space", "v"]).ok();
    kv_stdin(url, &["put", "bytes", "-"], &[0xff, 0x00, b'a']).ok();

    // Not a terminal: key<TAB>value lines in key order, quoted where a tab,
    // newline or bytes that are not UTF-8 would break them.
    let tsv = kv(url, &["dump"]);
    assert_eq!(
        tsv.text(),
        "bytes\t\"\\xff\\x00a\"\n\
         user/1\tAda Lovelace\n\
         user/2\tGrace Hopper\n\
         user/3\t\"tab\\there, newline\\nthere\"\n\
         \"with space\"\tv\n\
         zeta\tlast\n"
    );
    assert_eq!(
        kv(url, &["dump", "--prefix", "user/"]).text(),
        "user/1\tAda Lovelace\nuser/2\tGrace Hopper\nuser/3\t\"tab\\there, newline\\nthere\"\n"
    );
    assert_eq!(kv(url, &["dump", "--prefix", "nope/"]).ok(), b"");

    let json: Value = serde_json::from_slice(kv(url, &["dump", "--json"]).ok()).expect("--json is JSON");
    let items = json.as_array().expect("--json is an array");
    let keys: Vec<&str> = items.iter().map(|item| item["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["bytes", "user/1", "user/2", "user/3", "with space", "zeta"]);
    assert_eq!(items[0]["value_base64"], "/wBh");
    assert_eq!(items[3]["value"], "tab\there, newline\nthere");
    let json: Value = serde_json::from_slice(kv(url, &["dump", "--json", "--prefix", "user/2"]).ok()).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{"key": "user/2", "value": "Grace Hopper", "content_type": "text/plain; charset=utf-8"}])
    );
    let empty: Value = serde_json::from_slice(kv(url, &["dump", "--json", "--prefix", "nope/"]).ok()).unwrap();
    assert_eq!(empty, serde_json::json!([]));

    let ndjson = kv(url, &["dump", "--ndjson", "--prefix", "user/"]);
    let items: Vec<Value> = lines(ndjson.ok())
        .iter()
        .map(|line| serde_json::from_str(line).expect("each --ndjson line is JSON"))
        .collect();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["key"], "user/1");
    assert_eq!(items[0]["value"], "Ada Lovelace");
    assert_eq!(items[2]["value"], "tab\there, newline\nthere");
    // The same lines as `kv export`.
    assert_eq!(kv(url, &["export", "--prefix", "user/"]).ok(), ndjson.ok());

    kv(url, &["dump", "--json", "--ndjson"]).fails(2);
}

#[test]
fn stats_come_from_the_proxy() {
    let system = System::start();
    let url = system.url();
    kv(url, &["put", "k", "v"]).ok();
    kv(url, &["get", "k"]).ok();
    kv(url, &["get", "k"]).ok();

    let stats = kv(url, &["stats"]);
    let figures: Vec<(String, f64)> = lines(stats.ok())
        .iter()
        .map(|line| {
            let (name, value) = line.split_once(' ').expect("`name value` lines");
            (name.to_owned(), value.parse().expect("a number"))
        })
        .collect();
    let figure = |name: &str| {
        figures
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no {name} in {figures:?}"))
            .1
    };
    assert!(figure("cache_hits") >= 1.0, "{figures:?}");
    assert!(figure("cache_misses") >= 1.0, "{figures:?}");
    figure("cache_entries");

    // Telnet's STATS prints the same figures under the same names.
    let mut names: Vec<&str> = figures.iter().map(|(name, _)| name.as_str()).collect();
    let mut telnet = std::net::TcpStream::connect(system.proxy.telnet).expect("telnet");
    std::io::Write::write_all(&mut telnet, b"STATS\nQUIT\n").expect("send STATS");
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut telnet, &mut reply).expect("read STATS");
    let mut telnet_names: Vec<&str> = reply
        .lines()
        .take_while(|line| *line != "END")
        .filter_map(|line| line.split_once(' ').map(|(name, _)| name))
        .collect();
    names.sort_unstable();
    telnet_names.sort_unstable();
    assert_eq!(names, telnet_names, "kv stats and telnet STATS name the same figures");

    // A bare kv-server has no cache: say so, as a usage error.
    let bare = kv(&system.server.url, &["stats"]);
    let line = bare.fails_with_one_line(2);
    assert!(line.contains("kv-proxy"), "{line}");
}

#[test]
fn shell_fed_by_a_pipe_answers_like_the_telnet_adapter() {
    let system = System::start();
    let url = system.url();
    kv(url, &["put", "preexisting", "here"]).ok();
    let script = "PUT a 1\n\
                  put b = two words\r\n\
                  GET a\n\
                  get b\n\
                  \n\
                  GET missing\n\
                  PUT \"c d\" \"x\\ty\"\n\
                  GET \"c d\"\n\
                  DEL a\n\
                  delete a\n\
                  DUMP\n\
                  DUMP c\n\
                  FROB x\n\
                  GET\n\
                  GET \"unclosed\n\
                  QUIT\n\
                  PUT after quit\n";
    let run = kv_stdin(url, &["shell"], script.as_bytes());
    assert_eq!(
        run.text(),
        "OK\n\
         OK\n\
         VALUE 1\n\
         VALUE two words\n\
         NOT_FOUND\n\
         OK\n\
         VALUE \"x\\ty\"\n\
         OK\n\
         NOT_FOUND\n\
         b two words\n\
         \"c d\" \"x\\ty\"\n\
         preexisting here\n\
         END 3\n\
         \"c d\" \"x\\ty\"\n\
         END 1\n\
         ERR unknown command 'FROB'; type HELP for the list\n\
         ERR usage: GET <key>\n\
         ERR a quoted string is not closed: end it with \"\n\
         BYE\n",
        "{}",
        run.describe()
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    kv(url, &["get", "after"]).fails_with_one_line(1);
    assert_eq!(kv(url, &["get", "c d"]).ok(), b"x\ty");

    // STATS and HELP end with END; the end of input ends the session too.
    let run = kv_stdin(url, &["shell"], b"STATS\nHELP\n");
    let out = run.text();
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(out.starts_with("cache_"), "{out}");
    assert!(out.contains("\nEND\nPUT <key> <value>"), "{out}");
    assert!(out.ends_with("\nEND\n"), "{out}");
}

#[test]
fn completions_and_usage_errors() {
    for shell in ["bash", "zsh", "fish"] {
        let run = kv("http://127.0.0.1:1", &["completions", shell]);
        let script = run.text();
        assert_eq!(run.code, Some(0), "{}", run.describe());
        assert!(script.len() > 100 && script.contains("kv"), "{shell}: {script}");
    }
    let bash = kv("http://127.0.0.1:1", &["completions", "bash"]).text();
    for command in ["get", "put", "dump", "import", "export", "shell", "up"] {
        assert!(bash.contains(command), "bash completion lacks {command}");
    }

    // Usage errors exit 2 without touching the network.
    for args in [
        &["frobnicate"][..],
        &[],
        &["get"],
        &["get", "a", "b"],
        &["completions", "tcsh"],
        &["dump", "--bogus"],
        &["--timeout", "soon", "get", "k"],
    ] {
        let run = kv("http://127.0.0.1:1", args);
        assert_eq!(run.code, Some(2), "{args:?}: {}", run.describe());
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.describe());
        assert!(!run.stderr.is_empty(), "{args:?}: {}", run.describe());
    }
    let run = kv("not a url", &["get", "k"]);
    assert!(run.fails_with_one_line(2).contains("--url"), "{}", run.describe());

    // --help and --version succeed.
    assert!(kv("http://127.0.0.1:1", &["--help"]).text().contains("Usage"));
    assert!(
        kv("http://127.0.0.1:1", &["put", "--help"])
            .text()
            .contains("--if-version")
    );
    assert!(kv("http://127.0.0.1:1", &["--version"]).text().starts_with("kv "));
}

#[test]
fn an_unreachable_server_exits_3_and_says_how_to_start_one() {
    let url = format!("http://{}", unused_addr());
    let temp = tempfile::tempdir().unwrap();
    let file = write_file(temp.path(), "in.ndjson", b"{\"key\":\"k\",\"value\":\"v\"}\n");
    for args in [
        &["get", "k"][..],
        &["put", "k", "v"],
        &["del", "k"],
        &["dump"],
        &["stats"],
        &["export"],
    ] {
        let run = kv(&url, args);
        let line = run.fails_with_one_line(3);
        assert!(line.contains("kv up"), "{args:?}: {line}");
        assert!(line.contains(&url), "{args:?}: {line}");
    }
    // Import also says which line it could not store.
    let run = kv(&url, &["import", &file]);
    run.fails(3);
    assert!(
        run.stderr.contains("kv up") && run.stderr.contains("line 1"),
        "{}",
        run.describe()
    );
    // A server that accepts connections but never answers runs into --timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let started = Instant::now();
    let run = kv(&silent_url, &["--timeout", "300ms", "get", "k"]);
    assert!(run.fails_with_one_line(3).contains("--timeout"), "{}", run.describe());
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    drop(silent);

    // The shell reports each failure and carries on.
    let run = kv_stdin(&url, &["shell"], b"GET k\nQUIT\n");
    let out = run.text();
    assert!(
        out.starts_with("ERR ") && out.contains("kv up") && out.ends_with("\nBYE\n"),
        "{out}"
    );
}

#[test]
fn binary_values_round_trip_through_put_and_get() {
    let system = System::start();
    let url = system.url();
    let temp = tempfile::tempdir().unwrap();
    let bytes = all_bytes();
    let reversed: Vec<u8> = bytes.iter().rev().copied().collect();

    kv_stdin(url, &["put", "bin/stdin", "-"], &bytes).ok();
    let path = write_file(temp.path(), "all.bin", &reversed);
    kv(url, &["put", "bin/file", "--file", &path]).ok();
    for _ in 0..2 {
        // Twice: once filling the proxy's cache, once served from it.
        assert!(kv(url, &["get", "bin/stdin"]).ok() == bytes.as_slice(), "all 256 bytes");
        assert!(
            kv(url, &["get", "bin/file"]).ok() == reversed.as_slice(),
            "all 256 bytes, reversed"
        );
    }
    assert!(kv(&system.server.url, &["get", "bin/stdin"]).ok() == bytes.as_slice());
    // Every single byte on its own, too (a lone CR or NUL, an invalid UTF-8 lead byte).
    for byte in [0u8, b'\n', b'\r', 0x1b, 0x7f, 0x80, 0xc3, 0xff] {
        kv_stdin(url, &["put", "bin/one", "-"], &[byte]).ok();
        assert_eq!(kv(url, &["get", "bin/one"]).ok(), [byte], "byte {byte:#x}");
    }
}

#[test]
fn export_then_import_into_a_fresh_server_gives_the_same_keyspace() {
    let source = System::start();
    let url = source.url();
    let temp = tempfile::tempdir().unwrap();
    let bytes = all_bytes();
    kv_stdin(url, &["put", "bin/all-bytes", "-"], &bytes).ok();
    kv_stdin(url, &["put", "bin/lone-ff", "-"], &[0xff]).ok();
    kv(url, &["put", "text/plain", "Derek Moss"]).ok();
    kv(url, &["put", "text/lines", "one\ntwo\r\n\tthree \"quoted\" \\"]).ok();
    kv(url, &["put", "text/unicode ключ", "✓ \u{2028} \u{1b}[31m"]).ok();
    kv(
        url,
        &["put", "typed", "{\"a\":1}", "--content-type", "application/json"],
    )
    .ok();
    kv(url, &["put", "odd key ?&#%=+", ""]).ok();

    let export = kv(url, &["export"]);
    let exported = export.ok().to_vec();
    assert_eq!(lines(&exported).len(), 7, "{}", export.describe());
    let file = write_file(temp.path(), "dump.ndjson", &exported);

    let target = System::start();
    let import = kv(target.url(), &["import", &file]);
    import.ok();
    assert!(import.stderr.contains("imported 7 pairs"), "{}", import.describe());

    for (from, to) in [(source.url(), target.url()), (&source.server.url, &target.server.url)] {
        let before = kv(from, &["dump", "--ndjson"]);
        let after = kv(to, &["dump", "--ndjson"]);
        assert!(before.ok() == after.ok(), "{}\n{}", before.describe(), after.describe());
    }
    assert!(kv(target.url(), &["export"]).ok() == exported.as_slice());
    assert!(kv(target.url(), &["get", "bin/all-bytes"]).ok() == bytes.as_slice());
    assert_eq!(
        http_get(&format!("{}/kv/typed", target.server.url), "content-type")
            .1
            .as_deref(),
        Some("application/json")
    );

    // A prefix exports part of the keyspace; `-` imports from stdin.
    let part = kv(url, &["export", "--prefix", "bin/"]);
    assert_eq!(lines(part.ok()).len(), 2);
    let third = System::start();
    kv_stdin(third.url(), &["import", "-"], part.ok()).ok();
    assert!(kv(third.url(), &["dump", "--ndjson"]).ok() == part.ok());
}

#[test]
fn import_of_100k_pairs() {
    const PAIRS: usize = 100_000;
    let system = System::start();
    let temp = tempfile::tempdir().unwrap();
    let mut input = Vec::with_capacity(PAIRS * 48);
    for i in 0..PAIRS {
        if i % 1000 == 7 {
            // Now and then a value that is not UTF-8: FF, then the number.
            let bytes: Vec<u8> = [0xffu8].iter().copied().chain(i.to_string().into_bytes()).collect();
            let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes);
            writeln!(input, r#"{{"key":"bulk/{i:06}","value_base64":"{encoded}"}}"#).unwrap();
        } else {
            writeln!(input, r#"{{"key":"bulk/{i:06}","value":"value number {i}"}}"#).unwrap();
        }
    }
    let file = write_file(temp.path(), "bulk.ndjson", &input);

    // Straight into the server (the proxy would only add a hop per write),
    // with enough writes in flight to fill the server's group commits.
    let started = Instant::now();
    let import = kv(&system.server.url, &["import", &file, "--concurrency", "128"]);
    let elapsed = started.elapsed();
    eprintln!(
        "kv import of {PAIRS} pairs: {elapsed:.2?} ({:.0} pairs/s)",
        PAIRS as f64 / elapsed.as_secs_f64()
    );
    import.ok();
    assert!(
        import.stderr.contains(&format!("imported {PAIRS} pairs")),
        "{}",
        import.describe()
    );

    // All arrived: the server counts them, and the export (through the proxy)
    // is the input again, line for line (keys sort as they were generated).
    assert_eq!(server_keys(&system.server), PAIRS as u64);
    let started = Instant::now();
    let export = kv(system.url(), &["export", "--prefix", "bulk/"]);
    eprintln!("kv export of {PAIRS} pairs: {:.2?}", started.elapsed());
    let exported = export.ok();
    assert_eq!(exported.iter().filter(|&&b| b == b'\n').count(), PAIRS);
    assert!(
        exported == input.as_slice(),
        "the export differs from the imported file"
    );
    assert_eq!(kv(system.url(), &["get", "bulk/099999"]).ok(), b"value number 99999");
    assert_eq!(kv(system.url(), &["get", "bulk/001007"]).ok(), b"\xff1007");
}

/// Five import lines, the third one `bad`.
fn five_lines_with_a_bad_third(bad: &str) -> Vec<u8> {
    let mut input = Vec::new();
    for i in 1..=5 {
        if i == 3 {
            writeln!(input, "{bad}").unwrap();
        } else {
            writeln!(input, r#"{{"key":"line/{i}","value":"value {i}"}}"#).unwrap();
        }
    }
    input
}

#[test]
fn a_malformed_import_line_stops_the_import_there() {
    let temp = tempfile::tempdir().unwrap();
    for bad in [
        r#"{"key":"line/3","value": oops}"#,
        r#"{"key":"line/3"}"#,
        r#"{"key":"line/3","value_base64":"not base64!"}"#,
        r#"{"key":"","value":"empty key"}"#,
        "just text",
    ] {
        let system = System::start();
        let url = system.url();
        let file = write_file(temp.path(), "five.ndjson", &five_lines_with_a_bad_third(bad));
        // One write at a time, so "nothing after it" cannot be luck.
        let run = kv(url, &["import", &file, "--concurrency", "1"]);
        run.fails(2);
        assert!(run.stderr.contains("line 3"), "{bad}: {}", run.describe());
        assert!(run.stderr.contains("--continue-on-error"), "{bad}: {}", run.describe());
        assert_eq!(
            kv(url, &["dump"]).text(),
            "line/1\tvalue 1\nline/2\tvalue 2\n",
            "{bad}: lines 1-2 are in, 3-5 are not"
        );
    }

    // The same with writes in flight: lines 1-2 land, nothing after line 3 does.
    let system = System::start();
    let file = write_file(temp.path(), "five.ndjson", &five_lines_with_a_bad_third("{not json"));
    let run = kv(system.url(), &["import", &file]);
    run.fails(2);
    assert!(run.stderr.contains("line 3"), "{}", run.describe());
    assert!(run.stderr.contains("imported 2 pairs"), "{}", run.describe());
    assert_eq!(server_keys(&system.server), 2);
    kv(system.url(), &["get", "line/2"]).ok();
    kv(system.url(), &["get", "line/4"]).fails_with_one_line(1);

    // A file that does not exist is a usage error too.
    let run = kv(
        system.url(),
        &["import", temp.path().join("absent.ndjson").to_str().unwrap()],
    );
    assert!(run.fails_with_one_line(2).contains("absent.ndjson"));
}

#[test]
fn continue_on_error_skips_malformed_lines_and_reports_them() {
    let system = System::start();
    let url = system.url();
    let temp = tempfile::tempdir().unwrap();
    let file = write_file(temp.path(), "five.ndjson", &five_lines_with_a_bad_third("{not json"));
    let run = kv(url, &["import", &file, "--continue-on-error"]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(run.stderr.contains("imported 4 pairs"), "{}", run.describe());
    assert!(run.stderr.contains("skipped 1 malformed line"), "{}", run.describe());
    assert!(run.stderr.contains("line 3"), "{}", run.describe());
    assert_eq!(
        kv(url, &["dump"]).text(),
        "line/1\tvalue 1\nline/2\tvalue 2\nline/4\tvalue 4\nline/5\tvalue 5\n"
    );

    // Several bad lines (blank lines count in the numbering but are no error).
    let input = b"{\"key\":\"more/1\",\"value\":\"a\"}\n\
                  \n\
                  {\"key\":\"more/3\"}\n\
                  {\"key\":\"more/4\",\"value\":\"b\"}\n\
                  [1,2]\n\
                  {\"key\":\"more/6\",\"value\":\"c\"}";
    let run = kv_stdin(url, &["import", "-", "--continue-on-error"], input);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(run.stderr.contains("imported 3 pairs"), "{}", run.describe());
    assert!(run.stderr.contains("skipped 2 malformed lines"), "{}", run.describe());
    assert!(
        run.stderr.contains("line 3:") && run.stderr.contains("line 5:"),
        "{}",
        run.describe()
    );
    assert_eq!(
        kv(url, &["dump", "--prefix", "more/"]).text(),
        "more/1\ta\nmore/4\tb\nmore/6\tc\n"
    );
}

/// The address `kv up` announced after a marker: the first word, up to ',' or a space.
fn announced(rest: &str) -> SocketAddr {
    let word = rest.split(|c: char| c.is_whitespace() || c == ',').next().unwrap_or("");
    word.parse().unwrap_or_else(|_| panic!("no address in '{rest}'"))
}

/// `kv up` on `data_dir`, on ephemeral ports: the program, its proxy URL and telnet address.
fn kv_up(data_dir: &Path) -> (Program, String, SocketAddr) {
    let dir = data_dir.to_str().expect("UTF-8 path");
    let (program, found) = Program::start(
        "kv",
        &[
            "up",
            "--data-dir",
            dir,
            "--listen",
            "127.0.0.1:0",
            "--server-listen",
            "127.0.0.1:0",
            "--telnet-listen",
            "127.0.0.1:0",
        ],
        &[],
        &[
            "kv-proxy listening on http://",
            "telnet adapter listening on ",
            "kv-server listening on http://",
        ],
    );
    let proxy = announced(&found[0]);
    let telnet = announced(&found[1]);
    let server = announced(&found[2]);
    assert_ne!(proxy, server);
    (program, format!("http://{proxy}"), telnet)
}

/// One line of the telnet protocol: send `command`, read the reply line.
fn telnet(addr: SocketAddr, command: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to telnet");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(format!("{command}\r\n").as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).expect("a reply line");
    reply
}

#[test]
fn kv_up_runs_the_whole_system_and_keeps_the_data() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("kv-data");

    let (mut up, url, telnet_addr) = kv_up(&data_dir);
    kv(&url, &["put", "name", "Derek Moss"]).ok();
    kv_stdin(&url, &["put", "bin", "-"], &all_bytes()).ok();
    assert_eq!(kv(&url, &["get", "name"]).ok(), b"Derek Moss");
    assert_eq!(telnet(telnet_addr, "GET name"), "VALUE Derek Moss\r\n");
    kv(&url, &["get", "name"]).ok();
    let stats = kv(&url, &["stats"]).text();
    assert!(stats.contains("cache_hits "), "{stats}");

    // Ctrl-C: a clean stop, exit status 0.
    let status = up.stop_with("INT");
    assert!(status.success(), "kv up after SIGINT: {status:?}\n{}", up.log());
    kv(&url, &["get", "name"]).fails_with_one_line(3);

    // Again on the same directory: the data is there.
    let (mut up, url, telnet_addr) = kv_up(&data_dir);
    assert_eq!(kv(&url, &["get", "name"]).ok(), b"Derek Moss");
    assert!(kv(&url, &["get", "bin"]).ok() == all_bytes().as_slice());
    assert_eq!(telnet(telnet_addr, "GET name"), "VALUE Derek Moss\r\n");
    assert_eq!(kv(&url, &["dump"]).text().lines().count(), 2);
    // SIGTERM stops it cleanly too.
    let status = up.stop_with("TERM");
    assert!(status.success(), "kv up after SIGTERM: {status:?}\n{}", up.log());
}

#[test]
fn a_second_kv_up_on_the_same_data_dir_refuses() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_str().unwrap();
    let (mut first, url, _) = kv_up(temp.path());
    kv(&url, &["put", "k", "v"]).ok();

    let second = kv(
        "http://127.0.0.1:1",
        &[
            "up",
            "--data-dir",
            dir,
            "--listen",
            "127.0.0.1:0",
            "--server-listen",
            "127.0.0.1:0",
            "--telnet-listen",
            "off",
        ],
    );
    assert!(matches!(second.code, Some(code) if code != 0), "{}", second.describe());
    assert!(second.stderr.contains("in use"), "{}", second.describe());
    assert!(second.stderr.contains(dir), "{}", second.describe());

    // The first one is unharmed.
    assert_eq!(kv(&url, &["get", "k"]).ok(), b"v");
    assert!(first.stop_with("INT").success(), "{}", first.log());
}

/// Runs `kv`, reads the first `keep` bytes of its stdout and then closes the
/// pipe, as `kv dump | head` does; returns those bytes and the finished run.
fn kv_read_then_close(url: &str, args: &[&str], input: &[u8], keep: usize) -> (Vec<u8>, Run) {
    let mut command = kv_command(url, args);
    command.stdin(Stdio::piped());
    let what = format!("{command:?} | head -c {keep}");
    let mut child = command.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin piped");
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || drop(stdin.write_all(&input)));
    let stderr = drain(child.stderr.take().expect("stderr piped"));
    let mut head = vec![0; keep];
    let mut stdout = child.stdout.take().expect("stdout piped");
    stdout.read_exact(&mut head).unwrap_or_else(|e| panic!("{what}: {e}"));
    drop(stdout);
    let status = wait(&mut child, &what);
    feeder.join().expect("stdin writer");
    let run = Run {
        code: status.code(),
        stdout: Vec::new(),
        stderr: String::from_utf8_lossy(&stderr.join().expect("stderr reader")).into_owned(),
        what,
    };
    (head, run)
}

#[test]
fn a_reader_that_stops_early_ends_kv_quietly() {
    let system = System::start();
    let url = system.url();
    let temp = tempfile::tempdir().unwrap();
    // Far more output than a pipe holds, so kv is still writing when it closes.
    let filler = "x".repeat(1000);
    let mut input = Vec::new();
    for i in 0..2000 {
        writeln!(input, r#"{{"key":"many/{i:04}","value":"{filler}"}}"#).unwrap();
    }
    let file = write_file(temp.path(), "many.ndjson", &input);
    kv(&system.server.url, &["import", &file, "--concurrency", "64"]).ok();
    kv_stdin(url, &["put", "z/big", "-"], &vec![b'y'; 800_000]).ok();

    let shell_input = b"DUMP\nDUMP\nDUMP\n".as_slice();
    for (args, input, start) in [
        (&["dump"][..], &b""[..], "many/0000\txxx"),
        (&["dump", "--json"], b"", r#"[{"key":"many/0000","value":"xxx"#),
        (&["dump", "--ndjson"], b"", r#"{"key":"many/0000","value":"xxx"#),
        (&["export"], b"", r#"{"key":"many/0000","value":"xxx"#),
        (&["get", "z/big"], b"", "yyy"),
        (&["shell"], shell_input, "many/0000 xxx"),
    ] {
        let (head, run) = kv_read_then_close(url, args, input, start.len());
        assert_eq!(String::from_utf8_lossy(&head), start, "{}", run.describe());
        assert_eq!(run.code, Some(0), "{}", run.describe());
        assert_eq!(run.stderr, "", "{}", run.describe());
    }
}

/// Runs `kv` with its stdout on a terminal (a pseudo-terminal from util-linux
/// `script`); returns what it printed, line endings as `\n`. `None` when
/// `script` is not installed.
fn kv_on_terminal(url: &str, args: &[&str]) -> Option<String> {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("util-linux `script` is not installed; skipping the terminal checks");
        return None;
    }
    let quoted = |word: &str| format!("'{}'", word.replace('\'', r"'\''"));
    let mut line = format!("{} --url {}", quoted(bin("kv").to_str().unwrap()), quoted(url));
    for arg in args {
        line = format!("{line} {}", quoted(arg));
    }
    let mut command = Command::new("script");
    command
        .args(["-qec", &line, "/dev/null"])
        .env_remove("KV_URL")
        .env_remove("KV_TOKEN")
        .env_remove("KV_TIMEOUT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let run = run(command, None);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    Some(run.text().replace("\r\n", "\n"))
}

#[test]
fn on_a_terminal_output_is_for_people() {
    let system = System::start();
    let url = system.url();
    let Some(put) = kv_on_terminal(url, &["put", "name", "Derek Moss"]) else {
        return;
    };
    let version = version_of(&system.server, "name");
    assert_eq!(put, format!("OK (version {version})\n"));
    kv(url, &["put", "a/longer/key", "two\nlines\n"]).ok();

    // get ends the line on a terminal, unless the value already does.
    assert_eq!(kv_on_terminal(url, &["get", "name"]).unwrap(), "Derek Moss\n");
    assert_eq!(kv_on_terminal(url, &["get", "a/longer/key"]).unwrap(), "two\nlines\n");

    // dump is an aligned table with a count.
    assert_eq!(
        kv_on_terminal(url, &["dump"]).unwrap(),
        "KEY           VALUE\n\
         a/longer/key  \"two\\nlines\\n\"\n\
         name          Derek Moss\n\
         (2 pairs)\n"
    );
    assert_eq!(
        kv_on_terminal(url, &["dump", "--prefix", "name"]).unwrap(),
        "KEY   VALUE\nname  Derek Moss\n(1 pair)\n"
    );
    // Exactly one batch of rows (256): one header above them, none below.
    let mut input = Vec::new();
    for i in 0..256 {
        writeln!(input, r#"{{"key":"t/{i:03}","value":"{i}"}}"#).unwrap();
    }
    kv_stdin(url, &["import", "-"], &input).ok();
    for (pairs, prefix) in [(256, "t/"), (100, "t/0"), (6, "t/25")] {
        let table = kv_on_terminal(url, &["dump", "--prefix", prefix]).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), pairs + 2, "{table}");
        assert_eq!(lines[0], "KEY    VALUE", "{table}");
        assert_eq!(lines.iter().filter(|l| l.starts_with("KEY")).count(), 1, "{table}");
        assert_eq!(lines[pairs + 1], format!("({pairs} pairs)"));
    }

    // --json stays JSON on a terminal.
    let json: Value = serde_json::from_str(&kv_on_terminal(url, &["dump", "--json", "--prefix", "name"]).unwrap())
        .expect("JSON on a terminal too");
    assert_eq!(json[0]["value"], "Derek Moss");
}

/// `kv` presenting `token` as `KV_TOKEN`.
fn kv_with_token(url: &str, args: &[&str], token: &str) -> Run {
    let mut command = kv_command(url, args);
    command.env("KV_TOKEN", token);
    run(command, None)
}

#[test]
fn a_wrong_or_missing_token_exits_4() {
    let temp = tempfile::tempdir().unwrap();
    let token_file = write_file(temp.path(), "token", b"s3cret-token\n");
    let server = Server::start_with(&["--token-file", &token_file]);
    let proxy = Proxy::start(&server.url, &["--token-file", &token_file]);
    let import = write_file(temp.path(), "in.ndjson", b"{\"key\":\"k\",\"value\":\"v\"}\n");

    for url in [&proxy.url, &server.url] {
        for args in [
            &["get", "k"][..],
            &["put", "k", "v"],
            &["del", "k"],
            &["dump"],
            &["export"],
        ] {
            kv(url, args).fails_with_one_line(4);
            kv_with_token(url, args, "wrong-token").fails_with_one_line(4);
        }
        let run = kv(url, &["import", &import]);
        run.fails(4);
        assert!(run.stderr.contains("line 1"), "{}", run.describe());
    }
    kv(&proxy.url, &["stats"]).fails_with_one_line(4);

    // With the right token, all is well.
    kv_with_token(&proxy.url, &["put", "k", "v"], "s3cret-token").ok();
    assert_eq!(kv_with_token(&proxy.url, &["get", "k"], "s3cret-token").ok(), b"v");
    assert_eq!(kv_with_token(&server.url, &["get", "k"], "s3cret-token").ok(), b"v");
    kv_with_token(&proxy.url, &["import", &import], "s3cret-token").ok();
    kv_with_token(&proxy.url, &["stats"], "s3cret-token").ok();
    // Still nothing without it, cached or not.
    kv(&proxy.url, &["get", "k"]).fails_with_one_line(4);
}

#[test]
fn bench_measures_http_and_the_line_protocol() {
    let server = Server::start();
    let proxy = Proxy::start(&server.url, &[]);
    let telnet = proxy.telnet.to_string();
    for args in [
        vec![
            "bench", "-c", "4", "-d", "1s", "--keys", "50", "--ratio", "3:1", "--json",
        ],
        vec![
            "bench",
            "--line",
            telnet.as_str(),
            "-c",
            "4",
            "-d",
            "1s",
            "--keys",
            "50",
            "--pipeline",
            "4",
            "--json",
        ],
    ] {
        let run = kv(&proxy.url, &args);
        assert_eq!(run.code, Some(0), "{}: {}", run.what, run.stderr);
        let report: Value = serde_json::from_slice(&run.stdout).unwrap();
        assert!(report["requests"].as_u64().unwrap() > 10, "{report}");
        assert_eq!(report["errors"], 0, "{report}");
        assert!(report["p99_ms"].as_f64().unwrap() >= report["p50_ms"].as_f64().unwrap());
    }
    // Open loop: every request due in the second is sent and counted, at the --path given.
    let run = kv(
        &proxy.url,
        &[
            "bench",
            "-c",
            "4",
            "-d",
            "1s",
            "--keys",
            "50",
            "--rate",
            "200",
            "--path",
            "/kv/open-{key}",
            "--json",
        ],
    );
    assert_eq!(run.code, Some(0), "{}: {}", run.what, run.stderr);
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["requests"], 200, "{report}");
    assert_eq!(report["rate"], 200.0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    // The keys it wrote are real keys, readable through the proxy.
    let run = kv(&proxy.url, &["get", "key:000000000007"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let run = kv(&proxy.url, &["get", "open-key:000000000007"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // Nothing listening: exit 3.
    let nowhere = unused_addr().to_string();
    let run = kv(&proxy.url, &["bench", "--line", &nowhere, "-d", "1s"]);
    assert_eq!(run.code, Some(3));
}

#[test]
fn get_v_says_on_stderr_where_the_value_came_from() {
    let server = Server::start();
    let proxy = Proxy::start(&server.url, &["--cache-ttl", "60s"]);
    kv(&proxy.url, &["put", "name", "Derek Moss"]).ok();
    let miss = kv(&proxy.url, &["get", "-v", "name"]);
    assert_eq!(miss.ok(), b"Derek Moss", "piped: the bytes exactly, no newline added");
    assert_eq!(miss.stderr, "(from server)\n");
    let hit = kv(&proxy.url, &["get", "--verbose", "name"]);
    assert_eq!(hit.ok(), b"Derek Moss");
    assert!(
        hit.stderr.starts_with("(cached, ") && hit.stderr.ends_with(" s old)\n"),
        "{}",
        hit.stderr
    );
    let direct = kv(&server.url, &["get", "-v", "name"]);
    assert_eq!(direct.stderr, "(from server)\n");
    assert_eq!(kv(&proxy.url, &["get", "name"]).stderr, "", "quiet without -v");

    // The shell: plain when piped, unless told VERBOSE ON (at a prompt it starts on).
    kv(&proxy.url, &["put", "city", "Pune"]).ok();
    let shell = kv_stdin(&proxy.url, &["shell"], b"GET city\nVERBOSE ON\nGET city\nGET name\n");
    let out = String::from_utf8(shell.ok().to_vec()).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["VALUE Pune", "OK"], "{out}");
    assert!(lines[2].starts_with("VALUE Pune (cached, "), "{out}");
    assert!(
        lines[3].starts_with("VALUE \"Derek Moss\" (cached, ") || lines[3].starts_with("VALUE Derek Moss (cached, "),
        "{out}"
    );
}
