//! Consumer lag, measured beside the consumer, never on it.

use std::collections::{BTreeMap, HashMap};

use crate::KafkaConfig;

/// Consumer lag, measured off the consuming thread and off the consumer's
/// connection: the agent hands over its positions (a local call) with
/// [`LagWatch::update`], with the high watermark each partition's last
/// fetch response carried (librdkafka keeps it: no request), and a thread
/// of the watch asks for the high watermarks the consumer has not seen yet
/// on a client of its own, then reports, per topic, the records
/// not yet consumed (high watermark − position). Until a consumer has
/// consumed a record of a partition, the client knows no position for it:
/// the partition counts from where the consumer started on it (its
/// committed or stored offset, handed over with [`LagWatch::starts_at`]),
/// or else from its low watermark. Counted from the low watermark, a router
/// restarted at the end of a quiet topic read as a backlog of the whole
/// topic that it never consumed, a stall every `stall_secs`.
///
/// Why not ask on the consumer itself: its ListOffsets requests queue behind
/// its fetch on the same connection, and a timed-out request makes
/// librdkafka close that connection (`socket.max.fails`), fetch included.
/// With a broker slow to answer a fetch (nisshi's SQLite storage after a
/// restart takes seconds), a short-timeout lag query every 2 s stopped a
/// router from ever receiving a record (docs/BROKERS.md). The same holds for
/// any broker slow to answer a fetch.
pub struct LagWatch {
    /// The positions last handed over, and when.
    positions: std::sync::Arc<std::sync::Mutex<(std::time::Instant, Vec<Position>)>>,
    /// Where the consumer started on each partition, for those it has
    /// consumed nothing from yet.
    starts: std::sync::Mutex<HashMap<(String, i32), i64>>,
    /// The last complete measurement: when, and the records past the
    /// positions over every topic.
    total: std::sync::Arc<std::sync::Mutex<Option<(std::time::Instant, i64)>>>,
    every: std::time::Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// A partition's position as handed over, and the high watermark its
/// consumer last fetched (None: none yet, ask the broker).
type Position = (String, i32, rdkafka::Offset, Option<i64>);

/// The high watermark of `topic`/`partition` in `consumer`'s last fetch
/// response, as librdkafka keeps it (`rd_kafka_get_watermark_offsets`: a
/// local read, no request); None before the first fetch of it.
fn fetched_high<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    use rdkafka::consumer::Consumer;
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the consumer's handle lives for the call; librdkafka reads
    // `topic` (NUL-terminated, alive for the call) and writes only the two
    // offsets, under its own lock.
    #[allow(unsafe_code)]
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

impl std::fmt::Debug for LagWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LagWatch").finish_non_exhaustive()
    }
}

