//! Outbox and delivery end to end: client → gateway → Exchange simulator, tracked mail landing
//! in the Dataverse simulator (real sockets, a real redb outbox), through crashes, outages,
//! throttling, poison records and concurrent auto-creates; the webhook and journal sinks.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Map, Value};
use trackgate::directory::model::DirectoryDocument;
use trackgate::simulate::dataverse::{DataverseFaults, Throttle};
use trackgate::simulate::{DataverseOptions, DataverseSimulator};
use uuid::Uuid;

use crate::support;

pub(crate) const CLIENT_ID: &str = "trackgate-test";
pub(crate) const CLIENT_SECRET: &str = "test-secret-0123456789";
const ADMIN_TOKEN: &str = "admin-token-0123456789";
/// The CRM id of the recorded message from Pat (fixtures ews-getitem-message and friends).
const PAT_MESSAGE: &str = "43b7be51-ce26-5b47-977d-4aff5baaf1f9";
const PAT_CONTACT: &str = "00000000-0000-4000-8000-0000000000c1";
const ALEX: &str = "00000000-0000-4000-8000-0000000000a1";
const OPPORTUNITY: &str = "00000000-0000-4000-8000-0000000000d1";

fn contoso() -> DirectoryDocument {
    toml::from_str(trackgate::directory::file::EMBEDDED_EXAMPLE).unwrap()
}

pub(crate) async fn dataverse() -> DataverseSimulator {
    DataverseSimulator::start(
        "127.0.0.1:0".parse().unwrap(),
        DataverseOptions {
            credentials: Some((CLIENT_ID.into(), CLIENT_SECRET.into())),
            seed: Some(contoso()),
            // Short, so every test outlives a few tokens and the gateway must renew them.
            token_lifetime: Duration::from_secs(3),
            ..DataverseOptions::default()
        },
    )
    .await
    .unwrap()
}

/// Every write the gateway made passed the strict simulator (`expected` of them were refused
/// on purpose by the test).
pub(crate) fn assert_accepted(dv: &DataverseSimulator, expected: u64) {
    let stats = dv.stats();
    assert_eq!(stats.refused, expected, "refused: {:#?}", stats.refusals);
}

/// `[admin]` with the test token (for the endpoints that show CRM data or change state).
fn with_admin_token(_: &str) -> String {
    format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\n")
}

