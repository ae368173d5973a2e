//! A report's figures on `report.<subscriber>.<name>`: a compacted topic,
//! one Avro record (registered under the topic's value subject) per cell as
//! shown today, keyed by the cell's labels (a JSON array); a cell that
//! empties gets a tombstone. An IOC system reads it with any Kafka client.
//!
//! The province's database is the truth; the topic follows it. At start
//! every figure is sent again and every key the topic holds that is no
//! longer a figure gets a tombstone, so a crash between a commit and its
//! figures, or a lost delivery, is repaired by the next start (a failed
//! delivery also makes the next batch send everything again).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::Value as AvroValue;
use apache_avro::Schema;
use chrono::NaiveDate;
use govbus_core::{InternalEvent, Topics};
use govbus_kafka_client::KafkaConfig;
use govbus_kafka_client::{ensure_topics, read_partitions, TopicSpec};
use govbus_schema::RegistryClient;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};
use serde_json::json;

use crate::events::{ReceiptsDeferred, ReportPublished};
use crate::receipt::Receipt;
use crate::report::{cell_text, Cell, Report};
use crate::sink::SqlSink;
use crate::store::Store;

/// Why figures could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Kafka failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The report topic could not be created.
    #[error(transparent)]
    Setup(#[from] govbus_kafka_client::KafkaSetupError),
    /// The report's schema could not be registered.
    #[error("registering the schema of {topic}: {source}")]
    Registry {
        /// The topic.
        topic: String,
        /// Why.
        source: govbus_schema::RegistryError,
    },
    /// The sink could not give the stored figures.
    #[error("sink: {0}")]
    Sink(#[from] crate::sink::SinkError),
    /// The database could not give the stored figures or receipts.
    #[error("{0}")]
    Db(#[from] crate::db::DbError),
    /// A figure could not be encoded.
    #[error("encoding a figure of {topic}: {message}")]
    Encode {
        /// The topic.
        topic: String,
        /// Why.
        message: String,
    },
}

/// Logs failed deliveries and asks for a full send at the next batch.
struct Deliveries {
    failed: Arc<AtomicBool>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            tracing::warn!(topic = m.topic(), error = %e, "a report figure was not delivered; every figure will be sent again");
            self.failed.store(true, Ordering::Relaxed);
        }
    }
}

/// The Avro schema of a report's records.
pub fn schema_of(report: &Report) -> String {
    let f = &report.file;
    let mut name: Vec<char> = f.name.chars().collect();
    if let Some(c) = name.first_mut() {
        *c = c.to_ascii_uppercase();
    }
    let name: String = name.into_iter().filter(|c| *c != '_').collect();
    let mut fields: Vec<serde_json::Value> = f
        .dimensions
        .iter()
        .map(|d| json!({"name": d.name, "type": "string", "doc": format!("{} / {}", d.title.vi, d.title.en)}))
        .collect();
    fields.push(json!({"name": "count", "type": "long", "doc": "Số lượng / Count"}));
    fields.push(json!({"name": "as_of", "type": "string", "doc": "The day (Vietnam) the age bands are counted for, YYYY-MM-DD"}));
    fields.push(json!({"name": "updated_at", "type": {"type": "long", "logicalType": "timestamp-millis"}, "doc": "When the consumer last changed the figure"}));
    json!({
        "type": "record",
        "name": name,
        "namespace": format!("gov.report.{}", f.subscriber),
        "doc": format!("{} / {}", f.title.vi, f.title.en),
        "fields": fields,
    })
    .to_string()
}

struct Feed {
    report: Arc<Report>,
    topic: String,
    id: u32,
    schema: Schema,
    stored: BTreeMap<Cell, i64>,
    shown: BTreeMap<Cell, i64>,
    day: NaiveDate,
}

impl Feed {
    fn fold(&mut self, day: NaiveDate) {
        self.day = day;
        let cells: Vec<(Cell, i64)> = self.stored.iter().map(|(c, n)| (c.clone(), *n)).collect();
        self.shown = self.report.figures(&cells, day);
    }

