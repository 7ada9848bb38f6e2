//! The outbox: the durable queue between the rules and delivery. It owns the records (a track
//! decision with its dedup key, attempts, next-attempt time and last error), the group commit,
//! deduplication, the delivered-key window and the dead letters. It knows nothing of the CRM:
//! delivery claims due records and settles each one with an outcome.
//!
//! The embedded backend is redb ([`store::RedbOutbox`]); a fleet shares a NATS JetStream one
//! ([`nats::NatsOutbox`]). The rest of the gateway sees only the [`Outbox`] trait.

mod known;
pub mod nats;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::rules::Decision;

pub use nats::{NatsOutbox, NatsSettings};
pub use store::RedbOutbox;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox store {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error(
        "outbox store {path} is open in another process (a running gateway?); use the admin endpoints, or stop it first"
    )]
    InUse { path: String },
    #[error("cannot encode or decode an outbox record: {0}")]
    Codec(#[from] serde_json::Error),
    #[error("the outbox writer has stopped")]
    WriterGone,
    #[error("no {what} record with id {id}")]
    NotFound { what: &'static str, id: Uuid },
    #[error("cannot start the outbox writer: {0}")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Nats(#[from] nats::NatsError),
}

/// One queued delivery: a track decision and its bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in enqueue order; delivery goes oldest first.
    pub seq: u64,
    /// The dedup key: the CRM id for an email (or a key derived from it for a regarding
    /// update). The same decision twice is stored once.
    pub key: Uuid,
    pub enqueued_ms: u64,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What the sink already confirmed of a multi-step delivery (its own bits, opaque here),
    /// so a retry or a restart resumes at the step that is left.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub progress: u8,
    pub decision: Decision,
}

fn is_zero(progress: &u8) -> bool {
    *progress == 0
}

/// A record that failed permanently or too often, with the CRM's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub record: Record,
    pub failed_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The response body, cut to a few KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    pub error: String,
}

/// How delivery settles a claimed record.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// The sink confirmed: the record leaves and its key is remembered.
    Delivered,
    /// Try again at `at_ms`; `counted` says whether this attempt counts toward the limit
    /// (a sink-wide outage or throttling does not).
    Retry {
        at_ms: u64,
        counted: bool,
        error: String,
    },
    /// Permanently refused.
    Dead {
        status: Option<u16>,
        response: Option<String>,
        error: String,
    },
}

/// Numbers for `outbox stats` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub pending: u64,
    pub in_flight: u64,
    pub dead: u64,
    pub delivered_keys: u64,
    pub oldest_pending_age_seconds: f64,
    pub next_seq: u64,
    pub file_bytes: u64,
}

/// What the rest of the gateway sees of an outbox.
pub trait Outbox: Send + Sync + 'static {
    /// Hands a track decision to the writer without waiting for the commit. Returns `false`
    /// when it cannot be queued (the outbox is full or stopping); that is counted.
    fn submit(&self, decision: &Decision) -> bool;
    /// Waits until everything submitted before this call is committed.
    fn flush(&self) -> Result<(), OutboxError>;
    /// Up to `limit` records due at `now_ms`, oldest first; they stay claimed (not offered
    /// again) until settled.
    fn claim_due(&self, now_ms: u64, limit: usize) -> Result<Vec<Record>, OutboxError>;
    /// Settles a claimed record (committed with the next group), with its `progress`.
    fn settle(&self, record: &Record, settlement: Settlement);
    /// Adds to a claimed record's `progress` (committed with the next group, not waited
    /// for): a crash before the settlement resumes after the steps confirmed so far.
    fn progress(&self, record: &Record, progress: u8);
    /// When the earliest unclaimed record becomes due.
    fn next_due_ms(&self) -> Option<u64>;
    /// Woken when records are committed or rescheduled.
    fn wakeup(&self) -> Arc<Notify>;
    fn stats(&self) -> Result<Stats, OutboxError>;
    fn pending(&self, limit: usize) -> Result<Vec<Record>, OutboxError>;
    fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, OutboxError>;
    /// Moves a dead letter back to pending, due now, attempts reset.
    fn retry(&self, key: Uuid) -> Result<(), OutboxError>;
    /// Drops a pending or dead record without delivering it; its key is remembered so the same
    /// decision is not queued again.
    fn skip(&self, key: Uuid) -> Result<(), OutboxError>;
    /// Why the outbox is degraded while the gateway runs (a shared store out of reach, say);
    /// readiness shows it. The embedded store has no such state.
    fn health(&self) -> Option<String> {
        None
    }
}

