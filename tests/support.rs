//! Helpers for the end-to-end tests: build the real programs once, start them
//! on ephemeral loopback ports, read the addresses they announce, stop them.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The directory holding the built binaries (`target/debug`), built once per test run.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // The test binary is target/<profile>/deps/e2e-<hash>.
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_owned();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "--quiet",
            "--bins",
            "-p",
            "kv-server",
            "-p",
            "kv-proxy",
            "-p",
            "kv-cli",
        ]);
        if release {
            build.arg("--release");
        }
        // The etcd tests need kv-server's etcd engine in the binary too.
        if cfg!(feature = "etcd") {
            build.args(["--features", "kv-server/etcd"]);
        }
        // Cargo gives this test the variables of its own package; ring's build
        // script reruns when they change (rerun-if-env-changed), so passing them
        // on would rebuild ring and everything above it on every test run.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_") || name.starts_with("CARGO_MANIFEST_") || name == "OUT_DIR" {
                build.env_remove(&*name);
            }
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building the kv programs failed");
        dir
    })
}

/// The path of one of the programs: `kv-server`, `kv-proxy` or `kv`.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A running program whose stderr is collected in the background.
pub struct Program {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    lines: mpsc::Receiver<String>,
}

impl Program {
    /// Starts `name` with `args` and waits until its log shows every one of `markers`;
    /// returns the program and, for each marker, the rest of the line after it.
    pub fn start(name: &str, args: &[&str], envs: &[(&str, &str)], markers: &[&str]) -> (Self, Vec<String>) {
        let mut command = Command::new(bin(name));
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command.env("RUST_LOG", "info").env_remove("KV_TOKEN");
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (sender, lines) = mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line.clone());
                    let _ = sender.send(line);
                }
            });
        }
        let program = Self { child, log, lines };
        let mut found = vec![None; markers.len()];
        let deadline = Instant::now() + Duration::from_secs(30);
        while found.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            match program.lines.recv_timeout(left) {
                Ok(line) => {
                    for (i, marker) in markers.iter().enumerate() {
                        if let Some(at) = line.find(marker) {
                            let rest = &line[at + marker.len()..];
                            found[i] = Some(rest.to_owned());
                        }
                    }
                }
                Err(_) => panic!("{name} did not start; its log:\n{}", program.log()),
            }
        }
        (program, found.into_iter().map(Option::unwrap).collect())
    }

    /// Everything the program has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`INT`, `TERM`, `KILL`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// kill -9, then wait for the process to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` and waits (up to 20 s) for the exit status.
    pub fn stop_with(&mut self, signal: &str) -> std::process::ExitStatus {
        self.signal(signal);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the program did not stop after SIG{signal}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// First word after a marker, as an address: `127.0.0.1:1234`.
fn addr_after(rest: &str) -> SocketAddr {
    let word = rest.split(|c: char| c.is_whitespace() || c == ',').next().unwrap_or("");
    word.parse().unwrap_or_else(|_| panic!("no address in '{rest}'"))
}

/// A kv-server on an ephemeral port with its own data directory.
pub struct Server {
    pub program: Program,
    pub addr: SocketAddr,
    pub url: String,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Server {
    /// A fresh server on an empty temporary directory.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().to_owned();
        let mut server = Self::start_in(&dir, args);
        server._temp = Some(temp);
        server
    }

    /// A server on `data_dir` (kept when the server is dropped).
    pub fn start_in(data_dir: &Path, args: &[&str]) -> Self {
        Self::launch(data_dir, "127.0.0.1:0", args, "http")
    }

    /// A server on `data_dir` listening on a given address, to come back on the
    /// port a client (a proxy, say) already points at.
    pub fn start_on(data_dir: &Path, listen: SocketAddr, args: &[&str]) -> Self {
        Self::launch(data_dir, &listen.to_string(), args, "http")
    }

    /// `scheme` is what the server logs it listens on: `http`, or `https` when
    /// `args` carry `--tls-cert` and `--tls-key`.
    fn launch(data_dir: &Path, listen: &str, args: &[&str], scheme: &str) -> Self {
        let dir = data_dir.to_str().expect("utf-8 path");
        let mut all = vec!["--listen", listen, "--data-dir", dir];
        // Under tests/with-etcd.sh the same test runs on the etcd engine: its
        // data directory names a prefix of its own on the shared cluster, so
        // a restart "on the same directory" finds the same data.
        let endpoints = etcd_endpoints();
        let prefix = format!("test{}/", dir.replace('/', "-"));
        if let Some(endpoints) = &endpoints
            && !args.contains(&"--store")
        {
            all.extend_from_slice(&[
                "--store",
                "etcd",
                "--etcd-endpoints",
                endpoints,
                "--etcd-prefix",
                &prefix,
            ]);
        }
        all.extend_from_slice(args);
        let marker = format!("listening on {scheme}://");
        let (program, found) = Program::start("kv-server", &all, &[], &[marker.as_str()]);
        let addr = addr_after(&found[0]);
        Self {
            program,
            addr,
            url: format!("{scheme}://{addr}"),
            data_dir: data_dir.to_owned(),
            _temp: None,
        }
    }

    /// kill -9 the server and start a new one on the same data directory.
    pub fn crash_and_restart(&mut self) {
        self.program.kill9();
        let restarted = Self::start_in(&self.data_dir.clone(), &[]);
        self.program = restarted.program;
        self.addr = restarted.addr;
        self.url = restarted.url;
    }
}

/// The etcd cluster that `Server`s are started on instead of redb, when the
/// tests run under `tests/with-etcd.sh` (`KV_TEST_ETCD_ENDPOINTS`): the same
/// end-to-end tests, against the other engine.
pub fn etcd_endpoints() -> Option<String> {
    std::env::var("KV_TEST_ETCD_ENDPOINTS").ok().filter(|e| !e.is_empty())
}

/// For a test of what only the embedded engine does (a data directory, its
/// lock, its files): true, and says so, when the tests run over etcd.
pub fn skipped_over_etcd(what: &str) -> bool {
    let over_etcd = etcd_endpoints().is_some();
    if over_etcd {
        eprintln!("specific to redb, not run over etcd: {what}");
    }
    over_etcd
}

/// A kv-proxy on ephemeral HTTP and telnet ports in front of `upstream`.
pub struct Proxy {
    pub program: Program,
    pub url: String,
    pub telnet: SocketAddr,
}

impl Proxy {
    pub fn start(upstream: &str, args: &[&str]) -> Self {
        Self::launch(upstream, args, "http")
    }

    fn launch(upstream: &str, args: &[&str], scheme: &str) -> Self {
        let mut all = vec![
            "--listen",
            "127.0.0.1:0",
            "--telnet-listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
        ];
        all.extend_from_slice(args);
        let marker = format!("kv-proxy listening on {scheme}://");
        let (program, found) = Program::start(
            "kv-proxy",
            &all,
            &[],
            &[marker.as_str(), "telnet adapter listening on "],
        );
        let http = addr_after(&found[0]);
        let telnet = addr_after(&found[1]);
        Self {
            program,
            url: format!("{scheme}://{http}"),
            telnet,
        }
    }
}

/// An HTTP client for tests: no proxy from the environment, a generous timeout.
pub fn client() -> reqwest::Client {
    // Plain http only (see `https_client`): no system trust store needed.
    client_trusting(Vec::new())
}

fn client_trusting(roots: Vec<reqwest::Certificate>) -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .tls_certs_only(roots)
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// A port on loopback with nothing listening (bound, then released).
pub fn unused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// The value of one series in a Prometheus text exposition, written as it
/// appears there: `kv_proxy_cache_hits_total` or
/// `kv_server_http_requests_total{method="GET",route="/kv/{*key}",status="200"}`.
/// A series that has not been touched yet counts as 0.
pub fn metric(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| {
            value
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{series} is not a number: {value}"))
        })
}

