//! Configuration: the TOML file and `TRACKGATE_SECTION__KEY` environment schema, its validation,
//! and one typed section per stage. Stages never see the raw file; sockets and runtime state are
//! not touched here.
//!
//! Loading is two steps: [`RawConfig`] mirrors the file (unknown keys rejected, every field has a
//! default), then [`RawConfig::validate`] turns it into [`Config`], naming the key and the fix for
//! every problem it finds.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod delivery;
mod directory;
pub use delivery::{
    CrmConfig, DeliveryConfig, ExchangeAuthKind, OutboxConfig, RawCrm, RawDataverse, RawDelivery,
    RawExchange, RawOutbox, RawWebhook, SinkConfig, SinkKind,
};
pub use directory::{
    DataverseDirectoryConfig, DirectorySourceKind, RawDataverseDirectory, RawOtherTable,
};

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "TRACKGATE_";
/// Separator between section and key in an environment override (`TRACKGATE_LIMITS__MAX_CONNECTIONS`).
pub const ENV_SEPARATOR: &str = "__";

/// A configuration problem, phrased for the operator who has to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{origin}: {message}\nfix: correct the key or value named above; README.md lists every key"
    )]
    Parse { origin: String, message: String },
    #[error("config key `{key}`: {problem}\nfix: {fix}")]
    Invalid {
        key: String,
        problem: String,
        fix: String,
    },
}

impl ConfigError {
    fn invalid(key: &str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// The configuration key at fault, when the problem is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

// === raw model: what the file says ===

/// The configuration file as written, with defaults filled in. Serialising it (secrets redacted)
/// is what `trackgate check` prints.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    pub listener: RawListener,
    pub upstreams: RawUpstreams,
    pub limits: RawLimits,
    pub admin: RawAdmin,
    pub logging: RawLogging,
    pub shutdown: RawShutdown,
    pub storage: RawStorage,
    pub runtime: RawRuntime,
    pub inspect: RawInspect,
    pub autodiscover: RawAutodiscover,
    pub directory: RawDirectory,
    pub rules: RawRules,
    pub outbox: RawOutbox,
    pub delivery: RawDelivery,
    pub crm: RawCrm,
    pub exchange: RawExchange,
}

/// `[directory]`: where the CRM state the rules read comes from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDirectory {
    /// `file` (the default) or `dataverse` (the organization in `[crm.dataverse]`).
    pub source: DirectorySourceKind,
    /// A directory file (TOML, or JSON by its `.json` extension). Unset: the embedded example
    /// (`fixtures/directory/contoso.toml`), which matches the built-in simulator's fixtures.
    pub file: Option<PathBuf>,
    /// How often the file is checked for changes (SIGHUP reloads it at once).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Largest directory file accepted.
    pub max_file_size: ByteSize,
    pub dataverse: RawDataverseDirectory,
}

impl Default for RawDirectory {
    fn default() -> Self {
        RawDirectory {
            source: DirectorySourceKind::File,
            dataverse: RawDataverseDirectory::default(),
            file: None,
            poll_interval: Duration::from_secs(5),
            max_file_size: ByteSize(1 << 30),
        }
    }
}

/// `[rules]`: the decision engine's memory and bounds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRules {
    /// Bytes of per-mailbox memory (message summaries, folders) kept for decisions about moves,
    /// category changes and sends of drafts; the least used entries go first.
    pub memory: ByteSize,
    /// Emails tracked through the gateway remembered for correlation and duplicate detection.
    pub tracked_memory_entries: u64,
    /// Recipients considered per message.
    pub max_parties: usize,
    /// Recent decisions kept for `GET /decisions`.
    pub recent_decisions: usize,
}

impl Default for RawRules {
    fn default() -> Self {
        RawRules {
            memory: ByteSize(128 << 20),
            tracked_memory_entries: 1_000_000,
            max_parties: 500,
            recent_decisions: 1024,
        }
    }
}