impl LagWatch {
    /// Starts the watch: every `every`, `report(topic, lag)` for each topic
    /// of the last positions handed over.
    pub fn start(
        kafka: &KafkaConfig,
        every: std::time::Duration,
        report: impl Fn(&str, i64) + Send + 'static,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use std::sync::atomic::Ordering;
        let client: BaseConsumer = kafka.client().create()?;
        let positions = std::sync::Arc::new(std::sync::Mutex::new((
            std::time::Instant::now(),
            Vec::new(),
        )));
        let total = std::sync::Arc::new(std::sync::Mutex::new(None));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s, tot) = (positions.clone(), stop.clone(), total.clone());
        let handle = std::thread::Builder::new()
            .name("govbus-lag".into())
            .spawn(move || {
                let mut next = std::time::Instant::now() + every;
                while !s.load(Ordering::Relaxed) {
                    // Asleep until the next measurement (woken early only
                    // to stop: `Drop` unparks it).
                    let now = std::time::Instant::now();
                    if now < next {
                        std::thread::park_timeout(next - now);
                        continue;
                    }
                    next = std::time::Instant::now() + every;
                    let (handed, now): (std::time::Instant, Vec<Position>) = p
                        .lock()
                        .map(|v| v.clone())
                        .unwrap_or_else(|_| (std::time::Instant::now(), Vec::new()));
                    // The consumer's fetched watermarks are as old as the
                    // hand-over: a loop that stopped handing over (stuck
                    // applying, say) would freeze its lag at the moment it
                    // stopped. Past one period they are asked for.
                    let fresh = handed.elapsed() <= every;
                    // A topic with a partition whose watermarks could not be
                    // read is not reported this round (a partial sum would
                    // read as a lag lower than the real one); the gauge keeps
                    // its last value and the log says why.
                    let mut lag: BTreeMap<&str, Option<i64>> = BTreeMap::new();
                    for (topic, partition, offset, fetched) in &now {
                        let sum = lag.entry(topic).or_insert(Some(0));
                        let marks = match (fetched, offset) {
                            (Some(high), rdkafka::Offset::Offset(_)) if fresh => Ok((0, *high)),
                            _ => client.fetch_watermarks(
                                topic,
                                *partition,
                                std::time::Duration::from_secs(5),
                            ),
                        };
                        match marks {
                            Ok((low, high)) => {
                                let pos = match offset {
                                    rdkafka::Offset::Offset(o) => *o,
                                    _ => low,
                                };
                                if let Some(n) = sum.as_mut() {
                                    *n += (high - pos).max(0);
                                }
                            }
                            Err(e) => {
                                tracing::warn!(topic, partition, error = %e, "consumer lag not measured: cannot read the partition's watermarks");
                                *sum = None;
                            }
                        }
                    }
                    let all: Option<i64> = lag.values().copied().sum();
                    for (topic, n) in lag {
                        if let Some(n) = n {
                            report(topic, n);
                        }
                    }
                    if let (Some(all), Ok(mut t)) = (all, tot.lock()) {
                        *t = Some((std::time::Instant::now(), all));
                    }
                }
            })
            .map_err(|e| rdkafka::error::KafkaError::ClientCreation(e.to_string()))?;
        Ok(Self {
            positions,
            starts: std::sync::Mutex::new(HashMap::new()),
            total,
            every,
            stop,
            handle: Some(handle),
        })
    }

    /// The records past the positions handed over, over every topic, as
    /// last measured; None when no measurement is recent (three periods).
    pub fn backlog(&self) -> Option<i64> {
        let t = self.total.lock().ok()?;
        let (at, n) = (*t)?;
        (at.elapsed() <= self.every * 3).then_some(n)
    }

    /// Notes where a consumer starts on partitions (their committed or
    /// stored offsets; other offsets in `tpl` are left out): the position
    /// of a partition it has consumed nothing from yet.
    pub fn starts_at(&self, tpl: &rdkafka::TopicPartitionList) {
        if let Ok(mut s) = self.starts.lock() {
            for e in tpl.elements() {
                if let rdkafka::Offset::Offset(o) = e.offset() {
                    s.insert((e.topic().to_string(), e.partition()), o);
                }
            }
        }
    }

    /// Hands over `consumer`'s current positions (no request to the broker).
    pub fn update<C: rdkafka::consumer::ConsumerContext>(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<C>,
    ) {
        use rdkafka::consumer::Consumer;
        let Ok(tpl) = consumer.position() else {
            return;
        };
        let starts = self.starts.lock().map(|s| s.clone()).unwrap_or_default();
        let now = tpl
            .elements()
            .iter()
            .map(|e| {
                let (t, p) = (e.topic().to_string(), e.partition());
                let offset = match e.offset() {
                    rdkafka::Offset::Offset(o) => rdkafka::Offset::Offset(o),
                    other => starts
                        .get(&(t.clone(), p))
                        .map_or(other, |o| rdkafka::Offset::Offset(*o)),
                };
                let fetched = fetched_high(consumer, &t, p);
                (t, p, offset, fetched)
            })
            .collect();
        if let Ok(mut p) = self.positions.lock() {
            *p = (std::time::Instant::now(), now);
        }
    }
}

impl Drop for LagWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}
