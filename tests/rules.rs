//! The rules, table by table: each behaviour of docs/domain.md over a small directory built in
//! code.
//! The engine is the library's own, the directory a real snapshot; no sockets are needed, the
//! end-to-end path is covered in `rules_pipeline`.

use proptest::prelude::*;
use trackgate::directory::model::*;
use trackgate::directory::{Directory, DirectoryHandle};
use trackgate::inspect::{Address, CategoryMode, Message, Observation, Origin, Source, Transfer};
use trackgate::rules::decision::{CorrelationMethod, Direction, RegardingSource, email_id};
use trackgate::rules::{Decision, Engine, MemoryLimits, Mode, Reason, RulesLimits};
use uuid::Uuid;

const ORG: u128 = 0x0c0de;
const OWNER: u128 = 0xa1;
const COLLEAGUE: u128 = 0xa2;
const ALLMAIL: u128 = 0xa3;
const GONE: u128 = 0xa4;
const QUIET: u128 = 0xa5;
const QUEUE: u128 = 0xb1;
const PAT: u128 = 0xc1;
const DUP_OLD: u128 = 0xc2;
const DUP_MINE: u128 = 0xc3;
const OLD_CONTACT: u128 = 0xc4;
const SHARED_CONTACT: u128 = 0xc5;
const ACCOUNT: u128 = 0xd1;
const SHARED_ACCOUNT: u128 = 0xd2;
const LEAD: u128 = 0xe1;
const ROOM: u128 = 0xe2;
const OPP_ORIG: u128 = 0xf1;
const OPP_TOKEN: u128 = 0xf2;
const OPP_CONV: u128 = 0xf3;
const OPP_SMART: u128 = 0xf4;
const OPP_CONVID: u128 = 0xf5;

const TRACKED: &str = "AAMkTrackedFolder+x/y=";
const PLAIN: &str = "AAMkPlainFolder=";
const OTHER_LINKED: &str = "AAMkOtherLinked=";
const INBOX_ID: &str = "AAMkInboxId=";

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn look(entity: &str, n: u128) -> Lookup {
    Lookup::new(entity, id(n))
}

fn conversation_index() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([7u8; 22])
}

fn user(n: u128, address: &str) -> SystemUser {
    SystemUser {
        systemuserid: id(n),
        internalemailaddress: Some(address.into()),
        ..Default::default()
    }
}

fn settings(n: u128, filter: u8) -> UserSettings {
    UserSettings {
        systemuserid: id(n),
        incomingemailfilteringmethod: filter,
        ..Default::default()
    }
}

fn mailbox(n: u128, address: &str, owner: Lookup) -> Mailbox {
    Mailbox {
        mailboxid: id(0x100 + n),
        emailaddress: address.into(),
        regardingobjectid: owner,
        processemailreceivedafter: None,
        incomingemaildeliverymethod: 2,
        actdeliverymethod: 1,
        outgoingemaildeliverymethod: 2,
    }
}

fn contact(n: u128, address: &str, owner: u128, created: &str) -> Contact {
    Contact {
        contactid: id(n),
        emailaddress1: Some(address.into()),
        ownerid: Some(id(owner)),
        createdon: Some(created.into()),
        ..Default::default()
    }
}

fn rule(folder: &str, regarding: Option<Lookup>) -> MailboxTrackingFolder {
    MailboxTrackingFolder {
        mailboxtrackingfolderid: None,
        mailboxid: id(0x101),
        exchangefolderid: folder.into(),
        exchangefoldername: Some(format!("folder {folder}")),
        regardingobjectid: regarding,
    }
}

/// The test organisation. The owner's filter starts at "all" and tests change what they need.
fn base() -> DirectoryDocument {
    let mut org = Organization {
        organizationid: id(ORG),
        trackingprefix: "CRM;OLD".into(),
        ..Default::default()
    };
    org.orgdborgsettings.auto_track_sent_folder_items = true;
    let mut gone = user(GONE, "gone@corp.example");
    gone.isdisabled = true;
    let mut colleague = user(COLLEAGUE, "colleague@corp.example");
    colleague.x500addresses = vec!["/o=Corp/ou=Exchange/cn=Recipients/cn=colleague".into()];
    let old = Contact {
        statecode: 1,
        ..contact(
            OLD_CONTACT,
            "old@customer.example",
            COLLEAGUE,
            "2020-01-01T00:00:00Z",
        )
    };
    DirectoryDocument {
        organization: org,
        systemusers: vec![
            user(OWNER, "owner@corp.example"),
            colleague,
            user(ALLMAIL, "allmail@corp.example"),
            gone,
            user(QUIET, "quiet@corp.example"),
        ],
        usersettingscollection: vec![
            UserSettings {
                autocreatecontactonpromote: 1,
                ..settings(OWNER, 0)
            },
            settings(COLLEAGUE, 1),
            UserSettings {
                autocreatecontactonpromote: 1,
                ..settings(ALLMAIL, 0)
            },
            settings(QUIET, 4),
        ],
        queues: vec![Queue {
            queueid: id(QUEUE),
            name: Some("Support".into()),
            emailaddress: Some("support@corp.example".into()),
            incomingemailfilteringmethod: 0,
            ownerid: None,
            statecode: 0,
            createdon: None,
        }],
        mailboxes: vec![
            mailbox(1, "owner@corp.example", look("systemuser", OWNER)),
            mailbox(2, "colleague@corp.example", look("systemuser", COLLEAGUE)),
            mailbox(3, "allmail@corp.example", look("systemuser", ALLMAIL)),
            mailbox(4, "support@corp.example", look("queue", QUEUE)),
            mailbox(5, "quiet@corp.example", look("systemuser", QUIET)),
        ],
        mailboxtrackingfolders: vec![
            rule(TRACKED, Some(look("account", ACCOUNT))),
            rule(PLAIN, None),
            rule(OTHER_LINKED, Some(look("contact", PAT))),
        ],
        contacts: vec![
            contact(PAT, "pat@customer.example", OWNER, "2024-01-01T00:00:00Z"),
            contact(
                DUP_OLD,
                "dup@customer.example",
                COLLEAGUE,
                "2023-01-01T00:00:00Z",
            ),
            contact(
                DUP_MINE,
                "dup@customer.example",
                OWNER,
                "2025-01-01T00:00:00Z",
            ),
            old,
            contact(
                SHARED_CONTACT,
                "shared@customer.example",
                COLLEAGUE,
                "2025-01-01T00:00:00Z",
            ),
            // A contact with a user's address: the user wins.
            contact(
                0xc9,
                "colleague@corp.example",
                ALLMAIL,
                "2020-01-01T00:00:00Z",
            ),
        ],
        accounts: vec![
            Account {
                accountid: id(ACCOUNT),
                emailaddress1: Some("info@customer.example".into()),
                ownerid: Some(id(OWNER)),
                ..Default::default()
            },
            Account {
                accountid: id(SHARED_ACCOUNT),
                emailaddress1: Some("shared@customer.example".into()),
                ownerid: Some(id(COLLEAGUE)),
                createdon: Some("2019-01-01T00:00:00Z".into()),
                ..Default::default()
            },
        ],
        leads: vec![Lead {
            leadid: id(LEAD),
            emailaddress1: Some("lead@prospect.example".into()),
            ..Default::default()
        }],
        emailenabledrecords: vec![EmailEnabledRecord {
            entity: "equipment".into(),
            id: id(ROOM),
            emailaddresses: vec!["room@corp.example".into()],
            ..Default::default()
        }],
        emails: vec![
            TrackedEmail {
                activityid: id(0x1001),
                messageid: Some("<orig@corp.example>".into()),
                regardingobjectid: Some(look("opportunity", OPP_ORIG)),
                ..Default::default()
            },
            TrackedEmail {
                activityid: id(0x1002),
                trackingtoken: Some("CRM:0001001".into()),
                regardingobjectid: Some(look("opportunity", OPP_TOKEN)),
                ..Default::default()
            },
            TrackedEmail {
                activityid: id(0x1003),
                conversationindex: Some(conversation_index()),
                regardingobjectid: Some(look("opportunity", OPP_CONV)),
                ..Default::default()
            },
            TrackedEmail {
                activityid: id(0x1004),
                subject: Some("Quarterly pricing update".into()),
                addresses: vec!["owner@corp.example".into(), "pat@customer.example".into()],
                regardingobjectid: Some(look("opportunity", OPP_SMART)),
                ..Default::default()
            },
            TrackedEmail {
                activityid: id(0x1005),
                conversationid: Some("CONV-1".into()),
                regardingobjectid: Some(look("opportunity", OPP_CONVID)),
                ..Default::default()
            },
        ],
        ..DirectoryDocument::default()
    }
}

fn engine_for(doc: DirectoryDocument) -> Engine {
    let dir = Directory::build(doc).expect("valid test directory");
    Engine::new(
        DirectoryHandle::new(dir),
        MemoryLimits::default(),
        RulesLimits::default(),
    )
}

fn engine_with(change: impl FnOnce(&mut DirectoryDocument)) -> Engine {
    let mut doc = base();
    change(&mut doc);
    engine_for(doc)
}

fn set_filter(doc: &mut DirectoryDocument, user: u128, filter: u8) {
    for s in &mut doc.usersettingscollection {
        if s.systemuserid == id(user) {
            s.incomingemailfilteringmethod = filter;
        }
    }
}

fn addr(a: &str) -> Address {
    Address {
        name: None,
        address: Some(a.into()),
        routing_type: Some("SMTP".into()),
    }
}

fn origin(mailbox: &str, operation: &str) -> Origin {
    Origin {
        mailbox: Some(mailbox.into()),
        source: Source::Ews,
        operation: operation.into(),
    }
}

/// A complete message (as GetItem shows it) in a folder given by distinguished name.
fn message(message_id: &str, folder: &str, from: &str, to: &[&str]) -> Message {
    Message {
        item_id: Some(format!("item-{message_id}").into()),
        folder: Some(folder.into()),
        internet_message_id: Some(message_id.into()),
        subject: Some("Hello".into()),
        from: Some(addr(from)),
        to: to.iter().map(|a| addr(a)).collect(),
        received_at: Some("2026-11-20T10:00:00Z".into()),
        item_class: Some("IPM.Note".into()),
        ..Default::default()
    }
}

fn seen_in(mailbox: &str, m: Message) -> Observation {
    Observation::MessageSeen {
        origin: origin(mailbox, "GetItem"),
        message: m.into(),
        initial_sync: false,
    }
}

fn inbox(from: &str, message_id: &str) -> Observation {
    seen_in(
        "owner@corp.example",
        message(message_id, "inbox", from, &["owner@corp.example"]),
    )
}

fn decide(engine: &Engine, o: &Observation) -> Decision {
    let mut all = engine.decide(o, Mode::REPLAY);
    assert_eq!(all.len(), 1, "one decision expected: {all:#?}");
    all.remove(0)
}

#[track_caller]
fn expect(d: &Decision, reason: Reason) {
    assert_eq!(
        d.reason, reason,
        "reason; explanation: {:#?}",
        d.explanation
    );
    assert_eq!(d.verdict, reason.verdict());
    assert!(!d.explanation.is_empty(), "every decision explains itself");
}

#[test]
fn each_filtering_method_decides_inbox_mail() {
    let cases: &[(u8, &str, Option<&str>, Reason)] = &[
        (0, "stranger@else.example", None, Reason::FilterAll),
        (1, "stranger@else.example", None, Reason::NotAReply),
        (
            1,
            "stranger@else.example",
            Some("orig@corp.example"),
            Reason::ReplyInReplyTo,
        ),
        (2, "pat@customer.example", None, Reason::SenderContact),
        (2, "info@customer.example", None, Reason::SenderAccount),
        (2, "lead@prospect.example", None, Reason::SenderLead),
        (2, "room@corp.example", None, Reason::SenderNotInFilter),
        (2, "stranger@else.example", None, Reason::SenderUnresolved),
        (3, "room@corp.example", None, Reason::SenderEmailEnabled),
        (3, "pat@customer.example", None, Reason::SenderEmailEnabled),
        (3, "stranger@else.example", None, Reason::SenderUnresolved),
        (4, "pat@customer.example", None, Reason::FilterNone),
    ];
    for (i, (filter, from, in_reply_to, reason)) in cases.iter().enumerate() {
        let engine = engine_with(|d| set_filter(d, OWNER, *filter));
        let mut m = message(&format!("m{i}@x"), "inbox", from, &["owner@corp.example"]);
        m.in_reply_to = in_reply_to.map(Into::into);
        let d = decide(&engine, &seen_in("owner@corp.example", m));
        expect(&d, *reason);
        assert_eq!(d.direction, Some(Direction::Incoming), "case {i}");
        if d.is_track() {
            assert_eq!(d.accepted_by, Some(look("systemuser", OWNER)));
            assert_eq!(
                d.crm_id,
                Some(email_id(id(ORG), &format!("m{i}@x"), Direction::Incoming))
            );
        }
    }
}

