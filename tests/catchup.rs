//! The catch-up sweep against the stateful simulator: mail that arrives with no client
//! connected is tracked within one interval, a server-side rule's filing into a tracked folder
//! is tracked by the folder rule, and the sweep resumes from its stored sync state after a
//! restart (starting over, without tracking anything twice, when Exchange forgot the state).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use trackgate::rules::{Decision, Reason};
use trackgate::simulate::ExchangeSimulator;
use trackgate::simulate::mailbox::Store;

use crate::support::{self, TestGateway, store_simulator, store_simulator_on};

/// A store the test can read, its simulator, and a gateway configuration on a fresh folder.
async fn process_setup() -> (
    Arc<Store>,
    ExchangeSimulator,
    tempfile::TempDir,
    std::path::PathBuf,
) {
    let store = Arc::new(Store::embedded().unwrap());
    let sim = store_simulator_on(store.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = process_config(dir.path(), &sim);
    (store, sim, dir, config)
}

fn extra(sim: &ExchangeSimulator) -> String {
    format!(
        "[listener]\nplaintext = true\n[exchange]\news_url = \"{}/EWS/Exchange.asmx\"\nauth = \"basic\"\nusername = 'CONTOSO\\svc-trackgate'\npassword = \"Example-Pa55-svc\"\n[catchup]\ninterval = \"1s\"\n",
        sim.url()
    )
}

/// The same over Microsoft Graph only, as for Exchange Online: the sweep reads `delta`.
fn graph_extra(sim: &ExchangeSimulator) -> String {
    let config = extra(sim).replace(
        &format!("ews_url = \"{}/EWS/Exchange.asmx\"", sim.url()),
        &format!("graph_url = \"{}\"", sim.url()),
    );
    assert!(!config.contains("ews_url"), "Graph only: {config}");
    config
}

/// Waits until every mailbox has been swept once.
async fn swept_once(gateway: &trackgate::app::Gateway) {
    let sweeper = gateway.catchup().expect("catch-up is on").clone();
    support::wait_for(
        Duration::from_secs(20),
        "a first sweep of every mailbox",
        async || {
            let status = sweeper.status();
            (!status.is_empty() && status.iter().all(|s| s.last_sweep_seconds_ago.is_some()))
                .then_some(())
        },
    )
    .await;
}

/// Mail from outside; returns where it landed (`{"delivered": [{"mailbox", "item_id"}]}`).
async fn deliver(sim: &ExchangeSimulator, message: serde_json::Value) -> serde_json::Value {
    let r = support::plain_client()
        .post(format!("{}/_sim/deliver", sim.url()))
        .json(&message)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// The sweep's decision about the message with this Message-ID.
async fn catch_up_decision(gateway: &trackgate::app::Gateway, message_id: &str) -> Decision {
    support::wait_for(
        Duration::from_secs(10),
        "the catch-up decision",
        async || {
            gateway.recent_decisions().into_iter().find(|d| {
                &*d.operation == "CatchUp" && d.internet_message_id.as_deref() == Some(message_id)
            })
        },
    )
    .await
}

/// The store simulator and a gateway that has swept every mailbox once.
async fn swept() -> (ExchangeSimulator, TestGateway) {
    let sim = store_simulator().await;
    let gw = support::gateway(&sim.url(), &extra(&sim)).await;
    swept_once(&gw.gateway).await;
    (sim, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_that_arrives_with_no_client_connected_is_tracked_by_the_next_sweep() {
    let (sim, gw) = swept().await;
    deliver(
        &sim,
        serde_json::json!({
            "from": "Pat Buyer <pat.buyer@fabrikam.example>",
            "to": ["alex.seller@contoso.example"],
            "subject": "Purchase order 4711",
            "message_id": "<po.4711@mail.fabrikam.example>",
        }),
    )
    .await;
    let d = catch_up_decision(&gw.gateway, "po.4711@mail.fabrikam.example").await;
    assert!(d.is_track(), "{d:#?}");
    assert_eq!(d.reason, Reason::SenderContact);
    let key = d.crm_id.unwrap();
    support::wait_for(Duration::from_secs(10), "the delivery", async || {
        gw.gateway
            .recent_deliveries()
            .iter()
            .any(|r| r.key == key)
            .then_some(())
    })
    .await;
    let status = support::get_text(&gw.admin("/catchup")).await;
    assert!(status.contains("alex.seller@contoso.example"), "{status}");
    shutdown(gw).await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_graph_delta_mail_that_arrives_with_no_client_connected_is_tracked_by_the_next_sweep()
{
    let sim = store_simulator().await;
    let gw = support::gateway(&sim.url(), &graph_extra(&sim)).await;
    swept_once(&gw.gateway).await;
    deliver(
        &sim,
        serde_json::json!({
            "from": "Pat Buyer <pat.buyer@fabrikam.example>",
            "to": ["alex.seller@contoso.example"],
            "subject": "Purchase order 4712",
            "message_id": "<po.4712@mail.fabrikam.example>",
        }),
    )
    .await;
    let d = catch_up_decision(&gw.gateway, "po.4712@mail.fabrikam.example").await;
    assert!(d.is_track(), "{d:#?}");
    assert_eq!(d.reason, Reason::SenderContact);
    assert_eq!(d.mailbox.as_deref(), Some("alex.seller@contoso.example"));
    shutdown(gw).await;
    sim.stop().await;
}

/// Jo's mailbox has no "process email received after": everything its first sync shows is
/// history, however many pages it takes (the sweep reads 100 changes a page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sweep_longer_than_a_page_tracks_none_of_the_history_over_ews_or_graph() {
    const HISTORY: usize = 150;
    for (transport, config) in [
        ("EWS", extra as fn(&ExchangeSimulator) -> String),
        ("Graph", graph_extra),
    ] {
        let sim = store_simulator().await;
        for n in 0..HISTORY {
            deliver(
                &sim,
                serde_json::json!({
                    "from": "Pat Buyer <pat.buyer@fabrikam.example>",
                    "to": ["jo.support@contoso.example"],
                    "subject": format!("Old thread {n}"),
                    "message_id": format!("<history.{n}@mail.fabrikam.example>"),
                }),
            )
            .await;
        }
        let gw = support::gateway(&sim.url(), &config(&sim)).await;
        swept_once(&gw.gateway).await;
        let history: Vec<Decision> = gw
            .gateway
            .recent_decisions()
            .into_iter()
            .filter(|d| {
                &*d.operation == "CatchUp"
                    && d.internet_message_id
                        .as_deref()
                        .is_some_and(|id| id.starts_with("history."))
            })
            .collect();
        assert_eq!(
            history.len(),
            HISTORY,
            "{transport}: every message seen once"
        );
        assert!(
            history
                .iter()
                .all(|d| d.reason == Reason::InitialSyncHistory),
            "{transport}: {:?}",
            history.iter().map(|d| d.reason).collect::<Vec<_>>()
        );
        shutdown(gw).await;
        sim.stop().await;
    }
}

async fn shutdown(gw: TestGateway) {
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_side_rule_filing_into_a_tracked_folder_is_tracked_by_the_folder_rule() {
    let (sim, gw) = swept().await;
    // A sender no CRM record knows: only the folder rule can track it.
    deliver(
        &sim,
        serde_json::json!({
            "from": "Stranger <someone@unknown.example>",
            "to": ["alex.seller@contoso.example"],
            "subject": "Fabrikam tender documents",
            "message_id": "<tender.1@unknown.example>",
            "folder": "Fabrikam deal",
        }),
    )
    .await;
    let d = catch_up_decision(&gw.gateway, "tender.1@unknown.example").await;
    assert!(d.is_track(), "{d:#?}");
    assert_eq!(d.reason, Reason::FolderRule);
    shutdown(gw).await;
    sim.stop().await;
}

/// The gateway binary's configuration on `dir`.
fn process_config(dir: &Path, sim: &ExchangeSimulator) -> std::path::PathBuf {
    let body = format!(
        "plaintext = true\n[upstreams]\news = \"{}\"\n{}",
        sim.url(),
        extra(sim).replace("[listener]\nplaintext = true\n", "")
    );
    support::write_config(dir, &body)
}

/// The gateway binary on `dir`: restarts are real process restarts.
fn gateway_process(dir: &Path, sim: &ExchangeSimulator) -> support::GatewayProcess {
    support::GatewayProcess::start(&process_config(dir, sim))
}

async fn admin_json(gateway: &support::GatewayProcess, path: &str) -> serde_json::Value {
    serde_json::from_str(&support::get_text(&format!("{}{path}", gateway.admin)).await).unwrap()
}

/// Waits until every mailbox has been swept once, as `GET /catchup` tells.
async fn process_swept_once(gateway: &support::GatewayProcess) {
    support::wait_for(
        Duration::from_secs(20),
        "a first sweep of every mailbox",
        async || {
            let status = admin_json(gateway, "/catchup").await;
            let list = status.as_array()?;
            (!list.is_empty() && list.iter().all(|m| !m["last_sweep_seconds_ago"].is_null()))
                .then_some(())
        },
    )
    .await;
}

/// Message-IDs the sweep decided about.
async fn swept_ids(gateway: &support::GatewayProcess) -> Vec<String> {
    admin_json(gateway, "/decisions")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["operation"] == "CatchUp")
        .filter_map(|d| d["internet_message_id"].as_str().map(str::to_owned))
        .collect()
}

async fn settled_stats(gateway: &support::GatewayProcess) -> serde_json::Value {
    support::wait_for(
        Duration::from_secs(10),
        "the outbox to settle",
        async || {
            let stats = admin_json(gateway, "/outbox/stats").await;
            (stats["pending"] == 0 && stats["in_flight"] == 0).then_some(stats)
        },
    )
    .await
}

/// Emails in the CRM (the journal sink holds one entry per CRM email).
async fn journal_len(gateway: &support::GatewayProcess) -> usize {
    admin_json(gateway, "/journal?limit=1000")
        .await
        .as_array()
        .map_or(0, Vec::len)
}

fn stop(mut gateway: support::GatewayProcess) {
    gateway.signal("TERM");
    assert!(gateway.wait_exit(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_resumes_from_its_sync_state_and_starts_over_when_exchange_forgot_it() {
    let sim = store_simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway_process(dir.path(), &sim);
    process_swept_once(&gateway).await;
    assert!(
        !swept_ids(&gateway).await.is_empty(),
        "the first sweep read the seeded mail"
    );
    settled_stats(&gateway).await;
    stop(gateway);

    // Restarted: the stored states say nothing is new, so only new mail is read.
    let gateway = gateway_process(dir.path(), &sim);
    process_swept_once(&gateway).await;
    deliver(
        &sim,
        serde_json::json!({
            "from": "Pat Buyer <pat.buyer@fabrikam.example>",
            "to": ["alex.seller@contoso.example"],
            "subject": "After the restart",
            "message_id": "<after.1@mail.fabrikam.example>",
        }),
    )
    .await;
    let only_new = support::wait_for(Duration::from_secs(10), "the new message", async || {
        let ids = swept_ids(&gateway).await;
        (!ids.is_empty()).then_some(ids)
    })
    .await;
    assert_eq!(only_new, ["after.1@mail.fabrikam.example"]);
    // Decided is not yet delivered: wait for its email before counting.
    support::wait_for(Duration::from_secs(10), "the new email", async || {
        let journal = admin_json(&gateway, "/journal?limit=1000").await;
        journal
            .as_array()?
            .iter()
            .any(|e| e["email"]["subject"] == "After the restart")
            .then_some(())
    })
    .await;
    settled_stats(&gateway).await;
    let emails_before = journal_len(&gateway).await;
    stop(gateway);

    // Exchange no longer knows the stored state: the sweep starts over from the cut-off, and
    // nothing already delivered is delivered again.
    {
        let states =
            trackgate::catchup::SyncStates::open(&dir.path().join("data/catchup.redb")).unwrap();
        states
            .put(
                "alex.seller@contoso.example",
                "inbox",
                Some("bm90IGEgc3RhdGU="),
            )
            .unwrap();
    }
    let gateway = gateway_process(dir.path(), &sim);
    process_swept_once(&gateway).await;
    let again = swept_ids(&gateway).await;
    assert!(
        again.contains(&"after.1@mail.fabrikam.example".to_owned()),
        "{again:?}"
    );
    let stats = settled_stats(&gateway).await;
    // One CRM email per message: a message decided again lands on the email it already has
    // (a correlated one may have its regarding written again, which changes nothing).
    assert_eq!(
        journal_len(&gateway).await,
        emails_before,
        "an email was written twice"
    );
    assert_eq!(stats["dead"], 0);
    stop(gateway);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_exchange_is_given_the_back_off_it_asks_for_then_swept() {
    let sim = store_simulator().await;
    let faults = |body: serde_json::Value| {
        let url = format!("{}/_sim/faults", sim.url());
        async move {
            let r = support::plain_client()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 204);
        }
    };
    faults(serde_json::json!({"server_busy": true, "retry_after": "0.5"})).await;
    let gw = support::gateway(&sim.url(), &extra(&sim)).await;
    let sweeper = gw.gateway.catchup().unwrap().clone();
    support::wait_for(
        Duration::from_secs(10),
        "a sweep told to back off",
        async || {
            sweeper
                .status()
                .iter()
                .any(|s| s.last_error.as_deref() == Some("busy: back off 500 ms"))
                .then_some(())
        },
    )
    .await;
    let metrics = support::get_text(&gw.admin("/metrics")).await;
    assert!(
        metrics.contains(r#"trackgate_catchup_sweeps_total{result="busy"}"#),
        "{metrics}"
    );
    faults(serde_json::json!({})).await;
    support::wait_for(Duration::from_secs(20), "every mailbox swept", async || {
        sweeper
            .status()
            .iter()
            .all(|s| s.last_error.is_none() && s.last_sweep_seconds_ago.is_some())
            .then_some(())
    })
    .await;
    shutdown(gw).await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catchup_command_shows_the_sweep_and_marks_a_mailbox() {
    let sim = store_simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = process_config(dir.path(), &sim);
    let gateway = support::GatewayProcess::start(&config);
    process_swept_once(&gateway).await;
    let (stdout, stderr) =
        support::run_trackgate(["catchup", "--config", config.to_str().unwrap(), "status"]);
    assert!(stderr.contains("source: gateway at"), "{stderr}");
    let status: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert!(
        status
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mailbox"] == "alex.seller@contoso.example"),
        "{status}"
    );
    let (stdout, _) = support::run_trackgate([
        "catchup",
        "--config",
        config.to_str().unwrap(),
        "run",
        "alex.seller@contoso.example",
    ]);
    assert!(String::from_utf8_lossy(&stdout).contains("marked"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackgate"))
        .args([
            "catchup",
            "--config",
            config.to_str().unwrap(),
            "run",
            "nobody@nowhere.example",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such mailbox"));
    stop(gateway);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_that_needs_enrichment_marks_its_mailbox_for_the_next_sweep() {
    let sim = store_simulator().await;
    // An interval no test waits for: only a mark can bring the next sweep.
    let config = extra(&sim).replace("interval = \"1s\"", "interval = \"1h\"");
    let gw = support::gateway(&sim.url(), &config).await;
    swept_once(&gw.gateway).await;
    let delivered = deliver(
        &sim,
        serde_json::json!({
            "from": "Pat Buyer <pat.buyer@fabrikam.example>",
            "to": ["alex.seller@contoso.example"],
            "subject": "Marked for a sweep",
            "message_id": "<marked.1@mail.fabrikam.example>",
        }),
    )
    .await;
    let id = delivered["delivered"][0]["item_id"].as_str().unwrap();
    // A client sets a category on a message the gateway never saw: the decision needs
    // enrichment, which marks Alex's mailbox.
    let update = format!(
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Body><m:UpdateItem ConflictResolution="AutoResolve" MessageDisposition="SaveOnly"><m:ItemChanges><t:ItemChange><t:ItemId Id="{id}"/><t:Updates><t:SetItemField><t:FieldURI FieldURI="item:Categories"/><t:Message><t:Categories><t:String>Tracked to Dynamics 365</t:String></t:Categories></t:Message></t:SetItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem></s:Body></s:Envelope>"#
    );
    let r = support::plain_client()
        .post(gw.url("/EWS/Exchange.asmx"))
        .header("X-AnchorMailbox", "alex.seller@contoso.example")
        .header("Content-Type", "text/xml; charset=utf-8")
        .body(update)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    catch_up_decision(&gw.gateway, "marked.1@mail.fabrikam.example").await;
    shutdown(gw).await;
    sim.stop().await;
}

/// Every "Burst" message in Alex's Sent Items (what reached Exchange, whether or not its
/// client heard back) has exactly one CRM email, and no other "Burst" email exists.
async fn every_send_in_the_crm_once(
    store: &Store,
    gateway: &support::GatewayProcess,
    at_least: usize,
) {
    let sent: std::collections::BTreeSet<String> = {
        let inner = store.lock();
        let alex = inner.mailbox(inner.mailbox_index("alex.seller@contoso.example").unwrap());
        let folder = alex.distinguished("sentitems").unwrap().key;
        alex.items_in(folder)
            .iter()
            .filter(|i| i.subject.starts_with("Burst "))
            .filter_map(|i| i.message_id.clone())
            .map(|id| id.trim_matches(['<', '>']).to_owned())
            .collect()
    };
    assert!(sent.len() >= at_least, "{} sent", sent.len());
    let journal = admin_json(gateway, "/journal?limit=10000").await;
    let tracked: Vec<String> = journal
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["email"]["subject"]
                .as_str()
                .is_some_and(|s| s.starts_with("Burst "))
        })
        .filter_map(|e| e["email"]["message_id"].as_str())
        .map(|id| id.trim_matches(['<', '>']).to_owned())
        .collect();
    let unique: std::collections::BTreeSet<String> = tracked.iter().cloned().collect();
    assert_eq!(unique.len(), tracked.len(), "a message has two CRM emails");
    let lost: Vec<&String> = sent.difference(&unique).collect();
    assert!(
        lost.is_empty(),
        "{} of {} sent never tracked: {lost:?}",
        lost.len(),
        sent.len()
    );
    assert_eq!(unique, sent);
}

/// Bursts of sends, each cut by kill -9; after a last start and its sweep, every message Alex
/// sent is in the CRM once — acknowledged or not, committed or not when the process died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_five_bursts_then_catch_up_loses_and_doubles_nothing() {
    const ROUNDS: usize = 5;
    const BURST: usize = 40;
    let (store, sim, _dir, config) = process_setup().await;
    for round in 0..ROUNDS {
        let gateway = support::GatewayProcess::start(&config);
        crate::delivery::kill_mid_burst(
            gateway,
            round * BURST..(round + 1) * BURST,
            8,
            crate::delivery::KillWhen::HalfAnswered,
        )
        .await;
    }
    let gateway = support::GatewayProcess::start(&config);
    process_swept_once(&gateway).await;
    let stats = settled_stats(&gateway).await;
    assert_eq!(stats["dead"], 0, "{stats}");
    every_send_in_the_crm_once(&store, &gateway, ROUNDS * BURST / 2).await;
    stop(gateway);
    sim.stop().await;
}

/// One mailbox's entry in `GET /catchup`.
async fn mailbox_status(gateway: &support::GatewayProcess, mailbox: &str) -> serde_json::Value {
    let all = admin_json(gateway, "/catchup").await;
    all.as_array()
        .unwrap()
        .iter()
        .find(|m| m["mailbox"] == mailbox)
        .cloned()
        .unwrap_or_else(|| panic!("{mailbox} in {all}"))
}

/// Alex sends through a gateway whose sweep waits an hour, until the traffic is written down.
async fn traffic_written_down(config: &Path) -> support::GatewayProcess {
    let gateway = support::GatewayProcess::start(config);
    process_swept_once(&gateway).await;
    crate::delivery::burst_and_wait(&gateway.proxy, 0..3, 1).await;
    support::wait_for(
        Duration::from_secs(10),
        "Alex's traffic written down",
        async || {
            let alex = mailbox_status(&gateway, "alex.seller@contoso.example").await;
            (alex["unswept_traffic"] == true).then_some(())
        },
    )
    .await;
    gateway
}

/// The start after a kill -9 sweeps the mailboxes that had traffic in the crash window for
/// that reason (`crash`), the others as mail no client fetched; after a clean stop nothing is
/// at risk and every mailbox is swept for the latter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_after_a_crash_sweeps_the_mailboxes_with_traffic_for_the_crash() {
    let sim = store_simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = process_config(dir.path(), &sim);
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("interval = \"1s\"", "interval = \"1h\""),
    )
    .unwrap();
    let cause = async |gateway: &support::GatewayProcess, mailbox: &str| {
        mailbox_status(gateway, mailbox).await["last_cause"].clone()
    };

    let mut crashed = traffic_written_down(&config).await;
    crashed.child.kill().unwrap();
    crashed.wait_exit(Duration::from_secs(10));
    let restarted = support::GatewayProcess::start(&config);
    process_swept_once(&restarted).await;
    assert_eq!(
        cause(&restarted, "alex.seller@contoso.example").await,
        "crash"
    );
    assert_eq!(
        cause(&restarted, "jo.support@contoso.example").await,
        "uninspected_client"
    );
    let alex = mailbox_status(&restarted, "alex.seller@contoso.example").await;
    assert_eq!(
        alex["unswept_traffic"], false,
        "the sweep covered it: {alex}"
    );
    stop(restarted);

    let cleanly = traffic_written_down(&config).await;
    stop(cleanly);
    let restarted = support::GatewayProcess::start(&config);
    process_swept_once(&restarted).await;
    assert_eq!(
        cause(&restarted, "alex.seller@contoso.example").await,
        "uninspected_client",
        "a clean stop committed everything"
    );
    stop(restarted);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_that_finds_nothing_new_costs_one_request() {
    let sim = store_simulator().await;
    // Only this test's own sweeps run after the first round.
    let config = extra(&sim).replace("interval = \"1s\"", "interval = \"1h\"");
    let gw = support::gateway(&sim.url(), &config).await;
    swept_once(&gw.gateway).await;
    let sweeper = gw.gateway.catchup().unwrap().clone();
    let alex = "alex.seller@contoso.example";
    // Exchange's times have whole seconds, so a probe also sees what changed in the second it
    // was taken: the cost falls to one request once the clock has moved past the last change.
    let one_request = async || {
        support::wait_for(
            Duration::from_secs(5),
            "a sweep of one request",
            async || {
                let before = sim.stats().requests;
                let found = sweeper.sweep(alex).await.ok()?;
                (sim.stats().requests - before == 1 && found == 0).then_some(())
            },
        )
        .await
    };
    one_request().await;
    // Something new: the probe says so and the folders are read.
    deliver(
        &sim,
        serde_json::json!({
            "from": "Pat Buyer <pat.buyer@fabrikam.example>",
            "to": [alex],
            "subject": "New since the probe",
            "message_id": "<new.1@mail.fabrikam.example>",
        }),
    )
    .await;
    let before = sim.stats().requests;
    assert_eq!(sweeper.sweep(alex).await.unwrap(), 1);
    assert!(sim.stats().requests - before > 1);
    one_request().await;
    shutdown(gw).await;
    sim.stop().await;
}

/// A burst larger than inspection's queue: copies are dropped (counted), each marks its mailbox,
/// and the sweep that follows tracks every message the dropped copies carried, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_dropped_under_a_burst_are_tracked_by_the_sweep_once() {
    const BURST: usize = 150;
    let (store, sim, _dir, config) = process_setup().await;
    // An interval no test waits for: only the marks dropped copies leave bring the sweep.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("interval = \"1s\"", "interval = \"1h\"");
    std::fs::write(
        &config,
        format!("{text}\n[inspect]\nqueue = 1\nworkers = 1\n"),
    )
    .unwrap();
    let gateway = support::GatewayProcess::start(&config);
    process_swept_once(&gateway).await;
    let sent = crate::delivery::burst_and_wait(&gateway.proxy, 0..BURST, 32).await;
    assert_eq!(sent, BURST, "every send answered");
    let metrics = support::get_text(&format!("{}/metrics", gateway.admin)).await;
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("trackgate_captures_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(dropped > 0, "the burst dropped no copy: {metrics}");
    // The next sweeps find what the dropped copies carried.
    support::wait_for(Duration::from_secs(30), "every send tracked", async || {
        let journal = admin_json(&gateway, "/journal?limit=10000").await;
        let n = journal
            .as_array()?
            .iter()
            .filter(|e| {
                e["email"]["subject"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("Burst "))
            })
            .count();
        (n >= BURST).then_some(())
    })
    .await;
    settled_stats(&gateway).await;
    every_send_in_the_crm_once(&store, &gateway, BURST).await;
    let metrics = support::get_text(&format!("{}/metrics", gateway.admin)).await;
    assert!(
        metrics.contains(r#"trackgate_catchup_found_total{cause="dropped"}"#),
        "{metrics}"
    );
    stop(gateway);
    sim.stop().await;
}
