//! Resolution: the validated configuration turned into each stage's own settings type. The
//! composition root is the one place that knows both the configuration and the stages, so the
//! checks that need a stage's knowledge run here and still name their key and fix: the
//! synchronized-fields table, and the Dataverse table catalog the offline filters and extra
//! tables are judged against.

use std::collections::HashMap;

use crate::config::{
    Config, ConfigError, CrmConfig, DataverseDirectoryConfig, DeliveryConfig, EmailBody,
    ExchangeAuthConfig, ExchangeConfig, IdentityConfig, InspectConfig, NatsCredentials,
    OutboxConfig, RulesConfig, RuntimeModel, logical_name,
};
use crate::crm::mapping::{BodyPolicy, FieldTable};
use crate::delivery::DeliverySettings;
use crate::delivery::breaker::BreakerSettings;
use crate::directory::DirectorySettings;
use crate::directory::FileSource;
use crate::directory::dataverse::{DataverseSourceSettings, OfflineFilter, has_owner};
use crate::directory::tables::{OtherTable, TABLES, entity_set};
use crate::exchange::{ExchangeAuth, ExchangeSettings};
use crate::fleet::LeaseSettings;
use crate::inspect::InspectLimits;
use crate::inspect::decode::DecodeLimits;
use crate::inspect::xml::XmlLimits;
use crate::outbox::NatsSettings;
use crate::outbox::OutboxSettings;
use crate::outbox::nats::{NatsAuth, NatsTls};
use crate::proxy::{
    AutodiscoverSettings, BodyPace, Limits, ListenerSettings, ProxySettings, UpstreamTimeouts,
};
use crate::rules::{MemoryLimits, RulesLimits};

/// Loads the configuration file (or the embedded defaults), with the environment's overrides
/// and then `overrides` (from the command line), and runs every check a start runs.
pub fn load(
    path: Option<&std::path::Path>,
    overrides: &[(String, String)],
) -> Result<Config, ConfigError> {
    let config = Config::load_with(path, overrides)?.1;
    check(&config)?;
    Ok(config)
}

/// The directory file source a start (or a reload, or `check`) reads.
pub fn file_source(config: &Config) -> FileSource {
    FileSource {
        path: config.directory.file.clone(),
        max_size: config.directory.max_file_size,
        settings: directory(&config.identity),
    }
}

/// A configuration that is valid but will not do what its users expect, with the key and the
/// fix: said by `check` and logged at start-up.
pub fn caveats(config: &Config) -> Vec<String> {
    let mut said = Vec::new();
    if matches!(config.options.sign_in, crate::config::SignIn::Oidc(_))
        && config.admin.token.is_none()
    {
        said.push(
            "admin.token: the options page brings people to the admin listener, where /decisions \
             and /explain show recent mail of every mailbox to anyone without a token; fix: set \
             admin.token (the page's own routes need only a sign-in)"
                .into(),
        );
    }
    let writes_crm = !matches!(config.crm.sink, crate::config::SinkConfig::Journal { .. });
    if writes_crm && config.exchange.is_none() && !matches!(config.delivery.body, EmailBody::None) {
        said.push(
            "delivery.body: emails land without a description unless Exchange can be asked for \
             their bodies (inspection never keeps a body); fix: configure [exchange] with a \
             service account, or set delivery.body = \"none\" to say so"
                .to_owned(),
        );
    }
    said
}

/// The proxy's own threads under `runtime.model = "per_core"`: the configured number, or one
/// per core.
pub fn proxy_threads(config: &Config) -> Option<usize> {
    (config.runtime.model == RuntimeModel::PerCore).then(|| {
        config.runtime.worker_threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    })
}

