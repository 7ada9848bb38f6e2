//! The sections of delivery: `[outbox]`, `[delivery]`, `[crm]` (with `[crm.dataverse]` and
//! `[crm.webhook]`) and `[exchange]`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{at_least, positive, readable_file};
use crate::common::{ClientCredentials, Secret};
use crate::config::ConfigError;
use crate::config::raw::{
    EmailBody, ExchangeAuthKind, RawCatchup, RawCrm, RawDataverse, RawDelivery, RawExchange,
    RawOutbox, RawSync, SinkKind,
};

/// The validated outbox section.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    pub file: PathBuf,
    pub group_records: usize,
    pub group_interval: Duration,
    pub queue: usize,
    pub max_pending: u64,
    pub delivered_window: Duration,
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub enabled: bool,
    pub concurrency: usize,
    pub batch_size: usize,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub body: EmailBody,
    pub request_timeout: Duration,
    pub outage_failures: u32,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum SinkConfig {
    Journal {
        file: PathBuf,
    },
    Dataverse {
        url: String,
        api_path: String,
        credentials: Option<ClientCredentials>,
        act_as_owner: bool,
        max_requests_per_window: Option<u32>,
    },
    Webhook {
        url: String,
        secret: Secret,
    },
}

#[derive(Debug, Clone)]
pub struct CrmConfig {
    pub sink: SinkConfig,
    /// The synchronized-fields table file; unset: the embedded one.
    pub fields: Option<PathBuf>,
}

/// `[exchange]`: the Exchange service client that fetches what the traffic did not show.
#[derive(Debug, Clone)]
pub struct ExchangeConfig {
    pub ews_url: Option<String>,
    pub graph_url: Option<String>,
    pub auth: ExchangeAuthConfig,
    pub timeout: Duration,
    /// Requests in flight at most, across the catch-up sweep and enrichment.
    pub concurrency: usize,
}

/// What one Exchange service account has in flight at most unless configured: well within
/// EWSMaxConcurrency (27 on Exchange Online), which the same account's other users share.
pub const EXCHANGE_CONCURRENCY: usize = 10;

#[derive(Debug, Clone)]
pub enum ExchangeAuthConfig {
    Basic { username: String, password: Secret },
    OAuth(ClientCredentials),
}

/// Whether a URL's host is a loopback address (plain HTTP and no auth are allowed only there).
fn is_loopback_url(url: &http::Uri) -> bool {
    match url.host() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

fn service_url(key: &str, text: &str) -> Result<(String, bool), ConfigError> {
    let uri: http::Uri = text.parse().map_err(|_| {
        ConfigError::invalid(
            key,
            format!("{text:?} is not a URL"),
            "write the full URL, e.g. https://contoso.crm.dynamics.com",
        )
    })?;
    let loopback = is_loopback_url(&uri);
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if loopback => {}
        _ => {
            return Err(ConfigError::invalid(
                key,
                format!("{text:?} is not an https URL"),
                "use https:// (plain http is allowed only for loopback test services)",
            ));
        }
    }
    Ok((text.trim_end_matches('/').to_owned(), loopback))
}

fn required<'a, T>(key: &str, value: &'a Option<T>, fix: &str) -> Result<&'a T, ConfigError> {
    value
        .as_ref()
        .ok_or_else(|| ConfigError::invalid(key, "is missing", fix))
}

/// Where a Dataverse environment is and how trackgate signs in to it (`[crm.dataverse]`, shared
/// by the CRM sink and the Dataverse directory source).
#[derive(Debug, Clone)]
pub struct DataverseConnection {
    pub url: String,
    pub api_path: String,
    pub credentials: Option<ClientCredentials>,
}