#[test]
fn every_resolved_recipient_users_and_queues_filter_counts() {
    // The owner tracks nothing; who else received it decides.
    let cases: &[(&[&str], Option<Lookup>, Reason)] = &[
        (&["owner@corp.example"], None, Reason::FilterNone),
        (
            &["owner@corp.example", "quiet@corp.example"],
            None,
            Reason::FilterNone,
        ),
        (
            &["owner@corp.example", "allmail@corp.example"],
            Some(look("systemuser", ALLMAIL)),
            Reason::FilterAll,
        ),
        (
            &["owner@corp.example", "support@corp.example"],
            Some(look("queue", QUEUE)),
            Reason::FilterAll,
        ),
        // A disabled user's filter does not count.
        (
            &["owner@corp.example", "gone@corp.example"],
            None,
            Reason::FilterNone,
        ),
    ];
    for (to, accepted, reason) in cases {
        let engine = engine_with(|d| {
            set_filter(d, OWNER, 4);
            set_filter(d, ALLMAIL, 0);
        });
        let d = decide(
            &engine,
            &seen_in(
                "owner@corp.example",
                message("r@x", "inbox", "stranger@else.example", to),
            ),
        );
        expect(&d, *reason);
        assert_eq!(&d.accepted_by, accepted);
    }
}

#[test]
fn syncing_mailbox_only_for_correlation_narrows_recipient_filters() {
    let reply = || {
        let mut m = message(
            "reply@x",
            "inbox",
            "stranger@else.example",
            &["owner@corp.example", "colleague@corp.example"],
        );
        m.in_reply_to = Some("orig@corp.example".into());
        seen_in("owner@corp.example", m)
    };
    // The colleague's "in response to" filter accepts the reply for the owner's mailbox…
    let engine = engine_with(|d| set_filter(d, OWNER, 4));
    let d = decide(&engine, &reply());
    expect(&d, Reason::ReplyInReplyTo);
    assert_eq!(d.accepted_by, Some(look("systemuser", COLLEAGUE)));
    // …unless only the syncing mailbox's filter may correlate.
    let engine = engine_with(|d| {
        set_filter(d, OWNER, 4);
        d.organization
            .orgdborgsettings
            .use_filtering_method_of_syncing_mailbox_only_for_correlation = true;
    });
    expect(&decide(&engine, &reply()), Reason::FilterNone);
}

#[test]
fn a_disabled_recipients_filter_does_not_count() {
    let to = |recipient: &str, n: &str| {
        seen_in(
            "owner@corp.example",
            message(
                n,
                "inbox",
                "stranger@else.example",
                &["owner@corp.example", recipient],
            ),
        )
    };
    let engine = engine_with(|d| {
        set_filter(d, OWNER, 4);
        set_filter(d, COLLEAGUE, 0);
        d.usersettingscollection.push(settings(GONE, 0));
    });
    let d = decide(&engine, &to("colleague@corp.example", "dr1@x"));
    expect(&d, Reason::FilterAll);
    assert_eq!(d.accepted_by, Some(look("systemuser", COLLEAGUE)));
    expect(
        &decide(&engine, &to("gone@corp.example", "dr2@x")),
        Reason::FilterNone,
    );
}

#[test]
fn only_mail_directly_in_the_inbox_is_tracked_automatically() {
    let engine = engine_with(|_| {});
    for (folder, reason) in [
        ("inbox", Reason::FilterAll),
        ("junkemail", Reason::NotInInbox),
        ("deleteditems", Reason::NotInInbox),
        ("archive", Reason::NotInInbox),
    ] {
        let d = decide(
            &engine,
            &seen_in(
                "owner@corp.example",
                message(&format!("{folder}@x"), folder, "stranger@else.example", &[]),
            ),
        );
        expect(&d, reason);
    }
    // A subfolder of the Inbox without a rule: learned from GetFolder, still not tracked.
    engine.decide(
        &Observation::FolderSeen {
            origin: origin("owner@corp.example", "GetFolder"),
            folder_id: "AAMkSub=".into(),
            folder: None,
            display_name: Some("Customers".into()),
            parent_folder_id: Some(INBOX_ID.into()),
        },
        Mode::APPLY,
    );
    let mut m = message("sub@x", "inbox", "stranger@else.example", &[]);
    m.folder = None;
    m.folder_id = Some("AAMkSub=".into());
    expect(
        &decide(&engine, &seen_in("owner@corp.example", m.clone())),
        Reason::NotInInbox,
    );
    // A folder id never seen: not decided yet, and not remembered as ignored.
    m.internet_message_id = Some("unknown-folder@x".into());
    m.item_id = Some("item-unknown-folder".into());
    m.folder_id = Some("AAMkNeverSeen=".into());
    expect(
        &decide(&engine, &seen_in("owner@corp.example", m.clone())),
        Reason::FolderUnknown,
    );
    // Once the Inbox's id is known, an item seen by folder id alone is in the Inbox.
    engine.decide(
        &Observation::FolderSeen {
            origin: origin("owner@corp.example", "GetFolder"),
            folder_id: "AAMkNeverSeen=".into(),
            folder: Some("inbox".into()),
            display_name: Some("Inbox".into()),
            parent_folder_id: None,
        },
        Mode::APPLY,
    );
    expect(
        &decide(&engine, &seen_in("owner@corp.example", m)),
        Reason::FilterAll,
    );
}

#[test]
fn folder_rules_track_regardless_of_the_filter_and_set_regarding() {
    let engine = engine_with(|d| set_filter(d, OWNER, 4));
    let mut m = message(
        "f1@x",
        "x",
        "stranger@else.example",
        &["owner@corp.example"],
    );
    m.folder = None;
    // The Graph spelling of the rule's EWS folder id.
    m.folder_id = Some("AAMkTrackedFolder-x_y=".into());
    let d = decide(&engine, &seen_in("owner@corp.example", m));
    expect(&d, Reason::FolderRule);
    assert_eq!(d.regarding, Some(look("account", ACCOUNT)));
    assert_eq!(d.regarding_source, Some(RegardingSource::FolderRule));
    // A rule without a record tracks without regarding.
    let mut m = message("f2@x", "x", "stranger@else.example", &[]);
    m.folder = None;
    m.folder_id = Some(PLAIN.into());
    let d = decide(&engine, &seen_in("owner@corp.example", m));
    expect(&d, Reason::FolderRule);
    assert_eq!(d.regarding, None);
}

/// One item moved or copied into a folder (by id or distinguished name); `new_item` is the id
/// Exchange's answer gave it, if any.
fn transfer(
    item: &str,
    new_item: Option<&str>,
    folder_id: Option<&str>,
    folder: Option<&str>,
) -> Transfer {
    Transfer {
        item_ids: vec![item.into()],
        new_item_ids: vec![new_item.map(str::to_owned)],
        destination_folder_id: folder_id.map(str::to_owned),
        destination_folder: folder.map(str::to_owned),
    }
}

fn move_to(
    item: &str,
    new_item: &str,
    folder_id: Option<&str>,
    folder: Option<&str>,
) -> Observation {
    Observation::MessageMoved {
        origin: origin("owner@corp.example", "MoveItem"),
        transfer: transfer(item, Some(new_item), folder_id, folder),
    }
}

/// A move whose answer gave no new id (the item keeps its id) stays known by that id: moved on
/// into a tracked folder later, it is tracked from what was seen, not fetched again.
#[test]
fn an_item_moved_without_a_new_id_is_still_known_by_its_id() {
    let engine = engine_with(|d| set_filter(d, OWNER, 4));
    expect(
        &decide(&engine, &inbox("stranger@else.example", "keep@x")),
        Reason::FilterNone,
    );
    let quiet_move = Observation::MessageMoved {
        origin: origin("owner@corp.example", "MoveItem"),
        transfer: transfer("item-keep@x", None, Some(PLAIN), None),
    };
    engine.decide(&quiet_move, Mode::REPLAY);
    let d = decide(
        &engine,
        &move_to("item-keep@x", "moved-k", Some(TRACKED), None),
    );
    expect(&d, Reason::FolderRule);
    assert!(!d.needs_enrichment, "{d:#?}");
    assert_eq!(d.internet_message_id.as_deref(), Some("keep@x"));
}

#[test]
fn moves_into_out_of_and_between_tracked_folders() {
    let engine = engine_with(|d| set_filter(d, OWNER, 4));
    // Seen in the Inbox, not tracked (filter none).
    expect(
        &decide(&engine, &inbox("stranger@else.example", "mv@x")),
        Reason::FilterNone,
    );
    // Moved into a tracked folder: tracked, regarding the rule's record, content remembered.
    let d = decide(
        &engine,
        &move_to("item-mv@x", "moved-1", Some(TRACKED), None),
    );
    expect(&d, Reason::FolderRule);
    assert_eq!(d.regarding, Some(look("account", ACCOUNT)));
    assert_eq!(d.internet_message_id.as_deref(), Some("mv@x"));
    assert!(!d.needs_enrichment);
    assert_eq!(
        d.crm_id,
        Some(email_id(id(ORG), "mv@x", Direction::Incoming))
    );
    // Into a tracked folder without a record: keeps the link.
    let d = decide(&engine, &move_to("moved-1", "moved-2", Some(PLAIN), None));
    expect(&d, Reason::AlreadyTracked);
    assert_eq!(d.regarding, Some(look("account", ACCOUNT)));
    // Into a folder linked to another record: re-linked.
    let d = decide(
        &engine,
        &move_to("moved-2", "moved-3", Some(OTHER_LINKED), None),
    );
    expect(&d, Reason::FolderRule);
    assert!(d.update_regarding);
    assert_eq!(d.regarding, Some(look("contact", PAT)));
    // Moving out does not untrack.
    let d = decide(
        &engine,
        &move_to("moved-3", "moved-4", Some("AAMkElsewhere="), None),
    );
    expect(&d, Reason::AlreadyTracked);
    // Moving an untracked item back into the Inbox does not get it processed.
    expect(
        &decide(&engine, &inbox("stranger@else.example", "back@x")),
        Reason::FilterNone,
    );
    expect(
        &decide(
            &engine,
            &move_to("item-back@x", "back-2", Some("AAMkArchive="), None),
        ),
        Reason::NotTrackedFolder,
    );
    expect(
        &decide(&engine, &move_to("back-2", "back-3", None, Some("inbox"))),
        Reason::MovedIntoInbox,
    );
    // An item never seen, moved into a tracked folder: tracked, fetched by delivery.
    let d = decide(&engine, &move_to("never-seen", "ns-2", Some(TRACKED), None));
    expect(&d, Reason::FolderRule);
    assert!(d.needs_enrichment);
    assert_eq!(d.crm_id, None);
}

#[test]
fn renamed_folders_stay_tracked_and_folders_moved_outside_the_inbox_stop() {
    let engine = engine_with(|d| set_filter(d, OWNER, 4));
    let folder = |id: &str, name: Option<&str>, display: &str, parent: Option<&str>| {
        Observation::FolderSeen {
            origin: origin("owner@corp.example", "GetFolder"),
            folder_id: id.into(),
            folder: name.map(str::to_owned),
            display_name: Some(display.into()),
            parent_folder_id: parent.map(str::to_owned),
        }
    };
    engine.decide(
        &folder(INBOX_ID, Some("inbox"), "Inbox", Some("ROOT=")),
        Mode::APPLY,
    );
    engine.decide(
        &folder("ROOT=", Some("msgfolderroot"), "Top", None),
        Mode::APPLY,
    );
    // Renamed, still under the Inbox: the rule is by id.
    engine.decide(
        &folder(TRACKED, None, "Renamed deals", Some(INBOX_ID)),
        Mode::APPLY,
    );
    let mut m = message("ren@x", "x", "stranger@else.example", &[]);
    m.folder = None;
    m.folder_id = Some(TRACKED.into());
    expect(
        &decide(&engine, &seen_in("owner@corp.example", m.clone())),
        Reason::FolderRule,
    );
    // Moved outside the Inbox: its rule is disabled.
    engine.decide(
        &folder(TRACKED, None, "Renamed deals", Some("ROOT=")),
        Mode::APPLY,
    );
    m.internet_message_id = Some("out@x".into());
    m.item_id = Some("item-out".into());
    expect(
        &decide(&engine, &seen_in("owner@corp.example", m)),
        Reason::FolderOutsideInbox,
    );
}

