//! A province's dead letters: a record of a view that cannot be applied
//! for a reason retrying cannot fix — it does not decode, or the sink
//! refuses it (a constraint, a value the column cannot hold) — goes to
//! `dlq.consume.<subscriber>` with its reason and origin, is recorded in
//! the sink (its entity shows as stale), and the consumer goes on. A
//! failure that may pass (the database is down) is retried, never
//! dead-lettered.

use std::time::Duration;

use govbus_core::dead::DeadLetter;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::Message;

use crate::sink::{Applied, Dead, Row, Sink, SinkError};

/// Writes dead letters to the subscriber's DLQ topic.
pub(crate) struct DeadLetters {
    producer: ThreadedProducer<DefaultProducerContext>,
    topic: String,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    /// An idempotent producer (acks=all) to `topic`.
    pub(crate) fn new(
        kafka: &govbus_kafka_client::KafkaConfig,
        topic: String,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: kafka.producer().create()?,
            topic,
        })
    }

    /// Sends `m` (its key, bytes and headers as they were) with `d`'s
    /// reason and origin as headers.
    pub(crate) fn send(&self, m: &BorrowedMessage<'_>, d: &Dead) -> Result<(), KafkaError> {
        let original = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        let letter = DeadLetter {
            reason: d.reason,
            error: d.error.clone(),
            topic: d.topic.clone(),
            partition: d.partition,
            offset: d.offset,
            original,
        };
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.topic)
            .headers(govbus_kafka_client::dead_letter_headers(&letter));
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        if let Some(p) = m.payload() {
            record = record.payload(p);
        }
        self.producer.send(record).map_err(|(e, _)| e)
    }

    /// Waits until every dead letter sent is acknowledged.
    pub(crate) fn flush(&self) -> Result<(), KafkaError> {
        self.producer.flush(Duration::from_secs(30))
    }
}

/// The dead letter of `m` (key `key`) for `reason`.
pub(crate) fn dead_of(
    m: &BorrowedMessage<'_>,
    key: &str,
    table: &str,
    reason: &'static str,
    error: String,
) -> Dead {
    Dead {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: key.to_string(),
        table: table.to_string(),
        reason,
        error,
    }
}

/// Why applying a batch failed.
#[derive(Debug)]
pub(crate) enum ApplyError {
    /// The sink failed in a way that may pass: retried.
    Sink(SinkError),
    /// A dead letter could not be written: the session ends.
    Kafka(KafkaError),
}

/// Applies `rows` one at a time, each with its own offset, after the sink
/// refused the batch: a row it refuses for good is dead-lettered and its
/// offset moves on; then the batch's `offsets` are stored. A row already
/// applied before a retry is skipped by its sequence.
pub(crate) fn apply_one_by_one(
    subscriber: &str,
    sink: &mut dyn Sink,
    rows: &[Row],
    sources: &[usize],
    batch: &[BorrowedMessage<'_>],
    offsets: &[(String, i32, i64)],
    dead_letters: &DeadLetters,
) -> Result<Applied, ApplyError> {
    let mut total = Applied::default();
    for (row, &i) in rows.iter().zip(sources) {
        let m = &batch[i];
        let at = [(m.topic().to_string(), m.partition(), m.offset() + 1)];
        match sink.apply(std::slice::from_ref(row), &at) {
            Ok(done) => {
                total.upserts += done.upserts;
                total.deletes += done.deletes;
                total.stale += done.stale;
            }
            Err(e) => {
                let Some(reason) = e.refusal() else {
                    return Err(ApplyError::Sink(e));
                };
                let d = dead_of(m, &row.key, &row.table.name, reason, e.to_string());
                dead_letters.send(m, &d).map_err(ApplyError::Kafka)?;
                dead_letters.flush().map_err(ApplyError::Kafka)?;
                sink.record_dead(std::slice::from_ref(&d))
                    .map_err(ApplyError::Sink)?;
                sink.apply(&[], &at).map_err(ApplyError::Sink)?;
                govbus_core::InternalEvent::emit(crate::events::DeadLettered {
                    subscriber,
                    dead: &d,
                });
            }
        }
    }
    sink.apply(&[], offsets).map_err(ApplyError::Sink)?;
    Ok(total)
}
