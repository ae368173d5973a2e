//! Catalogs that contract rules look values up in (`[lookups]` in a dataset
//! file, e.g. `admin_units = "moha.admin_units"`): the current state of
//! another dataset, followed live from its central topic.
//!
//! A follower reads the catalog's central topic from the beginning (every
//! partition, no consumer group: nothing is committed) and keeps its rows
//! by key. Rules see it as a CEL map from key to row, rebuilt after each batch
//! of changes (a clone of the map; rules then share it without locking). The
//! producer does not accept changes before every follower has reached the end
//! of its topic once (partition EOF from the broker): a code published before
//! the producer started is never refused for being unknown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use cel_interpreter::objects::{Key, Map};
use cel_interpreter::Value as Cel;
use govbus_core::admin_map::AdminMap;
use govbus_core::DatasetId;
use govbus_kafka_client::tail::{Tail, TailError, Tailed};
use govbus_kafka_client::KafkaConfig;
use govbus_schema::{Op, RegistryClient, SchemaCache};
use rdkafka::message::Message;

/// A follower could not start.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The topic cannot be followed (it does not exist: its owner's
    /// producer creates it; or Kafka refused).
    #[error("lookup {dataset}: {source}")]
    Follow {
        /// The catalog.
        dataset: DatasetId,
        /// Why.
        #[source]
        source: Box<TailError>,
    },
    /// The end of the topic was not reached in time.
    #[error("lookup {dataset}: not caught up with {topic} after {secs} s ({rows} rows so far)")]
    NotCaughtUp {
        /// The catalog.
        dataset: DatasetId,
        /// Its central topic.
        topic: String,
        /// How long we waited.
        secs: u64,
        /// Rows read so far.
        rows: usize,
    },
}

#[derive(Debug, Default)]
struct Ready {
    done: Mutex<bool>,
    cv: Condvar,
}

/// The current rows of one catalog dataset.
#[derive(Debug)]
pub struct Lookup {
    dataset: DatasetId,
    /// The rows as one CEL map (shared by every evaluation until the next batch).
    snapshot: RwLock<(Cel, usize)>,
    /// The rows as an administrative map, for `[[codes]]` rules (kept only
    /// when one names this lookup).
    map: Option<RwLock<Arc<AdminMap>>>,
    ready: Ready,
    stop: Arc<AtomicBool>,
}

impl Lookup {
    /// The catalog's dataset.
    pub fn dataset(&self) -> &DatasetId {
        &self.dataset
    }

    /// The rows as a CEL map from key to row.
    pub fn value(&self) -> Cel {
        self.snapshot
            .read()
            .map(|s| s.0.clone())
            .unwrap_or(Cel::Null)
    }

    /// The rows as an administrative map (None: not kept for this lookup).
    pub fn admin_map(&self) -> Option<Arc<AdminMap>> {
        self.map
            .as_ref()
            .and_then(|m| m.read().ok().map(|m| m.clone()))
    }

    /// How many rows it holds.
    pub fn rows(&self) -> usize {
        self.snapshot.read().map(|s| s.1).unwrap_or(0)
    }

