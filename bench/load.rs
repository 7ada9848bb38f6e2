//! The load harness: trackgate against nginx, side by side in one run (run it with
//! `bench/harness.sh`, which installs nginx from Debian's packages and pins this process).
//!
//! Targets, each on loopback in front of the same Exchange simulator:
//! - `direct`: the simulator itself (the floor);
//! - `nginx`: a plain reverse proxy — one worker, upstream keep-alive, access log off;
//! - `trackgate pass-through`: inspection off;
//! - `trackgate full`: inspection, rules, outbox and delivery to the Dataverse simulator on.
//!
//! The driver and both simulators run on core 0, every proxy on core 1. The request mix
//! replays recorded clients: EWS GetItem, FindItem, SyncFolderItems, CreateItem (send),
//! MoveItem, UpdateItem (categories); Graph list, delta, sendMail, `$batch`. Every response is
//! checked against the simulator's own answer (status and a hash of the body): a difference is
//! an error, and any error fails the run. Reported, with medians of interleaved rounds:
//! 1. closed loop (32 keep-alive connections): requests per second, proxy CPU per request
//!    (utime + stime from /proc, including the work a round leaves behind: inspection and
//!    delivery catch up after the load stops), upstream connection reuse (from the simulator's
//!    counters), and the share of inspection copies trackgate dropped (inspection runs behind
//!    the traffic: a saturated full mode drops copies, so its CPU is then not the cost of
//!    inspecting everything);
//! 2. open loop at 25 / 50 / 80 % of nginx's closed-loop maximum: latency corrected for
//!    coordinated omission (measured from each request's scheduled time; HdrHistogram),
//!    p50 / p99 / p99.9 / max, the rounds in which a trackgate's p99 was at or below nginx's
//!    in the same round, and CPU per request and copies dropped at that rate; for
//!    trackgate full, that CPU split by stage (proxy, inspection and rules, outbox, delivery:
//!    the threads' names);
//! 3. the TLS matrix: closed loop through both proxies on TLS with the same ECDSA P-256
//!    certificate;
//! 4. memory: proxy RSS with 10 000 idle client connections, and after they close;
//! 5. cost (`TRACKGATE_BENCH_PHASES=cost`): per request, nginx and trackgate side by side —
//!    system calls by kind, user and system CPU time, context switches, page faults (see
//!    `load_cost.rs`); `cost-tls`: the same through both proxies' TLS listeners.
//!
//! Environment: `TRACKGATE_BENCH_SECONDS` (per round, default 5), `TRACKGATE_BENCH_ROUNDS`
//! (default 3), `TRACKGATE_BENCH_IDLE` (idle connections, default 10000),
//! `TRACKGATE_BENCH_PHASES` (a comma-separated subset of `closed,open,tls,idle,cost,cost-tls`, default all: a
//! quick look while profiling; the open loop needs `closed` for nginx's maximum),
//! `TRACKGATE_BENCH_BASELINE` (the path of an older `trackgate` binary, run side by side as
//! "baseline pass-through" and "baseline full" to judge a change within one run),
//! `TRACKGATE_BENCH_PROFILE` (a folder: the cost phase also records a `perf` profile of each
//! proxy there), `TRACKGATE_BENCH_MODEL` (`runtime.model` for the build under test, not the
//! baseline: with the baseline pointing at the same binary, the two models side by side). Results: bench/RESULTS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "load_cost.rs"]
mod cost;
#[path = "mix.rs"]
mod mix;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mix::MIX;
use trackgate::simulate::FixtureSet;

const CONNECTIONS: usize = 32;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One request of the mix and the simulator's own answer to it.
struct Request {
    method: http::Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    expected: Option<(u16, u64)>,
}

fn mix() -> Vec<Request> {
    let fixtures = FixtureSet::embedded().unwrap();
    MIX.iter()
        .map(|name| {
            let f = fixtures
                .iter()
                .find(|f| f.name == *name)
                .unwrap_or_else(|| panic!("fixture {name}"));
            let r = f.request.as_ref().unwrap();
            Request {
                method: http::Method::from_bytes(r.method.as_bytes()).unwrap(),
                path: r.path.clone(),
                headers: r.headers.clone(),
                body: r.body.clone(),
                expected: None,
            }
        })
        .collect()
}

fn hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// A client connection: plain or TLS (trusting `ca`), HTTP/1.1 keep-alive.
async fn connect(
    addr: SocketAddr,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    tcp.set_nodelay(true).ok()?;
    match tls {
        None => {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .ok()?;
            tokio::spawn(conn);
            Some(sender)
        }
        Some(connector) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
            let stream = connector.connect(name, tcp).await.ok()?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .ok()?;
            tokio::spawn(conn);
            Some(sender)
        }
    }
}

