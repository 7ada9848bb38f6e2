//! The Dataverse directory source end to end: a gateway with no directory file loads the
//! organization from the Dataverse simulator (paged, with change tracking), refreshes by delta,
//! keeps its last snapshot through an outage, restarts from the persisted replica while
//! Dataverse is down, and checks for an existing record before an auto-create.

use std::time::Duration;

use serde_json::{Map, Value, json};
use trackgate::app::{self, Gateway};
use trackgate::directory::model::{Contact, DirectoryDocument, MailboxTrackingFolder};
use trackgate::directory::tables;
use trackgate::inspect::Observation;
use trackgate::rules::{Decision, Mode};
use trackgate::simulate::dataverse::DataverseFaults;
use trackgate::simulate::{DataverseOptions, DataverseSimulator};
use uuid::Uuid;

use crate::support;

const CLIENT_ID: &str = "trackgate-test";
const CLIENT_SECRET: &str = "test-secret-0123456789";
pub(crate) const ALEX: &str = "00000000-0000-4000-8000-0000000000a1";
const KIM: &str = "00000000-0000-4000-8000-0000000000a3";
const JO: &str = "00000000-0000-4000-8000-0000000000a2";
const ALEX_MAILBOX: &str = "00000000-0000-4000-8000-0000000000f1";
const PAT_CONTACT: &str = "00000000-0000-4000-8000-0000000000c1";
const FABRIKAM: &str = "00000000-0000-4000-8000-0000000000c2";
const LEE_LEAD: &str = "00000000-0000-4000-8000-0000000000c3";
const TRACKED_FOLDER: &str = "AAMkADEzTrackedFolderAAA=";

fn uuid(text: &str) -> Uuid {
    Uuid::parse_str(text).unwrap()
}

pub(crate) fn contoso() -> DirectoryDocument {
    toml::from_str(trackgate::directory::file::EMBEDDED_EXAMPLE).unwrap()
}

/// `n` more contacts, owned by Alex (`owned`) or by someone who is not a user.
fn extra_contacts(doc: &mut DirectoryDocument, n: usize, owned: bool) {
    let owner = if owned {
        uuid(ALEX)
    } else {
        Uuid::from_u128(0xdead)
    };
    for i in 0..n {
        doc.contacts.push(Contact {
            contactid: Uuid::from_u128(0x1000 + i as u128 + if owned { 0 } else { 0x100 }),
            fullname: Some(format!("Extra {i}")),
            emailaddress1: Some(format!("extra{i}.{owned}@customers.example")),
            ownerid: Some(owner),
            ..Contact::default()
        });
    }
}

pub(crate) async fn dataverse(doc: DirectoryDocument) -> DataverseSimulator {
    DataverseSimulator::start(
        "127.0.0.1:0".parse().unwrap(),
        DataverseOptions {
            credentials: Some((CLIENT_ID.into(), CLIENT_SECRET.into())),
            seed: Some(doc),
            ..DataverseOptions::default()
        },
    )
    .await
    .unwrap()
}

/// A gateway whose directory and CRM are the Dataverse simulator (no directory file).
pub(crate) fn config_text(dv_url: &str, token_url: &str, extra: &str) -> String {
    format!(
        "[directory]\nsource = \"dataverse\"\n[directory.dataverse]\npage_size = 10\nrefresh_interval = \"1h\"\nstartup_wait = \"5s\"\n{extra}\n[crm]\nsink = \"dataverse\"\n[crm.dataverse]\nurl = \"{dv_url}\"\ntoken_url = \"{token_url}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n[delivery]\nbackoff_base = \"100ms\"\nbackoff_max = \"1s\"\n"
    )
}

async fn start_in(dir: &std::path::Path, dv_url: &str, token_url: &str, extra: &str) -> Gateway {
    trackgate::tls::install_crypto_provider();
    // A restart in the same process: the previous gateway's outbox threads close the file as
    // they exit, just after its shutdown returns (as in the outbox's own restart test).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // No Exchange is needed: the decisions are asked of the engine directly.
        let config = support::config(
            dir,
            "http://127.0.0.1:9",
            &config_text(dv_url, token_url, extra),
        );
        match app::start(config).await {
            Err(app::AppError::Outbox(trackgate::outbox::OutboxError::InUse { .. }))
                if std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            started => return started.expect("gateway starts"),
        }
    }
}

