//! The rules at scale: a directory of 100 k users (each with a mailbox, options and 25 folder
//! rules), 1 M CRM records and 100 k tracked emails. Reports, in one run: the directory's load
//! time and heap (live bytes, counted by an instrumented allocator) and process RSS; decisions
//! per second on one core for a realistic mix (criterion); the latency distribution of single
//! decisions (p50/p99/p99.9 from an HdrHistogram); and the same latencies while another thread
//! swaps directory snapshots every 10 ms (readers never lock). Results: bench/RESULTS.md.
//!
//! `TRACKGATE_BENCH_SCALE` (default 1.0) scales the directory, for a quick smoke run in CI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput};
use hdrhistogram::Histogram;
use stats_alloc::{Region, StatsAlloc};
use trackgate::directory::model::*;
use trackgate::directory::{Directory, DirectoryHandle};
use trackgate::inspect::{Address, Message, Observation, Origin, Source};
use trackgate::rules::{Engine, MemoryLimits, Mode, RulesLimits};
use uuid::Uuid;

/// The gateway's allocator (mimalloc, as `main.rs` installs it), counted: time figures are
/// what the gateway pays, and allocations are counted as before.
#[global_allocator]
static GLOBAL: StatsAlloc<mimalloc::MiMalloc> = StatsAlloc::new(mimalloc::MiMalloc);

/// Decide without remembering or explaining: the cost of the decision itself.
const PURE: Mode = Mode {
    remember: false,
    explain: false,
};

struct Scale {
    users: usize,
    records: usize,
    rules_per_user: usize,
    tracked: usize,
}