#[test]
fn folder_rule_limits_and_queue_mailboxes_are_refused_with_the_row_named() {
    let mut doc = base();
    for i in 0..22 {
        doc.mailboxtrackingfolders
            .push(rule(&format!("AAMkExtra{i}="), None));
    }
    assert!(
        Directory::build(doc.clone()).is_ok(),
        "25 rules are allowed"
    );
    doc.mailboxtrackingfolders
        .push(rule("AAMkOneTooMany=", None));
    let e = Directory::build(doc.clone()).unwrap_err();
    assert_eq!(e.at, "mailboxtrackingfolders[25].mailboxid");
    assert!(e.fix.contains("maxfolderbasedtrackingmappings"), "{e}");
    // The org may allow fewer.
    let mut fewer = base();
    fewer.organization.maxfolderbasedtrackingmappings = 2;
    assert!(Directory::build(fewer).is_err());
    // No folder tracking for queues.
    let mut queue = base();
    queue.mailboxtrackingfolders.push(MailboxTrackingFolder {
        mailboxid: id(0x104),
        ..rule("AAMkQueueFolder=", None)
    });
    let e = Directory::build(queue).unwrap_err();
    assert!(e.problem.contains("queue"), "{e}");
    // Folder tracking switched off for the organisation.
    let engine = engine_with(|d| {
        set_filter(d, OWNER, 4);
        d.organization.isfolderbasedtrackingenabled = false;
    });
    let mut m = message("off@x", "x", "stranger@else.example", &[]);
    m.folder = None;
    m.folder_id = Some(TRACKED.into());
    expect(
        &decide(&engine, &seen_in("owner@corp.example", m)),
        Reason::NotInInbox,
    );
}

fn categories(item: &str, mode: CategoryMode, list: &[&str]) -> Observation {
    Observation::CategoriesChanged {
        origin: origin("owner@corp.example", "UpdateItem"),
        item_ids: vec![item.into()],
        mode,
        categories: list.iter().map(|c| (*c).to_owned()).collect(),
    }
}

#[test]
fn the_tracking_category_tracks_and_removing_it_changes_nothing() {
    const CAT: &str = "Tracked to Dynamics 365";
    let engine = engine_with(|d| set_filter(d, OWNER, 4));
    expect(
        &decide(&engine, &inbox("stranger@else.example", "cat@x")),
        Reason::FilterNone,
    );
    expect(
        &decide(
            &engine,
            &categories("item-cat@x", CategoryMode::Append, &["Blue"]),
        ),
        Reason::NoTrackingCategory,
    );
    let d = decide(
        &engine,
        &categories("item-cat@x", CategoryMode::Append, &[CAT]),
    );
    expect(&d, Reason::Category);
    assert_eq!(
        d.crm_id,
        Some(email_id(id(ORG), "cat@x", Direction::Incoming))
    );
    assert!(!d.needs_enrichment);
    // Set again (with another category): already tracked.
    expect(
        &decide(
            &engine,
            &categories("item-cat@x", CategoryMode::Set, &[CAT, "Blue"]),
        ),
        Reason::AlreadyTracked,
    );
    // Removed: untracking leaves the CRM alone.
    expect(
        &decide(
            &engine,
            &categories("item-cat@x", CategoryMode::Delete, &[CAT]),
        ),
        Reason::CategoryRemoved,
    );
    // Set without it, on an item that had it.
    expect(
        &decide(&engine, &inbox("stranger@else.example", "cat2@x")),
        Reason::FilterNone,
    );
    let d = decide(
        &engine,
        &categories("item-cat2@x", CategoryMode::Set, &[CAT]),
    );
    expect(&d, Reason::Category);
    expect(
        &decide(
            &engine,
            &categories("item-cat2@x", CategoryMode::Set, &["Blue"]),
        ),
        Reason::CategoryRemoved,
    );
    // The tracking category deleted from an item never seen: a removal all the same; another
    // category deleted from it is none.
    expect(
        &decide(
            &engine,
            &categories("unseen-del", CategoryMode::Delete, &[CAT]),
        ),
        Reason::CategoryRemoved,
    );
    expect(
        &decide(
            &engine,
            &categories("unseen-del2", CategoryMode::Delete, &["Blue"]),
        ),
        Reason::NoTrackingCategory,
    );
    // An item never seen: tracked, fetched by delivery.
    let d = decide(&engine, &categories("never", CategoryMode::Set, &[CAT]));
    expect(&d, Reason::Category);
    assert!(d.needs_enrichment);
    // A renamed category, listed by the organisation.
    let renamed = engine_with(|d| {
        set_filter(d, OWNER, 4);
        d.organization.trackingcategorynames = vec!["In CRM".into(), CAT.into()];
    });
    expect(
        &decide(&renamed, &categories("x", CategoryMode::Set, &["in crm"])),
        Reason::Category,
    );
    // Category tracking off for the organisation.
    let off = engine_with(|d| d.organization.orgdborgsettings.track_categorized_items = false);
    expect(
        &decide(&off, &categories("x", CategoryMode::Set, &[CAT])),
        Reason::CategoryTrackingOff,
    );
    // A message seen with the category is tracked by it, whatever the folder.
    let mut m = message("seen-cat@x", "archive", "stranger@else.example", &[]);
    m.categories = vec![CAT.into()];
    expect(
        &decide(&engine, &seen_in("owner@corp.example", m)),
        Reason::Category,
    );
}

/// With TrackCategorizedItems off, the category is no reason at all: a sighting of a message
/// carrying it is tracked (or not) as any other.
#[test]
fn with_category_tracking_off_a_categorized_message_is_tracked_by_the_filter() {
    const CAT: &str = "Tracked to Dynamics 365";
    let off = engine_with(|d| {
        set_filter(d, OWNER, 0);
        d.organization.orgdborgsettings.track_categorized_items = false;
    });
    let mut m = message("off-cat@x", "inbox", "stranger@else.example", &[]);
    m.categories = vec![CAT.into()];
    expect(
        &decide(&off, &seen_in("owner@corp.example", m)),
        Reason::FilterAll,
    );
}

/// A folder rule or the category tracks mail both ways; only incoming mail auto-creates its
/// unknown sender.
#[test]
fn a_category_track_auto_creates_for_incoming_mail_only() {
    const CAT: &str = "Tracked to Dynamics 365";
    let engine = engine_with(|d| set_filter(d, OWNER, 4));
    let mut incoming = message("cat-in@x", "archive", "stranger@else.example", &[]);
    incoming.categories = vec![CAT.into()];
    let d = decide(&engine, &seen_in("owner@corp.example", incoming));
    expect(&d, Reason::Category);
    assert!(d.auto_create.is_some(), "{d:#?}");
    let mut outgoing = message(
        "cat-out@x",
        "sentitems",
        "owner@corp.example",
        &["stranger@else.example"],
    );
    outgoing.categories = vec![CAT.into()];
    let d = decide(&engine, &seen_in("owner@corp.example", outgoing));
    expect(&d, Reason::Category);
    assert_eq!(d.direction, Some(Direction::Outgoing));
    assert!(d.auto_create.is_none(), "{d:#?}");
}

/// The Inbox holds incoming mail even from the owner's own address; elsewhere, mail from any
/// address of the owner's is outgoing.
#[test]
fn direction_comes_from_the_folder_then_from_the_owners_addresses() {
    let engine = engine_with(|d| {
        set_filter(d, OWNER, 0);
        for u in &mut d.systemusers {
            if u.systemuserid == id(OWNER) {
                u.personalemailaddress = Some("owner.home@private.example".into());
            }
        }
    });
    let to_self = message(
        "self@x",
        "inbox",
        "owner@corp.example",
        &["owner@corp.example"],
    );
    let d = decide(&engine, &seen_in("owner@corp.example", to_self));
    assert_eq!(d.direction, Some(Direction::Incoming), "{d:#?}");
    let mut filed = message(
        "filed@x",
        "archive",
        "owner.home@private.example",
        &["pat@customer.example"],
    );
    filed.categories = vec!["Tracked to Dynamics 365".into()];
    let d = decide(&engine, &seen_in("owner@corp.example", filed));
    assert_eq!(
        d.direction,
        Some(Direction::Outgoing),
        "sent from the owner's other address: {d:#?}"
    );
}

/// Only a complete sighting (Message-ID and sender) settles a message as not tracked; one
/// that did not show the sender is decided again when it shows up complete.
#[test]
fn a_sighting_without_its_sender_does_not_settle_the_message() {
    let engine = engine_with(|d| set_filter(d, OWNER, 1));
    let mut partial = message("unsettled@x", "inbox", "stranger@else.example", &[]);
    partial.from = None;
    expect(
        &decide(&engine, &seen_in("owner@corp.example", partial)),
        Reason::NotAReply,
    );
    expect(
        &decide(&engine, &inbox("stranger@else.example", "unsettled@x")),
        Reason::NotAReply,
    );
    expect(
        &decide(&engine, &inbox("stranger@else.example", "unsettled@x")),
        Reason::AlreadyDecided,
    );
}

#[test]
fn each_correlation_method_and_the_switches_that_disable_it() {
    type Tweak = fn(&mut Message);
    type OrgTweak = fn(&mut Organization);
    let in_reply_to: Tweak = |m| m.in_reply_to = Some("orig@corp.example".into());
    let token: Tweak = |m| m.subject = Some("RE: Renewal [CRM:0001001]".into());
    let old_prefix: Tweak = |m| m.subject = Some("Renewal OLD:0001001".into());
    let conv_index: Tweak = |m| {
        use base64::Engine as _;
        m.conversation_index = Some(
            base64::engine::general_purpose::STANDARD
                .encode([7u8; 32])
                .into(),
        );
    };
    let conv_id: Tweak = |m| m.conversation_id = Some("CONV-1".into());
    let smart: Tweak = |m| {
        m.subject = Some("RE: quarterly PRICING update".into());
        m.from = Some(addr("pat@customer.example"));
        m.to = vec![addr("owner@corp.example")];
    };
    let forward: Tweak = |m| {
        m.subject = Some("FW: Renewal".into());
        m.in_reply_to = Some("orig@corp.example".into());
    };
    let none: OrgTweak = |_| {};
    type Case = (
        &'static str,
        Tweak,
        OrgTweak,
        Option<(CorrelationMethod, u128)>,
    );
    let cases: &[Case] = &[
        (
            "in-reply-to",
            in_reply_to,
            none,
            Some((CorrelationMethod::InReplyTo, OPP_ORIG)),
        ),
        (
            "in-reply-to off",
            in_reply_to,
            |o| o.emailcorrelationenabled = false,
            None,
        ),
        (
            "headers ignored",
            in_reply_to,
            |o| {
                o.orgdborgsettings
                    .ignore_conversation_index_and_in_reply_to_for_correlation = true
            },
            None,
        ),
        (
            "token",
            token,
            none,
            Some((CorrelationMethod::TrackingToken, OPP_TOKEN)),
        ),
        ("token from an older prefix", old_prefix, none, None),
        ("tokens off", token, |o| o.usetrackingtokens = false, None),
        (
            "token still works when headers are ignored",
            token,
            |o| {
                o.orgdborgsettings
                    .ignore_conversation_index_and_in_reply_to_for_correlation = true
            },
            Some((CorrelationMethod::TrackingToken, OPP_TOKEN)),
        ),
        (
            "conversation index",
            conv_index,
            none,
            Some((CorrelationMethod::ConversationIndex, OPP_CONV)),
        ),
        (
            "conversation index off",
            conv_index,
            |o| o.emailcorrelationenabled = false,
            None,
        ),
        (
            "conversation id",
            conv_id,
            none,
            Some((CorrelationMethod::ConversationId, OPP_CONVID)),
        ),
        ("smart matching off by default", smart, none, None),
        (
            "smart matching",
            smart,
            |o| o.enablesmartmatching = true,
            Some((CorrelationMethod::SmartMatching, OPP_SMART)),
        ),
        (
            "forward correlates",
            forward,
            none,
            Some((CorrelationMethod::InReplyTo, OPP_ORIG)),
        ),
        (
            "forwards not as replies",
            forward,
            |o| {
                o.orgdborgsettings
                    .do_not_correlate_forwarded_emails_as_replies = true
            },
            None,
        ),
    ];
    for (name, tweak, org, expected) in cases {
        let engine = engine_with(|d| {
            set_filter(d, OWNER, 1);
            // "OLD" tokens are recognised only while the prefix is in the history.
            if *name == "token from an older prefix" {
                d.organization.trackingprefix = "CRM".into();
            }
            org(&mut d.organization);
        });
        let mut m = message(
            &format!("{name}@x"),
            "inbox",
            "stranger@else.example",
            &["owner@corp.example"],
        );
        tweak(&mut m);
        let d = decide(&engine, &seen_in("owner@corp.example", m));
        match expected {
            Some((method, regarding)) => {
                assert!(d.is_track(), "{name}: {:#?}", d.explanation);
                assert_eq!(d.reason, method.reason(), "{name}");
                assert_eq!(
                    d.correlation.as_ref().map(|c| c.method),
                    Some(*method),
                    "{name}"
                );
                assert_eq!(
                    d.regarding,
                    Some(look("opportunity", *regarding)),
                    "{name}: inherits regarding"
                );
                assert_eq!(d.regarding_source, Some(RegardingSource::Correlation));
            }
            None => expect(&d, Reason::NotAReply),
        }
    }
    // An older prefix still in the history correlates.
    let engine = engine_with(|d| {
        set_filter(d, OWNER, 1);
        d.emails[1].trackingtoken = Some("OLD:0001001".into());
    });
    let mut m = message("old-token@x", "inbox", "stranger@else.example", &[]);
    old_prefix(&mut m);
    expect(
        &decide(&engine, &seen_in("owner@corp.example", m)),
        Reason::ReplyTrackingToken,
    );
}

