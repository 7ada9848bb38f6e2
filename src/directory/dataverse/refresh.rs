//! A refresh, step by step (fetch every table, check the bounds, apply, persist, build), and
//! the schedule that runs one every interval and swaps the result in.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use super::delta::{Pending, State, forget_deltas, prune_emails, stamp};
use super::rows::document;
use super::{DataverseSource, OfflineFilter, SourceError};
use crate::directory::model::{
    Account, Contact, EmailEnabledRecord, Lead, Mailbox, MailboxTrackingFolder, Organization,
    Queue, SavedQuery, SyncActivity, SystemUser, TrackedEmail, UserQuery, UserSettings,
};
use crate::directory::replica::ReplicaChanges;
use crate::directory::snapshot::Directory;
use crate::directory::tables;
use crate::directory::{DirectoryHandle, DirectoryMetrics};

/// What one refresh fetched, every table, before anything is applied.
struct Fetched {
    users: Pending<SystemUser>,
    settings: Pending<UserSettings>,
    userqueries: Pending<UserQuery>,
    savedqueries: Pending<SavedQuery>,
    queues: Pending<Queue>,
    mailboxes: Pending<Mailbox>,
    folders: Pending<MailboxTrackingFolder>,
    contacts: Pending<Contact>,
    accounts: Pending<Account>,
    leads: Pending<Lead>,
    others: Vec<Pending<EmailEnabledRecord>>,
    emails: Pending<TrackedEmail>,
    /// The synchronised activity tables, in [`tables::SYNC_ACTIVITIES`] order.
    activities: Vec<(&'static str, Pending<SyncActivity>)>,
}

/// Contacts, accounts, leads and the other tables' records, as `fetch_records` pulls them.
type Records = (
    Pending<Contact>,
    Pending<Account>,
    Pending<Lead>,
    Vec<Pending<EmailEnabledRecord>>,
);

/// What a refresh that succeeded leaves for the status and the swap.
struct Refreshed {
    /// `None`: nothing changed, the snapshot served is current.
    directory: Option<Directory>,
    /// Rows left out because they broke a rule of the directory.
    skipped: u64,
    /// Unix seconds the refresh began (when its data was fetched).
    as_of: u64,
    generation: u64,
}

impl DataverseSource {
    /// How long to wait between refreshes: the configured interval (or the shortest "update
    /// local data every" among the users, or 15 minutes), never below the organization's
    /// minimum.
    pub async fn interval(&self) -> Duration {
        let state = self.state.lock().await;
        let minutes = |m: u32| Duration::from_secs(u64::from(m) * 60);
        let wanted = self.settings.refresh_interval.unwrap_or_else(|| {
            state
                .settings
                .decoded(&mut 0)
                .into_iter()
                .filter_map(|s| s.offlinesyncinterval)
                .filter(|m| *m > 0)
                .min()
                .map(minutes)
                .unwrap_or(Duration::from_secs(15 * 60))
        });
        let floor = state
            .organization
            .as_ref()
            .and_then(|o| o.minofflinesyncinterval)
            .map(minutes)
            .unwrap_or_default();
        let interval = wanted.max(floor);
        self.settings
            .at_least_every
            .map_or(interval, |cap| interval.min(cap))
    }

    /// Fetches every table, applies the changes, persists them and builds the new snapshot.
    /// On any error nothing changes (and the error is recorded in the status).
    /// `Ok(None)`: nothing changed since the last refresh (the snapshot served is current).
    pub async fn refresh(&self) -> Result<Option<Directory>, SourceError> {
        self.refresh_generation().await.map(|(d, _)| d)
    }

