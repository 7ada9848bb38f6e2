//! Pulling for delivery: this instance fetches records from the fleet's durable consumer, holds
//! at most `prefetch` of them (their ack deadline extended while held), hands them to delivery
//! as claims, and settles each one: delivered → ack (confirmed by the server); a failure of the
//! record → nak with the backoff as delay (JetStream counts the delivery); the sink down or
//! throttled → kept here, first in line, not counted; dead → a copy to the dead-letter stream,
//! then term. A crash of this instance lets the ack deadline pass and another takes the record.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, message::Acker};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::publish::{Queued, publish_acked};
use super::{NatsError, Shared};
use crate::common::time::now_ms;
use crate::outbox::{DeadLetter, Record, Settlement};

/// How long one pull waits for records before asking again.
const PULL_WAIT: Duration = Duration::from_secs(1);

/// Records this instance holds: fetched and waiting for delivery to claim them, or claimed.
#[derive(Default)]
pub(super) struct Held {
    waiting: VecDeque<(Record, Arc<Acker>)>,
    claimed: HashMap<u64, Arc<Acker>>,
    /// Steps of a multi-step delivery already confirmed, by stream sequence: a retry on this
    /// instance resumes after them (another instance repeats them; they are idempotent).
    progress: HashMap<u64, u8>,
}

impl Held {
    fn count(&self) -> usize {
        self.waiting.len() + self.claimed.len()
    }
}

/// A settlement on its way to the server.
pub(super) struct Settle {
    acker: Arc<Acker>,
    record: Record,
    settlement: Settlement,
}

pub(super) fn claim(shared: &Shared, limit: usize) -> Vec<Record> {
    let Ok(mut held) = shared.held.lock() else {
        return Vec::new();
    };
    let mut records = Vec::new();
    while records.len() < limit {
        let Some((mut record, acker)) = held.waiting.pop_front() else {
            break;
        };
        if let Some(done) = held.progress.get(&record.seq) {
            record.progress |= done;
        }
        held.claimed.insert(record.seq, acker);
        records.push(record);
    }
    records
}

pub(super) fn settle(
    shared: &Shared,
    settles: Option<&mpsc::UnboundedSender<Settle>>,
    record: &Record,
    settlement: Settlement,
) {
    let Ok(mut held) = shared.held.lock() else {
        return;
    };
    let Some(acker) = held.claimed.remove(&record.seq) else {
        return;
    };
    if let Settlement::Retry {
        counted: false,
        error,
        ..
    } = &settlement
    {
        // The sink, not the record: kept here, first in line, its deadline still extended.
        let mut record = record.clone();
        record.last_error = Some(error.clone());
        held.waiting.push_front((record, acker));
        return;
    }
    held.progress.remove(&record.seq);
    shared.metrics.held.set(held.count() as i64);
    drop(held);
    shared.outbox_metrics.settled(match &settlement {
        Settlement::Delivered => "delivered",
        Settlement::Retry { .. } => "retry",
        Settlement::Dead { .. } => "dead",
    });
    let message = Settle {
        acker,
        record: record.clone(),
        settlement,
    };
    if settles.is_none_or(|s| s.send(message).is_err()) {
        // Stopping: not acked, so the record is offered again after its ack deadline.
        tracing::debug!("a settlement was not sent to NATS; the record will be redelivered");
    }
    shared.room.notify_one();
}

pub(super) fn progress(shared: &Shared, record: &Record, done: u8) {
    if let Ok(mut held) = shared.held.lock() {
        *held.progress.entry(record.seq).or_default() |= done;
    }
}

pub(super) fn next_due(shared: &Shared) -> Option<u64> {
    let held = shared.held.lock().ok()?;
    held.waiting
        .front()
        .map(|(record, _)| record.next_attempt_ms)
}

pub(super) fn in_flight(shared: &Shared) -> u64 {
    shared
        .held
        .lock()
        .map(|h| h.claimed.len() as u64)
        .unwrap_or(0)
}

/// Pulls, keeps held records alive, and sends settlements, until the runtime stops.
pub(super) async fn run(
    shared: Arc<Shared>,
    jetstream: jetstream::Context,
    mut settles: mpsc::UnboundedReceiver<Settle>,
) {
    let settler = {
        let (shared, jetstream) = (shared.clone(), jetstream.clone());
        async move {
            while let Some(settle) = settles.recv().await {
                tokio::spawn(send_settlement(shared.clone(), jetstream.clone(), settle));
            }
        }
    };
    tokio::spawn(settler);
    tokio::spawn(keep_alive(shared.clone()));
    loop {
        let consumer = match consumer(&shared, &jetstream).await {
            Ok(consumer) => consumer,
            Err(error) => {
                tracing::debug!(%error, "the delivery consumer is not reachable yet");
                tokio::time::sleep(PULL_WAIT).await;
                continue;
            }
        };
        if let Err(error) = pull(&shared, &consumer).await {
            tracing::debug!(%error, "pulling from the delivery consumer failed; pulling again");
            tokio::time::sleep(PULL_WAIT).await;
        }
    }
}

async fn consumer(
    shared: &Shared,
    jetstream: &jetstream::Context,
) -> Result<jetstream::consumer::Consumer<pull::Config>, NatsError> {
    let request = |e: &dyn std::fmt::Display| NatsError::Request(e.to_string());
    jetstream
        .get_stream(&shared.settings.stream)
        .await
        .map_err(|e| request(&e))?
        .get_consumer(&shared.settings.consumer)
        .await
        .map_err(|e| request(&e))
}

