//! The province agent: read its views read_committed, decode with the writer
//! schema, apply to the sink with the offsets in the same transaction.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use govbus_core::{Catalog, Topics};
use govbus_kafka_client::KafkaConfig;
use govbus_kafka_client::{ensure_topics, poll_batch, KafkaSetupError, TopicSpec};
use govbus_schema::envelope::{decode, Change, EnvelopeError};
use govbus_schema::{Op, RegistryClient, SchemaCache, SchemaResolver};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::build;
use crate::deadletter::{apply_one_by_one, dead_of, ApplyError, DeadLetters};
use crate::events::{ApplyFailed, BatchApplied, DeadLettered, Stalled};
use crate::publish::{ReceiptFeed, ReportFeed};
use crate::report::Report;
use crate::sink::{self, Dead, Row, Sink, SinkConfig, SinkError};
use crate::snapshot::Freezer;
use crate::table::{table_def, value_at, TableDef};
use govbus_core::health::Readiness;
use govbus_core::InternalEvent;

/// Consumer settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "RawConsumerConfig")]
pub struct ConsumerConfig {
    /// The cluster.
    pub kafka: KafkaConfig,
    /// Schema registry URL.
    pub registry: String,
    /// How to reach an HTTPS registry that requires credentials: its CA,
    /// this agency's name and token (none: plain HTTP, anonymous).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_access: Option<govbus_http::ClientAccess>,
    /// The subscribing agency (`p52`).
    pub subscriber: String,
    /// Prefix of every topic name (empty in production).
    #[serde(default)]
    pub topic_prefix: String,
    /// Where the province's copy lives (`[consumer.sink]`, tagged by
    /// `type`).
    pub sink: SinkConfig,
    /// Most changes per batch: a database transaction, a webhook POST, a
    /// receipt (None: the sink's default, [`ConsumerConfig::batch`]). A
    /// batch is full only when there is a backlog; at most [`MAX_BATCH`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// Partitions of view topics, if the consumer has to create them.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Seconds the consumer may hold a backlog (records past its position)
    /// while applying nothing before it logs why and starts a new session.
    #[serde(default = "default_stall_secs")]
    pub stall_secs: u64,
}

/// [`ConsumerConfig`] as read, with the keys that moved into
/// `[consumer.sink]`: present, they are refused with what to write instead.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsumerConfig {
    kafka: KafkaConfig,
    registry: String,
    #[serde(default)]
    registry_access: Option<govbus_http::ClientAccess>,
    subscriber: String,
    #[serde(default)]
    topic_prefix: String,
    sink: SinkConfig,
    #[serde(default)]
    batch: Option<usize>,
    #[serde(default = "default_partitions")]
    partitions: i32,
    #[serde(default = "default_stall_secs")]
    stall_secs: u64,
    pg_schema: Option<serde_json::Value>,
    state: Option<serde_json::Value>,
    webhook_secret: Option<serde_json::Value>,
    webhook_per_change: Option<serde_json::Value>,
    webhook_timeout_ms: Option<serde_json::Value>,
}

impl TryFrom<RawConsumerConfig> for ConsumerConfig {
    type Error = String;

    fn try_from(r: RawConsumerConfig) -> Result<Self, String> {
        let moved = [
            ("pg_schema", &r.pg_schema, "schema"),
            ("state", &r.state, "state"),
            ("webhook_secret", &r.webhook_secret, "secret"),
            ("webhook_per_change", &r.webhook_per_change, "per_change"),
            ("webhook_timeout_ms", &r.webhook_timeout_ms, "timeout_ms"),
        ];
        if let Some(b) = r.batch.filter(|b| !(1..=MAX_BATCH).contains(b)) {
            return Err(format!(
                "`batch = {b}`: a batch holds 1 to {MAX_BATCH} changes (its receipt must stay under Kafka's 1 MB message)"
            ));
        }
        if let Some((old, value, new)) = moved.iter().find(|(_, v, _)| v.is_some()) {
            return Err(format!(
                "`{old}` moved into the sink's section: write `{new} = {}` under [consumer.sink]",
                value.as_ref().map(ToString::to_string).unwrap_or_default()
            ));
        }
        Ok(Self {
            kafka: r.kafka,
            registry: r.registry,
            registry_access: r.registry_access,
            subscriber: r.subscriber,
            topic_prefix: r.topic_prefix,
            sink: r.sink,
            batch: r.batch,
            partitions: r.partitions,
            stall_secs: r.stall_secs,
        })
    }
}

