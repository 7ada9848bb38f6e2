//! The configuration file as written: one serde struct per section, every field defaulted and
//! documented, unknown keys rejected, and `TRACKGATE_SECTION__KEY` environment overrides applied
//! before anything is read. Nothing here judges a value; `resolve` does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, ENV_PREFIX, ENV_SEPARATOR};
use crate::common::{ByteSize, Secret};

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
    pub identity: RawIdentity,
    pub rules: RawRules,
    pub outbox: RawOutbox,
    pub delivery: RawDelivery,
    pub crm: RawCrm,
    pub exchange: RawExchange,
    pub catchup: RawCatchup,
    pub sync: RawSync,
    pub nats: RawNats,
    pub options: RawOptions,
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
    #[serde(with = "crate::common::duration")]
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

/// `[identity]`: how a Windows-auth principal (`DOMAIN\user`, from NTLM or Negotiate) finds
/// its user when the directory stores the sign-in name as a UPN (`user@dns.domain`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawIdentity {
    /// A UPN-form sign-in name `user@first.rest` also answers to `first\user` (the NetBIOS
    /// name of a domain is usually its first DNS label), unless another user holds that name
    /// or would get the same alias.
    pub netbios_from_upn: bool,
    /// NetBIOS domain name → DNS domain, e.g. `{ CORP = "contoso.example" }`: `corp\alex` finds
    /// the user whose sign-in name or internal e-mail address is `alex@contoso.example`. Keys
    /// are matched case-insensitively.
    pub ntlm_domains: BTreeMap<String, String>,
}

impl Default for RawIdentity {
    fn default() -> Self {
        RawIdentity {
            netbios_from_upn: true,
            ntlm_domains: BTreeMap::new(),
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
    /// Exchanges waiting for inspection, per worker; when full, new copies are dropped and
    /// counted.
    pub queue: usize,
    /// Inspection threads; 0: one per available core but one, at least one. Each mailbox's
    /// exchanges stay in order on one of them.
    pub workers: usize,
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
            workers: 0,
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
    #[serde(with = "crate::common::duration")]
    pub connect_timeout: Duration,
    /// Time allowed for the upstream to start its response after the request was sent.
    #[serde(with = "crate::common::duration")]
    pub header_timeout: Duration,
    /// Longest silence allowed inside a response body, on ordinary routes.
    #[serde(with = "crate::common::duration")]
    pub idle_timeout: Duration,
    /// Longest silence allowed inside an EWS response body. EWS `GetStreamingEvents` holds a
    /// response open for up to 30 minutes, and the operation is only known from the body.
    #[serde(with = "crate::common::duration")]
    pub streaming_idle_timeout: Duration,
    /// How long an idle pooled upstream connection is kept.
    #[serde(with = "crate::common::duration")]
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// How long to wait for the upstream's `100 Continue` before sending a request body anyway.
    #[serde(with = "crate::common::duration")]
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
    #[serde(with = "crate::common::duration")]
    pub header_read_timeout: Duration,
    /// Longest silence allowed while a client sends a request body.
    #[serde(with = "crate::common::duration")]
    pub body_read_timeout: Duration,
    /// Slowest average a request body may arrive at, per second, once `body_read_timeout` has
    /// passed since it started (a body trickled a byte at a time never falls silent); 0: off.
    pub body_min_rate: ByteSize,
    /// Longest a request body may take in all, however it arrives.
    #[serde(with = "crate::common::duration")]
    pub body_total_timeout: Duration,
    /// Longest a write to a client may wait because the client is not reading its answer
    /// (nginx's `send_timeout`): the connection then ends.
    #[serde(with = "crate::common::duration")]
    pub send_timeout: Duration,
    #[serde(with = "crate::common::duration")]
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
            body_min_rate: ByteSize(1024),
            body_total_timeout: Duration::from_secs(30 * 60),
            send_timeout: Duration::from_secs(60),
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
    #[serde(with = "crate::common::duration")]
    pub drain_delay: Duration,
    /// Time in-flight requests get to finish after the listener closed.
    #[serde(with = "crate::common::duration")]
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
    /// `shared` (one work-stealing runtime for everything) or `per_core` (the proxy on threads
    /// of their own, each with its own listener and upstream pool).
    pub model: RuntimeModel,
    /// Threads: the shared runtime's workers, or the proxy's threads under `per_core`; 0 means
    /// one per core.
    pub worker_threads: usize,
}

/// How the proxy's work is spread over threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeModel {
    /// One multi-threaded, work-stealing runtime serves traffic and background work alike.
    Shared,
    /// nginx's model: one single-threaded runtime per proxy thread, each with its own
    /// `SO_REUSEPORT` listener and upstream pool, so a request never crosses threads;
    /// background work (delivery, admin, directory) runs on a one-thread runtime beside them.
    #[default]
    PerCore,
}

/// `[outbox]`: the durable queue of track decisions.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawOutbox {
    /// `redb` (a file of this gateway's own) or `nats` (a JetStream stream a fleet shares,
    /// configured in `[nats]`).
    pub backend: OutboxBackend,
    /// The redb file. Unset: `<storage.data_dir>/outbox.redb`.
    pub file: Option<PathBuf>,
    /// A group commit (one fsync) holds at most this many operations…
    pub group_commit_records: usize,
    /// …and waits at most this long for more. A crash loses at most the decisions of this
    /// window (they were never acknowledged to anyone).
    #[serde(with = "crate::common::duration")]
    pub group_commit_interval: Duration,
    /// Decisions waiting for the writer; beyond, new ones are refused and counted.
    pub queue: usize,
    /// Records waiting for delivery; beyond, new ones are refused and counted.
    pub max_pending: u64,
    /// How long delivered ids are remembered, so the same decision is not queued again.
    #[serde(with = "crate::common::duration")]
    pub delivered_window: Duration,
}

