//! The crash window, in a release build: sends answered by the gateway whose track decision
//! had not been committed to the outbox when the process was killed (SIGKILL: no drain, no
//! flush), and where those decisions were at that instant (copies dropped because inspection
//! was behind count too: they have no decision either; catch-up finds both).
//!
//! Each round starts a fresh gateway (`trackgate serve`, this build's binary) in front of the
//! Exchange simulator, delivering to the Dataverse simulator (both in this process, over
//! loopback), sends messages from Alex to a contact — every one a track decision — `clients`
//! at a time, reads the gateway's metrics, kills it at once, and then reads what its outbox
//! file holds (`trackgate outbox stats`). The window is answered sends minus committed
//! decisions; the metrics read just before the kill split it into copies still queued for
//! inspection and decisions still waiting for the writer (they move on during the read, a
//! few milliseconds: the split is approximate, the window is exact).
//!
//! `TRACKGATE_BENCH_ROUNDS` (default 3) rounds per row; `TRACKGATE_BENCH_SECONDS` (default 3)
//! of sending before the kill, after the first answer. Results: bench/RESULTS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use trackgate::directory::model::DirectoryDocument;
use trackgate::simulate::{
    DataverseOptions, DataverseSimulator, ExchangeSimulator, FixtureSet, SimulatorOptions,
};

const CLIENT_ID: &str = "trackgate-bench";
const CLIENT_SECRET: &str = "bench-secret-0123456789";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A CreateItem that sends a MIME message from Alex to Pat (a contact): one track decision.
fn send_body(round: usize, n: usize) -> String {
    use base64::Engine as _;
    let mime = format!(
        "From: Alex Seller <alex.seller@contoso.example>\r\nTo: \"Buyer, Pat\" <pat.buyer@fabrikam.example>\r\nSubject: Crash window {n}\r\nMessage-ID: <window.{round}.{n}.{}@mail.contoso.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello {n}\r\n",
        std::process::id()
    );
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Body><m:CreateItem MessageDisposition="SendAndSaveCopy"><m:SavedItemFolderId><t:DistinguishedFolderId Id="sentitems"/></m:SavedItemFolderId><m:Items><t:Message><t:MimeContent CharacterSet="UTF-8">{}</t:MimeContent></t:Message></m:Items></m:CreateItem></s:Body></s:Envelope>"#,
        base64::engine::general_purpose::STANDARD.encode(mime)
    )
}

