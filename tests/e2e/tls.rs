//! HTTPS: kv-server and kv-proxy serving TLS with a self-signed certificate
//! made here with rcgen, the proxy reaching an https:// upstream, the `kv`
//! client with --cacert, and what happens to clients that do not speak TLS
//! properly: plain HTTP, no handshake at all, an untrusted certificate.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kv_tests::{Program, Proxy, Server, bin, https_client};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A self-signed certificate for 127.0.0.1 and localhost and its key, as PEM
/// files in a temporary directory. The certificate is also the CA to trust.
struct Certs {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    pem: Vec<u8>,
}

impl Certs {
    fn new() -> Self {
        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(names).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
        Self {
            pem: cert.pem().into_bytes(),
            _dir: dir,
            cert: cert_path,
            key: key_path,
        }
    }

    fn cert(&self) -> &str {
        self.cert.to_str().unwrap()
    }

    /// `--tls-cert CERT --tls-key KEY`.
    fn serve_args(&self) -> Vec<&str> {
        vec!["--tls-cert", self.cert(), "--tls-key", self.key.to_str().unwrap()]
    }
}

/// A program run to its exit: its status code and everything it wrote to stderr.
fn run_to_exit(command: &mut Command) -> (Option<i32>, String) {
    let what = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status.code(), stderr)
}

/// Whether the peer closed the connection (EOF or reset) within `limit`,
/// and everything it sent before that.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (bool, Vec<u8>) {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (closed, received)
}

