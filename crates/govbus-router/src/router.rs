//! The routing loop: consume central topics read_committed, route, and write
//! the views and the consumed offsets in one Kafka transaction.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cel_interpreter::Context;
use govbus_core::kafka::{ensure_topics, poll_batch, KafkaSetupError, TopicSpec};
use govbus_core::{Catalog, CatalogError, KafkaConfig, Topics};
use govbus_schema::{RegistryClient, RegistryError, SchemaCache};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::route::{route, RouteError};
use crate::views::{self, View};

/// Router settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// The cluster.
    pub kafka: KafkaConfig,
    /// Schema registry URL.
    pub registry: String,
    /// Consumer group shared by router instances.
    #[serde(default = "default_group")]
    pub group: String,
    /// This instance's name: part of its transactional id (stable across restarts).
    #[serde(default = "default_instance")]
    pub instance: String,
    /// Prefix of every topic name (empty in production).
    #[serde(default)]
    pub topic_prefix: String,
    /// Most records per transaction.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Partitions of topics the router creates.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
}

fn default_group() -> String {
    "govbus-router".into()
}
fn default_instance() -> String {
    "0".into()
}
fn default_batch() -> usize {
    1000
}
fn default_partitions() -> i32 {
    4
}

/// Why the router stopped.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A subscription or dataset file is wrong.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The registry refused or is unreachable.
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    /// Kafka failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// Topics could not be created.
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    /// A writer schema could not be fetched; the batch is retried.
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
}

/// The router: compiled views plus their input topics.
#[derive(Debug)]
pub struct Router {
    cfg: RouterConfig,
    views: Vec<View>,
    /// Input topic → (dataset label, view indices).
    inputs: HashMap<String, (String, Vec<usize>)>,
    dlq: HashMap<String, String>,
    resolver: SchemaCache,
}

impl Router {
    /// Compiles the catalog's subscriptions, registers view schemas and
    /// creates missing topics.
    pub fn new(cfg: RouterConfig, catalog: &Catalog) -> Result<Self, RouterError> {
        let topics = Topics::new(&cfg.topic_prefix);
        let mut views = views::compile(catalog, &topics)?;
        let registry = RegistryClient::new(&cfg.registry);
        views::register(&mut views, &registry)?;
        let mut inputs: HashMap<String, (String, Vec<usize>)> = HashMap::new();
        let mut dlq = HashMap::new();
        let mut specs = Vec::new();
        for (i, v) in views.iter().enumerate() {
            let ds = catalog
                .dataset(&v.dataset)
                .expect("compiled views name declared datasets");
            let input = topics.central(&ds.id, ds.file.major);
            inputs
                .entry(input.clone())
                .or_insert_with(|| (ds.id.to_string(), vec![]))
                .1
                .push(i);
            let d = topics.dlq("route", &ds.id.to_string());
            dlq.insert(input.clone(), d.clone());
            specs.push(TopicSpec::compacted(input, cfg.partitions));
            specs.push(TopicSpec::compacted(v.topic.clone(), cfg.partitions));
            specs.push(TopicSpec::retained(d, 1));
        }
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        specs.dedup_by(|a, b| a.name == b.name);
        ensure_topics(&cfg.kafka, &specs)?;
        for v in &views {
            tracing::info!(view = v.name, topic = v.topic, filter = v.filter.source(), expires_ms = ?v.expires_ms, "subscription active");
            metrics::gauge!("govbus_subscription_active", "subscriber" => v.subscriber.clone(), "dataset" => v.dataset.to_string()).set(1.0);
        }
        Ok(Self {
            resolver: SchemaCache::new(registry),
            cfg,
            views,
            inputs,
            dlq,
        })
    }

    /// The compiled views.
    pub fn views(&self) -> &[View] {
        &self.views
    }