impl Default for RawOutbox {
    fn default() -> Self {
        // The outbox's own defaults (a test in `app::settings` holds them equal).
        RawOutbox {
            backend: OutboxBackend::Redb,
            file: None,
            group_commit_records: 512,
            group_commit_interval: Duration::from_millis(5),
            queue: 65_536,
            max_pending: 1_000_000,
            delivered_window: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Where the outbox keeps its records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxBackend {
    #[default]
    Redb,
    Nats,
}

/// `[nats]`: the JetStream outbox a fleet of gateways shares (`outbox.backend = "nats"`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawNats {
    /// `nats://host:4222` URLs (`tls://` for TLS); the client learns the rest of the cluster.
    pub servers: Vec<String>,
    /// One way to sign in, or none: user and password, a token, an nkey seed, a creds file.
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    pub nkey_seed: Option<Secret>,
    pub creds_file: Option<PathBuf>,
    pub tls_required: bool,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// This gateway's name in the fleet. Unset: the host name and the admin port.
    pub instance: Option<String>,
    pub stream: String,
    pub subject: String,
    pub consumer: String,
    pub dead_stream: String,
    pub dead_subject: String,
    /// Replicas of the streams `trackgate nats setup` creates: 3 in production.
    pub replicas: usize,
    /// A second publish with the same record id within this window is dropped by the stream.
    #[serde(with = "crate::common::duration")]
    pub duplicate_window: Duration,
    #[serde(with = "crate::common::duration")]
    pub connect_timeout: Duration,
    #[serde(with = "crate::common::duration")]
    pub request_timeout: Duration,
    /// Publishes waiting for the stream's acknowledgement at once.
    pub publish_in_flight: usize,
    /// Records one gateway holds from the shared consumer at once.
    /// Unset: twice what delivery sends at once (`delivery.concurrency` × `batch_size`), so
    /// one gateway never hoards records the others could be delivering.
    pub prefetch: Option<usize>,
    /// A record held this long without an ack (the gateway died) goes to another gateway.
    #[serde(with = "crate::common::duration")]
    pub ack_wait: Duration,
    /// The local spool for decisions NATS cannot take. Unset: `<storage.data_dir>/nats-spool.redb`.
    pub spool_file: Option<PathBuf>,
    /// The KV bucket of the fleet's members and mailbox leases.
    pub lease_bucket: String,
    /// The object store through which one gateway shares the directory it refreshed from
    /// Dataverse (`directory.source = "dataverse"`).
    pub directory_bucket: String,
    /// A lease not renewed for this long lets another gateway take its mailbox.
    #[serde(with = "crate::common::duration")]
    pub lease_ttl: Duration,
}

impl Default for RawNats {
    fn default() -> Self {
        RawNats {
            servers: Vec::new(),
            user: None,
            password: None,
            token: None,
            nkey_seed: None,
            creds_file: None,
            tls_required: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            instance: None,
            stream: "TRACKGATE_OUTBOX".into(),
            subject: "trackgate.outbox".into(),
            consumer: "trackgate-delivery".into(),
            dead_stream: "TRACKGATE_DEAD".into(),
            dead_subject: "trackgate.dead".into(),
            replicas: 3,
            duplicate_window: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            publish_in_flight: 256,
            prefetch: None,
            ack_wait: Duration::from_secs(60),
            spool_file: None,
            lease_bucket: "trackgate_leases".into(),
            directory_bucket: "trackgate_directory".into(),
            lease_ttl: Duration::from_secs(15),
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
    #[serde(with = "crate::common::duration")]
    pub backoff_base: Duration,
    #[serde(with = "crate::common::duration")]
    pub backoff_max: Duration,
    /// Timeout of one request to the CRM or Exchange, from connecting to the last byte of the
    /// answer.
    #[serde(with = "crate::common::duration")]
    pub request_timeout: Duration,
    /// Failures of the CRM in a row (those of one instant count once) that stop deliveries
    /// until a probe finds it back.
    pub outage_failures: u32,
    /// The longest wait between probes while the CRM is down: delivery resumes within about
    /// this long of its return.
    #[serde(with = "crate::common::duration")]
    pub probe_interval: Duration,
    /// Deadline of one probe (Dataverse `WhoAmI`, a webhook `HEAD`).
    #[serde(with = "crate::common::duration")]
    pub probe_timeout: Duration,
    /// How much of a message body reaches the CRM: `full`, `text` or `none`.
    pub body: EmailBody,
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
            outage_failures: 3,
            probe_interval: Duration::from_secs(3),
            probe_timeout: Duration::from_secs(5),
            body: EmailBody::Full,
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
    /// Create each email as its mailbox owner (`CallerObjectId`): owned by that user, with the
    /// application as the one who created it on their behalf, as users expect of their own
    /// mail. The application user needs the "act on behalf of another user" privilege; off,
    /// every email is owned by the application user.
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
            act_as_owner: true,
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
/// `[catchup]`: the sweep that reads every mailbox's folders behind the inline path.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCatchup {
    /// Unset: on when there is an Exchange service client (`[exchange] ews_url`, or the built-in
    /// simulator as the upstream).
    pub enabled: Option<bool>,
    /// Every mailbox is swept at least this often.
    #[serde(with = "crate::common::duration")]
    pub interval: Duration,
    /// Mailboxes swept at once.
    pub concurrency: usize,
}

impl Default for RawCatchup {
    fn default() -> Self {
        RawCatchup {
            enabled: None,
            interval: Duration::from_secs(300),
            concurrency: 2,
        }
    }
}

/// `[sync]`: CRM ⇄ Exchange synchronisation of appointments, contacts and tasks, and CRM mail
/// sent through the mailbox.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSync {
    /// Unset: on when the directory comes from Dataverse and `[exchange] ews_url` is set (or
    /// the built-in simulator is the upstream).
    pub enabled: Option<bool>,
    /// Between two runs of a mailbox whose user sets no interval (`outlooksyncinterval`);
    /// never below the organization's `minoutlooksyncinterval`.
    #[serde(with = "crate::common::duration")]
    pub interval: Duration,
    /// How often the scheduler looks for mailboxes that are due.
    #[serde(with = "crate::common::duration")]
    pub tick: Duration,
    /// Exchange items created per mailbox per run at most.
    pub creates_per_run: usize,
    /// Send CRM emails in status Pending Send through their owners' mailboxes.
    pub send_mail: bool,
    /// The category that makes an Exchange item tracked when the organization names none.
    pub tracking_category: String,
}

impl Default for RawSync {
    fn default() -> Self {
        RawSync {
            enabled: None,
            interval: Duration::from_secs(300),
            tick: Duration::from_secs(10),
            creates_per_run: 200,
            send_mail: true,
            tracking_category: "Tracked to Dynamics 365".into(),
        }
    }
}

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
    /// Requests the service account has in flight at most, the sweep and enrichment together.
    /// Unset: 10.
    pub concurrency: Option<usize>,
}

/// `delivery.body`: how much of a message body reaches the CRM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailBody {
    /// The body as Exchange has it (HTML when it is HTML).
    #[default]
    Full,
    /// Plain text only.
    Text,
    /// No body at all.
    None,
}

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
    #[serde(with = "crate::common::duration::option")]
    pub refresh_interval: Option<Duration>,
    /// Rows per page (`Prefer: odata.maxpagesize`).
    pub page_size: u32,
    #[serde(with = "crate::common::duration")]
    pub request_timeout: Duration,
    /// How long the start waits for the first load before serving the replica (or nothing).
    #[serde(with = "crate::common::duration")]
    pub startup_wait: Duration,
    /// How far back tracked emails are replicated for correlation.
    #[serde(with = "crate::common::duration")]
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

impl RawConfig {
    /// Parses TOML text, then applies environment overrides from `env`.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<RawConfig, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
            fix: "correct the TOML at the line and column shown".into(),
        })?;
        let overridden = apply_env_overrides(&mut table, env)?;
        RawConfig::deserialize(toml::Value::Table(table))
            .map_err(|e| parse_error(&e.to_string(), origin, text, &overridden))
    }

    /// The resolved configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// A value or key the schema refuses, said in the operator's words: where it came from (the