/// What the online check of a Dataverse sink looks at (`None` for another sink), and what the
/// directory file says must exist there (nothing when the directory comes from Dataverse).
pub fn online_check(
    config: &Config,
) -> Option<(
    crate::crm::online::OnlineTarget,
    crate::crm::online::Expected,
)> {
    let crate::config::SinkConfig::Dataverse {
        url,
        api_path,
        credentials,
        act_as_owner,
        ..
    } = &config.crm.sink
    else {
        return None;
    };
    let target = crate::crm::online::OnlineTarget {
        url: url.clone(),
        api_path: api_path.clone(),
        credentials: credentials.clone(),
        act_as_owner: *act_as_owner,
        auto_create: true,
        timeout: config.delivery.request_timeout,
    };
    let mut expected = crate::crm::online::Expected::default();
    if config.directory.dataverse.is_none()
        && let Ok(doc) = file_source(config).read_document()
    {
        expected.users = doc
            .systemusers
            .iter()
            .map(|u| {
                let name = u.fullname.clone().unwrap_or_else(|| "(unnamed)".into());
                (u.systemuserid, name)
            })
            .collect();
        expected.mailboxes = doc.mailboxes.iter().map(|m| m.mailboxid).collect();
    }
    Some((target, expected))
}

/// Runs every resolution that can fail, so `trackgate check` catches what a start would.
/// Returns what it resolved, so a start uses it instead of resolving (and reading the fields
/// file) again.
pub fn check(config: &Config) -> Result<Checked, ConfigError> {
    Ok(Checked {
        fields: fields(&config.crm)?,
        dataverse: config
            .directory
            .dataverse
            .as_ref()
            .map(|dv| dataverse_source(dv, &config.identity))
            .transpose()?
            .map(|mut dv| {
                // With synchronisation on, a CRM change must reach Exchange within one of its
                // intervals: the directory (where it learns of the change) refreshes as often.
                if config.sync.enabled != Some(false) {
                    dv.at_least_every = Some(config.sync.interval);
                }
                dv
            }),
    })
}

/// The settings that only resolution can judge, resolved once.
#[derive(Debug)]
pub struct Checked {
    /// The synchronized-fields table.
    pub fields: FieldTable,
    /// The Dataverse directory source's settings, when the directory comes from Dataverse.
    pub dataverse: Option<DataverseSourceSettings>,
}

pub fn proxy(config: &Config) -> ProxySettings {
    let (l, u, m, a) = (
        &config.listener,
        &config.upstreams,
        &config.limits,
        &config.autodiscover,
    );
    ProxySettings {
        threads: proxy_threads(config),
        listener: ListenerSettings {
            address: l.address,
            tls: l.tls.clone(),
            alpn: l.alpn.clone(),
            trusted_proxies: l.trusted_proxies.clone(),
        },
        limits: Limits {
            max_connections: m.max_connections,
            max_header_count: m.max_header_count,
            max_header_bytes: m.max_header_bytes,
            max_request_body: m.max_request_body,
            header_read_timeout: m.header_read_timeout,
            body_read_timeout: m.body_read_timeout,
            body_pace: BodyPace {
                min_rate: m.body_min_rate,
                grace: m.body_read_timeout,
                total: m.body_total_timeout,
            },
            send_timeout: m.send_timeout,
            tls_handshake_timeout: m.tls_handshake_timeout,
            h2_max_concurrent_streams: m.h2_max_concurrent_streams,
        },
        upstreams: UpstreamTimeouts {
            ca_bundle: u.ca_bundle.clone(),
            connect_timeout: u.connect_timeout,
            header_timeout: u.header_timeout,
            idle_timeout: u.idle_timeout,
            streaming_idle_timeout: u.streaming_idle_timeout,
            pool_idle_timeout: u.pool_idle_timeout,
            pool_max_idle_per_host: u.pool_max_idle_per_host,
            expect_continue_timeout: u.expect_continue_timeout,
            preserve_host: u.preserve_host,
        },
        autodiscover: AutodiscoverSettings {
            rewrite: a.rewrite,
            external_url: a.external_url.clone(),
            exchange_hosts: a.exchange_hosts.clone(),
            max_body: a.max_body,
        },
    }
}

