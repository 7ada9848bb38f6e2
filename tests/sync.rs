//! CRM ⇄ Exchange synchronisation against both simulators (the strict Dataverse simulator and
//! the stateful Exchange simulator, over real sockets) and real redb files: filters select what
//! reaches Exchange, changes flow both ways by field, deletes follow §5.1, the link survives
//! restarts, CRM mail is sent exactly once across a kill -9, Exchange's back-off is honoured.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use trackgate::app::{self, Gateway};
use trackgate::config::RawConfig;
use trackgate::simulate::dataverse::{DataverseOptions, DataverseSimulator};
use trackgate::simulate::mailbox::{Item, Store};
use trackgate::simulate::{ExchangeSimulator, FixtureSet, SimulatorOptions};

use crate::support;

const ALEX: &str = "alex.seller@contoso.example";
const ALEX_ID: &str = "00000000-0000-4000-8000-0000000000a1";
const JO_ID: &str = "00000000-0000-4000-8000-0000000000a2";
const APPOINTMENT: &str = "00000000-0000-4000-8000-0000000000e1";
const TASK: &str = "00000000-0000-4000-8000-0000000000e2";
const PAT: &str = "00000000-0000-4000-8000-0000000000c1";
const FABRIKAM: &str = "00000000-0000-4000-8000-0000000000c2";
const TASK_FILTER: &str = "00000000-0000-4000-8000-0000000000d7";

struct World {
    store: Arc<Store>,
    exchange: ExchangeSimulator,
    dataverse: DataverseSimulator,
    dir: tempfile::TempDir,
}

