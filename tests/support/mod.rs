//! Shared test helpers: an in-process gateway in front of a simulator, clients that trust the
//! development CA, the gateway binary as a child process, and waiting on conditions with a
//! deadline (never sleeping to synchronise).

#![allow(dead_code)]

pub mod browser;
pub mod nats;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use trackgate::app::{self, Gateway};
use trackgate::config::{Config, RawConfig};
use trackgate::simulate::mailbox::Store;
use trackgate::simulate::{ExchangeSimulator, FixtureSet, SimulatorOptions};

pub const LOOPBACK: &str = "127.0.0.1:0";

/// A gateway and the folder holding its state and certificates.
pub struct TestGateway {
    pub gateway: Gateway,
    pub dir: tempfile::TempDir,
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.proxy_url())
    }

    pub fn localhost_url(&self, path: &str) -> String {
        self.url(path).replace("127.0.0.1", "localhost")
    }

    pub fn admin(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.admin_url())
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("data/certs/dev-ca.pem")
    }
}

/// Builds a validated configuration: loopback ports picked by the OS, state in `dir`, the
/// given upstream, plus `extra` TOML appended (sections may repeat keys already set here only
/// if they are not in this base).
pub fn config(dir: &Path, upstream: &str, extra: &str) -> Config {
    let text = format!(
        "{extra}\n[storage]\ndata_dir = \"{data}\"\n",
        data = dir.join("data").display()
    );
    let mut raw = RawConfig::from_toml(&text, "test", Vec::new()).expect("test config parses");
    raw.listener.address = LOOPBACK.into();
    raw.admin.address = LOOPBACK.into();
    raw.upstreams.ews = Some(upstream.to_owned());
    raw.validate(dir).expect("test config is valid")
}

pub async fn gateway(upstream: &str, extra: &str) -> TestGateway {
    trackgate::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = app::start(config(dir.path(), upstream, extra))
        .await
        .expect("gateway starts");
    TestGateway { gateway, dir }
}

pub async fn simulator(name: &str) -> ExchangeSimulator {
    simulator_with(SimulatorOptions::new(
        name,
        FixtureSet::embedded().expect("fixtures"),
    ))
    .await
}

/// The stateful simulator over the embedded Contoso mailboxes.
pub async fn store_simulator() -> ExchangeSimulator {
    store_simulator_on(std::sync::Arc::new(Store::embedded().expect("store"))).await
}

/// The stateful simulator over `store`, which the test can read and change.
pub async fn store_simulator_on(store: std::sync::Arc<Store>) -> ExchangeSimulator {
    simulator_with(
        SimulatorOptions::new("store", FixtureSet::embedded().expect("fixtures")).with_store(store),
    )
    .await
}

pub async fn simulator_with(options: SimulatorOptions) -> ExchangeSimulator {
    trackgate::tls::install_crypto_provider();
    ExchangeSimulator::start(LOOPBACK.parse().expect("addr"), options)
        .await
        .expect("simulator starts")
}

/// A client that trusts only the given CA. `h2`: negotiate HTTP/2 by ALPN, else HTTP/1.1 only.
pub fn client(ca: &Path, h2: bool) -> reqwest::Client {
    let pem = std::fs::read(ca).expect("CA file");
    let cert = reqwest::Certificate::from_pem(&pem).expect("CA parses");
    let builder = reqwest::Client::builder()
        .tls_certs_only([cert])
        .timeout(Duration::from_secs(120));
    let builder = if h2 { builder } else { builder.http1_only() };
    builder.build().expect("client builds")
}