/// Sends one request; `Ok(status, body hash)`.
async fn exchange(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    r: &Request,
) -> Result<(u16, u64), ()> {
    let mut builder = http::Request::builder()
        .method(r.method.clone())
        .uri(r.path.as_str());
    let mut has_host = false;
    for (name, value) in &r.headers {
        has_host |= name.eq_ignore_ascii_case("host");
        if !name.eq_ignore_ascii_case("content-length") {
            builder = builder.header(name.as_str(), value.as_str());
        }
    }
    if !has_host {
        builder = builder.header("host", "localhost");
    }
    let request = builder.body(Full::new(r.body.clone())).map_err(|_| ())?;
    sender.ready().await.map_err(|_| ())?;
    let response = sender.send_request(request).await.map_err(|_| ())?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|_| ())?;
    Ok((status, hash(&body.to_bytes())))
}

struct Outcome {
    requests: u64,
    errors: u64,
    seconds: f64,
    latency: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).unwrap()
}

/// The open-loop pacer's granularity: requests leave in bursts of at most this much.
const PACING: Duration = Duration::from_micros(200);

/// Releases `slots` permits, one per scheduled request, at `rate` per second from `start`.
/// A thread sleeping to each send time (in steps of at least [`PACING`]) instead of tokio's
/// timer, whose 1 ms ticks sent requests in bursts and added up to a millisecond of the
/// generator's own to every latency.
fn pace(permits: Arc<tokio::sync::Semaphore>, start: Instant, slots: u64, rate: f64) {
    std::thread::spawn(move || {
        let mut released = 0u64;
        while released < slots {
            let elapsed = Instant::now().saturating_duration_since(start);
            let due = ((elapsed.as_secs_f64() * rate) as u64 + 1).min(slots);
            if due > released {
                permits.add_permits((due - released) as usize);
                released = due;
            }
            // Waking per request would load the generator's core (a wake-up of this thread and
            // of the driver each): release what is due at most every 200 µs.
            let next = start + Duration::from_secs_f64(released as f64 / rate);
            let wait = next.saturating_duration_since(Instant::now());
            std::thread::sleep(wait.max(PACING));
        }
    });
}

/// Closed loop (`rate` None) or open loop at `rate` requests per second, corrected for
/// coordinated omission: each request's latency counts from its scheduled time.
async fn load(
    addr: SocketAddr,
    tls: Option<Arc<tokio_rustls::TlsConnector>>,
    requests: Arc<Vec<Request>>,
    length: Duration,
    rate: Option<f64>,
) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let pacer = Arc::new(tokio::sync::Semaphore::new(0));
    // Open loop: the requests scheduled within `length`, each taken by exactly one task.
    let slots = rate.map_or(0, |rate| (length.as_secs_f64() * rate) as u64 + 1);
    if let Some(rate) = rate {
        pace(pacer.clone(), start.into_std(), slots, rate);
    }
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let (stop, next, requests, tls, pacer) = (
            stop.clone(),
            next.clone(),
            requests.clone(),
            tls.clone(),
            pacer.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let (mut ok, mut errors) = (0u64, 0u64);
            let Some(mut sender) = connect(addr, tls.as_deref()).await else {
                return (0, 1, hist);
            };
            tokio::time::sleep_until(start).await;
            let mut i = c as u64;
            loop {
                let scheduled = match rate {
                    Some(rate) => {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        i = n;
                        if n >= slots {
                            break;
                        }
                        let at = start + Duration::from_secs_f64(n as f64 / rate);
                        // The pacer releases one permit per slot, in order, at its time; the
                        // semaphore is fair and the driver runs on one thread (taking a slot
                        // and queueing for its permit happen in one poll), so the n-th waiter
                        // gets the n-th slot.
                        match pacer.acquire().await {
                            Ok(permit) => permit.forget(),
                            Err(_) => break,
                        }
                        at
                    }
                    None => {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        i += CONNECTIONS as u64;
                        tokio::time::Instant::now()
                    }
                };
                let r = &requests[(i % requests.len() as u64) as usize];
                match exchange(&mut sender, r).await {
                    Ok(answer) if Some(answer) == r.expected => {
                        ok += 1;
                        let _ = hist.record(scheduled.elapsed().as_micros().max(1) as u64);
                    }
                    Ok(_) => errors += 1,
                    Err(()) => {
                        errors += 1;
                        match connect(addr, tls.as_deref()).await {
                            Some(s) => sender = s,
                            None => break,
                        }
                    }
                }
            }
            (ok, errors, hist)
        }));
    }
    tokio::time::sleep_until(start).await;
    let began = Instant::now();
    if rate.is_none() {
        tokio::time::sleep(length).await;
        stop.store(true, Ordering::Relaxed);
    }
    let mut out = Outcome {
        requests: 0,
        errors: 0,
        seconds: 0.0,
        latency: histogram(),
    };
    for t in tasks {
        let (ok, errors, hist) = t.await.unwrap();
        out.requests += ok;
        out.errors += errors;
        out.latency.add(hist).unwrap();
    }
    out.seconds = began.elapsed().as_secs_f64();
    out
}

