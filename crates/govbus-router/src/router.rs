//! The routing loop: consume central topics read_committed, route, and write
//! the views and the consumed offsets in one Kafka transaction.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cel_interpreter::Context;
use govbus_core::kafka::{ensure_topics, poll_batch, KafkaSetupError, TopicSpec};
use govbus_core::{
    Catalog, CatalogError, DatasetId, KafkaConfig, SubscriptionFile, SubscriptionSpec, Topics,
};
use govbus_schema::{RegistryClient, RegistryError, SchemaCache};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::control::{self, ControlError, ControlValue};
use crate::fast::{FastOutputs, FastRoute, Tally};
use crate::route::{self, route, RouteError};
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
    /// Stamp every view record with `govbus.txn` (`<transactional
    /// id>/<session start ms>/<transaction number>`): which router
    /// transaction wrote it, for audits. Off by default: it costs ≈ 1.5 µs
    /// of CPU per routed event (docs/BENCHMARKS.md).
    #[serde(default)]
    pub txn_header: bool,
    /// Seconds the router may hold a backlog (records past its position on
    /// its inputs) while consuming nothing before it logs why and starts a
    /// new session.
    #[serde(default = "default_stall_secs")]
    pub stall_secs: u64,
}

fn default_stall_secs() -> u64 {
    60
}
fn default_group() -> String {
    "govbus-router".into()
}
fn default_instance() -> String {
    "0".into()
}
fn default_batch() -> usize {
    // Only a backlog fills a batch (under live load a batch is what has
    // arrived); there, fewer commits per change won: with the committer
    // thread, 20,000 put the router at 62-122 % of a raw pass-through over
    // whole phases (12 runs), 5,000 at 49-66 % (docs/BENCHMARKS.md).
    20_000
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
    /// The control topic could not be followed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A writer schema could not be fetched; the batch is retried.
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
    /// The router held a backlog and consumed nothing for too long; a new
    /// session follows.
    #[error("consumed nothing for {idle_secs} s while {backlog} records waited past its position")]
    Stalled {
        /// Seconds without a record.
        idle_secs: u64,
        /// Records past the position.
        backlog: i64,
    },
    /// The committer thread failed or ended.
    #[error("committer: {0}")]
    Committer(String),
    /// A view's per-partition state record does not decode.
    #[error("view state {key}: {reason}")]
    State {
        /// The record's key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// The spec a view holds on one input partition, as recorded in
/// `_govbus.views`: what its province has received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The filter.
    pub filter: String,
    /// The dropped fields.
    pub drop: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StateValue {
    /// None: the view receives nothing from this partition.
    applied: Option<Applied>,
    at_ms: i64,
}

fn state_key(view: &str, topic: &str, partition: i32) -> String {
    format!("{view}|{topic}|{partition}")
}

/// A removed subscription whose view may still need emptying.
#[derive(Debug)]
struct Removed {
    name: String,
    subscriber: String,
    dataset: DatasetId,
    input: String,
    empty_view: bool,
}

/// The views in force for one generation of the control topic.
#[derive(Debug, Default)]
struct Live {
    generation: u64,
    views: Vec<View>,
    /// Input topic → (dataset label, view indices).
    inputs: HashMap<String, (String, Vec<usize>)>,
    dlq: HashMap<String, String>,
    removed: Vec<Removed>,
    /// Input topic → the byte-level path, when its filters allow it.
    fast: HashMap<String, FastRoute>,
    /// Input topic → `govbus_router_consumed_total{dataset}`.
    consumed: HashMap<String, metrics::Counter>,
}

/// Buffers the routing loop reuses from batch to batch.
#[derive(Debug, Default)]
struct Scratch {
    out: FastOutputs,
    tally: Tally,
    /// Input partition → the offset after the last record routed in this
    /// session.
    routed: HashMap<(String, i32), i64>,
}

/// One view to bring in step on one partition.
struct Work<'a> {
    key: String,
    view: String,
    old: Option<View>,
    new: Option<&'a View>,
    /// Write `old`'s leaves when there is no `new`.
    empty: bool,
    target: Option<Applied>,
}

/// The router: follows the control topic and routes its subscriptions.
#[derive(Debug)]
pub struct Router {
    cfg: RouterConfig,
    catalog: Catalog,
    topics: Topics,
    registry: RegistryClient,
    resolver: SchemaCache,
    control: Arc<control::Follower>,
    assigned: Assignment,
    /// Writer schema ids the fast path accepts (true) or not (false).
    fast_ids: std::sync::Mutex<HashMap<u32, bool>>,
    /// The consumer's fetch wait: the config's, longer after each stall
    /// ([`govbus_core::stall::longer_fetch_wait`]).
    fetch_wait_ms: std::sync::atomic::AtomicU32,
}

/// The input partitions a router instance holds now, shared with whoever
/// asked for it (tests, an embedding process).
pub type Assignment = Arc<std::sync::Mutex<std::collections::BTreeSet<(String, i32)>>>;

impl Router {
    /// Starts following the control topic (`_govbus.subscriptions`, read to
    /// its end before this returns); `catalog` gives the datasets.
    pub fn new(cfg: RouterConfig, catalog: &Catalog) -> Result<Self, RouterError> {
        let topics = Topics::new(&cfg.topic_prefix);
        ensure_topics(&cfg.kafka, &[TopicSpec::compacted(topics.view_state(), 1)])?;
        let control =
            control::Follower::start(&cfg.kafka, &topics.subscriptions(), Duration::from_secs(60))?;
        let registry = RegistryClient::new(&cfg.registry);
        Ok(Self {
            fetch_wait_ms: std::sync::atomic::AtomicU32::new(cfg.kafka.fetch_wait_ms),
            resolver: SchemaCache::new(registry.clone()),
            registry,
            catalog: catalog.clone(),
            topics,
            cfg,
            control,
            assigned: Assignment::default(),
            fast_ids: Default::default(),
        })
    }

    /// The input partitions this instance holds, kept current while it runs
    /// (also the gauge `govbus_router_partitions{dataset}`).
    pub fn assignment(&self) -> Assignment {
        self.assigned.clone()
    }

    fn set_assignment(&self, live: &Live, now: std::collections::BTreeSet<(String, i32)>) {
        let mut held = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
        if *held != now {
            for (topic, (dataset, _)) in &live.inputs {
                let n = now.iter().filter(|(t, _)| t == topic).count();
                metrics::gauge!("govbus_router_partitions", "dataset" => dataset.clone())
                    .set(n as f64);
            }
            tracing::info!(partitions = ?now, "assignment changed");
            *held = now;
        }
    }

    /// Compiles the control topic's current set. A subscription that does
    /// not compile or whose view schema the registry refuses is left out,
    /// loudly; the others are routed.
    fn live(&self) -> Result<Live, RouterError> {
        let (generation, set) = self.control.snapshot();
        let mut live = Live {
            generation,
            ..Live::default()
        };
        let mut specs = vec![TopicSpec::compacted(self.topics.view_state(), 1)];
        let mut view_specs = Vec::new();
        let mut input_of = |ds: &DatasetId, live: &mut Live| -> Option<String> {
            let d = self.catalog.dataset(ds)?;
            let input = self.topics.central(&d.id, d.file.major);
            let dlq = self.topics.dlq("route", &d.id.to_string());
            live.dlq.insert(input.clone(), dlq.clone());
            live.inputs
                .entry(input.clone())
                .or_insert_with(|| (d.id.to_string(), vec![]));
            specs.push(TopicSpec::changes(
                input.clone(),
                self.cfg.partitions,
                d.file.retention_ms,
            ));
            specs.push(TopicSpec::retained(dlq, 1));
            Some(input)
        };
        for (name, value) in &set {
            match value {
                ControlValue::Active {
                    subscription,
                    origin,
                    ..
                } => {
                    let spec = SubscriptionSpec {
                        file: (**subscription).clone(),
                        origin: format!("{} ({origin})", self.topics.subscriptions()),
                        filter_line: None,
                    };
                    let mut view = match views::compile_spec(&self.catalog, &self.topics, &spec) {
                        Ok(v) => v,
                        Err(e) => {
                            tracing::error!(subscription = name, error = %e, "subscription left out: it does not compile");
                            metrics::counter!("govbus_subscription_refused_total", "reason" => "invalid").increment(1);
                            continue;
                        }
                    };
                    match views::register_one(&mut view, &self.registry) {
                        Ok(()) => {}
                        Err(e) if e.is_transient() => return Err(e.into()),
                        Err(e) => {
                            tracing::error!(subscription = name, error = %e, "subscription left out: the registry refused its view schema");
                            metrics::counter!("govbus_subscription_refused_total", "reason" => "view_schema").increment(1);
                            continue;
                        }
                    }
                    let Some(input) = input_of(&view.dataset, &mut live) else {
                        continue;
                    };
                    view_specs.push(TopicSpec::compacted(
                        view.topic.clone(),
                        self.cfg.partitions,
                    ));
                    live.inputs
                        .get_mut(&input)
                        .expect("input_of adds the input")
                        .1
                        .push(live.views.len());
                    live.views.push(view);
                }
                ControlValue::Removed { empty_view, .. } => {
                    let Some((subscriber, dataset)) = name.split_once('/') else {
                        continue;
                    };
                    let Ok(dataset) = dataset.parse::<DatasetId>() else {
                        continue;
                    };
                    let Some(input) = input_of(&dataset, &mut live) else {
                        continue;
                    };
                    live.removed.push(Removed {
                        name: name.clone(),
                        subscriber: subscriber.to_string(),
                        dataset,
                        input,
                        empty_view: *empty_view,
                    });
                }
            }
        }
        for (topic, (dataset, idx)) in &live.inputs {
            live.consumed.insert(
                topic.clone(),
                metrics::counter!("govbus_router_consumed_total", "dataset" => dataset.clone()),
            );
            let views: Vec<&View> = idx.iter().map(|&i| &live.views[i]).collect();
            if let Some(f) = FastRoute::new(&views) {
                live.fast.insert(topic.clone(), f);
            }
        }
        specs.extend(view_specs);
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        specs.dedup_by(|a, b| a.name == b.name);
        ensure_topics(&self.cfg.kafka, &specs)?;
        for v in &live.views {
            tracing::info!(view = v.name, topic = v.topic, filter = v.filter.source(), expires_ms = ?v.expires_ms, "subscription active");
            metrics::gauge!("govbus_subscription_active", "subscriber" => v.subscriber.clone(), "dataset" => v.dataset.to_string()).set(1.0);
        }
        for r in &live.removed {
            metrics::gauge!("govbus_subscription_active", "subscriber" => r.subscriber.clone(), "dataset" => r.dataset.to_string()).set(0.0);
        }
        Ok(live)
    }

    /// Routes until `stop`. A change of the subscription set starts a new
    /// session with it; a failure aborts the open transaction and starts a
    /// new session from the last committed offsets.
    pub fn run(&self, stop: Arc<AtomicBool>) -> Result<(), RouterError> {
        let mut failures = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let res = self.session(&stop);
            self.set_assignment(&Live::default(), Default::default());
            match res {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if matches!(e, RouterError::Stalled { .. }) {
                        let was = self.fetch_wait_ms.load(Ordering::Relaxed);
                        let now = govbus_core::stall::longer_fetch_wait(was);
                        self.fetch_wait_ms.store(now, Ordering::Relaxed);
                        tracing::warn!(
                            was_ms = was,
                            now_ms = now,
                            "router stalled: the next session lets the broker hold a fetch longer"
                        );
                    }
                    tracing::error!(error = %e, failures, "routing session failed; restarting from committed offsets");
                    std::thread::sleep(Duration::from_millis(500 * failures.min(10) as u64));
                }
            }
        }
        Ok(())
    }

    fn session(&self, stop: &AtomicBool) -> Result<(), RouterError> {
        let live = self.live()?;
        let changed = || self.control.generation() != live.generation;
        if live.inputs.is_empty() {
            tracing::info!("no subscriptions; waiting for the control topic");
            while !stop.load(Ordering::Relaxed) && !changed() {
                std::thread::sleep(Duration::from_millis(100));
            }
            return Ok(());
        }
        let kafka = &KafkaConfig {
            fetch_wait_ms: self.fetch_wait_ms.load(Ordering::Relaxed),
            ..self.cfg.kafka.clone()
        };
        let in_flight = Arc::new(InFlight::default());
        let consumer: BaseConsumer<RouterContext> = kafka
            .consumer(&self.cfg.group)
            .create_with_context(RouterContext {
                in_flight: in_flight.clone(),
            })?;
        let topics: Vec<&str> = live.inputs.keys().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let tid = format!("govbus-router-{}-{}", self.cfg.group, self.cfg.instance);
        let mut pc = kafka.producer();
        // Keys go to the partitions a Java client would choose.
        pc.set("transactional.id", &tid)
            .set("partitioner", "murmur2_random");
        // Defaults of the router's own, which `[kafka.options]` may override.
        // linger.ms: records of a large batch leave in fuller requests while
        // the batch is still being routed; the commit sends what is left at
        // once (`flush_deliveries`), so a small batch waits for no linger.
        for (k, v) in [
            ("transaction.timeout.ms", "60000"),
            ("retry.backoff.ms", "5"),
            ("linger.ms", "5"),
        ] {
            kafka.set_default(&mut pc, k, v);
        }
        let producer: ThreadedProducer<DefaultProducerContext> = pc.create()?;
        producer.init_transactions(Duration::from_secs(30))?;
        let mut lineage = Lineage::new(&tid);
        let base = govbus_schema::cel::base_context();
        tracing::info!(
            transactional_id = tid,
            ?topics,
            views = live.views.len(),
            "router session started"
        );
        // Lag is measured off this thread and off the consumer's connection
        // (see LagWatch: a lag query here once starved the fetches).
        let datasets: HashMap<String, String> = live
            .inputs
            .iter()
            .map(|(t, (d, _))| (t.clone(), d.clone()))
            .collect();
        let lag =
            govbus_core::kafka::LagWatch::start(kafka, Duration::from_secs(2), move |t, n| {
                if let Some(d) = datasets.get(t) {
                    metrics::gauge!("govbus_router_lag_events", "dataset" => d.clone())
                        .set(n as f64);
                }
            })?;
        // The pipeline: this thread polls and routes; the committer thread
        // owns the transactions. A batch goes over in chunks, sent into
        // its transaction while the rest is routed, and its last chunk
        // carries the offsets: the committer commits batch k while this
        // thread routes batch k + 1 (whose chunks wait in the channel). At
        // most one commit is outstanding; a partition is revoked only once
        // it is done (RouterContext), and views are brought in step only
        // when nothing is in flight.
        std::thread::scope(|s| {
            let (jobs, job_rx) = std::sync::mpsc::channel::<Routed<'_>>();
            let (done_tx, done) = std::sync::mpsc::channel();
            let span = tracing::Span::current();
            let producer = &producer;
            let in_flight = &*in_flight;
            std::thread::Builder::new()
                .name("router-commit".into())
                .spawn_scoped(s, move || {
                    let _span = span.enter();
                    let mut txn = Committer::default();
                    for mut job in job_rx {
                        let res = txn.write(producer, &mut job);
                        if res.is_some() {
                            in_flight.finish();
                        }
                        if done_tx.send((res, job)).is_err() {
                            break;
                        }
                    }
                    // The routing thread stopped before a batch's last chunk.
                    txn.abandon(producer);
                })
                .map_err(|e| RouterError::Committer(e.to_string()))?;
            let mut pipe = Pipe::new(jobs, done, in_flight);
            let res = self.route_loop(
                stop,
                &live,
                &changed,
                &consumer,
                producer,
                &mut pipe,
                &mut lineage,
                &base,
                &lag,
            );
            let last = pipe.wait();
            // Ends the committer's loop; the scope joins it.
            pipe.jobs = None;
            match (res, last) {
                (Err(e), Err(last)) => {
                    tracing::warn!(error = %last, "the batch in flight failed too");
                    Err(e)
                }
                (res, last) => res.and(last),
            }
        })
    }

    /// Polls and routes batches until `stop` or a change of the
    /// subscription set, handing each routed batch to the committer.
    #[allow(clippy::too_many_arguments)]
    fn route_loop<'l>(
        &self,
        stop: &AtomicBool,
        live: &'l Live,
        changed: &dyn Fn() -> bool,
        consumer: &BaseConsumer<RouterContext>,
        producer: &ThreadedProducer<DefaultProducerContext>,
        pipe: &mut Pipe<'_, 'l>,
        lineage: &mut Lineage,
        base: &Context<'_>,
        lag: &govbus_core::kafka::LagWatch,
    ) -> Result<(), RouterError> {
        let mut batch = Vec::with_capacity(self.cfg.batch);
        let mut last_lag = std::time::Instant::now();
        let mut in_step: HashSet<(String, i32)> = HashSet::new();
        let mut scratch = Scratch::default();
        let mut stall =
            govbus_core::stall::StallWatch::new(Duration::from_secs(self.cfg.stall_secs));
        while !stop.load(Ordering::Relaxed) {
            if changed() {
                tracing::info!("the subscription set changed; starting a session with it");
                return Ok(());
            }
            // Positions handed over often (a local call): the lag measured
            // every 2 s is then at most this stale.
            if last_lag.elapsed() > Duration::from_millis(200) {
                lag.update(consumer);
                last_lag = std::time::Instant::now();
            }
            let t_poll = std::time::Instant::now();
            poll_batch(
                consumer,
                &mut batch,
                self.cfg.batch,
                Duration::from_millis(100),
            );
            let poll_ms = t_poll.elapsed().as_secs_f64() * 1e3;
            if let Some(s) = stall.observe(std::time::Instant::now(), batch.len(), lag.backlog()) {
                metrics::counter!("govbus_router_stalls_total").increment(1);
                return Err(RouterError::Stalled {
                    idle_secs: s.idle.as_secs(),
                    backlog: s.backlog,
                });
            }
            // Partitions assigned since the last look: bring every view in
            // step on them (backfill, leaves) before routing their records.
            let assigned: HashSet<(String, i32)> = consumer
                .assignment()?
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            self.set_assignment(live, assigned.iter().cloned().collect());
            in_step.retain(|tp| assigned.contains(tp));
            scratch.routed.retain(|tp, _| in_step.contains(tp));
            let fresh: Vec<(String, i32)> = assigned
                .iter()
                .filter(|tp| !in_step.contains(*tp))
                .cloned()
                .collect();
            if !fresh.is_empty() {
                // Backfill reads up to the committed offsets and writes in
                // a transaction of its own: nothing may be in flight.
                pipe.wait()?;
                let tx = Txn {
                    producer,
                    label: self.cfg.txn_header.then(|| lineage.next()),
                };
                self.in_step(live, consumer, &tx, base, &fresh)?;
                in_step.extend(fresh);
            }
            if batch.is_empty() {
                continue;
            }
            let t_route = std::time::Instant::now();
            let mut out = pipe.buffer();
            out.label = self.cfg.txn_header.then(|| lineage.next().to_owned());
            let offsets = self.route_batch(live, &batch, &mut out, pipe, base, &mut scratch)?;
            let route_ms = t_route.elapsed().as_secs_f64() * 1e3;
            let t_wait = std::time::Instant::now();
            // The previous batch committed before this one may.
            pipe.wait()?;
            out.changes = batch.len();
            out.offsets = Some(offsets);
            out.meta = Some(
                consumer
                    .group_metadata()
                    .ok_or_else(|| KafkaError::Subscription("no group metadata".into()))?,
            );
            tracing::debug!(
                changes = batch.len(),
                poll_ms,
                route_ms,
                wait_ms = t_wait.elapsed().as_secs_f64() * 1e3,
                "batch"
            );
            pipe.commit(out)?;
        }
        Ok(())
    }

    /// Reads `_govbus.views`: view|topic|partition → what it holds.
    fn read_state(&self) -> Result<HashMap<String, Option<Applied>>, RouterError> {
        let topic = self.topics.view_state();
        let mut state = HashMap::new();
        let mut bad = None;
        govbus_core::kafka::read_partitions(
            &self.cfg.kafka,
            &topic,
            &[(0, None)],
            Duration::from_secs(60),
            |m| {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                match m.payload().map(serde_json::from_slice::<StateValue>) {
                    Some(Ok(v)) => {
                        state.insert(key, v.applied);
                    }
                    None => {
                        state.remove(&key);
                    }
                    Some(Err(e)) => bad = Some((key, e.to_string())),
                }
            },
        )?;
        if let Some((key, reason)) = bad {
            return Err(RouterError::State { key, reason });
        }
        Ok(state)
    }

    /// Brings every view in step on `parts` (just assigned to this
    /// instance): a view whose recorded spec differs from the one in force
    /// receives, from the partition's records before the group's committed
    /// offset, the entities that now enter (snapshots), those that now leave
    /// (deletes) and, when its projection changed, the others again; a
    /// removed view is emptied when asked. The records, the new state and
    /// the (unchanged) offsets go in one transaction, so live routing from
    /// that offset continues with no gap and no duplicate.
    fn in_step(
        &self,
        live: &Live,
        consumer: &BaseConsumer<RouterContext>,
        producer: &Txn<'_>,
        base: &Context<'_>,
        parts: &[(String, i32)],
    ) -> Result<(), RouterError> {
        let t = std::time::Instant::now();
        let state = self.read_state()?;
        tracing::debug!(
            ms = t.elapsed().as_secs_f64() * 1e3,
            records = state.len(),
            "view state read"
        );
        let now = govbus_core::now_ms();
        let mut todo: Vec<((String, i32), Vec<Work<'_>>)> = Vec::new();
        for (topic, p) in parts {
            let Some((_, idx)) = live.inputs.get(topic) else {
                continue;
            };
            let mut work = Vec::new();
            let held = |name: &str| -> Option<Applied> {
                state.get(&state_key(name, topic, *p)).cloned().flatten()
            };
            for &i in idx {
                let v = &live.views[i];
                let target = (!v.expired(now)).then(|| Applied {
                    filter: v.filter.source().to_string(),
                    drop: v.drop.clone(),
                });
                let old = held(&v.name);
                if old != target {
                    work.push(Work {
                        key: state_key(&v.name, topic, *p),
                        view: v.name.clone(),
                        old: old.and_then(|a| self.compile_applied(&v.subscriber, &v.dataset, &a)),
                        new: target.is_some().then_some(v),
                        // An expired view keeps its rows (delivery stops).
                        empty: target.is_some(),
                        target,
                    });
                }
            }
            for r in live.removed.iter().filter(|r| &r.input == topic) {
                let Some(old) = held(&r.name) else {
                    continue;
                };
                let mut old = self.compile_applied(&r.subscriber, &r.dataset, &old);
                if r.empty_view {
                    if let Some(v) = old.as_mut() {
                        views::register_one(v, &self.registry)?;
                    }
                }
                work.push(Work {
                    key: state_key(&r.name, topic, *p),
                    view: r.name.clone(),
                    old,
                    new: None,
                    empty: r.empty_view,
                    target: None,
                });
            }
            if !work.is_empty() {
                todo.push(((topic.clone(), *p), work));
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((t, p), _) in &todo {
            tpl.add_partition(t, *p);
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(30))?;
        let until = |t: &str, p: i32| -> i64 {
            committed
                .find_partition(t, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(0)
        };
        producer.begin_transaction()?;
        let res = (|| {
            let mut offsets = TopicPartitionList::new();
            for ((topic, p), work) in &todo {
                let p = *p;
                let until = until(topic, p);
                self.backfill(topic, p, until, work, producer, base)?;
                for w in work {
                    let value = serde_json::to_vec(&StateValue {
                        applied: w.target.clone(),
                        at_ms: now,
                    })
                    .unwrap_or_default();
                    send(
                        producer,
                        BaseRecord::to(&self.topics.view_state())
                            .key(w.key.as_bytes())
                            .payload(&value),
                    )?;
                    tracing::info!(view = w.view, topic, partition = p, until, from = ?w.old.as_ref().map(|v| v.filter.source()), to = ?w.target.as_ref().map(|a| &a.filter), "view brought in step");
                }
                offsets.add_partition_offset(topic, p, Offset::Offset(until))?;
            }
            let meta = consumer
                .group_metadata()
                .ok_or_else(|| KafkaError::Subscription("no group metadata".into()))?;
            commit(producer, &offsets, &meta)
        })();
        if let Err(e) = res {
            let _ = producer.abort_transaction(Duration::from_secs(30));
            return Err(e);
        }
        tracing::debug!(
            ms = t.elapsed().as_secs_f64() * 1e3,
            partitions = todo.len(),
            "views brought in step"
        );
        Ok(())
    }

    /// A view of `subscriber` compiled from a recorded spec (None when it
    /// no longer compiles: its leaves cannot be computed, which is logged).
    fn compile_applied(&self, subscriber: &str, dataset: &DatasetId, a: &Applied) -> Option<View> {
        let spec = SubscriptionSpec {
            file: SubscriptionFile {
                subscriber: subscriber.to_string(),
                dataset: dataset.clone(),
                filter: a.filter.clone(),
                drop: a.drop.clone(),
                legal_basis: String::new(),
                legal_reference: String::new(),
                requested_by: String::new(),
                expires: None,
            },
            origin: self.topics.view_state(),
            filter_line: None,
        };
        views::compile_spec(&self.catalog, &self.topics, &spec)
            .map_err(|e| tracing::error!(subscriber, %dataset, error = %e, "a view's recorded spec no longer compiles; its leaves are not sent"))
            .ok()
    }

    /// Sends `work`'s records for the current state of `topic` `p` below
    /// `until` (each entity's last change).
    fn backfill(
        &self,
        topic: &str,
        p: i32,
        until: i64,
        work: &[Work<'_>],
        producer: &Txn<'_>,
        base: &Context<'_>,
    ) -> Result<(), RouterError> {
        let sends = work
            .iter()
            .any(|w| w.new.is_some() || (w.empty && w.old.is_some()));
        if !sends || until == 0 {
            return Ok(());
        }
        let mut current: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        govbus_core::kafka::read_partitions(
            &self.cfg.kafka,
            topic,
            &[(p, Some(until))],
            Duration::from_secs(300),
            |m| {
                let key = m.key().unwrap_or_default().to_vec();
                match m.payload() {
                    Some(v) => {
                        current.insert(key, v.to_vec());
                    }
                    None => {
                        current.remove(&key);
                    }
                }
            },
        )?;
        let dataset = &work
            .iter()
            .find_map(|w| {
                w.new
                    .map(|v| v.dataset.to_string())
                    .or(w.old.as_ref().map(|v| v.dataset.to_string()))
            })
            .unwrap_or_default();
        for (key, payload) in &current {
            let change = match govbus_schema::envelope::decode(payload, &self.resolver) {
                Ok((_, c)) => c,
                Err(e) if e.is_transient() => {
                    return Err(RouterError::RegistryUnavailable(e.to_string()))
                }
                // Dead-lettered when it was routed live; counted here too.
                Err(e) => {
                    let reason = RouteError::Envelope(e).reason();
                    tracing::warn!(
                        topic,
                        partition = p,
                        reason,
                        "entity left out of a backfill: its last change does not decode"
                    );
                    metrics::counter!("govbus_router_backfill_skipped_total", "dataset" => dataset.clone(), "reason" => reason).increment(1);
                    continue;
                }
            };
            for w in work {
                let Some(out) = w.new.or(w.old.as_ref().filter(|_| w.empty)) else {
                    continue;
                };
                match route::backfill(&change, base, w.old.as_ref(), w.new, out) {
                    Ok(Some((label, value))) => {
                        metrics::counter!("govbus_router_backfill_total", "subscriber" => out.subscriber.clone(), "dataset" => dataset.clone(), "decision" => label).increment(1);
                        send(
                            producer,
                            with_txn(
                                BaseRecord::to(&out.topic)
                                    .key(key.as_slice())
                                    .payload(value.as_slice()),
                                producer.label,
                            ),
                        )?;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(view = out.name, topic, partition = p, error = %e, "entity left out of a backfill");
                        metrics::counter!("govbus_router_backfill_skipped_total", "dataset" => dataset.clone(), "reason" => e.reason()).increment(1);
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether changes written with schema `id` take `fast`'s path.
    fn fast_accepts(&self, fast: &FastRoute, id: u32) -> bool {
        let mut ids = self.fast_ids.lock().unwrap_or_else(|p| p.into_inner());
        match ids.get(&id) {
            Some(ok) => *ok,
            None => match govbus_schema::SchemaResolver::resolve(&self.resolver, id) {
                Ok(writer) => *ids.entry(id).or_insert(fast.accepts(&writer)),
                Err(_) => false,
            },
        }
    }

    /// Routes `batch` into `out` (records owned, nothing sent yet) and
    /// returns the offsets it advances.
    fn route_batch<'l>(
        &self,
        live: &'l Live,
        batch: &[rdkafka::message::BorrowedMessage<'_>],
        out: &mut Routed<'l>,
        pipe: &mut Pipe<'_, 'l>,
        base: &Context<'_>,
        scratch: &mut Scratch,
    ) -> Result<TopicPartitionList, RouterError> {
        // Per partition: the offset after the last record routed in this
        // session. A record below it was routed already and is not routed
        // twice. Kafka never returns one; a broker that does (nisshi's
        // SQLite storage after a restart, docs/BROKERS.md) would otherwise
        // make the router write an event twice, so the check stays: one
        // comparison per record, and `govbus_router_refetched_total` shows
        // such a broker. A batch holds a
        // few partitions: a list searched from the last one used.
        let mut next: Vec<(&str, i32, i64)> = Vec::new();
        let mut at = 0;
        let now = govbus_core::now_ms();
        let mut refetched = 0u64;
        // The input topic's views, counter and fast path, looked up again
        // only when the topic changes from one record to the next.
        type Input<'l> = (
            &'l str,
            &'l (String, Vec<usize>),
            Option<&'l FastRoute>,
            u64,
        );
        let mut input: Option<Input<'_>> = None;
        let mut consumed: Vec<(&str, u64)> = Vec::new();
        let mut fast_id: Option<(u32, bool)> = None;
        for m in batch {
            if out.records.len() >= CHUNK {
                pipe.chunk(out)?;
            }
            let topic = m.topic();
            let partition = m.partition();
            if next
                .get(at)
                .is_none_or(|(t, p, _)| *p != partition || *t != topic)
            {
                at = match next
                    .iter()
                    .position(|(t, p, _)| *p == partition && *t == topic)
                {
                    Some(i) => i,
                    None => {
                        let floor = scratch
                            .routed
                            .get(&(topic.to_string(), partition))
                            .copied()
                            .unwrap_or(i64::MIN);
                        next.push((topic, partition, floor));
                        next.len() - 1
                    }
                };
            }
            let floor = &mut next[at].2;
            if m.offset() < *floor {
                if refetched == 0 {
                    tracing::warn!(
                        topic,
                        partition,
                        offset = m.offset(),
                        next = *floor,
                        "the broker returned records already routed; not routing them again"
                    );
                }
                refetched += 1;
                continue;
            }
            *floor = m.offset() + 1;
            if input.is_none_or(|(t, ..)| t != topic) {
                if let Some((t, _, _, n)) = input.take() {
                    consumed.push((t, n));
                }
                let Some(views) = live.inputs.get(topic) else {
                    continue;
                };
                input = Some((topic, views, live.fast.get(topic), 0));
                fast_id = None;
            }
            let Some((_, (dataset, idx), fast, count)) = input.as_mut() else {
                continue;
            };
            *count += 1;
            let payload = m.payload().unwrap_or_default();
            let key = m.key().unwrap_or_default();
            tracing::trace!(
                topic,
                partition,
                offset = m.offset(),
                key = %String::from_utf8_lossy(key),
                "routing"
            );
            if let Some(fast) = fast {
                let accepted = payload.len() >= 5 && {
                    let id = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
                    match fast_id {
                        Some((last, ok)) if last == id => ok,
                        _ => {
                            let ok = self.fast_accepts(fast, id);
                            fast_id = Some((id, ok));
                            ok
                        }
                    }
                };
                if accepted
                    && fast.route(
                        payload,
                        &live.views,
                        idx,
                        now,
                        &mut scratch.out,
                        &mut scratch.tally,
                    )
                {
                    for o in scratch.out.iter() {
                        out.emit(&live.views[idx[o.nth]], o.decision, key, o.value);
                    }
                    continue;
                }
            }
            match route(payload, &self.resolver, base, &live.views, idx) {
                Ok(outs) => {
                    for o in outs {
                        out.emit(&live.views[o.view], o.decision, key, &o.value);
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
                    let dlq = &live.dlq[topic];
                    tracing::warn!(topic, partition, offset = m.offset(), reason, error = %e, "change sent to the DLQ");
                    metrics::counter!("govbus_router_dlq_total", "dataset" => dataset.clone(), "reason" => reason).increment(1);
                    let partition = partition.to_string();
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
                            value: Some(topic),
                        })
                        .insert(Header {
                            key: "govbus.source.partition",
                            value: Some(&partition),
                        })
                        .insert(Header {
                            key: "govbus.source.offset",
                            value: Some(&offset),
                        });
                    out.push(dlq, key, payload, Some(headers));
                }
            }
        }
        if refetched > 0 {
            metrics::counter!("govbus_router_refetched_total").increment(refetched);
        }
        if let Some((t, _, _, n)) = input {
            consumed.push((t, n));
        }
        for (t, n) in consumed {
            if let Some(c) = live.consumed.get(t) {
                c.increment(n);
            }
        }
        scratch.tally.flush(&live.views);
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in next {
            tpl.add_partition_offset(t, p, Offset::Offset(o))?;
            scratch.routed.insert((t.to_string(), p), o);
        }
        Ok(tpl)
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.control.stop();
    }
}

/// Which router transaction wrote a record, for audit (`govbus.txn`):
/// `<transactional id>/<session start, ms>/<transaction number>`.
struct Lineage {
    session: String,
    n: u64,
    label: String,
}

impl Lineage {
    fn new(tid: &str) -> Self {
        Self {
            session: format!("{tid}/{}", govbus_core::now_ms()),
            n: 0,
            label: String::new(),
        }
    }

    /// The label of the session's next transaction.
    fn next(&mut self) -> &str {
        self.n += 1;
        self.label.clear();
        use std::fmt::Write;
        let _ = write!(self.label, "{}/{}", self.session, self.n);
        &self.label
    }
}

/// The producer of one transaction and its `govbus.txn` label (None: no
/// header).
struct Txn<'a> {
    producer: &'a ThreadedProducer<DefaultProducerContext>,
    label: Option<&'a str>,
}

impl std::ops::Deref for Txn<'_> {
    type Target = ThreadedProducer<DefaultProducerContext>;

    fn deref(&self) -> &Self::Target {
        self.producer
    }
}

/// `record` with the `govbus.txn` header when the transaction has a label.
fn with_txn<'a>(
    record: BaseRecord<'a, [u8], [u8]>,
    label: Option<&str>,
) -> BaseRecord<'a, [u8], [u8]> {
    match label {
        Some(txn) => record.headers(OwnedHeaders::new_with_capacity(1).insert(Header {
            key: "govbus.txn",
            value: Some(txn),
        })),
        None => record,
    }
}

/// One batch routed and owned, ready to be written in one transaction:
/// its records (keys and values back to back in one buffer, reused from
/// batch to batch), the offsets it advances and the group it commits for.
#[derive(Default)]
struct Routed<'l> {
    bytes: Vec<u8>,
    records: Vec<Record<'l>>,
    offsets: Option<TopicPartitionList>,
    meta: Option<ConsumerGroupMetadata>,
    /// The transaction's `govbus.txn` label.
    label: Option<String>,
    changes: usize,
}

/// A record of a [`Routed`] batch; key and value index its buffer.
struct Record<'l> {
    topic: &'l str,
    key: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
    headers: Option<OwnedHeaders>,
}

impl<'l> Routed<'l> {
    fn clear(&mut self) {
        self.bytes.clear();
        self.records.clear();
        self.offsets = None;
        self.meta = None;
        self.label = None;
        self.changes = 0;
    }

    fn push(&mut self, topic: &'l str, key: &[u8], value: &[u8], headers: Option<OwnedHeaders>) {
        let k = self.bytes.len();
        self.bytes.extend_from_slice(key);
        let v = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.records.push(Record {
            topic,
            key: k..v,
            value: v..self.bytes.len(),
            headers,
        });
    }

    /// Adds one routed record for `v`'s topic and counts it.
    fn emit(&mut self, v: &'l View, decision: crate::Decision, key: &[u8], value: &[u8]) {
        if let Some(c) = v.counters.routed(decision) {
            c.increment(1);
        }
        self.push(&v.topic, key, value, None);
    }
}

/// Routed records handed to the committer at a time: enough that the
/// hand-over costs little per record, few enough that the producer sends
/// while the rest of the batch is routed.
const CHUNK: usize = 1000;

/// The committer thread's transaction state.
#[derive(Default)]
struct Committer {
    open: bool,
    /// Why the transaction failed; the jobs after it up to its commit
    /// are dropped and the commit reports this.
    failed: Option<RouterError>,
    /// A transaction of this session failed: no other is begun on this
    /// producer. Chunks of the next batch may already be queued; writing
    /// them in a new transaction that the session then aborts would rely
    /// on every broker honouring that abort (nisshi's SQLite storage may
    /// commit it instead, docs/BROKERS.md), and a producer whose
    /// transaction failed is in an abortable or fatal state on Kafka too.
    /// The session ends and a new one starts from the committed offsets
    /// with a new producer.
    dead: bool,
    started: Option<std::time::Instant>,
}

impl Committer {
    /// Sends `job`'s records in the open transaction (beginning one if
    /// none is open) and, when the job carries offsets, commits: then the
    /// result (Some), else None.
    fn write(
        &mut self,
        producer: &ThreadedProducer<DefaultProducerContext>,
        job: &mut Routed<'_>,
    ) -> Option<Result<(), RouterError>> {
        let commit = job.offsets.is_some();
        if self.dead && self.failed.is_none() {
            // Only chunks the routing thread sent before it saw the failure.
            return commit.then(|| {
                Err(RouterError::Committer(
                    "an earlier transaction of this session failed".into(),
                ))
            });
        }
        if self.failed.is_none() {
            if let Err(e) = self.send(producer, job) {
                tracing::warn!(error = %e, "transaction failed; aborting it");
                self.abort(producer);
                self.failed = Some(e);
                self.dead = true;
            }
        }
        if !commit {
            return None;
        }
        Some(match self.failed.take() {
            Some(e) => Err(e),
            None => {
                metrics::counter!("govbus_router_transactions_total", "result" => "committed")
                    .increment(1);
                tracing::debug!(
                    changes = job.changes,
                    commit_ms = self
                        .started
                        .take()
                        .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3),
                    "batch committed"
                );
                Ok(())
            }
        })
    }

    fn send(
        &mut self,
        producer: &ThreadedProducer<DefaultProducerContext>,
        job: &mut Routed<'_>,
    ) -> Result<(), RouterError> {
        if !self.open {
            producer.begin_transaction()?;
            self.open = true;
            self.started = Some(std::time::Instant::now());
        }
        let label = job.label.as_deref();
        for r in job.records.iter_mut() {
            let record = BaseRecord::to(r.topic)
                .key(&job.bytes[r.key.clone()])
                .payload(&job.bytes[r.value.clone()]);
            let record = match r.headers.take() {
                // Dead letters carry their reason, not the label.
                Some(h) => record.headers(h),
                None => with_txn(record, label),
            };
            send(producer, record)?;
        }
        if let (Some(offsets), Some(meta)) = (&job.offsets, &job.meta) {
            commit(producer, offsets, meta)?;
            self.open = false;
        }
        Ok(())
    }

    fn abort(&mut self, producer: &ThreadedProducer<DefaultProducerContext>) {
        metrics::counter!("govbus_router_transactions_total", "result" => "aborted").increment(1);
        if let Err(e) = producer.abort_transaction(Duration::from_secs(30)) {
            tracing::warn!(error = %e, "abort failed; the transaction times out on the broker");
        }
        self.open = false;
        self.started = None;
    }

    /// Aborts a transaction left open by a batch that was never finished.
    fn abandon(&mut self, producer: &ThreadedProducer<DefaultProducerContext>) {
        if self.open {
            tracing::info!("aborting the transaction of a batch routed in part");
            self.abort(producer);
        }
    }
}