pub(super) fn dataverse_connection(d: &RawDataverse) -> Result<DataverseConnection, ConfigError> {
    let (url, loopback) = service_url(
        "crm.dataverse.url",
        required(
            "crm.dataverse.url",
            &d.url,
            "set it to the environment URL, e.g. https://contoso.crm.dynamics.com",
        )?,
    )?;
    if !d.api_path.starts_with('/') {
        return Err(ConfigError::invalid(
            "crm.dataverse.api_path",
            "does not start with /",
            "use /api/data/v9.2",
        ));
    }
    let credentials = match (&d.token_url, &d.client_id, &d.client_secret) {
        (None, None, None) if loopback => None,
        (token_url, client_id, client_secret) => {
            let fix = "set token_url, client_id and client_secret of the Entra app registered as an application user in Dataverse";
            let token_url = required("crm.dataverse.token_url", token_url, fix)?;
            service_url("crm.dataverse.token_url", token_url)?;
            Some(ClientCredentials {
                token_url: token_url.clone(),
                client_id: required("crm.dataverse.client_id", client_id, fix)?.clone(),
                client_secret: required("crm.dataverse.client_secret", client_secret, fix)?.clone(),
                scope: d.scope.clone().unwrap_or_else(|| format!("{url}/.default")),
            })
        }
    };
    Ok(DataverseConnection {
        url,
        api_path: d.api_path.trim_end_matches('/').to_owned(),
        credentials,
    })
}

/// `[outbox]`, `[delivery]`, `[crm]` and `[exchange]`, in that order.
pub(super) fn validate(
    outbox: &RawOutbox,
    delivery: &RawDelivery,
    crm: &RawCrm,
    exchange: &RawExchange,
    data_dir: &Path,
    anchor: &dyn Fn(&Path) -> PathBuf,
) -> Result<
    (
        OutboxConfig,
        DeliveryConfig,
        CrmConfig,
        Option<ExchangeConfig>,
    ),
    ConfigError,
> {
    Ok((
        outbox_section(outbox, data_dir, anchor)?,
        delivery_section(delivery)?,
        crm_section(crm, data_dir, anchor)?,
        exchange_section(exchange, delivery.request_timeout)?,
    ))
}

fn outbox_section(
    outbox: &RawOutbox,
    data_dir: &Path,
    anchor: &dyn Fn(&Path) -> PathBuf,
) -> Result<OutboxConfig, ConfigError> {
    at_least(
        "outbox.group_commit_records",
        outbox.group_commit_records as u64,
        1,
    )?;
    positive("outbox.group_commit_interval", outbox.group_commit_interval)?;
    if outbox.group_commit_interval > Duration::from_secs(1) {
        return Err(ConfigError::invalid(
            "outbox.group_commit_interval",
            "is over 1s",
            "keep it short (a few ms): it bounds what a crash can lose",
        ));
    }
    at_least("outbox.queue", outbox.queue as u64, 1)?;
    at_least("outbox.max_pending", outbox.max_pending, 1)?;
    positive("outbox.delivered_window", outbox.delivered_window)?;
    Ok(OutboxConfig {
        file: outbox
            .file
            .as_deref()
            .map(anchor)
            .unwrap_or_else(|| data_dir.join("outbox.redb")),
        group_records: outbox.group_commit_records,
        group_interval: outbox.group_commit_interval,
        queue: outbox.queue,
        max_pending: outbox.max_pending,
        delivered_window: outbox.delivered_window,
    })
}

fn delivery_section(delivery: &RawDelivery) -> Result<DeliveryConfig, ConfigError> {
    if !(1..=52).contains(&delivery.concurrency) {
        return Err(ConfigError::invalid(
            "delivery.concurrency",
            format!("{} is outside 1..=52", delivery.concurrency),
            "Dataverse allows 52 concurrent requests per application user; use 8 to 52",
        ));
    }
    if !(1..=1000).contains(&delivery.batch_size) {
        return Err(ConfigError::invalid(
            "delivery.batch_size",
            format!("{} is outside 1..=1000", delivery.batch_size),
            "a $batch holds at most 1000 requests; about 10 is a good start",
        ));
    }
    at_least("delivery.max_attempts", u64::from(delivery.max_attempts), 1)?;
    positive("delivery.backoff_base", delivery.backoff_base)?;
    positive("delivery.request_timeout", delivery.request_timeout)?;
    at_least(
        "delivery.outage_failures",
        u64::from(delivery.outage_failures),
        1,
    )?;
    positive("delivery.probe_interval", delivery.probe_interval)?;
    positive("delivery.probe_timeout", delivery.probe_timeout)?;
    if delivery.backoff_max < delivery.backoff_base {
        return Err(ConfigError::invalid(
            "delivery.backoff_max",
            "is shorter than delivery.backoff_base",
            "make backoff_max at least backoff_base, e.g. \"5m\"",
        ));
    }
    Ok(DeliveryConfig {
        enabled: delivery.enabled,
        concurrency: delivery.concurrency,
        batch_size: delivery.batch_size,
        max_attempts: delivery.max_attempts,
        backoff_base: delivery.backoff_base,
        backoff_max: delivery.backoff_max,
        body: delivery.body,
        request_timeout: delivery.request_timeout,
        outage_failures: delivery.outage_failures,
        probe_interval: delivery.probe_interval,
        probe_timeout: delivery.probe_timeout,
    })
}