fn cpu_seconds(pid: u32) -> f64 {
    let (user, system) = cost::user_system(&[pid]);
    user + system
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The children of `parent` (nginx's worker).
fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// Stops every child when the harness ends, also on a panic (so nothing is left holding CI's
/// output open).
struct Reaper(std::sync::Mutex<Vec<u32>>);

static REAPER: Reaper = Reaper(std::sync::Mutex::new(Vec::new()));

impl Reaper {
    fn add(pid: u32) {
        if let Ok(mut pids) = REAPER.0.lock() {
            pids.push(pid);
        }
    }

    fn stop_all() {
        let pids = REAPER.0.lock().map(|p| p.clone()).unwrap_or_default();
        for pid in pids {
            // nginx's master stops its worker on SIGTERM (a SIGKILL would orphan it).
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs [`Reaper::stop_all`] when dropped, panicking or not.
struct StopAll;

impl Drop for StopAll {
    fn drop(&mut self) {
        Reaper::stop_all();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pinned(core: &str, program: &str) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", core, program]);
    c
}

/// Starts a child and waits for a stdout line starting with `ready`; returns it.
fn start(mut command: Command, ready: &str) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Reaper::add(child.id());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with(ready) => {
                // Keep draining so the child never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines {});
                return (child, line);
            }
            Some(Ok(_)) => {}
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the child ended before printing {ready:?}");
            }
        }
    }
}

fn word(line: &str, prefix: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("{prefix} in {line}"))
        .to_owned()
}

struct Proxy {
    name: &'static str,
    plain: SocketAddr,
    tls: Option<SocketAddr>,
    /// trackgate's admin listener, for the inspection copies it dropped.
    admin: Option<SocketAddr>,
    pids: Vec<u32>,
    child: Option<Child>,
}

impl Proxy {
    fn cpu(&self) -> f64 {
        self.pids.iter().map(|p| cpu_seconds(*p)).sum()
    }
    fn rss(&self) -> f64 {
        self.pids.iter().map(|p| rss_mib(*p)).sum()
    }
    /// CPU seconds by thread and its stage, for a trackgate in full mode (empty for the
    /// others).
    fn stages(&self) -> BTreeMap<u32, (&'static str, f64)> {
        match (self.name.ends_with("full"), self.pids.first()) {
            (true, Some(&pid)) => cost::cpu_by_thread(pid),
            _ => BTreeMap::new(),
        }
    }
}

fn nginx(dir: &Path, upstream: SocketAddr, certs: &Path) -> Proxy {
    let (plain, tls) = loop {
        let (a, b) = (free_port(), free_port());
        if a != b {
            break (a, b);
        }
    };
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "# The fair nginx: one worker, upstream keep-alive, access log off.
worker_processes 1;
worker_rlimit_nofile 40000;
daemon off;
user root;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    # nginx closes a keep-alive connection after 1000 requests by default, on both sides;
    # trackgate does not, so the same applies here.
    keepalive_requests 1000000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_max_body_size 16m;
    upstream exchange {{ server {upstream}; keepalive 64; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{plain} backlog=16384;
        listen 127.0.0.1:{tls} ssl backlog=16384;
        ssl_certificate {certs}/dev-server.pem;
        ssl_certificate_key {certs}/dev-server.key;
        location / {{
            proxy_pass http://exchange;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $host;
        }}
    }}
}}
",
            dir = dir.display(),
            certs = certs.display(),
        ),
    )
    .unwrap();
    // bench/harness.sh says where nginx is (/usr/sbin is not on every PATH).
    let program = std::env::var("TRACKGATE_NGINX").unwrap_or_else(|_| "nginx".into());
    let mut child = pinned("1", &program)
        .args(["-e"])
        .arg(dir.join("nginx-error.log"))
        .args(["-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("nginx runs (bench/harness.sh installs it)");
    let master = child.id();
    Reaper::add(master);
    // nginx under taskset: taskset execs nginx, so the child is the master.
    let addr = SocketAddr::from(([127, 0, 0, 1], plain));
    let deadline = Instant::now() + Duration::from_secs(10);
    // Up when it accepts and its worker exists (the master listens before it forks).
    while std::net::TcpStream::connect(addr).is_err() || children(master).is_empty() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "nginx exited at start ({status}); see {}/nginx-error.log",
                dir.display()
            );
        }
        assert!(Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut pids = vec![master];
    pids.extend(children(master));
    Proxy {
        name: "nginx",
        plain: addr,
        tls: Some(SocketAddr::from(([127, 0, 0, 1], tls))),
        admin: None,
        pids,
        child: Some(child),
    }
}

