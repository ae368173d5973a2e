//! The relay: publishes stored changes in order, in Kafka transactions,
//! and forgets them only after their transaction committed.
//!
//! Delivery reports land in a ring of atomic slots, one per change in
//! flight (the slot index is the message's opaque), so the hot path has no
//! allocation, channel or map per change: the relay thread reads the
//! outbox, sends, and advances over the acknowledged prefix of the ring.
//!
//! Exactly once across crashes: the relay writes in transactions under a
//! transactional id of its own (`govbus-relay-<agency>-<relay id>`), so a
//! relay started again fences its predecessor, whose unfinished
//! transaction is aborted, and a transaction that failed is aborted before
//! its changes are sent again: a record appended but never committed is
//! never read by the router (which reads committed records only). Every
//! record carries the `govbus.outbox` header (`<relay id>:<outbox id>`),
//! and with each trim the relay records, per partition, the broker offset
//! of the last change it has marked as sent. A relay killed between a
//! commit and its trim reads, when it starts again, each partition's
//! committed records from that offset to its end and marks the changes it
//! finds there as sent instead of publishing them twice. Before it first
//! writes to a topic it records the topic's end offsets, so that scan
//! never starts before its own first record.

use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use govbus_kafka_client::KafkaConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

mod recovery;

use crate::publisher::Wakeup;
use crate::store::{OutboxStore, PendingBatch, StoreError};

const PENDING: u8 = 0;
const DELIVERED: u8 = 1;
const FAILED: u8 = 2;

/// The header naming the outbox row a record comes from: `<relay id>:<id>`
/// (the relay id in 16 hex digits, the outbox id in decimal).
pub const OUTBOX_HEADER: &str = "govbus.outbox";

/// The (relay id, outbox id) an [`OUTBOX_HEADER`] value names, or None if
/// it is not one.
pub fn outbox_tag(value: &[u8]) -> Option<(u64, i64)> {
    let (relay, id) = std::str::from_utf8(value).ok()?.split_once(':')?;
    Some((u64::from_str_radix(relay, 16).ok()?, id.parse().ok()?))
}

/// How long a transaction stays open at most while changes keep coming
/// (a quiet load commits as soon as its changes are acknowledged).
const TXN_EVERY: Duration = Duration::from_secs(2);

/// How long an idle relay's threads wait for work before looking again
/// (new changes and rewinds wake them at once; this bounds how late a stop
/// is seen).
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// Rows marked as sent removed from the outbox at a time, when idle.
const HOUSEKEEP: usize = 10_000;

/// Reports between two wake-ups of the relay thread.
const WAKE_EVERY: usize = 4096;

/// Changes in flight at most (a power of two: slots are `seq & (RING - 1)`).
const RING: usize = 1 << 17;

/// Delivery reports, by ring slot.
struct Reports {
    slots: Box<[AtomicU8]>,
    /// Partition and offset of each delivered change, by slot.
    partitions: Box<[AtomicI32]>,
    offsets: Box<[AtomicI64]>,
    /// Sent and not yet reported.
    outstanding: AtomicUsize,
    /// The latest refusal, for the log.
    error: Mutex<Option<KafkaError>>,
    /// The relay thread, woken when every change in flight is reported, on
    /// a refusal, and every `WAKE_EVERY` reports (it also polls every 5 ms).
    relay: OnceLock<Thread>,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: usize) {
        let state = match result {
            Ok(m) => {
                self.partitions[slot].store(m.partition(), Ordering::Relaxed);
                self.offsets[slot].store(m.offset(), Ordering::Relaxed);
                DELIVERED
            }
            Err((e, _)) => {
                *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                FAILED
            }
        };
        self.slots[slot].store(state, Ordering::Release);
        let left = self.outstanding.fetch_sub(1, Ordering::AcqRel) - 1;
        // Not on every report: a wake-up per change is a context switch per
        // change on the thread serving delivery reports, which on a small
        // machine takes CPU from the broker and slows every acknowledgement.
        if left == 0 || left.is_multiple_of(WAKE_EVERY) || state == FAILED {
            if let Some(t) = self.relay.get() {
                t.unpark();
            }
        }
    }
}

