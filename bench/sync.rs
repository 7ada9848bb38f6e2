//! CRM ⇄ Exchange synchronisation against both simulators over loopback, in one run:
//! A. the first sync: every user's appointments (selected by their "My Appointments" filter)
//!    created in their calendar;
//! B. a round with nothing new — its cost in requests per user per interval to Exchange and to
//!    Dataverse (goal ≤ 2 each);
//! C. changes made on either side at random moments — the time until the other side shows
//!    them, against the interval (goal: p99 ≤ interval + 30 s).
//!
//! 1 000 users × 500 appointments at `TRACKGATE_BENCH_SCALE` 1.0; users scale with it (at
//! least 3), appointments per user drop to 50 below 0.1. CI runs it at 0.01.
//! Results: bench/RESULTS.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use trackgate::directory::model::{
    DirectoryDocument, Lookup, Mailbox, SyncActivity, SyncFilter, SystemUser, UserSettings,
};
use trackgate::simulate::dataverse::{DataverseOptions, DataverseSimulator};
use trackgate::simulate::mailbox::Store;
use trackgate::simulate::{ExchangeSimulator, FixtureSet, SimulatorOptions};
use uuid::Uuid;

use common::{percentile, scale, until};

fn address(u: usize) -> String {
    format!("user{u}@contoso.example")
}

fn user_id(u: usize) -> Uuid {
    Uuid::from_u128(0x1_0000_0000 + u as u128)
}

fn appointment_id(u: usize, n: usize) -> Uuid {
    Uuid::from_u128(0x3_0000_0000_0000 + ((u as u128) << 20) + n as u128)
}

const MY_APPOINTMENTS: &str = r#"<fetch><entity name="appointment"><filter><condition attribute="ownerid" operator="eq-userid"/><condition attribute="statecode" operator="in"><value>0</value><value>3</value></condition></filter></entity></fetch>"#;

/// The embedded example plus `users` users, each with a mailbox on server-side sync, a "My
/// Appointments" filter and `items` appointments of their own.
fn directory(users: usize, items: usize) -> DirectoryDocument {
    let mut doc: DirectoryDocument =
        toml::from_str(trackgate::directory::file::EMBEDDED_EXAMPLE).unwrap();
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
            syncfilters: vec![SyncFilter {
                userqueryid: Some(Uuid::from_u128(0x4_0000_0000 + u as u128)),
                entity: "appointment".into(),
                name: Some("My Appointments".into()),
                filter: Some(MY_APPOINTMENTS.into()),
                enabled: true,
            }],
            ..UserSettings::default()
        });
        doc.mailboxes.push(Mailbox {
            mailboxid: Uuid::from_u128(0x2_0000_0000 + u as u128),
            emailaddress: address(u),
            regardingobjectid: Lookup::new("systemuser", user_id(u)),
            processemailreceivedafter: None,
            incomingemaildeliverymethod: 2,
            actdeliverymethod: 1,
            outgoingemaildeliverymethod: 0,
        });
        for n in 0..items {
            let day = 10 + (n % 18);
            doc.appointments.push(SyncActivity {
                activityid: appointment_id(u, n),
                subject: Some(format!("Meeting {n} of user {u}")),
                ownerid: Some(user_id(u)),
                statecode: 3,
                statuscode: Some(5),
                scheduledstart: Some(format!("2027-01-{day:02}T{:02}:00:00Z", 8 + n % 9)),
                scheduledend: Some(format!("2027-01-{day:02}T{:02}:30:00Z", 8 + n % 9)),
                ..SyncActivity::default()
            });
        }
    }
    doc
}

