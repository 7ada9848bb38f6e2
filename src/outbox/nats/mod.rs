//! The fleet outbox: track decisions in a NATS JetStream stream that several gateways share.
//! Each decision is published with `Nats-Msg-Id` = its dedup key (the deterministic CRM id), so
//! the stream's duplicate window and Dataverse's conditional upsert together keep it exactly
//! once; a decision counts as stored once the stream acknowledged it. While NATS cannot be
//! reached, decisions wait in a bounded local spool (a redb outbox) and are published when it
//! returns. Delivery on every instance pulls from one durable consumer: a record is acked only
//! after the sink confirmed, nak'd with a delay on a failure of its own, kept by this instance
//! (and its ack deadline extended) while the sink is down or throttled, and terminated after a
//! copy went to the dead-letter stream.
//!
//! Connection, start-up checks and `setup` are in [`connect`]; publishing and the spool in
//! [`publish`]; pulling, holding and settling in [`consume`]; the operator's views (stats,
//! pending, dead letters, retry, skip) in [`browse`].

mod browse;
mod connect;
mod consume;
mod publish;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

use super::{
    DeadLetter, Outbox, OutboxError, OutboxSettings, Record, RedbOutbox, Settlement, Stats,
};
use crate::common::{BehindTraffic, Secret, off_the_workers};
use crate::rules::Decision;

pub use connect::setup;

/// How trackgate proves who it is to NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    None,
    UserPassword {
        user: String,
        password: Secret,
    },
    Token(Secret),
    /// An nkey seed (`SU…`).
    Nkey(Secret),
    /// A `.creds` file (a user JWT and its nkey seed).
    CredsFile(PathBuf),
}

impl NatsAuth {
    /// The configuration key an operator fixes when NATS refuses these credentials.
    pub fn key(&self) -> &'static str {
        match self {
            NatsAuth::None => "nats.user / nats.token / nats.nkey_seed / nats.creds_file",
            NatsAuth::UserPassword { .. } => "nats.user and nats.password",
            NatsAuth::Token(_) => "nats.token",
            NatsAuth::Nkey(_) => "nats.nkey_seed",
            NatsAuth::CredsFile(_) => "nats.creds_file",
        }
    }
}

/// TLS towards NATS: extra roots, a client certificate, or TLS required even where the server
/// does not ask for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    pub required: bool,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Everything the NATS outbox needs, resolved from `[nats]` and `[outbox]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSettings {
    pub servers: Vec<String>,
    pub auth: NatsAuth,
    pub tls: NatsTls,
    /// This gateway's name in the fleet (connection name, lease holder).
    pub instance: String,
    pub stream: String,
    /// Records are published to `<subject>.<key>`.
    pub subject: String,
    pub consumer: String,
    pub dead_stream: String,
    /// Dead letters are published to `<dead_subject>.<key>`.
    pub dead_subject: String,
    /// Replicas of the streams `setup` creates (3 in production, 1 in tests).
    pub replicas: usize,
    /// How long the stream drops a second publish with the same `Nats-Msg-Id`.
    pub duplicate_window: Duration,
    /// The first connection attempt; beyond, the gateway starts and keeps trying.
    pub connect_timeout: Duration,
    /// A JetStream API call or publish acknowledgement.
    pub request_timeout: Duration,
    /// Publishes awaiting the stream's acknowledgement at once.
    pub publish_in_flight: usize,
    /// Records this instance holds from the consumer at once (claimed or about to be).
    pub prefetch: usize,
    /// How long the consumer waits for an ack before offering a record to another instance.
    pub ack_wait: Duration,
    /// The local spool that holds decisions while NATS is unreachable.
    pub spool: PathBuf,
    pub spool_settings: OutboxSettings,
}

impl NatsSettings {
    /// Settings for tests and examples: one server, the default names, a spool at `spool`.
    pub fn local(server: &str, spool: PathBuf) -> NatsSettings {
        NatsSettings {
            servers: vec![server.to_owned()],
            auth: NatsAuth::None,
            tls: NatsTls::default(),
            instance: "trackgate".into(),
            stream: "TRACKGATE_OUTBOX".into(),
            subject: "trackgate.outbox".into(),
            consumer: "trackgate-delivery".into(),
            dead_stream: "TRACKGATE_DEAD".into(),
            dead_subject: "trackgate.dead".into(),
            replicas: 1,
            duplicate_window: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            publish_in_flight: 256,
            prefetch: 256,
            ack_wait: Duration::from_secs(60),
            spool,
            spool_settings: OutboxSettings::default(),
        }
    }

