//! Validation: every raw section checked and turned into its typed form, naming the key and the
//! fix for each problem found. One file per part of the flow; this one orders them and holds
//! the checks they share.

mod delivery;
mod edge;
mod fleet;
mod options;
mod tracking;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;

pub use delivery::{
    CatchupConfig, CrmConfig, DataverseConnection, DeliveryConfig, EXCHANGE_CONCURRENCY,
    ExchangeAuthConfig, ExchangeConfig, OutboxConfig, SinkConfig, SyncConfig,
};
pub use edge::{
    AdminConfig, AutodiscoverConfig, LimitsConfig, ListenerConfig, ListenerTls, LogFormat,
    LoggingConfig, UpstreamTarget, UpstreamsConfig,
};
pub use fleet::{NatsConfig, NatsCredentials};
pub use options::{OidcConfig, OptionsConfig, SignIn};
pub use tracking::{
    DataverseDirectoryConfig, DirectoryConfig, IdentityConfig, InspectConfig, OtherTableConfig,
    RulesConfig, logical_name,
};

use super::raw::RawConfig;
use super::{Config, ConfigError, RuntimeConfig, ShutdownConfig, StorageConfig};

impl RawConfig {
    /// Checks every value and builds the typed configuration. `base_dir` anchors relative paths
    /// (the config file's folder).
    pub fn validate(&self, base_dir: &Path) -> Result<Config, ConfigError> {
        let anchor = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base_dir.join(p)
            }
        };
        let data_dir = anchor(&self.storage.data_dir);
        // In the order of the file's sections, so that of several mistakes the first is named.
        let listener = edge::listener(&self.listener, &data_dir, &anchor)?;
        let upstreams = edge::upstreams(&self.upstreams, &anchor)?;
        let limits = edge::limits(&self.limits)?;
        let admin = edge::admin(&self.admin)?;
        let logging = edge::logging(&self.logging)?;
        let inspect = tracking::inspect(&self.inspect)?;
        let autodiscover = edge::autodiscover(&self.autodiscover, &self.upstreams)?;
        let directory =
            tracking::directory(&self.directory, &self.crm.dataverse, &data_dir, &anchor)?;
        let identity = tracking::identity(&self.identity)?;
        let rules = tracking::rules(&self.rules)?;
        let (outbox, delivery, crm, exchange) = delivery::validate(
            &self.outbox,
            &self.delivery,
            &self.crm,
            &self.exchange,
            &data_dir,
            &anchor,
        )?;
        let catchup = delivery::catchup(&self.catchup)?;
        let sync = delivery::sync(&self.sync)?;
        let nats = fleet::nats(self.outbox.backend, &self.nats, &data_dir, &anchor)?;
        let simulator_upstream = matches!(upstreams.target, UpstreamTarget::Simulator);
        let options = options::options(
            &self.options,
            simulator_upstream,
            admin.address,
            &data_dir,
            &anchor,
        )?;
        Ok(Config {
            options,
            nats,
            catchup,
            sync,
            listener,
            upstreams,
            limits,
            admin,
            logging,
            inspect,
            autodiscover,
            directory,
            identity,
            rules,
            outbox,
            delivery,
            crm,
            exchange,
            shutdown: ShutdownConfig {
                drain_delay: self.shutdown.drain_delay,
                grace_period: self.shutdown.grace_period,
            },
            storage: StorageConfig { data_dir },
            runtime: RuntimeConfig {
                model: self.runtime.model,
                worker_threads: match self.runtime.worker_threads {
                    0 => None,
                    n => Some(n),
                },
            },
            source: None,
            overrides: Vec::new(),
        })
    }
}

pub(super) fn parse_addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        ConfigError::invalid(
            key,
            format!("{text:?} is not an address with a port"),
            "write it as \"127.0.0.1:8443\" or \"[::1]:8443\"",
        )
    })
}

pub(super) fn parse_base_url(key: &str, text: &str) -> Result<Uri, ConfigError> {
    let fix = "write an absolute http(s) URL such as \"https://exchange.example.com\"";
    let uri: Uri = text
        .parse()
        .map_err(|e| ConfigError::invalid(key, format!("{text:?} is not a URL ({e})"), fix))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(ConfigError::invalid(
                key,
                format!("{text:?} has no http or https scheme"),
                fix,
            ));
        }
    }
    if uri.authority().is_none() {
        return Err(ConfigError::invalid(
            key,
            format!("{text:?} has no host"),
            fix,
        ));
    }
    if uri.query().is_some() {
        return Err(ConfigError::invalid(
            key,
            "has a query string",
            "remove the query; only scheme, host, port and an optional path prefix are used",
        ));
    }
    Ok(uri)
}

pub(super) fn readable_file(key: &str, path: &Path, what: &str) -> Result<(), ConfigError> {
    std::fs::File::open(path).map(drop).map_err(|e| {
        ConfigError::invalid(
            key,
            format!("cannot read {}: {e}", path.display()),
            format!("point it at {what} readable by trackgate (relative paths start at the config file's folder)"),
        )
    })
}

pub(super) fn positive(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::invalid(
            key,
            "is zero",
            "give a positive duration such as \"30s\" or \"5m\"",
        ));
    }
    Ok(())
}

pub(super) fn at_least(key: &str, value: u64, min: u64) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::invalid(
            key,
            format!("{value} is below the minimum of {min}"),
            format!("set it to {min} or more"),
        ));
    }
    Ok(())
}
