//! The replicated state and its bookkeeping: each table's rows with the delta link change
//! tracking left off at, what one refresh fetched and how it is applied to memory and to the
//! replica's change list, the email window, and the replica's restore after a restart and its
//! commit after a refresh.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::{DataverseSource, DataverseSourceSettings, OfflineFilter, SourceError};
use crate::directory::model::{
    Account, Contact, EmailEnabledRecord, Lead, Mailbox, MailboxTrackingFolder, Organization,
    Queue, SavedQuery, SyncActivity, SystemUser, TrackedEmail, UserQuery, UserSettings,
};
use crate::directory::replica::{Replica, ReplicaChanges};
use crate::directory::tables::{self, OtherTable};

/// One table's rows and where change tracking left off. Rows are kept encoded (the
/// directory model as JSON, exactly what the replica stores): about 40 % of the memory of the
/// typed rows, nothing to encode when persisting, nothing to decode when restoring; they are
/// decoded only to build a snapshot.
#[derive(Debug)]
pub(super) struct Table<T> {
    pub(super) rows: HashMap<Uuid, Box<[u8]>>,
    pub(super) delta: Option<String>,
    row: std::marker::PhantomData<fn() -> T>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            rows: HashMap::new(),
            delta: None,
            row: std::marker::PhantomData,
        }
    }
}

impl<T: DeserializeOwned> Table<T> {
    /// Every row decoded; a row that does not decode (written by another version) is counted.
    pub(super) fn decoded(&self, skipped: &mut u64) -> Vec<T> {
        self.rows
            .values()
            .filter_map(|bytes| match serde_json::from_slice(bytes) {
                Ok(row) => Some(row),
                Err(_) => {
                    *skipped += 1;
                    None
                }
            })
            .collect()
    }
}

/// What one refresh fetched for a table, applied only when every table was fetched.
pub(super) struct Pending<T> {
    pub(super) set: String,
    pub(super) full: bool,
    /// The encoded row, and whether the offline filter keeps it.
    pub(super) rows: Vec<(Uuid, Box<[u8]>, bool)>,
    pub(super) deleted: Vec<Uuid>,
    pub(super) delta: Option<String>,
    pub(super) row: std::marker::PhantomData<fn() -> T>,
}

/// A converted row, encoded for the table.
pub(super) fn encode<T: Serialize>(row: &T) -> Option<Box<[u8]>> {
    serde_json::to_vec(row).ok().map(Vec::into_boxed_slice)
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) organization: Option<Organization>,
    pub(super) users: Table<SystemUser>,
    pub(super) settings: Table<UserSettings>,
    pub(super) userqueries: Table<UserQuery>,
    pub(super) savedqueries: Table<SavedQuery>,
    pub(super) queues: Table<Queue>,
    pub(super) mailboxes: Table<Mailbox>,
    pub(super) folders: Table<MailboxTrackingFolder>,
    pub(super) contacts: Table<Contact>,
    pub(super) accounts: Table<Account>,
    pub(super) leads: Table<Lead>,
    pub(super) emails: Table<TrackedEmail>,
    /// The synchronised activity tables (appointments, tasks, …) by entity set.
    pub(super) activities: HashMap<&'static str, Table<SyncActivity>>,
    /// When the last email refresh began (RFC 3339), for the next incremental one.
    pub(super) emails_since: Option<String>,
    /// Refreshes begun, for ordering their swaps.
    pub(super) generation: u64,
    pub(super) others: HashMap<String, Table<EmailEnabledRecord>>,
}