    /// [`refresh`](Self::refresh), with the refresh's sequence number: a later refresh has a
    /// higher one, so two racing refreshes swap in order ([`refresh_now`]).
    pub async fn refresh_generation(&self) -> Result<(Option<Directory>, u64), SourceError> {
        let result = self.refresh_inner().await;
        if let Ok(mut status) = self.status.lock() {
            match &result {
                Ok(refreshed) => {
                    status.refreshed_at = Some(refreshed.as_of);
                    status.data_as_of = Some(refreshed.as_of);
                    status.last_error = None;
                    status.refreshes_ok += 1;
                    status.skipped_rows = refreshed.skipped;
                    status.from_replica = false;
                }
                Err(e) => {
                    status.last_error = Some(e.to_string());
                    status.refreshes_failed += 1;
                }
            }
        }
        result.map(|r| (r.directory, r.generation))
    }

    /// The refresh itself, holding the state for its whole length: one at a time.
    async fn refresh_inner(&self) -> Result<Refreshed, SourceError> {
        let mut state = self.state.lock().await;
        state.generation += 1;
        let generation = state.generation;
        let started = SystemTime::now();
        let organization = self.fetch_organization().await?;
        if state
            .organization
            .as_ref()
            .is_some_and(|o| o.organizationid != organization.organizationid)
        {
            // Another organization behind the same configuration: nothing carries over.
            tracing::warn!("the organization id changed; loading every table again");
            forget_deltas(&mut state);
        }
        let tables = self.fetch_tables(&mut state, started).await?;
        self.check_bounds(&state, &tables)?;

        // Everything arrived: apply, persist, build.
        let fetched = started.elapsed().unwrap_or_default();
        let mut changes = ReplicaChanges::default();
        let changed = self.apply_all(&mut state, organization, tables, started, &mut changes);
        let as_of = started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        stamp(&self.settings, as_of, &mut changes);
        let persisting = std::time::Instant::now();
        let written = changes.upserts.len() + changes.deletes.len();
        self.commit(&mut state, changes)?;
        let persisted = persisting.elapsed();
        if !changed {
            // Nothing new: the snapshot being served is current; no rebuild.
            tracing::debug!(
                fetch_ms = fetched.as_millis() as u64,
                "directory refreshed from Dataverse; nothing changed"
            );
            let skipped = self.status().skipped_rows;
            return Ok(Refreshed {
                directory: None,
                skipped,
                as_of,
                generation,
            });
        }
        let building = std::time::Instant::now();
        let (doc, skipped) = crate::common::off_the_workers(|| document(&state, false));
        drop(state);
        let directory = crate::common::off_the_workers(|| {
            Directory::build_with(doc, &self.settings.directory)
        })?;
        tracing::info!(
            fetch_ms = fetched.as_millis() as u64,
            persist_ms = persisted.as_millis() as u64,
            build_ms = building.elapsed().as_millis() as u64,
            replica_rows_written = written,
            skipped,
            "directory refreshed from Dataverse"
        );
        Ok(Refreshed {
            directory: Some(directory),
            skipped,
            as_of,
            generation,
        })
    }

