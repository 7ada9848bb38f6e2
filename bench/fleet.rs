//! The fleet outbox and mailbox ownership, measured side by side in one run (ratios):
//! 1. durable enqueue: decisions per second until the NATS stream acknowledged every one
//!    (one local nats-server, R1), against the redb outbox's group commit — goal ≥ 50 %;
//! 2. delivery to the Dataverse simulator from one shared stream: three delivery instances
//!    against one — goal ≥ 2.5×;
//! 3. ownership: seconds from a gateway's freeze until another holds its mailboxes, against
//!    the lease TTL — goal ≤ TTL + 2 s.
//!
//! Needs the nats-server `scripts/test.sh` installs (target/test-tools). `TRACKGATE_BENCH_SCALE`
//! (default 1.0) scales the record counts; CI runs it at 0.01. Results: bench/RESULTS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{count, delivery_to, scale};
use trackgate::fleet::{FleetMetrics, LeaseSettings, Leases};
use trackgate::outbox::nats::{NatsMetrics, NatsSettings, Role};
use trackgate::outbox::{NatsOutbox, Outbox, OutboxMetrics, OutboxSettings, RedbOutbox};
use trackgate::simulate::{DataverseOptions, DataverseSimulator};
use uuid::Uuid;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One JetStream server on a free loopback port, stopped when dropped.
struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats_server() -> Server {
    let tools = std::env::var_os("TRACKGATE_TEST_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-tools"));
    let binary = tools.join("py/bin/nats-server");
    assert!(binary.exists(), "{}: run scripts/test.sh", binary.display());
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server {
        child,
        url: format!("nats://127.0.0.1:{port}"),
        _dir: dir,
    }
}

/// CPU seconds (user + system) a process has used so far (`/proc/<pid>/stat`, 100 ticks/s).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // utime and stime are fields 14 and 15 of proc(5); counted from the state (field 3).
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// A rate and the CPU each record cost, in µs: this process, and the NATS server.
struct Measured {
    rate: f64,
    client_us: f64,
    server_us: f64,
}

fn settings(server: &Server, dir: &Path, name: &str) -> NatsSettings {
    let mut s = NatsSettings::local(&server.url, dir.join(format!("{name}-spool.redb")));
    s.instance = name.into();
    // What a gateway derives from delivery's 8 workers, one record per request.
    s.prefetch = 16;
    s
}

async fn open(settings: NatsSettings, deliver: bool) -> Arc<NatsOutbox> {
    let mut registry = prometheus_client::registry::Registry::default();
    Arc::new(
        NatsOutbox::open(
            settings,
            NatsMetrics::register(&mut registry),
            OutboxMetrics::register(&mut registry),
            Role::Gateway { deliver },
        )
        .await
        .unwrap(),
    )
}

fn submit_all(outbox: &dyn Outbox, round: usize, records: usize) -> f64 {
    let started = Instant::now();
    for n in 0..records {
        while !outbox.submit(&common::decision(
            &format!("fleet.{round}.{n}"),
            Uuid::from_u128(((round as u128) << 64) + n as u128 + 1),
        )) {
            std::thread::yield_now();
        }
    }
    outbox.flush().unwrap();
    records as f64 / started.elapsed().as_secs_f64()
}

fn redb_rate(round: usize, records: usize) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let outbox = RedbOutbox::open(
        &dir.path().join("outbox.redb"),
        OutboxSettings::default(),
        OutboxMetrics::register(&mut registry),
    )
    .unwrap();
    let cpu = cpu_seconds("self");
    let rate = submit_all(&outbox, round, records);
    Measured {
        rate,
        client_us: (cpu_seconds("self") - cpu) * 1e6 / records as f64,
        server_us: 0.0,
    }
}

async fn nats_rate(round: usize, records: usize) -> Measured {
    let server = nats_server();
    let dir = tempfile::tempdir().unwrap();
    let s = settings(&server, dir.path(), "publish");
    trackgate::outbox::nats::setup(&s).await.unwrap();
    let outbox = open(s, false).await;
    let pid = server.child.id().to_string();
    let (client, server_cpu) = (cpu_seconds("self"), cpu_seconds(&pid));
    let rate = tokio::task::spawn_blocking(move || submit_all(outbox.as_ref(), round, records))
        .await
        .unwrap();
    Measured {
        rate,
        client_us: (cpu_seconds("self") - client) * 1e6 / records as f64,
        server_us: (cpu_seconds(&pid) - server_cpu) * 1e6 / records as f64,
    }
}

