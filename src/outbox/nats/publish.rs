//! Publishing: decisions go to the stream with `Nats-Msg-Id` = their dedup key, many in flight
//! at once; a decision counts as stored when the stream acknowledged it. One NATS cannot take
//! (not connected, no acknowledgement in time) goes to the local spool instead, and the spool
//! is emptied into the stream once NATS is back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::{NatsError, Shared};
use crate::common::time::now_ms;
use crate::outbox::{Outbox, RedbOutbox, Settlement, dedup_key};
use crate::rules::Decision;

/// The header that carries the attempts a record had before it was published again (a dead
/// letter retried starts from zero; a spooled one keeps its count).
pub(super) const ATTEMPTS_HEADER: &str = "Trackgate-Attempts";

/// Spooled records published per round.
const SPOOL_ROUND: usize = 256;

pub(super) enum Command {
    Submit {
        decision: Box<Decision>,
        at_ms: u64,
    },
    /// Answered once everything before it is acknowledged or spooled.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// What a record's message carries: the same fields as a redb record's, less the bookkeeping
/// JetStream keeps itself (sequence, deliveries).
#[derive(Serialize)]
pub(super) struct Queued<'a> {
    pub key: Uuid,
    pub enqueued_ms: u64,
    pub decision: &'a Decision,
}

/// The same, as read back (by delivery and by the operator's views).
#[derive(serde::Deserialize)]
pub(super) struct Stored {
    pub key: Uuid,
    pub enqueued_ms: u64,
    pub decision: Decision,
}

/// The publisher: takes submitted decisions in order, keeps up to `publish_in_flight`
/// unacknowledged, spools what NATS does not take.
pub(super) async fn run(
    shared: Arc<Shared>,
    jetstream: jetstream::Context,
    spool: Arc<RedbOutbox>,
    mut commands: mpsc::Receiver<Command>,
) {
    let mut in_flight: JoinSet<Result<(), Box<Decision>>> = JoinSet::new();
    let limit = shared.settings.publish_in_flight.max(1);
    loop {
        // A publish that failed is spooled as soon as it fails, not when the next one needs
        // its place: traffic may have stopped.
        let command = tokio::select! {
            command = commands.recv() => command,
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                spool_failed(&shared, &spool, done);
                continue;
            }
        };
        let Some(command) = command else { break };
        match command {
            Command::Submit { decision, at_ms } => {
                if !shared.connected.load(Ordering::Relaxed) {
                    to_spool(&shared, &spool, &decision);
                    continue;
                }
                while in_flight.len() >= limit {
                    settle_one(&shared, &spool, &mut in_flight).await;
                }
                let (shared, jetstream) = (shared.clone(), jetstream.clone());
                in_flight.spawn(async move {
                    let key = dedup_key(&decision, at_ms);
                    match publish(&shared, &jetstream, key, at_ms, &decision, 0).await {
                        Ok(()) => Ok(()),
                        Err(error) => {
                            tracing::debug!(%error, "publish not acknowledged; spooling");
                            Err(decision)
                        }
                    }
                });
            }
            Command::Flush(reply) => {
                while !in_flight.is_empty() {
                    settle_one(&shared, &spool, &mut in_flight).await;
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

type Published = Result<Result<(), Box<Decision>>, tokio::task::JoinError>;

fn spool_failed(shared: &Shared, spool: &RedbOutbox, done: Published) {
    match done {
        Ok(Ok(())) => {}
        Ok(Err(decision)) => to_spool(shared, spool, &decision),
        // A publish task cannot panic short of a bug; its decision is gone, which is counted
        // and left to the catch-up sweep.
        Err(error) => {
            tracing::error!(%error, "a publish task failed");
            shared.metrics.published("refused");
        }
    }
}

async fn settle_one(
    shared: &Shared,
    spool: &RedbOutbox,
    in_flight: &mut JoinSet<Result<(), Box<Decision>>>,
) {
    if let Some(done) = in_flight.join_next().await {
        spool_failed(shared, spool, done);
    }
}

fn to_spool(shared: &Shared, spool: &RedbOutbox, decision: &Decision) {
    if spool.submit(decision) {
        shared.metrics.published("spooled");
    } else {
        // The spool is full too: counted; the catch-up sweep finds the message again.
        shared.metrics.published("refused");
    }
}

/// One publish, waited for until the stream acknowledges it.
pub(super) async fn publish(
    shared: &Shared,
    jetstream: &jetstream::Context,
    key: Uuid,
    enqueued_ms: u64,
    decision: &Decision,
    attempts: u32,
) -> Result<(), NatsError> {
    let payload = serde_json::to_vec(&Queued {
        key,
        enqueued_ms,
        decision,
    })
    .map_err(|e| NatsError::Request(e.to_string()))?;
    let mut message = PublishMessage::build()
        .payload(payload.into())
        .message_id(key.to_string());
    if attempts > 0 {
        message = message.header(ATTEMPTS_HEADER, attempts.to_string());
    }
    let started = Instant::now();
    let ack = jetstream
        .send_publish(shared.settings.record_subject(key), message)
        .await
        .map_err(|e| NatsError::Request(e.to_string()))?
        .await
        .map_err(|e| NatsError::Request(e.to_string()))?;
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
        let mut round = JoinSet::new();
        for record in records {
            let (shared, jetstream) = (shared.clone(), jetstream.clone());
            round.spawn(async move {
                let sent = publish(
                    &shared,
                    &jetstream,
                    record.key,
                    record.enqueued_ms,
                    &record.decision,
                    record.attempts,
                )
                .await;
                (record, sent)
            });
        }
        while let Some(Ok((record, sent))) = round.join_next().await {
            let settlement = match sent {
                Ok(()) => Settlement::Delivered,
                Err(error) => Settlement::Retry {
                    at_ms: now_ms() + 1_000,
                    counted: false,
                    error: error.to_string(),
                },
            };
            spool.settle(&record, settlement);
        }
    }
}