    fn encode(&self, cell: &Cell, n: i64) -> Result<Vec<u8>, PublishError> {
        let mut fields: Vec<(String, AvroValue)> = self
            .report
            .file
            .dimensions
            .iter()
            .zip(cell)
            .map(|(d, l)| (d.name.clone(), AvroValue::String(l.clone())))
            .collect();
        fields.push(("count".into(), AvroValue::Long(n)));
        fields.push(("as_of".into(), AvroValue::String(self.day.to_string())));
        fields.push((
            "updated_at".into(),
            AvroValue::TimestampMillis(govbus_core::now_ms()),
        ));
        let body =
            apache_avro::to_avro_datum(&self.schema, AvroValue::Record(fields)).map_err(|e| {
                PublishError::Encode {
                    topic: self.topic.clone(),
                    message: e.to_string(),
                }
            })?;
        Ok(govbus_schema::wire::encode(self.id, &body))
    }
}

/// Publishes a subscriber's reports.
pub struct ReportFeed {
    producer: ThreadedProducer<Deliveries>,
    failed: Arc<AtomicBool>,
    feeds: Vec<Feed>,
    kafka: KafkaConfig,
}

impl std::fmt::Debug for ReportFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportFeed")
            .field(
                "topics",
                &self.feeds.iter().map(|x| &x.topic).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn today() -> NaiveDate {
    govbus_core::admin_map::day_of_ms(govbus_core::now_ms())
}

impl ReportFeed {
    /// Creates the report topics, registers their schemas, and sends every
    /// figure the sink holds (with tombstones for keys that are no longer
    /// figures).
    pub fn start(
        kafka: &KafkaConfig,
        topics: &Topics,
        registry: &RegistryClient,
        reports: &[Arc<Report>],
        store: &mut Store,
    ) -> Result<Self, PublishError> {
        let failed = Arc::new(AtomicBool::new(false));
        let producer = kafka.producer().create_with_context(Deliveries {
            failed: failed.clone(),
        })?;
        let mut feeds = Vec::new();
        for r in reports {
            let topic = topics.report(&r.file.subscriber, &r.file.name);
            ensure_topics(kafka, &[TopicSpec::compacted(topic.clone(), 1)])?;
            let text = schema_of(r);
            let schema = Schema::parse_str(&text).map_err(|e| PublishError::Encode {
                topic: topic.clone(),
                message: e.to_string(),
            })?;
            let id = registry
                .register(&govbus_core::topics::value_subject(&topic), &text)
                .map_err(|source| PublishError::Registry {
                    topic: topic.clone(),
                    source,
                })?;
            let stored: BTreeMap<Cell, i64> = store.report_cells(&r.id())?.into_iter().collect();
            let mut feed = Feed {
                report: r.clone(),
                topic,
                id,
                schema,
                stored,
                shown: BTreeMap::new(),
                day: today(),
            };
            feed.fold(today());
            feeds.push(feed);
        }
        let mut me = Self {
            producer,
            failed,
            feeds,
            kafka: kafka.clone(),
        };
        me.send_all()?;
        Ok(me)
    }

    /// Every figure, and tombstones for the keys the topic holds that are
    /// not figures.
    fn send_all(&mut self) -> Result<(), PublishError> {
        for i in 0..self.feeds.len() {
            let f = &self.feeds[i];
            let mut keys: BTreeSet<Vec<u8>> = BTreeSet::new();
            read_partitions(
                &self.kafka,
                &f.topic,
                &[(0, None)],
                Duration::from_secs(60),
                |m| {
                    if let Some(k) = m.key() {
                        if m.payload().is_some() {
                            keys.insert(k.to_vec());
                        } else {
                            keys.remove(k);
                        }
                    }
                },
            )?;
            for (cell, n) in &f.shown {
                let key = cell_text(cell);
                keys.remove(key.as_bytes());
                self.send(i, &key, Some(f.encode(cell, *n)?))?;
            }
            for k in keys {
                self.send(i, &String::from_utf8_lossy(&k), None)?;
            }
            ReportPublished {
                report: &f.report.id(),
                figures: f.shown.len(),
                all: true,
            }
            .emit();
        }
        self.producer.flush(Duration::from_secs(30))?;
        Ok(())
    }

    fn send(&self, feed: usize, key: &str, value: Option<Vec<u8>>) -> Result<(), PublishError> {
        let topic = &self.feeds[feed].topic;
        let mut record = BaseRecord::<str, [u8]>::to(topic).key(key);
        if let Some(v) = &value {
            record = record.payload(v);
        }
        self.producer.send(record).map_err(|(e, _)| e)?;
        Ok(())
    }

    /// Follows a batch's changes of counts (report id, stored cell,
    /// change): sends the figures they change. A new day (a new year for
    /// the age bands) or a failed delivery sends everything again.
    pub fn apply(&mut self, deltas: Vec<(String, Cell, i64)>) -> Result<(), PublishError> {
        let day = today();
        let mut again = self.failed.swap(false, Ordering::Relaxed);
        let mut touched: Vec<(usize, Cell)> = Vec::new();
        for (report, cell, d) in deltas {
            let Some(i) = self.feeds.iter().position(|f| f.report.id() == report) else {
                continue;
            };
            let f = &mut self.feeds[i];
            let n = f.stored.entry(cell.clone()).or_default();
            *n += d;
            if *n == 0 {
                f.stored.remove(&cell);
            }
            let shown = f.report.shown(&cell, f.day);
            let s = f.shown.entry(shown.clone()).or_default();
            *s += d;
            touched.push((i, shown));
        }
        for f in &mut self.feeds {
            if f.day != day {
                f.fold(day);
                again = true;
            }
        }
        if again {
            return self.send_all();
        }
        touched.sort();
        touched.dedup();
        let mut sent = vec![0usize; self.feeds.len()];
        for (i, cell) in touched {
            let n = self.feeds[i].shown.get(&cell).copied().unwrap_or(0);
            let value = if n == 0 {
                self.feeds[i].shown.remove(&cell);
                None
            } else {
                Some(self.feeds[i].encode(&cell, n)?)
            };
            self.send(i, &cell_text(&cell), value)?;
            sent[i] += 1;
        }
        for (f, n) in self.feeds.iter().zip(sent) {
            if n > 0 {
                ReportPublished {
                    report: &f.report.id(),
                    figures: n,
                    all: false,
                }
                .emit();
            }
        }
        Ok(())
    }
}

/// Receipts' deliveries: the highest receipt the cluster acknowledged,
/// and whether one failed since the last look.
struct ReceiptDeliveries {
    failed: Arc<AtomicBool>,
    acked: Arc<AtomicI64>,
}

impl ClientContext for ReceiptDeliveries {}

impl ProducerContext for ReceiptDeliveries {
    /// The receipt's number.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        match result {
            Ok(_) => {
                self.acked.fetch_max(seq as i64, Ordering::Relaxed);
            }
            Err((e, _)) => {
                tracing::warn!(receipt = seq, error = %e, "a receipt was not delivered; it is sent again");
                self.failed.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// How often the last acknowledged receipt is written down (a write of its
/// own; after a restart the receipts after it are sent again).
const MARK_EVERY: Duration = Duration::from_secs(5);

/// Publishes a subscriber's receipts on `_govbus.receipts` (keyed by the
/// subscriber, the receipt as JSON), after each batch's commit, without
/// waiting for the cluster: the batch after it does not wait either. The
/// sink keeps which receipt was last acknowledged (written every few
/// seconds): at start, or after a failed delivery, every receipt after it
/// is sent again (a reader counts a receipt once by subscriber and number).
pub struct ReceiptFeed {
    producer: ThreadedProducer<ReceiptDeliveries>,
    failed: Arc<AtomicBool>,
    acked: Arc<AtomicI64>,
    topic: String,
    subscriber: String,
    /// The last receipt written down as acknowledged.
    published: i64,
    /// The last receipt handed to the producer.
    sent: i64,
    /// When `published` was last written.
    marked: std::time::Instant,
    /// A send or its bookkeeping failed: the next batch first sends every
    /// receipt after `published`.
    behind: bool,
}

impl std::fmt::Debug for ReceiptFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptFeed")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// The largest receipt the receipts topic and its producer take: a
/// receipt lists every event of its batch (up to 5,000, ~120 bytes each
/// with a short topic name), which Kafka's default 1 MB only just holds.
const RECEIPT_BYTES: usize = 16 << 20;

/// Receipts read from the database at a time to send again (each may
/// list thousands of events).
const CATCH_UP: i64 = 50;

impl ReceiptFeed {
    /// Creates `_govbus.receipts.<subscriber>` if needed and sends the receipts the
    /// topic may lack.
    pub fn start(
        kafka: &KafkaConfig,
        topics: &Topics,
        subscriber: &str,
        sink: &mut SqlSink,
    ) -> Result<Self, PublishError> {
        let topic = topics.receipts(subscriber);
        let mut spec = TopicSpec::retained(topic.clone(), 4);
        spec.configs
            .push(("max.message.bytes".into(), RECEIPT_BYTES.to_string()));
        ensure_topics(kafka, &[spec])?;
        let failed = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicI64::new(0));
        let mut pc = kafka.producer();
        pc.set("message.max.bytes", RECEIPT_BYTES.to_string());
        let producer = pc.create_with_context(ReceiptDeliveries {
            failed: failed.clone(),
            acked: acked.clone(),
        })?;
        let published = sink.receipts_published()?;
        let mut me = Self {
            producer,
            failed,
            acked,
            topic,
            subscriber: subscriber.to_string(),
            published,
            sent: published,
            marked: std::time::Instant::now(),
            behind: true,
        };
        me.publish(Vec::new(), sink);
        Ok(me)
    }

    /// Sends every stored receipt after the last acknowledged one, and
    /// waits for the cluster to acknowledge them.
    fn catch_up(&mut self, sink: &mut SqlSink) -> Result<(), PublishError> {
        self.sent = self.published;
        loop {
            let batch: Vec<Receipt> = sink
                .store()
                .receipts(self.sent + 1, CATCH_UP)?
                .into_iter()
                .filter(|r| r.subscriber == self.subscriber)
                .collect();
            if batch.is_empty() {
                break;
            }
            self.send(&batch)?;
        }
        self.producer.flush(Duration::from_secs(30))?;
        if self.failed.swap(false, Ordering::Relaxed) {
            return Err(PublishError::Kafka(
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::MessageTimedOut,
                ),
            ));
        }
        self.mark(sink, true)
    }

    /// Hands `receipts` to the producer.
    fn send(&mut self, receipts: &[Receipt]) -> Result<(), PublishError> {
        for r in receipts {
            let value = serde_json::to_vec(r).unwrap_or_default();
            self.producer
                .send(
                    BaseRecord::<str, [u8], usize>::with_opaque_to(&self.topic, r.seq as usize)
                        .key(&self.subscriber)
                        .payload(&value),
                )
                .map_err(|(e, _)| e)?;
            self.sent = r.seq;
        }
        Ok(())
    }

    /// Writes down the last receipt acknowledged (every [`MARK_EVERY`], or
    /// now), unless a delivery failed: then the next batch sends again
    /// from the last one written down.
    fn mark(&mut self, sink: &mut SqlSink, now: bool) -> Result<(), PublishError> {
        // Read before the failure flag: deliveries are reported in order,
        // so a failure before the acknowledged receipt is already flagged.
        let acked = self.acked.load(Ordering::Relaxed).min(self.sent);
        if self.failed.swap(false, Ordering::Relaxed) {
            self.behind = true;
            return Ok(());
        }
        if acked > self.published && (now || self.marked.elapsed() >= MARK_EVERY) {
            sink.mark_receipts_published(acked)?;
            self.published = acked;
            self.marked = std::time::Instant::now();
        }
        Ok(())
    }

    /// Sends the receipts a batch wrote (and, after a failure, those the
    /// topic may lack). The receipts are committed with their rows, so a
    /// failure here (the cluster or the database unavailable for a moment)
    /// loses nothing: it is logged, counted, and the next batch sends
    /// again from the last acknowledged receipt. It never stops the
    /// consumer.
    pub fn publish(&mut self, receipts: Vec<Receipt>, sink: &mut SqlSink) {
        let gap = receipts.first().is_some_and(|r| r.seq > self.sent + 1);
        let done = if self.behind || gap {
            self.behind = false;
            self.catch_up(sink)
        } else {
            self.send(&receipts).and_then(|()| self.mark(sink, false))
        };
        if let Err(error) = done {
            ReceiptsDeferred {
                subscriber: &self.subscriber,
                error: &error,
            }
            .emit();
            self.behind = true;
        }
    }
}