/// `[autodiscover]`: rewriting Exchange's URLs in Autodiscover answers to the gateway's.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAutodiscover {
    /// Rewrite Autodiscover responses and redirect `Location` headers.
    pub rewrite: bool,
    /// The gateway's URL as clients reach it (`https://mail.example.com`). Unset: the scheme of
    /// the listener and the `Host` the client used.
    pub external_url: Option<String>,
    /// Exchange host names whose URLs are rewritten, besides the upstreams' own (for instance the
    /// public name Exchange puts in its answers).
    pub exchange_hosts: Vec<String>,
    /// Largest Autodiscover response rewritten; a larger one gets 502.
    pub max_body: ByteSize,
}

impl Default for RawAutodiscover {
    fn default() -> Self {
        RawAutodiscover {
            rewrite: true,
            external_url: None,
            exchange_hosts: Vec::new(),
            max_body: ByteSize(1 << 20),
        }
    }
}

/// `[inspect]`: the bounded copy of traffic that inspection reads.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawInspect {
    /// Copy and inspect EWS, Graph and Autodiscover exchanges.
    pub enabled: bool,
    /// Largest body copied per request or response; beyond it the copy is truncated (and the
    /// traffic still flows whole).
    pub capture_limit: ByteSize,
    /// Exchanges waiting for inspection; when full, new copies are dropped and counted.
    pub queue: usize,
    /// Bytes all waiting copies may hold together.
    pub memory_budget: ByteSize,
    /// Largest decoded (decompressed) body.
    pub decoded_limit: ByteSize,
    /// Largest decompression ratio accepted.
    pub max_ratio: usize,
    pub xml_max_depth: usize,
    pub xml_max_elements: usize,
}

impl Default for RawInspect {
    fn default() -> Self {
        RawInspect {
            enabled: true,
            capture_limit: ByteSize(4 << 20),
            queue: 1024,
            memory_budget: ByteSize(256 << 20),
            decoded_limit: ByteSize(16 << 20),
            max_ratio: 100,
            xml_max_depth: 64,
            xml_max_elements: 250_000,
        }
    }
}

/// `[listener]`: where clients connect.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawListener {
    /// Address and port to accept client connections on.
    pub address: String,
    /// PEM certificate chain. Without it (and `tls_key`) development certificates are created
    /// in `storage.data_dir` on first start.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP instead of TLS (tests and benchmarks behind a TLS terminator only).
    pub plaintext: bool,
    /// ALPN protocols offered to clients, in preference order.
    pub alpn: Vec<String>,
    /// Peers (CIDRs) whose `X-Forwarded-*` headers are trusted and extended; others are replaced.
    pub trusted_proxies: Vec<String>,
}

impl Default for RawListener {
    fn default() -> Self {
        RawListener {
            address: "127.0.0.1:8443".into(),
            tls_cert: None,
            tls_key: None,
            plaintext: false,
            alpn: vec!["h2".into(), "http/1.1".into()],
            trusted_proxies: Vec::new(),
        }
    }
}

/// `[upstreams]`: the Exchange (and Graph) services behind the gateway.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawUpstreams {
    /// Base URL of Exchange (EWS and everything not routed elsewhere). Unset: the built-in
    /// Exchange simulator is started and used.
    pub ews: Option<String>,
    /// Base URL for Microsoft Graph routes (`/v1.0/…`, `/beta/…`). Unset: those paths go to `ews`.
    pub graph: Option<String>,
    /// Base URL for `/autodiscover/…`. Unset: `ews`.
    pub autodiscover: Option<String>,
    /// PEM bundle of extra CAs to trust for upstream TLS (private Exchange CAs), added to the
    /// system roots.
    pub ca_bundle: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for the upstream to start its response after the request was sent.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Longest silence allowed inside a response body, on ordinary routes.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest silence allowed inside an EWS response body. EWS `GetStreamingEvents` holds a
    /// response open for up to 30 minutes, and the operation is only known from the body.
    #[serde(with = "humantime_serde")]
    pub streaming_idle_timeout: Duration,
    /// How long an idle pooled upstream connection is kept.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// How long to wait for the upstream's `100 Continue` before sending a request body anyway.
    #[serde(with = "humantime_serde")]
    pub expect_continue_timeout: Duration,
    /// Forward the client's `Host` instead of the upstream's authority.
    pub preserve_host: bool,
}

