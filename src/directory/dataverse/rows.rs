//! From replicated rows to the directory document a snapshot is built from: each table decoded,
//! and the rows that would break the directory's rules left out and counted (a Dataverse
//! organization is not curated like a file).

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::delta::State;
use crate::directory::model::{
    Account, Contact, DirectoryDocument, EmailEnabledRecord, Lead, Mailbox, MailboxTrackingFolder,
    Organization, Queue, SavedQuery, SyncFilter, SystemUser, TrackedEmail, UserQuery, UserSettings,
};
use crate::directory::snapshot::{Directory, InvalidDirectory, token_prefixes, tracking_token};

/// The directory document of the replicated rows, with the rows that would break the
/// directory's rules left out (a Dataverse organization is not curated like a file): settings
/// of users not replicated, mailboxes of unknown owners or with a duplicate address, folder
/// rules of unknown or queue mailboxes, addresses without `@`. Returns the count left out.
/// `activities`: with the synchronised activity rows (appointments, tasks, …), which only
/// synchronisation reads — a snapshot for the rules is built without decoding them.
pub(super) fn document(state: &State, activities: bool) -> (DirectoryDocument, u64) {
    let mut skipped = 0u64;
    let organization = organization(state, &mut skipped);
    let systemusers = systemusers(state, &mut skipped);
    let users: HashSet<Uuid> = systemusers.iter().map(|u| u.systemuserid).collect();
    let usersettingscollection = user_settings(state, &users, &mut skipped);
    let queues = queues(state, &mut skipped);
    let (mailboxes, user_mailboxes) = mailboxes(state, &users, &queues, &mut skipped);
    let mailboxtrackingfolders = folders(state, &organization, &user_mailboxes, &mut skipped);
    let (contacts, accounts, leads) = records(state, &mut skipped);
    let emailenabledrecords = other_records(state, &mut skipped);
    let emails = emails(state, &organization, &mut skipped);
    let mut doc = DirectoryDocument {
        organization,
        systemusers,
        usersettingscollection,
        queues,
        mailboxes,
        mailboxtrackingfolders,
        contacts,
        accounts,
        leads,
        emailenabledrecords,
        emails,
        ..DirectoryDocument::default()
    };
    for (set, table) in state.activities.iter().filter(|_| activities) {
        if let Some(rows) = doc.activities_mut(set) {
            *rows = table.decoded(&mut skipped);
        }
    }
    (doc, skipped)
}

fn organization(state: &State, skipped: &mut u64) -> Organization {
    let mut organization = state.organization.clone().unwrap_or_default();
    let mut templates: Vec<SavedQuery> = state.savedqueries.decoded(skipped);
    templates.retain(|q| q.querytype == 131_072 && q.isdefault && q.statecode == 0);
    templates.sort_by(|a, b| a.name.cmp(&b.name));
    organization.outlookfiltertemplates = templates
        .into_iter()
        .map(|q| SyncFilter {
            userqueryid: None,
            enabled: true,
            entity: q.returnedtypecode.unwrap_or_default(),
            name: q.name,
            filter: q.fetchxml,
        })
        .collect();
    if organization.organizationid.is_nil() {
        // An organization not yet loaded: a placeholder, with no users nothing is tracked.
        organization.organizationid = Uuid::max();
    }
    organization
}

fn systemusers(state: &State, skipped: &mut u64) -> Vec<SystemUser> {
    let mut systemusers: Vec<SystemUser> = state.users.decoded(skipped);
    for u in &mut systemusers {
        *skipped += clean(&mut u.internalemailaddress) + clean(&mut u.personalemailaddress);
    }
    systemusers
}

/// Settings of replicated users, with known filtering and auto-create choices.
fn user_settings(state: &State, users: &HashSet<Uuid>, skipped: &mut u64) -> Vec<UserSettings> {
    let mut settings: Vec<UserSettings> = state
        .settings
        .decoded(skipped)
        .into_iter()
        .filter(|s| {
            let ok = users.contains(&s.systemuserid)
                && s.incomingemailfilteringmethod <= 4
                && s.autocreatecontactonpromote <= 2;
            ok || count(skipped)
        })
        .collect();
    for s in &mut settings {
        // Dataverse has no known column for the legacy client's address-book options, so
        // nothing here may narrow recipient matching. Replicas written by earlier versions
        // carry those versions' narrowing defaults in each row; they are dropped, not trusted.
        s.addressbookcontactmatching = None;
        s.addressbookothermatching = None;
    }
    attach_sync_filters(state, &mut settings, skipped);
    settings
}

