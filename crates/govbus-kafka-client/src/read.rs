//! Reading partitions to a bound, with consumers that report where a
//! partition ends.

use rdkafka::ClientConfig;

use crate::KafkaConfig;

/// A consumer context for readers that ask for partition-EOF events (to
/// know where a partition ends): librdkafka also reports each one as a
/// global error, which this does not log.
#[derive(Debug, Clone, Copy, Default)]
pub struct EofQuiet;

impl rdkafka::ClientContext for EofQuiet {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        if !matches!(error, KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EofQuiet {}

/// A consumer that reports partition EOF, quietly (see [`EofQuiet`]).
pub type EofConsumer = rdkafka::consumer::BaseConsumer<EofQuiet>;

/// Creates an [`EofConsumer`] from `cfg` (partition EOF switched on).
pub fn eof_consumer(mut cfg: ClientConfig) -> Result<EofConsumer, rdkafka::error::KafkaError> {
    cfg.set("enable.partition.eof", "true");
    cfg.create_with_context(EofQuiet)
}

/// The partition ids of `topic` (empty if it does not exist).
pub fn partitions_of<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
) -> Result<Vec<i32>, rdkafka::error::KafkaError> {
    use rdkafka::consumer::Consumer;
    use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
    let md = consumer.fetch_metadata(Some(topic), std::time::Duration::from_secs(10))?;
    // A topic this principal may not describe is not a missing topic: no
    // wait will make it appear.
    if md.topics().iter().any(|t| {
        t.name() == topic
            && t.error() == Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED)
    }) {
        return Err(rdkafka::error::KafkaError::MetadataFetch(
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ));
    }
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// Reads partitions of `topic` from their beginning, read_committed, with
/// no consumer group commits, handing each record to `f`: each partition up
/// to its `until` offset (exclusive), or to its current end when `until` is
/// None. Fails after `limit` without reaching every end.
pub fn read_partitions(
    kafka: &KafkaConfig,
    topic: &str,
    bounds: &[(i32, Option<i64>)],
    limit: std::time::Duration,
    mut f: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<(), rdkafka::error::KafkaError> {
    use rdkafka::consumer::Consumer;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::Message;
    let mut left: std::collections::HashMap<i32, Option<i64>> = bounds
        .iter()
        .filter(|(_, u)| u.is_none_or(|u| u > 0))
        .copied()
        .collect();
    if left.is_empty() {
        return Ok(());
    }
    let mut cfg = kafka.consumer(&format!("govbus-reader-{}", uuid::Uuid::new_v4()));
    // Short fetch waits: a reader stops at the end, it does not wait there.
    cfg.set("fetch.wait.max.ms", "10");
    let consumer = eof_consumer(cfg)?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in left.keys() {
        tpl.add_partition_offset(topic, *p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + limit;
    while !left.is_empty() {
        if std::time::Instant::now() > deadline {
            return Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        match consumer.poll(std::time::Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let p = m.partition();
                let Some(until) = left.get(&p).copied() else {
                    continue;
                };
                if until.is_none_or(|u| m.offset() < u) {
                    f(&m);
                }
                if until.is_some_and(|u| m.offset() + 1 >= u) {
                    left.remove(&p);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                left.remove(&p);
            }
            Some(Err(e)) => tracing::warn!(topic, error = %e, "reading a topic"),
            None => {}
        }
    }
    Ok(())
}