/// How many inspection workers run: as configured, else one per available core but one (the
/// proxy's share), at least one.
pub fn inspect_workers(i: &InspectConfig) -> usize {
    workers_for(
        i.workers,
        std::thread::available_parallelism().ok().map(|n| n.get()),
    )
}

/// [`inspect_workers`] given what the system says of its cores (`None`: it could not tell).
fn workers_for(configured: Option<usize>, cores: Option<usize>) -> usize {
    configured.unwrap_or_else(|| cores.map_or(1, |cores| cores.saturating_sub(1)).max(1))
}

pub fn inspect(i: &InspectConfig) -> InspectLimits {
    InspectLimits {
        xml: XmlLimits {
            max_depth: i.xml_max_depth,
            max_elements: i.xml_max_elements,
        },
        decode: DecodeLimits {
            max_output: i.decoded_limit,
            max_ratio: i.max_ratio,
        },
    }
}

pub fn rules(r: &RulesConfig) -> (MemoryLimits, RulesLimits) {
    (
        MemoryLimits {
            max_bytes: r.memory,
            max_tracked: r.tracked_memory_entries,
        },
        RulesLimits {
            max_parties: r.max_parties,
        },
    )
}

pub fn outbox(o: &OutboxConfig) -> OutboxSettings {
    OutboxSettings {
        group_records: o.group_records,
        group_interval: o.group_interval,
        queue: o.queue,
        max_pending: o.max_pending,
        delivered_window: o.delivered_window,
        ..OutboxSettings::default()
    }
}

/// The fleet outbox's settings, when `outbox.backend = "nats"`. The instance is named by the
/// host and the admin port unless `nats.instance` names it.
pub fn nats(config: &Config) -> Option<NatsSettings> {
    let n = config.nats.as_ref()?;
    let instance = n.instance.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "trackgate".into());
        format!("{host}:{}", config.admin.address.port())
    });
    Some(NatsSettings {
        servers: n.servers.clone(),
        auth: match &n.credentials {
            NatsCredentials::None => NatsAuth::None,
            NatsCredentials::UserPassword { user, password } => NatsAuth::UserPassword {
                user: user.clone(),
                password: password.clone(),
            },
            NatsCredentials::Token(token) => NatsAuth::Token(token.clone()),
            NatsCredentials::Nkey(seed) => NatsAuth::Nkey(seed.clone()),
            NatsCredentials::CredsFile(path) => NatsAuth::CredsFile(path.clone()),
        },
        tls: NatsTls {
            required: n.tls_required,
            ca_file: n.tls_ca_file.clone(),
            client_cert: n.tls_client.clone(),
        },
        instance,
        stream: n.stream.clone(),
        subject: n.subject.clone(),
        consumer: n.consumer.clone(),
        dead_stream: n.dead_stream.clone(),
        dead_subject: n.dead_subject.clone(),
        replicas: n.replicas,
        duplicate_window: n.duplicate_window,
        connect_timeout: n.connect_timeout,
        request_timeout: n.request_timeout,
        publish_in_flight: n.publish_in_flight,
        prefetch: n
            .prefetch
            .unwrap_or(2 * config.delivery.concurrency * config.delivery.batch_size.max(1)),
        ack_wait: n.ack_wait,
        spool: n.spool_file.clone(),
        spool_settings: outbox(&config.outbox),
    })
}

/// The fleet's mailbox leases, when the outbox is NATS: the same instance name as the outbox's.
pub fn leases(config: &Config) -> Option<LeaseSettings> {
    let n = config.nats.as_ref()?;
    Some(LeaseSettings {
        bucket: n.lease_bucket.clone(),
        ttl: n.lease_ttl,
        instance: nats(config)?.instance,
    })
}

/// The object store a fleet shares the Dataverse directory through.
pub fn directory_bucket(config: &Config) -> Option<String> {
    config.nats.as_ref().map(|n| n.directory_bucket.clone())
}