/// Records per second from a full shared stream to the Dataverse simulator with `instances`
/// delivery instances (8 workers each), the simulator answering each request after
/// `crm_ms` (0: at once, so delivery is bound by this machine's CPU).
async fn delivery_rate(instances: usize, round: usize, records: usize, crm_ms: u64) -> f64 {
    let server = nats_server();
    let dir = tempfile::tempdir().unwrap();
    let s = settings(&server, dir.path(), "fill");
    trackgate::outbox::nats::setup(&s).await.unwrap();
    let filler = open(s, false).await;
    tokio::task::spawn_blocking(move || submit_all(filler.as_ref(), round, records))
        .await
        .unwrap();
    let dv = DataverseSimulator::start(
        "127.0.0.1:0".parse().unwrap(),
        DataverseOptions {
            seed: Some(toml::from_str(trackgate::directory::file::EMBEDDED_EXAMPLE).unwrap()),
            ..DataverseOptions::default()
        },
    )
    .await
    .unwrap();
    dv.set_faults(trackgate::simulate::DataverseFaults {
        stall_ms: crm_ms,
        ..Default::default()
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..instances {
        let outbox = open(settings(&server, dir.path(), &format!("d{i}")), true).await;
        tasks.push(delivery_to(outbox, &dv, 1).spawn(stopped.clone(), Duration::from_secs(10)));
    }
    while (dv.stats().created.get("emails").copied().unwrap_or(0) as usize) < records {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = records as f64 / started.elapsed().as_secs_f64();
    stop.send(true).unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(dv.stats().created["emails"] as usize, records);
    dv.stop().await;
    rate
}

/// Seconds from the freeze of one of two lease holders until the other holds every mailbox.
async fn ownership_move(ttl: Duration) -> f64 {
    let server = nats_server();
    let client = async_nats::connect(&server.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    trackgate::fleet::setup(&js, "trackgate_leases", ttl, 1)
        .await
        .unwrap();
    let leases = |name: &str| {
        let mut registry = prometheus_client::registry::Registry::default();
        Leases::open(
            &js,
            LeaseSettings {
                bucket: "trackgate_leases".into(),
                ttl,
                instance: name.into(),
            },
            FleetMetrics::register(&mut registry),
        )
    };
    let (a, b) = (leases("a").await.unwrap(), leases("b").await.unwrap());
    let mailboxes: Vec<String> = (0..100)
        .map(|i| format!("user{i}@contoso.example"))
        .collect();
    while a.held_count() + b.held_count() < mailboxes.len() || a.held_count() == 0 {
        a.round(&mailboxes).await.unwrap();
        b.round(&mailboxes).await.unwrap();
    }
    // a freezes; b goes on renewing at its own pace (a third of the TTL).
    let frozen = Instant::now();
    while b.held_count() < mailboxes.len() {
        b.round(&mailboxes).await.unwrap();
        if b.held_count() < mailboxes.len() {
            tokio::time::sleep(ttl / 3).await;
        }
    }
    frozen.elapsed().as_secs_f64()
}

/// `TRACKGATE_BENCH_PHASES` (default all): `enqueue`, `delivery`, `ownership`, comma-separated.
fn phase(name: &str) -> bool {
    std::env::var("TRACKGATE_BENCH_PHASES")
        .map(|p| p.split(',').any(|x| x.trim() == name))
        .unwrap_or(true)
}

fn main() {
    trackgate::tls::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("fleet bench (scale {}):", scale());
    if phase("enqueue") {
        enqueue_phase(&runtime);
    }
    if phase("delivery") {
        delivery_phase(&runtime);
    }
    if phase("ownership") {
        let ttl = Duration::from_secs(3);
        let mut moves: Vec<f64> = (0..3)
            .map(|_| runtime.block_on(ownership_move(ttl)))
            .collect();
        let m = median(&mut moves);
        println!(
            "  ownership moved after a freeze:            {m:>10.1} s (TTL {} s; goal <= TTL + 2 s)",
            ttl.as_secs()
        );
    }
}

fn enqueue_phase(runtime: &tokio::runtime::Runtime) {
    let enqueue_n = count(100_000.0);
    let (mut redb, mut nats) = (Vec::new(), Vec::new());
    for round in 0..3 {
        redb.push(redb_rate(round, enqueue_n));
        nats.push(runtime.block_on(nats_rate(round, enqueue_n)));
    }
    let by_rate = |v: &mut Vec<Measured>| {
        v.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        v.swap_remove(v.len() / 2)
    };
    let (redb, nats) = (by_rate(&mut redb), by_rate(&mut nats));
    let (r, n) = (redb.rate, nats.rate);
    println!(
        "  durable enqueue, redb group commit:        {r:>10.0} records/s ({enqueue_n} records)"
    );
    println!("  durable enqueue, NATS publish + ack (R1):  {n:>10.0} records/s");
    println!(
        "  NATS / redb:                               {:>10.2}  (goal >= 0.50)",
        n / r
    );
    println!(
        "  CPU per record: redb {:.1} µs (this process); NATS {:.1} µs here + {:.1} µs in nats-server",
        redb.client_us, nats.client_us, nats.server_us
    );
}

/// The CRM answering at once (delivery bound by this machine's two cores, which every
/// instance shares here), and at 50 ms a call (what a Dataverse create takes: delivery bound by
/// the CRM's latency, as in production).
fn delivery_phase(runtime: &tokio::runtime::Runtime) {
    for (crm_ms, records) in [(0, count(10_000.0)), (50, count(2_000.0))] {
        let (mut one, mut three) = (Vec::new(), Vec::new());
        for round in 0..3 {
            let base = 10 * (1 + crm_ms as usize) + round;
            one.push(runtime.block_on(delivery_rate(1, base, records, crm_ms)));
            three.push(runtime.block_on(delivery_rate(3, base + 5, records, crm_ms)));
        }
        let (o, t) = (median(&mut one), median(&mut three));
        println!(
            "  delivery, CRM at {crm_ms:>2} ms, one instance:    {o:>8.0} records/s ({records} records, 8 workers each)"
        );
        println!("  delivery, CRM at {crm_ms:>2} ms, three instances: {t:>8.0} records/s");
        println!(
            "  three / one:                                 {:>8.2}  (goal >= 2.5)",
            t / o
        );
    }
}