#[test]
fn replies_correlate_with_mail_tracked_moments_ago_through_the_gateway() {
    let engine = engine_with(|d| set_filter(d, OWNER, 2));
    // Tracked by this engine moments ago (the directory's email table does not have it yet)
    // because the sender is a contact; moved into a folder linked to the account.
    expect(
        &decide(&engine, &inbox("pat@customer.example", "first@x")),
        Reason::SenderContact,
    );
    let d = decide(
        &engine,
        &move_to("item-first@x", "first-moved", Some(TRACKED), None),
    );
    assert!(d.update_regarding);
    let stranger_reply = |message_id: &str| {
        let mut m = message(
            message_id,
            "inbox",
            "stranger@else.example",
            &["owner@corp.example"],
        );
        m.in_reply_to = Some("first@x".into());
        seen_in("owner@corp.example", m)
    };
    // Filter 2: a stranger is not a contact, even in a tracked thread.
    expect(
        &decide(&engine, &stranger_reply("second@x")),
        Reason::SenderUnresolved,
    );

    // The owner now wants responses to CRM email only; the directory is reloaded under the
    // same engine, which still remembers what it tracked. The stranger's reply correlates with
    // the gateway-tracked original by In-Reply-To and inherits its regarding.
    let mut doc = base();
    set_filter(&mut doc, OWNER, 1);
    engine
        .directory()
        .swap(Directory::build(doc).expect("valid test directory"));
    let reply = stranger_reply("third@x");
    let d = decide(&engine, &reply);
    expect(&d, Reason::ReplyInReplyTo);
    assert_eq!(
        d.correlation.as_ref().and_then(|c| c.activityid),
        Some(email_id(id(ORG), "first@x", Direction::Incoming)),
        "correlated with the email this engine tracked"
    );
    assert_eq!(
        d.regarding,
        Some(look("account", ACCOUNT)),
        "the regarding the move gave the original"
    );
    // Without the original tracked, the same reply is not a response to CRM email.
    let fresh = engine_with(|d| set_filter(d, OWNER, 1));
    assert_ne!(decide(&fresh, &reply).verdict, d.verdict);

    let engine = engine_with(|d| set_filter(d, OWNER, 1));
    expect(
        &decide(
            &engine,
            &seen_in("owner@corp.example", {
                let mut m = message("a@x", "inbox", "pat@customer.example", &[]);
                m.in_reply_to = Some("orig@corp.example".into());
                m
            }),
        ),
        Reason::ReplyInReplyTo,
    );
    let mut m = message("b@x", "inbox", "stranger@else.example", &[]);
    m.in_reply_to = Some("a@x".into());
    let d = decide(&engine, &seen_in("owner@corp.example", m));
    expect(&d, Reason::ReplyInReplyTo);
    assert_eq!(
        d.correlation.unwrap().activityid,
        Some(email_id(id(ORG), "a@x", Direction::Incoming))
    );
    assert_eq!(
        d.regarding,
        Some(look("opportunity", OPP_ORIG)),
        "regarding flows down the thread"
    );
}

fn sender_of(d: &Decision) -> Vec<Lookup> {
    d.from
        .as_ref()
        .map(|p| p.records.to_vec())
        .unwrap_or_default()
}

#[test]
fn sender_resolution_follows_precedence_ownership_and_state() {
    let engine = engine_with(|_| {});
    let from = |a: &str, n: &str| decide(&engine, &inbox(a, n));
    // A user wins over a contact with the same address…
    assert_eq!(
        sender_of(&from("colleague@corp.example", "p1@x")),
        vec![look("systemuser", COLLEAGUE)]
    );
    // …except in the mailbox of the contact's owner: owned rows come first.
    let d = decide(
        &engine,
        &seen_in(
            "allmail@corp.example",
            message("p1b@x", "inbox", "colleague@corp.example", &[]),
        ),
    );
    assert_eq!(sender_of(&d), vec![look("contact", 0xc9)]);
    // A contact wins over an account.
    assert_eq!(
        sender_of(&from("shared@customer.example", "p2@x")),
        vec![look("contact", SHARED_CONTACT)]
    );
    // The owner's own row wins over an earlier-created one.
    assert_eq!(
        sender_of(&from("dup@customer.example", "p3@x")),
        vec![look("contact", DUP_MINE)]
    );
    // A single inactive match still resolves.
    assert_eq!(
        sender_of(&from("old@customer.example", "p4@x")),
        vec![look("contact", OLD_CONTACT)]
    );
    // A disabled user never does.
    assert_eq!(sender_of(&from("gone@corp.example", "p5@x")), vec![]);
    // X.500 addresses map through the directory.
    let mut m = message("p6@x", "inbox", "x", &["owner@corp.example"]);
    m.from = Some(Address {
        name: Some("Colleague".into()),
        address: Some("/o=Corp/ou=Exchange/cn=Recipients/cn=colleague".into()),
        routing_type: Some("EX".into()),
    });
    assert_eq!(
        sender_of(&decide(&engine, &seen_in("owner@corp.example", m))),
        vec![look("systemuser", COLLEAGUE)]
    );
    // Without ownership (another mailbox), the earliest created wins.
    let d = decide(
        &engine,
        &seen_in(
            "allmail@corp.example",
            message("p7@x", "inbox", "dup@customer.example", &[]),
        ),
    );
    assert_eq!(sender_of(&d), vec![look("contact", DUP_OLD)]);
    // Multiple matches unresolved when the organisation says so.
    let strict = engine_with(|d| {
        d.organization
            .orgdborgsettings
            .unresolve_sender_in_case_of_multiple_match = true
    });
    assert_eq!(
        sender_of(&decide(&strict, &inbox("dup@customer.example", "p8@x"))),
        vec![]
    );
    // Inactive rows resolve among several only when the organisation allows it.
    let engine = engine_with(|d| {
        d.leads.push(Lead {
            leadid: id(0xe9),
            emailaddress1: Some("old@customer.example".into()),
            statecode: 1,
            ..Default::default()
        });
    });
    assert_eq!(
        sender_of(&decide(&engine, &inbox("old@customer.example", "p9@x"))),
        vec![]
    );
    let engine = engine_with(|d| {
        d.organization
            .orgdborgsettings
            .resolve_for_inactive_entities = true;
        d.leads.push(Lead {
            leadid: id(0xe9),
            emailaddress1: Some("old@customer.example".into()),
            statecode: 1,
            ..Default::default()
        });
    });
    assert_eq!(
        sender_of(&decide(&engine, &inbox("old@customer.example", "p10@x"))),
        vec![look("contact", OLD_CONTACT)]
    );
}

/// `max_parties` bounds the recipients considered across To, Cc and Bcc together.
#[test]
fn recipients_beyond_max_parties_are_not_considered_across_to_and_cc() {
    let engine = Engine::new(
        DirectoryHandle::new(Directory::build(base()).expect("valid test directory")),
        MemoryLimits::default(),
        RulesLimits { max_parties: 3 },
    );
    let mut m = message(
        "many@x",
        "inbox",
        "pat@customer.example",
        &["owner@corp.example", "colleague@corp.example"],
    );
    m.cc = vec![addr("allmail@corp.example"), addr("quiet@corp.example")];
    let d = decide(&engine, &seen_in("owner@corp.example", m));
    assert_eq!(d.to.len(), 2, "{d:#?}");
    assert_eq!(d.cc.len(), 1, "the budget left after To: {d:#?}");
    assert!(
        d.explanation
            .iter()
            .any(|l| l.contains("more than 3 recipients")),
        "{:#?}",
        d.explanation
    );
    let few = decide(&engine, &inbox("pat@customer.example", "few@x"));
    assert!(
        !few.explanation.iter().any(|l| l.contains("recipients:")),
        "{:#?}",
        few.explanation
    );
}

/// A recipient address shared by more than 100 records resolves to none of them, as a sender's.
#[test]
fn a_recipient_address_shared_by_over_100_records_is_left_unresolved() {
    let to_crowd = |count: u128, n: &str| {
        let engine = engine_with(move |d| {
            for k in 0..count {
                d.contacts.push(contact(
                    0x6000 + k,
                    "crowd@customer.example",
                    COLLEAGUE,
                    "2021-01-01T00:00:00Z",
                ));
            }
        });
        let m = message(
            n,
            "sentitems",
            "owner@corp.example",
            &["crowd@customer.example"],
        );
        let d = decide(&engine, &seen_in("owner@corp.example", m));
        d.to.first().map(|p| p.records.len()).unwrap_or(0)
    };
    assert_eq!(to_crowd(100, "rc1@x"), 100);
    assert_eq!(to_crowd(101, "rc2@x"), 0);
}

/// An inactive record resolves as a recipient only with ResolveForInactiveEntities, and a
/// disabled user never does.
#[test]
fn inactive_recipients_resolve_only_when_the_organisation_allows_it() {
    let to = |engine: &Engine, address: &str, n: &str| {
        let m = message(n, "sentitems", "owner@corp.example", &[address]);
        let d = decide(engine, &seen_in("owner@corp.example", m));
        d.to.first().map(|p| p.records.to_vec()).unwrap_or_default()
    };
    let strict = engine_with(|d| set_filter(d, OWNER, 0));
    assert_eq!(to(&strict, "old@customer.example", "ir1@x"), vec![]);
    let allowing = engine_with(|d| {
        set_filter(d, OWNER, 0);
        d.organization
            .orgdborgsettings
            .resolve_for_inactive_entities = true;
    });
    assert_eq!(
        to(&allowing, "old@customer.example", "ir2@x"),
        vec![look("contact", OLD_CONTACT)]
    );
    assert_eq!(to(&allowing, "gone@corp.example", "ir3@x"), vec![]);
}

/// With "unresolve recipients on multiple match", a recipient with one match still resolves.
#[test]
fn a_single_recipient_match_resolves_when_multiple_matches_are_unresolved() {
    let engine = engine_with(|d| d.organization.unresolveemailaddressifmultiplematch = true);
    let d = decide(
        &engine,
        &seen_in(
            "owner@corp.example",
            message(
                "one-match@x",
                "inbox",
                "pat@customer.example",
                &["owner@corp.example"],
            ),
        ),
    );
    assert!(d.is_track(), "{d:#?}");
    assert_eq!(d.to.len(), 1);
    assert_eq!(
        d.to[0].records.to_vec(),
        vec![look("systemuser", OWNER)],
        "{d:#?}"
    );
}

/// The live pipeline decides without explanations: a track still has its parties spelled out,
/// and a decision not to track spends nothing on them (it is neither delivered nor explained).
#[test]
fn without_explanation_only_a_track_has_its_parties() {
    let engine = engine_with(|d| set_filter(d, OWNER, 2));
    let mut all = engine.decide(&inbox("pat@customer.example", "apply@x"), Mode::APPLY);
    let d = all.remove(0);
    assert!(d.is_track(), "{d:#?}");
    assert_eq!(sender_of(&d), vec![look("contact", PAT)]);
    assert_eq!(d.to.len(), 1);
    let mut all = engine.decide(&inbox("stranger@else.example", "apply2@x"), Mode::APPLY);
    let d = all.remove(0);
    assert!(!d.is_track(), "{d:#?}");
    assert!(d.from.is_none() && d.to.is_empty(), "{d:#?}");
}

/// A second, fuller sighting of an item is remembered: a later move of it is decided from the
/// full message, not the first glimpse.
/// A sighting leaves one summary of its item in the memory, holding what was decided: tracked
/// for a track, settled for a final ignore, neither for an ignore a fuller sighting may revisit.
#[test]
fn a_sighting_leaves_its_item_remembered_with_what_was_decided() {
    use trackgate::directory::snapshot::normalize_exchange_id;
    let remembered = |engine: &Engine, message_id: &str| {
        let item = normalize_exchange_id(&format!("item-{message_id}")).into_owned();
        engine
            .memory()
            .item("owner@corp.example", &item)
            .unwrap_or_else(|| panic!("{message_id} is remembered"))
    };
    let engine = engine_with(|d| set_filter(d, OWNER, 0));
    let d = decide(&engine, &inbox("stranger@else.example", "all@x"));
    expect(&d, Reason::FilterAll);
    let tracked = remembered(&engine, "all@x");
    assert!(!tracked.settled);
    assert_eq!(tracked.tracked.as_ref().map(|t| t.crm_id), Some(d.crm_id));
    assert!(d.crm_id.is_some());

    let engine = engine_with(|d| set_filter(d, OWNER, 1));
    expect(
        &decide(&engine, &inbox("stranger@else.example", "reply@x")),
        Reason::NotAReply,
    );
    let settled = remembered(&engine, "reply@x");
    assert!(settled.tracked.is_none() && settled.settled);

    let mut partial = message("partial@x", "inbox", "stranger@else.example", &[]);
    partial.from = None;
    expect(
        &decide(&engine, &seen_in("owner@corp.example", partial)),
        Reason::NotAReply,
    );
    let seen = remembered(&engine, "partial@x");
    assert!(seen.tracked.is_none() && !seen.settled);
    assert_eq!(
        seen.message.internet_message_id.as_deref(),
        Some("partial@x")
    );
}

