//! The telnet line adapter of kv-proxy.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kv_tests::{Proxy, Server, client, unused_addr};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// How long any single reply may take before the test fails instead of hanging.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A line-protocol client over a real TCP socket. It ends its lines with
/// `eol` and checks that every reply line ends the same way.
pub(crate) struct Telnet {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    eol: &'static str,
}

impl Telnet {
    /// A client that ends lines with CRLF, as telnet does.
    pub(crate) async fn connect(addr: SocketAddr) -> Self {
        Self::connect_with(addr, "\r\n").await
    }

    /// A client that ends lines with LF, as nc and scripts do.
    pub(crate) async fn connect_lf(addr: SocketAddr) -> Self {
        Self::connect_with(addr, "\n").await
    }

    async fn connect_with(addr: SocketAddr, eol: &'static str) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (reader, writer) = stream.into_split();
        Self {
            reader: BufReader::new(reader),
            writer,
            eol,
        }
    }

    pub(crate) async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}{}", self.eol).as_bytes()).await;
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// The next reply line as sent, line ending included.
    async fn recv_raw(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        let read = tokio::time::timeout(REPLY_TIMEOUT, self.reader.read_until(b'\n', &mut line))
            .await
            .expect("a reply in time")
            .unwrap();
        assert!(read > 0, "the connection closed while a reply was expected");
        line
    }

    /// The next reply line, checked to end with the client's own line ending.
    pub(crate) async fn recv(&mut self) -> String {
        let line = String::from_utf8(self.recv_raw().await).expect("UTF-8 reply");
        let text = line
            .strip_suffix(self.eol)
            .unwrap_or_else(|| panic!("{line:?} does not end with {:?}", self.eol));
        assert!(!text.contains(['\r', '\n']), "one reply line: {line:?}");
        text.to_owned()
    }

    pub(crate) async fn ask(&mut self, line: &str) -> String {
        self.send(line).await;
        self.recv().await
    }

    /// Sends `line` and collects the reply lines up to and including `END...`.
    async fn ask_until_end(&mut self, line: &str) -> Vec<String> {
        self.send(line).await;
        let mut lines = Vec::new();
        loop {
            let reply = self.recv().await;
            let end = reply == "END" || reply.starts_with("END ");
            lines.push(reply);
            if end {
                return lines;
            }
        }
    }

    /// Whatever arrives until the proxy closes the connection (a reset counts as closed).
    pub(crate) async fn rest_until_closed(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(REPLY_TIMEOUT, self.reader.read_to_end(&mut rest)).await;
        match read.expect("the proxy closes the connection") {
            Ok(_) => {}
            Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
        }
        rest
    }
}

fn server_and_proxy(args: &[&str]) -> (Server, Proxy) {
    let server = Server::start();
    let proxy = Proxy::start(&server.url, args);
    (server, proxy)
}

/// The value stored on the server, read over HTTP straight from it.
async fn stored(server: &Server, key: &str) -> Option<reqwest::Response> {
    let response = client().get(format!("{}/kv/{key}", server.url)).send().await.unwrap();
    (response.status() == 200).then_some(response)
}

