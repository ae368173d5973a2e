//! A follower of a rarely-changing topic (the control topic, the map, a
//! lookup, the schema log) settles, once caught up, to a fetch the broker
//! may hold for `follow_wait_ms`: on Kafka a committed record still reaches
//! it at once, and nothing is skipped or read twice when its consumer is
//! made again with the longer wait.

use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::Duration;

use govbus_e2e::{unique, Broker};
use govbus_kafka_client::tail::{Tail, Tailed};
use govbus_kafka_client::{ensure_topics, TopicSpec};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::Message;

/// Held longer than any wait below: a record seen only when a held fetch
/// expires would fail the test.
const HELD_MS: u32 = 60_000;

fn next(seen: &Receiver<Option<(i32, String)>>, limit: Duration) -> Option<(i32, String)> {
    seen.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("nothing followed within {limit:?}"))
}

#[test]
fn a_settled_follower_sees_each_committed_record_at_once_and_exactly_once() {
    let broker = Broker::start();
    let kafka = broker.kafka();
    let topic = unique("gov.test.follow.");
    ensure_topics(&kafka, &[TopicSpec::compacted(&topic, 2)]).unwrap();
    let mut pc = kafka.producer();
    pc.set("transactional.id", unique("follow-"));
    let producer: ThreadedProducer<DefaultProducerContext> = pc.create().unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    let write = |keys: &[String]| {
        producer.begin_transaction().unwrap();
        for k in keys {
            producer
                .send(BaseRecord::to(&topic).key(k).payload(k))
                .unwrap();
        }
        producer
            .commit_transaction(Duration::from_secs(30))
            .unwrap();
    };
    let before: Vec<String> = (0..20).map(|i| format!("before-{i}")).collect();
    write(&before);

    let (tx, seen) = channel();
    let stop = Arc::new(AtomicBool::new(false));
    Tail::open(
        kafka.consumer(&unique("follow-")),
        &topic,
        Duration::from_secs(10),
    )
    .unwrap()
    .settle_at(HELD_MS)
    .spawn(
        "follow-test",
        stop.clone(),
        Duration::from_millis(50),
        move |t| {
            let _ = match t {
                Tailed::Record(m) => tx.send(Some((
                    m.partition(),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                ))),
                Tailed::CaughtUp => tx.send(None),
                Tailed::Idle => Ok(()),
            };
        },
    )
    .unwrap();
    let mut got = Vec::new();
    while let Some((_, v)) = next(&seen, Duration::from_secs(30)) {
        got.push(v);
    }
    got.sort();
    let mut want = before.clone();
    want.sort();
    assert_eq!(
        got, want,
        "caught up with exactly the records written before"
    );

    // Settled: each record written now arrives long before a held fetch
    // would expire (10 s against 60), once, and in order within its
    // partition.
    let mut last: std::collections::HashMap<i32, usize> = Default::default();
    for i in 0..10 {
        let keys: Vec<String> = (0..3).map(|j| format!("after-{i}-{j}")).collect();
        write(&keys);
        let mut round = Vec::new();
        while round.len() < keys.len() {
            let (p, v) = next(&seen, Duration::from_secs(10)).expect("one catch-up only");
            let n: usize = v
                .strip_prefix("after-")
                .and_then(|r| r.split('-').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("record {v} read again after the catch-up"));
            assert!(last.get(&p).is_none_or(|&m| m <= n), "{v} out of order");
            last.insert(p, n);
            round.push(v);
        }
        round.sort();
        assert_eq!(round, keys, "round {i}");
    }
    assert!(
        seen.recv_timeout(Duration::from_millis(500)).is_err(),
        "nothing more than what was written"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}