/// Changes sent and not yet forgotten, oldest first.
struct InFlight {
    /// Sequence number of the oldest (its slot is `head & (RING - 1)`).
    head: usize,
    /// Outbox id and dataset (an index into `datasets`) of each.
    rows: VecDeque<(i64, u16)>,
    datasets: Vec<String>,
    /// The topic of each dataset index.
    topics: Vec<String>,
    /// Per (dataset index, partition): the highest offset acknowledged
    /// among the changes moved to `acked` and not yet recorded.
    offsets: Vec<(u16, i32, i64)>,
}

impl InFlight {
    fn new() -> Self {
        Self {
            head: 0,
            rows: VecDeque::with_capacity(RING),
            datasets: Vec::new(),
            topics: Vec::new(),
            offsets: Vec::new(),
        }
    }

    fn next_slot(&self) -> usize {
        (self.head + self.rows.len()) & (RING - 1)
    }

    /// The index of `dataset` in `datasets` (added when new).
    fn dataset(&mut self, dataset: &str, topic: &str) -> u16 {
        let i = match self.datasets.iter().position(|d| d == dataset) {
            Some(i) => i,
            None => {
                self.datasets.push(dataset.to_string());
                self.topics.push(topic.to_string());
                self.datasets.len() - 1
            }
        };
        u16::try_from(i).unwrap_or(u16::MAX)
    }

    fn acked_at(&mut self, ds: u16, partition: i32, offset: i64) {
        match self
            .offsets
            .iter_mut()
            .find(|(d, p, _)| *d == ds && *p == partition)
        {
            Some(e) => e.2 = e.2.max(offset),
            None => self.offsets.push((ds, partition, offset)),
        }
    }
}

/// The transactional id of `agency`'s relay `id`: `govbus acl plan`
/// grants each agency the prefix `govbus-relay-<agency>-`.
pub fn transactional_id(agency: &str, id: u64) -> String {
    format!("govbus-relay-{agency}-{id:016x}")
}

/// The name under which the acknowledged offset of a partition is kept.
fn offset_name(topic: &str, partition: i32) -> String {
    format!("relay.offset.{topic}.{partition}")
}

/// Moves the outbox to Kafka.
pub struct Relay {
    store: Arc<dyn OutboxStore>,
    producer: ThreadedProducer<Reports>,
    /// The producer's settings (its transactional id included), to make
    /// it again after a fatal error.
    settings: rdkafka::ClientConfig,
    /// Whether the producer's transactions are initialised (the
    /// predecessor fenced).
    initialised: AtomicBool,
    wakeup: Arc<Wakeup>,
    batch: usize,
    kafka: KafkaConfig,
    /// This store's relay id (in every record's `govbus.outbox` header).
    id: OnceLock<u64>,
    /// Topics whose starting offsets are recorded.
    baselined: Mutex<HashSet<String>>,
    /// Whether the crash recovery ran (once per relay).
    recovered: AtomicBool,
    /// How long the outbox may hold changes while none is acknowledged
    /// before the relay logs it, counts it and starts over from the lowest
    /// pending change.
    stall: Duration,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("batch", &self.batch).finish()
    }
}

/// What became of the prefix of the changes in flight.
enum Advance {
    /// Every acknowledged change at the front was moved out.
    Acked,
    /// The oldest change in flight was refused.
    Failed,
}

/// The relay could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The Kafka client.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The outbox store (its relay id).
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// The producer's delivery reports (a ring of slots).
fn reports() -> Reports {
    Reports {
        slots: (0..RING).map(|_| AtomicU8::new(PENDING)).collect(),
        partitions: (0..RING).map(|_| AtomicI32::new(-1)).collect(),
        offsets: (0..RING).map(|_| AtomicI64::new(-1)).collect(),
        outstanding: AtomicUsize::new(0),
        error: Mutex::new(None),
        relay: OnceLock::new(),
    }
}