/// Fetches while there is room; returns on an error (the caller asks for the consumer again).
async fn pull(
    shared: &Shared,
    consumer: &jetstream::consumer::Consumer<pull::Config>,
) -> Result<(), NatsError> {
    loop {
        let room = loop {
            let room = shared
                .settings
                .prefetch
                .saturating_sub(shared.held.lock().map(|h| h.count()).unwrap_or(usize::MAX));
            if room > 0 {
                break room;
            }
            let _ = tokio::time::timeout(PULL_WAIT, shared.room.notified()).await;
        };
        // A pull whose server went away is never answered: each one has a deadline of its
        // own, and a missed deadline means asking for the consumer again.
        let limit = PULL_WAIT + shared.settings.request_timeout;
        let fetched = tokio::time::timeout(limit, async {
            let mut batch = consumer
                .fetch()
                .max_messages(room)
                .expires(PULL_WAIT)
                .messages()
                .await
                .map_err(|e| NatsError::Request(e.to_string()))?;
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| NatsError::Request(e.to_string()))?;
                take(shared, message).await;
            }
            Ok::<(), NatsError>(())
        })
        .await;
        fetched.map_err(|_| NatsError::Timeout(limit))??;
    }
}

/// One fetched message becomes a held record.
async fn take(shared: &Shared, message: jetstream::Message) {
    let (seq, delivered, pending) = match message.info() {
        Ok(info) => (info.stream_sequence, info.delivered, info.pending),
        Err(error) => {
            tracing::error!(%error, "a delivery without JetStream metadata; left for redelivery");
            return;
        }
    };
    shared.metrics.consumer_lag.set(pending as i64);
    if delivered > 1 {
        shared.metrics.redeliveries.inc();
    }
    let queued: Queued<'_> = match serde_json::from_slice(&message.payload) {
        Ok(queued) => queued,
        Err(error) => {
            // Not one of ours (another publisher on the subject, a newer format): kept out of
            // the way of the rest, named by sequence only.
            tracing::error!(%error, seq, "an outbox message trackgate cannot read; terminated");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    // Every delivery before this one was a counted attempt: a nak, or an ack deadline passed.
    let attempts = u32::try_from(delivered.saturating_sub(1)).unwrap_or(u32::MAX);
    let record = queued.into_record(seq, attempts);
    let (_, acker) = message.split();
    if let Ok(mut held) = shared.held.lock() {
        held.waiting.push_back((record, Arc::new(acker)));
        shared.metrics.held.set(held.count() as i64);
    }
    shared.wakeup.notify_waiters();
}

/// Extends the ack deadline of every held record, a third of the deadline apart.
async fn keep_alive(shared: Arc<Shared>) {
    let every = (shared.settings.ack_wait / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        if !shared.connected.load(Ordering::Relaxed) {
            continue;
        }
        let ackers: Vec<Arc<Acker>> = match shared.held.lock() {
            Ok(held) => held
                .waiting
                .iter()
                .map(|(_, a)| a.clone())
                .chain(held.claimed.values().cloned())
                .collect(),
            Err(_) => continue,
        };
        for acker in ackers {
            let _ = acker.ack_with(AckKind::Progress).await;
        }
    }
}

async fn send_settlement(shared: Arc<Shared>, jetstream: jetstream::Context, settle: Settle) {
    let Settle {
        acker,
        record,
        settlement,
    } = settle;
    let sent = match settlement {
        Settlement::Delivered => acker
            .double_ack()
            .await
            .map_err(|e| NatsError::Request(e.to_string())),
        Settlement::Retry { at_ms, .. } => {
            let delay = Duration::from_millis(at_ms.saturating_sub(now_ms()));
            acker
                .ack_with(AckKind::Nak(Some(delay)))
                .await
                .map_err(|e| NatsError::Request(e.to_string()))
        }
        Settlement::Dead {
            status,
            response,
            error,
        } => {
            let letter = DeadLetter {
                record,
                failed_ms: now_ms(),
                status,
                response,
                error,
            };
            bury(&shared, &jetstream, &letter, &acker).await
        }
    };
    if let Err(error) = sent {
        // Not acked: the record comes back after its ack deadline; the CRM's conditional
        // upsert makes the second delivery a no-op.
        tracing::warn!(%error, "a settlement did not reach NATS; the record will be redelivered");
    }
}

/// A dead letter is stored in the dead-letter stream before the record is terminated, so a
/// crash between the two leaves a redelivery, never a loss.
async fn bury(
    shared: &Shared,
    jetstream: &jetstream::Context,
    letter: &DeadLetter,
    acker: &Acker,
) -> Result<(), NatsError> {
    let payload = serde_json::to_vec(letter).map_err(|e| NatsError::Request(e.to_string()))?;
    publish_acked(
        jetstream,
        shared.settings.dead_letter_subject(letter.record.key),
        format!("dead-{}-{}", letter.record.key, letter.record.seq),
        payload.into(),
    )
    .await?;
    acker
        .ack_with(AckKind::Term)
        .await
        .map_err(|e| NatsError::Request(e.to_string()))
}