/// The dead letters, as `GET /outbox/dead` lists them.
async fn dead_letters(gw: &support::TestGateway) -> Value {
    support::plain_client()
        .get(gw.admin("/outbox/dead"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Gateway configuration for the Dataverse sink at `dv`, fast backoff for tests.
pub(crate) fn dataverse_config(dv: &DataverseSimulator, delivery: &str) -> String {
    dataverse_section(
        dv,
        &format!("backoff_base = \"100ms\"\nbackoff_max = \"1s\"\n{delivery}"),
    )
}

/// Gateway configuration for the Dataverse sink at `dv` with exactly these `[delivery]` keys.
pub(crate) fn dataverse_section(dv: &DataverseSimulator, delivery: &str) -> String {
    format!(
        "[crm]\nsink = \"dataverse\"\n[crm.dataverse]\nurl = \"{url}\"\ntoken_url = \"{token}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n[delivery]\n{delivery}\n",
        url = dv.url(),
        token = dv.token_url(),
    )
}

/// The Exchange simulator, the Dataverse simulator and a gateway delivering to it, with
/// `extra` configuration (given the Exchange simulator's URL) and `[delivery]` keys.
pub(crate) struct Pipeline {
    pub(crate) sim: trackgate::simulate::ExchangeSimulator,
    pub(crate) dv: DataverseSimulator,
    pub(crate) gw: support::TestGateway,
    pub(crate) client: reqwest::Client,
}

pub(crate) async fn pipeline(extra: impl FnOnce(&str) -> String, delivery: &str) -> Pipeline {
    pipeline_with(|sim, dv| format!("{}{}", extra(sim), dataverse_config(dv, delivery))).await
}

/// The same, with the whole configuration made from the simulators' addresses.
pub(crate) async fn pipeline_with(
    config: impl FnOnce(&str, &DataverseSimulator) -> String,
) -> Pipeline {
    let sim = support::simulator("sim").await;
    let dv = dataverse().await;
    let config = config(&sim.url(), &dv);
    let gw = support::gateway(&sim.url(), &config).await;
    let client = support::client(&gw.ca(), true);
    Pipeline {
        sim,
        dv,
        gw,
        client,
    }
}

/// Replays a recorded client request through the gateway and reads the answer.
async fn replay(client: &reqwest::Client, url: &str, name: &str) {
    let f = support::fixture(name);
    let request = f.request.unwrap();
    let mut builder = client.request(
        reqwest::Method::from_bytes(request.method.as_bytes()).unwrap(),
        format!("{url}{}", request.path),
    );
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let r = builder.body(request.body.clone()).send().await.unwrap();
    assert!(r.status().is_success(), "{name}: {}", r.status());
    r.bytes().await.unwrap();
}

/// Clients look up their folders first; that is how the gateway learns the Inbox's id.
async fn learn_inbox(client: &reqwest::Client, gw: &support::TestGateway) {
    replay(client, &gw.localhost_url(""), "ews-getfolder-inbox").await;
    support::wait_for(Duration::from_secs(10), "the Inbox folder", async || {
        gw.gateway
            .recent_observations()
            .iter()
            .any(|o| matches!(o, trackgate::inspect::Observation::FolderSeen { .. }))
            .then_some(())
    })
    .await;
}

/// A CreateItem that sends a MIME message from Alex to Pat (a contact) with its own Message-ID.
fn send_to_pat(n: usize) -> String {
    use base64::Engine as _;
    let mime = format!(
        "From: Alex Seller <alex.seller@contoso.example>\r\nTo: \"Buyer, Pat\" <pat.buyer@fabrikam.example>\r\nSubject: Burst {n}\r\nMessage-ID: <burst.{n}@mail.contoso.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello {n}\r\n"
    );
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Body><m:CreateItem MessageDisposition="SendAndSaveCopy"><m:SavedItemFolderId><t:DistinguishedFolderId Id="sentitems"/></m:SavedItemFolderId><m:Items><t:Message><t:MimeContent CharacterSet="UTF-8">{}</t:MimeContent></t:Message></m:Items></m:CreateItem></s:Body></s:Envelope>"#,
        base64::engine::general_purpose::STANDARD.encode(mime)
    )
}

/// Sends one message and reads the whole answer (a client that drops it unread resets the
/// stream, and the gateway rightly does not inspect a cut exchange).
pub(crate) async fn send(client: &reqwest::Client, proxy: &str, n: usize) -> bool {
    let Ok(r) = client
        .post(format!("{proxy}/EWS/Exchange.asmx"))
        .header("content-type", "text/xml; charset=utf-8")
        .header("x-anchormailbox", "alex.seller@contoso.example")
        .body(send_to_pat(n))
        .send()
        .await
    else {
        return false;
    };
    r.status() == 200 && r.bytes().await.is_ok()
}

/// Sends messages `range` through the gateway, `concurrency` at a time; counts the sends the
/// gateway answered.
fn burst(
    proxy: &str,
    range: std::ops::Range<usize>,
    concurrency: usize,
) -> (Arc<AtomicUsize>, Vec<tokio::task::JoinHandle<()>>) {
    let client = support::plain_client();
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let limit = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let tasks = range
        .map(|n| {
            let (client, proxy, acknowledged, limit) = (
                client.clone(),
                proxy.to_owned(),
                acknowledged.clone(),
                limit.clone(),
            );
            tokio::spawn(async move {
                let _permit = limit.acquire().await.unwrap();
                if send(&client, &proxy, n).await {
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    (acknowledged, tasks)
}

/// Sends the burst `range` and waits for every answer; returns how many were answered.
pub(crate) async fn burst_and_wait(
    proxy: &str,
    range: std::ops::Range<usize>,
    concurrency: usize,
) -> usize {
    let (acknowledged, tasks) = burst(proxy, range, concurrency);
    for t in tasks {
        t.await.unwrap();
    }
    acknowledged.load(Ordering::Relaxed)
}

/// When [`kill_mid_burst`] kills.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum KillWhen {
    /// Once half the burst was answered.
    HalfAnswered,
    /// Once half the burst was answered and the gateway's own outbox file holds a record more
    /// than before: on a loaded host inspection can trail the forwarding by the whole half,
    /// and a test about committed work proves nothing if the kill comes before the first
    /// commit. (Not for a fleet: its outbox stats are the shared stream's.)
    HalfAnsweredAndCommitted,
}

/// Sends the burst `range` through `gateway` and kills it (SIGKILL: no drain, no flush) when
/// `when` says; returns how many sends the gateway answered in all.
pub(crate) async fn kill_mid_burst(
    mut gateway: support::GatewayProcess,
    range: std::ops::Range<usize>,
    concurrency: usize,
    when: KillWhen,
) -> usize {
    let half = range.len() / 2;
    let before = committed_so_far(&gateway.admin).await;
    let (acknowledged, tasks) = burst(&gateway.proxy, range, concurrency);
    support::wait_for(Duration::from_secs(60), "half the burst", async || {
        (acknowledged.load(Ordering::Relaxed) >= half).then_some(())
    })
    .await;
    if when == KillWhen::HalfAnsweredAndCommitted {
        support::wait_for(
            Duration::from_secs(60),
            "a first committed decision",
            async || (committed_so_far(&gateway.admin).await > before).then_some(()),
        )
        .await;
    }
    gateway.child.kill().unwrap();
    gateway.wait_exit(Duration::from_secs(10));
    for t in tasks {
        t.await.unwrap();
    }
    acknowledged.load(Ordering::Relaxed)
}

/// Records the outbox has committed so far: pending, in flight or delivered.
async fn committed_so_far(admin: &str) -> u64 {
    let s = outbox_stats(admin).await;
    ["pending", "in_flight", "delivered_keys"]
        .iter()
        .map(|key| s[key].as_u64().unwrap_or(0))
        .sum()
}

/// Emails the gateway wrote (the seeded ones carry no creation stamp).
pub(crate) fn written_emails(dv: &DataverseSimulator) -> Vec<Map<String, Value>> {
    let mut emails: Vec<_> = dv
        .records("emails")
        .into_iter()
        .filter(|e| e.contains_key("_sim_created_seq"))
        .collect();
    emails.sort_by_key(|e| e["_sim_created_seq"].as_u64());
    emails
}

pub(crate) async fn outbox_stats(admin: &str) -> Value {
    support::plain_client()
        .get(format!("{admin}/outbox/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `trackgate outbox stats` of a stopped gateway: the command opens the outbox file itself.
fn offline_outbox_stats(config: &std::path::Path) -> Value {
    let (stdout, _) = support::run_trackgate([
        std::ffi::OsStr::new("outbox"),
        "stats".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    serde_json::from_slice(&stdout).unwrap()
}

/// The CRM ids of the records pending in a stopped gateway's outbox file
/// (`trackgate outbox list`).
fn offline_pending_ids(config: &std::path::Path) -> Vec<String> {
    let (stdout, _) = support::run_trackgate([
        std::ffi::OsStr::new("outbox"),
        "list".as_ref(),
        "--limit".as_ref(),
        "100000".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    let records: Vec<Value> = serde_json::from_slice(&stdout).unwrap();
    records
        .iter()
        .map(|r| r["decision"]["crm_id"].as_str().unwrap().to_owned())
        .collect()
}

pub(crate) async fn metrics(admin: &str) -> String {
    support::plain_client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn party(email: &Map<String, Value>, mask: u64) -> Vec<&Map<String, Value>> {
    email["email_activity_parties"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_object)
        .filter(|p| p["participationtypemask"] == mask)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_sighted_five_ways_is_one_crm_email_with_parties_regarding_and_status() {
    let Pipeline {
        sim: _sim,
        dv,
        gw,
        client,
    } = pipeline(|_| String::new(), "").await;
    let url = gw.localhost_url("");
    // The Inbox id first, so the sightings are known to be in the Inbox.
    learn_inbox(&client, &gw).await;
    for name in [
        "ews-getitem-message",
        "graph-list-messages",
        "graph-move-message",
        "ews-getitem-message",
        "ews-moveitem-partial",
    ] {
        replay(&client, &url, name).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let decisions = loop {
        let d = gw.gateway.recent_decisions();
        if d.len() >= 5 {
            break d;
        }
        // Say what was seen when a sighting is missing.
        assert!(
            std::time::Instant::now() < deadline,
            "five decisions expected: {:?}\nobservations: {:?}\n{}",
            d.iter()
                .map(|d| (&d.operation, d.reason))
                .collect::<Vec<_>>(),
            gw.gateway.recent_observations(),
            metrics(&gw.admin(""))
                .await
                .lines()
                .filter(
                    |l| l.starts_with("trackgate_captures") || l.starts_with("trackgate_inspect")
                )
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let id = Uuid::parse_str(PAT_MESSAGE).unwrap();
    assert!(
        decisions.iter().all(|d| d.crm_id == Some(id)),
        "{decisions:#?}"
    );
    assert!(
        decisions.iter().any(|d| d.update_regarding),
        "the Graph move into the tracked folder links it to the folder's record"
    );
    let email = support::wait_for(
        Duration::from_secs(20),
        "the email in Dataverse",
        async || {
            let stats = outbox_stats(&gw.admin("")).await;
            let emails = written_emails(&dv);
            (stats["pending"] == 0 && stats["in_flight"] == 0 && emails.len() == 1)
                .then(|| emails[0].clone())
        },
    )
    .await;
    assert_eq!(dv.stats().created["emails"], 1, "created exactly once");
    assert_eq!(dv.stats().recreated, 0);
    assert_eq!(email["activityid"], PAT_MESSAGE);
    assert_eq!(email["directioncode"], false);
    assert_eq!(email["statecode"], 1);
    assert_eq!(email["statuscode"], 4, "received");
    assert!(email["messageid"].as_str().unwrap().starts_with('<'));
    assert_eq!(email["subject"], decisions[0].subject.as_deref().unwrap());
    let from = party(&email, 1);
    assert_eq!(from.len(), 1);
    assert_eq!(from[0]["_partyid_contact_value"]["id"], PAT_CONTACT);
    assert!(
        party(&email, 2).iter().any(|p| p
            .get("_partyid_systemuser_value")
            .is_some_and(|v| v["id"] == ALEX)),
        "Alex is a To party: {email:#?}"
    );
    assert_eq!(
        email["_sim_callerobjectid"], "10000000-0000-4000-8000-0000000000a1",
        "created as the mailbox owner"
    );
    let regarding = support::wait_for(
        Duration::from_secs(20),
        "the regarding update",
        async || {
            written_emails(&dv)[0]
                .get("_regardingobjectid_account_email_value")
                .cloned()
        },
    )
    .await;
    assert_eq!(
        regarding["id"], "00000000-0000-4000-8000-0000000000c2",
        "the folder rule's record"
    );
    // A closed email is read-only (the strict simulator refuses its regarding): the re-link
    // went reopen → re-link → close, and the email ends received and closed again.
    let relinked = support::wait_for(Duration::from_secs(20), "closed again", async || {
        let stats = outbox_stats(&gw.admin("")).await;
        let email = written_emails(&dv)[0].clone();
        (stats["pending"] == 0 && email["statecode"] == 1).then_some(email)
    })
    .await;
    assert_eq!(relinked["statuscode"], 4, "received, as before the re-link");
    assert!(dv.tokens_issued() >= 1);
    assert_accepted(&dv, 0);
    let m = metrics(&gw.admin("")).await;
    assert!(
        m.contains(r#"trackgate_delivery_outcomes_total{sink="dataverse",outcome="delivered"}"#),
        "{m}"
    );
    assert!(m.contains("trackgate_outbox_commits_total"));
}

/// Waits until the gateway at `admin` has inspected `n` exchanges.
async fn inspected(admin: &str, n: u64) {
    support::wait_for(
        Duration::from_secs(10),
        "the exchanges inspected",
        async || {
            let m = metrics(admin).await;
            let count = m
                .lines()
                .find_map(|l| l.strip_prefix("trackgate_inspected_exchanges_total "))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            (count as u64 >= n).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_rule_relink_of_an_email_still_queued_is_created_under_its_record_and_closed_once()
{
    let sim = support::simulator("sim").await;
    let dv = dataverse().await;
    let dir = tempfile::tempdir().unwrap();
    let config = |enabled: bool| {
        support::write_config(
            dir.path(),
            &format!(
                "plaintext = true\n[upstreams]\news = \"{}\"\n{}",
                sim.url(),
                dataverse_config(&dv, &format!("enabled = {enabled}"))
            ),
        )
    };
    // Delivery off: the email's create waits in the outbox when the move re-links it.
    let mut gateway = support::GatewayProcess::start(&config(false));
    let client = support::plain_client();
    replay(&client, &gateway.proxy, "ews-getfolder-inbox").await;
    inspected(&gateway.admin, 1).await;
    replay(&client, &gateway.proxy, "ews-getitem-message").await;
    inspected(&gateway.admin, 2).await;
    replay(&client, &gateway.proxy, "graph-move-message").await;
    // The gauges follow each commit a moment after its counters: wait for both.
    let folded = |m: &str| m.contains("trackgate_outbox_enqueued_total{result=\"folded\"} 1");
    let m = support::wait_for(Duration::from_secs(10), "the re-link folded", async || {
        let m = metrics(&gateway.admin).await;
        (folded(&m) && m.contains("trackgate_outbox_depth 1")).then_some(m)
    })
    .await;
    assert!(folded(&m) && m.contains("trackgate_outbox_depth 1"), "{m}");
    gateway.signal("TERM");
    gateway.wait_exit(Duration::from_secs(20));

    let gateway = support::GatewayProcess::start(&config(true));
    let email = support::wait_for(Duration::from_secs(20), "the email delivered", async || {
        let stats = outbox_stats(&gateway.admin).await;
        let emails = written_emails(&dv);
        (stats["pending"] == 0 && stats["in_flight"] == 0 && emails.len() == 1)
            .then(|| emails[0].clone())
    })
    .await;
    assert_eq!(email["activityid"], PAT_MESSAGE);
    assert_eq!(
        email["_regardingobjectid_account_email_value"]["id"],
        "00000000-0000-4000-8000-0000000000c2",
        "created under the folder rule's record"
    );
    assert_eq!(
        (email["statecode"].clone(), email["statuscode"].clone()),
        (1.into(), 4.into())
    );
    let updates = dv
        .requests()
        .iter()
        .filter(|r| {
            r.path.contains("/emails(")
                && r.kind == trackgate::simulate::dataverse::RequestKind::Update
        })
        .count();
    assert_eq!(
        updates, 1,
        "closed once: no reopen, no re-link after the close"
    );
    assert_accepted(&dv, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_then_restart_delivers_every_committed_decision_exactly_once() {
    let sim = support::simulator("sim").await;
    let dv = dataverse().await;
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config(
        dir.path(),
        &format!(
            "plaintext = true\n[upstreams]\news = \"{}\"\n{}",
            sim.url(),
            dataverse_config(&dv, "concurrency = 16")
        ),
    );
    const BURST: usize = 1000;
    let acknowledged = kill_mid_burst(
        support::GatewayProcess::start(&config),
        0..BURST,
        16,
        KillWhen::HalfAnsweredAndCommitted,
    )
    .await;
    // What the outbox file holds after the crash is what was committed: the records still
    // pending in it, and those delivered before the kill (in Dataverse, and counted as
    // delivered keys in the file).
    let delivered_before: Vec<String> = written_emails(&dv)
        .iter()
        .map(|e| e["activityid"].as_str().unwrap().to_owned())
        .collect();
    let offline = offline_outbox_stats(&config);
    let pending_in_file = offline_pending_ids(&config);
    assert_eq!(
        offline["pending"].as_u64().unwrap() as usize,
        pending_in_file.len()
    );
    let mut committed_ids: std::collections::BTreeSet<String> =
        delivered_before.iter().cloned().collect();
    committed_ids.extend(pending_in_file.iter().cloned());
    assert!(
        offline["delivered_keys"].as_u64().unwrap() as usize <= delivered_before.len(),
        "the file never claims a delivery Dataverse did not get"
    );

    let restarted = support::GatewayProcess::start(&config);
    let stats = support::wait_for(Duration::from_secs(60), "the backlog drained", async || {
        let s = outbox_stats(&restarted.admin).await;
        (s["pending"] == 0 && s["in_flight"] == 0).then_some(s)
    })
    .await;
    let committed = stats["delivered_keys"].as_u64().unwrap() as usize;
    assert_eq!(stats["dead"], 0);
    let emails = written_emails(&dv);
    let mut landed: Vec<String> = emails
        .iter()
        .map(|e| e["activityid"].as_str().unwrap().to_owned())
        .collect();
    landed.sort();
    assert_eq!(
        landed,
        committed_ids.iter().cloned().collect::<Vec<_>>(),
        "every record committed before the crash landed exactly once, and nothing else"
    );
    assert_eq!(committed, committed_ids.len());
    assert_eq!(dv.stats().created["emails"] as usize, committed);
    assert_eq!(dv.stats().recreated, 0, "no email created twice");
    assert_accepted(&dv, 0);
    assert!(
        emails
            .iter()
            .all(|e| e["subject"].as_str().unwrap().starts_with("Burst ") && e["statuscode"] == 3)
    );
    assert!(committed > 0 && committed <= acknowledged + 16);
    println!(
        "kill -9 burst: {acknowledged} sends acknowledged by the gateway, {committed} decisions committed \
         ({} delivered before the kill, {} pending in the file); loss window {} decisions \
         (acknowledged to the client but not yet committed when killed; the catch-up sweep finds them)",
        delivered_before.len(),
        pending_in_file.len(),
        acknowledged.saturating_sub(committed)
    );
    drop(restarted);
    // Offline, the command line opens the outbox file itself.
    let offline = offline_outbox_stats(&config);
    assert_eq!(
        offline["delivered_keys"].as_u64().unwrap() as usize,
        committed
    );
    assert_eq!(offline["pending"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crm_outage_holds_the_backlog_then_drains_it_in_order() {
    let Pipeline {
        sim: _sim,
        dv,
        gw,
        client,
    } = pipeline(|_| String::new(), "concurrency = 1").await;
    dv.set_faults(DataverseFaults {
        down: true,
        ..DataverseFaults::default()
    });
    const N: usize = 20;
    for n in 0..N {
        assert!(send(&client, &gw.localhost_url(""), n).await);
    }
    support::wait_for(Duration::from_secs(20), "the backlog held while down", async || {
        let stats = outbox_stats(&gw.admin("")).await;
        let m = metrics(&gw.admin("")).await;
        let unavailable = m
            .lines()
            .find(|l| l.starts_with(r#"trackgate_delivery_outcomes_total{sink="dataverse",outcome="unavailable"}"#))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0);
        (stats["pending"] == N as u64 && unavailable >= 2).then_some(())
    })
    .await;
    assert!(written_emails(&dv).is_empty());
    assert!(m_contains(
        &metrics(&gw.admin("")).await,
        "trackgate_outbox_oldest_pending_age_seconds"
    ));
    dv.set_faults(DataverseFaults::default());
    let emails = support::wait_for(Duration::from_secs(30), "the backlog drained", async || {
        let e = written_emails(&dv);
        (e.len() == N).then_some(e)
    })
    .await;
    let order: Vec<String> = emails
        .iter()
        .map(|e| e["subject"].as_str().unwrap().to_owned())
        .collect();
    // The order the rules decided them (captures reach inspection as responses complete,
    // which may differ from the order the client sent them by a hair).
    let expected: Vec<String> = gw
        .gateway
        .recent_decisions()
        .iter()
        .filter_map(|d| d.subject.as_deref().map(str::to_owned))
        .collect();
    assert_eq!(expected.len(), N);
    assert_eq!(order, expected, "drained in the order decided");
    assert_eq!(outbox_stats(&gw.admin("")).await["dead"], 0);
}

fn m_contains(text: &str, needle: &str) -> bool {
    text.contains(needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_pauses_the_whole_sink_until_retry_after_and_loses_nothing() {
    let Pipeline {
        sim: _sim,
        dv,
        gw,
        client,
    } = pipeline(|_| String::new(), "concurrency = 4").await;
    // Every answer takes a while, so the other workers' requests are on the wire when a 429
    // comes back: those may still arrive during the pause, nothing sent after it.
    const CONCURRENCY: usize = 4;
    dv.set_faults(DataverseFaults {
        throttle: Some(Throttle {
            count: 3,
            retry_after: 1.5,
        }),
        stall_ms: 200,
        ..DataverseFaults::default()
    });
    const N: usize = 8;
    for n in 0..N {
        assert!(send(&client, &gw.localhost_url(""), n).await);
    }
    support::wait_for(
        Duration::from_secs(30),
        "everything delivered",
        async || (written_emails(&dv).len() == N).then_some(()),
    )
    .await;
    let log = dv.requests();
    let throttled: Vec<(u64, u64)> = log
        .iter()
        .filter(|r| r.status == 429)
        .map(|r| (r.at_ms, r.done_ms))
        .collect();
    assert_eq!(throttled.len(), 3, "{log:#?}");
    for (arrived, answered) in &throttled {
        // Once the 429 is answered, only requests already on the wire (one per other worker)
        // may arrive before Retry-After passed; no worker starts another.
        let during_pause: Vec<_> = log
            .iter()
            .filter(|r| r.at_ms > *answered && r.at_ms < arrived + 1500)
            .collect();
        assert!(
            during_pause.len() < CONCURRENCY,
            "requests sent before Retry-After passed: {during_pause:#?}"
        );
    }
    assert!(
        log.iter().any(|r| r.at_ms >= throttled[0].0 + 1500),
        "delivery resumed after the pause"
    );
    assert_accepted(&dv, 0);
    assert_eq!(dv.stats().recreated, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_goes_to_dead_letter_the_rest_flow_and_retry_delivers_it_once_fixed() {
    let Pipeline {
        sim: _sim,
        dv,
        gw,
        client,
    } = pipeline(with_admin_token, "").await;
    // The correlated email's regarding record is missing in the CRM: its bind fails with 400.
    let opportunity = Uuid::parse_str(OPPORTUNITY).unwrap();
    assert!(dv.remove_record("opportunities", opportunity));
    let url = gw.localhost_url("");
    learn_inbox(&client, &gw).await;
    replay(&client, &url, "graph-delta-inbox").await;
    replay(&client, &url, "ews-getitem-message").await;
    let admin = support::plain_client();
    let dead: Value = support::wait_for(Duration::from_secs(20), "one dead letter", async || {
        let stats = outbox_stats(&gw.admin("")).await;
        if stats["dead"] != 1 || stats["pending"] != 0 {
            return None;
        }
        Some(dead_letters(&gw).await)
    })
    .await;
    let letter = &dead[0];
    assert_eq!(letter["status"], 400);
    assert!(
        letter["response"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{letter:#}"
    );
    let emails = written_emails(&dv);
    assert_eq!(emails.len(), 1, "the rest flowed");
    assert_eq!(emails[0]["activityid"], PAT_MESSAGE);
    let key = letter["record"]["key"].as_str().unwrap().to_owned();

    // Without the token: refused. GET: not allowed.
    let r = admin
        .post(gw.admin(&format!("/outbox/retry/{key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = admin
        .get(gw.admin(&format!("/outbox/retry/{key}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    // Fixed in the CRM, then retried: delivered once.
    dv.seed_record("opportunities", opportunity, Map::new());
    let r = admin
        .post(gw.admin(&format!("/outbox/retry/{key}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    support::wait_for(
        Duration::from_secs(20),
        "the retried record delivered",
        async || {
            let stats = outbox_stats(&gw.admin("")).await;
            (written_emails(&dv).len() == 2 && stats["dead"] == 0 && stats["pending"] == 0)
                .then_some(())
        },
    )
    .await;
    let r = admin
        .post(gw.admin(&format!("/outbox/retry/{key}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "nothing left to retry");
    assert_eq!(dv.stats().created["emails"], 2);
    assert_accepted(&dv, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_is_the_default_sink() {
    let sim = support::simulator("sim").await;
    let gw = support::gateway(&sim.url(), "").await;
    let client = support::client(&gw.ca(), true);
    let url = gw.localhost_url("");
    learn_inbox(&client, &gw).await;
    replay(&client, &url, "ews-getitem-message").await;
    let journal = gw
        .gateway
        .journal()
        .expect("the journal is the default sink")
        .clone();
    let entries = support::wait_for(Duration::from_secs(10), "the journal entry", async || {
        let e = journal.list(10).unwrap();
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].email.id.to_string(), PAT_MESSAGE);
    assert_eq!(entries[0].email.reason, "sender_contact");
    let shown =
        support::json_of(support::plain_client().get(gw.admin(&format!("/journal/{PAT_MESSAGE}"))))
            .await;
    assert_eq!(shown["email"]["parties"][0]["participationtypemask"], 1);
}

/// The webhook receiver: records each request after checking its signature.
async fn webhook_receiver(
    secret: &'static str,
) -> (String, Arc<std::sync::Mutex<Vec<(String, Value)>>>) {
    use http_body_util::BodyExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = seen.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let store = store.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        async move {
                            let header = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_owned()
                            };
                            let (key, ts, sig) = (
                                header("idempotency-key"),
                                header("x-trackgate-timestamp"),
                                header("x-trackgate-signature"),
                            );
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let expected = trackgate::crm::webhook::signature(
                                secret,
                                ts.parse().unwrap_or(0),
                                &body,
                            );
                            let status = if sig == expected {
                                store
                                    .lock()
                                    .unwrap()
                                    .push((key, serde_json::from_slice(&body).unwrap()));
                                200
                            } else {
                                401
                            };
                            let mut r =
                                http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_sink_posts_signed_documents_with_an_idempotency_key() {
    const SECRET: &str = "webhook-secret-0123456789";
    let (hook, seen) = webhook_receiver(SECRET).await;
    let sim = support::simulator("sim").await;
    let gw = support::gateway(
        &sim.url(),
        &format!(
            "[crm]\nsink = \"webhook\"\n[crm.webhook]\nurl = \"{hook}\"\nsecret = \"{SECRET}\"\n"
        ),
    )
    .await;
    let client = support::client(&gw.ca(), true);
    assert!(send(&client, &gw.localhost_url(""), 7).await);
    let (key, doc) = support::wait_for(Duration::from_secs(10), "the webhook call", async || {
        seen.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(doc["key"], key);
    assert_eq!(doc["subject"], "Burst 7");
    assert_eq!(doc["direction"], "outgoing");
    assert_eq!(doc["statuscode"], 3);
    assert_eq!(doc["message_id"], "<burst.7@mail.contoso.example>");
    assert_eq!(doc["parties"][1]["record"]["entity"], "contact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_sender_becomes_one_contact_when_two_mailboxes_track_its_mail_at_once() {
    use trackgate::crm::{DataverseSettings, DataverseSink, FieldTable, Sink};
    use trackgate::delivery::{Delivery, DeliveryMetrics, DeliverySettings};
    use trackgate::outbox::{Outbox, OutboxMetrics, OutboxSettings, RedbOutbox};
    use trackgate::rules::{Engine, MemoryLimits, Mode, RulesLimits};

    // Jo and Kim track all mail and create contacts for unknown senders.
    let text = trackgate::directory::file::EMBEDDED_EXAMPLE
        .replace(
            "incomingemailfilteringmethod = 0   # all email messages",
            "incomingemailfilteringmethod = 0\nautocreatecontactonpromote = 1",
        )
        .replace(
            "incomingemailfilteringmethod = 1   # responses to CRM email (the default)\nautocreatecontactonpromote = 2     # create leads",
            "incomingemailfilteringmethod = 0\nautocreatecontactonpromote = 1",
        );
    for batch_size in [1, 2] {
        let directory = trackgate::directory::file::parse_and_build(&text, "test", false).unwrap();
        let dv = dataverse().await;
        let engine = Arc::new(Engine::new(
            trackgate::directory::DirectoryHandle::new(directory),
            MemoryLimits {
                max_bytes: 1 << 20,
                max_tracked: 1000,
            },
            RulesLimits::default(),
        ));
        let seen = |mailbox: &str, n: u32| -> trackgate::inspect::Observation {
            serde_json::from_value(serde_json::json!({
                "kind": "message_seen", "mailbox": mailbox, "source": "ews", "operation": "GetItem",
                "item_id": format!("AAMkNew{n}"), "folder": "inbox",
                "internet_message_id": format!("new.{n}@tailspin.example"),
                "subject": format!("Hello {n}"),
                "from": {"name": "Nia Prospect", "address": "nia@tailspin.example"},
                "to": [{"address": mailbox}],
                "received_at": "2026-11-20T10:00:00Z"
            }))
            .unwrap()
        };
        let decisions: Vec<_> = [
            seen("jo.support@contoso.example", 1),
            seen("kim.manager@contoso.example", 2),
        ]
        .iter()
        .flat_map(|o| engine.decide(o, Mode::APPLY))
        .collect();
        assert_eq!(decisions.len(), 2);
        let created = decisions[0].auto_create.clone().expect("auto-create");
        assert_eq!(created.entity, "contact");
        assert_eq!(decisions[1].auto_create.as_ref().unwrap().id, created.id);

        let dir = tempfile::tempdir().unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let outbox = Arc::new(
            RedbOutbox::open(
                &dir.path().join("outbox.redb"),
                OutboxSettings::default(),
                OutboxMetrics::register(&mut registry),
            )
            .unwrap(),
        );
        for d in decisions {
            assert!(outbox.submit(&d));
        }
        outbox.flush().unwrap();
        assert_eq!(outbox.stats().unwrap().pending, 2);
        let sink = Sink::Dataverse(Box::new(DataverseSink::new(
            reqwest::Client::new(),
            DataverseSettings {
                url: dv.url(),
                api_path: "/api/data/v9.2".into(),
                credentials: Some(trackgate::common::ClientCredentials {
                    token_url: dv.token_url(),
                    client_id: CLIENT_ID.into(),
                    client_secret: trackgate::common::Secret::new(CLIENT_SECRET),
                    scope: "x/.default".into(),
                }),
                act_as_owner: false,
                batch_size,
                concurrency: 8,
                timeout: Duration::from_secs(10),
                probe_timeout: Duration::from_secs(5),
                columns: FieldTable::embedded().email,
                max_requests_per_window: None,
            },
        )));
        let delivery = Delivery::new(
            outbox.clone(),
            Arc::new(sink),
            None,
            engine,
            DeliverySettings {
                concurrency: 8,
                batch_size,
                ..DeliverySettings::default()
            },
            DeliveryMetrics::register(&mut registry),
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = delivery.spawn(stopped, Duration::from_secs(5));
        support::wait_for(
            Duration::from_secs(20),
            "both emails delivered",
            async || {
                let s = outbox.stats().unwrap();
                (s.pending == 0 && s.in_flight == 0 && s.delivered_keys == 2).then_some(())
            },
        )
        .await;
        stop.send(true).unwrap();
        task.await.unwrap();
        let contacts: Vec<_> = dv
            .records("contacts")
            .into_iter()
            .filter(|c| c["contactid"] == created.id.to_string())
            .collect();
        assert_eq!(contacts.len(), 1, "batch size {batch_size}");
        assert_eq!(dv.stats().created["contacts"], 1, "created once");
        assert_accepted(&dv, 0);
        assert_eq!(contacts[0]["emailaddress1"], "nia@tailspin.example");
        assert_eq!(contacts[0]["firstname"], "Nia");
        assert_eq!(contacts[0]["lastname"], "Prospect");
        let emails = written_emails(&dv);
        assert_eq!(emails.len(), 2);
        for e in &emails {
            assert_eq!(
                party(e, 1)[0]["_partyid_contact_value"]["id"],
                created.id.to_string(),
                "the email binds the created contact"
            );
        }
        if batch_size > 1 {
            assert!(dv.stats().batches >= 1, "sent as $batch");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_category_set_on_an_item_never_seen_is_fetched_from_exchange_then_delivered() {
    let Pipeline {
        sim,
        dv,
        gw,
        client,
    } = pipeline(
        |sim| {
            format!(
                "[exchange]
ews_url = \"{sim}/EWS/Exchange.asmx\"
auth = \"basic\"
username = \"svc-trackgate\"
password = \"service-password\"
# The recorded-fixture simulator cannot be swept; this test is about the inline path.
[catchup]
enabled = false
"
            )
        },
        "",
    )
    .await;
    learn_inbox(&client, &gw).await;
    let before = sim.stats().requests;
    replay(&client, &gw.localhost_url(""), "ews-updateitem-categories").await;
    let decision = support::wait_for(
        Duration::from_secs(10),
        "the category decision",
        async || {
            gw.gateway
                .recent_decisions()
                .into_iter()
                .find(|d| &*d.operation == "UpdateItem")
        },
    )
    .await;
    assert!(
        decision.needs_enrichment && decision.crm_id.is_none(),
        "{decision:#?}"
    );
    // Delivery fetched the item (GetItem as Alex) and decided again with its Message-ID.
    let email = support::wait_for(Duration::from_secs(20), "the enriched email", async || {
        written_emails(&dv).into_iter().next()
    })
    .await;
    assert_eq!(
        email["activityid"], PAT_MESSAGE,
        "the id derived from the fetched Message-ID"
    );
    assert_eq!(
        party(&email, 1)[0]["_partyid_contact_value"]["id"],
        PAT_CONTACT
    );
    assert!(
        sim.stats().requests > before + 1,
        "the gateway called Exchange itself"
    );
    let m = metrics(&gw.admin("")).await;
    assert!(
        m.contains(r#"trackgate_delivery_enrichments_total{result="fetched"} 1"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_exchange_client_a_decision_needing_content_is_a_dead_letter_that_says_why() {
    let Pipeline {
        sim: _sim,
        dv,
        gw,
        client,
    } = pipeline(with_admin_token, "").await;
    learn_inbox(&client, &gw).await;
    replay(&client, &gw.localhost_url(""), "ews-updateitem-categories").await;
    let dead: Value = support::wait_for(Duration::from_secs(20), "the dead letter", async || {
        let v = dead_letters(&gw).await;
        (v.as_array().is_some_and(|a| !a.is_empty())).then_some(v)
    })
    .await;
    assert!(
        dead[0]["error"].as_str().unwrap().contains("[exchange]"),
        "{dead:#}"
    );
    assert!(written_emails(&dv).is_empty());
    // Delivery keeps the outcome, as the demo reports it.
    let kept = gw.gateway.recent_deliveries();
    assert!(
        matches!(
            kept.last().map(|d| &d.outcome),
            Some(trackgate::delivery::DeliveryOutcome::Dead { error }) if error.contains("[exchange]")
        ),
        "{kept:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exchange_client_fetches_as_the_mailbox_owner_with_oauth_or_basic() {
    use trackgate::common::ClientCredentials;
    use trackgate::exchange::{ExchangeAuth, ExchangeClient, ExchangeError, ExchangeSettings};
    use trackgate::simulate::{AuthMode, FixtureSet, SimulatorOptions};

    let dv = dataverse().await; // its token endpoint stands in for Entra ID
    // The stateful store: it answers for the mailbox impersonated and the item asked for.
    let store = std::sync::Arc::new(trackgate::simulate::mailbox::Store::embedded().unwrap());
    let mut options =
        SimulatorOptions::new("bearer", FixtureSet::embedded().unwrap()).with_store(store);
    options.auth = AuthMode::Bearer;
    let sim = support::simulator_with(options).await;
    let deliver = |to: &'static str, message_id: &'static str, body: &'static str| {
        let url = format!("{}/_sim/deliver", sim.url());
        async move {
            let answer =
                support::json_of(support::plain_client().post(url).json(&serde_json::json!({
                    "from": "pat.buyer@fabrikam.example", "to": [to],
                    "subject": "Seats", "body": body, "message_id": message_id,
                })))
                .await;
            answer["delivered"][0]["item_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let alex_item = deliver(
        "alex.seller@contoso.example",
        "<alex-quote@fabrikam.example>",
        "<p>A quote for 40 seats</p>",
    )
    .await;
    let kim_item = deliver(
        "kim.manager@contoso.example",
        "<kim-other@fabrikam.example>",
        "<p>Something else</p>",
    )
    .await;
    let oauth = |secret: &str| {
        ExchangeAuth::OAuth(ClientCredentials {
            token_url: dv.token_url(),
            client_id: CLIENT_ID.into(),
            client_secret: trackgate::common::Secret::new(secret),
            scope: "https://outlook.office365.com/.default".into(),
        })
    };
    let settings = |auth| ExchangeSettings {
        ews_url: Some(format!("{}/EWS/Exchange.asmx", sim.url())),
        graph_url: Some(sim.url()),
        auth,
        timeout: Duration::from_secs(10),
        concurrency: 4,
    };
    let client = ExchangeClient::new(reqwest::Client::new(), settings(oauth(CLIENT_SECRET)));
    let mailbox = "alex.seller@contoso.example";
    let ews = client
        .fetch(mailbox, &alex_item, false, true)
        .await
        .unwrap();
    assert_eq!(
        ews.message.internet_message_id.as_deref(),
        Some("alex-quote@fabrikam.example"),
        "the item asked for, from the mailbox impersonated"
    );
    assert_eq!(
        ews.message.from.unwrap().address.as_deref(),
        Some("pat.buyer@fabrikam.example")
    );
    let ews_body = ews
        .body
        .as_ref()
        .expect("the EWS body (t:Body, not soap:Body)");
    assert!(
        ews_body.content.contains("quote for 40 seats") && ews_body.content_type == "html",
        "what the description is made from under the full body policy: {ews_body:?}"
    );
    // An id first seen over Graph is fetched over Graph (`/users/<mailbox>/messages/<id>`),
    // with the same cached token.
    let graph = client.fetch(mailbox, &alex_item, true, true).await.unwrap();
    assert_eq!(
        graph.message.internet_message_id,
        ews.message.internet_message_id
    );
    let body = graph.body.expect("the body");
    assert!(body.content.contains("quote for 40 seats"), "{body:?}");
    assert_eq!(dv.tokens_issued(), 1, "one token for both calls");
    // Kim's own item is Kim's message; Alex's item is not in Kim's mailbox.
    let kim = "kim.manager@contoso.example";
    let other = client.fetch(kim, &kim_item, false, true).await.unwrap();
    assert_eq!(
        other.message.internet_message_id.as_deref(),
        Some("kim-other@fabrikam.example")
    );
    for graph in [false, true] {
        let error = client
            .fetch(kim, &alex_item, graph, true)
            .await
            .unwrap_err();
        assert!(!error.is_transient(), "{error}");
    }
    // Wrong credentials: a token error, worth retrying later (an operator fixes the secret).
    let refused = ExchangeClient::new(reqwest::Client::new(), settings(oauth("wrong-secret")));
    let error = refused
        .fetch(mailbox, &alex_item, false, true)
        .await
        .unwrap_err();
    assert!(matches!(error, ExchangeError::Token(_)), "{error}");
    assert!(error.is_transient());
    // Basic against a bearer-only Exchange: 401, not a message.
    let basic = ExchangeClient::new(
        reqwest::Client::new(),
        settings(ExchangeAuth::Basic {
            username: "svc".into(),
            password: trackgate::common::Secret::new("pw"),
        }),
    );
    assert!(matches!(
        basic.fetch(mailbox, &alex_item, false, true).await,
        Err(ExchangeError::Status(401))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_commands_reach_a_running_gateway_through_its_admin_listener() {
    let sim = support::simulator("sim").await;
    let dir = tempfile::tempdir().unwrap();
    // Another gateway on the machine listens on the admin address the configuration names;
    // ours runs with --admin elsewhere. The commands must ask ours (recorded in its data
    // directory), never the other one.
    let other_dir = tempfile::tempdir().unwrap();
    let other = support::GatewayProcess::start(&support::write_config(
        other_dir.path(),
        &format!("plaintext = true\n[upstreams]\news = \"{}\"\n", sim.url()),
    ));
    let admin_port = support::addr_of(&other.admin).port();
    let config = dir.path().join("trackgate.toml");
    std::fs::write(
        &config,
        format!(
            "[listener]\naddress = \"127.0.0.1:0\"\nplaintext = true\n[upstreams]\news = \"{}\"\n[admin]\naddress = \"127.0.0.1:{admin_port}\"\ntoken = \"{ADMIN_TOKEN}\"\n[storage]\ndata_dir = \"{}\"\n",
            sim.url(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let gateway = support::GatewayProcess::start_with(&config, &["--admin", "127.0.0.1:0"]);
    let client = support::plain_client();
    assert!(send(&client, &gateway.proxy, 3).await);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackgate"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let journal = support::wait_for(Duration::from_secs(20), "the journal entry", async || {
        let (code, out, err) = run(&["journal", "list"]);
        assert!(
            err.contains(&format!("source: gateway at {}", gateway.admin)),
            "{err}"
        );
        (code == Some(0) && out.contains("Burst 3")).then_some(out)
    })
    .await;
    let entries: Value = serde_json::from_str(&journal).unwrap();
    let id = entries[0]["email"]["id"].as_str().unwrap().to_owned();
    let (code, shown, _) = run(&["journal", "show", &id]);
    assert_eq!(code, Some(0));
    assert!(shown.contains("<burst.3@mail.contoso.example>"));
    // The journal entry is written before the outbox commits the delivery.
    support::wait_for(
        Duration::from_secs(10),
        "the delivery committed",
        async || {
            let (code, stats, _) = run(&["outbox", "stats"]);
            assert_eq!(code, Some(0));
            let stats: Value = serde_json::from_str(&stats).unwrap();
            (stats["delivered_keys"] == 1 && stats["pending"] == 0).then_some(())
        },
    )
    .await;
    let (code, _, err) = run(&["outbox", "retry", &Uuid::from_u128(42).to_string()]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("HTTP 404") && err.contains("no dead-letter record"),
        "{err}"
    );
    // Once the gateway is gone its record is stale, and the commands read the file.
    let mut gateway = gateway;
    gateway.signal("TERM");
    assert!(gateway.wait_exit(Duration::from_secs(30)).success());
    let (code, _, err) = run(&["outbox", "stats"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("source: ") && err.contains("outbox.redb"),
        "{err}"
    );
    drop(other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_every_decision_of_the_drained_traffic() {
    let sim = support::simulator("sim").await;
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config(
        dir.path(),
        &format!("plaintext = true\n[upstreams]\news = \"{}\"\n", sim.url()),
    );
    let mut gateway = support::GatewayProcess::start(&config);
    let client = support::plain_client();
    const N: usize = 50;
    for n in 0..N {
        assert!(send(&client, &gateway.proxy, n).await);
    }
    // Straight after the last answer: inspection may still hold some of them.
    gateway.signal("TERM");
    assert!(gateway.wait_exit(Duration::from_secs(30)).success());
    let stats = offline_outbox_stats(&config);
    let kept = stats["pending"].as_u64().unwrap() + stats["delivered_keys"].as_u64().unwrap();
    assert_eq!(
        kept as usize, N,
        "nothing acknowledged before SIGTERM is lost: {stats}"
    );
}
