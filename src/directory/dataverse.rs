//! The Dataverse directory source: loads the organization, users, their personal options,
//! queues, mailboxes, folder tracking rules, e-mail-enabled records and recently tracked emails
//! from the Web API (paged with `Prefer: odata.maxpagesize`, following `@odata.nextLink`), then
//! keeps them current with change tracking (`Prefer: odata.track-changes`, delta links,
//! `$deletedEntity` rows). A table without change tracking is simply loaded whole again.
//!
//! Each refresh is all or nothing: every table is fetched first, then the changes are applied,
//! persisted to the replica (rows the offline filters keep) and built into a new snapshot that
//! is swapped in while readers carry on. When Dataverse is unreachable the last snapshot stays,
//! and after a restart the persisted replica serves until Dataverse answers again.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::model::{
    Account, Contact, DirectoryDocument, EmailEnabledRecord, Lead, Mailbox, MailboxTrackingFolder,
    Organization, Queue, SystemUser, TrackedEmail, UserSettings,
};
use super::odata::Filter;
use super::replica::{Replica, ReplicaChanges, ReplicaError};
use super::snapshot::{Directory, InvalidDirectory};
use super::tables::{self, OtherTable, TableSpec};
use crate::common::ClientCredentials;
use crate::oauth::TokenSource;

/// Largest response page read (a 5000-row page of the widest table is a few MB).
const MAX_PAGE_BYTES: usize = 64 << 20;
/// Pages followed for one table in one refresh, at most.
const MAX_PAGES: usize = 100_000;
/// Emails changed just before the previous refresh began are asked for again.
const EMAIL_OVERLAP: Duration = Duration::from_secs(300);

/// Which rows of a table the replica keeps for offline use.
#[derive(Debug, Clone)]
pub enum OfflineFilter {
    All,
    /// Rows owned by one of the replicated users (the default for records and emails).
    Owned,
    None,
    /// An OData `$filter` expression, evaluated on the Web API row.
    Matching(Filter),
}

impl OfflineFilter {
    pub fn parse(text: &str) -> Result<OfflineFilter, super::odata::FilterError> {
        match text.trim() {
            "all" => Ok(OfflineFilter::All),
            "owned" => Ok(OfflineFilter::Owned),
            "none" => Ok(OfflineFilter::None),
            expression => Filter::parse(expression).map(OfflineFilter::Matching),
        }
    }

    fn keeps(&self, row: &Map<String, Value>, users: &HashSet<Uuid>) -> bool {
        match self {
            OfflineFilter::All => true,
            OfflineFilter::None => false,
            OfflineFilter::Owned => row
                .get("_ownerid_value")
                .and_then(Value::as_str)
                .and_then(|t| Uuid::parse_str(t).ok())
                .is_some_and(|owner| users.contains(&owner)),
            OfflineFilter::Matching(f) => f.matches(row),
        }
    }
}

/// Where and how the source reads Dataverse.
#[derive(Debug, Clone)]
pub struct DataverseSourceSettings {
    /// The environment URL (no trailing slash).
    pub url: String,
    pub api_path: String,
    pub credentials: Option<ClientCredentials>,
    /// Rows per page asked for (`Prefer: odata.maxpagesize`, at most 5000).
    pub page_size: u32,
    /// The configured refresh interval; `None` takes the users' "update local data every"
    /// option. Never below the organization's minimum.
    pub refresh_interval: Option<Duration>,
    pub request_timeout: Duration,
    /// How far back tracked emails are replicated for correlation.
    pub emails_window: Duration,
    /// Per entity set; a set not named keeps the default ([`default_offline_filter`]).
    pub offline_filters: HashMap<String, OfflineFilter>,
    pub other_tables: Vec<OtherTable>,
    pub replica_file: PathBuf,
    /// Rows replicated per table at most (a bound on memory).
    pub max_rows: usize,
}

impl DataverseSourceSettings {
    /// The offline filter of `set`: the configured one, else the default.
    pub fn offline_filter(&self, set: &str) -> OfflineFilter {
        self.offline_filters
            .get(set)
            .cloned()
            .unwrap_or_else(|| default_offline_filter(set))
    }
}

/// Records and emails keep the users' own rows offline; the tables the rules cannot do without
/// are kept whole.
pub fn default_offline_filter(set: &str) -> OfflineFilter {
    match set {
        "systemusers"
        | "usersettingscollection"
        | "queues"
        | "mailboxes"
        | "mailboxtrackingfolders"
        | "organizations" => OfflineFilter::All,
        _ => OfflineFilter::Owned,
    }
}