impl Default for RawUpstreams {
    fn default() -> Self {
        RawUpstreams {
            ews: None,
            graph: None,
            autodiscover: None,
            ca_bundle: None,
            connect_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(100),
            idle_timeout: Duration::from_secs(120),
            streaming_idle_timeout: Duration::from_secs(35 * 60),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 512,
            expect_continue_timeout: Duration::from_secs(1),
            preserve_host: false,
        }
    }
}

/// `[limits]`: bounds on what one client may send.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: usize,
    pub max_header_count: usize,
    pub max_header_bytes: ByteSize,
    pub max_request_body: ByteSize,
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest silence allowed while a client sends a request body.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_connections: 10_000,
            max_header_count: 100,
            max_header_bytes: ByteSize(64 * 1024),
            max_request_body: ByteSize(256 * 1024 * 1024),
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            h2_max_concurrent_streams: 100,
        }
    }
}

/// `[admin]`: health, readiness and metrics listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAdmin {
    /// Keep this on loopback unless a firewall guards it.
    pub address: String,
    /// Bearer token required by the admin endpoints that show CRM data or change state
    /// (`/explain`, `/decisions`). Unset: they are open to whoever reaches the admin address.
    pub token: Option<Secret>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            address: "127.0.0.1:9901".into(),
            token: None,
        }
    }
}

/// `[logging]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLogging {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter (`info`, `trackgate=debug,info`); `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for RawLogging {
    fn default() -> Self {
        RawLogging {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

/// `[shutdown]`: the SIGTERM drain sequence.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawShutdown {
    /// Time between readiness turning false and the listener closing, so load balancers notice.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// Time in-flight requests get to finish after the listener closed.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
}

impl Default for RawShutdown {
    fn default() -> Self {
        RawShutdown {
            drain_delay: Duration::ZERO,
            grace_period: Duration::from_secs(30),
        }
    }
}

/// `[storage]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawStorage {
    /// Where trackgate keeps its state (development certificates now; the outbox later).
    pub data_dir: PathBuf,
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            data_dir: PathBuf::from("trackgate-data"),
        }
    }
}

/// `[runtime]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRuntime {
    /// Tokio worker threads; 0 means one per core.
    pub worker_threads: usize,
}

// === value types ===

/// A byte count written as an integer or with a unit (`64KiB`, `4MiB`, `1GiB`, `512KB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Option<ByteSize> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let value: u64 = digits.parse().ok()?;
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            _ => return None,
        };
        value.checked_mul(factor).map(ByteSize)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n >= size && n.is_multiple_of(size) {
                return write!(f, "{}{unit}", n / size);
            }
        }
        write!(f, "{n}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(u64),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Number(n) => Ok(ByteSize(n)),
            Either::Text(t) => ByteSize::parse(&t).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid size {t:?}: write a number of bytes or one with a unit such as 64KiB, 4MiB, 1GiB"
                ))
            }),
        }
    }
}

/// A secret from the configuration. Its `Debug` and serialised forms are redacted, so printing a
/// configuration never leaks it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

// === validated model: what the stages get ===

