//! The committer: the thread that owns the router's transactions. The
//! routing thread hands it a batch in chunks ([`Routed`], through a
//! [`Pipe`]); the committer sends each chunk into the open transaction and,
//! with the batch's last chunk, adds the consumed offsets and commits. A
//! partition is given up only once nothing is in flight ([`InFlight`],
//! [`RouterContext`]).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;

pub use govbus_core::dead::DeadLetter;

use super::{CommitterError, RouterError};
use crate::events::TransactionEnded;
use crate::views::View;
use govbus_core::InternalEvent;

/// Which router transaction wrote a record, for audit (`govbus.txn`):
/// `<transactional id>/<session start, ms>/<transaction number>`.
pub(crate) struct Lineage {
    session: String,
    n: u64,
    label: String,
}

impl Lineage {
    pub(crate) fn new(tid: &str) -> Self {
        Self {
            session: format!("{tid}/{}", govbus_core::now_ms()),
            n: 0,
            label: String::new(),
        }
    }

    /// The label of the session's next transaction.
    pub(crate) fn next(&mut self) -> &str {
        self.n += 1;
        self.label.clear();
        use std::fmt::Write;
        let _ = write!(self.label, "{}/{}", self.session, self.n);
        &self.label
    }
}

/// The producer of one transaction and its `govbus.txn` label (None: no
/// header).
pub(crate) struct Txn<'a> {
    pub(crate) producer: &'a ThreadedProducer<DefaultProducerContext>,
    pub(crate) label: Option<&'a str>,
}

impl std::ops::Deref for Txn<'_> {
    type Target = ThreadedProducer<DefaultProducerContext>;

    fn deref(&self) -> &Self::Target {
        self.producer
    }
}

/// `record` with the `govbus.txn` header when the transaction has a label.
pub(crate) fn with_txn<'a>(
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
pub(crate) struct Routed<'l> {
    bytes: Vec<u8>,
    pub(crate) records: Vec<Record<'l>>,
    pub(crate) offsets: Option<TopicPartitionList>,
    pub(crate) meta: Option<ConsumerGroupMetadata>,
    /// The transaction's `govbus.txn` label.
    pub(crate) label: Option<String>,
    pub(crate) changes: usize,
}

/// A record of a [`Routed`] batch; key and value index its buffer.
pub(crate) struct Record<'l> {
    pub(crate) topic: &'l str,
    key: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
    /// Set on a dead letter: why, and where the record came from.
    pub(crate) dead: Option<Box<DeadLetter>>,
}

impl<'l> Routed<'l> {
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.records.clear();
        self.offsets = None;
        self.meta = None;
        self.label = None;
        self.changes = 0;
    }

    pub(crate) fn push(
        &mut self,
        topic: &'l str,
        key: &[u8],
        value: &[u8],
        dead: Option<Box<DeadLetter>>,
    ) {
        let k = self.bytes.len();
        self.bytes.extend_from_slice(key);
        let v = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.records.push(Record {
            topic,
            key: k..v,
            value: v..self.bytes.len(),
            dead,
        });
    }

    /// Each record: its topic, key, value and, for a dead letter, why.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &[u8], &[u8], Option<&DeadLetter>)> {
        self.records.iter().map(|r| {
            (
                r.topic,
                &self.bytes[r.key.clone()],
                &self.bytes[r.value.clone()],
                r.dead.as_deref(),
            )
        })
    }

    /// Adds one routed record for `v`'s topic and counts it.
    pub(crate) fn emit(
        &mut self,
        v: &'l View,
        decision: crate::Decision,
        key: &[u8],
        value: &[u8],
    ) {
        if let Some(c) = v.counters.routed(decision) {
            c.increment(1);
        }
        self.push(&v.topic, key, value, None);
    }
}

/// Routed records handed to the committer at a time: enough that the
/// hand-over costs little per record, few enough that the producer sends
/// while the rest of the batch is routed.
pub(crate) const CHUNK: usize = 1000;