fn trackgate_proxy(
    name: &'static str,
    binary: &str,
    dir: &Path,
    upstream: SocketAddr,
    certs: &Path,
    full: Option<&str>,
    with_tls: bool,
) -> (Proxy, Option<Proxy>) {
    let mut proxies = Vec::new();
    for tls in [false, true].into_iter().filter(|tls| with_tls || !tls) {
        let data = dir.join(format!("{name}-{tls}").replace(' ', "-"));
        let listener = if tls {
            format!(
                "tls_cert = \"{c}/dev-server.pem\"\ntls_key = \"{c}/dev-server.key\"",
                c = certs.display()
            )
        } else {
            "plaintext = true".into()
        };
        let pipeline = match full {
            Some(dataverse) => format!(
                "[inspect]\nenabled = true\n[crm]\nsink = \"dataverse\"\n[crm.dataverse]\nurl = \"{dataverse}\"\n"
            ),
            None => "[inspect]\nenabled = false\n".into(),
        };
        let config = dir.join(format!(
            "{}.toml",
            data.file_name().unwrap().to_string_lossy()
        ));
        let model = match std::env::var("TRACKGATE_BENCH_MODEL") {
            Ok(model) if !name.starts_with("baseline") => format!("model = \"{model}\"\n"),
            _ => String::new(),
        };
        std::fs::write(
            &config,
            format!(
                "[listener]\naddress = \"127.0.0.1:0\"\n{listener}\n[admin]\naddress = \"127.0.0.1:0\"\n[upstreams]\news = \"http://{upstream}\"\n[runtime]\nworker_threads = 1\n{model}[limits]\nmax_connections = 20000\n[logging]\nlevel = \"warn\"\n[storage]\ndata_dir = \"{}\"\n{pipeline}",
                data.display()
            ),
        )
        .unwrap();
        let mut command = pinned("1", binary);
        command.args(["serve", "--config"]).arg(&config);
        let (child, ready) = start(command, "trackgate ready ");
        let proxy_url = word(&ready, "proxy=");
        let admin: SocketAddr = word(&ready, "admin=")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap();
        let addr: SocketAddr = proxy_url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .parse()
            .unwrap();
        proxies.push(Proxy {
            name,
            plain: addr,
            tls: tls.then_some(addr),
            admin: Some(admin),
            pids: vec![child.id()],
            child: Some(child),
        });
    }
    let tls = with_tls.then(|| proxies.pop().unwrap());
    let plain = proxies.pop().unwrap();
    (plain, tls)
}