fn default_stall_secs() -> u64 {
    60
}
/// The most changes a batch may hold: a receipt lists each (~120 bytes),
/// and is one Kafka message (at most 1 MB by default).
pub const MAX_BATCH: usize = 5_000;

impl ConsumerConfig {
    /// Most changes per batch: as configured, else 5,000 for a database
    /// or a file (a first load or a catch-up applies at the database's
    /// speed: a transaction's fixed cost is spread over many rows) and
    /// 500 for a webhook (a POST's body stays small for its receiver).
    pub fn batch(&self) -> usize {
        self.batch.unwrap_or(match self.sink {
            SinkConfig::Webhook(_) => 500,
            _ => MAX_BATCH,
        })
    }
}
fn default_partitions() -> i32 {
    4
}

/// Why the consumer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// Kafka failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// Topics could not be created.
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    /// The registry client's settings are unusable.
    #[error("registry: {0}")]
    Registry(#[from] govbus_schema::RegistryError),
    /// The broker's ACLs do not let this province read its views.
    #[error(transparent)]
    Access(#[from] govbus_kafka_client::acl::AccessError),
    /// The sink could not be opened.
    #[error("sink: {0}")]
    Sink(#[from] SinkError),
    /// The sink's database could not be read.
    #[error("{0}")]
    Db(#[from] crate::db::DbError),
    /// A report over the subscriber's view cannot be kept.
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
    /// A report could not be built from the table.
    #[error("report: {0}")]
    Build(#[from] crate::build::BuildError),
    /// A report's figures could not be published.
    #[error("report figures: {0}")]
    Publish(#[from] crate::publish::PublishError),
    /// The subscriber has no subscription in the catalog.
    #[error("subscriber {0} has no subscription")]
    NoSubscription(String),
    /// The consumer held a backlog and received nothing for too long; a
    /// new session follows.
    #[error("consumed nothing for {idle_secs} s while {backlog} records waited past its position")]
    Stalled {
        /// Seconds without a record.
        idle_secs: u64,
        /// Records past the position.
        backlog: i64,
    },
}

#[derive(Debug, Clone)]
struct Input {
    dataset: String,
    table: String,
    key: String,
}

/// Runs the consumer until `stop`.
pub fn run(
    cfg: &ConsumerConfig,
    catalog: &Catalog,
    stop: Arc<AtomicBool>,
) -> Result<(), ConsumerError> {
    run_reporting(cfg, catalog, stop, &Readiness::new())
}

/// [`run`], reporting to `ready` whether it is applying and caught up (at
/// most [`govbus_core::health::CAUGHT_UP`] records behind), and why not.
pub fn run_reporting(
    cfg: &ConsumerConfig,
    catalog: &Catalog,
    stop: Arc<AtomicBool>,
    ready: &Readiness,
) -> Result<(), ConsumerError> {
    // Kafka's tools show the province by name (`govbus-p52`).
    let named = ConsumerConfig {
        kafka: cfg
            .kafka
            .clone()
            .named(&format!("govbus-{}", cfg.subscriber)),
        ..cfg.clone()
    };
    let cfg = &named;
    // Exported from the start, so that alerts on their increase (or on
    // its absence) see the first change.
    let sub = cfg.subscriber.clone();
    metrics::counter!("govbus_consumer_stalls_total", "subscriber" => sub.clone()).increment(0);
    for op in ["upsert", "delete"] {
        metrics::counter!("govbus_consumer_applied_total", "subscriber" => sub.clone(), "op" => op)
            .increment(0);
    }
    let topics = Topics::new(&cfg.topic_prefix);
    let mut inputs: HashMap<String, Input> = HashMap::new();
    for s in catalog
        .subscriptions
        .iter()
        .filter(|s| s.file.subscriber == cfg.subscriber)
    {
        let Some(ds) = catalog.dataset(&s.file.dataset) else {
            continue;
        };
        inputs.insert(
            topics.view(&cfg.subscriber, &ds.id, ds.file.major),
            Input {
                dataset: ds.id.to_string(),
                table: format!("{}_{}", ds.id.owner, ds.id.name),
                key: ds.file.key.clone(),
            },
        );
    }
    if inputs.is_empty() {
        return Err(ConsumerError::NoSubscription(cfg.subscriber.clone()));
    }
    let dlq = topics.dlq("consume", &cfg.subscriber);
    let mut specs: Vec<TopicSpec> = inputs
        .keys()
        .map(|t| TopicSpec::compacted(t.clone(), cfg.partitions))
        .collect();
    // Each view's replay topic (`govbus dlq replay`) is applied like the
    // view itself, its offsets kept by the sink beside the view's.
    let replays: Vec<(String, Input)> = inputs
        .iter()
        .map(|(t, i)| (Topics::replay(t), i.clone()))
        .collect();
    for (topic, input) in replays {
        specs.push(TopicSpec::retained(topic.clone(), 1));
        inputs.insert(topic, input);
    }
    specs.push(TopicSpec::retained(dlq.clone(), 1));
    let dead_letters = DeadLetters::new(&cfg.kafka, dlq)?;
    // Under ACLs the router creates the views; until it has, wait, saying so.
    let mut said = Instant::now() - Duration::from_secs(60);
    loop {
        match ensure_topics(&cfg.kafka, &specs) {
            Err(govbus_kafka_client::KafkaSetupError::NotAllowed { topic })
                if inputs.contains_key(&topic) && !stop.load(Ordering::Relaxed) =>
            {
                if said.elapsed() >= Duration::from_secs(10) {
                    tracing::warn!(
                        subscriber = cfg.subscriber,
                        topic,
                        "waiting for the topic to be created by its owner (this province may not create it)"
                    );
                    said = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            r => break r?,
        }
    }
    let views: Vec<String> = inputs.keys().cloned().collect();
    govbus_kafka_client::acl::require(
        &cfg.kafka,
        govbus_kafka_client::acl::Operation::Read,
        &views,
    )?;
    let mut sink = cfg.sink.open()?;
    let resolver = SchemaCache::new(RegistryClient::with_access(
        &cfg.registry,
        cfg.registry_access.as_ref(),
    )?);
    let reports: Vec<Arc<Report>> = catalog
        .reports_of(&cfg.subscriber)
        .map(|r| Report::compile(r, catalog).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let mut receipts = match sink.sql() {
        Some(sql) => {
            sql.set_reports(reports.clone());
            sql.set_receipts(&cfg.subscriber);
            Some(ReceiptFeed::start(
                &cfg.kafka,
                &topics,
                &cfg.subscriber,
                sql,
            )?)
        }
        None => match reports.first() {
            Some(r) => {
                return Err(SinkError::NoReports {
                    report: r.id(),
                    sink: sink.sink().kind(),
                }
                .into())
            }
            None => None,
        },
    };
    for r in &reports {
        let deadline = Instant::now() + Duration::from_secs(60);
        let table = loop {
            match build::view_table(r, catalog, &topics, resolver.client()) {
                Err(build::BuildError::Schema {
                    transient: true,
                    reason,
                    ..
                }) if Instant::now() < deadline && !stop.load(Ordering::Relaxed) => {
                    tracing::warn!(report = %r.id(), reason, "schema registry unavailable; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
                other => break other?,
            }
        };
        if let Some(sql) = sink.sql() {
            build::build_if_changed(r, table.as_ref(), sql)?;
        }
    }
    let mut freezer = Freezer::new(&reports, catalog, &topics, sink.sql())?;
    let mut feed = match sink.sql() {
        Some(sql) if !reports.is_empty() => Some(ReportFeed::start(
            &cfg.kafka,
            &topics,
            resolver.client(),
            &reports,
            sql.store(),
        )?),
        _ => None,
    };
    let mut tables: HashMap<u32, Arc<TableDef>> = HashMap::new();
    let mut session_cfg = cfg.clone();
    loop {
        match session(
            &session_cfg,
            &inputs,
            &mut sink,
            &resolver,
            &mut tables,
            &mut Reporting {
                feed: &mut feed,
                freezer: &mut freezer,
                receipts: &mut receipts,
            },
            &Around {
                stop: &stop,
                ready,
                dead_letters: &dead_letters,
            },
        ) {
            Err(e @ ConsumerError::Stalled { .. }) => {
                ready.not_ready(format!("{e}; starting a new session"));
                let was = session_cfg.kafka.fetch_wait_ms;
                session_cfg.kafka.fetch_wait_ms = govbus_core::stall::longer_fetch_wait(was);
                Stalled {
                    subscriber: &cfg.subscriber,
                    error: &e,
                    was_ms: was,
                    now_ms: session_cfg.kafka.fetch_wait_ms,
                }
                .emit();
            }
            other => return other,
        }
    }
}

/// What a session reports to and writes beside its sink.
#[derive(Clone, Copy)]
struct Around<'a> {
    /// Set to stop.
    stop: &'a AtomicBool,
    /// `/readyz`.
    ready: &'a Readiness,
    /// The subscriber's DLQ.
    dead_letters: &'a DeadLetters,
}

/// The reports a session keeps beside the rows: their figures' topic, and
/// their dated snapshots.
struct Reporting<'a> {
    feed: &'a mut Option<ReportFeed>,
    freezer: &'a mut Freezer,
    receipts: &'a mut Option<ReceiptFeed>,
}

/// A batch at least this large is decoded on two threads.
const DECODE_APART: usize = 512;

/// What decoding each record of `batch` gave (None: not one of `inputs`'
/// topics). Decoding is most of a batch's work outside the database, so a
/// large batch (a backlog, a first load) is decoded in two halves at once.
fn decode_all(
    batch: &[rdkafka::message::BorrowedMessage<'_>],
    inputs: &HashMap<String, Input>,
    resolver: &SchemaCache,
) -> Vec<Option<Result<(u32, Change), EnvelopeError>>> {
    let payloads: Vec<Option<&[u8]>> = batch
        .iter()
        .map(|m| {
            inputs
                .contains_key(m.topic())
                .then(|| m.payload().unwrap_or_default())
        })
        .collect();
    let decode_each = |part: &[Option<&[u8]>]| -> Vec<_> {
        part.iter()
            .map(|p| p.map(|p| decode(p, resolver as &dyn SchemaResolver)))
            .collect()
    };
    if payloads.len() < DECODE_APART {
        return decode_each(&payloads);
    }
    let (a, b) = payloads.split_at(payloads.len() / 2);
    std::thread::scope(|s| {
        let second = s.spawn(|| decode_each(b));
        let mut all = decode_each(a);
        match second.join() {
            Ok(rest) => all.extend(rest),
            // Decoding does not panic on outside bytes (fuzzed); were it
            // to, the records are decoded again one by one by the caller.
            Err(_) => all.resize_with(payloads.len(), || None),
        }
        all
    })
}

/// One consumer session: assigned at the sink's stored offsets, applying
/// batches until `stop` (or a stall).
fn session(
    cfg: &ConsumerConfig,
    inputs: &HashMap<String, Input>,
    opened: &mut sink::Opened,
    resolver: &SchemaCache,
    tables: &mut HashMap<u32, Arc<TableDef>>,
    reporting: &mut Reporting<'_>,
    around: &Around<'_>,
) -> Result<(), ConsumerError> {
    let Around {
        stop,
        ready,
        dead_letters,
    } = *around;
    // Its partitions are assigned, and its database holds the offsets it
    // resumes from; the same positions are also committed to this group
    // (asynchronously, after the database's commit), so that Kafka's tools
    // (`kafka-consumer-groups --describe --group govbus-consumer-p52`) show
    // the province's lag, as Kafka Connect's sink connectors do.
    let consumer: BaseConsumer = cfg.kafka.consumer(&group_of(&cfg.subscriber)).create()?;
    let mut tpl = TopicPartitionList::new();
    for topic in inputs.keys() {
        let stored = opened.sink().offsets(topic)?;
        for p in partitions(&consumer, topic)? {
            let off = stored
                .get(&p)
                .map_or(Offset::Beginning, |o| Offset::Offset(*o));
            tpl.add_partition_offset(topic, p, off)?;
        }
    }
    consumer.assign(&tpl)?;
    tracing::info!(subscriber = cfg.subscriber, sink = %cfg.sink.describe(), topics = ?inputs.keys().collect::<Vec<_>>(), "consumer started");

    let lag = lag_watch(cfg, inputs)?;
    lag.starts_at(&tpl);
    // Where the sink stands on each partition (the next offset to apply).
    let mut stored_at: HashMap<(String, i32), i64> = tpl
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
            _ => None,
        })
        .collect();
    let mut last_lag = Instant::now();
    let mut stall = govbus_core::stall::StallWatch::new(Duration::from_secs(cfg.stall_secs));
    let max_batch = cfg.batch();
    let mut batch = Vec::with_capacity(max_batch);
    while !stop.load(Ordering::Relaxed) {
        let t_poll = Instant::now();
        poll_batch(
            &consumer,
            &mut batch,
            max_batch,
            govbus_kafka_client::IDLE_POLL,
        );
        let poll_ms = t_poll.elapsed().as_secs_f64() * 1e3;
        if last_lag.elapsed() > Duration::from_millis(200) {
            lag.update(&consumer);
            last_lag = Instant::now();
            ready.set(govbus_core::health::caught_up(lag.backlog()));
            if batch.is_empty() {
                store_passed_markers(&consumer, opened.sink(), &mut stored_at)?;
            }
        }
        if let Some(s) = stall.observe(Instant::now(), batch.len(), lag.backlog()) {
            return Err(ConsumerError::Stalled {
                idle_secs: s.idle.as_secs(),
                backlog: s.backlog,
            });
        }
        if let Some(sql) = opened.sql() {
            reporting.freezer.tick(sql, govbus_core::now_ms());
        }
        if batch.is_empty() {
            continue;
        }
        let mut rows = Vec::with_capacity(batch.len());
        // Per row: its record's index in `batch`.
        let mut sources = Vec::with_capacity(batch.len());
        let mut dead: Vec<(usize, Dead)> = Vec::new();
        let mut next: HashMap<(String, i32), i64> = HashMap::new();
        let mut decoded = decode_all(&batch, inputs, resolver);
        for (i, m) in batch.iter().enumerate() {
            next.insert((m.topic().to_string(), m.partition()), m.offset() + 1);
            let Some(input) = inputs.get(m.topic()) else {
                continue;
            };
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let mut kill = |reason: &'static str, error: String| {
                dead.push((i, dead_of(m, &key, &input.table, reason, error)));
            };
            let mut first = decoded.get_mut(i).and_then(Option::take);
            let (id, change) = loop {
                let result = first.take().unwrap_or_else(|| {
                    decode(
                        m.payload().unwrap_or_default(),
                        resolver as &dyn SchemaResolver,
                    )
                });
                match result {
                    Ok(x) => break Some(x),
                    Err(e) if e.is_transient() && !stop.load(Ordering::Relaxed) => {
                        tracing::warn!(error = %e, "schema registry unavailable; retrying");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    Err(e) => {
                        kill(e.reason(), e.to_string());
                        break None;
                    }
                }
            }
            .unzip();
            let (Some(id), Some(change)) = (id, change) else {
                continue;
            };
            let table = match tables.get(&id) {
                Some(t) => t.clone(),
                None => {
                    let def = resolver
                        .resolve(id)
                        .map_err(|e| e.to_string())
                        .and_then(|schema| {
                            table_def(&input.table, &input.key, &schema).ok_or_else(|| {
                                format!("schema {id} has no entity keyed by {}", input.key)
                            })
                        });
                    match def {
                        Ok(t) => {
                            let t = Arc::new(t);
                            opened.sink().ensure_table(&t)?;
                            tables.insert(id, t.clone());
                            t
                        }
                        Err(error) => {
                            kill("not_a_table", error);
                            continue;
                        }
                    }
                }
            };
            let after = match change.op {
                Op::Delete => None,
                _ => change.after,
            };
            let values = after
                .as_ref()
                .map(|a| table.columns.iter().map(|c| value_at(a, &c.path)).collect());
            rows.push(Row {
                table,
                key,
                seq: change.source.seq,
                source_ts: change.ts_ms,
                values,
                event_id: change.event_id,
                op: change.op,
                after,
                record: Some((Arc::from(m.topic()), m.partition(), m.offset())),
            });
            sources.push(i);
        }
        // Dead letters are on the DLQ (acknowledged) before the offsets
        // move past them: nothing is lost, and a crash in between only
        // dead-letters them again.
        if !dead.is_empty() {
            for (i, d) in &dead {
                dead_letters.send(&batch[*i], d)?;
            }
            dead_letters.flush()?;
            let records: Vec<Dead> = dead.into_iter().map(|(_, d)| d).collect();
            // The database may be unavailable for a moment: wait for it
            // like for a batch, never give up on the ledger.
            let mut attempt = 0u32;
            while let Err(e) = opened.sink().record_dead(&records) {
                retry_after(&cfg.subscriber, &mut attempt, e, stop)?;
            }
            for d in &records {
                DeadLettered {
                    subscriber: &cfg.subscriber,
                    dead: d,
                }
                .emit();
            }
        }
        let offsets: Vec<(String, i32, i64)> =
            next.into_iter().map(|((t, p), o)| (t, p, o)).collect();
        let t_apply = Instant::now();
        let decode_ms = t_apply.duration_since(t_poll).as_secs_f64() * 1e3 - poll_ms;
        // Never skip: retry the same batch until it lands or we are stopped.
        let mut attempt = 0u32;
        loop {
            let applied = match opened.sink().apply(&rows, &offsets) {
                Err(e) if e.refusal().is_some() => apply_one_by_one(
                    &cfg.subscriber,
                    opened.sink(),
                    &rows,
                    &sources,
                    &batch,
                    &offsets,
                    dead_letters,
                ),
                other => other.map_err(ApplyError::Sink),
            };
            match applied {
                Ok(done) => {
                    for (t, p, o) in &offsets {
                        stored_at.insert((t.clone(), *p), *o);
                    }
                    commit_to_group(&consumer, &offsets);
                    BatchApplied {
                        subscriber: &cfg.subscriber,
                        changes: rows.len(),
                        done,
                        last_source_ms: rows.last().map(|r| r.source_ts),
                        poll_ms,
                        decode_ms,
                        apply_ms: t_apply.elapsed().as_secs_f64() * 1e3,
                    }
                    .emit();
                    if let Some(sql) = opened.sql() {
                        if let Some(f) = reporting.feed.as_mut() {
                            f.apply(sql.take_touched())?;
                        }
                        if let Some(feed) = reporting.receipts.as_mut() {
                            let written = sql.take_receipts();
                            feed.publish(written, sql);
                        }
                    }
                    break;
                }
                Err(ApplyError::Kafka(e)) => return Err(e.into()),
                Err(ApplyError::Sink(e)) => retry_after(&cfg.subscriber, &mut attempt, e, stop)?,
            }
        }
    }
    Ok(())
}

/// The consumer group a province's positions are committed to.
pub fn group_of(subscriber: &str) -> String {
    format!("govbus-consumer-{subscriber}")
}

/// Commits `offsets` (topic, partition, next offset) to the consumer's
/// group, asynchronously: the database holds the truth, the group shows it
/// to Kafka's tools. A commit that fails is logged by librdkafka and
/// overtaken by the next one.
fn commit_to_group(consumer: &BaseConsumer, offsets: &[(String, i32, i64)]) {
    let mut tpl = TopicPartitionList::new();
    for (t, p, o) in offsets {
        if let Err(e) = tpl.add_partition_offset(t, *p, Offset::Offset(*o)) {
            tracing::debug!(error = %e, topic = %t, partition = p, "position not committed to the consumer group this time");
            return;
        }
    }
    if let Err(e) = consumer.commit(&tpl, rdkafka::consumer::CommitMode::Async) {
        tracing::debug!(error = %e, "positions not committed to the consumer group this time");
    }
}

/// When the consumer has read everything it was given, its position may
/// stand past records that are not changes: a committed transaction's
/// marker (each of the router's transactions ends with one on every
/// partition it wrote). The sink's offsets are moved there (no row
/// changes), so that what a partition's end minus the stored offset counts
/// (`govbus status`, the dashboard, Kafka's tools) is records still to
/// apply: 0 on a fully applied view, not one per transaction.
fn store_passed_markers(
    consumer: &BaseConsumer,
    sink: &mut dyn Sink,
    stored_at: &mut HashMap<(String, i32), i64>,
) -> Result<(), ConsumerError> {
    let Ok(positions) = consumer.position() else {
        return Ok(());
    };
    let passed: Vec<(String, i32, i64)> = positions
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o)
                if stored_at
                    .get(&(e.topic().to_string(), e.partition()))
                    .is_none_or(|s| o > *s) =>
            {
                Some((e.topic().to_string(), e.partition(), o))
            }
            _ => None,
        })
        .collect();
    if passed.is_empty() {
        return Ok(());
    }
    // A failure here is harmless (the next idle moment tries again; the
    // next batch stores its own offsets): it is logged, not retried.
    match sink.apply(&[], &passed) {
        Ok(_) => {
            commit_to_group(consumer, &passed);
            for (t, p, o) in passed {
                stored_at.insert((t, p), o);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not store the position past transaction markers")
        }
    }
    Ok(())
}

fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>, ConsumerError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
        if let Some(t) = md.topics().iter().find(|t| t.name() == topic) {
            if t.error().is_none() && !t.partitions().is_empty() {
                return Ok(t.partitions().iter().map(|p| p.id()).collect());
            }
        }
        if Instant::now() > deadline {
            return Err(ConsumerError::Kafka(KafkaError::MetadataFetch(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `govbus_consumer_lag_events{subscriber, dataset}`, every 2 s, measured
/// off the consuming thread ([`govbus_kafka_client::LagWatch`]).
fn lag_watch(
    cfg: &ConsumerConfig,
    inputs: &HashMap<String, Input>,
) -> Result<govbus_kafka_client::LagWatch, ConsumerError> {
    let datasets: HashMap<String, String> = inputs
        .iter()
        .filter(|(t, _)| !Topics::is_replay(t))
        .map(|(t, i)| (t.clone(), i.dataset.clone()))
        .collect();
    let subscriber = cfg.subscriber.clone();
    Ok(govbus_kafka_client::LagWatch::start(
        &cfg.kafka,
        Duration::from_secs(2),
        move |topic, lag| {
            if let Some(d) = datasets.get(topic) {
                metrics::gauge!("govbus_consumer_lag_events", "subscriber" => subscriber.clone(), "dataset" => d.clone()).set(lag as f64);
            }
        },
    )?)
}

/// One subscription's state, as `govbus status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// `subscriber/dataset`.
    pub subscription: String,
    /// The view topic.
    pub topic: String,
    /// Rows held by the sink (None: the sink holds no rows, or no table yet).
    pub rows: Option<i64>,
    /// Source time (ms) of the newest change applied.
    pub last_change_ms: Option<i64>,
    /// Records in the view not yet applied (from the cluster's watermarks).
    pub lag: Option<i64>,
    /// Records dead-lettered (`dlq.consume.<subscriber>`): their entities
    /// are stale until they are replayed.
    pub dead: i64,
}

/// Reads the state of each of the subscriber's views from its sink and the cluster.
pub fn status(cfg: &ConsumerConfig, catalog: &Catalog) -> Result<Vec<Status>, ConsumerError> {
    let topics = Topics::new(&cfg.topic_prefix);
    let mut sink = cfg.sink.store()?;
    let consumer: BaseConsumer = cfg.kafka.consumer("govbus-status").create()?;
    let mut out = Vec::new();
    for s in catalog
        .subscriptions
        .iter()
        .filter(|s| s.file.subscriber == cfg.subscriber)
    {
        let Some(ds) = catalog.dataset(&s.file.dataset) else {
            continue;
        };
        let topic = topics.view(&cfg.subscriber, &ds.id, ds.file.major);
        let table = format!("{}_{}", ds.id.owner, ds.id.name);
        let (rows, last) = match sink.table_status(&table)? {
            Some((n, ts)) => (Some(n), ts),
            None => (None, None),
        };
        let stored = sink.offsets(&topic)?;
        let lag = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .ok()
            .and_then(|md| {
                let t = md.topics().iter().find(|t| t.name() == topic)?;
                let mut lag = 0;
                for p in t.partitions() {
                    let (low, high) = consumer
                        .fetch_watermarks(&topic, p.id(), Duration::from_secs(5))
                        .ok()?;
                    lag += (high - stored.get(&p.id()).copied().unwrap_or(low)).max(0);
                }
                Some(lag)
            });
        let dead = sink.dead(&topic)?;
        out.push(Status {
            subscription: s.name(),
            dead,
            topic,
            rows,
            last_change_ms: last,
            lag,
        });
    }
    Ok(out)
}

/// After a failed write to the sink: logs and counts it, then waits before
/// the next attempt (100 ms, 200 ms, … capped at 30 s); the error itself
/// once the consumer is asked to stop.
fn retry_after(
    subscriber: &str,
    attempt: &mut u32,
    error: SinkError,
    stop: &AtomicBool,
) -> Result<(), ConsumerError> {
    *attempt += 1;
    ApplyFailed {
        subscriber,
        attempt: *attempt,
        error: &error,
    }
    .emit();
    if stop.load(Ordering::Relaxed) {
        return Err(error.into());
    }
    std::thread::sleep(
        Duration::from_millis(100u64 << (*attempt).min(9)).min(Duration::from_secs(30)),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConsumerConfig, String> {
        config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize::<ConsumerConfig>())
            .map_err(|e| e.to_string())
    }

    const BASE: &str =
        "subscriber = \"p52\"\nregistry = \"http://r\"\nkafka = { bootstrap = \"k:9092\" }\n";

    #[test]
    fn a_batch_defaults_by_sink_and_more_than_a_receipt_holds_is_refused() {
        let pg = "[sink]\ntype = \"postgres\"\nurl = \"postgres://h/db\"\n";
        let hook = "[sink]\ntype = \"webhook\"\nurl = \"http://h/in\"\nstate = \"s.db\"\n";
        assert_eq!(parse(&format!("{BASE}{pg}")).unwrap().batch(), 5_000);
        assert_eq!(parse(&format!("{BASE}{hook}")).unwrap().batch(), 500);
        assert_eq!(
            parse(&format!("{BASE}batch = 200\n{hook}"))
                .unwrap()
                .batch(),
            200
        );
        for bad in [0, 5_001] {
            let e = parse(&format!("{BASE}batch = {bad}\n{pg}")).unwrap_err();
            assert!(
                e.contains(&format!("`batch = {bad}`: a batch holds 1 to 5000")),
                "{e}"
            );
        }
    }

    #[test]
    fn a_key_that_moved_into_the_sink_section_says_where_it_goes() {
        let e = parse(&format!(
            "{BASE}pg_schema = \"p52\"\n[sink]\ntype = \"postgres\"\nurl = \"postgres://h/db\"\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("`pg_schema` moved")
                && e.contains("write `schema = \"p52\"` under [consumer.sink]"),
            "{e}"
        );
        let ok = parse(&format!(
            "{BASE}[sink]\ntype = \"postgres\"\nurl = \"postgres://h/db\"\nschema = \"p52\"\n"
        ))
        .unwrap();
        assert_eq!(ok.sink.describe(), "postgres postgres://h/db schema p52");
        let e = parse(&format!(
            "{BASE}surprise = 1\n[sink]\ntype = \"sqlite\"\npath = \"x\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("unknown field `surprise`"), "{e}");
    }
}