/// The validated configuration, one section per stage.
#[derive(Debug, Clone)]
pub struct Config {
    pub listener: ListenerConfig,
    pub upstreams: UpstreamsConfig,
    pub limits: LimitsConfig,
    pub admin: AdminConfig,
    pub logging: LoggingConfig,
    pub shutdown: ShutdownConfig,
    pub storage: StorageConfig,
    pub runtime: RuntimeConfig,
    pub inspect: InspectConfig,
    pub autodiscover: AutodiscoverConfig,
    pub directory: DirectoryConfig,
    pub rules: RulesConfig,
    pub outbox: OutboxConfig,
    pub delivery: DeliveryConfig,
    pub crm: CrmConfig,
    /// The Exchange service client for enrichment; `None` when no URL is configured.
    pub exchange: Option<crate::exchange::ExchangeSettings>,
    /// The file this came from, for SIGHUP reloads; `None` on embedded defaults.
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub tls: ListenerTls,
    pub alpn: Vec<Vec<u8>>,
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerTls {
    /// Plain HTTP.
    Off,
    /// Certificate and key files given by the operator.
    Files { cert: PathBuf, key: PathBuf },
    /// Development certificates in the data directory, created on first start.
    Development { dir: PathBuf },
}

/// Where proxied traffic goes.
// Built once per (re)load, never on the request path: size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// The built-in Exchange simulator, started in-process on a loopback port.
    Simulator,
    Remote {
        ews: Uri,
        graph: Uri,
        autodiscover: Uri,
    },
}