    fn record_subject(&self, key: Uuid) -> String {
        format!("{}.{key}", self.subject)
    }

    fn dead_letter_subject(&self, key: Uuid) -> String {
        format!("{}.{key}", self.dead_subject)
    }
}

/// Why the NATS outbox cannot start or answer. Each names the key to fix.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error(
        "NATS refused trackgate's credentials ({reason}); set {key} to credentials of a NATS user allowed to use the outbox stream"
    )]
    Credentials { key: &'static str, reason: String },
    #[error("cannot set up the connection to NATS ({key}): {reason}")]
    Options { key: &'static str, reason: String },
    #[error(
        "the JetStream stream {name} (nats.{key}) does not exist; create it with `trackgate nats setup`, or set nats.{key} to the stream that holds trackgate's records"
    )]
    MissingStream { key: &'static str, name: String },
    #[error(
        "the JetStream stream {name} (nats.{key}) {reason}; fix it or point nats.{key} at another stream"
    )]
    Stream {
        key: &'static str,
        name: String,
        reason: String,
    },
    #[error(
        "the JetStream consumer {name} (nats.consumer) does not exist on {stream}; create it with `trackgate nats setup`"
    )]
    MissingConsumer { name: String, stream: String },
    #[error(
        "the JetStream consumer {name} (nats.consumer) has another configuration: {reason}; give nats.consumer a name of its own or recreate it with `trackgate nats setup`"
    )]
    Consumer { name: String, reason: String },
    #[error("NATS is unreachable ({servers}): {reason}")]
    Unreachable { servers: String, reason: String },
    #[error("a JetStream request failed: {0}")]
    Request(String),
    #[error("NATS did not answer within {0:?}")]
    Timeout(Duration),
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The fleet outbox's own metrics (no subjects, ids or addresses as labels).
#[derive(Debug, Clone)]
pub struct NatsMetrics {
    pub connected: Gauge,
    pub publish_seconds: Histogram,
    published: Family<ResultLabels, Counter>,
    pub consumer_lag: Gauge,
    pub redeliveries: Counter,
    pub spool_depth: Gauge,
    pub held: Gauge,
}

impl NatsMetrics {
    pub fn register(registry: &mut Registry) -> NatsMetrics {
        let m = NatsMetrics {
            connected: Gauge::default(),
            publish_seconds: Histogram::new([
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0,
            ]),
            published: Family::default(),
            consumer_lag: Gauge::default(),
            redeliveries: Counter::default(),
            spool_depth: Gauge::default(),
            held: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("nats");
        r.register(
            "connected",
            "1 while connected to NATS",
            m.connected.clone(),
        );
        r.register(
            "publish_seconds",
            "From publishing a record to the stream's acknowledgement",
            m.publish_seconds.clone(),
        );
        r.register(
            "published",
            "Records offered to the stream, by result (stored, duplicate, spooled, refused)",
            m.published.clone(),
        );
        r.register(
            "consumer_lag",
            "Records in the stream not yet handed to any instance (read every 5 s and at each pull)",
            m.consumer_lag.clone(),
        );
        r.register(
            "redeliveries",
            "Records delivered to an instance more than once (a nak, or an ack deadline passed)",
            m.redeliveries.clone(),
        );
        r.register(
            "spool_depth",
            "Decisions waiting in the local spool for NATS",
            m.spool_depth.clone(),
        );
        r.register(
            "held",
            "Records this instance holds from the consumer",
            m.held.clone(),
        );
        m
    }

    fn published(&self, result: &'static str) {
        self.published.get_or_create(&ResultLabels { result }).inc();
    }
}

/// What `open` starts beside the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A gateway: publishes, and pulls for delivery when `deliver` is set.
    Gateway { deliver: bool },
    /// An operator's command: reads and changes the streams, pulls nothing.
    Operator,
}

/// State the tasks and the trait methods share.
struct Shared {
    settings: NatsSettings,
    metrics: NatsMetrics,
    outbox_metrics: super::OutboxMetrics,
    connected: AtomicBool,
    /// Why the outbox is degraded (unreachable, a check that failed after reconnecting).
    problem: Mutex<Option<String>>,
    wakeup: Arc<Notify>,
    /// Woken when a held record is settled: the puller may fetch again.
    room: Notify,
    /// Woken when the client (re)connects: the spool drains, the checks run.
    reconnected: Notify,
    held: Mutex<consume::Held>,
}

