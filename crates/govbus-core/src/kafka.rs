//! Kafka client settings shared by every agent.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

/// How to reach the cluster, plus raw librdkafka options passed through.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port]`.
    pub bootstrap: String,
    /// Raw librdkafka properties (`security.protocol`, `sasl.*`, ...), applied last.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// A config for `bootstrap` with no extra options.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            options: BTreeMap::new(),
        }
    }

    /// Base client config: bootstrap servers and the pass-through options.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        // Lower timeouts than librdkafka's defaults: group joins take seconds
        // instead of tens of seconds (and nisshi needs them, see ARCHITECTURE).
        c.set("socket.keepalive.enable", "true");
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c
    }

    /// An idempotent producer (acks=all): the relay and DLQ writers.
    pub fn producer(&self) -> ClientConfig {
        let mut c = self.client();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "none");
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c
    }

    /// A consumer in `group`: read_committed, manual commits, short session
    /// timeouts so that a rebalance takes seconds.
    pub fn consumer(&self, group: &str) -> ClientConfig {
        let mut c = self.client();
        c.set("group.id", group)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .set("max.poll.interval.ms", "30000")
            .set("enable.partition.eof", "false");
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c
    }
}