async fn world() -> World {
    trackgate::tls::install_crypto_provider();
    let store = Arc::new(Store::embedded().unwrap());
    let exchange = ExchangeSimulator::start(
        "127.0.0.1:0".parse().unwrap(),
        SimulatorOptions::new("sync", FixtureSet::embedded().unwrap()).with_store(store.clone()),
    )
    .await
    .unwrap();
    let directory: trackgate::directory::DirectoryDocument =
        toml::from_str(trackgate::directory::file::EMBEDDED_EXAMPLE).unwrap();
    let dataverse = DataverseSimulator::start(
        "127.0.0.1:0".parse().unwrap(),
        DataverseOptions {
            seed: Some(directory),
            ..DataverseOptions::default()
        },
    )
    .await
    .unwrap();
    World {
        store,
        exchange,
        dataverse,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl World {
    /// The gateway's configuration: the directory from Dataverse, EWS for the service side,
    /// synchronisation on with an interval long enough that only the test runs it.
    fn config_text(&self, extra: &str) -> String {
        format!(
            r#"
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[upstreams]
ews = "{exchange}"
[storage]
data_dir = "{data}"
[directory]
source = "dataverse"
[directory.dataverse]
startup_wait = "20s"
[crm]
sink = "dataverse"
[crm.dataverse]
url = "{dataverse}"
[catchup]
enabled = false
[exchange]
ews_url = "{exchange}/EWS/Exchange.asmx"
auth = "basic"
username = 'CONTOSO\svc-trackgate'
password = "Example-Pa55-svc"
[sync]
enabled = true
interval = "1h"
tick = "1h"
{extra}
"#,
            exchange = self.exchange.url(),
            dataverse = self.dataverse.url(),
            data = self.dir.path().join("data").display(),
        )
    }

    /// The gateway, once the round its scheduler runs at start is over (every synchronising
    /// mailbox has run once), so that what the test does next is not raced by it.
    async fn gateway(&self) -> Gateway {
        let config = RawConfig::from_toml(&self.config_text(""), "sync test", Vec::new())
            .and_then(|raw| raw.validate(self.dir.path()))
            .unwrap();
        let gateway = app::start(config).await.unwrap();
        let syncer = gateway.sync().expect("synchronisation runs").clone();
        support::wait_for(Duration::from_secs(30), "the start-up round", async || {
            let status = syncer.status().await;
            (!status.is_empty() && status.iter().all(|s| s.last_result.is_some())).then_some(())
        })
        .await;
        gateway
    }

    /// The items of a distinguished folder of a mailbox.
    fn items(&self, mailbox: &str, folder: &str) -> Vec<Item> {
        let inner = self.store.lock();
        let m = inner.mailbox_index(mailbox).unwrap();
        let mb = inner.mailbox(m);
        let key = mb.distinguished(folder).unwrap().key;
        mb.items_in(key).into_iter().cloned().collect()
    }

    /// The linked item of this subject (the seeded mailboxes hold unlinked items too).
    fn item(&self, mailbox: &str, folder: &str, subject: &str) -> Option<Item> {
        self.items(mailbox, folder)
            .into_iter()
            .find(|i| i.subject == subject && linked(i).is_some())
    }

    /// Changes an item as Outlook would (a new change key, a later modification time).
    fn edit(&self, mailbox: &str, id: &str, change: impl FnOnce(&mut Item)) {
        let mut inner = self.store.lock();
        let (m, key) = inner.find_item(id).unwrap();
        assert_eq!(inner.mailbox(m).address, mailbox);
        inner.update(m, key, change).unwrap();
    }

    fn delete(&self, id: &str) {
        let mut inner = self.store.lock();
        let (m, key) = inner.find_item(id).unwrap();
        inner.remove(m, key).unwrap();
    }

    fn row(&self, set: &str, key: &str, id: &str) -> Map<String, Value> {
        self.dataverse
            .records(set)
            .into_iter()
            .find(|r| r[key] == id)
            .unwrap_or_else(|| panic!("no {set} row {id}"))
    }

    /// Writes a row over the Web API, as a CRM user's change would.
    async fn patch(&self, set: &str, id: &str, body: Value) {
        let response = reqwest::Client::new()
            .patch(format!(
                "{}/api/data/v9.2/{set}({id})",
                self.dataverse.url()
            ))
            .header("If-Match", "*")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert!(
            status.is_success(),
            "{status}: {}",
            response.text().await.unwrap()
        );
    }

    /// An Outlook filter of Alex's (a saved view of `querytype` 256), active.
    fn seed_filter(&self, id: &str, entity: &str, name: &str, fetchxml: &str) {
        let mut filter = Map::new();
        filter.insert("name".into(), json!(name));
        filter.insert("returnedtypecode".into(), json!(entity));
        filter.insert("querytype".into(), json!(256));
        filter.insert("statecode".into(), json!(0));
        filter.insert("fetchxml".into(), json!(fetchxml));
        filter.insert(
            "_ownerid_value".into(),
            json!({"set": "systemusers", "id": ALEX_ID}),
        );
        self.dataverse
            .seed_record("userqueries", id.parse().unwrap(), filter);
    }

    async fn stop(self) {
        self.exchange.stop().await;
        self.dataverse.stop().await;
    }
}

/// A run of Alex's mailbox after the directory has read Dataverse again.
async fn sync_alex(gateway: &Gateway) -> Value {
    gateway.refresh_directory().await.unwrap();
    let syncer = gateway.sync().expect("synchronisation runs");
    syncer.request(ALEX).unwrap();
    syncer.round().await;
    let status = syncer.status().await;
    let alex = status
        .iter()
        .find(|s| s.mailbox == ALEX)
        .expect("Alex syncs");
    assert_eq!(alex.last_result.as_deref(), Some("ok"), "{alex:?}");
    serde_json::to_value(alex).unwrap()
}

fn linked(item: &Item) -> Option<String> {
    item.extended
        .iter()
        .find(|p| p.key.name.as_deref() == Some("trackgate.crm"))
        .map(|p| p.value.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filters_select_what_reaches_exchange_and_rows_leaving_them_are_deleted_there() {
    let w = world().await;
    // A second contact filter of Alex's, OR-ed with "My Active Contacts": Fabrikam's people,
    // whoever owns them; and a contact of Jo's at Fabrikam that only this filter selects.
    let second = "00000000-0000-4000-8000-0000000000d6";
    let dana = "00000000-0000-4000-8000-0000000000c6";
    w.seed_filter(
        second,
        "contact",
        "Fabrikam people",
        &format!(r#"<fetch><entity name="contact"><filter><condition attribute="parentcustomerid" operator="eq" value="{FABRIKAM}"/></filter></entity></fetch>"#),
    );
    let mut row = Map::new();
    row.insert("firstname".into(), json!("Dana"));
    row.insert("lastname".into(), json!("Partner"));
    row.insert("fullname".into(), json!("Dana Partner"));
    row.insert("emailaddress1".into(), json!("dana@fabrikam.example"));
    row.insert("statecode".into(), json!(0));
    row.insert(
        "_ownerid_value".into(),
        json!({"set": "systemusers", "id": JO_ID}),
    );
    row.insert(
        "_parentcustomerid_value".into(),
        json!({"set": "accounts", "id": FABRIKAM}),
    );
    w.dataverse
        .seed_record("contacts", dana.parse().unwrap(), row);

    let gateway = w.gateway().await;
    let report = sync_alex(&gateway).await;
    assert_eq!(report["linked"], 4, "{report}");
    let meeting = w
        .item(ALEX, "calendar", "Fabrikam renewal review")
        .expect("the appointment is in Alex's calendar");
    assert_eq!(
        linked(&meeting).as_deref(),
        Some(&*format!("appointment:{APPOINTMENT}"))
    );
    assert_eq!(
        meeting
            .start
            .map(trackgate::common::time::format_seconds)
            .as_deref(),
        Some("2026-12-10T14:00:00Z")
    );
    assert_eq!(
        meeting
            .extra
            .get("LegacyFreeBusyStatus")
            .map(String::as_str),
        Some("Busy")
    );
    let pat = w
        .item(ALEX, "contacts", "Pat Buyer")
        .expect("Pat in Alex's contacts");
    assert_eq!(pat.given_name.as_deref(), Some("Pat"));
    assert_eq!(pat.surname.as_deref(), Some("Buyer"));
    assert_eq!(pat.emails, ["pat.buyer@fabrikam.example"]);
    assert_eq!(
        pat.company.as_deref(),
        Some("Fabrikam"),
        "synccontactcompany"
    );
    assert!(
        w.item(ALEX, "contacts", "Dana Partner").is_some(),
        "the second filter's row"
    );
    let task = w
        .item(ALEX, "tasks", "Send Fabrikam the renewal proposal")
        .expect("the task in Alex's tasks");
    assert_eq!(
        task.due
            .map(trackgate::common::time::format_seconds)
            .as_deref(),
        Some("2026-12-09T17:00:00Z")
    );
    // Jo has no filters of her own: the org's template ("My Outlook Contacts") selects the
    // contacts she owns — Dana — and nothing else.
    gateway
        .sync()
        .unwrap()
        .request("jo.support@contoso.example")
        .unwrap();
    gateway.sync().unwrap().round().await;
    let jo_linked: Vec<String> = ["calendar", "contacts", "tasks"]
        .iter()
        .flat_map(|f| w.items("jo.support@contoso.example", f))
        .filter_map(|i| linked(&i))
        .collect();
    assert_eq!(jo_linked, [format!("contact:{dana}")]);

    // Out of the filters: the second filter switched off (Dana goes), the task filter off
    // (no enabled task filter: no task syncs), Pat made inactive (out of "My Active
    // Contacts").
    w.patch(
        "userqueries",
        second,
        json!({"statecode": 1, "statuscode": 2}),
    )
    .await;
    w.patch(
        "userqueries",
        TASK_FILTER,
        json!({"statecode": 1, "statuscode": 2}),
    )
    .await;
    w.patch("contacts", PAT, json!({"statecode": 1, "statuscode": 2}))
        .await;
    let report = sync_alex(&gateway).await;
    assert_eq!(report["last_report"]["deleted_in_exchange"], 3, "{report}");
    assert!(w.item(ALEX, "contacts", "Dana Partner").is_none());
    assert!(w.item(ALEX, "contacts", "Pat Buyer").is_none());
    assert!(
        w.item(ALEX, "tasks", "Send Fabrikam the renewal proposal")
            .is_none()
    );
    assert!(
        w.item(ALEX, "calendar", "Fabrikam renewal review")
            .is_some()
    );
    // In again: Pat active.
    w.patch("contacts", PAT, json!({"statecode": 0, "statuscode": 1}))
        .await;
    sync_alex(&gateway).await;
    assert!(w.item(ALEX, "contacts", "Pat Buyer").is_some());
    gateway.shutdown().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_flow_both_ways_field_by_field_and_a_restart_duplicates_nothing() {
    let w = world().await;
    let gateway = w.gateway().await;
    sync_alex(&gateway).await;
    let meeting = w.item(ALEX, "calendar", "Fabrikam renewal review").unwrap();
    let task = w
        .item(ALEX, "tasks", "Send Fabrikam the renewal proposal")
        .unwrap();

    // In the CRM: the meeting moves and gets a location and a high priority.
    w.patch(
        "appointments",
        APPOINTMENT,
        json!({"scheduledstart": "2026-12-11T09:00:00Z", "scheduledend": "2026-12-11T10:00:00Z",
               "location": "Fabrikam HQ", "prioritycode": 2}),
    )
    .await;
    // In Outlook: the task is renamed, half done, and its notes written.
    w.edit(ALEX, &task.id, |t| {
        t.subject = "Send Fabrikam the signed proposal".into();
        t.extra.insert("PercentComplete".into(), "50".into());
        t.status = Some("InProgress".into());
        t.body = "Legal approved the terms.".into();
    });
    let report = sync_alex(&gateway).await;
    assert_eq!(report["last_report"]["updated_in_exchange"], 1, "{report}");
    assert_eq!(report["last_report"]["updated_in_crm"], 1, "{report}");
    let moved = w.item(ALEX, "calendar", "Fabrikam renewal review").unwrap();
    assert_eq!(moved.id, meeting.id, "updated in place");
    assert_eq!(
        moved
            .start
            .map(trackgate::common::time::format_seconds)
            .as_deref(),
        Some("2026-12-11T09:00:00Z")
    );
    assert_eq!(moved.location.as_deref(), Some("Fabrikam HQ"));
    assert_eq!(moved.importance.as_deref(), Some("High"));
    let row = w.row("tasks", "activityid", TASK);
    assert_eq!(
        row["subject"], "Send Fabrikam the signed proposal",
        "{row:?}"
    );
    assert_eq!(row["percentcomplete"], 50);
    assert_eq!(row["description"], "Legal approved the terms.");
    assert_eq!(
        (row["statecode"].clone(), row["statuscode"].clone()),
        (json!(0), json!(3))
    );

    // A conflict: both sides change the subject; the later change wins.
    w.patch(
        "appointments",
        APPOINTMENT,
        json!({"subject": "Renewal review (CRM)"}),
    )
    .await;
    // The Outlook edit is the later one: the simulated Exchange's clock a minute ahead for it.
    w.store.lock().clock = Some(trackgate::common::time::now_ms() as i64 / 1000 + 60);
    w.edit(ALEX, &meeting.id, |m| {
        m.subject = "Renewal review (Outlook)".into()
    });
    w.store.lock().clock = None;
    let report = sync_alex(&gateway).await;
    assert_eq!(report["last_report"]["conflicts"], 1, "{report}");
    assert_eq!(
        w.row("appointments", "activityid", APPOINTMENT)["subject"],
        "Renewal review (Outlook)"
    );

    // A restart with the link file gone: the items are found by their link, nothing doubles.
    gateway.shutdown().await;
    std::fs::remove_file(w.dir.path().join("data/sync.redb")).unwrap();
    let gateway = w.gateway().await;
    let report = sync_alex(&gateway).await;
    assert_eq!(report["last_report"]["created_in_exchange"], 0, "{report}");
    assert_eq!(report["linked"], 3, "{report}");
    for folder in ["calendar", "contacts", "tasks"] {
        let mut links: Vec<String> = w.items(ALEX, folder).iter().filter_map(linked).collect();
        let before = links.len();
        links.dedup();
        assert_eq!(links.len(), before, "one item per row in {folder}");
    }
    assert_eq!(w.dataverse.records("appointments").len(), 1);
    gateway.shutdown().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_follow_the_rules_and_tracked_outlook_items_reach_the_crm() {
    let w = world().await;
    let gateway = w.gateway().await;
    sync_alex(&gateway).await;
    // A task deleted in Outlook is deleted in the CRM; a contact only unlinked; a future open
    // appointment Alex organizes is deleted in the CRM too.
    let task = w
        .item(ALEX, "tasks", "Send Fabrikam the renewal proposal")
        .unwrap();
    let pat = w.item(ALEX, "contacts", "Pat Buyer").unwrap();
    w.delete(&task.id);
    w.delete(&pat.id);
    // A new Outlook appointment given the tracking category.
    let calendar = {
        let inner = w.store.lock();
        let m = inner.mailbox_index(ALEX).unwrap();
        inner.mailbox(m).distinguished("calendar").unwrap().key
    };
    {
        let mut inner = w.store.lock();
        let m = inner.mailbox_index(ALEX).unwrap();
        let item = Item {
            kind: Some(trackgate::simulate::mailbox::Kind::CalendarItem),
            item_class: "IPM.Appointment".into(),
            subject: "Lunch with Pat".into(),
            categories: vec!["Tracked to Dynamics 365".into()],
            start: Some(1_797_000_000),
            end: Some(1_797_003_600),
            location: Some("Bistro".into()),
            ..Item::default()
        };
        inner
            .insert(
                m,
                trackgate::simulate::mailbox::NewItem {
                    item,
                    folder: calendar,
                },
            )
            .unwrap();
    }
    let report = sync_alex(&gateway).await;
    let r = &report["last_report"];
    assert_eq!(
        (
            r["deleted_in_crm"].clone(),
            r["unlinked"].clone(),
            r["created_in_crm"].clone()
        ),
        (json!(1), json!(1), json!(1)),
        "{report}"
    );
    assert!(
        w.dataverse.records("tasks").is_empty(),
        "the task row is deleted"
    );
    assert_eq!(
        w.dataverse.records("contacts").len(),
        1,
        "Pat stays in the CRM"
    );
    assert_eq!(r["created_in_exchange"], 0, "{report}");
    assert!(
        w.item(ALEX, "contacts", "Pat Buyer").is_none(),
        "a contact the user deleted in Outlook is not brought back while it stays selected"
    );
    let lunch = w
        .dataverse
        .records("appointments")
        .into_iter()
        .find(|a| a["subject"] == "Lunch with Pat")
        .expect("the tracked appointment is in the CRM");
    assert_eq!(lunch["location"], "Bistro");
    assert_eq!(lunch["_ownerid_value"]["id"], ALEX_ID);
    let item = w.item(ALEX, "calendar", "Lunch with Pat").unwrap();
    assert!(
        linked(&item).is_some_and(|l| l.starts_with("appointment:")),
        "linked back"
    );
    // A second run changes nothing on either side.
    let report = sync_alex(&gateway).await;
    let r = &report["last_report"];
    for counter in [
        "created_in_exchange",
        "created_in_crm",
        "updated_in_exchange",
        "updated_in_crm",
        "deleted_in_exchange",
        "deleted_in_crm",
    ] {
        assert_eq!(r[counter], 0, "{counter}: {report}");
    }
    // Alex's appointment filter switched off: the CRM's appointment leaves his calendar; the
    // one he tracked from Outlook stays (no filter brought it).
    w.patch(
        "userqueries",
        "00000000-0000-4000-8000-0000000000d8",
        json!({"statecode": 1, "statuscode": 2}),
    )
    .await;
    sync_alex(&gateway).await;
    assert!(
        w.item(ALEX, "calendar", "Fabrikam renewal review")
            .is_none()
    );
    assert!(w.item(ALEX, "calendar", "Lunch with Pat").is_some());
    gateway.shutdown().await;
    w.stop().await;
}

/// A CRM email in Pending Send goes out through Alex's mailbox once: the gateway is killed
/// (SIGKILL) after the send while Dataverse refuses to mark it Sent; the next start finds the
/// sent copy by its link and only marks the email Sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_send_email_is_sent_once_and_marked_sent_across_a_kill() {
    use trackgate::simulate::dataverse::{DataverseFaults, Fail, RequestKind};
    let w = world().await;
    let email = "00000000-0000-4000-8000-0000000000ee";
    let mut row = Map::new();
    row.insert("subject".into(), json!("Your renewal quote"));
    row.insert("description".into(), json!("<p>Here it is.</p>"));
    row.insert("directioncode".into(), json!(true));
    row.insert("statecode".into(), json!(1));
    row.insert("statuscode".into(), json!(6));
    row.insert("trackingtoken".into(), json!("CRM:0001001"));
    row.insert(
        "_ownerid_value".into(),
        json!({"set": "systemusers", "id": ALEX_ID}),
    );
    row.insert(
        "email_activity_parties".into(),
        json!([{"participationtypemask": 2, "addressused": "jo.support@contoso.example"}]),
    );
    w.dataverse
        .seed_record("emails", email.parse().unwrap(), row);
    w.dataverse.set_faults(DataverseFaults {
        fail: Some(Fail {
            count: 1000,
            status: 503,
            only: Some(RequestKind::Update),
        }),
        ..DataverseFaults::default()
    });
    let config = w.dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        w.config_text("tick = \"200ms\"")
            .replace("tick = \"1h\"\n", ""),
    )
    .unwrap();
    let gateway = support::GatewayProcess::start(&config);
    support::wait_for(
        Duration::from_secs(30),
        "the email sent through Alex's mailbox",
        async || {
            w.items("jo.support@contoso.example", "inbox")
                .iter()
                .any(|i| i.subject == "Your renewal quote CRM:0001001")
                .then_some(())
        },
    )
    .await;
    let mut gateway = gateway;
    gateway.child.kill().unwrap();
    gateway.wait_exit(Duration::from_secs(10));
    assert_eq!(
        w.row("emails", "activityid", email)["statuscode"],
        6,
        "not yet marked"
    );
    w.dataverse.set_faults(DataverseFaults::default());
    let restarted = support::GatewayProcess::start(&config);
    // Marked Sent first, then reopened to write the Message-ID and closed again: wait for
    // the end of that, not its first step.
    let sent = support::wait_for(
        Duration::from_secs(30),
        "the email marked Sent with its Message-ID",
        async || {
            let row = w.row("emails", "activityid", email);
            (row["statuscode"] == 3 && row.get("messageid").is_some_and(Value::is_string))
                .then_some(row)
        },
    )
    .await;
    let delivered: Vec<Item> = w
        .items("jo.support@contoso.example", "inbox")
        .into_iter()
        .filter(|i| i.subject == "Your renewal quote CRM:0001001")
        .collect();
    assert_eq!(delivered.len(), 1, "sent exactly once");
    assert_eq!(
        sent["messageid"].as_str(),
        delivered[0].message_id.as_deref()
    );
    let copies = w
        .items(ALEX, "sentitems")
        .into_iter()
        .filter(|i| linked(i).as_deref() == Some(&*format!("email:{email}")))
        .count();
    assert_eq!(copies, 1);
    drop(restarted);
    w.stop().await;
}

/// Exchange's `ErrorServerBusy` back-off is honoured: the mailbox is not asked again before
/// it ends, the run counts as busy, and once Exchange answers the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_busy_is_honoured_for_its_back_off_and_the_run_completes_after() {
    let w = world().await;
    let gateway = w.gateway().await;
    let syncer = gateway.sync().unwrap();
    gateway.refresh_directory().await.unwrap();
    w.exchange.set_faults(trackgate::simulate::Faults {
        server_busy: true,
        retry_after: Some("45".into()),
        ..Default::default()
    });
    syncer.request(ALEX).unwrap();
    syncer.round().await;
    let status = syncer.status().await;
    let alex = status.iter().find(|s| s.mailbox == ALEX).unwrap();
    assert_eq!(
        alex.last_result.as_deref(),
        Some("exchange busy: back off 45000 ms")
    );
    assert!(
        alex.next_run_in_seconds.is_some_and(|s| s >= 44),
        "not before the back-off ends: {alex:?}"
    );
    // While it lasts, a round asks Exchange nothing for Alex.
    w.exchange.set_faults(Default::default());
    let before = w.exchange.stats().requests;
    syncer.round().await;
    assert_eq!(
        w.exchange.stats().requests,
        before,
        "no request inside the back-off"
    );
    // Asked to run (an operator's `sync run`), it completes.
    w.patch(
        "appointments",
        APPOINTMENT,
        json!({"location": "Fabrikam HQ"}),
    )
    .await;
    sync_alex(&gateway).await;
    let meeting = w.item(ALEX, "calendar", "Fabrikam renewal review").unwrap();
    assert_eq!(meeting.location.as_deref(), Some("Fabrikam HQ"));
    let metrics = reqwest::get(format!("{}/metrics", gateway.admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"sync_runs_total{result="busy"}"#),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"sync_items_total{kind="appointment",direction="to_exchange",action="create"} 1"#
    ));
    gateway.shutdown().await;
    w.stop().await;
}

/// A phone call (like a fax or a letter) selected by a filter becomes an Outlook task; done in
/// Outlook, it is completed in the CRM with its own table's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_call_becomes_an_outlook_task_and_completes_back_in_the_crm() {
    let w = world().await;
    let call = "00000000-0000-4000-8000-0000000000e5";
    w.seed_filter(
        "00000000-0000-4000-8000-0000000000d5",
        "phonecall",
        "My Phone Calls",
        r#"<fetch><entity name="phonecall"><filter><condition attribute="ownerid" operator="eq-userid"/></filter></entity></fetch>"#,
    );
    let mut row = Map::new();
    row.insert("subject".into(), json!("Call Pat about the renewal"));
    row.insert("scheduledend".into(), json!("2026-12-08T16:00:00Z"));
    row.insert("statecode".into(), json!(0));
    row.insert("statuscode".into(), json!(1));
    row.insert(
        "_ownerid_value".into(),
        json!({"set": "systemusers", "id": ALEX_ID}),
    );
    w.dataverse
        .seed_record("phonecalls", call.parse().unwrap(), row);
    let gateway = w.gateway().await;
    sync_alex(&gateway).await;
    let task = w
        .item(ALEX, "tasks", "Call Pat about the renewal")
        .expect("the phone call is an Outlook task");
    assert_eq!(
        linked(&task).as_deref(),
        Some(&*format!("phonecall:{call}"))
    );
    assert_eq!(
        task.due
            .map(trackgate::common::time::format_seconds)
            .as_deref(),
        Some("2026-12-08T16:00:00Z")
    );
    w.edit(ALEX, &task.id, |t| t.status = Some("Completed".into()));
    let report = sync_alex(&gateway).await;
    assert_eq!(report["last_report"]["updated_in_crm"], 1, "{report}");
    let row = w.row("phonecalls", "activityid", call);
    assert_eq!(
        (row["statecode"].clone(), row["statuscode"].clone()),
        (json!(1), json!(2)),
        "completed, with the phone call's own default status (Made)"
    );
    gateway.shutdown().await;
    w.stop().await;
}