/// Waits (up to 5 s) for `needle` in the program's log, which is read in the background.
async fn wait_for_log(program: &Program, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !program.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no '{needle}' in the log:\n{}",
            program.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn text(response: reqwest::Response) -> String {
    response.text().await.unwrap()
}

#[tokio::test]
async fn put_get_delete_over_https_directly_and_through_the_proxy() {
    let certs = Certs::new();
    let server = Server::start_https(&certs.serve_args());
    let mut proxy_args = certs.serve_args();
    proxy_args.extend(["--upstream-ca-file", certs.cert()]);
    let proxy = Proxy::start_https(&server.url, &proxy_args);
    assert!(server.url.starts_with("https://") && proxy.url.starts_with("https://"));
    let client = https_client(&certs.pem);

    // Directly: the server negotiates HTTP/2 through ALPN.
    let put = client
        .put(format!("{}/kv/direct", server.url))
        .body("v1")
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let get = client.get(format!("{}/kv/direct", server.url)).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(get.version(), reqwest::Version::HTTP_2);
    assert_eq!(text(get).await, "v1");

    // Through the proxy, which reaches the server over https with the CA file.
    let key = format!("{}/kv/greeting", proxy.url);
    let put = client.put(&key).body("hello").send().await.unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let first = client.get(&key).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["x-cache"], "MISS");
    assert_eq!(text(first).await, "hello");
    let second = client.get(&key).send().await.unwrap();
    assert_eq!(second.headers()["x-cache"], "HIT");
    assert_eq!(text(second).await, "hello");
    let direct = client.get(format!("{}/kv/greeting", server.url)).send().await.unwrap();
    assert_eq!(text(direct).await, "hello", "the proxy's write reached the server");

    let delete = client.delete(&key).send().await.unwrap();
    assert_eq!(delete.status(), StatusCode::NO_CONTENT);
    assert_eq!(client.get(&key).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    let direct = client.get(format!("{}/kv/greeting", server.url)).send().await.unwrap();
    assert_eq!(direct.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_not_served_and_the_server_carries_on() {
    let certs = Certs::new();
    let server = Server::start_https(&certs.serve_args());
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let (closed, received) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(closed, "the server kept a plain-HTTP connection open");
    assert!(
        !received.starts_with(b"HTTP/"),
        "plain HTTP was answered: {:?}",
        String::from_utf8_lossy(&received)
    );

    assert_serves(&certs, &server.url).await;
    // A failed handshake is routine (scanners, typos): no warning for it.
    assert!(!server.program.log().contains("WARN"), "{}", server.program.log());
}

#[tokio::test]
async fn a_client_that_never_says_hello_is_closed_by_the_header_read_timeout() {
    let certs = Certs::new();
    let mut args = certs.serve_args();
    args.extend(["--header-read-timeout", "1s"]);
    let server = Server::start_https(&args);

    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let (closed, received) = read_until_closed(&mut silent, Duration::from_secs(10)).await;
    let waited = started.elapsed();
    assert!(closed, "a connection that never sent a ClientHello was kept open");
    assert!(received.is_empty(), "{received:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}, expected about 1 s"
    );

    assert_serves(&certs, &server.url).await;
}

#[tokio::test]
async fn over_the_connection_cap_a_tls_client_is_closed_without_a_plain_text_answer() {
    let certs = Certs::new();
    let mut args = certs.serve_args();
    args.extend(["--max-connections", "1"]);
    let server = Server::start_https(&args);

    // A connection still in its handshake holds the only slot.
    let holder = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = TcpStream::connect(server.addr).await.unwrap();
    let (closed, received) = read_until_closed(&mut refused, Duration::from_secs(5)).await;
    assert!(closed, "a connection over the cap was kept open");
    assert!(received.is_empty(), "{:?}", String::from_utf8_lossy(&received));
    wait_for_log(&server.program, "too many open connections").await;

    // Once the holder goes, its slot is free again.
    drop(holder);
    let client = https_client(&certs.pem);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.get(format!("{}/healthz", server.url)).send().await {
            Ok(response) if response.status() == StatusCode::OK => break,
            other => assert!(Instant::now() < deadline, "the slot was not freed: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_proxy_that_does_not_trust_the_upstream_answers_502_naming_the_tls_error() {
    let certs = Certs::new();
    let server = Server::start_https(&certs.serve_args());
    let proxy = Proxy::start(&server.url, &[]);

    let response = kv_tests::client()
        .get(format!("{}/kv/anything", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"], "upstream_unavailable");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("TLS handshake failed: invalid peer certificate"),
        "{message}"
    );
    assert!(message.contains(&server.url), "{message}");

    wait_for_log(&proxy.program, "invalid peer certificate").await;
}

#[test]
fn unusable_tls_files_stop_the_programs_with_one_clear_line() {
    let certs = Certs::new();
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let missing = temp.path().join("missing.pem");
    let server = |cert: &Path, key: &Path| {
        let mut command = Command::new(bin("kv-server"));
        command
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .env_remove("KV_TOKEN");
        run_to_exit(&mut command)
    };
    let one_line = |stderr: &str| {
        let line = stderr.strip_suffix('\n').unwrap_or(stderr);
        assert!(!line.contains('\n'), "more than one line: {stderr}");
        line.to_owned()
    };

    let (code, stderr) = server(&missing, &certs.key);
    assert_eq!(code, Some(1), "{stderr}");
    let line = one_line(&stderr);
    assert!(
        line.starts_with(&format!(
            "kv-server: cannot read TLS certificate {}: ",
            missing.display()
        )),
        "{line}"
    );
    assert!(line.contains("No such file"), "{line}");
    assert!(
        !data_dir.exists(),
        "the data directory was created before TLS was checked"
    );

    // The certificate file given as the key: a clear word about the key.
    let (code, stderr) = server(&certs.cert, &certs.cert);
    assert_eq!(code, Some(1), "{stderr}");
    let line = one_line(&stderr);
    assert!(
        line.starts_with(&format!("kv-server: no private key found in {}", certs.cert.display())),
        "{line}"
    );

    let (code, stderr) = run_to_exit(
        Command::new(bin("kv-proxy"))
            .args(["--listen", "127.0.0.1:0", "--telnet-listen", "off", "--tls-cert"])
            .arg(&missing)
            .arg("--tls-key")
            .arg(&certs.key)
            .env_remove("KV_TOKEN"),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        one_line(&stderr).starts_with("kv-proxy: cannot read TLS certificate "),
        "{stderr}"
    );

    // One without the other is a usage error, caught before anything starts.
    let (code, stderr) = run_to_exit(
        Command::new(bin("kv-server"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .arg("--tls-cert")
            .arg(&certs.cert),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");
}

#[test]
fn the_cli_speaks_https_with_cacert() {
    let certs = Certs::new();
    let server = Server::start_https(&certs.serve_args());
    let kv = |args: &[&str]| {
        let mut command = Command::new(bin("kv"));
        command
            .args(["--url", &server.url])
            .args(args)
            .env_remove("KV_URL")
            .env_remove("KV_TOKEN")
            .env_remove("KV_CACERT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command.output().unwrap()
    };

    let put = kv(&["--cacert", certs.cert(), "put", "greeting", "hello over tls"]);
    assert!(put.status.success(), "{put:?}");
    let get = kv(&["--cacert", certs.cert(), "get", "greeting"]);
    assert!(get.status.success(), "{get:?}");
    assert_eq!(get.stdout, b"hello over tls");

    // Without the CA: exit 3 (unreachable) and a hint at --cacert.
    let untrusted = kv(&["get", "greeting"]);
    assert_eq!(untrusted.status.code(), Some(3), "{untrusted:?}");
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");
    assert!(stderr.contains("--cacert"), "{stderr}");
}

/// The server still answers a well-behaved HTTPS client.
async fn assert_serves(certs: &Certs, url: &str) {
    let health = https_client(&certs.pem)
        .get(format!("{url}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}
