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
use crate::oauth::{ClientCredentials, TokenSource};

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
    #[error("the replicated directory is not valid: {0}")]
    Invalid(#[from] InvalidDirectory),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

/// One table's rows and where change tracking left off.
#[derive(Debug)]
struct Table<T> {
    rows: HashMap<Uuid, T>,
    delta: Option<String>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            rows: HashMap::new(),
            delta: None,
        }
    }
}

/// What one refresh fetched for a table, applied only when every table was fetched.
struct Pending<T> {
    set: String,
    full: bool,
    /// The row, and whether the offline filter keeps it.
    rows: Vec<(Uuid, T, bool)>,
    deleted: Vec<Uuid>,
    delta: Option<String>,
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
}

impl SourceStatus {
    /// Seconds since the served data was fetched.
    pub fn staleness_seconds(&self) -> Option<u64> {
        let now = unix_now();
        self.data_as_of.map(|t| now.saturating_sub(t))
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
        let mut status = SourceStatus::default();
        let restored = restore(&replica, &settings, &mut state)?;
        let directory = match restored {
            Some(as_of) => {
                let (doc, skipped) = document(&state);
                status.data_as_of = Some(as_of);
                status.from_replica = true;
                status.skipped_rows = skipped;
                Some(Directory::build(doc)?)
            }
            None => None,
        };
        Ok((
            DataverseSource {
                http,
                settings,
                tokens,
                replica,
                state: tokio::sync::Mutex::new(state),
                status: Mutex::new(status),
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
                .rows
                .values()
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
        self.settings
            .offline_filters
            .get(set)
            .cloned()
            .unwrap_or_else(|| default_offline_filter(set))
    }

    /// Fetches every table, applies the changes, persists them and builds the new snapshot.
    /// On any error nothing changes (and the error is recorded in the status).
    pub async fn refresh(&self) -> Result<Directory, SourceError> {
        let result = self.refresh_inner().await;
        if let Ok(mut status) = self.status.lock() {
            match &result {
                Ok((_, skipped, as_of)) => {
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
        result.map(|(d, _, _)| d)
    }

    async fn refresh_inner(&self) -> Result<(Directory, u64, u64), SourceError> {
        let mut state = self.state.lock().await;
        let started = SystemTime::now();
        let organization = self.fetch_organization().await?;
        let users = self
            .pull(&tables::SYSTEMUSERS, &state.users, &HashSet::new())
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
        let settings = self
            .pull(&tables::USERSETTINGS, &state.settings, &user_ids)
            .await?;
        let queues = self.pull(&tables::QUEUES, &state.queues, &user_ids).await?;
        let mailboxes = self
            .pull(&tables::MAILBOXES, &state.mailboxes, &user_ids)
            .await?;
        let folders = self
            .pull(&tables::FOLDERS, &state.folders, &user_ids)
            .await?;
        let contacts = self
            .pull(&tables::CONTACTS, &state.contacts, &user_ids)
            .await?;
        let accounts = self
            .pull(&tables::ACCOUNTS, &state.accounts, &user_ids)
            .await?;
        let leads = self.pull(&tables::LEADS, &state.leads, &user_ids).await?;
        let mut others = Vec::new();
        for table in &self.settings.other_tables {
            let current = state.others.get(&table.set);
            others.push(self.pull_other(table, current, &user_ids).await?);
        }
        let emails = self.pull_emails(&state, &user_ids, started).await?;

        // Everything arrived: apply, persist, build.
        let mut changes = ReplicaChanges::default();
        let org_bytes = serde_json::to_vec(&organization).ok();
        changes.meta.push(("organization".into(), org_bytes));
        state.organization = Some(organization);
        self.apply(&mut state.users, users, &mut changes);
        self.apply(&mut state.settings, settings, &mut changes);
        self.apply(&mut state.queues, queues, &mut changes);
        self.apply(&mut state.mailboxes, mailboxes, &mut changes);
        self.apply(&mut state.folders, folders, &mut changes);
        self.apply(&mut state.contacts, contacts, &mut changes);
        self.apply(&mut state.accounts, accounts, &mut changes);
        self.apply(&mut state.leads, leads, &mut changes);
        for pending in others {
            let table = state.others.entry(pending.set.clone()).or_default();
            self.apply(table, pending, &mut changes);
        }
        self.apply(&mut state.emails, emails, &mut changes);
        let since = humantime::format_rfc3339_seconds(started).to_string();
        prune_emails(
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
        let (doc, skipped) = crate::off_the_workers(|| document(&state));
        drop(state);
        let directory = crate::off_the_workers(|| Directory::build(doc))?;
        crate::off_the_workers(|| self.replica.commit(changes))?;
        Ok((directory, skipped, as_of))
    }

    /// Applies one table's fetched changes to memory and to the replica's change list.
    fn apply<T: Serialize>(
        &self,
        table: &mut Table<T>,
        pending: Pending<T>,
        changes: &mut ReplicaChanges,
    ) {
        if pending.full {
            table.rows.clear();
            changes.replaced.push(pending.set.clone());
        }
        for id in pending.deleted {
            table.rows.remove(&id);
            changes.deletes.push((pending.set.clone(), id));
        }
        for (id, row, keep) in pending.rows {
            if keep {
                if let Ok(bytes) = serde_json::to_vec(&row) {
                    changes.upserts.push((pending.set.clone(), id, bytes));
                }
            } else if !pending.full {
                changes.deletes.push((pending.set.clone(), id));
            }
            table.rows.insert(id, row);
        }
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
    }

    fn api(&self, path: &str) -> String {
        format!("{}{}{}", self.settings.url, self.settings.api_path, path)
    }

    /// One GET of the Web API: the JSON answer, or why not.
    async fn get(
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
            let message: String = String::from_utf8_lossy(&body).chars().take(300).collect();
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
                    SourceError::Malformed {
                        set: spec.set.into(),
                        message,
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
    async fn pull<T: DeserializeOwned>(
        &self,
        spec: &TableSpec,
        current: &Table<T>,
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
        self.pull_with(
            spec.set,
            &spec.select(),
            current.delta.clone(),
            users,
            convert,
        )
        .await
    }

    async fn pull_other(
        &self,
        table: &OtherTable,
        current: Option<&Table<EmailEnabledRecord>>,
        users: &HashSet<Uuid>,
    ) -> Result<Pending<EmailEnabledRecord>, SourceError> {
        let delta = current.and_then(|t| t.delta.clone());
        self.pull_with(&table.set, &table.select().join(","), delta, users, |row| {
            table.record(row).map(|r| (r.id, r))
        })
        .await
    }

    async fn pull_with<T>(
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
                    if let Some((id, t)) = convert(row) {
                        rows.push((id, t, filter.keeps(row, users)));
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
                    });
                }
                Err(SourceError::Expired(_)) => {
                    tracing::info!(set, "delta link expired; loading the table again");
                }
                Err(e) => return Err(e),
            }
        }
        let mut rows = Vec::new();
        let url = self.api(&format!("/{set}?$select={select}"));
        let (_, delta) = self
            .pages(set, url, true, |row| {
                if let Some((id, t)) = convert(row) {
                    rows.push((id, t, filter.keeps(row, users)));
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
                let since = humantime::parse_rfc3339_weak(since)
                    .ok()
                    .map(|t| t - EMAIL_OVERLAP)
                    .unwrap_or(started - self.settings.emails_window);
                (
                    false,
                    format!("modifiedon ge {}", humantime::format_rfc3339_seconds(since)),
                )
            }
            None => {
                let from = started - self.settings.emails_window;
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
            rows.push((id, email, filter.keeps(row, users)));
            Ok(())
        })
        .await?;
        Ok(Pending {
            set: spec.set.into(),
            full,
            rows,
            deleted: Vec::new(),
            delta: None,
        })
    }
}

/// Drops emails created before the window.
fn prune_emails(
    emails: &mut Table<TrackedEmail>,
    now: SystemTime,
    window: Duration,
    changes: &mut ReplicaChanges,
) {
    let cutoff = now - window;
    emails.rows.retain(|id, email| {
        let old = email
            .createdon
            .as_deref()
            .and_then(|c| humantime::parse_rfc3339_weak(c.trim_end_matches('Z')).ok())
            .is_some_and(|t| t < cutoff);
        if old {
            changes.deletes.push(("emails".into(), *id));
        }
        !old
    });
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
    state.organization = serde_json::from_slice(&organization).ok();
    fn put<T: DeserializeOwned>(table: &mut Table<T>, id: Uuid, bytes: &[u8]) {
        if let Ok(row) = serde_json::from_slice(bytes) {
            table.rows.insert(id, row);
        }
    }
    let others: HashMap<&str, &OtherTable> = settings
        .other_tables
        .iter()
        .map(|t| (t.set.as_str(), t))
        .collect();
    replica.for_each_row(|set, id, bytes| match set {
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
    // A delta link continues only a table kept whole; a filtered one is loaded again.
    let keeps_all = |set: &str| {
        matches!(
            settings
                .offline_filters
                .get(set)
                .cloned()
                .unwrap_or_else(|| default_offline_filter(set)),
            OfflineFilter::All
        )
    };
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
    let users = &state.users.rows;
    let mut systemusers: Vec<SystemUser> = users.values().cloned().collect();
    for u in &mut systemusers {
        skipped += clean(&mut u.internalemailaddress) + clean(&mut u.personalemailaddress);
    }
    let usersettingscollection: Vec<UserSettings> = state
        .settings
        .rows
        .values()
        .filter(|s| users.contains_key(&s.systemuserid) || count(&mut skipped))
        .cloned()
        .collect();
    let mut queues: Vec<Queue> = state.queues.rows.values().cloned().collect();
    for q in &mut queues {
        skipped += clean(&mut q.emailaddress);
    }
    let queue_ids: HashSet<Uuid> = queues.iter().map(|q| q.queueid).collect();
    let mut seen_addresses = HashSet::new();
    let mut user_mailboxes = HashSet::new();
    let mut mailbox_list: Vec<&Mailbox> = state.mailboxes.rows.values().collect();
    mailbox_list.sort_by_key(|m| m.mailboxid);
    let mailboxes: Vec<Mailbox> = mailbox_list
        .into_iter()
        .filter(|m| {
            let owner_known = match m.regardingobjectid.entity.as_ref() {
                "systemuser" => users.contains_key(&m.regardingobjectid.id),
                "queue" => queue_ids.contains(&m.regardingobjectid.id),
                _ => false,
            };
            let ok = owner_known
                && m.emailaddress.contains('@')
                && seen_addresses.insert(m.emailaddress.to_lowercase());
            if ok && m.regardingobjectid.entity == "systemuser" {
                user_mailboxes.insert(m.mailboxid);
            }
            ok || count(&mut skipped)
        })
        .cloned()
        .collect();
    let mut seen_folders = HashSet::new();
    let mut folder_list: Vec<&MailboxTrackingFolder> = state.folders.rows.values().collect();
    folder_list.sort_by_key(|f| f.mailboxtrackingfolderid);
    let mailboxtrackingfolders: Vec<MailboxTrackingFolder> = folder_list
        .into_iter()
        .filter(|f| {
            let ok = user_mailboxes.contains(&f.mailboxid)
                && (1..=120).contains(&f.exchangefolderid.len())
                && seen_folders.insert((f.mailboxid, f.exchangefolderid.clone()));
            ok || count(&mut skipped)
        })
        .cloned()
        .collect();
    macro_rules! records {
        ($table:expr) => {{
            let mut rows: Vec<_> = $table.rows.values().cloned().collect();
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
        for r in table.rows.values() {
            let mut r = r.clone();
            let before = r.emailaddresses.len();
            r.emailaddresses.retain(|a| a.contains('@'));
            skipped += (before - r.emailaddresses.len()) as u64;
            emailenabledrecords.push(r);
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
        emails: state.emails.rows.values().cloned().collect(),
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

/// Refreshes once and swaps the result in; on failure the current snapshot stays.
pub async fn refresh_now(
    source: &DataverseSource,
    handle: &super::DirectoryHandle,
    metrics: &super::DirectoryMetrics,
) -> Result<(), SourceError> {
    let result = source.refresh().await;
    metrics.source_status(&source.status());
    match result {
        Ok(directory) => {
            metrics.loaded(&directory);
            tracing::info!(counts = ?directory.counts(), "directory refreshed from Dataverse");
            handle.swap(directory);
            Ok(())
        }
        Err(error) => {
            metrics.failed();
            tracing::warn!(%error, "directory refresh failed; keeping the last snapshot");
            Err(error)
        }
    }
}

/// Refreshes every interval (or at once when `trigger` fires) until `stop`, and keeps the
/// staleness gauge current between refreshes.
pub async fn keep_fresh(
    source: std::sync::Arc<DataverseSource>,
    handle: super::DirectoryHandle,
    metrics: std::sync::Arc<super::DirectoryMetrics>,
    trigger: std::sync::Arc<tokio::sync::Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut next = tokio::time::Instant::now() + source.interval().await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = trigger.notified() => {}
            _ = tick.tick() => {
                metrics.source_status(&source.status());
                if tokio::time::Instant::now() < next {
                    continue;
                }
            }
        }
        let _ = refresh_now(&source, &handle, &metrics).await;
        next = tokio::time::Instant::now() + source.interval().await;
    }
}