/// The body of a GET on a fresh connection (the simulator's stats, trackgate's metrics).
async fn get(addr: SocketAddr, path: &str) -> Bytes {
    let mut sender = connect(addr, None).await.unwrap();
    let request = http::Request::get(path).header("host", "localhost");
    let response = sender
        .send_request(request.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    response.into_body().collect().await.unwrap().to_bytes()
}

async fn sim_counts(sim: SocketAddr) -> (u64, u64) {
    let v: serde_json::Value = serde_json::from_slice(&get(sim, "/_sim/stats").await).unwrap();
    (
        v["connections"].as_u64().unwrap_or(0),
        v["requests"].as_u64().unwrap_or(0),
    )
}

/// The inspection copies a trackgate has dropped so far (its queue was full): 0 for the others.
/// A full-mode figure with drops did not inspect everything, so its CPU is not the full cost.
async fn dropped_copies(proxy: &Proxy) -> u64 {
    let Some(admin) = proxy.admin else { return 0 };
    String::from_utf8_lossy(&get(admin, "/metrics").await)
        .lines()
        .filter(|l| l.starts_with("trackgate_captures_dropped_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits (up to 30 s) until the proxy's CPU use stops: trackgate full goes on inspecting and
/// delivering after a round, and the next target on its core must not pay for that.
fn quiet(proxy: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = proxy.cpu();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = proxy.cpu();
        if now - last < 0.005 {
            return;
        }
        last = now;
    }
}

/// One open-loop round: its latency histogram and figures.
type OpenRound = (Histogram<u64>, Round);

/// Where full mode's CPU goes in the open loop: µs per request by stage (threads' names),
/// medians of the rounds. With no copies dropped, the stages after the proxy are the cost of
/// inspecting, deciding and delivering every exchange at that rate.
fn print_stages(shares: &[f64], nginx_max: f64, targets: &[&Proxy], open: &[Vec<Vec<OpenRound>>]) {
    let names: std::collections::BTreeSet<&str> = open
        .iter()
        .flatten()
        .flatten()
        .flat_map(|(_, round)| round.stages.keys().copied())
        .collect();
    if names.is_empty() {
        return;
    }
    println!(
        "\n### Full mode's CPU by stage (open loop, µs per request, medians; threads' names)\n"
    );
    let header: Vec<&str> = names.iter().copied().collect();
    println!("| rate | target | {} |", header.join(" | "));
    println!("|---|---|{}", "---|".repeat(header.len()));
    for (s, share) in shares.iter().enumerate() {
        for (t, proxy) in targets.iter().enumerate() {
            if open[s][t].iter().all(|(_, round)| round.stages.is_empty()) {
                continue;
            }
            let cells: Vec<String> = header
                .iter()
                .map(|stage| {
                    let values = open[s][t]
                        .iter()
                        .map(|(_, round)| round.stages.get(stage).copied().unwrap_or(0.0))
                        .collect();
                    format!("{:.1}", median(values))
                })
                .collect();
            println!(
                "| {:.0}% ({:.0}/s) | {} | {} |",
                share * 100.0,
                nginx_max * share,
                proxy.name,
                cells.join(" | ")
            );
        }
    }
}

/// One round against one target.
#[derive(Clone)]
struct Round {
    rate: f64,
    /// Proxy CPU µs per request, including the work the round left behind.
    cpu: f64,
    reuse: f64,
    errors: u64,
    /// The share of exchanges whose inspection copy was dropped.
    dropped: f64,
    /// Full mode's CPU µs per request by stage (open loop only; empty for the others).
    stages: BTreeMap<&'static str, f64>,
}

/// The median, or NaN when a phase was skipped.
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn tls_connector(ca: &Path) -> Arc<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Holds `n` idle keep-alive connections (each has made one request), over TLS when a
/// connector is given, and reports the proxy's RSS with them, then after they close.
async fn idle(
    proxy: &Proxy,
    requests: &Arc<Vec<Request>>,
    n: usize,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> (f64, f64, f64) {
    let before = proxy.rss();
    let mut held = Vec::with_capacity(n);
    let small = &requests[6]; // the Graph list, ~1 KiB
    let addr = match tls {
        Some(_) => proxy.tls.expect("a TLS listener"),
        None => proxy.plain,
    };
    for _ in 0..n {
        let Some(mut sender) = connect(addr, tls).await else {
            break;
        };
        if exchange(&mut sender, small).await.is_ok() {
            held.push(sender);
        }
    }
    // trackgate parks a connection after 50 ms idle, and its allocator hands the buffers the
    // parked connections let go back to the system on its next once-a-second housekeeping:
    // 2 s later is the steady state of connections that stay idle (a bench, not a test: a
    // settle time is fine here).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with = proxy.rss();
    let opened = held.len();
    drop(held);
    // Let the proxy notice the closes and its allocator give their memory back (mimalloc's
    // purge delay is 1 s; a bench, not a test: a settle time is fine here).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = proxy.rss();
    assert_eq!(
        opened, n,
        "{}: only {opened} of {n} idle connections",
        proxy.name
    );
    (before, with, after)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    trackgate::tls::install_crypto_provider();
    let seconds: f64 = env_or("TRACKGATE_BENCH_SECONDS", 5.0);
    let rounds: usize = env_or("TRACKGATE_BENCH_ROUNDS", 3usize).max(1);
    let _stop_all = StopAll;
    let idle_connections: usize = env_or("TRACKGATE_BENCH_IDLE", 10_000);
    let phases: String = env_or(
        "TRACKGATE_BENCH_PHASES",
        "closed,open,tls,idle,cost,cost-tls".to_owned(),
    );
    let phase = |name: &str| phases.split(',').any(|p| p.trim() == name);
    let length = Duration::from_secs_f64(seconds);
    let binary = env!("CARGO_BIN_EXE_trackgate");
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let status = Command::new(binary)
        .args(["certs", "dev", "--out"])
        .arg(&certs)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    // Core 0: the simulators (one thread each) and this driver.
    let sim_port = free_port();
    let mut sim_cmd = pinned("0", binary);
    sim_cmd.args([
        "simulate",
        "exchange",
        "--fixtures-only",
        "--threads",
        "1",
        "--listen",
        &format!("127.0.0.1:{sim_port}"),
    ]);
    let (mut sim, _) = start(sim_cmd, "simulator ready");
    let sim_addr = SocketAddr::from(([127, 0, 0, 1], sim_port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(sim_addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the Exchange simulator did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut dv_cmd = pinned("0", binary);
    dv_cmd.args(["simulate", "dataverse", "--listen", "127.0.0.1:0"]);
    let (mut dataverse, dv_ready) = start(dv_cmd, "dataverse simulator ready");
    let dv_url = word(&dv_ready, "url=");

    // Core 1: the proxies.
    let nginx = nginx(dir.path(), sim_addr, &certs);
    let (pass, pass_tls) = trackgate_proxy(
        "trackgate pass-through",
        binary,
        dir.path(),
        sim_addr,
        &certs,
        None,
        true,
    );
    let (full, full_tls) = trackgate_proxy(
        "trackgate full",
        binary,
        dir.path(),
        sim_addr,
        &certs,
        Some(&dv_url),
        true,
    );
    let (pass_tls, full_tls) = (pass_tls.unwrap(), full_tls.unwrap());
    // A previous build side by side, to judge a change within one run.
    let baseline_binary = std::env::var("TRACKGATE_BENCH_BASELINE").ok();
    let baseline = baseline_binary.as_deref().map(|old| {
        let (pass, _) = trackgate_proxy(
            "baseline pass-through",
            old,
            dir.path(),
            sim_addr,
            &certs,
            None,
            false,
        );
        let (full, _) = trackgate_proxy(
            "baseline full",
            old,
            dir.path(),
            sim_addr,
            &certs,
            Some(&dv_url),
            false,
        );
        (pass, full)
    });
    let direct = Proxy {
        name: "direct",
        plain: sim_addr,
        tls: None,
        admin: None,
        pids: vec![sim.id()],
        child: None,
    };

    let driver = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // What the simulator itself answers: the reference every response is checked against.
    let mut requests = mix();
    driver.block_on(async {
        let mut sender = connect(sim_addr, None).await.unwrap();
        for r in &mut requests {
            r.expected = Some(exchange(&mut sender, r).await.unwrap());
        }
    });
    let requests = Arc::new(requests);
    let connector = tls_connector(&certs.join("dev-ca.pem"));

    // 1. Closed loop, interleaved rounds.
    let mut plain_targets = vec![&direct, &nginx, &pass, &full];
    let mut memory_targets = vec![&nginx, &pass, &pass_tls, &full];
    if let Some((old_pass, old_full)) = &baseline {
        plain_targets.extend([old_pass, old_full]);
        memory_targets.extend([old_pass, old_full]);
    }
    let mut closed: Vec<Vec<Round>> = vec![Vec::new(); plain_targets.len()];
    for _ in 0..if phase("closed") { rounds } else { 0 } {
        for (t, proxy) in plain_targets.iter().enumerate() {
            let (c0, r0) = driver.block_on(sim_counts(sim_addr));
            let dropped0 = driver.block_on(dropped_copies(proxy));
            let cpu0 = proxy.cpu();
            let out = driver.block_on(load(proxy.plain, None, requests.clone(), length, None));
            let (c1, r1) = driver.block_on(sim_counts(sim_addr));
            // The work a round leaves behind (inspection, delivery) is charged to it.
            quiet(proxy);
            let cpu = proxy.cpu() - cpu0;
            let dropped = driver.block_on(dropped_copies(proxy)) - dropped0;
            let upstream_requests = (r1 - r0).saturating_sub(1).max(1);
            let reuse = 1.0 - (c1 - c0).saturating_sub(1) as f64 / upstream_requests as f64;
            closed[t].push(Round {
                rate: out.requests as f64 / out.seconds,
                cpu: cpu * 1e6 / out.requests.max(1) as f64,
                reuse,
                errors: out.errors,
                dropped: dropped as f64 / out.requests.max(1) as f64,
                stages: BTreeMap::new(),
            });
        }
    }
    let nginx_max = if phase("closed") {
        median(closed[1].iter().map(|c| c.rate).collect()).max(1.0)
    } else {
        1.0
    };

    // 2. Open loop at fixed shares of nginx's maximum, interleaved.
    let shares: &[f64] = if phase("open") && phase("closed") {
        &[0.25, 0.5, 0.8]
    } else {
        &[]
    };
    // By rate share, then target: each round's latency histogram and figures.
    let mut open: Vec<Vec<Vec<OpenRound>>> =
        vec![vec![Vec::new(); plain_targets.len()]; shares.len()];
    for (s, share) in shares.iter().enumerate() {
        for _ in 0..rounds {
            for (t, proxy) in plain_targets.iter().enumerate() {
                let dropped0 = driver.block_on(dropped_copies(proxy));
                let cpu0 = proxy.cpu();
                let stages0 = proxy.stages();
                let out = driver.block_on(load(
                    proxy.plain,
                    None,
                    requests.clone(),
                    length,
                    Some(nginx_max * share),
                ));
                quiet(proxy);
                let cpu = proxy.cpu() - cpu0;
                let per_request = 1e6 / out.requests.max(1) as f64;
                let stages = cost::stage_seconds(&stages0, &proxy.stages())
                    .into_iter()
                    .map(|(stage, seconds)| (stage, seconds * per_request))
                    .collect();
                let dropped = driver.block_on(dropped_copies(proxy)) - dropped0;
                let round = Round {
                    rate: out.requests as f64 / out.seconds,
                    cpu: cpu * per_request,
                    reuse: f64::NAN,
                    errors: out.errors,
                    dropped: dropped as f64 / out.requests.max(1) as f64,
                    stages,
                };
                open[s][t].push((out.latency, round));
            }
        }
    }

    let open_errors = |t: usize| -> u64 {
        open.iter()
            .flat_map(|share| &share[t])
            .map(|(_, round)| round.errors)
            .sum()
    };

    // 3. TLS: closed loop through both proxies, the same certificate.
    let tls_targets = [&nginx, &pass_tls, &full_tls];
    let mut tls: Vec<Vec<(f64, f64, u64)>> = vec![Vec::new(); tls_targets.len()];
    for _ in 0..if phase("tls") { rounds } else { 0 } {
        for (t, proxy) in tls_targets.iter().enumerate() {
            let cpu0 = proxy.cpu();
            let out = driver.block_on(load(
                proxy.tls.unwrap(),
                Some(connector.clone()),
                requests.clone(),
                length,
                None,
            ));
            quiet(proxy);
            let cpu = proxy.cpu() - cpu0;
            tls[t].push((
                out.requests as f64 / out.seconds,
                cpu * 1e6 / out.requests.max(1) as f64,
                out.errors,
            ));
        }
    }

    // 4. Memory with idle connections, plain then TLS.
    let memory: Vec<(&str, &str, (f64, f64, f64))> = memory_targets
        .iter()
        .filter(|_| phase("idle"))
        .flat_map(|p| {
            // nginx has both listeners in one process; trackgate's TLS gateway only TLS.
            let plain = (p.tls != Some(p.plain))
                .then(|| driver.block_on(idle(p, &requests, idle_connections, None)));
            let tls = p
                .tls
                .map(|_| driver.block_on(idle(p, &requests, idle_connections, Some(&connector))));
            let plain = plain.map(|m| (p.name, "plain", m));
            plain.into_iter().chain(tls.map(|m| (p.name, "TLS", m)))
        })
        .collect();

    // 5. Cost per request, side by side.
    let costs: Vec<(&str, cost::Cost)> = [&nginx, &pass, &full]
        .iter()
        .filter(|_| phase("cost"))
        .map(|p| {
            (
                p.name,
                cost::measure(&driver, p, None, &requests, length, dir.path()),
            )
        })
        .collect();
    // The same over TLS (the same certificate), where both pay for the crypto.
    let tls_costs: Vec<(&str, cost::Cost)> = [&nginx, &pass_tls]
        .iter()
        .filter(|_| phase("cost-tls"))
        .map(|p| {
            let measured =
                cost::measure(&driver, p, Some(&connector), &requests, length, dir.path());
            (p.name, measured)
        })
        .collect();

    // The report: the sections of the phases that ran.
    if phase("closed") {
        println!(
            "\n### Closed loop ({CONNECTIONS} connections, {seconds}s × {rounds} interleaved rounds, medians)\n"
        );
        println!(
            "| target | requests/s | proxy CPU µs/request | × nginx | capacity/core (req/s) | upstream reuse | errors | copies dropped |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let nginx_cpu = median(closed[1].iter().map(|c| c.cpu).collect());
        for (t, proxy) in plain_targets.iter().enumerate() {
            let rps = median(closed[t].iter().map(|c| c.rate).collect());
            let cpu = median(closed[t].iter().map(|c| c.cpu).collect());
            let reuse = median(closed[t].iter().map(|c| c.reuse).collect());
            let errors: u64 = closed[t].iter().map(|c| c.errors).sum();
            let dropped = median(closed[t].iter().map(|c| c.dropped).collect());
            if t == 0 {
                println!("| direct (simulator) | {rps:.0} | — | — | — | — | {errors} | — |");
            } else {
                println!(
                    "| {} | {rps:.0} | {cpu:.1} | {:.2} | {:.0} | {:.2}% | {errors} | {:.1}% |",
                    proxy.name,
                    cpu / nginx_cpu,
                    1e6 / cpu,
                    reuse * 100.0,
                    dropped * 100.0
                );
            }
        }
        println!(
            "\n(copies dropped: the share of exchanges whose inspection copy trackgate dropped because its \
             queue was full; inspection runs behind the traffic, so a saturated full mode inspects \
             less, and its CPU then is not the cost of inspecting everything: see the open loop.)"
        );
    }
    if !shares.is_empty() {
        println!(
            "\n### Open loop, latency corrected for coordinated omission (µs; nginx max = {nginx_max:.0}/s)\n"
        );
        println!(
            "| rate | target | p50 | p99 | p99.9 | max | added p99 vs direct | rounds with p99 ≤ nginx's | proxy CPU µs/request | copies dropped |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for (s, share) in shares.iter().enumerate() {
            let p = |t: usize, q: f64| {
                median(
                    open[s][t]
                        .iter()
                        .map(|(h, _)| h.value_at_quantile(q) as f64)
                        .collect(),
                )
            };
            let direct_p99 = p(0, 0.99);
            for (t, proxy) in plain_targets.iter().enumerate() {
                let max = median(open[s][t].iter().map(|(h, _)| h.max() as f64).collect());
                let cpu = median(open[s][t].iter().map(|(_, r)| r.cpu).collect());
                let dropped = median(open[s][t].iter().map(|(_, r)| r.dropped).collect());
                // The goal is judged round by round: each round ran every target back to back,
                // so a round's nginx p99 is the one to beat.
                let rounds_at_or_below_nginx = open[s][t]
                    .iter()
                    .zip(&open[s][1])
                    .filter(|((h, _), (n, _))| {
                        h.value_at_quantile(0.99) <= n.value_at_quantile(0.99)
                    })
                    .count();
                println!(
                    "| {:.0}% ({:.0}/s) | {} | {:.0} | {:.0} | {:.0} | {max:.0} | {} | {} | {} | {} |",
                    share * 100.0,
                    nginx_max * share,
                    proxy.name,
                    p(t, 0.5),
                    p(t, 0.99),
                    p(t, 0.999),
                    if t == 0 {
                        "—".to_owned()
                    } else {
                        format!("{:+.0}", p(t, 0.99) - direct_p99)
                    },
                    if t < 2 {
                        "—".to_owned()
                    } else {
                        format!("{rounds_at_or_below_nginx} of {}", open[s][t].len())
                    },
                    if t == 0 {
                        "—".to_owned()
                    } else {
                        format!("{cpu:.1}")
                    },
                    if t == 0 {
                        "—".to_owned()
                    } else {
                        format!("{:.1}%", dropped * 100.0)
                    },
                );
            }
        }
        print_stages(shares, nginx_max, &plain_targets, &open);
        println!(
            "\nopen-loop errors: {}",
            (0..plain_targets.len())
                .map(|t| open_errors(t).to_string())
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    if phase("tls") {
        println!("\n### TLS (same ECDSA P-256 certificate), closed loop\n");
        println!("| target | requests/s | proxy CPU µs/request | × nginx | errors |");
        println!("|---|---|---|---|---|");
        let nginx_tls_cpu = median(tls[0].iter().map(|c| c.1).collect());
        for (t, proxy) in tls_targets.iter().enumerate() {
            let rps = median(tls[t].iter().map(|c| c.0).collect());
            let cpu = median(tls[t].iter().map(|c| c.1).collect());
            let errors: u64 = tls[t].iter().map(|c| c.2).sum();
            println!(
                "| {} | {rps:.0} | {cpu:.1} | {:.2} | {errors} |",
                proxy.name,
                cpu / nginx_tls_cpu
            );
        }
    }
    if phase("idle") {
        println!("\n### Memory: {idle_connections} idle client connections (RSS, MiB)\n");
        println!("| proxy | transport | before | with them | per 10 k | after they close |");
        println!("|---|---|---|---|---|---|");
        for (name, transport, (before, with, after)) in memory {
            println!(
                "| {name} | {transport} | {before:.1} | {with:.1} | {:.1} | {after:.1} |",
                (with - before) * 10_000.0 / idle_connections as f64
            );
        }
    }

    cost::print("plain HTTP/1.1", &costs);
    cost::print("TLS", &tls_costs);

    let total_errors: u64 = closed.iter().flatten().map(|c| c.errors).sum::<u64>()
        + costs.iter().map(|(_, c)| c.errors).sum::<u64>()
        + tls_costs.iter().map(|(_, c)| c.errors).sum::<u64>()
        + (0..plain_targets.len()).map(open_errors).sum::<u64>()
        + tls.iter().flatten().map(|c| c.2).sum::<u64>();
    // nginx's master stops its worker on SIGTERM (a SIGKILL would orphan it).
    let baseline_children = baseline
        .into_iter()
        .flat_map(|(old_pass, old_full)| [old_pass.child, old_full.child]);
    for mut child in [
        nginx.child,
        pass.child,
        pass_tls.child,
        full.child,
        full_tls.child,
    ]
    .into_iter()
    .chain(baseline_children)
    .flatten()
    {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    let _ = sim.kill();
    let _ = sim.wait();
    let _ = dataverse.kill();
    let _ = dataverse.wait();
    // Errors include responses that differ from the simulator's (status or body).
    assert_eq!(
        total_errors, 0,
        "errors or differing responses during the run"
    );
}