#[tokio::test]
async fn the_session_from_the_issue_line_by_line() {
    let (server, proxy) = server_and_proxy(&[]);
    let mut telnet = Telnet::connect(proxy.telnet).await;
    assert_eq!(telnet.ask("PUT name Derek Moss").await, "OK");
    assert_eq!(telnet.ask("PUT age = 18").await, "OK");
    assert_eq!(telnet.ask("get name").await, "VALUE Derek Moss");
    assert_eq!(telnet.ask("GET age").await, "VALUE 18");
    assert_eq!(telnet.ask("GET missing").await, "NOT_FOUND");
    assert_eq!(telnet.ask("DEL age").await, "OK");
    assert_eq!(telnet.ask("del age").await, "NOT_FOUND");
    assert_eq!(telnet.ask("GET age").await, "NOT_FOUND");
    assert_eq!(telnet.ask("put city Pune").await, "OK");
    assert_eq!(telnet.ask("Put Fname = Sayali").await, "OK");

    let dump = telnet.ask_until_end("DUMP").await;
    assert_eq!(dump, ["Fname Sayali", "city Pune", "name Derek Moss", "END 3"]);

    let stats = telnet.ask_until_end("STATS").await;
    let (end, figures) = stats.split_last().unwrap();
    assert_eq!(end, "END");
    for line in figures {
        let (name, value) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("not `name value`: {line}"));
        assert!(!name.is_empty() && !value.is_empty(), "{line}");
    }
    for name in [
        "cache_hits",
        "cache_misses",
        "cache_entries",
        "cache_bytes",
        "cache_evictions",
    ] {
        assert!(
            figures.iter().any(|l| l.starts_with(&format!("{name} "))),
            "{name} in {stats:?}"
        );
    }

    let help = telnet.ask_until_end("help").await;
    assert_eq!(help.last().map(String::as_str), Some("END"));
    for command in ["PUT", "GET", "DEL", "DUMP", "STATS", "QUIT"] {
        assert!(help.iter().any(|l| l.starts_with(command)), "{command} in {help:?}");
    }

    let unknown = telnet.ask("FROB x").await;
    assert!(unknown.starts_with("ERR ") && unknown.contains("HELP"), "{unknown}");
    let usage = telnet.ask("PUT lonely").await;
    assert!(usage.starts_with("ERR usage: PUT"), "{usage}");

    // A blank line gets no reply: the next reply belongs to the next command.
    telnet.send("").await;
    assert_eq!(telnet.ask("GET name").await, "VALUE Derek Moss");

    assert_eq!(telnet.ask("QUIT").await, "BYE");
    assert!(telnet.rest_until_closed().await.is_empty());

    // What the session wrote is on the server, as text.
    let name = stored(&server, "name").await.expect("name is stored");
    assert_eq!(name.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(name.text().await.unwrap(), "Derek Moss");
    assert!(stored(&server, "age").await.is_none());
}

#[tokio::test]
async fn dump_takes_a_prefix() {
    let (_server, proxy) = server_and_proxy(&[]);
    let mut telnet = Telnet::connect_lf(proxy.telnet).await;
    for line in ["PUT users/2 Bob", "PUT users/1 Ann", "PUT other x"] {
        assert_eq!(telnet.ask(line).await, "OK");
    }
    assert_eq!(
        telnet.ask_until_end("DUMP users/").await,
        ["users/1 Ann", "users/2 Bob", "END 2"]
    );
    assert_eq!(telnet.ask_until_end("DUMP nothing/").await, ["END 0"]);
}