/// Tables whose rows have an owner (where `owned` makes sense).
pub fn has_owner(set: &str) -> bool {
    matches!(set, "queues" | "contacts" | "accounts" | "leads" | "emails")
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("Dataverse is unreachable: {0}")]
    Unreachable(String),
    #[error("Dataverse answered {status} for {set}: {message}")]
    Status {
        set: String,
        status: u16,
        message: String,
    },
    #[error("Dataverse's answer for {set} is not readable: {message}")]
    Malformed { set: String, message: String },
    #[error("the delta link of {0} has expired")]
    Expired(String),
    #[error("Dataverse is busy ({status} for {set})")]
    Throttled {
        set: String,
        status: u16,
        wait: Duration,
    },
    #[error("the replicated directory is not valid: {0}")]
    Invalid(#[from] InvalidDirectory),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

/// One table's rows and where change tracking left off. Rows are kept encoded (the
/// directory model as JSON, exactly what the replica stores): about 40 % of the memory of the
/// typed rows, nothing to encode when persisting, nothing to decode when restoring; they are
/// decoded only to build a snapshot.
#[derive(Debug)]
struct Table<T> {
    rows: HashMap<Uuid, Box<[u8]>>,
    delta: Option<String>,
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
    fn decoded(&self, skipped: &mut u64) -> Vec<T> {
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
struct Pending<T> {
    set: String,
    full: bool,
    /// The encoded row, and whether the offline filter keeps it.
    rows: Vec<(Uuid, Box<[u8]>, bool)>,
    deleted: Vec<Uuid>,
    delta: Option<String>,
    row: std::marker::PhantomData<fn() -> T>,
}

/// A converted row, encoded for the table.
fn encode<T: Serialize>(row: &T) -> Option<Box<[u8]>> {
    serde_json::to_vec(row).ok().map(Vec::into_boxed_slice)
}

#[derive(Debug, Default)]
struct State {
    organization: Option<Organization>,
    users: Table<SystemUser>,
    settings: Table<UserSettings>,
    queues: Table<Queue>,
    mailboxes: Table<Mailbox>,
    folders: Table<MailboxTrackingFolder>,
    contacts: Table<Contact>,
    accounts: Table<Account>,
    leads: Table<Lead>,
    emails: Table<TrackedEmail>,
    /// When the last email refresh began (RFC 3339), for the next incremental one.
    emails_since: Option<String>,
    /// Refreshes begun, for ordering their swaps.
    generation: u64,
    others: HashMap<String, Table<EmailEnabledRecord>>,
}

/// How fresh the directory is, for the readiness detail and the admin endpoint.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceStatus {
    /// Unix seconds of the last successful refresh (`None`: never, since this start).
    pub refreshed_at: Option<u64>,
    /// Unix seconds the served rows were fetched at (from the replica after a restart).
    pub data_as_of: Option<u64>,
    pub last_error: Option<String>,
    pub refreshes_ok: u64,
    pub refreshes_failed: u64,
    /// Rows the last refresh left out because they broke a rule of the directory.
    pub skipped_rows: u64,
    /// Serving the persisted replica, not yet refreshed since the start.
    pub from_replica: bool,
    /// Unix seconds this process opened the source (staleness counts from it until a load).
    pub started_at: u64,
}

impl SourceStatus {
    /// Seconds since the served data was fetched.
    /// Never loaded: the time since the start (there is no data at all).
    pub fn staleness_seconds(&self) -> u64 {
        unix_now().saturating_sub(self.data_as_of.unwrap_or(self.started_at))
    }

    pub fn ever_loaded(&self) -> bool {
        self.data_as_of.is_some()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug)]
pub struct DataverseSource {
    http: reqwest::Client,
    settings: DataverseSourceSettings,
    tokens: Option<TokenSource>,
    replica: Replica,
    /// Held for the whole refresh: one at a time.
    state: tokio::sync::Mutex<State>,
    status: Mutex<SourceStatus>,
    /// The generation of the snapshot last swapped in: an older refresh finishing late never
    /// replaces a newer one.
    swapped: Mutex<u64>,
}

impl DataverseSource {
    /// Opens the replica; returns the source and, when the replica holds a directory, the
    /// snapshot built from it.
    pub fn open(
        http: reqwest::Client,
        settings: DataverseSourceSettings,
    ) -> Result<(DataverseSource, Option<Directory>), SourceError> {
        let replica = Replica::open(&settings.replica_file)?;
        let tokens = settings
            .credentials
            .clone()
            .map(|c| TokenSource::new(http.clone(), c));
        let mut state = State::default();
        let mut status = SourceStatus {
            started_at: unix_now(),
            ..SourceStatus::default()
        };
        let restored = match restore(&replica, &settings, &mut state) {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(%error, "the directory replica cannot be read; loading from Dataverse");
                None
            }
        };
        let directory = match restored {
            Some(as_of) => {
                let (doc, skipped) = document(&state);
                match Directory::build(doc) {
                    Ok(directory) => {
                        status.data_as_of = Some(as_of);
                        status.from_replica = true;
                        status.skipped_rows = skipped;
                        Some(directory)
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the directory replica does not build; loading from Dataverse");
                        None
                    }
                }
            }
            None => None,
        };
        if directory.is_none() {
            // Whatever was read is not trusted: the first refresh loads every table whole.
            state = State::default();
        }
        Ok((
            DataverseSource {
                http,
                settings,
                tokens,
                replica,
                state: tokio::sync::Mutex::new(state),
                status: Mutex::new(status),
                swapped: Mutex::new(0),
            },
            directory,
        ))
    }

    pub fn status(&self) -> SourceStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn replica_path(&self) -> &std::path::Path {
        self.replica.path()
    }

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
        wanted.max(floor)
    }

    fn filter(&self, set: &str) -> OfflineFilter {
        self.settings.offline_filter(set)
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
                Ok((_, skipped, as_of, _)) => {
                    status.refreshed_at = Some(*as_of);
                    status.data_as_of = Some(*as_of);
                    status.last_error = None;
                    status.refreshes_ok += 1;
                    status.skipped_rows = *skipped;
                    status.from_replica = false;
                }
                Err(e) => {
                    status.last_error = Some(e.to_string());
                    status.refreshes_failed += 1;
                }
            }
        }
        result.map(|(d, _, _, generation)| (d, generation))
    }

    async fn refresh_inner(&self) -> Result<(Option<Directory>, u64, u64, u64), SourceError> {
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
        let users = self
            .pull(
                &tables::SYSTEMUSERS,
                state.users.delta.clone(),
                &HashSet::new(),
            )
            .await?;
        // The user ids after this refresh: what `owned` keeps.
        let mut user_ids: HashSet<Uuid> = if users.full {
            HashSet::new()
        } else {
            state.users.rows.keys().copied().collect()
        };
        for id in &users.deleted {
            user_ids.remove(id);
        }
        user_ids.extend(users.rows.iter().map(|r| r.0));
        // `owned` depends on who the users are: when that changes, the tables it filters are
        // loaded whole, so records of a new user enter the replica and a gone user's leave.
        let previous: HashSet<Uuid> = state.users.rows.keys().copied().collect();
        let users_changed = !previous.is_empty() && previous != user_ids;
        let delta = |set: &str, current: &Option<String>| {
            let owned = matches!(self.filter(set), OfflineFilter::Owned);
            current.clone().filter(|_| !(users_changed && owned))
        };
        let settings = self
            .pull(
                &tables::USERSETTINGS,
                delta("usersettingscollection", &state.settings.delta),
                &user_ids,
            )
            .await?;
        let queues = self
            .pull(
                &tables::QUEUES,
                delta("queues", &state.queues.delta),
                &user_ids,
            )
            .await?;
        let mailboxes = self
            .pull(
                &tables::MAILBOXES,
                delta("mailboxes", &state.mailboxes.delta),
                &user_ids,
            )
            .await?;
        let folders = self
            .pull(
                &tables::FOLDERS,
                delta("mailboxtrackingfolders", &state.folders.delta),
                &user_ids,
            )
            .await?;
        let contacts = self
            .pull(
                &tables::CONTACTS,
                delta("contacts", &state.contacts.delta),
                &user_ids,
            )
            .await?;
        let accounts = self
            .pull(
                &tables::ACCOUNTS,
                delta("accounts", &state.accounts.delta),
                &user_ids,
            )
            .await?;
        let leads = self
            .pull(
                &tables::LEADS,
                delta("leads", &state.leads.delta),
                &user_ids,
            )
            .await?;
        let mut others = Vec::new();
        for table in &self.settings.other_tables {
            let current = state
                .others
                .get(&table.set)
                .and_then(|t| delta(&table.set, &t.delta));
            others.push(self.pull_other(table, current, &user_ids).await?);
        }
        if users_changed && matches!(self.filter("emails"), OfflineFilter::Owned) {
            state.emails_since = None;
        }
        let emails = self.pull_emails(&state, &user_ids, started).await?;

        // Bounded before anything changes: a table over `max_rows` fails the refresh.
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
                contacts.full,
                contacts.rows.len(),
            ),
            (
                "accounts",
                state.accounts.rows.len(),
                accounts.full,
                accounts.rows.len(),
            ),
            (
                "leads",
                state.leads.rows.len(),
                leads.full,
                leads.rows.len(),
            ),
            (
                "emails",
                state.emails.rows.len(),
                emails.full,
                emails.rows.len(),
            ),
        ] {
            if let Some(error) = over(set, current, full, incoming) {
                return Err(error);
            }
        }

        // Everything arrived: apply, persist, build.
        let fetched = started.elapsed().unwrap_or_default();
        let mut changes = ReplicaChanges::default();
        let org_bytes = serde_json::to_vec(&organization).ok();
        let mut changed = state
            .organization
            .as_ref()
            .map(serde_json::to_vec)
            .and_then(Result::ok)
            != org_bytes;
        changes.meta.push(("organization".into(), org_bytes));
        state.organization = Some(organization);
        changed |= self.apply(&mut state.users, users, &mut changes);
        changed |= self.apply(&mut state.settings, settings, &mut changes);
        changed |= self.apply(&mut state.queues, queues, &mut changes);
        changed |= self.apply(&mut state.mailboxes, mailboxes, &mut changes);
        changed |= self.apply(&mut state.folders, folders, &mut changes);
        changed |= self.apply(&mut state.contacts, contacts, &mut changes);
        changed |= self.apply(&mut state.accounts, accounts, &mut changes);
        changed |= self.apply(&mut state.leads, leads, &mut changes);
        for pending in others {
            let table = state.others.entry(pending.set.clone()).or_default();
            changed |= self.apply(table, pending, &mut changes);
        }
        changed |= self.apply(&mut state.emails, emails, &mut changes);
        let since = humantime::format_rfc3339_seconds(started).to_string();
        changed |= prune_emails(
            &mut state.emails,
            started,
            self.settings.emails_window,
            &mut changes,
        );
        state.emails_since = Some(since.clone());
        let keep_since = matches!(self.filter("emails"), OfflineFilter::All);
        changes.meta.push((
            "emails/since".into(),
            keep_since.then(|| since.into_bytes()),
        ));
        let as_of = started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        changes
            .meta
            .push(("as_of".into(), Some(as_of.to_string().into_bytes())));
        changes.meta.push((
            "source".into(),
            Some(source_id(&self.settings).into_bytes()),
        ));
        changes.meta.push((
            "fingerprint".into(),
            Some(fingerprint(&self.settings).into_bytes()),
        ));
        // The replica follows the state even when the snapshot cannot be built, so the two
        // never drift apart; if the replica cannot be written, every table is loaded whole next
        // time (its rows are replaced then).
        let persisting = std::time::Instant::now();
        let written = changes.upserts.len() + changes.deletes.len();
        if let Err(error) = crate::common::off_the_workers(|| self.replica.commit(changes)) {
            forget_deltas(&mut state);
            return Err(error.into());
        }
        let persisted = persisting.elapsed();
        if !changed {
            // Nothing new: the snapshot being served is current; no rebuild.
            tracing::debug!(
                fetch_ms = fetched.as_millis() as u64,
                "directory refreshed from Dataverse; nothing changed"
            );
            let skipped = self.status().skipped_rows;
            return Ok((None, skipped, as_of, generation));
        }
        let building = std::time::Instant::now();
        let (doc, skipped) = crate::common::off_the_workers(|| document(&state));
        drop(state);
        let directory = crate::common::off_the_workers(|| Directory::build(doc))?;
        tracing::info!(
            fetch_ms = fetched.as_millis() as u64,
            persist_ms = persisted.as_millis() as u64,
            build_ms = building.elapsed().as_millis() as u64,
            replica_rows_written = written,
            skipped,
            "directory refreshed from Dataverse"
        );
        Ok((Some(directory), skipped, as_of, generation))
    }

    /// Applies one table's fetched changes to memory and to the replica's change list.
    /// Returns whether the table's rows changed.
    fn apply<T>(
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

    fn api(&self, path: &str) -> String {
        format!("{}{}{}", self.settings.url, self.settings.api_path, path)
    }

    /// One page, waiting out throttling: a 429 or 503 with `Retry-After` (up to a minute) is
    /// tried again, at most three times, so one busy moment does not fail a whole refresh.
    async fn get(
        &self,
        set: &str,
        url: &str,
        track: bool,
    ) -> Result<Map<String, Value>, SourceError> {
        // The token goes only to the environment, never to a host a link names.
        if !url.starts_with(&format!("{}/", self.settings.url)) {
            return Err(SourceError::Malformed {
                set: set.to_owned(),
                message: "a link points outside the Dataverse environment".into(),
            });
        }
        let mut attempt = 0;
        loop {
            match self.get_once(set, url, track).await {
                Err(SourceError::Throttled { wait, .. }) if attempt < 3 => {
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                }
                Err(SourceError::Throttled { set, status, .. }) => {
                    return Err(SourceError::Unreachable(format!("HTTP {status} for {set}")));
                }
                other => return other,
            }
        }
    }

    async fn get_once(
        &self,
        set: &str,
        url: &str,
        track: bool,
    ) -> Result<Map<String, Value>, SourceError> {
        let mut prefer = format!(
            "odata.maxpagesize={}, odata.include-annotations=\"{}\"",
            self.settings.page_size,
            tables::LOOKUP_ANNOTATION.trim_start_matches('@')
        );
        if track {
            prefer.push_str(", odata.track-changes");
        }
        let mut request = self
            .http
            .get(url)
            .header("OData-MaxVersion", "4.0")
            .header("OData-Version", "4.0")
            .header("Accept", "application/json")
            .header("Prefer", prefer)
            .timeout(self.settings.request_timeout);
        if let Some(tokens) = &self.tokens {
            let token = tokens
                .token()
                .await
                .map_err(|e| SourceError::Unreachable(e.to_string()))?;
            request = request.bearer_auth(token);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| SourceError::Unreachable(describe(&e)))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 60.0);
        if let (429 | 503, Some(seconds)) = (status, retry_after) {
            return Err(SourceError::Throttled {
                set: set.to_owned(),
                status,
                wait: Duration::from_secs_f64(seconds),
            });
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_PAGE_BYTES {
                        return Err(SourceError::Malformed {
                            set: set.to_owned(),
                            message: format!("a page is larger than {MAX_PAGE_BYTES} bytes"),
                        });
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(SourceError::Unreachable(describe(&e))),
            }
        }
        if status == 410 {
            return Err(SourceError::Expired(set.to_owned()));
        }
        if status == 401
            && let Some(tokens) = &self.tokens
        {
            tokens.invalidate().await;
        }
        if !(200..300).contains(&status) {
            // Only Dataverse's error code: its message may quote the request's values.
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.pointer("/error/code")?.as_str().map(str::to_owned))
                .map(|code| format!("error code {code}"))
                .unwrap_or_else(|| "no readable error".into());
            return Err(if matches!(status, 429 | 502..=504) {
                SourceError::Unreachable(format!("HTTP {status} for {set}"))
            } else {
                SourceError::Status {
                    set: set.to_owned(),
                    status,
                    message,
                }
            });
        }
        serde_json::from_slice(&body).map_err(|e| SourceError::Malformed {
            set: set.to_owned(),
            message: e.to_string(),
        })
    }

    /// Follows the pages from `url`, handing each page's rows to `rows`; returns the deleted
    /// ids and the delta link.
    async fn pages(
        &self,
        set: &str,
        mut url: String,
        track: bool,
        mut rows: impl FnMut(&Map<String, Value>) -> Result<(), SourceError>,
    ) -> Result<(Vec<Uuid>, Option<String>), SourceError> {
        let mut deleted = Vec::new();
        let mut count = 0usize;
        for _ in 0..MAX_PAGES {
            let page = self.get(set, &url, track).await?;
            if let Some(Value::Array(values)) = page.get("value") {
                for value in values {
                    let Some(row) = value.as_object() else {
                        continue;
                    };
                    let removed = row
                        .get("@odata.context")
                        .and_then(Value::as_str)
                        .is_some_and(|c| c.ends_with("$deletedEntity"));
                    if removed {
                        if let Some(id) = row
                            .get("id")
                            .and_then(Value::as_str)
                            .and_then(|t| Uuid::parse_str(t).ok())
                        {
                            deleted.push(id);
                        }
                        continue;
                    }
                    count += 1;
                    if count > self.settings.max_rows {
                        return Err(SourceError::Malformed {
                            set: set.to_owned(),
                            message: format!(
                                "more than {} rows (directory.dataverse.max_rows)",
                                self.settings.max_rows
                            ),
                        });
                    }
                    rows(row)?;
                }
            }
            let link = |name: &str| {
                page.get(name)
                    .and_then(Value::as_str)
                    .map(|l| self.absolute(l))
            };
            if let Some(next) = link("@odata.nextLink") {
                url = next;
                continue;
            }
            return Ok((deleted, link("@odata.deltaLink")));
        }
        Err(SourceError::Malformed {
            set: set.to_owned(),
            message: format!("more than {MAX_PAGES} pages"),
        })
    }

    /// Dataverse answers with absolute links; a path is taken relative to the environment.
    fn absolute(&self, link: &str) -> String {
        if link.starts_with("http://") || link.starts_with("https://") {
            link.to_owned()
        } else {
            format!("{}{}", self.settings.url, link)
        }
    }

    async fn fetch_organization(&self) -> Result<Organization, SourceError> {
        let spec = tables::ORGANIZATIONS;
        let url = self.api(&format!("/organizations?$select={}", spec.select()));
        let mut found = None;
        self.pages(spec.set, url, false, |row| {
            if found.is_none() {
                found = Some(spec.parse::<Organization>(row).map_err(|message| {
                    // serde's text can quote column values: only at debug.
                    tracing::debug!(%message, "organization row not read");
                    SourceError::Malformed {
                        set: spec.set.into(),
                        message: "the organization row has a column of an unexpected type".into(),
                    }
                })?);
            }
            Ok(())
        })
        .await?;
        found.ok_or_else(|| SourceError::Malformed {
            set: spec.set.into(),
            message: "no organization row".into(),
        })
    }

    /// One table: by its delta link when there is one (falling back to a full load when it
    /// has expired), else whole with change tracking asked for.
    async fn pull<T: DeserializeOwned + Serialize>(
        &self,
        spec: &TableSpec,
        delta: Option<String>,
        users: &HashSet<Uuid>,
    ) -> Result<Pending<T>, SourceError> {
        let convert = |row: &Map<String, Value>| -> Option<(Uuid, T)> {
            let id = spec.id(row)?;
            match spec.parse::<T>(row) {
                Ok(t) => Some((id, t)),
                Err(message) => {
                    tracing::debug!(set = spec.set, %id, %message, "row left out");
                    None
                }
            }
        };
        self.pull_with(spec.set, &spec.select(), delta, users, convert)
            .await
    }

    async fn pull_other(
        &self,
        table: &OtherTable,
        delta: Option<String>,
        users: &HashSet<Uuid>,
    ) -> Result<Pending<EmailEnabledRecord>, SourceError> {
        self.pull_with(&table.set, &table.select().join(","), delta, users, |row| {
            table.record(row).map(|r| (r.id, r))
        })
        .await
    }

    async fn pull_with<T: Serialize>(
        &self,
        set: &str,
        select: &str,
        delta: Option<String>,
        users: &HashSet<Uuid>,
        convert: impl Fn(&Map<String, Value>) -> Option<(Uuid, T)>,
    ) -> Result<Pending<T>, SourceError> {
        let filter = self.filter(set);
        if let Some(link) = delta {
            let mut rows = Vec::new();
            match self
                .pages(set, link, true, |row| {
                    if let Some((id, bytes)) =
                        convert(row).and_then(|(id, t)| Some((id, encode(&t)?)))
                    {
                        rows.push((id, bytes, filter.keeps(row, users)));
                    }
                    Ok(())
                })
                .await
            {
                Ok((deleted, delta)) => {
                    return Ok(Pending {
                        set: set.to_owned(),
                        full: false,
                        rows,
                        deleted,
                        delta,
                        row: std::marker::PhantomData,
                    });
                }
                Err(SourceError::Expired(_)) => {
                    tracing::info!(set, "delta link expired; loading the table again");
                }
                // Dataverse may refuse an old or foreign delta token with another 4xx: one
                // whole load settles it (a failing whole load then fails the refresh).
                Err(SourceError::Status { status, .. })
                    if (400..500).contains(&status) && status != 401 && status != 429 =>
                {
                    tracing::info!(set, status, "delta link refused; loading the table again");
                }
                Err(e) => return Err(e),
            }
        }
        let mut rows = Vec::new();
        let url = self.api(&format!("/{set}?$select={select}"));
        let (_, delta) = self
            .pages(set, url, true, |row| {
                if let Some((id, bytes)) = convert(row).and_then(|(id, t)| Some((id, encode(&t)?)))
                {
                    rows.push((id, bytes, filter.keeps(row, users)));
                }
                Ok(())
            })
            .await?;
        Ok(Pending {
            set: set.to_owned(),
            full: true,
            rows,
            deleted: Vec::new(),
            delta,
            row: std::marker::PhantomData,
        })
    }

    /// Recently tracked emails: created within the window on a full load, then those modified
    /// since the previous refresh (change tracking is not asked for: the set is large and only
    /// its recent part matters).
    async fn pull_emails(
        &self,
        state: &State,
        users: &HashSet<Uuid>,
        started: SystemTime,
    ) -> Result<Pending<TrackedEmail>, SourceError> {
        let spec = tables::EMAILS;
        let filter = self.filter(spec.set);
        let (full, condition) = match &state.emails_since {
            Some(since) => {
                let since = parse_time(since)
                    .map(|t| before(t, EMAIL_OVERLAP))
                    .unwrap_or_else(|| before(started, self.settings.emails_window));
                (
                    false,
                    format!("modifiedon ge {}", humantime::format_rfc3339_seconds(since)),
                )
            }
            None => {
                let from = before(started, self.settings.emails_window);
                (
                    true,
                    format!("createdon ge {}", humantime::format_rfc3339_seconds(from)),
                )
            }
        };
        let url = self.api(&format!(
            "/emails?$select={}&$filter={}&$expand=email_activity_parties($select=addressused)",
            spec.select(),
            condition.replace(' ', "%20")
        ));
        let mut rows = Vec::new();
        self.pages(spec.set, url, false, |row| {
            let Some(id) = spec.id(row) else {
                return Ok(());
            };
            let Ok(mut email) = spec.parse::<TrackedEmail>(row) else {
                return Ok(());
            };
            if let Some(Value::Array(parties)) = row.get("email_activity_parties") {
                email.addresses = parties
                    .iter()
                    .filter_map(|p| p.get("addressused").and_then(Value::as_str))
                    .filter(|a| !a.is_empty())
                    .map(str::to_lowercase)
                    .collect();
                email.addresses.dedup();
            }
            if let Some(bytes) = encode(&email) {
                rows.push((id, bytes, filter.keeps(row, users)));
            }
            Ok(())
        })
        .await?;
        Ok(Pending {
            set: spec.set.into(),
            full,
            rows,
            deleted: Vec::new(),
            delta: None,
            row: std::marker::PhantomData,
        })
    }
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
fn forget_deltas(state: &mut State) {
    state.users.delta = None;
    state.settings.delta = None;
    state.queues.delta = None;
    state.mailboxes.delta = None;
    state.folders.delta = None;
    state.contacts.delta = None;
    state.accounts.delta = None;
    state.leads.delta = None;
    state.emails_since = None;
    for table in state.others.values_mut() {
        table.delta = None;
    }
}