#[derive(Debug, Clone)]
pub struct UpstreamsConfig {
    pub target: UpstreamTarget,
    pub ca_bundle: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub streaming_idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub expect_continue_timeout: Duration,
    pub preserve_host: bool,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub max_connections: usize,
    pub max_header_count: usize,
    pub max_header_bytes: usize,
    pub max_request_body: u64,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub address: SocketAddr,
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LoggingConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    pub drain_delay: Duration,
    pub grace_period: Duration,
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AutodiscoverConfig {
    pub rewrite: bool,
    pub external_url: Option<String>,
    /// Lower-case host names, without ports.
    pub exchange_hosts: Vec<String>,
    pub max_body: usize,
}

#[derive(Debug, Clone)]
pub struct InspectConfig {
    pub enabled: bool,
    pub capture_limit: usize,
    pub queue: usize,
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

#[derive(Debug, Clone)]
pub struct RulesConfig {
    pub memory: u64,
    pub tracked_memory_entries: u64,
    pub max_parties: usize,
    pub recent_decisions: usize,
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub worker_threads: Option<usize>,
}

// === loading ===

impl RawConfig {
    /// Parses TOML text, then applies environment overrides from `env`.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<RawConfig, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        apply_env_overrides(&mut table, env)?;
        RawConfig::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })
    }

    /// The resolved configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

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

        let listener = {
            let l = &self.listener;
            let address = parse_addr("listener.address", &l.address)?;
            let tls = match (&l.tls_cert, &l.tls_key, l.plaintext) {
                (_, _, true) => ListenerTls::Off,
                (Some(cert), Some(key), false) => {
                    let (cert, key) = (anchor(cert), anchor(key));
                    readable_file("listener.tls_cert", &cert, "a PEM certificate chain")?;
                    readable_file("listener.tls_key", &key, "a PEM private key")?;
                    ListenerTls::Files { cert, key }
                }
                (Some(_), None, false) => {
                    return Err(ConfigError::invalid(
                        "listener.tls_key",
                        "missing while listener.tls_cert is set",
                        "set tls_key to the certificate's PEM private key, or remove tls_cert to use development certificates",
                    ));
                }
                (None, Some(_), false) => {
                    return Err(ConfigError::invalid(
                        "listener.tls_cert",
                        "missing while listener.tls_key is set",
                        "set tls_cert to the PEM certificate chain, or remove tls_key to use development certificates",
                    ));
                }
                (None, None, false) => ListenerTls::Development {
                    dir: data_dir.join("certs"),
                },
            };
            if l.alpn.is_empty() {
                return Err(ConfigError::invalid(
                    "listener.alpn",
                    "is empty",
                    r#"offer at least one protocol: alpn = ["h2", "http/1.1"]"#,
                ));
            }
            for proto in &l.alpn {
                if proto != "h2" && proto != "http/1.1" {
                    return Err(ConfigError::invalid(
                        "listener.alpn",
                        format!("unsupported protocol {proto:?}"),
                        r#"use "h2" and/or "http/1.1""#,
                    ));
                }
            }
            let mut trusted_proxies = Vec::new();
            for cidr in &l.trusted_proxies {
                let net = cidr
                    .parse::<IpNet>()
                    .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        ConfigError::invalid(
                            "listener.trusted_proxies",
                            format!("{cidr:?} is not an IP address or CIDR"),
                            "write entries such as \"10.0.0.0/8\" or \"192.0.2.7\"",
                        )
                    })?;
                trusted_proxies.push(net);
            }
            ListenerConfig {
                address,
                tls,
                alpn: l.alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
                trusted_proxies,
            }
        };

        let upstreams = {
            let u = &self.upstreams;
            let target = match &u.ews {
                None => {
                    if u.graph.is_some() || u.autodiscover.is_some() {
                        return Err(ConfigError::invalid(
                            "upstreams.ews",
                            "missing while upstreams.graph or upstreams.autodiscover is set",
                            "set ews to the Exchange base URL, e.g. \"https://exchange.example.com\"",
                        ));
                    }
                    UpstreamTarget::Simulator
                }
                Some(ews) => {
                    let ews = parse_base_url("upstreams.ews", ews)?;
                    let graph = match &u.graph {
                        Some(g) => parse_base_url("upstreams.graph", g)?,
                        None => ews.clone(),
                    };
                    let autodiscover = match &u.autodiscover {
                        Some(a) => parse_base_url("upstreams.autodiscover", a)?,
                        None => ews.clone(),
                    };
                    UpstreamTarget::Remote {
                        ews,
                        graph,
                        autodiscover,
                    }
                }
            };
            let ca_bundle = match &u.ca_bundle {
                Some(p) => {
                    let p = anchor(p);
                    readable_file("upstreams.ca_bundle", &p, "a PEM file of CA certificates")?;
                    Some(p)
                }
                None => None,
            };
            for (key, d) in [
                ("upstreams.connect_timeout", u.connect_timeout),
                ("upstreams.header_timeout", u.header_timeout),
                ("upstreams.idle_timeout", u.idle_timeout),
                ("upstreams.streaming_idle_timeout", u.streaming_idle_timeout),
            ] {
                positive(key, d)?;
            }
            if u.streaming_idle_timeout < u.idle_timeout {
                return Err(ConfigError::invalid(
                    "upstreams.streaming_idle_timeout",
                    "is shorter than upstreams.idle_timeout",
                    "set it to at least idle_timeout; EWS streaming notifications need up to 30 minutes (default 35m)",
                ));
            }
            UpstreamsConfig {
                target,
                ca_bundle,
                connect_timeout: u.connect_timeout,
                header_timeout: u.header_timeout,
                idle_timeout: u.idle_timeout,
                streaming_idle_timeout: u.streaming_idle_timeout,
                pool_idle_timeout: u.pool_idle_timeout,
                pool_max_idle_per_host: u.pool_max_idle_per_host,
                expect_continue_timeout: u.expect_continue_timeout,
                preserve_host: u.preserve_host,
            }
        };

        let limits = {
            let l = &self.limits;
            at_least("limits.max_connections", l.max_connections as u64, 1)?;
            at_least("limits.max_header_count", l.max_header_count as u64, 16)?;
            at_least("limits.max_header_bytes", l.max_header_bytes.0, 8192)?;
            at_least(
                "limits.h2_max_concurrent_streams",
                l.h2_max_concurrent_streams.into(),
                1,
            )?;
            for (key, d) in [
                ("limits.header_read_timeout", l.header_read_timeout),
                ("limits.body_read_timeout", l.body_read_timeout),
                ("limits.tls_handshake_timeout", l.tls_handshake_timeout),
            ] {
                positive(key, d)?;
            }
            LimitsConfig {
                max_connections: l.max_connections,
                max_header_count: l.max_header_count,
                max_header_bytes: usize::try_from(l.max_header_bytes.0).unwrap_or(usize::MAX),
                max_request_body: l.max_request_body.0,
                header_read_timeout: l.header_read_timeout,
                body_read_timeout: l.body_read_timeout,
                tls_handshake_timeout: l.tls_handshake_timeout,
                h2_max_concurrent_streams: l.h2_max_concurrent_streams,
            }
        };

        let admin = AdminConfig {
            address: parse_addr("admin.address", &self.admin.address)?,
            token: self.admin.token.clone(),
        };
        if let Some(token) = &admin.token
            && token.expose().len() < 16
        {
            return Err(ConfigError::invalid(
                "admin.token",
                "is shorter than 16 characters",
                "use a long random value, e.g. the output of `openssl rand -hex 32`",
            ));
        }

        let logging = LoggingConfig {
            format: match self.logging.format.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError::invalid(
                        "logging.format",
                        format!("unknown format {other:?}"),
                        "use \"text\" or \"json\"",
                    ));
                }
            },
            level: self.logging.level.clone(),
        };
        if tracing_subscriber::EnvFilter::try_new(&logging.level).is_err() {
            return Err(ConfigError::invalid(
                "logging.level",
                format!("{:?} is not a valid filter", logging.level),
                "use a level such as \"info\" or a filter such as \"trackgate=debug,info\"",
            ));
        }

        let inspect = {
            let i = &self.inspect;
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
            let size = |b: ByteSize| usize::try_from(b.0).unwrap_or(usize::MAX);
            InspectConfig {
                enabled: i.enabled,
                capture_limit: size(i.capture_limit),
                queue: i.queue,
                memory_budget: i.memory_budget.0,
                decoded_limit: size(i.decoded_limit),
                max_ratio: i.max_ratio,
                xml_max_depth: i.xml_max_depth,
                xml_max_elements: i.xml_max_elements,
            }
        };

        let autodiscover = {
            let a = &self.autodiscover;
            if let Some(url) = &a.external_url
                && !crate::proxy::autodiscover::valid_external_url(url)
            {
                return Err(ConfigError::invalid(
                    "autodiscover.external_url",
                    format!("{url:?} is not a plain scheme://host[:port]"),
                    "write the URL clients use for the gateway, e.g. \"https://mail.example.com\", with no path",
                ));
            }
            let mut hosts = Vec::new();
            for host in &a.exchange_hosts {
                let h = host.trim().to_ascii_lowercase();
                if h.is_empty()
                    || !h
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                {
                    return Err(ConfigError::invalid(
                        "autodiscover.exchange_hosts",
                        format!("{host:?} is not a host name"),
                        "list bare host names such as \"mail.contoso.com\" (no scheme or port)",
                    ));
                }
                hosts.push(h);
            }
            for (_, uri) in [
                ("ews", &self.upstreams.ews),
                ("graph", &self.upstreams.graph),
                ("autodiscover", &self.upstreams.autodiscover),
            ] {
                if let Some(host) = uri
                    .as_deref()
                    .and_then(|u| u.parse::<Uri>().ok())
                    .and_then(|u| u.host().map(str::to_ascii_lowercase))
                    && !hosts.contains(&host)
                {
                    hosts.push(host);
                }
            }
            at_least("autodiscover.max_body", a.max_body.0, 4096)?;
            AutodiscoverConfig {
                rewrite: a.rewrite,
                external_url: a.external_url.clone(),
                exchange_hosts: hosts,
                max_body: usize::try_from(a.max_body.0).unwrap_or(usize::MAX),
            }
        };

        let directory = {
            let d = &self.directory;
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
                    Some(directory::validate(
                        &d.dataverse,
                        &self.crm.dataverse,
                        &data_dir,
                        &anchor,
                    )?)
                }
            };
            DirectoryConfig {
                dataverse,
                file,
                poll_interval: d.poll_interval,
                max_file_size: d.max_file_size.0,
            }
        };
        let rules = {
            let r = &self.rules;
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
            RulesConfig {
                memory: r.memory.0,
                tracked_memory_entries: r.tracked_memory_entries,
                max_parties: r.max_parties,
                recent_decisions: r.recent_decisions,
            }
        };

        let (outbox, delivery, crm, exchange) = delivery::validate(
            &self.outbox,
            &self.delivery,
            &self.crm,
            &self.exchange,
            &data_dir,
            &anchor,
        )?;

        Ok(Config {
            outbox,
            delivery,
            crm,
            exchange,
            listener,
            inspect,
            autodiscover,
            directory,
            rules,
            upstreams,
            limits,
            admin,
            logging,
            shutdown: ShutdownConfig {
                drain_delay: self.shutdown.drain_delay,
                grace_period: self.shutdown.grace_period,
            },
            storage: StorageConfig { data_dir },
            runtime: RuntimeConfig {
                worker_threads: match self.runtime.worker_threads {
                    0 => None,
                    n => Some(n),
                },
            },
            source: None,
        })
    }
}