fn observation(value: Value) -> Observation {
    serde_json::from_value(value).unwrap()
}

/// Mail from `from` seen in `mailbox`'s Inbox (or in the folder `folder_id`).
pub(crate) fn seen(
    mailbox: &str,
    from: &str,
    message_id: &str,
    folder_id: Option<&str>,
) -> Observation {
    let mut o = json!({
        "kind": "message_seen", "mailbox": mailbox, "source": "ews", "operation": "GetItem",
        "item_id": format!("item-{message_id}"), "internet_message_id": message_id,
        "subject": "Hello", "from": {"address": from}, "to": [{"address": mailbox}],
        "received_at": "2026-11-20T10:00:00Z", "item_class": "IPM.Note",
    });
    match folder_id {
        Some(f) => o["folder_id"] = f.into(),
        None => o["folder"] = "inbox".into(),
    }
    observation(o)
}

/// What the gateway would decide now (a dry run: nothing is remembered).
pub(crate) fn decide(gw: &Gateway, o: &Observation) -> Value {
    let decisions: Vec<Decision> = gw.engine().decide(o, Mode::EXPLAIN).into_vec();
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    serde_json::to_value(&decisions[0]).unwrap()
}

#[track_caller]
pub(crate) fn expect(d: &Value, verdict: &str, reason: &str) {
    assert_eq!(
        (d["verdict"].as_str(), d["reason"].as_str()),
        (Some(verdict), Some(reason)),
        "{d:#}"
    );
}

fn from_record(d: &Value) -> Option<&str> {
    d["from"]["records"][0]["id"].as_str()
}

/// A model row in the shape the simulator stores (lookups as `_<column>_value`).
pub(crate) fn stored(
    spec: &tables::TableSpec,
    model: &impl serde::Serialize,
) -> Map<String, Value> {
    spec.from_model(serde_json::to_value(model).unwrap().as_object().unwrap())
}

fn find(dv: &DataverseSimulator, set: &str, column: &str, value: &str) -> Map<String, Value> {
    dv.records(set)
        .into_iter()
        .find(|r| r.get(column).and_then(Value::as_str) == Some(value))
        .unwrap_or_else(|| panic!("no {set} row with {column} = {value}"))
}