fn write_config(dir: &Path, exchange: &str, dv: &DataverseSimulator) -> PathBuf {
    let path = dir.join("trackgate.toml");
    let text = format!(
        "[listener]\naddress = \"127.0.0.1:0\"\nplaintext = true\n[admin]\naddress = \"127.0.0.1:0\"\n[upstreams]\news = \"{exchange}\"\n[crm]\nsink = \"dataverse\"\n[crm.dataverse]\nurl = \"{url}\"\ntoken_url = \"{token}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n[delivery]\nconcurrency = 16\n[storage]\ndata_dir = \"{data}\"\n",
        url = dv.url(),
        token = dv.token_url(),
        data = dir.join("data").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

struct Gateway {
    child: Child,
    proxy: String,
    admin: String,
}

fn start_gateway(config: &Path) -> Gateway {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trackgate"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines
        .find_map(|l| l.ok().filter(|l| l.starts_with("trackgate ready ")))
        .expect("the gateway's ready line");
    // Keep reading: a closed pipe would end the gateway at its next line.
    std::thread::spawn(move || lines.for_each(drop));
    let field = |key: &str| {
        ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap()
            .to_owned()
    };
    Gateway {
        proxy: field("proxy="),
        admin: field("admin="),
        child,
    }
}

/// The sum of a metric's samples whose line starts with `prefix` (name and any labels).
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Where the answered sends were just before the kill.
#[derive(Default, Clone, Copy)]
struct Split {
    /// Copies handed to inspection and not inspected yet.
    inspection: f64,
    /// Track decisions made and not yet through the writer's commit.
    writer: f64,
    /// Copies dropped because inspection was behind (their mailboxes marked for catch-up).
    dropped: f64,
}

fn split(metrics: &str) -> Split {
    let handed = metric(metrics, "trackgate_captures_handed_off_total");
    let inspected = metric(metrics, "trackgate_inspected_exchanges_total");
    let tracked = metric(metrics, "trackgate_decisions_total{verdict=\"track\"");
    let through = metric(metrics, "trackgate_outbox_enqueued_total");
    Split {
        inspection: (handed - inspected).max(0.0),
        writer: (tracked - through).max(0.0),
        dropped: metric(metrics, "trackgate_captures_dropped_total"),
    }
}

struct Round {
    answered: usize,
    committed: usize,
    rate: f64,
    split: Split,
}

async fn round(
    exchange: &str,
    dv: &DataverseSimulator,
    clients: usize,
    seconds: f64,
    round: usize,
) -> Round {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), exchange, dv);
    let mut gateway = start_gateway(&config);
    let http = reqwest::Client::new();
    let answered = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (http, url, answered, next) = (
                http.clone(),
                format!("{}/EWS/Exchange.asmx", gateway.proxy),
                answered.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Ok(r) = http
                        .post(&url)
                        .header("content-type", "text/xml; charset=utf-8")
                        .header("x-anchormailbox", "alex.seller@contoso.example")
                        .body(send_body(round, n))
                        .send()
                        .await
                    else {
                        return;
                    };
                    let status = r.status();
                    match r.bytes().await {
                        Ok(body) => assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body)),
                        Err(_) => return,
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "a first answer within a minute");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    let before = answered.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let metrics = http
        .get(format!("{}/metrics", gateway.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let during = answered.load(Ordering::Relaxed) - before;
    for t in tasks {
        t.await.unwrap();
    }
    let answered = answered.load(Ordering::Relaxed);
    let stats = Command::new(env!("CARGO_BIN_EXE_trackgate"))
        .args(["outbox", "stats", "--config"])
        .arg(&config)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let committed = stats["pending"].as_u64().unwrap() + stats["delivered_keys"].as_u64().unwrap();
    Round {
        answered,
        committed: committed as usize,
        rate: during as f64 / elapsed,
        split: split(&metrics),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds = env_or("TRACKGATE_BENCH_ROUNDS", 3).max(1);
    let seconds = std::env::var("TRACKGATE_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0);
    trackgate::tls::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let exchange = ExchangeSimulator::start(
            "127.0.0.1:0".parse().unwrap(),
            SimulatorOptions::new("bench", FixtureSet::embedded().unwrap()),
        )
        .await
        .unwrap();
        let seed: DirectoryDocument =
            toml::from_str(trackgate::directory::file::EMBEDDED_EXAMPLE).unwrap();
        let dv = DataverseSimulator::start(
            "127.0.0.1:0".parse().unwrap(),
            DataverseOptions {
                credentials: Some((CLIENT_ID.into(), CLIENT_SECRET.into())),
                seed: Some(seed),
                ..DataverseOptions::default()
            },
        )
        .await
        .unwrap();
        println!(
            "crash window: {rounds} rounds per row, killed after {seconds} s of sending; medians (min–max)"
        );
        println!(
            "| clients | answered sends/s | answered at the kill | not committed | share | as traffic time | queued for inspection | waiting for the writer | copies dropped |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for clients in [1, 4, 16] {
            let mut all = Vec::new();
            for r in 0..rounds {
                all.push(round(&exchange.url(), &dv, clients, seconds, clients * 100 + r).await);
            }
            let lost: Vec<f64> = all
                .iter()
                .map(|r| r.answered.saturating_sub(r.committed) as f64)
                .collect();
            let range = |v: &[f64]| {
                let (lo, hi) = v.iter().fold((f64::MAX, 0.0f64), |(lo, hi), x| {
                    (lo.min(*x), hi.max(*x))
                });
                format!("{} ({lo:.0}–{hi:.0})", median(v.to_vec()))
            };
            let share: Vec<f64> = all
                .iter()
                .zip(&lost)
                .map(|(r, l)| 100.0 * l / r.answered.max(1) as f64)
                .collect();
            let traffic_ms: Vec<f64> = all
                .iter()
                .zip(&lost)
                .map(|(r, l)| 1000.0 * l / r.rate.max(1.0))
                .collect();
            println!(
                "| {clients} | {:.0} | {:.0} | {} | {:.1} % | {:.0} ms | {:.0} | {:.0} | {:.0} |",
                median(all.iter().map(|r| r.rate).collect()),
                median(all.iter().map(|r| r.answered as f64).collect()),
                range(&lost),
                median(share),
                median(traffic_ms),
                median(all.iter().map(|r| r.split.inspection).collect()),
                median(all.iter().map(|r| r.split.writer).collect()),
                median(all.iter().map(|r| r.split.dropped).collect()),
            );
        }
    });
}