impl Config {
    /// Loads and validates a configuration file, with environment overrides.
    pub fn load(path: &Path) -> Result<(RawConfig, Config), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let raw = RawConfig::from_toml(&text, &path.display().to_string(), std::env::vars())?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut config = raw.validate(base)?;
        config.source = Some(path.to_path_buf());
        Ok((raw, config))
    }

    /// The embedded defaults (plus environment overrides): the gateway in front of the built-in
    /// Exchange simulator, on TLS with development certificates.
    pub fn embedded() -> Result<(RawConfig, Config), ConfigError> {
        let raw = RawConfig::from_toml("", "embedded defaults", std::env::vars())?;
        let config = raw.validate(Path::new("."))?;
        Ok((raw, config))
    }
}

/// Applies `TRACKGATE_SECTION__KEY=value` overrides. Values are read as TOML (numbers, booleans,
/// arrays) when they parse as such, otherwise as strings.
fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut overrides = BTreeMap::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains(ENV_SEPARATOR) {
            continue; // not a key override (e.g. TRACKGATE_CONFIG)
        }
        let path: Vec<String> = rest
            .split(ENV_SEPARATOR)
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.iter().any(|s| s.is_empty()) {
            return Err(ConfigError::invalid(
                &name,
                "has an empty section or key",
                "write overrides as TRACKGATE_SECTION__KEY, e.g. TRACKGATE_LIMITS__MAX_CONNECTIONS=500",
            ));
        }
        overrides.insert(path, value);
    }
    for (path, value) in overrides {
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        let mut node = &mut *table;
        let (last, sections) = path.split_last().unwrap_or((&path[0], &[]));
        for section in sections {
            let entry = node
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::invalid(
                        &path.join("."),
                        "the environment override names a key inside a value that is not a section",
                        "check the variable name: TRACKGATE_SECTION__KEY",
                    ));
                }
            };
        }
        node.insert(last.clone(), parsed);
    }
    Ok(())
}