    /// Whether the follower has reached the end of the topic once.
    pub fn is_ready(&self) -> bool {
        *self.ready.done.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait_ready(&self, limit: Duration) -> bool {
        let g = self.ready.done.lock().unwrap_or_else(|p| p.into_inner());
        let (g, _) = self
            .ready
            .cv
            .wait_timeout_while(g, limit, |done| !*done)
            .unwrap_or_else(|p| p.into_inner());
        *g
    }

    /// Stops the follower (it ends within a poll interval).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Starts following `dataset`'s central `topic` (its owner's producer
    /// creates it) and waits until the end of the topic has been read once,
    /// at most `catch_up`; `as_map`: also keep the rows as an
    /// administrative map.
    pub fn follow(
        kafka: &KafkaConfig,
        registry: &RegistryClient,
        dataset: DatasetId,
        topic: String,
        catch_up: Duration,
        as_map: bool,
    ) -> Result<Arc<Self>, LookupError> {
        let follow_err = |source| LookupError::Follow {
            dataset: dataset.clone(),
            source: Box::new(source),
        };
        let deadline = Instant::now() + catch_up;
        let tail = Tail::open(
            kafka.consumer(&format!("govbus-lookup-{}", uuid::Uuid::new_v4())),
            &topic,
            catch_up,
        )
        .map_err(follow_err)?
        .settle_at(kafka.follow_wait_ms);
        let lookup = Arc::new(Self {
            dataset: dataset.clone(),
            snapshot: RwLock::new((
                Cel::Map(Map {
                    map: Arc::new(HashMap::new()),
                }),
                0,
            )),
            map: as_map.then(RwLock::default),
            ready: Ready::default(),
            stop: Arc::new(AtomicBool::new(false)),
        });
        let mut rows = Rows {
            lookup: lookup.clone(),
            resolver: SchemaCache::new(registry.clone()),
            subject: govbus_core::topics::value_subject(&topic),
            rows: HashMap::new(),
            json: as_map.then(HashMap::new),
        };
        let (mut changed, mut since) = (0u64, Instant::now());
        let span = tracing::info_span!("lookup", dataset = %dataset, topic = %topic);
        let _e = span.enter();
        tail.spawn(
            &format!("lookup-{dataset}"),
            lookup.stop.clone(),
            Duration::from_millis(50),
            move |t| {
                let caught_up = matches!(t, Tailed::CaughtUp);
                let idle = matches!(t, Tailed::Idle);
                if let Tailed::Record(m) = t {
                    if rows.apply(m.key(), m.payload(), m.partition(), m.offset()) {
                        changed += 1;
                    }
                }
                // The rows are published at most every 50 ms while records
                // keep coming (one map shared by every evaluation until the
                // next), once none came for a poll, and before the lookup
                // says it is ready.
                if changed > 0
                    && (caught_up || idle || since.elapsed() >= Duration::from_millis(50))
                {
                    rows.publish(std::mem::take(&mut changed));
                    since = Instant::now();
                }
                if caught_up {
                    let ready = &rows.lookup.ready;
                    *ready.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
                    ready.cv.notify_all();
                }
            },
        )
        .map_err(follow_err)?;
        if !lookup.wait_ready(deadline.saturating_duration_since(Instant::now())) {
            lookup.stop();
            return Err(LookupError::NotCaughtUp {
                dataset,
                topic,
                secs: catch_up.as_secs(),
                rows: lookup.rows(),
            });
        }
        tracing::info!(lookup = %lookup.dataset, rows = lookup.rows(), "lookup caught up");
        Ok(lookup)
    }
}

/// The rows a follower keeps, and what it needs to decode changes.
struct Rows {
    lookup: Arc<Lookup>,
    resolver: SchemaCache,
    /// The value subject of the followed topic: its writer schemas.
    subject: String,
    rows: HashMap<Key, Cel>,
    /// The rows as JSON, when the lookup keeps an administrative map.
    json: Option<HashMap<String, serde_json::Value>>,
}

impl Rows {
    /// Makes the rows the lookup's value; `changed` records changed them.
    fn publish(&self, changed: u64) {
        let rows = self.rows.len();
        let map = Cel::Map(Map {
            map: Arc::new(self.rows.clone()),
        });
        if let Ok(mut s) = self.lookup.snapshot.write() {
            *s = (map, rows);
        }
        if let (Some(json), Some(held)) = (&self.json, &self.lookup.map) {
            let (m, skipped) = AdminMap::from_rows(json.values());
            for problem in skipped.iter().take(5) {
                tracing::warn!(%problem, "administrative map row left out");
            }
            if let Ok(mut h) = held.write() {
                *h = Arc::new(m);
            }
        }
        let dataset = self.lookup.dataset.to_string();
        metrics::counter!("govbus_lookup_changes_total", "dataset" => dataset.clone())
            .increment(changed);
        metrics::gauge!("govbus_lookup_rows", "dataset" => dataset).set(rows as f64);
    }

    /// Applies one record; false when it changed nothing (skipped).
    fn apply(
        &mut self,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        partition: i32,
        offset: i64,
    ) -> bool {
        let key = key.and_then(|k| std::str::from_utf8(k).ok());
        let skip = |reason: &'static str, detail: String| {
            govbus_core::InternalEvent::emit(crate::events::LookupSkipped {
                partition,
                offset,
                reason,
                detail: &detail,
            });
            false
        };
        let Some(key) = key else {
            return skip("no_key", "the record has no UTF-8 key".into());
        };
        let Some(payload) = payload else {
            if let Some(j) = self.json.as_mut() {
                j.remove(key);
            }
            return self.rows.remove(&Key::from(key.to_string())).is_some(); // tombstone
        };
        let change = match govbus_schema::envelope::decode_waiting(
            payload,
            &self.resolver,
            &self.subject,
            &self.lookup.stop,
            "lookup",
        ) {
            Ok((_, c)) => c,
            Err(e) => return skip("decode", e.to_string()),
        };
        let k = Key::from(key.to_string());
        match (change.op, change.after) {
            (Op::Delete, _) | (_, None) => {
                self.rows.remove(&k);
                if let Some(j) = self.json.as_mut() {
                    j.remove(key);
                }
            }
            (_, Some(after)) => {
                if let Some(j) = self.json.as_mut() {
                    j.insert(key.to_string(), govbus_schema::json::to_json(&after));
                }
                self.rows.insert(k, govbus_schema::cel::to_cel(&after));
            }
        }
        true
    }
}

/// Every lookup a set of datasets needs, started once each.
#[derive(Debug, Default)]
pub struct Lookups {
    by_dataset: HashMap<DatasetId, Arc<Lookup>>,
}

impl Lookups {
    /// The follower of `dataset`, started (and caught up) on first use;
    /// `as_map` is the same for every call of one dataset (the publisher
    /// decides it once for all its datasets).
    pub fn get_or_follow(
        &mut self,
        kafka: &KafkaConfig,
        registry: &RegistryClient,
        dataset: &DatasetId,
        topic: String,
        catch_up: Duration,
        as_map: bool,
    ) -> Result<Arc<Lookup>, LookupError> {
        if let Some(l) = self.by_dataset.get(dataset) {
            return Ok(l.clone());
        }
        let l = Lookup::follow(kafka, registry, dataset.clone(), topic, catch_up, as_map)?;
        self.by_dataset.insert(dataset.clone(), l.clone());
        Ok(l)
    }

    /// Every follower.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Lookup>> {
        self.by_dataset.values()
    }
}

impl Drop for Lookups {
    fn drop(&mut self) {
        for l in self.by_dataset.values() {
            l.stop();
        }
    }
}
