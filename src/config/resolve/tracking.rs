//! The sections the tracking decisions read: `[inspect]`, `[directory]` (with
//! `[directory.dataverse]`), `[identity]` and `[rules]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::delivery::{DataverseConnection, dataverse_connection};
use super::{at_least, positive, readable_file};
use crate::common::ByteSize;
use crate::config::ConfigError;
use crate::config::raw::{
    DirectorySourceKind, RawDataverse, RawDataverseDirectory, RawDirectory, RawIdentity,
    RawInspect, RawRules,
};

#[derive(Debug, Clone)]
pub struct InspectConfig {
    pub enabled: bool,
    pub capture_limit: usize,
    /// Per worker.
    pub queue: usize,
    /// Inspection threads; `None`: one per available core but one (the composition root asks
    /// the system), at least one.
    pub workers: Option<usize>,
    pub memory_budget: u64,
    pub decoded_limit: usize,
    pub max_ratio: usize,
    pub xml_max_depth: usize,
    pub xml_max_elements: usize,
}

#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    /// Set when the directory comes from Dataverse (then `file` is unset).
    pub dataverse: Option<DataverseDirectoryConfig>,
    pub file: Option<PathBuf>,
    pub poll_interval: Duration,
    pub max_file_size: u64,
}

/// `[identity]` checked: every NetBIOS name and DNS domain plain, both lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    pub netbios_from_upn: bool,
    /// NetBIOS name → DNS domain, lower-cased.
    pub ntlm_domains: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct RulesConfig {
    pub memory: u64,
    pub tracked_memory_entries: u64,
    pub max_parties: usize,
    pub recent_decisions: usize,
}

/// `[directory.dataverse]` checked for what the configuration alone can tell; the table catalog
/// and the offline filters' meaning are the directory's to judge (`app::settings`).
#[derive(Debug, Clone)]
pub struct DataverseDirectoryConfig {
    pub connection: DataverseConnection,
    pub page_size: u32,
    pub refresh_interval: Option<Duration>,
    pub request_timeout: Duration,
    pub startup_wait: Duration,
    pub emails_window: Duration,
    pub replica_file: PathBuf,
    pub max_rows: usize,
    /// Per entity set, as written: `all`, `owned`, `none` or an OData `$filter`.
    pub offline_filters: BTreeMap<String, String>,
    pub tables: Vec<OtherTableConfig>,
}

/// One `[[directory.dataverse.tables]]` entry, its names checked as logical names.
#[derive(Debug, Clone)]
pub struct OtherTableConfig {
    pub entity: String,
    /// Unset: the plural of `entity`.
    pub set: Option<String>,
    /// The primary key column.
    pub key: String,
    pub name: Option<String>,
    pub addresses: Vec<String>,
    pub owned: bool,
}

/// More inspection threads than this is a typo, not a machine.
const MAX_INSPECT_WORKERS: usize = 256;

pub(super) fn inspect(i: &RawInspect) -> Result<InspectConfig, ConfigError> {
    at_least("inspect.capture_limit", i.capture_limit.0, 4096)?;
    at_least("inspect.queue", i.queue as u64, 1)?;
    at_least("inspect.memory_budget", i.memory_budget.0, i.capture_limit.0.saturating_mul(2))
        .map_err(|_| {
            ConfigError::invalid(
                "inspect.memory_budget",
                "is smaller than two capture_limits",
                "raise memory_budget or lower capture_limit; one exchange holds a request and a response copy",
            )
        })?;
    at_least("inspect.decoded_limit", i.decoded_limit.0, 4096)?;
    at_least("inspect.max_ratio", i.max_ratio as u64, 2)?;
    at_least("inspect.xml_max_depth", i.xml_max_depth as u64, 16)?;
    at_least("inspect.xml_max_elements", i.xml_max_elements as u64, 1000)?;
    if i.workers > MAX_INSPECT_WORKERS {
        return Err(ConfigError::invalid(
            "inspect.workers",
            format!("{} is over {MAX_INSPECT_WORKERS}", i.workers),
            "use at most the cores the gateway may use, or 0 for one per core but one",
        ));
    }
    let size = |b: ByteSize| usize::try_from(b.0).unwrap_or(usize::MAX);
    Ok(InspectConfig {
        enabled: i.enabled,
        capture_limit: size(i.capture_limit),
        queue: i.queue,
        workers: (i.workers > 0).then_some(i.workers),
        memory_budget: i.memory_budget.0,
        decoded_limit: size(i.decoded_limit),
        max_ratio: i.max_ratio,
        xml_max_depth: i.xml_max_depth,
        xml_max_elements: i.xml_max_elements,
    })
}

