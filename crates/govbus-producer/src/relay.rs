//! The relay: publishes stored changes in order, idempotently (acks=all),
//! and forgets them only after the broker acknowledged them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use govbus_core::KafkaConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::publisher::Wakeup;
use crate::store::{OutboxStore, StoreError};

/// Delivery reports, by outbox id.
struct Reports(Mutex<Sender<(i64, Result<(), String>)>>);

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<i64>;

    fn delivery(&self, result: &DeliveryResult<'_>, id: Box<i64>) {
        let r = result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string());
        if let Ok(tx) = self.0.lock() {
            let _ = tx.send((*id, r));
        }
    }
}

/// Moves the outbox to Kafka.
pub struct Relay {
    store: Arc<dyn OutboxStore>,
    producer: ThreadedProducer<Reports>,
    reports: Receiver<(i64, Result<(), String>)>,
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
        let (tx, reports) = channel();
        let producer = kafka
            .producer()
            // Same partition for a key as Java clients (murmur2), so every
            // producer of a dataset agrees.
            .set("partitioner", "murmur2_random")
            .create_with_context(Reports(Mutex::new(tx)))?;
        Ok(Self {
            store,
            producer,
            reports,
            wakeup,
            batch: 10_000,
        })
    }

    /// Publishes one batch; returns how many changes were acknowledged.
    /// Gives up waiting (leaving the rest in the outbox) once `stop` is set.
    pub fn step(&self, stop: &AtomicBool) -> Result<usize, StoreError> {
        let rows = self.store.pending(self.batch)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut outcome: HashMap<i64, Result<(), String>> = HashMap::with_capacity(rows.len());
        let mut expected = 0usize;
        for row in &rows {
            let mut record = BaseRecord::with_opaque_to(&row.topic, Box::new(row.id))
                .key(&row.key)
                .payload(&row.value);
            loop {
                match self.producer.send(record) {
                    Ok(()) => {
                        expected += 1;
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        // Back-pressure: let the queue drain.
                        record = r;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err((e, _)) => {
                        outcome.insert(row.id, Err(e.to_string()));
                        break;
                    }
                }
            }
        }
        let mut stop_deadline: Option<Instant> = None;
        let mut received = 0usize;
        while received < expected {
            match self.reports.recv_timeout(Duration::from_millis(100)) {
                Ok((id, r)) => {
                    if outcome.insert(id, r).is_none() {
                        received += 1;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if stop.load(Ordering::Relaxed) {
                let d =
                    *stop_deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(3));
                if Instant::now() > d {
                    tracing::warn!(
                        waiting = expected - received,
                        "stopping with unacknowledged changes; they stay in the outbox"
                    );
                    break;
                }
            }
        }
        // The acknowledged prefix, in outbox order: a failure stops it so
        // that a retry never puts an older change after a newer one.
        let mut acked = Vec::with_capacity(rows.len());
        for row in &rows {
            match outcome.get(&row.id) {
                Some(Ok(())) => acked.push(row.id),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, topic = row.topic, key = row.key, "broker refused change; will retry");
                    break;
                }
                None => break,
            }
        }
        self.store.mark_sent(&acked)?;
        let mut per_dataset: HashMap<&str, u64> = HashMap::new();
        for row in rows.iter().take(acked.len()) {
            *per_dataset.entry(row.dataset.as_str()).or_default() += 1;
        }
        for (ds, n) in per_dataset {
            metrics::counter!("govbus_relay_published_total", "dataset" => ds.to_string())
                .increment(n);
        }
        if acked.len() < rows.len() && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(acked.len())
    }

    /// Runs until `stop`, waking on new changes. Pipelined: up to ten batches
    /// changes are in flight while the next ones are read and sent; the
    /// outbox is trimmed as the acknowledged prefix grows.
    pub fn run(self, stop: Arc<AtomicBool>) {
        let window = self.batch * 10;
        let mut in_flight: VecDeque<(i64, String)> = VecDeque::with_capacity(window);
        let mut outcome: HashMap<i64, Result<(), String>> = HashMap::new();
        let mut after = 0i64;
        let mut since_reset = Instant::now();
        let mut stop_at: Option<Instant> = None;
        // Acknowledged ids not yet removed from the store: trimmed in large
        // transactions (each is an fsync), not per delivery report.
        let mut acked: Vec<i64> = Vec::new();
        let mut per_dataset: HashMap<String, u64> = HashMap::new();
        let mut last_trim = Instant::now();
        loop {
            if stop.load(Ordering::Relaxed) {
                let d = *stop_at.get_or_insert_with(|| Instant::now() + Duration::from_secs(3));
                if in_flight.is_empty() || Instant::now() > d {
                    break;
                }
            }
            // 1. Read and send more, unless stopping or rewinding to pick up
            //    changes that committed out of id order (PostgreSQL stores).
            let mut sent = 0;
            let rewinding =
                !self.store.commits_in_id_order() && since_reset.elapsed() > Duration::from_secs(1);
            if stop_at.is_none() && !rewinding && in_flight.len() < window {
                match self.store.pending_after(after, self.batch) {
                    Ok(rows) => {
                        for row in rows {
                            let mut record =
                                BaseRecord::with_opaque_to(&row.topic, Box::new(row.id))
                                    .key(&row.key)
                                    .payload(&row.value);
                            loop {
                                match self.producer.send(record) {
                                    Ok(()) => break,
                                    Err((
                                        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                                        r,
                                    )) => {
                                        record = r;
                                        std::thread::sleep(Duration::from_millis(1));
                                    }
                                    Err((e, _)) => {
                                        outcome.insert(row.id, Err(e.to_string()));
                                        break;
                                    }
                                }
                            }
                            after = row.id;
                            in_flight.push_back((row.id, row.dataset));
                            sent += 1;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "relay cannot read its store; retrying");
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                }
            }
            // 2. Collect delivery reports.
            let wait = if sent == 0 && !in_flight.is_empty() {
                Duration::from_millis(5)
            } else {
                Duration::ZERO
            };
            if let Ok((id, r)) = self.reports.recv_timeout(wait) {
                outcome.insert(id, r);
            }
            while let Ok((id, r)) = self.reports.try_recv() {
                outcome.insert(id, r);
            }
            // 3. Forget the acknowledged prefix.
            let mut failed = false;
            while let Some((id, _)) = in_flight.front() {
                match outcome.remove(id) {
                    Some(Ok(())) => {
                        let (id, ds) = in_flight.pop_front().expect("front exists");
                        acked.push(id);
                        *per_dataset.entry(ds).or_default() += 1;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, id, "broker refused change; will retry from it");
                        failed = true;
                        break;
                    }
                    None => break,
                }
            }
            let trim = acked.len() >= window
                || (!acked.is_empty()
                    && (in_flight.is_empty()
                        || failed
                        || last_trim.elapsed() > Duration::from_millis(100)));
            if trim {
                match self.store.mark_sent(&acked) {
                    Ok(()) => {
                        for (ds, n) in per_dataset.drain() {
                            metrics::counter!("govbus_relay_published_total", "dataset" => ds)
                                .increment(n);
                        }
                        acked.clear();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "relay cannot trim its store; retrying");
                    }
                }
                last_trim = Instant::now();
            }
            if failed {
                // Rewind: everything from the failed change on is sent again.
                in_flight.clear();
                outcome.clear();
                after = 0;
                since_reset = Instant::now();
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            if in_flight.is_empty() && acked.is_empty() {
                outcome.clear(); // reports of sends abandoned by a rewind
                after = 0;
                since_reset = Instant::now();
                if sent == 0 && stop_at.is_none() {
                    // Idle: remove rows already marked as sent, a chunk at a time.
                    match self.store.housekeep(10_000) {
                        Ok(0) => self.wakeup.wait(Duration::from_millis(50)),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot remove sent changes from the outbox")
                        }
                    }
                }
            }
        }
        if !acked.is_empty() {
            let _ = self.store.mark_sent(&acked);
        }
        let _ = self.producer.flush(Duration::from_secs(2));
    }
}