/// Delivers what the transaction holds, then adds `offsets` for `meta`'s
/// group and commits.
fn commit(
    producer: &ThreadedProducer<DefaultProducerContext>,
    offsets: &TopicPartitionList,
    meta: &ConsumerGroupMetadata,
) -> Result<(), RouterError> {
    // Every record of the batch delivered before the offsets go in.
    let t0 = std::time::Instant::now();
    flush_deliveries(producer, Duration::from_secs(30))?;
    let flush_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t = std::time::Instant::now();
    producer.send_offsets_to_transaction(offsets, meta, Duration::from_secs(30))?;
    let offsets_ms = t.elapsed().as_secs_f64() * 1e3;
    producer.commit_transaction(Duration::from_secs(30))?;
    tracing::trace!(
        flush_ms,
        offsets_ms,
        end_ms = t.elapsed().as_secs_f64() * 1e3 - offsets_ms,
        "transaction committed"
    );
    Ok(())
}

/// How many batches the committer holds offsets of and has not yet
/// committed or aborted, for the rebalance callback.
#[derive(Debug, Default)]
struct InFlight {
    busy: std::sync::Mutex<usize>,
    idle: std::sync::Condvar,
}

impl InFlight {
    fn start(&self) {
        *self.busy.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    fn finish(&self) {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        *busy = busy.saturating_sub(1);
        self.idle.notify_all();
    }

    /// Waits until no batch is in flight or `timeout` passes; false on
    /// timeout.
    fn wait_idle(&self, timeout: Duration) -> bool {
        let busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let (_busy, res) = self
            .idle
            .wait_timeout_while(busy, timeout, |b| *b > 0)
            .unwrap_or_else(|p| p.into_inner());
        !res.timed_out()
    }
}

/// The router's consumer context: a partition is given up only once the
/// batch in flight, which may hold its records and offsets, is committed
/// or aborted — so the next owner starts from offsets that no transaction
/// of ours will still move (Kafka's own guard, KIP-447's stable offsets,
/// is not something every broker has).
struct RouterContext {
    in_flight: Arc<InFlight>,
}

impl rdkafka::ClientContext for RouterContext {}

impl rdkafka::consumer::ConsumerContext for RouterContext {
    fn pre_rebalance(
        &self,
        _consumer: &BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Revoke(_) = rebalance {
            // Longer than a transaction may take (transaction.timeout.ms).
            if !self.in_flight.wait_idle(Duration::from_secs(90)) {
                tracing::warn!("partitions revoked while a batch is still in flight");
            }
        }
    }
}

/// A job back from the committer: its buffer, and its commit's result when
/// it carried offsets.
type Done<'l> = (Option<Result<(), RouterError>>, Routed<'l>);

