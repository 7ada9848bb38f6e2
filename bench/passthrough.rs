//! First-light load measurement: requests per second and added latency through the gateway
//! versus straight to the Exchange simulator, side by side in one run, reported as ratios.
//!
//! Run with `bench/run.sh` (pins this process to core 0 and the gateway to core 1), or
//! `cargo bench --bench passthrough`. `TRACKGATE_BENCH_SECONDS` sets the length of each round
//! (default 5); rounds alternate direct / gateway three times and the medians are reported.
//!
//! What runs where: the simulator and the load driver share this process (one thread each);
//! the gateway is the release binary in its own process with one worker thread, plaintext on
//! both legs, so the numbers are the proxy's own cost. Its CPU time comes from /proc.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use trackgate::simulate::{ExchangeSimulator, FixtureSet, SimulatorOptions};

const PATH: &str = "/v1.0/me/mailFolders/inbox/messages";

struct Round {
    requests: u64,
    errors: u64,
    seconds: f64,
    latency: Histogram<u64>,
}

impl Round {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
    fn p(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64
    }
}

/// Closed loop: `connections` keep-alive connections, each sending the next request as soon as
/// the previous response is read, for `length`.
async fn load(target: SocketAddr, connections: usize, length: Duration) -> Round {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(target).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let (mut ok, mut errors) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::get(PATH)
                    .header("host", "bench")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let started = Instant::now();
                if sender.ready().await.is_err() {
                    errors += 1;
                    break;
                }
                match sender.send_request(req).await {
                    Ok(r) if r.status() == 200 => match r.into_body().collect().await {
                        Ok(_) => {
                            ok += 1;
                            let _ = hist.record(started.elapsed().as_micros() as u64);
                        }
                        Err(_) => errors += 1,
                    },
                    _ => errors += 1,
                }
            }
            (ok, errors, hist)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let mut round = Round {
        requests: 0,
        errors: 0,
        seconds: 0.0,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
    };
    for t in tasks {
        let (ok, errors, hist) = t.await.unwrap();
        round.requests += ok;
        round.errors += errors;
        round.latency.add(hist).unwrap();
    }
    round.seconds = started.elapsed().as_secs_f64();
    round
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and test harness probes
    }
    let seconds: u64 = std::env::var("TRACKGATE_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let length = Duration::from_secs(seconds);
    trackgate::tls::install_crypto_provider();

    // The simulator: its own single-threaded runtime.
    let (sim_tx, sim_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let options = SimulatorOptions::new("bench", FixtureSet::embedded().unwrap());
            let sim = ExchangeSimulator::start("127.0.0.1:0".parse().unwrap(), options)
                .await
                .unwrap();
            sim_tx.send(sim.addr()).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let sim_addr = sim_rx.recv().unwrap();

    // The gateway: release binary, one worker, pinned to core 1 when taskset exists.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[listener]\naddress = \"127.0.0.1:0\"\nplaintext = true\n[admin]\naddress = \"127.0.0.1:0\"\n[upstreams]\news = \"http://{sim_addr}\"\n[runtime]\nworker_threads = 1\n[logging]\nlevel = \"warn\"\n[storage]\ndata_dir = \"{}\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let binary = env!("CARGO_BIN_EXE_trackgate");
    let pinned = Command::new("taskset").arg("-V").output().is_ok();
    let mut command = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "1", binary]);
        c
    } else {
        Command::new(binary)
    };
    let mut child = command
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = loop {
        let line = lines.next().unwrap().unwrap();
        if line.starts_with("trackgate ready ") {
            break line;
        }
    };
    let gw_addr: SocketAddr = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("proxy=http://"))
        .unwrap()
        .parse()
        .unwrap();
    let pid = child.id();

    let driver = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut table = Vec::new();
    for (label, connections) in [
        ("latency, 1 connection", 1usize),
        ("throughput, 32 connections", 32),
    ] {
        let (mut direct, mut via) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let d = driver.block_on(load(sim_addr, connections, length));
            let cpu0 = cpu_seconds(pid);
            let g = driver.block_on(load(gw_addr, connections, length));
            let cpu = cpu_seconds(pid) - cpu0;
            assert_eq!(d.errors + g.errors, 0, "errors during the run");
            let cpu_us = cpu * 1e6 / g.requests as f64;
            direct.push(d);
            via.push((g, cpu_us));
        }
        let med = |f: &dyn Fn(&Round) -> f64, rounds: &[&Round]| {
            median(rounds.iter().map(|r| f(r)).collect())
        };
        let d: Vec<&Round> = direct.iter().collect();
        let g: Vec<&Round> = via.iter().map(|(r, _)| r).collect();
        let rps = |r: &Round| r.rps();
        let p50 = |r: &Round| r.p(0.5);
        let p99 = |r: &Round| r.p(0.99);
        let cpu_us = median(via.iter().map(|(_, c)| *c).collect());
        table.push(format!(
            "| {label} | {:.0} | {:.0} | {:.2} | {:.0} / {:.0} | {:.0} / {:.0} | +{:.0} / +{:.0} | {:.1} |",
            med(&rps, &d),
            med(&rps, &g),
            med(&rps, &g) / med(&rps, &d),
            med(&p50, &d),
            med(&p99, &d),
            med(&p50, &g),
            med(&p99, &g),
            med(&p50, &g) - med(&p50, &d),
            med(&p99, &g) - med(&p99, &d),
            cpu_us,
        ));
    }
    let _ = child.kill();
    let _ = child.wait();

    println!(
        "\nfirst light: GET {PATH} (~1 KiB JSON fixture), HTTP/1.1 keep-alive, plaintext both legs"
    );
    println!(
        "rounds: 3 x {seconds}s each, direct and gateway alternating; medians; gateway pinned: {pinned}\n"
    );
    println!(
        "| load | direct rps | gateway rps | ratio | direct p50/p99 µs | gateway p50/p99 µs | added p50/p99 µs | gateway CPU µs/req |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in table {
        println!("{row}");
    }
}