impl Shared {
    fn set_problem(&self, problem: Option<String>) {
        if let Ok(mut p) = self.problem.lock() {
            *p = problem;
        }
    }
}

/// The NATS JetStream outbox.
pub struct NatsOutbox {
    shared: Arc<Shared>,
    client: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
    /// `None` for an operator's command while a gateway holds the spool.
    spool: Option<Arc<RedbOutbox>>,
    commands: Option<mpsc::Sender<publish::Command>>,
    settles: Option<mpsc::UnboundedSender<consume::Settle>>,
    /// Its own runtime: blocking callers (the admin endpoints, the CLI) wait on it without
    /// holding up the tasks that answer them.
    runtime: BehindTraffic,
}

impl std::fmt::Debug for NatsOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsOutbox")
            .field("stream", &self.shared.settings.stream)
            .field("consumer", &self.shared.settings.consumer)
            .finish_non_exhaustive()
    }
}

impl NatsOutbox {
    /// Connects, checks the streams and the consumer, and starts what `role` needs. Credentials
    /// NATS refuses, a missing stream or a consumer of another configuration fail here; NATS
    /// unreachable does not: the gateway starts, spools, and checks once connected.
    pub async fn open(
        settings: NatsSettings,
        metrics: NatsMetrics,
        outbox_metrics: super::OutboxMetrics,
        role: Role,
    ) -> Result<NatsOutbox, OutboxError> {
        let runtime = BehindTraffic::start("nats", 1).map_err(OutboxError::Thread)?;
        let spool = match RedbOutbox::open(
            &settings.spool,
            settings.spool_settings.clone(),
            outbox_metrics.clone(),
        ) {
            Ok(spool) => Some(Arc::new(spool)),
            // An operator's command beside a running gateway: the gateway holds the spool;
            // the streams are what the fleet shares anyway.
            Err(OutboxError::InUse { .. }) if role == Role::Operator => None,
            Err(e) => return Err(e),
        };
        let shared = Arc::new(Shared {
            settings,
            metrics,
            outbox_metrics,
            connected: AtomicBool::new(false),
            problem: Mutex::new(None),
            wakeup: Arc::new(Notify::new()),
            room: Notify::new(),
            reconnected: Notify::new(),
            held: Mutex::new(consume::Held::default()),
        });
        let connecting = runtime.handle().spawn(connect::connect(shared.clone()));
        let (client, jetstream) = connecting
            .await
            .map_err(|e| NatsError::Request(e.to_string()))??;
        let mut outbox = NatsOutbox {
            shared,
            client,
            jetstream,
            spool,
            commands: None,
            settles: None,
            runtime,
        };
        if let (Role::Gateway { deliver }, Some(spool)) = (role, outbox.spool.clone()) {
            outbox.runtime.handle().spawn(connect::keep_checking(
                outbox.shared.clone(),
                outbox.jetstream.clone(),
            ));
            outbox.start_tasks(spool, deliver);
        }
        Ok(outbox)
    }

    fn start_tasks(&mut self, spool: Arc<RedbOutbox>, deliver: bool) {
        let handle = self.runtime.handle().clone();
        let (commands, receiver) = mpsc::channel(self.shared.settings.spool_settings.queue);
        handle.spawn(publish::run(
            self.shared.clone(),
            self.jetstream.clone(),
            spool.clone(),
            receiver,
        ));
        handle.spawn(publish::drain_spool(
            self.shared.clone(),
            self.jetstream.clone(),
            spool,
        ));
        self.commands = Some(commands);
        if deliver {
            let (settles, receiver) = mpsc::unbounded_channel();
            handle.spawn(consume::run(
                self.shared.clone(),
                self.jetstream.clone(),
                receiver,
            ));
            self.settles = Some(settles);
        }
    }

    /// The JetStream context, for what else the fleet keeps in NATS (the mailbox leases).
    pub fn jetstream(&self) -> &async_nats::jetstream::Context {
        &self.jetstream
    }