async fn readyz(gw: &Gateway) -> (u16, String) {
    let r = support::plain_client()
        .get(format!("{}/readyz", gw.admin_url()))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn metric(gw: &Gateway, name: &str) -> Option<f64> {
    let text = support::get_text(&format!("{}/metrics", gw.admin_url())).await;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_pointed_at_dataverse_loads_every_table_in_pages_and_decides_from_it() {
    let mut doc = contoso();
    extra_contacts(&mut doc, 25, true);
    let dv = dataverse(doc).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_in(dir.path(), &dv.url(), &dv.token_url(), "").await;

    let counts = gw.engine().directory().load().counts().to_string();
    for expected in [
        "4 users",
        "1 queue,",
        "4 mailboxes",
        "1 folder rule,",
        // Users and queues are e-mail-enabled records too: 25 + 3 + 4 + 1.
        "33 records",
        "2 tracked emails",
    ] {
        assert!(counts.contains(expected), "{expected} in {counts}");
    }
    // 25 + 1 contacts in pages of 10: three pages, the later ones by their next link.
    let contact_pages: Vec<_> = dv
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == "/contacts")
        .collect();
    assert_eq!(contact_pages.len(), 3, "{contact_pages:?}");

    // Decisions come from the replicated options, records and folder rules.
    let d = decide(
        &gw,
        &seen(
            "alex.seller@contoso.example",
            "pat.buyer@fabrikam.example",
            "<a1@x>",
            None,
        ),
    );
    expect(&d, "track", "sender_contact");
    assert_eq!(from_record(&d), Some(PAT_CONTACT));
    let d = decide(
        &gw,
        &seen(
            "alex.seller@contoso.example",
            "stranger@else.example",
            "<a2@x>",
            Some(TRACKED_FOLDER),
        ),
    );
    expect(&d, "track", "folder_rule");
    assert_eq!(d["regarding"]["id"], FABRIKAM);
    // OrgDbOrgSettings came as XML and were read.
    let org = gw.engine().directory().load();
    assert!(org.org().settings.auto_track_sent_folder_items);

    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 200);
    assert!(body.contains("directory: dataverse"), "{body}");
    assert!(!body.contains("stale"), "{body}");
    assert_eq!(
        metric(&gw, "trackgate_directory_refresh_failing").await,
        Some(0.0)
    );
    assert!(
        metric(&gw, "trackgate_directory_staleness_seconds")
            .await
            .is_some()
    );
    assert!(dir.path().join("data/directory.redb").exists());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_of_records_options_and_folder_rules_change_the_next_decision() {
    // Contacts span three pages (page_size 10): a full reload would page through them again.
    let mut doc = contoso();
    extra_contacts(&mut doc, 25, true);
    let dv = dataverse(doc).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_in(dir.path(), &dv.url(), &dv.token_url(), "").await;
    let alex = "alex.seller@contoso.example";
    let new_folder = "AAMkNewDealFolder=";

    // Before: what each change will alter.
    let nia = seen(alex, "nia@newco.example", "<d1@x>", None);
    let pat = seen(alex, "pat.buyer@fabrikam.example", "<d2@x>", None);
    let fabrikam_info = seen(alex, "info@fabrikam.example", "<d3@x>", None);
    let old_folder_mail = seen(
        alex,
        "stranger@else.example",
        "<d4@x>",
        Some(TRACKED_FOLDER),
    );
    let new_folder_mail = seen(alex, "stranger@else.example", "<d5@x>", Some(new_folder));
    let kim_mail = seen(
        "kim.manager@contoso.example",
        "stranger@else.example",
        "<d6@x>",
        None,
    );
    expect(&decide(&gw, &nia), "ignore", "sender_unresolved");
    assert_eq!(from_record(&decide(&gw, &pat)), Some(PAT_CONTACT));
    expect(&decide(&gw, &fabrikam_info), "track", "sender_account");
    expect(&decide(&gw, &old_folder_mail), "track", "folder_rule");
    assert_ne!(decide(&gw, &new_folder_mail)["reason"], "folder_rule");
    assert_ne!(decide(&gw, &kim_mail)["verdict"], "track");

    // Created: a contact for Nia.
    let nia_id = Uuid::from_u128(0x41a);
    dv.seed_record(
        "contacts",
        nia_id,
        stored(
            &tables::CONTACTS,
            &Contact {
                contactid: nia_id,
                fullname: Some("Nia Newco".into()),
                emailaddress1: Some("nia@newco.example".into()),
                ownerid: Some(uuid(ALEX)),
                ..Contact::default()
            },
        ),
    );
    // Changed: Pat's address moves to a new contact, Quinn.
    let mut pat_row = find(&dv, "contacts", "contactid", PAT_CONTACT);
    pat_row.insert("emailaddress1".into(), "pat@moved.example".into());
    dv.seed_record("contacts", uuid(PAT_CONTACT), pat_row);
    let quinn = Uuid::from_u128(0x9a1);
    dv.seed_record(
        "contacts",
        quinn,
        stored(
            &tables::CONTACTS,
            &Contact {
                contactid: quinn,
                emailaddress1: Some("pat.buyer@fabrikam.example".into()),
                ownerid: Some(uuid(ALEX)),
                ..Contact::default()
            },
        ),
    );
    // Deleted: the Fabrikam account.
    assert!(dv.remove_record("accounts", uuid(FABRIKAM)));
    // Options: Kim now tracks all email.
    let mut kim = find(&dv, "usersettingscollection", "systemuserid", KIM);
    kim.insert("incomingemailfilteringmethod".into(), 0.into());
    dv.seed_record("usersettingscollection", uuid(KIM), kim);
    // Folder rules: the old rule goes, a new one links the new folder to Lee the lead.
    let old_rule = find(
        &dv,
        "mailboxtrackingfolders",
        "exchangefolderid",
        TRACKED_FOLDER,
    );
    let old_rule_id = uuid(old_rule["mailboxtrackingfolderid"].as_str().unwrap());
    assert!(dv.remove_record("mailboxtrackingfolders", old_rule_id));
    let rule_id = Uuid::from_u128(0xf01d);
    dv.seed_record(
        "mailboxtrackingfolders",
        rule_id,
        stored(
            &tables::FOLDERS,
            &MailboxTrackingFolder {
                mailboxtrackingfolderid: Some(rule_id),
                mailboxid: uuid(ALEX_MAILBOX),
                exchangefolderid: new_folder.into(),
                exchangefoldername: Some("New deal".into()),
                regardingobjectid: Some(trackgate::directory::model::Lookup::new(
                    "lead",
                    uuid(LEE_LEAD),
                )),
            },
        ),
    );

    let before = dv.requests().len();
    // The first load asked for change tracking and paged through the contacts.
    let load: Vec<_> = dv.requests()[..before].to_vec();
    let contact_pages: Vec<_> = load.iter().filter(|r| r.path == "/contacts").collect();
    assert_eq!(contact_pages.len(), 3, "{contact_pages:#?}");
    assert!(
        contact_pages
            .iter()
            .all(|r| r.prefer.as_deref().is_some_and(
                |p| p.contains("odata.track-changes") && p.contains("odata.maxpagesize=10")
            )),
        "{contact_pages:#?}"
    );
    assert!(
        contact_pages
            .iter()
            .skip(1)
            .all(|r| r.query.contains("$skiptoken="))
    );

    gw.refresh_directory().await.expect("refresh");
    // The refresh asked for changes since the load's delta links, not whole tables.
    let refresh: Vec<_> = dv.requests()[before..].to_vec();
    // What the directory asked (a delta, or a load that starts change tracking); the start-up
    // online check (`WhoAmI`, privileges, a look at each directory table) may still be running
    // and asks neither.
    let tracked: Vec<_> = refresh
        .iter()
        .filter(|r| r.path != "/organizations" && r.path != "/emails")
        .filter(|r| {
            r.query.contains("$deltatoken=")
                || r.prefer
                    .as_deref()
                    .is_some_and(|p| p.contains("odata.track-changes"))
        })
        .collect();
    assert_eq!(
        tracked.len(),
        13,
        "one delta request per change-tracked table (the synchronised activities among them): {refresh:#?}"
    );
    for r in &tracked {
        assert!(
            r.query.contains("$deltatoken=") && r.status == 200,
            "a delta query, answered: {r:#?}"
        );
        assert!(
            !r.query.contains("$skiptoken="),
            "no paging through a table: {r:#?}"
        );
    }
    for set in [
        "/contacts",
        "/accounts",
        "/mailboxtrackingfolders",
        "/usersettingscollection",
    ] {
        assert!(
            tracked.iter().any(|r| r.path == set),
            "{set} refreshed: {refresh:#?}"
        );
    }

    let d = decide(&gw, &nia);
    expect(&d, "track", "sender_contact");
    assert_eq!(from_record(&d), Some(nia_id.to_string().as_str()));
    assert_eq!(
        from_record(&decide(&gw, &pat)),
        Some(quinn.to_string().as_str())
    );
    assert_ne!(decide(&gw, &fabrikam_info)["verdict"], "track");
    assert_ne!(decide(&gw, &old_folder_mail)["reason"], "folder_rule");
    let d = decide(&gw, &new_folder_mail);
    expect(&d, "track", "folder_rule");
    assert_eq!(d["regarding"]["entity"], "lead");
    assert_eq!(d["regarding"]["id"], LEE_LEAD);
    expect(&decide(&gw, &kim_mail), "track", "filter_all");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_while_dataverse_is_down_keeps_the_last_snapshot_and_reports_staleness() {
    let dv = dataverse(contoso()).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_in(dir.path(), &dv.url(), &dv.token_url(), "").await;
    let pat = seen(
        "alex.seller@contoso.example",
        "pat.buyer@fabrikam.example",
        "<s1@x>",
        None,
    );
    expect(&decide(&gw, &pat), "track", "sender_contact");

    dv.set_faults(DataverseFaults {
        down: true,
        ..DataverseFaults::default()
    });
    let error = gw.refresh_directory().await.expect_err("Dataverse is down");
    assert!(error.to_string().contains("unreachable"), "{error}");
    // The last snapshot still decides; readiness stays, with the staleness as a detail.
    expect(&decide(&gw, &pat), "track", "sender_contact");
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("stale") && body.contains("last refresh failed"),
        "{body}"
    );
    assert_eq!(
        metric(&gw, "trackgate_directory_refresh_failing").await,
        Some(1.0)
    );
    assert!(
        metric(&gw, "trackgate_directory_loads_total{result=\"failed\"}")
            .await
            .is_some_and(|n| n >= 1.0)
    );
    // An admin refresh says why it failed.
    let r = support::plain_client()
        .post(format!("{}/directory/refresh", gw.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);

    dv.set_faults(DataverseFaults::default());
    let r = support::plain_client()
        .post(format!("{}/directory/refresh", gw.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, body) = readyz(&gw).await;
    assert!(!body.contains("stale"), "{body}");
    assert_eq!(
        metric(&gw, "trackgate_directory_refresh_failing").await,
        Some(0.0)
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_dataverse_is_down_decides_from_the_persisted_replica() {
    let mut doc = contoso();
    extra_contacts(&mut doc, 5, true);
    extra_contacts(&mut doc, 5, false);
    let dv = dataverse(doc).await;
    let (url, token_url) = (dv.url(), dv.token_url());
    let dir = tempfile::tempdir().unwrap();
    // Leads are not kept offline; contacts and accounts keep the users' own (the default).
    let offline = "[directory.dataverse.offline_filters]\nleads = \"none\"\n";
    let gw = start_in(dir.path(), &url, &token_url, offline).await;
    let online = format!("{:?}", gw.engine().directory().load().counts());
    assert!(online.contains("records: 18"), "{online}");
    gw.shutdown().await;
    dv.stop().await;

    // Dataverse is gone (connections refused): the start serves the replica.
    let gw = start_in(dir.path(), &url, &token_url, offline).await;
    let offline_counts = format!("{:?}", gw.engine().directory().load().counts());
    // Pat, 5 owned extras, Fabrikam, 4 users and the queue; not the 5 contacts of a non-user,
    // not Lee the lead.
    assert!(offline_counts.contains("records: 12"), "{offline_counts}");
    assert!(offline_counts.contains("users: 4"), "{offline_counts}");
    assert!(
        offline_counts.contains("folder_rules: 1"),
        "{offline_counts}"
    );
    let d = decide(
        &gw,
        &seen(
            "alex.seller@contoso.example",
            "pat.buyer@fabrikam.example",
            "<r1@x>",
            None,
        ),
    );
    expect(&d, "track", "sender_contact");
    assert_eq!(from_record(&d), Some(PAT_CONTACT));
    expect(
        &decide(
            &gw,
            &seen(
                "alex.seller@contoso.example",
                "x@else.example",
                "<r2@x>",
                Some(TRACKED_FOLDER),
            ),
        ),
        "track",
        "folder_rule",
    );
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("persisted replica") && body.contains("stale"),
        "{body}"
    );
    let status = gw.dataverse_source().unwrap().status();
    assert!(status.from_replica);
    // The replica's data is as old as its last refresh, not unknown.
    assert!(status.ever_loaded());
    gw.shutdown().await;

    // Pointed at another environment, the replica is not served: its ids are another
    // organization's.
    let elsewhere = "http://127.0.0.1:9";
    let gw = start_in(
        dir.path(),
        elsewhere,
        &format!("{elsewhere}/t/oauth2/v2.0/token"),
        offline,
    )
    .await;
    let counts = format!("{:?}", gw.engine().directory().load().counts());
    assert!(counts.contains("users: 0"), "{counts}");
    let (_, body) = readyz(&gw).await;
    assert!(body.contains("never loaded"), "{body}");
    gw.shutdown().await;
}

/// The one sender activity party of an email the gateway wrote.
fn sender_party(email: &Map<String, Value>) -> &Value {
    let from: Vec<&Value> = email["email_activity_parties"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["participationtypemask"] == 1)
        .collect();
    assert_eq!(from.len(), 1, "{email:#?}");
    from[0]
}

/// Takes the CRM down, then a mail to Jo from `sender` (decided while it is away).
fn offline_mail_to_jo(dv: &DataverseSimulator, sender: &str, message_id: &str) -> Observation {
    dv.set_faults(DataverseFaults {
        down: true,
        ..DataverseFaults::default()
    });
    seen("jo.support@contoso.example", sender, message_id, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_after_offline_auto_creates_binds_the_existing_contact_instead_of_a_duplicate()
{
    let mut doc = contoso();
    // Jo tracks all email and creates contacts for unknown senders.
    if let Some(jo) = doc
        .usersettingscollection
        .iter_mut()
        .find(|s| s.systemuserid == uuid(JO))
    {
        jo.autocreatecontactonpromote = 1;
    }
    let dv = dataverse(doc).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start_in(dir.path(), &dv.url(), &dv.token_url(), "").await;

    // The CRM goes away; Jo's mail from a new sender is decided offline, with an auto-create.
    let sender = "nia.new@prospect.example";
    let o = offline_mail_to_jo(&dv, sender, "<offline.1@prospect.example>");
    let decisions = gw.engine().decide(&o, Mode::APPLY);
    let planned = decisions[0].auto_create.clone().expect("an auto-create");
    for d in &decisions {
        if d.is_track() {
            gw.outbox().submit(d);
        }
    }
    // Meanwhile someone adds her to the CRM by hand.
    let existing = Uuid::from_u128(0xe815);
    assert_ne!(existing, planned.id);
    dv.seed_record(
        "contacts",
        existing,
        stored(
            &tables::CONTACTS,
            &Contact {
                contactid: existing,
                fullname: Some("Nia New".into()),
                emailaddress1: Some(sender.to_uppercase()),
                ownerid: Some(uuid(JO)),
                ..Contact::default()
            },
        ),
    );

    // Back online: the email lands bound to the existing contact, and no second one is made.
    dv.set_faults(DataverseFaults::default());
    let emails = support::wait_for(Duration::from_secs(30), "the email delivered", async || {
        let written: Vec<_> = dv
            .records("emails")
            .into_iter()
            .filter(|e| e.contains_key("_sim_created_seq"))
            .collect();
        (!written.is_empty()).then_some(written)
    })
    .await;
    let contacts: Vec<_> = dv
        .records("contacts")
        .into_iter()
        .filter(|c| {
            c.get("emailaddress1")
                .and_then(Value::as_str)
                .is_some_and(|a| a.eq_ignore_ascii_case(sender))
        })
        .collect();
    assert_eq!(contacts.len(), 1, "{contacts:#?}");
    assert_eq!(dv.stats().created.get("contacts"), None);
    let from = sender_party(&emails[0]);
    assert_eq!(from["_partyid_contact_value"]["id"], existing.to_string());

    // A sender two active contacts share stays unresolved, and nothing is created.
    let twins = "twins@prospect.example";
    let o = offline_mail_to_jo(&dv, twins, "<offline.2@prospect.example>");
    for d in gw.engine().decide(&o, Mode::APPLY) {
        assert!(d.auto_create.is_some());
        gw.outbox().submit(&d);
    }
    for n in 0..2u128 {
        let id = Uuid::from_u128(0x7715 + n);
        let twin = Contact {
            contactid: id,
            emailaddress1: Some(twins.into()),
            ownerid: Some(uuid(JO)),
            ..Contact::default()
        };
        dv.seed_record("contacts", id, stored(&tables::CONTACTS, &twin));
    }
    dv.set_faults(DataverseFaults::default());
    let first_id = emails[0]["activityid"].clone();
    let email = support::wait_for(Duration::from_secs(30), "the second email", async || {
        dv.records("emails")
            .into_iter()
            .find(|e| e.contains_key("_sim_created_seq") && e["activityid"] != first_id)
    })
    .await;
    let from = sender_party(&email);
    assert_eq!(from["addressused"], twins);
    assert!(from.get("_partyid_contact_value").is_none(), "{email:#?}");
    assert_eq!(dv.stats().created.get("contacts"), None);

    // After the next refresh the directory resolves her directly: no auto-create at all.
    gw.refresh_directory().await.expect("refresh");
    let d = decide(
        &gw,
        &seen(
            "jo.support@contoso.example",
            sender,
            "<online.2@prospect.example>",
            None,
        ),
    );
    assert_eq!(from_record(&d), Some(existing.to_string().as_str()));
    assert!(d.get("auto_create").is_none(), "{d:#}");
    gw.shutdown().await;
}