pub fn delivery(d: &DeliveryConfig) -> DeliverySettings {
    DeliverySettings {
        concurrency: d.concurrency,
        batch_size: d.batch_size,
        max_attempts: d.max_attempts,
        backoff_base: d.backoff_base,
        backoff_max: d.backoff_max,
        body: match d.body {
            EmailBody::Full => BodyPolicy::Full,
            EmailBody::Text => BodyPolicy::Text,
            EmailBody::None => BodyPolicy::None,
        },
        breaker: BreakerSettings {
            failures: d.outage_failures,
            first_wait: (d.probe_interval / 6).max(std::time::Duration::from_millis(100)),
            probe_interval: d.probe_interval,
        },
    }
}

/// The catch-up sweep's settings; its sync states live beside the outbox.
pub fn catchup(config: &Config) -> crate::catchup::CatchupSettings {
    crate::catchup::CatchupSettings {
        interval: config.catchup.interval,
        concurrency: config.catchup.concurrency,
        state_file: config.storage.data_dir.join("catchup.redb"),
    }
}

pub fn sync(config: &Config) -> crate::sync::SyncSettings {
    crate::sync::SyncSettings {
        store: config.storage.data_dir.join("sync.redb"),
        interval: config.sync.interval,
        tick: config.sync.tick,
        creates_per_run: config.sync.creates_per_run,
        send_mail: config.sync.send_mail,
        default_category: config.sync.tracking_category.clone(),
    }
}

pub fn exchange(e: &ExchangeConfig) -> ExchangeSettings {
    ExchangeSettings {
        ews_url: e.ews_url.clone(),
        graph_url: e.graph_url.clone(),
        auth: match &e.auth {
            ExchangeAuthConfig::Basic { username, password } => ExchangeAuth::Basic {
                username: username.clone(),
                password: password.clone(),
            },
            ExchangeAuthConfig::OAuth(credentials) => ExchangeAuth::OAuth(credentials.clone()),
        },
        timeout: e.timeout,
        concurrency: e.concurrency,
    }
}

/// The synchronized-fields table: the configured file, or the embedded one.
pub fn fields(crm: &CrmConfig) -> Result<FieldTable, ConfigError> {
    let Some(path) = &crm.fields else {
        return Ok(FieldTable::embedded());
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::invalid("crm.fields", e.to_string(), "make the file readable UTF-8")
    })?;
    FieldTable::parse(&text, &path.display().to_string()).map_err(|e| {
        ConfigError::invalid(
            "crm.fields",
            e.to_string(),
            "start from src/crm/fields.toml and change directions only",
        )
    })
}

/// How the directory indexes sign-in names (`[identity]`), whichever source builds it.
pub fn directory(identity: &IdentityConfig) -> DirectorySettings {
    DirectorySettings {
        netbios_from_upn: identity.netbios_from_upn,
        ntlm_domains: identity.ntlm_domains.clone(),
        overlay: Default::default(),
    }
}

/// The Dataverse directory source's settings: the extra tables and offline filters judged
/// against the table catalog.
pub fn dataverse_source(
    d: &DataverseDirectoryConfig,
    identity: &IdentityConfig,
) -> Result<DataverseSourceSettings, ConfigError> {
    let other_tables = other_tables(d)?;
    let offline_filters = offline_filters(d, &other_tables)?;
    Ok(DataverseSourceSettings {
        url: d.connection.url.clone(),
        api_path: d.connection.api_path.clone(),
        credentials: d.connection.credentials.clone(),
        page_size: d.page_size,
        refresh_interval: d.refresh_interval,
        at_least_every: None,
        request_timeout: d.request_timeout,
        emails_window: d.emails_window,
        offline_filters,
        other_tables,
        replica_file: d.replica_file.clone(),
        max_rows: d.max_rows,
        directory: directory(identity),
    })
}

