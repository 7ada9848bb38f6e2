//! `[directory.dataverse]`: the Dataverse directory source (refresh, paging, the replica and
//! its offline filters, extra e-mail-enabled tables). The connection itself is
//! `[crm.dataverse]`'s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::delivery::{RawDataverse, dataverse_connection};
use super::{ConfigError, at_least, positive};
use crate::directory::dataverse::{DataverseSourceSettings, OfflineFilter, has_owner};
use crate::directory::tables::{OtherTable, TABLES, entity_set};

/// Where the directory comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DirectorySourceKind {
    /// `directory.file`, or the embedded example.
    #[default]
    File,
    /// The organization in `[crm.dataverse]`, replicated and refreshed.
    Dataverse,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDataverseDirectory {
    /// Unset: the shortest "update local data every" among the users, or 15 minutes. Never
    /// below the organization's `minofflinesyncinterval`.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Option<Duration>,
    /// Rows per page (`Prefer: odata.maxpagesize`).
    pub page_size: u32,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long the start waits for the first load before serving the replica (or nothing).
    #[serde(with = "humantime_serde")]
    pub startup_wait: Duration,
    /// How far back tracked emails are replicated for correlation.
    #[serde(with = "humantime_serde")]
    pub emails_window: Duration,
    /// The replica file (default: `directory.redb` in the data directory).
    pub replica_file: Option<PathBuf>,
    /// Rows per table at most.
    pub max_rows: usize,
    /// Per entity set: `all`, `owned`, `none` or an OData `$filter` expression.
    pub offline_filters: BTreeMap<String, String>,
    /// More e-mail-enabled tables whose addresses resolve senders and recipients.
    pub tables: Vec<RawOtherTable>,
}

impl Default for RawDataverseDirectory {
    fn default() -> Self {
        RawDataverseDirectory {
            refresh_interval: None,
            page_size: 5000,
            request_timeout: Duration::from_secs(60),
            startup_wait: Duration::from_secs(30),
            emails_window: Duration::from_secs(30 * 86_400),
            replica_file: None,
            max_rows: 5_000_000,
            offline_filters: BTreeMap::new(),
            tables: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawOtherTable {
    /// Logical name, e.g. `new_vendor`.
    pub entity: String,
    /// Entity set (default: the plural of `entity`).
    #[serde(default)]
    pub set: Option<String>,
    /// Primary key column (default: `<entity>id`).
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    pub addresses: Vec<String>,
    /// Whether rows have `ownerid` and `statecode`.
    #[serde(default = "yes")]
    pub owned: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone)]
pub struct DataverseDirectoryConfig {
    pub source: DataverseSourceSettings,
    pub startup_wait: Duration,
}

fn column_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{name:?} is not a logical name"),
            "use the lowercase logical name from the table's definition, e.g. new_vendor",
        ))
    }
}