    /// Routes until `stop`; on a transaction failure it aborts, rebuilds its
    /// clients (resuming from the last committed offsets) and goes on.
    pub fn run(&self, stop: Arc<AtomicBool>) -> Result<(), RouterError> {
        let mut failures = 0u32;
        while !stop.load(Ordering::Relaxed) {
            match self.session(&stop) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    failures += 1;
                    tracing::error!(error = %e, failures, "routing session failed; restarting from committed offsets");
                    std::thread::sleep(Duration::from_millis(500 * failures.min(10) as u64));
                }
            }
        }
        Ok(())
    }

    fn session(&self, stop: &AtomicBool) -> Result<(), RouterError> {
        let kafka = &self.cfg.kafka;
        let consumer: BaseConsumer = kafka
            .consumer(&self.cfg.group)
            .set("fetch.wait.max.ms", "100")
            .create()?;
        let topics: Vec<&str> = self.inputs.keys().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let tid = format!("govbus-router-{}-{}", self.cfg.group, self.cfg.instance);
        let producer: ThreadedProducer<DefaultProducerContext> = kafka
            .producer()
            .set("transactional.id", &tid)
            .set("transaction.timeout.ms", "60000")
            .set("linger.ms", "5")
            .set("partitioner", "murmur2_random")
            .create()?;
        producer.init_transactions(Duration::from_secs(30))?;
        let base = Context::default();
        tracing::info!(transactional_id = tid, ?topics, "router session started");
        let mut batch = Vec::with_capacity(self.cfg.batch);
        let mut last_lag = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if last_lag.elapsed() > Duration::from_secs(2) {
                for (topic, lag) in govbus_core::kafka::lag_by_topic(&consumer) {
                    if let Some((dataset, _)) = self.inputs.get(&topic) {
                        metrics::gauge!("govbus_router_lag_events", "dataset" => dataset.clone())
                            .set(lag as f64);
                    }
                }
                last_lag = std::time::Instant::now();
            }
            poll_batch(
                &consumer,
                &mut batch,
                self.cfg.batch,
                Duration::from_millis(100),
            );
            if batch.is_empty() {
                continue;
            }
            producer.begin_transaction()?;
            let res = self
                .route_batch(&batch, &producer, &base)
                .and_then(|offsets| {
                    let meta = consumer
                        .group_metadata()
                        .ok_or_else(|| KafkaError::Subscription("no group metadata".into()))?;
                    producer.send_offsets_to_transaction(
                        &offsets,
                        &meta,
                        Duration::from_secs(30),
                    )?;
                    producer.commit_transaction(Duration::from_secs(30))?;
                    Ok(())
                });
            match res {
                Ok(()) => {
                    metrics::counter!("govbus_router_transactions_total", "result" => "committed")
                        .increment(1);
                }
                Err(e) => {
                    metrics::counter!("govbus_router_transactions_total", "result" => "aborted")
                        .increment(1);
                    let _ = producer.abort_transaction(Duration::from_secs(30));
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn route_batch(
        &self,
        batch: &[rdkafka::message::OwnedMessage],
        producer: &ThreadedProducer<DefaultProducerContext>,
        base: &Context<'_>,
    ) -> Result<TopicPartitionList, RouterError> {
        let mut next: HashMap<(String, i32), i64> = HashMap::new();
        for m in batch {
            next.insert((m.topic().to_string(), m.partition()), m.offset() + 1);
            let Some((dataset, idx)) = self.inputs.get(m.topic()) else {
                continue;
            };
            metrics::counter!("govbus_router_consumed_total", "dataset" => dataset.clone())
                .increment(1);
            let payload = m.payload().unwrap_or_default();
            let key = m.key().unwrap_or_default();
            match route(payload, &self.resolver, base, &self.views, idx) {
                Ok(outs) => {
                    for o in outs {
                        let v = &self.views[o.view];
                        metrics::counter!("govbus_router_routed_total", "subscriber" => v.subscriber.clone(), "dataset" => dataset.clone(), "decision" => o.decision).increment(1);
                        send(
                            producer,
                            BaseRecord::to(&v.topic).key(key).payload(&o.value),
                        )?;
                    }
                }
                Err(RouteError::Envelope(e)) if e.is_transient() => {
                    // The registry is unreachable: abort and retry the batch
                    // later rather than dead-letter good records.
                    tracing::warn!(error = %e, "schema registry unavailable; retrying the batch");
                    return Err(RouterError::RegistryUnavailable(e.to_string()));
                }
                Err(e) => {
                    let reason = e.reason();
                    let dlq = &self.dlq[m.topic()];
                    tracing::warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), reason, error = %e, "change sent to the DLQ");
                    metrics::counter!("govbus_router_dlq_total", "dataset" => dataset.clone(), "reason" => reason).increment(1);
                    let partition = m.partition().to_string();
                    let offset = m.offset().to_string();
                    let error = e.to_string();
                    let headers = OwnedHeaders::new()
                        .insert(Header {
                            key: "govbus.reason",
                            value: Some(reason),
                        })
                        .insert(Header {
                            key: "govbus.error",
                            value: Some(&error),
                        })
                        .insert(Header {
                            key: "govbus.source.topic",
                            value: Some(m.topic()),
                        })
                        .insert(Header {
                            key: "govbus.source.partition",
                            value: Some(&partition),
                        })
                        .insert(Header {
                            key: "govbus.source.offset",
                            value: Some(&offset),
                        });
                    send(
                        producer,
                        BaseRecord::to(dlq)
                            .key(key)
                            .payload(payload)
                            .headers(headers),
                    )?;
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in next {
            tpl.add_partition_offset(&t, p, Offset::Offset(o))?;
        }
        Ok(tpl)
    }
}

fn send<'a>(
    producer: &ThreadedProducer<DefaultProducerContext>,
    mut record: BaseRecord<'a, [u8], [u8]>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e),
        }
    }
}