    /// Pulls every table, the users first: who they are decides what `owned` keeps.
    async fn fetch_tables(
        &self,
        state: &mut State,
        started: SystemTime,
    ) -> Result<Fetched, SourceError> {
        let users = self
            .pull(
                &tables::SYSTEMUSERS,
                state.users.delta.clone(),
                &HashSet::new(),
            )
            .await?;
        let (user_ids, users_changed) = user_ids(state, &users);
        let delta = |set: &str, current: &Option<String>| {
            let owned = matches!(self.filter(set), OfflineFilter::Owned);
            current.clone().filter(|_| !(users_changed && owned))
        };
        let settings = self
            .pull_table(
                &tables::USERSETTINGS,
                &state.settings.delta,
                &delta,
                &user_ids,
            )
            .await?;
        let userqueries = self
            .pull_table(
                &tables::USERQUERIES,
                &state.userqueries.delta,
                &delta,
                &user_ids,
            )
            .await?;
        let savedqueries = self
            .pull_table(
                &tables::SAVEDQUERIES,
                &state.savedqueries.delta,
                &delta,
                &user_ids,
            )
            .await?;
        let queues = self
            .pull_table(&tables::QUEUES, &state.queues.delta, &delta, &user_ids)
            .await?;
        let mailboxes = self
            .pull_table(
                &tables::MAILBOXES,
                &state.mailboxes.delta,
                &delta,
                &user_ids,
            )
            .await?;
        let folders = self
            .pull_table(&tables::FOLDERS, &state.folders.delta, &delta, &user_ids)
            .await?;
        let (contacts, accounts, leads, others) =
            self.fetch_records(state, &user_ids, &delta).await?;
        if users_changed && matches!(self.filter("emails"), OfflineFilter::Owned) {
            state.emails_since = None;
        }
        let emails = self.pull_emails(state, &user_ids, started).await?;
        let mut activities = Vec::new();
        for spec in &tables::SYNC_ACTIVITIES {
            let current = state.activities.get(spec.set).and_then(|t| t.delta.clone());
            let pending = self.pull_table(spec, &current, &delta, &user_ids).await?;
            activities.push((spec.set, pending));
        }
        Ok(Fetched {
            users,
            settings,
            userqueries,
            savedqueries,
            queues,
            mailboxes,
            folders,
            contacts,
            accounts,
            leads,
            others,
            emails,
            activities,
        })
    }

    /// The e-mail-enabled records: contacts, accounts, leads and the configured other tables.
    /// One of the fixed tables, by its delta link unless `delta` says a full load is due.
    async fn pull_table<T: serde::de::DeserializeOwned + serde::Serialize>(
        &self,
        spec: &tables::TableSpec,
        current: &Option<String>,
        delta: &impl Fn(&str, &Option<String>) -> Option<String>,
        users: &HashSet<Uuid>,
    ) -> Result<Pending<T>, SourceError> {
        self.pull(spec, delta(spec.set, current), users).await
    }

    async fn fetch_records(
        &self,
        state: &State,
        user_ids: &HashSet<Uuid>,
        delta: &impl Fn(&str, &Option<String>) -> Option<String>,
    ) -> Result<Records, SourceError> {
        let contacts = self
            .pull_table(&tables::CONTACTS, &state.contacts.delta, delta, user_ids)
            .await?;
        let accounts = self
            .pull_table(&tables::ACCOUNTS, &state.accounts.delta, delta, user_ids)
            .await?;
        let leads = self
            .pull_table(&tables::LEADS, &state.leads.delta, delta, user_ids)
            .await?;
        let mut others = Vec::new();
        for table in &self.settings.other_tables {
            let current = state
                .others
                .get(&table.set)
                .and_then(|t| delta(&table.set, &t.delta));
            others.push(self.pull_other(table, current, user_ids).await?);
        }
        Ok((contacts, accounts, leads, others))
    }

    /// Bounded before anything changes: a table over `max_rows` fails the refresh.
    fn check_bounds(&self, state: &State, fetched: &Fetched) -> Result<(), SourceError> {
        let over = |set: &str, current: usize, full: bool, incoming: usize| {
            let total = if full { incoming } else { current + incoming };
            (total > self.settings.max_rows).then(|| SourceError::Malformed {
                set: set.to_owned(),
                message: format!(
                    "{total} rows, over directory.dataverse.max_rows ({})",
                    self.settings.max_rows
                ),
            })
        };
        for (set, current, full, incoming) in [
            (
                "contacts",
                state.contacts.rows.len(),
                fetched.contacts.full,
                fetched.contacts.rows.len(),
            ),
            (
                "accounts",
                state.accounts.rows.len(),
                fetched.accounts.full,
                fetched.accounts.rows.len(),
            ),
            (
                "leads",
                state.leads.rows.len(),
                fetched.leads.full,
                fetched.leads.rows.len(),
            ),
            (
                "emails",
                state.emails.rows.len(),
                fetched.emails.full,
                fetched.emails.rows.len(),
            ),
        ]
        .into_iter()
        .chain(fetched.activities.iter().map(|(set, pending)| {
            (
                *set,
                state.activities.get(set).map_or(0, |t| t.rows.len()),
                pending.full,
                pending.rows.len(),
            )
        })) {
            if let Some(error) = over(set, current, full, incoming) {
                return Err(error);
            }
        }
        Ok(())
    }