/// file, or the environment variable that set it), what was expected (`a whole number`, not
/// `usize`) and a fix for this kind of mistake.
fn parse_error(
    serde_message: &str,
    origin: &str,
    text: &str,
    overridden: &[(String, String)],
) -> ConfigError {
    // toml names the key on a line of its own: "… \nin `limits.max_connections`".
    let key = serde_message
        .split_once("in `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(key, _)| key.to_owned());
    let first_line = serde_message.lines().next().unwrap_or(serde_message);
    let message = humanize_expected(first_line);
    let origin = match key
        .as_deref()
        .and_then(|k| overridden.iter().find(|(path, _)| path == k))
    {
        Some((_, variable)) => format!("environment variable {variable}"),
        None => match key.as_deref().and_then(|k| line_of(text, k)) {
            Some(line) => format!("{origin}:{line}"),
            None => origin.to_owned(),
        },
    };
    let message = match &key {
        Some(key) => format!("`{key}`: {message}"),
        None => message,
    };
    let fix = if first_line.starts_with("unknown field") {
        "remove or rename the key; README.md's configuration reference lists every key".to_owned()
    } else if let Some((_, expected)) = message.split_once("expected ") {
        format!("write {expected}")
    } else {
        "correct the key or value named above; README.md lists every key".to_owned()
    };
    ConfigError::Parse {
        origin,
        message,
        fix,
    }
}

/// The line (from 1) where `dotted` (`limits.max_connections`, or a section such as
/// `limits`) is written, for the plain `[section]` / `key = value` layout; `None` for other
/// spellings (inline tables, dotted keys), which then name the file alone.
fn line_of(text: &str, dotted: &str) -> Option<usize> {
    let (section, key) = dotted.rsplit_once('.').unwrap_or(("", dotted));
    let mut current = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            let header = header
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("");
            current = header.trim().to_owned();
            if current == dotted {
                return Some(n + 1);
            }
            continue;
        }
        let name = line
            .split('=')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"');
        if current == section && name == key && line.contains('=') {
            return Some(n + 1);
        }
    }
    None
}

