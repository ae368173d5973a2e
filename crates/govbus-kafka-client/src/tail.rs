//! Following a compacted topic (the subscriptions' control topic, a lookup
//! dataset, the registry's schema log) from its beginning to its end and on:
//! one helper for what each of those once wrote by hand.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::{eof_consumer, partitions_of, EofConsumer, IDLE_POLL};

/// Why a topic cannot be followed.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The topic did not appear within the wait.
    #[error("topic {topic} does not exist (waited {secs} s)")]
    Missing {
        /// The topic.
        topic: String,
        /// Seconds waited.
        secs: u64,
    },
    /// Kafka refused.
    #[error("following {topic}: {source}")]
    Kafka {
        /// The topic.
        topic: String,
        /// Kafka's error.
        #[source]
        source: KafkaError,
    },
    /// The follower thread could not be started.
    #[error("cannot start the thread that follows {topic}: {source}")]
    Spawn {
        /// The topic.
        topic: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What a [`Tail`] hands its caller.
#[derive(Debug)]
pub enum Tailed<'a> {
    /// The next record (a tombstone has no payload).
    Record(&'a BorrowedMessage<'a>),
    /// Every partition was read to its end (once, the first time).
    CaughtUp,
    /// A poll returned nothing.
    Idle,
}

/// Every partition of one topic, assigned from its beginning (no group
/// offsets are committed: each follower reads the whole topic).
pub struct Tail {
    consumer: EofConsumer,
    /// The consumer's settings, to make it again with `settle`.
    cfg: ClientConfig,
    topic: String,
    at_end: HashMap<i32, bool>,
    caught_up: bool,
    /// The fetch wait once caught up (see [`Tail::settle_at`]).
    settle: Option<u32>,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail")
            .field("topic", &self.topic)
            .field("at_end", &self.at_end)
            .finish_non_exhaustive()
    }
}

impl Tail {
    /// Assigns every partition of `topic` from its beginning, waiting up to
    /// `wait` for the topic to exist. `cfg` is the consumer's (its group id
    /// is not used for offsets).
    pub fn open(cfg: ClientConfig, topic: &str, wait: Duration) -> Result<Self, TailError> {
        let err = |source| TailError::Kafka {
            topic: topic.to_string(),
            source,
        };
        let consumer = eof_consumer(cfg.clone()).map_err(err)?;
        let deadline = Instant::now() + wait;
        let parts = loop {
            let parts = partitions_of(&consumer, topic).map_err(err)?;
            if !parts.is_empty() {
                break parts;
            }
            if Instant::now() > deadline {
                return Err(TailError::Missing {
                    topic: topic.to_string(),
                    secs: wait.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut tpl = TopicPartitionList::new();
        for p in &parts {
            tpl.add_partition_offset(topic, *p, Offset::Beginning)
                .map_err(err)?;
        }
        consumer.assign(&tpl).map_err(err)?;
        Ok(Self {
            consumer,
            cfg,
            topic: topic.to_string(),
            at_end: parts.into_iter().map(|p| (p, false)).collect(),
            caught_up: false,
            settle: None,
        })
    }

    /// Once caught up, follows with the broker holding each fetch that
    /// finds nothing for up to `wait_ms` (`fetch.wait.max.ms`; librdkafka
    /// cannot change it on a running consumer, so the consumer is made
    /// again at the positions reached). Catching up keeps the wait it was
    /// opened with: the end of a partition is only known from a fetch that
    /// returns empty, after the whole wait. On Kafka a record reaches a
    /// held fetch at once, so a long wait only spares the requests of an
    /// idle topic (the config's `follow_wait_ms`).
    pub fn settle_at(mut self, wait_ms: u32) -> Self {
        self.settle = Some(wait_ms);
        self
    }

    /// The consumer made again with the settled fetch wait, at the
    /// positions the caller has consumed to (nothing is skipped: records
    /// fetched and not yet handed over are fetched again). Kept as it was
    /// if it cannot be.
    fn settle(&mut self) {
        let Some(wait) = self.settle.take() else {
            return;
        };
        let now = self
            .cfg
            .get("fetch.wait.max.ms")
            .and_then(|w| w.parse::<u32>().ok())
            .unwrap_or(500);
        if wait <= now {
            return;
        }
        let made = (|| {
            let positions = self.consumer.position()?;
            let mut tpl = TopicPartitionList::new();
            for e in positions.elements() {
                let at = match e.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    // Nothing consumed from it: as it was opened.
                    _ => Offset::Beginning,
                };
                tpl.add_partition_offset(e.topic(), e.partition(), at)?;
            }
            let mut cfg = self.cfg.clone();
            cfg.set("fetch.wait.max.ms", wait.to_string());
            let consumer = eof_consumer(cfg)?;
            consumer.assign(&tpl)?;
            Ok::<_, KafkaError>(consumer)
        })();
        match made {
            Ok(c) => {
                self.consumer = c;
                tracing::debug!(
                    topic = self.topic,
                    wait_ms = wait,
                    "caught up; following with a longer fetch wait"
                );
            }
            Err(e) => {
                tracing::warn!(topic = self.topic, error = %e, "cannot lengthen the fetch wait of a follower; following with the short one")
            }
        }
    }

    /// Polls until `stop` (seen within [`IDLE_POLL`]), handing each record,
    /// the first catch-up and each empty poll to `on`: an empty poll comes
    /// `poll` after the last record, then every [`IDLE_POLL`]. Consumer
    /// errors are logged and polling goes on (librdkafka retries on its
    /// own).
    pub fn run(mut self, stop: &AtomicBool, poll: Duration, mut on: impl FnMut(Tailed<'_>)) {
        // After an idle poll, the next waits longer: a record ends the wait
        // at once, and the caller, told idle, has nothing left to do until
        // one comes; an idle follower's thread then wakes twice a second.
        let mut wait = poll;
        while !stop.load(Ordering::Relaxed) {
            let polled = self.consumer.poll(wait);
            wait = if polled.is_none() {
                poll.max(IDLE_POLL)
            } else {
                poll
            };
            match polled {
                Some(Ok(m)) => on(Tailed::Record(&m)),
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    self.at_end.insert(p, true);
                    if !self.caught_up && self.at_end.values().all(|e| *e) {
                        self.caught_up = true;
                        on(Tailed::CaughtUp);
                        self.settle();
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(topic = self.topic, error = %e, "following a topic");
                    std::thread::sleep(Duration::from_millis(100));
                }
                None => on(Tailed::Idle),
            }
        }
    }

    /// Runs [`Tail::run`] on a thread of its own named `name`.
    pub fn spawn(
        self,
        name: &str,
        stop: std::sync::Arc<AtomicBool>,
        poll: Duration,
        on: impl FnMut(Tailed<'_>) + Send + 'static,
    ) -> Result<(), TailError> {
        let topic = self.topic.clone();
        let span = tracing::Span::current();
        let watched = stop.clone();
        govbus_core::health::spawn_watched(name, Some(watched), move || {
            let _e = span.enter();
            self.run(&stop, poll, on)
        })
        .map(|_| ())
        .map_err(|source| TailError::Spawn { topic, source })
    }
}