impl Relay {
    /// A relay from `store` to the cluster, its transactional id named by
    /// the SASL user it connects as (the agency, as `govbus acl plan`
    /// grants it), or `relay`.
    pub fn new(
        kafka: &KafkaConfig,
        store: Arc<dyn OutboxStore>,
        wakeup: Arc<Wakeup>,
    ) -> Result<Self, RelayError> {
        let agency = kafka
            .security
            .as_ref()
            .and_then(|s| s.username.clone())
            .unwrap_or_else(|| "relay".to_string());
        Self::for_agency(kafka, store, wakeup, &agency)
    }

    /// A relay of `agency`'s outbox `store` to the cluster. Reads (or
    /// draws) the store's relay id: blocking I/O, not to be called on an
    /// async runtime's thread.
    pub fn for_agency(
        kafka: &KafkaConfig,
        store: Arc<dyn OutboxStore>,
        wakeup: Arc<Wakeup>,
        agency: &str,
    ) -> Result<Self, RelayError> {
        let id = recovery::load_relay_id(store.as_ref())?;
        let mut pc = kafka.producer();
        // Same partition for a key as Java clients (murmur2), so every
        // producer of a dataset agrees.
        pc.set("partitioner", "murmur2_random");
        // The relay hands over whole batches read from the outbox, so a
        // long linger adds latency without making batches larger
        // (docs/BENCHMARKS.md); `[kafka.options]` may still set it.
        kafka.set_default(&mut pc, "linger.ms", "1");
        pc.set("transactional.id", transactional_id(agency, id));
        let producer = pc.create_with_context(reports())?;
        let relay = Self {
            store,
            producer,
            settings: pc,
            initialised: AtomicBool::new(false),
            wakeup,
            batch: 10_000,
            kafka: kafka.clone(),
            id: OnceLock::new(),
            baselined: Mutex::new(HashSet::new()),
            recovered: AtomicBool::new(false),
            stall: Duration::from_secs(60),
        };
        let _ = relay.id.set(id);
        Ok(relay)
    }

    fn reports(&self) -> &Reports {
        self.producer.context()
    }