/// Makes ring the process's rustls provider, as the kv programs do: reqwest is
/// built without one of its own and needs it before any client is built.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTPS client for tests that trusts only the CA certificate in `ca_pem`.
pub fn https_client(ca_pem: &[u8]) -> reqwest::Client {
    client_trusting(vec![reqwest::Certificate::from_pem(ca_pem).expect("CA certificate")])
}

impl Server {
    /// A fresh server serving HTTPS with `args` (which carry `--tls-cert` and
    /// `--tls-key`); its `url` is `https://127.0.0.1:PORT`.
    pub fn start_https(args: &[&str]) -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut server = Self::launch(temp.path(), "127.0.0.1:0", args, "https");
        server._temp = Some(temp);
        server
    }
}

impl Proxy {
    /// A proxy serving HTTPS with `args` (which carry `--tls-cert` and
    /// `--tls-key`) in front of `upstream`; its `url` is `https://...`.
    pub fn start_https(upstream: &str, args: &[&str]) -> Self {
        Self::launch(upstream, args, "https")
    }
}

/// A header of an answer, if it has one (as text).
pub fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().expect("an ASCII header").to_owned())
}

/// Asserts an error answer: `status`, JSON, a message for a person; returns its code.
pub async fn error_code(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status(), status, "{response:?}");
    assert_eq!(header(&response, "content-type").as_deref(), Some("application/json"));
    let body = response.bytes().await.expect("a body");
    let json: serde_json::Value =
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    assert!(
        !json["message"].as_str().expect("a message").is_empty(),
        "an empty message: {json}"
    );
    json["error"].as_str().expect("an error code").to_owned()
}