fn crm_section(
    crm: &RawCrm,
    data_dir: &Path,
    anchor: &dyn Fn(&Path) -> PathBuf,
) -> Result<CrmConfig, ConfigError> {
    let fields = crm.fields.as_deref().map(anchor);
    if let Some(path) = &fields {
        readable_file("crm.fields", path, "a synchronized-fields table (TOML)")?;
    }
    let sink = match crm.sink {
        SinkKind::Journal => SinkConfig::Journal {
            file: crm
                .journal_file
                .as_deref()
                .map(anchor)
                .unwrap_or_else(|| data_dir.join("journal.redb")),
        },
        SinkKind::Dataverse => {
            let d = &crm.dataverse;
            let DataverseConnection {
                url,
                api_path,
                credentials,
            } = dataverse_connection(d)?;
            SinkConfig::Dataverse {
                url,
                api_path,
                credentials,
                act_as_owner: d.act_as_owner,
                max_requests_per_window: (d.max_requests_per_5min > 0)
                    .then_some(d.max_requests_per_5min),
            }
        }
        SinkKind::Webhook => {
            let w = &crm.webhook;
            let (url, _) = service_url(
                "crm.webhook.url",
                required(
                    "crm.webhook.url",
                    &w.url,
                    "set the URL that receives tracked emails",
                )?,
            )?;
            let secret = required(
                "crm.webhook.secret",
                &w.secret,
                "set a random key of 16 or more characters; the receiver checks X-Trackgate-Signature with it",
            )?;
            if secret.expose().len() < 16 {
                return Err(ConfigError::invalid(
                    "crm.webhook.secret",
                    "is shorter than 16 characters",
                    "use a random key of 16 or more characters",
                ));
            }
            SinkConfig::Webhook {
                url,
                secret: secret.clone(),
            }
        }
    };
    Ok(CrmConfig { sink, fields })
}

/// `[catchup]`, validated.
#[derive(Debug, Clone)]
pub struct CatchupConfig {
    /// `None`: decided by whether an Exchange service client exists.
    pub enabled: Option<bool>,
    pub interval: Duration,
    pub concurrency: usize,
}

pub fn catchup(c: &RawCatchup) -> Result<CatchupConfig, ConfigError> {
    if c.interval < Duration::from_secs(1) {
        return Err(ConfigError::invalid(
            "catchup.interval",
            "is shorter than a second",
            "write a duration such as \"5m\" (server-side sync polls every 2 to 12 minutes)",
        ));
    }
    if !(1..=64).contains(&c.concurrency) {
        return Err(ConfigError::invalid(
            "catchup.concurrency",
            "must be between 1 and 64",
            "keep it within Exchange's EWSMaxConcurrency (27 on Exchange Online): 2 suits most",
        ));
    }
    Ok(CatchupConfig {
        enabled: c.enabled,
        interval: c.interval,
        concurrency: c.concurrency,
    })
}

/// `[sync]`, validated.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// `None`: decided by whether Dataverse and an EWS client exist.
    pub enabled: Option<bool>,
    pub interval: Duration,
    pub tick: Duration,
    pub creates_per_run: usize,
    pub send_mail: bool,
    pub tracking_category: String,
}