#[test]
fn a_fuller_sighting_replaces_what_was_remembered_of_an_item() {
    let engine = engine_with(|d| set_filter(d, OWNER, 4));
    let mut glimpse = message("glimpse@x", "inbox", "pat@customer.example", &[]);
    glimpse.from = None;
    glimpse.to = Vec::new();
    decide(&engine, &seen_in("owner@corp.example", glimpse));
    expect(
        &decide(&engine, &inbox("pat@customer.example", "glimpse@x")),
        Reason::FilterNone,
    );
    let d = decide(
        &engine,
        &move_to("item-glimpse@x", "moved-g", Some(TRACKED), None),
    );
    expect(&d, Reason::FolderRule);
    assert_eq!(sender_of(&d), vec![look("contact", PAT)], "{d:#?}");
}

/// An X.500 address is recognised by its routing type or by its form, in either case of `/o=`.
#[test]
fn x500_senders_resolve_whatever_the_routing_type_says() {
    let engine = engine_with(|_| {});
    for (n, (address, routing)) in [
        ("/o=Corp/ou=Exchange/cn=Recipients/cn=colleague", None),
        (
            "/O=Corp/ou=Exchange/cn=Recipients/cn=colleague",
            Some("SMTP"),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = message(
            &format!("x500-{n}@x"),
            "inbox",
            "x",
            &["owner@corp.example"],
        );
        m.from = Some(Address {
            name: Some("Colleague".into()),
            address: Some(address.into()),
            routing_type: routing.map(Into::into),
        });
        assert_eq!(
            sender_of(&decide(&engine, &seen_in("owner@corp.example", m))),
            vec![look("systemuser", COLLEAGUE)],
            "{address} {routing:?}"
        );
    }
}

/// An address shared by more records than the resolver considers (100) resolves to none of
/// them; at exactly the limit it still resolves.
#[test]
fn a_sender_address_shared_by_over_100_records_is_left_unresolved() {
    let shared_by = |count: u128| {
        engine_with(move |d| {
            for n in 0..count {
                d.contacts.push(contact(
                    0x5000 + n,
                    "crowd@customer.example",
                    COLLEAGUE,
                    "2021-01-01T00:00:00Z",
                ));
            }
        })
    };
    let at_limit = shared_by(100);
    assert_eq!(
        sender_of(&decide(
            &at_limit,
            &inbox("crowd@customer.example", "crowd1@x")
        ))
        .len(),
        1
    );
    let over = shared_by(101);
    assert_eq!(
        sender_of(&decide(&over, &inbox("crowd@customer.example", "crowd2@x"))),
        vec![]
    );
}

#[test]
fn recipients_resolve_to_every_match_narrowed_by_options() {
    let to = |engine: &Engine, n: &str| {
        let d = decide(
            engine,
            &seen_in(
                "owner@corp.example",
                message(
                    n,
                    "inbox",
                    "stranger@else.example",
                    &["owner@corp.example", "dup@customer.example"],
                ),
            ),
        );
        d.to[1].records.to_vec()
    };
    assert_eq!(
        to(&engine_with(|_| {}), "q1@x"),
        vec![look("contact", DUP_OLD), look("contact", DUP_MINE)]
    );
    // Multiple matches as one unresolved address.
    let strict = engine_with(|d| d.organization.unresolveemailaddressifmultiplematch = true);
    assert_eq!(to(&strict, "q2@x"), vec![]);
    // Address book: only synchronized (owned) contacts.
    let narrow = engine_with(|d| {
        d.usersettingscollection[0].addressbookcontactmatching =
            Some(ContactMatching::Synchronized);
    });
    assert_eq!(to(&narrow, "q3@x"), vec![look("contact", DUP_MINE)]);
    // Other records: none, only mine, all.
    for (matching, expected) in [
        (OtherMatching::None, vec![]),
        (OtherMatching::Mine, vec![look("account", ACCOUNT)]),
        (OtherMatching::All, vec![look("account", ACCOUNT)]),
    ] {
        let engine =
            engine_with(|d| d.usersettingscollection[0].addressbookothermatching = Some(matching));
        let d = decide(
            &engine,
            &seen_in(
                "owner@corp.example",
                message(
                    "q4@x",
                    "inbox",
                    "stranger@else.example",
                    &["info@customer.example", "lead@prospect.example"],
                ),
            ),
        );
        assert_eq!(d.to[0].records.to_vec(), expected, "{matching:?}");
        let lead = if matching == OtherMatching::All {
            vec![look("lead", LEAD)]
        } else {
            vec![]
        };
        assert_eq!(
            d.to[1].records.to_vec(),
            lead,
            "{matching:?}: the lead is nobody's"
        );
    }
}

/// A user who tracks mail from contacts, accounts and leads (filter 2), with no address-book
/// options in the document, writing to a contact a colleague owns.
fn to_a_colleagues_contact(change: impl FnOnce(&mut UserSettings)) -> Decision {
    let engine = engine_with(|d| {
        d.organization.orgdborgsettings.auto_track_sent_folder_items = true;
        d.contacts.push(contact(
            0xc7,
            "their.customer@customer.example",
            COLLEAGUE,
            "2025-06-01T00:00:00Z",
        ));
        let mut own = UserSettings {
            systemuserid: id(OWNER),
            incomingemailfilteringmethod: 2,
            ..Default::default()
        };
        change(&mut own);
        d.usersettingscollection[0] = own;
    });
    let mut m = message(
        "to-colleagues-contact@x",
        "sentitems",
        "owner@corp.example",
        &["their.customer@customer.example"],
    );
    m.folder = None;
    m.item_id = None;
    decide(&engine, &sent("owner@corp.example", "CreateItem", m, &[]))
}

#[test]
fn recipients_match_every_record_when_the_address_book_options_are_unset() {
    // The options belong to the legacy Outlook client and have no confirmed Dataverse column;
    // server-side sync resolves recipients to every match (docs/domain.md §4.2).
    let d = to_a_colleagues_contact(|_| {});
    expect(&d, Reason::RecipientContact);
    assert_eq!(d.to[0].records.to_vec(), vec![look("contact", 0xc7)]);
    // A document that does not name them leaves them unset.
    let parsed: UserSettings = toml::from_str(
        "systemuserid = \"00000000-0000-0000-0000-0000000000a1\"\nincomingemailfilteringmethod = 2\n",
    )
    .unwrap();
    assert_eq!(parsed.addressbookcontactmatching, None);
    assert_eq!(parsed.addressbookothermatching, None);
}

#[test]
fn an_explicit_address_book_option_still_narrows() {
    let d = to_a_colleagues_contact(|s| {
        s.addressbookcontactmatching = Some(ContactMatching::Synchronized);
    });
    expect(&d, Reason::RecipientsNotInFilter);
    // Narrowing contacts leaves the other tables alone, and the reverse.
    let d = to_a_colleagues_contact(|s| s.addressbookothermatching = Some(OtherMatching::None));
    expect(&d, Reason::RecipientContact);
    let d = to_a_colleagues_contact(|s| {
        s.addressbookcontactmatching = Some(ContactMatching::All);
    });
    expect(&d, Reason::RecipientContact);
}

#[test]
fn auto_create_follows_user_and_org_settings_and_is_one_record_per_address() {
    let stranger = |engine: &Engine, mailbox: &str, n: &str| {
        let mut m = message(n, "inbox", "new.prospect@else.example", &[mailbox]);
        m.from.as_mut().unwrap().name = Some("Prospect, New".into());
        decide(engine, &seen_in(mailbox, m))
    };
    let engine = engine_with(|_| {});
    let a = stranger(&engine, "owner@corp.example", "ac1@x");
    let create = a.auto_create.clone().expect("a contact is created");
    assert_eq!(create.entity, "contact");
    assert_eq!(
        (create.firstname.as_deref(), create.lastname.as_str()),
        (Some("New"), "Prospect")
    );
    assert_eq!(sender_of(&a), vec![look("contact", create.id.as_u128())]);
    // Another mailbox, another message from the same sender: the same record, not a new one.
    let b = stranger(&engine, "allmail@corp.example", "ac2@x");
    // Carried again, with the same id: the first create may still be queued, and delivery
    // creates before it binds (a create-only upsert, so one record).
    assert_eq!(b.auto_create.as_ref().map(|c| c.id), Some(create.id));
    assert_eq!(sender_of(&b), vec![look("contact", create.id.as_u128())]);
    // Two gateways (or a restart) derive the same id for the same address.
    let elsewhere = engine_with(|_| {});
    let c = stranger(&elsewhere, "allmail@corp.example", "ac2@x");
    assert_eq!(c.auto_create.unwrap().id, create.id);
    // Until the directory has it, the created contact resolves the next mail from the address:
    // a user who tracks only mail from contacts now tracks it, and nothing is created twice.
    let filter2 = engine_with(|d| set_filter(d, ALLMAIL, 2));
    let first = stranger(&filter2, "owner@corp.example", "ac1b@x");
    let created = first.auto_create.unwrap().id;
    let next = stranger(&filter2, "allmail@corp.example", "ac2b@x");
    expect(&next, Reason::SenderContact);
    assert_eq!(next.auto_create.as_ref().map(|c| c.id), Some(created));
    assert_eq!(sender_of(&next), vec![look("contact", created.as_u128())]);
    // Leads.
    let leads = engine_with(|d| d.usersettingscollection[0].autocreatecontactonpromote = 2);
    assert_eq!(
        stranger(&leads, "owner@corp.example", "ac3@x")
            .auto_create
            .unwrap()
            .entity,
        "lead"
    );
    // Only an incoming sender is created: mail in Sent Items from an address the directory
    // does not know (sent on someone's behalf) creates nothing.
    let sent = decide(
        &engine,
        &seen_in(
            "owner@corp.example",
            message(
                "ac-sent@x",
                "sentitems",
                "new.sender@else.example",
                &["pat@customer.example"],
            ),
        ),
    );
    assert_eq!(sent.direction, Some(Direction::Outgoing), "{sent:#?}");
    assert!(sent.auto_create.is_none(), "{sent:#?}");
    // The user's option off, or the organisation's.
    let off = engine_with(|d| d.usersettingscollection[0].autocreatecontactonpromote = 0);
    assert!(
        stranger(&off, "owner@corp.example", "ac4@x")
            .auto_create
            .is_none()
    );
    let org_off = engine_with(|d| {
        d.organization
            .orgdborgsettings
            .auto_create_contact_on_promote = false
    });
    assert!(
        stranger(&org_off, "owner@corp.example", "ac5@x")
            .auto_create
            .is_none()
    );
    // Queues create nothing; resolved senders need nothing.
    assert!(
        stranger(&engine, "support@corp.example", "ac6@x")
            .auto_create
            .is_none()
    );
    let resolved = decide(&engine, &inbox("pat@customer.example", "ac7@x"));
    assert!(resolved.auto_create.is_none());
    assert!(
        !resolved
            .explanation
            .iter()
            .any(|line| line.contains("record") && line.contains("sender")),
        "a resolved sender is not considered for a record at all: {:#?}",
        resolved.explanation
    );
}

#[test]
fn internal_mail_follows_the_organisation_setting() {
    let from_colleague = |n: &str| inbox("colleague@corp.example", n);
    expect(
        &decide(&engine_with(|_| {}), &from_colleague("i1@x")),
        Reason::FilterAll,
    );
    let ignoring = engine_with(|d| d.organization.ignoreinternalemail = true);
    expect(
        &decide(&ignoring, &from_colleague("i2@x")),
        Reason::InternalEmail,
    );
    // A reply in a tracked thread is tracked even when internal.
    let mut m = message(
        "i3@x",
        "inbox",
        "colleague@corp.example",
        &["owner@corp.example"],
    );
    m.in_reply_to = Some("orig@corp.example".into());
    expect(
        &decide(&ignoring, &seen_in("owner@corp.example", m)),
        Reason::FilterAll,
    );
    // Internal mail to a queue is still tracked (DoNotIgnoreInternalEmailToQueues).
    let d = decide(
        &ignoring,
        &seen_in(
            "support@corp.example",
            message(
                "i4@x",
                "inbox",
                "colleague@corp.example",
                &["support@corp.example"],
            ),
        ),
    );
    expect(&d, Reason::FilterAll);
    // Mail from a queue is internal only with IgnoreInternalEmailFromQueues (off by default);
    // mail from a customer never is.
    let from_queue = |n: &str| inbox("support@corp.example", n);
    expect(&decide(&ignoring, &from_queue("i5@x")), Reason::FilterAll);
    let ignoring_queues = engine_with(|d| {
        d.organization.ignoreinternalemail = true;
        d.organization
            .orgdborgsettings
            .ignore_internal_email_from_queues = true;
    });
    expect(
        &decide(&ignoring_queues, &from_queue("i6@x")),
        Reason::InternalEmail,
    );
    expect(
        &decide(&ignoring_queues, &inbox("pat@customer.example", "i7@x")),
        Reason::FilterAll,
    );
}

#[test]
fn initial_sync_respects_process_email_received_after() {
    let sync = |engine: &Engine, n: &str, received: &str| {
        let mut m = message(n, "inbox", "stranger@else.example", &[]);
        m.received_at = Some(received.into());
        decide(
            engine,
            &Observation::MessageSeen {
                origin: origin("owner@corp.example", "SyncFolderItems"),
                message: m.into(),
                initial_sync: true,
            },
        )
    };
    let no_cutoff = engine_with(|_| {});
    expect(
        &sync(&no_cutoff, "s1@x", "2026-11-20T10:00:00Z"),
        Reason::InitialSyncHistory,
    );
    let cutoff = engine_with(|d| {
        d.mailboxes[0].processemailreceivedafter = Some("2026-11-01T00:00:00Z".into())
    });
    expect(
        &sync(&cutoff, "s2@x", "2026-10-31T23:59:59Z"),
        Reason::ReceivedBeforeCutoff,
    );
    expect(
        &sync(&cutoff, "s3@x", "2026-11-01T00:00:01Z"),
        Reason::FilterAll,
    );
    // The organisation's (server profile) time applies when later than the mailbox's.
    let both = engine_with(|d| {
        d.mailboxes[0].processemailreceivedafter = Some("2026-11-01T00:00:00Z".into());
        d.organization.processemailreceivedafter = Some("2026-11-15T00:00:00+01:00".into());
    });
    expect(
        &sync(&both, "s4@x", "2026-11-10T00:00:00Z"),
        Reason::ReceivedBeforeCutoff,
    );
    // New mail (not an initial sync) before the cut-off is history too.
    let d = decide(
        &cutoff,
        &seen_in("owner@corp.example", {
            let mut m = message("s5@x", "inbox", "stranger@else.example", &[]);
            m.received_at = Some("2026-01-01T00:00:00Z".into());
            m
        }),
    );
    expect(&d, Reason::ReceivedBeforeCutoff);
}

#[test]
fn mailbox_states_drafts_and_non_mail() {
    let engine = engine_with(|d| d.mailboxes[0].incomingemaildeliverymethod = 0);
    expect(
        &decide(&engine, &inbox("pat@customer.example", "x1@x")),
        Reason::DeliveryDisabled,
    );
    let engine = engine_with(|_| {});
    let unknown = seen_in(
        "nobody@corp.example",
        message("x2@x", "inbox", "pat@customer.example", &[]),
    );
    expect(&decide(&engine, &unknown), Reason::UnknownMailbox);
    let mut m = message("x3@x", "inbox", "pat@customer.example", &[]);
    m.is_draft = Some(true);
    expect(
        &decide(&engine, &seen_in("owner@corp.example", m)),
        Reason::Draft,
    );
    let mut m = message("x4@x", "inbox", "pat@customer.example", &[]);
    m.item_class = Some("IPM.Schedule.Meeting.Request".into());
    expect(
        &decide(&engine, &seen_in("owner@corp.example", m)),
        Reason::NotAnEmail,
    );
    // A disabled owner's mailbox tracks nothing.
    let engine = engine_with(|d| {
        d.mailboxes
            .push(mailbox(9, "gone@corp.example", look("systemuser", GONE)));
    });
    let d = decide(
        &engine,
        &seen_in(
            "gone@corp.example",
            message("x5@x", "inbox", "pat@customer.example", &[]),
        ),
    );
    expect(&d, Reason::OwnerDisabled);
    // The mailbox is found by the owner's sign-in name and object id too.
    let oid = Uuid::from_u128(0x0123);
    let engine = engine_with(|d| {
        d.systemusers[0].domainname = Some("CORP\\owner".into());
        d.systemusers[0].azureactivedirectoryobjectid = Some(oid);
    });
    for principal in ["corp\\owner", &oid.to_string()] {
        let d = decide(
            &engine,
            &seen_in(
                principal,
                message(
                    &format!("x6{principal}@x"),
                    "inbox",
                    "pat@customer.example",
                    &[],
                ),
            ),
        );
        assert_eq!(d.user, Some(look("systemuser", OWNER)), "{principal}");
    }
}

fn sent(mailbox: &str, via: &str, m: Message, drafts: &[&str]) -> Observation {
    Observation::MessageSent {
        origin: origin(mailbox, via),
        via: via.into(),
        message: m.into(),
        draft_item_ids: drafts.iter().map(|d| (*d).to_owned()).collect(),
        reference_item_id: None,
        saved_to_folder: Some("sentitems".into()),
    }
}

#[test]
fn sent_mail_is_tracked_only_when_the_org_auto_tracks_it() {
    let to_contact = || {
        let mut m = message(
            "out@x",
            "sentitems",
            "owner@corp.example",
            &["pat@customer.example"],
        );
        m.folder = None;
        m.item_id = None;
        m
    };
    let off = engine_with(|d| d.organization.orgdborgsettings.auto_track_sent_folder_items = false);
    expect(
        &decide(
            &off,
            &sent("owner@corp.example", "CreateItem", to_contact(), &[]),
        ),
        Reason::SentNotAutoTracked,
    );
    for (filter, to, reason) in [
        (0, "stranger@else.example", Reason::FilterAll),
        (2, "pat@customer.example", Reason::RecipientContact),
        (2, "info@customer.example", Reason::RecipientAccount),
        (2, "stranger@else.example", Reason::RecipientsNotInFilter),
        (3, "room@corp.example", Reason::RecipientEmailEnabled),
        (1, "stranger@else.example", Reason::NotAReply),
        (4, "pat@customer.example", Reason::FilterNone),
    ] {
        let engine = engine_with(|d| set_filter(d, OWNER, filter));
        let mut m = to_contact();
        m.to = vec![addr(to)];
        let d = decide(&engine, &sent("owner@corp.example", "CreateItem", m, &[]));
        expect(&d, reason);
        assert_eq!(d.direction, Some(Direction::Outgoing));
    }
    // The send, then its copy in Sent Items: one track decision.
    let engine = engine_with(|d| set_filter(d, OWNER, 2));
    let d = decide(
        &engine,
        &sent("owner@corp.example", "CreateItem", to_contact(), &[]),
    );
    expect(&d, Reason::RecipientContact);
    assert_eq!(
        d.crm_id,
        Some(email_id(id(ORG), "out@x", Direction::Outgoing))
    );
    let copy = message(
        "out@x",
        "sentitems",
        "owner@corp.example",
        &["pat@customer.example"],
    );
    expect(
        &decide(&engine, &seen_in("owner@corp.example", copy)),
        Reason::AlreadyTracked,
    );
    // A draft sent by id: known content decides; unknown content waits for enrichment.
    let mut draft = message(
        "draft@x",
        "drafts",
        "owner@corp.example",
        &["lead@prospect.example"],
    );
    draft.item_id = Some("draft-1".into());
    draft.is_draft = Some(true);
    expect(
        &decide(&engine, &seen_in("owner@corp.example", draft)),
        Reason::Draft,
    );
    let d = decide(
        &engine,
        &sent(
            "owner@corp.example",
            "SendItem",
            Message::default(),
            &["draft-1"],
        ),
    );
    expect(&d, Reason::RecipientLead);
    assert_eq!(d.internet_message_id.as_deref(), Some("draft@x"));
    assert!(!d.needs_enrichment, "the draft's content was known");
    let never_seen = |d: &Decision| {
        d.explanation
            .iter()
            .any(|l| l.contains("the draft was never seen"))
    };
    assert!(!never_seen(&d), "{:#?}", d.explanation);
    // The sent draft is remembered as tracked: its item, moved later, is the same CRM email.
    let moved = decide(&engine, &move_to("draft-1", "moved-d", Some(TRACKED), None));
    assert!(moved.is_track(), "{moved:#?}");
    assert_eq!(
        moved.crm_id,
        Some(email_id(id(ORG), "draft@x", Direction::Outgoing))
    );
    assert!(
        moved.update_regarding,
        "a re-link of the tracked send: {moved:#?}"
    );
    let d = decide(
        &engine,
        &sent(
            "owner@corp.example",
            "SendItem",
            Message::default(),
            &["draft-unknown"],
        ),
    );
    expect(&d, Reason::NeedsEnrichment);
    assert!(d.needs_enrichment);
    assert!(never_seen(&d), "{:#?}", d.explanation);
}

/// The same message as FindItem, GetItem, SyncFolderItems and Graph show it.
fn sightings(message_id: &str) -> Vec<Observation> {
    let full = message(
        message_id,
        "inbox",
        "pat@customer.example",
        &["owner@corp.example"],
    );
    let find = Message {
        to: Vec::new(),
        internet_message_id: None,
        ..full.clone()
    };
    let sync = Message {
        subject: Some("RE: something".into()),
        ..full.clone()
    };
    let graph_id = full.item_id.clone().unwrap().replace('+', "-");
    let graph = Message {
        item_id: Some(graph_id.into()),
        ..full.clone()
    };
    let with = |op: &str, source: Source, m: Message| Observation::MessageSeen {
        origin: Origin {
            mailbox: Some("owner@corp.example".into()),
            source,
            operation: op.into(),
        },
        message: m.into(),
        initial_sync: false,
    };
    vec![
        with("FindItem", Source::Ews, find),
        with("GetItem", Source::Ews, full.clone()),
        with("SyncFolderItems", Source::Ews, sync),
        with("list_messages", Source::Graph, graph),
        // The same message in a colleague's mailbox (a second recipient): the same CRM email.
        Observation::MessageSeen {
            origin: origin("allmail@corp.example", "GetItem"),
            message: Message {
                item_id: Some("another-mailbox-item".into()),
                ..full
            }
            .into(),
            initial_sync: false,
        },
    ]
}

#[test]
fn one_message_seen_many_ways_yields_one_track_decision() {
    let engine = engine_with(|d| set_filter(d, OWNER, 2));
    let decisions: Vec<Decision> = sightings("many+ways@x")
        .iter()
        .flat_map(|o| engine.decide(o, Mode::REPLAY))
        .collect();
    let tracks: Vec<&Decision> = decisions.iter().filter(|d| d.is_track()).collect();
    assert_eq!(tracks.len(), 1, "{decisions:#?}");
    assert!(
        decisions
            .iter()
            .filter(|d| !d.is_track())
            .all(|d| d.reason == Reason::AlreadyTracked)
    );
}

#[test]
fn a_sighting_without_a_message_id_is_enriched_to_the_same_crm_email() {
    // FindItem shows no Message-ID: the track waits for delivery to fetch it. Another
    // recipient's mailbox cannot know it is the same message and decides it too; both resolve
    // to one CRM id, so the CRM still gets one email (the outbox and the upsert dedupe).
    let engine = engine_with(|d| set_filter(d, OWNER, 0));
    let all = sightings("nomid@x");
    let first = decide(&engine, &all[0]);
    expect(&first, Reason::FilterAll);
    assert!(first.needs_enrichment);
    assert_eq!(first.crm_id, None);
    let other = decide(&engine, &all[4]);
    assert!(other.is_track());
    assert_eq!(
        other.crm_id,
        Some(email_id(id(ORG), "nomid@x", Direction::Incoming))
    );
    // In the first mailbox, the later full sighting is the same tracked item.
    expect(&decide(&engine, &all[1]), Reason::AlreadyTracked);
}

#[test]
fn a_category_set_on_an_unseen_item_is_decided_again_from_exchanges_copy() {
    const CAT: &str = "Tracked to Dynamics 365";
    // Filter "none": only the category can track this message.
    let engine = engine_with(|d| set_filter(d, OWNER, 4));
    let provisional = decide(
        &engine,
        &categories("item-unseen@x", CategoryMode::Append, &[CAT]),
    );
    assert!(provisional.needs_enrichment, "{provisional:#?}");
    assert_eq!(provisional.crm_id, None);
    // What Exchange returns may predate the category the traffic showed being set.
    let fetched = message(
        "unseen@x",
        "inbox",
        "stranger@else.example",
        &["owner@corp.example"],
    );
    let d = engine.enriched(&provisional, &fetched);
    assert_eq!(d.reason, Reason::Category, "{d:#?}");
    assert!(d.is_track());
    assert!(!d.needs_enrichment, "what Exchange returned is complete");
    assert_eq!(
        d.crm_id,
        Some(email_id(id(ORG), "unseen@x", Direction::Incoming))
    );
    // A category change that did not set the tracking one stays untracked after the fetch.
    let blue = decide(
        &engine,
        &categories("item-blue@x", CategoryMode::Append, &["Blue"]),
    );
    let d = engine.enriched(
        &blue,
        &message(
            "blue@x",
            "inbox",
            "stranger@else.example",
            &["owner@corp.example"],
        ),
    );
    assert!(!d.is_track(), "{d:#?}");
}

/// A provisional decision of `observation` that waits for Exchange's copy, as the outbox keeps it.
fn provisional(observation: &str, operation: &str) -> Decision {
    serde_json::from_value(serde_json::json!({
        "verdict": "track", "reason": "needs_enrichment", "observation": observation,
        "operation": operation, "mailbox": "owner@corp.example", "needs_enrichment": true,
    }))
    .unwrap()
}

#[test]
fn exchanges_copy_is_decided_with_the_trigger_the_traffic_showed() {
    let engine = engine_with(|d| set_filter(d, OWNER, 0));
    let in_inbox = message(
        "moved@x",
        "inbox",
        "stranger@else.example",
        &["owner@corp.example"],
    );
    // Seen in the Inbox: automatic tracking, filter "all".
    let seen = engine.enriched(&provisional("message_seen", "FindItem"), &in_inbox);
    assert_eq!(seen.reason, Reason::FilterAll, "{seen:#?}");
    // Moved (or copied) back into the Inbox: never processed again.
    for observation in ["message_moved", "message_copied"] {
        let moved = engine.enriched(&provisional(observation, "MoveItem"), &in_inbox);
        assert_eq!(
            moved.reason,
            Reason::MovedIntoInbox,
            "{observation}: {moved:#?}"
        );
    }
    // Sent: outgoing, wherever Exchange's copy is filed.
    let sent = message(
        "sent@x",
        "drafts",
        "owner@corp.example",
        &["stranger@else.example"],
    );
    let d = engine.enriched(&provisional("message_sent", "SendItem"), &sent);
    assert!(d.is_track(), "{d:#?}");
    assert_eq!(d.direction, Some(Direction::Outgoing));
    assert!(!d.needs_enrichment);
}

#[test]
fn explain_mode_remembers_nothing() {
    let engine = engine_with(|_| {});
    let o = inbox("pat@customer.example", "dry@x");
    let first = engine.decide(&o, Mode::EXPLAIN);
    let second = engine.decide(&o, Mode::EXPLAIN);
    assert_eq!(first, second);
    assert_eq!(first[0].reason, Reason::FilterAll);
    assert!(!first[0].explanation.is_empty());
    // Applied without explanation: no prose, and the next sighting is a duplicate.
    let applied = engine.decide(&o, Mode::APPLY);
    assert!(applied[0].explanation.is_empty());
    assert_eq!(
        engine.decide(&o, Mode::APPLY)[0].reason,
        Reason::AlreadyTracked
    );
}

#[test]
fn the_directory_file_is_validated_with_the_row_and_column_named() {
    use trackgate::directory::file::parse_and_build;
    let good = trackgate::directory::file::EMBEDDED_EXAMPLE;
    assert!(parse_and_build(good, "example", false).is_ok());
    let cases = [
        (
            "organizationid = \"7d6a1c1e-0000-4000-8000-00000000c0de\"",
            "organizationid = \"00000000-0000-0000-0000-000000000000\"",
            "organization.organizationid",
        ),
        (
            "incomingemailfilteringmethod = 4   # none",
            "incomingemailfilteringmethod = 9",
            "usersettingscollection[3].incomingemailfilteringmethod",
        ),
        (
            "processemailreceivedafter = \"2026-11-01T00:00:00Z\"",
            "processemailreceivedafter = \"soon\"",
            "mailboxes[0].processemailreceivedafter",
        ),
        (
            "trackingtoken = \"CRM:0271001\"",
            "trackingtoken = \"0271001\"",
            "emails[1].trackingtoken",
        ),
        (
            "emailaddress1 = \"info@fabrikam.example\"",
            "emailaddress1 = \"info\"",
            "accounts[0]",
        ),
    ];
    for (from, to, at) in cases {
        assert!(good.contains(from), "{from}");
        let e = parse_and_build(&good.replace(from, to), "example", false).unwrap_err();
        let text = e.to_string();
        assert!(text.contains(at), "{at}: {text}");
        assert!(text.contains("fix:"), "{text}");
    }
    let e = parse_and_build(
        &good.replace("[[contacts]]", "[[contact]]"),
        "example",
        false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("contact"), "{e}");
    // JSON works the same.
    let doc: DirectoryDocument = toml::from_str(good).unwrap();
    let json = serde_json::to_string(&doc).unwrap();
    assert!(parse_and_build(&json, "example.json", true).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// However the sightings of one message (and its copy in another recipient's mailbox)
    /// arrive, exactly one is tracked, and the CRM id does not depend on the order. (A FindItem
    /// row without a Message-ID seen first is the one exception across mailboxes, see
    /// `a_sighting_without_a_message_id_is_enriched_to_the_same_crm_email`.)
    #[test]
    fn sightings_in_any_order_yield_one_track(
        order in Just((0..4usize).collect::<Vec<_>>()).prop_shuffle(),
        across_mailboxes in any::<bool>(),
        filter in prop_oneof![Just(0u8), Just(2u8), Just(3u8)],
    ) {
        let engine = engine_with(|d| set_filter(d, OWNER, filter));
        let all = sightings("order@x");
        // Either the four views in the owner's mailbox, or the three with a Message-ID plus
        // the copy in another recipient's mailbox.
        let order: Vec<usize> = if across_mailboxes { order.iter().map(|&i| i + 1).collect() } else { order };
        let decisions: Vec<Decision> = order.iter().flat_map(|&i| engine.decide(&all[i], Mode::APPLY)).collect();
        let tracks: Vec<&Decision> = decisions.iter().filter(|d| d.is_track()).collect();
        prop_assert_eq!(tracks.len(), 1);
        let rest_duplicates = decisions.iter().filter(|d| !d.is_track()).all(|d| d.reason == Reason::AlreadyTracked);
        prop_assert!(rest_duplicates);
        // The FindItem row lacks the Message-ID; any other first sighting names the email.
        if order[0] != 0 {
            prop_assert_eq!(tracks[0].crm_id, Some(email_id(id(ORG), "order@x", Direction::Incoming)));
        }
    }

    /// The same observations into two fresh engines give the same decisions.
    #[test]
    fn decisions_are_deterministic(seq in proptest::collection::vec((0..6usize, 0..5u8, 0..4usize), 1..24)) {
        let senders = ["pat@customer.example", "stranger@else.example", "dup@customer.example", "colleague@corp.example", "lead@prospect.example", "room@corp.example"];
        let folders = ["inbox", "sentitems", "junkemail", "x"];
        let build = |(s, f, folder): (usize, u8, usize), n: usize| {
            let mut m = message(&format!("det{n}@x"), folders[folder], senders[s], &["owner@corp.example", senders[(s + 1) % 6]]);
            if folder == 3 {
                m.folder = None;
                m.folder_id = Some(TRACKED.into());
            }
            if f == 4 {
                m.in_reply_to = Some("orig@corp.example".into());
            }
            (f, seen_in("owner@corp.example", m))
        };
        let run = || {
            let engine = engine_with(|d| set_filter(d, OWNER, seq[0].1 % 5));
            seq.iter().enumerate().flat_map(|(n, step)| {
                let (_, o) = build(*step, n % 4);
                engine.decide(&o, Mode::REPLAY)
            }).collect::<Vec<_>>()
        };
        prop_assert_eq!(run(), run());
    }

    /// Category changes commute with sightings: whichever comes first, a message that carries the
    /// tracking category ends tracked exactly once.
    #[test]
    fn category_and_sighting_commute(category_first in any::<bool>()) {
        let engine = engine_with(|d| set_filter(d, OWNER, 4));
        let seen = inbox("stranger@else.example", "commute@x");
        let cat = categories("item-commute@x", CategoryMode::Append, &["Tracked to Dynamics 365"]);
        let order = if category_first { [&cat, &seen] } else { [&seen, &cat] };
        let decisions: Vec<Decision> = order.iter().flat_map(|o| engine.decide(o, Mode::APPLY)).collect();
        prop_assert_eq!(decisions.iter().filter(|d| d.is_track()).count(), 1);
    }
}

#[test]
fn a_message_evaluated_and_not_tracked_stays_not_tracked() {
    // Filter 1: a customer's mail is not a reply. Later a reply in its thread is tracked; the
    // first mail, seen again, is not reconsidered (server-side sync evaluates each mail once).
    let engine = engine_with(|d| set_filter(d, OWNER, 1));
    let mut first = message(
        "first-of-thread@x",
        "inbox",
        "pat@customer.example",
        &["owner@corp.example"],
    );
    first.conversation_id = Some("THREAD-9".into());
    expect(
        &decide(&engine, &seen_in("owner@corp.example", first.clone())),
        Reason::NotAReply,
    );
    let mut reply = message("reply-in-thread@x", "inbox", "pat@customer.example", &[]);
    reply.conversation_id = Some("THREAD-9".into());
    reply.in_reply_to = Some("orig@corp.example".into());
    expect(
        &decide(&engine, &seen_in("owner@corp.example", reply)),
        Reason::ReplyInReplyTo,
    );
    expect(
        &decide(&engine, &seen_in("owner@corp.example", first)),
        Reason::AlreadyDecided,
    );
    // A sighting that did not show the sender is not final: the next one decides.
    let engine = engine_with(|d| set_filter(d, OWNER, 2));
    let mut partial = message("partial@x", "inbox", "pat@customer.example", &[]);
    partial.from = None;
    expect(
        &decide(&engine, &seen_in("owner@corp.example", partial.clone())),
        Reason::SenderNotShown,
    );
    let email_enabled = engine_with(|d| set_filter(d, OWNER, 3));
    expect(
        &decide(&email_enabled, &seen_in("owner@corp.example", partial)),
        Reason::SenderNotShown,
    );
    expect(
        &decide(&engine, &inbox("pat@customer.example", "partial@x")),
        Reason::SenderContact,
    );
    // Moved back into the Inbox: the next Inbox sighting does not track it either.
    let engine = engine_with(|d| set_filter(d, OWNER, 0));
    let mut archived = message("archived@x", "archive", "pat@customer.example", &[]);
    archived.item_id = Some("arch-1".into());
    expect(
        &decide(&engine, &seen_in("owner@corp.example", archived)),
        Reason::NotInInbox,
    );
    expect(
        &decide(&engine, &move_to("arch-1", "arch-2", None, Some("inbox"))),
        Reason::MovedIntoInbox,
    );
    let mut back = message("archived@x", "inbox", "pat@customer.example", &[]);
    back.item_id = Some("arch-2".into());
    expect(
        &decide(&engine, &seen_in("owner@corp.example", back)),
        Reason::AlreadyDecided,
    );
}

#[test]
fn an_initial_sync_of_sent_items_is_history_too() {
    let engine = engine_with(|_| {});
    let o = Observation::MessageSeen {
        origin: origin("owner@corp.example", "SyncFolderItems"),
        message: message(
            "old-sent@x",
            "sentitems",
            "owner@corp.example",
            &["pat@customer.example"],
        )
        .into(),
        initial_sync: true,
    };
    expect(&decide(&engine, &o), Reason::InitialSyncHistory);
}

#[test]
fn the_first_filing_wins_and_re_links_keep_the_crm_id() {
    // Owner files the mail under the account; the colleague's copy moved to a folder linked to
    // another record does not re-link it.
    let engine = engine_with(|d| {
        set_filter(d, OWNER, 4);
        set_filter(d, COLLEAGUE, 4);
        d.mailboxtrackingfolders.push(MailboxTrackingFolder {
            mailboxid: id(0x102),
            ..rule("AAMkColleagueLinked=", Some(look("lead", LEAD)))
        });
    });
    expect(
        &decide(&engine, &inbox("pat@customer.example", "filed@x")),
        Reason::FilterNone,
    );
    let d = decide(
        &engine,
        &move_to("item-filed@x", "filed-1", Some(TRACKED), None),
    );
    expect(&d, Reason::FolderRule);
    let colleague_copy = message(
        "filed@x",
        "inbox",
        "pat@customer.example",
        &["colleague@corp.example"],
    );
    expect(
        &decide(&engine, &seen_in("colleague@corp.example", colleague_copy)),
        Reason::AlreadyTracked,
    );
    let moved = Observation::MessageMoved {
        origin: origin("colleague@corp.example", "MoveItem"),
        transfer: transfer(
            "item-filed@x",
            Some("c-filed"),
            Some("AAMkColleagueLinked="),
            None,
        ),
    };
    let d = decide(&engine, &moved);
    expect(&d, Reason::AlreadyTracked);
    assert!(!d.update_regarding);
    // A mail Dynamics tracked itself keeps its activity id through later re-links.
    let engine = engine_with(|d| set_filter(d, OWNER, 4));
    // (The test directory's CRM email has the default direction of `TrackedEmail::default()`,
    // incoming.)
    let mut crm = message(
        "orig@corp.example",
        "inbox",
        "pat@customer.example",
        &["owner@corp.example"],
    );
    crm.item_id = Some("crm-item".into());
    let d = decide(&engine, &seen_in("owner@corp.example", crm));
    expect(&d, Reason::AlreadyTracked);
    assert_eq!(d.crm_id, Some(id(0x1001)));
    let d = decide(&engine, &move_to("crm-item", "crm-2", Some(TRACKED), None));
    assert_eq!(d.crm_id, Some(id(0x1001)), "{d:#?}");
}

#[test]
fn own_mail_filed_in_a_tracked_folder_is_outgoing_whatever_its_address_resolves_to() {
    // The owner's address is also on a contact the owner owns (owned rows win resolution).
    let engine = engine_with(|d| {
        d.contacts.push(contact(
            0xcc,
            "owner@corp.example",
            OWNER,
            "2020-01-01T00:00:00Z",
        ));
    });
    let mut m = message(
        "mine@x",
        "x",
        "owner@corp.example",
        &["pat@customer.example"],
    );
    m.folder = None;
    m.folder_id = Some(TRACKED.into());
    let d = decide(&engine, &seen_in("owner@corp.example", m));
    expect(&d, Reason::FolderRule);
    assert_eq!(d.direction, Some(Direction::Outgoing));
    assert!(d.auto_create.is_none());
}

#[test]
fn delivery_method_none_stops_folder_rules_and_categories_too() {
    let engine = engine_with(|d| d.mailboxes[0].incomingemaildeliverymethod = 0);
    let mut m = message("dm@x", "x", "pat@customer.example", &[]);
    m.folder = None;
    m.folder_id = Some(TRACKED.into());
    expect(
        &decide(&engine, &seen_in("owner@corp.example", m)),
        Reason::DeliveryDisabled,
    );
    expect(
        &decide(
            &engine,
            &categories("x", CategoryMode::Set, &["Tracked to Dynamics 365"]),
        ),
        Reason::DeliveryDisabled,
    );
}

fn send_saved_to(message_id: &str, saved: Option<&str>) -> Observation {
    let mut m = message(
        message_id,
        "x",
        "owner@corp.example",
        &["pat@customer.example"],
    );
    m.folder = None;
    Observation::MessageSent {
        origin: origin("owner@corp.example", "CreateItem"),
        via: "CreateItem".into(),
        message: m.into(),
        draft_item_ids: Vec::new(),
        reference_item_id: None,
        saved_to_folder: saved.map(str::to_owned),
    }
}

#[test]
fn sends_without_a_sent_items_copy_are_not_tracked() {
    let engine = engine_with(|_| {});
    expect(
        &decide(&engine, &send_saved_to("nocopy@x", None)),
        Reason::NotSavedToSentItems,
    );
    // Saved into a tracked folder instead: its rule applies.
    let d = decide(&engine, &send_saved_to("tofolder@x", Some(TRACKED)));
    expect(&d, Reason::FolderRule);
    assert_eq!(d.direction, Some(Direction::Outgoing));
}

#[test]
fn where_a_message_is_comes_from_one_sighting() {
    // Seen in the Inbox by name, then by the id of a tracked folder (immutable ids survive a
    // move): the folder rule applies, not the Inbox's filter.
    let engine = engine_with(|d| set_filter(d, OWNER, 4));
    expect(
        &decide(&engine, &inbox("stranger@else.example", "where@x")),
        Reason::FilterNone,
    );
    let mut moved = message("where@x", "x", "stranger@else.example", &[]);
    moved.folder = None;
    moved.folder_id = Some(TRACKED.into());
    expect(
        &decide(&engine, &seen_in("owner@corp.example", moved)),
        Reason::FolderRule,
    );
}

#[test]
fn categories_match_in_any_script_and_hostile_keys_are_bounded() {
    let engine =
        engine_with(|d| d.organization.trackingcategorynames = vec!["Отслеживается".into()]);
    expect(
        &decide(
            &engine,
            &categories("x", CategoryMode::Set, &["ОТСЛЕЖИВАЕТСЯ"]),
        ),
        Reason::Category,
    );
    // A 60 KB Message-ID and an endless token are decided without being remembered as keys.
    let engine = engine_with(|_| {});
    let huge = format!("{}@x", "a".repeat(60_000));
    let mut m = message(&huge, "inbox", "pat@customer.example", &[]);
    m.subject = Some(format!("RE: CRM:{}", "1".repeat(10_000)).into());
    m.conversation_index = Some("!".repeat(10_000).into());
    let d = decide(&engine, &seen_in("owner@corp.example", m));
    expect(&d, Reason::FilterAll);
    // Only the thread key, cut to 64 bytes, is remembered; the Message-ID and token are not.
    let (_, _, tracked) = engine.memory().entry_counts();
    assert_eq!(tracked, 1, "oversized keys are not remembered");
}

/// A later sighting that adds to a settled item is remembered even though its decision writes
/// nothing (the item was settled by the first): a later move reads the fuller copy.
#[test]
fn a_later_sighting_adds_to_a_settled_item() {
    let engine = engine_with(|d| set_filter(d, OWNER, 4));
    let mut first = message("late@x", "inbox", "pat@customer.example", &[]);
    first.subject = None;
    expect(
        &decide(&engine, &seen_in("owner@corp.example", first)),
        Reason::FilterNone,
    );
    let mut fuller = message("late@x", "inbox", "pat@customer.example", &[]);
    fuller.subject = Some("Renewal".into());
    decide(&engine, &seen_in("owner@corp.example", fuller));
    let d = decide(
        &engine,
        &move_to("item-late@x", "moved-late", Some(TRACKED), None),
    );
    expect(&d, Reason::FolderRule);
    assert_eq!(d.subject.as_deref(), Some("Renewal"), "{d:#?}");
}

/// A sent draft is remembered as tracked by its item id, which is all that names it when the
/// draft had no Message-ID yet; a send that did not track, or waits for enrichment, leaves the
/// draft as it was.
#[test]
fn sent_drafts_are_remembered_by_item_only_when_the_send_tracked() {
    let draft = |item: &str| {
        let mut m = message(
            "unused@x",
            "drafts",
            "owner@corp.example",
            &["lead@prospect.example"],
        );
        m.internet_message_id = None;
        m.item_id = Some(item.into());
        m.is_draft = Some(true);
        seen_in("owner@corp.example", m)
    };
    let send = |item: &str| {
        sent(
            "owner@corp.example",
            "SendItem",
            Message::default(),
            &[item],
        )
    };
    let engine = engine_with(|d| set_filter(d, OWNER, 2));
    expect(&decide(&engine, &draft("draft-nomid")), Reason::Draft);
    let d = decide(&engine, &send("draft-nomid"));
    expect(&d, Reason::RecipientLead);
    let moved = decide(
        &engine,
        &move_to("draft-nomid", "moved-nomid", Some(TRACKED), None),
    );
    // Without a Message-ID the send has no CRM id until enrichment; its draft's item is what
    // names it, and the move finds that item tracked.
    assert_eq!(d.crm_id, None);
    assert!(moved.is_track(), "{moved:#?}");
    assert!(
        moved.update_regarding,
        "a re-link, not a new email: {moved:#?}"
    );
    assert!(
        moved
            .explanation
            .iter()
            .any(|l| l.contains("this item was tracked earlier")),
        "{:#?}",
        moved.explanation
    );

    // Waiting for enrichment: the draft is still unknown afterwards.
    expect(
        &decide(&engine, &send("draft-unseen")),
        Reason::NeedsEnrichment,
    );
    let moved = decide(
        &engine,
        &move_to("draft-unseen", "moved-unseen", Some(TRACKED), None),
    );
    assert!(moved.needs_enrichment, "{moved:#?}");

    // Not tracked at all: the draft moved later is a new track, not a re-link.
    let off = engine_with(|d| {
        set_filter(d, OWNER, 2);
        d.organization.orgdborgsettings.auto_track_sent_folder_items = false;
    });
    expect(&decide(&off, &draft("draft-off")), Reason::Draft);
    expect(
        &decide(&off, &send("draft-off")),
        Reason::SentNotAutoTracked,
    );
    // Known only as the draft it was seen as.
    let moved = decide(
        &off,
        &move_to("draft-off", "moved-off", Some(TRACKED), None),
    );
    expect(&moved, Reason::Draft);
    assert!(!moved.update_regarding, "{moved:#?}");
}

/// A copy whose answer gave no new id leaves what is known of the original alone: the copy is
/// the tracked item, so the original moved later into a folder linked to another record is
/// known only by its Message-ID — already tracked, and not re-linked, as for any other item with
/// that Message-ID (only the tracked item's own move re-links).
#[test]
fn a_copy_without_a_new_id_does_not_change_the_original() {
    let engine = engine_with(|d| set_filter(d, OWNER, 4));
    expect(
        &decide(&engine, &inbox("stranger@else.example", "orig@x")),
        Reason::FilterNone,
    );
    let copy = Observation::MessageCopied {
        origin: origin("owner@corp.example", "CopyItem"),
        transfer: transfer("item-orig@x", None, Some(TRACKED), None),
    };
    let copied = decide(&engine, &copy);
    assert!(copied.is_track(), "{copied:#?}");
    let d = decide(
        &engine,
        &move_to("item-orig@x", "moved-orig", Some(OTHER_LINKED), None),
    );
    expect(&d, Reason::AlreadyTracked);
    assert!(!d.update_regarding, "{d:#?}");
    assert_eq!(d.regarding, Some(look("account", ACCOUNT)));
}

#[test]
fn an_exclusion_stops_automatic_and_folder_tracking_but_not_the_owners_own_category() {
    let engine = engine_with(|doc| {
        for s in &mut doc.usersettingscollection {
            if s.systemuserid == id(OWNER) {
                s.trackingexclusions = vec!["customer.example".into()];
            }
        }
    });
    // Filter "all": everything would be tracked, but Pat's domain is excluded.
    expect(
        &decide(&engine, &inbox("pat@customer.example", "ex1@x")),
        Reason::ExcludedByUser,
    );
    expect(
        &decide(&engine, &inbox("stranger@else.example", "ex2@x")),
        Reason::FilterAll,
    );
    // A folder rule does not override it either.
    let mut m = message("ex3@x", "x", "pat@customer.example", &[]);
    m.folder = None;
    m.folder_id = Some(TRACKED.into());
    expect(
        &decide(&engine, &seen_in("owner@corp.example", m)),
        Reason::ExcludedByUser,
    );
    // An excluded party among the recipients of sent mail excludes it too.
    let sent = seen_in(
        "owner@corp.example",
        message(
            "ex4@x",
            "sentitems",
            "owner@corp.example",
            &["someone@else.example", "pat@customer.example"],
        ),
    );
    expect(&decide(&engine, &sent), Reason::ExcludedByUser);
    // The tracking category, set by hand, still tracks.
    let mut m = message(
        "ex5@x",
        "inbox",
        "pat@customer.example",
        &["owner@corp.example"],
    );
    m.categories = vec!["Tracked to Dynamics 365".into()];
    expect(
        &decide(&engine, &seen_in("owner@corp.example", m)),
        Reason::Category,
    );
}

#[test]
fn a_preview_decides_with_the_proposed_options_and_leaves_the_live_ones_alone() {
    use std::sync::Arc;
    use trackgate::rules::Proposed;
    let engine = engine_with(|doc| set_filter(doc, OWNER, 4));
    let history: Vec<Arc<Observation>> = vec![
        Arc::new(inbox("stranger@else.example", "pv1@x")),
        Arc::new(inbox("pat@customer.example", "pv2@x")),
    ];
    let now: Vec<Decision> = engine
        .preview(&history, None)
        .into_iter()
        .flatten()
        .collect();
    assert!(
        now.iter().all(|d| d.reason == Reason::FilterNone),
        "{now:#?}"
    );
    let dir = engine.directory().load();
    let mailbox = dir.mailbox("owner@corp.example").map(|m| m.id);
    let mut settings = settings(OWNER, 0);
    settings.trackingexclusions = vec!["pat@customer.example".into()];
    let proposed = Proposed {
        user: id(OWNER),
        mailbox,
        settings,
        folder_rules: Vec::new(),
    };
    let then: Vec<Reason> = engine
        .preview(&history, Some(&proposed))
        .iter()
        .flatten()
        .map(|d| d.reason)
        .collect();
    assert_eq!(then, vec![Reason::FilterAll, Reason::ExcludedByUser]);
    // The live engine still decides with the directory's options.
    expect(
        &decide(&engine, &inbox("stranger@else.example", "pv3@x")),
        Reason::FilterNone,
    );
}