fn parse_addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        ConfigError::invalid(
            key,
            format!("{text:?} is not an address with a port"),
            "write it as \"127.0.0.1:8443\" or \"[::1]:8443\"",
        )
    })
}

fn parse_base_url(key: &str, text: &str) -> Result<Uri, ConfigError> {
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

fn readable_file(key: &str, path: &Path, what: &str) -> Result<(), ConfigError> {
    std::fs::File::open(path).map(drop).map_err(|e| {
        ConfigError::invalid(
            key,
            format!("cannot read {}: {e}", path.display()),
            format!("point it at {what} readable by trackgate (relative paths start at the config file's folder)"),
        )
    })
}

fn positive(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::invalid(
            key,
            "is zero",
            "give a positive duration such as \"30s\" or \"5m\"",
        ));
    }
    Ok(())
}

fn at_least(key: &str, value: u64, min: u64) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::invalid(
            key,
            format!("{value} is below the minimum of {min}"),
            format!("set it to {min} or more"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(text: &str) -> Result<Config, ConfigError> {
        RawConfig::from_toml(text, "test", Vec::new())?.validate(Path::new("."))
    }

    #[test]
    fn empty_file_means_embedded_simulator_on_dev_tls() {
        let c = validate("").unwrap();
        assert_eq!(c.upstreams.target, UpstreamTarget::Simulator);
        assert!(matches!(c.listener.tls, ListenerTls::Development { .. }));
        assert_eq!(c.admin.address.ip().to_string(), "127.0.0.1");
    }

    #[test]
    fn a_dataverse_directory_needs_no_file_and_its_mistakes_name_the_key() {
        let base =
            "[directory]\nsource = \"dataverse\"\n[crm.dataverse]\nurl = \"http://127.0.0.1:1\"\n";
        let c = validate(base).unwrap();
        let dv = c.directory.dataverse.expect("a dataverse source");
        assert!(c.directory.file.is_none());
        assert_eq!(dv.source.page_size, 5000);
        assert!(dv.source.replica_file.ends_with("directory.redb"));
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
            let e = validate(&text).unwrap_err();
            assert_eq!(e.key(), Some(key), "{e}");
        }
        let e = validate(&base.replace("source =", "file = \"Cargo.toml\"\nsource =")).unwrap_err();
        assert_eq!(e.key(), Some("directory.file"), "{e}");
        assert!(e.to_string().contains("dataverse"), "{e}");
        let with_table = format!(
            "{base}[[directory.dataverse.tables]]\nentity = \"new_vendor\"\naddresses = [\"emailaddress\"]\n[directory.dataverse.offline_filters]\nnew_vendors = \"owned\"\n"
        );
        let c = validate(&with_table).unwrap();
        let tables = c.directory.dataverse.unwrap().source.other_tables;
        assert_eq!(tables[0].set, "new_vendors");
        assert_eq!(tables[0].key, "new_vendorid");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = validate("[limits]\nmax_conections = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_conections"), "{e}");
    }

    #[test]
    fn bad_url_names_key_and_fix() {
        let e = validate("[upstreams]\news = \"exchange.example.com\"\n").unwrap_err();
        assert_eq!(e.key(), Some("upstreams.ews"));
        assert!(e.to_string().contains("fix:"));
    }

    #[test]
    fn env_overrides_are_typed_and_nested() {
        let raw = RawConfig::from_toml(
            "[limits]\nmax_connections = 5\n",
            "test",
            vec![
                ("TRACKGATE_LIMITS__MAX_CONNECTIONS".into(), "7".into()),
                (
                    "TRACKGATE_UPSTREAMS__EWS".into(),
                    "https://ex.example".into(),
                ),
                ("TRACKGATE_CONFIG".into(), "ignored.toml".into()),
                ("OTHER__THING".into(), "x".into()),
            ],
        )
        .unwrap();
        assert_eq!(raw.limits.max_connections, 7);
        assert_eq!(raw.upstreams.ews.as_deref(), Some("https://ex.example"));
    }

    #[test]
    fn env_override_of_unknown_key_is_rejected() {
        let e = RawConfig::from_toml(
            "",
            "test",
            vec![("TRACKGATE_LIMITS__NOPE".into(), "1".into())],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn secrets_are_redacted_when_printed() {
        let raw = RawConfig::from_toml(
            "[admin]\ntoken = \"0123456789abcdef-very-secret\"\n",
            "test",
            Vec::new(),
        )
        .unwrap();
        let printed = raw.to_redacted_toml();
        assert!(!printed.contains("very-secret"), "{printed}");
        assert!(printed.contains("<redacted>"));
        assert!(!format!("{raw:?}").contains("very-secret"));
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(ByteSize::parse("64KiB"), Some(ByteSize(65536)));
        assert_eq!(ByteSize::parse("2 GiB"), Some(ByteSize(2 << 30)));
        assert_eq!(ByteSize::parse("12"), Some(ByteSize(12)));
        assert_eq!(ByteSize::parse("12 parsecs"), None);
        assert_eq!(ByteSize(4 << 20).to_string(), "4MiB");
    }

    #[test]
    fn half_configured_tls_is_rejected() {
        let e = validate("[listener]\ntls_cert = \"x.pem\"\n").unwrap_err();
        assert_eq!(e.key(), Some("listener.tls_key"));
    }
}