/// Reads a Dataverse timestamp (`2026-05-01T10:00:00Z`).
fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text.trim().trim_end_matches('Z')).ok()
}

/// `now - window`, or the epoch for a window longer than the time since it.
fn before(now: SystemTime, window: Duration) -> SystemTime {
    // Not before the epoch: humantime formats only times after it.
    now.checked_sub(window)
        .filter(|t| *t >= SystemTime::UNIX_EPOCH)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Drops emails created before the window.
fn prune_emails(
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

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        "cannot connect".into()
    } else {
        "the connection failed".into()
    }
}

/// Loads the replica into `state`; returns when its data was fetched, or `None` when the
/// replica is empty.
fn restore(
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
        "queues" => put(&mut state.queues, id, bytes),
        "mailboxes" => put(&mut state.mailboxes, id, bytes),
        "mailboxtrackingfolders" => put(&mut state.folders, id, bytes),
        "contacts" => put(&mut state.contacts, id, bytes),
        "accounts" => put(&mut state.accounts, id, bytes),
        "leads" => put(&mut state.leads, id, bytes),
        "emails" => put(&mut state.emails, id, bytes),
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
    for (set, table) in state.others.iter_mut() {
        table.delta = delta(set)?;
    }
    if keeps_all("emails") {
        state.emails_since = replica
            .meta("emails/since")?
            .and_then(|b| String::from_utf8(b).ok());
    }
    let as_of = replica
        .meta("as_of")?
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    Ok(Some(as_of))
}

