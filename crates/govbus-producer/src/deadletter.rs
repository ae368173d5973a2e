//! Rejected input of a producer's sources, on `dlq.ingest.<agency>`.

use std::time::Duration;

use govbus_kafka_client::KafkaConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// Writes rejected records with their reason; each write is flushed.
pub struct DeadLetters {
    producer: BaseProducer,
    topic: String,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("topic", &self.topic)
            .finish()
    }
}

impl DeadLetters {
    /// A writer to `topic` (created if missing).
    pub fn new(kafka: &KafkaConfig, topic: &str) -> Result<Self, KafkaError> {
        let _ = govbus_kafka_client::ensure_topics(
            kafka,
            &[govbus_kafka_client::TopicSpec::retained(topic, 1)],
        );
        Ok(Self {
            producer: kafka.producer().create()?,
            topic: topic.to_string(),
        })
    }

    /// Writes one rejected record and waits for the broker's ack.
    pub fn send(
        &self,
        key: &str,
        original: &[u8],
        reason: &str,
        error: &str,
        source: &str,
    ) -> Result<(), KafkaError> {
        self.send_rejected(key, original, reason, error, source, None, None)
    }

    /// [`Self::send`], naming the contract rules the record failed
    /// (header `govbus.rule`, comma-separated), the entity's sequence then
    /// (`govbus.entity.seq`, which a replay must find it at) and, for a
    /// replayed record, its earlier dead letters (`govbus.history`).
    #[allow(clippy::too_many_arguments)]
    pub fn send_rejected(
        &self,
        key: &str,
        original: &[u8],
        reason: &str,
        error: &str,
        source: &str,
        rules: Option<&str>,
        entity_seq: Option<i64>,
    ) -> Result<(), KafkaError> {
        let mut headers = OwnedHeaders::new();
        if let Some(r) = rules {
            headers = headers.insert(Header {
                key: "govbus.rule",
                value: Some(r),
            });
        }
        if let Some(seq) = entity_seq {
            headers = headers.insert(Header {
                key: "govbus.entity.seq",
                value: Some(&seq.to_string()),
            });
        }
        let history = serde_json::from_slice::<serde_json::Value>(original)
            .ok()
            .and_then(|row| row.get("replay_history")?.as_str().map(str::to_string));
        if let Some(h) = &history {
            headers = headers.insert(Header {
                key: "govbus.history",
                value: Some(h.as_str()),
            });
        }
        let headers = headers
            .insert(Header {
                key: "govbus.reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "govbus.error",
                value: Some(error),
            })
            .insert(Header {
                key: "govbus.source",
                value: Some(source),
            });
        self.producer
            .send(
                BaseRecord::to(&self.topic)
                    .key(key)
                    .payload(original)
                    .headers(headers),
            )
            .map_err(|(e, _)| e)?;
        self.producer.flush(Duration::from_secs(30))
    }
}
