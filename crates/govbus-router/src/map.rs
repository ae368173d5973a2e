//! The administrative map that hierarchy filters (`in_unit`, `province_of`)
//! ask: `moha.admin_units`, followed live from its central topic (every
//! partition from the beginning, no group). Each batch of changes rebuilds
//! the map ([`AdminMap::from_rows`]) and the list of days on which it
//! changes; the router reads it as of today and starts a new session when
//! that changes ([`MapWatch::epoch`]), so every view follows the map at its
//! effective date.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use govbus_core::admin_map::{epoch_in, AdminMap, Hierarchy};
use govbus_kafka_client::tail::{Tail, TailError, Tailed};
use govbus_kafka_client::KafkaConfig;
use govbus_schema::{RegistryClient, SchemaCache};
use rdkafka::message::Message;

/// The map as last rebuilt.
#[derive(Debug, Default)]
struct Current {
    map: Arc<AdminMap>,
    /// Every day on which a version begins or ends, in order.
    days: Vec<NaiveDate>,
    rows: usize,
    /// A digest of the rows: a correction or a unit added with a past date
    /// changes it without changing the epoch.
    digest: String,
    /// Rebuilds so far (a new session follows each).
    generation: u64,
}

/// The map as one session reads it.
#[derive(Debug, Clone, Default)]
pub struct MapView {
    /// The epoch as of today (None: no map yet).
    pub epoch: Option<NaiveDate>,
    /// The map as of that epoch.
    pub hierarchy: Hierarchy,
    /// The rows' digest.
    pub digest: String,
    /// Which rebuild this is.
    pub generation: u64,
}

/// A live copy of the administrative map.
#[derive(Debug)]
pub struct MapWatch {
    topic: String,
    current: RwLock<Current>,
    caught_up: (Mutex<bool>, Condvar),
    stop: Arc<AtomicBool>,
}

/// Today in Vietnam (UTC+7, no daylight saving): the day the map is read as of.
pub fn today() -> NaiveDate {
    day_of_ms(govbus_core::now_ms())
}

pub use govbus_core::admin_map::day_of_ms;

impl MapWatch {
    /// Starts following `topic` (the map dataset's central topic, which
    /// must exist) and waits up to `catch_up` for its end to be read once;
    /// a map still loading is used as far as it has come.
    pub fn follow(
        kafka: &KafkaConfig,
        registry: &RegistryClient,
        topic: &str,
        catch_up: Duration,
    ) -> Result<Arc<Self>, TailError> {
        let tail = Tail::open(
            kafka.consumer(&format!("govbus-map-{}", uuid::Uuid::new_v4())),
            topic,
            catch_up,
        )?
        .settle_at(kafka.follow_wait_ms);
        let watch = Arc::new(Self {
            topic: topic.to_string(),
            current: RwLock::default(),
            caught_up: (Mutex::new(false), Condvar::new()),
            stop: Arc::new(AtomicBool::new(false)),
        });
        let w = watch.clone();
        let resolver = SchemaCache::new(registry.clone());
        let subject = govbus_core::topics::value_subject(topic);
        let mut rows: HashMap<String, serde_json::Value> = HashMap::new();
        let (mut changed, mut since) = (false, Instant::now());
        tail.spawn(
            "router-map",
            watch.stop.clone(),
            Duration::from_millis(100),
            move |t| {
                let caught_up = matches!(t, Tailed::CaughtUp);
                // Rebuilt at most every 200 ms while records keep coming,
                // and once none came for a poll.
                let idle = matches!(t, Tailed::Idle);
                if let Tailed::Record(m) = t {
                    changed |= apply(
                        &mut rows,
                        &resolver,
                        &subject,
                        m.key(),
                        m.payload(),
                        &w.stop,
                    );
                }
                if changed && (caught_up || idle || since.elapsed() >= Duration::from_millis(200)) {
                    w.rebuild(&rows);
                    changed = false;
                    since = Instant::now();
                }
                if caught_up {
                    *w.caught_up.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
                    w.caught_up.1.notify_all();
                }
            },
        )?;
        let g = watch.caught_up.0.lock().unwrap_or_else(|p| p.into_inner());
        let (g, _) = watch
            .caught_up
            .1
            .wait_timeout_while(g, catch_up, |done| !*done)
            .unwrap_or_else(|p| p.into_inner());
        if !*g {
            tracing::warn!(
                topic,
                rows = watch.rows(),
                "the administrative map is not read to its end yet; routing with what has come"
            );
        }
        drop(g);
        Ok(watch)
    }