#[tokio::test]
async fn quoted_keys_and_values_round_trip() {
    let (server, proxy) = server_and_proxy(&[]);
    let mut telnet = Telnet::connect(proxy.telnet).await;
    assert_eq!(telnet.ask(r#"PUT "my key" "two\nlines""#).await, "OK");
    assert_eq!(telnet.ask(r#"GET "my key""#).await, r#"VALUE "two\nlines""#);
    let value = stored(&server, "my%20key")
        .await
        .expect("stored under a key with a space");
    assert_eq!(value.bytes().await.unwrap(), "two\nlines");

    assert_eq!(telnet.ask(r#"PUT bin "\xff\x00\t\\ \"q\"""#).await, "OK");
    let value = stored(&server, "bin").await.unwrap();
    assert_eq!(
        value.headers()["content-type"],
        "application/octet-stream",
        "not UTF-8, so stored as bytes"
    );
    assert_eq!(value.bytes().await.unwrap(), &b"\xff\x00\t\\ \"q\""[..]);
    assert_eq!(telnet.ask("GET bin").await, r#"VALUE "\xff\x00\t\\ \"q\"""#);

    assert_eq!(telnet.ask(r#"PUT eq = "= x""#).await, "OK");
    assert_eq!(telnet.ask("GET eq").await, r#"VALUE "= x""#);
    assert_eq!(telnet.ask(r#"PUT said she said "hi""#).await, "OK");
    assert_eq!(telnet.ask("GET said").await, r#"VALUE "she said \"hi\"""#);

    // DUMP output can be pasted back as PUT lines.
    let dump = telnet.ask_until_end("DUMP").await;
    assert_eq!(
        dump,
        [
            r#"bin "\xff\x00\t\\ \"q\"""#,
            r#"eq "= x""#,
            r#""my key" "two\nlines""#,
            r#"said "she said \"hi\"""#,
            "END 4"
        ]
    );
    for line in &dump[..4] {
        assert_eq!(telnet.ask(&format!("PUT {line}")).await, "OK", "{line}");
    }
    assert_eq!(
        telnet.ask_until_end("DUMP").await,
        dump,
        "the same pairs after pasting them back"
    );

    let unclosed = telnet.ask(r#"PUT k "open"#).await;
    assert!(
        unclosed.starts_with("ERR ") && unclosed.contains("not closed"),
        "{unclosed}"
    );
}

#[tokio::test]
async fn a_value_stored_over_http_with_a_newline_comes_back_quoted() {
    let (server, proxy) = server_and_proxy(&[]);
    let http = client();
    for (key, value) in [
        ("multi", &b"line1\nline2\r\n"[..]),
        ("esc", b"\x1b[31mred"),
        ("padded", b" lead"),
    ] {
        let response = http
            .put(format!("{}/kv/{key}", server.url))
            .body(value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let mut telnet = Telnet::connect_lf(proxy.telnet).await;
    assert_eq!(telnet.ask("GET multi").await, r#"VALUE "line1\nline2\r\n""#);
    assert_eq!(telnet.ask("GET esc").await, r#"VALUE "\x1b[31mred""#);
    assert_eq!(telnet.ask("GET padded").await, r#"VALUE " lead""#);
    assert_eq!(
        telnet.ask_until_end("DUMP").await,
        [
            r#"esc "\x1b[31mred""#,
            r#"multi "line1\nline2\r\n""#,
            r#"padded " lead""#,
            "END 3"
        ]
    );
}

#[tokio::test]
async fn replies_use_the_clients_line_ending() {
    let (_server, proxy) = server_and_proxy(&[]);
    let mut crlf = Telnet::connect(proxy.telnet).await;
    crlf.send("PUT name Derek Moss").await;
    assert_eq!(crlf.recv_raw().await, b"OK\r\n");
    crlf.send("GET name").await;
    assert_eq!(crlf.recv_raw().await, b"VALUE Derek Moss\r\n");

    let mut lf = Telnet::connect_lf(proxy.telnet).await;
    lf.send("GET name").await;
    assert_eq!(lf.recv_raw().await, b"VALUE Derek Moss\n");
    // Multi-line replies too; recv checks each line's ending.
    assert_eq!(lf.ask_until_end("HELP").await.last().map(String::as_str), Some("END"));
    assert_eq!(lf.ask_until_end("DUMP").await, ["name Derek Moss", "END 1"]);

    // A client may switch: the reply follows the line it answers.
    lf.send_raw(b"GET name\r\n").await;
    assert_eq!(lf.recv_raw().await, b"VALUE Derek Moss\r\n");
}

#[tokio::test]
async fn telnet_negotiation_bytes_are_ignored() {
    let (_server, proxy) = server_and_proxy(&[]);
    let mut telnet = Telnet::connect(proxy.telnet).await;
    // IAC DO ECHO, IAC WILL SUPPRESS-GO-AHEAD, as a telnet client opens with.
    telnet
        .send_raw(b"\xff\xfd\x01\xff\xfb\x03PUT name Derek Moss\r\n")
        .await;
    assert_eq!(telnet.recv().await, "OK");
    // A subnegotiation (window size) and an IAC NOP in the middle of a command.
    telnet
        .send_raw(b"\xff\xfa\x1f\x00\x50\x00\x18\xff\xf0GE\xff\xf1T name\r\n")
        .await;
    assert_eq!(telnet.recv().await, "VALUE Derek Moss");
    // IAC IAC is a literal 0xff byte of data.
    telnet.send_raw(b"PUT raw \xff\xff\r\n").await;
    assert_eq!(telnet.recv().await, "OK");
    assert_eq!(telnet.ask("GET raw").await, r#"VALUE "\xff""#);
}

#[tokio::test]
async fn an_overlong_line_is_refused_and_the_connection_stays_usable() {
    let (server, proxy) = server_and_proxy(&["--telnet-max-line", "1KiB"]);
    let mut telnet = Telnet::connect_lf(proxy.telnet).await;
    telnet.send(&format!("PUT big {}", "x".repeat(3000))).await;
    let refused = telnet.recv().await;
    assert!(refused.starts_with("ERR line too long"), "{refused}");
    assert_eq!(telnet.ask("GET big").await, "NOT_FOUND", "nothing of the long line ran");
    assert!(stored(&server, "big").await.is_none());

    let fits = format!("PUT fits {}", "y".repeat(1024 - "PUT fits ".len()));
    assert_eq!(fits.len(), 1024);
    assert_eq!(telnet.ask(&fits).await, "OK", "a line of exactly the limit is fine");
    assert_eq!(telnet.ask("PUT small v").await, "OK");
    assert_eq!(telnet.ask("GET small").await, "VALUE v");

    // The refusal ends as the refused line did: CRLF here (recv checks).
    let mut crlf = Telnet::connect(proxy.telnet).await;
    crlf.send(&"x".repeat(5000)).await;
    assert!(crlf.recv().await.starts_with("ERR line too long"));
    assert_eq!(crlf.ask("GET small").await, "VALUE v");
}

/// The resident memory of a process, from /proc (Linux).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line");
    kib * 1024
}

// Issue 6: the memory a connection can pin without ever sending a newline
// stays bounded. Each client sends 16 MiB with no newline; the proxy keeps at
// most one line (the limit) and one read buffer of each, skips the rest, and
// answers the next line as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bytes_without_a_newline_pin_at_most_a_line_per_connection() {
    const CLIENTS: usize = 8;
    const SENT: usize = 16 << 20;
    const MAX_LINE: usize = 64 << 10;
    let (_server, proxy) = server_and_proxy(&["--telnet-max-line", "64KiB"]);
    let pid = proxy.program.pid();
    let before = rss_bytes(pid);
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut stream = TcpStream::connect(proxy.telnet).await.unwrap();
        clients.push(tokio::spawn(async move {
            let chunk = vec![b'x'; 64 << 10];
            for _ in 0..SENT / chunk.len() {
                stream.write_all(&chunk).await.unwrap();
            }
            stream
        }));
    }
    let mut streams = Vec::new();
    for client in clients {
        streams.push(client.await.unwrap());
    }
    // Everything sent has been read once the proxy answers the line it ends.
    let mut peak = rss_bytes(pid);
    for stream in streams {
        let (reader, writer) = stream.into_split();
        let mut telnet = Telnet {
            reader: BufReader::new(reader),
            writer,
            eol: "\n",
        };
        telnet.send("").await;
        let refused = telnet.recv().await;
        assert!(refused.starts_with("ERR line too long"), "{refused}");
        assert_eq!(telnet.ask("GET nothing").await, "NOT_FOUND", "the session goes on");
        peak = peak.max(rss_bytes(pid));
    }
    let grown = peak.saturating_sub(before);
    println!(
        "telnet without newlines: {CLIENTS} connections sent {} MiB each; proxy RSS grew {:.1} MiB \
         (at most a {} KiB line and an 8 KiB read buffer each are kept; {:.1} MiB sent in all)",
        SENT >> 20,
        grown as f64 / f64::from(1 << 20),
        MAX_LINE >> 10,
        (CLIENTS * SENT) as f64 / f64::from(1 << 20)
    );
    assert!(
        grown < 32 << 20,
        "the proxy grew by {grown} bytes for {CLIENTS} connections that never sent a newline"
    );
}

#[tokio::test]
async fn an_http_request_closes_the_connection_without_executing_anything() {
    let (server, proxy) = server_and_proxy(&[]);
    for request in [
        "POST /kv/evil HTTP/1.1\r\nHost: kv\r\nContent-Length: 14\r\n\r\nPUT evil boom\r\n",
        "GET / HTTP/1.1\r\nHost: kv\r\n\r\nPUT evil boom\r\n",
        "Host: kv\r\nPUT evil boom\r\n",
    ] {
        let mut telnet = Telnet::connect(proxy.telnet).await;
        telnet.send_raw(request.as_bytes()).await;
        assert!(telnet.rest_until_closed().await.is_empty(), "no reply to {request:?}");
    }
    assert!(stored(&server, "evil").await.is_none(), "the PUT in the body never ran");

    // A command whose value merely reads like an HTTP version is no request.
    let mut telnet = Telnet::connect(proxy.telnet).await;
    assert_eq!(telnet.ask("PUT protocol HTTP/1.1").await, "OK");
    assert_eq!(telnet.ask("GET protocol").await, "VALUE HTTP/1.1");
}

#[tokio::test]
async fn a_client_over_the_connection_limit_is_told_and_closed() {
    let (_server, proxy) = server_and_proxy(&["--telnet-max-connections", "2"]);
    let mut first = Telnet::connect(proxy.telnet).await;
    let mut second = Telnet::connect(proxy.telnet).await;
    assert_eq!(first.ask("GET x").await, "NOT_FOUND");
    assert_eq!(second.ask("GET x").await, "NOT_FOUND");

    let mut third = Telnet::connect(proxy.telnet).await;
    let refused = third.rest_until_closed().await;
    let refused = String::from_utf8(refused).unwrap();
    assert!(refused.starts_with("ERR too many connections"), "{refused:?}");
    assert_eq!(refused.lines().count(), 1, "{refused:?}");

    // The two admitted ones are unaffected, and a freed slot can be taken again.
    assert_eq!(first.ask("PUT k v").await, "OK");
    assert_eq!(second.ask("QUIT").await, "BYE");
    second.rest_until_closed().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = Telnet::connect(proxy.telnet).await;
        again.send("GET k").await;
        let reply = String::from_utf8(again.recv_raw().await).unwrap();
        if reply == "VALUE v\r\n" {
            break;
        }
        assert!(reply.starts_with("ERR too many connections"), "{reply:?}");
        assert!(
            Instant::now() < deadline,
            "the slot of a closed session was never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_idle_client_is_told_and_closed() {
    let (_server, proxy) = server_and_proxy(&["--telnet-idle-timeout", "1s"]);
    let mut telnet = Telnet::connect_lf(proxy.telnet).await;
    assert_eq!(telnet.ask("GET x").await, "NOT_FOUND");
    let idle_from = Instant::now();
    let goodbye = telnet.recv().await;
    let waited = idle_from.elapsed();
    assert!(goodbye.starts_with("ERR idle"), "{goodbye}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(telnet.rest_until_closed().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_clients_each_read_their_own_writes() {
    let (server, proxy) = server_and_proxy(&[]);
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..200 {
        let addr = proxy.telnet;
        clients.spawn(async move {
            let mut telnet = Telnet::connect(addr).await;
            assert_eq!(telnet.ask(&format!("PUT client/{i:03} value of {i}")).await, "OK");
            assert_eq!(
                telnet.ask(&format!("GET client/{i:03}")).await,
                format!("VALUE value of {i}")
            );
            assert_eq!(telnet.ask("QUIT").await, "BYE");
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    let dump = client()
        .get(format!("{}/kv?prefix=client/&keys_only=true", server.url))
        .send()
        .await
        .unwrap();
    let dump: serde_json::Value = serde_json::from_slice(&dump.bytes().await.unwrap()).unwrap();
    assert_eq!(dump["items"].as_array().unwrap().len(), 200);
}

#[tokio::test]
async fn a_get_over_telnet_is_cached_like_one_over_http() {
    let (server, proxy) = server_and_proxy(&[]);
    let http = client();
    http.put(format!("{}/kv/name", server.url))
        .body("Derek Moss")
        .send()
        .await
        .unwrap();
    let mut telnet = Telnet::connect(proxy.telnet).await;
    assert_eq!(telnet.ask("GET name").await, "VALUE Derek Moss");

    let over_http = http.get(format!("{}/kv/name", proxy.url)).send().await.unwrap();
    assert_eq!(over_http.headers()["x-cache"], "HIT", "the telnet GET filled the cache");
    assert_eq!(over_http.text().await.unwrap(), "Derek Moss");

    // And a write over telnet is seen at once over HTTP.
    assert_eq!(telnet.ask("PUT name Sayali").await, "OK");
    let over_http = http.get(format!("{}/kv/name", proxy.url)).send().await.unwrap();
    assert_eq!(over_http.text().await.unwrap(), "Sayali");
}

#[tokio::test]
async fn an_unreachable_upstream_is_an_error_line_and_the_session_goes_on() {
    let proxy = Proxy::start(&format!("http://{}", unused_addr()), &[]);
    let mut telnet = Telnet::connect(proxy.telnet).await;
    for command in ["GET name", "PUT name Derek Moss", "DEL name", "DUMP"] {
        let reply = telnet.ask(command).await;
        assert!(reply.starts_with("ERR upstream unavailable"), "{command}: {reply}");
    }
    assert_eq!(
        telnet.ask_until_end("STATS").await.last().map(String::as_str),
        Some("END")
    );
    assert_eq!(telnet.ask("QUIT").await, "BYE");
}

#[tokio::test]
async fn sessions_are_told_when_the_proxy_shuts_down() {
    let (_server, mut proxy) = server_and_proxy(&[]);
    let mut telnet = Telnet::connect(proxy.telnet).await;
    assert_eq!(telnet.ask("GET x").await, "NOT_FOUND");
    let status = proxy.program.stop_with("TERM");
    assert!(status.success(), "{status}");
    let bye = telnet.recv().await;
    assert!(bye.starts_with("BYE"), "{bye}");
    assert!(telnet.rest_until_closed().await.is_empty());
}

#[tokio::test]
async fn the_real_nc_program_can_drive_a_session() {
    let (_server, proxy) = server_and_proxy(&[]);
    let mut nc = tokio::process::Command::new("nc")
        .args([
            "-q",
            "1",
            &proxy.telnet.ip().to_string(),
            &proxy.telnet.port().to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("nc (netcat-openbsd) must be installed; .ci/run installs it");
    let script = "PUT nc/key hello from nc\nget nc/key\nGET nc/missing\nDUMP nc/\nQUIT\n";
    nc.stdin.take().unwrap().write_all(script.as_bytes()).await.unwrap();
    let output = tokio::time::timeout(REPLY_TIMEOUT, nc.wait_with_output())
        .await
        .expect("nc finishes")
        .unwrap();
    assert!(
        output.status.success(),
        "nc failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "OK\nVALUE hello from nc\nNOT_FOUND\nnc/key hello from nc\nEND 1\nBYE\n"
    );
}

#[tokio::test]
async fn verbose_on_says_where_each_value_came_from() {
    // Without the change feed: with it, the PUT's own event may fill the
    // cache before the next GET, which would then say "cached", not "from
    // server". What VERBOSE says is the same either way.
    let (_server, proxy) = server_and_proxy(&["--cache-ttl", "60s", "--coherence", "off"]);
    let mut telnet = Telnet::connect(proxy.telnet).await;
    assert_eq!(telnet.ask("PUT name Derek Moss").await, "OK");
    assert_eq!(telnet.ask("GET name").await, "VALUE Derek Moss", "plain by default");
    assert_eq!(telnet.ask("VERBOSE ON").await, "OK");
    assert_eq!(telnet.ask("PUT name Derek").await, "OK");
    assert_eq!(telnet.ask("GET name").await, "VALUE Derek (from server)");
    let hit = telnet.ask("GET name").await;
    assert!(
        hit.starts_with("VALUE Derek (cached, ") && hit.ends_with(" s old)"),
        "{hit}"
    );
    assert_eq!(telnet.ask("verbose off").await, "OK");
    assert_eq!(telnet.ask("GET name").await, "VALUE Derek");
    assert_eq!(telnet.ask("VERBOSE maybe").await, "ERR usage: VERBOSE ON|OFF");
    let mut other = Telnet::connect(proxy.telnet).await;
    assert_eq!(
        other.ask("GET name").await,
        "VALUE Derek",
        "the setting is the session's"
    );
}