    /// Applies every table to memory and to the replica's change list, then drops the emails
    /// that left the window. Returns whether anything the snapshot is built from changed.
    fn apply_all(
        &self,
        state: &mut State,
        organization: Organization,
        fetched: Fetched,
        started: SystemTime,
        changes: &mut ReplicaChanges,
    ) -> bool {
        let org_bytes = serde_json::to_vec(&organization).ok();
        let mut changed = state
            .organization
            .as_ref()
            .map(serde_json::to_vec)
            .and_then(Result::ok)
            != org_bytes;
        changes.meta.push(("organization".into(), org_bytes));
        state.organization = Some(organization);
        changed |= self.apply(&mut state.users, fetched.users, changes);
        changed |= self.apply(&mut state.settings, fetched.settings, changes);
        changed |= self.apply(&mut state.userqueries, fetched.userqueries, changes);
        changed |= self.apply(&mut state.savedqueries, fetched.savedqueries, changes);
        changed |= self.apply(&mut state.queues, fetched.queues, changes);
        changed |= self.apply(&mut state.mailboxes, fetched.mailboxes, changes);
        changed |= self.apply(&mut state.folders, fetched.folders, changes);
        changed |= self.apply(&mut state.contacts, fetched.contacts, changes);
        changed |= self.apply(&mut state.accounts, fetched.accounts, changes);
        changed |= self.apply(&mut state.leads, fetched.leads, changes);
        for pending in fetched.others {
            let table = state.others.entry(pending.set.clone()).or_default();
            changed |= self.apply(table, pending, changes);
        }
        changed |= self.apply(&mut state.emails, fetched.emails, changes);
        for (set, pending) in fetched.activities {
            changed |= self.apply(state.activities.entry(set).or_default(), pending, changes);
        }
        let since = humantime::format_rfc3339_seconds(started).to_string();
        changed |= prune_emails(
            &mut state.emails,
            started,
            self.settings.emails_window,
            changes,
        );
        state.emails_since = Some(since.clone());
        let keep_since = matches!(self.filter("emails"), OfflineFilter::All);
        changes.meta.push((
            "emails/since".into(),
            keep_since.then(|| since.into_bytes()),
        ));
        changed
    }
}

/// The user ids after this refresh (what `owned` keeps), and whether they changed: `owned`
/// depends on who the users are, so when that changes the tables it filters are loaded whole,
/// and records of a new user enter the replica and a gone user's leave.
fn user_ids(state: &State, users: &Pending<SystemUser>) -> (HashSet<Uuid>, bool) {
    let mut user_ids: HashSet<Uuid> = if users.full {
        HashSet::new()
    } else {
        state.users.rows.keys().copied().collect()
    };
    for id in &users.deleted {
        user_ids.remove(id);
    }
    user_ids.extend(users.rows.iter().map(|r| r.0));
    let previous: HashSet<Uuid> = state.users.rows.keys().copied().collect();
    let users_changed = !previous.is_empty() && previous != user_ids;
    (user_ids, users_changed)
}

/// Refreshes once and swaps the result in (unless a later refresh already did); on failure
/// the current snapshot stays.
pub async fn refresh_now(
    source: &DataverseSource,
    handle: &DirectoryHandle,
    metrics: &DirectoryMetrics,
) -> Result<(), SourceError> {
    let result = source.refresh_generation().await;
    metrics.source_status(&source.status());
    match result {
        Ok((None, _)) => {
            metrics.unchanged();
            Ok(())
        }
        Ok((Some(directory), generation)) => {
            metrics.loaded(&directory);
            let mut swapped = source
                .swapped
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if generation > *swapped {
                *swapped = generation;
                tracing::info!(counts = %directory.counts(), "directory snapshot swapped");
                handle.swap(directory);
            }
            Ok(())
        }
        Err(error) => {
            metrics.failed();
            tracing::warn!(%error, "directory refresh failed; keeping the last snapshot");
            Err(error)
        }
    }
}

/// Refreshes every interval until `stop`, and keeps the staleness gauge current between
/// refreshes. After a failure it tries again sooner (5 s, doubling up to the interval), so a
/// start without Dataverse or a short outage does not leave the directory stale for a whole
/// interval.
pub async fn keep_fresh(
    source: std::sync::Arc<DataverseSource>,
    handle: DirectoryHandle,
    metrics: std::sync::Arc<DirectoryMetrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let later = |wait: Duration| {
        let now = tokio::time::Instant::now();
        now.checked_add(wait)
            .unwrap_or(now + Duration::from_secs(86_400))
    };
    let mut retry = Duration::from_secs(5);
    let first = if source.status().ever_loaded() {
        source.interval().await
    } else {
        retry
    };
    let mut next = later(first);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {
                metrics.source_status(&source.status());
                if tokio::time::Instant::now() < next {
                    continue;
                }
            }
        }
        let interval = source.interval().await;
        next = match refresh_now(&source, &handle, &metrics).await {
            Ok(()) => {
                retry = Duration::from_secs(5);
                later(interval)
            }
            Err(_) => {
                let wait = retry.min(interval);
                retry = (retry * 2).min(interval);
                later(wait)
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::DataverseSourceSettings;
    use super::super::delta::encode;
    use super::*;

    #[tokio::test]
    async fn the_interval_is_the_configured_or_users_one_never_below_the_org_minimum() {
        let dir = tempfile::tempdir().unwrap();
        let settings = |interval: Option<Duration>| DataverseSourceSettings {
            url: "http://127.0.0.1:9".into(),
            api_path: "/api/data/v9.2".into(),
            credentials: None,
            page_size: 10,
            refresh_interval: interval,
            at_least_every: None,
            request_timeout: Duration::from_secs(1),
            emails_window: Duration::from_secs(86_400),
            offline_filters: HashMap::new(),
            other_tables: Vec::new(),
            replica_file: dir.path().join(format!("{interval:?}.redb")),
            max_rows: 1000,
            directory: Default::default(),
        };
        let minutes = |m: u64| Duration::from_secs(m * 60);
        let (source, _) = DataverseSource::open(reqwest::Client::new(), settings(None)).unwrap();
        assert_eq!(source.interval().await, minutes(15), "no option anywhere");
        {
            let mut state = source.state.lock().await;
            for (n, m) in [(1, Some(30)), (2, Some(20)), (3, None)] {
                let row = UserSettings {
                    systemuserid: Uuid::from_u128(n),
                    offlinesyncinterval: m,
                    ..UserSettings::default()
                };
                state
                    .settings
                    .rows
                    .insert(Uuid::from_u128(n), encode(&row).unwrap());
            }
        }
        assert_eq!(source.interval().await, minutes(20), "the users' shortest");
        source.state.lock().await.organization = Some(Organization {
            minofflinesyncinterval: Some(45),
            ..Organization::default()
        });
        assert_eq!(
            source.interval().await,
            minutes(45),
            "the organization's minimum"
        );
        let (configured, _) =
            DataverseSource::open(reqwest::Client::new(), settings(Some(minutes(5)))).unwrap();
        assert_eq!(configured.interval().await, minutes(5));
        configured.state.lock().await.organization = Some(Organization {
            minofflinesyncinterval: Some(15),
            ..Organization::default()
        });
        assert_eq!(configured.interval().await, minutes(15));
    }
}
