//! The Kafka-backed store: the compacted `_schemas` topic is the only state.
//! Every instance reads it from the beginning at start and follows it; a
//! write is answered once the instance has read it back (read-your-writes).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use govbus_kafka_client::tail::{Tail, TailError, Tailed};
use govbus_kafka_client::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::state::{LogRecord, State};

/// The store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Kafka refused or failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Creating the topic failed.
    #[error("cannot create topic {topic}: {reason}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's answer.
        reason: String,
    },
    /// The log cannot be followed.
    #[error(transparent)]
    Follow(#[from] TailError),
    /// The log could not be read to its end.
    #[error("cannot read {topic} to its end: {source}")]
    CatchUp {
        /// The topic.
        topic: String,
        /// Why.
        #[source]
        source: ApiError,
    },
}

/// The registry's state, kept in step with the `_schemas` topic.
pub struct KafkaStore {
    producer: FutureProducer,
    topic: String,
    state: Arc<RwLock<State>>,
    applied: watch::Receiver<i64>,
    write_lock: tokio::sync::Mutex<()>,
    stop: Arc<AtomicBool>,
    guard: std::sync::OnceLock<Arc<dyn crate::Guard>>,
}

impl std::fmt::Debug for KafkaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaStore")
            .field("topic", &self.topic)
            .finish()
    }
}

impl Drop for KafkaStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Creates `topic` with one partition, compacted, if it does not exist.
pub async fn ensure_log_topic(
    kafka: &KafkaConfig,
    topic: &str,
    replication: i32,
) -> Result<(), StoreError> {
    let admin: AdminClient<DefaultClientContext> = kafka.client().create()?;
    let nt = NewTopic::new(topic, 1, TopicReplication::Fixed(replication))
        .set("cleanup.policy", "compact");
    let res = admin
        .create_topics(
            [&nt],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for r in res {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => {
                return Err(StoreError::CreateTopic {
                    topic: t,
                    reason: e.to_string(),
                })
            }
        }
    }
    Ok(())
}

impl KafkaStore {
    /// Opens the store on `topic`: creates it if needed and reads it to its end.
    pub async fn open(
        kafka: &KafkaConfig,
        topic: &str,
        replication: i32,
    ) -> Result<Self, StoreError> {
        ensure_log_topic(kafka, topic, replication).await?;
        let producer: FutureProducer = kafka
            .producer()
            .set("linger.ms", "0")
            .set("message.timeout.ms", "10000")
            .create()?;
        let mut cfg = kafka.consumer(&format!("govbus-registry-reader-{}", uuid_like()));
        cfg.set("fetch.wait.max.ms", "50");
        let tail = Tail::open(cfg, topic, Duration::from_secs(30))?.settle_at(kafka.follow_wait_ms);
        let state = Arc::new(RwLock::new(State::default()));
        let (tx, applied) = watch::channel(0i64);
        let stop = Arc::new(AtomicBool::new(false));
        {
            let state = state.clone();
            let topic = topic.to_string();
            tail.spawn(
                "registry-log",
                stop.clone(),
                Duration::from_millis(100),
                move |t| {
                    if let Tailed::Record(m) = t {
                        match LogRecord::decode(m.key().unwrap_or_default(), m.payload()) {
                            Ok(Some(rec)) => {
                                state.write().unwrap_or_else(|p| p.into_inner()).apply(rec)
                            }
                            Ok(None) => {}
                            Err(e) => tracing::warn!(
                                topic,
                                offset = m.offset(),
                                error = %e,
                                "skipping unreadable record of the schema log"
                            ),
                        }
                        tx.send_replace(m.offset() + 1);
                    }
                },
            )?;
        }
        let store = Self {
            producer,
            topic: topic.to_string(),
            state,
            applied,
            write_lock: tokio::sync::Mutex::new(()),
            stop,
            guard: std::sync::OnceLock::new(),
        };
        // Learn where the log ends by writing a NOOP, then read up to it.
        let end = store
            .append(&LogRecord::Noop)
            .await
            .map_err(|source| StoreError::CatchUp {
                topic: topic.to_string(),
                source,
            })?;
        store
            .wait_applied(end, Duration::from_secs(60))
            .await
            .map_err(|source| StoreError::CatchUp {
                topic: topic.to_string(),
                source,
            })?;
        Ok(store)
    }

    /// Installs the check every new version must also pass (once).
    pub fn set_guard(&self, guard: Arc<dyn crate::Guard>) {
        let _ = self.guard.set(guard);
    }

    /// The installed guard.
    pub fn guard(&self) -> Option<&Arc<dyn crate::Guard>> {
        self.guard.get()
    }

    /// Reads the state.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let guard = self.state.read().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    /// Serialises writers of this instance: plan under the lock, then [`Self::commit`].
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.write_lock.lock().await
    }

    /// Appends `rec` and waits until this instance has applied it.
    pub async fn commit(&self, rec: &LogRecord) -> Result<(), ApiError> {
        let offset = self.append(rec).await?;
        self.wait_applied(offset, Duration::from_secs(10)).await
    }

    async fn append(&self, rec: &LogRecord) -> Result<i64, ApiError> {
        let (key, value) = rec.encode();
        let mut record = FutureRecord::to(&self.topic).partition(0).key(&key);
        if let Some(v) = value.as_ref() {
            record = record.payload(v);
        }
        match self.producer.send(record, Duration::from_secs(10)).await {
            Ok((_, offset)) => Ok(offset),
            Err((e, _)) => Err(ApiError::Store(e.into())),
        }
    }

    async fn wait_applied(&self, offset: i64, timeout: Duration) -> Result<(), ApiError> {
        let mut rx = self.applied.clone();
        let done = tokio::time::timeout(timeout, rx.wait_for(|a| *a > offset))
            .await
            .is_ok_and(|r| r.is_ok());
        match done {
            true => Ok(()),
            false => Err(ApiError::Timeout(format!(
                "offset {offset} of {} not read back",
                self.topic
            ))),
        }
    }
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::process::id() as u64 ^ govbus_core::now_ms() as u64
    )
}