/// Each user's Outlook filters (saved views of `querytype` 256 they own), in name order.
fn attach_sync_filters(state: &State, settings: &mut [UserSettings], skipped: &mut u64) {
    let mut queries: Vec<UserQuery> = state.userqueries.decoded(skipped);
    queries.retain(|q| q.querytype == 256);
    queries.sort_by(|a, b| a.name.cmp(&b.name));
    for s in settings.iter_mut() {
        s.syncfilters = queries
            .iter()
            .filter(|q| q.ownerid == Some(s.systemuserid))
            .map(|q| SyncFilter {
                userqueryid: Some(q.userqueryid),
                enabled: q.statecode == 0,
                entity: q.returnedtypecode.clone().unwrap_or_default(),
                name: q.name.clone(),
                filter: q.fetchxml.clone(),
            })
            .collect();
    }
}

fn queues(state: &State, skipped: &mut u64) -> Vec<Queue> {
    let mut queues: Vec<Queue> = state
        .queues
        .decoded(skipped)
        .into_iter()
        .filter(|q| q.incomingemailfilteringmethod <= 4 || count(skipped))
        .collect();
    for q in &mut queues {
        *skipped += clean(&mut q.emailaddress);
    }
    queues
}

/// Mailboxes of a known user or queue, with a known delivery method and an address no other
/// mailbox has (the first by id wins); also returns the ids of the users' mailboxes, the only
/// ones folder rules may name.
fn mailboxes(
    state: &State,
    users: &HashSet<Uuid>,
    queues: &[Queue],
    skipped: &mut u64,
) -> (Vec<Mailbox>, HashSet<Uuid>) {
    let queue_ids: HashSet<Uuid> = queues.iter().map(|q| q.queueid).collect();
    let mut seen_addresses = HashSet::new();
    let mut user_mailboxes = HashSet::new();
    let mut mailbox_list: Vec<Mailbox> = state.mailboxes.decoded(skipped);
    mailbox_list.sort_by_key(|m| m.mailboxid);
    for m in &mut mailbox_list {
        if m.processemailreceivedafter
            .as_deref()
            .is_some_and(|t| crate::common::time::timestamp_seconds(t).is_none())
        {
            m.processemailreceivedafter = None;
            *skipped += 1;
        }
    }
    let mailboxes: Vec<Mailbox> = mailbox_list
        .into_iter()
        .filter(|m| {
            let owner_known = match m.regardingobjectid.entity.as_ref() {
                "systemuser" => users.contains(&m.regardingobjectid.id),
                "queue" => queue_ids.contains(&m.regardingobjectid.id),
                _ => false,
            };
            let ok = owner_known
                && m.incomingemaildeliverymethod <= 3
                && m.emailaddress.contains('@')
                && seen_addresses.insert(m.emailaddress.to_lowercase());
            if ok && m.regardingobjectid.entity == "systemuser" {
                user_mailboxes.insert(m.mailboxid);
            }
            ok || count(skipped)
        })
        .collect();
    (mailboxes, user_mailboxes)
}

/// Folder rules of users' mailboxes, one per folder, at most the organization's maximum per
/// mailbox (the first by id win).
fn folders(
    state: &State,
    organization: &Organization,
    user_mailboxes: &HashSet<Uuid>,
    skipped: &mut u64,
) -> Vec<MailboxTrackingFolder> {
    let mut seen_folders = HashSet::new();
    let max_rules = organization.maxfolderbasedtrackingmappings.clamp(1, 25) as usize;
    let mut rules_per_mailbox: HashMap<Uuid, usize> = HashMap::new();
    let mut folder_list: Vec<MailboxTrackingFolder> = state.folders.decoded(skipped);
    folder_list.sort_by_key(|f| f.mailboxtrackingfolderid);
    folder_list
        .into_iter()
        .filter(|f| {
            let ok = user_mailboxes.contains(&f.mailboxid)
                && !f.exchangefolderid.trim().is_empty()
                && f.exchangefolderid.len() <= 120
                // The builder compares ids as Exchange does (`+`/`-`, `/`/`_` alike): so here.
                && seen_folders.insert((
                    f.mailboxid,
                    crate::directory::snapshot::normalize_exchange_id(f.exchangefolderid.trim())
                        .into_owned(),
                ))
                && {
                    let n = rules_per_mailbox.entry(f.mailboxid).or_default();
                    *n += 1;
                    *n <= max_rules
                };
            ok || count(skipped)
        })
        .collect()
}