/// A decision as an outbox stores it: without the explanation (the live pipeline writes none;
/// one given is dropped), borrowed when there is nothing to drop.
pub fn as_stored(decision: &Decision) -> std::borrow::Cow<'_, Decision> {
    if decision.explanation.is_empty() {
        std::borrow::Cow::Borrowed(decision)
    } else {
        let mut d = decision.clone();
        d.explanation.clear();
        std::borrow::Cow::Owned(d)
    }
}

/// The dedup key of a decision queued at `at_ms`. Emails key on their CRM id; a regarding
/// update is a separate write to the same email, keyed by the id, the new regarding record and
/// the time (moving a message back to an earlier folder must not look like a repeat); a
/// decision still waiting for enrichment keys on the mailbox and item id.
pub fn dedup_key(decision: &Decision, at_ms: u64) -> Uuid {
    const NAMESPACE: Uuid = Uuid::from_u128(0x0b0c_51de_7d0e_4c1f_a3a1_2f55_e6b0_99d2);
    match (decision.crm_id, decision.update_regarding) {
        (Some(id), false) => id,
        (Some(id), true) => {
            let regarding = decision
                .regarding
                .as_ref()
                .map(|r| format!("{}:{}", r.entity, r.id))
                .unwrap_or_default();
            Uuid::new_v5(
                &NAMESPACE,
                format!("{id}|regarding|{regarding}|{at_ms}").as_bytes(),
            )
        }
        (None, _) => Uuid::new_v5(
            &NAMESPACE,
            format!(
                "{}|item|{}|{}",
                decision.mailbox.as_deref().unwrap_or_default(),
                decision.item_id.as_deref().unwrap_or_default(),
                decision.observation,
            )
            .as_bytes(),
        ),
    }
}

/// Settings of the embedded outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxSettings {
    /// Commit after this many operations…
    pub group_records: usize,
    /// …or this long after the first one, whichever comes first.
    pub group_interval: Duration,
    /// Records waiting for the writer; beyond, `submit` refuses.
    pub queue: usize,
    /// Pending records held; beyond, new records are refused (and counted).
    pub max_pending: u64,
    /// How long delivered keys are remembered to drop repeats.
    pub delivered_window: Duration,
    /// How often keys older than the window are forgotten (idle or under load).
    pub prune_interval: Duration,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        OutboxSettings {
            group_records: 512,
            group_interval: Duration::from_millis(5),
            queue: 65_536,
            max_pending: 1_000_000,
            delivered_window: Duration::from_secs(7 * 24 * 3600),
            prune_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The outbox's metrics (no addresses or ids as labels).
#[derive(Debug, Clone)]
pub struct OutboxMetrics {
    pub depth: Gauge,
    pub in_flight: Gauge,
    pub dead_letters: Gauge,
    pub oldest_pending_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub commits: Counter,
    pub commit_seconds: Histogram,
    pub batch_records: Histogram,
    enqueued: Family<ResultLabels, Counter>,
    settled: Family<ResultLabels, Counter>,
}

impl OutboxMetrics {
    pub fn register(registry: &mut Registry) -> OutboxMetrics {
        let m = OutboxMetrics {
            depth: Gauge::default(),
            in_flight: Gauge::default(),
            dead_letters: Gauge::default(),
            oldest_pending_age: Gauge::default(),
            commits: Counter::default(),
            commit_seconds: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
            ]),
            batch_records: Histogram::new([1.0, 2.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0]),
            enqueued: Family::default(),
            settled: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("outbox");
        r.register("depth", "Records waiting for delivery", m.depth.clone());
        r.register(
            "in_flight",
            "Records claimed by delivery and not settled yet",
            m.in_flight.clone(),
        );
        r.register(
            "dead_letters",
            "Records in the dead-letter table",
            m.dead_letters.clone(),
        );
        r.register(
            "oldest_pending_age_seconds",
            "Age of the oldest record waiting for delivery",
            m.oldest_pending_age.clone(),
        );
        r.register(
            "commits",
            "Group commits (one fsync each)",
            m.commits.clone(),
        );
        r.register(
            "commit_seconds",
            "Time of one group commit",
            m.commit_seconds.clone(),
        );
        r.register(
            "commit_batch_records",
            "Operations per group commit",
            m.batch_records.clone(),
        );
        r.register(
            "enqueued",
            "Decisions offered to the outbox, by result (stored, duplicate, refused)",
            m.enqueued.clone(),
        );
        r.register(
            "settled",
            "Claimed records settled, by result (delivered, retry, dead, skipped)",
            m.settled.clone(),
        );
        m
    }

    pub fn enqueued(&self, result: &'static str) {
        self.enqueued.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn settled(&self, result: &'static str) {
        self.settled.get_or_create(&ResultLabels { result }).inc();
    }
}