/// What a raw HTTP/1.1 exchange got back: everything the server sent before
/// it closed (or 10 s passed), cut into status, head and body.
#[derive(Debug)]
pub struct RawAnswer {
    /// The status of the first answer; 0 when nothing (or no status line) came.
    pub status: u16,
    /// The whole answer as text (lossy), head and body.
    pub text: String,
    /// The bytes after the first blank line.
    pub body: Vec<u8>,
    /// Whether the server closed the connection within the 10 s.
    pub closed: bool,
}

impl RawAnswer {
    /// The JSON error code of the body, if it is an error body.
    pub fn error_code(&self) -> Option<String> {
        let json: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        json["error"].as_str().map(str::to_owned)
    }
}

/// Sends `request` as it is over a new connection and reads until the server
/// closes it: for what a client library would hide (malformed heads,
/// smuggling, trickled bodies). The request should ask to close.
pub async fn raw_http(addr: impl tokio::net::ToSocketAddrs, request: &[u8]) -> RawAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send the request");
    let mut answer = Vec::new();
    let closed = matches!(
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await,
        Ok(Ok(_))
    );
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(Vec::new(), |at| answer[at + 4..].to_vec());
    RawAnswer {
        status,
        text,
        body,
        closed,
    }
}

/// A 3-member etcd cluster on loopback, started by `tests/etcd-cluster.sh`
/// (fresh data directories, free ports, a unique cluster token) and stopped
/// when dropped.
pub struct EtcdCluster {
    pub dir: tempfile::TempDir,
    /// The client URLs, comma-separated (for `--etcd-endpoints`).
    pub endpoints: String,
}

/// What `etcdctl endpoint status` says of one member.
#[derive(Debug, Clone)]
pub struct EtcdMember {
    /// 1, 2 or 3: the directory `m<N>` of the cluster.
    pub index: usize,
    pub url: String,
    pub is_leader: bool,
}