/// The routing thread's end of the pipeline to the committer thread.
struct Pipe<'s, 'l> {
    /// None once the session ends (the committer's loop then ends).
    jobs: Option<std::sync::mpsc::Sender<Routed<'l>>>,
    /// Every job comes back (its buffer, for reuse), with the result of
    /// its commit when it carried offsets.
    done: std::sync::mpsc::Receiver<Done<'l>>,
    in_flight: &'s InFlight,
    /// Commits handed over and not yet answered.
    pending: usize,
    /// A failed commit seen while taking buffers back.
    failed: Option<RouterError>,
    pool: Vec<Routed<'l>>,
}

impl<'s, 'l> Pipe<'s, 'l> {
    fn new(
        jobs: std::sync::mpsc::Sender<Routed<'l>>,
        done: std::sync::mpsc::Receiver<Done<'l>>,
        in_flight: &'s InFlight,
    ) -> Self {
        Self {
            jobs: Some(jobs),
            done,
            in_flight,
            pending: 0,
            failed: None,
            pool: Vec::new(),
        }
    }

    fn gone() -> RouterError {
        RouterError::Committer("the committer thread ended".into())
    }

    fn take_back(&mut self, (res, mut buf): Done<'l>) {
        if let Some(res) = res {
            self.pending = self.pending.saturating_sub(1);
            if let Err(e) = res {
                self.failed.get_or_insert(e);
            }
        }
        buf.clear();
        self.pool.push(buf);
    }

