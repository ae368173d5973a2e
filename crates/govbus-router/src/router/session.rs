//! One routing session: a consumer in the router's group, a
//! transactional producer, the committer thread, and the loop that polls,
//! brings newly assigned partitions in step, runs the batch step and hands
//! each batch to the committer. A failure or a change of the subscription
//! set ends the session; [`Router::run`] starts the next one.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cel_interpreter::Context;
use govbus_kafka_client::poll_batch_fenced;
use govbus_kafka_client::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use std::collections::HashMap;

use super::batch::{Input, Scratch, Step};
use super::committer::{Committer, InFlight, Lineage, Pipe, Routed, RouterContext, Txn};
use super::live::Live;
use super::{CommitterError, Router, RouterError};

impl Router {
    pub(super) fn session(&self, stop: &AtomicBool) -> Result<(), RouterError> {
        let live = self.live()?;
        let map = if live.uses_map {
            self.map_watch()?
        } else {
            None
        };
        // A new subscription set, a new day of the administrative map (a
        // change taking effect) or new rows of it: a new session brings
        // every view in step.
        let changed = || {
            self.control.generation() != live.generation
                || map.as_ref().is_some_and(|w| {
                    w.generation() != live.map_generation
                        || w.epoch(crate::map::today()) != live.map_epoch
                })
        };
        if live.inputs.is_empty() {
            tracing::info!("no subscriptions; waiting for the control topic");
            // Nothing to route is not a reason to hold traffic back.
            self.readiness.ready();
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
        let mut cc = kafka.consumer(&self.cfg.group);
        // A view brought in step (a new subscription's backfill) is sent
        // in one transaction, without a poll in between: the group waits
        // as long as that transaction may take (transaction.timeout.ms
        // below), not the 30 s of other consumers, or a backfill of a
        // million entities on a busy machine lost the group and started
        // over forever.
        kafka.set_default(&mut cc, "max.poll.interval.ms", "60000");
        let consumer: BaseConsumer<RouterContext> = cc.create_with_context(RouterContext {
            in_flight: in_flight.clone(),
            rebalances: Default::default(),
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
        let base = live.base();
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
            .filter(|(t, _)| !govbus_core::Topics::is_replay(t))
            .map(|(t, (d, _))| (t.clone(), d.clone()))
            .collect();
        let lag =
            govbus_kafka_client::LagWatch::start(kafka, Duration::from_secs(2), move |t, n| {
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
                .map_err(|e| RouterError::Committer(CommitterError::Spawn(e)))?;
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
        lag: &govbus_kafka_client::LagWatch,
    ) -> Result<(), RouterError> {
        let mut batch = Vec::with_capacity(self.cfg.batch);
        let mut last_lag = std::time::Instant::now();
        let mut in_step: HashSet<(String, i32)> = HashSet::new();
        let mut scratch = Scratch::default();
        let mut stall =
            govbus_core::stall::StallWatch::new(Duration::from_secs(self.cfg.stall_secs));
        // Partitions held at a record whose writer schema could not be
        // fetched: when to read them again, and how many holds in a row.
        let mut holds: HashMap<(String, i32), (std::time::Instant, u32)> = HashMap::new();
        // Where this session committed each partition it routed, when it
        // last routed a batch, and whether the consumer's position has
        // been looked at since (see `tail`).
        let mut committed: HashMap<(String, i32), i64> = HashMap::new();
        let mut last_batch = std::time::Instant::now();
        let mut tail_done = true;
        while !stop.load(Ordering::Relaxed) {
            if changed() {
                tracing::info!("the subscription set or the administrative map changed; starting a session with it");
                return Ok(());
            }
            // Positions handed over often (a local call): the lag measured
            // every 2 s is then at most this stale.
            if last_lag.elapsed() > Duration::from_millis(200) {
                lag.update(consumer);
                last_lag = std::time::Instant::now();
                let held = !self
                    .assigned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty();
                self.readiness.set(if held {
                    govbus_core::health::caught_up(lag.backlog())
                } else {
                    Err("no input partition assigned yet (joining the group)".into())
                });
            }
            resume_due(consumer, &mut holds);
            let t_poll = std::time::Instant::now();
            poll_batch_fenced(
                consumer,
                &mut batch,
                self.cfg.batch,
                govbus_kafka_client::IDLE_POLL,
                &|| consumer.context().rebalances.load(Ordering::SeqCst),
            );
            let poll_ms = t_poll.elapsed().as_secs_f64() * 1e3;
            // A partition held for its writer schema is a known, reported
            // wait (`govbus_router_held_total`), not a stall.
            if !holds.is_empty() {
                stall.busy();
            }
            if let Some(s) = stall.observe(std::time::Instant::now(), batch.len(), lag.backlog()) {
                govbus_core::InternalEvent::emit(crate::events::Stalled {
                    idle_secs: s.idle.as_secs(),
                    backlog: s.backlog,
                });
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
            holds.retain(|tp, _| assigned.contains(tp));
            scratch.routed.retain(|tp, _| in_step.contains(tp));
            let fresh: Vec<(String, i32)> = assigned
                .iter()
                .filter(|tp| !in_step.contains(*tp))
                .cloned()
                .collect();
            if !fresh.is_empty() {
                // Where the group committed: the lag counts from there
                // until a record of the partition is consumed.
                let mut tpl = TopicPartitionList::new();
                for (t, p) in &fresh {
                    tpl.add_partition(t, *p);
                }
                lag.starts_at(&consumer.committed_offsets(tpl, Duration::from_secs(30))?);
                // Backfill reads up to the committed offsets and writes in
                // a transaction of its own: nothing may be in flight.
                pipe.wait()?;
                let tx = Txn {
                    producer,
                    label: self.cfg.txn_header.then(|| lineage.next()),
                };
                self.in_step(live, consumer, &tx, base, &fresh)?;
                in_step.extend(fresh);
                stall.busy();
            }
            if batch.is_empty() {
                // Quiet for a while after routing: commit the transaction
                // markers read since the last batch (a batch's records can
                // arrive before their marker), once, so that Kafka's tools
                // show no lag when everything is routed. Busy, the next
                // batch's commit covers them for free.
                if !tail_done && last_batch.elapsed() >= TAIL_AFTER {
                    tail_done = true;
                    let held: Vec<(String, i32)> = holds.keys().cloned().collect();
                    if let Some(offsets) = tail(consumer, &committed, &held)? {
                        pipe.wait()?;
                        let mut out = pipe.buffer();
                        out.changes = 0;
                        record(&mut committed, &offsets);
                        out.offsets = Some(offsets);
                        out.meta =
                            Some(consumer.group_metadata().ok_or_else(|| {
                                KafkaError::Subscription("no group metadata".into())
                            })?);
                        pipe.commit(out)?;
                    }
                }
                continue;
            }
            (last_batch, tail_done) = (std::time::Instant::now(), false);
            // Where the consumer stands after the batch: past the records
            // it returned and the transaction markers (and aborted
            // records) it skipped after them. Committing there, not at
            // the last record + 1, leaves no lag of one marker per
            // partition in Kafka's tools once everything is routed.
            let stands: HashMap<(String, i32), i64> = consumer
                .position()?
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
                    _ => None,
                })
                .collect();
            let t_route = std::time::Instant::now();
            let mut out = pipe.buffer();
            out.label = self.cfg.txn_header.then(|| lineage.next().to_owned());
            let step = Step {
                live,
                resolver: &self.resolver,
                base,
                fast_ids: &self.fast_ids,
                now_ms: govbus_core::now_ms(),
            };
            let advances = step.run(
                batch.iter().map(Input::of),
                &mut out,
                &mut scratch,
                &mut |o| pipe.chunk(o),
            )?;
            hold(consumer, &mut holds, &scratch.held, &advances)?;
            let mut offsets = TopicPartitionList::new();
            for a in &advances {
                // A held partition stays at its held record.
                let held = scratch
                    .held
                    .iter()
                    .any(|(t, p, ..)| *p == a.partition && *t == a.topic);
                let next = match stands.get(&(a.topic.clone(), a.partition)) {
                    Some(o) if !held => a.next.max(*o),
                    _ => a.next,
                };
                offsets.add_partition_offset(&a.topic, a.partition, Offset::Offset(next))?;
            }
            record(&mut committed, &offsets);
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
}

/// How long the input stays quiet after a batch before the markers read
/// since are committed ([`tail`]).
const TAIL_AFTER: Duration = Duration::from_secs(1);

/// The consumer's positions beyond where this session committed, for the
/// partitions it routed and does not hold: the markers (and aborted
/// records) read after the last batch. None when there are none.
fn tail<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    committed: &HashMap<(String, i32), i64>,
    held: &[(String, i32)],
) -> Result<Option<TopicPartitionList>, RouterError> {
    let mut offsets = TopicPartitionList::new();
    for e in consumer.position()?.elements() {
        let key = (e.topic().to_string(), e.partition());
        if let (Offset::Offset(o), Some(&c)) = (e.offset(), committed.get(&key)) {
            if o > c && !held.contains(&key) {
                offsets.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o))?;
            }
        }
    }
    Ok((offsets.count() > 0).then_some(offsets))
}

/// Notes the offsets a commit carries.
fn record(committed: &mut HashMap<(String, i32), i64>, offsets: &TopicPartitionList) {
    for e in offsets.elements() {
        if let Offset::Offset(o) = e.offset() {
            committed.insert((e.topic().to_string(), e.partition()), o);
        }
    }
}

/// The back-off before a held partition is read again: 0.5 s, doubling to 30 s.
fn backoff(holds_in_a_row: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << holds_in_a_row.min(6)))
        .min(Duration::from_secs(30))
}

/// Pauses each partition the batch held and rewinds it to the held record
/// (read again after its back-off); a partition that advanced past its
/// hold starts its back-off afresh.
fn hold(
    consumer: &BaseConsumer<RouterContext>,
    holds: &mut HashMap<(String, i32), (std::time::Instant, u32)>,
    held: &[(String, i32, i64, String)],
    advances: &[super::batch::Advance],
) -> Result<(), RouterError> {
    for a in advances {
        if !held
            .iter()
            .any(|(t, p, ..)| *t == a.topic && *p == a.partition)
        {
            holds.remove(&(a.topic.clone(), a.partition));
        }
    }
    for (topic, partition, offset, _) in held {
        let entry = holds
            .entry((topic.clone(), *partition))
            .or_insert((std::time::Instant::now(), 0));
        entry.0 = std::time::Instant::now() + backoff(entry.1);
        entry.1 = entry.1.saturating_add(1);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, *partition);
        consumer.pause(&tpl)?;
        consumer.seek(
            topic,
            *partition,
            Offset::Offset(*offset),
            Duration::from_secs(10),
        )?;
    }
    Ok(())
}

/// Resumes the held partitions whose back-off is over.
fn resume_due(
    consumer: &BaseConsumer<RouterContext>,
    holds: &mut HashMap<(String, i32), (std::time::Instant, u32)>,
) {
    let now = std::time::Instant::now();
    let mut tpl = TopicPartitionList::new();
    for ((t, p), (at, _)) in holds.iter_mut() {
        if *at <= now {
            tpl.add_partition(t, *p);
            // Resumed once; a new hold sets the next time.
            *at = now + Duration::from_secs(86_400);
        }
    }
    if tpl.count() > 0 {
        if let Err(e) = consumer.resume(&tpl) {
            tracing::warn!(error = %e, "resuming held partitions");
        }
    }
}
