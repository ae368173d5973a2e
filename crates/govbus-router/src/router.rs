//! The router: consume central topics read_committed, route, and write the
//! views and the consumed offsets in one Kafka transaction. Its parts, one
//! file each:
//! - [`live`]: the control topic's subscriptions compiled into the live set;
//! - [`session`]: one consumer, producer and committer thread, and the loop;
//! - [`in_step`]: bringing views in step on newly assigned partitions;
//! - [`batch`]: the batch step, a pure function of the polled records;
//! - [`committer`]: the thread that owns the transactions.

mod batch;
mod committer;
mod in_step;
mod live;
mod session;

pub use batch::{Advance, Input, InputHeaders};
pub use committer::DeadLetter;
pub use in_step::Applied;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use govbus_core::{Catalog, CatalogError, Topics};
use govbus_kafka_client::KafkaConfig;
use govbus_kafka_client::{ensure_topics, KafkaSetupError, TopicSpec};
use govbus_schema::{RegistryClient, RegistryError, SchemaCache};
use rdkafka::error::KafkaError;
use serde::{Deserialize, Serialize};

use crate::control::{self, ControlError};
use live::Live;

/// Router settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// The cluster.
    pub kafka: KafkaConfig,
    /// Schema registry URL.
    pub registry: String,
    /// How to reach an HTTPS registry that requires credentials: its CA,
    /// this agency's name and token (none: plain HTTP, anonymous).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_access: Option<govbus_http::ClientAccess>,
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
    /// The dataset that holds the administrative map, which filters ask
    /// with `in_unit` and `province_of`; followed only when a filter does.
    #[serde(default = "default_map_dataset")]
    pub map_dataset: String,
}