    /// True while the client holds a connection to a NATS server.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Runs `work` on the outbox's runtime and waits for it, off tokio's workers.
    fn wait<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, NatsError>> + Send + 'static,
    ) -> Result<T, OutboxError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.handle().spawn(async move {
            let _ = tx.send(work.await);
        });
        let limit = self.shared.settings.request_timeout * 4;
        off_the_workers(|| rx.recv_timeout(limit))
            .map_err(|_| NatsError::Timeout(limit))?
            .map_err(OutboxError::from)
    }

    fn browser(&self) -> browse::Browser {
        browse::Browser {
            settings: self.shared.settings.clone(),
            jetstream: self.jetstream.clone(),
        }
    }
}

impl Outbox for NatsOutbox {
    fn submit(&self, decision: &Decision) -> bool {
        let refuse = || {
            self.shared.metrics.published("refused");
            self.shared.outbox_metrics.enqueued("refused");
            false
        };
        let Some(commands) = &self.commands else {
            return false;
        };
        // Encoded here, on the caller's thread and from the borrowed decision, as the redb
        // outbox does.
        let decision = super::as_stored(decision);
        let Ok((key, payload)) = publish::encode(&decision, crate::common::time::now_ms()) else {
            return refuse();
        };
        if commands
            .try_send(publish::Command::Submit { key, payload })
            .is_err()
        {
            return refuse();
        }
        true
    }

    fn flush(&self) -> Result<(), OutboxError> {
        let Some(commands) = &self.commands else {
            return Ok(());
        };
        // Queued behind everything submitted so far, from the outbox's own runtime: a full
        // queue is waited for there, never by blocking a runtime's thread here.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let commands = commands.clone();
        self.runtime.handle().spawn(async move {
            let _ = commands.send(publish::Command::Flush(tx)).await;
        });
        off_the_workers(|| rx.recv()).map_err(|_| OutboxError::WriterGone)
    }

    fn claim_due(&self, _now_ms: u64, limit: usize) -> Result<Vec<Record>, OutboxError> {
        Ok(consume::claim(&self.shared, limit))
    }

    fn settle(&self, record: &Record, settlement: Settlement) {
        consume::settle(&self.shared, self.settles.as_ref(), record, settlement);
    }

    fn progress(&self, record: &Record, progress: u8) {
        consume::progress(&self.shared, record, progress);
    }

    fn next_due_ms(&self) -> Option<u64> {
        consume::next_due(&self.shared)
    }

    fn wakeup(&self) -> Arc<Notify> {
        self.shared.wakeup.clone()
    }

    fn stats(&self) -> Result<Stats, OutboxError> {
        let in_flight = consume::in_flight(&self.shared);
        let mut stats = self.wait(self.browser().stats())?;
        if let Some(spooled) = self.spool.as_ref().map(|s| s.stats()).transpose()? {
            stats.pending += spooled.pending;
            stats.file_bytes = spooled.file_bytes;
        }
        stats.in_flight = in_flight;
        Ok(stats)
    }

    fn pending(&self, limit: usize) -> Result<Vec<Record>, OutboxError> {
        let mut records = match &self.spool {
            Some(spool) => spool.pending(limit)?,
            None => Vec::new(),
        };
        let left = limit.saturating_sub(records.len());
        records.extend(self.wait(self.browser().pending(left))?);
        Ok(records)
    }

    fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, OutboxError> {
        self.wait(self.browser().dead_letters(limit))
    }

    fn retry(&self, key: Uuid) -> Result<(), OutboxError> {
        match self.wait(self.browser().retry(key))? {
            true => Ok(()),
            false => Err(OutboxError::NotFound {
                what: "dead",
                id: key,
            }),
        }
    }

    fn skip(&self, key: Uuid) -> Result<(), OutboxError> {
        if self.spool.as_ref().is_some_and(|s| s.skip(key).is_ok()) {
            return Ok(());
        }
        match self.wait(self.browser().skip(key))? {
            true => Ok(()),
            false => Err(OutboxError::NotFound {
                what: "pending or dead",
                id: key,
            }),
        }
    }

    fn health(&self) -> Option<String> {
        if !self.shared.connected.load(Ordering::Relaxed) {
            let spooled = self
                .spool
                .as_ref()
                .and_then(|s| s.stats().ok())
                .map_or(0, |s| s.pending);
            return Some(format!(
                "NATS unreachable ({}); {spooled} decisions wait in the local spool",
                self.shared.settings.servers.join(", ")
            ));
        }
        self.shared.problem.lock().ok().and_then(|p| p.clone())
    }
}