impl DataverseSource {
    /// Applies one table's fetched changes to memory and to the replica's change list.
    /// Returns whether the table's rows changed.
    pub(super) fn apply<T>(
        &self,
        table: &mut Table<T>,
        pending: Pending<T>,
        changes: &mut ReplicaChanges,
    ) -> bool {
        let changed = if pending.full {
            let same = pending.rows.len() == table.rows.len()
                && pending
                    .rows
                    .iter()
                    .all(|(id, row, _)| table.rows.get(id) == Some(row));
            if !same {
                // A table loaded whole that did change is rewritten whole in the replica.
                table.rows.clear();
                changes.replaced.push(pending.set.clone());
                for (id, row, keep) in pending.rows {
                    if keep {
                        changes
                            .upserts
                            .push((pending.set.clone(), id, row.to_vec()));
                    }
                    table.rows.insert(id, row);
                }
            }
            !same
        } else {
            let mut changed = false;
            for id in pending.deleted {
                changed |= table.rows.remove(&id).is_some();
                changes.deletes.push((pending.set.clone(), id));
            }
            for (id, row, keep) in pending.rows {
                if keep {
                    changes
                        .upserts
                        .push((pending.set.clone(), id, row.to_vec()));
                } else {
                    changes.deletes.push((pending.set.clone(), id));
                }
                changed |= table.rows.get(&id) != Some(&row);
                table.rows.insert(id, row);
            }
            changed
        };
        let resumable = matches!(self.filter(&pending.set), OfflineFilter::All);
        changes.meta.push((
            format!("delta/{}", pending.set),
            pending
                .delta
                .as_ref()
                .filter(|_| resumable)
                .map(|d| d.clone().into_bytes()),
        ));
        table.delta = pending.delta;
        changed
    }

    /// Writes a refresh's changes to the replica. The replica follows the state even when the
    /// snapshot cannot be built, so the two never drift apart; if the replica cannot be
    /// written, every table is loaded whole next time (its rows are replaced then).
    pub(super) fn commit(
        &self,
        state: &mut State,
        changes: ReplicaChanges,
    ) -> Result<(), SourceError> {
        if let Err(error) = crate::common::off_the_workers(|| self.replica.commit(changes)) {
            forget_deltas(state);
            return Err(error.into());
        }
        Ok(())
    }
}

/// What [`restore`] checks before trusting a replica: when its data was fetched, which
/// environment it came from and how the tables were asked for.
pub(super) fn stamp(settings: &DataverseSourceSettings, as_of: u64, changes: &mut ReplicaChanges) {
    changes
        .meta
        .push(("as_of".into(), Some(as_of.to_string().into_bytes())));
    changes
        .meta
        .push(("source".into(), Some(source_id(settings).into_bytes())));
    changes.meta.push((
        "fingerprint".into(),
        Some(fingerprint(settings).into_bytes()),
    ));
}

/// Which Dataverse environment a replica belongs to.
fn source_id(settings: &DataverseSourceSettings) -> String {
    format!("{}{}", settings.url, settings.api_path)
}

/// How the tables are asked for; a delta link made another way is not continued.
fn fingerprint(settings: &DataverseSourceSettings) -> String {
    let mut text = format!("v1|{}", settings.emails_window.as_secs());
    for spec in tables::TABLES {
        text.push_str(&format!("|{}:{}", spec.set, spec.select()));
    }
    for other in &settings.other_tables {
        text.push_str(&format!("|{}:{}", other.set, other.select().join(",")));
    }
    text
}

/// Makes the next refresh load every table whole.
pub(super) fn forget_deltas(state: &mut State) {
    state.users.delta = None;
    state.settings.delta = None;
    state.userqueries.delta = None;
    state.savedqueries.delta = None;
    state.queues.delta = None;
    state.mailboxes.delta = None;
    state.folders.delta = None;
    state.contacts.delta = None;
    state.accounts.delta = None;
    state.leads.delta = None;
    for table in state.activities.values_mut() {
        table.delta = None;
    }
    state.emails_since = None;
    for table in state.others.values_mut() {
        table.delta = None;
    }
}

/// Reads a Dataverse timestamp (`2026-05-01T10:00:00Z`).
pub(super) fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text.trim().trim_end_matches('Z')).ok()
}