/// A raw TLS connection to `addr` as `localhost`, trusting only the given CA: for tests that
/// write bytes no HTTP client would.
pub async fn tls_stream(
    addr: SocketAddr,
    ca: &Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trackgate::tls::read_certs(ca).expect("CA file") {
        roots.add(cert).expect("CA certificate");
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

pub fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client builds")
}

/// Runs the trackgate binary to completion, asserts it exited 0 (showing its stderr if not),
/// and returns its stdout and stderr.
pub fn run_trackgate<I, S>(args: I) -> (Vec<u8>, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(env!("CARGO_BIN_EXE_trackgate"))
        .args(args)
        .output()
        .expect("trackgate runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (out.stdout, stderr)
}

/// The body of a plain GET (admin endpoints: metrics, readiness, listings).
pub async fn get_text(url: &str) -> String {
    plain_client()
        .get(url)
        .send()
        .await
        .expect("GET answered")
        .text()
        .await
        .expect("GET body")
}

/// Sends a request and reads its JSON answer.
pub async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    request
        .send()
        .await
        .expect("request answered")
        .json()
        .await
        .expect("a JSON answer")
}

/// Polls `check` until it returns `Some`, or panics after `limit`.
pub async fn wait_for<T>(
    limit: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The gateway binary as a child process.
pub struct GatewayProcess {
    pub child: Child,
    pub proxy: String,
    pub admin: String,
    pub stdout: std::sync::mpsc::Receiver<String>,
    /// What the gateway wrote on stderr: shown only when the test fails, so a passing run is
    /// quiet even where a test provokes errors on purpose.
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl GatewayProcess {
    /// Starts `trackgate serve --config FILE` and waits for its ready line.
    pub fn start(config: &Path) -> GatewayProcess {
        GatewayProcess::start_with(config, &[])
    }

    /// Starts `trackgate serve --config FILE ARGS…` and waits for its ready line.
    pub fn start_with(config: &Path, args: &[&str]) -> GatewayProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_trackgate"))
            .args(["serve", "--config"])
            .arg(config)
            .args(args)
            .env("RUST_LOG", "warn")
            // Memory tests read the RSS. With transparent huge pages (which mimalloc asks for
            // where the kernel offers them on request) it moves in 2 MiB steps, which hides or
            // invents the kilobytes per connection those tests are about; whether a host has
            // huge pages free also changes over a machine's life. Count 4 KiB pages.
            .env("MIMALLOC_ALLOW_THP", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gateway binary starts");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let err = child.stderr.take().expect("stderr");
        let kept = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Ok(mut lines) = kept.lock() {
                    lines.push(line);
                }
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = loop {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
                let said = stderr.lock().map(|l| l.join("\n")).unwrap_or_default();
                panic!("the gateway printed no ready line; its stderr:\n{said}");
            };
            if line.starts_with("trackgate ready ") {
                break line;
            }
        };
        let field = |key: &str| {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .expect("ready line field")
                .to_owned()
        };
        GatewayProcess {
            proxy: field("proxy="),
            admin: field("admin="),
            child,
            stdout: rx,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Peak resident memory of the process, in bytes (VmHWM).
    pub fn peak_rss(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:") * 1024
    }

    pub fn rss(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:") * 1024
    }

    /// Waits for exit and returns the status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "gateway did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking()
            && let Ok(lines) = self.stderr.lock()
        {
            eprintln!("--- the gateway's stderr ---\n{}", lines.join("\n"));
        }
    }
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("status field")
}

/// Writes a config file for the gateway binary: loopback, port 0, state in `dir`.
pub fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("trackgate.toml");
    let text = format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n{body}\n[admin]\naddress = \"127.0.0.1:0\"\n\n[storage]\ndata_dir = \"{}\"\n",
        dir.join("data").display()
    );
    std::fs::write(&path, text).expect("config written");
    path
}

/// A loopback port nothing listens on (bound, then released): an upstream that is down.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr").port()
}

pub fn addr_of(url: &str) -> SocketAddr {
    url.split("://")
        .nth(1)
        .expect("url has scheme")
        .trim_end_matches('/')
        .parse()
        .expect("url has socket address")
}

/// Hides a body's length, so it goes out chunked.
pub struct Unsized<B>(pub B);

impl<B: http_body::Body + Unpin> http_body::Body for Unsized<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.0).poll_frame(cx)
    }
}

/// Posts an EWS body through the gateway as Alex's client would (anchored to his mailbox).
pub async fn post_ews_as_alex(
    client: &reqwest::Client,
    gw: &TestGateway,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    client
        .post(gw.localhost_url("/EWS/Exchange.asmx"))
        .header("content-type", "text/xml; charset=utf-8")
        .header("x-anchormailbox", "alex.seller@contoso.example")
        .body(body)
        .send()
        .await
        .expect("EWS request through the gateway")
}

/// Lists Alex's Inbox over Graph through the gateway and reads the answer.
pub async fn list_alex_inbox_over_graph(client: &reqwest::Client, gw: &TestGateway) -> u16 {
    let r =
        client
            .get(gw.localhost_url(
                "/v1.0/users/alex.seller%40contoso.example/mailFolders/inbox/messages",
            ))
            .send()
            .await
            .expect("Graph request through the gateway");
    let status = r.status().as_u16();
    r.bytes().await.expect("Graph body");
    status
}

/// A recorded exchange from `fixtures/exchange`.
pub fn fixture(name: &str) -> trackgate::simulate::fixtures::Fixture {
    trackgate::simulate::fixtures::Fixture::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/exchange")
            .join(name),
    )
    .expect("fixture loads")
}

/// The value of an unlabelled gauge or counter in the gateway's admin metrics.
pub async fn gauge(gw: &TestGateway, name: &str) -> u64 {
    gauge_at(&gw.admin(""), name).await
}

/// The same, for a gateway at admin URL `admin` (a binary's, started as a process).
pub async fn gauge_at(admin: &str, name: &str) -> u64 {
    let text = get_text(&format!("{admin}/metrics")).await;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("{name} missing from the metrics"))
}

/// Reads one answer head from a raw connection, a byte at a time so nothing after it is taken:
/// its lines as sent. `None` when the connection ends first; panics when nothing comes within
/// 10 s.
pub async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("an answer or the end within 10 s")
            .ok()?;
        if n == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).ok()
}

/// Reads one HTTP/1.1 answer with a `Content-Length` body (none without one) from a raw
/// connection, leaving a pipelined next answer unread: its head (lines as sent) and its body.
/// `None` when the connection ends first; panics when nothing comes within 10 s.
pub async fn read_response(stream: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let head = read_head(stream).await?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some((head, body))
}
