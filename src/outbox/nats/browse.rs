//! The operator's views of the fleet outbox: numbers from the streams' and the consumer's info,
//! pending records and dead letters read in stream order, a dead letter published again
//! (attempts from zero) and removed, a record skipped by deleting it.

use async_nats::jetstream::{self, stream};
use uuid::Uuid;

use super::publish::{Queued, payload, publish_acked};
use super::{NatsError, NatsSettings};
use crate::common::time::now_ms;
use crate::outbox::{DeadLetter, Record, Stats};

pub(super) struct Browser {
    pub settings: NatsSettings,
    pub jetstream: jetstream::Context,
}

fn request(e: impl std::fmt::Display) -> NatsError {
    NatsError::Request(e.to_string())
}

impl Browser {
    async fn stream(&self, name: &str) -> Result<stream::Stream, NatsError> {
        self.jetstream.get_stream(name).await.map_err(request)
    }

    /// What waits for delivery is what the shared consumer has not seen acked: its pending
    /// and its ack-pending records. (The stream's own count can lag behind after a leader
    /// change: an acked record is removed from a replicated work queue by a later proposal.)
    pub async fn stats(self) -> Result<Stats, NatsError> {
        let mut records = self.stream(&self.settings.stream).await?;
        let consumer = records
            .consumer_info(&self.settings.consumer)
            .await
            .map_err(request)?;
        let waiting = consumer.num_pending + consumer.num_ack_pending as u64;
        let state = records.info().await.map_err(request)?.state.clone();
        let dead = self
            .stream(&self.settings.dead_stream)
            .await?
            .get_info()
            .await
            .map_err(request)?;
        let oldest = if waiting > 0 && state.messages > 0 {
            let first = state.first_timestamp.unix_timestamp_nanos() / 1_000_000;
            (now_ms() as i128 - first).max(0) as f64 / 1000.0
        } else {
            0.0
        };
        Ok(Stats {
            pending: waiting,
            in_flight: 0,
            dead: dead.state.messages,
            delivered_keys: 0,
            oldest_pending_age_seconds: oldest,
            next_seq: state.last_sequence + 1,
            file_bytes: 0,
        })
    }

    /// Up to `limit` messages of `name` on `subject`, oldest first.
    async fn read(
        &self,
        name: &str,
        subject: &str,
        limit: usize,
    ) -> Result<Vec<jetstream::message::StreamMessage>, NatsError> {
        let stream = self.stream(name).await?;
        let mut messages = Vec::new();
        let mut seq = 1;
        while messages.len() < limit {
            let next = stream
                .raw_message_builder()
                .sequence(seq)
                .next_by_subject(subject.to_owned())
                .send()
                .await;
            match next {
                Ok(message) => {
                    seq = message.sequence + 1;
                    messages.push(message);
                }
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(request(e)),
            }
        }
        Ok(messages)
    }

    pub async fn pending(self, limit: usize) -> Result<Vec<Record>, NatsError> {
        let subject = format!("{}.>", self.settings.subject);
        let messages = self.read(&self.settings.stream, &subject, limit).await?;
        Ok(messages
            .into_iter()
            .filter_map(|m| {
                let queued: Queued<'_> = serde_json::from_slice(&m.payload).ok()?;
                let mut record = queued.into_record(m.sequence, 0);
                record.next_attempt_ms = record.enqueued_ms;
                Some(record)
            })
            .collect())
    }

    pub async fn dead_letters(self, limit: usize) -> Result<Vec<DeadLetter>, NatsError> {
        let subject = format!("{}.>", self.settings.dead_subject);
        let messages = self
            .read(&self.settings.dead_stream, &subject, limit)
            .await?;
        Ok(messages
            .into_iter()
            .filter_map(|m| serde_json::from_slice(&m.payload).ok())
            .collect())
    }

    /// The latest message on `subject` in `name`, if any.
    async fn last(
        &self,
        name: &str,
        subject: &str,
    ) -> Result<Option<(stream::Stream, jetstream::message::StreamMessage)>, NatsError> {
        let stream = self.stream(name).await?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(Some((stream, message))),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(request(e)),
        }
    }

    /// Publishes a dead letter's record again (attempts from zero, a fresh message id so the
    /// duplicate window does not drop it), then removes the dead letter.
    pub async fn retry(self, key: Uuid) -> Result<bool, NatsError> {
        let subject = self.settings.dead_letter_subject(key);
        let Some((dead, message)) = self.last(&self.settings.dead_stream, &subject).await? else {
            return Ok(false);
        };
        let letter: DeadLetter = serde_json::from_slice(&message.payload).map_err(request)?;
        let record = &letter.record;
        publish_acked(
            &self.jetstream,
            self.settings.record_subject(key),
            format!("{key}-retry-{}", message.sequence),
            payload(key, record.enqueued_ms, &record.decision)?,
        )
        .await?;
        dead.delete_message(message.sequence)
            .await
            .map_err(request)?;
        Ok(true)
    }

    /// Deletes the pending record or dead letter with this key.
    pub async fn skip(self, key: Uuid) -> Result<bool, NatsError> {
        let pending = self.settings.record_subject(key);
        let dead = self.settings.dead_letter_subject(key);
        for (name, subject) in [
            (&self.settings.stream, pending),
            (&self.settings.dead_stream, dead),
        ] {
            if let Some((stream, message)) = self.last(name, &subject).await? {
                stream
                    .delete_message(message.sequence)
                    .await
                    .map_err(request)?;
                return Ok(true);
            }
        }
        Ok(false)
    }
}
