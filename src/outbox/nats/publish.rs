//! Publishing: decisions go to the stream with `Nats-Msg-Id` = their dedup key, many in flight
//! at once; a decision counts as stored when the stream acknowledged it. One NATS cannot take
//! (not connected, no acknowledgement in time) goes to the local spool instead, and the spool
//! is emptied into the stream once NATS is back.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage, publish::PublishAck};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{NatsError, Shared};
use crate::common::time::now_ms;
use crate::outbox::{Outbox, Record, RedbOutbox, Settlement, dedup_key};
use crate::rules::Decision;

/// Spooled records published per round.
const SPOOL_ROUND: usize = 256;

pub(super) enum Command {
    /// A decision encoded on the submitting thread (as the redb outbox does), keyed.
    Submit { key: Uuid, payload: Bytes },
    /// Answered once everything before it is acknowledged or spooled.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// What a record's message carries: the same fields as a redb record's, less the bookkeeping
/// JetStream keeps itself (sequence, deliveries). Written from a borrowed decision, read back
/// owned (by delivery, the operator's views, the spool on a failure).
#[derive(Serialize, Deserialize)]
pub(super) struct Queued<'a> {
    pub key: Uuid,
    pub enqueued_ms: u64,
    pub decision: Cow<'a, Decision>,
}

impl Queued<'_> {
    /// The record delivery works on: the stream's sequence, the attempts JetStream counted,
    /// due now.
    pub fn into_record(self, seq: u64, attempts: u32) -> Record {
        Record {
            seq,
            key: self.key,
            enqueued_ms: self.enqueued_ms,
            attempts,
            next_attempt_ms: now_ms(),
            last_error: None,
            progress: 0,
            decision: self.decision.into_owned(),
        }
    }
}

/// A decision's message payload under `key`.
pub(super) fn payload(
    key: Uuid,
    enqueued_ms: u64,
    decision: &Decision,
) -> Result<Bytes, NatsError> {
    let queued = Queued {
        key,
        enqueued_ms,
        decision: Cow::Borrowed(decision),
    };
    serde_json::to_vec(&queued)
        .map(Bytes::from)
        .map_err(|e| NatsError::Request(e.to_string()))
}

/// A decision as its message's payload, keyed by its dedup key.
pub(super) fn encode(decision: &Decision, at_ms: u64) -> Result<(Uuid, Bytes), NatsError> {
    let key = dedup_key(decision, at_ms);
    Ok((key, payload(key, at_ms, decision)?))
}

/// The publisher: takes submitted decisions in order, keeps up to `publish_in_flight`
/// unacknowledged (polled here, no task each), spools what NATS does not take.
pub(super) async fn run(
    shared: Arc<Shared>,
    jetstream: jetstream::Context,
    spool: Arc<RedbOutbox>,
    mut commands: mpsc::Receiver<Command>,
) {
    let mut in_flight = FuturesUnordered::new();
    let limit = shared.settings.publish_in_flight.max(1);
    loop {
        // A publish that failed is spooled as soon as it fails, not when the next one needs
        // its place: traffic may have stopped.
        let command = tokio::select! {
            command = commands.recv() => command,
            Some(failed) = in_flight.next(), if !in_flight.is_empty() => {
                spool_failed(&shared, &spool, failed);
                continue;
            }
        };
        let Some(command) = command else { break };
        match command {
            Command::Submit { key, payload } => {
                if !shared.connected.load(Ordering::Relaxed) {
                    spool_failed(&shared, &spool, Some(payload));
                    continue;
                }
                while in_flight.len() >= limit {
                    if let Some(failed) = in_flight.next().await {
                        spool_failed(&shared, &spool, failed);
                    }
                }
                let (shared, jetstream) = (&shared, &jetstream);
                in_flight.push(async move {
                    match publish(shared, jetstream, key, payload.clone()).await {
                        Ok(()) => None,
                        Err(error) => {
                            tracing::debug!(%error, "publish not acknowledged; spooling");
                            Some(payload)
                        }
                    }
                });
            }
            Command::Flush(reply) => {
                while let Some(failed) = in_flight.next().await {
                    spool_failed(&shared, &spool, failed);
                }
                let spool = spool.clone();
                let flushed = tokio::task::spawn_blocking(move || spool.flush()).await;
                if !matches!(flushed, Ok(Ok(()))) {
                    tracing::error!("the local spool did not flush");
                }
                let _ = reply.send(());
            }
        }
    }
}

