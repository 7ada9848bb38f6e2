//! The catch-up sweep at 10 000 mailboxes against the stateful Exchange simulator, over
//! loopback, in one run:
//! A. the first round (every folder of every mailbox read once, nothing tracked: empty mailboxes);
//! B. a round with nothing new — its cost in Exchange requests per mailbox (goal ≤ 1);
//! C. messages delivered to random mailboxes with no client connected — the time until the
//!    sweep's decision about each, against the interval (goal: p99 ≤ interval + 30 s).
//!
//! `TRACKGATE_BENCH_SCALE` (default 1.0) scales the mailbox count; CI runs it at 0.01.
//! Results: bench/RESULTS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use trackgate::directory::model::{DirectoryDocument, Mailbox, SystemUser, UserSettings};
use trackgate::simulate::mailbox::{Delivery, Store};
use trackgate::simulate::{ExchangeSimulator, FixtureSet, SimulatorOptions};
use uuid::Uuid;

use common::{percentile, scale, until};

fn address(u: usize) -> String {
    format!("user{u}@contoso.example")
}

/// The embedded example plus `users` users tracking all email, each with a mailbox.
fn directory(users: usize) -> DirectoryDocument {
    let mut doc: DirectoryDocument =
        toml::from_str(trackgate::directory::file::EMBEDDED_EXAMPLE).unwrap();
    let user_id = |u: usize| Uuid::from_u128(0x1_0000_0000 + u as u128);
    for u in 0..users {
        doc.systemusers.push(SystemUser {
            systemuserid: user_id(u),
            fullname: Some(format!("User {u}")),
            internalemailaddress: Some(address(u)),
            domainname: Some(address(u)),
            ..SystemUser::default()
        });
        doc.usersettingscollection.push(UserSettings {
            systemuserid: user_id(u),
            incomingemailfilteringmethod: 0,
            ..UserSettings::default()
        });
        doc.mailboxes.push(Mailbox {
            mailboxid: Uuid::from_u128(0x2_0000_0000 + u as u128),
            emailaddress: address(u),
            regardingobjectid: trackgate::directory::model::Lookup::new("systemuser", user_id(u)),
            processemailreceivedafter: None,
            incomingemaildeliverymethod: 2,
            actdeliverymethod: 1,
            outgoingemaildeliverymethod: 2,
        });
    }
    doc
}

/// `trackgate_catchup_sweeps_total{result="ok"}` from the admin listener.
async fn sweeps_ok(admin: &str) -> u64 {
    let text = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(r#"trackgate_catchup_sweeps_total{result="ok"} "#))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    trackgate::tls::install_crypto_provider();
    let mailboxes = ((10_000.0 * scale()) as usize).max(20);
    let interval = Duration::from_secs(if mailboxes >= 1000 { 30 } else { 3 });
    // The example's mailboxes (Alex, Jo, Kim, the team) and the generated ones.
    let store = Arc::new(Store::embedded().unwrap());
    {
        let mut inner = store.lock();
        for u in 0..mailboxes {
            inner.add_mailbox(&address(u), &format!("User {u}"));
        }
    }
    let sim = ExchangeSimulator::start(
        "127.0.0.1:0".parse().unwrap(),
        SimulatorOptions::new("bench", FixtureSet::embedded().unwrap()).with_store(store.clone()),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let directory_file = dir.path().join("directory.json");
    let document = directory(mailboxes);
    let total = document.mailboxes.len() as u64;
    std::fs::write(&directory_file, serde_json::to_vec(&document).unwrap()).unwrap();
    let text = format!(
        "[listener]\naddress = \"127.0.0.1:0\"\nplaintext = true\n[admin]\naddress = \"127.0.0.1:0\"\n[upstreams]\news = \"{sim}\"\n[directory]\nfile = \"{file}\"\n[exchange]\news_url = \"{sim}/EWS/Exchange.asmx\"\nauth = \"basic\"\nusername = 'CONTOSO\\svc'\npassword = \"unused\"\n[catchup]\ninterval = \"{secs}s\"\nconcurrency = 8\n[storage]\ndata_dir = \"{data}\"\n",
        sim = sim.url(),
        file = directory_file.display(),
        secs = interval.as_secs(),
        data = dir.path().join("data").display(),
    );
    let config = trackgate::config::RawConfig::from_toml(&text, "bench", Vec::new())
        .and_then(|raw| raw.validate(dir.path()))
        .unwrap();
    let started = Instant::now();
    let gateway = trackgate::app::start(config).await.unwrap();
    let admin = gateway.admin_url();
    until("the first round", Duration::from_secs(600), async || {
        sweeps_ok(&admin).await >= total
    })
    .await;
    let first_round = started.elapsed();
    let first_requests = sim.stats().requests;

    // B: a round with nothing new.
    let (r0, s0) = (sim.stats().requests, sweeps_ok(&admin).await);
    until("a round with nothing new", interval * 4, async || {
        sweeps_ok(&admin).await >= s0 + total
    })
    .await;
    let (r1, s1) = (sim.stats().requests, sweeps_ok(&admin).await);
    let per_mailbox = (r1 - r0) as f64 / (s1 - s0) as f64;

    // C: mail with no client connected, found by the sweep: delivered together at a random
    // moment of the schedule, each timed until the sweep's decision about it.
    let finds = 20;
    let ids: Vec<String> = (0..finds)
        .map(|n| format!("find.{n}@outside.example"))
        .collect();
    let at = Instant::now();
    for (n, message_id) in ids.iter().enumerate() {
        let delivery = Delivery {
            from: "Someone <someone@outside.example>".into(),
            to: vec![address((n * 7919) % mailboxes)],
            cc: Vec::new(),
            subject: format!("Find me {n}"),
            body: String::new(),
            message_id: Some(format!("<{message_id}>")),
            in_reply_to: None,
            folder: None,
        };
        store.lock().deliver(&delivery.into_item()).unwrap();
    }
    let mut waits: Vec<f64> = Vec::new();
    let mut pending: Vec<&String> = ids.iter().collect();
    let deadline = Instant::now() + interval * 4 + Duration::from_secs(60);
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} messages never found",
            pending.len()
        );
        let decided = gateway.recent_decisions();
        pending.retain(|id| {
            let found = decided
                .iter()
                .any(|d| d.internet_message_id.as_deref() == Some(id.as_str()));
            if found {
                waits.push(at.elapsed().as_secs_f64());
            }
            !found
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    waits.sort_by(f64::total_cmp);
    println!(
        "catch-up: {total} mailboxes ({mailboxes} generated), interval {interval:?}, concurrency 8"
    );
    println!(
        "A first round: {:.1}s, {} Exchange requests ({:.2} per mailbox)",
        first_round.as_secs_f64(),
        first_requests,
        first_requests as f64 / total as f64
    );
    println!(
        "B round with nothing new: {:.2} Exchange requests per mailbox sweep ({} requests, {} sweeps)",
        per_mailbox,
        r1 - r0,
        s1 - s0
    );
    println!(
        "C time to find a missed message ({finds}): p50 {:.1}s, p99 {:.1}s, max {:.1}s (interval {:?}; goal p99 <= interval + 30 s)",
        percentile(&waits, 0.5),
        percentile(&waits, 0.99),
        waits.last().copied().unwrap_or(0.0),
        interval
    );
    gateway.shutdown().await;
    sim.stop().await;
}
