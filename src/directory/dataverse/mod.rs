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
//!
//! This module owns the public surface (settings, offline filters, errors, status, opening the
//! source); `client` talks to the Web API, `delta` keeps the tables, their delta links and the
//! replica, `rows` turns the rows into a directory document, `refresh` runs and schedules the
//! refreshes.

mod client;
mod delta;
mod refresh;
mod rows;
mod write;

pub use write::{NewTrackingFolder, OptionsWrite};

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use self::delta::{State, restore};
use self::rows::document;
use crate::common::ClientCredentials;
use crate::directory::model::DirectoryDocument;
use crate::directory::odata::{Filter, FilterError};
use crate::directory::replica::{Replica, ReplicaError};
use crate::directory::settings::DirectorySettings;
use crate::directory::snapshot::{Directory, InvalidDirectory};
use crate::directory::tables::OtherTable;
use crate::oauth::TokenSource;

pub use self::refresh::{keep_fresh, refresh_now};
pub use self::rows::empty_directory;

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
    pub fn parse(text: &str) -> Result<OfflineFilter, FilterError> {
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
    /// Refresh at least this often whatever the above says (synchronisation's interval).
    pub at_least_every: Option<Duration>,
    pub request_timeout: Duration,
    /// How far back tracked emails are replicated for correlation.
    pub emails_window: Duration,
    /// Per entity set; a set not named keeps the default ([`default_offline_filter`]).
    pub offline_filters: HashMap<String, OfflineFilter>,
    pub other_tables: Vec<OtherTable>,
    pub replica_file: PathBuf,
    /// Rows replicated per table at most (a bound on memory).
    pub max_rows: usize,
    /// How each snapshot indexes sign-in names.
    pub directory: DirectorySettings,
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
        // The Outlook filters among the saved views.
        "userqueries" => Filter::parse("querytype eq 256")
            .map(OfflineFilter::Matching)
            .unwrap_or(OfflineFilter::All),
        // The Outlook filter templates among the system views.
        "savedqueries" => Filter::parse("querytype eq 131072")
            .map(OfflineFilter::Matching)
            .unwrap_or(OfflineFilter::All),
        _ => OfflineFilter::Owned,
    }
}

/// Tables whose rows have an owner (where `owned` makes sense).
pub fn has_owner(set: &str) -> bool {
    matches!(
        set,
        "queues"
            | "contacts"
            | "accounts"
            | "leads"
            | "emails"
            | "appointments"
            | "tasks"
            | "phonecalls"
            | "faxes"
            | "letters"
    )
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
                let (doc, skipped) = document(&state, false);
                match Directory::build_with(doc, &settings.directory) {
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

    /// The directory as last refreshed, as a document: what one gateway of a fleet shares with
    /// the others so that only it spends Dataverse's request budget.
    pub async fn document(&self) -> DirectoryDocument {
        let state = self.state.lock().await;
        document(&state, true).0
    }

    /// A snapshot of what was last refreshed, built again: after a change to what the
    /// settings' overlay lays over it.
    pub async fn rebuild(&self) -> Result<Directory, SourceError> {
        let doc = {
            let state = self.state.lock().await;
            document(&state, false).0
        };
        Ok(Directory::build_with(doc, &self.settings.directory)?)
    }

    /// A snapshot from a document another gateway shared, built with this source's settings.
    pub fn build_shared(&self, doc: DirectoryDocument) -> Result<Directory, SourceError> {
        let directory = Directory::build_with(doc, &self.settings.directory)?;
        if let Ok(mut status) = self.status.lock() {
            status.data_as_of = Some(unix_now());
            status.from_replica = false;
            status.last_error = None;
        }
        Ok(directory)
    }

    fn filter(&self, set: &str) -> OfflineFilter {
        self.settings.offline_filter(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
