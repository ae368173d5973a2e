//! The relay: publishes stored changes in order, idempotently (acks=all),
//! and forgets them only after the broker acknowledged them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use govbus_core::KafkaConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::publisher::Wakeup;
use crate::store::OutboxStore;

/// Moves the outbox to Kafka.
pub struct Relay {
    store: Arc<dyn OutboxStore>,
    producer: FutureProducer,
    wakeup: Arc<Wakeup>,
    batch: usize,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("batch", &self.batch).finish()
    }
}

impl Relay {
    /// A relay from `store` to the cluster.
    pub fn new(
        kafka: &KafkaConfig,
        store: Arc<dyn OutboxStore>,
        wakeup: Arc<Wakeup>,
    ) -> Result<Self, KafkaError> {
        let producer = kafka
            .producer()
            // Same partition for a key as Java clients (murmur2), so every
            // producer of a dataset agrees.
            .set("partitioner", "murmur2_random")
            .create()?;
        Ok(Self {
            store,
            producer,
            wakeup,
            batch: 2000,
        })
    }

    /// Publishes one batch; returns how many changes were acknowledged.
    pub fn step(&self) -> Result<usize, crate::store::StoreError> {
        let rows = self.store.pending(self.batch)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut futures = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut record = FutureRecord::to(&row.topic).key(&row.key).payload(&row.value);
            loop {
                match self.producer.send_result(record) {
                    Ok(f) => {
                        futures.push(Some(f));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        // Back-pressure: let the queue drain.
                        record = r;
                        self.producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => {
                        tracing::warn!(error = %e, topic = row.topic, "cannot enqueue change");
                        futures.push(None);
                        break;
                    }
                }
            }
        }
        // Acknowledged prefix: stop at the first failure so that order holds.
        let mut acked = Vec::with_capacity(rows.len());
        let mut failed_at = None;
        for (row, f) in rows.iter().zip(futures) {
            match f.map(futures_executor::block_on) {
                Some(Ok(Ok(_))) if failed_at.is_none() => acked.push(row.id),
                Some(Ok(Ok(_))) => {}
                Some(Ok(Err((e, _)))) => {
                    failed_at.get_or_insert(row.id);
                    tracing::warn!(error = %e, topic = row.topic, key = row.key, "broker refused change; will retry");
                }
                Some(Err(_)) | None => {
                    failed_at.get_or_insert(row.id);
                }
            }
        }
        self.store.mark_sent(&acked)?;
        for row in rows.iter().take(acked.len()) {
            metrics::counter!("govbus_relay_published_total", "dataset" => row.dataset.clone())
                .increment(1);
        }
        if failed_at.is_some() {
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(acked.len())
    }

    /// Runs until `stop`, waking on new changes.
    pub fn run(self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            match self.step() {
                Ok(0) => self.wakeup.wait(Duration::from_millis(50)),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "relay cannot read its store; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}

