//! The configuration of the outbox, delivery, the CRM sinks and the Exchange service client:
//! `[outbox]`, `[delivery]`, `[crm]` (with `[crm.dataverse]` and `[crm.webhook]`) and
//! `[exchange]`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret, at_least, positive, readable_file};
use crate::crm::mapping::{BodyPolicy, FieldTable};
use crate::exchange::{ExchangeAuth, ExchangeSettings};
use crate::oauth::ClientCredentials;
use crate::outbox::OutboxSettings;

/// `[outbox]`: the durable queue of track decisions.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawOutbox {
    /// The redb file. Unset: `<storage.data_dir>/outbox.redb`.
    pub file: Option<PathBuf>,
    /// A group commit (one fsync) holds at most this many operations…
    pub group_commit_records: usize,
    /// …and waits at most this long for more. A crash loses at most the decisions of this
    /// window (they were never acknowledged to anyone).
    #[serde(with = "humantime_serde")]
    pub group_commit_interval: Duration,
    /// Decisions waiting for the writer; beyond, new ones are refused and counted.
    pub queue: usize,
    /// Records waiting for delivery; beyond, new ones are refused and counted.
    pub max_pending: u64,
    /// How long delivered ids are remembered, so the same decision is not queued again.
    #[serde(with = "humantime_serde")]
    pub delivered_window: Duration,
}

impl Default for RawOutbox {
    fn default() -> Self {
        let d = OutboxSettings::default();
        RawOutbox {
            file: None,
            group_commit_records: d.group_records,
            group_commit_interval: d.group_interval,
            queue: d.queue,
            max_pending: d.max_pending,
            delivered_window: d.delivered_window,
        }
    }
}

/// `[delivery]`: the workers that write to the CRM.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDelivery {
    /// Off: decisions queue in the outbox and nothing is sent.
    pub enabled: bool,
    /// Sink requests in flight at once (Dataverse allows 52 per application user).
    pub concurrency: usize,
    /// Records per sink request; above 1 the Dataverse sink uses `$batch` (≤ 1000).
    pub batch_size: usize,
    /// A record failing this many times (500s, timeouts of its own) goes to dead letter.
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Timeout of one request to the CRM or Exchange.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How much of a message body reaches the CRM: `full`, `text` or `none`.
    pub body: BodyPolicy,
}

impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery {
            enabled: true,
            concurrency: 8,
            batch_size: 1,
            max_attempts: 10,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            body: BodyPolicy::Full,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// A local redb journal (`trackgate journal list`).
    #[default]
    Journal,
    Dataverse,
    Webhook,
}

/// `[crm]`: where tracked emails go.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCrm {
    pub sink: SinkKind,
    /// A synchronized-fields table (TOML). Unset: the embedded one (`src/crm/fields.toml`).
    pub fields: Option<PathBuf>,
    /// The journal file. Unset: `<storage.data_dir>/journal.redb`.
    pub journal_file: Option<PathBuf>,
    pub dataverse: RawDataverse,
    pub webhook: RawWebhook,
}

/// `[crm.dataverse]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDataverse {
    /// The environment URL, e.g. `https://contoso.crm.dynamics.com`.
    pub url: Option<String>,
    pub api_path: String,
    /// Entra ID token endpoint: `https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token`.
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    /// Unset: `<url>/.default`.
    pub scope: Option<String>,
    /// Create each email as its mailbox owner (`CallerObjectId`); the application user needs
    /// the "act on behalf of another user" privilege.
    pub act_as_owner: bool,
    /// Requests in any 5-minute window at most (the service protection limit per user is
    /// 6000); 0 leaves pacing to the 429s.
    pub max_requests_per_5min: u32,
}

impl Default for RawDataverse {
    fn default() -> Self {
        RawDataverse {
            url: None,
            api_path: "/api/data/v9.2".into(),
            token_url: None,
            client_id: None,
            client_secret: None,
            scope: None,
            act_as_owner: false,
            max_requests_per_5min: 6000,
        }
    }
}

/// `[crm.webhook]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawWebhook {
    pub url: Option<String>,
    /// The HMAC key of `X-Trackgate-Signature` (at least 16 characters).
    pub secret: Option<Secret>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExchangeAuthKind {
    #[default]
    Basic,
    Oauth,
}

/// `[exchange]`: the service account delivery uses to fetch messages (enrichment and bodies).
/// Unset URLs: no enrichment.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawExchange {
    /// `https://mail.example.com/EWS/Exchange.asmx`; the account needs the
    /// ApplicationImpersonation role.
    pub ews_url: Option<String>,
    /// `https://graph.microsoft.com`; the app needs `Mail.Read` (application).
    pub graph_url: Option<String>,
    pub auth: ExchangeAuthKind,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    /// Unset: `https://outlook.office365.com/.default` for EWS, `<graph_url>/.default` for Graph.
    pub scope: Option<String>,
}

/// The validated outbox section.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    pub file: PathBuf,
    pub settings: OutboxSettings,
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub enabled: bool,
    pub settings: crate::delivery::DeliverySettings,
    pub request_timeout: Duration,
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
    pub fields: FieldTable,
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
        Option<ExchangeSettings>,
    ),
    ConfigError,
> {
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
    let outbox_config = OutboxConfig {
        file: outbox
            .file
            .as_deref()
            .map(anchor)
            .unwrap_or_else(|| data_dir.join("outbox.redb")),
        settings: OutboxSettings {
            group_records: outbox.group_commit_records,
            group_interval: outbox.group_commit_interval,
            queue: outbox.queue,
            max_pending: outbox.max_pending,
            delivered_window: outbox.delivered_window,
        },
    };

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
    if delivery.backoff_max < delivery.backoff_base {
        return Err(ConfigError::invalid(
            "delivery.backoff_max",
            "is shorter than delivery.backoff_base",
            "make backoff_max at least backoff_base, e.g. \"5m\"",
        ));
    }
    let delivery_config = DeliveryConfig {
        enabled: delivery.enabled,
        settings: crate::delivery::DeliverySettings {
            concurrency: delivery.concurrency,
            batch_size: delivery.batch_size,
            max_attempts: delivery.max_attempts,
            backoff_base: delivery.backoff_base,
            backoff_max: delivery.backoff_max,
            body: delivery.body,
        },
        request_timeout: delivery.request_timeout,
    };

    let fields = match &crm.fields {
        None => FieldTable::embedded(),
        Some(path) => {
            let path = anchor(path);
            readable_file("crm.fields", &path, "a synchronized-fields table (TOML)")?;
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::invalid("crm.fields", e.to_string(), "make the file readable UTF-8")
            })?;
            FieldTable::parse(&text, &path.display().to_string()).map_err(|e| {
                ConfigError::invalid(
                    "crm.fields",
                    e.to_string(),
                    "start from src/crm/fields.toml and change directions only",
                )
            })?
        }
    };
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

    let exchange_config = match (&exchange.ews_url, &exchange.graph_url) {
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
                    ExchangeAuth::Basic {
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
                    ExchangeAuth::OAuth(ClientCredentials {
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
            Some(ExchangeSettings {
                ews_url: ews,
                graph_url: graph,
                auth,
                timeout: delivery.request_timeout,
            })
        }
    };
    Ok((
        outbox_config,
        delivery_config,
        CrmConfig { sink, fields },
        exchange_config,
    ))
}