    /// An empty buffer, reused when the committer has handed one back.
    fn buffer(&mut self) -> Routed<'l> {
        while let Ok(back) = self.done.try_recv() {
            self.take_back(back);
        }
        self.pool.pop().unwrap_or_default()
    }

    fn send(&mut self, job: Routed<'l>) -> Result<(), RouterError> {
        let jobs = self.jobs.as_ref().ok_or_else(Self::gone)?;
        jobs.send(job).map_err(|_| Self::gone())
    }

    /// Hands over `out`'s records so far (the batch goes on in a new
    /// buffer with the same label).
    fn chunk(&mut self, out: &mut Routed<'l>) -> Result<(), RouterError> {
        let mut next = self.buffer();
        next.label = out.label.clone();
        let full = std::mem::replace(out, next);
        self.send(full)
    }

    /// Hands over a batch's last chunk, with its offsets: the committer
    /// commits the batch (none may be outstanding).
    fn commit(&mut self, last: Routed<'l>) -> Result<(), RouterError> {
        self.in_flight.start();
        if let Err(e) = self.send(last) {
            self.in_flight.finish();
            return Err(e);
        }
        self.pending += 1;
        Ok(())
    }

    /// Waits until no commit is outstanding: the first failure since the
    /// last wait, if any.
    fn wait(&mut self) -> Result<(), RouterError> {
        while self.pending > 0 {
            let back = self.done.recv().map_err(|_| Self::gone())?;
            self.take_back(back);
        }
        match self.failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Sends what the producer holds now, ignoring `linger.ms`, and waits until
/// every record has its delivery report.
///
/// Not the rdkafka crate's `flush()`: after asking librdkafka to flush for
/// 0 ms it polls the producer's event queue in 100 ms steps, while the
/// ThreadedProducer's own thread takes the reports, so each commit waited
/// ≈ 100 ms; and a flush for 0 ms wakes the senders only if they run before
/// it returns. Nor a loop on `in_flight_count()`: the records would wait for
/// `linger.ms` (measured: docs/BENCHMARKS.md). librdkafka's own
/// `rd_kafka_flush` with a timeout does both right for a producer whose
/// reports are events served by another thread: it marks the producer as
/// flushing (linger ignored), wakes the senders, and waits on a condition
/// variable until the reports are taken.
fn flush_deliveries(
    producer: &ThreadedProducer<DefaultProducerContext>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the pointer is the producer's live rd_kafka_t handle (it lives
    // as long as `producer`, borrowed for this call), and rd_kafka_flush is
    // thread-safe; it reads and frees nothing of ours.
    #[allow(unsafe_code)]
    let err = unsafe { rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), ms) };
    match RDKafkaErrorCode::from(err) {
        RDKafkaErrorCode::NoError => Ok(()),
        code => Err(KafkaError::Flush(code)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(r: &'a Routed<'_>, i: usize) -> (&'a str, &'a [u8], &'a [u8]) {
        let rec = &r.records[i];
        (
            rec.topic,
            &r.bytes[rec.key.clone()],
            &r.bytes[rec.value.clone()],
        )
    }

    #[test]
    fn a_routed_buffer_gives_back_each_record_it_holds() {
        let mut r = Routed::default();
        r.push("sub.p01", b"k1", b"value one", None);
        r.push("sub.p02", b"", b"", None);
        r.push(
            "dlq.route.bca.residents",
            b"k3",
            b"\x00bad",
            Some(OwnedHeaders::new()),
        );
        assert_eq!(record(&r, 0), ("sub.p01", &b"k1"[..], &b"value one"[..]));
        assert_eq!(record(&r, 1), ("sub.p02", &b""[..], &b""[..]));
        assert_eq!(
            record(&r, 2),
            ("dlq.route.bca.residents", &b"k3"[..], &b"\x00bad"[..])
        );
        assert!(r.records[2].headers.is_some());
        r.clear();
        assert!(r.records.is_empty() && r.bytes.is_empty());
    }

    fn pipe<'s, 'l>(
        in_flight: &'s InFlight,
    ) -> (
        Pipe<'s, 'l>,
        std::sync::mpsc::Receiver<Routed<'l>>,
        std::sync::mpsc::Sender<Done<'l>>,
    ) {
        let (jobs, job_rx) = std::sync::mpsc::channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        (Pipe::new(jobs, done, in_flight), job_rx, done_tx)
    }

    #[test]
    fn a_chunk_goes_over_whole_and_the_batch_goes_on_with_its_label() {
        let in_flight = InFlight::default();
        let (mut pipe, jobs, _done) = pipe(&in_flight);
        let mut out = pipe.buffer();
        out.label = Some("tid/1/7".into());
        out.push("sub.p01", b"k1", b"v1", None);
        out.push("sub.p02", b"k2", b"v2", None);
        pipe.chunk(&mut out).expect("chunk");
        let sent = jobs.try_recv().expect("the chunk was handed over");
        assert_eq!(sent.records.len(), 2);
        assert_eq!(record(&sent, 1), ("sub.p02", &b"k2"[..], &b"v2"[..]));
        assert!(sent.offsets.is_none(), "a chunk does not commit");
        assert!(out.records.is_empty());
        assert_eq!(out.label.as_deref(), Some("tid/1/7"));
        // Nothing outstanding: a revocation would not wait.
        assert!(in_flight.wait_idle(Duration::ZERO));
    }

    #[test]
    fn a_failed_commit_is_reported_by_the_next_wait_and_only_once() {
        let in_flight = InFlight::default();
        let (mut pipe, jobs, done) = pipe(&in_flight);
        pipe.commit(Routed::default()).expect("handed over");
        assert!(jobs.try_recv().is_ok());
        assert!(
            !in_flight.wait_idle(Duration::ZERO),
            "a commit is outstanding"
        );
        // A chunk's buffer comes back first, then the commit's failure.
        done.send((None, Routed::default())).expect("send");
        done.send((
            Some(Err(RouterError::Committer("broker gone".into()))),
            Routed::default(),
        ))
        .expect("send");
        in_flight.finish();
        let err = pipe.wait().expect_err("the failure is reported");
        assert!(err.to_string().contains("broker gone"), "{err}");
        assert_eq!(pipe.pool.len(), 2, "both buffers are reused");
        pipe.wait().expect("reported once");
    }

    #[test]
    fn a_revocation_waits_until_every_outstanding_commit_is_done() {
        let in_flight = Arc::new(InFlight::default());
        in_flight.start();
        in_flight.start();
        in_flight.finish();
        assert!(
            !in_flight.wait_idle(Duration::ZERO),
            "one still outstanding"
        );
        let other = in_flight.clone();
        let committer = std::thread::spawn(move || other.finish());
        assert!(in_flight.wait_idle(Duration::from_secs(30)));
        committer.join().expect("join");
    }

    #[test]
    fn after_a_failed_transaction_the_committer_begins_no_other() {
        // Not transactional, and no broker: begin_transaction fails at once.
        let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .create()
            .expect("producer");
        let mut txn = Committer::default();
        let mut chunk = Routed::default();
        chunk.push("sub.p01", b"k1", b"v1", None);
        assert!(txn.write(&producer, &mut chunk).is_none(), "a chunk");
        assert!(txn.dead && !txn.open, "the failure ends the producer's use");
        let mut last = Routed {
            offsets: Some(TopicPartitionList::new()),
            ..Routed::default()
        };
        let first = txn.write(&producer, &mut last).expect("a commit answers");
        assert!(first.is_err(), "the batch's commit reports the failure");
        // The next batch's chunks, queued before the routing thread saw
        // the failure: dropped, and its commit fails without a new
        // transaction being begun.
        let mut next = Routed::default();
        next.push("sub.p01", b"k2", b"v2", None);
        assert!(txn.write(&producer, &mut next).is_none());
        assert!(!txn.open, "no transaction begun for the next batch");
        let mut last = Routed {
            offsets: Some(TopicPartitionList::new()),
            ..Routed::default()
        };
        let second = txn.write(&producer, &mut last).expect("a commit answers");
        assert!(
            matches!(&second, Err(RouterError::Committer(m)) if m.contains("earlier transaction")),
            "{second:?}"
        );
        assert!(!txn.open);
    }

    #[test]
    fn a_committer_thread_that_ended_is_an_error_not_a_hang() {
        let in_flight = InFlight::default();
        let (mut pipe, jobs, done) = pipe(&in_flight);
        drop(jobs);
        let err = pipe
            .commit(Routed::default())
            .expect_err("nobody to hand to");
        assert!(matches!(err, RouterError::Committer(_)), "{err}");
        assert!(in_flight.wait_idle(Duration::ZERO), "not left counted");
        pipe.pending = 1;
        drop(done);
        assert!(matches!(pipe.wait(), Err(RouterError::Committer(_))));
    }
}