pub(super) fn validate(
    d: &RawDataverseDirectory,
    crm: &RawDataverse,
    data_dir: &Path,
    anchor: &dyn Fn(&Path) -> PathBuf,
) -> Result<DataverseDirectoryConfig, ConfigError> {
    let connection = dataverse_connection(crm)?;
    if let Some(interval) = d.refresh_interval
        && !(Duration::from_secs(1)..=Duration::from_secs(7 * 86_400)).contains(&interval)
    {
        return Err(ConfigError::invalid(
            "directory.dataverse.refresh_interval",
            "is outside 1s..=7d",
            "use minutes, e.g. \"15m\" (the organization's minimum applies anyway)",
        ));
    }
    for (key, d) in [
        ("directory.dataverse.request_timeout", d.request_timeout),
        ("directory.dataverse.startup_wait", d.startup_wait),
    ] {
        if d > Duration::from_secs(3600) {
            return Err(ConfigError::invalid(
                key,
                "is over 1h",
                "use seconds, e.g. \"30s\"",
            ));
        }
    }
    if !(1..=5000).contains(&d.page_size) {
        return Err(ConfigError::invalid(
            "directory.dataverse.page_size",
            format!("{} is outside 1..=5000", d.page_size),
            "use 5000, Dataverse's largest page",
        ));
    }
    positive("directory.dataverse.request_timeout", d.request_timeout)?;
    positive("directory.dataverse.emails_window", d.emails_window)?;
    if d.emails_window > Duration::from_secs(3650 * 86_400) {
        return Err(ConfigError::invalid(
            "directory.dataverse.emails_window",
            "is over 10 years",
            "use days, e.g. \"30d\"",
        ));
    }
    at_least("directory.dataverse.max_rows", d.max_rows as u64, 1000)?;
    let mut other_tables = Vec::new();
    for (i, t) in d.tables.iter().enumerate() {
        let key = |k: &str| format!("directory.dataverse.tables[{i}].{k}");
        column_name(&key("entity"), &t.entity)?;
        let set = t.set.clone().unwrap_or_else(|| entity_set(&t.entity));
        column_name(&key("set"), &set)?;
        if TABLES.iter().any(|s| s.set == set) {
            return Err(ConfigError::invalid(
                &key("set"),
                format!("{set} is replicated already"),
                "list only tables other than contacts, accounts, leads and the fixed ones",
            ));
        }
        let id = t.key.clone().unwrap_or_else(|| format!("{}id", t.entity));
        column_name(&key("key"), &id)?;
        if let Some(n) = &t.name {
            column_name(&key("name"), n)?;
        }
        if t.addresses.is_empty() {
            return Err(ConfigError::invalid(
                &key("addresses"),
                "is empty",
                "list the table's e-mail columns, e.g. [\"emailaddress\"]",
            ));
        }
        for a in &t.addresses {
            column_name(&key("addresses"), a)?;
        }
        other_tables.push(OtherTable {
            entity: t.entity.clone(),
            set,
            key: id,
            name: t.name.clone(),
            addresses: t.addresses.clone(),
            owned: t.owned,
        });
    }
    let mut offline_filters = std::collections::HashMap::new();
    for (set, text) in &d.offline_filters {
        let key = format!("directory.dataverse.offline_filters.{set}");
        let known =
            TABLES.iter().any(|s| s.set == set) || other_tables.iter().any(|t| &t.set == set);
        if !known {
            return Err(ConfigError::invalid(
                &key,
                "names no replicated table",
                "use an entity set such as contacts, accounts, leads, emails, queues, or one listed in [[directory.dataverse.tables]]",
            ));
        }
        let filter = OfflineFilter::parse(text).map_err(|e| {
            ConfigError::invalid(
                &key,
                e.to_string(),
                "write all, owned, none, or an OData filter such as \"statecode eq 0\"",
            )
        })?;
        // A filter can read only the columns replicated for its table.
        if let OfflineFilter::Matching(f) = &filter {
            let columns: Vec<String> = match TABLES.iter().find(|s| s.set == set) {
                Some(spec) => spec.fields.iter().map(|f| f.wire()).collect(),
                None => other_tables
                    .iter()
                    .find(|t| &t.set == set)
                    .map(OtherTable::select)
                    .unwrap_or_default(),
            };
            if let Some(missing) = f
                .columns()
                .into_iter()
                .find(|c| !columns.iter().any(|k| k == c))
            {
                return Err(ConfigError::invalid(
                    &key,
                    format!("reads `{missing}`, which is not replicated for {set}"),
                    format!("use one of: {}", columns.join(", ")),
                ));
            }
        }
        let owned_ok = has_owner(set) || other_tables.iter().any(|t| &t.set == set && t.owned);
        if matches!(filter, OfflineFilter::Owned) && !owned_ok {
            return Err(ConfigError::invalid(
                &key,
                "this table has no owner",
                "use all, none or a filter",
            ));
        }
        if set == "organizations" && !matches!(filter, OfflineFilter::All) {
            return Err(ConfigError::invalid(
                &key,
                "the organization row is always kept",
                "remove the entry",
            ));
        }
        offline_filters.insert(set.clone(), filter);
    }
    for t in &other_tables {
        if !t.owned && !offline_filters.contains_key(&t.set) {
            // `owned` cannot apply to a table without an owner: keep it whole.
            offline_filters.insert(t.set.clone(), OfflineFilter::All);
        }
    }
    Ok(DataverseDirectoryConfig {
        source: DataverseSourceSettings {
            url: connection.url,
            api_path: connection.api_path,
            credentials: connection.credentials,
            page_size: d.page_size,
            refresh_interval: d.refresh_interval,
            request_timeout: d.request_timeout,
            emails_window: d.emails_window,
            offline_filters,
            other_tables,
            replica_file: d
                .replica_file
                .as_deref()
                .map(anchor)
                .unwrap_or_else(|| data_dir.join("directory.redb")),
            max_rows: d.max_rows,
        },
        startup_wait: d.startup_wait,
    })
}