fn default_map_dataset() -> String {
    "moha.admin_units".into()
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
    RegistryUnavailable(#[source] govbus_schema::EnvelopeError),
    /// The router held a backlog and consumed nothing for too long; a new
    /// session follows.
    #[error("consumed nothing for {idle_secs} s while {backlog} records waited past its position")]
    Stalled {
        /// Seconds without a record.
        idle_secs: u64,
        /// Records past the position.
        backlog: i64,
    },
    /// The committer thread cannot take or answer a batch.
    #[error("committer: {0}")]
    Committer(#[from] CommitterError),
    /// The administrative map's topic could not be followed.
    #[error("administrative map: {0}")]
    Map(#[source] Box<govbus_kafka_client::tail::TailError>),
    /// A view's per-partition state record does not decode.
    #[error("view state {key}: {source}")]
    State {
        /// The record's key.
        key: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Why the committer thread cannot take or answer a batch.
#[derive(Debug, thiserror::Error)]
pub enum CommitterError {
    /// A transaction of this session failed; no other is begun on its
    /// producer (the session ends and a new one starts).
    #[error("an earlier transaction of this session failed")]
    EarlierFailed,
    /// The thread ended.
    #[error("the committer thread ended")]
    Ended,
    /// The thread could not be started.
    #[error("the committer thread could not start: {0}")]
    Spawn(#[source] std::io::Error),
}

/// The router: follows the control topic and routes its subscriptions.
#[derive(Debug)]
pub struct Router {
    cfg: RouterConfig,
    /// The datasets: replaced when a subscription names one it does not
    /// know and `reload` finds it in the files.
    catalog: std::sync::RwLock<Arc<Catalog>>,
    /// Reads the datasets again from their files (none: they are fixed).
    reload: Option<Reload>,
    topics: Topics,
    registry: RegistryClient,
    resolver: SchemaCache,
    control: Arc<control::Follower>,
    assigned: Assignment,
    /// Writer schema ids the fast path accepts (true) or not (false).
    fast_ids: batch::FastIds,
    /// What `/readyz` answers.
    readiness: Arc<govbus_core::health::Readiness>,
    /// The consumer's fetch wait: the config's, longer after each stall
    /// ([`govbus_core::stall::longer_fetch_wait`]).
    fetch_wait_ms: std::sync::atomic::AtomicU32,
    /// The administrative map, followed once a filter asks it.
    map: std::sync::Mutex<Option<Arc<crate::map::MapWatch>>>,
}

/// Reads a deployment's datasets again (from `deploy/`), or says why not.
pub struct Reload(Box<dyn Fn() -> Result<Catalog, String> + Send + Sync>);

impl Reload {
    /// `read` reads the datasets again.
    pub fn new(read: impl Fn() -> Result<Catalog, String> + Send + Sync + 'static) -> Self {
        Self(Box::new(read))
    }
}

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reload")
    }
}

/// The input partitions a router instance holds now, shared with whoever
/// asked for it (tests, an embedding process).
pub type Assignment = Arc<std::sync::Mutex<std::collections::BTreeSet<(String, i32)>>>;

impl Router {
    /// Starts following the control topic (`_govbus.subscriptions`, read to
    /// its end before this returns); `catalog` gives the datasets.
    pub fn new(mut cfg: RouterConfig, catalog: &Catalog) -> Result<Self, RouterError> {
        cfg.kafka = cfg.kafka.named("govbus-router");
        let topics = Topics::new(&cfg.topic_prefix);
        ensure_topics(&cfg.kafka, &[TopicSpec::compacted(topics.view_state(), 1)])?;
        let control =
            control::Follower::start(&cfg.kafka, &topics.subscriptions(), Duration::from_secs(60))?;
        let registry = RegistryClient::with_access(&cfg.registry, cfg.registry_access.as_ref())?;
        Ok(Self {
            fetch_wait_ms: std::sync::atomic::AtomicU32::new(cfg.kafka.fetch_wait_ms),
            resolver: SchemaCache::new(registry.clone()),
            registry,
            catalog: std::sync::RwLock::new(Arc::new(catalog.clone())),
            reload: None,
            topics,
            cfg,
            control,
            assigned: Assignment::default(),
            readiness: Arc::default(),
            fast_ids: Default::default(),
            map: Default::default(),
        })
    }

    /// The administrative map's follower, started on first use (None: the
    /// catalog has no such dataset; hierarchy questions are answered no).
    fn map_watch(&self) -> Result<Option<Arc<crate::map::MapWatch>>, RouterError> {
        let mut held = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = held.as_ref() {
            return Ok(Some(w.clone()));
        }
        let catalog = self.catalog();
        let Some(d) = self
            .cfg
            .map_dataset
            .parse::<govbus_core::DatasetId>()
            .ok()
            .and_then(|id| catalog.dataset(&id).cloned())
        else {
            tracing::error!(
                dataset = self.cfg.map_dataset,
                "a filter asks the administrative map, but the catalog has no such dataset"
            );
            return Ok(None);
        };
        let topic = self.topics.central(&d.id, d.file.major);
        ensure_topics(
            &self.cfg.kafka,
            &[TopicSpec::changes(
                topic.clone(),
                self.cfg.partitions,
                d.file.retention_ms,
            )],
        )?;
        let w = crate::map::MapWatch::follow(
            &self.cfg.kafka,
            &self.registry,
            &topic,
            Duration::from_secs(60),
        )
        .map_err(|e| RouterError::Map(Box::new(e)))?;
        tracing::info!(topic, units = w.rows(), "following the administrative map");
        *held = Some(w.clone());
        Ok(Some(w))
    }

    /// Reads the datasets again with `reload` when a subscription in force
    /// names one this router does not know (a dataset added to `deploy/`
    /// after it started), instead of leaving that subscription out until a
    /// restart.
    pub fn reloading(mut self, reload: Reload) -> Self {
        self.reload = Some(reload);
        self
    }

    /// The datasets as this router knows them now.
    pub(crate) fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// When `wanted` names a dataset the catalog lacks and the files can be
    /// read again: reads them, and keeps the new catalog if it has them.
    pub(crate) fn know(&self, wanted: &[govbus_core::DatasetId]) {
        let Some(reload) = &self.reload else {
            return;
        };
        let known = self.catalog();
        let missing: Vec<String> = wanted
            .iter()
            .filter(|d| known.dataset(d).is_none())
            .map(ToString::to_string)
            .collect();
        if missing.is_empty() {
            return;
        }
        match (reload.0)() {
            Ok(c) => {
                tracing::info!(datasets = ?missing, found = ?missing.iter().filter(|d| d.parse().ok().and_then(|id| c.dataset(&id)).is_some()).collect::<Vec<_>>(), "subscriptions name datasets this router did not know: its files read again");
                *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(c);
            }
            Err(e) => {
                tracing::error!(datasets = ?missing, error = %e, "subscriptions name datasets this router does not know, and its files do not read");
            }
        }
    }

    /// Reports readiness to `ready` (an agent's `/readyz`) instead of its own.
    pub fn reporting_to(mut self, ready: Arc<govbus_core::health::Readiness>) -> Self {
        self.readiness = ready;
        self
    }

    /// Whether the router is routing and caught up, and why not: in a
    /// session, holding input partitions, at most
    /// [`govbus_core::health::CAUGHT_UP`] records behind.
    pub fn readiness(&self) -> Arc<govbus_core::health::Readiness> {
        self.readiness.clone()
    }

    /// The input partitions this instance holds, kept current while it runs
    /// (also the gauge `govbus_router_partitions{dataset}`).
    pub fn assignment(&self) -> Assignment {
        self.assigned.clone()
    }

    fn set_assignment(&self, live: &Live, now: std::collections::BTreeSet<(String, i32)>) {
        let mut held = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
        if *held != now {
            govbus_core::InternalEvent::emit(crate::events::AssignmentChanged {
                inputs: &live.inputs,
                held: &now,
            });
            *held = now;
        }
    }

    /// Routes until `stop`. A change of the subscription set starts a new
    /// session with it; a failure aborts the open transaction and starts a
    /// new session from the last committed offsets.
    pub fn run(&self, stop: Arc<AtomicBool>) -> Result<(), RouterError> {
        // Exported from the start, so that an alert on its increase sees
        // the first stall.
        metrics::counter!("govbus_router_stalls_total").increment(0);
        let mut failures = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let res = self.session(&stop);
            self.set_assignment(&Live::default(), Default::default());
            match res {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    self.readiness
                        .not_ready(format!("routing session failed ({e}); restarting"));
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
}

impl Drop for Router {
    fn drop(&mut self) {
        self.control.stop();
        if let Some(m) = self.map.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            m.stop();
        }
    }
}