fn metric(text: &str, line: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn runs_ok(admin: &str) -> u64 {
    let text = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric(&text, r#"trackgate_sync_runs_total{result="ok"} "#)
}

/// The subject of the calendar item linked to an appointment, if any.
fn exchange_subject(store: &Store, u: usize, appointment: Uuid) -> Option<(String, String)> {
    let inner = store.lock();
    let m = inner.mailbox_index(&address(u)).ok()?;
    let mailbox = inner.mailbox(m);
    let calendar = mailbox.distinguished("calendar")?.key;
    let link = format!("appointment:{appointment}");
    mailbox
        .items_in(calendar)
        .into_iter()
        .find(|i| i.extended.iter().any(|p| p.value == link))
        .map(|i| (i.id.clone(), i.subject.clone()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    trackgate::tls::install_crypto_provider();
    let users = ((1000.0 * scale()) as usize).max(3);
    let items = if scale() < 0.1 { 50 } else { 500 };
    let interval = Duration::from_secs(60);
    let store = Arc::new(Store::embedded().unwrap());
    {
        let mut inner = store.lock();
        for u in 0..users {
            inner.add_mailbox(&address(u), &format!("User {u}"));
        }
    }
    let exchange = ExchangeSimulator::start(
        "127.0.0.1:0".parse().unwrap(),
        SimulatorOptions::new("bench", FixtureSet::embedded().unwrap()).with_store(store.clone()),
    )
    .await
    .unwrap();
    let dataverse = DataverseSimulator::start(
        "127.0.0.1:0".parse().unwrap(),
        DataverseOptions {
            seed: Some(directory(users, items)),
            ..DataverseOptions::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[listener]
address = "127.0.0.1:0"
plaintext = true
[admin]
address = "127.0.0.1:0"
[upstreams]
ews = "{ex}"
[storage]
data_dir = "{data}"
[directory]
source = "dataverse"
[directory.dataverse]
startup_wait = "600s"
max_rows = 2000000
[crm]
sink = "dataverse"
[crm.dataverse]
url = "{dv}"
[catchup]
enabled = false
[delivery]
enabled = false
[exchange]
ews_url = "{ex}/EWS/Exchange.asmx"
auth = "basic"
username = 'CONTOSO\svc'
password = "unused"
concurrency = 8
[sync]
interval = "{secs}s"
tick = "5s"
creates_per_run = {items}
"#,
        ex = exchange.url(),
        dv = dataverse.url(),
        secs = interval.as_secs(),
        data = dir.path().join("data").display(),
    );
    let config = trackgate::config::RawConfig::from_toml(&text, "bench", Vec::new())
        .and_then(|raw| raw.validate(dir.path()))
        .unwrap();
    let started = Instant::now();
    let gateway = trackgate::app::start(config).await.unwrap();
    let admin = gateway.admin_url();
    let syncing = users as u64 + 3; // the example's Alex, Jo and Kim sync too
    until("the first sync", Duration::from_secs(3600), async || {
        runs_ok(&admin).await >= syncing
    })
    .await;
    let first = started.elapsed();
    let (ex_first, dv_first) = (exchange.stats().requests, dataverse.stats().requests);
    let linked: usize = gateway
        .sync()
        .unwrap()
        .status()
        .await
        .iter()
        .map(|s| s.linked)
        .sum();

    // The round after the first sync reads back what it wrote (its probe sees the items it
    // created); then comes the steady state.
    let r_echo = runs_ok(&admin).await;
    let (e_echo, d_echo) = (exchange.stats().requests, dataverse.stats().requests);
    gateway.sync().unwrap().all_due_now();
    until("the round after the first sync", interval * 3, async || {
        runs_ok(&admin).await >= r_echo + syncing
    })
    .await;
    let echo = (
        (exchange.stats().requests - e_echo) as f64 / syncing as f64,
        (dataverse.stats().requests - d_echo) as f64 / syncing as f64,
    );

    // B: a round with nothing new — every mailbox made due at once, as its interval would.
    // The probe compares modification times in whole seconds (Exchange's clock): a second
    // passes first, as an interval would, so the writes above are behind it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The directory's refresh is forced first and counted apart: it is the org's, not a
    // user's.
    let d_refresh = dataverse.stats().requests;
    gateway.refresh_directory().await.unwrap();
    let refresh_requests = dataverse.stats().requests - d_refresh;
    let (e0, d0, r0) = (
        exchange.stats().requests,
        dataverse.stats().requests,
        runs_ok(&admin).await,
    );
    let round_started = Instant::now();
    gateway.sync().unwrap().all_due_now();
    until("a round with nothing new", interval * 3, async || {
        runs_ok(&admin).await >= r0 + syncing
    })
    .await;
    let round = round_started.elapsed();
    let (e1, d1, r1) = (
        exchange.stats().requests,
        dataverse.stats().requests,
        runs_ok(&admin).await,
    );
    let runs = (r1 - r0) as f64;
    let ex_per_user = (e1 - e0) as f64 / runs;
    let dv_round = d1 - d0;
    // Dataverse per interval, for the whole org: at worst a refresh every 30 s (a round
    // refreshes a directory older than that), and one Pending Send query per tick.
    let tick = 5.0;
    let dv_per_interval =
        refresh_requests as f64 * interval.as_secs_f64() / 30.0 + interval.as_secs_f64() / tick;
    let dv_per_user = dv_per_interval / syncing as f64;

    // C: changes on either side at random moments, timed until the other side shows them
    // (needs real intervals: not at smoke scale).
    let samples = if scale() < 0.1 { 0 } else { 6 };
    let mut waits: Vec<f64> = Vec::new();
    let client = reqwest::Client::new();
    for s in 0..samples {
        let u = (s * 7919) % users;
        let appointment = appointment_id(u, (s * 31) % items);
        let jitter = Duration::from_millis(((s as u64) * 9973) % 20_000);
        tokio::time::sleep(jitter).await;
        let at = Instant::now();
        if s % 2 == 0 {
            let subject = format!("Moved in the CRM {s}");
            let response = client
                .patch(format!(
                    "{}/api/data/v9.2/appointments({appointment})",
                    dataverse.url()
                ))
                .header("If-Match", "*")
                .json(&json!({ "subject": subject }))
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success());
            until("the CRM change in Exchange", interval * 3, async || {
                exchange_subject(&store, u, appointment).is_some_and(|(_, s)| s == subject)
            })
            .await;
        } else {
            let subject = format!("Moved in Outlook {s}");
            let (id, _) = exchange_subject(&store, u, appointment).unwrap();
            {
                let mut inner = store.lock();
                let (m, key) = inner.find_item(&id).unwrap();
                inner
                    .update(m, key, |i| i.subject = subject.clone())
                    .unwrap();
            }
            let key = appointment.to_string();
            until("the Outlook change in the CRM", interval * 3, async || {
                dataverse
                    .records("appointments")
                    .iter()
                    .any(|r| r["activityid"] == key.as_str() && r["subject"] == subject.as_str())
            })
            .await;
        }
        waits.push(at.elapsed().as_secs_f64());
    }
    waits.sort_by(f64::total_cmp);

    println!(
        "sync: {users} users × {items} appointments ({syncing} synchronising mailboxes), interval {interval:?}"
    );
    println!(
        "A first sync: {:.1}s, {linked} items linked; {ex_first} Exchange requests ({:.2} per item), {dv_first} Dataverse requests ({:.2} per item)",
        first.as_secs_f64(),
        ex_first as f64 / linked.max(1) as f64,
        dv_first as f64 / linked.max(1) as f64,
    );
    println!(
        "  the round after it (reads back its own writes): {:.2} Exchange and {:.2} Dataverse requests per user",
        echo.0, echo.1
    );
    println!(
        "B round with nothing new: {:.1}s; {ex_per_user:.2} Exchange requests per user (goal ≤ 2); Dataverse {dv_round} requests in the round (none per user), a refresh {refresh_requests} requests: at most {dv_per_interval:.0} per interval for the org = {dv_per_user:.3} per user (goal ≤ 2)",
        round.as_secs_f64()
    );
    if waits.is_empty() {
        println!("C not run at this scale");
    } else {
        println!(
            "C change to the other side ({samples} samples, half each way): median {:.1}s, p99 {:.1}s, max {:.1}s (goal: p99 ≤ interval + 30 s = {}s)",
            percentile(&waits, 0.5),
            percentile(&waits, 0.99),
            waits.last().copied().unwrap_or(0.0),
            interval.as_secs() + 30
        );
    }
    gateway.shutdown().await;
    exchange.stop().await;
    dataverse.stop().await;
}