/// The directory document of the replicated rows, with the rows that would break the
/// directory's rules left out (a Dataverse organization is not curated like a file): settings
/// of users not replicated, mailboxes of unknown owners or with a duplicate address, folder
/// rules of unknown or queue mailboxes, addresses without `@`. Returns the count left out.
fn document(state: &State) -> (DirectoryDocument, u64) {
    let mut skipped = 0u64;
    let mut organization = state.organization.clone().unwrap_or_default();
    if organization.organizationid.is_nil() {
        // An organization not yet loaded: a placeholder, with no users nothing is tracked.
        organization.organizationid = Uuid::max();
    }
    let mut systemusers: Vec<SystemUser> = state.users.decoded(&mut skipped);
    for u in &mut systemusers {
        skipped += clean(&mut u.internalemailaddress) + clean(&mut u.personalemailaddress);
    }
    let users: HashSet<Uuid> = systemusers.iter().map(|u| u.systemuserid).collect();
    let usersettingscollection: Vec<UserSettings> = state
        .settings
        .decoded(&mut skipped)
        .into_iter()
        .filter(|s| {
            let ok = users.contains(&s.systemuserid)
                && s.incomingemailfilteringmethod <= 4
                && s.autocreatecontactonpromote <= 2;
            ok || count(&mut skipped)
        })
        .collect();
    let mut queues: Vec<Queue> = state
        .queues
        .decoded(&mut skipped)
        .into_iter()
        .filter(|q| q.incomingemailfilteringmethod <= 4 || count(&mut skipped))
        .collect();
    for q in &mut queues {
        skipped += clean(&mut q.emailaddress);
    }
    let queue_ids: HashSet<Uuid> = queues.iter().map(|q| q.queueid).collect();
    let mut seen_addresses = HashSet::new();
    let mut user_mailboxes = HashSet::new();
    let mut mailbox_list: Vec<Mailbox> = state.mailboxes.decoded(&mut skipped);
    mailbox_list.sort_by_key(|m| m.mailboxid);
    for m in &mut mailbox_list {
        if m.processemailreceivedafter
            .as_deref()
            .is_some_and(|t| crate::common::time::timestamp_seconds(t).is_none())
        {
            m.processemailreceivedafter = None;
            skipped += 1;
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
            ok || count(&mut skipped)
        })
        .collect();
    let mut seen_folders = HashSet::new();
    let max_rules = organization.maxfolderbasedtrackingmappings.clamp(1, 25) as usize;
    let mut rules_per_mailbox: HashMap<Uuid, usize> = HashMap::new();
    let mut folder_list: Vec<MailboxTrackingFolder> = state.folders.decoded(&mut skipped);
    folder_list.sort_by_key(|f| f.mailboxtrackingfolderid);
    let mailboxtrackingfolders: Vec<MailboxTrackingFolder> = folder_list
        .into_iter()
        .filter(|f| {
            let ok = user_mailboxes.contains(&f.mailboxid)
                && !f.exchangefolderid.trim().is_empty()
                && f.exchangefolderid.len() <= 120
                && seen_folders.insert((f.mailboxid, f.exchangefolderid.clone()))
                && {
                    let n = rules_per_mailbox.entry(f.mailboxid).or_default();
                    *n += 1;
                    *n <= max_rules
                };
            ok || count(&mut skipped)
        })
        .collect();
    macro_rules! records {
        ($table:expr) => {{
            let mut rows: Vec<_> = $table.decoded(&mut skipped);
            for r in &mut rows {
                skipped += clean(&mut r.emailaddress1)
                    + clean(&mut r.emailaddress2)
                    + clean(&mut r.emailaddress3);
            }
            rows
        }};
    }
    let contacts: Vec<Contact> = records!(state.contacts);
    let accounts: Vec<Account> = records!(state.accounts);
    let leads: Vec<Lead> = records!(state.leads);
    let mut emailenabledrecords: Vec<EmailEnabledRecord> = Vec::new();
    for table in state.others.values() {
        for mut r in table.decoded(&mut skipped) {
            let before = r.emailaddresses.len();
            r.emailaddresses.retain(|a| a.contains('@'));
            skipped += (before - r.emailaddresses.len()) as u64;
            emailenabledrecords.push(r);
        }
    }
    // A token with a prefix the organization no longer lists (after a prefix change) is left
    // out; the email still correlates by Message-ID and conversation.
    let prefixes = super::snapshot::token_prefixes(&organization.trackingprefix);
    let mut emails: Vec<TrackedEmail> = state.emails.decoded(&mut skipped);
    for e in &mut emails {
        if e.trackingtoken
            .as_deref()
            .is_some_and(|t| super::snapshot::tracking_token(&prefixes, t).is_none())
        {
            e.trackingtoken = None;
            skipped += 1;
        }
    }
    let doc = DirectoryDocument {
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
    };
    (doc, skipped)
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
    Directory::build(document(&State::default()).0)
}