pub(super) fn directory(
    d: &RawDirectory,
    crm: &RawDataverse,
    data_dir: &Path,
    anchor: &dyn Fn(&Path) -> PathBuf,
) -> Result<DirectoryConfig, ConfigError> {
    if d.poll_interval < Duration::from_millis(100) {
        return Err(ConfigError::invalid(
            "directory.poll_interval",
            "is shorter than 100ms",
            "use a few seconds, e.g. \"5s\"; SIGHUP reloads at once",
        ));
    }
    at_least("directory.max_file_size", d.max_file_size.0, 1024)?;
    let file = d.file.as_deref().map(anchor);
    if let Some(f) = &file {
        readable_file("directory.file", f, "a directory file (TOML or JSON)")?;
    }
    let dataverse = match d.source {
        DirectorySourceKind::File => None,
        DirectorySourceKind::Dataverse => {
            if file.is_some() {
                return Err(ConfigError::invalid(
                    "directory.file",
                    "is set, but directory.source = \"dataverse\" reads the directory from Dataverse",
                    "remove directory.file, or set directory.source = \"file\"",
                ));
            }
            Some(dataverse_directory(&d.dataverse, crm, data_dir, anchor)?)
        }
    };
    Ok(DirectoryConfig {
        dataverse,
        file,
        poll_interval: d.poll_interval,
        max_file_size: d.max_file_size.0,
    })
}

/// The longest NetBIOS name Windows accepts.
const MAX_NETBIOS: usize = 15;

pub(super) fn identity(i: &RawIdentity) -> Result<IdentityConfig, ConfigError> {
    let mut ntlm_domains = BTreeMap::new();
    for (netbios, dns) in &i.ntlm_domains {
        let key = format!("identity.ntlm_domains.{netbios}");
        // Letters, digits, `-` and `_`: what a domain's NetBIOS name is in practice, and
        // nothing that could be mistaken for the `\` or `@` of a principal.
        let plain_netbios = (1..=MAX_NETBIOS).contains(&netbios.len())
            && netbios
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !plain_netbios {
            return Err(ConfigError::invalid(
                &key,
                format!("{netbios:?} is not a NetBIOS domain name"),
                "use the domain's NetBIOS name as Windows shows it before the `\\` (1 to 15 letters, digits, `-` or `_`), e.g. CONTOSO",
            ));
        }
        if !dns_domain(dns) {
            return Err(ConfigError::invalid(
                &key,
                format!("{dns:?} is not a DNS domain"),
                "use the DNS domain of the users' sign-in names (after the `@`), e.g. \"contoso.example\"",
            ));
        }
        if ntlm_domains
            .insert(netbios.to_ascii_lowercase(), dns.to_ascii_lowercase())
            .is_some()
        {
            return Err(ConfigError::invalid(
                &key,
                "names a NetBIOS domain listed already (names are matched case-insensitively)",
                "keep one entry per NetBIOS domain",
            ));
        }
    }
    Ok(IdentityConfig {
        netbios_from_upn: i.netbios_from_upn,
        ntlm_domains,
    })
}

/// A DNS domain as a UPN suffix is written: dot-separated labels of letters, digits and inner
/// hyphens, 253 characters at most, no trailing dot.
fn dns_domain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

pub(super) fn rules(r: &RawRules) -> Result<RulesConfig, ConfigError> {
    at_least("rules.memory", r.memory.0, 1 << 20)?;
    at_least(
        "rules.tracked_memory_entries",
        r.tracked_memory_entries,
        1000,
    )?;
    at_least("rules.max_parties", r.max_parties as u64, 1)?;
    at_least("rules.recent_decisions", r.recent_decisions as u64, 1)?;
    if r.recent_decisions > 100_000 {
        return Err(ConfigError::invalid(
            "rules.recent_decisions",
            "is over 100000",
            "keep it small; decisions are counted in /metrics",
        ));
    }
    Ok(RulesConfig {
        memory: r.memory.0,
        tracked_memory_entries: r.tracked_memory_entries,
        max_parties: r.max_parties,
        recent_decisions: r.recent_decisions,
    })
}

/// Checks a Dataverse logical name (a table, entity set or column): lowercase letters, digits
/// and `_`, at most 64 characters.
pub fn logical_name(key: &str, name: &str) -> Result<(), ConfigError> {
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

fn dataverse_directory(
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
    let mut tables = Vec::new();
    for (i, t) in d.tables.iter().enumerate() {
        let key = |k: &str| format!("directory.dataverse.tables[{i}].{k}");
        logical_name(&key("entity"), &t.entity)?;
        if let Some(set) = &t.set {
            logical_name(&key("set"), set)?;
        }
        let id = t.key.clone().unwrap_or_else(|| format!("{}id", t.entity));
        logical_name(&key("key"), &id)?;
        if let Some(n) = &t.name {
            logical_name(&key("name"), n)?;
        }
        if t.addresses.is_empty() {
            return Err(ConfigError::invalid(
                &key("addresses"),
                "is empty",
                "list the table's e-mail columns, e.g. [\"emailaddress\"]",
            ));
        }
        for a in &t.addresses {
            logical_name(&key("addresses"), a)?;
        }
        tables.push(OtherTableConfig {
            entity: t.entity.clone(),
            set: t.set.clone(),
            key: id,
            name: t.name.clone(),
            addresses: t.addresses.clone(),
            owned: t.owned,
        });
    }
    Ok(DataverseDirectoryConfig {
        connection,
        page_size: d.page_size,
        refresh_interval: d.refresh_interval,
        request_timeout: d.request_timeout,
        startup_wait: d.startup_wait,
        emails_window: d.emails_window,
        replica_file: d
            .replica_file
            .as_deref()
            .map(anchor)
            .unwrap_or_else(|| data_dir.join("directory.redb")),
        max_rows: d.max_rows,
        offline_filters: d.offline_filters.clone(),
        tables,
    })
}