    fn rebuild(&self, rows: &HashMap<String, serde_json::Value>) {
        let (map, skipped) = AdminMap::from_rows(rows.values());
        for s in skipped.iter().take(5) {
            tracing::warn!(topic = self.topic, problem = %s, "administrative map row left out");
        }
        let days = map.change_days();
        let n = rows.len();
        let digest = {
            use std::hash::{Hash, Hasher};
            let mut keys: Vec<(&String, String)> =
                rows.iter().map(|(k, v)| (k, v.to_string())).collect();
            keys.sort();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            keys.hash(&mut h);
            format!("{:016x}", h.finish())
        };
        if let Ok(mut c) = self.current.write() {
            let generation = c.generation + 1;
            *c = Current {
                map: Arc::new(map),
                days,
                rows: n,
                digest,
                generation,
            };
        }
        metrics::gauge!("govbus_router_map_units").set(n as f64);
    }

    /// Units (codes) held.
    pub fn rows(&self) -> usize {
        self.current.read().map(|c| c.rows).unwrap_or(0)
    }

    /// The map's epoch on `day`: the last day on or before it on which the
    /// map changed (None: no map yet). Views that ask the hierarchy are
    /// brought in step again when it changes.
    pub fn epoch(&self, day: NaiveDate) -> Option<NaiveDate> {
        let c = self.current.read().ok()?;
        epoch_in(&c.days, day)
    }

    /// Which rebuild the map is at.
    pub fn generation(&self) -> u64 {
        self.current.read().map(|c| c.generation).unwrap_or(0)
    }

    /// The map as of `today`, read at one instant: its epoch, the hierarchy
    /// as of that epoch, the rows' digest and the rebuild it comes from.
    pub fn view(&self, today: NaiveDate) -> MapView {
        let Ok(c) = self.current.read() else {
            return MapView::default();
        };
        let epoch = epoch_in(&c.days, today);
        MapView {
            epoch,
            hierarchy: epoch.map_or_else(Hierarchy::empty, |d| Hierarchy::new(&c.map, d)),
            digest: c.digest.clone(),
            generation: c.generation,
        }
    }

    /// The hierarchy as of `epoch` (an empty one for None).
    pub fn hierarchy(&self, epoch: Option<NaiveDate>) -> Hierarchy {
        match (epoch, self.current.read()) {
            (Some(day), Ok(c)) => Hierarchy::new(&c.map, day),
            _ => Hierarchy::empty(),
        }
    }

    /// The day `unit` ceased to exist (its last meaning ended), if it has
    /// by `day`.
    pub fn ended(&self, unit: &str, day: NaiveDate) -> Option<NaiveDate> {
        let c = self.current.read().ok()?;
        let last = c.map.versions(unit).last()?;
        last.valid_to.filter(|t| *t <= day)
    }

    /// Stops following (within a poll interval).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Applies one record of the map's topic to `rows`; true when it changed
/// them. A record that cannot be read is logged and left out; while the
/// registry is away it is retried, never skipped.
fn apply(
    rows: &mut HashMap<String, serde_json::Value>,
    resolver: &SchemaCache,
    subject: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    stop: &AtomicBool,
) -> bool {
    let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
        tracing::warn!("administrative map record with no UTF-8 key left out");
        return false;
    };
    let Some(payload) = payload else {
        return rows.remove(key).is_some();
    };
    let change =
        match govbus_schema::envelope::decode_waiting(payload, resolver, subject, stop, "map") {
            Ok((_, c)) => c,
            Err(e) => {
                tracing::warn!(key, error = %e, "administrative map record left out");
                return false;
            }
        };
    match change.after {
        Some(after) => {
            rows.insert(key.to_string(), govbus_schema::json::to_json(&after));
        }
        None => {
            rows.remove(key);
        }
    }
    true
}

impl Drop for MapWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_is_vietnams() {
        // 2025-06-30 17:00 UTC is 1 July, 00:00 in Hanoi.
        let ms = chrono::NaiveDate::from_ymd_opt(2025, 6, 30)
            .unwrap()
            .and_hms_opt(17, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis();
        assert_eq!(day_of_ms(ms), govbus_core::admin_map::reform_day());
        assert_eq!(day_of_ms(ms - 1).to_string(), "2025-06-30");
    }
}
