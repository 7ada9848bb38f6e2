//! Seeding the store from a TOML file: the mailboxes, their logons, user folders and items. The
//! embedded seed (`fixtures/mailboxes/contoso.toml`) matches the example directory: the same
//! users, CRM contacts and threads.

use serde::Deserialize;

use super::{Addr, Inner, Item, Kind, NewItem, StoreError};
use crate::common::time::timestamp_seconds;

pub(super) const EMBEDDED: &str = include_str!("../../../fixtures/mailboxes/contoso.toml");

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("mailbox seed: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("mailbox seed: mailbox {mailbox}: {problem}")]
    Invalid { mailbox: String, problem: String },
}

/// Who may log on, and as which mailbox. Passwords exist for the simulator's NTLM and Basic
/// checks only; they are example values, never real credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// `DOMAIN\user` or a UPN; matched case-insensitively.
    pub logon: String,
    pub password: String,
    /// The mailbox the account opens by default.
    pub mailbox: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedFile {
    #[serde(default)]
    accounts: Vec<Account>,
    #[serde(default)]
    mailboxes: Vec<SeedMailbox>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedMailbox {
    address: String,
    name: String,
    #[serde(default)]
    folders: Vec<SeedFolder>,
    #[serde(default)]
    items: Vec<SeedItem>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedFolder {
    name: String,
    /// A distinguished folder name (`inbox`) or the name of a folder seeded before this one.
    parent: String,
    /// Keeps a recorded folder id (the example directory's tracked folder refers to it).
    id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SeedItem {
    kind: Option<String>,
    folder: String,
    subject: String,
    body: String,
    from: Option<String>,
    to: Vec<String>,
    cc: Vec<String>,
    message_id: Option<String>,
    in_reply_to: Option<String>,
    categories: Vec<String>,
    received: Option<String>,
    is_read: bool,
    start: Option<String>,
    end: Option<String>,
    location: Option<String>,
    given_name: Option<String>,
    surname: Option<String>,
    company: Option<String>,
    emails: Vec<String>,
    due: Option<String>,
    status: Option<String>,
}

fn invalid(mailbox: &str, problem: impl Into<String>) -> SeedError {
    SeedError::Invalid {
        mailbox: mailbox.to_owned(),
        problem: problem.into(),
    }
}

pub(super) fn load(store: &mut Inner, text: &str) -> Result<(), SeedError> {
    let file: SeedFile = toml::from_str(text)?;
    for seed in &file.mailboxes {
        let index = store.add_mailbox(&seed.address, &seed.name);
        for folder in &seed.folders {
            let parent = find_folder(store, index, &folder.parent).ok_or_else(|| {
                invalid(&seed.address, format!("no parent folder {}", folder.parent))
            })?;
            store
                .create_folder(
                    index,
                    parent,
                    &folder.name,
                    "IPF.Note",
                    folder.id.as_deref(),
                )
                .map_err(|e| invalid(&seed.address, e.to_string()))?;
        }
        for item in &seed.items {
            add_item(store, index, &seed.address, item)?;
        }
    }
    for account in file.accounts {
        store
            .mailbox_index(&account.mailbox)
            .map_err(|e| invalid(&account.mailbox, e.to_string()))?;
        store.accounts.push(account);
    }
    Ok(())
}

fn find_folder(store: &Inner, mailbox: u16, name: &str) -> Option<u64> {
    let m = store.mailbox(mailbox);
    m.distinguished(name)
        .or_else(|| {
            m.folders
                .values()
                .find(|f| f.name.eq_ignore_ascii_case(name))
        })
        .map(|f| f.key)
}

fn time(mailbox: &str, text: &Option<String>) -> Result<Option<i64>, SeedError> {
    match text {
        None => Ok(None),
        Some(t) => timestamp_seconds(t)
            .map(Some)
            .ok_or_else(|| invalid(mailbox, format!("{t:?} is not an RFC 3339 time"))),
    }
}

fn add_item(
    store: &mut Inner,
    mailbox: u16,
    address: &str,
    seed: &SeedItem,
) -> Result<(), SeedError> {
    let folder = find_folder(store, mailbox, &seed.folder)
        .ok_or_else(|| invalid(address, format!("no folder {}", seed.folder)))?;
    let kind = match seed.kind.as_deref().unwrap_or("message") {
        "message" => Kind::Message,
        "event" => Kind::CalendarItem,
        "contact" => Kind::Contact,
        "task" => Kind::Task,
        other => return Err(invalid(address, format!("unknown item kind {other}"))),
    };
    let received = time(address, &seed.received)?.unwrap_or_else(|| store.now());
    let item = Item {
        kind: Some(kind),
        subject: seed.subject.clone(),
        body: seed.body.clone(),
        from: seed.from.as_deref().map(Addr::parse),
        to: seed.to.iter().map(|a| Addr::parse(a)).collect(),
        cc: seed.cc.iter().map(|a| Addr::parse(a)).collect(),
        message_id: seed.message_id.clone(),
        in_reply_to: seed.in_reply_to.clone(),
        categories: seed.categories.clone(),
        is_read: seed.is_read,
        received,
        created: received,
        sent: (kind == Kind::Message).then_some(received),
        start: time(address, &seed.start)?,
        end: time(address, &seed.end)?,
        location: seed.location.clone(),
        given_name: seed.given_name.clone(),
        surname: seed.surname.clone(),
        company: seed.company.clone(),
        emails: seed.emails.clone(),
        due: time(address, &seed.due)?,
        status: seed.status.clone(),
        ..Item::default()
    };
    store
        .insert(mailbox, NewItem { item, folder })
        .map_err(|e: StoreError| invalid(address, e.to_string()))?;
    Ok(())
}