pub fn sync(c: &RawSync) -> Result<SyncConfig, ConfigError> {
    if c.interval < Duration::from_secs(60) {
        return Err(ConfigError::invalid(
            "sync.interval",
            "is shorter than a minute",
            "write a duration such as \"5m\" (server-side sync runs every 2 to 12 minutes)",
        ));
    }
    if c.tick < Duration::from_millis(100) || c.tick > c.interval {
        return Err(ConfigError::invalid(
            "sync.tick",
            "must be between 100ms and sync.interval",
            "write a duration such as \"10s\"",
        ));
    }
    if !(1..=10_000).contains(&c.creates_per_run) {
        return Err(ConfigError::invalid(
            "sync.creates_per_run",
            "must be between 1 and 10000",
            "200 suits most: a first sync of a large selection spreads over a few runs",
        ));
    }
    if c.tracking_category.trim().is_empty() {
        return Err(ConfigError::invalid(
            "sync.tracking_category",
            "is empty",
            "name the category that tracks an item, e.g. \"Tracked to Dynamics 365\"",
        ));
    }
    Ok(SyncConfig {
        enabled: c.enabled,
        interval: c.interval,
        tick: c.tick,
        creates_per_run: c.creates_per_run,
        send_mail: c.send_mail,
        tracking_category: c.tracking_category.trim().to_owned(),
    })
}

/// The Exchange service client; `None` when no URL is configured.
fn exchange_section(
    exchange: &RawExchange,
    timeout: Duration,
) -> Result<Option<ExchangeConfig>, ConfigError> {
    Ok(match (&exchange.ews_url, &exchange.graph_url) {
        (None, None) => None,
        (ews, graph) => {
            let ews = ews
                .as_deref()
                .map(|u| service_url("exchange.ews_url", u).map(|(u, _)| u))
                .transpose()?;
            let graph = graph
                .as_deref()
                .map(|u| service_url("exchange.graph_url", u).map(|(u, _)| u))
                .transpose()?;
            let auth = match exchange.auth {
                ExchangeAuthKind::Basic => {
                    let fix = "set username and password of a service account with the ApplicationImpersonation role, or auth = \"oauth\"";
                    ExchangeAuthConfig::Basic {
                        username: required("exchange.username", &exchange.username, fix)?.clone(),
                        password: required("exchange.password", &exchange.password, fix)?.clone(),
                    }
                }
                ExchangeAuthKind::Oauth => {
                    let fix = "set token_url, client_id and client_secret of an Entra app with full_access_as_app (EWS) or Mail.Read (Graph)";
                    let token_url = required("exchange.token_url", &exchange.token_url, fix)?;
                    service_url("exchange.token_url", token_url)?;
                    let scope = exchange.scope.clone().unwrap_or_else(|| match &graph {
                        Some(g) if ews.is_none() => format!("{g}/.default"),
                        _ => "https://outlook.office365.com/.default".into(),
                    });
                    ExchangeAuthConfig::OAuth(ClientCredentials {
                        token_url: token_url.clone(),
                        client_id: required("exchange.client_id", &exchange.client_id, fix)?
                            .clone(),
                        client_secret: required(
                            "exchange.client_secret",
                            &exchange.client_secret,
                            fix,
                        )?
                        .clone(),
                        scope,
                    })
                }
            };
            Some(ExchangeConfig {
                ews_url: ews,
                graph_url: graph,
                auth,
                timeout,
                concurrency: exchange_concurrency(exchange.concurrency)?,
            })
        }
    })
}

fn exchange_concurrency(configured: Option<usize>) -> Result<usize, ConfigError> {
    let concurrency = configured.unwrap_or(EXCHANGE_CONCURRENCY);
    if !(1..=100).contains(&concurrency) {
        return Err(ConfigError::invalid(
            "exchange.concurrency",
            "must be between 1 and 100",
            "stay below the account's EWSMaxConcurrency (27 on Exchange Online); 10 suits most",
        ));
    }
    Ok(concurrency)
}