/// A payload NATS did not take goes to the spool (decoded back: the rare path).
fn spool_failed(shared: &Shared, spool: &RedbOutbox, failed: Option<Bytes>) {
    let Some(payload) = failed else {
        return;
    };
    match serde_json::from_slice::<Queued<'_>>(&payload) {
        Ok(stored) if spool.submit(&stored.decision) => shared.metrics.published("spooled"),
        // The spool is full too: counted; the catch-up sweep finds the message again.
        _ => shared.metrics.published("refused"),
    }
}

/// A publish to `subject` under `message_id`, waited for until the stream acknowledges it.
pub(super) async fn publish_acked(
    jetstream: &jetstream::Context,
    subject: String,
    message_id: String,
    payload: Bytes,
) -> Result<PublishAck, NatsError> {
    let message = PublishMessage::build()
        .payload(payload)
        .message_id(message_id);
    jetstream
        .send_publish(subject, message)
        .await
        .map_err(|e| NatsError::Request(e.to_string()))?
        .await
        .map_err(|e| NatsError::Request(e.to_string()))
}

/// One record's publish (its dedup key as the message id), timed and counted.
pub(super) async fn publish(
    shared: &Shared,
    jetstream: &jetstream::Context,
    key: Uuid,
    payload: Bytes,
) -> Result<(), NatsError> {
    let started = Instant::now();
    let subject = shared.settings.record_subject(key);
    let ack = publish_acked(jetstream, subject, key.to_string(), payload).await?;
    shared
        .metrics
        .publish_seconds
        .observe(started.elapsed().as_secs_f64());
    let result = if ack.duplicate { "duplicate" } else { "stored" };
    shared.metrics.published(result);
    shared.outbox_metrics.enqueued(result);
    Ok(())
}

/// Empties the spool into the stream whenever NATS is connected; a record leaves the spool
/// only once the stream acknowledged it (a repeat is dropped by its `Nats-Msg-Id`).
pub(super) async fn drain_spool(
    shared: Arc<Shared>,
    jetstream: jetstream::Context,
    spool: Arc<RedbOutbox>,
) {
    let spool_wakeup = spool.wakeup();
    loop {
        let depth = spool.stats().map(|s| s.pending).unwrap_or(0);
        shared.metrics.spool_depth.set(depth as i64);
        let due = spool.next_due_ms().is_some_and(|at| at <= now_ms());
        if !(due && shared.connected.load(Ordering::Relaxed)) {
            // Woken by a new spooled record or a reconnect; the timeout covers a retry's time.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                tokio::select! {
                    _ = spool_wakeup.notified() => {}
                    _ = shared.reconnected.notified() => {}
                }
            })
            .await;
            continue;
        }
        let records = match spool.claim_due(now_ms(), SPOOL_ROUND) {
            Ok(records) => records,
            Err(error) => {
                tracing::error!(%error, "cannot read the local spool");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let sends = records.iter().map(|record| async {
            let payload = payload(record.key, record.enqueued_ms, &record.decision)?;
            publish(&shared, &jetstream, record.key, payload).await
        });
        let sent = futures_util::future::join_all(sends).await;
        for (record, sent) in records.iter().zip(sent) {
            let settlement = match sent {
                Ok(()) => Settlement::Delivered,
                Err(error) => Settlement::Retry {
                    at_ms: now_ms() + 1_000,
                    counted: false,
                    error: error.to_string(),
                },
            };
            spool.settle(record, settlement);
        }
    }
}
