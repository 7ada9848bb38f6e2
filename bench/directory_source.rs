//! The Dataverse directory source at 1 M records, side by side in one run (ratios, not
//! absolutes: these machines are shared):
//! A. the file source: the same directory read from a JSON file (parse, validate, index);
//! B. the Dataverse source's initial load from the Dataverse simulator over loopback (paged by
//!    5000, change tracking asked for), persisted to the replica and indexed;
//! C. a refresh with nothing changed (one delta request per table);
//! D. a restart from the persisted replica (what an outage start serves).
//! Reports load times, the live heap each leaves (the Dataverse source keeps its typed rows
//! besides the snapshot), the replica's size, and the ratios B/A and D/A.
//!
//! The simulator runs as a child process (`trackgate simulate dataverse`) so its memory is not
//! counted. `TRACKGATE_BENCH_SCALE` (default 1.0) scales the record count; CI runs it at 0.01.
//! Results: bench/RESULTS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use trackgate::directory::FileSource;
use trackgate::directory::dataverse::{DataverseSource, DataverseSourceSettings, OfflineFilter};
use trackgate::directory::model::{
    Account, Contact, DirectoryDocument, Lead, Mailbox, SystemUser, UserSettings,
};
use uuid::Uuid;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn scale() -> f64 {
    std::env::var("TRACKGATE_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0)
}

/// The embedded example plus `users` users (with options and mailboxes) and `records`
/// contacts, accounts and leads (6:2:2), owned round-robin by the users.
fn document(users: usize, records: usize) -> DirectoryDocument {
    let mut doc: DirectoryDocument =
        toml::from_str(trackgate::directory::file::EMBEDDED_EXAMPLE).unwrap();
    let user_id = |u: usize| Uuid::from_u128(0x1_0000_0000 + u as u128);
    for u in 0..users {
        let address = format!("user{u}@contoso.example");
        doc.systemusers.push(SystemUser {
            systemuserid: user_id(u),
            fullname: Some(format!("User {u}")),
            internalemailaddress: Some(address.clone()),
            domainname: Some(address.clone()),
            ..SystemUser::default()
        });
        doc.usersettingscollection.push(UserSettings {
            systemuserid: user_id(u),
            incomingemailfilteringmethod: (u % 4) as u8,
            ..UserSettings::default()
        });
        doc.mailboxes.push(Mailbox {
            mailboxid: Uuid::from_u128(0x2_0000_0000 + u as u128),
            emailaddress: address,
            regardingobjectid: trackgate::directory::model::Lookup::new("systemuser", user_id(u)),
            processemailreceivedafter: None,
            incomingemaildeliverymethod: 2,
            actdeliverymethod: 1,
            outgoingemaildeliverymethod: 2,
        });
    }
    for r in 0..records {
        let id = Uuid::from_u128(0x3_0000_0000 + r as u128);
        let owner = Some(user_id(r % users));
        let address = Some(format!("person{r}@customer{}.example", r % 5000));
        let createdon = Some("2025-01-01T00:00:00Z".to_owned());
        match r % 10 {
            0..=5 => doc.contacts.push(Contact {
                contactid: id,
                fullname: Some(format!("Person {r}")),
                emailaddress1: address,
                ownerid: owner,
                createdon,
                ..Contact::default()
            }),
            6 | 7 => doc.accounts.push(Account {
                accountid: id,
                name: Some(format!("Customer {r}")),
                emailaddress1: address,
                ownerid: owner,
                createdon,
                ..Account::default()
            }),
            _ => doc.leads.push(Lead {
                leadid: id,
                fullname: Some(format!("Prospect {r}")),
                emailaddress1: address,
                ownerid: owner,
                createdon,
                ..Lead::default()
            }),
        }
    }
    doc
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

fn live_heap(region: &Region<'_, System>) -> f64 {
    let c = region.change();
    c.bytes_allocated as f64 - c.bytes_deallocated as f64
}

fn settings(url: &str, replica: &std::path::Path) -> DataverseSourceSettings {
    DataverseSourceSettings {
        url: url.to_owned(),
        api_path: "/api/data/v9.2".into(),
        credentials: None,
        page_size: 5000,
        refresh_interval: None,
        at_least_every: None,
        request_timeout: Duration::from_secs(300),
        emails_window: Duration::from_secs(30 * 86_400),
        // Keep everything, so the restart is the whole directory.
        offline_filters: ["contacts", "accounts", "leads", "emails"]
            .into_iter()
            .map(|s| (s.to_owned(), OfflineFilter::All))
            .collect::<HashMap<_, _>>(),
        other_tables: Vec::new(),
        replica_file: replica.to_owned(),
        max_rows: 10_000_000,
        directory: Default::default(),
    }
}

fn main() {
    trackgate::tls::install_crypto_provider();
    // The source's own timing line (fetch, persist, build) for each refresh.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("trackgate=info")
        .init();
    let records = ((1_000_000.0 * scale()) as usize).max(1000);
    let users = (records / 1000).max(10);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("directory.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&document(users, records)).unwrap(),
    )
    .unwrap();
    println!(
        "directory: {users} users, {records} records, file {:.0} MiB",
        mib(std::fs::metadata(&file).unwrap().len() as f64)
    );

    // The simulator in its own process, seeded from the same file.
    let mut child = Command::new(env!("CARGO_BIN_EXE_trackgate"))
        .args([
            "simulate",
            "dataverse",
            "--listen",
            "127.0.0.1:0",
            "--directory",
        ])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("url="))
        .expect("the simulator's ready line")
        .to_owned();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Built before any measurement: its TLS roots are not the directory's memory.
    let http = reqwest::Client::new();

    // A: the file source.
    let region = Region::new(GLOBAL);
    let start = Instant::now();
    let from_file = FileSource {
        path: Some(file.clone()),
        max_size: u64::MAX,
        settings: Default::default(),
    }
    .load()
    .unwrap();
    let a_time = start.elapsed().as_secs_f64();
    let a_heap = live_heap(&region);
    println!(
        "A file source: loaded in {a_time:.2}s, live heap {:.0} MiB ({:?})",
        mib(a_heap),
        from_file.counts()
    );
    drop(from_file);

    // B: the Dataverse source's initial load, then C: a refresh with nothing changed.
    let replica = dir.path().join("replica.redb");
    let region = Region::new(GLOBAL);
    let start = Instant::now();
    let (source, _) = DataverseSource::open(http.clone(), settings(&url, &replica)).unwrap();
    let loaded = runtime
        .block_on(source.refresh())
        .unwrap()
        .expect("a first load");
    let b_time = start.elapsed().as_secs_f64();
    let b_heap = live_heap(&region);
    println!(
        "B Dataverse source, initial load: {b_time:.2}s, live heap {:.0} MiB (encoded rows + snapshot) ({:?})",
        mib(b_heap),
        loaded.counts()
    );
    drop(loaded);
    let start = Instant::now();
    let again = runtime.block_on(source.refresh()).unwrap();
    let c_time = start.elapsed().as_secs_f64();
    assert!(again.is_none(), "nothing changed, so no new snapshot");
    println!("C refresh with nothing changed (deltas, no rebuild): {c_time:.3}s");
    drop(again);
    drop(source);
    let replica_size = std::fs::metadata(&replica).unwrap().len() as f64;

    // D: a restart from the replica.
    let region = Region::new(GLOBAL);
    let start = Instant::now();
    let (source, restored) = DataverseSource::open(http.clone(), settings(&url, &replica)).unwrap();
    let restored = restored.expect("a replica");
    let d_time = start.elapsed().as_secs_f64();
    let d_heap = live_heap(&region);
    println!(
        "D restart from the replica: {d_time:.2}s, live heap {:.0} MiB ({:?}); replica file {:.0} MiB ({:.0} bytes per record)",
        mib(d_heap),
        restored.counts(),
        mib(replica_size),
        replica_size / records as f64
    );
    drop((source, restored));
    println!(
        "ratios: initial load B/A time {:.2}x, heap {:.2}x; restart D/A time {:.2}x; no-change refresh C/B {:.3}x",
        b_time / a_time,
        b_heap / a_heap,
        d_time / a_time,
        c_time / b_time
    );
    let cpu = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
    let ticks: Vec<u64> = cpu
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse().ok())
        .collect();
    println!(
        "simulator CPU (seeding and answering): {:.1}s",
        ticks.iter().sum::<u64>() as f64 / 100.0
    );
    let _ = child.kill();
    let _ = child.wait();
}