    /// Sends one change as the next in flight (waiting while librdkafka's
    /// queue is full). A change the client refuses outright is reported as
    /// failed in its slot.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        id: i64,
        ds: u16,
        topic: &str,
        key: &[u8],
        value: &[u8],
        flight: &mut InFlight,
        tag: &mut String,
    ) {
        let slot = flight.next_slot();
        let reports = self.reports();
        reports.slots[slot].store(PENDING, Ordering::Relaxed);
        reports.outstanding.fetch_add(1, Ordering::AcqRel);
        tag.truncate(17); // keep `<relay id>:`
        let _ = write!(tag, "{id}");
        let mut record = BaseRecord::with_opaque_to(topic, slot)
            .key(key)
            .payload(value)
            .headers(OwnedHeaders::new_with_capacity(1).insert(Header {
                key: OUTBOX_HEADER,
                value: Some(tag.as_bytes()),
            }));
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    *reports.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    reports.slots[slot].store(FAILED, Ordering::Release);
                    reports.outstanding.fetch_sub(1, Ordering::AcqRel);
                    break;
                }
            }
        }
        flight.rows.push_back((id, ds));
    }

    /// Sends every change of `batch`.
    fn send_batch(&self, batch: &PendingBatch, flight: &mut InFlight) {
        let ds: Vec<u16> = batch
            .names
            .iter()
            .map(|(d, t)| {
                self.baseline(t);
                flight.dataset(d, t)
            })
            .collect();
        let mut tag = format!("{:016x}:", self.id.get().copied().unwrap_or(0));
        for crate::store::Pending {
            id,
            name,
            topic,
            key,
            value,
        } in batch.iter()
        {
            let d = ds.get(usize::from(name)).copied().unwrap_or(u16::MAX);
            self.send(id, d, topic, key, value, flight, &mut tag);
        }
    }

    /// Moves the acknowledged prefix of `flight` into `acked` (ids) and
    /// `counts` (per dataset index).
    fn advance(&self, flight: &mut InFlight, acked: &mut Vec<i64>, counts: &mut [u64]) -> Advance {
        let reports = self.reports();
        while let Some(&(id, ds)) = flight.rows.front() {
            let slot = flight.head & (RING - 1);
            match reports.slots[slot].load(Ordering::Acquire) {
                DELIVERED => {
                    flight.acked_at(
                        ds,
                        reports.partitions[slot].load(Ordering::Relaxed),
                        reports.offsets[slot].load(Ordering::Relaxed),
                    );
                    flight.rows.pop_front();
                    flight.head = flight.head.wrapping_add(1);
                    acked.push(id);
                    if let Some(c) = counts.get_mut(usize::from(ds)) {
                        *c += 1;
                    }
                }
                FAILED => {
                    let error = self
                        .reports()
                        .error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take();
                    tracing::warn!(
                        error = error.map_or_else(|| "refused".to_string(), |e| e.to_string()),
                        id,
                        "broker refused change; will retry from it"
                    );
                    return Advance::Failed;
                }
                _ => break,
            }
        }
        Advance::Acked
    }

    /// Forgets every change in flight after waiting (at most `limit`) for
    /// their reports, so that no late report lands in a reused slot.
    fn drain(&self, flight: &mut InFlight, limit: Duration) {
        let until = Instant::now() + limit;
        while self.reports().outstanding.load(Ordering::Acquire) > 0 && Instant::now() < until {
            std::thread::park_timeout(Duration::from_millis(10));
        }
        flight.head = 0;
        flight.rows.clear();
    }

    /// Initialises the relay's transactions before it runs (fencing an
    /// earlier relay of this outbox) and runs its crash recovery; false:
    /// stopped first. `run` and `step` do both themselves when it was not
    /// done.
    pub fn initialise(&mut self, stop: &AtomicBool) -> bool {
        if !self.init_or_wait(stop) {
            return false;
        }
        if !self.recovered.swap(true, Ordering::AcqRel) {
            self.recover_or_wait(stop);
        }
        !stop.load(Ordering::Relaxed)
    }

    /// Initialises the producer's transactions (which fences an earlier
    /// relay of this outbox and aborts the transaction it left open),
    /// retried until done or `stop`.
    fn init_or_wait(&mut self, stop: &AtomicBool) -> bool {
        let mut tries = 0u32;
        while !self.initialised.load(Ordering::Acquire) {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            match self.producer.init_transactions(Duration::from_secs(30)) {
                Ok(()) => self.initialised.store(true, Ordering::Release),
                Err(e) => {
                    tries += 1;
                    if tries == 1 || tries.is_multiple_of(20) {
                        tracing::warn!(error = %e, "relay cannot initialise its transactions; retrying");
                    }
                    if ended(&e).fatal {
                        self.remake();
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        true
    }

    /// Begins a transaction (false: it could not, said in the log).
    fn begin(&mut self, stop: &AtomicBool) -> bool {
        if !self.init_or_wait(stop) {
            return false;
        }
        match self.producer.begin_transaction() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "relay cannot begin a transaction; retrying");
                if ended(&e).fatal {
                    self.remake();
                }
                false
            }
        }
    }

    /// Commits the open transaction, then marks its changes as sent and
    /// records their offsets; how many it committed. None: it did not
    /// commit, and was abandoned (its changes are sent again).
    fn commit(
        &mut self,
        flight: &mut InFlight,
        acked: &mut Vec<i64>,
        counts: &mut [u64],
        stop: &AtomicBool,
    ) -> Option<usize> {
        let mut tries = 0;
        loop {
            match self.producer.commit_transaction(Duration::from_secs(30)) {
                Ok(()) => break,
                Err(e) => {
                    let how = ended(&e);
                    tracing::warn!(error = %e, "relay transaction not committed");
                    tries += 1;
                    if how.retriable && !how.fatal && !how.abort && tries < 3 {
                        continue;
                    }
                    self.abandon(flight, acked, counts, how.fatal);
                    return None;
                }
            }
        }
        // Committed: every change of it is reported delivered.
        self.advance(flight, acked, counts);
        let n = acked.len();
        loop {
            match self.store.mark_sent(acked) {
                Ok(()) => break,
                // Committed and not marked: sent again, these would be
                // twice on the topic. Nothing is sent until the store takes
                // them (or, stopped, the next start finds them committed).
                Err(e) => {
                    tracing::error!(error = %e, "relay cannot trim its store; not sending again until it can");
                    if stop.load(Ordering::Relaxed) {
                        return Some(n);
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        self.save_offsets(flight);
        Self::record(flight, counts);
        acked.clear();
        Some(n)
    }

    /// Aborts the open transaction (none of its changes is ever read) and
    /// forgets what was in flight; `fatal`: the producer is made again.
    fn abandon(
        &mut self,
        flight: &mut InFlight,
        acked: &mut Vec<i64>,
        counts: &mut [u64],
        fatal: bool,
    ) {
        let mut fatal = fatal;
        if !fatal {
            if let Err(e) = self.producer.abort_transaction(Duration::from_secs(30)) {
                tracing::warn!(error = %e, "relay cannot abort its transaction; starting its producer again");
                fatal = true;
            }
        }
        if fatal {
            self.remake();
        }
        self.drain(flight, Duration::from_secs(3));
        acked.clear();
        counts.iter_mut().for_each(|c| *c = 0);
    }

    /// Makes the producer again after a fatal error (its transactions are
    /// initialised again before the next one).
    fn remake(&mut self) {
        match self.settings.create_with_context(reports()) {
            Ok(p) => {
                self.producer = p;
                let _ = self.reports().relay.set(std::thread::current());
                self.initialised.store(false, Ordering::Release);
            }
            Err(e) => tracing::error!(error = %e, "relay cannot make its producer again"),
        }
    }

    /// `govbus_relay_backlog_events` (changes accepted and not yet
    /// acknowledged by the broker), every 5 s until `stop`, on a thread of
    /// its own: a count is a query, kept off the sending loop.
    fn watch_backlog(&self, stop: Arc<AtomicBool>) {
        let store = self.store.clone();
        let spawned = std::thread::Builder::new()
            .name("relay-backlog".into())
            .spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if Instant::now() >= next {
                        match store.backlog() {
                            Ok(n) => metrics::gauge!("govbus_relay_backlog_events").set(n as f64),
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot count the relay's backlog")
                            }
                        }
                        next = Instant::now() + Duration::from_secs(5);
                    }
                    // Stops within a second; an idle agent's threads wake
                    // as seldom as they can.
                    std::thread::sleep(
                        next.saturating_duration_since(Instant::now())
                            .min(Duration::from_secs(1)),
                    );
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the relay's backlog gauge");
        }
    }

    fn record(flight: &InFlight, counts: &mut [u64]) {
        for (ds, n) in flight.datasets.iter().zip(counts.iter_mut()) {
            if *n > 0 {
                metrics::counter!("govbus_relay_published_total", "dataset" => ds.clone())
                    .increment(*n);
                *n = 0;
            }
        }
    }

    /// Publishes one batch in one transaction and waits for it; returns
    /// how many changes were committed (0 as well when the transaction
    /// failed: its changes stay in the outbox).
    pub fn step(&mut self, stop: &AtomicBool) -> Result<usize, StoreError> {
        let _ = self.reports().relay.set(std::thread::current());
        self.relay_id()?;
        if !self.init_or_wait(stop) {
            return Ok(0);
        }
        if !self.recovered.swap(true, Ordering::AcqRel) {
            self.recover_or_wait(stop);
        }
        let mut rows = PendingBatch::default();
        if self
            .store
            .pending_into(0, self.batch.min(RING), &mut rows)?
            == 0
        {
            return Ok(0);
        }
        if !self.begin(stop) {
            return Ok(0);
        }
        let mut flight = InFlight::new();
        self.send_batch(&rows, &mut flight);
        let mut acked = Vec::with_capacity(rows.len());
        let mut counts = vec![0u64; flight.datasets.len()];
        let done = self.commit(&mut flight, &mut acked, &mut counts, stop);
        self.drain(&mut flight, Duration::from_secs(3));
        if done.is_none() && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(done.unwrap_or(0))
    }

    /// Sets how long the outbox may hold changes with none acknowledged
    /// before the relay reports a stall and starts over (default 60 s).
    pub fn stall_after(mut self, limit: Duration) -> Self {
        self.stall = limit;
        self
    }

    /// Runs until `stop`, waking on new changes. Pipelined: a reader thread
    /// reads the next batches from the store while this thread sends (up to
    /// `RING` changes in flight) into the open transaction, committed when
    /// the changes sent are acknowledged and no more are waiting, every
    /// 100 ms under load, or when the window is full; the store is trimmed
    /// after each commit.
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        metrics::counter!("govbus_relay_stalls_total").increment(0);
        self.watch_backlog(stop.clone());
        let _ = self.reports().relay.set(std::thread::current());
        while let Err(e) = self.relay_id() {
            tracing::error!(error = %e, "relay cannot read its id from the store; retrying");
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        if !self.init_or_wait(&stop) {
            return;
        }
        if !self.recovered.swap(true, Ordering::AcqRel) {
            self.recover_or_wait(&stop);
        }
        let window = RING - self.batch;
        // Bumped to make the reader start again from the lowest pending id
        // (after a refused change, or to pick up changes that committed out
        // of id order); batches read before carry the old value and are dropped.
        let epoch = Arc::new(AtomicU64::new(0));
        let reader_stop = Arc::new(AtomicBool::new(false));
        let (tx, batches) = sync_channel(2);
        // Emptied batches go back to the reader, so buffers are reused.
        let (give_back, spare) = sync_channel::<PendingBatch>(4);
        let reader = {
            let (store, wakeup, epoch, stop, batch) = (
                self.store.clone(),
                self.wakeup.clone(),
                epoch.clone(),
                reader_stop.clone(),
                self.batch,
            );
            std::thread::Builder::new()
                .name("relay-reader".into())
                .spawn(move || {
                    read_ahead(store.as_ref(), &wakeup, &epoch, &stop, batch, &tx, &spare)
                })
        };
        let mut flight = InFlight::new();
        let mut since_reset = Instant::now();
        let mut stop_at: Option<Instant> = None;
        // Acknowledged ids of the open transaction: removed from the store
        // once it commits (one store transaction, an fsync, per commit).
        let mut acked: Vec<i64> = Vec::new();
        let mut counts: Vec<u64> = Vec::new();
        let mut in_txn = false;
        let mut txn_at = Instant::now();
        // Whether the last batch read was full: more are waiting, so the
        // transaction stays open for them (until `TXN_EVERY`).
        let mut more = false;
        // Rows marked as sent may wait in the store (true at start: an
        // earlier run may have left some).
        let mut untrimmed = true;
        let mut stall = govbus_core::stall::StallWatch::new(self.stall);
        // The outbox's backlog, read at most once a second (a query).
        let mut backlog: (Instant, Option<i64>) = (Instant::now(), None);
        loop {
            if stop.load(Ordering::Relaxed) {
                let d = *stop_at.get_or_insert_with(|| Instant::now() + Duration::from_secs(3));
                if (flight.rows.is_empty() && !in_txn) || Instant::now() > d {
                    break;
                }
            }
            // 1. Send the next batch read, unless stopping, the window is
            //    full, or waiting for the flight to land before a rewind.
            let mut sent = 0;
            let rewinding =
                !self.store.commits_in_id_order() && since_reset.elapsed() > Duration::from_secs(1);
            let idle = flight.rows.is_empty() && acked.is_empty();
            if stop_at.is_none() && !rewinding && flight.rows.len() < window {
                // Idle, the reader's next batch wakes this thread: the
                // wait only bounds how late a stop is seen.
                let wait = if idle { IDLE_WAIT } else { Duration::ZERO };
                match batches.recv_timeout(wait) {
                    Ok((e, Ok(rows))) if e == epoch.load(Ordering::Acquire) => {
                        if !in_txn {
                            if !self.begin(&stop) {
                                // Not sent: read again from the lowest pending.
                                let _ = give_back.try_send(rows);
                                rewind(&epoch, &self.wakeup);
                                std::thread::sleep(Duration::from_millis(500));
                                continue;
                            }
                            in_txn = true;
                            txn_at = Instant::now();
                        }
                        self.send_batch(&rows, &mut flight);
                        sent = rows.len();
                        more = sent >= self.batch;
                        let _ = give_back.try_send(rows);
                    }
                    Ok((_, Ok(rows))) => {
                        let _ = give_back.try_send(rows); // read before a rewind
                    }
                    Ok((_, Err(e))) => {
                        tracing::error!(error = %e, "relay cannot read its store; retrying");
                    }
                    // The reader has nothing more for now.
                    Err(RecvTimeoutError::Timeout) => more = false,
                    Err(RecvTimeoutError::Disconnected) => {
                        tracing::error!("the relay's reader stopped");
                        break;
                    }
                }
            }
            counts.resize(flight.datasets.len(), 0);
            // 2. Wait for reports when there is nothing else to do.
            if sent == 0 && !flight.rows.is_empty() {
                std::thread::park_timeout(Duration::from_millis(5));
            }
            // 3. Forget the acknowledged prefix.
            let before = acked.len();
            let failed = matches!(
                self.advance(&mut flight, &mut acked, &mut counts),
                Advance::Failed
            );
            let progressed = acked.len() - before;
            if progressed > 0 {
                backlog.1 = None;
            } else if backlog.0.elapsed() >= Duration::from_secs(1) {
                backlog = (Instant::now(), self.store.backlog().ok());
            }
            if let Some(s) = stall.observe(Instant::now(), progressed, backlog.1) {
                govbus_core::InternalEvent::emit(crate::events::RelayStalled {
                    idle_secs: s.idle.as_secs(),
                    backlog: s.backlog,
                    in_flight: flight.rows.len(),
                });
                // Abandoned: its changes are sent again from the lowest
                // pending one, in a new transaction.
                self.abandon(&mut flight, &mut acked, &mut counts, false);
                in_txn = false;
                rewind(&epoch, &self.wakeup);
                since_reset = Instant::now();
                continue;
            }
            if failed {
                // Refused: the transaction is aborted (nothing of it is
                // ever read) and everything from the lowest pending change
                // on is sent again.
                self.abandon(&mut flight, &mut acked, &mut counts, false);
                in_txn = false;
                rewind(&epoch, &self.wakeup);
                since_reset = Instant::now();
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            // 4. Commit: the changes sent are acknowledged and the last
            //    batch read was not full (a quiet load waits for nothing),
            //    or every
            //    `TXN_EVERY` under load, or the window is full, or before a rewind or
            //    a stop.
            let landed = self.reports().outstanding.load(Ordering::Acquire) == 0;
            if in_txn
                && ((sent == 0 && landed && !more)
                    || flight.rows.len() >= window
                    || txn_at.elapsed() > TXN_EVERY
                    || rewinding
                    || stop_at.is_some())
            {
                in_txn = false;
                untrimmed = true;
                if self
                    .commit(&mut flight, &mut acked, &mut counts, &stop)
                    .is_none()
                {
                    rewind(&epoch, &self.wakeup);
                    since_reset = Instant::now();
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            }
            if flight.rows.is_empty() && acked.is_empty() && !in_txn {
                flight.head = 0;
                if rewinding {
                    rewind(&epoch, &self.wakeup);
                    since_reset = Instant::now();
                }
                if sent == 0 && stop_at.is_none() && untrimmed {
                    // Idle: remove rows already marked as sent, a chunk at
                    // a time, until a chunk comes back short.
                    match self.store.housekeep(HOUSEKEEP) {
                        Ok(n) => untrimmed = n >= HOUSEKEEP,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot remove sent changes from the outbox")
                        }
                    }
                }
            }
        }
        if in_txn {
            self.commit(&mut flight, &mut acked, &mut counts, &stop);
        }
        reader_stop.store(true, Ordering::Relaxed);
        self.wakeup.notify();
        drop(batches);
        if let Ok(r) = reader {
            let _ = r.join();
        }
        let _ = self.producer.flush(Duration::from_secs(2));
    }
}

/// What a transaction error asks for.
struct Ended {
    /// The producer is unusable: make it again.
    fatal: bool,
    /// The transaction must be aborted.
    abort: bool,
    /// The call may be made again.
    retriable: bool,
}

fn ended(e: &KafkaError) -> Ended {
    match e {
        KafkaError::Transaction(r) => Ended {
            fatal: r.is_fatal(),
            abort: r.txn_requires_abort(),
            retriable: r.is_retriable(),
        },
        _ => Ended {
            fatal: false,
            abort: true,
            retriable: false,
        },
    }
}

type Batch = (u64, Result<PendingBatch, StoreError>);

/// Makes the reader start again from the lowest pending change: batches it
/// read before carry the old epoch and are dropped.
fn rewind(epoch: &AtomicU64, wakeup: &Wakeup) {
    epoch.fetch_add(1, Ordering::AcqRel);
    wakeup.notify();
}

/// The relay's reader: reads the outbox ahead of the sender, a batch at a
/// time, starting again from the lowest pending id whenever `epoch` moves.
fn read_ahead(
    store: &dyn OutboxStore,
    wakeup: &Wakeup,
    epoch: &AtomicU64,
    stop: &AtomicBool,
    batch: usize,
    tx: &SyncSender<Batch>,
    spare: &Receiver<PendingBatch>,
) {
    let mut after = 0i64;
    let mut mine = epoch.load(Ordering::Acquire);
    while !stop.load(Ordering::Relaxed) {
        let e = epoch.load(Ordering::Acquire);
        if e != mine {
            mine = e;
            after = 0;
        }
        let mut rows = spare.try_recv().unwrap_or_default();
        match store.pending_into(after, batch, &mut rows) {
            Ok(0) => wakeup.wait(IDLE_WAIT),
            Ok(_) => {
                after = rows.last_id().unwrap_or(after);
                if tx.send((mine, Ok(rows))).is_err() {
                    return;
                }
            }
            Err(e) => {
                if tx.send((mine, Err(e))).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::outbox_tag;

    /// The tag the relay writes parses back; anything else is not a tag.
    #[test]
    fn outbox_tags_parse_back() {
        let relay: u64 = 0x00ab_cdef_0123_4567;
        let tag = format!("{relay:016x}:{}", 90_210);
        assert_eq!(outbox_tag(tag.as_bytes()), Some((relay, 90_210)));
        for bad in [
            &b"0123"[..],
            b"xyz:1",
            b"00000000000000ab:",
            b"ab:x",
            b"\xff:1",
        ] {
            assert_eq!(outbox_tag(bad), None, "{bad:?}");
        }
    }
}
