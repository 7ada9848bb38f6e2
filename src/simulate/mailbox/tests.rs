use super::*;

fn seeded() -> Store {
    Store::embedded().expect("the embedded seed loads")
}

fn message(subject: &str, to: &str) -> Item {
    Item {
        kind: Some(Kind::Message),
        subject: subject.into(),
        to: vec![Addr::parse(to)],
        ..Item::default()
    }
}

#[test]
fn the_seed_matches_the_example_directory() {
    let store = seeded();
    let inner = store.lock();
    let alex = inner.mailbox(inner.mailbox_index("ALEX.SELLER@contoso.example").unwrap());
    let tracked = alex.folder_by_id("AAMkADEzTrackedFolderAAA=").unwrap();
    assert_eq!(alex.folder_path(tracked.key), "Inbox/Fabrikam deal");
    let inbox = alex.distinguished("inbox").unwrap().key;
    assert_eq!(alex.items_in(inbox).len(), 3);
    assert!(
        inner
            .accounts()
            .iter()
            .any(|a| a.logon == "CONTOSO\\svc-trackgate")
    );
    assert!(inner.mailbox_index("nobody@contoso.example").is_err());
}

#[test]
fn sync_reports_creates_then_pages_then_only_what_changed() {
    let store = seeded();
    let mut inner = store.lock();
    let m = inner.mailbox_index("alex.seller@contoso.example").unwrap();
    let inbox = inner.mailbox(m).distinguished("inbox").unwrap().key;
    let first = inner.sync_items(m, inbox, None, 2).unwrap();
    assert_eq!(first.changes.len(), 2);
    assert!(!first.last_in_range);
    assert!(
        first
            .changes
            .iter()
            .all(|c| matches!(c, ItemChange::Create(_)))
    );
    let rest = inner.sync_items(m, inbox, Some(&first.state), 2).unwrap();
    assert_eq!(rest.changes.len(), 1);
    assert!(rest.last_in_range);
    let state = rest.state;
    assert!(
        inner
            .sync_items(m, inbox, Some(&state), 10)
            .unwrap()
            .changes
            .is_empty()
    );

    // A move out is a delete here; an update is an update; one that came and went is nothing.
    let keys: Vec<u64> = inner
        .mailbox(m)
        .items_in(inbox)
        .iter()
        .map(|i| i.key)
        .collect();
    let archive = inner.mailbox(m).distinguished("archive").unwrap().key;
    let moved_id = inner.item(m, keys[0]).id.clone();
    inner.move_item(m, keys[0], archive).unwrap();
    inner.update(m, keys[1], |i| i.is_read = true).unwrap();
    let brief = inner
        .insert(
            m,
            NewItem {
                item: message("brief", "x@y.example"),
                folder: inbox,
            },
        )
        .unwrap();
    inner.remove(m, brief).unwrap();
    let changes = inner
        .sync_items(m, inbox, Some(&state), 10)
        .unwrap()
        .changes;
    assert_eq!(
        changes,
        vec![ItemChange::Delete(moved_id), ItemChange::Update(keys[1])]
    );
    assert_eq!(
        inner
            .sync_items(m, inbox, Some("not a state"), 10)
            .unwrap_err(),
        StoreError::IdMalformed
    );
}

#[test]
fn mail_sent_to_a_store_mailbox_lands_in_its_inbox_and_a_copy_is_kept() {
    let store = seeded();
    let mut inner = store.lock();
    let alex = inner.mailbox_index("alex.seller@contoso.example").unwrap();
    let jo = inner.mailbox_index("jo.support@contoso.example").unwrap();
    let sent = inner.mailbox(alex).distinguished("sentitems").unwrap().key;
    let copy = inner
        .send(
            alex,
            message("Handover", "Jo <jo.support@contoso.example>"),
            Some(sent),
        )
        .unwrap()
        .unwrap();
    let copy = inner.item(alex, copy).clone();
    assert!(
        copy.message_id
            .as_deref()
            .is_some_and(|id| id.ends_with("@contoso.example>"))
    );
    let jo_inbox = inner.mailbox(jo).distinguished("inbox").unwrap().key;
    let arrived = inner.mailbox(jo).items_in(jo_inbox)[0].clone();
    assert_eq!(arrived.subject, "Handover");
    assert_eq!(arrived.message_id, copy.message_id);
    assert!(!arrived.is_read);
    assert_eq!(arrived.from.unwrap().address, "alex.seller@contoso.example");
}

#[test]
fn the_store_is_bounded() {
    let limits = StoreLimits {
        items_per_mailbox: 1,
        body_bytes: 10,
        folders_per_mailbox: 100,
    };
    let store = Store::new(limits);
    let mut inner = store.lock();
    let m = inner.add_mailbox("a@b.example", "A");
    let inbox = inner.mailbox(m).distinguished("inbox").unwrap().key;
    let big = Item {
        body: "x".repeat(11),
        ..message("big", "c@d.example")
    };
    assert_eq!(
        inner.insert(
            m,
            NewItem {
                item: big,
                folder: inbox
            }
        ),
        Err(StoreError::BodyTooLarge(10))
    );
    inner
        .insert(
            m,
            NewItem {
                item: message("one", "c@d.example"),
                folder: inbox,
            },
        )
        .unwrap();
    assert_eq!(
        inner.insert(
            m,
            NewItem {
                item: message("two", "c@d.example"),
                folder: inbox
            }
        ),
        Err(StoreError::MailboxFull(1))
    );
}