/// serde's type names in the words of someone writing a configuration file.
fn humanize_expected(message: &str) -> String {
    let mut out = message.to_owned();
    for (rust, words) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected u8", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected a boolean", "expected true or false"),
    ] {
        if let Some(at) = out.find(rust)
            && !out[at + rust.len()..].starts_with(|c: char| c.is_ascii_alphanumeric())
        {
            out.replace_range(at..at + rust.len(), words);
        }
    }
    out
}

/// Applies `TRACKGATE_SECTION__KEY=value` overrides. Values are read as TOML (numbers, booleans,
/// arrays) when they parse as such, otherwise as strings. Returns each overridden key (dotted)
/// with the variable that set it, so a bad value can be blamed on the variable, not the file.
fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(String, String)>, ConfigError> {
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
        overrides.insert(path, (name, value));
    }
    let mut overridden = Vec::with_capacity(overrides.len());
    for (path, (name, value)) in overrides {
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
        overridden.push((path.join("."), name));
    }
    Ok(overridden)
}

/// `[options]`: the Personal Options page on the admin listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawOptions {
    /// Serve `/options` on the admin listener.
    pub enabled: bool,
    /// `development` (pick a user, no password: the built-in simulator's login), `oidc`
    /// (Entra ID or another OpenID Connect provider) or `off`. Unset: `development` with the
    /// built-in simulator as the upstream, `oidc` when `oidc_issuer` is set, else `off`.
    pub sign_in: Option<String>,
    /// Sign-in names (UPNs) that may open any user's page.
    pub admins: Vec<String>,
    /// An Entra group's object id: members (the ID token's `groups` claim) are admins.
    pub admin_group: Option<String>,
    /// How long a sign-in lasts.
    #[serde(with = "crate::common::duration")]
    pub session_ttl: Duration,
    /// Recent observations kept per mailbox for previews; 0 keeps none (previews then replay
    /// only what `POST /explain` is given).
    pub history_per_mailbox: usize,
    /// Mailboxes whose recent observations are kept (when full, one seen less recently gives way).
    pub history_mailboxes: usize,
    /// The page's own store (the audit trail, and the options Dataverse has no column for).
    /// Unset: `options.redb` in the data directory.
    pub store: Option<PathBuf>,
    /// The OpenID Connect issuer, e.g. `https://login.microsoftonline.com/<tenant>/v2.0`.
    pub oidc_issuer: Option<String>,
    pub oidc_client_id: Option<String>,
    pub oidc_client_secret: Option<Secret>,
    /// The admin listener's address as the browser reaches it (the redirect URI is
    /// `<public_url>/options/callback`).
    pub public_url: Option<String>,
}

impl Default for RawOptions {
    fn default() -> Self {
        RawOptions {
            enabled: true,
            sign_in: None,
            admins: Vec::new(),
            admin_group: None,
            session_ttl: Duration::from_secs(8 * 3600),
            history_per_mailbox: 100,
            history_mailboxes: 1000,
            store: None,
            oidc_issuer: None,
            oidc_client_id: None,
            oidc_client_secret: None,
            public_url: None,
        }
    }
}