/// Refreshes once and swaps the result in (unless a later refresh already did); on failure
/// the current snapshot stays.
pub async fn refresh_now(
    source: &DataverseSource,
    handle: &super::DirectoryHandle,
    metrics: &super::DirectoryMetrics,
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
                tracing::info!(counts = ?directory.counts(), "directory snapshot swapped");
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
    handle: super::DirectoryHandle,
    metrics: std::sync::Arc<super::DirectoryMetrics>,
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

    #[tokio::test]
    async fn the_interval_is_the_configured_or_users_one_never_below_the_org_minimum() {
        let dir = tempfile::tempdir().unwrap();
        let settings = |interval: Option<Duration>| DataverseSourceSettings {
            url: "http://127.0.0.1:9".into(),
            api_path: "/api/data/v9.2".into(),
            credentials: None,
            page_size: 10,
            refresh_interval: interval,
            request_timeout: Duration::from_secs(1),
            emails_window: Duration::from_secs(86_400),
            offline_filters: HashMap::new(),
            other_tables: Vec::new(),
            replica_file: dir.path().join(format!("{interval:?}.redb")),
            max_rows: 1000,
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

    #[test]
    fn offline_filters_keep_owned_matching_all_or_nothing() {
        let alex = Uuid::from_u128(1);
        let users: HashSet<Uuid> = [alex].into();
        let row = |owner: Uuid, state: u8| {
            serde_json::json!({"_ownerid_value": owner.to_string(), "statecode": state})
                .as_object()
                .cloned()
                .unwrap_or_default()
        };
        let owned = OfflineFilter::parse("owned").unwrap();
        assert!(owned.keeps(&row(alex, 0), &users));
        assert!(!owned.keeps(&row(Uuid::from_u128(2), 0), &users));
        let active = OfflineFilter::parse("statecode eq 0").unwrap();
        assert!(active.keeps(&row(Uuid::from_u128(2), 0), &users));
        assert!(!active.keeps(&row(alex, 1), &users));
        assert!(
            OfflineFilter::parse("all")
                .unwrap()
                .keeps(&row(alex, 1), &users)
        );
        assert!(
            !OfflineFilter::parse("none")
                .unwrap()
                .keeps(&row(alex, 0), &users)
        );
        assert!(OfflineFilter::parse("statecode eq").is_err());
    }
}