fn other_tables(d: &DataverseDirectoryConfig) -> Result<Vec<OtherTable>, ConfigError> {
    let mut other_tables = Vec::new();
    for (i, t) in d.tables.iter().enumerate() {
        let key = format!("directory.dataverse.tables[{i}].set");
        let set = t.set.clone().unwrap_or_else(|| entity_set(&t.entity));
        // A set written out was checked with the rest of the file; a plural made here may
        // still be too long.
        logical_name(&key, &set)?;
        if TABLES.iter().any(|s| s.set == set) {
            return Err(ConfigError::invalid(
                &key,
                format!("{set} is replicated already"),
                "list only tables other than contacts, accounts, leads and the fixed ones",
            ));
        }
        other_tables.push(OtherTable {
            entity: t.entity.clone(),
            set,
            key: t.key.clone(),
            name: t.name.clone(),
            addresses: t.addresses.clone(),
            owned: t.owned,
        });
    }
    Ok(other_tables)
}

fn offline_filters(
    d: &DataverseDirectoryConfig,
    other_tables: &[OtherTable],
) -> Result<HashMap<String, OfflineFilter>, ConfigError> {
    let mut offline_filters = HashMap::new();
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
    for t in other_tables {
        if !t.owned && !offline_filters.contains_key(&t.set) {
            // `owned` cannot apply to a table without an owner: keep it whole.
            offline_filters.insert(t.set.clone(), OfflineFilter::All);
        }
    }
    Ok(offline_filters)
}

