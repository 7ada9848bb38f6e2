//! The outbox and delivery, measured side by side in one run (ratios, not absolutes: these
//! machines are shared):
//! 1. durable enqueue: records per second with group commit (512 per fsync or 5 ms) against
//!    one commit per record — the goal is ≥ 50 k records/s with group commit;
//! 2. delivery to the Dataverse simulator over loopback: records per second with plain
//!    requests against `$batch` (10 per batch), 8 workers;
//! 3. the outbox file size after N records delivered (delivered ids are remembered for the
//!    window), scaled to bytes per million.
//!
//! `TRACKGATE_BENCH_SCALE` (default 1.0) scales the record counts; CI runs it at 0.01.
//! Results: bench/RESULTS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{count, delivery_to, scale};
use trackgate::outbox::{Outbox, OutboxMetrics, OutboxSettings, RedbOutbox};
use trackgate::rules::Decision;
use trackgate::simulate::{DataverseOptions, DataverseSimulator};
use uuid::Uuid;

/// The bench's record `n` (the shared realistic shape).
fn decision(n: usize) -> Decision {
    common::decision(
        &format!("bench.{n}"),
        Uuid::from_u128(0xbe0c_0000_0000_0000 + n as u128),
    )
}

fn open(dir: &std::path::Path, group_records: usize) -> Arc<RedbOutbox> {
    let mut registry = prometheus_client::registry::Registry::default();
    Arc::new(
        RedbOutbox::open(
            &dir.join("outbox.redb"),
            OutboxSettings {
                group_records,
                ..OutboxSettings::default()
            },
            OutboxMetrics::register(&mut registry),
        )
        .unwrap(),
    )
}

/// Records per second until every submitted record is committed.
fn enqueue_rate(group_records: usize, records: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path(), group_records);
    let decisions: Vec<Decision> = (0..records).map(decision).collect();
    let started = Instant::now();
    for d in decisions {
        while !outbox.submit(&d) {
            std::thread::yield_now();
        }
    }
    outbox.flush().unwrap();
    let rate = records as f64 / started.elapsed().as_secs_f64();
    assert_eq!(outbox.stats().unwrap().pending as usize, records);
    rate
}

/// Records per second from a full outbox to the Dataverse simulator (`steady` false), or the
/// outbox file size after records flowed through at the sink's pace with a backlog of at most
/// a thousand (`steady` true: the file size per delivered record in normal operation).
async fn delivery_rate(batch_size: usize, records: usize, steady: bool) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path(), 512);
    if !steady {
        for n in 0..records {
            while !outbox.submit(&decision(n)) {
                std::thread::yield_now();
            }
        }
        outbox.flush().unwrap();
    }
    let dv = DataverseSimulator::start(
        "127.0.0.1:0".parse().unwrap(),
        DataverseOptions {
            seed: Some(toml::from_str(trackgate::directory::file::EMBEDDED_EXAMPLE).unwrap()),
            ..DataverseOptions::default()
        },
    )
    .await
    .unwrap();
    let delivery = delivery_to(outbox.clone(), &dv, batch_size);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let task = delivery.spawn(stopped, Duration::from_secs(10));
    if steady {
        for n in 0..records {
            while outbox.stats().unwrap().pending > 1000 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            while !outbox.submit(&decision(n)) {
                tokio::task::yield_now().await;
            }
        }
    }
    loop {
        let s = outbox.stats().unwrap();
        if s.pending == 0 && s.delivered_keys as usize == records {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = records as f64 / started.elapsed().as_secs_f64();
    stop.send(true).unwrap();
    task.await.unwrap();
    let mut bytes = outbox.stats().unwrap().file_bytes;
    assert_eq!(dv.stats().created["emails"] as usize, records);
    dv.stop().await;
    if steady {
        // What the file keeps: reopened (and so compacted), it holds the delivered-id window.
        outbox.flush().unwrap();
        drop(delivery);
        drop(outbox);
        let reopened = loop {
            let mut registry = prometheus_client::registry::Registry::default();
            match RedbOutbox::open(
                &dir.path().join("outbox.redb"),
                OutboxSettings::default(),
                OutboxMetrics::register(&mut registry),
            ) {
                Ok(o) => break o,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let stats = reopened.stats().unwrap();
        assert_eq!(stats.delivered_keys as usize, records);
        bytes = stats.file_bytes;
    }
    (rate, bytes)
}

fn main() {
    trackgate::tls::install_crypto_provider();
    let grouped_n = count(200_000.0);
    let single_n = count(5_000.0);
    let delivered_n = count(20_000.0);
    println!("outbox bench (scale {}):", scale());
    // Interleaved rounds: A B A B, medians.
    let mut grouped = Vec::new();
    let mut single = Vec::new();
    for _ in 0..3 {
        grouped.push(enqueue_rate(512, grouped_n));
        single.push(enqueue_rate(1, single_n));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (g, s) = (median(&mut grouped), median(&mut single));
    println!(
        "  durable enqueue, group commit (512 / 5 ms): {g:>10.0} records/s ({grouped_n} records)"
    );
    println!(
        "  durable enqueue, one commit per record:     {s:>10.0} records/s ({single_n} records)"
    );
    println!(
        "  group commit / one per record:              {:>10.1}x",
        g / s
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut plain = Vec::new();
    let mut batched = Vec::new();
    let mut backlog_size = 0;
    for _ in 0..3 {
        let (rate, bytes) = runtime.block_on(delivery_rate(1, delivered_n, false));
        plain.push(rate);
        backlog_size = bytes;
        batched.push(runtime.block_on(delivery_rate(10, delivered_n, false)).0);
    }
    let steady_n = count(100_000.0);
    let (_, size) = runtime.block_on(delivery_rate(10, steady_n, true));
    let (p, b) = (median(&mut plain), median(&mut batched));
    println!(
        "  delivery to the simulator, plain requests:  {p:>10.0} records/s ({delivered_n} records, 8 workers)"
    );
    println!("  delivery to the simulator, $batch of 10:    {b:>10.0} records/s");
    println!(
        "  $batch / plain:                             {:>10.1}x",
        b / p
    );
    println!(
        "  outbox file after a backlog of {delivered_n} drained: {} KiB (the high-water mark; compacted at the next start)",
        backlog_size / 1024
    );
    println!(
        "  outbox file after {steady_n} delivered, reopened (compacted): {} KiB = {:.0} MiB per million delivered (the delivered-id window)",
        size / 1024,
        size as f64 / steady_n as f64 * 1e6 / (1 << 20) as f64
    );
}