/// Contacts, accounts and leads, without their addresses that lack `@`.
fn records(state: &State, skipped: &mut u64) -> (Vec<Contact>, Vec<Account>, Vec<Lead>) {
    // The three tables share their address columns but no type: a macro, not a generic.
    macro_rules! records {
        ($table:expr) => {{
            let mut rows: Vec<_> = $table.decoded(skipped);
            for r in &mut rows {
                *skipped += clean(&mut r.emailaddress1)
                    + clean(&mut r.emailaddress2)
                    + clean(&mut r.emailaddress3);
            }
            rows
        }};
    }
    let contacts: Vec<Contact> = records!(state.contacts);
    let accounts: Vec<Account> = records!(state.accounts);
    let leads: Vec<Lead> = records!(state.leads);
    (contacts, accounts, leads)
}

/// The configured other tables' records, without their addresses that lack `@`.
fn other_records(state: &State, skipped: &mut u64) -> Vec<EmailEnabledRecord> {
    let mut emailenabledrecords: Vec<EmailEnabledRecord> = Vec::new();
    for table in state.others.values() {
        for mut r in table.decoded(skipped) {
            let before = r.emailaddresses.len();
            r.emailaddresses.retain(|a| a.contains('@'));
            *skipped += (before - r.emailaddresses.len()) as u64;
            emailenabledrecords.push(r);
        }
    }
    emailenabledrecords
}

fn emails(state: &State, organization: &Organization, skipped: &mut u64) -> Vec<TrackedEmail> {
    // A token with a prefix the organization no longer lists (after a prefix change) is left
    // out; the email still correlates by Message-ID and conversation.
    let prefixes = token_prefixes(&organization.trackingprefix);
    let mut emails: Vec<TrackedEmail> = state.emails.decoded(skipped);
    for e in &mut emails {
        if e.trackingtoken
            .as_deref()
            .is_some_and(|t| tracking_token(&prefixes, t).is_none())
        {
            e.trackingtoken = None;
            *skipped += 1;
        }
    }
    emails
}

/// Counts one skipped row; always false (for use in filters).
fn count(skipped: &mut u64) -> bool {
    *skipped += 1;
    false
}

/// Removes an address without `@`; 1 when it did.
fn clean(address: &mut Option<String>) -> u64 {
    if address
        .as_deref()
        .is_some_and(|a| !a.trim().is_empty() && !a.contains('@'))
    {
        *address = None;
        1
    } else {
        0
    }
}

/// A directory with nothing in it, served when Dataverse has never answered and there is no
/// replica yet: every mailbox is unknown, so nothing is tracked, and traffic flows.
pub fn empty_directory() -> Result<Directory, InvalidDirectory> {
    Directory::build(document(&State::default(), false).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_book_options_from_a_replica_never_narrow() {
        // A row as an earlier version persisted it: the legacy client's narrowing defaults
        // written out in full.
        let user = Uuid::from_u128(1);
        let mut state = State::default();
        let row = serde_json::json!({
            "systemuserid": user,
            "incomingemailfilteringmethod": 2,
            "addressbookcontactmatching": "synchronized",
            "addressbookothermatching": "mine",
        });
        state
            .settings
            .rows
            .insert(user, row.to_string().into_bytes().into_boxed_slice());
        let person = SystemUser {
            systemuserid: user,
            ..SystemUser::default()
        };
        state.users.rows.insert(
            user,
            serde_json::to_vec(&person).unwrap().into_boxed_slice(),
        );
        let (doc, skipped) = document(&state, true);
        assert_eq!(skipped, 0);
        let settings = &doc.usersettingscollection[0];
        assert_eq!(settings.incomingemailfilteringmethod, 2);
        assert_eq!(settings.addressbookcontactmatching, None);
        assert_eq!(settings.addressbookothermatching, None);
    }
}