/// What leaves a mailbox for the CRM under this configuration, as the privacy page says it.
pub fn privacy(
    config: &Config,
    fields: &crate::crm::mapping::FieldTable,
) -> crate::options::PrivacyFacts {
    let email = &fields.email;
    let mut columns = Vec::new();
    let mut says = |on: bool, what: &'static str| {
        if on {
            columns.push(what);
        }
    };
    says(email.subject, "The subject.");
    says(
        email.parties,
        "The sender's and recipients' addresses (To, Cc, Bcc), resolved to CRM records where they match.",
    );
    says(
        email.messageid,
        "The Message-ID header (to find the message again, never to read it).",
    );
    says(email.directioncode, "Whether you sent or received it.");
    says(
        email.regarding,
        "The record it is linked to (regarding), when one is found.",
    );
    says(email.status, "Its status (received or sent) and when.");
    let body = if !email.description {
        "never."
    } else {
        match config.delivery.body {
            crate::config::EmailBody::Full => {
                "the whole body, as Exchange has it (HTML when it is HTML)."
            }
            crate::config::EmailBody::Text => "the body as plain text.",
            crate::config::EmailBody::None => "never.",
        }
    };
    crate::options::PrivacyFacts {
        body,
        columns,
        kept_for_previews: config.options.history_per_mailbox,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::RawConfig;

    /// Validation and resolution together, as a start runs them.
    fn resolve(text: &str) -> Result<Option<DataverseSourceSettings>, ConfigError> {
        let config = RawConfig::from_toml(text, "test", Vec::new())?.validate(Path::new("."))?;
        check(&config)?;
        config
            .directory
            .dataverse
            .as_ref()
            .map(|d| dataverse_source(d, &config.identity))
            .transpose()
    }

    #[test]
    fn a_dataverse_directory_needs_no_file_and_its_mistakes_name_the_key() {
        let base =
            "[directory]\nsource = \"dataverse\"\n[crm.dataverse]\nurl = \"http://127.0.0.1:1\"\n";
        let c = RawConfig::from_toml(base, "test", Vec::new())
            .unwrap()
            .validate(Path::new("."))
            .unwrap();
        assert!(c.directory.file.is_none());
        let dv = resolve(base).unwrap().expect("a dataverse source");
        assert_eq!(dv.page_size, 5000);
        assert!(dv.replica_file.ends_with("directory.redb"));
        for (extra, key) in [
            ("[crm.dataverse]\n", "crm.dataverse.url"),
            (
                "[directory.dataverse.offline_filters]\ncontacts = \"statecode eq\"\n",
                "directory.dataverse.offline_filters.contacts",
            ),
            (
                "[directory.dataverse.offline_filters]\nmailboxes = \"owned\"\n",
                "directory.dataverse.offline_filters.mailboxes",
            ),
            (
                "[directory.dataverse.offline_filters]\nvendors = \"all\"\n",
                "directory.dataverse.offline_filters.vendors",
            ),
            (
                "[directory.dataverse]\npage_size = 9000\n",
                "directory.dataverse.page_size",
            ),
            (
                "[directory.dataverse.offline_filters]\nemails = \"statecode eq 0\"\n",
                "directory.dataverse.offline_filters.emails",
            ),
            (
                "[directory.dataverse]\nrefresh_interval = \"30d\"\n",
                "directory.dataverse.refresh_interval",
            ),
            (
                "[[directory.dataverse.tables]]\nentity = \"new_vendor\"\naddresses = []\n",
                "directory.dataverse.tables[0].addresses",
            ),
        ] {
            let text = if extra.starts_with("[crm.dataverse]") {
                "[directory]\nsource = \"dataverse\"\n".to_owned()
            } else {
                format!("{base}{extra}")
            };
            let e = resolve(&text).unwrap_err();
            assert_eq!(e.key(), Some(key), "{e}");
        }
        let e = resolve(&base.replace("source =", "file = \"Cargo.toml\"\nsource =")).unwrap_err();
        assert_eq!(e.key(), Some("directory.file"), "{e}");
        assert!(e.to_string().contains("dataverse"), "{e}");
        let with_table = format!(
            "{base}[[directory.dataverse.tables]]\nentity = \"new_vendor\"\naddresses = [\"emailaddress\"]\n[directory.dataverse.offline_filters]\nnew_vendors = \"owned\"\n"
        );
        let tables = resolve(&with_table).unwrap().unwrap().other_tables;
        assert_eq!(tables[0].set, "new_vendors");
        assert_eq!(tables[0].key, "new_vendorid");
    }

    #[test]
    fn a_made_up_entity_set_is_a_logical_name_too() {
        let entity = format!("new_{}s", "a".repeat(58));
        let text = format!(
            "[directory]\nsource = \"dataverse\"\n[crm.dataverse]\nurl = \"http://127.0.0.1:1\"\n[[directory.dataverse.tables]]\nentity = \"{entity}\"\nkey = \"new_id\"\naddresses = [\"emailaddress\"]\n"
        );
        let e = resolve(&text).unwrap_err();
        assert_eq!(e.key(), Some("directory.dataverse.tables[0].set"), "{e}");
    }

    #[test]
    fn inspection_gets_every_core_but_one_unless_configured() {
        assert_eq!(workers_for(None, Some(8)), 7);
        assert_eq!(workers_for(None, Some(2)), 1);
        // Never none: one core, or a system that cannot tell, still inspects.
        assert_eq!(workers_for(None, Some(1)), 1);
        assert_eq!(workers_for(None, None), 1);
        assert_eq!(workers_for(Some(3), Some(8)), 3);
        // `[inspect] workers = 0` is the default, not zero threads.
        let config = RawConfig::from_toml("[inspect]\nworkers = 0\n", "test", Vec::new())
            .unwrap()
            .validate(Path::new("."))
            .unwrap();
        assert_eq!(config.inspect.workers, None);
        assert_eq!(
            inspect_workers(&config.inspect),
            workers_for(
                None,
                std::thread::available_parallelism().ok().map(|n| n.get())
            )
        );
    }

    #[test]
    fn embedded_defaults_are_the_stages_own() {
        let config = RawConfig::from_toml("", "test", Vec::new())
            .unwrap()
            .validate(Path::new("."))
            .unwrap();
        assert_eq!(outbox(&config.outbox), OutboxSettings::default());
        assert_eq!(delivery(&config.delivery), DeliverySettings::default());
        assert_eq!(fields(&config.crm).unwrap(), FieldTable::embedded());
    }

    #[test]
    fn a_broken_fields_table_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fields.toml");
        std::fs::write(&file, "email = 3\n").unwrap();
        let text = format!("[crm]\nfields = {:?}\n", file.display().to_string());
        let e = resolve(&text).unwrap_err();
        assert_eq!(e.key(), Some("crm.fields"), "{e}");
    }
}