/// The committer thread's transaction state.
#[derive(Default)]
pub(crate) struct Committer {
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
    pub(crate) fn write(
        &mut self,
        producer: &ThreadedProducer<DefaultProducerContext>,
        job: &mut Routed<'_>,
    ) -> Option<Result<(), RouterError>> {
        let commit = job.offsets.is_some();
        if self.dead && self.failed.is_none() {
            // Only chunks the routing thread sent before it saw the failure.
            return commit.then(|| Err(RouterError::Committer(CommitterError::EarlierFailed)));
        }
        if self.failed.is_none() {
            if let Err(e) = self.send(producer, job) {
                self.abort(producer, TransactionEnded::Aborted { error: &e });
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
                TransactionEnded::Committed {
                    changes: job.changes,
                    commit_ms: self
                        .started
                        .take()
                        .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3),
                }
                .emit();
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
        for (topic, key, value, dead) in job.iter() {
            let record = BaseRecord::to(topic).key(key).payload(value);
            let record = match dead {
                // Dead letters carry their reason, not the label.
                Some(d) => record.headers(govbus_kafka_client::dead_letter_headers(d)),
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

    fn abort(
        &mut self,
        producer: &ThreadedProducer<DefaultProducerContext>,
        ended: TransactionEnded<'_>,
    ) {
        ended.emit();
        if let Err(e) = producer.abort_transaction(Duration::from_secs(30)) {
            tracing::warn!(error = %e, "abort failed; the transaction times out on the broker");
        }
        self.open = false;
        self.started = None;
    }

    /// Aborts a transaction left open by a batch that was never finished.
    pub(crate) fn abandon(&mut self, producer: &ThreadedProducer<DefaultProducerContext>) {
        if self.open {
            self.abort(producer, TransactionEnded::Abandoned);
        }
    }
}

/// Delivers what the transaction holds, then adds `offsets` for `meta`'s
/// group and commits.
pub(crate) fn commit(
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
pub(crate) struct InFlight {
    busy: std::sync::Mutex<usize>,
    idle: std::sync::Condvar,
}

impl InFlight {
    pub(crate) fn start(&self) {
        *self.busy.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    pub(crate) fn finish(&self) {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        *busy = busy.saturating_sub(1);
        self.idle.notify_all();
    }

    /// Waits until no batch is in flight or `timeout` passes; false on
    /// timeout.
    pub(crate) fn wait_idle(&self, timeout: Duration) -> bool {
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
pub(crate) struct RouterContext {
    pub(crate) in_flight: Arc<InFlight>,
    /// Rebalances seen, for [`govbus_kafka_client::poll_batch_fenced`]: a
    /// record polled before one is not routed.
    pub(crate) rebalances: std::sync::atomic::AtomicU64,
}

impl rdkafka::ClientContext for RouterContext {}

impl rdkafka::consumer::ConsumerContext for RouterContext {
    fn pre_rebalance(
        &self,
        _consumer: &BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        self.rebalances
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
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
pub(crate) type Done<'l> = (Option<Result<(), RouterError>>, Routed<'l>);

/// The routing thread's end of the pipeline to the committer thread.
pub(crate) struct Pipe<'s, 'l> {
    /// None once the session ends (the committer's loop then ends).
    pub(crate) jobs: Option<std::sync::mpsc::Sender<Routed<'l>>>,
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
    pub(crate) fn new(
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
        RouterError::Committer(CommitterError::Ended)
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
    pub(crate) fn buffer(&mut self) -> Routed<'l> {
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
    pub(crate) fn chunk(&mut self, out: &mut Routed<'l>) -> Result<(), RouterError> {
        let mut next = self.buffer();
        next.label = out.label.clone();
        let full = std::mem::replace(out, next);
        self.send(full)
    }

    /// Hands over a batch's last chunk, with its offsets: the committer
    /// commits the batch (none may be outstanding).
    pub(crate) fn commit(&mut self, last: Routed<'l>) -> Result<(), RouterError> {
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
    pub(crate) fn wait(&mut self) -> Result<(), RouterError> {
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
pub(crate) fn flush_deliveries(
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

pub(crate) fn send<'a>(
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
        let (topic, key, value, _) = r.iter().nth(i).expect("a record");
        (topic, key, value)
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
            Some(Box::new(DeadLetter {
                reason: "decode",
                error: "bad".into(),
                topic: "gov.bca.residents.v1".into(),
                partition: 0,
                offset: 3,
                original: vec![],
            })),
        );
        assert_eq!(record(&r, 0), ("sub.p01", &b"k1"[..], &b"value one"[..]));
        assert_eq!(record(&r, 1), ("sub.p02", &b""[..], &b""[..]));
        assert_eq!(
            record(&r, 2),
            ("dlq.route.bca.residents", &b"k3"[..], &b"\x00bad"[..])
        );
        assert!(r.records[2].dead.is_some());
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
            Some(Err(RouterError::Kafka(KafkaError::Flush(
                RDKafkaErrorCode::AllBrokersDown,
            )))),
            Routed::default(),
        ))
        .expect("send");
        in_flight.finish();
        let err = pipe.wait().expect_err("the failure is reported");
        assert!(matches!(err, RouterError::Kafka(_)), "{err}");
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
            matches!(
                &second,
                Err(RouterError::Committer(CommitterError::EarlierFailed))
            ),
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
