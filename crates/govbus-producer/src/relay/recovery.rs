//! Exactly once across crashes: before the relay first writes to a topic
//! it records the topic's end offsets; with each trim it records, per
//! partition, the offset of the last change it marked as sent; when it
//! starts again it reads each partition from there to its end and marks
//! the changes carrying its own `govbus.outbox` header as sent instead of
//! publishing them twice.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::Producer;

use super::{offset_name, outbox_tag, InFlight, Relay, OUTBOX_HEADER};
use crate::store::StoreError;

/// Why the relay's offsets could not be recorded or its recovery scan
/// could not finish (both are retried).
#[derive(Debug, thiserror::Error)]
pub(super) enum RecoveryError {
    /// Kafka refused or could not be reached.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The outbox store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The scan did not reach a topic's end in time.
    #[error("the end of {topic} was not reached within {secs} s")]
    NotAtEnd {
        /// The topic.
        topic: String,
        /// Seconds allowed.
        secs: u64,
    },
}

/// The relay id of `store`: drawn once and kept in the store.
pub(super) fn load_relay_id(store: &dyn crate::store::OutboxStore) -> Result<u64, StoreError> {
    Ok(match store.checkpoint("relay.id")? {
        Some(id) => id as u64,
        None => {
            let id = (uuid::Uuid::new_v4().as_u64_pair().0 >> 1) as i64;
            store.set_positions(&[("relay.id".into(), id)])?;
            id as u64
        }
    })
}

impl Relay {
    /// This store's relay id: drawn once and kept in the store.
    pub(super) fn relay_id(&self) -> Result<u64, StoreError> {
        if let Some(id) = self.id.get() {
            return Ok(*id);
        }
        let id = load_relay_id(self.store.as_ref())?;
        Ok(*self.id.get_or_init(|| id))
    }

    /// Records the end offsets of `topic`'s partitions that have none yet,
    /// before the relay first writes there (the start of any later scan).
    pub(super) fn baseline(&self, topic: &str) {
        if self
            .baselined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(topic)
        {
            return;
        }
        let mut tries = 0;
        loop {
            match self.try_baseline(topic) {
                Ok(()) => break,
                Err(e) if tries < 20 => {
                    tries += 1;
                    tracing::warn!(topic, error = %e, "cannot read the topic's end offsets; retrying");
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => {
                    tracing::error!(topic, error = %e, "sending without recorded end offsets: a crash before the first trim may publish changes twice");
                    break;
                }
            }
        }
        self.baselined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_string());
    }

    fn try_baseline(&self, topic: &str) -> Result<(), RecoveryError> {
        let client = self.producer.client();
        let md = client.fetch_metadata(Some(topic), Duration::from_secs(5))?;
        let mut marks = Vec::new();
        for t in md.topics().iter().filter(|t| t.name() == topic) {
            for p in t.partitions() {
                let name = offset_name(topic, p.id());
                if self.store.checkpoint(&name)?.is_none() {
                    let (_, high) =
                        client.fetch_watermarks(topic, p.id(), Duration::from_secs(5))?;
                    marks.push((name, high - 1));
                }
            }
        }
        Ok(self.store.set_positions(&marks)?)
    }

    /// Marks as sent the pending changes a previous run committed without
    /// recording it: read each partition of each pending topic from the
    /// last offset recorded to its end (committed records only: a
    /// transaction the previous run left open was aborted when this relay
    /// fenced it), looking for this relay's header. Returns how many it
    /// found.
    fn recover(&self) -> Result<usize, RecoveryError> {
        let relay = self.relay_id()?;
        let topics = self.store.pending_topics()?;
        if topics.is_empty() {
            return Ok(0);
        }
        let cfg = self
            .kafka
            .consumer(&format!("govbus-relay-recover-{}", uuid::Uuid::new_v4()));
        let consumer = govbus_kafka_client::eof_consumer(cfg)?;
        let mut found: Vec<i64> = Vec::new();
        let mut ends: Vec<(String, i64)> = Vec::new();
        // One topic at a time: a partition EOF names the partition only.
        for topic in &topics {
            let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            let mut tpl = rdkafka::TopicPartitionList::new();
            let mut open: HashSet<i32> = HashSet::new();
            for t in md.topics().iter().filter(|t| t.name() == topic) {
                for p in t.partitions() {
                    let from = self.store.checkpoint(&offset_name(topic, p.id()))?;
                    if let Some(o) = from {
                        tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Offset(o + 1))?;
                        open.insert(p.id());
                    }
                }
            }
            if open.is_empty() {
                continue;
            }
            consumer.assign(&tpl)?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !open.is_empty() {
                if Instant::now() > deadline {
                    return Err(RecoveryError::NotAtEnd {
                        topic: topic.clone(),
                        secs: 60,
                    });
                }
                match consumer.poll(Duration::from_millis(200)) {
                    None => {}
                    Some(Err(KafkaError::PartitionEOF(p))) => {
                        open.remove(&p);
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "relay recovery: consumer error"),
                    Some(Ok(m)) => {
                        let tagged = m.headers().and_then(|h| {
                            h.iter()
                                .find(|h| h.key == OUTBOX_HEADER)
                                .and_then(|h| h.value)
                                .and_then(outbox_tag)
                                .and_then(|(r, id)| (r == relay).then_some(id))
                        });
                        if let Some(id) = tagged {
                            found.push(id);
                            ends.push((offset_name(m.topic(), m.partition()), m.offset()));
                        }
                    }
                }
            }
        }
        found.sort_unstable();
        if !found.is_empty() {
            self.store.mark_sent(&found)?;
            ends.sort();
            ends.reverse();
            ends.dedup_by(|a, b| a.0 == b.0); // the highest offset per partition
            self.store.set_positions(&ends)?;
            tracing::info!(
                changes = found.len(),
                "relay recovery: changes already on the broker marked as sent, not published again"
            );
        }
        Ok(found.len())
    }

    /// [`Self::recover`], retried until it succeeds or `stop` is set.
    pub(super) fn recover_or_wait(&self, stop: &AtomicBool) {
        let mut tries = 0u32;
        while !stop.load(Ordering::Relaxed) {
            match self.recover() {
                Ok(_) => return,
                Err(e) => {
                    tries += 1;
                    if tries == 1 || tries.is_multiple_of(20) {
                        tracing::warn!(error = %e, "relay recovery failed; retrying before sending");
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    /// Records the broker offsets of the changes just marked as sent.
    pub(super) fn save_offsets(&self, flight: &mut InFlight) {
        if flight.offsets.is_empty() {
            return;
        }
        let marks: Vec<(String, i64)> = flight
            .offsets
            .iter()
            .filter_map(|(ds, p, o)| {
                flight
                    .topics
                    .get(usize::from(*ds))
                    .map(|t| (offset_name(t, *p), *o))
            })
            .collect();
        match self.store.set_positions(&marks) {
            Ok(()) => flight.offsets.clear(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot record the acknowledged offsets; kept for the next trim")
            }
        }
    }
}