impl EtcdCluster {
    /// `tests/etcd-cluster.sh`, also for a test that drives it itself.
    pub fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("etcd-cluster.sh")
    }

    pub fn start() -> Self {
        Self::start_with_flags("")
    }

    /// A cluster whose members all get `flags` besides the script's own
    /// (`--quota-backend-bytes 8388608`, say).
    pub fn start_with_flags(flags: &str) -> Self {
        Self::start_with(flags, None)
    }

    /// A cluster that serves its clients over TLS and asks them for a
    /// certificate, made from `certs` (see `tests/etcd-cluster.sh`).
    pub fn start_tls(certs: &Path) -> Self {
        Self::start_with("", Some(certs))
    }

    fn start_with(flags: &str, tls: Option<&Path>) -> Self {
        // Build the programs before starting members: a compiler sharing two
        // cores with three fresh members can keep them from electing a leader.
        bin_dir();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new("bash");
        if let Some(certs) = tls {
            command.env("KV_ETCD_TLS", certs);
        }
        let output = command
            .arg(Self::script())
            .arg("start")
            .arg(dir.path())
            .env("KV_ETCD_FLAGS", flags)
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/etcd-cluster.sh");
        assert!(output.status.success(), "the etcd cluster did not start");
        let endpoints = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert_eq!(endpoints.split(',').count(), 3, "three endpoints: {endpoints}");
        Self { dir, endpoints }
    }

    /// Each member that answers `etcdctl endpoint status`, with whether it leads.
    pub fn members(&self) -> Vec<EtcdMember> {
        let mut members = Vec::new();
        for index in 1..=3 {
            let member_dir = self.dir.path().join(format!("m{index}"));
            let url = std::fs::read_to_string(member_dir.join("url")).expect("member url");
            let url = url.trim().to_owned();
            if !member_dir.join("pid").exists() {
                continue;
            }
            let output = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args([
                    "--endpoints",
                    &url,
                    "--command-timeout=2s",
                    "endpoint",
                    "status",
                    "-w",
                    "json",
                ])
                .output()
                .expect("run etcdctl");
            if !output.status.success() {
                continue;
            }
            let Ok(status) = serde_json::from_slice::<serde_json::Value>(&output.stdout) else {
                continue;
            };
            let status = &status[0]["Status"];
            let (Some(id), Some(leader)) = (status["header"]["member_id"].as_u64(), status["leader"].as_u64()) else {
                continue;
            };
            members.push(EtcdMember {
                index,
                url,
                is_leader: id == leader,
            });
        }
        members
    }

    /// The member that leads, once one does (waits up to 30 s).
    pub fn leader(&self) -> EtcdMember {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(leader) = self.members().into_iter().find(|m| m.is_leader) {
                return leader;
            }
            assert!(Instant::now() < deadline, "no etcd member leads");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// kill -9 member `index` (1..=3).
    pub fn kill9(&self, index: usize) {
        let pid_file = self.dir.path().join(format!("m{index}")).join("pid");
        let pid = std::fs::read_to_string(&pid_file).expect("member pid");
        let status = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -9 etcd member {index}");
        let _ = std::fs::remove_file(pid_file);
    }

    /// Starts member `index` again on its data, after [`Self::kill9`], and
    /// waits until it answers as a member of a cluster with a leader.
    pub fn restart(&self, index: usize) {
        let status = Command::new("bash")
            .arg(Self::script())
            .arg("restart")
            .arg(self.dir.path())
            .arg(index.to_string())
            .status()
            .expect("run tests/etcd-cluster.sh restart");
        assert!(status.success(), "restart etcd member {index}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.members().iter().any(|m| m.index == index) {
            assert!(
                Instant::now() < deadline,
                "etcd member {index} did not come back within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A kv-server with `--store etcd` on this cluster.
    pub fn server(&self, args: &[&str]) -> Server {
        let mut all = vec!["--store", "etcd", "--etcd-endpoints", self.endpoints.as_str()];
        all.extend_from_slice(args);
        Server::start_with(&all)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(Self::script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}