fn scale() -> Scale {
    let f: f64 = std::env::var("TRACKGATE_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let n = |base: f64| ((base * f) as usize).max(10);
    Scale {
        users: n(100_000.0),
        records: n(1_000_000.0),
        rules_per_user: 25,
        tracked: n(100_000.0),
    }
}

fn uid(kind: u128, i: usize) -> Uuid {
    Uuid::from_u128((kind << 64) | i as u128)
}

fn user_address(u: usize) -> String {
    format!("user{u}@corp.example")
}

fn record_address(r: usize) -> String {
    format!("person{r}@customer{}.example", r % 5000)
}

fn folder_id(u: usize, f: usize) -> String {
    format!("AAMkADEzFolder{u:07}x{f:02}AAA=")
}

fn document(s: &Scale) -> DirectoryDocument {
    let mut doc = DirectoryDocument {
        organization: Organization {
            organizationid: Uuid::from_u128(0xc0de),
            ..Default::default()
        },
        ..Default::default()
    };
    doc.organization
        .orgdborgsettings
        .auto_track_sent_folder_items = true;
    for u in 0..s.users {
        doc.systemusers.push(SystemUser {
            systemuserid: uid(1, u),
            fullname: Some(format!("User {u}")),
            internalemailaddress: Some(user_address(u)),
            domainname: Some(user_address(u)),
            ..Default::default()
        });
        doc.usersettingscollection.push(UserSettings {
            systemuserid: uid(1, u),
            incomingemailfilteringmethod: (u % 4) as u8,
            autocreatecontactonpromote: (u % 3) as u8,
            addressbookcontactmatching: Some(ContactMatching::All),
            addressbookothermatching: Some(OtherMatching::All),
            ..Default::default()
        });
        doc.mailboxes.push(Mailbox {
            mailboxid: uid(2, u),
            emailaddress: user_address(u),
            regardingobjectid: Lookup {
                entity: "systemuser".into(),
                id: uid(1, u),
            },
            processemailreceivedafter: None,
            incomingemaildeliverymethod: 2,
            actdeliverymethod: 1,
            outgoingemaildeliverymethod: 2,
        });
        for f in 0..s.rules_per_user {
            doc.mailboxtrackingfolders.push(MailboxTrackingFolder {
                mailboxtrackingfolderid: None,
                mailboxid: uid(2, u),
                exchangefolderid: folder_id(u, f),
                exchangefoldername: Some(format!("Deal {f}")),
                regardingobjectid: (f % 2 == 0).then(|| Lookup {
                    entity: "account".into(),
                    id: uid(4, f),
                }),
            });
        }
    }
    for r in 0..s.records {
        let owner = Some(uid(1, r % s.users));
        let created = Some("2025-01-01T00:00:00Z".to_owned());
        match r % 5 {
            0..=2 => doc.contacts.push(Contact {
                contactid: uid(3, r),
                emailaddress1: Some(record_address(r)),
                ownerid: owner,
                createdon: created,
                ..Default::default()
            }),
            3 => doc.accounts.push(Account {
                accountid: uid(4, r),
                emailaddress1: Some(record_address(r)),
                ownerid: owner,
                createdon: created,
                ..Default::default()
            }),
            _ => doc.leads.push(Lead {
                leadid: uid(5, r),
                emailaddress1: Some(record_address(r)),
                ownerid: owner,
                createdon: created,
                ..Default::default()
            }),
        }
    }
    for t in 0..s.tracked {
        doc.emails.push(TrackedEmail {
            activityid: uid(6, t),
            messageid: Some(format!("<tracked{t}@corp.example>")),
            trackingtoken: Some(format!("CRM:0{:03}{:03}", t % 1000, t % 997)),
            ..Default::default()
        });
    }
    doc
}

fn address(a: String) -> Address {
    Address {
        name: None,
        address: Some(a.into()),
        routing_type: Some("SMTP".into()),
    }
}

/// A realistic mix: inbox mail from known and unknown senders, replies, mail in tracked
/// folders, sent mail, mailboxes the directory does not know.
fn observations(s: &Scale, n: usize) -> Vec<Observation> {
    observations_from(s, 0, n)
}

/// The same mix as [`observations`], with item ids, Message-IDs and subjects numbered from
/// `first`: messages the engine has not seen (the mix of senders, folders and mailboxes is
/// that of the first `n`).
fn observations_from(s: &Scale, first: usize, n: usize) -> Vec<Observation> {
    (0..n)
        .map(|i| {
            let fresh = first + i;
            let u = (i * 7919) % s.users;
            let kind = i % 20;
            let mailbox = if kind == 19 {
                "stranger@elsewhere.example".to_owned()
            } else {
                user_address(u)
            };
            let mut m = Message {
                item_id: Some(format!("AAMkADEzItem{fresh:08}AAA=").into()),
                folder: Some("inbox".into()),
                internet_message_id: Some(format!("m{fresh}@mail.example").into()),
                subject: Some(format!("Quote {fresh} for 40 seats").into()),
                from: Some(address(record_address((i * 104_729) % s.records))),
                to: vec![
                    address(user_address(u)),
                    address(record_address(i % s.records)),
                ],
                received_at: Some("2026-11-20T10:00:00Z".into()),
                item_class: Some("IPM.Note".into()),
                ..Default::default()
            };
            match kind {
                0..=7 => {}
                8..=11 => m.from = Some(address(format!("nobody{fresh}@unknown.example"))),
                12..=13 => {
                    m.in_reply_to = Some(format!("tracked{}@corp.example", i % s.tracked).into())
                }
                14..=16 => {
                    m.folder = None;
                    m.folder_id = Some(folder_id(u, i % s.rules_per_user).into());
                }
                _ => {
                    m.folder = Some("sentitems".into());
                    m.from = Some(address(user_address(u)));
                }
            }
            Observation::MessageSeen {
                origin: Origin {
                    mailbox: Some(mailbox.into()),
                    source: Source::Ews,
                    operation: "GetItem".into(),
                },
                message: m.into(),
                initial_sync: false,
            }
        })
        .collect()
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn latencies(engine: &Engine, obs: &[Observation], rounds: usize) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for _ in 0..rounds {
        for o in obs {
            let start = Instant::now();
            let d = engine.decide(o, PURE);
            let ns = start.elapsed().as_nanos() as u64;
            std::hint::black_box(d);
            h.record(ns.max(1)).unwrap();
        }
    }
    h
}

fn print_histogram(label: &str, h: &Histogram<u64>) {
    println!(
        "{label}: n={} p50={:.2}µs p99={:.2}µs p99.9={:.2}µs max={:.1}µs",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

/// Nanoseconds per call of `f` over `n` calls.
fn per_call(n: usize, mut f: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// Heap allocations and bytes per decision over `obs` in `mode`, counted by the instrumented
/// allocator.
fn allocations_per_decision(engine: &Engine, obs: &[&Observation], mode: Mode) -> (f64, f64) {
    let region = Region::new(&GLOBAL);
    for o in obs {
        std::hint::black_box(engine.decide(o, mode));
    }
    let a = region.change();
    let n = obs.len().max(1) as f64;
    (a.allocations as f64 / n, a.bytes_allocated as f64 / n)
}

fn parts(handle: &DirectoryHandle, engine: &Engine, obs: &[Observation], s: &Scale) {
    use trackgate::rules::decision::{Direction, email_id};
    let dir = handle.load();
    let n = 200_000;
    let users: Vec<String> = (0..1000)
        .map(|i| user_address((i * 7919) % s.users))
        .collect();
    let records: Vec<String> = (0..1000)
        .map(|i| record_address((i * 104_729) % s.records))
        .collect();
    let mailbox = per_call(n, |i| {
        std::hint::black_box(dir.mailbox(&users[i % 1000]));
    });
    let address = per_call(n, |i| {
        std::hint::black_box(dir.rows_with_address(&records[i % 1000]));
    });
    let memory = per_call(n, |i| {
        std::hint::black_box(
            engine
                .memory()
                .item(&users[i % 1000], "AAMkADEzItem00000001AAA="),
        );
    });
    let org = dir.org().id;
    let id = per_call(n, |i| {
        std::hint::black_box(email_id(org, &records[i % 1000], Direction::Incoming));
    });
    let decisions: Vec<_> = obs
        .iter()
        .take(1000)
        .flat_map(|o| engine.decide(o, PURE))
        .collect();
    let clone = per_call(n, |i| {
        std::hint::black_box(decisions[i % decisions.len()].clone());
    });
    let guard = per_call(n, |_| {
        std::hint::black_box(handle.guard());
    });
    println!(
        "parts (ns per call): mailbox lookup {mailbox:.0}, address lookup {address:.0}, memory lookup (miss) {memory:.0}, CRM id {id:.0}, decision clone {clone:.0}, snapshot guard {guard:.0}"
    );
}

fn main() {
    let s = scale();
    let rss_before = rss_mib();
    let region = Region::new(&GLOBAL);
    let start = Instant::now();
    let doc = document(&s);
    let generated = start.elapsed();
    let start = Instant::now();
    let directory = Directory::build(doc).unwrap();
    let built = start.elapsed();
    let live = region.change();
    let heap = live.bytes_allocated as f64 - live.bytes_deallocated as f64;
    println!(
        "directory: {} users, {} records, {} folder rules, {} tracked emails",
        s.users,
        s.records,
        s.users * s.rules_per_user,
        s.tracked
    );
    println!(
        "directory: generated in {:.2}s, built (validated + indexed) in {:.2}s, live heap {:.0} MiB, process RSS {:.0} → {:.0} MiB",
        generated.as_secs_f64(),
        built.as_secs_f64(),
        heap / (1024.0 * 1024.0),
        rss_before,
        rss_mib()
    );

    let handle = DirectoryHandle::new(directory);
    let engine = Engine::new(
        handle.clone(),
        MemoryLimits::default(),
        RulesLimits::default(),
    );
    let obs = observations(&s, 10_000);
    let tracked = obs
        .iter()
        .flat_map(|o| engine.decide(o, PURE))
        .filter(|d| d.is_track())
        .count();
    println!("mix: {tracked} of {} decisions track", obs.len());
    let all: Vec<_> = obs.iter().collect();
    let (allocations, bytes) = allocations_per_decision(&engine, &all, PURE);
    println!("allocations per decision: {allocations:.1} ({bytes:.0} bytes)");
    // The same for the ignores alone and the tracks alone (the goal is ≤ 1 per ignore).
    for (label, track) in [("ignore", false), ("track", true)] {
        let subset: Vec<_> = obs
            .iter()
            .filter(|o| engine.decide(o, PURE).iter().any(|d| d.is_track()) == track)
            .collect();
        let (allocations, _) = allocations_per_decision(&engine, &subset, PURE);
        println!(
            "allocations per {label}: {allocations:.1} ({} decisions)",
            subset.len()
        );
    }
    // Remembering messages never seen, in a scratch memory: what the live pipeline allocates
    // (the memory's keys and entries, and what it evicts freed later).
    let fresh = observations_from(&s, 1_000_000, obs.len());
    let fresh: Vec<_> = fresh.iter().collect();
    let (allocations, bytes) = allocations_per_decision(&engine.scratch(), &fresh, Mode::APPLY);
    println!("allocations per remembered decision: {allocations:.1} ({bytes:.0} bytes)");

    // What the parts cost, to see where a decision's time goes.
    parts(&handle, &engine, &obs, &s);

    // Latency of single decisions, then the same while snapshots are swapped.
    print_histogram("decision latency", &latencies(&engine, &obs, 20));
    let first = handle.load();
    let second = Arc::new(Directory::build(document(&s)).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (handle, stop) = (handle.clone(), stop.clone());
        std::thread::spawn(move || {
            // Alternate between two full directories, as reloads would; both stay alive here,
            // so this measures the swap as readers see it (freeing is on a helper thread).
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let next = if swaps.is_multiple_of(2) {
                    &second
                } else {
                    &first
                };
                drop(handle.swap_arc(next.clone()));
                swaps += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            swaps
        })
    };
    let during = latencies(&engine, &obs, 20);
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    print_histogram(
        &format!("decision latency during {swaps} snapshot swaps"),
        &during,
    );

    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    let mut group = c.benchmark_group("rules");
    group.throughput(Throughput::Elements(obs.len() as u64));
    group.bench_function("decide_mix_pure", |b| {
        b.iter(|| {
            for o in &obs {
                std::hint::black_box(engine.decide(o, PURE));
            }
        })
    });
    // The same, with each observation read just before it is decided, as the inspection
    // worker has just built it: above, the 10 000 observations are cold again each time round
    // (their text alone is megabytes), and their cache misses are not what the pipeline pays.
    // Batches of 64 are read (serialised to a sink) untimed, then decided timed.
    group.bench_function("decide_mix_pure_hot_observation", |b| {
        b.iter_custom(|iterations| {
            let mut timed = Duration::ZERO;
            for _ in 0..iterations {
                for batch in obs.chunks(64) {
                    for o in batch {
                        serde_json::to_writer(std::io::sink(), o).unwrap();
                    }
                    let start = Instant::now();
                    for o in batch {
                        std::hint::black_box(engine.decide(o, PURE));
                    }
                    timed += start.elapsed();
                }
            }
            timed
        })
    });
    // Each iteration decides messages never seen before (as live traffic brings them), so
    // this measures deciding and remembering, not answering duplicates.
    let mut round = 0usize;
    group.bench_function("decide_mix_remembering", |b| {
        b.iter_batched(
            || {
                round += 1;
                observations_from(&s, round * obs.len(), obs.len())
            },
            |fresh| {
                for o in &fresh {
                    std::hint::black_box(engine.decide(o, Mode::APPLY));
                }
                // Returned, so criterion drops them after the timed part.
                fresh
            },
            BatchSize::PerIteration,
        )
    });
    // Sightings of messages the memory already holds (the pipeline's common case: a message
    // is listed, fetched and synced, in each recipient's mailbox), deciding and remembering.
    let again = engine.scratch();
    for o in &obs {
        again.decide(o, Mode::APPLY);
    }
    group.bench_function("decide_mix_seen_again", |b| {
        b.iter(|| {
            for o in &obs {
                std::hint::black_box(again.decide(o, Mode::APPLY));
            }
        })
    });
    // What the options page's history adds per observation on the inspection path (the
    // pipeline's lookup of the mailbox, a copy of the observation, the bounded push), beside
    // what deciding it costs.
    let history = trackgate::options::History::new(100, 2000);
    group.bench_function("keep_for_preview", |b| {
        b.iter(|| {
            for o in &obs {
                let dir = engine.directory().guard();
                if let Some(m) = o.origin().mailbox.as_deref().and_then(|m| dir.mailbox(m)) {
                    history.record(m.id, Arc::new(o.clone()));
                }
            }
        })
    });
    group.finish();
    c.final_summary();
}