/// `now - window`, or the epoch for a window longer than the time since it.
pub(super) fn before(now: SystemTime, window: Duration) -> SystemTime {
    // Not before the epoch: humantime formats only times after it.
    now.checked_sub(window)
        .filter(|t| *t >= SystemTime::UNIX_EPOCH)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Drops emails created before the window.
pub(super) fn prune_emails(
    emails: &mut Table<TrackedEmail>,
    now: SystemTime,
    window: Duration,
    changes: &mut ReplicaChanges,
) -> bool {
    let before_count = emails.rows.len();
    let cutoff = before(now, window);
    emails.rows.retain(|id, bytes| {
        let old = serde_json::from_slice::<TrackedEmail>(bytes)
            .ok()
            .and_then(|e| e.createdon)
            .as_deref()
            .and_then(parse_time)
            .is_some_and(|t| t < cutoff);
        if old {
            changes.deletes.push(("emails".into(), *id));
        }
        !old
    });
    // An old email modified lately came in with this refresh: it must not reach the replica
    // (the replica applies deletes before upserts).
    changes
        .upserts
        .retain(|(set, id, _)| set != "emails" || emails.rows.contains_key(id));
    emails.rows.len() != before_count
}

/// Loads the replica into `state`; returns when its data was fetched, or `None` when the
/// replica is empty.
pub(super) fn restore(
    replica: &Replica,
    settings: &DataverseSourceSettings,
    state: &mut State,
) -> Result<Option<u64>, SourceError> {
    let Some(organization) = replica.meta("organization")? else {
        return Ok(None);
    };
    // Another environment's replica, or an organization row this version cannot read: not
    // served (its ids would be the wrong organization's).
    let source = replica.meta("source")?;
    if source.as_deref() != Some(source_id(settings).as_bytes()) {
        tracing::warn!("the directory replica is of another Dataverse environment; not served");
        return Ok(None);
    }
    let Ok(organization) = serde_json::from_slice::<Organization>(&organization) else {
        return Ok(None);
    };
    state.organization = Some(organization);
    restore_rows(replica, settings, state)?;
    restore_deltas(replica, settings, state)?;
    let as_of = replica
        .meta("as_of")?
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    Ok(Some(as_of))
}

/// The replica's rows into their tables; the rows of tables no longer replicated or kept
/// offline are removed from the file.
fn restore_rows(
    replica: &Replica,
    settings: &DataverseSourceSettings,
    state: &mut State,
) -> Result<(), SourceError> {
    fn put<T>(table: &mut Table<T>, id: Uuid, bytes: &[u8]) {
        table.rows.insert(id, bytes.into());
    }
    let known_sets: Vec<String> = tables::TABLES
        .iter()
        .map(|t| t.set.to_owned())
        .chain(settings.other_tables.iter().map(|t| t.set.clone()))
        .filter(|set| !matches!(settings.offline_filter(set), OfflineFilter::None))
        .collect();
    let mut unwanted = HashSet::new();
    let others: HashMap<&str, &OtherTable> = settings
        .other_tables
        .iter()
        .map(|t| (t.set.as_str(), t))
        .collect();
    replica.for_each_row(|set, id, bytes| match set {
        // Tables no longer replicated or kept offline: their rows leave the file below.
        other if !known_sets.iter().any(|k| k == other) => {
            unwanted.insert(other.to_owned());
        }
        "systemusers" => put(&mut state.users, id, bytes),
        "usersettingscollection" => put(&mut state.settings, id, bytes),
        "userqueries" => put(&mut state.userqueries, id, bytes),
        "savedqueries" => put(&mut state.savedqueries, id, bytes),
        "queues" => put(&mut state.queues, id, bytes),
        "mailboxes" => put(&mut state.mailboxes, id, bytes),
        "mailboxtrackingfolders" => put(&mut state.folders, id, bytes),
        "contacts" => put(&mut state.contacts, id, bytes),
        "accounts" => put(&mut state.accounts, id, bytes),
        "leads" => put(&mut state.leads, id, bytes),
        "emails" => put(&mut state.emails, id, bytes),
        set if tables::SYNC_ACTIVITIES.iter().any(|t| t.set == set) => {
            let set = tables::SYNC_ACTIVITIES
                .iter()
                .find(|t| t.set == set)
                .map_or("", |t| t.set);
            put(state.activities.entry(set).or_default(), id, bytes)
        }
        other if others.contains_key(other) => {
            put(state.others.entry(other.to_owned()).or_default(), id, bytes)
        }
        _ => {}
    })?;
    if !unwanted.is_empty() {
        replica.commit(ReplicaChanges {
            replaced: unwanted.into_iter().collect(),
            ..ReplicaChanges::default()
        })?;
    }
    Ok(())
}

/// Where change tracking left off, for the tables whose delta links can be continued.
fn restore_deltas(
    replica: &Replica,
    settings: &DataverseSourceSettings,
    state: &mut State,
) -> Result<(), SourceError> {
    // A delta link continues only a table kept whole, and only if the tables are asked for
    // the same way (columns, other tables, email window) as when it was made; otherwise the
    // table is loaded again.
    let same_shape =
        replica.meta("fingerprint")?.as_deref() == Some(fingerprint(settings).as_bytes());
    let keeps_all =
        |set: &str| same_shape && matches!(settings.offline_filter(set), OfflineFilter::All);
    let delta = |set: &str| -> Result<Option<String>, SourceError> {
        if !keeps_all(set) {
            return Ok(None);
        }
        Ok(replica
            .meta(&format!("delta/{set}"))?
            .and_then(|b| String::from_utf8(b).ok()))
    };
    state.users.delta = delta("systemusers")?;
    state.settings.delta = delta("usersettingscollection")?;
    state.queues.delta = delta("queues")?;
    state.mailboxes.delta = delta("mailboxes")?;
    state.folders.delta = delta("mailboxtrackingfolders")?;
    state.contacts.delta = delta("contacts")?;
    state.accounts.delta = delta("accounts")?;
    state.leads.delta = delta("leads")?;
    for spec in tables::SYNC_ACTIVITIES {
        state.activities.entry(spec.set).or_default().delta = delta(spec.set)?;
    }
    for (set, table) in state.others.iter_mut() {
        table.delta = delta(set)?;
    }
    if keeps_all("emails") {
        state.emails_since = replica
            .meta("emails/since")?
            .and_then(|b| String::from_utf8(b).ok());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataverse_timestamps_parse_and_old_emails_are_pruned() {
        let now = parse_time("2026-11-27T08:00:00Z").unwrap();
        assert_eq!(
            humantime::format_rfc3339_seconds(now).to_string(),
            "2026-11-27T08:00:00Z"
        );
        let mut emails = Table::<TrackedEmail>::default();
        for (n, created) in [(1, "2026-11-26T08:00:00Z"), (2, "2026-09-01T08:00:00Z")] {
            let email = TrackedEmail {
                activityid: Uuid::from_u128(n),
                createdon: Some(created.into()),
                ..TrackedEmail::default()
            };
            emails
                .rows
                .insert(Uuid::from_u128(n), encode(&email).unwrap());
        }
        let mut changes = ReplicaChanges::default();
        prune_emails(
            &mut emails,
            now,
            Duration::from_secs(30 * 86_400),
            &mut changes,
        );
        assert!(emails.rows.contains_key(&Uuid::from_u128(1)));
        assert!(!emails.rows.contains_key(&Uuid::from_u128(2)));
        assert_eq!(
            changes.deletes,
            vec![("emails".to_owned(), Uuid::from_u128(2))]
        );
        assert_eq!(
            before(now, Duration::from_secs(u64::MAX / 4)),
            SystemTime::UNIX_EPOCH
        );
    }
}
